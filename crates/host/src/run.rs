//! The training run loop and the run folder.

use crate::HostError;
use crate::atomic::{clean_stale, write_atomic};
use crate::config::RunConfig;
use crate::schedule::LrSchedule;
use e2t_core::{Batch, Counters, EngineConfig, EvalResult, PhaseCounters, StepEngine, StepResult};
use e2t_data::batch::rng_for;
use e2t_data::{Dataset, EpochPlan};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const CONFIG_FILE: &str = "config.toml";
pub const EPOCHS_FILE: &str = "epochs.csv";
pub const DIAG_FILE: &str = "diagnostics.csv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";

/// The fixed first columns of `epochs.csv`, in order.
pub const BASE_COLUMNS: [&str; 8] = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",
    "images_per_s",
];
/// Columns of `diagnostics.csv`.
pub const DIAG_COLUMNS: [&str; 4] = ["epoch", "kind", "name", "value"];

/// Tag of the SMD coin stream (see [`e2t_data::batch::derive_seed`]).
pub const TAG_SMD: u64 = 0x534d_4443; // "SMDC"

/// Bumped whenever the host state's layout changes (bincode has no optional fields): 2 added the
/// per-phase counters of the running epoch, 3 the SLU gates' decisive counts.
const MAGIC: &[u8; 8] = b"E2THOST3";
const OLD_MAGICS: [&[u8; 8]; 2] = [b"E2THOST1", b"E2THOST2"];

/// One finished epoch (one row of `epochs.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// 1-based.
    pub epoch: u32,
    /// Learning rate of the epoch's last step.
    pub lr: f32,
    pub train_loss: f64,
    /// Fractions in 0..=1.
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Wall time of training plus evaluation.
    pub seconds: f64,
    /// Trained images (kept batches) per second of training time.
    pub images_per_s: f64,
    /// Sum of the counter deltas of the epoch's training steps (evaluation excluded).
    pub counters: Counters,
    pub kept_batches: u64,
    pub dropped_batches: u64,
    /// Samples trained on (kept batches) and the training part of `seconds` (not CSV columns).
    pub train_samples: u64,
    pub train_seconds: f64,
    /// Observer columns, in header order.
    pub extra: Vec<String>,
}

/// A plug-in that watches the run and adds its own columns to `epochs.csv` (for example the energy
/// of each epoch). Observers see every kept step's result and every dropped batch.
pub trait EpochObserver {
    /// Unique name (keys the observer's state in the checkpoint).
    fn name(&self) -> &str;
    /// Column names, fixed for the run; appended after the built-in columns.
    fn columns(&self) -> Vec<String>;
    /// `epoch` is 1-based. Not called again when a run resumes in the middle of an epoch.
    fn on_epoch_start(&mut self, _epoch: u32) {}
    fn on_step(&mut self, _result: &StepResult) {}
    fn on_dropped(&mut self, _seq: u64, _lr: f32) {}
    /// Accelerator work of this epoch outside any step (the BN calibration before evaluation).
    fn on_extra_work(&mut self, _counters: &Counters) {}
    /// Values for this epoch's row, one per column (empty string for a missing value).
    fn on_epoch_end(&mut self, row: &EpochRow) -> Result<Vec<String>, String>;
    /// State to carry across a checkpoint (e.g. a partial epoch's accumulators).
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore_state(&mut self, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// One row of `diagnostics.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagRow {
    pub epoch: u32,
    pub kind: String,
    pub name: String,
    pub value: f64,
}

/// Running sums of the current epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct EpochAcc {
    loss_sum: f64,
    correct: u64,
    samples: u64,
    counters: Counters,
    kept: u64,
    dropped: u64,
    train_seconds: f64,
    /// Per layer, in order of first appearance: predicted, uncertain, tiles, recomputed tiles.
    psg: Vec<(String, [u64; 4])>,
    /// Per gated block: executed samples, total samples.
    slu: Vec<(String, u64, u64)>,
    /// Per gated block: samples with a decisive gate (|p - 0.5| >= 0.25).
    slu_decisive: Vec<(String, u64)>,
    /// Accelerator work by GEMM phase.
    phases: PhaseCounters,
}

