//! A store in a local directory: keys are relative paths; writes go to a temporary
//! file in the target directory, are synced, then renamed into place.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ObjectInfo, Store, StoreError, validate_key};

const TEMP_PREFIX: &str = ".holdfast-tmp-";

/// A store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// fsync files and directories on put (off only in benchmarks/tests).
    sync: bool,
}

impl LocalStore {
    /// A store at `root`; the directory is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            root: root.into(),
            sync: true,
        }
    }

    /// Turns fsync on put on or off.
    pub fn with_sync(mut self, sync: bool) -> LocalStore {
        self.sync = sync;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io_err(&self, op: &'static str, key: &str, source: std::io::Error) -> StoreError {
        if source.kind() == ErrorKind::NotFound {
            StoreError::NotFound {
                key: key.to_string(),
            }
        } else {
            StoreError::Io {
                op,
                key: key.to_string(),
                root: self.root.display().to_string(),
                source,
            }
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&LocalStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || f(&this)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Config(format!(
                "local store worker failed: {e}"
            ))),
        }
    }

    fn put_sync(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.root.join(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| self.io_err("create directory for", key, e))?;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| StoreError::Config(format!("random source: {e}")))?;
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(rnd)));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            if self.sync {
                f.sync_all()?;
            }
            drop(f);
            std::fs::rename(&tmp, &path)?;
            if self.sync {
                std::fs::File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|e| self.io_err("put", key, e))
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // Walk from the deepest directory fully contained in the prefix.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err("list", prefix, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| self.io_err("list", prefix, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let ft = entry
                    .file_type()
                    .map_err(|e| self.io_err("list", prefix, e))?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(rel) = rel.to_str() else { continue };
                if ft.is_dir() {
                    let as_dir = format!("{rel}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push(path);
                    }
                } else if ft.is_file() && rel.starts_with(prefix) {
                    let size = entry
                        .metadata()
                        .map_err(|e| self.io_err("list", prefix, e))?
                        .len();
                    out.push(ObjectInfo {
                        key: rel.to_string(),
                        size,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| {
            std::fs::read(s.root.join(&key))
                .map(Bytes::from)
                .map_err(|e| s.io_err("get", &key, e))
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| {
            let f = std::fs::File::open(s.root.join(&key))
                .map_err(|e| s.io_err("get range of", &key, e))?;
            let len = usize::try_from(length)
                .map_err(|_| StoreError::Config("range too large".into()))?;
            let mut buf = vec![0u8; len];
            let mut done = 0usize;
            while done < len {
                let n = f
                    .read_at(&mut buf[done..], offset + done as u64)
                    .map_err(|e| s.io_err("get range of", &key, e))?;
                if n == 0 {
                    return Err(StoreError::ShortRead {
                        key,
                        offset,
                        wanted: length,
                        got: done as u64,
                    });
                }
                done += n;
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| s.put_sync(&key, &data)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list_sync(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| match std::fs::remove_file(s.root.join(&key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(s.io_err("delete", &key, e)),
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        validate_key(key)?;
        let key = key.to_string();
        self.blocking(move |s| match std::fs::metadata(s.root.join(&key)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(s.io_err("head", &key, e)),
        })
        .await
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
