//! Time per image of training steps: fp32 (`e2t_nn::bench_train_step`) against accelerator methods
//! (`e2t_train::bench_engine_train_step`), run back to back in one process so both see the same load.
//!
//! `cargo run --release -p e2t-train --example bench_step -- resnet8 128 baseline,e2train 3 3`
//! (model, batch, methods, windows, iterations per window; input 1x28x28, array 16x16).

use e2t_core::{InputShape, MethodConfig, ModelKind};
use e2t_train::{bench_engine_config, bench_engine_train_step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let model: ModelKind = a.first().map(String::as_str).unwrap_or("resnet8").parse()?;
    let batch: usize = a.get(1).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let methods = a.get(2).cloned().unwrap_or_else(|| "fp32,baseline".into());
    let windows: usize = a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let iters: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let input = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    // Process CPU time (user + system) per image, warmup included: less sensitive than wall time
    // to other jobs on a shared machine.
    let cpu_per_image = |t0: f64, steps: usize| {
        format!(
            "{:.3} CPU-ms/image",
            1000.0 * (cpu_seconds() - t0) / (steps * batch) as f64
        )
    };
    for m in methods.split(',') {
        let t0 = cpu_seconds();
        let method = match m {
            "fp32" => {
                let r = e2t_nn::bench_train_step(model, batch, input, 1, windows, iters)?;
                println!(
                    "fp32(e2t-nn): {} | {:.3} ms/image, {}",
                    r.line(),
                    1000.0 / r.images_per_s_median,
                    cpu_per_image(t0, 1 + windows * iters)
                );
                continue;
            }
            "e2t-fp32" => {
                // The E2-Train engine's own layers with fp32 GEMMs: layer overhead without the
                // accelerator.
                let cfg = bench_engine_config(model, input, MethodConfig::fp32(), (16, 16));
                let mut e = e2t_train::E2TrainEngine::fp32(cfg)?;
                let r = e2t_train::bench_built_engine(&mut e, batch, 1, windows, iters)?;
                println!(
                    "e2t-fp32 {}, {}",
                    r.line(),
                    cpu_per_image(t0, 1 + windows * iters)
                );
                continue;
            }
            "baseline" => MethodConfig::baseline(),
            "e2train" => MethodConfig::e2train(),
            "psg" => MethodConfig {
                psg: true,
                ..MethodConfig::baseline()
            },
            other => return Err(format!("unknown method {other}").into()),
        };
        let cfg = bench_engine_config(model, input, method, (16, 16));
        let r = bench_engine_train_step(&cfg, batch, 1, windows, iters)?;
        println!("{}, {}", r.line(), cpu_per_image(t0, 1 + windows * iters));
    }
    Ok(())
}

/// utime + stime of this process from `/proc/self/stat`, in seconds (0 where unavailable).
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Field 3 is index 0 here; clock ticks are 100 per second on Linux.
    (tick(11) + tick(12)) / 100.0
}
