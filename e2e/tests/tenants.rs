//! The tenant invariant (issue 18): a user with edit rights in a namespace backs up and
//! restores that namespace only, and never obtains through Holdfast an object or a right they
//! could not create themselves. Run against the real API server by impersonation (`kubectl
//! --as`), with the admission policies of `config/admission` bound to this test's namespaces
//! and an operator watching them.

use std::time::Duration;

use holdfast::runtime::restorer;
use holdfast_api::backup::BackupPhase;
use holdfast_api::restore::RestorePhase;
use holdfast_e2e::app::{self, WORKLOADS};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::ops::{wait_backup, wait_restore};
use holdfast_e2e::{TestNamespace, ensure_crds, env, random_suffix};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams};

/// The tenant: edit in its namespace (plus the Holdfast kinds, as the aggregated roles give).
const ALICE: &str = "alice";

/// Runs kubectl as `user` with `yaml` applied to `ns`; the output.
fn apply_as(user: &str, ns: &str, yaml: &str) -> std::process::Output {
    let file = std::env::temp_dir().join(format!("{ns}-{}.yaml", random_suffix()));
    std::fs::write(&file, yaml).expect("write manifest");
    let out = env().kubectl([
        "apply",
        "--as",
        user,
        "-n",
        ns,
        "-f",
        &file.display().to_string(),
    ]);
    let _ = std::fs::remove_file(file);
    out
}

/// `yaml` applied as alice must be refused with a message containing `why`.
fn refused(ns: &str, yaml: &str, why: &str) {
    let out = apply_as(ALICE, ns, yaml);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(why),
        "expected a refusal naming {why:?}, got: {err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn backup(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn restore(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// The admission policies of `config/admission`, renamed for this test and bound to the
/// namespaces labelled `holdfast-e2e-tenants=<id>` only (other tests' namespaces are left
/// alone); removed when dropped.
struct Policies {
    manifest: std::path::PathBuf,
}

impl Policies {
    fn install(id: &str) -> Self {
        let e = env();
        let text = std::fs::read_to_string(e.repo.join("config/admission/tenant_policy.yaml"))
            .expect("read the admission policies");
        let text = text
            .replace(
                "name: holdfast-tenant-",
                &format!("name: hf-e2e-{id}-tenant-"),
            )
            .replace(
                "policyName: holdfast-tenant-",
                &format!("policyName: hf-e2e-{id}-tenant-"),
            )
            .replace(
                "  validationActions: [Deny]\n",
                &format!(
                    "  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels: {{holdfast-e2e-tenants: \"{id}\"}}\n"
                ),
            );
        let manifest = std::env::temp_dir().join(format!("hf-e2e-policies-{id}.yaml"));
        std::fs::write(&manifest, text).expect("write policies");
        e.kubectl_ok(["apply", "-f", &manifest.display().to_string()]);
        Self { manifest }
    }
}

impl Drop for Policies {
    fn drop(&mut self) {
        let _ = env().kubectl([
            "delete",
            "--ignore-not-found",
            "-f",
            &self.manifest.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&self.manifest);
    }
}

/// Objects of t1 that a tenant's restore must or must not bring back: a Role and binding its
/// admin could make, a Role with a right its admin lacks (writing ResourceQuotas), and a
/// binding of cluster-admin.
const RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules: [{apiGroups: [''], resources: [configmaps], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: quota-writer}
rules: [{apiGroups: [''], resources: [resourcequotas], verbs: [create, update]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: root}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
";

/// Alice's rights in `ns`: ClusterRole edit, and the Holdfast kinds.
fn tenant_rights(ns: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-edit, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {ALICE}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: alice-holdfast, namespace: {ns}}}
rules: [{{apiGroups: [holdfast.dev], resources: [backups, restores, schedules], verbs: [get, list, watch, create, delete]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice-holdfast, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: alice-holdfast}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {ALICE}}}]
"
    )
}

