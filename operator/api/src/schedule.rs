//! Schedule: creates Backups from a template on a cron cadence or an SLA policy, and expires them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup::BackupSpec;
use crate::common::{Duration, Retention, conditions_schema};

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
#[x_kube(validation = Rule::new("[has(self.policy), has(self.inlinePolicy), has(self.schedule)].filter(x, x).size() == 1").message("a Schedule needs exactly one of policy (an SLAPolicy name), inlinePolicy (an SLA policy written into the schedule) or schedule (a cron expression)"))]
#[x_kube(validation = Rule::new("!has(self.keep) || has(self.schedule)").message("keep is only used with schedule; with policy, retention comes from the SLAPolicy").field_path(".keep"))]
#[x_kube(validation = Rule::new("!has(self.schedule) || has(self.keep)").message("a Schedule with a cron schedule needs keep (for example keep: {daily: 7}) so old backups are removed").field_path(".keep"))]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Name of a cluster-wide SLAPolicy that sets the snapshot and copy cadences and retentions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub policy: Option<String>,
    /// An SLA policy written into the schedule instead of naming one: snapshot and copy
    /// cadences and retentions, as in an SLAPolicy's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_policy: Option<crate::policy::SLAPolicySpec>,
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
    /// Safety brake: a retention pass that would remove more than this many restore points
    /// (default 10) is held until a person releases it (see the `RetentionHeld` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_deletions_per_pass: Option<u32>,
    /// Safety brake by share: a pass that would remove more than this percentage of the
    /// schedule's restore points is held too. Omitted: no share limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_deletion_percent: Option<u8>,
    /// Whether a run may start while the previous one is still running: `Forbid` (default)
    /// waits for it (runs due meanwhile count as missed), `Allow` starts anyway.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Runs that were due while the operator was down or a previous run was still going:
    /// `RunOnce` (default) starts one run for all of them as soon as possible; `Skip` starts
    /// a late run only within `startingDeadline` of its time.
    #[serde(default)]
    pub missed_run_policy: MissedRunPolicy,
    /// With `missedRunPolicy: Skip`: how late a run may still start (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Duration>,
    /// Start each run up to this much later than its time (a stable pseudo-random delay per
    /// run), so many schedules with the same cadence do not start at the same second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// What deleting the Schedule does to its Backups: `Keep` (default) leaves them in place;
    /// `Delete` deletes every Backup it made (their data goes per their `deletionPolicy`).
    #[serde(default)]
    pub on_delete: ScheduleDeletion,
}

/// Whether runs of one schedule may overlap.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// A run waits until the previous run of the schedule has finished.
    #[default]
    Forbid,
    /// Runs start on time even when the previous one is still running.
    Allow,
}

/// What happens to runs that could not start on time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MissedRunPolicy {
    /// One run starts as soon as possible for everything that was missed.
    #[default]
    RunOnce,
    /// Late runs are skipped (beyond `startingDeadline`) and counted as missed.
    Skip,
}

/// What deleting a Schedule does to its Backups.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScheduleDeletion {
    /// The Backups stay.
    #[default]
    Keep,
    /// Every Backup the schedule made is deleted with it.
    Delete,
}

/// Annotation on a Schedule that starts one run now: its value (any text, for example a
/// timestamp) is recorded in `status.lastRunNow`, and the same value never runs twice.
pub const RUN_NOW: &str = "holdfast.dev/run-now";
/// Annotation on a Schedule that releases a held retention pass: its value must be the
/// `status.retentionHeld.token` shown in status.
pub const RELEASE_DELETIONS: &str = "holdfast.dev/release-deletions";
/// Label on Backups made by a Schedule: the Schedule's name.
pub const SCHEDULE_LABEL: &str = "holdfast.dev/schedule";
/// Label on Backups made by a Schedule: which cadence made it (`snapshot`, `copy` or `both`).
pub const CADENCE_LABEL: &str = "holdfast.dev/cadence";
/// Annotation on a Backup made by a Schedule whose VolumeSnapshots retention removed while
/// keeping its copy (the snapshot retention no longer wanted it, the copy retention did).
pub const SNAPSHOTS_DROPPED: &str = "holdfast.dev/snapshots-dropped";
/// Annotation on Backups made by a Schedule: the scheduled time of the run (RFC 3339).
pub const SCHEDULED_TIME: &str = "holdfast.dev/scheduled-time";

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
    /// Namespace of the operator that handles this schedule (set when an operator takes it
    /// up; other operators on the cluster leave it alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_namespace: Option<String>,
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
    /// The latest scheduled time handled (run, skipped or missed); runs after it are due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_time: Option<Time>,
    /// The latest scheduled copy time handled (SLA policies with a copy cadence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copy_scheduled_time: Option<Time>,
    /// Runs that were due but did not start (operator down, previous run still going, paused
    /// runs are not counted).
    #[serde(default)]
    pub missed_runs: u32,
    /// When a run was last missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_missed_time: Option<Time>,
    /// The last `holdfast.dev/run-now` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// Backups of this schedule still running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// A retention pass held by the safety brake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_held: Option<HeldDeletion>,
    /// Restore points removed by retention since the schedule was created.
    #[serde(default)]
    pub expired_points: u32,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Restore points retention wanted to remove, held by the safety brake.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldDeletion {
    /// The Backups that would be deleted (newest first).
    pub backups: Vec<String>,
    /// How many restore points the schedule has.
    pub of: u32,
    /// Value to put in the `holdfast.dev/release-deletions` annotation to allow exactly this pass.
    pub token: String,
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
