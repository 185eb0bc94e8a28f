//! DataDownload controller: takes a mover slot, creates a temporary claim and the mover pod
//! that writes the repository snapshot into it, follows its progress, keeps the written volume
//! (`Retain`) and reserves it for the target claim the Restore controller creates. A download
//! that fails or goes away takes its volume along unless a claim already holds it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::reasons::TransferReason;
use holdfast_api::transfer::{DataDownload, TransferStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta};
use kube::runtime::controller::Action;
use tracing::info;

use super::TransferError;
use super::admission::{self, Admission};
use super::{
    FINALIZER, MANAGER, POLL, RECLAIM_ANNOTATION, TRANSFER_LABEL, delete_mover_pod, finish,
    labels_for, location, owner, placement, pod,
};
use crate::mover::protocol::{self, RestoreEvent};
use crate::runtime::kernel::Reconciler;
use crate::runtime::kube_ext::{create_or_adopt, delete, delete_if_present, merge_patch};
use crate::runtime::{Context, Error};

/// The DataDownload controller's phase functions.
pub struct Downloads {
    pub admission: Arc<Admission>,
}

impl Reconciler for Downloads {
    type Object = DataDownload;
    type Status = TransferStatus;
    type Error = TransferError;
    const KIND: &'static str = "DataDownload";
    const METRIC: &'static str = "datadownload";
    const MANAGER: &'static str = MANAGER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    async fn step(
        &self,
        dd: &DataDownload,
        ctx: &Context,
        st: &mut TransferStatus,
    ) -> Result<Action, TransferError> {
        if dd.spec.cancel {
            cleanup(ctx, &dd.name_any(), true)
                .await
                .map_err(TransferError::Cleanup)?;
            return Ok(finish(
                st,
                TransferPhase::Cancelled,
                Some(TransferReason::Cancelled),
                Some("cancelled".into()),
            ));
        }
        match st.phase {
            TransferPhase::Pending => Ok(self
                .admission
                .take_slot(ctx, &admission::key(Self::KIND, &dd.name_any()), st)
                .await),
            TransferPhase::Preparing => prepare(dd, ctx, &self.admission, st)
                .await
                .map_err(TransferError::Prepare),
            TransferPhase::InProgress => match st.volume.clone() {
                Some(pv) => hand_over(dd, ctx, st, &pv)
                    .await
                    .map_err(TransferError::HandOver),
                None => follow(dd, ctx, st).await.map_err(TransferError::Follow),
            },
            _ => Ok(Action::await_change()),
        }
    }

    async fn finished(
        &self,
        dd: &DataDownload,
        ctx: &Context,
        st: &TransferStatus,
    ) -> Result<Action, TransferError> {
        let discard = st.phase != TransferPhase::Completed;
        let cleaned = cleanup(ctx, &dd.name_any(), discard)
            .await
            .map_err(TransferError::Cleanup)?;
        if !cleaned {
            return Ok(Action::requeue(POLL));
        }
        // A failed or cancelled transfer's dead mover may have left locks
        // (the store unreachable when it failed, or the mover killed by a cancel).
        let again = super::release_finished(
            ctx,
            st,
            &dd.spec.storage_location,
            &dd.spec.repository,
            &dd.name_any(),
            false,
        )
        .await;
        Ok(again.map_or_else(Action::await_change, Action::requeue))
    }

    /// A finished download keeps its finalizer: deleting it (its Restore does, when it ends)
    /// must still remove a restored volume that no claim took.
    fn hold_finished(&self, _action: &Action) -> bool {
        true
    }

    /// A download going away takes its volume along unless a claim already holds it (a
    /// restore cancelled or deleted after the copy but before its claim existed).
    async fn cleanup(&self, dd: &DataDownload, ctx: &Context) -> Result<bool, TransferError> {
        Ok(cleanup(ctx, &dd.name_any(), true)
            .await
            .map_err(TransferError::Cleanup)?
            && super::release_deleted(
                ctx,
                &dd.metadata,
                dd.status.as_ref(),
                &dd.spec.storage_location,
                &dd.spec.repository,
                &dd.name_any(),
                false,
            )
            .await)
    }
}

