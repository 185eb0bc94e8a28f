//! DataUpload and DataDownload controllers: each runs one mover pod in the operator namespace.
//!
//! Upload: the snapshot is exposed in the operator namespace (its content re-bound to a new
//! VolumeSnapshotContent with `deletionPolicy: Retain`, a VolumeSnapshot on that, a temporary
//! claim restored from it), a mover pod reads the claim read-only into the repository, then
//! everything temporary is deleted. Download: a mover pod writes a repository snapshot into a
//! new temporary claim; its volume is then kept (`Retain`) and reserved for the target claim,
//! which the Restore controller creates.
//!
//! Progress comes from the mover's JSON lines (pod logs); the result from its summary line.

pub mod live;
pub mod placement;
pub mod pod;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use holdfast_api::backup::TransferPhase;
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::transfer::{DataDownload, DataUpload, TransferStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
    TypedLocalObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::snapshot::{
    ContentSource, SnapshotRef, VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotContentSpec,
    VolumeSnapshotSource, VolumeSnapshotSpec,
};
use super::{Context, Error, add_finalizer, current, ignore_not_found, remove_finalizer};

/// Field manager of the transfer controllers' writes.
pub const MANAGER: &str = "holdfast-transfer-controller";
/// Finalizer: temporary objects of a transfer are removed before it goes away.
pub const FINALIZER: &str = "holdfast.dev/transfer-cleanup";
/// Label on every object a transfer creates: the transfer's name.
pub const TRANSFER_LABEL: &str = "holdfast.dev/transfer";
/// Annotation on a restored volume: its reclaim policy before Holdfast set `Retain`.
pub const RECLAIM_ANNOTATION: &str = "holdfast.dev/reclaim-policy";
const POLL: Duration = Duration::from_secs(2);

/// Runs the DataUpload controller until `shutdown` resolves.
pub async fn run_uploads(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Controller::new(api, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(TRANSFER_LABEL))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_upload, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "DataUpload reconcile failed");
            }
        })
        .await;
}

/// Runs the DataDownload controller until `shutdown` resolves.
pub async fn run_downloads(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Controller::new(api, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(TRANSFER_LABEL))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_download, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "DataDownload reconcile failed");
            }
        })
        .await;
}

fn error_policy<K: Resource>(o: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(transfer = %o.meta().name.clone().unwrap_or_default(), error = %err, "transfer reconcile error");
    ctx.metrics.reconcile_error("transfer");
    Action::requeue(Duration::from_secs(5))
}

fn owner<K: Resource<DynamicType = ()>>(o: &K) -> OwnerReference {
    o.controller_owner_ref(&()).unwrap_or_default()
}

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

