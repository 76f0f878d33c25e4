//! Tests of the run loop. `Toy` is a small but real deterministic engine (softmax regression with
//! momentum SGD) used as a test double for the *host* logic; the fp32 ResNet engine lives elsewhere.

use super::*;
use crate::config::{Schedule, Settings};
use e2t_core::{
    EngineError, InputShape, LayerPsgStats, MethodConfig, ModelKind, PhaseCounters, StepDiag,
    TrainOnly,
};
use e2t_data::Split;
use std::sync::{Arc, Mutex};

#[derive(Clone, Serialize, Deserialize)]
struct ToyState {
    w: Vec<f32>,
    v: Vec<f32>,
    last_seq: Option<u64>,
    counters: Counters,
    skips: u64,
}

/// What the engine saw, shared with the test.
#[derive(Default)]
struct Log {
    steps: Vec<(u64, f32)>,
    skips: Vec<f32>,
    restored: Vec<Vec<u8>>,
    loaded: Vec<Vec<u8>>,
    /// BN calibration chunks: (index, images, steps applied before it).
    calib: Vec<(u32, Vec<u8>, usize)>,
    /// Evaluation calls: steps applied before each.
    evals: Vec<usize>,
}

struct Toy {
    cfg: EngineConfig,
    s: ToyState,
    fail_at: Option<u64>,
    log: Arc<Mutex<Log>>,
}

impl Toy {
    fn new(cfg: EngineConfig) -> Self {
        let px = cfg.input.pixels();
        let n = cfg.classes as usize * (px + 1);
        // Small deterministic initial weights from the seed.
        let mut rng = rng_for(cfg.seed, 1, 0, 0);
        let w = (0..n).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        let s = ToyState {
            w,
            v: vec![0.0; n],
            last_seq: None,
            counters: Counters::default(),
            skips: 0,
        };
        Toy {
            cfg,
            s,
            fail_at: None,
            log: Arc::default(),
        }
    }

    fn logits(&self, img: &[u8]) -> Vec<f32> {
        let px = self.cfg.input.pixels();
        (0..self.cfg.classes as usize)
            .map(|k| {
                let row = &self.s.w[k * (px + 1)..(k + 1) * (px + 1)];
                let x = img
                    .iter()
                    .map(|&p| (p as f32 / 255.0 - self.cfg.mean[0]) / self.cfg.std[0]);
                row[px] + row[..px].iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
            })
            .collect()
    }

    fn loss_grad(&self, img: &[u8], label: u8) -> (f32, bool, Vec<f32>) {
        let z = self.logits(img);
        let mx = z.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - mx).exp()).collect();
        let sum: f32 = e.iter().sum();
        let p: Vec<f32> = e.iter().map(|v| v / sum).collect();
        let pred = (0..z.len())
            .max_by(|&a, &b| z[a].total_cmp(&z[b]))
            .unwrap_or(0);
        (
            -(p[label as usize].max(1e-12)).ln(),
            pred == label as usize,
            p,
        )
    }

    fn update(&mut self, g: &[f32], lr: f32) {
        let (m, wd) = (self.cfg.momentum, self.cfg.weight_decay);
        for ((w, v), gi) in self.s.w.iter_mut().zip(self.s.v.iter_mut()).zip(g) {
            *v = m * *v + gi + wd * *w;
            *w -= lr * *v;
        }
    }
}

