//! A round, as the aggregator serves it and every party agrees on it: what an operator asks
//! for ([`RoundRequest`]), the immutable spec registered with every key manager
//! ([`RoundSpec`]), and its state and transcript ([`RoundInfo`]).

use super::kms::SpecEcho;
use crate::ids::{ClientId, RoundId, Sha256Digest};
use cryptflow_he::planner::{Plan, Weighting};
use cryptflow_he::MaskSeed;
use serde::{Deserialize, Serialize};

/// Largest update a round may declare (2^31 values).
pub const MAX_DIMENSION: u64 = 1 << 31;
/// Largest number of clients a round may list.
pub const MAX_ROUND_CLIENTS: usize = 100_000;
/// Longest tensor name.
pub const MAX_TENSOR_NAME: usize = 256;
/// Most tensors in a layout.
pub const MAX_TENSORS: usize = 100_000;

/// One named tensor of a round's layout; tensors are flattened in order, row-major.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorLayout {
    /// Tensor name (e.g. `fc1.weight`).
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
}

/// What a round aggregates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Layout {
    /// A flat vector of this many values.
    Dimension(u64),
    /// Named tensors, concatenated in this order (one block counter runs over all of them).
    Tensors(Vec<TensorLayout>),
}

impl Layout {
    /// Number of model values (before any count slot); `None` if it overflows.
    pub fn values(&self) -> Option<u64> {
        match self {
            Layout::Dimension(d) => Some(*d),
            Layout::Tensors(ts) => ts.iter().try_fold(0u64, |acc, t| {
                let n = t.shape.iter().try_fold(1u64, |a, &s| a.checked_mul(s))?;
                acc.checked_add(n)
            }),
        }
    }
}

/// Body of `POST /v1/rounds`: what an operator asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRequest {
    /// The round's id.
    pub round_id: RoundId,
    /// Vector dimension or tensor layout.
    pub layout: Layout,
    /// Roster members allowed to contribute (each must be on every key manager's roster).
    pub clients: Vec<ClientId>,
    /// The round fails below this many contributions (and never publishes fewer than the
    /// key managers' minimum set size `m`).
    pub min_clients: u32,
    /// The round closes as soon as this many uploads are folded.
    pub max_clients: u32,
    /// Deadline, Unix seconds of the aggregator's clock. Give this or `deadline_in_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// Deadline relative to the aggregator's clock when the round is created (an operator's
    /// clock may be wrong). Give this or `deadline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_in_secs: Option<u64>,
    /// Weighting: `uniform`, or `{"samples": {"min_count": …, "max_count": …}}` (FedAvg by
    /// sample count, the counts encrypted with the update).
    pub weighting: Weighting,
    /// Values are clipped to `[−clip_bound, clip_bound]` (clipping is reported client-side).
    /// In a DP round: each update is clipped to L2 norm `clip_bound`.
    pub clip_bound: f64,
    /// Largest acceptable absolute error of a coordinate of the mean. In a DP round: the
    /// coarsest grid step the planner may use (the noise dominates the error).
    pub max_abs_error: f64,
    /// Distributed differential privacy (`docs/differential-privacy.md`): clients clip their
    /// update to L2 norm `clip_bound`, round it to a grid and add a discrete-Gaussian share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpOptions>,
}

/// The DP mechanism an operator asks for: the noise and whom it is sized for. The key
/// managers' consortium configuration may floor `honest_shares` and `colluders`, and clients'
/// policies too; a set of fewer than `honest_shares + colluders` is never recorded.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpOptions {
    /// `z`: the noise of `honest_shares` honest shares has standard deviation `z` times the
    /// mechanism's L2 sensitivity.
    pub noise_multiplier: f64,
    /// `m_h`: honest shares the noise is sized for (each share has variance `σ²/m_h`).
    pub honest_shares: u32,
    /// `t_c ≥ 1`: members of a set, other than the client protected, that may collude.
    pub colluders: u32,
}

/// The immutable spec every party of a round agrees on: the aggregator registers it with
/// every key manager, each signs its hash, and clients check the signatures against their
/// pinned committee file before depositing anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSpec {
    /// The round.
    pub round_id: RoundId,
    /// Model values `d` of an update.
    pub values: u64,
    /// The round's members, sorted.
    pub clients: Vec<ClientId>,
    /// Fewest contributions the round may publish.
    pub min_clients: u32,
    /// Most contributions (the plan's `C`).
    pub max_clients: u32,
    /// The public seed of the round's masks: `cryptflow_services::protocol::derive_mask_seed`
    /// of [`RoundSpec::seed`], which every node and client recomputes.
    pub mask_seed: MaskSeed,
    /// How the seed was fixed, in two steps: the aggregator's contribution (committed to
    /// before any node answered) and the nonces the key managers added, each signed. Absent
    /// (and not serialized) in a spec from before two-step seeds, which older clients can then
    /// still parse: no upload is accepted for such a round, its mean stays readable.
    #[serde(default, skip_serializing_if = "SeedDerivation::is_legacy")]
    pub seed: SeedDerivation,
    /// Encoding and transport width (re-derived from its request when parsed).
    pub plan: Plan,
    /// Digest of the round's layout (tensor names and shapes,
    /// `cryptflow_services::protocol::layout_digest`): the key managers sign it with the rest,
    /// so the layout a client is shown cannot differ from the one registered.
    pub layout_sha256: Sha256Digest,
}

