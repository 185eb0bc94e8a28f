//! The restic repository format v2 on-disk structures (pure code, no IO): config,
//! key files, pack headers, index files, unpacked-file encoding, and times.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::Id;
use crate::crypto::{self, CryptoError, Key, KeyJson};

/// Repository format version we write.
pub const REPO_VERSION: u32 = 2;

/// Kinds of files in a repository, with their directory names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Config,
    Key,
    Snapshot,
    Index,
    Lock,
    Pack,
}

impl FileType {
    /// The directory of this file type (`""` for the config file).
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Lock => "locks",
            FileType::Pack => "data",
        }
    }

    /// The store key of the file with this id.
    pub fn key(self, id: &Id) -> String {
        match self {
            FileType::Config => "config".to_string(),
            FileType::Pack => {
                let h = id.to_hex();
                format!("data/{}/{h}", &h[..2])
            }
            _ => format!("{}/{}", self.dir(), id.to_hex()),
        }
    }
}

/// Blob types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    Data,
    Tree,
}

/// Errors decoding repository structures.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("decrypting {what}: {source}")]
    Crypto {
        what: String,
        #[source]
        source: CryptoError,
    },
    #[error("parsing {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("decompressing {what}: {source}")]
    Zstd {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// The repository config (stored encrypted, uncompressed, at `config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    pub id: String,
    pub chunker_polynomial: String,
}

impl Config {
    /// A new v2 config with a random id and a random irreducible polynomial (used by
    /// restic's own chunker if restic ever writes to this repository).
    pub fn new() -> Result<Config, getrandom::Error> {
        Ok(Config {
            version: REPO_VERSION,
            id: Id::random()?.to_hex(),
            chunker_polynomial: format!("{:x}", random_polynomial()?),
        })
    }
}

/// Encodes a JSON document as an "unpacked" file plaintext: in v2, `0x02 || zstd(json)`.
pub fn encode_unpacked(json: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = vec![2u8];
    out.extend_from_slice(&zstd::bulk::compress(json, 3)?);
    Ok(out)
}

/// Largest decoded unpacked file (index, snapshot, lock, config JSON) we accept. Our index
/// files hold a few MiB of JSON, restic's at most 50,000 blobs (about 10 MiB); the limit
/// stops a small corrupt or hostile zstd frame from expanding until memory runs out.
pub const MAX_UNPACKED_LEN: u64 = 1 << 30;

/// The most bytes a zstd frame can expand to per input byte: every block needs at least
/// 4 bytes (3 of header and 1 of an RLE byte) and yields at most 128 KiB. A claimed
/// uncompressed length above `input length × this` cannot be true.
const MAX_ZSTD_RATIO: usize = 128 * 1024 / 4;

/// Decodes an unpacked plaintext: plain JSON (`{`/`[`) or `0x02 || zstd(json)`.
pub fn decode_unpacked(plain: Vec<u8>, what: &str) -> Result<Vec<u8>, FormatError> {
    match plain.first() {
        Some(b'{') | Some(b'[') => Ok(plain),
        Some(2) => decompress(&plain[1..], None, what),
        Some(v) => Err(FormatError::Invalid {
            what: what.to_string(),
            reason: format!("unknown encoding version {v}"),
        }),
        None => Err(FormatError::Invalid {
            what: what.to_string(),
            reason: "empty".into(),
        }),
    }
}

/// zstd-decompresses a frame; `size` is the expected size when known (a blob's
/// `uncompressed_length`), else the output is limited to [`MAX_UNPACKED_LEN`]. Nothing is
/// allocated for a claimed size the input cannot expand to.
pub fn decompress(data: &[u8], size: Option<usize>, what: &str) -> Result<Vec<u8>, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        what: what.to_string(),
        reason,
    };
    let zstd_err = |source| FormatError::Zstd {
        what: what.to_string(),
        source,
    };
    let Some(n) = size else {
        use std::io::Read;
        let mut out = Vec::new();
        zstd::stream::Decoder::new(data)
            .map_err(zstd_err)?
            .take(MAX_UNPACKED_LEN + 1)
            .read_to_end(&mut out)
            .map_err(zstd_err)?;
        if out.len() as u64 > MAX_UNPACKED_LEN {
            return Err(invalid(format!(
                "decompresses to more than {MAX_UNPACKED_LEN} bytes"
            )));
        }
        return Ok(out);
    };
    if n > data.len().saturating_mul(MAX_ZSTD_RATIO) {
        return Err(invalid(format!(
            "{} compressed bytes cannot decompress to the {n} bytes claimed",
            data.len()
        )));
    }
    // A single frame that declares its size tells a mismatch before anything is
    // allocated (with several frames only the first one's size would be declared).
    let one_frame =
        zstd::zstd_safe::find_frame_compressed_size(data).is_ok_and(|c| c == data.len());
    if one_frame
        && let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(data)
        && declared != n as u64
    {
        return Err(invalid(format!(
            "zstd frame holds {declared} bytes, expected {n}"
        )));
    }
    let out = zstd::bulk::decompress(data, n).map_err(zstd_err)?;
    if out.len() != n {
        return Err(invalid(format!(
            "decompressed to {} bytes, expected {n}",
            out.len()
        )));
    }
    Ok(out)
}

