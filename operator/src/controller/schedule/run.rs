//! Starting runs: the Backups due on each cadence, and one on demand for a new
//! `holdfast.dev/run-now` value. A run's Backup has a name derived from its scheduled time, so
//! a pass repeated after a crash adopts it instead of starting it twice; the cursor in status
//! moves only after the Backup exists.

use std::collections::BTreeMap;

use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::schedule::{
    CADENCE_LABEL, RUN_NOW, SCHEDULE_LABEL, SCHEDULED_TIME, Schedule, ScheduleStatus,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use tracing::info;

use super::cadence::{self, Situation};
use super::plan::{Plan, Track};
use crate::runtime::kube_ext::create_or_adopt;
use crate::runtime::names::short_hash;
use crate::runtime::{Context, Error};

/// Default `startingDeadline`.
const DEADLINE: SignedDuration = SignedDuration::from_mins(5);

/// Starts what is due; returns when the next run is due.
pub(super) async fn start_due(
    s: &Schedule,
    ctx: &Context,
    plan: &Plan,
    backups: &[Backup],
    st: &mut ScheduleStatus,
) -> Result<Option<Timestamp>, Error> {
    let now = Timestamp::now();
    let busy = backups.iter().any(running);
    let due = decide_all(s, plan, st, now, busy);
    let mut runs: Vec<(Track, Timestamp, String)> = due
        .runs
        .iter()
        .map(|&(track, slot)| (track, slot, name(s, plan, track, slot)))
        .collect();
    let run_now = s.annotations().get(RUN_NOW).cloned();
    let now_wanted = run_now
        .as_ref()
        .filter(|v| st.last_run_now.as_ref() != Some(*v));
    if let Some(v) = now_wanted {
        let track = if plan.lines.len() == 1 {
            plan.lines[0].track
        } else {
            Track::Both
        };
        let n = format!("{}-now-{}", prefix(s), short_hash(&[v]));
        runs.push((track, now, n));
    }
    for (track, slot, n) in &runs {
        start(s, ctx, plan, *track, *slot, n).await?;
    }
    // Everything due exists now: move the cursors and count what was missed.
    let ns = s.namespace().unwrap_or_default();
    for (track, cursor) in &due.cursors {
        *cursor_mut(st, *track) = Some(Time(*cursor));
    }
    if due.missed > 0 {
        st.missed_runs = st.missed_runs.saturating_add(due.missed);
        st.last_missed_time = Some(Time(now));
        ctx.metrics.schedule_missed(&ns, &s.name_any(), due.missed);
        let note = format!(
            "{} run(s) were due but did not start (the operator was down, or the previous run was still going with concurrencyPolicy Forbid)",
            due.missed
        );
        ctx.event(s, EventType::Warning, "RunsMissed", &note, "Schedule")
            .await;
    }
    if let Some(v) = now_wanted {
        st.last_run_now = Some(v.clone());
    }
    if !runs.is_empty() {
        st.last_run_time = Some(Time(now));
    }
    st.next_run_time = due.next.get(&false).map(|t| Time(*t));
    st.next_copy_time = due.next.get(&true).map(|t| Time(*t));
    Ok(due.wake)
}

/// The runs to start, cursors to move and missed runs of every line, at `now`.
struct Due {
    runs: Vec<(Track, Timestamp)>,
    cursors: Vec<(Track, Timestamp)>,
    missed: u32,
    /// Next start per line kind (copy line: `true`).
    next: BTreeMap<bool, Timestamp>,
    wake: Option<Timestamp>,
}

fn decide_all(s: &Schedule, plan: &Plan, st: &ScheduleStatus, now: Timestamp, busy: bool) -> Due {
    let anchor = s.creation_timestamp().map_or(now, |t| t.0);
    let uid = s.uid().unwrap_or_default();
    let jitter = s.spec.jitter.map(|j| j.as_std());
    let mut out = Due {
        runs: Vec::new(),
        cursors: Vec::new(),
        missed: 0,
        next: BTreeMap::new(),
        wake: None,
    };
    for line in &plan.lines {
        let cursor = cursor(st, line.track).unwrap_or(anchor);
        let d = cadence::due(&line.cadence, cursor, now, &plan.tz);
        let next_delay = d
            .next
            .map_or(SignedDuration::ZERO, |n| cadence::jitter(&uid, n, jitter));
        let situation = Situation {
            now,
            paused: s.spec.paused,
            busy,
            concurrency: s.spec.concurrency_policy,
            missed: s.spec.missed_run_policy,
            deadline: s
                .spec
                .starting_deadline
                .and_then(|d| SignedDuration::try_from(d.as_std()).ok())
                .unwrap_or(DEADLINE),
            delay: d
                .latest
                .map_or(SignedDuration::ZERO, |l| cadence::jitter(&uid, l, jitter)),
            next_delay,
        };
        let x = cadence::decide(&d, &situation);
        if let Some(slot) = x.run {
            out.runs.push((line.track, slot));
        }
        if let Some(c) = x.cursor {
            out.cursors.push((line.track, c));
        }
        out.missed += x.missed;
        if let (Some(n), false) = (d.next, s.spec.paused) {
            out.next.insert(line.track == Track::Copy, n + next_delay);
        }
        out.wake = match (out.wake, x.wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    out.runs = merge(std::mem::take(&mut out.runs));
    out
}

/// A snapshot run and a copy run of the same scheduled time are one run that does both.
fn merge(mut runs: Vec<(Track, Timestamp)>) -> Vec<(Track, Timestamp)> {
    runs.sort_by_key(|&(_, t)| t);
    let mut out: Vec<(Track, Timestamp)> = Vec::new();
    for (track, t) in runs {
        match out.last_mut() {
            Some(last) if last.1 == t && last.0 != track => last.0 = Track::Both,
            _ => out.push((track, t)),
        }
    }
    out
}

fn cursor(st: &ScheduleStatus, track: Track) -> Option<Timestamp> {
    match track {
        Track::Copy => st.last_copy_scheduled_time.as_ref(),
        _ => st.last_scheduled_time.as_ref(),
    }
    .map(|t| t.0)
}

fn cursor_mut(st: &mut ScheduleStatus, track: Track) -> &mut Option<Time> {
    match track {
        Track::Copy => &mut st.last_copy_scheduled_time,
        _ => &mut st.last_scheduled_time,
    }
}

/// A backup not yet finished.
pub(super) fn running(b: &Backup) -> bool {
    !b.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(BackupPhase::is_terminal)
}

/// The schedule's name, cut so a run's name fits in 253 characters.
fn prefix(s: &Schedule) -> String {
    let mut p = s.name_any();
    p.truncate(253 - 25);
    p
}

/// `<schedule>-<yyyymmddhhmmss>` (UTC) for a cron schedule; `<schedule>-<cadence>-<...>` for
/// an SLA policy's runs, whose two cadences may share a time.
fn name(s: &Schedule, plan: &Plan, track: Track, slot: Timestamp) -> String {
    let t = slot.strftime("%Y%m%d%H%M%S");
    if plan.lines.len() > 1 {
        format!("{}-{}-{t}", prefix(s), track.label())
    } else {
        format!("{}-{t}", prefix(s))
    }
}

async fn start(
    s: &Schedule,
    ctx: &Context,
    plan: &Plan,
    track: Track,
    slot: Timestamp,
    name: &str,
) -> Result<(), Error> {
    let b = backup(s, plan, track, slot, name);
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    if create_or_adopt(&api, &b, "create Backup").await?.is_some() {
        info!(schedule = %s.name_any(), backup = %name, cadence = track.label(), %slot, "started a scheduled backup");
        let note = format!("started Backup {name} ({} run of {slot})", track.label());
        ctx.event(s, EventType::Normal, "BackupStarted", &note, "Schedule")
            .await;
    }
    Ok(())
}

/// The Backup of one run: the template's spec and metadata (never the Schedule's own labels,
/// annotations or owner), the schedule and cadence labels, and the scheduled time. Pure.
pub(super) fn backup(
    s: &Schedule,
    plan: &Plan,
    track: Track,
    slot: Timestamp,
    name: &str,
) -> Backup {
    let t = &s.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), s.name_any());
    labels.insert(CADENCE_LABEL.into(), track.label().into());
    let mut annotations = t.metadata.annotations.clone();
    annotations.insert(SCHEDULED_TIME.into(), slot.to_string());
    let mut spec = t.spec.clone();
    spec.volumes.mode = track.mode();
    // The schedule's retention applies the template's ttl, so the newest good point stays.
    spec.ttl = None;
    spec.cancel = false;
    if spec.storage_location.is_none() {
        spec.storage_location = plan.location.clone();
    }
    Backup {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: s.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::schedule::ScheduleSpec;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn schedule() -> Schedule {
        let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
            "schedule": "*/5 * * * *", "keep": {"last": 3},
            "template": {
                "metadata": {"labels": {"team": "shop"}, "annotations": {"note": "n"}},
                "spec": {"ttl": "24h", "includedNamespaces": ["shop"]}
            }
        }))
        .expect("spec");
        let mut s = Schedule::new("nightly", spec);
        s.metadata.namespace = Some("shop".into());
        s.metadata.labels = Some([("own".to_string(), "label".to_string())].into());
        s.metadata.annotations = Some([(RUN_NOW.to_string(), "x".to_string())].into());
        s.metadata.creation_timestamp = Some(Time(ts("2026-12-06T10:00:00Z")));
        s.metadata.uid = Some("u".into());
        s
    }

    #[test]
    fn a_run_carries_the_template_and_never_the_schedules_own_metadata() {
        let s = schedule();
        let plan = super::super::plan::resolve(&s, None).expect("plan");
        let slot = ts("2026-12-06T10:05:00Z");
        let n = name(&s, &plan, Track::Both, slot);
        assert_eq!(n, "nightly-20261206100500");
        let b = backup(&s, &plan, Track::Both, slot, &n);
        let labels = b.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
        assert_eq!(
            labels.get(SCHEDULE_LABEL).map(String::as_str),
            Some("nightly")
        );
        assert!(!labels.contains_key("own"));
        let ann = b.metadata.annotations.clone().unwrap_or_default();
        assert!(!ann.contains_key(RUN_NOW));
        assert_eq!(
            ann.get(SCHEDULED_TIME).map(String::as_str),
            Some("2026-12-06T10:05:00Z")
        );
        assert!(b.metadata.owner_references.is_none());
        assert_eq!(b.spec.ttl, None);
        assert_eq!(b.spec.selection.included_namespaces, ["shop"]);
    }

    #[test]
    fn the_first_run_is_the_first_slot_after_creation() {
        let s = schedule();
        let plan = super::super::plan::resolve(&s, None).expect("plan");
        let st = ScheduleStatus::default();
        let d = decide_all(&s, &plan, &st, ts("2026-12-06T10:04:00Z"), false);
        assert!(d.runs.is_empty());
        assert_eq!(d.wake, Some(ts("2026-12-06T10:05:00Z")));
        let d = decide_all(&s, &plan, &st, ts("2026-12-06T10:05:01Z"), false);
        assert_eq!(d.runs, [(Track::Both, ts("2026-12-06T10:05:00Z"))]);
        assert_eq!(d.cursors, [(Track::Both, ts("2026-12-06T10:05:00Z"))]);
    }

    #[test]
    fn snapshot_and_copy_runs_of_one_time_merge() {
        let t = ts("2026-12-06T01:00:00Z");
        let u = ts("2026-12-06T02:00:00Z");
        let m = merge(vec![
            (Track::Snapshot, t),
            (Track::Copy, t),
            (Track::Snapshot, u),
        ]);
        assert_eq!(m, [(Track::Both, t), (Track::Snapshot, u)]);
    }
}
