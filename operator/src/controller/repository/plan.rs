//! When a repository's maintenance runs, and what a finished run leaves in status. Pure.

use holdfast_api::repository::{BackupRepositoryStatus, CheckResult, Maintenance, PruneResult};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::mover::protocol::MaintenanceEvent;

const DAY: SignedDuration = SignedDuration::from_hours(24);
/// Default `pruneAfterDeletion`.
const AFTER_DELETION: SignedDuration = SignedDuration::from_hours(1);
/// Default `checkReadPercent`.
pub const READ_PERCENT: u8 = 5;
/// A failed run is tried again after this long.
pub const RETRY: SignedDuration = SignedDuration::from_mins(10);
/// A prune that left marked packs runs again this long after their grace period.
const SETTLE: SignedDuration = SignedDuration::from_secs(10);

/// A maintenance operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Prune,
    Check,
}

impl Op {
    /// Label value and pod name part.
    pub fn label(self) -> &'static str {
        match self {
            Self::Prune => "prune",
            Self::Check => "check",
        }
    }

    /// The operation of a label value.
    pub fn from_label(v: Option<&str>) -> Option<Self> {
        match v {
            Some("prune") => Some(Self::Prune),
            Some("check") => Some(Self::Check),
            _ => None,
        }
    }
}

fn dur(d: Option<holdfast_api::Duration>, default: SignedDuration) -> SignedDuration {
    d.and_then(|d| SignedDuration::try_from(d.as_std()).ok())
        .unwrap_or(default)
}

/// The prune grace period.
pub fn grace(m: &Maintenance) -> SignedDuration {
    dur(m.prune_grace, DAY)
}

/// When the next prune and check are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub prune: Timestamp,
    pub check: Timestamp,
}

/// Next prune: `pruneEvery` after the last (or after creation), sooner `pruneAfterDeletion`
/// after data was deleted (`deleted`: a deletion no prune covered yet), and again once packs marked by the last prune have waited out the
/// grace period. Next check: `checkEvery` after the last. After a failure, not before
/// [`RETRY`].
pub fn due(
    m: &Maintenance,
    st: &BackupRepositoryStatus,
    created: Timestamp,
    deleted: Option<Timestamp>,
) -> Due {
    let last_prune = st.last_prune.as_ref().map_or(created, |p| p.time.0);
    let mut prune = last_prune + dur(m.prune_every, DAY);
    if let Some(d) = deleted {
        prune = prune.min(d + dur(m.prune_after_deletion, AFTER_DELETION));
    }
    if st.last_prune.as_ref().is_some_and(|p| p.packs_waiting > 0) {
        prune = prune.min(last_prune + grace(m) + SETTLE);
    }
    let last_check = st.last_check.as_ref().map_or(created, |c| c.time.0);
    let mut check = last_check + dur(m.check_every, DAY * 7);
    if let Some(f) = st.failed_time.as_ref() {
        prune = prune.max(f.0 + RETRY);
        check = check.max(f.0 + RETRY);
    }
    Due { prune, check }
}

/// The operation to start now, if any (prune first).
pub fn next(d: &Due, now: Timestamp) -> Option<Op> {
    if now >= d.prune {
        Some(Op::Prune)
    } else if now >= d.check {
        Some(Op::Check)
    } else {
        None
    }
}

