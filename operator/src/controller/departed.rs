//! What deleting a finished Backup or a Schedule does (design record 0015).
//!
//! Finished Backups and Schedules carry no finalizer: an operator that is uninstalled, or
//! whose namespace is deleted, must leave nothing that can never be deleted. Their deletion
//! is seen here instead, from the watch's last state of the object:
//! - a Backup's DataUploads are deleted and, with `deletionPolicy: Delete`, its snapshots and
//!   copies removed;
//! - a Schedule with `onDelete: Delete` has its Backups deleted (and they their data).
//!
//! Unless its namespace is being deleted (or gone): a namespace deleted, on purpose or by
//! mistake, with the operator's or the application's, never takes the backups' data along.
//! A deletion that happens while no operator runs is not seen: the data stays (the safe side)
//! and can be deleted again later.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use holdfast_api::backup::Backup;
use holdfast_api::schedule::{Schedule, ScheduleDeletion};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::runtime::Context;

/// Annotation on a Backup whose data the operator already removed (an expired backup, whose
/// data goes before its object).
pub const DATA_REMOVED: &str = "holdfast.dev/data-removed";

/// How long the removal of a deleted backup's data is retried.
const GIVE_UP: Duration = Duration::from_secs(3600);

/// Watches deletions until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send) {
    let backups = watcher(
        Api::<Backup>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|e| async move {
        match e {
            Ok(watcher::Event::Delete(b)) => Some(Gone::Backup(Box::new(b))),
            _ => None,
        }
    });
    let schedules = watcher(
        Api::<Schedule>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|e| async move {
        match e {
            Ok(watcher::Event::Delete(s)) => Some(Gone::Schedule(Box::new(s))),
            _ => None,
        }
    });
    let mut gone = futures::stream::select(backups, schedules).boxed();
    let mut tick = tokio::time::interval(NAMESPACE_POLL);
    let mut released = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                // The last chance when the namespace's deletion is what stops the operator.
                if !released {
                    release_if_leaving(&ctx).await;
                }
                return;
            }
            next = gone.next() => match next {
                Some(g) => { tokio::spawn(handle(ctx.clone(), g)); }
                None => return,
            },
            _ = tick.tick(), if !released => {
                released = release_if_leaving(&ctx).await;
            }
        }
    }
}

/// How often the operator looks whether its own namespace is being deleted.
const NAMESPACE_POLL: Duration = Duration::from_secs(5);

/// When the operator's own namespace is being deleted, removes its finalizers from the
/// objects there (running ones: finished ones have none), keeping their data: the namespace
/// must not hang on objects that no operator will ever look at again. True when it did.
async fn release_if_leaving(ctx: &Context) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let leaving = matches!(api.get_opt(&ctx.namespace).await, Ok(Some(n)) if n.metadata.deletion_timestamp.is_some());
    if !leaving {
        return false;
    }
    warn!(namespace = %ctx.namespace, "the operator namespace is being deleted: releasing the objects in it and keeping their data");
    let ns = ctx.namespace.as_str();
    release::<Backup>(ctx, ns, super::backup::FINALIZER).await;
    release::<holdfast_api::restore::Restore>(ctx, ns, super::restore::FINALIZER).await;
    release::<Schedule>(ctx, ns, super::schedule::FINALIZER).await;
    release::<holdfast_api::transfer::DataUpload>(ctx, ns, super::transfer::FINALIZER).await;
    release::<holdfast_api::transfer::DataDownload>(ctx, ns, super::transfer::FINALIZER).await;
    true
}

async fn release<K>(ctx: &Context, ns: &str, finalizer: &str)
where
    K: crate::runtime::kube_ext::Object + Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let Ok(list) = api.list(&Default::default()).await else {
        return;
    };
    for o in list.items {
        if o.finalizers().iter().any(|f| f == finalizer)
            && let Err(e) = crate::runtime::kube_ext::remove_finalizer(&api, &o, finalizer).await
        {
            warn!(name = %o.name_any(), error = %e, "could not release an object of the deleted operator namespace");
        }
    }
}