impl EpochAcc {
    fn add(&mut self, r: &StepResult) {
        self.loss_sum += r.loss as f64 * r.samples as f64;
        self.correct += r.correct as u64;
        self.samples += r.samples as u64;
        self.counters.accumulate(&r.counters);
        self.kept += 1;
        for l in &r.diag.psg {
            let v = [l.predicted, l.uncertain, l.tiles, l.recomputed_tiles];
            match self.psg.iter_mut().find(|(n, _)| *n == l.layer) {
                Some((_, acc)) => acc.iter_mut().zip(v).for_each(|(a, b)| *a += b),
                None => self.psg.push((l.layer.clone(), v)),
            }
        }
        self.phases.accumulate(&r.diag.phases);
        for (name, ex, tot) in &r.diag.slu_executed {
            match self.slu.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, e, t)) => {
                    *e += *ex as u64;
                    *t += *tot as u64;
                }
                None => self.slu.push((name.clone(), *ex as u64, *tot as u64)),
            }
        }
        for (name, d) in &r.diag.slu_decisive {
            match self.slu_decisive.iter_mut().find(|(n, _)| n == name) {
                Some((_, acc)) => *acc += *d as u64,
                None => self.slu_decisive.push((name.clone(), *d as u64)),
            }
        }
    }

    fn diag_rows(&self, epoch: u32) -> Vec<DiagRow> {
        let mut rows = Vec::new();
        let mut push = |kind: &str, name: &str, value: f64| {
            rows.push(DiagRow {
                epoch,
                kind: kind.into(),
                name: name.into(),
                value,
            })
        };
        let frac = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        for (name, [p, u, t, r]) in &self.psg {
            push("psg_predicted", name, *p as f64);
            push("psg_uncertain", name, *u as f64);
            push("psg_tiles", name, *t as f64);
            push("psg_recomputed_tiles", name, *r as f64);
            push("psg_uncertain_fraction", name, frac(*u, *p));
            push("psg_recomputed_fraction", name, frac(*r, *t));
        }
        for (name, e, t) in &self.slu {
            push("slu_executed", name, *e as f64);
            push("slu_total", name, *t as f64);
            push("slu_executed_fraction", name, frac(*e, *t));
            if let Some((_, d)) = self.slu_decisive.iter().find(|(n, _)| n == name) {
                push("slu_decisive_fraction", name, frac(*d, *t));
            }
        }
        if self.phases != PhaseCounters::default() {
            for (name, c) in self.phases.named() {
                push("phase_macs_int8", name, c.macs_int8 as f64);
                push("phase_macs_int16", name, c.macs_int16 as f64);
                push("phase_bytes_in", name, c.bytes_in as f64);
                push("phase_bytes_out", name, c.bytes_out as f64);
            }
        }
        rows
    }
}

/// Everything the host needs to continue a run (stored with the engine's checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct HostState {
    seed: u64,
    batch: usize,
    train_len: usize,
    /// Current epoch, 0-based.
    epoch: u32,
    /// Next batch index within the epoch.
    next_batch: u64,
    /// Batches (kept or dropped) done over the whole run.
    global_step: u64,
    /// Added to `global_step` to form `Batch::seq`: a run started with `--init` from another run's
    /// checkpoint continues that run's numbering, because an engine never applies a `seq` twice
    /// (or out of order) and the restored engine remembers the last one it applied.
    seq_base: u64,
    acc: EpochAcc,
    rows: Vec<EpochRow>,
    diag: Vec<DiagRow>,
    observers: Vec<(String, Vec<u8>)>,
    engine: Vec<u8>,
}

fn encode_checkpoint(s: &HostState) -> Result<Vec<u8>, HostError> {
    let mut out = MAGIC.to_vec();
    bincode::serialize_into(&mut out, s)
        .map_err(|e| HostError::Config(format!("cannot encode the host checkpoint: {e}")))?;
    Ok(out)
}

fn decode_checkpoint(bytes: &[u8], path: &Path) -> Result<HostState, HostError> {
    if let Some(old) = OLD_MAGICS.iter().find(|m| bytes.starts_with(m.as_slice())) {
        return Err(HostError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "written by an older e2train ({} header): it cannot be resumed or used with --init",
                String::from_utf8_lossy(old.as_slice())
            ),
        });
    }
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| HostError::Checkpoint {
            path: path.to_path_buf(),
            reason: "not an e2train host checkpoint (wrong magic)".into(),
        })?;
    bincode::deserialize(body).map_err(|e| HostError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("corrupt: {e}"),
    })
}

