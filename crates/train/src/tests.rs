//! Engine-level tests on tiny models (fp32 backend unless the test is about the accelerator).

use crate::backend::{Fp32Backend, NdGemm};
use crate::engine::E2TrainEngine;
use crate::layers::{BatchNorm, Conv2d, Ctx, DwConv2d};
use e2t_core::Mode;
use e2t_core::{
    Batch, EngineConfig, InputShape, MethodConfig, ModelKind, Precision, StepEngine, TrainOnly,
};
use ndarray::{Array4, Zip};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) fn tiny_cfg(model: ModelKind, side: u32, method: MethodConfig) -> EngineConfig {
    EngineConfig {
        model,
        input: InputShape {
            channels: 1,
            height: side,
            width: side,
        },
        classes: 4,
        mean: vec![0.5],
        std: vec![0.25],
        method,
        momentum: 0.9,
        weight_decay: 1e-4,
        seed: 7,
        train_only: TrainOnly::All,
        array: (8, 8),
    }
}

/// Deterministic batches whose label depends on the image (so training has signal).
pub(crate) fn batch(seq: u64, n: usize, side: usize, lr: f32) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + seq);
    let mut images = vec![0u8; n * side * side];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let l = rng.random_range(0..4u8);
        labels[i] = l;
        for p in 0..side * side {
            let quadrant = ((p / side) * 2 / side) * 2 + (p % side) * 2 / side;
            let base = if quadrant == l as usize { 200 } else { 60 };
            images[i * side * side + p] = (base + rng.random_range(0..40)) as u8;
        }
    }
    Batch {
        seq,
        lr,
        images,
        labels,
    }
}

fn fp32_backend() -> Fp32Backend<NdGemm> {
    Fp32Backend::new(NdGemm)
}

/// Central finite difference of `f` around a perturbation applied through `set`.
fn fd(mut f: impl FnMut(f32) -> f32, eps: f32) -> f32 {
    (f(eps) - f(-eps)) / (2.0 * eps)
}

fn close(an: f32, num: f32, rel: f32, abs: f32) -> bool {
    (an - num).abs() <= abs + rel * an.abs().max(num.abs())
}

#[test]
fn depthwise_conv_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut be = fp32_backend();
    for stride in [1, 2] {
        let mut dw = DwConv2d::new("dw", 3, stride, &mut rng);
        let x = Array4::from_shape_simple_fn((2, 5, 5, 3), || rng.random_range(-1.0f32..1.0));
        let ctx = Ctx {
            train: true,
            fwd_mode: Mode::Int16,
        };
        let y = dw.forward(&mut be, &x, ctx);
        assert_eq!(
            y.dim(),
            (
                2,
                if stride == 1 { 5 } else { 3 },
                if stride == 1 { 5 } else { 3 },
                3
            )
        );
        // L = Σ c ⊙ y with fixed random c.
        let c = Array4::from_shape_simple_fn(y.dim(), || rng.random_range(-1.0f32..1.0));
        dw.w.zero_grad();
        let dx = dw.backward(&mut be, &c, true, false).expect("dx");
        let loss = |dw: &mut DwConv2d, x: &Array4<f32>, be: &mut Fp32Backend<NdGemm>| {
            (dw.forward(
                be,
                x,
                Ctx {
                    train: false,
                    ..ctx
                },
            ) * &c)
                .sum()
        };
        for (r, col) in [(0, 0), (4, 1), (8, 2), (3, 2)] {
            let num = fd(
                |e| {
                    dw.w.value[[r, col]] += e;
                    let v = loss(&mut dw, &x, &mut be);
                    dw.w.value[[r, col]] -= e;
                    v
                },
                1e-2,
            );
            assert!(
                close(dw.w.grad[[r, col]], num, 1e-3, 1e-3),
                "dw[{r},{col}] {} vs {num}",
                dw.w.grad[[r, col]]
            );
        }
        for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (1, 4, 4, 2), (0, 1, 2, 2)] {
            let mut xp = x.clone();
            let num = fd(
                |e| {
                    xp[idx] = x[idx] + e;
                    loss(&mut dw, &xp, &mut be)
                },
                1e-2,
            );
            assert!(
                close(dx[idx], num, 1e-3, 1e-3),
                "dx{idx:?} {} vs {num}",
                dx[idx]
            );
        }
    }
}

#[test]
fn conv_and_batchnorm_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut be = fp32_backend();
    let mut conv = Conv2d::new("c", 2, 3, 3, 2, &mut rng);
    let mut bn = BatchNorm::new("bn", 3);
    bn.gamma.value.assign(&ndarray::arr2(&[[1.2, 0.7, -0.5]]));
    let x = Array4::from_shape_simple_fn((3, 6, 6, 2), || rng.random_range(-1.0f32..1.0));
    let ctx = Ctx {
        train: true,
        fwd_mode: Mode::Int16,
    };
    let y = bn.forward(conv.forward(&mut be, &x, ctx), ctx);
    let c = Array4::from_shape_simple_fn(y.dim(), || rng.random_range(-1.0f32..1.0));
    conv.w.zero_grad();
    let d = bn.backward(c.clone());
    let dx = conv.backward(&mut be, &d, true, false).expect("dx");
    let mut loss = |conv: &mut Conv2d, bn: &mut BatchNorm, x: &Array4<f32>| {
        let (rm, rv) = (bn.running_mean.clone(), bn.running_var.clone());
        let v = (bn.forward(conv.forward(&mut be, x, ctx), ctx) * &c).sum();
        (bn.running_mean, bn.running_var) = (rm, rv);
        v
    };
    for (r, col) in [(0, 0), (7, 1), (17, 2)] {
        let num = fd(
            |e| {
                conv.w.value[[r, col]] += e;
                let v = loss(&mut conv, &mut bn, &x);
                conv.w.value[[r, col]] -= e;
                v
            },
            1e-2,
        );
        assert!(
            close(conv.w.grad[[r, col]], num, 2e-2, 2e-3),
            "dw[{r},{col}] {} vs {num}",
            conv.w.grad[[r, col]]
        );
    }
    for ch in 0..3 {
        let num = fd(
            |e| {
                bn.gamma.value[[0, ch]] += e;
                let v = loss(&mut conv, &mut bn, &x);
                bn.gamma.value[[0, ch]] -= e;
                v
            },
            1e-2,
        );
        assert!(
            close(bn.gamma.grad[[0, ch]], num, 2e-2, 2e-3),
            "dgamma[{ch}] {} vs {num}",
            bn.gamma.grad[[0, ch]]
        );
    }
    for idx in [(0, 0, 0, 0), (2, 3, 4, 1), (1, 5, 5, 0)] {
        let mut xp = x.clone();
        let num = fd(
            |e| {
                xp[idx] = x[idx] + e;
                loss(&mut conv, &mut bn, &xp)
            },
            1e-2,
        );
        assert!(
            close(dx[idx], num, 2e-2, 2e-3),
            "dx{idx:?} {} vs {num}",
            dx[idx]
        );
    }
}

