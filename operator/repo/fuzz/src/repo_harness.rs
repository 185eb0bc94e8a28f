//! Bodies of the repository reader's fuzz targets. Each hands arbitrary bytes to a parsing
//! entry point of holdfast-repo, and then uses the result the way the reader does; it must
//! return (errors are fine) without a panic, an arithmetic overflow or an unbounded
//! allocation. Included by path from `operator/repo/tests/fuzz_corpus.rs`.

use holdfast_repo::crypto::Key;
use holdfast_repo::format::{self, IndexJson, KdfParams, KeyFile, PackedBlob};
use holdfast_repo::{Index, Snapshot, Tree};

/// The key the `pack` corpus is encrypted with (a real repository's packs re-encrypted).
pub fn fuzz_key() -> Key {
    let mut b = [0u8; 64];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8) ^ 0x5a;
    }
    Key::from_slice64(&b)
}

/// The password of the key files in the `key` corpus.
pub const PASSWORD: &str = "fuzz";

/// Largest blob area the `pack` target builds in front of a plaintext header.
const MAX_BUILT_PACK: usize = 1 << 20;

/// Largest scrypt work (N·r·p) the `key` target runs; dearer valid parameters are only
/// checked, not derived, to keep the executions fast.
const MAX_FUZZ_KDF_WORK: u64 = 1 << 12;

/// A pack file. First byte even: the rest is a whole pack encrypted with [`fuzz_key`];
/// its header is parsed and every blob it lists is decrypted and decompressed as `check`
/// and `restore` do. First byte odd: 4 bytes (LE) of blob-area length, then a plaintext
/// header, which is encrypted here so that the parser sees headers with a valid MAC.
pub fn pack(data: &[u8]) {
    let key = fuzz_key();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pack = if mode.is_multiple_of(2) {
        rest.to_vec()
    } else {
        let Some((len, header)) = rest.split_first_chunk::<4>() else {
            return;
        };
        let hstart = u32::from_le_bytes(*len) as usize;
        if hstart > MAX_BUILT_PACK {
            return;
        }
        let Ok(enc) = key.encrypt(header) else {
            return;
        };
        let mut p = vec![0u8; hstart];
        p.extend_from_slice(&enc);
        p.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        p
    };
    let Ok(blobs) = format::parse_pack(&pack, &key, "pack") else {
        return;
    };
    for b in &blobs {
        decode_blob(&key, &pack, b);
    }
}

/// One blob of a parsed pack, sliced like `check` does (the parser promises the blobs
/// fill the pack in front of its header).
fn decode_blob(key: &Key, pack: &[u8], b: &PackedBlob) {
    let raw = &pack[b.offset as usize..(b.offset + b.length) as usize];
    let Ok(plain) = key.decrypt(raw) else {
        return;
    };
    if let Some(n) = b.uncompressed_length {
        let _ = format::decompress(&plain, Some(n as usize), "blob");
    }
    let _ = b.data_length();
}

/// A decrypted pack header: 4 bytes (LE) of the pack's blob-area length, then the header.
pub fn pack_header(data: &[u8]) {
    let Some((len, header)) = data.split_first_chunk::<4>() else {
        return;
    };
    let hstart = u64::from(u32::from_le_bytes(*len));
    if let Ok(blobs) = format::parse_header_entries(header, hstart, "pack header") {
        let mut end = 0u32;
        for b in &blobs {
            assert_eq!(b.offset, end, "blobs are contiguous");
            end = b.offset + b.length;
        }
        assert_eq!(u64::from(end), hstart, "blobs fill the blob area");
    }
}

/// A decrypted compressed blob: 4 bytes (LE) of claimed uncompressed length, then the
/// zstd data.
pub fn blob(data: &[u8]) {
    let Some((len, z)) = data.split_first_chunk::<4>() else {
        return;
    };
    let n = u32::from_le_bytes(*len) as usize;
    if let Ok(out) = format::decompress(z, Some(n), "blob") {
        assert_eq!(out.len(), n);
    }
}

/// A decrypted unpacked file (plain JSON, or `0x02 || zstd(json)`).
pub fn unpacked(data: &[u8]) {
    if let Ok(out) = format::decode_unpacked(data.to_vec(), "file") {
        assert!(out.len() as u64 <= format::MAX_UNPACKED_LEN);
    }
}

/// A decrypted index file, loaded into an [`Index`] and grouped by pack, with the blob
/// ends that restore computes.
pub fn index(data: &[u8]) {
    let Ok(json) = format::decode_unpacked(data.to_vec(), "index") else {
        return;
    };
    let Ok(ij) = serde_json::from_slice::<IndexJson>(&json) else {
        return;
    };
    let mut idx = Index::default();
    for p in &ij.packs {
        let blobs: Vec<PackedBlob> = p.blobs.iter().map(|b| b.packed()).collect();
        idx.add_pack(p.id, &blobs);
    }
    for blobs in idx.by_pack().values() {
        for b in blobs {
            let _ = b.offset + b.length;
            let _ = b.data_length();
        }
    }
    for id in idx.blobs.keys() {
        assert!(idx.get(id).is_some());
    }
    let again = serde_json::to_vec(&ij).expect("an index serializes");
    serde_json::from_slice::<IndexJson>(&again).expect("a written index reads back");
}

/// A decrypted snapshot file.
pub fn snapshot(data: &[u8]) {
    let Ok(json) = format::decode_unpacked(data.to_vec(), "snapshot") else {
        return;
    };
    let Ok(s) = serde_json::from_slice::<Snapshot>(&json) else {
        return;
    };
    let _ = format::parse_time(&s.time);
    let again = serde_json::to_vec(&s).expect("a snapshot serializes");
    let back: Snapshot = serde_json::from_slice(&again).expect("a written snapshot reads back");
    assert_eq!(back, s);
}

/// A tree blob's plaintext; what is read must be written back identically.
pub fn tree(data: &[u8]) {
    let Ok(t) = serde_json::from_slice::<Tree>(data) else {
        return;
    };
    let again = t.to_blob().expect("a tree serializes");
    let back: Tree = serde_json::from_slice(&again).expect("a written tree reads back");
    assert_eq!(back, t);
}

/// A key file (plain JSON), opened with [`PASSWORD`] when its KDF is cheap enough.
pub fn key(data: &[u8]) {
    let Ok(kf) = serde_json::from_slice::<KeyFile>(data) else {
        return;
    };
    let params = KdfParams {
        n: kf.n,
        r: kf.r,
        p: kf.p,
    };
    if params.check().is_err() {
        // open() must refuse them too, before deriving anything.
        assert!(kf.open(PASSWORD).is_err());
        return;
    }
    if params.n * u64::from(params.r) * u64::from(params.p) <= MAX_FUZZ_KDF_WORK {
        let _ = kf.open(PASSWORD);
    }
}
