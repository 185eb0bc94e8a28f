//! The `reason` values Holdfast writes into statuses and conditions, one enum per kind. They
//! serialise as the strings users see (`kubectl get`, alerts), so a variant is never renamed.

macro_rules! reasons {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every reason, for documentation and tests.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The reason as written into status and conditions.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v),)* }
            }
        }

        impl From<$name> for &'static str {
            fn from(r: $name) -> &'static str {
                r.as_str()
            }
        }

        impl From<$name> for String {
            fn from(r: $name) -> String {
                r.as_str().to_string()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

reasons! {
    /// Why a BackupStorageLocation cannot be used by a Backup, Restore or transfer.
    LocationReason {
        /// `spec.storageLocation` names a location that does not exist.
        LocationNotFound,
        /// No location was named and none is the default.
        NoDefaultLocation,
        /// The location exists but is not Available (its status says why).
        LocationUnavailable,
        /// A Backup that writes copies names a ReadOnly location.
        LocationReadOnly,
        /// The location's `spec.allowedNamespaces` does not allow the namespace of the
        /// Backup, Restore or Schedule.
        LocationNotAllowed,
    }
}

reasons! {
    /// Reasons of a Backup's status.
    BackupReason {
        InProgress,
        Completed,
        Cancelling,
        Cancelled,
        /// Some or all volumes failed (each volume says why).
        VolumesFailed,
        /// A tenant Backup named other namespaces.
        NamespaceNotAllowed,
        /// Objects could not be captured (retried).
        CaptureFailed,
        /// The bucket could not be written (retried).
        StorageError,
        /// Deleting the backup's data failed (retried).
        DeleteFailed,
        /// The location of a deleted backup is gone: its copies could not be removed.
        LocationGone,
        /// No longer written (hooks run since 0.3).
        HooksNotRun,
        GroupSnapshotNotSupported,
        /// A hook with `onError: Fail` failed (`status.hooks` says which).
        HookFailed,
        /// A tenant Backup asked for cluster-scoped objects.
        ClusterResourcesNotAllowed,
        /// The namespace's backups store at least the byte limit its Namespace sets
        /// (annotation `holdfast.dev/stored-bytes-limit`); the message says usage and limit.
        QuotaExceeded,
        /// The namespace's `holdfast.dev/stored-bytes-limit` annotation is not a quantity.
        QuotaInvalid,
    }
}

reasons! {
    /// Reasons of one volume of a Backup.
    VolumeReason {
        PVCNotFound,
        PVCNotBound,
        HostPathNotSupported,
        NoSnapshotClass,
        LiveCopyNotAllowed,
        LiveCopy,
        SnapshotTimeout,
        CopyFailed,
        /// A pre hook of a pod mounting the claim failed with `onError: Fail`.
        HookFailed,
        /// `spec.volumes.groupSnapshot` asked for, but the cluster or the driver cannot.
        GroupSnapshotNotSupported,
        /// The VolumeGroupSnapshot failed or was not ready in time.
        GroupSnapshotFailed,
    }
}

reasons! {
    /// Reasons of a DataUpload or DataDownload.
    TransferReason {
        Cancelled,
        WaitingForSlot,
        WaitingForNodeSlot,
        LiveCopy,
        SnapshotNotFound,
        PVCNotFound,
        PVCNotBound,
        VolumeInUse,
        AccessSecretMissing,
        MoverPodRejected,
        MoverFailed,
        /// The mover exited successfully but printed no summary.
        NoResult,
        SomeFilesUnreadable,
        SomeMetadataNotRestored,
        VolumeLost,
    }
}

reasons! {
    /// Reasons of a Restore and its volumes.
    RestoreReason {
        Cancelled,
        InvalidSource,
        BackupNotFound,
        BackupNotAllowed,
        BackupNotRestorable,
        BackupIncomplete,
        BackupCorrupt,
        MappingNotAllowed,
        StorageError,
        ObjectRestoreFailed,
        NothingRestored,
        ObjectsFailed,
        VolumesFailed,
        PVCNotFound,
        PVCExists,
        VolumeInUse,
        VolumeLost,
        NoData,
        /// No longer written (restore hooks run since 0.3).
        HooksNotRun,
        /// A restore hook with `onError: Fail` failed.
        HookFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_their_names() {
        assert_eq!(
            VolumeReason::HostPathNotSupported.as_str(),
            "HostPathNotSupported"
        );
        assert_eq!(String::from(TransferReason::MoverFailed), "MoverFailed");
        assert_eq!(RestoreReason::ALL.len(), 20);
    }
}

reasons! {
    /// Reasons of a Schedule's status and its `RetentionHeld` condition.
    ScheduleReason {
        /// Creating backups on its cadence.
        Active,
        /// `spec.paused` is set: no runs start; retention still applies.
        Paused,
        /// The cron expression, time zone, retention or the SLA policy cannot be used.
        InvalidSchedule,
        /// `spec.policy` names an SLAPolicy that does not exist.
        PolicyNotFound,
        /// A retention pass would delete more restore points than the brake allows.
        DeletionsHeld,
        /// No retention pass is held.
        NothingHeld,
        /// The schedule is being deleted with `onDelete: Delete`: its backups are going.
        DeletingBackups,
        /// The run's Backup was refused by a quota: a ResourceQuota on the number of Backups
        /// (`count/backups.holdfast.dev`) or the namespace's stored-bytes limit. Retried.
        QuotaExceeded,
    }
}
