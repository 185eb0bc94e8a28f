//! What a tenant may do and how much, on the real API server: the aggregated ClusterRoles of
//! `config/rbac/tenant_roles.yaml` (by impersonation: an editor of a namespace backs it up, a
//! viewer only reads, nobody writes locations), a ResourceQuota on the number of Backups
//! (enforced by the API server; a Schedule whose run it refuses says so and tries again), and
//! the stored-bytes limit of a namespace (`holdfast.dev/stored-bytes-limit`, ours).
//! Each test with an operator runs its own, for its own namespaces (`--watch-namespaces`).

use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, STORED_BYTES_LIMIT};
use holdfast_api::schedule::Schedule;
use holdfast_e2e::operator::Operator;
use holdfast_e2e::ops::wait_backup;
use holdfast_e2e::{TestNamespace, ensure_crds, env, random_suffix, wait_until};
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

fn apply(ns: &str, yaml: &str) {
    env().apply_yaml(ns, yaml);
}

/// `kubectl create` of `yaml` in `ns`, as `user` when given; the output (Err: stderr).
fn create_as(ns: &str, user: Option<&str>, yaml: &str) -> Result<String, String> {
    let file = std::env::temp_dir().join(format!("{ns}-{}.yaml", random_suffix()));
    std::fs::write(&file, yaml).expect("write manifest");
    let mut args = vec![
        "create".to_string(),
        "-n".into(),
        ns.into(),
        "-f".into(),
        file.display().to_string(),
    ];
    if let Some(u) = user {
        args.push(format!("--as={u}"));
    }
    let out = env().kubectl(&args);
    let _ = std::fs::remove_file(file);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn backup_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n"
    )
}

