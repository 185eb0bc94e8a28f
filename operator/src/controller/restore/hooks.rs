//! Restore hooks after the objects: `postExec` commands run in restored pods once they are
//! Ready (their init containers were added when the objects were restored). Pods made by
//! restored workloads appear over time, so the phase waits until as many pods as the restored
//! objects make ran their hooks, each pod for at most its hook's `waitTimeout`.

use std::time::Duration;

use futures::future::join_all;
use holdfast_api::backup::HookStatus;
use holdfast_api::common::NamespacedName;
use holdfast_api::hooks::HookErrorMode;
use holdfast_api::restore::{Restore, RestoreStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;

use super::source::Source;
use crate::hooks::{self, Planned};
use crate::objects::sanitize::map_namespace;
use crate::runtime::{Context, Error};

const POLL: Duration = Duration::from_secs(2);

/// One pass: runs the hooks of restored pods that are Ready; `Some(wait)` while pods are
/// still expected.
pub(super) async fn advance(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    st: &mut RestoreStatus,
) -> Result<Option<Duration>, Error> {
    let expected = st.hook_pods_expected.unwrap_or(0);
    if expected == 0 {
        return Ok(None);
    }
    let rules = r
        .spec
        .hooks
        .as_ref()
        .map(|h| h.rules.as_slice())
        .unwrap_or_default();
    let since = st.start_time.as_ref().map(|t| t.0);
    let started = st
        .hooks_started
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let now = Timestamp::now();
    let mut candidates: Vec<(Pod, Vec<Planned>)> = Vec::new();
    let mut longest_wait = hooks::DEFAULT_WAIT_TIMEOUT;
    for ns in target_namespaces(src) {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pods = api
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list Pods"))?;
        for pod in pods.items {
            let id = NamespacedName {
                namespace: ns.clone(),
                name: pod.name_any(),
            };
            let created = pod.creation_timestamp().map(|t| t.0);
            let new = match (created, since) {
                (Some(c), Some(s)) => c >= s,
                _ => false,
            };
            if !new || st.hooked_pods.contains(&id) {
                continue;
            }
            let planned = hooks::restore_hooks(rules, &pod);
            if planned.is_empty() {
                continue;
            }
            longest_wait = longest_wait.max(planned[0].wait_timeout);
            candidates.push((pod, planned));
        }
    }
    let mut runs = Vec::new();
    for (pod, planned) in candidates {
        let id = NamespacedName {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
        };
        if is_ready(&pod) {
            st.hooked_pods.push(id);
            runs.push(run_pod(r, ctx, pod, planned));
            continue;
        }
        let wait = planned[0].wait_timeout;
        let age = pod
            .creation_timestamp()
            .map(|t| now.duration_since(t.0).unsigned_abs())
            .unwrap_or_default();
        if age > wait {
            st.hooked_pods.push(id.clone());
            let s = not_ready(&id, &planned[0], wait);
            announce(r, ctx, &s).await;
            record(st, vec![s]);
        }
    }
    for ran in join_all(runs).await {
        record(st, ran);
    }
    let done = st.hooked_pods.len() as u32;
    if done >= expected {
        return Ok(None);
    }
    let waited = now.duration_since(started).unsigned_abs();
    if waited > longest_wait + POLL {
        let s = HookStatus {
            rule: String::new(),
            stage: hooks::Stage::Restore.as_str().into(),
            pod: NamespacedName::default(),
            container: String::new(),
            succeeded: false,
            exit_code: None,
            message: Some(format!(
                "the restored objects make {expected} pods with restore hooks, but only {done} appeared within {}s; the others' hooks did not run",
                longest_wait.as_secs()
            )),
            on_error: HookErrorMode::Fail,
            finished_at: Some(Time(now)),
        };
        announce(r, ctx, &s).await;
        record(st, vec![s]);
        return Ok(None);
    }
    Ok(Some(POLL))
}

/// Namespaces the restored pods are in. Pure.
fn target_namespaces(src: &Source) -> Vec<String> {
    let mut out: Vec<String> = src
        .backup
        .status
        .iter()
        .flat_map(|s| &s.namespaces)
        .map(|ns| map_namespace(ns, &src.mapping).to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Runs a restored pod's hooks in order; a hook failing with `Fail` stops the rest.
async fn run_pod(r: &Restore, ctx: &Context, pod: Pod, planned: Vec<Planned>) -> Vec<HookStatus> {
    let id = NamespacedName {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
    };
    let mut out = Vec::new();
    for p in &planned {
        let outcome = hooks::run(&ctx.client, ctx.hooks_enabled, &pod, p).await;
        let s = hooks::entry(&id, p, &outcome);
        announce(r, ctx, &s).await;
        let stop = !s.succeeded && p.on_error == HookErrorMode::Fail;
        out.push(s);
        if stop {
            break;
        }
    }
    out
}

fn not_ready(id: &NamespacedName, p: &Planned, wait: Duration) -> HookStatus {
    HookStatus {
        rule: p.rule.clone(),
        stage: p.stage.as_str().into(),
        pod: id.clone(),
        container: p.container.clone(),
        succeeded: false,
        exit_code: None,
        message: Some(format!(
            "restored pod {} was not Ready within the hook's waitTimeout of {}s; its restore hooks did not run",
            id.name,
            wait.as_secs()
        )),
        on_error: p.on_error,
        finished_at: Some(Time(Timestamp::now())),
    }
}

async fn announce(r: &Restore, ctx: &Context, s: &HookStatus) {
    let (type_, reason, note) = if s.succeeded {
        (
            EventType::Normal,
            "HookSucceeded",
            format!(
                "restore hook {} ran in pod {}, container {}",
                s.rule, s.pod.name, s.container
            ),
        )
    } else {
        (
            EventType::Warning,
            "HookFailed",
            s.message.clone().unwrap_or_default(),
        )
    };
    ctx.event(r, type_, reason, &note, "Restore").await;
}

fn record(st: &mut RestoreStatus, ran: Vec<HookStatus>) {
    hooks::record(
        &mut st.hooks,
        &mut st.hooks_attempted,
        &mut st.hooks_failed,
        ran,
    );
}

/// The first restore hook failure with `onError: Fail`. Pure.
pub(super) fn fatal_failure(st: &RestoreStatus) -> Option<String> {
    st.hooks
        .iter()
        .find(|h| !h.succeeded && h.on_error == HookErrorMode::Fail)
        .map(|h| h.message.clone().unwrap_or_default())
}
