//! Hooks: commands run in application containers around snapshots (backup `pre`/`post`) and
//! in restored pods once they are Ready (restore `postExec`), from the Backup or Restore spec
//! or from pod annotations. This module resolves which hooks a pod gets and runs one; the
//! controllers decide when.
//!
//! Annotations mirror Velero's under `holdfast.dev` (`pre.hook.backup.holdfast.dev/command`
//! for `pre.hook.backup.velero.io/command`, …). A pod with a stage's annotations gets those
//! instead of the spec's rules for that stage, as in Velero.

pub mod exec;

use std::collections::BTreeMap;
use std::time::Duration;

use holdfast_api::backup::HookStatus;
use holdfast_api::hooks::{BackupHookRule, ExecHook, HookErrorMode, RestoreHookRule};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

pub use self::exec::{Ended, Outcome};

/// At most this many hook entries are kept in a status (failures first); counts are exact.
pub const STATUS_LIMIT: usize = 100;

/// Timeout of a hook that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restore hook waits for its pod to be Ready when it names no wait timeout.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Rule name of hooks that come from pod annotations.
pub const FROM_ANNOTATIONS: &str = "annotations";

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before the pod's volumes are snapshotted.
    Pre,
    /// Right after they are cut.
    Post,
    /// In a restored pod once it is Ready.
    Restore,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pre => "pre",
            Stage::Post => "post",
            Stage::Restore => "postRestore",
        }
    }
    /// The annotation prefix of this stage's hooks.
    fn annotation_prefix(self) -> &'static str {
        match self {
            Stage::Pre => "pre.hook.backup.holdfast.dev",
            Stage::Post => "post.hook.backup.holdfast.dev",
            Stage::Restore => "post.hook.restore.holdfast.dev",
        }
    }
}

/// A hook resolved for one pod: what runs where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Rule name, or [`FROM_ANNOTATIONS`].
    pub rule: String,
    pub stage: Stage,
    pub container: String,
    pub command: Vec<String>,
    pub on_error: HookErrorMode,
    pub timeout: Duration,
    /// Restore hooks: how long to wait for the pod to be Ready.
    pub wait_timeout: Duration,
    /// Why it cannot run (a bad annotation, a container the pod does not have).
    pub problem: Option<String>,
}

impl Planned {
    fn from_spec(rule: &str, stage: Stage, h: &ExecHook, pod: &Pod) -> Self {
        let mut p = Planned {
            rule: rule.to_string(),
            stage,
            container: String::new(),
            command: h.command.clone(),
            on_error: h.on_error,
            timeout: h.timeout.map(|d| d.as_std()).unwrap_or(DEFAULT_TIMEOUT),
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            problem: None,
        };
        p.resolve_container(h.container.as_deref(), pod);
        p
    }

    /// Sets the container: the one named, or the pod's first; a name the pod does not have
    /// is a problem.
    fn resolve_container(&mut self, named: Option<&str>, pod: &Pod) {
        let containers: Vec<&str> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| c.name.as_str())
            .collect();
        match named {
            Some(n) if containers.contains(&n) => self.container = n.to_string(),
            Some(n) => {
                self.container = n.to_string();
                self.problem.get_or_insert(format!(
                    "container {n} is not in pod {} (its containers: {}); fix the hook's container",
                    pod.name_any(),
                    containers.join(", ")
                ));
            }
            None => match containers.first() {
                Some(c) => self.container = c.to_string(),
                None => {
                    self.problem
                        .get_or_insert(format!("pod {} has no containers", pod.name_any()));
                }
            },
        }
    }

    /// The failure message when this hook failed with `outcome`.
    pub fn failure(&self, pod: &str, outcome: &Outcome) -> String {
        format!(
            "{} hook {} in pod {pod}, container {} ({}): {}",
            self.stage.as_str(),
            self.rule,
            self.container,
            self.command.join(" "),
            outcome.describe()
        )
    }
}

