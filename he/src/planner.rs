//! The capacity planner: from a round's shape — the largest number of contributions `C`, the
//! clip bound `B`, the target error `ε` of the mean and the weighting — derive the encoding
//! (step `s`, scale `Δ = 2^δ`) and the transport width `w`, or say which bound cannot be met
//! and what the nearest feasible setting is.
//!
//! A value `x` is clipped to `[−B, B]`, multiplied by the client's sample count `c` in
//! `samples` rounds (`c = 1` otherwise), and quantised to `m = round(c·x / s)`; the slot holds
//! `Δ·m`. In `samples` rounds the count itself travels in the last slot, at step 1. The mean
//! is `s·Σm / Σc` (`Σc` = the number of contributions when unweighted). Guarantees of a
//! returned [`Plan`], for any set of at most `C` contributions:
//!
//! - **precision**: the mean is within `ε` of the exact (weighted) mean of the clipped inputs.
//!   Each contribution's rounding is at most `s/2` (plus a floating-point slop of `2^-11·s`
//!   that the step absorbs), so the mean's error is at most `s·C/(2·Σc) ≤ s/(2·c_min)`; the
//!   planner takes `s = 2ε·c_min/(1 + 2^-9)`. Scaling the step by `c_min` is what makes wide
//!   count ranges fit: the dynamic range the slots must hold is `C·B·(c_max/c_min)/(2ε)`.
//! - **no wrap-around**: `(C·M + ½)·Δ ≤ 2^63`, where `M = ⌈c_max·B/s⌉ + 1` bounds one
//!   contribution's `|m|` (and `C·c_max` the count slot), so the sum of messages and the noise
//!   stay inside the signed 64-bit range;
//! - **exact decryption**: `z·σ_C < Δ/2` with `σ_C² = C·(σ_e² + 4^(64−w)/12)` and `z` =
//!   [`TAIL_Z`](crate::noise::TAIL_Z): the rounding to the `Δ` grid recovers `Σm` exactly
//!   except with probability ≤ 2^-128 per slot;
//! - **range check** (DESIGN §3): `2·z·σ_k·√C < Δ`, so that a key sum shifted by a multiple
//!   of `Δ` — which the residual check cannot see — falls outside `z·σ_k·√C` and is caught.
//!
//! Among feasible plans it picks the smallest `w` (bytes on the wire), with the largest `δ`
//! the no-wrap bound allows. Every decision compares squares and powers of two, so the plan —
//! and its [digest](Plan::digest), which round specs sign — is the same on every platform.
//!
//! ```
//! use cryptflow_he::planner::{plan, PlanRequest, Weighting};
//! use cryptflow_he::ParameterSet;
//! let request = PlanRequest { max_clients: 8, clip_bound: 1.0, max_abs_error: 1e-6,
//!     weighting: Weighting::Uniform, dp: None };
//! let plan = plan(&ParameterSet::default_128(), &request).unwrap();
//! assert_eq!(plan.transport().get(), 28); // 3.5 bytes per value: 0.875× float32
//! assert!(plan.max_abs_error() <= 1e-6);
//! ```

use crate::error::PlanError;
use crate::noise::TAIL_Z;
use crate::params::{DeltaLog, ParameterSet, ParameterSetId, TransportBits};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest number of contributions a round may plan for.
pub const MAX_CLIENTS: u32 = 100_000;
/// Largest clip bound.
pub const MAX_CLIP_BOUND: f64 = 1e12;
/// Largest sample count of a `samples` round.
pub const MAX_COUNT: u64 = 1 << 40;
/// Slots after the model values that report clipping under encryption, in every round: slot
/// `d` holds 1 if any value of the contribution was clipped (else 0), slot `d + 1` the number
/// of clipped values in [units](Plan::clipping_unit), rounded up. Their sums tell every reader
/// of the mean how many contributions clipping changed and how many values.
pub const CLIPPING_SLOTS: u64 = 2;

/// How contributions are weighted. Weights live in the plaintext, never in the ciphertexts or
/// keys (DESIGN §3: per-client weights on keys expose individual keys).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Weighting {
    /// Every contribution counts once; the mean divides by the number of contributions.
    Uniform,
    /// Each client weights its update by its sample count `c ∈ [min_count, max_count]` inside
    /// the encryption and sends `c` in the last slot; the mean is `Σc·x / Σc` (FedAvg). Nobody
    /// but the round's readers learns any count, nor their sum.
    Samples {
        /// Smallest count a client may declare (≥ 1).
        min_count: u64,
        /// Largest count a client may declare.
        max_count: u64,
    },
}

impl Weighting {
    fn bounds(&self) -> (u64, u64) {
        match *self {
            Weighting::Uniform => (1, 1),
            Weighting::Samples { min_count, max_count } => (min_count, max_count),
        }
    }
}

/// What a round needs.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Largest number of contributions summed into one aggregate (`C`).
    pub max_clients: u32,
    /// Values are clipped to `[−clip_bound, clip_bound]`.
    pub clip_bound: f64,
    /// Largest acceptable absolute error of a coordinate of the mean (`ε`).
    pub max_abs_error: f64,
    /// Weighting.
    pub weighting: Weighting,
    /// Distributed differential privacy ([`DpRequest`]); `None` for a round without DP. In a
    /// DP round `clip_bound` is the L2 bound `c` of a whole update and `max_abs_error` the
    /// coarsest grid step the planner may use (see [`DpPlan`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpRequest>,
}

