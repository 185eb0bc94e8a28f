//! Stand-alone build of the `holdfast mover` subcommand (operator/src/mover), for
//! benchmarks and for compiling the module inside this crate's checks:
//! `cargo run --release -p holdfast-repo --example mover -- backup ...`.

#[path = "../../src/mover/mod.rs"]
#[allow(dead_code)] // the controller side of mover::protocol is not used here
mod mover;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "mover")]
struct Cli {
    #[command(flatten)]
    cmd: mover::MoverCommand,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match mover::run(cli.cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
