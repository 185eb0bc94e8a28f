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
