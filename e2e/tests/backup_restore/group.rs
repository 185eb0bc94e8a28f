//! Volume group snapshots on the testbed (its CSI driver cuts a group under one filesystem
//! freeze): a writer updates two claims in step, a Backup with `groupSnapshot` cuts both with
//! one VolumeGroupSnapshot, and restores from the members and from their copies give a pair
//! that existed at one instant.

use std::time::Duration;

use holdfast_api::backup::{BackupPhase, VolumePhase};
use holdfast_api::restore::RestorePhase;
use holdfast_e2e::ops::{wait_backup, wait_restore};
use holdfast_e2e::{TestNamespace, env, wait_until};

use super::{Share, assert_no_leftovers, backup_yaml, delete_all, restore_yaml, setup};

/// Claims `left` and `right` (label `app: pair`) and a pod writing the same counter into both,
/// left first, as fast as it can; each write replaces the file whole (write, then rename), so
/// that a cut never finds a half-written one.
const PAIR_APP: &str = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: left, labels: {app: pair}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {requests: {storage: 64Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: right, labels: {app: pair}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {requests: {storage: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: pair, labels: {app: pair}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "i=$(cat /left/n 2>/dev/null || echo 0); while true; do i=$((i+1)); echo $i > /left/t; mv /left/t /left/n; echo $i > /right/t; mv /right/t /right/n; done"]
    volumeMounts: [{name: left, mountPath: /left}, {name: right, mountPath: /right}]
  volumes:
  - {name: left, persistentVolumeClaim: {claimName: left}}
  - {name: right, persistentVolumeClaim: {claimName: right}}
"#;

/// Waits for Restore `name` to complete; the restored pair `(left, right)` in `ns`.
async fn restored(s: &super::Setup, opns: &str, name: &str, ns: &str) -> (u64, u64) {
    let rs = wait_restore(&s.client, opns, name).await;
    assert_eq!(
        rs.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}",
        rs.status
    );
    restored_pair(ns).await
}

/// The restored pair `(left, right)` read in namespace `ns` by a pod that does not write.
async fn restored_pair(ns: &str) -> (u64, u64) {
    let reader = r#"apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "exec sleep 100000"]
    volumeMounts: [{name: left, mountPath: /left}, {name: right, mountPath: /right}]
  volumes:
  - {name: left, persistentVolumeClaim: {claimName: left}}
  - {name: right, persistentVolumeClaim: {claimName: right}}
"#;
    env().apply_yaml(ns, reader);
    let out = wait_until(
        &format!("the restored pair in {ns}"),
        Duration::from_secs(120),
        Some(ns),
        || async move {
            let o = env().kubectl([
                "exec",
                "-n",
                ns,
                "reader",
                "--",
                "sh",
                "-c",
                "echo $(cat /left/n) $(cat /right/n)",
            ]);
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
    )
    .await;
    let n: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    assert_eq!(n.len(), 2, "{out}");
    (n[0], n[1])
}

/// Two claims written in step, cut by one VolumeGroupSnapshot: the backup's two volumes name
/// the same group and each its member snapshot; restoring from the members and from the copies
/// gives left == right or left == right + 1 (the state at one instant), and deleting the
/// backup removes the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_snapshot_restores_mutually_consistent_volumes() {
    let s = setup("grp", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    e.apply_yaml(&app_ns, PAIR_APP);
    wait_until(
        "the pair writer to run",
        Duration::from_secs(120),
        Some(&app_ns),
        || async {
            let o = env().kubectl(["exec", "-n", &app_ns, "pair", "--", "cat", "/right/n"]);
            o.status.success().then_some(())
        },
    )
    .await;
    e.apply_yaml(
        &opns,
        &backup_yaml(
            "together",
            &app_ns,
            "  volumes: {groupSnapshot: true, groupSnapshotBy: app}\n",
        ),
    );
    let b = wait_backup(&s.client, &opns, "together", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        s.op.logs()
    );
    let snap = |pvc: &str| {
        st.volumes
            .iter()
            .find(|v| v.pvc.name == pvc)
            .and_then(|v| v.snapshot.clone())
            .unwrap_or_else(|| panic!("snapshot of {pvc}: {st:#?}"))
    };
    let (l, r) = (snap("left"), snap("right"));
    assert!(l.group.is_some() && l.group == r.group, "{l:#?} {r:#?}");
    assert_ne!(l.name, r.name);
    // The sample app's claims have no `app` label: each snapshotted alone.
    assert!(snap("writer-data").group.is_none());
    let group = l.group.clone().expect("group");
    let vgs = e.kubectl_ok([
        "get",
        "volumegroupsnapshot",
        &group,
        "-n",
        &app_ns,
        "-o",
        "jsonpath={.status.readyToUse}",
    ]);
    assert_eq!(vgs.trim(), "true");
    // The temporary group label is gone from the claims.
    let labels = e.kubectl_ok([
        "get",
        "pvc",
        "left",
        "right",
        "-n",
        &app_ns,
        "-o",
        "jsonpath={.items[*].metadata.labels}",
    ]);
    assert!(!labels.contains("holdfast.dev/group-snapshot"), "{labels}");
    assert!(st.volumes.iter().all(|v| v.phase == VolumePhase::Completed));

    // From the copies, into another namespace.
    let copy = TestNamespace {
        name: format!("{app_ns}-copy"),
    };
    let only_pair = "  includedResources: [persistentvolumeclaims]\n  labelSelector: {matchLabels: {app: pair}}\n";
    e.apply_yaml(
        &opns,
        &restore_yaml(
            "pair-copy",
            &format!(
                "  source: {{backup: together}}\n  from: Copy\n  namespaceMapping: {{{app_ns}: {}}}\n{only_pair}",
                copy.name
            ),
        ),
    );
    let (left, right) = restored(&s, &opns, "pair-copy", &copy.name).await;
    assert!(
        left == right || left == right + 1,
        "restored from the copies: left {left}, right {right} are not one instant's state"
    );
    assert!(left > 0, "the writer had written");
    drop(copy);
    // From the member snapshots (in their own namespace, so the claims go first).
    e.kubectl_ok(["delete", "pod", "pair", "-n", &app_ns, "--wait=true"]);
    e.kubectl_ok([
        "delete",
        "pvc",
        "left",
        "right",
        "-n",
        &app_ns,
        "--wait=true",
    ]);
    e.apply_yaml(
        &opns,
        &restore_yaml(
            "pair-snapshot",
            &format!("  source: {{backup: together}}\n  from: Snapshot\n{only_pair}"),
        ),
    );
    let (l2, r2) = restored(&s, &opns, "pair-snapshot", &app_ns).await;
    assert_eq!(
        (l2, r2),
        (left, right),
        "the members and the copies hold the same cut"
    );
    // Deleting the backup removes the group and its members.
    e.kubectl_ok([
        "delete",
        "backup",
        "together",
        "-n",
        &opns,
        "--wait=true",
        "--timeout=120s",
    ]);
    // (A finished Backup goes at once; its data is removed after: controller::departed.)
    wait_until(
        "the group and its members to be removed",
        Duration::from_secs(120),
        Some(&app_ns),
        || async {
            let left = env().kubectl_ok([
                "get",
                "volumegroupsnapshots,volumesnapshots",
                "-n",
                &app_ns,
                "-o",
                "name",
            ]);
            left.trim().is_empty().then_some(())
        },
    )
    .await;
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}
