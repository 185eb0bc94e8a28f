//! Retention and deletion of a schedule's Backups. Each line of the plan (the cron schedule's
//! one, or an SLA policy's snapshot and copy lines) decides over the points that have its kind
//! of data; a point no line keeps is deleted (its data goes per the Backup's
//! `deletionPolicy`). A pass that would delete more than the brake allows is held until a
//! person releases it with the token shown in status.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::reasons::ScheduleReason;
use holdfast_api::schedule::{
    CADENCE_LABEL, HeldDeletion, RELEASE_DELETIONS, SCHEDULED_TIME, SNAPSHOTS_DROPPED, Schedule,
    ScheduleStatus,
};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::plan::{Plan, Track};
use super::retention::{self, Outcome, Point};
use crate::runtime::conditions;
use crate::runtime::kube_ext::{delete, merge_patch};
use crate::runtime::names::short_hash;
use crate::runtime::{Context, Error};

/// Condition type shown while the brake holds a retention pass.
pub const RETENTION_HELD: &str = "RetentionHeld";
/// Failed runs kept at most (the newest; a schedule failing for weeks does not pile up
/// Backups).
const FAILED_KEPT: usize = 5;
/// Default `maxDeletionsPerPass`.
const MAX_DELETIONS: u32 = 10;

/// One finished Backup of the schedule, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub track: Track,
    pub point: Point,
}

/// Applies retention to the schedule's finished Backups.
pub(super) async fn apply(
    s: &Schedule,
    ctx: &Context,
    plan: &Plan,
    backups: &[Backup],
    st: &mut ScheduleStatus,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let ttl = s
        .spec
        .template
        .spec
        .ttl
        .and_then(|d| SignedDuration::try_from(d.as_std()).ok());
    let runs: Vec<Run> = backups.iter().filter_map(|b| run_of(b, ttl)).collect();
    let Verdict { expire, drop } = choose(plan, &runs, now);
    drop_snapshots(s, ctx, backups, &drop).await?;
    let g = s.metadata.generation;
    if expire.is_empty() {
        st.retention_held = None;
        let why = ScheduleReason::NothingHeld.as_str();
        conditions::set(&mut st.conditions, RETENTION_HELD, false, why, "", g, now);
        return Ok(());
    }
    if let Some(h) = brake(s, &runs, &expire) {
        let released = s.annotations().get(RELEASE_DELETIONS) == Some(&h.token);
        if !released {
            hold(s, ctx, st, h, now).await;
            return Ok(());
        }
        info!(schedule = %s.name_any(), token = %h.token, "retention pass released by annotation");
    }
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    for name in &expire {
        delete(
            &api,
            name,
            &DeleteParams::background(),
            "delete expired Backup",
        )
        .await?;
    }
    let ns = s.namespace().unwrap_or_default();
    ctx.metrics
        .retention_deleted(&ns, &s.name_any(), expire.len());
    st.expired_points = st.expired_points.saturating_add(expire.len() as u32);
    st.retention_held = None;
    let why = ScheduleReason::NothingHeld.as_str();
    conditions::set(&mut st.conditions, RETENTION_HELD, false, why, "", g, now);
    let note = format!(
        "retention deleted {} backup(s): {}",
        expire.len(),
        expire.join(", ")
    );
    info!(schedule = %s.name_any(), "{note}");
    ctx.event(s, EventType::Normal, "RetentionApplied", &note, "Schedule")
        .await;
    Ok(())
}

/// Removes the VolumeSnapshots of points kept only for their copies, and marks them so.
async fn drop_snapshots(
    s: &Schedule,
    ctx: &Context,
    backups: &[Backup],
    names: &[String],
) -> Result<(), Error> {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    for b in backups.iter().filter(|b| names.contains(&b.name_any())) {
        if crate::controller::backup::drop_snapshots(b, ctx).await? > 0 {
            continue; // still going; marked on a later pass
        }
        let patch = serde_json::json!({"metadata": {"annotations": {SNAPSHOTS_DROPPED: "true"}}});
        merge_patch(&api, &b.name_any(), &patch, "annotate Backup").await?;
        info!(schedule = %s.name_any(), backup = %b.name_any(), "snapshots dropped; the copy is kept");
    }
    Ok(())
}

