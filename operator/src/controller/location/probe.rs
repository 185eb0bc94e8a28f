//! Probing an S3 location: list, and for read-write locations a write and delete of a marker object.
//! Talks to object storage; the classification of failures is pure and unit-tested.

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use holdfast_store::{S3Config, S3Store};

/// Why a location is unusable. The variant name is the `reason` in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidCredentials,
    MissingCredentials,
    BucketNotFound,
    EndpointUnreachable,
    TLSError,
    AccessDenied,
    WrongRegion,
    InvalidConfiguration,
    InvalidStorageClass,
    StorageError,
    PassphraseMissing,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCredentials => "InvalidCredentials",
            Self::MissingCredentials => "MissingCredentials",
            Self::BucketNotFound => "BucketNotFound",
            Self::EndpointUnreachable => "EndpointUnreachable",
            Self::TLSError => "TLSError",
            Self::AccessDenied => "AccessDenied",
            Self::WrongRegion => "WrongRegion",
            Self::InvalidConfiguration => "InvalidConfiguration",
            Self::InvalidStorageClass => "InvalidStorageClass",
            Self::StorageError => "StorageError",
            Self::PassphraseMissing => "PassphraseMissing",
        }
    }
}

/// A failed probe: a reason and a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub reason: Reason,
    pub message: String,
}

/// What the SDK told us, reduced to what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// The request never got an HTTP response (connect, DNS, TLS, I/O).
    Dispatch { detail: String, timeout: bool },
    /// The server answered with an error.
    Service {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// Anything else (construction errors, unparseable responses).
    Other { detail: String },
}

/// Which call failed, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    List,
    Write,
    Delete,
}

/// Words of TLS failures in the error chain of a dispatch failure (lower case): rustls'
/// (`invalid peer certificate: UnknownIssuer`, `NotValidForName`, `Expired`, `received corrupt
/// message` when the server speaks plain HTTP) and X.509 ones.
const TLS_WORDS: &[&str] = &[
    "certificate",
    "tls",
    "handshake",
    "unknownissuer",
    "notvalidforname",
    "x509",
    "corrupt message",
];

/// Maps a raw SDK failure to a reason and a message naming the fix.
pub fn classify(step: Step, bucket: &str, endpoint: &str, err: &RawError) -> ProbeFailure {
    let f = |reason, message: String| ProbeFailure { reason, message };
    match err {
        RawError::Dispatch { detail, timeout } => {
            let lower = detail.to_lowercase();
            if TLS_WORDS.iter().any(|k| lower.contains(k)) {
                f(
                    Reason::TLSError,
                    format!(
                        "TLS with {endpoint} failed ({detail}); set spec.s3.caBundle to the CA that signed the server's certificate, or check the endpoint's scheme"
                    ),
                )
            } else if *timeout {
                f(
                    Reason::EndpointUnreachable,
                    format!(
                        "{endpoint} did not answer in time ({detail}); check spec.s3.endpoint and network policies"
                    ),
                )
            } else {
                f(
                    Reason::EndpointUnreachable,
                    format!(
                        "cannot connect to {endpoint} ({detail}); check spec.s3.endpoint and that the server is running"
                    ),
                )
            }
        }
        RawError::Service {
            status,
            code,
            message,
        } => {
            let code = code.as_deref().unwrap_or("");
            let detail = message.as_deref().unwrap_or("");
            match (code, *status) {
                (
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "InvalidTokenId"
                    | "ExpiredToken"
                    | "InvalidSecurity"
                    | "TokenRefreshRequired",
                    _,
                ) => f(
                    Reason::InvalidCredentials,
                    format!(
                        "the server rejected the credentials ({code}: {detail}); fix accessKeyId/secretAccessKey (and sessionToken, for temporary credentials) in the Secret named by spec.credentials.secretRef"
                    ),
                ),
                ("InvalidStorageClass", _) => f(
                    Reason::InvalidStorageClass,
                    format!(
                        "{endpoint} does not accept the storage class data would be written with ({detail}); set spec.s3.storageClass to one it knows (MinIO: STANDARD or REDUCED_REDUNDANCY), or remove it to use the server's default"
                    ),
                ),
                ("NoSuchBucket", _) | ("", 404) => f(
                    Reason::BucketNotFound,
                    format!(
                        "bucket {bucket:?} does not exist at {endpoint}; create it or fix spec.s3.bucket"
                    ),
                ),
                (
                    "AuthorizationHeaderMalformed"
                    | "PermanentRedirect"
                    | "IllegalLocationConstraintException",
                    _,
                )
                | ("", 301) => f(
                    Reason::WrongRegion,
                    format!(
                        "bucket {bucket:?} is in another region ({code} {detail}); fix spec.s3.region"
                    ),
                ),
                ("AccessDenied" | "AllAccessDisabled" | "AccountProblem", _) | ("", 403) => {
                    let what = match step {
                        Step::List => "list objects in",
                        Step::Write => "write to",
                        Step::Delete => "delete from",
                    };
                    let hint = if step == Step::List {
                        "grant s3:ListBucket on the bucket"
                    } else {
                        "grant s3:PutObject and s3:DeleteObject on the prefix, or set spec.accessMode: ReadOnly"
                    };
                    f(
                        Reason::AccessDenied,
                        format!(
                            "the credentials may not {what} bucket {bucket:?} ({code}: {detail}); {hint}"
                        ),
                    )
                }
                _ => f(
                    Reason::StorageError,
                    format!("S3 error {status} {code}: {detail}"),
                ),
            }
        }
        RawError::Other { detail } => f(Reason::StorageError, detail.clone()),
    }
}

