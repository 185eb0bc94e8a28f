//! The location's passphrase: the key a user keeps outside the cluster, with which every
//! repository on the location opens (restic keeps several key files per repository, each
//! wrapping the same master key; the operator's own per-repository passwords are others).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use holdfast_api::location::BackupStorageLocation;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta};

use crate::runtime::kube_ext::create_or_adopt;
use crate::runtime::{Context, Error};

/// Key of the passphrase in a generated Secret.
pub const GENERATED_KEY: &str = "passphrase";
/// The shortest passphrase accepted.
pub const MIN_LENGTH: usize = 16;

/// Name of the Secret the operator generates for a location without `spec.encryption`.
pub fn generated_secret_name(location: &str) -> String {
    format!("holdfast-passphrase-{location}")
}

/// Where a location's passphrase is: Secret name and key, and whether the operator generates
/// it. Pure.
pub fn source(bsl: &BackupStorageLocation) -> (String, String, bool) {
    match &bsl.spec.encryption {
        Some(e) => (
            e.passphrase_secret_ref.name.clone(),
            e.passphrase_secret_ref.key.clone(),
            false,
        ),
        None => (
            generated_secret_name(&bsl.name_any()),
            GENERATED_KEY.to_string(),
            true,
        ),
    }
}

/// The command that exports a location's passphrase Secret.
pub fn export_command(namespace: &str, secret: &str) -> String {
    format!("kubectl get secret -n {namespace} {secret} -o yaml > {secret}.yaml")
}

/// The location's passphrase; a location without `spec.encryption` gets a generated one.
/// `Err(message)`: the named Secret or key is missing or too short (the location is then
/// unavailable with reason `PassphraseMissing`).
pub async fn read(
    ctx: &Context,
    bsl: &BackupStorageLocation,
) -> Result<Result<String, String>, Error> {
    let ns = bsl.namespace().unwrap_or_else(|| ctx.namespace.clone());
    let (name, key, generated) = source(bsl);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let found = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get passphrase Secret"))?;
    let value = found
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(&key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok());
    match (value, generated) {
        (Some(v), _) if v.trim().chars().count() >= MIN_LENGTH => Ok(Ok(v.trim().to_string())),
        (Some(_), _) => Ok(Err(format!(
            "the passphrase in Secret {ns}/{name} (key {key}) is shorter than {MIN_LENGTH} characters; use a longer one"
        ))),
        (None, false) => Ok(Err(format!(
            "spec.encryption.passphraseSecretRef names Secret {ns}/{name} key {key}, which does not exist; create it with the passphrase the location's repositories open with"
        ))),
        (None, true) if found.is_some() => Ok(Err(format!(
            "Secret {ns}/{name} has no key {key}; put the location's passphrase back from your copy"
        ))),
        (None, true) => {
            let value = generate()?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "holdfast".to_string(),
                        ),
                        (
                            crate::storage::repository::LOCATION_LABEL.to_string(),
                            bsl.name_any(),
                        ),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        "holdfast.dev/warning".to_string(),
                        format!(
                            "the passphrase of every repository on location {}: keep a copy outside the cluster ({})",
                            bsl.name_any(),
                            export_command(&ns, &name)
                        ),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    GENERATED_KEY.to_string(),
                    ByteString(value.clone().into_bytes()),
                )])),
                ..Default::default()
            };
            create_or_adopt(&api, &secret, "create passphrase Secret").await?;
            // Another replica may have made it first: read what is there.
            Box::pin(read(ctx, bsl)).await
        }
    }
}

/// [`read`], a missing or unusable passphrase as the error `PassphraseMissing`.
pub async fn require(ctx: &Context, bsl: &BackupStorageLocation) -> Result<String, Error> {
    read(ctx, bsl).await?.map_err(|message| Error::Config {
        reason: "PassphraseMissing",
        message,
    })
}

fn generate() -> Result<String, Error> {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::internal("reading /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Repositories known (in this process) to open with a passphrase: (repository, hash of the
/// passphrase), so that the check, which runs scrypt per key file, runs once per process.
static HAS_KEY: Mutex<Option<HashSet<KeyedRepository>>> = Mutex::new(None);

/// A repository (as its store describes it) and the hash of a passphrase it opens with.
type KeyedRepository = (String, [u8; 32]);

/// Makes sure `repo` opens with `passphrase` (adds a key file when it does not).
pub async fn ensure_key(
    repo: &holdfast_repo::Repository,
    passphrase: &str,
) -> Result<(), holdfast_repo::RepoError> {
    let entry = (
        repo.store().describe(),
        holdfast_repo::Id::hash(passphrase.as_bytes()).0,
    );
    if HAS_KEY
        .lock()
        .ok()
        .is_some_and(|s| s.as_ref().is_some_and(|s| s.contains(&entry)))
    {
        return Ok(());
    }
    repo.add_key(passphrase, holdfast_repo::KdfParams::default())
        .await?;
    if let Ok(mut s) = HAS_KEY.lock() {
        s.get_or_insert_with(HashSet::new).insert(entry);
    }
    Ok(())
}

/// Forgets that `repo` opens with `passphrase` (its key files were removed).
pub fn forget_key(repo: &holdfast_repo::Repository, passphrase: &str) {
    let entry = (
        repo.store().describe(),
        holdfast_repo::Id::hash(passphrase.as_bytes()).0,
    );
    if let Ok(mut s) = HAS_KEY.lock()
        && let Some(s) = s.as_mut()
    {
        s.remove(&entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_without_encryption_gets_a_generated_secret() {
        let mut bsl: BackupStorageLocation = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": "primary", "namespace": "hf"},
            "spec": {"s3": {"bucket": "b"}},
        }))
        .expect("bsl");
        assert_eq!(
            source(&bsl),
            (
                "holdfast-passphrase-primary".into(),
                "passphrase".into(),
                true
            )
        );
        bsl.spec.encryption = Some(holdfast_api::location::LocationEncryption {
            passphrase_secret_ref: holdfast_api::common::SecretKeyRef {
                name: "mine".into(),
                key: "pp".into(),
            },
        });
        assert_eq!(source(&bsl), ("mine".into(), "pp".into(), false));
    }
}