/// The gate's gradient (and the gated blocks' mixing backward) against finite differences of the soft
/// relaxation m -> p, through a whole SLU ResNet-8 including the cost regulariser.
#[test]
fn slu_gate_gradient_matches_finite_differences_through_the_soft_relaxation() {
    let method = MethodConfig {
        precision: Precision::Fp32,
        slu: true,
        slu_target: 1.0,
        slu_beta: 2.0,
        ..MethodConfig::fp32()
    };
    let cfg = tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, method);
    let mut eng = E2TrainEngine::with_backend(cfg, Box::new(fp32_backend())).expect("engine");
    // Start from p around 0.5 so the relaxation is far from saturated.
    eng.net_mut().gate.as_mut().expect("gate").b_out.value[[0, 0]] = 0.2;
    let b = batch(1, 5, 8, 0.1);
    let (_, grads) = eng.soft_loss_and_grads(&b.images, &b.labels);
    // Probe each parameter tensor at its largest analytic gradient (a strong signal over f32 noise).
    let names = [
        "gate.out.bias",
        "gate.out.weight",
        "gate.lstm.w_ih",
        "gate.lstm.w_hh",
        "gate.lstm.bias",
        "gate.embed0.weight",
        "gate.embed1.weight",
        "gate.embed1.bias",
        // Backbone weights inside and before the gated blocks (mixing backward, gate -> x path).
        "stage2.block0.conv1.weight",
        "stage2.block0.shortcut.conv.weight",
        "stage3.block0.conv2.weight",
        "stage1.block0.conv2.weight",
    ];
    let probes: Vec<(String, (usize, usize))> =
        names
            .iter()
            .map(|&n| {
                let g = &grads
                    .iter()
                    .find(|(m, _)| m == n)
                    .unwrap_or_else(|| panic!("no parameter {n}"))
                    .1;
                let (idx, _) = g.indexed_iter().fold(((0, 0), 0f32), |a, (i, &v)| {
                    if v.abs() > a.1 { (i, v.abs()) } else { a }
                });
                (n.to_string(), idx)
            })
            .collect();
    for (name, (r, c)) in probes {
        let an = grads
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))
            .1[[r, c]];
        let mut eval = |e: f32| {
            eng.net_mut().visit_params(&mut |p| {
                if p.name == name {
                    p.value[[r, c]] += e;
                }
            });
            let v = eng.soft_loss_and_grads(&b.images, &b.labels).0;
            eng.net_mut().visit_params(&mut |p| {
                if p.name == name {
                    p.value[[r, c]] -= e;
                }
            });
            v
        };
        // Conv weights sit near ReLU kinks: a smaller step (their gradients are large enough for it).
        let num = fd(
            &mut eval,
            if name.starts_with("gate.") {
                1e-2
            } else {
                1e-3
            },
        );
        assert!(
            an.abs() > 1e-3,
            "{name}: gradient too small to check ({an})"
        );
        assert!(
            close(an, num, 0.03, 5e-5),
            "{name}[{r},{c}]: analytic {an} vs finite difference {num}"
        );
    }
}

#[test]
fn skip_step_applies_the_reference_momentum_and_weight_decay() {
    let cfg = tiny_cfg(
        ModelKind::ResNet { depth: 8 },
        8,
        MethodConfig {
            slu: true,
            ..MethodConfig::fp32()
        },
    );
    let mut eng = E2TrainEngine::with_backend(cfg, Box::new(fp32_backend())).expect("engine");
    let snap = |eng: &mut E2TrainEngine| {
        let mut v = Vec::new();
        eng.net_mut()
            .visit_params(&mut |p| v.push((p.value.clone(), p.mom.clone())));
        v
    };
    // Before any real step the reference has no gradients: nothing moves.
    let s0 = snap(&mut eng);
    eng.skip_step(0.1).expect("skip");
    assert_eq!(s0, snap(&mut eng));
    eng.step(&batch(1, 4, 8, 0.1)).expect("step");
    let s1 = snap(&mut eng);
    let (lr, m, wd) = (0.05f32, 0.9f32, 1e-4f32);
    eng.skip_step(lr).expect("skip");
    let s2 = snap(&mut eng);
    let mut moved = false;
    for ((w1, b1), (w2, b2)) in s1.iter().zip(&s2) {
        Zip::from(w1)
            .and(b1)
            .and(w2)
            .and(b2)
            .for_each(|&w1, &b1, &w2, &b2| {
                let b = m * b1 + wd * w1;
                assert!((b2 - b).abs() <= 1e-7 + 1e-6 * b.abs(), "buf {b2} vs {b}");
                assert!(
                    (w2 - (w1 - lr * b)).abs() <= 1e-6 + 1e-6 * w1.abs(),
                    "w {w2} vs {}",
                    w1 - lr * b
                );
                moved |= w2 != w1;
            });
    }
    assert!(
        moved,
        "a skip step after a real step moves the weights along the momentum"
    );
    assert!(eng.skip_step(f32::NAN).is_err());
}

fn executed_fraction(eng: &E2TrainEngine, diag: &e2t_core::StepDiag) -> f32 {
    let reg = eng.regulariser().expect("slu");
    let total: f32 = reg.weights.iter().sum();
    diag.slu_executed
        .iter()
        .zip(&reg.weights)
        .map(|((_, e, n), w)| w * *e as f32 / *n as f32)
        .sum::<f32>()
        / total
}

