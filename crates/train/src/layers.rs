//! Layers with explicit forward/backward on NHWC activations (`Array4<f32>` `[N, H, W, C]`, standard
//! layout), whose GEMMs go through a [`Backend`].
//!
//! NHWC makes a convolution's im2col GEMM output `[N·H·W, Cout]` the next activation without a
//! transpose, and a sub-batch (SLU's executed samples) is a plain row selection.

use crate::backend::Backend;
use e2t_accel::{ConvCodes, Im2colGeom};
use e2t_core::Mode;
use ndarray::{Array, Array1, Array2, Array4, ArrayView2, Axis, Dimension, s};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Recycled float buffers of this thread (see [`take_buf`]).
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}
/// Most buffers a thread keeps for reuse (a step's large temporaries: patch gradients, BN caches,
/// layer outputs); more are freed.
const POOL_MAX: usize = 16;
/// Elements per parallel chunk of the element-wise loops (fixed: results never depend on it, but
/// fixed chunks keep the rayon split cheap and predictable).
const EW_CHUNK: usize = 1 << 15;

/// A buffer of exactly `len` floats whose contents are unspecified (but initialized): the
/// smallest recycled buffer that is long enough, else a fresh one. For outputs that are written
/// in full before they are read: reusing saves the allocator's zeroing (a `calloc` of reused heap
/// memory is a memset) of the multi-megabyte tensors every layer makes every step.
pub(crate) fn take_buf(len: usize) -> Vec<f32> {
    let found = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let best = p
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| p.swap_remove(i))
    });
    match found {
        Some(mut v) => {
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, 0.0);
            }
            v
        }
        None => vec![0.0; len],
    }
}

/// Hands a buffer back for [`take_buf`] (the smallest is freed when the pool is full).
pub(crate) fn give_buf(v: Vec<f32>) {
    if v.capacity() == 0 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.push(v);
        if p.len() > POOL_MAX
            && let Some(i) = p
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
        {
            p.swap_remove(i);
        }
    });
}

/// [`give_buf`] for an array's storage.
pub(crate) fn give_array<D: Dimension>(a: Array<f32, D>) {
    give_buf(a.into_raw_vec_and_offset().0);
}

/// An array of `dims` from [`take_buf`] (contents unspecified: the caller writes every element).
pub(crate) fn pooled4(dims: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_shape_vec(dims, take_buf(dims.0 * dims.1 * dims.2 * dims.3))
        .expect("buffer length is the product of the dims")
}

/// [`pooled4`] for a matrix.
pub(crate) fn pooled2(dims: (usize, usize)) -> Array2<f32> {
    Array2::from_shape_vec(dims, take_buf(dims.0 * dims.1))
        .expect("buffer length is the product of the dims")
}

/// How a pass runs: set once per forward by the engine.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Training mode: BN batch statistics, caches for backward.
    pub train: bool,
    /// Precision of forward GEMMs (INT8 under PSG).
    pub fwd_mode: Mode,
}

/// A trainable tensor with its gradient and momentum buffer (2-D; vectors are `[1, n]`).
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Array2<f32>,
    pub grad: Array2<f32>,
    pub mom: Array2<f32>,
    /// A convolution weight: under PSG its gradient is the predicted sign.
    pub conv_weight: bool,
    /// False for parameters frozen by `TrainOnly::Last`.
    pub trainable: bool,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Array2<f32>, conv_weight: bool) -> Self {
        let d = value.dim();
        Param {
            name: name.into(),
            value,
            grad: Array2::zeros(d),
            mom: Array2::zeros(d),
            conv_weight,
            trainable: true,
        }
    }
    pub fn zeros(name: impl Into<String>, rows: usize, cols: usize) -> Self {
        Param::new(name, Array2::zeros((rows, cols)), false)
    }
    pub fn filled(name: impl Into<String>, rows: usize, cols: usize, v: f32) -> Self {
        Param::new(name, Array2::from_elem((rows, cols), v), false)
    }
    /// He-normal initialisation for a weight with `fan_in` inputs per output.
    pub fn kaiming(
        name: impl Into<String>,
        rows: usize,
        cols: usize,
        fan_in: usize,
        conv: bool,
        rng: &mut impl Rng,
    ) -> Self {
        let std = (2.0 / fan_in.max(1) as f32).sqrt();
        let normal = Normal::new(0.0f32, std).expect("std is finite and positive");
        let v = Array2::from_shape_simple_fn((rows, cols), || normal.sample(rng));
        Param::new(name, v, conv)
    }
    pub fn uniform(
        name: impl Into<String>,
        rows: usize,
        cols: usize,
        bound: f32,
        rng: &mut impl Rng,
    ) -> Self {
        let v = Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-bound..=bound));
        Param::new(name, v, false)
    }
    pub fn zero_grad(&mut self) {
        self.grad.fill(0.0);
    }
    /// The reference optimizer (PyTorch SGD, dampening 0): `buf = m·buf + (g + wd·w); w -= lr·buf`.
    /// Under PSG `g` is already the sign, so this is momentum on signs (not Signum).
    pub fn sgd_step(&mut self, lr: f32, momentum: f32, wd: f32) {
        ndarray::Zip::from(&mut self.value)
            .and(&self.grad)
            .and(&mut self.mom)
            .for_each(|w, &g, b| {
                *b = momentum * *b + (g + wd * *w);
                *w -= lr * *b;
            });
    }
}