async fn write_status<K>(
    api: &Api<K>,
    o: &K,
    kind: &str,
    mut st: TransferStatus,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    st.observed_generation = o.meta().generation;
    let now = Timestamp::now();
    let g = o.meta().generation;
    let reason = st
        .reason
        .clone()
        .unwrap_or_else(|| format!("{:?}", st.phase));
    let message = st.message.clone().unwrap_or_default();
    super::conditions::set(
        &mut st.conditions,
        super::conditions::READY,
        st.phase == TransferPhase::Completed,
        &reason,
        &message,
        g,
        now,
    );
    let patch =
        serde_json::json!({"apiVersion": "holdfast.dev/v1alpha1", "kind": kind, "status": st});
    api.patch_status(
        &o.meta().name.clone().unwrap_or_default(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch transfer status"))?;
    Ok(())
}

/// Transfers currently holding a mover slot.
async fn active_movers(ctx: &Context) -> Result<usize, Error> {
    let busy = |p: TransferPhase| matches!(p, TransferPhase::Preparing | TransferPhase::InProgress);
    let ups: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let downs: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default();
    let a = ups
        .list(&lp)
        .await
        .map_err(Error::kube("list DataUploads"))?
        .items
        .iter()
        .filter(|d| d.status.as_ref().is_some_and(|s| busy(s.phase)))
        .count();
    let b = downs
        .list(&lp)
        .await
        .map_err(Error::kube("list DataDownloads"))?
        .items
        .iter()
        .filter(|d| d.status.as_ref().is_some_and(|s| busy(s.phase)))
        .count();
    Ok(a + b)
}

/// Pending → Preparing once fewer than `--max-movers` transfers hold a mover slot.
async fn take_slot(ctx: &Context, st: &mut TransferStatus) -> Result<Action, Error> {
    if active_movers(ctx).await? >= ctx.max_movers {
        st.reason = Some("WaitingForSlot".into());
        st.message = Some(format!(
            "{} mover pods are running (limit --max-movers)",
            ctx.max_movers
        ));
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    st.phase = TransferPhase::Preparing;
    st.reason = None;
    st.message = None;
    st.start_time = Some(Time(Timestamp::now()));
    Ok(Action::requeue(Duration::ZERO))
}

fn finish(
    st: &mut TransferStatus,
    phase: TransferPhase,
    reason: Option<&str>,
    message: Option<String>,
) {
    st.phase = phase;
    st.reason = reason.map(Into::into);
    st.message = message;
    st.completion_time = Some(Time(Timestamp::now()));
}

async fn location(ctx: &Context, name: &str) -> Result<Option<BackupStorageLocation>, Error> {
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    api.get_opt(name)
        .await
        .map_err(Error::kube("get BackupStorageLocation"))
}

// ---------------------------------------------------------------------------------------------
// DataUpload

async fn reconcile_upload(du: Arc<DataUpload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer("dataupload");
    let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(du) = current(&api, &du, "get DataUpload").await? else {
        return Ok(Action::await_change());
    };
    if du.meta().deletion_timestamp.is_some() {
        if !cleanup_upload(&ctx, &du).await? {
            return Ok(Action::requeue(POLL));
        }
        remove_finalizer(&api, &*du, FINALIZER).await?;
        return Ok(Action::await_change());
    }
    if add_finalizer(&api, &*du, FINALIZER).await? {
        return Ok(Action::await_change());
    }
    let old = du.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let action = step_upload(&du, &ctx, &mut st).await?;
    if st != old {
        write_status(&api, &*du, "DataUpload", st).await?;
    }
    Ok(action)
}

async fn step_upload(
    du: &DataUpload,
    ctx: &Context,
    st: &mut TransferStatus,
) -> Result<Action, Error> {
    let name = du.name_any();
    if st.phase.is_terminal() {
        return Ok(if cleanup_upload(ctx, du).await? {
            Action::await_change()
        } else {
            Action::requeue(POLL)
        });
    }
    if du.spec.cancel {
        cleanup_upload(ctx, du).await?;
        finish(
            st,
            TransferPhase::Cancelled,
            Some("Cancelled"),
            Some("cancelled".into()),
        );
        return Ok(Action::requeue(Duration::ZERO));
    }
    match st.phase {
        TransferPhase::Pending => take_slot(ctx, st).await,
        TransferPhase::Preparing => {
            let Some(bsl) = location(ctx, &du.spec.storage_location).await? else {
                finish(
                    st,
                    TransferPhase::Failed,
                    Some("LocationNotFound"),
                    Some(format!(
                        "BackupStorageLocation {} does not exist",
                        du.spec.storage_location
                    )),
                );
                return Ok(Action::requeue(Duration::ZERO));
            };
            let labels = labels_for(&name, du.labels());
            let live = du.spec.volume_snapshot.is_none();
            let exposed = match &du.spec.volume_snapshot {
                None => live::prepare(du, ctx, &bsl, labels.clone())
                    .await?
                    .map(|l| Some((l.claim, l.pinned))),
                Some(snapshot) => expose_snapshot(du, ctx, snapshot)
                    .await?
                    .map(|c| c.map(|c| (c, None))),
            };
            let (claim, pinned) = match exposed {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(Action::requeue(POLL)),
                Err((reason, message)) => {
                    finish(st, TransferPhase::Failed, Some(reason), Some(message));
                    return Ok(Action::requeue(Duration::ZERO));
                }
            };
            let place = placement::decide(ctx, pinned.as_deref(), &name).await?;
            if let placement::Placement::Wait(why) = place {
                st.reason = Some("WaitingForNodeSlot".into());
                st.message = Some(why);
                return Ok(Action::requeue(POLL));
            }
            let secret = live::access_secret_name(&name);
            let pod_ns = upload_pod_namespace(du, ctx);
            let mut p = pod::upload_pod(
                du,
                ctx,
                &bsl,
                &claim,
                pod::Site {
                    namespace: &pod_ns,
                    owner: (!live).then(|| owner(du)),
                    access_secret: live.then_some(secret.as_str()),
                },
                labels,
            );
            if let Some(spec) = p.spec.as_mut() {
                spec.affinity = placement::affinity(&place);
            }
            // Resources of the mover come from the Backup (spec.volumes.moverResources).
            let backups: Api<holdfast_api::Backup> =
                Api::namespaced(ctx.client.clone(), &du.spec.backup.namespace);
            if let Some(r) = backups
                .get_opt(&du.spec.backup.name)
                .await
                .map_err(Error::kube("get Backup"))?
                .and_then(|b| b.spec.volumes.mover_resources)
                && let Some(c) = p.spec.as_mut().and_then(|s| s.containers.first_mut())
            {
                c.resources = Some(r);
            }
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod_ns);
            match pods.create(&PostParams::default(), &p).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                // Admission (Pod Security, quotas) refused the pod in the application's namespace.
                Err(kube::Error::Api(s)) if live && (s.code == 403 || s.code == 422) => {
                    finish(
                        st,
                        TransferPhase::Failed,
                        Some("MoverPodRejected"),
                        Some(format!(
                            "namespace {pod_ns} refused the live-copy mover pod: {}. A live copy runs the mover (root, capability DAC_OVERRIDE, Pod Security baseline) in the claim's namespace; allow baseline there (label pod-security.kubernetes.io/enforce=baseline) or use a StorageClass whose driver has a VolumeSnapshotClass",
                            s.message
                        )),
                    );
                    live::cleanup(ctx, du).await?;
                    return Ok(Action::requeue(Duration::ZERO));
                }
                Err(e) => return Err(Error::kube("create mover Pod")(e)),
            }
            st.reason = live.then(|| "LiveCopy".into());
            st.message = live.then(|| {
                "copying the live volume (no snapshot): files changed during the copy may be inconsistent".into()
            });
            st.phase = TransferPhase::InProgress;
            st.mover_pod = Some(name.clone());
            info!(upload = %name, pvc = %du.spec.pvc, "mover pod started");
            Ok(Action::requeue(POLL))
        }
        TransferPhase::InProgress => {
            let pods: Api<Pod> =
                Api::namespaced(ctx.client.clone(), &upload_pod_namespace(du, ctx));
            let Some(p) = pods
                .get_opt(&name)
                .await
                .map_err(Error::kube("get mover Pod"))?
            else {
                // The pod vanished (deleted, or the operator died before creating it): start over.
                st.phase = TransferPhase::Preparing;
                return Ok(Action::requeue(Duration::ZERO));
            };
            st.node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            if placement::delete_if_stuck(&pods, &p).await? {
                return Ok(Action::requeue(POLL));
            }
            match pod::outcome(&p) {
                pod::Outcome::Running => {
                    if let Some(prog) = pod::last_event(&pods, &name, "progress").await {
                        st.bytes_done = prog["bytes_read"].as_u64().unwrap_or(st.bytes_done);
                        st.bytes_total = prog["bytes_total"].as_u64().unwrap_or(st.bytes_total);
                        st.bytes_uploaded =
                            prog["bytes_uploaded"].as_u64().unwrap_or(st.bytes_uploaded);
                    }
                    Ok(Action::requeue(POLL))
                }
                pod::Outcome::Succeeded | pod::Outcome::Partial => {
                    let Some(sum) = pod::last_event(&pods, &name, "summary").await else {
                        finish(
                            st,
                            TransferPhase::Failed,
                            Some("NoResult"),
                            Some("the mover exited successfully but printed no summary".into()),
                        );
                        cleanup_upload(ctx, du).await?;
                        return Ok(Action::requeue(Duration::ZERO));
                    };
                    st.snapshot_id = sum["snapshot"].as_str().map(Into::into);
                    st.bytes_total = sum["bytes_total"].as_u64().unwrap_or(0);
                    st.bytes_done = st.bytes_total;
                    st.bytes_uploaded = sum["bytes_uploaded"].as_u64().unwrap_or(0);
                    let partial = matches!(pod::outcome(&p), pod::Outcome::Partial);
                    finish(
                        st,
                        TransferPhase::Completed,
                        partial.then_some("SomeFilesUnreadable"),
                        partial.then(|| {
                            format!(
                                "{} files could not be read; see the mover pod's log",
                                sum["errors"].as_u64().unwrap_or(0)
                            )
                        }),
                    );
                    ctx.metrics.finished("dataupload", "Completed");
                    info!(upload = %name, snapshot = ?st.snapshot_id, bytes = st.bytes_total, uploaded = st.bytes_uploaded, "upload completed");
                    cleanup_upload(ctx, du).await?;
                    Ok(Action::requeue(Duration::ZERO))
                }
                pod::Outcome::Failed(why) => {
                    let detail = pod::failure_detail(&pods, &name).await.unwrap_or(why);
                    finish(st, TransferPhase::Failed, Some("MoverFailed"), Some(detail));
                    ctx.metrics.finished("dataupload", "Failed");
                    cleanup_upload(ctx, du).await?;
                    Ok(Action::requeue(Duration::ZERO))
                }
            }
        }
        _ => Ok(Action::await_change()),
    }
}

async fn create_ignoring_conflict<K>(api: &Api<K>, o: &K, call: &'static str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), o).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(call)(e)),
    }
}

