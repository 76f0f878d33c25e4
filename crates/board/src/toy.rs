//! A small deterministic [`StepEngine`] (softmax regression with momentum SGD) for link tests and the
//! test agent binary. It is not a model of the E2-Train engine; it only has real, seed-determined state
//! whose exact bits a checkpoint must carry, which is what the link tests compare.

use e2t_core::{
    Batch, Counters, EngineConfig, EngineError, EvalResult, StepDiag, StepEngine, StepResult,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct ToyEngine {
    cfg: EngineConfig,
    w: Vec<f32>,
    v: Vec<f32>,
    steps: u64,
    counters: Counters,
}

impl ToyEngine {
    pub fn new(cfg: &EngineConfig) -> Result<Self, EngineError> {
        let px = cfg.input.pixels();
        if px == 0 || cfg.classes < 2 {
            return Err(EngineError::Config(format!(
                "toy engine needs pixels > 0 and classes >= 2, got {px} pixels, {} classes",
                cfg.classes
            )));
        }
        let n = (px + 1) * cfg.classes as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let w = (0..n).map(|_| rng.random_range(-0.01f32..0.01)).collect();
        Ok(ToyEngine {
            cfg: cfg.clone(),
            w,
            v: vec![0.0; n],
            steps: 0,
            counters: Counters::default(),
        })
    }

    fn check(&self, images: &[u8], labels: &[u8], seq: u64) -> Result<(), EngineError> {
        let px = self.cfg.input.pixels();
        if images.len() != labels.len() * px {
            return Err(EngineError::Batch {
                seq,
                reason: format!(
                    "{} image bytes for {} labels of {px} pixels",
                    images.len(),
                    labels.len()
                ),
            });
        }
        if let Some(l) = labels.iter().find(|&&l| u32::from(l) >= self.cfg.classes) {
            return Err(EngineError::Batch {
                seq,
                reason: format!("label {l} >= {} classes", self.cfg.classes),
            });
        }
        Ok(())
    }

    /// Per-sample probabilities and loss; adds gradients to `g` when given.
    fn forward(&self, x: &[u8], label: u8, g: Option<&mut [f32]>) -> (f32, bool) {
        let px = self.cfg.input.pixels();
        let k = self.cfg.classes as usize;
        let mut logits = vec![0f32; k];
        for (c, l) in logits.iter_mut().enumerate() {
            let row = &self.w[c * (px + 1)..(c + 1) * (px + 1)];
            *l = row[px]
                + x.iter()
                    .zip(row)
                    .map(|(&p, &w)| f32::from(p) / 255.0 * w)
                    .sum::<f32>();
        }
        let m = logits.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
        let z: f32 = e.iter().sum();
        let y = label as usize;
        let loss = -(e[y] / z).ln();
        let argmax = (0..k).fold(0, |b, c| if logits[c] > logits[b] { c } else { b });
        if let Some(g) = g {
            for c in 0..k {
                let d = e[c] / z - if c == y { 1.0 } else { 0.0 };
                let row = &mut g[c * (px + 1)..(c + 1) * (px + 1)];
                for (gw, &p) in row.iter_mut().zip(x) {
                    *gw += d * f32::from(p) / 255.0;
                }
                row[px] += d;
            }
        }
        (loss, argmax == y)
    }
}

impl StepEngine for ToyEngine {
    fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn step(&mut self, b: &Batch) -> Result<StepResult, EngineError> {
        self.check(&b.images, &b.labels, b.seq)?;
        let px = self.cfg.input.pixels();
        let n = b.labels.len();
        let mut g = vec![0f32; self.w.len()];
        let (mut loss, mut correct) = (0f32, 0u32);
        for (i, &l) in b.labels.iter().enumerate() {
            let (li, ok) = self.forward(&b.images[i * px..(i + 1) * px], l, Some(&mut g));
            loss += li;
            correct += u32::from(ok);
        }
        let scale = 1.0 / n.max(1) as f32;
        for ((w, v), g) in self.w.iter_mut().zip(&mut self.v).zip(&g) {
            *v = self.cfg.momentum * *v + g * scale + self.cfg.weight_decay * *w;
            *w -= b.lr * *v;
        }
        self.steps += 1;
        let d = Counters {
            gemms: 2,
            macs_int16: (2 * n * self.w.len()) as u64,
            ..Default::default()
        };
        self.counters.accumulate(&d);
        Ok(StepResult {
            seq: b.seq,
            loss: loss * scale,
            correct,
            samples: n as u32,
            counters: d,
            power: Vec::new(),
            diag: StepDiag::default(),
        })
    }

    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        for (w, v) in self.w.iter_mut().zip(&mut self.v) {
            *v = self.cfg.momentum * *v + self.cfg.weight_decay * *w;
            *w -= lr * *v;
        }
        Ok(())
    }

    /// The toy model has no BatchNorm: checks the chunk and leaves the model as it is.
    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError> {
        let px = self.cfg.input.pixels();
        if images.is_empty() || images.len() % px != 0 {
            return Err(EngineError::Batch {
                seq: u64::MAX,
                reason: format!(
                    "BN calibration chunk {index}: {} image bytes is not a positive multiple of {px}",
                    images.len()
                ),
            });
        }
        Ok(())
    }

    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError> {
        self.check(images, labels, u64::MAX)?;
        let px = self.cfg.input.pixels();
        let mut r = EvalResult::default();
        for (i, &l) in labels.iter().enumerate() {
            let (li, ok) = self.forward(&images[i * px..(i + 1) * px], l, None);
            r.loss_sum += f64::from(li);
            r.correct += u64::from(ok);
            r.samples += 1;
        }
        Ok(r)
    }

    fn counters(&self) -> Counters {
        self.counters
    }

    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::with_capacity(8 * (self.w.len() + 4));
        out.extend_from_slice(&(self.w.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.steps.to_le_bytes());
        for (_, c) in self.counters.fields() {
            out.extend_from_slice(&c.to_le_bytes());
        }
        for x in self.w.iter().chain(&self.v) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        Ok(out)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let n = self.w.len();
        let want = 16 + 12 * 8 + 8 * n;
        if bytes.len() != want {
            return Err(EngineError::Checkpoint(format!(
                "toy checkpoint is {} bytes, expected {want}",
                bytes.len()
            )));
        }
        let u = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if u(0) != n as u64 {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint has {} weights, engine {n}",
                u(0)
            )));
        }
        self.steps = u(8);
        let c: Vec<u64> = (0..12).map(|i| u(16 + 8 * i)).collect();
        self.counters = Counters {
            total_cycles: c[0],
            busy_cycles: c[1],
            stall_in_cycles: c[2],
            stall_out_cycles: c[3],
            macs_int8: c[4],
            macs_int16: c[5],
            bytes_in: c[6],
            bytes_out: c[7],
            psg_predicted: c[8],
            psg_uncertain: c[9],
            psg_recomputed_tiles: c[10],
            gemms: c[11],
        };
        let f = |i: usize| f32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let off = 16 + 96;
        for i in 0..n {
            self.w[i] = f(off + 4 * i);
            self.v[i] = f(off + 4 * (n + i));
        }
        Ok(())
    }

    fn load_weights(&mut self, checkpoint: &[u8]) -> Result<(), EngineError> {
        // Read the whole checkpoint into a scratch engine, keep only its weights.
        let mut other = ToyEngine::new(&self.cfg)?;
        other.restore(checkpoint)?;
        self.w = other.w;
        self.v.iter_mut().for_each(|v| *v = 0.0);
        self.steps = 0;
        self.counters = Counters::default();
        Ok(())
    }
}

