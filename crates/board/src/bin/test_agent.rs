//! Test agent: the real agent loop with the toy engine, for the pty tests (a separate process).
//!
//! Usage: e2t-test-agent --port PATH [--baud N] [--die-after-steps N]
//! `--die-after-steps N` exits abruptly when the N-th step request arrives (simulates a board reset).

use std::sync::atomic::{AtomicU64, Ordering};

use e2t_board::toy::ToyEngine;
use e2t_board::{NoPower, serve};
use e2t_core::{Batch, Counters, EngineConfig, EngineError, EvalResult, StepEngine, StepResult};
use e2t_proto::BoardInfo;

static STEPS: AtomicU64 = AtomicU64::new(0);

struct Mortal {
    inner: ToyEngine,
    die_after: Option<u64>,
}

impl StepEngine for Mortal {
    fn config(&self) -> &EngineConfig {
        self.inner.config()
    }
    fn step(&mut self, b: &Batch) -> Result<StepResult, EngineError> {
        let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
        if self.die_after == Some(n) {
            eprintln!("e2t-test-agent: dying at step request {n} as asked");
            std::process::exit(17);
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut port, mut baud, mut die_after) = (None, 921_600u32, None);
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned();
        match (args[i].as_str(), val) {
            ("--port", Some(v)) => port = Some(v),
            ("--baud", Some(v)) => {
                baud = v
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--baud: '{v}' is not a number")))
            }
            ("--die-after-steps", Some(v)) => {
                die_after =
                    Some(v.parse().unwrap_or_else(|_| {
                        fail(&format!("--die-after-steps: '{v}' is not a number"))
                    }))
            }
            (a, _) => fail(&format!("unexpected argument '{a}'")),
        }
        i += 2;
    }
    let port = port.unwrap_or_else(|| fail("missing --port PATH"));
    let t = e2t_link::open_serial(std::path::Path::new(&port), baud)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let factory =
        move |c: &EngineConfig, init: Option<&[u8]>| -> Result<Box<dyn StepEngine>, EngineError> {
            let mut inner = ToyEngine::new(c)?;
            if let Some(b) = init {
                inner.load_weights(b)?;
            }
            Ok(Box::new(Mortal { inner, die_after }))
        };
    if let Err(e) = serve(
        Box::new(t),
        &factory,
        BoardInfo::simulated("test-agent", (16, 16)),
        Box::new(NoPower),
    ) {
        eprintln!("e2t-test-agent: {e}");
    }
}

fn fail(msg: &str) -> ! {
    eprintln!(
        "e2t-test-agent: {msg}\nusage: e2t-test-agent --port PATH [--baud N] [--die-after-steps N]"
    );
    std::process::exit(2)
}