/// The distributed discrete Gaussian mechanism of a round (Kairouz, Liu, Steinke, "The
/// Distributed Discrete Gaussian Mechanism", ICML 2021, Algorithm 1): each client rotates its
/// update ([`crate::dp::rotation`]), clips it to L2 norm `c`, rounds it to the grid
/// conditionally ([`crate::dp::rounding`]) and adds a discrete-Gaussian share of variance
/// `σ²/m_h`, so that the sum of any `m_h` honest shares carries noise of variance `σ²`.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpRequest {
    /// `z`: the noise of `m_h` honest shares has standard deviation `z` times the mechanism's
    /// L2 sensitivity (in `(0, 10^6]`).
    pub noise_multiplier: f64,
    /// `m_h ≥ 1`: honest shares the noise is sized for.
    pub honest_shares: u32,
    /// `t_c ≥ 1`: members of a set other than the protected client that may collude (each
    /// knows its own share). Key managers never record a set of fewer than `m_h + t_c`.
    pub colluders: u32,
    /// `d`: model values of an update (the sensitivity after rounding depends on it).
    pub values: u64,
}

/// Largest noise multiplier a DP round may ask for.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e6;

/// `β` of the conditional rounding ([`crate::dp::rounding::inflated_sensitivity_sq`]): a draw
/// meets the inflated bound with probability at least `1 − β`.
pub const DP_ROUNDING_BETA: f64 = 1.0 / 1024.0;

/// `√(2 ln(1/β))` at [`DP_ROUNDING_BETA`] (3.72329…), rounded up to five digits: the planner's
/// bound uses this constant, so every platform derives the same `Δ₂²` (a larger factor only
/// loosens the bound, which rounding then meets more often).
pub const DP_ROUNDING_TAIL: f64 = 3.7233;

/// The largest factor by which the grid may raise the error of a DP round's sum above the
/// continuous Gaussian's (see [`DpPlan`]).
pub const DP_GRID_COST: f64 = 1.05;

/// How the planner sized a DP round's grid and noise, all in grid units (`γ = 2^-k`):
///
/// - the grid is the coarsest (fewest bits) with `γ ≤ max_abs_error` on which the error of a
///   sum of `C` contributions — the noise `σ`, sized for the sensitivity the rounding inflated,
///   and the rounding's own (standard deviation at most `√C/2`) — costs at most
///   [`DP_GRID_COST`] times the noise `z·c/γ` a continuous Gaussian would need for the
///   unrounded bound: `√(σ² + C/4) ≤ 1.05·z·c/γ`;
/// - `Δ₂²` is the inflated squared L2 bound every rounded update meets (checked on integers);
/// - the clipped-client indicator slot holds `K = ⌈Δ₂/8⌉` or 0, so the mechanism's squared
///   sensitivity under zero-out adjacency is `S² = Δ₂² + K²`;
/// - `σ² = ⌈z²·S²⌉` (an integer), each share `N_Z(0, σ²/m_h)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DpPlan {
    request_values: u64,
    grid_log: i32,
    sensitivity_sq: u128,
    indicator: u64,
    variance: u128,
    honest_shares: u32,
    colluders: u32,
}

impl DpPlan {
    /// `k`: the grid step is `γ = 2^-k`.
    pub fn grid_log(&self) -> i32 {
        self.grid_log
    }
    /// `γ`.
    pub fn grid_step(&self) -> f64 {
        2f64.powi(-self.grid_log)
    }
    /// `d`.
    pub fn values(&self) -> u64 {
        self.request_values
    }
    /// The rotated length `d'` ([`crate::dp::rotation::Rotation::rotated_len`]).
    pub fn rotated_len(&self) -> u64 {
        rotated_len(self.request_values)
    }
    /// `Δ₂²`, the squared L2 bound of a rounded update (grid units², an integer).
    pub fn rounded_norm_sq(&self) -> u128 {
        self.sensitivity_sq - (self.indicator as u128).pow(2)
    }
    /// `K`, the clipped-client indicator of a clipped contribution (grid units).
    pub fn indicator(&self) -> u64 {
        self.indicator
    }
    /// `S² = Δ₂² + K²`, the mechanism's squared L2 sensitivity (grid units²).
    pub fn sensitivity_sq(&self) -> u128 {
        self.sensitivity_sq
    }
    /// `σ²`, the variance of the sum of `m_h` shares (grid units², an integer).
    pub fn variance(&self) -> u128 {
        self.variance
    }
    /// `m_h`.
    pub fn honest_shares(&self) -> u32 {
        self.honest_shares
    }
    /// `t_c`.
    pub fn colluders(&self) -> u32 {
        self.colluders
    }
    /// The smallest contributor set key managers may record: `m_h + t_c`.
    pub fn min_set(&self) -> u64 {
        self.honest_shares as u64 + self.colluders as u64
    }
    /// Each client's share: `σ²/m_h` as an exact rational.
    pub fn share_variance(&self) -> crate::dp::Variance {
        // σ² ≤ 2^64 by construction (the planner refuses more).
        crate::dp::Variance::new(self.variance, self.honest_shares as u128)
            .unwrap_or_else(|_| crate::dp::Variance::new(0, 1).unwrap_or_else(|_| unreachable!()))
    }
    /// Standard deviation, in the mean's units, of each coordinate of the mean of
    /// `contributors` contributions: `γ·√(|S|·σ²/m_h)/|S|` (the rotation is orthonormal, so
    /// each un-rotated coordinate carries the same variance).
    pub fn mean_noise_std(&self, contributors: u32) -> f64 {
        let s = contributors.max(1) as f64;
        self.grid_step() * (s * self.variance as f64 / self.honest_shares as f64).sqrt() / s
    }
    /// The bound on `|Σm|` of any slot for `contributors` contributions: `|S|·⌈Δ₂⌉ +
    /// z_tail·√(|S|·σ²/m_h)` with `z_tail` = [`TAIL_Z`] — exceeded with probability at most
    /// 2^-128 by honest contributions (a discrete Gaussian is sub-Gaussian with variance proxy
    /// its `σ²`: Canonne, Kamath, Steinke 2020, Corollary 9).
    pub fn sum_bound(&self, contributors: u32) -> f64 {
        let s = contributors as f64;
        let per = (self.rounded_norm_sq() as f64).sqrt().ceil();
        s * per + TAIL_Z * (s * self.variance as f64 / self.honest_shares as f64).sqrt()
    }
}

