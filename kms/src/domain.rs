//! The key manager's rules, as plain functions of its configuration and the stored round —
//! no I/O, unit tested below. The routes call them between extraction and storage.
//!
//! - A round can only select roster members, and is immutable once registered.
//! - A round's mask seed is signed only if `t` nodes' nonces over the aggregator's commitment
//!   derive it, this node's nonce for that commitment among them, and this node never signed
//!   it for another round.
//! - A deposit is accepted only from a member of the round, for this node's share index, with
//!   the member's roster-key signature over (round, spec hash, node, client, SHA-256 of the
//!   share, upload digest), while the round is open.
//! - The contributor set is recorded **once**; it is refused unless every member is on the
//!   roster and in the round, holds a deposit here whose signed upload digest equals the
//!   set's, and the set has at least `max(min_clients, m)` members.
//! - A release is the unweighted sum of the shares of the recorded set, for a member of the
//!   set or a roster reader — never for the aggregator or an admin.

use crate::store::{DepositRow, RoundRow};
use cryptflow_he::sharing::{KeyShare, Release, ShareIndex};
use cryptflow_he::Wire;
use cryptflow_services::api::kms::{Deposit, KmsRoundState, NodeInfo, SpecEcho};
use cryptflow_services::api::round::{
    Contribution, RoundSpec, SeedNonce, SeedPart, MAX_DIMENSION, MAX_ROUND_CLIENTS,
};
use cryptflow_services::api::Base64Bytes;
use cryptflow_services::auth::{Principal, Signer};
use cryptflow_services::http::AppError;
use cryptflow_services::protocol::{self, Committee, Roster, SiteKey};
use cryptflow_services::{ClientId, ErrorCode, Role, RoundId, Sha256Digest};
use std::collections::HashMap;
use std::fmt;

/// This node's view of the consortium: the committee, its own index and signing key, the
/// roster.
pub struct Node {
    committee: Committee,
    x: ShareIndex,
    signing: SiteKey,
    roster: Roster,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("x", &self.x.get())
            .field("committee", &self.committee.shape())
            .finish()
    }
}

impl Node {
    /// Checks that `x` is in the committee and that the signing key is the one the committee
    /// lists for it.
    pub fn try_new(
        committee: Committee,
        x: u8,
        signing: SiteKey,
        roster: Roster,
    ) -> Result<Self, String> {
        let node =
            committee.node(x).ok_or_else(|| format!("share index {x} is not in the committee"))?;
        if node.public_key != signing.public_key() {
            return Err(format!(
                "the signing key's public key {} is not the committee's key for node {x}",
                signing.public_key()
            ));
        }
        let x = ShareIndex::try_new(x).map_err(|e| e.to_string())?;
        Ok(Self { committee, x, signing, roster })
    }

    /// This node's share index.
    pub fn x(&self) -> ShareIndex {
        self.x
    }
    /// The audience roster tokens for this node carry ([`protocol::node_audience`]).
    pub fn audience(&self) -> String {
        protocol::node_audience(&protocol::CommitteeNode {
            x: self.x.get(),
            url: String::new(),
            public_key: self.signing.public_key(),
        })
    }

    /// The roster.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }
    /// The committee.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }

