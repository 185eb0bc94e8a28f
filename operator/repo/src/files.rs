//! Snapshots of a few files held in memory (the operator's catalog of backups: each
//! backup's object archive and metadata): written as one restic snapshot whose root tree
//! holds the files, chunked, deduplicated against the repository, compressed and encrypted
//! like any other data, so the stock `restic` CLI lists, checks and restores them too.

use std::collections::HashSet;

use bytes::Bytes;

use crate::format::{self, BlobType, FileType, IndexBlob, IndexJson, IndexPack, PackedBlob};
use crate::repo::{Index, hostname, username};
use crate::tree::{Node, Snapshot, Tree};
use crate::{Id, RepoError, Repository, backup};

/// Permission bits of the files (Go's `os.FileMode`, a regular file, rw-r--r--).
const FILE_MODE: u32 = 0o644;

/// One file of such a snapshot: new bytes, or a file of an earlier snapshot kept as it is
/// (its node reused: nothing read, nothing stored again).
#[derive(Debug, Clone)]
pub enum Entry {
    New { name: String, data: Vec<u8> },
    Kept(Box<Node>),
}

/// What describes the snapshot (restic's own fields).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    /// The hostname recorded; the machine's when empty.
    pub hostname: String,
}

/// Data and tree blobs waiting for one pack each.
#[derive(Default)]
struct Pending {
    packs: [(Vec<u8>, Vec<PackedBlob>); 2],
    seen: HashSet<Id>,
}

impl Pending {
    /// Adds a blob unless the index or this snapshot already has it.
    fn add(
        &mut self,
        repo: &Repository,
        index: &Index,
        t: BlobType,
        plain: &[u8],
    ) -> Result<Id, RepoError> {
        let id = Id::hash(plain);
        if index.get(&id).is_some() || !self.seen.insert(id) {
            return Ok(id);
        }
        let compressed = zstd::bulk::compress(plain, 3).ok();
        let (body, uncompressed_length) = match compressed {
            Some(c) if c.len() < plain.len() => (c, Some(plain.len() as u32)),
            _ => (plain.to_vec(), None),
        };
        let enc = repo.key().encrypt(&body)?;
        let (bytes, blobs) = &mut self.packs[usize::from(t == BlobType::Tree)];
        blobs.push(PackedBlob {
            id,
            blob_type: t,
            offset: bytes.len() as u32,
            length: enc.len() as u32,
            uncompressed_length,
        });
        bytes.extend_from_slice(&enc);
        Ok(id)
    }

    /// Uploads the packs and one index file naming them.
    async fn store(self, repo: &Repository) -> Result<(), RepoError> {
        let mut index = IndexJson::default();
        for (mut bytes, blobs) in self.packs {
            if blobs.is_empty() {
                continue;
            }
            let header = repo.key().encrypt(&format::pack_header(&blobs))?;
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
            let id = Id::hash(&bytes);
            repo.store()
                .put(&FileType::Pack.key(&id), Bytes::from(bytes))
                .await?;
            index.packs.push(IndexPack {
                id,
                blobs: blobs.iter().map(IndexBlob::from).collect(),
            });
        }
        if !index.packs.is_empty() {
            repo.save_json(FileType::Index, &index).await?;
        }
        Ok(())
    }
}

/// Stores `entries` as the root tree of a new snapshot (under a shared lock); returns it.
/// Names must be unique; the files appear sorted by name, as restic keeps trees.
pub async fn save(
    repo: &Repository,
    entries: Vec<Entry>,
    opts: Options,
) -> Result<(Id, Snapshot), RepoError> {
    let lock = repo.lock(false).await?;
    let result = save_locked(repo, entries, opts).await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

async fn save_locked(
    repo: &Repository,
    entries: Vec<Entry>,
    opts: Options,
) -> Result<(Id, Snapshot), RepoError> {
    let index = repo.load_index().await?;
    let now = format::format_time(&chrono::Utc::now().fixed_offset());
    let mut pending = Pending::default();
    let mut nodes = Vec::with_capacity(entries.len());
    for e in entries {
        let node = match e {
            Entry::Kept(n) => {
                let n = *n;
                for id in n.content.iter().flatten() {
                    if index.get(id).is_none() {
                        return Err(RepoError::BlobNotFound { id: *id });
                    }
                }
                n
            }
            Entry::New { name, data } => {
                let mut content = Vec::new();
                for c in fastcdc::v2020::FastCDC::new(
                    &data,
                    backup::CHUNK_MIN,
                    backup::CHUNK_AVG,
                    backup::CHUNK_MAX,
                ) {
                    let chunk = &data[c.offset..c.offset + c.length];
                    content.push(pending.add(repo, &index, BlobType::Data, chunk)?);
                }
                Node {
                    name,
                    node_type: "file".into(),
                    mode: FILE_MODE,
                    mtime: now.clone(),
                    atime: now.clone(),
                    ctime: now.clone(),
                    size: data.len() as u64,
                    links: 1,
                    content: Some(content),
                    ..Default::default()
                }
            }
        };
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(RepoError::Internal(format!(
            "two files named {} in one snapshot",
            w[0].name
        )));
    }
    let tree = Tree { nodes }
        .to_blob()
        .map_err(|source| format::FormatError::Json {
            what: "tree".into(),
            source,
        })?;
    let tree_id = pending.add(repo, &index, BlobType::Tree, &tree)?;
    pending.store(repo).await?;
    let snapshot = Snapshot {
        time: now,
        tree: tree_id,
        paths: opts.paths,
        hostname: if opts.hostname.is_empty() {
            hostname()
        } else {
            opts.hostname
        },
        username: username(),
        tags: opts.tags,
        program_version: Some(format!("holdfast {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    let id = repo.save_json(FileType::Snapshot, &snapshot).await?;
    Ok((id, snapshot))
}

/// The files of a snapshot's root tree (nodes only; see [`read`]).
pub async fn list(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
) -> Result<Vec<Node>, RepoError> {
    Ok(repo.load_tree(index, &snapshot.tree).await?.nodes)
}

/// The content of a file of [`list`], every blob verified (MAC and SHA-256) and the size
/// checked.
pub async fn read(repo: &Repository, index: &Index, node: &Node) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::with_capacity(node.size as usize);
    for id in node.content.iter().flatten() {
        out.extend_from_slice(&repo.read_blob(index, id).await?);
    }
    if out.len() as u64 != node.size {
        return Err(RepoError::Integrity {
            what: format!("file {}", node.name),
            reason: format!("{} bytes read, its node says {}", out.len(), node.size),
        });
    }
    Ok(out)
}

/// Deletes snapshot files under a shared lock (a prune, which locks exclusively, never
/// runs meanwhile); their data goes with the next prune.
pub async fn remove(repo: &Repository, ids: &[Id]) -> Result<(), RepoError> {
    let lock = repo.lock(false).await?;
    let mut result = Ok(());
    for id in ids {
        result = repo.store().delete(&FileType::Snapshot.key(id)).await;
        if result.is_err() {
            break;
        }
    }
    let released = lock.release().await;
    result?;
    released
}
