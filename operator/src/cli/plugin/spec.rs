//! Builds Backup and Restore objects from the plugin's flags, and parses the flag syntaxes
//! (kubectl label selectors, `a:b` mappings, `--at` times). Pure: no cluster, no clock.

use std::collections::BTreeMap;

use holdfast_api::Duration;
use holdfast_api::backup::{Backup, BackupSpec, DeletionPolicy, Selection, VolumeMode};
use holdfast_api::restore::{
    ExistingResourcePolicy, Restore, RestoreFrom, RestoreSource, RestoreSpec, RestoreTarget,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, Time,
};
use kube::api::ObjectMeta;

/// A flag whose value cannot be used: which flag, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct FlagError {
    pub flag: &'static str,
    pub message: String,
}

fn flag_error(flag: &'static str, message: impl Into<String>) -> FlagError {
    FlagError {
        flag,
        message: message.into(),
    }
}

/// The selection flags shared by `backup create` and `restore create`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SelectionFlags {
    /// Namespaces to include, comma-separated (`*` = all). Only a Backup in the operator's
    /// namespace may name other namespaces than its own.
    #[arg(long, value_delimiter = ',')]
    pub include_namespaces: Vec<String>,
    /// Namespaces to exclude, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Resource kinds to include, comma-separated (`deployments`, `certificates.cert-manager.io`).
    #[arg(long, value_delimiter = ',')]
    pub include_resources: Vec<String>,
    /// Resource kinds to exclude, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_resources: Vec<String>,
    /// Label selector, as kubectl takes it: `app=shop,tier!=cache,env in (prod,staging),!legacy`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// The flags of `backup create` that go into the object.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BackupFlags {
    #[command(flatten)]
    pub selection: SelectionFlags,
    /// The BackupStorageLocation (in the operator's namespace); default: the default location.
    #[arg(long)]
    pub location: Option<String>,
    /// How long the backup is kept after it completes, as a duration such as `72h` or `90m`.
    #[arg(long)]
    pub ttl: Option<String>,
    /// What happens to volume data: `Snapshot`, `SnapshotAndCopy` (default) or `Copy`.
    #[arg(long)]
    pub volume_mode: Option<String>,
    /// What deleting the Backup does to its data: `Delete` (default) or `Retain`.
    #[arg(long)]
    pub deletion_policy: Option<String>,
}

/// The flags of `restore create` that go into the object.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RestoreFlags {
    /// The Backup to restore (`NAME`, or `NAMESPACE/NAME` for a Restore in the operator's
    /// namespace).
    #[arg(long, conflicts_with = "from_schedule")]
    pub from_backup: Option<String>,
    /// Restore the newest completed backup of this Schedule (or the newest at or before --at).
    #[arg(long)]
    pub from_schedule: Option<String>,
    /// With --from-schedule: the point in time, RFC 3339 (`2026-12-06T23:00:00Z`) or
    /// `DURATION ago` (`2h ago`, `90 minutes ago`).
    #[arg(long, requires = "from_schedule")]
    pub at: Option<String>,
    /// Restore namespace A of the backup into namespace B: `A:B`, comma-separated or repeated
    /// (only for a Restore in the operator's namespace).
    #[arg(long, value_delimiter = ',')]
    pub namespace_mapping: Vec<String>,
    /// Restore claims of StorageClass A with StorageClass B: `A:B`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub storage_class_mapping: Vec<String>,
    #[command(flatten)]
    pub selection: SelectionFlags,
    /// Which copy of the data to read: `Auto` (default: the snapshot while it exists),
    /// `Snapshot` or `Copy`.
    #[arg(long)]
    pub data_from: Option<String>,
    /// Overwrite the existing claims' data instead of creating new claims (refused while a
    /// pod mounts them).
    #[arg(long)]
    pub in_place: bool,
    /// What to do with objects that exist: `None` (default: leave them) or `Update`.
    #[arg(long)]
    pub existing_resource_policy: Option<String>,
}

