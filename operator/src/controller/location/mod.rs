//! BackupStorageLocation controller: validates each location against its object store and
//! reports Available/Unavailable with a reason. Talks to the cluster and to object storage.

pub mod probe;
pub mod rotate;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use holdfast_api::location::{
    BackupStorageLocation, BackupStorageLocationSpec, BackupStorageLocationStatus, LocationPhase,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use tracing::info;

use self::probe::ProbeFailure;
use crate::runtime::conditions;
use crate::runtime::kernel::{self, ControllerError, Reconciler, State, Status};
use crate::runtime::{Context, Error};
use crate::storage;

/// Field manager of this controller's status writes.
pub const MANAGER: &str = "holdfast-location-controller";
/// Condition type set on locations that claim `default: true` but lose to an older one.
pub const DEFAULT_CONFLICT: &str = "DefaultConflict";
/// Condition type set (True) while the location's passphrase is one the operator generated.
pub const PASSPHRASE_GENERATED: &str = "PassphraseGenerated";

/// What the `PassphraseGenerated` condition and Event say. Pure.
pub fn passphrase_generated_message(namespace: &str, secret: &str) -> String {
    format!(
        "no spec.encryption: the operator generated the passphrase every repository on this location opens with, into Secret {namespace}/{secret}. Export it now and keep it outside the cluster ({}); without it, losing the cluster loses the backups. Then set spec.encryption.passphraseSecretRef to {{name: {secret}, key: passphrase}} to clear this condition",
        storage::passphrase::export_command(namespace, secret)
    )
}

/// Condition type set (True) while `spec.s3.insecureSkipTlsVerify` is set.
pub const INSECURE_TLS: &str = "InsecureTLS";
/// Its reason.
const INSECURE_TLS_REASON: &str = "InsecureSkipTlsVerify";
/// Its message.
const INSECURE_TLS_MESSAGE: &str = "spec.s3.insecureSkipTlsVerify is set: the operator and its movers do not verify the endpoint's certificate, so anyone on the network path can read and alter backups and the credentials in transit; set spec.s3.caBundle to the CA that signed the server's certificate and remove insecureSkipTlsVerify";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How often a location's catalog is synced unless `spec.syncInterval` says otherwise.
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Condition type of the last sync's outcome.
pub const SYNCED: &str = "Synced";

/// The location controller's phase functions and the cache of all locations.
struct Locations {
    /// Every location of the operator namespace, kept current by the controller's watch.
    all: Store<BackupStorageLocation>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let locations: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let (reader, writer) = kube::runtime::reflector::store();
    // Only spec changes (generation) trigger; our own status writes do not.
    let trigger = watcher(locations, watcher::Config::default())
        .default_backoff()
        .modify(crate::runtime::cache::strip)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let store = reader.clone();
    let controller = Controller::for_stream(trigger, reader.clone()).watches(
        secrets,
        watcher::Config::default(),
        move |secret: Secret| {
            // A Secret change re-validates every location that uses it.
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|l| uses_secret(&l.spec, &name))
                .map(|l| ObjectRef::from_obj(&*l))
                .collect::<Vec<_>>()
        },
    );
    kernel::run(ctx, Locations { all: reader }, controller, shutdown).await;
}

fn uses_secret(spec: &BackupStorageLocationSpec, secret: &str) -> bool {
    spec.credentials
        .as_ref()
        .is_some_and(|c| c.secret_ref.name == secret)
        || spec
            .s3
            .ca_bundle
            .as_ref()
            .is_some_and(|c| c.secret_ref.name == secret)
}

/// What failed in a location's reconcile: only the kernel's own calls can fail (a failed
/// validation is the location's status, Unavailable with a reason, not an error).
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error(transparent)]
    Kernel(#[from] Error),
}

impl ControllerError for LocationError {
    fn root(&self) -> &Error {
        match self {
            Self::Kernel(e) => e,
        }
    }
    fn step(&self) -> Option<&'static str> {
        None
    }
}

impl Reconciler for Locations {
    type Object = BackupStorageLocation;
    type Status = BackupStorageLocationStatus;
    type Error = LocationError;
    const KIND: &'static str = "BackupStorageLocation";
    const METRIC: &'static str = "location";
    const MANAGER: &'static str = MANAGER;

