//! Backup: one restore point of a selection of namespaces, objects and volumes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, LabelSelector, NamespacedName, Progress, conditions_schema};
use crate::hooks::BackupHooks;

/// Annotation on a Namespace, set by a cluster administrator: the most bytes the namespace's
/// Backups may store in object storage (a Kubernetes quantity such as `50Gi`). A Backup that
/// starts while the namespace's stored bytes (the sum of `status.volumes[].copy.bytesUploaded`
/// over its Backups) are at or over it fails with reason `QuotaExceeded`. On the Namespace
/// because namespace admins cannot edit it (design record 0016).
pub const STORED_BYTES_LIMIT: &str = "holdfast.dev/stored-bytes-limit";

/// The part of a Backup's spec that admission keeps immutable.
// Only bounded fields fit the CEL cost budget; the controller works from the selection it
// resolved into status at start, so later edits of other fields have no effect.
const BACKUP_IMMUTABLE: &[&str] = &[
    "storageLocation",
    "includedNamespaces",
    "excludedNamespaces",
    "includedResources",
    "excludedResources",
    "includeClusterResources",
    "volumes.mode",
];
/// CEL on the root object: once `spec.cancel` is true it stays true.
pub(crate) const CANCEL_STICKY: &str = "!has(oldSelf.spec.cancel) || !oldSelf.spec.cancel || (has(self.spec.cancel) && self.spec.cancel)";

/// A Backup captures the Kubernetes objects of a selection and the data of its
/// PersistentVolumeClaims (as CSI snapshots, copies in object storage, or both).
///
/// A Backup in the operator's namespace may select any namespaces; a Backup in any
/// other namespace acts on its own namespace only.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "hfb",
    category = "holdfast",
    doc = "A Backup captures the objects and PersistentVolumeClaim data of a selection.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the backup is in its lifecycle"),
    printcolumn(name = "Volumes", type_ = "string", json_path = ".status.progress.volumes", description = "Volumes done/total"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress.display", description = "Share of bytes processed"),
    printcolumn(name = "Location", type_ = "string", json_path = ".status.storageLocation", description = "Where the copy goes"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", description = "Why the backup failed or was only partly done", priority = 1),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiration", description = "When the backup expires", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(crate::common::immutable_fields(BACKUP_IMMUTABLE)).message("only spec.cancel, spec.ttl and spec.deletionPolicy can be changed after a Backup is created; create a new Backup instead").field_path(".spec"),
    validation = Rule::new(CANCEL_STICKY).message("spec.cancel cannot be unset once set").field_path(".spec.cancel")
)]
#[x_kube(validation = Rule::new(crate::common::SELECTORS_EXCLUSIVE).message(crate::common::SELECTORS_EXCLUSIVE_MSG).field_path(".orLabelSelectors"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The BackupStorageLocation (in the operator's namespace) that receives the copy and the
    /// captured objects. Omitted: the default location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_location: Option<String>,
    #[serde(flatten)]
    pub selection: Selection,
    /// Capture cluster-scoped objects related to the selection (PersistentVolumes, CRDs of
    /// selected custom resources). Default: true for backups in the operator namespace, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_cluster_resources: Option<bool>,
    /// What happens to the data of the selected PersistentVolumeClaims.
    #[serde(default)]
    pub volumes: VolumePolicy,
    /// Commands run in application pods before and after the snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<BackupHooks>,
    /// How long the backup is kept after it completes (for example `720h`). Omitted: kept
    /// until deleted or until the schedule's retention removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// What deleting this Backup does to its data: `Delete` (default) removes its snapshots
    /// and copies; `Retain` keeps them (the backup can be found again from its location).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Set to true to stop a running backup. It ends as `Cancelled`; what was already
    /// written is cleaned up. Cannot be unset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// Which namespaces and objects a Backup or Restore selects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// Namespaces to include; `*` or omitted means all (for a backup outside the operator
    /// namespace: its own namespace only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(pattern(crate::common::NAMESPACE_OR_STAR_PATTERN), length(max = 63))
    )]
    pub included_namespaces: Vec<String>,
    /// Namespaces to exclude.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(pattern(crate::common::NAMESPACE_PATTERN), length(max = 63))
    )]
    pub excluded_namespaces: Vec<String>,
    /// Resource kinds to include, by plural, short name or `resource.group`
    /// (`deployments`, `deploy`, `certificates.cert-manager.io`); `*` or omitted means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(pattern(crate::common::RESOURCE_OR_STAR_PATTERN), length(max = 253))
    )]
    pub included_resources: Vec<String>,
    /// Resource kinds to exclude.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(pattern(crate::common::RESOURCE_PATTERN), length(max = 253))
    )]
    pub excluded_resources: Vec<String>,
    /// Only objects whose labels match all of this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Objects whose labels match any one of these selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub or_label_selectors: Vec<LabelSelector>,
}

