//! Where a namespace's data lives on a location and how the operator and mover pods reach it:
//! the bucket layout of DESIGN.md, the per-(location, namespace) repository password Secret,
//! and the environment a mover pod needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use holdfast_api::location::{BackupStorageLocation, LocationPhase};
use holdfast_store::{DynStore, RetryPolicy, S3Config, S3Store};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, Secret, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};

use super::{Context, Error, location};

/// Key of the password in a repository Secret.
pub const PASSWORD_KEY: &str = "password";
/// Labels on repository Secrets.
pub const LOCATION_LABEL: &str = "holdfast.dev/location";
pub const REPOSITORY_NAMESPACE_LABEL: &str = "holdfast.dev/repository-namespace";

/// Why a location cannot be used right now (the reason goes into the parent's status).
#[derive(Debug, Clone)]
pub struct Unusable {
    pub reason: &'static str,
    pub message: String,
}

/// Finds the location by name, or the default one, and checks it is usable.
pub async fn resolve_location(
    ctx: &Context,
    name: Option<&str>,
) -> Result<Result<BackupStorageLocation, Unusable>, Error> {
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let bsl = match name {
        Some(n) => match api
            .get_opt(n)
            .await
            .map_err(Error::kube("get BackupStorageLocation"))?
        {
            Some(b) => b,
            None => {
                return Ok(Err(Unusable {
                    reason: "LocationNotFound",
                    message: format!(
                        "BackupStorageLocation {n:?} does not exist in namespace {}; fix spec.storageLocation",
                        ctx.namespace
                    ),
                }));
            }
        },
        None => {
            let all = api
                .list(&Default::default())
                .await
                .map_err(Error::kube("list BackupStorageLocations"))?;
            let winner = location::effective_default(all.items.iter().map(|l| {
                (
                    l.name_any(),
                    l.creation_timestamp().map(|t| t.0),
                    l.spec.default,
                )
            }));
            match winner.and_then(|w| all.items.into_iter().find(|l| l.name_any() == w)) {
                Some(b) => b,
                None => {
                    return Ok(Err(Unusable {
                        reason: "NoDefaultLocation",
                        message: format!(
                            "spec.storageLocation is not set and no BackupStorageLocation in {} has spec.default: true",
                            ctx.namespace
                        ),
                    }));
                }
            }
        }
    };
    let phase = bsl.status.as_ref().and_then(|s| s.phase);
    if phase != Some(LocationPhase::Available) {
        let why = bsl
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_else(|| "not validated yet".into());
        return Ok(Err(Unusable {
            reason: "LocationUnavailable",
            message: format!(
                "BackupStorageLocation {} is not Available: {why}",
                bsl.name_any()
            ),
        }));
    }
    Ok(Ok(bsl))
}

fn location_prefix(bsl: &BackupStorageLocation) -> String {
    bsl.spec
        .s3
        .prefix
        .as_deref()
        .unwrap_or("")
        .trim_matches('/')
        .to_string()
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Key prefix (inside the bucket) of one backup's metadata and objects.
pub fn backup_prefix(bsl: &BackupStorageLocation, namespace: &str, backup: &str) -> String {
    join(
        &location_prefix(bsl),
        &format!("holdfast/backups/{namespace}/{backup}"),
    )
}

/// Key prefix (inside the bucket) of the repository of a source namespace.
pub fn repository_prefix(bsl: &BackupStorageLocation, namespace: &str) -> String {
    join(&location_prefix(bsl), &format!("holdfast/repo/{namespace}"))
}

fn endpoint(bsl: &BackupStorageLocation) -> String {
    match &bsl.spec.s3.endpoint {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => format!(
            "https://s3.{}.amazonaws.com",
            bsl.spec.s3.region.as_deref().unwrap_or("us-east-1")
        ),
    }
}

/// The `--repository` URL of a namespace's repository for `holdfast mover`.
pub fn repository_url(bsl: &BackupStorageLocation, namespace: &str) -> String {
    format!(
        "s3:{}/{}/{}",
        endpoint(bsl),
        bsl.spec.s3.bucket,
        repository_prefix(bsl, namespace)
    )
}

/// Name of the Secret holding the password of the repository of `namespace` on `location`.
pub fn password_secret_name(location: &str, namespace: &str) -> String {
    format!(
        "holdfast-repo-{}",
        super::short_hash(&[location, namespace])
    )
}

/// Creates the repository password Secret if it does not exist yet. The password is random
/// and never logged; losing the Secret makes the repository unreadable, so it is never
/// deleted by the operator.
pub async fn ensure_password(
    ctx: &Context,
    location: &str,
    namespace: &str,
) -> Result<String, Error> {
    let name = password_secret_name(location, namespace);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get repository Secret"))?
        .is_some()
    {
        return Ok(name);
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (LOCATION_LABEL.to_string(), location.to_string()),
                (REPOSITORY_NAMESPACE_LABEL.to_string(), namespace.to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "holdfast".to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                "holdfast.dev/warning".to_string(),
                "the only key to this namespace's repository; deleting it makes the backups unreadable".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_string(),
            ByteString(random_password()?.into_bytes()),
        )])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(name),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(name),
        Err(e) => Err(Error::kube("create repository Secret")(e)),
    }
}

