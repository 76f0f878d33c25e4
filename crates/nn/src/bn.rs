//! BatchNorm2d over NHWC tensors, with an optional fused ReLU.
//!
//! Training mode normalises with the batch statistics (biased variance) and updates the running
//! statistics PyTorch-style (`r = (1-m)·r + m·batch`, unbiased variance); eval mode uses the running
//! statistics. Reductions run on fixed-size row chunks in parallel and are combined in f64 in chunk
//! order, so the result does not depend on the thread count.

use crate::conv::{as_rows, standard};
use crate::param::{Buffer, Module, Param, TensorKind, TensorRef};
use ndarray::{Array1, Array4};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per reduction chunk (fixed, so reductions are deterministic whatever the thread count).
const CHUNK_ROWS: usize = 1024;

pub struct BatchNorm2d {
    pub name: String,
    pub channels: usize,
    pub eps: f32,
    pub momentum: f32,
    /// Applies `max(0, ·)` to the output (saves a pass and a cached tensor in residual blocks).
    pub fused_relu: bool,
    pub gamma: Array1<f32>,
    pub beta: Array1<f32>,
    pub grad_gamma: Array1<f32>,
    pub grad_beta: Array1<f32>,
    pub running_mean: Array1<f32>,
    pub running_var: Array1<f32>,
    /// Normalised input `x̂` of the last training forward, `[N·H·W·C]`.
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    cached_dim: Option<(usize, usize, usize, usize)>,
}

/// Per-channel sums over `[rows, c]` data split into fixed chunks of [`CHUNK_ROWS`] rows:
/// `per_chunk(chunk_index, s, q)` accumulates one chunk into zeroed `s`/`q` (f32), and the chunk
/// results are combined in f64 in chunk order.
fn channel_sums(
    rows: usize,
    c: usize,
    per_chunk: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let chunks = rows.div_ceil(CHUNK_ROWS);
    let partial: Vec<(Vec<f32>, Vec<f32>)> = (0..chunks)
        .into_par_iter()
        .map(|ci| {
            let mut s = vec![0.0f32; c];
            let mut q = vec![0.0f32; c];
            per_chunk(ci, &mut s, &mut q);
            (s, q)
        })
        .collect();
    let mut s = vec![0.0f64; c];
    let mut q = vec![0.0f64; c];
    for (ps, pq) in partial {
        for j in 0..c {
            s[j] += ps[j] as f64;
            q[j] += pq[j] as f64;
        }
    }
    (s, q)
}

impl BatchNorm2d {
    pub fn new(name: impl Into<String>, channels: usize, fused_relu: bool) -> Self {
        BatchNorm2d {
            name: name.into(),
            channels,
            eps: 1e-5,
            momentum: 0.1,
            fused_relu,
            gamma: Array1::ones(channels),
            beta: Array1::zeros(channels),
            grad_gamma: Array1::zeros(channels),
            grad_beta: Array1::zeros(channels),
            running_mean: Array1::zeros(channels),
            running_var: Array1::ones(channels),
            xhat: Vec::new(),
            inv_std: vec![1.0; channels],
            cached_dim: None,
        }
    }

