//! Ratio of soft-accelerator GEMM time to the fp32 `gemm` crate on conv-like shapes.
//!
//! `cargo run --release -p e2t-accel --example gemm_ratio [ITERS]`. Variants run interleaved and
//! the minimum wall time of each is reported, which is robust against other load on a shared
//! machine (criterion's `benches/soft_gemm.rs` gives distributions).

use e2t_accel::{AccelGemm, AccelGemmConfig, Accelerator, CodeMatrix, GemmOut, Mode, SoftAccel};
use e2t_nn::GemmEngine;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

fn fp32_gemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
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
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

fn main() {
    let iters: usize = match std::env::args().nth(1) {
        None => 15,
        Some(s) => match s.parse() {
            Ok(v) if v > 0 => v,
            _ => {
                eprintln!("gemm_ratio: ITERS must be a positive integer, got '{s}'");
                std::process::exit(2);
            }
        },
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    println!(
        "shape (MxKxN)      fp32 ms | int16 raw  x | int8 raw  x | fwd int16  x | fwd int8  x"
    );
    for (m, k, n) in [
        (100_352usize, 144usize, 16usize),
        (25_088, 288, 32),
        (6272, 576, 64),
    ] {
        let af: Vec<f32> = (0..m * k).map(|_| rng.random::<f32>() - 0.5).collect();
        let bf: Vec<f32> = (0..k * n).map(|_| rng.random::<f32>() - 0.5).collect();
        let ac: Vec<i16> = (0..m * k).map(|_| rng.random()).collect();
        let bc: Vec<i16> = (0..k * n).map(|_| rng.random()).collect();
        let mut cf = vec![0f32; m * n];
        let mut raw = vec![0i64; m * n];
        let mut accel = SoftAccel::new(16, 16).expect("16 x 16 is a valid array");
        let x = Array2::from_shape_vec((m, k), af.clone()).expect("shape");
        let w = Array2::from_shape_vec((k, n), bf.clone()).expect("shape");
        let mut y = Array2::<f32>::zeros((m, n));
        let mut e16 = AccelGemm::new(
            SoftAccel::new(16, 16).expect("array"),
            AccelGemmConfig::baseline(),
        );
        let cfg8 = AccelGemmConfig {
            forward_mode: Mode::Int8,
            ..AccelGemmConfig::baseline()
        };
        let mut e8 = AccelGemm::new(SoftAccel::new(16, 16).expect("array"), cfg8);
        let mut best = [Duration::MAX; 5];
        for _ in 0..iters {
            let t = Instant::now();
            fp32_gemm(&af, &bf, &mut cf, m, k, n);
            best[0] = best[0].min(t.elapsed());
            for (slot, mode) in [(1, Mode::Int16), (2, Mode::Int8)] {
                let t = Instant::now();
                for r0 in (0..m).step_by(65_520) {
                    let r1 = (r0 + 65_520).min(m);
                    let a = CodeMatrix::row_major(&ac[r0 * k..r1 * k], r1 - r0, k).expect("view");
                    let b = CodeMatrix::row_major(&bc, k, n).expect("view");
                    accel
                        .gemm(a, b, mode, GemmOut::Raw(&mut raw[r0 * n..r1 * n]))
                        .expect("gemm");
                }
                best[slot] = best[slot].min(t.elapsed());
            }
            let t = Instant::now();
            e16.forward("l", x.view(), w.view(), y.view_mut());
            best[3] = best[3].min(t.elapsed());
            let t = Instant::now();
            e8.forward("l", x.view(), w.view(), y.view_mut());
            best[4] = best[4].min(t.elapsed());
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let base = ms(best[0]);
        println!(
            "{:>6}x{:>3}x{:>2}  {:>8.2} | {:>6.2} {:>4.2} | {:>5.2} {:>4.2} | {:>6.2} {:>4.2} | {:>5.2} {:>4.2}",
            m,
            k,
            n,
            base,
            ms(best[1]),
            ms(best[1]) / base,
            ms(best[2]),
            ms(best[2]) / base,
            ms(best[3]),
            ms(best[3]) / base,
            ms(best[4]),
            ms(best[4]) / base
        );
    }
}
