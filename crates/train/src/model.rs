//! Networks (CIFAR ResNet, small MobileNetV2) with SLU gating of residual blocks.
//!
//! Which blocks are gated: every residual block except the network's first block (block 0 always
//! runs, as in the reference) and, by default, except the shape-changing ones. For a CIFAR ResNet
//! that is every BasicBlock after the first whose shortcut is the identity; with
//! `MethodConfig::slu_gate_downsample` (the reference's choice) also the downsampling blocks, where a
//! skipped sample takes the 1x1 strided shortcut alone (ResNet-8 has no other gateable block, so
//! there they are gated either way). That projection is a poor stand-in for the block: ResNet-20, smd+slu, 6,000 images x 2 epochs, target 0.5, seed 0 reached 37.5% with them
//! gated and 53.4% without (docs/results.md, session 5). For MobileNetV2 only the inverted residual
//! blocks with stride 1 and equal channels have a shortcut (a skipped sample passes unchanged).
//!
//! Per gated block, only executed samples are gathered and run through the body, forward and
//! backward; skipped samples cost no body work. The shortcut runs on every sample.
//!
//! Straight-through gradient of a gate decision: dL/dp = dL/dm = <dL/dy, B(x) - S(x)> for an
//! executed sample. For a skipped sample B(x) was never computed (that is the saving), so its task
//! gradient is zero and only the cost regulariser acts on its p (the reference computes every block
//! and masks, so it also has the task term for skipped samples).
//!
//! BatchNorm in a gated block sees only the executed samples: batch statistics over them, running
//! statistics updated from them (momentum 0.1); a block with no executed sample is skipped entirely
//! (no BN update, zero gradients, but the optimizer still applies momentum/weight decay to it).

use crate::backend::Backend;
use crate::blocks::{BasicBlock, Block, InvertedResidual};
use crate::gate::Gate;
use crate::layers::{BatchNorm, Clamp, Conv2d, Ctx, Linear, Param, gap, gap_backward};
use e2t_core::ModelKind;
use ndarray::{Array1, Array2, Array4, Axis, Zip};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Names (suffixes) of the BatchNorm whose output joins the shortcut, per block type in
/// `blocks.rs`: BasicBlock's `bn2`, InvertedResidual's `bn_project`.
const RESIDUAL_OUT_BN: [&str; 2] = [".bn2", ".bn_project"];

/// How SLU gates decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// No gating: every block runs (models without SLU).
    Off,
    /// Training: m = 1[p > u], u ~ U(0.5 - w, 0.5 + w) with w = [`Network::gate_noise`] (0.5: the
    /// reference's U(0,1)); straight-through gradient.
    Stochastic,
    /// Evaluation: m = 1[p > 0.5].
    Deterministic,
    /// Soft relaxation (tests): every sample runs, output p·B(x) + (1-p)·S(x).
    Soft,
}

enum Run {
    Plain {
        has_shortcut: bool,
    },
    Gated {
        exec: Vec<usize>,
        coeff: Vec<f32>,
        diff: Option<Array4<f32>>,
        in_hw: (usize, usize),
    },
}

/// Per-forward record of one gated block's decisions.
#[derive(Clone, Debug)]
pub struct GateRecord {
    pub block: String,
    /// Gate probabilities p, one per sample.
    pub p: Array1<f32>,
    /// Decisions (0/1), or p itself under `GateMode::Soft`.
    pub m: Array1<f32>,
    pub executed: u32,
}

pub struct Network {
    pub kind: ModelKind,
    stem: Conv2d,
    stem_bn: BatchNorm,
    stem_act: Clamp,
    blocks: Vec<Box<dyn Block>>,
    head: Option<(Conv2d, BatchNorm, Clamp)>,
    pub fc: Linear,
    pub gate: Option<Gate>,
    /// Per block: gated under SLU.
    gated: Vec<bool>,
    /// Per block: output shape equals input shape (the shortcut is the identity).
    same_shape: Vec<bool>,
    /// Per block: body MACs for one sample.
    block_macs: Vec<u64>,
    runs: Vec<Run>,
    pub records: Vec<GateRecord>,
    /// Half-width of the stochastic gate's threshold noise in [0, 0.5]; set per step by the engine.
    pub gate_noise: f32,
    pre_pool_hw: (usize, usize),
}

