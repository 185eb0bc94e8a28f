//! Backup of a directory tree into the repository: content-defined chunking
//! (FastCDC 2020), hashing/compression/encryption in parallel on all cores (rayon),
//! several pack uploads in flight (tokio), dedup against the index, and metadata-based
//! skip of unchanged files against a parent snapshot.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::format::{self, BlobType, FileType, IndexBlob, IndexJson, IndexPack, PackedBlob};
use crate::repo::{Index, Repository, hostname, username};
use crate::tree::{Node, Snapshot, Tree, go_mode_from_unix};
use crate::{Id, RepoError};

/// Chunk sizes: restic's (512 KiB min, 1 MiB average, 8 MiB max).
pub const CHUNK_MIN: u32 = 512 * 1024;
pub const CHUNK_AVG: u32 = 1024 * 1024;
pub const CHUNK_MAX: u32 = 8 * 1024 * 1024;
/// Bytes of a file read and chunked at once.
const READ_BATCH: usize = 32 * 1024 * 1024;

/// Blob compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store blobs uncompressed.
    Off,
    /// Fast zstd (level 1); blobs that do not shrink are stored uncompressed.
    Auto,
    /// Strong zstd (level 15).
    Max,
    /// An explicit zstd level (negative levels are the fastest).
    Level(i32),
}

impl Compression {
    fn level(self) -> Option<i32> {
        match self {
            Compression::Off => None,
            Compression::Auto => Some(1),
            Compression::Max => Some(15),
            Compression::Level(l) => Some(l),
        }
    }

    /// Parses `auto`, `off`, `max` or a number.
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "off" => Some(Compression::Off),
            "auto" => Some(Compression::Auto),
            "max" => Some(Compression::Max),
            n => n.parse().ok().map(Compression::Level),
        }
    }
}

/// Counters of a running backup (shared, so a caller can report progress).
#[derive(Debug, Default)]
pub struct BackupStats {
    pub files_new: AtomicU64,
    pub files_changed: AtomicU64,
    pub files_unmodified: AtomicU64,
    pub dirs: AtomicU64,
    /// Bytes of all files in the source.
    pub bytes_total: AtomicU64,
    /// File bytes actually read (not skipped by the parent comparison).
    pub bytes_read: AtomicU64,
    /// Plaintext bytes of new blobs.
    pub bytes_new: AtomicU64,
    pub blobs_new: AtomicU64,
    /// Bytes uploaded (packs, index, snapshot).
    pub bytes_uploaded: AtomicU64,
    pub packs_uploaded: AtomicU64,
}

impl BackupStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Options of a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub compression: Compression,
    /// Snapshot to compare file metadata against.
    pub parent: Option<Id>,
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    pub hostname: String,
    /// Target pack size in bytes.
    pub pack_size: usize,
    /// Concurrent pack uploads.
    pub uploads_in_flight: usize,
    /// Worker threads for chunking, hashing, compression and encryption.
    pub threads: usize,
    /// Live counters.
    pub stats: Arc<BackupStats>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            compression: Compression::Auto,
            parent: None,
            tags: Vec::new(),
            hostname: hostname(),
            pack_size: 16 * 1024 * 1024,
            uploads_in_flight: 4,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stats: Arc::new(BackupStats::default()),
        }
    }
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// Files or directories that could not be read (the backup is partial).
    pub errors: Vec<String>,
}

/// Latest snapshot of the same paths and host, to use as parent.
pub async fn find_parent(
    repo: &Repository,
    paths: &[String],
    hostname: &str,
) -> Result<Option<Id>, RepoError> {
    let snaps = repo.snapshots().await?;
    Ok(snaps
        .into_iter()
        .rev()
        .find(|(_, s)| s.paths == paths && s.hostname == hostname)
        .map(|(id, _)| id))
}

struct FinishedPack {
    id: Id,
    data: Bytes,
    blobs: Vec<PackedBlob>,
}

struct Packer {
    state: Mutex<(Vec<u8>, Vec<PackedBlob>)>,
    tx: mpsc::Sender<FinishedPack>,
    target: usize,
}

