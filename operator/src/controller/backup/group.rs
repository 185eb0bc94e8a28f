//! Group snapshots (`spec.volumes.groupSnapshot`): the claims of a namespace and CSI driver (or
//! those sharing a value of `groupSnapshotBy`) are cut together by one VolumeGroupSnapshot, so
//! their data is consistent across volumes. The group's claims carry a label naming the group
//! while it is cut (external-snapshotter selects members by label); the label goes once the
//! member snapshots exist. Each member VolumeSnapshot then goes through the usual snapshot
//! and copy phases. A cluster or driver without group snapshots fails the claims with
//! `GroupSnapshotNotSupported` rather than snapshot them one by one.

use std::collections::BTreeMap;

use holdfast_api::backup::{Backup, BackupStatus, Consistency, SnapshotStatus, VolumePhase};
use holdfast_api::common::NamespacedName;
use holdfast_api::reasons::VolumeReason;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};

use super::{child_labels, hooks};
use crate::runtime::kube_ext::create_or_adopt;
use crate::runtime::names::child_name;
use crate::runtime::{Context, Error};
use crate::snapshot::{
    self, GroupSource, VolumeGroupSnapshot, VolumeGroupSnapshotClass, VolumeGroupSnapshotSpec,
    VolumeSnapshot,
};

/// The label that puts a claim in a group while the group is cut.
pub const GROUP_LABEL: &str = "holdfast.dev/group-snapshot";

/// One group to cut: its claims (indexes into `status.volumes`) of one namespace and driver.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    namespace: String,
    driver: String,
    by: Option<String>,
    members: Vec<usize>,
}

/// Groups the Pending claims whose driver is known (CSI claims), by namespace, driver and the
/// value of the `by` label; claims without that label are left out (snapshotted alone). Pure.
fn groups(
    pending: &[(usize, NamespacedName, String, BTreeMap<String, String>)],
    by: Option<&str>,
) -> Vec<Group> {
    let mut out: BTreeMap<(String, String, Option<String>), Vec<usize>> = BTreeMap::new();
    for (i, pvc, driver, labels) in pending {
        let value = match by {
            Some(key) => match labels.get(key) {
                Some(v) => Some(v.clone()),
                None => continue,
            },
            None => None,
        };
        out.entry((pvc.namespace.clone(), driver.clone(), value))
            .or_default()
            .push(*i);
    }
    out.into_iter()
        .map(|((namespace, driver, by), members)| Group {
            namespace,
            driver,
            by,
            members,
        })
        .collect()
}

/// Cuts the groups of the Pending claims: makes their VolumeGroupSnapshots and moves the
/// members to Snapshotting. Claims a pod's pre hooks still hold back wait, with their group.
pub(super) async fn cut_groups(
    b: &Backup,
    ctx: &Context,
    st: &mut BackupStatus,
) -> Result<(), Error> {
    let mut pending = Vec::new();
    for (i, v) in st.volumes.iter().enumerate() {
        if v.phase != VolumePhase::Pending {
            continue;
        }
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
        let Some(pvc) = pvcs
            .get_opt(&v.pvc.name)
            .await
            .map_err(Error::kube("get PersistentVolumeClaim"))?
        else {
            continue;
        };
        let Some(pv_name) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
            continue;
        };
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let driver = pvs
            .get_opt(&pv_name)
            .await
            .map_err(Error::kube("get PersistentVolume"))?
            .and_then(|pv| pv.spec)
            .and_then(|s| s.csi)
            .map(|c| c.driver);
        // Claims that are not CSI volumes go the single-snapshot way (which explains why not).
        if let Some(driver) = driver {
            pending.push((i, v.pvc.clone(), driver, pvc.labels().clone()));
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let by = b.spec.volumes.group_snapshot_by.as_deref();
    let groups = groups(&pending, by);
    if groups.is_empty() {
        return Ok(());
    }
    let classes = match list_classes(ctx).await? {
        Some(c) => c,
        None => {
            for g in &groups {
                refuse(
                    st,
                    g,
                    "the cluster does not serve the groupsnapshot.storage.k8s.io/v1 API (install external-snapshotter v8.6 or later with its group snapshot CRDs, and run the snapshot controller and the driver's csi-snapshotter with --feature-gates CSIVolumeGroupSnapshot=true)",
                );
            }
            return Ok(());
        }
    };
    for g in groups {
        if g.members
            .iter()
            .any(|&i| hooks::waits_for_pre(st, &st.volumes[i]))
        {
            continue;
        }
        let Some(class) = snapshot::choose_group_class(&classes, &g.driver) else {
            let why = format!(
                "no VolumeGroupSnapshotClass of driver {} is labelled {}=\"true\" or annotated as the default (the driver may not support group snapshots)",
                g.driver,
                snapshot::DEFAULT_GROUP_CLASS_LABEL
            );
            refuse(st, &g, &why);
            continue;
        };
        let name = group_name(b, &g);
        for &i in &g.members {
            label_claim(ctx, &st.volumes[i].pvc, Some(&name)).await?;
        }
        let vgs = VolumeGroupSnapshot {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(g.namespace.clone()),
                labels: Some(child_labels(b)),
                ..Default::default()
            },
            spec: VolumeGroupSnapshotSpec {
                source: GroupSource {
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            GROUP_LABEL.to_string(),
                            name.clone(),
                        )])),
                        ..Default::default()
                    }),
                },
                volume_group_snapshot_class_name: Some(class.clone()),
            },
            status: None,
        };
        let api: Api<VolumeGroupSnapshot> = Api::namespaced(ctx.client.clone(), &g.namespace);
        create_or_adopt(&api, &vgs, "create VolumeGroupSnapshot").await?;
        for &i in &g.members {
            let v = &mut st.volumes[i];
            v.driver = Some(g.driver.clone());
            v.phase = VolumePhase::Snapshotting;
            v.consistency = Some(Consistency::CrashConsistent);
            v.snapshot = Some(SnapshotStatus {
                group: Some(name.clone()),
                class: Some(class.clone()),
                ..Default::default()
            });
        }
    }
    Ok(())
}

