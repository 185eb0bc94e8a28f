//! `holdfast restore-points pvc/NAME -n NS` (also `kubectl holdfast restore-points …` when the
//! binary is installed as `kubectl-holdfast`): every restore point of one claim, newest first,
//! from the Backups the caller can read: its in-cluster snapshot and its copy, with time and
//! size.

use holdfast_api::backup::{Backup, BackupPhase, VolumePhase};
use holdfast_api::schedule::SCHEDULE_LABEL;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Error;
use super::conn::Conn;
use super::progress::human;

/// Arguments of `holdfast restore-points`.
#[derive(clap::Args, Debug)]
pub struct PointsArgs {
    /// The claim: `pvc/NAME` or `NAME`.
    pub claim: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// One restore point of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub time: Timestamp,
    /// `namespace/name` of the Backup.
    pub backup: String,
    pub schedule: String,
    /// `snapshot`, `copy` or `snapshot+copy`.
    pub kind: &'static str,
    /// Bytes of the volume (snapshot restore size, or the copy's bytes read).
    pub size: Option<u64>,
}

/// The points of claim `ns/name` in `backups`, newest first. Pure.
pub fn points(backups: &[Backup], ns: &str, name: &str) -> Vec<Point> {
    let mut out: Vec<Point> = backups.iter().filter_map(|b| point(b, ns, name)).collect();
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.backup.cmp(&b.backup)));
    out
}

fn point(b: &Backup, ns: &str, name: &str) -> Option<Point> {
    let st = b.status.as_ref()?;
    if !matches!(
        st.phase?,
        BackupPhase::Completed | BackupPhase::PartiallyFailed
    ) || b.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let v = st.volumes.iter().find(|v| {
        v.pvc.namespace == ns && v.pvc.name == name && v.phase == VolumePhase::Completed
    })?;
    let dropped = b
        .annotations()
        .contains_key(holdfast_api::schedule::SNAPSHOTS_DROPPED);
    let snapshot = v.snapshot.as_ref().filter(|s| s.ready_to_use && !dropped);
    let copy = v.copy.as_ref().filter(|c| c.snapshot_id.is_some());
    let kind = match (snapshot.is_some(), copy.is_some()) {
        (true, true) => "snapshot+copy",
        (true, false) => "snapshot",
        (false, true) => "copy",
        (false, false) => return None,
    };
    let size = snapshot
        .and_then(|s| s.restore_size_bytes)
        .or(copy.map(|c| c.bytes_total));
    Some(Point {
        time: st.start_time.as_ref().or(st.completion_time.as_ref())?.0,
        backup: format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()),
        schedule: b.labels().get(SCHEDULE_LABEL).cloned().unwrap_or_default(),
        kind,
        size,
    })
}

/// Lists the points as a table on stdout.
pub async fn run(args: &PointsArgs) -> Result<(), Error> {
    let name = args.claim.strip_prefix("pvc/").unwrap_or(&args.claim);
    if name.is_empty() || name.contains('/') {
        return Err(Error::Missing(format!(
            "restore-points takes one claim, as pvc/NAME or NAME (got {:?})",
            args.claim
        )));
    }
    let session = args.conn.connect().await?;
    let (client, ns) = (session.client, session.namespace);
    // Administrators' Backups may live in the operator namespace: read every namespace when
    // allowed, else the claim's own.
    let backups = match Api::<Backup>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            Api::<Backup>::namespaced(client, &ns)
                .list(&ListParams::default())
                .await
                .map_err(Error::kube(format!("list backups in namespace {ns}")))?
                .items
        }
        Err(e) => return Err(Error::kube("list backups")(e)),
    };
    let pts = points(&backups, &ns, name);
    if pts.is_empty() {
        println!("no restore points of pvc/{name} in namespace {ns}");
        return Ok(());
    }
    println!(
        "{:<21} {:<14} {:>10}  {:<40} SCHEDULE",
        "TIME", "KIND", "SIZE", "BACKUP"
    );
    for p in pts {
        let size = p.size.map_or("-".to_string(), human);
        let time = p.time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        println!(
            "{time:<21} {:<14} {size:>10}  {:<40} {}",
            p.kind, p.backup, p.schedule
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(name: &str, start: &str, volume: serde_json::Value) -> Backup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": name, "namespace": "ops", "labels": {SCHEDULE_LABEL: "nightly"}},
            "spec": {},
            "status": {"phase": "Completed", "startTime": start, "volumes": [volume]}
        }))
        .expect("backup")
    }

    #[test]
    fn points_of_a_claim_newest_first_with_their_kind_and_size() {
        let snap = serde_json::json!({"pvc": {"namespace": "shop", "name": "data"}, "phase": "Completed",
            "snapshot": {"name": "s", "readyToUse": true, "restoreSizeBytes": 1048576}});
        let copy = serde_json::json!({"pvc": {"namespace": "shop", "name": "data"}, "phase": "Completed",
            "copy": {"dataUpload": "u", "snapshotId": "abc", "bytesTotal": 2048}});
        let other = serde_json::json!({"pvc": {"namespace": "shop", "name": "other"}, "phase": "Completed",
            "copy": {"dataUpload": "u", "snapshotId": "abc"}});
        let all = vec![
            backup("a", "2026-12-06T01:00:00Z", snap),
            backup("b", "2026-12-06T02:00:00Z", copy),
            backup("c", "2026-12-06T03:00:00Z", other),
        ];
        let p = points(&all, "shop", "data");
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].backup.as_str(), p[0].kind, p[0].size),
            ("ops/b", "copy", Some(2048))
        );
        assert_eq!((p[1].kind, p[1].size), ("snapshot", Some(1 << 20)));
        assert_eq!(p[1].schedule, "nightly");
    }
}
