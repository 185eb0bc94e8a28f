//! How a mover pod reaches a repository: the environment, volumes and mounts it needs
//! (names from the mover protocol), and the copy of the access Secrets a pod outside the
//! operator namespace needs (live copies). Talks to the cluster (Secrets).

use std::collections::BTreeMap;

use holdfast_api::location::BackupStorageLocation;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, Secret, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::layout::{self, PASSWORD_KEY};
use crate::mover::protocol::env;
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::{Context, Error};

/// Keys of the location's credentials Secret.
pub const ACCESS_KEY: &str = "accessKeyId";
pub const SECRET_KEY: &str = "secretAccessKey";
/// Optional key of the location's credentials Secret (temporary credentials).
pub const SESSION_TOKEN_KEY: &str = "sessionToken";
/// Key of the CA bundle in a copied access Secret.
const COPY_CA_KEY: &str = "ca.crt";
/// Where a mover pod finds the CA bundle.
const CA_DIR: &str = "/etc/holdfast/ca";

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    secret_ref(name, secret, key, false)
}

fn secret_ref(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(optional),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a mover pod needs to open a repository.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MoverAccess {
    pub env: Vec<EnvVar>,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

/// The access to the repository of `namespace` on `bsl`: Secret references to the password
/// and the location's credentials in the operator namespace, or, with `copied`, to the one
/// Secret [`copy_access_secret`] made in the pod's own namespace. Pure.
pub fn mover_access(
    bsl: &BackupStorageLocation,
    namespace: &str,
    copied: Option<&str>,
) -> MoverAccess {
    let password_secret = layout::password_secret_of(bsl, namespace);
    let mut a = MoverAccess {
        env: vec![
            var(env::REPOSITORY, layout::repository_url(bsl, namespace)),
            from_secret(
                env::PASSWORD,
                copied.unwrap_or(&password_secret),
                PASSWORD_KEY,
            ),
        ],
        ..Default::default()
    };
    let s3 = &bsl.spec.s3;
    if let Some(r) = &s3.region {
        a.env.push(var(env::S3_REGION, r.clone()));
    }
    if !s3.force_path_style {
        a.env.push(var(env::S3_VIRTUAL_HOSTED, "true"));
    }
    if let Some(sc) = super::storage_class(s3) {
        a.env.push(var(env::S3_STORAGE_CLASS, sc));
    }
    if s3.insecure_skip_tls_verify {
        a.env.push(var(env::S3_INSECURE_SKIP_TLS_VERIFY, "true"));
    }
    if let Some(n) = bsl.spec.retry.attempts {
        a.env.push(var(env::S3_ATTEMPTS, n.to_string()));
    }
    if let Some(c) = &bsl.spec.credentials {
        let secret = copied.unwrap_or(c.secret_ref.name.as_str());
        a.env
            .push(from_secret(env::AWS_ACCESS_KEY_ID, secret, ACCESS_KEY));
        a.env
            .push(from_secret(env::AWS_SECRET_ACCESS_KEY, secret, SECRET_KEY));
        // Set only when the Secret has the key (temporary credentials).
        a.env.push(secret_ref(
            env::AWS_SESSION_TOKEN,
            secret,
            SESSION_TOKEN_KEY,
            true,
        ));
    }
    if let Some(ca) = &s3.ca_bundle {
        let (secret, key) = match copied {
            Some(s) => (s, COPY_CA_KEY),
            None => (ca.secret_ref.name.as_str(), ca.secret_ref.key.as_str()),
        };
        a.volumes.push(Volume {
            name: "ca-bundle".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        a.mounts.push(VolumeMount {
            name: "ca-bundle".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        a.env
            .push(var(env::S3_CA_BUNDLE, format!("{CA_DIR}/{key}")));
    }
    a
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
/// so a rotated credential is picked up on the next copy). Refused when an original is
/// missing. The caller deletes the copy when the pod is done.
pub async fn copy_access_secret(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    repository_ns: &str,
    target_ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Refusable<()> {
    let missing = |m: String| {
        Ok(Err(Refusal::new(
            holdfast_api::reasons::TransferReason::AccessSecretMissing,
            m,
        )))
    };
    let mut data = BTreeMap::new();
    let pw = layout::password_secret_name(&bsl.name_any(), repository_ns);
    match secret_key(ctx, &pw, PASSWORD_KEY).await? {
        Some(v) => data.insert(PASSWORD_KEY.to_string(), v),
        None => return missing(format!("repository Secret {pw} has no key {PASSWORD_KEY}")),
    };
    if let Some(c) = &bsl.spec.credentials {
        for key in [ACCESS_KEY, SECRET_KEY] {
            match secret_key(ctx, &c.secret_ref.name, key).await? {
                Some(v) => data.insert(key.to_string(), v),
                None => {
                    return missing(format!(
                        "credentials Secret {} has no key {key}",
                        c.secret_ref.name
                    ));
                }
            };
        }
        if let Some(v) = secret_key(ctx, &c.secret_ref.name, SESSION_TOKEN_KEY).await? {
            data.insert(SESSION_TOKEN_KEY.to_string(), v);
        }
    }
    if let Some(ca) = &bsl.spec.s3.ca_bundle {
        match secret_key(ctx, &ca.secret_ref.name, &ca.secret_ref.key).await? {
            Some(v) => data.insert(COPY_CA_KEY.to_string(), v),
            None => {
                return missing(format!(
                    "CA bundle Secret {} has no key {}",
                    ca.secret_ref.name, ca.secret_ref.key
                ));
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
    let mut v = serde_json::to_value(&secret).map_err(Error::internal("serialising a Secret"))?;
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), target_ns);
    api.patch(
        name,
        &PatchParams::apply(crate::controller::transfer::MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await
    .map_err(Error::kube("apply copied access Secret"))?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_carries_the_storage_class_and_the_insecure_flag() {
        let bsl: BackupStorageLocation = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": "aws"},
            "spec": {"s3": {"bucket": "b", "region": "eu-west-1", "insecureSkipTlsVerify": true}},
        }))
        .expect("location");
        let a = mover_access(&bsl, "shop", None);
        let value = |n: &str| {
            a.env
                .iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(value(env::S3_STORAGE_CLASS).as_deref(), Some("STANDARD_IA"));
        assert_eq!(
            value(env::S3_INSECURE_SKIP_TLS_VERIFY).as_deref(),
            Some("true")
        );
        // No credentials Secret: no key variables (the ambient chain is used).
        assert_eq!(value(env::AWS_SESSION_TOKEN), None);
    }

    #[test]
    fn access_names_the_protocol_variables_and_the_right_secrets() {
        let bsl: BackupStorageLocation = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "BackupStorageLocation",
            "metadata": {"name": "primary"},
            "spec": {"s3": {"bucket": "b", "endpoint": "http://m:9000", "forcePathStyle": true,
                            "caBundle": {"secretRef": {"name": "ca", "key": "x.pem"}}},
                     "credentials": {"secretRef": {"name": "creds"}}},
        }))
        .expect("location");
        let a = mover_access(&bsl, "shop", None);
        let names: Vec<&str> = a.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                env::REPOSITORY,
                env::PASSWORD,
                env::AWS_ACCESS_KEY_ID,
                env::AWS_SECRET_ACCESS_KEY,
                env::AWS_SESSION_TOKEN,
                env::S3_CA_BUNDLE
            ]
        );
        let secret_of = |a: &MoverAccess, n: &str| {
            a.env
                .iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value_from.clone())
                .and_then(|v| v.secret_key_ref)
                .map(|s| s.name)
        };
        assert_eq!(
            secret_of(&a, env::PASSWORD),
            Some(layout::password_secret_name("primary", "shop"))
        );
        assert_eq!(
            secret_of(&a, env::AWS_ACCESS_KEY_ID).as_deref(),
            Some("creds")
        );
        let c = mover_access(&bsl, "shop", Some("copy"));
        assert_eq!(secret_of(&c, env::PASSWORD).as_deref(), Some("copy"));
        assert_eq!(
            secret_of(&c, env::AWS_SECRET_ACCESS_KEY).as_deref(),
            Some("copy")
        );
        // The session token comes from the same Secret, and only when it has the key.
        let token = c
            .env
            .iter()
            .find(|e| e.name == env::AWS_SESSION_TOKEN)
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.secret_key_ref)
            .expect("session token from the Secret");
        assert_eq!(
            (token.name.as_str(), token.key.as_str(), token.optional),
            ("copy", SESSION_TOKEN_KEY, Some(true))
        );
        assert_eq!(
            c.volumes[0]
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("copy")
        );
    }
}