/// Summary of a run (what `summary.json` holds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub model: String,
    pub dataset: String,
    pub method: String,
    pub seed: u64,
    pub epochs_planned: u32,
    pub epochs_done: u32,
    pub finished: bool,
    pub final_test_acc: f64,
    pub final_test_loss: f64,
    pub best_test_acc: f64,
    /// 1-based; 0 when no epoch finished.
    pub best_epoch: u32,
    /// Sum of the epochs' wall time.
    pub total_seconds: f64,
    pub train_images_per_s: f64,
    pub counters: Counters,
    pub kept_batches: u64,
    pub dropped_batches: u64,
    pub git_rev: Option<String>,
    pub epochs: Vec<EpochRow>,
}

impl RunSummary {
    fn new(cfg: &RunConfig, rows: &[EpochRow]) -> Self {
        let mut counters = Counters::default();
        rows.iter().for_each(|r| counters.accumulate(&r.counters));
        let best = rows.iter().fold(None::<&EpochRow>, |b, r| match b {
            Some(b) if b.test_acc >= r.test_acc => Some(b),
            _ => Some(r),
        });
        let last = rows.last();
        let train_seconds: f64 = rows.iter().map(|r| r.train_seconds).sum();
        let train_samples: u64 = rows.iter().map(|r| r.train_samples).sum();
        RunSummary {
            run_dir: cfg.out.clone(),
            model: cfg.model.to_string(),
            dataset: cfg.dataset.clone(),
            method: cfg.method.label(),
            seed: cfg.seed,
            epochs_planned: cfg.epochs,
            epochs_done: rows.len() as u32,
            finished: rows.len() as u32 >= cfg.epochs,
            final_test_acc: last.map_or(0.0, |r| r.test_acc),
            final_test_loss: last.map_or(0.0, |r| r.test_loss),
            best_test_acc: best.map_or(0.0, |r| r.test_acc),
            best_epoch: best.map_or(0, |r| r.epoch),
            total_seconds: rows.iter().map(|r| r.seconds).sum(),
            train_images_per_s: if train_seconds > 0.0 {
                train_samples as f64 / train_seconds
            } else {
                0.0
            },
            counters,
            kept_batches: rows.iter().map(|r| r.kept_batches).sum(),
            dropped_batches: rows.iter().map(|r| r.dropped_batches).sum(),
            git_rev: cfg.git_rev.clone(),
            epochs: rows.to_vec(),
        }
    }
}

impl fmt::Display for RunSummary {
    /// The result table printed at the end of a run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>5} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8}",
            "epoch", "lr", "train loss", "train acc", "test loss", "test acc", "seconds", "img/s"
        )?;
        for r in &self.epochs {
            writeln!(
                f,
                "{:>5} {:>9.5} {:>10.4} {:>8.2}% {:>9.4} {:>7.2}% {:>8.1} {:>8.0}",
                r.epoch,
                r.lr,
                r.train_loss,
                100.0 * r.train_acc,
                r.test_loss,
                100.0 * r.test_acc,
                r.seconds,
                r.images_per_s
            )?;
        }
        writeln!(f, "run        {}", self.run_dir.display())?;
        writeln!(
            f,
            "model      {} on {} ({})",
            self.model, self.dataset, self.method
        )?;
        writeln!(
            f,
            "epochs     {}/{}{}; batches kept {}, dropped {}",
            self.epochs_done,
            self.epochs_planned,
            if self.finished { "" } else { " (unfinished)" },
            self.kept_batches,
            self.dropped_batches
        )?;
        writeln!(
            f,
            "test acc   final {:.2}%, best {:.2}% (epoch {})",
            100.0 * self.final_test_acc,
            100.0 * self.best_test_acc,
            self.best_epoch
        )?;
        write!(
            f,
            "time       {:.1} s, {:.0} training images/s",
            self.total_seconds, self.train_images_per_s
        )
    }
}

/// Load the run's data set (with `subset` / `test_subset` applied).
pub fn load_data(cfg: &RunConfig) -> Result<Dataset, HostError> {
    let ds = e2t_data::load(cfg.dataset_name()?, cfg.data_dir.as_deref())?;
    Ok(ds.subset(cfg.subset, cfg.test_subset))
}

/// Load the data set and derive the engine's configuration from it (shape, classes, mean/std of the
/// training split actually used).
pub fn prepare(cfg: &RunConfig) -> Result<(Dataset, EngineConfig), HostError> {
    let data = load_data(cfg)?;
    let ec = cfg.engine_config(&data);
    Ok((data, ec))
}

