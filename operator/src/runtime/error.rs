//! Errors of a reconcile and soft refusals. An error names the call or object that failed and
//! keeps its cause; [`Error::stall`] says whether waiting helps (transient) or someone has to
//! fix something (persistent), which the kernel shows as the `Stalled` condition. Pure.

use crate::objects::ObjectsError;

/// A hard error of a reconcile step: the step is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{call}: {source}")]
    Kube {
        call: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A restic-format repository could not be opened, created or changed.
    #[error("{what}: {source}")]
    Repository {
        /// Which repository and what was done to it.
        what: String,
        /// What a user does about it (names the Secret or location to fix).
        fix: String,
        #[source]
        source: Box<holdfast_repo::RepoError>,
    },
    /// Object storage refused or failed a request.
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: holdfast_store::StoreError,
    },
    /// Capturing or restoring Kubernetes objects failed.
    #[error("{what}: {source}")]
    Objects {
        what: &'static str,
        #[source]
        source: ObjectsError,
    },
    /// Something the operator needs is missing or malformed (a Secret without its key...).
    #[error("{message}")]
    Config {
        reason: &'static str,
        message: String,
    },
    /// A local failure (randomness, serialisation).
    #[error("{what}: {message}")]
    Internal { what: &'static str, message: String },
}

impl Error {
    /// Adapter for `map_err`: `api.get(n).await.map_err(Error::kube("get X"))`.
    pub fn kube(call: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { call, source }
    }

    /// Adapter for `map_err` on object-storage calls.
    pub fn store(what: impl Into<String>) -> impl FnOnce(holdfast_store::StoreError) -> Error {
        let what = what.into();
        move |source| Error::Store { what, source }
    }

    /// Adapter for `map_err` on local failures.
    pub fn internal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Internal {
            what,
            message: e.to_string(),
        }
    }

    /// How this error shows in the object's status.
    pub fn stall(&self) -> Stall {
        match self {
            Error::Kube { call, source } => kube_stall(call, source),
            Error::Repository { what, fix, source } => repo_stall(what, fix, source),
            Error::Store { what, source } => store_stall(what, source),
            Error::Objects { what, source } => Stall {
                reason: "ObjectsFailed",
                message: format!("{what}: {source}"),
                persistent: false,
            },
            Error::Config { reason, message } => Stall {
                reason,
                message: message.clone(),
                persistent: true,
            },
            Error::Internal { .. } => Stall {
                reason: "InternalError",
                message: self.to_string(),
                persistent: false,
            },
        }
    }
}

/// What a failing object shows: the `Stalled` condition's reason and message. `persistent`:
/// retrying alone will not help (shown at once); otherwise shown after a few failures in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub reason: &'static str,
    pub message: String,
    pub persistent: bool,
}

fn kube_stall(call: &str, e: &kube::Error) -> Stall {
    let kube::Error::Api(s) = e else {
        return Stall {
            reason: "APIUnreachable",
            message: format!("{call}: {e}; retrying"),
            persistent: false,
        };
    };
    let (reason, fix, persistent) = match s.code {
        403 if s.message.contains("exceeded quota") => (
            "QuotaExceeded",
            "raise the namespace's ResourceQuota or free some of it",
            true,
        ),
        403 => (
            "Forbidden",
            "grant the operator's ServiceAccount this permission (the chart's and config/'s RBAC have it)",
            true,
        ),
        400 | 422 => (
            "Invalid",
            "the object Holdfast built was refused; report this with the message",
            true,
        ),
        _ => ("APIError", "retrying", false),
    };
    Stall {
        reason,
        message: format!("{call}: {}; {fix}", s.message),
        persistent,
    }
}

fn repo_stall(what: &str, fix: &str, e: &holdfast_repo::RepoError) -> Stall {
    use holdfast_repo::RepoError as R;
    let (reason, persistent) = match e {
        R::WrongPassword { .. } => ("RepositoryPasswordWrong", true),
        R::UnsupportedVersion { .. } => ("RepositoryUnsupported", true),
        R::Integrity { .. } => ("RepositoryDamaged", true),
        R::Store(s) => return store_stall(what, s),
        _ => ("RepositoryError", false),
    };
    Stall {
        reason,
        message: format!("{what}: {e}; {fix}"),
        persistent,
    }
}

fn store_stall(what: &str, e: &holdfast_store::StoreError) -> Stall {
    use holdfast_store::StoreError as S;
    let text = e.to_string();
    let (reason, fix, persistent) = match e {
        S::S3 { .. } if text.contains("NoSuchBucket") => (
            "BucketNotFound",
            "create the bucket or fix spec.s3.bucket of the BackupStorageLocation",
            true,
        ),
        S::S3 { .. } if text.contains("AccessDenied") || text.contains("Forbidden") => (
            "AccessDenied",
            "give the location's credentials access to the bucket",
            true,
        ),
        S::Config(_) => (
            "InvalidConfiguration",
            "fix the BackupStorageLocation",
            true,
        ),
        _ => ("StorageError", "retrying", false),
    };
    Stall {
        reason,
        message: format!("{what}: {e}; {fix}"),
        persistent,
    }
}

/// A soft failure: the step cannot go on for a reason the user can act on; the caller records
/// `reason` and `message` in the status (a terminal phase, or a wait), not an error to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: impl Into<&'static str>, message: impl Into<String>) -> Self {
        Refusal {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// A step's result when it may be refused: `Ok(Err(refusal))` is a soft failure.
pub type Refusable<T> = Result<Result<T, Refusal>, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn rbac_and_quota_refusals_are_persistent() {
        let e = Error::kube("create mover Pod")(api(403, "pods is forbidden: User cannot"));
        let s = e.stall();
        assert_eq!(s.reason, "Forbidden");
        assert!(s.persistent);
        assert!(s.message.starts_with("create mover Pod: pods is forbidden"));
        let e = Error::kube("create claim")(api(403, "exceeded quota: q, requested: storage"));
        assert_eq!(e.stall().reason, "QuotaExceeded");
        let e = Error::kube("get Backup")(api(500, "etcd timeout"));
        assert!(!e.stall().persistent);
    }

    #[test]
    fn wrong_password_is_persistent_and_names_the_fix() {
        let e = Error::Repository {
            what: "opening the repository of shop on primary".into(),
            fix: "put the original password into Secret holdfast-system/holdfast-repo-x".into(),
            source: Box::new(holdfast_repo::RepoError::WrongPassword {
                repo: "s3:b/holdfast/repo/shop".into(),
            }),
        };
        let s = e.stall();
        assert_eq!(s.reason, "RepositoryPasswordWrong");
        assert!(s.persistent);
        assert!(s.message.contains("holdfast-repo-x"), "{}", s.message);
        let locked = Error::Repository {
            what: "w".into(),
            fix: "f".into(),
            source: Box::new(holdfast_repo::RepoError::Locked {
                repo: "r".into(),
                by: "x".into(),
            }),
        };
        assert!(!locked.stall().persistent);
    }

    #[test]
    fn missing_bucket_is_persistent() {
        let e = Error::store("writing k")(holdfast_store::StoreError::S3 {
            op: "put",
            key: "k".into(),
            bucket: "b".into(),
            message: "NoSuchBucket: The specified bucket does not exist".into(),
        });
        assert_eq!(e.stall().reason, "BucketNotFound");
        assert!(e.stall().persistent);
    }
}
