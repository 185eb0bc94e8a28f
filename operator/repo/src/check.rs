//! Repository check: index ↔ pack consistency (sizes), snapshots and trees
//! (every referenced blob indexed), and optionally every pack's data.

use std::collections::{HashMap, HashSet};

use crate::format::{self, BlobType, FileType};
use crate::repo::Repository;
use crate::tree::Snapshot;
use crate::{Id, RepoError};

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Download and verify every pack.
    pub read_data: bool,
    /// Download and verify a share of the packs (ignored with `read_data`).
    pub read_subset: Option<Subset>,
}

/// A share of the packs to read: those whose id, mixed with `seed`, falls into the first
/// `percent` of a hundred buckets. Another seed picks other packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subset {
    pub percent: u8,
    pub seed: u64,
}

impl Subset {
    /// Whether pack `id` is in the subset. Pure.
    pub fn contains(&self, id: &Id) -> bool {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id.0[..8]);
        let mixed = (u64::from_le_bytes(b) ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 32) % 100 < u64::from(self.percent)
    }
}

/// Findings of a check.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems that mean data is missing or damaged.
    pub errors: Vec<String>,
    /// Harmless findings (for example packs not in any index after an interrupted backup).
    pub warnings: Vec<String>,
    pub packs: usize,
    pub blobs: usize,
    pub snapshots: usize,
    pub trees: usize,
    /// Packs downloaded and verified.
    pub packs_read: usize,
}

