//! All of the aggregator's SQL: typed rows, one mapping between states and their stored
//! names, and the conditional updates that make admission and the state machine safe under
//! concurrency (also across replicas sharing one PostgreSQL database).

use cryptflow_services::api::kms::SpecEcho;
use cryptflow_services::api::round::{Contribution, RoundRequest, RoundSpec, RoundState};
use cryptflow_services::db::Backend;
use cryptflow_services::{ClientId, RoundId, Sha256Digest};
use sqlx::{AnyPool, Row};

/// A storage failure (never shown to callers).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A stored row does not parse.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(corrupt)
}

/// The one mapping of round states to stored names.
pub fn state_name(s: RoundState) -> &'static str {
    match s {
        RoundState::Open => "open",
        RoundState::Aggregating => "aggregating",
        RoundState::Published => "published",
        RoundState::Failed => "failed",
    }
}

fn state_of(s: &str) -> Result<RoundState> {
    Ok(match s {
        "open" => RoundState::Open,
        "aggregating" => RoundState::Aggregating,
        "published" => RoundState::Published,
        "failed" => RoundState::Failed,
        other => return Err(corrupt(format!("unknown round state {other:?}"))),
    })
}

/// A round as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    /// What was asked for.
    pub request: RoundRequest,
    /// The agreed spec.
    pub spec: RoundSpec,
    /// The echoes obtained so far (one per registered node).
    pub echoes: Vec<SpecEcho>,
    /// State.
    pub state: RoundState,
    /// Uploads admitted.
    pub admitted: u32,
    /// Absolute deadline.
    pub deadline: i64,
    /// When it closed.
    pub closed_at: Option<i64>,
    /// The contributor set, once chosen (fixed from then on).
    pub set: Option<Vec<Contribution>>,
    /// The aggregate's digest, once built.
    pub aggregate_sha256: Option<Sha256Digest>,
    /// Nodes that recorded the set.
    pub recorded_by: Vec<u8>,
    /// When it was published.
    pub published_at: Option<i64>,
    /// Whether the uploads' blobs were deleted.
    pub uploads_deleted: bool,
    /// Why it failed.
    pub failure: Option<String>,
    /// Blocks of one fold job's slot range (fixed at creation; see [`crate::fold`]).
    pub span_blocks: u64,
}

/// What [`Store::admit`] did with an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted: the round's uploads, this one included.
    Admitted(u32),
    /// The round is closed or full, or this client's upload was admitted meanwhile.
    Refused,
    /// Byte for byte another member's upload in this round (named).
    CopyOf(ClientId),
}

/// An admitted upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRow {
    /// Who.
    pub client_id: ClientId,
    /// Its digest (also its blob's name).
    pub sha256: Sha256Digest,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256 per fold span (see [`crate::fold`]), computed while it was received; empty
    /// for uploads admitted before fold jobs existed.
    pub span_sha256: Vec<Sha256Digest>,
    /// Its root over verification spans (`cryptflow_he::merkle`), computed while it was
    /// received; `None` for uploads admitted before roots were computed.
    pub upload_root: Option<Sha256Digest>,
}

/// What a fold job does.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Sums a batch of the contributor set's uploads over one span into a partial sum.
    Fold,
    /// Sums every partial sum into the aggregate (job 0, once every fold job is done).
    Publish,
}

impl JobKind {
    fn name(self) -> &'static str {
        match self {
            JobKind::Fold => "fold",
            JobKind::Publish => "publish",
        }
    }
    fn of(s: &str) -> Result<Self> {
        match s {
            "fold" => Ok(JobKind::Fold),
            "publish" => Ok(JobKind::Publish),
            other => Err(corrupt(format!("unknown job kind {other:?}"))),
        }
    }
}

/// A job of a round's fold, as planned or stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    /// The round.
    pub round_id: RoundId,
    /// Its number in the round (0 is the publication).
    pub job: u64,
    /// What it does.
    pub kind: JobKind,
    /// First member of the sorted contributor set it sums.
    pub first_member: u64,
    /// How many members it sums.
    pub members: u64,
    /// The span of slots it covers.
    pub span: u64,
    /// Whether it completed.
    pub done: bool,
    /// The SHA-256 of its output blob, once done.
    pub output_sha256: Option<Sha256Digest>,
    /// Times it was leased.
    pub attempts: u32,
}

