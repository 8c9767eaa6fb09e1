//! Running the fold's jobs ([`crate::fold`]) on any replica.
//!
//! Each replica runs `max_concurrent_jobs` workers. A worker leases the next runnable job for
//! `job_lease_secs` (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, see
//! [`Store::lease_job`](crate::store::Store::lease_job)), runs it while renewing the lease
//! (every third of its length, until the output is written, as long as the job makes
//! progress), and completes it only if it still holds the lease; a job that learns it lost
//! its lease stops at its next range. A
//! replica that dies holding a lease simply stops renewing it: once it expires another
//! replica re-runs the job, whose output replaces the first one's under the same name —
//! nothing is lost and nothing is counted twice. A job that fails is retried after a pause;
//! after [`MAX_ATTEMPTS`] leases (also leases that ended in a crash), or at once when a
//! stored upload does not match its digest, the round fails with the reason.

use crate::fold::{self, FoldError};
use crate::store::{JobKind, Lease};
use crate::AppState;
use cryptflow_services::protocol;
use cryptflow_services::RoundId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Leases of one job before its round fails.
pub const MAX_ATTEMPTS: u32 = 5;
/// Lease lengths without progress after which a running job gives its lease up.
const STALL_LEASES: u64 = 10;
/// Seconds before a failed job may be leased again.
const RETRY_SECS: i64 = 2;

