#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use holdfast_api::backup::Selection;
use holdfast_api::restore::ExistingResourcePolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::archive::{self, Item};
use super::sanitize::{self, prepare};
use super::select::{self, ClaimRefs, LabelFilter, ResourceType};
use super::{
    RestoreRequest, claims, exists_naturally, from_aggregated, restore_selected, unbind_claim,
};

fn rt(group: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
    ResourceType::new(group, "v1", kind, plural, namespaced)
}

fn deployments() -> ResourceType {
    ResourceType {
        singular: "deployment".into(),
        short_names: vec!["deploy".into()],
        ..rt("apps", "Deployment", "deployments", true)
    }
}

fn obj(rt: &ResourceType, v: Value) -> DynamicObject {
    let mut v = v;
    v["apiVersion"] = json!(rt.api_version());
    v["kind"] = json!(rt.kind);
    serde_json::from_value(v).unwrap()
}

fn item(rt: &ResourceType, v: Value) -> Item {
    Item {
        resource: rt.clone(),
        object: obj(rt, v),
    }
}

fn sel(v: Value) -> Selection {
    serde_json::from_value(v).unwrap()
}

fn to_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap()
}

#[test]
fn resource_names_match_like_kubectl() {
    let d = deployments();
    for yes in [
        "deployments",
        "deployment",
        "Deployment",
        "deploy",
        "deployments.apps",
        "deploy.apps",
        "DEPLOYMENTS",
    ] {
        assert!(d.matches_name(yes), "{yes}");
    }
    for no in [
        "deployments.extensions",
        "deploymentsx",
        "apps",
        "deployments.",
        "pods",
    ] {
        assert!(!d.matches_name(no), "{no}");
    }
    let cm = rt("", "ConfigMap", "configmaps", true);
    assert!(cm.matches_name("configmaps"));
    assert!(cm.matches_name("configmaps.core"));
    assert!(cm.matches_name("configmap"));
    assert!(!cm.matches_name("configmaps.apps"));
    let cert = rt("cert-manager.io", "Certificate", "certificates", true);
    assert!(cert.matches_name("certificates.cert-manager.io"));
    assert!(!cert.matches_name("certificates.k8s.io"));
    assert_eq!(d.group_resource(), "deployments.apps");
    assert_eq!(cm.group_resource(), "configmaps");
    assert_eq!(cm.dir_name(), "configmaps.core");
    assert_eq!(d.dir_name(), "deployments.apps");
    assert_eq!(d.api_version(), "apps/v1");
    assert_eq!(cm.api_version(), "v1");
}

#[test]
fn included_and_excluded_resources() {
    let d = deployments();
    let cm = rt("", "ConfigMap", "configmaps", true);
    let all = Selection::default();
    assert!(select::resource_included(&d, &all));
    let star = sel(json!({"includedResources": ["*"], "excludedResources": ["configmaps"]}));
    assert!(select::resource_included(&d, &star));
    assert!(!select::resource_included(&cm, &star));
    assert!(!select::resource_named(&d, &star));
    let only = sel(json!({"includedResources": ["deploy"]}));
    assert!(select::resource_included(&d, &only));
    assert!(select::resource_named(&d, &only));
    assert!(!select::resource_included(&cm, &only));
    let both = sel(
        json!({"includedResources": ["deployments"], "excludedResources": ["deployments.apps"]}),
    );
    assert!(!select::resource_included(&d, &both), "exclusion wins");

    let ns = sel(json!({"includedNamespaces": ["a", "b"], "excludedNamespaces": ["b"]}));
    assert!(select::namespace_included("a", &ns));
    assert!(!select::namespace_included("b", &ns));
    assert!(!select::namespace_included("c", &ns));
    assert!(select::namespace_included("c", &Selection::default()));
    assert!(select::namespace_included(
        "c",
        &sel(json!({"includedNamespaces": ["*"]}))
    ));
}

#[test]
fn cluster_scoped_kinds_named_in_a_selection() {
    let crb = ResourceType {
        singular: "clusterrolebinding".into(),
        ..rt(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        )
    };
    let all = [
        deployments(),
        crb,
        rt("", "Namespace", "namespaces", false),
        rt("", "ConfigMap", "configmaps", true),
    ];
    let s = sel(json!({"includedResources": [
        "deploy", "ClusterRoleBinding", "namespaces", "clusterrolebindings.rbac.authorization.k8s.io", "configmaps", "*"
    ]}));
    assert_eq!(
        select::cluster_scoped_named(&all, &s),
        [
            "ClusterRoleBinding",
            "clusterrolebindings.rbac.authorization.k8s.io"
        ]
    );
    assert!(select::cluster_scoped_named(&all, &sel(json!({}))).is_empty());
}

