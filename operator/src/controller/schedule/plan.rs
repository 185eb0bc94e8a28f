//! What a Schedule asks for, checked: its time zone and one or two tracks (a cadence, the
//! volume mode of its runs, and the retention of its points), from `spec.schedule` with
//! `spec.keep` or from an SLAPolicy. Pure but for reading the policy.

use holdfast_api::backup::VolumeMode;
use holdfast_api::common::Retention;
use holdfast_api::policy::{Cadence as CadenceSpec, SLAPolicy};
use holdfast_api::reasons::ScheduleReason;
use holdfast_api::schedule::Schedule;
use jiff::SignedDuration;
use jiff::tz::TimeZone;

use super::cadence::Cadence;
use super::cron::Cron;
use super::retention::Rules;
use crate::runtime::error::Refusal;

/// Which points a track makes; also the value of the `holdfast.dev/cadence` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// In-cluster snapshots only.
    Snapshot,
    /// Copies in object storage (the snapshot is dropped after the copy).
    Copy,
    /// Snapshot and copy (a cron schedule with the default mode, or both SLA cadences due
    /// at once).
    Both,
}

impl Track {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Copy => "copy",
            Self::Both => "both",
        }
    }

    /// The track of a label value (unknown values: `Both`, the one deleted last).
    pub fn from_label(v: Option<&str>) -> Self {
        match v {
            Some("snapshot") => Self::Snapshot,
            Some("copy") => Self::Copy,
            _ => Self::Both,
        }
    }

    /// The Backups' volume mode.
    pub fn mode(self) -> VolumeMode {
        match self {
            Self::Snapshot => VolumeMode::Snapshot,
            Self::Copy => VolumeMode::Copy,
            Self::Both => VolumeMode::SnapshotAndCopy,
        }
    }

    fn of_mode(m: VolumeMode) -> Self {
        match m {
            VolumeMode::Snapshot => Self::Snapshot,
            VolumeMode::Copy => Self::Copy,
            VolumeMode::SnapshotAndCopy => Self::Both,
        }
    }

    /// Whether points of this track keep VolumeSnapshots (`s`) or copies (`!s`).
    pub fn has(self, snapshots: bool) -> bool {
        match self {
            Self::Snapshot => snapshots,
            Self::Copy => !snapshots,
            Self::Both => true,
        }
    }
}

/// One cadence of a schedule and how long its points are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub track: Track,
    pub cadence: Cadence,
    pub keep: Rules,
}

/// A checked schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub tz: TimeZone,
    /// The cron schedule's one line, or the policy's snapshot and/or copy lines.
    pub lines: Vec<Line>,
    /// The location copies go to (the policy's), when set.
    pub location: Option<String>,
}

impl Plan {
    /// The longest gap between two of the next `SLOTS` runs after `now`, of the line that
    /// runs most often: how old the newest backup may become on a good day (metric
    /// `holdfast_schedule_max_interval_seconds`, used by the alert on late schedules).
    pub fn max_interval(&self, now: jiff::Timestamp) -> Option<std::time::Duration> {
        const SLOTS: usize = 8;
        self.lines
            .iter()
            .filter_map(|l| {
                let mut t = l.cadence.next_after(now, &self.tz)?;
                let mut widest = std::time::Duration::ZERO;
                for _ in 0..SLOTS {
                    let n = l.cadence.next_after(t, &self.tz)?;
                    widest = widest.max(n.duration_since(t).unsigned_abs());
                    t = n;
                }
                Some(widest)
            })
            .min()
    }

    /// The line of `track`, if the plan has one.
    #[cfg(test)]
    pub fn line(&self, track: Track) -> Option<&Line> {
        self.lines.iter().find(|l| l.track == track)
    }
}

