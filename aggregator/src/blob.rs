//! Durable blob storage through the [`object_store`] crate: a local directory (the default:
//! the demo and single-replica SQLite setups) or an S3-compatible bucket shared by every
//! replica. Blobs are named `<round>/<name>`.
//!
//! A blob is streamed to a temporary object of its round (`<round>/incoming.<random>`) —
//! multipart above [`PART_BYTES`], so no whole upload is ever held in memory — and then
//! renamed to its final, content-addressed name: after a crash a blob is absent or complete,
//! never torn, and a rewrite by another replica replaces it atomically. On a local directory
//! the file and its directory are fsynced before the rename counts (object_store's local
//! backend does not fsync). On S3 the rename is a server-side copy (CopyObject: at most
//! [`S3_MAX_COPY_BYTES`], which is why a round whose uploads would be larger is refused on
//! S3) and a delete. Temporary files a crash left behind are removed when a local store opens,
//! and temporary objects with the round's uploads at retention; a multipart upload a crash
//! interrupted is invisible to listings — on S3 give the bucket a lifecycle rule that aborts
//! incomplete multipart uploads after a day. Round ids and names are validated identifiers,
//! so names cannot escape the prefix. Reads take a byte range, so the fold never holds a
//! whole upload; a blob being written holds one part buffered and one in flight (~10 MiB).

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Size of the parts of a multipart write (S3's minimum part size is 5 MiB): a blob being
/// written holds at most this much, plus one part in flight.
pub const PART_BYTES: usize = 5 << 20;

/// The largest object S3 copies in one request (CopyObject): a blob renamed on S3 — an
/// upload or an aggregate — must not be larger.
pub const S3_MAX_COPY_BYTES: u64 = 5 << 30;

/// The marker of temporary objects.
const TEMP: &str = "incoming.";

/// An S3-compatible bucket (`[s3]` in the aggregator's configuration). Credentials come from
/// the environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally
/// `AWS_SESSION_TOKEN`, or the instance's role), never from the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Region (`us-east-1` for most S3-compatible servers).
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint URL of an S3-compatible server (MinIO, Ceph, moto, …); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow a plain-HTTP endpoint (a server on a private network or loopback).
    #[serde(default)]
    pub allow_http: bool,
    /// Virtual-hosted-style addressing (`bucket.host/key`); path style (`host/bucket/key`)
    /// when false, as most S3-compatible servers expect.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// Key prefix inside the bucket (several deployments may share one bucket).
    #[serde(default)]
    pub prefix: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// A blob-store failure (never shown to callers: they see a 5xx).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The object store refused or failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Local I/O (fsync, the directory).
    #[error("blob I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A blob name that is not a valid object path.
    #[error("invalid blob name {0:?}")]
    Name(String),
}

/// The blob store: a local directory or an S3 bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The directory of a local store (to fsync what object_store does not).
    local: Option<Arc<LocalFileSystem>>,
    /// What the store is, for logs and errors (`dir /var/lib/…` or `s3://bucket/prefix`).
    describe: String,
}

impl BlobStore {
    /// Opens (creating if needed) a local store at `root`, removing temporary files a crash
    /// left that were last written more than `stale_after` ago (zero: all — for a directory
    /// one replica owns; replicas sharing a directory must not remove each other's writes in
    /// progress). Returns how many it removed.
    pub fn open_local(
        root: impl Into<PathBuf>,
        stale_after: std::time::Duration,
    ) -> Result<(Self, usize), BlobError> {
        let root = root.into();
        cryptflow_services::private_fs::create_dir_all(&root)?;
        let mut removed = 0;
        // Other replicas may rename or remove files meanwhile: a file gone is skipped.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for round in std::fs::read_dir(&root)? {
            let round = round?;
            if !round.file_type()?.is_dir() {
                continue;
            }
            let entries = match std::fs::read_dir(round.path()) {
                Err(e) if gone(&e) => continue,
                other => other?,
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Ours, and object_store's own staging files (`<name>#<n>`).
                if !(name.starts_with(TEMP) || name.contains('#')) {
                    continue;
                }
                let stale = stale_after.is_zero()
                    || match entry.metadata().and_then(|m| m.modified()) {
                        Ok(t) => t.elapsed().is_ok_and(|age| age > stale_after),
                        Err(e) if gone(&e) => false,
                        Err(e) => return Err(e.into()),
                    };
                if stale {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if gone(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let local = Arc::new(LocalFileSystem::new_with_prefix(&root)?);
        let describe = format!("dir {}", root.display());
        Ok((Self { store: local.clone(), local: Some(local), describe }, removed))
    }

    /// A store on an S3 bucket (nothing is contacted yet; see [`check`](Self::check)).
    pub fn open_s3(cfg: &S3Config) -> Result<Self, BlobError> {
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(cfg.virtual_hosted_style);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(b.build()?);
        let prefix = cfg.prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            s3
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.to_owned()))
        };
        let describe = format!("s3://{}/{prefix}", cfg.bucket);
        Ok(Self { store, local: None, describe })
    }

