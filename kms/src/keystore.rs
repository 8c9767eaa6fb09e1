//! The round-key store: what makes shredding erasure rather than deletion.
//!
//! Every round gets a fresh 256-bit **round key** when its first deposit arrives; the node
//! seals the round's Shamir shares under it (XChaCha20-Poly1305, [`crate::seal`]) and keeps
//! only ciphertext in the database. The round keys themselves live in one small file
//! *outside* the database — by default next to the restore witness, on storage the database's
//! backups do not include — each sealed by the master key. Shredding a round deletes its key
//! from the file: the database, its WAL and free pages, a `pg_dump` and every backup then hold
//! shares that nothing opens, even with the master key.
//!
//! The file is rewritten atomically (a new file written and fsynced, renamed over the old one,
//! the directory fsynced) and the old copy is then overwritten with zeros through a descriptor
//! kept open across the rename, so the previous version's blocks do not keep a shredded key.
//! What remains: a copy of the file taken *before* shredding, together with the master key,
//! opens that round's shares; flash translation layers and copy-on-write file systems may keep
//! overwritten blocks. `docs/security.md` says so.
//!
//! Shares deposited before this store existed stay sealed under the master key (their
//! `master_key_id` column names it) and open as before; `rotate-master-key` re-wraps them and
//! the round keys.

use crate::seal::{MasterKey, SealError, Sealed};
use cryptflow_services::private_fs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;
use zeroize::Zeroizing;

/// The prefix of a round key's id in the deposits' `master_key_id` column: a share whose
/// wrapping key id starts with it is sealed under its round's key, not the master key.
pub const ROUND_KEY_ID_PREFIX: &str = "round-";

/// What the file's `format` field says.
const FORMAT: &str = "cryptflow-kms round keys v1";

/// Failures of the round-key store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The file could not be read, parsed or written.
    #[error("round-key store {path}: {reason}")]
    File {
        /// The store's path.
        path: String,
        /// What went wrong (with the operating system's reason).
        reason: String,
    },
    /// A round's key is not in the store: shredded, or the file was lost or replaced.
    #[error("round {round}: its key is not in the round-key store {path} (shredded, or the file was lost or replaced)")]
    Missing {
        /// The round.
        round: String,
        /// The store's path.
        path: String,
    },
    /// The file holds keys sealed under another master key than the serving node's: a
    /// rotation is under way (restart the node onto the new master key).
    #[error("round-key store {path}: keys are sealed under master key {found}, this node serves with {serving}; a master-key rotation is under way — restart the node onto the new key")]
    Rotation {
        /// The store's path.
        path: String,
        /// A master key id found in the file.
        found: String,
        /// The serving node's master key id.
        serving: String,
    },
    /// Sealing or unsealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// A round's key, unsealed. Zeroized on drop.
pub struct RoundKey {
    key: MasterKey,
}

impl RoundKey {
    /// The id recorded beside each share sealed under it (`round-…`).
    pub fn id(&self) -> String {
        format!("{ROUND_KEY_ID_PREFIX}{}", self.key.id())
    }
    /// Seals `secret` (a share) for (`round`, `client`).
    pub fn seal(&self, round: &str, client: &str, secret: &[u8]) -> Result<Sealed, SealError> {
        self.key.seal(round, client, secret)
    }
    /// The node's deposit key pair for `round` (`cryptflow_services::sealed`), derived from
    /// this round key: it dies when the round is shredded.
    pub fn deposit_keys(&self, round: &str) -> cryptflow_services::sealed::DepositKeyPair {
        let ikm = self.key.derive(format!("deposit key pair\0{round}").as_bytes());
        cryptflow_services::sealed::DepositKeyPair::derive(ikm.as_ref())
    }
    /// Opens a share sealed by [`RoundKey::seal`].
    pub fn open(
        &self,
        round: &str,
        client: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.key.open(round, client, sealed)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The master key that seals this round key.
    master_key_id: String,
    /// Hex.
    nonce: String,
    /// Hex: the round key sealed under the master key.
    sealed: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: String,
    keys: BTreeMap<String, Entry>,
}

/// The round keys of one node, cached in memory and written through to the file. Every
/// change is a read-modify-write under an exclusive lock on `<path>.lock` (so `cryptflow-kms
/// rotate-master-key` or `refuse-open-rounds` run beside a serving node cannot lose each
/// other's writes), and the cache is read again whenever the file changed underneath.
#[derive(Debug)]
pub struct RoundKeys {
    path: PathBuf,
    state: Mutex<Cache>,
}

/// What identifies one version of the file: (device, inode, modification time, length).
type Stamp = (u64, u64, std::time::SystemTime, u64);

#[derive(Debug, Default)]
struct Cache {
    keys: BTreeMap<String, Entry>,
    /// The file's stamp when last read or written; `None`: no file.
    stamp: Option<Stamp>,
}

/// The label under which a round key is sealed by the master key (the AEAD's associated data
/// binds the round, so an entry copied to another round does not open).
const SEAL_LABEL: &str = "round key";

/// Held while a change is read, made and written: the in-process cache and the lock file.
struct Locked<'a> {
    cache: std::sync::MutexGuard<'a, Cache>,
    _file: File,
}

