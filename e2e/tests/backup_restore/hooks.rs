//! Backup hooks on the testbed: an application frozen by its pre hook and thawed by its post
//! hook, with timestamps that order pre < snapshot cut < post < upload end; hook failures
//! (`Fail`, `Continue`, a timeout, a missing container, a missing command); hooks from pod
//! annotations; and an operator killed while a pre hook runs still thaws the application.

use std::time::Duration;

use holdfast_api::backup::{Backup, BackupPhase, Consistency, HookStage, VolumePhase};
use holdfast_api::restore::RestorePhase;
use holdfast_e2e::ops::{wait_backup, wait_restore};
use holdfast_e2e::{TestNamespace, env, wait_until};

use super::{Share, assert_no_leftovers, backup_yaml, delete_all, restore_yaml, setup};

/// A pod `name` (labels `app: name`) with containers `main` and `side` and claim
/// `name-data`. `main` counts up in `/data/counter` every 20 ms unless `/data/frozen` exists.
fn counter_app(name: &str, annotations: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}-data}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {{requests: {{storage: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
  annotations: {{{annotations}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "i=$(cat /data/counter 2>/dev/null || echo 0); while true; do if [ ! -f /data/frozen ]; then i=$((i+1)); echo $i > /data/counter; fi; sleep 0.02; done"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  - name: side
    image: busybox
    command: [sh, -c, "exec sleep 100000"]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {name}-data}}
"#
    )
}

/// Freezes the counter: sets the flag, lets the writer see it, then records the counter and
/// the time (nanoseconds) in the volume.
const FREEZE: &str = "touch /data/frozen; sleep 0.3; cat /data/counter > /data/frozen-counter; date +%s%N > /data/pre-at";
/// Thaws it, recording the time first.
const THAW: &str = "date +%s%N > /data/post-at; rm -f /data/frozen";

fn pod_sh(ns: &str, pod: &str, script: &str) -> String {
    env().kubectl_ok([
        "exec", "-n", ns, pod, "-c", "main", "--", "sh", "-c", script,
    ])
}

async fn wait_running(ns: &str, pod: &str) {
    wait_until(
        &format!("pod {pod} to count"),
        Duration::from_secs(120),
        Some(ns),
        || async move {
            let o = env().kubectl([
                "exec",
                "-n",
                ns,
                pod,
                "-c",
                "main",
                "--",
                "cat",
                "/data/counter",
            ]);
            o.status.success().then_some(())
        },
    )
    .await;
}

fn nanos(s: &str) -> i128 {
    s.trim().parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// The pre hook freezes the application right before its claim is snapshotted and the post
/// hook thaws it right after the cut: pre < snapshot cut < post < upload end, the snapshot
/// holds the frozen state (and the pre hook's marker, not the post hook's), a failing
/// `Continue` hook is recorded without failing the backup, and hooks from pod annotations run
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_freeze_the_application_only_for_the_snapshot() {
    let s = setup("hk", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    e.apply_yaml(&app_ns, &counter_app("db", ""));
    let annotated = r#""pre.hook.backup.holdfast.dev/command": '["sh", "-c", "date +%s%N > /data/annotated-pre"]', "post.hook.backup.holdfast.dev/container": side, "post.hook.backup.holdfast.dev/command": '["sh", "-c", "echo thawed-by-annotation"]'"#;
    e.apply_yaml(&app_ns, &counter_app("cache", annotated));
    wait_running(&app_ns, "db").await;
    wait_running(&app_ns, "cache").await;
    let hooks = format!(
        r#"  hooks:
    rules:
    - name: freeze-db
      labelSelector: {{matchLabels: {{app: db}}}}
      pre:
      - exec: {{command: [sh, -c, "{FREEZE}"]}}
      post:
      - exec: {{container: main, command: [sh, -c, "{THAW}"]}}
      - exec: {{container: side, command: [sh, -c, "echo note; exit 3"], onError: Continue, timeout: 10s}}
"#
    );
    e.apply_yaml(&opns, &backup_yaml("hooked", &app_ns, &hooks));
    let b = wait_backup(&s.client, &opns, "hooked", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        s.op.logs()
    );
    // Hooks and pods in status.
    let ran: Vec<(String, String, String, bool, Option<i32>)> = st
        .hooks
        .iter()
        .map(|h| {
            (
                h.pod.name.clone(),
                h.rule.clone(),
                h.stage.clone(),
                h.succeeded,
                h.exit_code,
            )
        })
        .collect();
    let want = |pod: &str, rule: &str, stage: &str, ok: bool, code: i32| {
        assert!(
            ran.contains(&(pod.into(), rule.into(), stage.into(), ok, Some(code))),
            "{pod} {rule} {stage}: {ran:#?}"
        );
    };
    want("db", "freeze-db", "pre", true, 0);
    want("db", "freeze-db", "post", true, 0);
    want("db", "freeze-db", "post", false, 3);
    want("cache", "annotations", "pre", true, 0);
    want("cache", "annotations", "post", true, 0);
    assert_eq!((st.hooks_attempted, st.hooks_failed), (Some(5), Some(1)));
    let failed = st.hooks.iter().find(|h| !h.succeeded).expect("failed hook");
    let m = failed.message.as_deref().unwrap_or_default();
    assert!(
        m.contains("exited with code 3") && m.contains("stdout: note"),
        "{m}"
    );
    assert!(
        st.hooked_pods.iter().all(|p| p.stage == HookStage::Done),
        "{:#?}",
        st.hooked_pods
    );
    let vol = |pvc: &str| {
        st.volumes
            .iter()
            .find(|v| v.pvc.name == pvc)
            .unwrap_or_else(|| panic!("volume {pvc}: {st:#?}"))
    };
    for pvc in ["db-data", "cache-data"] {
        assert_eq!(
            vol(pvc).consistency,
            Some(Consistency::ApplicationConsistent),
            "{pvc}"
        );
    }
    assert_eq!(
        vol("writer-data").consistency,
        Some(Consistency::CrashConsistent)
    );

    // Timestamps: pre < cut < post < upload end.
    let pre = nanos(&pod_sh(&app_ns, "db", "cat /data/pre-at"));
    let post = nanos(&pod_sh(&app_ns, "db", "cat /data/post-at"));
    let db = vol("db-data");
    let content = db
        .snapshot
        .as_ref()
        .and_then(|s| s.content_name.clone())
        .expect("content name");
    let cut = nanos(&e.kubectl_ok([
        "get",
        "volumesnapshotcontent",
        &content,
        "-o",
        "jsonpath={.status.creationTime}",
    ]));
    let upload = db.copy.as_ref().expect("copy").data_upload.clone();
    let ended = e.kubectl_ok([
        "get",
        "dataupload",
        &upload,
        "-n",
        &opns,
        "-o",
        "jsonpath={.status.completionTime}",
    ]);
    let ended: k8s_openapi::jiff::Timestamp = ended.trim().parse().expect("completionTime");
    assert!(pre < cut, "pre hook at {pre} ns, snapshot cut at {cut} ns");
    assert!(
        cut < post,
        "snapshot cut at {cut} ns, post hook at {post} ns"
    );
    // completionTime has whole seconds.
    assert!(
        post / 1_000_000_000 <= i128::from(ended.as_second()),
        "post hook at {post} ns, upload ended at {ended}"
    );
    // The application runs again after the post hook.
    let c1 = nanos(&pod_sh(&app_ns, "db", "cat /data/counter"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c2 = nanos(&pod_sh(&app_ns, "db", "cat /data/counter"));
    assert!(
        c2 > c1,
        "the counter runs again after the thaw ({c1} then {c2})"
    );

    // The copy holds the frozen state: the counter as the pre hook left it, the pre hook's
    // marker and not the post hook's.
    let copy = TestNamespace {
        name: format!("{app_ns}-copy"),
    };
    e.apply_yaml(
        &opns,
        &restore_yaml(
            "hooked-copy",
            &format!(
                "  source: {{backup: hooked}}\n  namespaceMapping: {{{app_ns}: {}}}\n",
                copy.name
            ),
        ),
    );
    let r = wait_restore(&s.client, &opns, "hooked-copy").await;
    assert_eq!(
        r.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Completed),
        "{:#?}",
        r.status
    );
    wait_until(
        "the restored db pod",
        Duration::from_secs(120),
        Some(&copy.name),
        || async {
            let o = env().kubectl([
                "exec",
                "-n",
                &copy.name,
                "db",
                "-c",
                "main",
                "--",
                "cat",
                "/data/frozen-counter",
            ]);
            o.status.success().then_some(())
        },
    )
    .await;
    let restored = pod_sh(
        &copy.name,
        "db",
        "echo $(cat /data/counter) $(cat /data/frozen-counter) $(test -f /data/post-at && echo post || echo no-post)",
    );
    let f: Vec<&str> = restored.split_whitespace().collect();
    assert_eq!(f.len(), 3, "{restored}");
    assert_eq!(
        f[0], f[1],
        "the snapshot holds the counter as frozen: {restored}"
    );
    assert_eq!(
        f[2], "no-post",
        "the post hook ran after the cut: {restored}"
    );
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
    drop(copy);
}

/// Each way a hook fails gives its documented result: a pre hook failing with `Fail` skips
/// that pod's claim (HookFailed) and the pod's post hook still runs; a timeout, a missing
/// container and a missing command with `Continue` are recorded with their cause and the
/// claims are snapshotted crash-consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_failures_give_their_documented_results() {
    let s = setup("hkf", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    for app in ["fail", "slow", "nocontainer", "nocommand"] {
        e.apply_yaml(&app_ns, &counter_app(app, ""));
    }
    for app in ["fail", "slow", "nocontainer", "nocommand"] {
        wait_running(&app_ns, app).await;
    }
    let rule = |name: &str, pre: &str| {
        format!(
            "    - name: {name}\n      labelSelector: {{matchLabels: {{app: {name}}}}}\n      pre:\n      - exec: {pre}\n      post:\n      - exec: {{command: [sh, -c, \"touch /data/post-ran\"]}}\n"
        )
    };
    let hooks = format!(
        "  hooks:\n    rules:\n{}{}{}{}",
        rule(
            "fail",
            "{command: [sh, -c, \"echo cannot-flush >&2; exit 1\"]}"
        ),
        rule(
            "slow",
            "{command: [sleep, \"30\"], timeout: 2s, onError: Continue}"
        ),
        rule(
            "nocontainer",
            "{container: postgres, command: [\"true\"], onError: Continue}"
        ),
        rule(
            "nocommand",
            "{command: [/no/such/command], onError: Continue}"
        ),
    );
    e.apply_yaml(&opns, &backup_yaml("failing", &app_ns, &hooks));
    let b: Backup = wait_backup(&s.client, &opns, "failing", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::PartiallyFailed),
        "{st:#?}\n{}",
        s.op.logs()
    );
    assert_eq!(st.reason.as_deref(), Some("VolumesFailed"), "{st:#?}");
    let vol = |pvc: &str| {
        st.volumes
            .iter()
            .find(|v| v.pvc.name == pvc)
            .unwrap_or_else(|| panic!("volume {pvc}: {st:#?}"))
            .clone()
    };
    let failed = vol("fail-data");
    assert_eq!(
        (failed.phase, failed.reason.as_deref()),
        (VolumePhase::Failed, Some("HookFailed")),
        "{failed:#?}"
    );
    let m = failed.message.unwrap_or_default();
    assert!(
        m.contains("pre hook fail in pod fail")
            && m.contains("exited with code 1")
            && m.contains("cannot-flush"),
        "{m}"
    );
    assert!(
        failed.snapshot.is_none(),
        "a claim behind a failed pre hook is not snapshotted"
    );
    for pvc in [
        "slow-data",
        "nocontainer-data",
        "nocommand-data",
        "writer-data",
    ] {
        let v = vol(pvc);
        assert_eq!(v.phase, VolumePhase::Completed, "{v:#?}");
        assert_eq!(v.consistency, Some(Consistency::CrashConsistent), "{v:#?}");
    }
    let hook = |pod: &str, stage: &str| {
        st.hooks
            .iter()
            .find(|h| h.pod.name == pod && h.stage == stage)
            .unwrap_or_else(|| panic!("{pod} {stage}: {:#?}", st.hooks))
            .clone()
    };
    let msg = |pod: &str| hook(pod, "pre").message.unwrap_or_default();
    assert!(
        msg("slow").contains("did not finish within its timeout of 2s"),
        "{}",
        msg("slow")
    );
    assert!(
        msg("nocontainer").contains("container postgres is not in pod nocontainer"),
        "{}",
        msg("nocontainer")
    );
    assert!(!hook("nocommand", "pre").succeeded);
    assert!(
        msg("nocommand").contains("/no/such/command"),
        "{}",
        msg("nocommand")
    );
    // Post hooks ran everywhere, also where the pre hook failed.
    for pod in ["fail", "slow", "nocontainer", "nocommand"] {
        assert!(hook(pod, "post").succeeded, "{pod}: {:#?}", st.hooks);
        pod_sh(&app_ns, pod, "test -f /data/post-ran");
    }
    assert_eq!(st.hooks_failed, Some(4), "{:#?}", st.hooks);
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}

/// The operator killed while a pre hook runs: the next operator runs the pre hooks again,
/// snapshots, runs the post hook, and the application is left running, not frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_between_pre_and_post_hooks_still_thaws() {
    let mut s = setup("hkk", 1, &["--leader-elect=false"], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    e.apply_yaml(&app_ns, &counter_app("db", ""));
    wait_running(&app_ns, "db").await;
    let hooks = format!(
        r#"  hooks:
    rules:
    - name: freeze-db
      labelSelector: {{matchLabels: {{app: db}}}}
      pre:
      - exec: {{command: [sh, -c, "touch /data/frozen; echo x >> /data/pre-runs; sleep 8"], timeout: 20s}}
      post:
      - exec: {{command: [sh, -c, "{THAW}"]}}
"#
    );
    e.apply_yaml(&opns, &backup_yaml("killed", &app_ns, &hooks));
    // The pre hook is running: the application is frozen, the status does not say so yet.
    wait_until(
        "the pre hook to freeze the application",
        Duration::from_secs(120),
        Some(&app_ns),
        || async {
            let o = env().kubectl([
                "exec",
                "-n",
                &app_ns,
                "db",
                "-c",
                "main",
                "--",
                "test",
                "-f",
                "/data/frozen",
            ]);
            o.status.success().then_some(())
        },
    )
    .await;
    s.restart_operator("hkk-1").await;
    let b = wait_backup(&s.client, &opns, "killed", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        s.op.logs()
    );
    assert!(
        st.hooks.iter().any(|h| h.stage == "post" && h.succeeded),
        "{:#?}",
        st.hooks
    );
    // Thawed and counting again; the pre hook ran at least once.
    let thawed = pod_sh(
        &app_ns,
        "db",
        "test ! -f /data/frozen && test -f /data/post-at && wc -l < /data/pre-runs",
    );
    assert!(nanos(&thawed) >= 1, "{thawed}");
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}

/// Restore hooks: an init container added to a restored pod and to a restored Deployment's
/// pods runs before them, `postExec` hooks run once the restored pods are Ready (from the
/// Restore's rules and from a pod's annotations), and a failing one is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_hooks_prepare_and_check_restored_pods() {
    let s = setup("rhk", 1, &[], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    e.apply_yaml(&app_ns, &counter_app("db", ""));
    let annotated = r#""post.hook.restore.holdfast.dev/command": '["sh", "-c", "echo restored > /data/annotated"]', "post.hook.restore.holdfast.dev/wait-timeout": 2m"#;
    e.apply_yaml(&app_ns, &counter_app("cache", annotated));
    wait_running(&app_ns, "db").await;
    wait_running(&app_ns, "cache").await;
    e.apply_yaml(&opns, &backup_yaml("src", &app_ns, ""));
    let b = wait_backup(&s.client, &opns, "src", Duration::from_secs(300)).await;
    assert_eq!(
        b.status.as_ref().and_then(|s| s.phase),
        Some(BackupPhase::Completed)
    );
    let copy = TestNamespace {
        name: format!("{app_ns}-copy"),
    };
    let init = |name: &str, app: &str| {
        format!(
            "    - name: {name}\n      labelSelector: {{matchLabels: {{app: {app}}}}}\n      initContainers:\n      - name: prepare\n        image: busybox\n        command: [sh, -c, \"echo init-ran > /data/init-marker\"]\n        volumeMounts: [{{name: data, mountPath: /data}}]\n      postExec:\n      - {{container: main, command: [sh, -c, \"cat /data/init-marker > /data/post-restore\"]}}\n"
        )
    };
    let spec = format!(
        "  source: {{backup: src}}\n  namespaceMapping: {{{app_ns}: {}}}\n  hooks:\n    rules:\n{}{}    - name: broken\n      labelSelector: {{matchLabels: {{app: db}}}}\n      postExec:\n      - {{command: [sh, -c, \"echo no-db >&2; exit 7\"], timeout: 10s}}\n",
        copy.name,
        init("db", "db"),
        init("writer", "writer"),
    );
    e.apply_yaml(&opns, &restore_yaml("hooked", &spec));
    let r = wait_restore(&s.client, &opns, "hooked").await;
    let st = r.status.clone().expect("status");
    assert_eq!(
        (st.phase, st.reason.as_deref()),
        (Some(RestorePhase::PartiallyFailed), Some("HookFailed")),
        "{st:#?}\n{}",
        s.op.logs()
    );
    assert_eq!(st.hook_pods_expected, Some(3), "{st:#?}");
    let m = st.message.clone().unwrap_or_default();
    assert!(
        m.contains("exited with code 7") && m.contains("no-db"),
        "{m}"
    );
    // The init containers ran before the pods, the post hooks after them.
    for pod in ["db", "deploy/writer"] {
        let o = env().kubectl_ok([
            "exec",
            "-n",
            &copy.name,
            pod,
            "--",
            "cat",
            "/data/post-restore",
        ]);
        assert_eq!(o.trim(), "init-ran", "{pod}");
    }
    let o = pod_sh(&copy.name, "cache", "cat /data/annotated");
    assert_eq!(o.trim(), "restored");
    let ok: Vec<(String, String)> = st
        .hooks
        .iter()
        .filter(|h| h.succeeded)
        .map(|h| (h.rule.clone(), h.stage.clone()))
        .collect();
    assert_eq!(ok.len(), 3, "{:#?}", st.hooks);
    assert!(
        ok.contains(&("annotations".into(), "postRestore".into())),
        "{ok:?}"
    );
    assert_eq!((st.hooks_attempted, st.hooks_failed), (Some(4), Some(1)));
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
    drop(copy);
}

/// An operator installed without hooks (no pods/exec) says so for every hook asked for instead
/// of running it: the pod's claim fails with the reason and how to enable hooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_disabled_are_reported_not_run() {
    let s = setup("hkd", 1, &["--hooks=false"], Share::Together).await;
    let e = env();
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    e.apply_yaml(&app_ns, &counter_app("db", ""));
    wait_running(&app_ns, "db").await;
    let hooks = format!(
        "  hooks:\n    rules:\n    - name: freeze-db\n      labelSelector: {{matchLabels: {{app: db}}}}\n      pre:\n      - exec: {{command: [sh, -c, \"{FREEZE}\"]}}\n"
    );
    e.apply_yaml(&opns, &backup_yaml("nohooks", &app_ns, &hooks));
    let b = wait_backup(&s.client, &opns, "nohooks", Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed), "{st:#?}");
    let v = st
        .volumes
        .iter()
        .find(|v| v.pvc.name == "db-data")
        .expect("db-data");
    assert_eq!(v.reason.as_deref(), Some("HookFailed"), "{v:#?}");
    let m = v.message.clone().unwrap_or_default();
    assert!(
        m.contains("hooks are disabled") && m.contains("hooks.enabled=true"),
        "{m}"
    );
    // Nothing ran in the pod.
    let o = env().kubectl([
        "exec",
        "-n",
        &app_ns,
        "db",
        "-c",
        "main",
        "--",
        "test",
        "-f",
        "/data/frozen",
    ]);
    assert!(!o.status.success(), "the pre hook must not have run");
    assert_no_leftovers(&s.client, &opns).await;
    delete_all(&s.client, &opns).await;
}
