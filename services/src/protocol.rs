//! The round protocol's rules, in one place for the key managers, the aggregator and the SDK:
//!
//! - the **committee file** ([`Committee`]) every node and client pins: `n` nodes with their
//!   share index, URL and Ed25519 signing key, threshold `t`;
//! - the **roster** ([`Roster`]) every node is configured with: the consortium's members, their
//!   Ed25519 keys, which may read means they did not contribute to, and the minimum set size
//!   `m`;
//! - the **canonical bytes** of a round spec and its hash, the statement a node signs when it
//!   registers a round, and the statement a client signs with a deposit;
//! - a site's signing key ([`SiteKey`]): signs deposits and mints the short-lived tokens a
//!   roster member authenticates with at the key managers (EdDSA JWTs whose `kid` is
//!   `roster:<client id>`), and, as an issuer key, operators' tokens;
//! - what a spec implies for an upload ([`setup`], [`upload_len`]).
//!
//! Every statement starts with a domain-separation tag ending in a zero byte, and every
//! variable-length field is prefixed with its length as a `u32`, so no two statements share an
//! encoding.

use crate::api::kms::SpecEcho;
use crate::api::round::{Contribution, Layout, RoundSpec, SeedDerivation, SeedPart};
use crate::api::{PublicKeyHex, SignatureHex};
use crate::ids::{ClientId, RoundId, Sha256Digest};
use crate::role::Role;
use base64::Engine;
use cryptflow_he::sharing::{CommitteeShape, ShareIndex};
use cryptflow_he::RoundSetup;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

/// A protocol object that is not well-formed or does not verify.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A committee file that is not a valid committee.
    #[error("committee: {0}")]
    Committee(String),
    /// A roster that is not valid.
    #[error("roster: {0}")]
    Roster(String),
    /// A key that cannot be read.
    #[error("key: {0}")]
    Key(String),
    /// A signature that does not verify.
    #[error("the signature of {what} does not verify")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },
    /// A spec inconsistent with its plan or limits.
    #[error("round spec: {0}")]
    Spec(String),
    /// A sealed deposit that cannot be sealed or opened (`crate::sealed`).
    #[error("sealed deposit: {0}")]
    Sealed(String),
}

/// Length-prefixed appends for canonical encodings.
pub(crate) struct Canon(pub(crate) Vec<u8>);

impl Canon {
    pub(crate) fn new(tag: &str) -> Self {
        let mut v = tag.as_bytes().to_vec();
        v.push(0);
        Self(v)
    }
    pub(crate) fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    pub(crate) fn fixed(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> Self {
        self.fixed(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.fixed(&v.to_le_bytes())
    }
    fn digest(self) -> Sha256Digest {
        Sha256Digest(Sha256::digest(&self.0).into())
    }
}

/// One node of the committee, as the committee file lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitteeNode {
    /// Share index `x` (1..=n).
    pub x: u8,
    /// Base URL of the node's client-facing listener.
    pub url: String,
    /// The node's Ed25519 signing key (it signs its echo of every round spec).
    pub public_key: PublicKeyHex,
}

/// The committee file: `n` key managers and the threshold `t`. Every node and every client is
/// configured with the same file; a `Committee` that exists is valid (indices `1..=n`, each
/// once, `n/2 < t ≤ n`, `n ≤ 16`, URLs `http(s)://`, distinct keys).
///
/// ```
/// use cryptflow_services::protocol::Committee;
/// let c = Committee::from_toml(r#"
///     threshold = 2
///     [[nodes]]
///     x = 1
///     url = "https://kms-1.example"
///     public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
///     [[nodes]]
///     x = 2
///     url = "https://kms-2.example"
///     public_key = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
///     [[nodes]]
///     x = 3
///     url = "https://kms-3.example"
///     public_key = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"
/// "#).unwrap();
/// assert_eq!((c.shape().nodes(), c.shape().threshold(), c.shape().privacy_threshold()), (3, 2, 1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Committee {
    threshold: u8,
    nodes: Vec<CommitteeNode>,
    #[serde(skip)]
    shape: CommitteeShape,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitteeFile {
    threshold: u8,
    nodes: Vec<CommitteeNode>,
}

impl<'de> Deserialize<'de> for Committee {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = CommitteeFile::deserialize(d)?;
        Committee::try_new(f.threshold, f.nodes).map_err(serde::de::Error::custom)
    }
}

