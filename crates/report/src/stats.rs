//! Small-sample statistics: means with Student's t confidence intervals, and savings against a
//! baseline with their intervals.
//!
//! Savings use per-seed pairs when every run of the method has a baseline run with the same seed
//! (`saving_s = 1 - E_method(s) / E_baseline(s)`, then a t interval over the pairs; pairing removes
//! the between-seed variance both share). Otherwise the ratio of means `R = mean_m / mean_b` gets a
//! delta-method standard error `R x sqrt(s_m^2 / (n_m mean_m^2) + s_b^2 / (n_b mean_b^2))` with
//! `min(n_m, n_b) - 1` degrees of freedom (conservative), and the saving is `1 - R`. Accuracy
//! differences use paired differences, or else Welch's standard error with the same conservative
//! degrees of freedom.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Two-sided confidence level used everywhere.
pub const CONFIDENCE: f64 = 0.95;

/// The (1 + CONFIDENCE)/2 quantile of Student's t with `df` degrees of freedom (None for df < 1).
pub fn t_quantile(df: usize) -> Option<f64> {
    if df == 0 {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, df as f64).ok()?;
    Some(t.inverse_cdf(0.5 + CONFIDENCE / 2.0))
}

/// Mean with a 95% interval. `lo`/`hi` are None when n < 2 (no spread to estimate).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl Estimate {
    /// Half-width of the interval.
    pub fn half_width(&self) -> Option<f64> {
        Some((self.hi? - self.lo?) / 2.0)
    }
}

/// Sample standard deviation (n - 1 denominator); None for n < 2.
pub fn sample_sd(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    Some((xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64).sqrt())
}

/// Mean and t interval of a sample; None for an empty sample or any non-finite value.
pub fn mean_ci(xs: &[f64]) -> Option<Estimate> {
    if xs.is_empty() || xs.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let (lo, hi) = match (sample_sd(xs), t_quantile(n.saturating_sub(1))) {
        (Some(sd), Some(t)) => {
            let h = t * sd / (n as f64).sqrt();
            (Some(mean - h), Some(mean + h))
        }
        _ => (None, None),
    };
    Some(Estimate { n, mean, lo, hi })
}

/// How a comparison with the baseline was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CompareMethod {
    Paired,
    /// Delta method on the ratio of means (savings) or Welch (differences).
    Unpaired,
}

impl CompareMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareMethod::Paired => "paired",
            CompareMethod::Unpaired => "unpaired",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub estimate: Estimate,
    pub method: CompareMethod,
}

/// Pairs (method, baseline) by seed when every method seed has a baseline seed.
fn pairs(m: &[(u64, f64)], b: &[(u64, f64)]) -> Option<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for (s, x) in m {
        let (_, y) = b.iter().find(|(sb, _)| sb == s)?;
        out.push((*x, *y));
    }
    (!out.is_empty()).then_some(out)
}

/// Fractional saving `1 - E_m / E_b` with its interval; inputs are (seed, energy) per run.
pub fn saving(method: &[(u64, f64)], baseline: &[(u64, f64)]) -> Option<Comparison> {
    if let Some(p) = pairs(method, baseline) {
        if p.iter().all(|(_, b)| *b > 0.0) {
            let s: Vec<f64> = p.iter().map(|(m, b)| 1.0 - m / b).collect();
            return Some(Comparison {
                estimate: mean_ci(&s)?,
                method: CompareMethod::Paired,
            });
        }
    }
    let xm: Vec<f64> = method.iter().map(|p| p.1).collect();
    let xb: Vec<f64> = baseline.iter().map(|p| p.1).collect();
    let (em, eb) = (mean_ci(&xm)?, mean_ci(&xb)?);
    if eb.mean <= 0.0 {
        return None;
    }
    let r = em.mean / eb.mean;
    let (lo, hi) = match (
        sample_sd(&xm),
        sample_sd(&xb),
        t_quantile(em.n.min(eb.n).saturating_sub(1)),
    ) {
        (Some(sm), Some(sb), Some(t)) if em.mean != 0.0 => {
            let rel = sm * sm / (em.n as f64 * em.mean * em.mean)
                + sb * sb / (eb.n as f64 * eb.mean * eb.mean);
            let se = r.abs() * rel.sqrt();
            (Some(1.0 - (r + t * se)), Some(1.0 - (r - t * se)))
        }
        _ => (None, None),
    };
    Some(Comparison {
        estimate: Estimate {
            n: em.n.min(eb.n),
            mean: 1.0 - r,
            lo,
            hi,
        },
        method: CompareMethod::Unpaired,
    })
}

