//! The GroupController service: group snapshots whose members are mutually
//! consistent, because they are cut at one instant.
//!
//! The statedir (where the volumes live) must be a filesystem of its own (the
//! testbed loop-mounts an ext4 image there). `CreateVolumeGroupSnapshot`
//! freezes that filesystem (`fsfreeze -f`: the kernel flushes it and blocks
//! every new write, so writers in pods stop where they are, as with a storage
//! array's consistency group), copies every member volume with `cp -a` into a
//! staging directory in the snapshotdir (which must be on another filesystem:
//! writes to the frozen one would block us too), and thaws it (`fsfreeze -u`)
//! — always, also when a copy fails, and at the latest after `--freezetimeout`
//! (the copy is killed then and the call fails). Only then are the staging
//! copies packed into the usual `<snapshotdir>/<snapshotID>.snap` tarballs, so
//! the freeze lasts only as long as the copies.
//!
//! Without a statedir of its own, the group capability is not offered and
//! `CreateVolumeGroupSnapshot` fails with FAILED_PRECONDITION saying why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use tonic::Status;

use crate::csi;
use crate::driver::{Driver, internal, is_mount_point, run, snapshot_proto};
use crate::state::{self, GroupSnapshot, Snapshot, State};

/// A frozen filesystem; thawed by [`Frozen::thaw`] or, failing that, on drop
/// (error paths, panics).
struct Frozen {
    mount: PathBuf,
    since: Instant,
    thawed: bool,
}

impl Frozen {
    fn freeze(mount: &Path) -> Result<Frozen, String> {
        run("fsfreeze", &["-f", &mount.to_string_lossy()])?;
        Ok(Frozen {
            mount: mount.to_path_buf(),
            since: Instant::now(),
            thawed: false,
        })
    }

    /// Thaws; returns how long the filesystem was frozen.
    fn thaw(mut self) -> Result<Duration, String> {
        self.thawed = true;
        run("fsfreeze", &["-u", &self.mount.to_string_lossy()])?;
        Ok(self.since.elapsed())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            match run("fsfreeze", &["-u", &self.mount.to_string_lossy()]) {
                Ok(()) => tracing::warn!(
                    "thawed {} after a failed group snapshot (frozen {:?})",
                    self.mount.display(),
                    self.since.elapsed()
                ),
                Err(e) => tracing::error!("CANNOT THAW {}: {e}", self.mount.display()),
            }
        }
    }
}

/// Runs a command that must finish before `deadline`; kills it otherwise.
fn run_until(program: &str, args: &[&str], deadline: Instant) -> Result<(), String> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    loop {
        match child.try_wait() {
            Err(e) => return Err(format!("{what}: {e}")),
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!("{what}: {st}: {}", err.trim()));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: killed, not finished within the freeze timeout"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn device_of(p: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)?.dev())
}

fn group_proto(g: &GroupSnapshot, st: &State) -> csi::VolumeGroupSnapshot {
    let snapshots: Vec<csi::Snapshot> = g
        .snapshot_ids
        .iter()
        .filter_map(|id| st.snapshots.get(id))
        .map(snapshot_proto)
        .collect();
    csi::VolumeGroupSnapshot {
        group_snapshot_id: g.id.clone(),
        ready_to_use: snapshots.len() == g.snapshot_ids.len(),
        snapshots,
        creation_time: Some(prost_types::Timestamp {
            seconds: g.creation_time.timestamp(),
            nanos: g.creation_time.timestamp_subsec_nanos() as i32,
        }),
    }
}

