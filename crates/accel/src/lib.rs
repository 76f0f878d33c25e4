//! Accelerator interface and the soft accelerator: bit-exact numerics, counters and cycle model.
