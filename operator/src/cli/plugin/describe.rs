//! `describe backup|restore NAME [--watch]`: the text of a Backup or Restore (pure, from its
//! status and transfers), printed once or followed live until it ends.

use std::process::ExitCode;

use holdfast_api::{Backup, DataDownload, DataUpload, Restore};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::conn::Conn;
use super::progress::{self, Outcome, View};
use super::watch::{self, Snapshot, Target};
use super::{EXIT_CODES, Error};

/// `describe KIND NAME` or `describe KIND/NAME`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = EXIT_CODES)]
pub struct DescribeArgs {
    /// `backup` or `restore` (or `backup/NAME`, `restore/NAME`).
    pub kind: String,
    /// Name of the object (when not given as KIND/NAME).
    pub name: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    /// Follow it until it ends, with live progress; the exit code then says how it ended.
    #[arg(short, long)]
    pub watch: bool,
}

/// `backup describe NAME`.
#[derive(clap::Args, Debug, Clone)]
pub struct DescribeOne {
    /// Name of the object.
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
    /// Follow it until it ends, with live progress; the exit code then says how it ended.
    #[arg(short, long)]
    pub watch: bool,
}

/// Which object `kind` and `name` (or `kind` alone as `kind/name`) mean.
pub fn target(kind: &str, name: Option<&str>) -> Result<Target, Error> {
    let (kind, name) = match (kind.split_once('/'), name) {
        (Some((k, n)), None) => (k, n),
        (None, Some(n)) => (kind, n),
        (Some(_), Some(_)) => {
            return Err(Error::Missing(format!(
                "give the object once: `{kind}` or `{} NAME`, not both",
                kind.split('/').next().unwrap_or_default()
            )));
        }
        (None, None) => {
            return Err(Error::Missing(format!(
                "which {kind}? give its name: `{kind} NAME` or `{kind}/NAME`"
            )));
        }
    };
    if name.is_empty() {
        return Err(Error::Missing(format!("{kind}/: the name is empty")));
    }
    match kind.to_ascii_lowercase().as_str() {
        "backup" | "backups" | "hfb" | "backup.holdfast.dev" | "backups.holdfast.dev" => {
            Ok(Target::Backup(name.to_string()))
        }
        "restore" | "restores" | "hfr" | "restore.holdfast.dev" | "restores.holdfast.dev" => {
            Ok(Target::Restore(name.to_string()))
        }
        other => Err(Error::Missing(format!(
            "{other:?} is not a kind this command knows; use backup/NAME or restore/NAME"
        ))),
    }
}

fn time(t: &Option<Time>) -> Option<String> {
    t.as_ref()
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn field(out: &mut String, label: &str, value: Option<String>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        out.push_str(&format!("{:<13}{v}\n", format!("{label}:")));
    }
}

fn took(start: &Option<Time>, end: &Option<Time>) -> Option<String> {
    let (s, e) = (start.as_ref()?, end.as_ref()?);
    let secs = e.0.as_second() - s.0.as_second();
    Some(format!(
        "{} (took {})",
        time(end)?,
        progress::human_secs(secs.max(0) as u64)
    ))
}

