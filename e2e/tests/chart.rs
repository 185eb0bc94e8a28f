//! The Helm chart: lints, renders, installs on the real API server, and the operator it
//! deploys reconciles a location in its namespace.

use std::path::PathBuf;
use std::process::Command;

use holdfast_api::location::LocationPhase;
use holdfast_e2e::{TestNamespace, ensure_crds, env};

/// helm from HOLDFAST_HELM or the tool cache (`e2e/tools/build helm`).
fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("HOLDFAST_HELM") {
        return p.into();
    }
    let out = Command::new(env().repo.join("e2e/tools/build"))
        .args(["--path", "helm"])
        .output()
        .expect("e2e/tools/build --path helm");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        p.exists(),
        "helm is not built: run `e2e/tools/build helm` (expected at {})",
        p.display()
    );
    p
}

fn run_helm(args: &[&str]) -> String {
    let ns = args
        .iter()
        .position(|a| *a == "--namespace")
        .and_then(|i| args.get(i + 1))
        .copied();
    let out = Command::new(helm())
        .env("KUBECONFIG", &env().kubeconfig)
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ns.map(holdfast_e2e::dump_namespace).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chart_lints_and_rejects_bad_values() {
    let chart = env().repo.join("charts/holdfast");
    let chart = chart.to_str().expect("utf-8 path");
    run_helm(&["lint", "--strict", chart]);
    let out = Command::new(helm())
        .args([
            "template",
            "x",
            chart,
            "--kube-version",
            "1.36.0",
            "--set",
            "replicas=0",
        ])
        .output()
        .expect("helm template");
    assert!(
        !out.status.success(),
        "replicas=0 must be rejected by values.schema.json"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replicas"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(helm())
        .args([
            "template",
            "x",
            chart,
            "--kube-version",
            "1.36.0",
            "--set",
            "unknownValue=1",
        ])
        .output()
        .expect("helm template");
    assert!(!out.status.success(), "unknown values must be rejected");
}

#[tokio::test]
async fn chart_installs_an_operator_that_reconciles() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "chart").await;
    let port = holdfast_store::testing::free_port().expect("port");
    let chart = e.repo.join("charts/holdfast");
    let release = format!("hf{}", holdfast_e2e::random_suffix());
    run_helm(&[
        "install",
        &release,
        chart.to_str().expect("utf-8"),
        "--namespace",
        &ns.name,
        "--set",
        "replicas=1",
        "--set",
        &format!("httpAddr=127.0.0.1:{port}"),
        "--wait",
        "--timeout",
        "120s",
    ]);
    let manifest = "apiVersion: holdfast.dev/v1alpha1\nkind: BackupStorageLocation\nmetadata: {name: probe}\nspec:\n  s3: {bucket: unused, endpoint: \"http://127.0.0.1:9\"}\n";
    e.apply_yaml(&ns.name, manifest);
    holdfast_e2e::wait_location(&client, &ns.name, "probe", LocationPhase::Unavailable, None).await;
    // The SLA policy presets come with the release.
    let presets = e.kubectl_ok([
        "get",
        "slapolicies",
        "-l",
        "holdfast.dev/preset=true",
        "-o",
        "name",
    ]);
    assert_eq!(presets.lines().count(), 7, "{presets}");
    run_helm(&["uninstall", &release, "--namespace", &ns.name, "--wait"]);
    let presets = e.kubectl_ok([
        "get",
        "slapolicies",
        "-l",
        "holdfast.dev/preset=true",
        "-o",
        "name",
    ]);
    assert!(
        presets.trim().is_empty(),
        "uninstall removes the presets: {presets}"
    );
    // Cluster-scoped RBAC of the release is gone with it.
    let out = e.kubectl([
        "get",
        "clusterrole",
        &format!("{release}-holdfast-operator"),
    ]);
    assert!(
        !out.status.success(),
        "the release's ClusterRole should be removed by uninstall"
    );
}
