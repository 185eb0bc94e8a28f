//! Pod volumes on the host: resolves each volume of a pod to a host path
//! (PVC → bound PV → hostpath CSI directory; emptyDir → a directory under the
//! pod dir; Secret/ConfigMap/downward API/projected → files written there).
//! Talks to the cluster (per-object GETs, TokenRequest).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;

use crate::agent::Agent;
use crate::env::{PodFields, field_value, parse_quantity};

/// A volume ready to be bind-mounted.
#[derive(Debug, Clone)]
pub struct HostVolume {
    pub path: PathBuf,
    /// The volume itself is read-only (e.g. `persistentVolumeClaim.readOnly`).
    pub read_only: bool,
}

pub const CSI_HOSTPATH_DRIVER: &str = "hostpath.csi.k8s.io";

fn io<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn write_file(
    dir: &Path,
    rel: &str,
    data: &[u8],
    mode: i32,
    fs_group: Option<u32>,
) -> Result<(), String> {
    if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
        return Err(format!("invalid path {rel:?}"));
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    // write and rename, so a process reading the file (e.g. a refreshed token) never sees half of it
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, data).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode as u32 & 0o7777))
        .map_err(io(format!("chmod {}", tmp.display())))?;
    if let Some(g) = fs_group {
        nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(io(format!("chown {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))?;
    Ok(())
}

/// Writes `data` keys as files (all keys, or the listed `items`).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    fs_group: Option<u32>,
    what: &str,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for it in items {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| format!("{what}: key {:?} not found", it.key))?;
                write_file(dir, &it.path, v, it.mode.unwrap_or(default_mode), fs_group)?;
            }
        }
        None => {
            for (k, v) in data {
                write_file(dir, k, v, default_mode, fs_group)?;
            }
        }
    }
    Ok(())
}

pub async fn config_map_data(
    agent: &Agent,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(agent.client.clone(), ns);
    let cm = api
        .get_opt(name)
        .await
        .map_err(io(format!("getting configmap {ns}/{name}")))?;
    Ok(cm.map(|cm| {
        let mut m: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        m.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        m
    }))
}

pub async fn secret_data(
    agent: &Agent,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<Secret> = Api::namespaced(agent.client.clone(), ns);
    let s = api
        .get_opt(name)
        .await
        .map_err(io(format!("getting secret {ns}/{name}")))?;
    Ok(s.map(|s| {
        let mut m: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        m.extend(
            s.string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        m
    }))
}

fn downward_file(
    item: &DownwardAPIVolumeFile,
    pod: &Pod,
    fields: &PodFields,
) -> Result<Vec<u8>, String> {
    if let Some(f) = &item.field_ref {
        return field_value(&f.field_path, fields).map(String::into_bytes);
    }
    if let Some(r) = &item.resource_field_ref {
        let container = r.container_name.as_deref().unwrap_or_default();
        let c = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == container))
            .ok_or_else(|| format!("downwardAPI: container {container:?} not found"))?;
        let (kind, name) = r.resource.split_once('.').unwrap_or(("limits", "cpu"));
        let set = c
            .resources
            .as_ref()
            .and_then(|res| {
                if kind == "requests" {
                    res.requests.as_ref()
                } else {
                    res.limits.as_ref()
                }
            })
            .and_then(|m| m.get(name))
            .and_then(|q| parse_quantity(&q.0));
        let value = set.unwrap_or(match name {
            "cpu" => fields.node_cpu_cores as f64,
            _ => fields.node_memory_bytes as f64,
        });
        let div = r
            .divisor
            .as_ref()
            .and_then(|d| parse_quantity(&d.0))
            .filter(|d| *d > 0.0)
            .unwrap_or(1.0);
        return Ok(format!("{}", (value / div).ceil() as i64).into_bytes());
    }
    Err(format!(
        "downwardAPI item {:?}: no fieldRef or resourceFieldRef",
        item.path
    ))
}