/// Exposes the upload's VolumeSnapshot `src_name` as a claim in the operator namespace.
/// `Ok(Ok(None))`: not ready yet; `Ok(Err(..))`: cannot be done (reason, message).
async fn expose_snapshot(
    du: &DataUpload,
    ctx: &Context,
    src_name: &str,
) -> Result<Result<Option<String>, (&'static str, String)>, Error> {
    let name = du.name_any();
    let opns = &ctx.namespace;
    let labels = labels_for(&name, du.labels());
    let src_ns = &du.spec.pvc.namespace;
    let src_api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), src_ns);
    let Some(src) = src_api
        .get_opt(src_name)
        .await
        .map_err(Error::kube("get VolumeSnapshot"))?
    else {
        return Ok(Err((
            "SnapshotNotFound",
            format!("VolumeSnapshot {src_ns}/{src_name} no longer exists"),
        )));
    };
    let Some(content_name) = src
        .status
        .as_ref()
        .and_then(|s| s.bound_volume_snapshot_content_name.clone())
    else {
        return Ok(Ok(None));
    };
    let vscs: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let Some(content) = vscs
        .get_opt(&content_name)
        .await
        .map_err(Error::kube("get VolumeSnapshotContent"))?
    else {
        return Ok(Err((
            "SnapshotNotFound",
            format!("VolumeSnapshotContent {content_name} no longer exists"),
        )));
    };
    let Some(handle) = content
        .status
        .as_ref()
        .and_then(|s| s.snapshot_handle.clone())
    else {
        return Ok(Ok(None));
    };
    let restore_size = content
        .status
        .as_ref()
        .and_then(|s| s.restore_size)
        .unwrap_or(0)
        .max(0) as u64;

    // The source claim gives class, size and mode; a deleted claim falls back to any class
    // of the same driver.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), src_ns);
    let src_pvc = pvcs
        .get_opt(&du.spec.pvc.name)
        .await
        .map_err(Error::kube("get PersistentVolumeClaim"))?;
    let mut class = src_pvc
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.storage_class_name.clone());
    if class.is_none() {
        let scs: Api<StorageClass> = Api::all(ctx.client.clone());
        class = scs
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list StorageClasses"))?
            .items
            .into_iter()
            .find(|s| s.provisioner == content.spec.driver)
            .and_then(|s| s.metadata.name);
    }
    let requested = src_pvc
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| super::parse_quantity(&q.0))
        .unwrap_or(0);
    let size = restore_size.max(requested).max(1024 * 1024);

    // 1. A content of our own on the same snapshot handle, Retain: deleting it never deletes the snapshot.
    let vsc_name = format!("holdfast-{name}");
    let vsc = VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some(vsc_name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            deletion_policy: "Retain".into(),
            driver: content.spec.driver.clone(),
            source: ContentSource {
                snapshot_handle: Some(handle),
                volume_handle: None,
            },
            volume_snapshot_ref: SnapshotRef {
                name: name.clone(),
                namespace: opns.clone(),
                uid: None,
            },
            volume_snapshot_class_name: content.spec.volume_snapshot_class_name.clone(),
            source_volume_mode: content.spec.source_volume_mode.clone(),
        },
        status: None,
    };
    create_ignoring_conflict(&vscs, &vsc, "create VolumeSnapshotContent").await?;
    // 2. A VolumeSnapshot in the operator namespace bound to it.
    let vs = VolumeSnapshot {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(opns.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner(du)]),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: None,
                volume_snapshot_content_name: Some(vsc_name),
            },
            volume_snapshot_class_name: content.spec.volume_snapshot_class_name.clone(),
        },
        status: None,
    };
    create_ignoring_conflict(
        &Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), opns),
        &vs,
        "create VolumeSnapshot",
    )
    .await?;
    // 3. A temporary claim restored from it, mounted read-only by the mover.
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(opns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![owner(du)]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: class,
            volume_mode: du.spec.volume_mode.clone(),
            data_source: Some(TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: name.clone(),
            }),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    create_ignoring_conflict(
        &Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), opns),
        &pvc,
        "create temporary PersistentVolumeClaim",
    )
    .await?;
    Ok(Ok(Some(name)))
}

