//! Restore of a snapshot into a directory, in three passes:
//! 1. the trees are walked in parallel: directories, symlinks and special files are
//!    made, every regular file is created at its full size (all holes), and each content
//!    blob is noted with the places it goes to;
//! 2. the noted blobs are read **pack by pack**, with one ranged GET per run of nearby
//!    blobs rather than one per blob (object stores spend far more per request than per
//!    byte), then verified and written to every place that needs them; all-zero pieces
//!    are left as holes;
//! 3. hard links are made, then file and directory metadata applied (last, since writing
//!    changes times).

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rayon::prelude::*;

use crate::format::{self, BlobType};
use crate::repo::{BlobLocation, Index, Repository};
use crate::tree::{Node, unix_perm_from_go};
use crate::{Id, RepoError};

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Worker threads (reading is IO-bound on object stores: more than cores).
    pub threads: usize,
    /// Restore ownership (default: when running as root).
    pub owner: bool,
    /// Bytes of file content written so far (holes included), updated as blobs land; for
    /// progress reports while the restore runs.
    pub progress: Option<Arc<AtomicU64>>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2)
                * 4,
            owner: rustix::process::geteuid().is_root(),
            progress: None,
        }
    }
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Metadata that could not be applied (the data itself is complete).
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    repo: &'a Repository,
    index: &'a Index,
    owner: bool,
    progress: Option<Arc<AtomicU64>>,
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    warnings: Mutex<Vec<String>>,
    hardlinks: Mutex<HashMap<(u64, u64), PathBuf>>,
    deferred_links: Mutex<Vec<(PathBuf, PathBuf, Node)>>,
    /// Paths of the regular files being restored; [`Place::file`] indexes it.
    file_paths: Mutex<Paths>,
    /// Every place a content blob is written to, with where the blob is stored. A flat list
    /// (sorted by pack and offset before the pack pass), not a map per blob: a tree of
    /// 1,000,000 small files held ~450 MB of maps and per-blob lists.
    places: Mutex<Vec<Place>>,
}

/// A place a blob's plaintext goes, file `file` (index into `file_paths`) at `offset`,
/// and where the blob is stored.
#[derive(Debug, Clone, Copy)]
struct Place {
    id: Id,
    loc: BlobLocation,
    file: u32,
    offset: u64,
}

/// File paths in one buffer (a `PathBuf` each costs an allocation and ~40 bytes more).
#[derive(Default)]
struct Paths {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Paths {
    /// Adds `p`; returns its number.
    fn push(&mut self, p: &Path) -> Result<u32, RepoError> {
        use std::os::unix::ffi::OsStrExt;
        self.bytes.extend_from_slice(p.as_os_str().as_bytes());
        self.ends.push(self.bytes.len());
        u32::try_from(self.ends.len() - 1)
            .map_err(|_| RepoError::Internal("more than 2^32 files".into()))
    }

    fn get(&self, i: u32) -> &Path {
        use std::os::unix::ffi::OsStrExt;
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Path::new(std::ffi::OsStr::from_bytes(
            &self.bytes[start..self.ends[i]],
        ))
    }
}

/// Blobs further apart in a pack than this are read with separate requests.
const MAX_GAP: u32 = 1 << 20;
/// At most this many bytes are read with one request.
const MAX_RANGE: u32 = 16 << 20;
/// At most this many bytes of pack data are held at once over all workers, whatever the
/// thread count (a mover on a 64-core node defaults to 256 threads).
const READ_BUDGET: u64 = 128 << 20;

/// A byte budget shared by the workers: `take` waits until the bytes fit (a request
/// larger than the whole budget proceeds alone).
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
    limit: u64,
}

