//! Two-phase prune: packs that no snapshot needs are first *marked* (with the time)
//! and only deleted or repacked by a later prune run once the mark is older than a
//! grace period **and** they are still unneeded by every snapshot existing then.
//!
//! Why two phases when prune also takes restic's exclusive lock: a lock can go stale
//! while its writer still runs (a paused pod, a partition longer than 30 minutes),
//! and restic's rule then lets prune proceed. Our backups never deduplicate against
//! blobs in marked packs (they store such blobs again), so a backup that started
//! after a mark never references a marked pack, and one that started before it must
//! have finished (and its snapshot protects what it uses) within the grace period.
//!
//! The mark is an encrypted JSON document at [`MARK_KEY`], outside the directories
//! restic reads (restic ignores it; `restic check` stays clean).
//!
//! Order of the sweep, each step safe to interrupt: (1) upload repacked packs,
//! (2) write new index files covering every kept pack and the repacked ones,
//! (3) delete the index files read at the start, (4) delete the swept packs,
//! (5) rewrite the mark. An interruption leaves at worst packs listed in two index
//! files (restic: a hint, not an error) or packs in no index (swept by the next run).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::format::{self, BlobType, FileType, IndexBlob, IndexJson, IndexPack, PackedBlob};
use crate::repo::{BlobLocation, Index, Repository};
use crate::tree::Snapshot;
use crate::{Id, RepoError};

/// Where the prune mark lives, relative to the repository root.
pub const MARK_KEY: &str = "holdfast/prune-mark";

/// The prune mark: packs that were unneeded (or chosen for repacking) and since when.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneMark {
    pub version: u32,
    /// Pack id (hex) → RFC 3339 time it was first marked.
    pub packs: BTreeMap<String, String>,
}

impl PruneMark {
    /// Marked pack ids.
    pub fn pack_ids(&self) -> HashSet<Id> {
        self.packs.keys().filter_map(|k| Id::parse(k)).collect()
    }
}

/// Loads the prune mark; `None` when there is none.
pub async fn load_mark(repo: &Repository) -> Result<Option<PruneMark>, RepoError> {
    repo.load_extra_json(MARK_KEY).await
}

/// Blobs that a backup must not deduplicate against: every blob whose indexed
/// location is a marked pack. Errors reading the mark are logged and ignored (the
/// exclusive lock of prune still protects the backup).
pub async fn blobs_in_marked_packs(repo: &Repository, index: &Index) -> HashSet<Id> {
    let marked = match load_mark(repo).await {
        Ok(Some(m)) => m.pack_ids(),
        Ok(None) => return HashSet::new(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the prune mark failed; deduplicating against all packs");
            return HashSet::new();
        }
    };
    if marked.is_empty() {
        return HashSet::new();
    }
    index
        .blobs
        .iter()
        .filter(|(_, loc)| marked.contains(&index.packs[loc.pack as usize]))
        .map(|(id, _)| *id)
        .collect()
}

/// Options of [`prune`].
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How long a pack stays marked before it may be deleted; longer than any backup.
    pub grace: Duration,
    /// Unused bytes tolerated in partly used packs, in percent of the used bytes'
    /// share of the repository (restic's `--max-unused`, default 5%). Partly used packs
    /// with the most unused space are repacked until the rest is within the limit.
    pub max_unused_percent: f64,
    /// Target size of repacked packs.
    pub pack_size: usize,
    /// Decide and report, change nothing.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: Duration::from_secs(24 * 3600),
            max_unused_percent: 5.0,
            pack_size: 16 * 1024 * 1024,
            dry_run: false,
        }
    }
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default)]
pub struct PruneSummary {
    pub snapshots: usize,
    pub packs_total: usize,
    /// Packs marked for the first time by this run.
    pub packs_newly_marked: usize,
    /// Marked packs whose grace period has not passed yet.
    pub packs_waiting: usize,
    /// Packs deleted without copying anything (unused, or not in any index).
    pub packs_deleted: usize,
    /// Partly used packs whose used blobs were copied before deletion.
    pub packs_repacked: usize,
    pub blobs_repacked: usize,
    pub bytes_repacked: u64,
    /// Packs written by repacking.
    pub packs_written: usize,
    /// Bytes of deleted packs.
    pub bytes_freed: u64,
    pub index_files_removed: usize,
    pub index_files_written: usize,
    /// Unused bytes left in kept packs.
    pub bytes_unused_remaining: u64,
}

impl PruneSummary {
    /// True when there was nothing to mark or delete.
    pub fn nothing_to_do(&self) -> bool {
        self.packs_newly_marked == 0
            && self.packs_waiting == 0
            && self.packs_deleted == 0
            && self.packs_repacked == 0
            && self.index_files_removed == 0
    }
}