#[test]
fn slu_regulariser_drives_the_executed_fraction_to_the_target() {
    let method = MethodConfig {
        precision: Precision::Fp32,
        slu: true,
        slu_target: 0.3,
        slu_beta: 0.5,
        slu_gate_downsample: true,
        ..MethodConfig::fp32()
    };
    let cfg = tiny_cfg(ModelKind::ResNet { depth: 14 }, 8, method);
    let mut eng = E2TrainEngine::with_backend(cfg, Box::new(fp32_backend())).expect("engine");
    assert_eq!(
        eng.gated_blocks().len(),
        5,
        "resnet14: 6 blocks, block 0 always runs, downsampling blocks gated too"
    );
    // Cost weights are real MACs: the stride-2 blocks cost less than the stride-1 ones of stage 1.
    let w = &eng.regulariser().expect("slu").weights;
    assert!(w.iter().any(|&v| v < 1.0) && w.contains(&1.0), "{w:?}");
    let mut fracs = Vec::new();
    for s in 0..40u64 {
        let r = eng.step(&batch(s + 1, 16, 8, 0.1)).expect("step");
        assert_eq!(r.diag.slu_executed.len(), 5);
        fracs.push(executed_fraction(&eng, &r.diag));
        for ((b, _, n), (d, k)) in r.diag.slu_executed.iter().zip(&r.diag.slu_decisive) {
            assert_eq!(b, d);
            // The gates start at p = σ(2) = 0.88 for every sample: all decisive.
            assert!(*k <= *n && (s > 0 || k == n), "step {s} {b}: {k} of {n}");
        }
    }
    let start: f32 = fracs[..3].iter().sum::<f32>() / 3.0;
    let end: f32 = fracs[fracs.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(start > 0.6, "gates start open: {fracs:?}");
    assert!(
        (end - 0.3).abs() < 0.12 && end < start - 0.2,
        "executed fraction moves to the 0.3 target: {fracs:?}"
    );
}

#[test]
fn same_seed_same_batches_give_identical_checkpoints_and_restore_continues_bit_identically() {
    let method = MethodConfig {
        precision: Precision::Fp32,
        slu: true,
        slu_target: 0.5,
        slu_beta: 1.0,
        ..MethodConfig::fp32()
    };
    let cfg = tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, method);
    let mk = || E2TrainEngine::with_backend(cfg.clone(), Box::new(fp32_backend())).expect("engine");
    let (mut a, mut b) = (mk(), mk());
    for s in 1..=3 {
        let ra = a.step(&batch(s, 6, 8, 0.1)).expect("a");
        let rb = b.step(&batch(s, 6, 8, 0.1)).expect("b");
        assert_eq!(ra, rb);
    }
    a.skip_step(0.1).expect("skip");
    b.skip_step(0.1).expect("skip");
    let ck = a.checkpoint().expect("ckpt");
    assert_eq!(ck, b.checkpoint().expect("ckpt"));
    // Continue a; restore the checkpoint into a fresh engine and continue identically.
    let mut c = mk();
    c.restore(&ck).expect("restore");
    for s in 4..=5 {
        let ra = a.step(&batch(s, 6, 8, 0.1)).expect("a");
        let rc = c.step(&batch(s, 6, 8, 0.1)).expect("c");
        assert_eq!(ra, rc);
    }
    assert_eq!(a.checkpoint().expect("a"), c.checkpoint().expect("c"));
    // A replayed sequence number is refused.
    assert!(c.step(&batch(5, 6, 8, 0.1)).is_err());
}

#[test]
fn corrupt_or_foreign_checkpoints_are_refused_clearly() {
    let cfg = tiny_cfg(
        ModelKind::ResNet { depth: 8 },
        8,
        MethodConfig {
            slu: true,
            ..MethodConfig::fp32()
        },
    );
    let mut a = E2TrainEngine::with_backend(cfg.clone(), Box::new(fp32_backend())).expect("engine");
    a.step(&batch(1, 4, 8, 0.1)).expect("step");
    let ck = a.checkpoint().expect("ckpt");
    let mut flipped = ck.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let msg = a.restore(&flipped).expect_err("corrupt").to_string();
    assert!(msg.contains("checksum"), "{msg}");
    let msg = a
        .restore(&ck[..ck.len() - 9])
        .expect_err("truncated")
        .to_string();
    assert!(msg.contains("checksum") || msg.contains("decode"), "{msg}");
    let msg = a
        .restore(b"hello world, not a checkpoint")
        .expect_err("foreign")
        .to_string();
    assert!(msg.contains("not an e2t-train checkpoint"), "{msg}");
    let msg = a
        .restore(b"E2TRAIN1 an older layout")
        .expect_err("old")
        .to_string();
    assert!(msg.contains("older e2train"), "{msg}");
    // Another configuration (different seed) is refused by restore, but its weights load for init.
    let mut other = E2TrainEngine::with_backend(
        EngineConfig {
            seed: 8,
            ..cfg.clone()
        },
        Box::new(fp32_backend()),
    )
    .expect("engine");
    assert!(
        other
            .restore(&ck)
            .expect_err("other cfg")
            .to_string()
            .contains("different configuration")
    );
    other
        .load_weights_from_checkpoint(&ck)
        .expect("weights load across methods/seeds");
    let probe = batch(9, 8, 8, 0.1);
    assert_eq!(
        a.evaluate(&probe.images, &probe.labels).expect("a"),
        other.evaluate(&probe.images, &probe.labels).expect("b")
    );
    // A different model is refused.
    let mut r14 = E2TrainEngine::with_backend(
        tiny_cfg(ModelKind::ResNet { depth: 14 }, 8, MethodConfig::fp32()),
        Box::new(fp32_backend()),
    )
    .expect("engine");
    assert!(r14.load_weights_from_checkpoint(&ck).is_err());
}

#[test]
fn fine_tuning_last_updates_only_the_classifier() {
    let mut cfg = tiny_cfg(
        ModelKind::ResNet { depth: 8 },
        8,
        MethodConfig {
            slu: true,
            ..MethodConfig::fp32()
        },
    );
    cfg.train_only = TrainOnly::Last;
    let mut eng = E2TrainEngine::with_backend(cfg, Box::new(fp32_backend())).expect("engine");
    let snap = |eng: &mut E2TrainEngine| {
        let mut v = Vec::new();
        eng.net_mut()
            .visit_params(&mut |p| v.push((p.name.clone(), p.value.clone())));
        let mut bn = Vec::new();
        eng.net_mut()
            .visit_bn(&mut |b| bn.push(b.running_mean.clone()));
        (v, bn)
    };
    let (p0, bn0) = snap(&mut eng);
    eng.step(&batch(1, 4, 8, 0.1)).expect("step");
    eng.skip_step(0.1).expect("skip");
    let (p1, bn1) = snap(&mut eng);
    assert_eq!(bn0, bn1, "frozen backbone keeps its BN statistics");
    for ((n, a), (_, b)) in p0.iter().zip(&p1) {
        assert_eq!(n.starts_with("fc."), a != b, "{n} changed: {}", a != b);
    }
}

