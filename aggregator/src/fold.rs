//! Building the aggregate from the stored uploads of the contributor set, as jobs any replica
//! can run: the unweighted sum, split over (batch of uploads × span of slots).
//!
//! - A round's slots are cut into **spans** of `span_blocks` blocks (fixed when the round is
//!   created). While an upload is received its SHA-256 is taken per span too
//!   ([`SpanHasher`]), so a job that reads one span of an upload can check it against what was
//!   admitted without reading the rest.
//! - A **fold job** sums uploads `[first, first + members)` of the contributor set (sorted by
//!   client) over one span into the blob `partial.<job>` — the packed partial sum, in the
//!   upload payload's own format (packing is exact and addition is modular, so partial sums
//!   add like uploads).
//! - The **publication job** (job 0, once every fold job is done) sums the partial sums of
//!   each span into the aggregate blob, checking each partial's digest on the way.
//!
//! Inside a job the span is walked [`BLOCKS_PER_RANGE`] blocks at a time, and the inputs
//! (uploads, or partial sums for the publication) are read for that range `batch` at a time,
//! so a job's memory is about `(batch + 2) ×` a range's bytes (under 1 MiB each) whatever
//! `d` and `K` are. A job's output is written under a fixed name
//! and is a function of its inputs only: a job re-run after a lost lease writes the same
//! bytes, replacing the first output atomically, and nothing is counted twice.

use crate::blob::{BlobError, BlobStore, BlobWriter};
use crate::store::{JobKind, JobRow, UploadRow};
use bytes::Bytes;
use cryptflow_he::wire::HEADER_LEN;
use cryptflow_he::{CiphertextKind, RoundSetup, RunningSum};
use cryptflow_services::{RoundId, Sha256Digest};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::ops::Range;

/// Blocks summed at once inside a job (2^17 slots with N = 2048).
pub const BLOCKS_PER_RANGE: u64 = 64;
/// The default span of a fold job: 8192 blocks (2^24 slots with N = 2048, about 56 MiB of
/// each upload at w = 28).
pub const DEFAULT_SPAN_BLOCKS: u64 = 8192;

