//! The noise model of DESIGN §3, shared by the planner, decryption's self-checks and the
//! statistical tests.
//!
//! For an aggregate of `C` uploads, the phase `ΣB − A·K` of every slot is `Δ·Σm + E` with
//! `E = Σ_i (e_i + r_i)`: each client's rounded-Gaussian noise `e_i` (variance `σ_e²`) and the
//! error `r_i` of rounding its body to `w` bits (uniform on a grid of `2^(64−w)`, variance
//! `4^(64−w)/12`). The mask carries no rounding error (it is expanded from the seed, never
//! sent), so `σ_C² = C·(σ_e² + 4^(64−w)/12)`.
//!
//! Tail bound: `E` is a sum of independent, centred variables that are sub-Gaussian with
//! variance proxy equal to their variance (Gaussian, and uniform, which is *strictly*
//! sub-Gaussian), so `P(|E| ≥ z·σ_C) ≤ 2·exp(−z²/2)`. With [`TAIL_Z`] = 13.4 that is below
//! 2^-128 per slot — a proven bound, not a Gaussian approximation. (The rounding of the
//! Gaussian to an integer adds at most ½ and a variance of about 1/12, far below the margin.)
//! The same `z` bounds the key sum: `|K_j| ≤ z·σ_k·√C` except with probability 2^-128.

use crate::params::{ParameterSet, TransportBits};

/// Multiplier of the standard deviation such that `2·exp(−z²/2) ≤ 2^-128`.
pub const TAIL_Z: f64 = 13.4;

/// `log2` of the per-slot failure probability bound `2·exp(−z²/2)` at `z`.
///
/// ```
/// assert!(cryptflow_he::noise::failure_log2(cryptflow_he::noise::TAIL_Z) <= -128.0);
/// ```
pub fn failure_log2(z: f64) -> f64 {
    1.0 - z * z / (2.0 * std::f64::consts::LN_2)
}

/// Variance of one upload's noise in a slot: `σ_e² + 4^(64−w)/12`.
pub fn upload_variance(params: &ParameterSet, w: TransportBits) -> f64 {
    params.noise_variance() + w.rounding_variance()
}

/// `σ_C²`: variance of the noise of a sum of `contributors` uploads.
///
/// ```
/// use cryptflow_he::{noise, ParameterSet, TransportBits};
/// let p = ParameterSet::default_128();
/// let w = TransportBits::try_new(28).unwrap();
/// let one = noise::aggregate_variance(&p, w, 1);
/// assert_eq!(noise::aggregate_variance(&p, w, 8), 8.0 * one); // grows as C, σ as √C
/// ```
pub fn aggregate_variance(params: &ParameterSet, w: TransportBits, contributors: u32) -> f64 {
    contributors as f64 * upload_variance(params, w)
}

/// The bound `z·σ_C` every residual of an honest decryption stays within.
pub fn residual_bound(params: &ParameterSet, w: TransportBits, contributors: u32) -> f64 {
    TAIL_Z * aggregate_variance(params, w, contributors).sqrt()
}

/// The bound `z·σ_k·√C` every coefficient of an honest key sum stays within.
pub fn key_bound(params: &ParameterSet, contributors: u32) -> f64 {
    TAIL_Z * params.key_std() * (contributors as f64).sqrt()
}

/// The standard normal CDF `Φ(x)`, from the complementary error function (Numerical Recipes'
/// `erfcc`, relative error below 1.2·10^-7): for the statistical tests of the noise.
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - erfc / 2.0
    } else {
        erfc / 2.0
    }
}

/// Whether `samples` pass the Kolmogorov–Smirnov test against `N(0, 1)` at level `alpha`
/// (asymptotic critical value `√(ln(2/α)/(2n))`); returns the statistic and the verdict.
///
/// ```
/// use cryptflow_he::noise::kolmogorov_smirnov_normal;
/// let uniform: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
/// assert!(!kolmogorov_smirnov_normal(&uniform, 1e-6).1);
/// ```
pub fn kolmogorov_smirnov_normal(samples: &[f64], alpha: f64) -> (f64, bool) {
    let mut z = samples.to_vec();
    z.sort_by(f64::total_cmp);
    let n = z.len() as f64;
    let d = z
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = normal_cdf(*r);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max);
    (d, d < ((2.0 / alpha).ln() / (2.0 * n)).sqrt())
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
    fn full_width_adds_no_rounding_noise() {
        let p = ParameterSet::default_128();
        assert_eq!(upload_variance(&p, TransportBits::FULL), p.noise_variance());
    }
}
