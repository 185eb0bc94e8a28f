//! `hostpathplugin`: see the crate documentation of `holdfast_csi_hostpath`.

use std::sync::Arc;

use holdfast_csi_hostpath::driver::{Config, Driver};
use holdfast_csi_hostpath::{VERSION, cli, service};

#[tokio::main]
async fn main() {
    let args = cli::parse();
    if args.version {
        println!("{VERSION}");
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = run(args).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(args: cli::Args) -> anyhow::Result<()> {
    if args.nodeid.is_empty() {
        anyhow::bail!("--nodeid is required");
    }
    let driver = Driver::open(Config {
        driver_name: args.drivername.clone(),
        node_id: args.nodeid.clone(),
        state_dir: args.statedir.clone(),
        snapshot_dir: args
            .snapshotdir
            .clone()
            .unwrap_or_else(|| args.statedir.clone()),
        freeze_timeout: std::time::Duration::from_secs(args.freezetimeout),
        max_volumes_per_node: args.maxvolumespernode,
        version: VERSION.to_string(),
    })?;
    let sock = service::socket_path(&args.endpoint)?;
    let listener = service::bind(&sock)?;
    tracing::info!(
        "hostpathplugin {VERSION}: driver {} node {} statedir {} snapshotdir {} listening on {}",
        args.drivername,
        args.nodeid,
        args.statedir.display(),
        driver.config().snapshot_dir.display(),
        sock.display()
    );
    match driver.group_snapshot_support() {
        Ok(()) => tracing::info!(
            "group snapshots: offered (statedir is its own filesystem, frozen for at most {}s per group snapshot)",
            args.freezetimeout
        ),
        Err(why) => tracing::info!("group snapshots: not offered: {why}"),
    }
    service::serve(Arc::new(driver), listener, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
}

/// SIGTERM or SIGINT: stop accepting calls, finish the running ones, exit 0.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
