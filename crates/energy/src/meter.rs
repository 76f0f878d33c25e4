//! Named measurement windows in the style of Zeus, and the per-epoch adapter for training runs.
//!
//! A window is opened with a name and closed by the same name; windows may nest (run > epoch >
//! batch) or overlap. Everything recorded while a window is open (counter deltas, power samples)
//! belongs to it, so a parent's counters are the sum of its children's plus whatever was recorded
//! between them.

use crate::model::{EnergyBreakdown, EnergyModel, co2e_grams};
use crate::power::{RailEnergy, integrate};
use e2t_core::{Counters, PowerSample, StepResult};
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MeterError {
    #[error("energy window '{0}' is already open")]
    AlreadyOpen(String),
    #[error("energy window '{0}' is not open")]
    NotOpen(String),
    #[error("grid intensity {0} g/kWh: expected a finite number >= 0")]
    BadGrid(f64),
}

/// Options of a meter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeterConfig {
    /// User-given grid carbon intensity in g CO2e per kWh (never fetched). None: no CO2 figures.
    pub grid_g_per_kwh: Option<f64>,
    /// Intervals between samples of one rail longer than this are gaps, not integrated.
    pub max_gap_ns: Option<u64>,
}

/// What a closed window measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub name: String,
    /// Host wall-clock time between begin and end, s.
    pub duration_s: f64,
    /// Counter delta of the window (`total_cycles` is the window's cycle count).
    pub counters: Counters,
    /// Model energy by class (dynamic from counters, static from cycles).
    pub energy: EnergyBreakdown,
    /// Measured energy per rail (empty without power samples).
    pub rails: Vec<RailEnergy>,
    /// CO2-equivalent of the model's total energy, g (only with a grid intensity).
    pub co2e_g: Option<f64>,
}

impl Measurement {
    pub fn cycles(&self) -> u64 {
        self.counters.total_cycles
    }
    /// Sum of the rails' measured energy over covered time; None when no interval was covered.
    /// Check [`Measurement::power_complete`] before reading it as the window's whole energy.
    pub fn measured_j(&self) -> Option<f64> {
        let covered = self.rails.iter().any(|r| r.covered_s > 0.0);
        covered.then(|| self.rails.iter().map(|r| r.energy_j).sum())
    }
    /// True when power was sampled and no rail had a missing sample or gap.
    pub fn power_complete(&self) -> bool {
        !self.rails.is_empty() && self.rails.iter().all(RailEnergy::complete)
    }
    pub fn power_samples(&self) -> usize {
        self.rails.iter().map(|r| r.samples).sum()
    }
    pub fn missing_samples(&self) -> usize {
        self.rails.iter().map(|r| r.missing_samples).sum()
    }
}

struct OpenWindow {
    name: String,
    start: Instant,
    start_counters: Counters,
    /// Global index of the first power sample that belongs to this window.
    start_sample: usize,
}

/// Counts what the accelerator did and prices it over named windows.
pub struct EnergyMeter {
    model: EnergyModel,
    cfg: MeterConfig,
    /// Sum of all recorded counter deltas.
    cum: Counters,
    /// Power samples still needed by an open window; `samples[0]` has global index `base`.
    samples: Vec<PowerSample>,
    base: usize,
    open: Vec<OpenWindow>,
}

impl EnergyMeter {
    pub fn new(model: EnergyModel, cfg: MeterConfig) -> Result<Self, MeterError> {
        if let Some(g) = cfg.grid_g_per_kwh {
            if !g.is_finite() || g < 0.0 {
                return Err(MeterError::BadGrid(g));
            }
        }
        Ok(EnergyMeter {
            model,
            cfg,
            cum: Counters::default(),
            samples: Vec::new(),
            base: 0,
            open: Vec::new(),
        })
    }

    pub fn model(&self) -> &EnergyModel {
        &self.model
    }

    pub fn config(&self) -> &MeterConfig {
        &self.cfg
    }

    /// Counter delta recorded since the meter was made.
    pub fn cumulative_counters(&self) -> Counters {
        self.cum
    }

    /// Add one step's counter delta and power samples.
    pub fn record(&mut self, delta: &Counters, power: &[PowerSample]) {
        self.cum.accumulate(delta);
        if !self.open.is_empty() {
            self.samples.extend_from_slice(power);
        } else {
            // No window can ever see these samples.
            self.base += power.len();
        }
    }

    /// Record a step result.
    pub fn on_step(&mut self, r: &StepResult) {
        self.record(&r.counters, &r.power);
    }

    pub fn is_open(&self, name: &str) -> bool {
        self.open.iter().any(|w| w.name == name)
    }

    /// Names of the open windows, oldest first.
    pub fn open_windows(&self) -> Vec<&str> {
        self.open.iter().map(|w| w.name.as_str()).collect()
    }

    pub fn begin_window(&mut self, name: &str) -> Result<(), MeterError> {
        if self.is_open(name) {
            return Err(MeterError::AlreadyOpen(name.to_string()));
        }
        self.open.push(OpenWindow {
            name: name.to_string(),
            start: Instant::now(),
            start_counters: self.cum,
            start_sample: self.base + self.samples.len(),
        });
        Ok(())
    }

