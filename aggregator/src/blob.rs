//! Durable blob storage in a local directory: `<root>/<round>/<name>`.
//!
//! A blob is written to a temporary file in its round's directory — streamed, chunk by chunk —
//! fsynced, renamed to its final name and the directory fsynced, so after a crash a blob is
//! either absent or complete, never torn. Temporary files a crash left behind are removed when
//! the store opens. Round ids and names are validated identifiers, so paths cannot escape the
//! root. Reads can take a byte range, so the fold never holds a whole upload.

use cryptflow_services::private_fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A directory of blobs.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

/// The marker in temporary files' names.
const TEMP: &str = ".tmp-";

impl BlobStore {
    /// Opens (creating if needed) the store at `root`, removing temporary files left by a
    /// crash. Returns how many it removed.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<(Self, usize)> {
        let root = root.into();
        private_fs::create_dir_all(&root)?;
        let mut removed = 0;
        for round in std::fs::read_dir(&root)? {
            let round = round?;
            if !round.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(round.path())? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().contains(TEMP) {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok((Self { root }, removed))
    }

    fn path(&self, round: &str, name: &str) -> PathBuf {
        self.root.join(round).join(name)
    }

    /// Starts writing a blob of `round`; the data becomes visible under its name only when
    /// [`BlobWriter::finish`] succeeds.
    pub fn writer(&self, round: &str) -> std::io::Result<BlobWriter> {
        let dir = self.root.join(round);
        private_fs::create_dir_all(&dir)?;
        // tempfile creates the file with mode 0600; the rename keeps it.
        let tmp = tempfile::Builder::new().prefix(TEMP).tempfile_in(&dir)?;
        Ok(BlobWriter { dir, tmp: Some(tmp) })
    }

    /// Durably stores `bytes` as `round/name`, replacing any previous blob atomically.
    pub fn put(&self, round: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer(round)?;
        w.write_all(bytes)?;
        w.finish(name)
    }

    /// Reads `round/name`.
    pub fn get(&self, round: &str, name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(round, name))
    }

    /// Reads `len` bytes of `round/name` from `offset`.
    pub fn get_range(
        &self,
        round: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(self.path(round, name))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut out = vec![0u8; len];
        f.read_exact(&mut out)?;
        Ok(out)
    }

    /// Opens `round/name` for streaming.
    pub fn open_file(&self, round: &str, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::File::open(self.path(round, name))
    }

    /// Whether `round/name` exists.
    pub fn exists(&self, round: &str, name: &str) -> bool {
        self.path(round, name).exists()
    }

    /// Deletes `round/name` (absent is fine).
    pub fn delete(&self, round: &str, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(round, name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Names of `round`'s blobs (temporary files excluded).
    pub fn list(&self, round: &str) -> std::io::Result<Vec<String>> {
        let dir = self.root.join(round);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !name.contains(TEMP) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A blob being written. Dropped without [`finish`](Self::finish), it leaves nothing.
#[derive(Debug)]
pub struct BlobWriter {
    dir: PathBuf,
    tmp: Option<tempfile::NamedTempFile>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.tmp {
            Some(t) => t.write(buf),
            None => Err(std::io::Error::other("blob already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.tmp {
            Some(t) => t.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter {
    /// Fsyncs, renames to `name` (replacing an existing blob atomically), fsyncs the directory.
    pub fn finish(mut self, name: &str) -> std::io::Result<()> {
        let tmp = self.tmp.take().ok_or_else(|| std::io::Error::other("blob already finished"))?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.dir.join(name)).map_err(|e| e.error)?;
        sync_dir(&self.dir)
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
    fn put_get_range_replace_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlobStore::open(dir.path().join("blobs")).unwrap();
        store.put("r1", "alice", b"one").unwrap();
        assert_eq!(store.get("r1", "alice").unwrap(), b"one");
        let mut w = store.writer("r1").unwrap();
        w.write_all(b"tw").unwrap();
        w.write_all(b"o!").unwrap();
        w.finish("alice").unwrap();
        assert_eq!(store.get_range("r1", "alice", 1, 2).unwrap(), b"wo");
        assert!(store.exists("r1", "alice") && !store.exists("r1", "bob"));
        // An abandoned writer leaves nothing visible.
        let mut w = store.writer("r1").unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(store.list("r1").unwrap(), vec!["alice"]);
        store.delete("r1", "alice").unwrap();
        store.delete("r1", "alice").unwrap();
        assert!(store.list("r1").unwrap().is_empty());
    }

    #[test]
    fn temporary_files_a_crash_left_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        std::fs::create_dir_all(root.join("r1")).unwrap();
        std::fs::write(root.join("r1").join(".tmp-abc123"), b"torn").unwrap();
        std::fs::write(root.join("r1").join("kept"), b"ok").unwrap();
        let (store, removed) = BlobStore::open(&root).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(store.list("r1").unwrap(), vec!["kept"]);
    }
}
