//! Backup controller: resolves the selection and its claims, snapshots every claim, captures
//! the objects into the location, hands each volume to a DataUpload, aggregates their progress,
//! writes `metadata.json` last, and on deletion removes the data per `deletionPolicy`.
//!
//! The reconcile works from what it recorded in `status` (the volumes resolved at start), so it
//! resumes after an operator restart at any point: every child has a deterministic name and
//! carries the backup's labels.

pub mod metadata;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use holdfast_api::backup::{
    Backup, BackupPhase, BackupProgress, BackupStatus, CopyStatus, SnapshotStatus, TransferPhase,
    VolumeMode, VolumePhase, VolumeStatus, WithoutSnapshot,
};
use holdfast_api::common::{NamespacedName, Progress};
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::transfer::{DataUpload, DataUploadSpec};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::bytes::Bytes;
use tracing::{info, warn};

use self::metadata::{BackupMetadata, FORMAT_VERSION, METADATA, RESOURCES};
use super::conditions::{self, READY, RECONCILING, STALLED};
use super::snapshot::{
    self, VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotSource, VolumeSnapshotSpec,
};
use super::{
    Context, Error, add_finalizer, ignore_not_found, objects, remove_finalizer, repository,
};

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
    let backups: Api<Backup> = Api::all(client.clone());
    let uploads: Api<DataUpload> = Api::namespaced(client.clone(), &ctx.namespace);
    let snapshots: Api<VolumeSnapshot> = Api::all(client.clone());
    Controller::new(backups, watcher::Config::default())
        .watches(
            uploads,
            watcher::Config::default().labels(BACKUP_UID),
            |du: DataUpload| parent_of(du.labels()),
        )
        .watches(
            snapshots,
            watcher::Config::default().labels(BACKUP_UID),
            |vs: VolumeSnapshot| parent_of(vs.labels()),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "backup reconcile failed");
            }
        })
        .await;
}

fn parent_of(labels: &BTreeMap<String, String>) -> Option<ObjectRef<Backup>> {
    let name = labels.get(BACKUP_NAME)?;
    let ns = labels.get(BACKUP_NAMESPACE)?;
    Some(ObjectRef::new(name).within(ns))
}

