//! forget and two-phase prune: our policy against `restic forget --dry-run`, prune on
//! a local store and on MinIO checked by `restic check --read-data` and restored
//! byte-identically by `restic restore`, the grace period and the "still unneeded"
//! rule, and kill -9 during prune.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use holdfast_repo::backup::{BackupOptions, BackupStats, backup};
use holdfast_repo::check::{CheckOptions, check};
use holdfast_repo::forget::{ForgetOptions, GroupBy, KeepDuration, KeepPolicy, forget};
use holdfast_repo::format::FileType;
use holdfast_repo::prune::{MARK_KEY, PruneOptions, load_mark, prune};
use holdfast_repo::restore::{RestoreOptions, restore};
use holdfast_repo::{Id, Repository, Snapshot};

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
}

/// Mutates the source tree for version `v`: a changed big file, a removed and an
/// added file, so every version leaves unused data behind once forgotten.
fn mutate(src: &Path, v: u64) {
    std::fs::write(src.join("random.bin"), random_bytes(1000 + v, 3 << 20)).expect("w");
    let _ = std::fs::remove_file(src.join(format!("v{}.bin", v.wrapping_sub(1))));
    std::fs::write(
        src.join(format!("v{v}.bin")),
        random_bytes(2000 + v, 1 << 20),
    )
    .expect("w");
    std::fs::write(src.join("text/b.txt"), text_bytes(3000 + v, 500_000)).expect("w");
}

fn pack_count(repo_dir: &Path) -> usize {
    files_under(&repo_dir.join("data")).len()
}

/// Restores `id` with restic and with us and compares both with `reference`.
async fn assert_restores(
    repo: &Repository,
    url: &str,
    env: &[(&str, &str)],
    id: &Id,
    reference: &Path,
    tmp: &Path,
) {
    let ours = tmp.join(format!("ours-{}", id.short()));
    restore(repo, &id.to_hex(), &ours, RestoreOptions::default())
        .await
        .expect("restore");
    assert_same_tree(reference, &ours);
    if let Some(restic) = restic() {
        let by_restic = tmp.join(format!("restic-{}", id.short()));
        let (ok, o, e) = try_restic(
            &restic,
            url,
            &[
                "restore",
                &id.to_hex(),
                "--target",
                by_restic.to_str().expect("utf8"),
            ],
            None,
            env,
        );
        assert!(ok, "restic restore failed:\n{o}\n{e}");
        assert_same_tree(reference, &by_restic);
    }
}

fn restic_check(url: &str, env: &[(&str, &str)]) {
    if let Some(restic) = restic() {
        let (ok, o, e) = try_restic(&restic, url, &["check", "--read-data"], None, env);
        assert!(ok, "restic check failed:\n{o}\n{e}");
    }
}