/// Records a finished run from its events; `Err` with a message when it did not produce its
/// result.
pub fn record(
    st: &mut BackupRepositoryStatus,
    op: Op,
    events: &[MaintenanceEvent],
    started: Timestamp,
    now: Timestamp,
    read_percent: u8,
) -> Result<(), String> {
    let secs = now.duration_since(started).as_secs().max(0) as u64;
    match op {
        Op::Prune => {
            let r = events.iter().rev().find_map(|e| match e {
                MaintenanceEvent::Prune(r) => Some(r),
                _ => None,
            });
            let r = r.ok_or("the prune printed no result")?;
            st.bytes_reclaimed_total = st.bytes_reclaimed_total.saturating_add(r.bytes_freed);
            st.last_prune = Some(PruneResult {
                time: Time(now),
                duration_seconds: secs,
                bytes_reclaimed: r.bytes_freed,
                packs_deleted: r.packs_deleted,
                packs_marked: r.packs_newly_marked,
                packs_waiting: r.packs_waiting,
                snapshots: r.snapshots,
            });
        }
        Op::Check => {
            let (ok, errors) = events
                .iter()
                .rev()
                .find_map(|e| match e {
                    MaintenanceEvent::Summary { ok, errors, .. } => Some((*ok, *errors)),
                    _ => None,
                })
                .ok_or("the check printed no result")?;
            let problems: Vec<&str> = events
                .iter()
                .filter_map(|e| match e {
                    MaintenanceEvent::Error { message } => Some(message.as_str()),
                    _ => None,
                })
                .take(3)
                .collect();
            st.last_check = Some(CheckResult {
                time: Time(now),
                duration_seconds: secs,
                result: if ok { "Passed" } else { "Failed" }.into(),
                read_percent,
                errors,
                message: (!problems.is_empty()).then(|| problems.join("; ")),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mover::protocol::PruneReport;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn m(v: serde_json::Value) -> Maintenance {
        serde_json::from_value(v).expect("maintenance")
    }

    #[test]
    fn prune_runs_daily_and_soon_after_a_deletion() {
        let created = ts("2026-12-06T00:00:00Z");
        let st = BackupRepositoryStatus::default();
        let d = due(&Maintenance::default(), &st, created, None);
        assert_eq!(d.prune, ts("2026-12-07T00:00:00Z"));
        assert_eq!(d.check, ts("2026-12-13T00:00:00Z"));
        let d = due(
            &Maintenance::default(),
            &st,
            created,
            Some(ts("2026-12-06T10:00:00Z")),
        );
        assert_eq!(d.prune, ts("2026-12-06T11:00:00Z"));
        assert_eq!(next(&d, ts("2026-12-06T10:59:00Z")), None);
        assert_eq!(next(&d, ts("2026-12-06T11:00:00Z")), Some(Op::Prune));
    }

    #[test]
    fn marked_packs_are_pruned_again_after_their_grace() {
        let mut st = BackupRepositoryStatus::default();
        let events = [MaintenanceEvent::Prune(PruneReport {
            packs_newly_marked: 3,
            packs_waiting: 3,
            snapshots: 2,
            ..Default::default()
        })];
        let t0 = ts("2026-12-06T10:00:00Z");
        record(
            &mut st,
            Op::Prune,
            &events,
            t0,
            t0 + SignedDuration::from_secs(5),
            5,
        )
        .expect("recorded");
        let mm = m(serde_json::json!({"pruneGrace": "1m", "pruneEvery": "24h"}));
        let d = due(&mm, &st, t0, Some(t0));
        assert_eq!(d.prune, ts("2026-12-06T10:01:15Z"));
        let freed = [MaintenanceEvent::Prune(PruneReport {
            packs_deleted: 3,
            bytes_freed: 4096,
            ..Default::default()
        })];
        let t1 = ts("2026-12-06T10:01:15Z");
        record(&mut st, Op::Prune, &freed, t1, t1, 5).expect("recorded");
        assert_eq!(st.bytes_reclaimed_total, 4096);
        assert_eq!(due(&mm, &st, t0, None).prune, ts("2026-12-07T10:01:15Z"));
    }

    #[test]
    fn a_failed_run_waits_before_the_next_try() {
        let st = BackupRepositoryStatus {
            failed_time: Some(Time(ts("2026-12-06T10:00:00Z"))),
            ..Default::default()
        };
        let mm = m(serde_json::json!({"pruneEvery": "1m"}));
        let d = due(&mm, &st, ts("2026-12-06T09:00:00Z"), None);
        assert_eq!(d.prune, ts("2026-12-06T10:10:00Z"));
    }

    #[test]
    fn a_check_records_its_problems() {
        let mut st = BackupRepositoryStatus::default();
        let events = [
            MaintenanceEvent::Error {
                message: "pack 1 missing".into(),
            },
            MaintenanceEvent::Summary {
                ok: false,
                errors: 1,
                warnings: 0,
                packs: 9,
                packs_read: 1,
                snapshots: 2,
                seconds: 1.0,
            },
        ];
        let t = ts("2026-12-06T10:00:00Z");
        record(&mut st, Op::Check, &events, t, t, 5).expect("recorded");
        let c = st.last_check.expect("check");
        assert_eq!((c.result.as_str(), c.errors), ("Failed", 1));
        assert_eq!(c.message.as_deref(), Some("pack 1 missing"));
        assert!(
            record(
                &mut BackupRepositoryStatus::default(),
                Op::Prune,
                &[],
                t,
                t,
                5
            )
            .is_err()
        );
    }
}
