//! Restore phases of each volume: decide where its data comes from (refusing what would
//! overwrite data it was not asked to), then a claim from the snapshot, or a DataDownload from
//! the copy whose volume is bound to the target claim.

use std::collections::BTreeMap;

use holdfast_api::backup::{BackupProgress, TransferPhase, VolumeStatus};
use holdfast_api::common::{NamespacedName, Progress};
use holdfast_api::reasons::RestoreReason;
use holdfast_api::restore::{Restore, RestoreFrom, RestoreStatus, RestoreTarget, RestoredVolume};
use holdfast_api::transfer::{DataDownload, DataDownloadSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, TypedLocalObjectReference,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta};
use tracing::info;

use super::source::Source;
use super::{RESTORE_LABEL, child_labels, download_name};
use crate::controller::transfer::RECLAIM_ANNOTATION;
use crate::objects;
use crate::runtime::error::Refusal;
use crate::runtime::kube_ext::{self, create_or_adopt, delete, merge_patch};
use crate::runtime::{Context, Error};
use crate::snapshot::VolumeSnapshot;

/// Where the volumes stand after a pass.
pub(super) enum Step {
    /// Some volume is not final yet.
    Wait,
    /// Every volume is final.
    Done,
    /// The whole restore must stop (it would overwrite data in use).
    Refuse(Refusal),
}

/// Moves every volume forward.
pub(super) async fn advance_all(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    st: &mut RestoreStatus,
) -> Result<Step, Error> {
    let mut waiting = false;
    for v in &mut st.volumes {
        let md_vol = src
            .md
            .volumes
            .iter()
            .find(|m| m.pvc == v.source)
            .cloned()
            .unwrap_or_default();
        let backed_up = backed_up_claim(src, &md_vol.pvc);
        match advance(r, ctx, src, &md_vol, backed_up, v).await? {
            Step::Wait => waiting = true,
            Step::Done => {}
            refused @ Step::Refuse(_) => return Ok(refused),
        }
    }
    st.progress = Some(progress(&st.volumes));
    Ok(if waiting { Step::Wait } else { Step::Done })
}

/// The claim as it was backed up, from the object archive.
fn backed_up_claim(src: &Source, pvc: &NamespacedName) -> Option<PersistentVolumeClaim> {
    src.items
        .iter()
        .find(|it| {
            it.resource.plural == "persistentvolumeclaims"
                && it.namespace() == Some(pvc.namespace.as_str())
                && it.name() == pvc.name
        })
        .and_then(|it| serde_json::to_value(&it.object).ok())
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Aggregate progress of the restored volumes. Pure.
pub(super) fn progress(vols: &[RestoredVolume]) -> BackupProgress {
    let mut p = Progress {
        volumes_total: vols.len() as u32,
        ..Default::default()
    };
    for v in vols {
        if v.phase.is_terminal() {
            p.volumes_done += 1;
        }
        p.bytes_done += v.bytes_done;
        p.bytes_total += v.bytes_total.max(v.bytes_done);
    }
    p.into()
}

async fn advance(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    md_vol: &VolumeStatus,
    backed_up: Option<PersistentVolumeClaim>,
    v: &mut RestoredVolume,
) -> Result<Step, Error> {
    if v.phase.is_terminal() {
        return Ok(Step::Done);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.target.namespace);
    let existing = pvcs
        .get_opt(&v.target.name)
        .await
        .map_err(Error::kube("get target claim"))?;
    if v.phase == TransferPhase::Pending && v.from.is_none() {
        return decide(r, ctx, md_vol, existing.as_ref(), v).await;
    }
    let class = md_vol
        .storage_class
        .clone()
        .map(|c| r.spec.storage_class_mapping.get(&c).cloned().unwrap_or(c));
    if v.from == Some(RestoreFrom::Snapshot) {
        if existing.is_none() {
            let s = md_vol.snapshot.clone().unwrap_or_default();
            let source = TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: s.name,
            };
            let pvc = target_claim(r, backed_up, v, class, None, Some(source));
            create_or_adopt(&pvcs, &pvc, "create target claim").await?;
        }
        v.phase = TransferPhase::Completed;
        return Ok(Step::Done);
    }
    let Some(dd) = download(r, ctx, src, md_vol, backed_up.as_ref(), v, &class).await? else {
        return Ok(Step::Wait);
    };
    let ts = dd.status.unwrap_or_default();
    v.bytes_done = ts.bytes_done;
    v.bytes_total = ts.bytes_total;
    match ts.phase {
        TransferPhase::Completed => {
            let Some(pv) = ts.volume.clone() else {
                v.phase = TransferPhase::Failed;
                v.reason = Some(RestoreReason::VolumeLost.into());
                return Ok(Step::Done);
            };
            v.phase = TransferPhase::InProgress;
            bind_target(r, ctx, backed_up, v, class, &pv, existing).await
        }
        TransferPhase::Failed | TransferPhase::Cancelled => {
            v.phase = TransferPhase::Failed;
            v.reason = ts.reason.clone();
            v.message = ts.message.clone();
            Ok(Step::Done)
        }
        TransferPhase::Pending => {
            v.phase = TransferPhase::Preparing;
            Ok(Step::Wait)
        }
        p => {
            v.phase = p;
            Ok(Step::Wait)
        }
    }
}

