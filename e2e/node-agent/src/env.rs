//! Container environment: `envFrom`, `env` (literal, Secret/ConfigMap key refs,
//! downward API fields) and `$(VAR)` expansion, as kubelet does it. Pure: the
//! Secrets and ConfigMaps are fetched by the caller ([`referenced_objects`]) and
//! passed in as [`Sources`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Container;

/// Values of the pod that the downward API can expose.
#[derive(Debug, Clone, Default)]
pub struct PodFields {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node_name: String,
    pub service_account: String,
    pub pod_ip: String,
    pub host_ip: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Node capacity used for `resourceFieldRef` when the container sets no value.
    pub node_cpu_cores: u64,
    pub node_memory_bytes: u64,
}

/// Secrets and ConfigMaps the container refers to; `None` = not found.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

/// Names of the ConfigMaps and Secrets a container's env refers to.
pub fn referenced_objects(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &vf.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// Downward API field value (`fieldRef.fieldPath`).
pub fn field_value(path: &str, f: &PodFields) -> Result<String, String> {
    let quoted_key = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?;
        let rest = rest
            .strip_prefix("['")
            .or_else(|| rest.strip_prefix("[\""))?;
        let key = rest
            .strip_suffix("']")
            .or_else(|| rest.strip_suffix("\"]"))?;
        Some(key.to_string())
    };
    Ok(match path {
        "metadata.name" => f.name.clone(),
        "metadata.namespace" => f.namespace.clone(),
        "metadata.uid" => f.uid.clone(),
        "spec.nodeName" => f.node_name.clone(),
        "spec.serviceAccountName" => f.service_account.clone(),
        "status.podIP" | "status.podIPs" => f.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => f.host_ip.clone(),
        "metadata.labels" => format_map(&f.labels),
        "metadata.annotations" => format_map(&f.annotations),
        _ => {
            if let Some(k) = quoted_key("metadata.labels") {
                f.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = quoted_key("metadata.annotations") {
                f.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath {path:?}"));
            }
        }
    })
}

/// `key="value"` lines, sorted, as the downward API writes label/annotation files.
pub fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses a Kubernetes quantity into a float in base units (cores, bytes).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    f: &PodFields,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let res = c.resources.as_ref();
    let set = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource {resource:?}")),
    }
    .and_then(|m| m.get(name))
    .and_then(|q| parse_quantity(&q.0));
    let value = match (set, name) {
        (Some(v), _) => v,
        (None, "cpu") => {
            if kind == "requests" {
                0.0
            } else {
                f.node_cpu_cores as f64
            }
        }
        (None, "memory") | (None, "ephemeral-storage") => {
            if kind == "requests" {
                0.0
            } else {
                f.node_memory_bytes as f64
            }
        }
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let div = divisor
        .and_then(parse_quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / div).ceil() as i64))
}

/// Expands `$(NAME)` references from `vars`; `$$` escapes `$`; unknown
/// references stay as written (kubelet's rules).
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let name = &input[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&input[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The container's environment in kubelet order: `base` (service variables etc.),
/// then `envFrom`, then `env`, later entries overriding earlier ones and `$(VAR)`
/// in `env` values expanded against what came before.
pub fn resolve_env(
    c: &Container,
    fields: &PodFields,
    sources: &Sources,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let set =
        |order: &mut Vec<String>, vars: &mut BTreeMap<String, String>, k: String, v: String| {
            if !vars.contains_key(&k) {
                order.push(k.clone());
            }
            vars.insert(k, v);
        };
    for (k, v) in base {
        set(&mut order, &mut vars, k.clone(), v.clone());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut order, &mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut order,
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                let v = sources
                    .config_maps
                    .get(&r.name)
                    .cloned()
                    .flatten()
                    .and_then(|d| d.get(&r.key).cloned());
                match v {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            r.key, fields.namespace, r.name
                        ));
                    }
                }
            } else if let Some(r) = &vf.secret_key_ref {
                let v = sources
                    .secrets
                    .get(&r.name)
                    .cloned()
                    .flatten()
                    .and_then(|d| d.get(&r.key).cloned());
                match v {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in Secret {}/{}",
                            r.key, fields.namespace, r.name
                        ));
                    }
                }
            } else if let Some(r) = &vf.field_ref {
                field_value(&r.field_path, fields)?
            } else if let Some(r) = &vf.resource_field_ref {
                resource_value(
                    c,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    fields,
                )?
            } else {
                return Err(format!("env {:?}: unsupported valueFrom", e.name));
            }
        } else {
            expand(e.value.as_deref().unwrap_or_default(), &vars)
        };
        set(&mut order, &mut vars, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, SecretKeySelector,
    };

    fn fields() -> PodFields {
        PodFields {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u-1".into(),
            node_name: "holdfast-node-1".into(),
            pod_ip: "127.0.0.1".into(),
            host_ip: "127.0.0.1".into(),
            labels: [("app".to_string(), "x".to_string())].into(),
            node_cpu_cores: 2,
            node_memory_bytes: 1024,
            ..Default::default()
        }
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(src),
            ..Default::default()
        }
    }

    #[test]
    fn expansion() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$A ü", &vars), "$A ü");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn full_resolution() {
        let c = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cm".into(),
                    optional: None,
                }),
                prefix: Some("CM_".into()),
                ..Default::default()
            }]),
            env: Some(vec![
                env("PLAIN", "v"),
                env("REF", "$(PLAIN)-$(CM_k)"),
                from(
                    "SEC",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "s".into(),
                            key: "pw".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "OPT",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "missing".into(),
                            key: "k".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "NODE",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "spec.nodeName".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "APP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
                env("BASE", "override"),
            ]),
            ..Default::default()
        };
        let sources = Sources {
            config_maps: [
                (
                    "cm".to_string(),
                    Some([("k".to_string(), "cmv".to_string())].into()),
                ),
                ("missing".to_string(), None),
            ]
            .into(),
            secrets: [(
                "s".to_string(),
                Some([("pw".to_string(), b"secret".to_vec())].into()),
            )]
            .into(),
        };
        let (cms, secrets) = referenced_objects(&c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["cm", "missing"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["s"]);
        let out =
            resolve_env(&c, &fields(), &sources, &[("BASE".into(), "b".into())]).expect("resolves");
        let got: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("BASE", "override"),
                ("CM_k", "cmv"),
                ("PLAIN", "v"),
                ("REF", "v-cmv"),
                ("SEC", "secret"),
                ("NODE", "holdfast-node-1"),
                ("APP", "x"),
            ]
        );
    }

    #[test]
    fn missing_required_key_is_an_error() {
        let c = Container {
            name: "c".into(),
            env: Some(vec![from(
                "SEC",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "s".into(),
                        key: "nope".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let sources = Sources {
            secrets: [("s".to_string(), Some(BTreeMap::new()))].into(),
            ..Default::default()
        };
        let err = resolve_env(&c, &fields(), &sources, &[]).expect_err("fails");
        assert!(
            err.contains("couldn't find key nope in Secret ns/s"),
            "{err}"
        );
    }

    #[test]
    fn fields_and_quantities() {
        let f = fields();
        assert_eq!(field_value("metadata.uid", &f).as_deref(), Ok("u-1"));
        assert_eq!(
            field_value("metadata.labels[\"app\"]", &f).as_deref(),
            Ok("x")
        );
        assert!(field_value("spec.bogus", &f).is_err());
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2Gi"), Some(2.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("x"), None);
    }
}
