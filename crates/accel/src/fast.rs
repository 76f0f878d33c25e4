//! Exact integer GEMM on floating-point hardware.
//!
//! On x86-64 CPUs with AVX2, [`gemm_exact_to`] and [`gemm_exact_f32`] run the integer kernel of
//! `intgemm` instead (same results, bit for bit); the float path below is the fallback elsewhere
//! and the tests' oracle ([`float_gemm_to`], [`float_gemm_f32`]).
//!
//! Codes are converted to floats holding small integers and multiplied with the `gemm` crate. Every
//! partial sum stays an integer below the float's exact range, so the result is exact:
//! - INT16 operands (|product| <= 2^30) in f64: exact while at most 2^23 products are summed (2^20
//!   are used, so sums stay below 2^51 for the float-to-integer conversion);
//! - INT8 operands (|product| <= 2^14) in f32: exact while at most 1024 products are summed.
//!
//! K is cut into chunks within these limits; each chunk's float sums are converted to i64 and added
//! with wrapping arithmetic, then reduced to 48 bits at the end (addition modulo 2^48 does not
//! depend on order, so this equals the golden per-MAC wrap). The reduction is skipped when
//! `K x max|product| < 2^47` (INT16: K < 2^17; INT8: any K the command allows), because then no sum
//! can leave the 48-bit range and the wrap is the identity. With [`Out::Scaled`] the exact float
//! sums are dequantized straight into fp32 when each is one float sum that cannot wrap (otherwise
//! raw accumulators are formed first), which equals scaling the raw accumulators.
//!
//! Work is split into row blocks (and K ranges when there are few rows) run in parallel with rayon;
//! each block converts its slice of A into a small buffer (per-thread, reused) that stays in cache.
//! With few rows and a long K (weight gradients) one block holds all rows, so A is read once.
//! Results do not depend on the split: integer sums are exact and combined with wrapping adds.

#[cfg(target_arch = "x86_64")]
use crate::intgemm::{self, APack, Conv, as_i16, pack_kpair, pack_row};
use crate::matrix::CodeMatrix;
use e2t_numerics::{high_byte_nearest, wrap48};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::Cell;

/// How a code becomes a multiplicand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operand {
    /// INT16 mode: the code itself.
    Full,
    /// INT8 mode: `code >> 8`.
    HighFloor,
    /// PSG prediction with nearest rounding: [`high_byte_nearest`].
    HighNearest,
}

pub(crate) trait Flt: Copy + Send + Sync + Default + 'static {
    fn of(v: i32) -> Self;
    fn int(self) -> i64;
    fn to_f64(self) -> f64;
    /// This thread's scratch buffers (see [`Scratch`]).
    fn scratch() -> &'static std::thread::LocalKey<Scratch<Self>>;
    /// Most products whose sum is exact.
    const KMAX: usize;
}

/// A thread's two block buffers, kept across blocks so they are neither allocated nor zeroed per
/// block (every use writes before it reads). A block takes them out of the slot while it runs, so a
/// nested block on the same thread (a rayon worker stealing work while waiting) gets fresh ones.
pub(crate) type Scratch<T> = Cell<(Vec<T>, Vec<T>)>;

/// 1.5 * 2^52: for an integer-valued |v| < 2^51, the bits of `v + MAGIC` minus the bits of `MAGIC`
/// are `v` as i64. Unlike `as`, this vectorizes without AVX-512.
const MAGIC64: f64 = 6_755_399_441_055_744.0;

#[inline(always)]
fn f64_to_i64_exact(v: f64) -> i64 {
    ((v + MAGIC64).to_bits() as i64).wrapping_sub(MAGIC64.to_bits() as i64)
}

impl Flt for f32 {
    #[inline(always)]
    fn of(v: i32) -> Self {
        v as f32
    }
    #[inline(always)]
    fn int(self) -> i64 {
        f64_to_i64_exact(self as f64)
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn scratch() -> &'static std::thread::LocalKey<Scratch<Self>> {
        thread_local! {
            static S: Scratch<f32> = const { Cell::new((Vec::new(), Vec::new())) };
        }
        &S
    }
    // 1024 * 2^14 = 2^24: the f32 limit of exact integers.
    const KMAX: usize = 1024;
}

