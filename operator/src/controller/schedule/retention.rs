//! Retention engine of scheduled backups: pure, with the clock (`now`) and time zone injected.
//! Completed and PartiallyFailed runs are restore points: `last`, the calendar buckets (civil time
//! of the zone, ISO weeks) and `within` keep them as a union; TTL-expired points are ignored by the
//! rules; no rule at all keeps every restore point. The newest Completed point (else the newest
//! PartiallyFailed one) is always kept; Failed runs are kept only while newer than it.

use jiff::{SignedDuration, Timestamp, civil, tz::TimeZone};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The run finished without errors: a restore point.
    Completed,
    /// The run finished with some errors: still a restore point.
    PartiallyFailed,
    /// The run failed: not a restore point.
    Failed,
}

/// One run of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Unique name (the Backup's name).
    pub name: String,
    /// When the point was taken (the run's start time).
    pub time: Timestamp,
    /// How the run ended.
    pub outcome: Outcome,
    /// Optional per-point expiry (a TTL on the Backup): once `expires <= now` no rule keeps the
    /// point and the rules do not count it; only the newest-good-point rule can still keep it.
    pub expires: Option<Timestamp>,
}

/// Retention rules; all optional; they combine as a union ("keep if any rule keeps it").
/// With no rule set at all, every restore point is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep the newest N restore points.
    pub last: Option<u32>,
    /// Keep the newest point of each of the newest N civil hours that have one.
    pub hourly: Option<u32>,
    /// Keep the newest point of each of the newest N civil days that have one.
    pub daily: Option<u32>,
    /// Keep the newest point of each of the newest N ISO 8601 weeks that have one.
    pub weekly: Option<u32>,
    /// Keep the newest point of each of the newest N civil months that have one.
    pub monthly: Option<u32>,
    /// Keep the newest point of each of the newest N civil years that have one.
    pub yearly: Option<u32>,
    /// Keep every restore point taken at or after `now - within`.
    pub within: Option<SignedDuration>,
}

/// Why a point is kept (a point may have several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    /// Among the newest `last` restore points (or kept because no rule is set).
    Last,
    /// Newest point of one of the newest `hourly` civil hours.
    Hourly,
    /// Newest point of one of the newest `daily` civil days.
    Daily,
    /// Newest point of one of the newest `weekly` ISO weeks.
    Weekly,
    /// Newest point of one of the newest `monthly` civil months.
    Monthly,
    /// Newest point of one of the newest `yearly` civil years.
    Yearly,
    /// Taken within the `within` duration before `now`.
    Within,
    /// The newest Completed point (or, with none, the newest PartiallyFailed one): always kept.
    NewestCompleted,
    /// A Failed run newer than the newest good point (or with no restore point at all).
    NewerThanNewestCompleted,
}

/// The decision for a set of points.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kept points (by name) with every reason that keeps them, newest first.
    pub keep: Vec<(String, Vec<Why>)>,
    /// Points to expire (by name), newest first.
    pub expire: Vec<String>,
}

/// Decides which of `points` to keep and which to expire under `rules`, at instant `now`, with
/// calendar buckets computed in the civil time of `tz`. Every point lands in exactly one list.
pub fn decide(points: &[Point], rules: &Rules, now: Timestamp, tz: &TimeZone) -> Decision {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.name.cmp(&b.name)));
    let eligible: Vec<usize> = (0..sorted.len())
        .filter(|&i| is_restore_point(sorted[i].outcome) && !ttl_expired(sorted[i], now))
        .collect();
    let mut why = vec![Reasons::default(); sorted.len()];
    apply_rules(&sorted, &eligible, rules, now, tz, &mut why);
    protect(&sorted, &mut why);
    collect(&sorted, why)
}

/// A calendar granularity of the bucket rules.
#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// A calendar bucket: (year, month or ISO week, day, hour), unused parts zero.
type Bucket = (i16, i8, i8, i8);

impl Period {
    /// The bucket of a civil date-time.
    fn bucket(self, dt: civil::DateTime) -> Bucket {
        match self {
            Period::Hour => (dt.year(), dt.month(), dt.day(), dt.hour()),
            Period::Day => (dt.year(), dt.month(), dt.day(), 0),
            Period::Week => {
                let week = dt.date().iso_week_date();
                (week.year(), week.week(), 0, 0)
            }
            Period::Month => (dt.year(), dt.month(), 0, 0),
            Period::Year => (dt.year(), 0, 0, 0),
        }
    }
}

/// A set of [`Why`], one bit per variant.
#[derive(Debug, Clone, Copy, Default)]
struct Reasons(u16);

impl Reasons {
    const ALL: [Why; 9] = [
        Why::Last,
        Why::Hourly,
        Why::Daily,
        Why::Weekly,
        Why::Monthly,
        Why::Yearly,
        Why::Within,
        Why::NewestCompleted,
        Why::NewerThanNewestCompleted,
    ];

    fn add(&mut self, why: Why) {
        self.0 |= 1 << (why as u16);
    }

    /// The reasons in `Why` order, without duplicates.
    fn to_vec(self) -> Vec<Why> {
        let mut out = Vec::with_capacity(self.0.count_ones() as usize);
        for why in Self::ALL {
            if self.0 & (1 << (why as u16)) != 0 {
                out.push(why);
            }
        }
        out
    }
}