/// Decides once where the volume's data comes from, refusing what would overwrite data the
/// restore was not asked to.
async fn decide(
    r: &Restore,
    ctx: &Context,
    md_vol: &VolumeStatus,
    existing: Option<&PersistentVolumeClaim>,
    v: &mut RestoredVolume,
) -> Result<Step, Error> {
    let in_place = r.spec.volumes.target == RestoreTarget::InPlace;
    if in_place {
        if existing.is_none() {
            let why = format!(
                "spec.volumes.target is InPlace but claim {} does not exist; use NewPVC",
                v.target
            );
            return Ok(Step::Refuse(Refusal::new(RestoreReason::PVCNotFound, why)));
        }
        if let Some(refusal) = in_use(ctx, &v.target).await? {
            return Ok(Step::Refuse(refusal));
        }
    } else if let Some(e) = existing
        && e.labels()
            .get(RESTORE_LABEL)
            .is_none_or(|n| *n != r.name_any())
    {
        v.phase = TransferPhase::Failed;
        v.reason = Some(RestoreReason::PVCExists.into());
        v.message = Some(format!(
            "claim {} already exists and was left alone; delete it or use spec.volumes.target: InPlace",
            v.target
        ));
        return Ok(Step::Done);
    }
    let snapshot_ready = match &md_vol.snapshot {
        Some(s) if v.target.namespace == md_vol.pvc.namespace && !in_place => {
            let api: Api<VolumeSnapshot> =
                Api::namespaced(ctx.client.clone(), &md_vol.pvc.namespace);
            api.get_opt(&s.name)
                .await
                .map_err(Error::kube("get VolumeSnapshot"))?
                .and_then(|vs| vs.status)
                .and_then(|s| s.ready_to_use)
                == Some(true)
        }
        _ => false,
    };
    let has_copy = md_vol
        .copy
        .as_ref()
        .and_then(|c| c.snapshot_id.as_ref())
        .is_some();
    match choose_source(r.spec.from, snapshot_ready, has_copy) {
        Some(from) => {
            v.from = Some(from);
            Ok(Step::Wait)
        }
        None => {
            v.phase = TransferPhase::Failed;
            v.reason = Some(RestoreReason::NoData.into());
            let what = if r.spec.from == RestoreFrom::Snapshot {
                "snapshot in the target namespace"
            } else {
                "snapshot or copy"
            };
            v.message = Some(format!(
                "no {what} of claim {} is available (spec.from: {:?})",
                md_vol.pvc, r.spec.from
            ));
            Ok(Step::Done)
        }
    }
}