#[test]
fn resources_never_captured() {
    for (group, plural) in [
        ("", "events"),
        ("events.k8s.io", "events"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
        ("apps", "controllerrevisions"),
        ("coordination.k8s.io", "leases"),
        ("holdfast.dev", "backups"),
        ("holdfast.dev", "datauploads"),
        ("", "nodes"),
        ("storage.k8s.io", "volumeattachments"),
        ("metrics.k8s.io", "pods"),
    ] {
        assert!(
            select::skip_resource(&rt(group, "X", plural, true)).is_some(),
            "{plural}.{group}"
        );
    }
    for (group, plural) in [
        ("", "configmaps"),
        ("", "secrets"),
        ("apps", "deployments"),
        ("", "pods"),
        ("cert-manager.io", "certificates"),
    ] {
        assert!(
            select::skip_resource(&rt(group, "X", plural, true)).is_none(),
            "{plural}.{group}"
        );
    }
}

fn owned(kind: &str, controller: bool) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "u1", "controller": controller}])
}

#[test]
fn objects_never_captured() {
    let pods = rt("", "Pod", "pods", true);
    let rs_pod = obj(
        &pods,
        json!({"metadata": {"name": "web-abc", "ownerReferences": owned("ReplicaSet", true)}}),
    );
    assert!(
        select::skip_object(&pods, &rs_pod)
            .unwrap()
            .contains("ReplicaSet/owner")
    );
    let bare = obj(
        &pods,
        json!({"metadata": {"name": "bare", "ownerReferences": owned("Thing", false)}}),
    );
    assert!(
        select::skip_object(&pods, &bare).is_none(),
        "non-controller owners do not count"
    );

    let pvcs = rt("", "PersistentVolumeClaim", "persistentvolumeclaims", true);
    let sts_claim = obj(
        &pvcs,
        json!({"metadata": {"name": "data-web-0", "ownerReferences": owned("StatefulSet", true)}}),
    );
    assert!(
        select::skip_object(&pvcs, &sts_claim).is_none(),
        "claims hold data"
    );
    let eph = obj(
        &pvcs,
        json!({"metadata": {"name": "pod-scratch", "ownerReferences": owned("Pod", true)}}),
    );
    assert!(
        select::skip_object(&pvcs, &eph).is_some(),
        "ephemeral claims go with their pod"
    );

    let secrets = rt("", "Secret", "secrets", true);
    let token = obj(
        &secrets,
        json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"}),
    );
    assert!(select::skip_object(&secrets, &token).is_some());
    let opaque = obj(
        &secrets,
        json!({"metadata": {"name": "s"}, "type": "Opaque"}),
    );
    assert!(select::skip_object(&secrets, &opaque).is_none());

    let cms = rt("", "ConfigMap", "configmaps", true);
    let root = obj(&cms, json!({"metadata": {"name": "kube-root-ca.crt"}}));
    assert!(select::skip_object(&cms, &root).is_some());
    let excluded = obj(
        &cms,
        json!({"metadata": {"name": "x", "labels": {select::EXCLUDE_LABEL: "true"}}}),
    );
    assert!(select::skip_object(&cms, &excluded).is_some());
    let normal = obj(
        &cms,
        json!({"metadata": {"name": "x", "labels": {select::EXCLUDE_LABEL: "false"}}}),
    );
    assert!(select::skip_object(&cms, &normal).is_none());

    let done = obj(
        &pods,
        json!({"metadata": {"name": "p"}, "status": {"phase": "Succeeded"}}),
    );
    let running = obj(
        &pods,
        json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}}),
    );
    assert!(select::completed(&pods, &done));
    assert!(!select::completed(&pods, &running));
    let jobs = rt("batch", "Job", "jobs", true);
    let finished = obj(
        &jobs,
        json!({"metadata": {"name": "j"}, "status": {"completionTime": "2026-01-01T00:00:00Z"}}),
    );
    assert!(select::completed(&jobs, &finished));
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn label_selectors_with_expressions_and_alternatives() {
    let s = Selection {
        label_selector: Some(LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["front".into(), "back".into()]),
                },
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["dev".into()]),
                },
                LabelSelectorRequirement {
                    key: "owner".into(),
                    operator: "Exists".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "legacy".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        }),
        ..Default::default()
    };
    let f = LabelFilter::new(&s).unwrap();
    assert!(!f.selects_all());
    let base = [("app", "web"), ("tier", "front"), ("owner", "me")];
    assert!(f.matches(Some(&labels(&base))));
    assert!(f.matches(Some(&labels(&[
        ("app", "web"),
        ("tier", "back"),
        ("owner", "x"),
        ("env", "prod")
    ]))));
    assert!(!f.matches(Some(&labels(&[
        ("app", "web"),
        ("tier", "front"),
        ("owner", "me"),
        ("env", "dev")
    ]))));
    assert!(!f.matches(Some(&labels(&[
        ("app", "web"),
        ("tier", "mid"),
        ("owner", "me")
    ]))));
    assert!(
        !f.matches(Some(&labels(&[("app", "web"), ("tier", "front")]))),
        "Exists"
    );
    assert!(
        !f.matches(Some(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("owner", "me"),
            ("legacy", "")
        ]))),
        "DoesNotExist"
    );
    assert!(!f.matches(Some(&labels(&[
        ("app", "db"),
        ("tier", "front"),
        ("owner", "me")
    ]))));
    assert!(!f.matches(None));

    let or = sel(
        json!({"orLabelSelectors": [{"matchLabels": {"app": "a"}}, {"matchLabels": {"app": "b"}}]}),
    );
    let f = LabelFilter::new(&or).unwrap();
    assert!(f.matches(Some(&labels(&[("app", "a")]))));
    assert!(f.matches(Some(&labels(&[("app", "b")]))));
    assert!(!f.matches(Some(&labels(&[("app", "c")]))));

    let none = LabelFilter::new(&Selection::default()).unwrap();
    assert!(none.selects_all());
    assert!(none.matches(None));
    let empty = LabelFilter::new(&sel(json!({"labelSelector": {}}))).unwrap();
    assert!(empty.matches(None), "an empty selector selects everything");

    let bad =
        sel(json!({"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}));
    let err = LabelFilter::new(&bad).unwrap_err().to_string();
    assert!(err.contains("invalid label selector"), "{err}");
}

#[test]
fn claims_used_by_pods_and_workloads() {
    let pods = rt("", "Pod", "pods", true);
    let sts = rt("apps", "StatefulSet", "statefulsets", true);
    let cronjobs = rt("batch", "CronJob", "cronjobs", true);
    let mut refs = ClaimRefs::default();
    refs.add_from(
        &pods,
        &obj(
            &pods,
            json!({"metadata": {"name": "p"}, "spec": {"volumes": [
        {"name": "a", "persistentVolumeClaim": {"claimName": "pod-claim"}},
        {"name": "b", "emptyDir": {}}]}}),
        ),
    );
    refs.add_from(
        &deployments(),
        &obj(
            &deployments(),
            json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"volumes": [
        {"name": "a", "persistentVolumeClaim": {"claimName": "deploy-claim"}}]}}}}),
        ),
    );
    refs.add_from(&cronjobs, &obj(&cronjobs, json!({"metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": {"spec": {"volumes": [
        {"name": "a", "persistentVolumeClaim": {"claimName": "cron-claim"}}]}}}}}})));
    refs.add_from(
        &sts,
        &obj(
            &sts,
            json!({"metadata": {"name": "web"}, "spec": {"volumeClaimTemplates": [
        {"metadata": {"name": "data"}}]}}),
        ),
    );
    for yes in [
        "pod-claim",
        "deploy-claim",
        "cron-claim",
        "data-web-0",
        "data-web-12",
    ] {
        assert!(refs.uses(yes), "{yes}");
    }
    for no in [
        "data-web-",
        "data-web-a-0",
        "data-web2-0",
        "other",
        "data-db-0",
    ] {
        assert!(!refs.uses(no), "{no}");
    }
    assert!(select::mounts_claims(&sts));
    assert!(select::mounts_claims(&pods));
    assert!(!select::mounts_claims(&rt(
        "",
        "ConfigMap",
        "configmaps",
        true
    )));
}