/// A fold job that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// Reading or writing blobs failed (retried).
    #[error("blob store: {0}")]
    Blob(#[from] BlobError),
    /// The scheme refused (a length or header mismatch: a bug or a corrupt blob).
    #[error("fold: {0}")]
    He(#[from] cryptflow_he::Error),
    /// A stored upload does not hash to what was admitted: the round cannot be completed.
    #[error("the stored upload of {0} does not match its digest")]
    Corrupt(String),
    /// A partial sum does not hash to what its job recorded (its job is re-run).
    #[error("partial sum {0} does not match its digest")]
    CorruptPartial(u64),
    /// The lease was lost (another replica re-runs the job).
    #[error("the job's lease was lost")]
    LeaseLost,
    /// A task panicked or was cancelled.
    #[error("fold task: {0}")]
    Task(String),
}

/// The blob name of an admitted upload.
pub fn upload_blob(client: &str, sha256: &Sha256Digest) -> String {
    format!("upload.{client}.{sha256}")
}

/// The blob name of the aggregate.
pub fn aggregate_blob(sha256: &Sha256Digest) -> String {
    format!("aggregate.{sha256}")
}

/// The blob name of fold job `job`'s partial sum.
pub fn partial_blob(job: u64) -> String {
    format!("partial.{job}")
}

/// Spans of a round.
pub fn spans(setup: &RoundSetup, span_blocks: u64) -> u64 {
    setup.blocks().div_ceil(span_blocks.max(1))
}

/// The slots of span `s`.
pub fn span_slots(setup: &RoundSetup, span_blocks: u64, s: u64) -> Range<u64> {
    let n = setup.ring_degree() as u64;
    let start = s.saturating_mul(span_blocks.max(1)).saturating_mul(n).min(setup.slots());
    start..start.saturating_add(span_blocks.max(1).saturating_mul(n)).min(setup.slots())
}

/// The jobs of a contributor set of `contributors` uploads: the publication (job 0), then
/// one fold job per (span, batch of at most `batch` uploads).
pub fn plan(
    round: &RoundId,
    setup: &RoundSetup,
    span_blocks: u64,
    contributors: u64,
    batch: u64,
) -> Vec<JobRow> {
    let job = |job, kind, first_member, members, span| JobRow {
        round_id: round.clone(),
        job,
        kind,
        first_member,
        members,
        span,
        done: false,
        output_sha256: None,
        attempts: 0,
    };
    let mut jobs = vec![job(0, JobKind::Publish, 0, contributors, 0)];
    let batch = batch.max(1);
    for span in 0..spans(setup, span_blocks) {
        let mut first = 0;
        while first < contributors {
            let members = batch.min(contributors - first);
            jobs.push(job(jobs.len() as u64, JobKind::Fold, first, members, span));
            first += members;
        }
    }
    jobs
}

/// SHA-256 of an upload's payload per span, fed the payload as it arrives.
#[derive(Clone, Debug)]
pub struct SpanHasher {
    /// End of each span, in payload bytes.
    ends: Vec<u64>,
    at: u64,
    current: Sha256,
    done: Vec<Sha256Digest>,
}

impl SpanHasher {
    /// A hasher for the uploads of a round.
    pub fn new(setup: &RoundSetup, span_blocks: u64) -> Self {
        let ends = (0..spans(setup, span_blocks))
            .map(|s| setup.payload_range(span_slots(setup, span_blocks, s)).end)
            .collect();
        Self { ends, at: 0, current: Sha256::new(), done: Vec::new() }
    }

    /// Feeds the next payload bytes (bytes past the last span are ignored: the caller
    /// refuses an upload of the wrong length).
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some(&end) = self.ends.get(self.done.len()) else { return };
            let take = usize::try_from(end - self.at).unwrap_or(usize::MAX).min(bytes.len());
            self.current.update(&bytes[..take]);
            self.at += take as u64;
            bytes = &bytes[take..];
            if self.at == end {
                let d = std::mem::take(&mut self.current).finalize();
                self.done.push(Sha256Digest(d.into()));
            }
        }
    }

    /// The digests, one per span (fewer if the payload was short).
    pub fn finish(self) -> Vec<Sha256Digest> {
        self.done
    }
}

/// Adds `parts` (each covering the sum's slots) to `sum` on the blocking pool.
async fn add_to(mut sum: RunningSum, parts: Vec<Bytes>) -> Result<RunningSum, FoldError> {
    tokio::task::spawn_blocking(move || {
        let slices: Vec<&[u8]> = parts.iter().map(|b| b.as_ref()).collect();
        sum.add_payloads(&slices)?;
        Ok(sum)
    })
    .await
    .map_err(|e| FoldError::Task(e.to_string()))?
}

/// Sums the blobs `names` over `slots` (one span), [`BLOCKS_PER_RANGE`] blocks at a time and
/// `r.batch` blobs at a time, appending the packed sums to `out` and `digest`; each blob holds
/// the span's bytes from offset `skip`. Returns each blob's SHA-256 over the bytes read,
/// continuing `seeds`. `keep_alive` is awaited before each range.
#[allow(clippy::too_many_arguments)]
async fn sum_span<F, Fut>(
    r: RoundBlobs<'_>,
    names: &[String],
    seeds: Vec<Sha256>,
    skip: u64,
    slots: Range<u64>,
    keep_alive: &mut F,
    out: &mut BlobWriter,
    digest: &mut Sha256,
) -> Result<Vec<Sha256Digest>, FoldError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let base = r.setup.payload_range(slots.clone()).start;
    let batch = usize::try_from(r.batch.max(1)).unwrap_or(usize::MAX);
    let mut checks = seeds;
    for range in ranges(r.setup, slots) {
        if !keep_alive().await {
            return Err(FoldError::LeaseLost);
        }
        let bytes = r.setup.payload_range(range.clone());
        let at = skip + bytes.start - base..skip + bytes.end - base;
        let mut sum = RunningSum::zero(r.setup, range)?;
        for (group, group_checks) in names.chunks(batch).zip(checks.chunks_mut(batch)) {
            let chunks = futures_util::future::try_join_all(
                group.iter().map(|n| r.blobs.get_range(r.round.as_str(), n, at.clone())),
            )
            .await?;
            for (check, chunk) in group_checks.iter_mut().zip(&chunks) {
                check.update(chunk);
            }
            sum = add_to(sum, chunks).await?;
        }
        let packed = tokio::task::spawn_blocking(move || sum.pack())
            .await
            .map_err(|e| FoldError::Task(e.to_string()))?;
        digest.update(&packed);
        out.write(Bytes::from(packed)).await?;
    }
    Ok(checks.into_iter().map(|c| Sha256Digest(c.finalize().into())).collect())
}

