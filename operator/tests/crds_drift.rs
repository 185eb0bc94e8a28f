//! Fails when crds/ no longer matches what the API types generate.

use std::path::Path;
use std::process::Command;

#[test]
fn generated_crds_match_the_committed_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["crdgen", "--check", "--out"])
        .arg(root.join("crds"))
        .output()
        .expect("run holdfast crdgen --check");
    assert!(
        out.status.success(),
        "crds/ drifted from the API types:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
