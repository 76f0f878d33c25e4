//! Training engines for e2train: [`build_engine`] picks the fp32 reference (`e2t_nn::Fp32Engine`) or
//! the E2-Train engine ([`E2TrainEngine`]), which runs the model's convolution and linear GEMMs on the
//! soft accelerator (or in fp32) and implements the model- and algorithm-level techniques:
//!
//! - **SMD** is decided on the host (dropped batches never reach the engine); the engine offers the
//!   reference's momentum/weight-decay step for a dropped batch ([`e2t_core::StepEngine::skip_step`]).
//! - **SLU** ([`gate`], [`model`]): a SkipNet-style recurrent gate picks, per sample, which residual
//!   blocks run; skipped samples do no body work (not counted); BN in a gated block uses the executed
//!   samples' statistics; a MAC-weighted bang-bang cost regulariser drives the executed fraction to
//!   the target; deterministic `p > 0.5` at evaluation. Training decisions are `p > u` with `u`'s
//!   noise narrowed from the reference's U(0, 1) to the evaluation rule as the learning rate decays
//!   (`MethodConfig::slu_noise_peak_lr`; off gives the reference's rule bit for bit). Gated blocks
//!   with an identity shortcut start as the identity (`MethodConfig::slu_identity_init`: gamma = 0 in the BN that joins the
//!   shortcut).
//! - **PSG**: forward GEMMs in INT8, input gradients in INT16, convolution weight gradients as
//!   predicted signs (INT8 prediction, INT16 recompute of uncertain tiles, done by the accelerator),
//!   momentum SGD on the signs; BN, gate and classifier get fp32 SGD.
//!
//! Invariants: everything is a pure function of the config seed and the call sequence (for a given
//! rayon thread count); `checkpoint` + `restore` continues bit-identically; counters count only work
//! the accelerator really did (gates and BN run on the board CPU and are not counted).

pub mod ablation;
pub mod backend;
pub mod bench;
pub mod blocks;
pub mod engine;
pub mod gate;
pub mod layers;
pub mod model;

#[cfg(test)]
mod tests;

pub use ablation::{ablation_presets, format_results_table};
pub use bench::{
    EngineBenchReport, bench_built_engine, bench_engine_config, bench_engine_train_step,
};
pub use engine::E2TrainEngine;

use e2t_core::{EngineConfig, EngineError, ModelKind, Precision, StepEngine};

/// Builds the engine a configuration asks for: a plain fp32 ResNet (no SLU, no PSG) is the
/// `e2t_nn::Fp32Engine`; everything else (accelerator numerics, SLU, MobileNetV2) is an
/// [`E2TrainEngine`]. Invalid combinations (PSG in fp32, SLU on a model without gateable residual
/// blocks, bad numbers) are configuration errors.
pub fn build_engine(cfg: &EngineConfig) -> Result<Box<dyn StepEngine>, EngineError> {
    engine::validate_config(cfg)?;
    let m = &cfg.method;
    if m.precision == Precision::Fp32
        && !m.slu
        && !m.psg
        && matches!(cfg.model, ModelKind::ResNet { .. })
    {
        return Ok(Box::new(e2t_nn::Fp32Engine::new(cfg.clone())?));
    }
    let backend = backend::for_config(cfg)?;
    Ok(Box::new(E2TrainEngine::with_backend(cfg.clone(), backend)?))
}

/// [`build_engine`] for `--init CHECKPOINT`: the engine starts from the weights and BN statistics of
/// an E2-Train engine checkpoint (any method, same model, input and classes) with fresh optimizer
/// state, RNG and counters. Always an [`E2TrainEngine`] (also for plain fp32, so that weights-only
/// loading is available); fp32-engine (`e2t-nn`) checkpoints are refused with a clear error.
pub fn build_engine_with_init(
    cfg: &EngineConfig,
    init: &[u8],
) -> Result<Box<dyn StepEngine>, EngineError> {
    let mut eng = E2TrainEngine::with_backend(cfg.clone(), backend::for_config(cfg)?)?;
    eng.load_weights_from_checkpoint(init)?;
    Ok(Box::new(eng))
}