/// `d'`: `d` rotated in blocks ([`crate::dp::rotation`]).
fn rotated_len(values: u64) -> u64 {
    let block = crate::dp::rotation::ROTATION_BLOCK as u64;
    let rest = values % block;
    values - rest + if rest == 0 { 0 } else { rest.next_power_of_two() }
}

impl DpPlan {
    /// The mechanism for L2 bound `clip_bound` on the grid `γ = 2^-grid_log` (see
    /// [`DpPlan`]; the planner picks the grid): `Δ₂²` from KLS21's inflated bound at
    /// [`DP_ROUNDING_BETA`] (through [`DP_ROUNDING_TAIL`]) for the rotated length,
    /// `K = ⌈Δ₂/8⌉`, `σ² = ⌈z²·(Δ₂² + K²)⌉` — IEEE 754 `+`, `×`, `√` and `⌈·⌉` only, so
    /// every platform derives the same integers.
    ///
    /// # Errors
    /// [`PlanError::InvalidRequest`] naming `dp.noise_multiplier` if `σ²` exceeds 2^64.
    pub fn for_grid(clip_bound: f64, grid_log: i32, dp: &DpRequest) -> Result<Self, PlanError> {
        let c = clip_bound * 2f64.powi(grid_log);
        let d = rotated_len(dp.values) as usize;
        let rounded =
            crate::dp::rounding::inflated_sensitivity_sq_with_tail(c, d, DP_ROUNDING_TAIL);
        let indicator = ((rounded as f64).sqrt() / 8.0).ceil() as u64;
        let sensitivity_sq = rounded + (indicator as u128).pow(2);
        let z = dp.noise_multiplier;
        let variance = (z * z * sensitivity_sq as f64).ceil();
        if variance > crate::dp::MAX_VARIANCE as f64 {
            return Err(invalid(
                "dp.noise_multiplier",
                format!(
                    "σ² = {variance:.3e} grid units² exceeds 2^64 on the grid the clip bound needs: take a smaller noise_multiplier or clip_bound"
                ),
            ));
        }
        Ok(DpPlan {
            request_values: dp.values,
            grid_log,
            sensitivity_sq,
            indicator,
            variance: variance as u128,
            honest_shares: dp.honest_shares,
            colluders: dp.colluders,
        })
    }

    /// What one round costs each contributor ([`crate::dp::accounting`]): KLS21 Theorem 2 for
    /// `S²`, `σ²` and `m_h` in `d' + 1` dimensions.
    pub fn charge(&self) -> crate::dp::accounting::Charge {
        crate::dp::accounting::Charge::of_mechanism(
            self.sensitivity_sq,
            self.variance,
            self.honest_shares,
            self.rotated_len() + 1,
        )
    }
}

/// Sizes the DP part of a plan (see [`DpPlan`]); the request's fields are already checked.
fn dp_plan(request: &PlanRequest, dp: &DpRequest) -> Result<DpPlan, PlanError> {
    let c_total = request.max_clients as f64;
    let z = dp.noise_multiplier;
    for k in -60i32..=60 {
        let gamma = 2f64.powi(-k);
        if gamma > request.max_abs_error {
            continue;
        }
        let c = request.clip_bound / gamma;
        if c > (1u64 << 40) as f64 {
            break;
        }
        let candidate = DpPlan::for_grid(request.clip_bound, k, dp)?;
        if (candidate.variance as f64 + c_total / 4.0).sqrt() > DP_GRID_COST * z * c {
            continue;
        }
        return Ok(candidate);
    }
    Err(invalid(
        "max_abs_error",
        format!("no grid step 2^-k ≤ max_abs_error keeps the error of the sum within {DP_GRID_COST} times the noise a continuous Gaussian would need: take a larger max_abs_error or noise_multiplier"),
    ))
}

/// A feasible configuration, only ever made by [`plan`] (deserialising one re-runs the
/// planner on its request and checks the rest agrees).
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PlanRepr", into = "PlanRepr")]
pub struct Plan {
    params: ParameterSetId,
    request: PlanRequest,
    step: f64,
    delta: DeltaLog,
    transport: TransportBits,
    dp: Option<DpPlan>,
}

/// The serialised form of a [`Plan`]: the request and what the planner derived from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRepr {
    parameter_set: u16,
    #[serde(flatten)]
    request: PlanRequest,
    step: f64,
    delta_log: DeltaLog,
    transport_bits: TransportBits,
    /// A DP round's charge per contributor ([`DpPlan::charge`]), re-derived on parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dp_charge: Option<crate::dp::accounting::Charge>,
}

impl From<Plan> for PlanRepr {
    fn from(p: Plan) -> Self {
        Self {
            parameter_set: p.params.0,
            request: p.request,
            step: p.step,
            delta_log: p.delta,
            transport_bits: p.transport,
            dp_charge: p.dp.map(|d| d.charge()),
        }
    }
}

