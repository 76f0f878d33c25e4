//! Pricing counters with a profile. The formula is in the crate documentation; this module is its
//! only implementation.

use crate::profile::{Op, Profile};
use e2t_core::Counters;
use serde::{Deserialize, Serialize};

/// Picojoules to joules.
const PJ: f64 = 1e-12;

/// Dynamic energy in picojoules by class, before conversion (kept so tests can check exact sums).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicPj {
    pub int8: f64,
    pub int16: f64,
    pub onchip: f64,
    pub offchip: f64,
}

/// Energy of a window by class, in joules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnergyBreakdown {
    /// INT8-mode MACs with their accumulator adds.
    pub int8_j: f64,
    /// INT16-mode MACs with their accumulator adds.
    pub int16_j: f64,
    /// On-chip buffer writes and reads of streamed bytes.
    pub onchip_j: f64,
    /// DRAM access and stream transfer of streamed bytes.
    pub offchip_j: f64,
    /// Static power over the window's cycles.
    pub static_j: f64,
}

impl EnergyBreakdown {
    pub fn dynamic_j(&self) -> f64 {
        self.int8_j + self.int16_j + self.onchip_j + self.offchip_j
    }
    pub fn total_j(&self) -> f64 {
        self.dynamic_j() + self.static_j
    }
    /// Field-by-field sum.
    pub fn add(&mut self, o: &EnergyBreakdown) {
        self.int8_j += o.int8_j;
        self.int16_j += o.int16_j;
        self.onchip_j += o.onchip_j;
        self.offchip_j += o.offchip_j;
        self.static_j += o.static_j;
    }
}

/// A profile turned into prices. Cheap to clone.
#[derive(Clone, Debug, PartialEq)]
pub struct EnergyModel {
    profile: Profile,
}

