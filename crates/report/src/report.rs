//! The Markdown report: tables of runs and groups with 95% intervals, and the SVG plots.

use crate::plots::{self, PlotResult, acc_scale};
use crate::runs::find_runs;
use crate::stats::{Comparison, Estimate};
use crate::sweep::{GroupSummary, SWEEP_TOML, SweepSpec, summarize};
use crate::{ReportError, write_atomic};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const REPORT_MD: &str = "report.md";

type PlotFn<'a> = Box<dyn Fn(&Path) -> Result<PlotResult, ReportError> + 'a>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportOptions {
    /// Method to compare against. Default: the baseline of a `sweep.toml` in the first folder that
    /// has one, else a method named `baseline` when present.
    pub baseline: Option<String>,
    pub title: Option<String>,
}

/// What [`write_report`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportSummary {
    pub markdown: PathBuf,
    pub plots: Vec<PlotResult>,
    pub runs: usize,
    pub groups: Vec<GroupSummary>,
    pub baseline: Option<String>,
    /// Skipped folders and plots, in words.
    pub notes: Vec<String>,
}

/// Read every run under `dirs` (run folders or sweep folders) and write the plots and `report.md`
/// into `out`.
pub fn write_report(dirs: &[PathBuf], out: &Path) -> Result<ReportSummary, ReportError> {
    write_report_with(dirs, out, &ReportOptions::default())
}

/// Four significant digits, switching to scientific notation for very large or small magnitudes.
pub fn sig(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-2..1e5).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.3e}")
    }
}

/// `mean ± half-width` (scaled), both to the half-width's second significant digit; the mean alone
/// for n = 1.
fn pm(e: Option<&Estimate>, scale: f64) -> String {
    match e {
        None => "n/a".into(),
        Some(e) => match e.half_width() {
            Some(h) if h > 0.0 && h.is_finite() && (1e-4..1e6).contains(&(h * scale).abs()) => {
                let (m, h) = (e.mean * scale, h * scale);
                let d = (1 - h.log10().floor() as i32).max(0) as usize;
                format!("{m:.d$} ± {h:.d$}")
            }
            Some(h) => format!("{} ± {}", sig(e.mean * scale), sig(h * scale)),
            None => format!("{} (n=1)", sig(e.mean * scale)),
        },
    }
}

/// `mean [lo, hi] (method)` (scaled, with a unit suffix).
fn interval(c: Option<&Comparison>, scale: f64, unit: &str) -> String {
    match c {
        None => "—".into(),
        Some(c) => {
            let e = &c.estimate;
            match (e.lo, e.hi) {
                (Some(lo), Some(hi)) => format!(
                    "{}{unit} [{}, {}] ({})",
                    sig(e.mean * scale),
                    sig(lo * scale),
                    sig(hi * scale),
                    c.method.as_str()
                ),
                _ => format!("{}{unit} (n=1)", sig(e.mean * scale)),
            }
        }
    }
}