struct Ctx {
    repo: Repository,
    index: Arc<Index>,
    /// Blobs in packs marked by prune: never deduplicated against (stored again).
    excluded: HashSet<Id>,
    pending: Mutex<HashSet<Id>>,
    data: Packer,
    trees: Packer,
    level: Option<i32>,
    stats: Arc<BackupStats>,
    errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Packer {
    fn add(&self, ctx: &Ctx, blob: PackedBlob, enc: &[u8]) -> Result<(), RepoError> {
        let full = {
            let mut s = lock(&self.state);
            if s.0.capacity() == 0 {
                s.0.reserve(self.target + CHUNK_MAX as usize + 4096);
            }
            let offset = u32::try_from(s.0.len())
                .map_err(|_| RepoError::Internal("pack too large".into()))?;
            s.0.extend_from_slice(enc);
            s.1.push(PackedBlob { offset, ..blob });
            if s.0.len() >= self.target {
                Some((std::mem::take(&mut s.0), std::mem::take(&mut s.1)))
            } else {
                None
            }
        };
        match full {
            Some((buf, blobs)) => self.send(ctx, buf, blobs),
            None => Ok(()),
        }
    }

    fn flush(&self, ctx: &Ctx) -> Result<(), RepoError> {
        let (buf, blobs) = {
            let mut s = lock(&self.state);
            (std::mem::take(&mut s.0), std::mem::take(&mut s.1))
        };
        if blobs.is_empty() {
            return Ok(());
        }
        self.send(ctx, buf, blobs)
    }

    fn send(&self, ctx: &Ctx, mut buf: Vec<u8>, blobs: Vec<PackedBlob>) -> Result<(), RepoError> {
        let header = ctx.repo.key().encrypt(&format::pack_header(&blobs))?;
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        let id = Id::hash(&buf);
        self.tx
            .blocking_send(FinishedPack {
                id,
                data: Bytes::from(buf),
                blobs,
            })
            .map_err(|_| RepoError::Pipeline("the uploader stopped".into()))
    }
}

/// Opens a file for reading without updating its access time (when permitted), so
/// that backing a file up does not change the metadata the next backup records.
fn open_noatime(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(noatime)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            std::fs::File::open(path)
        }
        r => r,
    }
}

