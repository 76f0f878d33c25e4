//! GEMM: directed corner cases and seeded constrained-random shapes in both modes and all output
//! formats, bit-exact against `e2t_numerics::gemm_ref`; counters and the cycle formula for every
//! command; the same results under random back-pressure on every bus.

use crate::common::{HW, check_counters, gemm_expect_on, run};
use e2t_core::Mode;
use e2t_numerics::{gemm_ref, requantize};
use e2t_sim::host::{GemmPath, OutFmt};
use e2t_sim::{Stalls, Tb, TbError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What the block must return for `fmt`, from the golden accumulators.
fn expected(acc: &[i64], fmt: OutFmt) -> Vec<i64> {
    acc.iter()
        .map(|&v| match fmt {
            OutFmt::Requant(s) => i64::from(requantize(v, s).expect("shift in range")),
            OutFmt::Raw48 => v,
            OutFmt::Sign => v.signum(),
        })
        .collect()
}

/// Runs one GEMM on the block (on the path the driver picks), checks values, counters and cycles;
/// returns the values.
#[allow(clippy::too_many_arguments)]
pub fn check_gemm(
    tb: &mut Tb,
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    mode: Mode,
    fmt: OutFmt,
) -> Result<Vec<i64>, TbError> {
    check_gemm_on(tb, GemmPath::auto(k, mode, HW), a, b, m, k, n, mode, fmt)
}

/// [`check_gemm`] on an explicit path.
#[allow(clippy::too_many_arguments)]
pub fn check_gemm_on(
    tb: &mut Tb,
    path: GemmPath,
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    mode: Mode,
    fmt: OutFmt,
) -> Result<Vec<i64>, TbError> {
    let what = format!("GEMM m={m} k={k} n={n} {mode:?} {fmt:?} {path:?}");
    let before = tb.counters()?;
    let got = tb.gemm_on(path, a, b, m, k, n, mode, fmt)?;
    let after = tb.counters()?;
    let want = expected(&gemm_ref(a, b, m, k, n, mode).expect("shapes match"), fmt);
    if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: C[{}][{}] = {} but the golden model says {} (first mismatch)",
            i / n,
            i % n,
            got[i],
            want[i]
        );
    }
    check_counters(
        &after.delta_since(&before),
        &gemm_expect_on(path, m, k, n, mode, fmt),
        &what,
    );
    tb.clear_status()?;
    Ok(got)
}

fn mat(rng: &mut ChaCha8Rng, len: usize, kind: u8) -> Vec<i16> {
    (0..len)
        .map(|_| match kind {
            0 => rng.random(),
            1 => rng.random_range(-64..64),
            2 => *[i16::MIN, i16::MAX, -1, 0, 1]
                .get(rng.random_range(0..5))
                .unwrap(),
            // 8-bit tensors: low byte zero
            _ => (rng.random::<i8>() as i16) << 8,
        })
        .collect()
}

fn random_fmt(rng: &mut ChaCha8Rng) -> OutFmt {
    match rng.random_range(0..4) {
        0 => OutFmt::Raw48,
        1 => OutFmt::Sign,
        _ => OutFmt::Requant(
            *[0, 1, 7, 15, 16, 24, 47]
                .get(rng.random_range(0..7))
                .unwrap(),
        ),
    }
}

#[test]
fn identity_and_all_ones() {
    run("identity_and_all_ones", Stalls::NONE, |tb, _| {
        for mode in [Mode::Int16, Mode::Int8] {
            let one: i16 = if mode == Mode::Int8 { 0x100 } else { 1 };
            for (m, k, n) in [(4, 4, 4), (6, 5, 7)] {
                let a: Vec<i16> = (0..m * k)
                    .map(|i| (i as i16 * 37 - 400) << if mode == Mode::Int8 { 8 } else { 0 })
                    .collect();
                let eye: Vec<i16> = (0..k * n)
                    .map(|i| if i / n == i % n { one } else { 0 })
                    .collect();
                let c = check_gemm(tb, &a, &eye, m, k, n, mode, OutFmt::Raw48)?;
                for i in 0..m {
                    for j in 0..n.min(k) {
                        let v = if mode == Mode::Int8 {
                            i64::from(a[i * k + j] >> 8)
                        } else {
                            i64::from(a[i * k + j])
                        };
                        assert_eq!(c[i * n + j], v, "A x I = A at ({i},{j})");
                    }
                }
                let ones = vec![one; m * k];
                let ones_b = vec![one; k * n];
                let c = check_gemm(tb, &ones, &ones_b, m, k, n, mode, OutFmt::Raw48)?;
                assert!(c.iter().all(|&v| v == k as i64), "all-ones gives K");
            }
        }
        Ok(())
    });
}

#[test]
fn extremes_in_both_modes() {
    run("extremes_in_both_modes", Stalls::NONE, |tb, rng| {
        for mode in [Mode::Int16, Mode::Int8] {
            for vals in [
                [i16::MIN, i16::MIN],
                [i16::MAX, i16::MAX],
                [i16::MIN, i16::MAX],
                [-128 << 8, 127 << 8],
            ] {
                let (m, k, n) = (5, 9, 6);
                let a: Vec<i16> = (0..m * k).map(|_| vals[rng.random_range(0..2)]).collect();
                let b: Vec<i16> = (0..k * n).map(|_| vals[rng.random_range(0..2)]).collect();
                for fmt in [
                    OutFmt::Raw48,
                    OutFmt::Requant(0),
                    OutFmt::Requant(20),
                    OutFmt::Sign,
                ] {
                    check_gemm(tb, &a, &b, m, k, n, mode, fmt)?;
                }
            }
        }
        Ok(())
    });
}

