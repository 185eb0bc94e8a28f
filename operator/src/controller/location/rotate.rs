//! Passphrase rotation: when `spec.encryption` names another Secret (or key) than the one
//! every repository on the location was given (`status.passphrase`), the new passphrase is
//! added to every repository — each namespace's and the catalog — and only then are the key
//! files of the old one removed (never the last key: the new one must open the repository
//! first). Every step is idempotent, so a rotation interrupted anywhere resumes on the next
//! validation; `status.rotation` shows how far it is. The old Secret must still exist to
//! remove the old key files (a key file is found only by opening it with its passphrase);
//! without it they stay, and the status says so.

use holdfast_api::location::{
    BackupStorageLocation, BackupStorageLocationStatus, PassphraseRotation, RotationPhase,
};
use holdfast_api::repository::BackupRepository;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::info;

use crate::runtime::{Context, Error};
use crate::storage::passphrase;
use crate::storage::repository::{self, LOCATION_LABEL};

/// Splits `Secret/key` (as `status.passphrase` shows it). Pure.
pub fn split_ref(r: &str) -> Option<(&str, &str)> {
    r.rsplit_once('/')
        .filter(|(s, k)| !s.is_empty() && !k.is_empty())
}

/// Reads a passphrase Secret's value; `None` when the Secret or key is gone.
async fn read_ref(ctx: &Context, ns: &str, r: &str) -> Result<Option<String>, Error> {
    let Some((name, key)) = split_ref(r) else {
        return Ok(None);
    };
    let s = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube("get the old passphrase Secret"))?;
    Ok(s.and_then(|s| s.data)
        .and_then(|d| d.get(key).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .map(|v| v.trim().to_string()))
}

/// The source namespaces (and the catalog) of the location's repositories.
async fn repositories(ctx: &Context, bsl: &BackupStorageLocation) -> Result<Vec<String>, Error> {
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&format!("{LOCATION_LABEL}={}", bsl.name_any()));
    let mut out: Vec<String> = api
        .list(&lp)
        .await
        .map_err(Error::kube("list BackupRepositories"))?
        .items
        .into_iter()
        .map(|r| r.spec.source_namespace)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// One pass of a rotation from `from` to the location's current passphrase `to` (both as
/// `Secret/key`); updates `st.rotation`. True when every repository is rotated (the caller
/// then records `to` as the location's passphrase).
pub async fn rotate(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    from: &str,
    to: &str,
    st: &mut BackupStorageLocationStatus,
) -> Result<bool, Error> {
    let ns = bsl.namespace().unwrap_or_else(|| ctx.namespace.clone());
    let new = passphrase::require(ctx, bsl).await?;
    let old = read_ref(ctx, &ns, from).await?;
    // Every repository of the location has its BackupRepository, the catalog's included.
    let names = repositories(ctx, bsl).await?;
    let mut r = PassphraseRotation {
        from: from.to_string(),
        to: to.to_string(),
        phase: RotationPhase::InProgress,
        repositories: names.len() as u32,
        ..Default::default()
    };
    for name in &names {
        let step = async {
            let repo = repository::open(ctx, bsl, name, false).await?;
            let err = |doing: &str| {
                let what = format!(
                    "{doing} the repository of {name} on location {}",
                    bsl.name_any()
                );
                move |source| Error::Repository {
                    what,
                    fix: "retrying".into(),
                    source: Box::new(source),
                }
            };
            passphrase::ensure_key(&repo, &new)
                .await
                .map_err(err("adding the new passphrase to"))?;
            if let Some(old) = old.as_deref().filter(|o| *o != new) {
                // Checks that the new passphrase opens it before removing anything.
                let gone = repo
                    .remove_keys_for(old, &new)
                    .await
                    .map_err(err("removing the old passphrase from"))?;
                passphrase::forget_key(&repo, old);
                if gone > 0 {
                    info!(location = %bsl.name_any(), repository = %name, "old passphrase removed");
                }
            }
            Ok::<(), Error>(())
        };
        if let Err(e) = step.await {
            r.phase = RotationPhase::Failed;
            r.message = Some(format!(
                "{e}; {} of {} repositories rotated, the rest is retried on the next validation (the old passphrase still opens them)",
                r.rotated, r.repositories
            ));
            st.rotation = Some(r);
            return Ok(false);
        }
        r.rotated += 1;
    }
    r.phase = RotationPhase::Completed;
    r.completion_time = Some(Time(Timestamp::now()));
    r.message = Some(match old {
        Some(_) => format!(
            "every repository opens with {to} and no longer with {from}; the old Secret can be deleted"
        ),
        None => format!(
            "every repository opens with {to}; the old passphrase's Secret {from} is gone, so its key files could not be found and stay in the repositories (`restic key list` shows them; `restic key remove` them if the old passphrase is compromised)"
        ),
    });
    st.rotation = Some(r);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_split_at_the_last_slash() {
        assert_eq!(
            split_ref("my-key/passphrase"),
            Some(("my-key", "passphrase"))
        );
        assert_eq!(split_ref("nokey"), None);
        assert_eq!(split_ref("/k"), None);
        assert_eq!(split_ref("s/"), None);
    }
}
