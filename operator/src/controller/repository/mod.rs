//! BackupRepository controller: runs each repository's maintenance as mover pods, one at a
//! time per repository: prune (two-phase, so backups running meanwhile are never broken) on
//! its cadence and soon after deletions, and check with a read sample. Results, with the
//! bytes reclaimed, go into the status (`kubectl get hfrepo`).
//!
//! One repository has one object and one deterministic pod name, so two maintenance runs of a
//! repository never overlap within an operator; across clusters the repository's own
//! exclusive lock (taken by prune) keeps them apart. A prune also waits while a copy into or
//! out of the repository is running.

mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::repository::{BackupRepository, BackupRepositoryStatus, RepositoryPhase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::info;

use self::plan::{Op, READ_PERCENT};
use crate::controller::transfer::pod::{self as mover_pod, Outcome};
use crate::mover::protocol::{self, CheckCommand, MaintenanceEvent, PruneCommand};
use crate::runtime::kernel::{self, ControllerError, Reconciler, State, Status};
use crate::runtime::kube_ext::{create_or_adopt, delete};
use crate::runtime::{Context, Error};
use crate::storage::{self, repository::DATA_DELETED};

/// Field manager of this controller's writes.
pub const MANAGER: &str = "holdfast-repository-controller";
/// Label on maintenance pods: the BackupRepository's name.
pub const MAINTENANCE_LABEL: &str = "holdfast.dev/maintenance";
/// Label on maintenance pods: `prune` or `check`.
pub const OPERATION_LABEL: &str = "holdfast.dev/operation";
const POLL: Duration = Duration::from_secs(5);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = kernel::controller(
        Api::<BackupRepository>::namespaced(client.clone(), &ctx.namespace),
        watcher::Config::default(),
    )
    .owns(
        Api::<Pod>::namespaced(client, &ctx.namespace),
        watcher::Config::default().labels(MAINTENANCE_LABEL),
    );
    kernel::run(ctx, Repositories, controller, shutdown).await;
}

/// The BackupRepository controller's phase functions.
pub struct Repositories;

