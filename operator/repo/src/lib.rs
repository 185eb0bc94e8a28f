//! The backup repository format (restic repository format v2): read, write, index,
//! pack, check, backup and restore. Talks to object storage only through
//! holdfast-store; never to the cluster.

pub mod backup;
pub mod check;
pub mod crypto;
pub mod files;
pub mod forget;
pub mod format;
mod id;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod tree;

pub use format::{BlobType, KdfParams};
pub use id::Id;
pub use repo::{Index, Repository};
pub use tree::{Node, Snapshot, Tree};

/// Errors of repository operations; each names the object and the cause.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] holdfast_store::StoreError),
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error("encryption: {0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("wrong password or no key found for repository {repo}")]
    WrongPassword { repo: String },
    #[error("{repo} is not a repository (no config or no keys)")]
    NotARepository { repo: String },
    #[error("repository {repo} already exists")]
    AlreadyInitialized { repo: String },
    #[error("repository {repo} has unsupported format version {version}")]
    UnsupportedVersion { repo: String, version: u32 },
    #[error("repository {repo} is locked: {by}")]
    Locked { repo: String, by: String },
    #[error("blob {id} is not in the index")]
    BlobNotFound { id: Id },
    #[error("no snapshot matches {spec:?}")]
    SnapshotNotFound { spec: String },
    #[error("snapshot id prefix {spec:?} is ambiguous")]
    AmbiguousSnapshot { spec: String },
    #[error("{what}: {reason}")]
    Integrity { what: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness: {0}")]
    Random(String),
    #[error("upload pipeline stopped: {0}")]
    Pipeline(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl RepoError {
    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> RepoError {
        RepoError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}