impl RoundKeys {
    /// Opens the store at `path` (an absent file is an empty store, created at the first
    /// round). New files a crashed writer left behind are overwritten and removed.
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        let store = Self { path: path.to_owned(), state: Mutex::new(Cache::default()) };
        let locked = store.locked()?;
        store.remove_stale_new_files()?;
        drop(locked);
        Ok(store)
    }

    /// Checks the file at `path` without opening the store (no lock file, nothing created):
    /// absent, or a round-key store. Returns how many round keys it holds. `check-config`.
    pub fn check(path: &Path) -> Result<usize, KeyStoreError> {
        let err = |reason: String| KeyStoreError::File { path: path.display().to_string(), reason };
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: StoreFile = serde_json::from_slice(&bytes)
                    .map_err(|e| err(format!("not a round-key store: {e}")))?;
                if file.format != FORMAT {
                    return Err(err(format!("unknown format `{}`", file.format)));
                }
                Ok(file.keys.len())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(err(format!("cannot be read: {e}"))),
        }
    }

    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError::File {
            path: self.path.display().to_string(),
            reason: format!("{what}: {e}"),
        }
    }

    fn stamp(&self) -> Result<Option<Stamp>, KeyStoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                let modified = m.modified().map_err(|e| self.error("cannot stat", e))?;
                #[cfg(unix)]
                let (dev, ino) = {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                };
                #[cfg(not(unix))]
                let (dev, ino) = (0, 0);
                Ok(Some((dev, ino, modified, m.len())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("cannot stat", e)),
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// The cache, read (again) from the file if that changed, with the cross-process lock held.
    fn locked(&self) -> Result<Locked<'_>, KeyStoreError> {
        // A panic while holding the lock leaves the cache as the file last written; keep going.
        let mut cache = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lock_path = self.sibling(".lock");
        let file = private_fs::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.error("cannot open the lock file", e))?;
        file.lock().map_err(|e| self.error("cannot lock", e))?;
        let stamp = self.stamp()?;
        if stamp.is_none() || stamp != cache.stamp {
            cache.keys = match std::fs::read(&self.path) {
                Ok(bytes) => {
                    let file: StoreFile = serde_json::from_slice(&bytes)
                        .map_err(|e| self.error("not a round-key store", e))?;
                    if file.format != FORMAT {
                        return Err(self.error(
                            "unknown format",
                            format!("`{}` is not `{FORMAT}`", file.format),
                        ));
                    }
                    file.keys
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(self.error("cannot be read", e)),
            };
            cache.stamp = stamp;
        }
        Ok(Locked { cache, _file: file })
    }

    /// The key of `round`, made, sealed and written to the file first if the round has none.
    /// The file is durable before the key is returned, so no share is ever sealed under a key
    /// the store could lose in a crash. Refused ([`KeyStoreError::Rotation`]) while the file
    /// holds keys sealed under another master key: a rotation is under way, and a key sealed
    /// now under the old master key would not open after the restart onto the new one.
    pub fn key_for(&self, round: &str, master: &MasterKey) -> Result<RoundKey, KeyStoreError> {
        let mut locked = self.locked()?;
        if let Some(entry) = locked.cache.keys.get(round) {
            return self.unseal(round, entry, master);
        }
        if let Some(other) = locked.cache.keys.values().find(|e| e.master_key_id != master.id()) {
            return Err(KeyStoreError::Rotation {
                path: self.path.display().to_string(),
                found: other.master_key_id.clone(),
                serving: master.id().to_owned(),
            });
        }
        let fresh = MasterKey::generate();
        let sealed = master.seal(round, SEAL_LABEL, fresh.to_hex().as_bytes())?;
        let entry = Entry {
            master_key_id: master.id().to_owned(),
            nonce: hex::encode(&sealed.nonce),
            sealed: hex::encode(&sealed.ciphertext),
        };
        let mut next = locked.cache.keys.clone();
        next.insert(round.to_owned(), entry);
        self.persist(&mut locked.cache, next)?;
        Ok(RoundKey { key: fresh })
    }

    /// The key of `round`; [`KeyStoreError::Missing`] if it has none (shredded or lost).
    pub fn key(&self, round: &str, master: &MasterKey) -> Result<RoundKey, KeyStoreError> {
        let locked = self.locked()?;
        let entry = locked.cache.keys.get(round).ok_or_else(|| KeyStoreError::Missing {
            round: round.to_owned(),
            path: self.path.display().to_string(),
        })?;
        self.unseal(round, entry, master)
    }

    /// Whether `round` has a key in the store.
    pub fn contains(&self, round: &str) -> Result<bool, KeyStoreError> {
        Ok(self.locked()?.cache.keys.contains_key(round))
    }

    /// The rounds that have a key.
    pub fn rounds(&self) -> Result<Vec<String>, KeyStoreError> {
        Ok(self.locked()?.cache.keys.keys().cloned().collect())
    }

    fn unseal(
        &self,
        round: &str,
        entry: &Entry,
        master: &MasterKey,
    ) -> Result<RoundKey, KeyStoreError> {
        let sealed = sealed_of(entry).map_err(|reason| KeyStoreError::File {
            path: self.path.display().to_string(),
            reason: format!("round {round}: {reason}"),
        })?;
        let hex_key = master.open(round, SEAL_LABEL, &sealed).map_err(|_| KeyStoreError::File {
            path: self.path.display().to_string(),
            reason: format!(
                "round {round}: its key is sealed under master key {}, which is not this node's {}",
                entry.master_key_id,
                master.id()
            ),
        })?;
        let text = std::str::from_utf8(&hex_key).map_err(|_| KeyStoreError::File {
            path: self.path.display().to_string(),
            reason: format!("round {round}: the sealed key is not a key"),
        })?;
        let key = MasterKey::from_hex(text, "round key")?;
        Ok(RoundKey { key })
    }

    /// Shreds `round`: its key leaves the file (and the old copy of the file is overwritten).
    /// Returns whether it had one.
    pub fn shred(&self, round: &str) -> Result<bool, KeyStoreError> {
        let mut locked = self.locked()?;
        if !locked.cache.keys.contains_key(round) {
            return Ok(false);
        }
        let mut next = locked.cache.keys.clone();
        next.remove(round);
        self.persist(&mut locked.cache, next)?;
        Ok(true)
    }

    /// Re-wraps every round key from `old` to `new` (`rotate-master-key`); returns how many.
    /// Keys already under `new` are skipped.
    pub fn rewrap(&self, old: &MasterKey, new: &MasterKey) -> Result<u64, KeyStoreError> {
        let mut locked = self.locked()?;
        let mut next = locked.cache.keys.clone();
        let mut count = 0;
        for (round, entry) in next.iter_mut() {
            if entry.master_key_id == new.id() {
                continue;
            }
            let key = self.unseal(round, entry, old)?;
            let sealed = new.seal(round, SEAL_LABEL, key.key.to_hex().as_bytes())?;
            *entry = Entry {
                master_key_id: new.id().to_owned(),
                nonce: hex::encode(&sealed.nonce),
                sealed: hex::encode(&sealed.ciphertext),
            };
            count += 1;
        }
        if count > 0 {
            self.persist(&mut locked.cache, next)?;
        }
        Ok(count)
    }

    /// Overwrites and removes `<path>.new.*` files a crashed writer left (they may hold keys
    /// shredded since).
    fn remove_stale_new_files(&self) -> Result<(), KeyStoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = self.path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(());
        };
        let prefix = format!("{name}.new.");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.error("cannot list the directory", e)),
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let p = entry.path();
                if let Ok(f) = private_fs::options().write(true).open(&p) {
                    overwrite(f).map_err(|e| self.error("cannot overwrite a stale new file", e))?;
                }
                std::fs::remove_file(&p)
                    .map_err(|e| self.error("cannot remove a stale new file", e))?;
            }
        }
        Ok(())
    }

    /// Writes `keys` to a new file, fsyncs it, renames it over the store, fsyncs the directory,
    /// then overwrites the previous file's contents with zeros through a descriptor opened
    /// before the rename; the cache becomes `keys` once the rename is durable. (A crash between
    /// the rename and the overwrite leaves the previous version's blocks as they were.)
    fn persist(
        &self,
        cache: &mut Cache,
        keys: BTreeMap<String, Entry>,
    ) -> Result<(), KeyStoreError> {
        let err = |what: &str, e: std::io::Error| self.error(what, e);
        let file = StoreFile { format: FORMAT.to_owned(), keys };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| self.error("cannot encode", e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let tmp = self.sibling(&format!(".new.{}.{nanos}", std::process::id()));
        private_fs::write_new(&tmp, &bytes).map_err(|e| err("cannot write the new file", e))?;
        let old = match private_fs::options().write(true).open(&self.path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err("cannot open the previous file", e)),
        };
        std::fs::rename(&tmp, &self.path).map_err(|e| err("cannot replace the file", e))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("cannot sync the directory", e))?;
        cache.keys = file.keys;
        cache.stamp = self.stamp()?;
        if let Some(old) = old {
            overwrite(old).map_err(|e| err("cannot overwrite the previous file", e))?;
        }
        Ok(())
    }
}

