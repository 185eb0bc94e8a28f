//! BackupStorageLocation: where copies of backups are kept (an S3-compatible bucket and prefix).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, LabelSelector, SecretKeyRef, SecretRef, conditions_schema};

/// A BackupStorageLocation names an S3-compatible bucket (and prefix) that holds backup copies
/// and everything needed to restore them. Each source namespace gets its own encrypted
/// repository under the location.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "holdfast.dev",
    version = "v1alpha1",
    kind = "BackupStorageLocation",
    namespaced,
    status = "BackupStorageLocationStatus",
    shortname = "bsl",
    category = "holdfast",
    doc = "A BackupStorageLocation is an S3-compatible bucket and prefix that holds backup copies.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Available or Unavailable"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        description = "Why the location is unavailable"
    ),
    printcolumn(
        name = "Bucket",
        type_ = "string",
        json_path = ".spec.s3.bucket",
        description = "S3 bucket"
    ),
    printcolumn(
        name = "Prefix",
        type_ = "string",
        json_path = ".spec.s3.prefix",
        description = "Prefix inside the bucket"
    ),
    printcolumn(
        name = "Access",
        type_ = "string",
        json_path = ".spec.accessMode",
        description = "ReadWrite or ReadOnly"
    ),
    printcolumn(
        name = "Default",
        type_ = "boolean",
        json_path = ".spec.default",
        description = "Used by backups that name no location"
    ),
    printcolumn(
        name = "Last Validated",
        type_ = "date",
        json_path = ".status.lastValidationTime",
        description = "When the location was last checked"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageLocationSpec {
    /// Use this location for backups and schedules that do not name one. At most one
    /// location per operator namespace should be the default; if several claim it, the
    /// oldest wins and the others report a warning condition.
    #[serde(default)]
    pub default: bool,
    /// The S3-compatible bucket.
    pub s3: S3Location,
    /// Credentials for the bucket. Omit to use the operator's ambient credentials
    /// (for example IRSA or instance profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// `ReadWrite` (default) or `ReadOnly`. A read-only location is used for restores and
    /// for discovering backups written elsewhere (for example by another cluster); the
    /// operator never writes to it.
    #[serde(default)]
    pub access_mode: AccessMode,
    /// Which namespaces' Backups, Restores and Schedules may use this location. Omitted: all.
    /// Those of the operator's own namespace (administrators) always may. Others are refused
    /// with reason `LocationNotAllowed` (a Backup or Restore fails before it starts; a
    /// Schedule starts no runs until its namespace is allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<AllowedNamespaces>,
    /// The passphrase every repository on this location also opens with: the one key to keep
    /// outside the cluster. With it and the bucket, a new cluster (or the stock `restic`)
    /// opens every backup here. Omitted: the operator generates one into the Secret
    /// `holdfast-passphrase-<location>` and shows the condition `PassphraseGenerated` until
    /// this field names a Secret; export that Secret at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<LocationEncryption>,
    /// Settings of the repositories kept in this location.
    #[serde(default)]
    pub repository: RepositorySettings,
    /// Retries against the object store.
    #[serde(default)]
    pub retry: RetrySettings,
    /// How often the location is validated again (default 1m). Changes to the credentials
    /// Secret trigger a validation at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_interval: Option<Duration>,
    /// How often the location's catalog is read for backups this cluster does not have yet
    /// (written by another cluster, or before this one was rebuilt): each complete one
    /// appears as a Backup labelled `holdfast.dev/synced`, and a synced Backup whose record
    /// is gone from the location is removed (default 1m; `0s` turns sync off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<Duration>,
}

/// The location's passphrase.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationEncryption {
    /// The key of a Secret in the location's namespace that holds the passphrase (any
    /// string; at least 16 characters).
    pub passphrase_secret_ref: crate::common::SecretKeyRef,
}

