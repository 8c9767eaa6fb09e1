//! Progress reporting for long steps (encryption and upload, deposits, download, decryption).

use std::fmt;
use std::sync::Arc;

/// One progress event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Encryption of this many values started (it is streamed with the upload).
    Encrypting {
        /// Values (the count slot included).
        values: u64,
    },
    /// Upload progress (reported per chunk; restarts from 0 on a retry).
    Uploading {
        /// Bytes handed to the connection so far.
        sent: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Key shares deposited with this many key managers of the committee.
    Depositing {
        /// Deposits accepted so far.
        done: u8,
        /// Nodes in the committee.
        nodes: u8,
    },
    /// Download progress (restarts from 0 on a retry).
    Downloading {
        /// Bytes received so far.
        received: u64,
        /// Bytes expected.
        total: u64,
    },
    /// Decryption of the aggregate started.
    Decrypting,
}

/// A progress callback; called from async tasks and blocking threads, so it must be cheap and
/// must not block.
#[derive(Clone)]
pub struct ProgressFn(Arc<dyn Fn(Progress) + Send + Sync>);

impl ProgressFn {
    /// Wraps a callback.
    pub fn new(f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn report(&self, p: Progress) {
        (self.0)(p)
    }
}

impl fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressFn")
    }
}

pub(crate) fn report(progress: Option<&ProgressFn>, p: Progress) {
    if let Some(f) = progress {
        f.report(p);
    }
}