/// Deletes mover pod `name` at once (no grace: a mover's work is either complete or
/// worthless) if it exists and is the transfer's own (label [`TRANSFER_LABEL`] = `name`; in an
/// application's namespace a pod of that name may be the user's). True when it existed.
pub(super) async fn delete_mover_pod(pods: &Api<Pod>, name: &str) -> Result<bool, Error> {
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
    pods.delete(
        name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .map(|_| ())
    .or_else(ignore_not_found)
    .map_err(Error::kube("delete mover Pod"))?;
    Ok(true)
}

/// Namespace of an upload's mover pod: the claim's for a live copy, else the operator's.
fn upload_pod_namespace(du: &DataUpload, ctx: &Context) -> String {
    if du.spec.volume_snapshot.is_none() {
        du.spec.pvc.namespace.clone()
    } else {
        ctx.namespace.clone()
    }
}

/// Deletes the upload's pod, claim, VolumeSnapshot and VolumeSnapshotContent (for a live copy:
/// its pod and copied Secret); true when all are gone.
async fn cleanup_upload(ctx: &Context, du: &DataUpload) -> Result<bool, Error> {
    if du.spec.volume_snapshot.is_none() {
        return live::cleanup(ctx, du).await;
    }
    let name = &du.name_any();
    let opns = &ctx.namespace;
    let dp = DeleteParams::background();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), opns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), opns);
    let vss: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), opns);
    let vscs: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let mut gone = true;
    if delete_mover_pod(&pods, name).await? {
        gone = false;
    }
    if pvcs
        .get_opt(name)
        .await
        .map_err(Error::kube("get temporary claim"))?
        .is_some()
    {
        gone = false;
        pvcs.delete(name, &dp)
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("delete temporary claim"))?;
    }
    if vss
        .get_opt(name)
        .await
        .map_err(Error::kube("get exposed VolumeSnapshot"))?
        .is_some()
    {
        gone = false;
        vss.delete(name, &dp)
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("delete exposed VolumeSnapshot"))?;
    }
    let vsc_name = format!("holdfast-{name}");
    if let Some(c) = vscs
        .get_opt(&vsc_name)
        .await
        .map_err(Error::kube("get exposed VolumeSnapshotContent"))?
    {
        gone = false;
        if c.metadata.deletion_timestamp.is_none() {
            vscs.delete(&vsc_name, &dp)
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(Error::kube("delete exposed VolumeSnapshotContent"))?;
        }
    }
    Ok(gone)
}