async fn service_account_token(
    agent: &Agent,
    pod: &Pod,
    audience: Option<&str>,
    expiration: Option<i64>,
) -> Result<Vec<u8>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(agent.client.clone(), ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]),
            expiration_seconds: Some(expiration.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let resp = api
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
        .map_err(io(format!(
            "requesting a token for serviceaccount {ns}/{sa}"
        )))?;
    Ok(resp
        .status
        .and_then(|s| s.token)
        .unwrap_or_default()
        .into_bytes())
}

/// Host path of a PV's data, for the PV kinds the testbed uses.
pub fn pv_host_path(
    pv: &PersistentVolume,
    csi_state_dir: Option<&Path>,
) -> Result<PathBuf, String> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv
        .spec
        .as_ref()
        .ok_or_else(|| format!("persistentvolume {name} has no spec"))?;
    if let Some(csi) = &spec.csi {
        if csi.driver != CSI_HOSTPATH_DRIVER {
            return Err(format!(
                "persistentvolume {name}: CSI driver {} is not supported (only {CSI_HOSTPATH_DRIVER})",
                csi.driver
            ));
        }
        let dir = csi_state_dir
            .ok_or_else(|| format!("persistentvolume {name}: no --csi-state-dir given"))?;
        return hostpath_volume_dir(dir, &csi.volume_handle);
    }
    if let Some(hp) = &spec.host_path {
        return Ok(PathBuf::from(&hp.path));
    }
    if let Some(local) = &spec.local {
        return Ok(PathBuf::from(&local.path));
    }
    Err(format!(
        "persistentvolume {name}: unsupported volume source"
    ))
}

/// `<statedir>/<handle>`; falls back to the driver's `state.json` (`volumes.<id>.path`).
pub fn hostpath_volume_dir(state_dir: &Path, handle: &str) -> Result<PathBuf, String> {
    if handle.is_empty() || handle.contains('/') || handle == ".." {
        return Err(format!("invalid volume handle {handle:?}"));
    }
    let direct = state_dir.join(handle);
    if direct.is_dir() {
        return Ok(direct);
    }
    let state = std::fs::read(state_dir.join("state.json")).ok();
    let from_state = state
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("volumes")?
                .get(handle)?
                .get("path")?
                .as_str()
                .map(PathBuf::from)
        });
    match from_state {
        Some(p) if p.is_dir() => Ok(p),
        _ => Err(format!(
            "hostpath volume {handle} not found under {}",
            state_dir.display()
        )),
    }
}

async fn pvc_path(agent: &Agent, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(agent.client.clone(), ns);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(io(format!("getting persistentvolumeclaim {ns}/{claim}")))?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if phase != "Bound" || volume.is_empty() {
        return Err(format!(
            "persistentvolumeclaim {claim:?} is not bound (phase {phase:?})"
        ));
    }
    let pvs: Api<PersistentVolume> = Api::all(agent.client.clone());
    let pv = pvs
        .get(&volume)
        .await
        .map_err(io(format!("getting persistentvolume {volume}")))?;
    pv_host_path(&pv, agent.csi_state_dir.as_deref())
}

