//! The driver's bookkeeping: `<statedir>/state.json`, byte-compatible in
//! meaning with the Go stand-in (`e2e/tools/hostpathplugin`), so either driver
//! can pick up a state directory the other one wrote.
//!
//! ```json
//! {
//!   "volumes":   { "<id>": { "id", "name", "size", "path", "sourceKind"?, "sourceID"? } },
//!   "snapshots": { "<id>": { "id", "name", "sourceVolume", "size", "path", "creationTime",
//!                            "groupSnapshotID"? } },
//!   "groupSnapshots"?: { "<id>": { "id", "name", "snapshotIDs", "sourceVolumes", "creationTime" } }
//! }
//! ```
//!
//! `groupSnapshotID` and `groupSnapshots` (ours, not the Go driver's) are only
//! written when there are group snapshots, so a state without them is the same
//! file as before; the Go driver ignores unknown fields.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// File name of the state inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// `sourceKind` of a volume restored from a snapshot.
pub const SOURCE_SNAPSHOT: &str = "snapshot";
/// `sourceKind` of a volume cloned from another volume.
pub const SOURCE_VOLUME: &str = "volume";
/// Size of a volume whose request names no capacity (1 GiB, as the Go driver).
pub const DEFAULT_SIZE: i64 = 1 << 30;

/// A volume: the directory `path` (always `<statedir>/<id>` when we create it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size: i64,
    pub path: PathBuf,
    /// `"snapshot"`, `"volume"` or empty.
    #[serde(rename = "sourceKind", skip_serializing_if = "String::is_empty")]
    pub source_kind: String,
    #[serde(rename = "sourceID", skip_serializing_if = "String::is_empty")]
    pub source_id: String,
}

/// A snapshot: the gzipped tarball `path` (always `<statedir>/<id>.snap`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    #[serde(rename = "sourceVolume")]
    pub source_volume: String,
    pub size: i64,
    pub path: PathBuf,
    #[serde(rename = "creationTime")]
    pub creation_time: DateTime<Utc>,
    /// The group snapshot this snapshot was cut in (empty: a single snapshot).
    #[serde(rename = "groupSnapshotID", skip_serializing_if = "String::is_empty")]
    pub group_snapshot_id: String,
}

/// A group snapshot: member snapshots (in `snapshots`) cut at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupSnapshot {
    pub id: String,
    pub name: String,
    /// Member snapshot ids, in the order of `source_volumes`.
    #[serde(rename = "snapshotIDs")]
    pub snapshot_ids: Vec<String>,
    /// Source volume ids, as in the CreateVolumeGroupSnapshot request.
    #[serde(rename = "sourceVolumes")]
    pub source_volumes: Vec<String>,
    #[serde(rename = "creationTime")]
    pub creation_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default, deserialize_with = "null_as_default")]
    pub volumes: BTreeMap<String, Volume>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub snapshots: BTreeMap<String, Snapshot>,
    #[serde(
        rename = "groupSnapshots",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub group_snapshots: BTreeMap<String, GroupSnapshot>,
}

/// Go writes `null` for a nil map; treat it like an empty one.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl State {
    /// Reads `<dir>/state.json`; a missing file is an empty state.
    pub fn load(dir: &Path) -> std::io::Result<State> {
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes `<dir>/state.json` atomically (temp file + rename), mode 0600.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let b = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(STATE_FILE))
    }

    pub fn volume_by_name(&self, name: &str) -> Option<&Volume> {
        self.volumes.values().find(|v| v.name == name)
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.values().find(|s| s.name == name)
    }

    pub fn group_snapshot_by_name(&self, name: &str) -> Option<&GroupSnapshot> {
        self.group_snapshots.values().find(|g| g.name == name)
    }

    /// Snapshots matching the optional filters (empty string = no filter),
    /// ordered by id.
    pub fn list_snapshots<'a>(
        &'a self,
        snapshot_id: &'a str,
        source_volume_id: &'a str,
    ) -> impl Iterator<Item = &'a Snapshot> + 'a {
        self.snapshots.values().filter(move |s| {
            (snapshot_id.is_empty() || s.id == snapshot_id)
                && (source_volume_id.is_empty() || s.source_volume == source_volume_id)
        })
    }
}