/// Parses a duration such as `24h`, `30m`, `1d2h`, `90s` or `0`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total = total.checked_add(n.checked_mul(match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        })?)?;
        any = true;
    }
    (any && num.is_empty()).then(|| Duration::from_secs(total))
}

/// Every blob referenced by a snapshot (trees and file contents). Fails when a tree
/// cannot be loaded: pruning with an incomplete picture would delete needed data.
async fn used_blobs(
    repo: &Repository,
    index: &Arc<Index>,
    snapshots: &[(Id, Snapshot)],
) -> Result<HashSet<Id>, RepoError> {
    let mut used: HashSet<Id> = HashSet::new();
    let mut queue: Vec<Id> = snapshots.iter().map(|(_, s)| s.tree).collect();
    let mut set = tokio::task::JoinSet::new();
    loop {
        while set.len() < 16 {
            let Some(t) = queue.pop() else { break };
            if !used.insert(t) {
                continue;
            }
            let repo = repo.clone();
            let index = index.clone();
            set.spawn(async move { (t, repo.load_tree(&index, &t).await) });
        }
        match set.join_next().await {
            Some(r) => {
                let (t, tree) = r.map_err(|e| RepoError::Internal(e.to_string()))?;
                let tree = tree.map_err(|e| RepoError::Integrity {
                    what: format!("tree {t}"),
                    reason: format!("cannot be read ({e}); refusing to prune"),
                })?;
                for n in &tree.nodes {
                    if let Some(c) = &n.content {
                        used.extend(c.iter().copied());
                    }
                    if let Some(s) = n.subtree
                        && !used.contains(&s)
                    {
                        queue.push(s);
                    }
                }
            }
            None => break,
        }
    }
    Ok(used)
}

struct PackInfo {
    blobs: Vec<PackedBlob>,
    size: u64,
    used_bytes: u64,
    unused_bytes: u64,
}

/// Prunes the repository (see the module documentation) under restic's exclusive lock.
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneSummary, RepoError> {
    let guard = repo.lock(true).await?;
    let r = prune_locked(repo, opts).await;
    let released = guard.release().await;
    let s = r?;
    released?;
    Ok(s)
}

