//! Restore controller: finds the backup, restores its namespaces, then its volumes (a new claim
//! from the snapshot while it exists, else a DataDownload from the copy whose volume is handed
//! to the target claim), and only then the other objects, so workloads start on complete data.
//!
//! Never overwrites what it was not asked to: `NewPVC` refuses existing claims; `InPlace`
//! replaces a claim's volume only once the restored data is complete and no pod mounts it.
//! Phases: `source.rs` (the backup and what it wrote, read once per restore), `volume.rs`
//! (each volume), `finish.rs` (objects and the result).

mod finish;
mod hooks;
mod source;
mod volume;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::common::NamespacedName;
use holdfast_api::reasons::RestoreReason;
use holdfast_api::restore::{Restore, RestorePhase, RestoreStatus};
use holdfast_api::transfer::DataDownload;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use self::source::Sources;
use crate::runtime::error::Refusal;
use crate::runtime::kernel::{self, ControllerError, Reconciler, State, Status};
use crate::runtime::kube_ext::{delete, merge_patch};
use crate::runtime::names::child_name;
use crate::runtime::{Context, Error};

pub const MANAGER: &str = "holdfast-restore-controller";
pub const FINALIZER: &str = "holdfast.dev/restore-cleanup";
pub const RESTORE_NAME: &str = "holdfast.dev/restore-name";
pub const RESTORE_NAMESPACE: &str = "holdfast.dev/restore-namespace";
pub const RESTORE_UID: &str = "holdfast.dev/restore-uid";
/// Label on restored objects: the Restore's name.
pub const RESTORE_LABEL: &str = "holdfast.dev/restore";
/// Label (`"true"`) on the claims of a restore that did not complete (cancelled, failed or
/// partly failed): each such claim holds whole data (a volume is given to its claim only
/// once complete), but the namespace is not all back; the annotation
/// [`RESTORE_INCOMPLETE_REASON`] says which restore and why.
pub const RESTORE_INCOMPLETE: &str = "holdfast.dev/restore-incomplete";
/// Annotation next to [`RESTORE_INCOMPLETE`].
pub const RESTORE_INCOMPLETE_REASON: &str = "holdfast.dev/restore-incomplete-reason";
/// Label on restored objects: the Backup's name.
pub const BACKUP_LABEL: &str = "holdfast.dev/backup";
const POLL: Duration = Duration::from_secs(2);

pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let downloads: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let controller = kernel::controller(
        Api::<Restore>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .watches(
        downloads,
        watcher::Config::default().labels(RESTORE_UID),
        |dd: DataDownload| {
            let l = dd.labels();
            Some(ObjectRef::new(l.get(RESTORE_NAME)?).within(l.get(RESTORE_NAMESPACE)?))
        },
    );
    let restores = Restores {
        sources: Sources::default(),
    };
    kernel::run(ctx, restores, controller, shutdown).await;
}

/// The Restore controller's phase functions and what running restores read from the bucket.
pub struct Restores {
    sources: Sources,
}