    async fn step(
        &self,
        bsl: &BackupStorageLocation,
        ctx: &Context,
        st: &mut BackupStorageLocationStatus,
    ) -> Result<Action, LocationError> {
        let name = bsl.name_any();
        let mut outcome = match storage::resolve_target(bsl, ctx).await {
            Ok(target) => {
                let marker = format!("{}-{}", name, bsl.uid().unwrap_or_default());
                probe::probe(&target, &marker).await
            }
            Err(f) => Err(f),
        };
        // The passphrase every repository here opens with (generated when not given).
        let (secret, key, generated) = storage::passphrase::source(bsl);
        let ns = bsl.namespace().unwrap_or_default();
        if let Err(message) = storage::passphrase::read(ctx, bsl).await? {
            outcome = Err(ProbeFailure {
                reason: probe::Reason::PassphraseMissing,
                message,
            });
        }
        // A passphrase other than the one the repositories were given: rotated below.
        let current = format!("{secret}/{key}");
        let rotating_from = st.passphrase.clone().filter(|p| *p != current);
        if rotating_from.is_none() {
            st.passphrase = Some(current.clone());
        }
        let was_generated = conditions::get(&st.conditions, PASSPHRASE_GENERATED).is_some();
        let generated_note = generated.then(|| passphrase_generated_message(&ns, &secret));
        // Default-location arbitration: the oldest location claiming default wins.
        let winner = storage::effective_default(self.all.state().iter().map(|l| {
            (
                l.name_any(),
                l.creation_timestamp().map(|t| t.0),
                l.spec.default,
            )
        }));
        let conflict = bsl.spec.default && winner.as_deref() != Some(name.as_str());
        let before = (st.phase, st.reason.clone());
        let was_insecure = conditions::get(&st.conditions, INSECURE_TLS).is_some();
        let insecure = bsl.spec.s3.insecure_skip_tls_verify;
        apply_outcome(
            st,
            bsl.meta().generation,
            &outcome,
            conflict.then_some(winner.as_deref().unwrap_or("")),
            insecure,
            Timestamp::now(),
        );
        match &generated_note {
            Some(note) => {
                conditions::set(
                    &mut st.conditions,
                    PASSPHRASE_GENERATED,
                    true,
                    PASSPHRASE_GENERATED,
                    note,
                    bsl.meta().generation,
                    Timestamp::now(),
                );
                if !was_generated {
                    tracing::warn!(location = %name, "{note}");
                    ctx.event(
                        bsl,
                        EventType::Warning,
                        PASSPHRASE_GENERATED,
                        note,
                        "Validate",
                    )
                    .await;
                }
            }
            None => conditions::remove(&mut st.conditions, PASSPHRASE_GENERATED),
        }
        if insecure && !was_insecure {
            tracing::warn!(location = %name, "TLS certificate verification is off for this location");
            ctx.event(
                bsl,
                EventType::Warning,
                INSECURE_TLS_REASON,
                INSECURE_TLS_MESSAGE,
                "Validate",
            )
            .await;
        }
        ctx.metrics.init_location(&name);
        ctx.metrics.set_location_available(&name, outcome.is_ok());
        if before != (st.phase, st.reason.clone()) {
            let (type_, reason, note) = match &outcome {
                Ok(()) => (
                    EventType::Normal,
                    "Available",
                    "location validated".to_string(),
                ),
                Err(f) => (EventType::Warning, f.reason.as_str(), f.message.clone()),
            };
            info!(location = %name, reason = %reason, "location {}", if outcome.is_ok() { "available" } else { "unavailable" });
            ctx.event(bsl, type_, reason, &note, "Validate").await;
        }
        if conflict {
            let note = format!(
                "location {:?} is already the default; set spec.default: false here",
                winner.unwrap_or_default()
            );
            ctx.event(bsl, EventType::Warning, DEFAULT_CONFLICT, &note, "Validate")
                .await;
        }
        let interval = bsl
            .spec
            .validation_interval
            .map(|d| d.as_std())
            .unwrap_or(DEFAULT_INTERVAL)
            .max(Duration::from_secs(5));
        if let (Ok(()), Some(from)) = (&outcome, rotating_from) {
            rotate_passphrase(bsl, ctx, st, &from, &current).await;
        }
        let next_sync = match outcome {
            Ok(()) => sync_if_due(bsl, ctx, st).await,
            Err(_) => None,
        };
        Ok(Action::requeue(
            next_sync.map_or(interval, |n| n.min(interval)),
        ))
    }
}