pub fn write_report_with(
    dirs: &[PathBuf],
    out: &Path,
    opts: &ReportOptions,
) -> Result<ReportSummary, ReportError> {
    let (runs, mut notes) = find_runs(dirs)?;
    std::fs::create_dir_all(out).map_err(|e| ReportError::Io {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let baseline = opts.baseline.clone().or_else(|| {
        dirs.iter()
            .find_map(|d| SweepSpec::load(&d.join(SWEEP_TOML)).ok())
            .and_then(|s| s.baseline_method().map(str::to_string))
            .or_else(|| {
                runs.iter()
                    .any(|r| r.method == "baseline")
                    .then(|| "baseline".to_string())
            })
    });
    if let Some(b) = &baseline {
        if !runs.iter().any(|r| &r.method == b) {
            notes.push(format!(
                "baseline '{b}' has no runs here: no savings computed"
            ));
        }
    }
    let groups = summarize(&runs, baseline.as_deref());
    let scale = acc_scale(runs.iter().map(|r| r.final_test_acc));

    let plot_specs: [(&str, PlotFn); 5] = [
        (
            "accuracy_vs_energy.svg",
            Box::new(|f: &Path| plots::accuracy_vs_energy(&groups, scale, f)),
        ),
        (
            "energy_by_class.svg",
            Box::new(|f: &Path| plots::energy_by_class(&runs, f)),
        ),
        (
            "psg_uncertain_share.svg",
            Box::new(|f: &Path| plots::psg_uncertain_share(&runs, f)),
        ),
        (
            "slu_executed_fraction.svg",
            Box::new(|f: &Path| plots::slu_executed_fraction(&runs, f)),
        ),
        (
            "learning_curves.svg",
            Box::new(|f: &Path| plots::learning_curves(&runs, scale, f)),
        ),
    ];
    let mut plot_results = Vec::new();
    for (name, draw) in &plot_specs {
        let file = out.join(name);
        let r = draw(&file)?;
        if let PlotResult::Skipped { title, reason } = &r {
            // A stale picture from an earlier report would contradict the note.
            let _ = std::fs::remove_file(&file);
            notes.push(format!("plot '{title}' skipped: {reason}"));
        }
        plot_results.push(r);
    }
    drop(plot_specs);

    let mut md = String::new();
    let title = opts
        .title
        .clone()
        .unwrap_or_else(|| "e2train report".into());
    let _ = writeln!(md, "# {title}\n");
    let sources: Vec<String> = dirs.iter().map(|d| format!("`{}`", d.display())).collect();
    let _ = writeln!(md, "{} runs from {}.", runs.len(), sources.join(", "));
    match &baseline {
        Some(b) => {
            let _ = writeln!(md, "Baseline for savings: `{b}` (same hyper-parameters).\n");
        }
        None => {
            let _ = writeln!(md, "No baseline method: savings are not computed.\n");
        }
    }
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "Mean ± half-width of the 95% confidence interval (Student's t over seeds). Savings are of total \
         energy, `1 - E/E_baseline`, paired by seed when every seed has a baseline run (else the delta \
         method on the ratio of means); Δ top-1 is in percentage points.\n"
    );
    let _ = writeln!(
        md,
        "| group | n | top-1 (%) | energy / epoch (J) | total energy (J) | saving vs baseline | Δ top-1 (pp) |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for g in &groups {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            g.group,
            g.n,
            pm(g.top1.as_ref(), scale),
            pm(g.energy_per_epoch_j.as_ref(), 1.0),
            pm(g.energy_total_j.as_ref(), 1.0),
            interval(g.saving.as_ref(), 100.0, "%"),
            interval(g.top1_delta.as_ref(), scale, ""),
        );
    }
    write_phase_table(&mut md, &runs);
    let _ = writeln!(md, "\n## Plots\n");
    for p in &plot_results {
        match p {
            PlotResult::Written { title, file } => {
                let name = file
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let _ = writeln!(md, "### {title}\n\n![{title}]({name})\n");
            }
            PlotResult::Skipped { title, reason } => {
                let _ = writeln!(md, "### {title}\n\n*Not drawn: {reason}.*\n");
            }
        }
    }
    let _ = writeln!(md, "## Runs\n");
    let _ = writeln!(
        md,
        "| run | method | seed | top-1 (%) | epochs | energy / epoch (J) | total energy (J) | time (s) |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let opt = |x: Option<f64>| x.map(sig).unwrap_or_else(|| "n/a".into());
    for r in &runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name(),
            r.method,
            r.seed,
            sig(r.final_test_acc * scale),
            r.epochs.rows.len(),
            opt(r.energy_per_epoch_j()),
            opt(r.energy_total_j()),
            opt(r.seconds_total()),
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let markdown = out.join(REPORT_MD);
    write_atomic(&markdown, md.as_bytes())?;
    Ok(ReportSummary {
        markdown,
        plots: plot_results,
        runs: runs.len(),
        groups,
        baseline,
        notes,
    })
}

/// The GEMM phases as `diagnostics.csv` names them, with their titles.
const PHASES: [(&str, &str); 3] = [
    ("forward", "forward"),
    ("backward_data", "backward data"),
    ("weight_gradient", "weight gradient"),
];

/// Off-chip operand and result bytes per GEMM phase, mean per run of each group (runs without
/// phase rows, e.g. fp32 or older runs, are left out): where the traffic, and so most of the
/// energy, goes.
fn write_phase_table(md: &mut String, runs: &[crate::RunData]) {
    let mut groups: Vec<(String, usize, [f64; 3])> = Vec::new();
    for r in runs {
        let Some(d) = &r.diagnostics else { continue };
        let mut bytes = [0.0; 3];
        let mut any = false;
        for row in d
            .iter()
            .filter(|x| x.kind == "phase_bytes_in" || x.kind == "phase_bytes_out")
        {
            if let Some(i) = PHASES.iter().position(|(n, _)| *n == row.name) {
                bytes[i] += row.value;
                any = true;
            }
        }
        if !any {
            continue;
        }
        match groups.iter_mut().find(|(g, _, _)| *g == r.group) {
            Some((_, n, b)) => {
                *n += 1;
                b.iter_mut().zip(bytes).for_each(|(a, x)| *a += x);
            }
            None => groups.push((r.group.clone(), 1, bytes)),
        }
    }
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n## Off-chip traffic by GEMM phase\n");
    let _ = writeln!(
        md,
        "Operand bytes in plus result bytes out over the whole run, mean per run, GB (share of the \
         group's total).\n"
    );
    let titles: Vec<&str> = PHASES.iter().map(|(_, t)| *t).collect();
    let _ = writeln!(md, "| group | n | {} | total |", titles.join(" | "));
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (g, n, b) in &groups {
        let total: f64 = b.iter().sum();
        let cells: Vec<String> = b
            .iter()
            .map(|x| {
                let share = if total > 0.0 { 100.0 * x / total } else { 0.0 };
                format!("{} ({:.0}%)", sig(x / *n as f64 / 1e9), share)
            })
            .collect();
        let _ = writeln!(
            md,
            "| {g} | {n} | {} | {} |",
            cells.join(" | "),
            sig(total / *n as f64 / 1e9)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::write_fake_run;

    #[test]
    fn report_from_generated_run_folders() {
        let d = tempfile::tempdir().unwrap();
        let sweep = d.path().join("sweep");
        for seed in 0..3 {
            write_fake_run(
                &sweep.join(format!("baseline-s{seed}")),
                "baseline",
                seed,
                0.90 + 0.002 * seed as f64,
                100.0 + seed as f64,
                4,
            );
            write_fake_run(
                &sweep.join(format!("e2-s{seed}")),
                "smd+slu+psg",
                seed,
                0.895 + 0.002 * seed as f64,
                18.0 + seed as f64,
                4,
            );
        }
        // An unfinished run is noted, not read.
        std::fs::create_dir_all(sweep.join("e2-s9")).unwrap();
        std::fs::write(sweep.join("e2-s9").join("epochs.csv"), "epoch,test_acc\n").unwrap();
        let out = d.path().join("report");
        let s = write_report(std::slice::from_ref(&sweep), &out).unwrap();
        assert_eq!(s.runs, 6);
        assert_eq!(s.baseline.as_deref(), Some("baseline"));
        assert!(s.notes.iter().any(|n| n.contains("e2-s9")), "{:?}", s.notes);
        let e2 = s.groups.iter().find(|g| g.method == "smd+slu+psg").unwrap();
        let sv = e2.saving.unwrap().estimate;
        assert!(sv.mean > 0.8 && sv.mean < 0.83, "{sv:?}");
        let md = std::fs::read_to_string(&s.markdown).unwrap();
        assert!(md.contains("| smd+slu+psg | 3 |"), "{md}");
        assert!(md.contains("(paired)"));
        for (file, title) in [
            ("accuracy_vs_energy.svg", plots::TITLE_ACC_ENERGY),
            ("energy_by_class.svg", plots::TITLE_ENERGY_CLASS),
            ("psg_uncertain_share.svg", plots::TITLE_PSG),
            ("slu_executed_fraction.svg", plots::TITLE_SLU),
            ("learning_curves.svg", plots::TITLE_CURVES),
        ] {
            let svg = std::fs::read_to_string(out.join(file)).unwrap();
            assert!(svg.len() > 1000 && svg.starts_with("<svg"), "{file}");
            assert!(svg.contains(title), "{file} lacks its title");
            assert!(
                md.contains(&format!("]({file})")),
                "report does not embed {file}"
            );
        }
        // Phase traffic: the fake runs move 1 + 2 + 3 GB (in + out) per epoch, 4 epochs.
        assert!(
            md.contains("| baseline | 3 | 4.000 (17%) | 8.000 (33%) | 12.00 (50%) | 24.00 |"),
            "{md}"
        );
        let classes = std::fs::read_to_string(out.join("energy_by_class.svg")).unwrap();
        assert!(classes.contains("off-chip memory") && classes.contains("smd+slu+psg"));
        let psg = std::fs::read_to_string(out.join("psg_uncertain_share.svg")).unwrap();
        assert!(psg.contains("layer1.0"));
    }

    #[test]
    fn missing_optional_columns_skip_plots_with_a_note() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("epochs.csv"), "epoch,test_acc\n0,0.5\n1,0.6\n").unwrap();
        std::fs::write(
            run.join("summary.json"),
            r#"{"method":"fp32","seed":1,"final_test_acc":0.6}"#,
        )
        .unwrap();
        let out = d.path().join("out");
        let s = write_report(std::slice::from_ref(&run), &out).unwrap();
        assert_eq!(s.runs, 1);
        assert_eq!(s.baseline, None);
        let skipped: Vec<&str> = s
            .plots
            .iter()
            .filter(|p| matches!(p, PlotResult::Skipped { .. }))
            .map(|p| p.title())
            .collect();
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(out.join("learning_curves.svg").exists());
        assert!(!out.join("energy_by_class.svg").exists());
        let md = std::fs::read_to_string(&s.markdown).unwrap();
        assert!(md.contains("Not drawn: no run has diagnostics.csv"), "{md}");
        assert!(md.contains("60.00 (n=1)"), "{md}");
    }

    #[test]
    fn missing_required_column_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("epochs.csv"), "epoch,train_loss\n0,1\n").unwrap();
        std::fs::write(
            run.join("summary.json"),
            r#"{"method":"fp32","seed":1,"final_test_acc":0.6}"#,
        )
        .unwrap();
        let e = write_report(std::slice::from_ref(&run), &d.path().join("o"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs.csv") && e.contains("test_acc"), "{e}");
        let empty = d.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            write_report(&[empty], &d.path().join("o")),
            Err(ReportError::NoRuns(_))
        ));
    }

    #[test]
    fn mean_plus_minus_rounds_to_the_interval() {
        let e = Estimate {
            n: 3,
            mean: 0.904,
            lo: Some(0.894063),
            hi: Some(0.913937),
        };
        assert_eq!(pm(Some(&e), 100.0), "90.40 ± 0.99");
        let e = Estimate {
            n: 3,
            mean: 515.0,
            lo: Some(477.74),
            hi: Some(552.26),
        };
        assert_eq!(pm(Some(&e), 1.0), "515 ± 37");
        let e = Estimate {
            n: 3,
            mean: 2.0,
            lo: Some(2.0),
            hi: Some(2.0),
        };
        assert_eq!(pm(Some(&e), 1.0), "2.000 ± 0");
        assert_eq!(pm(None, 1.0), "n/a");
    }

    #[test]
    fn significant_digits() {
        assert_eq!(sig(4.56789), "4.568");
        assert_eq!(sig(123.456), "123.5");
        assert_eq!(sig(0.0), "0");
        assert_eq!(sig(1.5e-9), "1.500e-9");
        assert_eq!(sig(f64::NAN), "n/a");
    }
}