fn error_policy(b: Arc<Backup>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(backup = %b.name_any(), namespace = %b.namespace().unwrap_or_default(), error = %err, "backup reconcile error");
    ctx.metrics.reconcile_error("backup");
    Action::requeue(Duration::from_secs(5))
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

/// Name of the VolumeSnapshot of claim `pvc` (in the claim's namespace).
pub fn snapshot_name(b: &Backup, pvc: &NamespacedName) -> String {
    super::child_name(
        &b.name_any(),
        &[&b.uid().unwrap_or_default(), &pvc.namespace, &pvc.name],
    )
}

/// Name of the DataUpload of claim `pvc` (in the operator namespace).
pub fn upload_name(b: &Backup, pvc: &NamespacedName) -> String {
    super::child_name(
        &format!("{}-{}", b.namespace().unwrap_or_default(), b.name_any()),
        &[&b.uid().unwrap_or_default(), &pvc.namespace, &pvc.name],
    )
}

async fn reconcile(b: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer("backup");
    let ns = b.namespace().unwrap_or_default();
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(b) = super::current(&api, &b, "get Backup").await? else {
        return Ok(Action::await_change());
    };
    let claimed = b
        .status
        .as_ref()
        .and_then(|s| s.operator_namespace.as_deref());
    if let Some(action) = super::scope::take_up(&ctx, &api, &*b, claimed, MANAGER).await? {
        return Ok(action);
    }
    if b.meta().deletion_timestamp.is_some() {
        return delete(&b, &ctx, &api).await;
    }
    if add_finalizer(&api, &*b, FINALIZER).await? {
        return Ok(Action::await_change());
    }
    let status = b.status.clone().unwrap_or_default();
    if let Some(phase) = status.phase
        && phase.is_terminal()
    {
        return expire(&b, &status, &api).await;
    }
    let mut st = status.clone();
    let action = step(&b, &ctx, &mut st).await?;
    if st != status {
        write_status(&api, &b, st).await?;
    }
    Ok(action)
}

async fn write_status(api: &Api<Backup>, b: &Backup, mut st: BackupStatus) -> Result<(), Error> {
    let now = Timestamp::now();
    st.observed_generation = b.meta().generation;
    let g = b.meta().generation;
    let (ready, reconciling, reason) = match st.phase {
        Some(BackupPhase::Completed) => (true, false, "Completed".to_string()),
        Some(p) if p.is_terminal() => (
            false,
            false,
            st.reason.clone().unwrap_or_else(|| format!("{p:?}")),
        ),
        _ => (
            false,
            true,
            st.reason.clone().unwrap_or_else(|| "InProgress".into()),
        ),
    };
    let message = st.message.clone().unwrap_or_default();
    conditions::set(&mut st.conditions, READY, ready, &reason, &message, g, now);
    if reconciling {
        conditions::set(
            &mut st.conditions,
            RECONCILING,
            true,
            &reason,
            &message,
            g,
            now,
        );
    } else {
        conditions::remove(&mut st.conditions, RECONCILING);
    }
    if matches!(st.phase, Some(BackupPhase::Failed)) {
        conditions::set(&mut st.conditions, STALLED, true, &reason, &message, g, now);
    } else {
        conditions::remove(&mut st.conditions, STALLED);
    }
    let patch = serde_json::json!({
        "apiVersion": "holdfast.dev/v1alpha1",
        "kind": "Backup",
        "status": st,
    });
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch Backup status"))?;
    Ok(())
}

fn fail(st: &mut BackupStatus, phase: BackupPhase, reason: &str, message: String) -> Action {
    st.phase = Some(phase);
    st.reason = Some(reason.to_string());
    st.message = Some(message);
    st.completion_time = Some(Time(Timestamp::now()));
    st.progress = None;
    Action::await_change()
}

/// One pass of the state machine over `st`; the caller writes `st` back.
async fn step(b: &Backup, ctx: &Context, st: &mut BackupStatus) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    if st.phase.is_none() {
        st.phase = Some(BackupPhase::Pending);
    }
    if b.spec.cancel {
        cancel_children(b, ctx).await?;
        let snapshots_left = remove_snapshots(b, ctx).await?;
        if let Some(loc) = &st.storage_location
            && let Ok(Ok(bsl)) = repository::resolve_location(ctx, Some(loc)).await
        {
            // Best effort: a cancelled backup leaves no objects behind in the bucket.
            let _ = delete_bucket_objects(ctx, &bsl, &ns, &b.name_any()).await;
        }
        if snapshots_left > 0 || children_left(b, ctx).await? {
            st.reason = Some("Cancelling".into());
            return Ok(Action::requeue(POLL));
        }
        publish(
            ctx,
            b,
            EventType::Normal,
            "Cancelled",
            "backup cancelled; its snapshots, copies and objects were removed",
        )
        .await;
        return Ok(fail(
            st,
            BackupPhase::Cancelled,
            "Cancelled",
            "cancelled by spec.cancel; nothing of it was kept".into(),
        ));
    }

    // 1. Location.
    let bsl = match repository::resolve_location(ctx, b.spec.storage_location.as_deref()).await? {
        Ok(bsl) => bsl,
        Err(u) => {
            if st.start_time.is_some() {
                // A running backup keeps waiting for its location to come back.
                st.reason = Some(u.reason.into());
                st.message = Some(u.message);
                return Ok(Action::requeue(Duration::from_secs(15)));
            }
            if u.reason == "LocationNotFound" || u.reason == "NoDefaultLocation" {
                return Ok(fail(st, BackupPhase::Failed, u.reason, u.message));
            }
            st.phase = Some(BackupPhase::Pending);
            st.reason = Some(u.reason.into());
            st.message = Some(u.message);
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
    };
    if bsl.spec.access_mode == holdfast_api::location::AccessMode::ReadOnly
        && b.spec.volumes.mode != VolumeMode::Snapshot
    {
        return Ok(fail(
            st,
            BackupPhase::Failed,
            "LocationReadOnly",
            format!(
                "BackupStorageLocation {} is ReadOnly; choose another spec.storageLocation",
                bsl.name_any()
            ),
        ));
    }
    st.storage_location = Some(bsl.name_any());

    // 2. Resolve namespaces and volumes, capture the objects (once).
    if st.start_time.is_none() {
        st.phase = Some(BackupPhase::InProgress);
        st.start_time = Some(Time(Timestamp::now()));
        st.reason = None;
        st.message = None;
        return Ok(Action::requeue(Duration::ZERO));
    }
    if st.items_backed_up.is_none() {
        let namespaces = match resolve_namespaces(b, ctx).await? {
            Ok(n) => n,
            Err(msg) => return Ok(fail(st, BackupPhase::Failed, "NamespaceNotAllowed", msg)),
        };
        let include_cluster = b
            .spec
            .include_cluster_resources
            .unwrap_or(ns == ctx.namespace);
        let captured = match objects::capture(
            &ctx.client,
            objects::CaptureRequest {
                namespaces: &namespaces,
                selection: &b.spec.selection,
                include_cluster_resources: include_cluster,
            },
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                st.reason = Some("CaptureFailed".into());
                st.message = Some(e.to_string());
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
        };
        let store = match repository::open_bucket(ctx, &bsl).await {
            Ok(s) => s,
            Err(e) => {
                st.reason = Some("StorageError".into());
                st.message = Some(e);
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
        };
        let key = format!(
            "{}/{RESOURCES}",
            repository::backup_prefix(&bsl, &ns, &b.name_any())
        );
        if let Err(e) = store.put(&key, Bytes::from(captured.archive)).await {
            st.reason = Some("StorageError".into());
            st.message = Some(format!("writing {key}: {e}"));
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        st.namespaces = namespaces;
        st.warnings = Some(captured.warnings.len() as u32);
        st.volumes = captured
            .pvcs
            .iter()
            .map(|pvc| VolumeStatus {
                pvc: NamespacedName {
                    namespace: pvc.namespace().unwrap_or_default(),
                    name: pvc.name_any(),
                },
                storage_class: pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
                volume_mode: pvc.spec.as_ref().and_then(|s| s.volume_mode.clone()),
                ..Default::default()
            })
            .collect();
        if b.spec.hooks.as_ref().is_some_and(|h| !h.rules.is_empty()) {
            // Hooks are not implemented yet: say so rather than pretend they ran.
            st.warnings = Some(st.warnings.unwrap_or(0) + 1);
            publish(ctx, b, EventType::Warning, "HooksNotRun", "spec.hooks is not implemented yet: no hook was run, the snapshots are crash-consistent only").await;
        }
        if b.spec.volumes.group_snapshot {
            // VolumeGroupSnapshots are not implemented yet: each claim is snapshotted on its
            // own, which is not the mutual consistency that was asked for. Say so.
            st.warnings = Some(st.warnings.unwrap_or(0) + 1);
            publish(ctx, b, EventType::Warning, "GroupSnapshotNotSupported", "spec.volumes.groupSnapshot is not implemented yet: each claim gets its own VolumeSnapshot, so the volumes are not consistent with each other (only each one crash-consistent)").await;
        }
        st.items_backed_up = Some(captured.items);
        st.reason = None;
        st.message = None;
        info!(backup = %b.name_any(), namespace = %ns, volumes = st.volumes.len(), items = captured.items, "selection resolved and objects captured");
        return Ok(Action::requeue(Duration::ZERO));
    }

    // 3. Volumes: snapshot, then copy.
    let mut classes: Option<Vec<VolumeSnapshotClass>> = None;
    let mut requeue = None;
    for i in 0..st.volumes.len() {
        let a = advance_volume(b, ctx, &bsl, &mut st.volumes[i], &mut classes).await?;
        requeue = min_action(requeue, a);
    }
    st.progress = Some(progress(&st.volumes));
    if let Some(d) = requeue {
        return Ok(Action::requeue(d));
    }

    // 4. All volumes are final: the snapshots of Copy mode go, metadata is written last.
    if b.spec.volumes.mode == VolumeMode::Copy {
        remove_snapshots(b, ctx).await?;
    }
    let failed = st
        .volumes
        .iter()
        .filter(|v| v.phase == VolumePhase::Failed)
        .count();
    let (phase, reason) = if failed == 0 {
        (BackupPhase::Completed, None)
    } else if failed == st.volumes.len() {
        (BackupPhase::Failed, Some("VolumesFailed"))
    } else {
        (BackupPhase::PartiallyFailed, Some("VolumesFailed"))
    };
    let now = Timestamp::now();
    let md = BackupMetadata {
        format_version: FORMAT_VERSION,
        backup: NamespacedName {
            namespace: ns.clone(),
            name: b.name_any(),
        },
        uid: b.uid().unwrap_or_default(),
        phase,
        reason: reason.map(Into::into),
        storage_location: bsl.name_any(),
        namespaces: st.namespaces.clone(),
        start_time: st.start_time.clone(),
        completion_time: Some(Time(now)),
        items_backed_up: st.items_backed_up.unwrap_or(0),
        volumes: st.volumes.clone(),
        spec: b.spec.clone(),
    };
    let store = match repository::open_bucket(ctx, &bsl).await {
        Ok(s) => s,
        Err(e) => {
            st.reason = Some("StorageError".into());
            st.message = Some(e);
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    let key = format!(
        "{}/{METADATA}",
        repository::backup_prefix(&bsl, &ns, &b.name_any())
    );
    let body = serde_json::to_vec_pretty(&md).map_err(|e| Error::Other(e.to_string()))?;
    if let Err(e) = store.put(&key, Bytes::from(body)).await {
        st.reason = Some("StorageError".into());
        st.message = Some(format!("writing {key}: {e}"));
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    st.phase = Some(phase);
    st.reason = reason.map(Into::into);
    st.message = if failed > 0 {
        Some(format!(
            "{failed} of {} volumes failed: {}",
            st.volumes.len(),
            st.volumes
                .iter()
                .filter(|v| v.phase == VolumePhase::Failed)
                .map(|v| format!("{} ({})", v.pvc, v.reason.as_deref().unwrap_or("unknown")))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        None
    };
    st.completion_time = Some(Time(now));
    if let Some(ttl) = b.spec.ttl {
        st.expiration = now
            .checked_add(SignedDuration::try_from(ttl.as_std()).unwrap_or(SignedDuration::ZERO))
            .ok()
            .map(Time);
    }
    let p = progress(&st.volumes);
    st.progress = Some(p);
    info!(backup = %b.name_any(), namespace = %ns, phase = ?phase, "backup finished");
    publish(
        ctx,
        b,
        if failed == 0 {
            EventType::Normal
        } else {
            EventType::Warning
        },
        &format!("{phase:?}"),
        st.message
            .as_deref()
            .unwrap_or("all volumes and objects protected"),
    )
    .await;
    ctx.metrics.finished("backup", &format!("{phase:?}"));
    Ok(Action::requeue(Duration::ZERO))
}

fn min_action(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Aggregate progress of the volumes.
pub fn progress(volumes: &[VolumeStatus]) -> BackupProgress {
    let mut p = Progress {
        volumes_total: volumes.len() as u32,
        ..Default::default()
    };
    for v in volumes {
        if matches!(
            v.phase,
            VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Skipped
        ) {
            p.volumes_done += 1;
        }
        if let Some(c) = &v.copy {
            p.bytes_done += c.bytes_done;
            p.bytes_total += c.bytes_total.max(c.bytes_done);
        }
    }
    p.into()
}

/// Moves one volume forward; returns when to look again (`None`: the volume is final).
async fn advance_volume(
    b: &Backup,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    v: &mut VolumeStatus,
    classes: &mut Option<Vec<VolumeSnapshotClass>>,
) -> Result<Option<Duration>, Error> {
    match v.phase {
        VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Skipped => Ok(None),
        VolumePhase::Pending => {
            let pvcs: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
            let Some(pvc) = pvcs
                .get_opt(&v.pvc.name)
                .await
                .map_err(Error::kube("get PersistentVolumeClaim"))?
            else {
                set_volume_failed(
                    v,
                    "PVCNotFound",
                    "the claim was deleted before it could be snapshotted".into(),
                );
                return Ok(None);
            };
            let Some(pv_name) = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|_| pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            else {
                set_volume_failed(
                    v,
                    "PVCNotBound",
                    "the claim is not bound to a volume; nothing to back up".into(),
                );
                return Ok(None);
            };
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let pv_spec = pvs
                .get_opt(&pv_name)
                .await
                .map_err(Error::kube("get PersistentVolume"))?
                .and_then(|pv| pv.spec);
            if let Some(path) = pv_spec
                .as_ref()
                .and_then(|s| s.host_path.as_ref())
                .map(|h| h.path.clone())
            {
                host_path_volume(b, v, &pv_name, &path);
                return Ok(None);
            }
            let driver = pv_spec.and_then(|s| s.csi).map(|c| c.driver);
            v.driver = driver.clone();
            let Some(driver) = driver else {
                return Ok(no_snapshot(b, ctx, v, "the volume is not a CSI volume"));
            };
            if classes.is_none() {
                let api: Api<VolumeSnapshotClass> = Api::all(ctx.client.clone());
                *classes = Some(
                    api.list(&ListParams::default())
                        .await
                        .map_err(Error::kube("list VolumeSnapshotClasses"))?
                        .items,
                );
            }
            let Some(class) = snapshot::choose_class(
                classes.as_deref().unwrap_or_default(),
                &driver,
                &b.spec.volumes.snapshot_classes,
            ) else {
                return Ok(no_snapshot(
                    b,
                    ctx,
                    v,
                    &format!(
                        "no VolumeSnapshotClass of driver {driver} is labelled {}=\"true\" (or set spec.volumes.snapshotClasses)",
                        snapshot::DEFAULT_CLASS_LABEL
                    ),
                ));
            };
            let name = snapshot_name(b, &v.pvc);
            let vs = VolumeSnapshot {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(v.pvc.namespace.clone()),
                    labels: Some(child_labels(b)),
                    ..Default::default()
                },
                spec: VolumeSnapshotSpec {
                    source: VolumeSnapshotSource {
                        persistent_volume_claim_name: Some(v.pvc.name.clone()),
                        volume_snapshot_content_name: None,
                    },
                    volume_snapshot_class_name: Some(class.clone()),
                },
                status: None,
            };
            let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
            match api.create(&PostParams::default(), &vs).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(Error::kube("create VolumeSnapshot")(e)),
            }
            v.phase = VolumePhase::Snapshotting;
            v.consistency = Some(holdfast_api::backup::Consistency::CrashConsistent);
            v.snapshot = Some(SnapshotStatus {
                name,
                class: Some(class),
                ..Default::default()
            });
            Ok(Some(POLL))
        }
        VolumePhase::Snapshotting => {
            let Some(s) = v.snapshot.clone() else {
                v.phase = VolumePhase::Pending;
                return Ok(Some(Duration::ZERO));
            };
            let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
            let Some(vs) = api
                .get_opt(&s.name)
                .await
                .map_err(Error::kube("get VolumeSnapshot"))?
            else {
                v.phase = VolumePhase::Pending;
                return Ok(Some(Duration::ZERO));
            };
            let vst = vs.status.clone().unwrap_or_default();
            if vst.ready_to_use == Some(true) {
                let mut s = s;
                s.ready_to_use = true;
                s.content_name = vst.bound_volume_snapshot_content_name.clone();
                s.restore_size_bytes = vst.restore_size.as_ref().and_then(quantity_bytes);
                v.snapshot = Some(s);
                if b.spec.volumes.mode == VolumeMode::Snapshot {
                    v.phase = VolumePhase::Completed;
                    return Ok(None);
                }
                v.phase = VolumePhase::Copying;
                return Ok(Some(Duration::ZERO));
            }
            let timeout = b
                .spec
                .volumes
                .snapshot_timeout
                .map(|d| d.as_std())
                .unwrap_or(DEFAULT_SNAPSHOT_TIMEOUT);
            let age = vs
                .creation_timestamp()
                .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
                .unwrap_or_default();
            if age > timeout {
                let why = vst
                    .error
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| "not ready to use".into());
                set_volume_failed(
                    v,
                    "SnapshotTimeout",
                    format!(
                        "VolumeSnapshot {} was not ready within {timeout:?}: {why}",
                        s.name
                    ),
                );
                let _ = api.delete(&s.name, &DeleteParams::default()).await;
                return Ok(None);
            }
            if let Some(e) = vst.error.and_then(|e| e.message) {
                v.message = Some(format!("snapshot: {e}"));
            }
            Ok(Some(POLL))
        }
        VolumePhase::Copying => {
            let name = upload_name(b, &v.pvc);
            let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            let du = match api
                .get_opt(&name)
                .await
                .map_err(Error::kube("get DataUpload"))?
            {
                Some(du) => du,
                None => {
                    repository::ensure_password(ctx, &bsl.name_any(), &v.pvc.namespace).await?;
                    repository::ensure_repository(ctx, bsl, &v.pvc.namespace).await?;
                    let du = DataUpload {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(ctx.namespace.clone()),
                            labels: Some(child_labels(b)),
                            ..Default::default()
                        },
                        spec: DataUploadSpec {
                            backup: NamespacedName {
                                namespace: b.namespace().unwrap_or_default(),
                                name: b.name_any(),
                            },
                            pvc: v.pvc.clone(),
                            volume_snapshot: v.snapshot.as_ref().map(|s| s.name.clone()),
                            storage_location: bsl.name_any(),
                            repository: v.pvc.namespace.clone(),
                            volume_mode: v.volume_mode.clone(),
                            cancel: false,
                        },
                        status: None,
                    };
                    match api.create(&PostParams::default(), &du).await {
                        Ok(du) => du,
                        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Some(POLL)),
                        Err(e) => return Err(Error::kube("create DataUpload")(e)),
                    }
                }
            };
            let ts = du.status.clone().unwrap_or_default();
            v.copy = Some(CopyStatus {
                data_upload: name,
                phase: Some(ts.phase),
                snapshot_id: ts.snapshot_id.clone(),
                bytes_done: ts.bytes_done,
                bytes_total: ts.bytes_total,
                bytes_uploaded: ts.bytes_uploaded,
            });
            match ts.phase {
                TransferPhase::Completed => {
                    v.phase = VolumePhase::Completed;
                    // A live copy keeps its LiveCopy note unless the copy has one of its own.
                    let live =
                        v.consistency == Some(holdfast_api::backup::Consistency::Inconsistent);
                    if ts.reason.is_some() || !live {
                        v.reason = ts.reason.clone();
                        v.message = ts.message.clone();
                    }
                    Ok(None)
                }
                TransferPhase::Failed | TransferPhase::Cancelled => {
                    set_volume_failed(
                        v,
                        ts.reason.as_deref().unwrap_or("CopyFailed"),
                        ts.message.clone().unwrap_or_default(),
                    );
                    Ok(None)
                }
                _ => Ok(Some(Duration::from_secs(5))),
            }
        }
    }
}

fn set_volume_failed(v: &mut VolumeStatus, reason: &str, message: String) {
    v.phase = VolumePhase::Failed;
    v.reason = Some(reason.to_string());
    v.message = Some(message);
}

/// A `hostPath` PersistentVolume is never copied. Its data is a directory on whichever
/// node the volume was used on, and nothing in the volume says which: a mover pod placed
/// on another node would find an empty directory there and "back it up" successfully.
/// `withoutSnapshot: Skip` records it as skipped; otherwise it fails.
fn host_path_volume(b: &Backup, v: &mut VolumeStatus, pv: &str, path: &str) {
    let why = format!(
        "PersistentVolume {pv} is a hostPath volume ({path}): hostPath volumes are not supported, their data is on one node's disk and no node is recorded in the volume; use a CSI driver, or a local PersistentVolume (spec.local with nodeAffinity) and withoutSnapshot: LiveCopy"
    );
    if b.spec.volumes.without_snapshot == WithoutSnapshot::Skip {
        v.phase = VolumePhase::Skipped;
        v.reason = Some("HostPathNotSupported".into());
        v.message = Some(format!(
            "{why}; skipped (spec.volumes.withoutSnapshot: Skip)"
        ));
    } else {
        set_volume_failed(
            v,
            "HostPathNotSupported",
            format!(
                "{why}; or set spec.volumes.withoutSnapshot to Skip to back up the rest without it"
            ),
        );
    }
}

/// A volume whose driver cannot snapshot, handled per `spec.volumes.withoutSnapshot`.
fn no_snapshot(b: &Backup, ctx: &Context, v: &mut VolumeStatus, why: &str) -> Option<Duration> {
    match b.spec.volumes.without_snapshot {
        WithoutSnapshot::Skip => {
            v.phase = VolumePhase::Skipped;
            v.reason = Some("NoSnapshotClass".into());
            v.message = Some(format!(
                "{why}; skipped (spec.volumes.withoutSnapshot: Skip)"
            ));
        }
        WithoutSnapshot::Fail => set_volume_failed(
            v,
            "NoSnapshotClass",
            format!(
                "{why}; set spec.volumes.withoutSnapshot to Skip to back up the rest without this volume, or to LiveCopy to copy it without a snapshot"
            ),
        ),
        // A live copy puts the location's credentials next to the claim for the time of the
        // copy, so only administrators (Backups in the operator namespace) may ask for one.
        WithoutSnapshot::LiveCopy if b.namespace().as_deref() != Some(ctx.namespace.as_str()) => {
            set_volume_failed(
                v,
                "LiveCopyNotAllowed",
                format!(
                    "{why}; withoutSnapshot: LiveCopy is only allowed for Backups in namespace {} (a live copy needs the location's credentials in the claim's namespace)",
                    ctx.namespace
                ),
            )
        }
        WithoutSnapshot::LiveCopy => {
            v.phase = VolumePhase::Copying;
            v.consistency = Some(holdfast_api::backup::Consistency::Inconsistent);
            v.reason = Some("LiveCopy".into());
            v.message = Some(format!(
                "{why}; copied from the live volume (spec.volumes.withoutSnapshot: LiveCopy): not crash-consistent, files written during the copy may be torn"
            ));
            return Some(Duration::ZERO);
        }
    }
    None
}

fn quantity_bytes(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<u64> {
    super::parse_quantity(&q.0)
}

/// Namespaces the backup covers; `Err` when a non-administrator backup names others.
async fn resolve_namespaces(
    b: &Backup,
    ctx: &Context,
) -> Result<Result<Vec<String>, String>, Error> {
    let own = b.namespace().unwrap_or_default();
    let sel = &b.spec.selection;
    let all_requested =
        sel.included_namespaces.is_empty() || sel.included_namespaces.iter().any(|n| n == "*");
    if own != ctx.namespace {
        if !all_requested && sel.included_namespaces.iter().any(|n| *n != own) {
            return Ok(Err(format!(
                "a Backup in namespace {own} may only back up namespace {own}; spec.includedNamespaces names others (only Backups in {} may span namespaces)",
                ctx.namespace
            )));
        }
        return Ok(Ok(vec![own]));
    }
    let mut names: Vec<String> = if all_requested {
        let api: Api<Namespace> = Api::all(ctx.client.clone());
        api.list(&ListParams::default())
            .await
            .map_err(Error::kube("list Namespaces"))?
            .items
            .into_iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating"))
            .map(|n| n.name_any())
            .collect()
    } else {
        sel.included_namespaces.clone()
    };
    names.retain(|n| !sel.excluded_namespaces.contains(n));
    names.sort();
    names.dedup();
    Ok(Ok(names))
}

async fn publish(ctx: &Context, b: &Backup, type_: EventType, reason: &str, note: &str) {
    ctx.publish(
        &b.object_ref(&()),
        Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Backup".into(),
            secondary: None,
        },
    )
    .await;
}

/// Asks every DataUpload of the backup to stop (its controller cleans up after it).
async fn cancel_children(b: &Backup, ctx: &Context) -> Result<(), Error> {
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&uid_selector(b));
    for du in api
        .list(&lp)
        .await
        .map_err(Error::kube("list DataUploads"))?
        .items
    {
        if du.meta().deletion_timestamp.is_none() {
            api.delete(&du.name_any(), &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(Error::kube("delete DataUpload"))?;
        }
    }
    Ok(())
}

async fn children_left(b: &Backup, ctx: &Context) -> Result<bool, Error> {
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&uid_selector(b));
    Ok(!api
        .list(&lp)
        .await
        .map_err(Error::kube("list DataUploads"))?
        .items
        .is_empty())
}

/// Deletes the backup's VolumeSnapshots (their contents go with them per the class's
/// policy); returns how many still exist (being deleted).
async fn remove_snapshots(b: &Backup, ctx: &Context) -> Result<usize, Error> {
    let api: Api<VolumeSnapshot> = Api::all(ctx.client.clone());
    let lp = ListParams::default().labels(&uid_selector(b));
    let items = api
        .list(&lp)
        .await
        .map_err(Error::kube("list VolumeSnapshots"))?
        .items;
    for vs in &items {
        if vs.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // A snapshot still being cut is deleted once it is ready (or has failed): deleting it
        // mid-creation can leave it stuck in the snapshot-controller until its next resync
        // (seen with external-snapshotter v8.6: the content turned ready after the delete).
        let st = vs.status.clone().unwrap_or_default();
        let age = vs
            .creation_timestamp()
            .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
            .unwrap_or_default();
        if st.ready_to_use != Some(true) && st.error.is_none() && age < DEFAULT_SNAPSHOT_TIMEOUT {
            continue;
        }
        let ns = vs.namespace().unwrap_or_default();
        let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
        api.delete(&vs.name_any(), &DeleteParams::default())
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("delete VolumeSnapshot"))?;
    }
    Ok(items.len())
}

async fn delete_bucket_objects(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    ns: &str,
    name: &str,
) -> Result<(), String> {
    let store = repository::open_bucket(ctx, bsl).await?;
    let prefix = format!("{}/", repository::backup_prefix(bsl, ns, name));
    // metadata.json first: the backup stops being visible before its parts go.
    let key = format!("{prefix}{METADATA}");
    store
        .delete(&key)
        .await
        .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
        .map_err(|e| format!("deleting {key}: {e}"))?;
    for o in store
        .list(&prefix)
        .await
        .map_err(|e| format!("listing {prefix}: {e}"))?
    {
        store
            .delete(&o.key)
            .await
            .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
            .map_err(|e| format!("deleting {}: {e}", o.key))?;
    }
    Ok(())
}

/// Removes the repository snapshots of the backup's copies (restic's `forget`, under the
/// repository lock). Their data is reclaimed by the next prune.
async fn forget_copies(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    st: &BackupStatus,
) -> Result<(), String> {
    let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in &st.volumes {
        if let Some(id) = v.copy.as_ref().and_then(|c| c.snapshot_id.clone()) {
            by_ns.entry(v.pvc.namespace.clone()).or_default().push(id);
        }
    }
    for (ns, ids) in by_ns {
        let password = repository::read_password(ctx, &bsl.name_any(), &ns)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the password Secret of the repository of {ns} is gone"))?;
        let store = repository::open_repository_store(ctx, bsl, &ns).await?;
        let repo = holdfast_repo::Repository::open(store, &password)
            .await
            .map_err(|e| format!("opening the repository of {ns}: {e}"))?;
        let existing: std::collections::HashSet<String> = repo
            .snapshots()
            .await
            .map_err(|e| format!("listing the snapshots of the repository of {ns}: {e}"))?
            .into_iter()
            .map(|(id, _)| id.to_hex())
            .collect();
        let ids: Vec<String> = ids.into_iter().filter(|i| existing.contains(i)).collect();
        if ids.is_empty() {
            continue;
        }
        holdfast_repo::forget::forget(
            &repo,
            &holdfast_repo::forget::ForgetOptions {
                snapshots: ids,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("forgetting snapshots in the repository of {ns}: {e}"))?;
    }
    Ok(())
}

/// Deletion: stop the children, then remove or keep the data per `deletionPolicy`.
async fn delete(b: &Backup, ctx: &Context, api: &Api<Backup>) -> Result<Action, Error> {
    if !b.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    cancel_children(b, ctx).await?;
    if children_left(b, ctx).await? {
        return Ok(Action::requeue(POLL));
    }
    let st = b.status.clone().unwrap_or_default();
    if b.spec.deletion_policy == holdfast_api::backup::DeletionPolicy::Delete {
        if remove_snapshots(b, ctx).await? > 0 {
            return Ok(Action::requeue(POLL));
        }
        if let Some(loc) = &st.storage_location {
            let locs: Api<BackupStorageLocation> =
                Api::namespaced(ctx.client.clone(), &ctx.namespace);
            match locs
                .get_opt(loc)
                .await
                .map_err(Error::kube("get BackupStorageLocation"))?
            {
                Some(bsl) => {
                    let ns = b.namespace().unwrap_or_default();
                    let r = match forget_copies(ctx, &bsl, &st).await {
                        Ok(()) => delete_bucket_objects(ctx, &bsl, &ns, &b.name_any()).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        warn!(backup = %b.name_any(), error = %e, "could not remove the backup's data; retrying");
                        publish(
                            ctx,
                            b,
                            EventType::Warning,
                            "DeleteFailed",
                            &format!("removing the data from location {loc}: {e}; will retry"),
                        )
                        .await;
                        return Ok(Action::requeue(Duration::from_secs(30)));
                    }
                }
                None => {
                    publish(ctx, b, EventType::Warning, "LocationGone", &format!("BackupStorageLocation {loc} no longer exists; the copies in it could not be removed")).await;
                }
            }
        }
    }
    remove_finalizer(api, b, FINALIZER).await?;
    info!(backup = %b.name_any(), policy = ?b.spec.deletion_policy, "backup deleted");
    Ok(Action::await_change())
}

/// A finished backup is deleted once its `expiration` has passed.
async fn expire(b: &Backup, st: &BackupStatus, api: &Api<Backup>) -> Result<Action, Error> {
    let Some(exp) = st.expiration.as_ref().map(|t| t.0) else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    if now >= exp {
        info!(backup = %b.name_any(), "backup expired; deleting it");
        api.delete(&b.name_any(), &DeleteParams::default())
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("delete expired Backup"))?;
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

    fn vol(phase: VolumePhase, done: u64, total: u64) -> VolumeStatus {
        VolumeStatus {
            phase,
            copy: Some(CopyStatus {
                data_upload: "x".into(),
                bytes_done: done,
                bytes_total: total,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn progress_adds_up_volumes_and_bytes() {
        let p = progress(&[
            vol(VolumePhase::Completed, 100, 100),
            vol(VolumePhase::Copying, 50, 300),
            vol(VolumePhase::Failed, 0, 0),
        ]);
        assert_eq!(p.counts.volumes_done, 2);
        assert_eq!(p.counts.volumes_total, 3);
        assert_eq!(p.counts.bytes_done, 150);
        assert_eq!(p.counts.bytes_total, 400);
        assert_eq!(p.display, "37%");
        assert_eq!(p.volumes, "2/3");
    }

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
}
