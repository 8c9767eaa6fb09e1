//! Negacyclic products in `Z_{2^64}[X]/(X^N + 1)` where one operand is binary, through
//! tfhe-ntt's 3×32-bit-prime CRT plan (`native_binary64::Plan32`).
//!
//! A product of a `u64` polynomial with a binary one has integer coefficients below
//! `N·2^64 < 2^76`, well inside the CRT range `p0·p1·p2 ≈ 2^93`, so the reconstruction is
//! exact and reducing it mod 2^64 gives the ring product. Keys keep their transforms
//! ([`NttPoly`]) so an encryption costs one forward transform (of the binary `U`) and one
//! inverse transform per output polynomial.

use crate::error::Error;
use tfhe_ntt::native_binary64::Plan32;
use tfhe_ntt::prime32;
use zeroize::Zeroize;

// The three primes of `native_binary64::Plan32` (tfhe-ntt's `primes32::{P0, P1, P2}`, which
// the crate does not export). `NttPlan::try_new` checks that our per-prime plans agree with
// Plan32 on a product, so a change upstream cannot go unnoticed.
const P0: u32 = 0b0011_1111_0101_1010_0000_0000_0000_0001;
const P1: u32 = 0b0011_1111_0101_1101_0000_0000_0000_0001;
const P2: u32 = 0b0011_1111_0111_0110_0000_0000_0000_0001;

/// A polynomial in the NTT domain: its residues modulo the three primes, concatenated.
#[derive(Clone, PartialEq, Eq, Zeroize)]
pub(crate) struct NttPoly(Vec<u32>);

impl NttPoly {
    pub(crate) fn zeroed(n: usize) -> Self {
        Self(vec![0; 3 * n])
    }

    fn parts_mut(&mut self) -> (&mut [u32], &mut [u32], &mut [u32]) {
        let n = self.0.len() / 3;
        let (a, rest) = self.0.split_at_mut(n);
        let (b, c) = rest.split_at_mut(n);
        (a, b, c)
    }

    fn parts(&self) -> (&[u32], &[u32], &[u32]) {
        let n = self.0.len() / 3;
        let (a, rest) = self.0.split_at(n);
        let (b, c) = rest.split_at(n);
        (a, b, c)
    }
}

/// Transforms for one ring degree.
pub(crate) struct NttPlan {
    crt: Plan32,
    primes: [prime32::Plan; 3],
    n: usize,
}

impl std::fmt::Debug for NttPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NttPlan").field("n", &self.n).finish()
    }
}

impl NttPlan {
    pub(crate) fn try_new(n: usize) -> Result<Self, Error> {
        let missing = || Error::Internal("tfhe-ntt has no plan for this ring degree");
        let plan = Self {
            crt: Plan32::try_new(n).ok_or_else(missing)?,
            primes: [
                prime32::Plan::try_new(n, P0).ok_or_else(missing)?,
                prime32::Plan::try_new(n, P1).ok_or_else(missing)?,
                prime32::Plan::try_new(n, P2).ok_or_else(missing)?,
            ],
            n,
        };
        plan.self_check()?;
        Ok(plan)
    }

    /// Compares our precomputed-operand path with tfhe-ntt's own `negacyclic_polymul`.
    fn self_check(&self) -> Result<(), Error> {
        let n = self.n;
        let lhs: Vec<u64> =
            (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 40)).collect();
        let rhs: Vec<u64> = (0..n as u64).map(|i| (i * 7 + 3) % 5 % 2).collect();
        let mut expected = vec![0u64; n];
        self.crt.negacyclic_polymul(&mut expected, &lhs, &rhs);
        let mut got = vec![0u64; n];
        let mut scratch = NttPoly::zeroed(n);
        self.mul(&self.forward(&lhs), &self.forward_binary(&rhs), &mut scratch, &mut got);
        if got == expected {
            Ok(())
        } else {
            Err(Error::Internal("tfhe-ntt prime constants changed"))
        }
    }

    /// Transform of an arbitrary `u64` polynomial.
    pub(crate) fn forward(&self, poly: &[u64]) -> NttPoly {
        let mut out = NttPoly::zeroed(self.n);
        let (a, b, c) = out.parts_mut();
        self.crt.fwd(poly, a, b, c);
        out
    }

    /// Transform of a binary polynomial (coefficients 0 or 1), into `out`.
    pub(crate) fn forward_binary_into(&self, poly: &[u64], out: &mut NttPoly) {
        let (a, b, c) = out.parts_mut();
        self.crt.fwd_binary(poly, a, b, c);
    }

    /// Transform of a binary polynomial.
    pub(crate) fn forward_binary(&self, poly: &[u64]) -> NttPoly {
        let mut out = NttPoly::zeroed(self.n);
        self.forward_binary_into(poly, &mut out);
        out
    }

    /// `out = lhs · rhs` (negacyclic, mod 2^64), where one of the two is the transform of a
    /// binary polynomial. `scratch` is overwritten.
    pub(crate) fn mul(&self, lhs: &NttPoly, rhs: &NttPoly, scratch: &mut NttPoly, out: &mut [u64]) {
        scratch.0.copy_from_slice(&lhs.0);
        let (s0, s1, s2) = scratch.parts_mut();
        let (r0, r1, r2) = rhs.parts();
        self.primes[0].mul_assign_normalize(s0, r0);
        self.primes[1].mul_assign_normalize(s1, r1);
        self.primes[2].mul_assign_normalize(s2, r2);
        self.crt.inv(out, s0, s1, s2);
    }
}

/// Schoolbook negacyclic product, the reference for tests.
#[cfg(test)]
pub(crate) fn naive_negacyclic(lhs: &[u64], rhs: &[u64]) -> Vec<u64> {
    let n = lhs.len();
    let mut out = vec![0u64; n];
    for (i, l) in lhs.iter().enumerate() {
        for (j, r) in rhs.iter().enumerate() {
            let p = l.wrapping_mul(*r);
            let k = i + j;
            if k < n {
                out[k] = out[k].wrapping_add(p);
            } else {
                out[k - n] = out[k - n].wrapping_sub(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn product_matches_schoolbook(
            lhs in proptest::collection::vec(any::<u64>(), 64),
            rhs in proptest::collection::vec(0u64..2, 64),
        ) {
            let plan = NttPlan::try_new(64).unwrap();
            let mut out = vec![0; 64];
            let mut scratch = NttPoly::zeroed(64);
            plan.mul(&plan.forward(&lhs), &plan.forward_binary(&rhs), &mut scratch, &mut out);
            prop_assert_eq!(out, naive_negacyclic(&lhs, &rhs));
        }
    }

    #[test]
    fn extreme_operands_are_exact() {
        // All-ones binary times all-max words: the largest possible CRT magnitude.
        let n = 2048;
        let plan = NttPlan::try_new(n).unwrap();
        let lhs = vec![u64::MAX; n];
        let rhs = vec![1u64; n];
        let mut out = vec![0; n];
        let mut scratch = NttPoly::zeroed(n);
        plan.mul(&plan.forward(&lhs), &plan.forward_binary(&rhs), &mut scratch, &mut out);
        assert_eq!(out, naive_negacyclic(&lhs, &rhs));
    }
}
