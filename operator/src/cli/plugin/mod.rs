//! The `kubectl holdfast` plugin: the commands people run against a cluster (backup and
//! restore create/get/describe, logs of mover pods, restore points, completion scripts), as
//! subcommands of the `holdfast` binary; installed as `kubectl-holdfast` on the PATH.
//!
//! - `spec`: objects built from flags; `progress` and `describe`: what is shown (pure);
//! - `conn`: the kubectl connection flags; `watch`, `create`, `logs`, `points`: the cluster IO.
//!
//! Exit codes: 0 success; 1 an error of the plugin (connection, a flag, an object not found);
//! 2 a usage error; with `--wait`: 3 Failed, 4 PartiallyFailed, 5 Cancelled or deleted.

pub mod completion;
pub mod conn;
pub mod create;
pub mod describe;
pub mod logs;
pub mod points;
pub mod progress;
pub mod spec;
pub mod watch;

use std::process::ExitCode;

use clap::Subcommand;

/// Exit codes, as documented in `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 success; 1 an error (connection, flag, object not found); 2 usage; \
with --wait: 3 Failed, 4 PartiallyFailed, 5 Cancelled or deleted while waiting.";

/// The plugin's commands (flattened into the binary's top-level commands).
#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Create, list and describe Backups.
    #[command(subcommand)]
    Backup(create::BackupCommand),
    /// Create, list and describe Restores.
    #[command(subcommand)]
    Restore(create::RestoreCommand),
    /// Show a Backup or Restore: phase, times, volumes and progress (`--watch` follows it).
    #[command(after_help = EXIT_CODES)]
    Describe(describe::DescribeArgs),
    /// Logs of the mover pods of a Backup (its DataUploads) or Restore (its DataDownloads).
    Logs(logs::LogsArgs),
    /// List the restore points of a claim, newest first.
    RestorePoints(points::PointsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
}

/// What went wrong, in words that name the flag or object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig or the cluster could not be reached.
    #[error("{0}")]
    Connect(String),
    #[error(transparent)]
    Flag(#[from] spec::FlagError),
    /// A call to the API server failed.
    #[error("{call}: {message}")]
    Kube { call: String, message: String },
    /// Something asked for does not exist, or cannot be shown.
    #[error("{0}")]
    Missing(String),
    /// `--timeout` passed before the object ended.
    #[error("{0}")]
    Timeout(String),
    #[error("writing the output: {0}")]
    Output(String),
    #[error("could not start the async runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// Maps a kube error of `call` (e.g. `get backup ns/name`), explaining the usual ones.
    pub fn kube(call: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        move |e| {
            let call = call.into();
            let message = match &e {
                kube::Error::Api(s) if s.code == 403 => format!(
                    "forbidden: {}; ask for RBAC access (`kubectl auth can-i` shows what you may do)",
                    s.message
                ),
                kube::Error::Api(s) if s.code == 404 && s.message.contains("the server could not find the requested resource") => {
                    "the Holdfast CRDs are not installed on this cluster (`kubectl apply --server-side -f crds/`)".to_string()
                }
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            };
            Self::Kube { call, message }
        }
    }
}

/// Runs a plugin command; `root` is the binary's command (for completion scripts). Errors
/// are printed as kubectl prints them (`error: …`) and exit with 1.
pub fn main(cmd: PluginCommand, root: clap::Command) -> ExitCode {
    run(cmd, root).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

fn run(cmd: PluginCommand, root: clap::Command) -> Result<ExitCode, Error> {
    if let PluginCommand::Completion(args) = &cmd {
        return completion::run(args, root).map(|()| ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    rt.block_on(async move {
        match cmd {
            PluginCommand::Backup(c) => create::backup(c).await,
            PluginCommand::Restore(c) => create::restore(c).await,
            PluginCommand::Describe(a) => describe::run(&a).await,
            PluginCommand::Logs(a) => logs::run(&a).await,
            PluginCommand::RestorePoints(a) => points::run(&a).await.map(|()| ExitCode::SUCCESS),
            PluginCommand::Completion(_) => Ok(ExitCode::SUCCESS),
        }
    })
}
