//! What a restore restores from: the Backup, its location, its `metadata.json` and object
//! archive. Read once per restore and kept while it runs (not on every pass).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, VolumePhase};
use holdfast_api::common::NamespacedName;
use holdfast_api::location::BackupStorageLocation;
use holdfast_api::reasons::{LocationReason, RestoreReason};
use holdfast_api::restore::{Restore, RestorePhase, RestoreStatus, RestoredVolume};
use holdfast_api::schedule::SCHEDULE_LABEL;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;

use super::fail;
use crate::objects::{self, archive::Item};
use crate::runtime::error::{Refusable, Refusal};
use crate::runtime::{Context, Error};
use crate::storage::metadata::BackupMetadata;
use crate::storage::{self, catalog, layout};

/// How often a restore waiting for its location looks again.
const LOCATION_RETRY: Duration = Duration::from_secs(15);

/// A restore's source, as read from the cluster and the bucket.
pub(super) struct Source {
    pub backup: Backup,
    pub bsl: BackupStorageLocation,
    pub md: BackupMetadata,
    pub archive: Vec<u8>,
    pub items: Vec<Item>,
    /// Where each backed-up namespace goes.
    pub mapping: BTreeMap<String, String>,
}

impl Source {
    /// The namespace a backed-up namespace is restored into.
    pub fn target_namespace(&self, ns: &str) -> String {
        self.mapping
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_string())
    }

    /// The volumes to restore: the backup's Completed volumes in selected namespaces whose
    /// claims the label selectors select (by the claim's labels, or because a selected pod or
    /// workload uses the claim).
    pub fn volumes_to_restore(&self, r: &Restore) -> Vec<RestoredVolume> {
        let selected = self.claims_selected(r);
        self.md
            .volumes
            .iter()
            .filter(|v| namespace_selected(r, &v.pvc.namespace))
            .filter(|v| selected.as_ref().is_none_or(|s| s.contains(&v.pvc)))
            .filter(|v| v.phase == VolumePhase::Completed)
            .map(|v| RestoredVolume {
                source: v.pvc.clone(),
                target: NamespacedName {
                    namespace: self.target_namespace(&v.pvc.namespace),
                    name: v.pvc.name.clone(),
                },
                ..Default::default()
            })
            .collect()
    }
}

impl Source {
    /// With label selectors in the restore's selection, the claims they select; `None`: all.
    fn claims_selected(&self, r: &Restore) -> Option<std::collections::BTreeSet<NamespacedName>> {
        let filter = objects::select::LabelFilter::new(&r.spec.selection).ok()?;
        if filter.selects_all() {
            return None;
        }
        let mut users: BTreeMap<String, objects::select::ClaimRefs> = BTreeMap::new();
        let mut out = std::collections::BTreeSet::new();
        for item in &self.items {
            let Some(ns) = item.namespace() else { continue };
            if !filter.matches(item.object.metadata.labels.as_ref()) {
                continue;
            }
            if item.resource.is("", "persistentvolumeclaims") {
                out.insert(NamespacedName {
                    namespace: ns.to_string(),
                    name: item.name().to_string(),
                });
            } else if objects::select::mounts_claims(&item.resource) {
                users
                    .entry(ns.to_string())
                    .or_default()
                    .add_from(&item.resource, &item.object);
            }
        }
        for v in &self.md.volumes {
            if users
                .get(&v.pvc.namespace)
                .is_some_and(|u| u.uses(&v.pvc.name))
            {
                out.insert(v.pvc.clone());
            }
        }
        Some(out)
    }
}

/// Whether the restore's selection includes backed-up namespace `ns`. Pure.
pub(super) fn namespace_selected(r: &Restore, ns: &str) -> bool {
    let sel = &r.spec.selection;
    (sel.included_namespaces.is_empty()
        || sel.included_namespaces.iter().any(|n| n == "*" || n == ns))
        && !sel.excluded_namespaces.iter().any(|n| n == ns)
}

/// Where each backed-up namespace goes: a tenant's restore into its own namespace, an
/// administrator's per `spec.namespaceMapping`. Pure.
pub(super) fn namespace_mapping(
    r: &Restore,
    operator_ns: &str,
    namespaces: &[String],
) -> BTreeMap<String, String> {
    let own = r.namespace().unwrap_or_default();
    namespaces
        .iter()
        .map(|ns| {
            let to = if own != operator_ns {
                own.clone()
            } else {
                r.spec
                    .namespace_mapping
                    .get(ns)
                    .cloned()
                    .unwrap_or_else(|| ns.clone())
            };
            (ns.clone(), to)
        })
        .collect()
}

/// The sources of running restores, by restore uid.
#[derive(Default)]
pub(super) struct Sources {
    cache: Mutex<HashMap<String, Arc<Source>>>,
}

