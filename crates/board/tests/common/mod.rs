//! Shared helpers: a reference run on the in-process toy engine, and a driver for any StepEngine.

#![allow(dead_code)]

use e2t_board::toy::{ToyEngine, toy_batches, toy_config};
use e2t_core::{Batch, EngineConfig, StepEngine, StepResult};

pub fn config() -> EngineConfig {
    toy_config(1234)
}

pub fn batches(n: usize) -> Vec<Batch> {
    toy_batches(&config(), n, 8, 99)
}

/// Everything a run produces that must be bit-identical between runs.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub results: Vec<StepResult>,
    pub checkpoint: Vec<u8>,
    pub eval: (u64, u64, u64),
}

/// Steps every batch; every 5th batch is instead an SMD skip with momentum step.
pub fn run(engine: &mut dyn StepEngine, batches: &[Batch]) -> Outcome {
    let mut results = Vec::new();
    for b in batches {
        if b.seq % 5 == 4 {
            engine.skip_step(b.lr).unwrap();
        } else {
            results.push(engine.step(b).unwrap());
        }
    }
    let all_images: Vec<u8> = batches.iter().flat_map(|b| b.images.clone()).collect();
    let all_labels: Vec<u8> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    let e = engine.evaluate(&all_images, &all_labels).unwrap();
    Outcome {
        results,
        checkpoint: engine.checkpoint().unwrap(),
        eval: (e.loss_sum.to_bits(), e.correct, e.samples),
    }
}

pub fn reference(n: usize) -> Outcome {
    let mut e = ToyEngine::new(&config()).unwrap();
    run(&mut e, &batches(n))
}