/// Checks a schedule against its policy (`None`: not found or none named).
pub fn resolve(s: &Schedule, policy: Option<&SLAPolicy>) -> Result<Plan, Refusal> {
    let tz_name = s.spec.time_zone.as_deref().unwrap_or("UTC");
    let tz = TimeZone::get(tz_name).map_err(|e| {
        invalid(format!(
            "spec.timeZone {tz_name:?} is not a known IANA time zone ({e}); use a name such as UTC or Europe/Berlin"
        ))
    })?;
    if let Some(expr) = &s.spec.schedule {
        let cron =
            Cron::parse(expr).map_err(|e| invalid(format!("spec.schedule {expr:?}: {e}")))?;
        let keep = rules(s.spec.keep.as_ref(), "spec.keep")?;
        let track = Track::of_mode(s.spec.template.spec.volumes.mode);
        return Ok(Plan {
            tz,
            lines: vec![Line {
                track,
                cadence: Cadence::Cron(cron),
                keep,
            }],
            location: None,
        });
    }
    let (name, p) = match (&s.spec.inline_policy, policy) {
        (Some(inline), _) => ("spec.inlinePolicy".to_string(), inline),
        (None, Some(p)) => (
            format!(
                "SLAPolicy {}",
                p.metadata.name.as_deref().unwrap_or_default()
            ),
            &p.spec,
        ),
        (None, None) => {
            let name = s.spec.policy.as_deref().unwrap_or_default();
            return Err(Refusal::new(
                ScheduleReason::PolicyNotFound,
                format!(
                    "SLAPolicy {name:?} (spec.policy) does not exist; create it or name one of `kubectl get slapolicies`"
                ),
            ));
        }
    };
    let mut lines = Vec::new();
    for (track, c, field) in [
        (Track::Snapshot, &p.snapshots, "snapshots"),
        (Track::Copy, &p.copies, "copies"),
    ] {
        if let Some(c) = c {
            lines.push(line(track, c, &format!("{name} {field}"))?);
        }
    }
    if lines.is_empty() {
        return Err(invalid(format!("{name} has neither snapshots nor copies")));
    }
    Ok(Plan {
        tz,
        lines,
        location: p.location.clone(),
    })
}

fn line(track: Track, c: &CadenceSpec, field: &str) -> Result<Line, Refusal> {
    let cadence = match (&c.schedule, c.every) {
        (Some(expr), _) => Cadence::Cron(
            Cron::parse(expr).map_err(|e| invalid(format!("{field}.schedule {expr:?}: {e}")))?,
        ),
        (None, Some(d)) => {
            Cadence::every(d.as_std()).map_err(|e| invalid(format!("{field}.every: {e}")))?
        }
        (None, None) => {
            return Err(invalid(format!("{field} needs every or schedule")));
        }
    };
    Ok(Line {
        track,
        cadence,
        keep: rules(Some(&c.keep), &format!("{field}.keep"))?,
    })
}

/// The retention engine's rules of an API retention.
pub fn rules(r: Option<&Retention>, field: &str) -> Result<Rules, Refusal> {
    let Some(r) = r.filter(|r| !r.is_empty()) else {
        return Err(invalid(format!(
            "{field} needs at least one rule (last, hourly, daily, weekly, monthly, yearly or within), for example keep: {{daily: 7}}"
        )));
    };
    let within = match r.within {
        Some(d) => Some(
            SignedDuration::try_from(d.as_std())
                .map_err(|e| invalid(format!("{field}.within: {e}")))?,
        ),
        None => None,
    };
    Ok(Rules {
        last: r.last,
        hourly: r.hourly,
        daily: r.daily,
        weekly: r.weekly,
        monthly: r.monthly,
        yearly: r.yearly,
        within,
    })
}

