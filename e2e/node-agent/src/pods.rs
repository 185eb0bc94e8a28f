//! Pod lifecycle: watches pods bound to the node, runs their init containers and
//! containers as local processes (each in a private mount namespace), restarts
//! them per `restartPolicy`, reports status, and honours deletion. Talks to the
//! cluster (pod watch, status patches, final delete).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodStatus};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{Notify, watch};

use crate::agent::{Agent, ContainerRuntime, PodEntry};
use crate::env::{self, PodFields, Sources};
use crate::images::{DEFAULT_PATH, ImageMap, resolve_program};
use crate::logs::{LogWriter, log_path, tail_text};
use crate::shim::{MountSpec, SHIM_ARG, ShimSpec};
use crate::status::{
    CState, CStatus, PodView, Transitions, build_status, exit_reason, termination_message,
};
use crate::volumes::{self, HostVolume};

/// Kubelet's crash-loop back-off: first restart at once, then 10 s doubling to 5 min.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its back-off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Retry interval for volume and config errors.
const SETUP_RETRY: Duration = Duration::from_secs(2);
/// Kubelet's minimum grace period for killing containers.
const MIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Init(usize),
    Main(usize),
}

/// The agent's view of one pod, and the task that writes it to the API.
struct StatusSink {
    agent: Arc<Agent>,
    namespace: String,
    name: String,
    inner: Mutex<(PodView, Transitions)>,
    scheduled: Option<PodCondition>,
    dirty: Notify,
    last: tokio::sync::Mutex<Option<PodStatus>>,
}

impl StatusSink {
    fn update(&self, f: impl FnOnce(&mut PodView)) {
        if let Ok(mut g) = self.inner.lock() {
            f(&mut g.0);
        }
        self.dirty.notify_one();
    }

    fn container(&self, kind: Kind, f: impl FnOnce(&mut CStatus)) {
        self.update(|v| {
            let c = match kind {
                Kind::Init(i) => v.init.get_mut(i),
                Kind::Main(i) => v.containers.get_mut(i),
            };
            if let Some(c) = c {
                f(c);
            }
        });
    }

    fn view(&self) -> Option<PodView> {
        self.inner.lock().ok().map(|g| g.0.clone())
    }

