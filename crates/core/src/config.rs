//! What the host tells a board (or the in-process engine) before training starts.
//!
//! The host owns the schedule (epochs, learning rate per step, SMD coin); the engine owns the model,
//! the optimizer state and the accelerator. This split is what lets the board-link work move the
//! engine behind a serial protocol without changing either side.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Input tensor shape of one sample, channel-major (C, H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    pub channels: u32,
    pub height: u32,
    pub width: u32,
}

impl InputShape {
    pub fn pixels(&self) -> usize {
        self.channels as usize * self.height as usize * self.width as usize
    }
}

/// Model architecture. `ResNet { depth }` is the CIFAR family of depth 6n+2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    ResNet { depth: u32 },
    MobileNetV2,
}

impl ModelKind {
    /// Blocks per stage for a CIFAR ResNet (depth = 6n + 2).
    pub fn resnet_blocks_per_stage(depth: u32) -> Option<u32> {
        if depth >= 8 && (depth - 2) % 6 == 0 {
            Some((depth - 2) / 6)
        } else {
            None
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::ResNet { depth } => write!(f, "resnet{depth}"),
            ModelKind::MobileNetV2 => write!(f, "mobilenetv2"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown model '{0}': expected resnetN with N = 6n+2 (resnet8, resnet20, resnet32, ..., resnet110) or mobilenetv2"
)]
pub struct ParseModelError(pub String);

impl FromStr for ModelKind {
    type Err = ParseModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        if l == "mobilenetv2" {
            return Ok(ModelKind::MobileNetV2);
        }
        if let Some(d) = l.strip_prefix("resnet") {
            if let Ok(depth) = d.parse::<u32>() {
                if ModelKind::resnet_blocks_per_stage(depth).is_some() {
                    return Ok(ModelKind::ResNet { depth });
                }
            }
        }
        Err(ParseModelError(s.to_string()))
    }
}

/// Where the convolution/linear GEMMs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// The fp32 reference trainer (no accelerator, no counters).
    Fp32,
    /// The accelerator's numerics: INT16 codes everywhere unless PSG switches passes to INT8.
    Accel,
}

/// PSG threshold rule (see DESIGN.md: the block compares against a CSR; "adaptive" sets that CSR per
/// layer from c x max|P| of the layer's previous step).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PsgThreshold {
    /// Absolute threshold on the real-valued predicted gradient.
    Absolute(f32),
    /// c x max|P| of the same layer (previous step's max).
    Adaptive(f32),
}

/// What PSG does with an uncertain entry (|P| under the threshold).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PsgFallback {
    /// Recompute it in INT16 (tile granularity) and take the exact sign (the PSG).
    #[default]
    Recompute,
    /// Give it sign 0 (no update) and skip the INT16 recompute: the reference code's
    /// `--sparsify`. The weight gradient then costs only its INT8 prediction.
    Zero,
}

/// Which parameters train (fine-tuning baselines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrainOnly {
    All,
    /// Only the final classifier layer.
    Last,
}

/// The E2-Train techniques, each switchable on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodConfig {
    pub precision: Precision,
    /// Stochastic mini-batch dropping (decided on the host; the engine only sees kept batches).
    pub smd: bool,
    /// Probability of dropping a mini-batch.
    pub smd_p: f32,
    /// Apply the reference code's momentum/weight-decay step on a dropped batch.
    pub smd_momentum_step: bool,
    /// Selective layer update (gated residual blocks).
    pub slu: bool,
    /// Target executed fraction of gated-block cost (0..1).
    pub slu_target: f32,
    /// Weight of the computation-cost regulariser.
    pub slu_beta: f32,
    /// Also gate the shape-changing residual blocks (the reference does; a skipped sample then
    /// takes the 1x1 strided shortcut alone). Off by default: it cost 16 points in short runs. A
    /// model whose only gateable blocks change shape (ResNet-8) gates them either way.
    #[serde(default)]
    pub slu_gate_downsample: bool,
    /// Gate-noise schedule. Zero: the reference's decisions throughout, m = 1[p > u] with
    /// u ~ U(0, 1). Positive: the run's peak learning rate, and u ~ U(0.5 - w, 0.5 + w) with
    /// w = 0.5·min(1, lr/this), so training decisions narrow to the evaluation rule p > 0.5 as the
    /// learning rate decays (with the reference's noise to the end, training routes samples
    /// unlike evaluation does).
    #[serde(default)]
    pub slu_noise_peak_lr: f32,
    /// Start every gated block whose shortcut is the identity as the identity: the BatchNorm whose
    /// output joins the shortcut starts with gamma = 0, so executing or skipping a block gives the same output until the block
    /// has learnt something. Stochastic gating then does not disturb the rest of the network early
    /// in training (ResNet-20, 12,000 images x 4 epochs, target 0.15: docs/results.md, session 7).
    /// The reference initialises gamma = 1.
    #[serde(default)]
    pub slu_identity_init: bool,
    /// Predictive sign gradient descent.
    pub psg: bool,
    pub psg_threshold: PsgThreshold,
    /// Learning-rate factor for sign-updated (PSG) weights. A sign has magnitude 1 whatever the
    /// gradient's size, so at the normal rate short runs diverge; the reference relies on long
    /// schedules instead. 1.0 reproduces the reference.
    pub psg_lr_scale: f32,
    /// What PSG does with uncertain entries.
    #[serde(default)]
    pub psg_fallback: PsgFallback,
}

