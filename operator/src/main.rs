//! The `holdfast` binary: one image, subcommands for the controller, the data mover and code generation.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "holdfast", version, about = "Holdfast protects the data in Kubernetes PersistentVolumes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the CustomResourceDefinitions into crds/ (or check them with --check).
    Crdgen(cli::crdgen::CrdgenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen(args) => cli::crdgen::run(&args),
    }
}