/// Parses a kubectl label selector (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`).
pub fn parse_selector(s: &str) -> Result<LabelSelector, FlagError> {
    let bad = |part: &str, why: &str| {
        flag_error(
            "--selector",
            format!(
                "{why} in {part:?}; write it as kubectl does, for example `app=shop,tier!=cache,env in (prod,staging)`"
            ),
        )
    };
    let mut labels = BTreeMap::new();
    let mut exprs = Vec::new();
    for part in split_top_level(s) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let req = |key: &str, op: &str, values: Option<Vec<String>>| {
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(bad(part, "a label key is missing or has blanks"));
            }
            Ok(LabelSelectorRequirement {
                key: key.to_string(),
                operator: op.to_string(),
                values,
            })
        };
        if let Some((key, value)) = part.split_once("!=") {
            exprs.push(req(key, "NotIn", Some(vec![value.trim().to_string()]))?);
        } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(bad(part, "a label key is missing or has blanks"));
            }
            labels.insert(key.to_string(), value.trim().to_string());
        } else if let Some(open) = part.find('(') {
            let head = part[..open].trim();
            let close = part
                .rfind(')')
                .filter(|c| *c > open)
                .ok_or_else(|| bad(part, "a `(` without its `)`"))?;
            let values: Vec<String> = part[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let (key, op) = if let Some(k) = head.strip_suffix(" notin") {
                (k, "NotIn")
            } else if let Some(k) = head.strip_suffix(" in") {
                (k, "In")
            } else {
                return Err(bad(part, "expected `in` or `notin` before `(`"));
            };
            exprs.push(req(key, op, Some(values))?);
        } else if let Some(key) = part.strip_prefix('!') {
            exprs.push(req(key, "DoesNotExist", None)?);
        } else {
            exprs.push(req(part, "Exists", None)?);
        }
    }
    if labels.is_empty() && exprs.is_empty() {
        return Err(bad(s, "no requirement"));
    }
    Ok(LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses `A:B` pairs into a map.
pub fn parse_mapping(
    flag: &'static str,
    pairs: &[String],
) -> Result<BTreeMap<String, String>, FlagError> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (a, b) = p
            .split_once(':')
            .map(|(a, b)| (a.trim(), b.trim()))
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(':'))
            .ok_or_else(|| {
                flag_error(
                    flag,
                    format!("{p:?} is not `FROM:TO`; write for example `shop:shop-staging`"),
                )
            })?;
        if out.insert(a.to_string(), b.to_string()).is_some() {
            return Err(flag_error(flag, format!("{a:?} is mapped twice")));
        }
    }
    Ok(out)
}

/// Parses `--at`: an RFC 3339 time, or `DURATION ago` relative to `now`.
pub fn parse_at(s: &str, now: Timestamp) -> Result<Timestamp, FlagError> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let fix = "write an RFC 3339 time (`2026-12-06T23:00:00Z`) or `DURATION ago` (`2h ago`, `90 minutes ago`; days as hours: `48h ago`)";
    let ago = s
        .trim()
        .strip_suffix("ago")
        .map(str::trim)
        .ok_or_else(|| flag_error("--at", format!("{s:?} is not a time; {fix}")))?;
    let d: jiff::SignedDuration = ago
        .parse()
        .map_err(|e| flag_error("--at", format!("{s:?}: {e}; {fix}")))?;
    now.checked_sub(d)
        .map_err(|e| flag_error("--at", format!("{s:?}: {e}; {fix}")))
}

/// Parses one of an API enum's values by its name (as written in YAML).
fn parse_enum<T: serde::de::DeserializeOwned>(
    flag: &'static str,
    value: &str,
    allowed: &[&str],
) -> Result<T, FlagError> {
    let canonical = allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value))
        .ok_or_else(|| {
            flag_error(
                flag,
                format!("{value:?} is not one of {}", allowed.join(", ")),
            )
        })?;
    serde_json::from_value(serde_json::Value::String((*canonical).to_string()))
        .map_err(|e| flag_error(flag, e.to_string()))
}

fn selection(f: &SelectionFlags) -> Result<Selection, FlagError> {
    Ok(Selection {
        included_namespaces: f.include_namespaces.clone(),
        excluded_namespaces: f.exclude_namespaces.clone(),
        included_resources: f.include_resources.clone(),
        excluded_resources: f.exclude_resources.clone(),
        label_selector: f.selector.as_deref().map(parse_selector).transpose()?,
        or_label_selectors: Vec::new(),
    })
}

