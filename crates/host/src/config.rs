//! `e2train train`'s settings: the flags ([`TrainArgs`]), the config file (the same keys, snake_case,
//! in TOML) and their resolution into a validated [`RunConfig`].
//!
//! Precedence: built-in defaults < `--config FILE.toml` < flags. Unknown keys in the file are an
//! error. The run folder's `config.toml` is written in the same format with every key set, so
//! `--config runs/X/config.toml` repeats a run and `--resume runs/X` continues it.

use crate::HostError;
use e2t_core::{
    EngineConfig, MethodConfig, ModelKind, Precision, PsgFallback, PsgThreshold, TrainOnly,
};
use e2t_data::{Dataset, DatasetName};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every setting of a run, each optional so a layer (file, flags) can leave it to the layer below.
/// Field names are the TOML keys; the flags are the same names in kebab-case.
#[derive(clap::Args, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Model: resnetN with N = 6n+2 (resnet8, resnet20, ...) or mobilenetv2 [default: resnet8]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Data set: fashion-mnist, mnist or cifar10 [default: fashion-mnist]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Folder holding the data set files (else $E2TRAIN_DATA, else the Debian location)
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Training epochs [default: 1]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Mini-batch size [default: 128]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 0.05]
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Learning-rate schedule after warm-up: constant, step or cosine [default: cosine]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Step schedule: epochs at which the rate is multiplied by gamma, e.g. 5,8 [default: 50% and 75% of the epochs]
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<f64>>,
    /// Step schedule: factor applied at each milestone [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// Epochs of linear warm-up from lr/steps to lr (fractions allowed) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<f64>,
    /// SGD momentum [default: 0.9]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// Weight decay [default: 5e-4]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Seed of everything random (weights, shuffling, augmentation, SMD) [default: 0]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Train on the first N training samples only
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<usize>,
    /// Evaluate on the first N test samples only
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_subset: Option<usize>,
    /// CIFAR-style augmentation: pad 4 + random crop, horizontal flip [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
    /// Run folder [default: runs/<UTC time>-<model>-<dataset>-<method>/]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Worker threads for the engine (default: all cores)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Method preset: fp32, baseline (accelerator numerics) or e2train (SMD+SLU+PSG) [default: fp32]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Stochastic mini-batch dropping on/off (overrides the method preset)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smd: Option<bool>,
    /// SMD: probability of dropping a mini-batch [default: 0.5]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smd_p: Option<f64>,
    /// SMD: apply the momentum/weight-decay step on dropped batches [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smd_momentum_step: Option<bool>,
    /// Selective layer update on/off (overrides the method preset)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slu: Option<bool>,
    /// SLU: target executed fraction of gated-block cost, in (0, 1] [default: 0.5]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slu_target: Option<f64>,
    /// SLU: weight of the computation-cost regulariser [default: 1.0]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slu_beta: Option<f64>,
    /// SLU: also gate the shape-changing (downsampling) residual blocks, as the reference does
    /// [default: false; ResNet-8 gates them either way]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slu_gate_downsample: Option<bool>,
    /// SLU: narrow the gates' training noise with the learning rate, so training decisions end at
    /// the evaluation rule p > 0.5 (false: the reference's Bernoulli decisions throughout)
    /// [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slu_anneal: Option<bool>,
    /// SLU: start every gated block with an identity shortcut as the identity (gamma = 0 in the
    /// BatchNorm that joins the shortcut), so early stochastic gating does not disturb the network (false: the reference's
    /// gamma = 1) [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slu_identity_init: Option<bool>,
    /// Predictive sign gradient descent on/off (overrides the method preset)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psg: Option<bool>,
    /// PSG threshold: abs:<value> (absolute) or rel:<c> (c x max|P| of the layer) [default: rel:0.001]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psg_threshold: Option<String>,
    /// Learning-rate factor for PSG's sign-updated weights (1.0 = the reference) [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psg_lr_scale: Option<f64>,
    /// PSG: what an uncertain entry gets: `recompute` (exact sign from an INT16 recompute of its
    /// tile) or `zero` (sign 0, no recompute: the reference code's --sparsify) [default: recompute]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psg_fallback: Option<String>,
    /// Accelerator MAC array shape RxC [default: 16x16]
    #[arg(long, value_name = "RxC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array: Option<String>,
    /// Start from this checkpoint's weights (a run's checkpoint.bin, a run folder, or an engine checkpoint)
    #[arg(long, value_name = "CHECKPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Which parameters train: all, or last (the classifier only) [default: all]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_only: Option<String>,
    /// Images per evaluation call [default: 500]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_batch: Option<usize>,
    /// Also checkpoint every N batches (always at the end of each epoch)
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// Batches of training images that re-estimate the BatchNorm statistics before each
    /// evaluation ("precise BN"); 0 evaluates with the running statistics [default: 8]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_calibrate: Option<u32>,
}