/// An S3-compatible bucket and prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endpoint) || self.endpoint.matches('^https?://[^/?#]+(/[^?#]*)?$')").message("s3.endpoint must be a URL such as https://s3.example.com:9000 (scheme http or https, no query)").field_path(".endpoint"))]
pub struct S3Location {
    /// Bucket name (3-63 characters: lower-case letters, digits, dots and hyphens).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')").message("s3.bucket must be a valid bucket name: 3-63 lower-case letters, digits, dots or hyphens, starting and ending with a letter or digit"))]
    pub bucket: String,
    /// Prefix inside the bucket, without leading or trailing slash (for example `prod-eu1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.endsWith('/') && !self.contains('//')").message("s3.prefix must not start or end with '/' nor contain '//'"))]
    pub prefix: Option<String>,
    /// Region of the bucket (default `us-east-1`, which most S3-compatible servers accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible servers (MinIO, Ceph RGW, ...). Omit for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Use path-style addressing (`https://endpoint/bucket/key`), which most
    /// S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
    /// CA certificate(s) in PEM to trust for the endpoint, from a Secret in the location's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
    /// Do not verify the endpoint's TLS certificate, in the operator and in mover pods. For
    /// tests only: anyone on the network path could read and alter the traffic. While set, the
    /// location carries the condition `InsecureTLS` and a Warning event is recorded; prefer
    /// `caBundle`.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// Storage class of the objects written to the bucket. Default: `STANDARD_IA` (a cheap
    /// infrequent-access class) on AWS S3, that is without `endpoint` or with an
    /// `amazonaws.com` one; the server's own default on other endpoints, since S3-compatible
    /// servers refuse classes they do not know (MinIO knows `STANDARD` and
    /// `REDUCED_REDUNDANCY`). A class the server refuses makes the location Unavailable with
    /// reason `InvalidStorageClass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub storage_class: Option<String>,
}

/// Where to read a CA bundle from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundle {
    /// The Secret and key holding PEM certificates.
    pub secret_ref: SecretKeyRef,
}

/// Credentials for the object store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// A Secret in the location's namespace with keys `accessKeyId` and `secretAccessKey`,
    /// and optionally `sessionToken` (temporary credentials; given to mover pods as well).
    pub secret_ref: SecretRef,
}

/// Whether the operator may write to a location.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// Backups are written and deleted here.
    #[default]
    ReadWrite,
    /// Only read: restores and discovery of existing backups.
    ReadOnly,
}

/// Which namespaces may use a location: a namespace is allowed when `names` lists it or its
/// labels match `selector` (either is enough).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.selector) || (has(self.names) && size(self.names) > 0)").message("allowedNamespaces needs a selector or a non-empty list of names; omit allowedNamespaces to allow all namespaces"))]
pub struct AllowedNamespaces {
    /// Namespaces whose labels match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub names: Option<Vec<String>>,
}

/// Compression of repository data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Fast compression; data that does not shrink is stored as is.
    #[default]
    Auto,
    /// No compression.
    Off,
    /// Slower, smaller.
    Max,
}

/// Repository settings of a location.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySettings {
    /// `auto` (default), `off` or `max`.
    #[serde(default)]
    pub compression: Compression,
    /// Target size of pack files in MiB (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "packSizeMiB")]
    #[schemars(range(min = 4, max = 128))]
    pub pack_size_mib: Option<u32>,
    /// Pack uploads in flight per mover (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub upload_concurrency: Option<u32>,
    /// Mover pods writing to this location at once, across the cluster (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_concurrent_movers: Option<u32>,
}

/// Retries against the object store.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySettings {
    /// Attempts per request, including the first (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub attempts: Option<u32>,
    /// HTTP status codes retried in addition to connection errors (default 429, 500, 502, 503, 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub on_status: Option<Vec<u16>>,
}

/// Observed state of a location, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageLocationStatus {
    /// `Available` or `Unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LocationPhase>,
    /// Why the location is unavailable, as one word (for example `InvalidCredentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What is wrong and how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the location was last validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validation_time: Option<Time>,
    /// The generation of the spec last validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the passphrase the location's repositories open with is (`Secret/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// The last change of passphrase: the new one is added to every repository on the
    /// location before the old one's key files are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<PassphraseRotation>,
    /// When the location's catalog was last synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Complete backups recorded in the location's catalog at the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups_in_catalog: Option<u32>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A change of the location's passphrase (`spec.encryption`), repository by repository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassphraseRotation {
    /// The passphrase replaced (`Secret/key`).
    pub from: String,
    /// The new one (`Secret/key`).
    pub to: String,
    /// `InProgress`, `Completed` or `Failed` (retried on every validation).
    pub phase: RotationPhase,
    /// Repositories on the location (the catalog included).
    pub repositories: u32,
    /// Repositories that open with the new passphrase and no longer with the old one.
    pub rotated: u32,
    /// What is left to do, or what went wrong and how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Where a passphrase rotation is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RotationPhase {
    #[default]
    InProgress,
    Completed,
    Failed,
}

/// Whether a location can be used.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LocationPhase {
    /// Reachable with the given credentials, bucket present, writable when ReadWrite.
    Available,
    /// Not usable; `reason` and `message` say why.
    Unavailable,
}
