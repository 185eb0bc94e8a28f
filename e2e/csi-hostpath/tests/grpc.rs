//! Starts the `hostpathplugin` binary on a temporary unix socket and drives it
//! with a tonic client, as the csi-provisioner / csi-snapshotter sidecars do.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holdfast_csi_hostpath::csi;
use holdfast_csi_hostpath::csi::controller_client::ControllerClient;
use holdfast_csi_hostpath::csi::group_controller_client::GroupControllerClient;
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
        Plugin::start_with(dir, &[])
    }

    /// Same, with extra flags.
    fn start_with(dir: &Path, extra: &[&str]) -> Plugin {
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
            .args(extra)
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

    // the statedir is not a mount point here: no group snapshots, and a clear error if asked
    let mut grp = GroupControllerClient::new(ch.clone());
    assert!(
        grp.group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .is_empty()
    );
    let refused = grp
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "group-1".into(),
            source_volume_ids: vec!["v".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("is not a mount point of its own"),
        "{}",
        refused.message()
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

/// A statedir on a loop-mounted ext4 image of its own, as `e2e/testbed` sets it up;
/// thawed, unmounted and removed on drop.
struct LoopFs {
    dir: PathBuf,
}

impl LoopFs {
    fn mount(dir: &Path) -> LoopFs {
        assert!(
            is_root(),
            "group snapshots freeze a loop-mounted filesystem: this test needs root (and /dev/loop-control)"
        );
        let img = dir.join("volumes.img");
        let mnt = dir.join("data");
        std::fs::create_dir_all(&mnt).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        run(Command::new("truncate").arg("-s").arg("256M").arg(&img));
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            ])
            .arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop,discard,noinit_itable"])
            .arg(&img)
            .arg(&mnt));
        LoopFs { dir: mnt }
    }

    /// Whether the filesystem was frozen (it is thawed now): thawing a thawed one fails (EINVAL).
    fn frozen(&self) -> bool {
        Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A writer that updates a counter in volume A and then in volume B, as fast as it can:
/// at any instant A == B or A == B + 1. Each update is one pwrite of a fixed-width number,
/// so a file never holds half a number.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(a: PathBuf, b: PathBuf) -> Writer {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let open = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p)
                .unwrap()
        };
        let (fa, fb) = (open(a), open(b));
        let thread = std::thread::spawn(move || {
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let text = format!("{i:012}\n");
                fa.write_at(text.as_bytes(), 0).unwrap();
                fb.write_at(text.as_bytes(), 0).unwrap();
                c.store(i, Ordering::Relaxed);
            }
        });
        Writer {
            stop,
            count,
            thread: Some(thread),
        }
    }

    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn counter_in(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("counter")).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("counter {text:?} in {dir:?}"))
}

fn consistent(a: u64, b: u64) -> bool {
    a == b || a == b + 1
}

