//! Sweeps, confidence intervals, SVG plots and Markdown reports from run folders.
//!
//! - [`stats`]: means with 95% Student's t intervals; savings and accuracy differences against a
//!   baseline, paired by seed when possible (delta method / Welch otherwise).
//! - [`sweep`]: a sweep spec (methods x seeds x hyper-parameter lists) expanded into runs with
//!   deterministic folder names; a resumable plan (a run folder with a complete `summary.json` is
//!   done and never redone); `sweep.csv` and `summary.csv`. Running the runs is the caller's job:
//!   [`sweep::run_in_process`] takes a closure, [`sweep::RunSpec::args`] builds the command line for
//!   a separate process.
//! - [`runs`]: tolerant readers of `epochs.csv`, `diagnostics.csv`, `summary.json`, by column name.
//! - [`plots`] and [`write_report`]: SVG plots (plotters, SVG backend only) and a Markdown report.
//!
//! Invariants: every file this crate writes is written to a temporary file in the same folder and
//! renamed into place, so a crash never leaves a half-written table or report; bad input files give
//! an error naming the file and the key or column, never a panic.

pub mod plots;
pub mod report;
pub mod runs;
pub mod stats;
pub mod sweep;

pub use report::{ReportOptions, ReportSummary, write_report, write_report_with};
pub use runs::{RunData, find_runs, read_run};
pub use stats::{Estimate, mean_ci, t_quantile};
pub use sweep::{
    Plan, PlannedRun, RunSpec, SweepOutcome, SweepSpec, SweepTables, run_in_process,
    write_sweep_tables,
};

use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{file}: missing required column '{column}'")]
    MissingColumn { file: String, column: String },
    #[error("{file}: missing or invalid '{key}' (expected {expected})")]
    MissingKey {
        file: String,
        key: String,
        expected: String,
    },
    #[error("sweep spec {file}: '{key}' {message}")]
    Spec {
        file: String,
        key: String,
        message: String,
    },
    #[error(
        "{0}: no run folders (a run folder holds summary.json; a sweep folder holds run folders)"
    )]
    NoRuns(String),
    #[error("plot {file}: {message}")]
    Plot { file: String, message: String },
}

/// Write `bytes` to `path` through a temporary file in the same folder and an atomic rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let io = |e: std::io::Error| ReportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::Path;

    /// A finished run folder as the host writes it: `epochs` epochs whose test accuracy rises to
    /// `final_acc`, `energy_per_epoch` J each split over the classes, PSG and SLU diagnostics.
    pub fn write_fake_run(
        dir: &Path,
        method: &str,
        seed: u64,
        final_acc: f64,
        energy_per_epoch: f64,
        epochs: u32,
    ) {
        std::fs::create_dir_all(dir).unwrap();
        let mut csv = String::from(
            "epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds,images_per_s,total_cycles,macs_int8,macs_int16,\
             energy_j,energy_int8_j,energy_int16_j,energy_onchip_j,energy_offchip_j,energy_static_j,energy_cum_j\n",
        );
        let mut diag = String::from("epoch,kind,name,value\n");
        for e in 0..epochs {
            let acc = final_acc - 0.05 * (epochs - 1 - e) as f64;
            let x = energy_per_epoch;
            csv.push_str(&format!(
                "{e},0.1,{},{acc},{},{acc},2.5,1000,1000,10,20,{x},{},{},{},{},{},{}\n",
                1.0 / (e + 1) as f64,
                1.1 / (e + 1) as f64,
                0.1 * x,
                0.3 * x,
                0.1 * x,
                0.4 * x,
                0.1 * x,
                x * (e + 1) as f64
            ));
            for l in ["conv1", "layer1.0"] {
                diag.push_str(&format!(
                    "{e},psg_uncertain_fraction,{l},{}\n",
                    0.3 / (e + 1) as f64
                ));
            }
            diag.push_str(&format!(
                "{e},slu_executed_fraction,block1,{}\n",
                0.5 + 0.01 * seed as f64
            ));
            for (i, phase) in ["forward", "backward_data", "weight_gradient"]
                .into_iter()
                .enumerate()
            {
                let gb = (i + 1) as f64 * 1e9;
                diag.push_str(&format!("{e},phase_bytes_in,{phase},{}\n", 0.75 * gb));
                diag.push_str(&format!("{e},phase_bytes_out,{phase},{}\n", 0.25 * gb));
            }
        }
        std::fs::write(dir.join("epochs.csv"), csv).unwrap();
        std::fs::write(dir.join("diagnostics.csv"), diag).unwrap();
        std::fs::write(
            dir.join("summary.json"),
            format!(r#"{{"method":"{method}","seed":{seed},"final_test_acc":{final_acc},"epochs":{epochs}}}"#),
        )
        .unwrap();
    }
}