/// Size of a new volume: `required_bytes`, else `limit_bytes`, else 1 GiB.
pub fn requested_size(required_bytes: i64, limit_bytes: i64) -> i64 {
    if required_bytes != 0 {
        required_bytes
    } else if limit_bytes != 0 {
        limit_bytes
    } else {
        DEFAULT_SIZE
    }
}

/// A random (version 4) UUID, the format of volume and snapshot ids.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vol(id: &str, name: &str) -> Volume {
        Volume {
            id: id.into(),
            name: name.into(),
            size: 10,
            path: PathBuf::from(format!("/d/{id}")),
            ..Default::default()
        }
    }

    fn snap(id: &str, name: &str, source: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            name: name.into(),
            source_volume: source.into(),
            size: 10,
            path: PathBuf::from(format!("/d/{id}.snap")),
            creation_time: DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
            group_snapshot_id: String::new(),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(requested_size(5, 0), 5);
        assert_eq!(requested_size(5, 9), 5);
        assert_eq!(requested_size(0, 9), 9);
        assert_eq!(requested_size(0, 0), 1 << 30);
    }

    #[test]
    fn ids_are_uuids() {
        let a = new_id();
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_ne!(a, new_id());
    }

    #[test]
    fn lookups_and_filters() {
        let mut st = State::default();
        st.volumes.insert("v1".into(), vol("v1", "pvc-a"));
        st.volumes.insert("v2".into(), vol("v2", "pvc-b"));
        st.snapshots.insert("s1".into(), snap("s1", "snap-a", "v1"));
        st.snapshots.insert("s2".into(), snap("s2", "snap-b", "v2"));
        st.snapshots.insert("s3".into(), snap("s3", "snap-c", "v1"));
        assert_eq!(
            st.volume_by_name("pvc-b").map(|v| v.id.as_str()),
            Some("v2")
        );
        assert!(st.volume_by_name("nope").is_none());
        assert_eq!(
            st.snapshot_by_name("snap-c").map(|s| s.id.as_str()),
            Some("s3")
        );
        let ids = |it: Vec<&Snapshot>| it.into_iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(st.list_snapshots("", "").collect()), ["s1", "s2", "s3"]);
        assert_eq!(ids(st.list_snapshots("", "v1").collect()), ["s1", "s3"]);
        assert_eq!(ids(st.list_snapshots("s2", "").collect()), ["s2"]);
        assert!(st.list_snapshots("s2", "v1").next().is_none());
    }

    /// A state.json exactly as the Go driver writes it (json.MarshalIndent,
    /// nil map as `null`, RFC 3339 times with nanoseconds).
    #[test]
    fn reads_go_state() {
        let go = r#"{
  "volumes": {
    "0b7c": {
      "id": "0b7c",
      "name": "pvc-1",
      "size": 1073741824,
      "path": "/s/0b7c"
    },
    "1d2e": {
      "id": "1d2e",
      "name": "pvc-2",
      "size": 2048,
      "path": "/s/1d2e",
      "sourceKind": "snapshot",
      "sourceID": "9f9f"
    }
  },
  "snapshots": null
}"#;
        let st: State = serde_json::from_str(go).unwrap();
        assert_eq!(st.volumes.len(), 2);
        assert!(st.snapshots.is_empty());
        assert_eq!(st.volumes["1d2e"].source_kind, SOURCE_SNAPSHOT);
        assert_eq!(st.volumes["1d2e"].source_id, "9f9f");
        assert_eq!(st.volumes["0b7c"].source_kind, "");

        let go = r#"{"volumes":null,"snapshots":{"9f9f":{"id":"9f9f","name":"snapshot-x","sourceVolume":"0b7c","size":5,"path":"/s/9f9f.snap","creationTime":"2026-11-22T03:04:22.12345678Z"}}}"#;
        let st: State = serde_json::from_str(go).unwrap();
        assert!(st.volumes.is_empty());
        let s = &st.snapshots["9f9f"];
        assert_eq!(s.source_volume, "0b7c");
        assert_eq!(s.creation_time.timestamp_subsec_nanos(), 123_456_780);
    }

    #[test]
    fn writes_go_field_names() {
        let mut st = State::default();
        st.volumes.insert("v1".into(), vol("v1", "pvc-a"));
        let mut cloned = vol("v2", "pvc-b");
        cloned.source_kind = SOURCE_VOLUME.into();
        cloned.source_id = "v1".into();
        st.volumes.insert("v2".into(), cloned);
        st.snapshots.insert("s1".into(), snap("s1", "snap-a", "v1"));
        let v: serde_json::Value = serde_json::to_value(&st).unwrap();
        assert_eq!(
            v["volumes"]["v1"],
            serde_json::json!({"id": "v1", "name": "pvc-a", "size": 10, "path": "/d/v1"})
        );
        assert_eq!(v["volumes"]["v2"]["sourceKind"], "volume");
        assert_eq!(v["volumes"]["v2"]["sourceID"], "v1");
        assert_eq!(v["snapshots"]["s1"]["sourceVolume"], "v1");
        assert_eq!(
            v["snapshots"]["s1"]["creationTime"],
            "2023-11-14T22:13:20.123456789Z"
        );
        // no group snapshots: neither field is written (the file is the Go driver's)
        assert!(v.get("groupSnapshots").is_none());
        assert!(v["snapshots"]["s1"].get("groupSnapshotID").is_none());
    }

    #[test]
    fn group_snapshots_roundtrip() {
        let mut st = State::default();
        let mut m = snap("s1", "m1", "v1");
        m.group_snapshot_id = "g1".into();
        st.snapshots.insert("s1".into(), m);
        st.group_snapshots.insert(
            "g1".into(),
            GroupSnapshot {
                id: "g1".into(),
                name: "groupsnapshot-x".into(),
                snapshot_ids: vec!["s1".into()],
                source_volumes: vec!["v1".into()],
                creation_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            },
        );
        let v: serde_json::Value = serde_json::to_value(&st).unwrap();
        assert_eq!(v["snapshots"]["s1"]["groupSnapshotID"], "g1");
        assert_eq!(
            v["groupSnapshots"]["g1"]["snapshotIDs"],
            serde_json::json!(["s1"])
        );
        assert_eq!(
            v["groupSnapshots"]["g1"]["sourceVolumes"],
            serde_json::json!(["v1"])
        );
        let back: State = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
        assert_eq!(
            back.group_snapshot_by_name("groupsnapshot-x")
                .map(|g| g.id.as_str()),
            Some("g1")
        );
        let null: State =
            serde_json::from_str(r#"{"volumes":null,"snapshots":null,"groupSnapshots":null}"#)
                .unwrap();
        assert!(null.group_snapshots.is_empty());
    }

    #[test]
    fn save_load_roundtrip() {
        let dir = std::env::temp_dir().join(format!("hostpath-state-{}", new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            State::load(&dir).ok(),
            Some(State::default()),
            "missing file is an empty state"
        );
        let mut st = State::default();
        st.volumes.insert("v1".into(), vol("v1", "pvc-a"));
        st.snapshots.insert("s1".into(), snap("s1", "snap-a", "v1"));
        st.save(&dir).unwrap();
        assert_eq!(State::load(&dir).ok(), Some(st));
        assert!(!dir.join("state.json.tmp").exists());
        let mode = std::fs::metadata(dir.join(STATE_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        std::fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        assert!(State::load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
