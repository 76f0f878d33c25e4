//! fp32 CNN training engine on ndarray: conv (im2col + GEMM), BatchNorm, ReLU, pooling, linear,
//! softmax cross-entropy, residual blocks, the CIFAR ResNet family, SGD, and [`Fp32Engine`] (the
//! fp32 [`e2t_core::StepEngine`]).
//!
//! # Conventions and invariants
//! - Activations are `ndarray::Array4<f32>` in **NHWC** (`[batch, height, width, channels]`,
//!   standard row-major layout); the classifier works on `Array2<f32>` `[batch, features]`. Viewed
//!   as a matrix, an NHWC tensor is `[N·H·W, C]`: one row per output position, which is exactly the
//!   GEMM's `M` side (the fast layout on 2 cores, see `perf-anchors.md`).
//! - Every convolution (as im2col) and linear layer does its three GEMMs through
//!   [`GemmEngine`] with the roles of `gemm.rs` (`x` patches `[M,K]`, `w` `[K,N]`, `dy` `[M,N]`),
//!   with the layer's stable name (`stem.conv`, `stage2.block0.conv1`, `stage2.block0.shortcut.conv`,
//!   `fc`) as the layer id. Parameter names append `.weight`/`.bias`; BN buffers
//!   `.running_mean`/`.running_var`.
//! - Layers cache in `forward(.., train = true)` what their `backward` needs; `backward` accumulates
//!   into the gradients (`+=`) until `zero_grad`, so a block run on a sub-batch, or not at all,
//!   contributes exactly its share. Any batch size works, including 0.
//! - Reductions (BN statistics, GEMM row blocks, partial weight gradients) use fixed chunking and
//!   combine in a fixed order, so with [`Fp32Gemm`] results are bit-identical for any thread count.
//!
//! # Speed
//! With the plain fp32 engine ([`GemmEngine::as_fp32`] returns `Some`), a convolution works on
//! blocks of whole images (~1024 patch rows): im2col into a per-thread, cache-sized scratch buffer,
//! then single-threaded `gemm` crate calls, blocks spread over rayon. This avoids materialising the
//! full patch matrix (58 MB per stage-1 conv at batch 128) and the crate's own thread
//! synchronisation. Block sizes are chosen so the blocks split evenly over two workers (a
//! function of the shapes only, never of the thread count). Other engines (the accelerator) get
//! whole matrices through the three trait methods. BN+ReLU is fused; BN's per-row kernels are
//! compiled for 16/32/64 channels so they vectorise; outputs that are overwritten completely skip
//! the zero fill; a residual block hands its input to `conv1` instead of copying it and keeps its
//! final ReLU mask as bytes; element-wise passes are parallel, and [`Fp32Engine::new`] calls
//! [`keep_freed_memory`] so glibc stops returning (and re-faulting) the activation buffers every step.

pub mod bench;
pub mod bn;
pub mod conv;
pub mod engine;
pub mod gemm;
pub mod layers;
pub mod optim;
pub mod param;
pub mod resnet;
mod scratch;

#[cfg(test)]
mod tests;

pub use bench::{BenchReport, bench_train_step};
pub use bn::BatchNorm2d;
pub use conv::{Conv2d, ConvGeom};
pub use e2t_core::{InputShape, ModelKind};
pub use engine::Fp32Engine;
pub use gemm::{Fp32Gemm, GemmEngine, LayerId};
pub use layers::{CeOutput, GlobalAvgPool, Linear, Pool2d, PoolKind, ReLU, softmax_cross_entropy};
pub use optim::Sgd;
pub use param::{Buffer, Module, Param, TensorKind, TensorRef};
pub use resnet::{BasicBlock, Head, ResNet, Shortcut, Stem};
pub use scratch::keep_freed_memory;

/// Errors from building models.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NnError {
    #[error("invalid model configuration: {0}")]
    Config(String),
}
