//! Durable blob storage in a local directory: `<root>/<round>/<name>`.
//!
//! A write goes to a temporary file in the same directory, is fsynced, renamed over the final
//! name and the directory is fsynced, so after a crash a blob is either absent or complete —
//! never torn. Round ids and names are validated identifiers, so paths cannot escape the root.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A directory of blobs.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn path(&self, round: &str, name: &str) -> PathBuf {
        self.root.join(round).join(name)
    }

    /// Durably stores `bytes` as `round/name`, replacing any previous blob atomically.
    pub fn put(&self, round: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.put_parts(round, name, &[bytes])
    }

    /// Like [`BlobStore::put`], for a blob given as consecutive parts (no concatenated copy).
    pub fn put_parts(&self, round: &str, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
        let dir = self.root.join(round);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            for part in parts {
                f.write_all(part)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path(round, name))?;
        sync_dir(&dir)
    }

    /// Reads `round/name`.
    pub fn get(&self, round: &str, name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(round, name))
    }

    /// Whether `round/name` exists.
    pub fn exists(&self, round: &str, name: &str) -> bool {
        self.path(round, name).exists()
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        store.put("r1", "alice.ct", b"one").unwrap();
        assert_eq!(store.get("r1", "alice.ct").unwrap(), b"one");
        store.put_parts("r1", "alice.ct", &[b"tw", b"", b"o"]).unwrap();
        assert_eq!(store.get("r1", "alice.ct").unwrap(), b"two");
        assert!(store.exists("r1", "alice.ct"));
        assert!(!store.exists("r1", "bob.ct"));
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("blobs/r1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }
}
