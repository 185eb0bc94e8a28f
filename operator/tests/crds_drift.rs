//! Fails when a generated file (crds/, the chart's CRD copies and RBAC rules, the OLM bundle
//! in bundle/) no longer matches its source.

use std::path::Path;
use std::process::Command;

#[test]
fn generated_files_match_their_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["crdgen", "--check", "--root"])
        .arg(&root)
        .output()
        .expect("run holdfast crdgen --check");
    assert!(
        out.status.success(),
        "generated files drifted:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
