//! Exact integer GEMM with AVX2 `vpmaddwd`: the soft accelerator's fast path on x86-64.
//!
//! `vpmaddwd` multiplies 16 pairs of i16 and adds each adjacent pair of products into an i32 lane,
//! so both operands are K pairs: B packed once per GEMM (`[b(2p, j), b(2p+1, j)]` per 32-bit
//! lane, panels of [`NR`] columns), A one 32-bit pair per row and K pair, broadcast by the
//! microkernel: read in place for INT16 row-major codes with an even K piece, else packed per
//! block (converted, or quantized for fp32 operands). Odd K is padded with a zero pair half; N
//! is padded to a multiple of [`NR`] with zero columns that are never written out.
//!
//! Exactness (every i32 lane sum is proved to fit; lanes are widened to i64 at the end of each K
//! chunk of at most `Conv::KCP` pairs, and chunks are added with wrapping i64 adds):
//! - INT8 modes: both multiplicands lie in -128..=127, so a pair sum is at most 2 * 2^14 = 2^15 in
//!   magnitude and an i32 lane holds 2^16 - 1 pair sums; chunks are 256 pairs.
//! - INT16 mode: a product of two codes reaches 2^30 and a pair sum 2^31, which does not fit. The B
//!   code (packed once per GEMM, so the split costs nothing per block) is split as
//!   `b = 256 * bh + bl` with `bh = b >> 8` in -128..=127 and `bl = b & 0xff` in 0..=255, and the
//!   two halves are accumulated in separate lanes against the unchanged A code:
//!   - high: |a * bh| <= 32768 * 128 = 2^22 (at a = -32768, bh = -128), so a pair sum lies in
//!     [-2^23 + 512, 2^23] and 128 of them in [-2^30, 2^30];
//!   - low: a * bl lies in [-32768 * 255, 32767 * 255] (bl = 255), so a pair sum has magnitude
//!     <= 16_711_680 and 128 of them <= 2_139_095_040 < 2^31 - 1 = 2_147_483_647. 129 pairs could
//!     reach 2_155_806_720 and overflow (the tests drive exactly this case).
//!
//!   So chunks are 128 pairs (256 products), and each chunk adds `(hi << 8) + lo` in i64.
//!
//! The 48-bit accumulator wrap is applied at the end, as in `fast` (addition modulo 2^48 does not
//! depend on order). Work is split into row blocks and, for few rows and a long K, K ranges (rayon);
//! each thread reuses its packing and result buffers across blocks (no zeroing: every use writes
//! before it reads). Results do not depend on the split.
#![cfg(target_arch = "x86_64")]

use crate::fast::{Lhs, Operand, Out, Tasks, dequant, raw_over_tasks};
use crate::matrix::CodeMatrix;
use e2t_numerics::{high_byte_nearest, wrap48};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

/// Columns of a B panel (two 8-lane registers).
pub(crate) const NR: usize = 16;
/// Bytes of packed A a row block aims for (stays in L2 beside the B chunk).
const ABUF_BYTES: usize = 96 << 10;
/// Most rows handled as one block when K is long (A is then streamed once).
const WIDE_M_MAX: usize = 1024;
/// Shortest K range worth a task of its own.
const KSPLIT_MIN: usize = 512;
/// Most K pairs of a block's A packed at once (longer K ranges are packed per chunk).
pub(crate) const PACK_PAIRS_MAX: usize = 1024;
/// K pairs of B packed per rayon task.
const PB_CHUNK: usize = 512;
/// Bytes of a K chunk of packed B that the row-outer loop order keeps in L1 (of 32 KiB).
const B_L1_BYTES: usize = 20 << 10;
/// Bytes of packed B that a fused (dequantizing) block still walks row by row from L2.
const B_L2_BYTES: usize = 192 << 10;

/// True when the integer path can run on this CPU.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// How codes become multiplicands, as types so each mode gets its own compiled loops.
pub(crate) trait Conv: Copy + Send + Sync + 'static {
    /// INT16: B is split into high and low bytes (two accumulators per output) and A is used as
    /// is (so row-major A codes can be read in place).
    const SPLIT: bool;
    /// Rows of the microkernel (accumulators `MR * 2 * (1 + SPLIT)` plus `2 * (1 + SPLIT)` B
    /// registers and a broadcast within the 16 ymm registers).
    const MR: usize;
    /// K pairs per chunk (the lane bound in the module doc).
    const KCP: usize;
    /// The A multiplicand of a code.
    fn a(c: i16) -> i16;
    /// The B multiplicand (its high byte when split).
    fn b_hi(c: i16) -> i16;
    /// The low byte of B when split (unused otherwise).
    fn b_lo(c: i16) -> i16;
}

/// INT16 mode.
#[derive(Clone, Copy)]
pub(crate) struct Full;
/// INT8 mode: `code >> 8`.
#[derive(Clone, Copy)]
pub(crate) struct Floor;
/// PSG prediction with nearest rounding.
#[derive(Clone, Copy)]
pub(crate) struct Nearest;

impl Conv for Full {
    const SPLIT: bool = true;
    const MR: usize = 2;
    const KCP: usize = 128;
    #[inline(always)]
    fn a(c: i16) -> i16 {
        c
    }
    #[inline(always)]
    fn b_hi(c: i16) -> i16 {
        c >> 8
    }
    #[inline(always)]
    fn b_lo(c: i16) -> i16 {
        c & 0xff
    }
}

impl Conv for Floor {
    const SPLIT: bool = false;
    const MR: usize = 4;
    const KCP: usize = 256;
    #[inline(always)]
    fn a(c: i16) -> i16 {
        c >> 8
    }
    #[inline(always)]
    fn b_hi(c: i16) -> i16 {
        c >> 8
    }
    #[inline(always)]
    fn b_lo(_: i16) -> i16 {
        0
    }
}

impl Conv for Nearest {
    const SPLIT: bool = false;
    const MR: usize = 4;
    const KCP: usize = 256;
    #[inline(always)]
    fn a(c: i16) -> i16 {
        high_byte_nearest(c)
    }
    #[inline(always)]
    fn b_hi(c: i16) -> i16 {
        high_byte_nearest(c)
    }
    #[inline(always)]
    fn b_lo(_: i16) -> i16 {
        0
    }
}

/// Two i16 as one 32-bit lane: `x` in the low half (the even K index), `y` in the high half.
#[inline(always)]
fn pair(x: i16, y: i16) -> i32 {
    (u32::from(x as u16) | (u32::from(y as u16) << 16)) as i32
}

/// Where a block's A pairs are: pair `p` of row `i` is the two i16 at `ptr + i * ars + p * aps`
/// (offsets in i16; read as one unaligned 32-bit lane). `ptr` points into the pack buffer or,
/// for INT16 row-major codes, into the source itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct APack {
    pub ptr: *const i16,
    pub ars: usize,
    pub aps: usize,
}

/// The pack buffer as i16 (two per pair, the even K index first: x86 is little-endian).
#[inline(always)]
pub(crate) fn as_i16(buf: &mut [i32]) -> &mut [i16] {
    // SAFETY: i16 has no invalid bit patterns and a smaller alignment than i32; the view covers
    // exactly the same bytes and borrows `buf` mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<i16>(), buf.len() * 2) }
}

