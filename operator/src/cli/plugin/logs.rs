//! `logs backup/NAME` and `logs restore/NAME`: the logs of the mover pods of a Backup's
//! DataUploads or a Restore's DataDownloads, each line prefixed with its pod; `-f` follows
//! them while it runs. Talks to the cluster.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, LogParams};

use super::Error;
use super::conn::{Conn, Session};
use super::describe::target;
use super::watch::{self, Snapshot, Target};

/// The mover container's name in every mover pod.
const CONTAINER: &str = "mover";

/// `logs KIND/NAME` or `logs KIND NAME`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// `backup/NAME` or `restore/NAME` (or `backup`/`restore` followed by NAME).
    pub kind: String,
    /// Name of the object (when not given as KIND/NAME).
    pub name: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    /// Follow: stream each mover pod's log as it starts, until the backup or restore ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines from the end of each log (default: all).
    #[arg(long)]
    pub tail: Option<i64>,
}

/// A transfer of the target and where its mover pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mover {
    /// `DataUpload NAME` or `DataDownload NAME`.
    transfer: String,
    phase: String,
    namespace: String,
    pod: String,
}

fn movers(snap: &Snapshot) -> Vec<Mover> {
    match snap {
        Snapshot::Backup(_, uploads) => uploads
            .iter()
            .map(|u| {
                let (namespace, pod) = watch::upload_pod(u);
                Mover {
                    transfer: format!("DataUpload {}", u.name_any()),
                    phase: format!("{:?}", u.status.clone().unwrap_or_default().phase),
                    namespace,
                    pod,
                }
            })
            .collect(),
        Snapshot::Restore(_, downloads) => downloads
            .iter()
            .map(|d| {
                let (namespace, pod) = watch::download_pod(d);
                Mover {
                    transfer: format!("DataDownload {}", d.name_any()),
                    phase: format!("{:?}", d.status.clone().unwrap_or_default().phase),
                    namespace,
                    pod,
                }
            })
            .collect(),
    }
}

/// Whether the transfer has ended (its pod is then deleted).
fn finished(m: &Mover) -> bool {
    ["Completed", "Failed", "Cancelled"].contains(&m.phase.as_str())
}

/// `line` of pod `pod`'s log as printed.
pub fn prefixed(pod: &str, line: &str) -> String {
    format!("[{pod}] {line}")
}

fn gone(t: &Target, m: &Mover) -> String {
    format!(
        "pod {}/{} of {} ({}) is gone: mover pods are deleted when their transfer ends; `kubectl holdfast logs {}/{} -f` shows them while it runs, `kubectl holdfast describe {} {}` shows the result",
        m.namespace,
        m.pod,
        m.transfer,
        m.phase,
        t.kind(),
        t.name(),
        t.kind(),
        t.name()
    )
}

/// Whether the mover container has started (its log can be read).
fn started(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.name == CONTAINER
                && c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
}

async fn read_snapshot(s: &Session, t: &Target) -> Result<Snapshot, Error> {
    watch::read(s, t)
        .await?
        .ok_or_else(|| watch::not_found(s, t))
}

/// Prints the logs of the movers that exist now.
async fn once(s: &Session, t: &Target, tail: Option<i64>) -> Result<ExitCode, Error> {
    let snap = read_snapshot(s, t).await?;
    let movers = movers(&snap);
    if movers.is_empty() {
        return Err(Error::Missing(format!(
            "{} {}/{} has no mover pods: it copied no volume{}",
            t.kind(),
            s.namespace,
            t.name(),
            if snap.view().outcome.is_none() {
                " yet (`-f` waits for them)"
            } else {
                ""
            }
        )));
    }
    let mut shown = 0;
    for m in &movers {
        let pods: Api<Pod> = Api::namespaced(s.client.clone(), &m.namespace);
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            tail_lines: tail,
            ..Default::default()
        };
        match pods.logs(&m.pod, &lp).await {
            Ok(text) => {
                shown += 1;
                for line in text.lines() {
                    println!("{}", prefixed(&m.pod, line));
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 && finished(m) => eprintln!("{}", gone(t, m)),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 400 => eprintln!(
                "pod {}/{} of {} ({}) has not started yet; `-f` waits for it",
                m.namespace, m.pod, m.transfer, m.phase
            ),
            Err(e) => eprintln!(
                "pod {}/{} of {}: {}",
                m.namespace,
                m.pod,
                m.transfer,
                Error::kube("read log")(e)
            ),
        }
    }
    if shown == 0 {
        return Err(Error::Missing(format!(
            "no mover pod of {} {}/{} is left to read",
            t.kind(),
            s.namespace,
            t.name()
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams one pod's log, each line prefixed, until it ends.
async fn stream(client: kube::Client, m: Mover, tail: Option<i64>) {
    let pods: Api<Pod> = Api::namespaced(client, &m.namespace);
    let lp = LogParams {
        container: Some(CONTAINER.into()),
        follow: true,
        tail_lines: tail,
        ..Default::default()
    };
    match pods.log_stream(&m.pod, &lp).await {
        Ok(reader) => {
            let mut lines = reader.lines();
            while let Some(line) = lines.next().await {
                match line {
                    Ok(l) => println!("{}", prefixed(&m.pod, &l)),
                    Err(e) => {
                        eprintln!("pod {}/{}: log stream ended: {e}", m.namespace, m.pod);
                        break;
                    }
                }
            }
        }
        Err(e) => eprintln!(
            "pod {}/{} of {}: {}",
            m.namespace,
            m.pod,
            m.transfer,
            Error::kube("stream log")(e)
        ),
    }
}

/// Follows every mover as it starts until the target ends and every stream is done.
async fn follow(s: &Session, t: &Target, tail: Option<i64>) -> Result<ExitCode, Error> {
    let mut handled: BTreeSet<String> = BTreeSet::new();
    let mut tasks = Vec::new();
    loop {
        let snap = read_snapshot(s, t).await?;
        let ended = snap.view().outcome.is_some();
        for m in movers(&snap) {
            if handled.contains(&m.pod) {
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(s.client.clone(), &m.namespace);
            let pod = pods
                .get_opt(&m.pod)
                .await
                .map_err(Error::kube(format!("get pod {}/{}", m.namespace, m.pod)))?;
            match pod {
                Some(p) if started(&p) => {
                    handled.insert(m.pod.clone());
                    tasks.push(tokio::spawn(stream(s.client.clone(), m, tail)));
                }
                None if finished(&m) => {
                    handled.insert(m.pod.clone());
                    eprintln!("{}", gone(t, &m));
                }
                // Not created or not started yet: look again.
                _ => {}
            }
        }
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    if handled.is_empty() {
        eprintln!(
            "{} {}/{} ended without mover pods (no volume was copied)",
            t.kind(),
            s.namespace,
            t.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(a: &LogsArgs) -> Result<ExitCode, Error> {
    let t = target(&a.kind, a.name.as_deref())?;
    let session = a.conn.connect().await?;
    if a.follow {
        follow(&session, &t, a.tail).await
    } else {
        once(&session, &t, a.tail).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_their_pod() {
        assert_eq!(prefixed("up-1", "hello"), "[up-1] hello");
    }

    #[test]
    fn a_started_container_has_a_log() {
        let pod = |state: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({"status": {"containerStatuses": [
                {"name": "mover", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}}))
            .expect("pod")
        };
        assert!(!started(&pod(
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}})
        )));
        assert!(started(&pod(serde_json::json!({"running": {}}))));
        assert!(started(&pod(
            serde_json::json!({"terminated": {"exitCode": 0}})
        )));
    }
}
