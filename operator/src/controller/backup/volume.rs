//! Backup phases of each volume: snapshot it, wait for the snapshot, copy it through a
//! DataUpload. Each phase reads and writes the volume's entry in the status.

use std::time::Duration;

use holdfast_api::backup::{
    Backup, BackupStatus, Consistency, CopyStatus, SnapshotStatus, TransferPhase, VolumeMode,
    VolumePhase, VolumeStatus, WithoutSnapshot,
};
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::reasons::VolumeReason;
use holdfast_api::transfer::{DataUpload, DataUploadSpec, TransferStatus};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta};

use super::{
    DEFAULT_SNAPSHOT_TIMEOUT, POLL, backup_ref, child_labels, progress, snapshot_name, upload_name,
};
use crate::runtime::kube_ext::{create_or_adopt, delete};
use crate::runtime::names::parse_quantity;
use crate::runtime::{Context, Error};
use crate::snapshot::{
    self, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotSource, VolumeSnapshotSpec,
};
use crate::storage::repository;

/// How often a copying volume is looked at (DataUpload changes also trigger a pass).
const COPY_POLL: Duration = Duration::from_secs(5);

/// Moves every volume forward; `Some(wait)` while any is not final.
pub(super) async fn advance_all(
    b: &Backup,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    st: &mut BackupStatus,
) -> Result<Option<Duration>, Error> {
    let mut classes: Option<Vec<VolumeSnapshotClass>> = None;
    let mut wait: Option<Duration> = None;
    // A claim of a pod whose pre hooks have not run is not snapshotted yet.
    let gated: Vec<bool> = st
        .volumes
        .iter()
        .map(|v| super::hooks::waits_for_pre(st, v))
        .collect();
    for (v, gated) in st.volumes.iter_mut().zip(gated) {
        let again = match v.phase {
            VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Skipped => None,
            VolumePhase::Pending if gated => Some(POLL),
            VolumePhase::Pending => snapshot_volume(b, ctx, v, &mut classes).await?,
            VolumePhase::Snapshotting => await_snapshot(b, ctx, v).await?,
            VolumePhase::Copying => copy_volume(b, ctx, bsl, v).await?,
        };
        wait = match (wait, again) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
    }
    st.progress = Some(progress(&st.volumes));
    Ok(wait)
}

/// Pending: checks the claim and its volume and creates the VolumeSnapshot (or decides what
/// to do with a volume that cannot be snapshotted).
async fn snapshot_volume(
    b: &Backup,
    ctx: &Context,
    v: &mut VolumeStatus,
    classes: &mut Option<Vec<VolumeSnapshotClass>>,
) -> Result<Option<Duration>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
    let pvc = pvcs
        .get_opt(&v.pvc.name)
        .await
        .map_err(Error::kube("get PersistentVolumeClaim"))?;
    let pv_name = match bound_volume(pvc.as_ref()) {
        Ok(pv) => pv,
        Err((reason, message)) => {
            set_failed(v, reason, message.into());
            return Ok(None);
        }
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv_spec = pvs
        .get_opt(&pv_name)
        .await
        .map_err(Error::kube("get PersistentVolume"))?
        .and_then(|pv| pv.spec);
    if let Some(h) = pv_spec.as_ref().and_then(|s| s.host_path.as_ref()) {
        host_path_volume(b, v, &pv_name, &h.path);
        return Ok(None);
    }
    let driver = pv_spec.and_then(|s| s.csi).map(|c| c.driver);
    v.driver = driver.clone();
    let Some(driver) = driver else {
        return Ok(no_snapshot(b, ctx, v, "the volume is not a CSI volume"));
    };
    if classes.is_none() {
        let api: Api<VolumeSnapshotClass> = Api::all(ctx.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list VolumeSnapshotClasses"))?;
        *classes = Some(list.items);
    }
    let all = classes.as_deref().unwrap_or_default();
    let Some(class) = snapshot::choose_class(all, &driver, &b.spec.volumes.snapshot_classes) else {
        let why = format!(
            "no VolumeSnapshotClass of driver {driver} is labelled {}=\"true\" (or set spec.volumes.snapshotClasses)",
            snapshot::DEFAULT_CLASS_LABEL
        );
        return Ok(no_snapshot(b, ctx, v, &why));
    };
    let name = snapshot_name(b, &v.pvc);
    let vs = VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(v.pvc.namespace.clone()),
            labels: Some(child_labels(b)),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(v.pvc.name.clone()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: Some(class.clone()),
        },
        status: None,
    };
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
    create_or_adopt(&api, &vs, "create VolumeSnapshot").await?;
    v.phase = VolumePhase::Snapshotting;
    v.consistency = Some(Consistency::CrashConsistent);
    v.snapshot = Some(SnapshotStatus {
        name,
        class: Some(class),
        ..Default::default()
    });
    Ok(Some(POLL))
}