impl TryFrom<PlanRepr> for Plan {
    type Error = PlanError;
    fn try_from(r: PlanRepr) -> Result<Self, PlanError> {
        let params = ParameterSet::by_id(ParameterSetId(r.parameter_set))
            .map_err(|_| invalid("parameter_set", "is not a known parameter set".into()))?;
        let derived = plan(&params, &r.request)?;
        if derived.dp.map(|d| d.charge()) != r.dp_charge {
            return Err(invalid(
                "dp_charge",
                "is not the charge the mechanism's parameters give (KLS21, in fixed point)".into(),
            ));
        }
        if derived.step != r.step
            || derived.delta != r.delta_log
            || derived.transport != r.transport_bits
        {
            return Err(invalid(
                "plan",
                "step, delta_log and transport_bits are not what the planner derives from the request"
                    .into(),
            ));
        }
        Ok(derived)
    }
}

impl Plan {
    /// The parameter set it was planned for.
    pub fn params(&self) -> ParameterSetId {
        self.params
    }
    /// What was asked for.
    pub fn request(&self) -> &PlanRequest {
        &self.request
    }
    /// `C`.
    pub fn max_clients(&self) -> u32 {
        self.request.max_clients
    }
    /// `B`.
    pub fn clip_bound(&self) -> f64 {
        self.request.clip_bound
    }
    /// Weighting.
    pub fn weighting(&self) -> Weighting {
        self.request.weighting
    }
    /// The quantisation step `s` of a (count-weighted) value.
    pub fn step(&self) -> f64 {
        self.step
    }
    /// `δ` (messages at multiples of `Δ = 2^δ`).
    pub fn delta(&self) -> DeltaLog {
        self.delta
    }
    /// `w`: bits per value on the wire, up and down.
    pub fn transport(&self) -> TransportBits {
        self.transport
    }
    /// The guaranteed bound on the error of the mean, `ε` (before any rounding of the output to
    /// a narrower float type).
    pub fn max_abs_error(&self) -> f64 {
        self.request.max_abs_error
    }
    /// Bytes per value of an upload or of the aggregate (payload only): `w/8`.
    pub fn bytes_per_value(&self) -> f64 {
        self.transport.get() as f64 / 8.0
    }
    /// The DP mechanism, in a DP round.
    pub fn dp(&self) -> Option<&DpPlan> {
        self.dp.as_ref()
    }

    /// Slots of an update of `values` values: the values, the [`CLIPPING_SLOTS`], and the
    /// count last in `samples` rounds. In a DP round: the rotated values, then the
    /// clipped-client indicator (`None` unless `values` is the `d` the round was planned for).
    pub fn slots(&self, values: u64) -> Option<u64> {
        if let Some(dp) = &self.dp {
            return (values == dp.request_values).then(|| dp.rotated_len() + 1);
        }
        let count = match self.request.weighting {
            Weighting::Uniform => 0,
            Weighting::Samples { .. } => 1,
        };
        values.checked_add(CLIPPING_SLOTS)?.checked_add(count)
    }

    /// How many clipped values one unit of the clipped-values slot stands for, in a round of
    /// `values` model values: `max(1, ⌈d / M⌉)` with `M` the bound on one contribution's
    /// `|m|` ([`Self::max_message`]), so that a contribution's `⌈clipped / unit⌉ ≤ M` fits the
    /// no-wrap bound like any value. 1 — an exact count — whenever `d ≤ M`.
    ///
    /// ```
    /// use cryptflow_he::planner::{plan, PlanRequest, Weighting};
    /// use cryptflow_he::ParameterSet;
    /// let p = plan(&ParameterSet::default_128(), &PlanRequest { max_clients: 8, clip_bound: 1.0,
    ///     max_abs_error: 1e-6, weighting: Weighting::Uniform, dp: None }).unwrap();
    /// assert_eq!(p.clipping_unit(100_000), 1); // counted exactly
    /// assert!(p.clipping_unit(1 << 30) > 1); // counted in units of a few thousand values
    /// ```
    pub fn clipping_unit(&self, values: u64) -> u64 {
        values.div_ceil(self.max_message()).max(1)
    }

    /// The canonical bytes of the plan (`docs/wire-format.md`, "plan digest").
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"cryptflow plan v2\0");
        out.extend_from_slice(&self.params.0.to_le_bytes());
        out.extend_from_slice(&self.request.max_clients.to_le_bytes());
        out.extend_from_slice(&self.request.clip_bound.to_bits().to_le_bytes());
        out.extend_from_slice(&self.request.max_abs_error.to_bits().to_le_bytes());
        let (tag, lo, hi) = match self.request.weighting {
            Weighting::Uniform => (0u8, 0, 0),
            Weighting::Samples { min_count, max_count } => (1u8, min_count, max_count),
        };
        out.push(tag);
        out.extend_from_slice(&lo.to_le_bytes());
        out.extend_from_slice(&hi.to_le_bytes());
        out.extend_from_slice(&self.step.to_bits().to_le_bytes());
        out.push(self.delta.get() as u8);
        out.push(self.transport.get() as u8);
        // A DP round's mechanism, appended (the bytes of a round without DP are unchanged).
        if let (Some(r), Some(dp)) = (&self.request.dp, &self.dp) {
            out.extend_from_slice(b"dp v1\0");
            out.extend_from_slice(&r.noise_multiplier.to_bits().to_le_bytes());
            out.extend_from_slice(&r.honest_shares.to_le_bytes());
            out.extend_from_slice(&r.colluders.to_le_bytes());
            out.extend_from_slice(&r.values.to_le_bytes());
            out.extend_from_slice(&dp.grid_log.to_le_bytes());
            out.extend_from_slice(&dp.sensitivity_sq.to_le_bytes());
            out.extend_from_slice(&dp.indicator.to_le_bytes());
            out.extend_from_slice(&dp.variance.to_le_bytes());
        }
        out
    }

    /// SHA-256 of [`Self::canonical_bytes`]; every ciphertext of the round carries its first
    /// 16 bytes, and round specs sign it.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// Bound `M` on one contribution's `|m|` in any slot: `⌈c_max·B/s⌉ + 1` (saturating).
    pub fn max_message(&self) -> u64 {
        let (_, c_max) = self.request.weighting.bounds();
        // `as` saturates: a bound beyond u64 (never feasible anyway) reads as u64::MAX.
        ((c_max as f64 * self.request.clip_bound / self.step).ceil() + 1.0) as u64
    }
}

