//! The host side of the accelerator protocol (rtl/README.md): operand tile packets, GEMM and PSG
//! command sequences, result unpacking, counter snapshots. Everything here follows the README's
//! stream format literally, so a mismatch with the RTL shows up as a wrong value or a protocol error.

use crate::{Beat, Tb, TbError};
use e2t_core::{Counters, Mode};
use e2t_csr as csr;
use std::fmt;

/// The STATUS register, decoded for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    fn bit(self, b: u32) -> bool {
        self.0 >> b & 1 != 0
    }
    pub fn busy(self) -> bool {
        self.bit(csr::STATUS_BUSY_BIT)
    }
    pub fn done(self) -> bool {
        self.bit(csr::STATUS_DONE_BIT)
    }
    pub fn error(self) -> bool {
        self.bit(csr::STATUS_ERROR_BIT)
    }
    pub fn fifo_full(self) -> bool {
        self.bit(csr::STATUS_FIFO_FULL_BIT)
    }
    pub fn fifo_count(self) -> u32 {
        self.0 >> csr::STATUS_FIFO_CNT_LSB & ((1 << csr::STATUS_FIFO_CNT_W) - 1)
    }
    pub fn draining(self) -> bool {
        self.bit(csr::STATUS_DRAINING_BIT)
    }
    pub fn err_code(self) -> u32 {
        self.0 >> csr::STATUS_ERR_CODE_LSB & ((1 << csr::STATUS_ERR_CODE_W) - 1)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#06x} (busy={} done={} error={} err_code={} fifo_count={} draining={})",
            self.0,
            u8::from(self.busy()),
            u8::from(self.done()),
            u8::from(self.error()),
            self.err_code(),
            self.fifo_count(),
            u8::from(self.draining())
        )
    }
}

/// Output format of a GEMM command (`CMD_CFG.OUT_FMT`, plus the shift for requant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFmt {
    /// Requantized int16 with this arithmetic right shift (round half up, saturate).
    Requant(u32),
    /// The 48-bit accumulators, sign-extended to 64 bits.
    Raw48,
    /// sign(acc) as +1 / -1 / 0.
    Sign,
}

impl OutFmt {
    pub fn code(self) -> u32 {
        match self {
            OutFmt::Requant(_) => csr::OUT_REQUANT,
            OutFmt::Raw48 => csr::OUT_RAW48,
            OutFmt::Sign => csr::OUT_SIGN,
        }
    }
    pub fn shift(self) -> u32 {
        if let OutFmt::Requant(s) = self { s } else { 0 }
    }
    /// Output beats per result row of `cv` entries.
    pub fn beats_per_row(self, cv: usize) -> usize {
        match self {
            OutFmt::Requant(_) => cv.div_ceil(csr::REQ_PER_BEAT as usize),
            OutFmt::Raw48 => cv,
            OutFmt::Sign => cv.div_ceil(csr::SIGN_PER_BEAT as usize),
        }
    }
}

/// The array configuration read from HWCFG and HWCFG2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwCfg {
    pub r: usize,
    pub c: usize,
    pub depth: usize,
    /// Reuse path: words per lane of an A buffer / B sub-tile (K up to `E * rws` takes the path).
    pub rws: usize,
    /// Reuse path: column tiles per resident B block.
    pub q: usize,
}

/// Which stream format / schedule an `OP_GEMM` uses (`CMD_CFG.REUSE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// One operand packet per output tile (any K).
    PerTile,
    /// Resident B block, streamed A panels (needs `ceil(K/E) <= rws`).
    Reuse,
}

impl GemmPath {
    /// The driver's choice: reuse whenever K fits the reuse buffers (the cycle model's own rule,
    /// so driver and model cannot disagree on the path).
    pub fn auto(k: usize, mode: Mode, hw: HwCfg) -> GemmPath {
        let geom = e2t_numerics::cycles::ReuseGeom {
            words: hw.rws as u64,
            q: hw.q as u64,
        };
        if geom.fits(k as u64, mode) {
            GemmPath::Reuse
        } else {
            GemmPath::PerTile
        }
    }
}

