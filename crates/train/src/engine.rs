//! `E2TrainEngine`: the E2-Train [`StepEngine`] (baseline INT16, SLU, PSG; SMD is decided on the host).

use crate::backend::{Backend, Fp32Backend};
use crate::gate::CostRegulariser;
use crate::layers::{Ctx, Param, softmax_ce};
use crate::model::{GateMode, Network};
use bincode::Options;
use e2t_core::{
    Batch, Counters, EngineConfig, EngineError, EvalResult, LayerPsgStats, Mode, ModelKind,
    Precision, PsgThreshold, StepDiag, StepEngine, StepResult, TrainOnly,
};
use e2t_nn::engine::normalize_images;
use ndarray::{Array1, Array4};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Images per forward pass in `evaluate` (bounds memory whatever the test set size).
pub const EVAL_BATCH: usize = 256;

/// The E2-Train engine: the model's conv/linear GEMMs on a [`Backend`] (soft accelerator or fp32);
/// BN, activations, pooling, loss, gate and optimizer in fp32.
pub struct E2TrainEngine {
    cfg: EngineConfig,
    net: Network,
    backend: Box<dyn Backend>,
    reg: Option<CostRegulariser>,
    /// Draws the SLU gates' uniforms (weights were drawn from the same stream at build time).
    rng: ChaCha8Rng,
    counters: Counters,
    steps: u64,
    last_seq: Option<u64>,
}

/// Checks what this engine depends on in an [`EngineConfig`].
pub fn validate_config(cfg: &EngineConfig) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Config(m));
    if let ModelKind::ResNet { depth } = cfg.model {
        if ModelKind::resnet_blocks_per_stage(depth).is_none() {
            return bad(format!("resnet depth {depth} is not 6n+2 with n >= 1"));
        }
    }
    let s = cfg.input;
    if s.channels == 0 || s.height < 8 || s.width < 8 {
        return bad(format!(
            "input must have >= 1 channel and be at least 8x8, got {}x{}x{}",
            s.channels, s.height, s.width
        ));
    }
    let c = s.channels as usize;
    if cfg.mean.len() != c || cfg.std.len() != c {
        return bad(format!(
            "mean/std need one entry per input channel ({c}), got {} and {}",
            cfg.mean.len(),
            cfg.std.len()
        ));
    }
    if cfg.std.iter().any(|v| !(v.is_finite() && *v > 0.0))
        || cfg.mean.iter().any(|v| !v.is_finite())
    {
        return bad("mean entries must be finite and std entries finite and > 0".into());
    }
    if !(2..=256).contains(&cfg.classes) {
        return bad(format!(
            "classes must be in 2..=256 (labels are u8), got {}",
            cfg.classes
        ));
    }
    if !(cfg.momentum.is_finite() && (0.0..1.0).contains(&cfg.momentum)) {
        return bad(format!("momentum must be in [0, 1), got {}", cfg.momentum));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return bad(format!(
            "weight decay must be >= 0, got {}",
            cfg.weight_decay
        ));
    }
    let m = &cfg.method;
    if m.slu {
        if !(m.slu_target.is_finite() && (0.0..=1.0).contains(&m.slu_target)) {
            return bad(format!(
                "slu target must be in [0, 1], got {}",
                m.slu_target
            ));
        }
        if !(m.slu_beta.is_finite() && m.slu_beta >= 0.0) {
            return bad(format!(
                "slu beta must be finite and >= 0, got {}",
                m.slu_beta
            ));
        }
        if !(m.slu_noise_peak_lr.is_finite() && m.slu_noise_peak_lr >= 0.0) {
            return bad(format!(
                "slu gate-noise peak learning rate must be finite and >= 0 (0 = no annealing), got {}",
                m.slu_noise_peak_lr
            ));
        }
    }
    if m.psg {
        if m.precision == Precision::Fp32 {
            return bad("--psg predicts gradient signs on the accelerator: it needs accelerator precision, not fp32".into());
        }
        let (PsgThreshold::Absolute(t) | PsgThreshold::Adaptive(t)) = m.psg_threshold;
        if !(t.is_finite() && t >= 0.0) {
            return bad(format!("psg threshold must be finite and >= 0, got {t}"));
        }
    }
    if m.precision == Precision::Accel && (cfg.array.0 == 0 || cfg.array.1 == 0) {
        return bad(format!(
            "accelerator array must be at least 1x1, got {}x{}",
            cfg.array.0, cfg.array.1
        ));
    }
    Ok(())
}