fn invalid(field: &'static str, reason: String) -> PlanError {
    PlanError::InvalidRequest { field, reason }
}

/// Checks the request's fields.
fn check_request(request: &PlanRequest) -> Result<(), PlanError> {
    if !(1..=MAX_CLIENTS).contains(&request.max_clients) {
        return Err(invalid("max_clients", format!("must be in [1, {MAX_CLIENTS}]")));
    }
    let b = request.clip_bound;
    if !(b.is_finite() && b > 0.0 && b <= MAX_CLIP_BOUND) {
        return Err(invalid("clip_bound", format!("must be a number in (0, {MAX_CLIP_BOUND:e}]")));
    }
    let e = request.max_abs_error;
    if !(e.is_finite() && e > 0.0 && e <= b) {
        return Err(invalid("max_abs_error", "must be a number in (0, clip_bound]".into()));
    }
    if let Some(dp) = &request.dp {
        let z = dp.noise_multiplier;
        if !(z.is_finite() && z > 0.0 && z <= MAX_NOISE_MULTIPLIER) {
            return Err(invalid(
                "dp.noise_multiplier",
                format!("must be a number in (0, {MAX_NOISE_MULTIPLIER:e}]"),
            ));
        }
        if dp.honest_shares == 0 {
            return Err(invalid("dp.honest_shares", "must be at least 1".into()));
        }
        if dp.colluders == 0 {
            return Err(invalid(
                "dp.colluders",
                "must be at least 1: every member of a set reads the mean and knows its own share"
                    .into(),
            ));
        }
        if dp.honest_shares as u64 + dp.colluders as u64 > request.max_clients as u64 {
            return Err(invalid(
                "dp.honest_shares",
                format!(
                    "honest_shares + colluders = {} exceeds max_clients = {}: no set could be recorded",
                    dp.honest_shares as u64 + dp.colluders as u64,
                    request.max_clients
                ),
            ));
        }
        if !(1..=crate::encoding::MAX_VALUES).contains(&dp.values) {
            return Err(invalid(
                "dp.values",
                format!("must be in [1, {}]", crate::encoding::MAX_VALUES),
            ));
        }
        if request.weighting != Weighting::Uniform {
            return Err(invalid(
                "weighting",
                "a DP round weights uniformly: a sample count would scale an update's sensitivity and travel unnoised"
                    .into(),
            ));
        }
    }
    if let Weighting::Samples { min_count, max_count } = request.weighting {
        if min_count == 0 || min_count > max_count {
            return Err(invalid("weighting.min_count", "must be in [1, max_count]".into()));
        }
        if max_count > MAX_COUNT {
            return Err(invalid("weighting.max_count", format!("must be at most {MAX_COUNT}")));
        }
    }
    Ok(())
}

/// The bits a request needs and how they split, for refusals.
struct Budget {
    /// Largest feasible `δ` under the no-wrap bound (None: not even `δ = 1` fits).
    delta_max: Option<u8>,
    /// Smallest `δ` the range check (and the noise at full width) need.
    delta_min: u8,
    /// `log2` of the sum bound `C·M`.
    message_bits: f64,
}

const STEP_SLOP: f64 = 1.0 + 1.0 / 512.0;

fn step_of(request: &PlanRequest) -> f64 {
    let (c_min, _) = request.weighting.bounds();
    2.0 * request.max_abs_error * c_min as f64 / STEP_SLOP
}

/// Whether `δ` passes the range check and the noise bound at width `w`.
fn fits(params: &ParameterSet, c: f64, delta: u8, w: TransportBits) -> bool {
    let delta2 = 4f64.powi(delta as i32); // Δ²
    let z2 = TAIL_Z * TAIL_Z;
    let key_ok = 4.0 * z2 * params.key_std() * params.key_std() * c < delta2;
    let noise_ok = 4.0 * z2 * c * (params.noise_variance() + w.rounding_variance()) < delta2;
    key_ok && noise_ok
}

fn budget(params: &ParameterSet, request: &PlanRequest, step: f64, dp: Option<&DpPlan>) -> Budget {
    let (_, c_max) = request.weighting.bounds();
    let c = request.max_clients as f64;
    let per_client = (c_max as f64 * request.clip_bound / step).ceil() + 1.0;
    let total = match dp {
        Some(dp) => dp.sum_bound(request.max_clients),
        None => (c * per_client).max(c * c_max as f64),
    };
    // (total + ½)·2^δ ≤ 2^63.
    let delta_max =
        (1..=62u8).rev().find(|&d| (total + 0.5) * 2f64.powi(d as i32) <= 2f64.powi(63));
    let delta_min = (1..=62u8).find(|&d| fits(params, c, d, TransportBits::FULL)).unwrap_or(63);
    Budget { delta_max, delta_min, message_bits: (total + 0.5).log2() }
}

