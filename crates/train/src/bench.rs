//! Training-step throughput of any engine [`build_engine`] makes (fp32, INT16 baseline on the soft
//! accelerator, E2-Train), mirroring `e2t_nn::bench_train_step` so the figures compare directly.
//!
//! SMD is a host decision, so the bench plays the host: with `method.smd` a seeded coin drops each
//! batch with probability `smd_p` (a dropped batch runs `skip_step` when `smd_momentum_step` is on,
//! as the host does). Time per image therefore has two readings: per *offered* image (what a run
//! over a data set costs) and per *processed* image (images that reached the engine).

use crate::build_engine;
use e2t_core::{Batch, EngineConfig, EngineError, InputShape, MethodConfig, ModelKind, StepEngine};
use e2t_nn::BenchReport;
use e2t_nn::bench::{loadavg_1m, median, random_batches};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What [`bench_engine_train_step`] measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineBenchReport {
    /// Method label (`fp32`, `baseline`, `smd+slu+psg`, ...).
    pub method: String,
    /// The same fields as the fp32 bench; `images_per_s_median` counts *offered* images.
    pub base: BenchReport,
    /// Median over windows of images that reached the engine (kept batches) per second.
    pub processed_images_per_s_median: f64,
    /// Timed batches offered and kept (SMD drops the rest before any engine work).
    pub batches_offered: usize,
    pub batches_kept: usize,
    /// Median milliseconds per offered image and per processed image (`None` when SMD kept no
    /// timed batch: there is no processed image to divide by).
    pub ms_per_image: f64,
    pub ms_per_processed_image: Option<f64>,
}

impl EngineBenchReport {
    /// One human-readable line.
    pub fn line(&self) -> String {
        format!(
            "{}: {} | {:.3} ms/image, {} ms/processed image ({} of {} batches kept, {:.1} processed img/s)",
            self.method,
            self.base.line(),
            self.ms_per_image,
            self.ms_per_processed_image
                .map_or_else(|| "-".to_string(), |v| format!("{v:.3}")),
            self.batches_kept,
            self.batches_offered,
            self.processed_images_per_s_median,
        )
    }
}

/// The config [`bench_engine_train_step`] expects for `method`: `e2t_nn::bench::bench_config`
/// (10 classes, seed 0, momentum 0.9) with the method and an `array` accelerator (e.g. (16, 16)).
pub fn bench_engine_config(
    model: ModelKind,
    input: InputShape,
    method: MethodConfig,
    array: (u32, u32),
) -> EngineConfig {
    EngineConfig {
        method,
        array,
        ..e2t_nn::bench::bench_config(model, input)
    }
}

/// Times full training steps of the engine `cfg` asks for (built by [`build_engine`]) on seeded
/// random data: `warmup` untimed batches, then `windows` windows of `iters_per_window` offered
/// batches of `batch` images (input shape from `cfg`). With SMD some batches are dropped by a coin
/// seeded from `cfg.seed` (see the module doc).
pub fn bench_engine_train_step(
    cfg: &EngineConfig,
    batch: usize,
    warmup: usize,
    windows: usize,
    iters_per_window: usize,
) -> Result<EngineBenchReport, EngineError> {
    let mut engine = build_engine(cfg)?;
    bench_built_engine(engine.as_mut(), batch, warmup, windows, iters_per_window)
}

