//! A store in an S3 bucket (any S3-compatible server) through aws-sdk-s3.
//!
//! Checksums are computed only when the operation requires them; how PUT bodies are
//! protected is the caller's choice ([`PayloadProtection`]): SigV4's SHA-256 of every
//! body costs about a core at 1 GB/s, which objects that authenticate themselves (the
//! repository's encrypted files) do not need. Every request is retried by our own loop
//! with exponential backoff on 5xx, 429, SlowDown, timeouts and connection failures.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

use crate::{ObjectInfo, RetryPolicy, Store, StoreError, validate_key};

/// How the bodies of PUTs are protected on their way to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadProtection {
    /// Over plain http, SigV4 signs the SHA-256 of every body (the server recomputes and
    /// compares it); over https the body is sent as `UNSIGNED-PAYLOAD`, TLS protects it.
    /// For objects that do not authenticate themselves.
    #[default]
    SignedUnlessTls,
    /// SigV4 signs the SHA-256 of every body, over http and https.
    Signed,
    /// `UNSIGNED-PAYLOAD` over http and https, for objects that authenticate themselves
    /// (restic's files: every blob, pack header and file is encrypted and MAC'd, so a
    /// damaged or forged body is refused when it is read). Over plain http the body's
    /// CRC32C goes along in `x-amz-checksum-crc32c`, which AWS and MinIO verify before
    /// storing the object: transport damage is refused at write time, as a signed payload
    /// would be, for a checksum that costs about a millisecond per 16 MiB instead of a
    /// SHA-256 pass. Over https TLS already refuses damaged records; no checksum is sent.
    SelfAuthenticated,
}

/// Settings of an S3 store.
#[derive(Clone, Default)]
pub struct S3Config {
    /// Endpoint URL (`http://127.0.0.1:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Region; defaults to `us-east-1`.
    pub region: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (without leading or trailing `/`).
    pub prefix: String,
    /// Path-style addressing (`host/bucket/key`), needed by most S3-compatible servers.
    pub path_style: bool,
    /// PEM file with extra CA certificates to trust (besides the system roots).
    pub ca_bundle: Option<PathBuf>,
    /// Do not verify the server's certificate (tests only; `ca_bundle` is then ignored).
    pub insecure_skip_tls_verify: bool,
    /// Static access key id and secret; `None` uses the SDK's default chain
    /// (environment, web identity, instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Storage class for written objects (`STANDARD`, `STANDARD_IA`, ...).
    pub storage_class: Option<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// How PUT bodies are protected (signed, or unsigned with a CRC).
    pub payload: PayloadProtection,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("ca_bundle", &self.ca_bundle)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("static_credentials", &self.access_key_id.is_some())
            .field("storage_class", &self.storage_class)
            .field("retry", &self.retry)
            .field("payload", &self.payload)
            .finish()
    }
}

/// A store in an S3 bucket under a prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    storage_class: Option<StorageClass>,
    retry: RetryPolicy,
    put: PutMode,
}

/// What a PUT sends, decided once from [`PayloadProtection`] and the endpoint's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutMode {
    /// SigV4 with the body's SHA-256.
    Signed,
    /// `UNSIGNED-PAYLOAD`, nothing else (TLS protects the body).
    Unsigned,
    /// `UNSIGNED-PAYLOAD` and `x-amz-checksum-crc32c`.
    UnsignedCrc32c,
}

impl PutMode {
    fn new(protection: PayloadProtection, tls: bool) -> PutMode {
        match (protection, tls) {
            (PayloadProtection::Signed, _) | (PayloadProtection::SignedUnlessTls, false) => {
                PutMode::Signed
            }
            (PayloadProtection::SignedUnlessTls, true)
            | (PayloadProtection::SelfAuthenticated, true) => PutMode::Unsigned,
            (PayloadProtection::SelfAuthenticated, false) => PutMode::UnsignedCrc32c,
        }
    }
}

/// The CRC32C (Castagnoli) of `data`, base64 of its 4 big-endian bytes, as S3's
/// `x-amz-checksum-crc32c` carries it.
fn crc32c_base64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

/// Outcome of one attempt, classified for the retry loop.
enum Attempt<T> {
    Done(T),
    Retry(String),
    Fail(StoreError),
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> (bool, Option<u16>) {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (true, None)
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or_default();
            (retryable(status, code), Some(status))
        }
        _ => (false, None),
    }
}

