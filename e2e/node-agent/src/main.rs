//! holdfast-node-agent: a test-only stand-in for kubelet on the Docker-less
//! testbed. Registers a Node, runs the containers of pods bound to it as local
//! processes (image → executable map, private mount namespaces), reports pod
//! status, and serves the kubelet API (logs, exec over WebSocket). See README.md.

mod agent;
mod env;
mod images;
mod logs;
mod node;
mod pods;
mod server;
mod shim;
mod status;
mod volumes;
mod wsproto;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Parser)]
#[command(
    name = "holdfast-node-agent",
    version,
    about = "Test-only kubelet stand-in for the Holdfast testbed"
)]
struct Args {
    /// Kubeconfig with the node's client certificate (CN=system:node:<name>, O=system:nodes).
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "holdfast-node-1")]
    node_name: String,
    /// Address of the kubelet API; also the node's InternalIP and every pod's IP.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Serving certificate of the kubelet API (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
    /// CA that signs the API server's kubelet-client certificate.
    #[arg(long)]
    client_ca: PathBuf,
    /// Agent state: per-pod volumes, logs, pid files.
    #[arg(long)]
    root_dir: PathBuf,
    /// State dir of the hostpath CSI driver; PV volumeHandle H lives at <dir>/H.
    #[arg(long)]
    csi_state_dir: Option<PathBuf>,
    /// CSI driver socket (accepted for the launch contract; volumes are bind-mounted directly).
    #[arg(long)]
    csi_endpoint: Option<String>,
    /// Image map file: `image=executable` lines.
    #[arg(long)]
    images: PathBuf,
    /// Value of the node's `Hostname` address. The API server dials the first of
    /// its --kubelet-preferred-address-types, and Hostname comes first by default,
    /// so this must resolve to --address.
    #[arg(long, default_value = "localhost")]
    hostname: String,
    /// Reported as nodeInfo.kubeletVersion.
    #[arg(long, default_value = "v1.36.3")]
    kubelet_version: String,
}

fn mem_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

fn disk_bytes(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(100 << 30)
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(shim::SHIM_ARG) {
        shim::main(argv.get(2).map(String::as_str).unwrap_or("{}"));
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(args.root_dir.join("pods"))
        .with_context(|| format!("creating {}", args.root_dir.display()))?;
    let root_dir = std::fs::canonicalize(&args.root_dir)?;
    images::ImageMap::load(&args.images).context("loading the image map")?;
    let kc = Kubeconfig::read_from(&args.kubeconfig).context("reading kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let api_host = config
        .cluster_url
        .host()
        .unwrap_or("127.0.0.1")
        .trim_matches(['[', ']'])
        .to_string();
    let api_port = config.cluster_url.port_u16().unwrap_or(443);
    let client = kube::Client::try_from(config)?;
    let ephemeral = disk_bytes(&root_dir);
    let agent = Arc::new(agent::Agent {
        client,
        node_name: args.node_name.clone(),
        address: args.address.to_string(),
        root_dir,
        csi_state_dir: args.csi_state_dir.clone(),
        images_file: std::fs::canonicalize(&args.images)?,
        api_host,
        api_port,
        self_exe: std::env::current_exe()?,
        node_cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        node_memory_bytes: mem_total_bytes(),
        pods: Mutex::new(HashMap::new()),
    });
    if args.csi_endpoint.is_some() {
        tracing::debug!(
            "--csi-endpoint given; volumes are bind-mounted from --csi-state-dir directly"
        );
    }

    // kubelet API first, so the node is reachable as soon as it is Ready
    let tls = server::tls_config(&args.tls_cert, &args.tls_key, &args.client_ca)
        .context("loading TLS material")?;
    let addr = SocketAddr::new(args.address, args.port);
    let listener = tokio::spawn(server::serve(agent.clone(), addr, tls));

    let info = node::NodeInfo {
        port: args.port,
        hostname: args.hostname.clone(),
        kubelet_version: args.kubelet_version.clone(),
        ephemeral_storage_bytes: ephemeral,
    };
    let ready_since = chrono::Utc::now();
    let node = loop {
        match node::register(&agent, &info, ready_since).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %e, "registering node; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    };
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    if let Err(e) = node::first_lease(&agent, &node_uid).await {
        tracing::warn!(error = %e, "creating node lease");
    }
    tracing::info!(node = %agent.node_name, "node registered and Ready");
    tokio::spawn(node::heartbeat(agent.clone(), info, node_uid, ready_since));
    let watcher = tokio::spawn(pods::run(agent.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = listener => {
            pods::kill_all(&agent);
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context("kubelet API server")),
                Err(e) => Err(e.into()),
            };
        }
        _ = watcher => tracing::error!("pod watcher ended"),
    }
    tracing::info!("shutting down: killing all container processes");
    pods::kill_all(&agent);
    Ok(())
}