enum Gone {
    Backup(Box<Backup>),
    Schedule(Box<Schedule>),
}

/// Whether this operator answers for object `o` (in its namespace, or claimed by it).
fn ours<K: Resource>(o: &K, claimed: Option<&str>, ctx: &Context) -> bool {
    o.meta().namespace.as_deref() == Some(ctx.namespace.as_str())
        || claimed == Some(ctx.namespace.as_str())
}

/// Whether a deleted Backup is left to this module: a finished one deleted without its
/// finalizer (one deleted through it was cleaned up by the controller). Pure.
pub(crate) fn left_to_us(b: &Backup, finalizer: &str) -> bool {
    let finished = b
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p.is_terminal());
    finished && !b.finalizers().iter().any(|f| f == finalizer)
}

async fn handle(ctx: Arc<Context>, gone: Gone) {
    match gone {
        Gone::Backup(b) => {
            let claimed = b
                .status
                .as_ref()
                .and_then(|s| s.operator_namespace.as_deref());
            if !ours(&*b, claimed, &ctx) || !left_to_us(&b, super::backup::FINALIZER) {
                return;
            }
            let start = std::time::Instant::now();
            let mut wait = Duration::from_secs(2);
            loop {
                match super::backup::after_deletion(&b, &ctx).await {
                    Ok(true) => {
                        info!(backup = %b.name_any(), namespace = %b.namespace().unwrap_or_default(), policy = ?b.spec.deletion_policy, "deleted backup cleaned up");
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(backup = %b.name_any(), error = %e, "removing a deleted backup's data; will retry");
                        wait = (wait * 2).min(Duration::from_secs(60));
                    }
                }
                if start.elapsed() > GIVE_UP {
                    warn!(backup = %b.name_any(), "gave up removing a deleted backup's data; it stays in the location");
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        }
        Gone::Schedule(s) => {
            let claimed = s
                .status
                .as_ref()
                .and_then(|s| s.operator_namespace.as_deref());
            if !ours(&*s, claimed, &ctx)
                || s.spec.on_delete != ScheduleDeletion::Delete
                || namespace_leaving(&ctx, &s.namespace().unwrap_or_default()).await
            {
                return;
            }
            let start = std::time::Instant::now();
            loop {
                match super::schedule::destroy(&s, &ctx).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(schedule = %s.name_any(), error = %e, "deleting a deleted schedule's backups; will retry")
                    }
                }
                if start.elapsed() > GIVE_UP {
                    warn!(schedule = %s.name_any(), "gave up deleting a deleted schedule's backups");
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Whether namespace `ns` is being deleted or is gone (then its objects' data is kept).
pub async fn namespace_leaving(ctx: &Context, ns: &str) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(ns).await {
        Ok(Some(n)) => n.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        // Unknown: keep the data.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_backups_deleted_without_their_finalizer_are_left_to_us() {
        let b = |phase: &str, policy: &str, ann: bool, fin: bool| -> Backup {
            let mut v = serde_json::json!({
                "apiVersion": "holdfast.dev/v1alpha1", "kind": "Backup",
                "metadata": {"name": "b", "namespace": "n"},
                "spec": {"deletionPolicy": policy},
                "status": {"phase": phase},
            });
            if ann {
                v["metadata"]["annotations"] = serde_json::json!({DATA_REMOVED: "true"});
            }
            if fin {
                v["metadata"]["finalizers"] = serde_json::json!(["f"]);
            }
            serde_json::from_value(v).expect("backup")
        };
        assert!(left_to_us(&b("Completed", "Delete", false, false), "f"));
        assert!(left_to_us(
            &b("PartiallyFailed", "Retain", true, false),
            "f"
        ));
        assert!(!left_to_us(&b("Completed", "Delete", false, true), "f"));
        assert!(!left_to_us(&b("InProgress", "Delete", false, false), "f"));
    }
}
