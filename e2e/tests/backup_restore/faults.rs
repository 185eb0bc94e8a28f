//! Fault trials (issue 18, item 6): the mover killed at random points of backups, the operator
//! killed (SIGKILL) at random points of backups and restores and started again, and S3 errors,
//! resets, stalls, hangs and outages injected between the movers and S3 by a proxy
//! (`holdfast_e2e::s3proxy`). Every trial must end Completed, or Failed/PartiallyFailed with a
//! reason, never stuck; a completed backup holds the volume's bytes (`restic dump` of the
//! snapshot against the volume's checksum) and a completed restore puts them back; after every
//! trial nothing is left behind: no mover pods, temporary claims, exposed snapshots, restored
//! volumes of gone claims, repository locks or journals, and `restic check` is clean (with
//! `--read-data` at the end of each test); the VolumeSnapshots of a deleted backup go with it.
//!
//! Sizes: small by default (CI); `HOLDFAST_FAULT_TRIALS=long` for hand runs (50 mover kill
//! trials, 12 operator kill trials on backups and 10 on restores, 12 S3 trials, 5 twice-killed
//! movers). Each count can be set by its own variable (`HOLDFAST_FAULT_MOVER_TRIALS`,
//! `HOLDFAST_FAULT_OPERATOR_BACKUP_TRIALS`, `HOLDFAST_FAULT_OPERATOR_RESTORE_TRIALS`,
//! `HOLDFAST_FAULT_S3_TRIALS`, `HOLDFAST_FAULT_TWICE_TRIALS`). Randomness comes from one seed,
//! printed by every test and set by `HOLDFAST_FAULT_SEED` to replay a run's choices (kill
//! times, fault rates; which request meets a fault still depends on timing). No timing is
//! asserted: timeouts only turn a hang into a failure.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use holdfast_api::backup::{Backup, BackupPhase, TransferPhase};
use holdfast_api::restore::RestorePhase;
use holdfast_api::transfer::DataUpload;
use holdfast_e2e::operator::Operator;
use holdfast_e2e::ops::wait_backup;
use holdfast_e2e::s3proxy::{FaultProxy, Plan, splitmix};
use holdfast_e2e::{TestNamespace, env, wait_until};
use kube::api::{Api, ListParams};

use super::retry::{BIG_MIB, big_app, leftovers, mover_pids, pack_bytes, try_kill_mover_at};
use super::{Setup, Share, app, assert_no_leftovers, backup_yaml, delete_all, setup, snapshots_of};

// ------------------------------------------------------------------ sizes and randomness

/// How many trials of each kind, and the size of the trial volume.
struct Trials {
    long: bool,
    mover: usize,
    op_backups: usize,
    op_restores: usize,
    s3: usize,
    twice: usize,
    mib: u32,
}

fn trials() -> Trials {
    let mode = std::env::var("HOLDFAST_FAULT_TRIALS").unwrap_or_default();
    let long = match mode.as_str() {
        "" | "small" => false,
        "long" => true,
        other => panic!("HOLDFAST_FAULT_TRIALS={other}: expected `small` or `long`"),
    };
    let n = |var: &str, small: usize, long_n: usize| {
        std::env::var(var)
            .ok()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{var}={v}: expected a count"))
            })
            .unwrap_or(if long { long_n } else { small })
    };
    Trials {
        long,
        mover: n("HOLDFAST_FAULT_MOVER_TRIALS", 3, 50),
        op_backups: n("HOLDFAST_FAULT_OPERATOR_BACKUP_TRIALS", 2, 12),
        op_restores: n("HOLDFAST_FAULT_OPERATOR_RESTORE_TRIALS", 2, 10),
        s3: n("HOLDFAST_FAULT_S3_TRIALS", 3, 12),
        twice: n("HOLDFAST_FAULT_TWICE_TRIALS", 1, 5),
        mib: if long { 48 } else { 32 },
    }
}

/// The run's seed: `HOLDFAST_FAULT_SEED`, or one from the clock.
fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("HOLDFAST_FAULT_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("HOLDFAST_FAULT_SEED={v}: expected a number")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let mut s = t ^ u64::from(std::process::id());
            splitmix(&mut s) % 1_000_000_000
        }
    })
}

/// A seeded generator for one test (the run's seed mixed with the test's name).
struct Rng(u64);