/// Input elements per beat.
pub fn elems(mode: Mode) -> usize {
    match mode {
        Mode::Int16 => csr::ELEMS_INT16 as usize,
        Mode::Int8 => csr::ELEMS_INT8 as usize,
    }
}

/// One output tile: rows `m0..m0+rv`, columns `n0..n0+cv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub m0: usize,
    pub rv: usize,
    pub n0: usize,
    pub cv: usize,
}

/// The tiles of an `m x n` result in the block's order (row tiles outer, column tiles inner).
pub fn tiles(m: usize, n: usize, hw: HwCfg) -> Vec<Tile> {
    let mut out = Vec::new();
    for m0 in (0..m).step_by(hw.r) {
        for n0 in (0..n).step_by(hw.c) {
            out.push(Tile {
                m0,
                rv: hw.r.min(m - m0),
                n0,
                cv: hw.c.min(n - n0),
            });
        }
    }
    out
}

/// Output tiles of the reuse path in result order: per B block (`q * C` columns), per row panel,
/// the block's column tiles.
pub fn reuse_tiles(m: usize, n: usize, hw: HwCfg) -> Vec<Tile> {
    let qc = hw.q * hw.c;
    let mut out = Vec::new();
    for nb0 in (0..n).step_by(qc) {
        let bw = qc.min(n - nb0);
        for m0 in (0..m).step_by(hw.r) {
            for n0 in (nb0..nb0 + bw).step_by(hw.c) {
                out.push(Tile {
                    m0,
                    rv: hw.r.min(m - m0),
                    n0,
                    cv: hw.c.min(n - n0),
                });
            }
        }
    }
    out
}

/// The input packets of a reuse-path GEMM (README "Reuse path"), in stream order: B block 0 (all
/// its columns), then per block b its A panels (rows of A, each `ceil(K/E)` beats, all of K), each
/// panel followed by a slice of block b+1's B columns: one column tile (C columns) after each
/// panel but the last, all that is left of block b+1 after the last one (empty slices are not
/// sent). TLAST on the last beat of every packet.
pub fn reuse_packets(
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    hw: HwCfg,
    mode: Mode,
) -> Vec<Vec<Beat>> {
    let qc = hw.q * hw.c;
    let mut packets = Vec::new();
    let mut lane = Vec::with_capacity(k);
    let mut columns = |cols: std::ops::Range<usize>| {
        let mut p = Vec::new();
        for j in cols {
            lane.clear();
            lane.extend((0..k).map(|kk| b[kk * n + j]));
            pack_lane(&lane, mode, &mut p);
        }
        p
    };
    packets.push(columns(0..qc.min(n)));
    for nb0 in (0..n).step_by(qc) {
        let next = nb0 + qc; // first column of the next block
        let next_end = (next + qc).min(n);
        let mut col = next; // next B column of the next block to send
        for m0 in (0..m).step_by(hw.r) {
            let mut p = Vec::new();
            for i in m0..m0 + hw.r.min(m - m0) {
                pack_lane(&a[i * k..(i + 1) * k], mode, &mut p);
            }
            packets.push(p);
            if col < next_end {
                let last_panel = m0 + hw.r >= m;
                let end = if last_panel {
                    next_end
                } else {
                    (col + hw.c).min(next_end)
                };
                packets.push(columns(col..end));
                col = end;
            }
        }
    }
    for p in &mut packets {
        if let Some(l) = p.last_mut() {
            l.last = true;
        }
    }
    packets
}

/// Packs one lane's k-steps (`codes[k0..k0+kc]`) into beats: E elements per beat, element e at
/// `[16e+15:16e]` (INT16 layout) or the high byte `code >> 8` at `[8e+7:8e]` (INT8 layout).
fn pack_lane(codes: &[i16], mode: Mode, out: &mut Vec<Beat>) {
    let e = elems(mode);
    for chunk in codes.chunks(e) {
        let mut data = 0u64;
        for (i, &c) in chunk.iter().enumerate() {
            data |= match mode {
                Mode::Int16 => u64::from(c as u16) << (16 * i),
                Mode::Int8 => u64::from((c >> 8) as u8) << (8 * i),
            };
        }
        out.push(Beat { data, last: false });
    }
}

