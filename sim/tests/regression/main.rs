//! The RTL regression suite: Verilated `rtl/` against the golden model in e2t-numerics.
//!
//! One test binary (one link of the Verilated models). Every test prints its seed; `E2T_SEED=...`
//! re-runs one, and a failing test re-runs itself with a VCD waveform and prints its path.

mod common;
mod csr;
mod errors;
mod gemm;
mod pe;
mod psg;
mod reuse;