fn sealed_of(entry: &Entry) -> Result<Sealed, String> {
    Ok(Sealed {
        nonce: hex::decode(&entry.nonce).map_err(|_| "nonce is not hex".to_owned())?,
        ciphertext: hex::decode(&entry.sealed).map_err(|_| "sealed key is not hex".to_owned())?,
    })
}

/// Zeros over the whole of an (unlinked) previous version, synced.
fn overwrite(mut old: File) -> std::io::Result<()> {
    let len = old.metadata()?.len();
    old.seek(SeekFrom::Start(0))?;
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        old.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    old.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_restart_and_shredding_removes_them_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round-keys.json");
        let master = MasterKey::generate();
        let store = RoundKeys::open(&path).unwrap();
        let key = store.key_for("r-1", &master).unwrap();
        let sealed = key.seal("r-1", "site-0", b"share").unwrap();
        assert_eq!(store.key_for("r-1", &master).unwrap().id(), key.id());
        assert!(key.id().starts_with(ROUND_KEY_ID_PREFIX));
        // A restart reads the same key back; the file holds only sealed keys.
        let reopened = RoundKeys::open(&path).unwrap();
        let again = reopened.key("r-1", &master).unwrap();
        assert_eq!(again.open("r-1", "site-0", &sealed).unwrap().as_slice(), b"share");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&*key.key.to_hex()));
        // Another master key does not open it; an entry moved to another round does not either.
        let e = reopened.key("r-1", &MasterKey::generate()).err().unwrap().to_string();
        assert!(e.contains("not this node's"), "{e}");
        // A copy of the file from before shredding still opens (the documented limit)…
        let before = std::fs::read(&path).unwrap();
        let handle = File::open(&path).unwrap();
        assert!(reopened.shred("r-1").unwrap());
        assert!(!reopened.shred("r-1").unwrap());
        assert!(matches!(reopened.key("r-1", &master), Err(KeyStoreError::Missing { .. })));
        assert!(matches!(
            RoundKeys::open(&path).unwrap().key("r-1", &master),
            Err(KeyStoreError::Missing { .. })
        ));
        // …but the previous version on disk is overwritten, not just unlinked.
        let mut left = Vec::new();
        std::io::Read::read_to_end(&mut &handle, &mut left).unwrap();
        assert_eq!(left.len(), before.len());
        assert!(left.iter().all(|&b| b == 0), "the old file still holds the key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn rewrapping_moves_every_key_to_the_new_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let store = RoundKeys::open(&path).unwrap();
        let sealed = store.key_for("r-1", &old).unwrap().seal("r-1", "c", b"s").unwrap();
        store.key_for("r-2", &old).unwrap();
        assert_eq!(store.rewrap(&old, &new).unwrap(), 2);
        assert_eq!(store.rewrap(&old, &new).unwrap(), 0);
        // A node still serving with the old master key makes no key the restart would lose.
        let serving = RoundKeys::open(&path).unwrap();
        assert!(matches!(serving.key_for("r-3", &old), Err(KeyStoreError::Rotation { .. })));
        assert!(serving.key_for("r-3", &new).is_ok());
        let reopened = RoundKeys::open(&path).unwrap();
        assert!(reopened.key("r-1", &old).is_err());
        let key = reopened.key("r-1", &new).unwrap();
        assert_eq!(key.open("r-1", "c", &sealed).unwrap().as_slice(), b"s");
    }

    #[test]
    fn new_files_left_by_a_crash_are_overwritten_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let stale = dir.path().join("keys.new.1.2");
        std::fs::write(&stale, "sealed keys of shredded rounds").unwrap();
        let other = dir.path().join("keys-unrelated");
        std::fs::write(&other, "x").unwrap();
        RoundKeys::open(&path).unwrap();
        assert!(!stale.exists() && other.exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "not json").unwrap();
        let e = RoundKeys::open(&path).unwrap_err().to_string();
        assert!(e.contains("keys"), "{e}");
    }
}
