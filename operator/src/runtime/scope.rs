//! Which Backups and Restores this operator handles, when several Holdfast operators share
//! a cluster (design record 0005).
//!
//! - Objects in the operator's own namespace are always its own.
//! - Objects in another operator's namespace are never touched. An operator marks its
//!   namespace with a Lease named [`MARKER`] when it starts.
//! - Objects in other namespaces (tenants) are handled when the namespace is in
//!   `--watch-namespaces` (default: every namespace) and the object is not claimed by
//!   another operator. The first operator to take one up records its namespace in
//!   `status.operatorNamespace` with a write conditional on the object's resourceVersion, so
//!   of two operators racing for it exactly one wins. An object claimed by an operator whose
//!   marker is gone (uninstalled) may be taken over, so that its deletion is not stuck on a
//!   finalizer nobody removes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::{Context, Error};

/// Name of the Lease that marks a namespace as a Holdfast operator's namespace.
pub const MARKER: &str = "holdfast-operator";

/// How often an object claimed by another operator is looked at again (to take it over
/// once that operator is gone).
const RECHECK: Duration = Duration::from_secs(600);

/// Whether namespace `ns` is within `--watch-namespaces` (empty: every namespace) for an
/// operator in `own`. Pure.
pub fn watched(own: &str, watch: &[String], ns: &str) -> bool {
    ns == own || watch.is_empty() || watch.iter().any(|w| w == ns)
}

/// Parses `--watch-namespaces` (comma-separated, blanks ignored).
pub fn parse_watch(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// Creates the marker Lease in the operator's namespace (kept if it exists).
pub async fn mark_namespace(client: kube::Client, ns: &str, identity: &str) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(client, ns);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(MARKER.into()),
            labels: Some(
                [
                    ("app.kubernetes.io/name".to_string(), "holdfast".to_string()),
                    (
                        "app.kubernetes.io/component".to_string(),
                        "operator".to_string(),
                    ),
                ]
                .into(),
            ),
            annotations: Some(
                [(
                    "holdfast.dev/purpose".to_string(),
                    "marks this namespace as a Holdfast operator's; other Holdfast operators leave its Backups and Restores alone".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.into()),
            ..Default::default()
        }),
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => info!(namespace = %ns, "marked the operator namespace (Lease {MARKER})"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::kube("create operator marker Lease")(e)),
    }
    Ok(())
}

/// The Pod Security label that decides whether mover pods are admitted.
pub const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// What to do about the operator namespace's Pod Security label. Pure.
pub fn pod_security_decision(current: Option<&str>, wanted: &str) -> PodSecurity {
    match (current, wanted) {
        (_, "") => PodSecurity::Leave,
        (None, w) => PodSecurity::Set(w.to_string()),
        (Some("restricted"), _) => PodSecurity::Warn,
        (Some(_), _) => PodSecurity::Leave,
    }
}

/// See [`pod_security_decision`].
#[derive(Debug, PartialEq, Eq)]
pub enum PodSecurity {
    /// Label the namespace with this level.
    Set(String),
    /// The namespace is labelled `restricted`: mover pods will be rejected.
    Warn,
    Leave,
}

/// Labels the operator namespace with the Pod Security level mover pods need, when it has no
/// such label (`helm install --create-namespace` makes one without). Never fails start-up:
/// without the permission it logs what to do instead.
/// Label by which admission policies know an operator namespace (config/admission).
pub const OPERATOR_NAMESPACE_LABEL: &str = "holdfast.dev/operator-namespace";

/// Labels the operator's namespace [`OPERATOR_NAMESPACE_LABEL`]`=true`, so that the admission
/// policies of every Holdfast installation treat it as an administrator's namespace. A
/// failure is logged with the command that does it.
pub async fn label_operator_namespace(client: kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client);
    if let Ok(n) = api.get(ns).await
        && n.labels().get(OPERATOR_NAMESPACE_LABEL).map(String::as_str) == Some("true")
    {
        return;
    }
    let patch = serde_json::json!({"metadata": {"labels": {OPERATOR_NAMESPACE_LABEL: "true"}}});
    match api
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(namespace = %ns, "labelled the operator namespace {OPERATOR_NAMESPACE_LABEL}=true")
        }
        Err(e) => {
            warn!(namespace = %ns, error = %e, "cannot label the operator namespace; without the label the admission policies of another Holdfast installation refuse its administrator backups: kubectl label namespace {ns} {OPERATOR_NAMESPACE_LABEL}=true")
        }
    }
}