/// Where a volume's data comes from: the in-cluster snapshot while it is ready (`Auto` or
/// `Snapshot`), else the copy (`Auto` or `Copy`); `None` when what is asked for is not there.
/// Pure.
pub(super) fn choose_source(
    from: RestoreFrom,
    snapshot_ready: bool,
    has_copy: bool,
) -> Option<RestoreFrom> {
    match (from, snapshot_ready, has_copy) {
        (RestoreFrom::Snapshot | RestoreFrom::Auto, true, _) => Some(RestoreFrom::Snapshot),
        (RestoreFrom::Copy | RestoreFrom::Auto, _, true) => Some(RestoreFrom::Copy),
        _ => None,
    }
}

/// A refusal when pods mount the claim (an in-place restore would pull data from under them).
async fn in_use(ctx: &Context, claim: &NamespacedName) -> Result<Option<Refusal>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &claim.namespace);
    let users: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Pods"))?
        .items
        .into_iter()
        .filter(|p| kube_ext::running_with_claim(p, &claim.name))
        .map(|p| p.name_any())
        .collect();
    Ok((!users.is_empty()).then(|| {
        Refusal::new(
            RestoreReason::VolumeInUse,
            format!(
                "claim {claim} is mounted by pod(s) {}; scale the workload down and create the Restore again",
                users.join(", ")
            ),
        )
    }))
}

/// The volume's DataDownload (created on the first pass; `None` then).
async fn download(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    md_vol: &VolumeStatus,
    backed_up: Option<&PersistentVolumeClaim>,
    v: &mut RestoredVolume,
    class: &Option<String>,
) -> Result<Option<DataDownload>, Error> {
    let name = download_name(r, &v.target);
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Some(dd) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get DataDownload"))?
    {
        return Ok(Some(dd));
    }
    let capacity = backed_up
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .or_else(|| {
            md_vol
                .snapshot
                .as_ref()
                .and_then(|s| s.restore_size_bytes)
                .map(|b| b.to_string())
        })
        .unwrap_or_else(|| "1Gi".into());
    let dd = DataDownload {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ctx.namespace.clone()),
            labels: Some(child_labels(r)),
            ..Default::default()
        },
        spec: DataDownloadSpec {
            restore: NamespacedName {
                namespace: r.namespace().unwrap_or_default(),
                name: r.name_any(),
            },
            target_pvc: v.target.clone(),
            storage_location: src.bsl.name_any(),
            repository: md_vol.pvc.namespace.clone(),
            snapshot_id: md_vol
                .copy
                .as_ref()
                .and_then(|c| c.snapshot_id.clone())
                .unwrap_or_default(),
            storage_class_name: class.clone(),
            capacity,
            volume_mode: md_vol.volume_mode.clone(),
            expected_bytes: md_vol.copy.as_ref().map(|c| c.bytes_total),
            cancel: false,
        },
        status: None,
    };
    v.data_download = Some(name);
    v.phase = TransferPhase::Preparing;
    create_or_adopt(&api, &dd, "create DataDownload").await?;
    Ok(None)
}

/// Gives the restored volume `pv` to the target claim: creates it bound to `pv` (replacing an
/// existing claim for InPlace, once nothing mounts it), then restores the reclaim policy.
async fn bind_target(
    r: &Restore,
    ctx: &Context,
    backed_up: Option<PersistentVolumeClaim>,
    v: &mut RestoredVolume,
    class: Option<String>,
    pv: &str,
    existing: Option<PersistentVolumeClaim>,
) -> Result<Step, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.target.namespace);
    match existing {
        Some(e) if e.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv) => {
            if e.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
                return Ok(Step::Wait);
            }
            restore_reclaim_policy(ctx, pv).await?;
            v.phase = TransferPhase::Completed;
            Ok(Step::Done)
        }
        Some(e) => {
            // InPlace: the old claim goes only now that the restored data is complete.
            if r.spec.volumes.target != RestoreTarget::InPlace {
                v.phase = TransferPhase::Failed;
                v.reason = Some(RestoreReason::PVCExists.into());
                v.message = Some(format!(
                    "claim {} appeared during the restore and was left alone",
                    v.target
                ));
                return Ok(Step::Done);
            }
            if let Some(refusal) = in_use(ctx, &v.target).await? {
                return Ok(Step::Refuse(refusal));
            }
            if e.metadata.deletion_timestamp.is_none() {
                info!(claim = %v.target, "in-place restore: replacing the claim's volume");
                delete(
                    &pvcs,
                    &v.target.name,
                    &DeleteParams::default(),
                    "delete claim replaced in place",
                )
                .await?;
            }
            Ok(Step::Wait)
        }
        None => {
            let pvc = target_claim(r, backed_up, v, class, Some(pv.to_string()), None);
            create_or_adopt(&pvcs, &pvc, "create target claim").await?;
            Ok(Step::Wait)
        }
    }
}

