//! The OperatorHub and bundle checks of today's operator-framework/api validators that
//! `operator-verify` v0.9.1 (the only version we can build) lacks, written again in Rust and
//! run on the files of `bundle/` (e2e test `bundle.rs`). Pure: the caller reads the files.
//! Each check names the upstream validator it follows; `docs/design/0009-olm-bundle.md`
//! lists them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::Value;

/// A bundle's files: path relative to the bundle directory (`manifests/…`, `metadata/…`,
/// `bundle.Dockerfile`) and content.
pub type Files = BTreeMap<String, String>;

/// Reads every file under a bundle directory.
pub fn load(dir: &Path) -> Result<Files> {
    fn walk(base: &Path, dir: &Path, out: &mut Files) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                out.insert(rel.to_string_lossy().replace('\\', "/"), text);
            }
        }
        Ok(())
    }
    let mut out = Files::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// OperatorHub's standard categories (standardcategories.go, 2024 list).
pub const CATEGORIES: [&str; 16] = [
    "AI/Machine Learning",
    "Application Runtime",
    "Big Data",
    "Cloud Provider",
    "Developer Tools",
    "Database",
    "Integration & Delivery",
    "Logging & Tracing",
    "Monitoring",
    "Modernization & Migration",
    "Networking",
    "OpenShift Optional",
    "Security",
    "Storage",
    "Streaming & Messaging",
    "Observability",
];

/// The capability levels (standardcapabilities.go).
pub const CAPABILITIES: [&str; 5] = [
    "Basic Install",
    "Seamless Upgrades",
    "Full Lifecycle",
    "Deep Insights",
    "Auto Pilot",
];

/// The OpenShift feature annotations certification asks for (each "true" or "false").
pub const OPENSHIFT_FEATURES: [&str; 10] = [
    "disconnected",
    "fips-compliant",
    "proxy-aware",
    "tls-profiles",
    "token-auth-aws",
    "token-auth-azure",
    "token-auth-gcp",
    "cnf",
    "cni",
    "csi",
];

/// API versions removed from Kubernetes (deprecation guide, 1.16 to 1.32), by apiVersion,
/// with the kinds removed ("*": every kind of that version).
const REMOVED_APIS: [(&str, &[&str]); 24] = [
    ("apiextensions.k8s.io/v1beta1", &["*"]),
    ("admissionregistration.k8s.io/v1beta1", &["*"]),
    ("apiregistration.k8s.io/v1beta1", &["*"]),
    ("authentication.k8s.io/v1beta1", &["*"]),
    ("authorization.k8s.io/v1beta1", &["*"]),
    ("certificates.k8s.io/v1beta1", &["*"]),
    ("coordination.k8s.io/v1beta1", &["*"]),
    ("rbac.authorization.k8s.io/v1beta1", &["*"]),
    ("scheduling.k8s.io/v1beta1", &["*"]),
    ("networking.k8s.io/v1beta1", &["Ingress", "IngressClass"]),
    ("extensions/v1beta1", &["*"]),
    ("apps/v1beta1", &["*"]),
    ("apps/v1beta2", &["*"]),
    (
        "storage.k8s.io/v1beta1",
        &[
            "CSIDriver",
            "CSINode",
            "StorageClass",
            "VolumeAttachment",
            "CSIStorageCapacity",
        ],
    ),
    ("batch/v1beta1", &["CronJob"]),
    ("discovery.k8s.io/v1beta1", &["EndpointSlice"]),
    ("events.k8s.io/v1beta1", &["Event"]),
    ("autoscaling/v2beta1", &["HorizontalPodAutoscaler"]),
    ("autoscaling/v2beta2", &["HorizontalPodAutoscaler"]),
    (
        "policy/v1beta1",
        &["PodDisruptionBudget", "PodSecurityPolicy"],
    ),
    ("node.k8s.io/v1beta1", &["RuntimeClass"]),
    ("flowcontrol.apiserver.k8s.io/v1beta1", &["*"]),
    ("flowcontrol.apiserver.k8s.io/v1beta2", &["*"]),
    ("flowcontrol.apiserver.k8s.io/v1beta3", &["*"]),
];

