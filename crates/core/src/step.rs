//! The training-step API: what the board agent runs, in-process or behind a serial link.

use crate::counters::Counters;
use serde::{Deserialize, Serialize};

/// One mini-batch as it travels to the board: raw `u8` pixels (N x C x H x W, sample-major) and labels.
/// Normalisation happens on the engine side (mean/std from [`crate::EngineConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Host-assigned sequence number; an engine never applies the same `seq` twice.
    pub seq: u64,
    /// Learning rate for this step (the host owns the schedule).
    pub lr: f32,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The checks every engine makes before a step: not empty, a sequence number after the last
    /// one applied (a batch is never applied twice), and a finite, non-negative learning rate.
    pub fn check_step(&self, last_seq: Option<u64>) -> Result<(), EngineError> {
        let bad = |reason: String| EngineError::Batch {
            seq: self.seq,
            reason,
        };
        if self.is_empty() {
            return Err(bad("empty batch".into()));
        }
        if let Some(last) = last_seq {
            if self.seq <= last {
                return Err(bad(format!(
                    "sequence number not after the last applied one ({last})"
                )));
            }
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(bad(format!(
                "learning rate must be finite and >= 0, got {}",
                self.lr
            )));
        }
        Ok(())
    }
}

/// A supply rail of the ZC706 measured by the UCD90120A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rail {
    VccInt,
    VccAux,
    Vcc1v5,
    Vadj,
    Vcc3v3,
}

impl Rail {
    pub const ALL: [Rail; 5] = [
        Rail::VccInt,
        Rail::VccAux,
        Rail::Vcc1v5,
        Rail::Vadj,
        Rail::Vcc3v3,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Rail::VccInt => "VCCINT",
            Rail::VccAux => "VCCAUX",
            Rail::Vcc1v5 => "VCC1V5",
            Rail::Vadj => "VADJ",
            Rail::Vcc3v3 => "VCC3V3",
        }
    }
}

/// One power reading. `None` means the sample is missing (never book it as zero).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerSample {
    /// Board-monotonic timestamp in nanoseconds.
    pub t_ns: u64,
    pub rail: Rail,
    pub millivolts: Option<u32>,
    pub milliamps: Option<u32>,
}

/// PSG statistics for one layer over one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerPsgStats {
    pub layer: String,
    pub predicted: u64,
    pub uncertain: u64,
    pub tiles: u64,
    pub recomputed_tiles: u64,
}

/// Accelerator work split by the GEMM phase it served (the three add up to the step's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounters {
    /// Forward convolutions and linear layers (the SLU gate runs on the host CPU: not here).
    pub forward: Counters,
    /// Input gradients.
    pub backward_data: Counters,
    /// Weight gradients (PSG prediction and recompute included).
    pub weight_gradient: Counters,
}

impl PhaseCounters {
    /// The phases' names as written in `diagnostics.csv`, with their counters.
    pub fn named(&self) -> [(&'static str, &Counters); 3] {
        [
            ("forward", &self.forward),
            ("backward_data", &self.backward_data),
            ("weight_gradient", &self.weight_gradient),
        ]
    }

    pub fn accumulate(&mut self, o: &PhaseCounters) {
        self.forward.accumulate(&o.forward);
        self.backward_data.accumulate(&o.backward_data);
        self.weight_gradient.accumulate(&o.weight_gradient);
    }
}

/// Per-step diagnostics the paper's reviewers asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepDiag {
    pub psg: Vec<LayerPsgStats>,
    /// Per gated block: (executed samples, total samples).
    pub slu_executed: Vec<(String, u32, u32)>,
    /// Per gated block: samples whose gate was decisive, |p - 0.5| >= 0.25 (gates that learned to
    /// select polarise; p near 0.5 for everyone is random skipping).
    #[serde(default)]
    pub slu_decisive: Vec<(String, u32)>,
    /// Where the step's accelerator work went (zero for the fp32 engine).
    pub phases: PhaseCounters,
}

/// What one training step returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub seq: u64,
    /// Mean loss over the batch (task loss; regularisers excluded).
    pub loss: f32,
    pub correct: u32,
    pub samples: u32,
    /// Counter delta of this step (zero for the fp32 engine).
    pub counters: Counters,
    pub power: Vec<PowerSample>,
    pub diag: StepDiag,
}

/// Result of evaluating a set of samples (no parameter change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub loss_sum: f64,
    pub correct: u64,
    pub samples: u64,
}

impl EvalResult {
    pub fn merge(&mut self, o: &EvalResult) {
        self.loss_sum += o.loss_sum;
        self.correct += o.correct;
        self.samples += o.samples;
    }
    pub fn accuracy(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.correct as f64 / self.samples as f64
        }
    }
    pub fn mean_loss(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.loss_sum / self.samples as f64
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid batch {seq}: {reason}")]
    Batch { seq: u64, reason: String },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("accelerator: {0}")]
    Accelerator(String),
}

impl EngineError {
    /// The message without its kind prefix: what crosses the board link next to an error code, so
    /// the host rebuilds the same error instead of nesting "checkpoint: checkpoint: ...".
    pub fn detail(&self) -> &str {
        match self {
            EngineError::Config(s) | EngineError::Checkpoint(s) | EngineError::Accelerator(s) => s,
            EngineError::Batch { reason, .. } => reason,
        }
    }
}

/// What a board agent runs. Implemented by the fp32 engine and the E2-Train engine (e2t-train);
/// driven in-process or behind the link protocol (e2t-board).
///
/// Invariants: `step` is deterministic given the config seed and the sequence of calls;
/// `checkpoint` followed by `restore` on a fresh engine continues bit-identically.
pub trait StepEngine: Send {
    fn config(&self) -> &EngineConfig;
    /// One optimisation step on a kept mini-batch.
    fn step(&mut self, batch: &Batch) -> Result<StepResult, EngineError>;
    /// SMD's optional momentum/weight-decay step for a dropped batch (no forward/backward).
    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError>;
    /// Evaluate without changing parameters (deterministic gates, BN in eval mode).
    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError>;
    /// "Precise BN": re-estimate the BatchNorm running statistics from training images before an
    /// evaluation, with the weights unchanged. Runs the forward pass as in training (batch
    /// statistics; SLU gates deterministic, as at evaluation) over `images` (whole images, no
    /// labels). Chunk `index` 0 starts a new estimate; after chunks 0..K each layer's running
    /// statistics are the plain mean of the K chunks' batch statistics. Chunks must come in order
    /// 0, 1, 2, ... with no step in between.
    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError>;
    /// Accelerator counters since the engine was built (zero for fp32).
    fn counters(&self) -> Counters;
    /// Full training state (weights, optimizer, RNG, counters) as bytes.
    fn checkpoint(&self) -> Result<Vec<u8>, EngineError>;
    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError>;
    /// `--init`: take the weights (and BN statistics) of another run's checkpoint, keeping this
    /// engine's own configuration, fresh optimizer state, RNG and counters. The checkpoint may come
    /// from another method of the same model if its engine kind can read it (E2-Train engines read
    /// each other's). Engines that cannot do this say so.
    fn load_weights(&mut self, checkpoint: &[u8]) -> Result<(), EngineError> {
        let _ = checkpoint;
        Err(EngineError::Checkpoint(format!(
            "this engine ({}) cannot start from another run's weights",
            self.config().method.label()
        )))
    }
}

use crate::config::EngineConfig;
