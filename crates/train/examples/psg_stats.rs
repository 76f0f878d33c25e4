//! Per-layer PSG statistics of a short ResNet-8 E2-Train run on Fashion-MNIST: the share of
//! uncertain predictions and of recomputed tiles, for the configured threshold and for a threshold
//! of one accumulator unit (then "uncertain" means exactly `P == 0`, which separates predictions
//! that carry no information at all from those merely below `c x max|P|`).
//!
//! `cargo run --release -p e2t-train --example psg_stats -- 20 0.001,0.0001` (kept steps at batch
//! 128, adaptive c values).

use e2t_core::{Batch, EngineConfig, MethodConfig, ModelKind, PsgThreshold, TrainOnly};
use e2t_data::{DatasetName, epoch_order};
use e2t_train::build_engine;
use std::collections::BTreeMap;

fn main() -> Result<(), String> {
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| {
            s.parse()
                .map_err(|_| format!("steps: expected a count, got '{s}'"))
        })
        .transpose()?
        .unwrap_or(20);
    let batch = 128;
    let ds = e2t_data::load(DatasetName::FashionMnist, None)
        .map_err(|e| e.to_string())?
        .subset(Some(steps * batch), Some(0));
    let (mean, std) = ds.channel_stats();
    let px = ds.shape.pixels();
    let order = epoch_order(ds.train.len(), 0, 0);
    let cs: Vec<f32> = match std::env::args().nth(2) {
        Some(list) => list
            .split(',')
            .map(|c| {
                c.parse()
                    .map_err(|_| format!("c: expected a number, got '{c}'"))
            })
            .collect::<Result<_, _>>()?,
        None => vec![0.001],
    };
    let mut runs: Vec<(String, PsgThreshold)> = cs
        .iter()
        .map(|&c| (format!("adaptive c={c}"), PsgThreshold::Adaptive(c)))
        .collect();
    // One accumulator unit: uncertain iff P == 0 exactly.
    runs.push((
        "|P| < 1 unit (P == 0)".into(),
        PsgThreshold::Absolute(1e-30),
    ));
    for (label, thr) in runs {
        let cfg = EngineConfig {
            model: ModelKind::ResNet { depth: 8 },
            input: ds.shape,
            classes: ds.classes,
            mean: mean.clone(),
            std: std.clone(),
            // SMD is a host decision; every batch here is a kept one.
            method: MethodConfig {
                psg_threshold: thr,
                ..MethodConfig::e2train()
            },
            momentum: 0.9,
            weight_decay: 1e-4,
            seed: 0,
            train_only: TrainOnly::All,
            array: (16, 16),
        };
        let mut eng = build_engine(&cfg).map_err(|e| e.to_string())?;
        // layer -> (predicted, uncertain, tiles, recomputed), steps after the first (whose adaptive
        // threshold recomputes everything by design).
        let mut acc: BTreeMap<String, [u64; 4]> = BTreeMap::new();
        for s in 0..steps {
            let idx = &order[s * batch..(s + 1) * batch];
            let mut images = Vec::with_capacity(batch * px);
            let mut labels = Vec::with_capacity(batch);
            for &i in idx {
                images.extend_from_slice(&ds.train.images[i * px..(i + 1) * px]);
                labels.push(ds.train.labels[i]);
            }
            let r = eng
                .step(&Batch {
                    seq: s as u64,
                    lr: 0.05,
                    images,
                    labels,
                })
                .map_err(|e| e.to_string())?;
            if s == 0 {
                continue;
            }
            for p in &r.diag.psg {
                let e = acc.entry(p.layer.clone()).or_default();
                e[0] += p.predicted;
                e[1] += p.uncertain;
                e[2] += p.tiles;
                e[3] += p.recomputed_tiles;
            }
        }
        println!("threshold {label}, steps 2..={steps}:");
        println!("  {:<28} {:>10} {:>10}", "layer", "uncertain", "recomputed");
        let mut tot = [0u64; 4];
        for (l, e) in &acc {
            println!(
                "  {l:<28} {:>9.1}% {:>9.1}%",
                100.0 * e[1] as f64 / e[0].max(1) as f64,
                100.0 * e[3] as f64 / e[2].max(1) as f64
            );
            for i in 0..4 {
                tot[i] += e[i];
            }
        }
        println!(
            "  {:<28} {:>9.1}% {:>9.1}%",
            "all",
            100.0 * tot[1] as f64 / tot[0].max(1) as f64,
            100.0 * tot[3] as f64 / tot[2].max(1) as f64
        );
    }
    Ok(())
}
