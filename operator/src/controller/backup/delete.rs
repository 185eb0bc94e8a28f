//! Ending a backup early or late: cancel (`spec.cancel`), deletion per `deletionPolicy`, and
//! expiry after `ttl`.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, BackupStatus, DeletionPolicy};
use holdfast_api::reasons::{BackupReason, LocationReason};
use holdfast_api::transfer::DataUpload;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{DEFAULT_SNAPSHOT_TIMEOUT, POLL, fail, publish, uid_selector};
use crate::controller::departed::DATA_REMOVED;
use crate::runtime::error::Refusal;
use crate::runtime::kube_ext::delete;
use crate::runtime::{Context, Error};
use crate::snapshot::VolumeSnapshot;
use crate::storage::{self, repository};

/// `spec.cancel`: stops the copies and removes the snapshots and bucket objects, then ends
/// the backup as Cancelled.
pub(super) async fn cancel(
    b: &Backup,
    ctx: &Context,
    st: &mut BackupStatus,
) -> Result<Action, Error> {
    // A pod frozen by its pre hooks is thawed first; claims leave a group not yet cut.
    super::hooks::run_post(b, ctx, st, true).await;
    super::group::unlabel_waiting(ctx, st).await?;
    cancel_children(b, ctx).await?;
    let snapshots_left = remove_snapshots(b, ctx).await?;
    if let Some(loc) = &st.storage_location
        && let Ok(Ok(bsl)) = storage::location(ctx, Some(loc)).await
        && let Err(e) = storage::delete_backup_objects(ctx, &bsl, b).await
    {
        // Best effort: a cancelled backup tries to leave no objects behind in the bucket.
        warn!(backup = %b.name_any(), error = %e, "could not remove the cancelled backup's objects");
    }
    if snapshots_left > 0 || children_left(b, ctx).await? {
        st.reason = Some(BackupReason::Cancelling.into());
        return Ok(Action::requeue(POLL));
    }
    publish(
        ctx,
        b,
        EventType::Normal,
        BackupReason::Cancelled,
        "backup cancelled; its snapshots, copies and objects were removed",
    )
    .await;
    let r = Refusal::new(
        BackupReason::Cancelled,
        "cancelled by spec.cancel; nothing of it was kept",
    );
    Ok(fail(st, BackupPhase::Cancelled, r))
}

/// Asks every DataUpload of the backup to stop (its controller cleans up after it).
async fn cancel_children(b: &Backup, ctx: &Context) -> Result<(), Error> {
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for du in uploads(b, &api).await? {
        if du.metadata.deletion_timestamp.is_none() {
            delete(
                &api,
                &du.name_any(),
                &DeleteParams::default(),
                "delete DataUpload",
            )
            .await?;
        }
    }
    Ok(())
}

async fn uploads(b: &Backup, api: &Api<DataUpload>) -> Result<Vec<DataUpload>, Error> {
    let lp = ListParams::default().labels(&uid_selector(b));
    Ok(api
        .list(&lp)
        .await
        .map_err(Error::kube("list DataUploads"))?
        .items)
}

async fn children_left(b: &Backup, ctx: &Context) -> Result<bool, Error> {
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(!uploads(b, &api).await?.is_empty())
}

/// Deletes the backup's VolumeSnapshots (their contents go with them per the class's
/// policy); returns how many still exist (being deleted).
pub(super) async fn remove_snapshots(b: &Backup, ctx: &Context) -> Result<usize, Error> {
    let api: Api<VolumeSnapshot> = Api::all(ctx.client.clone());
    let lp = ListParams::default().labels(&uid_selector(b));
    let items = api
        .list(&lp)
        .await
        .map_err(Error::kube("list VolumeSnapshots"))?
        .items;
    let now = Timestamp::now();
    let groups = super::group::remove_groups(b, ctx).await?;
    // Members of a group are not labelled: they go with their group.
    for vs in items.iter().filter(|vs| deletable(vs, now)) {
        let api: Api<VolumeSnapshot> =
            Api::namespaced(ctx.client.clone(), &vs.namespace().unwrap_or_default());
        delete(
            &api,
            &vs.name_any(),
            &DeleteParams::default(),
            "delete VolumeSnapshot",
        )
        .await?;
    }
    Ok(items.len() + groups)
}

