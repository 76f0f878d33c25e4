//! Gradient checks (analytic backward vs central finite differences) for every layer, a residual
//! block and a whole tiny ResNet, plus model-level properties.

use crate::*;
use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A layer under test: flat input -> flat output, and flat output gradient -> flat input gradient.
trait Probe: Module {
    fn fwd(&mut self, x: &Array4<f32>, g: &mut Fp32Gemm) -> Vec<f32>;
    /// `None` when the piece does not produce an input gradient.
    fn bwd(&mut self, dy: &[f32], g: &mut Fp32Gemm) -> Option<Vec<f32>>;
}

fn like4(shape: (usize, usize, usize, usize), v: &[f32]) -> Array4<f32> {
    Array4::from_shape_vec(shape, v.to_vec()).unwrap()
}

struct ConvP(Conv2d, (usize, usize, usize, usize));
impl Module for ConvP {
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.0.params_into(out)
    }
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.0.tensors_into(out)
    }
}
impl Probe for ConvP {
    fn fwd(&mut self, x: &Array4<f32>, g: &mut Fp32Gemm) -> Vec<f32> {
        let y = self.0.forward(x, g, true);
        self.1 = y.dim();
        y.into_raw_vec_and_offset().0
    }
    fn bwd(&mut self, dy: &[f32], g: &mut Fp32Gemm) -> Option<Vec<f32>> {
        Some(
            self.0
                .backward(&like4(self.1, dy), g)
                .into_raw_vec_and_offset()
                .0,
        )
    }
}

struct BnP(BatchNorm2d, (usize, usize, usize, usize));
impl Module for BnP {
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.0.params_into(out)
    }
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.0.tensors_into(out)
    }
}
impl Probe for BnP {
    fn fwd(&mut self, x: &Array4<f32>, _g: &mut Fp32Gemm) -> Vec<f32> {
        self.1 = x.dim();
        self.0.forward(x, true).into_raw_vec_and_offset().0
    }
    fn bwd(&mut self, dy: &[f32], _g: &mut Fp32Gemm) -> Option<Vec<f32>> {
        Some(
            self.0
                .backward(&like4(self.1, dy))
                .into_raw_vec_and_offset()
                .0,
        )
    }
}

/// Layers without parameters.
struct Plain<F, B>(F, B, (usize, usize, usize, usize));
impl<F, B> Module for Plain<F, B> {
    fn params_into<'a>(&'a mut self, _out: &mut Vec<Param<'a>>) {}
    fn tensors_into<'a>(&'a self, _out: &mut Vec<TensorRef<'a>>) {}
}
impl<
    F: FnMut(&Array4<f32>) -> (Vec<f32>, (usize, usize, usize, usize)),
    B: FnMut(&[f32], (usize, usize, usize, usize)) -> Vec<f32>,
> Probe for Plain<F, B>
{
    fn fwd(&mut self, x: &Array4<f32>, _g: &mut Fp32Gemm) -> Vec<f32> {
        let (y, d) = (self.0)(x);
        self.2 = d;
        y
    }
    fn bwd(&mut self, dy: &[f32], _g: &mut Fp32Gemm) -> Option<Vec<f32>> {
        Some((self.1)(dy, self.2))
    }
}

struct LinearP(Linear, (usize, usize, usize, usize));
impl Module for LinearP {
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.0.params_into(out)
    }
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.0.tensors_into(out)
    }
}
impl Probe for LinearP {
    /// The input is flattened to `[N, H·W·C]`.
    fn fwd(&mut self, x: &Array4<f32>, g: &mut Fp32Gemm) -> Vec<f32> {
        self.1 = x.dim();
        let (n, h, w, c) = x.dim();
        let x2 = Array2::from_shape_vec((n, h * w * c), x.iter().copied().collect()).unwrap();
        self.0.forward(&x2, g, true).into_raw_vec_and_offset().0
    }
    fn bwd(&mut self, dy: &[f32], g: &mut Fp32Gemm) -> Option<Vec<f32>> {
        let n = self.1.0;
        let dy = Array2::from_shape_vec((n, dy.len() / n), dy.to_vec()).unwrap();
        Some(self.0.backward(&dy, g).into_raw_vec_and_offset().0)
    }
}

