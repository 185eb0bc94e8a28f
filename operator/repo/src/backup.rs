//! Backup of a directory tree into the repository: content-defined chunking
//! (FastCDC 2020), hashing/compression/encryption in parallel on all cores (rayon),
//! several pack uploads in flight (tokio), dedup against the index, and metadata-based
//! skip of unchanged files against a parent snapshot.
//!
//! Each byte of new data is read once from the file and then passes through the CPU as
//! few times as the format allows: SHA-256 of the chunk (its blob id), zstd (skipped after
//! a small sample when the chunk does not compress), AES-CTR+Poly1305 written straight
//! into the worker's own open pack, and SHA-256 of the encrypted bytes as they are
//! appended (the pack's name); the finished pack goes to the uploader without a copy.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::crypto::Key;
use crate::format::{self, BlobType, FileType, IndexBlob, IndexJson, IndexPack, PackedBlob};
use crate::id::IdHasher;
use crate::repo::{Index, Repository, hostname, username};
use crate::tree::{ExtendedAttribute, Node, Snapshot, Tree, go_mode_from_unix};
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
    /// Bytes of packs an interrupted earlier attempt uploaded, taken over (not uploaded again).
    pub bytes_resumed: AtomicU64,
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
    /// Name of this backup's journal (`holdfast/journal/<name>/`): every uploaded pack is
    /// recorded there until the snapshot is saved, so that a later attempt after a crash can
    /// take those packs over instead of uploading their data again.
    pub journal: Option<String>,
    /// Resume an interrupted attempt of the same journal: index the packs it uploaded that no
    /// index lists yet, and remove the locks earlier attempts on this host left.
    pub resume: bool,
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
            journal: None,
            resume: false,
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

/// A pack being assembled: its bytes so far, its blobs, and the SHA-256 of its bytes so
/// far (the pack's name).
#[derive(Default)]
struct OpenPack {
    buf: Vec<u8>,
    blobs: Vec<PackedBlob>,
    hash: IdHasher,
}

/// Packs of one blob type. Data packs are open one per worker thread: a worker encrypts
/// into and hashes its own pack without waiting for the others (one shared pack would
/// put every byte's pack hash behind one lock, on one core at a time). Tree blobs are
/// small: one shared pack.
struct Packer {
    open: Vec<Mutex<OpenPack>>,
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
    /// `slots` packs open at a time (one per worker thread, or 1).
    fn new(slots: usize, tx: mpsc::Sender<FinishedPack>, target: usize) -> Packer {
        Packer {
            open: (0..slots.max(1))
                .map(|_| Mutex::new(OpenPack::default()))
                .collect(),
            tx,
            target,
        }
    }

    /// The open pack of the calling worker thread.
    fn slot(&self) -> &Mutex<OpenPack> {
        let i = rayon::current_thread_index().unwrap_or(0) % self.open.len();
        &self.open[i]
    }

    /// Encrypts `stored` (a blob's plaintext, compressed or not) straight into the open
    /// pack and hashes the appended bytes; sends the pack when it reached its target size.
    fn add(&self, key: &Key, blob: PackedBlob, stored: &[u8]) -> Result<(), RepoError> {
        let full = {
            let mut guard = lock(self.slot());
            let p = &mut *guard;
            if p.buf.capacity() == 0 {
                p.buf.reserve(self.target + CHUNK_MAX as usize + 4096);
            }
            let start = p.buf.len();
            let offset =
                u32::try_from(start).map_err(|_| RepoError::Internal("pack too large".into()))?;
            key.encrypt_into(stored, &mut p.buf)?;
            let length = u32::try_from(p.buf.len() - start)
                .map_err(|_| RepoError::Internal("blob too large".into()))?;
            p.hash.update(&p.buf[start..]);
            p.blobs.push(PackedBlob {
                offset,
                length,
                ..blob
            });
            (p.buf.len() >= self.target).then(|| std::mem::take(p))
        };
        match full {
            Some(pack) => self.send(key, pack),
            None => Ok(()),
        }
    }

    /// Sends every open pack that holds a blob.
    fn flush(&self, key: &Key) -> Result<(), RepoError> {
        for slot in &self.open {
            let pack = std::mem::take(&mut *lock(slot));
            if !pack.blobs.is_empty() {
                self.send(key, pack)?;
            }
        }
        Ok(())
    }

