//! Sync: the backups recorded in a location's catalog that this cluster has no Backup for
//! (written by another cluster, or before this one was rebuilt) appear as Backup objects,
//! labelled [`SYNCED_LABEL`], with `status.synced`, restorable like any other; a synced
//! Backup whose record left the location goes. Only complete records are synced (a backup
//! that never ended has none), and expired ones are not. Reading the catalog never writes
//! to the location (see `storage::catalog::open_for_read`).
//!
//! A record's Backup goes to its own namespace when that exists here and this operator
//! watches it, else to the operator namespace as `<namespace>.<name>` (when a Backup
//! there has that name already, the record is reported as not shown), where an administrator can restore it: that is how a lost
//! namespace comes back on a new cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use holdfast_api::backup::{Backup, BackupPhase, BackupStatus, SyncedBackup};
use holdfast_api::location::BackupStorageLocation;
use holdfast_repo::{Id, Snapshot};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use tracing::{info, warn};

use crate::controller::departed::DATA_REMOVED;
use crate::runtime::{Context, Error, scope};
use crate::storage::catalog::{self, ORIGIN_UID, TAG_BACKUP};
use crate::storage::layout;
use crate::storage::metadata::BackupMetadata;

/// Label of Backups made by sync (value `"true"`).
pub const SYNCED_LABEL: &str = "holdfast.dev/synced";
/// Field manager of sync's writes.
const MANAGER: &str = "holdfast-location-sync";

/// What one sync pass found and did.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Complete backups recorded in the catalog.
    pub records: u32,
    pub created: u32,
    pub removed: u32,
    /// Records not shown, each with why.
    pub skipped: Vec<String>,
}

impl Report {
    /// One line for the `Synced` condition.
    pub fn message(&self) -> String {
        let mut m = format!(
            "{} backups in the catalog; {} Backup objects made, {} removed",
            self.records, self.created, self.removed
        );
        if !self.skipped.is_empty() {
            let shown: Vec<&str> = self.skipped.iter().take(3).map(String::as_str).collect();
            m.push_str(&format!(
                "; {} not shown: {}{}",
                self.skipped.len(),
                shown.join("; "),
                if self.skipped.len() > 3 { "; …" } else { "" }
            ));
        }
        m
    }
}

/// Metadata already read, per catalog snapshot (a snapshot never changes).
static METADATA: LazyLock<Mutex<HashMap<Id, BackupMetadata>>> = LazyLock::new(Default::default);

/// Where a record's Backup goes and under which name. Pure.
pub fn placement(
    record_ns: &str,
    name: &str,
    operator_ns: &str,
    usable_here: bool,
) -> (String, String) {
    if usable_here || record_ns == operator_ns {
        (record_ns.to_string(), name.to_string())
    } else {
        (operator_ns.to_string(), format!("{record_ns}.{name}"))
    }
}

/// When a backup of this metadata expires (completion plus ttl). Pure.
pub fn expiration(md: &BackupMetadata) -> Option<Timestamp> {
    let done = md.completion_time.as_ref()?.0;
    let ttl = SignedDuration::try_from(md.spec.ttl?.as_std()).ok()?;
    done.checked_add(ttl).ok()
}

/// The status a synced Backup shows. Pure.
pub fn status_of(
    md: &BackupMetadata,
    location: &str,
    operator_ns: &str,
    uid: &str,
) -> BackupStatus {
    BackupStatus {
        phase: Some(md.phase),
        reason: md.reason.clone(),
        message: Some(format!(
            "synced from the catalog of location {location}; written by Backup {}/{} (uid {uid})",
            md.backup.namespace, md.backup.name
        )),
        storage_location: Some(location.to_string()),
        operator_namespace: Some(operator_ns.to_string()),
        namespaces: md.namespaces.clone(),
        start_time: md.start_time.clone(),
        completion_time: md.completion_time.clone(),
        expiration: expiration(md).map(Time),
        volumes: md.volumes.clone(),
        items_backed_up: Some(md.items_backed_up),
        synced: Some(SyncedBackup {
            location: location.to_string(),
            origin_uid: uid.to_string(),
            time: Some(Time(Timestamp::now())),
        }),
        ..Default::default()
    }
}