struct BlockP(BasicBlock, (usize, usize, usize, usize));
impl Module for BlockP {
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.0.params_into(out)
    }
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.0.tensors_into(out)
    }
}
impl Probe for BlockP {
    fn fwd(&mut self, x: &Array4<f32>, g: &mut Fp32Gemm) -> Vec<f32> {
        let y = self.0.forward(x, g, true);
        self.1 = y.dim();
        y.into_raw_vec_and_offset().0
    }
    fn bwd(&mut self, dy: &[f32], g: &mut Fp32Gemm) -> Option<Vec<f32>> {
        Some(
            self.0
                .backward(&like4(self.1, dy), g)
                .into_raw_vec_and_offset()
                .0,
        )
    }
}

struct NetP(ResNet, usize);
impl Module for NetP {
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.0.params_into(out)
    }
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.0.tensors_into(out)
    }
}
impl Probe for NetP {
    fn fwd(&mut self, x: &Array4<f32>, g: &mut Fp32Gemm) -> Vec<f32> {
        let y = self.0.forward(x, g, true);
        self.1 = y.dim().0;
        y.into_raw_vec_and_offset().0
    }
    fn bwd(&mut self, dy: &[f32], g: &mut Fp32Gemm) -> Option<Vec<f32>> {
        let dy = Array2::from_shape_vec((self.1, dy.len() / self.1), dy.to_vec()).unwrap();
        self.0.backward(&dy, g);
        None
    }
}

fn rand4(rng: &mut ChaCha8Rng, d: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_shape_fn(d, |_| rng.random_range(-1.0f32..1.0))
}

/// `L = Σ r·y` in f64; compares `dL/dx` and `dL/dθ` from backward with central differences on up to
/// `samples` entries of each tensor.
///
/// ReLU and max-pool kinks make a finite difference wrong when a perturbation moves an input across
/// one. Such entries are detected by the two step sizes `eps` and `eps/2` disagreeing with each other,
/// and skipped; at most a quarter of all entries may be skipped, and every other entry must match.
fn gradcheck(p: &mut dyn Probe, x: &Array4<f32>, eps: f32, rtol: f64, atol: f64, samples: usize) {
    let mut g = Fp32Gemm::new(1);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let y0 = p.fwd(x, &mut g);
    let r: Vec<f32> = (0..y0.len())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let loss = |y: &[f32]| {
        y.iter()
            .zip(&r)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
    };
    p.zero_grad();
    let _ = p.fwd(x, &mut g);
    let dx = p.bwd(&r, &mut g);
    let grads: Vec<(String, Vec<f32>)> = p
        .params_mut()
        .into_iter()
        .map(|q| (q.name, q.grad.to_vec()))
        .collect();
    let close = |a: f64, n: f64| (a - n).abs() <= atol + rtol * a.abs().max(n.abs());
    let (mut checked, mut skipped) = (0usize, 0usize);
    let mut judge = |what: String, a: f64, n1: f64, n2: f64| {
        checked += 1;
        if !close(n1, n2) {
            skipped += 1;
            return;
        }
        assert!(
            close(a, n2),
            "{what}: analytic {a:.6e} vs numeric {n2:.6e} (step {eps}: {n1:.6e})"
        );
    };
    let pick = |len: usize, rng: &mut ChaCha8Rng| -> Vec<usize> {
        if len <= samples {
            (0..len).collect()
        } else {
            (0..samples).map(|_| rng.random_range(0..len)).collect()
        }
    };
    if let Some(dx) = dx {
        assert_eq!(dx.len(), x.len());
        for i in pick(x.len(), &mut rng) {
            let mut fd = |e: f32| {
                let mut xp = x.clone();
                xp.as_slice_mut().unwrap()[i] += e;
                let lp = loss(&p.fwd(&xp, &mut g));
                xp.as_slice_mut().unwrap()[i] -= 2.0 * e;
                let lm = loss(&p.fwd(&xp, &mut g));
                (lp - lm) / (2.0 * e as f64)
            };
            let (n1, n2) = (fd(eps), fd(eps / 2.0));
            judge(format!("dx[{i}]"), dx[i] as f64, n1, n2);
        }
    }
    for (pi, (name, grad)) in grads.iter().enumerate() {
        for i in pick(grad.len(), &mut rng) {
            let mut fd = |e: f32| {
                let orig = p.params_mut()[pi].value[i];
                p.params_mut()[pi].value[i] = orig + e;
                let lp = loss(&p.fwd(x, &mut g));
                p.params_mut()[pi].value[i] = orig - e;
                let lm = loss(&p.fwd(x, &mut g));
                p.params_mut()[pi].value[i] = orig;
                (lp - lm) / (2.0 * e as f64)
            };
            let (n1, n2) = (fd(eps), fd(eps / 2.0));
            judge(format!("{name}[{i}]"), grad[i] as f64, n1, n2);
        }
    }
    assert!(
        checked > 0 && skipped * 4 <= checked,
        "{skipped} of {checked} entries sat on a kink"
    );
}

