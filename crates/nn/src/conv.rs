//! 2-D convolution as im2col + GEMM in NHWC layout.
//!
//! The patch matrix has one row per output position (`N·Ho·Wo`, the big dimension on the GEMM's M
//! side) and `kh·kw·Cin` columns ordered `(ky, kx, ci)`; the weight is `[kh·kw·Cin, Cout]`. So the
//! GEMM output `[N·Ho·Wo, Cout]` already is the NHWC output tensor, and in NHWC each kernel row's
//! `kw·Cin` inputs are contiguous, so im2col copies whole spans.
//!
//! Forward caches only the input; backward rebuilds the patches in a shared scratch buffer (cheap
//! next to the GEMMs, and it keeps memory to one patch matrix at a time).

use crate::gemm::{Fp32Gemm, GemmEngine, gemm_serial};
use crate::param::{Module, Param, TensorKind, TensorRef};
use crate::scratch::{add_into, with_scratch};
use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayViewMut2, Axis};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Geometry of a convolution, independent of its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub in_ch: usize,
    pub out_ch: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kh) / self.stride + 1,
            (w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }
    /// Patch width `kh·kw·Cin`.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.in_ch
    }
    /// A 1x1, stride-1, unpadded conv needs no im2col: the input already is the patch matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Calls `f::<S>` with the kernel-row span `S = kw·Cin` as a compile-time constant for the 3x3
/// convolutions of a CIFAR ResNet (16/32/64 channels), `f::<0>` (runtime span) otherwise: the span
/// copies and adds are then a few inlined vector moves instead of a `memcpy` call per span, which
/// is most of im2col's cost at these sizes. Same operations in the same order either way.
macro_rules! with_span {
    ($span:expr, $f:ident ( $($a:expr),* )) => {
        match $span {
            48 => $f::<48>($($a),*),
            96 => $f::<96>($($a),*),
            192 => $f::<192>($($a),*),
            _ => $f::<0>($($a),*),
        }
    };
}

/// `dst = src` for spans of `S` floats (`S = 0`: any length).
#[inline(always)]
fn copy_span<const S: usize>(dst: &mut [f32], src: &[f32]) {
    if S == 0 {
        dst.copy_from_slice(src);
    } else {
        for (d, s) in dst[..S].chunks_exact_mut(8).zip(src[..S].chunks_exact(8)) {
            let s: &[f32; 8] = s.try_into().expect("chunk of 8");
            let d: &mut [f32; 8] = d.try_into().expect("chunk of 8");
            *d = *s;
        }
    }
}

/// `dst += src` for spans of `S` floats (`S = 0`: any length).
#[inline(always)]
fn add_span<const S: usize>(dst: &mut [f32], src: &[f32]) {
    if S == 0 {
        add_into(dst, src);
    } else {
        for (d, s) in dst[..S].iter_mut().zip(&src[..S]) {
            *d += *s;
        }
    }
}

/// Writes the patch rows of one image (`img`: `h x w x Cin`) into `out` (`[ho·wo, k]`).
fn im2col_image(g: &ConvGeom, img: &[f32], h: usize, w: usize, out: &mut [f32]) {
    with_span!(g.kw * g.in_ch, im2col_image_s(g, img, h, w, out))
}

#[inline(always)]
fn im2col_image_s<const S: usize>(g: &ConvGeom, img: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let (_, wo) = g.out_hw(h, w);
    let (c, k) = (g.in_ch, g.k());
    let span = g.kw * c;
    for (r, row) in out.chunks_exact_mut(k).enumerate() {
        let (oy, ox) = (r / wo, r % wo);
        let ix0 = (ox * g.stride) as isize - g.pad as isize;
        for ky in 0..g.kh {
            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
            let dst = &mut row[ky * span..(ky + 1) * span];
            if iy < 0 || iy >= h as isize {
                dst.fill(0.0);
                continue;
            }
            let base = iy as usize * w;
            if ix0 >= 0 && ix0 as usize + g.kw <= w {
                let s = (base + ix0 as usize) * c;
                copy_span::<S>(dst, &img[s..s + span]);
            } else {
                for kx in 0..g.kw {
                    let ix = ix0 + kx as isize;
                    let d = &mut dst[kx * c..(kx + 1) * c];
                    if ix < 0 || ix >= w as isize {
                        d.fill(0.0);
                    } else {
                        let s = (base + ix as usize) * c;
                        d.copy_from_slice(&img[s..s + c]);
                    }
                }
            }
        }
    }
}