/// Runs the planner. See the [module documentation](self) for the guarantees.
///
/// ```
/// use cryptflow_he::planner::{plan, PlanRequest, Weighting};
/// use cryptflow_he::{ParameterSet, PlanError};
/// let params = ParameterSet::default_128();
/// // FedAvg over 100 sites holding 1,000 to 1,000,000 examples, mean within 1e-4:
/// let ok = PlanRequest { max_clients: 100, clip_bound: 1.0, max_abs_error: 1e-4,
///     weighting: Weighting::Samples { min_count: 1_000, max_count: 1_000_000 }, dp: None };
/// assert!(plan(&params, &ok).is_ok());
/// // With counts from 1, no 64-bit encoding can guarantee 1e-4: the refusal says what would.
/// let too_wide = PlanRequest { weighting: Weighting::Samples { min_count: 1, max_count: 1_000_000 },
///     ..ok };
/// let err = plan(&params, &too_wide).unwrap_err();
/// assert!(matches!(err, PlanError::Infeasible { .. }));
/// assert!(err.to_string().contains("min_count"));
/// ```
pub fn plan(params: &ParameterSet, request: &PlanRequest) -> Result<Plan, PlanError> {
    check_request(request)?;
    let dp = request.dp.as_ref().map(|d| dp_plan(request, d)).transpose()?;
    let step = match &dp {
        Some(dp) => dp.grid_step(),
        None => step_of(request),
    };
    let b = budget(params, request, step, dp.as_ref());
    let c = request.max_clients as f64;
    if let Some(delta_max) = b.delta_max {
        for w in 1..=64u8 {
            let w =
                TransportBits::try_new(w).map_err(|_| invalid("transport", "internal".into()))?;
            if fits(params, c, delta_max, w) {
                let delta = DeltaLog::try_new(delta_max)
                    .map_err(|_| invalid("delta", "internal".into()))?;
                return Ok(Plan {
                    params: params.id(),
                    request: *request,
                    step,
                    delta,
                    transport: w,
                    dp,
                });
            }
        }
    }
    if let Some(dp) = &dp {
        return Err(PlanError::Infeasible {
            needed_bits: b.message_bits + 1.0 + b.delta_min as f64,
            message_bits: b.message_bits,
            margin_bits: b.delta_min,
            nearest: format!(
                "the sum bound |S|·Δ₂ + {TAIL_Z}·σ_s·√|S| = {:.3e} grid units is too wide: a smaller max_clients or noise_multiplier",
                dp.sum_bound(request.max_clients)
            ),
        });
    }
    Err(infeasible(params, request, &b))
}

