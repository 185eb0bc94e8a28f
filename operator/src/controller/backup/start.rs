//! Backup phases before the volumes: the location, the namespaces and claims, the objects.

use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, BackupStatus, VolumeStatus};
use holdfast_api::common::NamespacedName;
use holdfast_api::location::{AccessMode, BackupStorageLocation};
use holdfast_api::reasons::{BackupReason, LocationReason};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use tracing::info;

use super::{fail, waiting};
use crate::objects;
use crate::runtime::error::Refusal;
use crate::runtime::{Context, Error};
use crate::storage;

/// How often a backup waiting for its location looks again.
const LOCATION_RETRY: Duration = Duration::from_secs(15);

/// The backup's location, usable for what the backup does; `Err(action)`: the backup failed
/// or waits (its status says why).
pub(super) async fn location(
    b: &Backup,
    ctx: &Context,
    st: &mut BackupStatus,
) -> Result<Result<BackupStorageLocation, Action>, Error> {
    let name = b.spec.storage_location.as_deref();
    // `spec.allowedNamespaces` admits a backup when it starts; one already running goes on.
    let found = if st.start_time.is_none() {
        storage::location_for(ctx, name, &b.namespace().unwrap_or_default()).await?
    } else {
        storage::location(ctx, name).await?
    };
    let bsl = match found {
        Ok(bsl) => bsl,
        Err(r) => return Ok(Err(location_refused(st, r))),
    };
    // Even a Backup of snapshots only writes its captured objects and metadata to its
    // location: a ReadOnly one is never written to (issue 15).
    if bsl.spec.access_mode == AccessMode::ReadOnly {
        let r = Refusal::new(
            LocationReason::LocationReadOnly,
            format!(
                "BackupStorageLocation {} is ReadOnly (restores only); choose another spec.storageLocation",
                bsl.name_any()
            ),
        );
        return Ok(Err(fail(st, BackupPhase::Failed, r)));
    }
    st.storage_location = Some(bsl.name_any());
    Ok(Ok(bsl))
}

/// What a backup does when its location cannot be used. Pure but for the clock.
pub(super) fn location_refused(st: &mut BackupStatus, r: Refusal) -> Action {
    let missing = r.reason == LocationReason::LocationNotFound.as_str()
        || r.reason == LocationReason::NoDefaultLocation.as_str()
        || r.reason == LocationReason::LocationNotAllowed.as_str();
    if st.start_time.is_none() && missing {
        // Not started: a location that does not exist is a mistake in the spec.
        return fail(st, BackupPhase::Failed, r);
    }
    // A running backup (or one whose location is not validated yet) waits for it.
    if st.start_time.is_none() {
        st.phase = Some(BackupPhase::Pending);
    }
    waiting(st, r.reason, r.message, LOCATION_RETRY)
}

/// Resolves the namespaces and claims and writes the captured objects to the location (once).
pub(super) async fn capture(
    b: &Backup,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    st: &mut BackupStatus,
) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let namespaces = match resolve_namespaces(b, ctx).await? {
        Ok(n) => n,
        Err(r) => return Ok(fail(st, BackupPhase::Failed, r)),
    };
    if let Err(r) = cluster_resources_allowed(&ns, &ctx.namespace, b.spec.include_cluster_resources)
    {
        return Ok(fail(st, BackupPhase::Failed, r));
    }
    if ns != ctx.namespace && !b.spec.selection.included_resources.is_empty() {
        let (resources, _) = match objects::discover(&ctx.client).await {
            Ok(d) => d,
            Err(e) => {
                let again = Duration::from_secs(10);
                return Ok(waiting(
                    st,
                    BackupReason::CaptureFailed,
                    e.to_string(),
                    again,
                ));
            }
        };
        let named = objects::select::cluster_scoped_named(&resources, &b.spec.selection);
        if let Err(r) = cluster_kinds_allowed(&ns, &ctx.namespace, &named) {
            return Ok(fail(st, BackupPhase::Failed, r));
        }
    }
    let include_cluster = b
        .spec
        .include_cluster_resources
        .unwrap_or(ns == ctx.namespace);
    let request = objects::CaptureRequest {
        namespaces: &namespaces,
        selection: &b.spec.selection,
        include_cluster_resources: include_cluster,
    };
    let captured = match objects::capture(&ctx.client, request).await {
        Ok(c) => c,
        Err(e) => {
            let again = Duration::from_secs(10);
            return Ok(waiting(
                st,
                BackupReason::CaptureFailed,
                e.to_string(),
                again,
            ));
        }
    };
    storage::catalog::write_objects(ctx, bsl, b, captured.archive).await?;
    st.namespaces = namespaces;
    st.warnings = Some(captured.warnings.len() as u32);
    st.volumes = captured.pvcs.iter().map(volume_status).collect();
    super::hooks::plan(b, ctx, st).await?;
    st.items_backed_up = Some(captured.items);
    st.reason = None;
    st.message = None;
    info!(backup = %b.name_any(), namespace = %ns, volumes = st.volumes.len(), items = captured.items, "selection resolved and objects captured");
    Ok(Action::requeue(Duration::ZERO))
}

