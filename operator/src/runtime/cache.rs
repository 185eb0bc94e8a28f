//! Watched caches of the objects that many reconcile passes read (transfers, mover pods,
//! nodes), so that a pass reads memory instead of listing from the API server. Each is a
//! reflector started once by the operator; reconciles wait for it to be filled. Talks to the
//! cluster.

use std::time::Duration;

use futures::StreamExt;
use holdfast_api::transfer::{DataDownload, DataUpload};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::controller::transfer::TRANSFER_LABEL;

/// How long the operator waits for a cache to fill before it goes on without (it then fills
/// in the background; counts read meanwhile may be low).
const FILL_TIMEOUT: Duration = Duration::from_secs(60);

/// The watched caches.
#[derive(Clone)]
pub struct Caches {
    /// DataUploads of the operator namespace.
    pub uploads: Store<DataUpload>,
    /// DataDownloads of the operator namespace.
    pub downloads: Store<DataDownload>,
    /// Mover pods of every namespace (label `holdfast.dev/transfer`), any operator's.
    pub movers: Store<Pod>,
    pub nodes: Store<Node>,
}

impl Caches {
    /// Starts the reflectors and waits until each has listed once.
    pub async fn start(client: &Client, namespace: &str) -> Caches {
        let caches = Caches {
            uploads: watch(
                Api::namespaced(client.clone(), namespace),
                watcher::Config::default(),
            ),
            downloads: watch(
                Api::namespaced(client.clone(), namespace),
                watcher::Config::default(),
            ),
            movers: watch(
                Api::all(client.clone()),
                watcher::Config::default().labels(TRANSFER_LABEL),
            ),
            nodes: watch(Api::all(client.clone()), watcher::Config::default()),
        };
        let ready = async {
            let _ = caches.uploads.wait_until_ready().await;
            let _ = caches.downloads.wait_until_ready().await;
            let _ = caches.movers.wait_until_ready().await;
            let _ = caches.nodes.wait_until_ready().await;
        };
        if tokio::time::timeout(FILL_TIMEOUT, ready).await.is_err() {
            warn!("the watched caches did not fill within {FILL_TIMEOUT:?}; going on");
        }
        caches
    }
}

/// A store kept current by a watch for as long as the process runs.
fn watch<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                warn!(error = %e, kind = %K::kind(&()), "watch of a cache failed; retrying");
            }
        }
    });
    reader
}

/// Drops what a cache never reads: `managedFields` (server-side apply's field ownership), about
/// a third of a small object.
pub fn strip<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}
