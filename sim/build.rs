//! Verilates the accelerator RTL with vlharness.
//!
//! Models (kept few and small: each costs seconds of C++ compile, and CI builds from scratch):
//! * `Ve2t_top`: the top at the test configuration R=4, C=4, DEPTH=8 (a small DEPTH makes K chunking
//!   happen at K > 32 / 64, so the suite exercises it with small matrices), with tracing compiled in
//!   (waveforms are opened on demand, e.g. by a failing test);
//! * `Ve2t_pe`: one PE alone, for a direct check of its arithmetic and pipeline.
//!
//! Environment:
//! * `E2T_RTL_DIR`: verilate another copy of rtl/ (used to check that the suite catches a broken RTL);
//! * `E2T_SIM_COVERAGE=1`: build the models with Verilator coverage (scripts/coverage.sh).

use std::path::PathBuf;

fn fail(e: vlharness::build::BuildError) -> ! {
    eprintln!("error: e2t-sim could not build its Verilator models:\n{e}");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-env-changed=E2T_RTL_DIR");
    println!("cargo:rerun-if-env-changed=E2T_SIM_COVERAGE");
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

    vlharness::build::Model::new("e2t_top")
        .files(top_files)
        .param("R", "4")
        .param("C", "4")
        .param("DEPTH", "8")
        .trace(!coverage)
        .coverage(coverage)
        .build()
        .unwrap_or_else(|e| fail(e));

    let mut pe_files = files;
    pe_files.push(src("e2t_pe.sv"));
    vlharness::build::Model::new("e2t_pe")
        .files(pe_files)
        .coverage(coverage)
        .build()
        .unwrap_or_else(|e| fail(e));
}
