//! Storage in one place: finding a usable location, reading its credentials, opening its
//! bucket and repositories, the bucket layout, repository passwords and what mover pods need
//! to reach a repository. Talks to the cluster (Secrets, locations) and to object storage.

pub mod access;
pub mod catalog;
pub mod layout;
pub mod metadata;
pub mod passphrase;
pub mod repository;

use std::collections::BTreeMap;
use std::sync::Arc;

use holdfast_api::location::{
    AccessMode, AllowedNamespaces, BackupStorageLocation, LocationPhase, S3Location,
};
use holdfast_api::reasons::LocationReason;
use holdfast_store::{DynStore, PayloadProtection, RetryPolicy, S3Config, S3Store};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};

use crate::controller::location::probe::{ProbeFailure, ProbeTarget, Reason};
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::{Context, Error};

/// The location named `name` (or the default one when `None`), checked Available. A missing
/// or unavailable location is a [`Refusal`] with a [`LocationReason`]. For the operator's own
/// work on behalf of an object already admitted (transfers, maintenance, deletion); what a
/// user's object asks for goes through [`location_for`].
pub async fn location(ctx: &Context, name: Option<&str>) -> Refusable<BackupStorageLocation> {
    Ok(find(ctx, name).await?.and_then(usable))
}

/// The location a Backup, Restore or Schedule in `namespace` names (or the default), checked
/// to allow that namespace (`spec.allowedNamespaces`, refused with
/// [`LocationReason::LocationNotAllowed`]) and to be Available.
pub async fn location_for(
    ctx: &Context,
    name: Option<&str>,
    namespace: &str,
) -> Refusable<BackupStorageLocation> {
    let bsl = match find(ctx, name).await? {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    if let Err(r) = admit(ctx, &bsl, namespace).await? {
        return Ok(Err(r));
    }
    Ok(usable(bsl))
}

/// Whether the location `name` (or the default) allows objects in `namespace`; a location
/// that does not exist passes (what uses it reports that).
pub async fn admits(ctx: &Context, name: Option<&str>, namespace: &str) -> Refusable<()> {
    match find(ctx, name).await? {
        Ok(bsl) => admit(ctx, &bsl, namespace).await,
        Err(_) => Ok(Ok(())),
    }
}

/// Whether `bsl` may be used by objects in `namespace`: the operator namespace always may
/// (administrators); others when `spec.allowedNamespaces` is omitted, lists the namespace's
/// name or selects its labels.
pub async fn admit(ctx: &Context, bsl: &BackupStorageLocation, namespace: &str) -> Refusable<()> {
    let Some(allowed) = &bsl.spec.allowed_namespaces else {
        return Ok(Ok(()));
    };
    if namespace == ctx.namespace || names_allow(allowed, namespace) {
        return Ok(Ok(()));
    }
    // Only a selector can still allow it: read the namespace's labels.
    let labels = match &allowed.selector {
        None => None,
        Some(_) => Api::<Namespace>::all(ctx.client.clone())
            .get_opt(namespace)
            .await
            .map_err(Error::kube("get Namespace"))?
            .and_then(|n| n.metadata.labels),
    };
    Ok(allows(bsl, namespace, &ctx.namespace, labels.as_ref()))
}

/// `names` of `spec.allowedNamespaces` lists `namespace`. Pure.
fn names_allow(allowed: &AllowedNamespaces, namespace: &str) -> bool {
    allowed.names.iter().flatten().any(|n| n == namespace)
}

/// Whether objects in `namespace` (whose labels are `labels`) may use `bsl`; the refusal
/// names the location, the namespace and the field. Pure.
pub fn allows(
    bsl: &BackupStorageLocation,
    namespace: &str,
    operator_namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Refusal> {
    let Some(allowed) = &bsl.spec.allowed_namespaces else {
        return Ok(());
    };
    if namespace == operator_namespace || names_allow(allowed, namespace) {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(Refusal::new(
            LocationReason::LocationNotAllowed,
            format!(
                "BackupStorageLocation {} does not allow namespace {namespace}: {why}; an administrator can add it to the location's spec.allowedNamespaces, or name another spec.storageLocation",
                bsl.name_any()
            ),
        ))
    };
    let names = allowed.names.as_deref().unwrap_or_default();
    let listed = if names.is_empty() {
        String::new()
    } else {
        format!("not in spec.allowedNamespaces.names [{}]", names.join(", "))
    };
    match &allowed.selector {
        None if listed.is_empty() => refuse("spec.allowedNamespaces allows no namespace".into()),
        None => refuse(listed),
        Some(sel) => match Selector::try_from(sel.clone()) {
            Err(e) => refuse(format!(
                "spec.allowedNamespaces.selector cannot be used ({})",
                e.0
            )),
            Ok(s) if s.matches(labels.unwrap_or(&BTreeMap::new())) => Ok(()),
            Ok(_) => {
                let sel = format!(
                    "its labels do not match spec.allowedNamespaces.selector {}",
                    selector_text(sel)
                );
                refuse(if listed.is_empty() {
                    sel
                } else {
                    format!("{listed} and {sel}")
                })
            }
        },
    }
}

/// A label selector as `kubectl` would write it (`a=b,c in (d,e)`), for messages. Pure.
fn selector_text(sel: &holdfast_api::common::LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {op} ({values})", e.key),
        });
    }
    if parts.is_empty() {
        "{}".into()
    } else {
        parts.join(",")
    }
}

