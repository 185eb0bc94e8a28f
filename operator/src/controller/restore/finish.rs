//! Restore phases around the volumes: the namespaces first, every other object last, and the
//! result.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::reasons::RestoreReason;
use holdfast_api::restore::{
    ExistingResourcePolicy, ObjectsResult, Restore, RestorePhase, RestoreStatus, RestoredVolume,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::source::Source;
use super::{BACKUP_LABEL, RESTORE_LABEL};
use crate::objects::{self, RestoreReport};
use crate::runtime::kube_ext::create_or_adopt;
use crate::runtime::{Context, Error, restorer};

fn labels(r: &Restore, src: &Source) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RESTORE_LABEL.to_string(), r.name_any()),
        (BACKUP_LABEL.to_string(), src.backup.name_any()),
    ])
}

/// Namespaces first (existing ones are left as they are); administrators' restores only. A
/// target namespace of a volume that the selection left out (say `includedResources:
/// [persistentvolumeclaims]`) is made too, bare, so that its claims have somewhere to go.
pub(super) async fn restore_namespaces(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    st: &RestoreStatus,
) -> Result<(), Error> {
    if r.namespace().as_deref() != Some(ctx.namespace.as_str()) {
        return Ok(());
    }
    let request = objects::RestoreRequest {
        archive: &src.archive,
        selection: &r.spec.selection,
        namespace_mapping: &src.mapping,
        existing: ExistingResourcePolicy::None,
        include_kinds: Some(&["namespaces"]),
        exclude_kinds: &[],
        labels: labels(r, src),
        hooks: &[],
        namespaced_only: false,
        writer: Some(&ctx.restorers.cluster),
        refused_hint: restorer::CLUSTER_HINT,
    };
    objects::restore(&ctx.client, request)
        .await
        .map_err(|source| Error::Objects {
            what: "restoring namespaces",
            source,
        })?;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let mut targets: Vec<&str> = st
        .volumes
        .iter()
        .map(|v| v.target.namespace.as_str())
        .collect();
    targets.sort();
    targets.dedup();
    for ns in targets {
        if api
            .get_opt(ns)
            .await
            .map_err(Error::kube("get Namespace"))?
            .is_none()
        {
            let bare = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_string()),
                    labels: Some(labels(r, src)),
                    ..Default::default()
                },
                ..Default::default()
            };
            create_or_adopt(&api, &bare, "create Namespace").await?;
        }
    }
    Ok(())
}

