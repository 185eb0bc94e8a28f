//! BackupRepository: one restic-format repository (a location and a source namespace) and
//! its maintenance: prune on a cadence and after deletions, and check with a read sample.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, conditions_schema};

/// A BackupRepository is the restic-format repository of one source namespace in one
/// BackupStorageLocation. The operator creates it (in its own namespace) when it first copies
/// data of that namespace there, and runs its maintenance as mover pods: prune reclaims the
/// space of deleted backups, check verifies the repository and reads a sample of its data.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "BackupRepository",
    namespaced,
    status = "BackupRepositoryStatus",
    shortname = "hfrepo",
    category = "holdfast",
    doc = "A BackupRepository is the repository of one namespace in one location, and its maintenance.",
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.sourceNamespace", description = "Source namespace whose data it holds"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Last Prune", type_ = "date", json_path = ".status.lastPrune.time"),
    printcolumn(name = "Reclaimed", type_ = "integer", json_path = ".status.lastPrune.bytesReclaimed", description = "Bytes the last prune deleted"),
    printcolumn(name = "Last Check", type_ = "date", json_path = ".status.lastCheck.time"),
    printcolumn(name = "Check", type_ = "string", json_path = ".status.lastCheck.result", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.location == oldSelf.spec.location && self.spec.sourceNamespace == oldSelf.spec.sourceNamespace").message("spec.location and spec.sourceNamespace cannot be changed").field_path(".spec")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// The BackupStorageLocation (in this namespace) that holds the repository.
    #[schemars(length(min = 1, max = 253))]
    pub location: String,
    /// The namespace whose volumes the repository holds.
    #[schemars(length(min = 1, max = 63))]
    pub source_namespace: String,
    /// When and how maintenance runs.
    #[serde(default)]
    pub maintenance: Maintenance,
}

/// Maintenance settings; every field has a default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// How often prune runs (default 24h). It also runs soon after backups are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_every: Option<Duration>,
    /// How long data no backup needs stays marked before prune deletes it (default 24h).
    /// Longer than any backup runs, so a backup that was running when prune looked is never
    /// broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_grace: Option<Duration>,
    /// How soon after a backup's data is deleted prune runs (default 1h), so the space of
    /// deleted backups comes back without waiting for `pruneEvery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_after_deletion: Option<Duration>,
    /// How often check runs (default 168h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_every: Option<Duration>,
    /// Share of the stored data each check downloads and verifies, in percent (default 5;
    /// 0: structure only). Successive checks read different packs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub check_read_percent: Option<u8>,
    /// Stop running maintenance.
    #[serde(default)]
    pub paused: bool,
}

/// Observed state of a BackupRepository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// `Ready`, `Pruning`, `Checking` or `Unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RepositoryPhase>,
    /// Why it is not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last prune that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<PruneResult>,
    /// When the next prune is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_prune_time: Option<Time>,
    /// The last check that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckResult>,
    /// When the next check is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_time: Option<Time>,
    /// When the last maintenance run failed (the next waits 10 minutes); cleared by a
    /// success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_time: Option<Time>,
    /// The `holdfast.dev/data-deleted-at` value the last prune covered (a newer one asks for
    /// a prune `pruneAfterDeletion` after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_deletions: Option<String>,
    /// Bytes reclaimed by every prune so far.
    #[serde(default)]
    pub bytes_reclaimed_total: u64,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The lifecycle of a repository's maintenance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RepositoryPhase {
    /// Nothing running.
    Ready,
    /// A prune pod is running.
    Pruning,
    /// A check pod is running.
    Checking,
    /// The location cannot be used; `reason` says why.
    Unavailable,
}

/// What a prune did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneResult {
    /// When it finished.
    pub time: Time,
    /// How long it ran, in seconds.
    pub duration_seconds: u64,
    /// Bytes of packs deleted or rewritten smaller.
    pub bytes_reclaimed: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Packs newly marked as unneeded (deleted by a later prune after the grace period).
    pub packs_marked: u64,
    /// Marked packs still waiting for the grace period.
    pub packs_waiting: u64,
    /// Snapshots in the repository.
    pub snapshots: u64,
}

/// What a check found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// When it finished.
    pub time: Time,
    /// How long it ran, in seconds.
    pub duration_seconds: u64,
    /// `Passed` or `Failed`.
    pub result: String,
    /// Share of the data read and verified, in percent.
    pub read_percent: u8,
    /// Problems found (missing or damaged data).
    pub errors: u64,
    /// The first problems, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
