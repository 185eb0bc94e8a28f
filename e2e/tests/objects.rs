//! Object capture and restore (`holdfast::objects`) against the real API server:
//! what a capture takes and leaves out, the claims it finds through workloads, a restore into
//! a mapped namespace and into the original one, and the None/Update policies for existing
//! objects; custom resources with their CRD.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast::objects::{self, CaptureRequest, Captured, Item, RestoreReport, RestoreRequest};
use holdfast_api::backup::Selection;
use holdfast_api::restore::ExistingResourcePolicy;
use holdfast_e2e::{TestNamespace, env, random_suffix, wait_until};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};

fn app(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {{app.kubernetes.io/part-of: shop, argocd.argoproj.io/instance: shop}}
  annotations: {{argocd.argoproj.io/tracking-id: "shop:/ConfigMap:{ns}/settings", note: kept}}
data: {{color: blue}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds, labels: {{app.kubernetes.io/part-of: shop}}}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: app}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: reader}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: app-reads}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}}
subjects: [{{kind: ServiceAccount, name: app, namespace: {ns}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{port: 5432}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, labels: {{app: web}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      serviceAccountName: app
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "sleep 3600"]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, labels: {{app: db}}}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db, role: database}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "echo db > /data/db; sleep 3600"]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: standard
      resources: {{requests: {{storage: 16Mi}}}}
"#
    )
}

async fn capture(client: &Client, ns: &str, selection: &Selection) -> Captured {
    objects::capture(
        client,
        CaptureRequest {
            namespaces: &[ns.to_string()],
            selection,
            include_cluster_resources: true,
        },
    )
    .await
    .unwrap()
}

/// `resource namespace/name` of every item, for assertions.
fn listing(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| format!("{} {}", i.resource.group_resource(), i.name()))
        .collect()
}

fn restore_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("holdfast.dev/restore".to_string(), "r1".to_string()),
        ("holdfast.dev/backup".to_string(), "b1".to_string()),
    ])
}

async fn restore(
    client: &Client,
    archive: &[u8],
    mapping: &BTreeMap<String, String>,
    existing: ExistingResourcePolicy,
) -> RestoreReport {
    let selection = Selection::default();
    objects::restore(
        client,
        RestoreRequest {
            hooks: &[],
            namespaced_only: false,
            writer: None,
            refused_hint: "",
            archive,
            selection: &selection,
            namespace_mapping: mapping,
            existing,
            include_kinds: None,
            exclude_kinds: &["persistentvolumeclaims", "persistentvolumes"],
            labels: restore_labels(),
        },
    )
    .await
    .unwrap()
}

async fn wait_claim_bound(client: &Client, ns: &str, name: &str) -> PersistentVolumeClaim {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("claim {name} to be Bound"),
        Duration::from_secs(120),
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let c = api.get_opt(name).await.ok().flatten()?;
                (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
            }
        },
    )
    .await
}

async fn wait_ready_replicas(client: &Client, ns: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("deployment {ns}/{name} to have a ready replica"),
        Duration::from_secs(120),
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let d = api.get_opt(name).await.ok().flatten()?;
                (d.status?.ready_replicas? >= 1).then_some(())
            }
        },
    )
    .await;
}

/// Checks the restored application in `ns` (restored from a backup of `source`).
async fn check_restored(client: &Client, ns: &str) {
    let cm: ConfigMap = Api::namespaced(client.clone(), ns)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["color"], "blue");
    let labels = cm.metadata.labels.unwrap();
    assert_eq!(
        labels.get("holdfast.dev/restore").map(String::as_str),
        Some("r1")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("shop")
    );
    assert!(
        !labels.contains_key("argocd.argoproj.io/instance"),
        "{labels:?}"
    );
    let annotations = cm.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key("argocd.argoproj.io/tracking-id"),
        "{annotations:?}"
    );
    assert_eq!(annotations.get("note").map(String::as_str), Some("kept"));
    let managers: Vec<_> = cm
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == objects::FIELD_MANAGER),
        "{managers:?}"
    );

    let secret: Secret = Api::namespaced(client.clone(), ns)
        .get("creds")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"hunter2");

    let rb: RoleBinding = Api::namespaced(client.clone(), ns)
        .get("app-reads")
        .await
        .unwrap();
    assert_eq!(rb.subjects.unwrap()[0].namespace.as_deref(), Some(ns));

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let web = services.get("web").await.unwrap().spec.unwrap();
    let ip = web.cluster_ip.unwrap();
    assert!(!ip.is_empty() && ip != "None", "{ip}");
    let db = services.get("db").await.unwrap().spec.unwrap();
    assert_eq!(db.cluster_ip.as_deref(), Some("None"));

    let sts: StatefulSet = Api::namespaced(client.clone(), ns).get("db").await.unwrap();
    assert!(sts.metadata.owner_references.is_none());
    let d: Deployment = Api::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        d.metadata
            .labels
            .unwrap()
            .get("holdfast.dev/backup")
            .map(String::as_str),
        Some("b1")
    );
    // Pod template labels are untouched (the selector depends on them).
    assert_eq!(
        d.spec.unwrap().template.metadata.unwrap().labels.unwrap(),
        BTreeMap::from([("app".to_string(), "web".to_string())])
    );
}