    /// `x` NHWC with `C = channels`. An empty batch passes through and leaves the running statistics
    /// untouched.
    pub fn forward(&mut self, x: &Array4<f32>, train: bool) -> Array4<f32> {
        let c = self.channels;
        assert_eq!(
            x.dim().3,
            c,
            "{}: input has {} channels, expected {c}",
            self.name,
            x.dim().3
        );
        let x = standard(x);
        let xs = as_rows(&x);
        let xs = xs.as_slice().expect("standard layout");
        let rows = xs.len() / c.max(1);
        // Every element is written below, so the output skips the zero fill.
        let mut y = Array4::<f32>::uninit(x.dim());
        let relu = self.fused_relu;
        let gamma = self.gamma.as_slice().expect("contiguous");
        let beta = self.beta.as_slice().expect("contiguous");
        let step = CHUNK_ROWS * c.max(1);
        if !train || rows == 0 {
            let scale: Vec<f32> = (0..c)
                .map(|j| gamma[j] / (self.running_var[j] + self.eps).sqrt())
                .collect();
            let shift: Vec<f32> = (0..c)
                .map(|j| beta[j] - self.running_mean[j] * scale[j])
                .collect();
            let ys = y.as_slice_mut().expect("fresh array");
            ys.par_chunks_mut(step)
                .zip(xs.par_chunks(step))
                .for_each(|(yc, xc)| {
                    with_channels!(c, affine_rows(c, xc, &scale, &shift, relu, yc))
                });
            if train {
                self.cached_dim = Some(x.dim());
                self.xhat.clear();
            }
            // SAFETY: the chunks above cover the whole output and write every element.
            return unsafe { y.assume_init() };
        }
        // Shift by the first row so the one-pass variance does not cancel catastrophically.
        let shift0: Vec<f32> = xs[..c].to_vec();
        let (s, q) = channel_sums(rows, c, |ci, s, q| {
            let end = ((ci + 1) * step).min(xs.len());
            with_channels!(c, shifted_sums(c, &xs[ci * step..end], &shift0, s, q))
        });
        let nf = rows as f64;
        let mut mean = vec![0.0f32; c];
        for j in 0..c {
            let ms = s[j] / nf;
            let var = (q[j] / nf - ms * ms).max(0.0);
            mean[j] = (ms + shift0[j] as f64) as f32;
            self.inv_std[j] = (1.0 / (var + self.eps as f64).sqrt()) as f32;
            let unbiased = if rows > 1 { var * nf / (nf - 1.0) } else { var };
            self.running_mean[j] =
                (1.0 - self.momentum) * self.running_mean[j] + self.momentum * mean[j];
            self.running_var[j] =
                (1.0 - self.momentum) * self.running_var[j] + self.momentum * unbiased as f32;
        }
        if self.xhat.len() != xs.len() {
            self.xhat.resize(xs.len(), 0.0);
        }
        let inv = &self.inv_std;
        let ys = y.as_slice_mut().expect("fresh array");
        ys.par_chunks_mut(step)
            .zip(self.xhat.par_chunks_mut(step))
            .zip(xs.par_chunks(step))
            .for_each(|((yc, hc), xc)| {
                let p = RowParams { gamma, beta, relu };
                with_channels!(c, normalize_rows(c, xc, &mean, inv, p, yc, hc))
            });
        self.cached_dim = Some(x.dim());
        // SAFETY: the chunks above cover the whole output and write every element.
        unsafe { y.assume_init() }
    }

    /// Gradient through a training-mode forward: accumulates `grad_gamma`/`grad_beta`, returns `dx`.
    pub fn backward(&mut self, dy: &Array4<f32>) -> Array4<f32> {
        let dim = self
            .cached_dim
            .unwrap_or_else(|| panic!("{}: backward without a training forward", self.name));
        assert_eq!(dy.dim(), dim, "{}: output gradient shape", self.name);
        let c = self.channels;
        let rows = dim.0 * dim.1 * dim.2;
        if rows == 0 {
            return Array4::<f32>::zeros(dim);
        }
        let dy = standard(dy);
        let dys = dy.as_slice().expect("standard layout");
        let xhat = &self.xhat[..];
        let p = RowParams {
            gamma: self.gamma.as_slice().expect("contiguous"),
            beta: self.beta.as_slice().expect("contiguous"),
            relu: self.fused_relu,
        };
        let step = CHUNK_ROWS * c.max(1);
        // Pass 1: per-chunk sums of dz and dz·x̂, where dz = dy masked by the fused ReLU (the
        // output was positive iff γ·x̂ + β > 0). dz is recomputed in pass 2 rather than stored:
        // one memory stream fewer.
        let (sdz, sdzx) = channel_sums(rows, c, |ci, s, q| {
            let end = ((ci + 1) * step).min(dys.len());
            let r = ci * step..end;
            with_channels!(c, dz_sums(c, &dys[r.clone()], &xhat[r], p, s, q))
        });
        let nf = rows as f64;
        let mean_dz: Vec<f32> = sdz.iter().map(|v| (v / nf) as f32).collect();
        let mean_dzx: Vec<f32> = sdzx.iter().map(|v| (v / nf) as f32).collect();
        let k: Vec<f32> = (0..c).map(|j| p.gamma[j] * self.inv_std[j]).collect();
        for j in 0..c {
            self.grad_beta[j] += sdz[j] as f32;
            self.grad_gamma[j] += sdzx[j] as f32;
        }
        // Pass 2: dx = γ/σ · (dz − mean(dz) − x̂·mean(dz·x̂)).
        let mut dx = Array4::<f32>::uninit(dim);
        dx.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(step)
            .zip(dys.par_chunks(step))
            .zip(xhat.par_chunks(step))
            .for_each(|((dc, yc), hc)| {
                let m = (&k[..], &mean_dz[..], &mean_dzx[..]);
                with_channels!(c, input_grad_rows(c, yc, hc, p, m, dc))
            });
        // SAFETY: the chunks above cover the whole gradient and write every element.
        unsafe { dx.assume_init() }
    }
}

