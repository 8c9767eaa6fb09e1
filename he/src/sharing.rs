//! Shamir sharing of client keys over `F_p`, `p = 2^61 − 1`, threshold `t` of `n`
//! (DESIGN §3, "Key sharing"), and the combination of key-manager releases into the key sum.
//!
//! A client key `k` (signed integers, |k_j| < 2^24) maps to `F_p` by `rem_euclid` — **not**
//! `as u64 % p`, which is wrong for negative coefficients because `2^64 ≡ 8 (mod p)`. Each
//! coefficient is shared with its own random polynomial `f(x) = k_j + a_1·x + … +
//! a_{t−1}·x^{t−1}`, and node `x ∈ 1..=n` receives `f(x)`. A node's release for a contributor
//! set `S` is the unweighted sum of its shares `Σ_{i∈S} share_i` — never weighted (DESIGN
//! §3: per-client weights in a released sum expose individual keys). Any `t` releases of the
//! same `S` interpolate at 0 to `K = Σ_{i∈S} k_i` (Lagrange coefficients `λ_j = Π_{m≠j}
//! x_m/(x_m − x_j)`), lifted from `(−p/2, p/2)` to the integers.
//!
//! `n = t = 1` is the single-KMS case: the one share is the key itself.

use crate::error::{Error, InputError, InvalidParameter, Mismatch};
use crate::random::{os_seed, AesStream};
use std::fmt;
use zeroize::Zeroize;

/// The prime `p = 2^61 − 1` of the share field.
pub const SHARE_PRIME: u64 = (1 << 61) - 1;

/// Largest committee.
pub const MAX_NODES: u8 = 16;

/// `a·b mod p` for `a, b < p`.
#[inline]
fn mul(a: u64, b: u64) -> u64 {
    let x = a as u128 * b as u128;
    reduce((x & SHARE_PRIME as u128) as u64 + (x >> 61) as u64)
}

/// `x mod p` for `x < 2^64` when `x < 2p + 2^3` (the forms produced here).
#[inline]
fn reduce(mut x: u64) -> u64 {
    while x >= SHARE_PRIME {
        x -= SHARE_PRIME;
    }
    x
}

#[inline]
fn add(a: u64, b: u64) -> u64 {
    reduce(a + b)
}

#[inline]
fn sub(a: u64, b: u64) -> u64 {
    reduce(a + SHARE_PRIME - b)
}

fn pow(mut b: u64, mut e: u64) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, b);
        }
        b = mul(b, b);
        e >>= 1;
    }
    r
}

fn inv(a: u64) -> u64 {
    pow(a, SHARE_PRIME - 2)
}

/// A signed integer into `F_p` (by `rem_euclid`).
///
/// ```
/// use cryptflow_he::sharing::{to_field, from_field, SHARE_PRIME};
/// assert_eq!(to_field(-1), SHARE_PRIME - 1);
/// // The wrong map, `as u64 % p`, gives 7 for −1: 2^64 ≡ 8 (mod p).
/// assert_eq!((-1i64 as u64) % SHARE_PRIME, 7);
/// assert_eq!(from_field(to_field(-123_456)), -123_456);
/// ```
pub fn to_field(v: i64) -> u64 {
    v.rem_euclid(SHARE_PRIME as i64) as u64
}

/// An element of `F_p` lifted to the integer in `(−p/2, p/2)`.
pub fn from_field(v: u64) -> i64 {
    if v > SHARE_PRIME / 2 {
        v as i64 - SHARE_PRIME as i64
    } else {
        v as i64
    }
}

/// A node's share index `x` (1 ..= [`MAX_NODES`]).
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct ShareIndex(u8);

