//! The accelerator's cycle model: the closed formula of `rtl/README.md` ("Cycle formula"), which the
//! RTL meets exactly when its streams never stall (`total_cycles - stall_in - stall_out` equals
//! [`gemm_cycles`] / [`psg_cycles`]), plus the full expected [`Counters`] delta of a command.
//!
//! Schedule, per output tile (R x C block, `mt` outer, `nt` inner) and pass: load the tile's operand
//! packet (`(Rv + Cv) * ceil(K / E)` beats, one per cycle), compute (`ceil(K / P)` busy cycles), flush
//! the array pipeline ([`T_FLUSH`]), then per valid row latch it ([`T_ROW`]) and send its beats. PSG
//! tiles add a threshold check (2 cycles per row), a status beat and, when uncertain, an INT16 pass.
//! Each command adds [`T_START`] + [`T_DONE`]. `E` = 4 (INT16) or 8 (INT8) elements per input beat,
//! `P` = 1 or 2 k-steps per busy cycle.

use e2t_core::{Counters, Mode};

/// Decode cycle of a command.
pub const T_START: u64 = 1;
/// Completion cycle of a command.
pub const T_DONE: u64 = 1;
/// Pipeline cycles between the last k-step of a pass and a readable accumulator.
pub const T_FLUSH: u64 = 3;
/// Cycles to latch one accumulator row before it is checked or sent.
pub const T_ROW: u64 = 1;
/// Largest M and N a command accepts.
pub const DIM_MN_MAX: u64 = 65_535;
/// Largest K a command accepts.
pub const DIM_K_MAX: u64 = 16_777_215;
/// Largest array side the RTL supports.
pub const ARRAY_SIDE_MAX: u32 = 32;

/// Output format of an `OP_GEMM` command (`CMD_CFG.OUT_FMT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutFmt {
    /// 4 requantized int16 results per beat.
    Requant,
    /// One 48-bit accumulator (sign-extended) per beat.
    Raw48,
    /// 32 two-bit signs per beat.
    Sign,
}

/// Array shape (the RTL parameters `R`, `C`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArrayShape {
    pub rows: u32,
    pub cols: u32,
}

/// Cycle and beat counts of one command with streams that never stall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CycleCount {
    /// All cycles from decode to completion.
    pub total: u64,
    /// Compute cycles (k-step issue cycles).
    pub busy: u64,
    /// Operand beats accepted (8 bytes each).
    pub beats_in: u64,
    /// Result beats emitted (8 bytes each).
    pub beats_out: u64,
}

impl CycleCount {
    fn add(&mut self, o: CycleCount) {
        self.total += o.total;
        self.busy += o.busy;
        self.beats_in += o.beats_in;
        self.beats_out += o.beats_out;
    }
}

/// A command or array shape the RTL would reject (the command is skipped with an error code).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CycleError {
    #[error("GEMM dimension {name} = 0: every dimension must be at least 1 (ERR_ZERO_DIM)")]
    ZeroDim { name: &'static str },
    #[error(
        "GEMM dimension {name} = {value} is above the hardware limit {max} (ERR_DIM_TOO_LARGE)"
    )]
    TooLarge {
        name: &'static str,
        value: u64,
        max: u64,
    },
    #[error("array {rows} x {cols}: sides must be 1..=32 and the column count even")]
    Shape { rows: u32, cols: u32 },
    #[error("PSG uncertain counts: {given} tiles given, the GEMM has {expected}")]
    TileCount { given: usize, expected: usize },
}

/// Input elements per 64-bit beat in a mode's layout.
pub fn elems_per_beat(mode: Mode) -> u64 {
    match mode {
        Mode::Int16 => 4,
        Mode::Int8 => 8,
    }
}

/// k-steps a PE takes per busy cycle.
pub fn steps_per_cycle(mode: Mode) -> u64 {
    match mode {
        Mode::Int16 => 1,
        Mode::Int8 => 2,
    }
}

fn check(m: u64, k: u64, n: u64, shape: ArrayShape) -> Result<(), CycleError> {
    let ArrayShape { rows, cols } = shape;
    if !(1..=ARRAY_SIDE_MAX).contains(&rows)
        || !(2..=ARRAY_SIDE_MAX).contains(&cols)
        || cols % 2 != 0
    {
        return Err(CycleError::Shape { rows, cols });
    }
    for (name, v) in [("M", m), ("K", k), ("N", n)] {
        if v == 0 {
            return Err(CycleError::ZeroDim { name });
        }
    }
    for (name, v, max) in [
        ("M", m, DIM_MN_MAX),
        ("N", n, DIM_MN_MAX),
        ("K", k, DIM_K_MAX),
    ] {
        if v > max {
            return Err(CycleError::TooLarge {
                name,
                value: v,
                max,
            });
        }
    }
    Ok(())
}

/// Valid rows/columns of each tile, in command order (`mt` outer, `nt` inner).
fn tiles(m: u64, n: u64, shape: ArrayShape) -> impl Iterator<Item = (u64, u64)> {
    let (r, c) = (u64::from(shape.rows), u64::from(shape.cols));
    (0..m.div_ceil(r)).flat_map(move |mt| {
        let rv = r.min(m - mt * r);
        (0..n.div_ceil(c)).map(move |nt| (rv, c.min(n - nt * c)))
    })
}