/// 32 bytes of fresh OS randomness, as 64 hexadecimal digits: the aggregator's contribution to
/// a round's mask seed, or a key manager's nonce.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SeedPart(pub [u8; 32]);

impl SeedPart {
    /// 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        Self(b)
    }
}

impl TryFrom<String> for SeedPart {
    type Error = crate::ids::DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse::<Sha256Digest>().map(|d| Self(d.0))
    }
}

impl From<SeedPart> for String {
    fn from(p: SeedPart) -> String {
        Sha256Digest(p.0).to_string()
    }
}

/// How a round's mask seed was fixed (`docs/security.md`, "The mask seed"): the aggregator
/// drew `contribution` and sent only its commitment
/// (`cryptflow_services::protocol::seed_commitment`) to the key managers; each answered with a
/// fresh nonce signed over the commitment; then the aggregator revealed the contribution.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedDerivation {
    /// The aggregator's contribution.
    pub contribution: SeedPart,
    /// The key managers' nonces, in increasing node order, at least `t` of them.
    pub nonces: Vec<SeedNonce>,
}

impl SeedDerivation {
    /// Whether this is the empty derivation of a spec from before two-step seeds.
    pub fn is_legacy(&self) -> bool {
        *self == Self::default()
    }
}

/// A key manager's nonce for a round's seed, signed over the aggregator's commitment
/// (`cryptflow_services::protocol::seed_nonce_statement`). `POST /v1/rounds/{round}/seed-nonce`
/// at a key manager answers one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedNonce {
    /// The node's share index `x`.
    pub share_index: u8,
    /// The nonce.
    pub nonce: SeedPart,
    /// Ed25519 signature by the node's signing key over the nonce statement.
    pub signature: crate::api::SignatureHex,
}

/// `POST /v1/rounds/{round}/seed-nonce` at a key manager (aggregator, admins): the commitment
/// to the aggregator's contribution to the round's seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedNonceRequest {
    /// `cryptflow_services::protocol::seed_commitment` of the contribution.
    pub commitment: Sha256Digest,
}

/// Round lifecycle at the aggregator.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundState {
    /// Accepting uploads.
    Open,
    /// Closed; the aggregate is being built and the contributor set reported.
    Aggregating,
    /// The key managers recorded the contributor set: the aggregate and the releases are
    /// available. "Published" means "fetchable".
    Published,
    /// Too few contributions, or the key managers could not record a set.
    Failed,
}

/// One contribution: who, and the SHA-256 of what it uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// The contributing client.
    pub client_id: ClientId,
    /// SHA-256 of its upload (header and payload, as sent).
    pub upload_sha256: Sha256Digest,
}

/// `GET /v1/rounds/{round}/submissions/{client}/spans?at=…` (readers): verification spans of a
/// contributor's upload, each with its audit path to the upload root its member signed
/// (`docs/wire-format.md`, "Verification spans and the upload root").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSpans {
    /// The spans asked for, in the order asked.
    pub spans: Vec<UploadSpan>,
}

/// One verification span of an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSpan {
    /// The span's index (its block), from 0.
    pub index: u64,
    /// The span's bytes, base64.
    pub bytes: super::Base64Bytes,
    /// Its RFC 9162 audit path, leaf to root.
    pub path: Vec<Sha256Digest>,
}

/// Most spans one `…/spans` request may ask for.
pub const MAX_SPANS_PER_REQUEST: usize = 4096;

/// What a published round aggregated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    /// The contributor set `S`, sorted by client.
    pub contributors: Vec<Contribution>,
    /// SHA-256 of the aggregate.
    pub aggregate_sha256: Sha256Digest,
    /// The key managers that recorded `S` (share indices).
    pub recorded_by: Vec<u8>,
}

/// A round as the aggregator serves it (to admins and the round's members).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundInfo {
    /// What was asked for.
    pub request: RoundRequest,
    /// The agreed spec.
    pub spec: RoundSpec,
    /// The absolute deadline (Unix seconds, the aggregator's clock).
    pub deadline: i64,
    /// State.
    pub state: RoundState,
    /// Uploads admitted so far (pending and folded).
    pub uploads: u32,
    /// Each key manager's signed echo of the spec, as returned at registration.
    pub echoes: Vec<SpecEcho>,
    /// After publication: what was aggregated.
    pub transcript: Option<Transcript>,
    /// Why the round failed, if it did.
    pub failure: Option<String>,
}

/// Response to an accepted upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionReceipt {
    /// The round.
    pub round_id: RoundId,
    /// The submitting client.
    pub client_id: ClientId,
    /// SHA-256 of the stored upload: deposit it, signed, with the key managers.
    pub upload_sha256: Sha256Digest,
    /// Uploads admitted so far, this one included.
    pub uploads: u32,
}