/// Shows a held pass in status (and one Warning Event when it is new).
async fn hold(
    s: &Schedule,
    ctx: &Context,
    st: &mut ScheduleStatus,
    h: HeldDeletion,
    now: Timestamp,
) {
    let message = format!(
        "retention would delete {} of {} restore points ({}), more than the brake allows (spec.maxDeletionsPerPass, spec.maxDeletionPercent); to allow exactly this: kubectl annotate schedule {} -n {} {RELEASE_DELETIONS}={} --overwrite",
        h.backups.len(),
        h.of,
        h.backups.join(", "),
        s.name_any(),
        s.namespace().unwrap_or_default(),
        h.token
    );
    let new = st.retention_held.as_ref().map(|o| &o.token) != Some(&h.token);
    let why = ScheduleReason::DeletionsHeld.as_str();
    conditions::set(
        &mut st.conditions,
        RETENTION_HELD,
        true,
        why,
        &message,
        s.metadata.generation,
        now,
    );
    st.retention_held = Some(h);
    if new {
        ctx.event(s, EventType::Warning, why, &message, "Schedule")
            .await;
    }
}

/// The finished Backup `b` as a point (`None` while it runs). Pure.
pub fn run_of(b: &Backup, ttl: Option<SignedDuration>) -> Option<Run> {
    let st = b.status.as_ref()?;
    let outcome = match st.phase? {
        BackupPhase::Completed => Outcome::Completed,
        BackupPhase::PartiallyFailed => Outcome::PartiallyFailed,
        BackupPhase::Failed | BackupPhase::Cancelled => Outcome::Failed,
        _ => return None,
    };
    let time = b
        .annotations()
        .get(SCHEDULED_TIME)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or(st.start_time.as_ref().map(|t| t.0))
        .or(b.creation_timestamp().map(|t| t.0))?;
    let expires = ttl.and_then(|d| Some(st.completion_time.as_ref()?.0 + d));
    let mut track = Track::from_label(b.labels().get(CADENCE_LABEL).map(String::as_str));
    if track == Track::Both && b.annotations().contains_key(SNAPSHOTS_DROPPED) {
        track = Track::Copy;
    }
    Some(Run {
        track,
        point: Point {
            name: b.name_any(),
            time,
            outcome,
            expires,
        },
    })
}

/// What retention does to a schedule's points.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Points no line keeps, newest first: deleted.
    pub expire: Vec<String>,
    /// Points with snapshots and a copy that only the copy line keeps: their snapshots go.
    pub drop: Vec<String>,
}

/// Decides over the points. A one-line plan decides over every point; an SLA policy's
/// snapshot line over the points with snapshots, its copy line over those with copies. Pure.
pub fn choose(plan: &Plan, runs: &[Run], now: Timestamp) -> Verdict {
    let mut kept: BTreeMap<bool, BTreeSet<String>> = BTreeMap::new();
    for line in &plan.lines {
        let snapshots = line.track == Track::Snapshot;
        let points: Vec<Point> = runs
            .iter()
            .filter(|r| plan.lines.len() == 1 || r.track.has(snapshots))
            .map(|r| r.point.clone())
            .collect();
        let d = retention::decide(&points, &line.keep, now, &plan.tz);
        kept.entry(snapshots)
            .or_default()
            .extend(d.keep.into_iter().map(|(n, _)| n));
    }
    let by = |snapshots: bool, n: &String| kept.get(&snapshots).is_some_and(|k| k.contains(n));
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| {
        b.point
            .time
            .cmp(&a.point.time)
            .then_with(|| a.point.name.cmp(&b.point.name))
    });
    let mut v = Verdict::default();
    let mut failed_kept = 0;
    for r in sorted {
        let n = &r.point.name;
        let mut keep = by(true, n) || by(false, n);
        if keep && r.point.outcome == Outcome::Failed {
            // Failed runs are kept only to show what goes wrong: the newest few.
            failed_kept += 1;
            keep = failed_kept <= FAILED_KEPT;
        }
        if !keep {
            v.expire.push(n.clone());
        } else if plan.lines.len() > 1 && r.track == Track::Both && !by(true, n) {
            v.drop.push(n.clone());
        }
    }
    v
}

