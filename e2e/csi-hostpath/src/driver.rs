//! The CSI operations, synchronous and independent of gRPC plumbing. Behaviour,
//! error codes and messages follow the Go stand-in `e2e/tools/hostpathplugin`.
//!
//! One lock serialises every state-changing operation, including the `tar` /
//! `cp` work of snapshots and clones (as in the Go driver): simple and correct
//! for a testbed.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use tonic::Status;

use crate::csi;
use crate::csi::controller_service_capability::rpc::Type as CtrlRpc;
use crate::csi::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use crate::state::{self, SOURCE_SNAPSHOT, SOURCE_VOLUME, Snapshot, State, Volume};

/// Static configuration (the command-line flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub driver_name: String,
    pub node_id: String,
    pub state_dir: PathBuf,
    /// Where snapshot tarballs go (`--snapshotdir`, default: the statedir).
    pub snapshot_dir: PathBuf,
    /// Longest freeze of the statedir's filesystem per group snapshot (`--freezetimeout`).
    pub freeze_timeout: std::time::Duration,
    pub max_volumes_per_node: i64,
    pub version: String,
}

pub struct Driver {
    cfg: Config,
    state: Mutex<State>,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Runs a command; on failure the error names the command, its exit status and
/// its (trimmed) output.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let what = format!("{program} {}", args.join(" "));
    match Command::new(program).args(args).output() {
        Err(e) => Err(format!("{what}: {e}")),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err(format!("{what}: {}: {}", out.status, text.trim()))
        }
    }
}

/// Rejects an empty capability list and block volumes (filesystem only).
pub fn check_caps(caps: &[csi::VolumeCapability]) -> Result<(), Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume capabilities missing"));
    }
    if caps.iter().any(is_block) {
        return Err(Status::invalid_argument(
            "block volumes are not supported by this driver",
        ));
    }
    Ok(())
}

fn is_block(c: &csi::VolumeCapability) -> bool {
    matches!(
        c.access_type,
        Some(csi::volume_capability::AccessType::Block(_))
    )
}

fn ctrl_cap(t: CtrlRpc) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(
            csi::controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

pub fn volume_proto(v: &Volume) -> csi::Volume {
    let content_source = match v.source_kind.as_str() {
        SOURCE_SNAPSHOT => Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: v.source_id.clone(),
        })),
        SOURCE_VOLUME => Some(SourceType::Volume(VolumeSource {
            volume_id: v.source_id.clone(),
        })),
        _ => None,
    }
    .map(|t| csi::VolumeContentSource { r#type: Some(t) });
    csi::Volume {
        volume_id: v.id.clone(),
        capacity_bytes: v.size,
        volume_context: HashMap::new(),
        content_source,
        accessible_topology: vec![],
    }
}

pub fn snapshot_proto(s: &Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume.clone(),
        size_bytes: s.size,
        creation_time: Some(prost_types::Timestamp {
            seconds: s.creation_time.timestamp(),
            nanos: s.creation_time.timestamp_subsec_nanos() as i32,
        }),
        ready_to_use: true,
        group_snapshot_id: s.group_snapshot_id.clone(),
    }
}

/// Whether `path` is a mount point of this process's mount namespace (an exact
/// match of the mount-point field of `/proc/self/mountinfo`).
pub fn is_mount_point(path: &str) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo_has(&info, path)
}

