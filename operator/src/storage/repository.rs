//! The repository of each (location, source namespace): its password Secret (random, never
//! logged, never deleted by the operator), creating it before any mover opens it, and
//! forgetting snapshots, and its `BackupRepository` object (whose controller runs its
//! maintenance). Talks to the cluster (Secrets) and to object storage.

use std::collections::{BTreeMap, HashSet};

use holdfast_api::location::BackupStorageLocation;
use holdfast_api::repository::{BackupRepository, BackupRepositorySpec};
use holdfast_repo::{KdfParams, RepoError, Repository};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta};

use super::layout::{self, PASSWORD_KEY};
use crate::runtime::kube_ext::{create_or_adopt, merge_patch};
use crate::runtime::names::child_name;
use crate::runtime::{Context, Error};

/// Annotation on a BackupRepository: when data was last forgotten in it (RFC 3339); prune
/// runs `pruneAfterDeletion` later.
pub const DATA_DELETED: &str = "holdfast.dev/data-deleted-at";

/// Labels on repository Secrets.
pub const LOCATION_LABEL: &str = "holdfast.dev/location";
pub const REPOSITORY_NAMESPACE_LABEL: &str = "holdfast.dev/repository-namespace";

/// Creates the repository password Secret if it does not exist yet (with `existing`, the
/// password an existing repository opens with, else a random one); returns its name.
pub async fn ensure_password(
    ctx: &Context,
    location: &str,
    namespace: &str,
    existing: Option<String>,
) -> Result<String, Error> {
    let name = layout::password_secret_name(location, namespace);
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
            ByteString(
                match existing {
                    Some(p) => p,
                    None => random_password()?,
                }
                .into_bytes(),
            ),
        )])),
        ..Default::default()
    };
    create_or_adopt(&api, &secret, "create repository Secret").await?;
    Ok(name)
}