#[test]
fn mobilenetv2_trains_with_slu_on_its_inverted_residual_blocks() {
    let method = MethodConfig {
        precision: Precision::Fp32,
        slu: true,
        slu_target: 0.5,
        slu_beta: 1.0,
        ..MethodConfig::fp32()
    };
    let cfg = tiny_cfg(ModelKind::MobileNetV2, 16, method);
    let mut eng =
        E2TrainEngine::with_backend(cfg.clone(), Box::new(fp32_backend())).expect("engine");
    let gated: Vec<String> = eng.gated_blocks().into_iter().map(|(n, _)| n).collect();
    assert_eq!(gated, ["block2", "block4", "block5", "block7"]);
    let mut shapes = Vec::new();
    eng.net_mut()
        .visit_params(&mut |p| shapes.push((p.name.clone(), p.value.dim())));
    assert!(
        shapes.contains(&("block1.dw.weight".into(), (9, 48))),
        "depthwise 3x3 over 8*6 channels"
    );
    assert!(shapes.contains(&("block1.expand.weight".into(), (8, 48))));
    assert!(shapes.contains(&("block1.project.weight".into(), (48, 12))));
    assert!(shapes.contains(&("fc.weight".into(), (128, 4))));
    let r = eng.step(&batch(1, 6, 16, 0.05)).expect("step");
    assert!(r.loss.is_finite() && r.samples == 6);
    assert_eq!(r.diag.slu_executed.len(), 4);
    let mut nonzero = 0;
    eng.net_mut()
        .visit_params(&mut |p| nonzero += usize::from(p.grad.iter().any(|&g| g != 0.0)));
    assert!(nonzero > 20, "gradients reach the backbone: {nonzero}");
    let e = eng
        .evaluate(&batch(2, 10, 16, 0.0).images, &batch(2, 10, 16, 0.0).labels)
        .expect("eval");
    assert_eq!(e.samples, 10);
    // Without SLU the fp32 MobileNetV2 still goes through the E2-Train engine.
    let plain = tiny_cfg(ModelKind::MobileNetV2, 16, MethodConfig::fp32());
    let mut eng = crate::build_engine(&plain).expect("mobilenet fp32");
    assert!(eng.step(&batch(1, 4, 16, 0.05)).is_ok());
}

#[test]
fn build_engine_refuses_bad_configurations() {
    let psg_fp32 = tiny_cfg(
        ModelKind::ResNet { depth: 8 },
        8,
        MethodConfig {
            psg: true,
            ..MethodConfig::fp32()
        },
    );
    let e = crate::build_engine(&psg_fp32)
        .err()
        .expect("psg in fp32")
        .to_string();
    assert!(e.contains("psg"), "{e}");
    let bad_target = tiny_cfg(
        ModelKind::ResNet { depth: 8 },
        8,
        MethodConfig {
            slu: true,
            slu_target: 1.5,
            ..MethodConfig::fp32()
        },
    );
    assert!(
        crate::build_engine(&bad_target)
            .err()
            .expect("target")
            .to_string()
            .contains("slu target")
    );
    let mut bad_mean = tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, MethodConfig::fp32());
    bad_mean.mean = vec![0.1, 0.2];
    assert!(crate::build_engine(&bad_mean).is_err());
    // A model with no gateable residual block refuses SLU with a message naming the model.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = crate::model::Network::new_from_blocks_for_test(&mut rng)
        .err()
        .expect("no residual blocks");
    assert!(e.contains("--slu") && e.contains("has none"), "{e}");
    let ok = tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, MethodConfig::fp32());
    let mut eng = crate::build_engine(&ok).expect("fp32 resnet");
    assert!(eng.step(&batch(1, 2, 8, 0.1)).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Accelerator-backed tests (soft accelerator through AccelGemm).

use crate::backend::{AccelBackend, Backend};
use e2t_accel::AccelGemmConfig;
use e2t_core::PsgThreshold;
use ndarray::Array2;

fn accel_cfg(model: ModelKind, side: u32, method: MethodConfig) -> EngineConfig {
    tiny_cfg(
        model,
        side,
        MethodConfig {
            precision: Precision::Accel,
            ..method
        },
    )
}

/// The INT8 prediction P of `dw = xᵀ·dy` as the accelerator forms it (per-tensor codes, nearest
/// high bytes), and the real value of one P unit.
fn predicted_p(x: &Array2<f32>, dy: &Array2<f32>) -> (Array2<i64>, f32) {
    use e2t_numerics::{quantize_tensor, round_to_high_byte};
    let (qx, ex) = quantize_tensor(x.as_slice().expect("std"));
    let (qd, ed) = quantize_tensor(dy.as_slice().expect("std"));
    let (m, k) = x.dim();
    let n = dy.ncols();
    let hb = |c: i16| (round_to_high_byte(c) >> 8) as i64;
    let p = Array2::from_shape_fn((k, n), |(i, j)| {
        (0..m).map(|r| hb(qx[r * k + i]) * hb(qd[r * n + j])).sum()
    });
    (p, 2f32.powi(ex + ed + 16))
}

#[test]
fn psg_falls_back_to_int16_exactly_below_the_threshold() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (m, k, n) = (24, 6, 5);
    let x = Array2::from_shape_simple_fn((m, k), || rng.random_range(-1.0f32..1.0));
    let dy = Array2::from_shape_simple_fn((m, n), || rng.random_range(-0.01f32..0.01));
    let (p, unit) = predicted_p(&x, &dy);
    let mut mags: Vec<i64> = p.iter().map(|v| v.abs()).filter(|&v| v > 0).collect();
    mags.sort_unstable();
    // The smallest nonzero |P|: at t = p*·unit nothing with |P| = p* is uncertain, half a unit
    // above it those entries fall back to INT16.
    let pstar = mags[0];
    // Exact INT16 gradient for the fallback signs.
    let mut exact = Array2::<f32>::zeros((k, n));
    let mut be = AccelBackend::new(4, 4, AccelGemmConfig::baseline()).expect("backend");
    be.backward_weight("l", x.view(), dy.view(), exact.view_mut(), false);
    // Threshold exactly at |P| = p* (certain), and half a unit above (uncertain).
    for (t, strict) in [
        (pstar as f32 * unit, true),
        ((pstar as f32 + 0.5) * unit, false),
    ] {
        let mut be = AccelBackend::new(4, 4, AccelGemmConfig::psg(PsgThreshold::Absolute(t)))
            .expect("backend");
        let mut signs = Array2::<f32>::zeros((k, n));
        be.backward_weight("l", x.view(), dy.view(), signs.view_mut(), true);
        assert!(be.take_error().is_none());
        let unc = p.mapv(|v| {
            if strict {
                v.abs() < pstar
            } else {
                v.abs() <= pstar
            }
        });
        let stats = be.take_psg_stats();
        assert_eq!(stats.len(), 1);
        let s = &stats[0];
        assert_eq!(s.predicted, (k * n) as u64);
        assert_eq!(
            s.uncertain,
            unc.iter().filter(|&&u| u).count() as u64,
            "threshold {t} (p* = {pstar})"
        );
        assert_eq!(s.tiles, 4, "[6 x 5] output on a 4x4 array");
        let mut recomputed = 0;
        for ti in 0..2 {
            for tj in 0..2 {
                let rows = ti * 4..((ti + 1) * 4).min(k);
                let cols = tj * 4..((tj + 1) * 4).min(n);
                let hit = rows.clone().any(|i| cols.clone().any(|j| unc[[i, j]]));
                recomputed += u64::from(hit);
                for i in rows.clone() {
                    for j in cols.clone() {
                        let want = if hit {
                            exact[[i, j]].signum() * f32::from(exact[[i, j]] != 0.0)
                        } else {
                            (p[[i, j]].signum()) as f32
                        };
                        assert_eq!(
                            signs[[i, j]],
                            want,
                            "entry ({i},{j}) in a {} tile",
                            if hit { "recomputed" } else { "predicted" }
                        );
                    }
                }
            }
        }
        assert_eq!(s.recomputed_tiles, recomputed);
        if strict {
            assert_eq!(s.uncertain, p.iter().filter(|&&v| v == 0).count() as u64);
        } else {
            assert!(
                s.uncertain >= 1 && recomputed < 4,
                "only the tiles at the boundary are recomputed: {recomputed}"
            );
        }
    }
}

