//! Holdfast: the operator's controllers, the data mover and code generation, used by the
//! `holdfast` binary and by the end-to-end tests.
//!
//! - `runtime/`: the operator process and the reconcile kernel every controller runs on;
//! - `controller/`: the controllers, one folder each, a file per phase;
//! - `hooks/`: resolving and running exec hooks (backup pre/post, restore postExec);
//! - `objects/`: capture and restore of Kubernetes objects (a library the e2e tests use too);
//! - `storage/`: the bucket layout, repository passwords and stores of a location;
//! - `snapshot`: the CSI snapshot API types;
//! - `mover/`: the data mover that runs in mover pods, and its protocol with the controllers.

pub mod cli;
pub mod controller;
pub mod hooks;
pub mod mover;
pub mod objects;
pub mod runtime;
pub mod snapshot;
pub mod storage;
