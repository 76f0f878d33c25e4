//! SLU's recurrent gate (SkipNet / E2-Train reference design) and its computation-cost regulariser.
//!
//! For gated block `k` (every residual block after the network's first block): `g_k = GAP(x_k)` of
//! the block input, `e_k = g_k·We_k + be_k` (the reference's per-block 1x1 conv C->10), one LSTM(10->10)
//! shared by all gated blocks and stepped once per block (state reset to zero each forward),
//! `p_k = σ(h_k·w_out + b_out)`. The gate runs in fp32 on the board CPU (about 0.02% of the model's
//! MACs), so its work is not counted on the accelerator; its parameters get ordinary fp32 SGD.
//! Gradients flow from `p_k` into the gate parameters and back into `x_k` (as in SkipNet).

use crate::layers::Param;
use ndarray::{Array1, Array2, Axis, s};
use rand::Rng;

pub const EMBED: usize = 10;
pub const HIDDEN: usize = 10;
/// Initial output bias: σ(2) ≈ 0.88, so training starts with nearly every block executed and the
/// cost regulariser lowers the executed fraction towards the target.
pub const INIT_OUT_BIAS: f32 = 2.0;

struct StepCache {
    g: Array2<f32>,
    e: Array2<f32>,
    h_prev: Array2<f32>,
    c_prev: Array2<f32>,
    i: Array2<f32>,
    f: Array2<f32>,
    gg: Array2<f32>,
    o: Array2<f32>,
    tc: Array2<f32>,
    h: Array2<f32>,
    p: Array1<f32>,
}

