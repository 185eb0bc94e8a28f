//! Which resources and objects a selection takes, and which are never captured or restored.
//! Pure: no cluster access.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_api::backup::Selection;
use kube::api::{ApiResource, DynamicObject};
use kube::core::{Selector, SelectorExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ObjectsError;

/// Label that keeps an object out of every backup (`holdfast.dev/exclude-from-backup: "true"`),
/// like Velero's `velero.io/exclude-from-backup`.
pub const EXCLUDE_LABEL: &str = "holdfast.dev/exclude-from-backup";

/// A served resource type: group, version (the preferred one at capture), kind, plural, scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural resource name (`deployments`).
    pub plural: String,
    pub namespaced: bool,
    /// Singular name, when discovery gave one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub singular: String,
    /// Short names (`deploy`), when discovery gave them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// A resource type without singular or short names (tests and fallbacks).
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            singular: String::new(),
            short_names: Vec::new(),
        }
    }

    /// `deployments.apps`, or `configmaps` for the core group (the way kubectl and Velero
    /// name resources).
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The archive directory name: `deployments.apps`, `configmaps.core`.
    pub fn dir_name(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("{}.{group}", self.plural)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    pub(crate) fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// Whether a name from a selection (`deployments`, `deploy`, `deployment`,
    /// `deployments.apps`, `Deployment`) names this resource. Case-insensitive.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim().to_ascii_lowercase();
        let kind = self.kind.to_ascii_lowercase();
        let mut names: Vec<&str> = vec![&self.plural, &kind];
        if !self.singular.is_empty() {
            names.push(&self.singular);
        }
        names.extend(self.short_names.iter().map(String::as_str));
        names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            if name == n {
                return true;
            }
            match name
                .strip_prefix(n.as_str())
                .and_then(|r| r.strip_prefix('.'))
            {
                Some(group) => group == self.group || (self.group.is_empty() && group == "core"),
                None => false,
            }
        })
    }
}

/// Included/excluded resources with Velero's meaning: empty or `*` includes everything, the
/// exclusions win.
pub fn resource_included(rt: &ResourceType, sel: &Selection) -> bool {
    let inc = &sel.included_resources;
    let included = inc.is_empty() || inc.iter().any(|r| r == "*" || rt.matches_name(r));
    included && !resource_excluded(rt, sel)
}

/// Named in `excludedResources`.
pub fn resource_excluded(rt: &ResourceType, sel: &Selection) -> bool {
    sel.excluded_resources.iter().any(|r| rt.matches_name(r))
}

/// Named explicitly (not through `*`) in `includedResources`.
pub fn resource_named(rt: &ResourceType, sel: &Selection) -> bool {
    sel.included_resources
        .iter()
        .any(|r| r != "*" && rt.matches_name(r))
}

/// The entries of `includedResources` that name cluster-scoped resources (other than
/// namespaces, which every backup carries for its own namespaces), as written. Pure.
pub fn cluster_scoped_named(resources: &[ResourceType], sel: &Selection) -> Vec<String> {
    sel.included_resources
        .iter()
        .filter(|name| {
            resources
                .iter()
                .any(|r| !r.namespaced && !r.is("", "namespaces") && r.matches_name(name))
        })
        .cloned()
        .collect()
}

/// Included/excluded namespaces: empty or `*` includes everything, exclusions win.
pub fn namespace_included(ns: &str, sel: &Selection) -> bool {
    let inc = &sel.included_namespaces;
    (inc.is_empty() || inc.iter().any(|n| n == "*" || n == ns))
        && !sel.excluded_namespaces.iter().any(|n| n == ns)
}

/// Resource types that are never captured or restored, with the reason.
pub fn skip_resource(rt: &ResourceType) -> Option<&'static str> {
    let g = rt.group.as_str();
    let p = rt.plural.as_str();
    Some(match (g, p) {
        ("holdfast.dev", _) => "Holdfast's own objects",
        ("", "events") | ("events.k8s.io", "events") => "events are history, not state",
        ("", "endpoints") | ("discovery.k8s.io", "endpointslices") => {
            "endpoints are derived from Services and pods"
        }
        ("apps", "controllerrevisions") => "controller revisions are recreated by their owners",
        ("coordination.k8s.io", _) => "leases belong to the processes that hold them",
        ("", "nodes" | "componentstatuses" | "bindings")
        | ("storage.k8s.io", "csinodes" | "volumeattachments" | "csistoragecapacities")
        | ("resource.k8s.io", "resourceslices")
        | ("metrics.k8s.io", _) => "node-specific or computed",
        ("internal.apiserver.k8s.io", _) | ("apiregistration.k8s.io", _) => "API server internals",
        ("authentication.k8s.io" | "authorization.k8s.io", _) => "requests, not objects",
        _ => return None,
    })
}

