//! Predictive sign gradient (PSG), golden model.
//!
//! For a weight-gradient GEMM `G[m,n] = A[m,k] · B[k,n]` on codes:
//! 1. predict `P` in INT8 mode (high bytes, 48-bit accumulators);
//! 2. an entry is *uncertain* when `|P| < threshold` (threshold in INT8 accumulator units; `|P| ==
//!    threshold` is certain, so threshold 0 makes everything certain);
//! 3. the output is cut into `tile_m x tile_n` tiles (edge tiles are smaller); a tile holding at least
//!    one uncertain entry is recomputed in INT16 mode and *all* of its signs come from the exact
//!    accumulator; other tiles take the signs of `P`;
//! 4. the result is one sign per entry (+1, -1, 0) and the counts the counter block keeps.
//!
//! `max_abs_p` (over all predicted entries) is what an adaptive threshold for the layer's next step is
//! computed from ([`adaptive_threshold`]).

use crate::NumericsError;
use crate::golden::{check_len, gemm_ref};
use crate::quant::round_to_high_byte;
use e2t_core::Mode;

/// Largest threshold (and max|P| reference) the 48-bit CSRs hold.
pub const THR_MAX: u64 = (1 << 48) - 1;

/// The threshold of one PSG command as the hardware takes it (`rtl/README.md`, `CMD_PUSH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwThreshold {
    /// `PSG_THR`: INT8-accumulator units, at most [`THR_MAX`].
    Absolute(u64),
    /// `PSG_ADAPTIVE`: threshold `(c_q16 * reference) >> 16`, `c` in Q0.16, `reference` (a max|P|,
    /// normally the layer's previous one) at most [`THR_MAX`].
    Adaptive { c_q16: u16, reference: u64 },
}

impl HwThreshold {
    /// The threshold the block compares against, or an error when a field does not fit its CSR.
    pub fn effective(self) -> Result<u64, NumericsError> {
        match self {
            HwThreshold::Absolute(t) if t <= THR_MAX => Ok(t),
            HwThreshold::Adaptive { c_q16, reference } if reference <= THR_MAX => {
                Ok((c_q16 as u64 * reference) >> 16)
            }
            HwThreshold::Absolute(t) | HwThreshold::Adaptive { reference: t, .. } => {
                Err(NumericsError::Threshold {
                    value: t,
                    max: THR_MAX,
                })
            }
        }
    }
}

/// How the host forms the INT8-layout bytes of the prediction pass. The block multiplies whatever
/// bytes it receives; the contract's INT8 mode is `code >> 8` ([`PredRounding::Floor`]).
/// [`PredRounding::Nearest`] sends the high byte of the 8-bit tensor nearest to the code
/// ([`round_to_high_byte`]), which removes floor's bias of half a high-byte step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PredRounding {
    #[default]
    Floor,
    Nearest,
}

impl PredRounding {
    /// The 16-bit code whose `>> 8` is the byte sent for `code` in the prediction pass.
    #[inline]
    pub fn prediction_code(self, code: i16) -> i16 {
        match self {
            PredRounding::Floor => code,
            PredRounding::Nearest => round_to_high_byte(code),
        }
    }
}

/// What the PSG counters record for one PSG GEMM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsgCounts {
    /// Entries predicted in INT8 mode (`m * n`).
    pub predicted: u64,
    /// Entries with `|P| < threshold`.
    pub uncertain: u64,
    /// Output tiles in total.
    pub tiles: u64,
    /// Tiles recomputed in INT16 mode.
    pub recomputed_tiles: u64,
}

/// Result of one PSG GEMM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PsgOutput {
    /// Row-major `[m, n]` signs: -1, 0 or +1.
    pub signs: Vec<i8>,
    pub counts: PsgCounts,
    /// `max |P|` over all entries (0 for an empty output).
    pub max_abs_p: u64,
}

/// Threshold in accumulator units for "certain iff `|P| >= c * max_abs_p`": the smallest integer not
/// below `c * max_abs_p` (so comparing integers with `>=` is the same as comparing reals). Negative or
/// NaN `c` gives 0 (nothing uncertain); the result saturates at `u64::MAX`.
pub fn adaptive_threshold(max_abs_p: u64, c: f64) -> u64 {
    let t = c * max_abs_p as f64;
    if t.is_nan() || t <= 0.0 {
        0
    } else if t >= u64::MAX as f64 {
        u64::MAX
    } else {
        t.ceil() as u64
    }
}

