//! The same oracle against a real MinIO (S3): our backup → `restic check --read-data`
//! and `restic restore`; restic's backup → our restore; and a backup through a fault
//! proxy injecting 503/500 responses and connection resets still completes and checks
//! clean. Without a minio binary these fail under `e2e/test` and skip elsewhere.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use holdfast_repo::Repository;
use holdfast_repo::backup::{BackupOptions, backup};
use holdfast_repo::check::{CheckOptions, check};
use holdfast_repo::restore::{RestoreOptions, restore};
use holdfast_store::testing::{MINIO_PASSWORD, MINIO_USER, MinioServer};
use holdfast_store::{DynStore, S3Config, S3Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn s3(cfg: S3Config) -> DynStore {
    let s = S3Store::new(cfg).await.expect("s3 client");
    s.ensure_bucket().await.expect("bucket");
    Arc::new(s)
}

fn restic_env() -> [(&'static str, &'static str); 2] {
    [
        ("AWS_ACCESS_KEY_ID", MINIO_USER),
        ("AWS_SECRET_ACCESS_KEY", MINIO_PASSWORD),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repository_roundtrips_with_restic() {
    let Some(minio) = MinioServer::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    make_tree(&src, 12 << 20);
    let store = s3(minio.repository_config("holdfast", "repo/ours")).await;
    let repo = Repository::init(store, PASSWORD, test_kdf())
        .await
        .expect("init");
    let s = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup");
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let rep = check(
        &repo,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(
        rep.ok() && rep.warnings.is_empty(),
        "{:?} {:?}",
        rep.errors,
        rep.warnings
    );
    let out = tmp.path().join("ours");
    restore(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore");
    assert_same_tree(&src, &out);

    let Some(restic) = restic() else { return };
    let url = format!("s3:{}/holdfast/repo/ours", minio.endpoint);
    let env = restic_env();
    let (ok, o, e) = try_restic(&restic, &url, &["check", "--read-data"], None, &env);
    assert!(ok, "restic check failed:\n{o}\n{e}");
    let by_restic = tmp.path().join("by-restic");
    let (ok, o, e) = try_restic(
        &restic,
        &url,
        &[
            "restore",
            "latest",
            "--target",
            by_restic.to_str().expect("utf8"),
        ],
        None,
        &env,
    );
    assert!(ok, "restic restore failed:\n{o}\n{e}");
    assert_same_tree(&src, &by_restic);

    // restic writes, we read.
    let url2 = format!("s3:{}/holdfast/repo/restic", minio.endpoint);
    let (ok, o, e) = try_restic(
        &restic,
        &url2,
        &["init", "--repository-version", "2"],
        None,
        &env,
    );
    assert!(ok, "{o}\n{e}");
    let (ok, o, e) = try_restic(&restic, &url2, &["backup", "."], Some(&src), &env);
    assert!(ok, "{o}\n{e}");
    let repo2 = Repository::open(
        s3(minio.repository_config("holdfast", "repo/restic")).await,
        PASSWORD,
    )
    .await
    .expect("open");
    let out2 = tmp.path().join("ours-from-restic");
    restore(&repo2, "latest", &out2, RestoreOptions::default())
        .await
        .expect("restore restic repo");
    assert_same_tree(&src, &out2);
}

/// A TCP proxy in front of MinIO that answers some connections with 503 SlowDown or
/// 500, resets others after the first read of the request, and passes the rest for at most
/// 250 ms each (so that the client keeps opening connections, and so meeting faults).
async fn fault_proxy(upstream: u16, counter: Arc<AtomicU64>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = l.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                match n % 5 {
                    1 | 3 => {
                        let mut buf = vec![0u8; 4096];
                        let _ = client.read(&mut buf).await;
                        let (status, code) = if n % 5 == 1 {
                            ("503 Slow Down", "SlowDown")
                        } else {
                            ("500 Internal Server Error", "InternalError")
                        };
                        let body = format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
                        );
                        let resp = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(resp.as_bytes()).await;
                    }
                    2 => {
                        // Forward the start of the request, then drop both ends: the
                        // client sees its connection reset mid-request.
                        let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        let mut buf = vec![0u8; 4096];
                        if let Ok(k) = client.read(&mut buf).await {
                            let _ = server.write_all(&buf[..k]).await;
                        }
                        #[allow(deprecated)]
                        // a zero linger makes the close an RST, which is the point
                        let _ = client.set_linger(Some(std::time::Duration::ZERO));
                    }
                    _ => {
                        let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        // A client reuses a good connection for every later request, so
                        // a connection that lived forever would end the faults; each one
                        // is cut after a short life (a reset if a request is in flight).
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_millis(250),
                            tokio::io::copy_bidirectional(&mut client, &mut server),
                        )
                        .await;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backup_through_fault_proxy_is_complete_and_checks_clean() {
    let Some(minio) = MinioServer::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    make_tree(&src, 12 << 20);
    let counter = Arc::new(AtomicU64::new(0));
    let port = fault_proxy(minio.port, counter.clone()).await;
    let mut cfg = minio.repository_config("faulty", "repo");
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    cfg.retry.max_attempts = 12;
    cfg.retry.initial_backoff = std::time::Duration::from_millis(5);
    cfg.retry.max_backoff = std::time::Duration::from_millis(200);
    // Create the bucket directly, then go through the proxy for everything else.
    s3(minio.repository_config("faulty", "repo")).await;
    let faulty: DynStore = Arc::new(S3Store::new(cfg).await.expect("client"));
    let repo = Repository::init(faulty, PASSWORD, test_kdf())
        .await
        .expect("init through proxy");
    let s = backup(
        &repo,
        &src,
        BackupOptions {
            pack_size: 2 << 20,
            ..Default::default()
        },
    )
    .await
    .expect("backup through proxy");
    assert!(s.errors.is_empty());
    let out = tmp.path().join("out");
    restore(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore through proxy");
    assert_same_tree(&src, &out);
    assert!(
        counter.load(Ordering::Relaxed) > 10,
        "the proxy saw too few connections to inject faults"
    );

    // Checked without the proxy, by us and by restic.
    let direct = Repository::open(
        s3(minio.repository_config("faulty", "repo")).await,
        PASSWORD,
    )
    .await
    .expect("open");
    let rep = check(
        &direct,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(
        rep.ok() && rep.warnings.is_empty(),
        "{:?} {:?}",
        rep.errors,
        rep.warnings
    );
    if let Some(restic) = restic() {
        let url = format!("s3:{}/faulty/repo", minio.endpoint);
        let (ok, o, e) = try_restic(
            &restic,
            &url,
            &["check", "--read-data"],
            None,
            &restic_env(),
        );
        assert!(ok, "restic check failed:\n{o}\n{e}");
    }
}