/// Rotates the location's passphrase from `from` to `to` (both `Secret/key`), recording `to`
/// once every repository opens with it; a ReadOnly location is never written to, so it
/// takes the new passphrase as it is.
async fn rotate_passphrase(
    bsl: &BackupStorageLocation,
    ctx: &Context,
    st: &mut BackupStorageLocationStatus,
    from: &str,
    to: &str,
) {
    if bsl.spec.access_mode == holdfast_api::location::AccessMode::ReadOnly {
        st.passphrase = Some(to.to_string());
        return;
    }
    let done = match rotate::rotate(ctx, bsl, from, to, st).await {
        Ok(done) => done,
        Err(e) => {
            st.rotation = Some(holdfast_api::location::PassphraseRotation {
                from: from.to_string(),
                to: to.to_string(),
                phase: holdfast_api::location::RotationPhase::Failed,
                message: Some(format!(
                    "{e}; retried on the next validation (the old passphrase still opens every repository)"
                )),
                ..Default::default()
            });
            false
        }
    };
    let note = st
        .rotation
        .as_ref()
        .and_then(|r| r.message.clone())
        .unwrap_or_default();
    let (type_, reason) = if done {
        st.passphrase = Some(to.to_string());
        info!(location = %bsl.name_any(), "passphrase rotated: {note}");
        (EventType::Normal, "PassphraseRotated")
    } else {
        tracing::warn!(location = %bsl.name_any(), "passphrase rotation: {note}");
        (EventType::Warning, "PassphraseRotationFailed")
    };
    ctx.event(bsl, type_, reason, &note, "Rotate").await;
}

/// Syncs the location's catalog when its interval has passed (conditions `Synced`, Events
/// when Backups were made or removed); returns how long until the next sync is due (`None`:
/// sync is off).
async fn sync_if_due(
    bsl: &BackupStorageLocation,
    ctx: &Context,
    st: &mut BackupStorageLocationStatus,
) -> Option<Duration> {
    let every = bsl
        .spec
        .sync_interval
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_SYNC_INTERVAL);
    if every.is_zero() {
        conditions::remove(&mut st.conditions, SYNCED);
        return None;
    }
    let every = every.max(Duration::from_secs(5));
    let now = Timestamp::now();
    if let Some(last) = st.last_sync_time.as_ref().map(|t| t.0) {
        let since = now.duration_since(last).unsigned_abs();
        if since < every && st.observed_generation == bsl.meta().generation {
            return Some(every - since);
        }
    }
    let generation = bsl.meta().generation;
    match sync::sync(ctx, bsl).await {
        Ok(r) => {
            st.backups_in_catalog = Some(r.records);
            let note = r.message();
            conditions::set(
                &mut st.conditions,
                SYNCED,
                true,
                "Synced",
                &note,
                generation,
                now,
            );
            if r.created > 0 || r.removed > 0 {
                ctx.event(bsl, EventType::Normal, "Synced", &note, "Sync")
                    .await;
            }
        }
        Err(e) => {
            let note = format!(
                "reading the location's catalog failed: {e}; retried in {}s",
                every.as_secs()
            );
            tracing::warn!(location = %bsl.name_any(), "{note}");
            conditions::set(
                &mut st.conditions,
                SYNCED,
                false,
                "SyncFailed",
                &note,
                generation,
                now,
            );
        }
    }
    st.last_sync_time = Some(Time(now));
    Some(every)
}

impl Status for BackupStorageLocationStatus {
    fn summary(&self) -> (State, String, String) {
        match self.phase {
            Some(LocationPhase::Available) => (
                State::Ready,
                "Validated".into(),
                "the location is reachable and usable".into(),
            ),
            Some(LocationPhase::Unavailable) => (
                State::Failed,
                self.reason.clone().unwrap_or_default(),
                self.message.clone().unwrap_or_default(),
            ),
            _ => (State::Progressing, "Validating".into(), String::new()),
        }
    }
}