/// Flags of `e2train train`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct TrainArgs {
    /// Read settings from this TOML file (flags override it; unknown keys are an error)
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Continue the run in DIR from its checkpoint (only --epochs, --data, --threads, --eval-batch and
    /// --checkpoint-every may change)
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// The keys that may differ when a run is resumed: they do not change what is computed.
const RESUME_MAY_CHANGE: [&str; 6] = [
    "epochs",
    "data",
    "threads",
    "eval_batch",
    "checkpoint_every",
    "test_subset",
];

/// Learning-rate schedule after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` at each milestone (in epochs, fractions allowed).
    Step {
        milestones: Vec<f32>,
        gamma: f32,
    },
    /// Half-cosine from the peak rate to 0 over the steps after warm-up.
    Cosine,
}

/// A validated, fully resolved run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: ModelKind,
    /// Canonical data set name (see [`DatasetName`]).
    pub dataset: String,
    pub data_dir: Option<PathBuf>,
    pub epochs: u32,
    pub batch: usize,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_epochs: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub seed: u64,
    pub subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub augment: bool,
    pub out: PathBuf,
    pub method: MethodConfig,
    pub eval_batch: usize,
    pub checkpoint_every: Option<u64>,
    /// Training batches that re-estimate BN statistics before each evaluation (0: none; runs
    /// recorded before this setting existed read as 0).
    #[serde(default)]
    pub bn_calibrate: u32,
    pub threads: Option<usize>,
    pub array: (u32, u32),
    pub init: Option<PathBuf>,
    pub train_only: TrainOnly,
    /// Recorded in summary.json when the caller knows it.
    #[serde(default)]
    pub git_rev: Option<String>,
    /// Continue from `out/checkpoint.bin` instead of starting a new run.
    #[serde(default)]
    pub resume: bool,
}

/// Precise-BN batches before each evaluation. Sign updates (PSG) move every weight each step, so
/// momentum-0.1 running statistics lag the network; 8 batches of 128 re-estimate them for about
/// 3% of an epoch's forward work at 12,000 images (docs/results.md, session 5).
pub const DEFAULT_BN_CALIBRATE: u32 = 8;
/// `--slu-anneal` when not given. ResNet-20, 12,000 images x 4 epochs, smd+slu+psg0 at target 0.3:
/// see docs/results.md (session 6) for the runs that chose it.
pub const DEFAULT_SLU_ANNEAL: bool = true;
/// `--slu-identity-init` when not given. ResNet-20, 12,000 images x 4 epochs, smd+slu+psg0 at
/// target 0.15: see docs/results.md (session 7) for the runs that chose it.
pub const DEFAULT_SLU_IDENTITY_INIT: bool = true;

fn bad(key: &str, msg: impl std::fmt::Display) -> HostError {
    HostError::Config(format!("{}: {msg}", flag(key)))
}

fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// `f32` -> `f64` through the shortest decimal form, so `0.05f32` is written as `0.05` in TOML.
fn pretty(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

fn finite(key: &str, v: f64) -> Result<f64, HostError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad(key, format!("{v} is not a finite number")))
    }
}

/// A method name: a preset (`fp32`, `baseline`, `e2train`) or a `+`-joined combination of `smd`,
/// `slu` and `psg` (or `psg0`: PSG with `--psg-fallback zero`) on the accelerator (e.g. `smd+slu`),
/// optionally prefixed by `fp32+`. These are
/// also the labels `summary.json` records, so a label can be fed back as `--method`.
pub fn parse_method(s: &str) -> Result<MethodConfig, HostError> {
    let l = s.trim().to_ascii_lowercase();
    match l.as_str() {
        "fp32" => return Ok(MethodConfig::fp32()),
        "baseline" => return Ok(MethodConfig::baseline()),
        "e2train" | "e2-train" => return Ok(MethodConfig::e2train()),
        _ => {}
    }
    let mut m = MethodConfig::baseline();
    let mut parts = l.split('+').map(str::trim).peekable();
    if parts.peek() == Some(&"fp32") {
        m = MethodConfig::fp32();
        parts.next();
    }
    let mut any = false;
    for p in parts {
        match p {
            "smd" if !m.smd => m.smd = true,
            "slu" if !m.slu => m.slu = true,
            "psg" if !m.psg => m.psg = true,
            "psg0" if !m.psg => {
                m.psg = true;
                m.psg_fallback = PsgFallback::Zero;
            }
            _ => {
                return Err(bad(
                    "method",
                    format!(
                        "'{s}' is not fp32, baseline, e2train or a +-joined set of smd, slu, psg or psg0 (e.g. smd+slu)"
                    ),
                ));
            }
        }
        any = true;
    }
    if !any {
        return Err(bad("method", format!("'{s}' names no technique")));
    }
    Ok(m)
}