/// Prepares every volume of the pod. Errors are messages for the pod's events/status.
pub async fn prepare(
    agent: &Agent,
    pod: &Pod,
    pod_dir: &Path,
    fields: &PodFields,
) -> Result<BTreeMap<String, HostVolume>, String> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(|g| g as u32);
    let mut out = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let hv = prepare_one(agent, pod, &ns, &pod_name, pod_dir, v, fields, fs_group)
            .await
            .map_err(|e| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name))?;
        out.insert(v.name.clone(), hv);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn prepare_one(
    agent: &Agent,
    pod: &Pod,
    ns: &str,
    pod_name: &str,
    pod_dir: &Path,
    v: &Volume,
    fields: &PodFields,
    fs_group: Option<u32>,
) -> Result<HostVolume, String> {
    let dir = pod_dir.join("volumes").join(&v.name);
    let fresh_dir = || -> Result<PathBuf, String> {
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(dir.clone())
    };
    if let Some(pvc) = &v.persistent_volume_claim {
        return Ok(HostVolume {
            path: pvc_path(agent, ns, &pvc.claim_name).await?,
            read_only: pvc.read_only == Some(true),
        });
    }
    if v.ephemeral.is_some() {
        // generic ephemeral volume: the PVC is named <pod>-<volume>
        return Ok(HostVolume {
            path: pvc_path(agent, ns, &format!("{pod_name}-{}", v.name)).await?,
            read_only: false,
        });
    }
    if v.empty_dir.is_some() {
        let d = fresh_dir()?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
            .map_err(io("chmod emptyDir"))?;
        return Ok(HostVolume {
            path: d,
            read_only: false,
        });
    }
    if let Some(hp) = &v.host_path {
        let p = PathBuf::from(&hp.path);
        match hp.type_.as_deref() {
            Some("DirectoryOrCreate") => {
                std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?
            }
            Some("FileOrCreate") if !p.exists() => {
                std::fs::File::create(&p).map_err(io(format!("creating {}", p.display())))?;
            }
            _ => {}
        }
        if !p.exists() && hp.type_.as_deref().unwrap_or_default() != "" {
            return Err(format!("hostPath {} does not exist", p.display()));
        }
        return Ok(HostVolume {
            path: p,
            read_only: false,
        });
    }
    if let Some(s) = &v.secret {
        let d = fresh_dir()?;
        let name = s.secret_name.clone().unwrap_or_default();
        match secret_data(agent, ns, &name).await? {
            Some(data) => write_keys(
                &d,
                &data,
                s.items.as_ref(),
                s.default_mode.unwrap_or(0o644),
                fs_group,
                &format!("secret {name}"),
            )?,
            None if s.optional == Some(true) => {}
            None => return Err(format!("secret {name:?} not found")),
        }
        return Ok(HostVolume {
            path: d,
            read_only: true,
        });
    }
    if let Some(c) = &v.config_map {
        let d = fresh_dir()?;
        let name = c.name.clone();
        match config_map_data(agent, ns, &name).await? {
            Some(data) => write_keys(
                &d,
                &data,
                c.items.as_ref(),
                c.default_mode.unwrap_or(0o644),
                fs_group,
                &format!("configmap {name}"),
            )?,
            None if c.optional == Some(true) => {}
            None => return Err(format!("configmap {name:?} not found")),
        }
        return Ok(HostVolume {
            path: d,
            read_only: true,
        });
    }
    if let Some(da) = &v.downward_api {
        let d = fresh_dir()?;
        for item in da.items.iter().flatten() {
            let data = downward_file(item, pod, fields)?;
            write_file(
                &d,
                &item.path,
                &data,
                item.mode.or(da.default_mode).unwrap_or(0o644),
                fs_group,
            )?;
        }
        return Ok(HostVolume {
            path: d,
            read_only: true,
        });
    }
    if let Some(p) = &v.projected {
        let d = fresh_dir()?;
        let default_mode = p.default_mode.unwrap_or(0o644);
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let token =
                    service_account_token(agent, pod, t.audience.as_deref(), t.expiration_seconds)
                        .await?;
                write_file(&d, &t.path, &token, default_mode, fs_group)?;
            }
            if let Some(c) = &src.config_map {
                match config_map_data(agent, ns, &c.name).await? {
                    Some(data) => write_keys(
                        &d,
                        &data,
                        c.items.as_ref(),
                        default_mode,
                        fs_group,
                        &format!("configmap {}", c.name),
                    )?,
                    None if c.optional == Some(true) => {}
                    None => return Err(format!("configmap {:?} not found", c.name)),
                }
            }
            if let Some(s) = &src.secret {
                match secret_data(agent, ns, &s.name).await? {
                    Some(data) => write_keys(
                        &d,
                        &data,
                        s.items.as_ref(),
                        default_mode,
                        fs_group,
                        &format!("secret {}", s.name),
                    )?,
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("secret {:?} not found", s.name)),
                }
            }
            if let Some(da) = &src.downward_api {
                for item in da.items.iter().flatten() {
                    let data = downward_file(item, pod, fields)?;
                    write_file(
                        &d,
                        &item.path,
                        &data,
                        item.mode.unwrap_or(default_mode),
                        fs_group,
                    )?;
                }
            }
            if src.cluster_trust_bundle.is_some() || src.pod_certificate.is_some() {
                return Err("clusterTrustBundle/podCertificate projections are not supported by the node agent".into());
            }
        }
        return Ok(HostVolume {
            path: d,
            read_only: true,
        });
    }
    Err("volume type not supported by the node agent (supported: persistentVolumeClaim, ephemeral, emptyDir, hostPath, secret, configMap, downwardAPI, projected)".into())
}