/// What failed in a Restore, by step.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading the backup: {0}")]
    Source(#[source] Error),
    #[error("restoring the namespaces: {0}")]
    Namespaces(#[source] Error),
    #[error("restoring the volumes: {0}")]
    Volumes(#[source] Error),
    #[error("restoring the objects: {0}")]
    Objects(#[source] Error),
    #[error("cancelling: {0}")]
    Cancel(#[source] Error),
    #[error("removing the restore's downloads: {0}")]
    Cleanup(#[source] Error),
    #[error(transparent)]
    Kernel(#[from] Error),
}

impl ControllerError for RestoreError {
    fn root(&self) -> &Error {
        match self {
            Self::Source(e)
            | Self::Namespaces(e)
            | Self::Volumes(e)
            | Self::Objects(e)
            | Self::Cancel(e)
            | Self::Cleanup(e)
            | Self::Kernel(e) => e,
        }
    }
    fn step(&self) -> Option<&'static str> {
        Some(match self {
            Self::Source(_) => "reading the backup",
            Self::Namespaces(_) => "restoring the namespaces",
            Self::Volumes(_) => "restoring the volumes",
            Self::Objects(_) => "restoring the objects",
            Self::Cancel(_) => "cancelling",
            Self::Cleanup(_) => "removing the restore's downloads",
            Self::Kernel(_) => return None,
        })
    }
}

impl Reconciler for Restores {
    type Object = Restore;
    type Status = RestoreStatus;
    type Error = RestoreError;
    const KIND: &'static str = "Restore";
    const METRIC: &'static str = "restore";
    const MANAGER: &'static str = MANAGER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    const SHARED: bool = true;

    async fn step(
        &self,
        r: &Restore,
        ctx: &Context,
        st: &mut RestoreStatus,
    ) -> Result<Action, RestoreError> {
        let action = step(self, r, ctx, st).await;
        if st.phase.is_some_and(RestorePhase::is_terminal) {
            self.sources.forget(r);
        }
        action
    }

    async fn finished(
        &self,
        r: &Restore,
        ctx: &Context,
        st: &RestoreStatus,
    ) -> Result<Action, RestoreError> {
        self.sources.forget(r);
        mark_incomplete(r, ctx, st)
            .await
            .map_err(RestoreError::Cleanup)?;
        let gone = delete_downloads(r, ctx)
            .await
            .map_err(RestoreError::Cleanup)?;
        Ok(if gone {
            Action::await_change()
        } else {
            Action::requeue(POLL)
        })
    }

    async fn cleanup(&self, r: &Restore, ctx: &Context) -> Result<bool, RestoreError> {
        self.sources.forget(r);
        delete_downloads(r, ctx)
            .await
            .map_err(RestoreError::Cleanup)
    }
}

impl Status for RestoreStatus {
    fn summary(&self) -> (State, String, String) {
        let phase = self.phase.unwrap_or(RestorePhase::Pending);
        let state = match phase {
            RestorePhase::Completed => State::Ready,
            RestorePhase::Failed => State::Failed,
            p if p.is_terminal() => State::Ended,
            _ => State::Progressing,
        };
        let reason = self.reason.clone().unwrap_or_else(|| format!("{phase:?}"));
        (state, reason, self.message.clone().unwrap_or_default())
    }
    fn is_terminal(&self) -> bool {
        self.phase.is_some_and(RestorePhase::is_terminal)
    }
    fn claimed_by(&self) -> Option<&str> {
        self.operator_namespace.as_deref()
    }
}

/// One pass: cancel, source, start, namespaces, volumes, then objects.
async fn step(
    rs: &Restores,
    r: &Restore,
    ctx: &Context,
    st: &mut RestoreStatus,
) -> Result<Action, RestoreError> {
    if st.phase.is_none() {
        st.phase = Some(RestorePhase::Pending);
    }
    if r.spec.cancel {
        return cancel(r, ctx, st).await.map_err(RestoreError::Cancel);
    }
    let src = match rs
        .sources
        .get(r, ctx, st)
        .await
        .map_err(RestoreError::Source)?
    {
        Ok(src) => src,
        Err(action) => return Ok(action),
    };
    if st.start_time.is_none() {
        st.phase = Some(RestorePhase::InProgress);
        st.start_time = Some(Time(Timestamp::now()));
        ctx.metrics.started("restore");
        st.volumes = src.volumes_to_restore(r);
        st.reason = None;
        st.message = None;
        return Ok(Action::requeue(Duration::ZERO));
    }
    finish::restore_namespaces(r, ctx, &src, st)
        .await
        .map_err(RestoreError::Namespaces)?;
    match volume::advance_all(r, ctx, &src, st)
        .await
        .map_err(RestoreError::Volumes)?
    {
        volume::Step::Wait => return Ok(Action::requeue(POLL)),
        volume::Step::Refuse(refusal) => {
            cancel_downloads(r, ctx)
                .await
                .map_err(RestoreError::Volumes)?;
            return Ok(fail(st, RestorePhase::Failed, refusal));
        }
        volume::Step::Done => {}
    }
    finish::restore_objects(r, ctx, &src, st)
        .await
        .map_err(RestoreError::Objects)
}

/// `spec.cancel`: stops the downloads; volumes not restored yet are not created.
async fn cancel(r: &Restore, ctx: &Context, st: &mut RestoreStatus) -> Result<Action, Error> {
    cancel_downloads(r, ctx).await?;
    for v in &mut st.volumes {
        if !v.phase.is_terminal() {
            v.phase = TransferPhase::Cancelled;
        }
    }
    if !delete_downloads(r, ctx).await? {
        return Ok(Action::requeue(POLL));
    }
    let why = "cancelled by spec.cancel; volumes not yet restored were not created";
    Ok(fail(
        st,
        RestorePhase::Cancelled,
        Refusal::new(RestoreReason::Cancelled, why),
    ))
}

/// Labels the claims a restore that did not complete put back ([`RESTORE_INCOMPLETE`]);
/// claims already labelled are left alone.
async fn mark_incomplete(r: &Restore, ctx: &Context, st: &RestoreStatus) -> Result<(), Error> {
    let phase = st.phase.unwrap_or(RestorePhase::Pending);
    if phase == RestorePhase::Completed {
        return Ok(());
    }
    let why = format!(
        "Restore {}/{} ended {phase:?} ({}): {}",
        r.namespace().unwrap_or_default(),
        r.name_any(),
        st.reason.as_deref().unwrap_or(""),
        st.message.as_deref().unwrap_or("")
    );
    for v in st
        .volumes
        .iter()
        .filter(|v| v.phase == TransferPhase::Completed)
    {
        let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &v.target.namespace);
        let Some(pvc) = api
            .get_opt(&v.target.name)
            .await
            .map_err(Error::kube("get restored PersistentVolumeClaim"))?
        else {
            continue;
        };
        if pvc.labels().contains_key(RESTORE_INCOMPLETE) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {
            "labels": {RESTORE_INCOMPLETE: "true"},
            "annotations": {RESTORE_INCOMPLETE_REASON: why},
        }});
        merge_patch(
            &api,
            &v.target.name,
            &patch,
            "label restored claim incomplete",
        )
        .await?;
    }
    Ok(())
}

/// Ends the restore in `phase` with a reason and message.
fn fail(st: &mut RestoreStatus, phase: RestorePhase, r: Refusal) -> Action {
    st.phase = Some(phase);
    st.reason = Some(r.reason.into());
    st.message = Some(r.message);
    st.completion_time = Some(Time(Timestamp::now()));
    Action::requeue(Duration::ZERO)
}

fn child_labels(r: &Restore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RESTORE_NAME.to_string(), r.name_any()),
        (
            RESTORE_NAMESPACE.to_string(),
            r.namespace().unwrap_or_default(),
        ),
        (RESTORE_UID.to_string(), r.uid().unwrap_or_default()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "holdfast".to_string(),
        ),
    ])
}

