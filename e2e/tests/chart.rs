//! The Helm chart: lints, renders (its CRDs equal crds/), installs on the real API server, and
//! the operator it deploys reconciles a location in its namespace; an upgrade from the
//! previous chart version takes over the CRDs and keeps backups and restores working, and
//! after `helm uninstall` and deleting the operator namespace, a reinstall with the same
//! location and passphrase brings the backups back.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use holdfast_api::backup::BackupPhase;
use holdfast_api::location::LocationPhase;
use holdfast_api::restore::RestorePhase;
use holdfast_e2e::app::{self, WORKLOADS};
use holdfast_e2e::ops::{wait_backup, wait_restore};
use holdfast_e2e::{TestNamespace, ensure_crds, env};
use serde::Deserialize as _;

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
    // The CRDs are the cluster's (ensure_crds); the upgrade test has the chart own them.
    run_helm(&[
        "install",
        &release,
        chart.to_str().expect("utf-8"),
        "--namespace",
        &ns.name,
        "--set",
        "crds.install=false",
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
    // The operator labelled its namespace (made without the label, as by --create-namespace)
    // for the Pod Security level of its movers; the metrics Service is there.
    let label = e.kubectl_ok([
        "get",
        "namespace",
        &ns.name,
        "-o",
        "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}",
    ]);
    assert_eq!(label.trim(), "baseline", "namespace {} label", ns.name);
    // ...and as an operator namespace, for the admission policies (installed with the release).
    let label = e.kubectl_ok([
        "get",
        "namespace",
        &ns.name,
        "-o",
        "jsonpath={.metadata.labels.holdfast\\.dev/operator-namespace}",
    ]);
    assert_eq!(label.trim(), "true", "namespace {} label", ns.name);
    for kind in ["backups", "schedules", "restores"] {
        e.kubectl_ok([
            "get",
            "validatingadmissionpolicy",
            &format!("{release}-holdfast-tenant-{kind}"),
        ]);
    }
    // The operator's service account holds what it uses and nothing else (issue 18): asked of
    // the API server's authorizer, as the account.
    let sa = format!("system:serviceaccount:{}:holdfast", ns.name);
    let can = |args: &[&str]| {
        let out = e.kubectl(
            ["auth", "can-i", "--as", &sa]
                .into_iter()
                .chain(args.iter().copied()),
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let denied: &[&[&str]] = &[
        &["create", "configmaps", "-n", "default"],
        &["create", "deployments.apps", "-n", "default"],
        &["update", "services", "-n", "default"],
        &["create", "clusterrolebindings"],
        &["create", "roles", "-n", "default"],
        &["create", "serviceaccounts/token", "-n", "default"],
        &["get", "nodes/proxy"],
        &["get", "configmaps", "-n", "default"],
        &["delete", "namespaces"],
        &["escalate", "clusterroles"],
        &["bind", "clusterroles/cluster-admin"],
        &["impersonate", "users/someone"],
        &["impersonate", "serviceaccounts", "-n", "default"],
    ];
    for args in denied {
        assert!(!can(args), "{sa} may {args:?}, which it never needs");
    }
    let allowed: &[&[&str]] = &[
        &["list", "secrets", "--all-namespaces"],
        &["list", "deployments.apps", "--all-namespaces"],
        &["create", "pods", "-n", &ns.name],
        &[
            "create",
            "volumesnapshots.snapshot.storage.k8s.io",
            "-n",
            "default",
        ],
        &["create", "pods/exec", "-n", "default"],
        &["bind", "clusterroles/admin"],
        &["impersonate", "users/holdfast:restorer"],
        &["impersonate", "users/holdfast:tenant-restorer"],
    ];
    for args in allowed {
        assert!(can(args), "{sa} may not {args:?}, which it needs");
    }
    e.kubectl_ok(["get", "service", "holdfast-metrics", "-n", &ns.name]);
    // The SLA policy presets come with the release (post-install hooks, after the CRDs), and
    // stay when it is uninstalled, like the CRDs.
    let presets = || {
        e.kubectl_ok([
            "get",
            "slapolicies",
            "-l",
            "holdfast.dev/preset=true",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.helm\\.sh/hook}{\"\\n\"}{end}",
        ])
    };
    let installed = presets();
    assert_eq!(installed.lines().count(), 7, "{installed}");
    assert!(
        installed
            .lines()
            .all(|l| l.ends_with(" post-install,post-upgrade")),
        "{installed}"
    );
    run_helm(&["uninstall", &release, "--namespace", &ns.name, "--wait"]);
    assert_eq!(presets(), installed, "uninstall keeps the presets");
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

/// Renders the chart with `args`; the documents of kind `kind`.
fn rendered(kind: &str, args: &[&str]) -> Vec<serde_yaml::Value> {
    let chart = env().repo.join("charts/holdfast");
    let out = Command::new(helm())
        .args([
            "template",
            "x",
            chart.to_str().expect("utf-8"),
            "--kube-version",
            "1.36.0",
        ])
        .args(args)
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .collect()
}

#[test]
fn chart_crds_equal_crds_dir_and_are_kept_on_uninstall() {
    let crds = rendered("CustomResourceDefinition", &[]);
    let dir = env().repo.join("crds");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("crds/") {
        let path = entry.expect("entry").path();
        let want: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
        let name = &want["metadata"]["name"];
        let got = crds
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart does not render {name:?}"));
        assert_eq!(got["spec"], want["spec"], "{name:?} differs from crds/");
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep"),
            "{name:?}"
        );
        files += 1;
    }
    assert_eq!(
        crds.len(),
        files,
        "the chart renders exactly the CRDs of crds/"
    );
    assert!(rendered("CustomResourceDefinition", &["--set", "crds.install=false"]).is_empty());
    // Objects of Holdfast's own kinds are hooks: Helm maps every ordinary object of a release
    // before it creates any, so on a new cluster (no CRDs yet) a plain SLAPolicy fails the
    // install ("no matches for kind SLAPolicy").
    let presets = rendered("SLAPolicy", &[]);
    assert_eq!(presets.len(), 7);
    for p in &presets {
        assert_eq!(
            p["metadata"]["annotations"]["helm.sh/hook"].as_str(),
            Some("post-install,post-upgrade"),
            "{p:?}"
        );
    }
    // The optional monitoring objects: the PrometheusRule carries the rules file's groups.
    let rules = rendered("PrometheusRule", &["--set", "prometheusRule.enabled=true"]);
    let file: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(env().repo.join("config/monitoring/holdfast.rules.yaml"))
            .expect("rules file"),
    )
    .expect("yaml");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["spec"]["groups"], file["groups"]);
    assert_eq!(
        rendered("ServiceMonitor", &["--set", "serviceMonitor.enabled=true"]).len(),
        1
    );
    assert!(rendered("ServiceMonitor", &[]).is_empty());
    let dash = rendered("ConfigMap", &["--set", "grafanaDashboard.enabled=true"]);
    let json: serde_json::Value = serde_json::from_str(
        dash[0]["data"]["holdfast.json"]
            .as_str()
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    assert_eq!(json["uid"], "holdfast-overview");
    // No fixed user: OpenShift assigns one from the namespace's range.
    let deploy = rendered("Deployment", &[]);
    let sc = &deploy[0]["spec"]["template"]["spec"]["securityContext"];
    assert!(sc.get("runAsUser").is_none(), "{sc:?}");
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
}

/// Exec into pods is granted only with hooks enabled, and the operator is told either way.
#[test]
fn chart_grants_pods_exec_only_with_hooks_enabled() {
    let grants_exec = |args: &[&str]| {
        rendered("ClusterRole", args).iter().any(|r| {
            serde_yaml::to_string(&r["rules"])
                .expect("yaml")
                .contains("pods/exec")
        })
    };
    let hooks_env = |args: &[&str]| {
        let deploy = rendered("Deployment", args);
        let env = &deploy[0]["spec"]["template"]["spec"]["containers"][0]["env"];
        env.as_sequence()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "HOLDFAST_HOOKS")
            .and_then(|e| e["value"].as_str().map(String::from))
            .expect("HOLDFAST_HOOKS")
    };
    assert!(grants_exec(&[]));
    assert_eq!(hooks_env(&[]), "true");
    let off = ["--set", "hooks.enabled=false"];
    assert!(
        !grants_exec(&off),
        "no role may grant pods/exec with hooks disabled"
    );
    assert_eq!(hooks_env(&off), "false");
}

/// The aggregated roles of `config/rbac/tenant_roles.yaml`, with the release's names and
/// labels, the file's aggregation labels and the same rules; none with tenantRoles off.
#[test]
fn chart_aggregates_the_tenant_roles_of_config() {
    let text = std::fs::read_to_string(env().repo.join("config/rbac/tenant_roles.yaml"))
        .expect("config/rbac/tenant_roles.yaml");
    let want: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("ClusterRole"))
        .collect();
    assert_eq!(want.len(), 2, "config has the view and the edit role");
    let aggregated = |args: &[&str]| -> Vec<serde_yaml::Value> {
        rendered("ClusterRole", args)
            .into_iter()
            .filter(|r| {
                r["metadata"]["labels"].as_mapping().is_some_and(|l| {
                    l.keys().any(|k| {
                        k.as_str().is_some_and(|k| {
                            k.starts_with("rbac.authorization.k8s.io/aggregate-to-")
                        })
                    })
                })
            })
            .collect()
    };
    let got = aggregated(&[]);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for w in &want {
        let name = w["metadata"]["name"].as_str().expect("name");
        let g = got
            .iter()
            .find(|g| g["metadata"]["name"].as_str() == Some(&format!("x-{name}")))
            .unwrap_or_else(|| panic!("the chart renders no x-{name}: {got:?}"));
        assert_eq!(g["rules"], w["rules"], "{name}: rules differ from config/");
        for (k, v) in w["metadata"]["labels"].as_mapping().expect("labels") {
            if k.as_str()
                .is_some_and(|k| k.starts_with("rbac.authorization.k8s.io/"))
            {
                assert_eq!(&g["metadata"]["labels"][k], v, "{name}: label {k:?}");
            }
        }
        assert_eq!(g["metadata"]["labels"]["app.kubernetes.io/instance"], "x");
    }
    assert!(aggregated(&["--set", "tenantRoles.enabled=false"]).is_empty());
}