impl ShareIndex {
    /// Validates `1 <= x <= MAX_NODES`.
    pub fn try_new(x: u8) -> Result<Self, Error> {
        if (1..=MAX_NODES).contains(&x) {
            Ok(Self(x))
        } else {
            Err(InvalidParameter::ShareIndex { value: x, max: MAX_NODES }.into())
        }
    }
    /// `x`.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for ShareIndex {
    type Error = Error;
    fn try_from(x: u8) -> Result<Self, Error> {
        Self::try_new(x)
    }
}

impl From<ShareIndex> for u8 {
    fn from(x: ShareIndex) -> u8 {
        x.0
    }
}

impl fmt::Display for ShareIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shape of a key-manager committee: `n` nodes (indices `1..=n`), threshold `t` with
/// `n/2 < t ≤ n` (DESIGN §4: `t ≤ n/2` is refused).
///
/// Its two faces: **availability** needs `t` nodes up; **privacy** holds while fewer than
/// `2t − n` nodes collude with the aggregator, because a lying aggregator can ask honest nodes
/// for releases of different contributor sets (`S` and `S` minus a victim) and corrupt nodes
/// release for any set.
///
/// So `2t − n − 1` colluding nodes are tolerated ([`CommitteeShape::tolerated_colluding`]):
/// none for `(3, 2)` or `(1, 1)`, one for `(4, 3)`. Against key managers colluding with a
/// *verifier* — a reader holding every member's upload — the number is `t − 1`
/// ([`CommitteeShape::tolerated_colluding_with_verifier`]): `t` nodes' shares of one member's
/// key open that member's upload.
///
/// ```
/// use cryptflow_he::sharing::CommitteeShape;
/// let c = CommitteeShape::try_new(5, 4).unwrap();
/// assert_eq!((c.privacy_threshold(), c.tolerated_down()), (3, 1));
/// assert_eq!((c.tolerated_colluding(), c.tolerated_colluding_with_verifier()), (2, 3));
/// assert_eq!(CommitteeShape::try_new(3, 2).unwrap().tolerated_colluding(), 0);
/// assert_eq!(CommitteeShape::try_new(4, 3).unwrap().tolerated_colluding(), 1);
/// assert!(CommitteeShape::try_new(4, 2).is_err()); // t ≤ n/2
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "(u8, u8)", into = "(u8, u8)")]
pub struct CommitteeShape {
    nodes: u8,
    threshold: u8,
}

impl CommitteeShape {
    /// The single-KMS case, `n = t = 1`.
    pub const SINGLE: Self = Self { nodes: 1, threshold: 1 };

    /// Validates `1 ≤ n ≤ 16` and `n/2 < t ≤ n`.
    pub fn try_new(nodes: u8, threshold: u8) -> Result<Self, Error> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(InvalidParameter::Committee {
                reason: format!("n = {nodes} nodes is not in [1, {MAX_NODES}]"),
            }
            .into());
        }
        if threshold > nodes || 2 * threshold as u16 <= nodes as u16 {
            return Err(InvalidParameter::Committee {
                reason: format!("threshold t = {threshold} must satisfy n/2 < t ≤ n = {nodes}"),
            }
            .into());
        }
        Ok(Self { nodes, threshold })
    }
    /// `n`.
    pub fn nodes(&self) -> u8 {
        self.nodes
    }
    /// `t`: releases needed to combine the key sum.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }
    /// `2t − n`: privacy holds while fewer than this many nodes collude with the aggregator.
    pub fn privacy_threshold(&self) -> u8 {
        2 * self.threshold - self.nodes
    }
    /// `2t − n − 1`: colluding nodes tolerated (privacy holds against the aggregator with this
    /// many nodes on its side). `0` for `(1, 1)`, `(3, 2)`, `(5, 3)`.
    pub fn tolerated_colluding(&self) -> u8 {
        self.privacy_threshold() - 1
    }
    /// `t − 1`: nodes that may collude with a verifier (a reader holding the members' uploads,
    /// see `docs/security.md`) without reading an update.
    pub fn tolerated_colluding_with_verifier(&self) -> u8 {
        self.threshold - 1
    }
    /// `n − t`: nodes that may be down while a round still completes.
    pub fn tolerated_down(&self) -> u8 {
        self.nodes - self.threshold
    }
    /// The share indices `1..=n`.
    pub fn indices(&self) -> impl Iterator<Item = ShareIndex> {
        (1..=self.nodes).map(ShareIndex)
    }
}

