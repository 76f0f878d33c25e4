//! Soft accelerator GEMM throughput against the fp32 `gemm` crate on conv-like shapes.
//!
//! `cargo bench -p e2t-accel --bench soft_gemm` (criterion). Shapes are im2col GEMMs of a
//! ResNet on 28x28 inputs with batch 128: [M = batch * pixels, K = Cin * 9] x [K, N = Cout].
//!
//! On a shared, loaded machine wall time says little; `E2T_BENCH_CPU=1` measures the CPU time of
//! all the process's threads instead (from `/proc/self/task/*/schedstat`, Linux only), which with
//! `RAYON_NUM_THREADS=1` is the single-core cost of each case.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use e2t_accel::{AccelGemm, AccelGemmConfig, Accelerator, CodeMatrix, GemmOut, Mode, SoftAccel};
use e2t_nn::GemmEngine;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

const SHAPES: [(usize, usize, usize); 3] = [(100_352, 144, 16), (25_088, 288, 32), (6272, 576, 64)];

fn float_gemm<T: 'static + Copy>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    (m, k, n): (usize, usize, usize),
    zero: T,
    one: T,
) {
    // SAFETY: row-major buffers of exactly m*k, k*n and m*n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            zero,
            one,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (m, k, n) in SHAPES {
        let id = format!("{m}x{k}x{n}");
        let af: Vec<f32> = (0..m * k).map(|_| rng.random::<f32>() - 0.5).collect();
        let bf: Vec<f32> = (0..k * n).map(|_| rng.random::<f32>() - 0.5).collect();
        let ac: Vec<i16> = (0..m * k).map(|_| rng.random()).collect();
        let bc: Vec<i16> = (0..k * n).map(|_| rng.random()).collect();
        let mut cf = vec![0f32; m * n];
        let mut raw = vec![0i64; m.min(65_532) * n];
        let mut accel = SoftAccel::new(16, 16).unwrap();

        g.bench_function(BenchmarkId::new("fp32_gemm_crate", &id), |bch| {
            bch.iter(|| float_gemm(black_box(&af), &bf, &mut cf, (m, k, n), 0.0, 1.0))
        });
        if std::env::var_os("E2T_BENCH_F64").is_some() {
            // The f64 GEMM alone (what the INT16 path runs after converting codes), for a breakdown.
            let ad: Vec<f64> = ac.iter().map(|&v| v as f64).collect();
            let bd: Vec<f64> = bc.iter().map(|&v| v as f64).collect();
            let mut cd = vec![0f64; m * n];
            let mut q = vec![0i16; m * k];
            g.bench_function(BenchmarkId::new("quantize_serial", &id), |bch| {
                bch.iter(|| {
                    let e = e2t_numerics::choose_exp(e2t_numerics::max_abs_finite(black_box(&af)));
                    e2t_numerics::quantize_into(&af, e, &mut q)
                })
            });
            g.bench_function(BenchmarkId::new("max_abs_serial", &id), |bch| {
                bch.iter(|| e2t_numerics::max_abs_finite(black_box(&af)))
            });
            g.bench_function(BenchmarkId::new("f64_gemm_crate", &id), |bch| {
                bch.iter(|| float_gemm(black_box(&ad), &bd, &mut cd, (m, k, n), 0.0, 1.0))
            });
        }
        for mode in [Mode::Int16, Mode::Int8] {
            g.bench_function(
                BenchmarkId::new(format!("soft_{}_raw", mode.as_str()), &id),
                |bch| {
                    bch.iter(|| {
                        // One command holds at most 65535 rows: split like AccelGemm does.
                        for r0 in (0..m).step_by(65_532) {
                            let r1 = (r0 + 65_532).min(m);
                            let a = CodeMatrix::row_major(&ac[r0 * k..r1 * k], r1 - r0, k).unwrap();
                            let b = CodeMatrix::row_major(&bc, k, n).unwrap();
                            accel
                                .gemm(a, b, mode, GemmOut::Raw(&mut raw[..(r1 - r0) * n]))
                                .unwrap();
                        }
                    })
                },
            );
        }
        // The whole forward seam: quantize fp32, GEMM, dequantize.
        let x = Array2::from_shape_vec((m, k), af.clone()).unwrap();
        let w = Array2::from_shape_vec((k, n), bf.clone()).unwrap();
        let mut y = Array2::<f32>::zeros((m, n));
        for (name, cfg) in [
            ("int16", AccelGemmConfig::baseline()),
            (
                "int8",
                AccelGemmConfig {
                    forward_mode: Mode::Int8,
                    ..AccelGemmConfig::baseline()
                },
            ),
        ] {
            let mut eng = AccelGemm::new(SoftAccel::new(16, 16).unwrap(), cfg);
            g.bench_function(
                BenchmarkId::new(format!("accelgemm_forward_{name}"), &id),
                |bch| bch.iter(|| eng.forward("bench", x.view(), w.view(), y.view_mut())),
            );
        }
    }
    g.finish();
}

