//! File-level features against the restic oracle: sparse files (holes found with
//! SEEK_DATA/SEEK_HOLE are not read and restore as holes) and extended attributes
//! (restic's `extended_attributes` node field, restored by us and by restic).

mod common;

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use common::*;
use holdfast_repo::backup::{BackupOptions, BackupStats, backup};
use holdfast_repo::check::{CheckOptions, check};
use holdfast_repo::restore::{RestoreOptions, restore};

/// Compares two files in 8 MiB pieces (no hashing of a GiB in a debug build).
fn assert_same_file(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open a"),
        std::fs::File::open(b).expect("open b"),
    );
    assert_eq!(
        fa.metadata().expect("md").len(),
        fb.metadata().expect("md").len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    let mut off = 0u64;
    loop {
        let n = read_fill(&mut fa, &mut ba);
        let m = read_fill(&mut fb, &mut bb);
        assert_eq!(n, m);
        if n == 0 {
            break;
        }
        assert!(
            ba[..n] == bb[..n],
            "{} and {} differ in the 8 MiB at {off}",
            a.display(),
            b.display()
        );
        off += n as u64;
    }
}

fn read_fill(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).expect("read") {
            0 => break,
            k => got += k,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_gib_file_is_not_read_and_restores_sparse() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let p = src.join("disk.img");
    let f = std::fs::File::create(&p).expect("create");
    f.set_len(1 << 30).expect("len");
    f.write_all_at(&random_bytes(1, 1 << 20), 0).expect("w");
    f.write_all_at(&random_bytes(2, 2 << 20), (300 << 20) + 12345)
        .expect("w");
    f.write_all_at(&text_bytes(3, 1 << 20), (1 << 30) - (1 << 20))
        .expect("w");
    drop(f);
    let md = std::fs::metadata(&p).expect("md");
    if md.blocks() * 512 > 64 << 20 {
        holdfast_store::testing::prerequisite_missing("the file system here does not keep holes");
        return;
    }
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let stats = Arc::new(BackupStats::default());
    let started = std::time::Instant::now();
    let s = backup(
        &repo,
        &src,
        BackupOptions {
            stats: stats.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("backup");
    let secs = started.elapsed().as_secs_f64();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let read = BackupStats::get(&stats.bytes_read);
    let uploaded = BackupStats::get(&stats.bytes_uploaded);
    eprintln!(
        "1 GiB sparse file with 4 MiB of data: backup {secs:.2} s, read {} KiB, uploaded {} KiB",
        read >> 10,
        uploaded >> 10
    );
    // Data (4 MiB) plus less than one zero chunk (8 MiB) of padding per hole.
    assert!(read < 32 << 20, "read {read} bytes: holes were read");
    assert!(uploaded < 16 << 20, "uploaded {uploaded} bytes");

    let out = tmp.path().join("ours");
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    restore(
        &repo,
        "latest",
        &out,
        RestoreOptions {
            progress: Some(written.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("restore");
    // Progress counts holes as written: it ends at the file's size.
    assert_eq!(written.load(std::sync::atomic::Ordering::Relaxed), 1 << 30);
    let rp = out.join("disk.img");
    let allocated = std::fs::metadata(&rp).expect("md").blocks() * 512;
    eprintln!("restored by us: {} KiB allocated", allocated >> 10);
    assert!(
        allocated < 64 << 20,
        "restored file is not sparse: {allocated} bytes allocated"
    );
    assert_same_file(&p, &rp);
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

    let Some(restic) = restic() else { return };
    let r = repo_dir.to_str().expect("utf8");
    run_restic(&restic, r, &["check", "--read-data"], None);
    let by_restic = tmp.path().join("restic");
    run_restic(
        &restic,
        r,
        &[
            "restore",
            "latest",
            "--target",
            by_restic.to_str().expect("utf8"),
        ],
        None,
    );
    assert_same_file(&p, &by_restic.join("disk.img"));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    match rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => true,
        Err(e) => {
            holdfast_store::testing::prerequisite_missing(&format!(
                "setting {name} on {}: {e}",
                p.display()
            ));
            false
        }
    }
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_are_stored_in_restics_format_and_restored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).expect("mkdir");
    std::fs::write(src.join("file"), b"content").expect("w");
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 1]).collect();
    if !set_xattr(&src.join("file"), "user.comment", b"hello holdfast") {
        return;
    }
    assert!(set_xattr(&src.join("file"), "user.binary", &binary));
    assert!(set_xattr(
        &src.join("dir"),
        "user.dir-attr",
        b"on a directory"
    ));
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let s = backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup");
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    // The node format: extended_attributes = [{name, value (base64)}].
    let index = repo.load_index().await.expect("index");
    let tree = repo
        .load_tree(&index, &s.snapshot.tree)
        .await
        .expect("tree");
    let file = tree
        .nodes
        .iter()
        .find(|n| n.name == "file")
        .expect("file node");
    let x = file.extended_attributes.as_ref().expect("xattrs recorded");
    let names: Vec<&str> = x.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["user.binary", "user.comment"]);
    let json = serde_json::to_string(file).expect("json");
    assert!(
        json.contains(r#""extended_attributes":[{"name":"user.binary","value":"AAEC"#),
        "{json}"
    );

    let check_tree = |root: &Path| {
        assert_eq!(
            get_xattr(&root.join("file"), "user.comment").as_deref(),
            Some(&b"hello holdfast"[..]),
            "{}",
            root.display()
        );
        assert_eq!(
            get_xattr(&root.join("file"), "user.binary"),
            Some(binary.clone())
        );
        assert_eq!(
            get_xattr(&root.join("dir"), "user.dir-attr").as_deref(),
            Some(&b"on a directory"[..])
        );
    };
    let out = tmp.path().join("ours");
    let r = restore(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    check_tree(&out);

    let Some(restic) = restic() else { return };
    let rd = repo_dir.to_str().expect("utf8");
    run_restic(&restic, rd, &["check", "--read-data"], None);
    let by_restic = tmp.path().join("restic");
    run_restic(
        &restic,
        rd,
        &[
            "restore",
            "latest",
            "--target",
            by_restic.to_str().expect("utf8"),
        ],
        None,
    );
    check_tree(&by_restic);

    // And restic's own xattrs read back by us.
    let r2 = tmp.path().join("restic-repo");
    let r2s = r2.to_str().expect("utf8");
    run_restic(&restic, r2s, &["init", "--repository-version", "2"], None);
    run_restic(&restic, r2s, &["backup", "."], Some(&src));
    let repo2 = holdfast_repo::Repository::open(local_store(&r2), PASSWORD)
        .await
        .expect("open");
    let out2 = tmp.path().join("ours-from-restic");
    restore(&repo2, "latest", &out2, RestoreOptions::default())
        .await
        .expect("restore");
    check_tree(&out2);
}
