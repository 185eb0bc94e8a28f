//! The API as the real kube-apiserver serves it: CRDs install, samples apply, every invalid
//! manifest of the corpus is rejected with the message it promises, immutability holds.

use std::path::PathBuf;

use holdfast_e2e::{TestNamespace, ensure_crds, env};

fn corpus() -> Vec<(PathBuf, String)> {
    let dir = env().repo.join("operator/api/tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .expect("first line is `# expect: ...`")
                .to_string();
            (p, expect)
        })
        .collect()
}

#[tokio::test]
async fn every_invalid_manifest_is_rejected_with_its_message() {
    ensure_crds();
    let client = env().client().await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let cases = corpus();
    assert!(
        cases.len() >= 30,
        "the corpus must hold at least 30 invalid manifests, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (path, expect) in &cases {
        let out = env().kubectl([
            "apply",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            &path.display().to_string(),
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            failures.push(format!(
                "{}: accepted, expected rejection with {expect:?}",
                path.display()
            ));
        } else if !text.contains(expect.as_str()) {
            failures.push(format!(
                "{}: expected {expect:?}, got: {text}",
                path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_sample_applies() {
    ensure_crds();
    let e = env();
    for ns in ["shop", "holdfast-system"] {
        let _ = e.kubectl(["create", "namespace", ns]);
    }
    let mut n = 0;
    let files = ["config/samples", "config/presets"]
        .iter()
        .flat_map(|d| std::fs::read_dir(e.repo.join(d)).expect("samples"));
    for entry in files {
        let path = entry.expect("entry").path();
        let kustomization = path.file_name().is_some_and(|f| f == "kustomization.yaml");
        if path.extension().is_some_and(|x| x == "yaml") && !kustomization {
            e.kubectl_ok([
                "apply",
                "--dry-run=server",
                "-f",
                &path.display().to_string(),
            ]);
            n += 1;
        }
    }
    assert!(
        n >= 7,
        "expected samples for every kind and the presets, found {n} files"
    );
}

/// Enum values that YAML 1.1 reads as booleans (`off`, `on`, `yes`, `no`) reach the API
/// server as strings: `compression: "off"` is accepted.
#[test]
fn yaml_boolean_like_enum_values_survive_kubectl() {
    ensure_crds();
    let e = env();
    let _ = e.kubectl(["create", "namespace", "holdfast-system"]);
    let file = std::env::temp_dir().join(format!("off-{}.yaml", holdfast_e2e::random_suffix()));
    std::fs::write(&file, "apiVersion: holdfast.dev/v1alpha1\nkind: BackupStorageLocation\nmetadata: {name: uncompressed, namespace: holdfast-system}\nspec:\n  s3: {bucket: cluster-backups}\n  repository: {compression: \"off\"}\n").expect("write");
    e.kubectl_ok([
        "apply",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ]);
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn backup_selection_is_immutable_but_cancel_ttl_and_policy_are_not() {
    ensure_crds();
    let client = env().client().await;
    let ns = TestNamespace::new(&client, "immutable").await;
    let e = env();
    let manifest = "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {name: b}\nspec:\n  includedResources: [configmaps]\n  ttl: 1h\n";
    e.apply_yaml(&ns.name, manifest);

    let patch = |p: &str| {
        e.kubectl([
            "patch",
            "backup",
            "b",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            p,
        ])
    };
    let out = patch(r#"{"spec":{"includedResources":["secrets"]}}"#);
    assert!(
        !out.status.success(),
        "changing the selection must be refused"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("only spec.cancel, spec.ttl and spec.deletionPolicy can be changed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = patch(r#"{"spec":{"storageLocation":"other"}}"#);
    assert!(
        !out.status.success(),
        "adding a location after creation must be refused"
    );

    for ok in [
        r#"{"spec":{"ttl":"2h"}}"#,
        r#"{"spec":{"deletionPolicy":"Retain"}}"#,
        r#"{"spec":{"cancel":true}}"#,
    ] {
        let out = patch(ok);
        assert!(
            out.status.success(),
            "{ok} must be allowed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = patch(r#"{"spec":{"cancel":false}}"#);
    assert!(!out.status.success(), "cancel must not be unset");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.cancel cannot be unset"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn kubectl_get_holdfast_lists_every_kind() {
    ensure_crds();
    let out = env().kubectl_ok(["api-resources", "--categories=holdfast", "-o", "name"]);
    for kind in [
        "backups",
        "restores",
        "schedules",
        "backupstoragelocations",
        "slapolicies",
        "datauploads",
        "datadownloads",
        "backuprepositories",
    ] {
        assert!(
            out.contains(&format!("{kind}.holdfast.dev")),
            "{kind} missing from category holdfast:\n{out}"
        );
    }
}
