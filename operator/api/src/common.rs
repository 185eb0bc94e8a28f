//! Types shared by several kinds: durations, references, retention rules, progress, conditions.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Go-style duration syntax accepted everywhere (`30s`, `1h30m`, `720h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// CEL for the root object: each named `spec` field keeps its value (and presence) once set.
/// Written with `has()` rather than optionals: the API server's cost estimator bounds only these.
pub fn immutable_fields(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| {
            format!("has(self.spec.{f}) == has(oldSelf.spec.{f}) && (!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f})")
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// CEL: a retention (`keep`) names at least one rule.
pub fn retention_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        "has(self.last) || has(self.hourly) || has(self.daily) || has(self.weekly) || has(self.monthly) || has(self.yearly) || has(self.within)",
    )
    .message("keep needs at least one rule: last, hourly, daily, weekly, monthly, yearly or within")
}

/// CEL: a string is a cron expression (loose syntax check, see [`crate::schedule::CRON_PATTERN`]).
pub fn cron_rule(message: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!("self.matches('{}')", crate::schedule::CRON_PATTERN))
        .message(message)
}

/// A namespace name (RFC 1123 label).
pub const NAMESPACE_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A namespace name or `*`.
pub const NAMESPACE_OR_STAR_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$";
/// A resource name: plural, short name, or `resource.group`.
pub const RESOURCE_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A resource name or `*`.
pub const RESOURCE_OR_STAR_PATTERN: &str =
    r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$";

/// CEL: `labelSelector` and `orLabelSelectors` exclude each other (on a spec embedding [`Selection`](crate::backup::Selection)).
pub const SELECTORS_EXCLUSIVE: &str =
    "!has(self.labelSelector) || !has(self.orLabelSelectors) || size(self.orLabelSelectors) == 0";
pub const SELECTORS_EXCLUSIVE_MSG: &str = "labelSelector and orLabelSelectors cannot be used together; move the labelSelector into orLabelSelectors";

/// A non-negative duration written like Kubernetes writes them: `30s`, `5m`, `1h30m`, `720h`.
///
/// Stored as a Go `time.Duration` string on the wire; validated by a pattern at admission.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = kube::core::Duration::from(self.0);
        fmt::Display::fmt(&d, f)
    }
}

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationParseError(String);

impl fmt::Display for DurationParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DurationParseError {}

/// Longest duration accepted: Go's `time.Duration` limit (2^63 - 1 ns, about 292 years).
const MAX_DURATION_SECS: f64 = i64::MAX as f64 / 1e9;

/// kube's parser panics on a value a `std::time::Duration` cannot hold (a negative or huge
/// part: `5h-3m`, `99999999999999999999999h`, both short enough for the CRD's pattern), so
/// the parts are checked first, split exactly as it splits them; what it would refuse
/// anyway is left to it.
fn check_duration_range(s: &str) -> Result<(), String> {
    let mut rest = s.trim_start_matches('+').trim_start_matches('-');
    let mut secs = 0f64;
    while !rest.is_empty() && rest != "0" {
        let Some(unit_start) = rest.find(|c: char| c.is_alphabetic()) else {
            return Ok(());
        };
        let (val, after) = rest.split_at(unit_start);
        let Ok(val) = val.parse::<f64>() else {
            return Ok(());
        };
        let (unit, after) = match after.find(|c: char| !c.is_alphabetic()) {
            Some(i) => after.split_at(i),
            None => (after, ""),
        };
        rest = after;
        let base = match unit {
            "ns" => 1e-9,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Ok(()),
        };
        if val.is_nan() || val < 0.0 {
            return Err(format!("part {val}{unit} is negative"));
        }
        secs += val * base;
        if !secs.is_finite() || secs > MAX_DURATION_SECS {
            return Err("longer than 2562047h (the longest Go duration)".into());
        }
    }
    Ok(())
}

impl FromStr for Duration {
    type Err = DurationParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_duration_range(s)
            .map_err(|e| DurationParseError(format!("invalid duration {s:?}: {e}")))?;
        let d: kube::core::Duration = s.parse().map_err(|e| {
            DurationParseError(format!(
                "invalid duration {s:?}: {e} (examples: 30s, 5m, 1h30m)"
            ))
        })?;
        if d.is_negative() {
            return Err(DurationParseError(format!(
                "invalid duration {s:?}: must not be negative"
            )));
        }
        Ok(Self(d.into()))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 64,
        })
    }
}

