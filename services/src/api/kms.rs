//! The KMS API: round keys and the audit log.

use crate::ids::{ClientId, RoundId};
use crate::role::Role;
use cryptflow_he::planner::{Plan, PlanTarget};
use serde::{Deserialize, Serialize};

/// Largest number of clients a round may allow.
pub const MAX_ROUND_CLIENTS: usize = 100_000;

/// What a round's key is for: the body of `PUT /v1/rounds/{round}/key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Bodies per mask `L` (1..=32).
    pub bodies: u8,
    /// Largest number of contributions in the aggregate.
    pub max_clients: u32,
    /// Release the secret key only once at least this many contributed.
    pub min_clients: u32,
    /// Clip bound of the values.
    pub clip_bound: f64,
    /// Largest integer weight of one contribution (1 for uniform weighting).
    pub max_weight: u64,
    /// Precision target or transport widths.
    pub target: PlanTarget,
    /// Clients allowed in the round (and to receive its secret key).
    pub clients: Vec<ClientId>,
}

/// Lifecycle of a round key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Created; the public key is served, the secret key is not released.
    Active,
    /// The aggregator reported the aggregate; clients may fetch the secret key.
    Aggregated,
    /// Crypto-shredded: the sealed secret key is gone; every request gets 410.
    Destroyed,
}

/// A round key's metadata (never the secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The round.
    pub round_id: RoundId,
    /// Key id (hex), also in every ciphertext under this key.
    pub key_id: String,
    /// State.
    pub state: KeyState,
    /// What the key was created for.
    pub spec: KeySpec,
    /// The planner's result for the spec (encoding, widths).
    pub plan: Plan,
    /// Contributors reported by the aggregator.
    pub contributors: Option<u32>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// Body of `POST /v1/rounds/{round}/key/aggregated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkAggregated {
    /// Number of contributions folded into the aggregate.
    pub contributors: u32,
}

/// One entry of the hash-chained audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position, from 1, without gaps.
    pub seq: i64,
    /// Time (Unix seconds).
    pub at: i64,
    /// Token subject of the caller.
    pub actor: String,
    /// Token role of the caller.
    pub role: Role,
    /// What happened (`key.create`, `key.aggregated`, `key.release`, `key.destroy`, …).
    pub action: String,
    /// The round concerned.
    pub round_id: Option<String>,
    /// Details (JSON text).
    pub detail: String,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// `SHA-256(prev_hash ‖ seq ‖ at ‖ actor ‖ role ‖ action ‖ round_id ‖ detail)`, hex.
    pub hash: String,
}