fn download_name(r: &Restore, target: &NamespacedName) -> String {
    child_name(
        &format!("{}-{}", r.namespace().unwrap_or_default(), r.name_any()),
        &[
            &r.uid().unwrap_or_default(),
            &target.namespace,
            &target.name,
        ],
    )
}

async fn downloads(r: &Restore, api: &Api<DataDownload>) -> Result<Vec<DataDownload>, Error> {
    let lp =
        ListParams::default().labels(&format!("{RESTORE_UID}={}", r.uid().unwrap_or_default()));
    Ok(api
        .list(&lp)
        .await
        .map_err(Error::kube("list DataDownloads"))?
        .items)
}

async fn cancel_downloads(r: &Restore, ctx: &Context) -> Result<(), Error> {
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for dd in downloads(r, &api).await? {
        if !dd.spec.cancel && !dd.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
            let patch = serde_json::json!({"spec": {"cancel": true}});
            merge_patch(&api, &dd.name_any(), &patch, "cancel DataDownload").await?;
        }
    }
    Ok(())
}

/// Deletes the restore's DataDownloads; true when none is left.
async fn delete_downloads(r: &Restore, ctx: &Context) -> Result<bool, Error> {
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let items = downloads(r, &api).await?;
    for dd in items
        .iter()
        .filter(|d| d.meta().deletion_timestamp.is_none())
    {
        delete(
            &api,
            &dd.name_any(),
            &DeleteParams::default(),
            "delete DataDownload",
        )
        .await?;
    }
    Ok(items.is_empty())
}