/// Forward MACs of one sample of ResNet-8 on 1x8x8 with 4 classes, by layer.
const R8_STEM: u64 = 8 * 8 * 9 * 16;
const R8_BODY: [u64; 3] = [
    2 * 8 * 8 * 9 * 16 * 16,
    4 * 4 * 9 * 16 * 32 + 4 * 4 * 9 * 32 * 32,
    2 * 2 * 9 * 32 * 64 + 2 * 2 * 9 * 64 * 64,
];
const R8_DOWN: u64 = 4 * 4 * 16 * 32 + 2 * 2 * 32 * 64;
const R8_FC: u64 = 64 * 4;

#[test]
fn counters_count_exactly_the_work_done_and_psg_updates_are_momentum_on_signs() {
    let fwd: u64 = R8_STEM + R8_BODY.iter().sum::<u64>() + R8_DOWN + R8_FC;
    // Baseline: every GEMM in INT16; the stem computes no input gradient.
    let mut base = crate::build_engine(&accel_cfg(
        ModelKind::ResNet { depth: 8 },
        8,
        MethodConfig::baseline(),
    ))
    .expect("baseline");
    let r = base.step(&batch(1, 6, 8, 0.1)).expect("step");
    assert_eq!(r.counters.macs_int16, 6 * (3 * fwd - R8_STEM));
    assert_eq!(r.counters.macs_int8, 0);
    assert_eq!(base.counters(), r.counters);
    // SLU: skipped samples do no body work in gated blocks (forward, backward data and weight).
    let slu = MethodConfig {
        slu: true,
        slu_target: 0.5,
        slu_beta: 1.0,
        ..MethodConfig::baseline()
    };
    let mut eng =
        crate::build_engine(&accel_cfg(ModelKind::ResNet { depth: 8 }, 8, slu)).expect("slu");
    let mut skipped_any = false;
    for s in 1..=4 {
        let r = eng.step(&batch(s, 8, 8, 0.1)).expect("step");
        let skipped: u64 = r
            .diag
            .slu_executed
            .iter()
            .zip(&R8_BODY[1..])
            .map(|((_, e, n), body)| (*n - *e) as u64 * body)
            .sum();
        skipped_any |= skipped > 0;
        assert_eq!(
            r.counters.macs_int16,
            8 * (3 * fwd - R8_STEM) - 3 * skipped,
            "step {s}: {:?}",
            r.diag.slu_executed
        );
    }
    assert!(skipped_any, "the gates skipped some samples in 4 steps");
    // PSG with threshold 0: nothing is uncertain, weight gradients are INT8 predictions only.
    let psg = MethodConfig {
        psg: true,
        psg_threshold: PsgThreshold::Absolute(0.0),
        ..MethodConfig::baseline()
    };
    let cfg = accel_cfg(ModelKind::ResNet { depth: 8 }, 8, psg);
    let mut eng = E2TrainEngine::with_backend(
        cfg.clone(),
        crate::backend::for_config(&cfg).expect("backend"),
    )
    .expect("psg");
    let before: Vec<(String, Array2<f32>)> = {
        let mut v = Vec::new();
        eng.net_mut()
            .visit_params(&mut |p| v.push((p.name.clone(), p.value.clone())));
        v
    };
    let lr = 0.01;
    let r = eng.step(&batch(1, 6, 8, lr)).expect("step");
    let conv_w = fwd - R8_FC; // conv weight-gradient MACs per sample = conv forward MACs
    assert_eq!(
        r.counters.macs_int8,
        6 * (fwd - R8_FC) + 6 * R8_FC + 6 * conv_w,
        "INT8 forward + INT8 predictions"
    );
    assert_eq!(
        r.counters.macs_int16,
        6 * (fwd - R8_STEM) + 6 * R8_FC,
        "INT16 input gradients + exact classifier gradient"
    );
    assert_eq!(r.counters.psg_uncertain, 0);
    assert_eq!(r.counters.psg_recomputed_tiles, 0);
    let stem = r
        .diag
        .psg
        .iter()
        .find(|s| s.layer == "stem.conv")
        .expect("stem stats");
    assert_eq!(stem.predicted, 9 * 16);
    assert!(
        r.diag.psg.iter().all(|s| !s.layer.starts_with("fc")),
        "the classifier is not a PSG layer"
    );
    let (wd, mut checked) = (cfg.weight_decay, 0);
    eng.net_mut().visit_params(&mut |p| {
        let w0 = &before
            .iter()
            .find(|(n, _)| *n == p.name)
            .expect("same params")
            .1;
        // First step, zero momentum: w1 = w0 - lr' (g + wd w0)  =>  g = (w0 - w1)/lr' - wd w0,
        // where sign-updated (conv) weights use lr' = lr x psg_lr_scale.
        let lr_p = if p.conv_weight {
            lr * cfg.method.psg_lr_scale
        } else {
            lr
        };
        let g = (w0 - &p.value) / lr_p - w0 * wd;
        if p.conv_weight {
            assert!(
                g.iter()
                    .all(|&v| [-1.0f32, 0.0, 1.0].iter().any(|s| (v - s).abs() < 2e-3)),
                "{}: update is a sign",
                p.name
            );
            checked += 1;
        }
    });
    assert_eq!(
        checked, 9,
        "all conv weights of resnet8 (stem, 6 block convs, 2 downsamples) get sign updates"
    );
    // PSG with an unreachable threshold: every tile is recomputed in INT16.
    let all = MethodConfig {
        psg: true,
        psg_threshold: PsgThreshold::Absolute(1e30),
        ..MethodConfig::baseline()
    };
    let mut eng =
        crate::build_engine(&accel_cfg(ModelKind::ResNet { depth: 8 }, 8, all)).expect("psg");
    let r = eng.step(&batch(1, 6, 8, lr)).expect("step");
    assert!(
        r.diag
            .psg
            .iter()
            .all(|s| s.uncertain == s.predicted && s.recomputed_tiles == s.tiles && s.tiles > 0)
    );
    assert_eq!(
        r.counters.macs_int16,
        6 * (fwd - R8_STEM) + 6 * R8_FC + 6 * conv_w
    );
}

