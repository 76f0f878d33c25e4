//! Reading run folders: `epochs.csv`, `diagnostics.csv`, `summary.json` (and `sweep_run.json` when
//! the run was planned by a sweep). Columns are found by name, so files written by newer or older
//! hosts with extra or reordered columns still read; a missing required column is an error naming
//! the file, a missing optional one only disables what needs it.

use crate::ReportError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const EPOCHS_CSV: &str = "epochs.csv";
pub const DIAGNOSTICS_CSV: &str = "diagnostics.csv";
pub const SUMMARY_JSON: &str = "summary.json";
pub const SWEEP_RUN_JSON: &str = "sweep_run.json";
pub const CONFIG_TOML: &str = "config.toml";

/// Columns `epochs.csv` must have.
pub const REQUIRED_EPOCH_COLUMNS: [&str; 2] = ["epoch", "test_acc"];

/// `epochs.csv` as numbers, by column name. Empty cells read as NaN.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

impl EpochTable {
    pub fn has(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c == name)
    }
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        let i = self.columns.iter().position(|c| c == name)?;
        Some(self.rows.iter().map(|r| r[i]).collect())
    }
}

/// One row of `diagnostics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagRow {
    pub epoch: f64,
    pub kind: String,
    pub name: String,
    pub value: f64,
}

/// Everything the report needs from one run folder.
#[derive(Clone, Debug, PartialEq)]
pub struct RunData {
    pub dir: PathBuf,
    pub method: String,
    pub seed: u64,
    /// What the run is compared within: the method, plus hyper-parameters when a sweep varied them.
    pub group: String,
    /// Hyper-parameters a sweep varied for this run (from `sweep_run.json`).
    pub params: Vec<(String, String)>,
    pub final_test_acc: f64,
    pub epochs: EpochTable,
    /// None when the run has no `diagnostics.csv`.
    pub diagnostics: Option<Vec<DiagRow>>,
}

impl RunData {
    /// Mean model energy per epoch, J (needs `energy_j`).
    pub fn energy_per_epoch_j(&self) -> Option<f64> {
        let e = self.epochs.column("energy_j")?;
        let e: Vec<f64> = e.into_iter().filter(|x| x.is_finite()).collect();
        (!e.is_empty()).then(|| e.iter().sum::<f64>() / e.len() as f64)
    }
    /// Total model energy of the run, J: the last `energy_cum_j`, else the sum of `energy_j`.
    pub fn energy_total_j(&self) -> Option<f64> {
        if let Some(c) = self.epochs.column("energy_cum_j") {
            if let Some(last) = c.last().filter(|x| x.is_finite()) {
                return Some(*last);
            }
        }
        let e = self.epochs.column("energy_j")?;
        let e: Vec<f64> = e.into_iter().filter(|x| x.is_finite()).collect();
        (!e.is_empty()).then(|| e.iter().sum())
    }
    /// Wall time of the run's epochs, s.
    pub fn seconds_total(&self) -> Option<f64> {
        Some(
            self.epochs
                .column("seconds")?
                .iter()
                .filter(|x| x.is_finite())
                .sum(),
        )
    }
    /// Folder name, for tables.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn parse_cell(path: &Path, line: u64, column: &str, s: &str) -> Result<f64, ReportError> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(f64::NAN);
    }
    t.parse::<f64>().map_err(|_| ReportError::Parse {
        file: path.display().to_string(),
        line,
        message: format!("column '{column}': '{t}' is not a number"),
    })
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, ReportError> {
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    Ok(csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(f))
}

fn csv_err(path: &Path, e: csv::Error) -> ReportError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    ReportError::Parse {
        file: path.display().to_string(),
        line,
        message: e.to_string(),
    }
}

/// Read `epochs.csv`; every column must be numeric.
pub fn read_epochs(path: &Path) -> Result<EpochTable, ReportError> {
    let mut r = csv_reader(path)?;
    let columns: Vec<String> = r
        .headers()
        .map_err(|e| csv_err(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    for req in REQUIRED_EPOCH_COLUMNS {
        if !columns.iter().any(|c| c == req) {
            return Err(ReportError::MissingColumn {
                file: path.display().to_string(),
                column: req.to_string(),
            });
        }
    }
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let mut row = Vec::with_capacity(columns.len());
        for (c, s) in columns.iter().zip(rec.iter()) {
            // Text in a column nobody here plots (another observer's) must not break the report;
            // the required columns and the energy columns must be numbers.
            let strict = REQUIRED_EPOCH_COLUMNS.contains(&c.as_str()) || c.starts_with("energy_");
            match parse_cell(path, line, c, s) {
                Ok(v) => row.push(v),
                Err(e) if strict => return Err(e),
                Err(_) => row.push(f64::NAN),
            }
        }
        rows.push(row);
    }
    Ok(EpochTable { columns, rows })
}

/// Read `diagnostics.csv` (`epoch,kind,name,value`, extra columns ignored).
pub fn read_diagnostics(path: &Path) -> Result<Vec<DiagRow>, ReportError> {
    let mut r = csv_reader(path)?;
    let headers: Vec<String> = r
        .headers()
        .map_err(|e| csv_err(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let idx = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ReportError::MissingColumn {
                file: path.display().to_string(),
                column: name.to_string(),
            })
    };
    let (ie, ik, inm, iv) = (idx("epoch")?, idx("kind")?, idx("name")?, idx("value")?);
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        out.push(DiagRow {
            epoch: parse_cell(path, line, "epoch", &rec[ie])?,
            kind: rec[ik].to_string(),
            name: rec[inm].to_string(),
            value: parse_cell(path, line, "value", &rec[iv])?,
        });
    }
    Ok(out)
}

