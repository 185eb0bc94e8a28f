//! The location's catalog: a restic repository (`<prefix>/holdfast/catalog`) holding, for
//! every backup, its object archive and its metadata as a snapshot of their own — encrypted
//! and authenticated with the repository's keys (which include the location's passphrase),
//! deduplicated across backups, readable by the stock `restic` CLI. Nothing of a backup is
//! readable in the bucket.
//!
//! A backup's objects are stored when captured, as a snapshot tagged [`TAG_OBJECTS`]; when
//! the backup ends, one snapshot tagged [`TAG_BACKUP`] holding `metadata.json` and the same
//! archive (kept, not stored again) replaces it. Only [`TAG_BACKUP`] snapshots are complete
//! backups: restores and sync use nothing else.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use holdfast_api::backup::Backup;
use holdfast_api::location::BackupStorageLocation;
use holdfast_repo::files::{self, Entry, Options};
use holdfast_repo::format::FileType;
use holdfast_repo::{Id, RepoError, Repository, Snapshot};
use kube::ResourceExt;

use super::layout::{self, CATALOG};
use super::repository;
use crate::runtime::{Context, Error};

/// Tag of a complete backup's snapshot (metadata and objects).
pub const TAG_BACKUP: &str = "holdfast:backup";
/// Tag of the objects of a backup that has not ended.
pub const TAG_OBJECTS: &str = "holdfast:objects";
/// The file names inside a catalog snapshot.
pub const OBJECTS_FILE: &str = "resources.tar";
/// Hostname recorded in catalog snapshots.
const HOSTNAME: &str = "holdfast";
/// Annotation of a Backup object made from a catalog record in another cluster (or by a
/// reinstalled operator): the uid of the Backup that wrote the record.
pub const ORIGIN_UID: &str = "holdfast.dev/origin-uid";

/// The uid under which a Backup's record is kept: its own, or the original Backup's for
/// one made by sync.
pub fn origin_uid(b: &Backup) -> String {
    b.annotations()
        .get(ORIGIN_UID)
        .cloned()
        .unwrap_or_else(|| b.uid().unwrap_or_default())
}

/// Backups whose data this process is removing (by origin uid): sync does not bring them
/// back from their record in the moments before the record goes.
static LEAVING: LazyLock<Mutex<std::collections::HashSet<String>>> =
    LazyLock::new(Default::default);

/// Marks a backup's data as being removed (until [`remove`] removed its record).
pub fn leaving(uid: &str) {
    if let Ok(mut l) = LEAVING.lock() {
        l.insert(uid.to_string());
    }
}

/// Whether a backup's data is being removed by this process.
pub fn is_leaving(uid: &str) -> bool {
    LEAVING.lock().is_ok_and(|l| l.contains(uid))
}

/// The value of tag `key:<value>` of a snapshot.
pub fn tag<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.tags
        .iter()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix(':'))
}

fn tags(b: &Backup, kind: &str) -> Vec<String> {
    vec![
        kind.to_string(),
        format!("uid:{}", origin_uid(b)),
        format!("namespace:{}", b.namespace().unwrap_or_default()),
        format!("name:{}", b.name_any()),
    ]
}

fn paths(b: &Backup) -> Vec<String> {
    vec![format!(
        "/{}/{}",
        b.namespace().unwrap_or_default(),
        b.name_any()
    )]
}

/// Adapter for `map_err` on catalog operations: names the location and what was done.
pub(crate) fn repo_error(
    bsl: &BackupStorageLocation,
    doing: &str,
) -> impl FnOnce(RepoError) -> Error {
    let what = format!("{doing} the catalog of location {}", bsl.name_any());
    move |source| Error::Repository {
        what,
        fix: "retrying (a maintenance run holds the catalog's lock for minutes at most)".into(),
        source: Box::new(source),
    }
}

/// Opens the catalog for writing, creating it (and its password Secret, the location's
/// passphrase as one of its keys) when missing.
async fn open_for_write(ctx: &Context, bsl: &BackupStorageLocation) -> Result<Repository, Error> {
    repository::ensure(ctx, bsl, CATALOG).await?;
    repository::open(ctx, bsl, CATALOG, false).await
}