/// `[N·H·W, C]` view of an NHWC tensor.
pub fn rows(x: &Array4<f32>) -> ArrayView2<'_, f32> {
    let (n, h, w, c) = x.dim();
    x.view()
        .into_shape_with_order((n * h * w, c))
        .expect("activations are kept in standard layout")
}

pub fn from_rows(m: Array2<f32>, n: usize, h: usize, w: usize) -> Array4<f32> {
    let c = m.ncols();
    let m = if m.is_standard_layout() {
        m
    } else {
        m.as_standard_layout().into_owned()
    };
    m.into_shape_with_order((n, h, w, c))
        .expect("row count matches N·H·W")
}

pub fn std_layout(x: Array4<f32>) -> Array4<f32> {
    if x.is_standard_layout() {
        x
    } else {
        x.as_standard_layout().into_owned()
    }
}

pub fn out_size(h: usize, k: usize, stride: usize, pad: usize) -> usize {
    (h + 2 * pad - k) / stride + 1
}

/// im2col on NHWC: row = output position, column = `(ky·k + kx)·C + c`.
pub fn im2col(x: &Array4<f32>, k: usize, stride: usize, pad: usize) -> Array2<f32> {
    let (n, h, w, c) = x.dim();
    let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
    let kk = k * k * c;
    let mut cols = Array2::<f32>::zeros((n * ho * wo, kk));
    let xs = x
        .as_slice()
        .expect("activations are kept in standard layout");
    let per = ho * wo * kk;
    if per == 0 {
        return cols;
    }
    cols.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(b, chunk)| {
            let xb = &xs[b * h * w * c..(b + 1) * h * w * c];
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &mut chunk[(oy * wo + ox) * kk..(oy * wo + ox + 1) * kk];
                    for ky in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let src = (iy as usize * w + ix as usize) * c;
                            row[(ky * k + kx) * c..(ky * k + kx + 1) * c]
                                .copy_from_slice(&xb[src..src + c]);
                        }
                    }
                }
            }
        });
    cols
}

/// Adjoint of [`im2col`]: scatter-add column gradients back to an NHWC input gradient.
pub fn col2im(
    dcols: &Array2<f32>,
    dims: (usize, usize, usize, usize),
    k: usize,
    stride: usize,
    pad: usize,
) -> Array4<f32> {
    let (_, h, w, c) = dims;
    let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
    let kk = k * k * c;
    let mut dx = pooled4(dims);
    let dcs = dcols
        .as_slice()
        .expect("column gradient in standard layout");
    if h * w * c == 0 {
        return dx;
    }
    let g = Im2colGeom {
        n: dims.0,
        h,
        w,
        c,
        k,
        stride,
        pad,
    };
    dx.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(b, xb)| {
            col2im_rows_into(&g, 0, &dcs[b * ho * wo * kk..(b + 1) * ho * wo * kk], xb)
        });
    dx
}

/// [`col2im`] of pieces of one image's column gradient (so the whole matrix need not exist):
/// adds the rows of output positions `first..` (`rows`, `k·k·c` columns) into the image's NHWC
/// gradient `xb` (geometry `g`; `g.n` is not used), zeroing `xb` first when `first == 0`. Called
/// with consecutive pieces in order, it sums every entry's terms in the same (oy, ox, ky, kx) order
/// as one call with all of them, so the result is the same to the bit.
pub(crate) fn col2im_rows_into(g: &Im2colGeom, first: usize, rows: &[f32], xb: &mut [f32]) {
    let Im2colGeom {
        h,
        w,
        c,
        k,
        stride,
        pad,
        ..
    } = *g;
    let wo = out_size(w, k, stride, pad);
    let kk = k * k * c;
    if first == 0 {
        // Zeroed here, image by image, while the image is about to be summed into anyway.
        xb.fill(0.0);
    }
    if kk == 0 || wo == 0 {
        return;
    }
    for (i, row) in rows.chunks_exact(kk).enumerate() {
        let (oy, ox) = ((first + i) / wo, (first + i) % wo);
        // The kx inside the input are one run `lo..hi` whose pixels are adjacent in NHWC: one
        // add loop per kernel row. Every dx entry still receives its terms in the same
        // (oy, ox, ky, kx) order, so the sums are unchanged.
        let ix0 = (ox * stride) as isize - pad as isize;
        let lo = (-ix0).clamp(0, k as isize) as usize;
        let hi = (w as isize - ix0).clamp(lo as isize, k as isize) as usize;
        if lo == hi {
            continue;
        }
        for ky in 0..k {
            let iy = (oy * stride + ky) as isize - pad as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let dst = (iy as usize * w + (ix0 + lo as isize) as usize) * c;
            add_into(
                &mut xb[dst..dst + (hi - lo) * c],
                &row[(ky * k + lo) * c..(ky * k + hi) * c],
            );
        }
    }
}

