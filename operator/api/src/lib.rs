//! The holdfast.dev/v1alpha1 API: custom resource types shared by the controllers, the mover and the CLI. Pure data; no cluster access.

// kube's `printcolumn(name = .., type_ = "string", ..)` repeats keys by design; clippy
// reads each column's keys as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod backup;
pub mod common;
pub mod hooks;
pub mod location;
pub mod policy;
pub mod reasons;
pub mod repository;
pub mod restore;
pub mod schedule;
pub mod transfer;

pub use backup::{Backup, BackupPhase, BackupSpec, BackupStatus};
pub use common::Duration;
pub use location::{BackupStorageLocation, BackupStorageLocationSpec, BackupStorageLocationStatus};
pub use policy::{SLAPolicy, SLAPolicySpec};
pub use repository::{BackupRepository, BackupRepositorySpec, BackupRepositoryStatus};
pub use restore::{Restore, RestoreSpec, RestoreStatus};
pub use schedule::{Schedule, ScheduleSpec, ScheduleStatus};
pub use transfer::{DataDownload, DataUpload, TransferStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Holdfast kind.
pub const GROUP: &str = "holdfast.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Every CustomResourceDefinition of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let crds = vec![
        BackupStorageLocation::crd(),
        Backup::crd(),
        Restore::crd(),
        Schedule::crd(),
        SLAPolicy::crd(),
        DataUpload::crd(),
        DataDownload::crd(),
        BackupRepository::crd(),
    ];
    crds.into_iter().map(normalize_formats).collect()
}

/// Kubernetes knows the integer formats `int32` and `int64` only; schemars writes `uint64`
/// and friends for unsigned fields, which the API server warns about on every apply.
fn normalize_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(f)) = map.get_mut("format") {
                    let new = match f.as_str() {
                        "uint64" => Some("int64"),
                        "uint32" | "uint16" | "uint8" | "int16" | "int8" => Some("int32"),
                        _ => None,
                    };
                    if let Some(new) = new {
                        *f = new.to_string();
                    }
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises");
    walk(&mut value);
    serde_json::from_value(value).expect("a CRD round-trips")
}
