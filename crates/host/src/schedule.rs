//! Learning rate per step. The host owns the schedule and sends the rate with every batch; dropped
//! (SMD) batches advance it like kept ones, so the schedule depends on the step index only.

use crate::config::Schedule;

/// The schedule of one run, in steps (batches, kept or dropped).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    pub base: f32,
    pub schedule: Schedule,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub warmup_steps: u64,
}

impl LrSchedule {
    pub fn new(
        base: f32,
        schedule: Schedule,
        warmup_epochs: f32,
        epochs: u32,
        steps_per_epoch: u64,
    ) -> Self {
        let steps_per_epoch = steps_per_epoch.max(1);
        let total_steps = epochs as u64 * steps_per_epoch;
        let warmup_steps =
            ((warmup_epochs as f64 * steps_per_epoch as f64).round() as u64).min(total_steps);
        LrSchedule {
            base,
            schedule,
            steps_per_epoch,
            total_steps,
            warmup_steps,
        }
    }

    /// Rate of step `step` (0-based, counted over the whole run).
    ///
    /// Warm-up: `base * (step + 1) / warmup_steps` for the first `warmup_steps` steps, so the last
    /// warm-up step reaches `base`. Then: constant; step (times `gamma` for each milestone epoch
    /// reached, measured in fractional epochs `step / steps_per_epoch`); or cosine from `base` at the
    /// first step after warm-up towards 0 at `total_steps`.
    pub fn lr_at(&self, step: u64) -> f32 {
        let base = self.base as f64;
        if step < self.warmup_steps {
            return (base * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let lr = match &self.schedule {
            Schedule::Constant => base,
            Schedule::Step { milestones, gamma } => {
                let epoch = step as f64 / self.steps_per_epoch as f64;
                let passed = milestones.iter().filter(|&&m| epoch >= m as f64).count();
                base * (*gamma as f64).powi(passed as i32)
            }
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let t = (step - self.warmup_steps) as f64 / span as f64;
                0.5 * base * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64) -> bool {
        (a as f64 - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn constant_and_warmup() {
        let s = LrSchedule::new(0.1, Schedule::Constant, 1.0, 3, 10);
        assert_eq!(s.warmup_steps, 10);
        assert!(close(s.lr_at(0), 0.01));
        assert!(close(s.lr_at(4), 0.05));
        assert!(close(s.lr_at(9), 0.1));
        assert!(close(s.lr_at(10), 0.1));
        assert!(close(s.lr_at(29), 0.1));
        // Fractional warm-up: half an epoch of 10 steps is 5 steps.
        let s = LrSchedule::new(0.1, Schedule::Constant, 0.5, 3, 10);
        assert_eq!(s.warmup_steps, 5);
        assert!(close(s.lr_at(0), 0.02) && close(s.lr_at(4), 0.1));
    }

    #[test]
    fn step_schedule() {
        let s = LrSchedule::new(
            1.0,
            Schedule::Step {
                milestones: vec![2.0, 3.0],
                gamma: 0.1,
            },
            0.0,
            4,
            10,
        );
        assert!(close(s.lr_at(0), 1.0));
        assert!(close(s.lr_at(19), 1.0));
        assert!(close(s.lr_at(20), 0.1));
        assert!(close(s.lr_at(29), 0.1));
        assert!(close(s.lr_at(30), 0.01));
        assert!(close(s.lr_at(39), 0.01));
        // Fractional milestone: 1.5 epochs of 10 steps is step 15.
        let s = LrSchedule::new(
            1.0,
            Schedule::Step {
                milestones: vec![1.5],
                gamma: 0.5,
            },
            0.0,
            2,
            10,
        );
        assert!(close(s.lr_at(14), 1.0) && close(s.lr_at(15), 0.5));
    }

    #[test]
    fn cosine_with_warmup() {
        let s = LrSchedule::new(0.2, Schedule::Cosine, 1.0, 5, 10);
        assert!(close(s.lr_at(0), 0.02));
        assert!(close(s.lr_at(9), 0.2));
        assert!(
            close(s.lr_at(10), 0.2),
            "cosine starts at the peak after warm-up"
        );
        // Half-way through the 40 cosine steps: base / 2.
        assert!(close(s.lr_at(30), 0.1));
        // Last step: 0.5 * 0.2 * (1 + cos(pi * 39/40)).
        let want = 0.1 * (1.0 + (std::f64::consts::PI * 39.0 / 40.0).cos());
        assert!(close(s.lr_at(49), want) && s.lr_at(49) > 0.0);
        // Monotone decreasing after warm-up.
        for k in 10..49 {
            assert!(s.lr_at(k + 1) <= s.lr_at(k));
        }
    }
}
