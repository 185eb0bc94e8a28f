//! Test harness: starts or attaches to a testbed (real kube-apiserver, CSI, MinIO) and gives
//! tests namespaces, the operator as a real process, waits with state dumps, and volume helpers.
//!
//! The cluster comes from `KUBECONFIG` when it is set (any real cluster, or a testbed whose
//! `e2e/testbed env` was exported); otherwise `e2e/testbed up` is run once and its env read.
//! Object storage comes from `HOLDFAST_S3_ENDPOINT`, `HOLDFAST_S3_ACCESS_KEY`,
//! `HOLDFAST_S3_SECRET_KEY` and `HOLDFAST_S3_REGION`.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod app;
pub mod operator;
pub mod ops;
pub mod s3proxy;
pub mod second;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, Config};

/// Label put on every namespace a test creates.
pub const E2E_LABEL: &str = "holdfast.dev/e2e";

/// Where the cluster and the object store are.
#[derive(Debug, Clone)]
pub struct Env {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub s3: Option<S3Env>,
    pub repo: PathBuf,
    /// The testbed's first node (`HOLDFAST_TESTBED_NODE`).
    pub node: String,
}

/// An S3 endpoint for tests.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The test environment, starting a testbed the first time when no `KUBECONFIG` is set.
pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let mut vars: BTreeMap<String, String> = std::env::vars().collect();
        if !vars.contains_key("KUBECONFIG") {
            vars.extend(testbed_up(None, &[]));
        }
        Env::from_vars(repo_root(), &vars)
    })
}

