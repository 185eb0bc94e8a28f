//! What the plugin shows of a running or finished Backup or Restore: a view built from its
//! status and its DataUploads/DataDownloads, progress bars, the terminal redraw and the plain
//! lines printed when stdout is not a terminal, and the exit code of `--wait`. Pure.

use holdfast_api::backup::{Backup, BackupPhase, VolumePhase};
use holdfast_api::restore::{Restore, RestorePhase};
use holdfast_api::{DataDownload, DataUpload, TransferStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

/// How a Backup or Restore ended, for `--wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    PartiallyFailed,
    Failed,
    Cancelled,
    /// The object was deleted while waiting.
    Deleted,
}

impl Outcome {
    /// The exit code of `--wait`: 0 Completed, 3 Failed, 4 PartiallyFailed, 5 Cancelled or
    /// deleted. (1 is any error of the plugin itself, 2 a usage error.)
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Completed => 0,
            Self::Failed => 3,
            Self::PartiallyFailed => 4,
            Self::Cancelled | Self::Deleted => 5,
        }
    }

    fn of_backup(p: BackupPhase) -> Option<Self> {
        match p {
            BackupPhase::Completed => Some(Self::Completed),
            BackupPhase::PartiallyFailed => Some(Self::PartiallyFailed),
            BackupPhase::Failed => Some(Self::Failed),
            BackupPhase::Cancelled => Some(Self::Cancelled),
            BackupPhase::Pending | BackupPhase::InProgress | BackupPhase::Deleting => None,
        }
    }

    fn of_restore(p: RestorePhase) -> Option<Self> {
        match p {
            RestorePhase::Completed => Some(Self::Completed),
            RestorePhase::PartiallyFailed => Some(Self::PartiallyFailed),
            RestorePhase::Failed => Some(Self::Failed),
            RestorePhase::Cancelled => Some(Self::Cancelled),
            RestorePhase::Pending | RestorePhase::InProgress => None,
        }
    }
}

/// One volume of a Backup or Restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    /// `namespace/claim` (a restore: the claim written).
    pub claim: String,
    pub phase: String,
    pub done: u64,
    pub total: u64,
    /// The volume ended well (counts as 100% without bytes, for snapshot-only volumes).
    pub finished_ok: bool,
    /// Why it failed or waits.
    pub note: Option<String>,
}

/// A Backup or Restore as the plugin shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// `backup` or `restore`.
    pub kind: &'static str,
    /// `namespace/name`.
    pub name: String,
    /// The phase, `Pending` before the operator wrote one.
    pub phase: String,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub volumes: Vec<VolumeView>,
}

/// Reason and message of a transfer's status, as one note.
fn transfer_note(st: &TransferStatus) -> Option<String> {
    match (&st.reason, &st.message) {
        (Some(r), Some(m)) => Some(format!("{r}: {m}")),
        (Some(r), None) => Some(r.clone()),
        (None, Some(m)) => Some(m.clone()),
        (None, None) => None,
    }
}

fn note(reason: &Option<String>, message: &Option<String>) -> Option<String> {
    match (reason, message) {
        (Some(r), Some(m)) => Some(format!("{r}: {m}")),
        (Some(r), None) => Some(r.clone()),
        (None, Some(m)) => Some(m.clone()),
        (None, None) => None,
    }
}

/// The condition that says why the object cannot go on (`Stalled`, else a false `Ready`),
/// for a status without a reason of its own.
fn stalled(conds: &[Condition]) -> Option<&Condition> {
    conds
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .or_else(|| {
            conds
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
        })
        .filter(|c| !c.reason.is_empty())
}