/// `dst[i] += src[i]`, in fixed 8-wide pieces (a loop of unknown length is vectorized 32 wide and
/// leaves the usual 16- to 48-float runs to its scalar tail).
#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let d: &mut [f32; 8] = d.try_into().expect("8 floats");
        let s: &[f32; 8] = s.try_into().expect("8 floats");
        for (d, s) in d.iter_mut().zip(s) {
            *d += *s;
        }
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d += *s;
    }
}

/// An NHWC copy of `x` in a recycled buffer.
pub(crate) fn pooled_copy(x: &Array4<f32>) -> Array4<f32> {
    let mut c = pooled4(x.dim());
    match (c.as_slice_mut(), x.as_slice()) {
        (Some(d), Some(s)) => d.copy_from_slice(s),
        _ => c.assign(x),
    }
    c
}

/// What a convolution's training forward keeps for its backward.
#[derive(Clone, Debug)]
struct ConvCache {
    /// The fp32 input, unless the backend's codes stand in for it ([`ConvCodes::is_int16`]).
    x: Option<Array4<f32>>,
    dims: (usize, usize, usize, usize),
    codes: Option<ConvCodes>,
}

/// Convolution without bias (a BN always follows), weight `[k·k·Cin, Cout]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub w: Param,
    cache: Option<ConvCache>,
}

impl Conv2d {
    pub fn new(
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let w = Param::kaiming(
            format!("{name}.weight"),
            k * k * cin,
            cout,
            k * k * cout,
            true,
            rng,
        );
        Conv2d {
            cin,
            cout,
            k,
            stride,
            pad: k / 2,
            w,
            cache: None,
        }
    }
    fn id(&self) -> &str {
        self.w.name.strip_suffix(".weight").unwrap_or(&self.w.name)
    }
    pub fn macs_per_sample(&self, h: usize, w: usize) -> u64 {
        let (ho, wo) = (
            out_size(h, self.k, self.stride, self.pad),
            out_size(w, self.k, self.stride, self.pad),
        );
        (ho * wo * self.k * self.k * self.cin * self.cout) as u64
    }
    pub fn forward(&mut self, be: &mut dyn Backend, x: &Array4<f32>, ctx: Ctx) -> Array4<f32> {
        let (n, h, w, _) = x.dim();
        let (ho, wo) = (
            out_size(h, self.k, self.stride, self.pad),
            out_size(w, self.k, self.stride, self.pad),
        );
        // The backend writes every output (zeros after an error).
        let mut y = pooled2((n * ho * wo, self.cout));
        let id = self.id().to_string();
        let codes = be.conv_forward(
            &id,
            x,
            (self.k, self.stride, self.pad),
            self.w.value.view(),
            y.view_mut(),
            ctx.fwd_mode,
        );
        if ctx.train {
            // INT16 codes are all the weight gradient needs: no fp32 copy of the input then.
            let keep_x = !codes.as_ref().is_some_and(ConvCodes::is_int16);
            self.cache = Some(ConvCache {
                x: keep_x.then(|| pooled_copy(x)),
                dims: x.dim(),
                codes,
            });
        }
        from_rows(y, n, ho, wo)
    }
    /// Accumulates the weight gradient (or PSG signs) when trainable; returns dx when asked.
    pub fn backward(
        &mut self,
        be: &mut dyn Backend,
        dy: &Array4<f32>,
        need_dx: bool,
        psg: bool,
    ) -> Option<Array4<f32>> {
        let ConvCache { x, dims, codes } = self
            .cache
            .take()
            .expect("Conv2d::backward after a training forward");
        let id = self.id().to_string();
        let dy2 = rows(dy);
        if self.w.trainable {
            let mut dw = Array2::<f32>::zeros(self.w.value.dim());
            be.conv_backward_weight(
                &id,
                x.as_ref(),
                dims,
                (self.k, self.stride, self.pad),
                codes,
                dy2,
                dw.view_mut(),
                psg,
            );
            self.w.grad += &dw;
        }
        if let Some(x) = x {
            give_array(x);
        }
        if !need_dx {
            return None;
        }
        Some(be.conv_backward_data(
            &id,
            dy2,
            self.w.value.view(),
            dims,
            (self.k, self.stride, self.pad),
        ))
    }
}

/// im2col columns of the input and the input's dims.
type DwCache = (Array2<f32>, (usize, usize, usize, usize));

/// 3x3 depthwise convolution (one filter per channel), weight `[9, C]`.
///
/// Each channel is its own `[M, 9] x [9, 1]` GEMM through the backend (layer id `name#c`), so the
/// accelerator counts exactly the work a depthwise layer does; PSG treats each channel as a layer.
#[derive(Clone, Debug)]
pub struct DwConv2d {
    pub c: usize,
    pub stride: usize,
    pub w: Param,
    cache: Option<DwCache>,
}

