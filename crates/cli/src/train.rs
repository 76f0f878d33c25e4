//! `e2train train` and `e2train sweep`: resolve the run, connect the board, attach the energy
//! observer, run, print the result table.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};
use e2t_board::{BoardSpec, ConnectOptions, RemoteEngine, RemoteOptions};
use e2t_core::{Batch, Counters, EngineConfig, EngineError, EvalResult, StepEngine, StepResult};
use e2t_energy::{EnergyModel, EnergyObserver, Profile};
use e2t_host::{EpochObserver, RunConfig, RunSummary, TrainArgs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Board and energy flags shared by `train`, `demo` and `sweep`.
#[derive(Args, Clone, Debug)]
pub struct BoardArgs {
    /// Where training runs: `sim` (agent in this process, soft accelerator), `pty` (agent as a
    /// separate process over a pseudo-terminal) or `serial:/dev/ttyUSB1@921600` (a real board)
    #[arg(long, default_value = "sim")]
    pub board: String,
    /// Refuse a board whose bitstream sha256 differs from this (hex)
    #[arg(long, value_name = "SHA256")]
    pub expect_bitstream: Option<String>,
    /// Emulate a serial line of this many baud on the sim/pty link (to study link throughput)
    #[arg(long, value_name = "BAUD")]
    pub emulate_baud: Option<u32>,
    /// Energy profile: `asic45`, `zc706`, or a TOML file of your own
    #[arg(long, default_value = "asic45", value_name = "NAME|FILE")]
    pub energy_profile: String,
    /// Grid carbon intensity in gCO2e/kWh, to report CO2-equivalent (never fetched)
    #[arg(long, value_name = "G_PER_KWH", allow_negative_numbers = true)]
    pub grid_intensity: Option<f64>,
}

#[derive(Args)]
pub struct TrainCmd {
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub board: BoardArgs,
    /// A baseline run folder of the same recipe: the result table shows the energy saving against it
    #[arg(long, value_name = "RUN_DIR")]
    pub compare: Option<PathBuf>,
    /// Print nothing but errors and the final table
    #[arg(long)]
    pub quiet: bool,
}

/// What a finished run hands back to its caller.
pub struct RunOutcome {
    pub summary: RunSummary,
    pub energy: e2t_energy::EnergyLog,
    /// The method runs on the accelerator (INT16/INT8 numerics), so its counters price energy.
    pub on_accel: bool,
}

/// Passes every call to the board and refreshes `link.json` in the run folder once per epoch (at
/// evaluation), so link statistics survive a crash as well as they can.
struct LinkStatsEngine {
    inner: RemoteEngine,
    path: PathBuf,
}

impl LinkStatsEngine {
    fn write_stats(&self) {
        let s = self.inner.link_stats();
        let doc = serde_json::json!({
            "board": self.inner.board_info(),
            "reconnects": self.inner.reconnects(),
            "link": s,
        });
        if let Ok(text) = serde_json::to_string_pretty(&doc) {
            // Best effort: link statistics must never fail a training run.
            let _ = e2t_host::atomic::write_atomic(&self.path, text.as_bytes());
        }
    }
}

impl StepEngine for LinkStatsEngine {
    fn config(&self) -> &EngineConfig {
        self.inner.config()
    }
    fn step(&mut self, batch: &Batch) -> Result<StepResult, EngineError> {
        self.inner.step(batch)
    }
    fn skip_step(&mut self, lr: f32) -> Result<(), EngineError> {
        self.inner.skip_step(lr)
    }
    fn evaluate(&mut self, images: &[u8], labels: &[u8]) -> Result<EvalResult, EngineError> {
        let r = self.inner.evaluate(images, labels);
        self.write_stats();
        r
    }
    fn calibrate_bn(&mut self, images: &[u8], index: u32) -> Result<(), EngineError> {
        self.inner.calibrate_bn(images, index)
    }
    fn counters(&self) -> Counters {
        self.inner.counters()
    }
    fn checkpoint(&self) -> Result<Vec<u8>, EngineError> {
        self.inner.checkpoint()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        self.inner.restore(bytes)
    }
    fn load_weights(&mut self, checkpoint: &[u8]) -> Result<(), EngineError> {
        self.inner.load_weights(checkpoint)
    }
}

/// What every agent (in-process `sim`, `e2train agent` on a board) builds: the engine the
/// configuration asks for, from another run's weights with `--init`.
pub fn engine_factory(
    cfg: &EngineConfig,
    init: Option<&[u8]>,
) -> Result<Box<dyn StepEngine>, EngineError> {
    match init {
        None => e2t_train::build_engine(cfg),
        Some(b) => e2t_train::build_engine_with_init(cfg, b),
    }
}

impl Drop for LinkStatsEngine {
    fn drop(&mut self) {
        self.write_stats();
    }
}

/// Connect to the board named in `args` and configure its engine for `ec`.
pub fn connect_board(
    args: &BoardArgs,
    ec: &EngineConfig,
    run_dir: &Path,
) -> Result<Box<dyn StepEngine>> {
    let spec: BoardSpec = args.board.parse()?;
    let factory: e2t_board::remote::SharedFactory = Arc::new(engine_factory);
    let opts = ConnectOptions {
        remote: RemoteOptions {
            expected_bitstream_sha256: args.expect_bitstream.clone(),
            ..RemoteOptions::default()
        },
        sim_factory: Some(factory),
        sim_info: Some(e2t_proto::BoardInfo::simulated("sim", ec.array)),
        agent_command: None,
        emulate_baud: args.emulate_baud,
        faults: None,
    };
    let remote = e2t_board::connect(&spec, ec, &opts)
        .with_context(|| format!("connecting to board '{spec}'"))?;
    Ok(Box::new(LinkStatsEngine {
        inner: remote,
        path: run_dir.join("link.json"),
    }))
}

pub fn energy_observer(args: &BoardArgs, epochs: u32, quiet: bool) -> Result<EnergyObserver> {
    if let Some(g) = args.grid_intensity {
        if !(g.is_finite() && g >= 0.0) {
            bail!("--grid-intensity {g}: expected a non-negative number of gCO2e/kWh");
        }
    }
    let profile = Profile::resolve(&args.energy_profile)
        .with_context(|| format!("--energy-profile {}", args.energy_profile))?;
    let measured = args.board.starts_with("serial:");
    let obs = EnergyObserver::new(
        EnergyModel::new(profile),
        args.grid_intensity,
        measured,
        epochs,
    )?;
    Ok(if quiet {
        obs
    } else {
        obs.with_prediction_hook(|p| {
            println!(
                "energy forecast after epoch 1: {:.4} J for the whole run ({})",
                p.predicted_total_j, p.note
            );
        })
    })
}

/// Run one training job end to end.
pub fn run_training(cfg: &RunConfig, board: &BoardArgs, progress: bool) -> Result<RunOutcome> {
    let (data, ec) = e2t_host::prepare(cfg)?;
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("creating run folder {}", cfg.out.display()))?;
    let engine = connect_board(board, &ec, &cfg.out)?;
    let energy = energy_observer(board, cfg.epochs, !progress)?;
    let log = energy.log();
    let observers: Vec<Box<dyn EpochObserver>> = vec![Box::new(energy)];
    let summary = e2t_host::run::run_with_data(cfg, &data, engine, observers, progress)?;
    let energy = log.lock().map(|g| g.clone()).unwrap_or_default();
    Ok(RunOutcome {
        summary,
        energy,
        on_accel: cfg.method.precision == e2t_core::Precision::Accel,
    })
}

