//! `Fp32Engine`: the fp32 reference [`StepEngine`] (ResNet family, `Fp32Gemm`, momentum SGD).
//!
//! A step: `u8` NCHW pixels -> `(p/255 - mean[c]) / std[c]` in NHWC -> forward (train mode) ->
//! softmax cross-entropy (mean) -> backward -> SGD with the batch's learning rate. Deterministic
//! given the config seed and the rayon thread count.

use crate::gemm::Fp32Gemm;
use crate::layers::softmax_cross_entropy;
use crate::optim::Sgd;
use crate::param::{Module, TensorKind};
use crate::resnet::ResNet;
use bincode::Options;
use e2t_core::{
    Batch, Counters, EngineConfig, EngineError, EvalResult, ModelKind, StepDiag, StepEngine,
    StepResult, TrainOnly,
};
use ndarray::Array4;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Images per forward pass in `evaluate` (bounds memory whatever the test set size).
pub const EVAL_BATCH: usize = 256;

/// Converts `n` sample-major `u8` NCHW images to normalised NHWC `f32`.
/// `mean`/`std` have one entry per channel (checked by the caller).
pub fn normalize_images(
    images: &[u8],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    mean: &[f32],
    std: &[f32],
) -> Array4<f32> {
    let mut x = Array4::<f32>::zeros((n, h, w, c));
    let hw = h * w;
    let scale: Vec<f32> = std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = mean.iter().zip(std).map(|(m, s)| -m / s).collect();
    if n * hw * c > 0 {
        x.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(hw * c)
            .enumerate()
            .for_each(|(b, img)| {
                let src = &images[b * c * hw..(b + 1) * c * hw];
                for ch in 0..c {
                    let plane = &src[ch * hw..(ch + 1) * hw];
                    for (p, &v) in plane.iter().enumerate() {
                        img[p * c + ch] = v as f32 * scale[ch] + shift[ch];
                    }
                }
            });
    }
    x
}

/// The fp32 training engine.
pub struct Fp32Engine {
    cfg: EngineConfig,
    /// The network (public pieces; see [`ResNet`]).
    pub model: ResNet,
    gemm: Fp32Gemm,
    sgd: Sgd,
    /// Engine RNG (weights are drawn from it at build time; its state is checkpointed so future
    /// stochastic parts continue identically).
    rng: ChaCha8Rng,
    steps: u64,
    last_seq: Option<u64>,
    /// BN calibration chunks seen since chunk 0 (`None`: no calibration in progress).
    calib_seen: Option<u32>,
}

const MAGIC: [u8; 8] = *b"E2TNNCK1";
const CKPT_VERSION: u32 = 1;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

#[derive(Serialize, Deserialize)]
struct Named {
    name: String,
    data: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    magic: [u8; 8],
    version: u32,
    model: String,
    input: (u32, u32, u32),
    classes: u32,
    steps: u64,
    last_seq: Option<u64>,
    rng_seed: [u8; 32],
    rng_stream: u64,
    rng_word_pos: u128,
    params: Vec<Named>,
    buffers: Vec<Named>,
    momentum: Vec<Named>,
}

fn bincode_opts() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Checks the parts of an [`EngineConfig`] the fp32 engine depends on.
pub fn validate_config(cfg: &EngineConfig) -> Result<u32, EngineError> {
    let depth = match cfg.model {
        ModelKind::ResNet { depth } => depth,
        ModelKind::MobileNetV2 => {
            return Err(EngineError::Config(
                "the fp32 engine (e2t-nn) builds only the ResNet family; MobileNetV2 is provided by e2t-train".into(),
            ));
        }
    };
    let c = cfg.input.channels as usize;
    if cfg.mean.len() != c || cfg.std.len() != c {
        return Err(EngineError::Config(format!(
            "mean/std need one entry per input channel ({c}), got {} and {}",
            cfg.mean.len(),
            cfg.std.len()
        )));
    }
    if let Some(s) = cfg.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(EngineError::Config(format!(
            "std entries must be finite and > 0, got {s}"
        )));
    }
    if cfg.mean.iter().any(|m| !m.is_finite()) {
        return Err(EngineError::Config("mean entries must be finite".into()));
    }
    if cfg.classes < 2 || cfg.classes > 256 {
        return Err(EngineError::Config(format!(
            "classes must be in 2..=256 (labels are u8), got {}",
            cfg.classes
        )));
    }
    if !(cfg.momentum.is_finite() && (0.0..1.0).contains(&cfg.momentum)) {
        return Err(EngineError::Config(format!(
            "momentum must be in [0, 1), got {}",
            cfg.momentum
        )));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return Err(EngineError::Config(format!(
            "weight decay must be >= 0, got {}",
            cfg.weight_decay
        )));
    }
    Ok(depth)
}

