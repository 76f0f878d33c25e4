//! Energy model: per-operation tables (asic45, zc706), measurement windows, power integration.
//!
//! # Profiles
//! A [`Profile`] is a TOML table of prices, one row per operation and precision, each with a
//! `source` string naming where the number comes from (see `profiles/*.toml`). Two are built in:
//! `asic45` (Horowitz, ISSCC 2014, 45 nm) and `zc706` (28 nm FPGA estimates, to be replaced by
//! board measurements). A user's file is validated: unknown keys, missing keys, wrong units,
//! negative, NaN or infinite values are errors that name the key and the file.
//!
//! # Formula (the only mapping from counters to energy)
//! With `c` a counter delta ([`e2t_core::Counters`]) and `p` the profile's prices:
//!
//! ```text
//! streamed    = c.bytes_in + c.bytes_out
//! int8   [pJ] = c.macs_int8  x (p.mac_int8  + p.acc_add48)
//! int16  [pJ] = c.macs_int16 x (p.mac_int16 + p.acc_add48)
//! onchip [pJ] = streamed x (p.buffer_write + p.buffer_read)
//! offchip[pJ] = streamed x (p.dram + p.stream)
//! static [J]  = p.static_power x c.total_cycles / p.clock
//! total  [J]  = (int8 + int16 + onchip + offchip) x 1e-12 + static
//! ```
//!
//! Why these terms: every MAC issues one product in its mode and one 48-bit accumulator add. Every
//! operand byte the array accepts was read from DRAM, crossed the stream interface, was written once
//! into an on-chip buffer and read once from it into the array; every result byte takes the same
//! path back. Operand reuse inside the array (forwarding between PEs) is register traffic, priced
//! inside the MAC. The counters do not see buffer re-reads beyond one per streamed byte, so on-chip
//! energy is a floor for designs that re-read buffers. PSG's INT8 prediction and INT16 recompute
//! appear in `macs_int8` and `macs_int16`; SMD and SLU save energy by producing fewer counts.
//! The formula is linear, so the energy of a window equals the sum over its sub-windows.
//!
//! # Windows and measured power
//! [`EnergyMeter`] opens and closes named windows (nestable, Zeus-style). Each closed window gives a
//! [`Measurement`]: wall duration, counter delta (cycles), model energy by class, and, where power
//! samples were recorded, measured energy per rail by the trapezoid rule on V x I ([`power`]). A
//! missing sample is reported as missing and the intervals it touches as gaps; it is never booked as
//! zero energy. CO2-equivalent comes only from a grid intensity the user gives.
//!
//! [`EpochEnergy`] is the per-epoch adapter for training runs: feed it each `StepResult`, close an
//! epoch to get the `epochs.csv` columns ([`EPOCH_COLUMNS`]), and ask for a Carbontracker-style
//! prediction of the whole run after the first epoch. [`EnergyObserver`] wraps it as the host run
//! loop's `EpochObserver` (columns, checkpointed state, a shared [`EnergyLog`], a prediction hook).

pub mod epoch;
pub mod meter;
pub mod model;
pub mod observer;
pub mod power;
pub mod profile;

pub use epoch::{CO2_COLUMN, EPOCH_COLUMNS, EpochEnergy, MEASURED_COLUMNS, Prediction};
pub use meter::{EnergyMeter, Measurement, MeterConfig, MeterError};
pub use model::{DynamicPj, EnergyBreakdown, EnergyModel, co2e_grams};
pub use observer::{EnergyLog, EnergyObserver};
pub use power::{RailEnergy, integrate, sample_watts};
pub use profile::{BUILTIN, Entry, Op, Profile, ProfileError};