/// A key file (`keys/<id>`): plain JSON holding the master key encrypted with a key
/// derived from the password by scrypt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub created: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub hostname: String,
    pub kdf: String,
    #[serde(rename = "N")]
    pub n: u64,
    pub r: u32,
    pub p: u32,
    pub salt: String,
    pub data: String,
}

/// scrypt cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct KdfParams {
    pub n: u64,
    pub r: u32,
    pub p: u32,
}

impl Default for KdfParams {
    /// restic's usual calibration result on current machines (~0.5 s, 256 MiB would be
    /// N=2^18); we use N=2^15, r=8, p=1 like restic's minimum.
    fn default() -> Self {
        KdfParams {
            n: 1 << 15,
            r: 8,
            p: 1,
        }
    }
}

/// Most memory scrypt may use for a key file (128·N·r bytes). restic calibrates to at
/// most 60 MiB; a key file asking for more is corrupt or an attempt to exhaust memory.
pub const MAX_KDF_MEMORY: u64 = 1 << 30;
/// Most scrypt passes (p) a key file may ask for (restic uses 1 to a few).
pub const MAX_KDF_P: u32 = 64;

impl KdfParams {
    /// Checks the parameters are valid and within [`MAX_KDF_MEMORY`] and [`MAX_KDF_P`].
    pub fn check(&self) -> Result<(), FormatError> {
        let invalid = |reason: String| FormatError::Invalid {
            what: "key file".into(),
            reason,
        };
        if !self.n.is_power_of_two() || self.n < 2 {
            return Err(invalid(format!(
                "scrypt N={} is not a power of two",
                self.n
            )));
        }
        if self.r == 0 || self.p == 0 {
            return Err(invalid(format!(
                "scrypt r={} p={} must be positive",
                self.r, self.p
            )));
        }
        let memory = self
            .n
            .checked_mul(128 * u64::from(self.r))
            .filter(|m| *m <= MAX_KDF_MEMORY);
        if memory.is_none() {
            return Err(invalid(format!(
                "scrypt N={} r={} needs more than {MAX_KDF_MEMORY} bytes of memory",
                self.n, self.r
            )));
        }
        if self.p > MAX_KDF_P {
            return Err(invalid(format!(
                "scrypt p={} is more than {MAX_KDF_P}",
                self.p
            )));
        }
        Ok(())
    }
}

fn derive(password: &str, salt: &[u8], p: KdfParams) -> Result<Key, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        what: "key file".into(),
        reason,
    };
    p.check()?;
    let log_n = u8::try_from(p.n.trailing_zeros()).map_err(|e| invalid(e.to_string()))?;
    let params = scrypt::Params::new(log_n, p.r, p.p, 64)
        .map_err(|e| invalid(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut out)
        .map_err(|e| invalid(format!("scrypt: {e}")))?;
    Ok(Key::from_slice64(&out))
}

impl KeyFile {
    /// Creates a key file for `master` protected by `password`.
    pub fn create(
        master: &Key,
        password: &str,
        params: KdfParams,
        username: &str,
        hostname: &str,
    ) -> Result<KeyFile, FormatError> {
        let mut salt = [0u8; 64];
        getrandom::fill(&mut salt).map_err(|e| FormatError::Invalid {
            what: "key file".into(),
            reason: format!("no randomness: {e}"),
        })?;
        let user_key = derive(password, &salt, params)?;
        let json = serde_json::to_vec(&master.to_json()).map_err(|source| FormatError::Json {
            what: "master key".into(),
            source,
        })?;
        let data = user_key
            .encrypt(&json)
            .map_err(|source| FormatError::Crypto {
                what: "master key".into(),
                source,
            })?;
        Ok(KeyFile {
            created: format_time(&Utc::now().fixed_offset()),
            username: username.into(),
            hostname: hostname.into(),
            kdf: "scrypt".into(),
            n: params.n,
            r: params.r,
            p: params.p,
            salt: B64.encode(salt),
            data: B64.encode(data),
        })
    }