/// Lists a directory's entry names without updating its access time (when permitted).
fn list_dir(path: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    use rustix::fs::OFlags;
    use std::os::unix::ffi::OsStrExt;
    let base = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(
        rustix::fs::CWD,
        path,
        base | OFlags::NOATIME,
        rustix::fs::Mode::empty(),
    ) {
        Err(rustix::io::Errno::PERM) => {
            rustix::fs::openat(rustix::fs::CWD, path, base, rustix::fs::Mode::empty())?
        }
        r => r?,
    };
    let mut out = Vec::new();
    for e in rustix::fs::Dir::new(fd)? {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

fn node_from_metadata(name: String, md: &Metadata) -> Node {
    Node {
        name,
        mode: go_mode_from_unix(md.mode()),
        mtime: format::format_time(&format::unix_time(md.mtime(), md.mtime_nsec())),
        atime: format::format_time(&format::unix_time(md.atime(), md.atime_nsec())),
        ctime: format::format_time(&format::unix_time(md.ctime(), md.ctime_nsec())),
        uid: md.uid(),
        gid: md.gid(),
        inode: md.ino(),
        device_id: md.dev(),
        links: md.nlink(),
        ..Default::default()
    }
}

fn same_time(a: &str, b: &str) -> bool {
    a == b || matches!((format::parse_time(a), format::parse_time(b)), (Some(x), Some(y)) if x == y)
}

impl Ctx {
    fn record(&self, msg: String) {
        tracing::warn!("{msg}");
        lock(&self.errors).push(msg);
    }

    /// True when the blob is stored in a pack that prune has not marked.
    fn known(&self, id: &Id) -> bool {
        self.index.blobs.contains_key(id) && !self.excluded.contains(id)
    }

    /// Stores a blob unless it is known; returns whether it was new.
    fn add_blob(&self, id: Id, t: BlobType, plain: &[u8]) -> Result<bool, RepoError> {
        if self.known(&id) || !lock(&self.pending).insert(id) {
            return Ok(false);
        }
        let compressed = match self.level {
            Some(l) => zstd::bulk::compress(plain, l)
                .ok()
                .filter(|c| c.len() < plain.len()),
            None => None,
        };
        let (stored, ulen) = match &compressed {
            Some(c) => (c.as_slice(), Some(plain.len() as u32)),
            None => (plain, None),
        };
        let enc = self.repo.key().encrypt(stored)?;
        let blob = PackedBlob {
            id,
            blob_type: t,
            offset: 0,
            length: enc.len() as u32,
            uncompressed_length: ulen,
        };
        BackupStats::add(&self.stats.blobs_new, 1);
        BackupStats::add(&self.stats.bytes_new, plain.len() as u64);
        match t {
            BlobType::Data => self.data.add(self, blob, &enc)?,
            BlobType::Tree => self.trees.add(self, blob, &enc)?,
        }
        Ok(true)
    }

    fn backup_dir(&self, path: &Path, parent: Option<&Tree>) -> Result<Id, RepoError> {
        BackupStats::add(&self.stats.dirs, 1);
        let mut entries: Vec<(String, PathBuf)> = Vec::new();
        match list_dir(path) {
            Ok(names) => {
                for n in names {
                    let p = path.join(&n);
                    entries.push((n.to_string_lossy().into_owned(), p));
                }
            }
            Err(e) => self.record(format!("listing {}: {e}", path.display())),
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let pmap: HashMap<&str, &Node> = parent
            .map(|t| t.nodes.iter().map(|n| (n.name.as_str(), n)).collect())
            .unwrap_or_default();
        let nodes: Vec<Option<Node>> = entries
            .into_par_iter()
            .map(|(name, p)| {
                let pn = pmap.get(name.as_str()).copied();
                self.backup_entry(&p, name, pn)
            })
            .collect::<Result<_, _>>()?;
        let tree = Tree {
            nodes: nodes.into_iter().flatten().collect(),
        };
        let blob = tree.to_blob().map_err(|source| format::FormatError::Json {
            what: format!("tree of {}", path.display()),
            source,
        })?;
        let id = Id::hash(&blob);
        self.add_blob(id, BlobType::Tree, &blob)?;
        Ok(id)
    }

    fn backup_entry(
        &self,
        path: &Path,
        name: String,
        parent: Option<&Node>,
    ) -> Result<Option<Node>, RepoError> {
        let md = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.record(format!("stat {}: {e}", path.display()));
                return Ok(None);
            }
        };
        let mut node = node_from_metadata(name, &md);
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            node.node_type = "dir".into();
            let ptree = match parent
                .filter(|p| p.node_type == "dir")
                .and_then(|p| p.subtree)
            {
                Some(id) => match self.repo.load_tree_blocking(&self.index, &id) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(
                            "parent tree {id} of {}: {e}; reading all files",
                            path.display()
                        );
                        None
                    }
                },
                None => None,
            };
            node.subtree = Some(self.backup_dir(path, ptree.as_ref())?);
        } else if ft.is_file() {
            node.node_type = "file".into();
            node.size = md.len();
            BackupStats::add(&self.stats.bytes_total, md.len());
            let unchanged = parent.filter(|p| {
                p.node_type == "file"
                    && p.size == node.size
                    && p.inode == node.inode
                    && same_time(&p.mtime, &node.mtime)
                    && same_time(&p.ctime, &node.ctime)
                    && p.content
                        .as_ref()
                        .is_some_and(|c| c.iter().all(|id| self.known(id)))
            });
            if let Some(p) = unchanged {
                node.content = p.content.clone();
                BackupStats::add(&self.stats.files_unmodified, 1);
            } else {
                match self.backup_file(path, &md) {
                    Ok(Some(c)) => node.content = Some(c),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(e),
                }
                if parent.is_some() {
                    BackupStats::add(&self.stats.files_changed, 1);
                } else {
                    BackupStats::add(&self.stats.files_new, 1);
                }
            }
        } else if ft.is_symlink() {
            node.node_type = "symlink".into();
            // readlink updates a symlink's atime, so the recorded atime would change on
            // every backup and rewrite the tree; record the mtime instead.
            node.atime = node.mtime.clone();
            match std::fs::read_link(path) {
                Ok(t) => {
                    use std::os::unix::ffi::OsStrExt;
                    let raw = t.as_os_str().as_bytes();
                    match std::str::from_utf8(raw) {
                        Ok(s) => node.linktarget = s.to_string(),
                        Err(_) => {
                            node.linktarget = String::from_utf8_lossy(raw).into_owned();
                            node.linktarget_raw = Some(raw.to_vec());
                        }
                    }
                }
                Err(e) => {
                    self.record(format!("readlink {}: {e}", path.display()));
                    return Ok(None);
                }
            }
        } else if ft.is_block_device() {
            node.node_type = "dev".into();
            node.device = md.rdev();
        } else if ft.is_char_device() {
            node.node_type = "chardev".into();
            node.device = md.rdev();
        } else if ft.is_fifo() {
            node.node_type = "fifo".into();
        } else if ft.is_socket() {
            node.node_type = "socket".into();
        } else {
            return Ok(None);
        }
        Ok(Some(node))
    }

    /// Chunks, stores and returns the content ids of a file; `Ok(None)` when the file
    /// could not be read (recorded as an error).
    fn backup_file(&self, path: &Path, md: &Metadata) -> Result<Option<Vec<Id>>, RepoError> {
        let mut f = match open_noatime(path) {
            Ok(f) => f,
            Err(e) => {
                self.record(format!("open {}: {e}", path.display()));
                return Ok(None);
            }
        };
        let mut buf: Vec<u8> =
            Vec::with_capacity((md.len() as usize).saturating_add(1).min(READ_BATCH));
        let mut ids = Vec::new();
        let mut eof = false;
        loop {
            if !eof && buf.len() < READ_BATCH {
                let want = (READ_BATCH - buf.len()) as u64;
                match f.by_ref().take(want).read_to_end(&mut buf) {
                    Ok(n) => eof = (n as u64) < want,
                    Err(e) => {
                        self.record(format!("read {}: {e}", path.display()));
                        return Ok(None);
                    }
                }
            }
            if buf.is_empty() {
                break;
            }
            let cuts: Vec<(usize, usize)> =
                fastcdc::v2020::FastCDC::new(&buf, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                    .map(|c| (c.offset, c.length))
                    .collect();
            let take = if eof {
                cuts.len()
            } else {
                cuts.len().saturating_sub(1).max(1)
            };
            let consumed = cuts[..take].last().map_or(0, |(o, l)| o + l);
            let batch: Vec<Id> = cuts[..take]
                .par_iter()
                .map(|&(o, l)| {
                    let d = &buf[o..o + l];
                    let id = Id::hash(d);
                    self.add_blob(id, BlobType::Data, d)?;
                    Ok(id)
                })
                .collect::<Result<_, RepoError>>()?;
            ids.extend(batch);
            BackupStats::add(&self.stats.bytes_read, consumed as u64);
            buf.drain(..consumed);
            if eof && buf.is_empty() {
                break;
            }
        }
        Ok(Some(ids))
    }
}

