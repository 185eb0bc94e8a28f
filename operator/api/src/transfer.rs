//! DataUpload and DataDownload: per-volume units of work carried out by mover pods.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup::TransferPhase;
use crate::common::{NamespacedName, conditions_schema};

/// A DataUpload copies one volume (through its snapshot, or live) into a repository of a
/// location. Created by the operator for each volume of a Backup; users only read it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "DataUpload",
    namespaced,
    status = "TransferStatus",
    shortname = "hfdu",
    category = "holdfast",
    doc = "A DataUpload copies one volume into a repository; created by the operator.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "PVC", type_ = "string", json_path = ".spec.pvc.name"),
    printcolumn(
        name = "Bytes Done",
        type_ = "integer",
        json_path = ".status.bytesDone"
    ),
    printcolumn(
        name = "Bytes Total",
        type_ = "integer",
        json_path = ".status.bytesTotal"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadSpec {
    /// The Backup this upload belongs to.
    pub backup: NamespacedName,
    /// The claim being copied.
    pub pvc: NamespacedName,
    /// The VolumeSnapshot to read (in the claim's namespace); absent for a live copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<String>,
    /// The BackupStorageLocation written to.
    pub storage_location: String,
    /// The repository inside the location (the source namespace).
    pub repository: String,
    /// `Filesystem` or `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Stop the upload.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// A DataDownload writes a repository snapshot into one volume. Created by the operator for
/// each volume of a Restore that is restored from a copy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "DataDownload",
    namespaced,
    status = "TransferStatus",
    shortname = "hfdd",
    category = "holdfast",
    doc = "A DataDownload restores one volume from a repository; created by the operator.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "PVC", type_ = "string", json_path = ".spec.targetPvc.name"),
    printcolumn(
        name = "Bytes Done",
        type_ = "integer",
        json_path = ".status.bytesDone"
    ),
    printcolumn(
        name = "Bytes Total",
        type_ = "integer",
        json_path = ".status.bytesTotal"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadSpec {
    /// The Restore this download belongs to.
    pub restore: NamespacedName,
    /// The claim written.
    pub target_pvc: NamespacedName,
    /// The BackupStorageLocation read from.
    pub storage_location: String,
    /// The repository inside the location (the source namespace of the backup).
    pub repository: String,
    /// The repository snapshot restored.
    pub snapshot_id: String,
    /// StorageClass of the new volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of the new volume (a quantity such as `10Gi`).
    pub capacity: String,
    /// `Filesystem` or `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Bytes the repository snapshot holds (from the backup), the total of the progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_bytes: Option<u64>,
    /// Stop the download; the target volume is marked unusable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// Observed state of a DataUpload or DataDownload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferStatus {
    /// Where the transfer is.
    #[serde(default)]
    pub phase: TransferPhase,
    /// One word saying why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Node the mover pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The mover pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover_pod: Option<String>,
    /// Bytes processed so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to process.
    #[serde(default)]
    pub bytes_total: u64,
    /// New bytes stored (uploads only).
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// The PersistentVolume holding the restored data, reserved for the target claim
    /// (downloads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Repository snapshot written (uploads) or read (downloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Mover attempts that were killed (signal, OOM kill, eviction, node loss) and retried.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Why the last killed attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// The next attempt starts after this time (backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
    /// When the mover started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the transfer ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
