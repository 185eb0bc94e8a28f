//! Pod status as a kubelet reports it, built from the agent's view of its
//! containers. Pure: the clock is passed in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What a container is doing now (mirrors `ContainerState`).
#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
    },
}

impl CState {
    pub fn creating() -> Self {
        CState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        }
    }
    pub fn pod_initializing() -> Self {
        CState::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        }
    }
    pub fn is_running(&self) -> bool {
        matches!(self, CState::Running { .. })
    }
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
    fn to_api(&self, container_id: &Option<String>) -> ContainerState {
        match self {
            CState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            CState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(to_ts(*started_at))),
                }),
                ..Default::default()
            },
            CState::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: started_at.map(|t| Time(to_ts(t))),
                    finished_at: Some(Time(to_ts(*finished_at))),
                    container_id: container_id.clone(),
                }),
                ..Default::default()
            },
        }
    }
}

/// Converts chrono time to the jiff timestamp k8s-openapi uses, at second precision
/// (the API stores `Time` in seconds; sub-second parts would make every status differ).
pub fn to_ts(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// The agent's record of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct CStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last_state: Option<CState>,
    pub restart_count: i32,
    /// Has run at least once.
    pub ever_started: bool,
    /// Will not be (re)started again.
    pub done: bool,
    /// A restartable init container (`restartPolicy: Always`): a sidecar.
    pub sidecar: bool,
}

impl CStatus {
    pub fn new(name: &str, image: &str, state: CState) -> Self {
        CStatus {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            container_id: None,
            state,
            last_state: None,
            restart_count: 0,
            ever_started: false,
            done: false,
            sidecar: false,
        }
    }
    pub fn succeeded(&self) -> bool {
        self.done && self.state.exit_code() == Some(0)
    }
    /// An init container lets the next one start: it succeeded, or it is a
    /// sidecar that has started.
    pub fn init_complete(&self) -> bool {
        self.succeeded() || (self.sidecar && self.ever_started)
    }
    fn to_api(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            ready: self.state.is_running(),
            started: Some(self.state.is_running()),
            restart_count: self.restart_count,
            state: Some(self.state.to_api(&self.container_id)),
            last_state: Some(
                self.last_state
                    .as_ref()
                    .map(|s| s.to_api(&None))
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }
}

/// Everything the pod status is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub init: Vec<CStatus>,
    pub containers: Vec<CStatus>,
    pub volumes_ready: bool,
    /// An init container failed and will not be retried.
    pub init_failed: bool,
    pub start_time: DateTime<Utc>,
    pub host_ip: String,
    pub pod_ip: String,
    /// A reason/message for the whole pod (e.g. volume setup errors), if any.
    pub message: Option<String>,
    /// `metadata.generation` of the pod spec the agent runs.
    pub generation: Option<i64>,
}

/// The pod phase, by the rules in the README.
pub fn phase(v: &PodView) -> &'static str {
    if v.init_failed {
        return "Failed";
    }
    if !v.init.iter().all(CStatus::init_complete) {
        return "Pending";
    }
    if v.containers.iter().any(|c| !c.ever_started && !c.done) {
        return "Pending";
    }
    if !v.containers.is_empty() && v.containers.iter().all(|c| c.done) {
        if v.containers.iter().all(|c| c.state.exit_code() == Some(0)) {
            return "Succeeded";
        }
        return "Failed";
    }
    "Running"
}

/// Remembers when each condition last changed status, so `lastTransitionTime`
/// only moves on a flip.
pub type Transitions = BTreeMap<String, (String, DateTime<Utc>)>;

