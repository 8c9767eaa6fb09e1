//! Keys: a client's fresh round key `k_i` and the key sum `K = Σ_{i∈S} k_i` that the key
//! managers release for a contributor set `S`.
//!
//! A client key is `N` coefficients drawn from the discrete Gaussian `D_{Z,σ_k}` (σ_k =
//! 2^17 in the default set) — not binary: the released sum reveals the sum of the honest
//! keys, and binary keys summing to 0 or 2 pin both keys there (DESIGN §3). Both are zeroized
//! on drop and never printed.

use crate::error::Error;
use crate::params::ParameterSet;
use crate::random::{os_seed, AesStream};
use crate::sharing::{share_coefficients, CommitteeShape, KeyShare};
use std::fmt;
use zeroize::Zeroize;

/// A client's key for one round: `k_i`, discrete Gaussian. Used for one encryption only
/// (DESIGN §3, invariant 1) and zeroized once its shares are deposited — drop it then.
///
/// ```
/// use cryptflow_he::{ClientKey, ParameterSet};
/// let key = ClientKey::generate(&ParameterSet::default_128()).unwrap();
/// assert!(format!("{key:?}").contains("redacted"));
/// ```
pub struct ClientKey {
    params: ParameterSet,
    coefficients: Vec<i64>,
}

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.coefficients.zeroize();
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("params", &self.params.name())
            .field("coefficients", &"<redacted>")
            .finish()
    }
}

/// `σ_k²` as the integer the exact sampler needs.
fn key_variance(params: &ParameterSet) -> Result<u128, Error> {
    let v = params.key_std() * params.key_std();
    if v.fract() != 0.0 || v < 1.0 || v > 2f64.powi(100) {
        return Err(Error::Internal("σ_k² must be an integer"));
    }
    Ok(v as u128)
}

impl ClientKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate(params: &ParameterSet) -> Result<Self, Error> {
        Self::generate_from(params, &mut AesStream::new(os_seed()?, 0, u64::MAX as u128))
    }

    /// A key from a fixed seed, for tests and reproducible examples only. **Insecure.**
    #[cfg(any(test, feature = "insecure"))]
    pub fn from_seed_insecure(params: &ParameterSet, seed: u128) -> Result<Self, Error> {
        Self::generate_from(params, &mut AesStream::new(seed, 0, u64::MAX as u128))
    }

    fn generate_from(params: &ParameterSet, rng: &mut AesStream) -> Result<Self, Error> {
        let sigma2 = key_variance(params)?;
        let coefficients = (0..params.ring_degree().get())
            .map(|_| rng.discrete_gaussian(sigma2))
            .collect::<Result<_, _>>()?;
        Ok(Self { params: *params, coefficients })
    }

    /// A key from given coefficients (tests: e.g. a key made by TFHE-rs).
    #[cfg(any(test, feature = "insecure"))]
    pub fn from_coefficients_insecure(params: &ParameterSet, coefficients: Vec<i64>) -> Self {
        Self { params: *params, coefficients }
    }

    /// The parameter set.
    pub fn params(&self) -> &ParameterSet {
        &self.params
    }

    /// Shamir shares for every node of the committee (index `x` at position `x − 1`).
    pub fn share(&self, committee: CommitteeShape) -> Result<Vec<KeyShare>, Error> {
        share_coefficients(&self.coefficients, committee)
    }

    pub(crate) fn coefficients(&self) -> &[i64] {
        &self.coefficients
    }
}

/// The key sum `K = Σ_{i∈S} k_i` combined from the releases of `t` key managers. It decrypts
/// the aggregate of `S`, and only that (each upload is masked by its own key). Zeroized on
/// drop; never printed.
pub struct AggregateKey {
    coefficients: Vec<i64>,
}

impl Drop for AggregateKey {
    fn drop(&mut self) {
        self.coefficients.zeroize();
    }
}

impl fmt::Debug for AggregateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AggregateKey(<redacted>)")
    }
}

impl AggregateKey {
    pub(crate) fn from_coefficients(coefficients: Vec<i64>) -> Self {
        Self { coefficients }
    }

    /// The key sum of given client keys (for tests and single-process use: in a deployment it
    /// is only ever combined from releases).
    pub fn sum_of<'a>(keys: impl IntoIterator<Item = &'a ClientKey>) -> Self {
        let mut coefficients: Vec<i64> = Vec::new();
        for k in keys {
            if coefficients.is_empty() {
                coefficients = vec![0; k.coefficients.len()];
            }
            for (c, x) in coefficients.iter_mut().zip(&k.coefficients) {
                *c += x;
            }
        }
        Self { coefficients }
    }

    pub(crate) fn coefficients(&self) -> &[i64] {
        &self.coefficients
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are discrete Gaussian: mean 0, variance σ_k², Gaussian shape (kurtosis 3, the
    /// fraction within one σ 68.3 %) — not binary, not uniform (kurtosis 1.8).
    #[test]
    fn keys_are_discrete_gaussian() {
        let params = ParameterSet::default_128();
        let sigma = params.key_std();
        let mut xs: Vec<f64> = Vec::new();
        for seed in 0..40u128 {
            let k = ClientKey::from_seed_insecure(&params, seed).unwrap();
            xs.extend(k.coefficients().iter().map(|&c| c as f64));
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurt = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
        let within = xs.iter().filter(|x| x.abs() <= sigma).count() as f64 / n;
        assert!(mean.abs() < 5.0 * sigma / n.sqrt(), "mean {mean}");
        assert!((var / (sigma * sigma) - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "var {var:e}");
        assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
        assert!((within - 0.6827).abs() < 0.01, "within one σ: {within}");
        // A chi-square test on 16 equiprobable bins of the Gaussian (15 degrees of freedom,
        // 99.9th percentile 37.7).
        let edges = [
            -1.534, -1.150, -0.887, -0.674, -0.489, -0.319, -0.157, 0.0, 0.157, 0.319, 0.489,
            0.674, 0.887, 1.150, 1.534,
        ];
        let mut counts = [0f64; 16];
        for x in &xs {
            let b = edges.iter().filter(|&&e| x / sigma > e).count();
            counts[b] += 1.0;
        }
        let expected = n / 16.0;
        let chi2: f64 = counts.iter().map(|c| (c - expected).powi(2) / expected).sum();
        assert!(chi2 < 37.7, "chi-square {chi2}: {counts:?}");
    }

    #[test]
    fn fresh_keys_differ_and_are_redacted() {
        let p = ParameterSet::toy_insecure();
        let a = ClientKey::generate(&p).unwrap();
        let b = ClientKey::generate(&p).unwrap();
        assert_ne!(a.coefficients(), b.coefficients());
        assert!(!format!("{a:?}").contains(&a.coefficients()[0].to_string()));
    }
}
