//! Test helpers: start a throw-away MinIO server on 127.0.0.1 (used by this crate's
//! and holdfast-repo's tests). Not used in production code paths.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set by `e2e/test` (the command CI runs): a test whose prerequisite is missing fails
/// instead of skipping.
pub const REQUIRE_PREREQUISITES: &str = "HOLDFAST_REQUIRE_PREREQUISITES";

/// A test's prerequisite is missing: fails the test under `e2e/test` (and so in CI), where
/// every prerequisite is installed; elsewhere prints `SKIP: …` so that a partial developer
/// machine can still run the rest.
#[track_caller]
pub fn prerequisite_missing(what: &str) {
    if std::env::var_os(REQUIRE_PREREQUISITES).is_some() {
        panic!(
            "prerequisite missing ({REQUIRE_PREREQUISITES} is set, so this fails rather than skips): {what}"
        );
    }
    eprintln!("SKIP: {what}");
}

/// Access key and secret of the test server.
pub const MINIO_USER: &str = "holdfast-test";
/// Secret key of the test server.
pub const MINIO_PASSWORD: &str = "holdfast-test-secret";

/// Finds a MinIO binary: `$HOLDFAST_MINIO`, then `~/.cache/holdfast/tools/minio-*`
/// (a binary or a directory holding `minio` or `bin/minio`), then `minio` on PATH.
pub fn find_minio() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HOLDFAST_MINIO") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Ok(home) = std::env::var("HOME") {
        let tools = PathBuf::from(home).join(".cache/holdfast/tools");
        if let Ok(rd) = std::fs::read_dir(&tools) {
            let mut cands: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("minio-") || n == "minio")
                })
                .collect();
            cands.sort();
            for c in cands.into_iter().rev() {
                for p in [c.clone(), c.join("minio"), c.join("bin/minio")] {
                    if p.is_file() {
                        return Some(p);
                    }
                }
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("minio"))
        .find(|p| p.is_file())
}

/// Lowest and highest port of the kernel's ephemeral range (outgoing connections).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback port that is free now, outside the kernel's ephemeral range, and not
/// handed out before by this process.
///
/// A port from `bind(":0")` is ephemeral: between our check and the child's `bind`,
/// any outgoing connection on the machine may take it as its local port (CI once
/// failed that way: kube-controller-manager could not listen because a connection
/// held "its" port). Ports below the ephemeral range are only ever taken by
/// listeners, which is the race we can live with.
pub fn free_port() -> std::io::Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (lo, hi) = ephemeral_range();
    // Candidate ranges: 10000 up to the ephemeral range, and above it.
    let below = (10000u16, lo.saturating_sub(1));
    let above = (hi.saturating_add(1).max(10000), 65000u16);
    let ranges: Vec<(u16, u16)> = [below, above].into_iter().filter(|(a, b)| a < b).collect();
    if ranges.is_empty() {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let total: u32 = ranges.iter().map(|(a, b)| u32::from(b - a) + 1).sum();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        let mut rnd = [0u8; 4];
        getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut n = u32::from_le_bytes(rnd) % total;
        let mut port = 0u16;
        for (a, b) in &ranges {
            let len = u32::from(b - a) + 1;
            if n < len {
                port = a + n as u16;
                break;
            }
            n -= len;
        }
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free loopback port found outside the ephemeral range",
    ))
}

/// A running MinIO server; killed and its data removed on drop.
pub struct MinioServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The server's address.
    pub port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl MinioServer {
    /// Starts MinIO in a fresh temporary directory, or returns `None` (after printing
    /// why) when no binary is found.
    pub fn start() -> Option<MinioServer> {
        let Some(bin) = find_minio() else {
            prerequisite_missing(
                "no minio binary found (set HOLDFAST_MINIO or build it into ~/.cache/holdfast/tools/minio-<version>)",
            );
            return None;
        };
        match Self::start_with(&bin) {
            Ok(s) => Some(s),
            Err(e) => panic!("starting minio {}: {e}", bin.display()),
        }
    }

    fn start_with(bin: &std::path::Path) -> std::io::Result<MinioServer> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = std::env::temp_dir().join(format!("holdfast-minio-{}", hex::encode(rnd)));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let port = free_port()?;
        let console = free_port()?;
        let child = Command::new(bin)
            .arg("server")
            .arg("--quiet")
            .arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg(dir.0.join("data"))
            .env("MINIO_ROOT_USER", MINIO_USER)
            .env("MINIO_ROOT_PASSWORD", MINIO_PASSWORD)
            .env("MINIO_BROWSER", "off")
            .env("HOME", &dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = MinioServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.live() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "minio exited early: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("minio not live after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn live(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /minio/health/ready HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
    }

    /// An [`crate::S3Config`] for `bucket`/`prefix` on this server.
    pub fn config(&self, bucket: &str, prefix: &str) -> crate::S3Config {
        crate::S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            bucket: bucket.into(),
            prefix: prefix.into(),
            path_style: true,
            access_key_id: Some(MINIO_USER.into()),
            secret_access_key: Some(MINIO_PASSWORD.into()),
            ..Default::default()
        }
    }

    /// [`Self::config`] with the PUTs the mover uses for repositories: unsigned payloads
    /// with a CRC32C ([`crate::PayloadProtection::SelfAuthenticated`]).
    pub fn repository_config(&self, bucket: &str, prefix: &str) -> crate::S3Config {
        crate::S3Config {
            payload: crate::PayloadProtection::SelfAuthenticated,
            ..self.config(bucket, prefix)
        }
    }
}

impl Drop for MinioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_not_ephemeral() {
        let (lo, hi) = ephemeral_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port().expect("a free port");
            assert!(
                !(lo..=hi).contains(&p),
                "port {p} is in the ephemeral range {lo}-{hi}"
            );
            assert!(seen.insert(p), "port {p} handed out twice");
            TcpListener::bind(("127.0.0.1", p)).expect("the port is bindable");
        }
    }
}
