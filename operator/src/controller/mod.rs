//! The operator process: waits for the CRDs, elects a leader, and runs one controller per kind.
//! Talks to the cluster (and, through the location controller, to object storage).

pub mod backup;
pub mod conditions;
pub mod leader;
pub mod location;
pub mod objects;
pub mod repository;
pub mod restore;
pub mod scope;
pub mod snapshot;
pub mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::telemetry::{self, Metrics};

/// Errors of a reconcile; each names the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{call}: {source}")]
    Kube {
        call: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Adapter for `map_err`: `api.get(n).await.map_err(Error::kube("get X"))`.
    pub fn kube(call: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { call, source }
    }
}

/// Shared state of all controllers.
pub struct Context {
    pub client: Client,
    /// The operator's namespace (locations, movers, administrator backups).
    pub namespace: String,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Image of mover pods.
    pub mover_image: String,
    /// Mover pods running at once, over all transfers of this operator.
    pub max_movers: usize,
    /// Mover pods running at once on one node, counted over all namespaces (0: no limit).
    pub max_movers_per_node: usize,
    /// Namespaces (besides its own) whose Backups and Restores this operator handles; empty:
    /// every namespace that is not another operator's.
    pub watch_namespaces: Vec<String>,
}

impl Context {
    /// Publishes an Event; failures are logged, never fatal.
    pub async fn publish(&self, reference: &ObjectReference, event: Event) {
        if let Err(e) = self.recorder.publish(&event, reference).await {
            warn!(error = %e, reason = %event.reason, "could not publish Event");
        }
    }
}

/// Options of `holdfast controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The operator's namespace: where locations live and mover pods run.
    #[arg(long, env = "HOLDFAST_NAMESPACE", default_value = "holdfast-system")]
    pub namespace: String,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "HOLDFAST_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader on a Lease so that only one replica reconciles.
    #[arg(long, env = "HOLDFAST_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "HOLDFAST_LEASE_NAME",
        default_value = "holdfast-controller"
    )]
    pub lease_name: String,
    /// How long a leader's lease is valid without renewal.
    #[arg(long, env = "HOLDFAST_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: holdfast_api::Duration,
    /// Image of the data-mover pods (default: this release's image).
    #[arg(long, env = "HOLDFAST_MOVER_IMAGE", default_value = concat!("ghcr.io/holdfast-dev/holdfast:", env!("CARGO_PKG_VERSION")))]
    pub mover_image: String,
    /// How many mover pods may run at once (uploads and downloads together).
    #[arg(long, env = "HOLDFAST_MAX_MOVERS", default_value_t = 4)]
    pub max_movers: usize,
    /// How many mover pods may run at once on one node, counting every Holdfast mover pod
    /// there (0: no per-node limit).
    #[arg(long, env = "HOLDFAST_MAX_MOVERS_PER_NODE", default_value_t = 2)]
    pub max_movers_per_node: usize,
    /// Namespaces whose Backups and Restores this operator handles besides its own,
    /// comma-separated (default: every namespace that is not another Holdfast operator's).
    #[arg(long, env = "HOLDFAST_WATCH_NAMESPACES", default_value = "")]
    pub watch_namespaces: String,
    /// This replica's identity in the Lease (default: the pod name or host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs the operator until SIGTERM/SIGINT or loss of leadership.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(Metrics::new());
    let health = telemetry::Health::default();
    let shutdown = CancellationToken::new();
    tokio::spawn(telemetry::serve(
        args.http_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            telemetry::termination_signal().await;
            info!("termination signal received, shutting down");
            shutdown.cancel();
        });
    }

    tokio::select! {
        () = wait_for_crds(&client) => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    health.set_ready(true);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    // Before any reconcile, and by every replica: other operators must see this namespace
    // as ours before they might take up a Backup in it.
    scope::mark_namespace(client.clone(), &args.namespace, &identity)
        .await
        .context("marking the operator namespace")?;
    let mut lease = None;
    if args.leader_elect {
        let l = leader::LeaderLease::new(
            client.clone(),
            &args.namespace,
            &args.lease_name,
            &identity,
            args.lease_duration.as_std(),
        );
        info!(identity = %identity, lease = %args.lease_name, "waiting to become leader");
        tokio::select! {
            r = l.acquire() => r.context("acquiring the leader lease")?,
            () = shutdown.cancelled() => return Ok(()),
        }
        info!(identity = %identity, "became leader");
        metrics.set_leader(true);
        let keep = l.clone();
        let lost = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = keep.hold(lost.clone()).await {
                warn!(error = %e, "lost leadership; stopping");
            }
            lost.cancel();
        });
        lease = Some(l);
    }

    let reporter = Reporter {
        controller: "holdfast".into(),
        instance: Some(identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        namespace: args.namespace.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        mover_image: args.mover_image.clone(),
        max_movers: args.max_movers.max(1),
        max_movers_per_node: args.max_movers_per_node,
        watch_namespaces: scope::parse_watch(&args.watch_namespaces),
    });
    let stop = || {
        let s = shutdown.clone();
        async move { s.cancelled().await }
    };
    tokio::join!(
        location::run(ctx.clone(), stop()),
        backup::run(ctx.clone(), stop()),
        transfer::run_uploads(ctx.clone(), stop()),
        transfer::run_downloads(ctx.clone(), stop()),
        restore::run(ctx.clone(), stop()),
    );

    if let Some(l) = lease {
        l.release().await;
    }
    info!("stopped");
    Ok(())
}

