//! The soft accelerator: bit-exact results from the fast exact GEMM, counters from the cycle model.

use crate::fast::{F32Lhs, Operand, Out, gemm_exact, gemm_exact_f32, gemm_exact_to};
use crate::{
    AccelError, Accelerator, ArrayShape, CodeMatrix, F32Operand, GemmOut, PsgReport, check_command,
    check_dims,
};
use e2t_core::{Counters, Mode, PsgFallback};
use e2t_numerics::cycles::{self, OutFmt};
use e2t_numerics::{HwThreshold, MAX_SHIFT, PredRounding, PsgCounts, requantize_unchecked};

/// Software model of the accelerator (see the crate doc for its invariants).
#[derive(Clone, Debug)]
pub struct SoftAccel {
    shape: ArrayShape,
    live: Counters,
    snap: Counters,
    max_p: u64,
}

impl SoftAccel {
    /// An `rows x cols` array, as the RTL's parameters allow: sides 1..=32, an even column count.
    pub fn new(rows: usize, cols: usize) -> Result<Self, AccelError> {
        let side = 1..=cycles::ARRAY_SIDE_MAX as usize;
        if !side.contains(&rows) || !side.contains(&cols) || cols % 2 != 0 {
            return Err(AccelError::ArrayShape { rows, cols });
        }
        Ok(SoftAccel {
            shape: ArrayShape { rows, cols },
            live: Counters::default(),
            snap: Counters::default(),
            max_p: 0,
        })
    }

    fn cycle_shape(&self) -> cycles::ArrayShape {
        // Sides are at most 32 (checked in `new`).
        cycles::ArrayShape {
            rows: self.shape.rows as u32,
            cols: self.shape.cols as u32,
        }
    }

    /// The live counters (a software-only peek; hardware reads go through [`Accelerator::snapshot`]).
    pub fn live_counters(&self) -> Counters {
        self.live
    }

    /// Run one GEMM command: `compute(op, acc)` fills raw accumulators; then the output format and
    /// the counters.
    fn gemm_with(
        &mut self,
        dims: Result<(usize, usize, usize), AccelError>,
        mode: Mode,
        out: GemmOut<'_>,
        compute: impl FnOnce(Operand, &mut [i64]),
    ) -> Result<(), AccelError> {
        let (m, k, n) = match dims {
            Ok(d) => d,
            Err(e) => return self.reject(e),
        };
        let op = Operand::of(mode);
        let fmt = match out {
            GemmOut::Raw(o) => {
                compute(op, o);
                OutFmt::Raw48
            }
            GemmOut::Requant { shift, out } => {
                if shift > MAX_SHIFT {
                    return self.reject(AccelError::Shift(shift));
                }
                let mut acc = vec![0i64; m * n];
                compute(op, &mut acc);
                for (o, &v) in out.iter_mut().zip(&acc) {
                    *o = requantize_unchecked(v, shift);
                }
                OutFmt::Requant
            }
            GemmOut::Sign(out) => {
                let mut acc = vec![0i64; m * n];
                compute(op, &mut acc);
                for (o, &v) in out.iter_mut().zip(&acc) {
                    *o = v.signum() as i8;
                }
                OutFmt::Sign
            }
        };
        self.book(m, k, n, mode, fmt)
    }

    /// PSG as one `OP_PSG` command (`pieces: None`) or on the host over raw K pieces
    /// (`Some(((k8, k16), fallback))`, see [`Accelerator::psg_split_k`]): the same signs and PSG
    /// counts, other commands; with [`PsgFallback::Zero`] no recompute and uncertain signs 0.
    fn psg_with(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        threshold: HwThreshold,
        pred: PredRounding,
        signs: &mut [i8],
        pieces: Option<((usize, usize), PsgFallback)>,
    ) -> Result<PsgReport, AccelError> {
        // A threshold that does not fit its CSR cannot be written: a host-side error, no command.
        let thr = threshold.effective()?;
        let (m, k, n) = match check_command(&a, &b, signs.len()) {
            Ok(d) => d,
            Err(e) => return self.reject(e),
        };
        let (tr, tc) = (self.shape.rows, self.shape.cols);
        let mut p = vec![0i64; m * n];
        let op = match pred {
            PredRounding::Floor => Operand::HighFloor,
            PredRounding::Nearest => Operand::HighNearest,
        };
        gemm_exact(a, b, op, &mut p);

        let zero = matches!(pieces, Some((_, PsgFallback::Zero)));
        // Classify tiles (mt outer, nt inner, as the block does) and count.
        let (mt, nt) = (m.div_ceil(tr), n.div_ceil(tc));
        let mut recompute = vec![false; mt * nt];
        let mut uncertain = vec![0u64; mt * nt];
        let mut counts = PsgCounts::default();
        let mut max_abs_p = 0u64;
        for ti in 0..mt {
            let rows = ti * tr..((ti + 1) * tr).min(m);
            for tj in 0..nt {
                let cols = tj * tc..((tj + 1) * tc).min(n);
                let mut unc = 0u64;
                for i in rows.clone() {
                    for &v in &p[i * n + cols.start..i * n + cols.end] {
                        let mag = v.unsigned_abs();
                        max_abs_p = max_abs_p.max(mag);
                        unc += u64::from(mag < thr);
                    }
                }
                let rec = unc > 0 && !zero;
                recompute[ti * nt + tj] = rec;
                uncertain[ti * nt + tj] = unc;
                counts.uncertain += unc;
                counts.recomputed_tiles += u64::from(rec);
            }
        }
        counts.predicted = (m * n) as u64;
        counts.tiles = (mt * nt) as u64;
        let delta = match pieces {
            None => {
                cycles::psg_counters(m as u64, k as u64, n as u64, self.cycle_shape(), &uncertain)
                    .map_err(|e| AccelError::Cycles(e.to_string()))?
            }
            Some(((k8, k16), _)) => {
                let plan = host_psg_plan(m, k, n, (tr, tc), (k8, k16), &recompute)?;
                if plan.full {
                    // The whole INT16 result is on the host: every sign is exact.
                    recompute.fill(true);
                    counts.recomputed_tiles = counts.tiles;
                }
                let mut d = plan.counters;
                d.psg_predicted = counts.predicted;
                d.psg_uncertain = counts.uncertain;
                d.psg_recomputed_tiles = counts.recomputed_tiles;
                d
            }
        };

        for (s, &v) in signs.iter_mut().zip(&p) {
            // Without recompute an uncertain entry gets no update.
            *s = if zero && v.unsigned_abs() < thr {
                0
            } else {
                v.signum() as i8
            };
        }
        if counts.recomputed_tiles > 0 {
            recompute_signs(
                a,
                b,
                &recompute,
                (tr, tc),
                (m, n),
                counts.recomputed_tiles,
                signs,
            );
        }
        if pieces.is_none() {
            // The MAX_P register follows OP_PSG commands; host PSG issues plain GEMMs.
            self.max_p = self.max_p.max(max_abs_p);
        }
        self.live.accumulate(&delta);
        Ok(PsgReport {
            counts,
            max_abs_p,
            threshold: thr,
        })
    }