/// Every other object, once the volumes are final (once: the result is kept in status while
/// restore hooks run); then the hooks; then the result.
pub(super) async fn restore_objects(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    st: &mut RestoreStatus,
) -> Result<Action, Error> {
    if st.objects_result.is_none() {
        return objects_once(r, ctx, src, st).await;
    }
    if let Some(wait) = super::hooks::advance(r, ctx, src, st).await? {
        return Ok(Action::requeue(wait));
    }
    let Some(mut result) = st.objects_result.take() else {
        return Ok(Action::requeue(Duration::ZERO));
    };
    if let Some(why) = super::hooks::fatal_failure(st) {
        if result.phase == RestorePhase::Completed {
            result.phase = RestorePhase::PartiallyFailed;
            result.reason = Some(RestoreReason::HookFailed.into());
        }
        let m = result
            .message
            .take()
            .map(|m| format!("{m}. "))
            .unwrap_or_default();
        result.message = Some(format!("{m}a restore hook failed: {why}"));
    }
    let phase = result.phase;
    st.phase = Some(phase);
    st.reason = result.reason;
    st.message = result.message;
    st.completion_time = Some(Time(Timestamp::now()));
    let restored = st.items_restored.unwrap_or(0);
    info!(restore = %r.name_any(), phase = ?phase, items = restored, "restore finished");
    ctx.metrics.finished(
        "restore",
        &format!("{phase:?}"),
        st.start_time.as_ref().map(|t| t.0),
    );
    let note = st.message.clone().unwrap_or_else(|| {
        format!(
            "{} volumes and {restored} objects restored",
            st.volumes.len()
        )
    });
    let type_ = if phase == RestorePhase::Completed {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.event(r, type_, &format!("{phase:?}"), &note, "Restore")
        .await;
    Ok(Action::requeue(Duration::ZERO))
}

/// Restores the objects and keeps their result in `status.objectsResult`.
async fn objects_once(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    st: &mut RestoreStatus,
) -> Result<Action, Error> {
    let rules = r
        .spec
        .hooks
        .as_ref()
        .map(|h| h.rules.as_slice())
        .unwrap_or_default();
    let tenant = r.namespace().as_deref() != Some(ctx.namespace.as_str());
    if tenant && let Err(why) = restorer::grant(ctx, r).await? {
        st.reason = Some(RestoreReason::ObjectRestoreFailed.into());
        st.message = Some(why);
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let (writer, refused_hint) = if tenant {
        (&ctx.restorers.tenant, restorer::TENANT_HINT)
    } else {
        (&ctx.restorers.cluster, restorer::CLUSTER_HINT)
    };
    let request = objects::RestoreRequest {
        archive: &src.archive,
        selection: &r.spec.selection,
        namespace_mapping: &src.mapping,
        existing: r.spec.existing_resource_policy,
        include_kinds: None,
        exclude_kinds: &["persistentvolumeclaims", "persistentvolumes"],
        labels: labels(r, src),
        hooks: rules,
        namespaced_only: tenant,
        writer: Some(writer),
        refused_hint,
    };
    let result = objects::restore(&ctx.client, request).await;
    if tenant {
        restorer::revoke(ctx, r).await?;
    }
    let report = match result {
        Ok(rep) => rep,
        Err(e) => {
            st.reason = Some(RestoreReason::ObjectRestoreFailed.into());
            st.message = Some(e.to_string());
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    st.items_restored = Some(report.restored);
    st.warnings = Some(report.warnings.len() as u32);
    st.hook_pods_expected = Some(report.hook_pods_expected);
    st.hooks_started = Some(Time(Timestamp::now()));
    let (phase, reason, message) = outcome(&st.volumes, &report);
    st.objects_result = Some(ObjectsResult {
        phase,
        reason: reason.map(Into::into),
        message,
    });
    if report.hook_pods_expected > 0 {
        st.reason = Some("RunningHooks".into());
        st.message = Some(format!(
            "waiting for {} restored pods to be Ready to run their restore hooks",
            report.hook_pods_expected
        ));
    }
    Ok(Action::requeue(Duration::ZERO))
}

/// The result of a restore from its volumes and the object report. Pure.
pub(super) fn outcome(
    volumes: &[RestoredVolume],
    report: &RestoreReport,
) -> (RestorePhase, Option<RestoreReason>, Option<String>) {
    let failed_vols: Vec<String> = volumes
        .iter()
        .filter(|v| v.phase != TransferPhase::Completed)
        .map(|v| format!("{} ({})", v.target, v.reason.as_deref().unwrap_or("failed")))
        .collect();
    let (phase, reason) = if failed_vols.is_empty() && report.failed.is_empty() {
        (RestorePhase::Completed, None)
    } else if !volumes.is_empty()
        && volumes.iter().all(|v| v.phase != TransferPhase::Completed)
        && report.restored == 0
    {
        (RestorePhase::Failed, Some(RestoreReason::NothingRestored))
    } else if failed_vols.is_empty() {
        (
            RestorePhase::PartiallyFailed,
            Some(RestoreReason::ObjectsFailed),
        )
    } else {
        (
            RestorePhase::PartiallyFailed,
            Some(RestoreReason::VolumesFailed),
        )
    };
    let mut msg = Vec::new();
    if !failed_vols.is_empty() {
        msg.push(format!("volumes not restored: {}", failed_vols.join(", ")));
    }
    if !report.failed.is_empty() {
        msg.push(format!(
            "objects not restored: {}",
            report.failed.join("; ")
        ));
    }
    if !report.warnings.is_empty() {
        let some: Vec<String> = report.warnings.iter().take(5).cloned().collect();
        msg.push(format!(
            "{} warnings: {}",
            report.warnings.len(),
            some.join("; ")
        ));
    }
    let message = (!msg.is_empty()).then(|| msg.join(". ").chars().take(4000).collect());
    (phase, reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(phase: TransferPhase) -> RestoredVolume {
        RestoredVolume {
            phase,
            reason: (phase != TransferPhase::Completed).then(|| "PVCExists".into()),
            ..Default::default()
        }
    }

    #[test]
    fn restore_outcomes() {
        let ok = RestoreReport {
            restored: 3,
            ..Default::default()
        };
        assert_eq!(
            outcome(&[vol(TransferPhase::Completed)], &ok).0,
            RestorePhase::Completed
        );
        let (p, r, m) = outcome(
            &[vol(TransferPhase::Completed), vol(TransferPhase::Failed)],
            &ok,
        );
        assert_eq!(
            (p, r),
            (
                RestorePhase::PartiallyFailed,
                Some(RestoreReason::VolumesFailed)
            )
        );
        assert!(m.expect("message").contains("(PVCExists)"));
        let none = RestoreReport::default();
        assert_eq!(
            outcome(&[vol(TransferPhase::Failed)], &none).0,
            RestorePhase::Failed
        );
        let objects_failed = RestoreReport {
            restored: 1,
            failed: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(
            outcome(&[], &objects_failed).1,
            Some(RestoreReason::ObjectsFailed)
        );
    }
}