/// The volume a claim is bound to, or why there is nothing to back up. Pure.
fn bound_volume(
    pvc: Option<&PersistentVolumeClaim>,
) -> Result<String, (VolumeReason, &'static str)> {
    let Some(pvc) = pvc else {
        return Err((
            VolumeReason::PVCNotFound,
            "the claim was deleted before it could be snapshotted",
        ));
    };
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
        .ok_or((
            VolumeReason::PVCNotBound,
            "the claim is not bound to a volume; nothing to back up",
        ))
}

/// Snapshotting: waits for `readyToUse` within the snapshot timeout.
async fn await_snapshot(
    b: &Backup,
    ctx: &Context,
    v: &mut VolumeStatus,
) -> Result<Option<Duration>, Error> {
    let Some(mut s) = v.snapshot.clone() else {
        v.phase = VolumePhase::Pending;
        return Ok(Some(Duration::ZERO));
    };
    if s.name.is_empty()
        && let Some(group) = s.group.clone()
    {
        let timeout = b
            .spec
            .volumes
            .snapshot_timeout
            .map(|d| d.as_std())
            .unwrap_or(DEFAULT_SNAPSHOT_TIMEOUT);
        match super::group::member(ctx, &v.pvc, &group, timeout).await? {
            Ok(Some(member)) => {
                s.name = member;
                v.snapshot = Some(s.clone());
            }
            Ok(None) => return Ok(Some(POLL)),
            Err(why) => {
                set_failed(v, VolumeReason::GroupSnapshotFailed, why);
                return Ok(None);
            }
        }
    }
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
    let Some(vs) = api
        .get_opt(&s.name)
        .await
        .map_err(Error::kube("get VolumeSnapshot"))?
    else {
        v.phase = VolumePhase::Pending;
        return Ok(Some(Duration::ZERO));
    };
    let vst = vs.status.clone().unwrap_or_default();
    if s.creation_time.is_none() && vst.creation_time.is_some() {
        s.creation_time = vst.creation_time.clone();
        v.snapshot = Some(s.clone());
    }
    if vst.ready_to_use == Some(true) {
        s.ready_to_use = true;
        s.content_name = vst.bound_volume_snapshot_content_name.clone();
        s.restore_size_bytes = vst.restore_size.as_ref().and_then(|q| parse_quantity(&q.0));
        v.snapshot = Some(s);
        if b.spec.volumes.mode == VolumeMode::Snapshot {
            v.phase = VolumePhase::Completed;
            return Ok(None);
        }
        v.phase = VolumePhase::Copying;
        return Ok(Some(Duration::ZERO));
    }
    let timeout = b
        .spec
        .volumes
        .snapshot_timeout
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_SNAPSHOT_TIMEOUT);
    let age = vs
        .creation_timestamp()
        .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    let error = vst.error.and_then(|e| e.message);
    if age > timeout {
        let why = error.unwrap_or_else(|| "not ready to use".into());
        let msg = format!(
            "VolumeSnapshot {} was not ready within {timeout:?}: {why}",
            s.name
        );
        set_failed(v, VolumeReason::SnapshotTimeout, msg);
        // A member of a group goes with its group (when the backup's snapshots are removed).
        if s.group.is_none() {
            delete(
                &api,
                &s.name,
                &DeleteParams::default(),
                "delete timed-out VolumeSnapshot",
            )
            .await?;
        }
        return Ok(None);
    }
    if let Some(e) = error {
        v.message = Some(format!("snapshot: {e}"));
    }
    Ok(Some(POLL))
}

/// Copying: makes sure the repository exists, creates the DataUpload and follows it.
async fn copy_volume(
    b: &Backup,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    v: &mut VolumeStatus,
) -> Result<Option<Duration>, Error> {
    let name = upload_name(b, &v.pvc);
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let du = match api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get DataUpload"))?
    {
        Some(du) => du,
        None => {
            repository::ensure(ctx, bsl, &v.pvc.namespace).await?;
            let du = upload(b, ctx, bsl, v, &name);
            match create_or_adopt(&api, &du, "create DataUpload").await? {
                Some(du) => du,
                None => return Ok(Some(POLL)),
            }
        }
    };
    let ts = du.status.unwrap_or_default();
    follow_upload(v, name, &ts);
    Ok((!v.phase.is_final()).then_some(COPY_POLL))
}

