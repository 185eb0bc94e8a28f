//! Backup controller: resolves the selection and its claims, snapshots every claim, captures
//! the objects into the location, hands each volume to a DataUpload, aggregates their progress,
//! writes `metadata.json` last, and on deletion removes the data per `deletionPolicy`.
//!
//! The reconcile works from what it recorded in `status` (the volumes resolved at start), so it
//! resumes after an operator restart at any point: every child has a deterministic name and
//! carries the backup's labels. Phases: `start.rs` (location, selection, objects),
//! `hooks.rs` (pre hooks before the snapshots, post hooks once they are cut), `group.rs`
//! (volume group snapshots),
//! `volume.rs` (snapshot and copy of each volume), `finish.rs` (metadata, result),
//! `delete.rs` (cancel, deletion, expiry), `quota.rs` (the namespace's stored-bytes limit,
//! checked once when the backup starts).

mod delete;
mod finish;
mod group;
mod hooks;
pub mod quota;
mod start;
mod volume;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, BackupStatus};
use holdfast_api::common::NamespacedName;
use holdfast_api::transfer::DataUpload;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

pub use self::finish::progress;
use crate::runtime::error::Refusal;
use crate::runtime::kernel::{self, ControllerError, Reconciler, State, Status};
use crate::runtime::names::child_name;
use crate::runtime::{Context, Error};
use crate::snapshot::VolumeSnapshot;

/// Field manager of this controller's writes.
pub const MANAGER: &str = "holdfast-backup-controller";
/// Finalizer: the backup's data is removed (or deliberately retained) before it goes away.
pub const FINALIZER: &str = "holdfast.dev/backup-data";
/// Labels on everything created for a backup.
pub const BACKUP_NAME: &str = "holdfast.dev/backup-name";
pub const BACKUP_NAMESPACE: &str = "holdfast.dev/backup-namespace";
pub const BACKUP_UID: &str = "holdfast.dev/backup-uid";
const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_secs(2);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let uploads: Api<DataUpload> = Api::namespaced(client.clone(), &ctx.namespace);
    let controller = kernel::controller(
        Api::<Backup>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        uploads,
        watcher::Config::default().labels(BACKUP_UID),
        |du: DataUpload| parent_of(du.labels()),
    )
    .watches(
        Api::<VolumeSnapshot>::all(client),
        watcher::Config::default().labels(BACKUP_UID),
        |vs: VolumeSnapshot| parent_of(vs.labels()),
    );
    kernel::run(ctx, Backups, controller, shutdown).await;
}

fn parent_of(labels: &BTreeMap<String, String>) -> Option<ObjectRef<Backup>> {
    let name = labels.get(BACKUP_NAME)?;
    let ns = labels.get(BACKUP_NAMESPACE)?;
    Some(ObjectRef::new(name).within(ns))
}

/// The Backup controller's phase functions.
pub struct Backups;

