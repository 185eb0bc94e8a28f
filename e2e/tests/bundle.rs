//! The OLM bundle (`bundle/`, written by `holdfast crdgen`): operator-framework/api's
//! `operator-verify` v0.9.1 reports nothing on it, the checks of today's validators that
//! version lacks pass (`holdfast::cli::olm_checks`), its CRDs equal `crds/`, and the real API
//! server accepts the CSV (against OLM's own CSV CRD, strictly) and every `alm-examples`
//! object. Design record 0009.

use std::path::{Path, PathBuf};
use std::process::Command;

use holdfast::cli::olm_checks;
use holdfast_e2e::{TestNamespace, ensure_crds, env, random_suffix, repo_root};
use serde_json::Value;

const CSV: &str = "manifests/holdfast.clusterserviceversion.yaml";

/// An output of `e2e/tools/build operator-verify` in the tool cache.
fn tool(output: &str) -> PathBuf {
    let out = Command::new(repo_root().join("e2e/tools/build"))
        .args(["--path", output])
        .output()
        .expect("e2e/tools/build --path");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        p.exists(),
        "{output} is not built: run `e2e/tools/build operator-verify` (expected at {})",
        p.display()
    );
    p
}

/// operator-verify from HOLDFAST_OPERATOR_VERIFY or the tool cache.
fn operator_verify() -> PathBuf {
    match std::env::var_os("HOLDFAST_OPERATOR_VERIFY") {
        Some(p) => p.into(),
        None => tool("operator-verify"),
    }
}

/// Everything `operator-verify manifests --operatorhub_validate --object_validate DIR`
/// prints. It exits 0 even when it reports errors, so what it prints is the verdict.
fn verify(dir: &Path) -> String {
    let out = Command::new(operator_verify())
        .args(["manifests", "--operatorhub_validate", "--object_validate"])
        .arg(dir)
        .output()
        .expect("run operator-verify");
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        if out.status.success() {
            String::new()
        } else {
            format!("(exit status {})", out.status)
        }
    )
}

fn bundle_dir() -> PathBuf {
    repo_root().join("bundle")
}

#[test]
fn operator_verify_reports_nothing_on_the_bundle() {
    let out = verify(&bundle_dir());
    assert!(
        out.trim().is_empty(),
        "operator-verify reported on bundle/:\n{out}"
    );
}

/// The same run on a copy with three known faults reports each: an empty report above means
/// the validators ran and found nothing, not that nothing ran.
#[test]
fn operator_verify_reports_a_broken_bundle() {
    let dir = std::env::temp_dir().join(format!("holdfast-bundle-{}", random_suffix()));
    for (rel, text) in olm_checks::load(&bundle_dir()).expect("read bundle/") {
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let text = if rel == CSV {
            text.replace("capabilities: Basic Install", "capabilities: Fully Magic")
                .replace("mediatype: image/svg+xml", "mediatype: image/bmp")
        } else {
            text
        };
        if rel != "manifests/slapolicies.holdfast.dev.yaml" {
            std::fs::write(&path, text).expect("write");
        }
    }
    let out = verify(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    for expected in [
        "Fully Magic is not a valid capabilities level",
        "image/bmp does not have a valid mediatype",
        "Kind=SLAPolicy\\\" not found in bundle",
    ] {
        assert!(
            out.contains(expected),
            "operator-verify did not report {expected:?}:\n{out}"
        );
    }
}

#[test]
fn bundle_passes_the_checks_operator_verify_lacks() {
    let files = olm_checks::load(&bundle_dir()).expect("read bundle/");
    let found = olm_checks::check(&files);
    assert!(
        found.is_empty(),
        "bundle/ fails today's OperatorHub checks:\n{}",
        found.join("\n")
    );
}

#[test]
fn bundle_crds_equal_crds_dir() {
    let crds = repo_root().join("crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&crds).expect("read crds/") {
        let name = entry.expect("entry").file_name();
        let a = std::fs::read(crds.join(&name)).expect("read CRD");
        let b = std::fs::read(bundle_dir().join("manifests").join(&name)).ok();
        assert!(
            b.as_ref() == Some(&a),
            "bundle/manifests/{} differs from crds/ or is missing (run `cargo run -p holdfast -- crdgen`)",
            name.to_string_lossy()
        );
        names.push(name);
    }
    let in_bundle = std::fs::read_dir(bundle_dir().join("manifests"))
        .expect("read bundle/manifests")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(".holdfast.dev.yaml")
            })
        })
        .count();
    assert_eq!(
        in_bundle,
        names.len(),
        "bundle/manifests has other CRDs than crds/"
    );
}

/// Each alm-examples object, created with a server-side dry run on the testbed: the API
/// server applies the CRD's OpenAPI schema and CEL rules, as it would for a user who creates
/// it from the OLM console.
#[tokio::test]
async fn alm_examples_are_accepted_by_the_api_server() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "bundle").await;
    let csv: Value = serde_yaml::from_str(
        &std::fs::read_to_string(bundle_dir().join(CSV)).expect("read the CSV"),
    )
    .expect("parse the CSV");
    let examples: Vec<Value> = serde_json::from_str(
        csv["metadata"]["annotations"]["alm-examples"]
            .as_str()
            .expect("alm-examples"),
    )
    .expect("alm-examples is JSON");
    assert!(!examples.is_empty());
    for mut example in examples {
        let kind = example["kind"].as_str().unwrap_or_default().to_string();
        // A unique name: cluster-scoped examples (SLAPolicy) may exist already.
        example["metadata"]["name"] = format!("example-{}", random_suffix()).into();
        let file = std::env::temp_dir().join(format!("{}-{kind}.json", ns.name));
        std::fs::write(&file, example.to_string()).expect("write example");
        let out = e.kubectl([
            "create",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            &file.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "the API server rejected the alm-example of {kind}:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            serde_json::to_string_pretty(&example).unwrap_or_default()
        );
    }
}

/// The CSV, created with a strict server-side dry run against OLM's ClusterServiceVersion CRD
/// (operator-framework/api v0.9.1, installed on the testbed): unknown fields and wrong types
/// anywhere in it fail, which operator-verify (Go structs that ignore unknown fields) misses.
#[tokio::test]
async fn csv_is_accepted_by_olms_csv_schema() {
    let e = env();
    let crd = tool("olm-crds").join("operators.coreos.com_clusterserviceversions.yaml");
    let crd = crd.display().to_string();
    e.kubectl_ok(["apply", "--server-side", "--force-conflicts", "-f", &crd]);
    // Polled rather than `kubectl wait`: on a CRD created a moment ago that has no
    // conditions yet, kubectl wait fails (".status.conditions accessor error") instead of waiting.
    holdfast_e2e::wait_until(
        "OLM's ClusterServiceVersion CRD to be Established",
        std::time::Duration::from_secs(60),
        None,
        || async {
            let out = e.kubectl([
                "get",
                "crd",
                "clusterserviceversions.operators.coreos.com",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]);
            (String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(())
        },
    )
    .await;
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "bundle-csv").await;
    let csv = bundle_dir().join(CSV).display().to_string();
    let out = e.kubectl([
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        &ns.name,
        "-f",
        &csv,
    ]);
    assert!(
        out.status.success(),
        "the API server rejected the CSV:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
