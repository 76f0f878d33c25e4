//! Residual blocks and the CIFAR ResNet family (depth 6n+2), built as open, public pieces.
//!
//! A network is `stem -> blocks (flat, in execution order) -> head`. Each piece has
//! `forward(&mut self, x, gemm, train)` / `backward(&mut self, dy, gemm)` that work for any batch
//! size, including a sub-batch and an empty one, and gradients accumulate across calls until
//! `zero_grad`: a gated trainer can run a block on the rows whose gate is on (gathering and
//! scattering them itself), and a block that did not run contributes nothing.

use crate::NnError;
use crate::bn::BatchNorm2d;
use crate::conv::standard;
use crate::conv::{Conv2d, ConvGeom};
use crate::gemm::GemmEngine;
use crate::layers::{GlobalAvgPool, Linear};
use crate::param::{Buffer, Module, Param, TensorRef};
use e2t_core::InputShape;
use ndarray::{Array2, Array4};
use rayon::prelude::*;

/// Elements per parallel chunk of the element-wise block operations.
const EW_CHUNK: usize = 1 << 15;

/// `z = max(0, z + s)` in parallel (both standard layout, same shape); with `mask`, also records
/// `z > 0` per element (the final ReLU's mask for backward, a quarter of the bytes of a copy).
fn add_relu(z: &mut Array4<f32>, s: &Array4<f32>, mask: Option<&mut Vec<u8>>) {
    assert_eq!(z.dim(), s.dim(), "residual shapes differ");
    let s = standard(s);
    let zs = z.as_slice_mut().expect("fresh array");
    let ss = s.as_slice().expect("standard layout");
    match mask {
        None => zs
            .par_chunks_mut(EW_CHUNK)
            .zip(ss.par_chunks(EW_CHUNK))
            .for_each(|(a, b)| {
                for (a, &b) in a.iter_mut().zip(b) {
                    *a = (*a + b).max(0.0);
                }
            }),
        Some(mask) => {
            mask.resize(zs.len(), 0);
            zs.par_chunks_mut(EW_CHUNK)
                .zip(ss.par_chunks(EW_CHUNK))
                .zip(mask.par_chunks_mut(EW_CHUNK))
                .for_each(|((a, b), m)| {
                    for ((a, &b), m) in a.iter_mut().zip(b).zip(m) {
                        *a = (*a + b).max(0.0);
                        *m = u8::from(*a > 0.0);
                    }
                })
        }
    }
}

/// `a += b` in parallel.
fn add_par(a: &mut Array4<f32>, b: &Array4<f32>) {
    assert_eq!(a.dim(), b.dim(), "gradient shapes differ");
    let b = standard(b);
    let bs = b.as_slice().expect("standard layout");
    a.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(EW_CHUNK)
        .zip(bs.par_chunks(EW_CHUNK))
        .for_each(|(a, b)| {
            crate::scratch::add_into(a, b);
        });
}

use rand::Rng;

fn conv3x3(name: String, cin: usize, cout: usize, stride: usize) -> Conv2d {
    Conv2d::new(
        name,
        ConvGeom {
            in_ch: cin,
            out_ch: cout,
            kh: 3,
            kw: 3,
            stride,
            pad: 1,
        },
        false,
    )
}