impl E2TrainEngine {
    /// Builds model and optimizer on the given backend.
    pub fn with_backend(cfg: EngineConfig, backend: Box<dyn Backend>) -> Result<Self, EngineError> {
        validate_config(&cfg)?;
        // Activations and patch matrices are freed and re-allocated every step: keep them in the
        // process instead of paying page faults each time (see `e2t_nn::keep_freed_memory`).
        e2t_nn::keep_freed_memory();
        if cfg.method.psg && !backend.supports_psg() {
            return Err(EngineError::Config(
                "--psg needs a backend that predicts gradient signs (the accelerator)".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let s = cfg.input;
        let mut net = Network::new(
            cfg.model,
            s.channels as usize,
            s.height as usize,
            s.width as usize,
            cfg.classes as usize,
            cfg.method.slu,
            cfg.method.slu_gate_downsample,
            &mut rng,
        )
        .map_err(EngineError::Config)?;
        if cfg.method.slu && cfg.method.slu_identity_init {
            net.identity_init_gated();
        }
        let reg = cfg.method.slu.then(|| {
            let macs: Vec<u64> = net.gated_blocks().iter().map(|(_, m)| *m).collect();
            CostRegulariser::new(&macs, cfg.method.slu_target, cfg.method.slu_beta)
        });
        if cfg.train_only == TrainOnly::Last {
            net.visit_params(&mut |p| p.trainable = p.name.starts_with("fc."));
        }
        Ok(E2TrainEngine {
            cfg,
            net,
            backend,
            reg,
            rng,
            counters: Counters::default(),
            steps: 0,
            last_seq: None,
        })
    }

    /// fp32 GEMMs (`e2t_nn::Fp32Gemm`): the E2-Train model without the accelerator (SLU in fp32,
    /// MobileNetV2 in fp32).
    pub fn fp32(cfg: EngineConfig) -> Result<Self, EngineError> {
        Self::with_backend(
            cfg,
            Box::new(Fp32Backend::new(e2t_nn::Fp32Gemm::from_rayon())),
        )
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Names and per-sample MACs of the SLU-gated blocks.
    pub fn gated_blocks(&self) -> Vec<(String, u64)> {
        self.net.gated_blocks()
    }

    /// Cost regulariser in use (SLU only).
    pub fn regulariser(&self) -> Option<&CostRegulariser> {
        self.reg.as_ref()
    }

    fn check_samples(&self, images: &[u8], labels: &[u8]) -> Result<(), String> {
        let px = self.cfg.input.pixels();
        if images.len() != labels.len() * px {
            return Err(format!(
                "{} image bytes for {} labels, expected {} ({px} per image)",
                images.len(),
                labels.len(),
                labels.len() * px
            ));
        }
        if let Some(l) = labels.iter().find(|&&l| l as u32 >= self.cfg.classes) {
            return Err(format!(
                "label {l} out of range for {} classes",
                self.cfg.classes
            ));
        }
        Ok(())
    }

    fn to_input(&self, images: &[u8], n: usize) -> Array4<f32> {
        let s = self.cfg.input;
        normalize_images(
            images,
            n,
            s.channels as usize,
            s.height as usize,
            s.width as usize,
            &self.cfg.mean,
            &self.cfg.std,
        )
    }

    /// Gates at evaluation (and BN calibration): deterministic p > 0.5.
    fn eval_gates(&self) -> GateMode {
        if self.cfg.method.slu {
            GateMode::Deterministic
        } else {
            GateMode::Off
        }
    }

    fn fwd_mode(&self) -> Mode {
        if self.cfg.method.psg {
            Mode::Int8
        } else {
            Mode::Int16
        }
    }

    fn book_counters(&mut self, before: &Counters) -> Counters {
        let d = self.backend.counters().delta_since(before);
        self.counters.accumulate(&d);
        d
    }

    /// Per-layer PSG statistics, with a depthwise layer's per-channel GEMMs (`name#c`) merged.
    fn psg_diag(&mut self) -> Vec<LayerPsgStats> {
        let mut merged: BTreeMap<String, LayerPsgStats> = BTreeMap::new();
        let mut order = Vec::new();
        for s in self.backend.take_psg_stats() {
            let name = s.layer.split('#').next().unwrap_or(&s.layer).to_string();
            let e = merged.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                LayerPsgStats {
                    layer: name,
                    ..Default::default()
                }
            });
            e.predicted += s.predicted;
            e.uncertain += s.uncertain;
            e.tiles += s.tiles;
            e.recomputed_tiles += s.recomputed_tiles;
        }
        order
            .into_iter()
            .filter_map(|n| merged.remove(&n))
            .collect()
    }

    /// Loads weights and BN statistics from a checkpoint of the same model shape (any method), keeping
    /// this engine's optimizer state, RNG and counters: `--init CHECKPOINT` for fine-tuning. Gate
    /// parameters are loaded when both have a gate; a checkpoint without one leaves the gate fresh.
    pub fn load_weights_from_checkpoint(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let ck = decode(bytes)?;
        self.check_shape(&ck.config)?;
        let params: BTreeMap<&str, &Named> =
            ck.params.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut missing = None;
        self.net
            .visit_params(&mut |p| match params.get(p.name.as_str()) {
                Some(src) if src.value.len() == p.value.len() => {}
                Some(_) => {
                    missing = Some(format!(
                        "parameter '{}' has a different size in the checkpoint",
                        p.name
                    ))
                }
                None if p.name.starts_with("gate.") => {}
                None => {
                    missing = Some(format!(
                        "parameter '{}' is missing from the checkpoint",
                        p.name
                    ))
                }
            });
        if let Some(m) = missing {
            return Err(EngineError::Checkpoint(m));
        }
        self.net.visit_params(&mut |p| {
            if let Some(src) = params.get(p.name.as_str()) {
                p.value
                    .iter_mut()
                    .zip(&src.value)
                    .for_each(|(d, s)| *d = *s);
            }
        });
        self.apply_bn(&ck.bn)
    }

    fn check_shape(&self, other: &EngineConfig) -> Result<(), EngineError> {
        if other.model != self.cfg.model
            || other.input != self.cfg.input
            || other.classes != self.cfg.classes
        {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint is for {} on {:?} with {} classes, this engine is {} on {:?} with {} classes",
                other.model,
                other.input,
                other.classes,
                self.cfg.model,
                self.cfg.input,
                self.cfg.classes
            )));
        }
        Ok(())
    }

    fn apply_bn(&mut self, bn: &[NamedBn]) -> Result<(), EngineError> {
        let mut want = Vec::new();
        self.net
            .visit_bn(&mut |b| want.push((b.name.clone(), b.running_mean.len())));
        if want.len() != bn.len()
            || want
                .iter()
                .zip(bn)
                .any(|((n, l), b)| *n != b.name || *l != b.mean.len() || *l != b.var.len())
        {
            return Err(EngineError::Checkpoint(
                "BatchNorm statistics do not match this model".into(),
            ));
        }
        let mut it = bn.iter();
        self.net.visit_bn(&mut |b| {
            let src = it.next().expect("lengths checked");
            b.running_mean.copy_from_slice(&src.mean);
            b.running_var.copy_from_slice(&src.var);
        });
        Ok(())
    }

    /// Relaxed forward for tests: every sample runs every block, output p·B(x) + (1-p)·S(x); returns
    /// the total loss CE + regulariser (with r fixed by the relaxed executed fraction).
    #[cfg(test)]
    pub(crate) fn soft_loss_and_grads(
        &mut self,
        images: &[u8],
        labels: &[u8],
    ) -> (f32, Vec<(String, ndarray::Array2<f32>)>) {
        let x = self.to_input(images, labels.len());
        self.net.visit_params(&mut |p| p.zero_grad());
        let ctx = Ctx {
            train: true,
            fwd_mode: self.fwd_mode(),
        };
        let logits = self.net.forward(
            self.backend.as_mut(),
            &x,
            ctx,
            true,
            GateMode::Soft,
            &mut self.rng,
        );
        let (loss, _, dl) = softmax_ce(&logits, labels);
        let ps: Vec<Array1<f32>> = self.net.records.iter().map(|r| r.m.clone()).collect();
        let (rl, dm) = self
            .reg
            .as_ref()
            .map(|r| r.loss_and_grad(&ps))
            .unwrap_or((0.0, vec![]));
        self.net.backward(self.backend.as_mut(), &dl, false, &dm);
        let mut grads = Vec::new();
        self.net
            .visit_params(&mut |p| grads.push((p.name.clone(), p.grad.clone())));
        (loss + rl, grads)
    }

    #[cfg(test)]
    pub(crate) fn net_mut(&mut self) -> &mut Network {
        &mut self.net
    }
}