/// The ranges of [`BLOCKS_PER_RANGE`] blocks that make up `span`.
fn ranges(setup: &RoundSetup, span: Range<u64>) -> impl Iterator<Item = Range<u64>> {
    let step = BLOCKS_PER_RANGE * setup.ring_degree() as u64;
    let mut start = span.start;
    std::iter::from_fn(move || {
        (start < span.end).then(|| {
            let r = start..(start + step).min(span.end);
            start = r.end;
            r
        })
    })
}

/// The round a job works on: where its blobs are and how its slots are cut.
#[derive(Clone, Copy, Debug)]
pub struct RoundBlobs<'a> {
    /// The blob store.
    pub blobs: &'a BlobStore,
    /// The round.
    pub round: &'a RoundId,
    /// Its setup.
    pub setup: &'a RoundSetup,
    /// Its span, in blocks.
    pub span_blocks: u64,
    /// Inputs read and summed together in a range (bounds a job's memory whatever K is).
    pub batch: u64,
}

/// Runs fold job `job`: sums `members` (admitted uploads, in set order) over `span` into
/// `partial.<job>`; returns the partial's digest. `keep_alive` is awaited between ranges and
/// answers whether the lease is still held.
pub async fn run_fold<F, Fut>(
    r: RoundBlobs<'_>,
    job: u64,
    span: u64,
    members: &[UploadRow],
    mut keep_alive: F,
) -> Result<Sha256Digest, FoldError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let RoundBlobs { blobs, round, setup, span_blocks, .. } = r;
    let slots = span_slots(setup, span_blocks, span);
    let names: Vec<String> =
        members.iter().map(|u| upload_blob(u.client_id.as_str(), &u.sha256)).collect();
    // An upload whose span digests do not fit the round's spans (admitted before span
    // digests existed, or under another span) is checked whole against its admitted SHA-256,
    // the header hashed first — possible when the round folds as one span (the migration makes
    // such rounds so); otherwise it cannot be checked and stops the round.
    let count = spans(setup, span_blocks);
    let whole = |u: &UploadRow| u.span_sha256.len() as u64 != count;
    let mut seeds = Vec::with_capacity(members.len());
    for (u, name) in members.iter().zip(&names) {
        let mut h = Sha256::new();
        if whole(u) {
            if count != 1 {
                return Err(FoldError::Corrupt(u.client_id.to_string()));
            }
            h.update(blobs.get_range(round.as_str(), name, 0..HEADER_LEN as u64).await?);
        }
        seeds.push(h);
    }
    let mut out = blobs.writer(round.as_str())?;
    let mut digest = Sha256::new();
    // The span's bytes start after the header and the earlier spans' payload.
    let skip = HEADER_LEN as u64 + setup.payload_range(slots.clone()).start;
    let checks =
        sum_span(r, &names, seeds, skip, slots, &mut keep_alive, &mut out, &mut digest).await?;
    for (u, check) in members.iter().zip(checks) {
        let expected = if whole(u) { Some(&u.sha256) } else { u.span_sha256.get(span as usize) };
        if Some(&check) != expected {
            return Err(FoldError::Corrupt(u.client_id.to_string()));
        }
    }
    out.finish(&partial_blob(job)).await?;
    Ok(Sha256Digest(digest.finalize().into()))
}

