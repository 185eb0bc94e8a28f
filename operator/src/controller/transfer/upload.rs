//! DataUpload controller: takes a mover slot, exposes the snapshot (or prepares a live copy),
//! places and starts the mover pod, follows its progress, records its result, and removes
//! everything temporary.

use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::reasons::TransferReason;
use holdfast_api::transfer::{DataUpload, TransferStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use tracing::info;

use super::TransferError;
use super::admission::{self, Admission};
use super::{
    FINALIZER, MANAGER, POLL, expose, finish, labels_for, live, location, owner, placement, pod,
    refuse,
};
use crate::mover::protocol::{self, BackupCounters, BackupEvent};
use crate::runtime::kernel::Reconciler;
use crate::runtime::kube_ext::is_conflict;
use crate::runtime::{Context, Error};

/// The DataUpload controller's phase functions.
pub struct Uploads {
    pub admission: Arc<Admission>,
}

impl Reconciler for Uploads {
    type Object = DataUpload;
    type Status = TransferStatus;
    type Error = TransferError;
    const KIND: &'static str = "DataUpload";
    const METRIC: &'static str = "dataupload";
    const MANAGER: &'static str = MANAGER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);

    async fn step(
        &self,
        du: &DataUpload,
        ctx: &Context,
        st: &mut TransferStatus,
    ) -> Result<Action, TransferError> {
        if du.spec.cancel {
            cleanup(ctx, du).await.map_err(TransferError::Cleanup)?;
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
                .take_slot(ctx, &admission::key(Self::KIND, &du.name_any()), st)
                .await),
            TransferPhase::Preparing => prepare(du, ctx, &self.admission, st)
                .await
                .map_err(TransferError::Prepare),
            TransferPhase::InProgress => follow(du, ctx, st).await.map_err(TransferError::Follow),
            _ => Ok(Action::await_change()),
        }
    }

    async fn finished(
        &self,
        du: &DataUpload,
        ctx: &Context,
        st: &TransferStatus,
    ) -> Result<Action, TransferError> {
        let cleaned = cleanup(ctx, du).await.map_err(TransferError::Cleanup)?;
        if !cleaned {
            return Ok(Action::requeue(POLL));
        }
        // A failed or cancelled transfer's dead mover may have left locks and its journal
        // (the store unreachable when it failed, or the mover killed by a cancel).
        let again = super::release_finished(
            ctx,
            st,
            &du.spec.storage_location,
            &du.spec.repository,
            &du.name_any(),
            true,
        )
        .await;
        Ok(again.map_or_else(Action::await_change, Action::requeue))
    }

    async fn cleanup(&self, du: &DataUpload, ctx: &Context) -> Result<bool, TransferError> {
        Ok(cleanup(ctx, du).await.map_err(TransferError::Cleanup)?
            && super::release_deleted(
                ctx,
                &du.metadata,
                du.status.as_ref(),
                &du.spec.storage_location,
                &du.spec.repository,
                &du.name_any(),
                true,
            )
            .await)
    }
}

/// Preparing: exposes the data, then places and creates the mover pod.
async fn prepare(
    du: &DataUpload,
    ctx: &Context,
    admission: &Admission,
    st: &mut TransferStatus,
) -> Result<Action, Error> {
    let name = du.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod_namespace(du, ctx));
    if let Some(wait) = super::retry_wait(&pods, &name, st).await? {
        return Ok(Action::requeue(wait));
    }
    let bsl = match location(ctx, &du.spec.storage_location, st).await? {
        Ok(bsl) => bsl,
        Err(action) => return Ok(action),
    };
    let live = du.spec.volume_snapshot.is_none();
    let exposed = match &du.spec.volume_snapshot {
        None => live::prepare(du, ctx, &bsl, labels_for(&name, du.labels()))
            .await?
            .map(|l| Some((l.claim, l.pinned))),
        Some(snapshot) => expose::expose(du, ctx, snapshot)
            .await?
            .map(|c| c.map(|c| (c, None))),
    };
    let (claim, pinned) = match exposed {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(Action::requeue(POLL)),
        Err(r) => return Ok(refuse(st, r)),
    };
    let place = admission.place(ctx, pinned.as_deref(), &name).await;
    if let placement::Placement::Wait(why) = place {
        st.reason = Some(TransferReason::WaitingForNodeSlot.into());
        st.message = Some(why);
        return Ok(Action::requeue(POLL));
    }
    let p = mover_pod(du, ctx, &bsl, &claim, &place).await?;
    match pods.create(&Default::default(), &p).await {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => {}
        // Admission (Pod Security, quotas) refused the pod in the application's namespace.
        Err(kube::Error::Api(s)) if live && (s.code == 403 || s.code == 422) => {
            live::cleanup(ctx, du).await?;
            return Ok(refuse(
                st,
                live::rejected(&pod_namespace(du, ctx), &s.message),
            ));
        }
        Err(e) => return Err(Error::kube("create mover Pod")(e)),
    }
    st.reason = live.then(|| TransferReason::LiveCopy.into());
    st.message = live.then(|| {
        "copying the live volume (no snapshot): files changed during the copy may be inconsistent".into()
    });
    st.phase = TransferPhase::InProgress;
    st.mover_pod = Some(name.clone());
    info!(upload = %name, pvc = %du.spec.pvc, "mover pod started");
    Ok(Action::requeue(POLL))
}