/// The input tile packet for `tile` (README "Input tile packet"): per K chunk of `E * DEPTH`
/// k-steps, the tile's A rows then its B columns; TLAST on the last beat.
#[allow(clippy::too_many_arguments)]
pub fn tile_packet(
    a: &[i16],
    b: &[i16],
    k: usize,
    n: usize,
    tile: Tile,
    hw: HwCfg,
    mode: Mode,
) -> Vec<Beat> {
    let kch = elems(mode) * hw.depth;
    let mut beats = Vec::new();
    let mut lane = Vec::with_capacity(kch);
    for k0 in (0..k).step_by(kch) {
        let kc = kch.min(k - k0);
        for i in 0..tile.rv {
            let row = (tile.m0 + i) * k;
            pack_lane(&a[row + k0..row + k0 + kc], mode, &mut beats);
        }
        for j in 0..tile.cv {
            lane.clear();
            lane.extend((k0..k0 + kc).map(|kk| b[kk * n + tile.n0 + j]));
            pack_lane(&lane, mode, &mut beats);
        }
    }
    if let Some(l) = beats.last_mut() {
        l.last = true;
    }
    beats
}

fn check_tlast(tb: &Tb, beats: &[Beat], what: &str) -> Result<(), TbError> {
    for (i, b) in beats.iter().enumerate() {
        let want = i + 1 == beats.len();
        if b.last != want {
            return Err(TbError::Protocol {
                cycle: tb.cycle(),
                msg: format!(
                    "{what}: beat {i} of {} has TLAST={} (expected {})",
                    beats.len(),
                    b.last,
                    want
                ),
            });
        }
    }
    Ok(())
}

/// Decodes a 2-bit sign field.
fn sign2(tb: &Tb, v: u64, what: &str) -> Result<i8, TbError> {
    match v & 3 {
        x if x == u64::from(csr::SIGN_ZERO) => Ok(0),
        x if x == u64::from(csr::SIGN_POS) => Ok(1),
        x if x == u64::from(csr::SIGN_NEG) => Ok(-1),
        x => Err(TbError::Protocol {
            cycle: tb.cycle(),
            msg: format!("{what}: invalid sign code {x:#b}"),
        }),
    }
}

/// Decodes `rows` rows of sign beats into `cv` signs per row.
fn decode_signs(
    tb: &Tb,
    beats: &[Beat],
    rows: usize,
    cv: usize,
    what: &str,
) -> Result<Vec<i8>, TbError> {
    let per = csr::SIGN_PER_BEAT as usize;
    let bpr = cv.div_ceil(per);
    let mut out = Vec::with_capacity(rows * cv);
    for r in 0..rows {
        for j in 0..bpr * per {
            let v = sign2(tb, beats[r * bpr + j / per].data >> (2 * (j % per)), what)?;
            if j < cv {
                out.push(v);
            } else if v != 0 {
                return Err(TbError::Protocol {
                    cycle: tb.cycle(),
                    msg: format!("{what}: unused sign entry {j} is not 0"),
                });
            }
        }
    }
    Ok(out)
}

/// The per-tile status beat of a PSG command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PsgTileStatus {
    pub tile: Tile,
    pub max_abs_p: u64,
    pub uncertain: u64,
    pub recompute: bool,
}

/// Result of one PSG command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PsgRun {
    /// Row-major `m x n` signs.
    pub signs: Vec<i8>,
    pub tiles: Vec<PsgTileStatus>,
    /// STATUS after the command.
    pub status: Status,
}

/// PSG threshold as programmed into the CSRs (see `HwThreshold` in e2t-numerics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsgThr {
    Absolute(u64),
    Adaptive { c_q16: u16, reference: u64 },
}

