//! Training-step throughput measurement, shared by the criterion bench and `e2train bench`.

use crate::engine::Fp32Engine;
use e2t_core::{
    Batch, EngineConfig, EngineError, InputShape, MethodConfig, ModelKind, StepEngine, TrainOnly,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What [`bench_train_step`] measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub input: InputShape,
    /// Rayon worker threads used by the GEMMs and the parallel kernels.
    pub threads: usize,
    pub warmup: usize,
    pub windows: usize,
    pub iters_per_window: usize,
    /// Median over windows of images per second.
    pub images_per_s_median: f64,
    /// Images per second of each timed window, in order.
    pub window_images_per_s: Vec<f64>,
    /// Median milliseconds per training step.
    pub step_ms_median: f64,
    /// Process peak resident set size (`VmHWM` from `/proc/self/status`), if readable.
    pub peak_rss_bytes: Option<u64>,
    /// 1-minute load average before the run (other jobs on the machine skew the figures).
    pub loadavg_1m_before: Option<f64>,
}

impl BenchReport {
    /// One human-readable line.
    pub fn line(&self) -> String {
        format!(
            "{} batch {} input {}x{}x{}: {:.1} img/s median ({} windows: {}), {:.1} ms/step, peak RSS {}, {} threads, load {}",
            self.model,
            self.batch,
            self.input.channels,
            self.input.height,
            self.input.width,
            self.images_per_s_median,
            self.windows,
            self.window_images_per_s
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.step_ms_median,
            self.peak_rss_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64))
                .unwrap_or_else(|| "n/a".into()),
            self.threads,
            self.loadavg_1m_before
                .map(|l| format!("{l:.2}"))
                .unwrap_or_else(|| "n/a".into()),
        )
    }
}

/// Peak resident set size of this process (`VmHWM`), where `/proc` has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The 1-minute load average, recorded next to every figure so a reader can judge the conditions.
pub fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median of `v` (mean of the two middle values for an even count; 0 for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Four distinct seeded batches of random images and labels in `0..classes`, so caches do not see
/// the same data every step.
pub fn random_batches(batch: usize, input: InputShape, classes: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let classes = classes.clamp(1, 256);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    (0..4)
        .map(|_| {
            let images = (0..batch * input.pixels())
                .map(|_| rng.random::<u8>())
                .collect();
            let labels = (0..batch)
                .map(|_| rng.random_range(0..classes) as u8)
                .collect();
            (images, labels)
        })
        .collect()
}

/// A config for benchmarking: 10 classes, mean 0.5 / std 0.25 per channel, momentum 0.9, seed 0.
pub fn bench_config(model: ModelKind, input: InputShape) -> EngineConfig {
    let c = input.channels as usize;
    EngineConfig {
        model,
        input,
        classes: 10,
        mean: vec![0.5; c],
        std: vec![0.25; c],
        method: MethodConfig::fp32(),
        momentum: 0.9,
        weight_decay: 5e-4,
        seed: 0,
        train_only: TrainOnly::All,
        array: (0, 0),
    }
}

/// Times full training steps (normalisation, forward, loss, backward, SGD) of the fp32 engine on
/// seeded random data: `warmup` untimed steps, then `windows` windows of `iters_per_window` steps.
pub fn bench_train_step(
    model: ModelKind,
    batch: usize,
    input: InputShape,
    warmup: usize,
    windows: usize,
    iters_per_window: usize,
) -> Result<BenchReport, EngineError> {
    if batch == 0 || windows == 0 || iters_per_window == 0 {
        return Err(EngineError::Config(
            "bench needs batch, windows and iterations per window >= 1".into(),
        ));
    }
    let load = loadavg_1m();
    let cfg = bench_config(model, input);
    let batches = random_batches(batch, input, cfg.classes);
    let mut engine = Fp32Engine::new(cfg)?;
    let mut seq = 0u64;
    let mut run = |engine: &mut Fp32Engine| -> Result<(), EngineError> {
        let (images, labels) = &batches[seq as usize % batches.len()];
        // Cloning the batch is part of what a board agent does with a received frame.
        engine.step(&Batch {
            seq,
            lr: 0.01,
            images: images.clone(),
            labels: labels.clone(),
        })?;
        seq += 1;
        Ok(())
    };
    for _ in 0..warmup {
        run(&mut engine)?;
    }
    let mut window_images_per_s = Vec::with_capacity(windows);
    for _ in 0..windows {
        let t = Instant::now();
        for _ in 0..iters_per_window {
            run(&mut engine)?;
        }
        let s = t.elapsed().as_secs_f64();
        window_images_per_s.push((batch * iters_per_window) as f64 / s);
    }
    let median = median(&window_images_per_s);
    Ok(BenchReport {
        model: model.to_string(),
        batch,
        input,
        threads: rayon::current_num_threads(),
        warmup,
        windows,
        iters_per_window,
        images_per_s_median: median,
        window_images_per_s,
        step_ms_median: 1000.0 * batch as f64 / median,
        peak_rss_bytes: peak_rss_bytes(),
        loadavg_1m_before: load,
    })
}