impl Rng {
    fn for_test(test: &str) -> Self {
        let seed = base_seed();
        let t = trials();
        eprintln!(
            "faults::{test}: seed {seed} (HOLDFAST_FAULT_SEED={seed} replays it), mode {}",
            if t.long { "long" } else { "small" }
        );
        let mut s = seed;
        for b in test.bytes() {
            s = (s ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        Rng(s)
    }
    fn next(&mut self) -> u64 {
        splitmix(&mut self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(self.between(lo, hi))
    }
}

// ------------------------------------------------------------------ trial records

/// What one trial did and how it ended.
struct Record {
    kind: &'static str,
    trial: usize,
    /// The faults injected.
    faults: String,
    /// Completed, PartiallyFailed, Failed (with the reason).
    outcome: String,
    seconds: f64,
}

fn print_record(r: &Record) {
    eprintln!(
        "faults: {} trial {}: {} -> {} ({:.0} s)",
        r.kind, r.trial, r.faults, r.outcome, r.seconds
    );
}

/// Outcomes by kind, with counts and durations.
fn summary(records: &[Record]) -> String {
    let mut by: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for r in records {
        by.entry((r.kind, r.outcome.as_str()))
            .or_default()
            .push(r.seconds);
    }
    let mut out = String::from("faults: summary\n");
    for ((kind, outcome), mut secs) in by {
        secs.sort_by(f64::total_cmp);
        out.push_str(&format!(
            "  {kind}: {} x {outcome} (seconds min {:.0} / median {:.0} / max {:.0})\n",
            secs.len(),
            secs[0],
            secs[secs.len() / 2],
            secs[secs.len() - 1]
        ));
    }
    out
}

// ------------------------------------------------------------------ the trial volume

/// Claim `vol-data` and Deployment `vol` (label `app: vol`) seeding `mib` MiB into
/// `/data/blob` once (a restored volume keeps its data).
fn vol_app(mib: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: vol-data, labels: {{app: vol}}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  resources: {{requests: {{storage: 512Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: vol, labels: {{app: vol}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: vol}}}}
  template:
    metadata: {{labels: {{app: vol}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "[ -f /data/.seeded ] || {{ head -c {mib}M /dev/urandom > /data/blob && touch /data/.seeded; }}; exec sleep 100000"]
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - {{name: data, persistentVolumeClaim: {{claimName: vol-data}}}}
"#
    )
}

/// Backups of the trial volume only.
const VOL_SELECTOR: &str = "  labelSelector: {matchLabels: {app: vol}}\n";

async fn deploy_vol(ns: &str, mib: u32) {
    env().apply_yaml(ns, &vol_app(mib));
    app::wait_seeded(ns, "deploy/vol").await;
}

/// Writes new random data into the trial volume (so that every trial uploads all of it) and
/// returns the volume's checksums.
fn refresh(ns: &str, mib: u32) -> String {
    app::sh(
        ns,
        "deploy/vol",
        &format!("head -c {mib}M /dev/urandom > /data/blob.new && mv /data/blob.new /data/blob"),
    );
    app::volume_checksums(ns, "deploy/vol")
}

/// The sha256 of `/blob` in repository snapshot `snap` of the setup's application namespace,
/// read by the stock restic (`restic dump`).
async fn dump_sha(s: &Setup, file: &str, snap: &str) -> String {
    let pw = super::repo_password(&s.client, &s.opns.name, &s.app_ns.name).await;
    let s3 = env().s3();
    let out = std::process::Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            "restic dump --no-lock \"$1\" \"$2\" | sha256sum",
            "dump",
            snap,
            file,
        ])
        .env(
            "RESTIC_REPOSITORY",
            holdfast::storage::layout::repository_url(
                &app::location("primary", &s.bucket),
                &s.app_ns.name,
            ),
        )
        .env("RESTIC_PASSWORD", pw)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .output()
        .expect("run restic dump");
    assert!(
        out.status.success(),
        "restic dump {snap} {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The sha256 of `./blob` in a [`app::volume_checksums`] listing.
fn blob_sha(sums: &str) -> String {
    sums.lines()
        .find(|l| l.ends_with("./blob"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ./blob in {sums}"))
        .to_string()
}

/// The repository snapshot of claim `pvc` in a completed backup.
fn snapshot_of(b: &Backup, pvc: &str) -> String {
    let st = b.status.as_ref().expect("status");
    st.volumes
        .iter()
        .find(|v| v.pvc.name == pvc)
        .and_then(|v| v.copy.as_ref())
        .and_then(|c| c.snapshot_id.clone())
        .unwrap_or_else(|| panic!("no repository snapshot of {pvc}: {st:#?}"))
}

/// The outcome of a finished backup as a word (with the reasons of failed volumes); panics
/// unless it ended Completed, or failed with a reason and a message for what failed.
fn backup_outcome(b: &Backup) -> String {
    let st = b.status.clone().expect("status");
    let phase = st.phase.expect("phase");
    match phase {
        BackupPhase::Completed => "Completed".into(),
        BackupPhase::PartiallyFailed | BackupPhase::Failed => {
            let mut reasons: Vec<String> = st
                .volumes
                .iter()
                .filter(|v| {
                    v.reason.is_some() && v.copy.as_ref().is_none_or(|c| c.snapshot_id.is_none())
                })
                .map(|v| {
                    assert!(
                        v.message.as_deref().is_some_and(|m| !m.is_empty()),
                        "a failed volume without a message: {v:#?}"
                    );
                    v.reason.clone().unwrap_or_default()
                })
                .collect();
            if let Some(r) = &st.reason {
                reasons.push(r.clone());
            }
            assert!(
                !reasons.is_empty(),
                "backup {phase:?} without a reason: {st:#?}"
            );
            reasons.sort();
            reasons.dedup();
            format!("{phase:?} ({})", reasons.join(", "))
        }
        other => panic!("backup ended {other:?}: {st:#?}"),
    }
}

// ------------------------------------------------------------------ what a trial leaves

/// Nothing of the operator's transfers is left (pods, claims, snapshots, volumes of temporary
/// claims), no lock or journal is left in the repository (a failed or cancelled transfer's are
/// removed by the operator, after an outage once the store answers again), and `restic check`
/// is clean.
async fn assert_clean(s: &Setup, what: &str) {
    assert_no_leftovers(&s.client, &s.opns.name).await;
    let opns = s.opns.name.clone();
    wait_until(
        &format!("{what}: volumes of temporary claims to be gone"),
        Duration::from_secs(120),
        Some(&opns),
        || async { claimed_volumes(&opns).is_empty().then_some(()) },
    )
    .await;
    let gone = wait_until_some_or(Duration::from_secs(300), || async {
        leftovers(s).await.is_empty().then_some(())
    })
    .await;
    if gone.is_none() {
        panic!(
            "{what}: left in the repository: {:?}\n{}",
            leftovers(s).await,
            holdfast_e2e::dump_namespace(&s.opns.name)
        );
    }
    let pw = super::repo_password(&s.client, &s.opns.name, &s.app_ns.name).await;
    let out = app::restic(&s.bucket, &s.app_ns.name, &pw, &["check"]);
    assert!(
        out.status.success(),
        "{what}: restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `check` until it returns `Some` or `timeout` passes (then `None`, no panic).
async fn wait_until_some_or<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// PersistentVolumes whose claim is in namespace `ns`.
fn claimed_volumes(ns: &str) -> Vec<String> {
    env()
        .kubectl_ok([
            "get",
            "pv",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.claimRef.namespace}{\"\\n\"}{end}",
        ])
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(ns))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// `restic check --read-data` of the setup's repository is clean.
async fn check_read_data(s: &Setup) {
    let pw = super::repo_password(&s.client, &s.opns.name, &s.app_ns.name).await;
    let out = app::restic(&s.bucket, &s.app_ns.name, &pw, &["check", "--read-data"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "restic check --read-data: {text}");
    eprintln!(
        "faults: restic check --read-data clean: {}",
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// Deletes every object of the setup's bucket (the trials upload gigabytes in the long mode).
async fn empty_bucket(s: &Setup) {
    use holdfast_store::Store;
    let store = app::s3_store(&s.bucket).await;
    for o in store.list("").await.expect("list bucket") {
        store.delete(&o.key).await.expect("delete object");
    }
}

/// Deletes Backup `name` and waits until it and its VolumeSnapshots are gone.
async fn delete_backup(s: &Setup, name: &str) {
    let api: Api<Backup> = Api::namespaced(s.client.clone(), &s.opns.name);
    let Some(b) = api.get_opt(name).await.expect("get backup") else {
        return;
    };
    env().kubectl_ok([
        "delete",
        "backup",
        name,
        "-n",
        &s.opns.name,
        "--wait=true",
        "--timeout=300s",
    ]);
    // A finished Backup goes at once; its snapshots are removed after (controller::departed).
    let gone = wait_until_some_or(Duration::from_secs(180), || async {
        snapshots_of(&b).trim().is_empty().then_some(())
    })
    .await;
    let vs = snapshots_of(&b);
    assert!(gone.is_some(), "the snapshots of {name} stayed: {vs}");
}

/// The DataUpload of claim `pvc` of Backup `backup`.
async fn upload_of(s: &Setup, backup: &str, pvc: &str) -> String {
    let uploads: Api<DataUpload> = Api::namespaced(s.client.clone(), &s.opns.name);
    wait_until(
        &format!("the upload of claim {pvc} of backup {backup}"),
        Duration::from_secs(300),
        Some(&s.opns.name),
        || async {
            let list = uploads.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|d| d.spec.backup.name == backup && d.spec.pvc.name == pvc)
                .and_then(|d| d.metadata.name)
        },
    )
    .await
}

async fn upload_status(s: &Setup, du: &str) -> Option<holdfast_api::transfer::TransferStatus> {
    let uploads: Api<DataUpload> = Api::namespaced(s.client.clone(), &s.opns.name);
    uploads
        .get_opt(du)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.status)
}

/// Waits for a mover process of upload `du` that is none of `seen`; `None` once the upload
/// ended instead.
async fn next_mover(s: &Setup, du: &str, seen: &[u32]) -> Option<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let p = mover_pids(du);
        if !p.is_empty() && !p.iter().any(|x| seen.contains(x)) {
            return Some(p);
        }
        if upload_status(s, du)
            .await
            .is_some_and(|st| st.phase.is_terminal())
        {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "no mover of {du} ran for 15 minutes\n{}",
            holdfast_e2e::dump_namespace(&s.opns.name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether any of `pids` still runs.
fn alive(pids: &[u32]) -> bool {
    pids.iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
}

fn kill9(pids: &[u32]) -> bool {
    let mut args = vec!["-9".to_string()];
    args.extend(pids.iter().map(u32::to_string));
    std::process::Command::new("kill")
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill")
        .success()
}

/// Points the setup's location at `endpoint`, with `pack_mib` MiB packs (none: the default),
/// and waits until it is Available again.
async fn relocate(s: &Setup, endpoint: &str, pack_mib: Option<u32>) {
    let repository = match pack_mib {
        Some(p) => serde_json::json!({"packSizeMiB": p}),
        None => serde_json::json!({}),
    };
    let patch =
        serde_json::json!({"spec": {"s3": {"endpoint": endpoint}, "repository": repository}});
    env().kubectl_ok([
        "patch",
        "backupstoragelocation",
        "primary",
        "-n",
        &s.opns.name,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    let api: Api<holdfast_api::BackupStorageLocation> =
        Api::namespaced(s.client.clone(), &s.opns.name);
    wait_until(
        &format!("location primary to be Available at {endpoint}"),
        Duration::from_secs(120),
        Some(&s.opns.name),
        || async {
            let l = api.get("primary").await.ok()?;
            let st = l.status.as_ref()?;
            (l.spec.s3.endpoint.as_deref() == Some(endpoint)
                && st.observed_generation == l.metadata.generation
                && st.phase == Some(holdfast_api::location::LocationPhase::Available))
            .then_some(())
        },
    )
    .await;
}

/// Starts a Backup of the trial volume and returns when it is terminal, with the time taken.
async fn run_backup(s: &Setup, name: &str, timeout: Duration) -> (Backup, f64) {
    let t0 = Instant::now();
    env().apply_yaml(
        &s.opns.name,
        &backup_yaml(name, &s.app_ns.name, VOL_SELECTOR),
    );
    let b = wait_backup(&s.client, &s.opns.name, name, timeout).await;
    (b, t0.elapsed().as_secs_f64())
}

fn restore_yaml(name: &str, backup: &str, from: &str, to: &str) -> String {
    super::restore_yaml(
        name,
        &format!("  source: {{backup: {backup}}}\n  namespaceMapping: {{{from}: {to}}}\n"),
    )
}

/// Waits until Restore `name` is terminal (at most `timeout`).
async fn wait_restore(s: &Setup, name: &str, timeout: Duration) -> holdfast_api::Restore {
    let api: Api<holdfast_api::Restore> = Api::namespaced(s.client.clone(), &s.opns.name);
    wait_until(
        &format!("restore {name} to finish"),
        timeout,
        Some(&s.opns.name),
        || async {
            let r = api.get(name).await.ok()?;
            matches!(
                r.status.as_ref()?.phase?,
                RestorePhase::Completed
                    | RestorePhase::PartiallyFailed
                    | RestorePhase::Failed
                    | RestorePhase::Cancelled
            )
            .then_some(r)
        },
    )
    .await
}

/// The outcome of a finished restore as a word; panics unless Completed or failed with a
/// reason.
fn restore_outcome(r: &holdfast_api::Restore) -> String {
    let st = r.status.clone().expect("status");
    let phase = st.phase.expect("phase");
    match phase {
        RestorePhase::Completed => "Completed".into(),
        RestorePhase::PartiallyFailed | RestorePhase::Failed => {
            let mut reasons: Vec<String> =
                st.volumes.iter().filter_map(|v| v.reason.clone()).collect();
            reasons.extend(st.reason.clone());
            assert!(
                !reasons.is_empty(),
                "restore {phase:?} without a reason: {st:#?}"
            );
            reasons.sort();
            reasons.dedup();
            format!("{phase:?} ({})", reasons.join(", "))
        }
        other => panic!("restore ended {other:?}: {st:#?}"),
    }
}

/// After a restore into `target`: a completed one has the data of `want`; then the namespace
/// goes, with the restored volumes, and the Restore object is deleted.
async fn finish_restore(s: &Setup, name: &str, target: &TestNamespace, want: Option<&str>) {
    if let Some(want) = want {
        app::wait_seeded(&target.name, "deploy/vol").await;
        assert_eq!(
            app::volume_checksums(&target.name, "deploy/vol"),
            want,
            "restore {name}: the data differs"
        );
    }
    target.delete_and_wait(&s.client).await;
    let ns = target.name.clone();
    wait_until(
        &format!("the restored volumes of {ns} to be gone"),
        Duration::from_secs(180),
        Some(&s.opns.name),
        || async { claimed_volumes(&ns).is_empty().then_some(()) },
    )
    .await;
    env().kubectl_ok([
        "delete",
        "restore",
        name,
        "-n",
        &s.opns.name,
        "--wait=true",
        "--timeout=120s",
    ]);
}

/// Pids of the mover processes of transfer `name` (a DataUpload or DataDownload): its pod's
/// name is in their environment (`HOLDFAST_HOSTNAME`, the lock host).
fn transfer_pids(name: &str) -> Vec<u32> {
    let mut pids = mover_pids(name);
    let want = format!("{}={name}", holdfast::mover::protocol::env::HOSTNAME);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if raw.split(|b| *b == 0).nth(1) != Some(b"mover".as_slice()) {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// Waits for a mover process of transfer `name` that is none of `seen`; `None` once `ended`
/// says the transfer is over.
async fn next_mover_of<F, Fut>(name: &str, seen: &[u32], ended: F) -> Option<Vec<u32>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let p = transfer_pids(name);
        if !p.is_empty() && !p.iter().any(|x| seen.contains(x)) {
            return Some(p);
        }
        if ended().await {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "no mover of {name} ran for 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sleeps until `at` after `since` while `pids` run; `Some(lifetime)` if they ended first.
async fn until_or_ended(pids: &[u32], since: Instant, at: Duration) -> Option<Duration> {
    while since.elapsed() < at {
        if !alive(pids) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The median of `xs` (not empty).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Where a kill of a mover landed, or that the mover ended first.
enum Kill {
    Landed(String),
    Missed(String),
}

/// Kills mover `pids` (found at `found`) at a random point: half the time after a random
/// share of its run (`est` seconds, a typical first attempt's run), otherwise (uploads only)
/// once the repository holds a random share of the data still to upload. Returns where it
/// landed, and the mover's lifetime when it ended before.
async fn kill_at_random_point(
    s: &Setup,
    rng: &mut Rng,
    pids: &[u32],
    found: Instant,
    est: f64,
    upload: Option<(u64, f64)>,
) -> (Kill, Option<Duration>) {
    let bsl = app::location("primary", &s.bucket);
    match upload {
        Some((stored_before, data)) if rng.below(2) == 0 => {
            let now = pack_bytes(&s.bucket, &bsl, &s.app_ns.name).await;
            let done = now.saturating_sub(stored_before) as f64;
            let share = rng.between(0.05, 0.95);
            let target = now + (share * (data - done).max(0.0)) as u64;
            let what = format!("{:.0}% of the rest stored", share * 100.0);
            loop {
                if !alive(pids) {
                    return (Kill::Missed(format!("{what} (mover had ended)")), None);
                }
                if pack_bytes(&s.bucket, &bsl, &s.app_ns.name).await >= target {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if kill9(pids) {
                let t = found.elapsed().as_secs_f64();
                (Kill::Landed(format!("{what} ({t:.1}s)")), None)
            } else {
                (Kill::Missed(format!("{what} (mover had ended)")), None)
            }
        }
        _ => {
            let at = rng.secs(0.0, est);
            let what = format!("{:.1}s", at.as_secs_f64());
            if let Some(life) = until_or_ended(pids, found, at).await {
                return (
                    Kill::Missed(format!("{what} (mover had ended)")),
                    Some(life),
                );
            }
            if kill9(pids) {
                (Kill::Landed(what), None)
            } else {
                (Kill::Missed(format!("{what} (mover had ended)")), None)
            }
        }
    }
}

/// The DataDownload of Restore `restore` (its name).
async fn download_of(s: &Setup, restore: &str) -> String {
    let api: Api<holdfast_api::DataDownload> = Api::namespaced(s.client.clone(), &s.opns.name);
    wait_until(
        &format!("the download of restore {restore}"),
        Duration::from_secs(300),
        Some(&s.opns.name),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|d| d.spec.restore.name == restore)
                .and_then(|d| d.metadata.name)
        },
    )
    .await
}

async fn download_status(s: &Setup, dd: &str) -> Option<holdfast_api::transfer::TransferStatus> {
    let api: Api<holdfast_api::DataDownload> = Api::namespaced(s.client.clone(), &s.opns.name);
    api.get_opt(dd).await.ok().flatten().and_then(|d| d.status)
}

// ------------------------------------------------------------------ the trials

/// The mover of a backup is killed (SIGKILL of its processes) at random points of its run,
/// once or twice per backup (in the long mode one trial in ten kills it once more than the
/// retries allow): at a random time, or once a random share of the data is stored. Trials go
/// on until the wanted number had a kill land (a mover may end before its kill). A backup
/// whose mover was killed at most `--mover-retries` (3) times completes with as many retries,
/// and its snapshot holds the volume's bytes; one killed more often fails its volume with the
/// cause ("gave up after 4 attempts"). Every fifth trial (the last one in the small mode) then
/// restores the backup with its restore mover killed once or twice at random times: it
/// completes with the bytes. Nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_killed_at_random_points() {
    let t = trials();
    let mut rng = Rng::for_test("mover_killed_at_random_points");
    let s = setup("fmk", 1, &[], Share::Together).await;
    let proxy = FaultProxy::start(&env().s3().endpoint, rng.next()).await;
    relocate(&s, &proxy.endpoint(), Some(4)).await;
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    deploy_vol(&app_ns, t.mib).await;
    let data = f64::from(t.mib) * f64::from(1u32 << 20);
    let bsl = app::location("primary", &s.bucket);

    // A first backup without faults: how long its mover runs.
    refresh(&app_ns, t.mib);
    env().apply_yaml(&opns, &backup_yaml("m0", &app_ns, VOL_SELECTOR));
    let du = upload_of(&s, "m0", "vol-data").await;
    let first = next_mover(&s, &du, &[]).await.expect("the first mover");
    let started = Instant::now();
    while alive(&first) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Runs of first attempts that no kill ended: what a kill time is drawn against.
    let mut runs = vec![started.elapsed().as_secs_f64().max(1.0)];
    let b = wait_backup(&s.client, &opns, "m0", Duration::from_secs(600)).await;
    assert_eq!(backup_outcome(&b), "Completed");
    delete_backup(&s, "m0").await;
    eprintln!(
        "faults: a mover without faults ran {:.1} s for {} MiB",
        runs[0], t.mib
    );

    let mut records = Vec::new();
    let (mut trial, mut landed_trials, mut restores) = (0, 0, 0);
    while landed_trials < t.mover && trial < 2 * t.mover.max(1) {
        trial += 1;
        let sums = refresh(&app_ns, t.mib);
        let planned = if t.long && rng.below(10) == 0 {
            4
        } else {
            1 + rng.below(2) as usize
        };
        proxy.reset_counts();
        let name = format!("m{trial}");
        let stored_before = pack_bytes(&s.bucket, &bsl, &app_ns).await;
        let t0 = Instant::now();
        env().apply_yaml(&opns, &backup_yaml(&name, &app_ns, VOL_SELECTOR));
        let du = upload_of(&s, &name, "vol-data").await;
        let mut seen: Vec<u32> = Vec::new();
        let mut kills: Vec<String> = Vec::new();
        let mut killed = 0;
        for j in 0..planned {
            let ended = || async {
                upload_status(&s, &du)
                    .await
                    .is_some_and(|st| st.phase.is_terminal())
            };
            let Some(pids) = next_mover_of(&du, &seen, ended).await else {
                break;
            };
            let found = Instant::now();
            seen.extend(&pids);
            let (kill, life) = kill_at_random_point(
                &s,
                &mut rng,
                &pids,
                found,
                median(&runs),
                Some((stored_before, data)),
            )
            .await;
            match kill {
                Kill::Landed(w) => {
                    killed += 1;
                    kills.push(w);
                }
                Kill::Missed(w) => {
                    if let (0, Some(life)) = (j, life) {
                        runs.push(life.as_secs_f64());
                    }
                    kills.push(w);
                    break;
                }
            }
        }
        if killed > 0 {
            landed_trials += 1;
        }
        let b = wait_backup(&s.client, &opns, &name, Duration::from_secs(1200)).await;
        let outcome = backup_outcome(&b);
        let st = upload_status(&s, &du).await.expect("upload status");
        let counts = proxy.counts();
        if killed <= 3 {
            assert_eq!(
                outcome,
                "Completed",
                "trial {trial} (kills {kills:?}): {:#?}\n{}",
                b.status,
                s.op.logs()
            );
            assert_eq!(st.retries as usize, killed, "{st:#?}");
            assert_eq!(
                dump_sha(&s, "/blob", &snapshot_of(&b, "vol-data")).await,
                blob_sha(&sums),
                "trial {trial}: the snapshot does not hold the volume's data"
            );
        } else {
            // The only volume failed: the Backup is Failed (PartiallyFailed with others).
            assert!(
                outcome.contains("Failed (MoverFailed"),
                "trial {trial}: {outcome}"
            );
            let m = st.message.clone().unwrap_or_default();
            assert!(
                m.contains("signal 9") && m.contains("gave up after 4 attempts"),
                "{m}"
            );
        }
        assert_clean(&s, &format!("mover trial {trial}")).await;
        let r = Record {
            kind: "mover killed in a backup",
            trial,
            faults: format!(
                "kills at {} (retries {}), uploaded {:.2}x the data",
                if kills.is_empty() {
                    "-".to_string()
                } else {
                    kills.join(", ")
                },
                st.retries,
                counts.uploaded as f64 / data
            ),
            outcome: outcome.clone(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        print_record(&r);
        records.push(r);

        // A restore of this backup with its mover killed.
        let restore_now = if t.long {
            trial % 5 == 0
        } else {
            landed_trials == t.mover
        };
        if outcome == "Completed" && restore_now {
            restores += 1;
            let rname = format!("mr{trial}");
            let target = TestNamespace {
                name: format!("{app_ns}-mr{trial}"),
            };
            let t0 = Instant::now();
            env().apply_yaml(&opns, &restore_yaml(&rname, &name, &app_ns, &target.name));
            let dd = download_of(&s, &rname).await;
            let mut seen: Vec<u32> = Vec::new();
            let mut kills: Vec<String> = Vec::new();
            let mut killed = 0;
            for _ in 0..1 + rng.below(2) {
                let ended = || async {
                    download_status(&s, &dd)
                        .await
                        .is_some_and(|st| st.phase.is_terminal())
                };
                let Some(pids) = next_mover_of(&dd, &seen, ended).await else {
                    break;
                };
                let found = Instant::now();
                seen.extend(&pids);
                let (kill, _) =
                    kill_at_random_point(&s, &mut rng, &pids, found, median(&runs), None).await;
                match kill {
                    Kill::Landed(w) => {
                        killed += 1;
                        kills.push(w);
                    }
                    Kill::Missed(w) => {
                        kills.push(w);
                        break;
                    }
                }
            }
            // The download goes with its restore: its retries are read while it is there.
            let retries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
            let watch = {
                let (api, dd, retries) = (
                    Api::<holdfast_api::DataDownload>::namespaced(s.client.clone(), &opns),
                    dd.clone(),
                    retries.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        if let Ok(Some(d)) = api.get_opt(&dd).await
                            && let Some(st) = d.status
                        {
                            retries.fetch_max(st.retries, std::sync::atomic::Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                })
            };
            let r = wait_restore(&s, &rname, Duration::from_secs(1200)).await;
            watch.abort();
            let retries = retries.load(std::sync::atomic::Ordering::SeqCst);
            let outcome = restore_outcome(&r);
            assert_eq!(
                outcome,
                "Completed",
                "restore {rname} (kills {kills:?}): {:#?}\n{}",
                r.status,
                s.op.logs()
            );
            assert_eq!(retries as usize, killed, "restore {rname}: retries of {dd}");
            let secs = t0.elapsed().as_secs_f64();
            finish_restore(&s, &rname, &target, Some(&sums)).await;
            assert_clean(&s, &format!("mover restore trial {trial}")).await;
            let r = Record {
                kind: "mover killed in a restore",
                trial,
                faults: format!(
                    "kills at {} (retries {})",
                    if kills.is_empty() {
                        "-".to_string()
                    } else {
                        kills.join(", ")
                    },
                    retries
                ),
                outcome,
                seconds: secs,
            };
            print_record(&r);
            records.push(r);
        }
        delete_backup(&s, &name).await;
    }
    assert!(
        landed_trials >= t.mover,
        "only {landed_trials} of {trial} trials had a kill land (wanted {})",
        t.mover
    );
    assert!(restores > 0 || t.mover == 0, "no restore trial ran");
    check_read_data(&s).await;
    eprintln!(
        "faults: {trial} mover trials, {landed_trials} with a kill that landed\n{}",
        summary(&records)
    );
    delete_all(&s.client, &opns).await;
    empty_bucket(&s).await;
}

/// The operator is killed (SIGKILL) at random times of backups and of restores, once or twice
/// each, and started again after a random pause: every backup completes with the volume's
/// bytes in its snapshot, every restore completes with the bytes back in a new namespace, and
/// nothing is left behind. Trials go on until the wanted number of backups and of restores had
/// a kill before they finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_at_random_points() {
    let t = trials();
    let mut rng = Rng::for_test("operator_killed_at_random_points");
    let mut s = setup("fok", 1, &["--leader-elect=false"], Share::Together).await;
    relocate(&s, &env().s3().endpoint.clone(), Some(4)).await;
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    deploy_vol(&app_ns, t.mib).await;
    let mut restarts = 0;

    // A backup and a restore without faults: how long they take.
    let mut sums = refresh(&app_ns, t.mib);
    let (b, backup_secs) = run_backup(&s, "o0", Duration::from_secs(600)).await;
    assert_eq!(backup_outcome(&b), "Completed");
    let mut last = "o0".to_string();
    let target = TestNamespace {
        name: format!("{app_ns}-r0"),
    };
    let t0 = Instant::now();
    env().apply_yaml(&opns, &restore_yaml("r0", &last, &app_ns, &target.name));
    let r = wait_restore(&s, "r0", Duration::from_secs(600)).await;
    let restore_secs = t0.elapsed().as_secs_f64();
    assert_eq!(restore_outcome(&r), "Completed", "{:#?}", r.status);
    finish_restore(&s, "r0", &target, Some(&sums)).await;
    eprintln!(
        "faults: without faults a backup took {backup_secs:.0} s, a restore {restore_secs:.0} s"
    );
    // Durations of runs without a kill: what kill times are drawn against.
    let (mut backup_runs, mut restore_runs) = (vec![backup_secs], vec![restore_secs]);

    let mut records = Vec::new();
    let (mut trial, mut killed_backups, mut killed_restores) = (0, 0, 0);
    loop {
        let restore = if killed_backups < t.op_backups {
            false
        } else if killed_restores < t.op_restores {
            true
        } else {
            break;
        };
        trial += 1;
        assert!(
            trial <= 2 * (t.op_backups + t.op_restores),
            "{trial} trials and still too few kills landed: {killed_backups} in backups, {killed_restores} in restores"
        );
        let kills = 1 + rng.below(2) as usize;
        let t0 = Instant::now();
        let (name, target) = if restore {
            let name = format!("r{trial}");
            let target = TestNamespace {
                name: format!("{app_ns}-r{trial}"),
            };
            env().apply_yaml(&opns, &restore_yaml(&name, &last, &app_ns, &target.name));
            (name, Some(target))
        } else {
            sums = refresh(&app_ns, t.mib);
            let name = format!("o{trial}");
            env().apply_yaml(&opns, &backup_yaml(&name, &app_ns, VOL_SELECTOR));
            (name, None)
        };
        let est = median(if restore { &restore_runs } else { &backup_runs });
        let mut at = Vec::new();
        let mut landed = 0;
        for _ in 0..kills {
            let wait = rng.secs(0.0, est * 0.9);
            let pause = rng.secs(0.0, 3.0);
            tokio::time::sleep(wait).await;
            let kind = if restore { "restore" } else { "backup" };
            let phase = env().kubectl_ok([
                "get",
                kind,
                &name,
                "-n",
                &opns,
                "-o",
                "jsonpath={.status.phase} {.status.volumes[*].phase}",
            ]);
            let phase = phase.trim().to_string();
            if ["Completed", "PartiallyFailed", "Failed"]
                .iter()
                .any(|p| phase.starts_with(p))
            {
                at.push(format!("{:.1}s (already {phase})", wait.as_secs_f64()));
                break;
            }
            s.op.kill();
            landed += 1;
            tokio::time::sleep(pause).await;
            restarts += 1;
            let refs: Vec<&str> = s.args.iter().map(String::as_str).collect();
            s.op = Operator::start(&opns, &format!("fok-{restarts}"), &refs);
            s.op.wait_ready().await;
            at.push(format!(
                "{:.1}s in {} (down {:.1}s)",
                wait.as_secs_f64(),
                if phase.is_empty() { "-" } else { &phase },
                pause.as_secs_f64()
            ));
        }
        let outcome = if let Some(target) = &target {
            let r = wait_restore(&s, &name, Duration::from_secs(900)).await;
            let outcome = restore_outcome(&r);
            assert_eq!(
                outcome,
                "Completed",
                "restore {name} (kills {at:?}): {:#?}\n{}",
                r.status,
                s.op.logs()
            );
            let secs = t0.elapsed().as_secs_f64();
            finish_restore(&s, &name, target, Some(&sums)).await;
            (outcome, secs)
        } else {
            let b = wait_backup(&s.client, &opns, &name, Duration::from_secs(900)).await;
            let outcome = backup_outcome(&b);
            assert_eq!(
                outcome,
                "Completed",
                "backup {name} (kills {at:?}): {:#?}\n{}",
                b.status,
                s.op.logs()
            );
            assert_eq!(
                dump_sha(&s, "/blob", &snapshot_of(&b, "vol-data")).await,
                blob_sha(&sums),
                "backup {name}: the snapshot does not hold the volume's data"
            );
            (outcome, t0.elapsed().as_secs_f64())
        };
        match (restore, landed > 0) {
            (true, true) => killed_restores += 1,
            (false, true) => killed_backups += 1,
            (true, false) => restore_runs.push(outcome.1),
            (false, false) => backup_runs.push(outcome.1),
        }
        assert_clean(&s, &format!("operator trial {trial}")).await;
        if !restore {
            delete_backup(&s, &last).await;
            last = name.clone();
        }
        let r = Record {
            kind: if restore {
                "operator killed in a restore"
            } else {
                "operator killed in a backup"
            },
            trial,
            faults: format!("operator killed at {}", at.join(", ")),
            outcome: outcome.0,
            seconds: outcome.1,
        };
        print_record(&r);
        records.push(r);
    }
    check_read_data(&s).await;
    eprintln!(
        "faults: {trial} operator trials, {restarts} operator kills ({killed_backups} backups and {killed_restores} restores had one)\n{}",
        summary(&records)
    );
    delete_all(&s.client, &opns).await;
    empty_bucket(&s).await;
}

/// Kinds of S3 trouble a trial injects.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    /// 10-30% of requests answered 503 SlowDown or 500 InternalError.
    Errors,
    /// 5-20% of connections reset after S3 saw the request start.
    Resets,
    /// 10-30% of requests held 0.5-8 s (before the request or in the middle of its body).
    Stalls,
    /// Some of each.
    Mixed,
    /// S3 unreachable (every connection reset) for 10-30 s (long: 10-120 s) from a random
    /// moment of the first half of a typical transfer.
    Outage,
    /// 0.5-2% of requests never answered (the client's 120 s read timeout ends them).
    Hangs,
}

fn trouble_plan(kind: Trouble, rng: &mut Rng) -> Plan {
    let pm = |rng: &mut Rng, lo: u64, hi: u64| (lo + rng.below(hi - lo + 1)) as u32;
    match kind {
        Trouble::Errors => Plan {
            error_per_mille: pm(rng, 100, 300),
            ..Plan::clean()
        },
        Trouble::Resets => Plan {
            reset_per_mille: pm(rng, 50, 200),
            ..Plan::clean()
        },
        Trouble::Stalls => Plan {
            stall_per_mille: pm(rng, 100, 300),
            stall: (Duration::from_millis(500), Duration::from_secs(8)),
            ..Plan::clean()
        },
        Trouble::Mixed => Plan {
            error_per_mille: pm(rng, 50, 100),
            reset_per_mille: pm(rng, 30, 80),
            stall_per_mille: pm(rng, 50, 100),
            stall: (Duration::from_millis(500), Duration::from_secs(5)),
            ..Plan::clean()
        },
        Trouble::Outage => Plan::clean(),
        Trouble::Hangs => Plan {
            hang_per_mille: pm(rng, 5, 20),
            ..Plan::clean()
        },
    }
}

/// Sets the proxy's plan for a transfer of `kind`; an outage starts at a random moment within
/// `span` seconds. Returns what was injected, in words.
fn inject(proxy: &FaultProxy, kind: Trouble, rng: &mut Rng, span: f64, long: bool) -> String {
    let plan = trouble_plan(kind, rng);
    let mut what = format!("{kind:?} {plan:?}");
    proxy.set_plan(plan);
    if let Trouble::Outage = kind {
        let from = Instant::now() + rng.secs(0.0, span);
        let len = rng.secs(10.0, if long { 120.0 } else { 30.0 });
        proxy.set_outage(from, from + len);
        what = format!(
            "Outage of {:.0} s from {:.1} s",
            len.as_secs_f64(),
            (from - Instant::now()).as_secs_f64()
        );
    }
    what
}

/// S3 errors, resets, stalls, hangs and outages between the movers (and the operator) and S3,
/// during backups and restores: each ends Completed or failed with a reason; a completed
/// backup holds the volume's bytes, a completed restore brings them back; nothing is left
/// behind and the repository checks clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_and_stalls() {
    let t = trials();
    let mut rng = Rng::for_test("s3_errors_and_stalls");
    let s = setup("fs3", 1, &[], Share::Together).await;
    let proxy = FaultProxy::start(&env().s3().endpoint, rng.next()).await;
    relocate(&s, &proxy.endpoint(), Some(4)).await;
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    deploy_vol(&app_ns, t.mib).await;

    refresh(&app_ns, t.mib);
    let (b, first) = run_backup(&s, "s0", Duration::from_secs(600)).await;
    // Durations of backups and restores so far: an outage starts within the first half of
    // a typical one.
    let (mut backups, mut restores) = (vec![first], Vec::new());
    assert_eq!(backup_outcome(&b), "Completed");
    delete_backup(&s, "s0").await;
    let kinds: &[Trouble] = if t.long {
        &[
            Trouble::Errors,
            Trouble::Resets,
            Trouble::Stalls,
            Trouble::Mixed,
            Trouble::Outage,
            Trouble::Hangs,
        ]
    } else {
        &[Trouble::Errors, Trouble::Stalls, Trouble::Mixed]
    };
    let timeout = Duration::from_secs(if t.long { 2400 } else { 900 });
    let mut records = Vec::new();
    // The last completed backup and the volume's checksums when it was taken.
    let mut last: Option<(String, String)> = None;
    for trial in 1..=t.s3 {
        let kind = kinds[(trial - 1) % kinds.len()];
        let sums = refresh(&app_ns, t.mib);
        let name = format!("s{trial}");
        proxy.reset_counts();
        let what = inject(&proxy, kind, &mut rng, median(&backups) * 0.5, t.long);
        let (b, secs) = run_backup(&s, &name, timeout).await;
        backups.push(secs);
        proxy.set_plan(Plan::clean());
        let counts = proxy.counts();
        let outcome = backup_outcome(&b);
        if outcome == "Completed" {
            assert_eq!(
                dump_sha(&s, "/blob", &snapshot_of(&b, "vol-data")).await,
                blob_sha(&sums),
                "trial {trial}: the snapshot does not hold the volume's data"
            );
        }
        assert_clean(&s, &format!("S3 trial {trial}")).await;
        let r = Record {
            kind: "S3 faults in a backup",
            trial,
            faults: format!("{what}: {counts}"),
            outcome: outcome.clone(),
            seconds: secs,
        };
        print_record(&r);
        records.push(r);
        if outcome == "Completed" {
            if let Some((old, _)) = last.replace((name.clone(), sums.clone())) {
                delete_backup(&s, &old).await;
            }
        } else {
            delete_backup(&s, &name).await;
        }

        // Every other trial (every trial in the long mode), a restore of the last completed
        // backup through the same kind of trouble.
        let Some((from, want)) = last.clone().filter(|_| trial % 2 == 0 || t.long) else {
            continue;
        };
        let rname = format!("sr{trial}");
        let target = TestNamespace {
            name: format!("{app_ns}-sr{trial}"),
        };
        proxy.reset_counts();
        let span = median(if restores.is_empty() {
            &backups
        } else {
            &restores
        }) * 0.5;
        let what = inject(&proxy, kind, &mut rng, span, t.long);
        let t0 = Instant::now();
        env().apply_yaml(&opns, &restore_yaml(&rname, &from, &app_ns, &target.name));
        let r = wait_restore(&s, &rname, timeout).await;
        let secs = t0.elapsed().as_secs_f64();
        restores.push(secs);
        proxy.set_plan(Plan::clean());
        let counts = proxy.counts();
        let outcome = restore_outcome(&r);
        let check = (outcome == "Completed").then_some(want.as_str());
        finish_restore(&s, &rname, &target, check).await;
        assert_clean(&s, &format!("S3 restore trial {trial}")).await;
        let r = Record {
            kind: "S3 faults in a restore",
            trial,
            faults: format!("{what}: {counts}"),
            outcome,
            seconds: secs,
        };
        print_record(&r);
        records.push(r);
    }
    check_read_data(&s).await;
    eprintln!("{}", summary(&records));
    delete_all(&s.client, &opns).await;
    empty_bucket(&s).await;
}

/// A mover killed twice during one backup, at random points of its upload: the backup still
/// completes after two retries, the bytes uploaded to S3 in all (counted on the wire by a
/// proxy, the killed attempts' cut-off uploads included) and the pack bytes stored are each
/// less than 1.2 times the volume's data, no lock of a dead mover nor a journal is left, and
/// the repository checks clean with `--read-data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_killed_twice_uploads_under_1_2x() {
    let t = trials();
    let mut rng = Rng::for_test("mover_killed_twice_uploads_under_1_2x");
    let s = setup("f2k", 1, &[], Share::Together).await;
    let proxy = FaultProxy::start(&env().s3().endpoint, rng.next()).await;
    relocate(&s, &proxy.endpoint(), None).await;
    let (app_ns, opns) = (s.app_ns.name.clone(), s.opns.name.clone());
    let bsl = app::location("primary", &s.bucket);
    env().apply_yaml(&app_ns, &big_app());
    app::wait_seeded(&app_ns, "pod/big").await;
    let total = BIG_MIB << 20;
    let uploads: Api<DataUpload> = Api::namespaced(s.client.clone(), &opns);
    let mut records = Vec::new();
    let (mut trial, mut missed) = (0, 0);
    while trial < t.twice {
        trial += 1;
        if trial > 1 || missed > 0 {
            // New data, so that this backup uploads all of it again.
            app::sh(
                &app_ns,
                "pod/big",
                &format!(
                    "head -c {}M /dev/urandom > /data/blob.new && mv /data/blob.new /data/blob",
                    BIG_MIB
                ),
            );
        }
        let sha = blob_sha(&app::volume_checksums(&app_ns, "pod/big"));
        let before = pack_bytes(&s.bucket, &bsl, &app_ns).await;
        proxy.reset_counts();
        let name = format!("twice{trial}-{missed}");
        let t0 = Instant::now();
        env().apply_yaml(&opns, &backup_yaml(&name, &app_ns, ""));
        let du = upload_of(&s, &name, "big").await;
        // Two points of the upload, as shares of the volume stored.
        let first = rng.between(0.1, 0.5);
        let second = rng.between(first + 0.1, 0.9);
        let p1 = try_kill_mover_at(&s, &du, before + (first * total as f64) as u64, &[]).await;
        let landed = match p1 {
            Some(p1) => try_kill_mover_at(&s, &du, before + (second * total as f64) as u64, &p1)
                .await
                .is_some(),
            None => false,
        };
        let b = wait_backup(&s.client, &opns, &name, Duration::from_secs(900)).await;
        if !landed {
            // The mover stored the rest between the last look and the signal (a busy
            // machine): the trial does not count and is run again with new data.
            missed += 1;
            assert!(
                missed <= t.twice.max(2),
                "{missed} trials where a kill missed"
            );
            eprintln!(
                "faults: mover killed twice trial {trial}: a kill missed (the mover had ended); run again"
            );
            trial -= 1;
            continue;
        }
        let st = b.status.clone().expect("status");
        assert_eq!(
            st.phase,
            Some(BackupPhase::Completed),
            "{st:#?}\n{}",
            s.op.logs()
        );
        let d = uploads.get(&du).await.expect("upload");
        let ds = d.status.clone().expect("upload status");
        assert_eq!(ds.phase, TransferPhase::Completed, "{ds:#?}");
        assert_eq!(ds.retries, 2, "{ds:#?}");
        let why = ds.last_failure.clone().unwrap_or_default();
        assert!(why.contains("killed") && why.contains("signal 9"), "{why}");
        let uploaded = proxy.counts().uploaded;
        let stored = pack_bytes(&s.bucket, &bsl, &app_ns).await - before;
        let (up_ratio, st_ratio) = (uploaded as f64 / total as f64, stored as f64 / total as f64);
        eprintln!(
            "faults: twice-killed mover (at {:.0}% and {:.0}% stored): {uploaded} bytes uploaded ({up_ratio:.3}x), {stored} bytes of packs stored ({st_ratio:.3}x) for {total} bytes of data",
            first * 100.0,
            second * 100.0
        );
        assert!(
            up_ratio < 1.2,
            "{uploaded} bytes uploaded for {total} bytes of data ({up_ratio:.3}x)"
        );
        assert!(
            st_ratio < 1.2,
            "{stored} bytes of packs stored for {total} bytes of data ({st_ratio:.3}x)"
        );
        assert_eq!(dump_sha(&s, "/blob", &snapshot_of(&b, "big")).await, sha);
        let left = leftovers(&s).await;
        assert!(left.is_empty(), "left: {left:?}");
        assert_clean(&s, &format!("twice-killed trial {trial}")).await;
        let r = Record {
            kind: "mover killed twice",
            trial,
            faults: format!(
                "kills at {:.0}% and {:.0}% stored; uploaded {up_ratio:.3}x, stored {st_ratio:.3}x",
                first * 100.0,
                second * 100.0
            ),
            outcome: "Completed".into(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        print_record(&r);
        records.push(r);
    }
    check_read_data(&s).await;
    eprintln!("{}", summary(&records));
    delete_all(&s.client, &opns).await;
    empty_bucket(&s).await;
}
