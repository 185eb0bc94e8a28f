//! Backup hooks around the snapshots: which pods have hooks (found once, at capture), their
//! pre hooks right before their claims are snapshotted, their post hooks as soon as those
//! snapshots are cut. Where each pod stands is in `status.hookedPods`, so a restarted operator
//! still runs the post hooks of a pod it froze; a pod is never left frozen by a failed pre
//! hook, a failed snapshot, a cancel or a deletion.
//!
//! Pre hooks run at least once: when the operator dies while a pre hook runs (before the status
//! says so), the next operator runs them again, then the post hooks.

use std::collections::BTreeSet;

use futures::future::join_all;
use holdfast_api::backup::{
    Backup, BackupStatus, Consistency, HookStage, HookStatus, HookedPod, VolumePhase, VolumeStatus,
};
use holdfast_api::common::NamespacedName;
use holdfast_api::hooks::HookErrorMode;
use holdfast_api::reasons::VolumeReason;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::publish;
use crate::hooks::{self, Planned, Stage};
use crate::objects::select::LabelFilter;
use crate::runtime::{Context, Error};

/// Finds the running pods of the backup's namespaces that have hooks, with the backup's claims
/// each mounts. Pods that mount none of the claims count when the backup's selection selects
/// them (its label selector, or all pods).
pub(super) async fn plan(b: &Backup, ctx: &Context, st: &mut BackupStatus) -> Result<(), Error> {
    let rules = b
        .spec
        .hooks
        .as_ref()
        .map(|h| h.rules.as_slice())
        .unwrap_or_default();
    let filter = LabelFilter::new(&b.spec.selection).ok();
    let mut planned = Vec::new();
    for ns in &st.namespaces {
        let claims: BTreeSet<&str> = st
            .volumes
            .iter()
            .filter(|v| &v.pvc.namespace == ns)
            .map(|v| v.pvc.name.as_str())
            .collect();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list Pods"))?;
        for pod in pods.items {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if !running || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let mounted: Vec<String> = claims_of(&pod)
                .into_iter()
                .filter(|c| claims.contains(c.as_str()))
                .collect();
            let selected = filter
                .as_ref()
                .is_none_or(|f| f.matches(Some(pod.labels())));
            if mounted.is_empty() && !selected {
                continue;
            }
            let has_hooks = !hooks::backup_hooks(rules, &pod, Stage::Pre).is_empty()
                || !hooks::backup_hooks(rules, &pod, Stage::Post).is_empty();
            if has_hooks {
                planned.push(HookedPod {
                    pod: NamespacedName {
                        namespace: ns.clone(),
                        name: pod.name_any(),
                    },
                    claims: mounted,
                    stage: HookStage::Pending,
                    pre_failed: false,
                });
            }
        }
    }
    if !planned.is_empty() {
        info!(backup = %b.name_any(), pods = planned.len(), "pods with hooks found");
    }
    st.hooked_pods = planned;
    Ok(())
}

