//! The PE pair alone (two PEs sharing the row operand), in both builds: `Ve2t_pe` (one DSP48 per
//! PE; in INT8 mode one multiplier computes two packed 8x8 products) and `Ve2t_pe_fabric`
//! (`FABRIC=1`, Booth multipliers in LUTs, e2t_fmul). Random operand streams in both modes against
//! the golden MAC, including the 2-cycle pipeline (product register, then accumulator), `clr_i`
//! restarts and idle cycles; the 48-bit wrap; and every pair of signed bytes in both modes (each
//! byte value is a Booth digit boundary case somewhere, in particular the digit that starts the
//! high byte in INT8).

use crate::common::seed_for;
use e2t_core::Mode;
use e2t_numerics::{mac, wrap48};
use e2t_sim::{Ve2t_pe, Ve2t_pe_fabric};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vlharness::Verilated;

fn code(rng: &mut ChaCha8Rng) -> i16 {
    match rng.random_range(0..4) {
        0 => *[i16::MIN, i16::MAX, -1, 0, 1, -128 * 256, 127 * 256]
            .get(rng.random_range(0..7))
            .unwrap(),
        1 => rng.random_range(-300..300),
        _ => rng.random(),
    }
}

/// Golden accumulator update of one PE for one step (in INT8 a PE word carries two signed bytes
/// {k+1, k}; the golden model takes the high byte of a code, so each byte goes in as a high byte).
fn golden(acc: i64, a: i16, b: i16, mode: Mode) -> i64 {
    match mode {
        Mode::Int16 => mac(acc, a, b, Mode::Int16),
        Mode::Int8 => {
            let lo = |x: i16| (x as u8 as i8 as i16) << 8;
            let hi = |x: i16| (x >> 8) << 8;
            mac(mac(acc, lo(a), lo(b), Mode::Int8), hi(a), hi(b), Mode::Int8)
        }
    }
}

// Both models have the same ports and so the same generated methods; the tests are written once.
macro_rules! pe_tests {
    ($modname:ident, $model:ty, $tag:literal) => {
        mod $modname {
            use super::*;

            fn clock(pe: &mut $model) {
                pe.set_clk_i(true);
                pe.eval();
                pe.set_clk_i(false);
                pe.eval();
            }

            fn reset() -> $model {
                let mut pe = <$model>::new();
                pe.set_rst_ni(false);
                clock(&mut pe);
                clock(&mut pe);
                pe.set_rst_ni(true);
                pe
            }

            /// Two idle cycles drain the pipeline; then the live accumulators.
            fn drain(pe: &mut $model) -> [i64; 2] {
                pe.set_valid_i(false);
                pe.set_clr_i(false);
                clock(pe);
                clock(pe);
                [wrap48(pe.acc0_o() as i64), wrap48(pe.acc1_o() as i64)]
            }

            #[test]
            fn pe_matches_golden_mac_in_both_modes() {
                let seed = seed_for(concat!("pe_matches_golden_mac_in_both_modes", $tag));
                eprintln!("seed {seed:#x}");
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut pe = reset();
                for pass in 0..400 {
                    let int8 = rng.random_bool(0.5);
                    let mode = if int8 { Mode::Int8 } else { Mode::Int16 };
                    let steps = rng.random_range(1..40);
                    let mut acc = [0i64; 2];
                    let mut first = true;
                    pe.set_int8_i(int8);
                    for _ in 0..steps {
                        // Random idle cycles inside a pass must not change the accumulators.
                        if rng.random_bool(0.2) {
                            pe.set_valid_i(false);
                            pe.set_clr_i(false);
                            clock(&mut pe);
                        }
                        let (a, b0, b1) = (code(&mut rng), code(&mut rng), code(&mut rng));
                        pe.set_valid_i(true);
                        pe.set_clr_i(first);
                        pe.set_a_i(a as u16);
                        pe.set_b0_i(b0 as u16);
                        pe.set_b1_i(b1 as u16);
                        clock(&mut pe);
                        first = false;
                        for (acc, b) in acc.iter_mut().zip([b0, b1]) {
                            *acc = golden(*acc, a, b, mode);
                        }
                    }
                    let got = drain(&mut pe);
                    assert_eq!(
                        got, acc,
                        "pass {pass} ({mode:?}, {steps} steps), seed {seed:#x}"
                    );
                }
            }

            #[test]
            fn pe_accumulator_wraps_at_48_bits() {
                let mut pe = reset();
                pe.set_int8_i(false);
                // (-32768)^2 = 2^30 per step: 2^17 steps reach 2^47, one past the largest
                // positive value.
                let mut acc = 0i64;
                let mut acc1 = 0i64;
                for i in 0..(1u32 << 17) + 3 {
                    pe.set_valid_i(true);
                    pe.set_clr_i(i == 0);
                    pe.set_a_i(0x8000);
                    pe.set_b0_i(0x8000);
                    pe.set_b1_i(0x7fff);
                    clock(&mut pe);
                    acc = mac(acc, i16::MIN, i16::MIN, Mode::Int16);
                    acc1 = mac(acc1, i16::MIN, i16::MAX, Mode::Int16);
                }
                let got = drain(&mut pe);
                assert_eq!(got, [acc, acc1]);
                assert!(acc < 0, "the golden accumulator wrapped");
            }

            /// Every (a byte, b byte) pair of signed bytes, in the low and the high byte lanes at
            /// once (PE 0: a.lo x b0.lo and a.hi x b0.hi both sweep; PE 1 sees random bytes), one
            /// pass per value of a's bytes so that an error cannot hide in a long sum. INT16
            /// alongside: the same words as 16-bit codes.
            #[test]
            fn pe_every_byte_pair() {
                let seed = seed_for(concat!("pe_every_byte_pair", $tag));
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut pe = reset();
                for mode in [Mode::Int8, Mode::Int16] {
                    pe.set_int8_i(mode == Mode::Int8);
                    for x in 0..256u16 {
                        // a = {x, x}: both lanes of PE 0 multiply x by every byte y below.
                        let a = (x << 8 | x) as i16;
                        let mut acc = [0i64; 2];
                        for y in 0..256u16 {
                            let b0 = (y << 8 | (255 - y)) as i16;
                            let b1: i16 = rng.random();
                            pe.set_valid_i(true);
                            pe.set_clr_i(y == 0);
                            pe.set_a_i(a as u16);
                            pe.set_b0_i(b0 as u16);
                            pe.set_b1_i(b1 as u16);
                            clock(&mut pe);
                            acc[0] = golden(acc[0], a, b0, mode);
                            acc[1] = golden(acc[1], a, b1, mode);
                        }
                        let got = drain(&mut pe);
                        assert_eq!(got, acc, "{mode:?}, a byte {x:#04x}, seed {seed:#x}");
                    }
                }
            }
        }
    };
}

pe_tests!(dsp, Ve2t_pe, "");
pe_tests!(fabric, Ve2t_pe_fabric, "_fabric");
