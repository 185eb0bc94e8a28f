//! Backup and restore of a namespace end to end on the testbed: real CSI snapshots, mover pods
//! writing a restic-format repository into MinIO, the namespace deleted and brought back.
//! One test binary, so every scenario shares one testbed and `Together` scenarios run
//! concurrently; `cadence.rs` holds the Schedule and retention scenarios, `maintenance.rs`
//! repository maintenance.
//!
//! libtest starts tests in name order. The two scenarios that need the testbed alone are named
//! `alone_*` so they run first, and the long Schedule scenarios (`cadence::*`, minutes of real
//! cadence each) come next, so every other scenario overlaps with them instead of waiting.

mod cadence;
mod confidential;
mod disaster;
mod faults;
mod group;
mod hooks;
mod keys;
mod maintenance;
mod retry;

use std::collections::BTreeSet;
use std::time::Duration;

use holdfast::controller::backup::BACKUP_UID;
use holdfast::controller::transfer::TRANSFER_LABEL;
use holdfast::storage::repository::REPOSITORY_NAMESPACE_LABEL;
use holdfast_api::backup::{Backup, BackupPhase, VolumePhase};
use holdfast_api::restore::{Restore, RestorePhase};
use holdfast_e2e::app::{self, WORKLOADS};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::ops::{wait_backup, wait_restore};
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// Scenarios that run an operator watching only its own namespaces run together; those that
/// watch the whole cluster, or count every mover pod, run alone.
static TURNS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// How a scenario shares the testbed.
#[derive(Clone, Copy, PartialEq)]
enum Share {
    /// Alongside other `Together` scenarios: its operator watches only its own namespace and
    /// its application namespace, and has no per-node mover limit (other scenarios' mover pods
    /// would count against it).
    Together,
    /// With nothing else running.
    Alone,
}

/// A scenario's turn on the testbed, held while it runs.
enum Turn {
    Together(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

async fn turn(share: Share) -> Turn {
    match share {
        Share::Together => {
            // The lock is fair: whoever asks first goes first. The `alone_*` scenarios start
            // at the same moment as the first `Together` ones (name order); letting them ask
            // first keeps the long Schedule scenarios from holding them, and every scenario
            // queued behind them, for minutes.
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            Turn::Together(TURNS.read().await)
        }
        Share::Alone => Turn::Alone(TURNS.write().await),
    }
}

/// Nothing temporary of this operator's transfers is left in its namespace or the cluster.
async fn assert_no_leftovers(client: &Client, opns: &str) {
    let lp = ListParams::default().labels(TRANSFER_LABEL);
    wait_until(
        "temporary objects to be gone",
        Duration::from_secs(60),
        Some(opns),
        || async {
            let pods: Api<Pod> = Api::namespaced(client.clone(), opns);
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), opns);
            let vs = env().kubectl_ok(["get", "volumesnapshots", "-n", opns, "-o", "name"]);
            // Exposed snapshot contents of this operator's transfers (their snapshot lives in
            // the operator namespace; other scenarios may be running).
            let vsc = env().kubectl_ok([
                "get",
                "volumesnapshotcontents",
                "-l",
                TRANSFER_LABEL,
                "-o",
                "jsonpath={range .items[*]}{.spec.volumeSnapshotRef.namespace}{\"\\n\"}{end}",
            ]);
            let vsc: Vec<&str> = vsc.lines().filter(|n| *n == opns).collect();
            let p = pods.list(&lp).await.ok()?.items.len();
            let c = pvcs.list(&lp).await.ok()?.items.len();
            (p == 0 && c == 0 && vs.trim().is_empty() && vsc.is_empty()).then_some(())
        },
    )
    .await;
}

/// The VolumeSnapshots backup `b` took (any namespace), one name per line.
fn snapshots_of(b: &Backup) -> String {
    env().kubectl_ok([
        "get",
        "volumesnapshots",
        "-A",
        "-l",
        &format!(
            "{BACKUP_UID}={}",
            b.metadata.uid.clone().unwrap_or_default()
        ),
        "-o",
        "name",
    ])
}

/// Whether `api` lists no objects.
async fn none_listed<K>(api: &Api<K>) -> bool
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty()
}

/// Deletes the Backups and Restores of the operator namespace while the operator still runs
/// (their finalizers need it), so the namespace can go.
async fn delete_all(client: &Client, opns: &str) {
    env().kubectl_ok([
        "delete",
        "restores,backups",
        "--all",
        "-n",
        opns,
        "--wait=false",
    ]);
    wait_until(
        "backups, restores and transfers to be deleted",
        Duration::from_secs(180),
        Some(opns),
        || async {
            let du: Api<holdfast_api::DataUpload> = Api::namespaced(client.clone(), opns);
            let b: Api<Backup> = Api::namespaced(client.clone(), opns);
            let r: Api<Restore> = Api::namespaced(client.clone(), opns);
            let lp = ListParams::default();
            (du.list(&lp).await.ok()?.items.is_empty()
                && b.list(&lp).await.ok()?.items.is_empty()
                && r.list(&lp).await.ok()?.items.is_empty())
            .then_some(())
        },
    )
    .await;
}

fn backup_yaml(name: &str, app_ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec:\n  includedNamespaces: [{app_ns}]\n{extra}"
    )
}

