//! Resume equivalence with the real fp32 engine (ResNet-8) on a small slice of Fashion-MNIST:
//! a run interrupted mid-epoch and resumed from its checkpoint ends with the same weights as an
//! uninterrupted run. Skipped (with a printed reason) when the data set is not installed.

use e2t_core::{Batch, Counters, EngineConfig, EngineError, EvalResult, StepEngine, StepResult};
use e2t_host::{RunConfig, TrainArgs, run_with_data};
use e2t_nn::Fp32Engine;
use std::path::Path;

/// Wraps the real engine and fails on one sequence number (a crash between two steps).
struct CrashAt {
    inner: Fp32Engine,
    seq: u64,
}

impl StepEngine for CrashAt {
    fn config(&self) -> &EngineConfig {
        self.inner.config()
    }
    fn step(&mut self, b: &Batch) -> Result<StepResult, EngineError> {
        if b.seq == self.seq {
            return Err(EngineError::Accelerator("injected crash".into()));
        }
        self.inner.step(b)
    }
    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        self.inner.skip_step(lr)
    }
    fn evaluate(&mut self, i: &[u8], l: &[u8]) -> Result<EvalResult, EngineError> {
        self.inner.evaluate(i, l)
    }
    fn calibrate_bn(&mut self, i: &[u8], index: u32) -> Result<(), EngineError> {
        self.inner.calibrate_bn(i, index)
    }
    fn counters(&self) -> Counters {
        self.inner.counters()
    }
    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        self.inner.checkpoint()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), EngineError> {
        self.inner.restore(b)
    }
}

fn cfg(out: &Path) -> RunConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: TrainArgs,
    }
    let out = out.to_str().unwrap();
    let args = [
        "x",
        "--model",
        "resnet8",
        "--epochs",
        "2",
        "--batch",
        "16",
        "--subset",
        "96",
        "--test-subset",
        "32",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "0.5",
        "--smd",
        "--smd-p",
        "0.3",
        "--smd-momentum-step",
        "--augment",
        "--checkpoint-every",
        "2",
        "--out",
        out,
    ];
    Cli::parse_from(args).a.resolve().unwrap()
}

/// The engine's part of the run's final checkpoint (weights, optimiser, RNG, step count).
fn checkpoint(dir: &Path) -> Vec<u8> {
    e2t_host::engine_checkpoint(dir).unwrap()
}

#[test]
fn fp32_resume_gives_the_same_weights() {
    if !Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()
        && std::env::var_os("E2TRAIN_DATA").is_none()
    {
        eprintln!(
            "SKIPPED fp32_resume_gives_the_same_weights: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let full = cfg(&tmp.path().join("full"));
    let (data, ec) = e2t_host::prepare(&full).unwrap();
    assert_eq!(data.train.len(), 96);
    let s = run_with_data(
        &full,
        &data,
        Box::new(Fp32Engine::new(ec.clone()).unwrap()),
        vec![],
        false,
    )
    .unwrap();
    assert_eq!(s.kept_batches + s.dropped_batches, 12);

    let crashy = cfg(&tmp.path().join("crashy"));
    // Steps 0..5 are epoch 1, 6..11 epoch 2; checkpoints after global steps 2 and 4 of each epoch.
    // Crash on the last step of the run that SMD keeps, after at least one mid-epoch checkpoint.
    let kept_last = s.epochs[1].kept_batches;
    assert!(kept_last > 0);
    let mut err = None;
    for seq in (8..12).rev() {
        let engine = CrashAt {
            inner: Fp32Engine::new(ec.clone()).unwrap(),
            seq,
        };
        let _ = std::fs::remove_dir_all(&crashy.out);
        match run_with_data(&crashy, &data, Box::new(engine), vec![], false) {
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
            Ok(_) => continue,
        }
    }
    let err = err.expect("one of steps 8..12 is kept by SMD");
    assert!(err.contains("injected crash"), "{err}");
    let resumed = RunConfig {
        resume: true,
        ..crashy.clone()
    };
    let r = run_with_data(
        &resumed,
        &data,
        Box::new(Fp32Engine::new(ec).unwrap()),
        vec![],
        false,
    )
    .unwrap();
    assert_eq!(r.epochs_done, 2);
    assert_eq!(
        (r.kept_batches, r.dropped_batches),
        (s.kept_batches, s.dropped_batches)
    );
    assert_eq!(r.final_test_acc, s.final_test_acc);
    assert_eq!(r.epochs[1].train_loss, s.epochs[1].train_loss);
    let (a, b) = (checkpoint(&crashy.out), checkpoint(&full.out));
    assert!(a.len() > 10_000, "a ResNet-8 checkpoint");
    assert!(a == b, "same weights and optimiser state after resuming");
}
