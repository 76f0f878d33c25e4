//! The small layers: ReLU, max/average pooling, global average pooling, Linear, softmax
//! cross-entropy. Activations are NHWC `Array4<f32>`; the classifier works on `[N, features]`.

use crate::conv::standard;
use crate::gemm::GemmEngine;
use crate::param::{Module, Param, TensorKind, TensorRef};
use ndarray::{Array1, Array2, Array4, Axis};
use rand::Rng;
use rand_distr::{Distribution, Uniform};
use rayon::prelude::*;

/// `max(0, x)`; keeps the output's sign pattern for backward.
#[derive(Default)]
pub struct ReLU {
    mask: Option<Array4<bool>>,
}

impl ReLU {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn forward(&mut self, x: &Array4<f32>, train: bool) -> Array4<f32> {
        let y = x.mapv(|v| v.max(0.0));
        if train {
            self.mask = Some(x.mapv(|v| v > 0.0));
        }
        y
    }
    pub fn backward(&mut self, dy: &Array4<f32>) -> Array4<f32> {
        let mask = self
            .mask
            .as_ref()
            .expect("ReLU: backward without a training forward");
        assert_eq!(mask.dim(), dy.dim(), "ReLU: output gradient shape");
        let mut dx = dy.to_owned();
        dx.zip_mut_with(mask, |d, &m| {
            if !m {
                *d = 0.0
            }
        });
        dx
    }
}

/// Pooling kind for [`Pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// Average over the window; padded positions count as zeros (PyTorch's `count_include_pad`).
    Avg,
}

/// Max or average pooling with a square window, stride and zero padding (NHWC).
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    in_dim: Option<(usize, usize, usize, usize)>,
    /// For max pooling: flat input index of each output's maximum (`usize::MAX` if the window is
    /// all padding).
    argmax: Vec<usize>,
}

impl Pool2d {
    pub fn new(kind: PoolKind, kernel: usize, stride: usize, pad: usize) -> Self {
        assert!(
            kernel > 0 && stride > 0 && pad < kernel,
            "pooling needs kernel > 0, stride > 0, pad < kernel"
        );
        Pool2d {
            kind,
            kernel,
            stride,
            pad,
            in_dim: None,
            argmax: Vec::new(),
        }
    }
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kernel) / self.stride + 1,
            (w + 2 * self.pad - self.kernel) / self.stride + 1,
        )
    }
    /// Input positions `(iy, ix)` inside the image covered by output `(oy, ox)`.
    fn window(
        &self,
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
    ) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (k, s, p) = (
            self.kernel as isize,
            self.stride as isize,
            self.pad as isize,
        );
        let (y0, x0) = (oy as isize * s - p, ox as isize * s - p);
        let (h, w) = (h as isize, w as isize);
        (y0..y0 + k)
            .flat_map(move |iy| (x0..x0 + k).map(move |ix| (iy, ix)))
            .filter(move |&(iy, ix)| iy >= 0 && iy < h && ix >= 0 && ix < w)
            .map(|(iy, ix)| (iy as usize, ix as usize))
    }
    pub fn forward(&mut self, x: &Array4<f32>, train: bool) -> Array4<f32> {
        let (n, h, w, c) = x.dim();
        let (ho, wo) = self.out_hw(h, w);
        let mut y = Array4::<f32>::zeros((n, ho, wo, c));
        let mut arg = vec![usize::MAX; n * ho * wo * c];
        let area = (self.kernel * self.kernel) as f32;
        for b in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for ch in 0..c {
                        let o = ((b * ho + oy) * wo + ox) * c + ch;
                        match self.kind {
                            PoolKind::Max => {
                                let mut best = f32::NEG_INFINITY;
                                for (iy, ix) in self.window(oy, ox, h, w) {
                                    let v = x[[b, iy, ix, ch]];
                                    if v > best || arg[o] == usize::MAX {
                                        best = v;
                                        arg[o] = ((b * h + iy) * w + ix) * c + ch;
                                    }
                                }
                                y[[b, oy, ox, ch]] = if arg[o] == usize::MAX { 0.0 } else { best };
                            }
                            PoolKind::Avg => {
                                let s: f32 = self
                                    .window(oy, ox, h, w)
                                    .map(|(iy, ix)| x[[b, iy, ix, ch]])
                                    .sum();
                                y[[b, oy, ox, ch]] = s / area;
                            }
                        }
                    }
                }
            }
        }
        if train {
            self.in_dim = Some(x.dim());
            self.argmax = arg;
        }
        y
    }
    pub fn backward(&mut self, dy: &Array4<f32>) -> Array4<f32> {
        let (n, h, w, c) = self
            .in_dim
            .expect("Pool2d: backward without a training forward");
        let (ho, wo) = self.out_hw(h, w);
        assert_eq!(dy.dim(), (n, ho, wo, c), "Pool2d: output gradient shape");
        let mut dx = Array4::<f32>::zeros((n, h, w, c));
        let area = (self.kernel * self.kernel) as f32;
        let dxs = dx.as_slice_mut().expect("fresh array");
        for ((b, oy, ox, ch), &d) in dy.indexed_iter() {
            match self.kind {
                PoolKind::Max => {
                    let a = self.argmax[((b * ho + oy) * wo + ox) * c + ch];
                    if a != usize::MAX {
                        dxs[a] += d;
                    }
                }
                PoolKind::Avg => {
                    for (iy, ix) in self.window(oy, ox, h, w) {
                        dxs[((b * h + iy) * w + ix) * c + ch] += d / area;
                    }
                }
            }
        }
        dx
    }
}

