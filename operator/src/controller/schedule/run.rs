//! Starting runs: the Backups due on each cadence, and one on demand for a new
//! `holdfast.dev/run-now` value. A run's Backup has a name derived from its scheduled time, so
//! a pass repeated after a crash adopts it instead of starting it twice; the cursor in status
//! moves only after the Backup exists.
//!
//! A run whose Backup is refused by a quota (a ResourceQuota on `count/backups.holdfast.dev`,
//! or the namespace's stored-bytes limit) does not start: the schedule says so in its status
//! (reason `QuotaExceeded`) and one Warning Event, and tries the run again every
//! [`REFUSED_RETRY`] (its cursor stays before the run, so a newer run supersedes it and the
//! refused one counts as missed).

use std::collections::BTreeMap;

use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::reasons::ScheduleReason;
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
use crate::controller::backup::quota;
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::kube_ext::create_or_adopt;
use crate::runtime::names::short_hash;
use crate::runtime::{Context, Error};

/// Default `startingDeadline`.
const DEADLINE: SignedDuration = SignedDuration::from_mins(5);
/// How soon a run refused by a quota is tried again.
pub(super) const REFUSED_RETRY: SignedDuration = SignedDuration::from_secs(30);

/// What a pass of [`start_due`] did.
pub(super) struct Started {
    /// When the next run is due (or a refused run is tried again).
    pub wake: Option<Timestamp>,
    /// The first run a quota refused, for the status.
    pub refused: Option<Refusal>,
}

/// Starts what is due; says when to look again and which run a quota refused.
pub(super) async fn start_due(
    s: &Schedule,
    ctx: &Context,
    plan: &Plan,
    backups: &[Backup],
    st: &mut ScheduleStatus,
) -> Result<Started, Error> {
    let now = Timestamp::now();
    let busy = backups.iter().any(running);
    let due = decide_all(s, plan, st, now, busy);
    // (track, slot, Backup name, on demand)
    let mut runs: Vec<(Track, Timestamp, String, bool)> = due
        .runs
        .iter()
        .map(|&(track, slot)| (track, slot, name(s, plan, track, slot), false))
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
        runs.push((track, now, n, true));
    }
    let mut refused: Vec<(&str, Refusal)> = Vec::new();
    let mut now_refused = false;
    let mut cursors = due.cursors.clone();
    for (track, slot, n, on_demand) in &runs {
        if let Err(r) = start(s, ctx, plan, *track, *slot, n).await? {
            // A refused run stays due: its cursors stay just before it (a run on demand
            // stays wanted: `lastRunNow` is not set).
            if *on_demand {
                now_refused = true;
            } else {
                hold_cursors(&mut cursors, *track, *slot);
            }
            refused.push((n, r));
        }
    }
    // Everything due exists now, but for the refused runs: move the cursors and count what
    // was missed.
    let ns = s.namespace().unwrap_or_default();
    for (track, cursor) in &cursors {
        *cursor_mut(st, *track) = Some(Time(*cursor));
    }
    if due.missed > 0 {
        st.missed_runs = st.missed_runs.saturating_add(due.missed);
        st.last_missed_time = Some(Time(now));
        ctx.metrics.schedule_missed(&ns, &s.name_any(), due.missed);
        let note = format!(
            "{} run(s) were due but did not start (the operator was down, the previous run was still going with concurrencyPolicy Forbid, or a quota refused the run's Backup)",
            due.missed
        );
        ctx.event(s, EventType::Warning, "RunsMissed", &note, "Schedule")
            .await;
    }
    if let Some(v) = now_wanted.filter(|_| !now_refused) {
        st.last_run_now = Some(v.clone());
    }
    if runs.len() > refused.len() {
        st.last_run_time = Some(Time(now));
    }
    st.next_run_time = due.next.get(&false).map(|t| Time(*t));
    st.next_copy_time = due.next.get(&true).map(|t| Time(*t));
    let Some((name, first)) = refused.into_iter().next() else {
        return Ok(Started {
            wake: due.wake,
            refused: None,
        });
    };
    info!(schedule = %s.name_any(), namespace = %ns, backup = %name, reason = first.reason, message = %first.message, "a quota refused the run's Backup; trying again later");
    if st.reason.as_deref() != Some(ScheduleReason::QuotaExceeded.as_str()) {
        ctx.event(
            s,
            EventType::Warning,
            first.reason,
            &first.message,
            "Schedule",
        )
        .await;
    }
    let retry = now + REFUSED_RETRY;
    Ok(Started {
        wake: Some(due.wake.map_or(retry, |w| w.min(retry))),
        refused: Some(first),
    })
}