/// Runs `e2e/testbed up` (in `dir` when given, else the default state dir; with `vars` in
/// its environment) and returns the variables `e2e/testbed env` exports.
pub fn testbed_up(dir: Option<&Path>, vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    let testbed = repo_root().join("e2e/testbed");
    let with_dir = |c: &mut Command| {
        if let Some(d) = dir {
            c.env("HOLDFAST_TESTBED_DIR", d);
        }
        // Nothing of the testbed the caller runs against (a second one is started so).
        for v in [
            "KUBECONFIG",
            "HOLDFAST_TESTBED_KUBECTL",
            "HOLDFAST_S3_ENDPOINT",
            "HOLDFAST_S3_ACCESS_KEY",
            "HOLDFAST_S3_SECRET_KEY",
        ] {
            c.env_remove(v);
        }
        c.envs(vars.iter().copied());
    };
    let mut up = Command::new(&testbed);
    up.arg("up");
    with_dir(&mut up);
    assert!(
        up.status().expect("run e2e/testbed up").success(),
        "e2e/testbed up failed; see its output above"
    );
    let mut envc = Command::new(&testbed);
    envc.arg("env");
    with_dir(&mut envc);
    let out = envc.output().expect("run e2e/testbed env");
    assert!(out.status.success(), "e2e/testbed env failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (k, v) = line.trim().strip_prefix("export ")?.split_once('=')?;
            Some((k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        })
        .collect()
}

impl Env {
    /// The environment these variables describe (`KUBECONFIG`, `HOLDFAST_S3_*`, ...).
    pub fn from_vars(repo: PathBuf, vars: &BTreeMap<String, String>) -> Env {
        let kubectl = vars
            .get("HOLDFAST_TESTBED_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        let s3 = match (
            vars.get("HOLDFAST_S3_ENDPOINT"),
            vars.get("HOLDFAST_S3_ACCESS_KEY"),
            vars.get("HOLDFAST_S3_SECRET_KEY"),
        ) {
            (Some(e), Some(a), Some(s)) => Some(S3Env {
                endpoint: e.clone(),
                access_key: a.clone(),
                secret_key: s.clone(),
                region: vars
                    .get("HOLDFAST_S3_REGION")
                    .cloned()
                    .unwrap_or_else(|| "us-east-1".into()),
            }),
            _ => None,
        };
        Env {
            kubeconfig: PathBuf::from(&vars["KUBECONFIG"]),
            kubectl,
            s3,
            repo,
            node: vars
                .get("HOLDFAST_TESTBED_NODE")
                .cloned()
                .unwrap_or_else(|| "holdfast-node-1".into()),
        }
    }

    /// A new client (one per test: clients are bound to the runtime that made them).
    pub async fn client(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Runs kubectl against the test cluster.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.kubectl(&args);
        assert!(
            out.status.success(),
            "kubectl {:?} failed:\n{}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The S3 endpoint, or a panic that says how to provide one.
    pub fn s3(&self) -> &S3Env {
        self.s3.as_ref().expect("no object store: set HOLDFAST_S3_ENDPOINT/ACCESS_KEY/SECRET_KEY or run inside the testbed")
    }
}

/// Installs the Holdfast CRDs from `crds/` (once per test process) and waits until
/// Established; and the ClusterRole and binding an administrator's restore writes objects with
/// (`config/rbac/restorer_role.yaml`: test operators act as the user holdfast:restorer, as
/// installed ones do).
pub fn ensure_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| ensure_crds_on(env()));
}

/// [`ensure_crds`] on the cluster of `e` (every time).
pub fn ensure_crds_on(e: &Env) {
    e.kubectl_ok(
        ["apply", "--server-side", "--force-conflicts", "-f"]
            .map(String::from)
            .into_iter()
            .chain([e
                .repo
                .join("config/rbac/restorer_role.yaml")
                .display()
                .to_string()]),
    );
    e.kubectl_ok(
        ["apply", "--server-side", "--force-conflicts", "-f"]
            .map(String::from)
            .into_iter()
            .chain([e.repo.join("crds").display().to_string()]),
    );
    e.kubectl_ok(
        ["wait", "--for=condition=Established", "--timeout=60s", "-f"]
            .map(String::from)
            .into_iter()
            .chain([e.repo.join("crds").display().to_string()]),
    );
}

/// A namespace of one test; deleted when dropped (without waiting).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `hf-<prefix>-<random>`.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!("hf-{prefix}-{}", random_suffix());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(E2E_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        Self { name }
    }

    /// Deletes the namespace and waits until it is gone.
    pub async fn delete_and_wait(&self, client: &Client) {
        let api: Api<Namespace> = Api::all(client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
        let name = self.name.clone();
        wait_until(
            &format!("namespace {name} to be deleted"),
            Duration::from_secs(120),
            Some(&self.name),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    api.get_opt(&name)
                        .await
                        .ok()
                        .map(|o| o.is_none())
                        .filter(|gone| *gone)
                }
            },
        )
        .await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("HOLDFAST_E2E_KEEP").is_some() {
            eprintln!("keeping namespace {} (HOLDFAST_E2E_KEEP)", self.name);
            return;
        }
        let _ = env().kubectl([
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// The value of key `key` of Secret `ns/name` (panics when missing).
pub async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> String {
    let sec = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get Secret {ns}/{name}: {e}"));
    let data = sec.data.unwrap_or_default();
    let v = data
        .get(key)
        .unwrap_or_else(|| panic!("Secret {ns}/{name} has no key {key}"));
    String::from_utf8(v.0.clone()).expect("utf-8")
}

/// A short random suffix for names.
pub fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// Polls `check` until it returns `Some`, at most `timeout`. On timeout, panics with `what`
/// and a dump of the namespace (when given), so a failing wait shows what it saw.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    namespace: Option<&str>,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            let dump = namespace.map(dump_namespace).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}\n{dump}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Everything in a namespace that a failing test wants to see.
pub fn dump_namespace(ns: &str) -> String {
    let e = env();
    let mut out = format!("==== state of namespace {ns}\n");
    for what in [
        "get holdfast,pods,pvc,volumesnapshots,secrets,leases -o wide",
        "get backupstoragelocations -o yaml",
        "get events --sort-by=.lastTimestamp",
    ] {
        let mut args: Vec<&str> = what.split(' ').collect();
        args.extend(["-n", ns]);
        let o = e.kubectl(&args);
        out.push_str(&format!(
            "---- kubectl {what}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    // Cluster-scoped leftovers named after the namespace's objects (exposed snapshot contents
    // are named after their DataUpload, which starts with the operator namespace).
    let o = e.kubectl([
        "get",
        "volumesnapshotcontents",
        "-o",
        "custom-columns=NAME:.metadata.name,READY:.status.readyToUse,DELETING:.metadata.deletionTimestamp,FINALIZERS:.metadata.finalizers,SNAPSHOT:.spec.volumeSnapshotRef.name",
    ]);
    out.push_str("---- volumesnapshotcontents of this namespace\n");
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.starts_with("NAME") || line.contains(ns) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Env {
    /// Applies YAML text in namespace `ns` with kubectl (a real client, as users apply).
    pub fn apply_yaml(&self, ns: &str, yaml: &str) {
        let file = std::env::temp_dir().join(format!("{ns}-{}.yaml", random_suffix()));
        std::fs::write(&file, yaml).expect("write manifest");
        self.kubectl_ok(["apply", "-n", ns, "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(file);
    }
}

/// Waits until BackupStorageLocation `name` reports `phase`; with `reason` given, also that
/// reason (`Some(None)`: no reason). Panics with a namespace dump on timeout.
pub async fn wait_location(
    client: &Client,
    ns: &str,
    name: &str,
    phase: holdfast_api::location::LocationPhase,
    reason: Option<Option<&str>>,
) -> holdfast_api::BackupStorageLocation {
    let api: Api<holdfast_api::BackupStorageLocation> = Api::namespaced(client.clone(), ns);
    let what = format!("location {name} to be {phase:?} (reason {reason:?})");
    wait_until(&what, Duration::from_secs(90), Some(ns), || {
        let api = api.clone();
        async move {
            let l = api.get(name).await.ok()?;
            let s = l.status.as_ref()?;
            let reason_ok = reason.is_none_or(|r| s.reason.as_deref() == r);
            (s.phase == Some(phase) && reason_ok).then_some(l)
        }
    })
    .await
}
