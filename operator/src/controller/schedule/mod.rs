//! Schedule controller: starts Backups on the schedule's cadences (a cron expression, or an
//! SLAPolicy's snapshot and copy cadences), and removes the points its retention no longer
//! keeps, behind a brake against mass deletion. Backups carry the schedule's name as a label
//! and never an owner reference: deleting a Schedule keeps them unless `onDelete: Delete`.
//!
//! Pure parts: `cron.rs` (cron in a time zone, DST), `cadence.rs` (what is due and whether it
//! runs), `retention.rs` (which points stay), `plan.rs` (the spec checked). `run.rs` creates
//! the runs, `expire.rs` applies retention and deletion.

mod cadence;
mod cron;
mod expire;
mod plan;
mod retention;
mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::policy::SLAPolicy;
use holdfast_api::reasons::ScheduleReason;
use holdfast_api::schedule::{
    SCHEDULE_LABEL, Schedule, ScheduleDeletion, SchedulePhase, ScheduleStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

pub use self::plan::Track;
use crate::runtime::error::Refusal;
use crate::runtime::kernel::{self, ControllerError, Reconciler, State, Status};
use crate::runtime::{Context, Error};
use crate::storage;

/// Field manager of this controller's writes.
pub const MANAGER: &str = "holdfast-schedule-controller";
/// Finalizer, only while `onDelete: Delete`: the schedule's Backups are deleted first.
pub const FINALIZER: &str = "holdfast.dev/schedule-backups";
/// Retention is looked at again at least this often (`within` rules age points out).
const RECHECK: Duration = Duration::from_secs(300);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = kernel::controller(
        Api::<Schedule>::all(client.clone()),
        watcher::Config::default(),
    );
    let schedules = controller.store();
    let controller = controller
        .watches(
            Api::<Backup>::all(client.clone()),
            watcher::Config::default().labels(SCHEDULE_LABEL),
            |b: Backup| {
                let name = b.labels().get(SCHEDULE_LABEL)?;
                Some(ObjectRef::new(name).within(&b.namespace()?))
            },
        )
        .watches(
            Api::<SLAPolicy>::all(client),
            watcher::Config::default(),
            move |p: SLAPolicy| {
                let name = p.name_any();
                schedules
                    .state()
                    .iter()
                    .filter(|s| s.spec.policy.as_deref() == Some(name.as_str()))
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            },
        );
    kernel::run(ctx, Schedules, controller, shutdown).await;
}

/// The Schedule controller's phase functions.
pub struct Schedules;