/// Claim names a pod mounts. Pure.
fn claims_of(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

/// Runs the pre hooks of every pod not yet frozen, all pods at once (each pod's hooks in
/// order). A pod whose pre hook fails with `onError: Fail` stops there, and its claims that
/// were not snapshotted yet fail with `HookFailed`. Its post hooks still run.
pub(super) async fn run_pre(b: &Backup, ctx: &Context, st: &mut BackupStatus) {
    let pending: Vec<usize> = (0..st.hooked_pods.len())
        .filter(|&i| st.hooked_pods[i].stage == HookStage::Pending)
        .collect();
    if pending.is_empty() {
        return;
    }
    let runs = pending
        .iter()
        .map(|&i| run_stage(b, ctx, &st.hooked_pods[i].pod, Stage::Pre));
    let results = join_all(runs).await;
    for (i, ran) in pending.into_iter().zip(results) {
        let fatal = ran
            .iter()
            .find(|r| !r.succeeded && r.on_error == HookErrorMode::Fail)
            .and_then(|r| r.message.clone());
        let failed = ran.iter().any(|r| !r.succeeded);
        record(st, ran);
        let hp = &mut st.hooked_pods[i];
        hp.stage = HookStage::Frozen;
        hp.pre_failed = failed;
        if let Some(why) = fatal {
            let claims = hp.claims.clone();
            let ns = hp.pod.namespace.clone();
            for v in st
                .volumes
                .iter_mut()
                .filter(|v| v.pvc.namespace == ns && claims.contains(&v.pvc.name))
            {
                if v.phase == VolumePhase::Pending {
                    v.phase = VolumePhase::Failed;
                    v.reason = Some(VolumeReason::HookFailed.into());
                    v.message = Some(format!("not snapshotted: {why}"));
                }
            }
        }
    }
}

/// Runs the post hooks of frozen pods whose claims' snapshots are all cut (or failed); with
/// `all`, of every frozen pod (a cancel or deletion thaws everything).
pub(super) async fn run_post(b: &Backup, ctx: &Context, st: &mut BackupStatus, all: bool) {
    let ready: Vec<usize> = (0..st.hooked_pods.len())
        .filter(|&i| {
            let hp = &st.hooked_pods[i];
            hp.stage == HookStage::Frozen && (all || claims_cut(hp, &st.volumes))
        })
        .collect();
    if ready.is_empty() {
        return;
    }
    let runs = ready
        .iter()
        .map(|&i| run_stage(b, ctx, &st.hooked_pods[i].pod, Stage::Post));
    let results = join_all(runs).await;
    for (i, ran) in ready.into_iter().zip(results) {
        record(st, ran);
        st.hooked_pods[i].stage = HookStage::Done;
    }
}

/// Whether every claim of a pod has been snapshotted (the snapshot is cut) or will not be.
/// Pure.
pub(super) fn claims_cut(hp: &HookedPod, volumes: &[VolumeStatus]) -> bool {
    volumes
        .iter()
        .filter(|v| v.pvc.namespace == hp.pod.namespace && hp.claims.contains(&v.pvc.name))
        .all(volume_cut)
}

fn volume_cut(v: &VolumeStatus) -> bool {
    match v.phase {
        VolumePhase::Pending => false,
        VolumePhase::Snapshotting => v
            .snapshot
            .as_ref()
            .is_some_and(|s| s.creation_time.is_some() || s.ready_to_use),
        _ => true,
    }
}

/// A claim's snapshot is application-consistent when every pod with hooks that mounts it ran
/// its pre hooks without failure before the cut. Pure.
pub(super) fn mark_consistency(st: &mut BackupStatus) {
    for v in &mut st.volumes {
        if v.consistency != Some(Consistency::CrashConsistent) {
            continue;
        }
        let mut pods = st
            .hooked_pods
            .iter()
            .filter(|hp| hp.pod.namespace == v.pvc.namespace && hp.claims.contains(&v.pvc.name))
            .peekable();
        if pods.peek().is_some() && pods.all(|hp| hp.stage != HookStage::Pending && !hp.pre_failed)
        {
            v.consistency = Some(Consistency::ApplicationConsistent);
        }
    }
}

/// Whether any pod still waits for its pre hooks (its claims must not be snapshotted yet).
pub(super) fn waits_for_pre(st: &BackupStatus, v: &VolumeStatus) -> bool {
    st.hooked_pods.iter().any(|hp| {
        hp.stage == HookStage::Pending
            && hp.pod.namespace == v.pvc.namespace
            && hp.claims.contains(&v.pvc.name)
    })
}

/// The first hook failure with `onError: Fail`, for the backup's result. Pure.
pub(super) fn fatal_failure(st: &BackupStatus) -> Option<String> {
    st.hooks
        .iter()
        .find(|h| !h.succeeded && h.on_error == HookErrorMode::Fail)
        .map(|h| h.message.clone().unwrap_or_default())
}

/// Runs one stage's hooks of one pod, in order; a pre hook failing with `Fail` stops the rest.
async fn run_stage(
    b: &Backup,
    ctx: &Context,
    pod: &NamespacedName,
    stage: Stage,
) -> Vec<HookStatus> {
    let rules = b
        .spec
        .hooks
        .as_ref()
        .map(|h| h.rules.as_slice())
        .unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace);
    let current = match api.get_opt(&pod.name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return vec![gone(pod, stage, "the pod no longer exists")];
        }
        Err(e) => return vec![gone(pod, stage, &format!("reading the pod: {e}"))],
    };
    let planned = hooks::backup_hooks(rules, &current, stage);
    let mut out = Vec::new();
    for p in &planned {
        let outcome = hooks::run(&ctx.client, ctx.hooks_enabled, &current, p).await;
        let status = hooks::entry(pod, p, &outcome);
        announce(b, ctx, pod, p, &status).await;
        let stop = stage == Stage::Pre && !status.succeeded && p.on_error == HookErrorMode::Fail;
        out.push(status);
        if stop {
            break;
        }
    }
    out
}

/// A pod that is gone cannot run its hooks: one failed entry says so (`Continue`: a pod
/// gone after its snapshot does not fail the backup; a pod gone before has no volume left
/// to protect).
fn gone(pod: &NamespacedName, stage: Stage, why: &str) -> HookStatus {
    HookStatus {
        rule: String::new(),
        stage: stage.as_str().into(),
        pod: pod.clone(),
        container: String::new(),
        succeeded: false,
        exit_code: None,
        message: Some(format!(
            "{} hooks of pod {} not run: {why}",
            stage.as_str(),
            pod.name
        )),
        on_error: HookErrorMode::Continue,
        finished_at: Some(Time(Timestamp::now())),
    }
}