impl TryFrom<(u8, u8)> for CommitteeShape {
    type Error = Error;
    fn try_from((n, t): (u8, u8)) -> Result<Self, Error> {
        Self::try_new(n, t)
    }
}

impl From<CommitteeShape> for (u8, u8) {
    fn from(c: CommitteeShape) -> (u8, u8) {
        (c.nodes, c.threshold)
    }
}

/// One node's share of one client key: `N` elements of `F_p`. Zeroized on drop; `Debug`
/// shows only the index.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyShare {
    pub(crate) index: ShareIndex,
    pub(crate) values: Vec<u64>,
}

/// A node's release for a contributor set: the unweighted sum of the shares it holds for the
/// set's members. Zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Release {
    pub(crate) index: ShareIndex,
    pub(crate) values: Vec<u64>,
}

macro_rules! field_vector {
    ($t:ident, $what:literal) => {
        impl $t {
            /// Builds one from its index and field elements (each `< p`).
            pub fn try_new(index: ShareIndex, values: Vec<u64>) -> Result<Self, Error> {
                if let Some(pos) = values.iter().position(|&v| v >= SHARE_PRIME) {
                    return Err(InputError::NotInField { index: pos as u64 }.into());
                }
                Ok(Self { index, values })
            }
            /// The node's share index.
            pub fn index(&self) -> ShareIndex {
                self.index
            }
            /// Number of coefficients (`N`).
            pub fn len(&self) -> usize {
                self.values.len()
            }
            /// Whether it has no coefficients.
            pub fn is_empty(&self) -> bool {
                self.values.is_empty()
            }
            /// The field elements.
            pub fn values(&self) -> &[u64] {
                &self.values
            }
        }
        impl Drop for $t {
            fn drop(&mut self) {
                self.values.zeroize();
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("index", &self.index.0)
                    .field("values", &concat!("<", $what, ">"))
                    .finish()
            }
        }
    };
}

field_vector!(KeyShare, "share redacted");
field_vector!(Release, "release redacted");

impl Release {
    /// A node's release: `Σ` of `shares` (all with this node's index and one length).
    ///
    /// ```
    /// use cryptflow_he::sharing::{CommitteeShape, Release};
    /// use cryptflow_he::{ClientKey, ParameterSet};
    /// let shape = CommitteeShape::try_new(3, 2).unwrap();
    /// let keys: Vec<ClientKey> =
    ///     (0..3).map(|_| ClientKey::generate(&ParameterSet::default_128()).unwrap()).collect();
    /// let shares: Vec<_> = keys.iter().map(|k| k.share(shape).unwrap()).collect();
    /// // Node 2 sums what it holds for the contributor set {0, 2}.
    /// let release = Release::sum(shares[0][1].index(), [&shares[0][1], &shares[2][1]]).unwrap();
    /// assert_eq!(release.index().get(), 2);
    /// ```
    pub fn sum<'a>(
        index: ShareIndex,
        shares: impl IntoIterator<Item = &'a KeyShare>,
    ) -> Result<Self, Error> {
        let mut values: Vec<u64> = Vec::new();
        for s in shares {
            if s.index != index {
                return Err(Mismatch::ShareIndex { left: index.0, right: s.index.0 }.into());
            }
            if values.is_empty() {
                values = vec![0; s.values.len()];
            }
            if s.values.len() != values.len() {
                return Err(Mismatch::Length { left: values.len(), right: s.values.len() }.into());
            }
            for (v, x) in values.iter_mut().zip(&s.values) {
                *v = add(*v, *x);
            }
        }
        if values.is_empty() {
            return Err(InputError::Empty.into());
        }
        Ok(Self { index, values })
    }
}