fn random_password() -> Result<String, Error> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::internal("reading /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Reads the repository password (for the operator's own repository operations).
pub async fn read_password(
    ctx: &Context,
    location: &str,
    namespace: &str,
) -> Result<Option<String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = layout::password_secret_name(location, namespace);
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

/// Opens the repository of `namespace` on the location with the password of its Secret;
/// with `create`, a location without one gets it. Errors name the repository and the fix.
pub async fn open(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    namespace: &str,
    create: bool,
) -> Result<Repository, Error> {
    // Only an open that may create takes the lock (forget and the like open concurrently).
    let _guard = match create {
        true => Some(INIT_LOCK.lock().await),
        false => None,
    };
    let location = bsl.name_any();
    let secret = layout::password_secret_name(&location, namespace);
    let what = format!("the repository of namespace {namespace} on location {location}");
    let password = read_password(ctx, &location, namespace)
        .await?
        .ok_or_else(|| Error::Config {
            reason: "RepositorySecretMissing",
            message: format!(
                "Secret {}/{secret} has no key {PASSWORD_KEY}: it held the only key to {what}; restore it from your copy of that Secret",
                ctx.namespace
            ),
        })?;
    let store = super::open_repository_store(ctx, bsl, namespace).await?;
    let fix = format!(
        "Secret {}/{secret} (key {PASSWORD_KEY}) must hold the password this repository was created with; put the original back",
        ctx.namespace
    );
    let repo_err = |doing: &str, source: RepoError| Error::Repository {
        what: format!("{doing} {what}"),
        fix: fix.clone(),
        source: Box::new(source),
    };
    match Repository::open(store.clone(), &password).await {
        Ok(r) => Ok(r),
        Err(RepoError::NotARepository { .. }) if create => {
            Repository::init(store, &password, KdfParams::default())
                .await
                .map_err(|e| repo_err("creating", e))
        }
        Err(e) => Err(repo_err("opening", e)),
    }
}

/// Makes sure the repository of `namespace` on the location exists and opens with its
/// password, so that mover pods only ever open it.
pub async fn ensure(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    namespace: &str,
) -> Result<(), Error> {
    let passphrase = super::passphrase::require(ctx, bsl).await?;
    // A repository that exists without a password Secret here (a new cluster, the Secret
    // lost) is opened with the location's passphrase, which then serves as its password.
    let have_secret = read_password(ctx, &bsl.name_any(), namespace)
        .await?
        .is_some();
    let existing = if have_secret {
        None
    } else {
        let store = super::open_repository_store(ctx, bsl, namespace).await?;
        store
            .head("config")
            .await
            .map_err(Error::store("reading the repository config"))?
            .map(|_| passphrase.clone())
    };
    ensure_password(ctx, &bsl.name_any(), namespace, existing).await?;
    let repo = open(ctx, bsl, namespace, true).await?;
    super::passphrase::ensure_key(&repo, &passphrase)
        .await
        .map_err(|source| Error::Repository {
            what: format!(
                "adding the location's passphrase to the repository of namespace {namespace} on {}",
                bsl.name_any()
            ),
            fix: "retrying".into(),
            source: Box::new(source),
        })?;
    record(ctx, &bsl.name_any(), namespace).await
}

/// Makes sure a mover can open the repository of `namespace` for reading without writing
/// anything to the location: a cluster that has no password Secret for it (a new cluster
/// restoring what another wrote) gets one holding the location's passphrase, one of the
/// repository's keys.
pub async fn ensure_readable(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    namespace: &str,
) -> Result<(), Error> {
    if read_password(ctx, &bsl.name_any(), namespace)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let passphrase = super::passphrase::require(ctx, bsl).await?;
    ensure_password(ctx, &bsl.name_any(), namespace, Some(passphrase)).await?;
    Ok(())
}

/// Name of the BackupRepository object of `namespace` on `location`.
pub fn object_name(location: &str, namespace: &str) -> String {
    child_name(&format!("{location}-{namespace}"), &[location, namespace])
}

/// Creates the repository's BackupRepository object (maintenance defaults) unless it exists.
pub async fn record(ctx: &Context, location: &str, namespace: &str) -> Result<(), Error> {
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut o = BackupRepository::new(
        &object_name(location, namespace),
        BackupRepositorySpec {
            location: location.into(),
            source_namespace: namespace.into(),
            maintenance: Default::default(),
        },
    );
    o.metadata.labels = Some(BTreeMap::from([
        (LOCATION_LABEL.to_string(), location.to_string()),
        (
            REPOSITORY_NAMESPACE_LABEL.to_string(),
            namespace.to_string(),
        ),
    ]));
    create_or_adopt(&api, &o, "create BackupRepository").await?;
    Ok(())
}

/// Notes on the BackupRepository that data was forgotten now (so prune follows).
pub(crate) async fn deleted(ctx: &Context, location: &str, namespace: &str) -> Result<(), Error> {
    record(ctx, location, namespace).await?;
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {DATA_DELETED: now}}});
    merge_patch(
        &api,
        &object_name(location, namespace),
        &patch,
        "annotate BackupRepository",
    )
    .await
}

/// Removes repository snapshots (restic's `forget`, under the repository lock), per source
/// namespace; ids no longer in a repository are skipped. Their data goes with the next prune.
pub async fn forget(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    by_namespace: BTreeMap<String, Vec<String>>,
) -> Result<(), Error> {
    for (ns, ids) in by_namespace {
        let repo = open(ctx, bsl, &ns, false).await?;
        let what = || format!("the repository of namespace {ns} on {}", bsl.name_any());
        let existing: HashSet<String> = repo
            .snapshots()
            .await
            .map_err(|source| Error::Repository {
                what: format!("listing the snapshots of {}", what()),
                fix: "retrying".into(),
                source: Box::new(source),
            })?
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
        .map_err(|source| Error::Repository {
            what: format!("forgetting snapshots in {}", what()),
            fix: "retrying".into(),
            source: Box::new(source),
        })?;
        deleted(ctx, &bsl.name_any(), &ns).await?;
    }
    Ok(())
}
