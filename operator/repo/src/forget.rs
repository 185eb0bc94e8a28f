//! Forgetting snapshots: explicit ids, or a retention policy with restic's `forget`
//! semantics (keep-last/hourly/daily/weekly/monthly/yearly, keep-within, keep-tag,
//! applied per group of host and paths). Removing a snapshot deletes only its
//! snapshot file; the data goes with `prune`.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Timelike};

use crate::format::{self, FileType};
use crate::repo::Repository;
use crate::tree::Snapshot;
use crate::{Id, RepoError};

/// A calendar duration as restic's `--keep-within` takes it: `1y2m3d4h`
/// (years, months, days, hours).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepDuration {
    pub years: i32,
    pub months: i32,
    pub days: i32,
    pub hours: i32,
}

impl KeepDuration {
    /// Parses `<n>y<n>m<n>d<n>h` (any subset, in any order, like restic).
    pub fn parse(s: &str) -> Option<KeepDuration> {
        let mut d = KeepDuration::default();
        let mut num = String::new();
        let mut any = false;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i32 = num.parse().ok()?;
            num.clear();
            match c {
                'y' => d.years += n,
                'm' => d.months += n,
                'd' => d.days += n,
                'h' => d.hours += n,
                _ => return None,
            }
            any = true;
        }
        if !num.is_empty() || !any {
            return None;
        }
        Some(d)
    }

    fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }

    /// `t` minus this duration, with Go's `AddDate` normalisation (Mar 31 minus one
    /// month is "Feb 31" = Mar 3 or 2), then minus the hours.
    fn before(&self, t: DateTime<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        let months =
            i64::from(t.year() - self.years) * 12 + i64::from(t.month0()) - i64::from(self.months);
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let month0 = u32::try_from(months.rem_euclid(12)).ok()?;
        let first = NaiveDate::from_ymd_opt(year, month0 + 1, 1)?;
        let day = i64::from(t.day()) - 1 - i64::from(self.days);
        let date = first.checked_add_signed(Duration::days(day))?;
        let local = date.and_hms_nano_opt(t.hour(), t.minute(), t.second(), t.nanosecond())?;
        let shifted = local.and_local_timezone(*t.offset()).single()?;
        Some(shifted - Duration::hours(i64::from(self.hours)))
    }
}

impl std::fmt::Display for KeepDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}y{}m{}d{}h",
            self.years, self.months, self.days, self.hours
        )
    }
}

/// A retention policy. Counts: 0 = not used, -1 = unlimited (restic's `-1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: i32,
    pub hourly: i32,
    pub daily: i32,
    pub weekly: i32,
    pub monthly: i32,
    pub yearly: i32,
    /// Keep snapshots newer than the group's latest snapshot minus this duration.
    pub within: Option<KeepDuration>,
    /// Keep snapshots that carry all tags of any one of these lists.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    /// True when nothing is kept by policy (restic then removes nothing).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none_or(|w| w.is_zero())
            && self.tags.is_empty()
    }
}

/// The decision for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    /// Why it is kept (`last snapshot`, `daily snapshot`, `has tags`, `within 2d`...).
    pub reasons: Vec<String>,
}