/// Shares `coefficients` (a key, signed) among the committee's nodes.
pub(crate) fn share_coefficients(
    coefficients: &[i64],
    shape: CommitteeShape,
) -> Result<Vec<KeyShare>, Error> {
    let t = shape.threshold as usize;
    let n = shape.nodes as usize;
    // Random polynomial coefficients a_1..a_{t−1} per key coefficient, uniform in F_p.
    let mut rng = AesStream::new(os_seed()?, 0, u64::MAX as u128);
    let mut shares: Vec<KeyShare> = shape
        .indices()
        .map(|index| KeyShare { index, values: vec![0; coefficients.len()] })
        .collect();
    let mut poly = vec![0u64; t];
    for (j, &k) in coefficients.iter().enumerate() {
        poly[0] = to_field(k);
        for a in poly.iter_mut().skip(1) {
            *a = rng.uniform_below(SHARE_PRIME as u128)? as u64;
        }
        for (i, share) in shares.iter_mut().enumerate().take(n) {
            // Horner at x = i + 1.
            let x = (i + 1) as u64;
            let mut acc = 0u64;
            for &a in poly.iter().rev() {
                acc = add(mul(acc, x), a);
            }
            share.values[j] = acc;
        }
    }
    poly.zeroize();
    Ok(shares)
}

/// Lagrange coefficients at 0 for the indices `xs`.
fn lagrange_at_zero(xs: &[u64]) -> Vec<u64> {
    xs.iter()
        .enumerate()
        .map(|(j, &xj)| {
            let mut num = 1u64;
            let mut den = 1u64;
            for (m, &xm) in xs.iter().enumerate() {
                if m != j {
                    num = mul(num, xm);
                    den = mul(den, sub(xm, xj));
                }
            }
            mul(num, inv(den))
        })
        .collect()
}

/// Lagrange basis of the points `xs`, evaluated at `at`.
fn lagrange_at(xs: &[u64], at: u64) -> Vec<u64> {
    xs.iter()
        .enumerate()
        .map(|(j, &xj)| {
            let mut num = 1u64;
            let mut den = 1u64;
            for (m, &xm) in xs.iter().enumerate() {
                if m != j {
                    num = mul(num, sub(at, xm));
                    den = mul(den, sub(xj, xm));
                }
            }
            mul(num, inv(den))
        })
        .collect()
}

/// Whether `releases` (at least `t`, distinct indices, one length) lie on one polynomial of
/// degree `t − 1`: interpolate through the first `t`, evaluate at the others.
pub fn consistent(releases: &[&Release], threshold: u8) -> bool {
    let t = threshold as usize;
    if releases.len() <= t {
        return true;
    }
    let xs: Vec<u64> = releases[..t].iter().map(|r| r.index.0 as u64).collect();
    releases[t..].iter().all(|extra| {
        let basis = lagrange_at(&xs, extra.index.0 as u64);
        (0..extra.values.len()).all(|c| {
            let mut y = 0u64;
            for (b, r) in basis.iter().zip(&releases[..t]) {
                y = add(y, mul(*b, r.values[c]));
            }
            y == extra.values[c]
        })
    })
}

