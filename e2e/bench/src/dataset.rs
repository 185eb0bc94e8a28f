//! Seeded, deterministic datasets.
//!
//! * (a) `vol/`: a mixed tree: many small files (log-uniform 512 B – 64 KiB, 100 per
//!   directory) and eight large files; half of the bytes are text-like (compressible),
//!   half random (incompressible).
//! * (b) `b/big.bin`: one large random file.
//! * (c) `c/sparse.img`: a sparse file: 1 MiB of random data every 16 MiB, holes between.
//! * (d): `vol/` changed in place: ~1% of the small files rewritten, four 64 KiB blocks of
//!   one large file rewritten, 0.1% of the small files renamed, 0.5% new files added.
//!   [`apply_changes`] turns (a) into (d) and [`revert_changes`] turns it back, byte for
//!   byte, so every round starts from the same (a).
//!
//! Every byte is a function of (seed, file id, version, 64 KiB block index), so any
//! block can be regenerated.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Content is generated in blocks of this size.
pub const BLOCK: u64 = 64 * 1024;
const MIB: u64 = 1024 * 1024;

/// xoshiro256** seeded through SplitMix64: fast, deterministic, good enough to be
/// incompressible.
pub struct Rng {
    s: [u64; 4],
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes several values into one seed.
pub fn mix(parts: &[u64]) -> u64 {
    let mut st = 0x1234_5678_9ABC_DEF0u64;
    let mut out = 0;
    for p in parts {
        st ^= *p;
        out = splitmix(&mut st);
        st = out;
    }
    out
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut st = seed;
        Rng {
            s: [
                splitmix(&mut st),
                splitmix(&mut st),
                splitmix(&mut st),
                splitmix(&mut st),
            ],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&v[..rest.len()]);
        }
    }
}

/// What a file's bytes look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Words from a 2,048-word vocabulary, spaces and newlines (zstd: roughly 3:1).
    Text,
    /// Random bytes.
    Random,
}

/// The word list of [`Kind::Text`] (fixed, independent of the seed).
struct Vocabulary {
    words: Vec<Vec<u8>>,
}

impl Vocabulary {
    fn new() -> Vocabulary {
        let mut rng = Rng::new(0x766f_6361_6275_6c61);
        let words = (0..2048)
            .map(|_| {
                let len = 2 + rng.below(9) as usize;
                (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
            })
            .collect();
        Vocabulary { words }
    }
}

/// Generates file content block by block.
pub struct Generator {
    seed: u64,
    vocab: Vocabulary,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            seed,
            vocab: Vocabulary::new(),
        }
    }

    /// Fills `buf` (at most [`BLOCK`] bytes) with block `block` of file `id`, version
    /// `version`.
    pub fn block(&self, id: u64, version: u64, block: u64, kind: Kind, buf: &mut [u8]) {
        let mut rng = Rng::new(mix(&[self.seed, id, version, block]));
        match kind {
            Kind::Random => rng.fill(buf),
            Kind::Text => {
                let mut pos = 0;
                let mut on_line = 0;
                while pos < buf.len() {
                    let w = &self.vocab.words[rng.below(self.vocab.words.len() as u64) as usize];
                    let n = w.len().min(buf.len() - pos);
                    buf[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                    if pos < buf.len() {
                        on_line += 1;
                        buf[pos] = if on_line >= 12 {
                            on_line = 0;
                            b'\n'
                        } else {
                            b' '
                        };
                        pos += 1;
                    }
                }
            }
        }
    }

    /// Writes the whole file (creating or truncating it).
    pub fn write_file(&self, path: &Path, f: &FileSpec, version: u64) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut out = File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut off = 0;
        let mut block = 0;
        // Write in 4 MiB batches to keep the syscall count low for large files.
        let mut batch = Vec::with_capacity((4 * MIB) as usize);
        while off < f.size {
            let n = (f.size - off).min(BLOCK) as usize;
            self.block(f.id, version, block, f.kind, &mut buf[..n]);
            batch.extend_from_slice(&buf[..n]);
            if batch.len() >= (4 * MIB) as usize {
                out.write_all(&batch)?;
                batch.clear();
            }
            off += n as u64;
            block += 1;
        }
        out.write_all(&batch)?;
        Ok(())
    }

    /// Overwrites the given blocks of an existing file with `version`'s content.
    pub fn write_blocks(
        &self,
        path: &Path,
        f: &FileSpec,
        version: u64,
        blocks: &[u64],
    ) -> anyhow::Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let mut buf = vec![0u8; BLOCK as usize];
        for &b in blocks {
            let off = b * BLOCK;
            if off >= f.size {
                continue;
            }
            let n = (f.size - off).min(BLOCK) as usize;
            self.block(f.id, version, b, f.kind, &mut buf[..n]);
            out.seek(SeekFrom::Start(off))?;
            out.write_all(&buf[..n])?;
        }
        Ok(())
    }
}

