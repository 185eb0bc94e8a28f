//! Storage in one place: finding a usable location, reading its credentials, opening its
//! bucket and repositories, the bucket layout, repository passwords and what mover pods need
//! to reach a repository. Talks to the cluster (Secrets, locations) and to object storage.

pub mod access;
pub mod layout;
pub mod metadata;
pub mod repository;

use std::collections::BTreeMap;
use std::sync::Arc;

use holdfast_api::location::{AccessMode, BackupStorageLocation, LocationPhase};
use holdfast_api::reasons::LocationReason;
use holdfast_store::{DynStore, RetryPolicy, S3Config, S3Store};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;

use crate::controller::location::probe::{ProbeFailure, ProbeTarget, Reason};
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::{Context, Error};

/// The location named `name` (or the default one when `None`), checked Available. A missing
/// or unavailable location is a [`Refusal`] with a [`LocationReason`].
pub async fn location(ctx: &Context, name: Option<&str>) -> Refusable<BackupStorageLocation> {
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let bsl = match name {
        Some(n) => match api
            .get_opt(n)
            .await
            .map_err(Error::kube("get BackupStorageLocation"))?
        {
            Some(b) => b,
            None => {
                return Ok(Err(Refusal::new(
                    LocationReason::LocationNotFound,
                    format!(
                        "BackupStorageLocation {n:?} does not exist in namespace {}; fix spec.storageLocation",
                        ctx.namespace
                    ),
                )));
            }
        },
        None => {
            let all = api
                .list(&Default::default())
                .await
                .map_err(Error::kube("list BackupStorageLocations"))?
                .items;
            let winner = effective_default(all.iter().map(|l| {
                (
                    l.name_any(),
                    l.creation_timestamp().map(|t| t.0),
                    l.spec.default,
                )
            }));
            match winner.and_then(|w| all.into_iter().find(|l| l.name_any() == w)) {
                Some(b) => b,
                None => {
                    return Ok(Err(Refusal::new(
                        LocationReason::NoDefaultLocation,
                        format!(
                            "spec.storageLocation is not set and no BackupStorageLocation in {} has spec.default: true",
                            ctx.namespace
                        ),
                    )));
                }
            }
        }
    };
    Ok(usable(bsl))
}

/// A location is usable when its controller found it Available. Pure.
pub fn usable(bsl: BackupStorageLocation) -> Result<BackupStorageLocation, Refusal> {
    let status = bsl.status.as_ref();
    if status.and_then(|s| s.phase) == Some(LocationPhase::Available) {
        return Ok(bsl);
    }
    let why = status
        .and_then(|s| s.message.clone())
        .unwrap_or_else(|| "not validated yet".into());
    Err(Refusal::new(
        LocationReason::LocationUnavailable,
        format!(
            "BackupStorageLocation {} is not Available: {why}",
            bsl.name_any()
        ),
    ))
}

/// The location that is the default: the oldest of those claiming it (ties by name). Pure.
pub fn effective_default(
    locations: impl Iterator<Item = (String, Option<Timestamp>, bool)>,
) -> Option<String> {
    locations
        .filter(|(_, _, d)| *d)
        .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)))
        .map(|(n, _, _)| n)
}