/// The layer GEMMs whose operands are views: the weight gradient (A = xᵀ, K-major, long K) and
/// the input gradient (B = wᵀ, column-major, requantized output), INT16 as in the baseline.
fn bench_layers<M: Measurement>(c: &mut Criterion<M>) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut g = c.benchmark_group("layer");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut accel = SoftAccel::new(16, 16).unwrap();
    // Weight gradient [Cin*9, B*H*W] x [B*H*W, Cout].
    for (kc, m, n) in [(144, 100_352, 16), (576, 6272, 64)] {
        let x: Vec<i16> = (0..m * kc).map(|_| rng.random()).collect();
        let dy: Vec<i16> = (0..m * n).map(|_| rng.random()).collect();
        let scale = vec![2f64.powi(-40); n];
        let mut out = vec![0f32; kc * n];
        g.bench_function(
            BenchmarkId::new("weight_grad_int16", format!("{kc}x{m}x{n}")),
            |bch| {
                bch.iter(|| {
                    let a = CodeMatrix::row_major(black_box(&x), m, kc).unwrap().t();
                    let b = CodeMatrix::row_major(&dy, m, n).unwrap();
                    accel
                        .gemm_scaled(a, b, Mode::Int16, None, &scale, &mut out)
                        .unwrap();
                })
            },
        );
    }
    // Input gradient [B*H*W, Cout] x [Cout, Cin*9] (B = wᵀ of the [Cin*9, Cout] weight codes).
    for (m, k, n) in [(25_088, 32, 288), (6272, 64, 576)] {
        let dy: Vec<i16> = (0..m * k).map(|_| rng.random()).collect();
        let w: Vec<i16> = (0..n * k).map(|_| rng.random()).collect();
        let scale = vec![2f64.powi(-30); n];
        let mut out = vec![0f32; m * n];
        g.bench_function(
            BenchmarkId::new("backward_data_int16_requant", format!("{m}x{k}x{n}")),
            |bch| {
                bch.iter(|| {
                    let a = CodeMatrix::row_major(black_box(&dy), m, k).unwrap();
                    let b = CodeMatrix::row_major(&w, n, k).unwrap().t();
                    accel
                        .gemm_scaled(a, b, Mode::Int16, Some(16), &scale, &mut out)
                        .unwrap();
                })
            },
        );
    }
    g.finish();
}

/// CPU time of every thread of this process, in nanoseconds.
struct CpuTime;

fn cpu_ns() -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task (Linux only)");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        cpu_ns().saturating_sub(i)
    }
    fn add(&self, v1: &u64, v2: &u64) -> u64 {
        v1 + v2
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e6);
        "ms cpu"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _t: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e6);
        "ms cpu"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns cpu"
    }
}

fn main() {
    if std::env::var_os("E2T_BENCH_CPU").is_some() {
        let mut c = Criterion::default()
            .with_measurement(CpuTime)
            .configure_from_args();
        bench(&mut c);
        bench_layers(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default()
            .with_measurement(WallTime)
            .configure_from_args();
        bench(&mut c);
        bench_layers(&mut c);
        c.final_summary();
    }
}
