//! PSG: thresholds just below, at and above entries of |P| (absolute), adaptive thresholds from the
//! previous max|P|, per-tile status beats, signs against `e2t_numerics::psg_ref`, counters and cycles.

use crate::common::{HW, check_counters, psg_expect, run};
use e2t_core::Mode;
use e2t_csr as csr;
use e2t_numerics::{HwThreshold, gemm_ref, psg_ref};
use e2t_sim::host::{PsgThr, tiles};
use e2t_sim::{Stalls, Tb, TbError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Runs one PSG command and checks everything against the golden model. Returns max|P|.
fn check_psg(
    tb: &mut Tb,
    a: &[i16],
    b: &[i16],
    m: usize,
    k: usize,
    n: usize,
    thr: PsgThr,
) -> Result<u64, TbError> {
    let eff = match thr {
        PsgThr::Absolute(t) => HwThreshold::Absolute(t),
        PsgThr::Adaptive { c_q16, reference } => HwThreshold::Adaptive { c_q16, reference },
    }
    .effective()
    .expect("threshold fits");
    let what = format!("PSG m={m} k={k} n={n} {thr:?} (effective threshold {eff})");
    let before = tb.counters()?;
    let run = tb.psg(a, b, m, k, n, thr)?;
    let after = tb.counters()?;
    assert!(
        run.status.done() && !run.status.error(),
        "{what}: STATUS {}",
        run.status
    );
    let gold = psg_ref(a, b, m, k, n, eff, HW.r, HW.c).expect("shapes match");
    if let Some(i) = (0..gold.signs.len()).find(|&i| run.signs[i] != gold.signs[i]) {
        panic!(
            "{what}: sign[{}][{}] = {} but the golden model says {}",
            i / n,
            i % n,
            run.signs[i],
            gold.signs[i]
        );
    }
    // Per-tile status beats from the golden INT8 prediction.
    let p = gemm_ref(a, b, m, k, n, Mode::Int8).expect("shapes match");
    let mut uncertain = Vec::new();
    for (st, t) in run.tiles.iter().zip(tiles(m, n, HW)) {
        let entries: Vec<u64> = (t.m0..t.m0 + t.rv)
            .flat_map(|i| (t.n0..t.n0 + t.cv).map(move |j| (i, j)))
            .map(|(i, j)| p[i * n + j].unsigned_abs())
            .collect();
        let unc = entries.iter().filter(|&&v| v < eff).count() as u64;
        assert_eq!(
            st.max_abs_p,
            *entries.iter().max().unwrap(),
            "{what}: max|P| of tile {t:?}"
        );
        assert_eq!(st.uncertain, unc, "{what}: uncertain count of tile {t:?}");
        assert_eq!(st.recompute, unc > 0, "{what}: RECOMPUTE of tile {t:?}");
        uncertain.push(unc);
    }
    assert_eq!(
        uncertain.iter().filter(|&&u| u > 0).count() as u64,
        gold.counts.recomputed_tiles,
        "{what}"
    );
    let d = after.delta_since(&before);
    assert_eq!(
        (d.psg_predicted, d.psg_uncertain),
        (gold.counts.predicted, gold.counts.uncertain),
        "{what}"
    );
    check_counters(&d, &psg_expect(m, k, n, &uncertain), &what);
    tb.clear_status()?;
    Ok(gold.max_abs_p)
}

fn read_maxp(tb: &mut Tb) -> Result<u64, TbError> {
    Ok(u64::from(tb.read(csr::CSR_PSG_MAXP_LO)?) | u64::from(tb.read(csr::CSR_PSG_MAXP_HI)?) << 32)
}

fn operands(rng: &mut ChaCha8Rng, m: usize, k: usize, n: usize) -> (Vec<i16>, Vec<i16>) {
    // Mostly small values, so |P| spreads around the interesting thresholds; some extremes.
    let mut v = |len| -> Vec<i16> {
        (0..len)
            .map(|_| {
                if rng.random_bool(0.1) {
                    *[i16::MIN, i16::MAX].get(rng.random_range(0..2)).unwrap()
                } else {
                    rng.random_range(-2000..2000)
                }
            })
            .collect()
    };
    (v(m * k), v(k * n))
}

fn boundary_cases(tb: &mut Tb, rng: &mut ChaCha8Rng, rounds: usize) -> Result<(), TbError> {
    tb.write(csr::CSR_CTRL, 1 << csr::CTRL_MAXP_CLEAR_BIT)?;
    let mut running_max = 0;
    for _ in 0..rounds {
        let (m, k, n) = (
            rng.random_range(1..=9),
            rng.random_range(1..=70),
            rng.random_range(1..=9),
        );
        let (a, b) = operands(rng, m, k, n);
        let p = gemm_ref(&a, &b, m, k, n, Mode::Int8).expect("shapes");
        let v = p[rng.random_range(0..p.len())].unsigned_abs();
        // At |P| the entry is certain (strict <), one above it is uncertain.
        for thr in [0, v.saturating_sub(1), v, v + 1, 1 << 47] {
            running_max = running_max.max(check_psg(tb, &a, &b, m, k, n, PsgThr::Absolute(thr))?);
            assert_eq!(
                read_maxp(tb)?,
                running_max,
                "PSG_MAXP is the running max|P|"
            );
        }
    }
    Ok(())
}

#[test]
fn psg_absolute_threshold_boundaries() {
    run(
        "psg_absolute_threshold_boundaries",
        Stalls::NONE,
        |tb, rng| boundary_cases(tb, rng, 6),
    );
}

#[test]
fn psg_under_back_pressure() {
    run("psg_under_back_pressure", Stalls::HEAVY, |tb, rng| {
        boundary_cases(tb, rng, 3)
    });
}

#[test]
fn psg_adaptive_threshold_from_previous_max() {
    run(
        "psg_adaptive_threshold_from_previous_max",
        Stalls::NONE,
        |tb, rng| {
            let mut reference = 0;
            for step in 0..8 {
                let (m, k, n) = (
                    rng.random_range(1..=9),
                    rng.random_range(1..=40),
                    rng.random_range(1..=9),
                );
                let (a, b) = operands(rng, m, k, n);
                let c_q16: u16 = match step % 4 {
                    0 => 0,
                    1 => u16::MAX,
                    _ => rng.random(),
                };
                // Also write a decoy absolute threshold: adaptive mode must ignore it.
                tb.write(csr::CSR_PSG_THR_LO, rng.random())?;
                let thr = PsgThr::Adaptive { c_q16, reference };
                reference = check_psg(tb, &a, &b, m, k, n, thr)?;
            }
            Ok(())
        },
    );
}
