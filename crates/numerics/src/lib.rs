//! Numerics contract and golden model of the e2train accelerator.
//!
//! - [`quant`]: fp32 -> signed 16-bit codes with a power-of-two scale (`value = code * 2^exp`), round
//!   to nearest with ties to even, saturation; per-tensor and per-column exponents; 8-bit tensors
//!   (low byte zero); seeded stochastic rounding.
//! - [`golden`]: the processing element (INT16: exact 16x16 products; INT8: products of the high bytes
//!   `code >> 8`), 48-bit two's complement accumulators that wrap, the reference GEMM, and output
//!   requantization (arithmetic shift, round-half-up, saturation to 16 bits).
//! - [`psg`]: predictive sign gradient: INT8 prediction, threshold, INT16 recompute of uncertain tiles,
//!   signs and counts.
//! - [`cycles`]: the cycle formula and expected counter deltas of `rtl/README.md` (kept with the RTL).
//!
//! Invariant: this crate is the bit-exact reference. The RTL (`rtl/`) and the soft accelerator
//! (`e2t-accel`) must produce identical codes, accumulators, signs and counts; the golden code is kept
//! obviously correct (plain loops) rather than fast.

pub mod cycles;
pub mod golden;
pub mod psg;
pub mod quant;

pub use golden::{
    ACC_BITS, ACC_MAX, ACC_MIN, MAX_SHIFT, gemm_ref, mac, operand, pe_product, requantize,
    requantize_unchecked, wrap48,
};
pub use psg::{
    HwThreshold, PredRounding, PsgCounts, PsgOutput, THR_MAX, adaptive_threshold, psg_ref,
    psg_ref_with,
};
pub use quant::{
    choose_exp, choose_exp_8bit, dequantize, high_byte_nearest, max_abs_finite, quantize_columns,
    quantize_columns_8bit, quantize_into, quantize_into_8bit, quantize_stochastic, quantize_tensor,
    quantize_tensor_8bit, quantize_value, quantize_with_exp, round_to_high_byte,
};

/// Errors from the numerics functions (all caused by arguments, never by data values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericsError {
    #[error("matrix {what}: {len} elements given, expected {rows} x {cols}")]
    Shape {
        what: &'static str,
        rows: usize,
        cols: usize,
        len: usize,
    },
    #[error("requantization shift {shift} out of range: expected 0..={max}")]
    Shift { shift: u32, max: u32 },
    #[error("PSG threshold field {value} does not fit its 48-bit CSR (max {max})")]
    Threshold { value: u64, max: u64 },
    #[error("PSG tile {tile_m} x {tile_n}: both sides must be at least 1")]
    Tile { tile_m: usize, tile_n: usize },
}
