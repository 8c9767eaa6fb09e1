//! Exact discrete-Gaussian sampling, the noise of distributed differential privacy.
//!
//! In distributed DP each client adds a discrete-Gaussian share to its integer update before
//! encrypting it; the sum of the shares is the noise of the released mean (Kairouz, Liu,
//! Steinke, "The Distributed Discrete Gaussian Mechanism", ICML 2021). The sampler here is
//! Canonne, Kamath and Steinke's ("The Discrete Gaussian for Differential Privacy", NeurIPS
//! 2020, arXiv:2004.00010, Algorithms 1–3): integer and rational arithmetic only, no floating
//! point, so the output distribution is the discrete Gaussian itself, not an approximation
//! whose low-order bits leak (Mironov 2012).
//!
//! - [`rotation`]: the randomized Walsh–Hadamard rotation applied first (signs public, from
//!   the round's seed).
//! - [`rounding`]: L2 clipping and conditional randomized rounding to the integer grid, with
//!   the inflated sensitivity it guarantees.
//! - [`Variance`]: σ² as an exact rational.
//! - [`sample_discrete_gaussian`]: one draw of `N_Z(0, σ²)`, the distribution with
//!   `P[x] ∝ exp(−x² / (2σ²))` on the integers.
//! - [`sample_discrete_gaussians`]: `n` independent draws.
//!
//! Randomness comes only from the caller's generator: a client seeds it from its own secret
//! (never from anything another party knows), and the same generator state gives the same
//! draws — so a retried upload can re-derive the identical noise instead of adding fresh
//! noise (whose difference would leak).
//!
//! ```
//! use cryptflow_he::dp::{sample_discrete_gaussians, Variance};
//! use rand_core::SeedableRng;
//!
//! let sigma2 = Variance::new(25, 2).unwrap(); // σ² = 12.5
//! let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
//! let noise: Vec<i64> = sample_discrete_gaussians(&sigma2, 1000, &mut rng);
//! let mean = noise.iter().sum::<i64>() as f64 / 1000.0;
//! assert!(mean.abs() < 1.0);
//! // The same generator state, the same noise.
//! let again = sample_discrete_gaussians(&sigma2, 1000, &mut rand_chacha::ChaCha20Rng::from_seed([7; 32]));
//! assert_eq!(noise, again);
//! ```

pub mod accounting;
pub mod rotation;
pub mod rounding;

use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{One, ToPrimitive, Zero};
use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

/// The largest σ² [`Variance`] accepts: 2^64 (σ up to 2^32 grid units).
pub const MAX_VARIANCE: u128 = 1 << 64;

/// A variance that is not a non-negative rational of at most [`MAX_VARIANCE`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("σ² = {num}/{den}: {why}")]
pub struct VarianceError {
    num: u128,
    den: u128,
    why: &'static str,
}

/// σ² of a discrete Gaussian, in squared grid units, as the exact rational `num / den`, kept
/// in lowest terms (so `25/2` and `50/4` are the same variance and give the same draws).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variance {
    num: BigUint,
    den: BigUint,
}

impl Variance {
    /// `num / den`.
    ///
    /// # Errors
    /// [`VarianceError`] if `den` is 0 or the value exceeds [`MAX_VARIANCE`].
    pub fn new(num: u128, den: u128) -> Result<Self, VarianceError> {
        let error = |why| VarianceError { num, den, why };
        if den == 0 {
            return Err(error("the denominator is 0"));
        }
        if num / den > MAX_VARIANCE || (num / den == MAX_VARIANCE && !num.is_multiple_of(den)) {
            return Err(error("above 2^64"));
        }
        // In lowest terms: equal variances consume the generator alike and give equal draws.
        let g = num_integer::Integer::gcd(&num, &den);
        Ok(Self { num: BigUint::from(num / g), den: BigUint::from(den / g) })
    }

    /// σ² as an integer.
    ///
    /// # Errors
    /// [`VarianceError`] above [`MAX_VARIANCE`].
    pub fn integer(sigma2: u128) -> Result<Self, VarianceError> {
        Self::new(sigma2, 1)
    }

    fn is_zero(&self) -> bool {
        self.num.is_zero()
    }
}