fn condition(
    transitions: &mut Transitions,
    now: DateTime<Utc>,
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" }.to_string();
    let at = match transitions.get(type_) {
        Some((s, t)) if *s == status => *t,
        _ => {
            transitions.insert(type_.to_string(), (status.clone(), now));
            now
        }
    };
    PodCondition {
        type_: type_.into(),
        status,
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(Time(to_ts(at))),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The full pod status. `scheduled` is the scheduler's `PodScheduled` condition,
/// kept as it was (the merge patch replaces the whole condition list).
pub fn build_status(
    v: &PodView,
    scheduled: Option<PodCondition>,
    transitions: &mut Transitions,
    now: DateTime<Utc>,
) -> PodStatus {
    let phase = phase(v);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_done = |cs: &[CStatus], pred: fn(&CStatus) -> bool| -> Vec<String> {
        cs.iter()
            .filter(|c| !pred(c))
            .map(|c| c.name.clone())
            .collect()
    };
    let uninitialized = not_done(&v.init, CStatus::init_complete);
    let mut unready = not_done(&v.containers, |c| c.state.is_running());
    unready.extend(
        v.init
            .iter()
            .filter(|c| c.sidecar && !c.state.is_running())
            .map(|c| c.name.clone()),
    );
    let initialized = uninitialized.is_empty();
    let ready = !terminal && unready.is_empty() && !v.containers.is_empty();

    let mut conditions = Vec::new();
    conditions.push(condition(
        transitions,
        now,
        "PodReadyToStartContainers",
        v.volumes_ready,
        None,
        None,
    ));
    conditions.push(if initialized {
        condition(
            transitions,
            now,
            "Initialized",
            true,
            terminal
                .then_some("PodCompleted")
                .filter(|_| !v.init.is_empty()),
            None,
        )
    } else {
        condition(
            transitions,
            now,
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                uninitialized.join(" ")
            )),
        )
    });
    for t in ["Ready", "ContainersReady"] {
        conditions.push(if ready {
            condition(transitions, now, t, true, None, None)
        } else if terminal {
            condition(transitions, now, t, false, Some("PodCompleted"), None)
        } else {
            condition(
                transitions,
                now,
                t,
                false,
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        });
    }
    conditions.push(
        scheduled.unwrap_or_else(|| condition(transitions, now, "PodScheduled", true, None, None)),
    );

    for c in conditions.iter_mut().filter(|c| c.type_ != "PodScheduled") {
        c.observed_generation = v.generation;
    }
    let init_statuses: Vec<ContainerStatus> = v.init.iter().map(CStatus::to_api).collect();
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(v.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: v.host_ip.clone(),
        }]),
        pod_ip: Some(v.pod_ip.clone()),
        pod_ips: Some(vec![PodIP {
            ip: v.pod_ip.clone(),
        }]),
        start_time: Some(Time(to_ts(v.start_time))),
        container_statuses: Some(v.containers.iter().map(CStatus::to_api).collect()),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        message: v.message.clone(),
        observed_generation: v.generation,
        ..Default::default()
    }
}

/// Exit code and kubelet-style reason for a finished process.
pub fn exit_reason(code: Option<i32>, signal: Option<i32>) -> (i32, &'static str) {
    match (code, signal) {
        (Some(0), _) => (0, "Completed"),
        (Some(c), _) => (c, "Error"),
        (None, Some(s)) => (128 + s, "Error"),
        (None, None) => (255, "Error"),
    }
}