async fn prune_locked(repo: &Repository, opts: &PruneOptions) -> Result<PruneSummary, RepoError> {
    let mut sum = PruneSummary::default();
    let now = chrono::Utc::now();
    let index_files = repo.load_index_files().await?;
    let index = Arc::new(repo.load_index().await?);
    let snapshots = repo.snapshots().await?;
    sum.snapshots = snapshots.len();
    let stored: HashMap<Id, u64> = repo.list(FileType::Pack).await?.into_iter().collect();
    sum.packs_total = stored.len();

    // Every blob must be reachable: a missing tree or data blob means the repository
    // is damaged, and prune would make it worse.
    let used = used_blobs(repo, &index, &snapshots).await?;
    if let Some(b) = used.iter().find(|b| index.get(b).is_none()) {
        return Err(RepoError::Integrity {
            what: format!("blob {b}"),
            reason: "referenced by a snapshot but not in the index; run check, refusing to prune"
                .into(),
        });
    }

    // Pack contents from the index files.
    let mut packs: HashMap<Id, PackInfo> = HashMap::new();
    let mut dropped_missing = 0usize;
    for (_, j) in &index_files {
        for p in &j.packs {
            let Some(&size) = stored.get(&p.id) else {
                dropped_missing += 1;
                continue;
            };
            let e = packs.entry(p.id).or_insert_with(|| PackInfo {
                blobs: Vec::new(),
                size,
                used_bytes: 0,
                unused_bytes: 0,
            });
            for b in &p.blobs {
                let pb = b.packed();
                if !e.blobs.iter().any(|x| x.offset == pb.offset) {
                    e.blobs.push(pb);
                }
            }
        }
    }
    let old_mark = match load_mark(repo).await {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "prune mark unreadable; starting a new one");
            PruneMark::default()
        }
    };
    let old_marked = old_mark.pack_ids();
    // A used blob stored in several packs (concurrent or interrupted writers, or a
    // backup that stored a marked blob again) counts as used in one pack only: an
    // unmarked one if possible, else the lowest pack id.
    let mut keeper: HashMap<Id, Id> = HashMap::new();
    let mut pack_ids: Vec<Id> = packs.keys().copied().collect();
    pack_ids.sort_by_key(|id| (old_marked.contains(id), *id));
    for pid in &pack_ids {
        for b in &packs[pid].blobs {
            if used.contains(&b.id) {
                keeper.entry(b.id).or_insert(*pid);
            }
        }
    }
    for (pid, p) in packs.iter_mut() {
        p.blobs.sort_by_key(|b| b.offset);
        for b in &p.blobs {
            if keeper.get(&b.id) == Some(pid) {
                p.used_bytes += u64::from(b.length);
            } else {
                p.unused_bytes += u64::from(b.length);
            }
        }
    }
    // A used blob whose only copies are in packs missing from the store: damaged.
    let available: HashSet<Id> = packs
        .values()
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect();
    if let Some(b) = used.iter().find(|b| !available.contains(b)) {
        return Err(RepoError::Integrity {
            what: format!("blob {b}"),
            reason: "its pack is missing from the repository; run check, refusing to prune".into(),
        });
    }

    // Candidates: packs in no index, unused packs, and partly used packs chosen by the
    // max-unused rule.
    let mut candidates: HashSet<Id> = stored
        .keys()
        .filter(|id| !packs.contains_key(id))
        .copied()
        .collect();
    let mut partly: Vec<(Id, u64, u64)> = Vec::new();
    let (mut used_total, mut unused_total) = (0u64, 0u64);
    for (id, p) in &packs {
        if p.used_bytes == 0 {
            candidates.insert(*id);
        } else {
            used_total += p.used_bytes;
            if p.unused_bytes > 0 {
                unused_total += p.unused_bytes;
                partly.push((*id, p.used_bytes, p.unused_bytes));
            }
        }
    }
    let pct = opts.max_unused_percent.clamp(0.0, 99.0);
    let limit = (used_total as f64 * pct / (100.0 - pct)) as u64;
    // Most unused share first.
    partly.sort_by(|a, b| {
        let ra = a.2 as f64 / (a.1 + a.2) as f64;
        let rb = b.2 as f64 / (b.1 + b.2) as f64;
        rb.total_cmp(&ra).then(a.0.cmp(&b.0))
    });
    for (id, _, unused) in &partly {
        if unused_total <= limit {
            break;
        }
        candidates.insert(*id);
        unused_total -= unused;
    }
    sum.bytes_unused_remaining = unused_total;

    // Merge with the existing mark; pick the packs whose grace period has passed.
    let mut mark = PruneMark {
        version: 1,
        packs: BTreeMap::new(),
    };
    let mut due: Vec<Id> = Vec::new();
    let grace = chrono::Duration::from_std(opts.grace)
        .map_err(|e| RepoError::Internal(format!("grace period: {e}")))?;
    let mut cands: Vec<Id> = candidates.into_iter().collect();
    cands.sort();
    for id in cands {
        let hex = id.to_hex();
        let since = match old_mark.packs.get(&hex) {
            Some(t) => t.clone(),
            None => {
                sum.packs_newly_marked += 1;
                format::format_time(&now.fixed_offset())
            }
        };
        let marked_at = format::parse_time(&since).map(|t| t.with_timezone(&chrono::Utc));
        if marked_at.is_some_and(|t| now.signed_duration_since(t) >= grace) {
            due.push(id);
        } else {
            sum.packs_waiting += 1;
        }
        mark.packs.insert(hex, since);
    }
    if opts.dry_run {
        for id in &due {
            match packs.get(id) {
                Some(p) if p.used_bytes > 0 => sum.packs_repacked += 1,
                _ => sum.packs_deleted += 1,
            }
        }
        return Ok(sum);
    }
    if mark != old_mark {
        repo.save_extra_json(MARK_KEY, &mark).await?;
    }
    if due.is_empty() && dropped_missing == 0 {
        return Ok(sum);
    }

    // (1) Repack used blobs of due packs that no kept pack holds.
    let due_set: HashSet<Id> = due.iter().copied().collect();
    let mut kept_blobs: HashSet<Id> = packs
        .iter()
        .filter(|(id, _)| !due_set.contains(id))
        .flat_map(|(_, p)| p.blobs.iter().map(|b| b.id))
        .collect();
    let mut new_packs: Vec<IndexPack> = Vec::new();
    let mut writer = PackWriter::new(opts.pack_size);
    for id in &due {
        let Some(p) = packs.get(id) else {
            // Not in any index.
            sum.packs_deleted += 1;
            sum.bytes_freed += stored.get(id).copied().unwrap_or(0);
            continue;
        };
        sum.bytes_freed += p.size;
        let needed: Vec<&PackedBlob> = p
            .blobs
            .iter()
            .filter(|b| used.contains(&b.id) && !kept_blobs.contains(&b.id))
            .collect();
        if p.used_bytes == 0 || needed.is_empty() {
            sum.packs_deleted += 1;
            continue;
        }
        sum.packs_repacked += 1;
        let data = repo.store().get(&FileType::Pack.key(id)).await?;
        for b in needed {
            let raw = data
                .get(b.offset as usize..(b.offset as usize + b.length as usize))
                .ok_or_else(|| RepoError::Integrity {
                    what: format!("pack {id}"),
                    reason: format!("blob {} lies beyond the end of the pack", b.id),
                })?;
            // Verify before copying: never spread damaged data.
            let loc = BlobLocation {
                pack: 0,
                blob_type: b.blob_type,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            };
            repo.decode_blob(&b.id, id, &loc, raw)?;
            kept_blobs.insert(b.id);
            sum.blobs_repacked += 1;
            sum.bytes_repacked += u64::from(b.length);
            if let Some(done) = writer.add(repo, b, raw)? {
                new_packs.push(upload(repo, done).await?);
            }
        }
    }
    for done in writer.finish(repo)? {
        new_packs.push(upload(repo, done).await?);
    }
    sum.packs_written = new_packs.len();

    // (2) New index files: every kept pack (as the index files list it) plus new ones.
    let mut all: Vec<IndexPack> = Vec::new();
    let mut seen: HashSet<Id> = HashSet::new();
    for (_, j) in &index_files {
        for p in &j.packs {
            if due_set.contains(&p.id) || !packs.contains_key(&p.id) || !seen.insert(p.id) {
                continue;
            }
            let info = &packs[&p.id];
            all.push(IndexPack {
                id: p.id,
                blobs: info.blobs.iter().map(IndexBlob::from).collect(),
            });
        }
    }
    all.extend(new_packs);
    let mut batch = IndexJson::default();
    let mut blobs_in_batch = 0usize;
    for p in all {
        blobs_in_batch += p.blobs.len();
        batch.packs.push(p);
        if blobs_in_batch >= 50_000 {
            repo.save_json(FileType::Index, &std::mem::take(&mut batch))
                .await?;
            sum.index_files_written += 1;
            blobs_in_batch = 0;
        }
    }
    if !batch.packs.is_empty() {
        repo.save_json(FileType::Index, &batch).await?;
        sum.index_files_written += 1;
    }
    // (3) Old index files.
    for (id, _) in &index_files {
        repo.store().delete(&FileType::Index.key(id)).await?;
        sum.index_files_removed += 1;
    }
    // (4) Swept packs.
    for id in &due {
        repo.store().delete(&FileType::Pack.key(id)).await?;
    }
    // (5) The mark without the swept packs.
    for id in &due {
        mark.packs.remove(&id.to_hex());
    }
    repo.save_extra_json(MARK_KEY, &mark).await?;
    Ok(sum)
}