/// Difference `mean_m - mean_b` (e.g. top-1) with its interval; inputs are (seed, value) per run.
pub fn difference(method: &[(u64, f64)], baseline: &[(u64, f64)]) -> Option<Comparison> {
    if let Some(p) = pairs(method, baseline) {
        let d: Vec<f64> = p.iter().map(|(m, b)| m - b).collect();
        return Some(Comparison {
            estimate: mean_ci(&d)?,
            method: CompareMethod::Paired,
        });
    }
    let xm: Vec<f64> = method.iter().map(|p| p.1).collect();
    let xb: Vec<f64> = baseline.iter().map(|p| p.1).collect();
    let (em, eb) = (mean_ci(&xm)?, mean_ci(&xb)?);
    let d = em.mean - eb.mean;
    let (lo, hi) = match (
        sample_sd(&xm),
        sample_sd(&xb),
        t_quantile(em.n.min(eb.n).saturating_sub(1)),
    ) {
        (Some(sm), Some(sb), Some(t)) => {
            let se = (sm * sm / em.n as f64 + sb * sb / eb.n as f64).sqrt();
            (Some(d - t * se), Some(d + t * se))
        }
        _ => (None, None),
    };
    Some(Comparison {
        estimate: Estimate {
            n: em.n.min(eb.n),
            mean: d,
            lo,
            hi,
        },
        method: CompareMethod::Unpaired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_quantiles_match_the_table() {
        // Two-sided 95% critical values from a printed t-table.
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (4, 2.776),
            (9, 2.262),
            (29, 2.045),
        ] {
            let q = t_quantile(df).unwrap();
            assert!(close(q, t, 5e-4), "df {df}: {q} vs {t}");
        }
        assert_eq!(t_quantile(0), None);
    }

    #[test]
    fn ci_of_a_known_sample() {
        // x = 1..5: mean 3, sd sqrt(2.5), t(4) = 2.776 -> half-width 2.776 x 1.5811 / sqrt(5) = 1.963.
        let e = mean_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(e.mean, 3.0);
        assert!(close(e.half_width().unwrap(), 1.9632, 1e-3), "{e:?}");
        assert!(close(e.lo.unwrap(), 1.0368, 1e-3));
        // Three seeds: 90.1, 90.5, 89.9 -> mean 90.1667, sd 0.3055, t(2) 4.303 -> 0.7589.
        let e = mean_ci(&[90.1, 90.5, 89.9]).unwrap();
        assert!(close(e.mean, 90.16667, 1e-4));
        assert!(close(e.half_width().unwrap(), 0.7589, 1e-3), "{e:?}");
    }

    #[test]
    fn degenerate_samples() {
        let one = mean_ci(&[4.0]).unwrap();
        assert_eq!((one.n, one.mean, one.lo), (1, 4.0, None));
        assert_eq!(mean_ci(&[]), None);
        assert_eq!(mean_ci(&[1.0, f64::NAN]), None);
        let flat = mean_ci(&[2.0, 2.0, 2.0]).unwrap();
        assert_eq!(flat.half_width(), Some(0.0));
    }

    #[test]
    fn paired_saving_and_difference() {
        let base = [(0, 100.0), (1, 110.0), (2, 90.0)];
        let e2 = [(0, 20.0), (1, 22.0), (2, 18.0)];
        let s = saving(&e2, &base).unwrap();
        assert_eq!(s.method, CompareMethod::Paired);
        assert!(close(s.estimate.mean, 0.8, 1e-12));
        // Every pair saves exactly 80%: the interval collapses.
        assert!(close(s.estimate.half_width().unwrap(), 0.0, 1e-12));

        let acc_b = [(0, 0.90), (1, 0.91), (2, 0.92)];
        let acc_m = [(0, 0.89), (1, 0.905), (2, 0.91)];
        let d = difference(&acc_m, &acc_b).unwrap();
        assert_eq!(d.method, CompareMethod::Paired);
        // diffs -0.01, -0.005, -0.01: mean -0.008333, sd 0.0028868, t(2) 4.303 -> 0.0071715.
        assert!(close(d.estimate.mean, -0.0083333, 1e-6));
        assert!(close(d.estimate.half_width().unwrap(), 0.0071715, 1e-5));
    }

    #[test]
    fn unpaired_saving_uses_the_delta_method() {
        let base = [(0, 100.0), (1, 120.0)];
        let m = [(5, 20.0), (6, 30.0)];
        let s = saving(&m, &base).unwrap();
        assert_eq!(s.method, CompareMethod::Unpaired);
        let r: f64 = 25.0 / 110.0;
        assert!(close(s.estimate.mean, 1.0 - r, 1e-12));
        // se = R sqrt(sd_m^2/(n m^2) + sd_b^2/(n b^2)) with sd_m = 7.0711, sd_b = 14.142, t(1) = 12.706.
        let se = r * (50.0_f64 / (2.0 * 625.0) + 200.0 / (2.0 * 12100.0)).sqrt();
        let h = 12.7062 * se;
        assert!(
            close(s.estimate.half_width().unwrap(), h, 1e-3),
            "{s:?} vs {h}"
        );
        let d = difference(&m, &base).unwrap();
        assert_eq!(d.method, CompareMethod::Unpaired);
        assert_eq!(d.estimate.mean, 25.0 - 110.0);
    }
}