    /// What `GET /v1/node` shows.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            share_index: self.x.get(),
            nodes: self.committee.shape().nodes(),
            threshold: self.committee.shape().threshold(),
            committee_digest: self.committee.digest(),
            roster_digest: self.roster.digest(),
            min_set_size: self.roster.min_set_size(),
        }
    }

    /// This node's nonce for `round`'s seed, signed over the aggregator's `commitment`.
    pub fn seed_nonce(
        &self,
        round: &RoundId,
        commitment: &Sha256Digest,
        nonce: SeedPart,
    ) -> SeedNonce {
        let x = self.x.get();
        SeedNonce {
            share_index: x,
            nonce,
            signature: self
                .signing
                .sign(&protocol::seed_nonce_statement(x, round, commitment, &nonce)),
        }
    }

    /// This node's signed echo of `spec`, with its deposit key for the round.
    pub fn echo(&self, spec: &RoundSpec, deposit_key: &[u8]) -> SpecEcho {
        let roster_digest = self.roster.digest();
        let m = self.roster.min_set_size();
        let hash = protocol::spec_hash(spec, &self.committee.digest(), &roster_digest, m);
        SpecEcho {
            share_index: self.x.get(),
            spec_hash: hash,
            roster_digest,
            min_set_size: m,
            deposit_key: Base64Bytes(deposit_key.to_vec()),
            signature: self.signing.sign(&protocol::echo_statement(
                self.x.get(),
                &hash,
                deposit_key,
            )),
        }
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> AppError {
    AppError::new(ErrorCode::Unprocessable, detail).with_field(field)
}

fn conflict(field: &str, detail: impl Into<String>) -> AppError {
    AppError::new(ErrorCode::Conflict, detail).with_field(field)
}

/// Checks a registration: the path's round, sizes, members on the roster, the plan consistent,
/// and a set of `max(min_clients, m)` possible at all.
pub fn check_registration(node: &Node, round: &RoundId, spec: &RoundSpec) -> Result<(), AppError> {
    if &spec.round_id != round {
        return Err(invalid("round_id", "differs from the round in the path"));
    }
    if !(1..=MAX_DIMENSION).contains(&spec.values) {
        return Err(
            invalid("values", format!("must be in [1, {MAX_DIMENSION}]")).with_limit(MAX_DIMENSION)
        );
    }
    if spec.clients.is_empty() || spec.clients.len() > MAX_ROUND_CLIENTS {
        return Err(invalid("clients", format!("must list 1 to {MAX_ROUND_CLIENTS} clients"))
            .with_limit(MAX_ROUND_CLIENTS as u64));
    }
    if spec.clients.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid("clients", "must be sorted, each client once"));
    }
    if let Some(stranger) = spec.clients.iter().find(|c| node.roster.member(c).is_none()) {
        return Err(invalid(
            "clients",
            format!("`{stranger}` is not on this key manager's roster"),
        ));
    }
    if spec.min_clients == 0 || spec.min_clients > spec.max_clients {
        return Err(invalid(
            "min_clients",
            format!("must be in [1, max_clients = {}]", spec.max_clients),
        ));
    }
    if spec.max_clients as usize > spec.clients.len() {
        return Err(invalid(
            "max_clients",
            format!("exceeds the {} clients listed", spec.clients.len()),
        )
        .with_limit(spec.clients.len() as u64));
    }
    let m = node.roster.min_set_size();
    if spec.max_clients < m {
        return Err(invalid(
            "max_clients",
            format!("below this consortium's minimum contributor set size m = {m}: no set could be released"),
        )
        .with_limit(m as u64));
    }
    protocol::setup(spec).map_err(|e| invalid("plan", e.to_string()))?;
    check_dp_floor(node, spec)
}

/// The consortium's DP floor (the roster's `[dp]`): rounds without DP refused if it requires
/// DP, `m_h` and `t_c` at least its minimums, one round's charge at most `max_round_epsilon`.
/// Checked at registration and again before recording a set (the roster may have changed).
fn check_dp_floor(node: &Node, spec: &RoundSpec) -> Result<(), AppError> {
    let Some(floor) = node.roster.dp() else { return Ok(()) };
    let Some(dp) = spec.plan.dp() else {
        return if floor.required {
            Err(invalid(
                "dp",
                "this consortium requires differential privacy: a round without DP is refused",
            ))
        } else {
            Ok(())
        };
    };
    if dp.honest_shares() < floor.min_honest_shares {
        return Err(invalid(
            "dp.honest_shares",
            format!(
                "`dp.honest_shares` = {} is below this consortium's floor min_honest_shares = {}",
                dp.honest_shares(),
                floor.min_honest_shares
            ),
        )
        .with_limit(floor.min_honest_shares as u64));
    }
    if dp.colluders() < floor.min_colluders {
        return Err(invalid(
            "dp.colluders",
            format!(
                "`dp.colluders` = {} is below this consortium's floor min_colluders = {}",
                dp.colluders(),
                floor.min_colluders
            ),
        )
        .with_limit(floor.min_colluders as u64));
    }
    if let Some(cap) = floor.max_round_epsilon {
        let charged = cryptflow_he::dp::accounting::epsilon(&dp.charge(), floor.delta)
            .map(|(e, _)| e)
            .unwrap_or(f64::INFINITY);
        if charged > cap {
            return Err(invalid(
                "dp.noise_multiplier",
                format!(
                    "one round would charge each contributor ε = {charged:.4} at δ = {}, above this \
                     consortium's max_round_epsilon = {cap}: raise the noise multiplier",
                    floor.delta
                ),
            ));
        }
    }
    Ok(())
}

