//! The `holdfast` binary: one image, subcommands for the controller, the data mover and code generation.

use holdfast::runtime::{self, telemetry};
use holdfast::{cli, mover};

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
    Controller(runtime::ControllerArgs),
    /// Write the CustomResourceDefinitions into crds/ (or check them with --check).
    Crdgen(cli::crdgen::CrdgenArgs),
    /// Data mover: back up, restore and check restic-format repositories.
    Mover(mover::MoverCommand),
    /// List the restore points of a claim, newest first (installed as `kubectl-holdfast`:
    /// `kubectl holdfast restore-points pvc/NAME -n NS`).
    RestorePoints(cli::points::PointsArgs),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let tokio_runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Crdgen(args) => cli::crdgen::run(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Controller(args) => {
            telemetry::init_tracing();
            tokio_runtime()?
                .block_on(runtime::run(args))
                .map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Mover(cmd) => tokio_runtime()?.block_on(mover::run(cmd)),
        Command::RestorePoints(args) => tokio_runtime()?
            .block_on(cli::points::run(&args))
            .map(|()| std::process::ExitCode::SUCCESS),
    }
}