/// Preparing: the temporary claim and the placed mover pod.
async fn prepare(
    dd: &DataDownload,
    ctx: &Context,
    admission: &Admission,
    st: &mut TransferStatus,
) -> Result<Action, Error> {
    let name = dd.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Some(wait) = super::retry_wait(&pods, &name, st).await? {
        return Ok(Action::requeue(wait));
    }
    let bsl = match location(ctx, &dd.spec.storage_location, st).await? {
        Ok(bsl) => bsl,
        Err(action) => return Ok(action),
    };
    crate::storage::repository::ensure_readable(ctx, &bsl, &dd.spec.repository).await?;
    let labels = labels_for(&name, dd.labels());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pvc = temporary_claim(dd, &ctx.namespace, labels.clone());
    create_or_adopt(&pvcs, &pvc, "create temporary PersistentVolumeClaim").await?;
    let place = admission.place(ctx, None, &name).await;
    if let placement::Placement::Wait(why) = place {
        st.reason = Some(TransferReason::WaitingForNodeSlot.into());
        st.message = Some(why);
        return Ok(Action::requeue(POLL));
    }
    st.reason = None;
    st.message = None;
    let mut p = pod::download_pod(dd, ctx, &bsl, &name, owner(dd), labels);
    if let Some(spec) = p.spec.as_mut() {
        spec.affinity = placement::affinity(&place);
    }
    create_or_adopt(&pods, &p, "create mover Pod").await?;
    st.phase = TransferPhase::InProgress;
    st.mover_pod = Some(name);
    Ok(Action::requeue(POLL))
}

