//! Clipping and conditional randomized rounding onto the integer grid (Kairouz, Liu, Steinke
//! 2021, §4, "The Distributed Discrete Gaussian Mechanism"): an update already scaled to grid
//! units is clipped to L2 norm `c`, then each coordinate is rounded down or up at random
//! (unbiased per draw), the whole draw repeated until the integer vector's norm is at most the
//! inflated bound `Δ₂` — checked exactly, on integers — so that the sensitivity the noise is
//! sized for holds for every upload, not only with high probability. The condition biases the
//! result slightly toward 0 (KLS21 bound it by about `β/(1 − β)·√d` in L2), and each rounding
//! probability is the fractional part to 53 bits.
//!
//! ```
//! use cryptflow_he::dp::rounding::{clip_l2, inflated_sensitivity_sq, round_conditionally};
//! use rand_core::SeedableRng;
//!
//! let mut x = vec![3.0, 4.0, 0.25]; // norm 5.006…
//! let clipped = clip_l2(&mut x, 5.0);
//! assert!(clipped);
//! let bound = inflated_sensitivity_sq(5.0, x.len(), 1e-9);
//! let mut rng = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
//! let z = round_conditionally(&x, bound, &mut rng).unwrap();
//! assert!(z.iter().map(|&v| (v as i128) * (v as i128)).sum::<i128>() as u128 <= bound);
//! ```

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

/// Most draws [`round_conditionally`] makes before giving up: with the bound of
/// [`inflated_sensitivity_sq`] at `β ≤ 1/2` a draw passes with probability at least 1/2, so
/// this many failures have probability below `2^-64`.
pub const MAX_ROUNDING_DRAWS: u32 = 64;

/// Rounding that did not meet the norm bound.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RoundingError {
    /// No draw within [`MAX_ROUNDING_DRAWS`] met the bound (a bound below the inflated one, or
    /// an input not clipped to it).
    #[error(
        "no randomized rounding of the update met the squared norm bound {bound} in {draws} draws"
    )]
    BoundNotMet {
        /// The squared bound asked for.
        bound: u128,
        /// Draws made.
        draws: u32,
    },
    /// A value that is not finite or does not fit an `i64` after rounding.
    #[error("value {index} is not finite or beyond ±2^62")]
    OutOfRange {
        /// Its position.
        index: usize,
    },
}

/// Scales `x` in place to L2 norm `c` if it is longer; returns whether it was (the norm is
/// computed scaled by the largest magnitude, so huge finite values are scaled, not lost).
/// Infinite or not-a-number values count as infinitely long: the vector is then zeroed and
/// reported clipped. A `c` that is negative or not a number is taken as 0.
pub fn clip_l2(x: &mut [f64], c: f64) -> bool {
    let c = clip_bound(c);
    let largest = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if x.iter().any(|v| !v.is_finite()) {
        x.iter_mut().for_each(|v| *v = 0.0);
        return true;
    }
    if largest == 0.0 {
        return false;
    }
    let norm = largest * x.iter().map(|v| (v / largest).powi(2)).sum::<f64>().sqrt();
    if norm <= c {
        return false;
    }
    x.iter_mut().for_each(|v| *v = *v / norm * c);
    true
}

/// A clip bound as [`clip_l2`] and [`inflated_sensitivity_sq`] use it: negative or NaN → 0.
fn clip_bound(c: f64) -> f64 {
    if c >= 0.0 {
        c
    } else {
        0.0
    }
}

/// The squared L2 norm bound, in grid units, that a vector of `d` values clipped to `c`
/// (grid units) meets after randomized rounding with probability at least `1 − β`
/// (KLS21, Theorem 2 / eq. (18); `compute_l2_sensitivity` in google-research's
/// `distributed_dp`): `min(c² + d/4 + √(2 ln(1/β))·(c + √d/2), (c + √d)²)`, rounded up to an
/// integer. The second term holds always, up to floating-point rounding (each coordinate moves
/// by less than 1). `d` is the length of the vector rounded — after a rotation, its padded
/// length ([`Rotation::rotated_len`](super::rotation::Rotation::rotated_len)). A `c` negative
/// or NaN is taken as 0 (as [`clip_l2`] does); a `β` outside `(0, 1)` gives the second term.
pub fn inflated_sensitivity_sq(c: f64, d: usize, beta: f64) -> u128 {
    if !(beta > 0.0 && beta < 1.0) {
        return inflated_sensitivity_sq_with_tail(c, d, f64::INFINITY);
    }
    inflated_sensitivity_sq_with_tail(c, d, (2.0 * (1.0 / beta).ln()).sqrt())
}

/// [`inflated_sensitivity_sq`] with `√(2 ln(1/β))` given as `tail`: a constant rounded up
/// (the DP planner's [`DP_ROUNDING_TAIL`](crate::planner::DP_ROUNDING_TAIL)) keeps `ln` — whose
/// last bit may differ between platforms — out of a bound every party must derive alike;
/// only `+`, `×`, `√` (correctly rounded in IEEE 754) and `⌈·⌉` remain.
pub fn inflated_sensitivity_sq_with_tail(c: f64, d: usize, tail: f64) -> u128 {
    let c = clip_bound(c);
    let d = d as f64;
    let always = (c + d.sqrt()).powi(2);
    let probable = c * c + d / 4.0 + tail * (c + d.sqrt() / 2.0);
    probable.min(always).ceil() as u128
}