    /// Opens the master key with `password`; `Ok(None)` when the password is wrong.
    pub fn open(&self, password: &str) -> Result<Option<Key>, FormatError> {
        let invalid = |reason: &str| FormatError::Invalid {
            what: "key file".into(),
            reason: reason.into(),
        };
        if self.kdf != "scrypt" {
            return Err(invalid("unsupported KDF"));
        }
        let salt = B64
            .decode(&self.salt)
            .map_err(|_| invalid("salt is not base64"))?;
        let data = B64
            .decode(&self.data)
            .map_err(|_| invalid("data is not base64"))?;
        let user_key = derive(
            password,
            &salt,
            KdfParams {
                n: self.n,
                r: self.r,
                p: self.p,
            },
        )?;
        let plain = match user_key.decrypt(&data) {
            Ok(p) => p,
            Err(CryptoError::BadMac) => return Ok(None),
            Err(source) => {
                return Err(FormatError::Crypto {
                    what: "key file".into(),
                    source,
                });
            }
        };
        let kj: KeyJson = serde_json::from_slice(&plain).map_err(|source| FormatError::Json {
            what: "master key".into(),
            source,
        })?;
        Key::from_json(&kj)
            .map(Some)
            .ok_or_else(|| invalid("master key has wrong lengths"))
    }
}

/// One blob inside a pack (header entry or index entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    pub id: Id,
    pub blob_type: BlobType,
    /// Offset of the encrypted blob in the pack.
    pub offset: u32,
    /// Length of the encrypted blob.
    pub length: u32,
    /// Plaintext length when the blob is stored compressed.
    pub uncompressed_length: Option<u32>,
}

impl PackedBlob {
    /// Length of the plaintext (after decompression).
    pub fn data_length(&self) -> u32 {
        self.uncompressed_length
            .unwrap_or_else(|| self.length.saturating_sub(crypto::OVERHEAD as u32))
    }
}

/// Size of one header entry.
fn entry_size(b: &PackedBlob) -> usize {
    if b.uncompressed_length.is_some() {
        41
    } else {
        37
    }
}

/// Size of a pack's trailer (encrypted header + length) for these blobs.
pub fn header_size(blobs: &[PackedBlob]) -> u64 {
    (blobs.iter().map(entry_size).sum::<usize>() + crypto::OVERHEAD + 4) as u64
}

/// Builds the plaintext pack header.
pub fn pack_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut h = Vec::with_capacity(blobs.iter().map(entry_size).sum());
    for b in blobs {
        let t: u8 = match (b.blob_type, b.uncompressed_length.is_some()) {
            (BlobType::Data, false) => 0,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        };
        h.push(t);
        h.extend_from_slice(&b.length.to_le_bytes());
        if let Some(u) = b.uncompressed_length {
            h.extend_from_slice(&u.to_le_bytes());
        }
        h.extend_from_slice(&b.id.0);
    }
    h
}

/// Parses a pack: reads the trailer of `pack` (the whole file) and returns its blobs.
pub fn parse_pack(pack: &[u8], key: &Key, what: &str) -> Result<Vec<PackedBlob>, FormatError> {
    if pack.len() < 4 {
        return Err(FormatError::Invalid {
            what: what.to_string(),
            reason: "shorter than its header length field".into(),
        });
    }
    let mut lb = [0u8; 4];
    lb.copy_from_slice(&pack[pack.len() - 4..]);
    let hlen = header_length(lb, pack.len() as u64, what)? as usize;
    let hstart = pack.len() - 4 - hlen;
    parse_pack_header(&pack[hstart..pack.len() - 4], hstart as u64, key, what)
}

/// The header length a pack of `size` bytes ends with (its last four bytes), checked to fit.
pub fn header_length(last4: [u8; 4], size: u64, what: &str) -> Result<u64, FormatError> {
    let hlen = u64::from(u32::from_le_bytes(last4));
    if hlen + 4 > size {
        return Err(FormatError::Invalid {
            what: what.to_string(),
            reason: format!("header length {hlen} exceeds pack size {size}"),
        });
    }
    Ok(hlen)
}