fn full_meta(ns: &str, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": ns,
        "uid": "1234",
        "resourceVersion": "99",
        "generation": 3,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "deletionTimestamp": "2026-01-02T00:00:00Z",
        "deletionGracePeriodSeconds": 30,
        "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        "selfLink": "/api/x",
        "ownerReferences": owned("Thing", false),
        "finalizers": ["example.com/keep"],
        "labels": {
            "app": "web",
            "argocd.argoproj.io/instance": "shop",
            "kustomize.toolkit.fluxcd.io/name": "apps",
            "helm.toolkit.fluxcd.io/namespace": "flux",
        },
        "annotations": {
            "note": "kept",
            "argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/web",
            "kustomize.toolkit.fluxcd.io/checksum": "abc",
        },
    })
}

#[test]
fn prepare_strips_server_state_and_gitops_marks_but_not_pod_template_labels() {
    let d = deployments();
    let it = item(
        &d,
        json!({
            "metadata": full_meta("shop", "web"),
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web", "argocd.argoproj.io/instance": "x"}}}},
            "status": {"replicas": 2},
        }),
    );
    let mapping = BTreeMap::from([("shop".to_string(), "shop-2".to_string())]);
    let add = labels(&[
        ("holdfast.dev/restore", "r1"),
        ("holdfast.dev/backup", "b1"),
    ]);
    let out = to_value(&prepare(&it, &mapping, &add).unwrap());
    let meta = &out["metadata"];
    for gone in [
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
    ] {
        assert!(meta.get(gone).is_none(), "{gone} should be gone: {meta}");
    }
    assert!(out.get("status").is_none());
    assert_eq!(meta["namespace"], "shop-2");
    assert_eq!(meta["name"], "web");
    assert_eq!(
        meta["labels"],
        json!({"app": "web", "holdfast.dev/restore": "r1", "holdfast.dev/backup": "b1"})
    );
    assert_eq!(meta["annotations"], json!({"note": "kept"}));
    assert_eq!(out["apiVersion"], "apps/v1");
    assert_eq!(out["kind"], "Deployment");
    // Pod template labels are what selectors match: untouched.
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web", "argocd.argoproj.io/instance": "x"})
    );
    // Without a mapping the namespace stays.
    let same = to_value(&prepare(&it, &BTreeMap::new(), &BTreeMap::new()).unwrap());
    assert_eq!(same["metadata"]["namespace"], "shop");
    assert_eq!(same["metadata"]["labels"], json!({"app": "web"}));
}