type Bucket = (&'static str, i32, fn(&DateTime<FixedOffset>, usize) -> i64);

/// Applies `policy` to one group of snapshots (restic's `ApplyPolicy`): newest first,
/// a snapshot is kept when it has a keep-tag, is within the keep-within window of
/// the newest one, or is the first of a new hour/day/week/month/year bucket while
/// that bucket's count lasts. Every bucket is evaluated for every snapshot, so one
/// snapshot can use up a slot in several buckets. An empty policy keeps everything.
/// Returns the decisions newest first.
pub fn apply_policy(snaps: &[(Id, Snapshot)], policy: &KeepPolicy) -> Vec<Decision> {
    let mut list: Vec<(Id, &Snapshot, DateTime<FixedOffset>)> = snaps
        .iter()
        .map(|(id, s)| (*id, s, format::parse_time(&s.time).unwrap_or_default()))
        .collect();
    // Newest first; stable for equal times like restic's sort.Stable.
    list.sort_by_key(|x| std::cmp::Reverse(x.2));
    if policy.is_empty() {
        return list
            .into_iter()
            .map(|(id, _, _)| Decision {
                id,
                keep: true,
                reasons: vec!["no policy".into()],
            })
            .collect();
    }
    fn by_nr(_: &DateTime<FixedOffset>, nr: usize) -> i64 {
        nr as i64
    }
    fn by_hour(t: &DateTime<FixedOffset>, _: usize) -> i64 {
        i64::from(t.year()) * 1_000_000
            + i64::from(t.month()) * 10_000
            + i64::from(t.day()) * 100
            + i64::from(t.hour())
    }
    fn by_day(t: &DateTime<FixedOffset>, _: usize) -> i64 {
        i64::from(t.year()) * 10_000 + i64::from(t.month()) * 100 + i64::from(t.day())
    }
    fn by_week(t: &DateTime<FixedOffset>, _: usize) -> i64 {
        let w = t.iso_week();
        i64::from(w.year()) * 100 + i64::from(w.week())
    }
    fn by_month(t: &DateTime<FixedOffset>, _: usize) -> i64 {
        i64::from(t.year()) * 100 + i64::from(t.month())
    }
    fn by_year(t: &DateTime<FixedOffset>, _: usize) -> i64 {
        i64::from(t.year())
    }
    let mut buckets: Vec<(Bucket, Option<i64>)> = [
        ("last snapshot", policy.last, by_nr as fn(&_, _) -> _),
        ("hourly snapshot", policy.hourly, by_hour),
        ("daily snapshot", policy.daily, by_day),
        ("weekly snapshot", policy.weekly, by_week),
        ("monthly snapshot", policy.monthly, by_month),
        ("yearly snapshot", policy.yearly, by_year),
    ]
    .into_iter()
    .map(|b| (b, None))
    .collect();
    let within_limit = match (policy.within, list.first()) {
        (Some(w), Some(newest)) if !w.is_zero() => w.before(newest.2),
        _ => None,
    };
    let mut out = Vec::with_capacity(list.len());
    for (nr, (id, snap, time)) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        if policy
            .tags
            .iter()
            .any(|l| !l.is_empty() && l.iter().all(|t| snap.tags.contains(t)))
        {
            reasons.push("has tags".to_string());
        }
        if let (Some(limit), Some(w)) = (within_limit, policy.within)
            && *time > limit
        {
            reasons.push(format!("within {w}"));
        }
        for ((reason, count, f), last) in buckets.iter_mut() {
            if *count > 0 || *count == -1 {
                let v = f(time, nr);
                if Some(v) != *last {
                    *last = Some(v);
                    if *count > 0 {
                        *count -= 1;
                    }
                    reasons.push((*reason).to_string());
                }
            }
        }
        out.push(Decision {
            id: *id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// How snapshots are grouped before the policy is applied (restic's `--group-by`,
/// default `host,paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

/// Options of [`forget`].
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    /// Snapshots to remove by id or unique id prefix. Like restic, explicit ids and a
    /// policy are not combined: giving both is an error.
    pub snapshots: Vec<String>,
    pub policy: KeepPolicy,
    pub group_by: GroupBy,
    /// Decide, but delete nothing.
    pub dry_run: bool,
}

/// One group's outcome.
#[derive(Debug, Clone)]
pub struct ForgetGroup {
    pub host: Option<String>,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub decisions: Vec<Decision>,
}

/// What [`forget`] did.
#[derive(Debug, Clone, Default)]
pub struct ForgetSummary {
    pub groups: Vec<ForgetGroup>,
    /// Snapshots whose files were deleted (or would be, in a dry run).
    pub removed: Vec<Id>,
    pub kept: usize,
}

/// Groups snapshots and applies the policy to each group (pure).
pub fn plan(snaps: &[(Id, Snapshot)], policy: &KeepPolicy, group_by: GroupBy) -> Vec<ForgetGroup> {
    type Key = (Option<String>, Option<Vec<String>>, Option<Vec<String>>);
    let mut groups: BTreeMap<Key, Vec<(Id, Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v
        };
        let key = (
            group_by.host.then(|| s.hostname.clone()),
            group_by.paths.then(|| sorted(&s.paths)),
            group_by.tags.then(|| sorted(&s.tags)),
        );
        groups.entry(key).or_default().push((*id, s.clone()));
    }
    groups
        .into_iter()
        .map(|((host, paths, tags), list)| ForgetGroup {
            host,
            paths,
            tags,
            decisions: apply_policy(&list, policy),
        })
        .collect()
}

/// Removes snapshots by id or by policy, under an exclusive repository lock (as
/// restic's `forget` does).
pub async fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<ForgetSummary, RepoError> {
    if !opts.snapshots.is_empty() && !opts.policy.is_empty() {
        return Err(RepoError::Internal(
            "explicit snapshot ids and a keep policy cannot be combined".into(),
        ));
    }
    let guard = repo.lock(true).await?;
    let r = forget_locked(repo, opts).await;
    let released = guard.release().await;
    let s = r?;
    released?;
    Ok(s)
}

async fn forget_locked(
    repo: &Repository,
    opts: &ForgetOptions,
) -> Result<ForgetSummary, RepoError> {
    let all = repo.snapshots().await?;
    let mut summary = ForgetSummary::default();
    if !opts.snapshots.is_empty() {
        for spec in &opts.snapshots {
            let mut m: Vec<Id> = all
                .iter()
                .filter(|(id, _)| id.to_hex().starts_with(spec.as_str()))
                .map(|(id, _)| *id)
                .collect();
            match m.len() {
                1 => {
                    let id = m.remove(0);
                    if !summary.removed.contains(&id) {
                        summary.removed.push(id);
                    }
                }
                0 => return Err(RepoError::SnapshotNotFound { spec: spec.clone() }),
                _ => return Err(RepoError::AmbiguousSnapshot { spec: spec.clone() }),
            }
        }
        summary.kept = all.len() - summary.removed.len();
    } else {
        summary.groups = plan(&all, &opts.policy, opts.group_by);
        for g in &summary.groups {
            for d in &g.decisions {
                if d.keep {
                    summary.kept += 1;
                } else {
                    summary.removed.push(d.id);
                }
            }
        }
    }
    if !opts.dry_run {
        for id in &summary.removed {
            repo.store().delete(&FileType::Snapshot.key(id)).await?;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, tags: &[&str]) -> (Id, Snapshot) {
        (
            Id::hash(time.as_bytes()),
            Snapshot {
                time: time.into(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
                hostname: "h".into(),
                paths: vec!["/p".into()],
                ..Default::default()
            },
        )
    }

    /// A snapshot every 6 hours for 40 days, from 2024-01-01T00:00Z.
    fn series() -> Vec<(Id, Snapshot)> {
        let start = format::parse_time("2024-01-01T00:00:00Z").expect("t");
        (0..160)
            .map(|i| {
                let t = start + Duration::hours(6 * i);
                snap(
                    &format::format_time(&t),
                    if i == 3 { &["keep"] } else { &[] },
                )
            })
            .collect()
    }

    fn kept_times(snaps: &[(Id, Snapshot)], p: &KeepPolicy) -> Vec<String> {
        let by_id: std::collections::HashMap<Id, &Snapshot> =
            snaps.iter().map(|(i, s)| (*i, s)).collect();
        apply_policy(snaps, p)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| by_id[&d.id].time.clone())
            .collect()
    }

    #[test]
    fn durations_parse_like_restic() {
        assert_eq!(
            KeepDuration::parse("1y2m3d4h"),
            Some(KeepDuration {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            })
        );
        assert_eq!(
            KeepDuration::parse("36h"),
            Some(KeepDuration {
                hours: 36,
                ..Default::default()
            })
        );
        assert_eq!(KeepDuration::parse(""), None);
        assert_eq!(KeepDuration::parse("5"), None);
        assert_eq!(KeepDuration::parse("5s"), None);
        // Go's AddDate normalisation: 2024-03-31 minus 1 month is "2024-02-31" = Mar 2.
        let t = format::parse_time("2024-03-31T10:00:00Z").expect("t");
        let one_month = KeepDuration {
            months: 1,
            ..Default::default()
        };
        assert_eq!(
            one_month.before(t).map(|t| format::format_time(&t)),
            Some("2024-03-02T10:00:00Z".into())
        );
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let s = series();
        assert!(
            apply_policy(&s, &KeepPolicy::default())
                .iter()
                .all(|d| d.keep)
        );
    }

    #[test]
    fn keep_last() {
        let s = series();
        let k = kept_times(
            &s,
            &KeepPolicy {
                last: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![
                "2024-02-09T18:00:00Z",
                "2024-02-09T12:00:00Z",
                "2024-02-09T06:00:00Z"
            ]
        );
    }

    #[test]
    fn keep_daily_takes_the_newest_of_each_day() {
        let s = series();
        let k = kept_times(
            &s,
            &KeepPolicy {
                daily: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![
                "2024-02-09T18:00:00Z",
                "2024-02-08T18:00:00Z",
                "2024-02-07T18:00:00Z"
            ]
        );
    }

    #[test]
    fn buckets_combine_and_each_consumes_its_own_count() {
        let s = series();
        let k = kept_times(
            &s,
            &KeepPolicy {
                last: 2,
                daily: 2,
                weekly: 2,
                monthly: 2,
                ..Default::default()
            },
        );
        // last: 02-09T18, 02-09T12; daily: 02-09T18, 02-08T18; weekly (ISO weeks,
        // Monday start): week 6 -> 02-09T18, week 5 -> 02-04T18; monthly: Feb -> 02-09T18,
        // Jan -> 01-31T18.
        assert_eq!(
            k,
            vec![
                "2024-02-09T18:00:00Z",
                "2024-02-09T12:00:00Z",
                "2024-02-08T18:00:00Z",
                "2024-02-04T18:00:00Z",
                "2024-01-31T18:00:00Z",
            ]
        );
    }

    #[test]
    fn hourly_yearly_unlimited_and_tags() {
        let s = series();
        let k = kept_times(
            &s,
            &KeepPolicy {
                hourly: 2,
                yearly: -1,
                tags: vec![vec!["keep".into()]],
                ..Default::default()
            },
        );
        assert_eq!(
            k,
            vec![
                "2024-02-09T18:00:00Z",
                "2024-02-09T12:00:00Z",
                "2024-01-01T18:00:00Z"
            ]
        );
        // A tag list needs all of its tags.
        let k = kept_times(
            &s,
            &KeepPolicy {
                tags: vec![vec!["keep".into(), "other".into()]],
                ..Default::default()
            },
        );
        assert!(k.is_empty(), "{k:?}");
    }

    #[test]
    fn keep_within_is_relative_to_the_newest_snapshot() {
        let s = series();
        let k = kept_times(
            &s,
            &KeepPolicy {
                within: KeepDuration::parse("1d"),
                ..Default::default()
            },
        );
        // Strictly after 02-08T18:00.
        assert_eq!(
            k,
            vec![
                "2024-02-09T18:00:00Z",
                "2024-02-09T12:00:00Z",
                "2024-02-09T06:00:00Z",
                "2024-02-09T00:00:00Z"
            ]
        );
    }

    #[test]
    fn groups_by_host_and_paths() {
        let mut s = series();
        for (_, snap) in s.iter_mut().skip(100) {
            snap.hostname = "other".into();
        }
        let groups = plan(
            &s,
            &KeepPolicy {
                last: 1,
                ..Default::default()
            },
            GroupBy::default(),
        );
        assert_eq!(groups.len(), 2);
        assert!(
            groups
                .iter()
                .all(|g| g.decisions.iter().filter(|d| d.keep).count() == 1)
        );
    }
}
