//! The operator process and what every controller shares: waiting for the CRDs, leader
//! election, telemetry, the reconcile kernel and its Kubernetes helpers. Talks to the cluster.

pub mod cache;
pub mod conditions;
pub mod error;
pub mod kernel;
pub mod kube_ext;
pub mod leader;
pub mod names;
pub mod restorer;
pub mod scope;
pub mod telemetry;

pub use error::Error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::telemetry::Metrics;
use crate::controller::{backup, location, repository, restore, schedule, transfer};

/// Shared state of all controllers.
pub struct Context {
    pub client: Client,
    /// The operator's namespace (locations, movers, administrator backups).
    pub namespace: String,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Image of mover pods.
    pub mover_image: String,
    /// Whether exec hooks run (the installation grants `pods/exec`).
    pub hooks_enabled: bool,
    /// How many times a killed mover (signal, OOM kill, eviction, lost node) is retried.
    pub mover_retries: u32,
    /// Mover pods running at once, over all transfers of this operator.
    pub max_movers: usize,
    /// Mover pods running at once on one node, counted over all namespaces (0: no limit).
    pub max_movers_per_node: usize,
    /// Namespaces (besides its own) whose Backups and Restores this operator handles; empty:
    /// every namespace that is not another operator's.
    pub watch_namespaces: Vec<String>,
    /// Watched caches of transfers, mover pods and nodes.
    pub caches: cache::Caches,
    /// The identities restores write objects as.
    pub restorers: restorer::Restorers,
}

impl Context {
    /// Publishes an Event; failures are logged, never fatal.
    pub async fn publish(&self, reference: &ObjectReference, event: Event) {
        if let Err(e) = self.recorder.publish(&event, reference).await {
            warn!(error = %e, reason = %event.reason, "could not publish Event");
        }
    }

    /// Publishes an Event about `o` (the note cut to 1000 characters).
    pub async fn event<K: kube::Resource<DynamicType = ()>>(
        &self,
        o: &K,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        self.publish(&o.object_ref(&()), event).await;
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
    /// Pod Security level mover pods need in the operator namespace: set as the label
    /// `pod-security.kubernetes.io/enforce` on the namespace when it has none (a label already
    /// there is left alone). Empty: leave the namespace alone.
    #[arg(long, env = "HOLDFAST_POD_SECURITY_LEVEL", default_value = "baseline")]
    pub pod_security_level: String,
    /// Run backup and restore exec hooks. The installation must grant `pods/exec` (Helm value
    /// hooks.enabled, config/rbac/hooks_role.yaml); with false, a hook is recorded as failed
    /// with the reason instead of run.
    #[arg(long, env = "HOLDFAST_HOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub hooks: bool,
    /// How many times a mover that was killed (a signal, the OOM killer, an eviction, a lost
    /// node) is started again, with backoff, before its volume fails. A retried backup takes
    /// over the packs the killed attempt uploaded.
    #[arg(long, env = "HOLDFAST_MOVER_RETRIES", default_value_t = 3)]
    pub mover_retries: u32,
    /// This replica's identity in the Lease (default: the pod name or host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs the operator until SIGTERM/SIGINT or loss of leadership.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("configuring the Kubernetes API client (KUBECONFIG or in-cluster)")?;
    let client = Client::try_from(config.clone())
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let restorers = restorer::Restorers::new(&config)
        .context("configuring the restorer identities' API clients")?;
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
    metrics.set_ready(true);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    // Before any reconcile, and by every replica: other operators must see this namespace
    // as ours before they might take up a Backup in it.
    scope::mark_namespace(client.clone(), &args.namespace, &identity)
        .await
        .context("marking the operator namespace")?;
    scope::label_operator_namespace(client.clone(), &args.namespace).await;
    scope::label_pod_security(client.clone(), &args.namespace, &args.pod_security_level).await;
    let lease = if args.leader_elect {
        let elected = elect(&client, &args, &identity, &shutdown).await?;
        let Some(l) = elected else {
            return Ok(());
        };
        metrics.set_leader(true);
        Some(l)
    } else {
        None
    };

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
        hooks_enabled: args.hooks,
        mover_retries: args.mover_retries,
        max_movers: args.max_movers.max(1),
        max_movers_per_node: args.max_movers_per_node,
        watch_namespaces: scope::parse_watch(&args.watch_namespaces),
        caches: cache::Caches::start(&client, &args.namespace).await,
        restorers,
    });
    let admission = Arc::new(transfer::admission::Admission::default());
    let stop = || {
        let s = shutdown.clone();
        async move { s.cancelled().await }
    };
    tokio::join!(
        location::run(ctx.clone(), stop()),
        backup::run(ctx.clone(), stop()),
        transfer::run(
            ctx.clone(),
            transfer::upload::Uploads {
                admission: admission.clone()
            },
            stop()
        ),
        transfer::run(
            ctx.clone(),
            transfer::download::Downloads { admission },
            stop()
        ),
        restore::run(ctx.clone(), stop()),
        crate::controller::departed::run(ctx.clone(), stop()),
        schedule::run(ctx.clone(), stop()),
        repository::run(ctx.clone(), stop()),
    );

    if let Some(l) = lease {
        l.release().await;
    }
    info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "holdfast".into())
}

/// Becomes the leader (`None`: shut down while waiting) and keeps the lease in the background;
/// losing it stops the operator.
async fn elect(
    client: &Client,
    args: &ControllerArgs,
    identity: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<leader::LeaderLease>> {
    let l = leader::LeaderLease::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        identity,
        args.lease_duration.as_std(),
    );
    info!(identity = %identity, lease = %args.lease_name, "waiting to become leader");
    tokio::select! {
        r = l.acquire() => r.context("acquiring the leader lease")?,
        () = shutdown.cancelled() => return Ok(None),
    }
    info!(identity = %identity, "became leader");
    let keep = l.clone();
    let lost = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = keep.hold(lost.clone()).await {
            warn!(error = %e, "lost leadership; stopping");
        }
        lost.cancel();
    });
    Ok(Some(l))
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