impl Committee {
    /// Validates a committee.
    pub fn try_new(threshold: u8, mut nodes: Vec<CommitteeNode>) -> Result<Self, ProtocolError> {
        let n = u8::try_from(nodes.len())
            .map_err(|_| ProtocolError::Committee("more than 16 nodes".into()))?;
        let shape = CommitteeShape::try_new(n, threshold)
            .map_err(|e| ProtocolError::Committee(e.to_string()))?;
        nodes.sort_by_key(|node| node.x);
        for (i, node) in nodes.iter().enumerate() {
            if node.x as usize != i + 1 {
                return Err(ProtocolError::Committee(format!(
                    "share indices must be 1..={n}, each once (found {})",
                    node.x
                )));
            }
            if !(node.url.starts_with("http://") || node.url.starts_with("https://")) {
                return Err(ProtocolError::Committee(format!(
                    "node {}: url `{}` must start with http:// or https://",
                    node.x, node.url
                )));
            }
            VerifyingKey::from_bytes(&node.public_key.0).map_err(|_| {
                ProtocolError::Committee(format!("node {}: not an Ed25519 public key", node.x))
            })?;
        }
        let keys: BTreeSet<[u8; 32]> = nodes.iter().map(|n| n.public_key.0).collect();
        if keys.len() != nodes.len() {
            return Err(ProtocolError::Committee("two nodes share a signing key".into()));
        }
        Ok(Self { threshold, nodes, shape })
    }

    /// Parses a committee file (TOML).
    pub fn from_toml(text: &str) -> Result<Self, ProtocolError> {
        toml::from_str(text).map_err(|e| ProtocolError::Committee(e.message().to_owned()))
    }

    /// The committee file's text.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct F<'a> {
            threshold: u8,
            nodes: &'a [CommitteeNode],
        }
        toml::to_string(&F { threshold: self.threshold, nodes: &self.nodes }).unwrap_or_default()
    }

    /// `n` and `t`.
    pub fn shape(&self) -> CommitteeShape {
        self.shape
    }

    /// What an operator should know about this committee's shape, one sentence each: it
    /// tolerates no key manager colluding with the aggregator (`2t − n − 1 = 0`; sites refuse
    /// it by default), or every node is needed (`t = n > 1`: the first node down stops every
    /// round). `check-config` prints these and `serve` logs them.
    ///
    /// ```
    /// # use cryptflow_services::protocol::Committee;
    /// # let node = |x: u8, key: &str| format!("[[nodes]]\nx = {x}\nurl = \"https://kms-{x}.example\"\npublic_key = \"{key}\"\n");
    /// # let keys = ["d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    /// #     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    /// #     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"];
    /// # let file = |t: u8| format!("threshold = {t}\n{}", (1..=3).map(|x| node(x, keys[x as usize - 1])).collect::<String>());
    /// let two_of_three = Committee::from_toml(&file(2)).unwrap();
    /// assert!(two_of_three.shape_warnings()[0].contains("tolerates no key manager colluding"));
    /// let three_of_three = Committee::from_toml(&file(3)).unwrap();
    /// assert!(three_of_three.shape_warnings()[0].contains("first node down"));
    /// ```
    pub fn shape_warnings(&self) -> Vec<String> {
        let shape = self.shape;
        let (n, t) = (shape.nodes(), shape.threshold());
        let mut warnings = Vec::new();
        if n == 1 {
            warnings.push(
                "the committee is a single key manager: if it sides with the aggregator it reads \
                 every update; sites refuse it unless their policy sets allow_single_key_manager"
                    .to_owned(),
            );
        } else if shape.tolerated_colluding() == 0 {
            warnings.push(format!(
                "the committee (n, t) = ({n}, {t}) tolerates no key manager colluding with the \
                 aggregator (2t − n − 1 = 0): one such node reads a chosen site's update; sites \
                 refuse it by default (min_tolerated_colluding_nodes = 1) — e.g. (4, 3) tolerates one"
            ));
        }
        if n > 1 && t == n {
            warnings.push(format!(
                "the committee (n, t) = ({n}, {t}) needs every node: the first node down stops \
                 every round (n − t = 0)"
            ));
        }
        warnings
    }
    /// The nodes, by share index.
    pub fn nodes(&self) -> &[CommitteeNode] {
        &self.nodes
    }
    /// The node with share index `x`.
    pub fn node(&self, x: u8) -> Option<&CommitteeNode> {
        self.nodes.get((x as usize).wrapping_sub(1))
    }

    /// The digest every node's echo is bound to: threshold, then each node's index and key.
    /// URLs are left out: an operator may move a node without a new committee.
    pub fn digest(&self) -> Sha256Digest {
        let mut c =
            Canon::new("cryptflow committee v2").fixed(&[self.threshold, self.nodes.len() as u8]);
        for n in &self.nodes {
            c = c.fixed(&[n.x]).fixed(&n.public_key.0);
        }
        c.digest()
    }
}

/// One roster member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterMember {
    /// The member's client id (the `sub` of its tokens).
    pub id: ClientId,
    /// Its Ed25519 public key (`cryptflow keygen` prints it).
    pub public_key: PublicKeyHex,
    /// Whether it may read the mean of rounds it did not contribute to.
    #[serde(default)]
    pub reader: bool,
}

/// The consortium's roster, part of every key manager's configuration (not of a round): who
/// may be in a round, with which key, who may read, and the minimum set size `m`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Roster {
    min_set_size: u32,
    members: Vec<RosterMember>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dp: Option<DpPolicy>,
}

