//! The seam between layers and whatever multiplies matrices.
//!
//! Every convolution (as im2col) and linear layer expresses its three GEMMs through this trait, so the
//! same layer code trains in fp32 (`Fp32Gemm`) or on the accelerator's numerics (`e2t-accel`'s engine,
//! which quantizes to 16-bit codes, counts work and applies PSG in `backward_weight`).
//!
//! Shapes and roles are fixed so an engine knows which operand is the weight:
//! - `x`: activation patches, `[M, K]`, one row per output position (batch x pixels), per-tensor scale;
//! - `w`: weights, `[K, N]`, one column per output channel (per-column scale on the accelerator);
//! - `dy`: output gradient, `[M, N]`, per-tensor scale.
//!
//! Outputs are overwritten (not accumulated into).

use ndarray::{ArrayView2, ArrayViewMut2};

/// Identifies the layer a GEMM belongs to (stable name such as `stage2.block0.conv1`), so engines can
/// keep per-layer state (PSG thresholds, statistics).
pub type LayerId<'a> = &'a str;

pub trait GemmEngine {
    /// `y[M,N] = x[M,K] · w[K,N]`.
    fn forward(&mut self, layer: LayerId<'_>, x: ArrayView2<'_, f32>, w: ArrayView2<'_, f32>, y: ArrayViewMut2<'_, f32>);

    /// `dx[M,K] = dy[M,N] · wᵀ`.
    fn backward_data(&mut self, layer: LayerId<'_>, dy: ArrayView2<'_, f32>, w: ArrayView2<'_, f32>, dx: ArrayViewMut2<'_, f32>);

    /// `dw[K,N] = xᵀ · dy`: the value the optimizer uses as this weight's gradient. A PSG engine writes
    /// the predicted sign (+1, -1, 0) per entry instead of the gradient itself.
    fn backward_weight(&mut self, layer: LayerId<'_>, x: ArrayView2<'_, f32>, dy: ArrayView2<'_, f32>, dw: ArrayViewMut2<'_, f32>);
}
