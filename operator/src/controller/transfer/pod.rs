//! Mover pods: their spec (Pod Security `baseline` at most, the command from the mover
//! protocol) and reading their result through the protocol's typed events.

use std::collections::BTreeMap;

use holdfast_api::location::BackupStorageLocation;
use holdfast_api::transfer::{DataDownload, DataUpload};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, LogParams, ObjectMeta};

use crate::mover::protocol::{self, BackupCommand, CompressionArg, Exit, RestoreCommand};
use crate::runtime::Context;
use crate::storage::access::{MoverAccess, mover_access};

/// Where the volume is mounted in a mover pod.
pub const DATA: &str = "/data";

/// Capabilities a mover needs: reading every file (backup) or writing any owner, mode and
/// time (restore). All are allowed by the `baseline` Pod Security level.
const BACKUP_CAPS: &[&str] = &["DAC_OVERRIDE"];
const RESTORE_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "MKNOD",
    "SETFCAP",
];

/// Where a mover pod runs and how it reaches the repository.
pub struct Site<'a> {
    /// Namespace of the pod: the operator's, or the application's for a live copy.
    pub namespace: &'a str,
    /// Owner (only within the operator namespace: owners cannot cross namespaces).
    pub owner: Option<OwnerReference>,
    /// A Secret in `namespace` holding copies of the repository password and location
    /// credentials (live copies); `None`: the originals in the operator namespace.
    pub access_secret: Option<&'a str>,
}

/// What differs between an upload and a download pod.
struct MoverRun<'a> {
    name: &'a str,
    /// Arguments of the `holdfast` binary.
    args: Vec<String>,
    env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    /// The claim mounted at [`DATA`], read-only for uploads (none for maintenance).
    claim: Option<&'a str>,
    read_only: bool,
    caps: &'a [&'a str],
    /// The source namespace whose repository is used.
    repository: &'a str,
}

fn mover_pod(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    site: Site<'_>,
    labels: BTreeMap<String, String>,
    run: MoverRun<'_>,
) -> Pod {
    let MoverRun {
        name,
        args,
        mut env,
        claim,
        read_only,
        caps,
        repository: namespace,
    } = run;
    let MoverAccess {
        env: access_env,
        mut volumes,
        mut mounts,
    } = mover_access(bsl, namespace, site.access_secret);
    env.extend(access_env);
    // The mover's repository locks carry its pod's name (also where pods share the host's
    // name): a retry recognises its dead attempts' locks, the operator a dead mover's.
    env.push(k8s_openapi::api::core::v1::EnvVar {
        name: protocol::env::HOSTNAME.into(),
        value: Some(name.to_string()),
        ..Default::default()
    });
    if let Some(claim) = claim {
        volumes.push(Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: Some(read_only),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "data".into(),
            mount_path: DATA.into(),
            read_only: Some(read_only),
            ..Default::default()
        });
    }
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(site.namespace.into()),
            labels: Some(labels),
            owner_references: site.owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                run_as_non_root: Some(false),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: "mover".into(),
                image: Some(ctx.mover_image.clone()),
                args: Some(args),
                env: Some(env),
                volume_mounts: Some(mounts),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    privileged: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: Some(caps.iter().map(|c| c.to_string()).collect()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// The pod that copies claim `claim` (an exposed snapshot, or the live claim) into the
/// repository.
pub fn upload_pod(
    du: &DataUpload,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    claim: &str,
    site: Site<'_>,
    labels: BTreeMap<String, String>,
) -> Pod {
    let name = du.metadata.name.clone().unwrap_or_default();
    let repo = &bsl.spec.repository;
    let args = BackupCommand {
        source: DATA.into(),
        host: format!("{}/{}", du.spec.pvc.namespace, du.spec.pvc.name),
        tags: vec![
            format!("holdfast.dev/backup={}", du.spec.backup),
            format!("holdfast.dev/pvc={}", du.spec.pvc),
        ],
        compression: match repo.compression {
            holdfast_api::location::Compression::Auto => CompressionArg::Auto,
            holdfast_api::location::Compression::Off => CompressionArg::Off,
            holdfast_api::location::Compression::Max => CompressionArg::Max,
        },
        pack_size_mib: repo.pack_size_mib,
        uploads: repo.upload_concurrency,
        journal: Some(name.clone()),
        resume: du.status.as_ref().is_some_and(|s| s.retries > 0),
    }
    .args();
    let env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "RUST_LOG".into(),
        value: Some("warn".into()),
        ..Default::default()
    }];
    mover_pod(
        ctx,
        bsl,
        site,
        labels,
        MoverRun {
            name: &name,
            args,
            env,
            claim: Some(claim),
            read_only: true,
            caps: BACKUP_CAPS,
            repository: &du.spec.repository,
        },
    )
}

/// The pod that writes a repository snapshot into the temporary claim `claim`.
pub fn download_pod(
    dd: &DataDownload,
    ctx: &Context,
    bsl: &BackupStorageLocation,
    claim: &str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
) -> Pod {
    let name = dd.metadata.name.clone().unwrap_or_default();
    let args = RestoreCommand {
        snapshot: dd.spec.snapshot_id.clone(),
        target: DATA.into(),
    }
    .args();
    mover_pod(
        ctx,
        bsl,
        Site {
            namespace: &ctx.namespace,
            owner: Some(owner),
            access_secret: None,
        },
        labels,
        MoverRun {
            name: &name,
            args,
            env: Vec::new(),
            claim: Some(claim),
            read_only: false,
            caps: RESTORE_CAPS,
            repository: &dd.spec.repository,
        },
    )
}