/// Load the data set and run. See [`run_with_data`].
pub fn run(
    cfg: &RunConfig,
    engine: Box<dyn StepEngine>,
    observers: Vec<Box<dyn EpochObserver>>,
    progress: bool,
) -> Result<RunSummary, HostError> {
    let data = load_data(cfg)?;
    run_with_data(cfg, &data, engine, observers, progress)
}

/// How progress is shown.
enum Reporter {
    Off,
    Bar(ProgressBar),
    Lines,
}

impl Reporter {
    fn new(progress: bool) -> Self {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        if !progress {
            Reporter::Off
        } else if std::io::stdout().is_terminal() && !ci {
            Reporter::bar()
        } else {
            Reporter::Lines
        }
    }
    fn bar() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                .map(|s| s.progress_chars("=> "));
        if let Ok(s) = style {
            bar.set_style(s);
        }
        Reporter::Bar(bar)
    }
    fn start(&mut self, epoch: u32, epochs: u32, batches: u64, done: u64) {
        if let Reporter::Bar(b) = self {
            b.reset();
            b.set_length(batches);
            b.set_position(done);
            b.set_prefix(format!("epoch {epoch}/{epochs}"));
        }
    }
    fn update(
        &mut self,
        epoch: u32,
        epochs: u32,
        b: u64,
        batches: u64,
        acc: &EpochAcc,
        elapsed: f64,
    ) {
        let msg = format!(
            "loss {:.4} acc {:.2}% {:.0} img/s",
            if acc.samples > 0 {
                acc.loss_sum / acc.samples as f64
            } else {
                0.0
            },
            if acc.samples > 0 {
                100.0 * acc.correct as f64 / acc.samples as f64
            } else {
                0.0
            },
            if elapsed > 0.0 {
                acc.samples as f64 / elapsed
            } else {
                0.0
            }
        );
        match self {
            Reporter::Off => {}
            Reporter::Bar(bar) => {
                bar.set_position(b + 1);
                bar.set_message(msg);
            }
            Reporter::Lines => {
                // About ten lines per epoch: when the batch crosses a tenth, and at the end.
                if (b + 1) * 10 / batches > b * 10 / batches {
                    println!("epoch {epoch}/{epochs} batch {}/{batches} {msg}", b + 1);
                }
            }
        }
    }
    fn finish(&mut self, r: &EpochRow, epochs: u32) {
        let line = format!(
            "epoch {}/{epochs}: lr {:.5} train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.1} s, {:.0} img/s",
            r.epoch,
            r.lr,
            r.train_loss,
            100.0 * r.train_acc,
            r.test_loss,
            100.0 * r.test_acc,
            r.seconds,
            r.images_per_s
        );
        match self {
            Reporter::Off => {}
            Reporter::Bar(bar) => {
                bar.finish_and_clear();
                println!("{line}");
            }
            Reporter::Lines => println!("{line}"),
        }
    }
}

fn engine_err(context: String) -> impl FnOnce(e2t_core::EngineError) -> HostError {
    move |source| HostError::Engine { context, source }
}

/// The header of `epochs.csv` for a set of observers.
pub fn epoch_columns(observers: &[Box<dyn EpochObserver>]) -> Vec<String> {
    let mut h: Vec<String> = BASE_COLUMNS.iter().map(|s| s.to_string()).collect();
    h.extend(
        Counters::default()
            .fields()
            .iter()
            .map(|(n, _)| n.to_string()),
    );
    h.push("kept_batches".into());
    h.push("dropped_batches".into());
    for o in observers {
        h.extend(o.columns());
    }
    h
}

fn csv_bytes(
    header: &[String],
    rows: impl Iterator<Item = Vec<String>>,
) -> Result<Vec<u8>, HostError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| HostError::Config(format!("cannot format CSV: {e}"));
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.into_inner()
        .map_err(|e| HostError::Config(format!("cannot format CSV: {e}")))
}

fn row_record(r: &EpochRow) -> Vec<String> {
    let mut v = vec![
        r.epoch.to_string(),
        r.lr.to_string(),
        r.train_loss.to_string(),
        r.train_acc.to_string(),
        r.test_loss.to_string(),
        r.test_acc.to_string(),
        format!("{:.3}", r.seconds),
        format!("{:.1}", r.images_per_s),
    ];
    v.extend(r.counters.fields().iter().map(|(_, x)| x.to_string()));
    v.push(r.kept_batches.to_string());
    v.push(r.dropped_batches.to_string());
    v.extend(r.extra.iter().cloned());
    v
}