impl Flt for f64 {
    #[inline(always)]
    fn of(v: i32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn int(self) -> i64 {
        f64_to_i64_exact(self)
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    fn scratch() -> &'static std::thread::LocalKey<Scratch<Self>> {
        thread_local! {
            static S: Scratch<f64> = const { Cell::new((Vec::new(), Vec::new())) };
        }
        &S
    }
    // 2^20 * 2^30 = 2^50: exact in f64 and within the range of `f64_to_i64_exact`.
    const KMAX: usize = 1 << 20;
}

/// Elements of the per-block A buffer (kept small enough to stay in L2 with the gemm crate's packs).
const ABUF_ELEMS: usize = 1 << 15;
/// Longest K piece converted at once.
const KSUB_MAX: usize = 1024;
/// Shortest K piece of the few-rows layout.
const KSUB_MIN: usize = 64;
/// Most rows handled as one block when K is long.
const WIDE_M_MAX: usize = 1024;
/// Shortest K range worth a task of its own.
const KSPLIT_MIN: usize = 256;

/// `out[m,n] = A[m,k] · B[k,n]` with 48-bit wrapping accumulators, exactly. `out` is row-major and
/// must hold `m * n` entries (checked by the caller).
pub(crate) fn gemm_exact(a: CodeMatrix<'_>, b: CodeMatrix<'_>, op: Operand, out: &mut [i64]) {
    gemm_exact_to(a, b, op, Out::Raw(out));
}

/// Where a GEMM's exact result goes.
pub(crate) enum Out<'o> {
    /// 48-bit accumulators (sign-extended), row-major `[m, n]`.
    Raw(&'o mut [i64]),
    /// Dequantized on the way out: `out[i,j] = (v as f64 * scale[j]) as f32` with `v = acc[i,j]`,
    /// or `v = requantize(acc[i,j], s)` when `requant` is `Some(s)` (the block's 16-bit output
    /// format); the same as writing the command's output and scaling it afterwards.
    Scaled {
        out: &'o mut [f32],
        scale: &'o [f64],
        requant: Option<u32>,
    },
}

impl Out<'_> {
    fn len(&self) -> usize {
        match self {
            Out::Raw(o) => o.len(),
            Out::Scaled { out, .. } => out.len(),
        }
    }
}

/// [`gemm_exact`] into any [`Out`].
pub(crate) fn gemm_exact_to(a: CodeMatrix<'_>, b: CodeMatrix<'_>, op: Operand, out: Out<'_>) {
    debug_assert_eq!(a.cols(), b.rows());
    debug_assert_eq!(out.len(), a.rows() * b.cols());
    #[cfg(target_arch = "x86_64")]
    if intgemm::available() {
        return intgemm::gemm(a, b, op, out);
    }
    float_gemm_to(a, b, op, out)
}

/// [`gemm_exact_to`] on the float path (the fallback without AVX2, and the tests' oracle).
pub(crate) fn float_gemm_to(a: CodeMatrix<'_>, b: CodeMatrix<'_>, op: Operand, out: Out<'_>) {
    match op {
        Operand::Full => run::<f64, _, _>(a, b, |c| c as i32, op, out),
        Operand::HighFloor => run::<f32, _, _>(a, b, |c| (c >> 8) as i32, op, out),
        Operand::HighNearest => run::<f32, _, _>(a, b, |c| high_byte_nearest(c) as i32, op, out),
    }
}

/// [`gemm_exact_to`] with an fp32 left operand quantized on the fly (see [`F32Lhs`]); the result
/// equals quantizing first and calling [`gemm_exact`] on the codes.
pub(crate) fn gemm_exact_f32(a: F32Lhs<'_>, b: CodeMatrix<'_>, op: Operand, out: Out<'_>) {
    debug_assert_eq!(a.data.len(), a.rows * a.cols);
    debug_assert_eq!(a.cols, b.rows());
    #[cfg(target_arch = "x86_64")]
    if intgemm::available() {
        return intgemm::gemm(a, b, op, out);
    }
    float_gemm_f32(a, b, op, out)
}