/// The view of backup `b`; `uploads` are its DataUploads (their status is fresher than the
/// Backup's copy of it).
pub fn backup_view(b: &Backup, uploads: &[DataUpload]) -> View {
    let st = b.status.clone().unwrap_or_default();
    let volumes = st
        .volumes
        .iter()
        .map(|v| {
            let copy = v.copy.as_ref();
            let upload = copy.and_then(|c| uploads.iter().find(|u| u.name_any() == c.data_upload));
            let live = upload.and_then(|u| u.status.as_ref());
            let (mut done, mut total) = copy.map_or((0, 0), |c| (c.bytes_done, c.bytes_total));
            if let Some(l) = live {
                done = done.max(l.bytes_done);
                total = total.max(l.bytes_total);
            }
            let waiting = (v.phase == VolumePhase::Copying)
                .then(|| live.and_then(transfer_note))
                .flatten();
            VolumeView {
                claim: v.pvc.to_string(),
                phase: format!("{:?}", v.phase),
                done,
                total,
                finished_ok: v.phase == VolumePhase::Completed,
                note: note(&v.reason, &v.message).or(waiting),
            }
        })
        .collect();
    View {
        kind: "backup",
        name: format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()),
        phase: st
            .phase
            .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")),
        outcome: st.phase.and_then(Outcome::of_backup),
        reason: st
            .reason
            .or_else(|| stalled(&st.conditions).map(|c| c.reason.clone())),
        message: st
            .message
            .or_else(|| stalled(&st.conditions).map(|c| c.message.clone())),
        volumes,
    }
}

/// The view of restore `r`; `downloads` are its DataDownloads.
pub fn restore_view(r: &Restore, downloads: &[DataDownload]) -> View {
    let st = r.status.clone().unwrap_or_default();
    let volumes = st
        .volumes
        .iter()
        .map(|v| {
            let live = v
                .data_download
                .as_ref()
                .and_then(|n| downloads.iter().find(|d| &d.name_any() == n))
                .and_then(|d| d.status.as_ref());
            let (mut done, mut total) = (v.bytes_done, v.bytes_total);
            if let Some(l) = live {
                done = done.max(l.bytes_done);
                total = total.max(l.bytes_total);
            }
            let from = v.from.map(|f| format!(" from {f:?}")).unwrap_or_default();
            VolumeView {
                claim: v.target.to_string(),
                phase: format!("{:?}{from}", v.phase),
                done,
                total,
                finished_ok: v.phase == holdfast_api::backup::TransferPhase::Completed,
                note: note(&v.reason, &v.message).or_else(|| live.and_then(transfer_note)),
            }
        })
        .collect();
    View {
        kind: "restore",
        name: format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()),
        phase: st
            .phase
            .map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")),
        outcome: st.phase.and_then(Outcome::of_restore),
        reason: st
            .reason
            .or_else(|| stalled(&st.conditions).map(|c| c.reason.clone())),
        message: st
            .message
            .or_else(|| stalled(&st.conditions).map(|c| c.message.clone())),
        volumes,
    }
}

/// Overall bytes and volumes of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub done: u64,
    pub total: u64,
    pub volumes_done: usize,
    pub volumes_total: usize,
    pub percent: u8,
}

impl View {
    pub fn totals(&self) -> Totals {
        let done = self.volumes.iter().map(|v| v.done.min(v.total)).sum();
        let total = self.volumes.iter().map(|v| v.total).sum();
        let volumes_done = self.volumes.iter().filter(|v| is_final(&v.phase)).count();
        let volumes_total = self.volumes.len();
        // Bytes say how far it is only when every volume still running knows its total.
        let bytes_known = self
            .volumes
            .iter()
            .all(|v| v.total > 0 || is_final(&v.phase));
        let percent = if self.outcome == Some(Outcome::Completed) {
            100
        } else if total > 0 && bytes_known {
            percent(done, total)
        } else if volumes_total > 0 {
            percent(volumes_done as u64, volumes_total as u64)
        } else {
            0
        };
        Totals {
            done,
            total,
            volumes_done,
            volumes_total,
            percent,
        }
    }
}

fn is_final(phase: &str) -> bool {
    ["Completed", "Failed", "Skipped", "Cancelled"]
        .iter()
        .any(|p| phase.starts_with(p))
}

