//! Short ablation on real Fashion-MNIST: trains each method on a subset, then prints test accuracy,
//! counted training work (evaluation excluded) and wall time per image.
//!
//! `cargo run --release -p e2t-train --example fmnist_ablation -- --train 6000 --test 2000 --epochs 2
//!  --model resnet8 --methods fp32,baseline,smd+slu+psg --slu-beta 0.05 --slu-target 0.5`

use e2t_core::{
    Batch, Counters, EngineConfig, MethodConfig, ModelKind, Precision, PsgThreshold, TrainOnly,
};
use e2t_data::{DatasetName, epoch_order};
use e2t_train::{ablation_presets, build_engine, format_results_table};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

struct Args {
    train: usize,
    test: usize,
    epochs: usize,
    batch: usize,
    lr: f32,
    model: ModelKind,
    methods: Vec<String>,
    slu_beta: f32,
    slu_target: f32,
    psg_c: f32,
    seed: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        train: 6000,
        test: 2000,
        epochs: 2,
        batch: 128,
        lr: 0.1,
        model: ModelKind::ResNet { depth: 8 },
        methods: vec!["fp32".into(), "baseline".into(), "smd+slu+psg".into()],
        slu_beta: 0.05,
        slu_target: 0.5,
        psg_c: 0.05,
        seed: 1,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let (k, v) = (
            pair[0].as_str(),
            pair.get(1)
                .ok_or_else(|| format!("{} needs a value", pair[0]))?,
        );
        let num = |what: &str| format!("{k}: expected {what}, got '{v}'");
        match k {
            "--train" => a.train = v.parse().map_err(|_| num("a count"))?,
            "--test" => a.test = v.parse().map_err(|_| num("a count"))?,
            "--epochs" => a.epochs = v.parse().map_err(|_| num("a count"))?,
            "--batch" => a.batch = v.parse().map_err(|_| num("a count"))?,
            "--lr" => a.lr = v.parse().map_err(|_| num("a number"))?,
            "--model" => a.model = v.parse().map_err(|e| format!("{e}"))?,
            "--methods" => a.methods = v.split(',').map(str::to_string).collect(),
            "--slu-beta" => a.slu_beta = v.parse().map_err(|_| num("a number"))?,
            "--slu-target" => a.slu_target = v.parse().map_err(|_| num("a number"))?,
            "--psg-c" => a.psg_c = v.parse().map_err(|_| num("a number"))?,
            "--seed" => a.seed = v.parse().map_err(|_| num("an integer"))?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

fn method(name: &str, a: &Args) -> Result<MethodConfig, String> {
    let m = if name == "fp32" || name == "e2t-fp32" {
        MethodConfig::fp32()
    } else {
        ablation_presets()
            .into_iter()
            .find(|(l, _)| *l == name)
            .map(|(_, m)| m)
            .ok_or_else(|| format!("unknown method {name}"))?
    };
    Ok(MethodConfig {
        slu_beta: a.slu_beta,
        slu_target: a.slu_target,
        psg_threshold: PsgThreshold::Adaptive(a.psg_c),
        ..m
    })
}

fn main() -> Result<(), String> {
    let a = parse()?;
    let ds = e2t_data::load(DatasetName::FashionMnist, None)
        .map_err(|e| e.to_string())?
        .subset(Some(a.train), Some(a.test));
    let (mean, std) = ds.channel_stats();
    let px = ds.shape.pixels();
    let n = ds.train.len();
    let steps_per_epoch = n / a.batch;
    let total = (steps_per_epoch * a.epochs) as f32;
    let mut rows: Vec<(String, f64, Counters)> = Vec::new();
    for name in &a.methods {
        let m = method(name, &a)?;
        let cfg = EngineConfig {
            model: a.model,
            input: ds.shape,
            classes: ds.classes,
            mean: mean.clone(),
            std: std.clone(),
            method: m.clone(),
            momentum: 0.9,
            weight_decay: 1e-4,
            seed: a.seed,
            train_only: TrainOnly::All,
            array: (16, 16),
        };
        // `e2t-fp32`: this crate's engine with fp32 GEMMs (separates layer overhead from the accelerator's).
        let mut eng: Box<dyn e2t_core::StepEngine> = if name == "e2t-fp32" {
            Box::new(e2t_train::E2TrainEngine::fp32(cfg).map_err(|e| e.to_string())?)
        } else {
            build_engine(&cfg).map_err(|e| e.to_string())?
        };
        let mut coin = ChaCha8Rng::seed_from_u64(a.seed ^ 0x5AD);
        let (mut seq, mut kept, mut imgs) = (0u64, 0usize, 0usize);
        let mut slu = (0u64, 0u64);
        let mut last_epoch = (0u64, 0u64);
        // Training work only (the engine's own total also counts evaluation GEMMs).
        let mut train_counters = Counters::default();
        let (mut predicted, mut uncertain) = (0u64, 0u64);
        let t0 = Instant::now();
        for epoch in 0..a.epochs {
            let order = epoch_order(n, a.seed, epoch as u64);
            for b in 0..steps_per_epoch {
                seq += 1;
                // Cosine schedule over nominal steps (SMD-dropped batches count, as in the reference).
                let lr =
                    a.lr * 0.5 * (1.0 + (std::f32::consts::PI * (seq - 1) as f32 / total).cos());
                if m.smd && coin.random::<f32>() < m.smd_p {
                    if m.smd_momentum_step {
                        eng.skip_step(lr).map_err(|e| e.to_string())?;
                    }
                    continue;
                }
                let idx = &order[b * a.batch..(b + 1) * a.batch];
                let mut images = Vec::with_capacity(idx.len() * px);
                let mut labels = Vec::with_capacity(idx.len());
                for &i in idx {
                    images.extend_from_slice(&ds.train.images[i * px..(i + 1) * px]);
                    labels.push(ds.train.labels[i]);
                }
                let r = eng
                    .step(&Batch {
                        seq,
                        lr,
                        images,
                        labels,
                    })
                    .map_err(|e| e.to_string())?;
                kept += 1;
                train_counters.accumulate(&r.counters);
                if epoch + 1 == a.epochs {
                    last_epoch.0 += r.correct as u64;
                    last_epoch.1 += r.samples as u64;
                }
                imgs += r.samples as usize;
                for (_, e, t) in &r.diag.slu_executed {
                    slu.0 += *e as u64;
                    slu.1 += *t as u64;
                }
                for p in &r.diag.psg {
                    predicted += p.predicted;
                    uncertain += p.uncertain;
                }
            }
        }
        let train_s = t0.elapsed().as_secs_f64();
        let ev = eng
            .evaluate(&ds.test.images, &ds.test.labels)
            .map_err(|e| e.to_string())?;
        let c = train_counters;
        println!(
            "{name:<12} acc {:.2}% (train, last epoch {:.2}%)  kept {kept}/{seq} batches  train {train_s:.1}s = {:.2} ms/image  slu executed {:.3}  psg uncertain {:.3}",
            ev.accuracy() * 100.0,
            100.0 * last_epoch.0 as f64 / last_epoch.1.max(1) as f64,
            1e3 * train_s / imgs.max(1) as f64,
            if slu.1 > 0 {
                slu.0 as f64 / slu.1 as f64
            } else {
                1.0
            },
            if predicted > 0 {
                uncertain as f64 / predicted as f64
            } else {
                0.0
            },
        );
        let label = if m.precision == Precision::Fp32 {
            name.clone()
        } else {
            m.label()
        };
        rows.push((label, ev.accuracy(), c));
    }
    println!("\n{}", format_results_table(&rows));
    Ok(())
}