/// One worker: leases and runs jobs until `stop` turns true; idles `idle` when none is
/// runnable.
pub async fn worker(s: AppState, idle: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let ran = match run_one(&s).await {
            Ok(ran) => ran,
            Err(e) => {
                tracing::warn!(error = %e, "leasing a fold job failed");
                false
            }
        };
        if !ran {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Leases and runs one job; `false` if none was runnable.
pub async fn run_one(s: &AppState) -> Result<bool, crate::store::StoreError> {
    let lease_secs = s.tuning.job_lease_secs.max(1);
    let Some(lease) = s.store.lease_job(&s.replica, s.clock.now(), lease_secs).await? else {
        return Ok(false);
    };
    let round = lease.job.round_id.clone();
    if lease.job.attempts > MAX_ATTEMPTS {
        // Leased again and again without completing or failing: the replicas running it die
        // (out of memory, say). Stop feeding it replicas.
        let why = format!(
            "fold job {} was leased {} times without completing (do the replicas running it crash?)",
            lease.job.job, lease.job.attempts
        );
        let _ = crate::lifecycle::fail(s, &round, &why).await;
        return Ok(true);
    }
    let started = Instant::now();
    tracing::debug!(round = %round, job = lease.job.job, kind = ?lease.job.kind, holder = %lease.holder, "job leased");
    match run(s, &lease).await {
        Ok(()) => {
            s.metrics
                .fold_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            s.metrics.jobs_completed.fetch_add(1, Ordering::Relaxed);
            if lease.job.kind == JobKind::Publish {
                if let Err(e) = crate::lifecycle::advance(s, &round).await {
                    tracing::warn!(round = %round, problem = ?e.problem(), "reporting the set failed; the background task retries");
                }
            }
        }
        Err(FoldError::LeaseLost) => {
            tracing::warn!(round = %round, job = lease.job.job, "lost the lease of a job; another replica re-runs it");
        }
        Err(FoldError::CorruptPartial(job)) => {
            // The partial sum's own job must run again; the publication waits for it.
            tracing::warn!(round = %round, job, "a partial sum does not match its digest; re-running its job");
            if s.store.reset_job(&lease, job).await? {
                s.store.set_lease_expiry(&lease, s.clock.now()).await?;
            }
        }
        Err(FoldError::Corrupt(client)) => {
            let why = format!(
                "the stored upload of {client} does not match the digest it was admitted with"
            );
            let _ = crate::lifecycle::fail(s, &round, &why).await;
        }
        Err(e) => {
            s.metrics.jobs_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(round = %round, job = lease.job.job, attempt = lease.job.attempts, error = %e, "fold job failed");
            if lease.job.attempts >= MAX_ATTEMPTS {
                let why = format!("fold job {} failed {MAX_ATTEMPTS} times: {e}", lease.job.job);
                let _ = crate::lifecycle::fail(s, &round, &why).await;
            } else {
                s.store.set_lease_expiry(&lease, s.clock.now() + RETRY_SECS).await?;
            }
        }
    }
    Ok(true)
}

/// Runs a leased job while renewing its lease every third of its length, in the same task
/// (dropped with it). The renewals stop — and the job learns it lost the lease at its next
/// range — when the job has made no progress (no new range) for [`STALL_LEASES`] lease
/// lengths: a job hung on a read or a write must not hold its lease forever.
async fn run(s: &AppState, lease: &Lease) -> Result<(), FoldError> {
    let lost = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let lease_secs = s.tuning.job_lease_secs.max(1);
    let job = run_leased(s, lease, &lost, &progress);
    tokio::pin!(job);
    let mut beat = tokio::time::interval(Duration::from_secs(lease_secs).div_f64(3.0));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        tokio::select! {
            outcome = &mut job => return outcome,
            _ = beat.tick() => {
                let now = progress.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > Duration::from_secs(lease_secs * STALL_LEASES) {
                    tracing::warn!(round = %lease.job.round_id, job = lease.job.job, "the job made no progress: giving up its lease");
                    lost.store(true, Ordering::Relaxed);
                    continue;
                }
                if lost.load(Ordering::Relaxed) {
                    continue;
                }
                let until = s.clock.now().saturating_add(lease_secs as i64);
                match s.store.set_lease_expiry(lease, until).await {
                    Ok(true) => {}
                    Ok(false) => lost.store(true, Ordering::Relaxed),
                    // A database hiccup: try again; completion checks the lease anyway.
                    Err(e) => tracing::warn!(error = %e, "renewing a job lease failed"),
                }
            }
        }
    }
}

async fn run_leased(
    s: &AppState,
    lease: &Lease,
    lost: &AtomicBool,
    progress: &AtomicU64,
) -> Result<(), FoldError> {
    let job = &lease.job;
    let internal = |e: &dyn std::fmt::Display| FoldError::Task(e.to_string());
    let ctx = s.fold_context(&job.round_id).await.map_err(|e| internal(&e))?;
    let keep_alive = || {
        progress.fetch_add(1, Ordering::Relaxed);
        std::future::ready(!lost.load(Ordering::Relaxed))
    };
    let at = fold::RoundBlobs {
        blobs: &s.blobs,
        round: &job.round_id,
        setup: &ctx.setup,
        span_blocks: ctx.span_blocks,
        batch: s.tuning.fold_batch_uploads,
    };
    match job.kind {
        JobKind::Fold => {
            let members = s
                .store
                .set_uploads(&job.round_id, job.first_member, job.members)
                .await
                .map_err(|e| internal(&e))?;
            if members.len() as u64 != job.members {
                return Err(FoldError::Task(format!(
                    "job {} names members {}..{} of a set of {}",
                    job.job,
                    job.first_member,
                    job.first_member + job.members,
                    ctx.set_size
                )));
            }
            let output = fold::run_fold(at, job.job, job.span, &members, keep_alive).await?;
            if !s.store.complete_job(lease, &output).await.map_err(|e| internal(&e))? {
                return Err(FoldError::LeaseLost);
            }
        }
        JobKind::Publish => {
            let contributors = u32::try_from(ctx.set_size).map_err(|e| internal(&e))?;
            let parts_of = |span| async move {
                s.store.fold_jobs_of_span(&job.round_id, span).await.map_err(|e| internal(&e))
            };
            let sha = fold::run_publish(at, contributors, parts_of, keep_alive).await?;
            if !s.store.complete_publication(lease, &sha).await.map_err(|e| internal(&e))? {
                return Err(FoldError::LeaseLost);
            }
            tracing::info!(round = %job.round_id, contributors, aggregate = %sha, "aggregate built");
        }
    }
    Ok(())
}

/// What a job needs of its round, read once per round and replica (a round's spec, span and
/// set never change once its set is fixed).
#[derive(Clone, Copy, Debug)]
pub struct FoldContext {
    /// The round's setup.
    pub setup: cryptflow_he::RoundSetup,
    /// Its span, in blocks.
    pub span_blocks: u64,
    /// The contributor set's size.
    pub set_size: u64,
}

impl AppState {
    /// The fold context of `round` (cached; a set fixed before `set_members` existed is
    /// copied there first).
    async fn fold_context(&self, round: &RoundId) -> Result<FoldContext, String> {
        if let Some(ctx) = self.fold_contexts.lock().ok().and_then(|m| m.get(round).copied()) {
            return Ok(ctx);
        }
        let row = self
            .store
            .round(round)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("round {round} is gone"))?;
        let set = row.set.as_ref().ok_or("no contributor set")?;
        self.store.ensure_set_members(round, set).await.map_err(|e| e.to_string())?;
        let ctx = FoldContext {
            setup: protocol::setup(&row.spec).map_err(|e| e.to_string())?,
            span_blocks: row.span_blocks,
            set_size: set.len() as u64,
        };
        if let Ok(mut m) = self.fold_contexts.lock() {
            if m.len() >= FOLD_CONTEXTS {
                m.clear();
            }
            m.insert(round.clone(), ctx);
        }
        Ok(ctx)
    }
}

/// Rounds whose fold context a replica keeps.
const FOLD_CONTEXTS: usize = 256;
