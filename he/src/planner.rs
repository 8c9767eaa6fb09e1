//! The capacity planner: from the round's shape (clients, clip bound, weights, `L`) and either
//! a precision target or fixed transport widths, derive the [`Encoding`] and widths, or say
//! which bound cannot be met.
//!
//! Guarantees of a returned [`Plan`], for any aggregate within its weight budget
//! (`Σc_k ≤ K·c_max`, `Σc_k² ≤ K·c_max²`):
//! - **no wrap-around**: `K·c_max·ceil(B·2^p)·2^d < 2^62`;
//! - **exact decryption**: the noise of an aggregate of uploads switched to `upload` widths,
//!   itself switched to `download` widths, stays below `Δ/2 = 2^(d−1)` except with probability
//!   `≤ 2^-128` per coefficient ([`noise::TAIL_Z`](crate::noise::TAIL_Z));
//! - **precision**: the decrypted weighted mean is within `2^-(p+1)` of the mean of the clipped
//!   inputs.
//!
//! The model uses the worst-case Hamming weight `h = N`, so it holds for every key.
//!
//! ```
//! use cryptflow_he::{planner::{plan, PlanRequest, PlanTarget}, BodiesPerMask, ParameterSet};
//! let request = PlanRequest {
//!     max_clients: 8,
//!     clip_bound: 1.0,
//!     max_weight: 1,
//!     bodies: BodiesPerMask::try_new(8).unwrap(),
//!     target: PlanTarget::Precision { max_abs_error: 1e-6 },
//! };
//! let plan = plan(&ParameterSet::default_128(), &request).unwrap();
//! assert!(plan.encoding.max_quantisation_error() <= 1e-6);
//! assert!(plan.upload_bytes_per_value() <= 4.5);
//! ```

use crate::encoding::{max_message, Encoding, HEADROOM_BITS};
use crate::error::PlanError;
use crate::noise;
use crate::params::{BodiesPerMask, ParameterSet, TransportBits, TransportWidths};
use serde::{Deserialize, Serialize};

/// What the round needs.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Largest number of contributions summed into one aggregate (`K`).
    pub max_clients: u32,
    /// Values are clipped to `[−clip_bound, clip_bound]`.
    pub clip_bound: f64,
    /// Largest integer weight of one contribution (`c_max`; 1 for uniform weighting).
    pub max_weight: u64,
    /// Bodies per mask `L`.
    pub bodies: BodiesPerMask,
    /// What to optimise for.
    pub target: PlanTarget,
}

/// The planner's objective.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanTarget {
    /// Reach this worst-case absolute error of the mean with the fewest bytes on the wire.
    Precision {
        /// Largest acceptable absolute error of a coordinate of the weighted mean.
        max_abs_error: f64,
    },
    /// Use these upload widths (also for download) and the best precision they allow.
    Widths {
        /// Transport widths.
        widths: TransportWidths,
        /// Optional lower bound on precision: fail rather than deliver less.
        max_abs_error: Option<f64>,
    },
}

/// A feasible configuration.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Encoding and weight budget for the round's ciphertexts.
    pub encoding: Encoding,
    /// Bodies per mask.
    pub bodies: BodiesPerMask,
    /// Widths clients compress uploads to.
    pub upload: TransportWidths,
    /// Widths the aggregate is compressed to for download.
    pub download: TransportWidths,
    /// Standard deviation of the worst-case aggregate noise (in units of the 2^64 torus).
    pub noise_std: f64,
    /// `log2` of the per-coefficient decryption failure probability bound.
    pub failure_log2: f64,
}

impl Plan {
    /// Bytes per value of a compressed upload (full blocks).
    pub fn upload_bytes_per_value(&self) -> f64 {
        self.upload.bytes_per_value(self.bodies)
    }

    /// Bytes per value of the compressed aggregate (full blocks).
    pub fn download_bytes_per_value(&self) -> f64 {
        self.download.bytes_per_value(self.bodies)
    }
}