/// Parse `RxC` (e.g. `16x16`).
pub fn parse_array(s: &str) -> Result<(u32, u32), HostError> {
    let err = || {
        bad(
            "array",
            format!("'{s}' is not RxC with R and C in 1..=256 (e.g. 16x16)"),
        )
    };
    let (r, c) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
    let r: u32 = r.trim().parse().map_err(|_| err())?;
    let c: u32 = c.trim().parse().map_err(|_| err())?;
    if !(1..=256).contains(&r) || !(1..=256).contains(&c) {
        return Err(err());
    }
    Ok((r, c))
}

/// Parse `abs:<v>` or `rel:<c>`.
pub fn parse_psg_threshold(s: &str) -> Result<PsgThreshold, HostError> {
    let err = |why: &str| {
        bad(
            "psg_threshold",
            format!("'{s}' {why}: expected abs:<value> (e.g. abs:5e-5) or rel:<c> (e.g. rel:0.05)"),
        )
    };
    let (kind, v) = s.trim().split_once(':').ok_or_else(|| err("has no kind"))?;
    let v: f32 = v.trim().parse().map_err(|_| err("has no number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(err("is negative or not finite"));
    }
    match kind.trim().to_ascii_lowercase().as_str() {
        "abs" | "absolute" => Ok(PsgThreshold::Absolute(v)),
        "rel" | "relative" | "adaptive" => {
            if v > 1.0 {
                return Err(err("is above 1 for a relative threshold"));
            }
            Ok(PsgThreshold::Adaptive(v))
        }
        _ => Err(err("has an unknown kind")),
    }
}

/// Parse `recompute` or `zero`.
pub fn parse_psg_fallback(s: &str) -> Result<PsgFallback, HostError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "recompute" => Ok(PsgFallback::Recompute),
        "zero" | "sparsify" => Ok(PsgFallback::Zero),
        _ => Err(bad(
            "psg_fallback",
            format!("'{s}' is not a fallback: expected recompute or zero"),
        )),
    }
}

fn psg_fallback_str(f: PsgFallback) -> &'static str {
    match f {
        PsgFallback::Recompute => "recompute",
        PsgFallback::Zero => "zero",
    }
}

fn psg_threshold_str(t: PsgThreshold) -> String {
    match t {
        PsgThreshold::Absolute(v) => format!("abs:{v}"),
        PsgThreshold::Adaptive(v) => format!("rel:{v}"),
    }
}

impl Settings {
    /// The keys that are set, in declaration order.
    pub fn given(&self) -> Vec<String> {
        match toml::Table::try_from(self) {
            Ok(t) => t.keys().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `self` with every key that `top` sets replaced by `top`'s value.
    pub fn overlay(&self, top: &Settings) -> Result<Settings, HostError> {
        let ser = |s: &Settings| {
            toml::Table::try_from(s).map_err(|e| HostError::Config(format!("settings: {e}")))
        };
        let mut t = ser(self)?;
        t.extend(ser(top)?);
        t.try_into()
            .map_err(|e: toml::de::Error| HostError::Config(format!("settings: {e}")))
    }

    /// Read a TOML settings file; unknown keys and wrong types are errors naming the file.
    pub fn from_file(path: &Path) -> Result<Settings, HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| HostError::io(path, e))?;
        toml::from_str(&text).map_err(|e| HostError::Config(format!("{}: {e}", path.display())))
    }

    pub fn to_toml(&self) -> Result<String, HostError> {
        toml::to_string(self)
            .map_err(|e| HostError::Config(format!("cannot write settings as TOML: {e}")))
    }