/// Adds one image's patch gradients `src` (`[ho·wo, k]`) onto its input gradient `img`.
fn col2im_image(g: &ConvGeom, src: &[f32], h: usize, w: usize, img: &mut [f32]) {
    with_span!(g.kw * g.in_ch, col2im_image_s(g, src, h, w, img))
}

#[inline(always)]
fn col2im_image_s<const S: usize>(g: &ConvGeom, src: &[f32], h: usize, w: usize, img: &mut [f32]) {
    let (_, wo) = g.out_hw(h, w);
    let (c, k) = (g.in_ch, g.k());
    let span = g.kw * c;
    for (r, row) in src.chunks_exact(k).enumerate() {
        let (oy, ox) = (r / wo, r % wo);
        let ix0 = (ox * g.stride) as isize - g.pad as isize;
        for ky in 0..g.kh {
            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let s = &row[ky * span..(ky + 1) * span];
            let base = iy as usize * w;
            if ix0 >= 0 && ix0 as usize + g.kw <= w {
                let d = (base + ix0 as usize) * c;
                add_span::<S>(&mut img[d..d + span], s);
            } else {
                for kx in 0..g.kw {
                    let ix = ix0 + kx as isize;
                    if ix >= 0 && ix < w as isize {
                        let d = (base + ix as usize) * c;
                        add_into(&mut img[d..d + c], &s[kx * c..(kx + 1) * c]);
                    }
                }
            }
        }
    }
}

/// Writes the patch matrix of `x` (NHWC, `n` images of `h x w x Cin`) into `cols` (`[n·ho·wo, k]`),
/// in parallel over images.
fn im2col(g: &ConvGeom, x: &[f32], n: usize, h: usize, w: usize, cols: &mut [f32]) {
    let (ho, wo) = g.out_hw(h, w);
    let img_in = h * w * g.in_ch;
    let per = ho * wo * g.k();
    if per == 0 {
        return;
    }
    cols[..n * per]
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(b, out)| im2col_image(g, &x[b * img_in..(b + 1) * img_in], h, w, out));
}

/// Adds the patch gradients `dcols` back onto the input gradient `dx` (NHWC, zero-initialised).
/// Parallel over images, so no two workers touch the same `dx` entry.
fn col2im(g: &ConvGeom, dcols: &[f32], n: usize, h: usize, w: usize, dx: &mut [f32]) {
    let (ho, wo) = g.out_hw(h, w);
    let img_in = h * w * g.in_ch;
    let per = ho * wo * g.k();
    if img_in == 0 {
        return;
    }
    dx[..n * img_in]
        .par_chunks_mut(img_in)
        .enumerate()
        .for_each(|(b, img)| col2im_image(g, &dcols[b * per..(b + 1) * per], h, w, img));
}

/// Patch rows per fused block, at most (about 0.6-2.3 MB of patches for 3x3 convs of 16-64 input
/// channels). Measured per layer at batch 128 (`examples/profile_step.rs`, one thread): 1024 rows
/// beat 2048 by 20-25% on the 7x7x64 convolutions and were on par elsewhere; 4096 was slower.
const CONV_ROW_BLOCK: usize = 1024;

/// Images per fused block for a batch of `n` images of `rows_per_image` patch rows each.
///
/// At most about [`CONV_ROW_BLOCK`] patch rows, and among those sizes the one whose blocks split
/// most evenly over two workers: e.g. 128 images of 7x7 take 8 blocks of 16, not 6 of 20 and one
/// of 8 (68 images' work on one worker against 60 on the other). The choice depends
/// only on the shapes (never on the thread count), so results stay bit-identical for any number
/// of threads.
fn images_per_block(n: usize, rows_per_image: usize) -> usize {
    let max_ipb = (CONV_ROW_BLOCK / rows_per_image.max(1)).max(1);
    if n <= 1 {
        return max_ipb;
    }
    // Makespan on two workers in units of one image, taking a whole block at a time.
    let makespan = |ipb: usize| {
        let full = n / ipb;
        let rest = n % ipb;
        let blocks: Vec<usize> = std::iter::repeat_n(ipb, full)
            .chain((rest > 0).then_some(rest))
            .collect();
        let (mut a, mut b) = (0usize, 0usize);
        for s in blocks {
            if a <= b { a += s } else { b += s }
        }
        a.max(b)
    };
    // Largest block size that is within 2% of the best makespan (fewer, larger blocks amortise
    // the per-call weight packing).
    let best = (1..=max_ipb).map(makespan).min().unwrap_or(1);
    (1..=max_ipb)
        .rev()
        .find(|&ipb| makespan(ipb) * 50 <= best * 51)
        .unwrap_or(1)
}