/// A lease on a job: its holder's token proves the lease in every later update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job: JobRow,
    /// The holder's token (`<replica>/<random>`), unique per lease.
    pub holder: String,
}

/// The aggregator's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

const ROUND_COLUMNS: &str =
    "request_json, spec_json, echoes_json, state, admitted, deadline, closed_at, set_json, \
    aggregate_sha256, recorded_by, published_at, uploads_deleted, failure, span_blocks";

fn round_row(r: &sqlx::any::AnyRow) -> Result<RoundRow> {
    let set: Option<String> = r.try_get("set_json")?;
    let sha: Option<String> = r.try_get("aggregate_sha256")?;
    Ok(RoundRow {
        request: serde_json::from_str(&r.try_get::<String, _>("request_json")?).map_err(corrupt)?,
        spec: serde_json::from_str(&r.try_get::<String, _>("spec_json")?).map_err(corrupt)?,
        echoes: serde_json::from_str(&r.try_get::<String, _>("echoes_json")?).map_err(corrupt)?,
        state: state_of(&r.try_get::<String, _>("state")?)?,
        admitted: u32::try_from(r.try_get::<i64, _>("admitted")?).map_err(corrupt)?,
        deadline: r.try_get("deadline")?,
        closed_at: r.try_get("closed_at")?,
        set: set.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
        aggregate_sha256: sha.map(|s| s.parse()).transpose().map_err(corrupt)?,
        recorded_by: serde_json::from_str(&r.try_get::<String, _>("recorded_by")?)
            .map_err(corrupt)?,
        published_at: r.try_get("published_at")?,
        uploads_deleted: r.try_get::<i64, _>("uploads_deleted")? != 0,
        failure: r.try_get("failure")?,
        span_blocks: u64::try_from(r.try_get::<i64, _>("span_blocks")?).map_err(corrupt)?,
    })
}