/// One generated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Path relative to the dataset root.
    pub rel: PathBuf,
    pub id: u64,
    pub kind: Kind,
    pub size: u64,
}

/// Sizes of the datasets for one scale factor (1.0 = about 2 GiB in all).
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub factor: f64,
}

impl Scale {
    pub fn small_files(&self) -> u64 {
        ((20_000.0 * self.factor).round() as u64).max(200)
    }
    pub fn large_total(&self) -> u64 {
        ((768.0 * self.factor * MIB as f64) as u64).max(8 * MIB)
    }
    pub fn big_file(&self) -> u64 {
        ((768.0 * self.factor * MIB as f64) as u64).max(8 * MIB)
    }
    /// Files of dataset (e): 1,000,000 at scale 1.
    pub fn many_files(&self) -> u64 {
        ((1_000_000.0 * self.factor).round() as u64).max(1_000)
    }
    /// Apparent size of the sparse file (a multiple of 16 MiB).
    pub fn sparse_size(&self) -> u64 {
        ((1024.0 * self.factor / 16.0).round() as u64).max(2) * 16 * MIB
    }
}

/// Weights of the eight large files; pairs have equal sizes, one text and one random.
const LARGE_WEIGHTS: [f64; 8] = [0.08, 0.08, 0.11, 0.11, 0.14, 0.14, 0.17, 0.17];
/// Index (in [`LARGE_WEIGHTS`]) of the large file that the change set modifies.
const CHANGED_LARGE: usize = 6;
const ADDED_ID_BASE: u64 = 1_000_000;
const LARGE_ID_BASE: u64 = 900_000;

/// The files of dataset (a), relative to `vol/`.
pub fn files_a(seed: u64, scale: Scale) -> Vec<FileSpec> {
    let mut rng = Rng::new(mix(&[seed, 0xa]));
    let n = scale.small_files();
    let (lo, hi) = ((512f64).ln(), (65_536f64).ln());
    let mut out = Vec::with_capacity(n as usize + 8);
    for i in 0..n {
        let size = (lo + (hi - lo) * rng.unit()).exp() as u64;
        let kind = if i % 2 == 0 { Kind::Text } else { Kind::Random };
        out.push(FileSpec {
            rel: small_path(i, kind, ""),
            id: i,
            kind,
            size,
        });
    }
    let total = scale.large_total();
    for (j, w) in LARGE_WEIGHTS.iter().enumerate() {
        let kind = if j % 2 == 0 { Kind::Text } else { Kind::Random };
        let ext = if kind == Kind::Text { "txt" } else { "bin" };
        out.push(FileSpec {
            rel: PathBuf::from(format!("large/large-{j}.{ext}")),
            id: LARGE_ID_BASE + j as u64,
            kind,
            size: (total as f64 * w) as u64,
        });
    }
    out
}