/// Forward of the fp32 fast path: per block of whole images, im2col into this thread's scratch
/// (cache-sized) and one single-threaded GEMM into the block's output rows; blocks run in parallel.
fn fused_forward(
    f: &Fp32Gemm,
    g: &ConvGeom,
    xs: &[f32],
    (n, h, w): (usize, usize, usize),
    wt: ArrayView2<'_, f32>,
    mut y: ArrayViewMut2<'_, f32>,
) {
    let (ho, wo) = g.out_hw(h, w);
    let (k, px, img_in) = (g.k(), ho * wo, h * w * g.in_ch);
    if n == 0 || px == 0 {
        return;
    }
    let ipb = images_per_block(n, px);
    let run = |(bi, yb): (usize, ArrayViewMut2<'_, f32>)| {
        let nb = yb.dim().0 / px;
        with_scratch(nb * px * k, |cols| {
            for i in 0..nb {
                let b = bi * ipb + i;
                im2col_image(
                    g,
                    &xs[b * img_in..(b + 1) * img_in],
                    h,
                    w,
                    &mut cols[i * px * k..(i + 1) * px * k],
                );
            }
            gemm_serial(
                ArrayView2::from_shape((nb * px, k), &*cols).expect("patch shape"),
                wt,
                yb,
            );
        });
    };
    let blocks: Vec<_> = y
        .axis_chunks_iter_mut(Axis(0), ipb * px)
        .enumerate()
        .collect();
    if f.threads() == 1 {
        blocks.into_iter().for_each(run);
    } else {
        blocks.into_par_iter().for_each(run);
    }
}

/// Backward of the fp32 fast path: per block of whole images, rebuild the patches in scratch, a
/// partial weight gradient `colsᵀ·dy`, and (if wanted) `dy·wᵀ` scattered straight into the block's
/// own images of `dx` (so blocks never write the same entry). The partial weight gradients are
/// summed in block order into `dw`, independent of the thread count.
#[allow(clippy::too_many_arguments)]
fn fused_backward(
    f: &Fp32Gemm,
    g: &ConvGeom,
    xs: &[f32],
    (n, h, w): (usize, usize, usize),
    wt: ArrayView2<'_, f32>,
    dy: ArrayView2<'_, f32>,
    dw: &mut Array2<f32>,
    want_dx: bool,
) -> Option<Array4<f32>> {
    let (ho, wo) = g.out_hw(h, w);
    let (k, px, img_in, cout) = (g.k(), ho * wo, h * w * g.in_ch, g.out_ch);
    dw.fill(0.0);
    if n == 0 || px == 0 {
        return want_dx.then(|| Array4::<f32>::zeros((n, h, w, g.in_ch)));
    }
    // Each block zeroes its own images of `dx` right before adding into them (in cache, in
    // parallel) instead of a zero fill of the whole tensor up front.
    let mut dx = want_dx.then(|| Array4::<f32>::uninit((n, h, w, g.in_ch)));
    let ipb = images_per_block(n, px);
    let run = |bi: usize, dxb: Option<&mut [f32]>| -> Array2<f32> {
        let b0 = bi * ipb;
        let nb = ipb.min(n - b0);
        let dyb = dy.slice(ndarray::s![b0 * px..(b0 + nb) * px, ..]);
        let mut part = Array2::<f32>::zeros((k, cout));
        with_scratch(nb * px * k, |cols| {
            for i in 0..nb {
                let b = b0 + i;
                im2col_image(
                    g,
                    &xs[b * img_in..(b + 1) * img_in],
                    h,
                    w,
                    &mut cols[i * px * k..(i + 1) * px * k],
                );
            }
            let cv = ArrayView2::from_shape((nb * px, k), &*cols).expect("patch shape");
            gemm_serial(cv.t(), dyb, part.view_mut());
            if let Some(dxb) = dxb {
                // The block's patches are no longer needed: reuse the buffer for their gradient.
                gemm_serial(
                    dyb,
                    wt.t(),
                    ArrayViewMut2::from_shape((nb * px, k), &mut *cols).expect("patch shape"),
                );
                for i in 0..nb {
                    col2im_image(
                        g,
                        &cols[i * px * k..(i + 1) * px * k],
                        h,
                        w,
                        &mut dxb[i * img_in..(i + 1) * img_in],
                    );
                }
            }
        });
        part
    };
    let nblocks = n.div_ceil(ipb);
    let serial = f.threads() == 1;
    let zeroed = |c: &mut [MaybeUninit<f32>]| -> &mut [f32] {
        c.fill(MaybeUninit::new(0.0));
        // SAFETY: every element was just initialised, and `MaybeUninit<f32>` has `f32`'s layout.
        unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) }
    };
    let parts: Vec<Array2<f32>> = match dx.as_mut() {
        Some(dx) => {
            let d = dx.as_slice_mut().expect("fresh array");
            if serial {
                d.chunks_mut(ipb * img_in.max(1))
                    .enumerate()
                    .map(|(bi, c)| run(bi, Some(zeroed(c))))
                    .collect()
            } else {
                d.par_chunks_mut(ipb * img_in.max(1))
                    .enumerate()
                    .map(|(bi, c)| run(bi, Some(zeroed(c))))
                    .collect()
            }
        }
        None if serial => (0..nblocks).map(|bi| run(bi, None)).collect(),
        None => (0..nblocks)
            .into_par_iter()
            .map(|bi| run(bi, None))
            .collect(),
    };
    for p in parts {
        add_into(
            dw.as_slice_mut().expect("contiguous"),
            p.as_slice().expect("contiguous"),
        );
    }
    // SAFETY: the chunks above cover all of `dx` and each was zeroed before use.
    dx.map(|d| unsafe { d.assume_init() })
}

