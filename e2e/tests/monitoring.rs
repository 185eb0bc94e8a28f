//! Metrics, alerts and the dashboard, tested with the real tools: `promtool` checks and unit-
//! tests the alert rules, and a real Prometheus server scrapes the operator while a scheduled
//! backup runs: the bytes uploaded it reports equal the Backup's status, and every metric the
//! rules and the dashboard use is there. Prometheus and promtool come from Debian's
//! `prometheus` package (`e2e/test` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holdfast::runtime::telemetry::metrics_used_by_rules_and_dashboard;
use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_api::schedule::SCHEDULE_LABEL;
use holdfast_e2e::app;
use holdfast_e2e::operator::{Operator, http_get};
use holdfast_e2e::ops::wait_backup;
use holdfast_e2e::{TestNamespace, ensure_crds, env, wait_until};
use kube::api::{Api, ListParams};

/// A binary of Debian's `prometheus` package; the test fails (never skips) without it.
fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: install Debian's prometheus package (apt-get install prometheus; e2e/test does)",
        p.display()
    );
    p
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(env().repo.join("config/monitoring"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let check = promtool(&["check", "rules", "holdfast.rules.yaml"]);
    assert!(check.contains("SUCCESS: 10 rules found"), "{check}");
    let test = promtool(&["test", "rules", "holdfast.rules.test.yaml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

/// A Prometheus server scraping one target every second, with the alert rules loaded.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("hf-prom-{}", holdfast_e2e::random_suffix()));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let rules = env().repo.join("config/monitoring/holdfast.rules.yaml");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n- job_name: holdfast\n  static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n",
                rules.display()
            ),
        )
        .expect("prometheus.yml");
        let port = holdfast_store::testing::free_port().expect("port");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            port,
            _dir: TempDir(dir),
        }
    }

    /// The result vector of an instant query.
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let Some((200, body)) = http_get(self.port, &path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query, if any.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_operator_during_a_scheduled_backup() {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, "prom").await;
    let app_ns = TestNamespace::new(&client, "prom-app").await;
    let bucket = format!("hf-prom-{}", holdfast_e2e::random_suffix());
    app::make_bucket(&bucket).await;
    let op = Operator::start(
        &opns.name,
        "prom-0",
        &[&format!("--watch-namespaces={}", app_ns.name)],
    );
    op.wait_ready().await;
    let prom = Prometheus::start(op.http_port);
    app::deploy_seeded(&app_ns.name, 4).await;
    app::primary_location(&client, &opns.name, &bucket).await;

    // Series known at start-up are scraped before anything happened.
    wait_until(
        "prometheus to scrape the operator",
        Duration::from_secs(60),
        None,
        || async {
            (prom.value("holdfast_operations_started_total{kind=\"backup\"}") == Some(0.0))
                .then_some(())
        },
    )
    .await;

    // A yearly schedule, run now.
    e.apply_yaml(
        &opns.name,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata:\n  name: yearly\n  annotations: {{holdfast.dev/run-now: first}}\nspec:\n  schedule: \"0 0 1 1 *\"\n  keep: {{last: 3}}\n  template:\n    spec: {{includedNamespaces: [{}]}}\n",
            app_ns.name
        ),
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &opns.name);
    let name = wait_until(
        "the run-now Backup",
        Duration::from_secs(60),
        Some(&opns.name),
        || {
            let backups = backups.clone();
            async move {
                let lp = ListParams::default().labels(&format!("{SCHEDULE_LABEL}=yearly"));
                let list = backups.list(&lp).await.ok()?;
                list.items
                    .first()
                    .map(|b| b.metadata.name.clone().unwrap_or_default())
            }
        },
    )
    .await;
    let b = wait_backup(&client, &opns.name, &name, Duration::from_secs(300)).await;
    let st = b.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(BackupPhase::Completed),
        "{st:#?}\n{}",
        op.logs()
    );
    let uploaded: u64 = st
        .volumes
        .iter()
        .filter_map(|v| v.copy.as_ref())
        .map(|c| c.bytes_uploaded)
        .sum();
    let read: u64 = st
        .volumes
        .iter()
        .filter_map(|v| v.copy.as_ref())
        .map(|c| c.bytes_total)
        .sum();
    assert!(uploaded > 0, "{st:#?}");

    // Prometheus has the bytes the Backup's status reports, the attempt and the success.
    let want = [
        (
            "sum(holdfast_bytes_uploaded_total{location=\"primary\"})",
            uploaded as f64,
        ),
        (
            "sum(holdfast_bytes_read_total{location=\"primary\"})",
            read as f64,
        ),
        ("holdfast_operations_started_total{kind=\"backup\"}", 1.0),
        (
            "holdfast_operations_finished_total{kind=\"backup\",phase=\"Completed\"}",
            1.0,
        ),
        (
            "holdfast_operations_finished_total{kind=\"dataupload\",phase=\"Completed\"}",
            st.volumes.len() as f64,
        ),
        (
            "holdfast_operation_duration_seconds_count{kind=\"backup\",phase=\"Completed\"}",
            1.0,
        ),
        ("holdfast_location_available{location=\"primary\"}", 1.0),
        (
            "holdfast_schedule_max_interval_seconds{schedule=\"yearly\"}",
            366.0 * 86400.0,
        ),
        ("holdfast_leader", 1.0),
        ("holdfast_ready", 1.0),
    ];
    for (q, v) in want {
        let what = format!("prometheus: {q} = {v}");
        wait_until(&what, Duration::from_secs(60), None, || async {
            (prom.value(q) == Some(v)).then_some(())
        })
        .await;
    }
    let last = wait_until(
        "the schedule's last success in prometheus",
        Duration::from_secs(60),
        None,
        || async {
            prom.value("holdfast_schedule_last_success_timestamp_seconds{schedule=\"yearly\"}")
        },
    )
    .await;
    let completed = st.completion_time.expect("completion").0.as_second() as f64;
    assert_eq!(last, completed);

    // Every metric the alert rules and the dashboard use is scraped.
    let used = metrics_used_by_rules_and_dashboard();
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| {
            let q = format!("count({{__name__=~\"{m}|{m}_bucket\"}})");
            prom.value(&q).is_none()
        })
        .collect();
    assert!(missing.is_empty(), "not scraped by Prometheus: {missing:?}");
    // The rules loaded and evaluate (none fails to evaluate).
    let (_, rules) = http_get(prom.port, "/api/v1/rules").expect("rules API");
    let rules: serde_json::Value = serde_json::from_str(&rules).expect("rules JSON");
    let health: Vec<String> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| format!("{}={}", r["name"], r["health"]))
        .collect();
    assert_eq!(health.len(), 10, "{health:?}");
    assert!(health.iter().all(|h| !h.ends_with("\"err\"")), "{health:?}");
    e.kubectl_ok([
        "delete",
        "schedules,backups",
        "--all",
        "-n",
        &opns.name,
        "--wait=true",
        "--timeout=120s",
    ]);
}
