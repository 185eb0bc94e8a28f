//! Live copies (`spec.volumes.withoutSnapshot: LiveCopy`): a volume whose driver cannot
//! snapshot is read in place by a mover pod in the claim's own namespace (a claim can only be
//! mounted there). The pod mounts the claim read-only; when the claim is `ReadWriteOnce` and an
//! application pod mounts it, the mover runs on that pod's node (several pods on one node may
//! share a `ReadWriteOnce` volume). A `ReadWriteOncePod` claim in use cannot be read this way.
//!
//! The pod cannot reference Secrets of the operator namespace, so the repository password and
//! the location's credentials are copied into a Secret next to it for the time of the copy
//! (see docs/design/0004-live-copy-and-mover-placement.md for what that exposes).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use holdfast_api::location::BackupStorageLocation;
use holdfast_api::transfer::DataUpload;

use holdfast_api::reasons::TransferReason;

use super::TRANSFER_LABEL;
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::kube_ext::{self, delete};
use crate::runtime::{Context, Error};
use crate::storage::access;

/// The claim a live copy reads and the node it must be read on, if any.
pub struct LiveSource {
    pub claim: String,
    pub pinned: Option<String>,
}

/// Name of the copied access Secret of upload `name`.
pub fn access_secret_name(name: &str) -> String {
    format!("{name}-access")
}

/// Pods of `pods` (other than mover pods) that have not finished and mount claim `claim`.
pub fn consumers<'a>(pods: &'a [Pod], claim: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| !p.labels().contains_key(TRANSFER_LABEL))
        .filter(|p| kube_ext::running_with_claim(p, claim))
        .collect()
}

/// Checks the claim, finds where it can be read and copies the access Secret next to it.
/// Refused when the volume cannot be copied live.
pub async fn prepare(
    du: &DataUpload,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    labels: std::collections::BTreeMap<String, String>,
) -> Refusable<LiveSource> {
    let ns = &du.spec.pvc.namespace;
    let claim = &du.spec.pvc.name;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(pvc) = pvcs
        .get_opt(claim)
        .await
        .map_err(Error::kube("get PersistentVolumeClaim"))?
    else {
        return Ok(Err(Refusal::new(
            TransferReason::PVCNotFound,
            format!("claim {ns}/{claim} no longer exists"),
        )));
    };
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Ok(Err(Refusal::new(
            TransferReason::PVCNotBound,
            format!("claim {ns}/{claim} is not bound to a volume"),
        )));
    }
    let modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let all = pods
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Pods"))?
        .items;
    let users = consumers(&all, claim);
    let shared = modes
        .iter()
        .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany");
    if !shared && modes.iter().any(|m| m == "ReadWriteOncePod") && !users.is_empty() {
        return Ok(Err(Refusal::new(
            TransferReason::VolumeInUse,
            format!(
                "claim {ns}/{claim} is ReadWriteOncePod and mounted by pod {}; a live copy cannot mount it while it is in use (stop that pod, or use a StorageClass whose driver has a VolumeSnapshotClass)",
                users[0].name_any()
            ),
        )));
    }
    let pinned = if shared {
        None
    } else {
        users
            .iter()
            .find_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
    };
    let secret = access_secret_name(&du.name_any());
    if let Err(r) =
        access::copy_access_secret(ctx, bsl, &du.spec.repository, ns, &secret, labels).await?
    {
        return Ok(Err(r));
    }
    Ok(Ok(LiveSource {
        claim: claim.clone(),
        pinned,
    }))
}

/// Why a namespace's admission refused a live-copy mover pod, and the fix.
pub fn rejected(namespace: &str, message: &str) -> Refusal {
    Refusal::new(
        TransferReason::MoverPodRejected,
        format!(
            "namespace {namespace} refused the live-copy mover pod: {message}. A live copy runs the mover (root, capability DAC_OVERRIDE, Pod Security baseline) in the claim's namespace; allow baseline there (label pod-security.kubernetes.io/enforce=baseline) or use a StorageClass whose driver has a VolumeSnapshotClass"
        ),
    )
}

/// Deletes the live copy's pod and access Secret in the claim's namespace; true when both are
/// gone.
pub async fn cleanup(ctx: &Context, du: &DataUpload) -> Result<bool, Error> {
    let ns = &du.spec.pvc.namespace;
    let name = du.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut gone = true;
    if super::delete_mover_pod(&pods, &name).await? {
        gone = false;
    }
    let secret = access_secret_name(&name);
    if let Some(s) = secrets
        .get_opt(&secret)
        .await
        .map_err(Error::kube("get copied access Secret"))?
        && s.labels().get(TRANSFER_LABEL) == Some(&name)
    {
        // The copy of the credentials goes as soon as the pod is gone or going.
        gone = false;
        delete(
            &secrets,
            &secret,
            &DeleteParams::default(),
            "delete copied access Secret",
        )
        .await?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, claim: &str, phase: &str, mover: bool) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "labels": {}},
            "spec": {"containers": [], "nodeName": "n1",
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase},
        });
        if mover {
            v["metadata"]["labels"][TRANSFER_LABEL] = "x".into();
        }
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn consumers_are_running_pods_mounting_the_claim() {
        let pods = [
            pod("app", "data", "Running", false),
            pod("done", "data", "Succeeded", false),
            pod("other", "logs", "Running", false),
            pod("mover", "data", "Running", true),
            pod("starting", "data", "Pending", false),
        ];
        let names: Vec<String> = consumers(&pods, "data")
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["app", "starting"]);
    }
}
