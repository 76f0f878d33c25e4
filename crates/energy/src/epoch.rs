//! The per-epoch view of a training run: energy columns for `epochs.csv`, cumulative energy, and a
//! Carbontracker-style prediction of the whole run after the first epoch.
//!
//! Each epoch is a window over the steps fed to it. For measured power, the last sample of each rail
//! from the previous epoch is carried into the next as an anchor, so the interval across an epoch
//! boundary is integrated exactly once and the epochs' measured energies add up to the run's.
//! Anchors are not counted again as samples. The whole state serialises (see
//! [`EpochEnergy::save_state`]) so a run resumed mid-epoch continues the same sums.

use crate::meter::{Measurement, MeterError};
use crate::model::{EnergyBreakdown, EnergyModel, co2e_grams};
use crate::power::{integrate, sample_watts};
use e2t_core::{Counters, PowerSample, Rail, StepResult};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Names of the energy columns an [`EpochEnergy`] adds to `epochs.csv`, in order.
pub const EPOCH_COLUMNS: [&str; 7] = [
    "energy_j",
    "energy_int8_j",
    "energy_int16_j",
    "energy_onchip_j",
    "energy_offchip_j",
    "energy_static_j",
    "energy_cum_j",
];

/// Extra columns when power is measured: measured energy over covered time (missing when nothing
/// was covered), cumulative measured energy, and counts of samples and missing samples.
pub const MEASURED_COLUMNS: [&str; 4] = [
    "energy_measured_j",
    "energy_measured_cum_j",
    "power_samples",
    "power_missing_samples",
];

/// Column added with a grid intensity.
pub const CO2_COLUMN: &str = "co2e_cum_g";

/// Carbontracker-style forecast of a whole run's energy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub epochs_total: u32,
    pub first_epoch_j: f64,
    /// `epochs_total x first_epoch_j`.
    pub predicted_total_j: f64,
    pub predicted_co2e_g: Option<f64>,
    pub note: String,
}

/// Serialisable state (everything but the wall clock).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct State {
    epochs: u32,
    cum: EnergyBreakdown,
    cum_counters: Counters,
    cum_measured_j: f64,
    first_epoch_j: Option<f64>,
    /// The open epoch's counters and samples.
    counters: Counters,
    samples: Vec<PowerSample>,
    /// Last sample per rail of the previous epoch.
    anchors: Vec<PowerSample>,
}

pub struct EpochEnergy {
    model: EnergyModel,
    grid_g_per_kwh: Option<f64>,
    max_gap_ns: Option<u64>,
    measured_columns: bool,
    st: State,
    started: Instant,
    last: Option<Measurement>,
}

impl EpochEnergy {
    /// `measured_columns` adds [`MEASURED_COLUMNS`]: decide it up front so the CSV header stays fixed
    /// (true for a board with power monitors). `grid_g_per_kwh` adds [`CO2_COLUMN`].
    pub fn new(
        model: EnergyModel,
        grid_g_per_kwh: Option<f64>,
        max_gap_ns: Option<u64>,
        measured_columns: bool,
    ) -> Result<Self, MeterError> {
        if let Some(g) = grid_g_per_kwh {
            if !g.is_finite() || g < 0.0 {
                return Err(MeterError::BadGrid(g));
            }
        }
        Ok(EpochEnergy {
            model,
            grid_g_per_kwh,
            max_gap_ns,
            measured_columns,
            st: State::default(),
            started: Instant::now(),
            last: None,
        })
    }

    pub fn model(&self) -> &EnergyModel {
        &self.model
    }

    /// The CSV column names this adapter produces, in order.
    pub fn columns(&self) -> Vec<String> {
        let mut c: Vec<String> = EPOCH_COLUMNS.iter().map(|s| s.to_string()).collect();
        if self.measured_columns {
            c.extend(MEASURED_COLUMNS.iter().map(|s| s.to_string()));
        }
        if self.grid_g_per_kwh.is_some() {
            c.push(CO2_COLUMN.into());
        }
        c
    }

    /// Restart the epoch's wall clock (optional: the first step of an epoch belongs to it anyway).
    pub fn begin_epoch(&mut self) {
        self.started = Instant::now();
    }

    pub fn on_step(&mut self, r: &StepResult) {
        self.record(&r.counters, &r.power);
    }

    pub fn record(&mut self, delta: &Counters, power: &[PowerSample]) {
        self.st.counters.accumulate(delta);
        self.st.samples.extend_from_slice(power);
    }

    /// Counters of the open epoch so far.
    pub fn epoch_counters(&self) -> Counters {
        self.st.counters
    }