impl StepEngine for E2TrainEngine {
    fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn load_weights(&mut self, checkpoint: &[u8]) -> Result<(), EngineError> {
        self.load_weights_from_checkpoint(checkpoint)
    }

    fn step(&mut self, batch: &Batch) -> Result<StepResult, EngineError> {
        let bad = |reason: String| EngineError::Batch {
            seq: batch.seq,
            reason,
        };
        batch.check_step(self.last_seq)?;
        self.check_samples(&batch.images, &batch.labels)
            .map_err(bad)?;
        let n = batch.len();
        let x = self.to_input(&batch.images, n);
        self.backend.begin_step(self.steps);
        let before = self.backend.counters();
        // Phases count this step only (evaluation between steps is not training work).
        let _ = self.backend.take_phase_counters();
        self.net.visit_params(&mut |p| p.zero_grad());
        // A step ends any BN calibration: training statistics follow with momentum 0.1 again.
        self.net.visit_bn(&mut |b| b.calib_seen = None);
        let all = self.cfg.train_only == TrainOnly::All;
        // Fine-tuning the last layer keeps the backbone (BN statistics, gates) frozen: eval mode.
        let ctx = Ctx {
            train: all,
            fwd_mode: self.fwd_mode(),
        };
        let mode = match (self.cfg.method.slu, all) {
            (false, _) => GateMode::Off,
            (true, true) => GateMode::Stochastic,
            (true, false) => GateMode::Deterministic,
        };
        self.net.gate_noise = self.cfg.method.slu_noise_half_width(batch.lr);
        let logits = self
            .net
            .forward(self.backend.as_mut(), &x, ctx, true, mode, &mut self.rng);
        drop(x);
        let (loss, correct, dlogits) = softmax_ce(&logits, &batch.labels);
        if !loss.is_finite() {
            return Err(bad(format!(
                "loss is not finite ({loss}); training diverged"
            )));
        }
        if all {
            let ms: Vec<Array1<f32>> = self.net.records.iter().map(|r| r.m.clone()).collect();
            let dm = self
                .reg
                .as_ref()
                .map(|r| r.loss_and_grad(&ms).1)
                .unwrap_or_default();
            self.net
                .backward(self.backend.as_mut(), &dlogits, self.cfg.method.psg, &dm);
        } else {
            self.net.backward_head(self.backend.as_mut(), &dlogits);
        }
        // An accelerator error zeroes the affected GEMM output: refuse to apply such a step.
        if let Some(e) = self.backend.take_error() {
            self.book_counters(&before);
            return Err(EngineError::Accelerator(format!(
                "step {}: {e}; the update was not applied",
                batch.seq
            )));
        }
        let (lr, m, wd) = (batch.lr, self.cfg.momentum, self.cfg.weight_decay);
        let sign_lr = if self.cfg.method.psg {
            lr * self.cfg.method.psg_lr_scale
        } else {
            lr
        };
        self.net.visit_params(&mut |p: &mut Param| {
            if p.trainable {
                p.sgd_step(if p.conv_weight { sign_lr } else { lr }, m, wd);
            }
        });
        let counters = self.book_counters(&before);
        let slu_executed = self
            .net
            .records
            .iter()
            .map(|r| (r.block.clone(), r.executed, n as u32))
            .collect();
        let slu_decisive = self
            .net
            .records
            .iter()
            .map(|r| {
                let n = r.p.iter().filter(|&&p| (p - 0.5).abs() >= 0.25).count();
                (r.block.clone(), n as u32)
            })
            .collect();
        let diag = StepDiag {
            psg: self.psg_diag(),
            slu_executed,
            slu_decisive,
            phases: self.backend.take_phase_counters(),
        };
        self.steps += 1;
        self.last_seq = Some(batch.seq);
        Ok(StepResult {
            seq: batch.seq,
            loss,
            correct,
            samples: n as u32,
            counters,
            power: Vec::new(),
            diag,
        })
    }

