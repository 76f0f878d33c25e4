//! fp32 CNN training engine on ndarray: conv (im2col + GEMM), BatchNorm, ReLU, pooling, linear,
//! residual blocks, ResNet family, SGD.
pub mod gemm;
pub use gemm::{GemmEngine, LayerId};
