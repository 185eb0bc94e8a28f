//! The oracle: repositories we write must pass the real `restic check --read-data`
//! and restore byte-identically with `restic restore`; repositories written by
//! `restic backup` must restore byte-identically with our reader. Skipped with a
//! message when restic is not installed.

mod common;

use std::sync::Arc;

use common::*;
use holdfast_repo::backup::{BackupOptions, BackupStats, Compression, backup, find_parent};
use holdfast_repo::check::{CheckOptions, check};
use holdfast_repo::restore::{RestoreOptions, restore};
use holdfast_repo::{RepoError, Repository};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_backup_passes_restic_check_and_restores_identically() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    make_tree(&src, 24 << 20);
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let s = backup(
        &repo,
        &src,
        BackupOptions {
            pack_size: 4 << 20,
            ..Default::default()
        },
    )
    .await
    .expect("backup");
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    // Our own check and restore.
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
    assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
    let ours = tmp.path().join("restored-by-us");
    restore(&repo, "latest", &ours, RestoreOptions::default())
        .await
        .expect("restore");
    assert_same_tree(&src, &ours);

    let Some(restic) = restic() else { return };
    let r = repo_dir.to_str().expect("utf8");
    run_restic(&restic, r, &["check", "--read-data"], None);
    let snaps = run_restic(&restic, r, &["snapshots", "--json"], None);
    assert!(snaps.contains(&s.snapshot_id.to_hex()), "{snaps}");
    let by_restic = tmp.path().join("restored-by-restic");
    run_restic(
        &restic,
        r,
        &[
            "restore",
            &s.snapshot_id.to_hex(),
            "--target",
            by_restic.to_str().expect("utf8"),
        ],
        None,
    );
    assert_same_tree(&src, &by_restic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restic_written_repository_restores_identically_with_our_reader() {
    let Some(restic) = restic() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    make_tree(&src, 12 << 20);
    let repo_dir = tmp.path().join("repo");
    let r = repo_dir.to_str().expect("utf8");
    run_restic(&restic, r, &["init", "--repository-version", "2"], None);
    run_restic(
        &restic,
        r,
        &["backup", "--compression", "auto", "."],
        Some(&src),
    );
    // A second, incremental restic snapshot.
    std::fs::write(src.join("small.txt"), b"changed by restic test\n").expect("write");
    run_restic(&restic, r, &["backup", "."], Some(&src));

    let repo = Repository::open(local_store(&repo_dir), PASSWORD)
        .await
        .expect("open restic repo");
    assert_eq!(repo.snapshots().await.expect("snapshots").len(), 2);
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
    let out = tmp.path().join("out");
    restore(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore");
    assert_same_tree(&src, &out);

    // And we can add our own snapshot to restic's repository, which restic then checks.
    let s = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup into restic repo");
    assert!(s.errors.is_empty());
    run_restic(&restic, r, &["check", "--read-data"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backup_reads_only_changed_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    make_tree(&src, 8 << 20);
    let repo = init_local(&tmp.path().join("repo")).await;
    let first = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("first");

    // Unchanged: no file content is read, nothing new is stored but the snapshot.
    let paths = first.snapshot.paths.clone();
    let parent = find_parent(&repo, &paths, &first.snapshot.hostname)
        .await
        .expect("find");
    assert_eq!(parent, Some(first.snapshot_id));
    let stats = Arc::new(BackupStats::default());
    let second = backup(
        &repo,
        &src,
        BackupOptions {
            parent,
            stats: stats.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("second");
    assert_eq!(
        BackupStats::get(&stats.bytes_read),
        0,
        "unchanged re-backup read file contents"
    );
    assert_eq!(BackupStats::get(&stats.blobs_new), 0);
    assert_eq!(second.snapshot.tree, first.snapshot.tree);

    // One changed file: only it is read.
    std::fs::write(src.join("text/a.txt"), text_bytes(99, 300_000)).expect("write");
    let stats = Arc::new(BackupStats::default());
    let third = backup(
        &repo,
        &src,
        BackupOptions {
            parent: Some(second.snapshot_id),
            stats: stats.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("third");
    assert_eq!(BackupStats::get(&stats.bytes_read), 300_000);
    assert_eq!(BackupStats::get(&stats.files_changed), 1);
    let out = tmp.path().join("out");
    restore(
        &repo,
        &third.snapshot_id.to_hex()[..8],
        &out,
        RestoreOptions::default(),
    )
    .await
    .expect("restore");
    assert_same_tree(&src, &out);
    if let Some(restic) = restic() {
        run_restic(
            &restic,
            tmp.path().join("repo").to_str().expect("utf8"),
            &["check", "--read-data"],
            None,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_modes_all_pass_restic_check() {
    for c in [Compression::Off, Compression::Max, Compression::Level(-3)] {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("t"), text_bytes(7, 2_000_000)).expect("w");
        std::fs::write(src.join("r"), random_bytes(7, 2_000_000)).expect("w");
        let repo = init_local(&tmp.path().join("repo")).await;
        backup(
            &repo,
            &src,
            BackupOptions {
                compression: c,
                ..Default::default()
            },
        )
        .await
        .expect("backup");
        let stored: u64 = files_under(&tmp.path().join("repo/data")).values().sum();
        match c {
            Compression::Off => assert!(stored > 4_000_000, "{c:?}: {stored}"),
            _ => assert!(stored < 3_000_000, "{c:?}: {stored}"),
        }
        if let Some(restic) = restic() {
            run_restic(
                &restic,
                tmp.path().join("repo").to_str().expect("utf8"),
                &["check", "--read-data"],
                None,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_reported_naming_the_pack_and_wrong_password_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("r"), random_bytes(8, 3_000_000)).expect("w");
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup");

    let err = Repository::open(local_store(&repo_dir), "wrong")
        .await
        .expect_err("wrong password");
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
    assert!(err.to_string().contains("wrong password"), "{err}");

    // Flip one byte in the biggest pack (a data pack).
    let packs = files_under(&repo_dir.join("data"));
    let (pack, _) = packs.iter().max_by_key(|(_, n)| **n).expect("a pack");
    let mut bytes = std::fs::read(pack).expect("read");
    bytes[1000] ^= 0x40;
    std::fs::write(pack, bytes).expect("write");
    let name = pack
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();

    let rep = check(
        &repo,
        CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .expect("check");
    assert!(!rep.ok());
    assert!(
        rep.errors.iter().any(|e| e.contains(&name)),
        "{:?}",
        rep.errors
    );
    let err = restore(
        &repo,
        "latest",
        &tmp.path().join("out"),
        RestoreOptions::default(),
    )
    .await
    .expect_err("restore of damaged data must fail");
    assert!(err.to_string().contains(&name), "{err}");

    if let Some(restic) = restic() {
        let (ok, out, errout) = try_restic(
            &restic,
            repo_dir.to_str().expect("utf8"),
            &["check", "--read-data"],
            None,
            &[],
        );
        assert!(!ok, "restic check passed a damaged pack:\n{out}\n{errout}");
    }
}

/// A key added for a user's passphrase opens the repository for the stock restic as for us;
/// removing the old key (never the one to keep) leaves only the new passphrase working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_key_opens_the_repository_for_restic_and_the_old_one_can_go() {
    let Some(restic_bin) = restic() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("f"), text_bytes(3, 200_000)).expect("w");
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup");
    let url = repo_dir.display().to_string();
    let user = "the user's own passphrase, kept outside the cluster";

    assert!(repo.keys_for(user).await.expect("keys").is_empty());
    assert_eq!(repo.keys_for(PASSWORD).await.expect("keys").len(), 1);
    let id = repo.add_key(user, test_kdf()).await.expect("add key");
    assert_eq!(
        repo.add_key(user, test_kdf()).await.expect("again"),
        id,
        "a passphrase is added once"
    );
    assert_eq!(repo.key_count().await.expect("count"), 2);
    let with_user = [("RESTIC_PASSWORD", user)];
    let (ok, out, err) = try_restic(
        &restic_bin,
        &url,
        &["snapshots", "--json", "--no-lock"],
        None,
        &with_user,
    );
    assert!(ok, "restic with the added key: {err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Refused when the password to keep opens nothing: nobody is locked out.
    let err = repo
        .remove_keys_for(PASSWORD, "not a key")
        .await
        .expect_err("refused");
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
    assert_eq!(repo.key_count().await.expect("count"), 2);

    assert_eq!(
        repo.remove_keys_for(PASSWORD, user).await.expect("remove"),
        1
    );
    assert_eq!(repo.key_count().await.expect("count"), 1);
    let err = Repository::open(local_store(&repo_dir), PASSWORD)
        .await
        .expect_err("old password");
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
    Repository::open(local_store(&repo_dir), user)
        .await
        .expect("the user's passphrase opens it");
    let (ok, _, err) = try_restic(&restic_bin, &url, &["check"], None, &with_user);
    assert!(ok, "restic check with the user's passphrase: {err}");
    let (ok, _, _) = try_restic(&restic_bin, &url, &["check"], None, &[]);
    assert!(!ok, "the removed password no longer opens it");
}

/// Files held in memory (the operator's catalog: object archive and metadata) stored as a
/// snapshot: restic checks, lists and restores it byte for byte; an unchanged file kept
/// from an earlier snapshot stores nothing again, a changed one only its changed chunks;
/// reading verifies every blob, a flipped byte fails naming the blob; removed snapshots are
/// gone for restic too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_files_snapshot_dedups_restores_with_restic_and_is_verified() {
    use holdfast_repo::files::{self, Entry, Options};
    let Some(restic_bin) = restic() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let url = repo_dir.display().to_string();
    let archive = text_bytes(5, 8 << 20);
    let opts = |tag: &str| Options {
        paths: vec!["/shop/nightly".into()],
        tags: vec![tag.into(), "holdfast-test".into()],
        hostname: "catalog".into(),
    };
    let (first, snap) = files::save(
        &repo,
        vec![
            Entry::New {
                name: "resources.tar".into(),
                data: archive.clone(),
            },
            Entry::New {
                name: "metadata.json".into(),
                data: b"{\"v\":1}".to_vec(),
            },
        ],
        opts("first"),
    )
    .await
    .expect("save");
    run_restic(&restic_bin, &url, &["check", "--read-data"], None);
    let out = tmp.path().join("by-restic");
    run_restic(
        &restic_bin,
        &url,
        &[
            "restore",
            &first.to_hex(),
            "--target",
            out.to_str().expect("utf8"),
        ],
        None,
    );
    assert_eq!(
        std::fs::read(out.join("resources.tar")).expect("read"),
        archive
    );
    assert_eq!(
        std::fs::read(out.join("metadata.json")).expect("read"),
        b"{\"v\":1}"
    );

    let index = repo.load_index().await.expect("index");
    let nodes = files::list(&repo, &index, &snap).await.expect("list");
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["metadata.json", "resources.tar"]);
    assert_eq!(
        files::read(&repo, &index, &nodes[1]).await.expect("read"),
        archive
    );
    let chunks = nodes[1].content.as_ref().expect("content").len();
    assert!(chunks >= 4, "8 MiB in {chunks} chunks");

    // Kept as is: one new blob (the metadata) and one tree.
    let blobs = |i: &holdfast_repo::Index| i.by_pack().values().map(Vec::len).sum::<usize>();
    let before = blobs(&index);
    let (second, _) = files::save(
        &repo,
        vec![
            Entry::Kept(Box::new(nodes[1].clone())),
            Entry::New {
                name: "metadata.json".into(),
                data: b"{\"v\":2}".to_vec(),
            },
        ],
        opts("second"),
    )
    .await
    .expect("save kept");
    let index = repo.load_index().await.expect("index");
    assert_eq!(blobs(&index), before + 2);

    // A few bytes changed in the middle: most chunks are found again.
    let mut changed = archive.clone();
    changed.splice(4 << 20..4 << 20, b"one more object".iter().copied());
    let before = blobs(&index);
    files::save(
        &repo,
        vec![Entry::New {
            name: "resources.tar".into(),
            data: changed,
        }],
        opts("third"),
    )
    .await
    .expect("save changed");
    let index = repo.load_index().await.expect("index");
    let added = blobs(&index) - before;
    assert!(
        added <= 3 && added < chunks,
        "{added} new blobs for a small change of {chunks} chunks"
    );
    run_restic(&restic_bin, &url, &["check", "--read-data"], None);
    let listed = run_restic(
        &restic_bin,
        &url,
        &["snapshots", "--json", "--tag", "holdfast-test"],
        None,
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(3));

    files::remove(&repo, &[second]).await.expect("remove");
    let listed = run_restic(&restic_bin, &url, &["snapshots", "--json"], None);
    assert!(
        !listed.contains(&second.to_hex()) && listed.contains(&first.to_hex()),
        "{listed}"
    );

    // Tamper with the first data pack: reading the archive fails, naming the blob.
    let (pack, _) = index
        .get(&nodes[1].content.as_ref().expect("content")[0])
        .expect("indexed");
    let path = repo_dir
        .join("data")
        .join(&pack.to_hex()[..2])
        .join(pack.to_hex());
    let mut bytes = std::fs::read(&path).expect("read pack");
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).expect("write pack");
    let err = files::read(&repo, &index, &nodes[1])
        .await
        .expect_err("tampered");
    assert!(err.to_string().contains(&pack.to_string()), "{err}");
}
