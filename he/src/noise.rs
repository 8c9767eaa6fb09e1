//! The noise model of DESIGN §3, shared by the planner and the statistical tests.
//!
//! Decrypting a fresh ciphertext leaves `e·U + e2 − e1·S` on every coefficient. Conditioned on
//! the key and after the key-dependent mean `½·e·𝟙` is subtracted (see
//! [`SecretKey`](crate::SecretKey)), its variance is `‖e‖²/4 + h·var(e) + var(e)`, on average
//! over keys `(N/4 + h + 1)·var(e)`. Modulus switching to `(w_mask, w_body)` adds
//! `h·4^(64−w_mask)/12 + 4^(64−w_body)/12`. A weighted sum multiplies a ciphertext's variance
//! by its squared weight.
//!
//! The tail bound: every term is a sum of independent, centred, bounded variables that are
//! *strictly* sub-Gaussian (uniform, Rademacher-like and TUniform terms all have a variance
//! proxy equal to their variance), so `P(|noise| ≥ z·σ) ≤ 2·exp(−z²/2)`. With
//! [`TAIL_Z`] = 13.4 this is below 2^-128 per coefficient — a proven bound, not a Gaussian
//! approximation.

use crate::params::{ParameterSet, TransportWidths};

/// Multiplier of the standard deviation such that `2·exp(−z²/2) ≤ 2^-128`.
pub const TAIL_Z: f64 = 13.4;

/// `log2` of the per-coefficient failure probability bound `2·exp(−z²/2)` at `z`.
pub fn failure_log2(z: f64) -> f64 {
    1.0 - z * z / (2.0 * std::f64::consts::LN_2)
}

/// Variance of a fresh ciphertext's noise averaged over keys with Hamming weight `h`.
pub fn fresh_variance(params: &ParameterSet, hamming_weight: f64) -> f64 {
    let n = params.ring_degree().get() as f64;
    (n / 4.0 + hamming_weight + 1.0) * params.noise().variance()
}

/// Variance added by modulus switching every word to `widths` (0 at full width).
pub fn switch_variance(widths: TransportWidths, hamming_weight: f64) -> f64 {
    let rounding = |w: u32| if w >= 64 { 0.0 } else { 4f64.powi(64 - w as i32) / 12.0 };
    hamming_weight * rounding(widths.mask.get()) + rounding(widths.body.get())
}

/// Variance added by switching an aggregate of uploads (words on the `upload` grid) down to
/// `download` widths. Words already on a grid at least as fine lose nothing; otherwise the
/// error takes `m = 2^(w_up − w_down)` values on a step `s = 2^(64 − w_up)`, rounded ties to
/// even, with variance `s²·(m² + 2)/12 = (4^(64−w_down) + 2·4^(64−w_up))/12`.
pub fn download_switch_variance(
    upload: TransportWidths,
    download: TransportWidths,
    hamming_weight: f64,
) -> f64 {
    let part = |up: u32, down: u32| {
        if down >= up {
            0.0
        } else {
            (4f64.powi(64 - down as i32) + 2.0 * 4f64.powi(64 - up as i32)) / 12.0
        }
    };
    hamming_weight * part(upload.mask.get(), download.mask.get())
        + part(upload.body.get(), download.body.get())
}

/// Noise standard deviation of an aggregate: fresh uploads switched to `upload`, weighted
/// with `Σc_k² = weight_sq_sum`, summed, then the sum switched to `download`.
///
/// ```
/// use cryptflow_he::{noise, ParameterSet, TransportBits, TransportWidths};
/// let p = ParameterSet::default_128();
/// let w = TransportWidths { mask: TransportBits::try_new(36).unwrap(),
///     body: TransportBits::try_new(31).unwrap() };
/// let one = noise::aggregate_std(&p, 2048.0, 1.0, w, w);
/// let eight = noise::aggregate_std(&p, 2048.0, 8.0, w, w);
/// assert!((eight / one - 8f64.sqrt()).abs() < 1e-9); // √K growth, thanks to debiasing
/// ```
pub fn aggregate_std(
    params: &ParameterSet,
    hamming_weight: f64,
    weight_sq_sum: f64,
    upload: TransportWidths,
    download: TransportWidths,
) -> f64 {
    let per_client =
        fresh_variance(params, hamming_weight) + switch_variance(upload, hamming_weight);
    (weight_sq_sum * per_client + download_switch_variance(upload, download, hamming_weight)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_bound_is_below_2_pow_minus_128() {
        assert!(failure_log2(TAIL_Z) <= -128.0);
        assert!(failure_log2(13.0) > -128.0, "13 alone would not be enough");
    }

    #[test]
    fn full_width_adds_no_switching_noise() {
        assert_eq!(switch_variance(TransportWidths::FULL, 1024.0), 0.0);
    }
}
