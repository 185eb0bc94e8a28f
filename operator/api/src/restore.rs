//! Restore: brings a backup's objects and volume data back, into the same or other namespaces.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup::{Selection, TransferPhase};
use crate::common::{NamespacedName, conditions_schema};
use crate::hooks::RestoreHooks;

// Only bounded fields fit the CEL cost budget; the controller works from what it resolved at start.
const RESTORE_IMMUTABLE: &[&str] = &[
    "source",
    "from",
    "volumes",
    "includedNamespaces",
    "excludedNamespaces",
    "includedResources",
    "excludedResources",
    "existingResourcePolicy",
];
/// A Restore brings back the objects and volume data of a backup (named directly, or the
/// newest restore point of a schedule at or before a point in time).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    shortname = "hfr",
    category = "holdfast",
    doc = "A Restore brings back the objects and volume data of a backup.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the restore is in its lifecycle"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".status.backup", description = "The backup restored from"),
    printcolumn(name = "Volumes", type_ = "string", json_path = ".status.progress.volumes", description = "Volumes done/total"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress.display", description = "Share of bytes restored"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", description = "Why the restore failed", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(crate::common::immutable_fields(RESTORE_IMMUTABLE)).message("only spec.cancel can be changed after a Restore is created; create a new Restore instead").field_path(".spec"),
    validation = Rule::new(crate::backup::CANCEL_STICKY).message("spec.cancel cannot be unset once set").field_path(".spec.cancel")
)]
#[x_kube(validation = Rule::new(crate::common::SELECTORS_EXCLUSIVE).message(crate::common::SELECTORS_EXCLUSIVE_MSG).field_path(".orLabelSelectors"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// What to restore from.
    pub source: RestoreSource,
    /// `Auto` (default): from the in-cluster snapshot while it exists, else from the copy.
    /// `Snapshot` or `Copy` force one and fail when it is not there.
    #[serde(default)]
    pub from: RestoreFrom,
    /// Where volume data goes.
    #[serde(default)]
    pub volumes: RestoreVolumes,
    /// Subset of the backup to restore (default: everything in it).
    #[serde(flatten)]
    pub selection: Selection,
    /// Restore namespace A of the backup into namespace B (`{shop: shop-staging}`). Only for
    /// Restores in the operator namespace; others restore into their own namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Restore claims of StorageClass A with StorageClass B (`{fast-ssd: standard}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class_mapping: BTreeMap<String, String>,
    /// What to do with objects that already exist: `None` (default) leaves them alone and
    /// records a warning; `Update` updates them to the backed-up version.
    #[serde(default)]
    pub existing_resource_policy: ExistingResourcePolicy,
    /// Init containers and commands run in restored pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<RestoreHooks>,
    /// Set to true to stop a running restore. A volume is written into a temporary volume and
    /// given to its claim only once complete, so a cancelled or failed restore never leaves a
    /// claim with partial data: claims already restored stay, the others are not created
    /// (InPlace: the existing claim keeps its old data). The claims a cancelled, failed or
    /// partly failed restore put back are labelled `holdfast.dev/restore-incomplete: "true"`
    /// (annotation `holdfast.dev/restore-incomplete-reason`: which restore and why). Cannot
    /// be unset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// The backup to restore: exactly one of `backup` or `schedule`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.backup) != has(self.schedule)").message("source needs exactly one of backup or schedule"))]
#[x_kube(validation = Rule::new("!has(self.pointInTime) || has(self.schedule)").message("source.pointInTime can only be used with source.schedule").field_path(".pointInTime"))]
pub struct RestoreSource {
    /// A Backup by name, in the Restore's namespace (or, for Restores in the operator
    /// namespace, `namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub backup: Option<String>,
    /// A Schedule by name, in the Restore's namespace: its newest completed backup, or the
    /// newest at or before `pointInTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub schedule: Option<String>,
    /// Restore the newest restore point at or before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<Time>,
}

/// Which copy of the data a restore reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestoreFrom {
    /// The snapshot while it exists, else the copy.
    #[default]
    Auto,
    /// The in-cluster snapshot only.
    Snapshot,
    /// The copy in the location only.
    Copy,
}

/// Where restored volume data goes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreVolumes {
    /// `NewPVC` (default): create the claims (they must not exist). `InPlace`: overwrite the
    /// existing claims' data; refused while any pod mounts them.
    #[serde(default)]
    pub target: RestoreTarget,
}

/// Where restored volume data goes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestoreTarget {
    /// New PersistentVolumeClaims.
    #[default]
    NewPVC,
    /// The existing claims, once nothing mounts them.
    InPlace,
}

/// What to do with objects that already exist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExistingResourcePolicy {
    /// Leave them and record a warning.
    #[default]
    None,
    /// Update them to the backed-up version.
    Update,
}

/// Observed state of a Restore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Where the restore is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// One word saying why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Namespace of the operator that handles this object. Set when an operator takes it
    /// up; other operators on the cluster leave it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_namespace: Option<String>,
    /// The backup resolved from the source, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// When work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the restore ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Progress while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::backup::BackupProgress>,
    /// Per-volume state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<RestoredVolume>,
    /// Objects restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_restored: Option<u32>,
    /// Restore hooks that ran in restored pods (failures first when there are more than 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::backup::HookStatus>,
    /// Restore hooks run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_attempted: Option<u32>,
    /// Restore hooks that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_failed: Option<u32>,
    /// Restored pods whose restore hooks ran (or that never became Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooked_pods: Vec<crate::common::NamespacedName>,
    /// How many restored pods get restore hooks (from the restored pods and workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_pods_expected: Option<u32>,
    /// When the objects were restored and the restore hooks began to wait for pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_started: Option<Time>,
    /// The result of the volumes and objects, kept while restore hooks run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_result: Option<ObjectsResult>,
    /// Warnings (for example objects that existed and were left alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<u32>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The result of a restore's volumes and objects, before its hooks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectsResult {
    pub phase: RestorePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The lifecycle of a Restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestorePhase {
    /// Accepted, not started.
    Pending,
    /// Volumes and objects being restored.
    InProgress,
    /// Everything selected was restored.
    Completed,
    /// Done, but some volumes or objects failed.
    PartiallyFailed,
    /// Nothing was restored, or the spec is invalid; `reason` says why.
    Failed,
    /// Stopped at the user's request; partly written volumes are marked unusable.
    Cancelled,
}

impl RestorePhase {
    /// Terminal phases never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::PartiallyFailed | Self::Failed | Self::Cancelled
        )
    }
}

/// A restored volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredVolume {
    /// The claim in the backup.
    pub source: NamespacedName,
    /// The claim written.
    pub target: NamespacedName,
    /// `Snapshot` or `Copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RestoreFrom>,
    /// Phase of the transfer.
    #[serde(default)]
    pub phase: TransferPhase,
    /// The DataDownload doing a copy restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_download: Option<String>,
    /// Bytes written so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to write.
    #[serde(default)]
    pub bytes_total: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
