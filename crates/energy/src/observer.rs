//! [`EnergyObserver`]: the host run loop's [`e2t_host::EpochObserver`], adding the energy columns to
//! `epochs.csv` and carrying its sums through checkpoints.

use crate::epoch::{EpochEnergy, Prediction};
use crate::meter::MeterError;
use crate::model::{EnergyBreakdown, EnergyModel};
use e2t_core::{Counters, StepResult};
use e2t_host::{EpochObserver, EpochRow};
use std::sync::{Arc, Mutex};

/// What the observer has seen, shared with the caller (the run loop owns the observer itself).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnergyLog {
    /// Model energy per closed epoch.
    pub epochs: Vec<EnergyBreakdown>,
    pub cumulative: EnergyBreakdown,
    /// Set after the first epoch.
    pub prediction: Option<Prediction>,
}

type PredictionHook = Box<dyn FnMut(&Prediction) + Send>;

pub struct EnergyObserver {
    inner: EpochEnergy,
    epochs_total: u32,
    log: Arc<Mutex<EnergyLog>>,
    on_prediction: Option<PredictionHook>,
}

impl EnergyObserver {
    /// `epochs_total` is the run's planned epochs (for the prediction); see [`EpochEnergy::new`] for
    /// the other arguments.
    pub fn new(
        model: EnergyModel,
        grid_g_per_kwh: Option<f64>,
        measured_columns: bool,
        epochs_total: u32,
    ) -> Result<Self, MeterError> {
        Ok(EnergyObserver {
            inner: EpochEnergy::new(model, grid_g_per_kwh, None, measured_columns)?,
            epochs_total,
            log: Arc::new(Mutex::new(EnergyLog::default())),
            on_prediction: None,
        })
    }

    /// Called once, after the first epoch, with the whole run's predicted energy.
    pub fn with_prediction_hook(mut self, f: impl FnMut(&Prediction) + Send + 'static) -> Self {
        self.on_prediction = Some(Box::new(f));
        self
    }

    /// A handle to read energies after (or during) the run.
    pub fn log(&self) -> Arc<Mutex<EnergyLog>> {
        Arc::clone(&self.log)
    }
}

/// CSV text of a value; a missing one (NaN) is an empty cell, never "0".
fn cell(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

impl EpochObserver for EnergyObserver {
    fn name(&self) -> &str {
        "energy"
    }

    fn columns(&self) -> Vec<String> {
        self.inner.columns()
    }

    fn on_epoch_start(&mut self, _epoch: u32) {
        self.inner.begin_epoch();
    }

    fn on_step(&mut self, result: &StepResult) {
        self.inner.on_step(result);
    }

    fn on_extra_work(&mut self, counters: &Counters) {
        self.inner.record(counters, &[]);
    }

    fn on_epoch_end(&mut self, row: &EpochRow) -> Result<Vec<String>, String> {
        // The host sums the same step results; a mismatch means a step reached one and not the other.
        if row.counters != self.inner.epoch_counters() {
            return Err(format!(
                "epoch {}: counters seen by the energy observer differ from the host's ({:?} vs {:?})",
                row.epoch,
                self.inner.epoch_counters(),
                row.counters
            ));
        }
        let (m, cols) = self.inner.end_epoch();
        let first = self.inner.epochs_done() == 1;
        let prediction = if first {
            self.inner.prediction(self.epochs_total)
        } else {
            None
        };
        if let Ok(mut log) = self.log.lock() {
            log.epochs.push(m.energy);
            log.cumulative = self.inner.cumulative();
            if prediction.is_some() {
                log.prediction = prediction.clone();
            }
        }
        if let (Some(p), Some(hook)) = (&prediction, self.on_prediction.as_mut()) {
            hook(p);
        }
        Ok(cols.into_iter().map(|(_, v)| cell(v)).collect())
    }

    fn save_state(&self) -> Vec<u8> {
        self.inner.save_state()
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.inner.restore_state(bytes)?;
        if let Ok(mut log) = self.log.lock() {
            log.cumulative = self.inner.cumulative();
            if self.inner.epochs_done() >= 1 {
                log.prediction = self.inner.prediction(self.epochs_total);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use e2t_core::{Counters, StepDiag};

    fn row(epoch: u32, counters: Counters) -> EpochRow {
        EpochRow {
            epoch,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            test_loss: 1.0,
            test_acc: 0.5,
            seconds: 1.0,
            images_per_s: 1.0,
            counters,
            kept_batches: 1,
            dropped_batches: 0,
            train_samples: 1,
            train_seconds: 1.0,
            extra: Vec::new(),
        }
    }

    #[test]
    fn observer_fills_columns_logs_and_predicts() {
        let model = EnergyModel::new(Profile::builtin("asic45").unwrap());
        let seen = Arc::new(Mutex::new(None));
        let seen2 = Arc::clone(&seen);
        let mut o = EnergyObserver::new(model.clone(), None, true, 5)
            .unwrap()
            .with_prediction_hook(move |p| *seen2.lock().unwrap() = Some(p.predicted_total_j));
        let c = Counters {
            total_cycles: 100,
            macs_int8: 10,
            macs_int16: 20,
            bytes_in: 8,
            ..Default::default()
        };
        o.on_epoch_start(1);
        o.on_step(&StepResult {
            seq: 0,
            loss: 1.0,
            correct: 1,
            samples: 2,
            counters: c,
            power: vec![],
            diag: StepDiag::default(),
        });
        let cells = o.on_epoch_end(&row(1, c)).unwrap();
        assert_eq!(cells.len(), o.columns().len());
        let e = model.energy(&c);
        assert_eq!(cells[0], format!("{}", e.total_j()));
        // No power samples: measured energy is an empty cell, not 0.
        assert_eq!(cells[7], "");
        let log = o.log();
        assert_eq!(log.lock().unwrap().epochs, vec![e]);
        assert_eq!(*seen.lock().unwrap(), Some(5.0 * e.total_j()));
        // A counter mismatch with the host is an error.
        o.on_epoch_start(2);
        assert!(o.on_epoch_end(&row(2, c)).is_err());
        // Work outside steps (BN calibration) is priced with the epoch's steps.
        o.on_epoch_start(3);
        o.on_extra_work(&c);
        o.on_extra_work(&c);
        let mut two = c;
        two.accumulate(&c);
        let cells = o.on_epoch_end(&row(3, two)).unwrap();
        assert_eq!(cells[0], format!("{}", model.energy(&two).total_j()));
    }
}