/// Keeps the cursors of the lines a refused run of `slot` belongs to just before it, so the
/// run is due again (and, once a newer run is due, counted as missed). Pure.
fn hold_cursors(cursors: &mut [(Track, Timestamp)], run: Track, slot: Timestamp) {
    let before = slot - SignedDuration::from_secs(1);
    for (line, cursor) in cursors.iter_mut() {
        let covers = run == *line || run == Track::Both || *line == Track::Both;
        if covers && *cursor >= slot {
            *cursor = before;
        }
    }
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

/// Creates the run's Backup (or adopts it); `Ok(Err(refusal))` when a quota refused it.
async fn start(
    s: &Schedule,
    ctx: &Context,
    plan: &Plan,
    track: Track,
    slot: Timestamp,
    name: &str,
) -> Refusable<()> {
    let ns = s.namespace().unwrap_or_default();
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(r) = quota::check(ctx, &ns, None).await? {
        // A run whose Backup exists already (a pass repeated after a crash) has started.
        if api
            .get_opt(name)
            .await
            .map_err(Error::kube("get Backup"))?
            .is_some()
        {
            return Ok(Ok(()));
        }
        return Ok(Err(Refusal::new(
            ScheduleReason::QuotaExceeded,
            format!(
                "the run's Backup {name} was not created: {}; the schedule tries again every {}s",
                r.message,
                REFUSED_RETRY.as_secs()
            ),
        )));
    }
    let b = backup(s, plan, track, slot, name);
    match create_or_adopt(&api, &b, "create Backup").await {
        Ok(Some(_)) => {
            info!(schedule = %s.name_any(), backup = %name, cadence = track.label(), %slot, "started a scheduled backup");
            let note = format!("started Backup {name} ({} run of {slot})", track.label());
            ctx.event(s, EventType::Normal, "BackupStarted", &note, "Schedule")
                .await;
            Ok(Ok(()))
        }
        Ok(None) => Ok(Ok(())),
        Err(e) => match count_quota_refusal(name, &e) {
            Some(r) => Ok(Err(r)),
            None => Err(e),
        },
    }
}

/// The refusal of a Backup that a ResourceQuota of the namespace (`count/backups.holdfast.dev`
/// or any other) refused, naming the quota as the API server did. Pure.
fn count_quota_refusal(name: &str, e: &Error) -> Option<Refusal> {
    let Error::Kube {
        source: kube::Error::Api(status),
        ..
    } = e
    else {
        return None;
    };
    if status.code != 403 || !status.message.contains("exceeded quota") {
        return None;
    }
    Some(Refusal::new(
        ScheduleReason::QuotaExceeded,
        format!(
            "the run's Backup {name} was refused by the API server: {}; raise that ResourceQuota's count/backups.holdfast.dev (it must leave room for one Backup more than the schedule keeps) or delete Backups of this namespace; the schedule tries again every {}s",
            status.message,
            REFUSED_RETRY.as_secs()
        ),
    ))
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
    fn a_refused_run_stays_due_and_a_newer_one_supersedes_it() {
        let s = schedule();
        let plan = super::super::plan::resolve(&s, None).expect("plan");
        let slot = ts("2026-12-06T10:05:00Z");
        let mut st = ScheduleStatus::default();
        let d = decide_all(&s, &plan, &st, ts("2026-12-06T10:05:01Z"), false);
        let mut cursors = d.cursors.clone();
        hold_cursors(&mut cursors, Track::Both, slot);
        for (track, c) in &cursors {
            *cursor_mut(&mut st, *track) = Some(Time(*c));
        }
        // Tried again on the next pass, nothing counted as missed.
        let d = decide_all(&s, &plan, &st, ts("2026-12-06T10:05:31Z"), false);
        assert_eq!(d.runs, [(Track::Both, slot)]);
        assert_eq!(d.missed, 0);
        // Still refused when the next slot comes: that one runs, the refused one is missed.
        let d = decide_all(&s, &plan, &st, ts("2026-12-06T10:10:02Z"), false);
        assert_eq!(d.runs, [(Track::Both, ts("2026-12-06T10:10:00Z"))]);
        assert_eq!(d.missed, 1);
    }

    #[test]
    fn only_the_lines_of_a_refused_run_are_held() {
        let t = ts("2026-12-06T01:00:00Z");
        let mut c = vec![(Track::Snapshot, t), (Track::Copy, t)];
        hold_cursors(&mut c, Track::Copy, t);
        assert_eq!(
            c,
            [
                (Track::Snapshot, t),
                (Track::Copy, ts("2026-12-06T00:59:59Z"))
            ]
        );
        let mut c = vec![(Track::Snapshot, t), (Track::Copy, t)];
        hold_cursors(&mut c, Track::Both, t);
        assert!(c.iter().all(|(_, x)| *x < t));
    }

    #[test]
    fn a_resource_quota_refusal_names_the_quota() {
        let api = |code: u16, message: &str| Error::Kube {
            call: "create Backup",
            source: kube::Error::Api(
                kube::core::Status::failure(message, "Forbidden")
                    .with_code(code)
                    .boxed(),
            ),
        };
        let msg = "backups.holdfast.dev \"n-1\" is forbidden: exceeded quota: backup-count, requested: count/backups.holdfast.dev=1, used: count/backups.holdfast.dev=2, limited: count/backups.holdfast.dev=2";
        let r = count_quota_refusal("n-1", &api(403, msg)).expect("a quota refusal");
        assert_eq!(r.reason, "QuotaExceeded");
        assert!(
            r.message.contains("exceeded quota: backup-count"),
            "{}",
            r.message
        );
        assert!(r.message.contains("Backup n-1"), "{}", r.message);
        assert!(r.message.contains("every 30s"), "{}", r.message);
        assert!(count_quota_refusal("n-1", &api(403, "forbidden: User cannot")).is_none());
        assert!(count_quota_refusal("n-1", &api(500, "exceeded quota")).is_none());
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