async fn repo_password(client: &Client, opns: &str, app_ns: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), opns);
    let list = secrets
        .list(&ListParams::default().labels(&format!("{REPOSITORY_NAMESPACE_LABEL}={app_ns}")))
        .await
        .expect("list repository secrets");
    let s = list.items.first().expect("repository password Secret");
    String::from_utf8(s.data.as_ref().expect("data")["password"].0.clone()).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_backed_up_deleted_and_restored_byte_for_byte() {
    let s = setup("br", 48, &[], Share::Together).await;
    let e = env();
    let (client, op, bucket) = (&s.client, &s.op, &s.bucket);
    let (opns, app_ns) = (&s.opns, &s.app_ns);
    let before = checksums(&app_ns.name);

    // Backup, watching progress while it runs.
    e.apply_yaml(&opns.name, &backup_yaml("full", &app_ns.name, ""));
    let api: Api<Backup> = Api::namespaced(client.clone(), &opns.name);
    let mut seen = BTreeSet::new();
    let done = loop {
        let b = api.get("full").await.expect("get backup");
        let st = b.status.clone().unwrap_or_default();
        if let Some(p) = &st.progress
            && st.phase == Some(BackupPhase::InProgress)
        {
            seen.insert(p.counts.bytes_done);
        }
        if st.phase.is_some_and(|p| p.is_terminal()) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let st = done.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "backup status: {st:#?}\n{}",
        op.logs()
    );
    assert_eq!(st.volumes.len(), 2, "{st:#?}");
    for v in &st.volumes {
        assert_eq!(v.phase, VolumePhase::Completed, "{v:#?}");
        assert!(
            v.snapshot.as_ref().is_some_and(|s| s.ready_to_use),
            "{v:#?}"
        );
        let c = v.copy.as_ref().expect("copy status");
        assert!(c.snapshot_id.is_some(), "{v:#?}");
        assert!(c.bytes_total >= 48 << 20, "{v:#?}");
    }
    assert!(st.items_backed_up.unwrap_or(0) >= 5, "{st:#?}");
    let rising: Vec<&u64> = seen.iter().filter(|b| **b > 0).collect();
    assert!(
        !rising.is_empty(),
        "progress never showed bytes while InProgress: {seen:?}"
    );
    let p = st.progress.as_ref().expect("progress");
    assert_eq!(p.volumes, "2/2");
    assert_eq!(p.display, "100%");
    assert_no_leftovers(client, &opns.name).await;

    // The stock restic CLI reads the repository.
    let password = repo_password(client, &opns.name, &app_ns.name).await;
    let snaps = app::restic_snapshots(bucket, &app_ns.name, &password);
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{snaps}");

    // The namespace goes; the restore brings everything back.
    app_ns.delete_and_wait(client).await;
    e.apply_yaml(&opns.name, "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {name: back}\nspec:\n  source: {backup: full}\n");
    let r = wait_restore(client, &opns.name, "back").await;
    let rst = r.status.clone().expect("status");
    assert_eq!(
        rst.phase,
        Some(RestorePhase::Completed),
        "{rst:#?}\n{}",
        op.logs()
    );
    assert_eq!(rst.volumes.len(), 2);
    for v in &rst.volumes {
        // Restored from the copy (the snapshots went with the namespace); the total comes
        // from the backup, the bytes written from the mover.
        assert_eq!(
            v.from,
            Some(holdfast_api::restore::RestoreFrom::Copy),
            "{v:#?}"
        );
        assert!(v.bytes_total >= 48 << 20, "{v:#?}");
        assert_eq!(v.bytes_done, v.bytes_total, "{v:#?}");
    }
    for kind in [
        "configmap/settings",
        "secret/db-password",
        "service/web",
        "deployment/writer",
        "statefulset/web",
        "pvc/writer-data",
        "pvc/data-web-0",
    ] {
        e.kubectl_ok(["get", "-n", &app_ns.name, kind]);
    }
    let pw = e.kubectl_ok([
        "get",
        "secret/db-password",
        "-n",
        &app_ns.name,
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(pw.trim(), "czNjcjN0LXZhbHVl", "secret content restored");
    for (w, want) in WORKLOADS.iter().zip(&before) {
        app::wait_seeded(&app_ns.name, w).await;
        assert_eq!(
            &app::volume_checksums(&app_ns.name, w),
            want,
            "{w} data differs after restore"
        );
    }
    assert_no_leftovers(client, &opns.name).await;
    delete_all(client, &opns.name).await;
}

/// An operator namespace with a location on a fresh bucket, an application namespace with the
/// sample app seeded, and the operator running.
struct Setup {
    client: Client,
    opns: TestNamespace,
    app_ns: TestNamespace,
    bucket: String,
    op: Operator,
    /// The arguments the operator was started with (for restarts).
    args: Vec<String>,
    _turn: Turn,
}

async fn setup(prefix: &str, mib: u32, operator_args: &[&str], share: Share) -> Setup {
    let turn = turn(share).await;
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, &format!("{prefix}-op")).await;
    let app_ns = TestNamespace::new(&client, &format!("{prefix}-app")).await;
    let bucket = format!("hf-{prefix}-{}", holdfast_e2e::random_suffix());
    app::make_bucket(&bucket).await;
    let mut args: Vec<String> = operator_args.iter().map(|a| a.to_string()).collect();
    if share == Share::Together {
        args.extend([
            format!("--watch-namespaces={}", app_ns.name),
            "--max-movers-per-node=0".to_string(),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(&opns.name, &format!("{prefix}-0"), &refs);
    op.wait_ready().await;
    e.apply_yaml(&opns.name, &app::location_yaml("primary", &bucket));
    app::deploy_seeded(&app_ns.name, mib).await;
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
        bucket,
        op,
        args,
        _turn: turn,
    }
}

impl Setup {
    /// Kills the operator and starts another one with the same arguments.
    async fn restart_operator(&mut self, identity: &str) {
        self.op.kill();
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.op = Operator::start(&self.opns.name, identity, &refs);
        self.op.wait_ready().await;
    }
}

/// The live application (a claim on a local volume of the first node, class `manual` that no
/// snapshot class serves) in the setup's application namespace: its PV and host directory.
fn deploy_live_app(s: &Setup, name: &str, mib: u32) -> (String, std::path::PathBuf) {
    let e = env();
    let app_ns = &s.app_ns.name;
    let dir = std::env::temp_dir().join(format!("hf-{name}-{app_ns}"));
    std::fs::create_dir_all(&dir).expect("host directory of the live volume");
    let pv = format!("{app_ns}-{name}");
    e.apply_yaml(
        app_ns,
        &app::live_app_yaml(&pv, &dir.display().to_string(), &e.node, mib),
    );
    (pv, dir)
}

/// Removes a volume made by [`deploy_live_app`] (its claim must be gone or going).
fn remove_volume(pv: &str, dir: &std::path::Path) {
    env().kubectl_ok(["delete", "pv", pv, "--wait=true", "--ignore-not-found"]);
    let _ = std::fs::remove_dir_all(dir);
}

fn restore_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

fn checksums(ns: &str) -> Vec<String> {
    WORKLOADS
        .iter()
        .map(|w| app::volume_checksums(ns, w))
        .collect()
}

async fn completed_backup(s: &Setup, name: &str, extra: &str) -> Backup {
    env().apply_yaml(&s.opns.name, &backup_yaml(name, &s.app_ns.name, extra));
    let b = wait_backup(&s.client, &s.opns.name, name, Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "backup {name}: {st:#?}\n{}",
        s.op.logs()
    );
    b
}

fn uploaded(b: &Backup, pvc: &str) -> u64 {
    b.status
        .as_ref()
        .expect("status")
        .volumes
        .iter()
        .find(|v| v.pvc.name == pvc)
        .and_then(|v| v.copy.as_ref())
        .map(|c| c.bytes_uploaded)
        .expect("volume copy")
}

/// Key prefix of backup `name`'s objects in the setup's bucket (with a trailing slash).
fn backup_prefix(s: &Setup, ns: &str, name: &str) -> String {
    let bsl = app::location("primary", &s.bucket);
    format!(
        "{}/",
        holdfast::storage::layout::backup_prefix(&bsl, ns, name)
    )
}

/// How many snapshots of the location's catalog (restic's own listing) record backup `b`:
/// its metadata and objects, or its objects alone while it runs.
async fn catalog_records(s: &Setup, b: &Backup) -> usize {
    use holdfast::storage::layout::CATALOG;
    let password = repo_password(&s.client, &s.opns.name, CATALOG).await;
    let uid = format!("uid:{}", b.metadata.uid.clone().unwrap_or_default());
    app::restic_snapshots(&s.bucket, CATALOG, &password)
        .as_array()
        .expect("snapshots")
        .iter()
        .filter(|v| {
            v["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(uid.as_str())))
        })
        .count()
}

async fn bucket_keys(s: &Setup, prefix: &str) -> Vec<String> {
    use holdfast_store::Store;
    app::s3_store(&s.bucket)
        .await
        .list(prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// A second backup reads and uploads only what changed: ~500 KiB of a changed volume, next
/// to nothing of an unchanged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_uploads_only_what_changed() {
    let s = setup("inc", 16, &[], Share::Together).await;
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let b1 = completed_backup(&s, "b1", "").await;
    // ~3% of the data changes: the next backup stores about that much.
    app::sh(
        &app_ns,
        "deploy/writer",
        "head -c 500K /dev/urandom > /data/dir/new.bin",
    );
    let b2 = completed_backup(&s, "b2", "").await;
    let (w1, w2) = (uploaded(&b1, "writer-data"), uploaded(&b2, "writer-data"));
    assert!(w1 >= 16 << 20, "first backup uploaded {w1} bytes");
    assert!(
        ((500 << 10)..(3 << 20)).contains(&w2),
        "second backup uploaded {w2} bytes for ~500 KiB of change"
    );
    let web2 = uploaded(&b2, "data-web-0");
    eprintln!(
        "uploaded: first backup {w1} B, after ~500 KiB changed {w2} B, unchanged volume {web2} B"
    );
    assert!(web2 < 1 << 20, "unchanged volume uploaded {web2} bytes");
    delete_all(&s.client, &opns).await;
}

/// An administrator's restore puts a namespace into another one and its claims onto another
/// StorageClass, with the backed-up data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_maps_namespace_and_storage_class() {
    let s = setup("map", 4, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    completed_backup(&s, "b1", "").await;
    let at_b1 = checksums(&app_ns);
    let alt = format!("hf-alt-{}", holdfast_e2e::random_suffix());
    e.apply_yaml("default", &format!("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {alt}}}\nprovisioner: hostpath.csi.k8s.io\nreclaimPolicy: Delete\nvolumeBindingMode: Immediate\n"));
    let mapped = TestNamespace {
        name: format!("{app_ns}-mapped"),
    };
    e.apply_yaml(&opns, &restore_yaml("mapped", &format!("  source: {{backup: b1}}\n  namespaceMapping: {{{app_ns}: {}}}\n  storageClassMapping: {{standard: {alt}}}\n", mapped.name)));
    let r = wait_restore(&s.client, &opns, "mapped").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}\n{}",
        r.status,
        s.op.logs()
    );
    for pvc in ["writer-data", "data-web-0"] {
        let sc = e.kubectl_ok([
            "get",
            "pvc",
            pvc,
            "-n",
            &mapped.name,
            "-o",
            "jsonpath={.spec.storageClassName}",
        ]);
        assert_eq!(sc.trim(), alt, "claim {pvc} restored onto the mapped class");
    }
    for w in WORKLOADS {
        app::wait_seeded(&mapped.name, w).await;
    }
    assert_eq!(
        checksums(&mapped.name),
        at_b1,
        "mapped restore has the data of b1"
    );
    assert_no_leftovers(&s.client, &opns).await;
    e.kubectl(["delete", "storageclass", &alt]);
    delete_all(&s.client, &opns).await;
    drop(mapped);
}

/// An in-place restore is refused while pods mount the claims (naming the fix), and after
/// the workloads are scaled down it replaces the volumes with the backed-up data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_restore_waits_for_the_workload_to_stop() {
    let s = setup("inp", 4, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    completed_backup(&s, "b1", "").await;
    let at_b1 = checksums(&app_ns);
    app::sh(
        &app_ns,
        "deploy/writer",
        "head -c 500K /dev/urandom > /data/dir/new.bin",
    );
    let in_place = format!(
        "  source: {{backup: b1}}\n  includedNamespaces: [{app_ns}]\n  volumes: {{target: InPlace}}\n"
    );
    e.apply_yaml(&opns, &restore_yaml("inplace-busy", &in_place));
    let r = wait_restore(&s.client, &opns, "inplace-busy").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, Some(RestorePhase::Failed), "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("VolumeInUse"), "{st:#?}");
    assert!(
        st.message.as_deref().unwrap_or("").contains("scale"),
        "{st:#?}"
    );
    e.kubectl_ok([
        "scale",
        "-n",
        &app_ns,
        "deploy/writer",
        "statefulset/web",
        "--replicas=0",
    ]);
    wait_until(
        "sample pods to stop",
        Duration::from_secs(120),
        Some(&app_ns),
        || async {
            let pods: Api<Pod> = Api::namespaced(s.client.clone(), &app_ns);
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
    e.apply_yaml(&opns, &restore_yaml("inplace", &in_place));
    let r = wait_restore(&s.client, &opns, "inplace").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}\n{}",
        r.status,
        s.op.logs()
    );
    e.kubectl_ok([
        "scale",
        "-n",
        &app_ns,
        "deploy/writer",
        "statefulset/web",
        "--replicas=1",
    ]);
    for w in WORKLOADS {
        app::wait_seeded(&app_ns, w).await;
    }
    assert_eq!(
        checksums(&app_ns),
        at_b1,
        "in-place restore brought back b1 (new.bin gone)"
    );
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}

/// Deleting a Backup with `deletionPolicy: Delete` forgets its repository snapshots and
/// removes its bucket objects and VolumeSnapshots; with `Retain` all of them stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_delete_removes_data_and_retain_keeps_it() {
    let s = setup("del", 4, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let b1 = completed_backup(&s, "b1", "").await;
    let b2 = completed_backup(&s, "b2", "").await;
    let password = repo_password(&s.client, &opns, &app_ns).await;
    let restic_count = || {
        app::restic_snapshots(&s.bucket, &app_ns, &password)
            .as_array()
            .map(Vec::len)
    };
    let delete_backup = |name: &str| {
        e.kubectl_ok([
            "delete",
            "backup",
            name,
            "-n",
            &opns,
            "--wait=true",
            "--timeout=120s",
        ]);
    };
    assert_eq!(restic_count(), Some(4));
    // b1 is kept (Retain), b2 is not (Delete). A finished Backup has no finalizer: it goes at
    // once and the operator removes its data after (controller::departed). b1 goes first, so
    // by the time b2's data is gone the operator has long seen b1's deletion.
    e.kubectl_ok([
        "patch",
        "backup",
        "b1",
        "-n",
        &opns,
        "--type=merge",
        "-p",
        "{\"spec\":{\"deletionPolicy\":\"Retain\"}}",
    ]);
    delete_backup("b1");
    delete_backup("b2");
    assert_eq!(
        catalog_records(&s, &b2).await,
        1,
        "b2 recorded in the catalog"
    );
    wait_until(
        "b2's repository snapshots, catalog record and VolumeSnapshots to be removed",
        Duration::from_secs(120),
        Some(&opns),
        || async {
            (restic_count() == Some(2)
                && catalog_records(&s, &b2).await == 0
                && snapshots_of(&b2).trim().is_empty())
            .then_some(())
        },
    )
    .await;
    assert_eq!(restic_count(), Some(2), "b1 retained");
    assert_eq!(catalog_records(&s, &b1).await, 1, "b1's record retained");
    assert!(
        bucket_keys(&s, &backup_prefix(&s, &opns, "b1"))
            .await
            .is_empty(),
        "nothing of a backup in the bucket outside its repositories"
    );
    let vs = snapshots_of(&b1);
    assert_eq!(vs.lines().count(), 2, "b1's snapshots retained: {vs}");
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}

/// Waits until a DataUpload of `uploads` is InProgress (a mover uploading).
async fn upload_in_progress(uploads: &Api<holdfast_api::DataUpload>, opns: &str) {
    let in_progress = || async {
        let list = uploads.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| s.phase == holdfast_api::backup::TransferPhase::InProgress)
            })
            .then_some(())
    };
    wait_until(
        "an upload to be in progress",
        Duration::from_secs(120),
        Some(opns),
        in_progress,
    )
    .await;
}

/// A Backup cancelled while its movers upload ends Cancelled and leaves nothing: no pods,
/// claims, snapshots, DataUploads or bucket objects; its mover pods carried the resources it
/// asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_nothing() {
    let s = setup("cxl", 160, &[], Share::Together).await;
    let e = env();
    let opns = s.opns.name.clone();
    let uploads: Api<holdfast_api::DataUpload> = Api::namespaced(s.client.clone(), &opns);

    // Cancel while the mover uploads.
    e.apply_yaml(
        &opns,
        &backup_yaml(
            "cancelled",
            &s.app_ns.name,
            "  volumes: {moverResources: {requests: {cpu: 100m}, limits: {memory: 768Mi}}}\n",
        ),
    );
    upload_in_progress(&uploads, &opns).await;
    // The mover pods carry the resources the Backup asked for.
    let limits = e.kubectl_ok([
        "get",
        "pods",
        "-n",
        &opns,
        "-l",
        TRANSFER_LABEL,
        "-o",
        "jsonpath={.items[*].spec.containers[0].resources.limits.memory}",
    ]);
    assert!(limits.contains("768Mi"), "mover pod resources: {limits:?}");
    // Once a mover stored packs it holds a repository lock (and named them in its journal):
    // the cancel must not leave those behind.
    let bsl = app::location("primary", &s.bucket);
    wait_until(
        "a mover to store packs",
        Duration::from_secs(120),
        Some(&opns),
        || async { (retry::pack_bytes(&s.bucket, &bsl, &s.app_ns.name).await > 0).then_some(()) },
    )
    .await;
    e.kubectl_ok([
        "patch",
        "backup",
        "cancelled",
        "-n",
        &opns,
        "--type=merge",
        "-p",
        "{\"spec\":{\"cancel\":true}}",
    ]);
    let b = wait_backup(&s.client, &opns, "cancelled", Duration::from_secs(120)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Cancelled), "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("Cancelled"));
    assert_no_leftovers(&s.client, &opns).await;
    let vs = snapshots_of(&b);
    assert!(
        vs.trim().is_empty(),
        "cancelled backup's snapshots are gone: {vs}"
    );
    assert_eq!(
        catalog_records(&s, &b).await,
        0,
        "the cancelled backup's objects are gone from the catalog"
    );
    assert!(
        none_listed(&uploads).await,
        "DataUploads of the cancelled backup are gone"
    );
    // Nor a lock or journal of the movers the cancel ended (removed a moment after their
    // pods went).
    wait_until(
        "the cancelled movers' locks and journals to be removed",
        Duration::from_secs(90),
        Some(&opns),
        || async { retry::leftovers(&s).await.is_empty().then_some(()) },
    )
    .await;
    delete_all(&s.client, &opns).await;
}

