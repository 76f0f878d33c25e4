//! SGD with momentum and weight decay, PyTorch semantics:
//! `buf = m·buf + (g + wd·w)` (the first step starts from `buf = 0`), `w -= lr·buf`.
//!
//! Momentum buffers are keyed by parameter name, so the optimizer can step a subset (e.g. only
//! `fc.*`) and checkpoints can store them by name. `g` is whatever the layer's GEMM engine wrote
//! (a PSG engine's signs included).

use crate::param::Param;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    bufs: BTreeMap<String, Vec<f32>>,
}

impl Sgd {
    pub fn new(momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            weight_decay,
            bufs: BTreeMap::new(),
        }
    }

    /// One update of every parameter in `params` with its accumulated gradient.
    pub fn step(&mut self, params: &mut [Param<'_>], lr: f32) {
        for p in params.iter_mut() {
            self.update(p, lr, true);
        }
    }

    /// The update with a zero task gradient (SMD's step on a dropped batch: momentum and weight
    /// decay still move the weights).
    pub fn step_without_grad(&mut self, params: &mut [Param<'_>], lr: f32) {
        for p in params.iter_mut() {
            self.update(p, lr, false);
        }
    }

    fn update(&mut self, p: &mut Param<'_>, lr: f32, use_grad: bool) {
        let (m, wd) = (self.momentum, self.weight_decay);
        let buf = self
            .bufs
            .entry(p.name.clone())
            .or_insert_with(|| vec![0.0; p.value.len()]);
        if buf.len() != p.value.len() {
            // A parameter changed size under the same name: its old momentum is meaningless.
            *buf = vec![0.0; p.value.len()];
        }
        for ((w, &g), b) in p.value.iter_mut().zip(p.grad.iter()).zip(buf.iter_mut()) {
            let g = if use_grad { g } else { 0.0 } + wd * *w;
            *b = m * *b + g;
            *w -= lr * *b;
        }
    }

    /// Momentum buffers by parameter name (for checkpoints).
    pub fn buffers(&self) -> &BTreeMap<String, Vec<f32>> {
        &self.bufs
    }

    pub fn set_buffers(&mut self, bufs: BTreeMap<String, Vec<f32>>) {
        self.bufs = bufs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pytorch_formula() {
        let mut w = vec![1.0f32, -2.0];
        let mut g = vec![0.5f32, 0.25];
        let mut sgd = Sgd::new(0.9, 0.1);
        let (lr, m, wd) = (0.1f32, 0.9f32, 0.1f32);
        let mut ew = w.clone();
        let mut eb = [0.0f32; 2];
        for _ in 0..3 {
            {
                let mut ps = vec![Param {
                    name: "p".into(),
                    shape: vec![2],
                    value: &mut w,
                    grad: &mut g,
                }];
                sgd.step(&mut ps, lr);
            }
            for i in 0..2 {
                eb[i] = m * eb[i] + ([0.5f32, 0.25][i] + wd * ew[i]);
                ew[i] -= lr * eb[i];
            }
            assert_eq!(w, ew);
        }
        // A skipped batch still applies momentum and decay.
        {
            let mut ps = vec![Param {
                name: "p".into(),
                shape: vec![2],
                value: &mut w,
                grad: &mut g,
            }];
            sgd.step_without_grad(&mut ps, lr);
        }
        for i in 0..2 {
            eb[i] = m * eb[i] + wd * ew[i];
            ew[i] -= lr * eb[i];
        }
        assert_eq!(w, ew);
    }
}