    /// The largest blob this store can hold under its final name (S3: one copy), if bounded.
    pub fn max_blob_bytes(&self) -> Option<u64> {
        self.local.is_none().then_some(S3_MAX_COPY_BYTES)
    }

    /// What this store is (`dir …` or `s3://…`).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether the store answers (a listing of one key): start-up and readiness.
    pub async fn check(&self) -> Result<(), BlobError> {
        let mut list = self.store.list(Some(&ObjectPath::from("readiness")));
        if let Some(item) = list.next().await {
            item?;
        }
        Ok(())
    }

    fn path(round: &str, name: &str) -> Result<ObjectPath, BlobError> {
        let p = ObjectPath::parse(format!("{round}/{name}"))
            .map_err(|_| BlobError::Name(format!("{round}/{name}")))?;
        if p.parts().count() != 2 {
            return Err(BlobError::Name(format!("{round}/{name}")));
        }
        Ok(p)
    }

    /// Starts writing a blob of `round`; the data becomes visible under its name only when
    /// [`BlobWriter::finish`] succeeds.
    pub fn writer(&self, round: &str) -> Result<BlobWriter, BlobError> {
        let mut token = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
        let tmp = Self::path(round, &format!("{TEMP}{}", hex::encode(token)))?;
        if let Some(local) = &self.local {
            // The round's directory private (object_store would create it world-readable).
            if let Some(dir) = local.path_to_filesystem(&tmp)?.parent() {
                cryptflow_services::private_fs::create_dir_all(dir)?;
            }
        }
        let inner = BufWriter::with_capacity(self.store.clone(), tmp.clone(), PART_BYTES)
            .with_max_concurrency(1);
        Ok(BlobWriter { blobs: self.clone(), round: round.to_owned(), tmp, inner: Some(inner) })
    }

    /// Durably stores `bytes` as `round/name`, replacing any previous blob atomically.
    pub async fn put(&self, round: &str, name: &str, bytes: Bytes) -> Result<(), BlobError> {
        let mut w = self.writer(round)?;
        w.write(bytes).await?;
        w.finish(name).await
    }

    /// Reads `round/name` whole (small blobs and tests).
    pub async fn get(&self, round: &str, name: &str) -> Result<Bytes, BlobError> {
        Ok(self.store.get(&Self::path(round, name)?).await?.bytes().await?)
    }

    /// Reads the bytes `range` of `round/name`.
    pub async fn get_range(
        &self,
        round: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        Ok(self.store.get_range(&Self::path(round, name)?, range).await?)
    }

    /// Streams `round/name`: its length and its bytes.
    pub async fn stream(
        &self,
        round: &str,
        name: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobError>>), BlobError> {
        let got = self.store.get(&Self::path(round, name)?).await?;
        let len = got.meta.size;
        Ok((len, got.into_stream().map_err(BlobError::from).boxed()))
    }