#[test]
fn prepare_services() {
    let svc = rt("", "Service", "services", true);
    let normal = item(
        &svc,
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
        "type": "LoadBalancer", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "healthCheckNodePort": 31000,
        "ports": [{"port": 80, "nodePort": 30080}]}}),
    );
    let in_place = to_value(&prepare(&normal, &BTreeMap::new(), &BTreeMap::new()).unwrap());
    assert!(in_place["spec"].get("clusterIP").is_none());
    assert!(in_place["spec"].get("clusterIPs").is_none());
    assert!(in_place["spec"].get("healthCheckNodePort").is_none());
    assert_eq!(
        in_place["spec"]["ports"][0]["nodePort"], 30080,
        "kept in place"
    );
    let mapping = BTreeMap::from([("shop".to_string(), "copy".to_string())]);
    let moved = to_value(&prepare(&normal, &mapping, &BTreeMap::new()).unwrap());
    assert!(
        moved["spec"]["ports"][0].get("nodePort").is_none(),
        "a copy would collide"
    );
    assert_eq!(moved["spec"]["ports"][0]["port"], 80);

    let headless = item(
        &svc,
        json!({"metadata": {"name": "db", "namespace": "shop"}, "spec": {
        "clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432}]}}),
    );
    let out = to_value(&prepare(&headless, &BTreeMap::new(), &BTreeMap::new()).unwrap());
    assert_eq!(out["spec"]["clusterIP"], "None");
    assert_eq!(out["spec"]["clusterIPs"], json!(["None"]));
}

#[test]
fn prepare_namespaces_bindings_jobs_pods_accounts_volumes() {
    let mapping = BTreeMap::from([("shop".to_string(), "shop-2".to_string())]);
    let none = BTreeMap::new();

    let nsr = rt("", "Namespace", "namespaces", false);
    let ns = item(
        &nsr,
        json!({"metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "a"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}}),
    );
    let out = to_value(&prepare(&ns, &mapping, &none).unwrap());
    assert_eq!(out["metadata"]["name"], "shop-2");
    assert_eq!(out["metadata"]["labels"], json!({"team": "a"}));
    assert!(out.get("spec").is_none());
    assert!(out.get("status").is_none());
    assert!(out["metadata"].get("namespace").is_none());

    let rb = rt(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        true,
    );
    let b = item(
        &rb,
        json!({"metadata": {"name": "b", "namespace": "shop"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "shop"},
                     {"kind": "ServiceAccount", "name": "mon", "namespace": "monitoring"},
                     {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
    );
    let out = to_value(&prepare(&b, &mapping, &none).unwrap());
    assert_eq!(out["subjects"][0]["namespace"], "shop-2");
    assert_eq!(out["subjects"][1]["namespace"], "monitoring");
    assert!(out["subjects"][2].get("namespace").is_none());

    let jobs = rt("batch", "Job", "jobs", true);
    let j = item(
        &jobs,
        json!({"metadata": {"name": "j", "namespace": "shop"}, "spec": {
        "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
        "template": {"metadata": {"labels": {"app": "j", "batch.kubernetes.io/controller-uid": "u", "controller-uid": "u",
            "job-name": "j", "batch.kubernetes.io/job-name": "j"}}}}}),
    );
    let out = to_value(&prepare(&j, &none, &none).unwrap());
    assert!(out["spec"].get("selector").is_none());
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"],
        json!({"app": "j"})
    );
    let manual = item(
        &jobs,
        json!({"metadata": {"name": "j", "namespace": "shop"}, "spec": {
        "manualSelector": true, "selector": {"matchLabels": {"job-name": "j"}},
        "template": {"metadata": {"labels": {"job-name": "j"}}}}}),
    );
    let out = to_value(&prepare(&manual, &none, &none).unwrap());
    assert_eq!(
        out["spec"]["selector"],
        json!({"matchLabels": {"job-name": "j"}})
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"],
        json!({"job-name": "j"})
    );

    let pods = rt("", "Pod", "pods", true);
    let p = item(
        &pods,
        json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {
        "nodeName": "node-1",
        "volumes": [{"name": "kube-api-access-x1", "projected": {}}, {"name": "data", "emptyDir": {}}],
        "containers": [{"name": "c", "volumeMounts": [{"name": "kube-api-access-x1", "mountPath": "/var/run/secrets"}, {"name": "data", "mountPath": "/d"}]}],
        "ephemeralContainers": [{"name": "debug"}]}}),
    );
    let out = to_value(&prepare(&p, &none, &none).unwrap());
    assert!(out["spec"].get("nodeName").is_none());
    assert!(out["spec"].get("ephemeralContainers").is_none());
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "data", "emptyDir": {}}])
    );
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": "data", "mountPath": "/d"}])
    );

    let sas = rt("", "ServiceAccount", "serviceaccounts", true);
    let sa = item(
        &sas,
        json!({"metadata": {"name": "app", "namespace": "shop"},
        "secrets": [{"name": "app-token-abcde"}, {"name": "registry"}]}),
    );
    let out = to_value(&prepare(&sa, &none, &none).unwrap());
    assert_eq!(out["secrets"], json!([{"name": "registry"}]));

    let pvs = rt("", "PersistentVolume", "persistentvolumes", false);
    let pv = item(
        &pvs,
        json!({"metadata": {"name": "pv-1"}, "spec": {"claimRef": {
        "kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data", "uid": "u", "resourceVersion": "5"}}}),
    );
    let out = to_value(&prepare(&pv, &mapping, &none).unwrap());
    assert_eq!(
        out["spec"]["claimRef"],
        json!({"kind": "PersistentVolumeClaim", "namespace": "shop-2", "name": "data"})
    );
}