impl Store {
    /// Wraps a migrated pool of `backend`.
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        Self { pool, backend }
    }

    /// The pool (probes).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A round, if it exists.
    pub async fn round(&self, round: &RoundId) -> Result<Option<RoundRow>> {
        let row = sqlx::query(&format!("SELECT {ROUND_COLUMNS} FROM rounds WHERE round_id = $1"))
            .bind(round.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(round_row).transpose()
    }

    /// Inserts a new round (with its members) unless one exists; returns whether it did.
    pub async fn insert_round(
        &self,
        request: &RoundRequest,
        spec: &RoundSpec,
        deadline: i64,
        at: i64,
        span_blocks: u64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO rounds (round_id, request_json, spec_json, echoes_json, state, deadline, created_at, span_blocks) \
             VALUES ($1, $2, $3, '[]', 'open', $4, $5, $6) ON CONFLICT (round_id) DO NOTHING",
        )
        .bind(spec.round_id.as_str())
        .bind(json(request)?)
        .bind(json(spec)?)
        .bind(deadline)
        .bind(at)
        .bind(i64::try_from(span_blocks).map_err(corrupt)?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for chunk in spec.clients.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO round_members (round_id, client_id) VALUES {}",
                placeholders(chunk.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q.bind(spec.round_id.as_str()).bind(c.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Stores the echoes obtained so far.
    pub async fn set_echoes(&self, round: &RoundId, echoes: &[SpecEcho]) -> Result<()> {
        sqlx::query("UPDATE rounds SET echoes_json = $1 WHERE round_id = $2")
            .bind(json(&echoes)?)
            .bind(round.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether `client` is a member of the round.
    pub async fn is_member(&self, round: &RoundId, client: &ClientId) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM round_members WHERE round_id = $1 AND client_id = $2")
            .bind(round.as_str())
            .bind(client.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// A client's upload, if admitted.
    pub async fn upload(&self, round: &RoundId, client: &ClientId) -> Result<Option<UploadRow>> {
        let row = sqlx::query(
            "SELECT client_id, sha256, bytes, span_sha256, upload_root FROM uploads WHERE round_id = $1 AND client_id = $2",
        )
        .bind(round.as_str())
        .bind(client.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(upload_row).transpose()
    }

    /// Every admitted upload, sorted by client.
    pub async fn uploads(&self, round: &RoundId) -> Result<Vec<UploadRow>> {
        let rows = sqlx::query(
            "SELECT client_id, sha256, bytes, span_sha256, upload_root FROM uploads WHERE round_id = $1 ORDER BY client_id",
        )
        .bind(round.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_row).collect()
    }

    /// Admits an upload atomically: the round must be open with fewer than `max_clients`
    /// admitted, and the client must have none. The conditional increment of `admitted` takes
    /// the round row's lock, so concurrent uploads — on any replica — cannot over-admit.
    /// Returns the uploads admitted (this one included), or `None` if refused.
    pub async fn admit(
        &self,
        round: &RoundId,
        upload: &UploadRow,
        max_clients: u32,
        at: i64,
    ) -> Result<Admission> {
        let mut tx = self.pool.begin().await?;
        let counted = sqlx::query(
            "UPDATE rounds SET admitted = admitted + 1 WHERE round_id = $1 AND state = 'open' AND admitted < $2",
        )
        .bind(round.as_str())
        .bind(max_clients as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if counted != 1 {
            tx.rollback().await?;
            return Ok(Admission::Refused);
        }
        // A byte-identical copy of another member's upload (checked under the round row's
        // lock, which the update above holds: concurrent admissions of one round take turns).
        let copied: Option<String> = sqlx::query_scalar(
            "SELECT client_id FROM uploads WHERE round_id = $1 AND sha256 = $2 AND client_id <> $3 LIMIT 1",
        )
        .bind(round.as_str())
        .bind(upload.sha256.to_string())
        .bind(upload.client_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(original) = copied {
            tx.rollback().await?;
            return Ok(Admission::CopyOf(ClientId::parse(&original).map_err(corrupt)?));
        }
        let inserted = sqlx::query(
            "INSERT INTO uploads (round_id, client_id, sha256, bytes, received_at, span_sha256, upload_root) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (round_id, client_id) DO NOTHING",
        )
        .bind(round.as_str())
        .bind(upload.client_id.as_str())
        .bind(upload.sha256.to_string())
        .bind(i64::try_from(upload.bytes).map_err(corrupt)?)
        .bind(at)
        .bind(upload.span_sha256.iter().map(|d| d.to_string()).collect::<String>())
        .bind(upload.upload_root.map(|r| r.to_string()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted != 1 {
            tx.rollback().await?;
            return Ok(Admission::Refused);
        }
        let admitted: i64 = sqlx::query("SELECT admitted FROM rounds WHERE round_id = $1")
            .bind(round.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(Admission::Admitted(u32::try_from(admitted).map_err(corrupt)?))
    }

    /// Closes an open round (open → aggregating); returns whether this call did.
    pub async fn close(&self, round: &RoundId, at: i64) -> Result<bool> {
        Ok(sqlx::query("UPDATE rounds SET state = 'aggregating', closed_at = $1 WHERE round_id = $2 AND state = 'open'")
            .bind(at)
            .bind(round.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    /// Fixes the contributor set once and plans its fold `jobs`, in one transaction: a later
    /// call (another replica that chose concurrently) changes nothing — the caller re-reads
    /// the row. Returns whether this call fixed it.
    pub async fn fix_set(
        &self,
        round: &RoundId,
        set: &[Contribution],
        jobs: &[JobRow],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let fixed = sqlx::query(
            "UPDATE rounds SET set_json = $1 WHERE round_id = $2 AND state = 'aggregating' AND set_json IS NULL",
        )
        .bind(json(&set)?)
        .bind(round.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if fixed != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // Many rows per statement: a round of 10^5 uploads and 60 spans plans ~4·10^5 jobs.
        insert_set_members(&mut tx, round, set).await?;
        for chunk in jobs.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO fold_jobs (round_id, job, kind, first_member, members, span) VALUES {}",
                placeholders(chunk.len(), 6)
            );
            let mut q = sqlx::query(&sql);
            for j in chunk {
                q = q
                    .bind(round.as_str())
                    .bind(i64::try_from(j.job).map_err(corrupt)?)
                    .bind(j.kind.name())
                    .bind(i64::try_from(j.first_member).map_err(corrupt)?)
                    .bind(i64::try_from(j.members).map_err(corrupt)?)
                    .bind(i64::try_from(j.span).map_err(corrupt)?);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The admitted uploads of members `[first, first + count)` of the contributor set, in
    /// set order.
    pub async fn set_uploads(
        &self,
        round: &RoundId,
        first: u64,
        count: u64,
    ) -> Result<Vec<UploadRow>> {
        let rows = sqlx::query(
            "SELECT u.client_id, u.sha256, u.bytes, u.span_sha256, u.upload_root FROM set_members m \
             JOIN uploads u ON u.round_id = m.round_id AND u.client_id = m.client_id \
             WHERE m.round_id = $1 AND m.ordinal >= $2 AND m.ordinal < $3 ORDER BY m.ordinal",
        )
        .bind(round.as_str())
        .bind(i64::try_from(first).map_err(corrupt)?)
        .bind(i64::try_from(first.saturating_add(count)).map_err(corrupt)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_row).collect()
    }

    /// Completes the publication job under its lease and records the aggregate's digest, in
    /// one transaction; false (nothing changed) if the lease was lost.
    pub async fn complete_publication(
        &self,
        lease: &Lease,
        aggregate: &Sha256Digest,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE fold_jobs SET done = 1, output_sha256 = $1, lease_expiry = NULL {HELD}"
        );
        let done = bind_lease(sqlx::query(&sql).bind(aggregate.to_string()), lease)?
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE rounds SET aggregate_sha256 = $1 WHERE round_id = $2 AND state = 'aggregating' AND aggregate_sha256 IS NULL",
        )
        .bind(aggregate.to_string())
        .bind(lease.job.round_id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The fold jobs of span `span` of a round, by number.
    pub async fn fold_jobs_of_span(&self, round: &RoundId, span: u64) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM fold_jobs WHERE round_id = $1 AND kind = 'fold' AND span = $2 ORDER BY job"
        ))
        .bind(round.as_str())
        .bind(i64::try_from(span).map_err(corrupt)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    /// Writes the members of a set fixed before `set_members` existed (no-op otherwise).
    pub async fn ensure_set_members(&self, round: &RoundId, set: &[Contribution]) -> Result<()> {
        let have: i64 = sqlx::query("SELECT COUNT(*) FROM set_members WHERE round_id = $1")
            .bind(round.as_str())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if have as usize == set.len() {
            return Ok(());
        }
        let mut sorted = set.to_vec();
        sorted.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM set_members WHERE round_id = $1")
            .bind(round.as_str())
            .execute(&mut *tx)
            .await?;
        insert_set_members(&mut tx, round, &sorted).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The fold jobs of a round, by number.
    pub async fn jobs(&self, round: &RoundId) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM fold_jobs WHERE round_id = $1 ORDER BY job"
        ))
        .bind(round.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    /// Leases the next job to run, for `lease_secs` from `now`: a job not done whose lease is
    /// absent or expired, of a round still aggregating; the publication job only once every
    /// fold job of its round is done. On PostgreSQL the candidate row is taken with
    /// `FOR UPDATE SKIP LOCKED`, so replicas leasing at once take different jobs without
    /// waiting on each other (as Janus leases its aggregation jobs); SQLite has one writer.
    pub async fn lease_job(
        &self,
        replica: &str,
        now: i64,
        lease_secs: u64,
    ) -> Result<Option<Lease>> {
        let mut token = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
        let holder = format!("{replica}/{}", hex::encode(token));
        let skip_locked = match self.backend {
            Backend::Postgres => "FOR UPDATE OF j SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE fold_jobs SET lease_holder = $1, lease_expiry = $2, attempts = attempts + 1 \
             WHERE (round_id, job) = (\
               SELECT j.round_id, j.job FROM fold_jobs j JOIN rounds r ON r.round_id = j.round_id \
               WHERE j.done = 0 AND (j.lease_expiry IS NULL OR j.lease_expiry <= $3) \
                 AND r.state = 'aggregating' \
                 AND (j.kind = 'fold' OR NOT EXISTS (\
                   SELECT 1 FROM fold_jobs f WHERE f.round_id = j.round_id AND f.kind = 'fold' AND f.done = 0)) \
               ORDER BY j.round_id, j.job LIMIT 1 {skip_locked}) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(&holder)
        .bind(now.saturating_add(i64::try_from(lease_secs).map_err(corrupt)?))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(job_row).transpose()?.map(|job| Lease { job, holder }))
    }

    /// Sets the expiry of a lease still held: later to renew it, soon to give it back after a
    /// failure (the job may be leased again from `until`). False if the lease was lost
    /// (expired and taken by another replica).
    pub async fn set_lease_expiry(&self, lease: &Lease, until: i64) -> Result<bool> {
        let sql = format!("UPDATE fold_jobs SET lease_expiry = $1 {HELD}");
        let q = sqlx::query(&sql).bind(until);
        Ok(bind_lease(q, lease)?.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Marks a leased job done with its output's digest; false if the lease was lost (a
    /// re-run by another replica wrote the same output and completes it).
    pub async fn complete_job(&self, lease: &Lease, output: &Sha256Digest) -> Result<bool> {
        let sql = format!(
            "UPDATE fold_jobs SET done = 1, output_sha256 = $1, lease_expiry = NULL {HELD}"
        );
        let q = sqlx::query(&sql).bind(output.to_string());
        Ok(bind_lease(q, lease)?.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Makes fold job `job` runnable again (its output was found corrupt), if `publication`
    /// (the lease of the round's publication job, which found it) is still held.
    pub async fn reset_job(&self, publication: &Lease, job: u64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE fold_jobs SET done = 0, output_sha256 = NULL, lease_expiry = NULL \
             WHERE round_id = $1 AND job = $2 AND EXISTS (SELECT 1 FROM fold_jobs p \
               WHERE p.round_id = $3 AND p.job = 0 AND p.lease_holder = $4 AND p.done = 0)",
        )
        .bind(publication.job.round_id.as_str())
        .bind(i64::try_from(job).map_err(corrupt)?)
        .bind(publication.job.round_id.as_str())
        .bind(publication.holder.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Frees every lease: only for a database one replica uses (SQLite), at its start — the
    /// leases can only be its own previous run's, which died with it.
    pub async fn release_all_leases(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE fold_jobs SET lease_expiry = NULL, lease_holder = NULL WHERE done = 0 AND lease_expiry IS NOT NULL",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Notes which nodes recorded the set; publishes once `threshold` have.
    pub async fn set_recorded_by(
        &self,
        round: &RoundId,
        nodes: &[u8],
        publish_at: Option<i64>,
    ) -> Result<()> {
        match publish_at {
            Some(at) => sqlx::query(
                "UPDATE rounds SET recorded_by = $1, state = 'published', published_at = $2 WHERE round_id = $3 AND state = 'aggregating'",
            )
            .bind(json(&nodes)?)
            .bind(at)
            .bind(round.as_str()),
            None => sqlx::query("UPDATE rounds SET recorded_by = $1 WHERE round_id = $2")
                .bind(json(&nodes)?)
                .bind(round.as_str()),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Fails a round that is not yet published.
    /// Its fold jobs not done are deleted with it (they can never run).
    pub async fn fail(&self, round: &RoundId, why: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let failed = sqlx::query(
            "UPDATE rounds SET state = 'failed', failure = $1 WHERE round_id = $2 AND state IN ('open', 'aggregating')",
        )
        .bind(why)
        .bind(round.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        sqlx::query("DELETE FROM fold_jobs WHERE round_id = $1 AND done = 0")
            .bind(round.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(failed)
    }

    /// Deletes a round that no key manager registered and nobody uploaded to (every node
    /// refused its spec), so that a corrected request may reuse the id. False if the round
    /// has an echo or an upload by now.
    pub async fn forget_unregistered(&self, round: &RoundId) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM round_members WHERE round_id = $1")
            .bind(round.as_str())
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query(
            "DELETE FROM rounds WHERE round_id = $1 AND echoes_json = '[]' AND admitted = 0",
        )
        .bind(round.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if removed == 1 {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(removed == 1)
    }

    /// Notes that the uploads' blobs were deleted.
    pub async fn uploads_deleted(&self, round: &RoundId) -> Result<()> {
        sqlx::query("UPDATE rounds SET uploads_deleted = 1 WHERE round_id = $1")
            .bind(round.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rounds the background task must look at: open past the deadline or with a node to
    /// register, aggregating, published with nodes to tell or blobs to delete.
    pub async fn rounds_in_progress(&self) -> Result<Vec<RoundRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ROUND_COLUMNS} FROM rounds WHERE state IN ('open', 'aggregating') \
             OR (state = 'published' AND uploads_deleted = 0) OR (state = 'failed' AND uploads_deleted = 0)"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(round_row).collect()
    }
}

/// Inserts the members of `set` with their ordinals (its order), many rows per statement.
async fn insert_set_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    round: &RoundId,
    set: &[Contribution],
) -> Result<()> {
    for (n, chunk) in set.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = format!(
            "INSERT INTO set_members (round_id, ordinal, client_id) VALUES {}",
            placeholders(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (i, c) in chunk.iter().enumerate() {
            let ordinal = i64::try_from(n * ROWS_PER_INSERT + i).map_err(corrupt)?;
            q = q.bind(round.as_str()).bind(ordinal).bind(c.client_id.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows of one multi-row `INSERT` (at most 6 columns: 3,000 parameters, within SQLite's and
/// PostgreSQL's limits).
const ROWS_PER_INSERT: usize = 500;

/// `($1, $2, $3), ($4, $5, $6), …` for `rows` rows of `columns` parameters.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> =
                (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition of an update under a held lease: `$2` round, `$3` job, `$4` holder.
const HELD: &str = "WHERE round_id = $2 AND job = $3 AND lease_holder = $4 AND done = 0";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a lease's round, job and holder to the placeholders of [`HELD`].
fn bind_lease<'q>(q: AnyQuery<'q>, lease: &'q Lease) -> Result<AnyQuery<'q>> {
    Ok(q.bind(lease.job.round_id.as_str())
        .bind(i64::try_from(lease.job.job).map_err(corrupt)?)
        .bind(lease.holder.as_str()))
}

const JOB_COLUMNS: &str =
    "round_id, job, kind, first_member, members, span, done, output_sha256, attempts";

fn job_row(r: &sqlx::any::AnyRow) -> Result<JobRow> {
    let n = |c: &str| -> Result<u64> { u64::try_from(r.try_get::<i64, _>(c)?).map_err(corrupt) };
    let out: Option<String> = r.try_get("output_sha256")?;
    Ok(JobRow {
        round_id: RoundId::parse(r.try_get::<String, _>("round_id")?).map_err(corrupt)?,
        job: n("job")?,
        kind: JobKind::of(&r.try_get::<String, _>("kind")?)?,
        first_member: n("first_member")?,
        members: n("members")?,
        span: n("span")?,
        done: n("done")? != 0,
        output_sha256: out.map(|s| s.parse()).transpose().map_err(corrupt)?,
        attempts: u32::try_from(n("attempts")?).map_err(corrupt)?,
    })
}

fn upload_row(r: &sqlx::any::AnyRow) -> Result<UploadRow> {
    let spans: String = r.try_get("span_sha256")?;
    if !spans.len().is_multiple_of(64) || !spans.is_ascii() {
        return Err(corrupt("span digests are not a list of SHA-256 hex digests"));
    }
    Ok(UploadRow {
        span_sha256: (0..spans.len() / 64)
            .map(|i| spans[i * 64..(i + 1) * 64].parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(corrupt)?,
        client_id: ClientId::parse(r.try_get::<String, _>("client_id")?).map_err(corrupt)?,
        sha256: r.try_get::<String, _>("sha256")?.parse().map_err(corrupt)?,
        bytes: u64::try_from(r.try_get::<i64, _>("bytes")?).map_err(corrupt)?,
        upload_root: r
            .try_get::<Option<String>, _>("upload_root")?
            .map(|v| v.parse())
            .transpose()
            .map_err(corrupt)?,
    })
}
