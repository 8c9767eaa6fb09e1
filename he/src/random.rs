//! Randomness: TFHE-rs's CSPRNG (AES-CTR, hardware AES where available) seeded from the
//! operating system through tfhe's `UnixSeeder`.
//!
//! Parallel encryption forks one seeded generator into independent, non-overlapping children
//! (disjoint AES-CTR ranges), one per block, so the output does not depend on scheduling.

use crate::error::Error;
use crate::params::NoiseBoundLog;
use tfhe::core_crypto::commons::math::random::{
    DefaultRandomGenerator, RandomGenerator, Seeder, TUniform, Uniform,
};
use tfhe::core_crypto::seeders::UnixSeeder;

/// A cryptographically secure generator.
pub(crate) struct Csprng(RandomGenerator<DefaultRandomGenerator>);

impl Csprng {
    /// Seeded from the OS (`/dev/random` through tfhe's `UnixSeeder`).
    pub(crate) fn from_os() -> Result<Self, Error> {
        if !UnixSeeder::is_available() {
            return Err(Error::Internal("no OS entropy source available"));
        }
        let mut seeder = UnixSeeder::new(0);
        Ok(Self(RandomGenerator::new(seeder.seed())))
    }

    /// Deterministic generator for tests and reproducible examples. **Insecure.**
    #[cfg(any(test, feature = "insecure"))]
    pub(crate) fn from_seed(seed: u128) -> Self {
        Self(RandomGenerator::new(tfhe::core_crypto::commons::math::random::Seed(seed)))
    }

    /// Splits into `children` independent generators, each able to produce `bytes_each` bytes.
    pub(crate) fn fork(&mut self, children: usize, bytes_each: usize) -> Result<Vec<Self>, Error> {
        self.0
            .try_fork(children, bytes_each)
            .map(|it| it.map(Self).collect())
            .map_err(|_| Error::Internal("CSPRNG fork failed"))
    }

    /// Fills with independent uniform bits (each word 0 or 1).
    pub(crate) fn fill_binary(&mut self, out: &mut [u64]) {
        self.0.fill_slice_with_random_uniform_binary_bits(out);
    }

    /// Fills with uniform words mod 2^64.
    pub(crate) fn fill_uniform(&mut self, out: &mut [u64]) {
        self.0.fill_slice_with_random_from_distribution(out, Uniform);
    }

    /// Fills with TUniform(b) samples in two's complement.
    pub(crate) fn fill_tuniform(&mut self, out: &mut [u64], bound: NoiseBoundLog) {
        self.0.fill_slice_with_random_from_distribution(out, TUniform::<u64>::new(bound.get()));
    }

    /// Bytes consumed by [`Self::fill_binary`] for `n` words.
    pub(crate) fn binary_bytes(n: usize) -> usize {
        n.div_ceil(8)
    }

    /// Bytes consumed by [`Self::fill_tuniform`] for `n` words.
    pub(crate) fn tuniform_bytes(n: usize, bound: NoiseBoundLog) -> usize {
        n * (bound.get() as usize + 2).div_ceil(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuniform_samples_stay_in_bounds_and_are_centered() {
        let mut g = Csprng::from_seed(7);
        let mut v = vec![0u64; 1 << 16];
        let b = NoiseBoundLog::try_from_u32(17);
        g.fill_tuniform(&mut v, b);
        let mut sum = 0f64;
        for &x in &v {
            let s = x as i64;
            assert!(s.abs() <= 1 << 17);
            sum += s as f64;
        }
        let mean = sum / v.len() as f64;
        // std of the mean = sqrt(var / n) ≈ 2^17/sqrt(3)/2^8 ≈ 296
        assert!(mean.abs() < 5.0 * 296.0, "mean {mean}");
    }

    #[test]
    fn forked_children_differ() {
        let mut g = Csprng::from_seed(1);
        let mut kids = g.fork(2, 64).unwrap();
        let mut a = [0u64; 4];
        let mut b = [0u64; 4];
        kids[0].fill_tuniform(&mut a, NoiseBoundLog::try_from_u32(17));
        kids[1].fill_tuniform(&mut b, NoiseBoundLog::try_from_u32(17));
        assert_ne!(a, b);
    }
}