/// Per-channel parameters the row kernels share.
#[derive(Clone, Copy)]
struct RowParams<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    relu: bool,
}

/// Calls `f::<C>` with a compile-time channel count for the widths a CIFAR ResNet uses, so the
/// per-row loops below compile to whole vector registers without bounds checks; `f::<0>` (the
/// runtime width `c`) otherwise. Every instance computes the same operations in the same order.
macro_rules! with_channels {
    ($c:expr, $f:ident ( $($a:expr),* )) => {
        match $c {
            16 => $f::<16>($($a),*),
            32 => $f::<32>($($a),*),
            64 => $f::<64>($($a),*),
            _ => $f::<0>($($a),*),
        }
    };
}
use with_channels;

/// The channel count: `C` when it is a compile-time width, else the runtime `c`.
#[inline(always)]
fn width<const C: usize>(c: usize) -> usize {
    if C == 0 { c } else { C }
}

/// `s += x - sh`, `q += (x - sh)²` per channel over the rows of `xs`.
#[inline(always)]
fn shifted_sums<const C: usize>(c: usize, xs: &[f32], sh: &[f32], s: &mut [f32], q: &mut [f32]) {
    let c = width::<C>(c);
    let (sh, s, q) = (&sh[..c], &mut s[..c], &mut q[..c]);
    for xr in xs.chunks_exact(c) {
        for j in 0..c {
            let d = xr[j] - sh[j];
            s[j] += d;
            q[j] += d * d;
        }
    }
}

/// Eval-mode rows: `y = x·scale + shift` (then the optional ReLU).
#[inline(always)]
fn affine_rows<const C: usize>(
    c: usize,
    xs: &[f32],
    scale: &[f32],
    shift: &[f32],
    relu: bool,
    ys: &mut [MaybeUninit<f32>],
) {
    let c = width::<C>(c);
    let (scale, shift) = (&scale[..c], &shift[..c]);
    for (yr, xr) in ys.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
        for j in 0..c {
            let v = xr[j] * scale[j] + shift[j];
            yr[j].write(if relu { v.max(0.0) } else { v });
        }
    }
}

/// Train-mode rows: `x̂ = (x − mean)·inv_std` (kept for backward), `y = γ·x̂ + β` (then the ReLU).
#[inline(always)]
fn normalize_rows<const C: usize>(
    c: usize,
    xs: &[f32],
    mean: &[f32],
    inv: &[f32],
    p: RowParams<'_>,
    ys: &mut [MaybeUninit<f32>],
    hs: &mut [f32],
) {
    let c = width::<C>(c);
    let (mean, inv, g, b) = (&mean[..c], &inv[..c], &p.gamma[..c], &p.beta[..c]);
    for ((yr, hr), xr) in ys
        .chunks_exact_mut(c)
        .zip(hs.chunks_exact_mut(c))
        .zip(xs.chunks_exact(c))
    {
        for j in 0..c {
            let hv = (xr[j] - mean[j]) * inv[j];
            hr[j] = hv;
            let v = g[j] * hv + b[j];
            yr[j].write(if p.relu { v.max(0.0) } else { v });
        }
    }
}