/// The smallest noise multiplier `z` (to 0.1 %) with which `rounds` rounds planned as
/// `request` (its `dp` required; its `noise_multiplier` ignored) cost each contributor at
/// most `epsilon` at `delta` ([`crate::dp::accounting`]); the plan is feasible at it.
///
/// ```
/// use cryptflow_he::planner::{calibrate_noise_multiplier, plan, DpRequest, PlanRequest, Weighting};
/// use cryptflow_he::dp::accounting::epsilon;
/// use cryptflow_he::ParameterSet;
/// let params = ParameterSet::default_128();
/// let r = PlanRequest { max_clients: 100, clip_bound: 1.0, max_abs_error: 1.0,
///     weighting: Weighting::Uniform, dp: Some(DpRequest { noise_multiplier: 1.0,
///     honest_shares: 99, colluders: 1, values: 1 << 20 }) };
/// let z = calibrate_noise_multiplier(&params, &r, 3.0, 1e-6, 100).unwrap();
/// let p = plan(&params, &PlanRequest { dp: Some(DpRequest { noise_multiplier: z,
///     ..r.dp.unwrap() }), ..r }).unwrap();
/// let (eps, _) = epsilon(&p.dp().unwrap().charge().times(100), 1e-6).unwrap();
/// assert!(eps <= 3.0 && eps > 2.9, "{eps}");
/// assert!(p.transport().get() <= 28); // d = 2^20, |S| = 100: no more bytes than float32's 0.875×
/// ```
///
/// # Errors
/// [`PlanError::InvalidRequest`] naming `dp` (absent), `dp.epsilon` or `dp.delta` (out of
/// range), `rounds` (0), or the request's field when no `z` up to [`MAX_NOISE_MULTIPLIER`]
/// can be planned within `epsilon`.
pub fn calibrate_noise_multiplier(
    params: &ParameterSet,
    request: &PlanRequest,
    epsilon: f64,
    delta: f64,
    rounds: u64,
) -> Result<f64, PlanError> {
    let Some(dp) = request.dp else {
        return Err(invalid("dp", "is required to calibrate a noise multiplier".into()));
    };
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(invalid("dp.epsilon", "must be a positive number".into()));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(invalid("dp.delta", "must be in (0, 1)".into()));
    }
    if rounds == 0 {
        return Err(invalid("rounds", "must be at least 1".into()));
    }
    // A z the planner refuses (σ² beyond 2^64 on the grid, a width beyond 64 bits) is not
    // feasible; the request's other fields are checked once, first.
    let with_z =
        |z: f64| PlanRequest { dp: Some(DpRequest { noise_multiplier: z, ..dp }), ..*request };
    plan(params, &with_z(1.0)).map(|_| ()).or_else(|e| match e {
        PlanError::InvalidRequest { field: "dp.noise_multiplier", .. }
        | PlanError::Infeasible { .. } => Ok(()),
        e => Err(e),
    })?;
    let within = |z: f64| -> bool {
        let Ok(p) = plan(params, &with_z(z)) else { return false };
        let charge = p.dp.map(|d| d.charge().times(rounds)).unwrap_or_default();
        crate::dp::accounting::epsilon(&charge, delta).is_ok_and(|(e, _)| e <= epsilon)
    };
    // The largest plannable z (noise grows with it; so do σ² and the width).
    let mut hi = MAX_NOISE_MULTIPLIER;
    while plan(params, &with_z(hi)).is_err() && hi > 1e-3 {
        hi /= 2.0;
    }
    if !within(hi) {
        return Err(invalid(
            "dp.epsilon",
            format!(
                "{epsilon} at δ = {delta} over {rounds} rounds needs more noise than a plannable round carries (noise multiplier above {hi:.3e} for this clip bound, model size and max_clients)"
            ),
        ));
    }
    let mut lo = 1e-3;
    if within(lo) {
        return Ok(lo);
    }
    while hi / lo > 1.001 {
        let mid = (lo * hi).sqrt();
        if within(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The largest clip bound with which `request` (its other fields as they are) can be planned,
/// to three significant digits and on the feasible side; `None` if not even a bound equal to
/// its `max_abs_error` fits. An adaptive clip bound is held below it.
///
/// ```
/// use cryptflow_he::planner::{largest_clip_bound, plan, PlanRequest, Weighting};
/// use cryptflow_he::ParameterSet;
/// let params = ParameterSet::default_128();
/// let r = PlanRequest { max_clients: 3, clip_bound: 1.0, max_abs_error: 1e-6,
///     weighting: Weighting::Samples { min_count: 1, max_count: 100_000 }, dp: None };
/// let b = largest_clip_bound(&params, &r).unwrap();
/// assert!(plan(&params, &PlanRequest { clip_bound: b, ..r }).is_ok());
/// assert!(plan(&params, &PlanRequest { clip_bound: b * 1.01, ..r }).is_err());
/// ```
pub fn largest_clip_bound(params: &ParameterSet, request: &PlanRequest) -> Option<f64> {
    let fits = |b: f64| {
        let r = PlanRequest { clip_bound: b, ..*request };
        check_request(&r).is_ok() && plan_quiet(params, &r)
    };
    let (mut lo, mut hi) = (request.max_abs_error, MAX_CLIP_BOUND);
    if !fits(lo) {
        return None;
    }
    if fits(hi) {
        return Some(hi);
    }
    // Bisection on the log scale down to a relative width of 2^-12, then the feasible end.
    while hi / lo > 1.0 + 1.0 / 4096.0 {
        let mid = (lo * hi).sqrt();
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// The refusal: which bound, how many bits, and the nearest settings that would fit.
fn infeasible(params: &ParameterSet, request: &PlanRequest, b: &Budget) -> PlanError {
    let feasible = |r: &PlanRequest| check_request(r).is_ok() && plan_quiet(params, r);
    // Smallest error that fits: the error scales the step, so search on a log grid.
    let mut nearest = Vec::new();
    let mut e = request.max_abs_error;
    for _ in 0..200 {
        e *= 1.1;
        if e > request.clip_bound {
            break;
        }
        if feasible(&PlanRequest { max_abs_error: e, ..*request }) {
            // Stated a little above the bound found, so that its rounding for print stays
            // feasible (±0.5 % at three digits).
            nearest.push(format!("max_abs_error ≥ {:.2e}", e * 1.01));
            break;
        }
    }
    // The settings the operator controls come first: a lower largest count or clip bound
    // (always acceptable to the sites), then the rest.
    if let Weighting::Samples { min_count, max_count } = request.weighting {
        let with_max = |m: u64| PlanRequest {
            weighting: Weighting::Samples { min_count, max_count: m },
            ..*request
        };
        if min_count < max_count && feasible(&with_max(min_count)) {
            let (mut lo, mut hi) = (min_count, max_count);
            while lo + 1 < hi {
                let mid = lo + (hi - lo) / 2;
                if feasible(&with_max(mid)) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            nearest.push(format!("max_count ≤ {lo}"));
        }
    }
    let mut clip = request.clip_bound;
    for _ in 0..200 {
        clip /= 1.1;
        if clip < request.max_abs_error {
            break;
        }
        if feasible(&PlanRequest { clip_bound: clip, ..*request }) {
            nearest.push(format!("clip_bound ≤ {:.3e}", clip * 0.999));
            break;
        }
    }
    if let Weighting::Samples { min_count, max_count } = request.weighting {
        let mut lo = min_count;
        let mut hi = max_count;
        if feasible(&PlanRequest {
            weighting: Weighting::Samples { min_count: hi, max_count },
            ..*request
        }) {
            while lo + 1 < hi {
                let mid = lo + (hi - lo) / 2;
                let r = PlanRequest {
                    weighting: Weighting::Samples { min_count: mid, max_count },
                    ..*request
                };
                if feasible(&r) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            nearest.push(format!("min_count ≥ {hi}"));
        }
    }
    // A round of one contribution is an update, not a mean: never suggested.
    let mut lo = 2u32;
    let mut hi = request.max_clients;
    if hi > 2 && feasible(&PlanRequest { max_clients: 2, ..*request }) {
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if feasible(&PlanRequest { max_clients: mid, ..*request }) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        nearest.push(format!("max_clients ≤ {lo}"));
    }
    PlanError::Infeasible {
        needed_bits: b.message_bits + 1.0 + b.delta_min as f64,
        message_bits: b.message_bits,
        margin_bits: b.delta_min,
        nearest: if nearest.is_empty() { "none".into() } else { nearest.join(", or ") },
    }
}

fn plan_quiet(params: &ParameterSet, request: &PlanRequest) -> bool {
    if request.dp.is_some() {
        return plan(params, request).is_ok();
    }
    let step = step_of(request);
    let b = budget(params, request, step, None);
    let c = request.max_clients as f64;
    b.delta_max.is_some_and(|d| fits(params, c, d, TransportBits::FULL))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(c: u32, e: f64) -> PlanRequest {
        PlanRequest {
            max_clients: c,
            clip_bound: 1.0,
            max_abs_error: e,
            weighting: Weighting::Uniform,
            dp: None,
        }
    }

    fn w(r: &PlanRequest) -> u32 {
        plan(&ParameterSet::default_128(), r).unwrap().transport().get()
    }

    #[test]
    fn design_figures() {
        // DESIGN §3 expects w = 29, 23, 33, 38 with a power-of-two step; a step of exactly
        // 2ε saves up to a bit.
        assert_eq!(w(&uniform(8, 1e-6)), 28);
        assert!(w(&uniform(8, 1e-4)) <= 23);
        assert!(w(&uniform(64, 1e-6)) <= 33);
        assert!(w(&uniform(512, 1e-6)) <= 38);
    }

    #[test]
    fn every_guarantee_holds_for_many_requests() {
        let params = ParameterSet::default_128();
        for c in [1u32, 2, 8, 64, 512, 4096] {
            for e in [1e-2f64, 1e-4, 1e-6, 1e-8] {
                for b in [0.5, 1.0, 1000.0] {
                    let r = PlanRequest { clip_bound: b, max_abs_error: e.min(b), ..uniform(c, e) };
                    let Ok(p) = plan(&params, &r) else { continue };
                    let delta = p.delta().delta() as f64;
                    let cf = c as f64;
                    assert!((cf * p.max_message() as f64 + 0.5) * delta <= 2f64.powi(63), "{r:?}");
                    let sigma = crate::noise::aggregate_variance(&params, p.transport(), c).sqrt();
                    assert!(TAIL_Z * sigma < delta / 2.0, "{r:?}");
                    assert!(2.0 * TAIL_Z * params.key_std() * cf.sqrt() < delta, "{r:?}");
                    assert!(p.step() / 2.0 * (1.0 + 1.0 / 1024.0) <= e, "{r:?}");
                }
            }
        }
    }

    #[test]
    fn sample_counts_up_to_a_million_plan_at_1e_4() {
        let params = ParameterSet::default_128();
        let r = PlanRequest {
            max_clients: 100,
            clip_bound: 1.0,
            max_abs_error: 1e-4,
            weighting: Weighting::Samples { min_count: 4, max_count: 1_000_000 },
            dp: None,
        };
        let p = plan(&params, &r).unwrap();
        assert!(p.transport().get() <= 48, "{p:?}");
        // From a count of 1, 1e-4 needs more than 64 bits; the refusal names the nearest fit.
        let wide = PlanRequest {
            weighting: Weighting::Samples { min_count: 1, max_count: 1_000_000 },
            ..r
        };
        let err = plan(&params, &wide).unwrap_err().to_string();
        assert!(err.contains("min_count ≥ 4"), "{err}");
        assert!(err.contains("max_abs_error ≥"), "{err}");
    }

    #[test]
    fn refusals_offer_settings_the_operator_controls() {
        // A FedAvg round as a Flower strategy creates it: counts from 1 (a site's sample count
        // is whatever it holds), a wide count range, an error of 1e-7. Before, the refusal
        // offered only `min_count ≥ …` (sites cannot promise it) and `max_clients ≤ 1`.
        let params = ParameterSet::default_128();
        let r = PlanRequest {
            max_clients: 3,
            clip_bound: 1.0,
            max_abs_error: 1e-7,
            weighting: Weighting::Samples { min_count: 1, max_count: 100_000_000 },
            dp: None,
        };
        let err = plan(&params, &r).unwrap_err().to_string();
        assert!(err.contains("max_count ≤ "), "{err}");
        assert!(err.contains("clip_bound ≤ "), "{err}");
        assert!(!err.contains("max_clients ≤ 1"), "{err}");
        // Each suggestion is feasible as stated.
        let at = |key: &str| -> f64 {
            let rest = &err[err.find(key).unwrap() + key.len()..];
            rest.split([',', ' ', ')']).next().unwrap().parse().unwrap()
        };
        let max_count = at("max_count ≤ ") as u64;
        let with = PlanRequest { weighting: Weighting::Samples { min_count: 1, max_count }, ..r };
        assert!(plan(&params, &with).is_ok(), "{err}");
        let with = PlanRequest { clip_bound: at("clip_bound ≤ "), ..r };
        assert!(plan(&params, &with).is_ok(), "{err}");
    }

    #[test]
    fn more_clients_never_cost_fewer_bytes() {
        let mut last = 0;
        for c in [2, 8, 64, 512, 4096] {
            let w = w(&uniform(c, 1e-4));
            assert!(w >= last);
            last = w;
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let params = ParameterSet::default_128();
        for (r, field) in [
            (uniform(0, 1e-6), "max_clients"),
            (PlanRequest { clip_bound: f64::NAN, ..uniform(8, 1e-6) }, "clip_bound"),
            (uniform(8, 0.0), "max_abs_error"),
            (
                PlanRequest {
                    weighting: Weighting::Samples { min_count: 5, max_count: 4 },
                    ..uniform(8, 1e-4)
                },
                "min_count",
            ),
        ] {
            let e = plan(&params, &r).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn a_serialised_plan_is_re_derived() {
        let p = plan(&ParameterSet::default_128(), &uniform(8, 1e-6)).unwrap();
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(serde_json::from_value::<Plan>(json.clone()).unwrap(), p);
        let mut forged = json;
        forged["transport_bits"] = 20.into();
        assert!(serde_json::from_value::<Plan>(forged).is_err());
    }
}
