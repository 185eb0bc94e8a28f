//! Node registration, node status heartbeat and the node Lease in
//! `kube-node-lease`. Talks to the cluster as `system:node:<name>`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::agent::Agent;
use crate::status::to_ts;

pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// The feature the API server checks before passing exec/attach/port-forward
/// WebSockets straight through to the kubelet (Kubernetes 1.36, beta, on by default).
pub const EXTEND_WEBSOCKETS_TO_KUBELET: &str = "ExtendWebSocketsToKubelet";

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub port: u16,
    pub hostname: String,
    pub kubelet_version: String,
    pub ephemeral_storage_bytes: u64,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

pub fn node_status(
    agent: &Agent,
    info: &NodeInfo,
    ready_since: chrono::DateTime<Utc>,
) -> NodeStatus {
    let now = Time(to_ts(Utc::now()));
    let since = Time(to_ts(ready_since));
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since.clone()),
    };
    let mut capacity = BTreeMap::new();
    capacity.insert(
        "cpu".to_string(),
        Quantity(agent.node_cpu_cores.to_string()),
    );
    capacity.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", agent.node_memory_bytes / 1024)),
    );
    capacity.insert("pods".to_string(), Quantity("110".into()));
    capacity.insert(
        "ephemeral-storage".to_string(),
        Quantity(format!("{}Ki", info.ephemeral_storage_bytes / 1024)),
    );
    NodeStatus {
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "holdfast-node-agent is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: agent.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: info.hostname.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: info.port as i32,
            }),
        }),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!(
                "holdfast-node-agent://{}",
                env!("CARGO_PKG_VERSION")
            ),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: info.kubelet_version.clone(),
            machine_id: read_trim("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: read_trim("/etc/machine-id"),
            swap: None,
        }),
        declared_features: Some(vec![EXTEND_WEBSOCKETS_TO_KUBELET.to_string()]),
        ..Default::default()
    }
}

/// Creates the Node if missing and writes its status.
pub async fn register(
    agent: &Agent,
    info: &NodeInfo,
    ready_since: chrono::DateTime<Utc>,
) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(agent.client.clone());
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", agent.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        (
            "kubernetes.io/arch",
            if cfg!(target_arch = "aarch64") {
                "arm64"
            } else {
                "amd64"
            },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if api.get_opt(&agent.node_name).await?.is_none() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(agent.node_name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(node_status(agent, info, ready_since)),
        };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %agent.node_name, "registered node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    update_status(agent, info, ready_since).await
}

pub async fn update_status(
    agent: &Agent,
    info: &NodeInfo,
    ready_since: chrono::DateTime<Utc>,
) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(agent.client.clone());
    let patch = serde_json::json!({ "status": node_status(agent, info, ready_since) });
    Ok(api
        .patch_status(
            &agent.node_name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?)
}

async fn renew_lease(agent: &Agent, node_uid: &str) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(agent.client.clone(), "kube-node-lease");
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    match api.get_opt(&agent.node_name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(agent.node_name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(now);
            api.replace(&agent.node_name, &PostParams::default(), &lease)
                .await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(agent.node_name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: agent.node_name.clone(),
                        uid: node_uid.to_string(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(agent.node_name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Keeps the Lease fresh every 10 s and re-posts node status every minute (and
/// re-registers the Node if someone deleted it).
pub async fn heartbeat(
    agent: std::sync::Arc<Agent>,
    info: NodeInfo,
    mut node_uid: String,
    ready_since: chrono::DateTime<Utc>,
) {
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        if let Err(e) = renew_lease(&agent, &node_uid).await {
            tracing::warn!(error = %e, "renewing node lease");
        }
        if last_status.elapsed() >= STATUS_REFRESH {
            match register(&agent, &info, ready_since).await {
                Ok(n) => {
                    node_uid = n.metadata.uid.unwrap_or(node_uid);
                    last_status = tokio::time::Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "updating node status"),
            }
        }
    }
}

pub async fn first_lease(agent: &Agent, node_uid: &str) -> anyhow::Result<()> {
    renew_lease(agent, node_uid).await
}