/// The consortium's floor on differential privacy (the roster file's `[dp]` table): set by
/// the consortium, like the roster — never by the operator of a round. Each key manager
/// refuses to register a round below it.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpPolicy {
    /// Refuse rounds without DP.
    #[serde(default)]
    pub required: bool,
    /// Smallest `m_h` (honest shares the noise is sized for) a DP round may declare.
    #[serde(default = "one")]
    pub min_honest_shares: u32,
    /// Smallest `t_c` (colluding members the noise must withstand), at least 1.
    #[serde(default = "one")]
    pub min_colluders: u32,
    /// Largest `ε` one round may charge a contributor, at [`DpPolicy::delta`]: a round whose
    /// noise is weaker is refused (the operator picks the noise; this bounds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_round_epsilon: Option<f64>,
    /// `δ` of `max_round_epsilon` (default 10^-5).
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    min_set_size: u32,
    #[serde(default)]
    members: Vec<RosterMember>,
    #[serde(default)]
    dp: Option<DpPolicy>,
}

impl<'de> Deserialize<'de> for Roster {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = RosterFile::deserialize(d)?;
        Roster::try_new(f.min_set_size, f.members)
            .and_then(|r| r.with_dp(f.dp))
            .map_err(serde::de::Error::custom)
    }
}

impl Roster {
    /// Validates a roster: `m ≥ 1`, ids unique, keys valid.
    pub fn try_new(
        min_set_size: u32,
        mut members: Vec<RosterMember>,
    ) -> Result<Self, ProtocolError> {
        if min_set_size == 0 {
            return Err(ProtocolError::Roster("min_set_size must be at least 1".into()));
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in members.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(ProtocolError::Roster(format!("`{}` is listed twice", pair[0].id)));
            }
        }
        for m in &members {
            VerifyingKey::from_bytes(&m.public_key.0).map_err(|_| {
                ProtocolError::Roster(format!("`{}`: not an Ed25519 public key", m.id))
            })?;
        }
        Ok(Self { min_set_size, members, dp: None })
    }

    /// The roster with the consortium's DP floor (`None`: rounds may be without DP, any
    /// `m_h ≥ 1`, `t_c ≥ 1`).
    pub fn with_dp(mut self, dp: Option<DpPolicy>) -> Result<Self, ProtocolError> {
        if let Some(p) = &dp {
            if p.min_honest_shares == 0 || p.min_colluders == 0 {
                return Err(ProtocolError::Roster(
                    "dp.min_honest_shares and dp.min_colluders must be at least 1".into(),
                ));
            }
            if !(p.delta > 0.0 && p.delta < 1.0) {
                return Err(ProtocolError::Roster("dp.delta must be in (0, 1)".into()));
            }
            if p.max_round_epsilon.is_some_and(|e| !(e.is_finite() && e > 0.0)) {
                return Err(ProtocolError::Roster(
                    "dp.max_round_epsilon must be a positive number".into(),
                ));
            }
        }
        self.dp = dp;
        Ok(self)
    }

    /// The consortium's DP floor, if any.
    pub fn dp(&self) -> Option<&DpPolicy> {
        self.dp.as_ref()
    }

    /// Parses a roster file (TOML).
    pub fn from_toml(text: &str) -> Result<Self, ProtocolError> {
        toml::from_str(text).map_err(|e| ProtocolError::Roster(e.message().to_owned()))
    }

    /// The roster file's text.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct F<'a> {
            min_set_size: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            dp: Option<&'a DpPolicy>,
            members: &'a [RosterMember],
        }
        toml::to_string(&F {
            min_set_size: self.min_set_size,
            dp: self.dp.as_ref(),
            members: &self.members,
        })
        .unwrap_or_default()
    }

    /// `m`.
    pub fn min_set_size(&self) -> u32 {
        self.min_set_size
    }
    /// The members, sorted by id.
    pub fn members(&self) -> &[RosterMember] {
        &self.members
    }
    /// A member by id.
    pub fn member(&self, id: &ClientId) -> Option<&RosterMember> {
        self.members.binary_search_by(|m| m.id.cmp(id)).ok().map(|i| &self.members[i])
    }

    /// Digest of the roster: `m`, then each member's id, key and reader flag, then — only if
    /// the roster has one — the DP floor (so a roster without one keeps its digest).
    pub fn digest(&self) -> Sha256Digest {
        let mut c =
            Canon::new("cryptflow roster v2").u32(self.min_set_size).u64(self.members.len() as u64);
        for m in &self.members {
            c = c.bytes(m.id.as_str().as_bytes()).fixed(&m.public_key.0).fixed(&[m.reader as u8]);
        }
        if let Some(p) = &self.dp {
            c = c
                .bytes(b"dp")
                .fixed(&[p.required as u8])
                .u32(p.min_honest_shares)
                .u32(p.min_colluders)
                .fixed(&p.max_round_epsilon.unwrap_or(0.0).to_bits().to_le_bytes())
                .fixed(&p.delta.to_bits().to_le_bytes());
        }
        c.digest()
    }
}