/// Four versions backed up; forget keeps the last two; prune (grace 0) deletes and
/// repacks; everything left checks clean and restores byte-identically.
async fn forget_and_prune_roundtrip(
    repo: &Repository,
    url: &str,
    env: &[(&str, &str)],
    tmp: &Path,
) {
    let src = tmp.join("src");
    make_tree(&src, 4 << 20);
    let mut versions: Vec<(Id, PathBuf)> = Vec::new();
    for v in 0..4u64 {
        mutate(&src, v);
        let s = backup(
            repo,
            &src,
            BackupOptions {
                pack_size: 1 << 20,
                ..Default::default()
            },
        )
        .await
        .expect("backup");
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let reference = tmp.join(format!("ref{v}"));
        cp_a(&src, &reference);
        versions.push((s.snapshot_id, reference));
    }
    let before = repo.list(FileType::Pack).await.expect("list").len();
    let f = forget(
        repo,
        &ForgetOptions {
            policy: KeepPolicy {
                last: 2,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("forget");
    assert_eq!(f.removed.len(), 2);
    assert_eq!(f.kept, 2);
    let remaining: BTreeSet<Id> = repo
        .snapshots()
        .await
        .expect("snapshots")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        remaining,
        versions[2..]
            .iter()
            .map(|(id, _)| *id)
            .collect::<BTreeSet<_>>()
    );
    let s = prune(
        repo,
        &PruneOptions {
            grace: Duration::ZERO,
            max_unused_percent: 0.0,
            pack_size: 1 << 20,
            ..Default::default()
        },
    )
    .await
    .expect("prune");
    eprintln!("{s:?}");
    assert!(s.packs_deleted > 0, "{s:?}");
    assert!(s.packs_repacked > 0, "{s:?}");
    assert_eq!(s.packs_waiting, 0);
    assert_eq!(s.bytes_unused_remaining, 0);
    let after = repo.list(FileType::Pack).await.expect("list").len();
    assert!(after < before, "{before} -> {after}");
    let rep = check(
        repo,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(
        rep.ok() && rep.warnings.is_empty(),
        "{:?} {:?}",
        rep.errors,
        rep.warnings
    );
    restic_check(url, env);
    for (id, reference) in &versions[2..] {
        assert_restores(repo, url, env, id, reference, tmp).await;
    }
    // Nothing left to do.
    let again = prune(
        repo,
        &PruneOptions {
            grace: Duration::ZERO,
            max_unused_percent: 0.0,
            ..Default::default()
        },
    )
    .await
    .expect("prune again");
    assert!(again.nothing_to_do(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_on_a_local_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    forget_and_prune_roundtrip(&repo, repo_dir.to_str().expect("utf8"), &[], tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_prune_on_minio() {
    use holdfast_store::testing::{MINIO_PASSWORD, MINIO_USER, MinioServer};
    let Some(minio) = MinioServer::start() else {
        return;
    };
    let store = holdfast_store::S3Store::new(minio.repository_config("prune", "repo"))
        .await
        .expect("client");
    store.ensure_bucket().await.expect("bucket");
    let repo = Repository::init(Arc::new(store), PASSWORD, test_kdf())
        .await
        .expect("init");
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!("s3:{}/prune/repo", minio.endpoint);
    let env = [
        ("AWS_ACCESS_KEY_ID", MINIO_USER),
        ("AWS_SECRET_ACCESS_KEY", MINIO_PASSWORD),
    ];
    forget_and_prune_roundtrip(&repo, &url, &env, tmp.path()).await;
}

/// Phase 1 only marks; a backup does not deduplicate against marked packs; a pack
/// that becomes needed again before the sweep (a snapshot referencing it appears) is
/// not deleted; the mark is invisible to `restic check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_and_still_unneeded_rule() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo_dir = tmp.path().join("repo");
    let url = repo_dir.to_str().expect("utf8").to_string();
    let repo = init_local(&repo_dir).await;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a.bin"), random_bytes(1, 2 << 20)).expect("w");
    let first = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("b1");
    // Its data packs: one, or one per worker that stored one of its chunks.
    let first_data_packs = {
        let index = repo.load_index().await.expect("index");
        let tree = repo
            .load_tree(&index, &first.snapshot.tree)
            .await
            .expect("tree");
        let content = tree.nodes[0].content.clone().expect("content");
        content
            .iter()
            .map(|id| index.get(id).expect("indexed").0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let ref1 = tmp.path().join("ref1");
    cp_a(&src, &ref1);
    std::fs::write(src.join("a.bin"), random_bytes(2, 2 << 20)).expect("w");
    let second = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("b2");
    forget(
        &repo,
        &ForgetOptions {
            snapshots: vec![first.snapshot_id.to_hex()[..10].to_string()],
            ..Default::default()
        },
    )
    .await
    .expect("forget by id");
    let packs_before = pack_count(&repo_dir);
    let hour = PruneOptions {
        grace: Duration::from_secs(3600),
        ..Default::default()
    };

    // Phase 1: marked, nothing deleted.
    let s = prune(&repo, &hour).await.expect("mark");
    assert!(s.packs_newly_marked >= 2, "{s:?}"); // the first version's data and tree packs
    assert_eq!(s.packs_deleted + s.packs_repacked, 0, "{s:?}");
    assert_eq!(pack_count(&repo_dir), packs_before);
    let mark = load_mark(&repo).await.expect("mark").expect("a mark");
    assert_eq!(mark.packs.len(), s.packs_newly_marked);
    assert!(repo_dir.join(MARK_KEY).is_file());
    restic_check(&url, &[]);
    // A second run within the grace period changes nothing and keeps the mark times.
    let s2 = prune(&repo, &hour).await.expect("mark again");
    assert_eq!(s2.packs_newly_marked, 0);
    assert_eq!(s2.packs_waiting, s.packs_newly_marked);
    assert_eq!(load_mark(&repo).await.expect("mark"), Some(mark.clone()));

    // A backup of the first version's content does not reuse the marked blobs.
    let src1 = tmp.path().join("src1");
    cp_a(&ref1, &src1);
    let stats = Arc::new(BackupStats::default());
    backup(
        &repo,
        &src1,
        BackupOptions {
            stats: stats.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("b3");
    assert!(
        BackupStats::get(&stats.bytes_new) >= 2 << 20,
        "the backup deduplicated against marked packs"
    );

    // A snapshot referencing the first version's tree appears (as a backup that
    // started before the mark would write it): its packs must survive the sweep.
    let mut resurrected: Snapshot = first.snapshot.clone();
    resurrected.time = holdfast_repo::format::format_time(&chrono::Utc::now().fixed_offset());
    let rid = repo
        .save_json(FileType::Snapshot, &resurrected)
        .await
        .expect("save snapshot");
    let s3 = prune(
        &repo,
        &PruneOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .expect("sweep");
    // The first version's data packs hold only blobs that the third backup stored
    // again: redundant copies, deleted. Its tree pack is needed again: kept.
    assert_eq!(
        (s3.packs_deleted, s3.packs_repacked),
        (first_data_packs, 0),
        "{s3:?}"
    );
    let index = repo.load_index().await.expect("index");
    let (tree_pack, _) = index.get(&first.snapshot.tree).expect("first tree indexed");
    assert!(repo_dir.join(FileType::Pack.key(&tree_pack)).is_file());
    assert!(
        load_mark(&repo)
            .await
            .expect("mark")
            .is_none_or(|m| m.packs.is_empty()),
        "needed packs must leave the mark"
    );
    let rep = check(
        &repo,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(rep.ok(), "{:?}", rep.errors);
    assert_restores(&repo, &url, &[], &rid, &ref1, tmp.path()).await;

    // Forget it again and sweep with grace 0: now deleted.
    forget(
        &repo,
        &ForgetOptions {
            snapshots: vec![rid.to_hex()],
            ..Default::default()
        },
    )
    .await
    .expect("forget");
    let s4 = prune(
        &repo,
        &PruneOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .expect("sweep 2");
    assert_eq!(s4.packs_deleted, 1, "{s4:?}");
    assert!(!repo_dir.join(FileType::Pack.key(&tree_pack)).exists());
    let rep = check(
        &repo,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(
        rep.ok() && rep.warnings.is_empty(),
        "{:?} {:?}",
        rep.errors,
        rep.warnings
    );
    restic_check(&url, &[]);
    let out = tmp.path().join("out2");
    restore(
        &repo,
        &second.snapshot_id.to_hex(),
        &out,
        RestoreOptions::default(),
    )
    .await
    .expect("restore second");
    assert_eq!(
        std::fs::read(out.join("a.bin")).expect("read"),
        random_bytes(2, 2 << 20)
    );
}

/// Our policy decisions equal `restic forget --dry-run` on the same snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_policy_matches_restic() {
    let Some(restic) = restic() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let repo_dir = tmp.path().join("repo");
    let url = repo_dir.to_str().expect("utf8").to_string();
    let repo = init_local(&repo_dir).await;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"x").expect("w");
    let base = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("b");
    repo.store()
        .delete(&FileType::Snapshot.key(&base.snapshot_id))
        .await
        .expect("delete");
    // 120 snapshots at irregular times over ~3 years, two hosts, some tagged.
    let start = chrono::DateTime::parse_from_rfc3339("2022-11-03T22:15:00+01:00").expect("t");
    let r = random_bytes(77, 120 * 8);
    let mut t = start;
    for i in 0..120usize {
        let step = u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().expect("8"));
        t += chrono::Duration::minutes((step % (60 * 24 * 20)) as i64 + 1);
        let mut s = base.snapshot.clone();
        s.time = holdfast_repo::format::format_time(&t);
        s.parent = None;
        s.hostname = if i % 3 == 0 { "b".into() } else { "a".into() };
        s.tags = match i % 7 {
            0 => vec!["monthly-keep".into(), "x".into()],
            1 => vec!["x".into()],
            _ => vec![],
        };
        repo.save_json(FileType::Snapshot, &s).await.expect("save");
    }
    let all = repo.snapshots().await.expect("snapshots");
    let policies: Vec<(KeepPolicy, Vec<&str>)> = vec![
        (
            KeepPolicy {
                last: 5,
                ..Default::default()
            },
            vec!["--keep-last", "5"],
        ),
        (
            KeepPolicy {
                hourly: 3,
                daily: 7,
                weekly: 5,
                monthly: 6,
                yearly: 2,
                ..Default::default()
            },
            vec![
                "--keep-hourly",
                "3",
                "--keep-daily",
                "7",
                "--keep-weekly",
                "5",
                "--keep-monthly",
                "6",
                "--keep-yearly",
                "2",
            ],
        ),
        (
            KeepPolicy {
                within: KeepDuration::parse("3m10d"),
                ..Default::default()
            },
            vec!["--keep-within", "3m10d"],
        ),
        (
            KeepPolicy {
                last: 2,
                tags: vec![vec!["monthly-keep".into(), "x".into()]],
                ..Default::default()
            },
            vec!["--keep-last", "2", "--keep-tag", "monthly-keep,x"],
        ),
        (
            KeepPolicy {
                weekly: 10,
                within: KeepDuration::parse("1y"),
                ..Default::default()
            },
            vec!["--keep-weekly", "10", "--keep-within", "1y"],
        ),
    ];
    for (policy, args) in policies {
        let ours: BTreeSet<String> = holdfast_repo::forget::plan(&all, &policy, GroupBy::default())
            .into_iter()
            .flat_map(|g| g.decisions)
            .filter(|d| !d.keep)
            .map(|d| d.id.to_hex())
            .collect();
        let mut a = vec!["forget", "--dry-run", "--json"];
        a.extend(args.iter().copied());
        let out = run_restic(&restic, &url, &a, None);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("restic json");
        let mut theirs = BTreeSet::new();
        for g in v.as_array().expect("groups") {
            for s in g["remove"].as_array().into_iter().flatten() {
                theirs.insert(s["id"].as_str().expect("id").to_string());
            }
        }
        assert!(!theirs.is_empty() || ours.is_empty(), "{args:?}");
        assert_eq!(ours, theirs, "policy {args:?}");
    }
    // And a real forget removes exactly those files.
    let f = forget(
        &repo,
        &ForgetOptions {
            policy: KeepPolicy {
                last: 5,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("forget");
    assert_eq!(f.kept, 10); // 5 per host
    assert_eq!(repo.snapshots().await.expect("snapshots").len(), 10);
    let out = run_restic(&restic, &url, &["snapshots", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v.as_array().map(|a| a.len()), Some(10));
}

/// The mover built as this crate's example.
fn mover_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples/mover");
    if p.is_file() {
        Some(p)
    } else {
        holdfast_store::testing::prerequisite_missing(&format!(
            "{} not built (run cargo test without --test filters)",
            p.display()
        ));
        None
    }
}

fn mover(bin: &Path, repo: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("HOLDFAST_REPOSITORY_PASSWORD", PASSWORD)
        .output()
        .expect("run mover")
}

/// kill -9 of `mover prune` at random points: the repository checks clean after
/// every kill (ours and restic's), the next prune finishes the job, and the kept
/// snapshots restore byte-identically. Trials: 8, or `HOLDFAST_PRUNE_CRASH_TRIALS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_prune_never_damages_the_repository() {
    let Some(bin) = mover_bin() else { return };
    let trials: usize = std::env::var("HOLDFAST_PRUNE_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().expect("tmp");
    let repo_dir = tmp.path().join("repo");
    let url = repo_dir.to_str().expect("utf8").to_string();
    let repo = init_local(&repo_dir).await;
    let src = tmp.path().join("src");
    make_tree(&src, 2 << 20);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let delays = random_bytes(seed, trials * 2);
    let restic = restic();
    let mut kept_ref: Vec<(Id, PathBuf)> = Vec::new();
    for t in 0..trials {
        // Two new versions per trial, then keep the last two: every prune has work.
        for k in 0..2u64 {
            mutate(&src, (t as u64) * 2 + k);
            let o = mover(
                &bin,
                &repo_dir,
                &[
                    "--json",
                    "backup",
                    "--source",
                    src.to_str().expect("utf8"),
                    "--pack-size-mib",
                    "1",
                ],
            );
            assert!(
                o.status.success(),
                "backup: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = mover(&bin, &repo_dir, &["forget", "--keep-last", "2"]);
        // 3: nothing removed (the first trial has only two snapshots).
        assert!(
            o.status.success() || (t == 0 && o.status.code() == Some(3)),
            "forget: {:?} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        let delay = Duration::from_millis(
            10 + u64::from(u16::from_le_bytes([delays[2 * t], delays[2 * t + 1]])) % 1200,
        );
        let mut child = Command::new(&bin)
            .arg("-r")
            .arg(&repo_dir)
            .args(["prune", "--grace", "0s", "--max-unused", "0"])
            .env("HOLDFAST_REPOSITORY_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        tokio::time::sleep(delay).await;
        let finished = matches!(child.try_wait(), Ok(Some(_)));
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "trial {t}: {} after {delay:?}",
            if finished {
                "prune had finished"
            } else {
                "killed prune"
            }
        );
        let rep = check(
            &repo,
            CheckOptions {
                read_data: false,
                ..Default::default()
            },
        )
        .await
        .expect("check");
        assert!(
            rep.ok(),
            "trial {t} (killed after {delay:?}): {:?}",
            rep.errors
        );
        if let Some(r) = &restic {
            let (ok, o, e) = try_restic(r, &url, &["unlock"], None, &[]);
            assert!(ok, "trial {t}: restic unlock:\n{o}\n{e}");
            let (ok, o, e) = try_restic(r, &url, &["check"], None, &[]);
            assert!(
                ok,
                "trial {t} (killed after {delay:?}): restic check:\n{o}\n{e}"
            );
        }
        let snaps = repo.snapshots().await.expect("snapshots");
        assert_eq!(snaps.len(), 2, "trial {t}");
        let latest = snaps.last().expect("one").0;
        let reference = tmp.path().join(format!("ref-{t}"));
        cp_a(&src, &reference);
        kept_ref.push((latest, reference));
    }
    // The next prune (our stale-lock rule lets it past the killed one's lock)
    // completes; everything checks with --read-data and the latest restores.
    let o = mover(
        &bin,
        &repo_dir,
        &["--json", "prune", "--grace", "0s", "--max-unused", "0"],
    );
    assert!(
        o.status.success() || o.status.code() == Some(3),
        "prune after the crashes: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rep = check(
        &repo,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(
        rep.ok() && rep.warnings.is_empty(),
        "{:?} {:?}",
        rep.errors,
        rep.warnings
    );
    restic_check(&url, &[]);
    let (id, reference) = kept_ref.last().expect("a trial");
    assert_restores(&repo, &url, &[], id, reference, tmp.path()).await;
}

/// The mover's forget and prune subcommands: JSON lines, exit codes 0 / 1 / 3, and
/// the two phases with a real grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_forget_and_prune_commands() {
    let Some(bin) = mover_bin() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let repo_dir = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let s = src.to_str().expect("utf8");
    for v in 0..3u64 {
        std::fs::write(src.join("f.bin"), random_bytes(v, 1 << 20)).expect("w");
        let o = mover(&bin, &repo_dir, &["backup", "--init", "--source", s]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let code = |o: &std::process::Output| o.status.code();
    let events = |o: &std::process::Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    // Usage errors: exit 1.
    assert_eq!(code(&mover(&bin, &repo_dir, &["forget"])), Some(1));
    assert_eq!(
        code(&mover(
            &bin,
            &repo_dir,
            &["forget", "--snapshot", "ab", "--keep-last", "1"]
        )),
        Some(1)
    );
    assert_eq!(
        code(&mover(&bin, &repo_dir, &["prune", "--grace", "soon"])),
        Some(1)
    );
    // Nothing to do: exit 3.
    assert_eq!(
        code(&mover(&bin, &repo_dir, &["forget", "--keep-last", "5"])),
        Some(3)
    );
    assert_eq!(
        code(&mover(
            &bin,
            &repo_dir,
            &["forget", "--snapshot", "00000000"]
        )),
        Some(3)
    );
    // Dry run removes nothing.
    let o = mover(
        &bin,
        &repo_dir,
        &["--json", "forget", "--keep-last", "1", "--dry-run"],
    );
    assert_eq!(code(&o), Some(0));
    let ev = events(&o);
    assert_eq!(ev.iter().filter(|e| e["event"] == "remove").count(), 2);
    assert_eq!(ev.iter().filter(|e| e["event"] == "keep").count(), 1);
    assert_eq!(
        std::fs::read_dir(repo_dir.join("snapshots"))
            .expect("ls")
            .count(),
        3
    );
    // forget --prune with a grace period: marks, deletes nothing.
    let packs = pack_count(&repo_dir);
    let o = mover(
        &bin,
        &repo_dir,
        &[
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--grace",
            "1h",
        ],
    );
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = events(&o);
    let summary = ev
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("summary");
    assert_eq!(summary["removed"], 2);
    let p = ev
        .iter()
        .find(|e| e["event"] == "prune")
        .expect("prune event");
    assert!(p["packs_newly_marked"].as_u64() >= Some(2), "{p}");
    assert_eq!(p["packs_deleted"], 0);
    assert_eq!(pack_count(&repo_dir), packs);
    // Within the grace period: still waiting (exit 0: marked packs are pending work).
    let o = mover(&bin, &repo_dir, &["--json", "prune", "--grace", "1h"]);
    assert_eq!(code(&o), Some(0));
    assert_eq!(events(&o)[0]["packs_deleted"], 0);
    // Sweep.
    let o = mover(&bin, &repo_dir, &["--json", "prune", "--grace", "0s"]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(events(&o)[0]["packs_deleted"].as_u64() >= Some(2));
    assert!(pack_count(&repo_dir) < packs);
    assert_eq!(
        code(&mover(&bin, &repo_dir, &["prune", "--grace", "0s"])),
        Some(3)
    );
    let o = mover(&bin, &repo_dir, &["check", "--read-data"]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let out = tmp.path().join("out");
    let o = mover(
        &bin,
        &repo_dir,
        &["restore", "--target", out.to_str().expect("utf8")],
    );
    assert_eq!(code(&o), Some(0));
    assert_eq!(
        std::fs::read(out.join("f.bin")).expect("read"),
        random_bytes(2, 1 << 20)
    );
    if let Some(restic) = restic() {
        run_restic(
            &restic,
            repo_dir.to_str().expect("utf8"),
            &["check", "--read-data"],
            None,
        );
    }
}
