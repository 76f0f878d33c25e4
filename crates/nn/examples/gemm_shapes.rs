//! Times the three conv GEMMs of each ResNet stage at batch 128 on 1x28x28 (NHWC roles):
//! `cargo run --release -p e2t-nn --example gemm_shapes`.

use e2t_nn::{Fp32Gemm, GemmEngine};
use ndarray::Array2;
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < 0.3 {
        f();
        n += 1;
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let mut g = Fp32Gemm::from_rayon();
    for (name, m, k, n) in [
        ("stem", 100352, 9, 16),
        ("s1", 100352, 144, 16),
        ("s2", 25088, 288, 32),
        ("s3", 6272, 576, 64),
    ] {
        let x = Array2::<f32>::from_elem((m, k), 0.5);
        let w = Array2::<f32>::from_elem((k, n), 0.25);
        let dy = Array2::<f32>::from_elem((m, n), 0.1);
        let mut y = Array2::<f32>::zeros((m, n));
        let mut dx = Array2::<f32>::zeros((m, k));
        let mut dw = Array2::<f32>::zeros((k, n));
        let fl = 2.0 * (m * k * n) as f64 / 1e9;
        let tf = time(|| g.forward("l", x.view(), w.view(), y.view_mut()));
        let td = time(|| g.backward_data("l", dy.view(), w.view(), dx.view_mut()));
        let tw = time(|| g.backward_weight("l", x.view(), dy.view(), dw.view_mut()));
        println!(
            "{name:5} M={m} K={k} N={n}: fwd {:.2} ms ({:.0} GF/s), bwd-data {:.2} ms ({:.0}), bwd-weight {:.2} ms ({:.0})",
            tf * 1e3,
            fl / tf,
            td * 1e3,
            fl / td,
            tw * 1e3,
            fl / tw
        );
    }
}