fn volume_status(pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> VolumeStatus {
    VolumeStatus {
        pvc: NamespacedName {
            namespace: pvc.namespace().unwrap_or_default(),
            name: pvc.name_any(),
        },
        storage_class: pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
        volume_mode: pvc.spec.as_ref().and_then(|s| s.volume_mode.clone()),
        ..Default::default()
    }
}

/// Namespaces the backup covers; refused when a non-administrator backup names others.
async fn resolve_namespaces(
    b: &Backup,
    ctx: &Context,
) -> Result<Result<Vec<String>, Refusal>, Error> {
    let own = b.namespace().unwrap_or_default();
    let sel = &b.spec.selection;
    let all_requested =
        sel.included_namespaces.is_empty() || sel.included_namespaces.iter().any(|n| n == "*");
    if own != ctx.namespace {
        return Ok(tenant_namespaces(
            &own,
            &ctx.namespace,
            &sel.included_namespaces,
        ));
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

/// Only Backups in the operator namespace may capture cluster-scoped objects: a tenant's would
/// read them with the operator's rights, and its restore could create them. Pure.
fn cluster_resources_allowed(
    own: &str,
    operator: &str,
    asked: Option<bool>,
) -> Result<(), Refusal> {
    if own != operator && asked == Some(true) {
        return Err(Refusal::new(
            BackupReason::ClusterResourcesNotAllowed,
            format!(
                "spec.includeClusterResources: a Backup in namespace {own} may not capture cluster-scoped objects (only Backups in {operator} may); remove the field or set it false"
            ),
        ));
    }
    Ok(())
}

/// A tenant's Backup may not name cluster-scoped kinds (`named`) in `includedResources`. Pure.
fn cluster_kinds_allowed(own: &str, operator: &str, named: &[String]) -> Result<(), Refusal> {
    if own != operator && !named.is_empty() {
        return Err(Refusal::new(
            BackupReason::ClusterResourcesNotAllowed,
            format!(
                "spec.includedResources: {} cluster-scoped; a Backup in namespace {own} may capture objects of its own namespace only (only Backups in {operator} may capture cluster-scoped objects); remove them",
                match named {
                    [one] => format!("{one} is"),
                    many => format!("{} are", many.join(", ")),
                }
            ),
        ));
    }
    Ok(())
}

/// A tenant's Backup covers its own namespace only. Pure.
fn tenant_namespaces(
    own: &str,
    operator: &str,
    included: &[String],
) -> Result<Vec<String>, Refusal> {
    let all = included.is_empty() || included.iter().any(|n| n == "*");
    if !all && included.iter().any(|n| n != own) {
        return Err(Refusal::new(
            BackupReason::NamespaceNotAllowed,
            format!(
                "a Backup in namespace {own} may only back up namespace {own}; spec.includedNamespaces names others (only Backups in {operator} may span namespaces)"
            ),
        ));
    }
    Ok(vec![own.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_may_not_name_cluster_scoped_kinds() {
        let named = vec!["clusterrolebindings".to_string()];
        assert!(cluster_kinds_allowed("hf", "hf", &named).is_ok());
        assert!(cluster_kinds_allowed("shop", "hf", &[]).is_ok());
        let r = cluster_kinds_allowed("shop", "hf", &named).expect_err("refused");
        assert_eq!(r.reason, "ClusterResourcesNotAllowed");
        assert!(
            r.message
                .starts_with("spec.includedResources: clusterrolebindings is cluster-scoped"),
            "{}",
            r.message
        );
    }

    #[test]
    fn tenants_back_up_their_own_namespace_only() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(tenant_namespaces("shop", "hf", &[]).expect("ok"), ["shop"]);
        assert_eq!(
            tenant_namespaces("shop", "hf", &s(&["*"])).expect("ok"),
            ["shop"]
        );
        assert_eq!(
            tenant_namespaces("shop", "hf", &s(&["shop"])).expect("ok"),
            ["shop"]
        );
        let r = tenant_namespaces("shop", "hf", &s(&["shop", "bank"])).expect_err("refused");
        assert_eq!(r.reason, "NamespaceNotAllowed");
        let r = cluster_resources_allowed("shop", "hf", Some(true)).expect_err("refused");
        assert_eq!(r.reason, "ClusterResourcesNotAllowed");
        assert!(r.message.starts_with("spec.includeClusterResources"));
        assert!(cluster_resources_allowed("shop", "hf", Some(false)).is_ok());
        assert!(cluster_resources_allowed("shop", "hf", None).is_ok());
        assert!(cluster_resources_allowed("hf", "hf", Some(true)).is_ok());
    }

    #[test]
    fn a_missing_location_fails_a_new_backup_but_a_running_one_waits() {
        let gone = || Refusal::new(LocationReason::LocationNotFound, "gone");
        let mut st = BackupStatus::default();
        location_refused(&mut st, gone());
        assert_eq!(st.phase, Some(BackupPhase::Failed));
        let mut st = BackupStatus {
            phase: Some(BackupPhase::InProgress),
            start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        };
        location_refused(&mut st, gone());
        assert_eq!(st.phase, Some(BackupPhase::InProgress));
        assert_eq!(st.reason.as_deref(), Some("LocationNotFound"));
        let mut st = BackupStatus::default();
        location_refused(
            &mut st,
            Refusal::new(LocationReason::LocationUnavailable, "x"),
        );
        assert_eq!(st.phase, Some(BackupPhase::Pending));
        let mut st = BackupStatus::default();
        location_refused(
            &mut st,
            Refusal::new(LocationReason::LocationNotAllowed, "not here"),
        );
        assert_eq!(st.phase, Some(BackupPhase::Failed));
        assert_eq!(st.reason.as_deref(), Some("LocationNotAllowed"));
    }
}