// ---------------------------------------------------------------------------------------------
// DataDownload

async fn reconcile_download(dd: Arc<DataDownload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer("datadownload");
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = dd.name_any();
    let Some(dd) = current(&api, &dd, "get DataDownload").await? else {
        return Ok(Action::await_change());
    };
    if dd.meta().deletion_timestamp.is_some() {
        // A download going away takes its volume along unless a claim already holds it (a
        // restore cancelled or deleted after the copy but before its claim existed).
        if !cleanup_download(&ctx, &name, true).await? {
            return Ok(Action::requeue(POLL));
        }
        remove_finalizer(&api, &*dd, FINALIZER).await?;
        return Ok(Action::await_change());
    }
    if add_finalizer(&api, &*dd, FINALIZER).await? {
        return Ok(Action::await_change());
    }
    let old = dd.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let action = step_download(&dd, &ctx, &mut st).await?;
    if st != old {
        write_status(&api, &*dd, "DataDownload", st).await?;
    }
    Ok(action)
}

async fn step_download(
    dd: &DataDownload,
    ctx: &Context,
    st: &mut TransferStatus,
) -> Result<Action, Error> {
    let name = dd.name_any();
    let opns = &ctx.namespace;
    if st.phase.is_terminal() {
        let discard = st.phase != TransferPhase::Completed;
        return Ok(if cleanup_download(ctx, &name, discard).await? {
            Action::await_change()
        } else {
            Action::requeue(POLL)
        });
    }
    if dd.spec.cancel {
        cleanup_download(ctx, &name, true).await?;
        finish(
            st,
            TransferPhase::Cancelled,
            Some("Cancelled"),
            Some("cancelled".into()),
        );
        return Ok(Action::requeue(Duration::ZERO));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), opns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), opns);
    match st.phase {
        TransferPhase::Pending => take_slot(ctx, st).await,
        TransferPhase::Preparing => {
            let Some(bsl) = location(ctx, &dd.spec.storage_location).await? else {
                finish(
                    st,
                    TransferPhase::Failed,
                    Some("LocationNotFound"),
                    Some(format!(
                        "BackupStorageLocation {} does not exist",
                        dd.spec.storage_location
                    )),
                );
                return Ok(Action::requeue(Duration::ZERO));
            };
            let labels = labels_for(&name, dd.labels());
            let pvc = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(opns.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner(dd)]),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: dd.spec.storage_class_name.clone(),
                    volume_mode: dd.spec.volume_mode.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(dd.spec.capacity.clone()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            };
            create_ignoring_conflict(&pvcs, &pvc, "create temporary PersistentVolumeClaim").await?;
            let place = placement::decide(ctx, None, &name).await?;
            if let placement::Placement::Wait(why) = place {
                st.reason = Some("WaitingForNodeSlot".into());
                st.message = Some(why);
                return Ok(Action::requeue(POLL));
            }
            st.reason = None;
            st.message = None;
            let mut p = pod::download_pod(dd, ctx, &bsl, &name, owner(dd), labels);
            if let Some(spec) = p.spec.as_mut() {
                spec.affinity = placement::affinity(&place);
            }
            create_ignoring_conflict(&pods, &p, "create mover Pod").await?;
            st.phase = TransferPhase::InProgress;
            st.mover_pod = Some(name.clone());
            Ok(Action::requeue(POLL))
        }
        TransferPhase::InProgress => {
            if let Some(pv) = st.volume.clone() {
                return hand_over(dd, ctx, st, &pv).await;
            }
            let Some(p) = pods
                .get_opt(&name)
                .await
                .map_err(Error::kube("get mover Pod"))?
            else {
                st.phase = TransferPhase::Preparing;
                return Ok(Action::requeue(Duration::ZERO));
            };
            st.node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            if placement::delete_if_stuck(&pods, &p).await? {
                return Ok(Action::requeue(POLL));
            }
            match pod::outcome(&p) {
                pod::Outcome::Running => {
                    if let Some(prog) = pod::last_event(&pods, &name, "progress").await {
                        st.bytes_done = prog["bytes"].as_u64().unwrap_or(st.bytes_done);
                    }
                    st.bytes_total = dd.spec.expected_bytes.unwrap_or(0).max(st.bytes_done);
                    Ok(Action::requeue(POLL))
                }
                pod::Outcome::Succeeded | pod::Outcome::Partial => {
                    if let Some(sum) = pod::last_event(&pods, &name, "summary").await {
                        st.bytes_done = sum["bytes"].as_u64().unwrap_or(0);
                        st.bytes_total = st.bytes_done;
                    }
                    st.snapshot_id = Some(dd.spec.snapshot_id.clone());
                    if matches!(pod::outcome(&p), pod::Outcome::Partial) {
                        st.reason = Some("SomeMetadataNotRestored".into());
                        st.message = Some(
                            "some ownership or times could not be applied; see the mover pod's log"
                                .into(),
                        );
                    }
                    // Keep the volume: Retain, then release it from the temporary claim.
                    let Some(pv) = pvcs
                        .get_opt(&name)
                        .await
                        .map_err(Error::kube("get temporary claim"))?
                        .and_then(|c| c.spec)
                        .and_then(|s| s.volume_name)
                    else {
                        finish(
                            st,
                            TransferPhase::Failed,
                            Some("VolumeLost"),
                            Some("the temporary claim lost its volume".into()),
                        );
                        return Ok(Action::requeue(Duration::ZERO));
                    };
                    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
                    let cur = pvs
                        .get(&pv)
                        .await
                        .map_err(Error::kube("get restored PersistentVolume"))?;
                    let policy = cur
                        .spec
                        .as_ref()
                        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
                        .unwrap_or_else(|| "Delete".into());
                    let keep = cur
                        .annotations()
                        .get(RECLAIM_ANNOTATION)
                        .cloned()
                        .unwrap_or(policy);
                    let patch = serde_json::json!({
                        "metadata": {"annotations": {RECLAIM_ANNOTATION: keep}, "labels": {TRANSFER_LABEL: name}},
                        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
                    });
                    pvs.patch(&pv, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(Error::kube("retain restored PersistentVolume"))?;
                    st.volume = Some(pv);
                    Ok(Action::requeue(Duration::ZERO))
                }
                pod::Outcome::Failed(why) => {
                    let detail = pod::failure_detail(&pods, &name).await.unwrap_or(why);
                    finish(st, TransferPhase::Failed, Some("MoverFailed"), Some(detail));
                    ctx.metrics.finished("datadownload", "Failed");
                    cleanup_download(ctx, &name, true).await?;
                    Ok(Action::requeue(Duration::ZERO))
                }
            }
        }
        _ => Ok(Action::await_change()),
    }
}