/// The status entry of hook `p` that ran in `pod` and ended with `outcome`.
pub fn entry(
    pod: &holdfast_api::common::NamespacedName,
    p: &Planned,
    outcome: &Outcome,
) -> HookStatus {
    HookStatus {
        rule: p.rule.clone(),
        stage: p.stage.as_str().into(),
        pod: pod.clone(),
        container: p.container.clone(),
        succeeded: outcome.succeeded(),
        exit_code: outcome.exit_code(),
        message: (!outcome.succeeded()).then(|| p.failure(&pod.name, outcome)),
        on_error: p.on_error,
        finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        )),
    }
}

/// Adds hook results to a status: counts exact, the list capped at [`STATUS_LIMIT`] with
/// failures kept first.
pub fn record(
    hooks: &mut Vec<HookStatus>,
    attempted: &mut Option<u32>,
    failed: &mut Option<u32>,
    ran: Vec<HookStatus>,
) {
    *attempted = Some(attempted.unwrap_or(0) + ran.len() as u32);
    *failed = Some(failed.unwrap_or(0) + ran.iter().filter(|h| !h.succeeded).count() as u32);
    hooks.extend(ran);
    if hooks.len() > STATUS_LIMIT {
        hooks.sort_by_key(|h| h.succeeded);
        hooks.truncate(STATUS_LIMIT);
    }
}

/// Why a hook does not run when the operator runs with `--hooks=false`.
pub const DISABLED: &str = "hooks are disabled in this installation: the operator runs with --hooks=false and has no pods/exec permission; install with the Helm value hooks.enabled=true (or config/rbac/hooks_role.yaml and --hooks=true)";

/// Runs a planned hook in `pod` (a problem found when planning fails it without running;
/// with hooks disabled, nothing runs).
pub async fn run(client: &kube::Client, enabled: bool, pod: &Pod, p: &Planned) -> Outcome {
    let refused = (!enabled).then(|| DISABLED.to_string());
    if let Some(problem) = refused.as_ref().or(p.problem.as_ref()) {
        return Outcome {
            ended: Ended::Error(problem.clone()),
            stdout: String::new(),
            stderr: String::new(),
        };
    }
    exec::run(
        client,
        &pod.namespace().unwrap_or_default(),
        &pod.name_any(),
        &p.container,
        &p.command,
        p.timeout,
    )
    .await
}

/// Whether `pod` is selected by a rule's namespaces and label selector. Pure.
fn selects(
    pod: &Pod,
    included: &[String],
    excluded: &[String],
    selector: Option<&holdfast_api::common::LabelSelector>,
) -> Result<bool, String> {
    let ns = pod.namespace().unwrap_or_default();
    let all = included.is_empty() || included.iter().any(|n| n == "*");
    if !all && !included.contains(&ns) || excluded.contains(&ns) {
        return Ok(false);
    }
    let Some(sel) = selector else {
        return Ok(true);
    };
    let parsed =
        Selector::try_from(sel.clone()).map_err(|e| format!("labelSelector {sel:?}: {}", e.0))?;
    Ok(parsed.matches(pod.labels()))
}

/// The `stage` hooks of a Backup for `pod`: its annotations when it has them, else every
/// matching rule's, in rule order. A rule whose selector cannot be parsed gives a hook with
/// a problem. Pure.
pub fn backup_hooks(rules: &[BackupHookRule], pod: &Pod, stage: Stage) -> Vec<Planned> {
    if let Some(h) = from_annotations(pod, stage) {
        return vec![h];
    }
    let mut out = Vec::new();
    for rule in rules {
        let hooks = match stage {
            Stage::Pre => &rule.pre,
            _ => &rule.post,
        };
        if hooks.is_empty() {
            continue;
        }
        match selects(
            pod,
            &rule.included_namespaces,
            &rule.excluded_namespaces,
            rule.label_selector.as_ref(),
        ) {
            Ok(false) => {}
            Ok(true) => out.extend(
                hooks
                    .iter()
                    .map(|h| Planned::from_spec(&rule.name, stage, &h.exec, pod)),
            ),
            Err(e) => {
                let mut p = Planned::from_spec(&rule.name, stage, &hooks[0].exec, pod);
                p.problem = Some(format!("hook rule {}: {e}", rule.name));
                out.push(p);
            }
        }
    }
    out
}

