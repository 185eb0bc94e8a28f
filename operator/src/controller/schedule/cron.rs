//! Five-field cron expressions (Vixie cron / Kubernetes CronJob syntax) evaluated in the wall-clock
//! time of an IANA time zone, with Vixie's daylight-saving rules: runs whose wall-clock time falls in
//! a skipped hour (clock goes forward) all collapse into one run at the first instant after the gap;
//! when the clock goes back, a job with a fixed hour runs once, in the first pass, while a job whose
//! hour field starts with `*` or `?` runs by elapsed time in both passes of the repeated hour.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp, ToSpan};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields are restricted: a day matches when either matches (Vixie rule).
    day_or: bool,
    /// The hour field starts with `*` or `?`: the repeated hour of a fold runs in both passes.
    hour_wild: bool,
}

/// Why an expression cannot be used; the message names the wrong field and how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

/// How one of the five fields is written.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names for `min..`, in order (empty when the field takes numbers only).
    names: &'static [&'static str],
    valid: &'static str,
}

const MINUTE: Field = Field::numeric("minute", 0, 59, "0-59");
const HOUR: Field = Field::numeric("hour", 0, 23, "0-23");
const DAY: Field = Field::numeric("day-of-month", 1, 31, "1-31");
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    valid: "1-12 or JAN-DEC",
};
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    valid: "0-7 or SUN-SAT (0 and 7 are Sunday)",
};

const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// How far ahead `next_after` looks before giving up.
const HORIZON_YEARS: i64 = 30;

impl Field {
    const fn numeric(name: &'static str, min: u32, max: u32, valid: &'static str) -> Field {
        Field {
            name,
            min,
            max,
            names: &[],
            valid,
        }
    }

    fn error(&self, text: &str, problem: &str) -> CronError {
        CronError(format!(
            "{} field '{text}': {problem}values must be {}",
            self.name, self.valid
        ))
    }

    /// Parses a whole field (a comma list) into a bit set of its values.
    fn parse(&self, text: &str) -> Result<u64, CronError> {
        let mut bits = 0;
        for item in text.split(',') {
            bits |= self.parse_item(text, item)?;
        }
        Ok(bits)
    }

    /// Parses one list item: `*`, `?`, `N` or `N-M`, with an optional `/step`.
    fn parse_item(&self, text: &str, item: &str) -> Result<u64, CronError> {
        if item.is_empty() {
            return Err(self.error(text, "empty item in list; "));
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(self.parse_step(text, step)?)),
            None => (item, None),
        };
        let (lo, hi) = if base == "*" || base == "?" {
            (self.min, self.max)
        } else if let Some((lo, hi)) = base.split_once('-') {
            (self.value(text, lo)?, self.value(text, hi)?)
        } else {
            let value = self.value(text, base)?;
            (value, if step.is_some() { self.max } else { value })
        };
        if lo > hi {
            return Err(self.error(
                text,
                &format!("range {base} is reversed (write the smaller value first); "),
            ));
        }
        let step = step.unwrap_or(1);
        Ok((lo..=hi).step_by(step).fold(0, |bits, v| bits | 1 << v))
    }

    fn parse_step(&self, text: &str, step: &str) -> Result<usize, CronError> {
        match step.parse::<usize>() {
            Ok(0) => Err(self.error(text, "step must be at least 1; ")),
            Ok(n) if step.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(self.error(text, &format!("step '{step}' is not a positive number; "))),
        }
    }

    /// Parses one number or three-letter name and checks its range.
    fn value(&self, text: &str, value: &str) -> Result<u32, CronError> {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            return match value.parse::<u32>() {
                Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
                _ => Err(self.error(text, "")),
            };
        }
        let position = self
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(value));
        match position.and_then(|p| u32::try_from(p).ok()) {
            Some(p) => Ok(self.min + p),
            None if value.is_empty() => Err(self.error(text, "missing value in range; ")),
            None => Err(self.error(text, &format!("'{value}' is not a valid value; "))),
        }
    }
}

/// True when a field is written as a wildcard (Vixie's `*` flag: the field starts with `*` or `?`).
fn is_star(field: &str) -> bool {
    field.starts_with('*') || field.starts_with('?')
}

/// True when `value` is in the bit set.
fn has(bits: u64, value: i8) -> bool {
    u8::try_from(value).is_ok_and(|v| v < 64 && bits & (1 << v) != 0)
}

/// The values 0..limit present in `bits`, in increasing order.
fn values(bits: u64, from: i8, limit: i8) -> impl Iterator<Item = i8> {
    (from.max(0)..limit).filter(move |&v| has(bits, v))
}