/// Global average pooling `[N, H, W, C] -> [N, C]`.
#[derive(Default)]
pub struct GlobalAvgPool {
    in_dim: Option<(usize, usize, usize, usize)>,
}

impl GlobalAvgPool {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn forward(&mut self, x: &Array4<f32>, train: bool) -> Array2<f32> {
        let (n, h, w, c) = x.dim();
        let x = standard(x);
        let xs = x.as_slice().expect("standard layout");
        let mut y = Array2::<f32>::zeros((n, c));
        let hw = h * w;
        if c > 0 && hw > 0 {
            y.as_slice_mut()
                .expect("fresh array")
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(b, yr)| {
                    for px in xs[b * hw * c..(b + 1) * hw * c].chunks_exact(c) {
                        crate::scratch::add_into(yr, px);
                    }
                    yr.iter_mut().for_each(|v| *v /= hw as f32);
                });
        }
        if train {
            self.in_dim = Some((n, h, w, c));
        }
        y
    }
    pub fn backward(&mut self, dy: &Array2<f32>) -> Array4<f32> {
        let (n, h, w, c) = self
            .in_dim
            .expect("GlobalAvgPool: backward without a training forward");
        assert_eq!(dy.dim(), (n, c), "GlobalAvgPool: output gradient shape");
        let inv = 1.0 / (h * w) as f32;
        let mut dx = Array4::<f32>::zeros((n, h, w, c));
        for (b, mut img) in dx.axis_iter_mut(Axis(0)).enumerate() {
            let g = dy.row(b).mapv(|v| v * inv);
            for mut px in img.lanes_mut(Axis(2)) {
                px.assign(&g);
            }
        }
        dx
    }
}

/// Fully connected layer `y = x·W + b`, `W` `[in, out]` (the GEMM's `w` role).
pub struct Linear {
    pub name: String,
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
    pub grad_weight: Array2<f32>,
    pub grad_bias: Array1<f32>,
    cached_x: Option<Array2<f32>>,
    dw: Array2<f32>,
}