/// Whether a failed request is worth another attempt: server trouble, throttling, and a
/// body the server found damaged (its checksum or SHA-256 did not match: damaged in
/// transit; the retry sends it again from memory).
fn retryable(status: u16, code: &str) -> bool {
    status >= 500
        || status == 429
        || matches!(
            code,
            "SlowDown"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable"
                | "Throttling"
                | "BadDigest"
                | "XAmzContentChecksumMismatch"
                | "XAmzContentSHA256Mismatch"
        )
}

impl S3Store {
    /// Connects (lazily) to the bucket described by `config`.
    pub async fn new(config: S3Config) -> Result<S3Store, StoreError> {
        if config.bucket.is_empty() {
            return Err(StoreError::Config("S3 bucket name is empty".into()));
        }
        let region = config
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string());
        let (connect_timeout, read_timeout) = (Duration::from_secs(10), Duration::from_secs(120));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(connect_timeout)
                    .read_timeout(read_timeout)
                    .operation_attempt_timeout(Duration::from_secs(600))
                    .build(),
            );
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(ak), Some(sk)) => {
                loader = loader.credentials_provider(Credentials::new(
                    ak.clone(),
                    sk.clone(),
                    config.session_token.clone(),
                    None,
                    "holdfast-static",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Config(
                    "S3 access key id and secret access key must be given together".into(),
                ));
            }
        }
        if config.insecure_skip_tls_verify {
            loader = loader.http_client(crate::tls::insecure_http_client(
                connect_timeout,
                read_timeout,
            ));
        } else if let Some(ca) = &config.ca_bundle {
            let pem = std::fs::read(ca).map_err(|e| {
                StoreError::Config(format!("reading CA bundle {}: {e}", ca.display()))
            })?;
            // The SDK panics on a PEM it cannot parse: check it first.
            crate::tls::check_ca_bundle(&pem)
                .map_err(|e| StoreError::Config(format!("CA bundle {}: {e}", ca.display())))?;
            let ctx = TlsContext::builder()
                .with_trust_store(
                    TrustStore::empty()
                        .with_native_roots(true)
                        .with_pem_certificate(pem),
                )
                .build()
                .map_err(|e| StoreError::Config(format!("CA bundle {}: {e}", ca.display())))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(ctx)
                .build_https();
            loader = loader.http_client(http);
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &config.endpoint {
            b = b.endpoint_url(ep.clone());
        }
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://s3.amazonaws.com".into());
        let put = PutMode::new(config.payload, endpoint.starts_with("https://"));
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.trim_matches('/').to_string(),
            endpoint,
            storage_class: config.storage_class.as_deref().map(StorageClass::from),
            retry: config.retry,
            put,
        })
    }

    /// The underlying SDK client (for tests and bucket administration).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket if it does not exist (test and first-use helper).
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let code = e.code().unwrap_or_default().to_string();
                if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
                    Ok(())
                } else {
                    Err(self.err("create bucket", "", DisplayErrorContext(&e).to_string()))
                }
            }
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn err(&self, op: &'static str, key: &str, message: String) -> StoreError {
        StoreError::S3 {
            op,
            key: key.to_string(),
            bucket: self.bucket.clone(),
            message,
        }
    }

    /// Runs `f` until it succeeds, fails permanently, or attempts run out.
    async fn with_retry<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match f().await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(msg) => {
                    if attempt >= max {
                        return Err(self.err(
                            op,
                            key,
                            format!("giving up after {attempt} attempts: {msg}"),
                        ));
                    }
                    let delay = self.retry.backoff(attempt);
                    tracing::debug!(op, key, attempt, ?delay, error = %msg, "retrying S3 request");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    fn sdk_attempt<T, E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> Attempt<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (retry, status) = classify(&e);
        let msg = DisplayErrorContext(&e).to_string();
        if status == Some(404) {
            return Attempt::Fail(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        if retry {
            Attempt::Retry(msg)
        } else {
            Attempt::Fail(self.err(op, key, msg))
        }
    }

    async fn get_inner(&self, key: &str, range: Option<(u64, u64)>) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        let op = if range.is_some() {
            "get range of"
        } else {
            "get"
        };
        let data = self
            .with_retry(op, key, || async {
                let mut req = self.client.get_object().bucket(&self.bucket).key(&full);
                if let Some((off, len)) = range {
                    if len == 0 {
                        return Attempt::Done(Bytes::new());
                    }
                    req = req.range(format!("bytes={}-{}", off, off + len - 1));
                }
                match req.send().await {
                    Ok(resp) => match resp.body.collect().await {
                        Ok(b) => Attempt::Done(b.into_bytes()),
                        Err(e) => Attempt::Retry(format!("reading body: {e}")),
                    },
                    Err(e) => {
                        if let SdkError::ServiceError(se) = &e
                            && se.err().is_no_such_key()
                        {
                            return Attempt::Fail(StoreError::NotFound {
                                key: key.to_string(),
                            });
                        }
                        self.sdk_attempt(op, key, e)
                    }
                }
            })
            .await?;
        if let Some((off, len)) = range
            && data.len() as u64 != len
        {
            return Err(StoreError::ShortRead {
                key: key.to_string(),
                offset: off,
                wanted: len,
                got: data.len() as u64,
            });
        }
        Ok(data)
    }
}