/// INVALID_ARGUMENT unless `given` (if not empty) is the group's member list, in any order.
fn check_members(g: &GroupSnapshot, given: &[String]) -> Result<(), Status> {
    if given.is_empty() {
        return Ok(());
    }
    let mut a = given.to_vec();
    let mut b = g.snapshot_ids.clone();
    a.sort();
    b.sort();
    if a != b {
        return Err(Status::invalid_argument(format!(
            "snapshot ids {given:?} do not match the members {:?} of group snapshot {}",
            g.snapshot_ids, g.id
        )));
    }
    Ok(())
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

impl Driver {
    /// `Ok` if group snapshots can be consistent here: the statedir is a mount
    /// point of its own and the snapshotdir lies on another filesystem.
    pub fn group_snapshot_support(&self) -> Result<(), String> {
        let cfg = self.config();
        let state = std::fs::canonicalize(&cfg.state_dir)
            .map_err(|e| format!("statedir {}: {e}", cfg.state_dir.display()))?;
        if !is_mount_point(&state.to_string_lossy()) {
            return Err(format!(
                "the statedir {} is not a mount point of its own: a group snapshot freezes the \
                 statedir's filesystem (fsfreeze) to copy all member volumes at one instant, and \
                 will not freeze a filesystem that holds anything else",
                state.display()
            ));
        }
        let (sd, vd) = (device_of(&cfg.snapshot_dir), device_of(&state));
        match (sd, vd) {
            (Ok(a), Ok(b)) if a != b => Ok(()),
            (Ok(_), Ok(_)) => Err(format!(
                "the snapshotdir {} is on the statedir's filesystem, which a group snapshot \
                 freezes: pass --snapshotdir on another filesystem",
                cfg.snapshot_dir.display()
            )),
            (Err(e), _) | (_, Err(e)) => Err(format!("stat of statedir or snapshotdir: {e}")),
        }
    }

    /// At start-up: a statedir left frozen by a driver that died during a group
    /// snapshot is thawed (`fsfreeze -u` fails harmlessly on one that is not frozen).
    pub(crate) fn thaw_leftover_freeze(&self) {
        let Ok(state) = std::fs::canonicalize(&self.config().state_dir) else {
            return;
        };
        if is_mount_point(&state.to_string_lossy())
            && run("fsfreeze", &["-u", &state.to_string_lossy()]).is_ok()
        {
            tracing::warn!(
                "the statedir {} was frozen (a driver died during a group snapshot?): thawed",
                state.display()
            );
        }
    }

    pub fn group_controller_get_capabilities(
        &self,
        _: &csi::GroupControllerGetCapabilitiesRequest,
    ) -> Result<csi::GroupControllerGetCapabilitiesResponse, Status> {
        use csi::group_controller_service_capability::{Rpc, Type, rpc};
        let capabilities = match self.group_snapshot_support() {
            Ok(()) => vec![csi::GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
            Err(_) => vec![],
        };
        Ok(csi::GroupControllerGetCapabilitiesResponse { capabilities })
    }

    pub fn create_volume_group_snapshot(
        &self,
        req: &csi::CreateVolumeGroupSnapshotRequest,
    ) -> Result<csi::CreateVolumeGroupSnapshotResponse, Status> {
        if req.name.is_empty() || req.source_volume_ids.is_empty() {
            return Err(Status::invalid_argument(
                "name and source volume ids are required",
            ));
        }
        if sorted(&req.source_volume_ids)
            .windows(2)
            .any(|w| w[0] == w[1])
        {
            return Err(Status::invalid_argument(format!(
                "source volume ids repeat a volume: {:?}",
                req.source_volume_ids
            )));
        }
        let mut st = self.lock();
        if let Some(g) = st.group_snapshot_by_name(&req.name) {
            if sorted(&g.source_volumes) != sorted(&req.source_volume_ids) {
                return Err(Status::already_exists(format!(
                    "group snapshot {} exists for other volumes {:?}",
                    g.name, g.source_volumes
                )));
            }
            return Ok(csi::CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(group_proto(g, &st)),
            });
        }
        self.group_snapshot_support().map_err(|why| {
            Status::failed_precondition(format!("group snapshots unavailable: {why}"))
        })?;
        let state_dir = std::fs::canonicalize(&self.config().state_dir).map_err(internal)?;
        let state_dev = device_of(&state_dir).map_err(internal)?;
        let mut members: Vec<(String, PathBuf, i64)> = Vec::new();
        for vid in &req.source_volume_ids {
            let v = st
                .volumes
                .get(vid)
                .ok_or_else(|| Status::not_found(format!("volume {vid} not found")))?;
            if device_of(&v.path).map_err(internal)? != state_dev {
                return Err(Status::failed_precondition(format!(
                    "volume {vid} ({}) is not on the statedir's filesystem",
                    v.path.display()
                )));
            }
            members.push((v.id.clone(), v.path.clone(), v.size));
        }

        let group_id = state::new_id();
        let snap_dir = self.config().snapshot_dir.clone();
        let snaps: Vec<Snapshot> = members
            .iter()
            .map(|(vid, _, size)| {
                let id = state::new_id();
                Snapshot {
                    path: snap_dir.join(format!("{id}.snap")),
                    id,
                    name: format!("{}-{vid}", req.name),
                    source_volume: vid.clone(),
                    size: *size,
                    creation_time: Utc::now(),
                    group_snapshot_id: group_id.clone(),
                }
            })
            .collect();
        let staging: Vec<PathBuf> = snaps
            .iter()
            .map(|s| snap_dir.join(format!("{}.staging", s.id)))
            .collect();
        let cleanup = || {
            for (s, d) in snaps.iter().zip(&staging) {
                let _ = std::fs::remove_dir_all(d);
                let _ = std::fs::remove_file(&s.path);
            }
        };

        let cut = (|| -> Result<chrono::DateTime<Utc>, Status> {
            for d in &staging {
                std::fs::create_dir_all(d).map_err(internal)?;
            }
            // flush what is dirty now, so the freeze itself has little left to write
            run("sync", &["-f", &state_dir.to_string_lossy()]).map_err(Status::internal)?;
            let frozen = Frozen::freeze(&state_dir).map_err(Status::internal)?;
            let at = Utc::now();
            let deadline = frozen.since + self.config().freeze_timeout;
            for ((_, vpath, _), d) in members.iter().zip(&staging) {
                let from = format!("{}/.", vpath.to_string_lossy());
                run_until(
                    "cp",
                    &["-a", &from, &format!("{}/", d.to_string_lossy())],
                    deadline,
                )
                .map_err(|e| Status::internal(format!("group snapshot {}: {e}", req.name)))?;
            }
            let took = frozen.thaw().map_err(Status::internal)?;
            tracing::info!(
                "group snapshot {}: {} volumes copied while {} was frozen for {took:?}",
                req.name,
                members.len(),
                state_dir.display()
            );
            Ok(at)
        })();
        let at = match cut {
            Ok(at) => at,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        for (s, d) in snaps.iter().zip(&staging) {
            if let Err(e) = run(
                "tar",
                &[
                    "-C",
                    &d.to_string_lossy(),
                    "-czf",
                    &s.path.to_string_lossy(),
                    ".",
                ],
            ) {
                cleanup();
                return Err(Status::internal(e));
            }
            let _ = std::fs::remove_dir_all(d);
        }
        let g = GroupSnapshot {
            id: group_id.clone(),
            name: req.name.clone(),
            snapshot_ids: snaps.iter().map(|s| s.id.clone()).collect(),
            source_volumes: req.source_volume_ids.clone(),
            creation_time: at,
        };
        for s in &snaps {
            let mut s = s.clone();
            s.creation_time = at;
            st.snapshots.insert(s.id.clone(), s);
        }
        st.group_snapshots.insert(g.id.clone(), g.clone());
        if let Err(e) = st.save(&self.config().state_dir) {
            for s in &snaps {
                st.snapshots.remove(&s.id);
            }
            st.group_snapshots.remove(&g.id);
            cleanup();
            return Err(internal(e));
        }
        Ok(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_proto(&g, &st)),
        })
    }

    pub fn delete_volume_group_snapshot(
        &self,
        req: &csi::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<csi::DeleteVolumeGroupSnapshotResponse, Status> {
        if req.group_snapshot_id.is_empty() {
            return Err(Status::invalid_argument("group snapshot id missing"));
        }
        let mut st = self.lock();
        let Some(g) = st.group_snapshots.get(&req.group_snapshot_id).cloned() else {
            return Ok(csi::DeleteVolumeGroupSnapshotResponse {});
        };
        check_members(&g, &req.snapshot_ids)?;
        for id in &g.snapshot_ids {
            if let Some(s) = st.snapshots.get(id) {
                match std::fs::remove_file(&s.path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(internal(e)),
                    _ => {}
                }
            }
        }
        for id in &g.snapshot_ids {
            st.snapshots.remove(id);
        }
        st.group_snapshots.remove(&g.id);
        st.save(&self.config().state_dir).map_err(internal)?;
        Ok(csi::DeleteVolumeGroupSnapshotResponse {})
    }

    pub fn get_volume_group_snapshot(
        &self,
        req: &csi::GetVolumeGroupSnapshotRequest,
    ) -> Result<csi::GetVolumeGroupSnapshotResponse, Status> {
        if req.group_snapshot_id.is_empty() {
            return Err(Status::invalid_argument("group snapshot id missing"));
        }
        let st = self.lock();
        let g = st
            .group_snapshots
            .get(&req.group_snapshot_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "group snapshot {} not found",
                    req.group_snapshot_id
                ))
            })?;
        check_members(g, &req.snapshot_ids)?;
        Ok(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_proto(g, &st)),
        })
    }
}
