//! Sweep bookkeeping: a spec (methods x seeds x hyper-parameter lists) expanded into run specs with
//! deterministic folder names, a resumable plan, and the `sweep.csv` / `summary.csv` tables.
//!
//! Spec file (TOML):
//! ```toml
//! methods = ["baseline", "smd+slu+psg"]
//! seeds = [0, 1, 2]
//! baseline = "baseline"          # optional; default "baseline" when it is one of the methods
//! [fixed]                         # optional: flags every run gets (`--key value`)
//! dataset = "fashion-mnist"
//! epochs = 5
//! [grid]                          # optional: lists whose cartesian product is swept
//! lr = [0.1, 0.05]
//! ```
//! A run folder is done when its `summary.json` holds `method`, `seed` and `final_test_acc`;
//! done runs are never redone. Tables are written to a temporary file and renamed into place.

use crate::runs::{self, RunData, SweepRunInfo};
use crate::stats::{Comparison, Estimate, difference, mean_ci, saving};
use crate::{ReportError, write_atomic};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const SWEEP_TOML: &str = "sweep.toml";
pub const SWEEP_CSV: &str = "sweep.csv";
pub const SUMMARY_CSV: &str = "summary.csv";

/// Flag names a sweep cannot set through `fixed` or `grid` (the sweep sets them per run).
pub const RESERVED_KEYS: [&str; 3] = ["method", "seed", "out"];

#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    pub methods: Vec<String>,
    pub seeds: Vec<u64>,
    pub baseline: Option<String>,
    /// Flags every run gets, sorted by key.
    pub fixed: BTreeMap<String, String>,
    /// Hyper-parameter lists, sorted by key; runs are their cartesian product.
    pub grid: BTreeMap<String, Vec<String>>,
}

/// One run of a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    pub method: String,
    pub seed: u64,
    /// This run's values of the grid keys, sorted by key.
    pub params: Vec<(String, String)>,
    /// Flags shared by every run.
    pub fixed: Vec<(String, String)>,
    /// Folder name under the sweep folder (deterministic from method, seed, params).
    pub dir_name: String,
    /// Comparison group: method plus grid values (`smd+slu+psg [lr=0.1]`).
    pub group: String,
}

fn toml_scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Keep folder names portable: letters, digits and `.+=_-`; anything else becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+=_-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn group_label(method: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        method.to_string()
    } else {
        let p: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{method} [{}]", p.join(","))
    }
}

impl SweepSpec {
    /// A spec from flags: methods x seeds, no grid.
    pub fn new(methods: Vec<String>, seeds: Vec<u64>) -> Result<Self, ReportError> {
        let s = SweepSpec {
            methods,
            seeds,
            baseline: None,
            fixed: BTreeMap::new(),
            grid: BTreeMap::new(),
        };
        s.validate("flags")?;
        Ok(s)
    }

    /// Add a hyper-parameter list (`--grid lr=0.1,0.05`).
    pub fn with_grid(mut self, key: &str, values: Vec<String>) -> Result<Self, ReportError> {
        self.grid.insert(key.to_string(), values);
        self.validate("flags")?;
        Ok(self)
    }