#[test]
fn e2train_counts_fewer_int16_equivalent_macs_than_the_baseline() {
    let run = |method: MethodConfig| {
        let cfg = accel_cfg(ModelKind::ResNet { depth: 8 }, 8, method.clone());
        let mut eng = crate::build_engine(&cfg).expect("engine");
        let mut coin = ChaCha8Rng::seed_from_u64(11);
        for s in 1..=6u64 {
            // SMD on the host: a dropped batch never reaches the engine.
            if method.smd && coin.random::<f32>() < method.smd_p {
                continue;
            }
            eng.step(&batch(s, 8, 8, 0.05)).expect("step");
        }
        eng.counters()
    };
    let base = run(MethodConfig::baseline());
    let e2t = run(MethodConfig {
        slu_beta: 1.0,
        ..MethodConfig::e2train()
    });
    let ratio = base.int16_equivalent_macs() / e2t.int16_equivalent_macs();
    assert!(
        ratio > 2.0,
        "baseline {} vs e2train {} int16-eq MACs (x{ratio:.2})",
        base.int16_equivalent_macs(),
        e2t.int16_equivalent_macs()
    );
    assert!(e2t.total_cycles < base.total_cycles);
}

#[test]
fn phase_counters_split_each_step_and_psg_without_recompute_has_no_int16_weight_gradient() {
    let step = |method: MethodConfig| {
        let cfg = accel_cfg(ModelKind::ResNet { depth: 8 }, 8, method);
        let mut eng = crate::build_engine(&cfg).expect("engine");
        eng.step(&batch(1, 8, 8, 0.05)).expect("step");
        // An evaluation between steps is not part of the next step's phases.
        let _ = eng
            .evaluate(&vec![0u8; 4 * 64], &[0, 1, 2, 3])
            .expect("eval");
        eng.step(&batch(2, 8, 8, 0.05)).expect("step")
    };
    for method in [
        MethodConfig::baseline(),
        MethodConfig {
            psg: true,
            ..MethodConfig::baseline()
        },
        MethodConfig {
            psg: true,
            psg_fallback: e2t_core::PsgFallback::Zero,
            ..MethodConfig::baseline()
        },
    ] {
        let r = step(method.clone());
        let p = r.diag.phases;
        let mut sum = e2t_core::Counters::default();
        for (_, c) in p.named() {
            sum.accumulate(c);
        }
        assert_eq!(sum, r.counters, "{method:?}");
        // Input gradients are INT16 in every method.
        assert_eq!(p.backward_data.macs_int8, 0);
        assert!(p.backward_data.macs_int16 > 0);
        if method.psg {
            assert_eq!(p.forward.macs_int16, 0, "PSG forward is INT8");
            assert!(p.weight_gradient.macs_int8 > 0, "prediction");
        }
        if method.psg_fallback == e2t_core::PsgFallback::Zero && method.psg {
            // Only the classifier's exact (non-PSG) weight gradient is INT16: batch 8 x 64 x 4.
            assert_eq!(
                p.weight_gradient.macs_int16,
                8 * 64 * 4,
                "{:?}",
                p.weight_gradient
            );
            assert_eq!(p.weight_gradient.psg_recomputed_tiles, 0);
        }
    }
}