/// Runs the planner. See the [module documentation](self) for the guarantees.
///
/// ```
/// use cryptflow_he::planner::{plan, PlanRequest, PlanTarget};
/// use cryptflow_he::{BodiesPerMask, ParameterSet, PlanError, TransportBits, TransportWidths};
/// let params = ParameterSet::default_128();
/// let widths = TransportWidths {
///     mask: TransportBits::try_new(40).unwrap(),
///     body: TransportBits::try_new(32).unwrap(),
/// };
/// let request = PlanRequest {
///     max_clients: 1000,
///     clip_bound: 4.0,
///     max_weight: 1,
///     bodies: BodiesPerMask::try_new(8).unwrap(),
///     target: PlanTarget::Widths { widths, max_abs_error: Some(1e-9) },
/// };
/// // 1000 clients at 40/32 bits cannot reach 1e-9: the error names the precision bound.
/// let err = plan(&params, &request).unwrap_err();
/// assert!(matches!(err, PlanError::Precision { .. }));
/// let request = PlanRequest { target: PlanTarget::Widths { widths, max_abs_error: None }, ..request };
/// let best = plan(&params, &request).unwrap();
/// println!("best error for 1000 clients: {:e}", best.encoding.max_quantisation_error());
/// ```
pub fn plan(params: &ParameterSet, request: &PlanRequest) -> Result<Plan, PlanError> {
    let invalid = |field, reason: &str| PlanError::InvalidRequest { field, reason: reason.into() };
    if request.max_clients == 0 {
        return Err(invalid("max_clients", "must be at least 1"));
    }
    if !(request.clip_bound.is_finite() && request.clip_bound > 0.0) {
        return Err(invalid("clip_bound", "must be a positive finite number"));
    }
    if request.clip_bound > 2f64.powi(40) {
        return Err(invalid("clip_bound", "must be at most 2^40"));
    }
    if request.max_weight == 0 {
        return Err(invalid("max_weight", "must be at least 1"));
    }
    let k = request.max_clients as u128;
    let c = request.max_weight as u128;
    let max_total_weight = k.checked_mul(c).filter(|&w| w <= u64::MAX as u128);
    let Some(max_total_weight) = max_total_weight else {
        return Err(invalid("max_weight", "times max_clients exceeds 2^64"));
    };
    let Some(max_weight_sq_sum) = max_total_weight.checked_mul(c) else {
        return Err(invalid("max_weight", "squared times max_clients exceeds 2^128"));
    };
    let h = params.ring_degree().get() as f64;

    // Delta exponent needed for given widths: smallest d with z·σ < 2^(d−1).
    let delta_for = |widths: TransportWidths| -> (u8, f64) {
        let sigma = noise::aggregate_std(params, h, max_weight_sq_sum as f64, widths, widths);
        let d = ((2.0 * noise::TAIL_Z * sigma).log2().floor() as i64 + 1).max(1);
        (d.min(255) as u8, sigma)
    };
    // Bits the worst-case sum needs at precision p and delta d.
    let needed_bits = |p: u8, d: u8| -> f64 {
        (max_total_weight as f64 * request.clip_bound).log2() + p as f64 + d as f64
    };
    let build = |p: u8, d: u8, widths: TransportWidths, sigma: f64| -> Option<Plan> {
        let encoding =
            Encoding::try_new(p, d, request.clip_bound, max_total_weight as u64, max_weight_sq_sum)
                .ok()?;
        Some(Plan {
            encoding,
            bodies: request.bodies,
            upload: widths,
            download: widths,
            noise_std: sigma,
            failure_log2: noise::failure_log2(noise::TAIL_Z),
        })
    };

    match request.target {
        PlanTarget::Precision { max_abs_error } => {
            if !(max_abs_error.is_finite() && max_abs_error > 0.0) {
                return Err(invalid("max_abs_error", "must be a positive finite number"));
            }
            // Smallest p with 2^-(p+1) <= target.
            let p = (-max_abs_error.log2() - 1.0).ceil().max(0.0);
            if p > 60.0 {
                return Err(invalid("max_abs_error", "is below 2^-61"));
            }
            let p = p as u8;
            let mut best: Option<(u32, Plan)> = None;
            for wb in 1..=64u8 {
                for wa in wb..=64u8.min(wb + 8) {
                    let widths = widths_of(wa, wb);
                    let (d, sigma) = delta_for(widths);
                    let Some(plan) = build(p, d, widths, sigma) else { continue };
                    let cost = wa as u32 + request.bodies.get() as u32 * wb as u32;
                    if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                        best = Some((cost, plan));
                    }
                }
            }
            best.map(|(_, plan)| plan).ok_or_else(|| {
                let (d, _) = delta_for(TransportWidths::FULL);
                PlanError::Wraparound {
                    needed_bits: needed_bits(p, d),
                    available_bits: HEADROOM_BITS,
                }
            })
        }
        PlanTarget::Widths { widths, max_abs_error } => {
            let (d, sigma) = delta_for(widths);
            // Largest p that still fits below 2^62 (capped where f64 stops mattering).
            let best = (0..=60u8).rev().find(|&p| {
                max_message(request.clip_bound, p)
                    .and_then(|m| m.checked_mul(max_total_weight))
                    .and_then(|m| m.checked_mul(1u128 << d.min(127)))
                    .is_some_and(|m| m < 1u128 << HEADROOM_BITS)
            });
            let Some(p) = best.filter(|_| (d as u32) < HEADROOM_BITS) else {
                return Err(PlanError::Wraparound {
                    needed_bits: needed_bits(0, d),
                    available_bits: HEADROOM_BITS,
                });
            };
            let plan = build(p, d, widths, sigma).ok_or(PlanError::Wraparound {
                needed_bits: needed_bits(p, d),
                available_bits: HEADROOM_BITS,
            })?;
            if let Some(target) = max_abs_error {
                let achievable = plan.encoding.max_quantisation_error();
                if !(target.is_finite() && target > 0.0) {
                    return Err(invalid("max_abs_error", "must be a positive finite number"));
                }
                if achievable > target {
                    return Err(PlanError::Precision { target, achievable });
                }
            }
            Ok(plan)
        }
    }
}