/// Combines exactly `t` releases (distinct indices, one length) into the key sum.
pub(crate) fn combine(releases: &[&Release]) -> Result<crate::keys::AggregateKey, Error> {
    let Some(first) = releases.first() else { return Err(InputError::Empty.into()) };
    let len = first.values.len();
    let mut seen = [false; MAX_NODES as usize + 1];
    for r in releases {
        if r.values.len() != len {
            return Err(Mismatch::Length { left: len, right: r.values.len() }.into());
        }
        if std::mem::replace(&mut seen[r.index.0 as usize], true) {
            return Err(Mismatch::ShareIndex { left: r.index.0, right: r.index.0 }.into());
        }
    }
    let xs: Vec<u64> = releases.iter().map(|r| r.index.0 as u64).collect();
    let lambda = lagrange_at_zero(&xs);
    let coefficients = (0..len)
        .map(|c| {
            let mut k = 0u64;
            for (l, r) in lambda.iter().zip(releases) {
                k = add(k, mul(*l, r.values[c]));
            }
            from_field(k)
        })
        .collect();
    Ok(crate::keys::AggregateKey::from_coefficients(coefficients))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_arithmetic() {
        assert_eq!(mul(SHARE_PRIME - 1, SHARE_PRIME - 1), 1);
        assert_eq!(mul(inv(12345), 12345), 1);
        assert_eq!(add(SHARE_PRIME - 1, 5), 4);
        assert_eq!(sub(3, 5), SHARE_PRIME - 2);
        for v in [-(1i64 << 40), -1, 0, 1, 1 << 40, -(SHARE_PRIME as i64 / 2)] {
            assert_eq!(from_field(to_field(v)), v);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any t of n shares of keys with negative coefficients combine to the exact sum; the
        /// releases of all n nodes are consistent.
        #[test]
        fn any_t_releases_combine_to_the_key_sum(
            n in 1u8..=7,
            t_off in 0u8..7,
            keys in proptest::collection::vec(proptest::collection::vec(-(1i64 << 23)..(1i64 << 23), 8), 1..5),
            pick in proptest::collection::vec(any::<prop::sample::Index>(), 7),
        ) {
            let t = (n / 2 + 1 + t_off).min(n);
            let shape = CommitteeShape::try_new(n, t).unwrap();
            let per_key: Vec<Vec<KeyShare>> =
                keys.iter().map(|k| share_coefficients(k, shape).unwrap()).collect();
            let releases: Vec<Release> = shape
                .indices()
                .map(|x| Release::sum(x, per_key.iter().map(|s| &s[x.0 as usize - 1])).unwrap())
                .collect();
            let all: Vec<&Release> = releases.iter().collect();
            prop_assert!(consistent(&all, t));
            // A pseudo-random t-subset.
            let mut idx: Vec<usize> = (0..n as usize).collect();
            for (i, p) in pick.iter().enumerate().take(n as usize) {
                let j = i + p.index(n as usize - i);
                idx.swap(i, j);
            }
            let subset: Vec<&Release> = idx[..t as usize].iter().map(|&i| &releases[i]).collect();
            let k = combine(&subset).unwrap();
            let expected: Vec<i64> =
                (0..8).map(|c| keys.iter().map(|k| k[c]).sum()).collect();
            prop_assert_eq!(k.coefficients(), &expected[..]);
        }
    }

    #[test]
    fn a_tampered_release_is_inconsistent() {
        let shape = CommitteeShape::try_new(3, 2).unwrap();
        let shares = share_coefficients(&[5, -7, 9, 11], shape).unwrap();
        let mut releases: Vec<Release> =
            shares.iter().map(|s| Release::sum(s.index, [s]).unwrap()).collect();
        releases[2].values[1] = add(releases[2].values[1], 1);
        let all: Vec<&Release> = releases.iter().collect();
        assert!(!consistent(&all, 2));
        assert!(consistent(&all[..2], 2));
    }

    #[test]
    fn shares_of_fewer_than_t_nodes_are_uniform_looking() {
        // With t = 2, one share of a key is f(x) = k + a·x with a uniform: a single share is
        // independent of k. Check the shares of a zero key and a non-zero key both spread
        // over the whole field.
        let shape = CommitteeShape::try_new(3, 2).unwrap();
        for k in [0i64, 123_456] {
            let shares = share_coefficients(&vec![k; 4096], shape).unwrap();
            let high = shares[0].values.iter().filter(|&&v| v > SHARE_PRIME / 2).count();
            assert!((1800..2300).contains(&high), "{high}");
        }
    }
}