#[test]
fn accelerator_runs_are_reproducible_and_restore_bit_identically() {
    let method = MethodConfig {
        slu_beta: 1.0,
        psg_threshold: PsgThreshold::Adaptive(0.05),
        ..MethodConfig::e2train()
    };
    let cfg = accel_cfg(ModelKind::ResNet { depth: 8 }, 8, method);
    let mk = || crate::build_engine(&cfg).expect("engine");
    let (mut a, mut b) = (mk(), mk());
    for s in 1..=3 {
        assert_eq!(
            a.step(&batch(s, 6, 8, 0.05)).expect("a"),
            b.step(&batch(s, 6, 8, 0.05)).expect("b")
        );
    }
    let ck = a.checkpoint().expect("ckpt");
    assert_eq!(ck, b.checkpoint().expect("ckpt"));
    let mut c = mk();
    c.restore(&ck).expect("restore");
    assert_eq!(c.counters(), a.counters());
    // Evaluating other data in between leaves what the next steps compute unchanged (evaluation
    // does not update the per-layer requantization shifts: a board's recovery replays steps only).
    let e1 = batch(40, 6, 8, 0.05);
    let flat = vec![255u8; e1.images.len()];
    a.evaluate(&e1.images, &e1.labels).expect("eval a");
    c.evaluate(&flat, &e1.labels).expect("eval c");
    for s in 4..=5 {
        assert_eq!(
            a.step(&batch(s, 6, 8, 0.05)).expect("a"),
            c.step(&batch(s, 6, 8, 0.05)).expect("c")
        );
    }
    assert_eq!(a.checkpoint().expect("a"), c.checkpoint().expect("c"));
}

#[test]
fn mobilenetv2_depthwise_work_is_counted_on_the_accelerator() {
    let cfg = accel_cfg(ModelKind::MobileNetV2, 16, MethodConfig::baseline());
    let mut eng = crate::build_engine(&cfg).expect("engine");
    let r = eng.step(&batch(1, 2, 16, 0.05)).expect("step");
    let (mut dw_macs, mut h) = (0u64, 16u64);
    // Depthwise layers (hidden channels, stride): per sample 9·C·Ho·Wo forward MACs.
    for (c, s) in [
        (16u64, 1u64),
        (48, 2),
        (72, 1),
        (72, 2),
        (96, 1),
        (96, 1),
        (96, 1),
        (192, 1),
    ] {
        let ho = (h + 2 - 3) / s + 1;
        dw_macs += 9 * c * ho * ho;
        h = ho;
    }
    assert!(
        r.counters.macs_int16 > 2 * 3 * dw_macs,
        "depthwise forward/backward are part of the counted work"
    );
    assert!(
        r.counters.gemms > 3 * 16,
        "one GEMM per depthwise channel and pass"
    );
}

#[test]
fn init_from_checkpoint_for_fine_tuning() {
    let cfg = tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, MethodConfig::fp32());
    let mut src =
        E2TrainEngine::with_backend(cfg.clone(), Box::new(fp32_backend())).expect("engine");
    src.step(&batch(1, 4, 8, 0.1)).expect("step");
    let ck = src.checkpoint().expect("ckpt");
    let ft = EngineConfig {
        train_only: TrainOnly::Last,
        seed: 99,
        ..cfg.clone()
    };
    let mut eng = crate::build_engine_with_init(&ft, &ck).expect("init");
    let probe = batch(5, 8, 8, 0.0);
    assert_eq!(
        src.evaluate(&probe.images, &probe.labels).expect("src"),
        eng.evaluate(&probe.images, &probe.labels).expect("ft")
    );
    // The fp32 engine's checkpoints are recognised and refused with a pointer to what works.
    let nn = crate::build_engine(&cfg)
        .expect("fp32 engine")
        .checkpoint()
        .expect("ckpt");
    let msg = crate::build_engine_with_init(&ft, &nn)
        .err()
        .expect("nn checkpoint")
        .to_string();
    assert!(msg.contains("fp32 engine"), "{msg}");
}

/// Running statistics of every BN layer, in visit order.
fn bn_stats(e: &mut E2TrainEngine) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut v = Vec::new();
    e.net_mut()
        .visit_bn(&mut |b| v.push((b.running_mean.clone(), b.running_var.clone())));
    v
}

fn param_values(e: &mut E2TrainEngine) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    e.net_mut()
        .visit_params(&mut |p| v.push(p.value.iter().copied().collect()));
    v
}

