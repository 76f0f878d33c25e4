//! Shared test plumbing: seeds (printed, overridable with `E2T_SEED`), the re-run with a waveform
//! when a test fails, golden expectations for counters and cycles.

use e2t_core::{Counters, Mode};
use e2t_numerics::cycles::{self, ArrayShape};
use e2t_sim::host::{GemmPath, HwCfg, OutFmt};
use e2t_sim::{Stalls, Tb, TbError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The array the top model was built with.
pub const HW: HwCfg = HwCfg {
    r: e2t_sim::TOP_R,
    c: e2t_sim::TOP_C,
    depth: e2t_sim::TOP_DEPTH,
    rws: e2t_sim::TOP_RWS,
    q: e2t_sim::TOP_Q,
};
/// The reuse geometry of the top model, for the cycle model.
pub const GEOM: cycles::ReuseGeom = cycles::ReuseGeom {
    words: e2t_sim::TOP_RWS as u64,
    q: e2t_sim::TOP_Q as u64,
};
const SHAPE: ArrayShape = ArrayShape {
    rows: e2t_sim::TOP_R as u32,
    cols: e2t_sim::TOP_C as u32,
};

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The test's seed: `E2T_SEED` if set, else a fixed per-test value (so CI is reproducible).
pub fn seed_for(name: &str) -> u64 {
    if let Ok(s) = std::env::var("E2T_SEED") {
        return parse_seed(&s)
            .unwrap_or_else(|| panic!("E2T_SEED={s:?} is not a decimal or 0x-hex u64"));
    }
    // FNV-1a of the name.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn wave_path(name: &str, seed: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("waves");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{name}-{seed:016x}.vcd"))
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs a testbench scenario with a seed-derived model and data RNG. On failure the scenario is
/// run again from the start with a VCD waveform (deterministic from the seed), and the test fails
/// with the first error, the seed and the waveform path. `E2T_WAVES=1` writes the waveform always.
pub fn run(
    name: &str,
    stalls: Stalls,
    f: impl Fn(&mut Tb, &mut ChaCha8Rng) -> Result<(), TbError>,
) {
    let seed = seed_for(name);
    eprintln!(
        "{name}: seed {seed:#x} (re-run with E2T_SEED={seed:#x} cargo test -p e2t-sim --test regression {name})"
    );
    let attempt = |wave: Option<&Path>| -> Result<(), String> {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut tb = Tb::new(seed, stalls, wave)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed.rotate_left(17) ^ 0x5eed);
            f(&mut tb, &mut rng)
        }));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(p) => Err(panic_text(p)),
        }
    };
    let always = std::env::var("E2T_WAVES").is_ok_and(|v| v == "1");
    let first = if always {
        attempt(Some(&wave_path(name, seed)))
    } else {
        attempt(None)
    };
    if let Err(msg) = first {
        let path = wave_path(name, seed);
        let again = if always {
            Err(msg.clone())
        } else {
            attempt(Some(&path))
        };
        let note = if again.is_err() {
            "reproduced"
        } else {
            "NOT reproduced: the failure depends on more than the seed"
        };
        panic!(
            "{name} failed with seed {seed:#x}: {msg}\nwaveform of the re-run ({note}): {}",
            path.display()
        );
    } else if always {
        eprintln!("{name}: waveform {}", wave_path(name, seed).display());
    }
}

/// Expected counters of one GEMM command on a never-stalling bus, from the cycle model
/// (`e2t_numerics::cycles`, the formula of rtl/README.md), on `path`.
pub fn gemm_expect_on(
    path: GemmPath,
    m: usize,
    k: usize,
    n: usize,
    mode: Mode,
    fmt: OutFmt,
) -> Counters {
    let fmt = match fmt {
        OutFmt::Requant(_) => cycles::OutFmt::Requant,
        OutFmt::Raw48 => cycles::OutFmt::Raw48,
        OutFmt::Sign => cycles::OutFmt::Sign,
    };
    let path = match path {
        GemmPath::PerTile => cycles::GemmPath::PerTile,
        GemmPath::Reuse => cycles::GemmPath::Reuse(GEOM),
    };
    cycles::gemm_counters_on(m as u64, k as u64, n as u64, mode, fmt, SHAPE, path)
        .expect("valid GEMM shape")
}

/// Expected counters of one PSG command given the uncertain count of every tile (command order).
pub fn psg_expect(m: usize, k: usize, n: usize, uncertain: &[u64]) -> Counters {
    cycles::psg_counters(m as u64, k as u64, n as u64, SHAPE, uncertain).expect("valid PSG shape")
}

/// Compares measured counters (a delta over one command) with the expectation: stall counts are
/// free (they depend on the bus), but `total - stall_in - stall_out` must equal the formula exactly.
pub fn check_counters(got: &Counters, want: &Counters, what: &str) {
    let mut g = *got;
    g.total_cycles = got.total_cycles - got.stall_in_cycles - got.stall_out_cycles;
    g.stall_in_cycles = 0;
    g.stall_out_cycles = 0;
    assert_eq!(
        g, *want,
        "{what}: counters (total_cycles here = total - stall_in - stall_out) differ from the golden counts / cycle formula\nraw: {got:?}"
    );
}