#[test]
fn restore_order_follows_velero() {
    let kinds = [
        rt("apps", "Deployment", "deployments", true),
        rt("", "Pod", "pods", true),
        rt("example.com", "Widget", "widgets", true),
        rt("", "Service", "services", true),
        rt("", "PersistentVolumeClaim", "persistentvolumeclaims", true),
        rt(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        rt("rbac.authorization.k8s.io", "Role", "roles", true),
        rt("", "ResourceQuota", "resourcequotas", true),
        rt("", "LimitRange", "limitranges", true),
        rt("", "Secret", "secrets", true),
        rt("", "ConfigMap", "configmaps", true),
        rt("", "ServiceAccount", "serviceaccounts", true),
        rt(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
        rt("", "Namespace", "namespaces", false),
        rt("apps", "StatefulSet", "statefulsets", true),
    ];
    let items: Vec<Item> = kinds
        .iter()
        .map(|k| {
            let ns = if k.namespaced {
                json!("a")
            } else {
                Value::Null
            };
            item(k, json!({"metadata": {"name": "x", "namespace": ns}}))
        })
        .collect();
    let mut refs: Vec<&Item> = items.iter().collect();
    sanitize::sort_for_restore(&mut refs);
    let order: Vec<String> = refs.iter().map(|i| i.resource.group_resource()).collect();
    assert_eq!(
        order,
        [
            "namespaces",
            "customresourcedefinitions.apiextensions.k8s.io",
            "serviceaccounts",
            "configmaps",
            "secrets",
            "limitranges",
            "resourcequotas",
            "roles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
            "persistentvolumeclaims",
            "services",
            "widgets.example.com",
            "deployments.apps",
            "statefulsets.apps",
            "pods",
        ]
    );
}

fn sample_items() -> Vec<Item> {
    let nsr = rt("", "Namespace", "namespaces", false);
    let cms = rt("", "ConfigMap", "configmaps", true);
    let pods = rt("", "Pod", "pods", true);
    vec![
        item(&nsr, json!({"metadata": {"name": "shop"}})),
        item(&nsr, json!({"metadata": {"name": "other"}})),
        item(
            &cms,
            json!({"metadata": {"name": "settings", "namespace": "shop", "labels": {"app": "web"}}, "data": {"k": "v"}}),
        ),
        item(
            &cms,
            json!({"metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}}, "data": {"k": "v"}}),
        ),
        item(
            &cms,
            json!({"metadata": {"name": "settings", "namespace": "other", "labels": {"app": "web"}}}),
        ),
        item(
            &deployments(),
            json!({"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}}, "spec": {"replicas": 1}}),
        ),
        item(
            &pods,
            json!({"metadata": {"name": "done", "namespace": "shop", "labels": {"app": "web"}}, "status": {"phase": "Succeeded"}}),
        ),
    ]
}

#[test]
fn archive_round_trip_and_layout() {
    let items = sample_items();
    let bytes = archive::write(&items).unwrap();
    let back = archive::read(&bytes).unwrap();
    assert_eq!(back, items);
    // Short names survive in the index, so a restore filters by them too.
    assert_eq!(back[5].resource.short_names, vec!["deploy".to_string()]);

    // Backups written before the catalog hold the same tar gzipped.
    let gz = archive::write_gz(&items).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert_eq!(archive::read(&gz).unwrap(), items);

    let mut tar = tar::Archive::new(bytes.as_slice());
    let paths: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "index.json",
            "resources/namespaces.core/cluster/shop.json",
            "resources/namespaces.core/cluster/other.json",
            "resources/configmaps.core/namespaces/shop/settings.json",
            "resources/configmaps.core/namespaces/shop/db.json",
            "resources/configmaps.core/namespaces/other/settings.json",
            "resources/deployments.apps/namespaces/shop/web.json",
            "resources/pods.core/namespaces/shop/done.json",
        ]
    );
    // Same input, same bytes.
    assert_eq!(archive::write(&items).unwrap(), bytes);
}

#[test]
fn archive_long_names_and_errors() {
    let cms = rt("", "ConfigMap", "configmaps", true);
    let long = "n".repeat(253);
    let items = vec![item(
        &cms,
        json!({"metadata": {"name": long, "namespace": "a-namespace-with-a-long-name-of-sixty-three-characters-exactly"}}),
    )];
    let back = archive::read(&archive::write(&items).unwrap()).unwrap();
    assert_eq!(back, items);

    let err = archive::read(b"not a gzip").unwrap_err().to_string();
    assert!(err.contains("archive"), "{err}");

    // A tar.gz without an index.
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "resources/x.core/cluster/a.json", &b"{}"[..])
        .unwrap();
    let bytes = b.into_inner().unwrap().finish().unwrap();
    let err = archive::read(&bytes).unwrap_err().to_string();
    assert!(err.contains("index.json"), "{err}");
}

fn request<'a>(
    selection: &'a Selection,
    include: Option<&'a [&'a str]>,
    exclude: &'a [&'a str],
    mapping: &'a BTreeMap<String, String>,
) -> RestoreRequest<'a> {
    RestoreRequest {
        hooks: &[],
        namespaced_only: false,
        writer: None,
        refused_hint: "",
        archive: &[],
        selection,
        namespace_mapping: mapping,
        existing: ExistingResourcePolicy::None,
        include_kinds: include,
        exclude_kinds: exclude,
        labels: BTreeMap::new(),
    }
}