/// What happens to the data of PersistentVolumeClaims.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.groupSnapshotBy) || (has(self.groupSnapshot) && self.groupSnapshot)").message("groupSnapshotBy needs groupSnapshot: true").field_path(".groupSnapshotBy"))]
pub struct VolumePolicy {
    /// `Snapshot`: CSI snapshots only (fast, in-cluster). `SnapshotAndCopy` (default): snapshot,
    /// then copy the snapshot's data to the location. `Copy`: snapshot, copy, then delete the
    /// snapshot once the copy is done.
    #[serde(default)]
    pub mode: VolumeMode,
    /// VolumeSnapshotClass per CSI driver, overriding the class labelled
    /// `holdfast.dev/default-snapshot-class: "true"` for that driver.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshot_classes: BTreeMap<String, String>,
    /// Volumes whose driver cannot snapshot: `Fail` (default) fails the volume with a reason;
    /// `Skip` records them as skipped; `LiveCopy` copies the live volume without a snapshot
    /// (not crash-consistent; flagged in status).
    #[serde(default)]
    pub without_snapshot: WithoutSnapshot,
    /// How long to wait for a snapshot to become ready to use (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_timeout: Option<Duration>,
    /// Snapshot all selected volumes of the backup together as one VolumeGroupSnapshot, so
    /// they are mutually consistent (needs driver support).
    #[serde(default)]
    pub group_snapshot: bool,
    /// With `groupSnapshot`: snapshot together the claims that share a value of this label
    /// (one VolumeGroupSnapshot per value; claims without the label alone). Default: all
    /// selected claims of a namespace (and driver) together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub group_snapshot_by: Option<String>,
    /// Resources of the data-mover pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover_resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// How volume data is protected.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumeMode {
    /// In-cluster CSI snapshots only.
    Snapshot,
    /// CSI snapshot, then a copy of its data in the location.
    #[default]
    SnapshotAndCopy,
    /// CSI snapshot used only to copy; deleted once the copy is done.
    Copy,
}

/// What to do with volumes whose driver cannot snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WithoutSnapshot {
    /// The volume fails with a reason (the backup ends PartiallyFailed).
    #[default]
    Fail,
    /// The volume is recorded as skipped.
    Skip,
    /// The live volume is copied (file-system copy, not crash-consistent).
    LiveCopy,
}

/// What deleting a Backup does to its data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Snapshots, repository snapshots and stored metadata are removed.
    #[default]
    Delete,
    /// Only the Backup object is removed; its data stays.
    Retain,
}

/// Observed state of a Backup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Where the backup is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// One word saying why the backup failed, was cancelled or only partly done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The location resolved from spec or the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_location: Option<String>,
    /// Namespace of the operator that handles this object. Set when an operator takes it
    /// up; other operators on the cluster leave it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_namespace: Option<String>,
    /// Namespaces the selection resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// When work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the backup reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the backup expires (completion time plus ttl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// Progress while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackupProgress>,
    /// Per-volume state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStatus>,
    /// Hooks that ran (failures first when there are more than 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookStatus>,
    /// Pods with hooks and how far their hooks are: a pod is `Frozen` from its pre hooks
    /// until its post hooks ran, which the operator makes sure of also after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooked_pods: Vec<HookedPod>,
    /// Hooks run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_attempted: Option<u32>,
    /// Hooks that failed (with `onError: Fail` or `Continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_failed: Option<u32>,
    /// Kubernetes objects captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_backed_up: Option<u32>,
    /// Warnings recorded (details in Events and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<u32>,
    /// Set on a Backup made from a record in its location's catalog (by another cluster, or
    /// before this one was rebuilt), not by a run in this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<SyncedBackup>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Where a synced Backup came from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncedBackup {
    /// The location whose catalog holds the backup.
    pub location: String,
    /// The uid of the Backup that wrote it (in the catalog's tags `uid:<uid>`).
    pub origin_uid: String,
    /// When this cluster found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Progress with display strings for `kubectl get`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupProgress {
    #[serde(flatten)]
    pub counts: Progress,
    /// `done/total` volumes, for display.
    #[serde(default)]
    pub volumes: String,
    /// Percentage, for display.
    #[serde(default)]
    pub display: String,
}

impl From<Progress> for BackupProgress {
    fn from(p: Progress) -> Self {
        let p = p.with_percent();
        Self {
            volumes: format!("{}/{}", p.volumes_done, p.volumes_total),
            display: format!("{}%", p.percent),
            counts: p,
        }
    }
}

