//! The `holdfast` binary: one image, subcommands for the controller, the data mover and code generation.

use holdfast::runtime::{self, telemetry};
use holdfast::{cli, mover};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// The kubectl plugin's commands (installed as `kubectl-holdfast`: `kubectl holdfast …`).
    #[command(flatten)]
    Plugin(cli::plugin::PluginCommand),
}

/// The file name the binary was called by.
fn invoked_as() -> Option<String> {
    std::env::args_os().next().and_then(|a| {
        std::path::Path::new(&a)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
    })
}

/// The command line; called as `kubectl-holdfast` (a kubectl plugin), usage says
/// `kubectl holdfast`.
fn command() -> clap::Command {
    let cmd = Cli::command();
    if invoked_as().as_deref() == Some("kubectl-holdfast") {
        cmd.bin_name("kubectl holdfast")
    } else {
        cmd
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    // Installed as `kubectl_complete-holdfast`, kubectl asks it to complete `kubectl holdfast …`.
    if invoked_as().as_deref() == Some("kubectl_complete-holdfast") {
        let words: Vec<String> = std::env::args().skip(1).collect();
        // Only the plugin's commands: the operator's own are not typed after `kubectl holdfast`.
        let plugin_only = ["controller", "crdgen", "mover"]
            .into_iter()
            .fold(Cli::command(), |c, name| {
                c.mut_subcommand(name, |s| s.hide(true))
            });
        cli::plugin::completion::kubectl_complete(plugin_only, &words)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
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
        Command::Plugin(cmd) => Ok(cli::plugin::main(cmd, command())),
    }
}