fn invalid(message: String) -> Refusal {
    Refusal::new(ScheduleReason::InvalidSchedule, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::policy::SLAPolicySpec;
    use holdfast_api::schedule::ScheduleSpec;

    fn schedule(v: serde_json::Value) -> Schedule {
        let spec: ScheduleSpec = serde_json::from_value(v).expect("spec");
        Schedule::new("s", spec)
    }

    #[test]
    fn a_cron_schedule_is_one_line_in_its_time_zone() {
        let s = schedule(serde_json::json!({
            "schedule": "0 1 * * *", "keep": {"daily": 7}, "timeZone": "Europe/Berlin",
            "template": {"spec": {"volumes": {"mode": "Snapshot"}}}
        }));
        let p = resolve(&s, None).expect("plan");
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.lines[0].track, Track::Snapshot);
        assert_eq!(p.lines[0].keep.daily, Some(7));
        assert_eq!(p.tz, TimeZone::get("Europe/Berlin").expect("tz"));
    }

    #[test]
    fn bad_input_names_the_field() {
        let s = schedule(serde_json::json!({
            "schedule": "0 25 * * *", "keep": {"daily": 7}, "template": {}
        }));
        let e = resolve(&s, None).expect_err("bad hour");
        assert!(e.message.contains("spec.schedule"), "{}", e.message);
        let s = schedule(serde_json::json!({
            "schedule": "@daily", "keep": {"daily": 7}, "timeZone": "Mars/Olympus", "template": {}
        }));
        let e = resolve(&s, None).expect_err("bad zone");
        assert!(e.message.contains("spec.timeZone"), "{}", e.message);
        let s = schedule(serde_json::json!({"policy": "gold", "template": {}}));
        let e = resolve(&s, None).expect_err("no policy");
        assert_eq!(e.reason, "PolicyNotFound");
    }

    #[test]
    fn an_inline_policy_is_used_like_a_named_one() {
        let s = schedule(serde_json::json!({
            "inlinePolicy": {
                "snapshots": {"every": "1h", "keep": {"last": 3}},
                "copies": {"schedule": "0 2 * * *", "keep": {"daily": 7}}
            },
            "template": {}
        }));
        let p = resolve(&s, None).expect("plan");
        assert_eq!(p.lines.len(), 2);
        assert_eq!(p.line(Track::Copy).map(|l| l.keep.daily), Some(Some(7)));
        let bad = schedule(serde_json::json!({
            "inlinePolicy": {"copies": {"schedule": "0 25 * * *", "keep": {"daily": 7}}},
            "template": {}
        }));
        let e = resolve(&bad, None).expect_err("bad hour");
        assert!(
            e.message.starts_with("spec.inlinePolicy copies.schedule"),
            "{}",
            e.message
        );
    }

    #[test]
    fn every_shipped_preset_resolves() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/presets/slapolicies.yaml"
        );
        let text = std::fs::read_to_string(path).expect("presets");
        let s = schedule(serde_json::json!({"policy": "p", "template": {}}));
        let mut names = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let p: SLAPolicy = serde::Deserialize::deserialize(doc).expect("an SLAPolicy");
            let plan = resolve(&s, Some(&p))
                .unwrap_or_else(|e| panic!("{:?}: {}", p.metadata.name, e.message));
            assert!(!plan.lines.is_empty());
            names.push(p.metadata.name.unwrap_or_default());
        }
        assert_eq!(
            names,
            [
                "gold", "silver", "bronze", "test", "daily", "weekly", "monthly"
            ]
        );
    }

    #[test]
    fn a_policy_gives_a_snapshot_and_a_copy_line() {
        let s = schedule(serde_json::json!({"policy": "gold", "template": {}}));
        let spec: SLAPolicySpec = serde_json::from_value(serde_json::json!({
            "snapshots": {"every": "4h", "keep": {"within": "24h"}},
            "copies": {"schedule": "0 1 * * *", "keep": {"daily": 30, "monthly": 12}},
            "location": "primary"
        }))
        .expect("policy");
        let p = resolve(&s, Some(&SLAPolicy::new("gold", spec))).expect("plan");
        assert_eq!(p.lines.len(), 2);
        assert_eq!(
            p.line(Track::Snapshot).map(|l| l.keep.within),
            Some(Some(SignedDuration::from_hours(24)))
        );
        assert_eq!(p.line(Track::Copy).map(|l| l.keep.monthly), Some(Some(12)));
        assert_eq!(p.location.as_deref(), Some("primary"));
    }
}