/// Views a standard-layout NHWC tensor as the `[N·H·W, C]` matrix it is in memory.
pub(crate) fn as_rows(a: &Array4<f32>) -> ArrayView2<'_, f32> {
    let (n, h, w, c) = a.dim();
    ArrayView2::from_shape(
        (n * h * w, c),
        a.as_slice().expect("activations are standard-layout NHWC"),
    )
    .expect("row view matches the tensor size")
}

pub(crate) fn as_rows_mut(a: &mut Array4<f32>) -> ArrayViewMut2<'_, f32> {
    let (n, h, w, c) = a.dim();
    ArrayViewMut2::from_shape(
        (n * h * w, c),
        a.as_slice_mut()
            .expect("activations are standard-layout NHWC"),
    )
    .expect("row view matches the tensor size")
}

/// Returns `a` itself if it is standard layout, else a standard-layout copy.
pub(crate) fn standard(a: &Array4<f32>) -> std::borrow::Cow<'_, Array4<f32>> {
    if a.is_standard_layout() {
        std::borrow::Cow::Borrowed(a)
    } else {
        std::borrow::Cow::Owned(a.as_standard_layout().into_owned())
    }
}

/// Convolution layer. Weight `[kh·kw·Cin, Cout]`, optional bias `[Cout]`.
pub struct Conv2d {
    /// Stable layer name, used as the GEMM layer id and as the parameter-name prefix.
    pub name: String,
    pub geom: ConvGeom,
    pub weight: Array2<f32>,
    pub bias: Option<Array1<f32>>,
    pub grad_weight: Array2<f32>,
    pub grad_bias: Option<Array1<f32>>,
    /// Input of the last training-mode forward (needed to rebuild the patches in backward).
    cached_x: Option<Array4<f32>>,
    dw: Array2<f32>,
}

impl Conv2d {
    /// A zero-initialised convolution (call [`Conv2d::init_kaiming`] or set `weight`).
    pub fn new(name: impl Into<String>, geom: ConvGeom, bias: bool) -> Self {
        let k = geom.k();
        Conv2d {
            name: name.into(),
            geom,
            weight: Array2::zeros((k, geom.out_ch)),
            bias: bias.then(|| Array1::zeros(geom.out_ch)),
            grad_weight: Array2::zeros((k, geom.out_ch)),
            grad_bias: bias.then(|| Array1::zeros(geom.out_ch)),
            cached_x: None,
            dw: Array2::zeros((k, geom.out_ch)),
        }
    }

