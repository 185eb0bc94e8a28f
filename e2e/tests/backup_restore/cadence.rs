//! Schedules on the testbed: runs on real cadences (per minute), SLA policies with separate
//! snapshot and copy cadences, retention removing VolumeSnapshots and repository snapshots,
//! pause and resume, a missed run across an operator restart, the brake, and deletion.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::restore::RestorePhase;
use holdfast_api::schedule::{
    CADENCE_LABEL, SCHEDULE_LABEL, SCHEDULED_TIME, SNAPSHOTS_DROPPED, Schedule, SchedulePhase,
};
use holdfast_e2e::{TestNamespace, env, wait_until};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{Setup, Share, app, repo_password, setup, snapshots_of, wait_restore};

/// Every Backup of schedule `name`, those being deleted too.
async fn all_runs(client: &Client, ns: &str, name: &str) -> Vec<Backup> {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}"));
    api.list(&lp).await.expect("list backups").items
}

/// The Backups of schedule `name` not being deleted, by name.
async fn runs(client: &Client, ns: &str, name: &str) -> BTreeMap<String, Backup> {
    all_runs(client, ns, name)
        .await
        .into_iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .map(|b| (b.name_any(), b))
        .collect()
}

fn phase(b: &Backup) -> Option<BackupPhase> {
    b.status.as_ref()?.phase
}

fn finished(b: &Backup) -> bool {
    phase(b).is_some_and(BackupPhase::is_terminal)
}

fn cadence(b: &Backup) -> &str {
    b.labels().get(CADENCE_LABEL).map_or("", String::as_str)
}

fn dropped(b: &Backup) -> bool {
    b.annotations().contains_key(SNAPSHOTS_DROPPED)
}

fn scheduled(b: &Backup) -> Timestamp {
    b.annotations()[SCHEDULED_TIME]
        .parse()
        .expect("scheduled time")
}

async fn schedule(client: &Client, ns: &str, name: &str) -> Schedule {
    Api::<Schedule>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get schedule")
}

fn patch_schedule(ns: &str, name: &str, patch: &str) {
    env().kubectl_ok([
        "patch",
        "schedule",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        patch,
    ]);
}

/// Waits until the schedule runs and deletes nothing and a pass after that has looked at it:
/// every run finished, none being deleted, and the status lists none as active.
async fn settled(s: &Setup, name: &str) -> BTreeMap<String, Backup> {
    let opns = s.opns.name.clone();
    wait_until(
        &format!("schedule {name} to settle"),
        Duration::from_secs(240),
        Some(&opns),
        || async {
            let all = all_runs(&s.client, &opns, name).await;
            let sch = schedule(&s.client, &opns, name).await;
            let st = sch.status?;
            let seen = st.observed_generation == sch.metadata.generation;
            let quiet = seen
                && all
                    .iter()
                    .all(|b| finished(b) && b.metadata.deletion_timestamp.is_none());
            (quiet && st.active.is_empty() && st.retention_held.is_none())
                .then(|| all.into_iter().map(|b| (b.name_any(), b)).collect())
        },
    )
    .await
}

