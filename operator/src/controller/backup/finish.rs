//! The last backup phase: once every volume is final, the snapshots of Copy mode go, the
//! result is decided and `metadata.json` is written last.

use std::time::Duration;

use holdfast_api::backup::{
    Backup, BackupPhase, BackupProgress, BackupStatus, VolumeMode, VolumePhase, VolumeStatus,
};
use holdfast_api::common::Progress;
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::reasons::BackupReason;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::{backup_ref, delete, publish};
use crate::runtime::{Context, Error};
use crate::storage;
use crate::storage::metadata::{BackupMetadata, FORMAT_VERSION};

/// Writes `metadata.json` and ends the backup.
pub(super) async fn complete(
    b: &Backup,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    st: &mut BackupStatus,
) -> Result<Action, Error> {
    if b.spec.volumes.mode == VolumeMode::Copy {
        delete::remove_snapshots(b, ctx).await?;
    }
    let (phase, reason, message) = outcome(&st.volumes, super::hooks::fatal_failure(st));
    let now = Timestamp::now();
    let md = BackupMetadata {
        format_version: FORMAT_VERSION,
        backup: backup_ref(b),
        uid: b.uid().unwrap_or_default(),
        phase,
        reason: reason.map(Into::into),
        storage_location: bsl.name_any(),
        namespaces: st.namespaces.clone(),
        start_time: st.start_time.clone(),
        completion_time: Some(Time(now)),
        items_backed_up: st.items_backed_up.unwrap_or(0),
        volumes: st.volumes.clone(),
        spec: b.spec.clone(),
    };
    let ns = b.namespace().unwrap_or_default();
    let body = serde_json::to_vec_pretty(&md).map_err(Error::internal("serialising metadata"))?;
    if storage::catalog::write_record(ctx, bsl, b, body).await? {
        // What a backup begun by an older operator left in plain text in the bucket.
        storage::delete_legacy_objects(ctx, bsl, &ns, &b.name_any()).await?;
    }
    st.phase = Some(phase);
    st.reason = reason.map(Into::into);
    st.message = message;
    st.completion_time = Some(Time(now));
    st.expiration = b.spec.ttl.and_then(|ttl| {
        let ttl = SignedDuration::try_from(ttl.as_std()).unwrap_or(SignedDuration::ZERO);
        now.checked_add(ttl).ok().map(Time)
    });
    st.progress = Some(progress(&st.volumes));
    info!(backup = %b.name_any(), namespace = %ns, phase = ?phase, "backup finished");
    let good = phase == BackupPhase::Completed;
    let type_ = if good {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let note = st
        .message
        .as_deref()
        .unwrap_or("all volumes and objects protected");
    let reason: &'static str = if good {
        BackupReason::Completed.as_str()
    } else {
        phase_name(phase)
    };
    publish(ctx, b, type_, reason, note).await;
    ctx.metrics.finished(
        "backup",
        phase_name(phase),
        st.start_time.as_ref().map(|t| t.0),
    );
    Ok(Action::requeue(Duration::ZERO))
}

fn phase_name(p: BackupPhase) -> &'static str {
    match p {
        BackupPhase::Completed => "Completed",
        BackupPhase::PartiallyFailed => "PartiallyFailed",
        BackupPhase::Failed => "Failed",
        BackupPhase::Cancelled => "Cancelled",
        _ => "InProgress",
    }
}

/// The result of a backup whose volumes are all final, given the first hook failure with
/// `onError: Fail` (a failed hook makes a backup PartiallyFailed at least): phase, reason and
/// message. Pure.
pub(super) fn outcome(
    volumes: &[VolumeStatus],
    hook_failure: Option<String>,
) -> (BackupPhase, Option<BackupReason>, Option<String>) {
    let failed: Vec<&VolumeStatus> = volumes
        .iter()
        .filter(|v| v.phase == VolumePhase::Failed)
        .collect();
    if failed.is_empty() {
        return match hook_failure {
            None => (BackupPhase::Completed, None, None),
            Some(why) => (
                BackupPhase::PartiallyFailed,
                Some(BackupReason::HookFailed),
                Some(format!(
                    "every volume was protected, but a hook failed: {why}"
                )),
            ),
        };
    }
    let phase = if failed.len() == volumes.len() {
        BackupPhase::Failed
    } else {
        BackupPhase::PartiallyFailed
    };
    let list: Vec<String> = failed
        .iter()
        .map(|v| format!("{} ({})", v.pvc, v.reason.as_deref().unwrap_or("unknown")))
        .collect();
    let mut message = format!(
        "{} of {} volumes failed: {}",
        failed.len(),
        volumes.len(),
        list.join(", ")
    );
    if let Some(why) = hook_failure {
        message.push_str(&format!("; a hook failed: {why}"));
    }
    (phase, Some(BackupReason::VolumesFailed), Some(message))
}

/// Aggregate progress of the volumes. Pure.
pub fn progress(volumes: &[VolumeStatus]) -> BackupProgress {
    let mut p = Progress {
        volumes_total: volumes.len() as u32,
        ..Default::default()
    };
    for v in volumes {
        if v.phase.is_final() {
            p.volumes_done += 1;
        }
        if let Some(c) = &v.copy {
            p.bytes_done += c.bytes_done;
            p.bytes_total += c.bytes_total.max(c.bytes_done);
        }
    }
    p.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::backup::CopyStatus;

    fn vol(phase: VolumePhase, done: u64, total: u64) -> VolumeStatus {
        VolumeStatus {
            phase,
            copy: Some(CopyStatus {
                data_upload: "x".into(),
                bytes_done: done,
                bytes_total: total,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn progress_adds_up_volumes_and_bytes() {
        let p = progress(&[
            vol(VolumePhase::Completed, 100, 100),
            vol(VolumePhase::Copying, 50, 300),
            vol(VolumePhase::Failed, 0, 0),
        ]);
        assert_eq!(p.counts.volumes_done, 2);
        assert_eq!(p.counts.volumes_total, 3);
        assert_eq!(p.counts.bytes_done, 150);
        assert_eq!(p.counts.bytes_total, 400);
        assert_eq!(p.display, "37%");
        assert_eq!(p.volumes, "2/3");
    }

    #[test]
    fn one_failed_volume_of_two_is_a_partial_failure() {
        let ok = vol(VolumePhase::Completed, 1, 1);
        let mut bad = vol(VolumePhase::Failed, 0, 0);
        bad.reason = Some("SnapshotTimeout".into());
        let skipped = vol(VolumePhase::Skipped, 0, 0);
        assert_eq!(
            outcome(&[ok.clone(), skipped], None).0,
            BackupPhase::Completed
        );
        let (phase, reason, message) = outcome(&[ok.clone(), bad.clone()], None);
        assert_eq!(
            (phase, reason),
            (
                BackupPhase::PartiallyFailed,
                Some(BackupReason::VolumesFailed)
            )
        );
        assert!(message.expect("message").contains("1 of 2 volumes failed"));
        assert_eq!(outcome(&[bad], None).0, BackupPhase::Failed);
        let (phase, reason, _) = outcome(&[ok], Some("post hook x failed".into()));
        assert_eq!(
            (phase, reason),
            (BackupPhase::PartiallyFailed, Some(BackupReason::HookFailed))
        );
    }
}
