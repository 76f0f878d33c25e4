//! `e2train`: the command line.
use clap::Parser;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("E2T_GIT_REV"), ")");

#[derive(Parser)]
#[command(name = "e2train", version = VERSION, about = "Energy-efficient CNN training on FPGAs (E2-Train)")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