/// Opens the catalog for reading without writing anything to the location (a `ReadOnly`
/// one, or a new cluster that has only the location and its passphrase): with the password
/// Secret when there is one, else with the location's passphrase. `None`: no catalog.
pub async fn open_for_read(
    ctx: &Context,
    bsl: &BackupStorageLocation,
) -> Result<Option<Repository>, Error> {
    let store = super::open_repository_store(ctx, bsl, CATALOG).await?;
    if store
        .head("config")
        .await
        .map_err(Error::store("reading the catalog's config"))?
        .is_none()
    {
        return Ok(None);
    }
    if repository::read_password(ctx, &bsl.name_any(), CATALOG)
        .await?
        .is_some()
    {
        return repository::open(ctx, bsl, CATALOG, false).await.map(Some);
    }
    let passphrase = super::passphrase::require(ctx, bsl).await?;
    Repository::open(store, &passphrase)
        .await
        .map(Some)
        .map_err(|source| Error::Repository {
            what: format!("opening the catalog of location {} with its passphrase", bsl.name_any()),
            fix: "the location's passphrase Secret must hold the passphrase its repositories were written with".into(),
            source: Box::new(source),
        })
}

/// Snapshot files already read, per catalog (they never change: a snapshot's name is the
/// hash of its content), so listing a catalog reads only new ones.
static SEEN: LazyLock<Mutex<HashMap<String, HashMap<Id, Snapshot>>>> =
    LazyLock::new(Default::default);