impl StepEngine for Toy {
    fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    fn step(&mut self, b: &Batch) -> Result<StepResult, EngineError> {
        if Some(b.seq) == self.fail_at {
            return Err(EngineError::Accelerator("injected failure".into()));
        }
        if self.s.last_seq.is_some_and(|l| b.seq <= l) {
            return Err(EngineError::Batch {
                seq: b.seq,
                reason: "applied twice".into(),
            });
        }
        let px = self.cfg.input.pixels();
        let mut g = vec![0.0f32; self.s.w.len()];
        let (mut loss, mut correct) = (0.0f32, 0u32);
        for (img, &l) in b.images.chunks(px).zip(&b.labels) {
            let (li, ok, p) = self.loss_grad(img, l);
            loss += li;
            correct += ok as u32;
            let x: Vec<f32> = img
                .iter()
                .map(|&v| (v as f32 / 255.0 - self.cfg.mean[0]) / self.cfg.std[0])
                .collect();
            for (k, pk) in p.iter().enumerate() {
                let d = (pk - if k == l as usize { 1.0 } else { 0.0 }) / b.len() as f32;
                let row = &mut g[k * (px + 1)..(k + 1) * (px + 1)];
                row.iter_mut().zip(&x).for_each(|(gi, xi)| *gi += d * xi);
                row[px] += d;
            }
        }
        self.update(&g, b.lr);
        self.s.last_seq = Some(b.seq);
        let n = b.len() as u64;
        let counters = Counters {
            macs_int16: n * px as u64 * self.cfg.classes as u64,
            gemms: 1,
            ..Default::default()
        };
        self.s.counters.accumulate(&counters);
        self.log.lock().unwrap().steps.push((b.seq, b.lr));
        Ok(StepResult {
            seq: b.seq,
            loss: loss / b.len() as f32,
            correct,
            samples: b.len() as u32,
            counters,
            power: Vec::new(),
            diag: StepDiag {
                psg: vec![LayerPsgStats {
                    layer: "fc".into(),
                    predicted: n * px as u64,
                    uncertain: correct as u64,
                    tiles: 4,
                    recomputed_tiles: 1,
                }],
                slu_executed: vec![("block1".into(), (n / 2) as u32, n as u32)],
                slu_decisive: vec![("block1".into(), (n / 4) as u32)],
                // All of the toy's work is its one forward GEMM.
                phases: PhaseCounters {
                    forward: counters,
                    ..Default::default()
                },
            },
        })
    }
    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        let g = vec![0.0; self.s.w.len()];
        self.update(&g, lr);
        self.s.skips += 1;
        self.log.lock().unwrap().skips.push(lr);
        Ok(())
    }
    /// No BN in a softmax regression: records the chunk and counts its forward GEMM.
    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError> {
        let px = self.cfg.input.pixels() as u64;
        let n = images.len() as u64 / px;
        self.s.counters.accumulate(&Counters {
            macs_int16: n * px * self.cfg.classes as u64,
            gemms: 1,
            ..Default::default()
        });
        let mut log = self.log.lock().unwrap();
        let steps = log.steps.len();
        log.calib.push((index, images.to_vec(), steps));
        Ok(())
    }
    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError> {
        {
            let mut log = self.log.lock().unwrap();
            let steps = log.steps.len();
            log.evals.push(steps);
        }
        let px = self.cfg.input.pixels();
        let mut r = EvalResult::default();
        for (img, &l) in images.chunks(px).zip(labels) {
            let (li, ok, _) = self.loss_grad(img, l);
            r.merge(&EvalResult {
                loss_sum: li as f64,
                correct: ok as u64,
                samples: 1,
            });
        }
        Ok(r)
    }
    fn counters(&self) -> Counters {
        self.s.counters
    }
    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        bincode::serialize(&self.s).map_err(|e| EngineError::Checkpoint(e.to_string()))
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        self.s = bincode::deserialize(bytes).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
        self.log.lock().unwrap().restored.push(bytes.to_vec());
        Ok(())
    }
    fn load_weights(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        self.s = bincode::deserialize(bytes).map_err(|e| EngineError::Checkpoint(e.to_string()))?;
        self.log.lock().unwrap().loaded.push(bytes.to_vec());
        Ok(())
    }
}

/// Counts kept steps per epoch; its state must survive a checkpoint for the column to be right.
struct StepCounter {
    steps: u64,
    dropped: u64,
}

