//! restic's authenticated encryption: AES-256-CTR with a random 16-byte IV, then a
//! Poly1305-AES MAC over the ciphertext. Stored layout: `IV || ciphertext || MAC`.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher, generic_array::GenericArray};
use aes::{Aes128, Aes256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use poly1305::Poly1305;
use serde::{Deserialize, Serialize};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// Bytes added by encryption: IV (16) + MAC (16).
pub const OVERHEAD: usize = 32;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 16;

/// Encryption failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext of {0} bytes is shorter than IV and MAC")]
    TooShort(usize),
    #[error("MAC mismatch: data was modified or the key is wrong")]
    BadMac,
    #[error("no randomness available: {0}")]
    Random(String),
}

/// A repository master key (or a key derived from a password): an AES-256 key and a
/// Poly1305-AES key `(k, r)`.
#[derive(Clone)]
pub struct Key {
    encrypt: [u8; 32],
    mac_k: [u8; 16],
    mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The master key as stored (encrypted) inside a key file.
#[derive(Serialize, Deserialize)]
pub(crate) struct KeyJson {
    mac: MacJson,
    encrypt: String,
}

#[derive(Serialize, Deserialize)]
struct MacJson {
    k: String,
    r: String,
}

impl Key {
    /// A fresh random key.
    pub fn random() -> Result<Key, CryptoError> {
        let mut b = [0u8; 64];
        getrandom::fill(&mut b).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(Key::from_slice64(&b))
    }

    /// A key from 64 bytes laid out as restic's KDF output: encryption key (32),
    /// MAC k (16), MAC r (16).
    pub fn from_slice64(b: &[u8; 64]) -> Key {
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        k.encrypt.copy_from_slice(&b[..32]);
        k.mac_k.copy_from_slice(&b[32..48]);
        k.mac_r.copy_from_slice(&b[48..64]);
        k
    }

    pub(crate) fn to_json(&self) -> KeyJson {
        KeyJson {
            mac: MacJson {
                k: B64.encode(self.mac_k),
                r: B64.encode(self.mac_r),
            },
            encrypt: B64.encode(self.encrypt),
        }
    }

    pub(crate) fn from_json(j: &KeyJson) -> Option<Key> {
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        let e = B64.decode(&j.encrypt).ok()?;
        let mk = B64.decode(&j.mac.k).ok()?;
        let mr = B64.decode(&j.mac.r).ok()?;
        if e.len() != 32 || mk.len() != 16 || mr.len() != 16 {
            return None;
        }
        k.encrypt.copy_from_slice(&e);
        k.mac_k.copy_from_slice(&mk);
        k.mac_r.copy_from_slice(&mr);
        Some(k)
    }

    fn mac(&self, iv: &[u8], ciphertext: &[u8]) -> [u8; 16] {
        // Poly1305-AES: r from the key (clamped by the poly1305 implementation),
        // s = AES-128_k(nonce).
        let aes = Aes128::new(GenericArray::from_slice(&self.mac_k));
        let mut s = GenericArray::clone_from_slice(iv);
        aes.encrypt_block(&mut s);
        let mut pk = [0u8; 32];
        pk[..16].copy_from_slice(&self.mac_r);
        pk[16..].copy_from_slice(&s);
        let poly = Poly1305::new(GenericArray::from_slice(&pk));
        poly.compute_unpadded(ciphertext).into()
    }

    /// Encrypts `plaintext` into `IV || ciphertext || MAC`, appended to `out`.
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(|e| CryptoError::Random(e.to_string()))?;
        let start = out.len();
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plaintext);
        let ct = &mut out[start + IV_LEN..];
        let mut c = Aes256Ctr::new(
            GenericArray::from_slice(&self.encrypt),
            GenericArray::from_slice(&iv),
        );
        c.apply_keystream(ct);
        let tag = self.mac(&iv, ct);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Encrypts into a new vector.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut v = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.encrypt_into(plaintext, &mut v)?;
        Ok(v)
    }

    /// Verifies the MAC and decrypts `IV || ciphertext || MAC`.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if data.len() < OVERHEAD {
            return Err(CryptoError::TooShort(data.len()));
        }
        let (iv, rest) = data.split_at(IV_LEN);
        let (ct, tag) = rest.split_at(rest.len() - MAC_LEN);
        let want = self.mac(iv, ct);
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(CryptoError::BadMac);
        }
        let mut out = ct.to_vec();
        let mut c = Aes256Ctr::new(
            GenericArray::from_slice(&self.encrypt),
            GenericArray::from_slice(iv),
        );
        c.apply_keystream(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let k = Key::random().expect("key");
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ct = k.encrypt(&pt).expect("enc");
            assert_eq!(ct.len(), len + OVERHEAD);
            assert_eq!(k.decrypt(&ct).expect("dec"), pt);
            let mut bad = ct.clone();
            let last = bad.len() - 1;
            bad[last / 2] ^= 1;
            assert_eq!(k.decrypt(&bad), Err(CryptoError::BadMac));
        }
        let other = Key::random().expect("key");
        assert_eq!(
            other.decrypt(&k.encrypt(b"x").expect("enc")),
            Err(CryptoError::BadMac)
        );
    }
}
