//! Restore controller: finds the backup, restores its namespaces, then its volumes (a new claim
//! from the snapshot while it exists, else a DataDownload from the copy whose volume is handed
//! to the target claim), and only then the other objects, so workloads start on complete data.
//!
//! Never overwrites what it was not asked to: `NewPVC` refuses existing claims; `InPlace`
//! replaces a claim's volume only once the restored data is complete and no pod mounts it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use holdfast_api::backup::{Backup, BackupPhase, TransferPhase, VolumePhase};
use holdfast_api::common::NamespacedName;
use holdfast_api::restore::{
    Restore, RestoreFrom, RestorePhase, RestoreStatus, RestoreTarget, RestoredVolume,
};
use holdfast_api::transfer::{DataDownload, DataDownloadSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, Pod, TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::backup::metadata::{BackupMetadata, METADATA, RESOURCES};
use super::conditions::{self, READY, RECONCILING, STALLED};
use super::snapshot::VolumeSnapshot;
use super::transfer::RECLAIM_ANNOTATION;
use super::{
    Context, Error, add_finalizer, ignore_not_found, objects, remove_finalizer, repository,
};

pub const MANAGER: &str = "holdfast-restore-controller";
pub const FINALIZER: &str = "holdfast.dev/restore-cleanup";
pub const RESTORE_NAME: &str = "holdfast.dev/restore-name";
pub const RESTORE_NAMESPACE: &str = "holdfast.dev/restore-namespace";
pub const RESTORE_UID: &str = "holdfast.dev/restore-uid";
/// Label on a claim whose restore did not finish: its data must not be trusted.
pub const INCOMPLETE_LABEL: &str = "holdfast.dev/restore-incomplete";
const POLL: Duration = Duration::from_secs(2);

pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let restores: Api<Restore> = Api::all(ctx.client.clone());
    let downloads: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Controller::new(restores, watcher::Config::default())
        .watches(
            downloads,
            watcher::Config::default().labels(RESTORE_UID),
            |dd: DataDownload| {
                let l = dd.labels();
                Some(ObjectRef::new(l.get(RESTORE_NAME)?).within(l.get(RESTORE_NAMESPACE)?))
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "restore reconcile failed");
            }
        })
        .await;
}

fn error_policy(r: Arc<Restore>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(restore = %r.name_any(), error = %err, "restore reconcile error");
    ctx.metrics.reconcile_error("restore");
    Action::requeue(Duration::from_secs(5))
}

fn child_labels(r: &Restore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RESTORE_NAME.to_string(), r.name_any()),
        (
            RESTORE_NAMESPACE.to_string(),
            r.namespace().unwrap_or_default(),
        ),
        (RESTORE_UID.to_string(), r.uid().unwrap_or_default()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "holdfast".to_string(),
        ),
    ])
}

fn download_name(r: &Restore, target: &NamespacedName) -> String {
    super::child_name(
        &format!("{}-{}", r.namespace().unwrap_or_default(), r.name_any()),
        &[
            &r.uid().unwrap_or_default(),
            &target.namespace,
            &target.name,
        ],
    )
}

async fn reconcile(r: Arc<Restore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer("restore");
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
    let Some(r) = super::current(&api, &r, "get Restore").await? else {
        return Ok(Action::await_change());
    };
    let claimed = r
        .status
        .as_ref()
        .and_then(|s| s.operator_namespace.as_deref());
    if let Some(action) = super::scope::take_up(&ctx, &api, &*r, claimed, MANAGER).await? {
        return Ok(action);
    }
    if r.meta().deletion_timestamp.is_some() {
        if !delete_downloads(&r, &ctx).await? {
            return Ok(Action::requeue(POLL));
        }
        remove_finalizer(&api, &*r, FINALIZER).await?;
        return Ok(Action::await_change());
    }
    if add_finalizer(&api, &*r, FINALIZER).await? {
        return Ok(Action::await_change());
    }
    let old = r.status.clone().unwrap_or_default();
    if old.phase.is_some_and(|p| {
        matches!(
            p,
            RestorePhase::Completed
                | RestorePhase::PartiallyFailed
                | RestorePhase::Failed
                | RestorePhase::Cancelled
        )
    }) {
        return Ok(if delete_downloads(&r, &ctx).await? {
            Action::await_change()
        } else {
            Action::requeue(POLL)
        });
    }
    let mut st = old.clone();
    let action = step(&r, &ctx, &mut st).await?;
    if st != old {
        write_status(&api, &r, st).await?;
    }
    Ok(action)
}

