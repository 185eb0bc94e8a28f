//! An open repository: keys, config, loading and saving encrypted files, the index,
//! reading blobs, snapshots and locks. Talks to object storage through holdfast-store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast_store::{DynStore, StoreError};
use tokio::runtime::Handle;

use crate::crypto::{self, Key};
use crate::format::{
    self, BlobType, Config, FileType, FormatError, IndexJson, KdfParams, KeyFile, PackedBlob,
};
use crate::tree::{LockJson, Snapshot, Tree};
use crate::{Id, RepoError};

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Index into [`Index::packs`].
    pub pack: u32,
    pub blob_type: BlobType,
    pub offset: u32,
    pub length: u32,
    pub uncompressed_length: Option<u32>,
}

impl BlobLocation {
    /// Length of the plaintext (after decompression).
    pub fn data_length(&self) -> u32 {
        self.uncompressed_length
            .unwrap_or_else(|| self.length.saturating_sub(crypto::OVERHEAD as u32))
    }
}

/// The in-memory union of all index files.
#[derive(Debug, Default, Clone)]
pub struct Index {
    pub blobs: HashMap<Id, BlobLocation>,
    pub packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    /// Index files it was loaded from.
    pub files: Vec<Id>,
}

impl Index {
    /// Adds the blobs of one pack.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        let pos = match self.pack_pos.get(&pack) {
            Some(p) => *p,
            None => {
                let p = self.packs.len() as u32;
                self.packs.push(pack);
                self.pack_pos.insert(pack, p);
                p
            }
        };
        for b in blobs {
            self.blobs.entry(b.id).or_insert(BlobLocation {
                pack: pos,
                blob_type: b.blob_type,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            });
        }
    }

    /// Looks a blob up.
    pub fn get(&self, id: &Id) -> Option<(Id, BlobLocation)> {
        let loc = self.blobs.get(id)?;
        Some((self.packs[loc.pack as usize], *loc))
    }

    /// Blobs grouped by pack, as `(pack, blobs)`.
    pub fn by_pack(&self) -> HashMap<Id, Vec<PackedBlob>> {
        let mut m: HashMap<Id, Vec<PackedBlob>> = HashMap::new();
        for (id, loc) in &self.blobs {
            m.entry(self.packs[loc.pack as usize])
                .or_default()
                .push(PackedBlob {
                    id: *id,
                    blob_type: loc.blob_type,
                    offset: loc.offset,
                    length: loc.length,
                    uncompressed_length: loc.uncompressed_length,
                });
        }
        for v in m.values_mut() {
            v.sort_by_key(|b| b.offset);
        }
        m
    }
}

struct Inner {
    store: DynStore,
    key: Key,
    config: Config,
    handle: Handle,
}

/// An open repository. Cheap to clone.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.inner.store.describe())
    }
}