    pub fn with_fixed(mut self, key: &str, value: &str) -> Result<Self, ReportError> {
        self.fixed.insert(key.to_string(), value.to_string());
        self.validate("flags")?;
        Ok(self)
    }

    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReportError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ReportError> {
        let bad = |key: &str, msg: &str| ReportError::Spec {
            file: file.to_string(),
            key: key.to_string(),
            message: msg.to_string(),
        };
        let t: toml::Table = toml::from_str(text).map_err(|e| ReportError::Parse {
            file: file.to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        for k in t.keys() {
            if !["methods", "seeds", "baseline", "fixed", "grid"].contains(&k.as_str()) {
                return Err(bad(
                    k,
                    "unknown key (expected methods, seeds, baseline, fixed, grid)",
                ));
            }
        }
        let methods = match t.get("methods") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("methods", "must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("methods", "must be a list of strings")),
            None => return Err(bad("methods", "missing")),
        };
        let seeds = match t.get("seeds") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_integer()
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or_else(|| bad("seeds", "must be a list of non-negative integers"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("seeds", "must be a list of non-negative integers")),
            None => return Err(bad("seeds", "missing")),
        };
        let baseline = match t.get("baseline") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("baseline", "must be a string")),
        };
        let mut fixed = BTreeMap::new();
        match t.get("fixed") {
            None => {}
            Some(toml::Value::Table(ft)) => {
                for (k, v) in ft {
                    let s = toml_scalar(v).ok_or_else(|| {
                        bad(&format!("fixed.{k}"), "must be a string, number or boolean")
                    })?;
                    fixed.insert(k.clone(), s);
                }
            }
            Some(_) => return Err(bad("fixed", "must be a table")),
        }
        let mut grid = BTreeMap::new();
        match t.get("grid") {
            None => {}
            Some(toml::Value::Table(gt)) => {
                for (k, v) in gt {
                    let key = format!("grid.{k}");
                    let arr = v.as_array().ok_or_else(|| bad(&key, "must be a list"))?;
                    let vals = arr
                        .iter()
                        .map(|x| {
                            toml_scalar(x)
                                .ok_or_else(|| bad(&key, "must hold strings, numbers or booleans"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    grid.insert(k.clone(), vals);
                }
            }
            Some(_) => return Err(bad("grid", "must be a table of lists")),
        }
        let s = SweepSpec {
            methods,
            seeds,
            baseline,
            fixed,
            grid,
        };
        s.validate(file)?;
        Ok(s)
    }

    fn validate(&self, file: &str) -> Result<(), ReportError> {
        let bad = |key: &str, msg: String| ReportError::Spec {
            file: file.to_string(),
            key: key.to_string(),
            message: msg,
        };
        if self.methods.is_empty() {
            return Err(bad("methods", "must name at least one method".into()));
        }
        if self.seeds.is_empty() {
            return Err(bad("seeds", "must list at least one seed".into()));
        }
        for (i, m) in self.methods.iter().enumerate() {
            if m.trim().is_empty() {
                return Err(bad("methods", "a method name is empty".into()));
            }
            if self.methods[..i].contains(m) {
                return Err(bad("methods", format!("'{m}' is listed twice")));
            }
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if self.seeds[..i].contains(s) {
                return Err(bad("seeds", format!("{s} is listed twice")));
            }
        }
        if let Some(b) = &self.baseline {
            if !self.methods.contains(b) {
                return Err(bad("baseline", format!("'{b}' is not one of the methods")));
            }
        }
        for k in self.fixed.keys().chain(self.grid.keys()) {
            if RESERVED_KEYS.contains(&k.as_str()) {
                return Err(bad(
                    k,
                    "is set by the sweep for each run; use methods/seeds instead".into(),
                ));
            }
        }
        for k in self.fixed.keys() {
            if self.grid.contains_key(k) {
                return Err(bad(k, "is both fixed and in the grid".into()));
            }
        }
        for (k, v) in &self.grid {
            if v.is_empty() {
                return Err(bad(&format!("grid.{k}"), "is an empty list".into()));
            }
        }
        Ok(())
    }

    /// The baseline method: the given one, else `baseline` when it is swept.
    pub fn baseline_method(&self) -> Option<&str> {
        self.baseline.as_deref().or_else(|| {
            self.methods
                .iter()
                .find(|m| *m == "baseline")
                .map(String::as_str)
        })
    }

    /// Every run, in a fixed order: grid combination, then method, then seed.
    pub fn expand(&self) -> Result<Vec<RunSpec>, ReportError> {
        let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
        for (k, vals) in &self.grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    vals.iter().map(move |v| {
                        let mut c2 = c.clone();
                        c2.push((k.clone(), v.clone()));
                        c2
                    })
                })
                .collect();
        }
        let fixed: Vec<(String, String)> = self
            .fixed
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<RunSpec> = Vec::new();
        for params in &combos {
            for m in &self.methods {
                for &seed in &self.seeds {
                    let mut dir_name = format!("{}-s{seed}", sanitize(m));
                    for (k, v) in params {
                        let _ = write!(dir_name, "-{}={}", sanitize(k), sanitize(v));
                    }
                    if let Some(prev) = out.iter().find(|r| r.dir_name == dir_name) {
                        return Err(ReportError::Spec {
                            file: "sweep".into(),
                            key: "methods".into(),
                            message: format!(
                                "'{}' and '{m}' map to the same folder name '{dir_name}'",
                                prev.method
                            ),
                        });
                    }
                    out.push(RunSpec {
                        method: m.clone(),
                        seed,
                        params: params.clone(),
                        fixed: fixed.clone(),
                        group: group_label(m, params),
                        dir_name,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The spec as TOML (saved beside the runs as `sweep.toml`; parses back to an equal spec).
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert(
            "methods".into(),
            toml::Value::Array(
                self.methods
                    .iter()
                    .map(|m| toml::Value::String(m.clone()))
                    .collect(),
            ),
        );
        t.insert(
            "seeds".into(),
            toml::Value::Array(
                self.seeds
                    .iter()
                    .map(|s| toml::Value::Integer(*s as i64))
                    .collect(),
            ),
        );
        if let Some(b) = &self.baseline {
            t.insert("baseline".into(), toml::Value::String(b.clone()));
        }
        if !self.fixed.is_empty() {
            let f: toml::Table = self
                .fixed
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect();
            t.insert("fixed".into(), toml::Value::Table(f));
        }
        if !self.grid.is_empty() {
            let g: toml::Table = self
                .grid
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        toml::Value::Array(
                            v.iter().map(|x| toml::Value::String(x.clone())).collect(),
                        ),
                    )
                })
                .collect();
            t.insert("grid".into(), toml::Value::Table(g));
        }
        toml::to_string(&t).unwrap_or_default()
    }
}

impl RunSpec {
    /// Command-line arguments for one run of the `e2train` binary, after the subcommand:
    /// `--method M --seed S --out DIR` then `--key value` for each fixed flag and grid value.
    pub fn args(&self, run_dir: &Path) -> Vec<String> {
        let mut a = vec![
            "--method".to_string(),
            self.method.clone(),
            "--seed".to_string(),
            self.seed.to_string(),
            "--out".to_string(),
            run_dir.display().to_string(),
        ];
        for (k, v) in self.fixed.iter().chain(self.params.iter()) {
            a.push(format!("--{k}"));
            a.push(v.clone());
        }
        a
    }

    fn info(&self) -> SweepRunInfo {
        SweepRunInfo {
            method: self.method.clone(),
            seed: self.seed,
            group: self.group.clone(),
            params: self.params.iter().cloned().collect(),
        }
    }
}

/// A run of the plan and whether it is already done.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRun {
    pub spec: RunSpec,
    pub dir: PathBuf,
    pub done: bool,
}

/// The runs of a sweep in a sweep folder, with finished ones marked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub sweep_dir: PathBuf,
    pub spec: SweepSpec,
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    /// Expand the spec and look at the folder; also saves the spec as `sweep.toml`.
    pub fn new(sweep_dir: &Path, spec: &SweepSpec) -> Result<Plan, ReportError> {
        std::fs::create_dir_all(sweep_dir).map_err(|e| ReportError::Io {
            path: sweep_dir.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&sweep_dir.join(SWEEP_TOML), spec.to_toml().as_bytes())?;
        let runs = spec
            .expand()?
            .into_iter()
            .map(|s| {
                let dir = sweep_dir.join(&s.dir_name);
                let done = runs::is_complete(&dir);
                PlannedRun { spec: s, dir, done }
            })
            .collect();
        Ok(Plan {
            sweep_dir: sweep_dir.to_path_buf(),
            spec: spec.clone(),
            runs,
        })
    }

    pub fn pending(&self) -> impl Iterator<Item = &PlannedRun> {
        self.runs.iter().filter(|r| !r.done)
    }

    /// Create a pending run's folder and write its `sweep_run.json` (call before starting it,
    /// in-process or as a separate process).
    pub fn prepare(run: &PlannedRun) -> Result<(), ReportError> {
        std::fs::create_dir_all(&run.dir).map_err(|e| ReportError::Io {
            path: run.dir.display().to_string(),
            message: e.to_string(),
        })?;
        let json = serde_json::to_string_pretty(&run.spec.info()).unwrap_or_default();
        write_atomic(&run.dir.join(runs::SWEEP_RUN_JSON), json.as_bytes())
    }
}

/// What an in-process sweep did.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepOutcome {
    pub skipped: usize,
    pub ran: usize,
    /// (run folder name, error message) of runs whose closure failed or left no complete summary.
    pub failed: Vec<(String, String)>,
    pub tables: SweepTables,
}

/// Run every pending run with `run` (in this process, one after another), then write the tables.
/// A failing run is recorded and the sweep goes on; the next call retries it.
pub fn run_in_process<F, E>(
    sweep_dir: &Path,
    spec: &SweepSpec,
    mut run: F,
) -> Result<SweepOutcome, ReportError>
where
    F: FnMut(&RunSpec, &Path) -> Result<(), E>,
    E: std::fmt::Display,
{
    let plan = Plan::new(sweep_dir, spec)?;
    let skipped = plan.runs.iter().filter(|r| r.done).count();
    let mut ran = 0;
    let mut failed = Vec::new();
    for r in plan.pending() {
        Plan::prepare(r)?;
        ran += 1;
        match run(&r.spec, &r.dir) {
            Ok(()) if runs::is_complete(&r.dir) => {}
            Ok(()) => failed.push((
                r.spec.dir_name.clone(),
                "finished without a complete summary.json".into(),
            )),
            Err(e) => failed.push((r.spec.dir_name.clone(), e.to_string())),
        }
    }
    let tables = write_sweep_tables(sweep_dir, spec)?;
    Ok(SweepOutcome {
        skipped,
        ran,
        failed,
        tables,
    })
}

/// Per-group statistics over seeds (the rows of `summary.csv` and of the report's main table).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSummary {
    pub group: String,
    pub method: String,
    pub n: usize,
    pub top1: Option<Estimate>,
    pub energy_per_epoch_j: Option<Estimate>,
    pub energy_total_j: Option<Estimate>,
    /// Fractional saving of total energy vs the baseline of the same grid values.
    pub saving: Option<Comparison>,
    /// Top-1 difference vs the baseline (negative = loss).
    pub top1_delta: Option<Comparison>,
}