#[tokio::test]
async fn capture_and_restore_an_application() {
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "objects").await;
    let copy = TestNamespace {
        name: format!("{}-copy", ns.name),
    };
    e.apply_yaml(&ns.name, &app(&ns.name));
    let claim = wait_claim_bound(&client, &ns.name, "data-db-0").await;
    let pv_name = claim.spec.as_ref().unwrap().volume_name.clone().unwrap();
    // The Deployment's ReplicaSet and pod exist before the capture, so it must leave them out.
    wait_ready_replicas(&client, &ns.name, "web").await;

    // Everything in the namespace.
    let all = capture(&client, &ns.name, &Selection::default()).await;
    assert!(all.warnings.is_empty(), "{:?}", all.warnings);
    let items = objects::read_archive(&all.archive).unwrap();
    assert_eq!(items.len() as u32, all.items);
    let got = listing(&items);
    for want in [
        format!("namespaces {}", ns.name),
        "configmaps settings".into(),
        "secrets creds".into(),
        "serviceaccounts app".into(),
        "serviceaccounts default".into(),
        "roles.rbac.authorization.k8s.io reader".into(),
        "rolebindings.rbac.authorization.k8s.io app-reads".into(),
        "services web".into(),
        "services db".into(),
        "deployments.apps web".into(),
        "statefulsets.apps db".into(),
        "persistentvolumeclaims data-db-0".into(),
        format!("persistentvolumes {pv_name}"),
    ] {
        assert!(got.contains(&want), "{want} missing from {got:#?}");
    }
    for r in &items {
        let what = r.resource.group_resource();
        assert!(
            !matches!(
                what.as_str(),
                "pods"
                    | "replicasets.apps"
                    | "controllerrevisions.apps"
                    | "events"
                    | "events.events.k8s.io"
                    | "endpoints"
                    | "endpointslices.discovery.k8s.io"
            ),
            "{what} {} should not be captured",
            r.name()
        );
        assert_ne!(r.name(), "kube-root-ca.crt");
        assert!(r.object.metadata.managed_fields.is_none());
    }
    let claims: Vec<String> = all.pvcs.iter().map(|c| c.name_any()).collect();
    assert_eq!(claims, ["data-db-0"]);
    // What a restore (without claims and volumes) brings back, less the objects that exist as
    // a matter of course (the namespace, its default ServiceAccount).
    let expected = items
        .iter()
        .filter(|i| {
            let r = i.resource.group_resource();
            let natural = r == "namespaces" || (r == "serviceaccounts" && i.name() == "default");
            let excluded = matches!(r.as_str(), "persistentvolumeclaims" | "persistentvolumes");
            !(natural || excluded)
        })
        .count() as u32;
    // The archive is a record: the claim keeps its binding and status.
    let archived_claim = items
        .iter()
        .find(|i| i.resource.plural == "persistentvolumeclaims")
        .unwrap();
    assert!(archived_claim.object.data["status"]["phase"] == "Bound");

    // A label selector that matches the StatefulSet's pods but not its claim: the claim comes
    // along because a selected pod mounts it; other objects stay out.
    let by_label: Selection = serde_json::from_value(serde_json::json!({
        "labelSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["database"]}]}
    }))
    .unwrap();
    let db_only = capture(&client, &ns.name, &by_label).await;
    let got = listing(&objects::read_archive(&db_only.archive).unwrap());
    let claims: Vec<String> = db_only.pvcs.iter().map(|c| c.name_any()).collect();
    assert_eq!(claims, ["data-db-0"], "{got:#?}");
    assert!(
        got.contains(&"persistentvolumeclaims data-db-0".to_string()),
        "{got:#?}"
    );
    assert!(
        got.contains(&format!("persistentvolumes {pv_name}")),
        "{got:#?}"
    );
    assert!(got.contains(&format!("namespaces {}", ns.name)), "{got:#?}");
    assert!(
        !got.iter()
            .any(|g| g.starts_with("configmaps") || g.starts_with("deployments")),
        "{got:#?}"
    );
    // Claims excluded: none, even though a selected pod mounts one.
    let no_claims: Selection = serde_json::from_value(serde_json::json!({
        "labelSelector": {"matchLabels": {"role": "database"}},
        "excludedResources": ["pvc", "persistentvolumes"]
    }))
    .unwrap();
    let none = capture(&client, &ns.name, &no_claims).await;
    assert!(none.pvcs.is_empty());
    assert!(
        !listing(&objects::read_archive(&none.archive).unwrap())
            .iter()
            .any(|g| g.starts_with("persistent"))
    );

    // The namespace is lost.
    ns.delete_and_wait(&client).await;

    // Restore a copy into another namespace.
    let mapping = BTreeMap::from([(ns.name.clone(), copy.name.clone())]);
    let report = restore(
        &client,
        &all.archive,
        &mapping,
        ExistingResourcePolicy::None,
    )
    .await;
    assert!(report.failed.is_empty(), "{report:#?}");
    assert!(report.warnings.is_empty(), "{report:#?}");
    assert_eq!(report.skipped_existing, 0, "{report:#?}");
    // The namespace, maybe the default ServiceAccount (unless its controller was first).
    assert!(report.restored > expected, "{report:#?}");
    check_restored(&client, &copy.name).await;
    // The restored workloads work: the Deployment's pod runs again.
    wait_ready_replicas(&client, &copy.name, "web").await;

    // Restore into the original namespace (gone, so recreated from the backup).
    let report = restore(
        &client,
        &all.archive,
        &BTreeMap::new(),
        ExistingResourcePolicy::None,
    )
    .await;
    assert!(report.failed.is_empty(), "{report:#?}");
    assert!(report.warnings.is_empty(), "{report:#?}");
    assert!(report.restored > expected, "{report:#?}");
    check_restored(&client, &ns.name).await;

    // Again: everything exists. None leaves it all alone, with a warning per object, but none
    // for the namespace and the default ServiceAccount, which exist as a matter of course.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"color": "red"}})),
    )
    .await
    .unwrap();
    let report = restore(
        &client,
        &all.archive,
        &BTreeMap::new(),
        ExistingResourcePolicy::None,
    )
    .await;
    assert_eq!(report.restored, 0, "{report:#?}");
    assert!(report.failed.is_empty(), "{report:#?}");
    assert_eq!(report.skipped_existing, expected, "{report:#?}");
    assert_eq!(report.warnings.len() as u32, report.skipped_existing);
    assert!(
        report.warnings.iter().any(|w| w.contains("configmaps")
            && w.contains("settings")
            && w.contains("already exists")),
        "{report:#?}"
    );
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.contains("serviceaccounts") && w.contains("/default ")),
        "{report:#?}"
    );
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["color"],
        "red"
    );

    // Update brings the backed-up version back, except for the namespace's own labels.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"labels": {holdfast_e2e::E2E_LABEL: "changed"}}}),
            ),
        )
        .await
        .unwrap();
    let report = restore(
        &client,
        &all.archive,
        &BTreeMap::new(),
        ExistingResourcePolicy::Update,
    )
    .await;
    assert!(report.failed.is_empty(), "{report:#?}");
    assert_eq!(report.skipped_existing, 0, "{report:#?}");
    assert_eq!(report.updated, report.restored, "{report:#?}");
    // Everything but the namespace, which is never updated.
    assert_eq!(report.updated, expected + 1, "{report:#?}");
    assert_eq!(
        cms.get("settings").await.unwrap().data.unwrap()["color"],
        "blue"
    );
    let labels = namespaces
        .get(&ns.name)
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels[holdfast_e2e::E2E_LABEL], "changed");

    drop(copy);
}