/// The fields the report needs from `summary.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryInfo {
    pub method: String,
    pub seed: u64,
    pub final_test_acc: f64,
    /// `finished` from the host (it rewrites the summary after every epoch); None when absent.
    pub finished: Option<bool>,
}

/// The seed from the run's `config.toml` or `sweep_run.json`, for summaries that do not carry it.
fn seed_fallback(dir: &Path) -> Option<u64> {
    let from_config = std::fs::read_to_string(dir.join(CONFIG_TOML))
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| t.get("seed").and_then(|v| v.as_integer()))
        .and_then(|i| u64::try_from(i).ok());
    from_config.or_else(|| {
        std::fs::read_to_string(dir.join(SWEEP_RUN_JSON))
            .ok()
            .and_then(|t| serde_json::from_str::<SweepRunInfo>(&t).ok())
            .map(|i| i.seed)
    })
}

/// Read `summary.json` of the run folder `dir`. Required: `method` (string), `final_test_acc`
/// (number) and a seed (`seed` here, else from `config.toml` or `sweep_run.json` beside it).
pub fn read_summary(dir: &Path) -> Result<SummaryInfo, ReportError> {
    let path = dir.join(SUMMARY_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ReportError::Parse {
        file: path.display().to_string(),
        line: e.line() as u64,
        message: e.to_string(),
    })?;
    let file = path.display().to_string();
    let missing = |key: &str, what: &str| ReportError::MissingKey {
        file: file.clone(),
        key: key.into(),
        expected: what.into(),
    };
    let method = v
        .get("method")
        .and_then(|x| x.as_str())
        .ok_or_else(|| missing("method", "a string"))?
        .to_string();
    let seed = match v.get("seed") {
        Some(x) => x
            .as_u64()
            .ok_or_else(|| missing("seed", "a non-negative integer"))?,
        None => seed_fallback(dir).ok_or_else(|| {
            missing(
                "seed",
                "a non-negative integer (also not found in config.toml or sweep_run.json)",
            )
        })?,
    };
    let final_test_acc = v
        .get("final_test_acc")
        .and_then(|x| x.as_f64())
        .filter(|x| x.is_finite())
        .ok_or_else(|| missing("final_test_acc", "a finite number"))?;
    let finished = v.get("finished").and_then(|x| x.as_bool());
    Ok(SummaryInfo {
        method,
        seed,
        final_test_acc,
        finished,
    })
}

/// A run folder is done when its `summary.json` holds the required fields and does not say
/// `"finished": false` (the host rewrites it after every epoch of a run still going).
pub fn is_complete(dir: &Path) -> bool {
    read_summary(dir).is_ok_and(|s| s.finished != Some(false))
}

/// Sweep bookkeeping written into a run folder before the run starts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepRunInfo {
    pub method: String,
    pub seed: u64,
    pub group: String,
    pub params: BTreeMap<String, String>,
}

/// Read one run folder (finished or not: see [`is_complete`]).
pub fn read_run(dir: &Path) -> Result<RunData, ReportError> {
    let s = read_summary(dir)?;
    let epochs = read_epochs(&dir.join(EPOCHS_CSV))?;
    let dpath = dir.join(DIAGNOSTICS_CSV);
    let diagnostics = if dpath.exists() {
        Some(read_diagnostics(&dpath)?)
    } else {
        None
    };
    let (group, params) = match std::fs::read_to_string(dir.join(SWEEP_RUN_JSON)) {
        Ok(t) => match serde_json::from_str::<SweepRunInfo>(&t) {
            Ok(i) => (i.group, i.params.into_iter().collect()),
            Err(e) => {
                return Err(ReportError::Parse {
                    file: dir.join(SWEEP_RUN_JSON).display().to_string(),
                    line: e.line() as u64,
                    message: e.to_string(),
                });
            }
        },
        Err(_) => (s.method.clone(), Vec::new()),
    };
    Ok(RunData {
        dir: dir.to_path_buf(),
        method: s.method,
        seed: s.seed,
        group,
        params,
        final_test_acc: s.final_test_acc,
        epochs,
        diagnostics,
    })
}