fn init_conv(c: &mut Conv2d, rng: &mut ChaCha8Rng) {
    c.init_kaiming(rng);
    if let Some(b) = &mut c.bias {
        b.iter_mut().for_each(|v| *v = rng.random_range(-0.5..0.5));
    }
}

#[test]
fn conv_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cases = [
        ConvGeom {
            in_ch: 3,
            out_ch: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        },
        ConvGeom {
            in_ch: 2,
            out_ch: 3,
            kh: 3,
            kw: 2,
            stride: 2,
            pad: 1,
        },
        ConvGeom {
            in_ch: 3,
            out_ch: 2,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
        },
        ConvGeom {
            in_ch: 3,
            out_ch: 5,
            kh: 1,
            kw: 1,
            stride: 2,
            pad: 0,
        },
        ConvGeom {
            in_ch: 1,
            out_ch: 2,
            kh: 5,
            kw: 5,
            stride: 3,
            pad: 2,
        },
    ];
    for (i, geom) in cases.into_iter().enumerate() {
        let mut c = Conv2d::new(format!("c{i}"), geom, i % 2 == 0);
        init_conv(&mut c, &mut rng);
        let x = rand4(&mut rng, (2, 7, 6, geom.in_ch));
        gradcheck(&mut ConvP(c, (0, 0, 0, 0)), &x, 1e-2, 1e-3, 1e-3, 40);
    }
}

#[test]
fn conv_forward_matches_direct_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let geom = ConvGeom {
        in_ch: 3,
        out_ch: 4,
        kh: 3,
        kw: 2,
        stride: 2,
        pad: 1,
    };
    let mut c = Conv2d::new("c", geom, true);
    init_conv(&mut c, &mut rng);
    let x = rand4(&mut rng, (2, 7, 8, 3));
    let y = c.forward(&x, &mut Fp32Gemm::new(2), false);
    let (ho, wo) = geom.out_hw(7, 8);
    assert_eq!(y.dim(), (2, ho, wo, 4));
    for ((b, oy, ox, co), &v) in y.indexed_iter() {
        let mut s = c.bias.as_ref().unwrap()[co] as f64;
        for ky in 0..3 {
            for kx in 0..2 {
                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                if iy < 0 || ix < 0 || iy >= 7 || ix >= 8 {
                    continue;
                }
                for ci in 0..3 {
                    s += x[[b, iy as usize, ix as usize, ci]] as f64
                        * c.weight[[(ky * 2 + kx) * 3 + ci, co]] as f64;
                }
            }
        }
        assert!(
            (s - v as f64).abs() < 1e-5,
            "y[{b},{oy},{ox},{co}] = {v}, direct {s}"
        );
    }
}

#[test]
fn batchnorm_gradients_with_and_without_relu() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // 3 channels take the runtime-width kernels, 16/32/64 the compile-time-width ones.
    for (c, relu) in [(3, false), (3, true), (16, true), (32, false), (64, true)] {
        let mut bn = BatchNorm2d::new("bn", c, relu);
        bn.gamma
            .iter_mut()
            .for_each(|v| *v = rng.random_range(0.5..1.5));
        bn.beta
            .iter_mut()
            .for_each(|v| *v = rng.random_range(-0.5..0.5));
        let x = rand4(&mut rng, (3, 4, 3, c)).mapv(|v| 2.0 * v + 0.7);
        gradcheck(&mut BnP(bn, (0, 0, 0, 0)), &x, 1e-3, 2e-2, 2e-3, 40);
    }
}