/// Group snapshots taken while a writer updates two volumes thousands of times a second
/// restore to a pair that existed at one instant; two single snapshots taken one after the
/// other do not. Also the GroupController RPCs' idempotency, errors and clean-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_snapshots_are_consistent() {
    const ROUNDS: usize = 20;
    let dir = tempdir("group");
    let fs = LoopFs::mount(&dir);
    let data = fs.dir.clone();
    let snaps = dir.join("snapshots");
    let snaps_arg = snaps.to_string_lossy().into_owned();
    let plugin = Plugin::start_with(&dir, &["--snapshotdir", &snaps_arg]);
    let ch = plugin.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch.clone());
    let mut grp = GroupControllerClient::new(ch.clone());

    // capabilities: the group controller service and its one RPC capability
    let caps = id
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use csi::plugin_capability::service::Type as Svc;
    let services: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match c.r#type {
            Some(csi::plugin_capability::Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert_eq!(
        services,
        [
            Svc::ControllerService as i32,
            Svc::GroupControllerService as i32
        ]
    );
    let gcaps = grp
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        gcaps.capabilities,
        vec![csi::GroupControllerServiceCapability {
            r#type: Some(csi::group_controller_service_capability::Type::Rpc(
                csi::group_controller_service_capability::Rpc {
                    r#type: csi::group_controller_service_capability::rpc::Type::CreateDeleteGetVolumeGroupSnapshot
                        as i32
                }
            ))
        }]
    );

    let vol = |name: &'static str| {
        let mut ctl = ctl.clone();
        async move {
            ctl.create_volume(create_req(name, 1 << 20, None))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id
        }
    };
    let (va, vb) = (vol("pvc-a").await, vol("pvc-b").await);
    let other = vol("pvc-other").await;
    let writer = Writer::start(
        data.join(&va).join("counter"),
        data.join(&vb).join("counter"),
    );
    while writer.count() < 10_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let restore = |snapshot_id: String, name: String| {
        let mut ctl = ctl.clone();
        let data = data.clone();
        async move {
            let v = ctl
                .create_volume(create_req(
                    &name,
                    1 << 20,
                    Some(SourceType::Snapshot(SnapshotSource { snapshot_id })),
                ))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap();
            let n = counter_in(&data.join(&v.volume_id));
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume_id,
                ..Default::default()
            })
            .await
            .unwrap();
            n
        }
    };

    // group snapshots under the writer: every restored pair is consistent
    let mut group_pairs = Vec::new();
    let mut groups = Vec::new();
    let started = std::time::Instant::now();
    let count0 = writer.count();
    for i in 0..ROUNDS {
        let g = grp
            .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
                name: format!("group-{i}"),
                source_volume_ids: vec![va.clone(), vb.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .group_snapshot
            .unwrap();
        assert!(g.ready_to_use && !g.group_snapshot_id.is_empty());
        assert_eq!(g.snapshots.len(), 2);
        for s in &g.snapshots {
            assert!(s.ready_to_use);
            assert_eq!(s.group_snapshot_id, g.group_snapshot_id);
            assert_eq!(
                s.creation_time, g.creation_time,
                "one instant for all members"
            );
            assert!(snaps.join(format!("{}.snap", s.snapshot_id)).is_file());
        }
        let by_vol = |v: &str| {
            g.snapshots
                .iter()
                .find(|s| s.source_volume_id == v)
                .unwrap()
                .snapshot_id
                .clone()
        };
        let a = restore(by_vol(&va), format!("r-{i}-a")).await;
        let b = restore(by_vol(&vb), format!("r-{i}-b")).await;
        group_pairs.push((a, b));
        groups.push(g);
    }
    let rate = (writer.count() - count0) as f64 / started.elapsed().as_secs_f64();

    // snapshots of A and then of B: the writer moves on in between. (A single snapshot
    // tars a live volume; GNU tar fails with "file changed as we read it" when the writer
    // hits the file meanwhile, and csi-snapshotter retries: so do we.)
    let mut single_pairs = Vec::new();
    let mut tar_retries = 0;
    for i in 0..ROUNDS {
        let snap = |v: String, name: String| {
            let mut ctl = ctl.clone();
            async move {
                let mut retries = 0;
                loop {
                    match ctl
                        .create_snapshot(csi::CreateSnapshotRequest {
                            source_volume_id: v.clone(),
                            name: name.clone(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => return (r.into_inner().snapshot.unwrap().snapshot_id, retries),
                        Err(e)
                            if e.message().contains("file changed as we read it")
                                && retries < 1000 =>
                        {
                            retries += 1
                        }
                        Err(e) => panic!("CreateSnapshot {name}: {e:?}"),
                    }
                }
            }
        };
        let (sa, ra) = snap(va.clone(), format!("single-{i}-a")).await;
        let (sb, rb) = snap(vb.clone(), format!("single-{i}-b")).await;
        tar_retries += ra + rb;
        let a = restore(sa, format!("s-{i}-a")).await;
        let b = restore(sb, format!("s-{i}-b")).await;
        single_pairs.push((a, b));
    }
    let before = writer.count();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        writer.count() > before,
        "the writer runs on: the filesystem is thawed"
    );
    drop(writer);

    let bad: Vec<_> = group_pairs
        .iter()
        .filter(|(a, b)| !consistent(*a, *b))
        .collect();
    let drifted = single_pairs
        .iter()
        .filter(|(a, b)| !consistent(*a, *b))
        .count();
    println!(
        "writer: {rate:.0} updates/s of each counter during the group snapshots\n\
         {ROUNDS} group snapshots (A,B): {group_pairs:?}: {} inconsistent\n\
         {ROUNDS} single snapshot pairs, A then B: {single_pairs:?}: {drifted} drifted \
         ({tar_retries} CreateSnapshot retries after tar's \"file changed as we read it\")",
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "group snapshots with A, B not from one instant: {bad:?}"
    );
    assert!(
        drifted > 0,
        "no single-snapshot pair drifted: the writer did not write between snapshots, so the check above proves nothing"
    );

    // idempotent by name; another volume set under the same name: ALREADY_EXISTS
    let g0 = &groups[0];
    let again = grp
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "group-0".into(),
            source_volume_ids: vec![vb.clone(), va.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(&again, g0);
    let clash = grp
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "group-0".into(),
            source_volume_ids: vec![va.clone(), other.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), tonic::Code::AlreadyExists);
    for (ids, code) in [
        (vec![], tonic::Code::InvalidArgument),
        (vec![va.clone(), va.clone()], tonic::Code::InvalidArgument),
        (
            vec![va.clone(), "missing".to_string()],
            tonic::Code::NotFound,
        ),
    ] {
        let e = grp
            .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
                name: "group-bad".into(),
                source_volume_ids: ids,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }

    // Get; members are listed with their group; a member is not deleted alone
    let member_ids: Vec<String> = g0.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    let got = grp
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g0.group_snapshot_id.clone(),
            snapshot_ids: member_ids.iter().rev().cloned().collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(&got, g0);
    let mismatch = grp
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: g0.group_snapshot_id.clone(),
            snapshot_ids: vec![member_ids[0].clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), tonic::Code::InvalidArgument);
    let unknown = grp
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let listed = ctl
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: member_ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.entries[0]
            .snapshot
            .as_ref()
            .map(|s| s.group_snapshot_id.as_str()),
        Some(g0.group_snapshot_id.as_str())
    );
    let alone = ctl
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: member_ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(alone.code(), tonic::Code::InvalidArgument);

    // delete every group (twice: idempotent): their tarballs go
    for g in &groups {
        for _ in 0..2 {
            grp.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id.clone(),
                snapshot_ids: g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        for s in &g.snapshots {
            assert!(!snaps.join(format!("{}.snap", s.snapshot_id)).exists());
        }
    }
    assert!(!fs.frozen(), "left frozen");

    // a copy that outlasts --freezetimeout: killed, thawed, nothing left behind
    drop(ch);
    assert!(plugin.stop().success());
    let plugin = Plugin::start_with(&dir, &["--snapshotdir", &snaps_arg, "--freezetimeout=0"]);
    let ch = plugin.channel().await;
    let mut grp = GroupControllerClient::new(ch.clone());
    let before: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let timeout = grp
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "group-timeout".into(),
            source_volume_ids: vec![va.clone(), vb.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(timeout.code(), tonic::Code::Internal);
    assert!(
        timeout.message().contains("freeze timeout"),
        "{}",
        timeout.message()
    );
    assert!(!fs.frozen(), "left frozen after a timeout");
    let after: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "staging copies and tarballs removed");
    std::fs::write(data.join(&va).join("after-timeout"), b"writable").unwrap();

    drop(ch);
    drop(plugin);
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}