pub struct Gate {
    pub embed_w: Vec<Param>,
    pub embed_b: Vec<Param>,
    pub w_ih: Param,
    pub w_hh: Param,
    pub b: Param,
    pub w_out: Param,
    pub b_out: Param,
    h: Array2<f32>,
    c: Array2<f32>,
    steps: Vec<StepCache>,
    dh: Option<Array2<f32>>,
    dc: Option<Array2<f32>>,
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl Gate {
    /// One embedding per gated block, `channels[k]` = input channels of gated block `k`.
    pub fn new(channels: &[usize], rng: &mut impl Rng) -> Self {
        let bound_l = 1.0 / (HIDDEN as f32).sqrt();
        let embed_w = channels
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                Param::uniform(
                    format!("gate.embed{k}.weight"),
                    c,
                    EMBED,
                    1.0 / (c as f32).sqrt(),
                    rng,
                )
            })
            .collect();
        let embed_b = channels
            .iter()
            .enumerate()
            .map(|(k, _)| Param::zeros(format!("gate.embed{k}.bias"), 1, EMBED))
            .collect();
        let w_ih = Param::uniform("gate.lstm.w_ih", EMBED, 4 * HIDDEN, bound_l, rng);
        let w_hh = Param::uniform("gate.lstm.w_hh", HIDDEN, 4 * HIDDEN, bound_l, rng);
        let b = Param::uniform("gate.lstm.bias", 1, 4 * HIDDEN, bound_l, rng);
        let w_out = Param::uniform("gate.out.weight", HIDDEN, 1, bound_l, rng);
        let b_out = Param::filled("gate.out.bias", 1, 1, INIT_OUT_BIAS);
        Gate {
            embed_w,
            embed_b,
            w_ih,
            w_hh,
            b,
            w_out,
            b_out,
            h: Array2::zeros((0, HIDDEN)),
            c: Array2::zeros((0, HIDDEN)),
            steps: Vec::new(),
            dh: None,
            dc: None,
        }
    }

    pub fn gated_blocks(&self) -> usize {
        self.embed_w.len()
    }

    /// Start a forward pass over `n` samples (LSTM state reset, caches cleared).
    pub fn reset(&mut self, n: usize) {
        self.h = Array2::zeros((n, HIDDEN));
        self.c = Array2::zeros((n, HIDDEN));
        self.steps.clear();
        self.dh = None;
        self.dc = None;
    }

    /// Gate probabilities for the next gated block (`k` = number of steps taken so far) from the
    /// pooled block input `g` `[N, C_k]`.
    pub fn step(&mut self, g: Array2<f32>) -> Array1<f32> {
        let k = self.steps.len();
        let mut e = g.dot(&self.embed_w[k].value);
        e += &self.embed_b[k].value.row(0);
        let mut z = e.dot(&self.w_ih.value) + self.h.dot(&self.w_hh.value);
        z += &self.b.value.row(0);
        let hd = HIDDEN;
        let i = z.slice(s![.., 0..hd]).mapv(sigmoid);
        let f = z.slice(s![.., hd..2 * hd]).mapv(sigmoid);
        let gg = z.slice(s![.., 2 * hd..3 * hd]).mapv(f32::tanh);
        let o = z.slice(s![.., 3 * hd..4 * hd]).mapv(sigmoid);
        let c = &f * &self.c + &i * &gg;
        let tc = c.mapv(f32::tanh);
        let h = &o * &tc;
        let logit = h.dot(&self.w_out.value).column(0).to_owned() + self.b_out.value[[0, 0]];
        let p = logit.mapv(sigmoid);
        let h_prev = std::mem::replace(&mut self.h, h.clone());
        let c_prev = std::mem::replace(&mut self.c, c);
        self.steps.push(StepCache {
            g,
            e,
            h_prev,
            c_prev,
            i,
            f,
            gg,
            o,
            tc,
            h,
            p: p.clone(),
        });
        p
    }

    /// Backward of the most recent not-yet-backpropagated step, given dL/dp `[N]`; returns dL/dg.
    /// Must be called in reverse step order (backprop through time over the blocks).
    pub fn backward_step(&mut self, dp: &Array1<f32>) -> Array2<f32> {
        let st = self
            .steps
            .pop()
            .expect("Gate::backward_step without a matching step");
        let k = self.steps.len();
        let n = st.p.len();
        let dlogit: Array1<f32> = dp * &st.p.mapv(|p| p * (1.0 - p));
        let dl2 = dlogit.clone().insert_axis(Axis(1));
        let train = self.w_ih.trainable;
        if train {
            self.w_out.grad += &st.h.t().dot(&dl2);
            self.b_out.grad[[0, 0]] += dlogit.sum();
        }
        let mut dh = dl2.dot(&self.w_out.value.t());
        if let Some(c) = self.dh.take() {
            dh += &c;
        }
        let d_o = &dh * &st.tc;
        let mut dc = &dh * &st.o * &st.tc.mapv(|t| 1.0 - t * t);
        if let Some(c) = self.dc.take() {
            dc += &c;
        }
        let di = &dc * &st.gg;
        let dgg = &dc * &st.i;
        let df = &dc * &st.c_prev;
        let dc_prev = &dc * &st.f;
        let hd = HIDDEN;
        let mut dz = Array2::<f32>::zeros((n, 4 * hd));
        dz.slice_mut(s![.., 0..hd])
            .assign(&(&di * &st.i.mapv(|v| v * (1.0 - v))));
        dz.slice_mut(s![.., hd..2 * hd])
            .assign(&(&df * &st.f.mapv(|v| v * (1.0 - v))));
        dz.slice_mut(s![.., 2 * hd..3 * hd])
            .assign(&(&dgg * &st.gg.mapv(|v| 1.0 - v * v)));
        dz.slice_mut(s![.., 3 * hd..4 * hd])
            .assign(&(&d_o * &st.o.mapv(|v| v * (1.0 - v))));
        if train {
            self.w_ih.grad += &st.e.t().dot(&dz);
            self.w_hh.grad += &st.h_prev.t().dot(&dz);
            self.b
                .grad
                .row_mut(0)
                .scaled_add(1.0, &dz.sum_axis(Axis(0)));
        }
        let de = dz.dot(&self.w_ih.value.t());
        self.dh = Some(dz.dot(&self.w_hh.value.t()));
        self.dc = Some(dc_prev);
        if train {
            self.embed_w[k].grad += &st.g.t().dot(&de);
            self.embed_b[k]
                .grad
                .row_mut(0)
                .scaled_add(1.0, &de.sum_axis(Axis(0)));
        }
        de.dot(&self.embed_w[k].value.t())
    }

    pub fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for p in self.embed_w.iter_mut().chain(self.embed_b.iter_mut()) {
            f(p);
        }
        f(&mut self.w_ih);
        f(&mut self.w_hh);
        f(&mut self.b);
        f(&mut self.w_out);
        f(&mut self.b_out);
    }

    pub fn for_each_param(&self, f: &mut dyn FnMut(&Param)) {
        for p in self.embed_w.iter().chain(self.embed_b.iter()) {
            f(p);
        }
        f(&self.w_ih);
        f(&self.w_hh);
        f(&self.b);
        f(&self.w_out);
        f(&self.b_out);
    }
}

/// The reference's bang-bang computation-cost regulariser, with each gated block weighted by its
/// real MAC cost (normalised so the most expensive block weighs 1).
#[derive(Clone, Debug, PartialEq)]
pub struct CostRegulariser {
    pub weights: Vec<f32>,
    pub target: f32,
    pub beta: f32,
}

impl CostRegulariser {
    pub fn new(block_macs: &[u64], target: f32, beta: f32) -> Self {
        let max = block_macs.iter().copied().max().unwrap_or(1).max(1) as f32;
        CostRegulariser {
            weights: block_macs.iter().map(|&m| m as f32 / max).collect(),
            target,
            beta,
        }
    }

    /// Cost-weighted executed fraction of a batch: Σ_k w_k Σ_i m_ik / (N Σ_k w_k).
    /// `gates[k][i]` is sample i's decision (or relaxed probability) for gated block k.
    pub fn executed_fraction(&self, gates: &[Array1<f32>]) -> f32 {
        let total: f32 = self.weights.iter().sum();
        let n = gates.first().map_or(0, |g| g.len());
        if total <= 0.0 || n == 0 {
            return 0.0;
        }
        let s: f32 = gates
            .iter()
            .zip(&self.weights)
            .map(|(g, &w)| w * g.sum())
            .sum();
        s / (n as f32 * total)
    }