struct Taken<'a> {
    budget: &'a Budget,
    n: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
            limit,
        }
    }

    fn take(&self, n: u64) -> Taken<'_> {
        let mut used = lock(&self.used);
        while *used > 0 && *used + n > self.limit {
            used = match self.freed.wait(used) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        *used += n;
        Taken { budget: self, n }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *lock(&self.budget.used) -= self.n;
        self.budget.freed.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn to_timespec(s: &str) -> Option<rustix::fs::Timespec> {
    let t = format::parse_time(s)?;
    Some(rustix::fs::Timespec {
        tv_sec: t.timestamp(),
        tv_nsec: i64::from(t.timestamp_subsec_nanos()),
    })
}

/// Sets access and modification times without following symlinks and without
/// opening the file (opening a FIFO would block).
pub fn set_times(
    path: &Path,
    atime: rustix::fs::Timespec,
    mtime: rustix::fs::Timespec,
) -> std::io::Result<()> {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: atime,
            last_modification: mtime,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

impl Ctx<'_> {
    fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        lock(&self.warnings).push(msg);
    }

    fn restore_dir(&self, tree: &Id, path: &Path) -> Result<(), RepoError> {
        let tree = self.repo.load_tree_blocking(self.index, tree)?;
        std::fs::create_dir_all(path).map_err(|e| RepoError::io("create directory", path, e))?;
        tree.nodes
            .par_iter()
            .try_for_each(|n| self.restore_node(n, &path.join(&n.name)))?;
        self.dirs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn restore_node(&self, n: &Node, path: &Path) -> Result<(), RepoError> {
        if n.name.is_empty() || n.name.contains('/') || n.name == "." || n.name == ".." {
            return Err(RepoError::Integrity {
                what: format!("node name {:?} under {}", n.name, path.display()),
                reason: "unsafe file name".into(),
            });
        }
        match n.node_type.as_str() {
            "dir" => {
                let sub = n.subtree.ok_or_else(|| RepoError::Integrity {
                    what: format!("directory {}", path.display()),
                    reason: "has no subtree".into(),
                })?;
                self.restore_dir(&sub, path)?;
            }
            "file" => {
                if n.links > 1 {
                    let mut hl = lock(&self.hardlinks);
                    if let Some(first) = hl.get(&(n.device_id, n.inode)) {
                        lock(&self.deferred_links).push((
                            path.to_path_buf(),
                            first.clone(),
                            n.clone(),
                        ));
                        return Ok(());
                    }
                    hl.insert((n.device_id, n.inode), path.to_path_buf());
                }
                // Content comes in the pack pass, metadata after it.
                return self.plan_file(n, path);
            }
            "symlink" => {
                let target: std::ffi::OsString = match &n.linktarget_raw {
                    Some(raw) => {
                        use std::os::unix::ffi::OsStringExt;
                        std::ffi::OsString::from_vec(raw.clone())
                    }
                    None => n.linktarget.clone().into(),
                };
                let _ = std::fs::remove_file(path);
                std::os::unix::fs::symlink(&target, path)
                    .map_err(|e| RepoError::io("create symlink", path, e))?;
            }
            "fifo" => {
                let _ = std::fs::remove_file(path);
                if let Err(e) = rustix::fs::mknodat(
                    rustix::fs::CWD,
                    path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(unix_perm_from_go(n.mode)),
                    0,
                ) {
                    self.warn(format!("create fifo {}: {e}", path.display()));
                    return Ok(());
                }
            }
            "dev" | "chardev" => {
                let ft = if n.node_type == "dev" {
                    rustix::fs::FileType::BlockDevice
                } else {
                    rustix::fs::FileType::CharacterDevice
                };
                let _ = std::fs::remove_file(path);
                if let Err(e) = rustix::fs::mknodat(
                    rustix::fs::CWD,
                    path,
                    ft,
                    rustix::fs::Mode::from_raw_mode(unix_perm_from_go(n.mode)),
                    n.device,
                ) {
                    self.warn(format!("create device {}: {e}", path.display()));
                    return Ok(());
                }
            }
            "socket" => return Ok(()),
            other => {
                self.warn(format!(
                    "skipping {} of unknown type {other:?}",
                    path.display()
                ));
                return Ok(());
            }
        }
        self.apply_metadata(n, path);
        Ok(())
    }

    fn done(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Creates the file at its full size (a hole) and notes where each content blob goes.
    fn plan_file(&self, n: &Node, path: &Path) -> Result<(), RepoError> {
        let content = n.content.as_deref().unwrap_or_default();
        let (zero_a, zero_b) = (
            crate::backup::sparse_zero_id(),
            crate::backup::block_zero_id(),
        );
        let mut places = Vec::with_capacity(content.len());
        let (mut off, mut holes) = (0u64, 0u64);
        for id in content {
            let (_, loc) = self
                .index
                .get(id)
                .ok_or(RepoError::BlobNotFound { id: *id })?;
            if loc.blob_type != BlobType::Data {
                return Err(RepoError::Integrity {
                    what: format!("file {}", path.display()),
                    reason: format!("content blob {id} is not a data blob"),
                });
            }
            let len = u64::from(loc.data_length());
            // The zero blobs of sparse files and block images: nothing to read or write
            // in a freshly sized file.
            if *id == zero_a || *id == zero_b {
                holes += len;
            } else {
                places.push((*id, loc, off));
            }
            off += len;
        }
        let _ = std::fs::remove_file(path);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| RepoError::io("create", path, e))?;
        f.set_len(off)
            .map_err(|e| RepoError::io("set length of", path, e))?;
        drop(f);
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(off, Ordering::Relaxed);
        self.done(holes);
        if places.is_empty() {
            return Ok(());
        }
        let file = lock(&self.file_paths).push(path)?;
        lock(&self.places).extend(places.into_iter().map(|(id, loc, offset)| Place {
            id,
            loc,
            file,
            offset,
        }));
        Ok(())
    }

    /// Reads every noted blob, pack by pack, and writes it where it goes.
    fn write_content(&self) -> Result<(), RepoError> {
        let mut places = std::mem::take(&mut *lock(&self.places));
        let paths = std::mem::take(&mut *lock(&self.file_paths));
        places.par_sort_unstable_by_key(|p| (p.loc.pack, p.loc.offset));
        let mut packs: Vec<&[Place]> = places.chunk_by(|a, b| a.loc.pack == b.loc.pack).collect();
        // Big packs first, so that the pool does not end on one long download.
        packs.sort_by_key(|b| std::cmp::Reverse(b.len()));
        let budget = Budget::new(READ_BUDGET);
        packs.par_iter().try_for_each(|blobs| {
            for run in read_runs(blobs, |p| &p.loc) {
                self.write_run(run, &paths, &budget)?;
            }
            Ok(())
        })
    }

    /// One ranged read of `run` (places of blobs of one pack, by offset), then each blob
    /// decoded once and written to all its places.
    fn write_run(&self, run: &[Place], paths: &Paths, budget: &Budget) -> Result<(), RepoError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let pack_id = self.index.packs[first.loc.pack as usize];
        let start = first.loc.offset;
        let end = last.loc.offset + last.loc.length;
        let _held = budget.take(u64::from(end - start));
        let raw = self.repo.read_pack_range_blocking(
            &pack_id,
            u64::from(start),
            u64::from(end - start),
        )?;
        let mut open: HashMap<u32, std::fs::File> = HashMap::new();
        // Places of one blob are next to each other (same offset): decoded once.
        for places in run.chunk_by(|a, b| a.loc.offset == b.loc.offset) {
            let Place { id, loc, .. } = &places[0];
            let at = (loc.offset - start) as usize;
            let data = self
                .repo
                .decode_blob(id, &pack_id, loc, &raw[at..at + loc.length as usize])
                .map_err(|e| match e {
                    RepoError::Integrity { what, reason } => RepoError::Integrity {
                        what: format!("{what} (restoring {})", paths.get(places[0].file).display()),
                        reason,
                    },
                    other => other,
                })?;
            for u in places {
                let path = paths.get(u.file);
                if open.len() >= OPEN_PER_RUN && !open.contains_key(&u.file) {
                    // A run of small files' blobs touches thousands of files: close them
                    // (they are written in order, rarely again) instead of running out of
                    // file descriptors.
                    open.clear();
                }
                let f = match open.entry(u.file) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(|e| RepoError::io("open", path, e))?,
                    ),
                };
                write_nonzero(f, &data, u.offset).map_err(|e| RepoError::io("write", path, e))?;
                self.done(data.len() as u64);
            }
        }
        Ok(())
    }

    fn apply_metadata(&self, n: &Node, path: &Path) {
        let symlink = n.node_type == "symlink";
        if self.owner
            && let Err(e) = std::os::unix::fs::lchown(path, Some(n.uid), Some(n.gid))
        {
            self.warn(format!("chown {}: {e}", path.display()));
        }
        if !symlink
            && let Err(e) = std::fs::set_permissions(
                path,
                std::fs::Permissions::from_mode(unix_perm_from_go(n.mode)),
            )
        {
            self.warn(format!("chmod {}: {e}", path.display()));
        }
        if let Some(x) = &n.extended_attributes {
            for w in write_xattrs(path, x) {
                self.warn(w);
            }
        }
        let mtime = to_timespec(&n.mtime);
        let atime = to_timespec(&n.atime).or(mtime);
        if let (Some(a), Some(m)) = (atime, mtime)
            && let Err(e) = set_times(path, a, m)
        {
            self.warn(format!("set times of {}: {e}", path.display()));
        }
    }

    /// File and directory metadata go last: writing content changes a file's times, and
    /// making children a directory's. A directory's own metadata follows its children's.
    fn apply_late_metadata(&self, tree: &Id, path: &Path) -> Result<(), RepoError> {
        let tree = self.repo.load_tree_blocking(self.index, tree)?;
        tree.nodes
            .par_iter()
            .filter(|n| n.node_type == "dir" || n.node_type == "file")
            .try_for_each(|n| {
                let p = path.join(&n.name);
                if let Some(sub) = n.subtree.filter(|_| n.node_type == "dir") {
                    self.apply_late_metadata(&sub, &p)?;
                }
                self.apply_metadata(n, &p);
                Ok(())
            })
    }
}

