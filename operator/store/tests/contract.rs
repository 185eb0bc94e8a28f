//! The same behaviour checks against every store: the local directory always, and a
//! real MinIO server when a binary is available (skipped with a message otherwise).

use bytes::Bytes;
use holdfast_store::testing::MinioServer;
use holdfast_store::{LocalStore, PayloadProtection, S3Config, S3Store, Store, StoreError};

async fn exercise(store: &dyn Store) {
    assert!(store.head("config").await.expect("head").is_none());
    assert!(
        store
            .get("config")
            .await
            .expect_err("missing")
            .is_not_found()
    );
    store
        .put("config", Bytes::from_static(b"hello"))
        .await
        .expect("put");
    store
        .put("data/ab/abcdef", Bytes::from(vec![7u8; 100_000]))
        .await
        .expect("put nested");
    store
        .put("data/cd/cd01", Bytes::from_static(b"x"))
        .await
        .expect("put");
    store
        .put("snapshots/s1", Bytes::from_static(b"s"))
        .await
        .expect("put");
    assert_eq!(store.head("config").await.expect("head"), Some(5));
    assert_eq!(
        store.get("config").await.expect("get"),
        Bytes::from_static(b"hello")
    );
    let r = store
        .get_range("data/ab/abcdef", 99_990, 10)
        .await
        .expect("range");
    assert_eq!(r.len(), 10);
    let short = store.get_range("config", 3, 10).await;
    assert!(
        matches!(
            short,
            Err(StoreError::ShortRead { .. }) | Err(StoreError::S3 { .. })
        ),
        "{short:?}"
    );
    let listed: Vec<_> = store
        .list("data/")
        .await
        .expect("list")
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("data/ab/abcdef".to_string(), 100_000),
            ("data/cd/cd01".to_string(), 1)
        ]
    );
    assert_eq!(store.list("snapshots/").await.expect("list").len(), 1);
    assert!(store.list("index/").await.expect("list").is_empty());
    // Overwrite is atomic and complete.
    store
        .put("config", Bytes::from_static(b"bye"))
        .await
        .expect("overwrite");
    assert_eq!(
        store.get("config").await.expect("get"),
        Bytes::from_static(b"bye")
    );
    store.delete("data/cd/cd01").await.expect("delete");
    store
        .delete("data/cd/cd01")
        .await
        .expect("delete again is fine");
    assert_eq!(store.list("data/").await.expect("list").len(), 1);
    assert!(store.get("../etc/passwd").await.is_err());
}

#[tokio::test]
async fn local_store_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::new(dir.path().join("repo"));
    exercise(&store).await;
    // No temp files are left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains(".holdfast-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[tokio::test]
async fn s3_store_contract_against_minio() {
    let Some(minio) = MinioServer::start() else {
        return;
    };
    for payload in [
        PayloadProtection::SignedUnlessTls,
        PayloadProtection::Signed,
        PayloadProtection::SelfAuthenticated,
    ] {
        for prefix in ["", "some/prefix"] {
            let store = S3Store::new(S3Config {
                payload,
                ..minio.config("contract", prefix)
            })
            .await
            .expect("client");
            store.ensure_bucket().await.expect("bucket");
            exercise(&store).await;
            for o in store.list("").await.expect("list") {
                store.delete(&o.key).await.expect("cleanup");
            }
        }
    }
}

/// What `PayloadProtection::SelfAuthenticated` relies on over plain http: the server takes
/// `UNSIGNED-PAYLOAD` and verifies `x-amz-checksum-crc32c`, refusing a body that does not
/// match (as it would be after damage in transit).
#[tokio::test]
async fn minio_verifies_the_crc32c_of_unsigned_payloads() {
    let Some(minio) = MinioServer::start() else {
        return;
    };
    let store = S3Store::new(minio.config("crc", "")).await.expect("client");
    store.ensure_bucket().await.expect("bucket");
    let put = |body: &'static [u8], crc: &str| {
        store
            .client()
            .put_object()
            .bucket("crc")
            .key("k")
            .checksum_crc32_c(crc)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(body))
            .customize()
            .disable_payload_signing()
            .send()
    };
    // CRC32C("123456789") = 0xe3069283, base64 of its big-endian bytes.
    put(b"123456789", "4waSgw==")
        .await
        .expect("matching CRC32C accepted");
    let e = put(b"123456780", "4waSgw==")
        .await
        .expect_err("a body that does not match its CRC32C must be refused");
    let msg = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
    assert!(msg.contains("XAmzContentChecksumMismatch"), "{msg}");
    assert_eq!(
        store.get("k").await.expect("get"),
        Bytes::from_static(b"123456789"),
        "the refused PUT left the object as it was"
    );
}

#[tokio::test]
async fn s3_store_reports_unreachable_endpoint_after_retries() {
    let mut cfg = holdfast_store::S3Config {
        endpoint: Some("http://127.0.0.1:9".into()),
        bucket: "b".into(),
        path_style: true,
        access_key_id: Some("a".into()),
        secret_access_key: Some("b".into()),
        ..Default::default()
    };
    cfg.retry.max_attempts = 3;
    cfg.retry.initial_backoff = std::time::Duration::from_millis(10);
    let store = S3Store::new(cfg).await.expect("client");
    let err = store.get("config").await.expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("giving up after 3 attempts") && msg.contains("\"config\""),
        "{msg}"
    );
}