fn chosen(req: &RestoreRequest<'_>) -> Vec<String> {
    let f = LabelFilter::new(req.selection).unwrap();
    sample_items()
        .iter()
        .filter(|i| restore_selected(i, req, &f))
        .map(Item::path)
        .collect()
}

#[test]
fn restore_selection() {
    let m = BTreeMap::new();
    let all = Selection::default();
    let everything = chosen(&request(&all, None, &[], &m));
    assert_eq!(
        everything.len(),
        6,
        "all but the completed pod: {everything:?}"
    );
    assert!(!everything.iter().any(|p| p.contains("pods.core")));

    let only_ns = chosen(&request(&all, Some(&["namespaces"]), &[], &m));
    assert_eq!(
        only_ns,
        [
            "resources/namespaces.core/cluster/shop.json",
            "resources/namespaces.core/cluster/other.json"
        ]
    );
    let no_cm = chosen(&request(&all, None, &["configmaps", "namespaces"], &m));
    assert_eq!(
        no_cm,
        ["resources/deployments.apps/namespaces/shop/web.json"]
    );

    let shop_web = sel(
        json!({"includedNamespaces": ["shop"], "labelSelector": {"matchLabels": {"app": "web"}}}),
    );
    assert_eq!(
        chosen(&request(&shop_web, None, &[], &m)),
        [
            "resources/configmaps.core/namespaces/shop/settings.json",
            "resources/deployments.apps/namespaces/shop/web.json",
        ]
    );
    let short = sel(json!({"includedResources": ["deploy"]}));
    assert_eq!(
        chosen(&request(&short, None, &[], &m)),
        ["resources/deployments.apps/namespaces/shop/web.json"]
    );
    let not_other = sel(
        json!({"excludedNamespaces": ["other"], "includedResources": ["namespaces", "ConfigMap"]}),
    );
    assert_eq!(
        chosen(&request(&not_other, None, &[], &m)),
        [
            "resources/namespaces.core/cluster/shop.json",
            "resources/configmaps.core/namespaces/shop/settings.json",
            "resources/configmaps.core/namespaces/shop/db.json",
        ]
    );
}

