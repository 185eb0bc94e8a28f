//! Object storage behind a small trait: S3 (aws-sdk-s3) and a local directory.
//!
//! Talks to object storage (S3) or the local filesystem; nothing here knows about
//! Kubernetes or about the repository format. Keys are `/`-separated paths relative
//! to the store's root (for example `data/3f/3f0a...`).

mod local;
mod retry;
mod s3;
pub mod testing;
pub mod tls;

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalStore;
pub use retry::RetryPolicy;
pub use s3::{PayloadProtection, S3Config, S3Store};

/// One object as returned by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Errors of a store operation; each names the object (key) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key:?} not found")]
    NotFound { key: String },
    #[error("{op} {key:?} in local store at {root}: {source}")]
    Io {
        op: &'static str,
        key: String,
        root: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {key:?} in bucket {bucket}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        bucket: String,
        message: String,
    },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("short read of {key:?}: wanted {wanted} bytes at offset {offset}, got {got}")]
    ShortRead {
        key: String,
        offset: u64,
        wanted: u64,
        got: u64,
    },
}

impl StoreError {
    /// True when the error means the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A flat key/value object store.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Reads `length` bytes at `offset`; fails with [`StoreError::ShortRead`] when the
    /// object is shorter.
    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Bytes, StoreError>;
    /// Writes a whole object atomically: readers see either nothing or all of it.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Lists objects whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Returns the size of an object, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// A human description (`s3:http://host/bucket/prefix` or a path), for messages.
    fn describe(&self) -> String;
}

/// A shared store handle.
pub type DynStore = Arc<dyn Store>;

/// Rejects keys that could escape the store root or are otherwise malformed.
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') {
        return bad("absolute");
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("empty, '.' or '..' path component");
    }
    Ok(())
}

/// Where a repository lives, parsed from a `--repository` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(std::path::PathBuf),
    /// `s3:<scheme>://<host[:port]>/<bucket>[/<prefix>]`.
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
    },
}

impl Location {
    /// Parses `s3:http://host:port/bucket/prefix`, `s3:https://...`, or a local path.
    pub fn parse(s: &str) -> Result<Location, StoreError> {
        if let Some(rest) = s.strip_prefix("s3:") {
            let (scheme, after) = rest.split_once("://").ok_or_else(|| {
                StoreError::Config(format!("{s:?}: expected s3:http(s)://host/bucket[/prefix]"))
            })?;
            if scheme != "http" && scheme != "https" {
                return Err(StoreError::Config(format!(
                    "{s:?}: scheme must be http or https"
                )));
            }
            let mut parts = after.splitn(3, '/');
            let host = parts.next().unwrap_or_default();
            let bucket = parts.next().unwrap_or_default();
            let prefix = parts.next().unwrap_or_default().trim_matches('/');
            if host.is_empty() || bucket.is_empty() {
                return Err(StoreError::Config(format!(
                    "{s:?}: expected s3:http(s)://host/bucket[/prefix]"
                )));
            }
            Ok(Location::S3 {
                endpoint: format!("{scheme}://{host}"),
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        } else if let Some(path) = s.strip_prefix("local:") {
            Ok(Location::Local(path.into()))
        } else {
            Ok(Location::Local(s.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:9000/bkt/a/b/").expect("parse"),
            Location::S3 {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3:https://s3.example/bkt").expect("parse"),
            Location::S3 {
                endpoint: "https://s3.example".into(),
                bucket: "bkt".into(),
                prefix: "".into()
            }
        );
        assert!(Location::parse("s3:ftp://x/b").is_err());
        assert!(Location::parse("s3:http://x").is_err());
        assert_eq!(
            Location::parse("/tmp/r").expect("parse"),
            Location::Local("/tmp/r".into())
        );
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(validate_key("data/ab/abc").is_ok());
        assert!(validate_key("../x").is_err());
        assert!(validate_key("/x").is_err());
        assert!(validate_key("a//b").is_err());
        assert!(validate_key("").is_err());
    }
}
