//! `holdfast-bench`: the benchmark of PERFORMANCE.md. Run it with `e2e/bench/run`, which
//! builds the tools and passes their paths; see `e2e/bench/README.md`.
//!
//! Subcommands: `run` (the benchmark), `generate` (only the datasets), and the internal
//! `measure` (the rusage wrapper) and `ceiling` (the raw read+PUT client).

mod ceiling;
mod dataset;
mod measure;
mod minio;
mod report;
mod run;
mod tools;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "holdfast-bench",
    about = "Benchmark: holdfast mover vs restic, kopia, rustic"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run the benchmark and write the report.
    Run(Box<run::RunArgs>),
    /// Only generate the datasets into a directory.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = run::DEFAULT_SEED)]
        seed: u64,
    },
    /// (internal) Run a command and write its rusage as JSON.
    #[command(hide = true)]
    Measure {
        #[arg(long)]
        result: PathBuf,
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// (internal) Read files and PUT them to S3 in large objects.
    #[command(hide = true)]
    Ceiling(ceiling::CeilingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Sub::Run(a) => run::run(*a),
        Sub::Generate { dir, scale, seed } => {
            dataset::generate(&dir, seed, dataset::Scale { factor: scale }).map(|_| ())
        }
        Sub::Measure { result, command } => measure::wrapper(&result, &command[0], &command[1..]),
        Sub::Ceiling(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(ceiling::run(a))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