/// Digest of a round's member list (sorted ids).
pub fn members_digest(clients: &[ClientId]) -> Sha256Digest {
    let mut sorted: Vec<&ClientId> = clients.iter().collect();
    sorted.sort();
    let mut c = Canon::new("cryptflow round members v2").u64(sorted.len() as u64);
    for id in sorted {
        c = c.bytes(id.as_str().as_bytes());
    }
    c.digest()
}

/// The digest of a layout: flat, or every tensor's name and shape in order.
pub fn layout_digest(layout: &Layout) -> Sha256Digest {
    let c = Canon::new("cryptflow layout v2");
    match layout {
        Layout::Dimension(d) => c.u32(0).u64(*d).digest(),
        Layout::Tensors(ts) => {
            let mut c = c.u32(1).u64(ts.len() as u64);
            for t in ts {
                c = c.bytes(t.name.as_bytes()).u64(t.shape.len() as u64);
                for dim in &t.shape {
                    c = c.u64(*dim);
                }
            }
            c.digest()
        }
    }
}

/// The audience of roster tokens for committee node `node`: its index and signing key. A
/// token minted for one node is refused by every other, so a node (or whatever terminates
/// TLS in front of it) cannot replay a member's token at its peers to collect their releases.
pub fn node_audience(node: &CommitteeNode) -> String {
    format!("cryptflow-kms:{}:{}", node.x, node.public_key)
}

/// The digest of a contributor set (canonical order: by client), as a node's restore witness
/// records it.
pub fn set_digest(set: &[Contribution]) -> Sha256Digest {
    let mut sorted: Vec<&Contribution> = set.iter().collect();
    sorted.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let mut c = Canon::new("cryptflow contributor set v2").u64(sorted.len() as u64);
    for m in sorted {
        c = c.bytes(m.client_id.as_str().as_bytes()).fixed(&m.upload_sha256.0);
    }
    c.digest()
}

/// The hash a node signs for a round: the spec's every field (members by digest, the plan by
/// its digest), bound to the committee, the roster and `m` of the node's configuration.
pub fn spec_hash(
    spec: &RoundSpec,
    committee: &Sha256Digest,
    roster: &Sha256Digest,
    min_set_size: u32,
) -> Sha256Digest {
    // A spec from before two-step seeds (no derivation) keeps its v2 hash, so the echoes its
    // nodes signed then still verify for readers of its mean; no new round is registered
    // without a derivation (nodes and submitting clients run `check_seed`).
    let legacy = spec.seed.is_legacy();
    let mut c =
        Canon::new(if legacy { "cryptflow round spec v2" } else { "cryptflow round spec v3" })
            .bytes(spec.round_id.as_str().as_bytes())
            .u64(spec.values)
            .fixed(&members_digest(&spec.clients).0)
            .u32(spec.min_clients)
            .u32(spec.max_clients)
            .fixed(&spec.mask_seed.0);
    if !legacy {
        c = c.fixed(&spec.seed.contribution.0).u32(spec.seed.nonces.len() as u32);
        for n in &spec.seed.nonces {
            c = c.fixed(&[n.share_index]).fixed(&n.nonce.0).fixed(&n.signature.0);
        }
    }
    c.fixed(&spec.plan.digest())
        .fixed(&spec.layout_sha256.0)
        .fixed(&committee.0)
        .fixed(&roster.0)
        .u32(min_set_size)
        .digest()
}

/// The aggregator's commitment to its contribution to round `round`'s seed: what it sends the
/// key managers before any of them answers with a nonce, so that it cannot choose the
/// contribution after seeing theirs.
pub fn seed_commitment(round: &RoundId, contribution: &SeedPart) -> Sha256Digest {
    Canon::new("cryptflow seed commitment v1")
        .bytes(round.as_str().as_bytes())
        .fixed(&contribution.0)
        .digest()
}

/// What node `x` signs when it answers a nonce for round `round`'s seed, given the
/// aggregator's commitment.
pub fn seed_nonce_statement(
    x: u8,
    round: &RoundId,
    commitment: &Sha256Digest,
    nonce: &SeedPart,
) -> Vec<u8> {
    Canon::new("cryptflow seed nonce v1")
        .fixed(&[x])
        .bytes(round.as_str().as_bytes())
        .fixed(&commitment.0)
        .fixed(&nonce.0)
        .0
}

/// The mask seed a derivation gives: the first 16 bytes of SHA-256 over a label, the round,
/// the contribution and every `(x, nonce)` in the derivation's (node) order.
pub fn derive_mask_seed(round: &RoundId, seed: &SeedDerivation) -> cryptflow_he::MaskSeed {
    let mut c = Canon::new("cryptflow mask seed v1")
        .bytes(round.as_str().as_bytes())
        .fixed(&seed.contribution.0)
        .u32(seed.nonces.len() as u32);
    for n in &seed.nonces {
        c = c.fixed(&[n.share_index]).fixed(&n.nonce.0);
    }
    let d = c.digest().0;
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    cryptflow_he::MaskSeed(out)
}

