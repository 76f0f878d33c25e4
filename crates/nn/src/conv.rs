//! 2-D convolution as im2col + GEMM in NHWC layout.
//!
//! The patch matrix has one row per output position (`N·Ho·Wo`, the big dimension on the GEMM's M
//! side) and `kh·kw·Cin` columns ordered `(ky, kx, ci)`; the weight is `[kh·kw·Cin, Cout]`. So the
//! GEMM output `[N·Ho·Wo, Cout]` already is the NHWC output tensor, and in NHWC each kernel row's
//! `kw·Cin` inputs are contiguous, so im2col copies whole spans.
//!
//! Forward caches only the input; backward rebuilds the patches in a shared scratch buffer (cheap
//! next to the GEMMs, and it keeps memory to one patch matrix at a time).

use crate::gemm::{Fp32Gemm, GemmEngine, ROW_BLOCK, gemm_serial};
use crate::param::{Module, Param, TensorKind, TensorRef};
use crate::scratch::{add_into, with_scratch};
use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayViewMut2, Axis};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

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

/// Writes the patch rows of one image (`img`: `h x w x Cin`) into `out` (`[ho·wo, k]`).
fn im2col_image(g: &ConvGeom, img: &[f32], h: usize, w: usize, out: &mut [f32]) {
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
                dst.copy_from_slice(&img[s..s + span]);
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
                add_into(&mut img[d..d + span], s);
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

/// Images per fused block: about [`ROW_BLOCK`] patch rows, at least one image.
/// (Measured on ResNet-8: blocks of ~1-2 MB of patches are as fast as any; 4-8 MB ones are slower.)
fn images_per_block(rows_per_image: usize) -> usize {
    (ROW_BLOCK / rows_per_image.max(1)).max(1)
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
    let ipb = images_per_block(px);
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
    let mut dx = want_dx.then(|| Array4::<f32>::zeros((n, h, w, g.in_ch)));
    dw.fill(0.0);
    if n == 0 || px == 0 {
        return dx;
    }
    let ipb = images_per_block(px);
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
    let parts: Vec<Array2<f32>> = match dx.as_mut() {
        Some(dx) => {
            let d = dx.as_slice_mut().expect("fresh array");
            if serial {
                d.chunks_mut(ipb * img_in)
                    .enumerate()
                    .map(|(bi, c)| run(bi, Some(c)))
                    .collect()
            } else {
                d.par_chunks_mut(ipb * img_in)
                    .enumerate()
                    .map(|(bi, c)| run(bi, Some(c)))
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
        *dw += &p;
    }
    dx
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

    /// `x` is NHWC `[N, H, W, Cin]`; returns `[N, Ho, Wo, Cout]`. In training mode the input is kept
    /// for `backward`.
    pub fn forward(
        &mut self,
        x: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        let g = self.geom;
        let (n, h, w, c) = x.dim();
        assert_eq!(
            c, g.in_ch,
            "{}: input has {c} channels, expected {}",
            self.name, g.in_ch
        );
        let x = standard(x);
        let (ho, wo) = g.out_hw(h, w);
        let m = n * ho * wo;
        let mut y = Array4::<f32>::zeros((n, ho, wo, g.out_ch));
        {
            let yv = as_rows_mut(&mut y);
            if g.pointwise() {
                gemm.forward(&self.name, as_rows(&x), self.weight.view(), yv);
            } else if let Some(f) = gemm.as_fp32() {
                let xs = x.as_slice().expect("standard layout");
                fused_forward(f, &g, xs, (n, h, w), self.weight.view(), yv);
            } else {
                let xs = x.as_slice().expect("standard layout");
                with_scratch(m * g.k(), |cols| {
                    im2col(&g, xs, n, h, w, cols);
                    let cv = ArrayView2::from_shape((m, g.k()), &*cols).expect("patch shape");
                    gemm.forward(&self.name, cv, self.weight.view(), yv);
                });
            }
        }
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
        if train {
            match &mut self.cached_x {
                Some(cx) if cx.dim() == x.dim() => cx.assign(&*x),
                slot => *slot = Some(x.into_owned()),
            }
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