fn upload(
    b: &Backup,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    v: &VolumeStatus,
    name: &str,
) -> DataUpload {
    DataUpload {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ctx.namespace.clone()),
            labels: Some(child_labels(b)),
            ..Default::default()
        },
        spec: DataUploadSpec {
            backup: backup_ref(b),
            pvc: v.pvc.clone(),
            volume_snapshot: v.snapshot.as_ref().map(|s| s.name.clone()),
            storage_location: bsl.name_any(),
            repository: v.pvc.namespace.clone(),
            volume_mode: v.volume_mode.clone(),
            cancel: false,
        },
        status: None,
    }
}

/// Copies a DataUpload's state into the volume's. Pure.
pub(super) fn follow_upload(v: &mut VolumeStatus, upload: String, ts: &TransferStatus) {
    v.copy = Some(CopyStatus {
        data_upload: upload,
        phase: Some(ts.phase),
        snapshot_id: ts.snapshot_id.clone(),
        bytes_done: ts.bytes_done,
        bytes_total: ts.bytes_total,
        bytes_uploaded: ts.bytes_uploaded,
    });
    match ts.phase {
        TransferPhase::Completed => {
            v.phase = VolumePhase::Completed;
            // A live copy keeps its LiveCopy note unless the copy has one of its own.
            let live = v.consistency == Some(Consistency::Inconsistent);
            if ts.reason.is_some() || !live {
                v.reason = ts.reason.clone();
                v.message = ts.message.clone();
            }
        }
        TransferPhase::Failed | TransferPhase::Cancelled => {
            v.phase = VolumePhase::Failed;
            v.reason = Some(
                ts.reason
                    .clone()
                    .unwrap_or_else(|| VolumeReason::CopyFailed.into()),
            );
            v.message = Some(ts.message.clone().unwrap_or_default());
        }
        _ => {}
    }
}

fn set_failed(v: &mut VolumeStatus, reason: VolumeReason, message: String) {
    v.phase = VolumePhase::Failed;
    v.reason = Some(reason.into());
    v.message = Some(message);
}

/// A `hostPath` PersistentVolume is never copied. Its data is a directory on whichever
/// node the volume was used on, and nothing in the volume says which: a mover pod placed
/// on another node would find an empty directory there and "back it up" successfully.
/// `withoutSnapshot: Skip` records it as skipped; otherwise it fails. Pure.
fn host_path_volume(b: &Backup, v: &mut VolumeStatus, pv: &str, path: &str) {
    let why = format!(
        "PersistentVolume {pv} is a hostPath volume ({path}): hostPath volumes are not supported, their data is on one node's disk and no node is recorded in the volume; use a CSI driver, or a local PersistentVolume (spec.local with nodeAffinity) and withoutSnapshot: LiveCopy"
    );
    if b.spec.volumes.without_snapshot == WithoutSnapshot::Skip {
        v.phase = VolumePhase::Skipped;
        v.reason = Some(VolumeReason::HostPathNotSupported.into());
        v.message = Some(format!(
            "{why}; skipped (spec.volumes.withoutSnapshot: Skip)"
        ));
    } else {
        let fix = "or set spec.volumes.withoutSnapshot to Skip to back up the rest without it";
        set_failed(
            v,
            VolumeReason::HostPathNotSupported,
            format!("{why}; {fix}"),
        );
    }
}

/// A volume whose driver cannot snapshot, handled per `spec.volumes.withoutSnapshot`.
fn no_snapshot(b: &Backup, ctx: &Context, v: &mut VolumeStatus, why: &str) -> Option<Duration> {
    let admin = b.namespace().as_deref() == Some(ctx.namespace.as_str());
    no_snapshot_decision(
        b.spec.volumes.without_snapshot,
        admin,
        &ctx.namespace,
        v,
        why,
    )
}