/// The termination message kubelet would report: the file's contents (at most
/// 4096 bytes), else for `FallbackToLogsOnError` and a failed container the last
/// 80 lines (at most 2048 bytes) of its log.
pub fn termination_message(
    file: &[u8],
    policy: Option<&str>,
    exit_code: i32,
    log_tail: impl FnOnce() -> String,
) -> Option<String> {
    if !file.is_empty() {
        let cut = &file[..file.len().min(4096)];
        return Some(String::from_utf8_lossy(cut).into_owned());
    }
    if policy == Some("FallbackToLogsOnError") && exit_code != 0 {
        let tail = log_tail();
        let start = tail.len().saturating_sub(2048);
        let start = (start..=tail.len())
            .find(|i| tail.is_char_boundary(*i))
            .unwrap_or(tail.len());
        let t = &tail[start..];
        return (!t.is_empty()).then(|| t.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("valid")
    }

    fn view() -> PodView {
        PodView {
            init: vec![],
            containers: vec![CStatus::new("main", "busybox", CState::creating())],
            volumes_ready: false,
            init_failed: false,
            start_time: t(0),
            host_ip: "127.0.0.1".into(),
            pod_ip: "127.0.0.1".into(),
            message: None,
            generation: Some(1),
        }
    }

    fn cond<'a>(s: &'a PodStatus, ty: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == ty))
            .expect("condition present")
    }

    #[test]
    fn lifecycle_phases_and_conditions() {
        let mut tr = Transitions::new();
        let mut v = view();
        let s = build_status(&v, None, &mut tr, t(1));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(cond(&s, "Ready").observed_generation, Some(1));

        v.volumes_ready = true;
        v.containers[0].state = CState::Running { started_at: t(2) };
        v.containers[0].ever_started = true;
        let s = build_status(&v, None, &mut tr, t(3));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(
            cond(&s, "Ready").last_transition_time,
            Some(Time(to_ts(t(3))))
        );
        let cs = &s.container_statuses.as_ref().expect("statuses")[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());

        // unchanged condition keeps its transition time
        let s = build_status(&v, None, &mut tr, t(9));
        assert_eq!(
            cond(&s, "Ready").last_transition_time,
            Some(Time(to_ts(t(3))))
        );

        v.containers[0].state = CState::Terminated {
            exit_code: 3,
            signal: None,
            reason: "Error".into(),
            message: Some("boom".into()),
            started_at: Some(t(2)),
            finished_at: t(10),
        };
        v.containers[0].done = true;
        let s = build_status(&v, None, &mut tr, t(11));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        let term = s.container_statuses.as_ref().expect("statuses")[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .expect("terminated");
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.message.as_deref(), Some("boom"));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let mut tr = Transitions::new();
        let mut v = view();
        v.init = vec![CStatus::new(
            "init",
            "busybox",
            CState::Running { started_at: t(0) },
        )];
        v.containers[0].state = CState::pod_initializing();
        let s = build_status(&v, None, &mut tr, t(1));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
        v.init[0].state = CState::Terminated {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            message: None,
            started_at: None,
            finished_at: t(2),
        };
        v.init[0].done = true;
        v.containers[0].state = CState::Running { started_at: t(3) };
        v.containers[0].ever_started = true;
        let s = build_status(&v, None, &mut tr, t(4));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").status, "True");
        v.init_failed = true;
        assert_eq!(phase(&v), "Failed");
    }

    #[test]
    fn sidecars_count_once_started() {
        let mut v = view();
        let mut side = CStatus::new("side", "busybox", CState::Running { started_at: t(0) });
        side.sidecar = true;
        side.ever_started = true;
        v.init = vec![side];
        v.containers[0].state = CState::Running { started_at: t(1) };
        v.containers[0].ever_started = true;
        assert_eq!(phase(&v), "Running");
        let mut tr = Transitions::new();
        let s = build_status(&v, None, &mut tr, t(2));
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "Ready").status, "True");
        v.init[0].state = CState::creating();
        let s = build_status(&v, None, &mut tr, t(3));
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [side]")
        );
        v.containers[0].done = true;
        v.containers[0].state = CState::Terminated {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            message: None,
            started_at: None,
            finished_at: t(4),
        };
        assert_eq!(
            phase(&v),
            "Succeeded",
            "sidecars do not keep a pod from completing"
        );
    }

    #[test]
    fn success_and_messages() {
        let mut v = view();
        v.containers[0].state = CState::Terminated {
            exit_code: 0,
            signal: None,
            reason: "Completed".into(),
            message: None,
            started_at: None,
            finished_at: t(1),
        };
        v.containers[0].done = true;
        v.containers[0].ever_started = true;
        assert_eq!(phase(&v), "Succeeded");
        assert_eq!(exit_reason(Some(0), None), (0, "Completed"));
        assert_eq!(exit_reason(None, Some(9)), (137, "Error"));
        assert_eq!(
            termination_message(b"done", None, 0, String::new).as_deref(),
            Some("done")
        );
        assert_eq!(termination_message(b"", None, 1, || "log".into()), None);
        assert_eq!(
            termination_message(b"", Some("FallbackToLogsOnError"), 1, || "log".into()).as_deref(),
            Some("log")
        );
        assert_eq!(
            termination_message(b"", Some("FallbackToLogsOnError"), 0, || "log".into()),
            None
        );
    }
}