/// Runs under `dirs`: each dir is a run folder (has `summary.json`) or a sweep folder whose
/// subfolders are runs. In a sweep folder, unfinished runs are skipped; a run folder named directly
/// is read even if unfinished. Both are named in the returned notes.
pub fn find_runs(dirs: &[PathBuf]) -> Result<(Vec<RunData>, Vec<String>), ReportError> {
    let mut runs = Vec::new();
    let mut notes = Vec::new();
    for d in dirs {
        if d.join(SUMMARY_JSON).exists() {
            if !is_complete(d) {
                notes.push(format!(
                    "{}: unfinished run, included as it stands",
                    d.display()
                ));
            }
            runs.push(read_run(d)?);
            continue;
        }
        let rd = std::fs::read_dir(d).map_err(|e| io_err(d, e))?;
        let mut subs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        let before = runs.len();
        for s in subs {
            if is_complete(&s) {
                runs.push(read_run(&s)?);
            } else if s.join(SUMMARY_JSON).exists()
                || s.join(EPOCHS_CSV).exists()
                || s.join(SWEEP_RUN_JSON).exists()
            {
                // Read it anyway when possible so a broken file is reported, not silently ignored.
                if s.join(SUMMARY_JSON).exists() {
                    read_summary(&s)?;
                }
                notes.push(format!("{}: unfinished run, skipped", s.display()));
            }
        }
        if runs.len() == before {
            return Err(ReportError::NoRuns(d.display().to_string()));
        }
    }
    Ok((runs, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_by_name_with_extra_and_reordered_columns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(EPOCHS_CSV);
        std::fs::write(&p, "test_acc,epoch,energy_j,new_thing\n0.5,0,2.0,x1\n").unwrap();
        // Text in an unknown column reads as missing.
        assert!(read_epochs(&p).unwrap().column("new_thing").unwrap()[0].is_nan());
        // A non-numeric cell in a column the report uses is an error naming file and column.
        std::fs::write(&p, "test_acc,epoch,energy_j\nabc,0,2.0\n").unwrap();
        let e = read_epochs(&p).unwrap_err().to_string();
        assert!(
            e.contains("epochs.csv") && e.contains("test_acc") && e.contains(":2:"),
            "{e}"
        );
        std::fs::write(&p, "test_acc,epoch,energy_j\n0.5,0,2.0\n0.6,1,\n").unwrap();
        let t = read_epochs(&p).unwrap();
        assert_eq!(t.column("epoch").unwrap(), vec![0.0, 1.0]);
        assert!(t.column("energy_j").unwrap()[1].is_nan());
        assert_eq!(t.column("lr"), None);
    }

    #[test]
    fn missing_required_column_and_key_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(EPOCHS_CSV);
        std::fs::write(&p, "epoch,train_loss\n0,1.0\n").unwrap();
        let e = read_epochs(&p).unwrap_err();
        assert!(
            matches!(&e, ReportError::MissingColumn { column, .. } if column == "test_acc"),
            "{e}"
        );
        assert!(e.to_string().contains("epochs.csv"));
        let s = d.path().join(SUMMARY_JSON);
        std::fs::write(&s, r#"{"method":"baseline","final_test_acc":0.9}"#).unwrap();
        let e = read_summary(d.path()).unwrap_err();
        assert!(
            matches!(&e, ReportError::MissingKey { key, .. } if key == "seed"),
            "{e}"
        );
        assert!(!is_complete(d.path()));
        // The host's summary has no seed; its config.toml does.
        std::fs::write(d.path().join(CONFIG_TOML), "seed = 7\nepochs = 2\n").unwrap();
        assert_eq!(read_summary(d.path()).unwrap().seed, 7);
        assert!(is_complete(d.path()));
        // A summary rewritten mid-run says so: not done.
        std::fs::write(
            &s,
            r#"{"method":"baseline","final_test_acc":0.9,"finished":false}"#,
        )
        .unwrap();
        assert!(!is_complete(d.path()));
        std::fs::write(&s, "{not json").unwrap();
        assert!(matches!(
            read_summary(d.path()),
            Err(ReportError::Parse { .. })
        ));
    }

    #[test]
    fn energy_totals_prefer_cumulative_column() {
        let mut r = RunData {
            dir: PathBuf::from("x"),
            method: "m".into(),
            seed: 0,
            group: "m".into(),
            params: vec![],
            final_test_acc: 0.9,
            epochs: EpochTable {
                columns: vec!["epoch".into(), "test_acc".into(), "energy_j".into()],
                rows: vec![vec![0.0, 0.5, 2.0], vec![1.0, 0.6, 4.0]],
            },
            diagnostics: None,
        };
        assert_eq!(r.energy_per_epoch_j(), Some(3.0));
        assert_eq!(r.energy_total_j(), Some(6.0));
        r.epochs.columns.push("energy_cum_j".into());
        r.epochs.rows[0].push(2.0);
        r.epochs.rows[1].push(6.5);
        assert_eq!(r.energy_total_j(), Some(6.5));
        assert_eq!(r.seconds_total(), None);
    }
}