/// Files a worker keeps open while it writes one run's blobs.
const OPEN_PER_RUN: usize = 32;

/// Splits blobs of one pack, sorted by offset, into runs read with one request each:
/// a new run starts where the gap to the previous blob exceeds [`MAX_GAP`] or the run
/// would exceed [`MAX_RANGE`] bytes; entries of the same blob (same offset) stay together.
/// Pure.
fn read_runs<T>(blobs: &[T], loc: impl Fn(&T) -> &BlobLocation) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..blobs.len() {
        let (run_start, prev, cur) = (loc(&blobs[start]), loc(&blobs[i - 1]), loc(&blobs[i]));
        if cur.offset == prev.offset {
            continue;
        }
        let prev_end = prev.offset + prev.length;
        let gap = cur.offset.saturating_sub(prev_end);
        let size = (cur.offset + cur.length).saturating_sub(run_start.offset);
        if gap > MAX_GAP || size > MAX_RANGE || cur.offset < prev_end {
            runs.push(&blobs[start..i]);
            start = i;
        }
    }
    if !blobs.is_empty() {
        runs.push(&blobs[start..]);
    }
    runs
}

/// Writes `data` at `off` into a file that reads as zeros there (freshly sized),
/// skipping all-zero 64 KiB pieces so that they stay holes.
fn write_nonzero(f: &std::fs::File, data: &[u8], off: u64) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    let mut run: Option<usize> = None; // start of a run of non-zero pieces
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + PIECE).min(data.len());
        let zero = is_zero(&data[pos..end]);
        match (zero, run) {
            (false, None) => run = Some(pos),
            (true, Some(r)) => {
                f.write_all_at(&data[r..pos], off + r as u64)?;
                run = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(r) = run {
        f.write_all_at(&data[r..], off + r as u64)?;
    }
    Ok(())
}

/// Sets the node's extended attributes on `path` (not following symlinks).
pub fn write_xattrs(path: &Path, attrs: &[crate::tree::ExtendedAttribute]) -> Vec<String> {
    let mut errs = Vec::new();
    for a in attrs {
        if let Err(e) = rustix::fs::lsetxattr(
            path,
            a.name.as_str(),
            &a.value,
            rustix::fs::XattrFlags::empty(),
        ) {
            errs.push(format!(
                "set extended attribute {} on {}: {e}",
                a.name,
                path.display()
            ));
        }
    }
    errs
}

fn is_zero(d: &[u8]) -> bool {
    let mut chunks = d.chunks_exact(16);
    chunks.all(|c| c == [0u8; 16]) && chunks.remainder().iter().all(|&b| b == 0)
}

/// Restores snapshot `spec` (`latest`, an id or a unique id prefix) into `target`.
pub async fn restore(
    repo: &Repository,
    spec: &str,
    target: &Path,
    opts: RestoreOptions,
) -> Result<RestoreSummary, RepoError> {
    let (_, snap) = repo.find_snapshot(spec).await?;
    let index = repo.load_index().await?;
    let repo = repo.clone();
    let target = target.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .thread_name(|i| format!("holdfast-restore-{i}"))
            .build()
            .map_err(|e| RepoError::Internal(format!("thread pool: {e}")))?;
        let ctx = Ctx {
            repo: &repo,
            index: &index,
            owner: opts.owner,
            progress: opts.progress.clone(),
            files: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            warnings: Mutex::new(Vec::new()),
            hardlinks: Mutex::new(HashMap::new()),
            deferred_links: Mutex::new(Vec::new()),
            file_paths: Mutex::new(Paths::default()),
            places: Mutex::new(Vec::new()),
        };
        pool.install(|| ctx.restore_dir(&snap.tree, &target))?;
        pool.install(|| ctx.write_content())?;
        for (path, first, _node) in std::mem::take(&mut *lock(&ctx.deferred_links)) {
            let _ = std::fs::remove_file(&path);
            std::fs::hard_link(&first, &path).map_err(|e| RepoError::io("hard link", &path, e))?;
        }
        pool.install(|| ctx.apply_late_metadata(&snap.tree, &target))?;
        Ok(RestoreSummary {
            files: ctx.files.load(Ordering::Relaxed),
            dirs: ctx.dirs.load(Ordering::Relaxed),
            bytes: ctx.bytes.load(Ordering::Relaxed),
            warnings: std::mem::take(&mut *lock(&ctx.warnings)),
        })
    })
    .await
    .map_err(|e| RepoError::Internal(e.to_string()))?
}