impl Sources {
    /// The restore's source, read once; `Err(action)`: the restore failed or waits (the
    /// status says why).
    pub async fn get(
        &self,
        r: &Restore,
        ctx: &Context,
        st: &mut RestoreStatus,
    ) -> Result<Result<Arc<Source>, Action>, Error> {
        let uid = r.uid().unwrap_or_default();
        if let Some(s) = self.cache.lock().ok().and_then(|c| c.get(&uid).cloned()) {
            return Ok(Ok(s));
        }
        let backup = match find_backup(r, ctx).await? {
            Ok(b) => b,
            Err(refusal) => return Ok(Err(fail(st, RestorePhase::Failed, refusal))),
        };
        if let Err(refusal) = check_backup(r, ctx, &backup) {
            return Ok(Err(fail(st, RestorePhase::Failed, refusal)));
        }
        st.backup = Some(format!(
            "{}/{}",
            backup.namespace().unwrap_or_default(),
            backup.name_any()
        ));
        let loc = backup
            .status
            .as_ref()
            .and_then(|s| s.storage_location.clone())
            .unwrap_or_default();
        let ns = r.namespace().unwrap_or_default();
        let bsl = match storage::location_for(ctx, Some(&loc), &ns).await? {
            Ok(b) => b,
            Err(refusal) if refusal.reason == LocationReason::LocationNotAllowed.as_str() => {
                return Ok(Err(fail(st, RestorePhase::Failed, refusal)));
            }
            Err(refusal) => {
                st.reason = Some(refusal.reason.into());
                st.message = Some(refusal.message);
                return Ok(Err(Action::requeue(LOCATION_RETRY)));
            }
        };
        let src = match read(r, ctx, backup, bsl).await? {
            Ok(s) => Arc::new(s),
            Err(refusal) => return Ok(Err(fail(st, RestorePhase::Failed, refusal))),
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(uid, src.clone());
        }
        Ok(Ok(src))
    }

    /// Drops what was kept for a restore that ended or went away.
    pub fn forget(&self, r: &Restore) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(&r.uid().unwrap_or_default());
        }
    }
}

/// Reads `metadata.json` and the object archive of the backup: from the location's catalog,
/// or, for a backup written before the catalog, from the bucket. Every byte read from the
/// catalog is authenticated; damage refuses the restore naming what is damaged.
async fn read(
    r: &Restore,
    ctx: &Context,
    backup: Backup,
    bsl: BackupStorageLocation,
) -> Refusable<Source> {
    let corrupt = |m: String| Ok(Err(Refusal::new(RestoreReason::BackupCorrupt, m)));
    let (md_bytes, archive, what) =
        match catalog::read(ctx, &bsl, &catalog::origin_uid(&backup)).await? {
            catalog::Found::Record { metadata, archive } => (
                metadata,
                archive,
                format!("the catalog of location {}", bsl.name_any()),
            ),
            catalog::Found::Corrupt(m) => return corrupt(m),
            catalog::Found::Missing => match read_legacy(ctx, &bsl, &backup).await? {
                Ok(found) => found,
                Err(refusal) => return Ok(Err(refusal)),
            },
        };
    let md: BackupMetadata = match serde_json::from_slice(&md_bytes) {
        Ok(m) => m,
        Err(e) => return corrupt(format!("{} in {what}: {e}", layout::METADATA)),
    };
    let items = match objects::read_archive(&archive) {
        Ok(i) => i,
        Err(e) => return corrupt(format!("the object archive in {what}: {e}")),
    };
    let mapping = namespace_mapping(r, &ctx.namespace, &md.namespaces);
    Ok(Ok(Source {
        backup,
        bsl,
        md,
        archive,
        items,
        mapping,
    }))
}

/// A backup written before the catalog: `metadata.json` and `resources.tar.gz` under its
/// prefix in the bucket (metadata, archive, where).
async fn read_legacy(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    backup: &Backup,
) -> Refusable<(Vec<u8>, Vec<u8>, String)> {
    let store = storage::open_bucket(ctx, bsl).await?;
    let bns = backup.namespace().unwrap_or_default();
    let prefix = layout::backup_prefix(bsl, &bns, &backup.name_any());
    let md_key = format!("{prefix}/{}", layout::METADATA);
    let md = match store.get(&md_key).await {
        Ok(b) => b.to_vec(),
        Err(e) if e.is_not_found() => {
            return Ok(Err(Refusal::new(
                RestoreReason::BackupIncomplete,
                format!(
                    "location {} has no record of this backup (its catalog has none, nor {md_key}): it never finished writing, or was deleted there",
                    bsl.name_any()
                ),
            )));
        }
        Err(e) => return Err(Error::store(format!("reading {md_key}"))(e)),
    };
    let key = format!("{prefix}/{}", layout::RESOURCES);
    let archive = store
        .get(&key)
        .await
        .map_err(Error::store(format!("reading {key}")))?
        .to_vec();
    Ok(Ok((md, archive, format!("the bucket ({prefix})"))))
}

