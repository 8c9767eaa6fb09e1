//! All of the key manager's SQL: typed rows, one mapping between states and their stored
//! names, and the transactions that change a round together with its audit entry.
//!
//! Queries are written once, in the SQL subset SQLite and PostgreSQL share, with `$n`
//! placeholders. Every change that a later request relies on (a registration, a deposit, the
//! recorded set) is committed before the handler answers.

use crate::audit::{self, Event};
use crate::seal::Sealed;
use cryptflow_he::MaskSeed;
use cryptflow_services::api::kms::{KmsRoundState, SpecEcho};
use cryptflow_services::api::round::{Contribution, RoundSpec, SeedPart};
use cryptflow_services::{ClientId, RoundId, Sha256Digest};
use sqlx::{AnyPool, Row};

mod rotation;
pub use rotation::{all_sealed, reseal};

/// A stored failure: the database, or a row that does not parse (never shown to callers).
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

/// The one mapping of round states to stored names.
pub fn state_name(s: KmsRoundState) -> &'static str {
    match s {
        KmsRoundState::Open => "open",
        KmsRoundState::SetRecorded => "set_recorded",
        KmsRoundState::Destroyed => "destroyed",
        KmsRoundState::Refused => "refused",
    }
}

fn state_of(s: &str) -> Result<KmsRoundState> {
    Ok(match s {
        "open" => KmsRoundState::Open,
        "set_recorded" => KmsRoundState::SetRecorded,
        "destroyed" => KmsRoundState::Destroyed,
        "refused" => KmsRoundState::Refused,
        other => return Err(corrupt(format!("unknown round state {other:?}"))),
    })
}

/// A registered round as stored.
#[derive(Clone, Debug)]
pub struct RoundRow {
    /// The spec.
    pub spec: RoundSpec,
    /// Its hash, as this node signed it.
    pub spec_hash: Sha256Digest,
    /// This node's echo.
    pub echo: SpecEcho,
    /// State.
    pub state: KmsRoundState,
    /// The recorded contributor set.
    pub set: Option<Vec<Contribution>>,
    /// The aggregate's digest recorded with the set.
    pub aggregate_sha256: Option<Sha256Digest>,
    /// Registration time.
    pub created_at: i64,
}

/// A deposit as stored (the sealed share separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositRow {
    /// The client.
    pub client_id: ClientId,
    /// Its upload's digest.
    pub upload_sha256: Sha256Digest,
    /// Its upload's signed root (`None` for a deposit from before roots were signed).
    pub upload_root: Option<Sha256Digest>,
    /// The share's digest.
    pub share_sha256: Sha256Digest,
}

/// Who changed what, for the audit entry written with the change.
pub struct Actor<'a> {
    /// Token subject.
    pub subject: &'a str,
    /// Token role.
    pub role: cryptflow_services::Role,
}

async fn audit(
    conn: &mut sqlx::AnyConnection,
    at: i64,
    actor: &Actor<'_>,
    action: &str,
    round: &RoundId,
    detail: serde_json::Value,
) -> Result<()> {
    let event = Event {
        actor: actor.subject,
        role: actor.role,
        action,
        round_id: Some(round.as_str()),
        detail,
    };
    audit::append(conn, at, event).await?;
    Ok(())
}

fn deposit_row(r: &sqlx::any::AnyRow) -> Result<DepositRow> {
    Ok(DepositRow {
        client_id: ClientId::parse(r.try_get::<String, _>("client_id")?).map_err(corrupt)?,
        upload_sha256: r.try_get::<String, _>("upload_sha256")?.parse().map_err(corrupt)?,
        upload_root: r
            .try_get::<Option<String>, _>("upload_root")?
            .map(|v| v.parse())
            .transpose()
            .map_err(corrupt)?,
        share_sha256: r.try_get::<String, _>("share_sha256")?.parse().map_err(corrupt)?,
    })
}

