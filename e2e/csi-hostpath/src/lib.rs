//! A hostpath CSI driver for the Holdfast testbed, a drop-in replacement for
//! the Go stand-in `e2e/tools/hostpathplugin` (same flags, same on-disk layout,
//! same CSI behaviour):
//!
//! - `<statedir>/<volumeID>/` — a volume is a directory (mode 0777);
//! - `<statedir>/<snapshotID>.snap` — a snapshot is a gzipped tarball of it
//!   (`tar -czf`, restored with `tar -xzpf`; clones use `cp -a`);
//! - `<statedir>/state.json` — names, sizes and sources ([`state::State`]).
//!
//! Identity, Controller (volumes from nothing, a snapshot or a clone;
//! snapshots) and Node (publish as bind mounts) services on a unix socket.
//! Filesystem volumes only; no topology, attach, expansion or pagination.

pub mod cli;
pub mod driver;
pub mod group;
pub mod service;
pub mod state;

/// Generated from the trimmed `proto/csi.proto` (package `csi.v1`).
pub mod csi {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

/// Version reported by `GetPluginInfo` and `-version`: the build-time
/// environment variable `HOSTPATH_VERSION` (the Go build's `main.version`),
/// else the crate version.
pub const VERSION: &str = match option_env!("HOSTPATH_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