fn small_path(i: u64, kind: Kind, suffix: &str) -> PathBuf {
    let ext = if kind == Kind::Text { "txt" } else { "bin" };
    PathBuf::from(format!(
        "small/{:02}/{:04}/f{:06}{suffix}.{ext}",
        i / 2000,
        i / 100,
        i
    ))
}

/// The change set that turns (a) into (d).
#[derive(Clone, Debug)]
pub struct Changes {
    /// Small files rewritten whole with version 1.
    pub modified: Vec<FileSpec>,
    /// The large file and the blocks of it rewritten with version 1.
    pub modified_large: (FileSpec, Vec<u64>),
    /// (old, new) relative paths.
    pub renamed: Vec<(PathBuf, PathBuf)>,
    /// New files.
    pub added: Vec<FileSpec>,
}

impl Changes {
    pub fn new(seed: u64, files: &[FileSpec]) -> Changes {
        let small: Vec<&FileSpec> = files.iter().filter(|f| f.id < LARGE_ID_BASE).collect();
        let n = small.len() as u64;
        let mut rng = Rng::new(mix(&[seed, 0xd]));
        let want_mod = n.div_ceil(100);
        let want_ren = (n / 1000).max(3);
        let mut picked = std::collections::BTreeSet::new();
        let mut pick = |rng: &mut Rng| loop {
            let i = rng.below(n);
            if picked.insert(i) {
                return i as usize;
            }
        };
        let modified = (0..want_mod)
            .map(|_| small[pick(&mut rng)].clone())
            .collect();
        let renamed = (0..want_ren)
            .map(|_| {
                let f = small[pick(&mut rng)];
                (f.rel.clone(), small_path(f.id, f.kind, "-renamed"))
            })
            .collect();
        let large = files
            .iter()
            .find(|f| f.id == LARGE_ID_BASE + CHANGED_LARGE as u64)
            .cloned()
            .expect("dataset (a) has its large files");
        let nblocks = large.size.div_ceil(BLOCK).max(1);
        let blocks = (0..4u64).map(|k| (nblocks * (2 * k + 1)) / 8).collect();
        let want_add = (n / 200).max(5);
        let (lo, hi) = ((512f64).ln(), (65_536f64).ln());
        let added = (0..want_add)
            .map(|k| {
                let kind = if k % 2 == 0 { Kind::Text } else { Kind::Random };
                let ext = if kind == Kind::Text { "txt" } else { "bin" };
                // half into a new directory, half next to existing files
                let rel = if k % 2 == 0 {
                    PathBuf::from(format!("small/new/added-{k:05}.{ext}"))
                } else {
                    let near = &small[rng.below(n) as usize].rel;
                    near.parent()
                        .unwrap_or(Path::new("small"))
                        .join(format!("added-{k:05}.{ext}"))
                };
                FileSpec {
                    rel,
                    id: ADDED_ID_BASE + k,
                    kind,
                    size: (lo + (hi - lo) * rng.unit()).exp() as u64,
                }
            })
            .collect();
        Changes {
            modified,
            modified_large: (large, blocks),
            renamed,
            added,
        }
    }
}

/// Writes dataset (a) into `vol`, (b) into `b/big.bin` and (c) into `c/sparse.img`
/// under `root`; returns the file list of (a).
pub fn generate(root: &Path, seed: u64, scale: Scale) -> anyhow::Result<Vec<FileSpec>> {
    let generator = Generator::new(seed);
    let files = files_a(seed, scale);
    let vol = root.join("vol");
    for f in &files {
        generator.write_file(&vol.join(&f.rel), f, 0)?;
    }
    let big = big_spec(scale);
    generator.write_file(&root.join("b").join(&big.rel), &big, 0)?;
    write_sparse(&generator, &root.join("c/sparse.img"), scale)?;
    Ok(files)
}