/// `dy` masked by the fused ReLU.
#[inline(always)]
fn masked(dy: f32, h: f32, g: f32, b: f32, relu: bool) -> f32 {
    if relu && g * h + b <= 0.0 { 0.0 } else { dy }
}

/// `s += dz`, `q += dz·x̂` per channel.
#[inline(always)]
fn dz_sums<const C: usize>(
    c: usize,
    dys: &[f32],
    hs: &[f32],
    p: RowParams<'_>,
    s: &mut [f32],
    q: &mut [f32],
) {
    let c = width::<C>(c);
    let (g, b, s, q) = (&p.gamma[..c], &p.beta[..c], &mut s[..c], &mut q[..c]);
    for (yr, hr) in dys.chunks_exact(c).zip(hs.chunks_exact(c)) {
        for j in 0..c {
            let z = masked(yr[j], hr[j], g[j], b[j], p.relu);
            s[j] += z;
            q[j] += z * hr[j];
        }
    }
}

/// `dx = k·(dz − mean_dz − x̂·mean_dzx)` with `m = (k, mean_dz, mean_dzx)`.
#[inline(always)]
fn input_grad_rows<const C: usize>(
    c: usize,
    dys: &[f32],
    hs: &[f32],
    p: RowParams<'_>,
    (k, md, mx): (&[f32], &[f32], &[f32]),
    dx: &mut [MaybeUninit<f32>],
) {
    let c = width::<C>(c);
    let (g, b, k, md, mx) = (&p.gamma[..c], &p.beta[..c], &k[..c], &md[..c], &mx[..c]);
    for ((dr, yr), hr) in dx
        .chunks_exact_mut(c)
        .zip(dys.chunks_exact(c))
        .zip(hs.chunks_exact(c))
    {
        for j in 0..c {
            let z = masked(yr[j], hr[j], g[j], b[j], p.relu);
            dr[j].write(k[j] * (z - md[j] - hr[j] * mx[j]));
        }
    }
}

impl Module for BatchNorm2d {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        let n = &self.name;
        out.push(TensorRef {
            name: format!("{n}.weight"),
            kind: TensorKind::Param,
            value: self.gamma.as_slice().expect("contiguous"),
        });
        out.push(TensorRef {
            name: format!("{n}.bias"),
            kind: TensorKind::Param,
            value: self.beta.as_slice().expect("contiguous"),
        });
        out.push(TensorRef {
            name: format!("{n}.running_mean"),
            kind: TensorKind::Buffer,
            value: self.running_mean.as_slice().expect("contiguous"),
        });
        out.push(TensorRef {
            name: format!("{n}.running_var"),
            kind: TensorKind::Buffer,
            value: self.running_var.as_slice().expect("contiguous"),
        });
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        let c = self.channels;
        out.push(Param {
            name: format!("{}.weight", self.name),
            shape: vec![c],
            value: self.gamma.as_slice_mut().expect("contiguous"),
            grad: self.grad_gamma.as_slice_mut().expect("contiguous"),
        });
        out.push(Param {
            name: format!("{}.bias", self.name),
            shape: vec![c],
            value: self.beta.as_slice_mut().expect("contiguous"),
            grad: self.grad_beta.as_slice_mut().expect("contiguous"),
        });
    }
    fn buffers_into<'a>(&'a mut self, out: &mut Vec<Buffer<'a>>) {
        out.push(Buffer {
            name: format!("{}.running_mean", self.name),
            value: self.running_mean.as_slice_mut().expect("contiguous"),
        });
        out.push(Buffer {
            name: format!("{}.running_var", self.name),
            value: self.running_var.as_slice_mut().expect("contiguous"),
        });
    }
}