    /// `gemm_scaled`, noting the largest |code| of a requantized output when `want_max` and the
    /// integer path runs (`Some`), else `None`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_scaled_impl(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        requant: Option<u32>,
        col_scale: &[f64],
        out: &mut [f32],
        want_max: bool,
    ) -> Result<Option<u32>, AccelError> {
        crate::check_col_scale(b.cols(), col_scale)?;
        let (m, k, n) = match check_command(&a, &b, out.len()) {
            Ok(d) => d,
            Err(e) => return self.reject(e),
        };
        if let Some(s) = requant.filter(|&s| s > MAX_SHIFT) {
            return self.reject(AccelError::Shift(s));
        }
        let op = Operand::of(mode);
        // Requantized codes are worth 2^shift accumulator units: fold that into the scales.
        let scaled: Vec<f64>;
        let scale = match requant {
            Some(s) => {
                let up = crate::pow2_f64(s);
                scaled = col_scale.iter().map(|&c| c * up).collect();
                &scaled[..]
            }
            None => col_scale,
        };
        let mut code_max = None;
        match requant {
            #[cfg(target_arch = "x86_64")]
            Some(shift) if want_max && crate::intgemm::available() => {
                code_max = Some(crate::intgemm::gemm_requant_max(
                    a, b, op, out, scale, shift,
                ));
            }
            _ => gemm_exact_to(
                a,
                b,
                op,
                Out::Scaled {
                    out,
                    scale,
                    requant,
                },
            ),
        }
        // The scaling is host work; the command is a raw or requantized GEMM.
        let fmt = if requant.is_some() {
            OutFmt::Requant
        } else {
            OutFmt::Raw48
        };
        self.book(m, k, n, mode, fmt).map(|()| code_max)
    }

    /// Books one `OP_GEMM` command's counters (the cycle model's figures).
    fn book(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        mode: Mode,
        fmt: OutFmt,
    ) -> Result<(), AccelError> {
        let d = cycles::gemm_counters(m as u64, k as u64, n as u64, mode, fmt, self.cycle_shape())
            .map_err(|e| AccelError::Cycles(e.to_string()))?;
        self.live.accumulate(&d);
        Ok(())
    }

    fn reject<T>(&mut self, e: AccelError) -> Result<T, AccelError> {
        self.live.accumulate(&Counters {
            total_cycles: cycles::rejected_command_cycles(),
            ..Default::default()
        });
        Err(e)
    }
}

impl Accelerator for SoftAccel {
    fn array_shape(&self) -> ArrayShape {
        self.shape
    }

    fn gemm(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        out: GemmOut<'_>,
    ) -> Result<(), AccelError> {
        let dims = check_command(&a, &b, out.len());
        self.gemm_with(dims, mode, out, |op, acc| gemm_exact(a, b, op, acc))
    }

    fn gemm_f32_lhs(
        &mut self,
        a: F32Operand<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        out: GemmOut<'_>,
    ) -> Result<(), AccelError> {
        if a.rows.checked_mul(a.cols) != Some(a.data.len()) {
            // Not a command the host could send: no cycles are counted.
            return Err(AccelError::View {
                rows: a.rows,
                cols: a.cols,
                row_stride: a.cols,
                col_stride: 1,
                len: a.data.len(),
            });
        }
        let dims = check_dims((a.rows, a.cols), &b, out.len());
        let lhs = F32Lhs {
            data: a.data,
            rows: a.rows,
            cols: a.cols,
            exp: a.exp,
            eight: a.eight_bit,
        };
        self.gemm_with(dims, mode, out, |op, acc| {
            gemm_exact_f32(lhs, b, op, Out::Raw(acc))
        })
    }

    fn gemm_scaled(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        requant: Option<u32>,
        col_scale: &[f64],
        out: &mut [f32],
    ) -> Result<(), AccelError> {
        self.gemm_scaled_impl(a, b, mode, requant, col_scale, out, false)
            .map(|_| ())
    }

    fn gemm_scaled_code_max(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        shift: u32,
        col_scale: &[f64],
        out: &mut [f32],
    ) -> Result<Option<u32>, AccelError> {
        self.gemm_scaled_impl(a, b, mode, Some(shift), col_scale, out, true)
    }

    fn gemm_requant_scatter(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        shift: u32,
        col_scale: &[f64],
        cmd_rows: usize,
        group_rows: usize,
        dst: &mut [f32],
        scatter: &crate::Scatter<'_>,
    ) -> Result<u32, AccelError> {
        #[cfg(target_arch = "x86_64")]
        if crate::intgemm::available() {
            crate::check_col_scale(b.cols(), col_scale)?;
            let (m, k, n) = (a.rows(), a.cols(), b.cols());
            crate::check_scatter(m, cmd_rows, group_rows, dst.len())?;
            // The commands in order, checked and counted as one by one; then all their rows
            // computed in cache-sized pieces that go straight to `scatter`.
            for r0 in (0..m).step_by(cmd_rows) {
                let r1 = (r0 + cmd_rows).min(m);
                if let Err(e) = check_command(&a.sub(r0, r1, 0, k), &b, (r1 - r0) * n) {
                    return self.reject(e);
                }
                if shift > MAX_SHIFT {
                    return self.reject(AccelError::Shift(shift));
                }
                self.book(r1 - r0, k, n, mode, OutFmt::Requant)?;
            }
            let up = crate::pow2_f64(shift);
            let scale: Vec<f64> = col_scale.iter().map(|&c| c * up).collect();
            return Ok(crate::intgemm::gemm_requant_scatter(
                a,
                b,
                Operand::of(mode),
                &scale,
                shift,
                group_rows,
                dst,
                scatter,
            ));
        }
        crate::scatter_via_commands(
            self, a, b, mode, shift, col_scale, cmd_rows, group_rows, dst, scatter,
        )
    }

    fn gemm_scaled_split_k(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        mode: Mode,
        k_piece: usize,
        col_scale: &[f64],
        out: &mut [f32],
    ) -> Result<(), AccelError> {
        crate::check_split(b.cols(), k_piece, col_scale)?;
        // A bad shape is a host-side error (as in the trait's default): no piece is sent.
        let (m, k, n) = check_command(&a, &b, out.len())?;
        let op = Operand::of(mode);
        if !op.never_wraps(k) {
            // Pieces may wrap 48 bits on their own: run them one by one as the host would.
            return crate::split_k_commands(self, a, b, mode, k_piece, col_scale, out);
        }
        // No sum can leave 48 bits, so the host's sum of the pieces is the exact product: one
        // fused GEMM, counted as the pieces' commands.
        gemm_exact_to(
            a,
            b,
            op,
            Out::Scaled {
                out,
                scale: col_scale,
                requant: None,
            },
        );
        for k0 in (0..k).step_by(k_piece) {
            self.book(m, k_piece.min(k - k0), n, mode, OutFmt::Raw48)?;
        }
        Ok(())
    }