/// After a successful restore: removes the pod and the temporary claim, then reserves the
/// (retained) volume for the target claim.
async fn hand_over(
    dd: &DataDownload,
    ctx: &Context,
    st: &mut TransferStatus,
    pv: &str,
) -> Result<Action, Error> {
    let name = dd.name_any();
    let opns = &ctx.namespace;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), opns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), opns);
    if delete_mover_pod(&pods, &name).await? {
        return Ok(Action::requeue(POLL));
    }
    if pvcs
        .get_opt(&name)
        .await
        .map_err(Error::kube("get temporary claim"))?
        .is_some()
    {
        pvcs.delete(&name, &DeleteParams::default())
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("delete temporary claim"))?;
        return Ok(Action::requeue(POLL));
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(cur) = pvs
        .get_opt(pv)
        .await
        .map_err(Error::kube("get restored PersistentVolume"))?
    else {
        finish(
            st,
            TransferPhase::Failed,
            Some("VolumeLost"),
            Some(format!("PersistentVolume {pv} disappeared")),
        );
        return Ok(Action::requeue(Duration::ZERO));
    };
    let claim = cur.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let target = &dd.spec.target_pvc;
    let reserved = claim.is_some_and(|c| {
        c.namespace.as_deref() == Some(&target.namespace) && c.name.as_deref() == Some(&target.name)
    });
    if !reserved {
        let patch = serde_json::json!({"spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": target.namespace, "name": target.name, "uid": null, "resourceVersion": null}}});
        pvs.patch(pv, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube("reserve restored PersistentVolume"))?;
    }
    finish(
        st,
        TransferPhase::Completed,
        st.reason.clone().as_deref(),
        st.message.clone(),
    );
    ctx.metrics.finished("datadownload", "Completed");
    info!(download = %name, volume = %pv, target = %target, "download completed; volume reserved for the target claim");
    Ok(Action::requeue(Duration::ZERO))
}