    /// r = -1 (reward execution) while the executed fraction is at or below the target, else +1.
    pub fn sign(&self, fraction: f32) -> f32 {
        if fraction <= self.target { -1.0 } else { 1.0 }
    }

    /// Regulariser value `β·r·(1/N)·Σ_i Σ_k w_k m_ik` and its gradient per gated block (the same
    /// for every sample: β·r·w_k/N).
    pub fn loss_and_grad(&self, gates: &[Array1<f32>]) -> (f32, Vec<f32>) {
        let n = gates.first().map_or(0, |g| g.len()).max(1) as f32;
        let r = self.sign(self.executed_fraction(gates));
        let loss = gates
            .iter()
            .zip(&self.weights)
            .map(|(g, &w)| self.beta * r * w * g.sum() / n)
            .sum();
        (
            loss,
            self.weights
                .iter()
                .map(|&w| self.beta * r * w / n)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// L = Σ_k Σ_i c_ki p_ki with p from the gate over random pooled inputs.
    fn run(gate: &mut Gate, gs: &[Array2<f32>], c: &[Array1<f32>]) -> f32 {
        gate.reset(gs[0].nrows());
        gs.iter()
            .zip(c)
            .map(|(g, ck)| (gate.step(g.clone()) * ck).sum())
            .sum()
    }

    #[test]
    fn gate_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let chans = [4usize, 6, 6];
        let mut gate = Gate::new(&chans, &mut rng);
        gate.b_out.value[[0, 0]] = 0.1;
        let gs: Vec<Array2<f32>> = chans
            .iter()
            .map(|&c| Array2::from_shape_simple_fn((3, c), || rng.random_range(-1.0..1.0)))
            .collect();
        let cs: Vec<Array1<f32>> = chans
            .iter()
            .map(|_| Array1::from_shape_simple_fn(3, || rng.random_range(-1.0..1.0)))
            .collect();
        run(&mut gate, &gs, &cs);
        gate.visit_params(&mut |p| p.zero_grad());
        let mut dgs = Vec::new();
        for ck in cs.iter().rev() {
            dgs.push(gate.backward_step(ck));
        }
        dgs.reverse();
        let eps = 1e-2f32;
        // Parameter gradients.
        let mut names = Vec::new();
        gate.visit_params(&mut |p| names.push((p.name.clone(), p.grad.clone())));
        for (name, grad) in names {
            for idx in [0usize, grad.len() / 2, grad.len() - 1] {
                let (r, c) = (idx / grad.ncols(), idx % grad.ncols());
                let mut f = |delta: f32| {
                    gate.visit_params(&mut |p| {
                        if p.name == name {
                            p.value[[r, c]] += delta;
                        }
                    });
                    let v = run(&mut gate, &gs, &cs);
                    gate.visit_params(&mut |p| {
                        if p.name == name {
                            p.value[[r, c]] -= delta;
                        }
                    });
                    v
                };
                let fd = (f(eps) - f(-eps)) / (2.0 * eps);
                let an = grad[[r, c]];
                assert!(
                    (fd - an).abs() <= 2e-3 + 0.02 * an.abs(),
                    "{name}[{r},{c}]: analytic {an} vs fd {fd}"
                );
            }
        }
        // Input gradients.
        for k in 0..chans.len() {
            let mut g2 = gs.clone();
            g2[k][[1, 2]] += eps;
            let up = run(&mut gate, &g2, &cs);
            g2[k][[1, 2]] -= 2.0 * eps;
            let dn = run(&mut gate, &g2, &cs);
            let fd = (up - dn) / (2.0 * eps);
            let an = dgs[k][[1, 2]];
            assert!(
                (fd - an).abs() <= 2e-3 + 0.02 * an.abs(),
                "dg{k}: analytic {an} vs fd {fd}"
            );
        }
    }

    #[test]
    fn regulariser_sign_follows_the_target() {
        let reg = CostRegulariser::new(&[100, 300], 0.5, 0.1);
        assert_eq!(reg.weights, vec![1.0 / 3.0, 1.0]);
        // Block 1 (3x the cost) executed by everyone, block 0 by nobody: fraction 0.75 > target.
        let gates = vec![Array1::from(vec![0.0, 0.0]), Array1::from(vec![1.0, 1.0])];
        let f = reg.executed_fraction(&gates);
        assert!((f - 0.75).abs() < 1e-6);
        let (loss, grad) = reg.loss_and_grad(&gates);
        assert!(
            loss > 0.0 && grad.iter().all(|&g| g > 0.0),
            "above target: penalise execution"
        );
        assert!((grad[1] - 0.1 / 2.0).abs() < 1e-7 && (grad[0] - 0.1 / 6.0).abs() < 1e-7);
        let gates = vec![Array1::from(vec![1.0, 1.0]), Array1::from(vec![0.0, 0.0])];
        assert!((reg.executed_fraction(&gates) - 0.25).abs() < 1e-6);
        let (_, grad) = reg.loss_and_grad(&gates);
        assert!(
            grad.iter().all(|&g| g < 0.0),
            "below target: reward execution"
        );
        // Exactly at the target counts as below (r = -1), as in the reference.
        assert_eq!(reg.sign(0.5), -1.0);
    }
}