    /// Validate and fill in defaults. `now` names the default run folder.
    pub fn resolve(&self, now: std::time::SystemTime) -> Result<RunConfig, HostError> {
        let model: ModelKind = self
            .model
            .as_deref()
            .unwrap_or("resnet8")
            .parse()
            .map_err(|e: e2t_core::config::ParseModelError| bad("model", e))?;
        let dataset: DatasetName = self
            .dataset
            .as_deref()
            .unwrap_or("fashion-mnist")
            .parse()
            .map_err(|e| bad("dataset", e))?;
        let epochs = self.epochs.unwrap_or(1);
        if epochs == 0 {
            return Err(bad("epochs", "must be at least 1"));
        }
        let batch = self.batch.unwrap_or(128);
        if batch == 0 {
            return Err(bad("batch", "must be at least 1"));
        }
        let lr = finite("lr", self.lr.unwrap_or(0.05))?;
        if lr <= 0.0 {
            return Err(bad("lr", format!("{lr} must be positive")));
        }
        let gamma = finite("gamma", self.gamma.unwrap_or(0.1))?;
        if gamma <= 0.0 {
            return Err(bad("gamma", format!("{gamma} must be positive")));
        }
        let schedule = match self
            .schedule
            .as_deref()
            .unwrap_or("cosine")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "constant" | "const" | "none" => Schedule::Constant,
            "cosine" | "cos" => Schedule::Cosine,
            "step" | "multistep" => {
                let ms = match &self.milestones {
                    Some(m) => m.clone(),
                    None => vec![0.5 * epochs as f64, 0.75 * epochs as f64],
                };
                for (i, &m) in ms.iter().enumerate() {
                    finite("milestones", m)?;
                    if m <= 0.0 || (i > 0 && m <= ms[i - 1]) {
                        return Err(bad(
                            "milestones",
                            format!("{ms:?} must be positive and increasing"),
                        ));
                    }
                }
                Schedule::Step {
                    milestones: ms.iter().map(|&m| m as f32).collect(),
                    gamma: gamma as f32,
                }
            }
            other => {
                return Err(bad(
                    "schedule",
                    format!("'{other}' is not constant, step or cosine"),
                ));
            }
        };
        if self.milestones.is_some() && !matches!(schedule, Schedule::Step { .. }) {
            return Err(bad("milestones", "only applies to --schedule step"));
        }
        let warmup = finite("warmup_epochs", self.warmup_epochs.unwrap_or(0.0))?;
        if warmup < 0.0 || warmup > epochs as f64 {
            return Err(bad(
                "warmup_epochs",
                format!("{warmup} must be in 0..={epochs} (the number of epochs)"),
            ));
        }
        let momentum = finite("momentum", self.momentum.unwrap_or(0.9))?;
        if !(0.0..1.0).contains(&momentum) {
            return Err(bad("momentum", format!("{momentum} must be in [0, 1)")));
        }
        let weight_decay = finite("weight_decay", self.weight_decay.unwrap_or(5e-4))?;
        if weight_decay < 0.0 {
            return Err(bad(
                "weight_decay",
                format!("{weight_decay} must not be negative"),
            ));
        }
        let seed = self.seed.unwrap_or(0);
        if seed > i64::MAX as u64 {
            // TOML integers are 64-bit signed; the resolved config must be writable.
            return Err(bad("seed", format!("{seed} must be below 2^63")));
        }
        for (k, v) in [
            ("subset", self.subset),
            ("test_subset", self.test_subset),
            ("threads", self.threads),
        ] {
            if v == Some(0) {
                return Err(bad(k, "must be at least 1"));
            }
        }
        let eval_batch = self.eval_batch.unwrap_or(500);
        if eval_batch == 0 {
            return Err(bad("eval_batch", "must be at least 1"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(bad("checkpoint_every", "must be at least 1"));
        }

        let mut method = parse_method(self.method.as_deref().unwrap_or("fp32"))?;
        if let Some(v) = self.smd {
            method.smd = v;
        }
        if let Some(v) = self.smd_momentum_step {
            method.smd_momentum_step = v;
        }
        if let Some(v) = self.slu {
            method.slu = v;
        }
        if let Some(v) = self.psg {
            method.psg = v;
        }
        if let Some(p) = self.smd_p {
            let p = finite("smd_p", p)?;
            if !(0.0..1.0).contains(&p) {
                return Err(bad("smd_p", format!("{p} must be in [0, 1)")));
            }
            method.smd_p = p as f32;
        }
        if let Some(t) = self.slu_target {
            let t = finite("slu_target", t)?;
            if !(t > 0.0 && t <= 1.0) {
                return Err(bad("slu_target", format!("{t} must be in (0, 1]")));
            }
            method.slu_target = t as f32;
        }
        if let Some(b) = self.slu_beta {
            let b = finite("slu_beta", b)?;
            if b < 0.0 {
                return Err(bad("slu_beta", format!("{b} must not be negative")));
            }
            method.slu_beta = b as f32;
        }
        if let Some(g) = self.slu_gate_downsample {
            method.slu_gate_downsample = g;
        }
        // The gate noise follows the schedule relative to the peak rate (the engine sees only each
        // step's rate); without SLU it is meaningless, so it stays off and out of the label.
        method.slu_noise_peak_lr = if method.slu && self.slu_anneal.unwrap_or(DEFAULT_SLU_ANNEAL) {
            lr as f32
        } else {
            0.0
        };
        // Like the noise schedule, meaningless without SLU: off then, so configs stay comparable.
        method.slu_identity_init =
            method.slu && self.slu_identity_init.unwrap_or(DEFAULT_SLU_IDENTITY_INIT);
        if let Some(t) = &self.psg_threshold {
            method.psg_threshold = parse_psg_threshold(t)?;
        }
        if let Some(f) = self.psg_lr_scale {
            let f = finite("psg_lr_scale", f)?;
            if f <= 0.0 {
                return Err(bad("psg_lr_scale", format!("{f} must be positive")));
            }
            method.psg_lr_scale = f as f32;
        }
        if let Some(f) = &self.psg_fallback {
            method.psg_fallback = parse_psg_fallback(f)?;
        }
        let array = parse_array(self.array.as_deref().unwrap_or("16x16"))?;
        let train_only = match self
            .train_only
            .as_deref()
            .unwrap_or("all")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "all" => TrainOnly::All,
            "last" => TrainOnly::Last,
            other => return Err(bad("train_only", format!("'{other}' is not all or last"))),
        };
        // A plain fp32 ResNet runs on `e2t_nn::Fp32Engine`, whose checkpoints cannot hold another
        // engine's weights: a resumed or reconnected `--init` run would be rebuilt as that engine.
        if self.init.is_some()
            && method.precision == Precision::Fp32
            && !method.slu
            && !method.psg
            && matches!(model, ModelKind::ResNet { .. })
        {
            return Err(bad(
                "init",
                "the fp32 trainer cannot start from another run's weights: use --method baseline (INT16 accelerator numerics) or an E2-Train method",
            ));
        }
        let out = match &self.out {
            Some(o) => o.clone(),
            None => default_run_dir(now, model, dataset, &method),
        };
        Ok(RunConfig {
            model,
            dataset: dataset.to_string(),
            data_dir: self.data.clone(),
            epochs,
            batch,
            lr: lr as f32,
            schedule,
            warmup_epochs: warmup as f32,
            momentum: momentum as f32,
            weight_decay: weight_decay as f32,
            seed,
            subset: self.subset,
            test_subset: self.test_subset,
            augment: self.augment.unwrap_or(false),
            out,
            method,
            eval_batch,
            checkpoint_every: self.checkpoint_every,
            bn_calibrate: self.bn_calibrate.unwrap_or(DEFAULT_BN_CALIBRATE),
            threads: self.threads,
            array,
            init: self.init.clone(),
            train_only,
            git_rev: None,
            resume: false,
        })
    }
}

