//! Numerics contract and golden model: 16-bit codes with power-of-two scales, GEMM in INT16/INT8 modes, requantization, PSG, the cycle formula.
