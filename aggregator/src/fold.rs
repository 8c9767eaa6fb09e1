//! Building the aggregate from the stored uploads of the contributor set: the unweighted sum,
//! range of blocks by range of blocks, each upload read only for the range at hand, so memory
//! is bounded by the range (about 1 MiB of running sum plus a batch of upload chunks) whatever
//! the model size `d` and the number of contributors. Every upload's SHA-256 is recomputed on
//! the way: a stored blob that is not what was admitted stops the fold.

use crate::blob::BlobStore;
use crate::store::UploadRow;
use cryptflow_he::wire::HEADER_LEN;
use cryptflow_he::{CiphertextKind, RoundSetup, RunningSum};
use cryptflow_services::{RoundId, Sha256Digest};
use sha2::{Digest, Sha256};
use std::io::Write;

/// Blocks per range (2^17 slots with N = 2048).
pub const BLOCKS_PER_RANGE: u64 = 64;
/// Uploads read and folded together in a range.
const BATCH: usize = 8;

/// A fold that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// Reading or writing blobs failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    /// The scheme refused (a length or header mismatch: a bug or a corrupt blob).
    #[error("fold: {0}")]
    He(#[from] cryptflow_he::Error),
    /// A stored upload does not hash to its digest.
    #[error("the stored upload of {0} does not match its digest")]
    Corrupt(String),
}

/// The blob name of an admitted upload.
pub fn upload_blob(client: &str, sha256: &Sha256Digest) -> String {
    format!("upload.{client}.{sha256}")
}

/// The blob name of the aggregate.
pub fn aggregate_blob(sha256: &Sha256Digest) -> String {
    format!("aggregate.{sha256}")
}

/// Sums the uploads of `set` into the aggregate blob; returns its digest and length.
pub fn build_aggregate(
    blobs: &BlobStore,
    round: &RoundId,
    setup: &RoundSetup,
    set: &[UploadRow],
) -> Result<(Sha256Digest, u64), FoldError> {
    let contributors =
        u32::try_from(set.len()).map_err(|_| std::io::Error::other("too many contributors"))?;
    let header = setup.header(CiphertextKind::Aggregate, contributors).to_bytes();
    let mut out = blobs.writer(round.as_str())?;
    let mut digest = Sha256::new();
    out.write_all(&header)?;
    digest.update(&header);
    let names: Vec<String> =
        set.iter().map(|u| upload_blob(u.client_id.as_str(), &u.sha256)).collect();
    let mut checks: Vec<Sha256> = set
        .iter()
        .zip(&names)
        .map(|(_, name)| {
            let h = blobs.get_range(round.as_str(), name, 0, HEADER_LEN)?;
            let mut s = Sha256::new();
            s.update(&h);
            Ok(s)
        })
        .collect::<Result<_, std::io::Error>>()?;
    let n = setup.ring_degree() as u64;
    let mut start = 0u64;
    while start < setup.slots() {
        let end = (start + BLOCKS_PER_RANGE * n).min(setup.slots());
        let mut sum = RunningSum::zero(setup, start..end)?;
        let bytes = setup.payload_range(start..end);
        let len = (bytes.end - bytes.start) as usize;
        for (names, checks) in names.chunks(BATCH).zip(checks.chunks_mut(BATCH)) {
            let chunks = names
                .iter()
                .map(|name| {
                    blobs.get_range(round.as_str(), name, HEADER_LEN as u64 + bytes.start, len)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (check, chunk) in checks.iter_mut().zip(&chunks) {
                check.update(chunk);
            }
            let parts: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            sum.add_payloads(&parts)?;
        }
        let packed = sum.pack();
        out.write_all(&packed)?;
        digest.update(&packed);
        start = end;
    }
    for (u, check) in set.iter().zip(checks) {
        if Sha256Digest(check.finalize().into()) != u.sha256 {
            return Err(FoldError::Corrupt(u.client_id.to_string()));
        }
    }
    let sha = Sha256Digest(digest.finalize().into());
    out.finish(&aggregate_blob(&sha))?;
    Ok((sha, setup.upload_len()))
}