    /// Close a window and measure it. Other open windows are unaffected.
    pub fn end_window(&mut self, name: &str) -> Result<Measurement, MeterError> {
        let i = self
            .open
            .iter()
            .position(|w| w.name == name)
            .ok_or_else(|| MeterError::NotOpen(name.to_string()))?;
        let w = self.open.remove(i);
        let counters = self.cum.delta_since(&w.start_counters);
        let first = w.start_sample - self.base;
        let rails = integrate(&self.samples[first..], self.cfg.max_gap_ns);
        let energy = self.model.energy(&counters);
        let co2e_g = self
            .cfg
            .grid_g_per_kwh
            .map(|g| co2e_grams(energy.total_j(), g));
        self.prune();
        Ok(Measurement {
            name: w.name,
            duration_s: w.start.elapsed().as_secs_f64(),
            counters,
            energy,
            rails,
            co2e_g,
        })
    }

    /// Drop a window without measuring it.
    pub fn cancel_window(&mut self, name: &str) -> Result<(), MeterError> {
        let i = self
            .open
            .iter()
            .position(|w| w.name == name)
            .ok_or_else(|| MeterError::NotOpen(name.to_string()))?;
        self.open.remove(i);
        self.prune();
        Ok(())
    }

    /// Forget samples that no open window can reach.
    fn prune(&mut self) {
        let keep_from = self
            .open
            .iter()
            .map(|w| w.start_sample)
            .min()
            .unwrap_or(self.base + self.samples.len());
        let drop = keep_from - self.base;
        if drop > 0 {
            self.samples.drain(..drop);
            self.base = keep_from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use e2t_core::Rail;

    fn model() -> EnergyModel {
        EnergyModel::new(Profile::builtin("zc706").unwrap())
    }

    fn ps(t_ms: u64, ma: Option<u32>) -> PowerSample {
        PowerSample {
            t_ns: t_ms * 1_000_000,
            rail: Rail::VccInt,
            millivolts: Some(1000),
            milliamps: ma,
        }
    }

    #[test]
    fn windows_nest_and_parents_sum_children() {
        let mut m = EnergyMeter::new(model(), MeterConfig::default()).unwrap();
        m.begin_window("run").unwrap();
        let per_batch = Counters {
            total_cycles: 100,
            macs_int16: 50,
            bytes_in: 10,
            ..Default::default()
        };
        let mut epochs = Vec::new();
        for _ in 0..2 {
            m.begin_window("epoch").unwrap();
            let mut batches = Vec::new();
            for _ in 0..3 {
                m.begin_window("batch").unwrap();
                m.record(&per_batch, &[]);
                batches.push(m.end_window("batch").unwrap());
            }
            let e = m.end_window("epoch").unwrap();
            assert_eq!(e.cycles(), 300);
            let sum: f64 = batches.iter().map(|b| b.energy.total_j()).sum();
            assert!((e.energy.total_j() - sum).abs() <= 1e-12 * sum);
            epochs.push(e);
        }
        assert_eq!(m.open_windows(), vec!["run"]);
        let run = m.end_window("run").unwrap();
        assert_eq!(run.counters.macs_int16, 300);
        assert_eq!(run.cycles(), 600);
        assert!(run.duration_s >= epochs[0].duration_s);
        assert!(run.rails.is_empty());
        assert_eq!(run.measured_j(), None);
        assert!(!run.power_complete());
    }

    #[test]
    fn window_errors() {
        let mut m = EnergyMeter::new(model(), MeterConfig::default()).unwrap();
        m.begin_window("a").unwrap();
        assert_eq!(
            m.begin_window("a"),
            Err(MeterError::AlreadyOpen("a".into()))
        );
        assert_eq!(
            m.end_window("b").unwrap_err(),
            MeterError::NotOpen("b".into())
        );
        m.cancel_window("a").unwrap();
        assert!(m.open_windows().is_empty());
        let bad = MeterConfig {
            grid_g_per_kwh: Some(f64::NAN),
            ..Default::default()
        };
        assert!(matches!(
            EnergyMeter::new(model(), bad),
            Err(MeterError::BadGrid(_))
        ));
    }

    #[test]
    fn overlapping_windows_and_power_per_window() {
        let mut m = EnergyMeter::new(model(), MeterConfig::default()).unwrap();
        m.record(&Counters::default(), &[ps(0, Some(1000))]); // before any window: dropped
        m.begin_window("a").unwrap();
        m.record(
            &Counters::default(),
            &[ps(1000, Some(1000)), ps(2000, Some(1000))],
        );
        m.begin_window("b").unwrap();
        m.record(
            &Counters::default(),
            &[ps(3000, Some(1000)), ps(4000, None)],
        );
        let a = m.end_window("a").unwrap();
        m.record(
            &Counters::default(),
            &[ps(5000, Some(1000)), ps(6000, Some(1000))],
        );
        let b = m.end_window("b").unwrap();
        // a: 1..3 s covered (2 J at 1 W), 3..4 s gap (missing sample), not booked.
        assert_eq!(a.rails[0].samples, 4);
        assert_eq!(a.measured_j(), Some(2.0));
        assert_eq!(a.rails[0].gap_s, 1.0);
        assert_eq!(a.missing_samples(), 1);
        assert!(!a.power_complete());
        // b: 3..5 s is a gap around the missing sample; 5..6 s covered.
        assert_eq!(b.rails[0].samples, 4);
        assert_eq!(b.measured_j(), Some(1.0));
        assert_eq!(b.rails[0].gap_s, 2.0);
        // Everything pruned once no window is open.
        assert!(m.samples.is_empty());
    }
}
