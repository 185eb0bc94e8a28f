//! The reconcile kernel: the one sequence every controller runs (design record 0006).
//!
//! fresh read → claim (shared kinds, [`scope`]) → deletion and finalizer → terminal
//! short-circuit → one `step` of the controller's state machine → status written by
//! server-side apply with `observedGeneration` and the standard conditions (`Ready`,
//! `Reconciling`, `Stalled`). Errors back off per object (1 s doubling to a minute); a
//! persistent error (wrong repository password, RBAC, quota, missing bucket), or any error
//! three times in a row, of a step or of a deletion's cleanup, is shown as `Stalled` with a
//! reason and message and one Warning Event, not only in the log. A controller is a [`Reconciler`]: its types and phase functions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::conditions::{self, READY, RECONCILING, STALLED};
use super::error::Stall;
use super::kube_ext::{self, Object};
use super::{Context, Error, scope};

/// Errors in a row after which even a transient error is shown as `Stalled`.
pub const STALL_AFTER: u32 = 3;
/// How often an object whose cleanup is not finished is looked at again.
pub const CLEANUP_POLL: Duration = Duration::from_secs(2);
/// Reconciles of one kind running at once. Unbounded, a start with 5,000 Backups ran 5,000
/// reconciles together, each with its own connection to the API server (hyper opens one per
/// request in flight): ~370 MiB held, mostly connection buffers and TLS state. Passes are
/// short (a step, then a requeue), so a few in flight keep up.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// Where an object stands, for the standard conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Work goes on: `Reconciling`.
    Progressing,
    /// Done and good: `Ready`.
    Ready,
    /// Failed, or unusable until someone fixes it: `Stalled`.
    Failed,
    /// Finished but not good (cancelled, partly failed): `Stalled` too, since it will never
    /// become Ready (kstatus reads a lone `Ready=False` as InProgress, forever).
    Ended,
}

/// The standard fields of a status: its conditions and `observedGeneration`
/// (implemented with [`standard_status!`](crate::standard_status)).
pub trait StandardFields {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

/// Implements [`StandardFields`] for status types with fields `conditions` and
/// `observed_generation`.
#[macro_export]
macro_rules! standard_status {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::runtime::kernel::StandardFields for $t {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )*};
}

standard_status!(
    holdfast_api::BackupStatus,
    holdfast_api::RestoreStatus,
    holdfast_api::TransferStatus,
    holdfast_api::BackupStorageLocationStatus,
    holdfast_api::ScheduleStatus,
    holdfast_api::BackupRepositoryStatus,
);

/// A status the kernel can write: its summary besides the standard fields.
pub trait Status:
    StandardFields + Clone + PartialEq + Default + Serialize + Send + Sync + 'static
{
    /// State, reason and message for the conditions.
    fn summary(&self) -> (State, String, String);
    /// A terminal status is never stepped again; [`Reconciler::finished`] runs instead.
    fn is_terminal(&self) -> bool {
        false
    }
    /// The operator namespace that claimed the object (kinds shared by several operators).
    fn claimed_by(&self) -> Option<&str> {
        None
    }
}

/// A controller's error enum: a variant per step, each wrapping the [`Error`] that caused it
/// (whose kind decides how it shows in the status), and `Kernel` for the kernel's own calls.
pub trait ControllerError: std::error::Error + From<Error> + Send + Sync + 'static {
    /// The cause.
    fn root(&self) -> &Error;
    /// The step that failed (`None`: the kernel's own calls).
    fn step(&self) -> Option<&'static str>;
    /// How this error shows in the status: the cause's reason, the step and the cause's
    /// message.
    fn stall(&self) -> Stall {
        let mut s = self.root().stall();
        if let Some(step) = self.step() {
            s.message = format!("{step}: {}", s.message);
        }
        s
    }
}