/// What a new deposit stores.
pub struct NewDeposit<'a> {
    /// The client.
    pub client: &'a ClientId,
    /// Digests.
    pub upload_sha256: Sha256Digest,
    /// The upload's signed root.
    pub upload_root: Sha256Digest,
    /// The share's digest.
    pub share_sha256: Sha256Digest,
    /// The client's signature (hex).
    pub signature: String,
    /// The sealed share.
    pub sealed: Sealed,
    /// The master key it is sealed under.
    pub master_key_id: &'a str,
}

/// The key manager's database, and the lock that serialises audit appends within this
/// process (the audit sequence number is a primary key; a second writer would collide).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    audit: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Wraps a migrated pool.
    pub fn new(pool: AnyPool) -> Self {
        Self { pool, audit: std::sync::Arc::default() }
    }

    /// The pool (probes, audit listing).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The round, if registered.
    pub async fn round(&self, round: &RoundId) -> Result<Option<RoundRow>> {
        let row = sqlx::query(
            "SELECT spec_json, spec_hash, echo_json, state, set_json, aggregate_sha256, created_at FROM rounds WHERE round_id = $1",
        )
        .bind(round.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let set: Option<String> = row.try_get("set_json")?;
        Ok(Some(RoundRow {
            spec: serde_json::from_str(&row.try_get::<String, _>("spec_json")?).map_err(corrupt)?,
            spec_hash: row.try_get::<String, _>("spec_hash")?.parse().map_err(corrupt)?,
            echo: serde_json::from_str(&row.try_get::<String, _>("echo_json")?).map_err(corrupt)?,
            state: state_of(&row.try_get::<String, _>("state")?)?,
            set: set.map(|s| serde_json::from_str(&s)).transpose().map_err(corrupt)?,
            aggregate_sha256: row
                .try_get::<Option<String>, _>("aggregate_sha256")?
                .map(|v| v.parse())
                .transpose()
                .map_err(corrupt)?,
            created_at: row.try_get("created_at")?,
        }))
    }

    /// Registers a round (with its members) and audits it, unless one exists; returns whether it
    /// was inserted.
    pub async fn insert_round(
        &self,
        spec: &RoundSpec,
        spec_hash: &Sha256Digest,
        echo: &SpecEcho,
        at: i64,
        actor: &Actor<'_>,
    ) -> Result<bool> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO rounds (round_id, spec_json, spec_hash, echo_json, state, created_at, mask_seed) \
             VALUES ($1, $2, $3, $4, 'open', $5, $6) ON CONFLICT (round_id) DO NOTHING",
        )
        .bind(spec.round_id.as_str())
        .bind(serde_json::to_string(spec).map_err(corrupt)?)
        .bind(spec_hash.to_string())
        .bind(serde_json::to_string(echo).map_err(corrupt)?)
        .bind(at)
        .bind(spec.mask_seed.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for client in &spec.clients {
            sqlx::query("INSERT INTO round_members (round_id, client_id) VALUES ($1, $2)")
                .bind(spec.round_id.as_str())
                .bind(client.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let detail = serde_json::json!({
            "spec_hash": spec_hash.to_string(),
            "members": spec.clients.len(),
            "min_clients": spec.min_clients,
            "max_clients": spec.max_clients,
        });
        audit(&mut tx, at, actor, "round.register", &spec.round_id, detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The round this node registered with mask seed `seed`, if any.
    pub async fn round_with_seed(&self, seed: &MaskSeed) -> Result<Option<RoundId>> {
        let row = sqlx::query("SELECT round_id FROM rounds WHERE mask_seed = $1")
            .bind(seed.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| RoundId::parse(r.try_get::<String, _>("round_id")?).map_err(corrupt))
            .transpose()
    }

    /// The nonces this node answered for `round`'s seed, with the commitment each was for.
    pub async fn seed_nonces(&self, round: &RoundId) -> Result<Vec<(Sha256Digest, SeedPart)>> {
        let rows = sqlx::query("SELECT commitment, nonce FROM seed_nonces WHERE round_id = $1")
            .bind(round.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("commitment")?.parse().map_err(corrupt)?,
                    SeedPart::try_from(r.try_get::<String, _>("nonce")?).map_err(corrupt)?,
                ))
            })
            .collect()
    }

    /// Stores `fresh` as the nonce for `round`'s seed under `commitment` — or returns the one
    /// stored for that commitment already. `Err(n)` (inside) when the round has `max`
    /// commitments already.
    pub async fn answer_seed_nonce(
        &self,
        round: &RoundId,
        commitment: &Sha256Digest,
        fresh: SeedPart,
        max: u32,
        at: i64,
    ) -> Result<std::result::Result<SeedPart, u32>> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        let existing =
            sqlx::query("SELECT nonce FROM seed_nonces WHERE round_id = $1 AND commitment = $2")
                .bind(round.as_str())
                .bind(commitment.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(r) = existing {
            return Ok(Ok(SeedPart::try_from(r.try_get::<String, _>("nonce")?).map_err(corrupt)?));
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM seed_nonces WHERE round_id = $1")
            .bind(round.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count >= i64::from(max) {
            return Ok(Err(count as u32));
        }
        sqlx::query(
            "INSERT INTO seed_nonces (round_id, commitment, nonce, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(round.as_str())
        .bind(commitment.to_string())
        .bind(String::from(fresh))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(fresh))
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

    /// A client's deposit, if any.
    pub async fn deposit(&self, round: &RoundId, client: &ClientId) -> Result<Option<DepositRow>> {
        let row = sqlx::query(
            "SELECT client_id, upload_sha256, upload_root, share_sha256 FROM deposits WHERE round_id = $1 AND client_id = $2",
        )
        .bind(round.as_str())
        .bind(client.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| deposit_row(&r)).transpose()
    }

    /// All deposits of a round, sorted by client.
    pub async fn deposits(&self, round: &RoundId) -> Result<Vec<DepositRow>> {
        let rows = sqlx::query(
            "SELECT client_id, upload_sha256, upload_root, share_sha256 FROM deposits WHERE round_id = $1 ORDER BY client_id",
        )
        .bind(round.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deposit_row).collect()
    }

    /// Stores a deposit while the round is open, and audits it; returns whether it was inserted
    /// (`false`: the client already has one, or the round is no longer open).
    pub async fn insert_deposit(
        &self,
        round: &RoundId,
        d: NewDeposit<'_>,
        at: i64,
        actor: &Actor<'_>,
    ) -> Result<bool> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO deposits (round_id, client_id, upload_sha256, share_sha256, signature, sealed_share, nonce, master_key_id, created_at, upload_root) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM rounds WHERE round_id = $11 AND state = 'open') \
             ON CONFLICT (round_id, client_id) DO NOTHING",
        )
        .bind(round.as_str())
        .bind(d.client.as_str())
        .bind(d.upload_sha256.to_string())
        .bind(d.share_sha256.to_string())
        .bind(d.signature)
        .bind(d.sealed.ciphertext)
        .bind(d.sealed.nonce)
        .bind(d.master_key_id)
        .bind(at)
        .bind(d.upload_root.to_string())
        .bind(round.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let detail = serde_json::json!({ "client": d.client.as_str(), "upload_sha256": d.upload_sha256.to_string() });
        audit(&mut tx, at, actor, "deposit.store", round, detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records the contributor set with the aggregate's digest once: `Ok(true)` if this call
    /// recorded it, `Ok(false)` if the round was not open (the caller re-reads and compares).
    pub async fn record_set(
        &self,
        round: &RoundId,
        set: &[Contribution],
        aggregate: &Sha256Digest,
        at: i64,
        actor: &Actor<'_>,
    ) -> Result<bool> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE rounds SET state = 'set_recorded', set_json = $1, recorded_at = $2, aggregate_sha256 = $3 WHERE round_id = $4 AND state = 'open'",
        )
        .bind(serde_json::to_string(set).map_err(corrupt)?)
        .bind(at)
        .bind(aggregate.to_string())
        .bind(round.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let clients: Vec<&str> = set.iter().map(|c| c.client_id.as_str()).collect();
        audit(
            &mut tx,
            at,
            actor,
            "set.record",
            round,
            serde_json::json!({ "contributors": clients, "aggregate_sha256": aggregate.to_string() }),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The sealed shares of `clients` with the id of the key that seals each (all present and
    /// unshredded, else `None`).
    pub async fn sealed_shares(
        &self,
        round: &RoundId,
        clients: &[&ClientId],
    ) -> Result<Option<Vec<(ClientId, Sealed, String)>>> {
        let mut out = Vec::with_capacity(clients.len());
        // One query per member keeps the SQL portable; a set has at most max_clients members and
        // a release is served a handful of times per round.
        for c in clients {
            let row = sqlx::query(
                "SELECT sealed_share, nonce, master_key_id FROM deposits WHERE round_id = $1 AND client_id = $2 AND sealed_share IS NOT NULL",
            )
            .bind(round.as_str())
            .bind(c.as_str())
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            out.push((
                (*c).clone(),
                Sealed { ciphertext: row.try_get("sealed_share")?, nonce: row.try_get("nonce")? },
                row.try_get("master_key_id")?,
            ));
        }
        Ok(Some(out))
    }

    /// Appends an audit entry on its own (a release served, a refusal).
    pub async fn audit_only(
        &self,
        at: i64,
        actor: &Actor<'_>,
        action: &str,
        round: &RoundId,
        detail: serde_json::Value,
    ) -> Result<()> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        audit(&mut tx, at, actor, action, round, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends an audit entry about no round or a round that may not exist (a refused
    /// credential).
    pub async fn audit_event(&self, at: i64, event: Event<'_>) -> Result<()> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        audit::append(&mut tx, at, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Shreds a round's shares and marks it `state` (destroyed, or refused after a restore).
    pub async fn shred(
        &self,
        round: &RoundId,
        state: KmsRoundState,
        at: i64,
        actor: &Actor<'_>,
        action: &str,
    ) -> Result<()> {
        let _serial = self.audit.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE deposits SET sealed_share = NULL, nonce = NULL WHERE round_id = $1")
            .bind(round.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE rounds SET state = $1, destroyed_at = $2 WHERE round_id = $3")
            .bind(state_name(state))
            .bind(at)
            .bind(round.as_str())
            .execute(&mut *tx)
            .await?;
        audit(&mut tx, at, actor, action, round, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rounds whose shares are past retention: registered before `before`, not yet shredded.
    pub async fn rounds_to_shred(&self, before: i64) -> Result<Vec<RoundId>> {
        let rows = sqlx::query(
            "SELECT round_id FROM rounds WHERE created_at < $1 AND state IN ('open', 'set_recorded')",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| RoundId::parse(r.try_get::<String, _>(0)?).map_err(corrupt)).collect()
    }

    /// Rounds still open (for the restore check).
    pub async fn open_rounds(&self) -> Result<Vec<RoundId>> {
        let rows = sqlx::query("SELECT round_id FROM rounds WHERE state = 'open'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| RoundId::parse(r.try_get::<String, _>(0)?).map_err(corrupt)).collect()
    }

    /// Refuses a round for good (after a restore).
    pub async fn refuse(&self, round: &RoundId, at: i64) -> Result<()> {
        sqlx::query("INSERT INTO refused_rounds (round_id, at) VALUES ($1, $2) ON CONFLICT (round_id) DO NOTHING")
            .bind(round.as_str())
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether a round is refused for good.
    pub async fn is_refused(&self, round: &RoundId) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM refused_rounds WHERE round_id = $1")
            .bind(round.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}