/// The engine factory of the test agent and the link tests: a [`ToyEngine`], optionally started
/// from another toy run's weights.
pub fn toy_factory(
    cfg: &EngineConfig,
    init: Option<&[u8]>,
) -> Result<Box<dyn StepEngine>, EngineError> {
    let mut e = ToyEngine::new(cfg)?;
    if let Some(b) = init {
        e.load_weights(b)?;
    }
    Ok(Box::new(e))
}

/// A small configuration for tests: 1x8x8 inputs, 4 classes.
pub fn toy_config(seed: u64) -> EngineConfig {
    use e2t_core::{InputShape, MethodConfig, ModelKind, TrainOnly};
    EngineConfig {
        model: ModelKind::ResNet { depth: 8 },
        input: InputShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        classes: 4,
        mean: vec![0.5],
        std: vec![0.25],
        method: MethodConfig::fp32(),
        momentum: 0.9,
        weight_decay: 1e-4,
        seed,
        train_only: TrainOnly::All,
        array: (16, 16),
    }
}

/// Seeded synthetic batches for `cfg` (labels depend on the image, so the toy engine can learn).
pub fn toy_batches(cfg: &EngineConfig, n: usize, batch: usize, seed: u64) -> Vec<Batch> {
    let px = cfg.input.pixels();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|s| {
            let labels: Vec<u8> = (0..batch)
                .map(|_| rng.random_range(0..cfg.classes) as u8)
                .collect();
            let mut images = Vec::with_capacity(batch * px);
            for &l in &labels {
                for p in 0..px {
                    images.push(
                        (p as u8)
                            .wrapping_mul(l + 1)
                            .wrapping_add(rng.random_range(0..32)),
                    );
                }
            }
            Batch {
                seq: s as u64,
                lr: 0.1 / (1.0 + s as f32 * 0.01),
                images,
                labels,
            }
        })
        .collect()
}
