//! Sealed storage of secret keys: XChaCha20-Poly1305 under a 256-bit master key, with the
//! round id and key id bound as associated data (a sealed key moved to another row does not
//! open). The master key is read from a file (a Kubernetes Secret in production) holding 64
//! hex digits; its id is a hash prefix, stored beside each sealed key so rotation can tell
//! what is wrapped under what.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use thiserror::Error;
use zeroize::Zeroizing;

/// Failures of sealing and unsealing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The master-key file is missing or malformed (its content is never echoed).
    #[error("master key file {path}: {reason}")]
    BadMasterKey {
        /// File path.
        path: String,
        /// What is wrong (with the operating system's reason when it could not be read).
        reason: String,
    },
    /// Authentication failed: wrong master key, tampered ciphertext or moved row.
    #[error("sealed key does not open under master key {master_key_id}")]
    Open {
        /// Master key tried.
        master_key_id: String,
    },
    /// Encryption failed (should not happen).
    #[error("sealing failed")]
    Seal,
}

/// The master key. Zeroized on drop; `Debug` shows the id only.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A sealed secret key as stored.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// 24-byte nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl MasterKey {
    /// Reads 64 hex digits (surrounding whitespace allowed) from `path`.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let bad =
            |reason: String| SealError::BadMasterKey { path: path.display().to_string(), reason };
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read: {e}")))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut())
            .map_err(|_| bad("must hold exactly 64 hex digits".into()))?;
        Ok(Self::from_bytes(key))
    }

    /// Parses 64 hex digits (e.g. from the `CRYPTFLOW_KMS_MASTER_KEY` environment secret).
    pub fn from_hex(text: &str, source: &str) -> Result<Self, SealError> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| SealError::BadMasterKey {
            path: source.to_owned(),
            reason: "must hold exactly 64 hex digits".into(),
        })?;
        Ok(Self::from_bytes(key))
    }

    /// A fresh random key (for `cryptflow-kms generate-master-key` and tests).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(key.as_mut());
        Self::from_bytes(key)
    }

    fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let digest = Sha256::new_with_prefix(b"cryptflow master key id v1")
            .chain_update(key.as_ref())
            .finalize();
        Self { id: hex::encode(&digest[..8]), key }
    }

    /// The key as 64 hex digits, for writing a new key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key.as_ref()))
    }

    /// Public identifier of this master key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A secret derived from this key for `label` (SHA-256 of a domain tag, the label and
    /// the key): input keying material for keys that must live and die with this one.
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let digest = Sha256::new_with_prefix(b"cryptflow-kms derived secret v1\0")
            .chain_update((label.len() as u64).to_le_bytes())
            .chain_update(label)
            .chain_update(self.key.as_ref())
            .finalize();
        Zeroizing::new(digest.into())
    }

    fn aad(round_id: &str, key_id: &str) -> Vec<u8> {
        format!("cryptflow-kms sealed key v1\0{round_id}\0{key_id}").into_bytes()
    }

    /// Seals `secret` for (`round_id`, `key_id`).
    pub fn seal(&self, round_id: &str, key_id: &str, secret: &[u8]) -> Result<Sealed, SealError> {
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let mut nonce = [0u8; 24];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let aad = Self::aad(round_id, key_id);
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &aad })
            .map_err(|_| SealError::Seal)?;
        Ok(Sealed { nonce: nonce.to_vec(), ciphertext })
    }

    /// Opens a sealed secret; fails if anything (key, row binding, bytes) differs.
    pub fn open(
        &self,
        round_id: &str,
        key_id: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let err = || SealError::Open { master_key_id: self.id.clone() };
        if sealed.nonce.len() != 24 {
            return Err(err());
        }
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let aad = Self::aad(round_id, key_id);
        cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload { msg: &sealed.ciphertext, aad: &aad },
            )
            .map(Zeroizing::new)
            .map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_round_and_key_and_master() {
        let m = MasterKey::generate();
        let s = m.seal("r1", "k1", b"secret").unwrap();
        assert_eq!(m.open("r1", "k1", &s).unwrap().as_slice(), b"secret");
        assert!(m.open("r2", "k1", &s).is_err());
        assert!(m.open("r1", "k2", &s).is_err());
        assert!(MasterKey::generate().open("r1", "k1", &s).is_err());
        let mut t = s.clone();
        t.ciphertext[0] ^= 1;
        assert!(m.open("r1", "k1", &t).is_err());
        assert!(!format!("{m:?}").contains(&*m.to_hex()));
    }

    #[test]
    fn key_files_are_validated_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let m = MasterKey::generate();
        std::fs::write(&good, format!("{}\n", &*m.to_hex())).unwrap();
        assert_eq!(MasterKey::from_file(&good).unwrap().id(), m.id());
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "zz-not-hex-secret").unwrap();
        let err = MasterKey::from_file(&bad).unwrap_err().to_string();
        assert!(!err.contains("not-hex-secret"));
        assert!(MasterKey::from_file(&dir.path().join("missing")).is_err());
        // The environment-secret form parses the same way.
        assert_eq!(MasterKey::from_hex(&m.to_hex(), "env").unwrap().id(), m.id());
        let err = MasterKey::from_hex("secret-but-not-hex", "env").unwrap_err().to_string();
        assert!(!err.contains("secret-but"));
    }
}