fn raw<E, R>(err: &SdkError<E, R>) -> RawError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus + Send + Sync + 'static,
    E: Send + Sync,
{
    match err {
        SdkError::DispatchFailure(d) => RawError::Dispatch {
            detail: error_chain(err),
            timeout: d.is_timeout(),
        },
        SdkError::TimeoutError(_) => RawError::Dispatch {
            detail: error_chain(err),
            timeout: true,
        },
        SdkError::ServiceError(se) => RawError::Service {
            status: se.raw().status_u16(),
            code: se.err().code().map(str::to_string),
            message: se.err().message().map(str::to_string),
        },
        SdkError::ResponseError(re) => RawError::Service {
            status: re.raw().status_u16(),
            code: None,
            message: None,
        },
        _ => RawError::Other {
            detail: DisplayErrorContext(err).to_string(),
        },
    }
}

/// The innermost causes of an error, Display only, deduplicated: short enough for a status message.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty()
            && !parts
                .iter()
                .any(|p| p.contains(&s) || s.contains(p.as_str()))
        {
            parts.push(s);
        }
        cur = e.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

/// Status code of a raw HTTP response, abstracted so `raw` is generic.
trait HttpStatus {
    fn status_u16(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_u16(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Everything the probe needs, resolved from the spec and Secrets.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub config: S3Config,
    /// Prefix for the marker object (the location prefix plus `holdfast/`).
    pub marker_prefix: String,
    pub read_write: bool,
}

/// How long one S3 call of a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// One S3 call of a probe, bounded in time, its failure classified.
async fn call(
    step: Step,
    bucket: &str,
    endpoint: &str,
    fut: impl std::future::Future<Output = Result<(), RawError>>,
) -> Result<(), ProbeFailure> {
    match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(raw)) => Err(classify(step, bucket, endpoint, &raw)),
        Err(_) => Err(classify(
            step,
            bucket,
            endpoint,
            &RawError::Dispatch {
                detail: format!("no answer within {PROBE_TIMEOUT:?}"),
                timeout: true,
            },
        )),
    }
}