/// `done` of `total` in whole percent (0 when total is 0).
pub fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    ((u128::from(done.min(total)) * 100) / u128::from(total)) as u8
}

/// A bar of `width` cells for `pct` percent: `[#######-------]`.
pub fn bar(pct: u8, width: usize) -> String {
    let filled = usize::from(pct.min(100)) * width / 100;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Bytes for people: `512 B`, `4.0 MiB`.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds for people: `42s`, `3m05s`, `2h10m`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// One line of a progress frame: a key that stays the same while the line changes (for the
/// plain output) and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: String,
    pub text: String,
}

const BAR: usize = 24;

/// `  done / total`, or nothing while no byte count is known (snapshots only, not started).
fn bytes(done: u64, total: u64) -> String {
    if total == 0 {
        String::new()
    } else {
        format!("  {} / {}", human(done), human(total))
    }
}

/// The progress frame of a view: the overall line, then one line per volume.
pub fn frame(v: &View) -> Vec<Line> {
    let t = v.totals();
    let state = match (&v.outcome, &v.reason) {
        (None, Some(r)) if v.phase == "Pending" || v.volumes.is_empty() => {
            format!("{} ({r})", v.phase)
        }
        _ => v.phase.clone(),
    };
    let mut lines = vec![Line {
        key: v.name.clone(),
        text: format!(
            "{} {}  {state}  volumes {}/{}  {} {:>3}%{}",
            v.kind,
            v.name,
            t.volumes_done,
            t.volumes_total,
            bar(t.percent, BAR),
            t.percent,
            bytes(t.done, t.total)
        ),
    }];
    for vol in &v.volumes {
        let pct = if vol.total > 0 {
            percent(vol.done, vol.total)
        } else if vol.finished_ok {
            100
        } else {
            0
        };
        let note = vol
            .note
            .as_ref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        lines.push(Line {
            key: vol.claim.clone(),
            text: format!(
                "  {}  {}  {} {pct:>3}%{}{note}",
                vol.claim,
                vol.phase,
                bar(pct, BAR / 2),
                bytes(vol.done, vol.total)
            ),
        });
    }
    lines
}

/// Text that replaces the previously drawn frame of `previous` lines on a terminal with
/// `lines`, each cut to `width` columns (so no line wraps and the redraw stays in place).
pub fn redraw(previous: usize, lines: &[Line], width: usize) -> String {
    let mut out = String::new();
    if previous > 0 {
        // Up to the first line of the old frame, then clear to the end of the screen.
        out.push_str(&format!("\x1b[{previous}A\r\x1b[J"));
    }
    for l in lines {
        out.extend(l.text.chars().take(width.max(20)));
        out.push('\n');
    }
    out
}

/// The lines to print when stdout is not a terminal: those of `next` whose text differs from
/// the last printed line with the same key. Updates `printed`.
pub fn changed_lines(printed: &mut Vec<Line>, next: &[Line]) -> Vec<String> {
    let mut out = Vec::new();
    for l in next {
        match printed.iter_mut().find(|p| p.key == l.key) {
            Some(p) if p.text == l.text => {}
            Some(p) => {
                p.text = l.text.clone();
                out.push(l.text.clone());
            }
            None => {
                printed.push(l.clone());
                out.push(l.text.clone());
            }
        }
    }
    out
}

