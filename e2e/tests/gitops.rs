//! GitOps health: the upstream kstatus library (`kapply status` of sigs.k8s.io/cli-utils) and
//! the Argo CD health check we ship (`config/argocd/health.lua`, run by `lua5.1` the way Argo CD
//! runs it) read real Holdfast objects on the testbed during and after a backup, a failed backup
//! and two locations; fast tests run the Lua check on the statuses the operator's kernel writes
//! for every kind, and check the argocd-cm snippet against the Lua file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use holdfast::runtime::kernel::{Status, finalize};
use holdfast_api::backup::{Backup, BackupPhase};
use holdfast_e2e::operator::Operator;
use holdfast_e2e::{TestNamespace, app, ensure_crds, env, random_suffix, wait_until};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The Argo CD check, run by lua5.1

const HEALTH_LUA: &str = "config/argocd/health.lua";
const ARGOCD_CM: &str = "config/argocd/argocd-cm.yaml";
/// Every kind of holdfast.dev/v1alpha1: the argocd-cm snippet has a key for each.
const KINDS: [&str; 8] = [
    "Backup",
    "Restore",
    "Schedule",
    "BackupStorageLocation",
    "SLAPolicy",
    "BackupRepository",
    "DataUpload",
    "DataDownload",
];

/// A JSON value as a Lua table constructor, the way Argo CD hands objects to Lua (objects and
/// arrays become tables, arrays from index 1; `null` becomes `nil`).
fn lua_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for i in items {
                lua_value(i, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, i) in map {
                out.push('[');
                lua_string(k, out);
                out.push_str("]=");
                lua_value(i, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

/// A Lua string literal: printable ASCII as is, every other byte as `\ddd`.
fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
}

/// Runs the shipped health check on `obj` as Argo CD does: `obj` global, only the base and
/// table libraries (and a safe `os`), the script's returned table read. Returns status and
/// message.
fn argo_health(obj: &Value) -> (String, String) {
    let lua = which("lua5.1").unwrap_or_else(|| {
        panic!("lua5.1 is not installed: `apt-get install lua5.1` (Debian's package; e2e/test installs it)")
    });
    let mut table = String::new();
    lua_value(obj, &mut table);
    let driver = format!(
        r#"local obj = {table}
local f = assert(io.open(arg[1], "rb"))
local src = f:read("*a")
f:close()
local chunk = assert(loadstring(src, "=health.lua"))
local sandbox = {{}}
for _, k in ipairs({{"assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
    "rawget", "rawset", "select", "getmetatable", "setmetatable", "tonumber", "tostring", "type",
    "unpack", "xpcall", "_VERSION"}}) do
  sandbox[k] = _G[k]
end
sandbox.table = table
sandbox.os = {{ clock = os.clock, date = os.date, difftime = os.difftime, time = os.time }}
sandbox._G = sandbox
sandbox.obj = obj
setfenv(chunk, sandbox)
local ok, hs = pcall(chunk)
if not ok then
  io.stderr:write("health.lua failed: " .. tostring(hs) .. "\n")
  os.exit(2)
end
if type(hs) ~= "table" then
  io.stderr:write("health.lua returned " .. type(hs) .. ", not a table\n")
  os.exit(3)
end
local valid = {{ Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }}
if not valid[hs.status] then
  io.stderr:write("invalid health status " .. tostring(hs.status) .. "\n")
  os.exit(4)
end
io.write(hs.status, "\n", tostring(hs.message or ""), "\n")
"#
    );
    let file = std::env::temp_dir().join(format!("hf-argo-health-{}.lua", random_suffix()));
    std::fs::write(&file, driver).expect("write Lua driver");
    let out = Command::new(lua)
        .arg(&file)
        .arg(holdfast_e2e::repo_root().join(HEALTH_LUA))
        .output()
        .expect("run lua5.1");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Lua health check failed on {obj:#}:\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    (status.to_string(), message.trim_end().to_string())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}

// ---------------------------------------------------------------------------------------------
// Fast tests: the Lua check on the statuses the kernel writes, and the argocd-cm snippet

/// An object of `kind` at `generation` with `status` completed by the kernel's own
/// [`finalize`] (observedGeneration and Ready/Reconciling/Stalled, from the status's summary).
fn object<S: Status>(kind: &str, generation: i64, mut status: S) -> Value {
    finalize(
        &mut status,
        Some(generation),
        None,
        Timestamp::from_second(1_700_000_000).expect("time"),
    );
    json!({
        "apiVersion": "holdfast.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "status": status,
    })
}

fn assert_health(obj: &Value, status: &str, message_has: &str) {
    let (s, m) = argo_health(obj);
    assert_eq!(s, status, "health of {obj:#}: {s} ({m})");
    assert!(
        m.contains(message_has),
        "message {m:?} lacks {message_has:?} for {obj:#}"
    );
}

#[test]
fn lua_backup_and_restore_follow_their_phase() {
    use holdfast_api::backup::BackupStatus;
    use holdfast_api::restore::{RestorePhase, RestoreStatus};
    let backup = |phase, reason: Option<&str>, message: Option<&str>| BackupStatus {
        phase: Some(phase),
        reason: reason.map(Into::into),
        message: message.map(Into::into),
        ..Default::default()
    };
    assert_health(
        &object("Backup", 1, backup(BackupPhase::Pending, None, None)),
        "Progressing",
        "InProgress",
    );
    assert_health(
        &object("Backup", 1, backup(BackupPhase::InProgress, None, None)),
        "Progressing",
        "InProgress",
    );
    assert_health(
        &object("Backup", 1, backup(BackupPhase::Completed, None, None)),
        "Healthy",
        "Completed",
    );
    assert_health(
        &object(
            "Backup",
            1,
            backup(
                BackupPhase::Failed,
                Some("LocationNotFound"),
                Some("BackupStorageLocation x not found"),
            ),
        ),
        "Degraded",
        "LocationNotFound: BackupStorageLocation x not found",
    );
    assert_health(
        &object(
            "Backup",
            1,
            backup(
                BackupPhase::PartiallyFailed,
                Some("VolumesFailed"),
                Some("1 of 2 volumes failed"),
            ),
        ),
        "Degraded",
        "VolumesFailed: 1 of 2 volumes failed",
    );
    assert_health(
        &object("Backup", 1, backup(BackupPhase::Cancelled, None, None)),
        "Degraded",
        "Cancelled",
    );
    let restore = |phase| RestoreStatus {
        phase: Some(phase),
        ..Default::default()
    };
    assert_health(
        &object("Restore", 2, restore(RestorePhase::InProgress)),
        "Progressing",
        "InProgress",
    );
    assert_health(
        &object("Restore", 2, restore(RestorePhase::Completed)),
        "Healthy",
        "Completed",
    );
    assert_health(
        &object("Restore", 2, restore(RestorePhase::Failed)),
        "Degraded",
        "Failed",
    );
}

#[test]
fn lua_a_spec_not_yet_observed_or_no_status_is_progressing() {
    use holdfast_api::backup::BackupStatus;
    let mut done = object(
        "Backup",
        1,
        BackupStatus {
            phase: Some(BackupPhase::Completed),
            ..Default::default()
        },
    );
    done["metadata"]["generation"] = json!(2);
    assert_health(
        &done,
        "Progressing",
        "generation 2 not observed yet (observed: 1)",
    );
    let mut fresh = done.clone();
    fresh.as_object_mut().expect("object").remove("status");
    assert_health(&fresh, "Progressing", "waiting for the Holdfast operator");
    let mut deleting = done;
    deleting["metadata"]["generation"] = json!(1);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert_health(&deleting, "Progressing", "being deleted");
}

#[test]
fn lua_a_stall_is_degraded_whatever_the_phase() {
    use holdfast::runtime::error::Stall;
    use holdfast_api::backup::BackupStatus;
    let mut st = BackupStatus {
        phase: Some(BackupPhase::InProgress),
        ..Default::default()
    };
    let stall = Stall {
        reason: "RepositoryPasswordWrong",
        message: "the password in Secret s does not open the repository".into(),
        persistent: true,
    };
    finalize(
        &mut st,
        Some(1),
        Some(&stall),
        Timestamp::from_second(1).expect("time"),
    );
    let obj = json!({"kind": "Backup", "metadata": {"name": "b", "generation": 1}, "status": st});
    assert_health(
        &obj,
        "Degraded",
        "RepositoryPasswordWrong: the password in Secret s does not open the repository",
    );
}

#[test]
fn lua_transfers_follow_their_phase() {
    use holdfast_api::backup::TransferPhase;
    use holdfast_api::transfer::TransferStatus;
    for kind in ["DataUpload", "DataDownload"] {
        let t = |phase, reason: Option<&str>| TransferStatus {
            phase,
            reason: reason.map(Into::into),
            message: reason.map(|_| "mover pod exited with 3".into()),
            ..Default::default()
        };
        assert_health(
            &object(kind, 1, t(TransferPhase::Pending, None)),
            "Progressing",
            "Pending",
        );
        assert_health(
            &object(kind, 1, t(TransferPhase::InProgress, None)),
            "Progressing",
            "InProgress",
        );
        assert_health(
            &object(kind, 1, t(TransferPhase::Completed, None)),
            "Healthy",
            "Completed",
        );
        assert_health(
            &object(kind, 1, t(TransferPhase::Failed, Some("MoverFailed"))),
            "Degraded",
            "MoverFailed: mover pod exited with 3",
        );
        assert_health(
            &object(kind, 1, t(TransferPhase::Cancelled, None)),
            "Degraded",
            "Cancelled",
        );
    }
}

#[test]
fn lua_locations_and_repositories_follow_their_phase() {
    use holdfast_api::location::{BackupStorageLocationStatus, LocationPhase};
    use holdfast_api::repository::{BackupRepositoryStatus, RepositoryPhase};
    let loc = |phase, reason: Option<&str>| BackupStorageLocationStatus {
        phase,
        reason: reason.map(Into::into),
        message: reason.map(|_| "bucket hf-x does not exist".into()),
        ..Default::default()
    };
    assert_health(
        &object("BackupStorageLocation", 3, loc(None, None)),
        "Progressing",
        "Validating",
    );
    assert_health(
        &object(
            "BackupStorageLocation",
            3,
            loc(Some(LocationPhase::Available), None),
        ),
        "Healthy",
        "Validated: the location is reachable and usable",
    );
    assert_health(
        &object(
            "BackupStorageLocation",
            3,
            loc(Some(LocationPhase::Unavailable), Some("BucketNotFound")),
        ),
        "Degraded",
        "BucketNotFound: bucket hf-x does not exist",
    );
    let repo = |phase| BackupRepositoryStatus {
        phase: Some(phase),
        ..Default::default()
    };
    assert_health(
        &object("BackupRepository", 1, repo(RepositoryPhase::Ready)),
        "Healthy",
        "Ready",
    );
    assert_health(
        &object("BackupRepository", 1, repo(RepositoryPhase::Pruning)),
        "Progressing",
        "Maintenance",
    );
    assert_health(
        &object("BackupRepository", 1, repo(RepositoryPhase::Unavailable)),
        "Degraded",
        "Unavailable",
    );
}

#[test]
fn lua_schedules_and_policies() {
    use holdfast_api::schedule::{SchedulePhase, ScheduleStatus};
    let s = |phase, reason: Option<&str>| ScheduleStatus {
        phase,
        reason: reason.map(Into::into),
        message: reason.map(|_| "cron expression has 4 fields".into()),
        ..Default::default()
    };
    assert_health(
        &object("Schedule", 1, s(Some(SchedulePhase::Active), None)),
        "Healthy",
        "Active",
    );
    assert_health(
        &object("Schedule", 1, s(Some(SchedulePhase::Paused), None)),
        "Suspended",
        "Paused",
    );
    assert_health(
        &object(
            "Schedule",
            1,
            s(Some(SchedulePhase::Invalid), Some("InvalidSchedule")),
        ),
        "Degraded",
        "InvalidSchedule: cron expression has 4 fields",
    );
    assert_health(
        &object("Schedule", 1, s(None, None)),
        "Progressing",
        "Active",
    );
    // An SLAPolicy is configuration without a status.
    let policy = json!({"kind": "SLAPolicy", "metadata": {"name": "gold", "generation": 1},
        "spec": {"snapshots": {"every": "4h", "keep": {"last": 6}}}});
    assert_health(&policy, "Healthy", "SLA policy");
}

#[test]
fn lua_check_uses_no_library_argo_cd_leaves_closed() {
    let src = std::fs::read_to_string(holdfast_e2e::repo_root().join(HEALTH_LUA))
        .expect("read health.lua");
    for lib in ["string.", "io.", "debug.", "math.", "require", "os.execute"] {
        assert!(
            !src.contains(lib),
            "health.lua uses `{lib}`, which Argo CD does not open to health checks"
        );
    }
}

/// The argocd-cm snippet: the health check under one key per kind.
fn argocd_cm(lua: &str) -> String {
    let mut out = String::from(
        "# Generated from config/argocd/health.lua (e2e/tests/gitops.rs checks it; regenerate with\n\
         # HOLDFAST_REGENERATE=1 cargo test -p holdfast-e2e --test gitops argocd_cm).\n\
         # Merge into Argo CD's argocd-cm (docs/gitops.md):\n\
         #   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file config/argocd/argocd-cm.yaml\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\ndata:\n",
    );
    for kind in KINDS {
        let _ = writeln!(
            out,
            "  resource.customizations.health.holdfast.dev_{kind}: |"
        );
        for line in lua.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

#[test]
fn argocd_cm_snippet_matches_health_lua() {
    let root = holdfast_e2e::repo_root();
    let lua = std::fs::read_to_string(root.join(HEALTH_LUA)).expect("read health.lua");
    let want = argocd_cm(&lua);
    let path = root.join(ARGOCD_CM);
    if std::env::var_os("HOLDFAST_REGENERATE").is_some() {
        std::fs::write(&path, &want).expect("write argocd-cm.yaml");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{ARGOCD_CM} differs from {HEALTH_LUA}: regenerate with \
         HOLDFAST_REGENERATE=1 cargo test -p holdfast-e2e --test gitops argocd_cm"
    );
    // Each key holds the script itself, as YAML reads it back.
    let doc: serde_yaml::Value = serde_yaml::from_str(&have).expect("argocd-cm.yaml is YAML");
    for kind in KINDS {
        let key = format!("resource.customizations.health.holdfast.dev_{kind}");
        assert_eq!(
            doc["data"][key.as_str()].as_str(),
            Some(lua.as_str()),
            "{key}"
        );
    }
}

#[tokio::test]
async fn argocd_cm_snippet_merges_into_an_existing_argocd_cm() {
    let e = env();
    let client = e.client().await;
    let ns = TestNamespace::new(&client, "argocd-cm").await;
    e.apply_yaml(
        &ns.name,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: argocd-cm}\ndata: {url: \"https://argocd.example\"}\n",
    );
    let root = holdfast_e2e::repo_root();
    e.kubectl_ok([
        "patch",
        "configmap",
        "argocd-cm",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "--patch-file",
        &root.join(ARGOCD_CM).display().to_string(),
    ]);
    let cm: Value = serde_json::from_str(&e.kubectl_ok([
        "get",
        "configmap",
        "argocd-cm",
        "-n",
        &ns.name,
        "-o",
        "json",
    ]))
    .expect("json");
    let lua = std::fs::read_to_string(root.join(HEALTH_LUA)).expect("read health.lua");
    assert_eq!(
        cm["data"]["url"], "https://argocd.example",
        "other keys stay"
    );
    for kind in KINDS {
        let key = format!("resource.customizations.health.holdfast.dev_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(lua.as_str()), "{key}");
    }
}

// ---------------------------------------------------------------------------------------------
// kstatus: `kapply status` of sigs.k8s.io/cli-utils

/// The `kapply` binary built by `e2e/tools/build kstatus`.
fn kapply() -> PathBuf {
    let repo = holdfast_e2e::repo_root();
    let out = Command::new(repo.join("e2e/tools/build"))
        .args(["--path", "kapply"])
        .output()
        .expect("run e2e/tools/build --path kapply");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "the kstatus tool (kapply of sigs.k8s.io/cli-utils) is not built: run `e2e/tools/build kstatus` \
         (e2e/test does); expected at {}",
        path.display()
    );
    path
}

/// kstatus of one object as `kapply status` computes it: status (`InProgress`, `Current`,
/// `Failed`, ...) and message. `kapply status` reads the objects an inventory ConfigMap lists;
/// the inventory here lists just this object.
fn kstatus(ns: &str, kind: &str, name: &str) -> (String, String) {
    let e = env();
    // SLAPolicy is cluster-scoped; the inventory itself lives in `ns`.
    let obj_ns = if kind == "SLAPolicy" { "" } else { ns };
    let dir = std::env::temp_dir().join(format!("hf-{ns}-kstatus-{kind}-{name}"));
    if !dir.join("inventory.yaml").exists() {
        // Label values have at most 63 characters: a random inventory id.
        let id = format!("kstatus-{}", random_suffix());
        let template = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {id}\n  namespace: {ns}\n  labels: {{cli-utils.sigs.k8s.io/inventory-id: {id}}}\n"
        );
        e.apply_yaml(
            ns,
            &format!("{template}data: {{\"{obj_ns}_{name}_holdfast.dev_{kind}\": \"\"}}\n"),
        );
        std::fs::create_dir_all(&dir).expect("inventory dir");
        std::fs::write(dir.join("inventory.yaml"), &template).expect("inventory template");
    }
    let out = Command::new(kapply())
        .env("KUBECONFIG", &e.kubeconfig)
        .arg("status")
        .arg(&dir)
        .args([
            "--poll-until",
            "known",
            "--output",
            "json",
            "--timeout",
            "60s",
        ])
        .output()
        .expect("run kapply status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kapply status {kind}/{name} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["type"] == "status" && v["kind"] == kind && v["name"] == name)
        .map(|v| {
            (
                v["status"].as_str().unwrap_or_default().to_string(),
                v["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_else(|| panic!("kapply status printed no status for {kind}/{name}:\n{stdout}"))
}

/// The object as `kubectl get -o json` shows it.
fn get_json(ns: &str, kind: &str, name: &str) -> Value {
    let kind = format!("{}.holdfast.dev", kind.to_lowercase());
    let out = env().kubectl_ok(["get", &kind, name, "-n", ns, "-o", "json"]);
    serde_json::from_str(&out).expect("kubectl json")
}

/// kstatus and the Argo CD check of the object as it is now, and its JSON read after kstatus.
struct Seen {
    kstatus: (String, String),
    argo: (String, String),
    obj: Value,
}

fn look(ns: &str, kind: &str, name: &str) -> Seen {
    let kstatus = kstatus(ns, kind, name);
    let obj = get_json(ns, kind, name);
    let argo = argo_health(&obj);
    Seen { kstatus, argo, obj }
}

fn phase(obj: &Value) -> Option<BackupPhase> {
    serde_json::from_value(obj["status"]["phase"].clone()).ok()
}

/// An operator namespace with a location `primary` on a fresh bucket and the operator,
/// watching `watch` for tenant objects.
struct Setup {
    client: Client,
    opns: TestNamespace,
    op: Operator,
}

impl Drop for Setup {
    /// Backups go while the operator still runs (their finalizers need it), even when the test
    /// failed, so the namespace can go.
    fn drop(&mut self) {
        let _ = env().kubectl([
            "delete",
            "backups",
            "--all",
            "-n",
            &self.opns.name,
            "--timeout=120s",
        ]);
        // The kstatus inventories of this namespace (see `kstatus`).
        let prefix = format!("hf-{}-kstatus-", self.opns.name);
        for d in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if d.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

async fn setup(prefix: &str, watch: &str) -> Setup {
    ensure_crds();
    let e = env();
    let client = e.client().await;
    let opns = TestNamespace::new(&client, &format!("{prefix}-op")).await;
    let bucket = format!("hf-{prefix}-{}", random_suffix());
    app::make_bucket(&bucket).await;
    let watch = if watch.is_empty() { &opns.name } else { watch };
    let op = Operator::start(
        &opns.name,
        &format!("{prefix}-0"),
        &[
            &format!("--watch-namespaces={watch}"),
            "--max-movers-per-node=0",
        ],
    );
    op.wait_ready().await;
    app::primary_location(&client, &opns.name, &bucket).await;
    Setup { client, opns, op }
}

/// Waits until the operator has written the Backup's status (kstatus reads an object without
/// status as Current: nothing tells it a controller will act on it).
async fn wait_status(client: &Client, ns: &str, name: &str) {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("backup {name} to have a status"),
        Duration::from_secs(60),
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let b = api.get(name).await.ok()?;
                b.status?.observed_generation.map(|_| ())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_and_argo_follow_a_backup_from_in_progress_to_completed() {
    let client = env().client().await;
    let app_ns = TestNamespace::new(&client, "gitops-app").await;
    let s = setup("gitops", &app_ns.name).await;
    let e = env();
    app::deploy_seeded(&app_ns.name, 32).await;
    let ns = &s.opns.name;
    e.apply_yaml(
        ns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: full}}\nspec:\n  includedNamespaces: [{}]\n",
            app_ns.name
        ),
    );
    wait_status(&s.client, ns, "full").await;

    // Phases only move forward: when the JSON read after kstatus is not terminal, kstatus saw
    // a running backup too, and must have said InProgress.
    let mut running = Vec::new();
    wait_until(
        "backup full to finish while kstatus and the Argo CD check watch it",
        Duration::from_secs(300),
        Some(ns),
        || {
            let seen = look(ns, "Backup", "full");
            let finished = phase(&seen.obj).is_some_and(BackupPhase::is_terminal);
            if !finished {
                running.push((seen.kstatus.clone(), seen.argo.clone()));
            }
            std::future::ready(finished.then_some(()))
        },
    )
    .await;
    // kstatus ran before the JSON read that found the backup finished, so it may have seen
    // the last running moment: look again now that the phase can no longer change.
    let done = look(ns, "Backup", "full");
    assert!(
        !running.is_empty(),
        "the backup finished before kstatus saw it running\n{}",
        s.op.logs()
    );
    for (k, a) in &running {
        assert_eq!(k.0, "InProgress", "kstatus of a running backup: {k:?}");
        assert_eq!(
            a.0, "Progressing",
            "Argo CD health of a running backup: {a:?}"
        );
    }
    eprintln!(
        "running ({} looks): kstatus {:?}, argo {:?}",
        running.len(),
        running[0].0,
        running[0].1
    );
    assert_eq!(
        phase(&done.obj),
        Some(BackupPhase::Completed),
        "{:#}\n{}",
        done.obj["status"],
        s.op.logs()
    );
    assert_eq!(
        done.kstatus.0, "Current",
        "kstatus when Completed: {:?}",
        done.kstatus
    );
    assert_eq!(
        done.argo.0, "Healthy",
        "Argo CD when Completed: {:?}",
        done.argo
    );
    eprintln!(
        "completed: kstatus {:?}, argo {:?}",
        done.kstatus, done.argo
    );

    // The location the backup used, and the objects the backup made, agree too.
    let loc = look(ns, "BackupStorageLocation", "primary");
    assert_eq!(loc.kstatus.0, "Current", "{:?}", loc.kstatus);
    assert_eq!(loc.argo.0, "Healthy", "{:?}", loc.argo);
    for kind in ["DataUpload", "BackupRepository"] {
        let names = e.kubectl_ok([
            "get",
            &format!("{}.holdfast.dev", kind.to_lowercase()),
            "-n",
            ns,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        let names: Vec<&str> = names.split_whitespace().collect();
        assert!(!names.is_empty(), "no {kind} in {ns}");
        for name in names {
            let seen = look(ns, kind, name);
            let agree = matches!(
                (seen.kstatus.0.as_str(), seen.argo.0.as_str()),
                ("Current", "Healthy") | ("InProgress", "Progressing") | ("Failed", "Degraded")
            );
            assert!(
                agree,
                "{kind}/{name}: kstatus {:?}, Argo CD {:?}\n{:#}",
                seen.kstatus, seen.argo, seen.obj["status"]
            );
            eprintln!(
                "{kind}/{name}: kstatus {:?}, argo {:?}",
                seen.kstatus, seen.argo
            );
        }
    }
}

/// A local PersistentVolume and its host directory, removed when dropped (test passed or not).
struct LocalVolume {
    pv: String,
    dir: PathBuf,
}

impl Drop for LocalVolume {
    fn drop(&mut self) {
        let _ = env().kubectl([
            "delete",
            "pv",
            &self.pv,
            "--ignore-not-found",
            "--wait=false",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A claim `local-data` in `ns` on a local PersistentVolume: no CSI driver, so no snapshot
/// class, and with the default `withoutSnapshot: Fail` its volume fails in a backup.
fn local_claim(ns: &str) -> LocalVolume {
    let e = env();
    let pv = format!("{ns}-local");
    let dir = std::env::temp_dir().join(&pv);
    std::fs::create_dir_all(&dir).expect("local volume directory");
    e.apply_yaml(
        ns,
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {pv}, labels: {{holdfast.dev/e2e: \"true\"}}}}\nspec:\n  capacity: {{storage: 64Mi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: manual\n  local: {{path: {}}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{}]}}]\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: local-data}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: manual\n  volumeName: {pv}\n  resources: {{requests: {{storage: 64Mi}}}}\n",
            dir.display(),
            e.node
        ),
    );
    e.kubectl_ok([
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/local-data",
        "-n",
        ns,
        "--timeout=60s",
    ]);
    LocalVolume { pv, dir }
}

/// Waits until Backup `name` reaches a terminal phase.
async fn wait_terminal(client: &Client, ns: &str, name: &str) {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    wait_until(
        &format!("backup {name} to end"),
        Duration::from_secs(120),
        Some(ns),
        || {
            let api = api.clone();
            async move {
                let b = api.get(name).await.ok()?;
                b.status?.phase.filter(|p| p.is_terminal()).map(|_| ())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_and_argo_report_a_failed_backup_with_its_reason() {
    let client = env().client().await;
    let app_ns = TestNamespace::new(&client, "gitops-fail").await;
    let s = setup("gitopsf", &app_ns.name).await;
    let e = env();
    let _volume = local_claim(&app_ns.name);
    let ns = &s.opns.name;
    e.apply_yaml(
        ns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: doomed}}\nspec:\n  includedNamespaces: [{}]\n",
            app_ns.name
        ),
    );
    wait_terminal(&s.client, ns, "doomed").await;
    let seen = look(ns, "Backup", "doomed");
    assert_eq!(
        phase(&seen.obj),
        Some(BackupPhase::Failed),
        "{:#}\n{}",
        seen.obj["status"],
        s.op.logs()
    );
    eprintln!("failed: kstatus {:?}, argo {:?}", seen.kstatus, seen.argo);
    assert_eq!(seen.kstatus.0, "Failed", "kstatus: {:?}", seen.kstatus);
    assert!(
        seen.kstatus.1.contains("NoSnapshotClass") && seen.kstatus.1.contains("local-data"),
        "kstatus gives the reason: {:?}",
        seen.kstatus
    );
    assert_eq!(seen.argo.0, "Degraded", "Argo CD: {:?}", seen.argo);
    assert!(
        seen.argo
            .1
            .starts_with("VolumesFailed: 1 of 1 volumes failed")
            && seen.argo.1.contains("NoSnapshotClass"),
        "Argo CD gives the reason: {:?}",
        seen.argo
    );
    drop(s);
    app_ns.delete_and_wait(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_and_argo_report_an_available_and_an_unavailable_location() {
    let s = setup("gitopsl", "").await;
    let e = env();
    let ns = &s.opns.name;
    let good = look(ns, "BackupStorageLocation", "primary");
    eprintln!(
        "available: kstatus {:?}, argo {:?}",
        good.kstatus, good.argo
    );
    assert_eq!(good.kstatus.0, "Current", "{:?}", good.kstatus);
    assert_eq!(good.argo.0, "Healthy", "{:?}", good.argo);

    let missing = format!("hf-missing-{}", random_suffix());
    let yaml = app::location_yaml("nobucket", &missing).replace("default: true", "default: false");
    e.apply_yaml(ns, &yaml);
    holdfast_e2e::wait_location(
        &s.client,
        ns,
        "nobucket",
        holdfast_api::location::LocationPhase::Unavailable,
        Some(Some("BucketNotFound")),
    )
    .await;
    let bad = look(ns, "BackupStorageLocation", "nobucket");
    eprintln!(
        "unavailable: kstatus {:?}, argo {:?}",
        bad.kstatus, bad.argo
    );
    assert_eq!(bad.kstatus.0, "Failed", "{:?}", bad.kstatus);
    assert!(bad.kstatus.1.contains(&missing), "{:?}", bad.kstatus);
    assert_eq!(bad.argo.0, "Degraded", "{:?}", bad.argo);
    assert!(
        bad.argo.1.starts_with("BucketNotFound: ") && bad.argo.1.contains(&missing),
        "{:?}",
        bad.argo
    );
}

/// A backup that ended PartiallyFailed or Cancelled will never change again: kstatus must not
/// read it as InProgress (a `kapply status --poll-until current` or a Flux health check would
/// wait on it until its timeout), and Argo CD calls it Degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_and_argo_report_partly_failed_and_cancelled_backups_as_failed() {
    let client = env().client().await;
    let app_ns = TestNamespace::new(&client, "gitops-ended").await;
    let s = setup("gitopse", &app_ns.name).await;
    let e = env();
    let _volume = local_claim(&app_ns.name);
    // A CSI claim next to it: its snapshot succeeds, the local one fails.
    e.apply_yaml(
        &app_ns.name,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: csi-data}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: standard\n  resources: {requests: {storage: 64Mi}}\n",
    );
    e.kubectl_ok([
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/csi-data",
        "-n",
        &app_ns.name,
        "--timeout=60s",
    ]);
    let ns = &s.opns.name;
    e.apply_yaml(
        ns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: partial}}\nspec:\n  includedNamespaces: [{0}]\n  volumes: {{mode: Snapshot}}\n---\napiVersion: holdfast.dev/v1alpha1\nkind: Backup\nmetadata: {{name: stopped}}\nspec:\n  includedNamespaces: [{0}]\n  cancel: true\n",
            app_ns.name
        ),
    );
    for (name, want, reason) in [
        ("partial", BackupPhase::PartiallyFailed, "VolumesFailed"),
        ("stopped", BackupPhase::Cancelled, "Cancelled"),
    ] {
        wait_terminal(&s.client, ns, name).await;
        let seen = look(ns, "Backup", name);
        eprintln!("{name}: kstatus {:?}, argo {:?}", seen.kstatus, seen.argo);
        assert_eq!(
            phase(&seen.obj),
            Some(want),
            "{:#}\n{}",
            seen.obj["status"],
            s.op.logs()
        );
        assert_eq!(
            seen.kstatus.0, "Failed",
            "kstatus of a {want:?} backup: {:?}\n{:#}",
            seen.kstatus, seen.obj["status"]
        );
        assert_eq!(seen.argo.0, "Degraded", "Argo CD: {:?}", seen.argo);
        assert!(seen.argo.1.starts_with(reason), "{:?}", seen.argo);
    }
    drop(s);
    app_ns.delete_and_wait(&client).await;
}

/// Waits until `kind/name` in `ns` shows a `status.phase` and returns it.
async fn wait_phase(ns: &str, kind: &str, name: &str) -> String {
    let what = format!("{kind} {name} to have a phase");
    wait_until(&what, Duration::from_secs(90), Some(ns), || async move {
        let p = get_json(ns, kind, name)["status"]["phase"]
            .as_str()?
            .to_string();
        Some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_and_argo_on_schedules_policies_and_restores() {
    let s = setup("gitopss", "").await;
    let e = env();
    let ns = &s.opns.name;
    let policy = format!("hf-gitops-{}", random_suffix());
    e.apply_yaml(
        ns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: SLAPolicy\nmetadata: {{name: {policy}, labels: {{holdfast.dev/e2e: \"true\"}}}}\nspec:\n  snapshots: {{every: 24h, keep: {{last: 1}}}}\n"
        ),
    );
    struct Policy(String);
    impl Drop for Policy {
        fn drop(&mut self) {
            let _ = env().kubectl(["delete", "slapolicy", &self.0, "--ignore-not-found"]);
        }
    }
    let _policy = Policy(policy.clone());
    let template = format!("  template:\n    spec: {{includedNamespaces: [{ns}]}}\n");
    e.apply_yaml(
        ns,
        &format!(
            "apiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata: {{name: yearly}}\nspec:\n  schedule: \"0 0 1 1 *\"\n  keep: {{last: 1}}\n{template}---\napiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata: {{name: held}}\nspec:\n  policy: {policy}\n  paused: true\n{template}---\napiVersion: holdfast.dev/v1alpha1\nkind: Schedule\nmetadata: {{name: orphan}}\nspec:\n  policy: hf-gitops-missing\n{template}---\napiVersion: holdfast.dev/v1alpha1\nkind: Restore\nmetadata: {{name: lost}}\nspec:\n  source: {{backup: never-made}}\n"
        ),
    );
    for (kind, name, phase, kstatus, argo, says) in [
        (
            "Schedule", "yearly", "Active", "Current", "Healthy", "Active",
        ),
        (
            "Schedule",
            "held",
            "Paused",
            "Current",
            "Suspended",
            "Paused",
        ),
        (
            "Schedule",
            "orphan",
            "Invalid",
            "Failed",
            "Degraded",
            "PolicyNotFound",
        ),
        (
            "Restore",
            "lost",
            "Failed",
            "Failed",
            "Degraded",
            "BackupNotFound",
        ),
    ] {
        let p = wait_phase(ns, kind, name).await;
        let seen = look(ns, kind, name);
        eprintln!(
            "{kind}/{name} {p}: kstatus {:?}, argo {:?}",
            seen.kstatus, seen.argo
        );
        assert_eq!(
            p,
            phase,
            "{kind}/{name}: {:#}\n{}",
            seen.obj["status"],
            s.op.logs()
        );
        assert_eq!(seen.kstatus.0, kstatus, "{kind}/{name}: {:?}", seen.kstatus);
        assert_eq!(seen.argo.0, argo, "{kind}/{name}: {:?}", seen.argo);
        assert!(seen.argo.1.contains(says), "{kind}/{name}: {:?}", seen.argo);
    }
    let seen = look(ns, "SLAPolicy", &policy);
    eprintln!(
        "SLAPolicy/{policy}: kstatus {:?}, argo {:?}",
        seen.kstatus, seen.argo
    );
    assert_eq!(seen.kstatus.0, "Current", "{:?}", seen.kstatus);
    assert_eq!(seen.argo.0, "Healthy", "{:?}", seen.argo);
    e.kubectl_ok([
        "delete",
        "restores,schedules",
        "--all",
        "-n",
        ns,
        "--timeout=120s",
    ]);
}