pub async fn label_pod_security(client: kube::Client, ns: &str, level: &str) {
    if level.is_empty() {
        return;
    }
    let api: Api<Namespace> = Api::all(client);
    let current = match api.get(ns).await {
        Ok(n) => n.labels().get(ENFORCE).cloned(),
        Err(e) => {
            warn!(namespace = %ns, error = %e, "cannot read the operator namespace to check its Pod Security label; label it yourself: kubectl label namespace {ns} {ENFORCE}={level}");
            return;
        }
    };
    match pod_security_decision(current.as_deref(), level) {
        PodSecurity::Set(l) => {
            let patch = serde_json::json!({"metadata": {"labels": {ENFORCE: l}}});
            match api
                .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(namespace = %ns, level = %l, "labelled the operator namespace for the Pod Security level of mover pods")
                }
                Err(e) => {
                    warn!(namespace = %ns, error = %e, "cannot label the operator namespace; mover pods need Pod Security {l}: kubectl label namespace {ns} {ENFORCE}={l}")
                }
            }
        }
        PodSecurity::Warn => {
            warn!(namespace = %ns, "the operator namespace enforces Pod Security restricted: mover pods (root, with DAC_OVERRIDE) will be rejected; label it {ENFORCE}={level}")
        }
        PodSecurity::Leave => {}
    }
}

async fn has_operator(ctx: &Context, ns: &str) -> Result<bool, Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(MARKER)
        .await
        .map_err(Error::kube("get operator marker Lease"))?
        .is_some())
}

/// Decides whether this operator handles `obj` (a Backup or Restore whose status records
/// `claimed`, the namespace of the operator that took it up). `Ok(None)`: go on, the object
/// is ours. `Ok(Some(action))`: return `action` from the reconcile (not ours, or just
/// claimed and to be looked at again).
pub async fn take_up<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    claimed: Option<&str>,
    manager: &str,
) -> Result<Option<Action>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let own = ctx.namespace.as_str();
    let ns = obj.namespace().unwrap_or_default();
    if claimed == Some(own) {
        return Ok(None);
    }
    if ns != own {
        if !watched(own, &ctx.watch_namespaces, &ns) {
            debug!(namespace = %ns, name = %obj.name_any(), "outside --watch-namespaces");
            return Ok(Some(Action::await_change()));
        }
        match claimed {
            Some(other) if has_operator(ctx, other).await? => {
                debug!(namespace = %ns, name = %obj.name_any(), operator = %other, "handled by another operator");
                return Ok(Some(Action::requeue(RECHECK)));
            }
            Some(other) => {
                info!(namespace = %ns, name = %obj.name_any(), operator = %other, "the operator that handled this is gone; taking it over");
            }
            None if has_operator(ctx, &ns).await? => {
                debug!(namespace = %ns, name = %obj.name_any(), "in another operator's namespace");
                return Ok(Some(Action::await_change()));
            }
            None => {}
        }
    }
    // Claim it, conditional on the version we looked at: of two operators racing, the
    // second gets a conflict and sees the first one's claim on its next look.
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": obj.resource_version()},
        "status": {"operatorNamespace": own},
    });
    match api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(Some(Action::requeue(Duration::ZERO))),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Some(Action::requeue(Duration::from_secs(1))))
        }
        Err(e) => Err(Error::kube("claim (status.operatorNamespace)")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_security_label_is_set_only_when_absent() {
        assert_eq!(
            pod_security_decision(None, "baseline"),
            PodSecurity::Set("baseline".into())
        );
        assert_eq!(
            pod_security_decision(Some("privileged"), "baseline"),
            PodSecurity::Leave
        );
        assert_eq!(
            pod_security_decision(Some("baseline"), "baseline"),
            PodSecurity::Leave
        );
        assert_eq!(
            pod_security_decision(Some("restricted"), "baseline"),
            PodSecurity::Warn
        );
        assert_eq!(pod_security_decision(None, ""), PodSecurity::Leave);
    }

    #[test]
    fn own_namespace_is_always_watched() {
        let w = parse_watch("team-a, team-b,,");
        assert_eq!(w, ["team-a", "team-b"]);
        assert!(watched("holdfast-system", &w, "holdfast-system"));
        assert!(watched("holdfast-system", &w, "team-b"));
        assert!(!watched("holdfast-system", &w, "team-c"));
        assert!(watched("holdfast-system", &[], "team-c"));
        assert!(parse_watch(" ").is_empty());
    }
}
