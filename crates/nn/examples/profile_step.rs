//! `cargo run --release -p e2t-nn --example profile_step -- [depth] [batch] [threads] [steps]`:
//! where a ResNet training step on 1x28x28 input spends its time, piece by piece (stem, each
//! block, head; forward and backward; SGD), in wall time and in process CPU time.
//!
//! CPU time is the figure to compare on a shared machine: other jobs stretch wall time, but
//! (cache effects aside) not the CPU time this process itself burns. With `threads = 1` the two
//! agree on an idle machine.

use e2t_nn::{BatchNorm2d, Conv2d, ConvGeom, Fp32Gemm, Module, ResNet, Sgd, softmax_cross_entropy};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Instant;

/// Process CPU time (all threads), seconds.
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant libc defines.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[derive(Default)]
struct Acc {
    wall: f64,
    cpu: f64,
}

struct Prof {
    acc: BTreeMap<String, Acc>,
    on: bool,
}

impl Prof {
    fn time<R>(&mut self, name: &str, f: impl FnOnce() -> R) -> R {
        let (w, c) = (Instant::now(), cpu_s());
        let r = f();
        if self.on {
            let a = self.acc.entry(name.to_string()).or_default();
            a.wall += w.elapsed().as_secs_f64();
            a.cpu += cpu_s() - c;
        }
        r
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let depth = *args.first().unwrap_or(&20) as u32;
    let batch = *args.get(1).unwrap_or(&128);
    let threads = *args.get(2).unwrap_or(&2);
    let steps = *args.get(3).unwrap_or(&4);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    e2t_nn::keep_freed_memory();
    let input = e2t_nn::InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut model = ResNet::new(depth, input, 10, &mut rng).expect("valid depth");
    let mut gemm = Fp32Gemm::from_rayon();
    let mut sgd = Sgd::new(0.9, 5e-4);
    let x = Array4::from_shape_fn((batch, 28, 28, 1), |_| rng.random::<f32>() * 2.0 - 1.0);
    let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..10u8)).collect();
    let mut p = Prof {
        acc: BTreeMap::new(),
        on: false,
    };
    let (mut wall, mut cpu) = (0.0, 0.0);
    for step in 0..steps + 1 {
        // Step 0 warms up caches, the allocator and the scratch buffers.
        p.on = step > 0;
        let (w0, c0) = (Instant::now(), cpu_s());
        model.zero_grad();
        let mut h = p.time("fwd stem", || model.stem.forward(&x, &mut gemm, true));
        for b in &mut model.blocks {
            let key = format!("fwd {}", b.name);
            h = p.time(&key, || b.forward(&h, &mut gemm, true));
        }
        let logits = p.time("fwd head", || model.head.forward(&h, &mut gemm, true));
        drop(h);
        let ce = softmax_cross_entropy(&logits, &labels);
        let mut d = p.time("bwd head", || model.head.backward(&ce.dlogits, &mut gemm));
        for b in model.blocks.iter_mut().rev() {
            let key = format!("bwd {}", b.name);
            d = p.time(&key, || b.backward(&d, &mut gemm));
        }
        p.time("bwd stem", || model.stem.backward(&d, &mut gemm));
        drop(d);
        p.time("sgd", || sgd.step(&mut model.params_mut(), 0.01));
        if p.on {
            wall += w0.elapsed().as_secs_f64();
            cpu += cpu_s() - c0;
        }
    }
    let s = steps as f64;
    println!(
        "resnet{depth} batch {batch} threads {threads}: {:.1} ms/step wall ({:.1} img/s), {:.1} ms/step CPU ({:.1} img per CPU-s)",
        1e3 * wall / s,
        batch as f64 * s / wall,
        1e3 * cpu / s,
        batch as f64 * s / cpu
    );
    let mut rows: Vec<_> = p.acc.iter().collect();
    rows.sort_by(|a, b| b.1.cpu.total_cmp(&a.1.cpu));
    for (k, a) in rows {
        println!(
            "  {k:28} wall {:7.2} ms  cpu {:7.2} ms  ({:4.1}% of CPU)",
            1e3 * a.wall / s,
            1e3 * a.cpu / s,
            100.0 * a.cpu / cpu
        );
    }
    ops(batch, steps.max(2) * 2);
}

/// The layer operations of a ResNet's three stages on their own (batch x h x h x c), per call.
fn ops(batch: usize, reps: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut gemm = Fp32Gemm::from_rayon();
    let mut p = Prof {
        acc: BTreeMap::new(),
        on: true,
    };
    for (h, c) in [(28usize, 16usize), (14, 32), (7, 64)] {
        let x = Array4::from_shape_fn((batch, h, h, c), |_| rng.random::<f32>() * 2.0 - 1.0);
        let mut bn = BatchNorm2d::new("bn", c, true);
        let geom = ConvGeom {
            in_ch: c,
            out_ch: c,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        let mut conv = Conv2d::new("conv", geom, false);
        conv.init_kaiming(&mut rng);
        for r in 0..reps + 1 {
            p.on = r > 0;
            let y = p.time(&format!("{h}x{h}x{c} bn fwd"), || bn.forward(&x, true));
            let _ = p.time(&format!("{h}x{h}x{c} bn bwd"), || bn.backward(&y));
            let y = p.time(&format!("{h}x{h}x{c} conv fwd"), || {
                conv.forward(&x, &mut gemm, true)
            });
            let _ = p.time(&format!("{h}x{h}x{c} conv bwd"), || {
                conv.backward(&y, &mut gemm)
            });
        }
    }
    for (k, a) in &p.acc {
        println!(
            "  op {k:22} wall {:7.2} ms  cpu {:7.2} ms",
            1e3 * a.wall / reps as f64,
            1e3 * a.cpu / reps as f64
        );
    }
}