#[async_trait]
impl Store for S3Store {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_inner(key, None).await
    }

    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Bytes, StoreError> {
        self.get_inner(key, Some((offset, length))).await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        // Once, not per attempt: a retry sends the same bytes.
        let crc = (self.put == PutMode::UnsignedCrc32c).then(|| crc32c_base64(&data));
        self.with_retry("put", key, || async {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .content_length(data.len() as i64)
                .set_checksum_crc32_c(crc.clone())
                .body(ByteStream::from(data.clone()));
            if let Some(sc) = &self.storage_class {
                req = req.storage_class(sc.clone());
            }
            let res = match self.put {
                PutMode::Signed => req.send().await,
                PutMode::Unsigned | PutMode::UnsignedCrc32c => {
                    req.customize().disable_payload_signing().send().await
                }
            };
            match res {
                Ok(_) => Attempt::Done(()),
                Err(e) => self.sdk_attempt("put", key, e),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .with_retry("list", prefix, || async {
                    let req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&full_prefix)
                        .set_continuation_token(token.clone());
                    match req.send().await {
                        Ok(r) => Attempt::Done(r),
                        Err(e) => self.sdk_attempt("list", prefix, e),
                    }
                })
                .await?;
            for obj in page.contents() {
                if let Some(k) = obj.key()
                    && k.len() >= strip
                {
                    out.push(ObjectInfo {
                        key: k[strip..].to_string(),
                        size: u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0),
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        let r = self
            .with_retry("delete", key, || async {
                match self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send()
                    .await
                {
                    Ok(_) => Attempt::Done(()),
                    Err(e) => self.sdk_attempt("delete", key, e),
                }
            })
            .await;
        match r {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        let r = self
            .with_retry("head", key, || async {
                match self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send()
                    .await
                {
                    Ok(r) => {
                        Attempt::Done(u64::try_from(r.content_length().unwrap_or(0)).unwrap_or(0))
                    }
                    Err(e) => {
                        if let SdkError::ServiceError(se) = &e
                            && se.err().is_not_found()
                        {
                            return Attempt::Fail(StoreError::NotFound {
                                key: key.to_string(),
                            });
                        }
                        self.sdk_attempt("head", key, e)
                    }
                }
            })
            .await;
        match r {
            Ok(n) => Ok(Some(n)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3:{}/{}", self.endpoint, self.bucket)
        } else {
            format!("s3:{}/{}/{}", self.endpoint, self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli_in_s3_encoding() {
        // The CRC-32C check value: CRC32C("123456789") = 0xe3069283.
        assert_eq!(crc32c_base64(b"123456789"), "4waSgw==");
        assert_eq!(crc32c_base64(b""), "AAAAAA==");
    }

    #[test]
    fn damaged_bodies_and_server_trouble_are_retried_other_refusals_not() {
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (429, ""),
            (400, "RequestTimeout"),
            (400, "BadDigest"),
            (400, "XAmzContentChecksumMismatch"),
            (400, "XAmzContentSHA256Mismatch"),
        ] {
            assert!(retryable(status, code), "{status} {code}");
        }
        for (status, code) in [
            (403, "AccessDenied"),
            (400, "InvalidDigest"),
            (404, "NoSuchKey"),
            (400, "InvalidStorageClass"),
        ] {
            assert!(!retryable(status, code), "{status} {code}");
        }
    }

    #[test]
    fn put_modes() {
        use PayloadProtection as P;
        assert_eq!(PutMode::new(P::SignedUnlessTls, false), PutMode::Signed);
        assert_eq!(PutMode::new(P::SignedUnlessTls, true), PutMode::Unsigned);
        assert_eq!(PutMode::new(P::Signed, false), PutMode::Signed);
        assert_eq!(PutMode::new(P::Signed, true), PutMode::Signed);
        assert_eq!(
            PutMode::new(P::SelfAuthenticated, false),
            PutMode::UnsignedCrc32c
        );
        assert_eq!(PutMode::new(P::SelfAuthenticated, true), PutMode::Unsigned);
    }
}
