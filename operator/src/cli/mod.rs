//! Command-line subcommands besides the controller and the mover: code generation, and the
//! kubectl plugin's commands.

pub mod crdgen;
pub mod plugin;
