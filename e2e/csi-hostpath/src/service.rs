//! gRPC glue: the Identity, Controller, GroupController and Node services over a unix socket.
//! Each call runs the synchronous [`Driver`] method on the blocking pool and is
//! logged like the Go driver (`<method> <request> -> <response | error>`;
//! successful Probe/GetPlugin* calls are not logged). Secrets are redacted.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::csi;
use crate::driver::Driver;

#[derive(Clone)]
pub struct CsiService(Arc<Driver>);

impl CsiService {
    pub fn new(driver: Arc<Driver>) -> Self {
        CsiService(driver)
    }

    async fn call<Req, Resp>(
        &self,
        method: &'static str,
        req: Request<Req>,
        f: fn(&Driver, &Req) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Redact + Debug + Send + 'static,
        Resp: Debug + Send + 'static,
    {
        let req = req.into_inner();
        let d = self.0.clone();
        let (req, res) = tokio::task::spawn_blocking(move || {
            let res = f(&d, &req);
            (req, res)
        })
        .await
        .map_err(|e| Status::internal(format!("{method}: {e}")))?;
        match &res {
            Err(e) => tracing::warn!(
                "{method} {:?} -> error: rpc error: code = {:?} desc = {}",
                req.redacted(),
                e.code(),
                e.message()
            ),
            Ok(resp) if !method.contains("Probe") && !method.contains("GetPlugin") => {
                tracing::info!("{method} {:?} -> {:?}", req.redacted(), resp)
            }
            Ok(_) => {}
        }
        res.map(Response::new)
    }
}

/// A copy of a request that is safe to log.
pub trait Redact: Sized {
    fn redacted(&self) -> Self;
}

macro_rules! redact {
    (plain: $($p:ty),*; secrets: $($s:ty),*) => {
        $(impl Redact for $p { fn redacted(&self) -> Self { self.clone() } })*
        $(impl Redact for $s {
            fn redacted(&self) -> Self {
                let mut r = self.clone();
                r.secrets.values_mut().for_each(|v| *v = "<redacted>".into());
                r
            }
        })*
    };
}

redact!(
    plain: csi::GetPluginInfoRequest, csi::GetPluginCapabilitiesRequest, csi::ProbeRequest,
        csi::ControllerGetCapabilitiesRequest, csi::NodeGetInfoRequest, csi::NodeGetCapabilitiesRequest,
        csi::NodeUnpublishVolumeRequest, csi::GroupControllerGetCapabilitiesRequest;
    secrets: csi::CreateVolumeRequest, csi::DeleteVolumeRequest, csi::ValidateVolumeCapabilitiesRequest,
        csi::CreateSnapshotRequest, csi::DeleteSnapshotRequest, csi::ListSnapshotsRequest, csi::NodePublishVolumeRequest,
        csi::CreateVolumeGroupSnapshotRequest, csi::DeleteVolumeGroupSnapshotRequest,
        csi::GetVolumeGroupSnapshotRequest
);

#[tonic::async_trait]
impl csi::identity_server::Identity for CsiService {
    async fn get_plugin_info(
        &self,
        r: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        self.call("/csi.v1.Identity/GetPluginInfo", r, Driver::get_plugin_info)
            .await
    }
    async fn get_plugin_capabilities(
        &self,
        r: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        self.call(
            "/csi.v1.Identity/GetPluginCapabilities",
            r,
            Driver::get_plugin_capabilities,
        )
        .await
    }
    async fn probe(
        &self,
        r: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        self.call("/csi.v1.Identity/Probe", r, Driver::probe).await
    }
}

#[tonic::async_trait]
impl csi::controller_server::Controller for CsiService {
    async fn create_volume(
        &self,
        r: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        self.call("/csi.v1.Controller/CreateVolume", r, Driver::create_volume)
            .await
    }
    async fn delete_volume(
        &self,
        r: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        self.call("/csi.v1.Controller/DeleteVolume", r, Driver::delete_volume)
            .await
    }
    async fn validate_volume_capabilities(
        &self,
        r: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        self.call(
            "/csi.v1.Controller/ValidateVolumeCapabilities",
            r,
            Driver::validate_volume_capabilities,
        )
        .await
    }
    async fn controller_get_capabilities(
        &self,
        r: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        self.call(
            "/csi.v1.Controller/ControllerGetCapabilities",
            r,
            Driver::controller_get_capabilities,
        )
        .await
    }
    async fn create_snapshot(
        &self,
        r: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        self.call(
            "/csi.v1.Controller/CreateSnapshot",
            r,
            Driver::create_snapshot,
        )
        .await
    }
    async fn delete_snapshot(
        &self,
        r: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        self.call(
            "/csi.v1.Controller/DeleteSnapshot",
            r,
            Driver::delete_snapshot,
        )
        .await
    }
    async fn list_snapshots(
        &self,
        r: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        self.call(
            "/csi.v1.Controller/ListSnapshots",
            r,
            Driver::list_snapshots,
        )
        .await
    }
}

#[tonic::async_trait]
impl csi::group_controller_server::GroupController for CsiService {
    async fn group_controller_get_capabilities(
        &self,
        r: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        self.call(
            "/csi.v1.GroupController/GroupControllerGetCapabilities",
            r,
            Driver::group_controller_get_capabilities,
        )
        .await
    }
    async fn create_volume_group_snapshot(
        &self,
        r: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        self.call(
            "/csi.v1.GroupController/CreateVolumeGroupSnapshot",
            r,
            Driver::create_volume_group_snapshot,
        )
        .await
    }
    async fn delete_volume_group_snapshot(
        &self,
        r: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        self.call(
            "/csi.v1.GroupController/DeleteVolumeGroupSnapshot",
            r,
            Driver::delete_volume_group_snapshot,
        )
        .await
    }
    async fn get_volume_group_snapshot(
        &self,
        r: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        self.call(
            "/csi.v1.GroupController/GetVolumeGroupSnapshot",
            r,
            Driver::get_volume_group_snapshot,
        )
        .await
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for CsiService {
    async fn node_publish_volume(
        &self,
        r: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        self.call(
            "/csi.v1.Node/NodePublishVolume",
            r,
            Driver::node_publish_volume,
        )
        .await
    }
    async fn node_unpublish_volume(
        &self,
        r: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        self.call(
            "/csi.v1.Node/NodeUnpublishVolume",
            r,
            Driver::node_unpublish_volume,
        )
        .await
    }
    async fn node_get_capabilities(
        &self,
        r: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        self.call(
            "/csi.v1.Node/NodeGetCapabilities",
            r,
            Driver::node_get_capabilities,
        )
        .await
    }
    async fn node_get_info(
        &self,
        r: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        self.call("/csi.v1.Node/NodeGetInfo", r, Driver::node_get_info)
            .await
    }
}

/// The socket path of a `unix://PATH` endpoint.
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    match endpoint.strip_prefix("unix://") {
        Some(p) => Ok(PathBuf::from(p)),
        None => anyhow::bail!("endpoint must be unix://PATH, got {endpoint:?}"),
    }
}

/// Binds `sock` (removing a stale socket file, creating its directory 0755).
pub fn bind(sock: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::remove_file(sock);
    if let Some(parent) = sock.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    Ok(UnixListener::bind(sock)?)
}

/// Serves the four CSI services on `listener` until `shutdown` completes.
pub async fn serve(
    driver: Arc<Driver>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let svc = CsiService::new(driver);
    tonic::transport::Server::builder()
        .add_service(csi::identity_server::IdentityServer::new(svc.clone()))
        .add_service(csi::controller_server::ControllerServer::new(svc.clone()))
        .add_service(csi::group_controller_server::GroupControllerServer::new(
            svc.clone(),
        ))
        .add_service(csi::node_server::NodeServer::new(svc))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(
            socket_path("unix://rel.sock").ok(),
            Some(PathBuf::from("rel.sock"))
        );
        assert!(socket_path("/csi/csi.sock").is_err());
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let mut r = csi::CreateVolumeRequest {
            name: "n".into(),
            ..Default::default()
        };
        r.secrets.insert("password".into(), "hunter2".into());
        let shown = format!("{:?}", r.redacted());
        assert!(
            shown.contains("password") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