/// One sync pass over the location's catalog.
pub async fn sync(ctx: &Context, bsl: &BackupStorageLocation) -> Result<Report, Error> {
    let location = bsl.name_any();
    let mut report = Report::default();
    let repo = catalog::open_for_read(ctx, bsl).await?;
    let records: Vec<(Id, Snapshot)> = match &repo {
        Some(repo) => catalog::records(repo)
            .await
            .map_err(catalog::repo_error(bsl, "listing"))?
            .into_iter()
            .filter(|(_, s)| s.tags.iter().any(|t| t == TAG_BACKUP))
            .collect(),
        None => Vec::new(),
    };
    let backups: Api<Backup> = Api::all(ctx.client.clone());
    let existing = backups
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list Backups"))?
        .items;
    let by_uid: HashMap<String, &Backup> = existing
        .iter()
        .map(|b| (catalog::origin_uid(b), b))
        .collect();
    let names: HashSet<(String, String)> = existing
        .iter()
        .map(|b| (b.namespace().unwrap_or_default(), b.name_any()))
        .collect();
    let namespaces: HashSet<String> = Api::<Namespace>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(Error::kube("list Namespaces"))?
        .items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| n.name_any())
        .collect();
    let mut index = None;
    let mut recorded = HashSet::new();
    for (id, s) in &records {
        let (Some(uid), Some(ns), Some(name)) = (
            catalog::tag(s, "uid"),
            catalog::tag(s, "namespace"),
            catalog::tag(s, "name"),
        ) else {
            continue;
        };
        report.records += 1;
        recorded.insert(uid.to_string());
        if catalog::is_leaving(uid) {
            continue;
        }
        if let Some(b) = by_uid.get(uid) {
            // Made by an earlier pass that stopped before writing its status.
            if b.labels().contains_key(SYNCED_LABEL)
                && b.status.as_ref().and_then(|s| s.phase).is_none()
                && let Some(md) = metadata(bsl, repo.as_ref(), &mut index, id, s).await?
            {
                write_status(ctx, b, &status_of(&md, &location, &ctx.namespace, uid)).await?;
            }
            continue;
        }
        let usable = namespaces.contains(ns)
            && scope::watched(&ctx.namespace, &ctx.watch_namespaces, ns)
            && crate::storage::allows(bsl, ns, &ctx.namespace, None).is_ok();
        let (target_ns, target) = placement(ns, name, &ctx.namespace, usable);
        if names.contains(&(target_ns.clone(), target.clone())) {
            report.skipped.push(format!(
                "{ns}/{name}: a Backup {target_ns}/{target} written here has that name"
            ));
            continue;
        }
        if target.len() > 253 {
            report
                .skipped
                .push(format!("{ns}/{name}: {target} is too long a name"));
            continue;
        }
        let Some(md) = metadata(bsl, repo.as_ref(), &mut index, id, s).await? else {
            report.skipped.push(format!(
                "{ns}/{name}: its record has no {}",
                layout::METADATA
            ));
            continue;
        };
        if !matches!(
            md.phase,
            BackupPhase::Completed | BackupPhase::PartiallyFailed
        ) {
            continue;
        }
        if expiration(&md).is_some_and(|t| t <= Timestamp::now()) {
            continue;
        }
        create(ctx, bsl, &target_ns, &target, uid, &md).await?;
        report.created += 1;
    }
    report.removed = remove_unrecorded(ctx, &location, &existing, &recorded).await?;
    Ok(report)
}

/// Deletes the synced Backups of this location (made by this operator: another operator's
/// location may have the same name and another bucket) whose record is gone from it; returns
/// how many.
async fn remove_unrecorded(
    ctx: &Context,
    location: &str,
    existing: &[Backup],
    recorded: &HashSet<String>,
) -> Result<u32, Error> {
    let mut removed = 0;
    for b in existing {
        let st = b.status.as_ref();
        let from_here = st
            .and_then(|s| s.synced.as_ref())
            .is_some_and(|s| s.location == location)
            && st.and_then(|s| s.operator_namespace.as_deref()) == Some(ctx.namespace.as_str());
        if b.labels().contains_key(SYNCED_LABEL)
            && from_here
            && b.metadata.deletion_timestamp.is_none()
            && !recorded.contains(&catalog::origin_uid(b))
        {
            let api: Api<Backup> =
                Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
            // Its data left with its record: nothing for the deletion to remove.
            crate::runtime::kube_ext::merge_patch(
                &api,
                &b.name_any(),
                &serde_json::json!({"metadata": {"annotations": {DATA_REMOVED: "true"}}}),
                "annotate synced Backup",
            )
            .await?;
            crate::runtime::kube_ext::delete(
                &api,
                &b.name_any(),
                &Default::default(),
                "delete synced Backup",
            )
            .await?;
            info!(location = %location, backup = %b.name_any(), "synced backup gone from the location; Backup removed");
            removed += 1;
        }
    }
    Ok(removed)
}

