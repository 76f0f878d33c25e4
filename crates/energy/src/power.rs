//! Measured energy from power samples: per rail, trapezoid rule on P = V x I between consecutive
//! samples of that rail.
//!
//! An interval is integrated only when both of its end samples are present (voltage and current)
//! and, if a maximum gap is set, it is no longer than that. Every other interval is a *gap*: its
//! duration is reported, its energy is not booked (neither as zero nor as a guess). A caller that
//! wants a number for the gap can extrapolate from `energy_j / covered_s` and say so.

use e2t_core::{PowerSample, Rail};
use serde::{Deserialize, Serialize};

/// Measured energy of one rail over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RailEnergy {
    pub rail: Rail,
    /// Energy over the covered intervals, J.
    pub energy_j: f64,
    /// Time covered by integrated intervals, s.
    pub covered_s: f64,
    /// Time between samples not integrated (a missing end sample, or a too-long interval), s.
    pub gap_s: f64,
    /// Samples of this rail seen in the window (present or missing).
    pub samples: usize,
    /// Samples with no voltage or no current reading.
    pub missing_samples: usize,
}

impl RailEnergy {
    /// True when every interval between the first and last sample was integrated.
    pub fn complete(&self) -> bool {
        self.missing_samples == 0 && self.gap_s == 0.0 && self.samples >= 2
    }
    /// Mean power over the covered time, W (None when nothing was covered).
    pub fn mean_power_w(&self) -> Option<f64> {
        (self.covered_s > 0.0).then(|| self.energy_j / self.covered_s)
    }
}

/// Power in watts of a sample, or None when either reading is missing.
pub fn sample_watts(s: &PowerSample) -> Option<f64> {
    match (s.millivolts, s.milliamps) {
        (Some(mv), Some(ma)) => Some(mv as f64 * ma as f64 * 1e-6),
        _ => None,
    }
}

/// Integrate `samples` (any order, any mix of rails) per rail. Rails with no samples are absent from
/// the result; the result is ordered as [`Rail::ALL`].
pub fn integrate(samples: &[PowerSample], max_gap_ns: Option<u64>) -> Vec<RailEnergy> {
    let mut out = Vec::new();
    for rail in Rail::ALL {
        let mut rs: Vec<&PowerSample> = samples.iter().filter(|s| s.rail == rail).collect();
        if rs.is_empty() {
            continue;
        }
        // Stable sort: equal timestamps keep arrival order.
        rs.sort_by_key(|s| s.t_ns);
        let mut r = RailEnergy {
            rail,
            energy_j: 0.0,
            covered_s: 0.0,
            gap_s: 0.0,
            samples: rs.len(),
            missing_samples: rs.iter().filter(|s| sample_watts(s).is_none()).count(),
        };
        for w in rs.windows(2) {
            let (a, b) = (w[0], w[1]);
            let dt_ns = b.t_ns - a.t_ns;
            if dt_ns == 0 {
                continue;
            }
            let dt = dt_ns as f64 * 1e-9;
            let too_long = max_gap_ns.is_some_and(|g| dt_ns > g);
            match (sample_watts(a), sample_watts(b)) {
                (Some(pa), Some(pb)) if !too_long => {
                    r.energy_j += 0.5 * (pa + pb) * dt;
                    r.covered_s += dt;
                }
                _ => r.gap_s += dt,
            }
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_ms: u64, rail: Rail, mv: Option<u32>, ma: Option<u32>) -> PowerSample {
        PowerSample {
            t_ns: t_ms * 1_000_000,
            rail,
            millivolts: mv,
            milliamps: ma,
        }
    }

    #[test]
    fn trapezoid_of_a_ramp_is_exact() {
        // VCCINT at 1000 mV; current 1000 -> 2000 -> 3000 mA over 0..2 s: P = 1, 2, 3 W.
        let v = vec![
            s(0, Rail::VccInt, Some(1000), Some(1000)),
            s(1000, Rail::VccInt, Some(1000), Some(2000)),
            s(2000, Rail::VccInt, Some(1000), Some(3000)),
        ];
        let r = integrate(&v, None);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].energy_j, 1.5 + 2.5);
        assert_eq!(r[0].covered_s, 2.0);
        assert_eq!(r[0].gap_s, 0.0);
        assert!(r[0].complete());
        assert_eq!(r[0].mean_power_w(), Some(2.0));
    }

    #[test]
    fn missing_sample_makes_a_gap_not_zero_energy() {
        // 1 W constant, but the sample at 1 s lost its current reading.
        let v = vec![
            s(0, Rail::VccAux, Some(1000), Some(1000)),
            s(1000, Rail::VccAux, Some(1000), None),
            s(2000, Rail::VccAux, Some(1000), Some(1000)),
            s(3000, Rail::VccAux, Some(1000), Some(1000)),
        ];
        let r = &integrate(&v, None)[0];
        // Only 2..3 s is integrated; 0..2 s is a gap, not 0 J and not 2 J.
        assert_eq!(r.energy_j, 1.0);
        assert_eq!(r.covered_s, 1.0);
        assert_eq!(r.gap_s, 2.0);
        assert_eq!(r.missing_samples, 1);
        assert!(!r.complete());
    }

    #[test]
    fn all_missing_means_no_energy_and_incomplete() {
        let v = vec![
            s(0, Rail::Vadj, None, None),
            s(1000, Rail::Vadj, None, Some(5)),
        ];
        let r = &integrate(&v, None)[0];
        assert_eq!(r.covered_s, 0.0);
        assert_eq!(r.gap_s, 1.0);
        assert_eq!(r.missing_samples, 2);
        assert_eq!(r.mean_power_w(), None);
        assert!(!r.complete());
    }

    #[test]
    fn long_interval_is_a_gap_and_rails_are_separate() {
        let v = vec![
            s(0, Rail::VccInt, Some(1000), Some(1000)),
            s(10, Rail::Vcc3v3, Some(3300), Some(100)),
            s(20, Rail::VccInt, Some(1000), Some(1000)),
            s(5020, Rail::VccInt, Some(1000), Some(1000)),
            s(30, Rail::Vcc3v3, Some(3300), Some(100)),
        ];
        let r = integrate(&v, Some(100_000_000));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].rail, Rail::VccInt);
        assert!((r[0].energy_j - 0.02).abs() < 1e-15);
        assert!((r[0].gap_s - 5.0).abs() < 1e-12);
        assert_eq!(r[1].rail, Rail::Vcc3v3);
        assert!((r[1].energy_j - 0.33 * 0.02).abs() < 1e-12);
        assert!(r[1].complete());
    }

    #[test]
    fn single_sample_covers_nothing() {
        let r = &integrate(&[s(5, Rail::Vcc1v5, Some(1500), Some(200))], None)[0];
        assert_eq!(r.energy_j, 0.0);
        assert_eq!(r.samples, 1);
        assert!(!r.complete());
    }
}