/// Lists the prefix and, for read-write locations, writes and deletes a marker object.
pub async fn probe(target: &ProbeTarget, marker_name: &str) -> Result<(), ProbeFailure> {
    let bucket = target.config.bucket.clone();
    let endpoint = target
        .config
        .endpoint
        .clone()
        .unwrap_or_else(|| "AWS S3".to_string());
    let store = S3Store::new(target.config.clone())
        .await
        .map_err(|e| ProbeFailure {
            reason: Reason::InvalidConfiguration,
            message: e.to_string(),
        })?;
    let client = store.client();
    let list = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(&target.marker_prefix)
        .max_keys(1)
        .send();
    call(Step::List, &bucket, &endpoint, async {
        list.await.map(drop).map_err(|e| raw(&e))
    })
    .await?;
    if !target.read_write {
        return Ok(());
    }
    let key = format!("{}.validation/{marker_name}", target.marker_prefix);
    // Written like the data: with the storage class, so a class the server refuses shows here.
    let put = client
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .set_storage_class(
            target
                .config
                .storage_class
                .as_deref()
                .map(StorageClass::from),
        )
        .body(ByteStream::from_static(
            b"holdfast location validation marker\n",
        ))
        .send();
    call(Step::Write, &bucket, &endpoint, async {
        put.await.map(drop).map_err(|e| raw(&e))
    })
    .await?;
    let delete = client.delete_object().bucket(&bucket).key(&key).send();
    call(Step::Delete, &bucket, &endpoint, async {
        delete.await.map(drop).map_err(|e| raw(&e))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> RawError {
        RawError::Service {
            status,
            code: (!code.is_empty()).then(|| code.to_string()),
            message: Some("m".into()),
        }
    }

    #[test]
    fn credentials_errors() {
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            // MinIO, for temporary credentials without their session token.
            "InvalidTokenId",
        ] {
            let f = classify(Step::List, "b", "http://e", &service(403, code));
            assert_eq!(f.reason, Reason::InvalidCredentials, "{code}");
            assert!(
                f.message.contains("spec.credentials.secretRef"),
                "{}",
                f.message
            );
        }
    }

    #[test]
    fn missing_bucket() {
        assert_eq!(
            classify(Step::List, "b", "e", &service(404, "NoSuchBucket")).reason,
            Reason::BucketNotFound
        );
        assert_eq!(
            classify(Step::List, "b", "e", &service(404, "")).reason,
            Reason::BucketNotFound
        );
    }

    #[test]
    fn access_denied_names_the_step() {
        let f = classify(Step::Write, "b", "e", &service(403, "AccessDenied"));
        assert_eq!(f.reason, Reason::AccessDenied);
        assert!(f.message.contains("write to"), "{}", f.message);
        assert!(f.message.contains("ReadOnly"), "{}", f.message);
        let f = classify(Step::List, "b", "e", &service(403, ""));
        assert!(f.message.contains("s3:ListBucket"), "{}", f.message);
    }

    #[test]
    fn dispatch_errors() {
        let refused = RawError::Dispatch {
            detail: "Connection refused (os error 111)".into(),
            timeout: false,
        };
        assert_eq!(
            classify(Step::List, "b", "http://x:1", &refused).reason,
            Reason::EndpointUnreachable
        );
        let tls = RawError::Dispatch {
            detail: "invalid peer certificate: UnknownIssuer".into(),
            timeout: false,
        };
        let f = classify(Step::List, "b", "https://x", &tls);
        assert_eq!(f.reason, Reason::TLSError);
        assert!(f.message.contains("caBundle"));
        for detail in [
            "invalid peer certificate: NotValidForName",
            "invalid peer certificate: Expired",
            "received corrupt message of type InvalidContentType",
            "io error: tls handshake eof",
        ] {
            let e = RawError::Dispatch {
                detail: detail.into(),
                timeout: false,
            };
            assert_eq!(
                classify(Step::List, "b", "https://x", &e).reason,
                Reason::TLSError,
                "{detail}"
            );
        }
        let slow = RawError::Dispatch {
            detail: "timeout".into(),
            timeout: true,
        };
        assert_eq!(
            classify(Step::List, "b", "e", &slow).reason,
            Reason::EndpointUnreachable
        );
    }

    #[test]
    fn region_and_unknown() {
        assert_eq!(
            classify(
                Step::List,
                "b",
                "e",
                &service(400, "AuthorizationHeaderMalformed")
            )
            .reason,
            Reason::WrongRegion
        );
        assert_eq!(
            classify(Step::List, "b", "e", &service(500, "InternalError")).reason,
            Reason::StorageError
        );
        let f = classify(Step::Write, "b", "e", &service(400, "InvalidStorageClass"));
        assert_eq!(f.reason, Reason::InvalidStorageClass);
        assert!(f.message.contains("spec.s3.storageClass"), "{}", f.message);
    }
}