/// Option-B projection shortcut: 1x1 conv (stride s) + BN.
pub struct Shortcut {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, names `<name>.conv1`, `.bn1`, `.conv2`,
/// `.bn2`, `.shortcut.conv`, `.shortcut.bn`.
pub struct BasicBlock {
    pub name: String,
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    /// `None` = identity (same shape in and out).
    pub shortcut: Option<Shortcut>,
    /// Shape of the last training forward's output and its final ReLU's mask (1 where the output
    /// is positive), one byte per element.
    out_dim: Option<(usize, usize, usize, usize)>,
    mask: Vec<u8>,
}

impl BasicBlock {
    pub fn new(name: impl Into<String>, cin: usize, cout: usize, stride: usize) -> Self {
        let name = name.into();
        let shortcut = (stride != 1 || cin != cout).then(|| Shortcut {
            conv: Conv2d::new(
                format!("{name}.shortcut.conv"),
                ConvGeom {
                    in_ch: cin,
                    out_ch: cout,
                    kh: 1,
                    kw: 1,
                    stride,
                    pad: 0,
                },
                false,
            ),
            bn: BatchNorm2d::new(format!("{name}.shortcut.bn"), cout, false),
        });
        BasicBlock {
            conv1: conv3x3(format!("{name}.conv1"), cin, cout, stride),
            bn1: BatchNorm2d::new(format!("{name}.bn1"), cout, true),
            conv2: conv3x3(format!("{name}.conv2"), cout, cout, 1),
            bn2: BatchNorm2d::new(format!("{name}.bn2"), cout, false),
            shortcut,
            name,
            out_dim: None,
            mask: Vec::new(),
        }
    }

    pub fn init<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        self.conv1.init_kaiming(rng);
        self.conv2.init_kaiming(rng);
        if let Some(s) = &mut self.shortcut {
            s.conv.init_kaiming(rng);
        }
    }

    pub fn forward(
        &mut self,
        x: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        if train {
            // conv1 keeps a copy of its input anyway: make it once here.
            self.forward_owned(standard(x).into_owned(), gemm, true)
        } else {
            let h = self.conv1.forward(x, gemm, false);
            self.forward_rest(h, Some(x), gemm, false)
        }
    }

    /// Like [`BasicBlock::forward`], but takes the input by value, so in training mode `conv1`
    /// keeps it as its cached input without a copy (the shortcut reads it from there).
    pub fn forward_owned(
        &mut self,
        x: Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        if train {
            let h = self.conv1.forward_owned(x, gemm, true);
            self.forward_rest(h, None, gemm, true)
        } else {
            let h = self.conv1.forward(&x, gemm, false);
            self.forward_rest(h, Some(&x), gemm, false)
        }
    }

    /// Everything after conv1 (`h` is its output); `x` is the block input, `None` meaning the one
    /// conv1 cached.
    fn forward_rest(
        &mut self,
        h: Array4<f32>,
        x: Option<&Array4<f32>>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        let h = self.bn1.forward(&h, train);
        let h = self.conv2.forward_owned(h, gemm, train);
        let mut z = self.bn2.forward(&h, train);
        drop(h);
        let x = match x {
            Some(x) => x,
            None => self
                .conv1
                .cached_input()
                .expect("conv1 caches its input in training mode"),
        };
        let mask = if train {
            self.out_dim = Some(z.dim());
            Some(&mut self.mask)
        } else {
            None
        };
        match &mut self.shortcut {
            Some(s) => {
                let sc = s.conv.forward(x, gemm, train);
                let sc = s.bn.forward(&sc, train);
                add_relu(&mut z, &sc, mask);
            }
            None => add_relu(&mut z, &standard(x), mask),
        }
        z
    }

    pub fn backward(&mut self, dy: &Array4<f32>, gemm: &mut dyn GemmEngine) -> Array4<f32> {
        let dim = self
            .out_dim
            .unwrap_or_else(|| panic!("{}: backward without a training forward", self.name));
        assert_eq!(dim, dy.dim(), "{}: output gradient shape", self.name);
        let dy = standard(dy);
        let mut d = Array4::<f32>::uninit(dy.dim());
        d.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(EW_CHUNK)
            .zip(dy.as_slice().expect("standard layout").par_chunks(EW_CHUNK))
            .zip(self.mask.par_chunks(EW_CHUNK))
            .for_each(|((d, g), m)| {
                for ((d, &g), &m) in d.iter_mut().zip(g).zip(m) {
                    d.write(if m != 0 { g } else { 0.0 });
                }
            });
        // SAFETY: the chunks above cover every element (the mask has the output's length).
        let d = unsafe { d.assume_init() };
        let dh = self.bn2.backward(&d);
        let dh = self.conv2.backward(&dh, gemm);
        let dh = self.bn1.backward(&dh);
        let mut dx = self.conv1.backward(&dh, gemm);
        drop(dh);
        match &mut self.shortcut {
            Some(s) => {
                let ds = s.bn.backward(&d);
                let ds = s.conv.backward(&ds, gemm);
                add_par(&mut dx, &ds);
            }
            None => add_par(&mut dx, &d),
        }
        dx
    }