    /// Close the epoch: its measurement and its columns (NaN for a missing measured value). An
    /// epoch without steps (every batch dropped) costs nothing: the array did not run.
    pub fn end_epoch(&mut self) -> (Measurement, Vec<(String, f64)>) {
        let st = &mut self.st;
        let mut all = st.anchors.clone();
        all.extend_from_slice(&st.samples);
        let mut rails = integrate(&all, self.max_gap_ns);
        for r in rails.iter_mut() {
            if let Some(a) = st.anchors.iter().find(|a| a.rail == r.rail) {
                // The anchor was counted in the epoch it came from.
                r.samples -= 1;
                if sample_watts(a).is_none() {
                    r.missing_samples -= 1;
                }
            }
        }
        for rail in Rail::ALL {
            if let Some(last) = st
                .samples
                .iter()
                .filter(|s| s.rail == rail)
                .max_by_key(|s| s.t_ns)
            {
                st.anchors.retain(|a| a.rail != rail);
                st.anchors.push(*last);
            }
        }
        let energy = self.model.energy(&st.counters);
        let m = Measurement {
            name: format!("epoch {}", st.epochs + 1),
            duration_s: self.started.elapsed().as_secs_f64(),
            counters: st.counters,
            energy,
            rails,
            co2e_g: self.grid_g_per_kwh.map(|g| co2e_grams(energy.total_j(), g)),
        };
        st.epochs += 1;
        st.cum.add(&energy);
        st.cum_counters.accumulate(&st.counters);
        st.first_epoch_j.get_or_insert(energy.total_j());
        let measured = m.measured_j();
        st.cum_measured_j += measured.unwrap_or(0.0);
        st.counters = Counters::default();
        st.samples.clear();
        self.started = Instant::now();

        let mut cols = vec![
            (EPOCH_COLUMNS[0].to_string(), energy.total_j()),
            (EPOCH_COLUMNS[1].to_string(), energy.int8_j),
            (EPOCH_COLUMNS[2].to_string(), energy.int16_j),
            (EPOCH_COLUMNS[3].to_string(), energy.onchip_j),
            (EPOCH_COLUMNS[4].to_string(), energy.offchip_j),
            (EPOCH_COLUMNS[5].to_string(), energy.static_j),
            (EPOCH_COLUMNS[6].to_string(), st.cum.total_j()),
        ];
        if self.measured_columns {
            cols.push((
                MEASURED_COLUMNS[0].to_string(),
                measured.unwrap_or(f64::NAN),
            ));
            cols.push((MEASURED_COLUMNS[1].to_string(), st.cum_measured_j));
            cols.push((MEASURED_COLUMNS[2].to_string(), m.power_samples() as f64));
            cols.push((MEASURED_COLUMNS[3].to_string(), m.missing_samples() as f64));
        }
        if let Some(g) = self.grid_g_per_kwh {
            cols.push((CO2_COLUMN.into(), co2e_grams(st.cum.total_j(), g)));
        }
        self.last = Some(m.clone());
        (m, cols)
    }

    /// The last closed epoch's measurement.
    pub fn last_epoch(&self) -> Option<&Measurement> {
        self.last.as_ref()
    }

    pub fn epochs_done(&self) -> u32 {
        self.st.epochs
    }

    /// Model energy of all closed epochs, by class.
    pub fn cumulative(&self) -> EnergyBreakdown {
        self.st.cum
    }

    /// Counters of all closed epochs.
    pub fn cumulative_counters(&self) -> Counters {
        self.st.cum_counters
    }

    /// After the first epoch: the whole run's energy as `epochs_total x` the first epoch's.
    pub fn prediction(&self, epochs_total: u32) -> Option<Prediction> {
        let first = self.st.first_epoch_j?;
        let predicted = first * epochs_total as f64;
        Some(Prediction {
            epochs_total,
            first_epoch_j: first,
            predicted_total_j: predicted,
            predicted_co2e_g: self.grid_g_per_kwh.map(|g| co2e_grams(predicted, g)),
            note: "extrapolated from epoch 1 alone; SMD draws, SLU gates and PSG's uncertain share change \
                   over training, so later epochs can cost more or less"
                .into(),
        })
    }