/// A controller: its kind, its status and its phase functions; the kernel does the rest.
pub trait Reconciler: Send + Sync + Sized + 'static {
    type Object: Object
        + Resource<Scope = kube::core::NamespaceResourceScope>
        + HasStatus<Status = Self::Status>;
    type Status: Status;
    /// The controller's error enum (a variant per step).
    type Error: ControllerError;
    /// Kind, as in `apiVersion`/`kind` of the status patch.
    const KIND: &'static str;
    /// Bounded metric and log label (`backup`, `dataupload`...).
    const METRIC: &'static str;
    /// Field manager of the controller's writes.
    const MANAGER: &'static str;
    /// Finalizer with one purpose: the object's [`Reconciler::cleanup`] ran.
    const FINALIZER: Option<&'static str> = None;
    /// Whether objects may be in tenant namespaces shared by several operators.
    const SHARED: bool = false;

    /// One pass of the state machine over `st` (the kernel writes `st` back).
    fn step(
        &self,
        o: &Self::Object,
        ctx: &Context,
        st: &mut Self::Status,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// What a finished object still needs (expiry, late cleanup).
    fn finished(
        &self,
        _o: &Self::Object,
        _ctx: &Context,
        _st: &Self::Status,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send {
        async { Ok(Action::await_change()) }
    }

    /// Whether this object needs [`Reconciler::FINALIZER`] now (default: while it is not
    /// finished). When not, the kernel removes it, so objects with nothing to clean up are
    /// never held on deletion. A finished object keeps one it has until
    /// [`Reconciler::finished`] has nothing more to do (see [`Reconciler::hold_finished`]):
    /// finished objects carry no finalizer, so an uninstalled operator leaves none that
    /// nobody would remove (design record 0015).
    fn wants_finalizer(&self, o: &Self::Object) -> bool {
        !o.status().is_some_and(Status::is_terminal)
    }

    /// Whether a finished object keeps its finalizer after [`Reconciler::finished`] returned
    /// `action` (default: while that asks to be called again, its cleanup is not done).
    fn hold_finished(&self, action: &Action) -> bool {
        *action != Action::await_change()
    }

    /// Runs on deletion while the finalizer is set; true when done (the finalizer goes).
    fn cleanup(
        &self,
        _o: &Self::Object,
        _ctx: &Context,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        async { Ok(true) }
    }
}

/// A controller's reconciler with the shared context and its per-object error counts.
pub struct Kernel<R: Reconciler> {
    pub ctx: Arc<Context>,
    pub reconciler: R,
    failures: Mutex<HashMap<String, u32>>,
}

impl<R: Reconciler> Kernel<R> {
    fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map(|f| f.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn record(&self, key: String, failed: bool) {
        if let Ok(mut f) = self.failures.lock() {
            if failed {
                *f.entry(key).or_default() += 1;
            } else {
                f.remove(&key);
            }
        }
    }
}

/// A controller of kind `K` whose cache keeps objects without their `managedFields` (every
/// reconcile reads the object fresh; the cache only triggers and answers lookups), which are
/// about a third of a small object's memory.
pub fn controller<K>(api: Api<K>, config: watcher::Config) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream =
        reflector(writer, watcher(api, config).modify(super::cache::strip)).applied_objects();
    Controller::for_stream(stream, reader)
}

/// Runs `controller` (built with the kind's watches) with `reconciler` until `shutdown`.
pub async fn run<R: Reconciler>(
    ctx: Arc<Context>,
    reconciler: R,
    controller: Controller<R::Object>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let kernel = Arc::new(Kernel {
        ctx,
        reconciler,
        failures: Mutex::new(HashMap::new()),
    });
    controller
        .with_config(Config::default().concurrency(RECONCILE_CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<R>, error_policy::<R>, kernel)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, kind = R::KIND, "reconcile failed");
            }
        })
        .await;
}

fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

async fn reconcile<R: Reconciler>(
    o: Arc<R::Object>,
    k: Arc<Kernel<R>>,
) -> Result<Action, R::Error> {
    let _timer = k.ctx.metrics.reconcile_timer(R::METRIC);
    let r = sequence(&*o, &k).await;
    k.record(key(&*o), r.is_err());
    r
}

