//! The Kubernetes call shapes every controller uses: the fresh read, finalizers,
//! create-or-adopt and delete-if-present. Talks to the cluster.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

/// What the kernel and the helpers need of an object type.
pub trait Object:
    Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}
impl<K> Object for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// The object as the API server has it now (`None`: gone). The watch cache can lag behind our
/// own last status write, so every reconcile decides on this.
pub async fn current<K: Object>(api: &Api<K>, o: &K) -> Result<Option<Arc<K>>, Error> {
    Ok(api
        .get_opt(&o.name_any())
        .await
        .map_err(Error::kube("get the reconciled object"))?
        .map(Arc::new))
}

/// Treats "not found" as done (for deletes and patches of objects that may already be gone).
pub fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

/// Whether `e` says the object already exists.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates `o`; an object of that name that already exists is adopted as it is (a restarted
/// reconcile finds what it created before). `Some(created)` when new, `None` when it existed.
pub async fn create_or_adopt<K: Object>(
    api: &Api<K>,
    o: &K,
    call: &'static str,
) -> Result<Option<K>, Error> {
    match api.create(&PostParams::default(), o).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_conflict(&e) => Ok(None),
        Err(e) => Err(Error::kube(call)(e)),
    }
}

/// Deletes `name` unless it is already gone or going; true when it still existed (the caller
/// looks again until it is gone).
pub async fn delete_if_present<K: Object>(
    api: &Api<K>,
    name: &str,
    dp: &DeleteParams,
    call: &'static str,
) -> Result<bool, Error> {
    let Some(o) = api.get_opt(name).await.map_err(Error::kube(call))? else {
        return Ok(false);
    };
    if o.meta().deletion_timestamp.is_none() {
        delete(api, name, dp, call).await?;
    }
    Ok(true)
}

/// Deletes `name`; an object already gone is fine.
pub async fn delete<K: Object>(
    api: &Api<K>,
    name: &str,
    dp: &DeleteParams,
    call: &'static str,
) -> Result<(), Error> {
    api.delete(name, dp)
        .await
        .map(|_| ())
        .or_else(ignore_not_found)
        .map_err(Error::kube(call))
}

/// Merge-patches `name`; an object already gone is fine.
pub async fn merge_patch<K: Object>(
    api: &Api<K>,
    name: &str,
    patch: &serde_json::Value,
    call: &'static str,
) -> Result<(), Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .or_else(ignore_not_found)
        .map_err(Error::kube(call))
}

/// Adds `finalizer` to `o`; true when it had to be added (the caller waits for the event).
pub async fn add_finalizer<K: Object>(api: &Api<K>, o: &K, finalizer: &str) -> Result<bool, Error> {
    let mut fins = o.meta().finalizers.clone().unwrap_or_default();
    if fins.iter().any(|f| f == finalizer) {
        return Ok(false);
    }
    fins.push(finalizer.into());
    patch_finalizers(api, o, fins).await?;
    Ok(true)
}

/// Removes `finalizer` from `o` (an object already gone is fine).
pub async fn remove_finalizer<K: Object>(
    api: &Api<K>,
    o: &K,
    finalizer: &str,
) -> Result<(), Error> {
    let fins: Vec<String> = o
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    patch_finalizers(api, o, fins).await
}

/// Replaces the finalizers, guarded by the resource version that was read.
async fn patch_finalizers<K: Object>(api: &Api<K>, o: &K, fins: Vec<String>) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"finalizers": fins, "resourceVersion": o.meta().resource_version}});
    merge_patch(api, &o.name_any(), &patch, "patch finalizers").await
}

/// Whether pod `p` has not finished and mounts claim `claim` (of its own namespace).
pub fn running_with_claim(p: &k8s_openapi::api::core::v1::Pod, claim: &str) -> bool {
    let finished = matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !finished
        && p.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| {
                vs.iter().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
            })
}
