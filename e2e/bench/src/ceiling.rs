//! The ceiling: read the same bytes from disk and PUT them to the same S3 server in
//! large objects, with no chunking, hashing, compression or encryption.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use holdfast_store::Store;
use tokio::sync::Semaphore;

use crate::minio::{ACCESS_KEY, REGION, SECRET_KEY};

/// `holdfast-bench ceiling`: runs as its own (measured) process.
#[derive(clap::Args, Debug)]
pub struct CeilingArgs {
    /// S3 endpoint, `http://127.0.0.1:<port>`.
    #[arg(long)]
    pub endpoint: String,
    #[arg(long)]
    pub bucket: String,
    /// Send payloads unsigned (no SHA-256 of the body), with a CRC32C over plain http:
    /// exactly how the mover PUTs its encrypted files.
    #[arg(long)]
    pub unsigned: bool,
    /// Object size in MiB (16–64 per PERFORMANCE.md).
    #[arg(long, default_value_t = 32)]
    pub object_mib: usize,
    /// PUTs in flight.
    #[arg(long, default_value_t = 4)]
    pub uploads: usize,
    /// Directories or files to read (directories are walked in name order).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub async fn run(a: CeilingArgs) -> anyhow::Result<()> {
    let store = Arc::new(
        holdfast_store::S3Store::new(holdfast_store::S3Config {
            endpoint: Some(a.endpoint.clone()),
            region: Some(REGION.into()),
            bucket: a.bucket.clone(),
            prefix: String::new(),
            path_style: true,
            ca_bundle: None,
            insecure_skip_tls_verify: false,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            session_token: None,
            storage_class: None,
            retry: holdfast_store::RetryPolicy::default(),
            payload: if a.unsigned {
                holdfast_store::PayloadProtection::SelfAuthenticated
            } else {
                holdfast_store::PayloadProtection::Signed
            },
        })
        .await?,
    );
    let mut files = Vec::new();
    for p in &a.paths {
        if p.is_dir() {
            for (rel, _) in crate::dataset::manifest(p)? {
                files.push(p.join(rel));
            }
        } else {
            files.push(p.clone());
        }
    }
    let object = a.object_mib.clamp(1, 1024) * 1024 * 1024;
    let sem = Arc::new(Semaphore::new(a.uploads.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    // reader thread: fills object-sized buffers from the files, in order
    let reader = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut buf = Vec::with_capacity(object);
        let mut total = 0u64;
        for f in files {
            let mut file =
                std::fs::File::open(&f).with_context(|| format!("open {}", f.display()))?;
            loop {
                // read_to_end into spare capacity: no zero-filling of the buffer
                let room = (object - buf.len()) as u64;
                let n = (&mut file).take(room).read_to_end(&mut buf)?;
                total += n as u64;
                if buf.len() == object {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(object));
                    if tx.blocking_send(full).is_err() {
                        return Ok(total);
                    }
                }
                if n == 0 {
                    break;
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.blocking_send(buf);
        }
        Ok(total)
    });
    let mut i = 0u64;
    while let Some(buf) = rx.recv().await {
        let permit = sem.clone().acquire_owned().await?;
        let store = store.clone();
        let key = format!("ceiling/{i:06}");
        i += 1;
        tasks.spawn(async move {
            let r = store.put(&key, Bytes::from(buf)).await;
            drop(permit);
            r
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let total = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    println!("{{\"bytes\":{total},\"objects\":{i}}}");
    Ok(())
}
