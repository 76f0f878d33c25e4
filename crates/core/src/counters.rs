//! Accelerator performance counters: the RTL's counter block, the soft model and the energy model
//! all use this one struct. All counts are monotonic 64-bit values; a *delta* is `later - earlier`.

use serde::{Deserialize, Serialize};

/// One consistent snapshot (or delta) of the accelerator's counters.
///
/// Invariant: the soft accelerator and the RTL produce equal values for the same sequence of GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counters {
    /// Clock cycles in which the engine executed a command (stalls included; idle cycles between
    /// commands are not counted, so the soft model and the RTL agree whatever the host's gaps).
    pub total_cycles: u64,
    /// Cycles in which the array did useful work.
    pub busy_cycles: u64,
    /// Cycles stalled because the operand input stream had no data.
    pub stall_in_cycles: u64,
    /// Cycles stalled because the result stream was not ready.
    pub stall_out_cycles: u64,
    /// Multiply-accumulates issued in INT8 mode (each is one 8x8 product).
    pub macs_int8: u64,
    /// Multiply-accumulates issued in INT16 mode (each is one 16x16 product).
    pub macs_int16: u64,
    /// Operand bytes accepted on the input stream.
    pub bytes_in: u64,
    /// Result bytes emitted on the output stream.
    pub bytes_out: u64,
    /// PSG: weight-gradient entries predicted in INT8 mode.
    pub psg_predicted: u64,
    /// PSG: predicted entries whose |P| was below the threshold.
    pub psg_uncertain: u64,
    /// PSG: output tiles recomputed in INT16 mode.
    pub psg_recomputed_tiles: u64,
    /// GEMM commands completed.
    pub gemms: u64,
}

impl Counters {
    /// `self - earlier`, field by field (wrapping, as 64-bit hardware counters do).
    pub fn delta_since(&self, earlier: &Counters) -> Counters {
        Counters {
            total_cycles: self.total_cycles.wrapping_sub(earlier.total_cycles),
            busy_cycles: self.busy_cycles.wrapping_sub(earlier.busy_cycles),
            stall_in_cycles: self.stall_in_cycles.wrapping_sub(earlier.stall_in_cycles),
            stall_out_cycles: self.stall_out_cycles.wrapping_sub(earlier.stall_out_cycles),
            macs_int8: self.macs_int8.wrapping_sub(earlier.macs_int8),
            macs_int16: self.macs_int16.wrapping_sub(earlier.macs_int16),
            bytes_in: self.bytes_in.wrapping_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.wrapping_sub(earlier.bytes_out),
            psg_predicted: self.psg_predicted.wrapping_sub(earlier.psg_predicted),
            psg_uncertain: self.psg_uncertain.wrapping_sub(earlier.psg_uncertain),
            psg_recomputed_tiles: self
                .psg_recomputed_tiles
                .wrapping_sub(earlier.psg_recomputed_tiles),
            gemms: self.gemms.wrapping_sub(earlier.gemms),
        }
    }

    /// Field-by-field sum (saturating: a sum of deltas never wraps silently).
    pub fn accumulate(&mut self, d: &Counters) {
        self.total_cycles = self.total_cycles.saturating_add(d.total_cycles);
        self.busy_cycles = self.busy_cycles.saturating_add(d.busy_cycles);
        self.stall_in_cycles = self.stall_in_cycles.saturating_add(d.stall_in_cycles);
        self.stall_out_cycles = self.stall_out_cycles.saturating_add(d.stall_out_cycles);
        self.macs_int8 = self.macs_int8.saturating_add(d.macs_int8);
        self.macs_int16 = self.macs_int16.saturating_add(d.macs_int16);
        self.bytes_in = self.bytes_in.saturating_add(d.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(d.bytes_out);
        self.psg_predicted = self.psg_predicted.saturating_add(d.psg_predicted);
        self.psg_uncertain = self.psg_uncertain.saturating_add(d.psg_uncertain);
        self.psg_recomputed_tiles = self
            .psg_recomputed_tiles
            .saturating_add(d.psg_recomputed_tiles);
        self.gemms = self.gemms.saturating_add(d.gemms);
    }

    /// INT16-equivalent MACs: an INT8 MAC costs half an INT16 slot on the array.
    pub fn int16_equivalent_macs(&self) -> f64 {
        self.macs_int16 as f64 + 0.5 * self.macs_int8 as f64
    }

    /// Names and values in a fixed order, for CSV columns and reports.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("total_cycles", self.total_cycles),
            ("busy_cycles", self.busy_cycles),
            ("stall_in_cycles", self.stall_in_cycles),
            ("stall_out_cycles", self.stall_out_cycles),
            ("macs_int8", self.macs_int8),
            ("macs_int16", self.macs_int16),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("psg_predicted", self.psg_predicted),
            ("psg_uncertain", self.psg_uncertain),
            ("psg_recomputed_tiles", self.psg_recomputed_tiles),
            ("gemms", self.gemms),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_then_accumulate_round_trips() {
        let a = Counters {
            total_cycles: 10,
            macs_int8: 4,
            gemms: 1,
            ..Default::default()
        };
        let b = Counters {
            total_cycles: 25,
            macs_int8: 9,
            gemms: 3,
            ..Default::default()
        };
        let d = b.delta_since(&a);
        assert_eq!(d.total_cycles, 15);
        assert_eq!(d.macs_int8, 5);
        let mut acc = a;
        acc.accumulate(&d);
        assert_eq!(acc, b);
    }

    #[test]
    fn delta_wraps_like_hardware() {
        let a = Counters {
            total_cycles: u64::MAX,
            ..Default::default()
        };
        let b = Counters {
            total_cycles: 4,
            ..Default::default()
        };
        assert_eq!(b.delta_since(&a).total_cycles, 5);
    }
}