#[test]
fn batchnorm_statistics_and_eval_mode() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut bn = BatchNorm2d::new("bn", 2, false);
    let x = rand4(&mut rng, (4, 3, 3, 2)).mapv(|v| 3.0 * v + 10.0);
    let y = bn.forward(&x, true);
    for c in 0..2 {
        let col: Vec<f64> = y.iter().skip(c).step_by(2).map(|&v| v as f64).collect();
        let m = col.iter().sum::<f64>() / col.len() as f64;
        let v = col.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / col.len() as f64;
        assert!(
            m.abs() < 1e-4 && (v - 1.0).abs() < 1e-3,
            "channel {c}: mean {m}, var {v}"
        );
        let xs: Vec<f64> = x.iter().skip(c).step_by(2).map(|&v| v as f64).collect();
        let xm = xs.iter().sum::<f64>() / xs.len() as f64;
        let xv = xs.iter().map(|a| (a - xm) * (a - xm)).sum::<f64>() / (xs.len() - 1) as f64;
        assert!((bn.running_mean[c] as f64 - 0.1 * xm).abs() < 1e-4);
        assert!((bn.running_var[c] as f64 - (0.9 + 0.1 * xv)).abs() < 1e-4);
    }
    // Eval mode uses the running statistics and leaves them alone.
    let before = (bn.running_mean.clone(), bn.running_var.clone());
    let ye = bn.forward(&x, false);
    assert_eq!((bn.running_mean.clone(), bn.running_var.clone()), before);
    let want = (x[[0, 0, 0, 1]] - bn.running_mean[1]) / (bn.running_var[1] + bn.eps).sqrt();
    assert!((ye[[0, 0, 0, 1]] - want).abs() < 1e-5);
}

#[test]
fn relu_and_pool_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = rand4(&mut rng, (2, 5, 5, 3));
    let relu = ReLU::new();
    let shared = std::cell::RefCell::new(relu);
    gradcheck(
        &mut Plain(
            |x: &Array4<f32>| {
                let y = shared.borrow_mut().forward(x, true);
                let d = y.dim();
                (y.into_raw_vec_and_offset().0, d)
            },
            |dy: &[f32], d| {
                shared
                    .borrow_mut()
                    .backward(&like4(d, dy))
                    .into_raw_vec_and_offset()
                    .0
            },
            (0, 0, 0, 0),
        ),
        &x,
        1e-3,
        1e-3,
        1e-4,
        80,
    );
    for (kind, k, s, p) in [
        (PoolKind::Max, 3, 2, 1),
        (PoolKind::Avg, 2, 2, 0),
        (PoolKind::Avg, 3, 2, 1),
        (PoolKind::Max, 2, 1, 0),
    ] {
        let pool = std::cell::RefCell::new(Pool2d::new(kind, k, s, p));
        gradcheck(
            &mut Plain(
                |x: &Array4<f32>| {
                    let y = pool.borrow_mut().forward(x, true);
                    let d = x.dim();
                    (y.into_raw_vec_and_offset().0, d)
                },
                |dy: &[f32], d: (usize, usize, usize, usize)| {
                    let (ho, wo) = pool.borrow().out_hw(d.1, d.2);
                    pool.borrow_mut()
                        .backward(&like4((d.0, ho, wo, d.3), dy))
                        .into_raw_vec_and_offset()
                        .0
                },
                (0, 0, 0, 0),
            ),
            &x,
            1e-3,
            1e-3,
            1e-4,
            80,
        );
    }
    let gap = std::cell::RefCell::new(GlobalAvgPool::new());
    gradcheck(
        &mut Plain(
            |x: &Array4<f32>| {
                (
                    gap.borrow_mut()
                        .forward(x, true)
                        .into_raw_vec_and_offset()
                        .0,
                    x.dim(),
                )
            },
            |dy: &[f32], d: (usize, usize, usize, usize)| {
                gap.borrow_mut()
                    .backward(&Array2::from_shape_vec((d.0, d.3), dy.to_vec()).unwrap())
                    .into_raw_vec_and_offset()
                    .0
            },
            (0, 0, 0, 0),
        ),
        &x,
        1e-2,
        1e-3,
        1e-4,
        80,
    );
}