/// The release as installed by the previous chart version (0.1.0, whose CRDs came from the
/// chart's crds/ folder and were never upgraded), upgraded to this chart: the CRDs pass to the
/// release (`--take-ownership`, once), and backups taken before and after restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_upgrade_uninstall_and_reinstall_keep_backups_working() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "upgrade").await;
    let app_ns = TestNamespace::new(&client, "upgrade-app").await;
    let bucket = format!("hf-upgrade-{}", holdfast_e2e::random_suffix());
    app::make_bucket(&bucket).await;
    app::deploy_seeded(&app_ns.name, 4).await;
    let port = holdfast_store::testing::free_port().expect("port");
    let release = format!("hf{}", holdfast_e2e::random_suffix());
    let previous = e.repo.join("e2e/fixtures/holdfast-0.1.0.tgz");
    let common = [
        "--namespace".to_string(),
        opns.name.clone(),
        "--set".into(),
        "replicas=1".into(),
        "--set".into(),
        format!("httpAddr=127.0.0.1:{port}"),
        "--set".into(),
        format!("watchNamespaces={{{}}}", app_ns.name),
        // The presets are cluster-scoped hooks; the other chart test checks them.
        "--set".into(),
        "slaPolicyPresets=false".into(),
        "--wait".into(),
        "--timeout".into(),
        "120s".into(),
    ];
    let helm_with = |verb: &[&str]| {
        let mut args: Vec<&str> = verb.to_vec();
        args.extend(common.iter().map(String::as_str));
        run_helm(&args)
    };
    helm_with(&["install", &release, previous.to_str().expect("utf-8")]);
    app::primary_location(&client, &opns.name, &bucket).await;
    let backup = |name: &str| {
        format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec:\n  includedNamespaces: [{}]\n",
            app_ns.name
        )
    };
    e.apply_yaml(&opns.name, &backup("before"));
    let b = wait_backup(&client, &opns.name, "before", Duration::from_secs(300)).await;
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed),
        "{:#?}",
        b.status
    );
    let at_before: Vec<String> = WORKLOADS
        .iter()
        .map(|w| app::volume_checksums(&app_ns.name, w))
        .collect();

    let chart = e.repo.join("charts/holdfast");
    helm_with(&[
        "upgrade",
        &release,
        chart.to_str().expect("utf-8"),
        "--take-ownership",
    ]);
    // The release now owns the CRDs (an upgrade updates them) and keeps them on uninstall.
    let crd = e.kubectl_ok([
        "get",
        "crd",
        "backups.holdfast.dev",
        "-o",
        "jsonpath={.metadata.annotations.meta\\.helm\\.sh/release-name} {.metadata.annotations.helm\\.sh/resource-policy}",
    ]);
    assert_eq!(crd.trim(), format!("{release} keep"));
    e.kubectl_ok(["get", "service", "holdfast-metrics", "-n", &opns.name]);

    // Data changes, a backup after the upgrade; both restore into their own namespaces.
    app::sh(
        &app_ns.name,
        WORKLOADS[0],
        "echo changed > /data/after-upgrade && sync",
    );
    let at_after: Vec<String> = WORKLOADS
        .iter()
        .map(|w| app::volume_checksums(&app_ns.name, w))
        .collect();
    assert_ne!(at_before, at_after);
    e.apply_yaml(&opns.name, &backup("after"));
    let b = wait_backup(&client, &opns.name, "after", Duration::from_secs(300)).await;
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed),
        "{:#?}",
        b.status
    );
    for (name, want) in [("before", &at_before), ("after", &at_after)] {
        let target = TestNamespace {
            name: format!("{}-{name}", app_ns.name),
        };
        e.apply_yaml(&opns.name, &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {{name: {name}}}\nspec:\n  source: {{backup: {name}}}\n  namespaceMapping: {{{}: {}}}\n",
            app_ns.name, target.name
        ));
        let r = wait_restore(&client, &opns.name, name).await;
        assert_eq!(
            r.status.as_ref().and_then(|s| s.phase),
            Some(RestorePhase::Completed),
            "{:#?}",
            r.status
        );
        for (w, sum) in WORKLOADS.iter().zip(want) {
            app::wait_seeded(&target.name, w).await;
            assert_eq!(
                &app::volume_checksums(&target.name, w),
                sum,
                "{w} restored from {name}"
            );
        }
    }
    // Uninstall, then delete the operator namespace (its Backups, Restores, Secrets): neither
    // hangs, and the bucket keeps everything. Only the passphrase is kept, as the README says.
    let passphrase = holdfast_e2e::secret_value(
        &client,
        &opns.name,
        "holdfast-passphrase-primary",
        "passphrase",
    )
    .await;
    let t = std::time::Instant::now();
    run_helm(&["uninstall", &release, "--namespace", &opns.name, "--wait"]);
    let uninstall = t.elapsed();
    e.kubectl_ok([
        "get",
        "crd",
        "backups.holdfast.dev",
        "schedules.holdfast.dev",
    ]);
    let t = std::time::Instant::now();
    e.kubectl_ok([
        "delete",
        "namespace",
        &opns.name,
        "--wait=true",
        "--timeout=180s",
    ]);
    let namespace = t.elapsed();
    eprintln!(
        "helm uninstall took {:.1} s; deleting the operator namespace after it {:.1} s",
        uninstall.as_secs_f64(),
        namespace.as_secs_f64()
    );

    // Reinstalled with the same location and passphrase: both backups come back (synced from
    // the location's catalog, under their names) and restore byte for byte.
    helm_with(&[
        "install",
        &release,
        chart.to_str().expect("utf-8"),
        "--create-namespace",
    ]);
    e.apply_yaml(
        &opns.name,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: kept-passphrase}}\nstringData: {{passphrase: \"{passphrase}\"}}\n"
        ),
    );
    e.apply_yaml(
        &opns.name,
        &format!(
            "{}  syncInterval: 5s\n  encryption: {{passphraseSecretRef: {{name: kept-passphrase, key: passphrase}}}}\n",
            app::location_yaml("primary", &bucket)
        ),
    );
    for name in ["before", "after"] {
        let b = wait_backup(&client, &opns.name, name, Duration::from_secs(120)).await;
        assert_eq!(
            b.status.as_ref().and_then(|s| s.phase),
            Some(BackupPhase::Completed),
            "{name}: {:#?}",
            b.status
        );
        assert!(
            b.status.as_ref().and_then(|s| s.synced.as_ref()).is_some(),
            "{name} synced"
        );
    }
    let target = TestNamespace {
        name: format!("{}-again", app_ns.name),
    };
    e.apply_yaml(&opns.name, &format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {{name: again}}\nspec:\n  source: {{backup: after}}\n  namespaceMapping: {{{}: {}}}\n",
        app_ns.name, target.name
    ));
    let r = wait_restore(&client, &opns.name, "again").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}",
        r.status
    );
    for (w, sum) in WORKLOADS.iter().zip(&at_after) {
        app::wait_seeded(&target.name, w).await;
        assert_eq!(
            &app::volume_checksums(&target.name, w),
            sum,
            "{w} after the reinstall"
        );
    }
    e.kubectl_ok([
        "delete",
        "restores,backups",
        "--all",
        "-n",
        &opns.name,
        "--wait=true",
        "--timeout=120s",
    ]);
    run_helm(&["uninstall", &release, "--namespace", &opns.name, "--wait"]);
}
