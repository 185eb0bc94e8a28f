//! The controllers, one folder each: a controller is its [`Reconciler`](crate::runtime::kernel::Reconciler)
//! (types and phase functions) on the shared kernel in `runtime/`.

pub mod backup;
pub mod departed;
pub mod location;
pub mod repository;
pub mod restore;
pub mod schedule;
pub mod transfer;