impl DwConv2d {
    pub fn new(name: &str, c: usize, stride: usize, rng: &mut impl Rng) -> Self {
        let w = Param::kaiming(format!("{name}.weight"), 9, c, 9, true, rng);
        DwConv2d {
            c,
            stride,
            w,
            cache: None,
        }
    }
    fn id(&self) -> &str {
        self.w.name.strip_suffix(".weight").unwrap_or(&self.w.name)
    }
    pub fn macs_per_sample(&self, h: usize, w: usize) -> u64 {
        (out_size(h, 3, self.stride, 1) * out_size(w, 3, self.stride, 1) * 9 * self.c) as u64
    }
    /// `[M, 9]` patches of channel `ch` from the all-channel im2col (columns `t·C + ch`).
    fn channel_cols(cols: &Array2<f32>, c: usize, ch: usize) -> Array2<f32> {
        cols.slice(s![.., ch..;c]).to_owned()
    }
    pub fn forward(&mut self, be: &mut dyn Backend, x: &Array4<f32>, ctx: Ctx) -> Array4<f32> {
        let (n, h, w, c) = x.dim();
        let (ho, wo) = (
            out_size(h, 3, self.stride, 1),
            out_size(w, 3, self.stride, 1),
        );
        let cols = im2col(x, 3, self.stride, 1);
        let m = n * ho * wo;
        let mut y = Array2::<f32>::zeros((m, c));
        let mut yc = Array2::<f32>::zeros((m, 1));
        for ch in 0..c {
            let xc = Self::channel_cols(&cols, c, ch);
            let wc = self.w.value.slice(s![.., ch..ch + 1]).to_owned();
            be.forward(
                &format!("{}#{ch}", self.id()),
                xc.view(),
                wc.view(),
                yc.view_mut(),
                ctx.fwd_mode,
            );
            y.column_mut(ch).assign(&yc.column(0));
        }
        if ctx.train {
            self.cache = Some((cols, x.dim()));
        }
        from_rows(y, n, ho, wo)
    }
    pub fn backward(
        &mut self,
        be: &mut dyn Backend,
        dy: &Array4<f32>,
        need_dx: bool,
        psg: bool,
    ) -> Option<Array4<f32>> {
        let (cols, dims) = self
            .cache
            .take()
            .expect("DwConv2d::backward after a training forward");
        let c = self.c;
        let dy2 = rows(dy);
        let m = dy2.nrows();
        let mut dcols = if need_dx {
            Array2::<f32>::zeros((m, 9 * c))
        } else {
            Array2::zeros((0, 0))
        };
        let mut dwc = Array2::<f32>::zeros((9, 1));
        let mut dxc = Array2::<f32>::zeros((m, 9));
        for ch in 0..c {
            let id = format!("{}#{ch}", self.id());
            let dyc = dy2.slice(s![.., ch..ch + 1]).to_owned();
            if self.w.trainable {
                let xc = Self::channel_cols(&cols, c, ch);
                be.backward_weight(&id, xc.view(), dyc.view(), dwc.view_mut(), psg);
                let mut g = self.w.grad.slice_mut(s![.., ch..ch + 1]);
                g += &dwc;
            }
            if need_dx {
                let wc = self.w.value.slice(s![.., ch..ch + 1]).to_owned();
                be.backward_data(&id, dyc.view(), wc.view(), dxc.view_mut());
                dcols.slice_mut(s![.., ch..;c]).assign(&dxc);
            }
        }
        if need_dx {
            Some(col2im(&dcols, dims, 3, self.stride, 1))
        } else {
            None
        }
    }
}

/// Batch normalisation over N·H·W per channel.
///
/// Training uses the statistics of the rows it is given (in an SLU-gated block: the executed samples
/// only); running statistics follow those batch statistics with momentum 0.1 (unbiased variance), so
/// evaluation sees the statistics of samples the gate actually sends through the block.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub name: String,
    pub gamma: Param,
    pub beta: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    /// "Precise BN" re-estimation in progress: how many calibration batches this layer has seen
    /// (each replaces the running statistics by the running mean over the batches so far).
    /// `None` during training: momentum 0.1.
    pub calib_seen: Option<u32>,
    cache: Option<(Array2<f32>, Vec<f32>)>,
}

const BN_EPS: f32 = 1e-5;
const BN_MOMENTUM: f32 = 0.1;
/// Rows per parallel chunk: fixed, so sums are reduced in the same order for any thread count.
const BN_CHUNK_ROWS: usize = 2048;

/// Per-channel `(Σ a, Σ a·b)` over `[rows, c]` row-major data, in f64, chunked deterministically.
fn channel_sums(a: &[f32], b: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    if c == 0 {
        return (Vec::new(), Vec::new());
    }
    let parts: Vec<(Vec<f64>, Vec<f64>)> = a
        .par_chunks(BN_CHUNK_ROWS * c)
        .zip(b.par_chunks(BN_CHUNK_ROWS * c))
        .map(|(ac, bc)| {
            let (mut s, mut p) = (vec![0f64; c], vec![0f64; c]);
            for (ar, br) in ac.chunks_exact(c).zip(bc.chunks_exact(c)) {
                for i in 0..c {
                    s[i] += ar[i] as f64;
                    p[i] += ar[i] as f64 * br[i] as f64;
                }
            }
            (s, p)
        })
        .collect();
    let (mut s, mut p) = (vec![0f64; c], vec![0f64; c]);
    for (ps, pp) in parts {
        for i in 0..c {
            s[i] += ps[i];
            p[i] += pp[i];
        }
    }
    (s, p)
}