/// The operator is killed at three points of a backup (just started, snapshotting or
/// copying, a mover uploading); each time the next one finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_during_a_backup_resumes_it() {
    let mut s = setup("rs", 160, &["--leader-elect=false"], Share::Together).await;
    let e = env();
    let opns = s.opns.name.clone();
    let uploads: Api<holdfast_api::DataUpload> = Api::namespaced(s.client.clone(), &opns);

    // The operator dies at three points of a backup; each time a new one finishes the job.
    e.apply_yaml(&opns, &backup_yaml("survivor", &s.app_ns.name, ""));
    let api: Api<Backup> = Api::namespaced(s.client.clone(), &opns);
    type Point = (&'static str, Box<dyn Fn(&Backup) -> bool>);
    let points: [Point; 3] = [
        (
            "right after it started",
            Box::new(|b: &Backup| b.status.as_ref().is_some_and(|s| s.start_time.is_some())),
        ),
        (
            "while volumes were snapshotted or copied",
            Box::new(|b: &Backup| {
                b.status.as_ref().is_some_and(|s| {
                    s.volumes.iter().any(|v| {
                        matches!(v.phase, VolumePhase::Snapshotting | VolumePhase::Copying)
                    })
                })
            }),
        ),
        (
            "while a mover pod was uploading",
            Box::new(|_: &Backup| true),
        ),
    ];
    for (i, (what, reached)) in points.iter().enumerate() {
        let b = wait_until(
            &format!("backup to reach the point {what}"),
            Duration::from_secs(180),
            Some(&opns),
            || async {
                let b = api.get("survivor").await.ok()?;
                reached(&b).then_some(b)
            },
        )
        .await;
        if i == 2 {
            upload_in_progress(&uploads, &opns).await;
        }
        assert!(
            !b.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal()),
            "the backup finished before the operator could be killed {what}"
        );
        s.restart_operator(&format!("rs-{}", i + 1)).await;
    }
    let b = wait_backup(&s.client, &opns, "survivor", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        s.op.logs()
    );
    assert!(
        st.volumes
            .iter()
            .all(|v| v.copy.as_ref().is_some_and(|c| c.snapshot_id.is_some()))
    );
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}