/// Completed and PartiallyFailed runs can be restored from; Failed ones cannot.
fn is_restore_point(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Completed | Outcome::PartiallyFailed)
}

/// Whether the point's TTL has run out at `now`.
fn ttl_expired(point: &Point, now: Timestamp) -> bool {
    point.expires.is_some_and(|expires| expires <= now)
}

/// A rule count as a length.
fn limit(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Applies the user rules to the eligible (unexpired restore) points, given as sorted indices.
fn apply_rules(
    sorted: &[&Point],
    eligible: &[usize],
    rules: &Rules,
    now: Timestamp,
    tz: &TimeZone,
    why: &mut [Reasons],
) {
    if *rules == Rules::default() {
        eligible.iter().for_each(|&i| why[i].add(Why::Last));
        return;
    }
    if let Some(n) = rules.last {
        eligible
            .iter()
            .take(limit(n))
            .for_each(|&i| why[i].add(Why::Last));
    }
    if let Some(within) = rules.within {
        for &i in eligible {
            if now.duration_since(sorted[i].time) <= within {
                why[i].add(Why::Within);
            }
        }
    }
    apply_periodic(sorted, eligible, rules, tz, why);
}

/// Applies the calendar bucket rules, in the civil time of `tz`.
fn apply_periodic(
    sorted: &[&Point],
    eligible: &[usize],
    rules: &Rules,
    tz: &TimeZone,
    why: &mut [Reasons],
) {
    let periodic = [
        (rules.hourly, Period::Hour, Why::Hourly),
        (rules.daily, Period::Day, Why::Daily),
        (rules.weekly, Period::Week, Why::Weekly),
        (rules.monthly, Period::Month, Why::Monthly),
        (rules.yearly, Period::Year, Why::Yearly),
    ];
    if periodic.iter().all(|(n, ..)| n.is_none()) {
        return;
    }
    let civil: Vec<civil::DateTime> = eligible
        .iter()
        .map(|&i| tz.to_datetime(sorted[i].time))
        .collect();
    for (n, period, reason) in periodic {
        if let Some(n) = n {
            keep_buckets(eligible, &civil, limit(n), period, reason, why);
        }
    }
}

/// Walking newest first, keeps the first (newest) point met in each bucket, until `n` distinct
/// buckets are kept.
fn keep_buckets(
    eligible: &[usize],
    civil: &[civil::DateTime],
    n: usize,
    period: Period,
    reason: Why,
    why: &mut [Reasons],
) {
    let mut seen: Vec<Bucket> = Vec::new(); // sorted newest first
    for (&i, &dt) in eligible.iter().zip(civil) {
        if seen.len() >= n {
            break;
        }
        let bucket = period.bucket(dt);
        // Newest first, buckets normally only go back in time: a push. A DST fold crossing a
        // bucket boundary can come back to a newer bucket, which the search handles.
        let new = if seen.last().is_none_or(|&last| bucket < last) {
            seen.push(bucket);
            true
        } else {
            insert_new(&mut seen, bucket)
        };
        if new {
            why[i].add(reason);
        }
    }
}

/// Inserts `bucket` into `seen` (sorted newest first) unless present; returns whether it was new.
fn insert_new(seen: &mut Vec<Bucket>, bucket: Bucket) -> bool {
    match seen.binary_search_by(|probe| bucket.cmp(probe)) {
        Ok(_) => false,
        Err(at) => {
            seen.insert(at, bucket);
            true
        }
    }
}

/// Keeps the newest good point whatever the rules say, and the Failed runs newer than it.
fn protect(sorted: &[&Point], why: &mut [Reasons]) {
    let newest = |outcome| sorted.iter().position(|p| p.outcome == outcome);
    let anchor = newest(Outcome::Completed).or_else(|| newest(Outcome::PartiallyFailed));
    if let Some(a) = anchor {
        why[a].add(Why::NewestCompleted);
    }
    let newer = anchor.unwrap_or(sorted.len());
    for (point, reasons) in sorted.iter().zip(why.iter_mut()).take(newer) {
        if point.outcome == Outcome::Failed {
            reasons.add(Why::NewerThanNewestCompleted);
        }
    }
}

/// Splits the sorted points into kept (with their reasons) and expired.
fn collect(sorted: &[&Point], why: Vec<Reasons>) -> Decision {
    let mut decision = Decision::default();
    for (point, reasons) in sorted.iter().zip(why) {
        if reasons.0 == 0 {
            decision.expire.push(point.name.clone());
        } else {
            decision.keep.push((point.name.clone(), reasons.to_vec()));
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    use jiff::{SignedDuration, Timestamp, tz::TimeZone};

    use super::{Decision, Outcome, Point, Rules, Why, decide};
    use Outcome::{Completed, Failed, PartiallyFailed};
    use Why::{
        Daily, Hourly, Last, Monthly, NewerThanNewestCompleted as Newer, NewestCompleted as Good,
    };
    use Why::{Weekly, Within, Yearly};

    fn at(s: &str) -> Timestamp {
        s.parse().expect("valid RFC 3339 timestamp")
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).expect("zone in the bundled tzdb")
    }

    /// A point named after its time, e.g. "2026-10-25T01:00:00Z".
    fn pt(time: &str, outcome: Outcome) -> Point {
        let time = at(time);
        Point {
            name: time.to_string(),
            time,
            outcome,
            expires: None,
        }
    }

    fn with_ttl(mut point: Point, expires: &str) -> Point {
        point.expires = Some(at(expires));
        point
    }

    /// `count` hourly points from `start`, outcome chosen by index.
    fn hourly(start: &str, count: i64, outcome: impl Fn(i64) -> Outcome) -> Vec<Point> {
        let start = at(start);
        (0..count)
            .map(|i| {
                let time = start
                    .checked_add(SignedDuration::from_hours(i))
                    .expect("in range");
                Point {
                    name: time.to_string(),
                    time,
                    outcome: outcome(i),
                    expires: None,
                }
            })
            .collect()
    }

    fn newest(points: &[Point]) -> Timestamp {
        points
            .iter()
            .map(|p| p.time)
            .max()
            .expect("non-empty fixture")
    }

    fn kept(d: &Decision) -> Vec<(&str, Vec<Why>)> {
        d.keep
            .iter()
            .map(|(n, w)| (n.as_str(), w.clone()))
            .collect()
    }

    fn expired(d: &Decision) -> Vec<&str> {
        d.expire.iter().map(String::as_str).collect()
    }

    fn kept_names(d: &Decision) -> Vec<&str> {
        d.keep.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn reasons<'a>(d: &'a Decision, name: &str) -> &'a [Why] {
        let found = d.keep.iter().find(|(n, _)| n == name);
        &found
            .unwrap_or_else(|| panic!("{name} not kept in {d:?}"))
            .1
    }

    #[test]
    fn empty_input_gives_empty_decision() {
        assert_eq!(
            decide(
                &[],
                &Rules::default(),
                at("2026-01-01T00:00:00Z"),
                &TimeZone::UTC
            ),
            Decision::default()
        );
    }

    #[test]
    fn last_keeps_newest_restore_points() {
        let points = vec![
            pt("2026-01-01T00:00:00Z", Completed),
            pt("2026-01-01T01:00:00Z", Completed),
            pt("2026-01-01T02:00:00Z", PartiallyFailed),
            pt("2026-01-01T03:00:00Z", Failed),
            pt("2026-01-01T04:00:00Z", Completed),
            pt("2026-01-01T05:00:00Z", Failed),
        ];
        let rules = Rules {
            last: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-01-01T05:00:00Z", vec![Newer]),
                ("2026-01-01T04:00:00Z", vec![Last, Good]),
                ("2026-01-01T02:00:00Z", vec![Last]),
                ("2026-01-01T01:00:00Z", vec![Last]),
            ]
        );
        assert_eq!(
            expired(&d),
            vec!["2026-01-01T03:00:00Z", "2026-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn hourly_keeps_newest_point_of_each_hour_that_has_one() {
        let points: Vec<Point> = ["10:05", "10:40", "11:10", "11:50", "13:00", "13:30"]
            .iter()
            .map(|hm| pt(&format!("2026-05-10T{hm}:00Z"), Completed))
            .collect();
        let rules = Rules {
            hourly: Some(2),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-05-10T13:30:00Z", vec![Hourly, Good]),
                ("2026-05-10T11:50:00Z", vec![Hourly])
            ]
        );
        assert_eq!(
            expired(&d),
            vec![
                "2026-05-10T13:00:00Z",
                "2026-05-10T11:10:00Z",
                "2026-05-10T10:40:00Z",
                "2026-05-10T10:05:00Z"
            ]
        );
    }

    #[test]
    fn daily_uses_civil_days_of_the_zone() {
        let points = vec![
            pt("2026-05-10T12:00:00Z", Completed),
            pt("2026-05-10T21:30:00Z", Completed), // 23:30 CEST, May 10
            pt("2026-05-10T22:30:00Z", Completed), // 00:30 CEST, May 11
        ];
        let rules = Rules {
            daily: Some(2),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &zone("Europe/Berlin"));
        assert_eq!(
            kept(&d),
            vec![
                ("2026-05-10T22:30:00Z", vec![Daily, Good]),
                ("2026-05-10T21:30:00Z", vec![Daily])
            ]
        );
        assert_eq!(expired(&d), vec!["2026-05-10T12:00:00Z"]);
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(kept(&d), vec![("2026-05-10T22:30:00Z", vec![Daily, Good])]);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_the_year_boundary() {
        let points: Vec<Point> = [
            "2026-12-20",
            "2026-12-21",
            "2026-12-27",
            "2026-12-28",
            "2026-12-31",
            "2027-01-03",
            "2027-01-04",
        ]
        .iter()
        .map(|day| pt(&format!("{day}T12:00:00Z"), Completed))
        .collect();
        let rules = Rules {
            weekly: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        // 2027-01-04 is 2027-W01; 2026-12-28 .. 2027-01-03 is 2026-W53; 2026-12-21 .. 27 is W52.
        let dec31 = jiff::civil::date(2026, 12, 31).iso_week_date();
        assert_eq!((dec31.year(), dec31.week()), (2026, 53));
        assert_eq!(
            kept(&d),
            vec![
                ("2027-01-04T12:00:00Z", vec![Weekly, Good]),
                ("2027-01-03T12:00:00Z", vec![Weekly]),
                ("2026-12-27T12:00:00Z", vec![Weekly]),
            ]
        );
        assert_eq!(
            expired(&d),
            vec![
                "2026-12-31T12:00:00Z",
                "2026-12-28T12:00:00Z",
                "2026-12-21T12:00:00Z",
                "2026-12-20T12:00:00Z"
            ]
        );
    }

    #[test]
    fn weekly_uses_civil_time_of_the_zone() {
        let points = vec![
            pt("2026-12-27T12:00:00Z", Completed),
            pt("2026-12-27T22:30:00Z", Completed), // Sunday 23:30 CET: 2026-W52
            pt("2026-12-27T23:30:00Z", Completed), // Monday 00:30 CET: 2026-W53
        ];
        let rules = Rules {
            weekly: Some(2),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &zone("Europe/Berlin"));
        assert_eq!(
            kept(&d),
            vec![
                ("2026-12-27T23:30:00Z", vec![Weekly, Good]),
                ("2026-12-27T22:30:00Z", vec![Weekly])
            ]
        );
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(kept_names(&d), vec!["2026-12-27T23:30:00Z"]);
    }

    #[test]
    fn monthly_keeps_newest_point_of_each_civil_month() {
        let points = vec![
            pt("2025-12-01T00:00:00Z", Completed),
            pt("2025-12-31T12:00:00Z", Completed),
            pt("2026-01-31T22:30:00Z", Completed), // 23:30 CET, January
            pt("2026-01-31T23:30:00Z", Completed), // 00:30 CET, February
            pt("2026-02-15T12:00:00Z", Completed),
        ];
        let rules = Rules {
            monthly: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &zone("Europe/Berlin"));
        assert_eq!(
            kept(&d),
            vec![
                ("2026-02-15T12:00:00Z", vec![Monthly, Good]),
                ("2026-01-31T22:30:00Z", vec![Monthly]),
                ("2025-12-31T12:00:00Z", vec![Monthly]),
            ]
        );
        assert_eq!(
            expired(&d),
            vec!["2026-01-31T23:30:00Z", "2025-12-01T00:00:00Z"]
        );
    }

    #[test]
    fn yearly_keeps_newest_point_of_each_civil_year() {
        let points = vec![
            pt("2023-07-01T00:00:00Z", Completed),
            pt("2024-12-31T22:30:00Z", Completed), // 2024 in Berlin
            pt("2024-12-31T23:30:00Z", Completed), // 2025 in Berlin
            pt("2025-06-01T00:00:00Z", Completed),
            pt("2025-12-31T22:30:00Z", Completed), // 2025 in Berlin
            pt("2025-12-31T23:30:00Z", Completed), // 2026 in Berlin
        ];
        let rules = Rules {
            yearly: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &zone("Europe/Berlin"));
        assert_eq!(
            kept(&d),
            vec![
                ("2025-12-31T23:30:00Z", vec![Yearly, Good]),
                ("2025-12-31T22:30:00Z", vec![Yearly]),
                ("2024-12-31T22:30:00Z", vec![Yearly]),
            ]
        );
        assert_eq!(
            expired(&d),
            vec![
                "2025-06-01T00:00:00Z",
                "2024-12-31T23:30:00Z",
                "2023-07-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn within_keeps_restore_points_at_or_after_the_cutoff() {
        let points = vec![
            pt("2026-03-01T10:59:59Z", Completed),
            pt("2026-03-01T11:00:00Z", PartiallyFailed), // exactly now - 24h
            pt("2026-03-01T20:00:00Z", Failed),
            pt("2026-03-02T10:00:00Z", Completed),
            pt("2026-03-02T10:30:00Z", PartiallyFailed),
        ];
        let rules = Rules {
            within: Some(SignedDuration::from_hours(24)),
            ..Rules::default()
        };
        let d = decide(&points, &rules, at("2026-03-02T11:00:00Z"), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-03-02T10:30:00Z", vec![Within]),
                ("2026-03-02T10:00:00Z", vec![Within, Good]),
                ("2026-03-01T11:00:00Z", vec![Within]),
            ]
        );
        assert_eq!(
            expired(&d),
            vec!["2026-03-01T20:00:00Z", "2026-03-01T10:59:59Z"]
        );
    }

    #[test]
    fn rules_combine_as_a_union() {
        let points = hourly("2026-04-01T20:00:00Z", 8, |_| Completed); // 20:00 .. 03:00 next day
        let rules = Rules {
            last: Some(2),
            daily: Some(2),
            within: Some(SignedDuration::from_mins(150)),
            yearly: Some(0),
            ..Rules::default()
        };
        let d = decide(&points, &rules, at("2026-04-02T03:00:00Z"), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-04-02T03:00:00Z", vec![Last, Daily, Within, Good]),
                ("2026-04-02T02:00:00Z", vec![Last, Within]),
                ("2026-04-02T01:00:00Z", vec![Within]),
                ("2026-04-01T23:00:00Z", vec![Daily]),
            ]
        );
        assert_eq!(d.expire.len(), 4);
    }

    #[test]
    fn ttl_expired_points_are_neither_kept_nor_counted() {
        let mut points = hourly("2026-01-01T00:00:00Z", 7, |_| Completed); // 00:00 .. 06:00
        let now = "2026-01-01T06:00:00Z";
        points[6].expires = Some(at("2026-01-01T05:30:00Z"));
        points[5].expires = Some(at(now)); // expires == now counts as expired
        points[4].expires = Some(at("2026-01-02T00:00:00Z")); // future TTL: no effect
        points[1].expires = Some(at("2026-01-02T00:00:00Z")); // future TTL does not keep it
        let rules = Rules {
            last: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, at(now), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-01-01T06:00:00Z", vec![Good]),
                ("2026-01-01T04:00:00Z", vec![Last]),
                ("2026-01-01T03:00:00Z", vec![Last]),
                ("2026-01-01T02:00:00Z", vec![Last]),
            ]
        );
        assert_eq!(
            expired(&d),
            vec![
                "2026-01-01T05:00:00Z",
                "2026-01-01T01:00:00Z",
                "2026-01-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn all_points_past_ttl_keep_only_the_newest_completed() {
        let points: Vec<Point> = hourly("2026-01-01T00:00:00Z", 48, |i| {
            if i == 47 { Failed } else { Completed }
        })
        .into_iter()
        .map(|p| with_ttl(p, "2026-01-02T00:00:00Z"))
        .collect();
        let rules = Rules {
            last: Some(5),
            daily: Some(7),
            within: Some(SignedDuration::from_hours(72)),
            ..Rules::default()
        };
        let d = decide(&points, &rules, at("2026-01-03T00:00:00Z"), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-01-02T23:00:00Z", vec![Newer]),
                ("2026-01-02T22:00:00Z", vec![Good])
            ]
        );
        assert_eq!(d.expire.len(), 46);
        let d = decide(
            &points,
            &Rules::default(),
            at("2026-01-03T00:00:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!(
            kept_names(&d),
            vec!["2026-01-02T23:00:00Z", "2026-01-02T22:00:00Z"]
        );
    }

    /// 40 hourly runs: Completed, except Failed at 02:00 and 06:00, then the last 30 all Failed.
    fn failing_streak() -> Vec<Point> {
        hourly("2026-02-01T00:00:00Z", 40, |i| {
            if i >= 10 || i % 4 == 2 {
                Failed
            } else {
                Completed
            }
        })
    }

    #[test]
    fn failed_streak_keeps_newest_completed_and_newer_failures() {
        let points = failing_streak();
        let rules = Rules {
            last: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        let mut expected: Vec<(String, Vec<Why>)> = points[10..]
            .iter()
            .rev()
            .map(|p| (p.name.clone(), vec![Newer]))
            .collect();
        expected.push(("2026-02-01T09:00:00Z".into(), vec![Last, Good]));
        expected.push(("2026-02-01T08:00:00Z".into(), vec![Last]));
        expected.push(("2026-02-01T07:00:00Z".into(), vec![Last]));
        assert_eq!(d.keep, expected);
        let older: Vec<&str> = points[..7].iter().rev().map(|p| p.name.as_str()).collect();
        assert_eq!(expired(&d), older); // includes the old failures at 06:00 and 02:00
    }

    #[test]
    fn failed_streak_keeps_newest_completed_when_rules_keep_nothing() {
        let points = failing_streak();
        let rules = Rules {
            within: Some(SignedDuration::from_hours(24)),
            hourly: Some(0),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(d.keep.len(), 31);
        assert!(d.keep[..30].iter().all(|(_, w)| *w == vec![Newer]));
        assert_eq!(d.keep[30], ("2026-02-01T09:00:00Z".to_string(), vec![Good]));
        assert_eq!(d.expire.len(), 9);
    }

    #[test]
    fn partially_failed_without_completed_keeps_newest_partial() {
        let points = hourly("2026-02-01T00:00:00Z", 6, |i| {
            if i % 3 == 2 { Failed } else { PartiallyFailed }
        });
        let rules = Rules {
            within: Some(SignedDuration::from_mins(30)),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-02-01T05:00:00Z", vec![Newer]),
                ("2026-02-01T04:00:00Z", vec![Good])
            ]
        );
        assert_eq!(
            expired(&d),
            vec![
                "2026-02-01T03:00:00Z",
                "2026-02-01T02:00:00Z",
                "2026-02-01T01:00:00Z",
                "2026-02-01T00:00:00Z"
            ]
        );
        let rules = Rules {
            last: Some(2),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-02-01T05:00:00Z", vec![Newer]),
                ("2026-02-01T04:00:00Z", vec![Last, Good]),
                ("2026-02-01T03:00:00Z", vec![Last])
            ]
        );
    }

    #[test]
    fn only_failed_runs_are_all_kept() {
        let points = hourly("2026-02-01T00:00:00Z", 5, |_| Failed);
        let rules = Rules {
            last: Some(1),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &TimeZone::UTC);
        assert_eq!(d.keep.len(), 5);
        assert!(d.keep.iter().all(|(_, w)| *w == vec![Newer]));
        assert!(d.expire.is_empty());
    }

    #[test]
    fn empty_rules_keep_every_restore_point() {
        let mut points = hourly("2026-02-01T00:00:00Z", 6, |i| match i {
            0 | 4 => Failed,
            2 => PartiallyFailed,
            _ => Completed,
        });
        points[1].expires = Some(at("2026-02-01T00:30:00Z"));
        let d = decide(
            &points,
            &Rules::default(),
            at("2026-09-01T00:00:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!(
            kept(&d),
            vec![
                ("2026-02-01T05:00:00Z", vec![Last, Good]),
                ("2026-02-01T03:00:00Z", vec![Last]),
                ("2026-02-01T02:00:00Z", vec![Last]),
            ]
        );
        // Older Failed runs and TTL-expired points still go.
        assert_eq!(
            expired(&d),
            vec![
                "2026-02-01T04:00:00Z",
                "2026-02-01T01:00:00Z",
                "2026-02-01T00:00:00Z"
            ]
        );
    }

    /// 300 hourly runs with mixed outcomes and TTLs, plus two runs sharing a start time.
    fn mixed_points() -> Vec<Point> {
        let mut points = hourly("2026-03-20T00:00:00Z", 300, |i| match i % 7 {
            3 => Failed,
            5 => PartiallyFailed,
            _ => Completed,
        });
        for (i, p) in (0..).zip(points.iter_mut()).filter(|(i, _)| i % 5 == 0) {
            let ttl = SignedDuration::from_hours(i % 40);
            p.expires = Some(p.time.checked_add(ttl).expect("in range"));
        }
        let twin = points[100].clone();
        points.push(Point {
            name: "same-time-b".into(),
            ..twin.clone()
        });
        points.push(Point {
            name: "same-time-a".into(),
            ..twin
        });
        points
    }

    #[test]
    fn input_order_does_not_matter() {
        let points = mixed_points();
        let rules = Rules {
            last: Some(5),
            hourly: Some(10),
            daily: Some(4),
            weekly: Some(2),
            within: Some(SignedDuration::from_hours(30)),
            ..Rules::default()
        };
        let (now, tz) = (at("2026-04-01T00:00:00Z"), zone("Europe/Berlin"));
        let expected = decide(&points, &rules, now, &tz);
        let reversed: Vec<Point> = points.iter().rev().cloned().collect();
        // 0, n-1, 1, n-2, ...: front and back interleaved.
        let n = points.len();
        let interleaved: Vec<Point> = (0..n)
            .map(|i| if i % 2 == 0 { i / 2 } else { n - 1 - i / 2 })
            .map(|i| points[i].clone())
            .collect();
        assert_eq!(decide(&reversed, &rules, now, &tz), expected);
        assert_eq!(decide(&interleaved, &rules, now, &tz), expected);
        let names: HashSet<&str> = kept_names(&expected)
            .into_iter()
            .chain(expired(&expected))
            .collect();
        assert_eq!(names.len(), n);
        assert_eq!(expected.keep.len() + expected.expire.len(), n);
    }

    #[test]
    fn equal_times_are_ordered_by_name() {
        let b = pt("2026-04-01T00:00:00Z", Completed);
        let a = Point {
            name: "a".into(),
            ..b.clone()
        };
        let b = Point {
            name: "b".into(),
            ..b
        };
        let rules = Rules {
            last: Some(1),
            ..Rules::default()
        };
        for points in [vec![a.clone(), b.clone()], vec![b, a]] {
            let d = decide(&points, &rules, at("2026-04-01T00:00:00Z"), &TimeZone::UTC);
            assert_eq!(kept(&d), vec![("a", vec![Last, Good])]);
            assert_eq!(expired(&d), vec!["b"]);
        }
    }

    /// Number of points whose civil date in `tz` is `date`.
    fn points_on(points: &[Point], tz: &TimeZone, date: &str) -> usize {
        let date: jiff::civil::Date = date.parse().expect("valid date");
        points
            .iter()
            .filter(|p| tz.to_datetime(p.time).date() == date)
            .count()
    }

    #[test]
    fn dst_spring_forward_hourly_and_daily() {
        let tz = zone("Europe/Berlin");
        let points = hourly("2026-03-27T00:00:00Z", 85, |_| Completed); // .. 2026-03-30T12:00Z
        assert_eq!(points_on(&points, &tz, "2026-03-29"), 23);
        let rules = Rules {
            hourly: Some(48),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &tz);
        // No civil hour is shared: 48 buckets are the 48 newest real hours.
        assert_eq!(
            kept_names(&d),
            points[37..]
                .iter()
                .rev()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
        );
        assert_eq!(points[37].name, "2026-03-28T13:00:00Z");
        let rules = Rules {
            daily: Some(4),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &tz);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-03-30T12:00:00Z", vec![Daily, Good]),
                ("2026-03-29T21:00:00Z", vec![Daily]), // 23:00 CEST
                ("2026-03-28T22:00:00Z", vec![Daily]), // 23:00 CET
                ("2026-03-27T22:00:00Z", vec![Daily]),
            ]
        );
        assert_eq!(d.expire.len(), 81);
    }

    #[test]
    fn dst_fall_back_hourly_counts_the_repeated_hour_once() {
        let tz = zone("Europe/Berlin");
        let points = hourly("2026-10-23T00:00:00Z", 73, |_| Completed); // .. 2026-10-26T00:00Z
        let rules = Rules {
            hourly: Some(48),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &tz);
        // 00:00Z and 01:00Z on Oct 25 are both 02:00 local: one bucket, the later point kept.
        let expected: Vec<&str> = points[24..]
            .iter()
            .rev()
            .map(|p| p.name.as_str())
            .filter(|n| *n != "2026-10-25T00:00:00Z")
            .collect();
        assert_eq!(expected.len(), 48);
        assert_eq!(kept_names(&d), expected);
        assert_eq!(reasons(&d, "2026-10-25T01:00:00Z"), [Hourly]);
        assert!(d.expire.contains(&"2026-10-25T00:00:00Z".to_string()));
        assert!(d.expire.contains(&"2026-10-23T23:00:00Z".to_string()));
        assert_eq!(d.expire.len(), 25);
    }

    #[test]
    fn fold_across_a_day_boundary_counts_each_day_once() {
        // DST ends at 00:30 local: Oct 25 00:00-00:30 is lived, then Oct 24 23:30 again.
        let tz = TimeZone::posix("XST0XDT-1,M3.5.0/0:30,M10.5.0/0:30").expect("valid TZ");
        let points = vec![
            pt("2026-10-24T22:50:00Z", Completed), // Oct 24 23:50 XDT
            pt("2026-10-24T23:20:00Z", Completed), // Oct 25 00:20 XDT
            pt("2026-10-24T23:40:00Z", Completed), // Oct 24 23:40 XST
        ];
        assert_eq!(points_on(&points, &tz, "2026-10-24"), 2);
        let rules = Rules {
            daily: Some(3),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &tz);
        // Newest first the days go 24, 25, 24: day 24 is kept once, by its newest point.
        assert_eq!(
            kept(&d),
            vec![
                ("2026-10-24T23:40:00Z", vec![Daily, Good]),
                ("2026-10-24T23:20:00Z", vec![Daily]),
            ]
        );
        assert_eq!(expired(&d), vec!["2026-10-24T22:50:00Z"]);
    }

    #[test]
    fn dst_fall_back_daily_uses_25_hour_day() {
        let tz = zone("Europe/Berlin");
        let points = hourly("2026-10-23T00:00:00Z", 109, |_| Completed); // .. 2026-10-27T12:00Z
        assert_eq!(points_on(&points, &tz, "2026-10-25"), 25);
        let rules = Rules {
            daily: Some(4),
            ..Rules::default()
        };
        let d = decide(&points, &rules, newest(&points), &tz);
        assert_eq!(
            kept(&d),
            vec![
                ("2026-10-27T12:00:00Z", vec![Daily, Good]),
                ("2026-10-26T22:00:00Z", vec![Daily]), // 23:00 CET
                ("2026-10-25T22:00:00Z", vec![Daily]), // 23:00 CET; Oct 26 starts at 23:00Z
                ("2026-10-24T21:00:00Z", vec![Daily]), // 23:00 CEST
            ]
        );
        assert_eq!(d.expire.len(), 105);
    }

    // ---- Simulation: three years of hourly runs, the controller re-deciding after each run. ----

    /// Failed streaks: across Berlin's 2025 spring DST change, across a month end, before the end.
    const OUTAGES: [(&str, &str); 3] = [
        ("2025-03-29T20:00:00Z", "2025-03-31T04:00:00Z"),
        ("2026-06-30T18:00:00Z", "2026-07-01T03:00:00Z"),
        ("2026-12-31T17:00:00Z", "2026-12-31T22:00:00Z"),
    ];
    /// A PartiallyFailed streak.
    const PARTIAL: (&str, &str) = ("2025-11-01T00:00:00Z", "2025-11-02T12:00:00Z");

    fn sim_outcome(
        i: i64,
        t: Timestamp,
        outages: &[(Timestamp, Timestamp)],
        partial: (Timestamp, Timestamp),
    ) -> Outcome {
        let inside = |(from, to): (Timestamp, Timestamp)| from <= t && t < to;
        if i == 0 || i % 10 == 7 || outages.iter().any(|&w| inside(w)) {
            Failed
        } else if i <= 2 || i % 23 == 5 || inside(partial) {
            PartiallyFailed
        } else {
            Completed
        }
    }

    /// One point per real hour from 2024-01-01T00:00Z to 2026-12-31T23:00Z.
    fn sim_points() -> Vec<Point> {
        let window = |(from, to): (&str, &str)| (at(from), at(to));
        let (outages, partial) = (OUTAGES.map(window), window(PARTIAL));
        let start = at("2024-01-01T00:00:00Z");
        let hours = at("2027-01-01T00:00:00Z").duration_since(start).as_hours();
        let mut points = hourly("2024-01-01T00:00:00Z", hours, |_| Completed);
        for (i, p) in (0..).zip(points.iter_mut()) {
            p.outcome = sim_outcome(i, p.time, &outages, partial);
        }
        points
    }

    /// Feeds the points one by one, deciding on the survivors each time; checks every pass.
    fn simulate(all: &[Point], rules: &Rules, tz: &TimeZone) -> Vec<Point> {
        let mut survivors: Vec<Point> = Vec::new();
        let (mut completed, mut partial): (Option<&str>, Option<&str>) = (None, None);
        for p in all {
            survivors.push(p.clone());
            match p.outcome {
                Completed => completed = Some(&p.name),
                PartiallyFailed => partial = Some(&p.name),
                Failed => {}
            }
            let d = decide(&survivors, rules, p.time, tz);
            assert_eq!(d.keep.len() + d.expire.len(), survivors.len());
            if let Some(good) = completed.or(partial) {
                assert!(
                    reasons(&d, good).contains(&Good),
                    "newest good point {good} not kept at {}",
                    p.time
                );
            }
            // Survivors are oldest first, `keep` newest first: drop what `keep` does not list.
            let mut keep = d.keep.iter().rev().map(|(n, _)| n.as_str()).peekable();
            survivors.retain(|s| keep.next_if_eq(&s.name.as_str()).is_some());
            assert_eq!(keep.next(), None, "keep is not newest first at {}", p.time);
            assert!(
                survivors.len() < 150,
                "survivors grow unbounded at {}",
                p.time
            );
        }
        survivors
    }

    /// Reference: the newest restore point of each of the newest `n` buckets, by a sorted map.
    fn per_bucket<K: Ord>(
        restore: &[&Point],
        n: Option<u32>,
        key: impl Fn(&Point) -> K,
        out: &mut BTreeSet<String>,
    ) {
        let Some(n) = n else { return };
        let mut newest: BTreeMap<K, &Point> = BTreeMap::new();
        for p in restore {
            let slot = newest.entry(key(p)).or_insert(p);
            if p.time > slot.time {
                *slot = p;
            }
        }
        out.extend(
            newest
                .values()
                .rev()
                .take(usize::try_from(n).expect("fits"))
                .map(|p| p.name.clone()),
        );
    }

    /// The surviving set computed directly from all points, rule by rule.
    fn reference(all: &[Point], rules: &Rules, tz: &TimeZone) -> BTreeSet<String> {
        let restore: Vec<&Point> = all.iter().filter(|p| p.outcome != Failed).collect();
        let mut out = BTreeSet::new();
        let names = |points: &[&Point]| points.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if let Some(n) = rules.last {
            let n = usize::try_from(n).expect("fits");
            out.extend(names(&restore[restore.len().saturating_sub(n)..]));
        }
        if let Some(d) = rules.within {
            let cutoff = newest(all).checked_sub(d).expect("in range");
            out.extend(names(
                &restore
                    .iter()
                    .copied()
                    .filter(|p| p.time >= cutoff)
                    .collect::<Vec<_>>(),
            ));
        }
        calendar_reference(&restore, rules, tz, &mut out);
        let good = all
            .iter()
            .rposition(|p| p.outcome == Completed)
            .expect("a Completed point");
        out.insert(all[good].name.clone());
        out.extend(
            all[good..]
                .iter()
                .filter(|p| p.outcome == Failed)
                .map(|p| p.name.clone()),
        );
        out
    }

    /// The calendar rules of [`reference`], bucketing through `Zoned`.
    fn calendar_reference(
        restore: &[&Point],
        rules: &Rules,
        tz: &TimeZone,
        out: &mut BTreeSet<String>,
    ) {
        let zoned = |p: &Point| p.time.to_zoned(tz.clone());
        per_bucket(
            restore,
            rules.hourly,
            |p| (zoned(p).date(), zoned(p).hour()),
            out,
        );
        per_bucket(restore, rules.daily, |p| zoned(p).date(), out);
        let iso_week = |p: &Point| {
            let week = zoned(p).date().iso_week_date();
            (week.year(), week.week())
        };
        per_bucket(restore, rules.weekly, iso_week, out);
        per_bucket(
            restore,
            rules.monthly,
            |p| (zoned(p).year(), zoned(p).month()),
            out,
        );
        per_bucket(restore, rules.yearly, |p| zoned(p).year(), out);
    }

    fn check_simulation(rules: &Rules, tz: &TimeZone, expected_count: usize) -> BTreeSet<String> {
        let all = sim_points();
        assert_eq!(all.len(), 26_304);
        let survivors: BTreeSet<String> = simulate(&all, rules, tz)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(survivors, reference(&all, rules, tz));
        assert_eq!(survivors.len(), expected_count);
        survivors
    }

    #[test]
    fn simulation_berlin_gfs() {
        let rules = Rules {
            last: Some(24),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            yearly: Some(3),
            ..Rules::default()
        };
        let survivors = check_simulation(&rules, &zone("Europe/Berlin"), 41);
        // 23:00Z on Dec 31 is already 2027 in Berlin; 2026's last point is 22:00Z.
        for name in [
            "2026-12-31T23:00:00Z",
            "2026-12-31T22:00:00Z",
            "2025-12-31T22:00:00Z",
        ] {
            assert!(survivors.contains(name), "{name}");
        }
        assert!(!survivors.iter().any(|n| n.starts_with("2024")));
    }

    #[test]
    fn simulation_new_york_within_and_daily() {
        let rules = Rules {
            within: Some(SignedDuration::from_hours(48)),
            daily: Some(30),
            ..Rules::default()
        };
        let survivors = check_simulation(&rules, &zone("America/New_York"), 67);
        // The oldest of the 30 days is Dec 2 (EST), whose last run is 04:00Z on Dec 3.
        assert_eq!(
            survivors.first().map(String::as_str),
            Some("2026-12-03T04:00:00Z")
        );
    }

    #[test]
    fn simulation_utc_hourly_and_daily() {
        let rules = Rules {
            hourly: Some(24),
            daily: Some(7),
            ..Rules::default()
        };
        let survivors = check_simulation(&rules, &TimeZone::UTC, 29);
        // Dec 27's 23:00Z run failed, so that day is represented by its 22:00Z run.
        assert!(
            survivors.contains("2026-12-27T22:00:00Z")
                && !survivors.contains("2026-12-27T23:00:00Z")
        );
    }
}