#[test]
fn linear_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut l = Linear::new("fc", 12, 5);
    l.init_default(&mut rng);
    let x = rand4(&mut rng, (3, 2, 2, 3));
    gradcheck(&mut LinearP(l, (0, 0, 0, 0)), &x, 1e-2, 1e-3, 1e-4, 80);
}

#[test]
fn cross_entropy_gradient_and_counts() {
    let logits = Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0]).unwrap();
    let labels = [1u8, 0];
    let ce = softmax_cross_entropy(&logits, &labels);
    assert_eq!(ce.correct, 1);
    let eps = 1e-3f32;
    for i in 0..2 {
        for j in 0..3 {
            let mut lp = logits.clone();
            lp[[i, j]] += eps;
            let mut lm = logits.clone();
            lm[[i, j]] -= eps;
            let num = (softmax_cross_entropy(&lp, &labels).loss_sum
                - softmax_cross_entropy(&lm, &labels).loss_sum)
                / 2.0
                / eps as f64
                / 2.0;
            assert!(
                (num - ce.dlogits[[i, j]] as f64).abs() < 1e-4,
                "[{i},{j}] {num} vs {}",
                ce.dlogits[[i, j]]
            );
        }
    }
    let lse0 = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
    let lse1 = ((-1f64).exp() + 1.0 + 3f64.exp()).ln();
    assert!((ce.loss_sum - ((lse0 - 2.0) + (lse1 + 1.0))).abs() < 1e-5);
}

fn rand_bn(bn: &mut BatchNorm2d, rng: &mut ChaCha8Rng) {
    bn.gamma
        .iter_mut()
        .for_each(|v| *v = rng.random_range(0.5..1.5));
    bn.beta
        .iter_mut()
        .for_each(|v| *v = rng.random_range(-0.3..0.3));
}

#[test]
fn residual_block_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for (cin, cout, stride) in [(3, 3, 1), (2, 4, 2)] {
        let mut b = BasicBlock::new("stage1.block0", cin, cout, stride);
        b.init(&mut rng);
        rand_bn(&mut b.bn1, &mut rng);
        rand_bn(&mut b.bn2, &mut rng);
        if let Some(s) = &mut b.shortcut {
            rand_bn(&mut s.bn, &mut rng);
        }
        let x = rand4(&mut rng, (3, 5, 5, cin));
        gradcheck(&mut BlockP(b, (0, 0, 0, 0)), &x, 2e-3, 3e-2, 3e-3, 12);
    }
}

fn tiny_shape() -> InputShape {
    InputShape {
        channels: 2,
        height: 6,
        width: 5,
    }
}

#[test]
fn tiny_resnet_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut net = ResNet::new(8, tiny_shape(), 3, &mut rng).unwrap();
    // With BN coupling every element of a layer, a perturbation moves hundreds of ReLU inputs; a
    // positive β keeps most of them away from the kink (about 2% stay negative, so masks still
    // matter) and makes the finite differences meaningful.
    for p in net.params_mut() {
        if p.name.contains("bn") && p.name.ends_with(".bias") {
            p.value.fill(2.0);
        }
    }
    let x = rand4(&mut rng, (4, 6, 5, 2));
    gradcheck(&mut NetP(net, 0), &x, 1e-2, 3e-2, 1e-3, 6);
}

