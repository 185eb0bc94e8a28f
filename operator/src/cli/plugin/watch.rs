//! Reads a Backup or Restore and its DataUploads/DataDownloads from the cluster, and follows
//! it until it ends: a bar redrawn in place on a terminal, plain lines (one per change)
//! otherwise. Talks to the cluster.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use holdfast_api::{Backup, DataDownload, DataUpload, Restore};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Error;
use super::conn::Session;
use super::progress::{self, Outcome, View};

/// How often a followed object is read again.
const POLL: Duration = Duration::from_millis(500);

/// A Backup or Restore, by name in the session's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Backup(String),
    Restore(String),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Backup(_) => "backup",
            Self::Restore(_) => "restore",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Backup(n) | Self::Restore(n) => n,
        }
    }
}

/// The object as read now, with its transfers.
pub enum Snapshot {
    Backup(Box<Backup>, Vec<DataUpload>),
    Restore(Box<Restore>, Vec<DataDownload>),
}

impl Snapshot {
    pub fn view(&self) -> View {
        match self {
            Self::Backup(b, u) => progress::backup_view(b, u),
            Self::Restore(r, d) => progress::restore_view(r, d),
        }
    }
}

/// Lists `K` in `ns` keeping those `mine` accepts; a transfer list that is forbidden (a
/// tenant cannot read the operator namespace) is empty: the parent's status still has bytes.
async fn transfers<K>(s: &Session, ns: Option<&str>, mine: impl Fn(&K) -> bool) -> Vec<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let Some(ns) = ns else { return Vec::new() };
    let api: Api<K> = Api::namespaced(s.client.clone(), ns);
    match api.list(&ListParams::default()).await {
        Ok(l) => l.items.into_iter().filter(|t| mine(t)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads the target and its transfers; `None` when it does not exist.
pub async fn read(s: &Session, t: &Target) -> Result<Option<Snapshot>, Error> {
    let ns = s.namespace.as_str();
    match t {
        Target::Backup(name) => {
            let api: Api<Backup> = Api::namespaced(s.client.clone(), ns);
            let Some(b) = api
                .get_opt(name)
                .await
                .map_err(Error::kube(format!("get backup {ns}/{name}")))?
            else {
                return Ok(None);
            };
            let opns = b.status.as_ref().and_then(|s| s.operator_namespace.clone());
            let uploads = transfers::<DataUpload>(s, opns.as_deref(), |u| {
                u.spec.backup.namespace == ns && &u.spec.backup.name == name
            })
            .await;
            Ok(Some(Snapshot::Backup(Box::new(b), uploads)))
        }
        Target::Restore(name) => {
            let api: Api<Restore> = Api::namespaced(s.client.clone(), ns);
            let Some(r) = api
                .get_opt(name)
                .await
                .map_err(Error::kube(format!("get restore {ns}/{name}")))?
            else {
                return Ok(None);
            };
            let opns = r.status.as_ref().and_then(|s| s.operator_namespace.clone());
            let downloads = transfers::<DataDownload>(s, opns.as_deref(), |d| {
                d.spec.restore.namespace == ns && &d.spec.restore.name == name
            })
            .await;
            Ok(Some(Snapshot::Restore(Box::new(r), downloads)))
        }
    }
}

/// The error for a target that does not exist.
pub fn not_found(s: &Session, t: &Target) -> Error {
    Error::Missing(format!(
        "{kind} {name} not found in namespace {ns}; `kubectl holdfast {kind} get -n {ns}` lists them (pick the namespace with -n)",
        kind = t.kind(),
        name = t.name(),
        ns = s.namespace
    ))
}

/// Terminal width for the redraw (`$COLUMNS`, else 120).
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c >= 20)
        .unwrap_or(120)
}

/// Follows the target until it ends (or `timeout`), drawing progress on stdout; the last
/// view. Ends with `Outcome::Deleted` when the object goes away.
pub async fn follow(s: &Session, t: &Target, timeout: Option<Duration>) -> Result<View, Error> {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut drawn_lines = Vec::new();
    let mut printed = Vec::new();
    let mut last: Option<View> = None;
    loop {
        let Some(snap) = read(s, t).await? else {
            let Some(mut v) = last else {
                return Err(not_found(s, t));
            };
            v.outcome = Some(Outcome::Deleted);
            return Ok(v);
        };
        let view = snap.view();
        let lines = progress::frame(&view);
        let mut out = std::io::stdout().lock();
        let text = if tty {
            if lines == drawn_lines {
                String::new()
            } else {
                let t = progress::redraw(drawn_lines.len(), &lines, width());
                drawn_lines = lines;
                t
            }
        } else {
            progress::changed_lines(&mut printed, &lines)
                .into_iter()
                .map(|l| l + "\n")
                .collect()
        };
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::Output(e.to_string()))?;
        drop(out);
        if view.outcome.is_some() {
            return Ok(view);
        }
        if let Some(limit) = timeout
            && start.elapsed() > limit
        {
            return Err(Error::Timeout(format!(
                "timed out after {} waiting for {} {}/{} (still {}); it goes on running: `kubectl holdfast describe {} {} -n {} --watch` follows it",
                progress::human_secs(limit.as_secs()),
                t.kind(),
                s.namespace,
                t.name(),
                view.phase,
                t.kind(),
                t.name(),
                s.namespace
            )));
        }
        last = Some(view);
        tokio::time::sleep(POLL).await;
    }
}

/// The name of a transfer's mover pod and its namespace (a live copy's pod runs in the
/// claim's namespace, every other in the operator's).
pub fn upload_pod(u: &DataUpload) -> (String, String) {
    let ns = if u.spec.volume_snapshot.is_none() {
        u.spec.pvc.namespace.clone()
    } else {
        u.namespace().unwrap_or_default()
    };
    let name = u
        .status
        .as_ref()
        .and_then(|s| s.mover_pod.clone())
        .unwrap_or_else(|| u.name_any());
    (ns, name)
}

/// The mover pod of a DataDownload and its namespace (the operator's).
pub fn download_pod(d: &DataDownload) -> (String, String) {
    let name = d
        .status
        .as_ref()
        .and_then(|s| s.mover_pod.clone())
        .unwrap_or_else(|| d.name_any());
    (d.namespace().unwrap_or_default(), name)
}