/// Checks how the spec's mask seed was fixed: `t` nonces signed by their nodes over the
/// commitment to the aggregator's contribution, and the seed their derivation
/// ([`protocol::check_seed`]); and, if this node was asked for nonces for the round
/// (`answered`: commitment and nonce), that the spec's commitment is one of those and the seed
/// includes this node's nonce for it — so that a seed this node signs is new whenever its own
/// nonce was fresh. A node never asked (down while the seed was fixed) signs a seed `t` others
/// fixed.
pub fn check_seed(
    node: &Node,
    spec: &RoundSpec,
    answered: &[(Sha256Digest, SeedPart)],
) -> Result<(), AppError> {
    protocol::check_seed(&node.committee, spec).map_err(|e| invalid("seed", e.to_string()))?;
    if answered.is_empty() {
        return Ok(());
    }
    let x = node.x.get();
    let commitment = protocol::seed_commitment(&spec.round_id, &spec.seed.contribution);
    let mine = answered.iter().find(|(c, _)| *c == commitment).map(|(_, n)| n);
    let included =
        |nonce: &SeedPart| spec.seed.nonces.iter().any(|n| n.share_index == x && n.nonce == *nonce);
    match mine {
        Some(nonce) if included(nonce) => Ok(()),
        Some(_) => Err(invalid(
            "seed",
            format!(
                "the seed leaves out the nonce key manager {x} answered for its commitment: the \
                 aggregator could have chosen the seed"
            ),
        )),
        None => Err(invalid(
            "seed",
            format!(
                "the seed's contribution is not one key manager {x} answered a nonce for: the \
                 aggregator asked under another commitment and left this node's nonce out"
            ),
        )),
    }
}

/// The seed was signed by this node for `earlier` already: refused (one seed, one round).
pub fn seed_reused(spec: &RoundSpec, earlier: &RoundId) -> AppError {
    conflict(
        "mask_seed",
        format!(
            "this key manager signed mask seed {} for round {earlier} already; a seed is never \
             signed twice",
            spec.mask_seed
        ),
    )
}

/// An existing registration answers an identical one; anything else conflicts (or is gone).
pub fn same_registration(row: &RoundRow, spec: &RoundSpec) -> Result<(), AppError> {
    match row.state {
        KmsRoundState::Destroyed => {
            Err(AppError::new(ErrorCode::Gone, "the round's shares were destroyed")
                .with_field("round"))
        }
        KmsRoundState::Refused => Err(refused()),
        _ if &row.spec != spec => Err(conflict(
            "round_id",
            format!("round {} is registered with another spec", spec.round_id),
        )),
        _ => Ok(()),
    }
}

fn refused() -> AppError {
    conflict(
        "round",
        "this key manager was restored from a backup taken while the round was open; it refuses the round",
    )
}

/// The round must be in `want`; other states give the answer a caller can act on.
pub fn require_state(row: &RoundRow, want: KmsRoundState) -> Result<(), AppError> {
    match (row.state, want) {
        (s, w) if s == w => Ok(()),
        (KmsRoundState::Destroyed, _) => {
            Err(AppError::new(ErrorCode::Gone, "the round's shares were destroyed")
                .with_field("round"))
        }
        (KmsRoundState::Refused, _) => Err(refused()),
        (KmsRoundState::SetRecorded, KmsRoundState::Open) => {
            Err(conflict("round", "the contributor set is already recorded"))
        }
        (KmsRoundState::Open, KmsRoundState::SetRecorded) => {
            Err(conflict("round", "no contributor set is recorded yet"))
        }
        _ => Err(conflict("round", "the round is not in a state that allows this")),
    }
}