#[test]
fn aggregated_discovery_takes_preferred_versions_and_listable_resources() {
    let groups: Vec<kube::core::discovery::v2::APIGroupDiscovery> = serde_json::from_value(json!([
        {"metadata": {"name": ""}, "versions": [{"version": "v1", "resources": [
            {"resource": "pods", "responseKind": {"group": "", "version": "v1", "kind": "Pod"}, "scope": "Namespaced",
             "singularResource": "pod", "verbs": ["get", "list", "create"], "shortNames": ["po"],
             "subresources": [{"subresource": "log", "responseKind": {"kind": "Pod"}, "verbs": ["get"]}]},
            {"resource": "bindings", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "scope": "Namespaced", "verbs": ["create"]},
            {"resource": "namespaces", "responseKind": {"group": "", "version": "v1", "kind": "Namespace"}, "scope": "Cluster", "verbs": ["get", "list"]}
        ]}]},
        {"metadata": {"name": "stale.example.com"}, "versions": [{"version": "v1", "freshness": "Stale", "resources": [
            {"resource": "things", "responseKind": {"group": "stale.example.com", "version": "v1", "kind": "Thing"}, "scope": "Namespaced", "verbs": ["list"]}]}]},
        {"metadata": {"name": "example.com"}, "versions": [
            {"version": "v2", "resources": [
                {"resource": "widgets", "responseKind": {"group": "example.com", "version": "v2", "kind": "Widget"}, "scope": "Namespaced", "verbs": ["list"]}]},
            {"version": "v1", "resources": [
                {"resource": "widgets", "responseKind": {"group": "example.com", "version": "v1", "kind": "Widget"}, "scope": "Namespaced", "verbs": ["list"]},
                {"resource": "gadgets", "responseKind": {"group": "example.com", "version": "v1", "kind": "Gadget"}, "scope": "Cluster", "verbs": ["list"]}]}
        ]}
    ]))
    .unwrap();
    let (got, warnings) = from_aggregated(groups);
    assert_eq!(
        warnings,
        [
            "API stale.example.com/v1 is not available (stale discovery); its objects are not captured"
        ]
    );
    let names: Vec<(String, String, bool)> = got
        .iter()
        .map(|r| (r.group_resource(), r.version.clone(), r.namespaced))
        .collect();
    assert_eq!(
        names,
        [
            ("pods".to_string(), "v1".to_string(), true),
            ("namespaces".to_string(), "v1".to_string(), false),
            ("widgets.example.com".to_string(), "v2".to_string(), true),
            ("gadgets.example.com".to_string(), "v1".to_string(), false),
        ]
    );
    assert_eq!(got[0].short_names, ["po"]);
    assert!(got[0].matches_name("po"));
    assert!(got[0].matches_name("pod"));
}