/// Dataset (e) under `dir`: `n` files of 0–512 bytes of seeded random data, 1,000 per
/// directory and 100 directories per top directory (the many-small-files workload Velero
/// users report as slow). Written by two threads.
pub fn generate_many(dir: &Path, seed: u64, n: u64) -> anyhow::Result<()> {
    let dirs = n.div_ceil(1_000);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut buf = [0u8; 512];
                    for d in (t..dirs).step_by(2) {
                        let first = d * 1_000;
                        let parent = dir.join(many_path(first));
                        let parent = parent.parent().expect("a file has a directory");
                        fs::create_dir_all(parent)?;
                        for i in first..(first + 1_000).min(n) {
                            let mut rng = Rng::new(mix(&[seed, 0xe, i]));
                            let len = rng.below(513) as usize;
                            rng.fill(&mut buf[..len]);
                            fs::write(dir.join(many_path(i)), &buf[..len])?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("writer thread"))
    })
}

fn many_path(i: u64) -> PathBuf {
    PathBuf::from(format!("{:03}/{:04}/f{i:07}", i / 100_000, i / 1_000))
}

/// The file of dataset (b), relative to `b/`.
pub fn big_spec(scale: Scale) -> FileSpec {
    FileSpec {
        rel: PathBuf::from("big.bin"),
        id: 800_000,
        kind: Kind::Random,
        size: scale.big_file(),
    }
}

/// Dataset (c): a sparse file with 1 MiB of random data at the start of every 16 MiB.
pub fn write_sparse(generator: &Generator, path: &Path, scale: Scale) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let size = scale.sparse_size();
    let mut out = File::create(path)?;
    out.set_len(size)?;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut region = 0;
    let mut off = 0;
    while off < size {
        out.seek(SeekFrom::Start(off))?;
        for b in 0..(MIB / BLOCK) {
            generator.block(700_000, 0, region * 16 + b, Kind::Random, &mut buf);
            out.write_all(&buf)?;
        }
        region += 1;
        off += 16 * MIB;
    }
    Ok(())
}

/// Turns `vol` from state (a) into state (d).
pub fn apply_changes(vol: &Path, seed: u64, ch: &Changes) -> anyhow::Result<()> {
    let generator = Generator::new(seed);
    for f in &ch.modified {
        generator.write_file(&vol.join(&f.rel), f, 1)?;
    }
    let (large, blocks) = &ch.modified_large;
    generator.write_blocks(&vol.join(&large.rel), large, 1, blocks)?;
    for (from, to) in &ch.renamed {
        fs::rename(vol.join(from), vol.join(to))
            .with_context(|| format!("rename {}", from.display()))?;
    }
    for f in &ch.added {
        generator.write_file(&vol.join(&f.rel), f, 0)?;
    }
    Ok(())
}

/// Turns `vol` from state (d) back into state (a) (same bytes; new mtimes).
pub fn revert_changes(vol: &Path, seed: u64, ch: &Changes) -> anyhow::Result<()> {
    let generator = Generator::new(seed);
    for f in &ch.added {
        fs::remove_file(vol.join(&f.rel))?;
    }
    let new_dir = vol.join("small/new");
    if new_dir.exists() {
        fs::remove_dir(&new_dir)?;
    }
    for (from, to) in &ch.renamed {
        fs::rename(vol.join(to), vol.join(from))?;
    }
    let (large, blocks) = &ch.modified_large;
    generator.write_blocks(&vol.join(&large.rel), large, 0, blocks)?;
    for f in &ch.modified {
        generator.write_file(&vol.join(&f.rel), f, 0)?;
    }
    Ok(())
}

