//! Turning a captured object into the object to create: server-owned metadata and status
//! removed, cluster-assigned values dropped, GitOps ownership marks removed, namespaces
//! mapped, restore labels added. And the order in which objects are restored. Pure.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::{Map, Value};

use super::ObjectsError;
use super::archive::Item;
use super::select::ResourceType;

/// Metadata the API server owns or that ties an object to its old incarnation.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "ownerReferences",
    "finalizers",
];

/// Label and annotation prefixes by which GitOps controllers recognise objects they manage.
const GITOPS_PREFIXES: &[&str] = &[
    "argocd.argoproj.io/",
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
];

/// Whether a label or annotation key marks GitOps ownership (Argo CD's tracking annotations
/// and `argocd.argoproj.io/instance` label, Flux's kustomize and helm controller labels).
pub fn is_gitops_key(key: &str) -> bool {
    GITOPS_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Labels the API server or controllers assign on a Job's selector and pod template when the
/// selector is generated; a restored Job must not carry the old ones.
const JOB_GENERATED_LABELS: &[&str] = &[
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

/// The object to create for `item`: see the module documentation for what is changed.
pub fn prepare(
    item: &Item,
    namespace_mapping: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<DynamicObject, ObjectsError> {
    let mut v = serde_json::to_value(&item.object).map_err(|e| ObjectsError::Archive {
        what: format!("encoding {}", item.describe()),
        cause: e.to_string(),
    })?;
    let rt = &item.resource;
    let source_ns = item.namespace().map(str::to_string);
    let target_ns = source_ns
        .as_deref()
        .map(|ns| map_namespace(ns, namespace_mapping).to_string());
    let moved = source_ns != target_ns;
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if !o.contains_key("apiVersion") || !o.contains_key("kind") {
            o.insert("apiVersion".into(), Value::String(rt.api_version()));
            o.insert("kind".into(), Value::String(rt.kind.clone()));
        }
        let meta = object_entry(o, "metadata");
        for key in SERVER_METADATA {
            meta.remove(*key);
        }
        for field in ["labels", "annotations"] {
            if let Some(Value::Object(m)) = meta.get_mut(field) {
                m.retain(|k, _| !is_gitops_key(k));
            }
        }
        if let Some(ns) = &target_ns
            && rt.namespaced
        {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        if !labels.is_empty() {
            let l = object_entry(meta, "labels");
            for (k, val) in labels {
                l.insert(k.clone(), Value::String(val.clone()));
            }
        }
        for field in ["labels", "annotations"] {
            if meta
                .get(field)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                meta.remove(field);
            }
        }
        kind_specific(rt, o, namespace_mapping, moved);
    }
    serde_json::from_value(v).map_err(|e| ObjectsError::Archive {
        what: format!("decoding the prepared {}", item.describe()),
        cause: e.to_string(),
    })
}

/// The namespace `ns` is restored into.
pub fn map_namespace<'a>(ns: &'a str, mapping: &'a BTreeMap<String, String>) -> &'a str {
    mapping.get(ns).map(String::as_str).unwrap_or(ns)
}

fn object_entry<'a>(o: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let e = o
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    match e {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object above"),
    }
}

fn kind_specific(
    rt: &ResourceType,
    o: &mut Map<String, Value>,
    mapping: &BTreeMap<String, String>,
    moved: bool,
) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => {
            o.remove("spec");
            let meta = object_entry(o, "metadata");
            if let Some(name) = meta.get("name").and_then(Value::as_str) {
                let mapped = map_namespace(name, mapping).to_string();
                meta.insert("name".into(), Value::String(mapped));
            }
            if let Some(Value::Object(l)) = meta.get_mut("labels") {
                // Set by the API server to the (new) name.
                l.remove("kubernetes.io/metadata.name");
            }
        }
        ("", "services") => {
            if let Some(Value::Object(spec)) = o.get_mut("spec") {
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                if headless {
                    spec.insert("clusterIPs".into(), serde_json::json!(["None"]));
                } else {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                spec.remove("healthCheckNodePort");
                // A copy next to the original would collide on its node ports; restored in
                // place, the service keeps the ports its clients know.
                if moved && let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        p.remove("nodePort");
                    }
                }
            }
        }
        ("", "pods") => {
            if let Some(Value::Object(spec)) = o.get_mut("spec") {
                clean_pod_spec(spec);
            }
        }
        ("", "serviceaccounts") => {
            let name = o
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(Value::Array(secrets)) = o.get_mut("secrets") {
                let token_prefix = format!("{name}-token-");
                secrets.retain(|s| {
                    !s.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.starts_with(&token_prefix))
                });
                if secrets.is_empty() {
                    o.remove("secrets");
                }
            }
        }
        ("", "persistentvolumeclaims") => {
            if let Some(Value::Object(a)) = object_entry(o, "metadata").get_mut("annotations") {
                a.remove("pv.kubernetes.io/bind-completed");
                a.remove("pv.kubernetes.io/bound-by-controller");
            }
        }
        ("", "persistentvolumes") => {
            if let Some(Value::Object(claim)) =
                o.get_mut("spec").and_then(|s| s.get_mut("claimRef"))
            {
                claim.remove("uid");
                claim.remove("resourceVersion");
                if let Some(ns) = claim.get("namespace").and_then(Value::as_str) {
                    let mapped = map_namespace(ns, mapping).to_string();
                    claim.insert("namespace".into(), Value::String(mapped));
                }
            }
        }
        ("batch", "jobs") => clean_job(o),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            if let Some(Value::Array(subjects)) = o.get_mut("subjects") {
                for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(ns) = s.get("namespace").and_then(Value::as_str) {
                        let mapped = map_namespace(ns, mapping).to_string();
                        s.insert("namespace".into(), Value::String(mapped));
                    }
                }
            }
        }
        _ => {}
    }
}

