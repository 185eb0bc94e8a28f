//! Waits on Backups and Restores reaching a terminal phase, shared by the test binaries.

use std::time::Duration;

use holdfast_api::backup::Backup;
use holdfast_api::restore::{Restore, RestorePhase};
use kube::Client;
use kube::api::Api;

use crate::wait_until;

/// Waits until Backup `ns/name` is in a terminal phase (dumping the namespace on timeout).
pub async fn wait_backup(client: &Client, ns: &str, name: &str, timeout: Duration) -> Backup {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("backup {name} to finish"),
        timeout,
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let b = api.get(name).await.ok()?;
                b.status.as_ref()?.phase.filter(|p| p.is_terminal())?;
                Some(b)
            }
        },
    )
    .await
}

/// Waits until Restore `ns/name` is in a terminal phase (dumping the namespace on timeout).
pub async fn wait_restore(client: &Client, ns: &str, name: &str) -> Restore {
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("restore {name} to finish"),
        Duration::from_secs(300),
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.ok()?;
                let p = r.status.as_ref()?.phase?;
                matches!(
                    p,
                    RestorePhase::Completed
                        | RestorePhase::PartiallyFailed
                        | RestorePhase::Failed
                        | RestorePhase::Cancelled
                )
                .then_some(r)
            }
        },
    )
    .await
}