/// Nothing of a live copy (its mover pod, the copied access Secret) is left in `ns`.
async fn assert_no_live_leftovers(client: &Client, ns: &str) {
    let lp = ListParams::default().labels(TRANSFER_LABEL);
    wait_until(
        "the live copy's pod and Secret to be gone",
        Duration::from_secs(60),
        Some(ns),
        || async {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            (pods.list(&lp).await.ok()?.items.is_empty()
                && secrets.list(&lp).await.ok()?.items.is_empty())
            .then_some(())
        },
    )
    .await;
}

/// What a watch of every mover pod (all namespaces) saw: the most that ran at once on one node,
/// and the namespaces they ran in.
#[derive(Default, Debug)]
struct MoverWatch {
    max_per_node: usize,
    namespaces: BTreeSet<String>,
    nodes: BTreeSet<String>,
}

/// Watches mover pods (label `holdfast.dev/transfer`, every namespace) until aborted. Every
/// change the API server reports is seen, so two pods running at once on one node cannot be
/// missed between polls.
fn watch_movers(
    client: &Client,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<MoverWatch>>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(MoverWatch::default()));
    let out = seen.clone();
    let api: Api<Pod> = Api::all(client.clone());
    let task = tokio::spawn(async move {
        let mut running: std::collections::BTreeMap<String, String> = Default::default();
        let mut stream = std::pin::pin!(watcher(
            api,
            watcher::Config::default().labels(TRANSFER_LABEL)
        ));
        while let Some(ev) = stream.next().await {
            let (pod, gone) = match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                Ok(watcher::Event::Delete(p)) => (p, true),
                _ => continue,
            };
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default()
            );
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            let done = gone || matches!(phase.as_deref(), Some("Succeeded") | Some("Failed"));
            match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                Some(node) if !done => {
                    out.lock().expect("lock").nodes.insert(node.clone());
                    running.insert(key, node);
                }
                _ => {
                    running.remove(&key);
                }
            }
            let mut per_node: std::collections::BTreeMap<&str, usize> = Default::default();
            for n in running.values() {
                *per_node.entry(n).or_default() += 1;
            }
            let mut s = out.lock().expect("lock");
            s.max_per_node = s
                .max_per_node
                .max(per_node.values().copied().max().unwrap_or(0));
            s.namespaces
                .insert(pod.metadata.namespace.clone().unwrap_or_default());
        }
    });
    (task, seen)
}