impl MethodConfig {
    pub fn fp32() -> Self {
        MethodConfig {
            precision: Precision::Fp32,
            smd: false,
            smd_p: 0.5,
            smd_momentum_step: false,
            slu: false,
            slu_target: 0.5,
            // The reference's 1e-5 has no visible effect with a per-sample mean; 1.0 moves the
            // executed fraction toward the target within tens of steps.
            slu_beta: 1.0,
            slu_gate_downsample: false,
            slu_noise_peak_lr: 0.0,
            slu_identity_init: false,
            psg: false,
            // c = 0.05 left 38-50% of entries uncertain (almost every tile recomputed); 0.001 gave
            // about 5% and better accuracy in short Fashion-MNIST runs (docs/results.md).
            psg_threshold: PsgThreshold::Adaptive(0.001),
            psg_lr_scale: 0.1,
            psg_fallback: PsgFallback::Recompute,
        }
    }
    pub fn baseline() -> Self {
        MethodConfig {
            precision: Precision::Accel,
            ..Self::fp32()
        }
    }
    pub fn e2train() -> Self {
        MethodConfig {
            smd: true,
            slu: true,
            psg: true,
            ..Self::baseline()
        }
    }
    /// Half-width w of the SLU gate's threshold noise at learning rate `lr` (see
    /// [`MethodConfig::slu_noise_peak_lr`]): 0.5 is the reference's U(0, 1), 0 the evaluation rule.
    pub fn slu_noise_half_width(&self, lr: f32) -> f32 {
        if self.slu_noise_peak_lr > 0.0 {
            0.5 * (lr / self.slu_noise_peak_lr).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }
    /// Short name used in run folders, CSVs and reports, e.g. `smd+slu+psg` (`psg0`: PSG with
    /// [`PsgFallback::Zero`]).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.smd {
            parts.push("smd");
        }
        if self.slu {
            parts.push("slu");
        }
        if self.psg {
            parts.push(match self.psg_fallback {
                PsgFallback::Recompute => "psg",
                PsgFallback::Zero => "psg0",
            });
        }
        match (self.precision, parts.is_empty()) {
            (Precision::Fp32, true) => "fp32".into(),
            (Precision::Fp32, false) => format!("fp32+{}", parts.join("+")),
            (Precision::Accel, true) => "baseline".into(),
            (Precision::Accel, false) => parts.join("+"),
        }
    }
}

/// Everything an engine needs to build its model and optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub model: ModelKind,
    pub input: InputShape,
    pub classes: u32,
    /// Per-channel mean and std, applied to `u8 / 255` on the engine side.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub method: MethodConfig,
    pub momentum: f32,
    pub weight_decay: f32,
    pub seed: u64,
    pub train_only: TrainOnly,
    /// Accelerator array shape (rows, cols); ignored by the fp32 engine.
    pub array: (u32, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slu_noise_narrows_with_the_learning_rate() {
        let mut m = MethodConfig::e2train();
        assert_eq!(
            m.slu_noise_half_width(0.05),
            0.5,
            "off: the reference's U(0, 1)"
        );
        assert_eq!(m.slu_noise_half_width(0.0), 0.5);
        m.slu_noise_peak_lr = 0.1;
        assert_eq!(m.slu_noise_half_width(0.1), 0.5);
        assert_eq!(m.slu_noise_half_width(0.025), 0.125);
        assert_eq!(m.slu_noise_half_width(0.0), 0.0);
        // Warm-up overshoot or a larger rate than announced never widens it past U(0, 1).
        assert_eq!(m.slu_noise_half_width(0.3), 0.5);
    }

    #[test]
    fn model_names_parse() {
        assert_eq!(
            "resnet8".parse::<ModelKind>(),
            Ok(ModelKind::ResNet { depth: 8 })
        );
        assert_eq!(
            "ResNet-110".parse::<ModelKind>(),
            Ok(ModelKind::ResNet { depth: 110 })
        );
        assert_eq!(
            "mobilenet_v2".parse::<ModelKind>(),
            Ok(ModelKind::MobileNetV2)
        );
        assert!("resnet9".parse::<ModelKind>().is_err());
        assert!("vgg".parse::<ModelKind>().is_err());
    }

    #[test]
    fn method_labels() {
        assert_eq!(MethodConfig::fp32().label(), "fp32");
        assert_eq!(MethodConfig::baseline().label(), "baseline");
        assert_eq!(MethodConfig::e2train().label(), "smd+slu+psg");
        let zero = MethodConfig {
            psg_fallback: PsgFallback::Zero,
            ..MethodConfig::e2train()
        };
        assert_eq!(zero.label(), "smd+slu+psg0");
    }
}
