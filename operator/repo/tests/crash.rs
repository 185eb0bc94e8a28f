//! kill -9 of the mover at random points during a backup: after every kill the
//! repository must check clean (ours and restic's `check`), and the next backup must
//! succeed. Trials: 20, or `HOLDFAST_CRASH_TRIALS`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use holdfast_repo::check::{CheckOptions, check};
use holdfast_repo::restore::{RestoreOptions, restore};

/// The mover built as this crate's example (cargo builds examples for `cargo test`).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_backup_never_damages_the_repository() {
    let Some(mover) = mover_bin() else { return };
    let trials: u64 = std::env::var("HOLDFAST_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    make_tree(&src, 16 << 20);
    for i in 0..6u64 {
        std::fs::write(
            src.join(format!("extra-{i}.bin")),
            random_bytes(100 + i, 3 << 20),
        )
        .expect("w");
    }
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let restic = restic();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let delays = random_bytes(seed, trials as usize * 2);
    for t in 0..trials as usize {
        // Each trial changes a file so that every backup has new data to write.
        std::fs::write(
            src.join("changing.bin"),
            random_bytes(seed ^ t as u64, 2 << 20),
        )
        .expect("w");
        let delay = Duration::from_millis(
            20 + u64::from(u16::from_le_bytes([delays[2 * t], delays[2 * t + 1]])) % 2500,
        );
        let mut child = Command::new(&mover)
            .args([
                "-r",
                repo_dir.to_str().expect("utf8"),
                "backup",
                "--source",
                src.to_str().expect("utf8"),
                "--pack-size-mib",
                "1",
            ])
            .env("HOLDFAST_REPOSITORY_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mover");
        tokio::time::sleep(delay).await;
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
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
            // The killed mover's lock stays behind, as restic's own would; restic must
            // recognise it as stale (same host, dead pid) and remove it on `unlock`.
            let (ok, o, e) =
                try_restic(r, repo_dir.to_str().expect("utf8"), &["unlock"], None, &[]);
            assert!(ok, "trial {t}: restic unlock failed:\n{o}\n{e}");
            let (ok, o, e) = try_restic(r, repo_dir.to_str().expect("utf8"), &["check"], None, &[]);
            assert!(
                ok,
                "trial {t} (killed after {delay:?}): restic check failed:\n{o}\n{e}"
            );
        }
    }
    // The next backup succeeds and everything checks and restores.
    let status = Command::new(&mover)
        .args([
            "-r",
            repo_dir.to_str().expect("utf8"),
            "backup",
            "--source",
            src.to_str().expect("utf8"),
        ])
        .env("HOLDFAST_REPOSITORY_PASSWORD", PASSWORD)
        .status()
        .expect("run mover");
    assert!(
        status.success(),
        "backup after the crashes failed: {status}"
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
    if let Some(r) = &restic {
        run_restic(
            r,
            repo_dir.to_str().expect("utf8"),
            &["check", "--read-data"],
            None,
        );
    }
    let out = tmp.path().join("out");
    restore(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore");
    assert_same_tree(&src, &out);
}

/// Total size of the pack files in a local repository.
fn pack_bytes(repo: &std::path::Path) -> u64 {
    let mut n = 0;
    let Ok(dirs) = std::fs::read_dir(repo.join("data")) else {
        return 0;
    };
    for d in dirs.flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            n += f.metadata().map_or(0, |m| m.len());
        }
    }
    n
}

/// A backup killed twice with `kill -9` and resumed with its journal takes over the packs the
/// killed attempts uploaded: the repository holds little more than one copy of the data (an
/// attempt that started over would upload everything again), no lock of the killed attempts
/// stays, the journal is gone, and ours and restic's check find nothing wrong (no pack in
/// several indexes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backup_resumes_from_its_journal() {
    let Some(mover) = mover_bin() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    let total: u64 = 64 << 20;
    for i in 0..8u64 {
        std::fs::write(src.join(format!("f{i}.bin")), random_bytes(7 + i, 8 << 20)).expect("w");
    }
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let run = |resume: bool| {
        let mut c = Command::new(&mover);
        c.args([
            "-r",
            repo_dir.to_str().expect("utf8"),
            "backup",
            "--source",
            src.to_str().expect("utf8"),
            "--pack-size-mib",
            "1",
            "--uploads",
            "2",
            "--compression",
            "off",
            "--journal",
            "du-1",
        ])
        .env("HOLDFAST_REPOSITORY_PASSWORD", PASSWORD)
        .env("HOLDFAST_HOSTNAME", "mover-du-1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if resume {
            c.arg("--resume");
        }
        c
    };
    // Two attempts killed once a third and two thirds of the data are stored.
    for (i, share) in [(0, total / 3), (1, 2 * total / 3)] {
        let mut child = run(i > 0).spawn().expect("spawn mover");
        let start = std::time::Instant::now();
        while pack_bytes(&repo_dir) < share {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "attempt {i} stored only {} bytes",
                pack_bytes(&repo_dir)
            );
            assert!(
                child.try_wait().expect("wait").is_none(),
                "attempt {i} ended before the kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    assert!(
        std::fs::read_dir(repo_dir.join("locks"))
            .expect("locks")
            .count()
            > 0,
        "the killed attempts left their locks"
    );
    let status = run(true).status().expect("run mover");
    assert!(status.success(), "the resumed backup failed: {status}");
    let stored = pack_bytes(&repo_dir);
    assert!(
        (stored as f64) < 1.1 * total as f64,
        "{stored} bytes of packs for {total} bytes of data: the killed attempts' packs were uploaded again"
    );
    assert_eq!(
        std::fs::read_dir(repo_dir.join("locks"))
            .expect("locks")
            .count(),
        0,
        "a lock of a killed attempt is left"
    );
    assert!(
        !repo_dir.join("holdfast/journal/du-1").exists()
            || std::fs::read_dir(repo_dir.join("holdfast/journal/du-1"))
                .expect("journal")
                .count()
                == 0,
        "the journal is left"
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
    if let Some(r) = restic() {
        let out = run_restic(
            &r,
            repo_dir.to_str().expect("utf8"),
            &["check", "--read-data"],
            None,
        );
        assert!(!out.contains("several indexes"), "{out}");
    }
    let out = tmp.path().join("out");
    restore(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore");
    assert_same_tree(&src, &out);
}
