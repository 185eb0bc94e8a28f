//! The `holdfast` binary: one image, subcommands for the controller, the data mover and code generation.
fn main() {}
