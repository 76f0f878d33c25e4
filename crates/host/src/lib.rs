//! Host side of e2train: a training run against a [`e2t_core::StepEngine`] (in-process or a board).
//!
//! The host owns everything about *which* work is done and *when*: the data set and its per-epoch
//! order, augmentation, the learning rate of every step, the SMD coin (dropped batches never leave
//! the host but still advance the schedule), evaluation, and the run folder (`config.toml`,
//! `epochs.csv`, `diagnostics.csv`, `summary.json`, `checkpoint.bin`). The engine owns model,
//! optimiser and accelerator state.
//!
//! Invariants:
//! - Every random choice of the host is a pure function of `(seed, epoch, batch index)`, so a run
//!   resumed from `checkpoint.bin` sends exactly the batches (and learning rates) an uninterrupted
//!   run would; with a deterministic engine the final weights are identical.
//! - Every file of the run folder is replaced atomically (temp file + fsync + rename); a crash or
//!   Ctrl-C leaves either the previous or the new version, never a partial one.
//! - `epochs.csv` starts with `epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds,images_per_s`,
//!   then the counter deltas of the epoch's training steps, `kept_batches,dropped_batches`, then the
//!   columns of each [`EpochObserver`] in order.

pub mod atomic;
pub mod config;
pub mod run;
pub mod schedule;

pub use config::{RunConfig, Schedule, Settings, TrainArgs};
pub use run::{
    EpochObserver, EpochRow, RunSummary, engine_checkpoint, load_data, prepare, run, run_with_data,
};
pub use schedule::LrSchedule;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] e2t_data::DataError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("engine failed {context}: {source}")]
    Engine {
        context: String,
        source: e2t_core::EngineError,
    },
    #[error("{}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error(
        "training diverged: loss {loss} at epoch {epoch}, step {step} (the last checkpoint holds the state before)"
    )]
    Diverged { epoch: u32, step: u64, loss: f32 },
    #[error("observer '{name}': {reason}")]
    Observer { name: String, reason: String },
}

impl HostError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        HostError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