type UploadResult = Result<(Id, Vec<PackedBlob>, u64), RepoError>;

/// Uploads packs as they come, several at a time, and writes index files for
/// uploaded packs (every 64 packs and at the end). Returns the index files written.
async fn uploader(
    repo: Repository,
    mut rx: mpsc::Receiver<FinishedPack>,
    in_flight: usize,
    stats: Arc<BackupStats>,
) -> Result<Vec<Id>, RepoError> {
    let mut set: tokio::task::JoinSet<UploadResult> = tokio::task::JoinSet::new();
    let mut pending = IndexJson::default();
    let mut written = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            msg = rx.recv(), if open && set.len() < in_flight => match msg {
                Some(p) => {
                    let store = repo.store().clone();
                    set.spawn(async move {
                        let n = p.data.len() as u64;
                        store.put(&FileType::Pack.key(&p.id), p.data).await?;
                        Ok((p.id, p.blobs, n))
                    });
                }
                None => open = false,
            },
            Some(r) = set.join_next(), if !set.is_empty() => {
                let (id, blobs, n) = r.map_err(|e| RepoError::Internal(e.to_string()))??;
                BackupStats::add(&stats.bytes_uploaded, n);
                BackupStats::add(&stats.packs_uploaded, 1);
                pending.packs.push(IndexPack { id, blobs: blobs.iter().map(IndexBlob::from).collect() });
                if pending.packs.len() >= 64 {
                    written.push(repo.save_json(FileType::Index, &std::mem::take(&mut pending)).await?);
                }
            },
            else => break,
        }
    }
    if !pending.packs.is_empty() {
        written.push(repo.save_json(FileType::Index, &pending).await?);
    }
    Ok(written)
}