/// Floors a civil datetime to its minute.
fn floor_minute(dt: DateTime) -> DateTime {
    dt.date().at(dt.hour(), dt.minute(), 0, 0)
}

/// The instant at which a civil time that does not exist (a gap) runs: the end of the gap.
fn gap_end(civil: DateTime, before: Offset, after: Offset, tz: &TimeZone) -> Option<Timestamp> {
    // Read with the offset in force after the gap, the civil time lands before the transition;
    // read with the offset before the gap, at or after it.
    let inside = after.to_timestamp(civil).ok()?;
    let beyond = before.to_timestamp(civil).ok()?;
    let end = tz
        .following(inside)
        .take_while(|transition| transition.timestamp() <= beyond)
        .find(|transition| transition.offset() == after)
        .map(|transition| transition.timestamp());
    // Time zone data always has that transition; fall back to jiff's "compatible" reading.
    Some(end.unwrap_or(beyond))
}

/// The first (or only) instant at which a matching civil time runs.
fn first_instant(civil: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil).ok(),
        AmbiguousOffset::Gap { before, after } => gap_end(civil, before, after, tz),
    }
}

impl Cron {
    /// Parses a five-field expression or a macro such as `@daily`.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let text = expr.trim();
        let expanded = if text.starts_with('@') {
            MACROS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(text))
                .map(|(_, fields)| *fields)
                .ok_or_else(|| {
                    CronError(format!(
                        "unknown macro '{text}'; use @yearly, @annually, @monthly, @weekly, @daily, \
                         @midnight or @hourly"
                    ))
                })?
        } else {
            text
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError(format!(
                "expected five fields (minute hour day-of-month month day-of-week) or a macro such as \
                 @daily, got {} fields",
                fields.len()
            )));
        };
        let weekdays = WEEKDAY.parse(weekday)?;
        Ok(Cron {
            text: text.to_string(),
            minutes: MINUTE.parse(minute)?,
            hours: HOUR.parse(hour)?,
            days: DAY.parse(day)?,
            months: MONTH.parse(month)?,
            // Bit 7 (Sunday written as 7) folds onto bit 0.
            weekdays: (weekdays | weekdays >> 7) & 0x7f,
            day_or: !is_star(day) && !is_star(weekday),
            hour_wild: is_star(hour),
        })
    }

    /// The first run strictly after `after`, with the expression evaluated in wall-clock time of `tz`.
    /// None when the expression never matches within the next 30 years (e.g. "0 0 30 2 *").
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let civil = floor_minute(tz.to_datetime(after));
        let first = self.next_first_pass(civil, after, tz);
        match (first, self.next_second_pass(civil, after, tz)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn day_matches(&self, date: Date) -> bool {
        let day = has(self.days, date.day());
        let weekday = has(self.weekdays, date.weekday().to_sunday_zero_offset());
        if self.day_or {
            day || weekday
        } else {
            day && weekday
        }
    }

    fn matches(&self, civil: DateTime) -> bool {
        has(self.months, civil.month())
            && self.day_matches(civil.date())
            && has(self.hours, civil.hour())
            && has(self.minutes, civil.minute())
    }

    /// The earliest run after `after`, counting each matching civil time at its first instant
    /// (first pass of a fold, end of a gap). This mapping never decreases as civil time increases,
    /// so the first hit at or after `start` (the civil minute of `after`) is the earliest.
    fn next_first_pass(
        &self,
        start: DateTime,
        after: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        let end = start
            .date()
            .checked_add(HORIZON_YEARS.years())
            .unwrap_or(Date::MAX);
        let mut date = start.date();
        let mut from = Some(start);
        while date <= end {
            if !has(self.months, date.month()) {
                date = date.last_of_month().tomorrow().ok()?;
                from = None;
                continue;
            }
            if self.day_matches(date) {
                let found = self.first_in_day(date, from, after, tz);
                if found.is_some() {
                    return found;
                }
            }
            date = date.tomorrow().ok()?;
            from = None;
        }
        None
    }

    /// The first run of a matching day whose first instant is after `after`, looking only at
    /// civil times at or after `from` (when given).
    fn first_in_day(
        &self,
        date: Date,
        from: Option<DateTime>,
        after: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        let (from_hour, from_minute) = from.map_or((0, 0), |dt| (dt.hour(), dt.minute()));
        for hour in values(self.hours, from_hour, 24) {
            let first_minute = if hour == from_hour { from_minute } else { 0 };
            for minute in values(self.minutes, first_minute, 60) {
                let instant = first_instant(date.at(hour, minute, 0, 0), tz);
                if instant.is_some_and(|instant| instant > after) {
                    return instant;
                }
            }
        }
        None
    }

    /// The earliest second-pass run after `after`, which exists only for a wildcard hour while
    /// `after` lies in a fold. Later folds cannot matter: their first pass comes earlier.
    fn next_second_pass(
        &self,
        civil: DateTime,
        after: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        if !self.hour_wild {
            return None;
        }
        let fold = tz.to_ambiguous_timestamp(civil).offset();
        let AmbiguousOffset::Fold {
            before,
            after: later,
        } = fold
        else {
            return None;
        };
        // The repeated civil range is `width` long and contains `civil`.
        let width = i64::from(before.seconds() - later.seconds()) / 60;
        let mut candidate = civil.checked_sub(SignedDuration::from_mins(width)).ok()?;
        for _ in 0..=2 * width {
            if self.matches(candidate) && tz.to_ambiguous_timestamp(candidate).offset() == fold {
                let instant = later.to_timestamp(candidate).ok()?;
                if instant > after {
                    return Some(instant);
                }
            }
            candidate = candidate.checked_add(SignedDuration::from_mins(1)).ok()?;
        }
        None
    }
}

