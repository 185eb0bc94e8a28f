//! Shared state of the agent: the cluster client, configuration, and the
//! registry of pods it runs (looked up by the kubelet API for logs and exec).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kube::Client;

/// What the kubelet API needs to know about a container's current attempt.
#[derive(Debug, Clone, Default)]
pub struct ContainerRuntime {
    /// Attempt number = restart count of the attempt (names the log file).
    pub attempt: i32,
    pub pid: Option<u32>,
    pub running: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    pub image: String,
    pub image_exe: PathBuf,
    /// The container's stdin, for `attach` (containers with `stdin: true`);
    /// an empty message closes it.
    pub stdin: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    pub stdin_once: bool,
}

/// One pod the agent runs.
#[derive(Debug)]
pub struct PodEntry {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub dir: PathBuf,
    pub containers: Mutex<BTreeMap<String, ContainerRuntime>>,
}

impl PodEntry {
    pub fn container(&self, name: &str) -> Option<ContainerRuntime> {
        self.containers.lock().ok()?.get(name).cloned()
    }
    pub fn set_container(&self, name: &str, rt: ContainerRuntime) {
        if let Ok(mut m) = self.containers.lock() {
            m.insert(name.to_string(), rt);
        }
    }
    pub fn update_container(&self, name: &str, f: impl FnOnce(&mut ContainerRuntime)) {
        if let Ok(mut m) = self.containers.lock() {
            f(m.entry(name.to_string()).or_default());
        }
    }
}

pub struct Agent {
    pub client: Client,
    pub node_name: String,
    /// Node address; also the pods' IP (no network namespaces).
    pub address: String,
    pub root_dir: PathBuf,
    pub csi_state_dir: Option<PathBuf>,
    pub images_file: PathBuf,
    /// API server host and port as containers should reach it (KUBERNETES_SERVICE_*).
    pub api_host: String,
    pub api_port: u16,
    pub self_exe: PathBuf,
    pub node_cpu_cores: u64,
    pub node_memory_bytes: u64,
    pub pods: Mutex<HashMap<String, Arc<PodEntry>>>,
}

impl Agent {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }

    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<Arc<PodEntry>> {
        let pods = self.pods.lock().ok()?;
        pods.values()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }
}