/// Checks how a spec's mask seed was fixed, against the pinned committee: at least `t` nonces,
/// in strictly increasing node order, each of a committee node and signed by it over the
/// commitment to the spec's contribution, and `mask_seed` their derivation. What it proves:
/// the seed mixes a contribution fixed before the nonces with the nonces of `t` nodes, so one
/// honest node's fresh nonce makes it new — not that the aggregator could not choose among
/// several candidates.
pub fn check_seed(committee: &Committee, spec: &RoundSpec) -> Result<(), ProtocolError> {
    let seed = &spec.seed;
    let t = committee.shape().threshold() as usize;
    if seed.nonces.len() < t {
        return Err(ProtocolError::Spec(format!(
            "the round's mask seed carries {} key-manager nonces; {t} are needed (a seed the \
             aggregator fixed alone, or a round created before two-step seeds)",
            seed.nonces.len()
        )));
    }
    if !seed.nonces.windows(2).all(|w| w[0].share_index < w[1].share_index) {
        return Err(ProtocolError::Spec(
            "the seed's nonces are not in increasing node order".into(),
        ));
    }
    let commitment = seed_commitment(&spec.round_id, &seed.contribution);
    for n in &seed.nonces {
        let node = committee.node(n.share_index).ok_or_else(|| {
            ProtocolError::Committee(format!(
                "the seed carries a nonce of node {}, which is not in the committee",
                n.share_index
            ))
        })?;
        verify(
            &node.public_key,
            &seed_nonce_statement(n.share_index, &spec.round_id, &commitment, &n.nonce),
            &n.signature,
            "a seed nonce",
        )?;
    }
    if derive_mask_seed(&spec.round_id, seed) != spec.mask_seed {
        return Err(ProtocolError::Spec(
            "the round's mask seed is not the one its contribution and nonces derive".into(),
        ));
    }
    Ok(())
}

/// What node `x` signs when it registers a round: the spec hash and its deposit key for the
/// round.
pub fn echo_statement(x: u8, spec_hash: &Sha256Digest, deposit_key: &[u8]) -> Vec<u8> {
    Canon::new("cryptflow spec echo v3").fixed(&[x]).fixed(&spec_hash.0).bytes(deposit_key).0
}

/// What a client signs with a deposit: the round, the spec hash it checked, the node, itself,
/// the SHA-256 of the share, of its upload, and its upload's root over verification spans
/// (`cryptflow_he::merkle`: what a verifier sampling spans checks them against).
pub fn deposit_statement(
    round: &RoundId,
    spec_hash: &Sha256Digest,
    x: u8,
    client: &ClientId,
    share_sha256: &Sha256Digest,
    upload_sha256: &Sha256Digest,
    upload_root: &Sha256Digest,
) -> Vec<u8> {
    Canon::new("cryptflow deposit v3")
        .bytes(round.as_str().as_bytes())
        .fixed(&spec_hash.0)
        .fixed(&[x])
        .bytes(client.as_str().as_bytes())
        .fixed(&share_sha256.0)
        .fixed(&upload_sha256.0)
        .fixed(&upload_root.0)
        .0
}

/// Checks an Ed25519 signature.
pub fn verify(
    key: &PublicKeyHex,
    message: &[u8],
    signature: &SignatureHex,
    what: &'static str,
) -> Result<(), ProtocolError> {
    let key = VerifyingKey::from_bytes(&key.0).map_err(|_| ProtocolError::BadSignature { what })?;
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify(message, &sig).map_err(|_| ProtocolError::BadSignature { what })
}

/// Checks a node's echo of `spec` against the pinned committee: the node exists, its echo's
/// hash is the spec's with the committee's digest and the echo's roster digest, and its
/// signature verifies with the pinned key. Returns the spec hash.
pub fn verify_echo(
    committee: &Committee,
    spec: &RoundSpec,
    echo: &SpecEcho,
) -> Result<Sha256Digest, ProtocolError> {
    let node = committee.node(echo.share_index).ok_or_else(|| {
        ProtocolError::Committee(format!("no node {} in the committee", echo.share_index))
    })?;
    let expected = spec_hash(spec, &committee.digest(), &echo.roster_digest, echo.min_set_size);
    if expected != echo.spec_hash {
        return Err(ProtocolError::Spec(format!(
            "node {} signed another spec (or has another committee)",
            echo.share_index
        )));
    }
    verify(
        &node.public_key,
        &echo_statement(echo.share_index, &expected, &echo.deposit_key.0),
        &echo.signature,
        "a spec echo",
    )?;
    Ok(expected)
}

