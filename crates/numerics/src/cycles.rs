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
//!
//! `OP_GEMM` has a second schedule, the **reuse path** ([`GemmPath::Reuse`], chosen when
//! `ceil(K / E) <= RWS`): a block of `Q` column tiles of B stays on chip while R-row panels of A
//! stream through two buffers, and result drain overlaps compute. Its cycle count is the event
//! recurrence of `rtl/README.md` ("Reuse path schedule"), evaluated here per tile in O(tiles).
//! [`gemm_cycles`] / [`gemm_counters`] pick the path the host driver picks for the board's reuse
//! geometry [`ReuseGeom::BOARD`].

use e2t_core::{Counters, Mode};

/// Decode cycle of a command.
pub const T_START: u64 = 1;
/// Completion cycle of a command.
pub const T_DONE: u64 = 1;
/// Pipeline cycles between the last k-step of a pass and a readable accumulator.
pub const T_FLUSH: u64 = 3;
/// Cycles to latch one accumulator row before it is checked or sent.
pub const T_ROW: u64 = 1;
/// Reuse path: from a tile's last k-step issue to the first latch of its result rows.
pub const T_CAP: u64 = 4;
/// Reuse path: the last result beat leaving the output register before completion.
pub const T_FIN: u64 = 1;
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

/// Reuse-path geometry (the RTL parameters `RWS`, `Q`, read back from `HWCFG2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReuseGeom {
    /// 64-bit words per lane of an A buffer / B sub-tile: the path takes `ceil(K / E) <= words`.
    pub words: u64,
    /// Column tiles of B resident per block (a block is `q * C` columns).
    pub q: u64,
}

impl ReuseGeom {
    /// The RTL defaults (`e2t_top` `RWS = 256`, `Q = 8`), used by the board build: K up to 1024
    /// (INT16) / 2048 (INT8) takes the reuse path.
    pub const BOARD: ReuseGeom = ReuseGeom { words: 256, q: 8 };

    /// Largest K the reuse path takes in `mode`.
    pub fn k_max(self, mode: Mode) -> u64 {
        self.words * elems_per_beat(mode)
    }

    /// Whether a GEMM with inner dimension `k` fits the reuse path.
    pub fn fits(self, k: u64, mode: Mode) -> bool {
        k.div_ceil(elems_per_beat(mode)) <= self.words
    }
}

/// Which schedule (and stream format) an `OP_GEMM` command uses (`CMD_CFG.REUSE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmPath {
    /// One operand packet per output tile, sequential load / compute / drain.
    PerTile,
    /// Resident B block, double-buffered A panels, overlapped drain.
    Reuse(ReuseGeom),
}

impl GemmPath {
    /// The path the host driver chooses: reuse when K fits `geom`, else per tile.
    pub fn auto(k: u64, mode: Mode, geom: ReuseGeom) -> GemmPath {
        if geom.fits(k, mode) {
            GemmPath::Reuse(geom)
        } else {
            GemmPath::PerTile
        }
    }
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
    #[error("reuse geometry words = {words}, q = {q}: both must be at least 1")]
    Geometry { words: u64, q: u64 },
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

/// Cycles of an `OP_GEMM` command of `m x k` times `k x n` with never-stalling streams, on the
/// path the host picks for the board geometry ([`GemmPath::auto`] with [`ReuseGeom::BOARD`]).
pub fn gemm_cycles(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
) -> Result<CycleCount, CycleError> {
    let path = GemmPath::auto(k, mode, ReuseGeom::BOARD);
    gemm_cycles_on(m, k, n, mode, fmt, shape, path)
}

/// Cycles of an `OP_GEMM` command on an explicit path.
pub fn gemm_cycles_on(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
    path: GemmPath,
) -> Result<CycleCount, CycleError> {
    check(m, k, n, shape)?;
    match path {
        GemmPath::PerTile => {
            let mut c = CycleCount {
                total: T_START + T_DONE,
                ..Default::default()
            };
            for (rv, cv) in tiles(m, n, shape) {
                c.add(gemm_tile_cycles(rv, cv, k, mode, fmt));
            }
            Ok(c)
        }
        GemmPath::Reuse(geom) => {
            if geom.words == 0 || geom.q == 0 {
                return Err(CycleError::Geometry {
                    words: geom.words,
                    q: geom.q,
                });
            }
            if !geom.fits(k, mode) {
                return Err(CycleError::TooLarge {
                    name: "K (reuse path)",
                    value: k,
                    max: geom.k_max(mode),
                });
            }
            Ok(reuse_schedule(m, k, n, mode, fmt, shape, geom).count)
        }
    }
}

/// The reuse-path schedule of one command: its counts and its compute window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReuseSchedule {
    pub count: CycleCount,
    /// Cycle (from decode = 0) of the first k-step issue.
    pub first_issue: u64,
    /// Cycle of the last k-step issue.
    pub last_issue: u64,
}