/// A uniform integer in `[0, n)`, `n > 0`: whole bytes from `rng`, the top byte masked to the
/// bit length of `n − 1`, rejected until below `n` (fewer than 2 tries on average); `n = 1`
/// draws nothing.
fn uniform_below(n: &BigUint, rng: &mut (impl RngCore + CryptoRng)) -> BigUint {
    let bits = (n - 1u32).bits();
    if bits == 0 {
        return BigUint::zero();
    }
    let len = bits.div_ceil(8) as usize;
    let spare = (len as u64 * 8 - bits) as u32;
    let mut buf = vec![0u8; len];
    loop {
        rng.fill_bytes(&mut buf);
        buf[0] &= 0xff >> spare;
        let x = BigUint::from_bytes_be(&buf);
        if &x < n {
            return x;
        }
    }
}

/// Bernoulli(`num / den`), `den > 0` (certain at `num ≥ den`, drawing nothing; impossible at
/// `num = 0`).
fn bernoulli(num: &BigUint, den: &BigUint, rng: &mut (impl RngCore + CryptoRng)) -> bool {
    if num >= den {
        return true;
    }
    if num.is_zero() {
        return false;
    }
    &uniform_below(den, rng) < num
}

/// Bernoulli(exp(−γ)) for `γ = num / den ∈ [0, 1]` (CKS20, Algorithm 1, first part): draw
/// `A_k ~ Bernoulli(γ / k)` for k = 1, 2, … until the first failure; true iff that `k` is odd.
fn bernoulli_exp_at_most_1(
    num: &BigUint,
    den: &BigUint,
    rng: &mut (impl RngCore + CryptoRng),
) -> bool {
    let mut k = BigUint::one();
    loop {
        if bernoulli(num, &(den * &k), rng) {
            k += 1u32;
        } else {
            return k.bit(0);
        }
    }
}

