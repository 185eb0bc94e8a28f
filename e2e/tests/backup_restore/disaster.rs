//! Losing the cluster (issue 15, items 3 and 4). Cluster A — a second testbed, its own etcd,
//! API server, controllers, CSI stack and node — backs up a namespace into a bucket of the
//! first testbed's S3 server, and is then destroyed completely (processes, etcd's data,
//! volumes). Cluster B, the first testbed, gets only the location (ReadOnly) and a Secret
//! with the passphrase the user exported from A:
//! - before the Secret is there, the location is Unavailable (`PassphraseMissing`, naming
//!   the Secret) and nothing is written;
//! - then the backup appears as a synced Backup within the sync interval, a Restore brings
//!   the namespace back byte for byte onto another StorageClass, a Backup to the ReadOnly
//!   location is refused, and the bucket is exactly as A left it;
//! - a synced Backup deleted with `Retain` keeps its data (and is synced again); a backup
//!   removed from the bucket disappears.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast::controller::location::sync::SYNCED_LABEL;
use holdfast::storage::catalog::{ORIGIN_UID, TAG_BACKUP};
use holdfast::storage::layout::CATALOG;
use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::location::LocationPhase;
use holdfast_api::restore::RestorePhase;
use holdfast_e2e::operator::Operator;
use holdfast_e2e::ops::wait_backup;
use holdfast_e2e::second::SecondTestbed;
use holdfast_e2e::{TestNamespace, ensure_crds, ensure_crds_on, wait_location, wait_until};
use holdfast_store::Store;
use kube::ResourceExt;
use kube::api::Api;

use super::{Share, app, backup_yaml, checksums, env, restore_yaml, turn, wait_restore};

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
    let _turn = turn(Share::Together).await;
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let bucket = format!("hf-dr-{}", holdfast_e2e::random_suffix());
    app::make_bucket(&bucket).await;

    // Cluster A backs up a namespace.
    let mut a = SecondTestbed::up("dr-a");
    ensure_crds_on(&a.env);
    let ca = a.env.client().await;
    let suffix = holdfast_e2e::random_suffix();
    let (old_opns, app_ns) = (format!("hf-dra-op-{suffix}"), format!("hf-dr-app-{suffix}"));
    for ns in [&old_opns, &app_ns] {
        a.env.kubectl_ok(["create", "namespace", ns.as_str()]);
    }
    let watch = format!("--watch-namespaces={app_ns}");
    let op_a = Operator::start_on(
        &a.env,
        &old_opns,
        "dr-a-0",
        &[&watch, "--max-movers-per-node=0"],
    );
    op_a.wait_ready().await;
    // The location's endpoint is the first testbed's S3 server (app::location_yaml).
    a.env
        .apply_yaml(&old_opns, &app::location_yaml("primary", &bucket));
    app::deploy_seeded_on(&a.env, &app_ns, 2).await;
    wait_location(&ca, &old_opns, "primary", LocationPhase::Available, None).await;
    a.env
        .apply_yaml(&old_opns, &backup_yaml("dr1", &app_ns, ""));
    let b = wait_backup(&ca, &old_opns, "dr1", Duration::from_secs(300)).await;
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed),
        "{:#?}\n{}",
        b.status,
        op_a.logs()
    );
    let origin = b.metadata.uid.clone().expect("uid");
    let before: Vec<String> = app::WORKLOADS
        .iter()
        .map(|w| app::volume_checksums_on(&a.env, &app_ns, w))
        .collect();
    let passphrase =
        holdfast_e2e::secret_value(&ca, &old_opns, "holdfast-passphrase-primary", "passphrase")
            .await;

    // Cluster A is destroyed completely: only the bucket is left.
    drop(op_a);
    drop(ca);
    a.destroy();
    let untouched = bucket_state(&bucket).await;

    // Cluster B: a new operator, the location, later the passphrase.
    let opns = TestNamespace::new(&client, "dr-b").await;
    let alt = format!("hf-alt-{}", holdfast_e2e::random_suffix());
    e.apply_yaml("default", &format!("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {alt}}}\nprovisioner: hostpath.csi.k8s.io\nreclaimPolicy: Delete\nvolumeBindingMode: Immediate\n"));
    let watch = format!("--watch-namespaces={app_ns}");
    let op = Operator::start(&opns.name, "dr-new-0", &[&watch, "--max-movers-per-node=0"]);
    op.wait_ready().await;
    e.apply_yaml(
        &opns.name,
        &format!(
            "{}  accessMode: ReadOnly\n  syncInterval: 5s\n  encryption: {{passphraseSecretRef: {{name: my-key, key: passphrase}}}}\n",
            app::location_yaml("primary", &bucket)
        ),
    );
    // Without the key: unusable, saying which Secret is missing, and nothing written.
    let l = wait_location(
        &client,
        &opns.name,
        "primary",
        LocationPhase::Unavailable,
        Some(Some("PassphraseMissing")),
    )
    .await;
    let why = l.status.and_then(|s| s.message).unwrap_or_default();
    assert!(why.contains("my-key"), "{why}");
    assert_eq!(bucket_state(&bucket).await, untouched, "the bucket changed");
    e.apply_yaml(
        &opns.name,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: my-key}}\nstringData: {{passphrase: \"{passphrase}\"}}\n"
        ),
    );
    // The operator namespace of the first cluster is gone here: the record comes to this
    // one as <namespace>.<name>.
    let name = format!("{old_opns}.dr1");
    let found = wait_until(
        &format!("Backup {name} to be synced from the location"),
        Duration::from_secs(120),
        Some(&opns.name),
        || synced(&client, &opns.name, &name),
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
    let r = wait_restore(&client, &opns.name, "back").await;
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
    // A ReadOnly location is never written to: not by sync, not by the restore, not by a
    // Backup, which is refused.
    e.apply_yaml(
        &opns.name,
        &backup_yaml("refused", &app_ns, "  storageLocation: primary\n"),
    );
    let refused = wait_backup(&client, &opns.name, "refused", Duration::from_secs(60)).await;
    let rst = refused.status.expect("status");
    assert_eq!(
        (rst.phase, rst.reason.as_deref()),
        (Some(BackupPhase::Failed), Some("LocationReadOnly")),
        "{:?}",
        rst.message
    );
    assert_eq!(bucket_state(&bucket).await, untouched, "the bucket changed");

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
            let b = synced(&client, &opns.name, &name).await?;
            (b.metadata.uid != uid_before).then_some(())
        },
    )
    .await;

    // Removed from the bucket (by the stock restic, with the passphrase): it disappears.
    let listed = app::restic(
        &bucket,
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
    let out = app::restic(&bucket, CATALOG, &passphrase, &["forget", &id]);
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
            Api::<Backup>::namespaced(client.clone(), &opns.name)
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