/// The metadata of a record (cached per snapshot).
async fn metadata(
    bsl: &BackupStorageLocation,
    repo: Option<&holdfast_repo::Repository>,
    index: &mut Option<holdfast_repo::Index>,
    id: &Id,
    s: &Snapshot,
) -> Result<Option<BackupMetadata>, Error> {
    if let Some(md) = METADATA.lock().ok().and_then(|m| m.get(id).cloned()) {
        return Ok(Some(md));
    }
    let Some(repo) = repo else { return Ok(None) };
    if index.is_none() {
        *index = Some(
            repo.load_index()
                .await
                .map_err(catalog::repo_error(bsl, "reading the index of"))?,
        );
    }
    let Some(ix) = index.as_ref() else {
        return Ok(None);
    };
    let bytes = match catalog::file(repo, ix, s, layout::METADATA).await {
        Ok(b) => b,
        Err(e) => {
            // A damaged record is not shown; the others still are.
            warn!(location = %bsl.name_any(), snapshot = %id.short(), error = %e, "catalog record unreadable");
            return Ok(None);
        }
    };
    let Some(bytes) = bytes else { return Ok(None) };
    let md: BackupMetadata = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            warn!(location = %bsl.name_any(), snapshot = %id.short(), error = %e, "catalog record's metadata unreadable");
            return Ok(None);
        }
    };
    if let Ok(mut m) = METADATA.lock() {
        m.insert(*id, md.clone());
    }
    Ok(Some(md))
}

async fn create(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    ns: &str,
    name: &str,
    uid: &str,
    md: &BackupMetadata,
) -> Result<(), Error> {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), ns);
    let mut spec = md.spec.clone();
    spec.storage_location = Some(bsl.name_any());
    let b = Backup {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([
                (SYNCED_LABEL.to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "holdfast".to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(ORIGIN_UID.to_string(), uid.to_string())])),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let made = match api.create(&PostParams::default(), &b).await {
        Ok(b) => b,
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .get(name)
            .await
            .map_err(Error::kube("get synced Backup"))?,
        Err(e) => return Err(Error::kube("create synced Backup")(e)),
    };
    write_status(
        ctx,
        &made,
        &status_of(md, &bsl.name_any(), &ctx.namespace, uid),
    )
    .await?;
    info!(location = %bsl.name_any(), namespace = %ns, backup = %name, "backup synced from the location's catalog");
    Ok(())
}

async fn write_status(ctx: &Context, b: &Backup, st: &BackupStatus) -> Result<(), Error> {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1",
            "kind": "Backup",
            "status": st,
        })),
    )
    .await
    .map_err(Error::kube("write synced Backup status"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_goes_home_or_to_the_operator_namespace() {
        assert_eq!(
            placement("shop", "nightly", "holdfast-system", true),
            ("shop".to_string(), "nightly".to_string())
        );
        assert_eq!(
            placement("shop", "nightly", "holdfast-system", false),
            ("holdfast-system".to_string(), "shop.nightly".to_string())
        );
        assert_eq!(
            placement("holdfast-system", "all", "holdfast-system", false),
            ("holdfast-system".to_string(), "all".to_string())
        );
    }

    #[test]
    fn report_message_names_what_was_not_shown() {
        let r = Report {
            records: 5,
            created: 2,
            removed: 1,
            skipped: (0..5).map(|i| format!("n/b{i}: why")).collect(),
        };
        let m = r.message();
        assert!(m.starts_with("5 backups in the catalog; 2 Backup objects made, 1 removed; 5 not shown: n/b0: why; n/b1: why; n/b2: why; …"), "{m}");
    }
}