/// A maintenance pod (prune or check) of the repository of `namespace`: no volume, only
/// repository access; owned by its BackupRepository.
pub fn maintenance_pod(
    ctx: &Context,
    bsl: &BackupStorageLocation,
    name: &str,
    namespace: &str,
    args: Vec<String>,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
) -> Pod {
    let site = Site {
        namespace: &ctx.namespace,
        owner: Some(owner),
        access_secret: None,
    };
    let env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "RUST_LOG".into(),
        value: Some("warn".into()),
        ..Default::default()
    }];
    let run = MoverRun {
        name,
        args,
        env,
        claim: None,
        read_only: true,
        caps: &[],
        repository: namespace,
    };
    mover_pod(ctx, bsl, site, labels, run)
}

/// How a mover pod ended, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Succeeded,
    /// Done, but some files or metadata could not be handled.
    Partial,
    Failed(String),
}

/// Why a failed mover pod was killed rather than failing by itself (a signal, the OOM killer,
/// an eviction, a lost node): such an attempt is retried. `None` for a mover that exited with
/// its own error (retrying would fail the same way) or is not done. Pure.
pub fn killed(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "mover")
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match terminated {
        Some(t) if t.reason.as_deref() == Some("OOMKilled") => {
            let limit = p
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .find(|c| c.name == "mover")
                .and_then(|c| c.resources.as_ref())
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("memory"))
                .map(|q| format!(" of {}", q.0))
                .unwrap_or_default();
            Some(format!(
                "the mover was OOMKilled: it needed more than its memory limit{limit}; raise spec.volumes.moverResources.limits.memory of the Backup"
            ))
        }
        Some(t) if t.exit_code >= 128 => Some(format!(
            "the mover was killed (exit code {}, signal {})",
            t.exit_code,
            t.exit_code - 128
        )),
        Some(_) => None,
        None if status.phase.as_deref() == Some("Failed") => Some(format!(
            "the mover pod failed without finishing ({}: {})",
            status.reason.as_deref().unwrap_or("no reason"),
            status.message.as_deref().unwrap_or("no message")
        )),
        None => None,
    }
}

/// The exit code of the mover container, once it ended. Pure.
pub fn exit_code(p: &Pod) -> Option<i32> {
    p.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "mover")?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// The outcome of a mover pod from its status. Pure.
pub fn outcome(p: &Pod) -> Outcome {
    let status = p.status.clone().unwrap_or_default();
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "mover")
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    match (status.phase.as_deref(), terminated) {
        (_, Some(t)) => match Exit::from_code(t.exit_code) {
            Exit::Succeeded => Outcome::Succeeded,
            Exit::Partial => Outcome::Partial,
            // Nothing to do is a failure here: the controller always asks for a snapshot.
            Exit::NothingToDo | Exit::Failed(_) => Outcome::Failed(format!(
                "mover exited with code {}{}",
                t.exit_code,
                t.message.map(|m| format!(": {m}")).unwrap_or_default()
            )),
        },
        (Some("Failed"), None) => Outcome::Failed(
            status
                .message
                .unwrap_or_else(|| "the mover pod failed".into()),
        ),
        (Some("Succeeded"), None) => Outcome::Succeeded,
        _ => Outcome::Running,
    }
}

/// The last `lines` lines of the mover's log (`None` when it cannot be read).
pub async fn log(pods: &Api<Pod>, name: &str, lines: i64) -> Option<String> {
    let lp = LogParams {
        container: Some("mover".into()),
        tail_lines: Some(lines),
        ..Default::default()
    };
    pods.logs(name, &lp).await.ok()
}

/// Why the mover failed, from the end of its log (`error` events and the final error line).
pub async fn failure_detail(pods: &Api<Pod>, name: &str) -> Option<String> {
    let lines = protocol::failure_lines(&log(pods, name, 20).await?);
    (!lines.is_empty()).then(|| lines.join("; ").chars().take(2000).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, exit: Option<i32>) -> Pod {
        let mut v = serde_json::json!({"status": {"phase": phase, "containerStatuses": [
            {"name": "mover", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
        ]}});
        if let Some(code) = exit {
            v["status"]["containerStatuses"][0]["state"] =
                serde_json::json!({"terminated": {"exitCode": code}});
        }
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn exit_codes_decide_the_outcome() {
        assert_eq!(outcome(&pod("Running", None)), Outcome::Running);
        assert_eq!(outcome(&pod("Succeeded", Some(0))), Outcome::Succeeded);
        assert_eq!(
            outcome(&pod("Failed", Some(i32::from(protocol::exit::PARTIAL)))),
            Outcome::Partial
        );
        assert_eq!(
            outcome(&pod("Failed", Some(137))),
            Outcome::Failed("mover exited with code 137".into())
        );
        assert!(matches!(outcome(&pod("Failed", None)), Outcome::Failed(_)));
    }

    #[test]
    fn killed_movers_are_told_from_failed_ones() {
        assert!(killed(&pod("Failed", Some(1))).is_none());
        assert!(killed(&pod("Running", None)).is_none());
        let k = killed(&pod("Failed", Some(137))).expect("killed");
        assert!(k.contains("signal 9"), "{k}");
        let mut oom = pod("Failed", Some(137));
        oom.status
            .as_mut()
            .expect("status")
            .container_statuses
            .as_mut()
            .expect("cs")[0]
            .state
            .as_mut()
            .expect("state")
            .terminated
            .as_mut()
            .expect("t")
            .reason = Some("OOMKilled".into());
        let k = killed(&oom).expect("oom");
        assert!(
            k.contains("OOMKilled") && k.contains("moverResources"),
            "{k}"
        );
        let mut evicted = pod("Failed", None);
        evicted.status.as_mut().expect("status").reason = Some("Evicted".into());
        assert!(killed(&evicted).expect("evicted").contains("Evicted"));
    }
}