async fn write_status(api: &Api<Restore>, r: &Restore, mut st: RestoreStatus) -> Result<(), Error> {
    let now = Timestamp::now();
    let g = r.meta().generation;
    st.observed_generation = g;
    let terminal = matches!(
        st.phase,
        Some(
            RestorePhase::Completed
                | RestorePhase::PartiallyFailed
                | RestorePhase::Failed
                | RestorePhase::Cancelled
        )
    );
    let reason = st
        .reason
        .clone()
        .unwrap_or_else(|| format!("{:?}", st.phase.unwrap_or(RestorePhase::Pending)));
    let message = st.message.clone().unwrap_or_default();
    conditions::set(
        &mut st.conditions,
        READY,
        st.phase == Some(RestorePhase::Completed),
        &reason,
        &message,
        g,
        now,
    );
    if terminal {
        conditions::remove(&mut st.conditions, RECONCILING);
    } else {
        conditions::set(
            &mut st.conditions,
            RECONCILING,
            true,
            &reason,
            &message,
            g,
            now,
        );
    }
    if st.phase == Some(RestorePhase::Failed) {
        conditions::set(&mut st.conditions, STALLED, true, &reason, &message, g, now);
    } else {
        conditions::remove(&mut st.conditions, STALLED);
    }
    let patch =
        serde_json::json!({"apiVersion": "holdfast.dev/v1alpha1", "kind": "Restore", "status": st});
    api.patch_status(
        &r.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("patch Restore status"))?;
    Ok(())
}

fn fail(st: &mut RestoreStatus, phase: RestorePhase, reason: &str, message: String) -> Action {
    st.phase = Some(phase);
    st.reason = Some(reason.into());
    st.message = Some(message);
    st.completion_time = Some(Time(Timestamp::now()));
    Action::requeue(Duration::ZERO)
}

/// Finds the backup named by the source.
async fn find_backup(
    r: &Restore,
    ctx: &Context,
) -> Result<Result<Backup, (&'static str, String)>, Error> {
    let own = r.namespace().unwrap_or_default();
    let src = &r.spec.source;
    if let Some(b) = &src.backup {
        let (ns, name) = match b.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (own.clone(), b.clone()),
        };
        if ns != own && own != ctx.namespace {
            return Ok(Err((
                "BackupNotAllowed",
                format!(
                    "a Restore in {own} can only restore Backups of its own namespace; spec.source.backup names {ns}/{name}"
                ),
            )));
        }
        let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
        return Ok(
            match api
                .get_opt(&name)
                .await
                .map_err(Error::kube("get Backup"))?
            {
                Some(b) => Ok(b),
                None => Err((
                    "BackupNotFound",
                    format!("Backup {ns}/{name} (spec.source.backup) does not exist"),
                )),
            },
        );
    }
    let Some(schedule) = &src.schedule else {
        return Ok(Err((
            "InvalidSource",
            "spec.source needs backup or schedule".into(),
        )));
    };
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &own);
    let lp = ListParams::default().labels(&format!("holdfast.dev/schedule={schedule}"));
    let at = src.point_in_time.as_ref().map(|t| t.0);
    let best = api
        .list(&lp)
        .await
        .map_err(Error::kube("list Backups"))?
        .items
        .into_iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Completed))
        .filter_map(|b| {
            let t = b.status.as_ref()?.completion_time.as_ref()?.0;
            (at.is_none_or(|at| t <= at)).then_some((t, b))
        })
        .max_by_key(|(t, _)| *t);
    Ok(match best {
        Some((_, b)) => Ok(b),
        None => Err((
            "BackupNotFound",
            format!(
                "Schedule {schedule} has no Completed backup{}",
                at.map(|a| format!(" at or before {a}")).unwrap_or_default()
            ),
        )),
    })
}

