//! DataUpload and DataDownload controllers: each runs one mover pod in the operator namespace.
//!
//! Upload (`upload.rs`): the snapshot is exposed in the operator namespace (`expose.rs`: its
//! content re-bound to a new VolumeSnapshotContent with `deletionPolicy: Retain`, a
//! VolumeSnapshot on that, a temporary claim restored from it) or, for a live copy
//! (`live.rs`), the claim is read in its own namespace; a mover pod reads the claim read-only
//! into the repository, then everything temporary is deleted. Download (`download.rs`): a
//! mover pod writes a repository snapshot into a new temporary claim; its volume is then kept
//! (`Retain`) and reserved for the target claim, which the Restore controller creates.
//!
//! Progress and results come from the mover's protocol events (pod logs, `mover::protocol`).

pub mod admission;
pub mod download;
pub mod expose;
pub mod live;
pub mod placement;
pub mod pod;
pub mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::reasons::{LocationReason, TransferReason};
use holdfast_api::transfer::TransferStatus;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::runtime::error::Refusal;
use crate::runtime::kernel::{self, ControllerError, Reconciler, State, Status};
use crate::runtime::kube_ext::delete;
use crate::runtime::{Context, Error};
use crate::storage;

/// Field manager of the transfer controllers' writes.
pub const MANAGER: &str = "holdfast-transfer-controller";
/// Finalizer: temporary objects of a transfer are removed before it goes away.
pub const FINALIZER: &str = "holdfast.dev/transfer-cleanup";
/// Label on every object a transfer creates: the transfer's name.
pub const TRANSFER_LABEL: &str = "holdfast.dev/transfer";
/// Annotation on a restored volume: its reclaim policy before Holdfast set `Retain`.
pub const RECLAIM_ANNOTATION: &str = "holdfast.dev/reclaim-policy";
const POLL: Duration = Duration::from_secs(2);
/// How often a transfer waiting for a mover slot or its location looks again.
const WAIT: Duration = Duration::from_secs(5);