    fn psg(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        threshold: HwThreshold,
        pred: PredRounding,
        signs: &mut [i8],
    ) -> Result<PsgReport, AccelError> {
        self.psg_with(a, b, threshold, pred, signs, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn psg_split_k(
        &mut self,
        a: CodeMatrix<'_>,
        b: CodeMatrix<'_>,
        threshold: HwThreshold,
        pred: PredRounding,
        k_pieces: (usize, usize),
        fallback: PsgFallback,
        signs: &mut [i8],
    ) -> Result<PsgReport, AccelError> {
        if k_pieces.0 == 0 || k_pieces.1 == 0 {
            return Err(AccelError::Dims { m: 0, k: 0, n: 0 });
        }
        self.psg_with(a, b, threshold, pred, signs, Some((k_pieces, fallback)))
    }

    fn snapshot(&mut self) -> Counters {
        self.snap = self.live;
        self.snap
    }

    fn clear_counters(&mut self) {
        self.live = Counters::default();
    }

    fn max_p(&self) -> u64 {
        self.max_p
    }

    fn clear_max_p(&mut self) {
        self.max_p = 0;
    }
}

/// Overwrite the signs of recomputed tiles with the signs of the exact INT16 result. When most tiles
/// are recomputed one full GEMM is cheapest; otherwise each tile row computes only the column span
/// between its first and last recomputed tile.
/// The commands of a host-side PSG ([`Accelerator::psg_split_k`]) and their counters.
pub(crate) struct HostPsgPlan {
    /// Recompute the whole GEMM in INT16 (cheaper in off-chip bytes than the uncertain tiles
    /// one by one); otherwise each recomputed tile is its own INT16 sub-GEMM.
    pub full: bool,
    /// The counters of every command: INT8 prediction pieces, then the INT16 recompute pieces.
    pub counters: Counters,
}

/// Plans a host-side PSG of `m x k x n` over raw K pieces (`k8` terms for the INT8 prediction,
/// `k16` for INT16 recomputes): the prediction pieces, then the recompute of the tiles flagged in
/// `recompute` (tile-row major), either tile by tile or as one full GEMM, whichever moves fewer
/// bytes (ties go to the tiles).
pub(crate) fn host_psg_plan(
    m: usize,
    k: usize,
    n: usize,
    (tr, tc): (usize, usize),
    (k8, k16): (usize, usize),
    recompute: &[bool],
) -> Result<HostPsgPlan, AccelError> {
    let shape = cycles::ArrayShape {
        rows: tr as u32,
        cols: tc as u32,
    };
    let pieces =
        |rows: usize, cols: usize, mode: Mode, kp: usize| -> Result<Counters, AccelError> {
            let mut c = Counters::default();
            for k0 in (0..k).step_by(kp) {
                let d = cycles::gemm_counters(
                    rows as u64,
                    kp.min(k - k0) as u64,
                    cols as u64,
                    mode,
                    OutFmt::Raw48,
                    shape,
                )
                .map_err(|e| AccelError::Cycles(e.to_string()))?;
                c.accumulate(&d);
            }
            Ok(c)
        };
    let mut counters = pieces(m, n, Mode::Int8, k8)?;
    let nt = n.div_ceil(tc);
    let mut tiles = Counters::default();
    for (t, _) in recompute.iter().enumerate().filter(|(_, r)| **r) {
        let (ti, tj) = (t / nt, t % nt);
        let rv = tr.min(m - ti * tr);
        let cv = tc.min(n - tj * tc);
        tiles.accumulate(&pieces(rv, cv, Mode::Int16, k16)?);
    }
    let full = if tiles.gemms > 0 {
        let all = pieces(m, n, Mode::Int16, k16)?;
        let bytes = |c: &Counters| c.bytes_in + c.bytes_out;
        if bytes(&all) < bytes(&tiles) {
            tiles = all;
            true
        } else {
            false
        }
    } else {
        false
    };
    counters.accumulate(&tiles);
    Ok(HostPsgPlan { full, counters })
}

fn recompute_signs(
    a: CodeMatrix<'_>,
    b: CodeMatrix<'_>,
    recompute: &[bool],
    (tr, tc): (usize, usize),
    (m, n): (usize, usize),
    recomputed: u64,
    signs: &mut [i8],
) {
    let (mt, nt) = (m.div_ceil(tr), n.div_ceil(tc));
    let write_tile =
        |signs: &mut [i8], exact: &[i64], ex_n: usize, ex_c0: usize, ti: usize, tj: usize| {
            let r0 = ti * tr;
            for i in r0..((ti + 1) * tr).min(m) {
                for j in tj * tc..((tj + 1) * tc).min(n) {
                    signs[i * n + j] = exact[(i - r0) * ex_n + (j - ex_c0)].signum() as i8;
                }
            }
        };
    if 2 * recomputed > (mt * nt) as u64 {
        let mut exact = vec![0i64; m * n];
        gemm_exact(a, b, Operand::Full, &mut exact);
        for ti in 0..mt {
            for tj in (0..nt).filter(|&tj| recompute[ti * nt + tj]) {
                // `write_tile` indexes relative to the tile row's first row.
                write_tile(signs, &exact[ti * tr * n..], n, 0, ti, tj);
            }
        }
        return;
    }
    for ti in 0..mt {
        let flags = &recompute[ti * nt..(ti + 1) * nt];
        let (Some(first), Some(last)) = (
            flags.iter().position(|&f| f),
            flags.iter().rposition(|&f| f),
        ) else {
            continue;
        };
        let (r0, r1) = (ti * tr, ((ti + 1) * tr).min(m));
        let (c0, c1) = (first * tc, ((last + 1) * tc).min(n));
        let mut exact = vec![0i64; (r1 - r0) * (c1 - c0)];
        gemm_exact(
            a.sub(r0, r1, 0, a.cols()),
            b.sub(0, b.rows(), c0, c1),
            Operand::Full,
            &mut exact,
        );
        for tj in (first..=last).filter(|&tj| flags[tj]) {
            write_tile(signs, &exact, c1 - c0, c0, ti, tj);
        }
    }
}

/// Test oracle of PSG without recompute: the prediction's signs, 0 where `|P| < thr`.
#[cfg(test)]
pub(crate) fn zeroed_uncertain_signs(p: &[i64], thr: u64) -> Vec<i8> {
    p.iter()
        .map(|&v| {
            if v.unsigned_abs() < thr {
                0
            } else {
                v.signum() as i8
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use e2t_numerics::{gemm_ref, psg_ref_with, requantize};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Codes with a mix of distributions: uniform, small, extremes.
    fn codes(rng: &mut ChaCha8Rng, len: usize, kind: u32) -> Vec<i16> {
        (0..len)
            .map(|_| match kind {
                0 => rng.random(),
                1 => rng.random_range(-600..600),
                _ => *[-32768i16, 32767, -128, 127, -1, 0, 255, -256]
                    .get(rng.random_range(0..8))
                    .unwrap_or(&0),
            })
            .collect()
    }

    #[test]
    fn gemm_equals_golden_on_random_shapes() {
        let seed = 0x5eed_0001;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut acc = SoftAccel::new(4, 4).unwrap();
        for case in 0..40 {
            let m = rng.random_range(1..40);
            let n = rng.random_range(1..20);
            let k = match case % 4 {
                0 => rng.random_range(1..8),
                1 => rng.random_range(1020..1030),
                2 => rng.random_range(2040..2060),
                _ => rng.random_range(1..300),
            };
            let kind = rng.random_range(0..3);
            let a = codes(&mut rng, m * k, kind);
            let b = codes(&mut rng, k * n, kind);
            let am = CodeMatrix::row_major(&a, m, k).unwrap();
            let bm = CodeMatrix::row_major(&b, k, n).unwrap();
            for mode in [Mode::Int16, Mode::Int8] {
                let golden = gemm_ref(&a, &b, m, k, n, mode).unwrap();
                let mut raw = vec![0i64; m * n];
                acc.gemm(am, bm, mode, GemmOut::Raw(&mut raw)).unwrap();
                assert_eq!(raw, golden, "seed {seed} case {case} {m}x{k}x{n} {mode:?}");
                let shift = rng.random_range(0..=47);
                let mut q = vec![0i16; m * n];
                acc.gemm(am, bm, mode, GemmOut::Requant { shift, out: &mut q })
                    .unwrap();
                let gq: Vec<i16> = golden
                    .iter()
                    .map(|&v| requantize(v, shift).unwrap())
                    .collect();
                assert_eq!(q, gq, "seed {seed} case {case} requant shift {shift}");
                let mut s = vec![0i8; m * n];
                acc.gemm(am, bm, mode, GemmOut::Sign(&mut s)).unwrap();
                assert!(s.iter().zip(&golden).all(|(&s, &g)| s as i64 == g.signum()));
            }
        }
    }

    #[test]
    fn scaled_output_equals_raw_then_scale() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0005);
        // (m, k, n): plain, INT8 past the f32 exact range (raw fallback), few rows (split K), and
        // an INT16 K long enough that extreme codes wrap 48 bits.
        let shapes = [(37, 19, 6), (9, 1500, 5), (3, 5000, 4), (1, 140_000, 2)];
        for (case, &(m, k, n)) in shapes.iter().enumerate() {
            let kind = if case == 3 { 2 } else { case as u32 % 3 };
            let mut a = codes(&mut rng, m * k, kind);
            let mut b = codes(&mut rng, k * n, kind);
            if case == 3 {
                a.fill(-32768);
                b.fill(-32768);
            }
            let am = CodeMatrix::row_major(&a, m, k).unwrap();
            let bm = CodeMatrix::row_major(&b, k, n).unwrap();
            let scale: Vec<f64> = (0..n).map(|j| f64::powi(2.0, j as i32 - 20)).collect();
            for mode in [Mode::Int16, Mode::Int8] {
                let golden = gemm_ref(&a, &b, m, k, n, mode).unwrap();
                let want: Vec<f32> = golden
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (v as f64 * scale[i % n]) as f32)
                    .collect();
                let mut fused = SoftAccel::new(4, 4).unwrap();
                let mut out = vec![0f32; m * n];
                fused
                    .gemm_scaled(am, bm, mode, None, &scale, &mut out)
                    .unwrap();
                assert_eq!(out, want, "case {case} {m}x{k}x{n} {mode:?}");
                let mut raw = SoftAccel::new(4, 4).unwrap();
                let mut acc = vec![0i64; m * n];
                raw.gemm(am, bm, mode, GemmOut::Raw(&mut acc)).unwrap();
                assert_eq!(fused.snapshot(), raw.snapshot());
                // Requantized commands: the golden requantization (including saturation at small
                // shifts), times 2^shift and the scale; counted as Requant-format commands.
                for shift in [0, 5, 13, 30] {
                    let want: Vec<f32> = golden
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let q = requantize(v, shift).unwrap();
                            (f64::from(q) * f64::powi(2.0, shift as i32) * scale[i % n]) as f32
                        })
                        .collect();
                    let mut fused = SoftAccel::new(4, 4).unwrap();
                    fused
                        .gemm_scaled(am, bm, mode, Some(shift), &scale, &mut out)
                        .unwrap();
                    assert_eq!(out, want, "case {case} {mode:?} shift {shift}");
                    let mut rq = SoftAccel::new(4, 4).unwrap();
                    let mut q = vec![0i16; m * n];
                    rq.gemm(am, bm, mode, GemmOut::Requant { shift, out: &mut q })
                        .unwrap();
                    assert_eq!(fused.snapshot(), rq.snapshot());
                }
            }
            if case == 3 {
                assert!(
                    gemm_ref(&a, &b, m, k, n, Mode::Int16).unwrap()[0] < 0,
                    "the test sum wraps"
                );
            }
        }
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let a = [1i16; 6];
        let am = CodeMatrix::row_major(&a, 2, 3).unwrap();
        let bm = CodeMatrix::row_major(&a, 3, 2).unwrap();
        let mut out = [0f32; 4];
        assert!(matches!(
            acc.gemm_scaled(am, bm, Mode::Int16, None, &[1.0], &mut out),
            Err(AccelError::Output {
                got: 1,
                expected: 2
            })
        ));
        assert_eq!(acc.live_counters(), Counters::default(), "no command");
        // A shift the block refuses is a rejected command, as for `gemm`.
        let mut out = [0f32; 4];
        assert!(matches!(
            acc.gemm_scaled(am, bm, Mode::Int16, Some(48), &[1.0; 2], &mut out),
            Err(AccelError::Shift(48))
        ));
        assert_eq!(
            acc.live_counters().total_cycles,
            cycles::rejected_command_cycles()
        );
    }

