//! vlharness's own build script: compiles the Verilator runtime once (shared by every model a
//! consumer builds) and the counter fixture used by this crate's tests.

#[allow(dead_code)]
#[path = "src/codegen.rs"]
mod codegen;

#[allow(dead_code)]
#[path = "src/build.rs"]
mod build;

use std::path::PathBuf;

fn fail(e: build::BuildError) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1);
}

fn main() {
    for f in [
        "build.rs",
        "src/build.rs",
        "src/codegen.rs",
        "cpp",
        "tests/rtl",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    // The copy of vlharness compiled as a build dependency (feature `build`) only generates code;
    // the runtime belongs to the copy that is linked into the consumer.
    if std::env::var_os("CARGO_FEATURE_BUILD").is_some() {
        return;
    }
    let vl = build::Verilator::find().unwrap_or_else(|e| fail(e));
    println!("cargo:bin={}", vl.bin.display());
    println!("cargo:root={}", vl.root.display());
    println!("cargo:version={}", vl.version_text);

    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    build::compile_runtime(
        &vl,
        "vlharness_rt",
        &[manifest.join("cpp/vlharness_rt.cpp")],
        &[("VL_USER_FATAL", "1"), ("VL_USER_STOP", "1")],
    )
    .unwrap_or_else(|e| fail(e));

    // Test fixture: small, and skipped by the input hash after the first build.
    let rtl = manifest.join("tests/rtl");
    build::Model::new("counter")
        .file(rtl.join("counter.sv"))
        .include(&rtl)
        .param("W", "12")
        .define("COUNTER_STEP", Some("3"))
        .trace(true)
        .coverage(true)
        .opt_level(0)
        .build()
        .unwrap_or_else(|e| fail(e));
}