/// Every snapshot of the catalog.
pub async fn records(repo: &Repository) -> Result<Vec<(Id, Snapshot)>, RepoError> {
    let which = repo.store().describe();
    let listed = repo.list(FileType::Snapshot).await?;
    let known: HashMap<Id, Snapshot> = SEEN
        .lock()
        .map(|m| m.get(&which).cloned().unwrap_or_default())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(listed.len());
    let mut set = tokio::task::JoinSet::new();
    for (id, _) in listed {
        match known.get(&id) {
            Some(s) => out.push((id, s.clone())),
            None => {
                let r = repo.clone();
                set.spawn(
                    async move { (id, r.load_json::<Snapshot>(FileType::Snapshot, &id).await) },
                );
            }
        }
    }
    while let Some(j) = set.join_next().await {
        let (id, s) = j.map_err(|e| RepoError::Internal(e.to_string()))?;
        match s {
            Ok(s) => out.push((id, s)),
            // Removed since listed.
            Err(RepoError::Store(e)) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    if let Ok(mut m) = SEEN.lock() {
        m.insert(which, out.iter().cloned().collect());
    }
    out.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    Ok(out)
}

fn of_uid<'a>(
    all: &'a [(Id, Snapshot)],
    uid: &'a str,
    kind: &'a str,
) -> impl Iterator<Item = &'a (Id, Snapshot)> + 'a {
    all.iter()
        .filter(move |(_, s)| s.tags.iter().any(|t| t == kind) && tag(s, "uid") == Some(uid))
}

/// Stores the objects captured for a backup that is starting.
pub async fn write_objects(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    b: &Backup,
    archive: Vec<u8>,
) -> Result<(), Error> {
    let repo = open_for_write(ctx, bsl).await?;
    files::save(
        &repo,
        vec![Entry::New {
            name: OBJECTS_FILE.into(),
            data: archive,
        }],
        Options {
            paths: paths(b),
            tags: tags(b, TAG_OBJECTS),
            hostname: HOSTNAME.into(),
        },
    )
    .await
    .map_err(repo_error(bsl, "storing the objects of a backup in"))?;
    Ok(())
}

/// Records a backup that ended: one snapshot of its metadata and its objects (stored at the
/// start, or, for a backup begun by an older operator, the archive it left in the bucket),
/// then the objects-only snapshots go. Idempotent. True when the archive was the one left in
/// the bucket (the caller then removes that plaintext).
pub async fn write_record(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    b: &Backup,
    metadata: Vec<u8>,
) -> Result<bool, Error> {
    let repo = open_for_write(ctx, bsl).await?;
    let uid = origin_uid(b);
    let all = records(&repo).await.map_err(repo_error(bsl, "listing"))?;
    let objects: Vec<Id> = of_uid(&all, &uid, TAG_OBJECTS).map(|(id, _)| *id).collect();
    let mut legacy = false;
    if of_uid(&all, &uid, TAG_BACKUP).next().is_none() {
        let mut entries = vec![Entry::New {
            name: layout::METADATA.into(),
            data: metadata,
        }];
        match of_uid(&all, &uid, TAG_OBJECTS).last() {
            Some((_, s)) => {
                let index = repo
                    .load_index()
                    .await
                    .map_err(repo_error(bsl, "reading the index of"))?;
                let nodes = files::list(&repo, &index, s)
                    .await
                    .map_err(repo_error(bsl, "reading the objects snapshot in"))?;
                let node = nodes
                    .into_iter()
                    .find(|n| n.name == OBJECTS_FILE)
                    .ok_or_else(|| Error::Internal {
                        what: "catalog",
                        message: format!(
                            "the objects snapshot of backup uid {uid} has no {OBJECTS_FILE}"
                        ),
                    })?;
                entries.push(Entry::Kept(Box::new(node)));
            }
            None => {
                legacy = true;
                entries.push(Entry::New {
                    name: layout::RESOURCES.into(),
                    data: legacy_archive(ctx, bsl, b).await?,
                });
            }
        }
        files::save(
            &repo,
            entries,
            Options {
                paths: paths(b),
                tags: tags(b, TAG_BACKUP),
                hostname: HOSTNAME.into(),
            },
        )
        .await
        .map_err(repo_error(bsl, "recording a backup in"))?;
    } else if let Some((_, s)) = of_uid(&all, &uid, TAG_BACKUP).last() {
        // Recorded by an earlier pass that may have stopped before the plaintext went: a
        // record holding the old archive's name was made from it.
        let index = repo
            .load_index()
            .await
            .map_err(repo_error(bsl, "reading the index of"))?;
        legacy = files::list(&repo, &index, s)
            .await
            .map_err(repo_error(bsl, "reading a record in"))?
            .iter()
            .any(|n| n.name == layout::RESOURCES);
    }
    if !objects.is_empty() {
        files::remove(&repo, &objects)
            .await
            .map_err(repo_error(bsl, "removing the objects-only snapshots of"))?;
    }
    Ok(legacy)
}

/// The archive a backup started by an older operator left in the bucket (then removed
/// with the backup's other plaintext objects once recorded).
async fn legacy_archive(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    b: &Backup,
) -> Result<Vec<u8>, Error> {
    let key = format!(
        "{}/{}",
        layout::backup_prefix(bsl, &b.namespace().unwrap_or_default(), &b.name_any()),
        layout::RESOURCES
    );
    Ok(super::open_bucket(ctx, bsl)
        .await?
        .get(&key)
        .await
        .map_err(Error::store(format!(
            "reading {key} (the backup's objects: neither in the catalog nor in the bucket)"
        )))?
        .to_vec())
}

/// One file of a catalog snapshot (every byte verified); `None` when it has no such file.
pub async fn file(
    repo: &Repository,
    index: &holdfast_repo::Index,
    s: &Snapshot,
    name: &str,
) -> Result<Option<Vec<u8>>, RepoError> {
    let nodes = files::list(repo, index, s).await?;
    match nodes.iter().find(|n| n.name == name) {
        Some(n) => files::read(repo, index, n).await.map(Some),
        None => Ok(None),
    }
}

/// A backup's record as read from the catalog.
pub enum Found {
    /// No complete record of that backup.
    Missing,
    /// The record exists but could not be read intact: names the file and the damage.
    Corrupt(String),
    Record {
        metadata: Vec<u8>,
        archive: Vec<u8>,
    },
}

/// Reads a backup's record (metadata and object archive), every byte verified.
pub async fn read(ctx: &Context, bsl: &BackupStorageLocation, uid: &str) -> Result<Found, Error> {
    let Some(repo) = open_for_read(ctx, bsl).await? else {
        return Ok(Found::Missing);
    };
    let all = records(&repo).await.map_err(repo_error(bsl, "listing"))?;
    let Some((id, s)) = of_uid(&all, uid, TAG_BACKUP).last() else {
        return Ok(Found::Missing);
    };
    let index = repo
        .load_index()
        .await
        .map_err(repo_error(bsl, "reading the index of"))?;
    let what = |f: &str, e: RepoError| {
        format!(
            "{f} of snapshot {} in the catalog of location {}: {e}",
            id.short(),
            bsl.name_any()
        )
    };
    let nodes = match files::list(&repo, &index, s).await {
        Ok(n) => n,
        Err(e) if damage(&e) => return Ok(Found::Corrupt(what("the file list", e))),
        Err(e) => return Err(repo_error(bsl, "reading")(e)),
    };
    let mut metadata = None;
    let mut archive = None;
    for n in &nodes {
        let slot = match n.name.as_str() {
            layout::METADATA => &mut metadata,
            OBJECTS_FILE | layout::RESOURCES => &mut archive,
            _ => continue,
        };
        match files::read(&repo, &index, n).await {
            Ok(d) => *slot = Some(d),
            Err(e) if damage(&e) => return Ok(Found::Corrupt(what(&n.name, e))),
            Err(e) => return Err(repo_error(bsl, "reading")(e)),
        }
    }
    match (metadata, archive) {
        (Some(metadata), Some(archive)) => Ok(Found::Record { metadata, archive }),
        _ => Ok(Found::Corrupt(format!(
            "snapshot {} in the catalog of location {} lacks {} or {OBJECTS_FILE}",
            id.short(),
            bsl.name_any(),
            layout::METADATA
        ))),
    }
}

/// Whether a read error means damaged or missing data (not a passing failure).
fn damage(e: &RepoError) -> bool {
    match e {
        RepoError::Integrity { .. }
        | RepoError::Format(_)
        | RepoError::Crypto(_)
        | RepoError::BlobNotFound { .. } => true,
        RepoError::Store(s) => s.is_not_found(),
        _ => false,
    }
}

/// Removes a backup's snapshots from the catalog (the complete record first, so it stops
/// being a backup before its objects go); prune reclaims the space later.
pub async fn remove(ctx: &Context, bsl: &BackupStorageLocation, uid: &str) -> Result<(), Error> {
    leaving(uid);
    let Some(repo) = open_for_read(ctx, bsl).await? else {
        return Ok(());
    };
    let all = records(&repo).await.map_err(repo_error(bsl, "listing"))?;
    for kind in [TAG_BACKUP, TAG_OBJECTS] {
        let ids: Vec<Id> = of_uid(&all, uid, kind).map(|(id, _)| *id).collect();
        if ids.is_empty() {
            continue;
        }
        files::remove(&repo, &ids)
            .await
            .map_err(repo_error(bsl, "removing a backup from"))?;
        repository::deleted(ctx, &bsl.name_any(), CATALOG).await?;
    }
    // Listings made before the removal may still show it: keep it marked for a while.
    let uid = uid.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        if let Ok(mut l) = LEAVING.lock() {
            l.remove(&uid);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_backup_and_are_found_again() {
        let mut b = Backup::new("nightly", Default::default());
        b.metadata.namespace = Some("shop".into());
        b.metadata.uid = Some("u-1".into());
        let s = Snapshot {
            tags: tags(&b, TAG_BACKUP),
            ..Default::default()
        };
        assert_eq!(tag(&s, "uid"), Some("u-1"));
        assert_eq!(tag(&s, "namespace"), Some("shop"));
        assert_eq!(tag(&s, "name"), Some("nightly"));
        assert_eq!(tag(&s, "nam"), None);
        let all = vec![(Id::hash(b"x"), s)];
        assert_eq!(of_uid(&all, "u-1", TAG_BACKUP).count(), 1);
        assert_eq!(of_uid(&all, "u-1", TAG_OBJECTS).count(), 0);
        assert_eq!(of_uid(&all, "u-2", TAG_BACKUP).count(), 0);
        b.metadata
            .annotations
            .get_or_insert_default()
            .insert(ORIGIN_UID.into(), "u-0".into());
        assert_eq!(origin_uid(&b), "u-0");
        assert_eq!(paths(&b), ["/shop/nightly"]);
    }
}