/// [`bench_engine_train_step`] on an engine built by the caller (e.g. `E2TrainEngine::fp32`, to
/// separate layer overhead from accelerator cost); its own config decides SMD and the input.
pub fn bench_built_engine(
    engine: &mut dyn StepEngine,
    batch: usize,
    warmup: usize,
    windows: usize,
    iters_per_window: usize,
) -> Result<EngineBenchReport, EngineError> {
    if batch == 0 || windows == 0 || iters_per_window == 0 {
        return Err(EngineError::Config(
            "bench needs batch, windows and iterations per window >= 1".into(),
        ));
    }
    let load = loadavg_1m();
    let cfg = &engine.config().clone();
    let input = cfg.input;
    let batches = random_batches(batch, input, cfg.classes);
    let m = &cfg.method;
    let mut coin = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5_3d_c0_1e);
    let mut seq = 0u64;
    let mut offered = 0usize;
    // Runs one offered batch; returns whether it reached the engine.
    let mut run = |engine: &mut dyn StepEngine| -> Result<bool, EngineError> {
        let lr = 0.01;
        let i = offered;
        offered += 1;
        if m.smd && coin.random::<f32>() < m.smd_p {
            if m.smd_momentum_step {
                engine.skip_step(lr)?;
            }
            return Ok(false);
        }
        let (images, labels) = &batches[i % batches.len()];
        // Cloning the batch is part of what a board agent does with a received frame.
        engine.step(&Batch {
            seq,
            lr,
            images: images.clone(),
            labels: labels.clone(),
        })?;
        seq += 1;
        Ok(true)
    };
    for _ in 0..warmup {
        run(engine)?;
    }
    let mut window_images_per_s = Vec::with_capacity(windows);
    let mut window_processed_per_s = Vec::with_capacity(windows);
    let mut kept_total = 0usize;
    for _ in 0..windows {
        let t = Instant::now();
        let mut kept = 0usize;
        for _ in 0..iters_per_window {
            kept += usize::from(run(engine)?);
        }
        let s = t.elapsed().as_secs_f64().max(1e-9);
        kept_total += kept;
        window_images_per_s.push((batch * iters_per_window) as f64 / s);
        window_processed_per_s.push((batch * kept) as f64 / s);
    }
    let med = median(&window_images_per_s);
    // Per processed image: the time of all windows over the images that reached the engine (a
    // window may keep no batch, so a per-window median of this ratio is not defined).
    let total_s: f64 = window_images_per_s
        .iter()
        .map(|r| (batch * iters_per_window) as f64 / r)
        .sum();
    let processed = batch * kept_total;
    Ok(EngineBenchReport {
        method: m.label(),
        base: BenchReport {
            model: cfg.model.to_string(),
            batch,
            input,
            threads: rayon::current_num_threads(),
            warmup,
            windows,
            iters_per_window,
            images_per_s_median: med,
            window_images_per_s,
            step_ms_median: 1000.0 * batch as f64 / med,
            peak_rss_bytes: e2t_nn::bench::peak_rss_bytes(),
            loadavg_1m_before: load,
        },
        processed_images_per_s_median: median(&window_processed_per_s),
        batches_offered: windows * iters_per_window,
        batches_kept: kept_total,
        ms_per_image: 1000.0 / med,
        ms_per_processed_image: (processed > 0).then(|| 1000.0 * total_s / processed as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_and_counts_smd_drops() {
        let input = InputShape {
            channels: 1,
            height: 8,
            width: 8,
        };
        let model = ModelKind::ResNet { depth: 8 };
        let base = bench_engine_config(model, input, MethodConfig::baseline(), (4, 4));
        let r = bench_engine_train_step(&base, 4, 1, 1, 2).unwrap();
        assert_eq!((r.batches_offered, r.batches_kept), (2, 2));
        assert_eq!(r.method, "baseline");
        let smd = MethodConfig {
            smd: true,
            smd_p: 0.5,
            ..MethodConfig::baseline()
        };
        let cfg = bench_engine_config(model, input, smd, (4, 4));
        let r = bench_engine_train_step(&cfg, 2, 0, 2, 6).unwrap();
        assert_eq!(r.batches_offered, 12);
        assert!(r.batches_kept < 12, "p = 0.5 over 12 coins drops some");
        assert!(bench_engine_train_step(&cfg, 0, 0, 1, 1).is_err());
        // Every batch dropped: no per-processed-image time, and the report still round-trips.
        let all = MethodConfig {
            smd: true,
            smd_p: 1.0,
            ..MethodConfig::baseline()
        };
        let cfg = bench_engine_config(model, input, all, (4, 4));
        let r = bench_engine_train_step(&cfg, 2, 0, 1, 2).unwrap();
        assert_eq!((r.batches_kept, r.ms_per_processed_image), (0, None));
        let json = serde_json::to_string(&r).unwrap();
        let back: EngineBenchReport = serde_json::from_str(&json).unwrap();
        assert_eq!((back.batches_kept, back.ms_per_processed_image), (0, None));
    }
}
