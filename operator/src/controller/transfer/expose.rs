//! Exposing a snapshot to an upload's mover: the snapshot's content re-bound to a new
//! VolumeSnapshotContent of our own (`deletionPolicy: Retain`, so deleting it never deletes the
//! snapshot), a VolumeSnapshot in the operator namespace bound to that, and a temporary claim
//! restored from it; and removing all three afterwards. Talks to the cluster.

use std::collections::BTreeMap;

use holdfast_api::reasons::TransferReason;
use holdfast_api::transfer::DataUpload;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta};

use super::{labels_for, owner};
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::kube_ext::{create_or_adopt, delete_if_present, remove_finalizer};
use crate::runtime::names::parse_quantity;
use crate::runtime::{Context, Error};
use crate::snapshot::{
    ContentSource, SnapshotRef, VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotContentSpec,
    VolumeSnapshotSource, VolumeSnapshotSpec,
};

/// The smallest temporary claim (a snapshot that reports no size).
const MIN_SIZE: u64 = 1024 * 1024;

/// Name of the VolumeSnapshotContent exposing upload `name`'s snapshot.
fn content_name(name: &str) -> String {
    format!("holdfast-{name}")
}

/// Exposes the upload's VolumeSnapshot `src_name` as a claim in the operator namespace.
/// `Ok(Ok(None))`: not ready yet; refused when the snapshot is gone.
pub async fn expose(du: &DataUpload, ctx: &Context, src_name: &str) -> Refusable<Option<String>> {
    let src = match source_content(du, ctx, src_name).await? {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(Ok(None)),
        Err(r) => return Ok(Err(r)),
    };
    let (class, size) = claim_class_and_size(du, ctx, &src).await?;
    let name = du.name_any();
    let opns = &ctx.namespace;
    let labels = labels_for(&name, du.labels());
    let vscs: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let vsc = content(&name, opns, &src, labels.clone());
    create_or_adopt(&vscs, &vsc, "create VolumeSnapshotContent").await?;
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
                volume_snapshot_content_name: Some(content_name(&name)),
            },
            volume_snapshot_class_name: src.class.clone(),
        },
        status: None,
    };
    let vss: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), opns);
    create_or_adopt(&vss, &vs, "create VolumeSnapshot").await?;
    let pvc = temporary_claim(du, opns, labels, class, size);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), opns);
    create_or_adopt(&pvcs, &pvc, "create temporary PersistentVolumeClaim").await?;
    Ok(Ok(Some(name)))
}

/// What is needed of the source snapshot's content.
struct Source {
    driver: String,
    handle: String,
    class: Option<String>,
    mode: Option<String>,
    restore_size: u64,
}

/// The content bound to the source snapshot (`None` while it is not cut yet).
async fn source_content(
    du: &DataUpload,
    ctx: &Context,
    src_name: &str,
) -> Refusable<Option<Source>> {
    let src_ns = &du.spec.pvc.namespace;
    let gone = |what: String| {
        Ok(Err(Refusal::new(
            TransferReason::SnapshotNotFound,
            format!("{what} no longer exists"),
        )))
    };
    let src_api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), src_ns);
    let Some(src) = src_api
        .get_opt(src_name)
        .await
        .map_err(Error::kube("get VolumeSnapshot"))?
    else {
        return gone(format!("VolumeSnapshot {src_ns}/{src_name}"));
    };
    let Some(bound) = src
        .status
        .and_then(|s| s.bound_volume_snapshot_content_name)
    else {
        return Ok(Ok(None));
    };
    let vscs: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let Some(content) = vscs
        .get_opt(&bound)
        .await
        .map_err(Error::kube("get VolumeSnapshotContent"))?
    else {
        return gone(format!("VolumeSnapshotContent {bound}"));
    };
    let status = content.status.unwrap_or_default();
    let Some(handle) = status.snapshot_handle else {
        return Ok(Ok(None));
    };
    Ok(Ok(Some(Source {
        driver: content.spec.driver,
        handle,
        class: content.spec.volume_snapshot_class_name,
        mode: content.spec.source_volume_mode,
        restore_size: status.restore_size.unwrap_or(0).max(0) as u64,
    })))
}

/// Class and size of the temporary claim: from the source claim, or (claim deleted) any class
/// of the same driver and the snapshot's size.
async fn claim_class_and_size(
    du: &DataUpload,
    ctx: &Context,
    src: &Source,
) -> Result<(Option<String>, u64), Error> {
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &du.spec.pvc.namespace);
    let src_pvc = pvcs
        .get_opt(&du.spec.pvc.name)
        .await
        .map_err(Error::kube("get PersistentVolumeClaim"))?;
    let spec = src_pvc.and_then(|p| p.spec);
    let mut class = spec.as_ref().and_then(|s| s.storage_class_name.clone());
    if class.is_none() {
        let scs: Api<StorageClass> = Api::all(ctx.client.clone());
        class = scs
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list StorageClasses"))?
            .items
            .into_iter()
            .find(|s| s.provisioner == src.driver)
            .and_then(|s| s.metadata.name);
    }
    let requested = spec
        .and_then(|s| s.resources)
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").and_then(|q| parse_quantity(&q.0)))
        .unwrap_or(0);
    Ok((class, src.restore_size.max(requested).max(MIN_SIZE)))
}