    /// `gemm_requant_scatter` (fused here, and the trait's default over plain commands) gives
    /// every group exactly the rows of the requantized commands one by one, in order and in
    /// pieces that cover the group, counts the same commands and returns the largest |code|;
    /// shifts around the integer epilogue's range limits (9 and 38 for INT16, 1 and 30 for
    /// INT8) and extreme codes included.
    #[test]
    fn requant_scatter_equals_the_commands_one_by_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0707);
        // (m, k, n, cmd_rows, group_rows): several commands whose blocks cut through groups.
        for (case, &(m, k, n, cmd_rows, group_rows)) in [
            (96, 16, 37, 40, 24),
            (60, 7, 16, 60, 60),
            (300, 300, 5, 112, 100),
        ]
        .iter()
        .enumerate()
        {
            for kind in 0..3u32 {
                let a = codes(&mut rng, m * k, kind);
                let b = codes(&mut rng, k * n, kind);
                let am = CodeMatrix::row_major(&a, m, k).unwrap();
                let bm = CodeMatrix::row_major(&b, k, n).unwrap();
                let scale: Vec<f64> = (0..n).map(|j| f64::powi(2.0, j as i32 % 7 - 30)).collect();
                for mode in [Mode::Int16, Mode::Int8] {
                    for shift in [0, 1, 8, 9, 20, 30, 31, 38, 39, 47] {
                        let mut whole = vec![0f32; m * n];
                        let mut one = SoftAccel::new(4, 4).unwrap();
                        for r0 in (0..m).step_by(cmd_rows) {
                            let r1 = (r0 + cmd_rows).min(m);
                            one.gemm_scaled(
                                am.sub(r0, r1, 0, k),
                                bm,
                                mode,
                                Some(shift),
                                &scale,
                                &mut whole[r0 * n..r1 * n],
                            )
                            .unwrap();
                        }
                        let golden = gemm_ref(&a, &b, m, k, n, mode).unwrap();
                        let want_max = golden
                            .iter()
                            .map(|&v| u32::from(requantize(v, shift).unwrap().unsigned_abs()))
                            .max()
                            .unwrap();
                        // The scatter writes each piece where it belongs and checks the order.
                        let scatter = |first: usize, rows: &[f32], d: &mut [f32]| {
                            assert_eq!(rows.len() % n, 0);
                            if first == 0 {
                                d.fill(f32::NAN);
                            } else {
                                assert!(!d[(first - 1) * n].is_nan(), "pieces in order");
                            }
                            d[first * n..first * n + rows.len()].copy_from_slice(rows);
                        };
                        let mut fused = SoftAccel::new(4, 4).unwrap();
                        let mut dst = vec![0f32; m * n];
                        let got = fused
                            .gemm_requant_scatter(
                                am, bm, mode, shift, &scale, cmd_rows, group_rows, &mut dst,
                                &scatter,
                            )
                            .unwrap();
                        let what = format!("case {case} kind {kind} {mode:?} shift {shift}");
                        assert_eq!(
                            dst.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{what}"
                        );
                        assert_eq!(got, want_max, "{what}");
                        assert_eq!(fused.snapshot(), one.snapshot(), "{what}");
                        let mut plain = Unfused(SoftAccel::new(4, 4).unwrap());
                        let mut dst = vec![0f32; m * n];
                        let got = plain
                            .gemm_requant_scatter(
                                am, bm, mode, shift, &scale, cmd_rows, group_rows, &mut dst,
                                &scatter,
                            )
                            .unwrap();
                        assert_eq!(dst, whole, "{what} (default)");
                        assert_eq!(got, want_max, "{what} (default)");
                        assert_eq!(plain.0.snapshot(), one.snapshot(), "{what} (default)");
                    }
                }
            }
        }
        // Host-side errors: no command; a refused shift: one rejected command.
        let a = [1i16; 8];
        let am = CodeMatrix::row_major(&a, 4, 2).unwrap();
        let bm = CodeMatrix::row_major(&a, 2, 4).unwrap();
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let mut dst = [0f32; 16];
        let nop = |_: usize, _: &[f32], _: &mut [f32]| {};
        assert!(matches!(
            acc.gemm_requant_scatter(am, bm, Mode::Int16, 3, &[1.0; 4], 4, 3, &mut dst, &nop),
            Err(AccelError::Scatter { .. })
        ));
        assert!(matches!(
            acc.gemm_requant_scatter(am, bm, Mode::Int16, 3, &[1.0; 4], 0, 2, &mut dst, &nop),
            Err(AccelError::Scatter { .. })
        ));
        assert_eq!(acc.live_counters(), Counters::default(), "no command");
        assert!(matches!(
            acc.gemm_requant_scatter(am, bm, Mode::Int16, 48, &[1.0; 4], 4, 2, &mut dst, &nop),
            Err(AccelError::Shift(48))
        ));
        assert_eq!(
            acc.live_counters().total_cycles,
            cycles::rejected_command_cycles()
        );
    }

    /// The trait's default methods over a `SoftAccel` (what a backend without fusion does).
    struct Unfused(SoftAccel);
    impl Accelerator for Unfused {
        fn array_shape(&self) -> crate::ArrayShape {
            self.0.array_shape()
        }
        fn gemm(
            &mut self,
            a: CodeMatrix<'_>,
            b: CodeMatrix<'_>,
            mode: Mode,
            out: GemmOut<'_>,
        ) -> Result<(), AccelError> {
            self.0.gemm(a, b, mode, out)
        }
        fn psg(
            &mut self,
            a: CodeMatrix<'_>,
            b: CodeMatrix<'_>,
            threshold: HwThreshold,
            pred: PredRounding,
            signs: &mut [i8],
        ) -> Result<PsgReport, AccelError> {
            self.0.psg(a, b, threshold, pred, signs)
        }
        #[allow(clippy::too_many_arguments)]
        fn psg_split_k(
            &mut self,
            a: CodeMatrix<'_>,
            b: CodeMatrix<'_>,
            threshold: HwThreshold,
            pred: PredRounding,
            k_pieces: (usize, usize),
            fallback: PsgFallback,
            signs: &mut [i8],
        ) -> Result<PsgReport, AccelError> {
            self.0
                .psg_split_k(a, b, threshold, pred, k_pieces, fallback, signs)
        }
        fn snapshot(&mut self) -> Counters {
            self.0.snapshot()
        }
        fn clear_counters(&mut self) {
            self.0.clear_counters()
        }
        fn max_p(&self) -> u64 {
            self.0.max_p()
        }
        fn clear_max_p(&mut self) {
            self.0.clear_max_p()
        }
    }

    #[test]
    fn split_k_equals_the_pieces_summed_on_the_host() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0006);
        // (m, k, n, piece): ragged last piece, one piece, and a K whose extreme codes wrap 48 bits
        // in one command but not in pieces of 1024 (so the host sum differs from a single command).
        let cases = [(9, 2500, 5, 1024), (4, 700, 3, 1024), (1, 140_000, 2, 1024)];
        for (case, &(m, k, n, piece)) in cases.iter().enumerate() {
            let mut a = codes(&mut rng, m * k, case as u32 % 3);
            let mut b = codes(&mut rng, k * n, 1);
            if case == 2 {
                a.fill(-32768);
                b.fill(-32768);
            }
            let am = CodeMatrix::row_major(&a, m, k).unwrap();
            let bm = CodeMatrix::row_major(&b, k, n).unwrap();
            let scale: Vec<f64> = (0..n).map(|j| f64::powi(2.0, j as i32 - 30)).collect();
            for mode in [Mode::Int16, Mode::Int8] {
                let mut fused = SoftAccel::new(4, 4).unwrap();
                let mut unfused = Unfused(SoftAccel::new(4, 4).unwrap());
                let (mut o1, mut o2) = (vec![0f32; m * n], vec![0f32; m * n]);
                fused
                    .gemm_scaled_split_k(am, bm, mode, piece, &scale, &mut o1)
                    .unwrap();
                unfused
                    .gemm_scaled_split_k(am, bm, mode, piece, &scale, &mut o2)
                    .unwrap();
                assert_eq!(o1, o2, "case {case} {mode:?}");
                assert_eq!(fused.snapshot(), unfused.snapshot(), "case {case} {mode:?}");
                assert_eq!(fused.snapshot().gemms, k.div_ceil(piece) as u64);
                if case == 2 && mode == Mode::Int16 {
                    // 140000 * 2^30 > 2^47: the pieces' exact sum, not the wrapped single command.
                    let exact = 140_000f64 * 2f64.powi(30) * scale[0];
                    assert_eq!(o1[0], exact as f32);
                }
            }
        }
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let a = [1i16; 6];
        let am = CodeMatrix::row_major(&a, 2, 3).unwrap();
        let mut out = [0f32; 4];
        assert!(
            acc.gemm_scaled_split_k(am, am.t(), Mode::Int16, 0, &[1.0; 2], &mut out)
                .is_err()
        );
        assert_eq!(acc.live_counters(), Counters::default(), "no command");
        // A shape mismatch sends no piece, fused or not.
        let mut unfused = Unfused(SoftAccel::new(4, 4).unwrap());
        let mut out6 = [0f32; 6];
        for r in [
            unfused.gemm_scaled_split_k(am, am, Mode::Int16, 2, &[1.0; 3], &mut out6),
            acc.gemm_scaled_split_k(am, am, Mode::Int16, 2, &[1.0; 3], &mut out6),
        ] {
            assert!(matches!(r, Err(AccelError::Inner { .. })), "{r:?}");
        }
        assert_eq!(unfused.snapshot(), Counters::default(), "no command");
        assert_eq!(acc.live_counters(), Counters::default(), "no command");
    }

    #[test]
    fn psg_without_recompute_zeroes_uncertain_signs_and_sends_only_the_prediction() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0008);
        let (m, k, n) = (9, 300, 7);
        let a = codes(&mut rng, m * k, 1);
        let b = codes(&mut rng, k * n, 1);
        let am = CodeMatrix::row_major(&a, m, k).unwrap();
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        let pred = PredRounding::Nearest;
        let ap: Vec<i16> = a.iter().map(|&v| pred.prediction_code(v)).collect();
        let bp: Vec<i16> = b.iter().map(|&v| pred.prediction_code(v)).collect();
        let p = gemm_ref(&ap, &bp, m, k, n, Mode::Int8).unwrap();
        let mut mags: Vec<u64> = p.iter().map(|v| v.unsigned_abs()).collect();
        mags.sort_unstable();
        let thr = mags[mags.len() / 3];
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let mut signs = vec![9i8; m * n];
        let rep = acc
            .psg_split_k(
                am,
                bm,
                HwThreshold::Absolute(thr),
                pred,
                (128, 64),
                PsgFallback::Zero,
                &mut signs,
            )
            .unwrap();
        let want = zeroed_uncertain_signs(&p, thr);
        assert_eq!(signs, want);
        let uncertain = p.iter().filter(|v| v.unsigned_abs() < thr).count() as u64;
        assert!(uncertain > 0);
        assert_eq!(rep.counts.uncertain, uncertain);
        assert_eq!(rep.counts.recomputed_tiles, 0);
        // Only the INT8 prediction pieces (128 + 128 + 44), no INT16 command.
        let c = acc.snapshot();
        let mut reference = SoftAccel::new(4, 4).unwrap();
        let mut out = vec![0i64; m * n];
        for k0 in (0..k).step_by(128) {
            let k1 = (k0 + 128).min(k);
            reference
                .gemm(
                    am.sub(0, m, k0, k1),
                    bm.sub(k0, k1, 0, n),
                    Mode::Int8,
                    GemmOut::Raw(&mut out),
                )
                .unwrap();
        }
        let mut r = reference.snapshot();
        r.psg_predicted = (m * n) as u64;
        r.psg_uncertain = uncertain;
        assert_eq!(c, r);
        assert_eq!((c.gemms, c.macs_int16), (3, 0));
    }

    #[test]
    fn host_psg_over_pieces_keeps_the_signs_and_counts_its_commands() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0007);
        let (m, k, n) = (10, 2600, 6);
        let a = codes(&mut rng, m * k, 1);
        let b = codes(&mut rng, k * n, 1);
        let am = CodeMatrix::row_major(&a, m, k).unwrap();
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        let pred = PredRounding::Nearest;
        let exact = gemm_ref(&a, &b, m, k, n, Mode::Int16).unwrap();
        let ap: Vec<i16> = a.iter().map(|&v| pred.prediction_code(v)).collect();
        let bp: Vec<i16> = b.iter().map(|&v| pred.prediction_code(v)).collect();
        let p = gemm_ref(&ap, &bp, m, k, n, Mode::Int8).unwrap();
        let mut mags: Vec<u64> = p.iter().map(|v| v.unsigned_abs()).collect();
        mags.sort_unstable();
        // No uncertain entry; one (tile by tile); most of them (the full recompute is cheaper).
        for (case, thr) in [0, mags[0] + 1, mags[mags.len() - 2]]
            .into_iter()
            .enumerate()
        {
            let th = HwThreshold::Absolute(thr);
            let mut unit = SoftAccel::new(4, 4).unwrap();
            let mut host = SoftAccel::new(4, 4).unwrap();
            let (mut s1, mut s2) = (vec![0i8; m * n], vec![0i8; m * n]);
            let r1 = unit.psg(am, bm, th, pred, &mut s1).unwrap();
            let r2 = host
                .psg_split_k(
                    am,
                    bm,
                    th,
                    pred,
                    (2048, 1024),
                    PsgFallback::Recompute,
                    &mut s2,
                )
                .unwrap();
            assert_eq!(r1.max_abs_p, r2.max_abs_p);
            // MAX_P follows OP_PSG commands only; the host PSG sends plain GEMMs.
            assert_eq!((unit.max_p(), host.max_p()), (r1.max_abs_p, 0));
            assert_eq!(r1.counts.uncertain, r2.counts.uncertain);
            assert_eq!(r1.counts.predicted, r2.counts.predicted);
            let c = host.snapshot();
            assert_eq!(c.psg_predicted, (m * n) as u64);
            assert_eq!(c.psg_uncertain, r2.counts.uncertain);
            assert_eq!(c.psg_recomputed_tiles, r2.counts.recomputed_tiles);
            // Prediction: 2 INT8 pieces (2048 + 552) of the whole 10 x 6 output.
            assert_eq!(c.macs_int8, (m * k * n) as u64);
            match case {
                0 => {
                    assert_eq!(s1, s2);
                    assert_eq!(c.gemms, 2);
                    assert_eq!(c.macs_int16, 0);
                }
                1 => {
                    assert_eq!(s1, s2);
                    assert_eq!(r2.counts.recomputed_tiles, 1);
                    // One tile (at most 4 x 4) in 3 INT16 pieces (1024 + 1024 + 552).
                    assert_eq!(c.gemms, 2 + 3);
                    assert!(c.macs_int16 <= (16 * k) as u64 && c.macs_int16 > 0);
                }
                _ => {
                    assert_eq!(
                        r2.counts.recomputed_tiles, r2.counts.tiles,
                        "full recompute"
                    );
                    assert_eq!(c.macs_int16, (m * k * n) as u64);
                    let want: Vec<i8> = exact.iter().map(|v| v.signum() as i8).collect();
                    assert_eq!(s2, want, "every sign exact");
                }
            }
            // The counters are those of the explicit commands: INT8 pieces, then the recompute.
            let mut reference = SoftAccel::new(4, 4).unwrap();
            let mut out = vec![0i64; m * n];
            let apm = CodeMatrix::row_major(&ap, m, k).unwrap();
            let bpm = CodeMatrix::row_major(&bp, k, n).unwrap();
            for k0 in (0..k).step_by(2048) {
                let k1 = (k0 + 2048).min(k);
                reference
                    .gemm(
                        apm.sub(0, m, k0, k1),
                        bpm.sub(k0, k1, 0, n),
                        Mode::Int8,
                        GemmOut::Raw(&mut out),
                    )
                    .unwrap();
            }
            let tiles: Vec<(usize, usize)> = match case {
                0 => vec![],
                1 => {
                    let idx = p.iter().position(|v| v.unsigned_abs() < thr).unwrap();
                    vec![(idx / n / 4, idx % n / 4)]
                }
                _ => vec![(usize::MAX, 0)],
            };
            for (ti, tj) in tiles {
                let (r0, r1, c0, c1) = if ti == usize::MAX {
                    (0, m, 0, n)
                } else {
                    (ti * 4, (ti * 4 + 4).min(m), tj * 4, (tj * 4 + 4).min(n))
                };
                let mut o = vec![0i64; (r1 - r0) * (c1 - c0)];
                for k0 in (0..k).step_by(1024) {
                    let k1 = (k0 + 1024).min(k);
                    reference
                        .gemm(
                            am.sub(r0, r1, k0, k1),
                            bm.sub(k0, k1, c0, c1),
                            Mode::Int16,
                            GemmOut::Raw(&mut o),
                        )
                        .unwrap();
                }
            }
            let mut want = reference.snapshot();
            want.psg_predicted = c.psg_predicted;
            want.psg_uncertain = c.psg_uncertain;
            want.psg_recomputed_tiles = c.psg_recomputed_tiles;
            assert_eq!(c, want, "case {case}");
        }
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let mut sg = vec![0i8; m * n];
        assert!(
            acc.psg_split_k(
                am,
                bm,
                HwThreshold::Absolute(1),
                pred,
                (0, 1024),
                PsgFallback::Recompute,
                &mut sg
            )
            .is_err()
        );
    }

    #[test]
    fn fused_fp32_operand_equals_quantize_then_gemm() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0004);
        for case in 0..12 {
            let (m, k, n) = (
                rng.random_range(1..50),
                rng.random_range(1..700),
                rng.random_range(1..9),
            );
            let xs: Vec<f32> = (0..m * k)
                .map(|_| (rng.random::<f32>() - 0.5) * 3.0)
                .collect();
            let b = codes(&mut rng, k * n, 0);
            let bm = CodeMatrix::row_major(&b, k, n).unwrap();
            let eight = case % 2 == 1;
            let exp = if eight {
                e2t_numerics::choose_exp_8bit(1.5)
            } else {
                e2t_numerics::choose_exp(1.5)
            };
            let a = F32Operand {
                data: &xs,
                rows: m,
                cols: k,
                exp,
                eight_bit: eight,
            };
            let mode = if case % 3 == 0 {
                Mode::Int8
            } else {
                Mode::Int16
            };
            let mut fused = SoftAccel::new(4, 4).unwrap();
            let mut plain = SoftAccel::new(4, 4).unwrap();
            let mut r1 = vec![0i64; m * n];
            let mut r2 = vec![0i64; m * n];
            fused
                .gemm_f32_lhs(a, bm, mode, GemmOut::Raw(&mut r1))
                .unwrap();
            let q = a.quantize().unwrap();
            plain
                .gemm(
                    CodeMatrix::row_major(&q, m, k).unwrap(),
                    bm,
                    mode,
                    GemmOut::Raw(&mut r2),
                )
                .unwrap();
            assert_eq!(r1, r2, "case {case}");
            assert_eq!(r1, gemm_ref(&q, &b, m, k, n, mode).unwrap());
            assert_eq!(fused.snapshot(), plain.snapshot());
        }
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let bad = F32Operand {
            data: &[1.0; 5],
            rows: 2,
            cols: 3,
            exp: 0,
            eight_bit: false,
        };
        let b = [0i16; 6];
        let mut r = vec![0i64; 4];
        assert!(
            acc.gemm_f32_lhs(
                bad,
                CodeMatrix::row_major(&b, 3, 2).unwrap(),
                Mode::Int16,
                GemmOut::Raw(&mut r)
            )
            .is_err()
        );
    }

    #[test]
    fn accumulators_wrap_like_the_golden_model() {
        // 2^17 products of 2^30 reach 2^47 and wrap; the fast path splits K across tasks and chunks.
        let k = (1 << 17) + 3;
        let a = vec![-32768i16; k];
        let am = CodeMatrix::row_major(&a, 1, k).unwrap();
        let bm = CodeMatrix::row_major(&a, k, 1).unwrap();
        let mut acc = SoftAccel::new(2, 2).unwrap();
        let mut raw = vec![0i64; 1];
        acc.gemm(am, bm, Mode::Int16, GemmOut::Raw(&mut raw))
            .unwrap();
        assert_eq!(raw, gemm_ref(&a, &a, 1, k, 1, Mode::Int16).unwrap());
        assert_eq!(raw[0], e2t_numerics::wrap48(((1i64 << 17) + 3) << 30));
    }

    #[test]
    fn psg_equals_golden_including_threshold_boundaries() {
        let seed = 0x5eed_0002;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut acc = SoftAccel::new(4, 2).unwrap();
        for case in 0..30 {
            let m = rng.random_range(1..30);
            let n = rng.random_range(1..20);
            let k = rng.random_range(1..200);
            let a = codes(&mut rng, m * k, 1);
            let kind_b = rng.random_range(0..2);
            let b = codes(&mut rng, k * n, kind_b);
            let am = CodeMatrix::row_major(&a, m, k).unwrap();
            let bm = CodeMatrix::row_major(&b, k, n).unwrap();
            let pred = if case % 2 == 0 {
                PredRounding::Floor
            } else {
                PredRounding::Nearest
            };
            // Thresholds at, just above and just below an actual |P|, plus the extremes.
            let probe = psg_ref_with(&a, &b, m, k, n, 0, 4, 2, pred).unwrap();
            let pivot = probe.max_abs_p / 3;
            for thr in [
                0,
                pivot.saturating_sub(1),
                pivot,
                pivot + 1,
                probe.max_abs_p + 1,
                e2t_numerics::THR_MAX,
            ] {
                let g = psg_ref_with(&a, &b, m, k, n, thr, 4, 2, pred).unwrap();
                let mut s = vec![0i8; m * n];
                let rep = acc
                    .psg(am, bm, HwThreshold::Absolute(thr), pred, &mut s)
                    .unwrap();
                assert_eq!(s, g.signs, "seed {seed} case {case} thr {thr}");
                assert_eq!(rep.counts, g.counts, "seed {seed} case {case} thr {thr}");
                assert_eq!(rep.max_abs_p, g.max_abs_p);
            }
        }
    }

    #[test]
    fn counters_equal_the_cycle_model_from_golden_tile_counts() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0003);
        let shape = cycles::ArrayShape { rows: 4, cols: 2 };
        let mut acc = SoftAccel::new(4, 2).unwrap();
        for _ in 0..10 {
            let (m, k, n) = (
                rng.random_range(1..20),
                rng.random_range(1..50),
                rng.random_range(1..12),
            );
            let a = codes(&mut rng, m * k, 1);
            let b = codes(&mut rng, k * n, 1);
            let am = CodeMatrix::row_major(&a, m, k).unwrap();
            let bm = CodeMatrix::row_major(&b, k, n).unwrap();
            let thr = rng.random_range(0..20);
            // Per-tile uncertain counts from the golden INT8 accumulators, command order.
            let p = gemm_ref(&a, &b, m, k, n, Mode::Int8).unwrap();
            let mut unc = Vec::new();
            for t0 in (0..m).step_by(4) {
                for c0 in (0..n).step_by(2) {
                    let cnt = (t0..(t0 + 4).min(m))
                        .flat_map(|i| (c0..(c0 + 2).min(n)).map(move |j| (i, j)))
                        .filter(|&(i, j)| p[i * n + j].unsigned_abs() < thr)
                        .count();
                    unc.push(cnt as u64);
                }
            }
            let before = acc.snapshot();
            let mut s = vec![0i8; m * n];
            acc.psg(
                am,
                bm,
                HwThreshold::Absolute(thr),
                PredRounding::Floor,
                &mut s,
            )
            .unwrap();
            let want = cycles::psg_counters(m as u64, k as u64, n as u64, shape, &unc).unwrap();
            assert_eq!(acc.snapshot().delta_since(&before), want);
            let before = acc.snapshot();
            let mut q = vec![0i16; m * n];
            acc.gemm(
                am,
                bm,
                Mode::Int8,
                GemmOut::Requant {
                    shift: 3,
                    out: &mut q,
                },
            )
            .unwrap();
            let want = cycles::gemm_counters(
                m as u64,
                k as u64,
                n as u64,
                Mode::Int8,
                OutFmt::Requant,
                shape,
            )
            .unwrap();
            assert_eq!(acc.snapshot().delta_since(&before), want);
        }
    }

    #[test]
    fn psg_boundary_entry_by_entry() {
        // 1 x 1 output: P = hi(868) * hi(512) = 3 * 2 = 6; the exact product is positive.
        let a = [3 * 256 + 100, 0];
        let b = [2 * 256, 0];
        let am = CodeMatrix::row_major(&a, 1, 2).unwrap();
        let bm = CodeMatrix::row_major(&b, 2, 1).unwrap();
        let mut acc = SoftAccel::new(1, 2).unwrap();
        let mut s = [0i8];
        let at = acc
            .psg(
                am,
                bm,
                HwThreshold::Absolute(6),
                PredRounding::Floor,
                &mut s,
            )
            .unwrap();
        assert_eq!(
            (at.counts.uncertain, at.counts.recomputed_tiles),
            (0, 0),
            "|P| == thr is certain"
        );
        let below = acc
            .psg(
                am,
                bm,
                HwThreshold::Absolute(7),
                PredRounding::Floor,
                &mut s,
            )
            .unwrap();
        assert_eq!(
            (below.counts.uncertain, below.counts.recomputed_tiles),
            (1, 1),
            "|P| == thr - 1 is uncertain"
        );
        assert_eq!(s, [1]);
        // Adaptive: (c * ref) >> 16 with c = 0.5, ref = 13 -> 6 (certain); ref = 14 -> 7 (uncertain).
        let r = acc
            .psg(
                am,
                bm,
                HwThreshold::Adaptive {
                    c_q16: 32768,
                    reference: 13,
                },
                PredRounding::Floor,
                &mut s,
            )
            .unwrap();
        assert_eq!((r.threshold, r.counts.uncertain), (6, 0));
        let r = acc
            .psg(
                am,
                bm,
                HwThreshold::Adaptive {
                    c_q16: 32768,
                    reference: 14,
                },
                PredRounding::Floor,
                &mut s,
            )
            .unwrap();
        assert_eq!((r.threshold, r.counts.uncertain), (7, 1));
        assert_eq!(acc.max_p(), 6);
        acc.clear_max_p();
        assert_eq!(acc.max_p(), 0);
    }

    #[test]
    fn bad_commands_are_rejected_and_cost_a_start_cycle() {
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let a = [1i16; 6];
        let am = CodeMatrix::row_major(&a, 2, 3).unwrap();
        let bm = CodeMatrix::row_major(&a, 3, 2).unwrap();
        let mut raw = vec![0i64; 3];
        assert!(matches!(
            acc.gemm(am, bm, Mode::Int16, GemmOut::Raw(&mut raw)),
            Err(AccelError::Output { .. })
        ));
        let mut q = vec![0i16; 4];
        assert!(matches!(
            acc.gemm(
                am,
                bm,
                Mode::Int16,
                GemmOut::Requant {
                    shift: 48,
                    out: &mut q
                }
            ),
            Err(AccelError::Shift(48))
        ));
        assert!(matches!(
            acc.gemm(am, am, Mode::Int16, GemmOut::Raw(&mut raw)),
            Err(AccelError::Inner { .. })
        ));
        let empty = CodeMatrix::row_major(&[], 2, 0).unwrap();
        let empty_b = CodeMatrix::row_major(&[], 0, 2).unwrap();
        let mut raw4 = vec![0i64; 4];
        assert!(matches!(
            acc.gemm(empty, empty_b, Mode::Int16, GemmOut::Raw(&mut raw4)),
            Err(AccelError::Dims { .. })
        ));
        let c = acc.snapshot();
        assert_eq!(
            c,
            Counters {
                total_cycles: 4,
                ..Default::default()
            }
        );
        let mut s = vec![0i8; 4];
        assert!(
            acc.psg(
                am,
                bm,
                HwThreshold::Absolute(1 << 48),
                PredRounding::Floor,
                &mut s
            )
            .is_err()
        );
        assert_eq!(
            acc.snapshot().total_cycles,
            4,
            "an unwritable threshold is no command"
        );
        assert!(SoftAccel::new(0, 4).is_err());
        assert!(SoftAccel::new(4, 33).is_err());
        assert!(
            SoftAccel::new(4, 3).is_err(),
            "INT8 packs two products per PE: C must be even"
        );
    }

    #[test]
    fn counters_snapshot_and_clear() {
        let mut acc = SoftAccel::new(4, 4).unwrap();
        let a = [1i16; 32];
        let am = CodeMatrix::row_major(&a, 4, 8).unwrap();
        let bm = CodeMatrix::row_major(&a, 8, 4).unwrap();
        let mut q = vec![0i16; 16];
        acc.gemm(
            am,
            bm,
            Mode::Int16,
            GemmOut::Requant {
                shift: 0,
                out: &mut q,
            },
        )
        .unwrap();
        assert_eq!(q, vec![8; 16]);
        let s1 = acc.snapshot();
        // The cycle model (rtl/README.md = `cycles.rs`) owns the figures; the soft model books them.
        let want = cycles::gemm_counters(
            4,
            8,
            4,
            Mode::Int16,
            OutFmt::Requant,
            cycles::ArrayShape { rows: 4, cols: 4 },
        )
        .unwrap();
        assert_eq!(s1, want);
        assert_eq!((s1.macs_int16, s1.gemms), (128, 1));
        acc.clear_counters();
        assert_eq!(acc.live_counters(), Counters::default());
        assert_eq!(acc.snapshot(), Counters::default());
    }
}