impl BatchNorm {
    pub fn new(name: &str, c: usize) -> Self {
        BatchNorm {
            name: name.to_string(),
            gamma: Param::filled(format!("{name}.weight"), 1, c, 1.0),
            beta: Param::zeros(format!("{name}.bias"), 1, c),
            running_mean: vec![0.0; c],
            running_var: vec![1.0; c],
            calib_seen: None,
            cache: None,
        }
    }
    pub fn forward(&mut self, x: Array4<f32>, ctx: Ctx) -> Array4<f32> {
        self.forward_act(x, ctx, |v| v)
    }
    /// `act(BN(x))` in one pass over the output: e.g. BN followed by a [`Clamp`] (whose
    /// [`Clamp::keep_output`] then takes the result), with the same values as the two layers.
    pub fn forward_act(
        &mut self,
        x: Array4<f32>,
        ctx: Ctx,
        act: impl Fn(f32) -> f32 + Sync,
    ) -> Array4<f32> {
        let (n, h, w, c) = x.dim();
        let mut m = std_layout(x)
            .into_shape_with_order((n * h * w, c))
            .expect("standard layout");
        let rows_n = m.nrows();
        let (mean, var) = if ctx.train && rows_n > 0 {
            let xs = m.as_slice().expect("standard layout");
            let (s, s2) = channel_sums(xs, xs, c);
            let nf = rows_n as f64;
            let mean: Vec<f32> = s.iter().map(|v| (v / nf) as f32).collect();
            let var: Vec<f32> = s
                .iter()
                .zip(&s2)
                .map(|(a, b)| ((b / nf) - (a / nf) * (a / nf)).max(0.0) as f32)
                .collect();
            let unbias = if rows_n > 1 { nf / (nf - 1.0) } else { 1.0 };
            // Calibration batch k (0-based) weighs 1/(k+1): after K batches the running statistics
            // are the plain mean of their batch statistics.
            let momentum = match &mut self.calib_seen {
                Some(k) => {
                    *k += 1;
                    1.0 / *k as f32
                }
                None => BN_MOMENTUM,
            };
            for i in 0..c {
                self.running_mean[i] = (1.0 - momentum) * self.running_mean[i] + momentum * mean[i];
                self.running_var[i] = (1.0 - momentum) * self.running_var[i]
                    + momentum * (var[i] as f64 * unbias) as f32;
            }
            (mean, var)
        } else {
            (self.running_mean.clone(), self.running_var.clone())
        };
        let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        let g: Vec<f32> = self.gamma.value.row(0).to_vec();
        let b: Vec<f32> = self.beta.value.row(0).to_vec();
        let ys = m.as_slice_mut().expect("standard layout");
        if c == 0 {
            return m.into_shape_with_order((n, h, w, c)).expect("same size");
        }
        if ctx.train {
            // Every element is written below.
            let mut xhat = take_buf(ys.len());
            xhat.par_chunks_mut(BN_CHUNK_ROWS * c)
                .zip(ys.par_chunks_mut(BN_CHUNK_ROWS * c))
                .for_each(|(xc, yc)| {
                    // Zipped slices of length c (no bounds checks): the loop vectorizes.
                    let (mean, invstd, g, b) = (&mean[..c], &invstd[..c], &g[..c], &b[..c]);
                    for (xr, yr) in xc.chunks_exact_mut(c).zip(yc.chunks_exact_mut(c)) {
                        for (((((x, y), &mu), &is), &g), &b) in xr
                            .iter_mut()
                            .zip(yr.iter_mut())
                            .zip(mean)
                            .zip(invstd)
                            .zip(g)
                            .zip(b)
                        {
                            let xh = (*y - mu) * is;
                            *x = xh;
                            *y = act(g * xh + b);
                        }
                    }
                });
            self.cache = Some((
                Array2::from_shape_vec((rows_n, c), xhat).expect("sized"),
                invstd,
            ));
        } else {
            ys.par_chunks_mut(BN_CHUNK_ROWS * c).for_each(|yc| {
                for yr in yc.chunks_exact_mut(c) {
                    for i in 0..c {
                        yr[i] = act(g[i] * (yr[i] - mean[i]) * invstd[i] + b[i]);
                    }
                }
            });
        }
        m.into_shape_with_order((n, h, w, c)).expect("same size")
    }
    pub fn backward(&mut self, dy: Array4<f32>) -> Array4<f32> {
        let (xhat, invstd) = self
            .cache
            .take()
            .expect("BatchNorm::backward after a training forward");
        let (n, h, w, c) = dy.dim();
        let mut d = std_layout(dy)
            .into_shape_with_order((n * h * w, c))
            .expect("standard layout");
        if c == 0 || d.is_empty() {
            return d.into_shape_with_order((n, h, w, c)).expect("same size");
        }
        let (db, dg) = channel_sums(
            d.as_slice().expect("standard layout"),
            xhat.as_slice().expect("fresh array"),
            c,
        );
        if self.gamma.trainable {
            for i in 0..c {
                self.gamma.grad[[0, i]] += dg[i] as f32;
                self.beta.grad[[0, i]] += db[i] as f32;
            }
        }
        let mf = d.nrows() as f32;
        let g: Vec<f32> = self.gamma.value.row(0).to_vec();
        let k: Vec<f32> = (0..c).map(|i| g[i] * invstd[i] / mf).collect();
        let (db, dg): (Vec<f32>, Vec<f32>) = (
            db.iter().map(|v| *v as f32).collect(),
            dg.iter().map(|v| *v as f32).collect(),
        );
        let ds = d.as_slice_mut().expect("standard layout");
        ds.par_chunks_mut(BN_CHUNK_ROWS * c)
            .zip(
                xhat.as_slice()
                    .expect("fresh array")
                    .par_chunks(BN_CHUNK_ROWS * c),
            )
            .for_each(|(dc, xc)| {
                // Zipped slices of length c (no bounds checks): the loop vectorizes.
                let (k, db, dg) = (&k[..c], &db[..c], &dg[..c]);
                for (dr, xr) in dc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                    for ((((d, &x), &k), &db), &dg) in dr.iter_mut().zip(xr).zip(k).zip(db).zip(dg)
                    {
                        *d = k * (mf * *d - db - x * dg);
                    }
                }
            });
        give_array(xhat);
        d.into_shape_with_order((n, h, w, c)).expect("same size")
    }
}