/// The [`RoundSetup`] a spec implies (plan, seed, size).
pub fn setup(spec: &RoundSpec) -> Result<RoundSetup, ProtocolError> {
    if spec.plan.max_clients() != spec.max_clients {
        return Err(ProtocolError::Spec("the plan's max_clients is not the round's".into()));
    }
    RoundSetup::try_new(spec.plan, spec.mask_seed, spec.values)
        .map_err(|e| ProtocolError::Spec(e.to_string()))
}

/// The exact size of an upload (and of the aggregate) of this round.
pub fn upload_len(spec: &RoundSpec) -> Result<u64, ProtocolError> {
    Ok(setup(spec)?.upload_len())
}

/// Sorts a contributor list and checks each client appears once.
pub fn canonical_set(mut set: Vec<Contribution>) -> Result<Vec<Contribution>, ProtocolError> {
    set.sort();
    for pair in set.windows(2) {
        if pair[0].client_id == pair[1].client_id {
            return Err(ProtocolError::Spec(format!(
                "{} appears twice in the set",
                pair[0].client_id
            )));
        }
    }
    Ok(set)
}

/// Lifetime of the tokens a roster member mints for the key managers.
pub const ROSTER_TOKEN_TTL_SECS: u64 = 300;

/// The `kid` of a roster member's self-minted token.
pub fn roster_kid(id: &ClientId) -> String {
    format!("roster:{id}")
}

/// The claims of CryptFlow's tokens (EdDSA JWTs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the client id for clients, an operator or service name otherwise.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Audience: the service the token is for (`kms` or `aggregator`).
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before (when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// An Ed25519 signing key: a site's roster key (`cryptflow keygen`), a key manager's node key,
/// or a token issuer's key. Zeroized on drop; never printed.
pub struct SiteKey {
    key: SigningKey,
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteKey(public {}, private <redacted>)", self.public_key())
    }
}