impl Tb {
    /// Reads HWCFG.
    pub fn hwcfg(&mut self) -> Result<HwCfg, TbError> {
        let v = self.read(csr::CSR_HWCFG)?;
        let v2 = self.read(csr::CSR_HWCFG2)?;
        let field = |x: u32, lsb: u32, w: u32| (x >> lsb & ((1 << w) - 1)) as usize;
        Ok(HwCfg {
            r: (v & 0xff) as usize,
            c: (v >> 8 & 0xff) as usize,
            depth: (v >> 16) as usize,
            rws: field(v2, csr::HWCFG2_RWS_LSB, csr::HWCFG2_RWS_W),
            q: field(v2, csr::HWCFG2_Q_LSB, csr::HWCFG2_Q_W),
        })
    }

    pub fn status(&mut self) -> Result<Status, TbError> {
        Ok(Status(self.read(csr::CSR_STATUS)?))
    }

    /// Writes M, N, K and CMD_CFG and pushes the command.
    pub fn push_cmd(&mut self, m: u32, n: u32, k: u32, cfg: u32) -> Result<(), TbError> {
        self.write(csr::CSR_CMD_M, m)?;
        self.write(csr::CSR_CMD_N, n)?;
        self.write(csr::CSR_CMD_K, k)?;
        self.write(csr::CSR_CMD_CFG, cfg)?;
        self.write(csr::CSR_CMD_PUSH, 1)
    }

    /// Polls STATUS until no command is running or queued and the last one has reported (DONE,
    /// ERROR or DRAINING set). Use after a command was pushed.
    pub fn wait_idle(&mut self) -> Result<Status, TbError> {
        let start = self.cycle();
        loop {
            let s = self.status()?;
            if !s.busy() && s.fifo_count() == 0 && (s.done() || s.error() || s.draining()) {
                return Ok(s);
            }
            if self.cycle() - start > self.hang_limit {
                let state = self.describe();
                return Err(TbError::Timeout {
                    what: "the engine to go idle".into(),
                    cycle: self.cycle(),
                    limit: self.hang_limit,
                    state,
                });
            }
        }
    }

    /// Clears STATUS.DONE and STATUS.ERROR (write 1 to clear).
    pub fn clear_status(&mut self) -> Result<(), TbError> {
        self.write(
            csr::CSR_STATUS,
            1 << csr::STATUS_DONE_BIT | 1 << csr::STATUS_ERROR_BIT,
        )
    }

    /// Snapshots all counters (CTRL.CNT_SNAPSHOT) and reads them.
    pub fn counters(&mut self) -> Result<Counters, TbError> {
        self.write(csr::CSR_CTRL, 1 << csr::CTRL_CNT_SNAPSHOT_BIT)?;
        self.read_snapshot()
    }

    /// Reads the counter snapshot without taking a new one.
    pub fn read_snapshot(&mut self) -> Result<Counters, TbError> {
        let mut words = [0u32; 2 * csr::NUM_COUNTERS as usize];
        for i in 0..csr::NUM_COUNTERS {
            words[2 * i as usize] = self.read(csr::counter_lo(i))?;
            words[2 * i as usize + 1] = self.read(csr::counter_hi(i))?;
        }
        Ok(csr::counters_from_words(&words))
    }

    /// Zeroes the live counters.
    pub fn clear_counters(&mut self) -> Result<(), TbError> {
        self.write(csr::CSR_CTRL, 1 << csr::CTRL_CNT_CLEAR_BIT)
    }

