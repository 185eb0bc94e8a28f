//! When a schedule runs: its cadences (a cron expression in a time zone, or a fixed interval)
//! and the decision, at one instant, whether a run starts, waits or was missed. Pure.

use std::time::Duration;

use holdfast_api::schedule::{ConcurrencyPolicy, MissedRunPolicy};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::cron::Cron;
use crate::runtime::names::short_hash;

/// At most this many due slots are walked to count missed runs (a cadence of a minute down
/// for a week is ~10 000; the count is capped, the decision is the same).
const MAX_WALK: u32 = 10_000;

/// How often something runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// A cron expression evaluated in a time zone (DST rules in [`super::cron`]).
    Cron(Cron),
    /// Every interval, at multiples of it since the Unix epoch (UTC): `4h` runs at 00:00,
    /// 04:00, 08:00... UTC.
    Every(SignedDuration),
}

impl Cadence {
    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Self::Cron(c) => c.next_after(t, tz),
            Self::Every(d) => {
                let step = d.as_secs().max(1);
                let s = t.as_second();
                let next = (s.div_euclid(step) + 1) * step;
                Timestamp::from_second(next).ok()
            }
        }
    }

    /// An `every` cadence; at least a minute.
    pub fn every(d: Duration) -> Result<Self, String> {
        if d.as_secs() < 60 {
            return Err(format!("every must be at least 1m (got {}s)", d.as_secs()));
        }
        SignedDuration::try_from(d)
            .map(Self::Every)
            .map_err(|e| e.to_string())
    }
}

/// The slots due at `now`: after `cursor` and at or before `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The newest due slot.
    pub latest: Option<Timestamp>,
    /// How many slots are due (capped at [`MAX_WALK`]).
    pub count: u32,
    /// The first slot after `now`.
    pub next: Option<Timestamp>,
}

/// Walks the cadence from `cursor` to `now`. Pure.
pub fn due(c: &Cadence, cursor: Timestamp, now: Timestamp, tz: &TimeZone) -> Due {
    let mut d = Due {
        latest: None,
        count: 0,
        next: None,
    };
    let mut t = cursor;
    let mut jumped = false;
    while let Some(s) = c.next_after(t, tz) {
        if s > now {
            d.next = Some(s);
            break;
        }
        d.count = (d.count + 1).min(MAX_WALK);
        d.latest = Some(s);
        t = s;
        if d.count >= MAX_WALK && !jumped {
            // Only the newest due slot and the next one matter from here: jump to a window
            // before `now` as long as the span walked (which held MAX_WALK slots).
            jumped = true;
            t = t.max(now - now.duration_since(t).min(t.duration_since(cursor)));
        }
    }
    d
}

/// A stable pseudo-random delay in `[0, jitter)` for the run of `slot` of object `uid`.
pub fn jitter(uid: &str, slot: Timestamp, jitter: Option<Duration>) -> SignedDuration {
    let Some(j) = jitter.filter(|j| j.as_secs() > 0) else {
        return SignedDuration::ZERO;
    };
    let h = short_hash(&[uid, &slot.as_second().to_string()]);
    let n = u64::from_str_radix(&h, 16).unwrap_or(0);
    SignedDuration::from_secs((n % j.as_secs()) as i64)
}

/// What the schedule knows at one instant, for [`decide`].
#[derive(Debug, Clone)]
pub struct Situation {
    pub now: Timestamp,
    pub paused: bool,
    /// A run of this cadence is still going.
    pub busy: bool,
    pub concurrency: ConcurrencyPolicy,
    pub missed: MissedRunPolicy,
    pub deadline: SignedDuration,
    /// Delay of the newest due slot's start (jitter).
    pub delay: SignedDuration,
    /// Delay of the next slot's start.
    pub next_delay: SignedDuration,
}