impl TrainArgs {
    /// Resolve the flags (and the config file or the resumed run's `config.toml`) into a run.
    pub fn resolve(&self) -> Result<RunConfig, HostError> {
        self.resolve_at(std::time::SystemTime::now())
    }

    pub fn resolve_at(&self, now: std::time::SystemTime) -> Result<RunConfig, HostError> {
        if let Some(dir) = &self.resume {
            let path = dir.join(crate::run::CONFIG_FILE);
            if !path.is_file() {
                return Err(HostError::Config(format!(
                    "--resume {}: no {} there (is it a run folder?)",
                    dir.display(),
                    crate::run::CONFIG_FILE
                )));
            }
            let stored = Settings::from_file(&path)?;
            let changed: Vec<String> = self
                .settings
                .given()
                .into_iter()
                .filter(|k| !RESUME_MAY_CHANGE.contains(&k.as_str()) && k != "out")
                .collect();
            if !changed.is_empty() {
                let list: Vec<String> = changed.iter().map(|k| flag(k)).collect();
                return Err(HostError::Config(format!(
                    "--resume {}: {} cannot change when resuming (the run is defined by its config.toml); only {} may",
                    dir.display(),
                    list.join(", "),
                    RESUME_MAY_CHANGE.map(flag).join(", ")
                )));
            }
            if let Some(o) = &self.settings.out {
                if o != dir {
                    return Err(bad(
                        "out",
                        "cannot be given with --resume (the run continues in its own folder)",
                    ));
                }
            }
            let mut cfg = stored.overlay(&self.settings)?.resolve(now)?;
            cfg.out = dir.clone();
            cfg.resume = true;
            return Ok(cfg);
        }
        let base = match &self.config {
            Some(p) => Settings::from_file(p)?,
            None => Settings::default(),
        };
        base.overlay(&self.settings)?.resolve(now)
    }
}