fn write_tables(dir: &Path, header: &[String], st: &HostState) -> Result<(), HostError> {
    write_atomic(
        &dir.join(EPOCHS_FILE),
        &csv_bytes(header, st.rows.iter().map(row_record))?,
    )?;
    let diag_header: Vec<String> = DIAG_COLUMNS.iter().map(|s| s.to_string()).collect();
    let diag = st.diag.iter().map(|d| {
        vec![
            d.epoch.to_string(),
            d.kind.clone(),
            d.name.clone(),
            d.value.to_string(),
        ]
    });
    write_atomic(&dir.join(DIAG_FILE), &csv_bytes(&diag_header, diag)?)
}

fn write_summary(dir: &Path, s: &RunSummary) -> Result<(), HostError> {
    let json = serde_json::to_vec_pretty(s)
        .map_err(|e| HostError::Config(format!("cannot encode summary: {e}")))?;
    write_atomic(&dir.join(SUMMARY_FILE), &json)
}

fn save_checkpoint(
    dir: &Path,
    st: &mut HostState,
    engine: &dyn StepEngine,
    observers: &[Box<dyn EpochObserver>],
) -> Result<(), HostError> {
    st.engine = engine
        .checkpoint()
        .map_err(engine_err("writing its checkpoint".into()))?;
    st.observers = observers
        .iter()
        .map(|o| (o.name().to_string(), o.save_state()))
        .collect();
    let bytes = encode_checkpoint(st)?;
    st.engine = Vec::new();
    write_atomic(&dir.join(CHECKPOINT_FILE), &bytes)
}

/// The engine's checkpoint bytes (for `engine.restore`) from a run folder, a host `checkpoint.bin`,
/// or a raw engine checkpoint file (returned as is). Used by `--init`.
pub fn engine_checkpoint(path: &Path) -> Result<Vec<u8>, HostError> {
    Ok(read_init(path)?.0)
}

/// Engine bytes and the next free sequence number (0 for a raw engine checkpoint).
fn read_init(path: &Path) -> Result<(Vec<u8>, u64), HostError> {
    let p = if path.is_dir() {
        path.join(CHECKPOINT_FILE)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&p).map_err(|e| HostError::io(&p, e))?;
    if bytes.starts_with(MAGIC) || OLD_MAGICS.iter().any(|m| bytes.starts_with(m.as_slice())) {
        let st = decode_checkpoint(&bytes, &p)?;
        Ok((st.engine, st.seq_base + st.global_step))
    } else {
        Ok((bytes, 0))
    }
}

