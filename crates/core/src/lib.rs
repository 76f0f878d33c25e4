//! Types that cross crate boundaries in e2train.
//!
//! Everything here is plain data (serde-serializable) or a small trait, so the protocol crate can
//! carry it over a link without knowing how training works. The contracts behind the numbers are in
//! `../shared/DESIGN.md` and `ARCHITECTURE.md`.

pub mod config;
pub mod counters;
pub mod step;

pub use config::{
    EngineConfig, InputShape, MethodConfig, ModelKind, Precision, PsgFallback, PsgThreshold,
    TrainOnly,
};
pub use counters::Counters;
pub use step::{
    Batch, EngineError, EvalResult, LayerPsgStats, PhaseCounters, PowerSample, Rail, StepDiag,
    StepEngine, StepResult,
};

use serde::{Deserialize, Serialize};

/// Precision mode of the MAC array (see the numerics contract in DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// One exact signed 16x16 product per PE per cycle.
    Int16,
    /// Two products of the high bytes (`code >> 8`) per PE per cycle.
    Int8,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Int16 => "int16",
            Mode::Int8 => "int8",
        }
    }
}