impl CheckReport {
    /// True when no error was found.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the repository.
pub async fn check(repo: &Repository, opts: CheckOptions) -> Result<CheckReport, RepoError> {
    let mut rep = CheckReport::default();
    let index = repo.load_index().await?;
    rep.blobs = index.blobs.len();
    // Pack contents from the index files themselves: a blob may be stored in several
    // packs (concurrent writers), and the in-memory index keeps only one location.
    let mut by_pack: HashMap<Id, Vec<format::PackedBlob>> = HashMap::new();
    for file in &index.files {
        let j: format::IndexJson = repo.load_json(FileType::Index, file).await?;
        for p in j.packs {
            let entry = by_pack.entry(p.id).or_default();
            for b in &p.blobs {
                let pb = b.packed();
                if !entry.iter().any(|e| e.offset == pb.offset) {
                    entry.push(pb);
                }
            }
        }
    }
    for v in by_pack.values_mut() {
        v.sort_by_key(|b| b.offset);
    }
    rep.packs = by_pack.len();
    let stored: HashMap<Id, u64> = repo.list(FileType::Pack).await?.into_iter().collect();
    for (pack, blobs) in &by_pack {
        let want =
            blobs.iter().map(|b| u64::from(b.length)).sum::<u64>() + format::header_size(blobs);
        match stored.get(pack) {
            None => rep.errors.push(format!(
                "pack {pack} is in the index but missing from the repository"
            )),
            Some(&n) if n != want => rep.errors.push(format!(
                "pack {pack}: size {n} does not match the index ({want})"
            )),
            Some(_) => {}
        }
    }
    for pack in stored.keys() {
        if !by_pack.contains_key(pack) {
            rep.warnings.push(format!(
                "pack {pack} is not referenced by any index (left by an interrupted backup?)"
            ));
        }
    }

    // Snapshots and trees.
    let mut seen: HashSet<Id> = HashSet::new();
    let mut queue: Vec<(Id, String)> = Vec::new();
    for (id, _) in repo.list(FileType::Snapshot).await? {
        match repo.load_json::<Snapshot>(FileType::Snapshot, &id).await {
            Ok(s) => {
                rep.snapshots += 1;
                queue.push((s.tree, format!("snapshot {}", id.short())));
            }
            Err(e) => rep.errors.push(format!("snapshot {id}: {e}")),
        }
    }
    while let Some((tid, from)) = queue.pop() {
        if !seen.insert(tid) {
            continue;
        }
        match index.get(&tid) {
            Some((_, loc)) if loc.blob_type == BlobType::Tree => {}
            Some(_) => {
                rep.errors.push(format!(
                    "tree {tid} (from {from}) is indexed as a data blob"
                ));
                continue;
            }
            None => {
                rep.errors
                    .push(format!("tree {tid} (from {from}) is not in the index"));
                continue;
            }
        }
        let tree = match repo.load_tree(&index, &tid).await {
            Ok(t) => t,
            Err(e) => {
                rep.errors.push(format!("tree {tid} (from {from}): {e}"));
                continue;
            }
        };
        rep.trees += 1;
        for n in &tree.nodes {
            match n.node_type.as_str() {
                "file" => match &n.content {
                    None => rep
                        .errors
                        .push(format!("tree {tid}: file {:?} has no content list", n.name)),
                    Some(c) => {
                        for b in c {
                            match index.get(b) {
                                Some((_, loc)) if loc.blob_type == BlobType::Data => {}
                                _ => rep.errors.push(format!(
                                    "tree {tid}: file {:?} references data blob {b} which is not in the index",
                                    n.name
                                )),
                            }
                        }
                    }
                },
                "dir" => match n.subtree {
                    Some(s) => {
                        queue.push((s, format!("directory {:?} in tree {}", n.name, tid.short())))
                    }
                    None => rep
                        .errors
                        .push(format!("tree {tid}: directory {:?} has no subtree", n.name)),
                },
                _ => {}
            }
        }
    }

    if opts.read_data || opts.read_subset.is_some() {
        let mut set = tokio::task::JoinSet::new();
        let mut packs: Vec<_> = by_pack
            .into_iter()
            .filter(|(id, _)| opts.read_data || opts.read_subset.is_some_and(|s| s.contains(id)))
            .collect();
        rep.packs_read = packs.len();
        packs.sort_by_key(|(id, _)| *id);
        let mut iter = packs.into_iter();
        loop {
            while set.len() < 4 {
                let Some((pack, blobs)) = iter.next() else {
                    break;
                };
                let repo = repo.clone();
                set.spawn(async move { verify_pack(&repo, pack, blobs).await });
            }
            match set.join_next().await {
                Some(r) => {
                    let errs = r.map_err(|e| RepoError::Internal(e.to_string()))?;
                    rep.errors.extend(errs);
                }
                None => break,
            }
        }
    }
    Ok(rep)
}

async fn verify_pack(repo: &Repository, pack: Id, indexed: Vec<format::PackedBlob>) -> Vec<String> {
    let data = match repo.store().get(&FileType::Pack.key(&pack)).await {
        Ok(d) => d,
        Err(e) => return vec![format!("pack {pack}: {e}")],
    };
    let repo = repo.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut errs = Vec::new();
        if Id::hash(&data) != pack {
            errs.push(format!(
                "pack {pack}: content does not match its name (SHA-256): the file is damaged"
            ));
        }
        let header = match format::parse_pack(&data, repo.key(), &format!("pack {pack}")) {
            Ok(h) => h,
            Err(e) => {
                errs.push(format!("pack {pack}: {e}"));
                return errs;
            }
        };
        let mut h_sorted = header.clone();
        h_sorted.sort_by_key(|b| b.offset);
        if h_sorted != indexed {
            errs.push(format!("pack {pack}: header does not match the index"));
        }
        for b in &header {
            let raw = &data[b.offset as usize..(b.offset + b.length) as usize];
            let loc = crate::repo::BlobLocation {
                pack: 0,
                blob_type: b.blob_type,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            };
            if let Err(e) = repo.decode_blob(&b.id, &pack, &loc, raw) {
                errs.push(format!("pack {pack}: {e}"));
            }
        }
        errs
    })
    .await;
    r.unwrap_or_else(|e| vec![format!("pack {pack}: internal: {e}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_reads_about_its_share_and_another_seed_reads_other_packs() {
        let ids: Vec<Id> = (0..2000u32).map(|i| Id::hash(&i.to_le_bytes())).collect();
        let pick = |seed| -> HashSet<Id> {
            let s = Subset { percent: 10, seed };
            ids.iter().copied().filter(|id| s.contains(id)).collect()
        };
        let (a, b) = (pick(1), pick(2));
        assert!((140..260).contains(&a.len()), "{} of 2000 for 10%", a.len());
        assert!(
            a.intersection(&b).count() < a.len() / 2,
            "another seed, other packs"
        );
        let all = Subset {
            percent: 100,
            seed: 7,
        };
        assert!(ids.iter().all(|id| all.contains(id)));
        let none = Subset {
            percent: 0,
            seed: 7,
        };
        assert!(!ids.iter().any(|id| none.contains(id)));
    }
}
