//! BackupStorageLocation controller: validates each location against its object store and
//! reports Available/Unavailable with a reason. Talks to the cluster and to object storage.

pub mod probe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use holdfast_api::location::{
    AccessMode, BackupStorageLocation, BackupStorageLocationStatus, LocationPhase,
};
use holdfast_store::{RetryPolicy, S3Config};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use self::probe::{ProbeFailure, ProbeTarget, Reason};
use super::conditions::{self, READY, RECONCILING, STALLED};
use super::{Context, Error};

/// Field manager of this controller's status writes.
pub const MANAGER: &str = "holdfast-location-controller";
/// Condition type set on locations that claim `default: true` but lose to an older one.
pub const DEFAULT_CONFLICT: &str = "DefaultConflict";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// What a location reconcile sees: the shared context and the cache of all locations.
struct LocationContext {
    ctx: Arc<Context>,
    /// Every location of the operator namespace, kept current by the controller's watch.
    locations: Store<BackupStorageLocation>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ctx.namespace.clone();
    let locations: Api<BackupStorageLocation> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (reader, writer) = kube::runtime::reflector::store();
    // Only spec changes (generation) trigger; our own status writes do not.
    let trigger = watcher(locations, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let store = reader.clone();
    let lctx = Arc::new(LocationContext {
        ctx,
        locations: reader.clone(),
    });
    Controller::for_stream(trigger, reader)
        .watches(
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
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, lctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "location reconcile failed");
            }
        })
        .await;
}

fn uses_secret(spec: &holdfast_api::BackupStorageLocationSpec, secret: &str) -> bool {
    spec.credentials
        .as_ref()
        .is_some_and(|c| c.secret_ref.name == secret)
        || spec
            .s3
            .ca_bundle
            .as_ref()
            .is_some_and(|c| c.secret_ref.name == secret)
}