/// One row-major source row (`src.len()` codes) as A multiplicands into `dst` (an i16 view of
/// `src.len().div_ceil(2)` pairs; an odd length is padded with 0).
#[inline(always)]
pub(crate) fn pack_row<C: Conv>(src: &[i16], dst: &mut [i16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = C::a(s);
    }
    if src.len() % 2 == 1 {
        dst[src.len()] = 0;
    }
}

/// One K pair of a K-major source: `even` and `odd` are the codes of K indices `2p` and `2p + 1`
/// for consecutive rows (`odd = None` past the end of K), as pairs into `dst`.
#[inline(always)]
pub(crate) fn pack_kpair<C: Conv>(even: &[i16], odd: Option<&[i16]>, dst: &mut [i32]) {
    match odd {
        Some(odd) => {
            for ((d, &x), &y) in dst.iter_mut().zip(even).zip(odd) {
                *d = pair(C::a(x), C::a(y));
            }
        }
        None => {
            for (d, &x) in dst.iter_mut().zip(even) {
                *d = pair(C::a(x), 0);
            }
        }
    }
}

/// B converted and packed once per GEMM: pair `p`, column `j` at `data[p * npad + j]`, and its
/// low bytes (when split) at `data[lo_off + p * npad + j]`.
struct PackedB {
    data: Vec<i32>,
    lo_off: usize,
    n: usize,
    npad: usize,
}

thread_local! {
    /// A thread's B pack buffer, kept across GEMMs (weight-gradient B packs reach megabytes, and
    /// fresh ones cost page faults). A GEMM takes it while it runs, so a nested one allocates.
    static BPACK: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
}

impl Drop for PackedB {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        BPACK.with(|c| c.set(data));
    }
}

impl PackedB {
    fn new<C: Conv>(b: CodeMatrix<'_>) -> Self {
        let (k, n) = (b.rows(), b.cols());
        let npad = n.div_ceil(NR) * NR;
        let lo_off = k.div_ceil(2) * npad;
        // The calling thread's buffer from its last GEMM: no allocation or zeroing per GEMM
        // (every lane is written below, padding columns with 0).
        let len = lo_off * if C::SPLIT { 2 } else { 1 };
        let mut data = BPACK.with(|c| c.take());
        if data.len() < len {
            data.resize(len, 0);
        }
        let (hi, lo) = data[..len].split_at_mut(lo_off);
        let (rs, cs, src) = (b.row_stride(), b.col_stride(), b.data());
        let fill = |conv: fn(i16) -> i16, ci: usize, chunk: &mut [i32]| {
            for (pp, row) in chunk.chunks_exact_mut(npad).enumerate() {
                let k0 = 2 * (ci * PB_CHUNK + pp);
                let has_odd = k0 + 1 < k;
                row[n..].fill(0);
                if cs == 1 {
                    let even = &src[k0 * rs..][..n];
                    if has_odd {
                        let odd = &src[(k0 + 1) * rs..][..n];
                        for ((d, &x), &y) in row.iter_mut().zip(even).zip(odd) {
                            *d = pair(conv(x), conv(y));
                        }
                    } else {
                        for (d, &x) in row.iter_mut().zip(even) {
                            *d = pair(conv(x), 0);
                        }
                    }
                } else {
                    for (j, d) in row[..n].iter_mut().enumerate() {
                        let y = if has_odd { conv(b.get(k0 + 1, j)) } else { 0 };
                        *d = pair(conv(b.get(k0, j)), y);
                    }
                }
            }
        };
        hi.par_chunks_mut(npad * PB_CHUNK)
            .enumerate()
            .for_each(|(ci, chunk)| fill(C::b_hi, ci, chunk));
        if C::SPLIT {
            lo.par_chunks_mut(npad * PB_CHUNK)
                .enumerate()
                .for_each(|(ci, chunk)| fill(C::b_lo, ci, chunk));
        }
        PackedB {
            data,
            lo_off,
            n,
            npad,
        }
    }
}

/// `out = A · B` for `op`, exactly, with the 48-bit wrap (see [`crate::fast::gemm_exact_to`]).
/// Requires AVX2 ([`available`]).
pub(crate) fn gemm<L: Lhs>(a: L, b: CodeMatrix<'_>, op: Operand, out: Out<'_>) {
    // The kernels below are compiled for AVX2 and sound only on a CPU that has it (the check is
    // cached by std).
    assert!(available(), "intgemm::gemm needs AVX2");
    match op {
        Operand::Full => run::<Full, L>(a, b, op, out, None),
        Operand::HighFloor => run::<Floor, L>(a, b, op, out, None),
        Operand::HighNearest => run::<Nearest, L>(a, b, op, out, None),
    }
}

/// [`gemm`] into `Out::Scaled { out, scale, requant: Some(shift) }` that also returns the largest
/// |code| of the requantized 16-bit output (up to 32768), found as the codes are formed rather
/// than by another pass over `out`. Requires AVX2 ([`available`]).
pub(crate) fn gemm_requant_max<L: Lhs>(
    a: L,
    b: CodeMatrix<'_>,
    op: Operand,
    out: &mut [f32],
    scale: &[f64],
    shift: u32,
) -> u32 {
    assert!(available(), "intgemm::gemm_requant_max needs AVX2");
    let max = AtomicU32::new(0);
    let out = Out::Scaled {
        out,
        scale,
        requant: Some(shift),
    };
    match op {
        Operand::Full => run::<Full, L>(a, b, op, out, Some(&max)),
        Operand::HighFloor => run::<Floor, L>(a, b, op, out, Some(&max)),
        Operand::HighNearest => run::<Nearest, L>(a, b, op, out, Some(&max)),
    }
    max.into_inner()
}

/// Bytes of dequantized output a [`gemm_requant_scatter`] piece aims for: it is written by the
/// kernels and read back by the scatter while both are still in L2.
const SCATTER_PIECE_BYTES: usize = 64 << 10;

