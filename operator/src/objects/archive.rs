//! The captured objects as a tar.gz, laid out like Velero's:
//!
//! ```text
//! index.json                                                 format version, resource types, items
//! resources/<plural>.<group or core>/namespaces/<ns>/<name>.json   namespaced objects
//! resources/<plural>.<group or core>/cluster/<name>.json           cluster-scoped objects
//! ```
//! `index.json` is written first and is authoritative when reading.

use std::collections::BTreeMap;
use std::io::Read;

use flate2::read::GzDecoder;
use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};

use super::ObjectsError;
use super::select::ResourceType;

/// Name of the index inside the archive.
pub const INDEX_PATH: &str = "index.json";
/// Version of the layout written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Largest archive member read back (a single object), as a guard against corrupt input.
const MAX_ENTRY: u64 = 64 << 20;
/// Most bytes all members together may hold once uncompressed: a small corrupt or hostile
/// archive (gzip expands up to ~1000:1) must not exhaust the operator's memory.
const MAX_TOTAL: u64 = 1 << 30;

/// One captured object with its resource type.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub resource: ResourceType,
    pub object: DynamicObject,
}

impl Item {
    pub fn namespace(&self) -> Option<&str> {
        self.object.metadata.namespace.as_deref()
    }
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }
    /// The path of the object inside the archive.
    pub fn path(&self) -> String {
        item_path(&self.resource, self.namespace(), self.name())
    }
    /// `deployments.apps shop/web`, for messages.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.resource.group_resource(), self.name()),
            None => format!("{} {}", self.resource.group_resource(), self.name()),
        }
    }
}

/// `resources/<dir>/namespaces/<ns>/<name>.json` or `resources/<dir>/cluster/<name>.json`.
pub fn item_path(rt: &ResourceType, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if rt.namespaced => {
            format!("resources/{}/namespaces/{ns}/{name}.json", rt.dir_name())
        }
        _ => format!("resources/{}/cluster/{name}.json", rt.dir_name()),
    }
}

/// The index: which resource types and which objects the archive holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub version: u32,
    /// Resource types of the items, keyed by archive directory name.
    pub resources: BTreeMap<String, ResourceType>,
    pub items: Vec<IndexEntry>,
}

/// One object in the index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// Archive directory name of its resource type (`deployments.apps`).
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub path: String,
}

/// Writes items (in the given order) into a tar (uncompressed: the catalog compresses and
/// deduplicates its chunks across backups, which a gzip stream would defeat).
pub fn write(items: &[Item]) -> Result<Vec<u8>, ObjectsError> {
    let mut index = Index {
        version: FORMAT_VERSION,
        resources: BTreeMap::new(),
        items: Vec::with_capacity(items.len()),
    };
    let mut files = Vec::with_capacity(items.len() + 1);
    for item in items {
        let path = item.path();
        index
            .resources
            .entry(item.resource.dir_name())
            .or_insert_with(|| item.resource.clone());
        index.items.push(IndexEntry {
            resource: item.resource.dir_name(),
            namespace: item.namespace().map(str::to_string),
            name: item.name().to_string(),
            path: path.clone(),
        });
        let json = serde_json::to_vec_pretty(&item.object).map_err(|e| ObjectsError::Archive {
            what: format!("encoding {}", item.describe()),
            cause: e.to_string(),
        })?;
        files.push((path, json));
    }
    let index_json = serde_json::to_vec_pretty(&index).map_err(|e| ObjectsError::Archive {
        what: "encoding the index".into(),
        cause: e.to_string(),
    })?;

    let archive_err = |e: std::io::Error| ObjectsError::Archive {
        what: "writing the archive".into(),
        cause: e.to_string(),
    };
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in std::iter::once((INDEX_PATH.to_string(), index_json)).chain(files) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &path, data.as_slice())
            .map_err(archive_err)?;
    }
    tar.into_inner().map_err(archive_err)
}

/// Writes items into a tar.gz, as operators before the catalog did.
#[cfg(test)]
pub fn write_gz(items: &[Item]) -> Result<Vec<u8>, ObjectsError> {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&write(items)?)
        .map_err(|e| ObjectsError::Archive {
            what: "compressing the archive".into(),
            cause: e.to_string(),
        })?;
    gz.finish().map_err(|e| ObjectsError::Archive {
        what: "compressing the archive".into(),
        cause: e.to_string(),
    })
}

/// Reads the items of an archive written by [`write()`] (a tar, or the tar.gz of backups
/// written before the catalog), in index order.
pub fn read(archive: &[u8]) -> Result<Vec<Item>, ObjectsError> {
    let err = |what: &str, cause: String| ObjectsError::Archive {
        what: what.to_string(),
        cause,
    };
    let stream: Box<dyn std::io::Read + '_> = if archive.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(archive))
    } else {
        Box::new(archive)
    };
    let mut tar = tar::Archive::new(stream);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut total = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| err("reading the archive", e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| err("reading an archive entry", e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| err("reading an archive path", e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        if entry.size() > MAX_ENTRY {
            return Err(err(
                &format!("reading {path}"),
                format!("{} bytes is more than an object can be", entry.size()),
            ));
        }
        total += entry.size();
        if total > MAX_TOTAL {
            return Err(err(
                "reading the archive",
                format!("its objects hold more than {MAX_TOTAL} bytes"),
            ));
        }
        // The size is the header's claim: reserve for it only up to a modest amount.
        let mut data = Vec::with_capacity(entry.size().min(1 << 20) as usize);
        entry
            .take(MAX_ENTRY)
            .read_to_end(&mut data)
            .map_err(|e| err(&format!("reading {path}"), e.to_string()))?;
        files.insert(path, data);
    }
    let index_json = files
        .get(INDEX_PATH)
        .ok_or_else(|| err("reading the archive", format!("it has no {INDEX_PATH}")))?;
    let index: Index = serde_json::from_slice(index_json)
        .map_err(|e| err(&format!("parsing {INDEX_PATH}"), e.to_string()))?;
    if index.version > FORMAT_VERSION {
        return Err(err(
            "reading the archive",
            format!(
                "format version {} is newer than this operator understands ({FORMAT_VERSION})",
                index.version
            ),
        ));
    }
    let mut items = Vec::with_capacity(index.items.len());
    for entry in &index.items {
        let resource = index.resources.get(&entry.resource).ok_or_else(|| {
            err(
                &format!("reading {}", entry.path),
                format!("resource {} is not in the index", entry.resource),
            )
        })?;
        let data = files.get(&entry.path).ok_or_else(|| {
            err(
                &format!("reading {}", entry.path),
                "listed in the index but missing from the archive".into(),
            )
        })?;
        let object: DynamicObject = serde_json::from_slice(data)
            .map_err(|e| err(&format!("parsing {}", entry.path), e.to_string()))?;
        items.push(Item {
            resource: resource.clone(),
            object,
        });
    }
    Ok(items)
}