/// A bare pod: no node (it may not exist), no injected service-account token volume (the
/// admission plugin injects a fresh one), no ephemeral containers (not allowed on create).
fn clean_pod_spec(spec: &mut Map<String, Value>) {
    spec.remove("nodeName");
    spec.remove("ephemeralContainers");
    let injected = |name: &str| name.starts_with("kube-api-access-");
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        volumes.retain(|v| !v.get("name").and_then(Value::as_str).is_some_and(injected));
    }
    for field in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(field) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(Value::Array(mounts)) = c.get_mut("volumeMounts") {
                    mounts.retain(|m| !m.get("name").and_then(Value::as_str).is_some_and(injected));
                }
            }
        }
    }
}

/// A Job with a generated selector: the selector and the generated labels go (the API server
/// generates new ones); a manual selector is kept as is.
fn clean_job(o: &mut Map<String, Value>) {
    let Some(Value::Object(spec)) = o.get_mut("spec") else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    spec.remove("selector");
    if let Some(Value::Object(labels)) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("metadata"))
        .and_then(|m| m.get_mut("labels"))
    {
        for l in JOB_GENERATED_LABELS {
            labels.remove(*l);
        }
    }
}

/// Restore order, like Velero's: namespaces and definitions first, then what workloads
/// refer to (accounts, configuration, quotas, RBAC, volumes, services), then everything else,
/// workloads last so that what they need is there when their pods start.
pub fn priority(rt: &ResourceType) -> u8 {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => 0,
        ("apiextensions.k8s.io", "customresourcedefinitions") => 1,
        ("storage.k8s.io", "storageclasses") => 2,
        ("", "serviceaccounts") => 3,
        ("", "configmaps") => 4,
        ("", "secrets") => 5,
        ("", "limitranges") => 6,
        ("", "resourcequotas") => 7,
        ("rbac.authorization.k8s.io", "clusterroles" | "roles") => 8,
        ("rbac.authorization.k8s.io", "clusterrolebindings" | "rolebindings") => 9,
        ("", "persistentvolumes") => 10,
        ("", "persistentvolumeclaims") => 11,
        ("", "services") => 12,
        ("apps", "daemonsets" | "statefulsets" | "deployments" | "replicasets")
        | ("", "replicationcontrollers")
        | ("batch", "cronjobs" | "jobs") => 14,
        ("", "pods") => 15,
        _ => 13,
    }
}

/// Sorts items into restore order (stable within a resource type: namespace, then name).
pub fn sort_for_restore(items: &mut [&Item]) {
    items.sort_by(|a, b| {
        (
            priority(&a.resource),
            a.resource.group_resource(),
            a.namespace(),
            a.name(),
        )
            .cmp(&(
                priority(&b.resource),
                b.resource.group_resource(),
                b.namespace(),
                b.name(),
            ))
    });
}