impl SiteKey {
    /// A fresh key from the OS.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, seed.as_mut());
        Self { key: SigningKey::from_bytes(&seed) }
    }

    /// From a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, what `cryptflow keygen` and
    /// `openssl genpkey -algorithm ed25519` write).
    pub fn from_pem(pem: &str) -> Result<Self, ProtocolError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|_| ProtocolError::Key("not a PKCS#8 PEM Ed25519 private key".into()))
    }

    /// PKCS#8 v1 PEM (RFC 8410: the private key only), the form OpenSSL 3 and Python's
    /// `cryptography` read — ed25519-dalek's default v2 (with the public key) is refused by
    /// OpenSSL 3 as "unsupported".
    pub fn to_pem(&self) -> Result<Zeroizing<String>, ProtocolError> {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
        let v1 = KeypairBytes { secret_key: self.key.to_bytes(), public_key: None };
        v1.to_pkcs8_pem(LineEnding::LF)
            .map(|p| Zeroizing::new(p.to_string()))
            .map_err(|e| ProtocolError::Key(e.to_string()))
    }

    /// The public key (SPKI PEM), for a service's `jwt_keys`.
    pub fn public_pem(&self) -> Result<String, ProtocolError> {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::EncodePublicKey;
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| ProtocolError::Key(e.to_string()))
    }

    /// The public key, as rosters and committee files list it.
    pub fn public_key(&self) -> PublicKeyHex {
        PublicKeyHex(self.key.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> SignatureHex {
        SignatureHex(self.key.sign(message).to_bytes())
    }

    /// Mints a compact EdDSA JWT with `kid` and `claims`.
    pub fn mint(&self, kid: &str, claims: &Claims) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid });
        let body = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!("{}.{}", b64.encode(header.to_string()), b64.encode(body));
        let sig = self.key.sign(signing_input.as_bytes()).to_bytes();
        format!("{signing_input}.{}", b64.encode(sig))
    }

    /// A short-lived token for one key manager (`audience`: [`node_audience`] of that node),
    /// as roster member `id` with `role` (client or reader), signed with this (roster) key.
    pub fn roster_token(&self, id: &ClientId, role: Role, audience: &str) -> String {
        self.roster_token_at(id, role, audience, unix_now())
    }

    /// [`SiteKey::roster_token`] minted as if the time were `now` (seconds since the Unix
    /// epoch): clients mint against a key manager's clock when theirs differs.
    pub fn roster_token_at(&self, id: &ClientId, role: Role, audience: &str, now: u64) -> String {
        self.mint(
            &roster_kid(id),
            &Claims {
                sub: id.to_string(),
                role,
                aud: audience.into(),
                exp: now + ROSTER_TOKEN_TTL_SECS,
                iat: now,
                nbf: None,
            },
        )
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A key pair for tests and local stacks: the site key and its roster entry.
pub fn roster_member(id: &ClientId, key: &SiteKey, reader: bool) -> RosterMember {
    RosterMember { id: id.clone(), public_key: key.public_key(), reader }
}

/// The [`ShareIndex`] of `x`.
pub fn share_index(x: u8) -> Result<ShareIndex, ProtocolError> {
    ShareIndex::try_new(x).map_err(|e| ProtocolError::Committee(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptflow_he::planner::{plan, PlanRequest, Weighting};
    use cryptflow_he::{MaskSeed, ParameterSet};

    fn spec() -> RoundSpec {
        let p = plan(
            &ParameterSet::default_128(),
            &PlanRequest {
                max_clients: 3,
                clip_bound: 1.0,
                max_abs_error: 1e-6,
                weighting: Weighting::Uniform,
                dp: None,
            },
        )
        .unwrap();
        RoundSpec {
            round_id: RoundId::parse("r1").unwrap(),
            values: 100,
            clients: ["a", "b", "c"].iter().map(|c| ClientId::parse(*c).unwrap()).collect(),
            min_clients: 2,
            max_clients: 3,
            mask_seed: MaskSeed([7; 16]),
            seed: SeedDerivation::default(),
            plan: p,
            layout_sha256: layout_digest(&Layout::Dimension(100)),
        }
    }

    /// `spec()` with its seed fixed in two steps by the nodes of `keys` listed in `by`.
    fn seeded(keys: &[SiteKey], by: &[u8]) -> RoundSpec {
        let mut s = spec();
        let contribution = SeedPart::generate();
        let commitment = seed_commitment(&s.round_id, &contribution);
        let nonces = by
            .iter()
            .map(|&x| {
                let nonce = SeedPart::generate();
                let signature = keys[x as usize - 1].sign(&seed_nonce_statement(
                    x,
                    &s.round_id,
                    &commitment,
                    &nonce,
                ));
                crate::api::round::SeedNonce { share_index: x, nonce, signature }
            })
            .collect();
        s.seed = SeedDerivation { contribution, nonces };
        s.mask_seed = derive_mask_seed(&s.round_id, &s.seed);
        s
    }

    #[test]
    fn a_seed_needs_t_signed_nonces_over_the_commitment_and_its_derivation() {
        // Issue #24: the aggregator alone picked the seed (reused and all-zero seeds were signed).
        let keys: Vec<_> = (0..3).map(|_| SiteKey::generate()).collect();
        let c = committee(&keys, 2);
        assert!(check_seed(&c, &seeded(&keys, &[1, 3])).is_ok());
        assert!(check_seed(&c, &seeded(&keys, &[1, 2, 3])).is_ok());
        // Alone, or with one node of a t = 2 committee.
        let e = check_seed(&c, &spec()).unwrap_err().to_string();
        assert!(e.contains("0 key-manager nonces; 2 are needed"), "{e}");
        assert!(check_seed(&c, &seeded(&keys, &[2])).is_err());
        // A contribution changed after the nonces: the commitment they signed is another.
        let mut s = seeded(&keys, &[1, 2]);
        s.seed.contribution.0[0] ^= 1;
        s.mask_seed = derive_mask_seed(&s.round_id, &s.seed);
        assert!(check_seed(&c, &s).unwrap_err().to_string().contains("seed nonce"));
        // A seed other than the derivation's (e.g. a reused one).
        let mut s = seeded(&keys, &[1, 2]);
        s.mask_seed = MaskSeed([0; 16]);
        assert!(check_seed(&c, &s).unwrap_err().to_string().contains("not the one"));
        // A nonce signed by another node, out of order, or of a node not in the committee.
        let mut s = seeded(&keys, &[1, 2]);
        s.seed.nonces[1].share_index = 3;
        s.mask_seed = derive_mask_seed(&s.round_id, &s.seed);
        assert!(check_seed(&c, &s).is_err());
        let mut s = seeded(&keys, &[1, 2]);
        s.seed.nonces.reverse();
        s.mask_seed = derive_mask_seed(&s.round_id, &s.seed);
        assert!(check_seed(&c, &s).unwrap_err().to_string().contains("increasing"));
        let mut s = seeded(&keys, &[1, 2]);
        s.seed.nonces[1].share_index = 9;
        assert!(matches!(check_seed(&c, &s), Err(ProtocolError::Committee(_))));
        // The derivation is signed with the spec: a changed nonce or signature (the mask seed
        // left as it was) is another spec hash.
        let a = seeded(&keys, &[1, 2]);
        let d = Sha256Digest([0; 32]);
        let mut b = a.clone();
        b.seed.nonces[0].nonce.0[0] ^= 1;
        assert_ne!(spec_hash(&a, &d, &d, 2), spec_hash(&b, &d, &d, 2));
        let mut b = a.clone();
        b.seed.nonces[1].signature.0[0] ^= 1;
        assert_ne!(spec_hash(&a, &d, &d, 2), spec_hash(&b, &d, &d, 2));
        // A spec without a derivation (from before) keeps its old hash.
        let old = spec();
        let v2 = Canon::new("cryptflow round spec v2")
            .bytes(old.round_id.as_str().as_bytes())
            .u64(old.values)
            .fixed(&members_digest(&old.clients).0)
            .u32(old.min_clients)
            .u32(old.max_clients)
            .fixed(&old.mask_seed.0)
            .fixed(&old.plan.digest())
            .fixed(&old.layout_sha256.0)
            .fixed(&d.0)
            .fixed(&d.0)
            .u32(2)
            .digest();
        assert_eq!(spec_hash(&old, &d, &d, 2), v2);
    }

    fn committee(keys: &[SiteKey], t: u8) -> Committee {
        let nodes = keys
            .iter()
            .enumerate()
            .map(|(i, k)| CommitteeNode {
                x: i as u8 + 1,
                url: format!("http://n{i}"),
                public_key: k.public_key(),
            })
            .collect();
        Committee::try_new(t, nodes).unwrap()
    }

    #[test]
    fn echoes_verify_against_the_pinned_committee_only() {
        let keys: Vec<SiteKey> = (0..3).map(|_| SiteKey::generate()).collect();
        let c = committee(&keys, 2);
        let roster = Sha256Digest([9; 32]);
        let s = spec();
        let h = spec_hash(&s, &c.digest(), &roster, 2);
        let deposit_key = vec![4u8; crate::sealed::DEPOSIT_KEY_LEN];
        let echo = SpecEcho {
            share_index: 2,
            spec_hash: h,
            roster_digest: roster,
            min_set_size: 2,
            deposit_key: crate::api::Base64Bytes(deposit_key.clone()),
            signature: keys[1].sign(&echo_statement(2, &h, &deposit_key)),
        };
        assert_eq!(verify_echo(&c, &s, &echo).unwrap(), h);
        // Signed by another node's key, or for another spec, or under another committee: no.
        let forged = SpecEcho {
            signature: keys[0].sign(&echo_statement(2, &h, &deposit_key)),
            ..echo.clone()
        };
        assert!(verify_echo(&c, &s, &forged).is_err());
        // Another deposit key than the one signed (a relay or proxy substituting its own): no.
        let swapped =
            SpecEcho { deposit_key: crate::api::Base64Bytes(vec![5u8; 1216]), ..echo.clone() };
        assert!(verify_echo(&c, &s, &swapped).is_err());
        let other = RoundSpec { min_clients: 1, ..s.clone() };
        assert!(verify_echo(&c, &other, &echo).is_err());
        let other_committee =
            committee(&[SiteKey::generate(), SiteKey::generate(), SiteKey::generate()], 2);
        assert!(verify_echo(&other_committee, &s, &echo).is_err());
        let lower_m = SpecEcho { min_set_size: 1, ..echo };
        assert!(verify_echo(&c, &s, &lower_m).is_err());
    }

    #[test]
    fn committee_files_are_validated() {
        let keys: Vec<SiteKey> = (0..3).map(|_| SiteKey::generate()).collect();
        let c = committee(&keys, 2);
        assert_eq!(Committee::from_toml(&c.to_toml()).unwrap(), c);
        let bad = c.to_toml().replace("threshold = 2", "threshold = 1");
        assert!(Committee::from_toml(&bad).unwrap_err().to_string().contains("threshold"));
        let dup = c.to_toml().replace("x = 3", "x = 2");
        assert!(Committee::from_toml(&dup).is_err());
        let url = c.to_toml().replace("http://n0", "ftp://n0");
        assert!(Committee::from_toml(&url).is_err());
    }

    #[test]
    fn rosters_are_validated_and_digested() {
        let k = SiteKey::generate();
        let a = ClientId::parse("a").unwrap();
        let r = Roster::try_new(2, vec![roster_member(&a, &k, false)]).unwrap();
        assert_eq!(Roster::from_toml(&r.to_toml()).unwrap(), r);
        assert!(Roster::try_new(
            2,
            vec![roster_member(&a, &k, false), roster_member(&a, &k, true)]
        )
        .is_err());
        assert!(Roster::try_new(0, vec![]).is_err());
        let reader = Roster::try_new(2, vec![roster_member(&a, &k, true)]).unwrap();
        assert_ne!(r.digest(), reader.digest(), "the reader flag is in the digest");
        assert_eq!(r.member(&a).unwrap().public_key, k.public_key());
    }

    #[test]
    fn site_keys_round_trip_as_standard_pkcs8() {
        let k = SiteKey::generate();
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(SiteKey::from_pem(&pem).unwrap().public_key(), k.public_key());
        assert!(!format!("{k:?}").contains(&*pem));
        // A signature over a deposit statement verifies with the public key only.
        let st = deposit_statement(
            &RoundId::parse("r").unwrap(),
            &Sha256Digest([1; 32]),
            1,
            &ClientId::parse("a").unwrap(),
            &Sha256Digest([2; 32]),
            &Sha256Digest([3; 32]),
            &Sha256Digest([4; 32]),
        );
        let sig = k.sign(&st);
        assert!(verify(&k.public_key(), &st, &sig, "deposit").is_ok());
        assert!(verify(&SiteKey::generate().public_key(), &st, &sig, "deposit").is_err());
    }
}