/// The storage class data is written with: `spec.s3.storageClass`, else `STANDARD_IA` on AWS
/// S3 (no endpoint, or an `amazonaws.com` one), else none (the server's default: S3-compatible
/// servers such as MinIO refuse classes they do not know). Pure.
pub fn storage_class(s3: &S3Location) -> Option<String> {
    if let Some(c) = &s3.storage_class {
        return Some(c.clone());
    }
    is_aws(s3.endpoint.as_deref()).then(|| DEFAULT_AWS_STORAGE_CLASS.to_string())
}

/// The class [`storage_class`] picks on AWS S3 when the location names none.
pub const DEFAULT_AWS_STORAGE_CLASS: &str = "STANDARD_IA";

/// Whether an endpoint is AWS S3's own (none given, or a host under `amazonaws.com`). Pure.
fn is_aws(endpoint: Option<&str>) -> bool {
    let Some(ep) = endpoint else {
        return true;
    };
    let rest = ep.split_once("://").map_or(ep, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    host == "amazonaws.com"
        || host.ends_with(".amazonaws.com")
        || host.ends_with(".amazonaws.com.cn")
}

/// The location named `name`, or the default one when `None`, whatever its state.
async fn find(ctx: &Context, name: Option<&str>) -> Refusable<BackupStorageLocation> {
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
    Ok(Ok(bsl))
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
            insecure_skip_tls_verify: spec.s3.insecure_skip_tls_verify,
            access_key_id: access,
            secret_access_key: secret_key,
            session_token: token,
            storage_class: storage_class(&spec.s3),
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            payload: PayloadProtection::default(),
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
        ..target.config
    };
    let store = S3Store::new(config).await.map_err(Error::store(format!(
        "opening BackupStorageLocation {}",
        bsl.name_any()
    )))?;
    Ok(Arc::new(store))
}

/// Deletes a backup's record from the location's catalog, then any objects an older
/// operator left under the backup's prefix (`metadata.json` first): the backup stops being
/// visible before its parts go.
pub async fn delete_backup_objects(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    b: &holdfast_api::backup::Backup,
) -> Result<(), Error> {
    catalog::remove(ctx, bsl, &catalog::origin_uid(b)).await?;
    delete_legacy_objects(ctx, bsl, &b.namespace().unwrap_or_default(), &b.name_any()).await
}