impl Linear {
    pub fn new(name: impl Into<String>, inputs: usize, outputs: usize) -> Self {
        Linear {
            name: name.into(),
            weight: Array2::zeros((inputs, outputs)),
            bias: Array1::zeros(outputs),
            grad_weight: Array2::zeros((inputs, outputs)),
            grad_bias: Array1::zeros(outputs),
            cached_x: None,
            dw: Array2::zeros((inputs, outputs)),
        }
    }
    /// PyTorch's default: weight and bias uniform in `±1/sqrt(inputs)`.
    pub fn init_default<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let bound = 1.0 / (self.weight.dim().0.max(1) as f32).sqrt();
        let u = Uniform::new_inclusive(-bound, bound).expect("finite bound");
        self.weight.iter_mut().for_each(|v| *v = u.sample(rng));
        self.bias.iter_mut().for_each(|v| *v = u.sample(rng));
    }
    pub fn forward(
        &mut self,
        x: &Array2<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array2<f32> {
        let (n, f) = x.dim();
        assert_eq!(
            f,
            self.weight.dim().0,
            "{}: input has {f} features, expected {}",
            self.name,
            self.weight.dim().0
        );
        let mut y = Array2::<f32>::zeros((n, self.weight.dim().1));
        gemm.forward(&self.name, x.view(), self.weight.view(), y.view_mut());
        y += &self.bias;
        if train {
            self.cached_x = Some(x.to_owned());
        }
        y
    }
    pub fn backward(&mut self, dy: &Array2<f32>, gemm: &mut dyn GemmEngine) -> Array2<f32> {
        let x = self
            .cached_x
            .as_ref()
            .unwrap_or_else(|| panic!("{}: backward without a training forward", self.name));
        assert_eq!(
            dy.dim(),
            (x.dim().0, self.weight.dim().1),
            "{}: output gradient shape",
            self.name
        );
        gemm.backward_weight(&self.name, x.view(), dy.view(), self.dw.view_mut());
        self.grad_weight += &self.dw;
        self.grad_bias += &dy.sum_axis(Axis(0));
        let mut dx = Array2::<f32>::zeros(x.dim());
        gemm.backward_data(&self.name, dy.view(), self.weight.view(), dx.view_mut());
        dx
    }
}

impl Module for Linear {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        out.push(TensorRef {
            name: format!("{}.weight", self.name),
            kind: TensorKind::Param,
            value: self.weight.as_slice().expect("contiguous"),
        });
        out.push(TensorRef {
            name: format!("{}.bias", self.name),
            kind: TensorKind::Param,
            value: self.bias.as_slice().expect("contiguous"),
        });
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        let (i, o) = self.weight.dim();
        out.push(Param {
            name: format!("{}.weight", self.name),
            shape: vec![i, o],
            value: self.weight.as_slice_mut().expect("contiguous"),
            grad: self.grad_weight.as_slice_mut().expect("contiguous"),
        });
        out.push(Param {
            name: format!("{}.bias", self.name),
            shape: vec![o],
            value: self.bias.as_slice_mut().expect("contiguous"),
            grad: self.grad_bias.as_slice_mut().expect("contiguous"),
        });
    }
}

/// Result of [`softmax_cross_entropy`].
pub struct CeOutput {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Sum of per-sample losses (f64, for evaluation totals).
    pub loss_sum: f64,
    /// Gradient of the mean loss w.r.t. the logits.
    pub dlogits: Array2<f32>,
    /// Samples whose arg-max logit equals the label.
    pub correct: u32,
}

/// Softmax cross-entropy averaged over the batch. Labels must be `< classes` (checked by callers
/// that take external input; here a wrong label is a programming error and panics).
pub fn softmax_cross_entropy<L: Copy + Into<usize>>(
    logits: &Array2<f32>,
    labels: &[L],
) -> CeOutput {
    let (n, k) = logits.dim();
    assert_eq!(labels.len(), n, "one label per logit row");
    let mut d = Array2::<f32>::zeros((n, k));
    let mut loss_sum = 0.0f64;
    let mut correct = 0u32;
    let inv_n = if n > 0 { 1.0 / n as f32 } else { 0.0 };
    for (i, (row, mut drow)) in logits.outer_iter().zip(d.outer_iter_mut()).enumerate() {
        let y: usize = labels[i].into();
        assert!(y < k, "label {y} out of range for {k} classes");
        let mut best = 0;
        for j in 1..k {
            if row[j] > row[best] {
                best = j;
            }
        }
        if best == y {
            correct += 1;
        }
        let mx = row[best];
        let z: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
        let lse = mx as f64 + z.ln();
        loss_sum += lse - row[y] as f64;
        for j in 0..k {
            let p = ((row[j] as f64 - lse).exp()) as f32;
            drow[j] = (p - if j == y { 1.0 } else { 0.0 }) * inv_n;
        }
    }
    CeOutput {
        loss: if n > 0 {
            (loss_sum / n as f64) as f32
        } else {
            0.0
        },
        loss_sum,
        dlogits: d,
        correct,
    }
}