#[test]
fn parameter_counts_match_pytorch() {
    let s = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(
        ResNet::new(8, s, 10, &mut rng).unwrap().num_params(),
        77_754
    );
    assert_eq!(
        ResNet::new(20, s, 10, &mut rng).unwrap().num_params(),
        272_186
    );
    assert!(ResNet::new(9, s, 10, &mut rng).is_err());
    let mut net = ResNet::new(20, s, 10, &mut rng).unwrap();
    assert_eq!(net.blocks.len(), 9);
    let names: Vec<String> = net.params_mut().into_iter().map(|p| p.name).collect();
    for want in [
        "stem.conv.weight",
        "stage2.block0.conv1.weight",
        "stage2.block0.shortcut.conv.weight",
        "stage3.block2.bn2.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "missing parameter {want}");
    }
    let mut uniq = names.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), names.len(), "parameter names are unique");
}

fn grads_of(m: &mut dyn Module) -> Vec<Vec<f32>> {
    m.params_mut()
        .into_iter()
        .map(|p| p.grad.to_vec())
        .collect()
}

#[test]
fn block_on_sub_batches_accumulates_and_empty_batch_is_a_no_op() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut b = BasicBlock::new("stage2.block0", 2, 4, 2);
    b.init(&mut rng);
    let mut g = Fp32Gemm::new(2);
    let xa = rand4(&mut rng, (3, 6, 6, 2));
    let xb = rand4(&mut rng, (2, 6, 6, 2));
    let run = |b: &mut BasicBlock, x: &Array4<f32>, g: &mut Fp32Gemm| {
        let y = b.forward(x, g, true);
        let dy = y.mapv(|v| v * 0.5 - 0.1);
        b.backward(&dy, g)
    };
    b.zero_grad();
    run(&mut b, &xa, &mut g);
    let ga = grads_of(&mut b);
    b.zero_grad();
    run(&mut b, &xb, &mut g);
    let gb = grads_of(&mut b);
    b.zero_grad();
    run(&mut b, &xa, &mut g);
    let empty = Array4::<f32>::zeros((0, 6, 6, 2));
    let stats = b.bn1.running_mean.clone();
    let dx = run(&mut b, &empty, &mut g);
    assert_eq!(dx.dim(), (0, 6, 6, 2));
    assert_eq!(
        b.bn1.running_mean, stats,
        "an empty batch leaves BN statistics alone"
    );
    run(&mut b, &xb, &mut g);
    for ((s, a), bb) in grads_of(&mut b).iter().zip(&ga).zip(&gb) {
        for i in 0..s.len() {
            assert_eq!(s[i], a[i] + bb[i]);
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let shape = InputShape {
        channels: 1,
        height: 12,
        width: 12,
    };
    let mut n1 = ResNet::new(8, shape, 10, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let mut n2 = ResNet::new(8, shape, 10, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    // 40 images of 12x12: several GEMM row blocks and BN chunks.
    let x = rand4(&mut rng, (40, 12, 12, 1));
    let (mut g1, mut g2) = (Fp32Gemm::new(1), Fp32Gemm::new(2));
    let y1 = n1.forward(&x, &mut g1, true);
    let y2 = n2.forward(&x, &mut g2, true);
    assert_eq!(y1, y2);
    let dy = y1.mapv(|v| v * 0.01);
    n1.backward(&dy, &mut g1);
    n2.backward(&dy, &mut g2);
    assert_eq!(grads_of(&mut n1), grads_of(&mut n2));
}

/// An fp32 engine that hides `as_fp32`, so layers take the generic whole-matrix path (the one an
/// accelerator engine sees).
struct Generic(Fp32Gemm);
impl GemmEngine for Generic {
    fn forward(
        &mut self,
        l: LayerId<'_>,
        x: ndarray::ArrayView2<'_, f32>,
        w: ndarray::ArrayView2<'_, f32>,
        y: ndarray::ArrayViewMut2<'_, f32>,
    ) {
        self.0.forward(l, x, w, y)
    }
    fn backward_data(
        &mut self,
        l: LayerId<'_>,
        dy: ndarray::ArrayView2<'_, f32>,
        w: ndarray::ArrayView2<'_, f32>,
        dx: ndarray::ArrayViewMut2<'_, f32>,
    ) {
        self.0.backward_data(l, dy, w, dx)
    }
    fn backward_weight(
        &mut self,
        l: LayerId<'_>,
        x: ndarray::ArrayView2<'_, f32>,
        dy: ndarray::ArrayView2<'_, f32>,
        dw: ndarray::ArrayViewMut2<'_, f32>,
    ) {
        self.0.backward_weight(l, x, dy, dw)
    }
}

#[test]
fn fused_fp32_conv_path_matches_generic_gemm_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for geom in [
        ConvGeom {
            in_ch: 3,
            out_ch: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        },
        ConvGeom {
            in_ch: 2,
            out_ch: 5,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        },
        ConvGeom {
            in_ch: 3,
            out_ch: 2,
            kh: 1,
            kw: 1,
            stride: 2,
            pad: 0,
        },
    ] {
        let mut a = Conv2d::new("c", geom, true);
        init_conv(&mut a, &mut rng);
        let mut b = Conv2d::new("c", geom, true);
        b.weight.assign(&a.weight);
        b.bias.as_mut().unwrap().assign(a.bias.as_ref().unwrap());
        // 100 images of 7x6: several fused blocks.
        let x = rand4(&mut rng, (100, 7, 6, geom.in_ch));
        let mut fused = Fp32Gemm::new(2);
        let mut generic = Generic(Fp32Gemm::new(1));
        let ya = a.forward(&x, &mut fused, true);
        let yb = b.forward(&x, &mut generic, true);
        let close = |p: &[f32], q: &[f32]| {
            p.iter()
                .zip(q)
                .all(|(u, v)| (u - v).abs() <= 1e-4 * (1.0 + u.abs()))
        };
        assert!(close(ya.as_slice().unwrap(), yb.as_slice().unwrap()));
        let dy = rand4(&mut rng, ya.dim());
        let dxa = a.backward(&dy, &mut fused);
        let dxb = b.backward(&dy, &mut generic);
        assert!(close(dxa.as_slice().unwrap(), dxb.as_slice().unwrap()));
        assert!(close(
            a.grad_weight.as_slice().unwrap(),
            b.grad_weight.as_slice().unwrap()
        ));
        assert!(close(
            a.grad_bias.as_ref().unwrap().as_slice().unwrap(),
            b.grad_bias.as_ref().unwrap().as_slice().unwrap()
        ));
        // The fp32 path is bit-identical for any thread count.
        let mut c = Conv2d::new("c", geom, true);
        c.weight.assign(&a.weight);
        c.bias.as_mut().unwrap().assign(a.bias.as_ref().unwrap());
        let mut one = Fp32Gemm::new(1);
        assert_eq!(c.forward(&x, &mut one, true), ya);
        assert_eq!(c.backward(&dy, &mut one), dxa);
        assert_eq!(c.grad_weight, a.grad_weight);
    }
}

#[test]
fn block_forward_owned_matches_borrowed_forward() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut a = BasicBlock::new("stage2.block0", 3, 4, 2);
    a.init(&mut rng);
    rand_bn(&mut a.bn1, &mut rng);
    let mut b = BasicBlock::new("stage2.block0", 3, 4, 2);
    for (pb, pa) in b.params_mut().into_iter().zip(a.params_mut()) {
        pb.value.copy_from_slice(pa.value);
    }
    let mut g = Fp32Gemm::new(2);
    let x = rand4(&mut rng, (3, 7, 7, 3));
    for train in [true, false] {
        let ya = a.forward(&x, &mut g, train);
        let yb = b.forward_owned(x.clone(), &mut g, train);
        assert_eq!(ya, yb);
    }
    // Backward uses what the last training forward kept: an eval forward of other data in between
    // (b only) changes nothing.
    a.zero_grad();
    b.zero_grad();
    let dy = Array4::from_shape_fn((3, 4, 4, 4), |(i, j, k, l)| {
        ((i * 7 + j * 5 + k * 3 + l) % 11) as f32 * 0.1 - 0.5
    });
    let _ = a.forward(&x, &mut g, true);
    let _ = b.forward_owned(x.clone(), &mut g, true);
    let other = rand4(&mut rng, (3, 7, 7, 3));
    let _ = b.forward_owned(other, &mut g, false);
    assert_eq!(a.backward(&dy, &mut g), b.backward(&dy, &mut g));
    assert_eq!(grads_of(&mut a), grads_of(&mut b));
}
