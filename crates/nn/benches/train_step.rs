//! Criterion bench of one full fp32 training step (normalise, forward, CE, backward, SGD) at batch
//! 128 on 1x28x28 input. The machine is shared: read results next to `/proc/loadavg`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use e2t_core::{Batch, InputShape, ModelKind, StepEngine};
use e2t_nn::Fp32Engine;
use e2t_nn::bench::bench_config;

fn train_step(c: &mut Criterion) {
    let input = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let batch = 128;
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch as u64));
    for depth in [8u32, 20] {
        let mut engine = Fp32Engine::new(bench_config(ModelKind::ResNet { depth }, input))
            .expect("bench config is valid");
        let images: Vec<u8> = (0..batch * input.pixels())
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
        let mut seq = 0u64;
        group.bench_function(format!("resnet{depth}_b{batch}"), |b| {
            b.iter(|| {
                seq += 1;
                engine
                    .step(&Batch {
                        seq,
                        lr: 0.01,
                        images: images.clone(),
                        labels: labels.clone(),
                    })
                    .expect("step")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