#[test]
fn k_one_and_ragged_edges() {
    run("k_one_and_ragged_edges", Stalls::NONE, |tb, rng| {
        for mode in [Mode::Int16, Mode::Int8] {
            for (m, k, n) in [
                (1, 1, 1),
                (4, 1, 4),
                (5, 1, 3),
                (1, 7, 9),
                (9, 3, 1),
                (7, 2, 5),
                (3, 1, 33),
            ] {
                let a = mat(rng, m * k, 0);
                let b = mat(rng, k * n, 0);
                check_gemm(tb, &a, &b, m, k, n, mode, OutFmt::Raw48)?;
                check_gemm(tb, &a, &b, m, k, n, mode, OutFmt::Requant(9))?;
            }
        }
        Ok(())
    });
}

#[test]
fn k_chunks_cross_the_bank_depth() {
    // DEPTH=8: chunks of 32 k-steps (INT16) and 64 (INT8); K around and across the boundaries.
    run("k_chunks_cross_the_bank_depth", Stalls::NONE, |tb, rng| {
        for (mode, kch) in [(Mode::Int16, 4 * HW.depth), (Mode::Int8, 8 * HW.depth)] {
            for k in [kch - 1, kch, kch + 1, 2 * kch + 3] {
                let (m, n) = (5, 4);
                let a = mat(rng, m * k, 0);
                let b = mat(rng, k * n, 0);
                check_gemm(tb, &a, &b, m, k, n, mode, OutFmt::Raw48)?;
            }
        }
        Ok(())
    });
}

#[test]
fn accumulator_near_its_range_wraps_like_the_golden_model() {
    // 1x1, K = 2^17 + 2 products of (-32768)^2 = 2^30: the sum passes 2^47 - 1 and wraps.
    run(
        "accumulator_near_its_range_wraps_like_the_golden_model",
        Stalls::NONE,
        |tb, _| {
            let k = (1 << 17) + 2;
            let a = vec![i16::MIN; k];
            let b = vec![i16::MIN; k];
            tb.hang_limit = 50_000;
            let c = check_gemm(tb, &a, &b, 1, k, 1, Mode::Int16, OutFmt::Raw48)?;
            assert!(c[0] < 0, "wrapped past 2^47 - 1");
            // And one step below the wrap, requantized with saturation.
            let k = (1 << 17) - 1;
            check_gemm(
                tb,
                &a[..k],
                &b[..k],
                1,
                k,
                1,
                Mode::Int16,
                OutFmt::Requant(3),
            )?;
            Ok(())
        },
    );
}

/// Random shapes (including ragged edges and several K chunks), modes, data kinds and formats.
fn random_gemms(tb: &mut Tb, rng: &mut ChaCha8Rng, count: usize) -> Result<Vec<Vec<i64>>, TbError> {
    let mut outs = Vec::new();
    for _ in 0..count {
        let mode = if rng.random_bool(0.5) {
            Mode::Int8
        } else {
            Mode::Int16
        };
        let (m, k, n) = (
            rng.random_range(1..=10),
            rng.random_range(1..=80),
            rng.random_range(1..=10),
        );
        let kind = rng.random_range(0..4);
        let a = mat(rng, m * k, kind);
        let b = mat(rng, k * n, kind);
        let fmt = random_fmt(rng);
        // Half on the per-tile path whatever K, half on the driver's choice (reuse when K fits).
        let path = if rng.random_bool(0.5) {
            GemmPath::PerTile
        } else {
            GemmPath::auto(k, mode, HW)
        };
        outs.push(check_gemm_on(tb, path, &a, &b, m, k, n, mode, fmt)?);
    }
    Ok(outs)
}

#[test]
fn random_gemms_quiet_bus() {
    run("random_gemms_quiet_bus", Stalls::NONE, |tb, rng| {
        random_gemms(tb, rng, 40).map(drop)
    });
}

#[test]
fn random_gemms_under_back_pressure() {
    run(
        "random_gemms_under_back_pressure",
        Stalls::HEAVY,
        |tb, rng| random_gemms(tb, rng, 25).map(drop),
    );
}

#[test]
fn back_pressure_does_not_change_results() {
    // Same seed for the data, once quiet and once with heavy stalls: identical outputs.
    let name = "back_pressure_does_not_change_results";
    let seed = crate::common::seed_for(name);
    let outs = std::sync::Mutex::new(Vec::new());
    for stalls in [
        Stalls::NONE,
        Stalls::HEAVY,
        Stalls {
            in_idle_pct: 90,
            out_busy_pct: 0,
            axil_delay_pct: 0,
        },
        Stalls {
            in_idle_pct: 0,
            out_busy_pct: 90,
            axil_delay_pct: 0,
        },
    ] {
        run(name, stalls, |tb, _| {
            use rand::SeedableRng;
            let mut data = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let o = random_gemms(tb, &mut data, 6)?;
            outs.lock().unwrap().push(o);
            Ok(())
        });
    }
    let outs = outs.into_inner().unwrap();
    for o in &outs[1..] {
        assert_eq!(o, &outs[0]);
    }
}
