//! Many small files: their blobs share packs, so one read of a pack feeds thousands of
//! files. A restore must not hold a descriptor per file meanwhile (it ran out of them on a
//! 1,000,000-file tree). This test runs in a process of its own, with the soft limit of open
//! files lowered far below the number of files in one pack.

mod common;

use common::*;
use holdfast_repo::backup::{BackupOptions, backup};
use holdfast_repo::restore::{RestoreOptions, restore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_thousands_of_small_files_stays_within_a_low_descriptor_limit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    for i in 0..4_000u64 {
        let dir = src.join(format!("d{:02}", i / 500));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(format!("f{i:05}")),
            random_bytes(i, (i % 700) as usize),
        )
        .expect("write");
    }
    let repo = init_local(&tmp.path().join("repo")).await;
    backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup");
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(256),
            maximum: limit.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");
    let out = tmp.path().join("out");
    let summary = restore(&repo, "latest", &out, RestoreOptions::default()).await;
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).expect("restore limit");
    let summary = summary.expect("restore within 256 open files");
    assert_eq!(summary.files, 4_000);
    assert_same_tree(&src, &out);
}
