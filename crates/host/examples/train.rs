//! `cargo run --release -p e2t-host --example train -- [e2train train flags]`: the host run loop
//! with the fp32 engine, for trying the host without the CLI crate.

use clap::Parser;
use e2t_host::TrainArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn main() {
    let cfg = match Cli::parse().args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let result = e2t_host::prepare(&cfg).and_then(|(data, ec)| {
        let engine = e2t_nn::Fp32Engine::new(ec).map_err(|source| e2t_host::HostError::Engine {
            context: "building the model".into(),
            source,
        })?;
        e2t_host::run_with_data(&cfg, &data, Box::new(engine), vec![], true)
    });
    match result {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
