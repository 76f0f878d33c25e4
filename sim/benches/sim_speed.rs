//! Simulation speed of the Verilated top (R=4, C=4, DEPTH=8) driven from Rust: clock cycles per
//! second while running a GEMM through the AXI4 buses (criterion reports it as elements/s, one
//! element = one clock cycle). Run: `cargo bench -p e2t-sim`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use e2t_core::Mode;
use e2t_sim::host::OutFmt;
use e2t_sim::{Stalls, Tb};

fn gemm_cycles(c: &mut Criterion) {
    let (m, k, n) = (8, 64, 8);
    let a: Vec<i16> = (0..m * k).map(|i| (i as i16).wrapping_mul(311)).collect();
    let b: Vec<i16> = (0..k * n).map(|i| (i as i16).wrapping_mul(-97)).collect();
    let mut group = c.benchmark_group("e2t_top_4x4");
    for (name, mode) in [
        ("gemm_8x64x8_int16", Mode::Int16),
        ("gemm_8x64x8_int8", Mode::Int8),
    ] {
        // Cycles per GEMM (including the AXI4-Lite traffic) are fixed for a fixed bus: measure once.
        let mut tb = Tb::new(1, Stalls::NONE, None).expect("model");
        let start = tb.cycle();
        tb.gemm(&a, &b, m, k, n, mode, OutFmt::Requant(8))
            .expect("gemm");
        let cycles = tb.cycle() - start;
        group.throughput(Throughput::Elements(cycles));
        group.bench_function(name, |bench| {
            bench.iter(|| {
                tb.clear_status().expect("clear");
                tb.gemm(&a, &b, m, k, n, mode, OutFmt::Requant(8))
                    .expect("gemm")
            })
        });
    }
    // The bare clock: one step with idle buses (the floor of the per-cycle cost).
    let mut tb = Tb::new(1, Stalls::NONE, None).expect("model");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("idle_1000_cycles", |bench| {
        bench.iter(|| tb.idle(1000).expect("idle"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = gemm_cycles
}
criterion_main!(benches);