fn conditions(out: &mut String, conds: &[Condition]) {
    if conds.is_empty() {
        return;
    }
    out.push_str("Conditions:\n");
    for c in conds {
        let line = format!(
            "  {:<12} {:<6} {:<16} {}",
            c.type_, c.status, c.reason, c.message
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn progress_block(out: &mut String, v: &View) {
    let lines = progress::frame(v);
    if let Some((first, rest)) = lines.split_first() {
        let overall = first
            .text
            .split_once(&format!("  {}", v.phase))
            .map_or(first.text.clone(), |(_, r)| format!("{}{r}", v.phase));
        field(out, "Progress", Some(overall));
        if !rest.is_empty() {
            out.push_str("Volumes:\n");
            for l in rest {
                out.push_str(&l.text);
                out.push('\n');
            }
        }
    }
}

/// The text of `describe backup`. Pure.
pub fn backup_text(b: &Backup, uploads: &[DataUpload]) -> String {
    let st = b.status.clone().unwrap_or_default();
    let v = progress::backup_view(b, uploads);
    let mut out = String::new();
    field(&mut out, "Name", Some(b.name_any()));
    field(&mut out, "Namespace", b.namespace());
    field(&mut out, "Phase", Some(v.phase.clone()));
    field(&mut out, "Reason", st.reason.clone());
    field(&mut out, "Message", st.message.clone());
    field(
        &mut out,
        "Location",
        st.storage_location
            .clone()
            .or(b.spec.storage_location.clone()),
    );
    field(&mut out, "Namespaces", Some(st.namespaces.join(", ")));
    field(&mut out, "Mode", Some(format!("{:?}", b.spec.volumes.mode)));
    field(&mut out, "Started", time(&st.start_time));
    field(
        &mut out,
        "Completed",
        took(&st.start_time, &st.completion_time).or(time(&st.completion_time)),
    );
    field(&mut out, "Expires", time(&st.expiration));
    field(
        &mut out,
        "Objects",
        st.items_backed_up
            .map(|i| format!("{i} ({} warnings)", st.warnings.unwrap_or(0))),
    );
    field(&mut out, "Operator", st.operator_namespace.clone());
    progress_block(&mut out, &v);
    for vol in &st.volumes {
        let mut parts = Vec::new();
        if let Some(s) = &vol.snapshot {
            parts.push(format!(
                "snapshot {}{}",
                s.name,
                if s.ready_to_use { " (ready)" } else { "" }
            ));
        }
        if let Some(c) = &vol.copy {
            let mut p = format!("upload {}", c.data_upload);
            if c.bytes_uploaded > 0 {
                p.push_str(&format!(", {} stored", progress::human(c.bytes_uploaded)));
            }
            if let Some(id) = &c.snapshot_id {
                p.push_str(&format!(", repository snapshot {}", &id[..id.len().min(8)]));
            }
            parts.push(p);
        }
        if !parts.is_empty() {
            out.push_str(&format!("    {}: {}\n", vol.pvc, parts.join("; ")));
        }
    }
    conditions(&mut out, &st.conditions);
    out
}

/// The text of `describe restore`. Pure.
pub fn restore_text(r: &Restore, downloads: &[DataDownload]) -> String {
    let st = r.status.clone().unwrap_or_default();
    let v = progress::restore_view(r, downloads);
    let src = &r.spec.source;
    let source = match (&src.backup, &src.schedule) {
        (Some(b), _) => format!("backup {b}"),
        (None, Some(s)) => match time(&src.point_in_time) {
            Some(t) => format!("schedule {s}, at or before {t}"),
            None => format!("schedule {s}, newest"),
        },
        (None, None) => String::new(),
    };
    let mut out = String::new();
    field(&mut out, "Name", Some(r.name_any()));
    field(&mut out, "Namespace", r.namespace());
    field(&mut out, "Phase", Some(v.phase.clone()));
    field(&mut out, "Reason", st.reason.clone());
    field(&mut out, "Message", st.message.clone());
    field(&mut out, "Source", Some(source));
    field(&mut out, "Backup", st.backup.clone());
    field(
        &mut out,
        "Mapping",
        Some(
            r.spec
                .namespace_mapping
                .iter()
                .map(|(a, b)| format!("{a} → {b}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    );
    field(&mut out, "Started", time(&st.start_time));
    field(
        &mut out,
        "Completed",
        took(&st.start_time, &st.completion_time).or(time(&st.completion_time)),
    );
    field(
        &mut out,
        "Objects",
        st.items_restored
            .map(|i| format!("{i} ({} warnings)", st.warnings.unwrap_or(0))),
    );
    field(&mut out, "Operator", st.operator_namespace.clone());
    progress_block(&mut out, &v);
    for vol in &st.volumes {
        if let Some(d) = &vol.data_download {
            out.push_str(&format!(
                "    {}: from {} via download {d}\n",
                vol.target, vol.source
            ));
        }
    }
    conditions(&mut out, &st.conditions);
    out
}

fn text(s: &Snapshot) -> String {
    match s {
        Snapshot::Backup(b, u) => backup_text(b, u),
        Snapshot::Restore(r, d) => restore_text(r, d),
    }
}

async fn show(t: Target, conn: &Conn, follow: bool) -> Result<ExitCode, Error> {
    let session = conn.connect().await?;
    let Some(snap) = watch::read(&session, &t).await? else {
        return Err(watch::not_found(&session, &t));
    };
    if !follow {
        print!("{}", text(&snap));
        return Ok(ExitCode::SUCCESS);
    }
    if snap.view().outcome.is_none() {
        let view = watch::follow(&session, &t, None).await?;
        let outcome = view.outcome.unwrap_or(Outcome::Deleted);
        if outcome == Outcome::Deleted {
            eprintln!("{}", progress::verdict(&view));
            return Ok(ExitCode::from(outcome.exit_code()));
        }
    }
    // Ended: the full text once more, with the final numbers.
    let Some(snap) = watch::read(&session, &t).await? else {
        return Err(watch::not_found(&session, &t));
    };
    print!("{}", text(&snap));
    let outcome = snap.view().outcome.unwrap_or(Outcome::Deleted);
    Ok(ExitCode::from(outcome.exit_code()))
}

/// `describe KIND NAME`.
pub async fn run(a: &DescribeArgs) -> Result<ExitCode, Error> {
    show(target(&a.kind, a.name.as_deref())?, &a.conn, a.watch).await
}

/// `backup describe NAME` / `restore describe NAME`.
pub async fn one(a: &DescribeOne, kind: &str) -> Result<ExitCode, Error> {
    show(target(kind, Some(&a.name))?, &a.conn, a.watch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_as_kubectl_names_them() {
        assert_eq!(
            target("backup/full", None).expect("slash"),
            Target::Backup("full".into())
        );
        assert_eq!(
            target("hfr", Some("back")).expect("short name"),
            Target::Restore("back".into())
        );
        assert!(target("backup", None).is_err());
        assert!(
            target("pod/x", None)
                .expect_err("kind")
                .to_string()
                .contains("backup/NAME")
        );
        assert!(target("backup/a", Some("b")).is_err());
    }

    #[test]
    fn a_backup_described() {
        let b: Backup = serde_json::from_value(serde_json::json!({
            "apiVersion": "holdfast.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "full", "namespace": "ops"},
            "spec": {"includedNamespaces": ["shop"]},
            "status": {"phase": "Completed", "storageLocation": "primary", "namespaces": ["shop"],
                "startTime": "2026-12-07T01:00:00Z", "completionTime": "2026-12-07T01:00:42Z",
                "itemsBackedUp": 9, "warnings": 0,
                "volumes": [{"pvc": {"namespace": "shop", "name": "data"}, "phase": "Completed",
                    "snapshot": {"name": "snap-1", "readyToUse": true},
                    "copy": {"dataUpload": "up-1", "snapshotId": "0123456789abcdef", "bytesDone": 4194304,
                             "bytesTotal": 4194304, "bytesUploaded": 2097152}}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Completed", "message": "done",
                    "lastTransitionTime": "2026-12-07T01:00:42Z"}]}
        }))
        .expect("backup");
        let t = backup_text(&b, &[]);
        for want in [
            "Name:        full\n",
            "Phase:       Completed\n",
            "Location:    primary\n",
            "Completed:   2026-12-07T01:00:42Z (took 42s)\n",
            "Objects:     9 (0 warnings)\n",
            "Progress:    Completed  volumes 1/1  [########################] 100%  4.0 MiB / 4.0 MiB\n",
            "  shop/data  Completed  [############] 100%  4.0 MiB / 4.0 MiB\n",
            "    shop/data: snapshot snap-1 (ready); upload up-1, 2.0 MiB stored, repository snapshot 01234567\n",
            "  Ready        True   Completed        done\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }
}
