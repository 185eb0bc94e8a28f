//! Content identifiers: SHA-256 hashes, printed as lower-case hex.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 content id (of a blob's plaintext or a stored file's bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The SHA-256 of `data`. Uses aws-lc's assembly (AVX2/SHA-NI), about twice as
    /// fast as the portable `sha2` code on CPUs without SHA extensions; `sha2` is the
    /// fallback should the digest ever have an unexpected length.
    pub fn hash(data: &[u8]) -> Id {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
        let mut out = [0u8; 32];
        if d.as_ref().len() == 32 {
            out.copy_from_slice(d.as_ref());
            Id(out)
        } else {
            Id(Sha256::digest(data).into())
        }
    }

    /// A random id (repository ids).
    pub fn random() -> Result<Id, getrandom::Error> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        Ok(Id(b))
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Option<Id> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Id(b))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as restic prints them.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

/// A SHA-256 fed piece by piece: a pack's name, hashed while the pack is assembled, each
/// blob as it is appended (still in the cache of the thread that encrypted it), so the
/// finished pack is not read a second time.
#[derive(Clone)]
pub struct IdHasher(aws_lc_rs::digest::Context);

impl IdHasher {
    pub fn new() -> IdHasher {
        IdHasher(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The id of everything fed so far.
    pub fn finish(self) -> Id {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        // A SHA-256 digest is 32 bytes.
        out.copy_from_slice(d.as_ref());
        Id(out)
    }
}

impl Default for IdHasher {
    fn default() -> IdHasher {
        IdHasher::new()
    }
}

impl fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdHasher")
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        Id::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid id {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            Id::hash(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let big = vec![7u8; 3_000_001];
        assert_eq!(Id::hash(&big), Id(Sha256::digest(&big).into()));
    }

    #[test]
    fn piecewise_hash_equals_the_hash_of_the_whole() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut h = IdHasher::new();
        for piece in data.chunks(65_537) {
            h.update(piece);
        }
        assert_eq!(h.finish(), Id::hash(&data));
        assert_eq!(IdHasher::default().finish(), Id::hash(b""));
    }
}