fn random_password() -> Result<String, Error> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::Other(format!("reading /dev/urandom: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Reads the repository password (for the operator's own repository operations).
pub async fn read_password(
    ctx: &Context,
    location: &str,
    namespace: &str,
) -> Result<Option<String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = password_secret_name(location, namespace);
    let s = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get repository Secret"))?;
    Ok(s.and_then(|s| s.data)
        .and_then(|d| d.get(PASSWORD_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok()))
}

/// Serializes repository creation in this process: two movers racing to create the same
/// repository would each write a config and a key, and one of them would lose its data.
static INIT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes sure the repository of `namespace` on the location exists (creating it with the
/// password of its Secret), so that mover pods only ever open it.
pub async fn ensure_repository(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    namespace: &str,
) -> Result<(), Error> {
    let _guard = INIT_LOCK.lock().await;
    let location = bsl.name_any();
    let password = read_password(ctx, &location, namespace)
        .await?
        .ok_or_else(|| {
            Error::Other(format!(
                "repository Secret {} has no password",
                password_secret_name(&location, namespace)
            ))
        })?;
    let store = open_repository_store(ctx, bsl, namespace)
        .await
        .map_err(|e| Error::Other(format!("repository of {namespace} on {location}: {e}")))?;
    match holdfast_repo::Repository::open(store.clone(), &password).await {
        Ok(_) => Ok(()),
        Err(holdfast_repo::RepoError::NotARepository { .. }) => {
            holdfast_repo::Repository::init(store, &password, holdfast_repo::KdfParams::default())
                .await
                .map(|_| ())
                .map_err(|e| {
                    Error::Other(format!(
                        "creating the repository of {namespace} on {location}: {e}"
                    ))
                })
        }
        Err(e) => Err(Error::Other(format!(
            "opening the repository of {namespace} on {location}: {e}"
        ))),
    }
}

/// A store over the whole bucket of a location (keys include the location prefix).
pub async fn open_bucket(ctx: &Context, bsl: &BackupStorageLocation) -> Result<DynStore, String> {
    open_with_prefix(ctx, bsl, String::new()).await
}

/// A store over the repository of `namespace` on the location.
pub async fn open_repository_store(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    namespace: &str,
) -> Result<DynStore, String> {
    open_with_prefix(ctx, bsl, repository_prefix(bsl, namespace)).await
}

async fn open_with_prefix(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    prefix: String,
) -> Result<DynStore, String> {
    let target = location::resolve_target(bsl, ctx)
        .await
        .map_err(|f| f.message)?;
    let config = S3Config {
        prefix,
        retry: RetryPolicy {
            max_attempts: bsl.spec.retry.attempts.unwrap_or(5).max(1),
            ..RetryPolicy::default()
        },
        storage_class: bsl.spec.s3.storage_class.clone(),
        ..target.config
    };
    let store = S3Store::new(config).await.map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Keys of a copied access Secret (see [`copy_access_secret`]).
const COPY_ACCESS_KEY: &str = "accessKeyId";
const COPY_SECRET_KEY: &str = "secretAccessKey";
const COPY_CA_KEY: &str = "ca.crt";

/// The environment, volumes and mounts a mover pod needs to open the repository of
/// `namespace` on `bsl`: Secret references to the password and the location's credentials in
/// the operator namespace, or, with `copied`, to the one Secret [`copy_access_secret`] made in
/// the pod's own namespace.
pub fn mover_access(
    bsl: &BackupStorageLocation,
    namespace: &str,
    copied: Option<&str>,
) -> (Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>) {
    let location = bsl.name_any();
    let password_secret = password_secret_name(&location, namespace);
    let mut envs = vec![
        env("HOLDFAST_REPOSITORY", repository_url(bsl, namespace)),
        env_secret(
            "HOLDFAST_REPOSITORY_PASSWORD",
            copied.unwrap_or(&password_secret),
            PASSWORD_KEY,
        ),
    ];
    if let Some(r) = &bsl.spec.s3.region {
        envs.push(env("HOLDFAST_S3_REGION", r.clone()));
    }
    if !bsl.spec.s3.force_path_style {
        envs.push(env("HOLDFAST_S3_VIRTUAL_HOSTED", "true"));
    }
    if let Some(sc) = &bsl.spec.s3.storage_class {
        envs.push(env("HOLDFAST_S3_STORAGE_CLASS", sc.clone()));
    }
    if let Some(a) = bsl.spec.retry.attempts {
        envs.push(env("HOLDFAST_S3_ATTEMPTS", a.to_string()));
    }
    if let Some(c) = &bsl.spec.credentials {
        let (secret, id, key) = match copied {
            Some(s) => (s, COPY_ACCESS_KEY, COPY_SECRET_KEY),
            None => (c.secret_ref.name.as_str(), "accessKeyId", "secretAccessKey"),
        };
        envs.push(env_secret("AWS_ACCESS_KEY_ID", secret, id));
        envs.push(env_secret("AWS_SECRET_ACCESS_KEY", secret, key));
    }
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    if let Some(ca) = &bsl.spec.s3.ca_bundle {
        let (secret, key) = match copied {
            Some(s) => (s, COPY_CA_KEY),
            None => (ca.secret_ref.name.as_str(), ca.secret_ref.key.as_str()),
        };
        volumes.push(Volume {
            name: "ca-bundle".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "ca-bundle".into(),
            mount_path: "/etc/holdfast/ca".into(),
            read_only: Some(true),
            ..Default::default()
        });
        envs.push(env(
            "HOLDFAST_S3_CA_BUNDLE",
            format!("/etc/holdfast/ca/{key}"),
        ));
    }
    (envs, volumes, mounts)
}

/// Reads one key of a Secret in the operator namespace.
async fn secret_key(ctx: &Context, name: &str, key: &str) -> Result<Option<ByteString>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(api
        .get_opt(name)
        .await
        .map_err(Error::kube("get Secret"))?
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(key)))
}

/// Copies what a mover pod outside the operator namespace needs (repository password,
/// location credentials, CA bundle) into one Secret `name` in `target_ns` (server-side apply,
/// so a rotated credential is picked up on the next copy). `Ok(Err(message))` when an original
/// is missing. The caller deletes the copy when the pod is done.
pub async fn copy_access_secret(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    repository_ns: &str,
    target_ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<Result<(), String>, Error> {
    let mut data = BTreeMap::new();
    let pw = password_secret_name(&bsl.name_any(), repository_ns);
    match secret_key(ctx, &pw, PASSWORD_KEY).await? {
        Some(v) => data.insert(PASSWORD_KEY.to_string(), v),
        None => {
            return Ok(Err(format!(
                "repository Secret {pw} has no key {PASSWORD_KEY}"
            )));
        }
    };
    if let Some(c) = &bsl.spec.credentials {
        for (from, to) in [
            ("accessKeyId", COPY_ACCESS_KEY),
            ("secretAccessKey", COPY_SECRET_KEY),
        ] {
            match secret_key(ctx, &c.secret_ref.name, from).await? {
                Some(v) => data.insert(to.to_string(), v),
                None => {
                    return Ok(Err(format!(
                        "credentials Secret {} has no key {from}",
                        c.secret_ref.name
                    )));
                }
            };
        }
    }
    if let Some(ca) = &bsl.spec.s3.ca_bundle {
        match secret_key(ctx, &ca.secret_ref.name, &ca.secret_ref.key).await? {
            Some(v) => data.insert(COPY_CA_KEY.to_string(), v),
            None => {
                return Ok(Err(format!(
                    "CA bundle Secret {} has no key {}",
                    ca.secret_ref.name, ca.secret_ref.key
                )));
            }
        };
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(target_ns.into()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&secret).map_err(|e| Error::Other(e.to_string()))?;
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), target_ns);
    api.patch(
        name,
        &kube::api::PatchParams::apply("holdfast-transfer-controller").force(),
        &kube::api::Patch::Apply(&v),
    )
    .await
    .map_err(Error::kube("apply copied access Secret"))?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::location::BackupStorageLocationSpec;

    fn bsl(prefix: Option<&str>, endpoint: Option<&str>) -> BackupStorageLocation {
        let mut spec: BackupStorageLocationSpec =
            serde_json::from_value(serde_json::json!({"s3": {"bucket": "b"}})).expect("spec");
        spec.s3.prefix = prefix.map(Into::into);
        spec.s3.endpoint = endpoint.map(Into::into);
        BackupStorageLocation::new("primary", spec)
    }

    #[test]
    fn layout_follows_the_design() {
        let b = bsl(Some("/prod/"), Some("http://minio:9000/"));
        assert_eq!(
            backup_prefix(&b, "shop", "b1"),
            "prod/holdfast/backups/shop/b1"
        );
        assert_eq!(repository_prefix(&b, "shop"), "prod/holdfast/repo/shop");
        assert_eq!(
            repository_url(&b, "shop"),
            "s3:http://minio:9000/b/prod/holdfast/repo/shop"
        );
        let b = bsl(None, None);
        assert_eq!(repository_prefix(&b, "shop"), "holdfast/repo/shop");
        assert_eq!(
            repository_url(&b, "shop"),
            "s3:https://s3.us-east-1.amazonaws.com/b/holdfast/repo/shop"
        );
        let l = holdfast_store::Location::parse(&repository_url(&b, "shop")).expect("parses");
        assert!(
            matches!(l, holdfast_store::Location::S3 { prefix, .. } if prefix == "holdfast/repo/shop")
        );
    }

    #[test]
    fn password_secret_names_are_stable_and_distinct() {
        assert_eq!(
            password_secret_name("a", "b"),
            password_secret_name("a", "b")
        );
        assert_ne!(
            password_secret_name("a", "b"),
            password_secret_name("a", "c")
        );
        assert_ne!(
            password_secret_name("ab", "c"),
            password_secret_name("a", "bc")
        );
    }
}