impl ReuseSchedule {
    /// Steady-state utilization: INT16-equivalent MAC slots used over the slots offered from the
    /// first to the last k-step issue (the compute window; excludes the first B block and A panel
    /// load, and the last tile's drain).
    pub fn window_utilization(&self, macs_int16_equivalent: f64, shape: ArrayShape) -> f64 {
        let cycles = (self.last_issue + 1 - self.first_issue) as f64;
        macs_int16_equivalent / (cycles * f64::from(shape.rows) * f64::from(shape.cols))
    }
}

/// The reuse-path schedule of an `OP_GEMM` (see [`gemm_cycles_on`] for the checks).
pub fn reuse_schedule_of(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
    geom: ReuseGeom,
) -> Result<ReuseSchedule, CycleError> {
    gemm_cycles_on(m, k, n, mode, fmt, shape, GemmPath::Reuse(geom))?;
    Ok(reuse_schedule(m, k, n, mode, fmt, shape, geom))
}

/// The reuse-path schedule (rtl/README.md "Reuse path schedule"): virtual cycle numbers with
/// cycle 0 the decode cycle. Loader: B block 0, then per block its A panels, each followed by a
/// slice of the next block's B, one beat per cycle; a slice waits for its B buffer (freed by the
/// last k-step issue of the block two before), an A panel for its buffer (freed by the last
/// k-step issue of the panel two before). Compute: a panel starts when loaded; its tiles
/// issue back to back, but a tile's last k-step waits until the previous tile's rows are latched
/// out of the shadows. Drain: starts `T_CAP` after the last k-step (or when the previous drain
/// ends), `T_ROW + bpr` cycles per row.
fn reuse_schedule(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
    geom: ReuseGeom,
) -> ReuseSchedule {
    let (r, c) = (u64::from(shape.rows), u64::from(shape.cols));
    let w = k.div_ceil(elems_per_beat(mode));
    let s = k.div_ceil(steps_per_cycle(mode));
    let qc = geom.q * c;
    let mut out = CycleCount::default();
    let mut lfree = T_START; // first cycle the loader may take its next packet's first beat
    let mut cfree = 0; // first cycle after the previous panel's last k-step issue
    let mut rel = 0; // first cycle the shadows are free again
    let mut dend = 0; // last drain cycle of the previous tile
    let mut aclr = [0u64; 2]; // first cycle each A buffer is free
    let mut bclr = [0u64; 2]; // first cycle each B buffer is free
    let mut g = 0usize; // global panel index (A buffer = g % 2)
    let mut first_issue = None;
    let mut last_issue = 0;
    let blocks = n.div_ceil(qc);
    // B block 0 comes whole; block b + 1 arrives in slices after the A panels of block b.
    let bw0 = qc.min(n);
    lfree += bw0 * w;
    out.beats_in += bw0 * w;
    for blk in 0..blocks {
        let nb0 = blk * qc;
        let bw = qc.min(n - nb0);
        let next = nb0 + qc;
        let next_end = (next + qc).min(n);
        let mut col = next; // next column of block blk + 1 to load
        for m0 in (0..m).step_by(r as usize) {
            let rv = r.min(m - m0);
            let astart = lfree.max(aclr[g % 2]);
            lfree = astart + rv * w;
            out.beats_in += rv * w;
            let mut f = cfree.max(lfree);
            for n0 in (nb0..nb0 + bw).step_by(c as usize) {
                let cv = c.min(n - n0);
                let bpr = beats_per_row(cv, fmt);
                first_issue.get_or_insert(f);
                let l = (f + s - 1).max(rel);
                last_issue = l;
                let d = (l + T_CAP).max(dend + 1);
                rel = d + (rv - 1) * (T_ROW + bpr) + 1;
                dend = d + rv * (T_ROW + bpr) - 1;
                f = l + 1;
                out.busy += s;
                out.beats_out += rv * bpr;
            }
            cfree = f;
            aclr[g % 2] = f;
            g += 1;
            if col < next_end {
                // slice of the next block into B buffer (blk + 1) % 2, once block blk - 1 is done
                let end = if m0 + r >= m {
                    next_end
                } else {
                    (col + c).min(next_end)
                };
                let bstart = lfree.max(bclr[(blk as usize + 1) % 2]);
                lfree = bstart + (end - col) * w;
                out.beats_in += (end - col) * w;
                col = end;
            }
        }
        bclr[blk as usize % 2] = cfree;
    }
    out.total = dend + 1 + T_FIN + T_DONE;
    ReuseSchedule {
        count: out,
        first_issue: first_issue.unwrap_or(0),
        last_issue,
    }
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

/// The full counter delta of an `OP_GEMM` command with never-stalling streams, on the path the
/// host picks for the board geometry (see [`gemm_cycles`]).
pub fn gemm_counters(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
) -> Result<Counters, CycleError> {
    let path = GemmPath::auto(k, mode, ReuseGeom::BOARD);
    gemm_counters_on(m, k, n, mode, fmt, shape, path)
}

/// The full counter delta of an `OP_GEMM` command on an explicit path.
pub fn gemm_counters_on(
    m: u64,
    k: u64,
    n: u64,
    mode: Mode,
    fmt: OutFmt,
    shape: ArrayShape,
    path: GemmPath,
) -> Result<Counters, CycleError> {
    let c = gemm_cycles_on(m, k, n, mode, fmt, shape, path)?;
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
            let c = gemm_cycles_on(m, k, n, mode, fmt, A4, GemmPath::PerTile).unwrap();
            assert_eq!(c.total, want, "M{m} K{k} N{n} {mode:?} {fmt:?}");
        }
    }

    #[test]
    fn single_tile_by_hand() {
        // 4x4 tile, K = 8, INT16, raw: load 8 lanes x 2 beats, 8 busy, 3 flush, 4 rows x (1 + 4).
        let c = gemm_cycles_on(4, 8, 4, Mode::Int16, OutFmt::Raw48, A4, GemmPath::PerTile).unwrap();
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
        // K >= 256 on the reuse path: >= 90% of the MAC slots used from the first to the last
        // k-step, in both modes, on 4x4 and 16x16; INT8 takes about half the cycles of INT16.
        let s16 = ArrayShape { rows: 16, cols: 16 };
        for shape in [A4, s16] {
            for (m, k, n) in [(256, 256, 256), (512, 256, 512), (256, 576, 256)] {
                let mut totals = [0; 2];
                for (i, mode) in [Mode::Int16, Mode::Int8].into_iter().enumerate() {
                    let fmt = OutFmt::Requant;
                    let c = gemm_counters(m, k, n, mode, fmt, shape).unwrap();
                    let sch = reuse_schedule_of(m, k, n, mode, fmt, shape, ReuseGeom::BOARD);
                    let sch = sch.unwrap();
                    assert_eq!(sch.count.total, c.total_cycles, "auto path is reuse");
                    let u = sch.window_utilization(c.int16_equivalent_macs(), shape);
                    assert!(u >= 0.9, "{shape:?} {m}x{k}x{n} {mode:?}: window util {u}");
                    assert!(busy_utilization(&c, shape).unwrap() >= 0.999);
                    totals[i] = c.total_cycles;
                }
                let ratio = totals[1] as f64 / totals[0] as f64;
                assert!((0.49..0.51).contains(&ratio), "INT8/INT16 = {ratio}");
            }
        }
    }

    const G16_2: ReuseGeom = ReuseGeom { words: 16, q: 2 };

    #[test]
    fn reuse_single_tile_by_hand() {
        // 4x4 tile, K = 8 INT16 raw, 2 words per lane: B block 8 beats (cycles 1..8), A panel
        // 8 beats (9..16), k-steps 17..24, rows latched from 28 on, 4 x (1 + 4) drain cycles end
        // at 47, then T_FIN and T_DONE.
        let g = ReuseGeom { words: 2, q: 1 };
        let sch = reuse_schedule_of(4, 8, 4, Mode::Int16, OutFmt::Raw48, A4, g).unwrap();
        assert_eq!((sch.first_issue, sch.last_issue), (17, 24));
        assert_eq!(
            sch.count,
            CycleCount {
                total: 50,
                busy: 8,
                beats_in: 16,
                beats_out: 16
            }
        );
    }

    /// Totals of the reuse path on the 4x4 test model (RWS = 16, Q = 2); the Verilated RTL gives
    /// the same (sim test `reuse_path_is_exact_on_ragged_shapes_and_blocks`, which checks every
    /// shape and format there against this model).
    #[test]
    fn reuse_matches_the_rtl_model() {
        let cases = [
            (13, 33, 17, Mode::Int16, OutFmt::Raw48, 794),
            (13, 33, 17, Mode::Int8, OutFmt::Requant, 426),
            (5, 3, 9, Mode::Int8, OutFmt::Sign, 65),
            (8, 1, 16, Mode::Int16, OutFmt::Raw48, 179),
            (3, 64, 10, Mode::Int16, OutFmt::Requant, 380),
        ];
        for (m, k, n, mode, fmt, want) in cases {
            let p = GemmPath::Reuse(G16_2);
            let c = gemm_cycles_on(m, k, n, mode, fmt, A4, p).unwrap();
            assert_eq!(c.total, want, "M{m} K{k} N{n} {mode:?} {fmt:?}");
        }
        // K one word past the buffers: rejected on the reuse path, auto falls back to per tile.
        assert!(
            gemm_cycles_on(
                1,
                65,
                1,
                Mode::Int16,
                OutFmt::Raw48,
                A4,
                GemmPath::Reuse(G16_2)
            )
            .is_err()
        );
        assert_eq!(GemmPath::auto(65, Mode::Int16, G16_2), GemmPath::PerTile);
        assert_eq!(
            GemmPath::auto(128, Mode::Int8, G16_2),
            GemmPath::Reuse(G16_2)
        );
    }

    #[test]
    fn reuse_streams_each_operand_once() {
        // A once per B block, B once: beats = (M * blocks + N) * ceil(K / E).
        let g = ReuseGeom::BOARD;
        let c = gemm_counters(100, 300, 300, Mode::Int8, OutFmt::Requant, A4).unwrap();
        let blocks = 300u64.div_ceil(g.q * 4);
        assert_eq!(c.bytes_in, 8 * (100 * blocks + 300) * 300u64.div_ceil(8));
        assert_eq!(c.macs_int8, 100 * 300 * 300);
    }
}