impl Network {
    /// Build `kind` for `[in_c, h, w]` inputs; `slu` adds the gate, `gate_downsample` also gates
    /// the shape-changing residual blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: ModelKind,
        in_c: usize,
        h: usize,
        w: usize,
        classes: usize,
        slu: bool,
        gate_downsample: bool,
        rng: &mut impl Rng,
    ) -> Result<Self, String> {
        let stem_c = 16;
        let mut blocks: Vec<Box<dyn Block>> = Vec::new();
        let (head, feat) = match kind {
            ModelKind::ResNet { depth } => {
                let n = ModelKind::resnet_blocks_per_stage(depth)
                    .ok_or_else(|| format!("resnet depth {depth} is not 6n+2 with n >= 1"))?;
                let mut cin = stem_c;
                for (si, cout) in [16usize, 32, 64].into_iter().enumerate() {
                    for b in 0..n as usize {
                        let stride = if si > 0 && b == 0 { 2 } else { 1 };
                        blocks.push(Box::new(BasicBlock::new(
                            &format!("stage{}.block{b}", si + 1),
                            cin,
                            cout,
                            stride,
                            rng,
                        )));
                        cin = cout;
                    }
                }
                (None, 64)
            }
            ModelKind::MobileNetV2 => {
                // Width 0.5 of MobileNetV2's first stages, strides adapted to 28x28 / 32x32 inputs.
                let plan: [(usize, usize, usize); 8] = [
                    (1, 8, 1),
                    (6, 12, 2),
                    (6, 12, 1),
                    (6, 16, 2),
                    (6, 16, 1),
                    (6, 16, 1),
                    (6, 32, 1),
                    (6, 32, 1),
                ];
                let mut cin = stem_c;
                for (i, (t, c, s)) in plan.into_iter().enumerate() {
                    blocks.push(Box::new(InvertedResidual::new(
                        &format!("block{i}"),
                        cin,
                        c,
                        s,
                        t,
                        rng,
                    )));
                    cin = c;
                }
                let head = (
                    Conv2d::new("head.conv", cin, 128, 1, 1, rng),
                    BatchNorm::new("head.bn", 128),
                    Clamp::relu6(),
                );
                (Some(head), 128)
            }
        };
        Self::assemble(
            kind,
            in_c,
            (h, w),
            classes,
            (slu, gate_downsample),
            blocks,
            head,
            feat,
            rng,
        )
    }

    /// A model whose blocks have no shortcut (to check that SLU is refused on it).
    #[cfg(test)]
    pub(crate) fn new_from_blocks_for_test(rng: &mut impl Rng) -> Result<Self, String> {
        let blocks: Vec<Box<dyn Block>> = vec![
            Box::new(InvertedResidual::new("block0", 16, 8, 1, 1, rng)),
            Box::new(InvertedResidual::new("block1", 8, 12, 2, 6, rng)),
        ];
        Self::assemble(
            ModelKind::MobileNetV2,
            1,
            (8, 8),
            4,
            (true, true),
            blocks,
            None,
            12,
            rng,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        kind: ModelKind,
        in_c: usize,
        (h, w): (usize, usize),
        classes: usize,
        (slu, gate_downsample): (bool, bool),
        blocks: Vec<Box<dyn Block>>,
        head: Option<(Conv2d, BatchNorm, Clamp)>,
        feat: usize,
        rng: &mut impl Rng,
    ) -> Result<Self, String> {
        let stem_c = 16;
        let stem = Conv2d::new("stem.conv", in_c, stem_c, 3, 1, rng);
        let stem_act = if kind == ModelKind::MobileNetV2 {
            Clamp::relu6()
        } else {
            Clamp::relu()
        };
        // (gateable, keeps its input's shape) per block.
        let mut kinds = Vec::new();
        let mut block_macs = Vec::new();
        let (mut hh, mut ww) = (h, w);
        for (i, b) in blocks.iter().enumerate() {
            let out = b.out_hw(hh, ww);
            let same = out == (hh, ww) && b.in_channels() == b.out_channels();
            kinds.push((i > 0 && b.residual(), same));
            block_macs.push(b.body_macs(hh, ww));
            (hh, ww) = out;
        }
        // A network whose only gateable blocks change shape (ResNet-8) gates those.
        let any_same = kinds.iter().any(|&(g, same)| g && same);
        let gated: Vec<bool> = kinds
            .iter()
            .map(|&(g, same)| g && (same || gate_downsample || !any_same))
            .collect();
        let gate_channels: Vec<usize> = blocks
            .iter()
            .zip(&gated)
            .filter(|&(_, &g)| g)
            .map(|(b, _)| b.in_channels())
            .collect();
        if slu && gate_channels.is_empty() {
            return Err(format!(
                "--slu needs residual blocks after the first block, and {kind} has none"
            ));
        }
        let gate = slu.then(|| Gate::new(&gate_channels, rng));
        let fc = Linear::new("fc", feat, classes, rng);
        Ok(Network {
            kind,
            stem,
            stem_bn: BatchNorm::new("stem.bn", stem_c),
            stem_act,
            blocks,
            head,
            fc,
            gate,
            gated,
            same_shape: kinds.iter().map(|&(_, same)| same).collect(),
            block_macs,
            runs: Vec::new(),
            records: Vec::new(),
            gate_noise: 0.5,
            pre_pool_hw: (0, 0),
        })
    }

    /// Names and per-sample body MACs of the gated blocks, in gate order.
    pub fn gated_blocks(&self) -> Vec<(String, u64)> {
        self.blocks
            .iter()
            .zip(&self.gated)
            .zip(&self.block_macs)
            .filter(|((_, g), _)| **g)
            .map(|((b, _), &m)| (b.name().to_string(), m))
            .collect()
    }

    /// Start every gated block whose shortcut is the identity as the identity
    /// (`MethodConfig::slu_identity_init`): gamma = 0 in the BatchNorm whose output joins the
    /// shortcut (beta is already 0), so B(x) = S(x) whether a sample executes the block or not.
    /// Gated shape-changing blocks (ResNet-8, `--slu-gate-downsample`) keep gamma = 1: zeroed, their
    /// 1x1 projection alone would carry the stage change, and the ResNet-8 demo fell from 70.9% to
    /// 62.0% that way. Returns how many blocks were set.
    pub fn identity_init_gated(&mut self) -> usize {
        let mut set = 0;
        let gated_same = self
            .gated
            .iter()
            .zip(&self.same_shape)
            .map(|(g, s)| *g && *s);
        for (b, _) in self.blocks.iter_mut().zip(gated_same).filter(|(_, g)| *g) {
            let mut found = 0;
            b.visit_bn(&mut |bn| {
                if RESIDUAL_OUT_BN.iter().any(|s| bn.name.ends_with(s)) {
                    bn.gamma.value.fill(0.0);
                    found += 1;
                }
            });
            // A new block type must name its residual-output BN here; the test of this function
            // fails for every model otherwise.
            debug_assert_eq!(found, 1, "block {} has no residual-output BN", b.name());
            set += found.min(1);
        }
        set
    }

    pub fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.stem.w);
        f(&mut self.stem_bn.gamma);
        f(&mut self.stem_bn.beta);
        for b in &mut self.blocks {
            b.visit_params(f);
        }
        if let Some((c, bn, _)) = &mut self.head {
            f(&mut c.w);
            f(&mut bn.gamma);
            f(&mut bn.beta);
        }
        f(&mut self.fc.w);
        f(&mut self.fc.b);
        if let Some(g) = &mut self.gate {
            g.visit_params(f);
        }
    }

    /// Read-only walk in [`Network::visit_params`] order.
    pub fn for_each_param(&self, f: &mut dyn FnMut(&Param)) {
        f(&self.stem.w);
        f(&self.stem_bn.gamma);
        f(&self.stem_bn.beta);
        for b in &self.blocks {
            b.for_each_param(f);
        }
        if let Some((c, bn, _)) = &self.head {
            f(&c.w);
            f(&bn.gamma);
            f(&bn.beta);
        }
        f(&self.fc.w);
        f(&self.fc.b);
        if let Some(g) = &self.gate {
            g.for_each_param(f);
        }
    }

    pub fn for_each_bn(&self, f: &mut dyn FnMut(&BatchNorm)) {
        f(&self.stem_bn);
        for b in &self.blocks {
            b.for_each_bn(f);
        }
        if let Some((_, bn, _)) = &self.head {
            f(bn);
        }
    }

    pub fn visit_bn(&mut self, f: &mut dyn FnMut(&mut BatchNorm)) {
        f(&mut self.stem_bn);
        for b in &mut self.blocks {
            b.visit_bn(f);
        }
        if let Some((_, bn, _)) = &mut self.head {
            f(bn);
        }
    }

    /// Forward pass; `ctx.train` sets BN mode and caching for the backbone, `head_train` caching for
    /// the classifier (fine-tuning trains the classifier over a frozen backbone).
    pub fn forward(
        &mut self,
        be: &mut dyn Backend,
        x: &Array4<f32>,
        ctx: Ctx,
        head_train: bool,
        mode: GateMode,
        rng: &mut ChaCha8Rng,
    ) -> Array2<f32> {
        let n = x.dim().0;
        let y = self.stem.forward(be, x, ctx);
        let y = self.stem_bn.forward(y, ctx);
        let mut y = self.stem_act.forward(y, ctx);
        let gating = mode != GateMode::Off && self.gate.is_some();
        if let (true, Some(g)) = (gating, self.gate.as_mut()) {
            g.reset(n);
        }
        self.runs.clear();
        self.records.clear();
        for bi in 0..self.blocks.len() {
            let block = &mut self.blocks[bi];
            if !(gating && self.gated[bi]) {
                let s = block.shortcut_forward(be, &y, ctx);
                let out = block.body_forward(be, &y, s.as_ref(), ctx);
                self.runs.push(Run::Plain {
                    has_shortcut: s.is_some(),
                });
                y = out;
                continue;
            }
            let (_, h, w, _) = y.dim();
            let gate = self.gate.as_mut().expect("gating implies a gate");
            let p = gate.step(gap(&y));
            let m: Array1<f32> = match mode {
                GateMode::Stochastic => {
                    let w = self.gate_noise;
                    p.mapv(|p| {
                        let u = rng.random::<f32>();
                        // At full width use u itself: the reference's rule, bit for bit.
                        let t = if w >= 0.5 {
                            u
                        } else {
                            0.5 + w * (2.0 * u - 1.0)
                        };
                        if p > t { 1.0 } else { 0.0 }
                    })
                }
                GateMode::Deterministic => p.mapv(|p| if p > 0.5 { 1.0 } else { 0.0 }),
                GateMode::Soft | GateMode::Off => p.clone(),
            };
            let exec: Vec<usize> = if mode == GateMode::Soft {
                (0..n).collect()
            } else {
                (0..n).filter(|&i| m[i] > 0.0).collect()
            };
            let coeff: Vec<f32> = exec.iter().map(|&i| m[i]).collect();
            let s_all = block
                .shortcut_forward(be, &y, ctx)
                .expect("gated blocks have a shortcut");
            let mut out = s_all.clone();
            let mut diff = None;
            if !exec.is_empty() {
                let (xe, se) = if exec.len() == n {
                    (y.clone(), s_all.clone())
                } else {
                    (y.select(Axis(0), &exec), s_all.select(Axis(0), &exec))
                };
                let bo = block.body_forward(be, &xe, Some(&se), ctx);
                for (j, &i) in exec.iter().enumerate() {
                    let c = coeff[j];
                    let mut o = out.index_axis_mut(Axis(0), i);
                    if c == 1.0 {
                        o.assign(&bo.index_axis(Axis(0), j));
                    } else {
                        Zip::from(&mut o)
                            .and(bo.index_axis(Axis(0), j))
                            .for_each(|o, &b| *o = c * b + (1.0 - c) * *o);
                    }
                }
                if ctx.train {
                    diff = Some(bo - &se);
                }
            }
            self.records.push(GateRecord {
                block: block.name().to_string(),
                p,
                m,
                executed: if mode == GateMode::Soft {
                    n as u32
                } else {
                    exec.len() as u32
                },
            });
            self.runs.push(Run::Gated {
                exec,
                coeff,
                diff,
                in_hw: (h, w),
            });
            y = out;
        }
        if let Some((c, bn, act)) = &mut self.head {
            let t = c.forward(be, &y, ctx);
            let t = bn.forward(t, ctx);
            y = act.forward(t, ctx);
        }
        self.pre_pool_hw = (y.dim().1, y.dim().2);
        let feat = gap(&y);
        self.fc.forward(
            be,
            &feat,
            Ctx {
                train: head_train,
                ..ctx
            },
        )
    }

    /// Backward of the classifier only (fine-tuning of the last layer).
    pub fn backward_head(&mut self, be: &mut dyn Backend, dlogits: &Array2<f32>) {
        self.fc.backward(be, dlogits, false);
    }

    /// Full backward. `dm_reg[k]` is the cost regulariser's dL/dm for gated step k (same for every
    /// sample); it reaches the gate through the straight-through estimator.
    pub fn backward(
        &mut self,
        be: &mut dyn Backend,
        dlogits: &Array2<f32>,
        psg: bool,
        dm_reg: &[f32],
    ) {
        let dfeat = self.fc.backward(be, dlogits, true).expect("need_dx");
        let (h, w) = self.pre_pool_hw;
        let mut d = gap_backward(&dfeat, h, w);
        if let Some((c, bn, act)) = &mut self.head {
            let t = act.backward(d);
            let t = bn.backward(t);
            d = c.backward(be, &t, true, psg).expect("need_dx");
        }
        let mut step = dm_reg.len();
        let runs = std::mem::take(&mut self.runs);
        for (bi, run) in runs.into_iter().enumerate().rev() {
            let block = &mut self.blocks[bi];
            d = match run {
                Run::Plain { has_shortcut } => {
                    let (mut dx, ds) = block.body_backward(be, d, psg);
                    if has_shortcut {
                        let ds = ds.expect("a block with shortcut returns dL/ds");
                        crate::blocks::add_assign(&mut dx, &block.shortcut_backward(be, ds, psg));
                    }
                    dx
                }
                Run::Gated {
                    exec,
                    coeff,
                    diff,
                    in_hw,
                } => {
                    step -= 1;
                    let n = d.dim().0;
                    let mut dp = Array1::<f32>::from_elem(n, dm_reg[step]);
                    let mut dx = if exec.is_empty() {
                        block.shortcut_backward(be, d, psg)
                    } else {
                        let diff = diff.expect("training forward keeps B(x) - S(x)");
                        let mut dye = if exec.len() == n {
                            d.clone()
                        } else {
                            d.select(Axis(0), &exec)
                        };
                        for (j, &i) in exec.iter().enumerate() {
                            dp[i] +=
                                (&d.index_axis(Axis(0), i) * &diff.index_axis(Axis(0), j)).sum();
                            if coeff[j] != 1.0 {
                                dye.index_axis_mut(Axis(0), j)
                                    .mapv_inplace(|v| v * coeff[j]);
                            }
                        }
                        let (dxe, dse) = block.body_backward(be, dye, psg);
                        let dse = dse.expect("gated blocks have a shortcut");
                        let mut ds = d;
                        for (j, &i) in exec.iter().enumerate() {
                            let c = coeff[j];
                            Zip::from(ds.index_axis_mut(Axis(0), i))
                                .and(dse.index_axis(Axis(0), j))
                                .for_each(|a, &b| *a = (1.0 - c) * *a + b);
                        }
                        let mut dx = block.shortcut_backward(be, ds, psg);
                        for (j, &i) in exec.iter().enumerate() {
                            let mut r = dx.index_axis_mut(Axis(0), i);
                            r += &dxe.index_axis(Axis(0), j);
                        }
                        dx
                    };
                    let gate = self.gate.as_mut().expect("gated run implies a gate");
                    let dg = gate.backward_step(&dp);
                    dx += &gap_backward(&dg, in_hw.0, in_hw.1);
                    dx
                }
            };
        }
        let d = self.stem_act.backward(d);
        let d = self.stem_bn.backward(d);
        self.stem.backward(be, &d, false, psg);
    }
}