/// One pass over a tile: load, compute, flush.
pub fn pass_cycles(rv: u64, cv: u64, k: u64, mode: Mode) -> CycleCount {
    let beats_in = (rv + cv) * k.div_ceil(elems_per_beat(mode));
    let busy = k.div_ceil(steps_per_cycle(mode));
    CycleCount {
        total: beats_in + busy + T_FLUSH,
        busy,
        beats_in,
        beats_out: 0,
    }
}

/// Result beats of one row of `cv` entries.
pub fn beats_per_row(cv: u64, fmt: OutFmt) -> u64 {
    match fmt {
        OutFmt::Requant => cv.div_ceil(4),
        OutFmt::Raw48 => cv,
        OutFmt::Sign => cv.div_ceil(32),
    }
}

/// One `OP_GEMM` tile.
pub fn gemm_tile_cycles(rv: u64, cv: u64, k: u64, mode: Mode, fmt: OutFmt) -> CycleCount {
    let mut c = pass_cycles(rv, cv, k, mode);
    let bpr = beats_per_row(cv, fmt);
    c.total += rv * (T_ROW + bpr);
    c.beats_out = rv * bpr;
    c
}

/// One `OP_PSG` tile: INT8 prediction, check, status beat, optional INT16 recompute, sign packet.
pub fn psg_tile_cycles(rv: u64, cv: u64, k: u64, recompute: bool) -> CycleCount {
    let mut c = pass_cycles(rv, cv, k, Mode::Int8);
    c.total += rv * (T_ROW + 1) + 1;
    c.beats_out += 1;
    if recompute {
        c.add(pass_cycles(rv, cv, k, Mode::Int16));
    }
    let bpr = beats_per_row(cv, OutFmt::Sign);
    c.total += rv * (T_ROW + bpr);
    c.beats_out += rv * bpr;
    c
}

/// Cycles of an `OP_GEMM` command of `m x k` times `k x n` with never-stalling streams.
pub fn gemm_cycles(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
) -> Result<CycleCount, CycleError> {
    check(m, k, n, shape)?;
    let mut c = CycleCount {
        total: T_START + T_DONE,
        ..Default::default()
    };
    for (rv, cv) in tiles(m, n, shape) {
        c.add(gemm_tile_cycles(rv, cv, k, mode, fmt));
    }
    Ok(c)
}

/// Number of output tiles of an `m x n` result.
pub fn tile_count(m: u64, n: u64, shape: ArrayShape) -> usize {
    tiles(m, n, shape).count()
}

/// Cycles of an `OP_PSG` command; `uncertain[t]` is the uncertain-entry count of tile `t` (command
/// order), which decides whether it is recomputed.
pub fn psg_cycles(
    m: u64,
    k: u64,
    n: u64,
    shape: ArrayShape,
    uncertain: &[u64],
) -> Result<CycleCount, CycleError> {
    check(m, k, n, shape)?;
    let expected = tile_count(m, n, shape);
    if uncertain.len() != expected {
        return Err(CycleError::TileCount {
            given: uncertain.len(),
            expected,
        });
    }
    let mut c = CycleCount {
        total: T_START + T_DONE,
        ..Default::default()
    };
    for ((rv, cv), u) in tiles(m, n, shape).zip(uncertain) {
        c.add(psg_tile_cycles(rv, cv, k, *u > 0));
    }
    Ok(c)
}

/// Cycles of a command the block rejects at decode (bad opcode, dimension or configuration).
pub fn rejected_command_cycles() -> u64 {
    T_START
}

/// The full counter delta of an `OP_GEMM` command with never-stalling streams.
pub fn gemm_counters(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
) -> Result<Counters, CycleError> {
    let c = gemm_cycles(m, k, n, mode, fmt, shape)?;
    let macs = m * k * n;
    Ok(Counters {
        total_cycles: c.total,
        busy_cycles: c.busy,
        macs_int8: if mode == Mode::Int8 { macs } else { 0 },
        macs_int16: if mode == Mode::Int16 { macs } else { 0 },
        bytes_in: 8 * c.beats_in,
        bytes_out: 8 * c.beats_out,
        gemms: 1,
        ..Default::default()
    })
}

/// The full counter delta of an `OP_PSG` command with never-stalling streams, given the uncertain
/// count of every tile (command order). Recomputed tiles add INT16 MACs `Rv * Cv * K` each.
pub fn psg_counters(
    m: u64,
    k: u64,
    n: u64,
    shape: ArrayShape,
    uncertain: &[u64],
) -> Result<Counters, CycleError> {
    let c = psg_cycles(m, k, n, shape, uncertain)?;
    let mut macs_int16 = 0;
    let mut recomputed = 0;
    for ((rv, cv), u) in tiles(m, n, shape).zip(uncertain) {
        if *u > 0 {
            macs_int16 += rv * cv * k;
            recomputed += 1;
        }
    }
    Ok(Counters {
        total_cycles: c.total,
        busy_cycles: c.busy,
        macs_int8: m * k * n,
        macs_int16,
        bytes_in: 8 * c.beats_in,
        bytes_out: 8 * c.beats_out,
        psg_predicted: m * n,
        psg_uncertain: uncertain.iter().sum(),
        psg_recomputed_tiles: recomputed,
        gemms: 1,
        ..Default::default()
    })
}

