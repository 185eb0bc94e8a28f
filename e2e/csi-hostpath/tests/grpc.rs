//! Starts the `hostpathplugin` binary on a temporary unix socket and drives it
//! with a tonic client, as the csi-provisioner / csi-snapshotter sidecars do.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holdfast_csi_hostpath::csi;
use holdfast_csi_hostpath::csi::controller_client::ControllerClient;
use holdfast_csi_hostpath::csi::identity_client::IdentityClient;
use holdfast_csi_hostpath::csi::node_client::NodeClient;
use holdfast_csi_hostpath::csi::volume_content_source::{
    SnapshotSource, Type as SourceType, VolumeSource,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const BIN: &str = env!("CARGO_BIN_EXE_hostpathplugin");

/// The running binary; killed when dropped (also when a test fails).
struct Plugin {
    child: Child,
    sock: PathBuf,
}

impl Plugin {
    /// Starts the driver with Go-style single-dash flags, as an old command line would.
    fn start(dir: &Path) -> Plugin {
        let sock = dir.join("csi/csi.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(BIN)
            .arg(format!("-endpoint=unix://{}", sock.display()))
            .args([
                "-nodeid",
                "node-1",
                "--drivername",
                "hostpath.csi.k8s.io",
                "--maxvolumespernode=5",
            ])
            .arg("--statedir")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Plugin { child, sock }
    }

    async fn channel(&self) -> Channel {
        for _ in 0..200 {
            if self.sock.exists() {
                let sock = self.sock.clone();
                let ch = Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let sock = sock.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?))
                        }
                    }))
                    .await;
                if let Ok(ch) = ch {
                    return ch;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("driver socket {} never came up", self.sock.display());
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("driver did not exit on SIGTERM");
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hostpath-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mount_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str, size: i64, source: Option<SourceType>) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap()],
        parameters: [("csi.storage.k8s.io/pvc/name".to_string(), name.to_string())].into(),
        volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_snapshot_restore_clone_publish() {
    let dir = tempdir("main");
    let data = dir.join("data");
    let plugin = Plugin::start(&dir);
    let ch = plugin.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch.clone());

    // identity
    let info = id
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "hostpath.csi.k8s.io");
    assert!(!info.vendor_version.is_empty());
    let caps = id
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.capabilities,
        vec![csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::Service(
                csi::plugin_capability::Service {
                    r#type: csi::plugin_capability::service::Type::ControllerService as i32
                }
            ))
        }]
    );
    id.probe(csi::ProbeRequest {}).await.unwrap();
    let ccaps = ctl
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let types: Vec<i32> = ccaps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    use csi::controller_service_capability::rpc::Type as R;
    assert_eq!(
        types,
        [
            R::CreateDeleteVolume as i32,
            R::CreateDeleteSnapshot as i32,
            R::ListSnapshots as i32,
            R::CloneVolume as i32
        ]
    );
    let ni = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ni.node_id.as_str(), ni.max_volumes_per_node),
        ("node-1", 5)
    );
    assert!(
        node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .is_empty()
    );

    // an RPC this driver does not implement answers UNIMPLEMENTED (like the Go driver)
    let mut raw = tonic::client::Grpc::new(ch.clone());
    raw.ready().await.unwrap();
    let unimpl = raw
        .unary::<csi::ProbeRequest, csi::ProbeResponse, _>(
            tonic::Request::new(csi::ProbeRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static("/csi.v1.Controller/GetCapacity"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unimpl.code(), tonic::Code::Unimplemented);

    // volume, a file in it, snapshot
    let vol = ctl
        .create_volume(create_req("pvc-a", 1 << 20, None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 1 << 20);
    let vdir = data.join(&vol.volume_id);
    assert!(vdir.is_dir(), "volume directory {vdir:?}");
    std::fs::create_dir(vdir.join("d")).unwrap();
    std::fs::write(vdir.join("d/file.txt"), b"holdfast").unwrap();
    let again = ctl
        .create_volume(create_req("pvc-a", 1 << 20, None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        again.volume_id, vol.volume_id,
        "CreateVolume is idempotent by name"
    );

    let snap = ctl
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: vol.volume_id.clone(),
            name: "snapshot-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(
        (snap.source_volume_id.as_str(), snap.size_bytes),
        (vol.volume_id.as_str(), 1 << 20)
    );
    assert!(snap.creation_time.unwrap().seconds > 1_600_000_000);
    assert!(data.join(format!("{}.snap", snap.snapshot_id)).is_file());
    std::fs::write(vdir.join("after-snapshot.txt"), b"x").unwrap();

    let listed = ctl
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(listed.entries[0].snapshot.as_ref(), Some(&snap));

    // restore
    let src = SourceType::Snapshot(SnapshotSource {
        snapshot_id: snap.snapshot_id.clone(),
    });
    let restored = ctl
        .create_volume(create_req("pvc-restored", 1 << 20, Some(src.clone())))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.content_source.clone().unwrap().r#type, Some(src));
    let rdir = data.join(&restored.volume_id);
    assert_eq!(std::fs::read(rdir.join("d/file.txt")).unwrap(), b"holdfast");
    assert!(!rdir.join("after-snapshot.txt").exists());
    let small = ctl.create_volume(create_req(
        "pvc-small",
        1024,
        Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    ));
    assert_eq!(small.await.unwrap_err().code(), tonic::Code::OutOfRange);

    // clone
    let src = SourceType::Volume(VolumeSource {
        volume_id: vol.volume_id.clone(),
    });
    let clone = ctl
        .create_volume(create_req("pvc-clone", 1 << 21, Some(src.clone())))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(clone.content_source.clone().unwrap().r#type, Some(src));
    assert_eq!(
        std::fs::read(data.join(&clone.volume_id).join("after-snapshot.txt")).unwrap(),
        b"x"
    );

    // state.json, Go field names
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("state.json")).unwrap()).unwrap();
    assert_eq!(st["volumes"][&restored.volume_id]["sourceKind"], "snapshot");
    assert_eq!(
        st["volumes"][&restored.volume_id]["sourceID"],
        snap.snapshot_id.as_str()
    );
    assert_eq!(
        st["snapshots"][&snap.snapshot_id]["sourceVolume"],
        vol.volume_id.as_str()
    );

    // publish as a bind mount (needs root)
    if is_root() {
        let target = dir.join("pods/p1/volumes/mount");
        let publish = |ro: bool| csi::NodePublishVolumeRequest {
            volume_id: restored.volume_id.clone(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_cap()),
            readonly: ro,
            ..Default::default()
        };
        let unpublish = csi::NodeUnpublishVolumeRequest {
            volume_id: restored.volume_id.clone(),
            target_path: target.to_string_lossy().into_owned(),
        };
        node.node_publish_volume(publish(false)).await.unwrap();
        node.node_publish_volume(publish(false)).await.unwrap(); // idempotent
        assert!(mounted(&target));
        assert_eq!(
            std::fs::read(target.join("d/file.txt")).unwrap(),
            b"holdfast"
        );
        std::fs::write(target.join("via-mount.txt"), b"m").unwrap();
        assert!(rdir.join("via-mount.txt").is_file());
        node.node_unpublish_volume(unpublish.clone()).await.unwrap();
        assert!(!mounted(&target) && !target.exists());
        node.node_unpublish_volume(unpublish.clone()).await.unwrap(); // idempotent

        node.node_publish_volume(publish(true)).await.unwrap();
        assert_eq!(std::fs::read(target.join("via-mount.txt")).unwrap(), b"m");
        let err = std::fs::write(target.join("ro.txt"), b"no").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(30), "EROFS expected, got {err}");
        node.node_unpublish_volume(unpublish).await.unwrap();
        assert!(!mounted(&target));
    } else {
        eprintln!("not root: skipping NodePublishVolume");
    }
    let missing = node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: "nope".into(),
            target_path: dir.join("x").to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // the state survives a restart
    drop(ch);
    assert!(plugin.stop().success(), "clean exit on SIGTERM");
    let plugin = Plugin::start(&dir);
    let ch = plugin.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let all = ctl
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 1);
    assert_eq!(all.entries[0].snapshot.as_ref(), Some(&snap));

    // delete everything (twice: idempotent)
    for _ in 0..2 {
        ctl.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        for v in [&vol, &restored, &clone] {
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    let left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["state.json"]);
    let all = ctl
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.entries.is_empty());
    drop(ch);
    drop(plugin);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn command_line() {
    let out = Command::new(BIN).arg("-version").output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let dir = tempdir("cli");
    let out = Command::new(BIN)
        .arg("--statedir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "--nodeid is required");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodeid is required"));
    let out = Command::new(BIN)
        .args(["--nodeid", "n", "--endpoint", "tcp://127.0.0.1:1"])
        .arg("--statedir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("endpoint must be unix://PATH"));
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