    /// Multiply-accumulates of one sample's forward pass through this block for an input of
    /// `h x w` (for cost-aware gating).
    pub fn forward_macs(&self, h: usize, w: usize) -> u64 {
        let (ho, wo) = self.conv1.geom.out_hw(h, w);
        let px = (ho * wo) as u64;
        let mut macs = px
            * (self.conv1.geom.k() * self.conv1.geom.out_ch
                + self.conv2.geom.k() * self.conv2.geom.out_ch) as u64;
        if let Some(s) = &self.shortcut {
            macs += px * (s.conv.geom.k() * s.conv.geom.out_ch) as u64;
        }
        macs
    }
}

impl Module for BasicBlock {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.conv1.tensors_into(out);
        self.bn1.tensors_into(out);
        self.conv2.tensors_into(out);
        self.bn2.tensors_into(out);
        if let Some(s) = &self.shortcut {
            s.conv.tensors_into(out);
            s.bn.tensors_into(out);
        }
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.conv1.params_into(out);
        self.bn1.params_into(out);
        self.conv2.params_into(out);
        self.bn2.params_into(out);
        if let Some(s) = &mut self.shortcut {
            s.conv.params_into(out);
            s.bn.params_into(out);
        }
    }
    fn buffers_into<'a>(&'a mut self, out: &mut Vec<Buffer<'a>>) {
        self.bn1.buffers_into(out);
        self.bn2.buffers_into(out);
        if let Some(s) = &mut self.shortcut {
            s.bn.buffers_into(out);
        }
    }
}

/// `relu(bn(conv3x3(x)))`, names `stem.conv`, `stem.bn`.
pub struct Stem {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl Stem {
    pub fn new(cin: usize, cout: usize) -> Self {
        Stem {
            conv: conv3x3("stem.conv".into(), cin, cout, 1),
            bn: BatchNorm2d::new("stem.bn", cout, true),
        }
    }
    pub fn forward(
        &mut self,
        x: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array4<f32> {
        let h = self.conv.forward(x, gemm, train);
        self.bn.forward(&h, train)
    }
    /// Accumulates the stem's gradients; the input (image) gradient is not computed.
    pub fn backward(&mut self, dy: &Array4<f32>, gemm: &mut dyn GemmEngine) {
        let d = self.bn.backward(dy);
        self.conv.backward_params_only(&d, gemm);
    }
}

impl Module for Stem {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.conv.tensors_into(out);
        self.bn.tensors_into(out);
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.conv.params_into(out);
        self.bn.params_into(out);
    }
    fn buffers_into<'a>(&'a mut self, out: &mut Vec<Buffer<'a>>) {
        self.bn.buffers_into(out);
    }
}

/// Global average pooling + the classifier `fc`.
pub struct Head {
    pub pool: GlobalAvgPool,
    pub fc: Linear,
}

impl Head {
    pub fn new(features: usize, classes: usize) -> Self {
        Head {
            pool: GlobalAvgPool::new(),
            fc: Linear::new("fc", features, classes),
        }
    }
    /// Returns the logits `[N, classes]`.
    pub fn forward(
        &mut self,
        x: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array2<f32> {
        let p = self.pool.forward(x, train);
        self.fc.forward(&p, gemm, train)
    }
    pub fn backward(&mut self, dlogits: &Array2<f32>, gemm: &mut dyn GemmEngine) -> Array4<f32> {
        let d = self.fc.backward(dlogits, gemm);
        self.pool.backward(&d)
    }
}

impl Module for Head {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.fc.tensors_into(out);
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.fc.params_into(out);
    }
}