/// Runs the publication job: sums the partial sums of the round's fold jobs (all done;
/// `parts_of(span)` lists those of one span) span by span into the aggregate blob of
/// `contributors` uploads; returns its digest.
pub async fn run_publish<F, Fut, P, PFut>(
    r: RoundBlobs<'_>,
    contributors: u32,
    mut parts_of: P,
    mut keep_alive: F,
) -> Result<Sha256Digest, FoldError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
    P: FnMut(u64) -> PFut,
    PFut: Future<Output = Result<Vec<JobRow>, FoldError>>,
{
    let RoundBlobs { blobs, round, setup, span_blocks, .. } = r;
    let header = setup.header(CiphertextKind::Aggregate, contributors).to_bytes();
    let mut out = blobs.writer(round.as_str())?;
    let mut digest = Sha256::new();
    digest.update(&header);
    out.write(Bytes::copy_from_slice(&header)).await?;
    for span in 0..spans(setup, span_blocks) {
        let slots = span_slots(setup, span_blocks, span);
        let parts = parts_of(span).await?;
        if parts.iter().any(|j| j.kind != JobKind::Fold || j.span != span || !j.done) {
            return Err(FoldError::Task(format!("span {span}: a partial sum is not ready")));
        }
        let names: Vec<String> = parts.iter().map(|j| partial_blob(j.job)).collect();
        // A partial sum holds its span's bytes only.
        let seeds = names.iter().map(|_| Sha256::new()).collect();
        let checks =
            sum_span(r, &names, seeds, 0, slots, &mut keep_alive, &mut out, &mut digest).await?;
        for (j, check) in parts.iter().zip(checks) {
            if Some(check) != j.output_sha256 {
                return Err(FoldError::CorruptPartial(j.job));
            }
        }
    }
    let sha = Sha256Digest(digest.finalize().into());
    out.finish(&aggregate_blob(&sha)).await?;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptflow_he::planner::{plan as plan_round, PlanRequest, Weighting};
    use cryptflow_he::{MaskSeed, ParameterSet};

    fn setup_for(d: u64) -> RoundSetup {
        let params = ParameterSet::default_128();
        let req = PlanRequest {
            max_clients: 64,
            clip_bound: 1.0,
            max_abs_error: 1e-6,
            weighting: Weighting::Uniform,
            dp: None,
        };
        let p = plan_round(&params, &req).unwrap();
        RoundSetup::try_new(p, MaskSeed::generate().unwrap(), d).unwrap()
    }

    #[test]
    fn a_plan_covers_every_member_of_every_span_once() {
        let round = RoundId::parse("r").unwrap();
        let plan_for = |d: u64, span_blocks: u64, k: u64, batch: u64| {
            let setup = setup_for(d);
            (setup, plan(&round, &setup, span_blocks, k, batch))
        };
        for (d, span_blocks, k, batch) in [(5000, 1, 7, 3), (100_000, 8, 64, 8), (10, 8192, 1, 16)]
        {
            let (setup, jobs) = plan_for(d, span_blocks, k, batch);
            assert_eq!(jobs[0].kind, JobKind::Publish);
            let spans = spans(&setup, span_blocks);
            let mut covered = vec![vec![0u32; k as usize]; spans as usize];
            for j in &jobs[1..] {
                for m in j.first_member..j.first_member + j.members {
                    covered[j.span as usize][m as usize] += 1;
                }
                assert!(j.members <= batch);
            }
            assert!(covered.iter().flatten().all(|&c| c == 1), "d={d}");
            let last = span_slots(&setup, span_blocks, spans - 1);
            assert_eq!(last.end, setup.slots());
        }
    }

    #[test]
    fn span_digests_do_not_depend_on_how_the_payload_arrives() {
        let setup = setup_for(50_000);
        let payload: Vec<u8> = (0..setup.payload_len()).map(|i| (i * 7 % 256) as u8).collect();
        let whole = {
            let mut h = SpanHasher::new(&setup, 4);
            h.update(&payload);
            h.finish()
        };
        assert_eq!(whole.len() as u64, spans(&setup, 4));
        for chunk in [1, 999, 7168, 100_000] {
            let mut h = SpanHasher::new(&setup, 4);
            for c in payload.chunks(chunk) {
                h.update(c);
            }
            assert_eq!(h.finish(), whole, "chunks of {chunk}");
        }
        let s1 = setup.payload_range(span_slots(&setup, 4, 1));
        assert_eq!(whole[1], Sha256Digest::of(&payload[s1.start as usize..s1.end as usize]));
    }
}