impl EpochObserver for StepCounter {
    fn name(&self) -> &str {
        "counter"
    }
    fn columns(&self) -> Vec<String> {
        vec!["obs_steps".into(), "obs_dropped".into()]
    }
    fn on_epoch_start(&mut self, _epoch: u32) {
        self.steps = 0;
        self.dropped = 0;
    }
    fn on_step(&mut self, _r: &StepResult) {
        self.steps += 1;
    }
    fn on_dropped(&mut self, _seq: u64, _lr: f32) {
        self.dropped += 1;
    }
    fn on_epoch_end(&mut self, _row: &EpochRow) -> Result<Vec<String>, String> {
        Ok(vec![self.steps.to_string(), self.dropped.to_string()])
    }
    fn save_state(&self) -> Vec<u8> {
        [self.steps.to_le_bytes(), self.dropped.to_le_bytes()].concat()
    }
    fn restore_state(&mut self, b: &[u8]) -> Result<(), String> {
        let a: [u8; 16] = b.try_into().map_err(|_| "bad state".to_string())?;
        self.steps = u64::from_le_bytes(a[..8].try_into().unwrap());
        self.dropped = u64::from_le_bytes(a[8..].try_into().unwrap());
        Ok(())
    }
}

fn counter() -> Vec<Box<dyn EpochObserver>> {
    vec![Box::new(StepCounter {
        steps: 0,
        dropped: 0,
    })]
}

/// A learnable toy data set: 4x4 one-channel images, class = which third of the image is bright.
fn toy_data(train: usize, test: usize) -> Dataset {
    let shape = InputShape {
        channels: 1,
        height: 4,
        width: 4,
    };
    let mut rng = rng_for(99, 2, 0, 0);
    let mut make = |n: usize| {
        let mut s = Split::default();
        for _ in 0..n {
            let c: u8 = rng.random_range(0..3);
            s.labels.push(c);
            for p in 0..16u8 {
                let bright = (p / 6).min(2) == c;
                s.images.push(if bright {
                    rng.random_range(150..=255)
                } else {
                    rng.random_range(0..100)
                });
            }
        }
        s
    };
    let (train, test) = (make(train), make(test));
    Dataset {
        name: "toy".into(),
        shape,
        classes: 3,
        train,
        test,
    }
}

fn toy_cfg(out: &Path) -> RunConfig {
    RunConfig {
        model: ModelKind::ResNet { depth: 8 },
        dataset: "mnist".into(),
        data_dir: None,
        epochs: 3,
        batch: 8,
        lr: 0.1,
        schedule: Schedule::Cosine,
        warmup_epochs: 0.5,
        momentum: 0.9,
        weight_decay: 1e-4,
        seed: 5,
        subset: None,
        test_subset: None,
        augment: false,
        out: out.to_path_buf(),
        method: MethodConfig::fp32(),
        eval_batch: 7,
        checkpoint_every: None,
        threads: None,
        array: (16, 16),
        init: None,
        train_only: TrainOnly::All,
        bn_calibrate: 0,
        git_rev: Some("abc123".into()),
        resume: false,
    }
}

fn engine_for(cfg: &RunConfig, data: &Dataset) -> Toy {
    Toy::new(cfg.engine_config(data))
}

fn run_toy(cfg: &RunConfig, data: &Dataset) -> Result<RunSummary, HostError> {
    run_with_data(cfg, data, Box::new(engine_for(cfg, data)), counter(), false)
}

fn read_state(dir: &Path) -> HostState {
    let p = dir.join(CHECKPOINT_FILE);
    decode_checkpoint(&std::fs::read(&p).unwrap(), &p).unwrap()
}