/// What a clamp keeps for its backward: where the gradient passes.
#[derive(Clone, Debug)]
enum ClampCache {
    /// The clamped output itself (handed over by the caller, see [`Clamp::keep_output`]).
    Output(Array4<f32>),
    /// One byte per element: 1 where the gradient passes (a quarter of the output's bytes).
    Mask(Vec<u8>),
}

/// True where the derivative of `clamp(·, 0, cap)` is 1, from the clamped value `v` (written as the
/// negation of the "blocked" test so that NaN passes, as it always did).
#[inline(always)]
fn passes(v: f32, cap: f32) -> bool {
    !(v <= 0.0 || v >= cap)
}

/// `d` when `keep`, else +0.0: the same bits as `if !keep { d = 0.0 }`, as a bit mask so the
/// loop vectorizes (the conditional store was compiled to one branch per element).
#[inline(always)]
fn keep_or_zero(d: f32, keep: bool) -> f32 {
    f32::from_bits(d.to_bits() & 0u32.wrapping_sub(u32::from(keep)))
}

/// ReLU (cap = ∞) or ReLU6 (cap = 6); the output (or a mask of it) gives the derivative.
#[derive(Clone, Debug)]
pub struct Clamp {
    pub cap: f32,
    cache: Option<ClampCache>,
}

impl Clamp {
    pub fn relu() -> Self {
        Clamp {
            cap: f32::INFINITY,
            cache: None,
        }
    }
    pub fn relu6() -> Self {
        Clamp {
            cap: 6.0,
            cache: None,
        }
    }
    pub fn forward(&mut self, x: Array4<f32>, ctx: Ctx) -> Array4<f32> {
        let cap = self.cap;
        let mut x = std_layout(x);
        let xs = x
            .as_slice_mut()
            .expect("activations are kept in standard layout");
        if ctx.train {
            let mut mask = vec![0u8; xs.len()];
            xs.par_chunks_mut(EW_CHUNK)
                .zip(mask.par_chunks_mut(EW_CHUNK))
                .for_each(|(xc, mc)| {
                    for (v, m) in xc.iter_mut().zip(mc) {
                        *v = v.clamp(0.0, cap);
                        *m = u8::from(passes(*v, cap));
                    }
                });
            self.cache = Some(ClampCache::Mask(mask));
        } else {
            xs.par_chunks_mut(EW_CHUNK).for_each(|xc| {
                for v in xc {
                    *v = v.clamp(0.0, cap);
                }
            });
        }
        x
    }
    /// Keeps `y`, this clamp's output computed elsewhere (e.g. fused into a BatchNorm), for the
    /// backward of a training pass; otherwise recycles it.
    pub fn keep_output(&mut self, y: Array4<f32>, ctx: Ctx) {
        if ctx.train {
            self.cache = Some(ClampCache::Output(y));
        } else {
            give_array(y);
        }
    }
    pub fn backward(&mut self, dy: Array4<f32>) -> Array4<f32> {
        let cache = self
            .cache
            .take()
            .expect("Clamp::backward after a training forward");
        let mut dy = std_layout(dy);
        let cap = self.cap;
        let ds = dy
            .as_slice_mut()
            .expect("gradients are kept in standard layout");
        match cache {
            ClampCache::Output(y) => {
                let ys = y.as_slice().expect("standard layout");
                assert_eq!(ys.len(), ds.len(), "Clamp::backward shape");
                ds.par_chunks_mut(EW_CHUNK)
                    .zip(ys.par_chunks(EW_CHUNK))
                    .for_each(|(dc, yc)| {
                        for (d, &v) in dc.iter_mut().zip(yc) {
                            *d = keep_or_zero(*d, passes(v, cap));
                        }
                    });
                give_array(y);
            }
            ClampCache::Mask(mask) => {
                assert_eq!(mask.len(), ds.len(), "Clamp::backward shape");
                ds.par_chunks_mut(EW_CHUNK)
                    .zip(mask.par_chunks(EW_CHUNK))
                    .for_each(|(dc, mc)| {
                        for (d, &m) in dc.iter_mut().zip(mc) {
                            *d = keep_or_zero(*d, m != 0);
                        }
                    });
            }
        }
        dy
    }
}

