//! Schedule: creates Backups from a template on a cron cadence or an SLA policy, and expires them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup::BackupSpec;
use crate::common::{Retention, conditions_schema};

/// Loose syntax check of a cron expression at admission (five fields or a macro). Ranges and
/// names are checked by the controller, which reports `InvalidSchedule` in status.
pub const CRON_PATTERN: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|([0-9*/,?A-Za-z-]+ +){4}[0-9*/,?A-Za-z-]+)$";

/// A Schedule creates Backups from a template, on a cron schedule (`spec.schedule` with
/// `spec.keep`) or following an SLA policy (`spec.policy`), and removes the restore points
/// its retention no longer keeps. Deleting a Schedule leaves its Backups in place.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "Schedule",
    namespaced,
    status = "ScheduleStatus",
    shortname = "hfs",
    category = "holdfast",
    doc = "A Schedule creates Backups from a template on a cadence and expires old ones.",
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.policy",
        description = "SLA policy followed"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "Cron schedule"
    ),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime",
        description = "When the newest successful backup completed"
    ),
    printcolumn(
        name = "Next Run",
        type_ = "date",
        json_path = ".status.nextRunTime",
        description = "When the next backup starts"
    ),
    printcolumn(
        name = "Points",
        type_ = "integer",
        json_path = ".status.restorePoints",
        description = "Restore points kept"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.policy) != has(self.schedule)").message("a Schedule needs exactly one of policy (an SLAPolicy name) or schedule (a cron expression)"))]
#[x_kube(validation = Rule::new("!has(self.keep) || has(self.schedule)").message("keep is only used with schedule; with policy, retention comes from the SLAPolicy").field_path(".keep"))]
#[x_kube(validation = Rule::new("!has(self.schedule) || has(self.keep)").message("a Schedule with a cron schedule needs keep (for example keep: {daily: 7}) so old backups are removed").field_path(".keep"))]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Name of a cluster-wide SLAPolicy that sets the snapshot and copy cadences and retentions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub policy: Option<String>,
    /// Cron expression (five fields or a macro like `@daily`), evaluated in `timeZone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::common::cron_rule("schedule must be a cron expression with five fields (minute hour day-of-month month day-of-week), such as '0 1 * * *', or a macro such as @daily"))]
    #[schemars(length(max = 256))]
    pub schedule: Option<String>,
    /// How long restore points made from `schedule` are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::common::retention_rule())]
    pub keep: Option<Retention>,
    /// IANA time zone for the cron schedule (default `UTC`), for example `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')").message("timeZone must be an IANA time zone name such as UTC or Europe/Berlin"))]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// Stop creating backups (retention still applies).
    #[serde(default)]
    pub paused: bool,
    /// The Backups this schedule creates.
    pub template: BackupTemplate,
    /// Safety brake: at most this many restore points are removed by retention in one pass
    /// (default 10). Larger removals wait and are reported in status until raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_deletions_per_pass: Option<u32>,
}

/// Template of the Backups a Schedule creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTemplate {
    /// Labels and annotations put on the created Backups (the Schedule's own are never copied).
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// Spec of the created Backups.
    #[serde(default)]
    pub spec: BackupSpec,
}

/// Labels and annotations for generated objects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of a Schedule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// `Active`, `Paused` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SchedulePhase>,
    /// Why the schedule is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the next backup (snapshot) is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// When the next copy to object storage is due (SLA policies with two cadences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_copy_time: Option<Time>,
    /// When the last backup was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// The newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// Restore points currently kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_points: Option<u32>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The state of a Schedule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SchedulePhase {
    /// Creating backups on its cadence.
    Active,
    /// `spec.paused` is set.
    Paused,
    /// The spec cannot be used; `reason` says why.
    Invalid,
}
