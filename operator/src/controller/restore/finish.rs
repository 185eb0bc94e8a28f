//! Restore phases around the volumes: the namespaces first, every other object last, and the
//! result.

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast_api::backup::TransferPhase;
use holdfast_api::reasons::RestoreReason;
use holdfast_api::restore::{
    ExistingResourcePolicy, Restore, RestorePhase, RestoreStatus, RestoredVolume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::source::Source;
use super::{BACKUP_LABEL, RESTORE_LABEL};
use crate::objects::{self, RestoreReport};
use crate::runtime::{Context, Error};

fn labels(r: &Restore, src: &Source) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RESTORE_LABEL.to_string(), r.name_any()),
        (BACKUP_LABEL.to_string(), src.backup.name_any()),
    ])
}

/// Namespaces first (existing ones are left as they are); administrators' restores only.
pub(super) async fn restore_namespaces(
    r: &Restore,
    ctx: &Context,
    src: &Source,
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
    };
    objects::restore(&ctx.client, request)
        .await
        .map(|_| ())
        .map_err(|source| Error::Objects {
            what: "restoring namespaces",
            source,
        })
}

/// Every other object, once the volumes are final; then the result.
pub(super) async fn restore_objects(
    r: &Restore,
    ctx: &Context,
    src: &Source,
    st: &mut RestoreStatus,
) -> Result<Action, Error> {
    let request = objects::RestoreRequest {
        archive: &src.archive,
        selection: &r.spec.selection,
        namespace_mapping: &src.mapping,
        existing: r.spec.existing_resource_policy,
        include_kinds: None,
        exclude_kinds: &["persistentvolumeclaims", "persistentvolumes"],
        labels: labels(r, src),
    };
    let mut report = match objects::restore(&ctx.client, request).await {
        Ok(rep) => rep,
        Err(e) => {
            st.reason = Some(RestoreReason::ObjectRestoreFailed.into());
            st.message = Some(e.to_string());
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    st.items_restored = Some(report.restored);
    if r.spec.hooks.as_ref().is_some_and(|h| !h.rules.is_empty()) {
        // Restore hooks are not implemented yet: say so rather than pretend they ran.
        let note =
            "spec.hooks is not implemented yet: no restore hook (init container or exec) was run";
        report.warnings.insert(0, note.into());
        ctx.event(
            r,
            EventType::Warning,
            RestoreReason::HooksNotRun.as_str(),
            "spec.hooks is not implemented yet: no restore hook was run",
            "Restore",
        )
        .await;
    }
    st.warnings = Some(report.warnings.len() as u32);
    let (phase, reason, message) = outcome(&st.volumes, &report);
    st.phase = Some(phase);
    st.reason = reason.map(Into::into);
    st.message = message;
    st.completion_time = Some(Time(Timestamp::now()));
    info!(restore = %r.name_any(), phase = ?phase, items = report.restored, "restore finished");
    ctx.metrics.finished(
        "restore",
        &format!("{phase:?}"),
        st.start_time.as_ref().map(|t| t.0),
    );
    let note = st.message.clone().unwrap_or_else(|| {
        format!(
            "{} volumes and {} objects restored",
            st.volumes.len(),
            report.restored
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