/// See [`no_snapshot`]. Pure.
fn no_snapshot_decision(
    policy: WithoutSnapshot,
    admin: bool,
    operator_ns: &str,
    v: &mut VolumeStatus,
    why: &str,
) -> Option<Duration> {
    match policy {
        WithoutSnapshot::Skip => {
            v.phase = VolumePhase::Skipped;
            v.reason = Some(VolumeReason::NoSnapshotClass.into());
            v.message = Some(format!(
                "{why}; skipped (spec.volumes.withoutSnapshot: Skip)"
            ));
        }
        WithoutSnapshot::Fail => set_failed(
            v,
            VolumeReason::NoSnapshotClass,
            format!(
                "{why}; set spec.volumes.withoutSnapshot to Skip to back up the rest without this volume, or to LiveCopy to copy it without a snapshot"
            ),
        ),
        // A live copy puts the location's credentials next to the claim for the time of the
        // copy, so only administrators (Backups in the operator namespace) may ask for one.
        WithoutSnapshot::LiveCopy if !admin => set_failed(
            v,
            VolumeReason::LiveCopyNotAllowed,
            format!(
                "{why}; withoutSnapshot: LiveCopy is only allowed for Backups in namespace {operator_ns} (a live copy needs the location's credentials in the claim's namespace)"
            ),
        ),
        WithoutSnapshot::LiveCopy => {
            v.phase = VolumePhase::Copying;
            v.consistency = Some(Consistency::Inconsistent);
            v.reason = Some(VolumeReason::LiveCopy.into());
            v.message = Some(format!(
                "{why}; copied from the live volume (spec.volumes.withoutSnapshot: LiveCopy): not crash-consistent, files written during the copy may be torn"
            ));
            return Some(Duration::ZERO);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_without_a_snapshot_follow_the_policy() {
        let mut v = VolumeStatus::default();
        assert_eq!(
            no_snapshot_decision(WithoutSnapshot::Skip, false, "hf", &mut v, "x"),
            None
        );
        assert_eq!(
            (v.phase, v.reason.as_deref()),
            (VolumePhase::Skipped, Some("NoSnapshotClass"))
        );
        let mut v = VolumeStatus::default();
        no_snapshot_decision(WithoutSnapshot::Fail, true, "hf", &mut v, "x");
        assert_eq!(v.phase, VolumePhase::Failed);
        let mut v = VolumeStatus::default();
        no_snapshot_decision(WithoutSnapshot::LiveCopy, false, "hf", &mut v, "x");
        assert_eq!(v.reason.as_deref(), Some("LiveCopyNotAllowed"));
        let mut v = VolumeStatus::default();
        let again = no_snapshot_decision(WithoutSnapshot::LiveCopy, true, "hf", &mut v, "x");
        assert_eq!(again, Some(Duration::ZERO));
        assert_eq!(
            (v.phase, v.consistency),
            (VolumePhase::Copying, Some(Consistency::Inconsistent))
        );
    }

    #[test]
    fn only_bound_claims_have_data() {
        assert_eq!(
            bound_volume(None).expect_err("gone").0,
            VolumeReason::PVCNotFound
        );
        let mut pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "spec": {"volumeName": "pv-1"}, "status": {"phase": "Pending"}
        }))
        .expect("pvc");
        assert_eq!(
            bound_volume(Some(&pvc)).expect_err("pending").0,
            VolumeReason::PVCNotBound
        );
        pvc.status.as_mut().expect("status").phase = Some("Bound".into());
        assert_eq!(bound_volume(Some(&pvc)).expect("bound"), "pv-1");
    }

    #[test]
    fn a_volume_follows_its_upload() {
        let mut v = VolumeStatus {
            phase: VolumePhase::Copying,
            ..Default::default()
        };
        let mut ts = TransferStatus {
            phase: TransferPhase::InProgress,
            bytes_done: 5,
            ..Default::default()
        };
        follow_upload(&mut v, "u".into(), &ts);
        assert_eq!(v.phase, VolumePhase::Copying);
        assert_eq!(v.copy.as_ref().map(|c| c.bytes_done), Some(5));
        ts.phase = TransferPhase::Failed;
        follow_upload(&mut v, "u".into(), &ts);
        assert_eq!(
            (v.phase, v.reason.as_deref()),
            (VolumePhase::Failed, Some("CopyFailed"))
        );
        let mut live = VolumeStatus {
            phase: VolumePhase::Copying,
            consistency: Some(Consistency::Inconsistent),
            reason: Some("LiveCopy".into()),
            ..Default::default()
        };
        ts.phase = TransferPhase::Completed;
        follow_upload(&mut live, "u".into(), &ts);
        assert_eq!(
            (live.phase, live.reason.as_deref()),
            (VolumePhase::Completed, Some("LiveCopy"))
        );
    }
}
