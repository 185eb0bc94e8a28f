//! A mover killed during a backup (kill -9 of its process, as the OOM killer or a node's loss
//! would end it) is started again with backoff, and the new attempt takes over the packs the
//! killed one stored; with no retries left, the volume fails with the cause. The helpers here
//! also serve `faults.rs`, whose `mover_killed_twice_uploads_under_1_2x` is the retried and
//! resumed backup (it replaced this file's test with fixed kill points: random points, and the
//! bytes uploaded counted on the wire as well as the packs stored).

use std::time::Duration;

use holdfast_api::backup::BackupPhase;
use holdfast_api::transfer::DataUpload;
use holdfast_e2e::ops::wait_backup;
use holdfast_e2e::{env, wait_until};
use kube::api::{Api, ListParams};

use super::{Share, app, assert_no_leftovers, backup_yaml, delete_all, setup};

pub(super) const BIG_MIB: u64 = 200;

/// Claim `big` written with `BIG_MIB` MiB of random data by pod `big`.
pub(super) fn big_app() -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: big}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {{requests: {{storage: 512Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: big}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "head -c {BIG_MIB}M /dev/urandom > /data/blob && touch /data/.seeded; exec sleep 100000"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: big}}}}
"#
    )
}

/// The pids of the mover process of upload `du` (its `holdfast mover … --journal <du>`; the
/// node agent's runner may fork, and a fork keeps the command line).
pub(super) fn mover_pids(du: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args.get(1).is_some_and(|a| a == "mover")
            && args.windows(2).any(|w| w[0] == "--journal" && w[1] == du);
        if ours {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Bytes of pack files in the repository of namespace `ns`.
pub(super) async fn pack_bytes(
    bucket: &str,
    bsl: &holdfast_api::BackupStorageLocation,
    ns: &str,
) -> u64 {
    let prefix = format!(
        "{}/data/",
        holdfast::storage::layout::repository_prefix(bsl, ns)
    );
    let store = app::s3_store(bucket).await;
    holdfast_store::Store::list(&store, &prefix)
        .await
        .unwrap_or_default()
        .iter()
        .map(|o| o.size)
        .sum()
}

/// The upload of claim `big` of the setup's Backup `backup` (its name).
async fn big_upload(s: &super::Setup) -> String {
    let uploads: Api<DataUpload> = Api::namespaced(s.client.clone(), &s.opns.name);
    wait_until(
        "the upload of claim big",
        Duration::from_secs(120),
        Some(&s.opns.name),
        || async {
            let list = uploads.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|d| d.spec.pvc.name == "big")
                .and_then(|d| d.metadata.name)
        },
    )
    .await
}

/// Kills every process of the mover of upload `du` (none of `seen`) once the repository holds
/// `share` bytes of packs; returns their pids.
pub(super) async fn kill_mover_at(
    s: &super::Setup,
    du: &str,
    share: u64,
    seen: &[u32],
) -> Vec<u32> {
    try_kill_mover_at(s, du, share, seen)
        .await
        .expect("the mover ended before the kill")
}

/// [`kill_mover_at`], `None` when the mover ended before the kill landed (it stored the rest
/// between the last look at the repository and the signal).
pub(super) async fn try_kill_mover_at(
    s: &super::Setup,
    du: &str,
    share: u64,
    seen: &[u32],
) -> Option<Vec<u32>> {
    let (opns, app_ns) = (&s.opns.name, &s.app_ns.name);
    let bsl = app::location("primary", &s.bucket);
    let found = wait_until(
        "a new mover process to run",
        Duration::from_secs(180),
        Some(opns),
        || async {
            let p = mover_pids(du);
            (!p.is_empty() && !p.iter().any(|x| seen.contains(x))).then_some(p)
        },
    )
    .await;
    wait_until(
        &format!("the mover to store {share} bytes"),
        Duration::from_secs(180),
        Some(opns),
        || async { (pack_bytes(&s.bucket, &bsl, app_ns).await >= share).then_some(()) },
    )
    .await;
    let mut args = vec!["-9".to_string()];
    args.extend(found.iter().map(u32::to_string));
    let killed = std::process::Command::new("kill")
        .args(&args)
        .status()
        .expect("kill");
    killed.success().then_some(found)
}

/// Lock and journal objects left in the repository of the setup's application namespace.
pub(super) async fn leftovers(s: &super::Setup) -> Vec<String> {
    let bsl = app::location("primary", &s.bucket);
    let store = app::s3_store(&s.bucket).await;
    let repo = holdfast::storage::layout::repository_prefix(&bsl, &s.app_ns.name);
    let mut out = Vec::new();
    for dir in ["locks/", "holdfast/journal/"] {
        out.extend(
            holdfast_store::Store::list(&store, &format!("{repo}/{dir}"))
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.key),
        );
    }
    out
}

/// With no retries left, a killed mover fails its volume with the cause, and the operator
/// removes the lock it left, so maintenance is not held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mover_without_retries_fails_with_the_cause_and_leaves_no_lock() {
    let s = setup("rtn", 1, &["--mover-retries=0"], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    e.apply_yaml(&app_ns, &big_app());
    app::wait_seeded(&app_ns, "pod/big").await;
    e.apply_yaml(&opns, &backup_yaml("once", &app_ns, ""));
    let du = big_upload(&s).await;
    kill_mover_at(&s, &du, (BIG_MIB << 20) / 3, &[]).await;
    let b = wait_backup(&s.client, &opns, "once", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed), "{st:#?}");
    let v = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "big")
        .expect("big");
    assert_eq!(v.reason.as_deref(), Some("MoverFailed"), "{v:#?}");
    let m = v.message.clone().unwrap_or_default();
    assert!(
        m.contains("signal 9") && m.contains("gave up after 1 attempts"),
        "{m}"
    );
    let left: Vec<String> = leftovers(&s)
        .await
        .into_iter()
        .filter(|k| k.contains("/locks/"))
        .collect();
    assert!(left.is_empty(), "locks left: {left:?}");
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}