/// [`gemm_exact_f32`] on the float path.
pub(crate) fn float_gemm_f32(a: F32Lhs<'_>, b: CodeMatrix<'_>, op: Operand, out: Out<'_>) {
    match op {
        Operand::Full => run::<f64, _, _>(a, b, |c| c as i32, op, out),
        Operand::HighFloor => run::<f32, _, _>(a, b, |c| (c >> 8) as i32, op, out),
        Operand::HighNearest => run::<f32, _, _>(a, b, |c| high_byte_nearest(c) as i32, op, out),
    }
}

impl Operand {
    /// Largest |product| of two multiplicands: (-32768)^2 in INT16; (-128)^2 for high bytes
    /// (`code >> 8` and [`high_byte_nearest`] both lie in -128..=127).
    fn max_product(self) -> u128 {
        match self {
            Operand::Full => 1 << 30,
            Operand::HighFloor | Operand::HighNearest => 1 << 14,
        }
    }

    /// True when no sum of `k` products can leave the 48-bit range [-2^47, 2^47): then the 48-bit
    /// wrap is the identity and the exact sum is the accumulator.
    /// The operand an `OP_GEMM` reads in `mode`: full codes (INT16) or their high bytes (INT8).
    pub(crate) fn of(mode: e2t_core::Mode) -> Self {
        match mode {
            e2t_core::Mode::Int16 => Operand::Full,
            e2t_core::Mode::Int8 => Operand::HighFloor,
        }
    }

    pub(crate) fn never_wraps(self, k: usize) -> bool {
        (k as u128) * self.max_product() < (1u128 << 47)
    }
}

/// B converted once, in the layout of its source.
struct FloatB<T> {
    data: Vec<T>,
    k: usize,
    n: usize,
    row_major: bool,
}

impl<T: Flt> FloatB<T> {
    fn new<F: Fn(i16) -> i32 + Sync>(b: CodeMatrix<'_>, conv: &F) -> Self {
        let (k, n) = (b.rows(), b.cols());
        let row_major = !(b.row_stride() == 1 && b.col_stride() != 1);
        let mut data = vec![T::default(); k * n];
        if row_major {
            data.par_chunks_mut(n.max(1))
                .enumerate()
                .for_each(|(p, row)| {
                    for (j, d) in row.iter_mut().enumerate() {
                        *d = T::of(conv(b.get(p, j)));
                    }
                });
        } else {
            data.par_chunks_mut(k.max(1))
                .enumerate()
                .for_each(|(j, col)| {
                    for (p, d) in col.iter_mut().enumerate() {
                        *d = T::of(conv(b.get(p, j)));
                    }
                });
        }
        FloatB {
            data,
            k,
            n,
            row_major,
        }
    }

    /// Pointer to row `p` of B and its (col stride, row stride).
    fn at(&self, p: usize) -> (*const T, isize, isize) {
        if self.row_major {
            (self.data[p * self.n..].as_ptr(), 1, self.n as isize)
        } else {
            (self.data[p..].as_ptr(), self.k as isize, 1)
        }
    }
}