/// A uniform `f64` in `[0, 1)` with 53 random bits.
fn unit(rng: &mut (impl RngCore + CryptoRng)) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Rounds each value of `x` (grid units) to `⌊v⌋ + 1` with probability `v − ⌊v⌋`, else `⌊v⌋`
/// (unbiased), repeating the whole draw until the integers' squared norm is at most
/// `max_norm_sq` — computed exactly in `i128`.
///
/// # Errors
/// [`RoundingError::OutOfRange`] for a value not finite or beyond ±2^62;
/// [`RoundingError::BoundNotMet`] after [`MAX_ROUNDING_DRAWS`] failed draws.
pub fn round_conditionally(
    x: &[f64],
    max_norm_sq: u128,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<i64>, RoundingError> {
    const LIMIT: f64 = (1u64 << 62) as f64;
    if let Some(index) = x.iter().position(|v| !v.is_finite() || v.abs() >= LIMIT) {
        return Err(RoundingError::OutOfRange { index });
    }
    let mut z = vec![0i64; x.len()];
    for _ in 0..MAX_ROUNDING_DRAWS {
        let mut norm_sq: u128 = 0;
        for (out, &v) in z.iter_mut().zip(x) {
            let floor = v.floor();
            let up = unit(rng) < v - floor;
            *out = floor as i64 + i64::from(up);
            norm_sq = norm_sq.saturating_add((*out as i128 * *out as i128) as u128);
        }
        if norm_sq <= max_norm_sq {
            return Ok(z);
        }
    }
    Err(RoundingError::BoundNotMet { bound: max_norm_sq, draws: MAX_ROUNDING_DRAWS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::from_seed([seed; 32])
    }

    #[test]
    fn clipping_scales_long_vectors_only() {
        let mut x = vec![3.0, 4.0];
        assert!(!clip_l2(&mut x, 5.0));
        assert_eq!(x, vec![3.0, 4.0]);
        assert!(clip_l2(&mut x, 1.0));
        assert!((x[0] - 0.6).abs() < 1e-15 && (x[1] - 0.8).abs() < 1e-15);
        let mut bad = vec![1.0, f64::NAN];
        assert!(clip_l2(&mut bad, 1.0));
        assert_eq!(bad, vec![0.0, 0.0]);
        let mut empty: Vec<f64> = Vec::new();
        assert!(!clip_l2(&mut empty, 1.0));
        // Finite values whose squares overflow are scaled, not zeroed.
        let mut huge = vec![3e200, -4e200];
        assert!(clip_l2(&mut huge, 5.0));
        assert!((huge[0] - 3.0).abs() < 1e-12 && (huge[1] + 4.0).abs() < 1e-12, "{huge:?}");
        let mut neg = vec![1.0, 1.0];
        assert!(clip_l2(&mut neg, -1.0));
        assert_eq!(neg, vec![0.0, 0.0]);
    }

    #[test]
    fn rounding_is_unbiased_and_always_within_the_bound() {
        // d = 1000 values clipped to c = 20 grid units; 400 roundings: every one within the
        // bound, and each coordinate's mean within 5 standard errors of its value.
        let d = 1000;
        let mut x: Vec<f64> = (0..d).map(|i| ((i * 37) % 19) as f64 / 3.0 - 3.0).collect();
        clip_l2(&mut x, 20.0);
        let bound = inflated_sensitivity_sq(20.0, d, 1e-6);
        let mut r = rng(5);
        let trials = 400;
        let mut sums = vec![0f64; d];
        for _ in 0..trials {
            let z = round_conditionally(&x, bound, &mut r).unwrap();
            let n: i128 = z.iter().map(|&v| v as i128 * v as i128).sum();
            assert!(n as u128 <= bound);
            for (s, v) in sums.iter_mut().zip(&z) {
                *s += *v as f64;
            }
        }
        let worst = sums
            .iter()
            .zip(&x)
            .map(|(s, v)| {
                let p = v - v.floor();
                let se = (p * (1.0 - p) / trials as f64).sqrt().max(1e-9);
                ((s / trials as f64 - v) / se).abs()
            })
            .fold(0.0, f64::max);
        assert!(worst < 5.0, "a coordinate's mean {worst:.1} standard errors off");
    }

    #[test]
    fn the_bound_matches_the_reference_formula_and_bad_inputs_are_errors() {
        // c = 10, d = 101, β = e^-2: 100 + 25.25 + 2·(10 + √101/2) = 155.30 → 156 (below
        // (10 + √101)² = 402).
        assert_eq!(inflated_sensitivity_sq(10.0, 101, (-2.0f64).exp()), 156);
        // Tiny c, large d: the always-true bound is the smaller; so it is for a β outside
        // (0, 1), and a negative c counts as 0.
        assert_eq!(inflated_sensitivity_sq(0.0, 4, 1e-300), 4);
        assert_eq!(inflated_sensitivity_sq(1.0, 4, 0.0), 9);
        assert_eq!(inflated_sensitivity_sq(-10.0, 4, f64::NAN), 4);
        // A bound nobody can meet.
        let e = round_conditionally(&[0.5; 100], 0, &mut rng(1)).unwrap_err();
        assert_eq!(e, RoundingError::BoundNotMet { bound: 0, draws: MAX_ROUNDING_DRAWS });
        assert_eq!(
            round_conditionally(&[0.0, f64::INFINITY], 10, &mut rng(1)).unwrap_err(),
            RoundingError::OutOfRange { index: 1 }
        );
        // Integers stay as they are.
        assert_eq!(
            round_conditionally(&[-3.0, 0.0, 7.0], 100, &mut rng(1)).unwrap(),
            vec![-3, 0, 7]
        );
    }
}