fn content(
    name: &str,
    opns: &str,
    src: &Source,
    labels: BTreeMap<String, String>,
) -> VolumeSnapshotContent {
    VolumeSnapshotContent {
        metadata: ObjectMeta {
            name: Some(content_name(name)),
            labels: Some(labels),
            ..Default::default()
        },
        spec: VolumeSnapshotContentSpec {
            deletion_policy: "Retain".into(),
            driver: src.driver.clone(),
            source: ContentSource {
                snapshot_handle: Some(src.handle.clone()),
                volume_handle: None,
            },
            volume_snapshot_ref: SnapshotRef {
                name: name.into(),
                namespace: opns.into(),
                uid: None,
            },
            volume_snapshot_class_name: src.class.clone(),
            source_volume_mode: src.mode.clone(),
        },
        status: None,
    }
}

/// The claim restored from the exposed snapshot, mounted read-only by the mover.
fn temporary_claim(
    du: &DataUpload,
    opns: &str,
    labels: BTreeMap<String, String>,
    class: Option<String>,
    size: u64,
) -> PersistentVolumeClaim {
    let name = du.name_any();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(opns.into()),
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
                name,
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
    }
}

/// Deletes the temporary claim, the exposed VolumeSnapshot and its content; true when all
/// are gone.
pub async fn remove(ctx: &Context, name: &str) -> Result<bool, Error> {
    let opns = &ctx.namespace;
    let dp = DeleteParams::background();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), opns);
    let vss: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), opns);
    let vscs: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let claim = delete_if_present(&pvcs, name, &dp, "delete temporary claim").await?;
    let snapshot = delete_if_present(&vss, name, &dp, "delete exposed VolumeSnapshot").await?;
    let mut content = delete_if_present(
        &vscs,
        &content_name(name),
        &dp,
        "delete exposed VolumeSnapshotContent",
    )
    .await?;
    if content && !snapshot {
        content = !release_orphan(&vscs, &content_name(name)).await?;
    }
    Ok(!(claim || snapshot || content))
}

/// The snapshot controller's finalizer that keeps a content while its VolumeSnapshot exists.
const BOUND_PROTECTION: &str =
    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";

/// Our exposed content, being deleted after its VolumeSnapshot is gone, can keep the snapshot
/// controller's bound-protection finalizer: when the VolumeSnapshot is deleted while the
/// controller is still binding the two (a transfer cancelled within a second of starting),
/// the controller only notices at its next resync, minutes later, and the transfer's cleanup
/// waits that long. The content is ours and `Retain` (removing it never touches the snapshot
/// data), so the finalizer is removed here. True when nothing holds the content any more.
async fn release_orphan(vscs: &Api<VolumeSnapshotContent>, name: &str) -> Result<bool, Error> {
    let Some(c) = vscs
        .get_opt(name)
        .await
        .map_err(Error::kube("get exposed VolumeSnapshotContent"))?
    else {
        return Ok(true);
    };
    if !orphaned_by_its_snapshot(&c) {
        return Ok(false);
    }
    tracing::info!(content = %name, "its VolumeSnapshot is gone: removing the snapshot controller's bound-protection finalizer");
    remove_finalizer(vscs, &c, BOUND_PROTECTION).await?;
    Ok(true)
}

/// Whether content `c` is being deleted and only the bound-protection finalizer (left behind
/// for a VolumeSnapshot that no longer exists) holds it. Pure.
fn orphaned_by_its_snapshot(c: &VolumeSnapshotContent) -> bool {
    let fins = c.metadata.finalizers.as_deref().unwrap_or_default();
    c.metadata.deletion_timestamp.is_some()
        && c.spec.deletion_policy == "Retain"
        && fins.iter().all(|f| f == BOUND_PROTECTION)
        && fins.iter().any(|f| f == BOUND_PROTECTION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(deleting: bool, policy: &str, finalizers: &[&str]) -> VolumeSnapshotContent {
        let mut v = serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": "holdfast-x", "finalizers": finalizers},
            "spec": {
                "deletionPolicy": policy,
                "driver": "hostpath.csi.k8s.io",
                "source": {"snapshotHandle": "h"},
                "volumeSnapshotRef": {"name": "x", "namespace": "ns"}
            }
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = "2026-12-07T02:20:13Z".into();
        }
        serde_json::from_value(v).expect("content")
    }

    #[test]
    fn only_a_retained_content_held_by_nothing_but_bound_protection_is_released() {
        assert!(orphaned_by_its_snapshot(&content(
            true,
            "Retain",
            &[BOUND_PROTECTION]
        )));
        // Not being deleted, not ours to keep, or held by something else: left alone.
        assert!(!orphaned_by_its_snapshot(&content(
            false,
            "Retain",
            &[BOUND_PROTECTION]
        )));
        assert!(!orphaned_by_its_snapshot(&content(
            true,
            "Delete",
            &[BOUND_PROTECTION]
        )));
        assert!(!orphaned_by_its_snapshot(&content(
            true,
            "Retain",
            &[BOUND_PROTECTION, "example.com/other"]
        )));
        assert!(!orphaned_by_its_snapshot(&content(true, "Retain", &[])));
    }
}
