//! Block devices: an image (a regular file standing in for a device, and a real loop
//! device when `losetup` works) backed up in fixed pieces as one file node; `restic
//! restore` yields the image, our restore writes it in place onto a file or device.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use holdfast_repo::backup::{BLOCK_CHUNK, BLOCK_TAG, BackupOptions, BackupStats, backup_block};
use holdfast_repo::check::{CheckOptions, check};
use holdfast_repo::restore::{RestoreOptions, restore_block};

const SIZE: u64 = 48 << 20;

/// A 48 MiB "disk": data in a few places (one piece straddling a 1 MiB boundary),
/// explicit zeros written in one MiB (allocated, not a hole), holes elsewhere.
fn make_image(p: &Path) -> Vec<u8> {
    let f = std::fs::File::create(p).expect("create");
    f.set_len(SIZE).expect("len");
    let mut want = vec![0u8; SIZE as usize];
    let mut put = |off: u64, data: &[u8]| {
        f.write_all_at(data, off).expect("w");
        want[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    put(0, &random_bytes(1, 4096));
    put((5 << 20) - 1000, &random_bytes(2, 3 << 20));
    put(20 << 20, &vec![0u8; 1 << 20]);
    put(30 << 20, &text_bytes(3, 2 << 20));
    put(SIZE - 512, &random_bytes(4, 512));
    want
}

fn assert_image(p: &Path, want: &[u8]) {
    let got = std::fs::read(p).expect("read image");
    assert_eq!(got.len(), want.len(), "{} has the wrong size", p.display());
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        panic!("{} differs from the image at byte {first}", p.display());
    }
}

fn mover_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples/mover");
    p.is_file().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_file_as_block_device_roundtrips_with_restic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let img = tmp.path().join("disk.img");
    let want = make_image(&img);
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let stats = Arc::new(BackupStats::default());
    let s = backup_block(
        &repo,
        &img,
        "disk.img",
        BackupOptions {
            stats: stats.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("backup");
    assert!(s.snapshot.tags.iter().any(|t| t == BLOCK_TAG));
    let read = BackupStats::get(&stats.bytes_read);
    eprintln!(
        "48 MiB image: read {} KiB, {} new blobs",
        read >> 10,
        BackupStats::get(&stats.blobs_new)
    );
    // Only pieces that overlap data extents are read (holes are not).
    assert!(read <= 16 << 20, "read {read} bytes");

    // One file node, fixed pieces, zero pieces all the same blob.
    let index = repo.load_index().await.expect("index");
    let tree = repo
        .load_tree(&index, &s.snapshot.tree)
        .await
        .expect("tree");
    assert_eq!(tree.nodes.len(), 1);
    let node = &tree.nodes[0];
    assert_eq!(
        (node.name.as_str(), node.node_type.as_str(), node.size),
        ("disk.img", "file", SIZE)
    );
    let content = node.content.as_ref().expect("content");
    assert_eq!(content.len() as u64, SIZE / BLOCK_CHUNK as u64);
    let zero = holdfast_repo::backup::block_zero_id();
    assert_eq!(content.iter().filter(|c| **c == zero).count(), 48 - 8);
    let distinct: std::collections::HashSet<_> = content.iter().collect();
    assert_eq!(distinct.len(), 9);

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

    // Our restore into a new file: identical and sparse.
    let out = tmp.path().join("restored.img");
    restore_block(&repo, "latest", &out, RestoreOptions::default())
        .await
        .expect("restore");
    assert_image(&out, &want);
    let allocated = std::fs::metadata(&out).expect("md").blocks() * 512;
    assert!(allocated <= 12 << 20, "{allocated} bytes allocated");

    // In place over an existing file full of garbage: zero pieces are zeroed.
    let dirty = tmp.path().join("dirty.img");
    std::fs::write(&dirty, random_bytes(9, SIZE as usize + 4096)).expect("w");
    let ino = std::fs::metadata(&dirty).expect("md").ino();
    restore_block(
        &repo,
        &s.snapshot_id.to_hex(),
        &dirty,
        RestoreOptions::default(),
    )
    .await
    .expect("restore over");
    assert_image(&dirty, &want);
    assert_eq!(
        std::fs::metadata(&dirty).expect("md").ino(),
        ino,
        "not in place"
    );

    if let Some(restic) = restic() {
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
        assert_image(&by_restic.join("disk.img"), &want);
    }

    // The mover: --source-kind block, and restore picks block mode from the tag.
    if let Some(bin) = mover_bin() {
        let mrepo = tmp.path().join("mrepo");
        let run = |args: &[&str]| {
            let o = Command::new(&bin)
                .arg("-r")
                .arg(&mrepo)
                .args(args)
                .env("HOLDFAST_REPOSITORY_PASSWORD", PASSWORD)
                .output()
                .expect("mover");
            assert!(
                o.status.success(),
                "mover {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        run(&["init"]);
        let out = run(&[
            "--json",
            "backup",
            "--init",
            "--source",
            img.to_str().expect("utf8"),
            "--source-kind",
            "block",
        ]);
        assert!(out.contains("\"event\":\"summary\""), "{out}");
        let target = tmp.path().join("mover.img");
        run(&["restore", "--target", target.to_str().expect("utf8")]);
        assert_image(&target, &want);
    }
}

/// Detaches a loop device on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn attach(file: &Path) -> Option<Loop> {
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(file)
        .output();
    let o = match o {
        Ok(o) => o,
        Err(e) => {
            holdfast_store::testing::prerequisite_missing(&format!("running losetup: {e}"));
            return None;
        }
    };
    if !o.status.success() {
        holdfast_store::testing::prerequisite_missing(&format!(
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
        return None;
    }
    Some(Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_device_roundtrip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let img = tmp.path().join("src.img");
    let want = make_image(&img);
    let Some(src_dev) = attach(&img) else { return };
    let dst_img = tmp.path().join("dst.img");
    std::fs::write(&dst_img, random_bytes(5, SIZE as usize)).expect("w");
    let Some(dst_dev) = attach(&dst_img) else {
        return;
    };
    let repo_dir = tmp.path().join("repo");
    let repo = init_local(&repo_dir).await;
    let s = backup_block(
        &repo,
        Path::new(&src_dev.0),
        "disk",
        BackupOptions::default(),
    )
    .await
    .expect("backup device");
    assert_eq!(s.snapshot.paths, vec![src_dev.0.clone()]);
    restore_block(
        &repo,
        "latest",
        Path::new(&dst_dev.0),
        RestoreOptions::default(),
    )
    .await
    .expect("restore onto device");
    drop(dst_dev);
    drop(src_dev);
    assert_image(&dst_img, &want);
    if let Some(restic) = restic() {
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
        assert_image(&by_restic.join("disk"), &want);
    }
}
