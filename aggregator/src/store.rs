//! All of the aggregator's SQL: typed rows, one mapping between states and their stored
//! names, and the conditional updates that make admission and the state machine safe under
//! concurrency (also across replicas sharing one PostgreSQL database).

use cryptflow_services::api::kms::SpecEcho;
use cryptflow_services::api::round::{Contribution, RoundRequest, RoundSpec, RoundState};
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
}

/// The aggregator's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

const ROUND_COLUMNS: &str =
    "request_json, spec_json, echoes_json, state, admitted, deadline, closed_at, set_json, \
    aggregate_sha256, recorded_by, published_at, uploads_deleted, failure";

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
    })
}

impl Store {
    /// Wraps a migrated pool.
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
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
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO rounds (round_id, request_json, spec_json, echoes_json, state, deadline, created_at) \
             VALUES ($1, $2, $3, '[]', 'open', $4, $5) ON CONFLICT (round_id) DO NOTHING",
        )
        .bind(spec.round_id.as_str())
        .bind(json(request)?)
        .bind(json(spec)?)
        .bind(deadline)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for c in &spec.clients {
            sqlx::query("INSERT INTO round_members (round_id, client_id) VALUES ($1, $2)")
                .bind(spec.round_id.as_str())
                .bind(c.as_str())
                .execute(&mut *tx)
                .await?;
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
            "SELECT client_id, sha256, bytes FROM uploads WHERE round_id = $1 AND client_id = $2",
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
            "SELECT client_id, sha256, bytes FROM uploads WHERE round_id = $1 ORDER BY client_id",
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
        client: &ClientId,
        sha256: &Sha256Digest,
        bytes: u64,
        max_clients: u32,
        at: i64,
    ) -> Result<Option<u32>> {
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
            return Ok(None);
        }
        let inserted = sqlx::query(
            "INSERT INTO uploads (round_id, client_id, sha256, bytes, received_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (round_id, client_id) DO NOTHING",
        )
        .bind(round.as_str())
        .bind(client.as_str())
        .bind(sha256.to_string())
        .bind(bytes as i64)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let admitted: i64 = sqlx::query("SELECT admitted FROM rounds WHERE round_id = $1")
            .bind(round.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(Some(u32::try_from(admitted).map_err(corrupt)?))
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

    /// Fixes the contributor set and the aggregate's digest, once: a later call with another
    /// set changes nothing (the caller re-reads the row).
    pub async fn fix_set(
        &self,
        round: &RoundId,
        set: &[Contribution],
        aggregate: &Sha256Digest,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE rounds SET set_json = $1, aggregate_sha256 = $2 WHERE round_id = $3 AND state = 'aggregating' AND set_json IS NULL",
        )
        .bind(json(&set)?)
        .bind(aggregate.to_string())
        .bind(round.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
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
    pub async fn fail(&self, round: &RoundId, why: &str) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE rounds SET state = 'failed', failure = $1 WHERE round_id = $2 AND state IN ('open', 'aggregating')",
        )
        .bind(why)
        .bind(round.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
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

fn upload_row(r: &sqlx::any::AnyRow) -> Result<UploadRow> {
    Ok(UploadRow {
        client_id: ClientId::parse(r.try_get::<String, _>("client_id")?).map_err(corrupt)?,
        sha256: r.try_get::<String, _>("sha256")?.parse().map_err(corrupt)?,
        bytes: u64::try_from(r.try_get::<i64, _>("bytes")?).map_err(corrupt)?,
    })
}