/// A tenant's Backup may not copy a volume live (that would put the location's credentials in
/// reach) nor back up a hostPath volume (nothing records which node holds its data); its CSI
/// claims are cut together by the group snapshot it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_backup_refuses_live_copy_and_host_path_and_cuts_a_group_snapshot() {
    let s = setup("tnt", 1, &[], Share::Together).await;
    let e = env();
    let app_ns = s.app_ns.name.clone();
    let (pv, dir) = deploy_live_app(&s, "live", 1);
    let host_pv = format!("{app_ns}-host");
    let host_dir = std::env::temp_dir().join(format!("hf-live-{app_ns}-host"));
    e.apply_yaml(
        &app_ns,
        &app::host_path_claim_yaml(&host_pv, &host_dir.display().to_string()),
    );
    app::wait_seeded(&app_ns, "deploy/live").await;
    e.apply_yaml(
        &app_ns,
        &backup_yaml(
            "tenant-live",
            &app_ns,
            "  volumes: {mode: Snapshot, withoutSnapshot: LiveCopy, groupSnapshot: true}\n",
        ),
    );
    let t = wait_backup(&s.client, &app_ns, "tenant-live", Duration::from_secs(180)).await;
    let st = t.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed), "{st:#?}");
    let v = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "live-data")
        .expect("live volume");
    assert_eq!(v.reason.as_deref(), Some("LiveCopyNotAllowed"), "{v:#?}");
    let h = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "host-data")
        .expect("hostPath volume");
    assert_eq!(h.phase, VolumePhase::Failed, "{h:#?}");
    assert_eq!(h.reason.as_deref(), Some("HostPathNotSupported"), "{h:#?}");
    assert!(
        h.message.as_deref().is_some_and(|m| m.contains(&host_pv)),
        "{h:#?}"
    );
    e.kubectl_ok(["delete", "pvc", "host-data", "-n", &app_ns, "--wait=true"]);
    e.kubectl_ok(["delete", "pv", &host_pv, "--wait=true"]);
    let _ = std::fs::remove_dir_all(&host_dir);
    // The CSI claims were cut together by one group snapshot (the others cannot be).
    let groups: Vec<Option<String>> = st
        .volumes
        .iter()
        .filter(|v| v.pvc.name == "writer-data" || v.pvc.name == "data-web-0")
        .map(|v| v.snapshot.as_ref().and_then(|s| s.group.clone()))
        .collect();
    assert_eq!(groups.len(), 2, "{st:#?}");
    assert!(groups[0].is_some() && groups[0] == groups[1], "{st:#?}");

    e.kubectl_ok(["delete", "deploy", "live", "-n", &app_ns, "--wait=true"]);
    e.kubectl_ok(["delete", "pvc", "live-data", "-n", &app_ns, "--wait=true"]);
    remove_volume(&pv, &dir);
    delete_all(&s.client, &app_ns).await;
}