/// Restores a block-image snapshot (one file node, see
/// [`crate::backup::backup_block`]) onto `target`: a block device is written in place
/// (all-zero pieces are discarded with `fallocate(PUNCH_HOLE)`, which zeroes them,
/// or written as zeros where that is not supported); a regular file (created if
/// missing) is rewritten in place with all-zero pieces left as holes.
pub async fn restore_block(
    repo: &Repository,
    spec: &str,
    target: &Path,
    opts: RestoreOptions,
) -> Result<RestoreSummary, RepoError> {
    let (_, snap) = repo.find_snapshot(spec).await?;
    let index = repo.load_index().await?;
    let tree = repo.load_tree(&index, &snap.tree).await?;
    let node = match tree.nodes.as_slice() {
        [n] if n.node_type == "file" => n.clone(),
        _ => {
            return Err(RepoError::Integrity {
                what: format!("snapshot {spec}"),
                reason: "is not a block image (its root is not exactly one file)".into(),
            });
        }
    };
    let repo = repo.clone();
    let target = target.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileTypeExt;
        let device = std::fs::metadata(&target)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(!device)
            .truncate(false)
            .open(&target)
            .map_err(|e| RepoError::io("open", &target, e))?;
        if device {
            let size = rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0))
                .map_err(|e| RepoError::io("size of", &target, e.into()))?;
            if size < node.size {
                return Err(RepoError::io(
                    "restore onto",
                    &target,
                    std::io::Error::other(format!(
                        "device has {size} bytes, the image {}",
                        node.size
                    )),
                ));
            }
        } else {
            // Same inode, all zeros (holes), then the data.
            f.set_len(0)
                .and_then(|()| f.set_len(node.size))
                .map_err(|e| RepoError::io("set length of", &target, e))?;
        }
        let content = node.content.clone().unwrap_or_default();
        let mut offsets = Vec::with_capacity(content.len());
        let mut off = 0u64;
        let mut zero_ids: HashMap<u32, Id> = HashMap::new();
        let mut zero = Vec::with_capacity(content.len());
        for id in &content {
            let (_, loc) = index.get(id).ok_or(RepoError::BlobNotFound { id: *id })?;
            let len = loc.data_length();
            let zid = *zero_ids
                .entry(len)
                .or_insert_with(|| Id::hash(&vec![0u8; len as usize]));
            zero.push(zid == *id);
            offsets.push((off, len));
            off += u64::from(len);
        }
        if off != node.size {
            return Err(RepoError::Integrity {
                what: format!("image {:?}", node.name),
                reason: format!("content is {off} bytes, the node says {}", node.size),
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.max(1))
            .thread_name(|i| format!("holdfast-restore-{i}"))
            .build()
            .map_err(|e| RepoError::Internal(format!("thread pool: {e}")))?;
        pool.install(|| {
            content
                .par_iter()
                .zip(offsets.par_iter())
                .zip(zero.par_iter())
                .try_for_each(|((id, &(o, len)), &is_zero_blob)| {
                    if let Some(p) = &opts.progress {
                        p.fetch_add(u64::from(len), Ordering::Relaxed);
                    }
                    if is_zero_blob {
                        if device {
                            zero_range(&f, o, u64::from(len))
                                .map_err(|e| RepoError::io("zero", &target, e))?;
                        }
                        return Ok(());
                    }
                    let data = repo.read_blob_blocking(&index, id)?;
                    if device {
                        f.write_all_at(&data, o)
                    } else {
                        write_nonzero(&f, &data, o)
                    }
                    .map_err(|e| RepoError::io("write", &target, e))?;
                    Ok::<_, RepoError>(())
                })
        })?;
        f.sync_all()
            .map_err(|e| RepoError::io("sync", &target, e))?;
        Ok(RestoreSummary {
            files: 1,
            dirs: 0,
            bytes: node.size,
            warnings: Vec::new(),
        })
    })
    .await
    .map_err(|e| RepoError::Internal(e.to_string()))?
}