    /// Whether `round/name` exists.
    pub async fn exists(&self, round: &str, name: &str) -> Result<bool, BlobError> {
        match self.store.head(&Self::path(round, name)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `round/name` (absent is fine).
    pub async fn delete(&self, round: &str, name: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::path(round, name)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Names of `round`'s blobs, sorted; temporary objects only with `temporary`.
    pub async fn list(&self, round: &str, temporary: bool) -> Result<Vec<String>, BlobError> {
        let prefix = ObjectPath::parse(round).map_err(|_| BlobError::Name(round.to_owned()))?;
        let mut out: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location.filename().unwrap_or_default().to_owned())
            .try_collect()
            .await?;
        out.retain(|n| !n.is_empty() && n.starts_with(TEMP) == temporary);
        out.sort();
        Ok(out)
    }

    /// On a local store: makes the file private and fsyncs it, or fsyncs its directory.
    fn fsync_local(&self, p: &ObjectPath, dir: bool) -> Result<(), BlobError> {
        if let Some(local) = &self.local {
            let file = local.path_to_filesystem(p)?;
            #[cfg(unix)]
            if !dir {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
            let target = if dir { file.parent().map(PathBuf::from).unwrap_or(file) } else { file };
            #[cfg(unix)]
            std::fs::File::open(&target)?.sync_all()?;
        }
        Ok(())
    }
}

/// A blob being written. Dropped without [`finish`](Self::finish) it leaves nothing visible
/// (a multipart write already begun is aborted in the background).
pub struct BlobWriter {
    blobs: BlobStore,
    round: String,
    tmp: ObjectPath,
    inner: Option<BufWriter>,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter").field("tmp", &self.tmp).finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Appends `bytes` (sent as a part once [`PART_BYTES`] are buffered).
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        match &mut self.inner {
            Some(w) => Ok(w.put(bytes).await?),
            None => Err(BlobError::Name("blob already finished".into())),
        }
    }

    /// Completes the write (fsynced on a local store) and renames it to `name`, replacing an
    /// existing blob atomically.
    pub async fn finish(mut self, name: &str) -> Result<(), BlobError> {
        let Some(mut w) = self.inner.take() else {
            return Err(BlobError::Name("blob already finished".into()));
        };
        let target = BlobStore::path(&self.round, name)?;
        let outcome = async {
            w.shutdown().await?;
            let (blobs, tmp) = (self.blobs.clone(), self.tmp.clone());
            tokio::task::spawn_blocking(move || blobs.fsync_local(&tmp, false))
                .await
                .map_err(std::io::Error::other)??;
            self.blobs.store.rename(&self.tmp, &target).await?;
            let blobs = self.blobs.clone();
            let t = target.clone();
            tokio::task::spawn_blocking(move || blobs.fsync_local(&t, true))
                .await
                .map_err(std::io::Error::other)?
        }
        .await;
        if outcome.is_err() {
            let _ = self.blobs.store.delete(&self.tmp).await;
        }
        outcome
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(mut w) = self.inner.take() {
            let (store, tmp) = (self.blobs.store.clone(), self.tmp.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = w.abort().await;
                    let _ = store.delete(&tmp).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_range_replace_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            BlobStore::open_local(dir.path().join("blobs"), Default::default()).unwrap();
        store.put("r1", "alice", Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(store.get("r1", "alice").await.unwrap(), &b"one"[..]);
        let mut w = store.writer("r1").unwrap();
        w.write(Bytes::from_static(b"tw")).await.unwrap();
        w.write(Bytes::from_static(b"o!")).await.unwrap();
        w.finish("alice").await.unwrap();
        assert_eq!(store.get_range("r1", "alice", 1..3).await.unwrap(), &b"wo"[..]);
        assert!(store.exists("r1", "alice").await.unwrap());
        assert!(!store.exists("r1", "bob").await.unwrap());
        // An abandoned writer leaves nothing visible, even past one multipart part.
        let mut w = store.writer("r1").unwrap();
        w.write(Bytes::from(vec![7u8; PART_BYTES + 10])).await.unwrap();
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(store.list("r1", false).await.unwrap(), vec!["alice"]);
        assert!(store.list("r1", true).await.unwrap().is_empty());
        store.delete("r1", "alice").await.unwrap();
        store.delete("r1", "alice").await.unwrap();
        assert!(store.list("r1", false).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_large_blob_is_written_in_parts_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlobStore::open_local(dir.path(), Default::default()).unwrap();
        let data: Vec<u8> = (0..(2 * PART_BYTES + 123)).map(|i| (i * 31 % 251) as u8).collect();
        let mut w = store.writer("r1").unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.finish("big").await.unwrap();
        assert_eq!(store.get("r1", "big").await.unwrap(), &data[..]);
        let (len, stream) = store.stream("r1", "big").await.unwrap();
        assert_eq!(len, data.len() as u64);
        let back: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(back.concat(), data);
    }

    #[test]
    fn temporary_files_a_crash_left_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        std::fs::create_dir_all(root.join("r1")).unwrap();
        std::fs::write(root.join("r1").join("incoming.abc123"), b"torn").unwrap();
        std::fs::write(root.join("r1").join("upload.x#1"), b"staged").unwrap();
        std::fs::write(root.join("r1").join("kept"), b"ok").unwrap();
        // Shared with other replicas: fresh temporary files are theirs, in progress.
        let (_, removed) =
            BlobStore::open_local(&root, std::time::Duration::from_secs(600)).unwrap();
        assert_eq!(removed, 0);
        let (_, removed) = BlobStore::open_local(&root, Default::default()).unwrap();
        assert_eq!(removed, 2);
        assert!(root.join("r1").join("kept").exists());
    }

    #[test]
    fn names_cannot_escape_their_round() {
        assert!(BlobStore::path("r1", "../x").is_err());
        assert!(BlobStore::path("r1", "a/b").is_err());
        assert!(BlobStore::path("r1", "upload.site-1.ab").is_ok());
    }
}