/// The exec hooks a Restore runs in restored `pod` once Ready: its annotations when it has
/// them, else every matching rule's. Pure.
pub fn restore_hooks(rules: &[RestoreHookRule], pod: &Pod) -> Vec<Planned> {
    if let Some(h) = from_annotations(pod, Stage::Restore) {
        return vec![h];
    }
    let mut out = Vec::new();
    for rule in rules.iter().filter(|r| !r.post_exec.is_empty()) {
        match selects(
            pod,
            &rule.included_namespaces,
            &[],
            rule.label_selector.as_ref(),
        ) {
            Ok(false) => {}
            Ok(true) => out.extend(rule.post_exec.iter().map(|h| {
                let mut p = Planned::from_spec(&rule.name, Stage::Restore, h, pod);
                if let Some(w) = rule.wait_timeout {
                    p.wait_timeout = w.as_std();
                }
                p
            })),
            Err(e) => {
                let mut p = Planned::from_spec(&rule.name, Stage::Restore, &rule.post_exec[0], pod);
                p.problem = Some(format!("hook rule {}: {e}", rule.name));
                out.push(p);
            }
        }
    }
    out
}

/// The init containers a Restore adds to a restored pod spec with these labels in namespace
/// `ns` (after mapping), from matching rules. Pure.
pub fn restore_init_containers(
    rules: &[RestoreHookRule],
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<Container> {
    let mut pod = Pod::default();
    pod.metadata.namespace = Some(ns.to_string());
    pod.metadata.labels = Some(labels.clone());
    rules
        .iter()
        .filter(|r| {
            selects(&pod, &r.included_namespaces, &[], r.label_selector.as_ref()) == Ok(true)
        })
        .flat_map(|r| r.init_containers.iter().cloned())
        .collect()
}

/// Init container from `init.hook.restore.holdfast.dev/{container-image,container-name,command}`
/// annotations of a restored object, if it has them. Pure.
pub fn init_container_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Container>, String> {
    const P: &str = "init.hook.restore.holdfast.dev";
    let Some(image) = annotations.get(&format!("{P}/container-image")) else {
        return Ok(None);
    };
    let name = annotations
        .get(&format!("{P}/container-name"))
        .cloned()
        .unwrap_or_else(|| "restore-hook".into());
    let command = match annotations.get(&format!("{P}/command")) {
        Some(c) => Some(parse_command(c).map_err(|e| format!("annotation {P}/command: {e}"))?),
        None => None,
    };
    Ok(Some(Container {
        name,
        image: Some(image.clone()),
        command,
        ..Default::default()
    }))
}

/// A hook from `<stage prefix>/{container,command,on-error,timeout}` annotations (restore:
/// `exec-timeout` and `wait-timeout`), if the pod has a command annotation. Pure.
fn from_annotations(pod: &Pod, stage: Stage) -> Option<Planned> {
    let a = pod.annotations();
    let prefix = stage.annotation_prefix();
    let key = |k: &str| format!("{prefix}/{k}");
    let raw = a.get(&key("command"))?;
    let mut p = Planned {
        rule: FROM_ANNOTATIONS.into(),
        stage,
        container: String::new(),
        command: Vec::new(),
        on_error: HookErrorMode::Fail,
        timeout: DEFAULT_TIMEOUT,
        wait_timeout: DEFAULT_WAIT_TIMEOUT,
        problem: None,
    };
    match parse_command(raw) {
        Ok(c) => p.command = c,
        Err(e) => p.problem = Some(format!("annotation {}: {e}", key("command"))),
    }
    match a.get(&key("on-error")).map(String::as_str) {
        None | Some("Fail") => {}
        Some("Continue") => p.on_error = HookErrorMode::Continue,
        Some(other) => {
            p.problem.get_or_insert(format!(
                "annotation {}: {other:?} is neither Fail nor Continue",
                key("on-error")
            ));
        }
    }
    let timeout_key = if stage == Stage::Restore {
        "exec-timeout"
    } else {
        "timeout"
    };
    for (k, slot) in [
        (timeout_key, &mut p.timeout),
        ("wait-timeout", &mut p.wait_timeout),
    ] {
        if k == "wait-timeout" && stage != Stage::Restore {
            continue;
        }
        if let Some(v) = a.get(&key(k)) {
            match v.parse::<holdfast_api::common::Duration>() {
                Ok(d) => *slot = d.as_std(),
                Err(e) => {
                    p.problem
                        .get_or_insert(format!("annotation {}: {v:?}: {e}", key(k)));
                }
            }
        }
    }
    let container = a.get(&key("container")).cloned();
    p.resolve_container(container.as_deref(), pod);
    Some(p)
}

/// A command annotation: a JSON array of strings, or one word. Pure.
fn parse_command(raw: &str) -> Result<Vec<String>, String> {
    let t = raw.trim();
    if t.starts_with('[') {
        let c: Vec<String> = serde_json::from_str(t).map_err(|e| {
            format!("not a JSON array of strings ({e}); write [\"/bin/sh\", \"-c\", \"…\"]")
        })?;
        if c.is_empty() {
            return Err("the command is empty".into());
        }
        return Ok(c);
    }
    if t.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(vec![t.to_string()])
}

/// Where the pod template of a restored object of kind `group/plural` is, and how many pods
/// it makes now (a CronJob none until it runs). Pure.
fn pod_template(group: &str, plural: &str, obj: &serde_json::Value) -> Option<(&'static str, u32)> {
    let replicas = |p: &str| {
        obj.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as u32)
            .unwrap_or(1)
    };
    Some(match (group, plural) {
        ("", "pods") => ("", 1),
        ("apps", "deployments" | "statefulsets" | "replicasets")
        | ("", "replicationcontrollers") => ("/spec/template", replicas("/spec/replicas")),
        ("apps", "daemonsets") => ("/spec/template", 1),
        ("batch", "jobs") => ("/spec/template", replicas("/spec/parallelism")),
        ("batch", "cronjobs") => ("/spec/jobTemplate/spec/template", 0),
        _ => return None,
    })
}

