//! A Verilator 5 harness for Rust: build-time model generation and a small runtime.