/// Array utilization while computing: INT16-equivalent MAC slots used over slots offered in busy
/// cycles (an INT8 MAC takes half a slot). `None` when there were no busy cycles.
pub fn busy_utilization(c: &Counters, shape: ArrayShape) -> Option<f64> {
    let slots = c.busy_cycles as f64 * f64::from(shape.rows) * f64::from(shape.cols);
    (c.busy_cycles > 0).then(|| c.int16_equivalent_macs() / slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A4: ArrayShape = ArrayShape { rows: 4, cols: 4 };

    /// Totals measured on the Verilated RTL (4 x 4 array, streams never stalling).
    #[test]
    fn matches_measured_rtl_cycles() {
        let cases = [
            (4, 8, 4, Mode::Int16, OutFmt::Raw48, 49),
            (5, 37, 7, Mode::Int16, OutFmt::Requant, 422),
            (5, 37, 7, Mode::Int8, OutFmt::Requant, 230),
            (9, 70, 6, Mode::Int8, OutFmt::Raw48, 626),
            (3, 33, 9, Mode::Int16, OutFmt::Sign, 290),
            (8, 256, 8, Mode::Int16, OutFmt::Requant, 3118),
            (8, 256, 8, Mode::Int8, OutFmt::Requant, 1582),
            (1, 1, 1, Mode::Int8, OutFmt::Raw48, 10),
            (3, 9, 2, Mode::Int8, OutFmt::Requant, 26),
        ];
        for (m, k, n, mode, fmt, want) in cases {
            let c = gemm_cycles(m, k, n, mode, fmt, A4).unwrap();
            assert_eq!(c.total, want, "M{m} K{k} N{n} {mode:?} {fmt:?}");
        }
    }

    #[test]
    fn single_tile_by_hand() {
        // 4x4 tile, K = 8, INT16, raw: load 8 lanes x 2 beats, 8 busy, 3 flush, 4 rows x (1 + 4).
        let c = gemm_cycles(4, 8, 4, Mode::Int16, OutFmt::Raw48, A4).unwrap();
        assert_eq!(
            c,
            CycleCount {
                total: 2 + 16 + 8 + 3 + 20,
                busy: 8,
                beats_in: 16,
                beats_out: 16
            }
        );
    }

    #[test]
    fn psg_adds_recompute_only_for_uncertain_tiles() {
        let none = psg_counters(8, 40, 4, A4, &[0, 0]).unwrap();
        let one = psg_counters(8, 40, 4, A4, &[3, 0]).unwrap();
        let pass16 = pass_cycles(4, 4, 40, Mode::Int16);
        assert_eq!(one.total_cycles - none.total_cycles, pass16.total);
        assert_eq!(one.busy_cycles - none.busy_cycles, 40);
        assert_eq!(one.macs_int16, 4 * 4 * 40);
        assert_eq!(
            (
                one.psg_uncertain,
                one.psg_recomputed_tiles,
                one.psg_predicted
            ),
            (3, 1, 32)
        );
        assert_eq!(none.macs_int8, 8 * 40 * 4);
        // per tile: status beat + 4 sign beats
        assert_eq!(none.bytes_out, 8 * 2 * 5);
        assert!(psg_counters(8, 40, 4, A4, &[0]).is_err());
    }

    #[test]
    fn rejects_what_the_rtl_rejects() {
        assert!(matches!(
            gemm_cycles(0, 1, 1, Mode::Int8, OutFmt::Raw48, A4),
            Err(CycleError::ZeroDim { name: "M" })
        ));
        assert!(matches!(
            gemm_cycles(1, 1 << 24, 1, Mode::Int8, OutFmt::Raw48, A4),
            Err(CycleError::TooLarge { .. })
        ));
        assert!(
            gemm_cycles(
                1,
                1,
                1,
                Mode::Int8,
                OutFmt::Raw48,
                ArrayShape { rows: 4, cols: 3 }
            )
            .is_err()
        );
    }

    #[test]
    fn steady_state_targets() {
        // K >= 256: the array is >= 90% busy-utilized in both modes, INT8 takes about half the cycles.
        let s16 = ArrayShape { rows: 16, cols: 16 };
        for shape in [A4, s16] {
            let c16 = gemm_counters(64, 256, 64, Mode::Int16, OutFmt::Requant, shape).unwrap();
            let c8 = gemm_counters(64, 256, 64, Mode::Int8, OutFmt::Requant, shape).unwrap();
            assert!(busy_utilization(&c16, shape).unwrap() >= 0.9);
            assert!(busy_utilization(&c8, shape).unwrap() >= 0.9);
            let ratio = c8.total_cycles as f64 / c16.total_cycles as f64;
            assert!((0.45..0.56).contains(&ratio), "INT8/INT16 = {ratio}");
        }
    }
}