fn refuse(st: &mut BackupStatus, g: &Group, why: &str) {
    for &i in &g.members {
        let v = &mut st.volumes[i];
        v.phase = VolumePhase::Failed;
        v.reason = Some(VolumeReason::GroupSnapshotNotSupported.into());
        v.message = Some(format!(
            "spec.volumes.groupSnapshot: {why}; set groupSnapshot: false to snapshot each claim on its own (consistent per volume only)"
        ));
    }
}

/// Every VolumeGroupSnapshotClass, or `None` when the API is not served.
async fn list_classes(ctx: &Context) -> Result<Option<Vec<VolumeGroupSnapshotClass>>, Error> {
    let api: Api<VolumeGroupSnapshotClass> = Api::all(ctx.client.clone());
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(Some(l.items)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("list VolumeGroupSnapshotClasses")(e)),
    }
}

/// Deterministic name of a group's VolumeGroupSnapshot (also its label value).
fn group_name(b: &Backup, g: &Group) -> String {
    child_name(
        &b.name_any(),
        &[
            &b.uid().unwrap_or_default(),
            &g.namespace,
            &g.driver,
            g.by.as_deref().unwrap_or(""),
        ],
    )
}

/// Puts the group label on a claim, or takes it off (`None`).
async fn label_claim(
    ctx: &Context,
    pvc: &NamespacedName,
    group: Option<&str>,
) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &pvc.namespace);
    let patch = serde_json::json!({"metadata": {"labels": {GROUP_LABEL: group}}});
    match api
        .patch(&pvc.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("label PersistentVolumeClaim")(e)),
    }
}

/// Takes the group label off every claim of the backup still waiting for its member (a
/// cancel, a deletion): a claim must not stay in a group that will never be cut.
pub(super) async fn unlabel_waiting(ctx: &Context, st: &BackupStatus) -> Result<(), Error> {
    for v in &st.volumes {
        if v.snapshot
            .as_ref()
            .is_some_and(|s| s.group.is_some() && s.name.is_empty())
        {
            label_claim(ctx, &v.pvc, None).await?;
        }
    }
    Ok(())
}

/// Finds the member VolumeSnapshot of a grouped claim (none yet: `Ok(None)`); a failed group
/// gives its error. Takes the group label off the claim once its member exists.
pub(super) async fn member(
    ctx: &Context,
    pvc: &NamespacedName,
    group: &str,
    timeout: std::time::Duration,
) -> Result<Result<Option<String>, String>, Error> {
    let groups: Api<VolumeGroupSnapshot> = Api::namespaced(ctx.client.clone(), &pvc.namespace);
    let Some(vgs) = groups
        .get_opt(group)
        .await
        .map_err(Error::kube("get VolumeGroupSnapshot"))?
    else {
        label_claim(ctx, pvc, None).await?;
        return Ok(Err(format!("VolumeGroupSnapshot {group} is gone")));
    };
    if let Some(e) = vgs
        .status
        .as_ref()
        .and_then(|s| s.error.as_ref())
        .and_then(|e| e.message.clone())
    {
        let ready = vgs.status.as_ref().and_then(|s| s.ready_to_use) == Some(true);
        if !ready {
            label_claim(ctx, pvc, None).await?;
            return Ok(Err(format!("VolumeGroupSnapshot {group}: {e}")));
        }
    }
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &pvc.namespace);
    let uid = vgs.uid().unwrap_or_default();
    let found = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list VolumeSnapshots"))?
        .items
        .into_iter()
        .find(|vs| {
            vs.owner_references()
                .iter()
                .any(|o| o.kind == "VolumeGroupSnapshot" && o.uid == uid)
                && vs.spec.source.persistent_volume_claim_name.as_deref() == Some(pvc.name.as_str())
        })
        .map(|vs| vs.name_any());
    if found.is_some() {
        label_claim(ctx, pvc, None).await?;
    } else {
        let age = vgs
            .creation_timestamp()
            .map(|t| {
                k8s_openapi::jiff::Timestamp::now()
                    .duration_since(t.0)
                    .unsigned_abs()
            })
            .unwrap_or_default();
        if age > timeout {
            label_claim(ctx, pvc, None).await?;
            return Ok(Err(format!(
                "VolumeGroupSnapshot {group} made no snapshot of claim {} within {timeout:?}",
                pvc.name
            )));
        }
    }
    Ok(Ok(found))
}