/// The reconciled object as the API server has it now (`None`: gone). The watch cache can
/// lag behind our own last status write, so every reconcile decides on this.
pub async fn current<K>(api: &Api<K>, o: &K, call: &'static str) -> Result<Option<Arc<K>>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .get_opt(&o.name_any())
        .await
        .map_err(Error::kube(call))?
        .map(Arc::new))
}

/// Whether pod `p` has not finished and mounts claim `claim` (of its own namespace).
pub fn running_with_claim(p: &k8s_openapi::api::core::v1::Pod, claim: &str) -> bool {
    let finished = matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !finished
        && p.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| {
                vs.iter().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
            })
}

/// Treats "not found" as done (for deletes and patches of objects that may already be gone).
pub fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

/// Adds `finalizer` to `o`; true when it had to be added (the caller waits for the event).
pub async fn add_finalizer<K>(api: &Api<K>, o: &K, finalizer: &str) -> Result<bool, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut fins = o.meta().finalizers.clone().unwrap_or_default();
    if fins.iter().any(|f| f == finalizer) {
        return Ok(false);
    }
    fins.push(finalizer.into());
    patch_finalizers(api, o, fins).await?;
    Ok(true)
}

/// Removes `finalizer` from `o` (an object already gone is fine).
pub async fn remove_finalizer<K>(api: &Api<K>, o: &K, finalizer: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let fins: Vec<String> = o
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    patch_finalizers(api, o, fins).await
}

/// Replaces the finalizers, guarded by the resource version that was read.
async fn patch_finalizers<K>(api: &Api<K>, o: &K, fins: Vec<String>) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {"finalizers": fins, "resourceVersion": o.meta().resource_version}});
    api.patch(
        &o.meta().name.clone().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .or_else(ignore_not_found)
    .map_err(Error::kube("patch finalizers"))
}

/// A stable 10-hex-digit hash of `parts` (FNV-1a over the parts with separators).
pub fn short_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")[..10].to_string()
}

/// A child object name: a readable prefix (cut to fit) and a hash of what makes it unique.
/// At most 63 characters, a valid DNS label (usable as a label value and a pod name).
pub fn child_name(prefix: &str, parts: &[&str]) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(52)
        .collect();
    while p.ends_with('-') {
        p.pop();
    }
    let p = p.trim_start_matches('-');
    if p.is_empty() {
        format!("hf-{}", short_hash(parts))
    } else {
        format!("{p}-{}", short_hash(parts))
    }
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1024`); `None` when not understood.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some((n * m) as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "holdfast".into())
}

/// Waits until every Holdfast CRD is installed and Established. The operator never installs
/// them itself (Helm or OLM do); it logs what is missing and keeps waiting.
async fn wait_for_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = holdfast_api::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let mut delay = Duration::from_secs(1);
    loop {
        let mut missing = Vec::new();
        for name in &names {
            match api.get_opt(name).await {
                Ok(Some(crd)) if is_established(&crd) => {}
                Ok(_) => missing.push(name.clone()),
                Err(e) => missing.push(format!("{name} ({e})")),
            }
        }
        if missing.is_empty() {
            info!("all CRDs are established");
            return;
        }
        warn!(missing = %missing.join(", "), "waiting for Holdfast CRDs to be installed and Established (kubectl apply -f crds/)");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}