/// An SLA policy's two cadences: snapshots every minute (the newest kept), copies every two
/// minutes (the newest 2 kept). Retention removes the VolumeSnapshots of expired points and of
/// points kept only for their copy, and the repository snapshots of expired copies; a Restore
/// of "the schedule at T" takes the newest point at or before T (from its copy when its
/// snapshots are gone); deleting the Schedule leaves its Backups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_policy_snapshots_and_copies_expire_on_their_own_cadences() {
    let s = setup("sla", 4, &[], Share::Together).await;
    let e = env();
    let (opns, app_ns) = (s.opns.name.clone(), s.app_ns.name.clone());
    let policy = format!("e2e-{}", holdfast_e2e::random_suffix());
    e.apply_yaml(
        &opns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: SLAPolicy\nmetadata: {{name: {policy}}}\nspec:\n  snapshots: {{every: 1m, keep: {{last: 1}}}}\n  copies: {{schedule: \"*/2 * * * *\", keep: {{last: 2}}}}\n"
        ),
    );
    e.apply_yaml(
        &opns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata: {{name: sla, labels: {{own: label}}}}\nspec:\n  policy: {policy}\n  template:\n    metadata: {{labels: {{team: shop}}}}\n    spec: {{includedNamespaces: [{app_ns}]}}\n"
        ),
    );
    // Every Backup ever seen, to check the expired ones afterwards.
    let mut seen: BTreeMap<String, Backup> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let now = runs(&s.client, &opns, "sla").await;
        seen.extend(now.iter().map(|(n, b)| (n.clone(), b.clone())));
        let copies: Vec<&Backup> = seen.values().filter(|b| cadence(b) == "both").collect();
        let snaps = seen.values().filter(|b| cadence(b) == "snapshot").count();
        let copy_expired = copies.iter().any(|b| !now.contains_key(&b.name_any()));
        let dropped = now.values().any(dropped);
        if copies.len() >= 3 && copy_expired && snaps >= 2 && dropped {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for three copy runs (the oldest expired, one kept only for its copy) and two snapshot runs; seen {:?}\n{}",
            seen.keys().collect::<Vec<_>>(),
            holdfast_e2e::dump_namespace(&opns)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let st = schedule(&s.client, &opns, "sla")
        .await
        .status
        .expect("status");
    assert!(
        st.next_run_time.is_some() && st.next_copy_time.is_some(),
        "{st:#?}"
    );
    assert_eq!(st.phase, Some(SchedulePhase::Active));
    patch_schedule(&opns, "sla", r#"{"spec":{"paused":true}}"#);
    let left = settled(&s, "sla").await;
    for b in left.values() {
        assert_eq!(phase(b), Some(BackupPhase::Completed), "{b:#?}");
        let labels = b.labels();
        assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
        assert!(
            !labels.contains_key("own"),
            "the schedule's own labels are not copied"
        );
        assert!(b.metadata.owner_references.is_none());
    }
    // Snapshot retention keeps the newest point; copy retention the two newest copies, whose
    // snapshots go unless snapshot retention keeps them too.
    let mut newest_first: Vec<&Backup> = left.values().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(scheduled(b)));
    let newest = newest_first[0].name_any();
    let copies: Vec<String> = newest_first
        .iter()
        .filter(|b| cadence(b) == "both")
        .map(|b| b.name_any())
        .collect();
    assert_eq!(copies.len(), 2, "two copy points survive: {copies:?}");
    let mut expected: Vec<String> = copies.clone();
    expected.push(newest.clone());
    expected.sort();
    expected.dedup();
    let names: Vec<String> = left.keys().cloned().collect();
    assert_eq!(names, expected, "surviving points");
    for b in left.values() {
        let n = snapshots_of(b).lines().count();
        if b.name_any() == newest {
            // Its copies' exposed snapshots (operator namespace, same labels) are removed
            // just after the DataUploads complete, which may be after the Backup does.
            wait_until(
                &format!("the newest point {newest} to keep exactly its 2 snapshots"),
                Duration::from_secs(120),
                Some(&opns),
                || async { (snapshots_of(b).lines().count() == 2).then_some(()) },
            )
            .await;
            assert!(!dropped(b));
        } else {
            assert_eq!(n, 0, "{} is kept for its copy only", b.name_any());
            assert!(dropped(b), "{} is marked", b.name_any());
        }
    }
    // Expired points lose their VolumeSnapshots, and the repository keeps only the surviving
    // copies. A finished Backup has no finalizer: its object goes at once and its data just
    // after (controller::departed), so both are waited for.
    for b in seen.values().filter(|b| !left.contains_key(&b.name_any())) {
        wait_until(
            &format!("expired {} to lose its snapshots", b.name_any()),
            Duration::from_secs(120),
            Some(&opns),
            || async { snapshots_of(b).trim().is_empty().then_some(()) },
        )
        .await;
    }
    let password = repo_password(&s.client, &opns, &app_ns).await;
    let tags: Vec<String> = wait_until(
        "the repository to hold only the two surviving copy points",
        Duration::from_secs(120),
        Some(&opns),
        || async {
            let restic = app::restic_snapshots(&s.bucket, &app_ns, &password);
            let tags: Vec<String> = restic
                .as_array()
                .expect("snapshots")
                .iter()
                .map(|v| v["tags"].to_string())
                .collect();
            (tags.len() == 4).then_some(tags)
        },
    )
    .await;
    for c in &copies {
        assert_eq!(
            tags.iter().filter(|t| t.contains(c.as_str())).count(),
            2,
            "{tags:?} vs {c}"
        );
    }
    let expired = st.expired_points;
    assert!(expired >= 2, "{st:#?}");
    // The claim's restore points, as `kubectl holdfast restore-points` lists them.
    let out = std::process::Command::new(holdfast_e2e::operator::holdfast_bin())
        .args(["restore-points", "pvc/writer-data", "-n", &app_ns])
        .output()
        .expect("run holdfast restore-points");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), left.len(), "one row per point:\n{table}");
    assert!(
        rows[0].contains(&format!("{opns}/{newest}")),
        "newest first:\n{table}"
    );
    assert!(
        rows.iter().any(|r| r.contains(" copy ")),
        "copy-only points:\n{table}"
    );

    // "The schedule at T": the newest point completed at or before T.
    let mut by_completion: Vec<(Timestamp, String)> = left
        .values()
        .map(|b| {
            (
                b.status
                    .as_ref()
                    .and_then(|s| s.completion_time.clone())
                    .expect("done")
                    .0,
                b.name_any(),
            )
        })
        .collect();
    by_completion.sort();
    let (t, want) = by_completion[by_completion.len() - 2].clone();
    let target = TestNamespace::new(&s.client, "sla-at").await;
    let at = Timestamp::from_second(t.as_second() + 1).expect("t");
    e.apply_yaml(
        &opns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {{name: at}}\nspec:\n  source: {{schedule: sla, pointInTime: \"{at}\"}}\n  namespaceMapping: {{{app_ns}: {}}}\n",
            target.name
        ),
    );
    let r = wait_restore(&s.client, &opns, "at").await;
    let rst = r.status.expect("status");
    assert_eq!(
        rst.backup.as_deref(),
        Some(format!("{opns}/{want}").as_str()),
        "{rst:#?}"
    );
    assert_eq!(rst.phase, Some(RestorePhase::Completed), "{rst:#?}");

    // Deleting the schedule keeps its backups.
    e.kubectl_ok([
        "delete",
        "schedule",
        "sla",
        "-n",
        &opns,
        "--wait=true",
        "--timeout=60s",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<String> = runs(&s.client, &opns, "sla")
        .await
        .keys()
        .cloned()
        .collect();
    assert_eq!(after, names, "deleting the schedule left its backups");
    e.kubectl_ok(["delete", "slapolicy", &policy, "--wait=false"]);
    super::delete_all(&s.client, &opns).await;
    target.delete_and_wait(&s.client).await;
}

/// A per-minute cron schedule: pause stops runs; runs due while the operator was down start
/// once when it is back (the others count as missed); the brake holds a mass deletion until
/// released; an on-demand run starts once per annotation value; `onDelete: Delete` removes
/// every backup with the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedule_pauses_catches_up_brakes_and_destroys() {
    let mut s = setup("cron", 4, &[], Share::Together).await;
    let e = env();
    let (opns, app_ns) = (s.opns.name.clone(), s.app_ns.name.clone());
    e.apply_yaml(
        &opns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata: {{name: c}}\nspec:\n  schedule: \"* * * * *\"\n  timeZone: Europe/Berlin\n  keep: {{last: 4}}\n  maxDeletionsPerPass: 1\n  template:\n    spec: {{includedNamespaces: [{app_ns}], volumes: {{mode: Snapshot}}}}\n"
        ),
    );
    wait_until(
        "a first completed run",
        Duration::from_secs(180),
        Some(&opns),
        || async {
            let all = runs(&s.client, &opns, "c").await;
            all.values()
                .any(|b| phase(b) == Some(BackupPhase::Completed))
                .then_some(())
        },
    )
    .await;

    // Paused: a due slot passes without a run, and is not counted as missed.
    patch_schedule(&opns, "c", r#"{"spec":{"paused":true}}"#);
    let before = settled(&s, "c").await;
    let st = schedule(&s.client, &opns, "c")
        .await
        .status
        .expect("status");
    assert_eq!(st.phase, Some(SchedulePhase::Paused));
    tokio::time::sleep(Duration::from_secs(70)).await;
    let paused = runs(&s.client, &opns, "c").await;
    assert_eq!(
        paused.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no run while paused"
    );
    let missed_before = schedule(&s.client, &opns, "c")
        .await
        .status
        .expect("status")
        .missed_runs;

    // Resumed while the operator is down: of the slots due meanwhile, one runs on restart.
    s.op.kill();
    patch_schedule(&opns, "c", r#"{"spec":{"paused":false}}"#);
    tokio::time::sleep(Duration::from_secs(150)).await;
    let restart = Timestamp::now();
    s.restart_operator("cron-1").await;
    let late = wait_until(
        "the catch-up run",
        Duration::from_secs(60),
        Some(&opns),
        || async {
            let all = runs(&s.client, &opns, "c").await;
            let late: Vec<Backup> = all
                .into_values()
                .filter(|b| !before.contains_key(&b.name_any()) && scheduled(b) < restart)
                .collect();
            (!late.is_empty()).then_some(late)
        },
    )
    .await;
    assert_eq!(
        late.len(),
        1,
        "one run for the slots missed while down: {late:#?}"
    );
    // The status write follows the Backup's creation in the same pass.
    wait_until(
        "the missed runs to be counted",
        Duration::from_secs(30),
        Some(&opns),
        || async {
            let st = schedule(&s.client, &opns, "c").await.status?;
            (st.missed_runs > missed_before).then_some(())
        },
    )
    .await;
    let metric =
        s.op.metric("holdfast_schedule_missed_runs_total")
            .unwrap_or(0.0);
    assert!(metric >= 1.0, "missed-runs metric {metric}");

    // The brake: keeping 1 of several points would delete more than maxDeletionsPerPass (1).
    wait_until(
        "three points",
        Duration::from_secs(180),
        Some(&opns),
        || async {
            let all = runs(&s.client, &opns, "c").await;
            (all.values().filter(|b| finished(b)).count() >= 3).then_some(())
        },
    )
    .await;
    patch_schedule(&opns, "c", r#"{"spec":{"paused":true,"keep":{"last":1}}}"#);
    let held = wait_until(
        "the brake to hold",
        Duration::from_secs(120),
        Some(&opns),
        || async {
            let st = schedule(&s.client, &opns, "c").await.status?;
            let c = st.conditions.iter().find(|c| c.type_ == "RetentionHeld")?;
            (c.status == "True" && c.message.contains("release-deletions"))
                .then_some(st.retention_held?)
        },
    )
    .await;
    let count = runs(&s.client, &opns, "c").await.len();
    assert!(held.backups.len() >= 2 && count > 1, "{held:#?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        runs(&s.client, &opns, "c").await.len(),
        count,
        "held: nothing deleted"
    );
    e.kubectl_ok([
        "annotate",
        "schedule",
        "c",
        "-n",
        &opns,
        &format!("holdfast.dev/release-deletions={}", held.token),
        "--overwrite",
    ]);
    wait_until(
        "the released pass",
        Duration::from_secs(120),
        Some(&opns),
        || async { (runs(&s.client, &opns, "c").await.len() == 1).then_some(()) },
    )
    .await;
    let st = schedule(&s.client, &opns, "c")
        .await
        .status
        .expect("status");
    assert!(st.retention_held.is_none(), "{st:#?}");

    // On demand, GitOps style: a new run-now value starts one run (even while paused); the
    // same value never runs twice.
    let annotate = |kv: &str| {
        e.kubectl_ok(["annotate", "schedule", "c", "-n", &opns, kv, "--overwrite"]);
    };
    annotate("holdfast.dev/run-now=2026-12-06T23:00:00Z");
    let now_runs = || async {
        let all = runs(&s.client, &opns, "c").await;
        all.into_values()
            .filter(|b| b.name_any().starts_with("c-now-"))
            .collect::<Vec<_>>()
    };
    wait_until(
        "the on-demand run",
        Duration::from_secs(120),
        Some(&opns),
        || async {
            let st = schedule(&s.client, &opns, "c").await.status?;
            let started = now_runs().await.iter().any(finished);
            (started && st.last_run_now.as_deref() == Some("2026-12-06T23:00:00Z")).then_some(())
        },
    )
    .await;
    annotate("touched=1");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(now_runs().await.len(), 1, "the same run-now value ran once");

    // Destroy: onDelete Delete removes every backup and its snapshots with the schedule.
    let last: Vec<Backup> = runs(&s.client, &opns, "c").await.into_values().collect();
    patch_schedule(&opns, "c", r#"{"spec":{"onDelete":"Delete"}}"#);
    // No finalizer holds the schedule (an uninstalled operator would leave it stuck): the
    // operator sees the deletion and deletes the backups after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        schedule(&s.client, &opns, "c")
            .await
            .finalizers()
            .is_empty(),
        "a Schedule carries no finalizer"
    );
    e.kubectl_ok([
        "delete",
        "schedule",
        "c",
        "-n",
        &opns,
        "--wait=true",
        "--timeout=120s",
    ]);
    wait_until(
        "every backup to go with the schedule",
        Duration::from_secs(120),
        Some(&opns),
        || async { runs(&s.client, &opns, "c").await.is_empty().then_some(()) },
    )
    .await;
    for b in &last {
        wait_until(
            "the snapshots to go",
            Duration::from_secs(60),
            Some(&opns),
            || async { snapshots_of(b).trim().is_empty().then_some(()) },
        )
        .await;
    }
    super::delete_all(&s.client, &opns).await;
}