async fn step(r: &Restore, ctx: &Context, st: &mut RestoreStatus) -> Result<Action, Error> {
    let own = r.namespace().unwrap_or_default();
    if st.phase.is_none() {
        st.phase = Some(RestorePhase::Pending);
    }
    if r.spec.cancel {
        cancel_downloads(r, ctx).await?;
        for v in &mut st.volumes {
            if !v.phase.is_terminal() {
                v.phase = TransferPhase::Cancelled;
            }
        }
        if !delete_downloads(r, ctx).await? {
            return Ok(Action::requeue(POLL));
        }
        return Ok(fail(
            st,
            RestorePhase::Cancelled,
            "Cancelled",
            "cancelled by spec.cancel; volumes not yet restored were not created".into(),
        ));
    }
    let backup = match find_backup(r, ctx).await? {
        Ok(b) => b,
        Err((reason, msg)) => return Ok(fail(st, RestorePhase::Failed, reason, msg)),
    };
    let bst = backup.status.clone().unwrap_or_default();
    if !matches!(
        bst.phase,
        Some(BackupPhase::Completed | BackupPhase::PartiallyFailed)
    ) {
        return Ok(fail(
            st,
            RestorePhase::Failed,
            "BackupNotRestorable",
            format!(
                "Backup {}/{} is {:?}; only Completed or PartiallyFailed backups can be restored",
                backup.namespace().unwrap_or_default(),
                backup.name_any(),
                bst.phase
            ),
        ));
    }
    let bns = backup.namespace().unwrap_or_default();
    st.backup = Some(format!("{bns}/{}", backup.name_any()));
    if own != ctx.namespace && !r.spec.namespace_mapping.is_empty() {
        return Ok(fail(
            st,
            RestorePhase::Failed,
            "MappingNotAllowed",
            format!(
                "spec.namespaceMapping is only allowed for Restores in {}; this Restore restores into {own}",
                ctx.namespace
            ),
        ));
    }
    let loc = bst.storage_location.clone().unwrap_or_default();
    let bsl = match repository::resolve_location(ctx, Some(&loc)).await? {
        Ok(b) => b,
        Err(u) => {
            st.reason = Some(u.reason.into());
            st.message = Some(u.message);
            return Ok(Action::requeue(Duration::from_secs(15)));
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
    let prefix = repository::backup_prefix(&bsl, &bns, &backup.name_any());
    let md: BackupMetadata = match store.get(&format!("{prefix}/{METADATA}")).await {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(m) => m,
            Err(e) => {
                return Ok(fail(
                    st,
                    RestorePhase::Failed,
                    "BackupCorrupt",
                    format!("{prefix}/{METADATA}: {e}"),
                ));
            }
        },
        Err(e) if e.is_not_found() => {
            return Ok(fail(
                st,
                RestorePhase::Failed,
                "BackupIncomplete",
                format!(
                    "{prefix}/{METADATA} is missing in location {loc}: the backup never finished writing"
                ),
            ));
        }
        Err(e) => {
            st.reason = Some("StorageError".into());
            st.message = Some(e.to_string());
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    let archive = match store.get(&format!("{prefix}/{RESOURCES}")).await {
        Ok(b) => b,
        Err(e) => {
            st.reason = Some("StorageError".into());
            st.message = Some(format!("{prefix}/{RESOURCES}: {e}"));
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    let items = match objects::read_archive(&archive) {
        Ok(i) => i,
        Err(e) => {
            return Ok(fail(
                st,
                RestorePhase::Failed,
                "BackupCorrupt",
                format!("{prefix}/{RESOURCES}: {e}"),
            ));
        }
    };
    // Where each backed-up namespace goes.
    let map_ns = |ns: &str| -> String {
        if own != ctx.namespace {
            own.clone()
        } else {
            r.spec
                .namespace_mapping
                .get(ns)
                .cloned()
                .unwrap_or_else(|| ns.to_string())
        }
    };
    let mut mapping: BTreeMap<String, String> = BTreeMap::new();
    for ns in &md.namespaces {
        mapping.insert(ns.clone(), map_ns(ns));
    }
    let sel = &r.spec.selection;
    let ns_selected = |ns: &str| {
        (sel.included_namespaces.is_empty()
            || sel.included_namespaces.iter().any(|n| n == "*" || n == ns))
            && !sel.excluded_namespaces.iter().any(|n| n == ns)
    };

    if st.start_time.is_none() {
        st.phase = Some(RestorePhase::InProgress);
        st.start_time = Some(Time(Timestamp::now()));
        st.volumes = md
            .volumes
            .iter()
            .filter(|v| ns_selected(&v.pvc.namespace))
            .filter(|v| v.phase == VolumePhase::Completed)
            .map(|v| RestoredVolume {
                source: v.pvc.clone(),
                target: NamespacedName {
                    namespace: map_ns(&v.pvc.namespace),
                    name: v.pvc.name.clone(),
                },
                ..Default::default()
            })
            .collect();
        st.reason = None;
        st.message = None;
        return Ok(Action::requeue(Duration::ZERO));
    }

    // Namespaces first (existing ones are left as they are).
    let labels = BTreeMap::from([
        ("holdfast.dev/restore".to_string(), r.name_any()),
        ("holdfast.dev/backup".to_string(), backup.name_any()),
    ]);
    if own == ctx.namespace {
        objects::restore(
            &ctx.client,
            objects::RestoreRequest {
                archive: &archive,
                selection: sel,
                namespace_mapping: &mapping,
                existing: holdfast_api::restore::ExistingResourcePolicy::None,
                include_kinds: Some(&["namespaces"]),
                exclude_kinds: &[],
                labels: labels.clone(),
            },
        )
        .await
        .map_err(|e| Error::Other(format!("restoring namespaces: {e}")))?;
    }

    // Volumes.
    let mut waiting = false;
    for i in 0..st.volumes.len() {
        let md_vol = md
            .volumes
            .iter()
            .find(|v| v.pvc == st.volumes[i].source)
            .cloned()
            .unwrap_or_default();
        let claim = items
            .iter()
            .find(|it| {
                it.resource.plural == "persistentvolumeclaims"
                    && it.namespace() == Some(md_vol.pvc.namespace.as_str())
                    && it.name() == md_vol.pvc.name
            })
            .and_then(|it| serde_json::to_value(&it.object).ok())
            .and_then(|v| serde_json::from_value::<PersistentVolumeClaim>(v).ok());
        match advance_volume(r, ctx, &bsl, &md_vol, claim, &mut st.volumes[i]).await? {
            Step::Wait => waiting = true,
            Step::Done => {}
            Step::Refuse(reason, msg) => {
                cancel_downloads(r, ctx).await?;
                return Ok(fail(st, RestorePhase::Failed, reason, msg));
            }
        }
    }
    st.progress = Some(restore_progress(&st.volumes));
    if waiting {
        return Ok(Action::requeue(POLL));
    }

    // Then every other object.
    let exclude = ["persistentvolumeclaims", "persistentvolumes"];
    let report = match objects::restore(
        &ctx.client,
        objects::RestoreRequest {
            archive: &archive,
            selection: sel,
            namespace_mapping: &mapping,
            existing: r.spec.existing_resource_policy,
            include_kinds: None,
            exclude_kinds: &exclude,
            labels,
        },
    )
    .await
    {
        Ok(rep) => rep,
        Err(e) => {
            st.reason = Some("ObjectRestoreFailed".into());
            st.message = Some(e.to_string());
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    st.items_restored = Some(report.restored);
    let mut report = report;
    if r.spec.hooks.as_ref().is_some_and(|h| !h.rules.is_empty()) {
        // Restore hooks are not implemented yet: say so rather than pretend they ran.
        report.warnings.insert(
            0,
            "spec.hooks is not implemented yet: no restore hook (init container or exec) was run"
                .into(),
        );
        ctx.publish(
            &r.object_ref(&()),
            Event {
                type_: EventType::Warning,
                reason: "HooksNotRun".into(),
                note: Some("spec.hooks is not implemented yet: no restore hook was run".into()),
                action: "Restore".into(),
                secondary: None,
            },
        )
        .await;
    }
    st.warnings = Some(report.warnings.len() as u32);
    let failed_vols: Vec<String> = st
        .volumes
        .iter()
        .filter(|v| v.phase != TransferPhase::Completed)
        .map(|v| format!("{} ({})", v.target, v.reason.as_deref().unwrap_or("failed")))
        .collect();
    let (phase, reason) = if failed_vols.is_empty() && report.failed.is_empty() {
        (RestorePhase::Completed, None)
    } else if st
        .volumes
        .iter()
        .all(|v| v.phase != TransferPhase::Completed)
        && !st.volumes.is_empty()
        && report.restored == 0
    {
        (RestorePhase::Failed, Some("NothingRestored"))
    } else {
        (
            RestorePhase::PartiallyFailed,
            Some(if failed_vols.is_empty() {
                "ObjectsFailed"
            } else {
                "VolumesFailed"
            }),
        )
    };
    let mut msg = Vec::new();
    if !failed_vols.is_empty() {
        msg.push(format!("volumes not restored: {}", failed_vols.join(", ")));
    }
    if !report.failed.is_empty() {
        msg.push(format!(
            "objects not restored: {}",
            report.failed.join("; ")
        ));
    }
    if !report.warnings.is_empty() {
        msg.push(format!(
            "{} warnings: {}",
            report.warnings.len(),
            report
                .warnings
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    st.phase = Some(phase);
    st.reason = reason.map(Into::into);
    st.message = (!msg.is_empty()).then(|| msg.join(". ").chars().take(4000).collect());
    st.completion_time = Some(Time(Timestamp::now()));
    info!(restore = %r.name_any(), phase = ?phase, items = report.restored, "restore finished");
    ctx.metrics.finished("restore", &format!("{phase:?}"));
    ctx.publish(
        &r.object_ref(&()),
        Event {
            type_: if phase == RestorePhase::Completed {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: format!("{phase:?}"),
            note: Some(
                st.message
                    .clone()
                    .unwrap_or_else(|| {
                        format!(
                            "{} volumes and {} objects restored",
                            st.volumes.len(),
                            report.restored
                        )
                    })
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: "Restore".into(),
            secondary: None,
        },
    )
    .await;
    Ok(Action::requeue(Duration::ZERO))
}

enum Step {
    Wait,
    Done,
    Refuse(&'static str, String),
}

fn restore_progress(vols: &[RestoredVolume]) -> holdfast_api::backup::BackupProgress {
    let mut p = holdfast_api::common::Progress {
        volumes_total: vols.len() as u32,
        ..Default::default()
    };
    for v in vols {
        if v.phase.is_terminal() {
            p.volumes_done += 1;
        }
        p.bytes_done += v.bytes_done;
        p.bytes_total += v.bytes_total.max(v.bytes_done);
    }
    p.into()
}

/// Pods in `ns` that mount claim `name`.
async fn pods_mounting(ctx: &Context, ns: &str, name: &str) -> Result<Vec<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(pods
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Pods"))?
        .items
        .into_iter()
        .filter(|p| super::running_with_claim(p, name))
        .map(|p| p.name_any())
        .collect())
}

/// The target claim built from the backed-up one: mapped namespace and class, no binding.
fn target_claim(
    r: &Restore,
    backed_up: Option<PersistentVolumeClaim>,
    v: &RestoredVolume,
    class: Option<String>,
    volume_name: Option<String>,
    data_source: Option<TypedLocalObjectReference>,
) -> PersistentVolumeClaim {
    let mut pvc = backed_up.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = pvc.metadata.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !objects::sanitize::is_gitops_key(k));
    labels.insert("holdfast.dev/restore".into(), r.name_any());
    let annotations: BTreeMap<String, String> = pvc
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("pv.kubernetes.io/")
                && !k.starts_with("volume.beta.kubernetes.io/")
                && !k.starts_with("volume.kubernetes.io/")
                && !objects::sanitize::is_gitops_key(k)
                && k != "kubectl.kubernetes.io/last-applied-configuration"
        })
        .collect();
    pvc.metadata = ObjectMeta {
        name: Some(v.target.name.clone()),
        namespace: Some(v.target.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    };
    let mut spec = pvc.spec.unwrap_or_default();
    spec.storage_class_name = class;
    spec.volume_name = volume_name;
    spec.data_source = data_source.clone();
    spec.data_source_ref = None;
    spec.selector = None;
    pvc.spec = Some(spec);
    pvc.status = None;
    pvc
}

async fn advance_volume(
    r: &Restore,
    ctx: &Context,
    bsl: &holdfast_api::location::BackupStorageLocation,
    md_vol: &holdfast_api::backup::VolumeStatus,
    backed_up: Option<PersistentVolumeClaim>,
    v: &mut RestoredVolume,
) -> Result<Step, Error> {
    if v.phase.is_terminal() {
        return Ok(Step::Done);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.target.namespace);
    let class = md_vol
        .storage_class
        .clone()
        .map(|c| r.spec.storage_class_mapping.get(&c).cloned().unwrap_or(c));
    let in_place = r.spec.volumes.target == RestoreTarget::InPlace;
    let existing = pvcs
        .get_opt(&v.target.name)
        .await
        .map_err(Error::kube("get target claim"))?;
    let dl_name = download_name(r, &v.target);
    let downloads: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);

    if v.phase == TransferPhase::Pending && v.from.is_none() {
        // Decide once: refuse what would overwrite data we were not asked to.
        if in_place {
            if existing.is_none() {
                return Ok(Step::Refuse(
                    "PVCNotFound",
                    format!(
                        "spec.volumes.target is InPlace but claim {} does not exist; use NewPVC",
                        v.target
                    ),
                ));
            }
            let users = pods_mounting(ctx, &v.target.namespace, &v.target.name).await?;
            if !users.is_empty() {
                return Ok(Step::Refuse(
                    "VolumeInUse",
                    format!(
                        "claim {} is mounted by pod(s) {}; scale the workload down and create the Restore again",
                        v.target,
                        users.join(", ")
                    ),
                ));
            }
        } else if let Some(e) = &existing
            && e.labels()
                .get("holdfast.dev/restore")
                .is_none_or(|n| *n != r.name_any())
        {
            v.phase = TransferPhase::Failed;
            v.reason = Some("PVCExists".into());
            v.message = Some(format!(
                "claim {} already exists and was left alone; delete it or use spec.volumes.target: InPlace",
                v.target
            ));
            return Ok(Step::Done);
        }
        let snapshot_ready = match &md_vol.snapshot {
            Some(s) if v.target.namespace == md_vol.pvc.namespace && !in_place => {
                let api: Api<VolumeSnapshot> =
                    Api::namespaced(ctx.client.clone(), &md_vol.pvc.namespace);
                api.get_opt(&s.name)
                    .await
                    .map_err(Error::kube("get VolumeSnapshot"))?
                    .and_then(|vs| vs.status)
                    .and_then(|s| s.ready_to_use)
                    == Some(true)
            }
            _ => false,
        };
        let copy = md_vol.copy.as_ref().and_then(|c| c.snapshot_id.clone());
        v.from = match (r.spec.from, snapshot_ready, copy.is_some()) {
            (RestoreFrom::Snapshot | RestoreFrom::Auto, true, _) => Some(RestoreFrom::Snapshot),
            (RestoreFrom::Copy | RestoreFrom::Auto, _, true) => Some(RestoreFrom::Copy),
            _ => {
                v.phase = TransferPhase::Failed;
                v.reason = Some("NoData".into());
                v.message = Some(format!(
                    "no {} of claim {} is available (spec.from: {:?})",
                    if r.spec.from == RestoreFrom::Snapshot {
                        "snapshot in the target namespace"
                    } else {
                        "snapshot or copy"
                    },
                    md_vol.pvc,
                    r.spec.from
                ));
                return Ok(Step::Done);
            }
        };
        return Ok(Step::Wait);
    }

    match v.from {
        Some(RestoreFrom::Snapshot) => {
            if existing.is_none() {
                let s = md_vol.snapshot.clone().unwrap_or_default();
                let pvc = target_claim(
                    r,
                    backed_up,
                    v,
                    class,
                    None,
                    Some(TypedLocalObjectReference {
                        api_group: Some("snapshot.storage.k8s.io".into()),
                        kind: "VolumeSnapshot".into(),
                        name: s.name,
                    }),
                );
                pvcs.create(&PostParams::default(), &pvc)
                    .await
                    .map(|_| ())
                    .or_else(|e| match e {
                        kube::Error::Api(s) if s.code == 409 => Ok(()),
                        e => Err(e),
                    })
                    .map_err(Error::kube("create target claim"))?;
            }
            v.phase = TransferPhase::Completed;
            Ok(Step::Done)
        }
        _ => {
            let dd = match downloads
                .get_opt(&dl_name)
                .await
                .map_err(Error::kube("get DataDownload"))?
            {
                Some(d) => d,
                None => {
                    let capacity = backed_up
                        .as_ref()
                        .and_then(|p| p.spec.as_ref())
                        .and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("storage"))
                        .map(|q| q.0.clone())
                        .or_else(|| {
                            md_vol
                                .snapshot
                                .as_ref()
                                .and_then(|s| s.restore_size_bytes)
                                .map(|b| b.to_string())
                        })
                        .unwrap_or_else(|| "1Gi".into());
                    let dd = DataDownload {
                        metadata: ObjectMeta {
                            name: Some(dl_name.clone()),
                            namespace: Some(ctx.namespace.clone()),
                            labels: Some(child_labels(r)),
                            ..Default::default()
                        },
                        spec: DataDownloadSpec {
                            restore: NamespacedName {
                                namespace: r.namespace().unwrap_or_default(),
                                name: r.name_any(),
                            },
                            target_pvc: v.target.clone(),
                            storage_location: bsl.name_any(),
                            repository: md_vol.pvc.namespace.clone(),
                            snapshot_id: md_vol
                                .copy
                                .as_ref()
                                .and_then(|c| c.snapshot_id.clone())
                                .unwrap_or_default(),
                            storage_class_name: class.clone(),
                            capacity,
                            volume_mode: md_vol.volume_mode.clone(),
                            expected_bytes: md_vol.copy.as_ref().map(|c| c.bytes_total),
                            cancel: false,
                        },
                        status: None,
                    };
                    v.data_download = Some(dl_name.clone());
                    v.phase = TransferPhase::Preparing;
                    downloads
                        .create(&PostParams::default(), &dd)
                        .await
                        .map(|_| ())
                        .or_else(|e| match e {
                            kube::Error::Api(s) if s.code == 409 => Ok(()),
                            e => Err(e),
                        })
                        .map_err(Error::kube("create DataDownload"))?;
                    return Ok(Step::Wait);
                }
            };
            let ts = dd.status.clone().unwrap_or_default();
            v.bytes_done = ts.bytes_done;
            v.bytes_total = ts.bytes_total;
            match ts.phase {
                TransferPhase::Completed => {
                    let Some(pv) = ts.volume.clone() else {
                        v.phase = TransferPhase::Failed;
                        v.reason = Some("VolumeLost".into());
                        return Ok(Step::Done);
                    };
                    v.phase = TransferPhase::InProgress;
                    bind_target(r, ctx, backed_up, v, class, &pv, existing).await
                }
                TransferPhase::Failed | TransferPhase::Cancelled => {
                    v.phase = TransferPhase::Failed;
                    v.reason = ts.reason.clone();
                    v.message = ts.message.clone();
                    Ok(Step::Done)
                }
                p => {
                    v.phase = if p == TransferPhase::Pending {
                        TransferPhase::Preparing
                    } else {
                        p
                    };
                    Ok(Step::Wait)
                }
            }
        }
    }
}

/// Gives the restored volume `pv` to the target claim: creates it bound to `pv` (replacing an
/// existing claim for InPlace, once nothing mounts it), then restores the reclaim policy.
async fn bind_target(
    r: &Restore,
    ctx: &Context,
    backed_up: Option<PersistentVolumeClaim>,
    v: &mut RestoredVolume,
    class: Option<String>,
    pv: &str,
    existing: Option<PersistentVolumeClaim>,
) -> Result<Step, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.target.namespace);
    match existing {
        Some(e) if e.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv) => {
            if e.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
                return Ok(Step::Wait);
            }
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            if let Some(p) = pvs
                .get_opt(pv)
                .await
                .map_err(Error::kube("get restored PersistentVolume"))?
                && let Some(policy) = p.annotations().get(RECLAIM_ANNOTATION).cloned()
            {
                let patch = serde_json::json!({"metadata": {"annotations": {RECLAIM_ANNOTATION: null}}, "spec": {"persistentVolumeReclaimPolicy": policy}});
                pvs.patch(pv, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube("restore reclaim policy"))?;
            }
            v.phase = TransferPhase::Completed;
            Ok(Step::Done)
        }
        Some(e) => {
            // InPlace: the old claim goes only now that the restored data is complete.
            if r.spec.volumes.target != RestoreTarget::InPlace {
                v.phase = TransferPhase::Failed;
                v.reason = Some("PVCExists".into());
                v.message = Some(format!(
                    "claim {} appeared during the restore and was left alone",
                    v.target
                ));
                return Ok(Step::Done);
            }
            let users = pods_mounting(ctx, &v.target.namespace, &v.target.name).await?;
            if !users.is_empty() {
                return Ok(Step::Refuse(
                    "VolumeInUse",
                    format!(
                        "claim {} is mounted by pod(s) {}; scale the workload down and create the Restore again",
                        v.target,
                        users.join(", ")
                    ),
                ));
            }
            if e.metadata.deletion_timestamp.is_none() {
                info!(claim = %v.target, "in-place restore: replacing the claim's volume");
                pvcs.delete(&v.target.name, &DeleteParams::default())
                    .await
                    .map(|_| ())
                    .or_else(ignore_not_found)
                    .map_err(Error::kube("delete claim replaced in place"))?;
            }
            Ok(Step::Wait)
        }
        None => {
            let pvc = target_claim(r, backed_up, v, class, Some(pv.to_string()), None);
            pvcs.create(&PostParams::default(), &pvc)
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    kube::Error::Api(s) if s.code == 409 => Ok(()),
                    e => Err(e),
                })
                .map_err(Error::kube("create target claim"))?;
            Ok(Step::Wait)
        }
    }
}

async fn cancel_downloads(r: &Restore, ctx: &Context) -> Result<(), Error> {
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp =
        ListParams::default().labels(&format!("{RESTORE_UID}={}", r.uid().unwrap_or_default()));
    for dd in api
        .list(&lp)
        .await
        .map_err(Error::kube("list DataDownloads"))?
        .items
    {
        if !dd.spec.cancel && !dd.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
            let patch = serde_json::json!({"spec": {"cancel": true}});
            api.patch(
                &dd.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(Error::kube("cancel DataDownload"))?;
        }
    }
    Ok(())
}

/// Deletes the restore's DataDownloads; true when none is left.
async fn delete_downloads(r: &Restore, ctx: &Context) -> Result<bool, Error> {
    let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp =
        ListParams::default().labels(&format!("{RESTORE_UID}={}", r.uid().unwrap_or_default()));
    let items = api
        .list(&lp)
        .await
        .map_err(Error::kube("list DataDownloads"))?
        .items;
    for dd in &items {
        if dd.metadata.deletion_timestamp.is_none() {
            api.delete(&dd.name_any(), &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(Error::kube("delete DataDownload"))?;
        }
    }
    Ok(items.is_empty())
}