/// The backup must be finished, and a tenant may not map namespaces. Pure.
fn check_backup(r: &Restore, ctx: &Context, backup: &Backup) -> Result<(), Refusal> {
    let phase = backup.status.as_ref().and_then(|s| s.phase);
    if !matches!(
        phase,
        Some(BackupPhase::Completed | BackupPhase::PartiallyFailed)
    ) {
        return Err(Refusal::new(
            RestoreReason::BackupNotRestorable,
            format!(
                "Backup {}/{} is {phase:?}; only Completed or PartiallyFailed backups can be restored",
                backup.namespace().unwrap_or_default(),
                backup.name_any()
            ),
        ));
    }
    let own = r.namespace().unwrap_or_default();
    if own != ctx.namespace && !r.spec.namespace_mapping.is_empty() {
        return Err(Refusal::new(
            RestoreReason::MappingNotAllowed,
            format!(
                "spec.namespaceMapping is only allowed for Restores in {}; this Restore restores into {own}",
                ctx.namespace
            ),
        ));
    }
    Ok(())
}

/// Finds the backup named by the source: by name, or the latest Completed one of a schedule
/// (at or before `pointInTime`).
async fn find_backup(r: &Restore, ctx: &Context) -> Refusable<Backup> {
    let own = r.namespace().unwrap_or_default();
    let src = &r.spec.source;
    if let Some(b) = &src.backup {
        let (ns, name) = match b.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (own.clone(), b.clone()),
        };
        if ns != own && own != ctx.namespace {
            return Ok(Err(Refusal::new(
                RestoreReason::BackupNotAllowed,
                format!(
                    "a Restore in {own} can only restore Backups of its own namespace; spec.source.backup names {ns}/{name}"
                ),
            )));
        }
        let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
        return Ok(api
            .get_opt(&name)
            .await
            .map_err(Error::kube("get Backup"))?
            .ok_or_else(|| {
                Refusal::new(
                    RestoreReason::BackupNotFound,
                    format!("Backup {ns}/{name} (spec.source.backup) does not exist"),
                )
            }));
    }
    let Some(schedule) = &src.schedule else {
        return Ok(Err(Refusal::new(
            RestoreReason::InvalidSource,
            "spec.source needs backup or schedule",
        )));
    };
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &own);
    let lp = ListParams::default().labels(&format!("{SCHEDULE_LABEL}={schedule}"));
    let at = src.point_in_time.as_ref().map(|t| t.0);
    let backups = api
        .list(&lp)
        .await
        .map_err(Error::kube("list Backups"))?
        .items;
    Ok(latest_completed(backups, at).ok_or_else(|| {
        Refusal::new(
            RestoreReason::BackupNotFound,
            format!(
                "Schedule {schedule} has no Completed backup{}",
                at.map(|a| format!(" at or before {a}")).unwrap_or_default()
            ),
        )
    }))
}

/// The Completed backup that finished last (at or before `at`). Pure.
pub(super) fn latest_completed(
    backups: Vec<Backup>,
    at: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<Backup> {
    backups
        .into_iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::Completed))
        .filter_map(|b| {
            let t = b.status.as_ref()?.completion_time.as_ref()?.0;
            (at.is_none_or(|at| t <= at)).then_some((t, b))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, b)| b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn backup(name: &str, phase: BackupPhase, done: i64) -> Backup {
        let mut b = Backup::new(name, Default::default());
        b.status = Some(holdfast_api::BackupStatus {
            phase: Some(phase),
            completion_time: Some(Time(Timestamp::from_second(done).expect("ts"))),
            ..Default::default()
        });
        b
    }

    #[test]
    fn the_latest_completed_backup_before_the_point_in_time_wins() {
        let all = || {
            vec![
                backup("a", BackupPhase::Completed, 100),
                backup("b", BackupPhase::Completed, 200),
                backup("c", BackupPhase::PartiallyFailed, 300),
            ]
        };
        assert_eq!(
            latest_completed(all(), None)
                .map(|b| b.name_any())
                .as_deref(),
            Some("b")
        );
        let at = Timestamp::from_second(150).ok();
        assert_eq!(
            latest_completed(all(), at).map(|b| b.name_any()).as_deref(),
            Some("a")
        );
        let at = Timestamp::from_second(50).ok();
        assert!(latest_completed(all(), at).is_none());
    }

    #[test]
    fn tenants_restore_into_their_namespace_and_admins_map() {
        let mut r: Restore = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": "r", "namespace": "team"},
            "spec": {"source": {"backup": "b"}},
        }))
        .expect("restore");
        let ns = vec!["shop".to_string()];
        assert_eq!(namespace_mapping(&r, "hf", &ns)["shop"], "team");
        r.metadata.namespace = Some("hf".into());
        r.spec
            .namespace_mapping
            .insert("shop".into(), "shop-copy".into());
        assert_eq!(namespace_mapping(&r, "hf", &ns)["shop"], "shop-copy");
        r.spec.selection.excluded_namespaces = vec!["shop".into()];
        assert!(!namespace_selected(&r, "shop"));
        assert!(namespace_selected(&r, "other"));
    }
}