    /// Appends the encrypted header and its length, finishes the pack's hash, and hands
    /// the pack to the uploader.
    fn send(&self, key: &Key, pack: OpenPack) -> Result<(), RepoError> {
        let OpenPack {
            mut buf,
            blobs,
            mut hash,
        } = pack;
        let start = buf.len();
        key.encrypt_into(&format::pack_header(&blobs), &mut buf)?;
        let header_len = u32::try_from(buf.len() - start)
            .map_err(|_| RepoError::Internal("pack header too large".into()))?;
        buf.extend_from_slice(&header_len.to_le_bytes());
        hash.update(&buf[start..]);
        self.tx
            .blocking_send(FinishedPack {
                id: hash.finish(),
                data: Bytes::from(buf),
                blobs,
            })
            .map_err(|_| RepoError::Pipeline("the uploader stopped".into()))
    }
}

/// Bytes of each sample compressed to decide whether a large blob is worth compressing.
const SAMPLE_LEN: usize = 16 * 1024;
/// Samples taken, evenly spread over the blob.
const SAMPLES: usize = 4;
/// A blob is compressed only when its samples shrink to at most this fraction (in 1/64):
/// 62/64, a gain of at least ~3%. Text-like data shrinks to 1/3 or less, random data not
/// at all; blobs in between are rare (whole files are homogeneous more often than not).
const WORTH_COMPRESSING: usize = 62;

/// The largest zstd output buffer a worker keeps between blobs.
const OUT_KEPT: usize = 2 << 20;

thread_local! {
    /// zstd's context and an output buffer per worker thread, reused for every blob.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `plain` at `level` and calls `f` with what to store: the compressed bytes
/// and the plaintext length, or the plaintext itself and `None` when compressing would not
/// make it smaller. A blob larger than the samples is first judged by compressing
/// [`SAMPLES`] pieces of [`SAMPLE_LEN`] bytes; incompressible data (random bytes, already
/// compressed media) thus costs ~6% of a 1 MiB chunk's compression, not all of it.
fn with_compressed<R>(
    plain: &[u8],
    level: Option<i32>,
    f: impl FnOnce(&[u8], Option<u32>) -> R,
) -> R {
    let (Some(level), Ok(plain_len)) = (level, u32::try_from(plain.len())) else {
        return f(plain, None);
    };
    ZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _, _)| *l != level) {
            match zstd::bulk::Compressor::new(level) {
                Ok(c) => *cell = Some((level, c, Vec::new())),
                Err(_) => return f(plain, None),
            }
        }
        let Some((_, zc, out)) = cell.as_mut() else {
            return f(plain, None);
        };
        if plain.len() >= 4 * SAMPLES * SAMPLE_LEN {
            let step = (plain.len() - SAMPLE_LEN) / (SAMPLES - 1);
            let mut packed = 0usize;
            for i in 0..SAMPLES {
                out.clear();
                out.reserve(zstd::zstd_safe::compress_bound(SAMPLE_LEN));
                let at = i * step;
                match zc.compress_to_buffer(&plain[at..at + SAMPLE_LEN], out) {
                    Ok(n) => packed += n,
                    Err(_) => return f(plain, None),
                }
            }
            if packed * 64 > WORTH_COMPRESSING * SAMPLES * SAMPLE_LEN {
                return f(plain, None);
            }
        }
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
        let r = match zc.compress_to_buffer(plain, out) {
            Ok(n) if n < plain.len() => f(&out[..n], Some(plain_len)),
            _ => f(plain, None),
        };
        // Keep a buffer for average chunks (1 MiB), not the largest one seen (8 MiB).
        if out.capacity() > OUT_KEPT {
            *out = Vec::new();
        }
        r
    })
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

