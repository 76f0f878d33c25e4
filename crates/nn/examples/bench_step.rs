//! `cargo run --release -p e2t-nn --example bench_step -- [depth] [batch] [windows] [iters]`:
//! prints one text line and the JSON report of `bench_train_step` on 1x28x28 input.

use e2t_core::{InputShape, ModelKind};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let depth = *args.first().unwrap_or(&8) as u32;
    let batch = *args.get(1).unwrap_or(&128);
    let windows = *args.get(2).unwrap_or(&5);
    let iters = *args.get(3).unwrap_or(&4);
    let input = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let r = e2t_nn::bench_train_step(ModelKind::ResNet { depth }, batch, input, 2, windows, iters)
        .expect("bench runs");
    println!("{}", r.line());
    println!("{}", serde_json::to_string(&r).expect("report serialises"));
}