/// The largest gzip-compressed bundle OLM can stage in one ConfigMap (bundle.go).
pub const MAX_COMPRESSED_BYTES: usize = 1 << 20;

/// Every problem found, one line each, prefixed with the check's name. Empty: all passed.
pub fn check(files: &Files) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |check: &str, msg: String| out.push(format!("[{check}] {msg}"));
    let docs = match manifests(files) {
        Ok(d) => d,
        Err(e) => {
            say("load", format!("{e:#}"));
            return out;
        }
    };
    let csvs: Vec<&Value> = docs
        .values()
        .filter(|d| d["kind"] == "ClusterServiceVersion")
        .collect();
    let [csv] = csvs.as_slice() else {
        say(
            "load",
            format!(
                "{} ClusterServiceVersions in manifests/, want 1",
                csvs.len()
            ),
        );
        return out;
    };
    let crds: Vec<&Value> = docs
        .values()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let ann = &csv["metadata"]["annotations"];
    let spec = &csv["spec"];
    let name = csv["metadata"]["name"].as_str().unwrap_or_default();

    // csv.go validateVersionKind
    for f in ["apiVersion", "kind"] {
        if csv[f].as_str().is_none_or(str::is_empty) {
            say("csv", format!("'{f}' is missing"));
        }
    }
    // csv.go parseCSVNameFormat: the name is also a label value
    if !is_label_value(name) {
        say(
            "csv",
            format!("metadata.name {name:?} is not a valid label value (63 characters at most)"),
        );
    }
    // good_practices.go checkBundleName
    match name.split(".v").collect::<Vec<_>>().as_slice() {
        [_, v] if semver::Version::parse(v).is_ok() => {}
        _ => say(
            "good-practices",
            format!("metadata.name {name:?} is not <package>.v<semver>"),
        ),
    }
    // csv.go validateMinKubeVersion (strict semver since v0.10)
    match spec["minKubeVersion"].as_str() {
        None | Some("") => say("csv", "spec.minKubeVersion is not set".into()),
        Some(v) if semver::Version::parse(v).is_err() => say(
            "csv",
            format!("spec.minKubeVersion {v:?} is not MAJOR.MINOR.PATCH"),
        ),
        Some(_) => {}
    }
    // csv.go validateJSON: alm-examples must be JSON (v0.9.1 also accepts YAML)
    let examples = match ann["alm-examples"].as_str() {
        None => {
            say("csv", "no alm-examples annotation".into());
            Vec::new()
        }
        Some(s) => match serde_json::from_str::<Vec<Value>>(s) {
            Ok(v) => v,
            Err(e) => {
                say("csv", format!("alm-examples is not a JSON list: {e}"));
                Vec::new()
            }
        },
    };
    // annotations.go: olm.properties belongs in metadata/properties.yaml
    if ann.get("olm.properties").is_some() {
        say(
            "csv",
            "olm.properties annotation: define these in metadata/properties.yaml".into(),
        );
    }
    // standardcategories.go, standardcapabilities.go (and OperatorHub wants both set)
    match ann["categories"].as_str() {
        None => say("categories", "no categories annotation".into()),
        Some(c) => {
            for cat in c.split(',').map(str::trim) {
                if !CATEGORIES.contains(&cat) {
                    say("categories", format!("{cat:?} is not a standard category"));
                }
            }
        }
    }
    match ann["capabilities"].as_str() {
        Some(c) if CAPABILITIES.contains(&c) => {}
        other => say(
            "capabilities",
            format!("{other:?} is not a capability level"),
        ),
    }
    // OpenShift certification: every feature annotation present, "true" or "false"
    for f in OPENSHIFT_FEATURES {
        let key = format!("features.operators.openshift.io/{f}");
        if !matches!(ann[&key].as_str(), Some("true" | "false")) {
            say("openshift", format!("{key} must be \"true\" or \"false\""));
        }
    }
    // operatorhub: icon present, one, with data that decodes and a valid mediatype
    check_icon(spec, &mut say);
    // bundle.go validateRelatedImages
    for (i, img) in spec["relatedImages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let image = img["image"].as_str().unwrap_or_default();
        if !is_pullspec(image) {
            say(
                "bundle",
                format!("relatedImages[{i}] image {image:?} is not a valid pullspec"),
            );
        }
    }
    if let Some(img) = ann["containerImage"].as_str().filter(|i| !is_pullspec(i)) {
        say(
            "bundle",
            format!("containerImage {img:?} is not a valid pullspec"),
        );
    }
    check_deployments(spec, &docs, &mut say);
    check_owned(spec, &crds, &examples, &mut say);
    check_rbac(spec, &mut say);
    check_removed_apis(&docs, spec, &mut say);
    check_metadata(files, &mut say);
    // bundle.go validateBundleSize
    let size = compressed_size(files);
    if size > MAX_COMPRESSED_BYTES {
        say(
            "bundle",
            format!("gzip-compressed bundle is {size} bytes, over {MAX_COMPRESSED_BYTES}"),
        );
    } else if size * 100 > MAX_COMPRESSED_BYTES * 85 {
        say(
            "bundle",
            format!("gzip-compressed bundle is {size} bytes, near {MAX_COMPRESSED_BYTES}"),
        );
    }
    out
}

