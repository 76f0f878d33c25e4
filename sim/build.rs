//! Verilates the accelerator RTL with vlharness.
//!
//! Models (kept few and small: each costs seconds of C++ compile, and CI builds from scratch):
//! * `Ve2t_top`: the top at the test configuration R=4, C=4, DEPTH=8, RWS=16, Q=2 (a small DEPTH makes
//!   K chunking happen at K > 32 / 64, and the small reuse geometry makes the reuse path hand over
//!   to the per-tile path at K > 64 / 128 and use several B blocks at N > 8, so the suite exercises
//!   both with small matrices), with tracing compiled in
//!   (waveforms are opened on demand, e.g. by a failing test);
//! * `Ve2t_pe`: one PE pair alone (DSP multipliers), for a direct check of its arithmetic and
//!   pipeline; `Ve2t_pe_fabric`: the same with `FABRIC=1` (multipliers in LUTs, e2t_fmul).
//!
//! Environment:
//! * `E2T_RTL_DIR`: verilate another copy of rtl/ (used to check that the suite catches a broken RTL);
//! * `E2T_SIM_COVERAGE=1`: build the models with Verilator coverage (scripts/coverage.sh);
//! * `E2T_SIM_TOP="R=16,C=16,DEPTH=512,RWS=256,Q=8"`: build the top with other parameters (for the
//!   `#[ignore]`d measurement runs; use a separate `CARGO_TARGET_DIR`). Unnamed ones keep the test
//!   values. The library sees them as `e2t_sim::TOP_*`.

use std::path::PathBuf;

fn fail(e: vlharness::build::BuildError) -> ! {
    eprintln!("error: e2t-sim could not build its Verilator models:\n{e}");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-env-changed=E2T_RTL_DIR");
    println!("cargo:rerun-if-env-changed=E2T_SIM_COVERAGE");
    println!("cargo:rerun-if-env-changed=E2T_SIM_TOP");
    let mut params: Vec<(&str, String)> = [("R", 4), ("C", 4), ("DEPTH", 8), ("RWS", 16), ("Q", 2)]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    if let Ok(spec) = std::env::var("E2T_SIM_TOP") {
        for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let parsed = item
                .split_once('=')
                .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<u32>().ok()?)));
            let Some((k, v)) = parsed else {
                eprintln!("error: E2T_SIM_TOP item {item:?} is not NAME=NUMBER");
                std::process::exit(1);
            };
            let Some(slot) = params.iter_mut().find(|(name, _)| *name == k) else {
                eprintln!("error: E2T_SIM_TOP names {k:?}; known: R, C, DEPTH, RWS, Q");
                std::process::exit(1);
            };
            slot.1 = v.to_string();
        }
    }
    for (k, v) in &params {
        println!("cargo:rustc-env=E2T_TOP_{k}={v}");
    }
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let rtl = std::env::var_os("E2T_RTL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../rtl"));
    let coverage = std::env::var("E2T_SIM_COVERAGE").is_ok_and(|v| v == "1");
    // Also notice RTL files that are added later.
    println!("cargo:rerun-if-changed={}", rtl.join("src").display());

    let pkg = rtl.join("pkg/e2t_pkg.sv");
    let lint = rtl.join("lint.vlt");
    let src = |f: &str| rtl.join("src").join(f);
    let mut files = vec![];
    if lint.is_file() {
        files.push(lint.clone());
    }
    files.push(pkg.clone());
    let mut all_src: Vec<PathBuf> = std::fs::read_dir(rtl.join("src"))
        .unwrap_or_else(|e| {
            eprintln!(
                "error: e2t-sim: cannot list {}: {e}",
                rtl.join("src").display()
            );
            std::process::exit(1)
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sv"))
        .collect();
    all_src.sort();
    let mut top_files = files.clone();
    top_files.extend(all_src);

    let mut top = vlharness::build::Model::new("e2t_top").files(top_files);
    for (k, v) in &params {
        top = top.param(k, v);
    }
    top.trace(!coverage)
        .coverage(coverage)
        .build()
        .unwrap_or_else(|e| fail(e));

    let mut pe_files = files;
    pe_files.extend(["e2t_pp2.sv", "e2t_fmul.sv", "e2t_pe.sv"].map(src));
    vlharness::build::Model::new("e2t_pe")
        .files(pe_files.clone())
        .coverage(coverage)
        .build()
        .unwrap_or_else(|e| fail(e));
    vlharness::build::Model::new("e2t_pe")
        .prefix("Ve2t_pe_fabric")
        .param("FABRIC", "1'b1")
        .files(pe_files)
        .coverage(coverage)
        .build()
        .unwrap_or_else(|e| fail(e));
}
