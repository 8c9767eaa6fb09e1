//! The hash-chained, append-only audit log.
//!
//! Entry `n` stores `hash_n = SHA-256(hash_{n−1} ‖ n ‖ at ‖ actor ‖ role ‖ action ‖ round ‖
//! detail)` (fields length-prefixed), with `hash_0` = 64 zeros. Editing, reordering or
//! deleting any entry breaks the chain from that entry on, which [`verify`] reports.
//! Appends happen in the same transaction as the key operation they record.

use cryptflow_services::api::kms::AuditEntry;
use cryptflow_services::Role;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes an entry's hash from its fields and `prev_hash` (its own `hash` is ignored).
pub fn entry_hash(e: &AuditEntry) -> String {
    let mut h = Sha256::new();
    let (seq, at, role) = (e.seq.to_string(), e.at.to_string(), e.role.to_string());
    for field in [
        &e.prev_hash,
        &seq,
        &at,
        &e.actor,
        &role,
        &e.action,
        e.round_id.as_deref().unwrap_or(""),
        &e.detail,
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Who did what.
pub struct Event<'a> {
    /// Token subject.
    pub actor: &'a str,
    /// Token role.
    pub role: Role,
    /// Action name.
    pub action: &'a str,
    /// Round concerned.
    pub round_id: Option<&'a str>,
    /// JSON details.
    pub detail: serde_json::Value,
}

/// Appends an entry; call inside the transaction of the operation it records.
pub async fn append(
    conn: &mut AnyConnection,
    at: i64,
    event: Event<'_>,
) -> Result<AuditEntry, sqlx::Error> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev_hash) = match last {
        Some(row) => (row.try_get::<i64, _>(0)? + 1, row.try_get::<String, _>(1)?),
        None => (1, GENESIS.to_owned()),
    };
    let mut entry = AuditEntry {
        seq,
        at,
        actor: event.actor.to_owned(),
        role: event.role,
        action: event.action.to_owned(),
        round_id: event.round_id.map(str::to_owned),
        detail: event.detail.to_string(),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry_hash(&entry);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, role, action, round_id, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry.seq)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(entry.role.to_string())
    .bind(&entry.action)
    .bind(entry.round_id.clone())
    .bind(&entry.detail)
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .execute(&mut *conn)
    .await?;
    Ok(entry)
}

fn parse_role(s: &str) -> Result<Role, sqlx::Error> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn entry_of(row: &AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        role: parse_role(&row.try_get::<String, _>("role")?)?,
        action: row.try_get("action")?,
        round_id: row.try_get("round_id")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Entries with `seq > after`, oldest first, at most `limit`.
pub async fn list(pool: &AnyPool, after: i64, limit: i64) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at, actor, role, action, round_id, detail, prev_hash, hash FROM audit_log \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(entry_of).collect()
}

/// The outcome of a verification.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The chain is intact; this many entries.
    Intact(i64),
    /// The first entry (by position) at which the chain breaks, and why.
    Broken {
        /// Sequence number reached.
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Walks the whole log and checks sequence, links and hashes.
pub async fn verify(pool: &AnyPool) -> Result<Verdict, sqlx::Error> {
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_seq = 1i64;
    let mut after = 0i64;
    loop {
        let page = list(pool, after, 1000).await?;
        if page.is_empty() {
            return Ok(Verdict::Intact(expected_seq - 1));
        }
        for e in page {
            if e.seq != expected_seq {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    reason: format!("entry {expected_seq} is missing (next is {})", e.seq),
                });
            }
            if e.prev_hash != expected_prev {
                return Ok(Verdict::Broken {
                    seq: e.seq,
                    reason: "does not link to the previous entry".into(),
                });
            }
            let hash = entry_hash(&e);
            if hash != e.hash {
                return Ok(Verdict::Broken {
                    seq: e.seq,
                    reason: "content does not match its hash".into(),
                });
            }
            expected_prev = e.hash;
            expected_seq += 1;
            after = e.seq;
        }
    }
}

/// The number of entries (the last sequence number; 0 for an empty log).
pub async fn length(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(pool)
        .await?;
    row.map(|r| r.try_get::<i64, _>(0)).transpose().map(|s| s.unwrap_or(0))
}