/// Number of tiles of `len` in steps of `tile` (0 for `len = 0`).
pub fn tiles_along(len: usize, tile: usize) -> usize {
    len.div_ceil(tile)
}

/// The golden PSG GEMM on row-major code matrices (see the module doc) with the contract's
/// prediction (`code >> 8`). `tile_m`, `tile_n` (the array's R and C) must be at least 1.
#[allow(clippy::too_many_arguments)]
pub fn psg_ref(
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    threshold: u64,
    tile_m: usize,
    tile_n: usize,
) -> Result<PsgOutput, NumericsError> {
    psg_ref_with(
        a,
        b,
        m,
        k,
        n,
        threshold,
        tile_m,
        tile_n,
        PredRounding::Floor,
    )
}

/// [`psg_ref`] with a choice of how the prediction bytes are formed.
#[allow(clippy::too_many_arguments)]
pub fn psg_ref_with(
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    threshold: u64,
    tile_m: usize,
    tile_n: usize,
    pred: PredRounding,
) -> Result<PsgOutput, NumericsError> {
    check_len("A", a.len(), m, k)?;
    check_len("B", b.len(), k, n)?;
    if tile_m == 0 || tile_n == 0 {
        return Err(NumericsError::Tile { tile_m, tile_n });
    }
    let a8: Vec<i16> = a.iter().map(|&c| pred.prediction_code(c)).collect();
    let b8: Vec<i16> = b.iter().map(|&c| pred.prediction_code(c)).collect();
    let p = gemm_ref(&a8, &b8, m, k, n, Mode::Int8)?;
    let exact = gemm_ref(a, b, m, k, n, Mode::Int16)?;
    let uncertain = |i: usize, j: usize| p[i * n + j].unsigned_abs() < threshold;

    let mut signs = vec![0i8; m * n];
    let mut counts = PsgCounts {
        predicted: (m * n) as u64,
        ..Default::default()
    };
    for ti in 0..tiles_along(m, tile_m) {
        for tj in 0..tiles_along(n, tile_n) {
            counts.tiles += 1;
            let rows = ti * tile_m..((ti + 1) * tile_m).min(m);
            let cols = tj * tile_n..((tj + 1) * tile_n).min(n);
            let mut any = false;
            for i in rows.clone() {
                for j in cols.clone() {
                    if uncertain(i, j) {
                        counts.uncertain += 1;
                        any = true;
                    }
                }
            }
            if any {
                counts.recomputed_tiles += 1;
            }
            let src = if any { &exact } else { &p };
            for i in rows {
                for j in cols.clone() {
                    signs[i * n + j] = src[i * n + j].signum() as i8;
                }
            }
        }
    }
    let max_abs_p = p.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    Ok(PsgOutput {
        signs,
        counts,
        max_abs_p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_threshold_rounds_up() {
        assert_eq!(adaptive_threshold(100, 0.05), 5);
        assert_eq!(adaptive_threshold(101, 0.05), 6); // 5.05 -> 6: |P| = 5 is below 5.05
        assert_eq!(adaptive_threshold(0, 0.5), 0);
        assert_eq!(adaptive_threshold(100, -1.0), 0);
        assert_eq!(adaptive_threshold(100, f64::NAN), 0);
        assert_eq!(adaptive_threshold(u64::MAX, 2.0), u64::MAX);
    }

    #[test]
    fn threshold_boundary_decides_recompute() {
        // 1 x 1 GEMM, K = 1: P = hi(a) * hi(b) = 3 * 2 = 6; exact = a * b.
        // Choose low bytes so the exact product has the opposite sign? Not possible for K = 1 with
        // positive high bytes, so use K = 2 with cancelling terms.
        // a = [3*256, -1], b = [2*256, 1]: P = 6 + (-1 * 0) = 6; exact = 393216 - 1 > 0.
        let a = [3 * 256, -1];
        let b = [2 * 256, 1];
        let at = psg_ref(&a, &b, 1, 2, 1, 6, 4, 4).unwrap();
        assert_eq!(at.counts.uncertain, 0, "|P| == threshold is certain");
        assert_eq!(at.counts.recomputed_tiles, 0);
        assert_eq!(at.max_abs_p, 6);
        let above = psg_ref(&a, &b, 1, 2, 1, 7, 4, 4).unwrap();
        assert_eq!(above.counts.uncertain, 1);
        assert_eq!(above.counts.recomputed_tiles, 1);
        assert_eq!(above.signs, vec![1]);
    }

    #[test]
    fn recompute_takes_exact_signs_for_the_whole_tile() {
        // Entry 0: P = 0 (high bytes zero) but exact = 200 * 100 > 0 -> uncertain, sign +1 after
        // recompute. Entry 1 in the same tile: P = -1 (high byte of -1 is -1), exact = -1 * 100 -> -1.
        // Entry 2 in another tile: P certain.
        let a = [200i16]; // 1 x 1
        let b = [100i16, -100, 512]; // 1 x 3
        let out = psg_ref(&a, &b, 1, 1, 3, 1, 1, 2).unwrap();
        // P = [0*0, 0*(-1), 0*2] = 0 everywhere: all uncertain, both tiles recomputed.
        assert_eq!(
            out.counts,
            PsgCounts {
                predicted: 3,
                uncertain: 3,
                tiles: 2,
                recomputed_tiles: 2
            }
        );
        assert_eq!(out.signs, vec![1, -1, 1]);
        // Now make the third entry certain: a = 256 + 200 (hi 1), b2 = 512 (hi 2) -> P = 2.
        let a = [456i16];
        let out = psg_ref(&a, &b, 1, 1, 3, 2, 1, 2).unwrap();
        // P = [1*0, 1*(-1), 1*2] = [0, -1, 2]: uncertain: 0 and -1; tile 1 holds P=2 >= 2 (certain).
        assert_eq!(out.counts.uncertain, 2);
        assert_eq!(out.counts.recomputed_tiles, 1);
        assert_eq!(out.signs, vec![1, -1, 1]);
    }

    #[test]
    fn hardware_threshold_matches_the_csr_rule() {
        assert_eq!(HwThreshold::Absolute(7).effective(), Ok(7));
        assert!(HwThreshold::Absolute(THR_MAX + 1).effective().is_err());
        // c = 0.5 (32768 / 65536) of 101 = 50.5 -> 50 (the block floors).
        assert_eq!(
            HwThreshold::Adaptive {
                c_q16: 32768,
                reference: 101
            }
            .effective(),
            Ok(50)
        );
        assert_eq!(
            HwThreshold::Adaptive {
                c_q16: 65535,
                reference: THR_MAX
            }
            .effective(),
            Ok((65535 * THR_MAX) >> 16)
        );
        assert!(
            HwThreshold::Adaptive {
                c_q16: 1,
                reference: THR_MAX + 1
            }
            .effective()
            .is_err()
        );
    }

    #[test]
    fn nearest_prediction_rounds_high_bytes() {
        // a = 200 (high byte 0 by floor, 1 by nearest), b = 300 (1 by both): P = 0 vs 1.
        let floor = psg_ref_with(&[200], &[300], 1, 1, 1, 1, 1, 1, PredRounding::Floor).unwrap();
        let near = psg_ref_with(&[200], &[300], 1, 1, 1, 1, 1, 1, PredRounding::Nearest).unwrap();
        assert_eq!((floor.max_abs_p, floor.counts.uncertain), (0, 1));
        assert_eq!((near.max_abs_p, near.counts.uncertain), (1, 0));
        assert_eq!(floor.signs, near.signs);
    }

    #[test]
    fn zero_threshold_uses_prediction_signs_only() {
        let a = [100i16, -300];
        let b = [300i16, 100];
        // P = 0*1 + (-2)*0 = 0 -> sign 0; exact = 30000 - 30000 = 0 as well; use another pair.
        let out = psg_ref(&a, &b, 1, 2, 1, 0, 1, 1).unwrap();
        assert_eq!(out.counts.uncertain, 0);
        assert_eq!(out.signs, vec![0]);
        assert!(psg_ref(&a, &b, 1, 2, 1, 0, 0, 1).is_err());
        assert!(psg_ref(&a, &b, 2, 2, 1, 0, 1, 1).is_err());
    }
}