    async fn write(&self) -> Result<(), kube::Error> {
        let status = {
            let Ok(mut g) = self.inner.lock() else {
                return Ok(());
            };
            let (view, tr) = &mut *g;
            build_status(view, self.scheduled.clone(), tr, Utc::now())
        };
        let mut last = self.last.lock().await;
        if last.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.agent.client.clone(), &self.namespace);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        tracing::debug!(pod = %self.name, phase = ?status.phase, "wrote pod status");
        *last = Some(status);
        Ok(())
    }

    async fn run_writer(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            while let Err(e) = self.write().await {
                tracing::warn!(pod = %self.name, error = %e, "writing pod status");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Resolves when a stop is requested; yields the grace period.
async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(g) = *stop.borrow_and_update() {
            return g;
        }
        if stop.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

/// Sleeps for `d`; returns true when a stop came first.
async fn sleep_or_stop(stop: &mut watch::Receiver<Option<Duration>>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => stop.borrow().is_some(),
        _ = stopped(stop) => true,
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Absolute path of a host tool, searched in the agent's own PATH.
pub fn host_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{name}")))
}

fn pod_fields(agent: &Agent, pod: &Pod) -> PodFields {
    let spec = pod.spec.clone().unwrap_or_default();
    PodFields {
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node_name: spec.node_name.unwrap_or_default(),
        service_account: spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        pod_ip: agent.address.clone(),
        host_ip: agent.address.clone(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        node_cpu_cores: agent.node_cpu_cores,
        node_memory_bytes: agent.node_memory_bytes,
    }
}

/// `/proc/<pid>/stat` start time, to recognise our own processes after a restart.
fn proc_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19).map(str::to_string)
}

/// Kills process groups a previous agent run left behind for this pod.
fn kill_leftovers(pod_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(pod_dir.join("pids")) else {
        return;
    };
    for e in rd.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut it = text.split_whitespace();
        let (Some(pid), Some(start)) = (it.next().and_then(|p| p.parse::<u32>().ok()), it.next())
        else {
            continue;
        };
        // The group is ours if its leader is the recorded process, or if the leader
        // is gone: a pid still in use as a process group id is not handed out again.
        if pid <= 1 {
            continue;
        }
        let leader = proc_start_time(pid);
        if leader.is_none() || leader.as_deref() == Some(start) {
            tracing::info!(
                pid,
                "killing container process group left by a previous agent run"
            );
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// Kills every container process group of every pod (agent shutdown).
pub fn kill_all(agent: &Agent) {
    let Ok(pods) = agent.pods.lock() else { return };
    for p in pods.values() {
        if let Ok(cs) = p.containers.lock() {
            for c in cs.values() {
                if let Some(pid) = c.pid.filter(|p| *p > 1) {
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                }
            }
        }
    }
}

/// How one attempt to run a container ended before it ran.
struct SetupError {
    reason: &'static str,
    message: String,
}

struct Ctx {
    agent: Arc<Agent>,
    entry: Arc<PodEntry>,
    pod: Pod,
    sink: Arc<StatusSink>,
    fields: PodFields,
}

impl Ctx {
    /// Records a kubelet-style Event on the pod (fire and forget).
    fn event(&self, type_: &str, reason: &str, message: String, container: Option<(Kind, &str)>) {
        use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        let now = k8s_openapi::jiff::Timestamp::now();
        let field_path = container.map(|(k, name)| match k {
            Kind::Init(_) => format!("spec.initContainers{{{name}}}"),
            Kind::Main(_) => format!("spec.containers{{{name}}}"),
        });
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", self.fields.name, now.as_nanosecond())),
                namespace: Some(self.fields.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(self.fields.name.clone()),
                namespace: Some(self.fields.namespace.clone()),
                uid: Some(self.fields.uid.clone()),
                field_path,
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.agent.node_name.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.agent.client.clone(), &self.fields.namespace);
        tokio::spawn(async move {
            if let Err(e) = api.create(&Default::default(), &ev).await {
                tracing::warn!(error = %e, "creating event");
            }
        });
    }

    fn spec_container(&self, kind: Kind) -> Option<&Container> {
        let spec = self.pod.spec.as_ref()?;
        match kind {
            Kind::Init(i) => spec.init_containers.as_ref()?.get(i),
            Kind::Main(i) => spec.containers.get(i),
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    async fn env_sources(&self, c: &Container) -> Result<Sources, String> {
        let (cms, secrets) = env::referenced_objects(c);
        let mut s = Sources::default();
        for name in cms {
            let data = volumes::config_map_data(&self.agent, &self.fields.namespace, &name).await?;
            let data = data.map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect()
            });
            s.config_maps.insert(name, data);
        }
        for name in secrets {
            let data = volumes::secret_data(&self.agent, &self.fields.namespace, &name).await?;
            s.secrets.insert(name, data);
        }
        Ok(s)
    }

    fn base_env(&self, uid: Option<u32>) -> Vec<(String, String)> {
        let a = &self.agent;
        let hostname = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.fields.name.clone());
        vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOSTNAME".into(), hostname),
            (
                "HOME".into(),
                if uid.unwrap_or(0) == 0 {
                    "/root".into()
                } else {
                    "/".into()
                },
            ),
            ("KUBERNETES_SERVICE_HOST".into(), a.api_host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), a.api_port.to_string()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                a.api_port.to_string(),
            ),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{}:{}", a.api_host, a.api_port),
            ),
        ]
    }

    /// One run of a container: resolve, spawn, wait (or stop), collect the result.
    async fn run_attempt(
        &self,
        kind: Kind,
        c: &Container,
        vols: &BTreeMap<String, HostVolume>,
        attempt: i32,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> Result<CState, SetupError> {
        let image = c.image.clone().unwrap_or_default();
        let map = ImageMap::load(&self.agent.images_file).map_err(|e| SetupError {
            reason: "ErrImagePull",
            message: e.to_string(),
        })?;
        let exe = map.resolve(&image).map(Path::to_path_buf).ok_or_else(|| SetupError {
            reason: "ErrImagePull",
            message: format!(
                "image {image:?} is not in the node agent's image map {} (no executable for it)",
                self.agent.images_file.display()
            ),
        })?;
        let config_err = |message: String| SetupError {
            reason: "CreateContainerConfigError",
            message,
        };

        // security context: container overrides pod
        let psc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let csc = c.security_context.clone().unwrap_or_default();
        let uid = csc.run_as_user.or(psc.run_as_user).map(|u| u as u32);
        let gid = csc.run_as_group.or(psc.run_as_group).map(|g| g as u32);
        let mut groups: Vec<u32> = psc
            .supplemental_groups
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g as u32)
            .collect();
        if let Some(fs) = psc.fs_group {
            groups.push(fs as u32);
        }
        if let Some(g) = gid {
            groups.insert(0, g);
        }

        let sources = self.env_sources(c).await.map_err(config_err)?;
        let envs =
            env::resolve_env(c, &self.fields, &sources, &self.base_env(uid)).map_err(config_err)?;
        let vars: BTreeMap<String, String> = envs.iter().cloned().collect();
        let command: Vec<String> = c
            .command
            .iter()
            .flatten()
            .map(|s| env::expand(s, &vars))
            .collect();
        let args: Vec<String> = c
            .args
            .iter()
            .flatten()
            .map(|s| env::expand(s, &vars))
            .collect();
        // an image without ENTRYPOINT: the args are the command
        let (command, args) =
            if command.is_empty() && !args.is_empty() && map.has_no_entrypoint(&image) {
                (args, Vec::new())
            } else {
                (command, args)
            };

        let dir = &self.entry.dir;
        let cdir = dir.join("containers").join(&c.name);
        std::fs::create_dir_all(&cdir)
            .map_err(|e| config_err(format!("creating {}: {e}", cdir.display())))?;
        let term_file = cdir.join("termination-log");
        let err_file = cdir.join("start-error");
        for f in [&term_file, &err_file] {
            std::fs::write(f, b"")
                .map_err(|e| config_err(format!("creating {}: {e}", f.display())))?;
            let _ = std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o666));
        }

        // mounts
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = vols.get(&m.name).ok_or_else(|| {
                config_err(format!("volume {:?} is not defined in the pod", m.name))
            })?;
            let sub = match (&m.sub_path, &m.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => Some(env::expand(e, &vars)),
                _ => None,
            };
            let mut source = v.path.clone();
            if let Some(sub) = sub {
                if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
                    return Err(config_err(format!("invalid subPath {sub:?}")));
                }
                source = source.join(&sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| {
                        config_err(format!("creating subPath {}: {e}", source.display()))
                    })?;
                }
            }
            mounts.push(MountSpec {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: m.read_only == Some(true) || v.read_only,
            });
        }
        let term_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        mounts.push(MountSpec {
            source: term_file.clone(),
            target: PathBuf::from(&term_path),
            read_only: false,
        });

        let started_at = Utc::now();
        let program = match resolve_program(
            &image,
            &exe,
            &command,
            &args,
            vars.get("PATH").map(String::as_str),
            is_executable,
        ) {
            Ok(p) => p,
            Err(message) => {
                return Ok(CState::Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(message),
                    started_at: None,
                    finished_at: Utc::now(),
                });
            }
        };
        let cwd = PathBuf::from(
            c.working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        );
        let spec = ShimSpec {
            mounts,
            program: program.path.clone(),
            argv0: program.argv0.clone(),
            args: program.args.clone(),
            cwd: Some(cwd.clone()),
            uid,
            gid,
            groups: groups.clone(),
            error_file: Some(err_file.clone()),
        };
        let spec_json = serde_json::to_string(&spec).map_err(|e| config_err(e.to_string()))?;
        let log = LogWriter::create(&log_path(dir, &c.name, attempt))
            .await
            .map_err(|e| config_err(format!("creating log file: {e}")))?;

        let mut cmd = tokio::process::Command::new(host_tool("setpriv"));
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(host_tool("unshare"))
            .args(["--mount", "--propagation", "private", "--"])
            .arg(&self.agent.self_exe)
            .arg(SHIM_ARG)
            .arg(&spec_json)
            .env_clear()
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(if c.stdin == Some(true) {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| SetupError {
            reason: "RunContainerError",
            message: format!("spawning container: {e}"),
        })?;
        let Some(pid) = child.id().filter(|p| *p > 1) else {
            return Err(SetupError {
                reason: "RunContainerError",
                message: "container process exited before it could be tracked".into(),
            });
        };
        let pids = dir.join("pids");
        let _ = std::fs::create_dir_all(&pids);
        let _ = std::fs::write(
            pids.join(&c.name),
            format!("{pid} {}", proc_start_time(pid).unwrap_or_default()),
        );
        let mut copiers = Vec::new();
        if let Some(out) = child.stdout.take() {
            copiers.push(tokio::spawn(log.clone().copy_from("stdout", out)));
        }
        if let Some(err) = child.stderr.take() {
            copiers.push(tokio::spawn(log.clone().copy_from("stderr", err)));
        }
        // stdin: true — attach sessions write into it; an empty message closes it
        let stdin_tx = child.stdin.take().map(|mut pipe| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Some(buf) = rx.recv().await {
                    if buf.is_empty() || pipe.write_all(&buf).await.is_err() {
                        break;
                    }
                    let _ = pipe.flush().await;
                }
            });
            tx
        });
        self.entry.set_container(
            &c.name,
            ContainerRuntime {
                attempt,
                pid: Some(pid),
                running: true,
                env: envs.clone(),
                cwd: Some(cwd),
                uid,
                gid,
                groups,
                image: image.clone(),
                image_exe: exe.clone(),
                stdin: stdin_tx,
                stdin_once: c.stdin_once == Some(true),
            },
        );
        let uid_str = self.fields.uid.clone();
        let cname = c.name.clone();
        self.sink.container(kind, |s| {
            s.state = CState::Running { started_at };
            s.ever_started = true;
            s.restart_count = attempt;
            s.container_id = Some(format!("holdfast://{uid_str}/{cname}/{attempt}"));
            s.image_id = format!("holdfast-image://{}", exe.display());
        });
        tracing::info!(pod = %self.fields.name, container = %c.name, pid, attempt, program = %program.path.display(), "container started");
        self.event(
            "Normal",
            "Pulled",
            format!(
                "Container image {image:?} already present on machine (mapped to {})",
                exe.display()
            ),
            Some((kind, &c.name)),
        );
        self.event(
            "Normal",
            "Created",
            format!("Created container: {}", c.name),
            Some((kind, &c.name)),
        );
        self.event(
            "Normal",
            "Started",
            format!("Started container {}", c.name),
            Some((kind, &c.name)),
        );

        let gpid = Pid::from_raw(-(pid as i32));
        let status = tokio::select! {
            s = child.wait() => s,
            grace = stopped(stop) => {
                let grace = grace.max(MIN_GRACE);
                self.event("Normal", "Killing", format!("Stopping container {}", c.name), Some((kind, &c.name)));
                let _ = kill(gpid, Signal::SIGTERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = kill(gpid, Signal::SIGKILL);
                        child.wait().await
                    }
                }
            }
        };
        // like a PID namespace: when the main process ends, everything in the container goes
        let _ = kill(gpid, Signal::SIGKILL);
        for h in copiers {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        let _ = std::fs::remove_file(pids.join(&c.name));
        self.entry.update_container(&c.name, |rt| {
            rt.running = false;
            rt.pid = None;
        });
        let finished_at = Utc::now();
        let start_error = std::fs::read_to_string(&err_file).unwrap_or_default();
        if !start_error.is_empty() {
            return Ok(CState::Terminated {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(start_error),
                started_at: Some(started_at),
                finished_at,
            });
        }
        let (code, signal) = match &status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal())
            }
            Err(_) => (None, None),
        };
        let (exit_code, reason) = exit_reason(code, signal);
        let file = std::fs::read(&term_file).unwrap_or_default();
        let lp = log_path(dir, &c.name, attempt);
        let message = termination_message(
            &file,
            c.termination_message_policy.as_deref(),
            exit_code,
            || tail_text(&lp, 80),
        );
        tracing::info!(pod = %self.fields.name, container = %c.name, exit_code, "container exited");
        Ok(CState::Terminated {
            exit_code,
            signal,
            reason: reason.into(),
            message,
            started_at: Some(started_at),
            finished_at,
        })
    }

    /// Runs one container until it is done per restart policy (or stopped).
    /// Returns whether it ended successfully.
    async fn supervise(
        &self,
        kind: Kind,
        vols: &BTreeMap<String, HostVolume>,
        mut stop: watch::Receiver<Option<Duration>>,
        first_attempt: i32,
    ) -> bool {
        let Some(c) = self.spec_container(kind).cloned() else {
            return false;
        };
        let policy = self.restart_policy();
        let mut attempt = first_attempt;
        let mut delay = Duration::ZERO;
        let mut last_setup_error: Option<String> = None;
        loop {
            if stop.borrow().is_some() {
                self.sink.container(kind, |s| s.done = true);
                return false;
            }
            let begun = tokio::time::Instant::now();
            match self.run_attempt(kind, &c, vols, attempt, &mut stop).await {
                Err(e) => {
                    if last_setup_error.as_deref() != Some(e.message.as_str()) {
                        tracing::warn!(pod = %self.fields.name, container = %c.name, reason = e.reason, message = %e.message, "container not started");
                        last_setup_error = Some(e.message.clone());
                        self.event(
                            "Warning",
                            "Failed",
                            format!("Error: {}: {}", e.reason, e.message),
                            Some((kind, &c.name)),
                        );
                    }
                    let reason = if e.reason == "ErrImagePull" && delay > Duration::ZERO {
                        "ImagePullBackOff"
                    } else {
                        e.reason
                    };
                    self.sink.container(kind, |s| {
                        s.state = CState::Waiting {
                            reason: reason.into(),
                            message: Some(e.message.clone()),
                        }
                    });
                    delay = SETUP_RETRY;
                    if sleep_or_stop(&mut stop, SETUP_RETRY).await {
                        self.sink.container(kind, |s| s.done = true);
                        return false;
                    }
                }
                Ok(term) => {
                    last_setup_error = None;
                    let code = term.exit_code().unwrap_or(1);
                    let stopping = stop.borrow().is_some();
                    let restart = !stopping
                        && match kind {
                            Kind::Init(_) if c.restart_policy.as_deref() == Some("Always") => true,
                            Kind::Init(_) => code != 0 && policy != "Never",
                            Kind::Main(_) => {
                                policy == "Always" || (policy == "OnFailure" && code != 0)
                            }
                        };
                    if !restart {
                        self.sink.update(|v| {
                            if let Kind::Init(_) = kind
                                && c.restart_policy.as_deref() != Some("Always")
                                && code != 0
                                && !stopping
                            {
                                v.init_failed = true;
                            }
                        });
                        self.sink.container(kind, |s| {
                            s.state = term.clone();
                            s.done = true;
                        });
                        return code == 0;
                    }
                    let ran = begun.elapsed();
                    let wait = if ran >= BACKOFF_RESET_AFTER || attempt == first_attempt {
                        Duration::ZERO
                    } else if delay.is_zero() || delay == SETUP_RETRY {
                        BACKOFF_START
                    } else {
                        (delay * 2).min(BACKOFF_MAX)
                    };
                    delay = wait;
                    let name = c.name.clone();
                    let pod_label = format!(
                        "{}_{}({})",
                        self.fields.name, self.fields.namespace, self.fields.uid
                    );
                    self.sink.container(kind, |s| {
                        if wait.is_zero() {
                            s.state = term.clone();
                        } else {
                            s.last_state = Some(term.clone());
                            s.state = CState::Waiting {
                                reason: "CrashLoopBackOff".into(),
                                message: Some(format!("back-off {}s restarting failed container={name} pod={pod_label}", wait.as_secs())),
                            };
                        }
                    });
                    if !wait.is_zero() {
                        self.event(
                            "Warning",
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {} in pod {pod_label}",
                                c.name
                            ),
                            Some((kind, &c.name)),
                        );
                    }
                    if sleep_or_stop(&mut stop, wait).await {
                        self.sink.container(kind, |s| {
                            s.state = term.clone();
                            s.done = true;
                        });
                        return false;
                    }
                    attempt += 1;
                    self.sink.container(kind, |s| {
                        s.last_state = Some(term.clone());
                        s.restart_count = attempt;
                    });
                }
            }
        }
    }

    /// Volumes, then init containers in order, then all containers.
    async fn lifecycle(
        self: Arc<Self>,
        mut stop: watch::Receiver<Option<Duration>>,
        first_attempts: HashMap<String, i32>,
    ) {
        let vols = loop {
            match volumes::prepare(&self.agent, &self.pod, &self.entry.dir, &self.fields).await {
                Ok(v) => break v,
                Err(e) => {
                    if self.sink.view().and_then(|v| v.message).as_deref() != Some(e.as_str()) {
                        tracing::warn!(pod = %self.fields.name, error = %e, "preparing volumes");
                        self.event("Warning", "FailedMount", e.clone(), None);
                    }
                    self.sink.update(|v| v.message = Some(e.clone()));
                    if sleep_or_stop(&mut stop, SETUP_RETRY).await {
                        self.sink.update(|v| {
                            v.containers
                                .iter_mut()
                                .chain(v.init.iter_mut())
                                .for_each(|c| c.done = true)
                        });
                        return;
                    }
                }
            }
        };
        self.sink.update(|v| {
            v.volumes_ready = true;
            v.message = None;
        });
        if let Some(every) = volumes::token_refresh_interval(&self.pod) {
            let me = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                while !sleep_or_stop(&mut stop, every).await {
                    if let Err(e) = volumes::refresh_tokens(&me.agent, &me.pod, &me.entry.dir).await
                    {
                        tracing::warn!(pod = %me.fields.name, error = %e, "refreshing service account token");
                    }
                }
            });
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let first = |name: &str| first_attempts.get(name).copied().unwrap_or(0);
        let vols = Arc::new(vols);
        // sidecars (restartable init containers) get their own stop signal: they are
        // stopped with the pod, or once every regular container is done
        let (side_tx, side_rx) = watch::channel(None::<Duration>);
        let mut sidecars = tokio::task::JoinSet::new();
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let kind = Kind::Init(i);
            if c.restart_policy.as_deref() == Some("Always") {
                self.sink.container(kind, |s| s.sidecar = true);
                let me = self.clone();
                let v = vols.clone();
                let st = side_rx.clone();
                let fa = first(&c.name);
                sidecars.spawn(async move { me.supervise(kind, &v, st, fa).await });
                // the next init container starts once the sidecar runs
                let mut waited = stop.clone();
                loop {
                    let started = self
                        .sink
                        .view()
                        .is_some_and(|v| v.init.get(i).is_some_and(|c| c.ever_started || c.done));
                    if started {
                        break;
                    }
                    if sleep_or_stop(&mut waited, Duration::from_millis(100)).await {
                        break;
                    }
                }
                continue;
            }
            if !self
                .supervise(kind, &vols, stop.clone(), first(&c.name))
                .await
            {
                self.sink
                    .update(|v| v.containers.iter_mut().for_each(|c| c.done = true));
                let _ = side_tx.send(Some(MIN_GRACE));
                while sidecars.join_next().await.is_some() {}
                return;
            }
        }
        self.sink.update(|v| {
            for c in v.containers.iter_mut() {
                c.state = CState::creating();
            }
        });
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let me = self.clone();
            let vols = vols.clone();
            let stop = stop.clone();
            let fa = first(&c.name);
            set.spawn(async move { me.supervise(Kind::Main(i), &vols, stop, fa).await });
        }
        let mut pod_stop = stop.clone();
        let forward = {
            let side_tx = side_tx.clone();
            tokio::spawn(async move {
                let g = stopped(&mut pod_stop).await;
                let _ = side_tx.send(Some(g));
            })
        };
        while set.join_next().await.is_some() {}
        let grace =
            Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
        let _ = side_tx.send(
            Some(*stop.borrow())
                .flatten()
                .or(Some(grace))
                .map(|g| g.min(grace)),
        );
        while sidecars.join_next().await.is_some() {}
        forward.abort();
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Restart counts to continue from when the agent adopts a pod it ran before.
fn adopted_attempts(pod: &Pod) -> HashMap<String, i32> {
    let st = pod.status.clone().unwrap_or_default();
    st.container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .map(|cs| {
            let ran = cs
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                || cs
                    .last_state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some());
            (cs.name.clone(), cs.restart_count + i32::from(ran))
        })
        .collect()
}