async fn reconcile(
    bsl: Arc<BackupStorageLocation>,
    lctx: Arc<LocationContext>,
) -> Result<Action, Error> {
    let ctx = &lctx.ctx;
    let _timer = ctx.metrics.reconcile_timer("location");
    let name = bsl.name_any();
    let ns = bsl.namespace().unwrap_or_default();
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();

    let outcome = match resolve_target(&bsl, ctx).await {
        Ok(target) => {
            probe::probe(
                &target,
                &format!("{}-{}", name, bsl.uid().unwrap_or_default()),
            )
            .await
        }
        Err(f) => Err(f),
    };

    // Default-location arbitration: oldest location claiming default wins.
    let all = lctx.locations.state();
    let winner = effective_default(all.iter().map(|l| {
        (
            l.name_any(),
            l.creation_timestamp().map(|t| t.0),
            l.spec.default,
        )
    }));
    let conflict = bsl.spec.default && winner.as_deref() != Some(name.as_str());

    let status = build_status(
        bsl.status.as_ref(),
        bsl.meta().generation,
        &outcome,
        conflict.then_some(winner.as_deref().unwrap_or("")),
        now,
    );
    let changed_phase = bsl.status.as_ref().and_then(|s| s.phase) != status.phase
        || bsl.status.as_ref().and_then(|s| s.reason.clone()) != status.reason;
    let patch = serde_json::json!({
        "apiVersion": "holdfast.dev/v1alpha1",
        "kind": "BackupStorageLocation",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch BackupStorageLocation status"))?;

    ctx.metrics.set_location_available(&name, outcome.is_ok());
    if changed_phase {
        let (type_, reason, note) = match &outcome {
            Ok(()) => (
                EventType::Normal,
                "Available".to_string(),
                "location validated".to_string(),
            ),
            Err(f) => (
                EventType::Warning,
                f.reason.as_str().to_string(),
                f.message.clone(),
            ),
        };
        info!(location = %name, reason = %reason, "location {}", if outcome.is_ok() { "available" } else { "unavailable" });
        ctx.publish(
            &bsl.object_ref(&()),
            Event {
                type_,
                reason,
                note: Some(note),
                action: "Validate".into(),
                secondary: None,
            },
        )
        .await;
    }
    if conflict {
        ctx.publish(
            &bsl.object_ref(&()),
            Event {
                type_: EventType::Warning,
                reason: DEFAULT_CONFLICT.into(),
                note: Some(format!(
                    "location {:?} is already the default; set spec.default: false here",
                    winner.unwrap_or_default()
                )),
                action: "Validate".into(),
                secondary: None,
            },
        )
        .await;
    }
    let interval = bsl
        .spec
        .validation_interval
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_INTERVAL)
        .max(Duration::from_secs(5));
    Ok(Action::requeue(interval))
}

fn error_policy(
    bsl: Arc<BackupStorageLocation>,
    err: &Error,
    lctx: Arc<LocationContext>,
) -> Action {
    let ctx = &lctx.ctx;
    warn!(location = %bsl.name_any(), error = %err, "location reconcile error");
    ctx.metrics.reconcile_error("location");
    Action::requeue(Duration::from_secs(10))
}

/// Reads Secrets and builds the probe target; a failure here is a configuration problem.
pub(crate) async fn resolve_target(
    bsl: &BackupStorageLocation,
    ctx: &Context,
) -> Result<ProbeTarget, ProbeFailure> {
    let ns = bsl.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = &bsl.spec;
    let (mut access, mut secret_key, mut token) = (None, None, None);
    if let Some(creds) = &spec.credentials {
        let name = &creds.secret_ref.name;
        let secret = secrets.get_opt(name).await.map_err(|e| ProbeFailure {
            reason: Reason::MissingCredentials,
            message: format!("reading Secret {ns}/{name}: {e}"),
        })?;
        let secret = secret.ok_or_else(|| ProbeFailure {
            reason: Reason::MissingCredentials,
            message: format!("Secret {ns}/{name} named by spec.credentials.secretRef does not exist; create it with keys accessKeyId and secretAccessKey"),
        })?;
        let data = secret_data(&secret);
        access = data.get("accessKeyId").cloned();
        secret_key = data.get("secretAccessKey").cloned();
        token = data.get("sessionToken").cloned();
        if access.is_none() || secret_key.is_none() {
            return Err(ProbeFailure {
                reason: Reason::MissingCredentials,
                message: format!(
                    "Secret {ns}/{name} needs keys accessKeyId and secretAccessKey (found: {})",
                    data.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let ca_bundle = match &spec.s3.ca_bundle {
        None => None,
        Some(ca) => {
            let r = &ca.secret_ref;
            let secret = secrets
                .get_opt(&r.name)
                .await
                .ok()
                .flatten()
                .ok_or_else(|| ProbeFailure {
                    reason: Reason::InvalidConfiguration,
                    message: format!(
                        "Secret {ns}/{} named by spec.s3.caBundle.secretRef does not exist",
                        r.name
                    ),
                })?;
            let pem = secret_data(&secret)
                .get(&r.key)
                .cloned()
                .ok_or_else(|| ProbeFailure {
                    reason: Reason::InvalidConfiguration,
                    message: format!(
                        "Secret {ns}/{} has no key {:?} (spec.s3.caBundle.secretRef.key)",
                        r.name, r.key
                    ),
                })?;
            let path = std::env::temp_dir()
                .join(format!("holdfast-ca-{}.pem", bsl.uid().unwrap_or_default()));
            std::fs::write(&path, pem).map_err(|e| ProbeFailure {
                reason: Reason::InvalidConfiguration,
                message: format!("writing CA bundle to {}: {e}", path.display()),
            })?;
            Some(path)
        }
    };
    let prefix = spec.s3.prefix.clone().unwrap_or_default();
    let marker_prefix = if prefix.is_empty() {
        "holdfast/".to_string()
    } else {
        format!("{prefix}/holdfast/")
    };
    Ok(ProbeTarget {
        config: S3Config {
            endpoint: spec.s3.endpoint.clone(),
            region: spec.s3.region.clone(),
            bucket: spec.s3.bucket.clone(),
            prefix: String::new(),
            path_style: spec.s3.force_path_style,
            ca_bundle,
            access_key_id: access,
            secret_access_key: secret_key,
            session_token: token,
            storage_class: None,
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            unsigned_payload: None,
        },
        marker_prefix,
        read_write: spec.access_mode == AccessMode::ReadWrite,
    })
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(s) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), s.trim_end_matches(['\n', '\r']).to_string());
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The location that is the default: the oldest of those claiming it (ties by name).
pub fn effective_default(
    locations: impl Iterator<Item = (String, Option<Timestamp>, bool)>,
) -> Option<String> {
    locations
        .filter(|(_, _, d)| *d)
        .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
        .map(|(n, _, _)| n)
}

/// The status for a validation outcome. Pure.
pub fn build_status(
    old: Option<&BackupStorageLocationStatus>,
    generation: Option<i64>,
    outcome: &Result<(), ProbeFailure>,
    default_conflict_with: Option<&str>,
    now: Timestamp,
) -> BackupStorageLocationStatus {
    let mut conds = old.map(|s| s.conditions.clone()).unwrap_or_default();
    let mut status = BackupStorageLocationStatus {
        last_validation_time: Some(Time(now)),
        observed_generation: generation,
        ..Default::default()
    };
    match outcome {
        Ok(()) => {
            status.phase = Some(LocationPhase::Available);
            conditions::set(
                &mut conds,
                READY,
                true,
                "Validated",
                "the location is reachable and usable",
                generation,
                now,
            );
            conditions::set(&mut conds, STALLED, false, "Validated", "", generation, now);
        }
        Err(f) => {
            status.phase = Some(LocationPhase::Unavailable);
            status.reason = Some(f.reason.as_str().to_string());
            status.message = Some(f.message.clone());
            conditions::set(
                &mut conds,
                READY,
                false,
                f.reason.as_str(),
                &f.message,
                generation,
                now,
            );
            conditions::set(
                &mut conds,
                STALLED,
                true,
                f.reason.as_str(),
                &f.message,
                generation,
                now,
            );
        }
    }
    conditions::set(
        &mut conds,
        RECONCILING,
        false,
        "Validated",
        "",
        generation,
        now,
    );
    match default_conflict_with {
        Some(winner) => conditions::set(
            &mut conds,
            DEFAULT_CONFLICT,
            true,
            "AnotherDefault",
            &format!(
                "location {winner:?} is older and already the default; set spec.default: false here"
            ),
            generation,
            now,
        ),
        None => conditions::remove(&mut conds, DEFAULT_CONFLICT),
    }
    status.conditions = conds;
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    #[test]
    fn oldest_default_wins() {
        let locs = vec![
            ("b".to_string(), Some(ts(20)), true),
            ("a".to_string(), Some(ts(30)), true),
            ("c".to_string(), Some(ts(10)), false),
        ];
        assert_eq!(effective_default(locs.into_iter()), Some("b".into()));
        assert_eq!(
            effective_default(vec![("x".to_string(), None, false)].into_iter()),
            None
        );
    }

    #[test]
    fn unavailable_then_available_status() {
        let fail = Err(ProbeFailure {
            reason: Reason::InvalidCredentials,
            message: "bad keys".into(),
        });
        let s1 = build_status(None, Some(1), &fail, None, ts(100));
        assert_eq!(s1.phase, Some(LocationPhase::Unavailable));
        assert_eq!(s1.reason.as_deref(), Some("InvalidCredentials"));
        let ready = conditions::get(&s1.conditions, READY).expect("ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.observed_generation, Some(1));

        let s2 = build_status(Some(&s1), Some(1), &Ok(()), None, ts(200));
        assert_eq!(s2.phase, Some(LocationPhase::Available));
        assert_eq!(s2.reason, None);
        let ready = conditions::get(&s2.conditions, READY).expect("ready");
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time, Time(ts(200)));
        assert_eq!(
            conditions::get(&s2.conditions, STALLED).map(|c| c.status.as_str()),
            Some("False")
        );
    }

    #[test]
    fn default_conflict_condition_comes_and_goes() {
        let s = build_status(None, Some(1), &Ok(()), Some("primary"), ts(1));
        assert!(conditions::get(&s.conditions, DEFAULT_CONFLICT).is_some());
        let s = build_status(Some(&s), Some(1), &Ok(()), None, ts(2));
        assert!(conditions::get(&s.conditions, DEFAULT_CONFLICT).is_none());
    }
}