impl EnergyModel {
    pub fn new(profile: Profile) -> Self {
        EnergyModel { profile }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Dynamic energy in pJ (see the crate docs for the formula).
    pub fn dynamic_pj(&self, c: &Counters) -> DynamicPj {
        let p = &self.profile;
        let acc = p.value(Op::AccAdd48);
        let streamed = c.bytes_in as f64 + c.bytes_out as f64;
        DynamicPj {
            int8: c.macs_int8 as f64 * (p.value(Op::MacInt8) + acc),
            int16: c.macs_int16 as f64 * (p.value(Op::MacInt16) + acc),
            onchip: streamed * (p.value(Op::BufferWrite) + p.value(Op::BufferRead)),
            offchip: streamed * (p.value(Op::Dram) + p.value(Op::Stream)),
        }
    }

    /// Static energy in J: static power x cycles / clock.
    pub fn static_j(&self, total_cycles: u64) -> f64 {
        self.profile.value(Op::StaticPower) * total_cycles as f64 / self.profile.value(Op::Clock)
    }

    /// Seconds the array was clocked for `cycles`.
    pub fn seconds(&self, cycles: u64) -> f64 {
        cycles as f64 / self.profile.value(Op::Clock)
    }

    /// Full breakdown in joules for a counter delta.
    pub fn energy(&self, c: &Counters) -> EnergyBreakdown {
        let d = self.dynamic_pj(c);
        EnergyBreakdown {
            int8_j: d.int8 * PJ,
            int16_j: d.int16 * PJ,
            onchip_j: d.onchip * PJ,
            offchip_j: d.offchip * PJ,
            static_j: self.static_j(c.total_cycles),
        }
    }
}

/// Grams of CO2-equivalent for `joules` at a grid intensity in g/kWh (1 kWh = 3.6e6 J).
pub fn co2e_grams(joules: f64, grid_g_per_kwh: f64) -> f64 {
    joules / 3.6e6 * grid_g_per_kwh
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile whose prices are powers of two, so the sums below are exact in f64.
    fn dyadic() -> Profile {
        let text = r#"
name = "dyadic"
description = "test prices"
[mac_int8]
value = 0.25
unit = "pJ/op"
source = "test"
[mac_int16]
value = 1.0
unit = "pJ/op"
source = "test"
[acc_add48]
value = 0.125
unit = "pJ/op"
source = "test"
[buffer_read]
value = 2.0
unit = "pJ/byte"
source = "test"
[buffer_write]
value = 4.0
unit = "pJ/byte"
source = "test"
[dram]
value = 128
unit = "pJ/byte"
source = "test"
[stream]
value = 8.0
unit = "pJ/byte"
source = "test"
[static_power]
value = 0.5
unit = "W"
source = "test"
[clock]
value = 1024
unit = "Hz"
source = "test"
"#;
        Profile::parse(text, "test").unwrap()
    }

    /// A hand-counted run: two GEMMs of a 4x4 array.
    /// GEMM 1 (INT16): M=4, K=8, N=4 -> 128 MACs; operands 2 bytes x (4x8 + 8x4) = 128 B in,
    ///   results 2 bytes x 16 = 32 B out.
    /// GEMM 2 (INT8, PSG prediction): same shape -> 128 MACs, same bytes.
    /// Cycles: 2048 in total.
    #[test]
    fn hand_counted_run_is_exact() {
        let c = Counters {
            total_cycles: 2048,
            busy_cycles: 1000,
            macs_int8: 128,
            macs_int16: 128,
            bytes_in: 256,
            bytes_out: 64,
            gemms: 2,
            ..Default::default()
        };
        let m = EnergyModel::new(dyadic());
        let d = m.dynamic_pj(&c);
        // int8: 128 x (0.25 + 0.125) = 48 pJ
        assert_eq!(d.int8, 48.0);
        // int16: 128 x (1 + 0.125) = 144 pJ
        assert_eq!(d.int16, 144.0);
        // on-chip: (256 + 64) bytes x (4 write + 2 read) = 1920 pJ
        assert_eq!(d.onchip, 1920.0);
        // off-chip: 320 bytes x (128 DRAM + 8 stream) = 43520 pJ
        assert_eq!(d.offchip, 43520.0);
        let e = m.energy(&c);
        assert_eq!(e.int8_j, 48.0 * 1e-12);
        assert_eq!(e.int16_j, 144.0 * 1e-12);
        assert_eq!(e.onchip_j, 1920.0 * 1e-12);
        assert_eq!(e.offchip_j, 43520.0 * 1e-12);
        // static: 0.5 W x 2048 cycles / 1024 Hz = 1 J
        assert_eq!(e.static_j, 1.0);
        assert_eq!(e.total_j(), e.dynamic_j() + 1.0);
    }

    #[test]
    fn energy_is_additive_over_deltas() {
        let m = EnergyModel::new(dyadic());
        let a = Counters {
            total_cycles: 1024,
            macs_int8: 64,
            bytes_in: 32,
            ..Default::default()
        };
        let b = Counters {
            total_cycles: 2048,
            macs_int16: 16,
            bytes_out: 8,
            ..Default::default()
        };
        let mut ab = a;
        ab.accumulate(&b);
        // Exact in pJ (dyadic prices); in J only up to the rounding of the 1e-12 scaling.
        let (da, db, dab) = (m.dynamic_pj(&a), m.dynamic_pj(&b), m.dynamic_pj(&ab));
        assert_eq!(da.int8 + db.int8, dab.int8);
        assert_eq!(da.int16 + db.int16, dab.int16);
        assert_eq!(da.onchip + db.onchip, dab.onchip);
        assert_eq!(da.offchip + db.offchip, dab.offchip);
        let mut sum = m.energy(&a);
        sum.add(&m.energy(&b));
        let whole = m.energy(&ab);
        assert_eq!(sum.static_j, whole.static_j);
        assert!((sum.total_j() - whole.total_j()).abs() <= 1e-15 * whole.total_j());
    }

    #[test]
    fn asic45_prices_int8_below_int16() {
        let m = EnergyModel::new(Profile::builtin("asic45").unwrap());
        let e8 = m.energy(&Counters {
            macs_int8: 1_000_000,
            ..Default::default()
        });
        let e16 = m.energy(&Counters {
            macs_int16: 1_000_000,
            ..Default::default()
        });
        assert!((e8.int8_j - 0.35e-6).abs() < 1e-15);
        assert!((e16.int16_j - 0.95e-6).abs() < 1e-15);
        assert_eq!(e8.static_j, 0.0);
    }

    #[test]
    fn co2_from_grid_intensity() {
        // 3.6 MJ = 1 kWh at 400 g/kWh = 400 g.
        assert_eq!(co2e_grams(3.6e6, 400.0), 400.0);
    }
}