/// Global average pool `[N,H,W,C] -> [N,C]`.
pub fn gap(x: &Array4<f32>) -> Array2<f32> {
    let (n, h, w, c) = x.dim();
    let v = x
        .view()
        .into_shape_with_order((n, h * w, c))
        .expect("standard layout");
    v.mean_axis(Axis(1))
        .unwrap_or_else(|| Array2::zeros((n, c)))
}

/// Adjoint of [`gap`]: spread `[N,C]` evenly over `H·W`.
pub fn gap_backward(d: &Array2<f32>, h: usize, w: usize) -> Array4<f32> {
    let (n, c) = d.dim();
    let scale = 1.0 / (h * w) as f32;
    let mut out = Array4::<f32>::zeros((n, h, w, c));
    for (mut o, dr) in out.outer_iter_mut().zip(d.rows()) {
        let dv = dr.mapv(|v| v * scale);
        for mut r in o.rows_mut() {
            r.assign(&dv);
        }
    }
    out
}

/// Fully connected layer on the backend: `y = x·W + b`, `W` `[in, out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Param,
    pub b: Param,
    cache: Option<Array2<f32>>,
}

impl Linear {
    pub fn new(name: &str, fin: usize, fout: usize, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (fin as f32).sqrt();
        Linear {
            w: Param::uniform(format!("{name}.weight"), fin, fout, bound, rng),
            b: Param::zeros(format!("{name}.bias"), 1, fout),
            cache: None,
        }
    }
    fn id(&self) -> &str {
        self.w.name.strip_suffix(".weight").unwrap_or(&self.w.name)
    }
    pub fn forward(&mut self, be: &mut dyn Backend, x: &Array2<f32>, ctx: Ctx) -> Array2<f32> {
        let mut y = Array2::<f32>::zeros((x.nrows(), self.w.value.ncols()));
        be.forward(
            self.id(),
            x.view(),
            self.w.value.view(),
            y.view_mut(),
            ctx.fwd_mode,
        );
        y += &self.b.value.row(0);
        if ctx.train {
            self.cache = Some(x.clone());
        }
        y
    }
    /// The final layer's weight gradient is never a PSG sign (reference: fp32 SGD for the classifier).
    pub fn backward(
        &mut self,
        be: &mut dyn Backend,
        dy: &Array2<f32>,
        need_dx: bool,
    ) -> Option<Array2<f32>> {
        let x = self
            .cache
            .take()
            .expect("Linear::backward after a training forward");
        let id = self.id().to_string();
        if self.w.trainable {
            let mut dw = Array2::<f32>::zeros(self.w.value.dim());
            be.backward_weight(&id, x.view(), dy.view(), dw.view_mut(), false);
            self.w.grad += &dw;
            let db: Array1<f32> = dy.sum_axis(Axis(0));
            self.b.grad.row_mut(0).scaled_add(1.0, &db);
        }
        if !need_dx {
            return None;
        }
        let mut dx = Array2::<f32>::zeros(x.dim());
        be.backward_data(&id, dy.view(), self.w.value.view(), dx.view_mut());
        Some(dx)
    }
}