/// epochs.csv without the wall-time columns (seconds, images_per_s).
fn csv_without_times(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(EPOCHS_FILE)).unwrap();
    text.lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| *i != 6 && *i != 7)
                .map(|(_, s)| s.to_string())
                .collect()
        })
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn run_folder_files_and_csv_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let data = toy_data(60, 25);
    let cfg = toy_cfg(&dir);
    let s = run_toy(&cfg, &data).unwrap();

    assert_eq!(
        file_names(&dir),
        [
            "checkpoint.bin",
            "config.toml",
            "diagnostics.csv",
            "epochs.csv",
            "summary.json"
        ]
    );
    let text = std::fs::read_to_string(dir.join(EPOCHS_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[..8], BASE_COLUMNS);
    let counter_names: Vec<&str> = Counters::default()
        .fields()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(header[8..20], counter_names[..]);
    assert_eq!(
        header[20..],
        [
            "kept_batches",
            "dropped_batches",
            "obs_steps",
            "obs_dropped"
        ]
    );
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(row.len(), header.len());
    assert_eq!(row[0], "1");
    // 60 samples / batch 8 = 8 batches (the last one of 4); the counters are the steps' sums.
    assert_eq!(row[20..], ["8", "0", "8", "0"]);
    let col = |n: &str| row[header.iter().position(|h| *h == n).unwrap()];
    assert_eq!(col("macs_int16"), (60 * 16 * 3).to_string());
    assert_eq!(col("gemms"), "8");

    let diag = std::fs::read_to_string(dir.join(DIAG_FILE)).unwrap();
    let dl: Vec<&str> = diag.lines().collect();
    assert_eq!(dl[0], "epoch,kind,name,value");
    assert!(dl.contains(&"1,psg_predicted,fc,960"), "{diag}");
    assert!(dl.contains(&"1,psg_recomputed_fraction,fc,0.25"), "{diag}");
    assert!(dl.contains(&"3,slu_total,block1,60"), "{diag}");
    // 7 steps of 8 samples with 2 decisive gates, one of 4 with 1: 15 of 60.
    assert!(
        dl.contains(&"3,slu_decisive_fraction,block1,0.25"),
        "{diag}"
    );
    // Phase rows sum the steps' phase counters: the epoch's 60 samples x 16 px x 3 classes.
    assert!(dl.contains(&"2,phase_macs_int16,forward,2880"), "{diag}");
    assert!(
        dl.contains(&"2,phase_macs_int16,weight_gradient,0"),
        "{diag}"
    );
    assert_eq!(dl.len(), 1 + 3 * (10 + 12));

    let js: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(js["epochs_done"], 3);
    assert_eq!(js["finished"], true);
    assert_eq!(js["git_rev"], "abc123");
    assert_eq!(js["kept_batches"], 24);
    assert_eq!(js["counters"]["gemms"], 24);
    assert_eq!(js["final_test_acc"].as_f64().unwrap(), s.final_test_acc);
    assert!(
        s.final_test_acc > 0.8,
        "the toy problem is learnable: {}",
        s.final_test_acc
    );
    assert!(s.best_test_acc >= s.final_test_acc && s.best_epoch >= 1);
    let table = s.to_string();
    assert!(
        table.contains("test acc   final") && table.lines().count() >= 8,
        "{table}"
    );

    // config.toml holds the resolved run in the --config format.
    let back = Settings::from_file(&dir.join(CONFIG_FILE))
        .unwrap()
        .resolve(std::time::UNIX_EPOCH)
        .unwrap();
    assert_eq!(
        back,
        RunConfig {
            git_rev: None,
            ..cfg.clone()
        }
    );

    // A second run into the same folder is refused; a resume of the finished run is a no-op.
    let e = run_toy(&cfg, &data).unwrap_err().to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    let before = std::fs::read(dir.join(CHECKPOINT_FILE)).unwrap();
    let again = run_toy(
        &RunConfig {
            resume: true,
            ..cfg.clone()
        },
        &data,
    )
    .unwrap();
    assert_eq!(again.epochs.len(), 3);
    assert_eq!(std::fs::read(dir.join(CHECKPOINT_FILE)).unwrap(), before);
}

#[test]
fn same_seed_same_results_other_seed_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(50, 20);
    let mut cfg = toy_cfg(&tmp.path().join("a"));
    cfg.augment = true;
    cfg.method.smd = true;
    run_toy(&cfg, &data).unwrap();
    let cfg_b = RunConfig {
        out: tmp.path().join("b"),
        ..cfg.clone()
    };
    run_toy(&cfg_b, &data).unwrap();
    let cfg_c = RunConfig {
        out: tmp.path().join("c"),
        seed: 6,
        ..cfg.clone()
    };
    run_toy(&cfg_c, &data).unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    assert_eq!(csv_without_times(&a), csv_without_times(&b));
    assert_eq!(read_state(&a).engine, read_state(&b).engine);
    assert_eq!(
        std::fs::read(a.join(DIAG_FILE)).unwrap(),
        std::fs::read(b.join(DIAG_FILE)).unwrap()
    );
    assert_ne!(read_state(&a).engine, read_state(&c).engine);
}

