//! The benchmark's own MinIO server (the testbed's binary) and the bucket chores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use holdfast_store::testing::free_port;
use holdfast_store::{PayloadProtection, RetryPolicy, S3Config, S3Store, Store};

pub const ACCESS_KEY: &str = "holdfast-bench";
pub const SECRET_KEY: &str = "holdfast-bench-secret";
pub const REGION: &str = "us-east-1";

/// A running MinIO; killed on drop (its data directory is left to the caller).
pub struct Minio {
    child: Child,
    pub port: u16,
    pub endpoint: String,
}

impl Minio {
    /// Starts `bin` on a free loopback port with its data in `data`, logs in `log`.
    pub fn start(bin: &Path, data: &Path, log: &Path) -> anyhow::Result<Minio> {
        std::fs::create_dir_all(data)?;
        let port = free_port()?;
        let console = free_port()?;
        let logf = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .arg("server")
            .arg("--quiet")
            .arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg(data)
            .env("MINIO_ROOT_USER", ACCESS_KEY)
            .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
            .env("MINIO_REGION", REGION)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("MINIO_CALLHOME_ENABLE", "off")
            .env("HOME", data)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut m = Minio {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !m.ready() {
            if let Some(st) = m.child.try_wait()? {
                bail!("minio exited early ({st}); see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("minio not ready after 60 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(m)
    }

    fn ready(&self) -> bool {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + sys) the server has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// A store handle on `bucket` (bucket administration: payloads signed, the default).
    pub async fn store(&self, bucket: &str) -> anyhow::Result<S3Store> {
        Ok(S3Store::new(S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some(REGION.into()),
            bucket: bucket.into(),
            prefix: String::new(),
            path_style: true,
            ca_bundle: None,
            insecure_skip_tls_verify: false,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            session_token: None,
            storage_class: None,
            retry: RetryPolicy::default(),
            payload: PayloadProtection::default(),
        })
        .await?)
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.store(bucket).await?.ensure_bucket().await?;
        Ok(())
    }

    /// Bytes and objects stored in `bucket`.
    pub async fn bucket_size(&self, bucket: &str) -> anyhow::Result<(u64, u64)> {
        let objs = self.store(bucket).await?.list("").await?;
        Ok((objs.iter().map(|o| o.size).sum(), objs.len() as u64))
    }

    /// Deletes every object of `bucket` and the bucket.
    pub async fn remove_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let store = self.store(bucket).await?;
        let objs = store.list("").await?;
        let client = store.client();
        for batch in objs.chunks(1000) {
            let ids = batch
                .iter()
                .map(|o| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(&o.key)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            client
                .delete_objects()
                .bucket(bucket)
                .delete(
                    aws_sdk_s3::types::Delete::builder()
                        .set_objects(Some(ids))
                        .quiet(true)
                        .build()?,
                )
                .send()
                .await
                .with_context(|| format!("deleting objects of {bucket}"))?;
        }
        client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .with_context(|| format!("deleting bucket {bucket}"))?;
        Ok(())
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// user + sys CPU seconds of a process from `/proc/<pid>/stat`.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((utime + stime) / tck)
}

/// The default MinIO binary: `e2e/tools/build --path minio` prints it; this is the
/// fallback when the run script did not pass one.
pub fn default_binary() -> Option<PathBuf> {
    holdfast_store::testing::find_minio()
}