/// Prepares a restored object for the Restore's hooks: adds the init containers of matching
/// rules (and of `init.hook.restore.holdfast.dev` annotations) in front of its pod
/// template's own, and returns how many of the pods it makes will get `postExec` hooks.
/// Objects without a pod template are left alone. Pure.
pub fn prepare_restored(
    obj: &mut serde_json::Value,
    group: &str,
    plural: &str,
    rules: &[RestoreHookRule],
) -> Result<u32, String> {
    let Some((path, pods)) = pod_template(group, plural, obj) else {
        return Ok(0);
    };
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(template) = obj.pointer_mut(path) else {
        return Ok(0);
    };
    let meta = |k: &str| -> BTreeMap<String, String> {
        template
            .pointer(&format!("/metadata/{k}"))
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    };
    let (labels, annotations) = (meta("labels"), meta("annotations"));
    let mut init = restore_init_containers(rules, &ns, &labels);
    init.extend(init_container_from_annotations(&annotations)?);
    let mut probe = Pod::default();
    probe.metadata.namespace = Some(ns);
    probe.metadata.labels = Some(labels);
    probe.metadata.annotations = Some(annotations);
    let hooked = if restore_hooks(rules, &probe).is_empty() {
        0
    } else {
        pods
    };
    if init.is_empty() {
        return Ok(hooked);
    }
    let spec = template
        .get_mut("spec")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("the pod template has no spec")?;
    let existing = spec
        .entry("initContainers")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let list = existing
        .as_array_mut()
        .ok_or("spec.initContainers is not a list")?;
    let names: Vec<String> = list
        .iter()
        .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(String::from))
        .collect();
    let mut added = Vec::new();
    for c in init {
        if names.contains(&c.name) {
            return Err(format!(
                "restore hook init container {} has the name of one the pod template already has; rename it",
                c.name
            ));
        }
        added.push(serde_json::to_value(c).map_err(|e| e.to_string())?);
    }
    added.append(list);
    *list = added;
    Ok(hooked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_api::hooks::Hook;

    fn pod(ns: &str, labels: &[(&str, &str)], ann: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "db-0", "namespace": ns,
                "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                "annotations": ann.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            "spec": {"containers": [{"name": "db"}, {"name": "sidecar"}]}
        }))
        .expect("pod")
    }

    fn exec(container: Option<&str>, cmd: &[&str]) -> Hook {
        Hook {
            exec: ExecHook {
                container: container.map(Into::into),
                command: cmd.iter().map(|s| s.to_string()).collect(),
                on_error: HookErrorMode::Fail,
                timeout: None,
            },
        }
    }

    fn rule(name: &str, app: Option<&str>) -> BackupHookRule {
        BackupHookRule {
            name: name.into(),
            included_namespaces: vec![],
            excluded_namespaces: vec![],
            label_selector: app.map(|a| holdfast_api::common::LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), a.into())])),
                ..Default::default()
            }),
            pre: vec![exec(None, &["freeze"])],
            post: vec![exec(Some("sidecar"), &["thaw"])],
        }
    }

    #[test]
    fn rules_select_pods_by_labels_and_namespaces() {
        let p = pod("shop", &[("app", "db")], &[]);
        let rules = [rule("db", Some("db")), rule("web", Some("web"))];
        let pre = backup_hooks(&rules, &p, Stage::Pre);
        assert_eq!(pre.len(), 1);
        assert_eq!(
            (pre[0].rule.as_str(), pre[0].container.as_str()),
            ("db", "db")
        );
        assert_eq!(pre[0].timeout, DEFAULT_TIMEOUT);
        let post = backup_hooks(&rules, &p, Stage::Post);
        assert_eq!(post[0].container, "sidecar");
        let mut excluded = rule("db", None);
        excluded.excluded_namespaces = vec!["shop".into()];
        assert!(backup_hooks(&[excluded], &p, Stage::Pre).is_empty());
        let mut other = rule("db", None);
        other.included_namespaces = vec!["bank".into()];
        assert!(backup_hooks(&[other], &p, Stage::Pre).is_empty());
    }

    #[test]
    fn a_missing_container_is_a_problem_named_before_running() {
        let p = pod("shop", &[], &[]);
        let mut r = rule("db", None);
        r.pre = vec![exec(Some("postgres"), &["x"])];
        let h = &backup_hooks(&[r], &p, Stage::Pre)[0];
        let why = h.problem.as_deref().expect("problem");
        assert!(
            why.contains("container postgres is not in pod db-0"),
            "{why}"
        );
        assert!(why.contains("db, sidecar"), "{why}");
    }

    #[test]
    fn annotations_replace_the_rules_of_their_stage() {
        let p = pod(
            "shop",
            &[("app", "db")],
            &[
                (
                    "pre.hook.backup.holdfast.dev/command",
                    r#"["/bin/sh", "-c", "sync"]"#,
                ),
                ("pre.hook.backup.holdfast.dev/container", "sidecar"),
                ("pre.hook.backup.holdfast.dev/on-error", "Continue"),
                ("pre.hook.backup.holdfast.dev/timeout", "2m"),
            ],
        );
        let rules = [rule("db", Some("db"))];
        let pre = backup_hooks(&rules, &p, Stage::Pre);
        assert_eq!(pre.len(), 1);
        let h = &pre[0];
        assert_eq!(h.rule, FROM_ANNOTATIONS);
        assert_eq!(h.command, ["/bin/sh", "-c", "sync"]);
        assert_eq!(h.container, "sidecar");
        assert_eq!(h.on_error, HookErrorMode::Continue);
        assert_eq!(h.timeout, Duration::from_secs(120));
        assert!(h.problem.is_none());
        // post comes from the rule still
        assert_eq!(backup_hooks(&rules, &p, Stage::Post)[0].rule, "db");
    }

    #[test]
    fn bad_annotations_are_problems_that_name_the_annotation() {
        let p = pod(
            "shop",
            &[],
            &[
                ("post.hook.backup.holdfast.dev/command", "[not json"),
                ("post.hook.backup.holdfast.dev/timeout", "soon"),
            ],
        );
        let h = &backup_hooks(&[], &p, Stage::Post)[0];
        let why = h.problem.as_deref().expect("problem");
        assert!(
            why.starts_with("annotation post.hook.backup.holdfast.dev/command"),
            "{why}"
        );
        let p = pod(
            "shop",
            &[],
            &[("post.hook.backup.holdfast.dev/command", "sync")],
        );
        let h = &backup_hooks(&[], &p, Stage::Post)[0];
        assert_eq!(
            (h.command.as_slice(), h.container.as_str()),
            (&["sync".to_string()][..], "db")
        );
    }

    #[test]
    fn restore_hooks_and_init_containers_come_from_rules_or_annotations() {
        let rule = RestoreHookRule {
            name: "warm".into(),
            included_namespaces: vec!["shop-copy".into()],
            label_selector: None,
            init_containers: vec![Container {
                name: "prepare".into(),
                ..Default::default()
            }],
            post_exec: vec![ExecHook {
                container: None,
                command: vec!["check".into()],
                on_error: HookErrorMode::Continue,
                timeout: None,
            }],
            wait_timeout: Some(holdfast_api::common::Duration::from_secs(60)),
        };
        let p = pod("shop-copy", &[], &[]);
        let h = restore_hooks(std::slice::from_ref(&rule), &p);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].wait_timeout, Duration::from_secs(60));
        assert!(restore_hooks(std::slice::from_ref(&rule), &pod("shop", &[], &[])).is_empty());
        let init =
            restore_init_containers(std::slice::from_ref(&rule), "shop-copy", &BTreeMap::new());
        assert_eq!(init.len(), 1);
        let a = BTreeMap::from([
            (
                "init.hook.restore.holdfast.dev/container-image".to_string(),
                "busybox".to_string(),
            ),
            (
                "init.hook.restore.holdfast.dev/command".to_string(),
                r#"["sh", "-c", "true"]"#.to_string(),
            ),
        ]);
        let c = init_container_from_annotations(&a)
            .expect("ok")
            .expect("some");
        assert_eq!(
            (c.name.as_str(), c.image.as_deref()),
            ("restore-hook", Some("busybox"))
        );
        let p = pod(
            "shop",
            &[],
            &[
                ("post.hook.restore.holdfast.dev/command", "check"),
                ("post.hook.restore.holdfast.dev/wait-timeout", "90s"),
                ("post.hook.restore.holdfast.dev/exec-timeout", "5s"),
            ],
        );
        let h = &restore_hooks(&[], &p)[0];
        assert_eq!((h.wait_timeout.as_secs(), h.timeout.as_secs()), (90, 5));
    }

    #[test]
    fn restored_templates_get_init_containers_in_front_and_count_hooked_pods() {
        let rule = RestoreHookRule {
            name: "warm".into(),
            included_namespaces: vec![],
            label_selector: Some(holdfast_api::common::LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                ..Default::default()
            }),
            init_containers: vec![Container {
                name: "prepare".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            post_exec: vec![ExecHook {
                container: None,
                command: vec!["check".into()],
                on_error: HookErrorMode::Fail,
                timeout: None,
            }],
            wait_timeout: None,
        };
        let mut deploy = serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"replicas": 2, "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"initContainers": [{"name": "own"}], "containers": [{"name": "main"}]}
            }}
        });
        let n = prepare_restored(
            &mut deploy,
            "apps",
            "deployments",
            std::slice::from_ref(&rule),
        )
        .expect("ok");
        assert_eq!(n, 2);
        let names: Vec<&str> = deploy["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["prepare", "own"]);
        let mut other = serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main"}]}
        });
        assert_eq!(
            prepare_restored(&mut other, "", "pods", std::slice::from_ref(&rule)).expect("ok"),
            0
        );
        assert!(other["spec"].get("initContainers").is_none());
        let mut clash = serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
            "spec": {"initContainers": [{"name": "prepare"}], "containers": [{"name": "main"}]}
        });
        let e = prepare_restored(&mut clash, "", "pods", &[rule]).expect_err("clash");
        assert!(e.contains("prepare"), "{e}");
        let mut cm = serde_json::json!({"metadata": {"name": "x"}, "data": {}});
        assert_eq!(
            prepare_restored(&mut cm, "", "configmaps", &[]).expect("ok"),
            0
        );
    }
}
