//! The key manager's rules, as plain functions of its configuration and the stored round —
//! no I/O, unit tested below. The routes call them between extraction and storage.
//!
//! - A round can only select roster members, and is immutable once registered.
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
use cryptflow_services::api::round::{Contribution, RoundSpec, MAX_DIMENSION, MAX_ROUND_CLIENTS};
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

    /// This node's signed echo of `spec`.
    pub fn echo(&self, spec: &RoundSpec) -> SpecEcho {
        let roster_digest = self.roster.digest();
        let m = self.roster.min_set_size();
        let hash = protocol::spec_hash(spec, &self.committee.digest(), &roster_digest, m);
        SpecEcho {
            share_index: self.x.get(),
            spec_hash: hash,
            roster_digest,
            min_set_size: m,
            signature: self.signing.sign(&protocol::echo_statement(self.x.get(), &hash)),
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
    Ok(())
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
    /// The share (wire encoding), to be sealed.
    pub share: Vec<u8>,
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
    );
    let member = node
        .roster
        .member(client)
        .ok_or_else(|| AppError::new(ErrorCode::Forbidden, "not on the roster"))?;
    protocol::verify(&member.public_key, &statement, &deposit.signature, "the deposit")
        .map_err(|e| invalid("signature", e.to_string()))?;
    Ok(CheckedDeposit { share: deposit.share.0.clone(), share_sha256 })
}