impl Fp32Engine {
    /// Builds the model and optimizer; GEMMs use the current rayon pool's thread count.
    pub fn new(cfg: EngineConfig) -> Result<Self, EngineError> {
        Self::with_gemm(cfg, Fp32Gemm::from_rayon())
    }

    pub fn with_gemm(cfg: EngineConfig, gemm: Fp32Gemm) -> Result<Self, EngineError> {
        let depth = validate_config(&cfg)?;
        crate::scratch::keep_freed_memory();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let model = ResNet::new(depth, cfg.input, cfg.classes as usize, &mut rng)
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
        Ok(Fp32Engine {
            cfg,
            model,
            gemm,
            sgd,
            rng,
            steps: 0,
            last_seq: None,
            calib_seen: None,
        })
    }

    /// Steps applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn check_samples(&self, images: &[u8], labels: &[u8]) -> Result<(), String> {
        let px = self.cfg.input.pixels();
        if images.len() != labels.len() * px {
            return Err(format!(
                "{} image bytes for {} labels, expected {} ({} per image)",
                images.len(),
                labels.len(),
                labels.len() * px,
                px
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

    fn sgd_step(&mut self, lr: f32, with_grad: bool) {
        let last_only = self.cfg.train_only == TrainOnly::Last;
        let mut params = self.model.params_mut();
        if last_only {
            params.retain(|p| p.name.starts_with("fc."));
        }
        if with_grad {
            self.sgd.step(&mut params, lr);
        } else {
            self.sgd.step_without_grad(&mut params, lr);
        }
    }
}

impl StepEngine for Fp32Engine {
    fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn step(&mut self, batch: &Batch) -> Result<StepResult, EngineError> {
        let bad = |reason: String| EngineError::Batch {
            seq: batch.seq,
            reason,
        };
        batch.check_step(self.last_seq)?;
        self.calib_seen = None;
        self.check_samples(&batch.images, &batch.labels)
            .map_err(bad)?;
        let n = batch.len();
        let x = self.to_input(&batch.images, n);
        self.model.zero_grad();
        let logits = self.model.forward(&x, &mut self.gemm, true);
        drop(x);
        let ce = softmax_cross_entropy(&logits, &batch.labels);
        if !ce.loss.is_finite() {
            return Err(bad(format!(
                "loss is not finite ({}); training diverged",
                ce.loss
            )));
        }
        match self.cfg.train_only {
            TrainOnly::All => self.model.backward(&ce.dlogits, &mut self.gemm),
            // Only the classifier trains: stop backpropagation at the head.
            TrainOnly::Last => drop(self.model.head.backward(&ce.dlogits, &mut self.gemm)),
        }
        self.sgd_step(batch.lr, true);
        self.steps += 1;
        self.last_seq = Some(batch.seq);
        Ok(StepResult {
            seq: batch.seq,
            loss: ce.loss,
            correct: ce.correct,
            samples: n as u32,
            counters: Counters::default(),
            power: Vec::new(),
            diag: StepDiag::default(),
        })
    }

    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(EngineError::Config(format!(
                "skip_step: learning rate must be finite and >= 0, got {lr}"
            )));
        }
        self.sgd_step(lr, false);
        Ok(())
    }

    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError> {
        self.check_samples(images, labels)
            .map_err(|reason| EngineError::Batch {
                seq: u64::MAX,
                reason: format!("evaluation set: {reason}"),
            })?;
        let px = self.cfg.input.pixels();
        let mut total = EvalResult::default();
        for (imgs, labs) in images
            .chunks(EVAL_BATCH * px)
            .zip(labels.chunks(EVAL_BATCH))
        {
            let x = self.to_input(imgs, labs.len());
            let logits = self.model.forward(&x, &mut self.gemm, false);
            let ce = softmax_cross_entropy(&logits, labs);
            total.merge(&EvalResult {
                loss_sum: ce.loss_sum,
                correct: ce.correct as u64,
                samples: labs.len() as u64,
            });
        }
        Ok(total)
    }

    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError> {
        let px = self.cfg.input.pixels();
        let bad = |reason: String| EngineError::Batch {
            seq: u64::MAX,
            reason: format!("BN calibration chunk {index}: {reason}"),
        };
        if images.is_empty() || images.len() % px != 0 {
            return Err(bad(format!(
                "{} image bytes is not a positive multiple of {px} (one image)",
                images.len()
            )));
        }
        let mut seen = match (index, self.calib_seen) {
            (0, _) => 0,
            (_, Some(k)) => k,
            (_, None) => return Err(bad("chunks must start at index 0".into())),
        };
        for chunk in images.chunks(EVAL_BATCH * px) {
            // Batch k (0-based) weighs 1/(k+1): the running statistics become the plain mean of
            // the calibration batches' statistics.
            seen += 1;
            let mut saved = Vec::new();
            self.model.visit_bn(&mut |b| {
                saved.push(b.momentum);
                b.momentum = 1.0 / seen as f32;
            });
            let x = self.to_input(chunk, chunk.len() / px);
            self.model.forward(&x, &mut self.gemm, true);
            let mut it = saved.into_iter();
            self.model
                .visit_bn(&mut |b| b.momentum = it.next().expect("same layers"));
        }
        self.calib_seen = Some(seen);
        Ok(())
    }

    fn counters(&self) -> Counters {
        Counters::default()
    }

    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        let (params, buffers) = snapshot(&self.model);
        let ck = Checkpoint {
            magic: MAGIC,
            version: CKPT_VERSION,
            model: self.cfg.model.to_string(),
            input: (
                self.cfg.input.channels,
                self.cfg.input.height,
                self.cfg.input.width,
            ),
            classes: self.cfg.classes,
            steps: self.steps,
            last_seq: self.last_seq,
            rng_seed: self.rng.get_seed(),
            rng_stream: self.rng.get_stream(),
            rng_word_pos: self.rng.get_word_pos(),
            params,
            buffers,
            momentum: self
                .sgd
                .buffers()
                .iter()
                .map(|(k, v)| Named {
                    name: k.clone(),
                    data: v.clone(),
                })
                .collect(),
        };
        let mut bytes = bincode_opts()
            .serialize(&ck)
            .map_err(|e| EngineError::Checkpoint(format!("encoding failed: {e}")))?;
        let crc = CRC.checksum(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let err = |m: String| EngineError::Checkpoint(m);
        if bytes.len() < 4 {
            return Err(err(format!(
                "{} bytes is too short to be an e2t-nn checkpoint",
                bytes.len()
            )));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let want = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        if CRC.checksum(body) != want {
            return Err(err(
                "checksum mismatch: the checkpoint is corrupt or truncated".into(),
            ));
        }
        let ck: Checkpoint = bincode_opts()
            .with_limit(body.len() as u64)
            .deserialize(body)
            .map_err(|e| err(format!("cannot decode checkpoint: {e}")))?;
        if ck.magic != MAGIC || ck.version != CKPT_VERSION {
            return Err(err(format!(
                "not an e2t-nn fp32 checkpoint of version {CKPT_VERSION}"
            )));
        }
        let s = self.cfg.input;
        if ck.model != self.cfg.model.to_string()
            || ck.input != (s.channels, s.height, s.width)
            || ck.classes != self.cfg.classes
        {
            return Err(err(format!(
                "checkpoint is for {} on {:?} with {} classes, this engine is {} on {:?} with {} classes",
                ck.model,
                ck.input,
                ck.classes,
                self.cfg.model,
                (s.channels, s.height, s.width),
                self.cfg.classes
            )));
        }
        // Validate everything before changing anything, so a bad checkpoint leaves the engine as it was.
        let shapes: BTreeMap<String, usize> = self
            .model
            .params_mut()
            .into_iter()
            .map(|p| (p.name, p.value.len()))
            .collect();
        check_named(
            "parameter",
            &ck.params,
            self.model
                .params_mut()
                .into_iter()
                .map(|p| (p.name, p.value.len())),
        )?;
        check_named(
            "buffer",
            &ck.buffers,
            self.model
                .buffers_mut()
                .into_iter()
                .map(|b| (b.name, b.value.len())),
        )?;
        for m in &ck.momentum {
            match shapes.get(&m.name) {
                Some(&len) if len == m.data.len() => {}
                _ => {
                    return Err(err(format!(
                        "momentum buffer '{}' does not match any parameter of this model",
                        m.name
                    )));
                }
            }
        }
        for (p, src) in self.model.params_mut().into_iter().zip(&ck.params) {
            p.value.copy_from_slice(&src.data);
            p.grad.fill(0.0);
        }
        for (b, src) in self.model.buffers_mut().into_iter().zip(&ck.buffers) {
            b.value.copy_from_slice(&src.data);
        }
        self.sgd
            .set_buffers(ck.momentum.into_iter().map(|n| (n.name, n.data)).collect());
        let mut rng = ChaCha8Rng::from_seed(ck.rng_seed);
        rng.set_stream(ck.rng_stream);
        rng.set_word_pos(ck.rng_word_pos);
        self.rng = rng;
        self.steps = ck.steps;
        self.last_seq = ck.last_seq;
        Ok(())
    }
}

fn check_named(
    kind: &str,
    got: &[Named],
    want: impl Iterator<Item = (String, usize)>,
) -> Result<(), EngineError> {
    let want: Vec<(String, usize)> = want.collect();
    if got.len() != want.len() {
        return Err(EngineError::Checkpoint(format!(
            "checkpoint has {} {kind}s, the model has {}",
            got.len(),
            want.len()
        )));
    }
    for (g, (name, len)) in got.iter().zip(&want) {
        if &g.name != name || g.data.len() != *len {
            return Err(EngineError::Checkpoint(format!(
                "{kind} mismatch: checkpoint has '{}' ({} values), the model expects '{name}' ({len} values)",
                g.name,
                g.data.len()
            )));
        }
    }
    Ok(())
}

/// Copies of every parameter and buffer, by name, in model order.
fn snapshot(model: &ResNet) -> (Vec<Named>, Vec<Named>) {
    let mut all = Vec::new();
    model.tensors_into(&mut all);
    let (mut params, mut buffers) = (Vec::new(), Vec::new());
    for t in all {
        let named = Named {
            name: t.name,
            data: t.value.to_vec(),
        };
        match t.kind {
            TensorKind::Param => params.push(named),
            TensorKind::Buffer => buffers.push(named),
        }
    }
    (params, buffers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use e2t_core::{InputShape, MethodConfig};
    use rand::{Rng, SeedableRng};

    fn cfg(depth: u32, seed: u64) -> EngineConfig {
        EngineConfig {
            model: ModelKind::ResNet { depth },
            input: InputShape {
                channels: 1,
                height: 8,
                width: 8,
            },
            classes: 4,
            mean: vec![0.3],
            std: vec![0.3],
            method: MethodConfig::fp32(),
            momentum: 0.9,
            weight_decay: 1e-4,
            seed,
            train_only: TrainOnly::All,
            array: (0, 0),
        }
    }

    fn batches(n: usize, size: usize) -> Vec<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        (0..n)
            .map(|i| Batch {
                seq: i as u64,
                lr: 0.05,
                images: (0..size * 64).map(|_| rng.random()).collect(),
                labels: (0..size).map(|_| rng.random_range(0..4u8)).collect(),
            })
            .collect()
    }

    fn weights(e: &Fp32Engine) -> Vec<Named> {
        snapshot(&e.model).0
    }

    fn bn_stats(e: &mut Fp32Engine) -> Vec<Vec<f32>> {
        let mut v = Vec::new();
        e.model.visit_bn(&mut |b| {
            v.push(b.running_mean.to_vec());
            v.push(b.running_var.to_vec());
        });
        v
    }

    #[test]
    fn bn_calibration_averages_its_chunks_batch_statistics_and_changes_no_weight() {
        let bs = batches(5, 10);
        let mut e = Fp32Engine::new(cfg(8, 1)).unwrap();
        for b in &bs[..3] {
            e.step(b).unwrap();
        }
        let w0 = weights(&e);
        let (a, b) = (&bs[3].images, &bs[4].images[..6 * 64]);
        e.calibrate_bn(a, 0).unwrap();
        let sa = bn_stats(&mut e);
        e.calibrate_bn(b, 0).unwrap();
        let sb = bn_stats(&mut e);
        e.calibrate_bn(a, 0).unwrap();
        e.calibrate_bn(b, 1).unwrap();
        let sab = bn_stats(&mut e);
        assert_ne!(sa, sb);
        for ((va, vb), vab) in sa.iter().zip(&sb).zip(&sab) {
            for ((&x, &y), &z) in va.iter().zip(vb).zip(vab) {
                let want = (x + y) / 2.0;
                assert!(
                    (z - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{z} vs {want}"
                );
            }
        }
        let w1 = weights(&e);
        assert!(
            w0.iter().zip(&w1).all(|(p, q)| p.data == q.data),
            "calibration must not train"
        );
        // Momentum is back to its training value, a step ends the calibration, bad sizes refused.
        e.model.visit_bn(&mut |b| assert_eq!(b.momentum, 0.1));
        e.step(&Batch {
            seq: 9,
            ..bs[0].clone()
        })
        .unwrap();
        assert!(
            e.calibrate_bn(a, 1)
                .unwrap_err()
                .to_string()
                .contains("index 0")
        );
        assert!(e.calibrate_bn(&a[1..], 0).is_err());
    }

    #[test]
    fn checkpoint_resume_is_bit_identical() {
        let bs = batches(4, 6);
        let mut full = Fp32Engine::new(cfg(8, 1)).unwrap();
        let losses: Vec<f32> = bs.iter().map(|b| full.step(b).unwrap().loss).collect();

        let mut first = Fp32Engine::new(cfg(8, 1)).unwrap();
        for b in &bs[..2] {
            first.step(b).unwrap();
        }
        let bytes = first.checkpoint().unwrap();
        // A different seed proves the restore overwrites everything the seed decided.
        let mut resumed = Fp32Engine::new(cfg(8, 99)).unwrap();
        resumed.restore(&bytes).unwrap();
        assert_eq!(resumed.steps(), 2);
        let rest: Vec<f32> = bs[2..]
            .iter()
            .map(|b| resumed.step(b).unwrap().loss)
            .collect();
        assert_eq!(rest, losses[2..].to_vec());
        for (a, b) in weights(&full).iter().zip(weights(&resumed).iter()) {
            assert_eq!(a.name, b.name);
            assert!(
                a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} differs",
                a.name
            );
        }
        assert_eq!(full.checkpoint().unwrap(), resumed.checkpoint().unwrap());
        // An already applied sequence number is refused.
        assert!(matches!(
            resumed.step(&bs[3]),
            Err(EngineError::Batch { .. })
        ));
    }

    #[test]
    fn corrupt_or_foreign_checkpoints_are_refused() {
        let mut e = Fp32Engine::new(cfg(8, 1)).unwrap();
        e.step(&batches(1, 4)[0]).unwrap();
        let good = e.checkpoint().unwrap();
        let before = e.checkpoint().unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x10;
        for bad in [
            &flipped[..],
            &good[..good.len() - 9],
            &[][..],
            &[1, 2, 3, 4, 5, 6][..],
        ] {
            assert!(matches!(e.restore(bad), Err(EngineError::Checkpoint(_))));
        }
        let other = Fp32Engine::new(cfg(14, 1)).unwrap().checkpoint().unwrap();
        let msg = e.restore(&other).unwrap_err().to_string();
        assert!(msg.contains("resnet14"), "{msg}");
        assert_eq!(
            e.checkpoint().unwrap(),
            before,
            "a refused checkpoint changes nothing"
        );
    }

    #[test]
    fn tiny_model_overfits_a_tiny_batch() {
        let b = &batches(1, 8)[0];
        let mut e = Fp32Engine::new(cfg(8, 3)).unwrap();
        let mut losses = Vec::new();
        for i in 0..30 {
            let r = e
                .step(&Batch {
                    seq: i,
                    ..b.clone()
                })
                .unwrap();
            assert_eq!(r.samples, 8);
            losses.push(r.loss);
        }
        assert!(
            losses[29] < 0.3 * losses[0],
            "loss {} -> {}",
            losses[0],
            losses[29]
        );
        let ev = e.evaluate(&b.images, &b.labels).unwrap();
        assert_eq!(ev.samples, 8);
        assert!(ev.mean_loss().is_finite());
    }

    #[test]
    fn evaluate_batches_and_does_not_train() {
        let mut e = Fp32Engine::new(cfg(8, 2)).unwrap();
        let bs = batches(1, 300);
        let before = e.checkpoint().unwrap();
        let r = e.evaluate(&bs[0].images, &bs[0].labels).unwrap();
        assert_eq!(r.samples, 300);
        assert!(r.correct <= 300 && r.loss_sum.is_finite());
        assert_eq!(e.checkpoint().unwrap(), before);
        assert!(e.evaluate(&bs[0].images[1..], &bs[0].labels).is_err());
    }

    #[test]
    fn train_only_last_updates_only_the_classifier() {
        let mut c = cfg(8, 5);
        c.train_only = TrainOnly::Last;
        let mut e = Fp32Engine::new(c).unwrap();
        let w0 = weights(&e);
        e.step(&batches(1, 4)[0]).unwrap();
        for (a, b) in w0.iter().zip(weights(&e).iter()) {
            assert_eq!(a.name.starts_with("fc."), a.data != b.data, "{}", a.name);
        }
    }

    #[test]
    fn bad_configs_and_batches_are_clear_errors() {
        let mut c = cfg(8, 0);
        c.model = ModelKind::MobileNetV2;
        assert!(
            matches!(Fp32Engine::new(c), Err(EngineError::Config(m)) if m.contains("MobileNetV2"))
        );
        let mut c = cfg(8, 0);
        c.std = vec![0.0];
        assert!(Fp32Engine::new(c).is_err());
        let mut c = cfg(8, 0);
        c.mean = vec![0.1, 0.2];
        assert!(Fp32Engine::new(c).is_err());
        let mut e = Fp32Engine::new(cfg(8, 0)).unwrap();
        let mut b = batches(1, 2).remove(0);
        b.labels[1] = 9;
        assert!(matches!(e.step(&b), Err(EngineError::Batch { .. })));
        b.labels[1] = 1;
        b.images.pop();
        assert!(matches!(e.step(&b), Err(EngineError::Batch { .. })));
        assert!(
            e.step(&Batch {
                seq: 0,
                lr: 0.1,
                images: vec![],
                labels: vec![]
            })
            .is_err()
        );
        assert!(e.skip_step(f32::NAN).is_err());
        assert_eq!(e.counters(), Counters::default());
    }

    #[test]
    fn normalisation_is_channel_wise_and_nhwc() {
        // Two channels of a 1x2 image: channel 0 = [0, 255], channel 1 = [51, 102].
        let x = normalize_images(&[0, 255, 51, 102], 1, 2, 1, 2, &[0.5, 0.0], &[0.5, 0.2]);
        let want = [-1.0f32, 1.0, 1.0, 2.0];
        let got = [
            x[[0, 0, 0, 0]],
            x[[0, 0, 1, 0]],
            x[[0, 0, 0, 1]],
            x[[0, 0, 1, 1]],
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?}");
        }
    }
}
