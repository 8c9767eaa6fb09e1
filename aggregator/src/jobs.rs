//! Running the fold's jobs ([`crate::fold`]) on any replica.
//!
//! Each replica runs `max_concurrent_jobs` workers. A worker leases the next runnable job for
//! `job_lease_secs` (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, see
//! [`Store::lease_job`](crate::store::Store::lease_job)), runs it while a heartbeat renews
//! the lease (every third of its length, until the output is written), and completes it only
//! if it still holds the lease; a job that learns it lost its lease stops at its next range. A
//! replica that dies holding a lease simply stops renewing it: once it expires another
//! replica re-runs the job, whose output replaces the first one's under the same name —
//! nothing is lost and nothing is counted twice. A job that fails is retried after a pause;
//! after [`MAX_ATTEMPTS`] leases (also leases that ended in a crash), or at once when a
//! stored upload does not match its digest, the round fails with the reason.

use crate::fold::{self, FoldError};
use crate::store::{JobKind, Lease};
use crate::AppState;
use cryptflow_services::protocol;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Leases of one job before its round fails.
pub const MAX_ATTEMPTS: u32 = 5;
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

/// Runs a leased job while a heartbeat renews its lease (every third of its length, for the
/// whole job: the reads, the sums and the final write of its output).
async fn run(s: &AppState, lease: &Lease) -> Result<(), FoldError> {
    let lost = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (store, clock, lease, lost) =
            (s.store.clone(), s.clock.clone(), lease.clone(), lost.clone());
        let lease_secs = s.tuning.job_lease_secs.max(1);
        tokio::spawn(async move {
            let every = Duration::from_secs(lease_secs).div_f64(3.0);
            loop {
                tokio::time::sleep(every).await;
                let until = clock.now().saturating_add(lease_secs as i64);
                match store.set_lease_expiry(&lease, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    // A database hiccup: try again; completion checks the lease anyway.
                    Err(e) => tracing::warn!(error = %e, "renewing a job lease failed"),
                }
            }
        })
    };
    let outcome = run_leased(s, lease, &lost).await;
    heartbeat.abort();
    outcome
}

async fn run_leased(s: &AppState, lease: &Lease, lost: &AtomicBool) -> Result<(), FoldError> {
    let job = &lease.job;
    let internal = |e: &dyn std::fmt::Display| FoldError::Task(e.to_string());
    let row = s
        .store
        .round(&job.round_id)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| FoldError::Task(format!("round {} is gone", job.round_id)))?;
    let set = row.set.clone().ok_or_else(|| FoldError::Task("no contributor set".into()))?;
    let setup = protocol::setup(&row.spec).map_err(|e| internal(&e))?;
    let keep_alive = || std::future::ready(!lost.load(Ordering::Relaxed));
    let at = fold::RoundBlobs {
        blobs: &s.blobs,
        round: &job.round_id,
        setup: &setup,
        span_blocks: row.span_blocks,
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
                    set.len()
                )));
            }
            let output = fold::run_fold(at, job.job, job.span, &members, keep_alive).await?;
            if !s.store.complete_job(lease, &output).await.map_err(|e| internal(&e))? {
                return Err(FoldError::LeaseLost);
            }
        }
        JobKind::Publish => {
            let folds = s.store.jobs(&job.round_id).await.map_err(|e| internal(&e))?;
            let contributors = u32::try_from(set.len()).map_err(|e| internal(&e))?;
            let sha = fold::run_publish(at, contributors, &folds, keep_alive).await?;
            if !s.store.complete_publication(lease, &sha).await.map_err(|e| internal(&e))? {
                return Err(FoldError::LeaseLost);
            }
            tracing::info!(round = %job.round_id, contributors, aggregate = %sha, "aggregate built");
        }
    }
    Ok(())
}
