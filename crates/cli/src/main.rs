//! `e2train`: the command line. Each subcommand is a thin layer over a library crate; this file
//! only parses flags, wires crates together and prints results.

mod demo;
mod train;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use e2t_core::{InputShape, ModelKind};
use std::path::PathBuf;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("E2T_GIT_REV"),
    ")"
);

/// The git revision this binary was built from.
pub const GIT_REV: &str = env!("E2T_GIT_REV");

#[derive(Parser)]
#[command(
    name = "e2train",
    version = VERSION,
    about = "Energy-efficient CNN training (E2-Train: SMD, SLU, PSG) on a simulated or real FPGA board"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Train a model (fp32 reference, INT16 baseline or E2-Train) and write a run folder.
    Train(Box<train::TrainCmd>),
    /// The main job of `make run`: a baseline run and an E2-Train run of one recipe, compared.
    Demo(Box<demo::DemoCmd>),
    /// Training-step throughput (images/s) and peak memory of the fp32 engine.
    Bench(BenchCmd),
    /// Run methods x seeds (x hyper-parameters), resumable, with 95% confidence intervals.
    Sweep(Box<train::SweepCmd>),
    /// SVG plots and a Markdown report from run or sweep folders.
    Report(ReportCmd),
    /// Serve the board protocol on a serial port (on the board: the UART device).
    Agent(AgentCmd),
}

#[derive(Args)]
struct BenchCmd {
    /// Model (resnet8, resnet20, ..., resnet110)
    #[arg(long, default_value = "resnet8")]
    model: String,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Input shape CxHxW (Fashion-MNIST is 1x28x28, CIFAR-10 3x32x32)
    #[arg(long, default_value = "1x28x28")]
    input: String,
    /// Untimed steps before measuring
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed windows (the median is reported)
    #[arg(long, default_value_t = 5)]
    windows: usize,
    /// Steps per timed window
    #[arg(long, default_value_t = 4)]
    iters: usize,
    /// Worker threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Engine: fp32 (the reference trainer), baseline (INT16 on the soft accelerator), e2train, or
    /// any method label (smd, slu, psg, smd+slu, ...)
    #[arg(long, default_value = "fp32")]
    method: String,
    /// Accelerator MAC array shape RxC (accelerator methods)
    #[arg(long, value_name = "RxC", default_value = "16x16")]
    array: String,
}

#[derive(Args)]
struct ReportCmd {
    /// Run folders or sweep folders
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Output folder (default: report/ in the first folder)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Method to compare against (default: the sweep's baseline, or `baseline`)
    #[arg(long)]
    baseline: Option<String>,
}

#[derive(Args)]
struct AgentCmd {
    /// Serial device to serve on (the board's UART, or a pseudo-terminal)
    #[arg(long, value_name = "PATH")]
    port: PathBuf,
    #[arg(long, default_value_t = e2t_board::remote::DEFAULT_BAUD)]
    baud: u32,
    /// Board id reported in the handshake
    #[arg(long, default_value = "soft-agent")]
    board_id: String,
    /// Power source: `none` (simulation; the energy model estimates) or `hwmon` (ZC706 UCD90120A)
    #[arg(long, default_value = "none")]
    power: String,
}

fn parse_shape(s: &str) -> Result<InputShape> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let dims: Option<Vec<u32>> = parts
        .iter()
        .map(|p| p.trim().parse::<u32>().ok().filter(|&v| v > 0))
        .collect();
    match dims.as_deref() {
        Some([c, h, w]) => Ok(InputShape {
            channels: *c,
            height: *h,
            width: *w,
        }),
        _ => bail!("--input '{s}': expected CxHxW with positive integers, e.g. 1x28x28"),
    }
}

pub(crate) fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring the worker threads")?;
    }
    Ok(())
}

fn bench(cmd: &BenchCmd) -> Result<()> {
    let model: ModelKind = cmd.model.parse()?;
    let input = parse_shape(&cmd.input)?;
    let method = e2t_host::config::parse_method(&cmd.method)?;
    let array = e2t_host::config::parse_array(&cmd.array)?;
    set_threads(cmd.threads)?;
    // The fp32 trainer keeps its own bench (the figures of issue 2); every other method times the
    // engine a board agent runs, with SMD's coin played as the host plays it.
    let json = if method == e2t_core::MethodConfig::fp32() {
        let report =
            e2t_nn::bench_train_step(model, cmd.batch, input, cmd.warmup, cmd.windows, cmd.iters)?;
        println!("{}", report.line());
        serde_json::to_string_pretty(&report)?
    } else {
        let cfg = e2t_train::bench_engine_config(model, input, method, array);
        let report = e2t_train::bench_engine_train_step(
            &cfg,
            cmd.batch,
            cmd.warmup,
            cmd.windows,
            cmd.iters,
        )?;
        println!("{}", report.line());
        serde_json::to_string_pretty(&report)?
    };
    println!("{json}");
    if let Some(p) = &cmd.json {
        e2t_host::atomic::write_atomic(p, json.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn report(cmd: &ReportCmd) -> Result<()> {
    let out = cmd
        .out
        .clone()
        .unwrap_or_else(|| cmd.dirs[0].join("report"));
    let opts = e2t_report::ReportOptions {
        baseline: cmd.baseline.clone(),
        title: None,
    };
    let s = e2t_report::write_report_with(&cmd.dirs, &out, &opts)?;
    println!(
        "report: {} ({} runs, {} plots)",
        s.markdown.display(),
        s.runs,
        s.plots.len()
    );
    for n in &s.notes {
        println!("note: {n}");
    }
    Ok(())
}

fn agent(cmd: &AgentCmd) -> Result<()> {
    let power: Box<dyn e2t_board::PowerMonitor> = match cmd.power.as_str() {
        "none" => Box::new(e2t_board::NoPower),
        "hwmon" => Box::new(
            e2t_board::HwmonUcd9000::discover(std::path::Path::new("/sys/class/hwmon"))
                .context("finding the UCD90120A in /sys/class/hwmon")?,
        ),
        other => bail!("--power '{other}': expected none or hwmon"),
    };
    let transport = e2t_link::open_serial(&cmd.port, cmd.baud).with_context(|| {
        format!(
            "opening serial port {} at {} baud",
            cmd.port.display(),
            cmd.baud
        )
    })?;
    let info = e2t_proto::BoardInfo::simulated(cmd.board_id.clone(), (16, 16));
    eprintln!(
        "e2train agent {VERSION}: serving on {} at {} baud",
        cmd.port.display(),
        cmd.baud
    );
    e2t_board::serve(Box::new(transport), &train::engine_factory, info, power)?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Train(c) => train::train(c).map(|_| ()),
        Cmd::Demo(c) => demo::demo(c),
        Cmd::Bench(c) => bench(c),
        Cmd::Sweep(c) => train::sweep(c),
        Cmd::Report(c) => report(c),
        Cmd::Agent(c) => agent(c),
    };
    if let Err(e) = r {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message already
/// holds (many library errors print their `source` inline, and anyhow's `{:#}` would repeat it).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn error_chain_skips_causes_already_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("/x.toml: No such file");
        assert_eq!(error_chain(&e), "/x.toml: No such file");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("reading /x.toml");
        assert_eq!(error_chain(&e), "reading /x.toml: No such file");
    }
}