thread_local! {
    /// This thread's dequantized piece for [`gemm_requant_scatter`], kept across pieces and calls
    /// (every entry is written before the scatter reads it).
    static PIECE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// [`gemm_requant_max`] whose output never exists whole: each group of `group_rows` rows is
/// formed in pieces of a few rows, and each piece goes to `scatter` with the group's part of
/// `dst` (see [`crate::Scatter`]) as soon as it is dequantized. Groups run in parallel; a row's
/// values do not depend on the pieces. `m` and `dst.len()` split evenly into the groups (checked
/// by the caller). Requires AVX2 ([`available`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_requant_scatter<L: Lhs>(
    a: L,
    b: CodeMatrix<'_>,
    op: Operand,
    scale: &[f64],
    shift: u32,
    group_rows: usize,
    dst: &mut [f32],
    scatter: &crate::Scatter<'_>,
) -> u32 {
    assert!(available(), "intgemm::gemm_requant_scatter needs AVX2");
    match op {
        Operand::Full => scatter_run::<Full, L>(a, b, op, scale, shift, group_rows, dst, scatter),
        Operand::HighFloor => {
            scatter_run::<Floor, L>(a, b, op, scale, shift, group_rows, dst, scatter)
        }
        Operand::HighNearest => {
            scatter_run::<Nearest, L>(a, b, op, scale, shift, group_rows, dst, scatter)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scatter_run<C: Conv, L: Lhs>(
    a: L,
    b: CodeMatrix<'_>,
    op: Operand,
    scale: &[f64],
    shift: u32,
    group_rows: usize,
    dst: &mut [f32],
    scatter: &crate::Scatter<'_>,
) -> u32 {
    let (m, k, n) = (a.rows(), b.rows(), b.cols());
    debug_assert_eq!(a.cols(), k);
    if m == 0 || n == 0 || group_rows == 0 || dst.is_empty() {
        return 0;
    }
    debug_assert!(m % group_rows == 0 && dst.len() % (m / group_rows) == 0);
    let per = dst.len() / (m / group_rows);
    let pb = PackedB::new::<C>(b);
    let kp = k.div_ceil(2);
    let row_bytes = 4 * if kp <= PACK_PAIRS_MAX { kp } else { C::KCP };
    // As many rows as `run`'s row blocks at most, and few enough for the piece to stay in cache.
    let mb = ((ABUF_BYTES / row_bytes) / 12 * 12).max(12);
    let fit = (SCATTER_PIECE_BYTES / (4 * n)) / 12 * 12;
    let piece = mb.min(fit.max(12)).min(group_rows);
    let no_wrap = op.never_wraps(k);
    let max = AtomicU32::new(0);
    dst.par_chunks_mut(per).enumerate().for_each(|(g, d)| {
        let mut buf = PIECE.with(|c| c.take());
        if buf.len() < piece * n {
            buf.resize(piece * n, 0.0);
        }
        for p0 in (0..group_rows).step_by(piece) {
            let rows = piece.min(group_rows - p0);
            let r0 = g * group_rows + p0;
            let out = &mut buf[..rows * n];
            if k == 0 {
                out.fill(0.0);
            } else {
                let sink = Sink::Scaled {
                    out: &mut *out,
                    scale,
                    requant: Some(shift),
                    wrap: !no_wrap,
                    code_max: Some(&max),
                };
                block::<C, L>(&a, &pb, r0, r0 + rows, 0, k, sink);
            }
            scatter(p0, out, d);
        }
        PIECE.with(|c| c.set(buf));
    });
    max.into_inner()
}

/// `code_max` (with a requantized `out`): raised to the largest |code| of the output.
fn run<C: Conv, L: Lhs>(
    a: L,
    b: CodeMatrix<'_>,
    op: Operand,
    out: Out<'_>,
    code_max: Option<&AtomicU32>,
) {
    let (m, k, n) = (a.rows(), b.rows(), b.cols());
    debug_assert_eq!(a.cols(), k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        match out {
            Out::Raw(o) => o.fill(0),
            Out::Scaled { out, .. } => out.fill(0.0),
        }
        return;
    }
    let pb = PackedB::new::<C>(b);
    let threads = rayon::current_num_threads().max(1);
    let kp = k.div_ceil(2);
    let row_bytes = 4 * if kp <= PACK_PAIRS_MAX { kp } else { C::KCP };
    let mb = if m <= WIDE_M_MAX && kp > PACK_PAIRS_MAX {
        // Few rows and a long K (weight gradients): one block of all rows, so A is read once.
        m
    } else {
        ((ABUF_BYTES / row_bytes) / 12 * 12).max(12).min(m)
    };
    // K ranges start on pair boundaries.
    let tasks = Tasks::plan(m, n, k, mb, threads, KSPLIT_MIN, 2);
    let ks = tasks.ks;
    let no_wrap = op.never_wraps(k);

    match out {
        Out::Raw(out) => {
            raw_over_tasks(tasks, out, no_wrap, |r0, r1, k0, k1, dst| {
                block::<C, L>(&a, &pb, r0, r1, k0, k1, Sink::Raw(dst));
            });
        }
        Out::Scaled {
            out,
            scale,
            requant,
        } => {
            if ks == 1 {
                out.par_chunks_mut(mb * n)
                    .enumerate()
                    .for_each(|(bi, dst)| {
                        let (r0, r1) = (bi * mb, ((bi + 1) * mb).min(m));
                        let sink = Sink::Scaled {
                            out: dst,
                            scale,
                            requant,
                            wrap: !no_wrap,
                            code_max,
                        };
                        block::<C, L>(&a, &pb, r0, r1, 0, k, sink);
                    });
            } else {
                // Entries are sums over K tasks: form the raw accumulators first.
                let mut raw = vec![0i64; m * n];
                run::<C, L>(a, b, op, Out::Raw(&mut raw), None);
                let mut mx = 0u32;
                for (orow, rrow) in out.chunks_exact_mut(n).zip(raw.chunks_exact(n)) {
                    for ((o, &r), &s) in orow.iter_mut().zip(rrow).zip(scale) {
                        *o = dequant_noting(r, requant, s, &mut mx);
                    }
                }
                if let Some(cm) = code_max {
                    cm.fetch_max(mx, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Where a block's exact sums go (row-major `[rows, n]`).
enum Sink<'d> {
    /// Accumulators, assigned (not added).
    Raw(&'d mut [i64]),
    /// Scaled as [`dequant`] does, after the 48-bit wrap when `wrap`; `code_max` raised to the
    /// largest |requantized code| of the block.
    Scaled {
        out: &'d mut [f32],
        scale: &'d [f64],
        requant: Option<u32>,
        wrap: bool,
        code_max: Option<&'d AtomicU32>,
    },
}

/// [`dequant`], raising `mx` to the |code| of a requantized entry.
#[inline(always)]
fn dequant_noting(acc: i64, requant: Option<u32>, scale: f64, mx: &mut u32) -> f32 {
    match requant {
        None => dequant(acc, None, scale),
        Some(s) => {
            let c = e2t_numerics::requantize_unchecked(acc, s);
            *mx = (*mx).max(u32::from(c.unsigned_abs()));
            (f64::from(c) * scale) as f32
        }
    }
}

thread_local! {
    /// This thread's packed-A and result buffers, kept across blocks. A block takes them out while
    /// it runs, so a nested block on the same thread (rayon work stealing) gets fresh ones.
    static SCRATCH: Cell<(Vec<i32>, Vec<i64>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Rows `r0..r1` over K `k0..k1` (`k0` even) into `sink`.
fn block<C: Conv, L: Lhs>(
    a: &L,
    pb: &PackedB,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    sink: Sink<'_>,
) {
    debug_assert!(k0 % 2 == 0 && k0 < k1);
    let rows = r1 - r0;
    let (mut abuf, mut tmp) = SCRATCH.with(|c| c.take());
    let kpairs = (k1 - k0).div_ceil(2);
    let need = rows
        * if kpairs <= PACK_PAIRS_MAX {
            kpairs
        } else {
            C::KCP
        };
    if abuf.len() < need {
        abuf.resize(need, 0);
    }
    // Raw sums go straight into the destination when its rows are as wide as the panels; a
    // scaled output of one K chunk is written by the kernels themselves (no i64 sums at all).
    let direct = matches!(sink, Sink::Raw(_)) && pb.n == pb.npad;
    let fused = fused_scaled::<C>(&sink, kpairs);
    if !direct && !fused && tmp.len() < rows * pb.npad {
        tmp.resize(rows * pb.npad, 0);
    }
    // SAFETY: the CPU has AVX2 (callers check `available`).
    unsafe { block_avx2::<C, L>(a, pb, r0, rows, k0, k1, sink, &mut abuf, &mut tmp, direct) };
    SCRATCH.with(|c| c.set((abuf, tmp)));
}

/// True when a block of `kpairs` K pairs into `sink` dequantizes in the kernels: a scaled output
/// without the 48-bit wrap whose K is one chunk (so every sum is final in the kernel's lanes).
fn fused_scaled<C: Conv>(sink: &Sink<'_>, kpairs: usize) -> bool {
    matches!(sink, Sink::Scaled { wrap: false, .. }) && kpairs <= C::KCP
}

/// Where a kernel's finished sums go.
#[derive(Clone, Copy)]
enum Epi {
    /// i64 sums at `c + r * ldc`, added to what is there when `add`.
    Acc { c: *mut i64, ldc: usize, add: bool },
    /// Dequantized as [`dequant`] does (`requant` as its shift) into `cols <= NR` floats at
    /// `out + r * ldo`, with the column scales at `scale` (`NR` readable).
    Scaled {
        out: *mut f32,
        ldo: usize,
        cols: usize,
        scale: *const f64,
        requant: Option<u32>,
        /// Raised to the largest |requantized code| (null: not tracked).
        max: *mut f64,
        /// The scales as f32 (`NR` readable) when the integer epilogue applies
        /// ([`int_epilogue`]); null: the f64 one.
        fscale: *const f32,
    },
}

#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn block_avx2<C: Conv, L: Lhs>(
    a: &L,
    pb: &PackedB,
    r0: usize,
    rows: usize,
    k0: usize,
    k1: usize,
    mut sink: Sink<'_>,
    abuf: &mut [i32],
    tmp: &mut [i64],
    direct: bool,
) {
    let npad = pb.npad;
    let kpairs = (k1 - k0).div_ceil(2);
    let fused = fused_scaled::<C>(&sink, kpairs);
    // Column scales padded to the panels (the fused kernels read whole panels of them).
    let mut scale_pad = Vec::new();
    // Their f32 copy when the integer epilogue applies (else empty).
    let mut fscale_pad: Vec<f32> = Vec::new();
    // The fused kernels' largest |code| so far (only with a requantized, tracked output).
    let mut fmax = 0f64;
    let (fout, frequant, fmax_ptr): (*mut f32, Option<u32>, *mut f64) = match &mut sink {
        Sink::Scaled {
            out,
            scale,
            requant,
            code_max,
            ..
        } if fused => {
            scale_pad.extend_from_slice(&scale[..pb.n]);
            scale_pad.resize(npad, 0.0);
            if int_epilogue::<C>(*requant, &scale[..pb.n]) {
                fscale_pad.extend(scale_pad.iter().map(|&v| v as f32));
            }
            let mp = if code_max.is_some() && requant.is_some() {
                &raw mut fmax
            } else {
                std::ptr::null_mut()
            };
            (out.as_mut_ptr(), *requant, mp)
        }
        _ => (std::ptr::null_mut(), None, std::ptr::null_mut()),
    };
    let (c, ldc): (&mut [i64], usize) = match (&mut sink, direct) {
        _ if fused => (&mut [], npad),
        (Sink::Raw(d), true) => (&mut d[..rows * npad], npad),
        _ => (&mut tmp[..rows * npad], npad),
    };
    let cptr = c.as_mut_ptr();
    // Balanced K chunks of at most KCP pairs.
    let nchunks = kpairs.div_ceil(C::KCP);
    let kcp_step = kpairs.div_ceil(nchunks);
    // A short K range is packed whole (sequential reads of the source rows); a long one per chunk.
    // (No closure: it would be compiled without this function's AVX2 feature.)
    let whole = if kpairs <= PACK_PAIRS_MAX {
        Some(a.pack::<C>(r0, rows, k0, k1 - k0, abuf))
    } else {
        None
    };
    for ci in 0..nchunks {
        let kk = k0 + 2 * ci * kcp_step;
        let kc = (2 * kcp_step).min(k1 - kk);
        let kcp = kc.div_ceil(2);
        let ap = match whole {
            Some(w) => APack {
                // SAFETY: pair `(kk - k0) / 2` of the whole range's pack (within it).
                ptr: unsafe { w.ptr.add((kk - k0) / 2 * w.aps) },
                ..w
            },
            None => a.pack::<C>(r0, rows, kk, kc, abuf),
        };
        let add = ci > 0;
        let n = pb.n;
        // One kernel call: rows `i..i + mr`, panel `q`.
        // SAFETY (of the call, for the loops below): the pointers cover what the kernel reads and
        // writes: `ap` describes `rows` rows of `kcp` pairs (in `abuf` or the source, which
        // outlive this loop; from row `i`, `mr` rows); B from pair `kk / 2` has `kcp` pairs of
        // `npad` lanes, high and low (columns `q * NR..q * NR + NR` exist); `c` holds `rows` rows
        // of `ldc = npad` entries; a fused output has `rows` rows of `n` floats, of which the
        // panel's first `min(NR, n - q * NR)` are written, and `scale_pad` holds `npad` scales.
        let call = |i: usize, mr: usize, q: usize| unsafe {
            let epi = if fused {
                Epi::Scaled {
                    out: fout.add(i * n + q * NR),
                    ldo: n,
                    cols: (n - q * NR).min(NR),
                    scale: scale_pad.as_ptr().add(q * NR),
                    requant: frequant,
                    max: fmax_ptr,
                    fscale: if fscale_pad.is_empty() {
                        std::ptr::null()
                    } else {
                        fscale_pad.as_ptr().add(q * NR)
                    },
                }
            } else {
                Epi::Acc {
                    c: cptr.add(i * ldc + q * NR),
                    ldc,
                    add,
                }
            };
            kernel_mr::<C>(
                mr,
                kcp,
                APack {
                    ptr: ap.ptr.add(i * ap.ars),
                    ..ap
                },
                pb.data.as_ptr().add((kk / 2) * npad + q * NR),
                pb.lo_off,
                npad,
                epi,
            )
        };
        let b_bytes = kcp * npad * 4 * if C::SPLIT { 2 } else { 1 };
        if b_bytes <= B_L1_BYTES || (fused && b_bytes <= B_L2_BYTES) {
            // The whole chunk of B fits in L1 (or, for dequantized outputs, which are then
            // written row by row in full cache lines, in L2): row-outer.
            let mut i = 0;
            while i < rows {
                let mr = (rows - i).min(C::MR);
                for q in 0..npad / NR {
                    call(i, mr, q);
                }
                i += mr;
            }
        } else {
            // Panel-outer: one panel of this chunk's B (at most 128 pairs x 16 lanes, high and
            // low: 16 KiB) stays in L1 while every row of the block streams past it; row-outer
            // would re-read the whole chunk of B from L2 for every `MR` rows.
            for q in 0..npad / NR {
                let mut i = 0;
                while i < rows {
                    let mr = (rows - i).min(C::MR);
                    call(i, mr, q);
                    i += mr;
                }
            }
        }
    }
    if fused {
        if let Sink::Scaled {
            code_max: Some(cm),
            requant: Some(_),
            ..
        } = sink
        {
            // An integer in 0..=32768 (clamped codes).
            cm.fetch_max(fmax as u32, Ordering::Relaxed);
        }
        return;
    }
    let n = pb.n;
    match sink {
        Sink::Raw(_) if direct => {}
        Sink::Raw(d) => {
            for (drow, trow) in d.chunks_exact_mut(n).zip(tmp.chunks_exact(npad)) {
                drow.copy_from_slice(&trow[..n]);
            }
        }
        Sink::Scaled {
            out,
            scale,
            requant,
            wrap,
            code_max,
        } => {
            let mut mx = 0u32;
            for (drow, trow) in out.chunks_exact_mut(n).zip(tmp.chunks_exact(npad)) {
                for ((d, &t), &s) in drow.iter_mut().zip(trow).zip(scale) {
                    let v = if wrap { wrap48(t) } else { t };
                    *d = dequant_noting(v, requant, s, &mut mx);
                }
            }
            if let Some(cm) = code_max {
                cm.fetch_max(mx, Ordering::Relaxed);
            }
        }
    }
}

/// [`kernel`] for `mr <= C::MR` rows.
///
/// # Safety
/// As [`kernel`].
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_mr<C: Conv>(
    mr: usize,
    kcp: usize,
    a: APack,
    b: *const i32,
    b_lo: usize,
    bps: usize,
    epi: Epi,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match mr {
            4 => kernel::<C, 4>(kcp, a, b, b_lo, bps, epi),
            3 => kernel::<C, 3>(kcp, a, b, b_lo, bps, epi),
            2 => kernel::<C, 2>(kcp, a, b, b_lo, bps, epi),
            _ => kernel::<C, 1>(kcp, a, b, b_lo, bps, epi),
        }
    }
}

/// `MR x 16` outputs over `kcp` K pairs: `c[r, j] (+)= sum_p a[r, p] · b[p, j]` with i32 lanes
/// widened to i64 at the end (`(hi << 8) + lo` when split), or dequantized (`Epi::Scaled`).
///
/// # Safety
/// AVX2 present; the pairs of `a` readable (4 bytes at `a.ptr + r * a.ars + p * a.aps`) for
/// `r < MR`, `p < kcp`; 16 lanes readable at `b + p * bps` (and at `b + b_lo + p * bps` when
/// split); for `Epi::Acc`, `c` readable and writable for 16 entries at `r * ldc`; for
/// `Epi::Scaled`, `out` writable for `cols` entries at `r * ldo` and 16 scales readable.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn kernel<C: Conv, const MR: usize>(
    kcp: usize,
    a: APack,
    b: *const i32,
    b_lo: usize,
    bps: usize,
    epi: Epi,
) {
    let z = _mm256_setzero_si256();
    let mut hi = [[z; 2]; MR];
    let mut lo = [[z; 2]; MR];
    for p in 0..kcp {
        // SAFETY: within the ranges of the contract.
        let (h0, h1, l0, l1) = unsafe {
            let bp = b.add(p * bps);
            let h = (
                _mm256_loadu_si256(bp.cast()),
                _mm256_loadu_si256(bp.add(8).cast()),
            );
            if C::SPLIT {
                let lp = bp.add(b_lo);
                (
                    h.0,
                    h.1,
                    _mm256_loadu_si256(lp.cast()),
                    _mm256_loadu_si256(lp.add(8).cast()),
                )
            } else {
                (h.0, h.1, z, z)
            }
        };
        for r in 0..MR {
            // SAFETY: within the ranges of the contract.
            let x = unsafe {
                a.ptr
                    .add(r * a.ars + p * a.aps)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let x = _mm256_set1_epi32(x);
            hi[r][0] = _mm256_add_epi32(hi[r][0], _mm256_madd_epi16(x, h0));
            hi[r][1] = _mm256_add_epi32(hi[r][1], _mm256_madd_epi16(x, h1));
            if C::SPLIT {
                lo[r][0] = _mm256_add_epi32(lo[r][0], _mm256_madd_epi16(x, l0));
                lo[r][1] = _mm256_add_epi32(lo[r][1], _mm256_madd_epi16(x, l1));
            }
        }
    }
    let (c, ldc, add) = match epi {
        Epi::Acc { c, ldc, add } => (c, ldc, add),
        Epi::Scaled {
            out,
            ldo,
            cols,
            scale,
            requant,
            max,
            fscale,
        } => {
            // SAFETY: forwarded contract.
            unsafe {
                match requant {
                    Some(s) if !fscale.is_null() => {
                        store_requant_int::<C, MR>(&hi, &lo, out, ldo, cols, fscale, s, max)
                    }
                    _ => store_scaled::<C, MR>(&hi, &lo, out, ldo, cols, scale, requant, max),
                }
            }
            return;
        }
    };
    for r in 0..MR {
        for h in 0..2 {
            let v = hi[r][h];
            let mut v0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
            let mut v1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v));
            if C::SPLIT {
                let l = lo[r][h];
                let l0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(l));
                let l1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(l));
                v0 = _mm256_add_epi64(_mm256_slli_epi64::<8>(v0), l0);
                v1 = _mm256_add_epi64(_mm256_slli_epi64::<8>(v1), l1);
            }
            // SAFETY: within the ranges of the contract.
            unsafe {
                let cp = c.add(r * ldc + 8 * h);
                if add {
                    v0 = _mm256_add_epi64(v0, _mm256_loadu_si256(cp.cast()));
                    v1 = _mm256_add_epi64(v1, _mm256_loadu_si256(cp.add(4).cast()));
                }
                _mm256_storeu_si256(cp.cast(), v0);
                _mm256_storeu_si256(cp.add(4).cast(), v1);
            }
        }
    }
}

/// True when a fused block's requantized output may use [`store_requant_int`]: the shift is in
/// the range where its i32 steps cannot overflow, and every column's scale (with the `2^shift`
/// folded in) is a power of two whose products with codes `1..=32768` are normal, finite f32
/// values, so `code as f32 * scale as f32` is exact and equals `(code as f64 * scale) as f32`.
fn int_epilogue<C: Conv>(requant: Option<u32>, scale: &[f64]) -> bool {
    let Some(s) = requant else { return false };
    let shift_ok = if C::SPLIT {
        (9..=38).contains(&s)
    } else {
        (1..=30).contains(&s)
    };
    shift_ok
        && scale.iter().all(|&f| {
            f.is_finite()
                && f > 0.0
                && f.to_bits() & ((1u64 << 52) - 1) == 0
                && f >= f64::from(f32::MIN_POSITIVE)
                && f * 32768.0 <= f64::from(f32::MAX)
        })
}

/// [`store_scaled`] of a requantized output in i32 lanes (when [`int_epilogue`] holds): the
/// same codes and values with a fraction of the work. Requantization is
/// `floor((acc + 2^(s-1)) / 2^s)`. Split (INT16): with `acc = 256·hi + lo` and `s >= 9`,
/// `acc + 2^(s-1) = 256·T + (lo & 255)` where `T = hi + (lo >> 8) + 2^(s-9)`, and since
/// `0 <= lo & 255 < 256` divides out under the floor, the code is `T >> (s - 8)`. Within one K
/// chunk |hi| <= 2^30 and |lo| < 2^31, so |T| <= 2^30 + 2^23 + 2^29 < 2^31 for `s <= 38`.
/// Unsplit (INT8 modes): `T = hi + 2^(s-1)` with |hi| <= 2^23, code `T >> s`, `1 <= s <= 30`.
/// Then saturation to i16, exactly as the f64 path; the scale multiply is exact (see
/// [`int_epilogue`]).
///
/// # Safety
/// As [`store_scaled`], with 16 f32 scales readable at `fscale`; [`int_epilogue`] holds for `s`
/// and the scales.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn store_requant_int<C: Conv, const MR: usize>(
    hi: &[[__m256i; 2]; MR],
    lo: &[[__m256i; 2]; MR],
    out: *mut f32,
    ldo: usize,
    cols: usize,
    fscale: *const f32,
    s: u32,
    max: *mut f64,
) {
    let (bias, sh) = if C::SPLIT {
        (1i32 << (s - 9), s - 8)
    } else {
        (1i32 << (s - 1), s)
    };
    let bias = _mm256_set1_epi32(bias);
    let cnt = _mm_cvtsi32_si128(sh as i32);
    let (lo16, hi16) = (_mm256_set1_epi32(-32768), _mm256_set1_epi32(32767));
    let mut vmax = _mm256_setzero_si256();
    // SAFETY: 16 scales readable (contract).
    let fs = unsafe { [_mm256_loadu_ps(fscale), _mm256_loadu_ps(fscale.add(8))] };
    for r in 0..MR {
        let mut row = [0f32; NR];
        for h in 0..2 {
            let t = if C::SPLIT {
                _mm256_add_epi32(
                    _mm256_add_epi32(hi[r][h], _mm256_srai_epi32::<8>(lo[r][h])),
                    bias,
                )
            } else {
                _mm256_add_epi32(hi[r][h], bias)
            };
            let code = _mm256_min_epi32(_mm256_max_epi32(_mm256_sra_epi32(t, cnt), lo16), hi16);
            vmax = _mm256_max_epi32(vmax, _mm256_abs_epi32(code));
            let y = _mm256_mul_ps(_mm256_cvtepi32_ps(code), fs[h]);
            // SAFETY: a full panel has 16 entries writable at `out + r * ldo`; `row` has 16.
            unsafe {
                let dst = if cols == NR {
                    out.add(r * ldo + 8 * h)
                } else {
                    row.as_mut_ptr().add(8 * h)
                };
                _mm256_storeu_ps(dst, y);
            }
        }
        if cols < NR {
            // SAFETY: `cols` entries writable at `out + r * ldo`.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(r * ldo), cols) };
        }
    }
    if !max.is_null() {
        let mut lanes = [0i32; 8];
        // SAFETY: 8 writable i32; `max` valid (non-null, contract).
        unsafe {
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), vmax);
            *max = lanes.iter().fold(*max, |m, &v| m.max(f64::from(v)));
        }
    }
}

/// The kernel's final lane sums dequantized as [`dequant`] does, in f64 lanes: a sum
/// `(hi << 8) + lo` (or `hi`) is at most 2^39 in magnitude within one K chunk, so it and every
/// step below are exact in f64 until the final multiply by the scale and the rounding to f32,
/// which are the same two IEEE operations `dequant` does. Requantization
/// `(acc + 2^(s-1)) >> s` is `floor(acc · 2^-s + 0.5)` (both terms and their sum are exact: at
/// most 40 significant bits), then saturation to i16.
///
/// With `requant` and a non-null `max`, `*max` is raised to the largest |code| of the tile (the
/// zero-padded columns past `cols` hold code 0 and cannot raise it).
///
/// # Safety
/// AVX2 present; `out` writable for `cols <= 16` entries at `r * ldo` for `r < MR`; 16 scales
/// readable at `scale`; `max` null or valid for reads and writes.
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn store_scaled<C: Conv, const MR: usize>(
    hi: &[[__m256i; 2]; MR],
    lo: &[[__m256i; 2]; MR],
    out: *mut f32,
    ldo: usize,
    cols: usize,
    scale: *const f64,
    requant: Option<u32>,
    max: *mut f64,
) {
    let track = requant.is_some() && !max.is_null();
    let sign = _mm256_set1_pd(-0.0);
    let mut vmax = _mm256_setzero_pd();
    // Shift 0 keeps the sum as it is (then saturates): a shift of 0 needs no rounding step.
    let shift = requant.filter(|&s| s > 0);
    // 2^-s from its exponent bits (s <= 47): exact, and no `powi` call per kernel.
    let inv = _mm256_set1_pd(shift.map_or(1.0, |s| {
        f64::from_bits((1023 - u64::from(s.min(1022))) << 52)
    }));
    let half = _mm256_set1_pd(0.5);
    let (lo16, hi16) = (_mm256_set1_pd(-32768.0), _mm256_set1_pd(32767.0));
    let k256 = _mm256_set1_pd(256.0);
    for r in 0..MR {
        let mut row = [0f32; NR];
        for h in 0..2 {
            for half_i in 0..2 {
                let pick = |v: __m256i| {
                    if half_i == 0 {
                        _mm256_castsi256_si128(v)
                    } else {
                        _mm256_extracti128_si256::<1>(v)
                    }
                };
                let mut v = _mm256_cvtepi32_pd(pick(hi[r][h]));
                if C::SPLIT {
                    v = _mm256_add_pd(_mm256_mul_pd(v, k256), _mm256_cvtepi32_pd(pick(lo[r][h])));
                }
                if requant.is_some() {
                    if shift.is_some() {
                        v = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(v, inv), half));
                    }
                    v = _mm256_min_pd(_mm256_max_pd(v, lo16), hi16);
                    if track {
                        vmax = _mm256_max_pd(vmax, _mm256_andnot_pd(sign, v));
                    }
                }
                let j = 8 * h + 4 * half_i;
                // SAFETY: 16 scales readable; `row` has 16 entries; a full panel has 16
                // entries writable at `out + r * ldo`.
                unsafe {
                    let y = _mm256_cvtpd_ps(_mm256_mul_pd(v, _mm256_loadu_pd(scale.add(j))));
                    let dst = if cols == NR {
                        out.add(r * ldo + j)
                    } else {
                        row.as_mut_ptr().add(j)
                    };
                    _mm_storeu_ps(dst, y);
                }
            }
        }
        if cols < NR {
            // SAFETY: `cols` entries writable at `out + r * ldo`.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(r * ldo), cols) };
        }
    }
    if track {
        let mut lanes = [0f64; 4];
        // SAFETY: 4 writable f64; `max` valid (checked non-null above, contract).
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), vmax);
            *max = lanes.iter().fold(*max, |m, &v| m.max(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::{F32Lhs, float_gemm_f32, float_gemm_to};
    use e2t_core::Mode;
    use e2t_numerics::gemm_ref;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Golden result for `op` (`HighNearest` rounds the codes first, then multiplies in INT8
    /// mode: `round_to_high_byte(c) >> 8 == high_byte_nearest(c)`).
    fn golden(a: &[i16], b: &[i16], m: usize, k: usize, n: usize, op: Operand) -> Vec<i64> {
        let (a, b, mode) = match op {
            Operand::Full => (a.to_vec(), b.to_vec(), Mode::Int16),
            Operand::HighFloor => (a.to_vec(), b.to_vec(), Mode::Int8),
            Operand::HighNearest => {
                let r = |v: &[i16]| -> Vec<i16> {
                    v.iter()
                        .map(|&c| e2t_numerics::round_to_high_byte(c))
                        .collect()
                };
                (r(a), r(b), Mode::Int8)
            }
        };
        gemm_ref(&a, &b, m, k, n, mode).unwrap()
    }

    const OPS: [Operand; 3] = [Operand::Full, Operand::HighFloor, Operand::HighNearest];

    /// Codes: uniform, or drawn from the values that stress the lane bounds.
    fn codes(rng: &mut ChaCha8Rng, len: usize, extreme: bool) -> Vec<i16> {
        const EXT: [i16; 6] = [-32768, 32767, -32513, -1, 255, -256];
        (0..len)
            .map(|_| {
                if extreme {
                    EXT[rng.random_range(0..EXT.len())]
                } else {
                    rng.random()
                }
            })
            .collect()
    }

    fn raw(a: CodeMatrix<'_>, b: CodeMatrix<'_>, op: Operand) -> Vec<i64> {
        let mut out = vec![0i64; a.rows() * b.cols()];
        gemm(a, b, op, Out::Raw(&mut out));
        out
    }

    /// The integer path equals the golden model for row-major, K-major (transposed) and strided
    /// views of A and B, and the float path agrees.
    fn check(m: usize, k: usize, n: usize, seed: u64, extreme: bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = codes(&mut rng, m * k, extreme);
        let b = codes(&mut rng, k * n, extreme);
        let am = CodeMatrix::row_major(&a, m, k).unwrap();
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        // Transposed storage (K-major A, column-major B).
        let at = am.t().to_row_major();
        let bt = bm.t().to_row_major();
        let atm = CodeMatrix::row_major(&at, k, m).unwrap().t();
        let btm = CodeMatrix::row_major(&bt, n, k).unwrap().t();
        // Strided: every other element of a twice-as-wide buffer.
        let a2: Vec<i16> = a.iter().flat_map(|&v| [v, 7]).collect();
        let asm = CodeMatrix::new(&a2, m, k, 2 * k, 2).unwrap();
        for op in OPS {
            let want = golden(&a, &b, m, k, n, op);
            let ctx = format!("{m}x{k}x{n} {op:?} seed {seed}");
            assert_eq!(raw(am, bm, op), want, "{ctx}");
            assert_eq!(raw(atm, bm, op), want, "{ctx} A transposed");
            assert_eq!(raw(asm, btm, op), want, "{ctx} A strided, B transposed");
            let mut f = vec![0i64; m * n];
            float_gemm_to(am, bm, op, Out::Raw(&mut f));
            assert_eq!(f, want, "{ctx} float path");
        }
    }

    #[test]
    fn exact_on_edge_shapes() {
        let mut seed = 0;
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 2, 1),
            (2, 3, 17),
            (5, 7, 16),
            (7, 255, 15),
            (13, 256, 33),
            (4, 257, 8),
            (12, 513, 31),
            (3, 1031, 2),
            (40, 600, 20),
        ] {
            for extreme in [false, true] {
                seed += 1;
                check(m, k, n, seed, extreme);
            }
        }
    }

    /// `gemm_requant_max` writes what the scaled GEMM writes and returns the largest |code| of
    /// the requantized output, on the fused kernels (short K), the i64 epilogue (long K, and with
    /// the 48-bit wrap) and the K-split path (few rows, long K).
    #[test]
    fn requant_max_is_the_largest_output_code() {
        let mut seed = 300;
        for &(m, k, n, extreme) in &[
            (37, 40, 20, false),
            (30, 100, 16, true),
            (50, 700, 19, false),
            (25, 600, 17, true),
            (6, 5000, 16, true),
        ] {
            for op in OPS {
                seed += 1;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let a = codes(&mut rng, m * k, extreme);
                let b = codes(&mut rng, k * n, extreme);
                let (am, bm) = (
                    CodeMatrix::row_major(&a, m, k).unwrap(),
                    CodeMatrix::row_major(&b, k, n).unwrap(),
                );
                let want_raw: Vec<i64> = golden(&a, &b, m, k, n, op)
                    .into_iter()
                    .map(e2t_numerics::wrap48)
                    .collect();
                let scale: Vec<f64> = (0..n).map(|j| 2f64.powi(j as i32 % 5 - 20)).collect();
                for shift in [0u32, 9, 20, 33] {
                    let want_max = want_raw
                        .iter()
                        .map(|&v| e2t_numerics::requantize_unchecked(v, shift).unsigned_abs())
                        .max()
                        .map_or(0, u32::from);
                    let mut want_out = vec![0f32; m * n];
                    gemm(
                        am,
                        bm,
                        op,
                        Out::Scaled {
                            out: &mut want_out,
                            scale: &scale,
                            requant: Some(shift),
                        },
                    );
                    let mut out = vec![f32::NAN; m * n];
                    let got = gemm_requant_max(am, bm, op, &mut out, &scale, shift);
                    let ctx = format!("{m}x{k}x{n} {op:?} shift {shift}");
                    assert_eq!(got, want_max, "{ctx}");
                    assert_eq!(
                        out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want_out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{ctx}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_rows_and_k_splits() {
        // Many row blocks (one K task each), and few rows with a long K (K split across tasks).
        check(700, 90, 24, 100, false);
        check(9, 5000, 3, 101, true);
        // One K task longer than a packing chunk: A is packed chunk by chunk (the PSG prediction's
        // K-major A over batch x pixels takes this path).
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        one.install(|| check(3, 40_000, 5, 102, true));
    }

    /// The worst case of the INT16 low-byte lanes: a low byte of 255 against -32768 in every
    /// product (and the high-byte extreme -128), with either operand the split one. A chunk longer than 128 pairs, or a wrong
    /// `(hi << 8) + lo` recombination, changes these sums.
    #[test]
    fn int16_lane_bounds_hold() {
        for (av, bv) in [
            (-32513i16, -32768i16),
            (-32768, -32513),
            (-32513, 32767),
            (32767, -32513),
            (-1, -32768),
            (-32768, -1),
            (255, 32767),
            (32767, 255),
        ] {
            for k in [255, 256, 257, 258, 510, 512, 1000] {
                let (m, n) = (4, 17);
                let a = vec![av; m * k];
                let b = vec![bv; k * n];
                let want = i64::from(av) * i64::from(bv) * k as i64;
                let am = CodeMatrix::row_major(&a, m, k).unwrap();
                let bm = CodeMatrix::row_major(&b, k, n).unwrap();
                let got = raw(am, bm, Operand::Full);
                assert!(got.iter().all(|&v| v == want), "{av}x{bv} k {k}");
                let atv = am.t().to_row_major();
                let at = CodeMatrix::row_major(&atv, k, m).unwrap().t();
                assert_eq!(raw(at, bm, Operand::Full), got);
            }
        }
    }

    /// K long enough for INT16 sums to leave 48 bits: the wrap is applied, in both output kinds
    /// and whether K is split across tasks (few rows) or not (many rows, via a row stride of 0).
    #[test]
    fn int16_wraps_48_bits() {
        let k = 150_001;
        let n = 3;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let a: Vec<i16> = (0..k)
            .map(|_| {
                if rng.random_range(0..64) == 0 {
                    32767
                } else {
                    -32768
                }
            })
            .collect();
        let b: Vec<i16> = (0..k * n).map(|_| -32768).collect();
        let want = golden(&a, &b, 1, k, n, Operand::Full);
        let exact: i64 = a.iter().map(|&x| i64::from(x) * -32768).sum();
        assert_ne!(wrap48(exact), exact, "the sums must wrap");
        assert_eq!(want[0], wrap48(exact));
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        let scale = [0.5, 2f64.powi(-40), -3.0];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            // m 2 and 1100: K split across tasks; m 1600: enough row blocks for one K task each.
            for m in [2, 1100, 1600] {
                let am = CodeMatrix::new(&a, m, k, 0, 1).unwrap();
                let got = raw(am, bm, Operand::Full);
                for row in got.chunks_exact(n) {
                    assert_eq!(row, &want[..], "m {m}");
                }
                for requant in [None, Some(20)] {
                    let mut out = vec![0f32; m * n];
                    let o = Out::Scaled {
                        out: &mut out,
                        scale: &scale,
                        requant,
                    };
                    gemm(am, bm, Operand::Full, o);
                    // The float fallback's fused scaled output and its wrap, on the same case.
                    let mut fout = vec![0f32; m * n];
                    let fo = Out::Scaled {
                        out: &mut fout,
                        scale: &scale,
                        requant,
                    };
                    float_gemm_to(am, bm, Operand::Full, fo);
                    for (row, frow) in out.chunks_exact(n).zip(fout.chunks_exact(n)) {
                        for (((&o, &f), &w), &s) in row.iter().zip(frow).zip(&want).zip(&scale) {
                            let d = dequant(w, requant, s).to_bits();
                            assert_eq!(o.to_bits(), d, "m {m}");
                            assert_eq!(f.to_bits(), d, "m {m} float path");
                        }
                    }
                }
            }
        });
    }

    /// Scaled outputs equal dequantizing the golden accumulators, for every operand.
    #[test]
    fn scaled_matches_dequantized_golden() {
        let (m, k, n) = (37, 301, 21);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let a = codes(&mut rng, m * k, false);
        let b = codes(&mut rng, k * n, true);
        let scale: Vec<f64> = (0..n).map(|j| 2f64.powi(-(j as i32)) * 1.5).collect();
        let am = CodeMatrix::row_major(&a, m, k).unwrap();
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        for op in OPS {
            let want = golden(&a, &b, m, k, n, op);
            for requant in [None, Some(0), Some(9)] {
                let mut out = vec![0f32; m * n];
                let o = Out::Scaled {
                    out: &mut out,
                    scale: &scale,
                    requant,
                };
                gemm(am.t().t(), bm, op, o);
                let mut fout = vec![0f32; m * n];
                let fo = Out::Scaled {
                    out: &mut fout,
                    scale: &scale,
                    requant,
                };
                float_gemm_to(am, bm, op, fo);
                for (i, ((&o, &f), &w)) in out.iter().zip(&fout).zip(&want).enumerate() {
                    let e = dequant(w, requant, scale[i % n]);
                    assert_eq!(o.to_bits(), e.to_bits(), "{op:?} {requant:?} entry {i}");
                    assert_eq!(
                        f.to_bits(),
                        e.to_bits(),
                        "{op:?} {requant:?} entry {i} float"
                    );
                }
            }
        }
    }

    /// Scaled outputs of one K chunk are dequantized inside the kernels: equal to dequantizing
    /// the golden accumulators for every operand, requantization shift (none, 0, rounding ties,
    /// saturation) and ragged last panel, with extreme codes and either loop order.
    #[test]
    fn fused_scaled_outputs_match_dequantized_golden() {
        let mut seed = 40;
        for &(m, k, n) in &[
            (37, 16, 21),
            (5, 255, 33),
            (70, 256, 144),
            (3, 1, 1),
            (9, 64, 576),
        ] {
            for extreme in [false, true] {
                seed += 1;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let a = codes(&mut rng, m * k, extreme);
                let b = codes(&mut rng, k * n, !extreme);
                let scale: Vec<f64> = (0..n).map(|j| 2f64.powi(-(j as i32 % 40)) * 0.75).collect();
                let am = CodeMatrix::row_major(&a, m, k).unwrap();
                let bm = CodeMatrix::row_major(&b, k, n).unwrap();
                for op in OPS {
                    let want = golden(&a, &b, m, k, n, op);
                    for requant in [None, Some(0), Some(1), Some(7), Some(20), Some(47)] {
                        let mut out = vec![f32::NAN; m * n];
                        let o = Out::Scaled {
                            out: &mut out,
                            scale: &scale,
                            requant,
                        };
                        gemm(am, bm, op, o);
                        for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                            let e = dequant(w, requant, scale[i % n]);
                            assert_eq!(
                                o.to_bits(),
                                e.to_bits(),
                                "{m}x{k}x{n} {op:?} {requant:?} entry {i}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// fp32 left operands quantized on the fly equal quantizing first (16- and 8-bit tensors).
    #[test]
    fn f32_lhs_equals_quantized_codes() {
        let (m, k, n) = (29, 531, 19);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x: Vec<f32> = (0..m * k)
            .map(|_| rng.random::<f32>() * 6.0 - 3.0)
            .collect();
        let b = codes(&mut rng, k * n, false);
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        for eight in [false, true] {
            let (q, exp) = if eight {
                e2t_numerics::quantize_tensor_8bit(&x)
            } else {
                e2t_numerics::quantize_tensor(&x)
            };
            let lhs = F32Lhs {
                data: &x,
                rows: m,
                cols: k,
                exp,
                eight,
            };
            for op in OPS {
                let want = golden(&q, &b, m, k, n, op);
                let mut got = vec![0i64; m * n];
                gemm(lhs, bm, op, Out::Raw(&mut got));
                assert_eq!(got, want, "{op:?} eight {eight}");
                let mut f = vec![0i64; m * n];
                float_gemm_f32(lhs, bm, op, Out::Raw(&mut f));
                assert_eq!(f, want, "{op:?} eight {eight} float path");
            }
        }
    }
}