/// Who may see a round's metadata: its members, readers, the aggregator, admins.
pub fn may_see_round(node: &Node, row: &RoundRow, caller: &Principal) -> Result<(), AppError> {
    match caller.role {
        Role::Admin | Role::Aggregator => Ok(()),
        Role::Reader if node.roster.member(&caller.subject).is_some_and(|m| m.reader) => Ok(()),
        Role::Client if row.spec.clients.binary_search(&caller.subject).is_ok() => Ok(()),
        _ => Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} is not a member of round {}", caller.subject, row.spec.round_id),
        )),
    }
}

/// A checked deposit: the share's wire bytes and their digest.
#[derive(Debug)]
pub struct CheckedDeposit {
    /// The share (wire encoding), to be sealed; zeroized on drop.
    pub share: zeroize::Zeroizing<Vec<u8>>,
    /// Its SHA-256.
    pub share_sha256: Sha256Digest,
}

/// Checks a deposit from `caller` for `client` in `row`'s round (see the module docs).
pub fn check_deposit(
    node: &Node,
    row: &RoundRow,
    caller: &Principal,
    client: &ClientId,
    deposit: &Deposit,
) -> Result<CheckedDeposit, AppError> {
    if caller.role != Role::Client || caller.signer != Signer::Roster || &caller.subject != client {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("only {client} itself, with its roster key, deposits its share"),
        ));
    }
    if row.spec.clients.binary_search(client).is_err() {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{client} is not a member of round {}", row.spec.round_id),
        ));
    }
    let share =
        KeyShare::from_bytes(&deposit.share.0).map_err(|e| invalid("share", e.to_string()))?;
    if share.index() != node.x {
        return Err(invalid(
            "share",
            format!("is for node {}; this is node {}", share.index(), node.x),
        ));
    }
    let n = protocol::setup(&row.spec).map_err(AppError::internal)?.ring_degree();
    if share.len() != n {
        return Err(invalid(
            "share",
            format!("has {} coefficients; the round's ring has {n}", share.len()),
        )
        .with_limit(n as u64));
    }
    let share_sha256 = Sha256Digest::of(&deposit.share.0);
    let statement = protocol::deposit_statement(
        &row.spec.round_id,
        &row.spec_hash,
        node.x.get(),
        client,
        &share_sha256,
        &deposit.upload_sha256,
        &deposit.upload_root,
    );
    let member = node
        .roster
        .member(client)
        .ok_or_else(|| AppError::new(ErrorCode::Forbidden, "not on the roster"))?;
    protocol::verify(&member.public_key, &statement, &deposit.signature, "the deposit")
        .map_err(|e| invalid("signature", e.to_string()))?;
    Ok(CheckedDeposit { share: zeroize::Zeroizing::new(deposit.share.0.clone()), share_sha256 })
}

/// A repeated deposit is fine if it is the same one.
pub fn same_deposit(
    existing: &DepositRow,
    checked: &CheckedDeposit,
    deposit: &Deposit,
) -> Result<(), AppError> {
    if existing.upload_sha256 == deposit.upload_sha256
        && existing.upload_root == Some(deposit.upload_root)
        && existing.share_sha256 == checked.share_sha256
    {
        Ok(())
    } else {
        Err(conflict(
            "share",
            format!("{} already deposited another share or upload digest", existing.client_id),
        ))
    }
}

