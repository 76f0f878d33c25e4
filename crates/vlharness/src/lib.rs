//! A Verilator 5 harness for Rust: build-time model generation and a small runtime.
//!
//! Two halves:
//! * **Build time** (feature `build`, used from a consumer's `build.rs`): [`build::Model`] runs
//!   `verilator --cc` on the given RTL, reads the port list from the generated `V<top>.h` (and the
//!   signedness of each port from Verilator's XML netlist), writes an `extern "C"` shim plus a typed
//!   Rust wrapper `OUT_DIR/<prefix>.rs`, and compiles the model and the shim with the `cc` crate.
//!   A model is re-verilated only when a content hash of its inputs changes.
//! * **Run time** (always): the [`Verilated`] trait every generated wrapper implements, port metadata
//!   and errors. The Verilator runtime library (`verilated.cpp` and friends) is compiled once, by this
//!   crate's own build script, and linked into every consumer, so several models share it.
//!
//! Invariants of a generated wrapper:
//! * each model owns a private `VerilatedContext`, so models on different threads are independent
//!   (tests run in parallel); the wrapper is `!Send` because Verilator requires a model to be
//!   evaluated on the thread that created it;
//! * setters clear the bits above the port width (Verilator assumes they are clean); signed ports
//!   read back sign-extended; ports wider than 64 bits are arrays of u32 words, least significant
//!   first;
//! * `$fatal`, `$stop`, failed assertions and non-converging logic come back as
//!   [`SimError::Fatal`] from [`Verilated::try_eval`] (the runtime's `vl_fatal`/`vl_stop` throw a C++
//!   exception that the shim catches) instead of aborting the whole test process.
//!
//! Usage, in the consumer's `build.rs` (with `vlharness = { features = ["build"] }` as a build
//! dependency and plain `vlharness` as a normal dependency):
//! ```ignore
//! vlharness::build::Model::new("counter").file("rtl/counter.sv").param("W", "8").trace(true).build()?;
//! ```
//! and in the crate: `include!(concat!(env!("OUT_DIR"), "/Vcounter.rs"));`.

#[cfg(feature = "build")]
pub mod build;
pub mod codegen;

use std::path::{Path, PathBuf};

/// Direction of a top-level port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDir {
    In,
    Out,
    InOut,
}

/// Static description of one top-level port of a generated model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub name: &'static str,
    pub dir: PortDir,
    pub width: u32,
    pub signed: bool,
}

/// Errors a running model reports.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The design called `$fatal`/`$stop`, an assertion failed, or Verilator's scheduler gave up.
    #[error("simulation fatal error: {0}")]
    Fatal(String),
    #[error(
        "model `{0}` was built without tracing: build it with `.trace(true)` to write waveforms"
    )]
    TraceNotBuilt(&'static str),
    #[error("cannot write waveform {path}: {reason}")]
    Trace { path: PathBuf, reason: String },
    #[error("model `{0}` was built without coverage: build it with `.coverage(true)`")]
    CoverageNotBuilt(&'static str),
    #[error("cannot write coverage data {path}: {reason}")]
    Coverage { path: PathBuf, reason: String },
    #[error("path {0} cannot be passed to Verilator (it contains a NUL byte or is not UTF-8)")]
    BadPath(PathBuf),
}

/// What every generated model wrapper offers besides its port accessors.
pub trait Verilated {
    /// Name of the SystemVerilog top module.
    fn top_name(&self) -> &'static str;
    /// Every top-level port.
    fn ports(&self) -> &'static [PortInfo];
    /// Evaluates the model after inputs changed; a design-level fatal error comes back as `Err`.
    fn try_eval(&mut self) -> Result<(), SimError>;
    /// Like [`Verilated::try_eval`] but panics with the design's message (for tests).
    fn eval(&mut self) {
        if let Err(e) = self.try_eval() {
            panic!("{} ({}): {e}", self.top_name(), self.time());
        }
    }
    /// Simulation time of the model's context (what `$time` returns).
    fn time(&self) -> u64;
    fn set_time(&mut self, t: u64);
    /// Whether the design executed `$finish` (or a fatal error).
    fn got_finish(&self) -> bool;
    /// Whether the model was built with `.trace(true)`.
    fn trace_built(&self) -> bool;
    /// Whether a waveform file is open.
    fn is_tracing(&self) -> bool;
    /// Starts writing a VCD file (closing any open one). Errors if the model was built without
    /// tracing or the file cannot be created.
    fn trace_open(&mut self, path: &Path) -> Result<(), SimError>;
    /// Records the current values at time `t` (no-op when no waveform is open).
    fn trace_dump(&mut self, t: u64);
    fn trace_flush(&mut self);
    /// Closes the waveform file (no-op when none is open). Dropping the model also closes it.
    fn trace_close(&mut self);
    /// Whether the model was built with `.coverage(true)`.
    fn coverage_built(&self) -> bool;
    /// Writes the context's coverage counts (a `verilator_coverage` .dat file).
    fn write_coverage(&mut self, path: &Path) -> Result<(), SimError>;
}

/// Helpers the generated code calls; not a stable API.
#[doc(hidden)]
pub mod rt {
    use super::SimError;
    use std::ffi::{CStr, CString, c_char};
    use std::path::Path;

    /// Copies a C string owned by the shim.
    ///
    /// # Safety
    /// `p` must be null or point to a NUL-terminated string valid for the duration of the call.
    pub unsafe fn c_string(p: *const c_char) -> String {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: guaranteed by the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// A path as a C string for Verilator (which takes `const char*`).
    pub fn path_cstring(path: &Path) -> Result<CString, SimError> {
        let s = path
            .to_str()
            .ok_or_else(|| SimError::BadPath(path.to_path_buf()))?;
        CString::new(s).map_err(|_| SimError::BadPath(path.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_with_nul_is_rejected() {
        let p = Path::new("a\0b.vcd");
        assert!(matches!(rt::path_cstring(p), Err(SimError::BadPath(_))));
        assert_eq!(
            rt::path_cstring(Path::new("/tmp/x.vcd"))
                .unwrap()
                .to_str()
                .unwrap(),
            "/tmp/x.vcd"
        );
    }

    #[test]
    fn null_c_string_is_empty() {
        // SAFETY: null is allowed.
        assert_eq!(unsafe { rt::c_string(std::ptr::null()) }, "");
    }
}