async fn announce(b: &Backup, ctx: &Context, pod: &NamespacedName, p: &Planned, s: &HookStatus) {
    let (type_, reason, note) = if s.succeeded {
        (
            EventType::Normal,
            "HookSucceeded",
            format!(
                "{} hook {} ran in pod {}, container {}",
                p.stage.as_str(),
                p.rule,
                pod.name,
                p.container
            ),
        )
    } else {
        (
            EventType::Warning,
            "HookFailed",
            s.message.clone().unwrap_or_default(),
        )
    };
    publish(ctx, b, type_, reason, &note).await;
}

fn record(st: &mut BackupStatus, ran: Vec<HookStatus>) {
    hooks::record(
        &mut st.hooks,
        &mut st.hooks_attempted,
        &mut st.hooks_failed,
        ran,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::backup::SnapshotStatus;

    fn vol(name: &str, phase: VolumePhase) -> VolumeStatus {
        VolumeStatus {
            pvc: NamespacedName {
                namespace: "shop".into(),
                name: name.into(),
            },
            phase,
            ..Default::default()
        }
    }

    fn pod(claims: &[&str], stage: HookStage) -> HookedPod {
        HookedPod {
            pod: NamespacedName {
                namespace: "shop".into(),
                name: "db-0".into(),
            },
            claims: claims.iter().map(|c| c.to_string()).collect(),
            stage,
            pre_failed: false,
        }
    }

    #[test]
    fn post_hooks_wait_until_every_claim_is_cut() {
        let hp = pod(&["a", "b"], HookStage::Frozen);
        let mut a = vol("a", VolumePhase::Snapshotting);
        a.snapshot = Some(SnapshotStatus::default());
        let b = vol("b", VolumePhase::Failed);
        let other = vol("c", VolumePhase::Pending);
        assert!(!claims_cut(&hp, &[a.clone(), b.clone(), other.clone()]));
        a.snapshot.as_mut().expect("s").creation_time = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(claims_cut(&hp, &[a.clone(), b, other]));
        assert!(claims_cut(&pod(&[], HookStage::Frozen), &[a]));
        assert!(!claims_cut(&hp, &[vol("a", VolumePhase::Pending)]));
    }

    #[test]
    fn only_claims_behind_successful_pre_hooks_are_application_consistent() {
        let mut a = vol("a", VolumePhase::Snapshotting);
        a.consistency = Some(Consistency::CrashConsistent);
        let b = VolumeStatus {
            pvc: NamespacedName {
                namespace: "shop".into(),
                name: "b".into(),
            },
            ..a.clone()
        };
        let mut st = BackupStatus {
            volumes: vec![a, b],
            hooked_pods: vec![pod(&["a"], HookStage::Done)],
            ..Default::default()
        };
        mark_consistency(&mut st);
        assert_eq!(
            st.volumes[0].consistency,
            Some(Consistency::ApplicationConsistent)
        );
        assert_eq!(
            st.volumes[1].consistency,
            Some(Consistency::CrashConsistent)
        );
        st.volumes[0].consistency = Some(Consistency::CrashConsistent);
        st.hooked_pods[0].pre_failed = true;
        mark_consistency(&mut st);
        assert_eq!(
            st.volumes[0].consistency,
            Some(Consistency::CrashConsistent)
        );
        assert!(!waits_for_pre(&st, &st.volumes[0]));
        st.hooked_pods[0].stage = HookStage::Pending;
        assert!(waits_for_pre(&st, &st.volumes[0]));
    }

    #[test]
    fn the_status_keeps_failures_when_it_cuts_the_list() {
        let ok = HookStatus {
            succeeded: true,
            ..Default::default()
        };
        let bad = HookStatus {
            message: Some("boom".into()),
            ..Default::default()
        };
        let mut st = BackupStatus::default();
        record(&mut st, vec![ok.clone(); 150]);
        record(&mut st, vec![bad.clone()]);
        assert_eq!(st.hooks.len(), hooks::STATUS_LIMIT);
        assert_eq!(st.hooks_attempted, Some(151));
        assert_eq!(st.hooks_failed, Some(1));
        assert!(!st.hooks[0].succeeded);
        assert_eq!(fatal_failure(&st).as_deref(), Some("boom"));
        st.hooks[0].on_error = HookErrorMode::Continue;
        assert_eq!(fatal_failure(&st), None);
    }
}