pub fn train(cmd: &TrainCmd) -> Result<RunOutcome> {
    let mut cfg = cmd.train.resolve()?;
    cfg.git_rev = Some(crate::GIT_REV.to_string());
    crate::set_threads(cfg.threads)?;
    let baseline = match &cmd.compare {
        Some(dir) => Some(
            e2t_report::read_run(dir).with_context(|| format!("--compare {}", dir.display()))?,
        ),
        None => None,
    };
    let out = run_training(&cfg, &cmd.board, !cmd.quiet)?;
    let mut rows = vec![Row::from_run(&out)];
    if let Some(b) = &baseline {
        rows.insert(0, Row::from_report(b));
    }
    print_table(&rows, baseline.as_ref().map(|_| 0));
    println!("run folder: {}", out.summary.run_dir.display());
    Ok(out)
}

/// One line of the result table.
pub struct Row {
    pub label: String,
    pub test_acc: f64,
    pub epochs: u32,
    pub counters: Option<Counters>,
    pub energy_per_epoch_j: Option<f64>,
    pub energy_total_j: Option<f64>,
}

impl Row {
    pub fn from_run(o: &RunOutcome) -> Row {
        let n = o.energy.epochs.len();
        let total = o.energy.cumulative.total_j();
        // An fp32 method runs on the host CPU: it has no accelerator counters, so there is no
        // accelerator energy to show (a 0 J figure would read as a measurement).
        let on_accel = o.on_accel && n > 0;
        Row {
            label: o.summary.method.clone(),
            test_acc: o.summary.final_test_acc,
            epochs: o.summary.epochs_done,
            counters: on_accel.then_some(o.summary.counters),
            energy_per_epoch_j: on_accel.then(|| total / n as f64),
            energy_total_j: on_accel.then_some(total),
        }
    }
    fn from_report(r: &e2t_report::RunData) -> Row {
        Row {
            label: format!("{} (compare)", r.method),
            test_acc: r.final_test_acc,
            epochs: r
                .epochs
                .column("epoch")
                .map(|c| c.len() as u32)
                .unwrap_or(0),
            counters: None,
            energy_per_epoch_j: r.energy_per_epoch_j(),
            energy_total_j: r.energy_total_j(),
        }
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite())
        .map(f)
        .unwrap_or_else(|| "-".into())
}