/// The closing words of `--wait`: what happened and, if it did not complete, why.
pub fn verdict(v: &View) -> String {
    let Some(outcome) = v.outcome else {
        return format!("{} {} is {}", v.kind, v.name, v.phase);
    };
    if outcome == Outcome::Deleted {
        return format!("{} {} was deleted while waiting", v.kind, v.name);
    }
    let mut out = format!("{} {} {}", v.kind, v.name, v.phase);
    if outcome != Outcome::Completed {
        if let Some(n) = note(&v.reason, &v.message) {
            out.push_str(&format!(": {n}"));
        }
        for vol in &v.volumes {
            if !vol.finished_ok {
                let why = vol.note.as_deref().unwrap_or("no reason given");
                out.push_str(&format!("\n  volume {} {}: {why}", vol.claim, vol.phase));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(status: serde_json::Value) -> Backup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "full", "namespace": "ops"},
            "spec": {}, "status": status
        }))
        .expect("backup")
    }

    fn upload(name: &str, done: u64, total: u64) -> DataUpload {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "DataUpload",
            "metadata": {"name": name, "namespace": "ops"},
            "spec": {"backup": {"namespace": "ops", "name": "full"}, "pvc": {"namespace": "shop", "name": "a"},
                     "storageLocation": "primary", "repository": "shop"},
            "status": {"phase": "InProgress", "bytesDone": done, "bytesTotal": total}
        }))
        .expect("upload")
    }

    fn running() -> Backup {
        backup(serde_json::json!({
            "phase": "InProgress",
            "volumes": [
                {"pvc": {"namespace": "shop", "name": "a"}, "phase": "Copying",
                 "copy": {"dataUpload": "up-a", "bytesDone": 1048576, "bytesTotal": 4194304}},
                {"pvc": {"namespace": "shop", "name": "b"}, "phase": "Completed",
                 "copy": {"dataUpload": "up-b", "bytesDone": 4194304, "bytesTotal": 4194304, "snapshotId": "x"}}
            ]
        }))
    }

    #[test]
    fn progress_comes_from_the_backup_and_its_fresher_uploads() {
        let v = backup_view(&running(), &[upload("up-a", 3 << 20, 4 << 20)]);
        let t = v.totals();
        assert_eq!((t.done, t.total), (7 << 20, 8 << 20));
        assert_eq!((t.volumes_done, t.volumes_total, t.percent), (1, 2, 87));
        let f = frame(&v);
        assert_eq!(f.len(), 3);
        assert_eq!(
            f[0].text,
            format!(
                "backup ops/full  InProgress  volumes 1/2  {}  87%  7.0 MiB / 8.0 MiB",
                bar(87, 24)
            )
        );
        assert_eq!(
            f[1].text,
            "  shop/a  Copying  [#########---]  75%  3.0 MiB / 4.0 MiB"
        );
        assert_eq!(v.outcome, None);
    }

    #[test]
    fn a_volume_without_a_total_yet_keeps_the_percentage_by_volumes() {
        let b = backup(serde_json::json!({
            "phase": "InProgress",
            "volumes": [
                {"pvc": {"namespace": "shop", "name": "a"}, "phase": "Copying",
                 "copy": {"dataUpload": "up-a"}},
                {"pvc": {"namespace": "shop", "name": "b"}, "phase": "Completed",
                 "copy": {"dataUpload": "up-b", "bytesDone": 4194304, "bytesTotal": 4194304}}
            ]
        }));
        let t = backup_view(&b, &[]).totals();
        assert_eq!((t.done, t.total, t.percent), (4 << 20, 4 << 20, 50));
    }

    #[test]
    fn bars_and_bytes() {
        assert_eq!(bar(0, 10), "[----------]");
        assert_eq!(bar(50, 10), "[#####-----]");
        assert_eq!(bar(100, 10), "[##########]");
        assert_eq!(bar(250, 4), "[####]");
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(5, 0), 0);
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human_secs(42), "42s");
        assert_eq!(human_secs(185), "3m05s");
        assert_eq!(human_secs(7800), "2h10m");
    }

    #[test]
    fn a_terminal_gets_the_frame_redrawn_in_place() {
        let lines = frame(&backup_view(&running(), &[]));
        let first = redraw(0, &lines, 200);
        assert!(!first.contains('\x1b'), "{first:?}");
        assert_eq!(first.lines().count(), 3);
        let again = redraw(3, &lines, 30);
        assert!(again.starts_with("\x1b[3A\r\x1b[J"), "{again:?}");
        assert!(again.lines().skip(1).all(|l| l.chars().count() <= 30));
    }

    #[test]
    fn plain_output_prints_only_lines_that_changed() {
        let mut printed = Vec::new();
        let a = frame(&backup_view(&running(), &[]));
        assert_eq!(changed_lines(&mut printed, &a).len(), 3);
        assert!(changed_lines(&mut printed, &a).is_empty());
        let b = frame(&backup_view(
            &running(),
            &[upload("up-a", 2 << 20, 4 << 20)],
        ));
        let out = changed_lines(&mut printed, &b);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[1].starts_with("  shop/a  Copying"), "{out:?}");
        assert!(out.iter().all(|l| !l.contains('\x1b') && !l.contains('\r')));
    }

    #[test]
    fn outcomes_give_exit_codes_and_the_reason() {
        let failed = backup(
            serde_json::json!({"phase": "Failed", "reason": "LocationNotFound",
            "message": "BackupStorageLocation nope does not exist"}),
        );
        let v = backup_view(&failed, &[]);
        assert_eq!(v.outcome.map(Outcome::exit_code), Some(3));
        assert_eq!(
            verdict(&v),
            "backup ops/full Failed: LocationNotFound: BackupStorageLocation nope does not exist"
        );
        assert!(frame(&v)[0].text.contains("Failed"));
        let partly = backup(
            serde_json::json!({"phase": "PartiallyFailed", "reason": "VolumesFailed",
            "volumes": [{"pvc": {"namespace": "shop", "name": "a"}, "phase": "Failed",
                         "reason": "NoSnapshotClass", "message": "no class"}]}),
        );
        let v = backup_view(&partly, &[]);
        assert_eq!(v.outcome.map(Outcome::exit_code), Some(4));
        assert!(
            verdict(&v).ends_with("volume shop/a Failed: NoSnapshotClass: no class"),
            "{}",
            verdict(&v)
        );
        let done = backup(serde_json::json!({"phase": "Completed", "volumes": [
            {"pvc": {"namespace": "shop", "name": "a"}, "phase": "Completed", "snapshot": {"name": "s", "readyToUse": true}}]}));
        let v = backup_view(&done, &[]);
        assert_eq!(v.outcome.map(Outcome::exit_code), Some(0));
        assert_eq!(v.totals().percent, 100);
        assert_eq!(
            frame(&v)[1].text,
            "  shop/a  Completed  [############] 100%",
            "a snapshot has no byte count"
        );
        let pending =
            backup(serde_json::json!({"phase": "Pending", "reason": "LocationUnavailable"}));
        assert!(
            frame(&backup_view(&pending, &[]))[0]
                .text
                .contains("Pending (LocationUnavailable)")
        );
    }

    #[test]
    fn without_a_reason_the_stalled_condition_says_why() {
        let b = backup(serde_json::json!({"phase": "Failed", "conditions": [
            {"type": "Ready", "status": "False", "reason": "Failed", "message": "m1",
             "lastTransitionTime": "2026-12-07T01:00:00Z"},
            {"type": "Stalled", "status": "True", "reason": "AccessDenied", "message": "fix the policy",
             "lastTransitionTime": "2026-12-07T01:00:00Z"}]}));
        assert_eq!(
            verdict(&backup_view(&b, &[])),
            "backup ops/full Failed: AccessDenied: fix the policy"
        );
    }

    #[test]
    fn restore_volumes_show_their_source_and_bytes() {
        let r: Restore = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": "back", "namespace": "ops"},
            "spec": {"source": {"backup": "full"}},
            "status": {"phase": "Completed", "volumes": [
                {"source": {"namespace": "shop", "name": "a"}, "target": {"namespace": "shop2", "name": "a"},
                 "from": "Copy", "phase": "Completed", "dataDownload": "dd", "bytesDone": 10, "bytesTotal": 10}]}
        }))
        .expect("restore");
        let v = restore_view(&r, &[]);
        assert_eq!(v.outcome, Some(Outcome::Completed));
        let f = frame(&v);
        assert!(f[1].text.contains("shop2/a  Completed from Copy"), "{f:?}");
        assert!(f[1].text.contains("100%"), "{f:?}");
    }
}
