//! Backup and restore of a namespace end to end on the testbed: real CSI snapshots, mover pods
//! writing a restic-format repository into MinIO, the namespace deleted and brought back.

use std::collections::BTreeSet;
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, VolumePhase};
use holdfast_api::restore::{Restore, RestorePhase};
use holdfast_e2e::app::{self, WORKLOADS};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams};

async fn wait_backup(client: &Client, ns: &str, name: &str, timeout: Duration) -> Backup {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("backup {name} to finish"),
        timeout,
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let b = api.get(name).await.ok()?;
                b.status.as_ref()?.phase.filter(|p| p.is_terminal())?;
                Some(b)
            }
        },
    )
    .await
}

async fn wait_restore(client: &Client, ns: &str, name: &str) -> Restore {
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("restore {name} to finish"),
        Duration::from_secs(300),
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.ok()?;
                let p = r.status.as_ref()?.phase?;
                matches!(
                    p,
                    RestorePhase::Completed
                        | RestorePhase::PartiallyFailed
                        | RestorePhase::Failed
                        | RestorePhase::Cancelled
                )
                .then_some(r)
            }
        },
    )
    .await
}

/// Nothing temporary is left in the operator namespace or the cluster.
async fn assert_no_leftovers(client: &Client, opns: &str) {
    let lp = ListParams::default().labels("holdfast.dev/transfer");
    wait_until(
        "temporary objects to be gone",
        Duration::from_secs(60),
        Some(opns),
        || async {
            let pods: Api<Pod> = Api::namespaced(client.clone(), opns);
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), opns);
            let vs = env().kubectl_ok(["get", "volumesnapshots", "-n", opns, "-o", "name"]);
            let vsc = env().kubectl_ok([
                "get",
                "volumesnapshotcontents",
                "-l",
                "holdfast.dev/transfer",
                "-o",
                "name",
            ]);
            let p = pods.list(&lp).await.ok()?.items.len();
            let c = pvcs.list(&lp).await.ok()?.items.len();
            (p == 0 && c == 0 && vs.trim().is_empty() && vsc.trim().is_empty()).then_some(())
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
        .list(&ListParams::default().labels(&format!("holdfast.dev/repository-namespace={app_ns}")))
        .await
        .expect("list repository secrets");
    let s = list.items.first().expect("repository password Secret");
    String::from_utf8(s.data.as_ref().expect("data")["password"].0.clone()).expect("utf8")
}

#[tokio::test]
async fn namespace_backed_up_deleted_and_restored_byte_for_byte() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "br-op").await;
    let app_ns = TestNamespace::new(&client, "br-app").await;
    let bucket = format!("hf-br-{}", holdfast_e2e::random_suffix());
    app::make_bucket(&bucket).await;
    let op = Operator::start(&opns.name, "br-0", &[]);
    op.wait_ready().await;
    e.apply_yaml(&opns.name, &app::location_yaml("primary", &bucket));
    e.apply_yaml(&app_ns.name, &app::sample_app_yaml(48));
    for w in WORKLOADS {
        app::wait_seeded(&app_ns.name, w).await;
    }
    let before: Vec<String> = WORKLOADS
        .iter()
        .map(|w| app::volume_checksums(&app_ns.name, w))
        .collect();
    holdfast_e2e::wait_location(
        &client,
        &opns.name,
        "primary",
        holdfast_api::location::LocationPhase::Available,
        None,
    )
    .await;

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
    assert_no_leftovers(&client, &opns.name).await;

    // The stock restic CLI reads the repository.
    let password = repo_password(&client, &opns.name, &app_ns.name).await;
    let snaps = app::restic_snapshots(&bucket, &app_ns.name, &password);
    assert_eq!(snaps.as_array().map(Vec::len), Some(2), "{snaps}");

    // The namespace goes; the restore brings everything back.
    app_ns.delete_and_wait(&client).await;
    e.apply_yaml(&opns.name, "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {name: back}\nspec:\n  source: {backup: full}\n");
    let r = wait_restore(&client, &opns.name, "back").await;
    let rst = r.status.clone().expect("status");
    assert_eq!(
        rst.phase,
        Some(RestorePhase::Completed),
        "{rst:#?}\n{}",
        op.logs()
    );
    assert_eq!(rst.volumes.len(), 2);
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
    assert_no_leftovers(&client, &opns.name).await;
}