/// Bernoulli(exp(−γ)) for `γ = num / den ≥ 0` (CKS20, Algorithm 1): `exp(−1)` trials while
/// `γ > 1`, then one for the rest.
fn bernoulli_exp(mut num: BigUint, den: &BigUint, rng: &mut (impl RngCore + CryptoRng)) -> bool {
    while &num > den {
        if !bernoulli_exp_at_most_1(den, den, rng) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_at_most_1(&num, den, rng)
}

/// Geometric with success probability `1 − exp(−1)`: the failures before the first success.
fn geometric_exp_1(rng: &mut (impl RngCore + CryptoRng)) -> BigUint {
    let one = BigUint::one();
    let mut k = BigUint::zero();
    while bernoulli_exp_at_most_1(&one, &one, rng) {
        k += 1u32;
    }
    k
}

/// Discrete Laplace with integer scale `t ≥ 1`, `P[x] ∝ exp(−|x| / t)` (CKS20, Algorithm 2):
/// the magnitude is `v·t + u` with `u` uniform in `[0, t)` accepted with probability
/// `exp(−u/t)` and `v` geometric, and the sign uniform, `−0` rejected.
fn discrete_laplace(t: &BigUint, rng: &mut (impl RngCore + CryptoRng)) -> BigInt {
    let half = (BigUint::one(), BigUint::from(2u32));
    loop {
        let negative = bernoulli(&half.0, &half.1, rng);
        let u = loop {
            let u = uniform_below(t, rng);
            if bernoulli_exp(u.clone(), t, rng) {
                break u;
            }
        };
        let magnitude = geometric_exp_1(rng) * t + u;
        if negative && magnitude.is_zero() {
            continue;
        }
        let sign = if negative { Sign::Minus } else { Sign::Plus };
        return BigInt::from_biguint(sign, magnitude);
    }
}

/// `⌊√(num/den)⌋`, by doubling then bisection on integers.
fn floor_sqrt(num: &BigUint, den: &BigUint) -> BigUint {
    let below = |b: &BigUint| b * b * den <= *num;
    let (mut lo, mut hi) = (BigUint::zero(), BigUint::one());
    while below(&hi) {
        hi <<= 1u32;
    }
    // lo² ≤ x < hi²
    while &lo + 1u32 < hi {
        let mid: BigUint = (&lo + &hi) >> 1u32;
        if below(&mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// One draw of the discrete Gaussian `N_Z(0, σ²)`: `P[x] = exp(−x²/(2σ²)) / Σ_y exp(−y²/(2σ²))`
/// for every integer `x` (CKS20, Algorithm 3). With `t = ⌊σ⌋ + 1`, a discrete-Laplace
/// candidate `y` of scale `t` is accepted with probability
/// `exp(−(|y| − σ²/t)² / (2σ²))`, computed exactly as
/// `exp(−(|y|·t·den − num)² / (2·num·den·t²))` for `σ² = num/den`. σ² = 0 gives 0.
///
/// A candidate outside `±(2^63 − 1)` (probability about `exp(−2^31)` at the largest allowed
/// σ²) is rejected, so that the result fits an `i64` and negates safely: the output is then
/// exactly `N_Z(0, σ²)` conditioned on that range, which differs from `N_Z(0, σ²)` by its mass
/// beyond `2^63`, below `exp(−2^60)`. The running time depends on the values drawn (CKS20
/// §5.3): this sampler is for noise whose value is hidden anyway, not for timing-sensitive
/// secrets.
pub fn sample_discrete_gaussian(sigma2: &Variance, rng: &mut (impl RngCore + CryptoRng)) -> i64 {
    if sigma2.is_zero() {
        return 0;
    }
    let (num, den) = (&sigma2.num, &sigma2.den);
    let t = floor_sqrt(num, den) + 1u32;
    let bias_den = BigUint::from(2u32) * num * den * &t * &t;
    let td = BigInt::from(&t * den);
    let num_signed = BigInt::from(num.clone());
    loop {
        let y = discrete_laplace(&t, rng);
        let Some(out) = y.to_i64().filter(|&v| v != i64::MIN) else { continue };
        let gap = BigInt::from(y.magnitude().clone()) * &td - &num_signed;
        let bias_num = gap.magnitude() * gap.magnitude();
        if bernoulli_exp(bias_num, &bias_den, rng) {
            return out;
        }
    }
}

/// `n` independent draws of `N_Z(0, σ²)` ([`sample_discrete_gaussian`]), in order.
pub fn sample_discrete_gaussians(
    sigma2: &Variance,
    n: usize,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<i64> {
    (0..n).map(|_| sample_discrete_gaussian(sigma2, rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::from_seed([seed; 32])
    }

    /// The exact probabilities of `N_Z(0, σ²)` on `[-m, m]` (the rest of the mass is below
    /// `1e-12` for the `m` used here), by floating point: a reference, not the sampler.
    fn pmf(sigma2: f64, m: i64) -> Vec<f64> {
        let w: Vec<f64> = (-m..=m).map(|x| (-(x * x) as f64 / (2.0 * sigma2)).exp()).collect();
        let z: f64 = w.iter().sum();
        w.iter().map(|v| v / z).collect()
    }

    #[test]
    fn draws_follow_the_discrete_gaussian_bin_by_bin() {
        // σ² = 12.5 (a rational) and σ² = 0.3 (below 1: t = 1), 200,000 draws each: every
        // bin within 5σ of its binomial expectation, and a chi-squared well inside its range.
        for (num, den, seed) in [(25u128, 2u128, 1u8), (3, 10, 2)] {
            let sigma2 = Variance::new(num, den).unwrap();
            let s2 = num as f64 / den as f64;
            let m = (8.0 * s2.sqrt()).ceil() as i64 + 2;
            let n = 200_000usize;
            let mut counts = vec![0u64; (2 * m + 1) as usize];
            let mut r = rng(seed);
            for _ in 0..n {
                let x = sample_discrete_gaussian(&sigma2, &mut r);
                assert!(x.abs() <= m, "σ² = {s2}: a draw of {x}");
                counts[(x + m) as usize] += 1;
            }
            let p = pmf(s2, m);
            let mut chi2 = 0.0;
            let mut bins = 0;
            for (c, p) in counts.iter().zip(&p) {
                let e = p * n as f64;
                let sd = (n as f64 * p * (1.0 - p)).sqrt();
                assert!((*c as f64 - e).abs() <= 5.0 * sd + 1.0, "σ² = {s2}: {c} against {e:.1}");
                if e >= 5.0 {
                    chi2 += (*c as f64 - e).powi(2) / e;
                    bins += 1;
                }
            }
            // Mean bins − 1, sd √(2(bins − 1)): 6 sd is far past any honest sampler.
            let dof = (bins - 1) as f64;
            assert!(
                chi2 < dof + 6.0 * (2.0 * dof).sqrt(),
                "σ² = {s2}: χ² = {chi2:.1} over {bins} bins"
            );
        }
    }

    #[test]
    fn large_variances_have_the_right_spread_and_no_bias() {
        // σ² = 2^40 (σ = 2^20): 20,000 draws; the discrete Gaussian's variance is σ² to
        // within e^{-2π²σ²}, so the sample variance is within 5 % and the mean within 5 σ/√n.
        let sigma2 = Variance::integer(1 << 40).unwrap();
        let draws = sample_discrete_gaussians(&sigma2, 20_000, &mut rng(3));
        let n = draws.len() as f64;
        let mean = draws.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = draws.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let sigma = (1u64 << 20) as f64;
        assert!(mean.abs() < 5.0 * sigma / n.sqrt(), "mean {mean}");
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < 0.05,
            "variance ratio {}",
            var / (sigma * sigma)
        );
    }

    #[test]
    fn the_same_generator_gives_the_same_draws_and_zero_variance_gives_zero() {
        let sigma2 = Variance::new(7, 3).unwrap();
        assert_eq!(
            sample_discrete_gaussians(&sigma2, 500, &mut rng(9)),
            sample_discrete_gaussians(&sigma2, 500, &mut rng(9))
        );
        assert_ne!(
            sample_discrete_gaussians(&sigma2, 500, &mut rng(9)),
            sample_discrete_gaussians(&sigma2, 500, &mut rng(10))
        );
        assert!(sample_discrete_gaussians(&Variance::integer(0).unwrap(), 100, &mut rng(1))
            .iter()
            .all(|&x| x == 0));
    }

    #[test]
    fn equal_variances_give_equal_draws() {
        let (a, b) = (Variance::new(25, 2).unwrap(), Variance::new(50, 4).unwrap());
        assert_eq!(a, b);
        assert_eq!(
            sample_discrete_gaussians(&a, 200, &mut rng(6)),
            sample_discrete_gaussians(&b, 200, &mut rng(6))
        );
    }

    #[test]
    fn variances_are_checked() {
        assert!(Variance::new(1, 0).is_err());
        assert!(Variance::integer(MAX_VARIANCE).is_ok());
        assert!(Variance::new(MAX_VARIANCE * 2 + 1, 2).is_err());
        assert!(Variance::integer(MAX_VARIANCE + 1).unwrap_err().to_string().contains("2^64"));
    }

    #[test]
    fn helpers_are_exact() {
        let b = |v: u64| BigUint::from(v);
        assert_eq!(floor_sqrt(&b(25), &b(2)), b(3)); // √12.5 = 3.53…
        assert_eq!(floor_sqrt(&b(16), &b(1)), b(4));
        assert_eq!(floor_sqrt(&b(3), &b(10)), b(0));
        assert_eq!(floor_sqrt(&(b(1) << 64u32), &b(1)), b(1 << 32));
        // Bernoulli(exp(−1)): 100,000 trials within 5σ of e^{-1}.
        let mut r = rng(4);
        let hits = (0..100_000).filter(|_| bernoulli_exp(b(3), &b(3), &mut r)).count() as f64;
        let p = (-1.0f64).exp();
        assert!((hits / 1e5 - p).abs() < 5.0 * (p * (1.0 - p) / 1e5).sqrt(), "{hits}");
        // Bernoulli(exp(−2.5)).
        let hits = (0..100_000).filter(|_| bernoulli_exp(b(5), &b(2), &mut r)).count() as f64;
        let p = (-2.5f64).exp();
        assert!((hits / 1e5 - p).abs() < 5.0 * (p * (1.0 - p) / 1e5).sqrt(), "{hits}");
        // Uniform below a non-power of two and a power of two: every value, none beyond; below
        // 1 always 0.
        for n in [7usize, 8] {
            let mut seen = vec![0u32; n];
            for _ in 0..1000 * n {
                seen[uniform_below(&b(n as u64), &mut r).to_usize().unwrap()] += 1;
            }
            assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        }
        assert!(uniform_below(&b(1), &mut r).is_zero());
        assert!(bernoulli(&b(5), &b(5), &mut r) && !bernoulli(&b(0), &b(5), &mut r));
    }
}
