//! Logs, metrics and health endpoints of the operator process (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Structured logs: JSON when `HOLDFAST_LOG_FORMAT=json`, text otherwise; level from `RUST_LOG`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube=warn,aws=warn,hyper=warn"));
    let json = std::env::var("HOLDFAST_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Operator metrics. Labels are bounded: controller, result, location, and per Schedule its
/// namespace and name (one series per Schedule object, like kube-state-metrics).
pub struct Metrics {
    schedule_success: IntGaugeVec,
    schedule_missed: IntCounterVec,
    retention_deleted: IntCounterVec,
    reclaimed: IntCounterVec,
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    location_available: IntGaugeVec,
    leader: IntGauge,
    finished: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("holdfast".into()), None).expect("valid registry prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles run, by controller"),
            &["controller"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconciles that failed, by controller",
            ),
            &["controller"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "reconcile_duration_seconds",
                "Time spent in one reconcile, by controller",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 20.0, 60.0]),
            &["controller"],
        )
        .expect("metric");
        let location_available = IntGaugeVec::new(
            Opts::new(
                "location_available",
                "1 when a BackupStorageLocation is Available",
            ),
            &["location"],
        )
        .expect("metric");
        let leader = IntGauge::new("leader", "1 when this replica is the leader").expect("metric");
        let finished = IntCounterVec::new(
            Opts::new(
                "operations_finished_total",
                "Backups, restores and transfers that reached a terminal phase, by kind and phase",
            ),
            &["kind", "phase"],
        )
        .expect("metric");
        let schedule_success = IntGaugeVec::new(
            Opts::new(
                "schedule_last_success_timestamp_seconds",
                "When the newest successful backup of a Schedule completed (Unix seconds)",
            ),
            &["namespace", "schedule"],
        )
        .expect("metric");
        let schedule_missed = IntCounterVec::new(
            Opts::new(
                "schedule_missed_runs_total",
                "Runs of a Schedule that were due but did not start",
            ),
            &["namespace", "schedule"],
        )
        .expect("metric");
        let retention_deleted = IntCounterVec::new(
            Opts::new(
                "retention_deletions_total",
                "Backups a Schedule's retention deleted",
            ),
            &["namespace", "schedule"],
        )
        .expect("metric");
        let reclaimed = IntCounterVec::new(
            Opts::new(
                "repository_bytes_reclaimed_total",
                "Bytes repository maintenance (prune) deleted, by location",
            ),
            &["location"],
        )
        .expect("metric");
        for c in [
            Box::new(reclaimed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(schedule_success.clone()),
            Box::new(schedule_missed.clone()),
            Box::new(retention_deleted.clone()),
            Box::new(reconciles.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(location_available.clone()),
            Box::new(leader.clone()),
            Box::new(finished.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            schedule_success,
            schedule_missed,
            retention_deleted,
            reclaimed,
            registry,
            reconciles,
            errors,
            duration,
            location_available,
            leader,
            finished,
        }
    }

    /// Counts a reconcile and times it until the returned guard is dropped.
    pub fn reconcile_timer(&self, controller: &str) -> HistogramTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        self.duration.with_label_values(&[controller]).start_timer()
    }

    pub fn reconcile_error(&self, controller: &str) {
        self.errors.with_label_values(&[controller]).inc();
    }

    pub fn set_location_available(&self, location: &str, available: bool) {
        self.location_available
            .with_label_values(&[location])
            .set(i64::from(available));
    }

    /// Counts an operation that reached terminal phase `phase`.
    pub fn finished(&self, kind: &str, phase: &str) {
        self.finished.with_label_values(&[kind, phase]).inc();
    }

    /// Records the completion time of a Schedule's newest successful backup.
    pub fn schedule_success(&self, namespace: &str, schedule: &str, unix: i64) {
        self.schedule_success
            .with_label_values(&[namespace, schedule])
            .set(unix);
    }

    /// Counts runs of a Schedule that were missed.
    pub fn schedule_missed(&self, namespace: &str, schedule: &str, n: u32) {
        self.schedule_missed
            .with_label_values(&[namespace, schedule])
            .inc_by(u64::from(n));
    }

    /// Counts Backups deleted by a Schedule's retention.
    pub fn retention_deleted(&self, namespace: &str, schedule: &str, n: usize) {
        self.retention_deleted
            .with_label_values(&[namespace, schedule])
            .inc_by(n as u64);
    }

    /// Counts bytes reclaimed by a prune of a repository on `location`.
    pub fn repository_reclaimed(&self, location: &str, bytes: u64) {
        self.reclaimed.with_label_values(&[location]).inc_by(bytes);
    }

    /// Drops the series of a deleted Schedule.
    pub fn forget_schedule(&self, namespace: &str, schedule: &str) {
        let l = [namespace, schedule];
        let _ = self.schedule_success.remove_label_values(&l);
        let _ = self.schedule_missed.remove_label_values(&l);
        let _ = self.retention_deleted.remove_label_values(&l);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Readiness shared with the HTTP endpoints.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    health: Health,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.health.is_ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for CRDs")
                }
            }),
        )
        .with_state(HttpState { metrics, health });
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot bind the metrics/health address");
            shutdown.cancel();
            return;
        }
    };
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz, /readyz");
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        warn!(error = %e, "metrics/health server failed");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_prefix_and_bounded_labels() {
        let m = Metrics::new();
        drop(m.reconcile_timer("location"));
        m.set_location_available("primary", true);
        let text = m.render();
        assert!(
            text.contains("holdfast_reconciles_total{controller=\"location\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("holdfast_location_available{location=\"primary\"} 1"),
            "{text}"
        );
    }
}