/// Makes `[off, off+len)` read as zeros: discard (PUNCH_HOLE) where supported,
/// otherwise write zeros.
fn zero_range(f: &std::fs::File, off: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    if rustix::fs::fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    )
    .is_ok()
    {
        return Ok(());
    }
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(offset: u32, length: u32) -> (BlobLocation, Id) {
        (
            BlobLocation {
                pack: 0,
                blob_type: BlobType::Data,
                offset,
                length,
                uncompressed_length: None,
            },
            Id::hash(&offset.to_le_bytes()),
        )
    }

    fn spans(runs: &[&[(BlobLocation, Id)]]) -> Vec<(u32, u32)> {
        runs.iter()
            .map(|r| {
                (
                    r[0].0.offset,
                    r[r.len() - 1].0.offset + r[r.len() - 1].0.length,
                )
            })
            .collect()
    }

    #[test]
    fn nearby_blobs_are_read_together() {
        // Adjacent, then a small gap (a blob not needed), then a gap over MAX_GAP.
        let b = [
            blob(0, 1000),
            blob(1000, 500),
            blob(1500 + 4096, 100),
            blob(1500 + 4096 + 100 + MAX_GAP + 1, 10),
        ];
        assert_eq!(
            spans(&read_runs(&b, |b| &b.0)),
            [(0, 5696), (5696 + MAX_GAP + 1, 5696 + MAX_GAP + 11)]
        );
    }

    #[test]
    fn budget_bounds_bytes_held_at_once() {
        let budget = Arc::new(Budget::new(100));
        let peak = Arc::new(AtomicU64::new(0));
        let now = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (budget, peak, now) = (budget.clone(), peak.clone(), now.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let n = 30 + (i % 3) * 10;
                        let _t = budget.take(n);
                        let cur = now.fetch_add(n, Ordering::SeqCst) + n;
                        peak.fetch_max(cur, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(n, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        assert!(
            peak.load(Ordering::SeqCst) <= 100,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        // Larger than the whole budget: proceeds alone rather than waiting forever.
        drop(budget.take(1000));
    }

    #[test]
    fn runs_stay_within_max_range() {
        let piece = 6 << 20;
        let b = [blob(0, piece), blob(piece, piece), blob(2 * piece, piece)];
        let runs = read_runs(&b, |b| &b.0);
        assert_eq!(spans(&runs), [(0, 2 * piece), (2 * piece, 3 * piece)]);
        assert!(runs.iter().all(|r| {
            let (s, e) = (
                r[0].0.offset,
                r[r.len() - 1].0.offset + r[r.len() - 1].0.length,
            );
            e - s <= MAX_RANGE
        }));
        assert!(read_runs::<(BlobLocation, Id)>(&[], |b| &b.0).is_empty());
        assert_eq!(read_runs(&b[..1], |b| &b.0).len(), 1);
    }
}