    /// The reference's step on a dropped batch: zero gradient, so `buf = m·buf + wd·w; w -= lr·buf`.
    /// Before the first real step there is no momentum and no update (PyTorch's grads are `None`).
    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(EngineError::Config(format!(
                "skip_step: learning rate must be finite and >= 0, got {lr}"
            )));
        }
        if self.steps == 0 {
            return Ok(());
        }
        let (m, wd) = (self.cfg.momentum, self.cfg.weight_decay);
        let sign_lr = if self.cfg.method.psg {
            lr * self.cfg.method.psg_lr_scale
        } else {
            lr
        };
        self.net.visit_params(&mut |p| {
            if p.trainable {
                p.zero_grad();
                p.sgd_step(if p.conv_weight { sign_lr } else { lr }, m, wd);
            }
        });
        Ok(())
    }

    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError> {
        self.check_samples(images, labels)
            .map_err(|reason| EngineError::Batch {
                seq: u64::MAX,
                reason: format!("evaluation set: {reason}"),
            })?;
        let px = self.cfg.input.pixels();
        let before = self.backend.counters();
        let ctx = Ctx {
            train: false,
            fwd_mode: self.fwd_mode(),
        };
        let mode = self.eval_gates();
        let mut total = EvalResult::default();
        self.backend.set_eval(true);
        for (imgs, labs) in images
            .chunks(EVAL_BATCH * px)
            .zip(labels.chunks(EVAL_BATCH))
        {
            let x = self.to_input(imgs, labs.len());
            let logits =
                self.net
                    .forward(self.backend.as_mut(), &x, ctx, false, mode, &mut self.rng);
            let (loss, correct, _) = softmax_ce(&logits, labs);
            total.merge(&EvalResult {
                loss_sum: loss as f64 * labs.len() as f64,
                correct: correct as u64,
                samples: labs.len() as u64,
            });
        }
        self.backend.set_eval(false);
        self.book_counters(&before);
        if let Some(e) = self.backend.take_error() {
            return Err(EngineError::Accelerator(format!("evaluation: {e}")));
        }
        // Evaluation GEMMs report no PSG statistics, but drain whatever the backend kept.
        let _ = self.backend.take_psg_stats();
        Ok(total)
    }

    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError> {
        let bad = |reason: String| EngineError::Batch {
            seq: u64::MAX,
            reason: format!("BN calibration chunk {index}: {reason}"),
        };
        let px = self.cfg.input.pixels();
        if images.is_empty() || images.len() % px != 0 {
            return Err(bad(format!(
                "{} image bytes is not a positive multiple of {px} (one image)",
                images.len()
            )));
        }
        let mut started = true;
        self.net
            .visit_bn(&mut |b| started &= b.calib_seen.is_some());
        if index == 0 {
            self.net.visit_bn(&mut |b| b.calib_seen = Some(0));
        } else if !started {
            return Err(bad("chunks must start at index 0".into()));
        }
        let before = self.backend.counters();
        // Training-mode BN (batch statistics), evaluation gates: the statistics of the network that
        // evaluation runs. Nothing is backpropagated; the caches are dropped by the next step.
        let ctx = Ctx {
            train: true,
            fwd_mode: self.fwd_mode(),
        };
        let mode = self.eval_gates();
        self.backend.set_eval(true);
        for chunk in images.chunks(EVAL_BATCH * px) {
            let x = self.to_input(chunk, chunk.len() / px);
            self.net
                .forward(self.backend.as_mut(), &x, ctx, false, mode, &mut self.rng);
        }
        self.backend.set_eval(false);
        self.book_counters(&before);
        let _ = self.backend.take_psg_stats();
        if let Some(e) = self.backend.take_error() {
            return Err(EngineError::Accelerator(format!("BN calibration: {e}")));
        }
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters
    }

    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        let mut params = Vec::new();
        self.net.for_each_param(&mut |p| {
            params.push(Named {
                name: p.name.clone(),
                value: p.value.iter().copied().collect(),
                mom: p.mom.iter().copied().collect(),
            })
        });
        let mut bn = Vec::new();
        self.net.for_each_bn(&mut |b| {
            bn.push(NamedBn {
                name: b.name.clone(),
                mean: b.running_mean.clone(),
                var: b.running_var.clone(),
            })
        });
        let ck = Checkpoint {
            config: self.cfg.clone(),
            params,
            bn,
            rng_seed: self.rng.get_seed(),
            rng_stream: self.rng.get_stream(),
            rng_word_pos_lo: self.rng.get_word_pos() as u64,
            rng_word_pos_hi: (self.rng.get_word_pos() >> 64) as u64,
            counters: self.counters,
            steps: self.steps,
            last_seq: self.last_seq,
            backend: self.backend.state(),
        };
        encode(&ck)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let ck = decode(bytes)?;
        if ck.config != self.cfg {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint was written by a different configuration ({} {}, seed {}); this engine is {} {}, seed {}",
                ck.config.model,
                ck.config.method.label(),
                ck.config.seed,
                self.cfg.model,
                self.cfg.method.label(),
                self.cfg.seed
            )));
        }
        let mut want = Vec::new();
        self.net
            .for_each_param(&mut |p| want.push((p.name.clone(), p.value.len())));
        if want.len() != ck.params.len()
            || want
                .iter()
                .zip(&ck.params)
                .any(|((n, l), c)| *n != c.name || *l != c.value.len() || *l != c.mom.len())
        {
            return Err(EngineError::Checkpoint(
                "parameters do not match this model".into(),
            ));
        }
        let mut want_bn = Vec::new();
        self.net
            .for_each_bn(&mut |b| want_bn.push((b.name.clone(), b.running_mean.len())));
        if want_bn.len() != ck.bn.len()
            || want_bn
                .iter()
                .zip(&ck.bn)
                .any(|((n, l), b)| *n != b.name || *l != b.mean.len() || *l != b.var.len())
        {
            return Err(EngineError::Checkpoint(
                "BatchNorm statistics do not match this model".into(),
            ));
        }
        self.backend
            .set_state(&ck.backend)
            .map_err(|e| EngineError::Checkpoint(format!("accelerator state: {e}")))?;
        let mut it = ck.params.iter();
        self.net.visit_params(&mut |p| {
            let src = it.next().expect("lengths checked");
            p.value
                .iter_mut()
                .zip(&src.value)
                .for_each(|(d, s)| *d = *s);
            p.mom.iter_mut().zip(&src.mom).for_each(|(d, s)| *d = *s);
            p.zero_grad();
        });
        self.apply_bn(&ck.bn)?;
        let mut rng = ChaCha8Rng::from_seed(ck.rng_seed);
        rng.set_stream(ck.rng_stream);
        rng.set_word_pos(((ck.rng_word_pos_hi as u128) << 64) | ck.rng_word_pos_lo as u128);
        self.rng = rng;
        self.counters = ck.counters;
        self.steps = ck.steps;
        self.last_seq = ck.last_seq;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Named {
    name: String,
    value: Vec<f32>,
    mom: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct NamedBn {
    name: String,
    mean: Vec<f32>,
    var: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    config: EngineConfig,
    params: Vec<Named>,
    bn: Vec<NamedBn>,
    rng_seed: [u8; 32],
    rng_stream: u64,
    rng_word_pos_lo: u64,
    rng_word_pos_hi: u64,
    counters: Counters,
    steps: u64,
    last_seq: Option<u64>,
    backend: Vec<u8>,
}

/// Bumped whenever the payload's layout changes (bincode has no optional fields): 2 added
/// `MethodConfig::psg_fallback`; 3 `slu_gate_downsample` and `slu_noise_peak_lr`; 4
/// `slu_identity_init`.
const MAGIC: [u8; 8] = *b"E2TRAIN4";
/// Headers of older layouts, named in the error instead of a decode failure.
const OLD_MAGICS: [&[u8; 8]; 3] = [b"E2TRAIN1", b"E2TRAIN2", b"E2TRAIN3"];
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn bincode_opts() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// `MAGIC | bincode payload | crc32(payload) LE`.
fn encode(ck: &Checkpoint) -> Result<Vec<u8>, EngineError> {
    let payload = bincode_opts()
        .serialize(ck)
        .map_err(|e| EngineError::Checkpoint(format!("encoding failed: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&CRC.checksum(&payload).to_le_bytes());
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Checkpoint, EngineError> {
    let err = |m: String| EngineError::Checkpoint(m);
    if bytes.starts_with(b"E2TNNCK1") {
        return Err(err("this is a checkpoint of the fp32 engine (e2t-nn); the E2-Train engine reads only its own \
             checkpoints (train the initial model with an accelerator method or with --slu)"
            .into()));
    }
    if OLD_MAGICS.iter().any(|m| bytes.starts_with(&m[..])) {
        return Err(err(format!(
            "written by an older e2train ({:?} header; this version reads {:?}): it cannot be \
             resumed or used with --init",
            String::from_utf8_lossy(&bytes[..8]),
            String::from_utf8_lossy(&MAGIC)
        )));
    }
    if bytes.len() < MAGIC.len() + 4 || bytes[..MAGIC.len()] != MAGIC {
        return Err(err(format!(
            "not an e2t-train checkpoint (expected the {:?} header)",
            String::from_utf8_lossy(&MAGIC)
        )));
    }
    let (payload, tail) = bytes[MAGIC.len()..].split_at(bytes.len() - MAGIC.len() - 4);
    if CRC.checksum(payload) != u32::from_le_bytes(tail.try_into().expect("4 bytes")) {
        return Err(err(
            "checksum mismatch: the checkpoint is corrupt or truncated".into(),
        ));
    }
    bincode_opts()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| err(format!("cannot decode checkpoint: {e}")))
}