/// Group runs (by `RunData::group`, first-seen order) and compare each group with the baseline
/// group holding the same parameters.
pub fn summarize(runs: &[RunData], baseline: Option<&str>) -> Vec<GroupSummary> {
    let mut groups: Vec<(String, Vec<&RunData>)> = Vec::new();
    for r in runs {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, v)) => v.push(r),
            None => groups.push((r.group.clone(), vec![r])),
        }
    }
    let collect = |rs: &[&RunData], f: &dyn Fn(&RunData) -> Option<f64>| -> Vec<(u64, f64)> {
        rs.iter()
            .filter_map(|r| f(r).map(|v| (r.seed, v)))
            .collect()
    };
    let vals = |p: &[(u64, f64)]| p.iter().map(|x| x.1).collect::<Vec<f64>>();
    groups
        .iter()
        .map(|(g, rs)| {
            let acc = collect(rs, &|r| Some(r.final_test_acc));
            let epe = collect(rs, &RunData::energy_per_epoch_j);
            let tot = collect(rs, &RunData::energy_total_j);
            let base = baseline.filter(|b| *b != rs[0].method).and_then(|b| {
                groups
                    .iter()
                    .find(|(_, brs)| brs[0].method == b && brs[0].params == rs[0].params)
                    .map(|(_, v)| v)
            });
            let (sv, dv) = match base {
                Some(brs) => {
                    let btot = collect(brs, &RunData::energy_total_j);
                    let bacc = collect(brs, &|r| Some(r.final_test_acc));
                    (saving(&tot, &btot), difference(&acc, &bacc))
                }
                None => (None, None),
            };
            GroupSummary {
                group: g.clone(),
                method: rs[0].method.clone(),
                n: rs.len(),
                top1: mean_ci(&vals(&acc)),
                energy_per_epoch_j: mean_ci(&vals(&epe)),
                energy_total_j: mean_ci(&vals(&tot)),
                saving: sv,
                top1_delta: dv,
            }
        })
        .collect()
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v}")).unwrap_or_default()
}

