//! The `kubectl holdfast` plugin against the testbed: the binary installed as
//! `kubectl-holdfast` (a symlink), run as a user runs it, with a real operator process, CSI
//! snapshots, mover pods and MinIO. Progress is captured once in a pseudo-terminal (`script`
//! from util-linux) and once through a pipe.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::restore::Restore;
use holdfast_e2e::app::{self, WORKLOADS};
use holdfast_e2e::operator::{Operator, holdfast_bin};
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use kube::Client;
use kube::api::{Api, ListParams};

/// A directory with `kubectl-holdfast` (and `kubectl_complete-holdfast`, kubectl's completion
/// hook) → the freshly built `holdfast`, as a user installs it.
fn plugin() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hf-plugin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("plugin dir");
        for name in ["kubectl-holdfast", "kubectl_complete-holdfast"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(holdfast_bin(), &link).expect("symlink");
        }
        dir
    })
    .join("kubectl-holdfast")
}

/// Runs the plugin with `args` (stdout a pipe, not a terminal).
fn run(args: &[&str]) -> Output {
    Command::new(plugin())
        .args(args)
        .env("KUBECONFIG", &env().kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl-holdfast")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the plugin in a pseudo-terminal (`script -qec`), as on a user's terminal.
fn run_in_terminal(args: &[&str]) -> Output {
    let script = which("script");
    let quoted: Vec<String> = std::iter::once(plugin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    Command::new(script)
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("KUBECONFIG", &env().kubeconfig)
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .output()
        .expect("run script")
}

/// The path of `tool`, or a failure saying what to install (no silent skip).
fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` is needed by this test and is not on PATH: install util-linux (Debian: bsdutils) / bash")
        })
}

/// An operator namespace with a location on a fresh bucket and the operator running; with
/// `app_mib`, an application namespace with the sample app seeded.
struct Setup {
    client: Client,
    opns: TestNamespace,
    app_ns: Option<TestNamespace>,
    op: Operator,
}

async fn setup(prefix: &str, app_mib: Option<u32>) -> Setup {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, &format!("{prefix}-op")).await;
    let app_ns = match app_mib {
        Some(_) => Some(TestNamespace::new(&client, &format!("{prefix}-app")).await),
        None => None,
    };
    let bucket = format!("hf-{prefix}-{}", holdfast_e2e::random_suffix());
    app::make_bucket(&bucket).await;
    let watch = format!(
        "--watch-namespaces={}",
        app_ns
            .as_ref()
            .map_or(opns.name.as_str(), |a| a.name.as_str())
    );
    let op = Operator::start(
        &opns.name,
        &format!("{prefix}-0"),
        &[&watch, "--max-movers-per-node=0"],
    );
    op.wait_ready().await;
    e.apply_yaml(&opns.name, &app::location_yaml("primary", &bucket));
    if let (Some(ns), Some(mib)) = (&app_ns, app_mib) {
        app::deploy_seeded(&ns.name, mib).await;
    }
    holdfast_e2e::wait_location(
        &client,
        &opns.name,
        "primary",
        holdfast_api::location::LocationPhase::Available,
        None,
    )
    .await;
    Setup {
        client,
        opns,
        app_ns,
        op,
    }
}

/// Deletes the operator namespace's Backups and Restores while the operator runs (their
/// finalizers need it).
fn delete_all(opns: &str) {
    env().kubectl_ok([
        "delete",
        "restores,backups",
        "--all",
        "-n",
        opns,
        "--wait=true",
        "--timeout=180s",
    ]);
}

#[tokio::test]
async fn dry_run_prints_an_object_the_api_server_accepts_and_creates_nothing() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "plug-dry").await;
    let o = run(&[
        "backup",
        "create",
        "nightly",
        "-n",
        &ns.name,
        "--include-namespaces",
        "shop,db",
        "--selector",
        "app=shop,tier notin (cache)",
        "--location",
        "primary",
        "--ttl",
        "72h",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let yaml = String::from_utf8_lossy(&o.stdout).into_owned();
    let b: Backup = serde_yaml::from_str(&yaml).unwrap_or_else(|err| panic!("{err}: {yaml}"));
    assert_eq!(b.metadata.namespace.as_deref(), Some(ns.name.as_str()));
    assert_eq!(b.spec.selection.included_namespaces, ["shop", "db"]);
    assert_eq!(b.spec.storage_location.as_deref(), Some("primary"));
    assert_eq!(b.spec.ttl.map(|t| t.as_std().as_secs()), Some(72 * 3600));
    let sel = b.spec.selection.label_selector.expect("selector");
    assert_eq!(sel.match_labels.expect("labels")["app"], "shop");
    // The API server (OpenAPI schema and CEL rules of the CRD) accepts it.
    let file = std::env::temp_dir().join(format!("{}-dry.yaml", ns.name));
    std::fs::write(&file, &yaml).expect("write");
    let applied = e.kubectl_ok([
        "apply",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ]);
    assert!(applied.contains("nightly"), "{applied}");

    // A Restore as JSON, also accepted.
    let o = run(&[
        "restore",
        "create",
        "back",
        "-n",
        &ns.name,
        "--from-schedule",
        "nightly",
        "--at",
        "2h ago",
        "--namespace-mapping",
        "shop:shop-staging",
        "--dry-run=client",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Restore = serde_json::from_slice(&o.stdout).expect("restore json");
    assert_eq!(r.spec.namespace_mapping["shop"], "shop-staging");
    assert!(r.spec.source.point_in_time.is_some());
    std::fs::write(&file, &o.stdout).expect("write");
    e.kubectl_ok([
        "apply",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&file);

    // The server-side dry run goes through admission and creates nothing either.
    let o = run(&[
        "backup",
        "create",
        "checked",
        "-n",
        &ns.name,
        "--dry-run=server",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("backup.holdfast.dev/checked created (server dry run)"),
        "{}",
        text(&o)
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        backups
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(
        restores
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // A flag that cannot be used is named, with the fix.
    let o = run(&["backup", "create", "x", "-n", &ns.name, "--ttl", "3 days"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--ttl") && err.contains("72h"), "{}", text(&o));
}

#[test]
fn completion_scripts_and_help_say_kubectl_holdfast() {
    let o = run(&["completion", "bash"]);
    assert!(o.status.success(), "{}", text(&o));
    let file = std::env::temp_dir().join(format!("hf-completion-{}.bash", std::process::id()));
    std::fs::write(&file, &o.stdout).expect("write");
    let bash = Command::new(which("bash"))
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash -n");
    assert!(
        bash.status.success(),
        "bash -n rejects the script: {}",
        text(&bash)
    );
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(
        script.contains("kubectl-holdfast") && script.contains("restore-points"),
        "{script}"
    );
    let _ = std::fs::remove_file(&file);
    for shell in ["zsh", "fish"] {
        let o = run(&["completion", shell]);
        assert!(o.status.success() && !o.stdout.is_empty(), "{}", text(&o));
    }
    // kubectl finds it on the PATH and runs it as `kubectl holdfast`.
    let path = std::env::join_paths(
        std::iter::once(plugin().parent().expect("dir").to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ),
    )
    .expect("PATH");
    let kubectl = |args: &[&str]| {
        Command::new(&env().kubectl)
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", &env().kubeconfig)
            .output()
            .expect("kubectl holdfast")
    };
    let via = kubectl(&["holdfast", "backup", "create", "--help"]);
    assert!(
        String::from_utf8_lossy(&via.stdout).contains("Usage: kubectl holdfast backup create"),
        "{}",
        text(&via)
    );
    // kubectl's own completion of `kubectl holdfast …` asks kubectl_complete-holdfast.
    let comp = kubectl(&["__complete", "holdfast", "backup", "cr"]);
    let ct = String::from_utf8_lossy(&comp.stdout).into_owned();
    assert!(
        ct.lines().any(|l| l.starts_with("create\t")),
        "{}",
        text(&comp)
    );
    let comp = kubectl(&["__complete", "holdfast", "backup", "create", "x", "-o", ""]);
    let values: Vec<String> = String::from_utf8_lossy(&comp.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(values, ["yaml", "json", "name", ":4"], "{}", text(&comp));
    let comp = kubectl(&["__complete", "holdfast", ""]);
    let top = String::from_utf8_lossy(&comp.stdout).into_owned();
    assert!(
        top.contains("restore-points\t") && !top.contains("controller"),
        "{}",
        text(&comp)
    );
    let help = run(&["backup", "create", "--help"]);
    let h = String::from_utf8_lossy(&help.stdout);
    assert!(
        h.contains("Usage: kubectl holdfast backup create"),
        "{}",
        text(&help)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backup_with_wait_exits_non_zero_with_the_reason() {
    let s = setup("plug-fail", None).await;
    let o = run(&[
        "backup",
        "create",
        "nowhere",
        "-n",
        &s.opns.name,
        "--location",
        "does-not-exist",
        "--wait",
    ]);
    eprintln!("a failing backup with --wait printed:\n{}", text(&o));
    assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o), s.op.logs());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Failed")
            && err.contains("LocationNotFound")
            && err.contains("does-not-exist"),
        "{}",
        text(&o)
    );
    delete_all(&s.opns.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_failed_backup_with_wait_exits_4_and_names_the_volume() {
    let s = setup("plug-part", Some(1)).await;
    let e = env();
    let app_ns = s.app_ns.as_ref().expect("app").name.clone();
    // A hostPath volume beside the app's two: Holdfast refuses it (nothing records which
    // node holds its data), the others are snapshotted.
    let pv = format!("{app_ns}-host");
    let dir = std::env::temp_dir().join(format!("hf-plugin-{app_ns}-host"));
    e.apply_yaml(
        &app_ns,
        &app::host_path_claim_yaml(&pv, &dir.display().to_string()),
    );
    let o = run(&[
        "backup",
        "create",
        "part",
        "-n",
        &s.opns.name,
        "--include-namespaces",
        &app_ns,
        "--volume-mode",
        "Snapshot",
        "--wait",
    ]);
    eprintln!("a partly failed backup with --wait printed:\n{}", text(&o));
    assert_eq!(o.status.code(), Some(4), "{}\n{}", text(&o), s.op.logs());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("PartiallyFailed")
            && err.contains(&format!(
                "volume {app_ns}/host-data Failed: HostPathNotSupported"
            )),
        "{}",
        text(&o)
    );
    delete_all(&s.opns.name);
    e.kubectl_ok([
        "delete",
        "namespace",
        &app_ns,
        "--wait=true",
        "--timeout=120s",
    ]);
    e.kubectl_ok(["delete", "pv", &pv, "--wait=true", "--ignore-not-found"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// An application team's Backup in its own namespace (the operator watches it): `-l` selects
/// the app, `--wait` follows it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_backup_in_its_own_namespace_with_wait() {
    let s = setup("plug-tnt", Some(1)).await;
    let e = env();
    let app_ns = s.app_ns.as_ref().expect("app").name.clone();
    let o = run(&[
        "backup",
        "create",
        "mine",
        "-n",
        &app_ns,
        "-l",
        "app.kubernetes.io/part-of=shop",
        "--wait",
        "--timeout",
        "5m",
    ]);
    eprintln!("a tenant backup with --wait printed:\n{}", text(&o));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), s.op.logs());
    let d = run(&["describe", "backup/mine", "-n", &app_ns]);
    let dt = String::from_utf8_lossy(&d.stdout).into_owned();
    for want in [
        "Phase:       Completed".to_string(),
        format!("Operator:    {}", s.opns.name),
        format!("  {app_ns}/writer-data  Completed  [############] 100%"),
        format!("  {app_ns}/data-web-0  Completed  [############] 100%"),
    ] {
        assert!(dt.contains(&want), "missing {want:?} in\n{}", text(&d));
    }
    // Its finalizer needs the operator: delete it while the operator runs.
    e.kubectl_ok([
        "delete",
        "backups",
        "--all",
        "-n",
        &app_ns,
        "--wait=true",
        "--timeout=180s",
    ]);
    delete_all(&s.opns.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_with_wait_progress_logs_and_describe() {
    let s = setup("plug", Some(4)).await;
    let e = env();
    let (opns, app_ns) = (
        s.opns.name.clone(),
        s.app_ns.as_ref().expect("app").name.clone(),
    );
    let before: Vec<String> = WORKLOADS
        .iter()
        .map(|w| app::volume_checksums(&app_ns, w))
        .collect();

    // Backup with --wait in a terminal, and the mover logs followed meanwhile.
    let backup = {
        let (opns, app_ns) = (opns.clone(), app_ns.clone());
        tokio::task::spawn_blocking(move || {
            run_in_terminal(&[
                "backup",
                "create",
                "full",
                "-n",
                &opns,
                "--include-namespaces",
                &app_ns,
                "--wait",
            ])
        })
    };
    let api: Api<Backup> = Api::namespaced(s.client.clone(), &opns);
    wait_until(
        "backup full to exist",
        Duration::from_secs(60),
        Some(&opns),
        || {
            let api = api.clone();
            async move { api.get_opt("full").await.ok().flatten().map(|_| ()) }
        },
    )
    .await;
    let logs = {
        let opns = opns.clone();
        tokio::task::spawn_blocking(move || run(&["logs", "backup/full", "-n", &opns, "-f"]))
    };
    let o = backup.await.expect("join");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("backup --wait on a terminal printed: {out:?}");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o), s.op.logs());
    assert!(out.contains("\x1b["), "no redraw on a terminal: {out:?}");
    assert!(out.contains("100%"), "progress never reached 100%: {out:?}");
    assert!(
        out.contains(&format!("backup {opns}/full Completed")),
        "{out:?}"
    );
    let b = api.get("full").await.expect("get");
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed)
    );

    // The mover pods' lines, each prefixed with its pod (named after its DataUpload).
    let l = logs.await.expect("join");
    assert!(l.status.success(), "{}", text(&l));
    let uploads: Vec<String> = b
        .status
        .as_ref()
        .expect("status")
        .volumes
        .iter()
        .filter_map(|v| v.copy.as_ref().map(|c| c.data_upload.clone()))
        .collect();
    assert_eq!(uploads.len(), 2, "{b:#?}");
    let lines = String::from_utf8_lossy(&l.stdout).into_owned();
    eprintln!("logs -f printed:\n{}", text(&l));
    let streamed: Vec<&String> = uploads
        .iter()
        .filter(|u| lines.lines().any(|x| x.starts_with(&format!("[{u}] "))))
        .collect();
    assert!(!streamed.is_empty(), "no mover pod lines: {}", text(&l));

    // Afterwards the pods are gone, and logs says so.
    let gone = run(&["logs", "backup", "full", "-n", &opns]);
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("is gone"),
        "{}",
        text(&gone)
    );

    // describe shows phase, times, each volume at 100%.
    let d = run(&["describe", "backup", "full", "-n", &opns]);
    assert!(d.status.success(), "{}", text(&d));
    let dt = String::from_utf8_lossy(&d.stdout).into_owned();
    eprintln!("describe printed:\n{dt}");
    for want in [
        "Phase:       Completed".to_string(),
        "Started:".to_string(),
        format!("  {app_ns}/writer-data  Completed  [############] 100%"),
        format!("  {app_ns}/data-web-0  Completed  [############] 100%"),
    ] {
        assert!(dt.contains(&want), "missing {want:?} in\n{dt}");
    }
    let w = run(&["backup", "describe", "full", "-n", &opns, "--watch"]);
    assert_eq!(w.status.code(), Some(0), "{}", text(&w));

    // get: a table, and the object by name.
    let g = run(&["backup", "get", "-n", &opns]);
    let gt = String::from_utf8_lossy(&g.stdout).into_owned();
    assert!(
        gt.lines().any(|l| l.contains("full")
            && l.contains("Completed")
            && l.contains("2/2")
            && l.contains("100%")),
        "{}",
        text(&g)
    );
    let g = run(&["backup", "get", "full", "-n", &opns, "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&g.stdout),
        "backup.holdfast.dev/full\n",
        "{}",
        text(&g)
    );

    // The claim's restore points list the backup.
    let p = run(&["restore-points", "pvc/writer-data", "-n", &app_ns]);
    assert!(
        p.status.success() && String::from_utf8_lossy(&p.stdout).contains(&format!("{opns}/full")),
        "{}",
        text(&p)
    );

    // Restore into another namespace from the copy, waiting through a pipe: plain lines.
    let mapped = TestNamespace {
        name: format!("{app_ns}-m"),
    };
    let r = run(&[
        "restore",
        "create",
        "back",
        "-n",
        &opns,
        "--from-backup",
        "full",
        "--namespace-mapping",
        &format!("{app_ns}:{}", mapped.name),
        "--data-from",
        "Copy",
        "--wait",
    ]);
    let rt = String::from_utf8_lossy(&r.stdout).into_owned();
    eprintln!("restore --wait through a pipe printed:\n{}", text(&r));
    assert_eq!(r.status.code(), Some(0), "{}\n{}", text(&r), s.op.logs());
    assert!(
        !rt.contains('\x1b') && !rt.contains('\r'),
        "control characters without a terminal: {rt:?}"
    );
    let progress: Vec<&str> = rt
        .lines()
        .filter(|l| l.starts_with(&format!("restore {opns}/back")))
        .collect();
    assert!(progress.len() >= 2, "one line per change expected: {rt}");
    assert!(
        progress
            .iter()
            .all(|l| progress.iter().filter(|m| *m == l).count() == 1),
        "a line repeated without a change: {rt}"
    );
    assert!(rt.contains("restore.holdfast.dev/back created"), "{rt}");
    assert!(rt.contains("100%"), "{rt}");
    assert!(
        rt.contains(&format!("restore {opns}/back Completed")),
        "{rt}"
    );
    for (w, want) in WORKLOADS.iter().zip(&before) {
        app::wait_seeded(&mapped.name, w).await;
        assert_eq!(
            &app::volume_checksums(&mapped.name, w),
            want,
            "{w} data differs after the restore"
        );
    }
    let d = run(&["describe", "restore/back", "-n", &opns]);
    assert!(
        String::from_utf8_lossy(&d.stdout).contains("Phase:       Completed"),
        "{}",
        text(&d)
    );
    delete_all(&opns);
    let _ = e;
    drop(mapped);
}