/// Deletes the backup's VolumeGroupSnapshots (their members go with them); how many groups and
/// members (named in the backup's status) still exist.
pub(super) async fn remove_groups(b: &Backup, ctx: &Context) -> Result<usize, Error> {
    let mut members = 0;
    let st = b.status.clone().unwrap_or_default();
    for v in &st.volumes {
        let Some(s) = v
            .snapshot
            .as_ref()
            .filter(|s| s.group.is_some() && !s.name.is_empty())
        else {
            continue;
        };
        let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &v.pvc.namespace);
        if api
            .get_opt(&s.name)
            .await
            .map_err(Error::kube("get VolumeSnapshot"))?
            .is_some()
        {
            members += 1;
        }
    }
    let api: Api<VolumeGroupSnapshot> = Api::all(ctx.client.clone());
    let lp = ListParams::default().labels(&super::uid_selector(b));
    let items = match api.list(&lp).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(members),
        Err(e) => return Err(Error::kube("list VolumeGroupSnapshots")(e)),
    };
    for g in items
        .iter()
        .filter(|g| g.metadata.deletion_timestamp.is_none())
    {
        let api: Api<VolumeGroupSnapshot> =
            Api::namespaced(ctx.client.clone(), &g.namespace().unwrap_or_default());
        crate::runtime::kube_ext::delete(
            &api,
            &g.name_any(),
            &kube::api::DeleteParams::default(),
            "delete VolumeGroupSnapshot",
        )
        .await?;
    }
    Ok(items.len() + members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(
        i: usize,
        ns: &str,
        driver: &str,
        app: Option<&str>,
    ) -> (usize, NamespacedName, String, BTreeMap<String, String>) {
        let labels = app
            .map(|a| BTreeMap::from([("app".to_string(), a.to_string())]))
            .unwrap_or_default();
        (
            i,
            NamespacedName {
                namespace: ns.into(),
                name: format!("c{i}"),
            },
            driver.into(),
            labels,
        )
    }

    #[test]
    fn claims_are_grouped_by_namespace_driver_and_label_value() {
        let c = [
            claim(0, "shop", "d1", Some("db")),
            claim(1, "shop", "d1", Some("db")),
            claim(2, "shop", "d2", Some("db")),
            claim(3, "bank", "d1", None),
            claim(4, "shop", "d1", Some("web")),
        ];
        let all = groups(&c, None);
        let members: Vec<Vec<usize>> = all.iter().map(|g| g.members.clone()).collect();
        assert_eq!(members, [vec![3], vec![0, 1, 4], vec![2]]);
        let by = groups(&c, Some("app"));
        let members: Vec<(Option<String>, Vec<usize>)> = by
            .iter()
            .map(|g| (g.by.clone(), g.members.clone()))
            .collect();
        assert_eq!(
            members,
            [
                (Some("db".to_string()), vec![0, 1]),
                (Some("web".to_string()), vec![4]),
                (Some("db".to_string()), vec![2]),
            ]
        );
    }

    #[test]
    fn an_unsupported_group_fails_its_claims_with_the_fix() {
        let mut st = BackupStatus {
            volumes: vec![Default::default(), Default::default()],
            ..Default::default()
        };
        let g = Group {
            namespace: "shop".into(),
            driver: "d".into(),
            by: None,
            members: vec![1],
        };
        refuse(&mut st, &g, "no class");
        assert_eq!(st.volumes[0].phase, VolumePhase::Pending);
        assert_eq!(st.volumes[1].phase, VolumePhase::Failed);
        assert_eq!(
            st.volumes[1].reason.as_deref(),
            Some("GroupSnapshotNotSupported")
        );
        assert!(
            st.volumes[1]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("groupSnapshot: false"))
        );
    }
}