#[test]
fn natural_objects_claims_and_unbinding() {
    let sas = rt("", "ServiceAccount", "serviceaccounts", true);
    let rbs = rt(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        true,
    );
    let nsr = rt("", "Namespace", "namespaces", false);
    assert!(exists_naturally(&item(
        &sas,
        json!({"metadata": {"name": "default", "namespace": "a"}})
    )));
    assert!(!exists_naturally(&item(
        &sas,
        json!({"metadata": {"name": "app", "namespace": "a"}})
    )));
    assert!(exists_naturally(&item(
        &rbs,
        json!({"metadata": {"name": "system:image-pullers", "namespace": "a"}})
    )));
    assert!(!exists_naturally(&item(
        &rbs,
        json!({"metadata": {"name": "app-reads", "namespace": "a"}})
    )));
    assert!(exists_naturally(&item(
        &nsr,
        json!({"metadata": {"name": "a"}})
    )));

    let pvcs = rt("", "PersistentVolumeClaim", "persistentvolumeclaims", true);
    let claim = item(
        &pvcs,
        json!({"metadata": {"name": "data", "namespace": "a"},
        "spec": {"volumeName": "pv-1", "storageClassName": "standard", "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}}),
    );
    let typed = claims(&[
        claim.clone(),
        item(&sas, json!({"metadata": {"name": "x", "namespace": "a"}})),
    ]);
    assert_eq!(typed.len(), 1);
    assert_eq!(
        typed[0].spec.as_ref().unwrap().volume_name.as_deref(),
        Some("pv-1")
    );

    let mut restored = prepare(&claim, &BTreeMap::new(), &BTreeMap::new()).unwrap();
    unbind_claim(&mut restored, &["pv-1".to_string()].into());
    assert_eq!(
        restored.data["spec"]["volumeName"], "pv-1",
        "its volume comes back too"
    );
    unbind_claim(&mut restored, &Default::default());
    assert!(restored.data["spec"].get("volumeName").is_none());
    assert_eq!(restored.data["spec"]["storageClassName"], "standard");
}

#[test]
fn restore_brings_definitions_and_volumes_of_selected_objects() {
    let crds = rt(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    );
    let widgets = rt("example.com", "Widget", "widgets", true);
    let pvcs = rt("", "PersistentVolumeClaim", "persistentvolumeclaims", true);
    let pvs = rt("", "PersistentVolume", "persistentvolumes", false);
    let items = vec![
        item(&crds, json!({"metadata": {"name": "widgets.example.com"}})),
        item(&crds, json!({"metadata": {"name": "gadgets.example.com"}})),
        item(&pvs, json!({"metadata": {"name": "pv-1"}})),
        item(&pvs, json!({"metadata": {"name": "pv-2"}})),
        item(
            &widgets,
            json!({"metadata": {"name": "w", "namespace": "a", "labels": {"app": "x"}}}),
        ),
        item(
            &pvcs,
            json!({"metadata": {"name": "data", "namespace": "a", "labels": {"app": "x"}}, "spec": {"volumeName": "pv-1"}}),
        ),
        item(
            &pvcs,
            json!({"metadata": {"name": "other", "namespace": "a"}, "spec": {"volumeName": "pv-2"}}),
        ),
    ];
    let m = BTreeMap::new();
    let by_label = sel(json!({"labelSelector": {"matchLabels": {"app": "x"}}}));
    let paths = |req: &RestoreRequest<'_>| -> Vec<String> {
        let f = LabelFilter::new(req.selection).unwrap();
        super::select_for_restore(&items, req, &f)
            .iter()
            .map(|i| i.path())
            .collect()
    };
    assert_eq!(
        paths(&request(&by_label, None, &[], &m)),
        [
            "resources/customresourcedefinitions.apiextensions.k8s.io/cluster/widgets.example.com.json",
            "resources/persistentvolumes.core/cluster/pv-1.json",
            "resources/persistentvolumeclaims.core/namespaces/a/data.json",
            "resources/widgets.example.com/namespaces/a/w.json",
        ]
    );
    // The kinds still rule: the caller restores volumes itself.
    assert_eq!(
        paths(&request(
            &by_label,
            None,
            &["persistentvolumeclaims", "persistentvolumes"],
            &m
        )),
        [
            "resources/customresourcedefinitions.apiextensions.k8s.io/cluster/widgets.example.com.json",
            "resources/widgets.example.com/namespaces/a/w.json",
        ]
    );
    // A tenant's restore takes namespaced objects only: no CRD, no PersistentVolume.
    let mut tenant = request(&by_label, None, &[], &m);
    tenant.namespaced_only = true;
    assert_eq!(
        paths(&tenant),
        [
            "resources/persistentvolumeclaims.core/namespaces/a/data.json",
            "resources/widgets.example.com/namespaces/a/w.json",
        ]
    );
    let no_crds = sel(
        json!({"labelSelector": {"matchLabels": {"app": "x"}}, "excludedResources": ["crd", "customresourcedefinitions"]}),
    );
    assert_eq!(
        paths(&request(
            &no_crds,
            None,
            &["pvc", "persistentvolumeclaims", "persistentvolumes"],
            &m
        )),
        ["resources/widgets.example.com/namespaces/a/w.json"]
    );
}