/// CIFAR ResNet of depth `6n+2`: stem 3x3 conv to 16 channels, three stages of `n` basic blocks
/// (16, 32, 64 channels; stride 2 at the first block of stages 2 and 3, option-B shortcuts), global
/// average pooling, linear classifier. Block names are `stage{1,2,3}.block{i}`.
pub struct ResNet {
    pub depth: u32,
    pub input: InputShape,
    pub classes: usize,
    pub stem: Stem,
    /// All residual blocks in execution order.
    pub blocks: Vec<BasicBlock>,
    pub head: Head,
}

impl ResNet {
    /// Builds and initialises (Kaiming-normal fan-out convs, BN γ=1 β=0, PyTorch-default Linear).
    pub fn new<R: Rng + ?Sized>(
        depth: u32,
        input: InputShape,
        classes: usize,
        rng: &mut R,
    ) -> Result<Self, NnError> {
        let n = e2t_core::ModelKind::resnet_blocks_per_stage(depth).ok_or_else(|| {
            NnError::Config(format!(
                "ResNet depth {depth} is not of the form 6n+2 with n >= 1"
            ))
        })?;
        if input.channels == 0 || input.height == 0 || input.width == 0 {
            return Err(NnError::Config(format!(
                "input shape {input:?} has a zero dimension"
            )));
        }
        if classes < 2 {
            return Err(NnError::Config(format!(
                "need at least 2 classes, got {classes}"
            )));
        }
        let mut stem = Stem::new(input.channels as usize, 16);
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (si, cout) in [16usize, 32, 64].into_iter().enumerate() {
            for b in 0..n as usize {
                let stride = if si > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    format!("stage{}.block{b}", si + 1),
                    cin,
                    cout,
                    stride,
                ));
                cin = cout;
            }
        }
        let mut head = Head::new(64, classes);
        stem.conv.init_kaiming(rng);
        for b in &mut blocks {
            b.init(rng);
        }
        head.fc.init_default(rng);
        Ok(ResNet {
            depth,
            input,
            classes,
            stem,
            blocks,
            head,
        })
    }

    /// `x` NHWC `[N, H, W, C]` normalised images; returns logits `[N, classes]`.
    pub fn forward(
        &mut self,
        x: &Array4<f32>,
        gemm: &mut dyn GemmEngine,
        train: bool,
    ) -> Array2<f32> {
        let mut h = self.stem.forward(x, gemm, train);
        for b in &mut self.blocks {
            h = b.forward_owned(h, gemm, train);
        }
        self.head.forward(&h, gemm, train)
    }

    /// Every BatchNorm layer, in execution order.
    pub fn visit_bn(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(&mut self.stem.bn);
        for b in &mut self.blocks {
            f(&mut b.bn1);
            f(&mut b.bn2);
            if let Some(s) = &mut b.shortcut {
                f(&mut s.bn);
            }
        }
    }

    /// Backpropagates `dlogits` through the whole network, accumulating every gradient.
    pub fn backward(&mut self, dlogits: &Array2<f32>, gemm: &mut dyn GemmEngine) {
        let mut d = self.head.backward(dlogits, gemm);
        for b in self.blocks.iter_mut().rev() {
            d = b.backward(&d, gemm);
        }
        self.stem.backward(&d, gemm);
    }
}

impl Module for ResNet {
    fn tensors_into<'a>(&'a self, out: &mut Vec<TensorRef<'a>>) {
        self.stem.tensors_into(out);
        for b in &self.blocks {
            b.tensors_into(out);
        }
        self.head.tensors_into(out);
    }
    fn params_into<'a>(&'a mut self, out: &mut Vec<Param<'a>>) {
        self.stem.params_into(out);
        for b in &mut self.blocks {
            b.params_into(out);
        }
        self.head.params_into(out);
    }
    fn buffers_into<'a>(&'a mut self, out: &mut Vec<Buffer<'a>>) {
        self.stem.buffers_into(out);
        for b in &mut self.blocks {
            b.buffers_into(out);
        }
    }
}