fn mountinfo_has(info: &str, path: &str) -> bool {
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

/// `os.Remove`: a file or an empty directory; absent is fine.
fn remove_path(p: &Path) -> std::io::Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn remove_all(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl Driver {
    /// Creates the state and snapshot directories (0755), loads `state.json`,
    /// and thaws the statedir if a dead driver left it frozen.
    pub fn open(cfg: Config) -> anyhow::Result<Driver> {
        for d in [&cfg.state_dir, &cfg.snapshot_dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(d)?;
        }
        let st = State::load(&cfg.state_dir).map_err(|e| anyhow::anyhow!("load state: {e}"))?;
        let d = Driver {
            cfg,
            state: Mutex::new(st),
        };
        d.thaw_leftover_freeze();
        Ok(d)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- identity

    pub fn get_plugin_info(
        &self,
        _: &csi::GetPluginInfoRequest,
    ) -> Result<csi::GetPluginInfoResponse, Status> {
        Ok(csi::GetPluginInfoResponse {
            name: self.cfg.driver_name.clone(),
            vendor_version: self.cfg.version.clone(),
            manifest: HashMap::new(),
        })
    }

    pub fn get_plugin_capabilities(
        &self,
        _: &csi::GetPluginCapabilitiesRequest,
    ) -> Result<csi::GetPluginCapabilitiesResponse, Status> {
        use csi::plugin_capability::{Service, Type, service};
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        let mut capabilities = vec![svc(service::Type::ControllerService)];
        if self.group_snapshot_support().is_ok() {
            capabilities.push(svc(service::Type::GroupControllerService));
        }
        Ok(csi::GetPluginCapabilitiesResponse { capabilities })
    }

    pub fn probe(&self, _: &csi::ProbeRequest) -> Result<csi::ProbeResponse, Status> {
        Ok(csi::ProbeResponse { ready: None })
    }

    // ---- controller

    pub fn controller_get_capabilities(
        &self,
        _: &csi::ControllerGetCapabilitiesRequest,
    ) -> Result<csi::ControllerGetCapabilitiesResponse, Status> {
        Ok(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                ctrl_cap(CtrlRpc::CreateDeleteVolume),
                ctrl_cap(CtrlRpc::CreateDeleteSnapshot),
                ctrl_cap(CtrlRpc::ListSnapshots),
                ctrl_cap(CtrlRpc::CloneVolume),
            ],
        })
    }

    pub fn create_volume(
        &self,
        req: &csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name missing"));
        }
        check_caps(&req.volume_capabilities)?;
        let (required, limit) = req
            .capacity_range
            .as_ref()
            .map_or((0, 0), |c| (c.required_bytes, c.limit_bytes));
        let size = state::requested_size(required, limit);
        let mut st = self.lock();
        if let Some(v) = st.volume_by_name(&req.name) {
            if v.size < required {
                return Err(Status::already_exists(format!(
                    "volume {} exists with smaller size",
                    v.name
                )));
            }
            return Ok(csi::CreateVolumeResponse {
                volume: Some(volume_proto(v)),
            });
        }
        let id = state::new_id();
        let path = self.cfg.state_dir.join(&id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o777)
            .create(&path)
            .map_err(internal)?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        let mut v = Volume {
            id,
            name: req.name.clone(),
            size,
            path,
            ..Default::default()
        };
        let fill = |v: &mut Volume| -> Result<(), Status> {
            let Some(src) = req
                .volume_content_source
                .as_ref()
                .and_then(|s| s.r#type.as_ref())
            else {
                return Ok(());
            };
            let dest = v.path.to_string_lossy().into_owned();
            match src {
                SourceType::Snapshot(s) => {
                    let snap = st.snapshots.get(&s.snapshot_id).ok_or_else(|| {
                        Status::not_found(format!("snapshot {} not found", s.snapshot_id))
                    })?;
                    if snap.size > size {
                        return Err(Status::out_of_range(format!(
                            "snapshot size {} > requested {size}",
                            snap.size
                        )));
                    }
                    run("tar", &["-C", &dest, "-xzpf", &snap.path.to_string_lossy()])
                        .map_err(Status::internal)?;
                    v.source_kind = SOURCE_SNAPSHOT.into();
                    v.source_id = snap.id.clone();
                }
                SourceType::Volume(s) => {
                    let orig = st.volumes.get(&s.volume_id).ok_or_else(|| {
                        Status::not_found(format!("volume {} not found", s.volume_id))
                    })?;
                    if orig.size > size {
                        return Err(Status::out_of_range(format!(
                            "source size {} > requested {size}",
                            orig.size
                        )));
                    }
                    let from = format!("{}/.", orig.path.to_string_lossy());
                    run("cp", &["-a", &from, &format!("{dest}/")]).map_err(Status::internal)?;
                    v.source_kind = SOURCE_VOLUME.into();
                    v.source_id = orig.id.clone();
                }
            }
            Ok(())
        };
        if let Err(e) = fill(&mut v) {
            let _ = remove_all(&v.path);
            return Err(e);
        }
        st.volumes.insert(v.id.clone(), v.clone());
        if let Err(e) = st.save(&self.cfg.state_dir) {
            st.volumes.remove(&v.id);
            let _ = remove_all(&v.path);
            return Err(internal(e));
        }
        Ok(csi::CreateVolumeResponse {
            volume: Some(volume_proto(&v)),
        })
    }

    pub fn delete_volume(
        &self,
        req: &csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse, Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume id missing"));
        }
        let mut st = self.lock();
        let Some(v) = st.volumes.get(&req.volume_id) else {
            return Ok(csi::DeleteVolumeResponse {});
        };
        remove_all(&v.path).map_err(internal)?;
        st.volumes.remove(&req.volume_id);
        st.save(&self.cfg.state_dir).map_err(internal)?;
        Ok(csi::DeleteVolumeResponse {})
    }

    pub fn validate_volume_capabilities(
        &self,
        req: &csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse, Status> {
        if !self.lock().volumes.contains_key(&req.volume_id) {
            return Err(Status::not_found(format!(
                "volume {} not found",
                req.volume_id
            )));
        }
        if let Err(e) = check_caps(&req.volume_capabilities) {
            return Ok(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.message().to_string(),
            });
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context.clone(),
                volume_capabilities: req.volume_capabilities.clone(),
                parameters: req.parameters.clone(),
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        })
    }

    pub fn create_snapshot(
        &self,
        req: &csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse, Status> {
        if req.name.is_empty() || req.source_volume_id.is_empty() {
            return Err(Status::invalid_argument(
                "name and source volume id are required",
            ));
        }
        let mut st = self.lock();
        if let Some(s) = st.snapshot_by_name(&req.name) {
            if s.source_volume != req.source_volume_id {
                return Err(Status::already_exists(format!(
                    "snapshot {} exists for another volume",
                    s.name
                )));
            }
            return Ok(csi::CreateSnapshotResponse {
                snapshot: Some(snapshot_proto(s)),
            });
        }
        let v = st.volumes.get(&req.source_volume_id).ok_or_else(|| {
            Status::not_found(format!("volume {} not found", req.source_volume_id))
        })?;
        let id = state::new_id();
        let path = self.cfg.snapshot_dir.join(format!("{id}.snap"));
        let s = Snapshot {
            id,
            name: req.name.clone(),
            source_volume: v.id.clone(),
            size: v.size,
            path,
            creation_time: Utc::now(),
            group_snapshot_id: String::new(),
        };
        if let Err(e) = run(
            "tar",
            &[
                "-C",
                &v.path.to_string_lossy(),
                "-czf",
                &s.path.to_string_lossy(),
                ".",
            ],
        ) {
            let _ = std::fs::remove_file(&s.path);
            return Err(Status::internal(e));
        }
        st.snapshots.insert(s.id.clone(), s.clone());
        if let Err(e) = st.save(&self.cfg.state_dir) {
            st.snapshots.remove(&s.id);
            let _ = std::fs::remove_file(&s.path);
            return Err(internal(e));
        }
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot_proto(&s)),
        })
    }

    pub fn delete_snapshot(
        &self,
        req: &csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse, Status> {
        if req.snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot id missing"));
        }
        let mut st = self.lock();
        let Some(s) = st.snapshots.get(&req.snapshot_id) else {
            return Ok(csi::DeleteSnapshotResponse {});
        };
        if !s.group_snapshot_id.is_empty() {
            // CSI spec: a member of a group snapshot is deleted with its group only
            return Err(Status::invalid_argument(format!(
                "snapshot {} is part of group snapshot {}: delete the group (DeleteVolumeGroupSnapshot)",
                s.id, s.group_snapshot_id
            )));
        }
        match std::fs::remove_file(&s.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(internal(e)),
            _ => {}
        }
        st.snapshots.remove(&req.snapshot_id);
        st.save(&self.cfg.state_dir).map_err(internal)?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    pub fn list_snapshots(
        &self,
        req: &csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Status> {
        let st = self.lock();
        if !req.starting_token.is_empty() {
            return Err(Status::aborted("pagination is not supported"));
        }
        let entries = st
            .list_snapshots(&req.snapshot_id, &req.source_volume_id)
            .map(|s| csi::list_snapshots_response::Entry {
                snapshot: Some(snapshot_proto(s)),
            })
            .collect();
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token: String::new(),
        })
    }

    // ---- node

    pub fn node_get_info(
        &self,
        _: &csi::NodeGetInfoRequest,
    ) -> Result<csi::NodeGetInfoResponse, Status> {
        Ok(csi::NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: self.cfg.max_volumes_per_node,
            accessible_topology: None,
        })
    }

    pub fn node_get_capabilities(
        &self,
        _: &csi::NodeGetCapabilitiesRequest,
    ) -> Result<csi::NodeGetCapabilitiesResponse, Status> {
        Ok(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![],
        })
    }

    pub fn node_publish_volume(
        &self,
        req: &csi::NodePublishVolumeRequest,
    ) -> Result<csi::NodePublishVolumeResponse, Status> {
        let target = req.target_path.as_str();
        if req.volume_id.is_empty() || target.is_empty() {
            return Err(Status::invalid_argument(
                "volume id and target path are required",
            ));
        }
        // As the Go driver: a missing capability is accepted, a block one is not.
        if req.volume_capability.as_ref().is_some_and(is_block) {
            return Err(Status::invalid_argument(
                "block volumes are not supported by this driver",
            ));
        }
        let source = self
            .lock()
            .volumes
            .get(&req.volume_id)
            .map(|v| v.path.clone())
            .ok_or_else(|| Status::not_found(format!("volume {} not found", req.volume_id)))?;
        if is_mount_point(target) {
            return Ok(csi::NodePublishVolumeResponse {});
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(target)
            .map_err(internal)?;
        rustix::mount::mount_bind(&source, target).map_err(|e| {
            Status::internal(format!("bind mount {} on {target}: {e}", source.display()))
        })?;
        if req.readonly {
            use rustix::mount::{MountFlags, UnmountFlags};
            if let Err(e) =
                rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            {
                let _ = rustix::mount::unmount(target, UnmountFlags::empty());
                return Err(Status::internal(format!("remount read-only {target}: {e}")));
            }
        }
        Ok(csi::NodePublishVolumeResponse {})
    }

    pub fn node_unpublish_volume(
        &self,
        req: &csi::NodeUnpublishVolumeRequest,
    ) -> Result<csi::NodeUnpublishVolumeResponse, Status> {
        let target = req.target_path.as_str();
        if target.is_empty() {
            return Err(Status::invalid_argument("target path missing"));
        }
        while is_mount_point(target) {
            rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty())
                .map_err(|e| Status::internal(format!("unmount {target}: {e}")))?;
        }
        remove_path(Path::new(target)).map_err(internal)?;
        Ok(csi::NodeUnpublishVolumeResponse {})
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount_cap() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
        }
    }

    fn block_cap() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Block(Default::default())),
            access_mode: None,
        }
    }

    fn driver() -> (Driver, PathBuf) {
        let dir = std::env::temp_dir().join(format!("hostpath-driver-{}", state::new_id()));
        let d = Driver::open(Config {
            driver_name: "hostpath.csi.k8s.io".into(),
            node_id: "n1".into(),
            state_dir: dir.clone(),
            snapshot_dir: dir.clone(),
            freeze_timeout: std::time::Duration::from_secs(20),
            max_volumes_per_node: 7,
            version: "test".into(),
        })
        .unwrap();
        (d, dir)
    }

    fn create(d: &Driver, name: &str, required: i64) -> Result<csi::Volume, Status> {
        d.create_volume(&csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: required,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap()],
            ..Default::default()
        })
        .map(|r| r.volume.unwrap())
    }

    #[test]
    fn caps() {
        assert_eq!(
            check_caps(&[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(check_caps(&[mount_cap()]).is_ok());
        assert_eq!(
            check_caps(&[mount_cap(), block_cap()]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn mountinfo_parsing() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    99 22 8:1 /data/v1 /var/lib/kubelet/pods/x/mount rw shared:1 - ext4 /dev/sda1 rw\n";
        assert!(mountinfo_has(info, "/var/lib/kubelet/pods/x/mount"));
        assert!(mountinfo_has(info, "/"));
        assert!(!mountinfo_has(info, "/var/lib/kubelet/pods/x"));
    }

    #[test]
    fn volume_lifecycle_and_idempotency() {
        let (d, dir) = driver();
        let v = create(&d, "pvc-1", 0).unwrap();
        assert_eq!(v.capacity_bytes, 1 << 30);
        let vdir = dir.join(&v.volume_id);
        assert!(vdir.is_dir());
        assert_eq!(
            std::fs::metadata(&vdir).unwrap().permissions().mode() & 0o777,
            0o777
        );
        // same name again: same volume; a bigger required size: AlreadyExists
        assert_eq!(create(&d, "pvc-1", 1024).unwrap().volume_id, v.volume_id);
        assert_eq!(
            create(&d, "pvc-1", 2 << 30).unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        // errors
        assert_eq!(
            create(&d, "", 0).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let r = d.create_volume(&csi::CreateVolumeRequest {
            name: "blk".into(),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        });
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        let r = d.create_volume(&csi::CreateVolumeRequest {
            name: "from-nothing".into(),
            volume_capabilities: vec![mount_cap()],
            volume_content_source: Some(csi::VolumeContentSource {
                r#type: Some(SourceType::Snapshot(SnapshotSource {
                    snapshot_id: "nope".into(),
                })),
            }),
            ..Default::default()
        });
        assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "only the volume and state.json: {dir:?}"
        );
        // state survives a restart
        let cfg = d.config().clone();
        drop(d);
        let d = Driver::open(cfg).unwrap();
        assert_eq!(create(&d, "pvc-1", 0).unwrap().volume_id, v.volume_id);
        // validate
        let ok = d
            .validate_volume_capabilities(&csi::ValidateVolumeCapabilitiesRequest {
                volume_id: v.volume_id.clone(),
                volume_capabilities: vec![mount_cap()],
                ..Default::default()
            })
            .unwrap();
        assert!(ok.confirmed.is_some());
        let no = d
            .validate_volume_capabilities(&csi::ValidateVolumeCapabilitiesRequest {
                volume_id: v.volume_id.clone(),
                volume_capabilities: vec![block_cap()],
                ..Default::default()
            })
            .unwrap();
        assert!(no.confirmed.is_none() && !no.message.is_empty());
        let missing = d.validate_volume_capabilities(&csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "x".into(),
            ..Default::default()
        });
        assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
        // delete twice
        d.delete_volume(&csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .unwrap();
        d.delete_volume(&csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(!vdir.exists());
        assert!(d.lock().volumes.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshots_restore_and_clone() {
        let (d, dir) = driver();
        let v = create(&d, "pvc-1", 4096).unwrap();
        let vdir = dir.join(&v.volume_id);
        std::fs::create_dir(vdir.join("sub")).unwrap();
        std::fs::write(vdir.join("sub/hello.txt"), "hello").unwrap();
        let snap = |name: &str, vol: &str| {
            d.create_snapshot(&csi::CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: vol.into(),
                ..Default::default()
            })
            .map(|r| r.snapshot.unwrap())
        };
        let s = snap("snap-1", &v.volume_id).unwrap();
        assert!(
            s.ready_to_use
                && s.size_bytes == 4096
                && s.source_volume_id == v.volume_id
                && s.creation_time.is_some()
        );
        assert!(dir.join(format!("{}.snap", s.snapshot_id)).is_file());
        assert_eq!(snap("snap-1", &v.volume_id).unwrap(), s, "idempotent");
        assert_eq!(
            snap("snap-1", "other").unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            snap("snap-2", "missing").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            snap("", &v.volume_id).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // later writes are not in the snapshot
        std::fs::write(vdir.join("later.txt"), "x").unwrap();

        let from = |name: &str, size: i64, t: SourceType| {
            d.create_volume(&csi::CreateVolumeRequest {
                name: name.into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: size,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap()],
                volume_content_source: Some(csi::VolumeContentSource { r#type: Some(t) }),
                ..Default::default()
            })
        };
        let snap_src = || {
            SourceType::Snapshot(SnapshotSource {
                snapshot_id: s.snapshot_id.clone(),
            })
        };
        assert_eq!(
            from("too-small", 1024, snap_src()).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let r = from("restored", 4096, snap_src()).unwrap().volume.unwrap();
        assert_eq!(r.content_source.unwrap().r#type, Some(snap_src()));
        let rdir = dir.join(&r.volume_id);
        assert_eq!(
            std::fs::read_to_string(rdir.join("sub/hello.txt")).unwrap(),
            "hello"
        );
        assert!(!rdir.join("later.txt").exists());

        let vol_src = SourceType::Volume(VolumeSource {
            volume_id: v.volume_id.clone(),
        });
        let c = from("clone", 8192, vol_src.clone())
            .unwrap()
            .volume
            .unwrap();
        assert_eq!(c.content_source.unwrap().r#type, Some(vol_src));
        assert_eq!(
            std::fs::read_to_string(dir.join(&c.volume_id).join("later.txt")).unwrap(),
            "x"
        );

        let list = |sid: &str, vid: &str| {
            d.list_snapshots(&csi::ListSnapshotsRequest {
                snapshot_id: sid.into(),
                source_volume_id: vid.into(),
                ..Default::default()
            })
            .unwrap()
            .entries
            .len()
        };
        assert_eq!(list("", ""), 1);
        assert_eq!(list(&s.snapshot_id, ""), 1);
        assert_eq!(list("", "nope"), 0);
        let paged = d.list_snapshots(&csi::ListSnapshotsRequest {
            starting_token: "1".into(),
            ..Default::default()
        });
        assert_eq!(paged.unwrap_err().code(), tonic::Code::Aborted);

        d.delete_snapshot(&csi::DeleteSnapshotRequest {
            snapshot_id: s.snapshot_id.clone(),
            ..Default::default()
        })
        .unwrap();
        d.delete_snapshot(&csi::DeleteSnapshotRequest {
            snapshot_id: s.snapshot_id.clone(),
            ..Default::default()
        })
        .unwrap();
        assert!(!dir.join(format!("{}.snap", s.snapshot_id)).exists());
        assert_eq!(list("", ""), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
