//! Logs, metrics and health endpoints of the operator process (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    started: IntCounterVec,
    op_duration: HistogramVec,
    bytes_read: IntCounterVec,
    bytes_uploaded: IntCounterVec,
    bytes_restored: IntCounterVec,
    throughput: HistogramVec,
    ready: IntGauge,
    schedule_success: IntGaugeVec,
    schedule_interval: IntGaugeVec,
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
        let r = Builder(
            Registry::new_custom(Some("holdfast".into()), None).expect("valid registry prefix"),
        );
        const SCHEDULE: &[&str] = &["namespace", "schedule"];
        const LOCATION: &[&str] = &["location"];
        let build_info = r.gauges(
            "build_info",
            "Always 1; the operator's version as a label",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Self {
            started: r.counters(
                "operations_started_total",
                "Backups and restores that started work (attempts), by kind",
                &["kind"],
            ),
            op_duration: r.histograms(
                "operation_duration_seconds",
                "Time from start to terminal phase of backups, restores and transfers, by kind and phase",
                &["kind", "phase"],
                vec![
                    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    43200.0, 86400.0,
                ],
            ),
            bytes_read: r.counters(
                "bytes_read_total",
                "Bytes read from volumes by completed copies (DataUploads), by location",
                LOCATION,
            ),
            bytes_uploaded: r.counters(
                "bytes_uploaded_total",
                "New bytes stored in locations by completed copies, after deduplication and compression",
                LOCATION,
            ),
            bytes_restored: r.counters(
                "bytes_restored_total",
                "Bytes written into volumes by completed restores from copies (DataDownloads)",
                LOCATION,
            ),
            throughput: r.histograms(
                "mover_throughput_bytes_per_second",
                "Bytes per second of each completed mover transfer (volume bytes over the mover's run time), by direction",
                &["direction"],
                prometheus::exponential_buckets(1_048_576.0, 2.0, 13).expect("buckets"),
            ),
            ready: r.gauge(
                "ready",
                "1 once every Holdfast CRD is established and the controllers run",
            ),
            schedule_success: r.gauges(
                "schedule_last_success_timestamp_seconds",
                "When the newest successful backup of a Schedule completed (Unix seconds)",
                SCHEDULE,
            ),
            schedule_interval: r.gauges(
                "schedule_max_interval_seconds",
                "The longest gap between a Schedule's coming runs (of its most frequent cadence)",
                SCHEDULE,
            ),
            schedule_missed: r.counters(
                "schedule_missed_runs_total",
                "Runs of a Schedule that were due but did not start",
                SCHEDULE,
            ),
            retention_deleted: r.counters(
                "retention_deletions_total",
                "Backups a Schedule's retention deleted",
                SCHEDULE,
            ),
            reclaimed: r.counters(
                "repository_bytes_reclaimed_total",
                "Bytes repository maintenance (prune) deleted, by location",
                LOCATION,
            ),
            reconciles: r.counters(
                "reconciles_total",
                "Reconciles run, by controller",
                &["controller"],
            ),
            errors: r.counters(
                "reconcile_errors_total",
                "Reconciles that failed, by controller",
                &["controller"],
            ),
            duration: r.histograms(
                "reconcile_duration_seconds",
                "Time spent in one reconcile, by controller",
                &["controller"],
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 20.0, 60.0],
            ),
            location_available: r.gauges(
                "location_available",
                "1 when a BackupStorageLocation is Available",
                LOCATION,
            ),
            leader: r.gauge("leader", "1 when this replica is the leader"),
            finished: r.counters(
                "operations_finished_total",
                "Backups, restores and transfers that reached a terminal phase, by kind and phase",
                &["kind", "phase"],
            ),
            registry: r.0,
        };
        m.initialise();
        m
    }

    /// Creates every series whose labels are known at start-up at zero, so that dashboards
    /// and alerts (`rate`, `absent`) see them before the first backup.
    fn initialise(&self) {
        for (kind, phases) in OPERATION_PHASES {
            if matches!(*kind, "backup" | "restore") {
                self.started.with_label_values(&[kind]);
            }
            for phase in *phases {
                self.finished.with_label_values(&[kind, phase]);
                self.op_duration.with_label_values(&[kind, phase]);
            }
        }
        for d in ["upload", "download"] {
            self.throughput.with_label_values(&[d]);
        }
        for c in CONTROLLERS {
            self.reconciles.with_label_values(&[c]);
            self.errors.with_label_values(&[c]);
            self.duration.with_label_values(&[c]);
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

    /// Counts a backup or restore that started work.
    pub fn started(&self, kind: &str) {
        self.started.with_label_values(&[kind]).inc();
    }

    /// Counts an operation that reached terminal phase `phase` and records how long it took
    /// since `start` (when it started work; `None` when it failed before starting).
    pub fn finished(&self, kind: &str, phase: &str, start: Option<jiff::Timestamp>) {
        self.finished.with_label_values(&[kind, phase]).inc();
        if let Some(start) = start {
            let secs = jiff::Timestamp::now().duration_since(start).as_secs_f64();
            self.op_duration
                .with_label_values(&[kind, phase])
                .observe(secs.max(0.0));
        }
    }

    /// Creates the per-location series at zero (called when a location is first seen).
    pub fn init_location(&self, location: &str) {
        for c in [
            &self.bytes_read,
            &self.bytes_uploaded,
            &self.bytes_restored,
            &self.reclaimed,
        ] {
            c.with_label_values(&[location]);
        }
    }

    /// Counts a completed copy into `location`: bytes read from the volume, new bytes stored,
    /// and the mover's throughput over `seconds`.
    pub fn upload_done(&self, location: &str, read: u64, uploaded: u64, seconds: f64) {
        self.bytes_read.with_label_values(&[location]).inc_by(read);
        self.bytes_uploaded
            .with_label_values(&[location])
            .inc_by(uploaded);
        if seconds > 0.0 {
            self.throughput
                .with_label_values(&["upload"])
                .observe(read as f64 / seconds);
        }
    }

    /// Counts a completed restore of `bytes` from `location` over `seconds`.
    pub fn download_done(&self, location: &str, bytes: u64, seconds: f64) {
        self.bytes_restored
            .with_label_values(&[location])
            .inc_by(bytes);
        if seconds > 0.0 {
            self.throughput
                .with_label_values(&["download"])
                .observe(bytes as f64 / seconds);
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Records the completion time of a Schedule's newest successful backup.
    pub fn schedule_success(&self, namespace: &str, schedule: &str, unix: i64) {
        self.schedule_success
            .with_label_values(&[namespace, schedule])
            .set(unix);
    }

    /// Records the longest gap between a Schedule's coming runs, and creates the Schedule's
    /// counters at zero.
    pub fn schedule_interval(&self, namespace: &str, schedule: &str, gap: Duration) {
        self.schedule_missed
            .with_label_values(&[namespace, schedule]);
        self.retention_deleted
            .with_label_values(&[namespace, schedule]);
        self.schedule_interval
            .with_label_values(&[namespace, schedule])
            .set(i64::try_from(gap.as_secs()).unwrap_or(i64::MAX));
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
        let _ = self.schedule_interval.remove_label_values(&l);
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

/// The alert rules and the Grafana dashboard shipped in `config/monitoring/`.
pub const ALERT_RULES: &str = include_str!("../../../config/monitoring/holdfast.rules.yaml");
pub const DASHBOARD: &str = include_str!("../../../config/monitoring/grafana-dashboard.json");

/// Every `holdfast_*` metric named in the alert rules or a dashboard query (histogram series
/// by their base name), for the tests that check each one is exposed.
pub fn metrics_used_by_rules_and_dashboard() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for text in [ALERT_RULES, DASHBOARD] {
        let mut rest = text;
        while let Some(i) = rest.find("holdfast_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// Creates metrics and registers each in the registry it wraps.
struct Builder(Registry);

impl Builder {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
    }
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("metric"))
    }
    fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.add(HistogramVec::new(opts, labels).expect("metric"))
    }
}

/// Terminal phases per kind, for start-up initialisation.
const OPERATION_PHASES: &[(&str, &[&str])] = &[
    (
        "backup",
        &["Completed", "PartiallyFailed", "Failed", "Cancelled"],
    ),
    ("restore", &["Completed", "PartiallyFailed", "Failed"]),
    ("dataupload", &["Completed", "Failed"]),
    ("datadownload", &["Completed", "Failed"]),
];

/// The controllers' metric names (`Reconciler::METRIC`), for start-up initialisation.
pub const CONTROLLERS: &[&str] = &[
    "location",
    "backup",
    "restore",
    "dataupload",
    "datadownload",
    "schedule",
    "repository",
];

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
    fn every_metric_of_the_rules_and_dashboard_is_exposed() {
        let m = Metrics::new();
        // Series whose labels come from objects exist once those objects are seen.
        m.init_location("primary");
        m.set_location_available("primary", true);
        m.schedule_success("ns", "s", 1);
        m.schedule_interval("ns", "s", Duration::from_secs(60));
        m.schedule_missed("ns", "s", 0);
        m.retention_deleted("ns", "s", 0);
        m.repository_reclaimed("primary", 0);
        let text = m.render();
        let used = metrics_used_by_rules_and_dashboard();
        assert!(used.len() > 15, "{used:?}");
        for name in &used {
            assert!(
                [
                    format!("\n{name}{{"),
                    format!("\n{name} "),
                    format!("\n{name}_bucket{{")
                ]
                .iter()
                .any(|l| text.contains(l.as_str())),
                "{name} is used by an alert or the dashboard but not exposed:\n{text}"
            );
        }
    }

    #[test]
    fn series_known_at_start_up_exist_at_zero() {
        let text = Metrics::new().render();
        for line in [
            "holdfast_operations_started_total{kind=\"backup\"} 0",
            "holdfast_operations_finished_total{kind=\"backup\",phase=\"Failed\"} 0",
            "holdfast_operations_finished_total{kind=\"datadownload\",phase=\"Completed\"} 0",
            "holdfast_reconcile_errors_total{controller=\"schedule\"} 0",
            "holdfast_ready 0",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        assert!(text.contains("holdfast_build_info{version=\""), "{text}");
    }

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