    /// Runs one GEMM `C = A x B` (row-major codes) and returns `C` row-major: requantized values,
    /// raw accumulators or signs, as i64. Takes the reuse path whenever K fits it
    /// ([`GemmPath::auto`]). Fails if the block reports an error.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        a: &[i16],
        b: &[i16],
        m: usize,
        k: usize,
        n: usize,
        mode: Mode,
        fmt: OutFmt,
    ) -> Result<Vec<i64>, TbError> {
        let hw = self.hwcfg()?;
        self.gemm_on(GemmPath::auto(k, mode, hw), a, b, m, k, n, mode, fmt)
    }

    /// [`Tb::gemm`] on an explicit path (the reuse path needs `ceil(K/E) <= HWCFG2.RWS`, else the
    /// block rejects the command with `ERR_DIM_TOO_LARGE` and this returns a protocol error).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_on(
        &mut self,
        path: GemmPath,
        a: &[i16],
        b: &[i16],
        m: usize,
        k: usize,
        n: usize,
        mode: Mode,
        fmt: OutFmt,
    ) -> Result<Vec<i64>, TbError> {
        assert_eq!(a.len(), m * k, "A must be m x k");
        assert_eq!(b.len(), k * n, "B must be k x n");
        let hw = self.hwcfg()?;
        let mut cfg = csr::cmd_cfg(
            csr::OP_GEMM,
            mode == Mode::Int8,
            fmt.code(),
            fmt.shift(),
            false,
        );
        if path == GemmPath::Reuse {
            cfg |= 1 << csr::CFG_REUSE_BIT;
        }
        self.push_cmd(m as u32, n as u32, k as u32, cfg)?;
        let ts = match path {
            GemmPath::PerTile => {
                let ts = tiles(m, n, hw);
                for t in &ts {
                    let p = tile_packet(a, b, k, n, *t, hw, mode);
                    self.send(p);
                }
                ts
            }
            GemmPath::Reuse => {
                for p in reuse_packets(a, b, m, k, n, hw, mode) {
                    self.send(p);
                }
                reuse_tiles(m, n, hw)
            }
        };
        let mut c = vec![0i64; m * n];
        for (ti, t) in ts.iter().enumerate() {
            let bpr = fmt.beats_per_row(t.cv);
            let what = format!(
                "GEMM output tile {ti} (rows {}+{}, cols {}+{})",
                t.m0, t.rv, t.n0, t.cv
            );
            let beats = self.recv(t.rv * bpr, &what)?;
            check_tlast(self, &beats, &what)?;
            for i in 0..t.rv {
                let row = &beats[i * bpr..(i + 1) * bpr];
                let dst = &mut c[(t.m0 + i) * n + t.n0..(t.m0 + i) * n + t.n0 + t.cv];
                match fmt {
                    OutFmt::Requant(_) => {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = i64::from((row[j / 4].data >> (16 * (j % 4))) as u16 as i16);
                        }
                        let used = t.cv % 4;
                        if used != 0 && row[bpr - 1].data >> (16 * used) != 0 {
                            return Err(TbError::Protocol {
                                cycle: self.cycle(),
                                msg: format!("{what}: unused requant lanes are not 0"),
                            });
                        }
                    }
                    OutFmt::Raw48 => {
                        for (j, d) in dst.iter_mut().enumerate() {
                            let v = row[j].data as i64;
                            if (v << 16) >> 16 != v {
                                return Err(TbError::Protocol {
                                    cycle: self.cycle(),
                                    msg: format!(
                                        "{what}: raw48 beat {:#018x} is not a sign-extended 48-bit value",
                                        row[j].data
                                    ),
                                });
                            }
                            *d = v;
                        }
                    }
                    OutFmt::Sign => {
                        let s = decode_signs(self, row, 1, t.cv, &what)?;
                        for (d, v) in dst.iter_mut().zip(s) {
                            *d = i64::from(v);
                        }
                    }
                }
            }
        }
        let st = self.wait_idle()?;
        if st.error() || !st.done() {
            return Err(TbError::Protocol {
                cycle: self.cycle(),
                msg: format!("GEMM finished with STATUS {st}"),
            });
        }
        if self.received() != 0 || self.pending_in() != 0 {
            return Err(TbError::Protocol {
                cycle: self.cycle(),
                msg: format!(
                    "after the GEMM: {} extra result beats, {} operand beats not taken",
                    self.received(),
                    self.pending_in()
                ),
            });
        }
        Ok(c)
    }

    /// Programs the PSG threshold CSRs; returns whether the command must set PSG_ADAPTIVE.
    pub fn set_psg_threshold(&mut self, thr: PsgThr) -> Result<bool, TbError> {
        match thr {
            PsgThr::Absolute(t) => {
                self.write(csr::CSR_PSG_THR_LO, t as u32)?;
                self.write(csr::CSR_PSG_THR_HI, (t >> 32) as u32 & 0xffff)?;
                Ok(false)
            }
            PsgThr::Adaptive { c_q16, reference } => {
                self.write(csr::CSR_PSG_C, u32::from(c_q16))?;
                self.write(csr::CSR_PSG_REF_LO, reference as u32)?;
                self.write(csr::CSR_PSG_REF_HI, (reference >> 32) as u32 & 0xffff)?;
                Ok(true)
            }
        }
    }

    /// Runs one PSG command as the agent would: per tile, send the INT8 packet, read the status
    /// beat, resend the tile in INT16 layout if asked, read the sign packet.
    #[allow(clippy::too_many_arguments)]
    pub fn psg(
        &mut self,
        a: &[i16],
        b: &[i16],
        m: usize,
        k: usize,
        n: usize,
        thr: PsgThr,
    ) -> Result<PsgRun, TbError> {
        assert_eq!(a.len(), m * k, "A must be m x k");
        assert_eq!(b.len(), k * n, "B must be k x n");
        let hw = self.hwcfg()?;
        let adaptive = self.set_psg_threshold(thr)?;
        let cfg = csr::cmd_cfg(csr::OP_PSG, false, 0, 0, adaptive);
        self.push_cmd(m as u32, n as u32, k as u32, cfg)?;
        let mut signs = vec![0i8; m * n];
        let mut stats = Vec::new();
        for (ti, t) in tiles(m, n, hw).into_iter().enumerate() {
            self.send(tile_packet(a, b, k, n, t, hw, Mode::Int8));
            let what = format!("PSG status beat of tile {ti}");
            let st = self.recv(1, &what)?;
            check_tlast(self, &st, &what)?;
            let d = st[0].data;
            let s = PsgTileStatus {
                tile: t,
                max_abs_p: d & ((1 << csr::PSG_ST_MAXP_W) - 1),
                uncertain: d >> csr::PSG_ST_UNCERT_LSB & ((1 << csr::PSG_ST_UNCERT_W) - 1),
                recompute: d >> csr::PSG_ST_RECOMPUTE_BIT & 1 != 0,
            };
            stats.push(s);
            if s.recompute {
                self.send(tile_packet(a, b, k, n, t, hw, Mode::Int16));
            }
            let what = format!("PSG sign packet of tile {ti}");
            let beats = self.recv(t.rv * t.cv.div_ceil(csr::SIGN_PER_BEAT as usize), &what)?;
            check_tlast(self, &beats, &what)?;
            let s = decode_signs(self, &beats, t.rv, t.cv, &what)?;
            for i in 0..t.rv {
                signs[(t.m0 + i) * n + t.n0..(t.m0 + i) * n + t.n0 + t.cv]
                    .copy_from_slice(&s[i * t.cv..(i + 1) * t.cv]);
            }
        }
        let status = self.wait_idle()?;
        Ok(PsgRun {
            signs,
            tiles: stats,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HW: HwCfg = HwCfg {
        r: 4,
        c: 4,
        depth: 2,
        rws: 4,
        q: 2,
    };

    #[test]
    fn tiles_cover_edges_in_block_order() {
        let t = tiles(5, 6, HW);
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            Tile {
                m0: 0,
                rv: 4,
                n0: 0,
                cv: 4
            }
        );
        assert_eq!(
            t[1],
            Tile {
                m0: 0,
                rv: 4,
                n0: 4,
                cv: 2
            }
        );
        assert_eq!(
            t[3],
            Tile {
                m0: 4,
                rv: 1,
                n0: 4,
                cv: 2
            }
        );
    }

    #[test]
    fn packet_layout_follows_the_readme() {
        // 1x1 tile, K = 10, DEPTH 2: INT16 chunks of 8 k-steps -> chunk 0: 2 A beats, 2 B beats;
        // chunk 1 (2 k-steps): 1 A beat, 1 B beat.
        let a: Vec<i16> = (1..=10).collect();
        let b: Vec<i16> = (1..=10).map(|x| -x).collect();
        let t = Tile {
            m0: 0,
            rv: 1,
            n0: 0,
            cv: 1,
        };
        let p = tile_packet(&a, &b, 10, 1, t, HW, Mode::Int16);
        assert_eq!(p.len(), 6);
        assert_eq!(p[0].data, 0x0004_0003_0002_0001);
        assert_eq!(p[2].data & 0xffff, 0xffff); // B[0] = -1
        assert_eq!(p[4].data, 0x000a_0009); // chunk 1: A[8], A[9], zero-padded
        assert!(p[5].last && p.iter().filter(|b| b.last).count() == 1);
        // INT8 layout: high bytes, 8 per beat.
        let a8: Vec<i16> = vec![0x0180, -0x0100, 0x7fff, -0x8000];
        let p = tile_packet(&a8, &[0x0100; 4], 4, 1, t, HW, Mode::Int8);
        assert_eq!(p[0].data, 0x80_7f_ff_01);
    }

    #[test]
    fn reuse_stream_follows_the_readme() {
        // M = 5, N = 10, K = 3, 4x4 array, Q = 2: blocks of 8 columns -> B block 0 (8 columns),
        // A panel 0 (4 rows), slice of block 1 (a column tile: its 2 columns), A panel 1 (1 row);
        // then block 1's panels (no block 2, no slices).
        let (m, k, n) = (5, 3, 10);
        let a: Vec<i16> = (0..m * k).map(|x| x as i16).collect();
        let b: Vec<i16> = (0..k * n).map(|x| 100 + x as i16).collect();
        let p = reuse_packets(&a, &b, m, k, n, HW, Mode::Int16);
        let lens: Vec<usize> = p.iter().map(Vec::len).collect();
        assert_eq!(lens, [8, 4, 2, 1, 4, 1]);
        assert!(p.iter().all(|q| q.last().unwrap().last));
        assert_eq!(p.iter().flatten().filter(|b| b.last).count(), 6);
        // first B column: B[0][0], B[1][0], B[2][0], pad
        assert_eq!(p[0][0].data, 0x0000_0078_006e_0064);
        // the slice after panel 0 starts with column 8
        assert_eq!(p[2][0].data & 0xffff, 108);
        // second A panel: row 4
        assert_eq!(p[3][0].data, 0x0000_000e_000d_000c);
        // N = 20 (3 blocks), M = 9 (3 panels): block 1 (8 columns) arrives as 4 + 4 columns after
        // panels 0 and 1 of block 0 (nothing left for panel 2); block 2 (4 columns) after panel 0
        // of block 1.
        let (m, n) = (9, 20);
        let a: Vec<i16> = vec![1; m * k];
        let b: Vec<i16> = vec![1; k * n];
        let lens: Vec<usize> = reuse_packets(&a, &b, m, k, n, HW, Mode::Int16)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(lens, [8, 4, 4, 4, 4, 1, 4, 4, 4, 1, 4, 4, 1]);
        let t = reuse_tiles(5, 10, HW);
        let order: Vec<(usize, usize)> = t.iter().map(|t| (t.m0, t.n0)).collect();
        assert_eq!(order, [(0, 0), (0, 4), (4, 0), (4, 4), (0, 8), (4, 8)]);
        assert_eq!(GemmPath::auto(16, Mode::Int16, HW), GemmPath::Reuse);
        assert_eq!(GemmPath::auto(17, Mode::Int16, HW), GemmPath::PerTile);
        assert_eq!(GemmPath::auto(32, Mode::Int8, HW), GemmPath::Reuse);
    }

    #[test]
    fn status_decodes_fields() {
        let s = Status(0x0502 | 4 | (3 << 4));
        assert!(s.done() && s.error() && !s.busy());
        assert_eq!(s.err_code(), 5);
        assert_eq!(s.fifo_count(), 3);
        assert!(s.to_string().contains("err_code=5"));
    }
}