/// A repeated deposit is fine if it is the same one.
pub fn same_deposit(
    existing: &DepositRow,
    checked: &CheckedDeposit,
    deposit: &Deposit,
) -> Result<(), AppError> {
    if existing.upload_sha256 == deposit.upload_sha256
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
    let need = row.spec.min_clients.max(node.roster.min_set_size());
    if (set.len() as u64) < need as u64 {
        return Err(invalid(
            "contributors",
            format!("{} members; a set needs at least max(min_clients, m) = {need}", set.len()),
        )
        .with_limit(need as u64));
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

/// The recorded set again is fine; another set conflicts (DESIGN §3, invariant 2).
pub fn same_set(
    recorded: Option<&Vec<Contribution>>,
    set: &[Contribution],
) -> Result<(), AppError> {
    match recorded {
        Some(r) if r.as_slice() == set => Ok(()),
        Some(_) => Err(conflict(
            "contributors",
            "another contributor set is already recorded for this round",
        )),
        None => Err(conflict("round", "the round is not open")),
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
mod tests {
    use super::*;
    use cryptflow_he::planner::{plan, PlanRequest, Weighting};
    use cryptflow_he::{MaskSeed, ParameterSet};
    use cryptflow_services::api::Base64Bytes;
    use cryptflow_services::protocol::{roster_member, CommitteeNode};

    struct World {
        node: Node,
        sites: Vec<(ClientId, SiteKey)>,
        row: RoundRow,
    }

    fn world(m: u32) -> World {
        let node_key = SiteKey::generate();
        let committee = Committee::try_new(
            1,
            vec![CommitteeNode {
                x: 1,
                url: "http://kms".into(),
                public_key: node_key.public_key(),
            }],
        )
        .unwrap();
        let sites: Vec<(ClientId, SiteKey)> = (0..4)
            .map(|i| (ClientId::parse(format!("s{i}")).unwrap(), SiteKey::generate()))
            .collect();
        let mut members: Vec<_> = sites.iter().map(|(id, k)| roster_member(id, k, false)).collect();
        let reader = SiteKey::generate();
        members.push(roster_member(&ClientId::parse("reader").unwrap(), &reader, true));
        let roster = Roster::try_new(m, members).unwrap();
        let node = Node::try_new(committee, 1, node_key, roster).unwrap();
        let p = plan(
            &ParameterSet::default_128(),
            &PlanRequest {
                max_clients: 3,
                clip_bound: 1.0,
                max_abs_error: 1e-6,
                weighting: Weighting::Uniform,
            },
        )
        .unwrap();
        let spec = RoundSpec {
            round_id: RoundId::parse("r").unwrap(),
            values: 10,
            clients: sites[..3].iter().map(|(id, _)| id.clone()).collect(),
            min_clients: 2,
            max_clients: 3,
            mask_seed: MaskSeed([1; 16]),
            plan: p,
        };
        let echo = node.echo(&spec);
        let row = RoundRow {
            spec_hash: echo.spec_hash,
            spec,
            echo,
            state: KmsRoundState::Open,
            set: None,
            created_at: 0,
        };
        World { node, sites, row }
    }

    fn principal(id: &ClientId, role: Role, signer: Signer) -> Principal {
        Principal { subject: id.clone(), role, signer }
    }

    fn deposit(w: &World, site: usize, upload: Sha256Digest) -> Deposit {
        let key = cryptflow_he::ClientKey::generate(&ParameterSet::default_128()).unwrap();
        let share = key.share(w.node.committee.shape()).unwrap().remove(0).to_bytes();
        let (id, k) = &w.sites[site];
        let st = protocol::deposit_statement(
            &w.row.spec.round_id,
            &w.row.spec_hash,
            1,
            id,
            &Sha256Digest::of(&share),
            &upload,
        );
        Deposit { upload_sha256: upload, share: Base64Bytes(share), signature: k.sign(&st) }
    }

    #[test]
    fn registrations_select_roster_members_only() {
        let w = world(2);
        assert!(check_registration(&w.node, &w.row.spec.round_id, &w.row.spec).is_ok());
        let mut stranger = w.row.spec.clone();
        stranger.clients.push(ClientId::parse("zz-sybil").unwrap());
        let e = check_registration(&w.node, &stranger.round_id, &stranger).unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("clients"));
        // A round whose max_clients is below m could never release: refused up front.
        let w4 = world(4);
        let e = check_registration(&w4.node, &w4.row.spec.round_id, &w4.row.spec).unwrap_err();
        assert_eq!(
            (e.problem().field.as_deref(), e.problem().limit),
            (Some("max_clients"), Some(4))
        );
        assert!(same_registration(&w.row, &w.row.spec).is_ok());
        let other = RoundSpec { min_clients: 3, ..w.row.spec.clone() };
        assert_eq!(same_registration(&w.row, &other).unwrap_err().problem().status, 409);
    }

    #[test]
    fn deposits_need_the_members_own_signature() {
        let w = world(2);
        let d = deposit(&w, 0, Sha256Digest([5; 32]));
        let me = &w.sites[0].0;
        assert!(check_deposit(
            &w.node,
            &w.row,
            &principal(me, Role::Client, Signer::Roster),
            me,
            &d
        )
        .is_ok());
        // Another member's slot, an issuer token, a non-member: refused.
        let other = &w.sites[1].0;
        assert_eq!(
            check_deposit(&w.node, &w.row, &principal(other, Role::Client, Signer::Roster), me, &d)
                .unwrap_err()
                .problem()
                .status,
            403
        );
        assert_eq!(
            check_deposit(&w.node, &w.row, &principal(me, Role::Client, Signer::Issuer), me, &d)
                .unwrap_err()
                .problem()
                .status,
            403
        );
        let outsider = &w.sites[3].0;
        let d3 = deposit(&w, 3, Sha256Digest([5; 32]));
        assert_eq!(
            check_deposit(
                &w.node,
                &w.row,
                &principal(outsider, Role::Client, Signer::Roster),
                outsider,
                &d3
            )
            .unwrap_err()
            .problem()
            .status,
            403
        );
        // The signature binds the upload digest: changing it breaks the signature.
        let tampered = Deposit { upload_sha256: Sha256Digest([6; 32]), ..d.clone() };
        let e = check_deposit(
            &w.node,
            &w.row,
            &principal(me, Role::Client, Signer::Roster),
            me,
            &tampered,
        )
        .unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("signature"));
    }

    #[test]
    fn sets_are_checked_against_deposits_roster_and_sizes() {
        let w = world(2);
        let c = |i: usize, d: u8| Contribution {
            client_id: w.sites[i].0.clone(),
            upload_sha256: Sha256Digest([d; 32]),
        };
        let held: Vec<DepositRow> = (0..3)
            .map(|i| DepositRow {
                client_id: w.sites[i].0.clone(),
                upload_sha256: Sha256Digest([i as u8; 32]),
                share_sha256: Sha256Digest([0; 32]),
            })
            .collect();
        assert_eq!(
            check_set(&w.node, &w.row, vec![c(1, 1), c(0, 0)], &held).unwrap(),
            vec![c(0, 0), c(1, 1)]
        );
        // (e) a digest that differs from the member's deposit, or a member without one.
        assert!(check_set(&w.node, &w.row, vec![c(0, 0), c(1, 9)], &held).is_err());
        assert!(check_set(&w.node, &w.row, vec![c(0, 0), c(1, 1)], &held[..1]).is_err());
        // A non-roster or non-round client; a set below max(min_clients, m); duplicates.
        let sybil = Contribution {
            client_id: ClientId::parse("sybil").unwrap(),
            upload_sha256: Sha256Digest([0; 32]),
        };
        assert!(check_set(&w.node, &w.row, vec![c(0, 0), sybil], &held).is_err());
        assert!(check_set(&w.node, &w.row, vec![c(3, 3), c(0, 0)], &held).is_err());
        assert_eq!(
            check_set(&w.node, &w.row, vec![c(0, 0)], &held).unwrap_err().problem().limit,
            Some(2)
        );
        assert!(check_set(&w.node, &w.row, vec![c(0, 0), c(0, 0)], &held).is_err());
        // (b) once recorded, only the same set is answered.
        let recorded = vec![c(0, 0), c(1, 1)];
        assert!(same_set(Some(&recorded), &recorded).is_ok());
        assert_eq!(
            same_set(Some(&recorded), &[c(0, 0), c(2, 2)]).unwrap_err().problem().status,
            409
        );
    }

    #[test]
    fn releases_go_to_members_and_readers_only_never_the_aggregator() {
        let w = world(2);
        let set = vec![Contribution {
            client_id: w.sites[0].0.clone(),
            upload_sha256: Sha256Digest([0; 32]),
        }];
        let member = &w.sites[0].0;
        assert!(may_read(&w.node, &set, &principal(member, Role::Client, Signer::Roster)).is_ok());
        let reader = ClientId::parse("reader").unwrap();
        assert!(may_read(&w.node, &set, &principal(&reader, Role::Reader, Signer::Roster)).is_ok());
        // (g) the aggregator's own credentials — or an admin's, or an issuer-minted client
        // token — obtain nothing.
        let agg = ClientId::parse("aggregator").unwrap();
        assert!(
            may_read(&w.node, &set, &principal(&agg, Role::Aggregator, Signer::Issuer)).is_err()
        );
        assert!(may_read(&w.node, &set, &principal(&agg, Role::Admin, Signer::Issuer)).is_err());
        assert!(may_read(&w.node, &set, &principal(member, Role::Client, Signer::Issuer)).is_err());
        assert!(may_read(&w.node, &set, &principal(&w.sites[1].0, Role::Client, Signer::Roster))
            .is_err());
    }
}