/// Run (or resume, if `cfg.resume`) training on an already loaded data set.
///
/// `progress`: show a progress bar (a terminal) or plain lines (not a terminal, or `CI=true`);
/// `false` prints nothing.
pub fn run_with_data(
    cfg: &RunConfig,
    data: &Dataset,
    mut engine: Box<dyn StepEngine>,
    mut observers: Vec<Box<dyn EpochObserver>>,
    progress: bool,
) -> Result<RunSummary, HostError> {
    let dir = cfg.out.as_path();
    let px = data.shape.pixels();
    if data.train.is_empty() {
        return Err(HostError::Config(format!(
            "data set '{}' has no training samples",
            data.name
        )));
    }
    for (name, s) in [("training", &data.train), ("test", &data.test)] {
        if s.images.len() != s.len() * px {
            return Err(HostError::Config(format!(
                "data set '{}': the {name} split has {} pixel bytes for {} labels of {px} pixels",
                data.name,
                s.images.len(),
                s.len()
            )));
        }
    }
    let ec = engine.config();
    if ec.input != data.shape || ec.classes != data.classes {
        return Err(HostError::Config(format!(
            "the engine was configured for input {:?} and {} classes, but data set '{}' has {:?} and {} classes",
            ec.input, ec.classes, data.name, data.shape, data.classes
        )));
    }
    let mut names: Vec<&str> = observers.iter().map(|o| o.name()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(HostError::Config(format!(
            "observer names must be unique: {names:?}"
        )));
    }
    let header = epoch_columns(&observers);
    let batches = data.train.len().div_ceil(cfg.batch) as u64;
    let sched = LrSchedule::new(
        cfg.lr,
        cfg.schedule.clone(),
        cfg.warmup_epochs,
        cfg.epochs,
        batches,
    );

    std::fs::create_dir_all(dir).map_err(|e| HostError::io(dir, e))?;
    clean_stale(dir);
    let ckpt_path = dir.join(CHECKPOINT_FILE);
    // A run that stopped before its first checkpoint has nothing to continue from: it starts over.
    let mut st = if cfg.resume && ckpt_path.exists() {
        let bytes = std::fs::read(&ckpt_path).map_err(|e| HostError::io(&ckpt_path, e))?;
        let mut st = decode_checkpoint(&bytes, &ckpt_path)?;
        if (st.seed, st.batch, st.train_len) != (cfg.seed, cfg.batch, data.train.len()) {
            return Err(HostError::Checkpoint {
                path: ckpt_path,
                reason: format!(
                    "written for seed {}, batch {}, {} training samples; the resumed run has seed {}, batch {}, {}",
                    st.seed,
                    st.batch,
                    st.train_len,
                    cfg.seed,
                    cfg.batch,
                    data.train.len()
                ),
            });
        }
        engine
            .restore(&st.engine)
            .map_err(engine_err(format!("restoring {}", ckpt_path.display())))?;
        st.engine = Vec::new();
        for o in observers.iter_mut() {
            if let Some((_, s)) = st.observers.iter().find(|(n, _)| n == o.name()) {
                o.restore_state(s).map_err(|reason| HostError::Observer {
                    name: o.name().into(),
                    reason,
                })?;
            }
        }
        st
    } else {
        for f in [CHECKPOINT_FILE, EPOCHS_FILE] {
            if !cfg.resume && dir.join(f).exists() {
                return Err(HostError::Config(format!(
                    "{} already holds a run ({f} exists): use --resume {} to continue it, or choose another --out",
                    dir.display(),
                    dir.display()
                )));
            }
        }
        let mut seq_base = 0;
        if let Some(init) = &cfg.init {
            let (bytes, next_seq) = read_init(init)?;
            seq_base = next_seq;
            engine
                .load_weights(&bytes)
                .map_err(engine_err(format!("loading --init {}", init.display())))?;
        }
        HostState {
            seed: cfg.seed,
            batch: cfg.batch,
            train_len: data.train.len(),
            epoch: 0,
            next_batch: 0,
            global_step: 0,
            seq_base,
            acc: EpochAcc::default(),
            rows: Vec::new(),
            diag: Vec::new(),
            observers: Vec::new(),
            engine: Vec::new(),
        }
    };
    let settings = cfg.to_settings().to_toml()?;
    write_atomic(&dir.join(CONFIG_FILE), settings.as_bytes())?;
    write_tables(dir, &header, &st)?;

    let mut rep = Reporter::new(progress);
    let m = &cfg.method;
    while st.epoch < cfg.epochs {
        let epoch = st.epoch;
        let plan = EpochPlan::new(
            &data.train,
            data.shape,
            cfg.batch,
            cfg.seed,
            epoch as u64,
            cfg.augment,
        );
        if st.next_batch == 0 {
            st.acc = EpochAcc::default();
            observers
                .iter_mut()
                .for_each(|o| o.on_epoch_start(epoch + 1));
        }
        rep.start(epoch + 1, cfg.epochs, batches, st.next_batch);
        let seg_start = Instant::now();
        let seconds_before = st.acc.train_seconds;
        for b in st.next_batch..batches {
            let step = st.global_step;
            let seq = st.seq_base + step;
            let lr = sched.lr_at(step);
            let dropped =
                m.smd && rng_for(cfg.seed, TAG_SMD, epoch as u64, b).random::<f32>() < m.smd_p;
            if dropped {
                st.acc.dropped += 1;
                if m.smd_momentum_step {
                    engine
                        .skip_step(lr)
                        .map_err(engine_err(format!("on the SMD skip step {step}")))?;
                }
                observers.iter_mut().for_each(|o| o.on_dropped(seq, lr));
            } else {
                let (images, labels) = plan.batch(b as usize);
                let batch = Batch {
                    seq,
                    lr,
                    images,
                    labels,
                };
                let r = engine
                    .step(&batch)
                    .map_err(engine_err(format!("on step {step}")))?;
                if r.seq != seq {
                    return Err(HostError::Engine {
                        context: format!("on step {step}"),
                        source: e2t_core::EngineError::Batch {
                            seq: r.seq,
                            reason: format!("answered for batch {seq}"),
                        },
                    });
                }
                if !r.loss.is_finite() {
                    return Err(HostError::Diverged {
                        epoch: epoch + 1,
                        step,
                        loss: r.loss,
                    });
                }
                st.acc.add(&r);
                observers.iter_mut().for_each(|o| o.on_step(&r));
            }
            st.global_step += 1;
            st.next_batch = b + 1;
            let elapsed = seconds_before + seg_start.elapsed().as_secs_f64();
            rep.update(epoch + 1, cfg.epochs, b, batches, &st.acc, elapsed);
            if let Some(every) = cfg.checkpoint_every {
                if st.global_step % every == 0 && b + 1 < batches {
                    st.acc.train_seconds = elapsed;
                    save_checkpoint(dir, &mut st, engine.as_ref(), &observers)?;
                }
            }
        }
        st.acc.train_seconds = seconds_before + seg_start.elapsed().as_secs_f64();

        let eval_start = Instant::now();
        // Precise BN: the first batches of this epoch's order re-estimate the BN statistics. Their
        // accelerator work is forward work of this epoch (booked in its counters and energy).
        let calib = (cfg.bn_calibrate as u64).min(batches);
        if calib > 0 {
            let before = engine.counters();
            for b in 0..calib {
                let (images, _) = plan.batch(b as usize);
                engine
                    .calibrate_bn(&images, b as u32)
                    .map_err(engine_err(format!(
                        "re-estimating BN statistics after epoch {}",
                        epoch + 1
                    )))?;
            }
            let d = engine.counters().delta_since(&before);
            st.acc.counters.accumulate(&d);
            st.acc.phases.forward.accumulate(&d);
            observers.iter_mut().for_each(|o| o.on_extra_work(&d));
        }
        let mut ev = EvalResult::default();
        let chunk = cfg.eval_batch.max(1);
        for (imgs, labs) in data
            .test
            .images
            .chunks(chunk * px)
            .zip(data.test.labels.chunks(chunk))
        {
            let r = engine
                .evaluate(imgs, labs)
                .map_err(engine_err(format!("evaluating after epoch {}", epoch + 1)))?;
            ev.merge(&r);
        }
        let acc = &st.acc;
        let mut row = EpochRow {
            epoch: epoch + 1,
            lr: sched.lr_at((epoch as u64 + 1) * batches - 1),
            train_loss: if acc.samples > 0 {
                acc.loss_sum / acc.samples as f64
            } else {
                0.0
            },
            train_acc: if acc.samples > 0 {
                acc.correct as f64 / acc.samples as f64
            } else {
                0.0
            },
            test_loss: ev.mean_loss(),
            test_acc: ev.accuracy(),
            seconds: acc.train_seconds + eval_start.elapsed().as_secs_f64(),
            images_per_s: if acc.train_seconds > 0.0 {
                acc.samples as f64 / acc.train_seconds
            } else {
                0.0
            },
            counters: acc.counters,
            kept_batches: acc.kept,
            dropped_batches: acc.dropped,
            train_samples: acc.samples,
            train_seconds: acc.train_seconds,
            extra: Vec::new(),
        };
        for o in observers.iter_mut() {
            let v = o.on_epoch_end(&row).map_err(|reason| HostError::Observer {
                name: o.name().into(),
                reason,
            })?;
            let want = o.columns().len();
            if v.len() != want {
                return Err(HostError::Observer {
                    name: o.name().into(),
                    reason: format!("gave {} values for {want} columns", v.len()),
                });
            }
            row.extra.extend(v);
        }
        let diag = st.acc.diag_rows(epoch + 1);
        st.diag.extend(diag);
        rep.finish(&row, cfg.epochs);
        st.rows.push(row);
        st.epoch += 1;
        st.next_batch = 0;
        st.acc = EpochAcc::default();
        write_tables(dir, &header, &st)?;
        save_checkpoint(dir, &mut st, engine.as_ref(), &observers)?;
        write_summary(dir, &RunSummary::new(cfg, &st.rows))?;
    }
    let summary = RunSummary::new(cfg, &st.rows);
    write_summary(dir, &summary)?;
    Ok(summary)
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