fn run<T: Flt, F: Fn(i16) -> i32 + Sync, L: Lhs>(
    a: L,
    b: CodeMatrix<'_>,
    conv: F,
    op: Operand,
    out: Out<'_>,
) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
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
    let bf = FloatB::<T>::new(b, &conv);
    let threads = rayon::current_num_threads().max(1);
    let (mb, ksub) = if m <= WIDE_M_MAX && k > KSUB_MAX {
        // Few rows and a long K (weight gradients: A is a transposed patch matrix): one block of
        // all rows with short K pieces, so A is streamed once instead of once per row block.
        let ksub = (ABUF_ELEMS / m)
            .clamp(KSUB_MIN, KSUB_MAX)
            .min(T::KMAX)
            .min(k);
        (m, ksub)
    } else {
        let ksub = k.min(KSUB_MAX).min(T::KMAX);
        (((ABUF_ELEMS / ksub) / 16 * 16).max(16).min(m), ksub)
    };
    let tasks = Tasks::plan(m, n, k, mb, threads, KSPLIT_MIN, 1);
    let ks = tasks.ks;
    let no_wrap = op.never_wraps(k);

    // Scaled output straight from the float sums: only when each entry is one exact float sum
    // (one K task, K within the float's exact range) that cannot wrap, so it equals the raw
    // accumulator. Otherwise raw accumulators first, then the scaling.
    let out = match out {
        Out::Scaled {
            out,
            scale,
            requant,
        } if !(ks == 1 && k <= T::KMAX && no_wrap) => {
            let mut raw = vec![0i64; m * n];
            run::<T, F, L>(a, b, conv, op, Out::Raw(&mut raw));
            for (orow, rrow) in out.chunks_exact_mut(n).zip(raw.chunks_exact(n)) {
                for ((o, &r), &s) in orow.iter_mut().zip(rrow).zip(scale) {
                    *o = dequant(r, requant, s);
                }
            }
            return;
        }
        o => o,
    };

    match out {
        Out::Raw(out) => {
            raw_over_tasks(tasks, out, no_wrap, |r0, r1, k0, k1, dst| {
                let d = Dst::Assign(dst);
                block::<T, F, L>(&a, &bf, &conv, r0, r1, k0, k1, ksub.min(k1 - k0), d);
            });
        }
        Out::Scaled {
            out,
            scale,
            requant,
        } => {
            // ks == 1, k <= KMAX and no wrap (checked above).
            out.par_chunks_mut(mb * n)
                .enumerate()
                .for_each(|(bi, dst)| {
                    let r0 = bi * mb;
                    let r1 = (r0 + mb).min(m);
                    let d = Dst::Scale(dst, scale, requant);
                    block::<T, F, L>(&a, &bf, &conv, r0, r1, 0, k, ksub, d);
                });
        }
    }
}

/// How a GEMM's rows and K are cut into parallel tasks: row blocks of `mb` rows, each over `ks`
/// K ranges of `klen` (the last ones shorter or empty).
#[derive(Clone, Copy)]
pub(crate) struct Tasks {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub mb: usize,
    pub ks: usize,
    pub klen: usize,
}

impl Tasks {
    /// Row blocks of `mb` rows; with fewer blocks than 4 per thread, K is also cut into ranges
    /// (about 4 tasks per thread, none shorter than `ksplit_min`), each starting on a multiple of
    /// `align` (the integer kernel works on K pairs).
    pub(crate) fn plan(
        m: usize,
        n: usize,
        k: usize,
        mb: usize,
        threads: usize,
        ksplit_min: usize,
        align: usize,
    ) -> Self {
        let nb = m.div_ceil(mb);
        let target = 4 * threads;
        let ks = if nb >= target {
            1
        } else {
            target.div_ceil(nb).min(k.div_ceil(ksplit_min)).max(1)
        };
        let klen = k.div_ceil(ks).next_multiple_of(align).max(1);
        Tasks {
            m,
            n,
            k,
            mb,
            ks: k.div_ceil(klen),
            klen,
        }
    }
}

