//! Replays every committed fuzz input of the operator's readers (`metadata.json` and
//! `resources.tar.gz`, in `repo/fuzz/corpus/{metadata,archive}/`) through the fuzz targets'
//! own bodies, so a fixed finding stays fixed without running the fuzzer.
//! `write_seed_corpus` (ignored) regenerates the seeds from what the operator writes.

use std::path::{Path, PathBuf};

use holdfast::objects::archive::{self, Item};
use holdfast::objects::select::ResourceType;
use holdfast::storage::metadata::BackupMetadata;
use serde_json::json;

#[path = "../repo/fuzz/src/operator_harness.rs"]
mod harness;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("repo/fuzz/corpus")
        .join(target)
}

/// Runs `f` on every input of `target`'s corpus; a panic names the input.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no inputs", dir.display());
    for p in paths {
        let data = std::fs::read(&p).expect("read input");
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("fuzz input {} panics", p.display());
        }
    }
}

#[test]
fn metadata_inputs() {
    replay("metadata", harness::metadata);
}

#[test]
fn archive_inputs() {
    replay("archive", harness::archive);
}

fn seed(target: &str, name: &str, data: &[u8]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).expect("mkdir corpus");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

fn item(rt: &ResourceType, v: serde_json::Value) -> Item {
    let mut v = v;
    v["apiVersion"] = json!(rt.api_version());
    v["kind"] = json!(rt.kind);
    Item {
        resource: rt.clone(),
        object: serde_json::from_value(v).expect("object"),
    }
}

/// Regenerates the seeds: `cargo test -p holdfast --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes the committed seed corpora"]
fn write_seed_corpus() {
    let md: BackupMetadata = serde_json::from_value(json!({
        "formatVersion": 1,
        "backup": {"namespace": "shop", "name": "nightly-20260102"},
        "uid": "0d6f1c52-4b7e-4a59-9a57-0c1f1d3e2a11",
        "phase": "PartiallyFailed",
        "reason": "VolumeFailed",
        "storageLocation": "default",
        "namespaces": ["shop"],
        "startTime": "2026-01-02T03:04:05Z",
        "completionTime": "2026-01-02T03:05:10Z",
        "itemsBackedUp": 7,
        "volumes": [
            {
                "pvc": {"namespace": "shop", "name": "data-db-0"},
                "driver": "hostpath.csi.k8s.io",
                "storageClass": "csi-hostpath-sc",
                "volumeMode": "Filesystem",
                "phase": "Completed",
                "consistency": "CrashConsistent",
                "snapshot": {"name": "nightly-data-db-0", "readyToUse": true},
                "copy": {
                    "dataUpload": "nightly-data-db-0",
                    "snapshotId": "5f1cdd6b2e0c7a5b6d4f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c",
                    "bytesDone": 1048576,
                    "bytesTotal": 1048576,
                    "bytesUploaded": 524288
                }
            },
            {
                "pvc": {"namespace": "shop", "name": "cache"},
                "phase": "Failed",
                "reason": "mover pod failed"
            }
        ],
        "spec": {"selection": {"includedNamespaces": ["shop"]}, "ttl": "720h0m0s"}
    }))
    .expect("metadata");
    seed(
        "metadata",
        "finished",
        &serde_json::to_vec_pretty(&md).expect("json"),
    );

    let ns = ResourceType::new("", "v1", "Namespace", "namespaces", false);
    let cms = ResourceType::new("", "v1", "ConfigMap", "configmaps", true);
    let deploys = ResourceType::new("apps", "v1", "Deployment", "deployments", true);
    let items = vec![
        item(&ns, json!({"metadata": {"name": "shop"}})),
        item(
            &cms,
            json!({"metadata": {"name": "settings", "namespace": "shop", "labels": {"app": "web"}}, "data": {"k": "v"}}),
        ),
        item(
            &deploys,
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"replicas": 1}}),
        ),
    ];
    seed(
        "archive",
        "three-objects",
        &archive::write(&items).expect("archive"),
    );
}
