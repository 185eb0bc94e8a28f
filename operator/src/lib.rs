//! Holdfast: the operator's controllers, the data mover and code generation, used by the
//! `holdfast` binary and by the end-to-end tests.

pub mod cli;
pub mod controller;
pub mod mover;
pub mod telemetry;