/// The brake: a pass deleting more restore points than `maxDeletionsPerPass` (default 10) or
/// than `maxDeletionPercent` of them is held. Failed runs are not restore points and do not
/// count. Pure.
pub fn brake(s: &Schedule, runs: &[Run], expire: &[String]) -> Option<HeldDeletion> {
    let points = runs.iter().filter(|r| r.point.outcome != Outcome::Failed);
    let total = points.clone().count() as u32;
    let n = points.filter(|r| expire.contains(&r.point.name)).count() as u32;
    let max = s.spec.max_deletions_per_pass.unwrap_or(MAX_DELETIONS);
    let share = s
        .spec
        .max_deletion_percent
        .is_some_and(|p| u64::from(n) * 100 > u64::from(p) * u64::from(total));
    if n <= max && !share {
        return None;
    }
    let parts: Vec<&str> = expire.iter().map(String::as_str).collect();
    Some(HeldDeletion {
        backups: expire.to_vec(),
        of: total,
        token: short_hash(&parts),
    })
}

/// `onDelete: Delete`: deletes every Backup of the schedule; true once none is left.
pub(super) async fn destroy(s: &Schedule, ctx: &Context) -> Result<bool, Error> {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    let all = super::all_backups(s, ctx).await?;
    for b in all
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
    {
        delete(
            &api,
            &b.name_any(),
            &DeleteParams::background(),
            "delete Backup",
        )
        .await?;
    }
    if !all.is_empty() {
        info!(schedule = %s.name_any(), left = all.len(), "deleting the schedule's backups (onDelete: Delete)");
    }
    Ok(all.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::schedule::ScheduleSpec;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn schedule(v: serde_json::Value) -> Schedule {
        let spec: ScheduleSpec = serde_json::from_value(v).expect("spec");
        Schedule::new("s", spec)
    }

    fn run(name: &str, track: Track, at: &str, outcome: Outcome) -> Run {
        Run {
            track,
            point: Point {
                name: name.into(),
                time: ts(at),
                outcome,
                expires: None,
            },
        }
    }

    fn sla() -> Plan {
        use holdfast_api::policy::{SLAPolicy, SLAPolicySpec};
        let spec: SLAPolicySpec = serde_json::from_value(serde_json::json!({
            "snapshots": {"every": "1h", "keep": {"last": 2}},
            "copies": {"every": "4h", "keep": {"last": 1}},
        }))
        .expect("policy");
        let s = schedule(serde_json::json!({"policy": "p", "template": {}}));
        super::super::plan::resolve(&s, Some(&SLAPolicy::new("p", spec))).expect("plan")
    }

    #[test]
    fn snapshot_and_copy_points_have_their_own_retention() {
        use Outcome::Completed as C;
        let runs = vec![
            run("s1", Track::Snapshot, "2026-12-06T01:00:00Z", C),
            run("b2", Track::Both, "2026-12-06T04:00:00Z", C),
            run("s3", Track::Snapshot, "2026-12-06T05:00:00Z", C),
            run("s4", Track::Snapshot, "2026-12-06T06:00:00Z", C),
            run("c5", Track::Copy, "2026-12-06T08:00:00Z", C),
        ];
        let now = ts("2026-12-06T08:30:00Z");
        // Snapshots keep the newest two with snapshots (s4, s3); copies the newest (c5).
        assert_eq!(choose(&sla(), &runs, now).expire, ["b2", "s1"]);
    }

    #[test]
    fn a_point_kept_only_for_its_copy_loses_its_snapshots() {
        use Outcome::Completed as C;
        let runs = vec![
            run("b1", Track::Both, "2026-12-06T04:00:00Z", C),
            run("s2", Track::Snapshot, "2026-12-06T05:00:00Z", C),
            run("s3", Track::Snapshot, "2026-12-06T06:00:00Z", C),
        ];
        let v = choose(&sla(), &runs, ts("2026-12-06T06:30:00Z"));
        assert_eq!(v.expire, Vec::<String>::new());
        assert_eq!(
            v.drop,
            ["b1"],
            "the copy line keeps b1, the snapshot line keeps s3 and s2"
        );
        let dropped = vec![
            run("b1", Track::Copy, "2026-12-06T04:00:00Z", C),
            runs[1].clone(),
            runs[2].clone(),
        ];
        assert_eq!(
            choose(&sla(), &dropped, ts("2026-12-06T06:30:00Z")),
            Verdict::default()
        );
    }

    #[test]
    fn the_brake_holds_a_mass_deletion_with_a_stable_token() {
        let mut s = schedule(serde_json::json!({
            "schedule": "@hourly", "keep": {"last": 1}, "template": {}, "maxDeletionsPerPass": 2
        }));
        let runs: Vec<Run> = (0..5)
            .map(|i| {
                run(
                    &format!("r{i}"),
                    Track::Both,
                    &format!("2026-12-06T0{i}:00:00Z"),
                    Outcome::Completed,
                )
            })
            .collect();
        let expire: Vec<String> = ["r3", "r2", "r1", "r0"].map(String::from).to_vec();
        let h = brake(&s, &runs, &expire).expect("held");
        assert_eq!((h.backups.len(), h.of), (4, 5));
        assert_eq!(
            brake(&s, &runs, &expire).map(|h| h.token),
            Some(h.token.clone())
        );
        assert!(brake(&s, &runs, &expire[..2]).is_none());
        s.spec.max_deletions_per_pass = Some(10);
        s.spec.max_deletion_percent = Some(50);
        assert!(
            brake(&s, &runs, &expire).is_some(),
            "4 of 5 is more than 50%"
        );
        assert!(brake(&s, &runs, &expire[..2]).is_none(), "2 of 5 is not");
    }

    #[test]
    fn a_schedule_that_always_fails_keeps_only_its_newest_failures() {
        let s = schedule(serde_json::json!({
            "schedule": "@hourly", "keep": {"last": 3}, "template": {}
        }));
        let runs: Vec<Run> = (0..9)
            .map(|i| {
                run(
                    &format!("f{i}"),
                    Track::Both,
                    &format!("2026-12-06T0{i}:00:00Z"),
                    Outcome::Failed,
                )
            })
            .collect();
        let plan = super::super::plan::resolve(&s, None).expect("plan");
        let v = choose(&plan, &runs, ts("2026-12-06T10:00:00Z"));
        assert_eq!(v.expire, ["f3", "f2", "f1", "f0"]);
        assert!(
            brake(&s, &runs, &v.expire).is_none(),
            "failed runs are not restore points"
        );
    }

    #[test]
    fn failed_runs_do_not_count_against_the_brake() {
        let s = schedule(serde_json::json!({
            "schedule": "@hourly", "keep": {"last": 1}, "template": {}, "maxDeletionsPerPass": 1
        }));
        let runs: Vec<Run> = (0..5)
            .map(|i| {
                run(
                    &format!("f{i}"),
                    Track::Both,
                    &format!("2026-12-06T0{i}:00:00Z"),
                    Outcome::Failed,
                )
            })
            .chain([run(
                "ok",
                Track::Both,
                "2026-12-06T06:00:00Z",
                Outcome::Completed,
            )])
            .collect();
        let plan = super::super::plan::resolve(&s, None).expect("plan");
        let expire = choose(&plan, &runs, ts("2026-12-06T07:00:00Z")).expire;
        assert_eq!(
            expire.len(),
            5,
            "failed runs older than the newest good one go"
        );
        assert!(brake(&s, &runs, &expire).is_none());
    }
}