/// The YAML documents of `manifests/` by file name (the first document of each file, as OLM
/// reads them).
fn manifests(files: &Files) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (path, text) in files {
        let Some(file) = path.strip_prefix("manifests/") else {
            continue;
        };
        let doc = serde_yaml::Deserializer::from_str(text)
            .next()
            .with_context(|| format!("{path} is empty"))?;
        let v = Value::deserialize(doc).with_context(|| format!("parsing {path}"))?;
        out.insert(file.to_string(), v);
    }
    Ok(out)
}

fn check_icon(spec: &Value, say: &mut impl FnMut(&str, String)) {
    let icons = spec["icon"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [icon] = icons else {
        say("operatorhub", format!("{} icons, want 1", icons.len()));
        return;
    };
    let media = icon["mediatype"].as_str().unwrap_or_default();
    if !["image/gif", "image/jpeg", "image/png", "image/svg+xml"].contains(&media) {
        say(
            "operatorhub",
            format!("icon mediatype {media:?} is not gif, jpeg, png or svg+xml"),
        );
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(icon["base64data"].as_str().unwrap_or_default())
        .unwrap_or_default();
    let looks_right = match media {
        "image/svg+xml" => String::from_utf8_lossy(&data).contains("<svg"),
        "image/png" => data.starts_with(b"\x89PNG"),
        _ => !data.is_empty(),
    };
    if !looks_right {
        say(
            "operatorhub",
            format!("icon data is not base64 of a {media} image"),
        );
    }
}

/// good_practices.go validateResourceRequests; bundle.go validateServiceAccounts.
fn check_deployments(
    spec: &Value,
    docs: &BTreeMap<String, Value>,
    say: &mut impl FnMut(&str, String),
) {
    let deployments = spec["install"]["spec"]["deployments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if deployments.is_empty() {
        say(
            "good-practices",
            "no deployment to install in the CSV".into(),
        );
    }
    let mut accounts = BTreeSet::new();
    for d in deployments {
        let pod = &d["spec"]["template"]["spec"];
        accounts.insert(
            pod["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
        );
        for c in pod["containers"].as_array().into_iter().flatten() {
            let req = &c["resources"]["requests"];
            if req["cpu"].is_null() || req["memory"].is_null() {
                say(
                    "good-practices",
                    format!("container {} has no CPU and memory requests", c["name"]),
                );
            }
        }
    }
    for (file, d) in docs {
        if d["kind"] == "ServiceAccount"
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| accounts.contains(n))
        {
            say(
                "bundle",
                format!(
                    "{file}: ServiceAccount {} is also the CSV deployment's",
                    d["metadata"]["name"]
                ),
            );
        }
    }
}

/// bundle.go validateOwnedCRDs (present but not owned is an error today), good_practices.go
/// validateCrdDescriptions, and ours: display names, examples and descriptors.
fn check_owned(
    spec: &Value,
    crds: &[&Value],
    examples: &[Value],
    say: &mut impl FnMut(&str, String),
) {
    let owned = spec["customresourcedefinitions"]["owned"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut owned_keys = BTreeSet::new();
    for o in owned {
        let (name, kind, version) = (
            o["name"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
            o["version"].as_str().unwrap_or_default(),
        );
        owned_keys.insert((name.to_string(), kind.to_string(), version.to_string()));
        for field in ["description", "displayName"] {
            if o[field].as_str().is_none_or(|s| s.trim().is_empty()) {
                say(
                    "good-practices",
                    format!("owned CRD {name} has an empty {field}"),
                );
            }
        }
        let group = name.split_once('.').map(|(_, g)| g).unwrap_or_default();
        let api_version = format!("{group}/{version}");
        if !examples
            .iter()
            .any(|e| e["kind"] == kind && e["apiVersion"] == api_version.as_str())
        {
            say(
                "csv",
                format!("owned {kind} ({api_version}) has no alm-example"),
            );
        }
        let Some(crd) = crds.iter().find(|c| c["metadata"]["name"] == name) else {
            say("bundle", format!("owned CRD {name} is not in manifests/"));
            continue;
        };
        let Some(schema) = crd["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == version))
            .map(|v| &v["schema"]["openAPIV3Schema"]["properties"])
        else {
            say(
                "bundle",
                format!("owned CRD {name} has no version {version}"),
            );
            continue;
        };
        for (list, part) in [("specDescriptors", "spec"), ("statusDescriptors", "status")] {
            for d in o[list].as_array().into_iter().flatten() {
                let path = d["path"].as_str().unwrap_or_default();
                let mut node = &schema[part];
                for seg in path.split('.') {
                    node = &node["properties"][seg];
                }
                if node.is_null() {
                    say(
                        "descriptors",
                        format!("{kind} {list} path {path:?} is not a field of .{part}"),
                    );
                }
            }
        }
        if !schema["status"]["properties"]["conditions"].is_null() {
            let has = o["statusDescriptors"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| {
                    d["path"] == "conditions"
                        && d["x-descriptors"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|x| x == "urn:alm:descriptor:io.kubernetes.conditions")
                });
            if !has {
                say(
                    "descriptors",
                    format!(
                        "{kind}: status.conditions lacks the io.kubernetes.conditions descriptor"
                    ),
                );
            }
        }
    }
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        for v in crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"] == true)
        {
            let key = (
                name.to_string(),
                kind.to_string(),
                v["name"].as_str().unwrap_or_default().to_string(),
            );
            if !owned_keys.contains(&key) {
                say(
                    "bundle",
                    format!(
                        "CRD {name} version {} is in manifests/ but not owned by the CSV",
                        key.2
                    ),
                );
            }
        }
    }
    for e in examples {
        let kind = e["kind"].as_str().unwrap_or_default();
        if !owned.iter().any(|o| o["kind"] == kind) {
            say("csv", format!("alm-example of {kind} names no owned kind"));
        }
        if e["spec"].is_null() {
            say("csv", format!("alm-example of {kind} has no spec"));
        }
    }
}

/// good_practices.go validateRBACForCRDsWith, checked the way upstream does (named group and
/// resource, or "*" as the resource).
fn check_rbac(spec: &Value, say: &mut impl FnMut(&str, String)) {
    for list in ["permissions", "clusterPermissions"] {
        for p in spec["install"]["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
        {
            for r in p["rules"].as_array().into_iter().flatten() {
                let has = |field: &str, wanted: &[&str]| {
                    r[field]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v.as_str().is_some_and(|s| wanted.contains(&s)))
                };
                if has("apiGroups", &["apiextensions.k8s.io"])
                    && has("resources", &["customresourcedefinitions", "*"])
                    && has("verbs", &["create", "patch", "*"])
                {
                    say(
                        "good-practices",
                        format!(
                            "{list} may create CRDs: OLM installs them, an operator should not"
                        ),
                    );
                }
            }
        }
    }
}

/// removed_apis.go (alpha-deprecated-apis, operatorhub v2): no object, owned resource or RBAC
/// rule uses an API removed from Kubernetes.
fn check_removed_apis(
    docs: &BTreeMap<String, Value>,
    spec: &Value,
    say: &mut impl FnMut(&str, String),
) {
    let removed = |api_version: &str, kind: &str| {
        REMOVED_APIS
            .iter()
            .any(|(v, kinds)| *v == api_version && (kinds.contains(&"*") || kinds.contains(&kind)))
    };
    for (file, d) in docs {
        let (v, k) = (
            d["apiVersion"].as_str().unwrap_or_default(),
            d["kind"].as_str().unwrap_or_default(),
        );
        if removed(v, k) {
            say(
                "deprecated-apis",
                format!("{file}: {k} {v} is removed from Kubernetes"),
            );
        }
    }
    for o in spec["customresourcedefinitions"]["owned"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for r in o["resources"].as_array().into_iter().flatten() {
            let (v, k) = (
                r["version"].as_str().unwrap_or_default(),
                r["kind"].as_str().unwrap_or_default(),
            );
            if REMOVED_APIS
                .iter()
                .any(|(rv, kinds)| rv.ends_with(&format!("/{v}")) && kinds.contains(&k))
            {
                say(
                    "deprecated-apis",
                    format!(
                        "owned {}: resource {k} {v} is removed from Kubernetes",
                        o["kind"]
                    ),
                );
            }
        }
    }
    for list in ["permissions", "clusterPermissions"] {
        for p in spec["install"]["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
        {
            for r in p["rules"].as_array().into_iter().flatten() {
                if r["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x == "podsecuritypolicies")
                {
                    say(
                        "deprecated-apis",
                        format!("{list}: podsecuritypolicies were removed in 1.25"),
                    );
                }
            }
        }
    }
}

/// The bundle metadata today's loader reads (v0.9.1 ignores it): annotations.yaml with
/// registry+v1, the package, channels following OLM's naming convention
/// (good_practices.go validateHubChannels) with the default among them, and the Dockerfile
/// labelled the same.
fn check_metadata(files: &Files, say: &mut impl FnMut(&str, String)) {
    let Some(text) = files.get("metadata/annotations.yaml") else {
        say("metadata", "no metadata/annotations.yaml".into());
        return;
    };
    let ann: BTreeMap<String, String> =
        match serde_yaml::from_str::<BTreeMap<String, BTreeMap<String, String>>>(text) {
            Ok(mut m) => m.remove("annotations").unwrap_or_default(),
            Err(e) => {
                say("metadata", format!("annotations.yaml: {e}"));
                return;
            }
        };
    const P: &str = "operators.operatorframework.io.bundle.";
    let get = |k: &str| {
        ann.get(&format!("{P}{k}"))
            .map(String::as_str)
            .unwrap_or_default()
    };
    for (k, want) in [
        ("mediatype.v1", "registry+v1"),
        ("manifests.v1", "manifests/"),
        ("metadata.v1", "metadata/"),
    ] {
        if get(k) != want {
            say("metadata", format!("{P}{k} is {:?}, want {want:?}", get(k)));
        }
    }
    if get("package.v1").is_empty() {
        say("metadata", "no package name".into());
    }
    let channels: Vec<&str> = get("channels.v1")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if channels.is_empty() {
        say("metadata", "no channels".into());
    }
    let default = get("channel.default.v1");
    if !default.is_empty() && !channels.contains(&default) {
        say(
            "metadata",
            format!("default channel {default:?} is not one of {channels:?}"),
        );
    }
    for c in channels
        .iter()
        .chain(Some(&default).filter(|d| !d.is_empty()))
    {
        if !["candidate", "fast", "stable"]
            .iter()
            .any(|p| c.starts_with(p))
        {
            say(
                "good-practices",
                format!(
                    "channel {c:?} does not follow the naming convention (candidate, fast, stable)"
                ),
            );
        }
    }
    match files.get("bundle.Dockerfile") {
        None => say("metadata", "no bundle.Dockerfile".into()),
        Some(df) => {
            let labels: BTreeMap<&str, &str> = df
                .lines()
                .filter_map(|l| l.strip_prefix("LABEL "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let want: BTreeMap<&str, &str> =
                ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if labels != want {
                say(
                    "metadata",
                    format!(
                        "bundle.Dockerfile labels {labels:?} differ from annotations.yaml {want:?}"
                    ),
                );
            }
        }
    }
}

/// Size of the bundle's files, gzip-compressed together.
fn compressed_size(files: &Files) -> usize {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for text in files.values() {
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(text.as_bytes());
    }
    gz.finish().map(|v| v.len()).unwrap_or(usize::MAX)
}

/// A Kubernetes label value: at most 63 characters, alphanumerics with `-_.` inside.
fn is_label_value(s: &str) -> bool {
    let ok = regex_lite::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").ok();
    s.len() <= 63 && ok.is_some_and(|r| r.is_match(s))
}

/// An image reference as distribution/reference parses it: `[host[:port]/]path[:tag][@digest]`.
fn is_pullspec(s: &str) -> bool {
    const COMPONENT: &str = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let re = format!(
        r"^(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)/)?{COMPONENT}(?:/{COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
    );
    !s.is_empty() && regex_lite::Regex::new(&re).is_ok_and(|r| r.is_match(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::crdgen;
    use std::path::PathBuf;

    /// The bundle as `crdgen` renders it (the drift check keeps `bundle/` equal to it).
    fn rendered() -> Files {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        crdgen::render_all(&root)
            .expect("render")
            .into_iter()
            .filter_map(|(p, body)| {
                p.strip_prefix(crate::cli::bundle::DIR)
                    .ok()
                    .map(|r| (r.to_string_lossy().into_owned(), body))
            })
            .collect()
    }

    const CSV: &str = "manifests/holdfast.clusterserviceversion.yaml";

    /// The bundle with its CSV changed by `f`.
    fn with_csv(f: impl FnOnce(&mut Value)) -> Files {
        let mut files = rendered();
        let mut csv: Value = serde_yaml::from_str(&files[CSV]).expect("csv");
        f(&mut csv);
        files.insert(CSV.into(), serde_yaml::to_string(&csv).expect("yaml"));
        files
    }

    fn findings_of(files: &Files, check: &str) -> Vec<String> {
        check_all(files)
            .into_iter()
            .filter(|f| f.starts_with(&format!("[{check}]")))
            .collect()
    }

    fn check_all(files: &Files) -> Vec<String> {
        super::check(files)
    }

    #[test]
    fn the_rendered_bundle_passes() {
        assert_eq!(check_all(&rendered()), Vec::<String>::new());
    }

    #[test]
    fn each_check_fails_on_a_broken_bundle() {
        let cases: Vec<(&str, Files)> = vec![
            (
                "categories",
                with_csv(|c| c["metadata"]["annotations"]["categories"] = "Storage, Backup".into()),
            ),
            (
                "capabilities",
                with_csv(|c| c["metadata"]["annotations"]["capabilities"] = "Level 1".into()),
            ),
            (
                "csv",
                with_csv(|c| c["spec"]["minKubeVersion"] = "1.30".into()),
            ),
            (
                "csv",
                with_csv(|c| {
                    c["metadata"]["annotations"]["alm-examples"] = "- kind: Backup".into()
                }),
            ),
            (
                "csv",
                with_csv(|c| c["metadata"]["annotations"]["olm.properties"] = "[]".into()),
            ),
            (
                "csv",
                with_csv(|c| {
                    c["metadata"]["name"] = format!("holdfast-{}.v0.1.0", "x".repeat(60)).into()
                }),
            ),
            (
                "good-practices",
                with_csv(|c| c["metadata"]["name"] = "holdfast.v0.1".into()),
            ),
            (
                "openshift",
                with_csv(|c| {
                    c["metadata"]["annotations"]["features.operators.openshift.io/csi"] =
                        "no".into()
                }),
            ),
            (
                "operatorhub",
                with_csv(|c| c["spec"]["icon"][0]["base64data"] = "bm90IGFuIGltYWdl".into()),
            ),
            (
                "bundle",
                with_csv(|c| {
                    c["spec"]["relatedImages"][0]["image"] = "ghcr.io/Holdfast:latest".into()
                }),
            ),
            (
                "good-practices",
                with_csv(|c| {
                    c["spec"]["install"]["spec"]["deployments"][0]["spec"]["template"]["spec"]["containers"]
                        [0]["resources"] = serde_json::json!({});
                }),
            ),
            (
                "good-practices",
                with_csv(|c| {
                    c["spec"]["customresourcedefinitions"]["owned"][0]["description"] = "".into()
                }),
            ),
            (
                "bundle",
                with_csv(|c| {
                    c["spec"]["customresourcedefinitions"]["owned"]
                        .as_array_mut()
                        .expect("owned")
                        .pop();
                }),
            ),
            (
                "descriptors",
                with_csv(|c| {
                    c["spec"]["customresourcedefinitions"]["owned"][0]["specDescriptors"][0]["path"] =
                        "nope".into()
                }),
            ),
            (
                "good-practices",
                with_csv(|c| {
                    c["spec"]["install"]["spec"]["clusterPermissions"][0]["rules"]
                    .as_array_mut()
                    .expect("rules")
                    .push(serde_json::json!({"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["create"]}));
                }),
            ),
            (
                "deprecated-apis",
                with_csv(|c| {
                    c["spec"]["customresourcedefinitions"]["owned"][0]["resources"] = serde_json::json!([{"kind": "CronJob", "name": "cronjobs", "version": "v1beta1"}]);
                }),
            ),
        ];
        for (check, files) in cases {
            assert!(
                !findings_of(&files, check).is_empty(),
                "{check} found nothing in: {:?}",
                check_all(&files)
            );
        }
    }

    #[test]
    fn metadata_checks_fail_on_broken_metadata() {
        let mut files = rendered();
        let ann = files["metadata/annotations.yaml"]
            .replace("channels.v1: candidate", "channels.v1: alpha");
        files.insert("metadata/annotations.yaml".into(), ann);
        let found = check_all(&files);
        assert!(
            found
                .iter()
                .any(|f| f.contains("\"alpha\" does not follow")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.contains("default channel")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.contains("bundle.Dockerfile labels")),
            "{found:?}"
        );

        let mut files = rendered();
        files.insert(
            "manifests/sa.yaml".into(),
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: holdfast}\n".into(),
        );
        files.insert(
            "manifests/pdb.yaml".into(),
            "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata: {name: x}\n".into(),
        );
        let found = check_all(&files);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("[bundle]") && f.contains("ServiceAccount")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with("[deprecated-apis]")),
            "{found:?}"
        );
    }

    #[test]
    fn pullspecs_and_label_values() {
        for ok in [
            "ghcr.io/holdfast-dev/holdfast:0.1.0",
            "busybox",
            "localhost:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(is_pullspec(ok), "{ok}");
        }
        for bad in ["", "ghcr.io/Holdfast", "a:b:c", "ghcr.io/x:"] {
            assert!(!is_pullspec(bad), "{bad}");
        }
        assert!(is_label_value("holdfast.v0.1.0"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(!is_label_value("-a"));
    }
}