/// Gives a bound restored volume back the reclaim policy it had before the download.
async fn restore_reclaim_policy(ctx: &Context, pv: &str) -> Result<(), Error> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if let Some(p) = pvs
        .get_opt(pv)
        .await
        .map_err(Error::kube("get restored PersistentVolume"))?
        && let Some(policy) = p.annotations().get(RECLAIM_ANNOTATION).cloned()
    {
        let patch = serde_json::json!({"metadata": {"annotations": {RECLAIM_ANNOTATION: null}}, "spec": {"persistentVolumeReclaimPolicy": policy}});
        merge_patch(&pvs, pv, &patch, "restore reclaim policy").await?;
    }
    Ok(())
}

/// The target claim built from the backed-up one: mapped namespace and class, no binding, no
/// GitOps tracking or provisioning annotations. Pure.
fn target_claim(
    r: &Restore,
    backed_up: Option<PersistentVolumeClaim>,
    v: &RestoredVolume,
    class: Option<String>,
    volume_name: Option<String>,
    data_source: Option<TypedLocalObjectReference>,
) -> PersistentVolumeClaim {
    let mut pvc = backed_up.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = pvc.metadata.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !objects::sanitize::is_gitops_key(k));
    labels.insert(RESTORE_LABEL.into(), r.name_any());
    let annotations: BTreeMap<String, String> = pvc
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("pv.kubernetes.io/")
                && !k.starts_with("volume.beta.kubernetes.io/")
                && !k.starts_with("volume.kubernetes.io/")
                && !objects::sanitize::is_gitops_key(k)
                && k != "kubectl.kubernetes.io/last-applied-configuration"
        })
        .collect();
    pvc.metadata = ObjectMeta {
        name: Some(v.target.name.clone()),
        namespace: Some(v.target.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    };
    let mut spec = pvc.spec.unwrap_or_default();
    spec.storage_class_name = class;
    spec.volume_name = volume_name;
    spec.data_source = data_source;
    spec.data_source_ref = None;
    spec.selector = None;
    pvc.spec = Some(spec);
    pvc.status = None;
    pvc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_of_a_volume_follows_spec_from() {
        use RestoreFrom::*;
        assert_eq!(choose_source(Auto, true, true), Some(Snapshot));
        assert_eq!(choose_source(Auto, false, true), Some(Copy));
        assert_eq!(choose_source(Auto, false, false), None);
        assert_eq!(choose_source(Snapshot, false, true), None);
        assert_eq!(choose_source(Copy, true, true), Some(Copy));
        assert_eq!(choose_source(Copy, true, false), None);
    }

    #[test]
    fn restore_progress_counts_final_volumes() {
        let v = |phase, done, total| RestoredVolume {
            phase,
            bytes_done: done,
            bytes_total: total,
            ..Default::default()
        };
        let p = progress(&[
            v(TransferPhase::Completed, 10, 10),
            v(TransferPhase::InProgress, 5, 30),
        ]);
        assert_eq!(
            (
                p.counts.volumes_done,
                p.counts.bytes_done,
                p.counts.bytes_total
            ),
            (1, 15, 40)
        );
    }
}
