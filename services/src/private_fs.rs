//! Files and directories readable by their owner only: databases, blobs, key files, journals
//! and fetched means are the operator's or the site's business (mode 0600 for files, 0700 for
//! directories on Unix; elsewhere the platform's defaults).
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let key = dir.path().join("private/key.pem");
//! cryptflow_services::private_fs::create_dir_all(key.parent().unwrap()).unwrap();
//! cryptflow_services::private_fs::write_new(&key, b"secret").unwrap();
//! assert!(cryptflow_services::private_fs::write_new(&key, b"again").is_err()); // never overwrites
//! ```

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Open options whose files, when created, are readable by the owner only; the caller adds
/// the access flags (`create_new`, `append`, …).
pub fn options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Creates `dir` and its missing parents, readable by the owner only.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut b = DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Writes `contents` to a new file readable by the owner only; an existing file is an error
/// (`AlreadyExists`), never overwritten.
pub fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = options().write(true).create_new(true).open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