impl RunConfig {
    /// The resolved run as settings with every key set (what `config.toml` holds).
    pub fn to_settings(&self) -> Settings {
        let (schedule, milestones, gamma) = match &self.schedule {
            Schedule::Constant => ("constant", None, None),
            Schedule::Cosine => ("cosine", None, None),
            Schedule::Step { milestones, gamma } => (
                "step",
                Some(milestones.iter().map(|&m| pretty(m)).collect()),
                Some(pretty(*gamma)),
            ),
        };
        let m = &self.method;
        Settings {
            model: Some(self.model.to_string()),
            dataset: Some(self.dataset.clone()),
            data: self.data_dir.clone(),
            epochs: Some(self.epochs),
            batch: Some(self.batch),
            lr: Some(pretty(self.lr)),
            schedule: Some(schedule.into()),
            milestones,
            gamma,
            warmup_epochs: Some(pretty(self.warmup_epochs)),
            momentum: Some(pretty(self.momentum)),
            weight_decay: Some(pretty(self.weight_decay)),
            seed: Some(self.seed),
            subset: self.subset,
            test_subset: self.test_subset,
            augment: Some(self.augment),
            out: Some(self.out.clone()),
            threads: self.threads,
            method: Some(
                if m.precision == Precision::Fp32 {
                    "fp32"
                } else {
                    "baseline"
                }
                .into(),
            ),
            smd: Some(m.smd),
            smd_p: Some(pretty(m.smd_p)),
            smd_momentum_step: Some(m.smd_momentum_step),
            slu: Some(m.slu),
            slu_target: Some(pretty(m.slu_target)),
            slu_beta: Some(pretty(m.slu_beta)),
            slu_gate_downsample: Some(m.slu_gate_downsample),
            slu_anneal: Some(m.slu_noise_peak_lr > 0.0),
            slu_identity_init: Some(m.slu_identity_init),
            psg: Some(m.psg),
            psg_threshold: Some(psg_threshold_str(m.psg_threshold)),
            psg_lr_scale: Some(pretty(m.psg_lr_scale)),
            psg_fallback: Some(psg_fallback_str(m.psg_fallback).into()),
            array: Some(format!("{}x{}", self.array.0, self.array.1)),
            init: self.init.clone(),
            train_only: Some(match self.train_only {
                TrainOnly::All => "all".into(),
                TrainOnly::Last => "last".into(),
            }),
            eval_batch: Some(self.eval_batch),
            checkpoint_every: self.checkpoint_every,
            bn_calibrate: Some(self.bn_calibrate),
        }
    }

    pub fn dataset_name(&self) -> Result<DatasetName, HostError> {
        self.dataset.parse().map_err(|e| bad("dataset", e))
    }

    /// What the engine is configured with: model, input shape, classes and the training split's
    /// per-channel mean/std from the data set; optimiser and method from the run.
    pub fn engine_config(&self, data: &Dataset) -> EngineConfig {
        let (mean, std) = data.channel_stats();
        EngineConfig {
            model: self.model,
            input: data.shape,
            classes: data.classes,
            mean,
            std,
            method: self.method.clone(),
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            seed: self.seed,
            train_only: self.train_only,
            array: self.array,
        }
    }
}

/// `runs/<UTC time>-<model>-<dataset>-<method label>`.
pub fn default_run_dir(
    now: std::time::SystemTime,
    model: ModelKind,
    data: DatasetName,
    m: &MethodConfig,
) -> PathBuf {
    PathBuf::from("runs").join(format!("{}-{model}-{data}-{}", utc_stamp(now), m.label()))
}