/// Whether a snapshot may be deleted now. One still being cut is deleted once it is ready (or
/// has failed): deleting it mid-creation can leave it stuck in the snapshot-controller until
/// its next resync (seen with external-snapshotter v8.6: the content turned ready after the
/// delete). Pure.
fn deletable(vs: &VolumeSnapshot, now: Timestamp) -> bool {
    if vs.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let st = vs.status.clone().unwrap_or_default();
    let age = vs
        .creation_timestamp()
        .map(|t| now.duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    st.ready_to_use == Some(true) || st.error.is_some() || age >= DEFAULT_SNAPSHOT_TIMEOUT
}

/// Deletion: stop the children, then remove or keep the data per `deletionPolicy`; true when
/// done.
pub(super) async fn cleanup(b: &Backup, ctx: &Context) -> Result<bool, Error> {
    // A backup deleted while pods are frozen by its pre hooks thaws them first (the status
    // is not written any more, so this may run again on a later pass: at least once).
    let mut st = b.status.clone().unwrap_or_default();
    super::hooks::run_post(b, ctx, &mut st, true).await;
    super::group::unlabel_waiting(ctx, &st).await?;
    cancel_children(b, ctx).await?;
    if children_left(b, ctx).await? {
        return Ok(false);
    }
    if b.spec.deletion_policy == DeletionPolicy::Delete
        && !crate::controller::departed::namespace_leaving(ctx, &b.namespace().unwrap_or_default())
            .await
        && !remove_data(b, ctx).await?
    {
        return Ok(false);
    }
    info!(backup = %b.name_any(), policy = ?b.spec.deletion_policy, "backup deleted");
    Ok(true)
}

/// What a finished Backup deleted without its finalizer leaves to do
/// (`controller::departed`): its DataUploads go, and its data per `deletionPolicy` unless it
/// was removed already (expiry) or its namespace is being deleted. True when done.
pub async fn after_deletion(b: &Backup, ctx: &Context) -> Result<bool, Error> {
    let removing = b.spec.deletion_policy == DeletionPolicy::Delete
        && !b.annotations().contains_key(DATA_REMOVED)
        && !crate::controller::departed::namespace_leaving(ctx, &b.namespace().unwrap_or_default())
            .await;
    if removing {
        // Not synced back from its record while its transfers stop.
        crate::storage::catalog::leaving(&crate::storage::catalog::origin_uid(b));
    }
    cancel_children(b, ctx).await?;
    if children_left(b, ctx).await? {
        return Ok(false);
    }
    if !removing {
        return Ok(true);
    }
    remove_data(b, ctx).await
}

/// Removes the backup's snapshots and copies; true when done (snapshots still being deleted:
/// false, call again).
pub async fn remove_data(b: &Backup, ctx: &Context) -> Result<bool, Error> {
    if remove_snapshots(b, ctx).await? > 0 {
        return Ok(false);
    }
    remove_copies(b, ctx).await?;
    Ok(true)
}

/// Forgets the backup's repository snapshots and deletes its bucket objects.
async fn remove_copies(b: &Backup, ctx: &Context) -> Result<(), Error> {
    let st = b.status.clone().unwrap_or_default();
    let Some(loc) = &st.storage_location else {
        return Ok(());
    };
    let bsl = match storage::location(ctx, Some(loc)).await? {
        Ok(bsl) => bsl,
        Err(r) if r.reason == LocationReason::LocationNotFound.as_str() => {
            let note = format!(
                "BackupStorageLocation {loc} no longer exists; the copies in it could not be removed"
            );
            publish(
                ctx,
                b,
                EventType::Warning,
                BackupReason::LocationGone,
                &note,
            )
            .await;
            return Ok(());
        }
        // Unavailable: the data cannot be removed now; retried with backoff, shown as Stalled.
        Err(r) => {
            return Err(Error::Config {
                reason: r.reason,
                message: format!("{}; the backup's data is removed once it is", r.message),
            });
        }
    };
    if bsl.spec.access_mode == holdfast_api::location::AccessMode::ReadOnly {
        // Never written to: the copies stay for whoever writes to the location.
        info!(backup = %b.name_any(), location = %loc, "location is ReadOnly; the backup's copies are left in it");
        return Ok(());
    }
    let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in &st.volumes {
        if let Some(id) = v.copy.as_ref().and_then(|c| c.snapshot_id.clone()) {
            by_ns.entry(v.pvc.namespace.clone()).or_default().push(id);
        }
    }
    // The record first: the backup stops being one (restores, sync) before its copies go.
    let r = match storage::delete_backup_objects(ctx, &bsl, b).await {
        Ok(()) => repository::forget(ctx, &bsl, by_ns).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &r {
        let note = format!("removing the data from location {loc}: {e}; will retry");
        publish(
            ctx,
            b,
            EventType::Warning,
            BackupReason::DeleteFailed,
            &note,
        )
        .await;
    }
    r
}

/// A finished backup is deleted once its `expiration` has passed: its data first (per its
/// `deletionPolicy`), while the object still shows it, then the object.
pub(super) async fn expire(b: &Backup, ctx: &Context, st: &BackupStatus) -> Result<Action, Error> {
    let Some(exp) = st.expiration.as_ref().map(|t| t.0) else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    if now >= exp {
        let api: Api<Backup> =
            Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
        let removed = b.annotations().contains_key(DATA_REMOVED);
        if b.spec.deletion_policy == DeletionPolicy::Delete && !removed {
            if !remove_data(b, ctx).await? {
                return Ok(Action::requeue(POLL));
            }
            crate::runtime::kube_ext::merge_patch(
                &api,
                &b.name_any(),
                &serde_json::json!({"metadata": {"annotations": {DATA_REMOVED: "true"}}}),
                "annotate Backup",
            )
            .await?;
        }
        info!(backup = %b.name_any(), "backup expired; deleting it");
        delete(
            &api,
            &b.name_any(),
            &DeleteParams::default(),
            "delete expired Backup",
        )
        .await?;
        return Ok(Action::await_change());
    }
    let wait = exp
        .duration_since(now)
        .unsigned_abs()
        .min(Duration::from_secs(3600));
    Ok(Action::requeue(wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_being_cut_are_not_deleted_yet() {
        let now = Timestamp::from_second(10_000).expect("ts");
        let vs = |ready: bool, age: i64| -> VolumeSnapshot {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "s", "creationTimestamp": Timestamp::from_second(10_000 - age).expect("ts").to_string()},
                "spec": {"source": {}},
                "status": {"readyToUse": ready},
            }))
            .expect("snapshot")
        };
        assert!(!deletable(&vs(false, 5), now));
        assert!(deletable(&vs(true, 5), now));
        assert!(deletable(&vs(false, 601), now));
    }
}