    /// Kaiming-normal with fan-out (`std = sqrt(2 / (Cout·kh·kw))`, as torchvision's ResNet); bias 0.
    pub fn init_kaiming<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let fan_out = (self.geom.out_ch * self.geom.kh * self.geom.kw) as f32;
        let normal = Normal::new(0.0f32, (2.0 / fan_out).sqrt()).expect("finite std");
        self.weight.iter_mut().for_each(|v| *v = normal.sample(rng));
        if let Some(b) = &mut self.bias {
            b.fill(0.0);
        }
    }

    /// `x` is NHWC `[N, H, W, Cin]`; returns `[N, Ho, Wo, Cout]`. In training mode a copy of the
    /// input is kept for `backward` (see [`Conv2d::forward_owned`] to hand it over instead).
    pub fn forward(
        &mut self,
        x: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        let x = standard(x);
        let y = self.compute(&x, gemm);
        if train {
            match &mut self.cached_x {
                Some(cx) if cx.dim() == x.dim() => cx.assign(&*x),
                slot => *slot = Some(x.into_owned()),
            }
        }
        y
    }

    /// Like [`Conv2d::forward`], but takes the input by value: in training mode it becomes the
    /// cached input as it is (no copy), readable through [`Conv2d::cached_input`].
    pub fn forward_owned(
        &mut self,
        x: Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        let x = if x.is_standard_layout() {
            x
        } else {
            x.as_standard_layout().into_owned()
        };
        let y = self.compute(&x, gemm);
        if train {
            self.cached_x = Some(x);
        }
        y
    }

    /// The input of the last training-mode forward.
    pub fn cached_input(&self) -> Option<&Array4<f32>> {
        self.cached_x.as_ref()
    }

    /// The convolution of a standard-layout input.
    fn compute(&self, x: &Array4<f32>, gemm: &mut dyn GemmEngine) -> Array4<f32> {
        let g = self.geom;
        let (n, h, w, c) = x.dim();
        assert_eq!(
            c, g.in_ch,
            "{}: input has {c} channels, expected {}",
            self.name, g.in_ch
        );
        let (ho, wo) = g.out_hw(h, w);
        let m = n * ho * wo;
        let dim = (n, ho, wo, g.out_ch);
        let xs = x.as_slice().expect("standard layout");
        let mut y = if let Some(f) = gemm.as_fp32() {
            // The fp32 GEMMs overwrite every output entry without reading it (`read_dst = false`),
            // so the output skips the zero fill.
            let mut y = Array4::<f32>::uninit(dim);
            // SAFETY: the view covers exactly `y`'s `m x Cout` standard-layout elements; it is only
            // written through raw pointers by `gemm`, which never reads the destination, and the
            // fused path's row blocks together cover all `m` rows.
            let yv = unsafe {
                ArrayViewMut2::from_shape_ptr((m, g.out_ch), y.as_mut_ptr().cast::<f32>())
            };
            if g.pointwise() {
                f.matmul(as_rows(x), self.weight.view(), yv);
            } else {
                fused_forward(f, &g, xs, (n, h, w), self.weight.view(), yv);
            }
            // SAFETY: fully written above.
            unsafe { y.assume_init() }
        } else {
            let mut y = Array4::<f32>::zeros(dim);
            let yv = as_rows_mut(&mut y);
            if g.pointwise() {
                gemm.forward(&self.name, as_rows(x), self.weight.view(), yv);
            } else {
                with_scratch(m * g.k(), |cols| {
                    im2col(&g, xs, n, h, w, cols);
                    let cv = ArrayView2::from_shape((m, g.k()), &*cols).expect("patch shape");
                    gemm.forward(&self.name, cv, self.weight.view(), yv);
                });
            }
            y
        };
        if let Some(b) = &self.bias {
            let bs = b.as_slice().expect("bias is contiguous");
            y.as_slice_mut()
                .expect("fresh array")
                .par_chunks_mut(g.out_ch.max(1) * 256)
                .for_each(|ch| {
                    for row in ch.chunks_exact_mut(g.out_ch) {
                        add_into(row, bs);
                    }
                });
        }
        y
    }

    /// Accumulates the weight (and bias) gradient and returns the input gradient.
    /// Panics if no training-mode forward preceded it (a programming error).
    pub fn backward(&mut self, dy: &Array4<f32>, gemm: &mut dyn GemmEngine) -> Array4<f32> {
        self.backward_impl(dy, gemm, true)
            .expect("input gradient requested")
    }

    /// Like [`Conv2d::backward`] but skips the input gradient (for the first layer of a network).
    pub fn backward_params_only(&mut self, dy: &Array4<f32>, gemm: &mut dyn GemmEngine) {
        self.backward_impl(dy, gemm, false);
    }

    fn backward_impl(
        &mut self,
        dy: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        want_dx: bool,
    ) -> Option<Array4<f32>> {
        let g = self.geom;
        let x = self
            .cached_x
            .as_ref()
            .unwrap_or_else(|| panic!("{}: backward without a training forward", self.name));
        let (n, h, w, _) = x.dim();
        let (ho, wo) = g.out_hw(h, w);
        assert_eq!(
            dy.dim(),
            (n, ho, wo, g.out_ch),
            "{}: output gradient shape",
            self.name
        );
        let dy = standard(dy);
        let dyv = as_rows(&dy);
        let m = n * ho * wo;
        let k = g.k();
        if let Some(gb) = &mut self.grad_bias {
            let sums = dyv.sum_axis(Axis(0));
            *gb += &sums;
        }
        let name = self.name.as_str();
        let dx = if let (false, Some(f)) = (g.pointwise(), gemm.as_fp32()) {
            let xs = x.as_slice().expect("standard layout");
            fused_backward(
                f,
                &g,
                xs,
                (n, h, w),
                self.weight.view(),
                dyv,
                &mut self.dw,
                want_dx,
            )
        } else if g.pointwise() {
            gemm.backward_weight(name, as_rows(x), dyv, self.dw.view_mut());
            want_dx.then(|| {
                let mut dx = Array4::<f32>::zeros((n, h, w, g.in_ch));
                gemm.backward_data(name, dyv, self.weight.view(), as_rows_mut(&mut dx));
                dx
            })
        } else {
            let xs = x.as_slice().expect("standard layout");
            let (weight, dw) = (&self.weight, &mut self.dw);
            with_scratch(m * k, |cols| {
                im2col(&g, xs, n, h, w, cols);
                gemm.backward_weight(
                    name,
                    ArrayView2::from_shape((m, k), &*cols).expect("patch shape"),
                    dyv,
                    dw.view_mut(),
                );
                want_dx.then(|| {
                    // The patches are no longer needed: reuse the buffer for their gradient.
                    gemm.backward_data(
                        name,
                        dyv,
                        weight.view(),
                        ArrayViewMut2::from_shape((m, k), &mut *cols).expect("patch shape"),
                    );
                    let mut dx = Array4::<f32>::zeros((n, h, w, g.in_ch));
                    col2im(&g, cols, n, h, w, dx.as_slice_mut().expect("fresh array"));
                    dx
                })
            })
        };
        add_into(
            self.grad_weight.as_slice_mut().expect("contiguous"),
            self.dw.as_slice().expect("contiguous"),
        );
        dx
    }
}

