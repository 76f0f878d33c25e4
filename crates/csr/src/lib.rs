//! The accelerator CSR map, generated at build time from `rtl/pkg/e2t_pkg.sv` (the single source of
//! truth). Every `localparam int unsigned NAME = VALUE;` of that package becomes `pub const NAME: u32`
//! in [`consts`] (re-exported at the crate root). Invariants, checked by the tests: the generated
//! constants equal a fresh parse of the package; CSR offsets are word-aligned, distinct and outside the
//! counter window; the counter window has one 64-bit slot per field of [`e2t_core::Counters`].
//! Meanings of the registers: `rtl/README.md`.

pub mod parse;

/// The generated constants.
#[allow(clippy::unreadable_literal)]
pub mod consts {
    include!(concat!(env!("OUT_DIR"), "/csr_consts.rs"));
}
pub use consts::*;

use e2t_core::Counters;

/// Byte offset of the low word of counter `index` (order of [`Counters::fields`]).
pub const fn counter_lo(index: u32) -> u32 {
    CSR_CNT_BASE + CSR_CNT_STRIDE * index
}

/// Byte offset of the high word of counter `index`.
pub const fn counter_hi(index: u32) -> u32 {
    counter_lo(index) + 4
}

/// Builds [`Counters`] from the 2 x `NUM_COUNTERS` words read at `CSR_CNT_BASE..` (LO, HI per counter).
pub fn counters_from_words(words: &[u32; 2 * NUM_COUNTERS as usize]) -> Counters {
    let c =
        |i: u32| u64::from(words[2 * i as usize]) | (u64::from(words[2 * i as usize + 1]) << 32);
    Counters {
        total_cycles: c(CNT_TOTAL_CYCLES),
        busy_cycles: c(CNT_BUSY_CYCLES),
        stall_in_cycles: c(CNT_STALL_IN),
        stall_out_cycles: c(CNT_STALL_OUT),
        macs_int8: c(CNT_MACS_INT8),
        macs_int16: c(CNT_MACS_INT16),
        bytes_in: c(CNT_BYTES_IN),
        bytes_out: c(CNT_BYTES_OUT),
        psg_predicted: c(CNT_PSG_PREDICTED),
        psg_uncertain: c(CNT_PSG_UNCERTAIN),
        psg_recomputed_tiles: c(CNT_PSG_RECOMPUTED),
        gemms: c(CNT_GEMMS),
    }
}

