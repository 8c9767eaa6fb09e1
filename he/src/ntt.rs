//! Negacyclic products in `Z_{2^64}[X]/(X^N + 1)` of a uniform mask `A` with a key, through
//! tfhe-ntt's general 64-bit plan (`native64::Plan32`: five 32-bit primes, CRT range
//! ≈ 2^150).
//!
//! The exact integer product of two `u64` polynomials has coefficients below `N·2^128 ≤ 2^143`
//! for `N ≤ 2^15`, inside the CRT range, so the reconstruction is exact and reducing it mod
//! 2^64 gives the ring product; a signed key is used in two's complement, which is the same
//! residue mod 2^64. (Version 1 multiplied by binary polynomials and got away with three
//! primes; a Gaussian key needs the general plan — DESIGN §3's "~5/3".) A key keeps its
//! transform ([`NttPoly`]), so a block costs one forward transform of `A_j`, five pointwise
//! products and one inverse transform.

use crate::error::Error;
use tfhe_ntt::native64::Plan32;
use zeroize::Zeroize;

/// A polynomial in the NTT domain: its residues modulo the five primes, concatenated.
#[derive(Clone, PartialEq, Eq, Zeroize)]
pub(crate) struct NttPoly(Vec<u32>);

impl NttPoly {
    pub(crate) fn zeroed(n: usize) -> Self {
        Self(vec![0; 5 * n])
    }

    fn parts_mut(&mut self) -> [&mut [u32]; 5] {
        let n = self.0.len() / 5;
        let (a, rest) = self.0.split_at_mut(n);
        let (b, rest) = rest.split_at_mut(n);
        let (c, rest) = rest.split_at_mut(n);
        let (d, e) = rest.split_at_mut(n);
        [a, b, c, d, e]
    }

    fn parts(&self) -> [&[u32]; 5] {
        let n = self.0.len() / 5;
        let (a, rest) = self.0.split_at(n);
        let (b, rest) = rest.split_at(n);
        let (c, rest) = rest.split_at(n);
        let (d, e) = rest.split_at(n);
        [a, b, c, d, e]
    }
}

/// Transforms for one ring degree.
pub(crate) struct NttPlan {
    plan: Plan32,
    n: usize,
}

impl std::fmt::Debug for NttPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NttPlan").field("n", &self.n).finish()
    }
}

impl NttPlan {
    pub(crate) fn try_new(n: usize) -> Result<Self, Error> {
        let plan = Plan32::try_new(n)
            .ok_or(Error::Internal("tfhe-ntt has no plan for this ring degree"))?;
        Ok(Self { plan, n })
    }

    /// Transform of a `u64` polynomial (a signed one in two's complement) into `out`.
    pub(crate) fn forward_into(&self, poly: &[u64], out: &mut NttPoly) {
        let [a, b, c, d, e] = out.parts_mut();
        self.plan.fwd(poly, a, b, c, d, e);
    }

    /// Transform of a `u64` polynomial.
    pub(crate) fn forward(&self, poly: &[u64]) -> NttPoly {
        let mut out = NttPoly::zeroed(self.n);
        self.forward_into(poly, &mut out);
        out
    }

    /// `out = lhs · rhs` (negacyclic, mod 2^64), where `lhs` is overwritten.
    pub(crate) fn mul_in_place(&self, lhs: &mut NttPoly, rhs: &NttPoly, out: &mut [u64]) {
        let [l0, l1, l2, l3, l4] = lhs.parts_mut();
        let [r0, r1, r2, r3, r4] = rhs.parts();
        self.plan.ntt_0().mul_assign_normalize(l0, r0);
        self.plan.ntt_1().mul_assign_normalize(l1, r1);
        self.plan.ntt_2().mul_assign_normalize(l2, r2);
        self.plan.ntt_3().mul_assign_normalize(l3, r3);
        self.plan.ntt_4().mul_assign_normalize(l4, r4);
        self.plan.inv(out, l0, l1, l2, l3, l4);
    }

    /// `out = poly · key` where `key` is a precomputed transform; `scratch` is overwritten.
    pub(crate) fn mul(&self, poly: &[u64], key: &NttPoly, scratch: &mut NttPoly, out: &mut [u64]) {
        self.forward_into(poly, scratch);
        self.mul_in_place(scratch, key, out);
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
            rhs in proptest::collection::vec(-(1i64 << 40)..(1i64 << 40), 64),
        ) {
            let plan = NttPlan::try_new(64).unwrap();
            let rhs: Vec<u64> = rhs.iter().map(|&x| x as u64).collect();
            let mut out = vec![0; 64];
            let mut scratch = NttPoly::zeroed(64);
            plan.mul(&lhs, &plan.forward(&rhs), &mut scratch, &mut out);
            prop_assert_eq!(out, naive_negacyclic(&lhs, &rhs));
        }
    }

    #[test]
    fn extreme_operands_are_exact() {
        let n = 2048;
        let plan = NttPlan::try_new(n).unwrap();
        for (l, r) in [(u64::MAX, u64::MAX), (u64::MAX, 1), (1u64 << 63, (-(1i64 << 22)) as u64)] {
            let lhs = vec![l; n];
            let rhs = vec![r; n];
            let mut out = vec![0; n];
            let mut scratch = NttPoly::zeroed(n);
            plan.mul(&lhs, &plan.forward(&rhs), &mut scratch, &mut out);
            assert_eq!(out, naive_negacyclic(&lhs, &rhs));
        }
    }
}