fn temporary_claim(
    dd: &DataDownload,
    ns: &str,
    labels: BTreeMap<String, String>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(dd.name_any()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner(dd)]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: dd.spec.storage_class_name.clone(),
            volume_mode: dd.spec.volume_mode.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(dd.spec.capacity.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// InProgress, mover running: progress, then the result; a written volume is kept.
async fn follow(
    dd: &DataDownload,
    ctx: &Context,
    st: &mut TransferStatus,
) -> Result<Action, Error> {
    let name = dd.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(p) = pods
        .get_opt(&name)
        .await
        .map_err(Error::kube("get mover Pod"))?
    else {
        st.phase = TransferPhase::Preparing;
        return Ok(Action::requeue(Duration::ZERO));
    };
    st.node = p.spec.as_ref().and_then(|s| s.node_name.clone());
    if placement::delete_if_stuck(&pods, &p).await? {
        return Ok(Action::requeue(POLL));
    }
    let killed = pod::killed(&p);
    if let Some(why) = &killed
        && st.retries < ctx.mover_retries
    {
        return super::retry(&pods, &name, st, why.clone()).await;
    }
    let outcome = pod::outcome(&p);
    if let pod::Outcome::Failed(why) = &outcome {
        let detail = match killed {
            Some(k) => format!("{k}; gave up after {} attempts", st.retries + 1),
            None => pod::failure_detail(&pods, &name)
                .await
                .unwrap_or_else(|| why.clone()),
        };
        finish(
            st,
            TransferPhase::Failed,
            Some(TransferReason::MoverFailed),
            Some(detail),
        );
        ctx.metrics.finished(
            "datadownload",
            "Failed",
            st.start_time.as_ref().map(|t| t.0),
        );
        // What its dead mover left; if the store cannot be reached now, `finished` goes on.
        super::release_dead_mover(
            ctx,
            &dd.spec.storage_location,
            &dd.spec.repository,
            &name,
            false,
        )
        .await;
        cleanup(ctx, &name, true).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    let log = pod::log(&pods, &name, 50).await.unwrap_or_default();
    let events: Vec<RestoreEvent> = protocol::events(&log).collect();
    apply_events(st, &outcome, &events, dd.spec.expected_bytes);
    if outcome == pod::Outcome::Running {
        return Ok(Action::requeue(POLL));
    }
    st.snapshot_id = Some(dd.spec.snapshot_id.clone());
    match retain_volume(ctx, &name).await? {
        Some(pv) => st.volume = Some(pv),
        None => {
            let why = "the temporary claim lost its volume".to_string();
            finish(
                st,
                TransferPhase::Failed,
                Some(TransferReason::VolumeLost),
                Some(why),
            );
        }
    }
    Ok(Action::requeue(Duration::ZERO))
}

/// Applies what the restore mover printed to the status. Pure.
pub(super) fn apply_events(
    st: &mut TransferStatus,
    outcome: &pod::Outcome,
    events: &[RestoreEvent],
    expected: Option<u64>,
) {
    match outcome {
        pod::Outcome::Running => {
            if let Some(RestoreEvent::Progress { bytes, .. }) = events
                .iter()
                .rev()
                .find(|e| matches!(e, RestoreEvent::Progress { .. }))
            {
                st.bytes_done = *bytes;
            }
            st.bytes_total = expected.unwrap_or(0).max(st.bytes_done);
        }
        pod::Outcome::Succeeded | pod::Outcome::Partial => {
            if let Some(RestoreEvent::Summary { bytes, .. }) = events
                .iter()
                .rev()
                .find(|e| matches!(e, RestoreEvent::Summary { .. }))
            {
                st.bytes_done = *bytes;
                st.bytes_total = *bytes;
            }
            if *outcome == pod::Outcome::Partial {
                st.reason = Some(TransferReason::SomeMetadataNotRestored.into());
                st.message = Some(
                    "some ownership or times could not be applied; see the mover pod's log".into(),
                );
            }
        }
        pod::Outcome::Failed(_) => {}
    }
}

/// Keeps the written volume: `Retain` (the former policy saved in an annotation), labelled
/// with the transfer. `None` when the temporary claim has no volume.
async fn retain_volume(ctx: &Context, name: &str) -> Result<Option<String>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(pv) = pvcs
        .get_opt(name)
        .await
        .map_err(Error::kube("get temporary claim"))?
        .and_then(|c| c.spec)
        .and_then(|s| s.volume_name)
    else {
        return Ok(None);
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let cur = pvs
        .get(&pv)
        .await
        .map_err(Error::kube("get restored PersistentVolume"))?;
    let policy = cur
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Delete".into());
    let keep = cur
        .annotations()
        .get(RECLAIM_ANNOTATION)
        .cloned()
        .unwrap_or(policy);
    let patch = serde_json::json!({
        "metadata": {"annotations": {RECLAIM_ANNOTATION: keep}, "labels": {TRANSFER_LABEL: name}},
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    });
    pvs.patch(&pv, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(Error::kube("retain restored PersistentVolume"))?;
    Ok(Some(pv))
}

/// After a successful restore: removes the pod and the temporary claim, then reserves the
/// (retained) volume for the target claim.
async fn hand_over(
    dd: &DataDownload,
    ctx: &Context,
    st: &mut TransferStatus,
    pv: &str,
) -> Result<Action, Error> {
    let name = dd.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if delete_mover_pod(&pods, &name).await?
        || delete_if_present(
            &pvcs,
            &name,
            &DeleteParams::default(),
            "delete temporary claim",
        )
        .await?
    {
        return Ok(Action::requeue(POLL));
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(cur) = pvs
        .get_opt(pv)
        .await
        .map_err(Error::kube("get restored PersistentVolume"))?
    else {
        let why = format!("PersistentVolume {pv} disappeared");
        return Ok(finish(
            st,
            TransferPhase::Failed,
            Some(TransferReason::VolumeLost),
            Some(why),
        ));
    };
    let target = &dd.spec.target_pvc;
    let claim = cur.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let reserved = claim.is_some_and(|c| {
        c.namespace.as_deref() == Some(&target.namespace) && c.name.as_deref() == Some(&target.name)
    });
    if !reserved {
        let patch = serde_json::json!({"spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": target.namespace, "name": target.name, "uid": null, "resourceVersion": null}}});
        merge_patch(&pvs, pv, &patch, "reserve restored PersistentVolume").await?;
    }
    st.phase = TransferPhase::Completed;
    st.completion_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let start = st.start_time.as_ref().map(|t| t.0);
    ctx.metrics.finished("datadownload", "Completed", start);
    ctx.metrics.download_done(
        &dd.spec.storage_location,
        st.bytes_done.max(st.bytes_total),
        super::seconds_since(start),
    );
    info!(download = %name, volume = %pv, target = %target, "download completed; volume reserved for the target claim");
    Ok(Action::requeue(Duration::ZERO))
}

/// Whether an existing claim is bound to `pv` (names it in `spec.volumeName`, and the volume's
/// `claimRef` names the claim). The volume's phase is not enough: it turns `Bound` only after
/// the binder catches up with a claim created bound to it.
async fn held_by_claim(ctx: &Context, pv: &PersistentVolume) -> Result<bool, Error> {
    let Some(c) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(false);
    };
    let (Some(ns), Some(name)) = (c.namespace.as_deref(), c.name.as_deref()) else {
        return Ok(false);
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    Ok(pvcs
        .get_opt(name)
        .await
        .map_err(Error::kube("get claim of restored PersistentVolume"))?
        .and_then(|p| p.spec)
        .and_then(|s| s.volume_name)
        .is_some_and(|v| Some(v.as_str()) == pv.metadata.name.as_deref()))
}

/// Deletes the download's pod and temporary claim; with `discard`, a volume retained for the
/// target is deleted too unless a claim holds it (a failed, cancelled or abandoned restore
/// leaves nothing). True when all is gone.
async fn cleanup(ctx: &Context, name: &str, discard: bool) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pod_left = delete_mover_pod(&pods, name).await?;
    let claim_left = delete_if_present(
        &pvcs,
        name,
        &DeleteParams::default(),
        "delete temporary claim",
    )
    .await?;
    let mut gone = !pod_left && !claim_left;
    if discard {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let lp = ListParams::default().labels(&format!("{TRANSFER_LABEL}={name}"));
        let list = pvs
            .list(&lp)
            .await
            .map_err(Error::kube("list restored PersistentVolumes"))?;
        for pv in list.items {
            if held_by_claim(ctx, &pv).await? {
                continue;
            }
            gone = false;
            let patch = serde_json::json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}});
            merge_patch(&pvs, &pv.name_any(), &patch, "patch PersistentVolume").await?;
            delete(
                &pvs,
                &pv.name_any(),
                &DeleteParams::default(),
                "delete PersistentVolume",
            )
            .await?;
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_progress_counts_against_the_expected_bytes() {
        let mut st = TransferStatus::default();
        let running = [RestoreEvent::Progress {
            bytes: 30,
            seconds: 2.0,
        }];
        apply_events(&mut st, &pod::Outcome::Running, &running, Some(100));
        assert_eq!((st.bytes_done, st.bytes_total), (30, 100));
        apply_events(&mut st, &pod::Outcome::Running, &running, None);
        assert_eq!(st.bytes_total, 30);
        let done = [RestoreEvent::Summary {
            files: 1,
            dirs: 1,
            bytes: 90,
            seconds: 3.0,
            warnings: vec!["x".into()],
        }];
        apply_events(&mut st, &pod::Outcome::Partial, &done, Some(100));
        assert_eq!((st.bytes_done, st.bytes_total), (90, 90));
        assert_eq!(st.reason.as_deref(), Some("SomeMetadataNotRestored"));
    }
}