fn widths_of(mask: u8, body: u8) -> TransportWidths {
    // Both are in 1..=64 by construction of the search loops.
    TransportWidths {
        mask: TransportBits::try_new(mask).unwrap_or(TransportBits::FULL),
        body: TransportBits::try_new(body).unwrap_or(TransportBits::FULL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(k: u32, b: f64, target: PlanTarget) -> PlanRequest {
        PlanRequest {
            max_clients: k,
            clip_bound: b,
            max_weight: 1,
            bodies: BodiesPerMask::try_new(8).unwrap(),
            target,
        }
    }

    #[test]
    fn acceptance_point_k8_error_1e6_fits_in_4_5_bytes() {
        let p = plan(
            &ParameterSet::default_128(),
            &request(8, 1.0, PlanTarget::Precision { max_abs_error: 1e-6 }),
        )
        .unwrap();
        assert!(p.upload_bytes_per_value() <= 4.5, "{p:?}");
        assert!(p.encoding.max_quantisation_error() <= 1e-6);
        assert!(p.failure_log2 <= -128.0);
        // The guarantee itself: z·σ < Δ/2 and no wrap-around.
        assert!(noise::TAIL_Z * p.noise_std < 2f64.powi(p.encoding.delta_log() as i32 - 1));
    }

    #[test]
    fn uniform_32_bit_widths_cannot_reach_1e6_for_8_clients() {
        // DESIGN §3's "w = 32 everywhere" is infeasible here: the mask's rounding error is
        // multiplied by the secret. The planner must say so, naming the precision bound.
        let w = TransportWidths {
            mask: TransportBits::try_new(32).unwrap(),
            body: TransportBits::try_new(32).unwrap(),
        };
        let err = plan(
            &ParameterSet::default_128(),
            &request(8, 1.0, PlanTarget::Widths { widths: w, max_abs_error: Some(1e-6) }),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::Precision { .. }), "{err}");
    }

    #[test]
    fn impossible_requests_name_the_bound() {
        let err = plan(
            &ParameterSet::default_128(),
            &request(1 << 30, 1e6, PlanTarget::Precision { max_abs_error: 1e-9 }),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::Wraparound { .. }), "{err}");
        assert!(err.to_string().contains("wrap-around"));
        let err = plan(
            &ParameterSet::default_128(),
            &request(0, 1.0, PlanTarget::Precision { max_abs_error: 1e-6 }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_clients"));
        let err = plan(
            &ParameterSet::default_128(),
            &request(8, f64::NAN, PlanTarget::Precision { max_abs_error: 1e-6 }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("clip_bound"));
    }

    #[test]
    fn more_clients_never_cost_fewer_bytes() {
        let params = ParameterSet::default_128();
        let mut last = 0.0;
        for k in [2, 8, 64, 512, 4096] {
            let p = plan(&params, &request(k, 1.0, PlanTarget::Precision { max_abs_error: 1e-4 }))
                .unwrap();
            assert!(p.upload_bytes_per_value() >= last);
            last = p.upload_bytes_per_value();
        }
    }
}