/// A volume without a snapshot class is copied live by a mover pod in its own namespace
/// (administrators only), and restored onto another class. With a second node and
/// `--max-movers-per-node 1`, the three mover pods of the backup use both nodes, never two on
/// one, and the third waits for a free node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_live_copy_and_per_node_mover_limit() {
    let s = setup("live", 16, &["--max-movers-per-node", "1"], Share::Alone).await;
    let e = env();
    // The application runs on the first node; a second one takes mover pods.
    let tb = holdfast_e2e::repo_root().join("e2e/testbed");
    let out = std::process::Command::new(&tb)
        .args(["add-node", "holdfast-node-2"])
        .output()
        .expect("run e2e/testbed add-node");
    assert!(
        out.status.success(),
        "e2e/testbed add-node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let (pv, dir) = deploy_live_app(&s, "live", 64);
    app::wait_seeded(&app_ns, "deploy/live").await;
    let live_before = app::volume_checksums(&app_ns, "deploy/live");
    let before = checksums(&app_ns);

    // The administrator's backup: snapshots for two claims, a live copy for the third.
    let (watch, seen) = watch_movers(&s.client);
    let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = {
        let (client, opns, waited) = (s.client.clone(), opns.clone(), waited.clone());
        tokio::spawn(async move {
            let du: Api<holdfast_api::DataUpload> = Api::namespaced(client, &opns);
            loop {
                if let Ok(l) = du.list(&ListParams::default()).await
                    && l.items.iter().any(|d| {
                        d.status.as_ref().and_then(|s| s.reason.as_deref())
                            == Some("WaitingForNodeSlot")
                    })
                {
                    waited.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let b = completed_backup(&s, "live", "  volumes: {withoutSnapshot: LiveCopy}\n").await;
    poll.abort();
    watch.abort();
    let st = b.status.clone().expect("status");
    let live = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "live-data")
        .expect("live volume");
    assert_eq!(live.phase, VolumePhase::Completed, "{live:#?}");
    assert_eq!(
        live.consistency,
        Some(holdfast_api::backup::Consistency::Inconsistent),
        "{live:#?}"
    );
    assert_eq!(live.reason.as_deref(), Some("LiveCopy"), "{live:#?}");
    assert!(live.snapshot.is_none(), "{live:#?}");
    assert!(
        live.copy
            .as_ref()
            .and_then(|c| c.snapshot_id.as_ref())
            .is_some(),
        "{live:#?}"
    );
    for v in st.volumes.iter().filter(|v| v.pvc.name != "live-data") {
        assert_eq!(
            v.consistency,
            Some(holdfast_api::backup::Consistency::CrashConsistent),
            "{v:#?}"
        );
    }
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    eprintln!("mover pods: {seen:?}");
    assert_eq!(
        seen.max_per_node, 1,
        "mover pods at once on the node (limit 1): {seen:?}"
    );
    assert_eq!(seen.nodes.len(), 2, "mover pods used both nodes: {seen:?}");
    assert!(
        seen.namespaces.contains(&app_ns) && seen.namespaces.contains(&opns),
        "the live copy ran in {app_ns}, the snapshot copies in {opns}: {seen:?}"
    );
    assert!(
        waited.load(std::sync::atomic::Ordering::SeqCst),
        "a DataUpload waited for a node slot (WaitingForNodeSlot)"
    );
    assert_no_live_leftovers(&s.client, &app_ns).await;
    assert_no_leftovers(&s.client, &opns).await;

    // The namespace and the volume go; the restore puts the live-copied claim on `standard`.
    s.app_ns.delete_and_wait(&s.client).await;
    remove_volume(&pv, &dir);
    e.apply_yaml(
        &opns,
        &restore_yaml(
            "live",
            "  source: {backup: live}\n  storageClassMapping: {manual: standard}\n  hooks: {rules: [{name: warm, postExec: [{command: [\"true\"]}]}]}\n",
        ),
    );
    let r = wait_restore(&s.client, &opns, "live").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}\n{}",
        r.status,
        s.op.logs()
    );
    // The restore hook ran in every restored pod its rule selects (all of them).
    let rst = r.status.clone().expect("status");
    assert!(rst.hook_pods_expected.unwrap_or(0) >= 1, "{rst:#?}");
    assert_eq!(rst.hooks_attempted, rst.hook_pods_expected, "{rst:#?}");
    assert_eq!(rst.hooks_failed, Some(0), "{rst:#?}");
    let sc = e.kubectl_ok([
        "get",
        "pvc",
        "live-data",
        "-n",
        &app_ns,
        "-o",
        "jsonpath={.spec.storageClassName}",
    ]);
    assert_eq!(sc.trim(), "standard");
    app::wait_seeded(&app_ns, "deploy/live").await;
    assert_eq!(app::volume_checksums(&app_ns, "deploy/live"), live_before);
    for w in WORKLOADS {
        app::wait_seeded(&app_ns, w).await;
    }
    assert_eq!(checksums(&app_ns), before);
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}

/// A download whose volume was handed over but never claimed (its restore was cancelled or
/// deleted in between) takes the volume along when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_download_takes_its_volume_along() {
    let s = setup("orph", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let b = completed_backup(&s, "source", "").await;
    let copied = b
        .status
        .as_ref()
        .expect("status")
        .volumes
        .iter()
        .find(|v| v.pvc.name == "writer-data")
        .cloned()
        .expect("writer volume");
    let sid = copied
        .copy
        .as_ref()
        .and_then(|c| c.snapshot_id.clone())
        .expect("snapshot id");
    e.apply_yaml(
        &opns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: DataDownload\nmetadata: {{name: orphan}}\nspec:\n  restore: {{namespace: {opns}, name: gone}}\n  targetPvc: {{namespace: {app_ns}, name: never-created}}\n  storageLocation: primary\n  repository: {app_ns}\n  snapshotId: {sid}\n  storageClassName: standard\n  capacity: 256Mi\n"
        ),
    );
    let dd_api: Api<holdfast_api::DataDownload> = Api::namespaced(s.client.clone(), &opns);
    let orphan_pv = wait_until(
        "DataDownload orphan to complete",
        Duration::from_secs(180),
        Some(&opns),
        || async {
            let st = dd_api.get("orphan").await.ok()?.status?;
            assert_ne!(
                st.phase,
                holdfast_api::backup::TransferPhase::Failed,
                "{st:#?}"
            );
            (st.phase == holdfast_api::backup::TransferPhase::Completed)
                .then_some(st.volume)
                .flatten()
        },
    )
    .await;
    let reserved = e.kubectl_ok([
        "get",
        "pv",
        &orphan_pv,
        "-o",
        "jsonpath={.spec.persistentVolumeReclaimPolicy} {.spec.claimRef.name}",
    ]);
    assert_eq!(reserved.trim(), "Retain never-created");
    e.kubectl_ok([
        "delete",
        "datadownload",
        "orphan",
        "-n",
        &opns,
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_until(
        "the unclaimed restored volume to be deleted",
        Duration::from_secs(60),
        None,
        || async {
            let o = env().kubectl(["get", "pv", &orphan_pv]);
            (!o.status.success()).then_some(())
        },
    )
    .await;

    delete_all(&s.client, &opns).await;
}

/// A namespace that enforces Pod Security `restricted` refuses the live copy's mover pod: the
/// volume fails with a reason that names the way out, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_namespace_refuses_the_live_copy_mover() {
    let s = setup("psa", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let (pv, dir) = deploy_live_app(&s, "live", 1);
    app::wait_seeded(&app_ns, "deploy/live").await;
    e.kubectl_ok([
        "label",
        "namespace",
        &app_ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    e.apply_yaml(
        &opns,
        &backup_yaml(
            "live-restricted",
            &app_ns,
            "  volumes: {mode: Snapshot, withoutSnapshot: LiveCopy}\n",
        ),
    );
    let r = wait_backup(
        &s.client,
        &opns,
        "live-restricted",
        Duration::from_secs(180),
    )
    .await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed), "{st:#?}");
    let v = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "live-data")
        .expect("live volume");
    assert_eq!(v.reason.as_deref(), Some("MoverPodRejected"), "{v:#?}");
    assert!(
        v.message
            .as_deref()
            .is_some_and(|m| m.contains("pod-security.kubernetes.io/enforce=baseline")),
        "{v:#?}"
    );
    e.kubectl_ok([
        "label",
        "namespace",
        &app_ns,
        "pod-security.kubernetes.io/enforce-",
    ]);
    assert_no_live_leftovers(&s.client, &app_ns).await;

    e.kubectl_ok(["delete", "deploy", "live", "-n", &app_ns, "--wait=true"]);
    e.kubectl_ok(["delete", "pvc", "live-data", "-n", &app_ns, "--wait=true"]);
    remove_volume(&pv, &dir);
    delete_all(&s.client, &opns).await;
}

/// A ReadWriteOncePod claim in use cannot be mounted by a second pod: the live copy is
/// refused with the pod's name instead of a mover that would never start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_once_pod_claim_in_use_is_not_copied_live() {
    let s = setup("rwop", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let rwop_pv = format!("{app_ns}-rwop");
    let rwop_dir = std::env::temp_dir().join(format!("hf-live-{app_ns}-rwop"));
    std::fs::create_dir_all(&rwop_dir).expect("host directory of the RWOP volume");
    let rwop_yaml = app::live_app_yaml(&rwop_pv, &rwop_dir.display().to_string(), &e.node, 1)
        .replace("[ReadWriteOnce]", "[ReadWriteOncePod]")
        .replace("live-data", "rwop-data")
        .replace("{name: live}", "{name: rwop}")
        .replace("app: live", "app: rwop");
    e.apply_yaml(&app_ns, &rwop_yaml);
    app::wait_seeded(&app_ns, "deploy/rwop").await;
    e.apply_yaml(
        &opns,
        &backup_yaml(
            "live-rwop",
            &app_ns,
            "  labelSelector: {matchLabels: {app: rwop}}\n  volumes: {mode: Snapshot, withoutSnapshot: LiveCopy}\n",
        ),
    );
    let r = wait_backup(&s.client, &opns, "live-rwop", Duration::from_secs(180)).await;
    let st = r.status.clone().expect("status");
    let v = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "rwop-data")
        .unwrap_or_else(|| panic!("the RWOP claim is selected: {st:#?}"));
    assert_eq!(v.reason.as_deref(), Some("VolumeInUse"), "{v:#?}");
    let user = e.kubectl_ok([
        "get",
        "pods",
        "-n",
        &app_ns,
        "-l",
        "app=rwop",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert!(
        v.message
            .as_deref()
            .is_some_and(|m| m.contains("ReadWriteOncePod") && m.contains(user.trim())),
        "{v:#?}"
    );
    assert_no_live_leftovers(&s.client, &app_ns).await;
    e.kubectl_ok(["delete", "deploy", "rwop", "-n", &app_ns, "--wait=true"]);
    e.kubectl_ok(["delete", "pvc", "rwop-data", "-n", &app_ns, "--wait=true"]);
    e.kubectl_ok(["delete", "pv", &rwop_pv, "--wait=true"]);
    let _ = std::fs::remove_dir_all(&rwop_dir);

    delete_all(&s.client, &opns).await;
}

/// Two operators on one cluster: neither touches the other's namespace, `--watch-namespaces`
/// keeps one away from tenants, and a tenant Backup both may take is taken by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_two_operators_share_a_cluster() {
    let mut s = setup("pair", 8, &[], Share::Alone).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let other = TestNamespace::new(&s.client, "pair-op2").await;
    // The second operator has no location yet: had it taken up anything of the first one's,
    // or of the tenant's, that would have failed for want of location `primary`.
    let b1 = Operator::start(
        &other.name,
        "pair-b1",
        &["--watch-namespaces", &format!("{},unrelated", other.name)],
    );
    b1.wait_ready().await;
    let admin = completed_backup(&s, "in-a", "").await;
    assert_eq!(
        admin
            .status
            .as_ref()
            .and_then(|s| s.operator_namespace.as_deref()),
        Some(opns.as_str())
    );
    e.apply_yaml(&app_ns, &backup_yaml("t0", &app_ns, ""));
    let t0 = wait_backup(&s.client, &app_ns, "t0", Duration::from_secs(300)).await;
    let st = t0.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");
    assert_eq!(st.operator_namespace.as_deref(), Some(opns.as_str()));
    let uploads: Api<holdfast_api::DataUpload> = Api::namespaced(s.client.clone(), &other.name);
    assert!(
        none_listed(&uploads).await,
        "the second operator moved nothing"
    );
    drop(b1);

    // Now both watch every namespace and both have a location `primary`: each tenant Backup is
    // claimed once, the claim never changes, and it completes.
    let b2 = Operator::start(&other.name, "pair-b2", &[]);
    b2.wait_ready().await;
    // (Its own prefix: each operator keeps its own repository passwords.)
    e.apply_yaml(
        &other.name,
        &app::location_yaml("primary", &s.bucket).replace("prefix: e2e}", "prefix: e2e-b}"),
    );
    holdfast_e2e::wait_location(
        &s.client,
        &other.name,
        "primary",
        holdfast_api::location::LocationPhase::Available,
        None,
    )
    .await;
    // While the first operator is down, a Backup in its namespace waits for it: the second
    // one, which watches every namespace, leaves it alone.
    s.op.kill();
    e.apply_yaml(&opns, &backup_yaml("in-a2", &app_ns, ""));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let waiting = Api::<Backup>::namespaced(s.client.clone(), &opns)
        .get("in-a2")
        .await
        .expect("get Backup in-a2");
    assert!(
        waiting.status.is_none() && waiting.finalizers().is_empty(),
        "the second operator took up a Backup of the first one's namespace: {waiting:#?}\n{}",
        b2.logs()
    );
    s.op = Operator::start(&opns, "pair-a2", &["--leader-elect=false"]);
    s.op.wait_ready().await;
    let a2 = wait_backup(&s.client, &opns, "in-a2", Duration::from_secs(300)).await;
    let st = a2.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");
    assert_eq!(st.operator_namespace.as_deref(), Some(opns.as_str()));

    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        BTreeSet<String>,
    >::new()));
    let watch = {
        let (api, seen) = (
            Api::<Backup>::namespaced(s.client.clone(), &app_ns),
            seen.clone(),
        );
        tokio::spawn(async move {
            loop {
                if let Ok(l) = api.list(&ListParams::default()).await {
                    for b in l.items {
                        if let Some(o) = b.status.and_then(|s| s.operator_namespace) {
                            seen.lock()
                                .expect("lock")
                                .entry(b.metadata.name.unwrap_or_default())
                                .or_default()
                                .insert(o);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    for n in ["t1", "t2", "t3"] {
        e.apply_yaml(&app_ns, &backup_yaml(n, &app_ns, ""));
    }
    for n in ["t1", "t2", "t3"] {
        let b = wait_backup(&s.client, &app_ns, n, Duration::from_secs(300)).await;
        let st = b.status.clone().expect("status");
        assert_eq!(
            st.phase,
            Some(BackupPhase::Completed),
            "{n}: {st:#?}\n--- first operator:\n{}\n--- second operator:\n{}",
            s.op.logs(),
            b2.logs()
        );
        let by = st.operator_namespace.clone().expect("claimed");
        assert!(by == opns || by == other.name, "{n} claimed by {by}");
    }
    watch.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    eprintln!("claims: {seen:?}");
    for n in ["t1", "t2", "t3"] {
        assert_eq!(
            seen.get(n).map(|s| s.len()),
            Some(1),
            "{n} was claimed by one operator only: {seen:?}"
        );
    }
    delete_all(&s.client, &app_ns).await;
    delete_all(&s.client, &other.name).await;
    assert_no_leftovers(&s.client, &other.name).await;
    drop(b2);
    delete_all(&s.client, &opns).await;
    assert_no_leftovers(&s.client, &opns).await;
}

/// A persistent error reaches the status: with the repository password Secret changed to a
/// wrong value, a Backup shows `Stalled` with a reason naming the repository and the fix (and
/// a Warning Event) within 30 s, and finishes once the Secret is corrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_repository_password_stalls_then_recovers() {
    use holdfast::storage::layout::{PASSWORD_KEY, password_secret_name};
    use k8s_openapi::ByteString;
    use kube::api::{Patch, PatchParams};

    let s = setup("pw", 4, &[], Share::Together).await;
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    completed_backup(&s, "first", "").await;
    let secret = password_secret_name("primary", &app_ns);
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &opns);
    let good = secrets
        .get(&secret)
        .await
        .expect("repository Secret")
        .data
        .expect("data")[PASSWORD_KEY]
        .clone();
    let set = |v: ByteString| {
        let patch = serde_json::json!({"data": {PASSWORD_KEY: v}});
        let secrets = secrets.clone();
        let secret = secret.clone();
        async move {
            secrets
                .patch(&secret, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patch repository Secret");
        }
    };
    set(ByteString(b"not-the-password".to_vec())).await;

    env().apply_yaml(&opns, &backup_yaml("second", &app_ns, ""));
    let api: Api<Backup> = Api::namespaced(s.client.clone(), &opns);
    let stalled = wait_until(
        "backup second to show Stalled with RepositoryPasswordWrong",
        Duration::from_secs(30),
        Some(&opns),
        || async {
            let b = api.get("second").await.ok()?;
            let c = b
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Stalled")?;
            (c.status == "True" && c.reason == "RepositoryPasswordWrong").then_some(c)
        },
    )
    .await;
    assert!(
        stalled.message.contains(&app_ns) && stalled.message.contains(&secret),
        "the message names the repository and the Secret to fix: {}",
        stalled.message
    );
    let events = env().kubectl_ok([
        "get",
        "events",
        "-n",
        &opns,
        "--field-selector",
        "reason=RepositoryPasswordWrong,type=Warning",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "a Warning Event was published");

    set(good).await;
    let b = wait_backup(&s.client, &opns, "second", Duration::from_secs(300)).await;
    let st = b.status.expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        s.op.logs()
    );
    assert!(
        !st.conditions.iter().any(|c| c.type_ == "Stalled"),
        "Stalled is gone once the Secret is fixed: {:#?}",
        st.conditions
    );
    delete_all(&s.client, &opns).await;
}
