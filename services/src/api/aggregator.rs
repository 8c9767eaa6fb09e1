//! The aggregator API: rounds, submissions and the published aggregate.

use crate::ids::{ClientId, RoundId};
use cryptflow_he::planner::Plan;
use serde::{Deserialize, Serialize};

/// Largest vector a round may declare (10^8 values).
pub const MAX_DIMENSION: u64 = 100_000_000;

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
    /// Named tensors, concatenated.
    Tensors(Vec<TensorLayout>),
}

impl Layout {
    /// Number of values of the model update (before any weight slot).
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

/// How contributions are weighted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Weighting {
    /// Every contribution counts once.
    Uniform,
    /// Each client states a public integer sample count (`?weight=` on upload), at most
    /// `max_weight`; the aggregator multiplies homomorphically.
    Samples {
        /// Largest accepted sample count.
        max_weight: u64,
    },
    /// Each client multiplies its update by its weight (≤ `max_weight`) and appends the weight
    /// as one more value inside the encrypted vector; the aggregator never learns it.
    Private {
        /// Largest weight a client may use.
        max_weight: u64,
    },
}

/// Body of `POST /v1/rounds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSpec {
    /// The round's id.
    pub round_id: RoundId,
    /// Vector dimension or tensor layout.
    pub layout: Layout,
    /// Clients allowed to submit (and to fetch the aggregate and its key).
    pub clients: Vec<ClientId>,
    /// The round fails at its deadline with fewer contributions.
    pub min_clients: u32,
    /// The round closes as soon as this many have contributed.
    pub max_clients: u32,
    /// Deadline, Unix seconds.
    pub deadline: i64,
    /// Weighting mode.
    pub weighting: Weighting,
    /// Values are clipped to `[−clip_bound, clip_bound]` (clipping is reported client-side).
    pub clip_bound: f64,
    /// Largest acceptable absolute error of a coordinate of the mean.
    pub max_abs_error: f64,
    /// Bodies per mask (`L`); 8 unless stated.
    #[serde(default = "default_bodies")]
    pub bodies: u8,
}

fn default_bodies() -> u8 {
    8
}

/// Round lifecycle.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundState {
    /// Accepting submissions.
    Open,
    /// Closed; the aggregate is being built.
    Aggregating,
    /// The aggregate is available.
    Published,
    /// The deadline passed with too few contributions.
    Failed,
}

/// One folded contribution, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// Who contributed.
    pub client_id: ClientId,
    /// Public weight used in the fold (1 unless `samples` weighting).
    pub weight: u64,
    /// SHA-256 of the uploaded ciphertext, hex.
    pub sha256: String,
}

/// A round as the aggregator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundInfo {
    /// The spec it was created with.
    pub spec: RoundSpec,
    /// State.
    pub state: RoundState,
    /// Values per encrypted vector (the layout's, plus one weight slot for `private`).
    pub encrypted_values: u64,
    /// Key id of the round key.
    pub key_id: String,
    /// The planner's result: encoding and transport widths clients must use.
    pub plan: Plan,
    /// Contributions accepted so far.
    pub contributors: u32,
    /// After publication: what was folded.
    pub contributions: Vec<Contribution>,
    /// After publication: SHA-256 of the aggregate, hex.
    pub aggregate_sha256: Option<String>,
    /// Why the round failed, if it did.
    pub failure: Option<String>,
}

/// Response to an accepted submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionReceipt {
    /// The round.
    pub round_id: RoundId,
    /// The submitting client.
    pub client_id: ClientId,
    /// SHA-256 of the stored ciphertext, hex.
    pub sha256: String,
    /// Contributions accepted so far, this one included.
    pub contributors: u32,
}