/// Print the end-of-run table; `baseline` is the index of the row savings are measured against.
pub fn print_table(rows: &[Row], baseline: Option<usize>) {
    println!();
    println!(
        "{:<22} {:>7} {:>6} {:>14} {:>14} {:>14} {:>13} {:>12} {:>9}",
        "method",
        "top-1",
        "epochs",
        "MACs int16",
        "MACs int8",
        "cycles",
        "energy/epoch",
        "energy",
        "saving"
    );
    let base = baseline
        .and_then(|i| rows.get(i))
        .and_then(|r| r.energy_total_j);
    for r in rows {
        let c = r.counters;
        let saving = match (base, r.energy_total_j) {
            (Some(b), Some(e)) if b > 0.0 => format!("{:.1}%", 100.0 * (1.0 - e / b)),
            _ => "-".into(),
        };
        println!(
            "{:<22} {:>6.2}% {:>6} {:>14} {:>14} {:>14} {:>13} {:>12} {:>9}",
            r.label,
            100.0 * r.test_acc,
            r.epochs,
            c.map(|c| c.macs_int16.to_string())
                .unwrap_or_else(|| "-".into()),
            c.map(|c| c.macs_int8.to_string())
                .unwrap_or_else(|| "-".into()),
            c.map(|c| c.total_cycles.to_string())
                .unwrap_or_else(|| "-".into()),
            opt(r.energy_per_epoch_j, |e| format!("{e:.4} J")),
            opt(r.energy_total_j, |e| format!("{e:.4} J")),
            saving
        );
    }
}

#[derive(Args)]
pub struct SweepCmd {
    /// Sweep folder (runs, sweep.csv and summary.csv go here)
    #[arg(long)]
    pub out: PathBuf,
    /// Sweep description in TOML (methods, seeds, fixed flags, grid); flags below add to it
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Methods, comma separated (baseline, e2train, fp32, smd, slu, psg, smd+slu, smd+slu+psg, ...)
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Seeds, comma separated
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// A train flag fixed for every run, as KEY=VALUE (e.g. model=resnet20); repeatable
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub fixed: Vec<String>,
    /// A train flag to vary, as KEY=V1,V2,...; repeatable (runs = methods x seeds x grid)
    #[arg(long = "grid", value_name = "KEY=V1,V2")]
    pub grid: Vec<String>,
    /// Run this many runs at once as separate processes (1: in this process, one after another)
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    #[command(flatten)]
    pub board: BoardArgs,
}

fn key_value(s: &str, flag: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => bail!("{flag} '{s}': expected KEY=VALUE"),
    }
}