/// The mover pod of an upload: placed, with the Backup's mover resources.
async fn mover_pod(
    du: &DataUpload,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    claim: &str,
    place: &placement::Placement,
) -> Result<Pod, Error> {
    let name = du.name_any();
    let live = du.spec.volume_snapshot.is_none();
    let secret = live::access_secret_name(&name);
    let pod_ns = pod_namespace(du, ctx);
    let site = pod::Site {
        namespace: &pod_ns,
        owner: (!live).then(|| owner(du)),
        access_secret: live.then_some(secret.as_str()),
    };
    let mut p = pod::upload_pod(du, ctx, bsl, claim, site, labels_for(&name, du.labels()));
    if let Some(spec) = p.spec.as_mut() {
        spec.affinity = placement::affinity(place);
    }
    // Resources of the mover come from the Backup (spec.volumes.moverResources).
    let backups: Api<holdfast_api::Backup> =
        Api::namespaced(ctx.client.clone(), &du.spec.backup.namespace);
    if let Some(r) = backups
        .get_opt(&du.spec.backup.name)
        .await
        .map_err(Error::kube("get Backup"))?
        .and_then(|b| b.spec.volumes.mover_resources)
        && let Some(c) = p.spec.as_mut().and_then(|s| s.containers.first_mut())
    {
        c.resources = Some(r);
    }
    Ok(p)
}

/// InProgress: follows the mover pod until it ends.
async fn follow(du: &DataUpload, ctx: &Context, st: &mut TransferStatus) -> Result<Action, Error> {
    let name = du.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod_namespace(du, ctx));
    let Some(p) = pods
        .get_opt(&name)
        .await
        .map_err(Error::kube("get mover Pod"))?
    else {
        // The pod vanished (deleted, or the operator died before creating it): start over.
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
    let log = match outcome {
        pod::Outcome::Failed(_) => None,
        _ => pod::log(&pods, &name, 50).await,
    };
    let events: Vec<BackupEvent> = log
        .as_deref()
        .map(|l| protocol::events(l).collect())
        .unwrap_or_default();
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
    } else {
        apply_events(st, &outcome, &events);
    }
    if !st.phase.is_terminal() {
        return Ok(Action::requeue(POLL));
    }
    let start = st.start_time.as_ref().map(|t| t.0);
    if st.phase == TransferPhase::Completed {
        ctx.metrics.finished("dataupload", "Completed", start);
        ctx.metrics.upload_done(
            &du.spec.storage_location,
            st.bytes_done.max(st.bytes_total),
            st.bytes_uploaded,
            super::seconds_since(start),
        );
    } else {
        ctx.metrics.finished("dataupload", "Failed", start);
        // What its dead mover left; if the store cannot be reached now, `finished` goes on.
        super::release_dead_mover(
            ctx,
            &du.spec.storage_location,
            &du.spec.repository,
            &name,
            true,
        )
        .await;
    }
    info!(upload = %name, phase = ?st.phase, snapshot = ?st.snapshot_id, bytes = st.bytes_total, uploaded = st.bytes_uploaded, "upload ended");
    cleanup(ctx, du).await?;
    Ok(Action::requeue(Duration::ZERO))
}

