//! The `holdfast` binary: one image, subcommands for the controller, the data mover and code generation.

mod cli;
mod controller;
mod telemetry;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "holdfast",
    version,
    about = "Holdfast protects the data in Kubernetes PersistentVolumes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (controllers for every Holdfast kind).
    Controller(controller::ControllerArgs),
    /// Write the CustomResourceDefinitions into crds/ (or check them with --check).
    Crdgen(cli::crdgen::CrdgenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen(args) => cli::crdgen::run(&args),
        Command::Controller(args) => {
            telemetry::init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(controller::run(args))
        }
    }
}