    /// Sums and the open epoch's partial data, for a checkpoint.
    pub fn save_state(&self) -> Vec<u8> {
        serde_json::to_vec(&self.st).unwrap_or_default()
    }

    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.st = serde_json::from_slice(bytes).map_err(|e| format!("energy state: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use e2t_core::StepDiag;

    fn model() -> EnergyModel {
        EnergyModel::new(Profile::builtin("zc706").unwrap())
    }

    fn step(c: Counters, power: Vec<PowerSample>) -> StepResult {
        StepResult {
            seq: 0,
            loss: 0.0,
            correct: 0,
            samples: 1,
            counters: c,
            power,
            diag: StepDiag::default(),
        }
    }

    fn ps(t_ms: u64, ma: Option<u32>) -> PowerSample {
        PowerSample {
            t_ns: t_ms * 1_000_000,
            rail: Rail::VccInt,
            millivolts: Some(1000),
            milliamps: ma,
        }
    }

    fn get(cols: &[(String, f64)], k: &str) -> f64 {
        cols.iter().find(|(n, _)| n == k).unwrap().1
    }

    #[test]
    fn columns_cumulate_and_predict() {
        let mut ee = EpochEnergy::new(model(), Some(400.0), None, true).unwrap();
        let c = Counters {
            total_cycles: 2_000_000,
            macs_int8: 1000,
            macs_int16: 3000,
            bytes_in: 512,
            bytes_out: 64,
            ..Default::default()
        };
        ee.on_step(&step(c, vec![ps(0, Some(500)), ps(10, Some(500))]));
        ee.on_step(&step(c, vec![ps(20, Some(500))]));
        let (m1, cols1) = ee.end_epoch();
        let names: Vec<String> = cols1.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, ee.columns());
        let mut two = c;
        two.accumulate(&c);
        assert_eq!(m1.counters, two);
        let expect = ee.model().energy(&two);
        assert_eq!(get(&cols1, "energy_j"), expect.total_j());
        assert_eq!(get(&cols1, "energy_int8_j"), expect.int8_j);
        assert_eq!(get(&cols1, "energy_int16_j"), expect.int16_j);
        assert_eq!(get(&cols1, "energy_onchip_j"), expect.onchip_j);
        assert_eq!(get(&cols1, "energy_offchip_j"), expect.offchip_j);
        assert_eq!(get(&cols1, "energy_static_j"), expect.static_j);
        assert_eq!(get(&cols1, "energy_cum_j"), expect.total_j());
        assert!((get(&cols1, "energy_measured_j") - 0.5 * 0.02).abs() < 1e-12);
        assert_eq!(get(&cols1, "power_samples"), 3.0);
        assert_eq!(get(&cols1, "power_missing_samples"), 0.0);
        assert_eq!(get(&cols1, CO2_COLUMN), co2e_grams(expect.total_j(), 400.0));
        let p = ee.prediction(10).unwrap();
        assert_eq!(p.predicted_total_j, 10.0 * expect.total_j());
        assert!(p.predicted_co2e_g.unwrap() > 0.0);

        // Every batch dropped: nothing ran, nothing is booked, nothing was measured.
        let (_, cols2) = ee.end_epoch();
        assert_eq!(get(&cols2, "energy_j"), 0.0);
        assert_eq!(get(&cols2, "energy_cum_j"), expect.total_j());
        assert!(get(&cols2, "energy_measured_j").is_nan());
        assert_eq!(get(&cols2, "power_samples"), 0.0);
        assert_eq!(ee.epochs_done(), 2);
        assert_eq!(
            ee.prediction(10).unwrap().predicted_total_j,
            p.predicted_total_j
        );
    }

    #[test]
    fn epoch_boundaries_are_integrated_once_and_gaps_stay_gaps() {
        let mut ee = EpochEnergy::new(model(), None, None, true).unwrap();
        // 1 W throughout; epoch 1 has samples at 0, 1 s; epoch 2 at 2 s (missing), 3 s, 4 s.
        ee.record(
            &Counters::default(),
            &[ps(0, Some(1000)), ps(1000, Some(1000))],
        );
        let (m1, _) = ee.end_epoch();
        ee.record(
            &Counters::default(),
            &[ps(2000, None), ps(3000, Some(1000)), ps(4000, Some(1000))],
        );
        let (m2, cols2) = ee.end_epoch();
        assert_eq!(m1.measured_j(), Some(1.0));
        // 1..3 s is a gap (the 2 s sample is missing), 3..4 s covered: 1 J, not 3 J and not 2 J.
        assert_eq!(m2.measured_j(), Some(1.0));
        assert_eq!(m2.rails[0].gap_s, 2.0);
        assert_eq!(m2.rails[0].samples, 3);
        assert_eq!(m2.missing_samples(), 1);
        assert_eq!(get(&cols2, "energy_measured_cum_j"), 2.0);
        // The anchor carried from a complete epoch does not make the next one look incomplete.
        ee.record(&Counters::default(), &[ps(5000, Some(1000))]);
        let (m3, _) = ee.end_epoch();
        assert_eq!(m3.measured_j(), Some(1.0));
        assert_eq!(m3.rails[0].samples, 1);
        assert_eq!(m3.missing_samples(), 0);
    }

    #[test]
    fn state_survives_a_checkpoint_mid_epoch() {
        let c = Counters {
            total_cycles: 1000,
            macs_int16: 64,
            bytes_in: 16,
            ..Default::default()
        };
        let mut a = EpochEnergy::new(model(), None, None, false).unwrap();
        a.on_step(&step(c, vec![]));
        let _ = a.end_epoch();
        a.on_step(&step(c, vec![]));
        let saved = a.save_state();
        let mut b = EpochEnergy::new(model(), None, None, false).unwrap();
        b.restore_state(&saved).unwrap();
        a.on_step(&step(c, vec![]));
        b.on_step(&step(c, vec![]));
        assert_eq!(a.end_epoch().1, b.end_epoch().1);
        assert!(b.restore_state(b"garbage").is_err());
    }
}