#[test]
fn smd_drops_at_the_set_rate_and_keeps_the_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(400, 10);
    let mut cfg = toy_cfg(tmp.path());
    cfg.batch = 2;
    cfg.epochs = 5;
    cfg.method.smd = true;
    cfg.method.smd_p = 0.3;
    cfg.method.smd_momentum_step = true;
    let engine = engine_for(&cfg, &data);
    let log = engine.log.clone();
    let s = run_with_data(&cfg, &data, Box::new(engine), counter(), false).unwrap();
    let total = 1000u64;
    assert_eq!(s.kept_batches + s.dropped_batches, total);
    let rate = s.dropped_batches as f64 / total as f64;
    // Binomial(1000, 0.3): standard deviation 0.0145; the coins are seeded, so this never flakes.
    assert!((rate - 0.3).abs() < 0.05, "drop rate {rate}");
    let log = log.lock().unwrap();
    assert_eq!(
        log.steps.len() as u64,
        s.kept_batches,
        "dropped batches never reach the engine"
    );
    assert_eq!(
        log.skips.len() as u64,
        s.dropped_batches,
        "one momentum step per dropped batch"
    );
    // Kept steps carry the schedule's rate at their global index: dropped ones advanced it.
    let sched = LrSchedule::new(
        cfg.lr,
        cfg.schedule.clone(),
        cfg.warmup_epochs,
        cfg.epochs,
        200,
    );
    for &(seq, lr) in &log.steps {
        assert_eq!(lr, sched.lr_at(seq));
    }
    assert!(
        log.steps.windows(2).any(|w| w[1].0 > w[0].0 + 1),
        "sequence numbers skip dropped batches"
    );
    assert_eq!(log.steps.last().map(|x| x.0 < total), Some(true));
    for r in &s.epochs {
        assert_eq!(
            r.extra,
            vec![r.kept_batches.to_string(), r.dropped_batches.to_string()]
        );
    }
    drop(log);

    // Same seed: the same coins. Without momentum steps, the engine sees no skip calls.
    let tmp2 = tempfile::tempdir().unwrap();
    let cfg2 = RunConfig {
        out: tmp2.path().to_path_buf(),
        method: MethodConfig {
            smd_momentum_step: false,
            ..cfg.method.clone()
        },
        ..cfg.clone()
    };
    let e2 = engine_for(&cfg2, &data);
    let log2 = e2.log.clone();
    let s2 = run_with_data(&cfg2, &data, Box::new(e2), counter(), false).unwrap();
    assert_eq!(s2.dropped_batches, s.dropped_batches);
    assert!(log2.lock().unwrap().skips.is_empty());
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(70, 20);
    let mut cfg = toy_cfg(&tmp.path().join("full"));
    cfg.augment = true;
    cfg.method.smd = true;
    cfg.method.smd_p = 0.25;
    cfg.method.smd_momentum_step = true;
    cfg.checkpoint_every = Some(3);
    let full_engine = engine_for(&cfg, &data);
    let full_log = full_engine.log.clone();
    run_with_data(&cfg, &data, Box::new(full_engine), counter(), false).unwrap();
    let kept: Vec<u64> = full_log.lock().unwrap().steps.iter().map(|x| x.0).collect();
    // 70 samples in batches of 8: 9 batches per epoch, checkpoints after global steps 3, 6, 12, 15.
    // Crash on a kept batch late in epoch 2 (a mid-epoch checkpoint exists), resume, crash again
    // early in epoch 3 (resume from the epoch boundary), resume to the end.
    let crash1 = *kept
        .iter()
        .find(|&&q| (13..18).contains(&q))
        .expect("a kept batch late in epoch 2");
    let crash2 = *kept
        .iter()
        .find(|&&q| (18..22).contains(&q))
        .expect("a kept batch early in epoch 3");

    let dir = tmp.path().join("crashy");
    let cfg2 = RunConfig {
        out: dir.clone(),
        ..cfg.clone()
    };
    let mut first = engine_for(&cfg2, &data);
    first.fail_at = Some(crash1);
    let e = run_with_data(&cfg2, &data, Box::new(first), counter(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("injected failure"), "{e}");
    let st = read_state(&dir);
    assert_eq!(st.epoch, 1, "crashed in epoch 2");
    assert!(st.next_batch > 0, "a mid-epoch checkpoint exists");
    assert!(
        !file_names(&dir)
            .iter()
            .any(|f| f.starts_with(crate::atomic::TMP_PREFIX))
    );
    let resumed = RunConfig {
        resume: true,
        ..cfg2.clone()
    };
    let mut second = engine_for(&cfg2, &data);
    second.fail_at = Some(crash2);
    let e = run_with_data(&resumed, &data, Box::new(second), counter(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("injected failure"), "{e}");
    assert_eq!(
        (read_state(&dir).epoch, read_state(&dir).next_batch),
        (2, 0)
    );
    let s = run_with_data(
        &resumed,
        &data,
        Box::new(engine_for(&cfg2, &data)),
        counter(),
        false,
    )
    .unwrap();
    assert_eq!(s.epochs_done, 3);
    let full = tmp.path().join("full");
    assert_eq!(
        read_state(&dir).engine,
        read_state(&full).engine,
        "same final weights"
    );
    assert_eq!(csv_without_times(&dir), csv_without_times(&full));
    assert_eq!(
        std::fs::read(dir.join(DIAG_FILE)).unwrap(),
        std::fs::read(full.join(DIAG_FILE)).unwrap()
    );
}

#[test]
fn init_loads_weights_and_mismatches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(30, 10);
    let a = tmp.path().join("a");
    run_toy(
        &RunConfig {
            epochs: 1,
            ..toy_cfg(&a)
        },
        &data,
    )
    .unwrap();
    let trained = read_state(&a).engine;
    // --init from a run folder: the engine starts from those weights.
    let cfg = RunConfig {
        epochs: 1,
        init: Some(a.clone()),
        out: tmp.path().join("b"),
        ..toy_cfg(&a)
    };
    let e = engine_for(&cfg, &data);
    let log = e.log.clone();
    run_with_data(&cfg, &data, Box::new(e), counter(), false).unwrap();
    // 30 samples in batches of 8: run `a` used sequence numbers 0..4; this run continues at 4
    // (the restored engine refuses numbers it has already passed).
    assert_eq!(log.lock().unwrap().steps.first().map(|x| x.0), Some(4));
    assert_eq!(log.lock().unwrap().loaded, vec![trained]);
    assert!(
        log.lock().unwrap().restored.is_empty(),
        "--init is not a resume"
    );

    // The engine's input shape must match the data set.
    let other = Dataset {
        shape: InputShape {
            channels: 1,
            height: 2,
            width: 8,
        },
        ..data.clone()
    };
    let e = engine_for(&cfg, &data);
    let err = run_with_data(
        &RunConfig {
            out: tmp.path().join("c"),
            init: None,
            ..cfg.clone()
        },
        &other,
        Box::new(e),
        counter(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("configured for input"), "{err}");
    let mut broken = data.clone();
    broken.test.images.pop();
    let e = engine_for(&cfg, &data);
    let c = RunConfig {
        out: tmp.path().join("d"),
        init: None,
        ..cfg.clone()
    };
    let err = run_with_data(&c, &broken, Box::new(e), counter(), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("test split"), "{err}");

    // Resuming with a different batch size is refused; a corrupt checkpoint is named.
    let err = run_toy(
        &RunConfig {
            resume: true,
            batch: 4,
            ..toy_cfg(&a)
        },
        &data,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("checkpoint.bin") && err.contains("batch 8"),
        "{err}"
    );
    // Resuming from checkpoint bytes fails with an error naming what is wrong with them.
    let resume_err = |bytes: &[u8]| {
        std::fs::write(a.join(CHECKPOINT_FILE), bytes).unwrap();
        run_toy(
            &RunConfig {
                resume: true,
                ..toy_cfg(&a)
            },
            &data,
        )
        .unwrap_err()
        .to_string()
    };
    let err = resume_err(b"E2THOST3garbage");
    assert!(
        err.contains("checkpoint.bin") && err.contains("corrupt"),
        "{err}"
    );
    // A checkpoint of the previous layout is named as such, not as corrupt.
    for old in [b"E2THOST1whatever", b"E2THOST2whatever"] {
        let err = resume_err(old);
        assert!(err.contains("older e2train"), "{err}");
    }
    let err = resume_err(b"hello");
    assert!(err.contains("wrong magic"), "{err}");
}

#[test]
fn observer_errors_are_reported() {
    struct Bad;
    impl EpochObserver for Bad {
        fn name(&self) -> &str {
            "bad"
        }
        fn columns(&self) -> Vec<String> {
            vec!["x".into()]
        }
        fn on_epoch_end(&mut self, _row: &EpochRow) -> Result<Vec<String>, String> {
            Ok(vec![])
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(16, 4);
    let cfg = RunConfig {
        epochs: 1,
        ..toy_cfg(tmp.path())
    };
    let err = run_with_data(
        &cfg,
        &data,
        Box::new(engine_for(&cfg, &data)),
        vec![Box::new(Bad)],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("observer 'bad'") && err.contains("0 values for 1 columns"),
        "{err}"
    );
}

#[test]
fn resume_before_the_first_checkpoint_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(24, 8);
    let full = RunConfig {
        epochs: 2,
        ..toy_cfg(&tmp.path().join("full"))
    };
    run_toy(&full, &data).unwrap();
    let cfg = RunConfig {
        out: tmp.path().join("early"),
        ..full.clone()
    };
    let mut e = engine_for(&cfg, &data);
    e.fail_at = Some(1);
    assert!(run_with_data(&cfg, &data, Box::new(e), counter(), false).is_err());
    assert!(!cfg.out.join(CHECKPOINT_FILE).exists());
    // Without --resume the folder is refused (epochs.csv exists); with it the run starts over.
    assert!(run_toy(&cfg, &data).is_err());
    run_toy(
        &RunConfig {
            resume: true,
            ..cfg.clone()
        },
        &data,
    )
    .unwrap();
    assert_eq!(read_state(&cfg.out).engine, read_state(&full.out).engine);
    assert_eq!(csv_without_times(&cfg.out), csv_without_times(&full.out));
}

#[test]
fn bn_calibration_runs_before_each_evaluation_on_the_epochs_first_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_data(40, 10);
    let mut cfg = toy_cfg(tmp.path());
    cfg.bn_calibrate = 2;
    cfg.eval_batch = 100;
    cfg.augment = true;
    let engine = engine_for(&cfg, &data);
    let log = engine.log.clone();
    let s = run_with_data(&cfg, &data, Box::new(engine), counter(), false).unwrap();
    let log = log.lock().unwrap();
    let batches = 40 / cfg.batch;
    assert_eq!(log.evals.len(), cfg.epochs as usize);
    assert_eq!(log.calib.len(), 2 * cfg.epochs as usize);
    for (e, pair) in log.calib.chunks(2).enumerate() {
        let plan = EpochPlan::new(&data.train, data.shape, cfg.batch, cfg.seed, e as u64, true);
        for (b, (index, images, steps)) in pair.iter().enumerate() {
            assert_eq!(*index, b as u32, "epoch {e}: chunks count from 0");
            assert_eq!(*steps, (e + 1) * batches, "after the epoch's training");
            assert_eq!(
                *images,
                plan.batch(b).0,
                "epoch {e} chunk {b}: that epoch's batch {b}"
            );
        }
        assert_eq!(
            log.evals[e],
            (e + 1) * batches,
            "evaluation follows calibration"
        );
    }
    // Its accelerator work is booked in the run's counters (one GEMM per step and per chunk).
    assert_eq!(s.counters.gemms, (log.steps.len() + log.calib.len()) as u64);
    // More calibration batches than an epoch has: the epoch's batches, once each.
    drop(log);
    cfg.bn_calibrate = 50;
    cfg.out = tmp.path().join("many");
    let engine = engine_for(&cfg, &data);
    let log = engine.log.clone();
    run_with_data(&cfg, &data, Box::new(engine), counter(), false).unwrap();
    assert_eq!(
        log.lock().unwrap().calib.len(),
        batches * cfg.epochs as usize
    );
}