/// The blobs of a pack from its encrypted header, which starts at `hstart` (where the blobs
/// must end).
pub fn parse_pack_header(
    encrypted: &[u8],
    hstart: u64,
    key: &Key,
    what: &str,
) -> Result<Vec<PackedBlob>, FormatError> {
    let header = key
        .decrypt(encrypted)
        .map_err(|source| FormatError::Crypto {
            what: format!("header of {what}"),
            source,
        })?;
    parse_header_entries(&header, hstart, what)
}

/// Parses a decrypted pack header whose blobs must fill the pack's first `hstart` bytes.
pub fn parse_header_entries(
    header: &[u8],
    hstart: u64,
    what: &str,
) -> Result<Vec<PackedBlob>, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        what: what.to_string(),
        reason,
    };
    let mut blobs = Vec::new();
    let mut pos = 0usize;
    let mut offset = 0u32;
    while pos < header.len() {
        let t = header[pos];
        let compressed = t >= 2;
        let need = if compressed { 41 } else { 37 };
        if pos + need > header.len() || t > 3 {
            return Err(invalid(format!("bad header entry at {pos} (type {t})")));
        }
        let rd = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[o..o + 4]);
            u32::from_le_bytes(b)
        };
        let length = rd(pos + 1);
        let (uncompressed_length, id_at) = if compressed {
            (Some(rd(pos + 5)), pos + 9)
        } else {
            (None, pos + 5)
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[id_at..id_at + 32]);
        blobs.push(PackedBlob {
            id: Id(id),
            blob_type: if t.is_multiple_of(2) {
                BlobType::Data
            } else {
                BlobType::Tree
            },
            offset,
            length,
            uncompressed_length,
        });
        offset = offset
            .checked_add(length)
            .ok_or_else(|| invalid("blob offsets overflow".into()))?;
        pos += need;
    }
    if u64::from(offset) != hstart {
        return Err(invalid(format!(
            "blobs end at {offset} but header starts at {hstart}"
        )));
    }
    Ok(blobs)
}

/// An index file's JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexJson {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    #[serde(default)]
    pub packs: Vec<IndexPack>,
}

/// One pack in an index file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    pub blobs: Vec<IndexBlob>,
}

/// One blob of a pack in an index file. Reading checks that it lies inside a pack's
/// 4 GiB (offset + length fits the `u32` fields), which readers slicing packs rely on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "IndexBlobJson")]
pub struct IndexBlob {
    pub id: Id,
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    pub offset: u32,
    pub length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

/// [`IndexBlob`] as read, before its checks.
#[derive(Deserialize)]
struct IndexBlobJson {
    id: Id,
    #[serde(rename = "type")]
    blob_type: BlobType,
    offset: u32,
    length: u32,
    #[serde(default)]
    uncompressed_length: Option<u32>,
}

impl TryFrom<IndexBlobJson> for IndexBlob {
    type Error = String;