/// What failed in a repository's reconcile, by step.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("finding the storage location: {0}")]
    Location(#[source] Error),
    #[error("running maintenance: {0}")]
    Maintenance(#[source] Error),
    #[error(transparent)]
    Kernel(#[from] Error),
}

impl ControllerError for RepositoryError {
    fn root(&self) -> &Error {
        match self {
            Self::Location(e) | Self::Maintenance(e) | Self::Kernel(e) => e,
        }
    }
    fn step(&self) -> Option<&'static str> {
        Some(match self {
            Self::Location(_) => "finding the storage location",
            Self::Maintenance(_) => "running maintenance",
            Self::Kernel(_) => return None,
        })
    }
}

impl Reconciler for Repositories {
    type Object = BackupRepository;
    type Status = BackupRepositoryStatus;
    type Error = RepositoryError;
    const KIND: &'static str = "BackupRepository";
    const METRIC: &'static str = "repository";
    const MANAGER: &'static str = MANAGER;

    async fn step(
        &self,
        r: &BackupRepository,
        ctx: &Context,
        st: &mut BackupRepositoryStatus,
    ) -> Result<Action, RepositoryError> {
        let bsl = match storage::location(ctx, Some(&r.spec.location))
            .await
            .map_err(RepositoryError::Location)?
        {
            Ok(bsl) => bsl,
            Err(refusal) => {
                st.phase = Some(RepositoryPhase::Unavailable);
                st.reason = Some(refusal.reason.into());
                st.message = Some(refusal.message);
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
        };
        maintain(r, ctx, &bsl, st)
            .await
            .map_err(RepositoryError::Maintenance)
    }
}

impl Status for BackupRepositoryStatus {
    fn summary(&self) -> (State, String, String) {
        let message = self.message.clone().unwrap_or_default();
        let reason = self.reason.clone();
        match self.phase {
            Some(RepositoryPhase::Unavailable) => (
                State::Failed,
                reason.unwrap_or_else(|| "Unavailable".into()),
                message,
            ),
            _ if self
                .last_check
                .as_ref()
                .is_some_and(|c| c.result != "Passed") =>
            {
                (
                    State::Failed,
                    "CheckFailed".into(),
                    self.last_check
                        .as_ref()
                        .and_then(|c| c.message.clone())
                        .unwrap_or(message),
                )
            }
            Some(RepositoryPhase::Pruning | RepositoryPhase::Checking) => (
                State::Progressing,
                reason.unwrap_or_else(|| "Maintenance".into()),
                message,
            ),
            _ => (
                State::Ready,
                reason.unwrap_or_else(|| "Ready".into()),
                message,
            ),
        }
    }
}

fn pod_name(r: &BackupRepository) -> String {
    let mut n = r.name_any();
    n.truncate(63 - 6);
    format!("{n}-maint")
}

/// Follows a running maintenance pod, or starts the operation that is due.
async fn maintain(
    r: &BackupRepository,
    ctx: &Context,
    bsl: &holdfast_api::BackupStorageLocation,
    st: &mut BackupRepositoryStatus,
) -> Result<Action, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = pod_name(r);
    if let Some(p) = pods
        .get_opt(&name)
        .await
        .map_err(Error::kube("get maintenance Pod"))?
    {
        return follow(r, ctx, &pods, &p, st).await;
    }
    let now = Timestamp::now();
    let created = r.creation_timestamp().map_or(now, |t| t.0);
    // A deletion no prune has covered yet (times in status are whole seconds, so the
    // annotation's exact value is compared, not times).
    let mark = r.annotations().get(DATA_DELETED);
    let deleted = mark
        .filter(|m| st.pruned_deletions.as_ref() != Some(*m))
        .and_then(|t| t.parse::<Timestamp>().ok());
    let m = &r.spec.maintenance;
    let due = plan::due(m, st, created, deleted);
    st.next_prune_time = Some(Time(due.prune));
    st.next_check_time = Some(Time(due.check));
    st.phase = Some(RepositoryPhase::Ready);
    st.reason = None;
    st.message = None;
    let wake = due.prune.min(due.check);
    let until =
        |t: Timestamp| Duration::from_secs(t.duration_since(now).as_secs().clamp(1, 3600) as u64);
    if m.paused {
        st.reason = Some("Paused".into());
        return Ok(Action::requeue(Duration::from_secs(3600)));
    }
    let Some(op) = plan::next(&due, now) else {
        return Ok(Action::requeue(until(wake)));
    };
    if op == Op::Prune && copying(ctx, r) {
        st.reason = Some("WaitingForCopies".into());
        st.message = Some("prune waits until the copies into this repository finish".into());
        return Ok(Action::requeue(POLL * 2));
    }
    let args = match op {
        Op::Prune => PruneCommand {
            grace_seconds: plan::grace(m).as_secs().max(0) as u64,
        }
        .args(),
        Op::Check => CheckCommand {
            read_percent: m.check_read_percent.unwrap_or(READ_PERCENT),
            seed: now.as_second() as u64,
        }
        .args(),
    };
    let labels = BTreeMap::from([
        (MAINTENANCE_LABEL.to_string(), r.name_any()),
        (OPERATION_LABEL.to_string(), op.label().to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "holdfast".to_string(),
        ),
    ]);
    let owner = r.controller_owner_ref(&()).ok_or_else(|| Error::Internal {
        what: "owner reference",
        message: "the BackupRepository has no uid".into(),
    })?;
    let mut pod = mover_pod::maintenance_pod(
        ctx,
        bsl,
        &name,
        &r.spec.source_namespace,
        args,
        labels,
        owner,
    );
    if let Some(m) = mark {
        // The deletions this prune covers.
        pod.metadata.annotations = Some(BTreeMap::from([(DATA_DELETED.to_string(), m.clone())]));
    }
    create_or_adopt(&pods, &pod, "create maintenance Pod").await?;
    info!(repository = %r.name_any(), op = op.label(), "maintenance started");
    st.phase = Some(phase_of(op));
    Ok(Action::requeue(POLL))
}

fn phase_of(op: Op) -> RepositoryPhase {
    match op {
        Op::Prune => RepositoryPhase::Pruning,
        Op::Check => RepositoryPhase::Checking,
    }
}

/// Whether an upload into, or a download out of, this repository is running (from the
/// caches).
fn copying(ctx: &Context, r: &BackupRepository) -> bool {
    let busy = |repository: &str, location: &str, phase: Option<TransferPhase>| {
        repository == r.spec.source_namespace
            && location == r.spec.location
            && !phase.is_some_and(TransferPhase::is_terminal)
    };
    let phase = |s: Option<&holdfast_api::TransferStatus>| s.map(|s| s.phase);
    ctx.caches.uploads.state().iter().any(|u| {
        busy(
            &u.spec.repository,
            &u.spec.storage_location,
            phase(u.status.as_ref()),
        )
    }) || ctx.caches.downloads.state().iter().any(|d| {
        busy(
            &d.spec.repository,
            &d.spec.storage_location,
            phase(d.status.as_ref()),
        )
    })
}

/// A maintenance pod exists: wait for it, or record its result and remove it.
async fn follow(
    r: &BackupRepository,
    ctx: &Context,
    pods: &Api<Pod>,
    p: &Pod,
    st: &mut BackupRepositoryStatus,
) -> Result<Action, Error> {
    let Some(op) = Op::from_label(p.labels().get(OPERATION_LABEL).map(String::as_str)) else {
        return Ok(Action::requeue(POLL));
    };
    if p.metadata.deletion_timestamp.is_some() {
        // Its result is recorded; the next run waits until the pod is gone.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut outcome = mover_pod::outcome(p);
    if mover_pod::exit_code(p) == Some(i32::from(protocol::exit::NOTHING_TO_DO)) {
        // A prune with nothing to mark or delete did its job.
        outcome = Outcome::Succeeded;
    }
    if outcome == Outcome::Running {
        st.phase = Some(phase_of(op));
        return Ok(Action::requeue(POLL));
    }
    let name = p.name_any();
    let log = mover_pod::log(pods, &name, 500).await.unwrap_or_default();
    let events: Vec<MaintenanceEvent> = protocol::events(&log).collect();
    let now = Timestamp::now();
    let started = p.creation_timestamp().map_or(now, |t| t.0);
    let percent = r
        .spec
        .maintenance
        .check_read_percent
        .unwrap_or(READ_PERCENT);
    let recorded = plan::record(st, op, &events, started, now, percent);
    st.phase = Some(RepositoryPhase::Ready);
    match (&outcome, recorded) {
        (Outcome::Succeeded | Outcome::Partial, Ok(())) => {
            st.failed_time = None;
            if op == Op::Prune {
                st.pruned_deletions = p.annotations().get(DATA_DELETED).cloned();
            }
            st.reason = None;
            st.message = None;
            report(r, ctx, op, st).await;
        }
        (_, Ok(())) if op == Op::Check => {
            // The check ran to its end and found problems: that is its result.
            st.failed_time = None;
            report(r, ctx, op, st).await;
        }
        (o, _) => {
            let detail = mover_pod::failure_detail(pods, &name).await;
            let why = match o {
                Outcome::Failed(m) => m.clone(),
                _ => "no result".into(),
            };
            st.failed_time = Some(Time(now));
            st.reason = Some(format!("{}Failed", capitalised(op.label())));
            st.message = Some(format!(
                "{why}{}; retried in 10 minutes",
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            ));
            let note = st.message.clone().unwrap_or_default();
            ctx.event(
                r,
                EventType::Warning,
                "MaintenanceFailed",
                &note,
                "BackupRepository",
            )
            .await;
        }
    }
    let now_gone = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    delete(pods, &name, &now_gone, "delete maintenance Pod").await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// An Event and the metric for a finished run.
async fn report(r: &BackupRepository, ctx: &Context, op: Op, st: &BackupRepositoryStatus) {
    let (kind, note) = match op {
        Op::Prune => {
            let Some(p) = st.last_prune.clone() else {
                return;
            };
            ctx.metrics
                .repository_reclaimed(&r.spec.location, p.bytes_reclaimed);
            (
                EventType::Normal,
                format!(
                    "prune reclaimed {} bytes ({} packs deleted, {} newly marked, {} waiting for the grace period) in {} s",
                    p.bytes_reclaimed,
                    p.packs_deleted,
                    p.packs_marked,
                    p.packs_waiting,
                    p.duration_seconds
                ),
            )
        }
        Op::Check => {
            let Some(c) = st.last_check.clone() else {
                return;
            };
            let kind = if c.result == "Passed" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            (
                kind,
                format!(
                    "check {} ({} errors, {}% of the data read){}",
                    c.result.to_lowercase(),
                    c.errors,
                    c.read_percent,
                    c.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            )
        }
    };
    info!(repository = %r.name_any(), "{note}");
    let reason = match op {
        Op::Prune => "Pruned",
        Op::Check => "Checked",
    };
    ctx.event(r, kind, reason, &note, "BackupRepository").await;
}