fn est_cells(e: Option<&Estimate>) -> [String; 3] {
    [
        fmt_opt(e.map(|e| e.mean)),
        fmt_opt(e.and_then(|e| e.lo)),
        fmt_opt(e.and_then(|e| e.hi)),
    ]
}

/// Header of `summary.csv`.
pub const SUMMARY_COLUMNS: [&str; 20] = [
    "group",
    "method",
    "n",
    "top1_mean",
    "top1_ci_lo",
    "top1_ci_hi",
    "energy_per_epoch_j_mean",
    "energy_per_epoch_j_ci_lo",
    "energy_per_epoch_j_ci_hi",
    "energy_total_j_mean",
    "energy_total_j_ci_lo",
    "energy_total_j_ci_hi",
    "saving_mean",
    "saving_ci_lo",
    "saving_ci_hi",
    "saving_method",
    "top1_delta_mean",
    "top1_delta_ci_lo",
    "top1_delta_ci_hi",
    "top1_delta_method",
];

/// `summary.csv` as bytes.
pub fn summary_csv(rows: &[GroupSummary]) -> Result<Vec<u8>, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| ReportError::Io {
        path: SUMMARY_CSV.into(),
        message: e.to_string(),
    };
    w.write_record(SUMMARY_COLUMNS).map_err(err)?;
    for g in rows {
        let mut rec = vec![g.group.clone(), g.method.clone(), g.n.to_string()];
        rec.extend(est_cells(g.top1.as_ref()));
        rec.extend(est_cells(g.energy_per_epoch_j.as_ref()));
        rec.extend(est_cells(g.energy_total_j.as_ref()));
        rec.extend(est_cells(g.saving.as_ref().map(|c| &c.estimate)));
        rec.push(
            g.saving
                .map(|c| c.method.as_str().to_string())
                .unwrap_or_default(),
        );
        rec.extend(est_cells(g.top1_delta.as_ref().map(|c| &c.estimate)));
        rec.push(
            g.top1_delta
                .map(|c| c.method.as_str().to_string())
                .unwrap_or_default(),
        );
        w.write_record(&rec).map_err(err)?;
    }
    w.into_inner().map_err(|e| ReportError::Io {
        path: SUMMARY_CSV.into(),
        message: e.to_string(),
    })
}