impl Module for Conv2d {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        out.push(TensorRef {
            name: format!("{}.weight", self.name),
            kind: TensorKind::Param,
            value: self.weight.as_slice().expect("contiguous"),
        });
        if let Some(b) = &self.bias {
            out.push(TensorRef {
                name: format!("{}.bias", self.name),
                kind: TensorKind::Param,
                value: b.as_slice().expect("contiguous"),
            });
        }
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        out.push(Param {
            name: format!("{}.weight", self.name),
            shape: vec![self.geom.k(), self.geom.out_ch],
            value: self.weight.as_slice_mut().expect("contiguous"),
            grad: self.grad_weight.as_slice_mut().expect("contiguous"),
        });
        if let (Some(b), Some(gb)) = (&mut self.bias, &mut self.grad_bias) {
            out.push(Param {
                name: format!("{}.bias", self.name),
                shape: vec![self.geom.out_ch],
                value: b.as_slice_mut().expect("contiguous"),
                grad: gb.as_slice_mut().expect("contiguous"),
            });
        }
    }
}

#[cfg(test)]
mod block_tests {
    use super::*;

    #[test]
    fn image_blocks_cover_the_batch_and_balance_two_workers() {
        for n in 0..300 {
            for px in [1, 9, 49, 196, 784, 5000] {
                let ipb = images_per_block(n, px);
                assert!(ipb >= 1);
                assert!(
                    ipb * px <= CONV_ROW_BLOCK || ipb == 1,
                    "n {n} px {px}: {ipb}"
                );
            }
        }
        // ResNet stages at batch 128: 28x28, 14x14, 7x7 outputs.
        assert_eq!(images_per_block(128, 784), 1);
        assert_eq!(images_per_block(128, 196), 5);
        assert_eq!(images_per_block(128, 49), 16);
    }
}