/// The extended attributes of `path` (not following symlinks), sorted by name, in
/// restic's node format. File systems without xattr support yield none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<ExtendedAttribute>> {
    use rustix::io::Errno;
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name_str) = std::str::from_utf8(name) else {
            continue;
        };
        let mut value = vec![0u8; 256];
        let got = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(k) => break Some(k),
                Err(Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr_query(path, name)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between listing and reading.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(k) = got {
            value.truncate(k);
            out.push(ExtendedAttribute {
                name: name_str.to_string(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
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
        let packer = match t {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.trees,
        };
        with_compressed(plain, self.level, |stored, uncompressed_length| {
            let blob = PackedBlob {
                id,
                blob_type: t,
                offset: 0,
                length: 0,
                uncompressed_length,
            };
            packer.add(self.repo.key(), blob, stored)
        })?;
        BackupStats::add(&self.stats.blobs_new, 1);
        BackupStats::add(&self.stats.bytes_new, plain.len() as u64);
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
        match read_xattrs(path) {
            Ok(x) if !x.is_empty() => node.extended_attributes = Some(x),
            Ok(_) => {}
            Err(e) => self.record(format!("extended attributes of {}: {e}", path.display())),
        }
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
    /// could not be read (recorded as an error). Holes of sparse files (found with
    /// SEEK_DATA/SEEK_HOLE) of at least [`ZERO_CHUNK`] bytes are not read: they become
    /// references to one all-zero blob of that size.
    fn backup_file(&self, path: &Path, md: &Metadata) -> Result<Option<Vec<Id>>, RepoError> {
        let f = match open_noatime(path) {
            Ok(f) => f,
            Err(e) => {
                self.record(format!("open {}: {e}", path.display()));
                return Ok(None);
            }
        };
        let len = md.len();
        let regions = if md.blocks().saturating_mul(512) < len {
            sparse_regions(&f, len)
        } else {
            vec![Region::Dense(0, len)]
        };
        let mut ids = Vec::new();
        for r in regions {
            match r {
                Region::Zero(n) => {
                    let z = zero_chunk();
                    self.add_blob(z.0, BlobType::Data, &z.1)?;
                    ids.extend(std::iter::repeat_n(z.0, n as usize));
                }
                Region::Dense(start, end) => {
                    if !self.chunk_range(&f, path, start, end, &mut ids)? {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(ids))
    }

    /// Reads `[start, end)` of `f` (or to its end, if it shrank), cuts it with FastCDC
    /// and stores the chunks. `Ok(false)` when reading failed (recorded).
    fn chunk_range(
        &self,
        f: &std::fs::File,
        path: &Path,
        start: u64,
        end: u64,
        ids: &mut Vec<Id>,
    ) -> Result<bool, RepoError> {
        let mut buf: Vec<u8> =
            Vec::with_capacity(((end - start) as usize).saturating_add(1).min(READ_BATCH));
        let mut off = start;
        let mut eof = start >= end;
        loop {
            if !eof && buf.len() < READ_BATCH {
                let want = ((READ_BATCH - buf.len()) as u64).min(end - off) as usize;
                match read_into_spare(f, &mut buf, off, want) {
                    Ok(n) => {
                        off += n as u64;
                        eof = n < want || off >= end;
                    }
                    Err(e) => {
                        self.record(format!("read {}: {e}", path.display()));
                        return Ok(false);
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
        Ok(true)
    }
}

impl Ctx {
    /// Backs up a block device (or an image file) as a tree with one file node, in
    /// fixed [`BLOCK_CHUNK`] pieces: all-zero pieces (holes of an image file are not
    /// even read) become one deduplicated zero blob.
    fn backup_block(&self, src: &Path, name: &str) -> Result<Id, RepoError> {
        let f = open_noatime(src).map_err(|e| RepoError::io("open", src, e))?;
        let md = f.metadata().map_err(|e| RepoError::io("stat", src, e))?;
        let size = rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0))
            .map_err(|e| RepoError::io("size of", src, e.into()))?;
        let extents = if md.is_file() {
            data_extents(&f, size)
        } else {
            None
        };
        BackupStats::add(&self.stats.bytes_total, size);
        let chunk = BLOCK_CHUNK as u64;
        let count = size.div_ceil(chunk);
        let per_batch = (READ_BATCH / BLOCK_CHUNK) as u64;
        let mut ids = Vec::with_capacity(count as usize);
        let mut first = 0u64;
        while first < count {
            let last = (first + per_batch).min(count);
            let batch: Vec<Id> = (first..last)
                .into_par_iter()
                .map(|i| {
                    let start = i * chunk;
                    let len = (size - start).min(chunk) as usize;
                    let hole = extents
                        .as_ref()
                        .is_some_and(|x| !overlaps_data(x, start, start + len as u64));
                    let data = if hole {
                        vec![0u8; len]
                    } else {
                        let mut buf = Vec::with_capacity(len);
                        let n = read_full_at(&f, &mut buf, start, len)
                            .map_err(|e| RepoError::io("read", src, e))?;
                        if n < len {
                            return Err(RepoError::io(
                                "read",
                                src,
                                std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    format!("short read at {start}: the device shrank"),
                                ),
                            ));
                        }
                        BackupStats::add(&self.stats.bytes_read, n as u64);
                        buf
                    };
                    let id = if len == BLOCK_CHUNK && (hole || is_zero(&data)) {
                        block_zero_id()
                    } else {
                        Id::hash(&data)
                    };
                    self.add_blob(id, BlobType::Data, &data)?;
                    Ok(id)
                })
                .collect::<Result<_, RepoError>>()?;
            ids.extend(batch);
            first = last;
        }
        BackupStats::add(&self.stats.files_new, 1);
        let node = Node {
            name: name.to_string(),
            node_type: "file".into(),
            mode: md.mode() & 0o777,
            mtime: format::format_time(&format::unix_time(md.mtime(), md.mtime_nsec())),
            atime: format::format_time(&format::unix_time(md.atime(), md.atime_nsec())),
            ctime: format::format_time(&format::unix_time(md.ctime(), md.ctime_nsec())),
            uid: md.uid(),
            gid: md.gid(),
            size,
            links: 1,
            content: Some(ids),
            ..Default::default()
        };
        let tree = Tree { nodes: vec![node] };
        let blob = tree.to_blob().map_err(|source| format::FormatError::Json {
            what: format!("tree of {}", src.display()),
            source,
        })?;
        let id = Id::hash(&blob);
        self.add_blob(id, BlobType::Tree, &blob)?;
        Ok(id)
    }
}

/// Piece size of block device backups: fixed, so that a changed block maps to one
/// piece (changed block tracking can reuse the parent's list by offset) and 1 MiB
/// like restic's average chunk.
pub const BLOCK_CHUNK: usize = 1024 * 1024;

/// Tag of snapshots holding a block device image (one file node).
pub const BLOCK_TAG: &str = "holdfast:block";

/// The id of a zero [`BLOCK_CHUNK`].
pub fn block_zero_id() -> Id {
    static Z: std::sync::OnceLock<Id> = std::sync::OnceLock::new();
    *Z.get_or_init(|| Id::hash(&vec![0u8; BLOCK_CHUNK]))
}

fn is_zero(d: &[u8]) -> bool {
    let mut chunks = d.chunks_exact(16);
    chunks.all(|c| c == [0u8; 16]) && chunks.remainder().iter().all(|&b| b == 0)
}

/// True when `[a, b)` overlaps a data extent (extents sorted, disjoint).
fn overlaps_data(extents: &[(u64, u64)], a: u64, b: u64) -> bool {
    // First extent ending after a.
    let i = extents.partition_point(|&(_, e)| e <= a);
    extents.get(i).is_some_and(|&(s, _)| s < b)
}

/// Size of the all-zero blob that stands for holes of sparse files (the largest chunk
/// FastCDC cuts).
pub const ZERO_CHUNK: u64 = CHUNK_MAX as u64;

/// The all-zero chunk of [`ZERO_CHUNK`] bytes and its id (computed once).
fn zero_chunk() -> &'static (Id, Vec<u8>) {
    static Z: std::sync::OnceLock<(Id, Vec<u8>)> = std::sync::OnceLock::new();
    Z.get_or_init(|| {
        let v = vec![0u8; ZERO_CHUNK as usize];
        (Id::hash(&v), v)
    })
}

/// The id of the all-zero [`ZERO_CHUNK`] (restore skips it without reading it).
pub fn sparse_zero_id() -> Id {
    static Z: std::sync::OnceLock<Id> = std::sync::OnceLock::new();
    *Z.get_or_init(|| zero_chunk().0)
}

/// A part of a file: bytes to read and chunk, or a number of all-zero chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Dense(u64, u64),
    Zero(u64),
}

/// Appends up to `want` bytes read at `off` to `buf`; returns how many (short at EOF).
fn read_full_at(
    f: &std::fs::File,
    buf: &mut Vec<u8>,
    off: u64,
    want: usize,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let base = buf.len();
    buf.resize(base + want, 0);
    let mut got = 0;
    while got < want {
        match f.read_at(&mut buf[base + got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(base);
                return Err(e);
            }
        }
    }
    buf.truncate(base + got);
    Ok(got)
}

/// Appends up to `want` bytes read at `off` to `buf`; returns how many (short at EOF).
/// Unlike [`read_full_at`] the bytes go straight into `buf`'s spare capacity (std's
/// `read_to_end` on a `File` reads into uninitialised memory), so the 32 MiB read buffer
/// is not zero-filled before every read. Moves the file position: for a file that one
/// thread reads.
fn read_into_spare(
    f: &std::fs::File,
    buf: &mut Vec<u8>,
    off: u64,
    want: usize,
) -> std::io::Result<usize> {
    use std::io::{Read, Seek};
    let mut r = f;
    r.seek(std::io::SeekFrom::Start(off))?;
    buf.reserve(want);
    let base = buf.len();
    r.take(want as u64).read_to_end(buf).inspect_err(|_| {
        buf.truncate(base);
    })
}

/// The data extents of `f` (SEEK_DATA/SEEK_HOLE); `None` when the file system
/// cannot tell.
pub fn data_extents(f: &std::fs::File, len: u64) -> Option<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(_) => return None,
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(f, SeekFrom::Hole(data)).ok()?.min(len);
        if hole <= data {
            return None;
        }
        out.push((data, hole));
        pos = hole;
    }
    Some(out)
}

/// Splits a sparse file into regions: each hole of at least [`ZERO_CHUNK`] bytes
/// becomes whole zero chunks (its first `len % ZERO_CHUNK` bytes stay with the data
/// before it, read as zeros from the page cache); the rest is read.
fn sparse_regions(f: &std::fs::File, len: u64) -> Vec<Region> {
    let Some(extents) = data_extents(f, len) else {
        return vec![Region::Dense(0, len)];
    };
    regions_from_extents(&extents, len, ZERO_CHUNK)
}

fn regions_from_extents(extents: &[(u64, u64)], len: u64, z: u64) -> Vec<Region> {
    let mut holes = Vec::new();
    let mut prev = 0u64;
    for &(s, e) in extents {
        if s > prev {
            holes.push((prev, s));
        }
        prev = e;
    }
    if len > prev {
        holes.push((prev, len));
    }
    let mut out = Vec::new();
    let mut dense_from = 0u64;
    for (hs, he) in holes {
        let n = (he - hs) / z;
        if n == 0 {
            continue;
        }
        let zs = he - n * z;
        if zs > dense_from {
            out.push(Region::Dense(dense_from, zs));
        }
        out.push(Region::Zero(n));
        dense_from = he;
    }
    if len > dense_from {
        out.push(Region::Dense(dense_from, len));
    }
    out
}

type UploadResult = Result<(Id, Vec<PackedBlob>, u64), RepoError>;

/// Blobs in one index file at most (restic's limit too): packs of small files' blobs
/// hold tens of thousands each, and one index of a 1,000,000-file backup took ~350 MB to
/// encode.
pub const INDEX_MAX_BLOBS: usize = 50_000;

/// Uploads packs as they come, several at a time, and writes index files for
/// uploaded packs (every 64 packs or [`INDEX_MAX_BLOBS`] blobs, and at the end). Returns
/// the index files written.
async fn uploader(
    repo: Repository,
    mut rx: mpsc::Receiver<FinishedPack>,
    in_flight: usize,
    stats: Arc<BackupStats>,
    journal: Option<String>,
) -> Result<Vec<Id>, RepoError> {
    let mut set: tokio::task::JoinSet<UploadResult> = tokio::task::JoinSet::new();
    let mut pending = IndexJson::default();
    let mut pending_blobs = 0usize;
    let mut written = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            msg = rx.recv(), if open && set.len() < in_flight => match msg {
                Some(p) => {
                    let store = repo.store().clone();
                    let journal = journal.clone();
                    set.spawn(async move {
                        let n = p.data.len() as u64;
                        // The journal names the pack first: a crash between the two
                        // leaves a name without a pack (skipped on resume), never a pack
                        // that nothing will index.
                        if let Some(j) = journal {
                            store.put(&journal_key(&j, &p.id), Bytes::new()).await?;
                        }
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
                pending_blobs += blobs.len();
                pending.packs.push(IndexPack { id, blobs: blobs.iter().map(IndexBlob::from).collect() });
                if pending.packs.len() >= 64 || pending_blobs >= INDEX_MAX_BLOBS {
                    written.push(repo.save_json(FileType::Index, &std::mem::take(&mut pending)).await?);
                    pending_blobs = 0;
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

/// Prefix of the journal of backup `name`.
pub fn journal_prefix(name: &str) -> String {
    format!("holdfast/journal/{name}/")
}

fn journal_key(name: &str, pack: &Id) -> String {
    format!("{}{pack}", journal_prefix(name))
}

/// Takes over what an interrupted attempt of journal `name` uploaded: the packs it recorded
/// that no index lists get an index file (read from their own headers).
async fn resume(repo: &Repository, name: &str, stats: &BackupStats) -> Result<(), RepoError> {
    let recorded: Vec<Id> = repo
        .store()
        .list(&journal_prefix(name))
        .await?
        .into_iter()
        .filter_map(|o| o.key.rsplit('/').next().and_then(Id::parse))
        .collect();
    let indexed: HashSet<Id> = repo
        .load_index_files()
        .await?
        .into_iter()
        .flat_map(|(_, j)| j.packs.into_iter().map(|p| p.id))
        .collect();
    let mut adopted = IndexJson::default();
    let mut bytes = 0u64;
    for id in recorded.into_iter().filter(|id| !indexed.contains(id)) {
        let key = FileType::Pack.key(&id);
        let Some(size) = repo.store().head(&key).await? else {
            continue; // recorded, then removed (a prune): nothing to take over
        };
        let blobs = repo.read_pack_header(&id, size).await?;
        bytes += size;
        adopted.packs.push(IndexPack {
            id,
            blobs: blobs.iter().map(IndexBlob::from).collect(),
        });
    }
    let packs = adopted.packs.len();
    if packs > 0 {
        repo.save_json(FileType::Index, &adopted).await?;
    }
    BackupStats::add(&stats.bytes_resumed, bytes);
    tracing::info!(
        journal = name,
        packs,
        bytes,
        "resumed an interrupted backup"
    );
    Ok(())
}

/// The backup's shared lock. A resumed attempt first removes the locks its earlier attempts
/// left: it runs under their host name (the same mover pod name), so no live process holds
/// them.
async fn lock_for(
    repo: &Repository,
    opts: &BackupOptions,
) -> Result<crate::repo::LockGuard, RepoError> {
    if opts.resume && opts.journal.is_some() {
        let removed = repo.remove_locks_of_host(&hostname()).await?;
        tracing::info!(removed, "locks of earlier attempts removed");
    }
    repo.lock(false).await
}

/// Deletes the journal of backup `name`.
pub async fn clear_journal(repo: &Repository, name: &str) -> Result<(), RepoError> {
    for o in repo.store().list(&journal_prefix(name)).await? {
        repo.store().delete(&o.key).await?;
    }
    Ok(())
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
    let lock_guard = lock_for(repo, &opts).await?;
    let result = backup_locked(repo, &source, opts, None).await;
    let released = lock_guard.release().await;
    let summary = result?;
    released?;
    Ok(summary)
}

/// Backs up a block device, or a regular file holding a disk image, as a snapshot
/// with one file node named `name` (like `restic backup --stdin`), tagged
/// [`BLOCK_TAG`]; `restic restore` yields the image as a file.
pub async fn backup_block(
    repo: &Repository,
    source: &Path,
    name: &str,
    mut opts: BackupOptions,
) -> Result<BackupSummary, RepoError> {
    let source = std::fs::canonicalize(source).map_err(|e| RepoError::io("resolve", source, e))?;
    let md = std::fs::metadata(&source).map_err(|e| RepoError::io("stat", &source, e))?;
    use std::os::unix::fs::FileTypeExt;
    if !md.file_type().is_block_device() && !md.is_file() {
        return Err(RepoError::io(
            "back up",
            &source,
            std::io::Error::other("neither a block device nor a regular file"),
        ));
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(RepoError::Internal(format!("invalid image name {name:?}")));
    }
    if !opts.tags.iter().any(|t| t == BLOCK_TAG) {
        opts.tags.push(BLOCK_TAG.to_string());
    }
    opts.parent = None;
    let lock_guard = lock_for(repo, &opts).await?;
    let result = backup_locked(repo, &source, opts, Some(name.to_string())).await;
    let released = lock_guard.release().await;
    let summary = result?;
    released?;
    Ok(summary)
}

/// `block`: the image name when backing up a block device.
async fn backup_locked(
    repo: &Repository,
    source: &Path,
    opts: BackupOptions,
    block: Option<String>,
) -> Result<BackupSummary, RepoError> {
    if opts.resume
        && let Some(j) = &opts.journal
    {
        resume(repo, j, &opts.stats).await?;
    }
    let index = Arc::new(repo.load_index().await?);
    let excluded = crate::prune::blobs_in_marked_packs(repo, &index).await;
    let parent_tree = match opts.parent {
        Some(pid) => {
            let snap: Snapshot = repo.load_json(FileType::Snapshot, &pid).await?;
            Some(repo.load_tree(&index, &snap.tree).await?)
        }
        None => None,
    };
    let threads = opts.threads.max(1);
    // Finished packs waiting for an upload slot. Every worker keeps a data pack open, so the
    // queue is shorter by the extra open packs: uploads + queue + open packs, the pack
    // buffers alive at once, stay what they were with one shared data pack (2 × uploads +
    // 2) while there are no more workers than uploads.
    let queue = opts
        .uploads_in_flight
        .max(1)
        .saturating_sub(threads - 1)
        .max(1);
    let (tx, rx) = mpsc::channel(queue);
    let up = tokio::spawn(uploader(
        repo.clone(),
        rx,
        opts.uploads_in_flight.max(1),
        opts.stats.clone(),
        opts.journal.clone(),
    ));
    let ctx = Ctx {
        repo: repo.clone(),
        index: index.clone(),
        excluded,
        pending: Mutex::new(HashSet::new()),
        data: Packer::new(threads, tx.clone(), opts.pack_size),
        trees: Packer::new(1, tx, opts.pack_size),
        level: opts.compression.level(),
        stats: opts.stats.clone(),
        errors: Mutex::new(Vec::new()),
    };
    let src = source.to_path_buf();
    let walked = tokio::task::spawn_blocking(move || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("holdfast-backup-{i}"))
            .build()
            .map_err(|e| RepoError::Internal(format!("thread pool: {e}")))?;
        let r = pool.install(|| {
            let root = match &block {
                Some(name) => ctx.backup_block(&src, name)?,
                None => ctx.backup_dir(&src, parent_tree.as_ref())?,
            };
            ctx.data.flush(ctx.repo.key())?;
            ctx.trees.flush(ctx.repo.key())?;
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
    if let Some(j) = &opts.journal {
        // The packs are indexed and the snapshot saved: the journal has done its job.
        clear_journal(repo, j).await?;
    }
    Ok(BackupSummary {
        snapshot_id,
        snapshot,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn text(n: usize) -> Vec<u8> {
        let words = [
            "backup ",
            "restore ",
            "volume ",
            "snapshot ",
            "pack ",
            "blob\n",
        ];
        let mut r = random(n, 7).into_iter();
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            let w = words[usize::from(r.next().unwrap_or(0)) % words.len()];
            v.extend_from_slice(w.as_bytes());
        }
        v.truncate(n);
        v
    }

    fn stored(plain: &[u8], level: Option<i32>) -> (Vec<u8>, Option<u32>) {
        with_compressed(plain, level, |s, u| (s.to_vec(), u))
    }

    #[test]
    fn packs_assembled_by_several_workers_are_named_by_their_hash_and_parse() {
        let key = Key::random().expect("key");
        let (tx, mut rx) = mpsc::channel(64);
        let packer = Packer::new(2, tx, 3 << 20);
        let blobs: Vec<Vec<u8>> = (0..40)
            .map(|i| random(100_000 + i * 977, i as u64 + 1))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        pool.install(|| {
            blobs.par_iter().try_for_each(|b| {
                let blob = PackedBlob {
                    id: Id::hash(b),
                    blob_type: BlobType::Data,
                    offset: 0,
                    length: 0,
                    uncompressed_length: None,
                };
                packer.add(&key, blob, b)
            })
        })
        .expect("add");
        packer.flush(&key).expect("flush");
        drop(packer);
        let mut seen = 0;
        while let Some(p) = rx.blocking_recv() {
            assert_eq!(
                p.id,
                Id::hash(&p.data),
                "a pack is named by the SHA-256 of its bytes"
            );
            let n = p.data.len();
            let hlen = u32::from_le_bytes(p.data[n - 4..].try_into().expect("4 bytes")) as usize;
            let hstart = n - 4 - hlen;
            let parsed =
                format::parse_pack_header(&p.data[hstart..n - 4], hstart as u64, &key, "pack")
                    .expect("header");
            assert_eq!(parsed.len(), p.blobs.len());
            for (b, h) in p.blobs.iter().zip(&parsed) {
                assert_eq!((b.id, b.offset, b.length), (h.id, h.offset, h.length));
                let at = b.offset as usize;
                let plain = key
                    .decrypt(&p.data[at..at + b.length as usize])
                    .expect("mac");
                assert_eq!(Id::hash(&plain), b.id);
                seen += 1;
            }
        }
        assert_eq!(seen, blobs.len());
    }

    #[test]
    fn compression_is_kept_only_where_it_pays() {
        // Large incompressible blob: judged by its samples, stored as it is.
        let r = random(1 << 20, 1);
        assert_eq!(stored(&r, Some(1)), (r.clone(), None));
        // Small incompressible blob (no sampling): zstd tried, no gain, stored as it is.
        let small = random(3000, 2);
        assert_eq!(stored(&small, Some(1)), (small.clone(), None));
        // Compression off.
        let t = text(1 << 20);
        assert_eq!(stored(&t, None), (t.clone(), None));
        // Text-like, large and small: compressed, and decompresses to the plaintext.
        for t in [text(1 << 20), text(5000)] {
            let (c, u) = stored(&t, Some(1));
            assert_eq!(u, Some(t.len() as u32));
            assert!(c.len() < t.len() / 2, "{} of {}", c.len(), t.len());
            assert_eq!(zstd::bulk::decompress(&c, t.len()).expect("zstd"), t);
        }
        // Half random, half text, interleaved finer than the samples: compressed.
        let mut mixed = Vec::new();
        for i in 0..64 {
            mixed.extend(random(8192, i + 10));
            mixed.extend(text(8192));
        }
        assert_eq!(stored(&mixed, Some(3)).1, Some(mixed.len() as u32));
        // The level can change on the same thread.
        assert!(stored(&text(1 << 20), Some(-1)).1.is_some());
    }

    #[test]
    fn regions_cover_the_file_and_holes_become_zero_chunks() {
        let z = 8u64;
        // data [0,3), hole [3,30), data [30,31), hole [31,40)
        let r = regions_from_extents(&[(0, 3), (30, 31)], 40, z);
        assert_eq!(
            r,
            vec![
                Region::Dense(0, 6),
                Region::Zero(3),
                Region::Dense(30, 32),
                Region::Zero(1),
            ]
        );
        assert!(!overlaps_data(&[(0, 3), (30, 31)], 3, 30));
        assert!(overlaps_data(&[(0, 3), (30, 31)], 2, 4));
        assert!(overlaps_data(&[(0, 3), (30, 31)], 29, 31));
        assert!(!overlaps_data(&[(0, 3), (30, 31)], 31, 40));
        // No data at all.
        assert_eq!(
            regions_from_extents(&[], 17, z),
            vec![Region::Dense(0, 1), Region::Zero(2)]
        );
        // Small holes stay dense.
        assert_eq!(
            regions_from_extents(&[(0, 3), (5, 9)], 9, z),
            vec![Region::Dense(0, 9)]
        );
        // Covered lengths add up.
        let total: u64 = regions_from_extents(&[(0, 3), (30, 31)], 40, z)
            .iter()
            .map(|x| match x {
                Region::Dense(a, b) => b - a,
                Region::Zero(n) => n * z,
            })
            .sum();
        assert_eq!(total, 40);
    }
}