/// Raw 48-bit accumulators (`out`, row-major `[m, n]`) from the tasks: `block(r0, r1, k0, k1, dst)`
/// writes the sums of rows `r0..r1` over K range `k0..k1` into `dst` (row-major `[r1 - r0, n]`).
/// A row block's K ranges are added with wrapping adds, then everything is reduced to 48 bits
/// unless `no_wrap` (addition modulo 2^48 does not depend on order, so this equals the golden
/// per-MAC wrap). Shared by the float and the integer kernels.
pub(crate) fn raw_over_tasks(
    t: Tasks,
    out: &mut [i64],
    no_wrap: bool,
    block: impl Fn(usize, usize, usize, usize, &mut [i64]) + Sync,
) {
    let Tasks {
        m,
        n,
        k,
        mb,
        ks,
        klen,
    } = t;
    if ks == 1 {
        out.par_chunks_mut(mb * n)
            .enumerate()
            .for_each(|(bi, dst)| block(bi * mb, ((bi + 1) * mb).min(m), 0, k, dst));
    } else {
        let nb = m.div_ceil(mb);
        let partials: Vec<(usize, Vec<i64>)> = (0..nb * ks)
            .into_par_iter()
            .filter_map(|t| {
                let (bi, si) = (t / ks, t % ks);
                let (r0, r1) = (bi * mb, ((bi + 1) * mb).min(m));
                let (k0, k1) = (si * klen, ((si + 1) * klen).min(k));
                if k0 >= k1 {
                    return None;
                }
                let mut dst = vec![0i64; (r1 - r0) * n];
                block(r0, r1, k0, k1, &mut dst);
                Some((bi, dst))
            })
            .collect();
        out.fill(0);
        for (bi, dst) in partials {
            let base = bi * mb * n;
            for (o, v) in out[base..base + dst.len()].iter_mut().zip(dst) {
                *o = o.wrapping_add(v);
            }
        }
    }
    if !no_wrap {
        out.par_chunks_mut(1 << 14)
            .for_each(|c| c.iter_mut().for_each(|v| *v = wrap48(*v)));
    }
}

/// Where a block's sums go.
enum Dst<'d> {
    /// Row-major `[rows, n]` accumulators; the block's first flush assigns, later ones add.
    Assign(&'d mut [i64]),
    /// Row-major `[rows, n]` floats scaled per column (after the optional requantization, see
    /// [`Out::Scaled`]); the block holds one exact sum per entry.
    Scale(&'d mut [f32], &'d [f64], Option<u32>),
}

