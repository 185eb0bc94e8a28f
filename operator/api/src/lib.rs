//! The holdfast.dev/v1alpha1 API: custom resource types shared by the controllers, the mover and the CLI. Pure data; no cluster access.

pub mod backup;
pub mod common;
pub mod hooks;
pub mod location;
pub mod policy;
pub mod restore;
pub mod schedule;
pub mod transfer;

pub use backup::{Backup, BackupPhase, BackupSpec, BackupStatus};
pub use common::Duration;
pub use location::{BackupStorageLocation, BackupStorageLocationSpec, BackupStorageLocationStatus};
pub use policy::{SLAPolicy, SLAPolicySpec};
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
    vec![
        BackupStorageLocation::crd(),
        Backup::crd(),
        Restore::crd(),
        Schedule::crd(),
        SLAPolicy::crd(),
        DataUpload::crd(),
        DataDownload::crd(),
    ]
}