/// Objects that are never captured or restored, with the reason.
pub fn skip_object(rt: &ResourceType, obj: &DynamicObject) -> Option<String> {
    let meta = &obj.metadata;
    if meta
        .labels
        .as_ref()
        .and_then(|l| l.get(EXCLUDE_LABEL))
        .is_some_and(|v| v == "true")
    {
        return Some(format!("labelled {EXCLUDE_LABEL}=true"));
    }
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        // Claims hold data: keep them even when a StatefulSet owns them (retention policy),
        // but not the ephemeral claims of pods.
        let keep = rt.is("", "persistentvolumeclaims") && owner.kind != "Pod";
        if !keep {
            return Some(format!(
                "managed by its controller {}/{}",
                owner.kind, owner.name
            ));
        }
    }
    if rt.is("", "secrets")
        && obj.data.get("type").and_then(Value::as_str)
            == Some("kubernetes.io/service-account-token")
    {
        return Some("service-account token Secrets are issued by the cluster".into());
    }
    if rt.is("", "configmaps")
        && matches!(
            meta.name.as_deref(),
            Some("kube-root-ca.crt" | "openshift-service-ca.crt")
        )
    {
        return Some("published into every namespace by the cluster".into());
    }
    None
}

/// Pods and Jobs that had finished are not restored (as in Velero): restoring them would run
/// them again.
pub fn completed(rt: &ResourceType, obj: &DynamicObject) -> bool {
    let status = obj.data.get("status");
    if rt.is("", "pods") {
        let phase = status.and_then(|s| s.get("phase")).and_then(Value::as_str);
        return matches!(phase, Some("Succeeded" | "Failed"));
    }
    if rt.is("batch", "jobs") {
        return status.and_then(|s| s.get("completionTime")).is_some();
    }
    false
}

/// `labelSelector` / `orLabelSelectors` of a selection: an object matches when it matches
/// any one of them; no selector matches everything.
#[derive(Debug, Clone, Default)]
pub struct LabelFilter {
    any_of: Vec<Selector>,
}

impl LabelFilter {
    pub fn new(sel: &Selection) -> Result<Self, ObjectsError> {
        let mut any_of = Vec::new();
        for s in sel.label_selector.iter().chain(&sel.or_label_selectors) {
            let parsed = Selector::try_from(s.clone()).map_err(|e| ObjectsError::Selector {
                selector: format!("{s:?}"),
                cause: e.0,
            })?;
            any_of.push(parsed);
        }
        Ok(Self { any_of })
    }

    /// True when there is no selector (everything matches).
    pub fn selects_all(&self) -> bool {
        self.any_of.is_empty() || self.any_of.iter().any(Selector::selects_all)
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.selects_all() {
            return true;
        }
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        self.any_of.iter().any(|s| s.matches(labels))
    }
}

/// Where pod specs live in objects of the workload kinds we know (and in most custom
/// workloads, which follow the same shape).
const POD_SPEC_PATHS: &[&str] = &[
    "/spec",
    "/spec/template/spec",
    "/spec/jobTemplate/spec/template/spec",
];

/// The resource types whose objects may mount claims (pods and built-in workloads).
pub fn mounts_claims(rt: &ResourceType) -> bool {
    matches!(
        (rt.group.as_str(), rt.plural.as_str()),
        ("", "pods" | "replicationcontrollers")
            | (
                "apps",
                "deployments" | "statefulsets" | "daemonsets" | "replicasets"
            )
            | ("batch", "jobs" | "cronjobs")
    )
}

/// Claims an object uses: names of claims its pod spec(s) mount, and prefixes
/// (`<template>-<statefulset>-`) of the claims a StatefulSet's volumeClaimTemplates make.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClaimRefs {
    pub names: BTreeSet<String>,
    pub statefulset_prefixes: BTreeSet<String>,
}

impl ClaimRefs {
    pub fn add_from(&mut self, rt: &ResourceType, obj: &DynamicObject) {
        let Ok(value) = serde_json::to_value(obj) else {
            return;
        };
        for path in POD_SPEC_PATHS {
            let volumes = value
                .pointer(&format!("{path}/volumes"))
                .and_then(Value::as_array);
            for v in volumes.into_iter().flatten() {
                if let Some(claim) = v
                    .pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                {
                    self.names.insert(claim.to_string());
                }
            }
        }
        if rt.is("apps", "statefulsets") {
            let sts = obj.metadata.name.clone().unwrap_or_default();
            let templates = value
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array);
            for t in templates.into_iter().flatten() {
                if let Some(name) = t.pointer("/metadata/name").and_then(Value::as_str) {
                    self.statefulset_prefixes.insert(format!("{name}-{sts}-"));
                }
            }
        }
    }

    /// Whether the claim `name` is used: mounted, or made from a StatefulSet template
    /// (`<prefix><ordinal>`).
    pub fn uses(&self, name: &str) -> bool {
        self.names.contains(name)
            || self.statefulset_prefixes.iter().any(|p| {
                name.strip_prefix(p.as_str())
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }
}