/// The lifecycle of a Backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Accepted, not started (waiting for a location or a concurrency slot).
    Pending,
    /// Hooks, snapshots, object capture and copies are running.
    InProgress,
    /// Every selected volume and object was protected.
    Completed,
    /// Done, but some volumes or hooks failed; `status.volumes` says which.
    PartiallyFailed,
    /// Nothing usable was produced, or the spec is invalid; `reason` says why.
    Failed,
    /// Stopped at the user's request.
    Cancelled,
    /// Being deleted (data removed according to `deletionPolicy`).
    Deleting,
}

impl BackupPhase {
    /// Terminal phases never change again (but for `Deleting`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::PartiallyFailed | Self::Failed | Self::Cancelled
        )
    }
}

/// State of one volume in a backup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// The PersistentVolumeClaim.
    pub pvc: NamespacedName,
    /// CSI driver of the bound volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// StorageClass of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// `Filesystem` or `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Phase of this volume.
    pub phase: VolumePhase,
    /// How consistent the protected data is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// The VolumeSnapshot taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotStatus>,
    /// The copy into the location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyStatus>,
    /// Why the volume failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The lifecycle of one volume in a backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumePhase {
    /// Not started.
    #[default]
    Pending,
    /// Snapshot being taken.
    Snapshotting,
    /// Data being copied to the location.
    Copying,
    /// Protected.
    Completed,
    /// Not protected; `reason` says why.
    Failed,
    /// Deliberately not protected (see `reason`).
    Skipped,
}

impl VolumePhase {
    /// Final phases never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Skipped)
    }
}

/// Consistency of protected volume data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Consistency {
    /// A snapshot of a volume in use, as after a power loss.
    CrashConsistent,
    /// A snapshot taken between successful pre and post hooks.
    ApplicationConsistent,
    /// Copied from the live volume without a snapshot; files may be torn.
    Inconsistent,
}

/// The snapshot of a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// VolumeSnapshot name (in the PVC's namespace).
    pub name: String,
    /// VolumeSnapshotClass used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// VolumeSnapshotContent bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_name: Option<String>,
    /// The driver's snapshot handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// When the driver cut the snapshot (post hooks run after this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// The VolumeGroupSnapshot it is a member of, when the volumes were snapshotted together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether the snapshot can be restored from.
    #[serde(default)]
    pub ready_to_use: bool,
    /// Size needed to restore it, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size_bytes: Option<u64>,
}

/// The copy of a volume into the location.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatus {
    /// The DataUpload doing the copy (in the operator namespace).
    pub data_upload: String,
    /// Phase of the DataUpload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TransferPhase>,
    /// Repository snapshot ID once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes read so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to read.
    #[serde(default)]
    pub bytes_total: u64,
    /// New bytes stored in the location (after deduplication and compression).
    #[serde(default)]
    pub bytes_uploaded: u64,
}

/// A pod whose hooks run around the snapshots of its claims.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookedPod {
    /// The pod.
    pub pod: NamespacedName,
    /// Claims of the backup it mounts (in its namespace): their snapshots wait for its pre
    /// hooks, and its post hooks wait for their snapshots to be cut.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
    /// How far its hooks are.
    #[serde(default)]
    pub stage: HookStage,
    /// A pre hook failed with `onError: Fail`: its claims were not snapshotted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_failed: bool,
}

/// How far a pod's hooks are.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HookStage {
    /// Pre hooks not run yet.
    #[default]
    Pending,
    /// Pre hooks ran; post hooks run once the claims' snapshots are cut.
    Frozen,
    /// Post hooks ran.
    Done,
}

/// A hook that ran.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// Rule name (`annotations` for hooks from pod annotations).
    pub rule: String,
    /// `pre`, `post` or (restores) `postRestore`.
    pub stage: String,
    /// Pod it ran in.
    pub pod: NamespacedName,
    /// Container it ran in.
    pub container: String,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Exit code, when it ran to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What its failure does: `Fail` or `Continue`.
    #[serde(default)]
    pub on_error: crate::hooks::HookErrorMode,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// The lifecycle of a per-volume transfer (DataUpload or DataDownload).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TransferPhase {
    /// Waiting for a concurrency slot.
    #[default]
    Pending,
    /// The volume is being exposed to a mover pod.
    Preparing,
    /// The mover pod is copying.
    InProgress,
    /// Done.
    Completed,
    /// Failed; `reason` says why.
    Failed,
    /// Cancelled by the parent.
    Cancelled,
}

impl TransferPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}