/// What failed in a Schedule, by step.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("reading the schedule's SLAPolicy and backups: {0}")]
    Observe(#[source] Error),
    #[error("starting a backup: {0}")]
    Run(#[source] Error),
    #[error("removing expired backups: {0}")]
    Expire(#[source] Error),
    #[error("deleting the schedule's backups: {0}")]
    Delete(#[source] Error),
    #[error(transparent)]
    Kernel(#[from] Error),
}

impl ControllerError for ScheduleError {
    fn root(&self) -> &Error {
        match self {
            Self::Observe(e) | Self::Run(e) | Self::Expire(e) | Self::Delete(e) => e,
            Self::Kernel(e) => e,
        }
    }
    fn step(&self) -> Option<&'static str> {
        Some(match self {
            Self::Observe(_) => "reading the schedule's SLAPolicy and backups",
            Self::Run(_) => "starting a backup",
            Self::Expire(_) => "removing expired backups",
            Self::Delete(_) => "deleting the schedule's backups",
            Self::Kernel(_) => return None,
        })
    }
}

impl Reconciler for Schedules {
    type Object = Schedule;
    type Status = ScheduleStatus;
    type Error = ScheduleError;
    const KIND: &'static str = "Schedule";
    const METRIC: &'static str = "schedule";
    const MANAGER: &'static str = MANAGER;
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    const SHARED: bool = true;

    async fn step(
        &self,
        s: &Schedule,
        ctx: &Context,
        st: &mut ScheduleStatus,
    ) -> Result<Action, ScheduleError> {
        step(s, ctx, st).await
    }

    /// None: `onDelete: Delete` is carried out on deletion without one
    /// (`controller::departed`); a finalizer of an older version is removed.
    fn wants_finalizer(&self, _s: &Schedule) -> bool {
        false
    }

    async fn cleanup(&self, s: &Schedule, ctx: &Context) -> Result<bool, ScheduleError> {
        ctx.metrics
            .forget_schedule(&s.namespace().unwrap_or_default(), &s.name_any());
        if s.spec.on_delete != ScheduleDeletion::Delete
            || crate::controller::departed::namespace_leaving(
                ctx,
                &s.namespace().unwrap_or_default(),
            )
            .await
        {
            return Ok(true);
        }
        expire::destroy(s, ctx).await.map_err(ScheduleError::Delete)
    }
}

impl Status for ScheduleStatus {
    fn summary(&self) -> (State, String, String) {
        let reason = self.reason.clone().unwrap_or_else(|| "Active".into());
        let message = self.message.clone().unwrap_or_default();
        let refused = reason == ScheduleReason::QuotaExceeded.as_str();
        match self.phase {
            Some(SchedulePhase::Invalid) => (State::Failed, reason, message),
            // Runs are refused until someone frees or raises the quota: Stalled, not Ready.
            Some(_) if refused => (State::Failed, reason, message),
            Some(_) => (State::Ready, reason, message),
            None => (State::Progressing, reason, message),
        }
    }
    fn claimed_by(&self) -> Option<&str> {
        self.operator_namespace.as_deref()
    }
}

/// One pass: check the spec, start what is due, apply retention, report.
async fn step(
    s: &Schedule,
    ctx: &Context,
    st: &mut ScheduleStatus,
) -> Result<Action, ScheduleError> {
    let policy = read_policy(s, ctx).await.map_err(ScheduleError::Observe)?;
    let plan = match plan::resolve(s, policy.as_ref()) {
        Ok(p) => p,
        Err(r) => return Ok(invalid(st, r)),
    };
    // A location that does not allow the schedule's namespace: no runs until it does.
    let location = s
        .spec
        .template
        .spec
        .storage_location
        .as_deref()
        .or(plan.location.as_deref());
    let ns = s.namespace().unwrap_or_default();
    if let Err(r) = storage::admits(ctx, location, &ns)
        .await
        .map_err(ScheduleError::Observe)?
    {
        invalid(st, r);
        return Ok(Action::requeue(RECHECK));
    }
    if let Some(gap) = plan.max_interval(jiff::Timestamp::now()) {
        ctx.metrics
            .schedule_interval(&s.namespace().unwrap_or_default(), &s.name_any(), gap);
    }
    let backups = list(s, ctx).await.map_err(ScheduleError::Observe)?;
    let started = run::start_due(s, ctx, &plan, &backups, st)
        .await
        .map_err(ScheduleError::Run)?;
    let backups = list(s, ctx).await.map_err(ScheduleError::Observe)?;
    expire::apply(s, ctx, &plan, &backups, st)
        .await
        .map_err(ScheduleError::Expire)?;
    report(s, ctx, &backups, st, started.refused);
    let now = jiff::Timestamp::now();
    let until = started
        .wake
        .map(|w| w.duration_since(now).unsigned_abs())
        .unwrap_or(RECHECK);
    Ok(Action::requeue(
        until.clamp(Duration::from_secs(1), RECHECK),
    ))
}

async fn read_policy(s: &Schedule, ctx: &Context) -> Result<Option<SLAPolicy>, Error> {
    let Some(name) = &s.spec.policy else {
        return Ok(None);
    };
    Api::<SLAPolicy>::all(ctx.client.clone())
        .get_opt(name)
        .await
        .map_err(Error::kube("get SLAPolicy"))
}

/// Every Backup this schedule made (by label), those being deleted too.
pub(super) async fn all_backups(s: &Schedule, ctx: &Context) -> Result<Vec<Backup>, Error> {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    let lp = ListParams::default().labels(&format!("{SCHEDULE_LABEL}={}", s.name_any()));
    Ok(api
        .list(&lp)
        .await
        .map_err(Error::kube("list the schedule's Backups"))?
        .items)
}

/// The Backups this schedule made, those being deleted left out.
async fn list(s: &Schedule, ctx: &Context) -> Result<Vec<Backup>, Error> {
    let mut all = all_backups(s, ctx).await?;
    all.retain(|b| b.metadata.deletion_timestamp.is_none());
    Ok(all)
}

fn invalid(st: &mut ScheduleStatus, r: Refusal) -> Action {
    st.phase = Some(SchedulePhase::Invalid);
    st.reason = Some(r.reason.into());
    st.message = Some(r.message);
    st.next_run_time = None;
    st.next_copy_time = None;
    Action::await_change()
}

/// Phase, the newest successful backup, the running ones and the restore points; a run a
/// quota refused in this pass is the reason and message.
fn report(
    s: &Schedule,
    ctx: &Context,
    backups: &[Backup],
    st: &mut ScheduleStatus,
    refused: Option<Refusal>,
) {
    let (phase, reason) = if s.spec.paused {
        (SchedulePhase::Paused, ScheduleReason::Paused)
    } else {
        (SchedulePhase::Active, ScheduleReason::Active)
    };
    st.phase = Some(phase);
    st.reason = Some(reason.into());
    st.message = None;
    if let Some(r) = refused {
        st.reason = Some(r.reason.into());
        st.message = Some(r.message);
    }
    let phase_of = |b: &Backup| b.status.as_ref().and_then(|s| s.phase);
    st.active = backups
        .iter()
        .filter(|b| !phase_of(b).is_some_and(BackupPhase::is_terminal))
        .map(|b| b.name_any())
        .collect();
    let done: BTreeMap<_, _> = backups
        .iter()
        .filter(|b| phase_of(b) == Some(BackupPhase::Completed))
        .filter_map(|b| Some((b.status.as_ref()?.completion_time.clone()?.0, b.name_any())))
        .collect();
    if let Some((t, name)) = done.last_key_value() {
        st.last_successful_backup = Some(name.clone());
        st.last_successful_time = Some(Time(*t));
        ctx.metrics.schedule_success(
            &s.namespace().unwrap_or_default(),
            &s.name_any(),
            t.as_second(),
        );
    }
    let points = backups
        .iter()
        .filter(|b| {
            matches!(
                phase_of(b),
                Some(BackupPhase::Completed | BackupPhase::PartiallyFailed)
            )
        })
        .count();
    st.restore_points = Some(u32::try_from(points).unwrap_or(u32::MAX));
}

/// `onDelete: Delete` of a deleted schedule: deletes its Backups; true once none is left.
pub async fn destroy(s: &Schedule, ctx: &Context) -> Result<bool, crate::runtime::Error> {
    expire::destroy(s, ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_ready_unless_invalid() {
        let mut st = ScheduleStatus {
            phase: Some(SchedulePhase::Paused),
            reason: Some("Paused".into()),
            ..Default::default()
        };
        assert_eq!(st.summary().0, State::Ready);
        st.phase = Some(SchedulePhase::Invalid);
        assert_eq!(st.summary().0, State::Failed);
        let a = invalid(
            &mut st,
            Refusal::new(ScheduleReason::PolicyNotFound, "no gold"),
        );
        assert_eq!(a, Action::await_change());
        assert_eq!(st.reason.as_deref(), Some("PolicyNotFound"));
        // Runs refused by a quota: Stalled with the quota's words, until a run starts.
        let st = ScheduleStatus {
            phase: Some(SchedulePhase::Active),
            reason: Some("QuotaExceeded".into()),
            message: Some("exceeded quota: backup-count".into()),
            ..Default::default()
        };
        assert_eq!(
            st.summary(),
            (
                State::Failed,
                "QuotaExceeded".into(),
                "exceeded quota: backup-count".into()
            )
        );
    }
}
