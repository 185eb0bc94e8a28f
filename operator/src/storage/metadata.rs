//! `metadata.json`: the record of a finished backup in its location, written last. A backup
//! prefix without it is incomplete and is never used for restores or synced.

use holdfast_api::backup::{BackupPhase, BackupSpec, VolumeStatus};
use holdfast_api::common::NamespacedName;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// Version of the metadata format.
pub const FORMAT_VERSION: u32 = 1;
pub use super::layout::{METADATA, RESOURCES};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupMetadata {
    pub format_version: u32,
    pub backup: NamespacedName,
    pub uid: String,
    pub phase: BackupPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub storage_location: String,
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    pub items_backed_up: u32,
    pub volumes: Vec<VolumeStatus>,
    pub spec: BackupSpec,
}