/// What to do about a cadence now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Start the run of this slot.
    pub run: Option<Timestamp>,
    /// The new cursor (latest slot handled), when it moves.
    pub cursor: Option<Timestamp>,
    /// Slots counted as missed by this decision.
    pub missed: u32,
    /// When to look again (`None`: never, the cadence ended).
    pub wake: Option<Timestamp>,
}

/// Decides about the due slots of one cadence. Pure.
///
/// Paused: due slots are passed over (not missed). Otherwise the newest due slot runs once
/// its jittered start time has come, and the older due slots count as missed; a busy
/// schedule with `Forbid` waits. With `Skip`, a run later than the deadline is missed.
pub fn decide(d: &Due, s: &Situation) -> Decision {
    let mut out = Decision {
        run: None,
        cursor: None,
        missed: 0,
        wake: d.next.map(|n| n + s.next_delay),
    };
    let Some(latest) = d.latest else {
        return out;
    };
    if s.paused {
        out.cursor = Some(latest);
        return out;
    }
    let start = latest + s.delay;
    let late = s.missed == MissedRunPolicy::Skip && s.now > start + s.deadline;
    if late {
        out.cursor = Some(latest);
        out.missed = d.count;
        return out;
    }
    if s.now < start {
        out.wake = Some(start);
        return out;
    }
    if s.busy && s.concurrency == ConcurrencyPolicy::Forbid {
        // Looked at again when the running backup changes, and at the deadline.
        out.wake = Some(match s.missed {
            MissedRunPolicy::Skip => start + s.deadline + SignedDuration::from_secs(1),
            MissedRunPolicy::RunOnce => d.next.map_or(s.now, |n| n + s.next_delay),
        });
        return out;
    }
    out.run = Some(latest);
    out.cursor = Some(latest);
    out.missed = d.count - 1;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn every_min() -> Cadence {
        Cadence::every(Duration::from_secs(60)).expect("cadence")
    }

    fn situation(now: &str) -> Situation {
        Situation {
            now: ts(now),
            paused: false,
            busy: false,
            concurrency: ConcurrencyPolicy::Forbid,
            missed: MissedRunPolicy::RunOnce,
            deadline: SignedDuration::from_mins(5),
            delay: SignedDuration::ZERO,
            next_delay: SignedDuration::ZERO,
        }
    }

    #[test]
    fn intervals_align_to_the_epoch() {
        let c = Cadence::every(Duration::from_secs(4 * 3600)).expect("cadence");
        let n = c.next_after(ts("2026-12-06T05:30:00Z"), &TimeZone::UTC);
        assert_eq!(n, Some(ts("2026-12-06T08:00:00Z")));
        let n = c.next_after(ts("2026-12-06T08:00:00Z"), &TimeZone::UTC);
        assert_eq!(n, Some(ts("2026-12-06T12:00:00Z")));
        assert!(Cadence::every(Duration::from_secs(10)).is_err());
    }

    #[test]
    fn due_counts_the_slots_between_cursor_and_now() {
        let d = due(
            &every_min(),
            ts("2026-12-06T10:00:00Z"),
            ts("2026-12-06T10:03:30Z"),
            &TimeZone::UTC,
        );
        assert_eq!(d.count, 3);
        assert_eq!(d.latest, Some(ts("2026-12-06T10:03:00Z")));
        assert_eq!(d.next, Some(ts("2026-12-06T10:04:00Z")));
        let week = due(
            &every_min(),
            ts("2026-12-01T00:00:00Z"),
            ts("2026-12-08T00:00:30Z"),
            &TimeZone::UTC,
        );
        assert_eq!(week.latest, Some(ts("2026-12-08T00:00:00Z")));
        assert_eq!(week.next, Some(ts("2026-12-08T00:01:00Z")));
        assert_eq!(week.count, MAX_WALK);
    }

    #[test]
    fn the_newest_due_slot_runs_and_older_ones_are_missed() {
        let d = due(
            &every_min(),
            ts("2026-12-06T10:00:00Z"),
            ts("2026-12-06T10:03:30Z"),
            &TimeZone::UTC,
        );
        let x = decide(&d, &situation("2026-12-06T10:03:30Z"));
        assert_eq!(x.run, Some(ts("2026-12-06T10:03:00Z")));
        assert_eq!(x.cursor, x.run);
        assert_eq!(x.missed, 2);
        assert_eq!(x.wake, Some(ts("2026-12-06T10:04:00Z")));
    }

    #[test]
    fn skip_misses_a_run_beyond_the_deadline_and_runs_one_within_it() {
        let cursor = ts("2026-12-06T09:00:00Z");
        let hourly = Cadence::every(Duration::from_secs(3600)).expect("cadence");
        let now = ts("2026-12-06T10:20:00Z");
        let d = due(&hourly, cursor, now, &TimeZone::UTC);
        let mut s = situation("2026-12-06T10:20:00Z");
        s.missed = MissedRunPolicy::Skip;
        let x = decide(&d, &s);
        assert_eq!((x.run, x.missed), (None, 1));
        assert_eq!(x.cursor, Some(ts("2026-12-06T10:00:00Z")));
        s.now = ts("2026-12-06T10:04:00Z");
        let x = decide(&due(&hourly, cursor, s.now, &TimeZone::UTC), &s);
        assert_eq!((x.run, x.missed), (Some(ts("2026-12-06T10:00:00Z")), 0));
        s.missed = MissedRunPolicy::RunOnce;
        s.now = now;
        let x = decide(&d, &s);
        assert_eq!(x.run, Some(ts("2026-12-06T10:00:00Z")), "run once, late");
    }

    #[test]
    fn paused_passes_over_due_slots_without_missing_them() {
        let d = due(
            &every_min(),
            ts("2026-12-06T10:00:00Z"),
            ts("2026-12-06T10:05:00Z"),
            &TimeZone::UTC,
        );
        let mut s = situation("2026-12-06T10:05:00Z");
        s.paused = true;
        let x = decide(&d, &s);
        assert_eq!((x.run, x.missed), (None, 0));
        assert_eq!(x.cursor, Some(ts("2026-12-06T10:05:00Z")));
    }

    #[test]
    fn forbid_waits_for_the_running_backup_allow_does_not() {
        let d = due(
            &every_min(),
            ts("2026-12-06T10:00:00Z"),
            ts("2026-12-06T10:01:10Z"),
            &TimeZone::UTC,
        );
        let mut s = situation("2026-12-06T10:01:10Z");
        s.busy = true;
        let x = decide(&d, &s);
        assert_eq!((x.run, x.cursor, x.missed), (None, None, 0));
        s.concurrency = ConcurrencyPolicy::Allow;
        assert_eq!(decide(&d, &s).run, Some(ts("2026-12-06T10:01:00Z")));
    }

    #[test]
    fn jitter_delays_the_start_stably_and_within_bounds() {
        let slot = ts("2026-12-06T10:00:00Z");
        let j = Some(Duration::from_secs(300));
        let a = jitter("uid-1", slot, j);
        assert_eq!(a, jitter("uid-1", slot, j));
        assert!(a >= SignedDuration::ZERO && a < SignedDuration::from_secs(300));
        assert_eq!(jitter("uid-1", slot, None), SignedDuration::ZERO);
        let spread: std::collections::BTreeSet<_> = (0..20)
            .map(|i| jitter(&format!("uid-{i}"), slot, j))
            .collect();
        assert!(spread.len() > 10, "delays differ between schedules");
        let d = due(
            &every_min(),
            slot - SignedDuration::from_mins(1),
            slot,
            &TimeZone::UTC,
        );
        let mut s = situation("2026-12-06T10:00:00Z");
        s.delay = SignedDuration::from_secs(30);
        let x = decide(&d, &s);
        assert_eq!(x.run, None);
        assert_eq!(x.wake, Some(ts("2026-12-06T10:00:30Z")));
    }
}