/// Regular files under `dir` as (relative path, size), sorted.
pub fn manifest(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("read_dir {}", dir.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                walk(base, &p, out)?;
            } else if ft.is_file() {
                let rel = p.strip_prefix(base)?.to_path_buf();
                out.push((rel, e.metadata()?.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Sum of the sizes of the regular files under `dir` and their number.
pub fn tree_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let m = manifest(dir)?;
    Ok((m.iter().map(|(_, s)| s).sum(), m.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("holdfast-bench-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        manifest(dir)
            .expect("manifest")
            .into_iter()
            .map(|(p, _)| {
                let data = fs::read(dir.join(&p)).expect("read");
                (p, data)
            })
            .collect()
    }

    #[test]
    fn generation_is_deterministic_and_changes_revert_exactly() {
        let scale = Scale { factor: 0.004 };
        let (d1, d2) = (tmp("det1"), tmp("det2"));
        let files = generate(&d1, 7, scale).expect("generate");
        generate(&d2, 7, scale).expect("generate");
        let a = contents(&d1.join("vol"));
        assert_eq!(a, contents(&d2.join("vol")));
        assert_eq!(a.len(), files.len());
        assert_eq!(
            fs::read(d1.join("b/big.bin")).expect("b"),
            fs::read(d2.join("b/big.bin")).expect("b")
        );

        let ch = Changes::new(7, &files);
        assert_eq!(ch.modified.len(), 2);
        assert_eq!(ch.renamed.len(), 3);
        assert_eq!(ch.added.len(), 5);
        apply_changes(&d1.join("vol"), 7, &ch).expect("apply");
        let d = contents(&d1.join("vol"));
        assert_eq!(d.len(), a.len() + ch.added.len());
        assert_ne!(a, d);
        revert_changes(&d1.join("vol"), 7, &ch).expect("revert");
        assert_eq!(a, contents(&d1.join("vol")));

        for d in [d1, d2] {
            fs::remove_dir_all(d).expect("cleanup");
        }
    }

    #[test]
    fn half_of_the_bytes_are_text_and_text_compresses() {
        let files = files_a(1, Scale { factor: 1.0 });
        let text: u64 = files
            .iter()
            .filter(|f| f.kind == Kind::Text)
            .map(|f| f.size)
            .sum();
        let all: u64 = files.iter().map(|f| f.size).sum();
        let share = text as f64 / all as f64;
        assert!((0.45..0.55).contains(&share), "text share {share}");
        assert_eq!(files.len(), 20_008);

        // text-like data: few distinct byte values, many repeats
        let generator = Generator::new(1);
        let mut buf = vec![0u8; BLOCK as usize];
        generator.block(1, 0, 0, Kind::Text, &mut buf);
        assert!(
            buf.iter()
                .all(|b| b.is_ascii_lowercase() || *b == b' ' || *b == b'\n')
        );
    }

    #[test]
    fn many_files_are_deterministic_and_small() {
        let (x, y) = (tmp("many-x"), tmp("many-y"));
        generate_many(&x, 7, 2_500).expect("generate");
        generate_many(&y, 7, 2_500).expect("generate");
        let m = manifest(&x).expect("manifest");
        assert_eq!(m.len(), 2_500);
        assert!(m.iter().all(|(_, size)| *size <= 512));
        assert_eq!(contents(&x), contents(&y));
        let dirs: std::collections::BTreeSet<_> = m.iter().map(|(p, _)| p.parent()).collect();
        assert_eq!(dirs.len(), 3, "1,000 files per directory");
        let _ = fs::remove_dir_all(&x);
        let _ = fs::remove_dir_all(&y);
    }

    #[test]
    fn sparse_file_has_holes() {
        use std::os::unix::fs::MetadataExt;
        let d = tmp("sparse");
        let scale = Scale { factor: 0.05 };
        write_sparse(&Generator::new(3), &d.join("s.img"), scale).expect("sparse");
        let md = fs::metadata(d.join("s.img")).expect("md");
        assert_eq!(md.len(), scale.sparse_size());
        // allocated 512-byte blocks well below the apparent size (holes)
        assert!(md.blocks() * 512 < md.len() / 4, "blocks {}", md.blocks());
        fs::remove_dir_all(d).expect("cleanup");
    }
}