/// Reads the location's Secrets and builds its S3 configuration; a failure here is a
/// configuration problem the location's status reports.
pub async fn resolve_target(
    bsl: &BackupStorageLocation,
    ctx: &Context,
) -> Result<ProbeTarget, ProbeFailure> {
    let ns = bsl.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = &bsl.spec;
    let (mut access, mut secret_key, mut token) = (None, None, None);
    if let Some(creds) = &spec.credentials {
        let name = &creds.secret_ref.name;
        let secret = secrets.get_opt(name).await.map_err(|e| ProbeFailure {
            reason: Reason::MissingCredentials,
            message: format!("reading Secret {ns}/{name}: {e}"),
        })?;
        let secret = secret.ok_or_else(|| ProbeFailure {
            reason: Reason::MissingCredentials,
            message: format!("Secret {ns}/{name} named by spec.credentials.secretRef does not exist; create it with keys accessKeyId and secretAccessKey"),
        })?;
        let data = secret_data(&secret);
        access = data.get("accessKeyId").cloned();
        secret_key = data.get("secretAccessKey").cloned();
        token = data.get("sessionToken").cloned();
        if access.is_none() || secret_key.is_none() {
            return Err(ProbeFailure {
                reason: Reason::MissingCredentials,
                message: format!(
                    "Secret {ns}/{name} needs keys accessKeyId and secretAccessKey (found: {})",
                    data.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let ca_bundle = match &spec.s3.ca_bundle {
        None => None,
        Some(ca) => Some(write_ca_bundle(bsl, &secrets, &ns, &ca.secret_ref).await?),
    };
    Ok(ProbeTarget {
        config: S3Config {
            endpoint: spec.s3.endpoint.clone(),
            region: spec.s3.region.clone(),
            bucket: spec.s3.bucket.clone(),
            prefix: String::new(),
            path_style: spec.s3.force_path_style,
            ca_bundle,
            access_key_id: access,
            secret_access_key: secret_key,
            session_token: token,
            storage_class: None,
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            unsigned_payload: None,
        },
        marker_prefix: format!("{}/", layout::holdfast_prefix(bsl)),
        read_write: spec.access_mode == AccessMode::ReadWrite,
    })
}

/// Writes the CA bundle the location names into a file the S3 client reads.
async fn write_ca_bundle(
    bsl: &BackupStorageLocation,
    secrets: &Api<Secret>,
    ns: &str,
    r: &holdfast_api::common::SecretKeyRef,
) -> Result<std::path::PathBuf, ProbeFailure> {
    let invalid = |message: String| ProbeFailure {
        reason: Reason::InvalidConfiguration,
        message,
    };
    let secret = secrets
        .get_opt(&r.name)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            invalid(format!(
                "Secret {ns}/{} named by spec.s3.caBundle.secretRef does not exist",
                r.name
            ))
        })?;
    let pem = secret_data(&secret).get(&r.key).cloned().ok_or_else(|| {
        invalid(format!(
            "Secret {ns}/{} has no key {:?} (spec.s3.caBundle.secretRef.key)",
            r.name, r.key
        ))
    })?;
    let path =
        std::env::temp_dir().join(format!("holdfast-ca-{}.pem", bsl.uid().unwrap_or_default()));
    std::fs::write(&path, pem)
        .map_err(|e| invalid(format!("writing CA bundle to {}: {e}", path.display())))?;
    Ok(path)
}

/// The string values of a Secret (`data` decoded, then `stringData`), trailing newlines cut.
pub fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(s) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), s.trim_end_matches(['\n', '\r']).to_string());
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// A store over the whole bucket of a location (keys include the location prefix).
pub async fn open_bucket(ctx: &Context, bsl: &BackupStorageLocation) -> Result<DynStore, Error> {
    open_with_prefix(ctx, bsl, String::new()).await
}

/// A store over the repository of `namespace` on the location.
pub async fn open_repository_store(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    namespace: &str,
) -> Result<DynStore, Error> {
    open_with_prefix(ctx, bsl, layout::repository_prefix(bsl, namespace)).await
}

async fn open_with_prefix(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    prefix: String,
) -> Result<DynStore, Error> {
    let target = resolve_target(bsl, ctx).await.map_err(|f| Error::Config {
        reason: f.reason.as_str(),
        message: format!("BackupStorageLocation {}: {}", bsl.name_any(), f.message),
    })?;
    let config = S3Config {
        prefix,
        retry: RetryPolicy {
            max_attempts: bsl.spec.retry.attempts.unwrap_or(5).max(1),
            ..RetryPolicy::default()
        },
        storage_class: bsl.spec.s3.storage_class.clone(),
        ..target.config
    };
    let store = S3Store::new(config).await.map_err(Error::store(format!(
        "opening BackupStorageLocation {}",
        bsl.name_any()
    )))?;
    Ok(Arc::new(store))
}

/// Deletes every object of a backup from the bucket, `metadata.json` first (the backup stops
/// being visible before its parts go).
pub async fn delete_backup_objects(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    let store = open_bucket(ctx, bsl).await?;
    let prefix = format!("{}/", layout::backup_prefix(bsl, ns, name));
    let key = format!("{prefix}{}", layout::METADATA);
    delete_key(&store, &key).await?;
    for o in store
        .list(&prefix)
        .await
        .map_err(Error::store(format!("listing {prefix}")))?
    {
        delete_key(&store, &o.key).await?;
    }
    Ok(())
}

async fn delete_key(store: &DynStore, key: &str) -> Result<(), Error> {
    store
        .delete(key)
        .await
        .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
        .map_err(Error::store(format!("deleting {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_default_wins() {
        let t = |s| Some(Timestamp::from_second(s).expect("ts"));
        let locs = vec![
            ("b".to_string(), t(5), true),
            ("a".to_string(), t(5), true),
            ("old".to_string(), t(1), false),
        ];
        assert_eq!(effective_default(locs.into_iter()).as_deref(), Some("a"));
        assert_eq!(effective_default(std::iter::empty()), None);
    }

    #[test]
    fn only_available_locations_are_usable() {
        let mut b: BackupStorageLocation = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": "primary"}, "spec": {"s3": {"bucket": "b"}},
        }))
        .expect("location");
        let r = usable(b.clone()).expect_err("not validated");
        assert_eq!(r.reason, "LocationUnavailable");
        assert!(r.message.contains("not validated yet"));
        b.status = Some(holdfast_api::BackupStorageLocationStatus {
            phase: Some(LocationPhase::Available),
            ..Default::default()
        });
        assert!(usable(b).is_ok());
    }
}
