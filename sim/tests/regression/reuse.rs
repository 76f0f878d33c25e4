//! The reuse path of `OP_GEMM` (resident B block, double-buffered A panels, result shadows):
//! bit-exact results and the exact cycle recurrence on ragged shapes, several B blocks and panels,
//! odd K in INT8 and K at the path's limit; that the schedule really overlaps (no idle issue cycle
//! once the first panel is in, fewer operand bytes than per-tile streaming); stalls; and bad
//! streams / bad commands on the new path, which must never hang the block.

use crate::common::{GEOM, HW, check_counters, gemm_expect_on, run};
use crate::gemm::check_gemm_on;
use e2t_core::Mode;
use e2t_csr as csr;
use e2t_numerics::cycles;
use e2t_sim::host::{GemmPath, OutFmt, reuse_packets};
use e2t_sim::{Beat, Stalls, Tb, TbError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn codes(rng: &mut ChaCha8Rng, len: usize, mode: Mode) -> Vec<i16> {
    (0..len)
        .map(|_| match mode {
            Mode::Int16 => rng.random(),
            Mode::Int8 => (rng.random::<i8>() as i16) << 8 | rng.random_range(0..256),
        })
        .collect()
}

fn k_limit(mode: Mode) -> usize {
    HW.rws * e2t_sim::host::elems(mode)
}

/// Shapes that cross every edge of the reuse schedule with the test model (4x4, Q = 2: blocks of
/// 8 columns, panels of 4 rows, K up to 64 / 128).
fn shapes(mode: Mode) -> Vec<(usize, usize, usize)> {
    let kl = k_limit(mode);
    vec![
        (1, 1, 1),
        (4, 4, 4),
        (5, 3, 9),    // ragged panel and ragged block
        (13, 33, 17), // 4 panels (last 1 row), 3 blocks (last 1 column)
        (8, 1, 16),   // K = 1: drain-bound, the shadow hand-over decides the schedule
        (3, kl, 10),  // K at the path's limit
        (9, kl - 1, 8),
        (12, 17, 2), // one column tile only
    ]
}

#[test]
fn reuse_path_is_exact_on_ragged_shapes_and_blocks() {
    run(
        "reuse_path_is_exact_on_ragged_shapes_and_blocks",
        Stalls::NONE,
        |tb, rng| {
            for mode in [Mode::Int16, Mode::Int8] {
                for (m, k, n) in shapes(mode) {
                    assert_eq!(GemmPath::auto(k, mode, HW), GemmPath::Reuse);
                    let a = codes(rng, m * k, mode);
                    let b = codes(rng, k * n, mode);
                    for fmt in [OutFmt::Raw48, OutFmt::Requant(13), OutFmt::Sign] {
                        check_gemm_on(tb, GemmPath::Reuse, &a, &b, m, k, n, mode, fmt)?;
                    }
                }
                // One k-step more than the buffers hold: the driver falls back to per tile.
                let k = k_limit(mode) + 1;
                assert_eq!(GemmPath::auto(k, mode, HW), GemmPath::PerTile);
            }
            Ok(())
        },
    );
}

#[test]
fn reuse_path_under_random_back_pressure() {
    run(
        "reuse_path_under_random_back_pressure",
        Stalls::HEAVY,
        |tb, rng| {
            for _ in 0..12 {
                let mode = if rng.random_bool(0.5) {
                    Mode::Int8
                } else {
                    Mode::Int16
                };
                let (m, k, n) = (
                    rng.random_range(1..=14),
                    rng.random_range(1..=k_limit(mode)),
                    rng.random_range(1..=20),
                );
                let a = codes(rng, m * k, mode);
                let b = codes(rng, k * n, mode);
                let fmt = if rng.random_bool(0.5) {
                    OutFmt::Raw48
                } else {
                    OutFmt::Requant(rng.random_range(0..30))
                };
                check_gemm_on(tb, GemmPath::Reuse, &a, &b, m, k, n, mode, fmt)?;
            }
            Ok(())
        },
    );
}

#[test]
fn reuse_path_overlaps_load_compute_and_drain() {
    run(
        "reuse_path_overlaps_load_compute_and_drain",
        Stalls::NONE,
        |tb, rng| {
            // Compute-bound shape: 8 panels x 2 column tiles, K at the limit. Once the B block and
            // the first A panel are in, every cycle must issue a k-step until the last one (A
            // panels load behind compute, rows drain behind compute); then one tile drains.
            for mode in [Mode::Int16, Mode::Int8] {
                let (m, k, n) = (32, k_limit(mode), 8);
                let a = codes(rng, m * k, mode);
                let b = codes(rng, k * n, mode);
                let fmt = OutFmt::Requant(10);
                let before = tb.counters()?;
                check_gemm_on(tb, GemmPath::Reuse, &a, &b, m, k, n, mode, fmt)?;
                let d = tb.counters()?.delta_since(&before);
                let w = k.div_ceil(e2t_sim::host::elems(mode)) as u64;
                let (lb, la0) = (n as u64 * w, HW.r as u64 * w);
                let drain = HW.r as u64 * (1 + fmt.beats_per_row(HW.c) as u64);
                let want = cycles::T_START
                    + lb
                    + la0
                    + d.busy_cycles
                    + cycles::T_CAP
                    + drain
                    + cycles::T_FIN
                    + cycles::T_DONE
                    - 1;
                assert_eq!(
                    d.total_cycles, want,
                    "{mode:?}: idle issue cycles between the first and the last k-step: {d:?}"
                );
                let util = d.busy_cycles as f64 / d.total_cycles as f64;
                assert!(util > 0.8, "{mode:?}: busy / total = {util}");
                // Operand reuse: each A row once, each B column once.
                assert_eq!(d.bytes_in, 8 * (m as u64 + n as u64) * w);
                let per_tile = gemm_expect_on(GemmPath::PerTile, m, k, n, mode, fmt);
                assert!(d.bytes_in * 2 <= per_tile.bytes_in, "{d:?} vs {per_tile:?}");
                assert!(d.total_cycles < per_tile.total_cycles);
            }
            Ok(())
        },
    );
}

/// Expects an error outcome, then clears STATUS.
fn expect_error(tb: &mut Tb, code: u32, what: &str) -> Result<(), TbError> {
    let s = tb.wait_idle()?;
    assert!(s.error() && s.err_code() == code, "{what}: {s}");
    tb.clear_status()?;
    Ok(())
}

fn good_reuse_gemm(tb: &mut Tb, rng: &mut ChaCha8Rng) -> Result<(), TbError> {
    let (m, k, n) = (
        rng.random_range(1..=9),
        rng.random_range(1..=40),
        rng.random_range(1..=11),
    );
    let a = codes(rng, m * k, Mode::Int16);
    let b = codes(rng, k * n, Mode::Int16);
    check_gemm_on(
        tb,
        GemmPath::Reuse,
        &a,
        &b,
        m,
        k,
        n,
        Mode::Int16,
        OutFmt::Raw48,
    )
    .map(drop)
}

#[test]
fn reuse_path_bad_streams_abort_drain_and_recover() {
    run(
        "reuse_path_bad_streams_abort_drain_and_recover",
        Stalls::HEAVY,
        |tb, rng| {
            type Tamper = fn(&mut [Vec<Beat>]);
            // Packets of 8 x 12 x 12 on the test model: B block 0, A panel 0, B slice (block 1),
            // A panel 1, then block 1's A panels 0 and 1.
            let cases: [(&str, Tamper, u32); 4] = [
                // TLAST inside the B block packet
                (
                    "early TLAST in B",
                    |p| p[0][3].last = true,
                    csr::ERR_EARLY_TLAST,
                ),
                // the slice of block 1 ends without TLAST (panel 0's results are on their way)
                (
                    "missing TLAST on the B slice",
                    |p| p[2].last_mut().unwrap().last = false,
                    csr::ERR_MISSING_TLAST,
                ),
                // the second A panel ends without TLAST
                (
                    "missing TLAST on A panel 1",
                    |p| p[3].last_mut().unwrap().last = false,
                    csr::ERR_MISSING_TLAST,
                ),
                // TLAST inside an A panel of the second B block
                (
                    "early TLAST in block 1",
                    |p| p[4][1].last = true,
                    csr::ERR_EARLY_TLAST,
                ),
            ];
            let (m, k, n) = (8, 12, 12);
            for (what, tamper, code) in cases {
                let a = codes(rng, m * k, Mode::Int16);
                let b = codes(rng, k * n, Mode::Int16);
                let cfg = csr::cmd_cfg(csr::OP_GEMM, false, csr::OUT_RAW48, 0, false)
                    | 1 << csr::CFG_REUSE_BIT;
                let before = tb.counters()?;
                tb.push_cmd(m as u32, n as u32, k as u32, cfg)?;
                tb.push_cmd(m as u32, n as u32, k as u32, cfg)?; // flushed by the abort
                let mut p = reuse_packets(&a, &b, m, k, n, HW, Mode::Int16);
                assert_eq!(p.len(), 6, "B0, A0, slice, A1, A0, A1");
                tamper(&mut p);
                for q in &p {
                    tb.send(q.iter().copied());
                }
                tb.send(p[1].iter().copied()); // garbage after the abort: drained
                tb.run_until(&format!("{what}: operands consumed"), 20_000, |t| {
                    t.pending_in() == 0
                })?;
                tb.run_until(&format!("{what}: results handed over"), 20_000, |t| {
                    !t.m.m_axis_tvalid_o()
                })?;
                let s = tb.status()?;
                assert!(
                    s.draining() && !s.busy() && s.fifo_count() == 0,
                    "{what}: {s}"
                );
                expect_error(tb, code, what)?;
                let d = tb.counters()?.delta_since(&before);
                assert_eq!(d.gemms, 0, "{what}: an aborted command is not counted");
                let out = tb.take_out();
                assert!(
                    out.len() <= m * n,
                    "{what}: {} result beats for an aborted 8x12 raw GEMM",
                    out.len()
                );
                good_reuse_gemm(tb, rng)?;
                assert!(!tb.status()?.draining());
            }
            Ok(())
        },
    );
}

#[test]
fn soft_reset_cuts_a_running_reuse_gemm() {
    run(
        "soft_reset_cuts_a_running_reuse_gemm",
        Stalls::NONE,
        |tb, rng| {
            let (m, k, n) = (12, 20, 12);
            let a = codes(rng, m * k, Mode::Int8);
            let b = codes(rng, k * n, Mode::Int8);
            let cfg = csr::cmd_cfg(csr::OP_GEMM, true, csr::OUT_RAW48, 0, false)
                | 1 << csr::CFG_REUSE_BIT;
            tb.push_cmd(m as u32, n as u32, k as u32, cfg)?;
            for p in reuse_packets(&a, &b, m, k, n, HW, Mode::Int8) {
                tb.send(p);
            }
            // Hold the result stream: the engine freezes with a beat in its output register and
            // operands still coming; then cut it.
            tb.set_stalls(Stalls {
                in_idle_pct: 0,
                out_busy_pct: 100,
                axil_delay_pct: 0,
            });
            tb.run_until("the first result beat to be offered", 10_000, |t| {
                t.m.m_axis_tvalid_o()
            })?;
            tb.idle(20)?;
            tb.write(csr::CSR_CTRL, 1 << csr::CTRL_SOFT_RESET_BIT)?;
            tb.set_stalls(Stalls::NONE);
            tb.reset_streams();
            let s = tb.status()?;
            assert!(!s.busy() && !s.error(), "after soft reset: {s}");
            assert!(!tb.m.m_axis_tvalid_o(), "the output register is cleared");
            tb.idle(5)?;
            tb.take_out();
            good_reuse_gemm(tb, rng)?;
            Ok(())
        },
    );
}

#[test]
fn reuse_path_rejects_what_it_cannot_run() {
    run(
        "reuse_path_rejects_what_it_cannot_run",
        Stalls::NONE,
        |tb, rng| {
            let reuse = 1 << csr::CFG_REUSE_BIT;
            let cases = [
                (
                    "K above the reuse buffers (INT16)",
                    k_limit(Mode::Int16) + 1,
                    csr::cmd_cfg(csr::OP_GEMM, false, 0, 0, false) | reuse,
                    csr::ERR_DIM_TOO_LARGE,
                ),
                (
                    "K above the reuse buffers (INT8)",
                    k_limit(Mode::Int8) + 1,
                    csr::cmd_cfg(csr::OP_GEMM, true, 0, 0, false) | reuse,
                    csr::ERR_DIM_TOO_LARGE,
                ),
                (
                    "PSG on the reuse path",
                    8,
                    csr::cmd_cfg(csr::OP_PSG, false, 0, 0, false) | reuse,
                    csr::ERR_BAD_CFG,
                ),
            ];
            for (what, k, cfg, code) in cases {
                let before = tb.counters()?;
                tb.push_cmd(4, 4, k as u32, cfg)?;
                expect_error(tb, code, what)?;
                let d = tb.counters()?.delta_since(&before);
                assert_eq!(
                    (d.total_cycles, d.bytes_in, d.bytes_out, d.gemms),
                    (cycles::rejected_command_cycles(), 0, 0, 0),
                    "{what}: {d:?}"
                );
                good_reuse_gemm(tb, rng)?;
            }
            // The largest K the path takes runs (INT8, odd count of k-steps in the last word).
            let k = k_limit(Mode::Int8) - 3;
            let a = codes(rng, 2 * k, Mode::Int8);
            let b = codes(rng, k * 3, Mode::Int8);
            check_gemm_on(
                tb,
                GemmPath::Reuse,
                &a,
                &b,
                2,
                k,
                3,
                Mode::Int8,
                OutFmt::Raw48,
            )?;
            Ok(())
        },
    );
}

/// Measurement run (not part of the suite): build the model at the shape to measure, e.g.
/// `E2T_SIM_TOP="R=16,C=16,DEPTH=512,RWS=256,Q=8" CARGO_TARGET_DIR=/tmp/e2t-meas cargo test -p
/// e2t-sim --test regression measure_reuse -- --ignored --nocapture`. Prints cycles, the INT8 /
/// INT16 ratio, steady-state and end-to-end utilization of 256x256x256, 512x256x512 and 64x576x64
/// GEMMs.
#[test]
#[ignore = "measurement: slow, and meant for a model built with E2T_SIM_TOP"]
fn measure_reuse() {
    run("measure_reuse", Stalls::NONE, |tb, rng| {
        tb.hang_limit = 1_000_000;
        let hw = tb.hwcfg()?;
        let shape = cycles::ArrayShape {
            rows: hw.r as u32,
            cols: hw.c as u32,
        };
        let geom = cycles::ReuseGeom {
            words: hw.rws as u64,
            q: hw.q as u64,
        };
        assert_eq!(geom, GEOM, "model parameters and TOP_* agree");
        for (m, k, n) in [(256, 256, 256), (512, 256, 512), (64, 576, 64)] {
            let mut totals = Vec::new();
            for mode in [Mode::Int16, Mode::Int8] {
                let a = codes(rng, m * k, mode);
                let b = codes(rng, k * n, mode);
                let fmt = OutFmt::Requant(12);
                let path = GemmPath::auto(k, mode, hw);
                let before = tb.counters()?;
                check_gemm_on(tb, path, &a, &b, m, k, n, mode, fmt)?;
                let d = tb.counters()?.delta_since(&before);
                let model = cycles::gemm_counters_on(
                    m as u64,
                    k as u64,
                    n as u64,
                    mode,
                    cycles::OutFmt::Requant,
                    shape,
                    cycles::GemmPath::auto(k as u64, mode, geom),
                )
                .expect("valid shape");
                check_counters(&d, &model, "measurement");
                let slots = (hw.r * hw.c) as f64;
                let eq = d.int16_equivalent_macs();
                // Steady state: the compute window of the schedule (first to last k-step issue),
                // whose total the RTL has just matched.
                let window = match path {
                    GemmPath::Reuse => cycles::reuse_schedule_of(
                        m as u64,
                        k as u64,
                        n as u64,
                        mode,
                        cycles::OutFmt::Requant,
                        shape,
                        geom,
                    )
                    .map(|s| 100.0 * s.window_utilization(eq, shape))
                    .unwrap_or(f64::NAN),
                    GemmPath::PerTile => f64::NAN,
                };
                eprintln!(
                    "{}x{} {m}x{k}x{n} {mode:?} {path:?}: total {} busy {} bytes_in {} | busy util {:.1}% | steady-state (compute window) {:.1}% | end-to-end {:.1}%",
                    hw.r,
                    hw.c,
                    d.total_cycles,
                    d.busy_cycles,
                    d.bytes_in,
                    100.0 * eq / (d.busy_cycles as f64 * slots),
                    window,
                    100.0 * eq / (d.total_cycles as f64 * slots),
                );
                totals.push(d.total_cycles);
            }
            eprintln!(
                "{m}x{k}x{n}: INT8 / INT16 = {:.3}",
                totals[1] as f64 / totals[0] as f64
            );
        }
        Ok(())
    });
}
