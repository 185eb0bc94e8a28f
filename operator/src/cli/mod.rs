//! Command-line subcommands besides the controller and the mover: code generation, and the
//! kubectl plugin's commands.

pub mod bundle;
pub mod crdgen;
pub mod olm_checks;
pub mod plugin;