/// The sequence every controller shares.
async fn sequence<R: Reconciler>(o: &R::Object, k: &Kernel<R>) -> Result<Action, R::Error> {
    let ctx = &*k.ctx;
    let api: Api<R::Object> =
        Api::namespaced(ctx.client.clone(), &o.namespace().unwrap_or_default());
    let Some(o) = kube_ext::current(&api, o).await? else {
        return Ok(Action::await_change());
    };
    if R::SHARED {
        let claimed = o.status().and_then(|s| s.claimed_by());
        if let Some(action) = scope::take_up(ctx, &api, &*o, claimed, R::MANAGER).await? {
            return Ok(action);
        }
    }
    if o.meta().deletion_timestamp.is_some() {
        let Some(f) = R::FINALIZER.filter(|f| o.finalizers().iter().any(|x| x == f)) else {
            return Ok(Action::await_change());
        };
        match k.reconciler.cleanup(&o, ctx).await {
            Ok(true) => {}
            Ok(false) => return Ok(Action::requeue(CLEANUP_POLL)),
            Err(e) => {
                let old = o.status().cloned().unwrap_or_default();
                return Err(failed(k, &api, &o, &old, e).await);
            }
        }
        kube_ext::remove_finalizer(&api, &*o, f).await?;
        return Ok(Action::await_change());
    }
    if let Some(f) = R::FINALIZER {
        let has = o.finalizers().iter().any(|x| x == f);
        let terminal = o.status().is_some_and(Status::is_terminal);
        if k.reconciler.wants_finalizer(&o) {
            if kube_ext::add_finalizer(&api, &*o, f).await? {
                return Ok(Action::await_change());
            }
        } else if has && !terminal {
            kube_ext::remove_finalizer(&api, &*o, f).await?;
            return Ok(Action::await_change());
        }
    }
    let old = o.status().cloned().unwrap_or_default();
    if old.is_terminal() {
        let action = k.reconciler.finished(&o, ctx, &old).await?;
        if let Some(f) = R::FINALIZER
            && o.finalizers().iter().any(|x| x == f)
            && !k.reconciler.hold_finished(&action)
        {
            kube_ext::remove_finalizer(&api, &*o, f).await?;
        }
        return Ok(action);
    }
    let mut st = old.clone();
    match k.reconciler.step(&o, ctx, &mut st).await {
        Ok(action) => {
            write_status::<R>(&api, &o, &old, st, None).await?;
            Ok(action)
        }
        Err(e) => Err(failed(k, &api, &o, &old, e).await),
    }
}

/// A step or cleanup failed: shown as `Stalled` at once when retrying alone will not help,
/// or when it failed [`STALL_AFTER`] times in a row; returned for the backoff.
async fn failed<R: Reconciler>(
    k: &Kernel<R>,
    api: &Api<R::Object>,
    o: &R::Object,
    old: &R::Status,
    e: R::Error,
) -> R::Error {
    let stall = e.stall();
    if stall.persistent || k.failures(&key(o)) + 1 >= STALL_AFTER {
        show_stall::<R>(&k.ctx, api, o, old, &stall).await;
    }
    e
}

/// Writes `Stalled` (and a Warning Event when it is new) for an error; failures to do so are
/// logged only, the error itself is what the caller returns.
async fn show_stall<R: Reconciler>(
    ctx: &Context,
    api: &Api<R::Object>,
    o: &R::Object,
    old: &R::Status,
    stall: &Stall,
) {
    let was = conditions::get(old.conditions(), STALLED)
        .is_some_and(|c| c.status == "True" && c.reason == stall.reason);
    if let Err(e) = write_status::<R>(api, o, old, old.clone(), Some(stall)).await {
        warn!(kind = R::KIND, name = %o.name_any(), error = %e, "could not write Stalled");
    }
    if !was {
        ctx.event(o, EventType::Warning, stall.reason, &stall.message, R::KIND)
            .await;
    }
}