fn sweep_spec(cmd: &SweepCmd) -> Result<e2t_report::SweepSpec> {
    let mut spec = match &cmd.config {
        Some(p) => e2t_report::SweepSpec::load(p)?,
        None => {
            if cmd.methods.is_empty() || cmd.seeds.is_empty() {
                bail!("sweep needs --config FILE.toml, or --methods and --seeds");
            }
            e2t_report::SweepSpec::new(cmd.methods.clone(), cmd.seeds.clone())?
        }
    };
    if cmd.config.is_some() && (!cmd.methods.is_empty() || !cmd.seeds.is_empty()) {
        bail!("give methods and seeds either in --config or as flags, not both");
    }
    for f in &cmd.fixed {
        let (k, v) = key_value(f, "--set")?;
        spec = spec.with_fixed(&k, &v)?;
    }
    for g in &cmd.grid {
        let (k, v) = key_value(g, "--grid")?;
        spec = spec.with_grid(&k, v.split(',').map(|s| s.trim().to_string()).collect())?;
    }
    Ok(spec)
}

fn board_flags(b: &BoardArgs) -> Vec<String> {
    let mut a = vec![
        "--board".into(),
        b.board.clone(),
        "--energy-profile".into(),
        b.energy_profile.clone(),
    ];
    if let Some(s) = &b.expect_bitstream {
        a.extend(["--expect-bitstream".into(), s.clone()]);
    }
    if let Some(g) = b.grid_intensity {
        a.extend(["--grid-intensity".into(), g.to_string()]);
    }
    a
}

pub fn sweep(cmd: &SweepCmd) -> Result<()> {
    let spec = sweep_spec(cmd)?;
    if cmd.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    // Check every run's flags before starting any, so a typo fails at once rather than run by run.
    for r in spec.expand()? {
        let mut argv = vec!["e2train".to_string(), "train".to_string()];
        argv.extend(r.args(&cmd.out.join(&r.dir_name)));
        argv.extend(board_flags(&cmd.board));
        let parsed = crate::Cli::try_parse_from(&argv).map_err(|e| {
            anyhow::anyhow!(
                "sweep run {}: {}",
                r.dir_name,
                e.to_string().lines().next().unwrap_or_default()
            )
        })?;
        if let crate::Cmd::Train(t) = parsed.cmd {
            t.train
                .resolve()
                .with_context(|| format!("sweep run {}", r.dir_name))?;
        }
    }
    let plan = e2t_report::Plan::new(&cmd.out, &spec)?;
    let pending: Vec<_> = plan.pending().cloned().collect();
    println!(
        "sweep {}: {} runs, {} already done, {} to run",
        cmd.out.display(),
        plan.runs.len(),
        plan.runs.len() - pending.len(),
        pending.len()
    );
    let exe = std::env::current_exe().context("finding the e2train executable")?;
    let mut failed = Vec::new();
    // Separate processes keep runs independent (a crash loses one run) and use --jobs cores.
    for chunk in pending.chunks(cmd.jobs) {
        let mut children = Vec::new();
        for r in chunk {
            e2t_report::Plan::prepare(r)?;
            let mut args = vec!["train".to_string(), "--quiet".to_string()];
            args.extend(r.spec.args(&r.dir));
            args.extend(board_flags(&cmd.board));
            if cmd.jobs > 1 {
                args.extend(["--threads".into(), "1".into()]);
            }
            println!("sweep: starting {}", r.spec.dir_name);
            let child = std::process::Command::new(&exe)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("starting run {}", r.spec.dir_name))?;
            children.push((r.spec.dir_name.clone(), child));
        }
        for (name, mut child) in children {
            let status = child
                .wait()
                .with_context(|| format!("waiting for run {name}"))?;
            if status.success() {
                println!("sweep: finished {name}");
            } else {
                println!("sweep: run {name} failed ({status})");
                failed.push(name);
            }
        }
    }
    let tables = e2t_report::write_sweep_tables(&cmd.out, &spec)?;
    println!(
        "sweep tables: {} and {}",
        tables.sweep_csv.display(),
        tables.summary_csv.display()
    );
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed: {} (run the sweep again to retry them)",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