#[tokio::test]
async fn custom_resources_come_back_with_their_definition() {
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "objects-cr").await;
    let group = format!("e2e-{}.holdfast-test.io", random_suffix());
    let crd_name = format!("widgets.{group}");
    e.apply_yaml(
        &ns.name,
        &format!(
            r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {crd_name}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, properties: {{size: {{type: integer}}}}}}
"#
        ),
    );
    e.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{crd_name}"),
    ]);
    let ar = ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    // Discovery of a new CRD takes a moment; kubectl fails until the kind is served.
    let file = std::env::temp_dir().join(format!("{}-widget.yaml", ns.name));
    std::fs::write(
        &file,
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: big}}\nspec: {{size: 7}}\n"
        ),
    )
    .unwrap();
    let path = file.display().to_string();
    wait_until(
        "the widget to be created",
        Duration::from_secs(60),
        Some(&ns.name),
        || {
            let ok = e
                .kubectl(["apply", "-n", &ns.name, "-f", &path])
                .status
                .success();
            async move { ok.then_some(()) }
        },
    )
    .await;
    let _ = std::fs::remove_file(file);

    // Selected by short name.
    let selection: Selection =
        serde_json::from_value(serde_json::json!({"includedResources": ["wdg"]})).unwrap();
    let captured = capture(&client, &ns.name, &selection).await;
    let got = listing(&objects::read_archive(&captured.archive).unwrap());
    assert_eq!(
        got,
        [
            format!("namespaces {}", ns.name),
            format!("widgets.{group} big"),
            format!("customresourcedefinitions.apiextensions.k8s.io {crd_name}"),
        ]
    );

    // Namespace and definition are lost.
    ns.delete_and_wait(&client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        "the CRD to be deleted",
        Duration::from_secs(60),
        None,
        || {
            let crds = crds.clone();
            let name = crd_name.clone();
            async move { crds.get_opt(&name).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;

    // As the Restore controller does it: namespaces first, then (after the volumes) the rest.
    let selection = Selection::default();
    let first = objects::restore(
        &client,
        RestoreRequest {
            hooks: &[],
            namespaced_only: false,
            writer: None,
            refused_hint: "",
            archive: &captured.archive,
            selection: &selection,
            namespace_mapping: &BTreeMap::new(),
            existing: ExistingResourcePolicy::None,
            include_kinds: Some(&["namespaces"]),
            exclude_kinds: &[],
            labels: restore_labels(),
        },
    )
    .await
    .unwrap();
    assert!(first.failed.is_empty(), "{first:#?}");
    assert_eq!(first.restored, 1, "{first:#?}");
    assert!(
        crds.get_opt(&crd_name).await.unwrap().is_none(),
        "only the namespace"
    );
    let report = restore(
        &client,
        &captured.archive,
        &BTreeMap::new(),
        ExistingResourcePolicy::None,
    )
    .await;
    assert!(report.failed.is_empty(), "{report:#?}");
    assert!(report.warnings.is_empty(), "{report:#?}");
    assert_eq!(report.restored, 2, "{report:#?}");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let w = widgets.get("big").await.unwrap();
    assert_eq!(w.data["spec"]["size"], 7);
    assert_eq!(
        w.labels().get("holdfast.dev/restore").map(String::as_str),
        Some("r1")
    );

    ns.delete_and_wait(&client).await;
    let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn restore_waits_for_a_terminating_namespace() {
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "objects-term").await;
    // A foreign finalizer keeps the namespace terminating until the test lets it go.
    e.apply_yaml(
        &ns.name,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [holdfast.dev/e2e-hold]}\ndata: {a: b}\n",
    );
    let captured = capture(&client, &ns.name, &Selection::default()).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        "the namespace to be terminating",
        Duration::from_secs(30),
        None,
        || {
            let namespaces = namespaces.clone();
            let name = ns.name.clone();
            async move {
                let n = namespaces.get_opt(&name).await.ok().flatten()?;
                n.metadata.deletion_timestamp.map(|_| ())
            }
        },
    )
    .await;

    let task = {
        let client = client.clone();
        let archive = captured.archive.clone();
        tokio::spawn(async move {
            restore(
                &client,
                &archive,
                &BTreeMap::new(),
                ExistingResourcePolicy::None,
            )
            .await
        })
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let report = task.await.unwrap();
    assert!(report.failed.is_empty(), "{report:#?}");
    assert!(report.warnings.is_empty(), "{report:#?}");
    let held = cms.get("held").await.unwrap();
    assert_eq!(held.data.unwrap()["a"], "b");
    assert!(held.metadata.deletion_timestamp.is_none());
    // Finalizers are never copied: nothing would remove this one.
    assert!(
        held.metadata.finalizers.is_none(),
        "{:?}",
        held.metadata.finalizers
    );
    let restored_ns = namespaces.get(&ns.name).await.unwrap();
    assert!(restored_ns.metadata.deletion_timestamp.is_none());
}