/// `kubectl auth can-i VERB RESOURCE -n NS --as USER` (a SubjectAccessReview: the real
/// authorizer's answer).
fn can_i(user: &str, ns: &str, verb: &str, resource: &str, subresource: Option<&str>) -> bool {
    let mut args = vec![
        "auth".to_string(),
        "can-i".into(),
        verb.into(),
        resource.into(),
        "-n".into(),
        ns.into(),
        format!("--as={user}"),
    ];
    if let Some(s) = subresource {
        args.push(format!("--subresource={s}"));
    }
    let out = env().kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// The conditions of type `type_`.
fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The reasons of the Events about `kind/name` in `ns`.
fn event_reasons(ns: &str, kind: &str, name: &str) -> Vec<(String, String)> {
    let out = env().kubectl_ok(["get", "events", "-n", ns, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("events json");
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["involvedObject"]["kind"] == kind)
                .filter(|e| e["involvedObject"]["name"] == name)
                .map(|e| {
                    (
                        e["reason"].as_str().unwrap_or_default().to_string(),
                        e["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn aggregated_roles_let_editors_back_up_their_namespace_and_viewers_only_read() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let t1 = TestNamespace::new(&client, "roles-t1").await;
    let t2 = TestNamespace::new(&client, "roles-t2").await;
    // The roles, as config/ ships them (the chart renders the same file, tests/chart.rs).
    e.kubectl_ok([
        "apply",
        "-f",
        &e.repo
            .join("config/rbac/tenant_roles.yaml")
            .display()
            .to_string(),
    ]);
    let id = random_suffix();
    let editor = format!("hf-e2e-editor-{id}");
    let viewer = format!("hf-e2e-viewer-{id}");
    let admin = format!("hf-e2e-admin-{id}");
    for (user, role) in [(&editor, "edit"), (&viewer, "view"), (&admin, "admin")] {
        e.kubectl_ok([
            "create",
            "rolebinding",
            &format!("{role}-{id}"),
            "-n",
            &t1.name,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }
    // The clusterrole-aggregation controller copies the rules into edit/view/admin.
    wait_until(
        "the aggregated rules to reach edit, view and admin",
        Duration::from_secs(60),
        Some(&t1.name),
        || {
            let ok = can_i(&editor, &t1.name, "create", "backups.holdfast.dev", None)
                && can_i(&admin, &t1.name, "create", "schedules.holdfast.dev", None)
                && can_i(&viewer, &t1.name, "list", "restores.holdfast.dev", None);
            async move { ok.then_some(()) }
        },
    )
    .await;

    let ns = t1.name.as_str();
    let tenant_kinds = [
        "backups.holdfast.dev",
        "restores.holdfast.dev",
        "schedules.holdfast.dev",
    ];
    let operator_kinds = [
        "backupstoragelocations.holdfast.dev",
        "backuprepositories.holdfast.dev",
        "datauploads.holdfast.dev",
        "datadownloads.holdfast.dev",
    ];
    let mut wrong = Vec::new();
    let mut expect = |user: &str, ns: &str, verb: &str, res: &str, sub: Option<&str>, want| {
        if can_i(user, ns, verb, res, sub) != want {
            wrong.push(format!(
                "{user} {verb} {res}{} in {ns}: expected {want}",
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            ));
        }
    };
    for user in [&editor, &admin] {
        for res in tenant_kinds {
            for verb in [
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ] {
                expect(user, ns, verb, res, None, true);
            }
            expect(user, ns, "get", res, Some("status"), true);
            // The status is the operator's record.
            expect(user, ns, "update", res, Some("status"), false);
            expect(user, ns, "patch", res, Some("status"), false);
            // Another namespace: nothing.
            expect(user, &t2.name, "create", res, None, false);
            expect(user, &t2.name, "get", res, None, false);
        }
        for res in operator_kinds {
            expect(user, ns, "get", res, None, true);
            for verb in ["create", "update", "patch", "delete"] {
                expect(user, ns, verb, res, None, false);
            }
        }
    }
    for res in tenant_kinds {
        for verb in ["get", "list", "watch"] {
            expect(&viewer, ns, verb, res, None, true);
        }
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            expect(&viewer, ns, verb, res, None, false);
        }
        expect(&viewer, ns, "update", res, Some("status"), false);
    }
    for res in operator_kinds {
        expect(&viewer, ns, "create", res, None, false);
    }
    assert!(wrong.is_empty(), "unexpected rights:\n{}", wrong.join("\n"));

    // The same by doing it, as each user.
    let made = create_as(ns, Some(&editor), &backup_yaml("by-editor", ""));
    assert!(made.is_ok(), "an editor creates a Backup: {made:?}");
    let refused = create_as(
        ns,
        Some(&editor),
        "apiVersion: holdfast.dev/v1alpha1\nkind: BackupStorageLocation\nmetadata: {name: mine}\nspec: {s3: {bucket: b}, credentials: {secretRef: {name: s}}}\n",
    )
    .expect_err("an editor may not create a location");
    assert!(
        refused.contains("cannot create resource \"backupstoragelocations\""),
        "{refused}"
    );
    let refused = create_as(&t2.name, Some(&editor), &backup_yaml("elsewhere", ""))
        .expect_err("an editor of t1 may not create Backups in t2");
    assert!(refused.contains("forbidden"), "{refused}");
    let refused = create_as(ns, Some(&viewer), &backup_yaml("by-viewer", ""))
        .expect_err("a viewer may not create a Backup");
    assert!(
        refused.contains("cannot create resource \"backups\""),
        "{refused}"
    );
    let seen = e.kubectl_ok(["get", "backup", "by-editor", "-n", ns, "--as", &viewer]);
    assert!(seen.contains("by-editor"), "{seen}");
    e.kubectl_ok([
        "delete",
        "backup",
        "by-editor",
        "-n",
        ns,
        "--as",
        &editor,
        "--wait=false",
    ]);
}

/// Creates ResourceQuota `name` with `hard` in `ns` and waits until the quota controller has
/// counted every resource of it (admission refuses every create of a counted kind before).
/// A quota made before the controller discovered a new CRD (it looks every 30 s) is only
/// counted at its next full resync (5 min), so such a quota is made again.
async fn quota_counted(client: &Client, ns: &str, name: &str, hard: &[(&str, &str)]) {
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name},
        "spec": {"hard": hard.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()},
    }))
    .expect("quota");
    let keys: Vec<String> = hard.iter().map(|(k, _)| k.to_string()).collect();
    let counted = |q: &ResourceQuota| {
        let used = q
            .status
            .as_ref()
            .and_then(|s| s.used.clone())
            .unwrap_or_default();
        keys.iter().all(|k| used.contains_key(k))
    };
    for _ in 0..8 {
        let _ = api.delete(name, &Default::default()).await;
        wait_until("the old quota to go", Duration::from_secs(30), None, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
        api.create(&PostParams::default(), &quota)
            .await
            .expect("create quota");
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if api.get(name).await.is_ok_and(|q| counted(&q)) {
                return;
            }
        }
    }
    panic!("the quota controller never counted {keys:?} in quota {ns}/{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_count_quota_is_enforced_and_a_refused_schedule_says_so() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "count-op").await;
    let ns = TestNamespace::new(&client, "count").await;
    let bucket = format!("hf-count-{}", random_suffix());
    holdfast_e2e::app::make_bucket(&bucket).await;
    let op = Operator::start(
        &opns.name,
        "count-0",
        &[&format!("--watch-namespaces={}", ns.name)],
    );
    op.wait_ready().await;
    holdfast_e2e::app::primary_location(&client, &opns.name, &bucket).await;
    apply(
        &ns.name,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
    );
    quota_counted(
        &client,
        &ns.name,
        "backup-count",
        &[("count/backups.holdfast.dev", "2")],
    )
    .await;

    // Two Backups fit, the API server refuses the third and names the quota.
    for name in ["one", "two"] {
        create_as(&ns.name, None, &backup_yaml(name, "deletionPolicy: Retain"))
            .unwrap_or_else(|e| panic!("backup {name}: {e}"));
    }
    let refused = create_as(&ns.name, None, &backup_yaml("three", ""))
        .expect_err("the third Backup is over the quota");
    for part in [
        "exceeded quota: backup-count",
        "count/backups.holdfast.dev=2",
    ] {
        assert!(refused.contains(part), "{part:?} not in {refused}");
    }
    println!("refused by the API server: {}", refused.trim());
    for name in ["one", "two"] {
        let b = wait_backup(&client, &ns.name, name, Duration::from_secs(120)).await;
        let st = b.status.expect("status");
        assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");
    }

    // A Schedule's run over the quota: its status and an Event say so, and it tries again
    // on its own, without hammering the API server.
    apply(
        &ns.name,
        "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata:\n  name: nightly\n  annotations: {holdfast.dev/run-now: first}\nspec:\n  schedule: \"0 0 1 1 *\"\n  keep: {last: 1}\n  template: {spec: {deletionPolicy: Retain}}\n",
    );
    let schedules: Api<Schedule> = Api::namespaced(client.clone(), &ns.name);
    let st = wait_until(
        "schedule nightly to report the quota",
        Duration::from_secs(60),
        Some(&ns.name),
        || {
            let api = schedules.clone();
            async move {
                let st = api.get("nightly").await.ok()?.status?;
                (st.reason.as_deref() == Some("QuotaExceeded")).then_some(st)
            }
        },
    )
    .await;
    let msg = st.message.clone().unwrap_or_default();
    for part in [
        "nightly-now-",
        "exceeded quota: backup-count",
        "count/backups.holdfast.dev",
        "tries again every 30s",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    println!("schedule status: {msg}");
    let stalled = condition(&st.conditions, "Stalled").expect("Stalled condition");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "QuotaExceeded"),
        "{st:#?}"
    );
    let ready = condition(&st.conditions, "Ready").expect("Ready condition");
    assert_eq!(ready.status, "False", "{st:#?}");
    assert_eq!(st.last_run_now, None, "a refused run is still wanted");
    let events = event_reasons(&ns.name, "Schedule", "nightly");
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "QuotaExceeded" && m.contains("exceeded quota: backup-count")),
        "{events:?}"
    );
    // No hot loop: over 15 s at most two more attempts (the status write's own watch event
    // and the 30 s retry), one Event, and the operator still runs.
    let attempts = |log: &str| log.matches("a quota refused the run's Backup").count();
    let before = attempts(&op.logs());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let during = attempts(&op.logs()) - before;
    assert!(during <= 2, "{during} attempts in 15 s:\n{}", op.logs());
    let events = event_reasons(&ns.name, "Schedule", "nightly");
    assert_eq!(
        events.iter().filter(|(r, _)| r == "QuotaExceeded").count(),
        1,
        "{events:?}"
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        backups
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );

    // Room again: the schedule's retry starts the run by itself.
    e.kubectl_ok(["delete", "backup", "one", "-n", &ns.name, "--wait=true"]);
    let st = wait_until(
        "the refused run to start once there is room",
        Duration::from_secs(90),
        Some(&ns.name),
        || {
            let api = schedules.clone();
            async move {
                let st = api.get("nightly").await.ok()?.status?;
                (st.reason.as_deref() == Some("Active") && st.last_run_now.is_some()).then_some(st)
            }
        },
    )
    .await;
    assert_eq!(st.last_run_now.as_deref(), Some("first"), "{st:#?}");
    let names: Vec<String> = backups
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|b| b.name_any())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("nightly-now-")),
        "{names:?}"
    );

    e.kubectl_ok([
        "delete",
        "schedules,backups",
        "--all",
        "-n",
        &ns.name,
        "--wait=true",
    ]);
    drop(op);
}