/// A reference to a key in a Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A namespaced object reference.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedName {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How long restore points are kept. Rules combine like restic's `forget`: a restore point
/// is kept when any rule keeps it, and the newest successful one is never removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the newest N restore points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub last: Option<u32>,
    /// Keep the newest restore point of each of the last N hours that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub hourly: Option<u32>,
    /// Keep the newest restore point of each of the last N days that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub daily: Option<u32>,
    /// Keep the newest restore point of each of the last N weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub weekly: Option<u32>,
    /// Keep the newest restore point of each of the last N months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub monthly: Option<u32>,
    /// Keep the newest restore point of each of the last N years that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub yearly: Option<u32>,
    /// Keep every restore point younger than this (for example `24h` or `720h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
}

impl Retention {
    /// True when no rule is set (nothing would be kept by rules alone).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Progress of a running backup or restore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Volumes finished (successfully or not).
    #[serde(default)]
    pub volumes_done: u32,
    /// Volumes in this operation.
    #[serde(default)]
    pub volumes_total: u32,
    /// Bytes processed so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to process in total (as far as known).
    #[serde(default)]
    pub bytes_total: u64,
    /// Percentage of bytes processed, for display (0-100).
    #[serde(default)]
    pub percent: u8,
}

impl Progress {
    /// Recompute `percent` from bytes (or from volumes when sizes are unknown).
    pub fn with_percent(mut self) -> Self {
        self.percent = if self.bytes_total > 0 {
            ((self.bytes_done.min(self.bytes_total) as u128 * 100) / self.bytes_total as u128) as u8
        } else if self.volumes_total > 0 {
            ((self.volumes_done.min(self.volumes_total) as u64 * 100) / self.volumes_total as u64)
                as u8
        } else {
            0
        };
        self
    }
}

/// Schema for a list of conditions: a list-map keyed by `type`, as Kubernetes tooling expects.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "description": "Standard conditions: Ready, Reconciling and Stalled, plus kind-specific ones.",
    })
}

/// Kubernetes label-selector schema reused for every `labelSelector` field.
pub type LabelSelector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_round_trips_go_syntax() {
        for (s, secs) in [
            ("30s", 30),
            ("5m", 300),
            ("1h30m", 5400),
            ("720h", 2_592_000),
        ] {
            let d: Duration = s.parse().expect("valid");
            assert_eq!(d.as_std().as_secs(), secs, "{s}");
            let back: Duration = d.to_string().parse().expect("reparse");
            assert_eq!(back, d);
        }
    }

    #[test]
    fn duration_rejects_bad_input_with_examples() {
        let err = "5 minutes".parse::<Duration>().expect_err("invalid");
        assert!(err.to_string().contains("examples"), "{err}");
        assert!("-5m".parse::<Duration>().is_err());
        assert!("10".parse::<Duration>().is_err());
    }

    #[test]
    fn duration_pattern_matches_what_the_parser_accepts() {
        let re = regex_lite::Regex::new(DURATION_PATTERN).expect("pattern compiles");
        for ok in ["30s", "1h30m", "1.5h", "100ms", "720h"] {
            assert!(re.is_match(ok), "{ok}");
            assert!(ok.parse::<Duration>().is_ok(), "{ok}");
        }
        for bad in ["", "5", "5 m", "-5m", "1d", "h"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn duration_out_of_range_is_an_error_not_a_panic() {
        // Both match DURATION_PATTERN (so the API server admits them); kube's parser panicked.
        let huge = format!("{}h", "9".repeat(40));
        let re = regex_lite::Regex::new(DURATION_PATTERN).expect("pattern compiles");
        assert!(re.is_match(&huge));
        for s in [huge.as_str(), "5h-3m", "2562048h", "1e400h"] {
            let err = s.parse::<Duration>().expect_err(s).to_string();
            assert!(err.contains("invalid duration"), "{s}: {err}");
        }
        assert_eq!(
            "2562047h".parse::<Duration>().expect("longest").as_std(),
            std::time::Duration::from_secs(2562047 * 3600)
        );
    }

    #[test]
    fn progress_percent() {
        let p = Progress {
            bytes_done: 50,
            bytes_total: 200,
            ..Default::default()
        }
        .with_percent();
        assert_eq!(p.percent, 25);
        let p = Progress {
            volumes_done: 1,
            volumes_total: 2,
            ..Default::default()
        }
        .with_percent();
        assert_eq!(p.percent, 50);
        let p = Progress {
            bytes_done: 500,
            bytes_total: 200,
            ..Default::default()
        }
        .with_percent();
        assert_eq!(p.percent, 100);
    }
}
