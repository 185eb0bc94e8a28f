//! Shared test helpers: a source tree covering every file kind, a deep comparison of
//! two trees (content and metadata), and running the real `restic` binary.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use holdfast_repo::{KdfParams, Repository};
use holdfast_store::{DynStore, LocalStore};

pub const PASSWORD: &str = "correct horse battery staple";

/// Cheap KDF for tests (restic accepts any valid scrypt parameters).
pub fn test_kdf() -> KdfParams {
    KdfParams {
        n: 1 << 12,
        r: 8,
        p: 1,
    }
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Compressible text-like bytes.
pub fn text_bytes(seed: u64, n: usize) -> Vec<u8> {
    let words = [
        "alpha ",
        "beta ",
        "gamma ",
        "delta ",
        "holdfast ",
        "backup ",
        "kubernetes ",
        "volume\n",
    ];
    let r = random_bytes(seed, n / 4 + 1);
    let mut v = Vec::with_capacity(n + 16);
    let mut i = 0;
    while v.len() < n {
        v.extend_from_slice(words[(r[i % r.len()] % 8) as usize].as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::File::create(p)
        .and_then(|mut f| f.write_all(data))
        .expect("write");
}

/// Builds a tree with every file kind we support.
pub fn make_tree(root: &Path, big: usize) {
    std::fs::create_dir_all(root).expect("root");
    write(&root.join("empty"), b"");
    write(&root.join("small.txt"), b"hello holdfast\n");
    write(&root.join("text/a.txt"), &text_bytes(1, 300_000));
    write(&root.join("text/b.txt"), &text_bytes(2, 3_000_000));
    write(&root.join("random.bin"), &random_bytes(3, big));
    // Same content twice: deduplicated.
    write(&root.join("dup/one.bin"), &random_bytes(4, 2_000_000));
    write(&root.join("dup/two.bin"), &random_bytes(4, 2_000_000));
    write(
        &root.join("ünïcödé/日本語 ファイル.txt"),
        "こんにちは\n".as_bytes(),
    );
    write(&root.join("spaces and 'quotes'/x \"y\".txt"), b"q");
    // Sparse: 40 MiB with data in the middle and at the end.
    {
        let p = root.join("sparse.img");
        let f = std::fs::File::create(&p).expect("sparse");
        f.set_len(40 << 20).expect("len");
        use std::os::unix::fs::FileExt;
        f.write_all_at(&random_bytes(5, 100_000), 20 << 20)
            .expect("w");
        f.write_all_at(b"end", (40 << 20) - 3).expect("w");
    }
    // Deep tree.
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    write(&deep.join("bottom.txt"), b"bottom");
    // Permissions.
    write(&root.join("perm/private"), b"secret");
    std::fs::set_permissions(
        root.join("perm/private"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    write(&root.join("perm/script.sh"), b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        root.join("perm/script.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::create_dir_all(root.join("perm/dir700")).expect("mkdir");
    std::fs::set_permissions(
        root.join("perm/dir700"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    // Symlinks (relative, absolute, dangling) and a hard link.
    std::os::unix::fs::symlink("text/a.txt", root.join("link-rel")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    std::fs::hard_link(root.join("small.txt"), root.join("hardlink-to-small")).expect("hardlink");
    // A FIFO.
    let _ = rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    );
    // Fixed times so the comparison of mtimes is meaningful.
    let t = rustix::fs::Timespec {
        tv_sec: 1_600_000_000,
        tv_nsec: 123_456_789,
    };
    holdfast_repo::restore::set_times(&root.join("text/a.txt"), t, t).expect("mtime");
}

#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<(i64, i64)>,
    size: u64,
    content_hash: Option<[u8; 32]>,
    link: Option<PathBuf>,
}

/// Describes every entry under `root` (path → kind, mode, owner, mtime, content).
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(root).expect("rel").to_path_buf();
            let ft = md.file_type();
            use std::os::unix::fs::FileTypeExt;
            let (kind, content_hash, link) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", None, None)
            } else if ft.is_file() {
                use sha2::Digest;
                let d = std::fs::read(&p).expect("read");
                ("file", Some(sha2::Sha256::digest(&d).into()), None)
            } else if ft.is_symlink() {
                (
                    "symlink",
                    None,
                    Some(std::fs::read_link(&p).expect("readlink")),
                )
            } else if ft.is_fifo() {
                ("fifo", None, None)
            } else {
                ("other", None, None)
            };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    // Symlink times are not compared (not every restorer sets them).
                    mtime: (kind != "symlink").then(|| (md.mtime(), md.mtime_nsec())),
                    size: if kind == "file" { md.len() } else { 0 },
                    content_hash,
                    link,
                },
            );
        }
    }
    out
}

/// Asserts two trees are identical in content and metadata, and that hard links
/// in `restored` are still hard links.
pub fn assert_same_tree(original: &Path, restored: &Path) {
    let a = describe(original);
    let b = describe(restored);
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "different sets of paths");
    for (p, ea) in &a {
        assert_eq!(Some(ea), b.get(p), "entry {} differs", p.display());
    }
    let ino = |p: &Path| std::fs::metadata(p).expect("stat").ino();
    if !original.join("hardlink-to-small").exists() {
        return;
    }
    assert_eq!(
        ino(&restored.join("small.txt")),
        ino(&restored.join("hardlink-to-small")),
        "hard link was not restored as a hard link"
    );
}

/// The restic binary, or `None` (with a message) when it is not installed.
pub fn restic() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join("restic"))
        .find(|p| p.is_file());
    if found.is_none() {
        holdfast_store::testing::prerequisite_missing(
            "restic is not installed (apt-get install restic); restic oracle checks skipped",
        );
    }
    found
}

/// Runs restic with the test password; returns stdout, panics with its output on failure.
pub fn run_restic(bin: &Path, repo: &str, args: &[&str], cwd: Option<&Path>) -> String {
    let (ok, out, err) = try_restic(bin, repo, args, cwd, &[]);
    assert!(
        ok,
        "restic {args:?} failed:\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// Runs restic; returns (success, stdout, stderr).
pub fn try_restic(
    bin: &Path,
    repo: &str,
    args: &[&str],
    cwd: Option<&Path>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut c = Command::new(bin);
    c.arg("-r")
        .arg(repo)
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env(
            "RESTIC_CACHE_DIR",
            std::env::temp_dir().join("holdfast-test-restic-cache"),
        );
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let o = c.output().expect("run restic");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn local_store(p: &Path) -> DynStore {
    Arc::new(LocalStore::new(p).with_sync(false))
}

pub async fn init_local(p: &Path) -> Repository {
    Repository::init(local_store(p), PASSWORD, test_kdf())
        .await
        .expect("init")
}

pub fn files_under(p: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let md = e.metadata().expect("md");
                if md.is_dir() {
                    stack.push(e.path());
                } else {
                    out.insert(e.path(), md.len());
                }
            }
        }
    }
    out
}