/// `YYYYMMDDTHHMMSSZ` for a time (civil-from-days conversion; no time-zone database needed for UTC).
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a proleptic Gregorian date, counting in 400-year eras from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn args(a: &[&str]) -> TrainArgs {
        Cli::try_parse_from(std::iter::once("x").chain(a.iter().copied()))
            .unwrap()
            .args
    }

    fn resolve(a: &[&str]) -> Result<RunConfig, HostError> {
        args(a).resolve_at(UNIX_EPOCH)
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2026-11-28 15:15:15 UTC.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_795_878_915)),
            "20261128T151515Z"
        );
        // A leap day: 2024-02-29 12:00:00 UTC.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            "20240229T120000Z"
        );
    }

    #[test]
    fn defaults_are_the_make_run_preset() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.model, ModelKind::ResNet { depth: 8 });
        assert_eq!(c.dataset, "fashion-mnist");
        assert_eq!((c.epochs, c.batch, c.lr), (1, 128, 0.05));
        assert_eq!(c.schedule, Schedule::Cosine);
        assert_eq!(c.method, MethodConfig::fp32());
        assert_eq!(
            c.out,
            PathBuf::from("runs/19700101T000000Z-resnet8-fashion-mnist-fp32")
        );
        assert!(!c.resume);
    }

    #[test]
    fn flags_resolve_and_validate() {
        let c = resolve(&[
            "--model",
            "resnet20",
            "--dataset",
            "cifar10",
            "--method",
            "e2train",
            "--psg",
            "false",
            "--smd-p",
            "0.25",
            "--psg-threshold",
            "abs:5e-5",
            "--psg-fallback",
            "zero",
            "--array",
            "8x4",
            "--schedule",
            "step",
            "--milestones",
            "2,3",
            "--augment",
            "--train-only",
            "last",
            "--slu-gate-downsample",
            "--bn-calibrate",
            "3",
        ])
        .unwrap();
        assert!(c.method.smd && c.method.slu && !c.method.psg);
        assert!(c.method.slu_gate_downsample);
        assert_eq!(c.bn_calibrate, 3);
        // SLU anneals its gate noise by default, scaled to the run's peak rate.
        assert_eq!(c.method.slu_noise_peak_lr, c.lr);
        // Gated blocks start as the identity by default; the flag turns it off; no SLU, no init.
        assert!(c.method.slu_identity_init);
        let off = resolve(&["--method", "e2train", "--slu-identity-init", "false"]).unwrap();
        assert!(off.method.slu && !off.method.slu_identity_init);
        assert!(
            !resolve(&["--method", "baseline"])
                .unwrap()
                .method
                .slu_identity_init
        );

        assert_eq!(c.method.smd_p, 0.25);
        assert_eq!(c.method.psg_threshold, PsgThreshold::Absolute(5e-5));
        assert_eq!(c.method.psg_fallback, PsgFallback::Zero);
        // A label with psg0 is a method, and the label round-trips.
        let m = parse_method("smd+psg0").unwrap();
        assert!(m.smd && m.psg && !m.slu && m.psg_fallback == PsgFallback::Zero);
        assert_eq!(m.label(), "smd+psg0");
        assert_eq!(c.array, (8, 4));
        assert_eq!(
            c.schedule,
            Schedule::Step {
                milestones: vec![2.0, 3.0],
                gamma: 0.1
            }
        );
        assert!(c.augment);
        assert_eq!(c.train_only, TrainOnly::Last);
        assert!(
            c.out
                .to_string_lossy()
                .ends_with("-resnet20-cifar10-smd+slu")
        );

        for (a, want) in [
            (vec!["--batch", "0"], "--batch"),
            (vec!["--lr", "-1"], "--lr"),
            (vec!["--lr", "NaN"], "--lr"),
            (vec!["--epochs", "0"], "--epochs"),
            (vec!["--array", "16"], "--array"),
            (vec!["--array", "0x4"], "--array"),
            (vec!["--array", "axb"], "--array"),
            (vec!["--psg-threshold", "5e-5"], "--psg-threshold"),
            (vec!["--psg-threshold", "rel:2"], "--psg-threshold"),
            (vec!["--psg-threshold", "foo:1"], "--psg-threshold"),
            (vec!["--psg-fallback", "exact"], "--psg-fallback"),
            (vec!["--smd-p", "1"], "--smd-p"),
            (vec!["--slu-target", "0"], "--slu-target"),
            (vec!["--momentum", "1"], "--momentum"),
            (vec!["--model", "resnet9"], "--model"),
            (vec!["--dataset", "imagenet"], "--dataset"),
            (vec!["--method", "magic"], "--method"),
            (vec!["--schedule", "linear"], "--schedule"),
            (
                vec!["--schedule", "step", "--milestones", "3,2"],
                "--milestones",
            ),
            (vec!["--milestones", "3"], "--milestones"),
            (vec!["--warmup-epochs", "2"], "--warmup-epochs"),
            (vec!["--subset", "0"], "--subset"),
            (vec!["--train-only", "first"], "--train-only"),
            (vec!["--checkpoint-every", "0"], "--checkpoint-every"),
        ] {
            let e = resolve(&a).unwrap_err().to_string();
            assert!(e.contains(want), "{a:?}: {e}");
        }
    }

    #[test]
    fn config_file_then_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("c.toml");
        std::fs::write(
            &f,
            "model = \"resnet20\"\nepochs = 7\nlr = 0.1\nsmd = true\n",
        )
        .unwrap();
        let fs = f.to_str().unwrap();
        let c = resolve(&["--config", fs]).unwrap();
        assert_eq!(
            (c.model, c.epochs, c.lr, c.method.smd),
            (ModelKind::ResNet { depth: 20 }, 7, 0.1, true)
        );
        let c = resolve(&["--config", fs, "--epochs", "2", "--smd", "false"]).unwrap();
        assert_eq!(
            (c.model, c.epochs, c.method.smd),
            (ModelKind::ResNet { depth: 20 }, 2, false)
        );

        std::fs::write(&f, "model = \"resnet20\"\nepoch = 7\n").unwrap();
        let e = resolve(&["--config", fs]).unwrap_err().to_string();
        assert!(
            e.contains("c.toml") && e.contains("unknown field") && e.contains("epoch"),
            "{e}"
        );
        std::fs::write(&f, "epochs = \"seven\"\n").unwrap();
        let e = resolve(&["--config", fs]).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("epochs"), "{e}");
        std::fs::write(&f, "batch = 0\n").unwrap();
        assert!(
            resolve(&["--config", fs])
                .unwrap_err()
                .to_string()
                .contains("--batch")
        );
        let e = resolve(&["--config", tmp.path().join("nope.toml").to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        for a in [
            vec![],
            vec![
                "--method",
                "e2train",
                "--schedule",
                "step",
                "--gamma",
                "0.2",
                "--psg-threshold",
                "abs:0.00005",
                "--slu-gate-downsample",
                "--slu-identity-init",
                "false",
                "--bn-calibrate",
                "0",
            ],
            vec![
                "--subset",
                "100",
                "--lr",
                "0.1",
                "--weight-decay",
                "0.0001",
                "--init",
                "/x/ck.bin",
                "--method",
                "baseline",
                "--threads",
                "2",
            ],
        ] {
            let c = resolve(&a).unwrap();
            let text = c.to_settings().to_toml().unwrap();
            let back: Settings = toml::from_str(&text).unwrap();
            assert_eq!(back.resolve(UNIX_EPOCH).unwrap(), c, "{text}");
            assert!(
                text.contains("lr = 0."),
                "floats are written in short form: {text}"
            );
        }
    }

    #[test]
    fn init_needs_an_engine_that_can_take_weights() {
        let e = resolve(&["--init", "/x/ck.bin"]).unwrap_err().to_string();
        assert!(
            e.contains("--init") && e.contains("--method baseline"),
            "{e}"
        );
        for m in ["baseline", "e2train", "slu"] {
            assert!(
                resolve(&["--init", "/x/ck.bin", "--method", m]).is_ok(),
                "{m}"
            );
        }
    }

    #[test]
    fn resume_reads_the_run_and_limits_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let c = resolve(&[
            "--model",
            "resnet20",
            "--epochs",
            "3",
            "--out",
            run.to_str().unwrap(),
        ])
        .unwrap();
        std::fs::write(run.join("config.toml"), c.to_settings().to_toml().unwrap()).unwrap();
        let r = resolve(&["--resume", run.to_str().unwrap(), "--epochs", "5"]).unwrap();
        assert!(r.resume);
        assert_eq!(
            (r.model, r.epochs, r.out.clone()),
            (c.model, 5, run.clone())
        );
        let e = resolve(&["--resume", run.to_str().unwrap(), "--lr", "0.3"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lr") && e.contains("cannot change"), "{e}");
        let e = resolve(&["--resume", tmp.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.toml"), "{e}");
        assert!(Cli::try_parse_from(["x", "--resume", "a", "--config", "b"]).is_err());
    }
}
