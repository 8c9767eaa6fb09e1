//! The key managers' API: round registration with a signed echo, share deposits, the
//! contributor set, releases, and the audit log.

use super::round::{Contribution, RoundSpec};
use super::{Base64Bytes, SignatureHex};
use crate::ids::{ClientId, RoundId, Sha256Digest};
use crate::role::Role;
use serde::{Deserialize, Serialize};

/// A key manager's signed echo of a round spec: what clients check against their pinned
/// committee file (and compare across nodes) before depositing anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecEcho {
    /// The node's share index `x`.
    pub share_index: u8,
    /// SHA-256 of the spec's canonical bytes with this node's committee and roster digests
    /// and minimum set size (`cryptflow_services::protocol::spec_hash`).
    pub spec_hash: Sha256Digest,
    /// Digest of the node's roster (members, keys, readers, `m`): every node should have the
    /// same.
    pub roster_digest: Sha256Digest,
    /// The minimum contributor set size `m` of the node's configuration.
    pub min_set_size: u32,
    /// The node's deposit key for this round (an X-Wing public key, 1216 bytes, base64):
    /// clients seal their deposits to it (`cryptflow_services::sealed`). Fresh per round and
    /// erased with the round's shares; signed with the rest. Empty in an echo stored before
    /// sealed deposits existed: clients refuse such a round (its echo does not verify).
    #[serde(default = "no_key")]
    pub deposit_key: Base64Bytes,
    /// Ed25519 signature by the node's signing key over the echo statement.
    pub signature: SignatureHex,
}

fn no_key() -> Base64Bytes {
    Base64Bytes(Vec::new())
}

/// State of a round at a key manager.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KmsRoundState {
    /// Registered; taking deposits.
    Open,
    /// The contributor set is recorded; releases are served for it only.
    SetRecorded,
    /// Shares shredded (destroyed by an admin, or past retention): deposits and releases get
    /// 410; the round itself can still be looked at.
    Destroyed,
    /// The node was restored from a backup taken while this round was open: it refuses the
    /// round, since it could otherwise record a second set.
    Refused,
}

/// A round as a key manager holds it (`GET /v1/rounds/{round}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisteredRound {
    /// The spec, as registered.
    pub spec: RoundSpec,
    /// This node's signed echo.
    pub echo: SpecEcho,
    /// State.
    pub state: KmsRoundState,
    /// Deposits held.
    pub deposits: u32,
    /// The recorded contributor set, once recorded.
    pub contributors: Option<Vec<Contribution>>,
}

/// Body of `PUT /v1/rounds/{round}/deposits/{client}`: a [`Deposit`] sealed to the node's
/// deposit key for the round (`cryptflow_services::sealed`): only that node, and only until
/// the round is shredded, can open it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedDeposit {
    /// The HPKE encapsulated key (an X-Wing ciphertext, 1120 bytes), base64.
    pub encapped_key: Base64Bytes,
    /// The sealed deposit (its plaintext and a 16-byte tag), base64.
    pub ciphertext: Base64Bytes,
}

/// A client's share of its round key for one node, after its upload, as it travels inside a
/// [`SealedDeposit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    /// SHA-256 of the client's upload (the aggregator's receipt says the same).
    pub upload_sha256: Sha256Digest,
    /// The root of the client's upload over verification spans (`docs/wire-format.md`,
    /// "Verification spans and the upload root"): what a verifier checks sampled spans against.
    pub upload_root: Sha256Digest,
    /// The share (`docs/wire-format.md`, "key share"), base64.
    pub share: Base64Bytes,
    /// The client's roster-key signature over the deposit statement
    /// (`cryptflow_services::protocol::deposit_statement`).
    pub signature: SignatureHex,
}

/// Response to an accepted deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositReceipt {
    /// The round.
    pub round_id: RoundId,
    /// The depositing client.
    pub client_id: ClientId,
    /// This node's share index.
    pub share_index: u8,
    /// The upload digest the deposit vouches for.
    pub upload_sha256: Sha256Digest,
}

/// `GET /v1/rounds/{round}/deposits` (aggregator): who holds a deposit here, for which upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositList {
    /// One entry per depositing client, sorted.
    pub deposits: Vec<Contribution>,
    /// The upload root each depositing client signed (deposits from before roots were signed
    /// have none): the aggregator leaves out of the set a member whose signed root is not the
    /// root of the upload it holds.
    #[serde(default)]
    pub upload_roots: std::collections::BTreeMap<crate::ids::ClientId, Sha256Digest>,
}

/// Body of `PUT /v1/rounds/{round}/contributors` (aggregator): the contributor set and the
/// digest of the aggregate of its uploads, recorded together once per round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContributorSet {
    /// The contributor set `S` with each member's upload digest.
    pub contributors: Vec<Contribution>,
    /// SHA-256 of the aggregate the aggregator publishes for `S`: every release echoes it, so
    /// a reader served another aggregate than the one committed here fails.
    pub aggregate_sha256: Sha256Digest,
}

/// `GET /v1/rounds/{round}/release`: this node's unweighted sum of shares for the recorded set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// The round.
    pub round_id: RoundId,
    /// This node's share index.
    pub share_index: u8,
    /// The recorded set the release is for (compare with the aggregator's transcript).
    pub contributors: Vec<Contribution>,
    /// The aggregate's SHA-256 recorded with the set: the aggregate a reader decrypts must
    /// have it.
    pub aggregate_sha256: Sha256Digest,
    /// Each member's signed upload root, in the order of `contributors` (absent if a member
    /// deposited before roots were signed).
    pub upload_roots: Option<Vec<Sha256Digest>>,
    /// The release (`docs/wire-format.md`, "release"), base64.
    pub release: Base64Bytes,
}

/// `GET /v1/node`: this key manager's configuration, as clients and operators check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// This node's share index.
    pub share_index: u8,
    /// Committee size `n`.
    pub nodes: u8,
    /// Threshold `t`.
    pub threshold: u8,
    /// Digest of the committee file (nodes, indices, keys, threshold).
    pub committee_digest: Sha256Digest,
    /// Digest of the roster.
    pub roster_digest: Sha256Digest,
    /// Minimum contributor set size `m`.
    pub min_set_size: u32,
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
    /// What happened (`round.register`, `deposit.store`, `set.record`, `release.serve`,
    /// `round.destroy`, refusals as `….refused`).
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