fn meta(name: &str, namespace: &str) -> Result<ObjectMeta, FlagError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(flag_error(
            "NAME",
            format!(
                "{name:?} is not a valid object name; use lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    })
}

/// The Backup `namespace/name` that the flags describe.
pub fn backup(name: &str, namespace: &str, f: &BackupFlags) -> Result<Backup, FlagError> {
    let ttl = f
        .ttl
        .as_deref()
        .map(|t| {
            t.parse::<Duration>()
                .map_err(|e| flag_error("--ttl", format!("{e}; write for example `72h` or `90m`")))
        })
        .transpose()?;
    let mut spec = BackupSpec {
        storage_location: f.location.clone(),
        selection: selection(&f.selection)?,
        ttl,
        ..Default::default()
    };
    if let Some(m) = &f.volume_mode {
        spec.volumes.mode =
            parse_enum::<VolumeMode>("--volume-mode", m, &["Snapshot", "SnapshotAndCopy", "Copy"])?;
    }
    if let Some(p) = &f.deletion_policy {
        spec.deletion_policy =
            parse_enum::<DeletionPolicy>("--deletion-policy", p, &["Delete", "Retain"])?;
    }
    Ok(Backup {
        metadata: meta(name, namespace)?,
        spec,
        status: None,
    })
}

/// The Restore `namespace/name` that the flags describe; `now` resolves `--at … ago`.
pub fn restore(
    name: &str,
    namespace: &str,
    f: &RestoreFlags,
    now: Timestamp,
) -> Result<Restore, FlagError> {
    let source = match (&f.from_backup, &f.from_schedule) {
        (Some(b), None) => RestoreSource {
            backup: Some(b.clone()),
            schedule: None,
            point_in_time: None,
        },
        (None, Some(s)) => RestoreSource {
            backup: None,
            schedule: Some(s.clone()),
            point_in_time: f
                .at
                .as_deref()
                .map(|a| parse_at(a, now).map(Time))
                .transpose()?,
        },
        _ => {
            return Err(flag_error(
                "--from-backup",
                "say what to restore: --from-backup BACKUP or --from-schedule SCHEDULE [--at TIME]",
            ));
        }
    };
    let mut spec = RestoreSpec {
        source,
        from: RestoreFrom::Auto,
        volumes: Default::default(),
        selection: selection(&f.selection)?,
        namespace_mapping: parse_mapping("--namespace-mapping", &f.namespace_mapping)?,
        storage_class_mapping: parse_mapping("--storage-class-mapping", &f.storage_class_mapping)?,
        existing_resource_policy: ExistingResourcePolicy::None,
        hooks: None,
        cancel: false,
    };
    if let Some(d) = &f.data_from {
        spec.from = parse_enum::<RestoreFrom>("--data-from", d, &["Auto", "Snapshot", "Copy"])?;
    }
    if f.in_place {
        spec.volumes.target = RestoreTarget::InPlace;
    }
    if let Some(p) = &f.existing_resource_policy {
        spec.existing_resource_policy = parse_enum::<ExistingResourcePolicy>(
            "--existing-resource-policy",
            p,
            &["None", "Update"],
        )?;
    }
    Ok(Restore {
        metadata: meta(name, namespace)?,
        spec,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_as_kubectl_writes_them() {
        let s = parse_selector("app=shop, tier!=cache,env in (prod, staging),!legacy,team")
            .expect("selector");
        assert_eq!(
            s.match_labels,
            Some([("app".to_string(), "shop".to_string())].into())
        );
        let e = s.match_expressions.expect("expressions");
        let ops: Vec<(&str, &str, Option<&Vec<String>>)> = e
            .iter()
            .map(|r| (r.key.as_str(), r.operator.as_str(), r.values.as_ref()))
            .collect();
        assert_eq!(ops[0], ("tier", "NotIn", Some(&vec!["cache".to_string()])));
        assert_eq!(
            ops[1],
            (
                "env",
                "In",
                Some(&vec!["prod".to_string(), "staging".to_string()])
            )
        );
        assert_eq!(ops[2], ("legacy", "DoesNotExist", None));
        assert_eq!(ops[3], ("team", "Exists", None));
        assert_eq!(
            parse_selector("a==b").expect("==").match_labels,
            Some([("a".to_string(), "b".to_string())].into())
        );
        for bad in ["", "=x", "env in (a", "env within (a)"] {
            let err = parse_selector(bad).expect_err(bad);
            assert_eq!(err.flag, "--selector");
            assert!(err.message.contains("app=shop"), "{err}");
        }
    }

    #[test]
    fn backup_from_flags_has_the_api_fields() {
        let f = BackupFlags {
            selection: SelectionFlags {
                include_namespaces: vec!["shop".into(), "db".into()],
                selector: Some("app=shop".into()),
                ..Default::default()
            },
            location: Some("primary".into()),
            ttl: Some("72h".into()),
            volume_mode: Some("copy".into()),
            deletion_policy: None,
        };
        let b = backup("nightly-1", "holdfast-system", &f).expect("backup");
        let v = serde_json::to_value(&b).expect("json");
        assert_eq!(v["apiVersion"], "holdfast.dev/v1alpha1");
        assert_eq!(v["kind"], "Backup");
        assert_eq!(v["metadata"]["namespace"], "holdfast-system");
        assert_eq!(v["spec"]["storageLocation"], "primary");
        assert_eq!(
            v["spec"]["includedNamespaces"],
            serde_json::json!(["shop", "db"])
        );
        assert_eq!(v["spec"]["labelSelector"]["matchLabels"]["app"], "shop");
        // The API writes durations in seconds.
        assert_eq!(
            b.spec.ttl.map(|d| d.as_std().as_secs()),
            Some(72 * 3600),
            "{v}"
        );
        assert_eq!(v["spec"]["volumes"]["mode"], "Copy");
        assert!(v.get("status").is_none_or(|s| s.is_null()), "{v}");
    }

    #[test]
    fn bad_backup_flags_name_the_flag_and_the_fix() {
        let ttl = BackupFlags {
            ttl: Some("3 days".into()),
            ..Default::default()
        };
        let e = backup("b", "ns", &ttl).expect_err("ttl");
        assert_eq!(e.flag, "--ttl");
        assert!(e.message.contains("72h"), "{e}");
        let mode = BackupFlags {
            volume_mode: Some("all".into()),
            ..Default::default()
        };
        let e = backup("b", "ns", &mode).expect_err("mode");
        assert!(
            e.to_string().contains("Snapshot, SnapshotAndCopy, Copy"),
            "{e}"
        );
        let e = backup("Bad_Name", "ns", &BackupFlags::default()).expect_err("name");
        assert_eq!(e.flag, "NAME");
    }

    #[test]
    fn restore_from_flags_maps_namespaces_and_resolves_at() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().expect("now");
        let f = RestoreFlags {
            from_backup: Some("full".into()),
            namespace_mapping: vec!["shop:shop-staging".into(), "db:db-2".into()],
            data_from: Some("Copy".into()),
            ..Default::default()
        };
        let r = restore("back", "ops", &f, now).expect("restore");
        assert_eq!(r.spec.source.backup.as_deref(), Some("full"));
        assert_eq!(r.spec.namespace_mapping["shop"], "shop-staging");
        assert_eq!(r.spec.namespace_mapping.len(), 2);
        assert_eq!(r.spec.from, RestoreFrom::Copy);

        let s = RestoreFlags {
            from_schedule: Some("nightly".into()),
            at: Some("2h ago".into()),
            ..Default::default()
        };
        let r = restore("back", "ops", &s, now).expect("restore");
        assert_eq!(
            r.spec.source.point_in_time.map(|t| t.0.to_string()),
            Some("2026-12-07T10:00:00Z".to_string())
        );
        assert_eq!(
            parse_at("90 minutes ago", now).expect("friendly"),
            "2026-12-07T10:30:00Z".parse::<Timestamp>().expect("t")
        );
        assert_eq!(
            parse_at("2026-12-01T00:00:00Z", now).expect("rfc3339"),
            "2026-12-01T00:00:00Z".parse::<Timestamp>().expect("t")
        );
        assert_eq!(parse_at("yesterday", now).expect_err("bad").flag, "--at");

        let none = restore("back", "ops", &RestoreFlags::default(), now).expect_err("source");
        assert!(none.message.contains("--from-schedule"), "{none}");
        let bad = RestoreFlags {
            from_backup: Some("full".into()),
            namespace_mapping: vec!["shop".into()],
            ..Default::default()
        };
        let e = restore("back", "ops", &bad, now).expect_err("mapping");
        assert_eq!(e.flag, "--namespace-mapping");
        assert!(e.message.contains("shop:shop-staging"), "{e}");
    }
}
