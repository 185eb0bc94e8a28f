//! Repository maintenance on the testbed: a deleted backup's data comes back as bucket space
//! after prune (two runs: mark, then delete after the grace period), the stock `restic` still
//! checks the repository clean, and a check with a read sample passes.

use std::time::Duration;

use holdfast::storage::repository::object_name;
use holdfast_api::repository::BackupRepository;
use holdfast_e2e::{env, wait_until};
use kube::api::Api;

use super::{Setup, Share, app, completed_backup, repo_password, setup};

/// Bytes stored under the repository of the setup's application namespace.
async fn repository_bytes(s: &Setup) -> u64 {
    use holdfast_store::Store;
    let bsl = app::location("primary", &s.bucket);
    let prefix = format!(
        "{}/",
        holdfast::storage::layout::repository_prefix(&bsl, &s.app_ns.name)
    );
    app::s3_store(&s.bucket)
        .await
        .list(&prefix)
        .await
        .expect("list")
        .iter()
        .map(|o| o.size)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_reclaims_a_deleted_backups_space_and_check_passes() {
    let s = setup("maint", 4, &[], Share::Together).await;
    let e = env();
    let (opns, app_ns) = (s.opns.name.clone(), s.app_ns.name.clone());
    completed_backup(&s, "b1", "").await;
    let repos: Api<BackupRepository> = Api::namespaced(s.client.clone(), &opns);
    let name = object_name("primary", &app_ns);
    let repo = repos
        .get(&name)
        .await
        .expect("the operator recorded the repository");
    assert_eq!(repo.spec.source_namespace, app_ns);
    // 8 MiB only the second backup holds.
    app::sh(
        &app_ns,
        "deploy/writer",
        "head -c 8M /dev/urandom > /data/dir/only-in-b2.bin",
    );
    completed_backup(&s, "b2", "").await;
    app::sh(&app_ns, "deploy/writer", "rm /data/dir/only-in-b2.bin");
    e.kubectl_ok([
        "patch",
        "backuprepository",
        &name,
        "-n",
        &opns,
        "--type=merge",
        "-p",
        r#"{"spec":{"maintenance":{"pruneGrace":"0s","pruneAfterDeletion":"0s","checkEvery":"1m","checkReadPercent":100}}}"#,
    ]);
    let before = repository_bytes(&s).await;
    e.kubectl_ok([
        "delete",
        "backup",
        "b2",
        "-n",
        &opns,
        "--wait=true",
        "--timeout=120s",
    ]);
    let st = wait_until(
        "prune to reclaim the deleted backup's data",
        Duration::from_secs(240),
        Some(&opns),
        || async {
            let st = repos.get(&name).await.ok()?.status?;
            (st.bytes_reclaimed_total >= 7 << 20).then_some(st)
        },
    )
    .await;
    let after = repository_bytes(&s).await;
    eprintln!(
        "repository bytes: {before} before deleting b2, {after} after prune ({} reclaimed by prune)",
        st.bytes_reclaimed_total
    );
    assert!(
        before.saturating_sub(after) >= 7 << 20,
        "the bucket shrank by the deleted data: {before} -> {after}"
    );
    let p = st.last_prune.clone().expect("last prune");
    assert!(p.packs_deleted > 0 && p.snapshots == 2, "{p:#?}");
    let metric =
        s.op.metric("holdfast_repository_bytes_reclaimed_total")
            .unwrap_or(0.0);
    assert!(metric >= f64::from(7u32 << 20), "metric {metric}");
    // The stock restic agrees nothing needed was removed (without its lock: a check of ours
    // may run at the same time).
    let password = repo_password(&s.client, &opns, &app_ns).await;
    let out = app::restic(
        &s.bucket,
        &app_ns,
        &password,
        &["check", "--read-data", "--no-lock"],
    );
    assert!(
        out.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check cadence: a check that read all the data passed.
    let c = wait_until(
        "a check to pass",
        Duration::from_secs(180),
        Some(&opns),
        || async {
            let st = repos.get(&name).await.ok()?.status?;
            st.last_check.filter(|c| c.result == "Passed")
        },
    )
    .await;
    assert_eq!((c.read_percent, c.errors), (100, 0));
    let table = e.kubectl_ok(["get", "hfrepo", "-n", &opns]);
    assert!(
        table.contains("RECLAIMED") && table.contains(&name),
        "{table}"
    );
    super::delete_all(&s.client, &opns).await;
}