/// A Deployment `writer` whose claim `writer-data` holds 256 KiB of random bytes.
const SMALL_APP: &str = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: writer-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {requests: {storage: 64Mi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: writer}
spec:
  replicas: 1
  selector: {matchLabels: {app: writer}}
  template:
    metadata: {labels: {app: writer}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "set -e; if [ ! -f /data/.seeded ]; then head -c 262144 /dev/urandom > /data/blob; touch /data/.seeded; fi; exec sleep 100000"]
        volumeMounts: [{name: data, mountPath: /data}]
      volumes:
      - name: data
        persistentVolumeClaim: {claimName: writer-data}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
"#;

fn set_limit(ns: &str, value: &str) {
    env().kubectl_ok([
        "annotate",
        "namespace",
        ns,
        "--overwrite",
        &format!("{STORED_BYTES_LIMIT}={value}"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_over_its_stored_bytes_limit_gets_no_new_backups() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "bytes-op").await;
    let ns = TestNamespace::new(&client, "bytes").await;
    let bucket = format!("hf-bytes-{}", random_suffix());
    holdfast_e2e::app::make_bucket(&bucket).await;
    let op = Operator::start(
        &opns.name,
        "bytes-0",
        &[&format!("--watch-namespaces={}", ns.name)],
    );
    op.wait_ready().await;
    holdfast_e2e::app::primary_location(&client, &opns.name, &bucket).await;
    apply(&ns.name, SMALL_APP);
    holdfast_e2e::app::wait_seeded(&ns.name, "deploy/writer").await;
    set_limit(&ns.name, "1Ki");
    let t = Duration::from_secs(180);

    // Under the limit (nothing stored yet): the first backup runs and stores its volume.
    apply(&ns.name, &backup_yaml("first", ""));
    let first = wait_backup(&client, &ns.name, "first", t).await;
    let st = first.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");
    let stored: u64 = st
        .volumes
        .iter()
        .filter_map(|v| v.copy.as_ref())
        .map(|c| c.bytes_uploaded)
        .sum();
    assert!(stored > 1024, "the first backup stored {stored} bytes");

    // At or over it: refused at start, with usage, limit, where it is set and the fix.
    apply(&ns.name, &backup_yaml("second", ""));
    let second = wait_backup(&client, &ns.name, "second", t).await;
    let st = second.status.expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Failed), "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("QuotaExceeded"), "{st:#?}");
    assert!(st.volumes.is_empty(), "nothing was done: {st:#?}");
    let msg = st.message.clone().unwrap_or_default();
    for part in [
        format!("namespace {} stores", ns.name),
        format!("({stored} bytes) in its 1 Backup,"),
        "limit of 1.0 KiB (1024 bytes)".to_string(),
        format!("{STORED_BYTES_LIMIT}=\"1Ki\" on Namespace {}", ns.name),
        "delete Backups".to_string(),
        "raise the limit".to_string(),
    ] {
        assert!(msg.contains(&part), "{part:?} not in {msg}");
    }
    println!("refused backup: {msg}");
    let events = event_reasons(&ns.name, "Backup", "second");
    assert!(
        events.iter().any(|(r, _)| r == "QuotaExceeded"),
        "{events:?}"
    );

    // A Schedule's run is not even created while the namespace is over its limit.
    apply(
        &ns.name,
        "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata:\n  name: hourly\n  annotations: {holdfast.dev/run-now: a}\nspec:\n  schedule: \"0 0 1 1 *\"\n  keep: {last: 1}\n  template: {spec: {}}\n",
    );
    let schedules: Api<Schedule> = Api::namespaced(client.clone(), &ns.name);
    let sst = wait_until(
        "schedule hourly to report the limit",
        Duration::from_secs(60),
        Some(&ns.name),
        || {
            let api = schedules.clone();
            async move {
                let st = api.get("hourly").await.ok()?.status?;
                (st.reason.as_deref() == Some("QuotaExceeded")).then_some(st)
            }
        },
    )
    .await;
    let smsg = sst.message.unwrap_or_default();
    assert!(
        smsg.contains("was not created") && smsg.contains(STORED_BYTES_LIMIT),
        "{smsg}"
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let count = backups
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(count, 2, "the schedule created no Backup");
    e.kubectl_ok(["delete", "schedule", "hourly", "-n", &ns.name]);

    // A limit that is not a quantity refuses too, naming the annotation.
    set_limit(&ns.name, "lots");
    apply(
        &ns.name,
        &backup_yaml("typo", "includedResources: [configmaps]"),
    );
    let st = wait_backup(&client, &ns.name, "typo", t)
        .await
        .status
        .expect("status");
    assert_eq!(st.reason.as_deref(), Some("QuotaInvalid"), "{st:#?}");
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("\"lots\"")),
        "{st:#?}"
    );

    // Raised by the administrator: the next backup goes through.
    set_limit(&ns.name, "1Gi");
    apply(
        &ns.name,
        &backup_yaml("third", "includedResources: [configmaps]"),
    );
    let st = wait_backup(&client, &ns.name, "third", t)
        .await
        .status
        .expect("status");
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:#?}");
    assert_eq!(st.reason, None, "{st:#?}");

    e.kubectl_ok(["delete", "backups", "--all", "-n", &ns.name, "--wait=true"]);
    drop(op);
}
