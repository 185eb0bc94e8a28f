//! Command-line subcommands that do not talk to the cluster (code generation).

pub mod crdgen;