/// What [`write_sweep_tables`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepTables {
    pub sweep_csv: PathBuf,
    pub summary_csv: PathBuf,
    pub done: usize,
    pub pending: usize,
    pub groups: Vec<GroupSummary>,
}

/// Write `sweep.csv` (one row per planned run, done or not) and `summary.csv` (per group).
pub fn write_sweep_tables(sweep_dir: &Path, spec: &SweepSpec) -> Result<SweepTables, ReportError> {
    let specs = spec.expand()?;
    let grid_keys: Vec<&String> = spec.grid.keys().collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| ReportError::Io {
        path: SWEEP_CSV.into(),
        message: e.to_string(),
    };
    let mut header: Vec<String> = ["run", "method", "seed", "group"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(grid_keys.iter().map(|k| k.to_string()));
    header.extend(
        [
            "status",
            "final_test_acc",
            "epochs",
            "energy_per_epoch_j",
            "energy_total_j",
            "seconds_total",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    w.write_record(&header).map_err(err)?;
    let mut done_runs = Vec::new();
    let mut pending = 0;
    for s in &specs {
        let dir = sweep_dir.join(&s.dir_name);
        let mut rec = vec![
            s.dir_name.clone(),
            s.method.clone(),
            s.seed.to_string(),
            s.group.clone(),
        ];
        rec.extend(s.params.iter().map(|(_, v)| v.clone()));
        if runs::is_complete(&dir) {
            let mut r = runs::read_run(&dir)?;
            // The plan is the authority on grouping, whatever the folder says.
            r.group = s.group.clone();
            r.params = s.params.clone();
            rec.push("done".into());
            rec.push(r.final_test_acc.to_string());
            rec.push(r.epochs.rows.len().to_string());
            rec.push(fmt_opt(r.energy_per_epoch_j()));
            rec.push(fmt_opt(r.energy_total_j()));
            rec.push(fmt_opt(r.seconds_total()));
            done_runs.push(r);
        } else {
            pending += 1;
            rec.push("pending".into());
            rec.extend(std::iter::repeat_n(String::new(), 5));
        }
        w.write_record(&rec).map_err(err)?;
    }
    let bytes = w.into_inner().map_err(|e| ReportError::Io {
        path: SWEEP_CSV.into(),
        message: e.to_string(),
    })?;
    let sweep_csv = sweep_dir.join(SWEEP_CSV);
    write_atomic(&sweep_csv, &bytes)?;
    let groups = summarize(&done_runs, spec.baseline_method());
    let summary_path = sweep_dir.join(SUMMARY_CSV);
    write_atomic(&summary_path, &summary_csv(&groups)?)?;
    Ok(SweepTables {
        sweep_csv,
        summary_csv: summary_path,
        done: done_runs.len(),
        pending,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::write_fake_run;

    #[test]
    fn spec_parses_expands_and_names_deterministically() {
        let text = r#"
methods = ["baseline", "smd+slu+psg"]
seeds = [0, 1]
[fixed]
epochs = 2
dataset = "fashion-mnist"
[grid]
lr = [0.1, 0.05]
"#;
        let s = SweepSpec::parse(text, "s.toml").unwrap();
        assert_eq!(s.baseline_method(), Some("baseline"));
        let runs = s.expand().unwrap();
        assert_eq!(runs.len(), 8);
        assert_eq!(runs[0].dir_name, "baseline-s0-lr=0.1");
        assert_eq!(runs[3].dir_name, "smd+slu+psg-s1-lr=0.1");
        assert_eq!(runs[3].group, "smd+slu+psg [lr=0.1]");
        assert_eq!(runs, s.expand().unwrap());
        let args = runs[3].args(Path::new("/x/r"));
        assert_eq!(
            args,
            [
                "--method",
                "smd+slu+psg",
                "--seed",
                "1",
                "--out",
                "/x/r",
                "--dataset",
                "fashion-mnist",
                "--epochs",
                "2",
                "--lr",
                "0.1"
            ]
        );
        let back = SweepSpec::parse(&s.to_toml(), "round").unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn spec_errors_name_file_and_key() {
        let e =
            SweepSpec::parse("methods = [\"a\"]\nseeds = [1]\nsedes = 3\n", "s.toml").unwrap_err();
        assert!(
            matches!(&e, ReportError::Spec { key, .. } if key == "sedes"),
            "{e}"
        );
        assert!(e.to_string().contains("s.toml"));
        let e = SweepSpec::parse("methods = []\nseeds = [1]\n", "s.toml").unwrap_err();
        assert!(
            matches!(&e, ReportError::Spec { key, .. } if key == "methods"),
            "{e}"
        );
        let e = SweepSpec::parse("methods = [\"a\"]\nseeds = [-1]\n", "s.toml").unwrap_err();
        assert!(
            matches!(&e, ReportError::Spec { key, .. } if key == "seeds"),
            "{e}"
        );
        let e = SweepSpec::parse(
            "methods = [\"a\"]\nseeds = [1]\n[fixed]\nseed = 3\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(
            matches!(&e, ReportError::Spec { key, .. } if key == "seed"),
            "{e}"
        );
        let e = SweepSpec::parse(
            "methods = [\"a\"]\nseeds = [1]\nbaseline = \"b\"\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(
            matches!(&e, ReportError::Spec { key, .. } if key == "baseline"),
            "{e}"
        );
        let e = SweepSpec::new(vec!["a b".into(), "a_b".into()], vec![1])
            .unwrap()
            .expand()
            .unwrap_err();
        assert!(e.to_string().contains("same folder name"), "{e}");
    }

    #[test]
    fn in_process_sweep_is_resumable() {
        let d = tempfile::tempdir().unwrap();
        let spec = SweepSpec::new(vec!["baseline".into(), "e2".into()], vec![0, 1, 2]).unwrap();
        let mut calls = Vec::new();
        // First pass: the e2 seed-2 run fails.
        let out = run_in_process(d.path(), &spec, |r: &RunSpec, dir: &Path| {
            calls.push(r.dir_name.clone());
            if r.method == "e2" && r.seed == 2 {
                return Err("boom".to_string());
            }
            let (acc, e) = if r.method == "baseline" {
                (0.90 + 0.01 * r.seed as f64, 100.0)
            } else {
                (0.895 + 0.01 * r.seed as f64, 20.0)
            };
            write_fake_run(dir, &r.method, r.seed, acc, e, 3);
            Ok(())
        })
        .unwrap();
        assert_eq!((out.skipped, out.ran), (0, 6));
        assert_eq!(out.failed, vec![("e2-s2".to_string(), "boom".to_string())]);
        assert_eq!((out.tables.done, out.tables.pending), (5, 1));
        assert!(d.path().join("e2-s0").join(runs::SWEEP_RUN_JSON).exists());
        // Second pass: only the failed run is redone.
        calls.clear();
        let out = run_in_process(
            d.path(),
            &spec,
            |r: &RunSpec, dir: &Path| -> Result<(), String> {
                calls.push(r.dir_name.clone());
                write_fake_run(dir, &r.method, r.seed, 0.915, 20.0, 3);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(calls, vec!["e2-s2".to_string()]);
        assert_eq!((out.skipped, out.ran, out.tables.done), (5, 1, 6));
        let sweep = std::fs::read_to_string(&out.tables.sweep_csv).unwrap();
        assert_eq!(sweep.lines().count(), 7);
        assert!(sweep.starts_with("run,method,seed,group,status,final_test_acc"));
        let summary = std::fs::read_to_string(&out.tables.summary_csv).unwrap();
        assert!(summary.starts_with(&SUMMARY_COLUMNS.join(",")));
        let e2 = out.tables.groups.iter().find(|g| g.method == "e2").unwrap();
        let s = e2.saving.unwrap();
        // 3 epochs x 20 J vs 3 x 100 J for every seed: 80% saving, paired, zero width.
        assert!((s.estimate.mean - 0.8).abs() < 1e-12);
        assert_eq!(s.method, crate::stats::CompareMethod::Paired);
        let d1 = e2.top1_delta.unwrap().estimate;
        assert!((d1.mean - (-0.005)).abs() < 1e-9, "{d1:?}");
        let base = out
            .tables
            .groups
            .iter()
            .find(|g| g.method == "baseline")
            .unwrap();
        assert!(base.saving.is_none());
        assert_eq!(base.n, 3);
    }
}