/// Whether an existing claim is bound to `pv` (names it in `spec.volumeName`, and the volume's
/// `claimRef` names the claim). The volume's phase is not enough: it turns `Bound` only after
/// the binder catches up with a claim created bound to it.
async fn held_by_claim(ctx: &Context, pv: &PersistentVolume) -> Result<bool, Error> {
    let Some(c) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(false);
    };
    let (Some(ns), Some(name)) = (c.namespace.as_deref(), c.name.as_deref()) else {
        return Ok(false);
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    Ok(pvcs
        .get_opt(name)
        .await
        .map_err(Error::kube("get claim of restored PersistentVolume"))?
        .and_then(|p| p.spec)
        .and_then(|s| s.volume_name)
        .is_some_and(|v| Some(v.as_str()) == pv.metadata.name.as_deref()))
}

/// Deletes the download's pod and temporary claim; with `discard`, a volume retained for the
/// target is deleted too unless a claim holds it (a failed, cancelled or abandoned restore
/// leaves nothing).
async fn cleanup_download(ctx: &Context, name: &str, discard: bool) -> Result<bool, Error> {
    let opns = &ctx.namespace;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), opns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), opns);
    let mut gone = true;
    if delete_mover_pod(&pods, name).await? {
        gone = false;
    }
    if pvcs
        .get_opt(name)
        .await
        .map_err(Error::kube("get temporary claim"))?
        .is_some()
    {
        gone = false;
        pvcs.delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("delete temporary claim"))?;
    }
    if discard {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let lp = ListParams::default().labels(&format!("{TRANSFER_LABEL}={name}"));
        for pv in pvs
            .list(&lp)
            .await
            .map_err(Error::kube("list restored PersistentVolumes"))?
            .items
        {
            if !held_by_claim(ctx, &pv).await? {
                gone = false;
                let patch =
                    serde_json::json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}});
                pvs.patch(
                    &pv.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(Error::kube("patch PersistentVolume"))?;
                pvs.delete(&pv.name_any(), &DeleteParams::default())
                    .await
                    .map(|_| ())
                    .or_else(ignore_not_found)
                    .map_err(Error::kube("delete PersistentVolume"))?;
            }
        }
    }
    Ok(gone)
}