/// How often projected service account tokens must be renewed: 80% of the
/// shortest token lifetime in the pod, as kubelet does; `None` without tokens.
pub fn token_refresh_interval(pod: &Pod) -> Option<std::time::Duration> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| t.expiration_seconds.unwrap_or(3600).max(600) as u64 * 8 / 10)
        .min()
        .map(std::time::Duration::from_secs)
}

/// Requests fresh tokens for every projected serviceAccountToken of the pod and
/// replaces the files (visible at once inside the containers: the volume
/// directory is bind-mounted, the file replaced by rename).
pub async fn refresh_tokens(agent: &Agent, pod: &Pod, pod_dir: &Path) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(|g| g as u32);
    for v in spec.volumes.iter().flatten() {
        let Some(p) = &v.projected else { continue };
        let d = pod_dir.join("volumes").join(&v.name);
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let token =
                    service_account_token(agent, pod, t.audience.as_deref(), t.expiration_seconds)
                        .await?;
                write_file(
                    &d,
                    &t.path,
                    &token,
                    p.default_mode.unwrap_or(0o644),
                    fs_group,
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_refresh_at_80_percent() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "volumes": [
                {"name": "a", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}},
                {"name": "b", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "x", "expirationSeconds": 1000}}]}},
                {"name": "c", "emptyDir": {}}
            ]}
        }))
        .expect("pod");
        assert_eq!(
            token_refresh_interval(&pod),
            Some(std::time::Duration::from_secs(800))
        );
        let none: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        )
        .expect("pod");
        assert_eq!(token_refresh_interval(&none), None);
    }

    #[test]
    fn atomic_file_writes() {
        let base = std::env::temp_dir().join(format!("hf-agent-write-{}", std::process::id()));
        write_file(&base, "sub/key", b"v1", 0o640, None).expect("write");
        write_file(&base, "sub/key", b"v2", 0o640, None).expect("rewrite");
        assert_eq!(std::fs::read(base.join("sub/key")).expect("read"), b"v2");
        let mode = std::fs::metadata(base.join("sub/key"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(base.join("sub")).expect("ls").count(),
            1,
            "no temp files left"
        );
        assert!(write_file(&base, "../escape", b"x", 0o644, None).is_err());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn hostpath_dirs() {
        let base = std::env::temp_dir().join(format!("hf-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(base.join("vol-1")).expect("mkdir");
        std::fs::create_dir_all(base.join("elsewhere")).expect("mkdir");
        std::fs::write(
            base.join("state.json"),
            format!(
                r#"{{"volumes":{{"vol-2":{{"id":"vol-2","path":"{}"}}}}}}"#,
                base.join("elsewhere").display()
            ),
        )
        .expect("write");
        assert_eq!(hostpath_volume_dir(&base, "vol-1"), Ok(base.join("vol-1")));
        assert_eq!(
            hostpath_volume_dir(&base, "vol-2"),
            Ok(base.join("elsewhere"))
        );
        assert!(hostpath_volume_dir(&base, "vol-3").is_err());
        assert!(hostpath_volume_dir(&base, "../x").is_err());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