/// Computes the conditions and `observedGeneration` of `st` and writes it when it differs
/// from `old` (a status that did not change is not written: no needless watch events).
pub async fn write_status<R: Reconciler>(
    api: &Api<R::Object>,
    o: &R::Object,
    old: &R::Status,
    mut st: R::Status,
    stall: Option<&Stall>,
) -> Result<(), Error> {
    finalize(&mut st, o.meta().generation, stall, Timestamp::now());
    if st == *old {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": R::Object::api_version(&()),
        "kind": R::KIND,
        "status": st,
    });
    api.patch_status(
        &o.name_any(),
        &PatchParams::apply(R::MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch status"))?;
    Ok(())
}

/// Sets `observedGeneration` and the standard conditions from the status's summary and the
/// current error, if any. Pure.
pub fn finalize<S: Status>(
    st: &mut S,
    generation: Option<i64>,
    stall: Option<&Stall>,
    now: Timestamp,
) {
    st.set_observed_generation(generation);
    let (state, reason, message) = st.summary();
    let c = st.conditions_mut();
    let g = generation;
    conditions::set(c, READY, state == State::Ready, &reason, &message, g, now);
    if state == State::Progressing {
        conditions::set(c, RECONCILING, true, &reason, &message, g, now);
    } else {
        conditions::remove(c, RECONCILING);
    }
    match (stall, state) {
        (Some(s), _) => conditions::set(c, STALLED, true, s.reason, &s.message, g, now),
        (None, State::Failed | State::Ended) => {
            conditions::set(c, STALLED, true, &reason, &message, g, now)
        }
        (None, _) => conditions::remove(c, STALLED),
    }
}

/// Per-object backoff after `failures` errors in a row: 1 s doubling, at most a minute. Pure.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(1 << exp).min(Duration::from_secs(60))
}

fn error_policy<R: Reconciler>(o: Arc<R::Object>, e: &R::Error, k: Arc<Kernel<R>>) -> Action {
    let n = k.failures(&key(&*o)).max(1);
    let chain = error_chain(e);
    warn!(kind = R::KIND, namespace = %o.namespace().unwrap_or_default(), name = %o.name_any(), failures = n, error = %chain, "reconcile error");
    k.ctx.metrics.reconcile_error(R::METRIC);
    Action::requeue(backoff(n))
}

/// An error with its causes, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Default, Serialize)]
    struct S {
        state: Option<&'static str>,
        conditions: Vec<Condition>,
        observed_generation: Option<i64>,
    }

    crate::standard_status!(S);

    impl Status for S {
        fn summary(&self) -> (State, String, String) {
            let state = match self.state {
                Some("ok") => State::Ready,
                Some("failed") => State::Failed,
                Some("cancelled") => State::Ended,
                _ => State::Progressing,
            };
            (state, self.state.unwrap_or("Pending").into(), String::new())
        }
    }

    fn types(s: &S) -> Vec<(String, String)> {
        let mut v: Vec<_> = s
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        v.sort();
        v
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    #[test]
    fn conditions_follow_the_state() {
        let mut s = S::default();
        finalize(&mut s, Some(3), None, t(1));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            types(&s),
            [
                ("Ready".into(), "False".into()),
                ("Reconciling".into(), "True".into())
            ]
        );
        s.state = Some("ok");
        finalize(&mut s, Some(3), None, t(2));
        assert_eq!(types(&s), [("Ready".into(), "True".into())]);
        s.state = Some("failed");
        finalize(&mut s, Some(3), None, t(3));
        assert_eq!(
            types(&s),
            [
                ("Ready".into(), "False".into()),
                ("Stalled".into(), "True".into())
            ]
        );
        s.state = Some("cancelled");
        finalize(&mut s, Some(3), None, t(4));
        assert_eq!(
            types(&s),
            [
                ("Ready".into(), "False".into()),
                ("Stalled".into(), "True".into())
            ]
        );
    }

    #[test]
    fn an_error_stalls_a_progressing_object_until_a_pass_succeeds() {
        let mut s = S::default();
        let stall = Stall {
            reason: "RepositoryPasswordWrong",
            message: "fix the Secret".into(),
            persistent: true,
        };
        finalize(&mut s, None, Some(&stall), t(1));
        let c = conditions::get(&s.conditions, STALLED).expect("stalled");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RepositoryPasswordWrong")
        );
        assert!(conditions::get(&s.conditions, RECONCILING).is_some());
        let before = s.clone();
        finalize(&mut s, None, Some(&stall), t(9));
        assert!(s == before, "an unchanged stall does not change the status");
        finalize(&mut s, None, None, t(10));
        assert!(conditions::get(&s.conditions, STALLED).is_none());
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0).as_secs(), 1);
    }
}
