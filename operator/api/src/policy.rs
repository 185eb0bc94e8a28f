//! SLAPolicy: a cluster-wide service level with separate cadences and retentions for snapshots and copies.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Duration, Retention};

/// An SLAPolicy sets two cadences and two retentions: how often in-cluster snapshots are
/// taken and how long they are kept, and how often data is copied to object storage and how
/// long the copies are kept. Schedules refer to it by name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "SLAPolicy",
    plural = "slapolicies",
    shortname = "sla",
    category = "holdfast",
    doc = "An SLAPolicy sets snapshot and copy cadences and retentions for Schedules.",
    printcolumn(
        name = "Snapshots Every",
        type_ = "string",
        json_path = ".spec.snapshots.every"
    ),
    printcolumn(name = "Copies", type_ = "string", json_path = ".spec.copies.schedule"),
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.snapshots) || has(self.copies)").message("an SLAPolicy needs snapshots, copies or both"))]
#[serde(rename_all = "camelCase")]
pub struct SLAPolicySpec {
    /// Text shown to users choosing a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// In-cluster CSI snapshots: fast to take and restore, lost with the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Cadence>,
    /// Copies to object storage: survive the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<Cadence>,
    /// BackupStorageLocation for copies (default: the default location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub location: Option<String>,
}

/// How often, and how long to keep.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.every) != has(self.schedule)").message("a cadence needs exactly one of every (a duration such as 4h) or schedule (a cron expression)"))]
pub struct Cadence {
    /// Interval between runs, for example `4h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    /// Cron expression, evaluated in the Schedule's time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::common::cron_rule("schedule must be a cron expression with five fields, such as '0 1 * * *', or a macro such as @daily"))]
    #[schemars(length(max = 256))]
    pub schedule: Option<String>,
    /// How long restore points are kept.
    #[x_kube(validation = crate::common::retention_rule())]
    pub keep: Retention,
}