/// Softmax cross-entropy: returns (mean loss, correct count, dlogits of the mean loss).
pub fn softmax_ce(logits: &Array2<f32>, labels: &[u8]) -> (f32, u32, Array2<f32>) {
    let n = logits.nrows();
    let mut d = Array2::<f32>::zeros(logits.dim());
    let mut loss = 0f64;
    let mut correct = 0u32;
    for (i, (row, mut drow)) in logits.rows().into_iter().zip(d.rows_mut()).enumerate() {
        let y = labels[i] as usize;
        let mx = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for (o, &v) in drow.iter_mut().zip(row.iter()) {
            *o = (v - mx).exp();
            sum += *o;
        }
        for o in drow.iter_mut() {
            *o /= sum;
        }
        loss -= (drow[y].max(1e-30) as f64).ln();
        let argmax = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (j, &v)| if v > a.1 { (j, v) } else { a },
            )
            .0;
        if argmax == y {
            correct += 1;
        }
        drow[y] -= 1.0;
    }
    if n > 0 {
        d.mapv_inplace(|v| v / n as f32);
    }
    (
        if n > 0 { (loss / n as f64) as f32 } else { 0.0 },
        correct,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rand4(rng: &mut ChaCha8Rng, d: (usize, usize, usize, usize)) -> Array4<f32> {
        Array4::from_shape_simple_fn(d, || rng.random::<f32>() * 2.0 - 1.0)
    }

    #[test]
    fn pool_hands_back_exact_lengths_and_reuses_storage() {
        give_buf(vec![7.0; 100]);
        let v = take_buf(60);
        assert_eq!(v.len(), 60);
        assert!(v.capacity() >= 100, "the recycled buffer was reused");
        give_buf(v);
        let w = take_buf(80);
        assert_eq!(w.len(), 80);
        assert!(take_buf(0).is_empty());
        for _ in 0..2 * POOL_MAX {
            give_buf(vec![1.0; 3]);
        }
        POOL.with(|p| assert!(p.borrow().len() <= POOL_MAX));
    }

    /// col2im's output comes from the pool: stale contents (NaN here) must not leak into it.
    /// The accelerator backend's conv backward data, whose column gradient goes to `col2im`
    /// in pieces, equals backward data into the whole matrix followed by `col2im` (bit for
    /// bit, with the same counters), over two steps so the shift history is used.
    #[test]
    fn scattered_conv_backward_data_equals_col2im_of_the_whole_matrix() {
        use crate::backend::{AccelBackend, Backend};
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0709);
        for (k, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 2, 0)] {
            let (n, h, w, c, cout) = (3, 7, 6, 4, 5);
            let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
            let wt = Array2::from_shape_simple_fn((k * k * c, cout), || rng.random::<f32>() - 0.5);
            let cfg = e2t_accel::AccelGemmConfig::baseline();
            let mut fused = AccelBackend::new(4, 4, cfg).unwrap();
            let mut plain = AccelBackend::new(4, 4, cfg).unwrap();
            for step in 0..2 {
                let dy = Array2::from_shape_simple_fn((n * ho * wo, cout), || {
                    (rng.random::<f32>() - 0.5) * (step + 1) as f32
                });
                let got = fused.conv_backward_data(
                    "l",
                    dy.view(),
                    wt.view(),
                    (n, h, w, c),
                    (k, stride, pad),
                );
                let mut dcols = Array2::zeros((n * ho * wo, k * k * c));
                plain.backward_data("l", dy.view(), wt.view(), dcols.view_mut());
                let want = col2im(&dcols, (n, h, w, c), k, stride, pad);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "k {k} stride {stride} step {step}"
                );
                assert_eq!(fused.counters(), plain.counters());
            }
        }
    }

    #[test]
    fn col2im_ignores_recycled_contents() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (k, stride, pad) in [(3, 1, 1), (3, 2, 1)] {
            let dims = (2, 5, 4, 3);
            let (ho, wo) = (out_size(5, k, stride, pad), out_size(4, k, stride, pad));
            let m = 2 * ho * wo;
            let kk = k * k * 3;
            let dcols = Array2::from_shape_simple_fn((m, kk), || rng.random::<f32>() - 0.5);
            for _ in 0..POOL_MAX {
                give_buf(vec![f32::NAN; 2 * 5 * 4 * 3]);
            }
            let got = col2im(&dcols, dims, k, stride, pad);
            // Reference: the adjoint written out entry by entry.
            let mut want = Array4::<f32>::zeros(dims);
            for b in 0..2 {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let r = (b * ho + oy) * wo + ox;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if !(0..5).contains(&iy) || !(0..4).contains(&ix) {
                                    continue;
                                }
                                for c in 0..3 {
                                    want[[b, iy as usize, ix as usize, c]] +=
                                        dcols[[r, (ky * k + kx) * 3 + c]];
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(got, want, "k {k} stride {stride}");
        }
    }

    /// BN with the clamp fused into its output pass equals BN then the clamp layer, forward and
    /// backward, whether the clamp keeps a mask or the output it is handed.
    #[test]
    fn fused_bn_clamp_equals_separate_layers() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let ctx = Ctx {
            train: true,
            fwd_mode: Mode::Int16,
        };
        for cap in [f32::INFINITY, 6.0] {
            let mut x = rand4(&mut rng, (3, 4, 5, 6)) * 5.0;
            x[[0, 0, 0, 0]] = f32::NAN;
            let dy = rand4(&mut rng, (3, 4, 5, 6));
            let (mut bn_a, mut bn_b) = (BatchNorm::new("a", 6), BatchNorm::new("b", 6));
            let (mut act_a, mut act_b) = (Clamp::relu(), Clamp::relu());
            act_a.cap = cap;
            act_b.cap = cap;
            let ya = act_a.forward(bn_a.forward(x.clone(), ctx), ctx);
            let yb = bn_b.forward_act(x.clone(), ctx, |v| v.clamp(0.0, cap));
            assert_eq!(
                ya.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                yb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            act_b.keep_output(yb, ctx);
            let da = bn_a.backward(act_a.backward(dy.clone()));
            let db = bn_b.backward(act_b.backward(dy.clone()));
            assert_eq!(
                da.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                db.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(bn_a.gamma.grad.as_slice().unwrap()),
                bits(bn_b.gamma.grad.as_slice().unwrap())
            );
            assert_eq!(bits(&bn_a.running_var), bits(&bn_b.running_var));
            // The mask blocks exactly where the clamp saturates.
            let n_blocked = ya.iter().filter(|&&v| !passes(v, cap)).count();
            assert!(n_blocked > 0 && n_blocked < ya.len());
        }
    }
}