/// Applies what the mover printed to the status: progress while it runs, the result once it
/// exited successfully. Pure but for the clock.
pub(super) fn apply_events(
    st: &mut TransferStatus,
    outcome: &pod::Outcome,
    events: &[BackupEvent],
) {
    let progress = |c: &BackupCounters, st: &mut TransferStatus| {
        st.bytes_done = c.bytes_read;
        st.bytes_total = c.bytes_total;
        st.bytes_uploaded = c.bytes_uploaded;
    };
    let partial = match outcome {
        pod::Outcome::Running => {
            if let Some(BackupEvent::Progress(c)) = events
                .iter()
                .rev()
                .find(|e| matches!(e, BackupEvent::Progress(_)))
            {
                progress(c, st);
            }
            return;
        }
        pod::Outcome::Failed(_) => return,
        pod::Outcome::Succeeded => false,
        pod::Outcome::Partial => true,
    };
    let Some(BackupEvent::Summary {
        counters,
        snapshot,
        errors,
        ..
    }) = events
        .iter()
        .rev()
        .find(|e| matches!(e, BackupEvent::Summary { .. }))
    else {
        let why = "the mover exited successfully but printed no summary";
        finish(
            st,
            TransferPhase::Failed,
            Some(TransferReason::NoResult),
            Some(why.into()),
        );
        return;
    };
    progress(counters, st);
    st.bytes_done = st.bytes_total;
    st.snapshot_id = Some(snapshot.clone());
    finish(
        st,
        TransferPhase::Completed,
        partial.then_some(TransferReason::SomeFilesUnreadable),
        partial.then(|| format!("{errors} files could not be read; see the mover pod's log")),
    );
}

/// Namespace of an upload's mover pod: the claim's for a live copy, else the operator's.
fn pod_namespace(du: &DataUpload, ctx: &Context) -> String {
    if du.spec.volume_snapshot.is_none() {
        du.spec.pvc.namespace.clone()
    } else {
        ctx.namespace.clone()
    }
}

/// Deletes the upload's pod and exposed snapshot (for a live copy: its pod and copied
/// Secret); true when all are gone.
async fn cleanup(ctx: &Context, du: &DataUpload) -> Result<bool, Error> {
    if du.spec.volume_snapshot.is_none() {
        return live::cleanup(ctx, du).await;
    }
    let name = du.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pod_left = super::delete_mover_pod(&pods, &name).await?;
    let exposed_gone = expose::remove(ctx, &name).await?;
    Ok(!pod_left && exposed_gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(read: u64, total: u64) -> BackupCounters {
        BackupCounters {
            bytes_read: read,
            bytes_total: total,
            bytes_uploaded: read / 2,
            ..Default::default()
        }
    }

    #[test]
    fn progress_then_result() {
        let mut st = TransferStatus {
            phase: TransferPhase::InProgress,
            ..Default::default()
        };
        let events = [
            BackupEvent::Progress(counters(10, 100)),
            BackupEvent::Progress(counters(40, 100)),
        ];
        apply_events(&mut st, &pod::Outcome::Running, &events);
        assert_eq!(
            (st.bytes_done, st.bytes_total, st.bytes_uploaded),
            (40, 100, 20)
        );
        assert_eq!(st.phase, TransferPhase::InProgress);
        let summary = BackupEvent::Summary {
            counters: counters(60, 100),
            snapshot: "abc".into(),
            parent: None,
            seconds: 1.0,
            errors: 2,
        };
        apply_events(&mut st, &pod::Outcome::Partial, &[summary]);
        assert_eq!(st.phase, TransferPhase::Completed);
        assert_eq!(st.snapshot_id.as_deref(), Some("abc"));
        assert_eq!(st.bytes_done, 100);
        assert_eq!(st.reason.as_deref(), Some("SomeFilesUnreadable"));
        assert!(
            st.message
                .as_deref()
                .is_some_and(|m| m.starts_with("2 files"))
        );
    }

    #[test]
    fn success_without_a_summary_is_a_failure() {
        let mut st = TransferStatus::default();
        apply_events(
            &mut st,
            &pod::Outcome::Succeeded,
            &[BackupEvent::Progress(counters(1, 1))],
        );
        assert_eq!(
            (st.phase, st.reason.as_deref()),
            (TransferPhase::Failed, Some("NoResult"))
        );
    }
}