/// Who we are, for key files, locks and snapshots.
pub fn hostname() -> String {
    std::env::var("HOLDFAST_HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The user name, best effort.
pub fn username() -> String {
    std::env::var("USER").unwrap_or_default()
}

impl Repository {
    /// Creates a new repository in an empty location.
    pub async fn init(
        store: DynStore,
        password: &str,
        kdf: KdfParams,
    ) -> Result<Repository, RepoError> {
        if store.head("config").await?.is_some() {
            return Err(RepoError::AlreadyInitialized {
                repo: store.describe(),
            });
        }
        let key = Key::random()?;
        let config = Config::new().map_err(|e| RepoError::Random(e.to_string()))?;
        let kf = KeyFile::create(&key, password, kdf, &username(), &hostname())?;
        let kf_json = serde_json::to_vec(&kf).map_err(|source| FormatError::Json {
            what: "key file".into(),
            source,
        })?;
        let kid = Id::hash(&kf_json);
        store
            .put(&FileType::Key.key(&kid), Bytes::from(kf_json))
            .await?;
        let cfg_json = serde_json::to_vec(&config).map_err(|source| FormatError::Json {
            what: "config".into(),
            source,
        })?;
        let enc = key.encrypt(&cfg_json)?;
        store.put("config", Bytes::from(enc)).await?;
        Ok(Repository {
            inner: Arc::new(Inner {
                store,
                key,
                config,
                handle: Handle::current(),
            }),
        })
    }

    /// Opens an existing repository, trying every key file with `password`.
    pub async fn open(store: DynStore, password: &str) -> Result<Repository, RepoError> {
        let repo = store.describe();
        let enc_cfg = match store.get("config").await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Err(RepoError::NotARepository { repo }),
            Err(e) => return Err(e.into()),
        };
        let keys = store.list("keys/").await?;
        if keys.is_empty() {
            return Err(RepoError::NotARepository { repo });
        }
        let mut master = None;
        for k in &keys {
            let raw = store.get(&k.key).await?;
            let memo = opened_keys::id(&raw, password);
            let opened = match opened_keys::get(&memo) {
                Some(known) => known,
                None => {
                    let kf: KeyFile =
                        serde_json::from_slice(&raw).map_err(|source| FormatError::Json {
                            what: k.key.clone(),
                            source,
                        })?;
                    let pw = password.to_string();
                    let opened = tokio::task::spawn_blocking(move || kf.open(&pw))
                        .await
                        .map_err(|e| RepoError::Internal(e.to_string()))??;
                    opened_keys::put(memo, opened.clone());
                    opened
                }
            };
            if let Some(key) = opened {
                master = Some(key);
                break;
            }
        }
        let key = master.ok_or(RepoError::WrongPassword { repo: repo.clone() })?;
        let plain = key
            .decrypt(&enc_cfg)
            .map_err(|source| FormatError::Crypto {
                what: "config".into(),
                source,
            })?;
        let config: Config =
            serde_json::from_slice(&plain).map_err(|source| FormatError::Json {
                what: "config".into(),
                source,
            })?;
        if config.version != 1 && config.version != 2 {
            return Err(RepoError::UnsupportedVersion {
                repo,
                version: config.version,
            });
        }
        Ok(Repository {
            inner: Arc::new(Inner {
                store,
                key,
                config,
                handle: Handle::current(),
            }),
        })
    }

    /// The key files of the repository: id and content.
    async fn key_files(&self) -> Result<Vec<(Id, KeyFile)>, RepoError> {
        let store = &self.inner.store;
        let mut out = Vec::new();
        for k in store.list("keys/").await? {
            let raw = store.get(&k.key).await?;
            let kf: KeyFile = serde_json::from_slice(&raw).map_err(|source| FormatError::Json {
                what: k.key.clone(),
                source,
            })?;
            let name = k.key.rsplit('/').next().unwrap_or_default();
            let id = Id::parse(name).ok_or_else(|| FormatError::Invalid {
                what: k.key.clone(),
                reason: "key file name is not an id".into(),
            })?;
            out.push((id, kf));
        }
        Ok(out)
    }

    /// The ids of the key files that `password` opens (restic `key list` shows them all).
    pub async fn keys_for(&self, password: &str) -> Result<Vec<Id>, RepoError> {
        let mut out = Vec::new();
        for (id, kf) in self.key_files().await? {
            let pw = password.to_string();
            let opened = tokio::task::spawn_blocking(move || kf.open(&pw))
                .await
                .map_err(|e| RepoError::Internal(e.to_string()))??;
            if opened.is_some() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// How many key files the repository has.
    pub async fn key_count(&self) -> Result<usize, RepoError> {
        Ok(self.inner.store.list("keys/").await?.len())
    }

    /// Adds a key file that opens the repository with `password` (as `restic key add`),
    /// wrapping the same master key; its id. A password that already opens a key file is not
    /// added twice.
    pub async fn add_key(&self, password: &str, kdf: KdfParams) -> Result<Id, RepoError> {
        if let Some(id) = self.keys_for(password).await?.into_iter().next() {
            return Ok(id);
        }
        let key = self.inner.key.clone();
        let pw = password.to_string();
        let kf = tokio::task::spawn_blocking(move || {
            KeyFile::create(&key, &pw, kdf, &username(), &hostname())
        })
        .await
        .map_err(|e| RepoError::Internal(e.to_string()))??;
        let json = serde_json::to_vec(&kf).map_err(|source| FormatError::Json {
            what: "key file".into(),
            source,
        })?;
        let id = Id::hash(&json);
        self.inner
            .store
            .put(&FileType::Key.key(&id), Bytes::from(json))
            .await?;
        Ok(id)
    }

    /// Removes the key files that `password` opens (as `restic key remove`), never the last
    /// one: with `keep` (a password that must still open the repository) checked first, so
    /// that a rotation cannot lock everyone out. Returns how many were removed.
    pub async fn remove_keys_for(&self, password: &str, keep: &str) -> Result<usize, RepoError> {
        if self.keys_for(keep).await?.is_empty() {
            return Err(RepoError::WrongPassword {
                repo: format!(
                    "{} (the password to keep opens no key file; nothing removed)",
                    self.inner.store.describe()
                ),
            });
        }
        let gone = self.keys_for(password).await?;
        let keeping = self.keys_for(keep).await?;
        let mut n = 0;
        for id in gone.iter().filter(|id| !keeping.contains(id)) {
            self.inner.store.delete(&FileType::Key.key(id)).await?;
            n += 1;
        }
        Ok(n)
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    /// The master key.
    pub fn key(&self) -> &Key {
        &self.inner.key
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The runtime the repository was opened on (for blocking callers).
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// Encrypts and stores an unpacked JSON file; returns its storage id.
    pub async fn save_json<T: serde::Serialize>(
        &self,
        t: FileType,
        value: &T,
    ) -> Result<Id, RepoError> {
        let json = serde_json::to_vec(value).map_err(|source| FormatError::Json {
            what: format!("{t:?}"),
            source,
        })?;
        let plain = if self.inner.config.version >= 2 {
            format::encode_unpacked(&json).map_err(|source| FormatError::Zstd {
                what: format!("{t:?}"),
                source,
            })?
        } else {
            json
        };
        let enc = self.inner.key.encrypt(&plain)?;
        let id = Id::hash(&enc);
        self.inner.store.put(&t.key(&id), Bytes::from(enc)).await?;
        Ok(id)
    }

    /// Loads, verifies (storage id = SHA-256), decrypts and decodes an unpacked file.
    pub async fn load_json<T: serde::de::DeserializeOwned>(
        &self,
        t: FileType,
        id: &Id,
    ) -> Result<T, RepoError> {
        let key = t.key(id);
        let raw = self.inner.store.get(&key).await?;
        if Id::hash(&raw) != *id {
            return Err(RepoError::Integrity {
                what: key,
                reason: "content does not match its name (SHA-256)".into(),
            });
        }
        let plain = self
            .inner
            .key
            .decrypt(&raw)
            .map_err(|source| FormatError::Crypto {
                what: key.clone(),
                source,
            })?;
        let json = format::decode_unpacked(plain, &key)?;
        Ok(serde_json::from_slice(&json)
            .map_err(|source| FormatError::Json { what: key, source })?)
    }

    /// Ids of all files of a type.
    pub async fn list(&self, t: FileType) -> Result<Vec<(Id, u64)>, RepoError> {
        let objs = self.inner.store.list(&format!("{}/", t.dir())).await?;
        Ok(objs
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                Some((Id::parse(name)?, o.size))
            })
            .collect())
    }

    /// Loads every index file.
    pub async fn load_index(&self) -> Result<Index, RepoError> {
        let ids = self.list(FileType::Index).await?;
        let mut idx = Index::default();
        let mut set = tokio::task::JoinSet::new();
        for (id, _) in ids {
            let me = self.clone();
            set.spawn(async move { (id, me.load_json::<IndexJson>(FileType::Index, &id).await) });
            while set.len() >= 16 {
                if let Some(r) = set.join_next().await {
                    add_index(&mut idx, r)?;
                }
            }
        }
        while let Some(r) = set.join_next().await {
            add_index(&mut idx, r)?;
        }
        Ok(idx)
    }

    /// Reads a blob's encrypted bytes from its pack.
    pub async fn read_blob_raw(&self, pack: &Id, loc: &BlobLocation) -> Result<Bytes, RepoError> {
        Ok(self
            .inner
            .store
            .get_range(
                &FileType::Pack.key(pack),
                u64::from(loc.offset),
                u64::from(loc.length),
            )
            .await?)
    }

    /// Reads `len` bytes of pack `pack` from `offset` (several blobs at once), from a
    /// non-runtime thread.
    pub fn read_pack_range_blocking(
        &self,
        pack: &Id,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, RepoError> {
        let data = self.inner.handle.block_on(self.inner.store.get_range(
            &FileType::Pack.key(pack),
            offset,
            len,
        ))?;
        if data.len() as u64 != len {
            return Err(RepoError::Integrity {
                what: format!("pack {pack}"),
                reason: format!(
                    "asked for {len} bytes at offset {offset}, got {}",
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    /// Decrypts, decompresses and verifies one blob's stored bytes.
    pub fn decode_blob(
        &self,
        id: &Id,
        pack: &Id,
        loc: &BlobLocation,
        raw: &[u8],
    ) -> Result<Vec<u8>, RepoError> {
        let what = || format!("blob {} in pack {}", id.short(), pack);
        let plain = self
            .inner
            .key
            .decrypt(raw)
            .map_err(|source| FormatError::Crypto {
                what: what(),
                source,
            })?;
        let data = match loc.uncompressed_length {
            Some(n) => format::decompress(&plain, Some(n as usize), &what())?,
            None => plain,
        };
        if Id::hash(&data) != *id {
            return Err(RepoError::Integrity {
                what: what(),
                reason: "plaintext does not match its id (SHA-256)".into(),
            });
        }
        Ok(data)
    }

    /// Reads and verifies a blob.
    pub async fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>, RepoError> {
        let (pack, loc) = index.get(id).ok_or(RepoError::BlobNotFound { id: *id })?;
        let raw = self.read_blob_raw(&pack, &loc).await?;
        self.decode_blob(id, &pack, &loc, &raw)
    }

    /// Reads a blob from a non-runtime thread.
    pub fn read_blob_blocking(&self, index: &Index, id: &Id) -> Result<Vec<u8>, RepoError> {
        self.inner.handle.block_on(self.read_blob(index, id))
    }

    /// Loads a tree blob.
    pub async fn load_tree(&self, index: &Index, id: &Id) -> Result<Tree, RepoError> {
        let data = self.read_blob(index, id).await?;
        serde_json::from_slice(&data).map_err(|source| {
            FormatError::Json {
                what: format!("tree {id}"),
                source,
            }
            .into()
        })
    }

    /// Loads a tree from a non-runtime thread.
    pub fn load_tree_blocking(&self, index: &Index, id: &Id) -> Result<Tree, RepoError> {
        self.inner.handle.block_on(self.load_tree(index, id))
    }

    /// All snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        let mut out = Vec::new();
        for (id, _) in self.list(FileType::Snapshot).await? {
            out.push((
                id,
                self.load_json::<Snapshot>(FileType::Snapshot, &id).await?,
            ));
        }
        out.sort_by_key(|(_, s)| format::parse_time(&s.time));
        Ok(out)
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot), RepoError> {
        let all = self.snapshots().await?;
        if spec == "latest" {
            return all
                .into_iter()
                .last()
                .ok_or(RepoError::SnapshotNotFound { spec: spec.into() });
        }
        let mut m: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(spec))
            .collect();
        match m.len() {
            1 => Ok(m.remove(0)),
            0 => Err(RepoError::SnapshotNotFound { spec: spec.into() }),
            _ => Err(RepoError::AmbiguousSnapshot { spec: spec.into() }),
        }
    }

    /// Takes a lock (shared or exclusive), refreshed in the background until released.
    pub async fn lock(&self, exclusive: bool) -> Result<LockGuard, RepoError> {
        let now = chrono::Utc::now();
        for (id, _) in self.list(FileType::Lock).await? {
            let Ok(l) = self.load_json::<LockJson>(FileType::Lock, &id).await else {
                continue;
            };
            if lock_is_stale(&l, now) {
                continue;
            }
            if exclusive || l.exclusive {
                return Err(RepoError::Locked {
                    repo: self.inner.store.describe(),
                    by: format!(
                        "{}lock {} held by {} (pid {}) since {}",
                        if l.exclusive { "exclusive " } else { "" },
                        id.short(),
                        l.hostname,
                        l.pid,
                        l.time
                    ),
                });
            }
        }
        let make = move || LockJson {
            time: format::format_time(&chrono::Utc::now().fixed_offset()),
            exclusive,
            hostname: hostname(),
            username: username(),
            pid: i64::from(std::process::id()),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        let id = self.save_json(FileType::Lock, &make()).await?;
        // Two writers may both have found no conflicting lock before either created
        // its own: look again now that ours exists, and back off if there is a
        // conflict (the later of two racing writers always sees the earlier one).
        if let Some(by) = self.conflicting_lock(exclusive, &id, now).await? {
            let _ = self.inner.store.delete(&FileType::Lock.key(&id)).await;
            return Err(RepoError::Locked {
                repo: self.inner.store.describe(),
                by,
            });
        }
        let current = Arc::new(std::sync::Mutex::new(id));
        let me = self.clone();
        let cur = current.clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(300)).await;
                match me.save_json(FileType::Lock, &make()).await {
                    Ok(new) => {
                        let old = match cur.lock() {
                            Ok(mut g) => std::mem::replace(&mut *g, new),
                            Err(_) => continue,
                        };
                        let _ = me.inner.store.delete(&FileType::Lock.key(&old)).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "refreshing repository lock failed"),
                }
            }
        });
        Ok(LockGuard {
            repo: self.clone(),
            current,
            refresher,
        })
    }
}

/// restic's stale-lock rules: older than 30 minutes, or taken on this host by a
/// process that no longer exists.
fn lock_is_stale(l: &LockJson, now: chrono::DateTime<chrono::Utc>) -> bool {
    let old = format::parse_time(&l.time)
        .is_none_or(|t| now.signed_duration_since(t) > chrono::Duration::minutes(30));
    if old {
        return true;
    }
    if l.hostname == hostname() && l.pid > 0 {
        let gone = i32::try_from(l.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| {
                matches!(
                    rustix::process::test_kill_process(pid),
                    Err(rustix::io::Errno::SRCH)
                )
            });
        return gone;
    }
    false
}

impl Repository {
    async fn conflicting_lock(
        &self,
        exclusive: bool,
        ours: &Id,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, RepoError> {
        for (id, _) in self.list(FileType::Lock).await? {
            if id == *ours {
                continue;
            }
            let Ok(l) = self.load_json::<LockJson>(FileType::Lock, &id).await else {
                continue;
            };
            if lock_is_stale(&l, now) {
                continue;
            }
            if exclusive || l.exclusive {
                return Ok(Some(format!(
                    "{}lock {} held by {} (pid {}) since {}",
                    if l.exclusive { "exclusive " } else { "" },
                    id.short(),
                    l.hostname,
                    l.pid,
                    l.time
                )));
            }
        }
        Ok(None)
    }

    /// The blobs of pack `id` of `size` bytes, from its header alone (two ranged reads).
    pub async fn read_pack_header(&self, id: &Id, size: u64) -> Result<Vec<PackedBlob>, RepoError> {
        let key = FileType::Pack.key(id);
        let what = format!("pack {}", id.short());
        if size < 4 {
            return Err(FormatError::Invalid {
                what,
                reason: "shorter than its header length field".into(),
            }
            .into());
        }
        let tail = self.inner.store.get_range(&key, size - 4, 4).await?;
        let mut last4 = [0u8; 4];
        last4.copy_from_slice(&tail[..4.min(tail.len())]);
        let hlen = format::header_length(last4, size, &what)?;
        let hstart = size - 4 - hlen;
        let header = self.inner.store.get_range(&key, hstart, hlen).await?;
        Ok(format::parse_pack_header(
            &header,
            hstart,
            &self.inner.key,
            &what,
        )?)
    }

    /// Removes the lock files of host `host` (of earlier runs there); how many.
    pub async fn remove_locks_of_host(&self, host: &str) -> Result<usize, RepoError> {
        let mut n = 0;
        for (id, _) in self.list(FileType::Lock).await? {
            let Ok(l) = self.load_json::<LockJson>(FileType::Lock, &id).await else {
                continue;
            };
            if l.hostname == host {
                match self.inner.store.delete(&FileType::Lock.key(&id)).await {
                    Ok(()) | Err(StoreError::NotFound { .. }) => n += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(n)
    }

    /// Every index file with its packs and their blobs, as stored (a blob may be
    /// listed in several packs and a pack in several index files).
    pub async fn load_index_files(&self) -> Result<Vec<(Id, IndexJson)>, RepoError> {
        let ids = self.list(FileType::Index).await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut set = tokio::task::JoinSet::new();
        let mut it = ids.into_iter();
        loop {
            while set.len() < 16 {
                let Some((id, _)) = it.next() else { break };
                let me = self.clone();
                set.spawn(
                    async move { (id, me.load_json::<IndexJson>(FileType::Index, &id).await) },
                );
            }
            match set.join_next().await {
                Some(r) => {
                    let (id, j) = r.map_err(|e| RepoError::Internal(e.to_string()))?;
                    out.push((id, j?));
                }
                None => break,
            }
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Stores an encrypted JSON document under a fixed key outside restic's
    /// directories (restic ignores it), encoded like an unpacked file.
    pub async fn save_extra_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), RepoError> {
        let json = serde_json::to_vec(value).map_err(|source| FormatError::Json {
            what: key.to_string(),
            source,
        })?;
        let plain = format::encode_unpacked(&json).map_err(|source| FormatError::Zstd {
            what: key.to_string(),
            source,
        })?;
        let enc = self.inner.key.encrypt(&plain)?;
        self.inner.store.put(key, Bytes::from(enc)).await?;
        Ok(())
    }

    /// Loads a document stored by [`Repository::save_extra_json`]; `None` when absent.
    pub async fn load_extra_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, RepoError> {
        let raw = match self.inner.store.get(key).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let plain = self
            .inner
            .key
            .decrypt(&raw)
            .map_err(|source| FormatError::Crypto {
                what: key.to_string(),
                source,
            })?;
        let json = format::decode_unpacked(plain, key)?;
        Ok(Some(serde_json::from_slice(&json).map_err(|source| {
            FormatError::Json {
                what: key.to_string(),
                source,
            }
        })?))
    }
}

fn add_index(
    idx: &mut Index,
    r: Result<(Id, Result<IndexJson, RepoError>), tokio::task::JoinError>,
) -> Result<(), RepoError> {
    let (id, j) = r.map_err(|e| RepoError::Internal(e.to_string()))?;
    let j = j?;
    for p in &j.packs {
        let blobs: Vec<PackedBlob> = p.blobs.iter().map(|b| b.packed()).collect();
        idx.add_pack(p.id, &blobs);
    }
    idx.files.push(id);
    Ok(())
}

/// A held repository lock; call [`LockGuard::release`] when done. If dropped without
/// release the lock file stays until it goes stale (30 minutes), like restic's.
pub struct LockGuard {
    repo: Repository,
    current: Arc<std::sync::Mutex<Id>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    /// Stops refreshing and deletes the lock file.
    pub async fn release(self) -> Result<(), RepoError> {
        self.refresher.abort();
        let id = match self.current.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        self.repo
            .inner
            .store
            .delete(&FileType::Lock.key(&id))
            .await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Encrypted size of a blob of `n` plaintext bytes.
pub fn encrypted_len(n: usize) -> usize {
    n + crypto::OVERHEAD
}

/// Key files already opened by this process, by the hash of the file and the password: a key
/// file never changes (its name is its content's hash), so one password opens it, or does not,
/// forever. Spares scrypt (32 MiB and tens of milliseconds a time) for a process that opens the
/// same repositories again and again: the operator, every sync and maintenance pass. Holds the
/// master keys the process already had; bounded.
mod opened_keys {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};

    use sha2::{Digest, Sha256};

    use crate::crypto::Key;

    const MAX: usize = 4096;

    static OPENED: LazyLock<Mutex<HashMap<[u8; 32], Option<Key>>>> =
        LazyLock::new(Default::default);

    pub(super) fn id(key_file: &[u8], password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((key_file.len() as u64).to_le_bytes());
        h.update(key_file);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    pub(super) fn get(id: &[u8; 32]) -> Option<Option<Key>> {
        OPENED.lock().ok()?.get(id).cloned()
    }

    pub(super) fn put(id: [u8; 32], key: Option<Key>) {
        if let Ok(mut m) = OPENED.lock() {
            if m.len() >= MAX {
                m.clear();
            }
            m.insert(id, key);
        }
    }
}
