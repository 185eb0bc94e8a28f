//! Losing the cluster (issue 15, items 3 and 4): the operator namespace with its Backups and
//! every repository Secret, and the application namespace, are deleted. A new operator in a
//! new namespace gets only the location (ReadOnly) and a Secret holding the passphrase the
//! user exported: the backup appears as a synced Backup, a Restore brings the namespace back
//! byte for byte onto another StorageClass, and nothing is written to the bucket meanwhile.
//! A backup removed from the bucket disappears; a synced Backup deleted with `Retain` keeps
//! its data (and is synced again).
//!
//! One testbed has one API server: "a new cluster" is a new operator, namespace and
//! location on the same one, with nothing of the first left but the bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast::controller::location::sync::SYNCED_LABEL;
use holdfast::storage::catalog::{ORIGIN_UID, TAG_BACKUP};
use holdfast::storage::layout::CATALOG;
use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::restore::RestorePhase;
use holdfast_e2e::operator::Operator;
use holdfast_e2e::{TestNamespace, wait_until};
use holdfast_store::Store;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::{Share, app, checksums, completed_backup, env, restore_yaml, setup, wait_restore};

/// Every key in the bucket with its size.
async fn bucket_state(bucket: &str) -> BTreeMap<String, u64> {
    app::s3_store(bucket)
        .await
        .list("")
        .await
        .expect("list the bucket")
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect()
}

async fn synced(client: &kube::Client, ns: &str, name: &str) -> Option<Backup> {
    let b = Api::<Backup>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    b.status.as_ref()?.phase?;
    Some(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_finds_the_backups_and_restores_a_namespace() {
    let mut s = setup("dr", 2, &[], Share::Together).await;
    let e = env();
    let (app_ns, old_opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let b = completed_backup(&s, "dr1", "").await;
    let origin = b.metadata.uid.clone().expect("uid");
    let before = checksums(&app_ns);
    let passphrase = {
        let sec = Api::<Secret>::namespaced(s.client.clone(), &old_opns)
            .get("holdfast-passphrase-primary")
            .await
            .expect("generated passphrase Secret");
        String::from_utf8(sec.data.expect("data")["passphrase"].0.clone()).expect("utf-8")
    };

    // The cluster is lost: operator, its namespace (Backups, repository Secrets), the app.
    s.op.kill();
    s.opns.delete_and_wait(&s.client).await;
    s.app_ns.delete_and_wait(&s.client).await;
    let untouched = bucket_state(&s.bucket).await;

    // A new operator with only the location and the exported passphrase.
    let opns = TestNamespace::new(&s.client, "dr-new").await;
    let alt = format!("hf-alt-{}", holdfast_e2e::random_suffix());
    e.apply_yaml("default", &format!("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {alt}}}\nprovisioner: hostpath.csi.k8s.io\nreclaimPolicy: Delete\nvolumeBindingMode: Immediate\n"));
    let watch = format!("--watch-namespaces={app_ns}");
    let op = Operator::start(&opns.name, "dr-new-0", &[&watch, "--max-movers-per-node=0"]);
    op.wait_ready().await;
    e.apply_yaml(
        &opns.name,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: my-key}}\nstringData: {{passphrase: \"{passphrase}\"}}\n"
        ),
    );
    e.apply_yaml(
        &opns.name,
        &format!(
            "{}  accessMode: ReadOnly\n  syncInterval: 5s\n  encryption: {{passphraseSecretRef: {{name: my-key, key: passphrase}}}}\n",
            app::location_yaml("primary", &s.bucket)
        ),
    );
    // The operator namespace of the first cluster is gone here: the record comes to this
    // one as <namespace>.<name>.
    let name = format!("{old_opns}.dr1");
    let found = wait_until(
        &format!("Backup {name} to be synced from the location"),
        Duration::from_secs(120),
        Some(&opns.name),
        || synced(&s.client, &opns.name, &name),
    )
    .await;
    let st = found.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");
    assert_eq!(
        found.labels().get(SYNCED_LABEL).map(String::as_str),
        Some("true")
    );
    assert_eq!(found.annotations().get(ORIGIN_UID), Some(&origin));
    let from = st.synced.as_ref().expect("status.synced");
    assert_eq!(
        (from.location.as_str(), from.origin_uid.as_str()),
        ("primary", origin.as_str())
    );
    assert_eq!(st.namespaces, vec![app_ns.clone()]);
    assert_eq!(
        st.volumes.len(),
        b.status.as_ref().expect("status").volumes.len()
    );

    // Restore the namespace from it, onto another StorageClass.
    e.apply_yaml(
        &opns.name,
        &restore_yaml(
            "back",
            &format!(
                "  source: {{backup: \"{name}\"}}\n  storageClassMapping: {{standard: {alt}}}\n"
            ),
        ),
    );
    let r = wait_restore(&s.client, &opns.name, "back").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}\n{}",
        r.status,
        op.logs()
    );
    for pvc in ["writer-data", "data-web-0"] {
        let sc = e.kubectl_ok([
            "get",
            "pvc",
            pvc,
            "-n",
            &app_ns,
            "-o",
            "jsonpath={.spec.storageClassName}",
        ]);
        assert_eq!(sc.trim(), alt, "claim {pvc} restored onto the mapped class");
    }
    for w in app::WORKLOADS {
        app::wait_seeded(&app_ns, w).await;
    }
    assert_eq!(
        checksums(&app_ns),
        before,
        "the restored namespace holds the backed-up data"
    );
    // A ReadOnly location is never written to: not by sync, not by the restore.
    assert_eq!(
        bucket_state(&s.bucket).await,
        untouched,
        "the bucket changed"
    );

    // Deleted with Retain: the data stays, so the backup is synced again.
    let uid_before = found.metadata.uid.clone();
    e.kubectl_ok([
        "patch",
        "backup",
        &name,
        "-n",
        &opns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"deletionPolicy":"Retain"}}"#,
    ]);
    e.kubectl_ok([
        "delete",
        "backup",
        &name,
        "-n",
        &opns.name,
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_until(
        "the Backup deleted with Retain to be synced again",
        Duration::from_secs(60),
        Some(&opns.name),
        || async {
            let b = synced(&s.client, &opns.name, &name).await?;
            (b.metadata.uid != uid_before).then_some(())
        },
    )
    .await;

    // Removed from the bucket (by the stock restic, with the passphrase): it disappears.
    let listed = app::restic(
        &s.bucket,
        CATALOG,
        &passphrase,
        &["snapshots", "--json", "--no-lock", "--tag", TAG_BACKUP],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let snaps: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    let id = snaps
        .as_array()
        .and_then(|a| a.first())
        .and_then(|v| v["id"].as_str())
        .expect("a record")
        .to_string();
    let out = app::restic(&s.bucket, CATALOG, &passphrase, &["forget", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the synced Backup whose record left the bucket to go",
        Duration::from_secs(60),
        Some(&opns.name),
        || async {
            Api::<Backup>::namespaced(s.client.clone(), &opns.name)
                .get_opt(&name)
                .await
                .ok()
                .and_then(|b| b.is_none().then_some(()))
        },
    )
    .await;
    e.kubectl(["delete", "storageclass", &alt]);
    e.kubectl(["delete", "namespace", &app_ns, "--wait=false"]);
    drop(op);
    drop(opns);
}