struct DonePack {
    data: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

/// Collects encrypted blobs into packs (data and tree blobs in separate packs).
struct PackWriter {
    target: usize,
    open: HashMap<bool, DonePack>,
}

impl PackWriter {
    fn new(target: usize) -> PackWriter {
        PackWriter {
            target: target.max(1),
            open: HashMap::new(),
        }
    }

    fn add(
        &mut self,
        repo: &Repository,
        b: &PackedBlob,
        raw: &[u8],
    ) -> Result<Option<DonePack>, RepoError> {
        let tree = b.blob_type == BlobType::Tree;
        let p = self.open.entry(tree).or_insert_with(|| DonePack {
            data: Vec::new(),
            blobs: Vec::new(),
        });
        let offset = u32::try_from(p.data.len())
            .map_err(|_| RepoError::Internal("pack too large".into()))?;
        p.data.extend_from_slice(raw);
        p.blobs.push(PackedBlob { offset, ..*b });
        if p.data.len() >= self.target {
            let done = self.open.remove(&tree);
            return done.map(|d| seal(repo, d)).transpose();
        }
        Ok(None)
    }

    fn finish(mut self, repo: &Repository) -> Result<Vec<DonePack>, RepoError> {
        let mut out = Vec::new();
        for (_, p) in self.open.drain() {
            if !p.blobs.is_empty() {
                out.push(seal(repo, p)?);
            }
        }
        Ok(out)
    }
}

fn seal(repo: &Repository, mut p: DonePack) -> Result<DonePack, RepoError> {
    let header = repo.key().encrypt(&format::pack_header(&p.blobs))?;
    p.data.extend_from_slice(&header);
    p.data
        .extend_from_slice(&(header.len() as u32).to_le_bytes());
    Ok(p)
}

async fn upload(repo: &Repository, p: DonePack) -> Result<IndexPack, RepoError> {
    let id = Id::hash(&p.data);
    repo.store()
        .put(&FileType::Pack.key(&id), Bytes::from(p.data))
        .await?;
    Ok(IndexPack {
        id,
        blobs: p.blobs.iter().map(IndexBlob::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1d2h3m4s"), Some(Duration::from_secs(93784)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