impl FromStr for Cron {
    type Err = CronError;

    /// Same as [`Cron::parse`].
    fn from_str(s: &str) -> Result<Cron, CronError> {
        Cron::parse(s)
    }
}

impl fmt::Display for Cron {
    /// Writes the original expression text, trimmed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str) -> Cron {
        Cron::parse(expr).expect("expression should parse")
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("valid timestamp")
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).expect("zone in the bundled database")
    }

    fn parse_error(expr: &str) -> String {
        Cron::parse(expr)
            .expect_err("expression should be rejected")
            .to_string()
    }

    /// The five value sets and flags of an expression, without its text.
    fn schedule(expr: &str) -> (u64, u64, u64, u64, u64, bool, bool) {
        let c = cron(expr);
        (
            c.minutes,
            c.hours,
            c.days,
            c.months,
            c.weekdays,
            c.day_or,
            c.hour_wild,
        )
    }

    fn set(values: &[u32]) -> u64 {
        values.iter().fold(0, |bits, v| bits | 1 << v)
    }

    /// The next `n` runs after `after`, as UTC timestamps.
    fn walk(expr: &str, tz: &TimeZone, after: &str, n: usize) -> Vec<String> {
        let c = cron(expr);
        let mut at = ts(after);
        let mut runs = Vec::new();
        for _ in 0..n {
            at = c.next_after(at, tz).expect("a next run");
            runs.push(at.to_string());
        }
        runs
    }

    fn next(expr: &str, tz: &TimeZone, after: &str) -> Option<String> {
        cron(expr).next_after(ts(after), tz).map(|t| t.to_string())
    }

    #[test]
    fn macros_expand() {
        assert_eq!(schedule("@yearly"), schedule("0 0 1 1 *"));
        assert_eq!(schedule("@annually"), schedule("0 0 1 1 *"));
        assert_eq!(schedule("@monthly"), schedule("0 0 1 * *"));
        assert_eq!(schedule("@weekly"), schedule("0 0 * * 0"));
        assert_eq!(schedule("@daily"), schedule("0 0 * * *"));
        assert_eq!(schedule("@midnight"), schedule("0 0 * * *"));
        assert_eq!(schedule("@hourly"), schedule("0 * * * *"));
        assert_eq!(schedule(" @DAILY "), schedule("0 0 * * *"));
        assert_eq!(cron(" @daily ").to_string(), "@daily");
    }

    #[test]
    fn unknown_macros_are_rejected() {
        for expr in ["@reboot", "@every 5m", "@daily 1"] {
            let message = parse_error(expr);
            assert!(
                message.starts_with(&format!("unknown macro '{expr}'")),
                "{message}"
            );
            assert!(message.contains("@hourly"), "{message}");
        }
    }

    #[test]
    fn names_ranges_and_sunday() {
        let c = cron("0 0 * jan-Mar MON-FRI");
        assert_eq!(c.months, set(&[1, 2, 3]));
        assert_eq!(c.weekdays, set(&[1, 2, 3, 4, 5]));
        assert_eq!(cron("0 0 * DEC,feb SUN,sat").months, set(&[2, 12]));
        assert_eq!(cron("0 0 * * SUN,sat").weekdays, set(&[0, 6]));
        assert_eq!(cron("0 0 * * 7").weekdays, set(&[0]));
        assert_eq!(cron("0 0 * * 5-7").weekdays, set(&[0, 5, 6]));
        assert_eq!(
            cron("0 0 * * FRI-SAT,SUN").weekdays,
            cron("0 0 * * 5-7").weekdays
        );
        assert_eq!(
            cron("0 9-17 * * *").hours,
            set(&[9, 10, 11, 12, 13, 14, 15, 16, 17])
        );
    }

    #[test]
    fn steps_and_lists() {
        assert_eq!(cron("*/15 * * * *").minutes, set(&[0, 15, 30, 45]));
        assert_eq!(cron("5/20 * * * *").minutes, set(&[5, 25, 45]));
        assert_eq!(cron("10-30/10 * * * *").minutes, set(&[10, 20, 30]));
        assert_eq!(cron("0 */6 * * *").hours, set(&[0, 6, 12, 18]));
        assert_eq!(cron("0 0 */10 * *").days, set(&[1, 11, 21, 31]));
        assert_eq!(cron("0 0 * */5 *").months, set(&[1, 6, 11]));
        assert_eq!(cron("0 0 * * */2").weekdays, set(&[0, 2, 4, 6]));
        assert_eq!(
            cron("1,2,5-7,*/30 * * * *").minutes,
            set(&[0, 1, 2, 5, 6, 7, 30])
        );
        assert_eq!(cron("*/90 * * * *").minutes, set(&[0]));
        assert_eq!(schedule("? ? ? ? ?"), schedule("* * * * *"));
        assert_eq!(cron("* * * * *").hours, (1 << 24) - 1);
    }

    #[test]
    fn star_flags() {
        assert!(cron("0 0 13 * 5").day_or);
        assert!(!cron("0 0 */2 * 5").day_or);
        assert!(!cron("0 0 13 * ?").day_or);
        assert!(cron("0 * * * *").hour_wild);
        assert!(cron("0 */2 * * *").hour_wild);
        assert!(cron("0 ? * * *").hour_wild);
        assert!(!cron("0 0-23 * * *").hour_wild);
        assert!(!cron("0 2 * * *").hour_wild);
    }

    #[test]
    fn display_and_from_str() {
        let c: Cron = "  */5 1 * * MON  ".parse().expect("parses");
        assert_eq!(c.to_string(), "*/5 1 * * MON");
        assert_eq!(c, cron("*/5 1 * * MON"));
        assert!("* * *".parse::<Cron>().is_err());
    }

    #[test]
    fn field_count_errors() {
        let expected = "expected five fields (minute hour day-of-month month day-of-week) or a macro \
                        such as @daily, got 3 fields";
        assert_eq!(parse_error("* * *"), expected);
        assert!(parse_error("").ends_with("got 0 fields"));
        assert!(parse_error("0 0 * * * *").ends_with("got 6 fields"));
    }

    #[test]
    fn value_errors_name_the_field_and_range() {
        assert_eq!(
            parse_error("0 25 * * *"),
            "hour field '25': values must be 0-23"
        );
        assert_eq!(
            parse_error("60 * * * *"),
            "minute field '60': values must be 0-59"
        );
        assert_eq!(
            parse_error("0 0 0 * *"),
            "day-of-month field '0': values must be 1-31"
        );
        assert_eq!(
            parse_error("0 0 32 * *"),
            "day-of-month field '32': values must be 1-31"
        );
        assert_eq!(
            parse_error("0 0 * 13 *"),
            "month field '13': values must be 1-12 or JAN-DEC"
        );
        assert_eq!(
            parse_error("0 0 * * 8"),
            "day-of-week field '8': values must be 0-7 or SUN-SAT (0 and 7 are Sunday)"
        );
        assert_eq!(
            parse_error("0 0 * FOO *"),
            "month field 'FOO': 'FOO' is not a valid value; values must be 1-12 or JAN-DEC"
        );
        assert_eq!(
            parse_error("0 0 * * MON-FUN"),
            "day-of-week field 'MON-FUN': 'FUN' is not a valid value; values must be 0-7 or SUN-SAT \
             (0 and 7 are Sunday)"
        );
        assert_eq!(
            parse_error("0 JAN * * *"),
            "hour field 'JAN': 'JAN' is not a valid value; values must be 0-23"
        );
        assert_eq!(
            parse_error("0 99999999999 * * *"),
            "hour field '99999999999': values must be 0-23"
        );
    }

    #[test]
    fn syntax_errors_name_the_field_and_range() {
        assert_eq!(
            parse_error("*/0 * * * *"),
            "minute field '*/0': step must be at least 1; values must be 0-59"
        );
        assert_eq!(
            parse_error("0 */x * * *"),
            "hour field '*/x': step 'x' is not a positive number; values must be 0-23"
        );
        assert_eq!(
            parse_error("0 0 1/2/3 * *"),
            "day-of-month field '1/2/3': step '2/3' is not a positive number; values must be 1-31"
        );
        assert_eq!(
            parse_error("0 5-3 * * *"),
            "hour field '5-3': range 5-3 is reversed (write the smaller value first); values must be 0-23"
        );
        assert_eq!(
            parse_error("0 0 * * FRI-MON"),
            "day-of-week field 'FRI-MON': range FRI-MON is reversed (write the smaller value first); values \
             must be 0-7 or SUN-SAT (0 and 7 are Sunday)"
        );
        assert_eq!(
            parse_error("1,,2 * * * *"),
            "minute field '1,,2': empty item in list; values must be 0-59"
        );
        assert_eq!(
            parse_error("0 0 * 1, *"),
            "month field '1,': empty item in list; values must be 1-12 or JAN-DEC"
        );
        assert_eq!(
            parse_error("0 1- * * *"),
            "hour field '1-': missing value in range; values must be 0-23"
        );
        assert_eq!(
            parse_error("*-5 * * * *"),
            "minute field '*-5': '*' is not a valid value; values must be 0-59"
        );
        assert_eq!(
            parse_error("+5 * * * *"),
            "minute field '+5': '+5' is not a valid value; values must be 0-59"
        );
    }

    #[test]
    fn utc_every_five_minutes() {
        let utc = TimeZone::UTC;
        assert_eq!(
            walk("*/5 * * * *", &utc, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:05:00Z",
                "2026-01-01T00:10:00Z",
                "2026-01-01T00:15:00Z"
            ]
        );
        assert_eq!(
            next("*/5 * * * *", &utc, "2026-01-01T00:03:27.5Z").as_deref(),
            Some("2026-01-01T00:05:00Z")
        );
        assert_eq!(
            next("*/5 * * * *", &utc, "2026-12-31T23:59:00Z").as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn utc_daily_and_weekdays() {
        let utc = TimeZone::UTC;
        assert_eq!(
            next("0 1 * * *", &utc, "2026-01-01T00:59:59Z").as_deref(),
            Some("2026-01-01T01:00:00Z")
        );
        assert_eq!(
            next("0 1 * * *", &utc, "2026-01-01T01:00:00Z").as_deref(),
            Some("2026-01-02T01:00:00Z")
        );
        // 2026-01-02 is a Friday.
        assert_eq!(
            walk("30 2 * * 1-5", &utc, "2026-01-02T03:00:00Z", 3),
            [
                "2026-01-05T02:30:00Z",
                "2026-01-06T02:30:00Z",
                "2026-01-07T02:30:00Z"
            ]
        );
        assert_eq!(
            walk("0 0 1 * *", &utc, "2026-01-15T00:00:00Z", 2),
            ["2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"]
        );
        assert_eq!(
            next("@yearly", &utc, "2026-01-01T00:00:00Z").as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn utc_leap_days_and_impossible_dates() {
        let utc = TimeZone::UTC;
        assert_eq!(
            walk("0 0 29 2 *", &utc, "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
        assert_eq!(next("0 0 30 2 *", &utc, "2026-01-01T00:00:00Z"), None);
        assert_eq!(
            next("0 0 31 4,6,9,11 *", &utc, "2026-01-01T00:00:00Z"),
            None
        );
        // In February, the 29th or any Monday (2026-02-02 is the first Monday).
        assert_eq!(
            walk("0 0 29 2 1", &utc, "2026-01-01T00:00:00Z", 5)[4],
            "2027-02-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 1", &utc, "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-02-02T00:00:00Z")
        );
        // 2100 is not a leap year: eight years to the next Feb 29.
        assert_eq!(
            next("0 0 29 2 *", &utc, "2096-03-01T00:00:00Z").as_deref(),
            Some("2104-02-29T00:00:00Z")
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        let utc = TimeZone::UTC;
        // April 2026: Fridays are the 3rd, 10th, 17th and 24th; the 13th is a Monday.
        assert_eq!(
            walk("0 0 13 * 5", &utc, "2026-04-01T00:00:00Z", 5),
            [
                "2026-04-03T00:00:00Z",
                "2026-04-10T00:00:00Z",
                "2026-04-13T00:00:00Z",
                "2026-04-17T00:00:00Z",
                "2026-04-24T00:00:00Z"
            ]
        );
        // A '*'-based day-of-month makes both fields required: odd days that are Fridays.
        assert_eq!(
            walk("0 0 */2 * 5", &utc, "2026-04-01T00:00:00Z", 2),
            ["2026-04-03T00:00:00Z", "2026-04-17T00:00:00Z"]
        );
        assert_eq!(
            next("0 0 13 * *", &utc, "2026-04-01T00:00:00Z").as_deref(),
            Some("2026-04-13T00:00:00Z")
        );
        assert_eq!(
            next("0 0 ? * FRI", &utc, "2026-04-03T00:00:00Z").as_deref(),
            Some("2026-04-10T00:00:00Z")
        );
    }

    #[test]
    fn fixed_offset_zone() {
        let est = TimeZone::fixed(jiff::tz::offset(-5));
        assert_eq!(
            walk("0 1 * * *", &est, "2026-03-08T00:00:00Z", 2),
            ["2026-03-08T06:00:00Z", "2026-03-09T06:00:00Z"]
        );
    }

    #[test]
    fn berlin_spring_forward_daily() {
        let berlin = zone("Europe/Berlin");
        // 2026-03-29 02:00 CET jumps to 03:00 CEST (01:00Z): 02:30 runs once, at 03:00 CEST.
        assert_eq!(
            walk("30 2 * * *", &berlin, "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        assert_eq!(
            walk("0 2 * * *", &berlin, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]
        );
        // 02:00 (missing) and 03:00 both match: still a single run at 03:00 CEST.
        assert_eq!(
            walk("0 2,3 * * *", &berlin, "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T01:00:00Z"
            ]
        );
    }

    #[test]
    fn berlin_spring_forward_every_fifteen_minutes() {
        let berlin = zone("Europe/Berlin");
        assert_eq!(
            walk("*/15 * * * *", &berlin, "2026-03-29T00:30:00Z", 4),
            [
                "2026-03-29T00:45:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:15:00Z",
                "2026-03-29T01:30:00Z"
            ]
        );
        // `after` just before and exactly at the end of the gap.
        let c = cron("*/15 * * * *");
        assert_eq!(
            c.next_after(ts("2026-03-29T00:59:59Z"), &berlin),
            Some(ts("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            c.next_after(ts("2026-03-29T01:00:00Z"), &berlin),
            Some(ts("2026-03-29T01:15:00Z"))
        );
        // An hourly job at :05 has its missing 02:05 run moved to 03:00 CEST.
        assert_eq!(
            walk("5 * * * *", &berlin, "2026-03-28T23:30:00Z", 3),
            [
                "2026-03-29T00:05:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:05:00Z"
            ]
        );
    }

    #[test]
    fn berlin_fall_back_fixed_hour_runs_once() {
        let berlin = zone("Europe/Berlin");
        // 2026-10-25 03:00 CEST goes back to 02:00 CET (01:00Z): 02:xx happens twice.
        assert_eq!(
            walk("30 2 * * *", &berlin, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // `after` in the second pass does not bring the run back.
        assert_eq!(
            next("30 2 * * *", &berlin, "2026-10-25T01:10:00Z").as_deref(),
            Some("2026-10-26T01:30:00Z")
        );
        assert_eq!(
            next("30 2 * * *", &berlin, "2026-10-25T00:30:00Z").as_deref(),
            Some("2026-10-26T01:30:00Z")
        );
        // A fixed hour with a wildcard minute also runs in the first pass only.
        assert_eq!(
            walk("*/15 2 * * *", &berlin, "2026-10-24T23:59:00Z", 5),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-26T01:00:00Z"
            ]
        );
    }

    #[test]
    fn berlin_fall_back_wildcard_hour_runs_by_elapsed_time() {
        let berlin = zone("Europe/Berlin");
        assert_eq!(
            walk("0 * * * *", &berlin, "2026-10-24T23:30:00Z", 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ]
        );
        assert_eq!(
            walk("*/30 * * * *", &berlin, "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z"
            ]
        );
        let c = cron("*/30 * * * *");
        let cases = [
            ("2026-10-25T00:40:00Z", "2026-10-25T01:00:00Z"), // first pass, 02:40 CEST
            ("2026-10-25T00:59:59Z", "2026-10-25T01:00:00Z"),
            ("2026-10-25T01:00:00Z", "2026-10-25T01:30:00Z"), // second pass, 02:00 CET
            ("2026-10-25T01:10:00Z", "2026-10-25T01:30:00Z"),
            ("2026-10-25T01:30:00Z", "2026-10-25T02:00:00Z"),
            ("2026-10-25T01:45:00Z", "2026-10-25T02:00:00Z"),
        ];
        for (after, expected) in cases {
            assert_eq!(
                c.next_after(ts(after), &berlin),
                Some(ts(expected)),
                "after {after}"
            );
        }
    }

    #[test]
    fn new_york_daily_at_half_past_two() {
        let new_york = zone("America/New_York");
        // 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00Z).
        assert_eq!(
            walk("30 2 * * *", &new_york, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
        // 2026-11-01 02:00 EDT goes back to 01:00 EST (06:00Z); 02:30 itself is not repeated.
        assert_eq!(
            walk("30 2 * * *", &new_york, "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T06:30:00Z",
                "2026-11-01T07:30:00Z",
                "2026-11-02T07:30:00Z"
            ]
        );
        // 01:30 is repeated and runs in the first pass only.
        assert_eq!(
            walk("30 1 * * *", &new_york, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn new_york_hourly() {
        let new_york = zone("America/New_York");
        assert_eq!(
            walk("0 * * * *", &new_york, "2026-03-08T05:30:00Z", 3),
            [
                "2026-03-08T06:00:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T08:00:00Z"
            ]
        );
        assert_eq!(
            walk("0 * * * *", &new_york, "2026-11-01T03:30:00Z", 4),
            [
                "2026-11-01T04:00:00Z",
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
        assert_eq!(
            next("0 * * * *", &new_york, "2026-11-01T05:30:00Z").as_deref(),
            Some("2026-11-01T06:00:00Z")
        );
        assert_eq!(
            next("0 * * * *", &new_york, "2026-11-01T06:30:00Z").as_deref(),
            Some("2026-11-01T07:00:00Z")
        );
    }

    /// The instant of a civil time in `tz` (for test set-up; 00:00 is unambiguous in these zones).
    fn local(tz: &TimeZone, civil: DateTime) -> Timestamp {
        tz.to_ambiguous_timestamp(civil)
            .compatible()
            .expect("civil time in range")
    }

    /// Every run of `expr` in the civil year 2026 of `tz`, walked with `next_after`.
    fn year_runs(expr: &str, tz: &TimeZone) -> Vec<Timestamp> {
        let c = cron(expr);
        let end = local(tz, jiff::civil::date(2027, 1, 1).at(0, 0, 0, 0));
        let mut at =
            local(tz, jiff::civil::date(2026, 1, 1).at(0, 0, 0, 0)) - SignedDuration::from_secs(1);
        let mut runs = Vec::new();
        while let Some(run) = c.next_after(at, tz).filter(|run| *run < end) {
            runs.push(run);
            at = run;
        }
        runs
    }

    /// Runs are strictly increasing and never more than `interval` apart, from the start of 2026
    /// to its end: nothing is doubled and nothing is lost.
    fn assert_even(expr: &str, tz: &TimeZone, interval: SignedDuration, count: usize) {
        let runs = year_runs(expr, tz);
        let start = local(tz, jiff::civil::date(2026, 1, 1).at(0, 0, 0, 0));
        let end = local(tz, jiff::civil::date(2027, 1, 1).at(0, 0, 0, 0));
        assert_eq!(runs.first(), Some(&start), "{expr} in {tz:?}");
        for pair in runs.windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(
                gap > SignedDuration::ZERO && gap <= interval,
                "{expr}: {} -> {}",
                pair[0],
                pair[1]
            );
        }
        let last = runs.last().expect("runs in 2026");
        assert!(
            end.duration_since(*last) <= interval,
            "{expr}: last run {last}"
        );
        assert_eq!(runs.len(), count, "{expr} in {tz:?}");
    }

    #[test]
    fn year_walk_by_elapsed_time() {
        for name in ["Europe/Berlin", "America/New_York"] {
            let tz = zone(name);
            assert_even("0 * * * *", &tz, SignedDuration::from_hours(1), 8760);
            assert_even("*/20 * * * *", &tz, SignedDuration::from_mins(20), 3 * 8760);
        }
    }

    #[test]
    fn year_walk_daily_runs_once_per_civil_day() {
        for name in ["Europe/Berlin", "America/New_York"] {
            let tz = zone(name);
            for expr in ["0 2 * * *", "30 2 * * *", "30 1 * * *"] {
                let runs = year_runs(expr, &tz);
                assert_eq!(runs.len(), 365, "{expr} in {name}");
                let mut days: Vec<Date> =
                    runs.iter().map(|run| tz.to_datetime(*run).date()).collect();
                assert!(
                    runs.windows(2).all(|pair| pair[0] < pair[1]),
                    "{expr} in {name}"
                );
                days.dedup();
                assert_eq!(days.len(), 365, "{expr} in {name}");
            }
        }
    }

    /// The first instant at or after the gap that contains `civil` (independently of `gap_end`).
    fn reference_gap_end(civil: DateTime, tz: &TimeZone) -> Timestamp {
        let mut later = civil;
        loop {
            later = later
                .checked_add(SignedDuration::from_mins(1))
                .expect("in range");
            if let AmbiguousOffset::Unambiguous { offset } =
                tz.to_ambiguous_timestamp(later).offset()
            {
                return offset.to_timestamp(later).expect("in range");
            }
        }
    }

    /// Every run of `c` whose civil time lies in `[from, to)`, by the module's rules, minute by minute.
    fn reference_runs(c: &Cron, tz: &TimeZone, from: DateTime, to: DateTime) -> Vec<Timestamp> {
        let mut runs = Vec::new();
        let mut civil = from;
        while civil < to {
            if c.matches(civil) {
                match tz.to_ambiguous_timestamp(civil).offset() {
                    AmbiguousOffset::Unambiguous { offset } => {
                        runs.push(offset.to_timestamp(civil))
                    }
                    AmbiguousOffset::Gap { .. } => runs.push(Ok(reference_gap_end(civil, tz))),
                    AmbiguousOffset::Fold { before, after } => {
                        runs.push(before.to_timestamp(civil));
                        if c.hour_wild {
                            runs.push(after.to_timestamp(civil));
                        }
                    }
                }
            }
            civil = civil
                .checked_add(SignedDuration::from_mins(1))
                .expect("in range");
        }
        let mut runs: Vec<Timestamp> = runs.into_iter().map(|run| run.expect("in range")).collect();
        runs.sort();
        runs.dedup();
        runs
    }

    /// `next_after` agrees with the brute-force reference for many `after` values around `transition`.
    fn check_against_reference(expr: &str, tz: &TimeZone, transition: Timestamp) {
        let c = cron(expr);
        let day = tz.to_datetime(transition).date();
        let from = day.yesterday().expect("in range").at(0, 0, 0, 0);
        let to = day.checked_add(3.days()).expect("in range").at(0, 0, 0, 0);
        let runs = reference_runs(&c, tz, from, to);
        let mut probes: Vec<Timestamp> = runs
            .iter()
            .flat_map(|r| [*r, *r - SignedDuration::from_secs(1)])
            .collect();
        let mut probe = transition - SignedDuration::from_hours(20);
        while probe < transition + SignedDuration::from_hours(20) {
            probes.push(probe);
            probe += SignedDuration::from_secs(7 * 60 + 13);
        }
        // Probes from the first reference run on: every later run is in the reference.
        let (first, last) = (runs[0], runs[runs.len() - 1]);
        probes.retain(|p| *p >= first && *p < last);
        assert!(probes.len() > 100, "{expr} in {tz:?}: too few probes");
        for after in probes {
            let expected = runs.iter().find(|run| **run > after).copied();
            assert_eq!(
                c.next_after(after, tz),
                expected,
                "{expr} in {tz:?} after {after}"
            );
        }
    }

    #[test]
    fn matches_reference_around_every_2026_transition() {
        let zones = [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "America/Santiago",
            "Antarctica/Troll",
            "America/Havana",
        ];
        let exprs = [
            "* * * * *",
            "*/20 * * * *",
            "0 * * * *",
            "5 * * * *",
            "45 * * * *",
            "*/15 2 * * *",
            "30 2 * * *",
            "0 2,3 * * *",
            "30 1 * * *",
            "0 0 * * *",
            "30 23 * * *",
            "0 */2 * * *",
        ];
        let (start, end) = (ts("2026-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"));
        for name in zones {
            let tz = zone(name);
            let transitions: Vec<Timestamp> = tz
                .following(start)
                .map(|t| t.timestamp())
                .take_while(|t| *t < end)
                .collect();
            assert!(transitions.len() >= 2, "{name} has DST in 2026");
            for transition in transitions {
                for expr in exprs {
                    check_against_reference(expr, &tz, transition);
                }
            }
        }
    }
}