/// Deletes what an operator before the catalog wrote in plain text under a backup's prefix
/// (`metadata.json` first); nothing when there is nothing.
pub async fn delete_legacy_objects(
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

    fn located(spec: serde_json::Value) -> BackupStorageLocation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": "primary", "namespace": "hf"}, "spec": spec,
        }))
        .expect("location")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allowed_namespaces_by_name_or_selector() {
        let open = located(serde_json::json!({"s3": {"bucket": "b"}}));
        assert!(allows(&open, "shop", "hf", None).is_ok());

        let by_name = located(serde_json::json!({"s3": {"bucket": "b"},
            "allowedNamespaces": {"names": ["shop", "bank"]}}));
        assert!(allows(&by_name, "shop", "hf", None).is_ok());
        // The operator namespace (administrators) always may.
        assert!(allows(&by_name, "hf", "hf", None).is_ok());
        let r = allows(&by_name, "games", "hf", None).expect_err("refused");
        assert_eq!(r.reason, "LocationNotAllowed");
        for part in ["primary", "games", "spec.allowedNamespaces", "[shop, bank]"] {
            assert!(r.message.contains(part), "{part}: {}", r.message);
        }

        let by_label = located(serde_json::json!({"s3": {"bucket": "b"},
            "allowedNamespaces": {"selector": {"matchLabels": {"backup": "yes"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod", "stage"]}]}}}));
        let prod = labels(&[("backup", "yes"), ("tier", "prod")]);
        assert!(allows(&by_label, "shop", "hf", Some(&prod)).is_ok());
        let r = allows(&by_label, "shop", "hf", Some(&labels(&[("backup", "yes")])))
            .expect_err("tier missing");
        assert!(
            r.message
                .contains("spec.allowedNamespaces.selector backup=yes,tier in (prod,stage)"),
            "{}",
            r.message
        );
        assert!(allows(&by_label, "shop", "hf", None).is_err());

        // Both: either one is enough.
        let both = located(serde_json::json!({"s3": {"bucket": "b"},
            "allowedNamespaces": {"names": ["legacy"], "selector": {"matchLabels": {"backup": "yes"}}}}));
        assert!(allows(&both, "legacy", "hf", None).is_ok());
        assert!(allows(&both, "shop", "hf", Some(&labels(&[("backup", "yes")]))).is_ok());
        let r = allows(&both, "shop", "hf", Some(&labels(&[]))).expect_err("neither");
        assert!(
            r.message.contains("[legacy]") && r.message.contains("backup=yes"),
            "{}",
            r.message
        );

        // An empty selector selects every namespace, as everywhere in Kubernetes.
        let all = located(serde_json::json!({"s3": {"bucket": "b"},
            "allowedNamespaces": {"selector": {}}}));
        assert!(allows(&all, "shop", "hf", None).is_ok());
        // A selector that cannot be parsed allows nothing and says so.
        let broken = located(serde_json::json!({"s3": {"bucket": "b"},
            "allowedNamespaces": {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}));
        let r = allows(&broken, "shop", "hf", Some(&labels(&[("a", "b")]))).expect_err("broken");
        assert!(r.message.contains("cannot be used"), "{}", r.message);
    }

    #[test]
    fn storage_class_defaults_to_infrequent_access_on_aws_only() {
        let s3 = |v: serde_json::Value| -> S3Location { serde_json::from_value(v).expect("s3") };
        assert_eq!(
            storage_class(&s3(serde_json::json!({"bucket": "b"}))).as_deref(),
            Some("STANDARD_IA")
        );
        assert_eq!(
            storage_class(&s3(
                serde_json::json!({"bucket": "b", "endpoint": "https://s3.eu-west-1.amazonaws.com"})
            ))
            .as_deref(),
            Some("STANDARD_IA")
        );
        for ep in [
            "http://127.0.0.1:9000",
            "https://minio.example.com",
            "https://amazonaws.com.evil.example",
        ] {
            assert_eq!(
                storage_class(&s3(serde_json::json!({"bucket": "b", "endpoint": ep}))),
                None,
                "{ep}"
            );
        }
        assert_eq!(
            storage_class(&s3(
                serde_json::json!({"bucket": "b", "endpoint": "http://127.0.0.1:9000", "storageClass": "REDUCED_REDUNDANCY"})
            ))
            .as_deref(),
            Some("REDUCED_REDUNDANCY")
        );
        assert_eq!(
            storage_class(&s3(
                serde_json::json!({"bucket": "b", "storageClass": "GLACIER_IR"})
            ))
            .as_deref(),
            Some("GLACIER_IR")
        );
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
