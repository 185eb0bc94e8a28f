//! The fuzz targets' bodies, shared with the corpus regression tests
//! (`operator/repo/tests/fuzz_corpus.rs`, `operator/tests/fuzz_corpus.rs`), which include
//! the harness files by path so `cargo test` replays every committed input.

#[cfg(feature = "operator")]
pub mod operator_harness;
pub mod repo_harness;