fn initial_view(agent: &Agent, pod: &Pod, attempts: &HashMap<String, i32>) -> PodView {
    initial_view_for(pod, &agent.address, attempts)
}

fn initial_view_for(pod: &Pod, address: &str, attempts: &HashMap<String, i32>) -> PodView {
    let spec = pod.spec.clone().unwrap_or_default();
    let has_init = spec.init_containers.as_ref().is_some_and(|v| !v.is_empty());
    let mk = |c: &Container, state: CState| {
        let mut s = CStatus::new(&c.name, c.image.as_deref().unwrap_or_default(), state);
        s.restart_count = attempts.get(&c.name).copied().unwrap_or(0);
        s
    };
    PodView {
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| mk(c, CState::creating()))
            .collect(),
        containers: spec
            .containers
            .iter()
            .map(|c| {
                mk(
                    c,
                    if has_init {
                        CState::pod_initializing()
                    } else {
                        CState::creating()
                    },
                )
            })
            .collect(),
        volumes_ready: false,
        init_failed: false,
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0))
            .unwrap_or_else(Utc::now),
        host_ip: address.to_string(),
        pod_ip: address.to_string(),
        message: None,
        generation: pod.metadata.generation,
    }
}

/// One pod from first sight to final delete.
async fn pod_worker(agent: Arc<Agent>, entry: Arc<PodEntry>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let ns = entry.namespace.clone();
    let name = entry.name.clone();
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled").cloned());
    let attempts = adopted_attempts(&pod);
    let sink = Arc::new(StatusSink {
        agent: agent.clone(),
        namespace: ns.clone(),
        name: name.clone(),
        inner: Mutex::new((initial_view(&agent, &pod, &attempts), Transitions::new())),
        scheduled,
        dirty: Notify::new(),
        last: tokio::sync::Mutex::new(None),
    });
    kill_leftovers(&entry.dir);
    let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
    let mut writer = None;
    let mut life = None;
    let already_done = is_terminal(&pod);
    if !already_done && pod.metadata.deletion_timestamp.is_none() {
        tracing::info!(pod = %name, namespace = %ns, "starting pod");
        writer = Some(tokio::spawn(sink.clone().run_writer()));
        sink.dirty.notify_one();
        let ctx = Arc::new(Ctx {
            agent: agent.clone(),
            entry: entry.clone(),
            pod: pod.clone(),
            sink: sink.clone(),
            fields: pod_fields(&agent, &pod),
        });
        life = Some(tokio::spawn(ctx.lifecycle(stop_rx, attempts)));
    }
    // wait for deletion
    let (grace, gone) = loop {
        let current = rx.borrow_and_update().clone();
        match current {
            None => break (Duration::ZERO, true),
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                let g = p
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0) as u64;
                break (Duration::from_secs(g), false);
            }
            _ => {}
        }
        if rx.changed().await.is_err() {
            break (Duration::ZERO, true);
        }
    };
    tracing::info!(pod = %name, namespace = %ns, grace_seconds = grace.as_secs(), "stopping pod");
    let _ = stop_tx.send(Some(grace));
    if let Some(l) = life {
        let _ = l.await;
    }
    if let Some(w) = writer {
        w.abort();
        if !gone && let Err(e) = sink.write().await {
            tracing::warn!(pod = %name, error = %e, "writing final status");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&entry.dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(pod = %name, error = %e, "removing pod dir");
    }
    if !gone {
        let api: Api<Pod> = Api::namespaced(agent.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(entry.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => tracing::info!(pod = %name, namespace = %ns, "deleted pod"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "final pod delete"),
        }
    }
    if let Ok(mut pods) = agent.pods.lock() {
        pods.remove(&entry.uid);
    }
}

/// Removes pod dirs under the root dir that belong to no known pod.
fn clean_orphans(agent: &Agent, known: &HashSet<String>) {
    let Ok(rd) = std::fs::read_dir(agent.root_dir.join("pods")) else {
        return;
    };
    for e in rd.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if !known.contains(&uid) {
            kill_leftovers(&e.path());
            tracing::info!(%uid, "removing state of a pod that no longer exists");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Watches pods bound to this node and runs a worker per pod.
pub async fn run(agent: Arc<Agent>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node_name));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        };
        // forget workers that ended
        workers.retain(|uid, tx| {
            if tx.is_closed() {
                finished.insert(uid.clone());
                false
            } else {
                true
            }
        });
        match ev {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                let Some(uid) = p.metadata.uid.clone() else {
                    continue;
                };
                listed.insert(uid.clone());
                if let Some(tx) = workers.get(&uid) {
                    let _ = tx.send(Some(p));
                } else if !finished.contains(&uid) {
                    let entry = Arc::new(PodEntry {
                        uid: uid.clone(),
                        namespace: p.metadata.namespace.clone().unwrap_or_default(),
                        name: p.metadata.name.clone().unwrap_or_default(),
                        dir: agent.pod_dir(&uid),
                        containers: Mutex::new(BTreeMap::new()),
                    });
                    if let Ok(mut pods) = agent.pods.lock() {
                        pods.insert(uid.clone(), entry.clone());
                    }
                    let (tx, rx) = watch::channel(Some(p));
                    tokio::spawn(pod_worker(agent.clone(), entry, rx));
                    workers.insert(uid, tx);
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(tx) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::InitDone => {
                for (uid, tx) in &workers {
                    if !listed.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                clean_orphans(&agent, &listed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn adoption_continues_restart_counts() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 2,
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
                {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1}}},
                {"name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]}
        }));
        let a = adopted_attempts(&p);
        assert_eq!(
            a.get("a"),
            Some(&3),
            "the running attempt 2 is gone: next is 3"
        );
        assert_eq!(a.get("b"), Some(&5), "attempt 4 ran and failed: next is 5");
        assert_eq!(a.get("c"), Some(&0), "never ran: starts at 0");
        assert!(!is_terminal(&p));
    }

    #[test]
    fn initial_view_waits_for_init_containers() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "generation": 3},
            "spec": {"initContainers": [{"name": "i", "image": "busybox"}], "containers": [{"name": "m", "image": "busybox"}]}
        }));
        let init = CState::creating();
        let v = PodView {
            init: vec![CStatus::new("i", "busybox", init)],
            containers: vec![CStatus::new("m", "busybox", CState::pod_initializing())],
            volumes_ready: false,
            init_failed: false,
            start_time: Utc::now(),
            host_ip: "127.0.0.1".into(),
            pod_ip: "127.0.0.1".into(),
            message: None,
            generation: Some(3),
        };
        let got = initial_view_for(&p, "127.0.0.1", &HashMap::new());
        assert_eq!(got.init, v.init);
        assert_eq!(got.containers, v.containers);
        assert_eq!(got.generation, Some(3));
        assert_eq!(crate::status::phase(&got), "Pending");
    }

    #[test]
    fn terminal_pods_are_not_rerun() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {"phase": "Succeeded"}}),
        );
        assert!(is_terminal(&p));
    }
}