    fn try_from(j: IndexBlobJson) -> Result<IndexBlob, String> {
        if j.offset.checked_add(j.length).is_none() {
            return Err(format!(
                "blob {}: offset {} + length {} is past the end of any pack",
                j.id, j.offset, j.length
            ));
        }
        Ok(IndexBlob {
            id: j.id,
            blob_type: j.blob_type,
            offset: j.offset,
            length: j.length,
            uncompressed_length: j.uncompressed_length,
        })
    }
}

impl IndexBlob {
    /// As a pack entry.
    pub fn packed(&self) -> PackedBlob {
        PackedBlob {
            id: self.id,
            blob_type: self.blob_type,
            offset: self.offset,
            length: self.length,
            uncompressed_length: self.uncompressed_length,
        }
    }
}

impl From<&PackedBlob> for IndexBlob {
    fn from(b: &PackedBlob) -> IndexBlob {
        IndexBlob {
            id: b.id,
            blob_type: b.blob_type,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        }
    }
}

/// Formats a time like Go's RFC3339Nano (trailing zeros of the fraction removed).
pub fn format_time(t: &DateTime<FixedOffset>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // "2024-01-02T03:04:05.120000000Z" -> "2024-01-02T03:04:05.12Z"
    if let Some(dot) = s.find('.') {
        let end = s[dot + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(s.len(), |i| dot + 1 + i);
        let frac = s[dot + 1..end].trim_end_matches('0');
        let tail = &s[end..];
        if frac.is_empty() {
            format!("{}{tail}", &s[..dot])
        } else {
            format!("{}.{frac}{tail}", &s[..dot])
        }
    } else {
        s
    }
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok()
}

/// A unix time (seconds, nanoseconds) as a UTC time.
pub fn unix_time(secs: i64, nanos: i64) -> DateTime<FixedOffset> {
    DateTime::<Utc>::from_timestamp(
        secs,
        u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0),
    )
    .unwrap_or_default()
    .fixed_offset()
}

// --- GF(2) polynomials for the chunker polynomial in the config -------------------

fn pol_deg(p: u128) -> i32 {
    127 - p.leading_zeros() as i32
}

fn pol_mod(mut a: u128, b: u128) -> u128 {
    let db = pol_deg(b);
    while pol_deg(a) >= db {
        a ^= b << (pol_deg(a) - db);
    }
    a
}

fn pol_mulmod(a: u128, b: u128, m: u128) -> u128 {
    let mut r = 0u128;
    let mut a = pol_mod(a, m);
    let mut b = b;
    while b != 0 {
        if b & 1 == 1 {
            r ^= a;
        }
        b >>= 1;
        a = pol_mod(a << 1, m);
    }
    r
}

fn pol_gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { pol_gcd(b, pol_mod(a, b)) }
}

/// Ben-Or irreducibility test.
fn irreducible(f: u128) -> bool {
    let n = pol_deg(f);
    let mut x2i = 2u128; // x
    for _ in 1..=n / 2 {
        x2i = pol_mulmod(x2i, x2i, f); // x^(2^i) mod f
        if pol_gcd(f, x2i ^ 2) != 1 {
            return false;
        }
    }
    true
}

/// A random irreducible polynomial of degree 53, as restic's chunker expects.
pub fn random_polynomial() -> Result<u64, getrandom::Error> {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b)?;
        let mut p = u64::from_le_bytes(b) & ((1u64 << 54) - 1);
        p |= 1 << 53;
        p |= 1; // divisible by x otherwise
        if irreducible(u128::from(p)) {
            return Ok(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_polynomials() {
        // restic's test polynomial.
        assert!(irreducible(0x3DA3358B4DC173));
        // x^2 + 1 = (x+1)^2 is reducible; x^2+x+1 is irreducible.
        assert!(!irreducible(0b101));
        assert!(irreducible(0b111));
        let p = random_polynomial().expect("random");
        assert_eq!(pol_deg(u128::from(p)), 53);
    }

    #[test]
    fn go_time_format() {
        let t = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.120000000+02:00").expect("t");
        assert_eq!(format_time(&t), "2024-01-02T03:04:05.12+02:00");
        let t = DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z").expect("t");
        assert_eq!(format_time(&t), "2024-01-02T03:04:05Z");
    }

    #[test]
    fn pack_header_roundtrip() {
        let key = Key::random().expect("key");
        let blobs = vec![
            PackedBlob {
                id: Id::hash(b"a"),
                blob_type: BlobType::Data,
                offset: 0,
                length: 40,
                uncompressed_length: None,
            },
            PackedBlob {
                id: Id::hash(b"b"),
                blob_type: BlobType::Tree,
                offset: 40,
                length: 50,
                uncompressed_length: Some(100),
            },
        ];
        let mut pack = vec![0u8; 90];
        let h = key.encrypt(&pack_header(&blobs)).expect("enc");
        pack.extend_from_slice(&h);
        pack.extend_from_slice(&(h.len() as u32).to_le_bytes());
        assert_eq!(pack.len() as u64, 90 + header_size(&blobs));
        assert_eq!(parse_pack(&pack, &key, "p").expect("parse"), blobs);
    }

    #[test]
    fn key_file_roundtrip() {
        let master = Key::random().expect("key");
        let kf = KeyFile::create(
            &master,
            "secret",
            KdfParams {
                n: 1 << 10,
                r: 8,
                p: 1,
            },
            "u",
            "h",
        )
        .expect("create");
        assert!(kf.open("wrong").expect("open").is_none());
        let k = kf.open("secret").expect("open").expect("right password");
        assert_eq!(
            k.decrypt(&master.encrypt(b"x").expect("enc")).expect("dec"),
            b"x"
        );
    }
}
