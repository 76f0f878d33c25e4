//! `e2train demo` (what `make run` runs): the same recipe trained as the INT16 baseline and with
//! SMD+SLU+PSG on the simulated board, then a comparison table and a report with plots.

use crate::train::{BoardArgs, Row, print_table, run_training};
use anyhow::{Context, Result};
use clap::Args;
use e2t_host::{Settings, TrainArgs};
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoCmd {
    #[arg(long, default_value = "resnet8")]
    model: String,
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Data folder (default: E2TRAIN_DATA, then the Debian package's folder)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// Training images used (the demo must finish in a few minutes)
    #[arg(long, default_value_t = 10000)]
    subset: usize,
    /// Test images evaluated after each epoch
    #[arg(long, default_value_t = 2000)]
    test_subset: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for both runs and the report (default: runs/demo-<UTC time>)
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    board: BoardArgs,
}

pub fn demo(cmd: &DemoCmd) -> Result<()> {
    let out = cmd.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "demo-{}",
            e2t_host::config::utc_stamp(std::time::SystemTime::now())
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    for method in ["baseline", "e2train"] {
        let dir = out.join(method);
        let args = TrainArgs {
            config: None,
            resume: None,
            settings: Settings {
                model: Some(cmd.model.clone()),
                dataset: Some(cmd.dataset.clone()),
                data: cmd.data.clone(),
                epochs: Some(cmd.epochs),
                subset: Some(cmd.subset),
                test_subset: Some(cmd.test_subset),
                seed: Some(cmd.seed),
                method: Some(method.into()),
                out: Some(dir.clone()),
                ..Settings::default()
            },
        };
        let mut cfg = args.resolve()?;
        cfg.git_rev = Some(crate::GIT_REV.to_string());
        println!(
            "== {method}: {} on {}, {} epochs, {} images, board {}",
            cmd.model, cmd.dataset, cmd.epochs, cmd.subset, cmd.board.board
        );
        let o =
            run_training(&cfg, &cmd.board, true).with_context(|| format!("the {method} run"))?;
        rows.push(Row::from_run(&o));
        dirs.push(dir);
    }
    print_table(&rows, Some(0));
    let report_dir = out.join("report");
    let opts = e2t_report::ReportOptions {
        baseline: Some("baseline".into()),
        title: Some("e2train demo: INT16 baseline vs SMD+SLU+PSG".into()),
    };
    let s = e2t_report::write_report_with(&dirs, &report_dir, &opts)?;
    println!("energy profile: {}", cmd.board.energy_profile);
    println!("runs: {}", out.display());
    println!("report and plots: {}", s.markdown.display());
    Ok(())
}