/// Checks a contributor set against the round and this node's deposits; returns it sorted.
pub fn check_set(
    node: &Node,
    row: &RoundRow,
    set: Vec<Contribution>,
    deposits: &[DepositRow],
) -> Result<Vec<Contribution>, AppError> {
    let set = protocol::canonical_set(set).map_err(|e| invalid("contributors", e.to_string()))?;
    check_dp_floor(node, &row.spec)?;
    let dp = row.spec.plan.dp().map_or(0, |d| d.min_set());
    let need = (row.spec.min_clients.max(node.roster.min_set_size()) as u64).max(dp);
    if (set.len() as u64) < need {
        return Err(invalid(
            "contributors",
            format!(
                "{} members; a set needs at least max(min_clients, m, honest_shares + colluders) = {need}",
                set.len()
            ),
        )
        .with_limit(need));
    }
    if set.len() > row.spec.max_clients as usize {
        return Err(invalid(
            "contributors",
            format!("more than max_clients = {}", row.spec.max_clients),
        )
        .with_limit(row.spec.max_clients as u64));
    }
    let held: HashMap<&ClientId, &DepositRow> =
        deposits.iter().map(|d| (&d.client_id, d)).collect();
    for c in &set {
        if node.roster.member(&c.client_id).is_none()
            || row.spec.clients.binary_search(&c.client_id).is_err()
        {
            return Err(invalid(
                "contributors",
                format!("{} is not a member of the round", c.client_id),
            ));
        }
        match held.get(&c.client_id) {
            None => {
                return Err(invalid(
                    "contributors",
                    format!("{} has no deposit at this key manager", c.client_id),
                ))
            }
            Some(d) if d.upload_sha256 != c.upload_sha256 => {
                return Err(invalid(
                    "contributors",
                    format!(
                        "{}'s signed deposit vouches for another upload than the set's",
                        c.client_id
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(set)
}

/// The recorded set and aggregate again are fine; another set, or the same set with another
/// aggregate, conflicts (DESIGN §3, invariant 2: one set per round; and one aggregate, so
/// that every reader is held to the same one).
pub fn same_set(
    row: &RoundRow,
    set: &[Contribution],
    aggregate: &Sha256Digest,
) -> Result<(), AppError> {
    match (&row.set, &row.aggregate_sha256) {
        (Some(r), Some(a)) if r.as_slice() == set && a == aggregate => Ok(()),
        (Some(r), _) if r.as_slice() == set => Err(conflict(
            "aggregate_sha256",
            "this contributor set is recorded with another aggregate",
        )),
        (Some(_), _) => Err(conflict(
            "contributors",
            "another contributor set is already recorded for this round",
        )),
        (None, _) => Err(conflict("round", "the round is not open")),
    }
}

/// Who may obtain the release: a member of the recorded set, or a roster reader — with its
/// roster key. Never the aggregator, never an admin.
/// Whether `caller` may ask for a release of this round at all — a roster member of the round
/// or a reader, by roster key — checked before the round's state, so that nobody else learns
/// whether a set is recorded.
pub fn may_ask_release(node: &Node, row: &RoundRow, caller: &Principal) -> Result<(), AppError> {
    let allowed = caller.signer == Signer::Roster
        && match caller.role {
            Role::Client => row.spec.clients.binary_search(&caller.subject).is_ok(),
            Role::Reader => node.roster.member(&caller.subject).is_some_and(|m| m.reader),
            _ => false,
        };
    if allowed {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorCode::Forbidden,
            "releases go to the round's roster members and readers, authenticated by their roster key",
        ))
    }
}

/// Whether `caller` may read the release of the recorded `set`.
pub fn may_read(node: &Node, set: &[Contribution], caller: &Principal) -> Result<(), AppError> {
    if caller.signer != Signer::Roster {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            "releases go to roster members authenticated by their roster key",
        ));
    }
    let allowed = match caller.role {
        Role::Client => set.iter().any(|c| c.client_id == caller.subject),
        Role::Reader => node.roster.member(&caller.subject).is_some_and(|m| m.reader),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} is neither a member of the recorded set nor a reader", caller.subject),
        ))
    }
}

/// The release: the unweighted sum of the set's shares at this node.
pub fn release(node: &Node, shares: &[KeyShare]) -> Result<Release, AppError> {
    Release::sum(node.x, shares).map_err(AppError::internal)
}

#[cfg(test)]
mod tests;