#[test]
fn bn_calibration_averages_its_chunks_batch_statistics_and_changes_no_weight() {
    for slu in [false, true] {
        let method = MethodConfig {
            slu,
            ..MethodConfig::fp32()
        };
        let mut e = E2TrainEngine::fp32(tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, method))
            .expect("engine");
        for s in 0..3 {
            e.step(&batch(s, 16, 8, 0.05)).expect("step");
        }
        let (a, b) = (batch(10, 12, 8, 0.0).images, batch(11, 20, 8, 0.0).images);
        let w0 = param_values(&mut e);
        e.calibrate_bn(&a, 0).expect("chunk a");
        let sa = bn_stats(&mut e);
        // Index 0 starts over: b's statistics do not depend on a's.
        e.calibrate_bn(&b, 0).expect("chunk b");
        let sb = bn_stats(&mut e);
        e.calibrate_bn(&a, 0).expect("chunk a again");
        e.calibrate_bn(&b, 1).expect("chunk b second");
        let sab = bn_stats(&mut e);
        assert_eq!(param_values(&mut e), w0, "calibration must not train");
        // Every BN layer without SLU; with SLU a gated block may see only one chunk, so check the
        // stem's BN, which sees every sample.
        let layers = if slu { 1 } else { sab.len() };
        for l in 0..layers {
            for (k, ((&ma, &mb), &mab)) in sa[l].0.iter().zip(&sb[l].0).zip(&sab[l].0).enumerate() {
                let want = (ma + mb) / 2.0;
                assert!(
                    (mab - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "slu {slu} layer {l} channel {k}: mean {mab}, want {want}"
                );
            }
            for (k, ((&va, &vb), &vab)) in sa[l].1.iter().zip(&sb[l].1).zip(&sab[l].1).enumerate() {
                let want = (va + vb) / 2.0;
                assert!(
                    (vab - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "slu {slu} layer {l} channel {k}: var {vab}, want {want}"
                );
            }
        }
        assert_ne!(sa[0], sb[0], "different images give different statistics");
        // A step ends the calibration: continuing it is refused, and so is a partial image.
        e.step(&batch(3, 16, 8, 0.05)).expect("step");
        let err = e.calibrate_bn(&a, 1).unwrap_err().to_string();
        assert!(err.contains("start at index 0"), "{err}");
        let err = e.calibrate_bn(&a[1..], 0).unwrap_err().to_string();
        assert!(err.contains("multiple of 64"), "{err}");
    }
}

#[test]
fn slu_gates_identity_blocks_and_downsampling_ones_only_when_asked_or_alone() {
    let names = |depth: u32, gate_downsample: bool| -> Vec<String> {
        let method = MethodConfig {
            slu: true,
            slu_gate_downsample: gate_downsample,
            ..MethodConfig::fp32()
        };
        let e = E2TrainEngine::fp32(tiny_cfg(ModelKind::ResNet { depth }, 8, method)).unwrap();
        e.gated_blocks().into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(
        names(14, false),
        ["stage1.block1", "stage2.block1", "stage3.block1"]
    );
    assert_eq!(
        names(14, true),
        [
            "stage1.block1",
            "stage2.block0",
            "stage2.block1",
            "stage3.block0",
            "stage3.block1"
        ]
    );
    // ResNet-8's only gateable blocks downsample: they are gated either way.
    for g in [false, true] {
        assert_eq!(names(8, g), ["stage2.block0", "stage3.block0"]);
    }
}

/// `slu_identity_init`: every gated block starts as the identity, so evaluation gives the same
/// loss whether the gates execute every gated block or skip them all; without it the two differ.
#[test]
fn slu_identity_init_starts_gated_blocks_as_the_identity() {
    for (model, side) in [
        (ModelKind::ResNet { depth: 14 }, 8usize),
        (ModelKind::MobileNetV2, 16),
    ] {
        for identity in [true, false] {
            let method = MethodConfig {
                precision: Precision::Fp32,
                slu: true,
                slu_identity_init: identity,
                ..MethodConfig::fp32()
            };
            let cfg = tiny_cfg(model, side as u32, method);
            let b = batch(3, 6, side, 0.0);
            // Output bias +-30 saturates p at 1 or 0 for every sample and gated block.
            let loss_with_gate_bias = |bias: f32| {
                let mut eng = E2TrainEngine::with_backend(cfg.clone(), Box::new(fp32_backend()))
                    .expect("engine");
                let gated = eng.gated_blocks().len();
                eng.net_mut().gate.as_mut().expect("gate").b_out.value[[0, 0]] = bias;
                let r = eng.evaluate(&b.images, &b.labels).expect("eval");
                (r.loss_sum, gated, eng)
            };
            let (all, gated, mut eng) = loss_with_gate_bias(30.0);
            let (none, ..) = loss_with_gate_bias(-30.0);
            assert!(gated > 0 && all.is_finite());
            if identity {
                assert_eq!(
                    all, none,
                    "{model}: executing a fresh gated block changes nothing"
                );
            } else {
                assert_ne!(all, none, "{model}: gamma = 1 blocks do change the output");
            }
            // Exactly one residual-output BN per gated block.
            assert_eq!(eng.net_mut().identity_init_gated(), gated, "{model}");
        }
    }
    // Shape-changing gated blocks (all of ResNet-8's) keep gamma = 1.
    let method = MethodConfig {
        precision: Precision::Fp32,
        slu: true,
        slu_identity_init: true,
        ..MethodConfig::fp32()
    };
    let cfg = tiny_cfg(ModelKind::ResNet { depth: 8 }, 8, method);
    let mut eng = E2TrainEngine::with_backend(cfg, Box::new(fp32_backend())).expect("engine");
    assert_eq!(eng.gated_blocks().len(), 2);
    assert_eq!(eng.net_mut().identity_init_gated(), 0);
    let mut gammas = Vec::new();
    eng.net_mut().visit_params(&mut |p| {
        if p.name.ends_with(".bn2.weight") {
            gammas.push(p.value.sum());
        }
    });
    assert!(gammas.iter().all(|&g| g > 0.0), "{gammas:?}");
}

#[test]
fn slu_gate_noise_narrows_to_the_evaluation_rule_as_the_learning_rate_decays() {
    let method = MethodConfig {
        precision: Precision::Fp32,
        slu: true,
        slu_gate_downsample: true,
        slu_noise_peak_lr: 0.1,
        ..MethodConfig::fp32()
    };
    let cfg = tiny_cfg(ModelKind::ResNet { depth: 14 }, 8, method.clone());
    // Fresh gates give every sample p > 0.75 (output bias 2), so on the first step a threshold
    // drawn from (0.25, 0.75) or narrower executes every sample, and U(0, 1) skips about 12% of them.
    let first_step_skipped = |lr: f32| {
        let mut eng =
            E2TrainEngine::with_backend(cfg.clone(), Box::new(fp32_backend())).expect("engine");
        let r = eng.step(&batch(1, 32, 8, lr)).expect("step");
        assert_eq!(r.diag.slu_executed.len(), 5);
        r.diag
            .slu_executed
            .iter()
            .map(|(_, e, n)| n - e)
            .sum::<u32>()
    };
    let full = first_step_skipped(0.1);
    assert!(
        full > 0,
        "at the peak rate the reference's U(0, 1) noise skips some samples"
    );
    assert_eq!(
        first_step_skipped(0.05),
        0,
        "half the peak rate: threshold in (0.25, 0.75)"
    );
    assert_eq!(
        first_step_skipped(0.0),
        0,
        "at rate 0 training decides as evaluation does"
    );
    // Without annealing (peak 0) the noise stays U(0, 1) whatever the rate.
    let cfg0 = tiny_cfg(
        ModelKind::ResNet { depth: 14 },
        8,
        MethodConfig {
            slu_noise_peak_lr: 0.0,
            ..method.clone()
        },
    );
    let mut eng = E2TrainEngine::with_backend(cfg0, Box::new(fp32_backend())).expect("engine");
    let r = eng.step(&batch(1, 32, 8, 0.001)).expect("step");
    let skipped: u32 = r.diag.slu_executed.iter().map(|(_, e, n)| n - e).sum();
    assert!(skipped > 0, "no annealing: Bernoulli decisions at any rate");
    // A negative or non-finite peak is refused.
    for bad in [-0.1f32, f32::NAN] {
        let c = tiny_cfg(
            ModelKind::ResNet { depth: 14 },
            8,
            MethodConfig {
                slu_noise_peak_lr: bad,
                ..method.clone()
            },
        );
        let msg = E2TrainEngine::with_backend(c, Box::new(fp32_backend()))
            .err()
            .expect("refused")
            .to_string();
        assert!(msg.contains("gate-noise peak learning rate"), "{msg}");
    }
}