fn exists(ns: &str, kind: &str, name: &str) -> bool {
    env()
        .kubectl(["get", kind, name, "-n", ns])
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_backs_up_and_restores_its_own_namespace_only() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "tenants-op").await;
    let t1 = TestNamespace::new(&client, "t1").await;
    let t2 = TestNamespace::new(&client, "t2").await;
    let copy = TestNamespace::new(&client, "t1-copy").await;
    let unlabelled = TestNamespace::new(&client, "t3").await;
    let id = random_suffix();
    for ns in [&t1.name, &t2.name] {
        e.kubectl_ok([
            "label",
            "namespace",
            ns,
            &format!("holdfast-e2e-tenants={id}"),
        ]);
    }
    let _policies = Policies::install(&id);
    let bucket = format!("hf-tenants-{id}");
    app::make_bucket(&bucket).await;
    let watch = format!(
        "--watch-namespaces={},{},{},{}",
        t1.name, t2.name, copy.name, unlabelled.name
    );
    let op = Operator::start(&opns.name, "tenants-0", &[&watch]);
    op.wait_ready().await;
    app::primary_location(&client, &opns.name, &bucket).await;
    e.apply_yaml(&t1.name, &tenant_rights(&t1.name));
    app::deploy_seeded(&t1.name, 1).await;
    e.apply_yaml(&t1.name, RBAC);
    let before: Vec<String> = WORKLOADS
        .iter()
        .map(|w| app::volume_checksums(&t1.name, w))
        .collect();

    // Refused at admission, each with the field to fix.
    let t1n = &t1.name;
    let t2n = &t2.name;
    refused(
        t1n,
        &backup("cluster", "{includeClusterResources: true}"),
        "spec.includeClusterResources: a Backup in namespace",
    );
    refused(
        t1n,
        &backup(
            "crb",
            "{includedResources: [configmaps, clusterrolebindings]}",
        ),
        "spec.includedResources: cluster-scoped kinds (clusterrolebindings)",
    );
    refused(
        t1n,
        &backup("other", &format!("{{includedNamespaces: [{t2n}]}}")),
        "spec.includedNamespaces",
    );
    refused(
        t1n,
        &restore("theirs", &format!("{{source: {{backup: {t2n}/b}}}}")),
        "spec.source.backup",
    );
    refused(
        t1n,
        &restore(
            "mapped",
            &format!("{{source: {{backup: b}}, namespaceMapping: {{{t1n}: {t2n}}}}}"),
        ),
        "spec.namespaceMapping",
    );
    refused(
        t1n,
        &restore(
            "crb",
            "{source: {backup: b}, includedResources: [clusterroles.rbac.authorization.k8s.io]}",
        ),
        "spec.includedResources",
    );
    // Nothing in t2: not its backups, not a restore into it.
    refused(t2n, &backup("b", "{}"), "forbidden");
    refused(t2n, &restore("r", "{source: {backup: b}}"), "forbidden");
    let out = e.kubectl(["get", "backups", "-n", t2n, "--as", ALICE]);
    assert!(!out.status.success(), "alice may list t2's backups");

    // Its own namespace: backed up...
    let out = apply_as(ALICE, t1n, &backup("b1", "{}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = wait_backup(&client, t1n, "b1", Duration::from_secs(300)).await;
    let bst = b.status.clone().expect("status");
    assert_eq!(bst.phase, Some(BackupPhase::Completed), "{bst:?}");

    // ...and restored, after its application and RBAC objects are gone (alice's own rights
    // stay, and are left alone as existing objects).
    let app_file = std::env::temp_dir().join(format!("tenants-app-{id}.yaml"));
    std::fs::write(&app_file, app::sample_app_yaml(1)).expect("write app");
    e.kubectl_ok([
        "delete",
        "-n",
        t1n,
        "--wait",
        "-f",
        &app_file.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&app_file);
    e.kubectl_ok(["delete", "pvc", "--all", "-n", t1n, "--wait"]);
    e.kubectl_ok(["delete", "role", "reader", "quota-writer", "-n", t1n]);
    e.kubectl_ok(["delete", "rolebinding", "reader", "root", "-n", t1n]);
    let out = apply_as(ALICE, t1n, &restore("r1", "{source: {backup: b1}}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = wait_restore(&client, t1n, "r1").await;
    let st = r.status.clone().expect("status");
    // The Role with a right t1's admin lacks and the binding of cluster-admin were refused by
    // the API server to the restore's identity (admin in t1); the rest came back.
    assert_eq!(st.phase, Some(RestorePhase::PartiallyFailed), "{st:?}");
    assert_eq!(st.reason.as_deref(), Some("ObjectsFailed"), "{st:?}");
    let msg = st.message.clone().unwrap_or_default();
    for name in [
        format!("roles.rbac.authorization.k8s.io {t1n}/quota-writer"),
        format!("rolebindings.rbac.authorization.k8s.io {t1n}/root"),
    ] {
        assert!(msg.contains(&name), "{name} should be refused: {msg}");
    }
    assert!(msg.contains(restorer::TENANT_HINT), "{msg}");
    assert!(!exists(t1n, "role", "quota-writer"));
    assert!(!exists(t1n, "rolebinding", "root"));
    assert!(exists(t1n, "role", "reader"));
    assert!(exists(t1n, "rolebinding", "reader"));
    for (w, want) in WORKLOADS.iter().zip(&before) {
        app::wait_seeded(t1n, w).await;
        assert_eq!(&app::volume_checksums(t1n, w), want, "{w} restored");
    }
    // The restore did not complete: the claims it put back say so, and which restore.
    let labelled = holdfast_e2e::wait_until(
        "the restored claims to be labelled incomplete",
        std::time::Duration::from_secs(60),
        Some(t1n),
        || async {
            let out = e.kubectl_ok([
                "get",
                "pvc",
                "-n",
                t1n,
                "-l",
                "holdfast.dev/restore-incomplete=true",
                "-o",
                "name",
            ]);
            (out.lines().count() == 2).then(|| out.clone())
        },
    )
    .await;
    for pvc in labelled.lines() {
        let why = e.kubectl_ok([
            "get",
            pvc,
            "-n",
            t1n,
            "-o",
            "jsonpath={.metadata.annotations.holdfast\\.dev/restore-incomplete-reason}",
        ]);
        assert!(
            why.starts_with(&format!(
                "Restore {t1n}/r1 ended PartiallyFailed (ObjectsFailed)"
            )),
            "{pvc}: {why}"
        );
    }
    // The restore's RoleBinding (admin for holdfast:tenant-restorer) is gone again.
    let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), t1n);
    let left: Vec<String> = rbs
        .list(&ListParams::default())
        .await
        .expect("list rolebindings")
        .items
        .into_iter()
        .filter_map(|rb| rb.metadata.name)
        .filter(|n| n.starts_with("holdfast-restore-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // An administrator's restore of the same backup (in the operator namespace) brings back
    // everything, the refused objects included: it writes as holdfast:restorer.
    e.apply_yaml(
        &opns.name,
        &restore(
            "admin",
            &format!(
                "{{source: {{backup: {t1n}/b1}}, namespaceMapping: {{{t1n}: {}}}, includedResources: [roles, rolebindings]}}",
                copy.name
            ),
        ),
    );
    let r = wait_restore(&client, &opns.name, "admin").await;
    let st = r.status.clone().expect("status");
    assert_eq!(st.phase, Some(RestorePhase::Completed), "{st:?}");
    assert!(exists(&copy.name, "role", "quota-writer"));
    assert!(exists(&copy.name, "rolebinding", "root"));

    // The operator refuses what the admission policies refuse, where they are not installed.
    e.apply_yaml(
        &unlabelled.name,
        &backup("crb", "{includedResources: [clusterrolebindings]}"),
    );
    let b = wait_backup(&client, &unlabelled.name, "crb", Duration::from_secs(120)).await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Failed), "{st:?}");
    assert_eq!(
        st.reason.as_deref(),
        Some("ClusterResourcesNotAllowed"),
        "{st:?}"
    );
    assert!(
        st.message
            .unwrap_or_default()
            .starts_with("spec.includedResources: clusterrolebindings is cluster-scoped"),
    );
}
