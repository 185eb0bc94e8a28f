//! The operator as a real process (`holdfast controller`) against the test cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{env, wait_until};

/// A running `holdfast controller`; killed (SIGKILL) when dropped.
pub struct Operator {
    pub child: Child,
    pub http_port: u16,
    pub identity: String,
    pub log: PathBuf,
}

/// The freshly built `holdfast` binary (built by cargo for this test run).
pub fn holdfast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOLDFAST_BIN") {
        return p.into();
    }
    let p = crate::repo_root().join("target/debug/holdfast");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p holdfast` first",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    holdfast_store::testing::free_port().expect("free port")
}

impl Operator {
    /// Starts the operator for operator namespace `namespace` with extra arguments.
    pub fn start(namespace: &str, identity: &str, extra: &[&str]) -> Self {
        Self::start_on(env(), namespace, identity, extra)
    }

    /// [`Operator::start`] against the cluster of `e` (a second testbed).
    pub fn start_on(e: &crate::Env, namespace: &str, identity: &str, extra: &[&str]) -> Self {
        let http_port = free_port();
        let log =
            std::env::temp_dir().join(format!("holdfast-operator-{namespace}-{identity}.log"));
        let file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(holdfast_bin())
            .arg("controller")
            .args([
                "--namespace",
                namespace,
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
                "--identity",
                identity,
            ])
            .args(extra)
            .env("KUBECONFIG", &e.kubeconfig)
            .env("RUST_LOG", "info,holdfast=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start holdfast controller");
        Self {
            child,
            http_port,
            identity: identity.to_string(),
            log,
        }
    }

    /// The operator's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs a path of the operator's HTTP endpoint; `None` when not reachable.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// The value of a metric line starting with `prefix`, if exposed.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let port = self.http_port;
        let log = self.log.clone();
        wait_until(
            &format!(
                "operator {} to be ready (log: {})",
                self.identity,
                log.display()
            ),
            Duration::from_secs(60),
            None,
            || async move {
                http_get(port, "/readyz")
                    .filter(|(code, _)| *code == 200)
                    .map(|_| ())
            },
        )
        .await;
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1 (no client dependency needed for tests).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
