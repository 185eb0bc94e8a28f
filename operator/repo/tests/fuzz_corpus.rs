//! Replays every committed fuzz input (seeds from a real repository and every input that
//! once failed, in `fuzz/corpus/<target>/`) through the fuzz targets' own bodies, so a
//! fixed finding stays fixed without running the fuzzer. `write_seed_corpus` (ignored)
//! regenerates the seeds from a repository made by our own backup.

use std::path::{Path, PathBuf};

use holdfast_repo::backup::{BackupOptions, backup};
use holdfast_repo::crypto::Key;
use holdfast_repo::format::{self, KdfParams, KeyFile};

mod common;

#[path = "../fuzz/src/repo_harness.rs"]
mod harness;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs `f` on every input of `target`'s corpus; a panic names the input.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no inputs", dir.display());
    for p in paths {
        let data = std::fs::read(&p).expect("read input");
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("fuzz input {} panics", p.display());
        }
    }
}

#[test]
fn pack_inputs() {
    replay("pack", harness::pack);
}

#[test]
fn pack_header_inputs() {
    replay("pack_header", harness::pack_header);
}

#[test]
fn blob_inputs() {
    replay("blob", harness::blob);
}

#[test]
fn unpacked_inputs() {
    replay("unpacked", harness::unpacked);
}

#[test]
fn index_inputs() {
    replay("index", harness::index);
}

#[test]
fn snapshot_inputs() {
    replay("snapshot", harness::snapshot);
}

#[test]
fn tree_inputs() {
    replay("tree", harness::tree);
}

#[test]
fn key_inputs() {
    replay("key", harness::key);
}

/// Writes `data` as seed `name` of `target`.
fn seed(target: &str, name: &str, data: &[u8]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).expect("mkdir corpus");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

/// Decrypts a stored unpacked file (index, snapshot).
fn open_file(key: &Key, path: &Path) -> Vec<u8> {
    key.decrypt(&std::fs::read(path).expect("read"))
        .expect("decrypt")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Regenerates the seed corpora from a small repository written by our own backup:
/// `cargo test -p holdfast-repo --test fuzz_corpus -- --ignored write_seed_corpus`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the committed seed corpora"]
async fn write_seed_corpus() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir/sub")).expect("mkdir");
    std::fs::write(src.join("small.txt"), b"hello holdfast\n").expect("w");
    std::fs::write(src.join("empty"), b"").expect("w");
    std::fs::write(src.join("dir/text.txt"), common::text_bytes(1, 6000)).expect("w");
    std::fs::write(
        src.join("dir/sub/random.bin"),
        common::random_bytes(2, 3000),
    )
    .expect("w");
    std::fs::write(src.join("dir/odd \"name\"\t\u{1}é.txt"), b"odd").expect("w");
    std::os::unix::fs::symlink("../small.txt", src.join("dir/link")).expect("symlink");
    let repo_dir = tmp.path().join("repo");
    let repo = common::init_local(&repo_dir).await;
    backup(&repo, &src, BackupOptions::default())
        .await
        .expect("backup");
    let key = repo.key();
    let fuzz_key = harness::fuzz_key();

    for (i, p) in files(&repo_dir.join("index")).iter().enumerate() {
        let plain = open_file(key, p);
        seed("unpacked", &format!("index-{i}"), &plain);
        seed("index", &format!("zstd-{i}"), &plain);
        let json = format::decode_unpacked(plain, "index").expect("decode");
        seed("index", &format!("json-{i}"), &json);
    }
    for (i, p) in files(&repo_dir.join("snapshots")).iter().enumerate() {
        let plain = open_file(key, p);
        seed("unpacked", &format!("snapshot-{i}"), &plain);
        let json = format::decode_unpacked(plain, "snapshot").expect("decode");
        seed("snapshot", &format!("json-{i}"), &json);
    }
    for (i, p) in files(&repo_dir.join("data")).iter().enumerate() {
        let pack = std::fs::read(p).expect("read pack");
        let blobs = format::parse_pack(&pack, key, "pack").expect("parse pack");
        let hlen = u32::from_le_bytes(pack[pack.len() - 4..].try_into().expect("4 bytes"));
        let hstart = pack.len() - 4 - hlen as usize;
        let header = key.decrypt(&pack[hstart..pack.len() - 4]).expect("header");
        let mut framed = (hstart as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&header);
        seed("pack_header", &format!("{i}"), &framed);
        seed(
            "pack",
            &format!("header-{i}"),
            &[&[1u8][..], &framed].concat(),
        );
        // The whole pack under the fuzz key: every blob and the header re-encrypted.
        let mut again = vec![0u8];
        for (j, b) in blobs.iter().enumerate() {
            let raw = &pack[b.offset as usize..(b.offset + b.length) as usize];
            let plain = key.decrypt(raw).expect("blob");
            if let Some(n) = b.uncompressed_length {
                let mut framed = n.to_le_bytes().to_vec();
                framed.extend_from_slice(&plain);
                if framed.len() <= 16 << 10 {
                    seed("blob", &format!("{i}-{j}"), &framed);
                }
            }
            let data = match b.uncompressed_length {
                Some(n) => format::decompress(&plain, Some(n as usize), "blob").expect("unzstd"),
                None => plain.clone(),
            };
            if b.blob_type == holdfast_repo::BlobType::Tree {
                seed("tree", &format!("{i}-{j}"), &data);
            }
            again.extend_from_slice(&fuzz_key.encrypt(&plain).expect("encrypt"));
        }
        let h = fuzz_key.encrypt(&header).expect("encrypt");
        again.extend_from_slice(&h);
        again.extend_from_slice(&(h.len() as u32).to_le_bytes());
        if again.len() <= 64 << 10 {
            seed("pack", &format!("whole-{i}"), &again);
        }
    }
    let master = Key::random().expect("key");
    let cheap = KdfParams { n: 16, r: 8, p: 1 };
    let kf = KeyFile::create(&master, harness::PASSWORD, cheap, "fuzz", "seed").expect("key");
    seed("key", "cheap", &serde_json::to_vec(&kf).expect("json"));
    for (i, p) in files(&repo_dir.join("keys")).iter().enumerate() {
        seed(
            "key",
            &format!("repo-{i}"),
            &std::fs::read(p).expect("read key"),
        );
    }
}