/// What failed in a Backup, by step.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("finding the storage location: {0}")]
    Location(#[source] Error),
    #[error("checking the namespace's stored-bytes limit: {0}")]
    Quota(#[source] Error),
    #[error("capturing the objects: {0}")]
    Capture(#[source] Error),
    #[error("snapshotting or copying the volumes: {0}")]
    Volumes(#[source] Error),
    #[error("writing the backup's metadata: {0}")]
    Metadata(#[source] Error),
    #[error("cancelling: {0}")]
    Cancel(#[source] Error),
    #[error("removing the backup's data: {0}")]
    Delete(#[source] Error),
    #[error("deleting the expired backup: {0}")]
    Expire(#[source] Error),
    #[error(transparent)]
    Kernel(#[from] Error),
}

impl ControllerError for BackupError {
    fn root(&self) -> &Error {
        match self {
            Self::Location(e)
            | Self::Quota(e)
            | Self::Capture(e)
            | Self::Volumes(e)
            | Self::Metadata(e)
            | Self::Cancel(e)
            | Self::Delete(e)
            | Self::Expire(e)
            | Self::Kernel(e) => e,
        }
    }
    fn step(&self) -> Option<&'static str> {
        Some(match self {
            Self::Location(_) => "finding the storage location",
            Self::Quota(_) => "checking the namespace's stored-bytes limit",
            Self::Capture(_) => "capturing the objects",
            Self::Volumes(_) => "snapshotting or copying the volumes",
            Self::Metadata(_) => "writing the backup's metadata",
            Self::Cancel(_) => "cancelling",
            Self::Delete(_) => "removing the backup's data",
            Self::Expire(_) => "deleting the expired backup",
            Self::Kernel(_) => return None,
        })
    }
}

impl Reconciler for Backups {
    type Object = Backup;
    type Status = BackupStatus;
    type Error = BackupError;
    const KIND: &'static str = "Backup";
    const METRIC: &'static str = "backup";
    const MANAGER: &'static str = MANAGER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    const SHARED: bool = true;

    async fn step(
        &self,
        b: &Backup,
        ctx: &Context,
        st: &mut BackupStatus,
    ) -> Result<Action, BackupError> {
        step(b, ctx, st).await
    }

    async fn finished(
        &self,
        b: &Backup,
        ctx: &Context,
        st: &BackupStatus,
    ) -> Result<Action, BackupError> {
        delete::expire(b, ctx, st)
            .await
            .map_err(BackupError::Expire)
    }

    /// A finished backup's data is removed on deletion without a finalizer
    /// (`controller::departed`), so that nothing holds it when the operator is gone.
    fn hold_finished(&self, _action: &Action) -> bool {
        false
    }

    async fn cleanup(&self, b: &Backup, ctx: &Context) -> Result<bool, BackupError> {
        delete::cleanup(b, ctx).await.map_err(BackupError::Delete)
    }
}

pub use delete::{after_deletion, remove_data};

impl Status for BackupStatus {
    fn summary(&self) -> (State, String, String) {
        let reason = |d: String| self.reason.clone().unwrap_or(d);
        let message = self.message.clone().unwrap_or_default();
        match self.phase {
            Some(BackupPhase::Completed) => (State::Ready, "Completed".into(), message),
            Some(BackupPhase::Failed) => (State::Failed, reason("Failed".into()), message),
            Some(p) if p.is_terminal() => (State::Ended, reason(format!("{p:?}")), message),
            _ => (State::Progressing, reason("InProgress".into()), message),
        }
    }
    fn is_terminal(&self) -> bool {
        self.phase.is_some_and(BackupPhase::is_terminal)
    }
    fn claimed_by(&self) -> Option<&str> {
        self.operator_namespace.as_deref()
    }
}

/// One pass of the state machine over `st`: each phase returns when it wants to be looked at
/// again, or falls through to the next.
async fn step(b: &Backup, ctx: &Context, st: &mut BackupStatus) -> Result<Action, BackupError> {
    // Made by sync from a location's catalog, its status follows: never run here.
    if st.phase.is_none()
        && b.annotations()
            .contains_key(crate::storage::catalog::ORIGIN_UID)
    {
        return Ok(Action::await_change());
    }
    if st.phase.is_none() {
        st.phase = Some(BackupPhase::Pending);
    }
    if b.spec.cancel {
        return delete::cancel(b, ctx, st)
            .await
            .map_err(BackupError::Cancel);
    }
    let bsl = match start::location(b, ctx, st)
        .await
        .map_err(BackupError::Location)?
    {
        Ok(bsl) => bsl,
        Err(action) => return Ok(action),
    };
    if st.start_time.is_none() {
        let ns = b.namespace().unwrap_or_default();
        let uid = b.uid();
        if let Err(r) = quota::check(ctx, &ns, uid.as_deref())
            .await
            .map_err(BackupError::Quota)?
        {
            publish(ctx, b, EventType::Warning, r.reason, &r.message).await;
            return Ok(fail(st, BackupPhase::Failed, r));
        }
        st.phase = Some(BackupPhase::InProgress);
        st.start_time = Some(Time(Timestamp::now()));
        ctx.metrics.started("backup");
        st.reason = None;
        st.message = None;
        return Ok(Action::requeue(Duration::ZERO));
    }
    if st.items_backed_up.is_none() {
        return start::capture(b, ctx, &bsl, st)
            .await
            .map_err(BackupError::Capture);
    }
    hooks::run_pre(b, ctx, st).await;
    if b.spec.volumes.group_snapshot {
        group::cut_groups(b, ctx, st)
            .await
            .map_err(BackupError::Volumes)?;
    }
    let wait = volume::advance_all(b, ctx, &bsl, st)
        .await
        .map_err(BackupError::Volumes)?;
    hooks::run_post(b, ctx, st, false).await;
    hooks::mark_consistency(st);
    if let Some(wait) = wait {
        return Ok(Action::requeue(wait));
    }
    finish::complete(b, ctx, &bsl, st)
        .await
        .map_err(BackupError::Metadata)
}

/// Ends the backup in `phase` with a reason and message (a terminal phase).
fn fail(st: &mut BackupStatus, phase: BackupPhase, r: Refusal) -> Action {
    st.phase = Some(phase);
    st.reason = Some(r.reason.into());
    st.message = Some(r.message);
    st.completion_time = Some(Time(Timestamp::now()));
    st.progress = None;
    Action::await_change()
}

/// Keeps the backup going but shows why it waits.
fn waiting(
    st: &mut BackupStatus,
    reason: impl Into<String>,
    message: String,
    again: Duration,
) -> Action {
    st.reason = Some(reason.into());
    st.message = Some(message);
    Action::requeue(again)
}

/// Deletes the VolumeSnapshots of finished backup `b`, keeping its copies (a schedule's
/// retention dropping a point's snapshots); returns how many still exist.
pub async fn drop_snapshots(b: &Backup, ctx: &Context) -> Result<usize, Error> {
    delete::remove_snapshots(b, ctx).await
}

/// Labels that tie a child to its backup.
pub fn child_labels(b: &Backup) -> BTreeMap<String, String> {
    BTreeMap::from([
        (BACKUP_NAME.to_string(), b.name_any()),
        (
            BACKUP_NAMESPACE.to_string(),
            b.namespace().unwrap_or_default(),
        ),
        (BACKUP_UID.to_string(), b.uid().unwrap_or_default()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "holdfast".to_string(),
        ),
    ])
}

fn uid_selector(b: &Backup) -> String {
    format!("{BACKUP_UID}={}", b.uid().unwrap_or_default())
}

fn backup_ref(b: &Backup) -> NamespacedName {
    NamespacedName {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
    }
}

/// Name of the VolumeSnapshot of claim `pvc` (in the claim's namespace).
pub fn snapshot_name(b: &Backup, pvc: &NamespacedName) -> String {
    child_name(
        &b.name_any(),
        &[&b.uid().unwrap_or_default(), &pvc.namespace, &pvc.name],
    )
}

/// Name of the DataUpload of claim `pvc` (in the operator namespace).
pub fn upload_name(b: &Backup, pvc: &NamespacedName) -> String {
    child_name(
        &format!("{}-{}", b.namespace().unwrap_or_default(), b.name_any()),
        &[&b.uid().unwrap_or_default(), &pvc.namespace, &pvc.name],
    )
}

async fn publish(
    ctx: &Context,
    b: &Backup,
    type_: kube::runtime::events::EventType,
    reason: impl Into<&'static str>,
    note: &str,
) {
    ctx.event(b, type_, reason.into(), note, "Backup").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_have_stable_distinct_names() {
        let mut b = Backup::new("nightly", Default::default());
        b.metadata.namespace = Some("shop".into());
        b.metadata.uid = Some("u1".into());
        let p1 = NamespacedName {
            namespace: "shop".into(),
            name: "data-0".into(),
        };
        let p2 = NamespacedName {
            namespace: "shop".into(),
            name: "data-1".into(),
        };
        assert_eq!(snapshot_name(&b, &p1), snapshot_name(&b, &p1));
        assert_ne!(snapshot_name(&b, &p1), snapshot_name(&b, &p2));
        assert!(upload_name(&b, &p1).starts_with("shop-nightly-"));
        let mut long = b.clone();
        long.metadata.name = Some("x".repeat(253));
        assert!(upload_name(&long, &p1).len() <= 63);
    }

    #[test]
    fn an_error_shows_its_step_and_its_causes_reason() {
        let e = BackupError::Volumes(Error::Repository {
            what: "opening the repository of namespace shop on location primary".into(),
            fix: "put the original password back".into(),
            source: Box::new(holdfast_repo::RepoError::WrongPassword { repo: "r".into() }),
        });
        let s = e.stall();
        assert_eq!(s.reason, "RepositoryPasswordWrong");
        assert!(s.persistent);
        assert!(
            s.message
                .starts_with("snapshotting or copying the volumes: opening the repository"),
            "{}",
            s.message
        );
        assert!(
            BackupError::from(Error::Config {
                reason: "X",
                message: "m".into()
            })
            .step()
            .is_none()
        );
    }

    #[test]
    fn conditions_of_a_backup_follow_its_phase() {
        let mut st = BackupStatus {
            phase: Some(BackupPhase::PartiallyFailed),
            reason: Some("VolumesFailed".into()),
            ..Default::default()
        };
        assert_eq!(st.summary().0, State::Ended);
        assert_eq!(st.summary().1, "VolumesFailed");
        st.phase = Some(BackupPhase::Failed);
        assert_eq!(st.summary().0, State::Failed);
        st.phase = Some(BackupPhase::Completed);
        assert_eq!(st.summary().0, State::Ready);
        st.phase = Some(BackupPhase::InProgress);
        st.reason = None;
        assert_eq!(
            st.summary(),
            (State::Progressing, "InProgress".into(), String::new())
        );
    }
}