/// What failed in a DataUpload or DataDownload, by step.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("preparing the mover: {0}")]
    Prepare(#[source] Error),
    #[error("following the mover: {0}")]
    Follow(#[source] Error),
    #[error("handing the restored volume over: {0}")]
    HandOver(#[source] Error),
    #[error("removing temporary objects: {0}")]
    Cleanup(#[source] Error),
    #[error(transparent)]
    Kernel(#[from] Error),
}

impl ControllerError for TransferError {
    fn root(&self) -> &Error {
        match self {
            Self::Prepare(e) | Self::Follow(e) | Self::HandOver(e) | Self::Cleanup(e) => e,
            Self::Kernel(e) => e,
        }
    }
    fn step(&self) -> Option<&'static str> {
        Some(match self {
            Self::Prepare(_) => "preparing the mover",
            Self::Follow(_) => "following the mover",
            Self::HandOver(_) => "handing the restored volume over",
            Self::Cleanup(_) => "removing temporary objects",
            Self::Kernel(_) => return None,
        })
    }
}

impl Status for TransferStatus {
    fn summary(&self) -> (State, String, String) {
        let state = match self.phase {
            TransferPhase::Completed => State::Ready,
            TransferPhase::Failed => State::Failed,
            TransferPhase::Cancelled => State::Ended,
            _ => State::Progressing,
        };
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| format!("{:?}", self.phase));
        (state, reason, self.message.clone().unwrap_or_default())
    }
    fn is_terminal(&self) -> bool {
        self.phase.is_terminal()
    }
}

/// Runs a transfer controller: its kind and the mover pods it owns, until `shutdown`.
pub async fn run<R: Reconciler>(
    ctx: Arc<Context>,
    reconciler: R,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<R::Object> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let controller = kernel::controller(api, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(TRANSFER_LABEL));
    kernel::run(ctx, reconciler, controller, shutdown).await;
}

/// Seconds from `start` to now (0 when unknown), for throughput metrics.
fn seconds_since(start: Option<Timestamp>) -> f64 {
    start.map_or(0.0, |s| {
        Timestamp::now().duration_since(s).as_secs_f64().max(0.0)
    })
}

fn owner<K: Resource<DynamicType = ()>>(o: &K) -> OwnerReference {
    o.controller_owner_ref(&()).unwrap_or_default()
}

/// Labels of a transfer's objects: the parent's `holdfast.dev/` labels and the transfer's
/// name. Pure.
fn labels_for(name: &str, parent: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = parent
        .iter()
        .filter(|(k, _)| {
            k.starts_with("holdfast.dev/") || k.as_str() == "app.kubernetes.io/managed-by"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(TRANSFER_LABEL.into(), name.into());
    l.insert("app.kubernetes.io/managed-by".into(), "holdfast".into());
    l
}

/// Whether a transfer in `phase` holds a mover slot. Pure.
fn holds_slot(phase: TransferPhase) -> bool {
    matches!(phase, TransferPhase::Preparing | TransferPhase::InProgress)
}

/// Pending → Preparing when `active` transfers hold a mover slot, fewer than `max`. Pure.
fn slot_decision(st: &mut TransferStatus, active: usize, max: usize, now: Timestamp) -> Action {
    if active >= max {
        st.reason = Some(TransferReason::WaitingForSlot.into());
        st.message = Some(format!("{max} mover pods are running (limit --max-movers)"));
        return Action::requeue(WAIT);
    }
    st.phase = TransferPhase::Preparing;
    st.reason = None;
    st.message = None;
    st.start_time = Some(Time(now));
    Action::requeue(Duration::ZERO)
}

/// Ends the transfer in a terminal `phase`.
fn finish(
    st: &mut TransferStatus,
    phase: TransferPhase,
    reason: Option<TransferReason>,
    message: Option<String>,
) -> Action {
    st.phase = phase;
    st.reason = reason.map(Into::into);
    st.message = message;
    st.completion_time = Some(Time(Timestamp::now()));
    Action::requeue(Duration::ZERO)
}

/// A killed mover: records why, deletes its pod and starts a new attempt after a backoff
/// (10 s, doubling, at most 5 min).
async fn retry(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    st: &mut TransferStatus,
    why: String,
) -> Result<Action, Error> {
    st.retries += 1;
    let wait = retry_backoff(st.retries);
    tracing::warn!(transfer = name, attempt = st.retries, why = %why, "mover killed; retrying");
    st.last_failure = Some(why);
    st.retry_after = Some(Time(
        Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::try_from(wait).unwrap_or_default())
            .unwrap_or_else(|_| Timestamp::now()),
    ));
    st.phase = TransferPhase::Preparing;
    st.mover_pod = None;
    crate::runtime::kube_ext::delete(pods, name, &Default::default(), "delete killed mover Pod")
        .await?;
    Ok(Action::requeue(wait))
}

/// Backoff before retry `n` (1-based). Pure.
fn retry_backoff(n: u32) -> Duration {
    Duration::from_secs(
        10u64
            .saturating_mul(1 << n.saturating_sub(1).min(5))
            .min(300),
    )
}

/// While a retry waits for its backoff or for the killed pod to go: how long to wait.
async fn retry_wait(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    st: &TransferStatus,
) -> Result<Option<Duration>, Error> {
    if let Some(t) = &st.retry_after {
        let left = t.0.duration_since(Timestamp::now());
        if left.is_positive() {
            return Ok(Some(left.unsigned_abs()));
        }
    }
    if st.retries > 0
        && pods
            .get_opt(name)
            .await
            .map_err(Error::kube("get mover Pod"))?
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some() || pod::killed(&p).is_some())
    {
        return Ok(Some(POLL));
    }
    Ok(None)
}

/// Fails the transfer for a refusal (its reason and message).
fn refuse(st: &mut TransferStatus, r: Refusal) -> Action {
    st.phase = TransferPhase::Failed;
    st.reason = Some(r.reason.into());
    st.message = Some(r.message);
    st.completion_time = Some(Time(Timestamp::now()));
    Action::requeue(Duration::ZERO)
}

/// The transfer's location, checked Available: a missing one fails the transfer, an
/// unavailable one makes it wait (both say why in the status).
async fn location(
    ctx: &Context,
    name: &str,
    st: &mut TransferStatus,
) -> Result<Result<BackupStorageLocation, Action>, Error> {
    Ok(match storage::location(ctx, Some(name)).await? {
        Ok(bsl) => Ok(bsl),
        Err(r) if r.reason == LocationReason::LocationNotFound.as_str() => Err(refuse(st, r)),
        Err(r) => {
            st.reason = Some(r.reason.into());
            st.message = Some(r.message);
            Err(Action::requeue(WAIT))
        }
    })
}

/// How long after a failed or cancelled transfer the operator keeps trying to remove what its
/// dead mover left in the repository: a lock is stale (ignored by restic and by us) this long
/// after its last refresh, so none of its locks holds anything up by then.
const RELEASE_FOR: Duration = Duration::from_secs(30 * 60);

/// How long after a mover pod was deleted (cancel, deletion; without grace, so the object goes
/// at once) its locks are left alone: its process may live a moment longer and still take or
/// refresh a lock.
const MOVER_DEATH: Duration = Duration::from_secs(10);

/// When to remove what the dead mover of a finished transfer left: `None` when there is
/// nothing to do (it completed, so its mover ended cleanly, or its locks are stale by now),
/// else after the returned wait (zero: now). Pure.
fn release_due(st: &TransferStatus, now: Timestamp) -> Option<Duration> {
    if !mover_ran(st) {
        return None;
    }
    let cancelled = match st.phase {
        TransferPhase::Failed => false,
        TransferPhase::Cancelled => true,
        _ => return None,
    };
    let Some(ended) = &st.completion_time else {
        return Some(Duration::ZERO);
    };
    let age = now.duration_since(ended.0);
    if age.is_negative() {
        return Some(Duration::ZERO);
    }
    let age = age.unsigned_abs();
    if age >= RELEASE_FOR {
        None
    } else if cancelled && age < MOVER_DEATH {
        Some(MOVER_DEATH - age)
    } else {
        Some(Duration::ZERO)
    }
}

/// Whether a mover pod of the transfer was ever started (a transfer refused before that has no
/// mover that could have left anything). Pure.
fn mover_ran(st: &TransferStatus) -> bool {
    st.mover_pod.is_some() || st.retries > 0
}

/// A finished transfer whose temporary objects are gone: removes what its dead mover left
/// (see [`release_due`], [`release_dead_mover`]). `None` when done, else when to look again.
async fn release_finished(
    ctx: &Context,
    st: &TransferStatus,
    location: &str,
    repository: &str,
    name: &str,
    journal: bool,
) -> Option<Duration> {
    match release_due(st, Timestamp::now())? {
        Duration::ZERO => (!release_dead_mover(ctx, location, repository, name, journal).await)
            .then_some(WAIT * 3),
        wait => Some(wait),
    }
}

/// A transfer being deleted whose temporary objects are gone: a mover that did not complete
/// may have left locks (and an upload its journal); once its process is surely dead, one
/// attempt removes them (deletion is not held up by an unreachable store). True when done.
async fn release_deleted(
    ctx: &Context,
    meta: &kube::api::ObjectMeta,
    st: Option<&TransferStatus>,
    location: &str,
    repository: &str,
    name: &str,
    journal: bool,
) -> bool {
    let ran = st.is_some_and(|s| s.phase != TransferPhase::Completed && mover_ran(s));
    if !ran {
        return true;
    }
    if let Some(t) = &meta.deletion_timestamp
        && Timestamp::now().duration_since(t.0).unsigned_abs() < MOVER_DEATH
        && t.0 < Timestamp::now()
    {
        return false;
    }
    release_dead_mover(ctx, location, repository, name, journal).await;
    true
}

/// Removes what a mover that did not end cleanly (killed, failed, gave up) left in the
/// repository: its locks, which carry its host name (its pod's name, unique to the transfer
/// and dead now), and with `journal` the upload's journal (the transfer never resumes again;
/// the packs it names stay until a prune finds them unused). True when nothing is left, or the
/// location is gone; false when the store could not be reached (try again later: during an
/// S3 outage the mover and this both fail, and a lock left would hold maintenance for 30
/// minutes).
async fn release_dead_mover(
    ctx: &Context,
    location: &str,
    repository: &str,
    host: &str,
    journal: bool,
) -> bool {
    let removed = async {
        let bsl = match storage::location(ctx, Some(location)).await? {
            Ok(bsl) => bsl,
            // Gone: nothing of it can be reached any more.
            Err(r) if r.reason == LocationReason::LocationNotFound.as_str() => return Ok(0),
            // Unavailable (its last probe failed, as in an outage): later.
            Err(r) => {
                return Err(Error::Internal {
                    what: "reaching the location",
                    message: r.message,
                });
            }
        };
        let repo = storage::repository::open(ctx, &bsl, repository, false).await?;
        let internal = |what: &'static str| {
            move |e: holdfast_repo::RepoError| Error::Internal {
                what,
                message: e.to_string(),
            }
        };
        let n = repo
            .remove_locks_of_host(host)
            .await
            .map_err(internal("removing the locks of a dead mover"))?;
        if journal {
            holdfast_repo::backup::clear_journal(&repo, host)
                .await
                .map_err(internal("removing the journal of a failed upload"))?;
        }
        Ok::<_, Error>(n)
    }
    .await;
    match removed {
        Ok(0) => true,
        Ok(n) => {
            tracing::info!(
                transfer = host,
                locks = n,
                "removed the locks of a dead mover"
            );
            true
        }
        Err(e) => {
            tracing::warn!(transfer = host, error = %e, "could not remove the locks of a dead mover; trying again");
            false
        }
    }
}

/// Deletes mover pod `name` at once (no grace: a mover's work is either complete or
/// worthless) if it exists and is the transfer's own (label [`TRANSFER_LABEL`] = `name`; in an
/// application's namespace a pod of that name may be the user's). True when it existed.
pub(crate) async fn delete_mover_pod(pods: &Api<Pod>, name: &str) -> Result<bool, Error> {
    let Some(p) = pods
        .get_opt(name)
        .await
        .map_err(Error::kube("get mover Pod"))?
    else {
        return Ok(false);
    };
    if p.labels().get(TRANSFER_LABEL).map(String::as_str) != Some(name) {
        return Ok(false);
    }
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    delete(pods, name, &now, "delete mover Pod").await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_taken_only_below_the_limit() {
        let now = Timestamp::from_second(1).expect("ts");
        let mut st = TransferStatus::default();
        slot_decision(&mut st, 4, 4, now);
        assert_eq!(st.phase, TransferPhase::Pending);
        assert_eq!(st.reason.as_deref(), Some("WaitingForSlot"));
        slot_decision(&mut st, 3, 4, now);
        assert_eq!(st.phase, TransferPhase::Preparing);
        assert_eq!(st.reason, None);
        assert!(holds_slot(TransferPhase::InProgress) && !holds_slot(TransferPhase::Pending));
    }

    #[test]
    fn children_carry_the_parents_holdfast_labels_only() {
        let parent = BTreeMap::from([
            ("holdfast.dev/backup-uid".to_string(), "u".to_string()),
            ("argocd.argoproj.io/instance".to_string(), "x".to_string()),
        ]);
        let l = labels_for("t1", &parent);
        assert_eq!(l.get(TRANSFER_LABEL).map(String::as_str), Some("t1"));
        assert!(l.contains_key("holdfast.dev/backup-uid"));
        assert!(!l.contains_key("argocd.argoproj.io/instance"));
    }

    #[test]
    fn a_dead_movers_leftovers_are_removed_after_a_failure_or_cancel_for_half_an_hour() {
        let now = Timestamp::from_second(10_000).expect("ts");
        let at = |s: i64| Some(Time(Timestamp::from_second(s).expect("ts")));
        let mut st = TransferStatus {
            phase: TransferPhase::Failed,
            completion_time: at(10_000 - 2),
            ..Default::default()
        };
        assert_eq!(release_due(&st, now), None, "refused before a mover ran");
        st.mover_pod = Some("m".into());
        assert_eq!(release_due(&st, now), Some(Duration::ZERO));
        st.completion_time = at(10_000 - 31 * 60);
        assert_eq!(release_due(&st, now), None, "its locks are stale by now");
        st.completion_time = None;
        assert_eq!(release_due(&st, now), Some(Duration::ZERO));
        // A cancelled transfer's mover pod was deleted without grace: its process may still
        // run a moment.
        st.phase = TransferPhase::Cancelled;
        st.completion_time = at(10_000 - 2);
        assert_eq!(release_due(&st, now), Some(Duration::from_secs(8)));
        st.completion_time = at(10_000 - 60);
        assert_eq!(release_due(&st, now), Some(Duration::ZERO));
        st.phase = TransferPhase::Completed;
        assert_eq!(
            release_due(&st, now),
            None,
            "a mover that ended cleanly left nothing"
        );
    }

    #[test]
    fn transfer_conditions_follow_the_phase() {
        let mut st = TransferStatus::default();
        assert_eq!(st.summary().0, State::Progressing);
        st.phase = TransferPhase::Failed;
        st.reason = Some("MoverFailed".into());
        assert_eq!(st.summary().0, State::Failed);
        assert_eq!(st.summary().1, "MoverFailed");
        st.phase = TransferPhase::Cancelled;
        assert_eq!(st.summary().0, State::Ended);
    }
}