/// Backs up the directory `source` (its contents become the snapshot's root tree).
pub async fn backup(
    repo: &Repository,
    source: &Path,
    opts: BackupOptions,
) -> Result<BackupSummary, RepoError> {
    let source = std::fs::canonicalize(source).map_err(|e| RepoError::io("resolve", source, e))?;
    let md = std::fs::metadata(&source).map_err(|e| RepoError::io("stat", &source, e))?;
    if !md.is_dir() {
        return Err(RepoError::io(
            "back up",
            &source,
            std::io::Error::other("not a directory"),
        ));
    }
    let lock_guard = repo.lock(false).await?;
    let result = backup_locked(repo, &source, opts).await;
    let released = lock_guard.release().await;
    let summary = result?;
    released?;
    Ok(summary)
}

async fn backup_locked(
    repo: &Repository,
    source: &Path,
    opts: BackupOptions,
) -> Result<BackupSummary, RepoError> {
    let index = Arc::new(repo.load_index().await?);
    let excluded = crate::prune::blobs_in_marked_packs(repo, &index).await;
    let parent_tree = match opts.parent {
        Some(pid) => {
            let snap: Snapshot = repo.load_json(FileType::Snapshot, &pid).await?;
            Some(repo.load_tree(&index, &snap.tree).await?)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(opts.uploads_in_flight.max(1));
    let up = tokio::spawn(uploader(
        repo.clone(),
        rx,
        opts.uploads_in_flight.max(1),
        opts.stats.clone(),
    ));
    let ctx = Ctx {
        repo: repo.clone(),
        index: index.clone(),
        excluded,
        pending: Mutex::new(HashSet::new()),
        data: Packer {
            state: Mutex::new((Vec::new(), Vec::new())),
            tx: tx.clone(),
            target: opts.pack_size,
        },
        trees: Packer {
            state: Mutex::new((Vec::new(), Vec::new())),
            tx,
            target: opts.pack_size,
        },
        level: opts.compression.level(),
        stats: opts.stats.clone(),
        errors: Mutex::new(Vec::new()),
    };
    let threads = opts.threads.max(1);
    let src = source.to_path_buf();
    let walked = tokio::task::spawn_blocking(move || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("holdfast-backup-{i}"))
            .build()
            .map_err(|e| RepoError::Internal(format!("thread pool: {e}")))?;
        let r = pool.install(|| {
            let root = ctx.backup_dir(&src, parent_tree.as_ref())?;
            ctx.data.flush(&ctx)?;
            ctx.trees.flush(&ctx)?;
            Ok::<_, RepoError>(root)
        });
        let errors = std::mem::take(&mut *lock(&ctx.errors));
        drop(ctx); // closes the channel
        r.map(|root| (root, errors))
    })
    .await
    .map_err(|e| RepoError::Internal(e.to_string()))?;
    let uploaded = up.await.map_err(|e| RepoError::Internal(e.to_string()))?;
    // An upload failure is the root cause of a pipeline error: report it first.
    uploaded?;
    let (root, errors) = walked?;
    let snapshot = Snapshot {
        time: format::format_time(&chrono::Utc::now().fixed_offset()),
        parent: opts.parent,
        tree: root,
        paths: vec![source.display().to_string()],
        hostname: opts.hostname.clone(),
        username: username(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        tags: opts.tags.clone(),
        program_version: Some(format!("holdfast {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    let snapshot_id = repo.save_json(FileType::Snapshot, &snapshot).await?;
    Ok(BackupSummary {
        snapshot_id,
        snapshot,
        errors,
    })
}