/// Packs the `CMD_CFG` register from its fields (values are masked to their field widths).
pub fn cmd_cfg(opcode: u32, int8: bool, out_fmt: u32, shift: u32, psg_adaptive: bool) -> u32 {
    let mask = |w: u32| (1u32 << w) - 1;
    ((opcode & mask(CFG_OPCODE_W)) << CFG_OPCODE_LSB)
        | (u32::from(int8) << CFG_MODE_BIT)
        | ((out_fmt & mask(CFG_OUT_FMT_W)) << CFG_OUT_FMT_LSB)
        | ((shift & mask(CFG_SHIFT_W)) << CFG_SHIFT_LSB)
        | (u32::from(psg_adaptive) << CFG_ADAPTIVE_BIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn generated_constants_match_a_fresh_parse_of_the_package() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rtl/pkg/e2t_pkg.sv");
        let src = std::fs::read_to_string(path).expect("rtl/pkg/e2t_pkg.sv is readable");
        let parsed = parse::parse_package(&src).expect("package parses");
        let fresh: Vec<(String, u64)> = parsed.into_iter().map(|p| (p.name, p.value)).collect();
        let generated: Vec<(String, u64)> = ALL
            .iter()
            .map(|(n, v)| (n.to_string(), u64::from(*v)))
            .collect();
        assert_eq!(
            fresh, generated,
            "crate was built from a different e2t_pkg.sv; rebuild"
        );
    }

    #[test]
    fn known_values() {
        assert_eq!(CSR_ID, 0x000);
        assert_eq!(CSR_STATUS, 0x00C);
        assert_eq!(CSR_CMD_PUSH, 0x030);
        assert_eq!(CSR_CNT_BASE, 0x100);
        assert_eq!(ID_VALUE, 0xE2A0_0001);
        assert_eq!((OP_GEMM, OP_PSG), (1, 2));
        assert_eq!(ERR_NONE, 0);
        assert_eq!(ERR_FIFO_OVERFLOW, 7);
        assert_eq!(ACC_W, 48);
        assert_eq!(AXIS_DATA_W, 64);
        assert_eq!(counter_hi(CNT_GEMMS), 0x15C);
    }

    #[test]
    fn register_offsets_are_aligned_distinct_and_clear_of_the_counter_window() {
        let cnt_end = counter_lo(NUM_COUNTERS);
        let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
        for (name, off) in ALL
            .iter()
            .filter(|(n, _)| n.starts_with("CSR_") && *n != "CSR_CNT_STRIDE")
        {
            assert_eq!(off % 4, 0, "{name} is not word-aligned");
            assert!(
                *off < (1 << AXIL_ADDR_W),
                "{name} is outside the CSR window"
            );
            if *name != "CSR_CNT_BASE" {
                assert!(
                    !(CSR_CNT_BASE..cnt_end).contains(off),
                    "{name} overlaps the counters"
                );
            }
            if let Some(prev) = seen.insert(*off, name) {
                panic!("{name} and {prev} share offset {off:#x}");
            }
        }
        assert!(cnt_end <= 1 << AXIL_ADDR_W);
    }

    #[test]
    fn counter_indices_follow_the_counters_struct() {
        let fields = Counters::default().fields();
        assert_eq!(fields.len(), NUM_COUNTERS as usize);
        let idx = [
            ("total_cycles", CNT_TOTAL_CYCLES),
            ("busy_cycles", CNT_BUSY_CYCLES),
            ("stall_in_cycles", CNT_STALL_IN),
            ("stall_out_cycles", CNT_STALL_OUT),
            ("macs_int8", CNT_MACS_INT8),
            ("macs_int16", CNT_MACS_INT16),
            ("bytes_in", CNT_BYTES_IN),
            ("bytes_out", CNT_BYTES_OUT),
            ("psg_predicted", CNT_PSG_PREDICTED),
            ("psg_uncertain", CNT_PSG_UNCERTAIN),
            ("psg_recomputed_tiles", CNT_PSG_RECOMPUTED),
            ("gemms", CNT_GEMMS),
        ];
        for (name, i) in idx {
            assert_eq!(fields[i as usize].0, name);
        }
        // decode: counter i holds i + 1 in the low word and i in the high word
        let mut words = [0u32; 2 * NUM_COUNTERS as usize];
        for i in 0..NUM_COUNTERS as usize {
            words[2 * i] = i as u32 + 1;
            words[2 * i + 1] = i as u32;
        }
        let c = counters_from_words(&words);
        for (i, (_, v)) in c.fields().iter().enumerate() {
            assert_eq!(*v, ((i as u64) << 32) | (i as u64 + 1));
        }
    }

    #[test]
    fn error_codes_and_fields_are_distinct() {
        let errs: Vec<u32> = ALL
            .iter()
            .filter(|(n, _)| n.starts_with("ERR_"))
            .map(|(_, v)| *v)
            .collect();
        let mut sorted = errs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), errs.len(), "duplicate error code");
        assert!(errs.iter().all(|e| *e < (1 << STATUS_ERR_CODE_W)));
        assert_eq!(
            cmd_cfg(OP_PSG, true, OUT_SIGN, 47, true),
            2 | (1 << 4) | (2 << 5) | (47 << 8) | (1 << 16)
        );
        // the command word layout is contiguous: THR, CFG, K, N, M
        assert_eq!(CMD_CFG_LSB, CMD_THR_LSB + ACC_W);
        assert_eq!(CMD_K_LSB, CMD_CFG_LSB + 32);
        assert_eq!(CMD_W, CMD_M_LSB + 32);
    }

    #[test]
    fn cycle_model_constants_match_the_package() {
        use e2t_numerics::cycles;
        assert_eq!(u64::from(T_START), cycles::T_START);
        assert_eq!(u64::from(T_DONE), cycles::T_DONE);
        assert_eq!(u64::from(T_FLUSH), cycles::T_FLUSH);
        assert_eq!(u64::from(T_ROW), cycles::T_ROW);
        assert_eq!(u64::from(T_CAP), cycles::T_CAP);
        assert_eq!(u64::from(T_FIN), cycles::T_FIN);
        // The board's reuse geometry is the top's default RWS / Q: the soft model's counters
        // follow the schedule of that geometry.
        let top = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rtl/src/e2t_top.sv"),
        )
        .expect("rtl/src/e2t_top.sv is readable");
        let default_of = |name: &str| -> u64 {
            let pat = format!("parameter int unsigned {name}");
            let line = top
                .lines()
                .find(|l| l.contains(&pat))
                .expect("parameter declared");
            let v = line.split('=').nth(1).expect("has a default");
            let digits: String = v.trim().chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("decimal default")
        };
        assert_eq!(cycles::ReuseGeom::BOARD.words, default_of("RWS"));
        assert_eq!(cycles::ReuseGeom::BOARD.q, default_of("Q"));
        assert_eq!(u64::from(DIM_MN_MAX), cycles::DIM_MN_MAX);
        assert_eq!(u64::from(DIM_K_MAX), cycles::DIM_K_MAX);
        assert_eq!(
            u64::from(ELEMS_INT16),
            cycles::elems_per_beat(e2t_core::Mode::Int16)
        );
        assert_eq!(
            u64::from(ELEMS_INT8),
            cycles::elems_per_beat(e2t_core::Mode::Int8)
        );
    }
}