/// Rows `r0..r1`, K range `k0..k1`, added (wrapping) into `dst` (row-major `[r1 - r0, n]`).
/// Dispatches to a copy compiled with AVX2 when the CPU has it (the conversion loops vectorize).
#[allow(clippy::too_many_arguments)]
fn block<T: Flt, F: Fn(i16) -> i32, L: Lhs>(
    a: &L,
    bf: &FloatB<T>,
    conv: &F,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    ksub: usize,
    dst: Dst<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { block_avx2(a, bf, conv, r0, r1, k0, k1, ksub, dst) };
    }
    block_body(a, bf, conv, r0, r1, k0, k1, ksub, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn block_avx2<T: Flt, F: Fn(i16) -> i32, L: Lhs>(
    a: &L,
    bf: &FloatB<T>,
    conv: &F,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    ksub: usize,
    dst: Dst<'_>,
) {
    block_body(a, bf, conv, r0, r1, k0, k1, ksub, dst)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_body<T: Flt, F: Fn(i16) -> i32, L: Lhs>(
    a: &L,
    bf: &FloatB<T>,
    conv: &F,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    ksub: usize,
    dst: Dst<'_>,
) {
    let rows = r1 - r0;
    // `abuf`: the A slice as floats; `tmp`: the row-major result block, so the flush into `dst` is
    // a straight (vectorizable) loop. `tmp` is only read after the first GEMM call overwrote it.
    // No closure here: it would be compiled without the caller's AVX2 features.
    let (mut abuf, mut tmp) = T::scratch().with(|c| c.take());
    if abuf.len() < rows * ksub {
        abuf.resize(rows * ksub, T::default());
    }
    if tmp.len() < rows * bf.n {
        tmp.resize(rows * bf.n, T::default());
    }
    block_run(
        a,
        bf,
        conv,
        r0,
        rows,
        k0,
        k1,
        ksub,
        dst,
        &mut abuf[..rows * ksub],
        &mut tmp[..rows * bf.n],
    );
    T::scratch().with(|c| c.set((abuf, tmp)));
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_run<T: Flt, F: Fn(i16) -> i32, L: Lhs>(
    a: &L,
    bf: &FloatB<T>,
    conv: &F,
    r0: usize,
    rows: usize,
    k0: usize,
    k1: usize,
    ksub: usize,
    mut dst: Dst<'_>,
    abuf: &mut [T],
    tmp: &mut [T],
) {
    let n = bf.n;
    let mut summed = 0usize; // products per entry currently held in `tmp`
    let mut flushed = false; // `dst` holds a first flush
    let mut kk = k0;
    while kk < k1 {
        let kc = ksub.min(k1 - kk);
        if summed + kc > T::KMAX {
            flush(tmp, &mut dst, flushed);
            flushed = true;
            summed = 0;
        }
        let (a_cs, a_rs) = a.fill(conv, r0, rows, kk, kc, abuf);
        let (bptr, b_cs, b_rs) = bf.at(kk);
        // SAFETY: every pointer covers the region the call reads or writes: `tmp` is rows x n
        // row-major (cs = 1, rs = n), `abuf` holds rows x kc with the strides `fill_a` returned,
        // and B from row `kk` has kc rows and n columns in `bf.data` with the given strides
        // (kk + kc <= k). No aliasing: `tmp` is exclusively borrowed.
        unsafe {
            gemm::gemm(
                rows,
                n,
                kc,
                tmp.as_mut_ptr(),
                1,
                n as isize,
                summed > 0,
                abuf.as_ptr(),
                a_cs,
                a_rs,
                bptr,
                b_cs,
                b_rs,
                T::of(1),
                T::of(1),
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        summed += kc;
        kk += kc;
    }
    if summed > 0 || !flushed {
        flush(tmp, &mut dst, flushed);
    }
}

/// One output entry of a scaled command: the raw accumulator, or its 16-bit requantized code,
/// times the column's scale.
#[inline(always)]
pub(crate) fn dequant(acc: i64, requant: Option<u32>, scale: f64) -> f32 {
    match requant {
        None => (acc as f64 * scale) as f32,
        Some(s) => (f64::from(e2t_numerics::requantize_unchecked(acc, s)) * scale) as f32,
    }
}

#[inline(always)]
fn flush<T: Flt>(tmp: &[T], dst: &mut Dst<'_>, add: bool) {
    match dst {
        Dst::Assign(d) if add => {
            for (d, &t) in d.iter_mut().zip(tmp) {
                *d = d.wrapping_add(t.int());
            }
        }
        Dst::Assign(d) => {
            for (d, &t) in d.iter_mut().zip(tmp) {
                *d = t.int();
            }
        }
        Dst::Scale(d, scale, None) => {
            debug_assert!(!add, "a scaled block holds one sum per entry");
            for (drow, trow) in d
                .chunks_exact_mut(scale.len())
                .zip(tmp.chunks_exact(scale.len()))
            {
                for ((d, &t), &s) in drow.iter_mut().zip(trow).zip(scale.iter()) {
                    *d = (t.to_f64() * s) as f32;
                }
            }
        }
        Dst::Scale(d, scale, rq) => {
            debug_assert!(!add, "a scaled block holds one sum per entry");
            for (drow, trow) in d
                .chunks_exact_mut(scale.len())
                .zip(tmp.chunks_exact(scale.len()))
            {
                for ((d, &t), &s) in drow.iter_mut().zip(trow).zip(scale.iter()) {
                    *d = dequant(t.int(), *rq, s);
                }
            }
        }
    }
}

/// The left operand of a GEMM as the blocks read it.
pub(crate) trait Lhs: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Copy rows `r0..r0+rows`, columns `kk..kk+kc` as codes mapped by `conv` into `abuf`, in the
    /// source's own order (a streaming copy); returns the buffer's (column stride, row stride).
    fn fill<T: Flt, F: Fn(i16) -> i32>(
        &self,
        conv: &F,
        r0: usize,
        rows: usize,
        kk: usize,
        kc: usize,
        abuf: &mut [T],
    ) -> (isize, isize);
    /// Rows `r0..r0+rows`, columns `kk..kk+kc` (`kk` even, `kc <= 2 * KPACK_MAX`) as K pairs
    /// of `C`'s A multiplicands for the integer kernel, odd `kc` padded with 0: packed into `buf`
    /// (at least `rows * kc.div_ceil(2)` pairs), or in place when the source already is that.
    #[cfg(target_arch = "x86_64")]
    fn pack<C: Conv>(&self, r0: usize, rows: usize, kk: usize, kc: usize, buf: &mut [i32])
    -> APack;
}

impl Lhs for CodeMatrix<'_> {
    fn rows(&self) -> usize {
        CodeMatrix::rows(self)
    }
    fn cols(&self) -> usize {
        CodeMatrix::cols(self)
    }
    #[inline(always)]
    fn fill<T: Flt, F: Fn(i16) -> i32>(
        &self,
        conv: &F,
        r0: usize,
        rows: usize,
        kk: usize,
        kc: usize,
        abuf: &mut [T],
    ) -> (isize, isize) {
        let (rs, cs) = (self.row_stride(), self.col_stride());
        let data = self.data();
        if cs == 1 {
            // Row-major source.
            for (i, drow) in abuf.chunks_exact_mut(kc).take(rows).enumerate() {
                let src = &data[(r0 + i) * rs + kk..][..kc];
                for (d, &c) in drow.iter_mut().zip(src) {
                    *d = T::of(conv(c));
                }
            }
            (1, kc as isize)
        } else if rs == 1 {
            // Column-major source (a transposed row-major matrix).
            for (p, dcol) in abuf.chunks_exact_mut(rows).take(kc).enumerate() {
                let src = &data[(kk + p) * cs + r0..][..rows];
                for (d, &c) in dcol.iter_mut().zip(src) {
                    *d = T::of(conv(c));
                }
            }
            (rows as isize, 1)
        } else {
            for i in 0..rows {
                for p in 0..kc {
                    abuf[i * kc + p] = T::of(conv(self.get(r0 + i, kk + p)));
                }
            }
            (1, kc as isize)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pack<C: Conv>(
        &self,
        r0: usize,
        rows: usize,
        kk: usize,
        kc: usize,
        buf: &mut [i32],
    ) -> APack {
        let (rs, cs) = (self.row_stride(), self.col_stride());
        let data = self.data();
        let kp = kc.div_ceil(2);
        if cs == 1 && C::SPLIT && kc % 2 == 0 {
            // INT16 row-major codes are their own pairs: read in place.
            return APack {
                ptr: data[r0 * rs + kk..].as_ptr(),
                ars: rs,
                aps: 2,
            };
        }
        if rs == 1 && cs != 1 {
            // K-major source (a transposed row-major matrix): each K index is a contiguous run of
            // rows, so pairs are formed from two runs, pair-major.
            for (p, dst) in buf[..rows * kp].chunks_exact_mut(rows).enumerate() {
                let k0 = kk + 2 * p;
                let even = &data[k0 * cs + r0..][..rows];
                let odd = (2 * p + 1 < kc).then(|| &data[(k0 + 1) * cs + r0..][..rows]);
                pack_kpair::<C>(even, odd, dst);
            }
            return APack {
                ptr: as_i16(buf).as_ptr(),
                ars: 2,
                aps: 2 * rows,
            };
        }
        let buf = as_i16(buf);
        let mut row = [0i16; 2 * KPACK_MAX];
        for i in 0..rows {
            let src: &[i16] = if cs == 1 {
                &data[(r0 + i) * rs + kk..][..kc]
            } else {
                for (p, d) in row[..kc].iter_mut().enumerate() {
                    *d = self.get(r0 + i, kk + p);
                }
                &row[..kc]
            };
            pack_row::<C>(src, &mut buf[i * 2 * kp..][..2 * kp]);
        }
        APack {
            ptr: buf.as_ptr(),
            ars: 2 * kp,
            aps: 2,
        }
    }
}

/// Most K pairs [`Lhs::pack`] is asked for at once.
#[cfg(target_arch = "x86_64")]
const KPACK_MAX: usize = intgemm::PACK_PAIRS_MAX;

/// A row-major fp32 matrix quantized on the fly with a per-tensor exponent, exactly as
/// `e2t_numerics::quantize_into` (or `quantize_into_8bit`) would: the codes never touch memory.
#[derive(Clone, Copy)]
pub(crate) struct F32Lhs<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub exp: i32,
    pub eight: bool,
}

impl Lhs for F32Lhs<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    #[inline(always)]
    fn fill<T: Flt, F: Fn(i16) -> i32>(
        &self,
        conv: &F,
        r0: usize,
        rows: usize,
        kk: usize,
        kc: usize,
        abuf: &mut [T],
    ) -> (isize, isize) {
        const PIECE: usize = 256;
        let mut codes = [0i16; PIECE];
        for (i, drow) in abuf.chunks_exact_mut(kc).take(rows).enumerate() {
            let src = &self.data[(r0 + i) * self.cols + kk..][..kc];
            for (dp, sp) in drow.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
                let q = &mut codes[..sp.len()];
                if self.eight {
                    e2t_numerics::quantize_into_8bit(sp, self.exp, q);
                } else {
                    e2t_numerics::quantize_into(sp, self.exp, q);
                }
                for (d, &c) in dp.iter_mut().zip(q.iter()) {
                    *d = T::of(conv(c));
                }
            }
        }
        (1, kc as isize)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pack<C: Conv>(
        &self,
        r0: usize,
        rows: usize,
        kk: usize,
        kc: usize,
        buf: &mut [i32],
    ) -> APack {
        let kp = kc.div_ceil(2);
        let buf = as_i16(buf);
        for i in 0..rows {
            let src = &self.data[(r0 + i) * self.cols + kk..][..kc];
            let dst = &mut buf[i * 2 * kp..][..2 * kp];
            // Quantized straight into the pack buffer, then converted in place (INT8 modes).
            if self.eight {
                e2t_numerics::quantize_into_8bit(src, self.exp, &mut dst[..kc]);
            } else {
                e2t_numerics::quantize_into(src, self.exp, &mut dst[..kc]);
            }
            if !C::SPLIT {
                for v in dst[..kc].iter_mut() {
                    *v = C::a(*v);
                }
            }
            if kc % 2 == 1 {
                dst[kc] = 0;
            }
        }
        APack {
            ptr: buf.as_ptr(),
            ars: 2 * kp,
            aps: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use e2t_core::Mode;
    use e2t_numerics::gemm_ref;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn check(m: usize, k: usize, n: usize, seed: u64, extreme: bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let gen_codes = |rng: &mut ChaCha8Rng, len: usize| -> Vec<i16> {
            (0..len)
                .map(|_| {
                    if extreme {
                        if rng.random::<bool>() { -32768 } else { 32767 }
                    } else {
                        rng.random()
                    }
                })
                .collect()
        };
        let a = gen_codes(&mut rng, m * k);
        let b = gen_codes(&mut rng, k * n);
        let am = CodeMatrix::row_major(&a, m, k).unwrap();
        let bm = CodeMatrix::row_major(&b, k, n).unwrap();
        for (op, mode) in [
            (Operand::Full, Mode::Int16),
            (Operand::HighFloor, Mode::Int8),
        ] {
            let mut out = vec![0; m * n];
            gemm_exact(am, bm, op, &mut out);
            assert_eq!(
                out,
                gemm_ref(&a, &b, m, k, n, mode).unwrap(),
                "{m}x{k}x{n} {op:?} seed {seed}"
            );
            // Transposed storage of A gives the same result.
            let at: Vec<i16> = am.t().to_row_major();
            let atm = CodeMatrix::row_major(&at, k, m).unwrap().t();
            let mut out2 = vec![0; m * n];
            gemm_exact(atm, bm, op, &mut out2);
            assert_eq!(out, out2);
        }
    }

    #[test]
    fn exact_on_small_and_chunked_shapes() {
        check(1, 1, 1, 1, false);
        check(17, 3, 5, 2, false);
        check(33, 1023, 2, 3, false);
        check(5, 1025, 3, 4, true);
        check(40, 2049, 7, 5, true);
        check(3, 4000, 3, 6, false); // few rows: K is split across tasks
    }
}