/// Records a validation outcome, the default conflict and the insecure-TLS warning in the status (the kernel adds the
/// standard conditions). Pure.
pub fn apply_outcome(
    st: &mut BackupStorageLocationStatus,
    generation: Option<i64>,
    outcome: &Result<(), ProbeFailure>,
    default_conflict_with: Option<&str>,
    insecure_tls: bool,
    now: Timestamp,
) {
    st.last_validation_time = Some(Time(now));
    match outcome {
        Ok(()) => {
            st.phase = Some(LocationPhase::Available);
            st.reason = None;
            st.message = None;
        }
        Err(f) => {
            st.phase = Some(LocationPhase::Unavailable);
            st.reason = Some(f.reason.as_str().to_string());
            st.message = Some(f.message.clone());
        }
    }
    match default_conflict_with {
        Some(winner) => conditions::set(
            &mut st.conditions,
            DEFAULT_CONFLICT,
            true,
            "AnotherDefault",
            &format!(
                "location {winner:?} is older and already the default; set spec.default: false here"
            ),
            generation,
            now,
        ),
        None => conditions::remove(&mut st.conditions, DEFAULT_CONFLICT),
    }
    if insecure_tls {
        conditions::set(
            &mut st.conditions,
            INSECURE_TLS,
            true,
            INSECURE_TLS_REASON,
            INSECURE_TLS_MESSAGE,
            generation,
            now,
        );
    } else {
        conditions::remove(&mut st.conditions, INSECURE_TLS);
    }
}

#[cfg(test)]
mod tests {
    use super::probe::Reason;
    use super::*;
    use crate::runtime::conditions::{READY, STALLED};
    use crate::runtime::kernel::finalize;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    #[test]
    fn unavailable_then_available_status() {
        let fail = Err(ProbeFailure {
            reason: Reason::InvalidCredentials,
            message: "bad keys".into(),
        });
        let mut s = BackupStorageLocationStatus::default();
        apply_outcome(&mut s, Some(1), &fail, None, false, ts(100));
        finalize(&mut s, Some(1), None, ts(100));
        assert_eq!(s.phase, Some(LocationPhase::Unavailable));
        assert_eq!(s.reason.as_deref(), Some("InvalidCredentials"));
        let ready = conditions::get(&s.conditions, READY).expect("ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.observed_generation, Some(1));
        let stalled = conditions::get(&s.conditions, STALLED).expect("stalled");
        assert_eq!(stalled.reason, "InvalidCredentials");

        apply_outcome(&mut s, Some(1), &Ok(()), None, false, ts(200));
        finalize(&mut s, Some(1), None, ts(200));
        assert_eq!(s.phase, Some(LocationPhase::Available));
        assert_eq!(s.reason, None);
        let ready = conditions::get(&s.conditions, READY).expect("ready");
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time, Time(ts(200)));
        assert!(conditions::get(&s.conditions, STALLED).is_none());
    }

    #[test]
    fn default_conflict_condition_comes_and_goes() {
        let mut s = BackupStorageLocationStatus::default();
        apply_outcome(&mut s, Some(1), &Ok(()), Some("primary"), false, ts(1));
        assert!(conditions::get(&s.conditions, DEFAULT_CONFLICT).is_some());
        apply_outcome(&mut s, Some(1), &Ok(()), None, false, ts(2));
        assert!(conditions::get(&s.conditions, DEFAULT_CONFLICT).is_none());
    }

    #[test]
    fn insecure_tls_is_a_standing_warning_while_set() {
        let mut s = BackupStorageLocationStatus::default();
        apply_outcome(&mut s, Some(3), &Ok(()), None, true, ts(1));
        finalize(&mut s, Some(3), None, ts(1));
        let c = conditions::get(&s.conditions, INSECURE_TLS).expect("InsecureTLS");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "InsecureSkipTlsVerify")
        );
        assert!(c.message.contains("caBundle"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(3));
        // Still Available: the warning does not make the location unusable.
        assert_eq!(s.phase, Some(LocationPhase::Available));
        // Set again on the next pass: the transition time stays.
        apply_outcome(&mut s, Some(3), &Ok(()), None, true, ts(50));
        let c = conditions::get(&s.conditions, INSECURE_TLS).expect("InsecureTLS");
        assert_eq!(c.last_transition_time, Time(ts(1)));
        apply_outcome(&mut s, Some(4), &Ok(()), None, false, ts(60));
        assert!(conditions::get(&s.conditions, INSECURE_TLS).is_none());
    }
}
