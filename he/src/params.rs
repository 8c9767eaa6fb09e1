//! Parameters: every size is a newtype, and a [`ParameterSet`] that exists is a valid one.
//!
//! The cryptographic parameters (ring degree, noise) are fixed by a named, immutable
//! [`ParameterSet`]; the per-round choices that only trade bandwidth against precision —
//! bodies per mask `L` ([`BodiesPerMask`]) and the transport widths ([`TransportWidths`]) — are
//! validated newtypes chosen by the [capacity planner](crate::planner).

use crate::error::{Error, InvalidParameter};
use serde::{Deserialize, Serialize};

/// Ring degree `N` of `Z_q[X]/(X^N + 1)`: a power of two.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingDegree(usize);

impl RingDegree {
    /// The degree as a `usize`.
    pub const fn get(self) -> usize {
        self.0
    }
}

/// `log2` of the bound of the TUniform noise distribution: samples lie in `[-2^b, 2^b]`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NoiseBoundLog(u32);

impl NoiseBoundLog {
    /// The exponent `b`.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Largest absolute value a sample can take, `2^b`.
    pub const fn bound(self) -> i64 {
        1i64 << self.0
    }

    /// Builds the exponent without range checks (callers are the checked parameter sets and
    /// tests).
    #[cfg(test)]
    pub(crate) const fn try_from_u32(b: u32) -> Self {
        Self(b)
    }

    /// Variance of TUniform(b): `(2^(2b+1) + 1) / 6`.
    pub fn variance(self) -> f64 {
        (2f64.powi(2 * self.0 as i32 + 1) + 1.0) / 6.0
    }
}

/// Number of bodies `L` sharing one mask in a block (1 ..= [`BodiesPerMask::MAX`]).
///
/// A block carries `L·N` values in `(1 + L)·N` words; `L = 1` is TFHE-rs's compact list.
///
/// ```
/// use cryptflow_he::BodiesPerMask;
/// assert_eq!(BodiesPerMask::try_new(8).unwrap().get(), 8);
/// assert!(BodiesPerMask::try_new(0).is_err());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct BodiesPerMask(u8);

impl BodiesPerMask {
    /// Largest supported `L`; larger values save < 1 % of bandwidth and grow the public key.
    pub const MAX: u8 = 32;

    /// Validates `1 <= l <= MAX`.
    pub fn try_new(l: u8) -> Result<Self, Error> {
        if (1..=Self::MAX).contains(&l) {
            Ok(Self(l))
        } else {
            Err(InvalidParameter::BodiesPerMask { value: l as u64, max: Self::MAX }.into())
        }
    }

    /// `L` as a `usize`.
    pub const fn get(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<u8> for BodiesPerMask {
    type Error = Error;
    fn try_from(l: u8) -> Result<Self, Error> {
        Self::try_new(l)
    }
}

impl From<BodiesPerMask> for u8 {
    fn from(l: BodiesPerMask) -> u8 {
        l.0
    }
}

/// Number of bits `w` a word keeps after modulus switching from `2^64` to `2^w` (1 ..= 64).
///
/// ```
/// use cryptflow_he::TransportBits;
/// assert!(TransportBits::try_new(32).unwrap().is_byte_aligned());
/// assert!(TransportBits::try_new(65).is_err());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct TransportBits(u8);

impl TransportBits {
    /// No compression: words travel at full width.
    pub const FULL: Self = Self(64);

    /// Validates `1 <= w <= 64`.
    pub fn try_new(w: u8) -> Result<Self, Error> {
        if (1..=64).contains(&w) {
            Ok(Self(w))
        } else {
            Err(InvalidParameter::TransportBits { value: w as u64 }.into())
        }
    }

    /// `w` as a `u32`.
    pub const fn get(self) -> u32 {
        self.0 as u32
    }

    /// Whether `w` is a multiple of 8 (the packer takes a byte-copy fast path).
    pub const fn is_byte_aligned(self) -> bool {
        self.0.is_multiple_of(8)
    }
}

impl TryFrom<u8> for TransportBits {
    type Error = Error;
    fn try_from(w: u8) -> Result<Self, Error> {
        Self::try_new(w)
    }
}

impl From<TransportBits> for u8 {
    fn from(w: TransportBits) -> u8 {
        w.0
    }
}

/// Widths for the mask polynomial and the bodies after modulus switching.
///
/// They differ because the mask's rounding error is multiplied by the secret at decryption
/// (variance × Hamming weight ≈ N/2), while a body's is not: a few more bits on the one mask
/// of a block buy a much smaller noise than the same bits spread over its `L` bodies.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransportWidths {
    /// Width of mask words.
    pub mask: TransportBits,
    /// Width of body words.
    pub body: TransportBits,
}

impl TransportWidths {
    /// Full 64-bit words, no switching.
    pub const FULL: Self = Self { mask: TransportBits::FULL, body: TransportBits::FULL };

    /// Bytes on the wire for one block of `l` bodies and ring degree `n`, counting only
    /// `values` bodies words (the last block may be partial).
    pub fn packed_bits(self, n: usize, values: usize) -> u128 {
        n as u128 * self.mask.get() as u128 + values as u128 * self.body.get() as u128
    }

    /// Average bytes per value for full blocks of `l` bodies: `(w_mask + L·w_body) / (8L)`.
    pub fn bytes_per_value(self, l: BodiesPerMask) -> f64 {
        (self.mask.get() as f64 + l.get() as f64 * self.body.get() as f64) / (8.0 * l.get() as f64)
    }
}

/// Wire identifier of a parameter set.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParameterSetId(pub u16);

/// The unchecked description of a parameter set; turn it into a [`ParameterSet`] with
/// [`ParameterSet::try_from`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ParametersLiteral {
    /// Wire identifier.
    pub id: u16,
    /// Human-readable name.
    pub name: &'static str,
    /// Ring degree `N`.
    pub ring_degree: usize,
    /// TUniform bound exponent for the key noise and both encryption noises.
    pub noise_bound_log2: u32,
    /// Claimed security in bits (documentation; the lattice estimate lives with the set).
    pub security_bits: u32,
}

/// A checked, immutable parameter set. Only the sets named here exist; the wire format
/// refers to them by [`ParameterSetId`].
///
/// ```
/// use cryptflow_he::ParameterSet;
/// let p = ParameterSet::default_128();
/// assert_eq!(p.ring_degree().get(), 2048);
/// assert_eq!(p.noise().get(), 17);
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ParameterSet {
    id: ParameterSetId,
    name: &'static str,
    ring_degree: RingDegree,
    noise: NoiseBoundLog,
    security_bits: u32,
}

/// TFHE-rs's vetted compact-PKE parameters (tfhe 1.8,
/// `V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`): dimension 2048, binary secret,
/// TUniform(17) noise, native modulus 2^64; 128-bit security.
pub const DEFAULT_128: ParametersLiteral = ParametersLiteral {
    id: 1,
    name: "cryptflow-rlwe-2048-tuniform17-q64",
    ring_degree: 2048,
    noise_bound_log2: 17,
    security_bits: 128,
};

/// A toy set with `N = 64` for fast tests. **Not secure.**
#[cfg(any(test, feature = "insecure"))]
pub const TOY_INSECURE: ParametersLiteral = ParametersLiteral {
    id: 0xFFFF,
    name: "toy-insecure-64",
    ring_degree: 64,
    noise_bound_log2: 17,
    security_bits: 0,
};

impl TryFrom<ParametersLiteral> for ParameterSet {
    type Error = Error;

    fn try_from(lit: ParametersLiteral) -> Result<Self, Error> {
        let n = lit.ring_degree;
        // tfhe-ntt's 32-bit plans need N >= 32; beyond 2^15 nothing is vetted.
        if !(n.is_power_of_two() && (32..=1 << 15).contains(&n)) {
            return Err(InvalidParameter::RingDegree { value: n as u64 }.into());
        }
        // Noise must leave room for messages: 2^(b+1) well below 2^64.
        if !(1..=40).contains(&lit.noise_bound_log2) {
            return Err(InvalidParameter::NoiseBound { value: lit.noise_bound_log2 as u64 }.into());
        }
        Ok(Self {
            id: ParameterSetId(lit.id),
            name: lit.name,
            ring_degree: RingDegree(n),
            noise: NoiseBoundLog(lit.noise_bound_log2),
            security_bits: lit.security_bits,
        })
    }
}

impl ParameterSet {
    /// The default 128-bit set ([`DEFAULT_128`]).
    pub fn default_128() -> Self {
        Self::from_literal_const(DEFAULT_128)
    }

    /// The toy set ([`TOY_INSECURE`]). **Not secure**; tests only.
    #[cfg(any(test, feature = "insecure"))]
    pub fn toy_insecure() -> Self {
        Self::from_literal_const(TOY_INSECURE)
    }

    // The named literals are checked by a unit test, so this cannot fail for them.
    fn from_literal_const(lit: ParametersLiteral) -> Self {
        Self {
            id: ParameterSetId(lit.id),
            name: lit.name,
            ring_degree: RingDegree(lit.ring_degree),
            noise: NoiseBoundLog(lit.noise_bound_log2),
            security_bits: lit.security_bits,
        }
    }

    /// Looks a set up by its wire id; unknown ids (and the toy set, unless `insecure` is on)
    /// are rejected.
    ///
    /// ```
    /// use cryptflow_he::{ParameterSet, ParameterSetId};
    /// assert_eq!(ParameterSet::by_id(ParameterSetId(1)).unwrap(), ParameterSet::default_128());
    /// assert!(ParameterSet::by_id(ParameterSetId(7)).is_err());
    /// ```
    pub fn by_id(id: ParameterSetId) -> Result<Self, Error> {
        if id.0 == DEFAULT_128.id {
            return Ok(Self::default_128());
        }
        #[cfg(any(test, feature = "insecure"))]
        if id.0 == TOY_INSECURE.id {
            return Ok(Self::toy_insecure());
        }
        Err(InvalidParameter::UnknownParameterSet { id: id.0 }.into())
    }

    /// Wire identifier.
    pub fn id(&self) -> ParameterSetId {
        self.id
    }

    /// Human-readable name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Ring degree `N`.
    pub fn ring_degree(&self) -> RingDegree {
        self.ring_degree
    }

    /// Noise distribution bound.
    pub fn noise(&self) -> NoiseBoundLog {
        self.noise
    }

    /// Claimed security level in bits (0 for toy sets).
    pub fn security_bits(&self) -> u32 {
        self.security_bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_literals_pass_the_checked_constructor() {
        assert_eq!(ParameterSet::try_from(DEFAULT_128).unwrap(), ParameterSet::default_128());
        assert_eq!(ParameterSet::try_from(TOY_INSECURE).unwrap(), ParameterSet::toy_insecure());
    }

    #[test]
    fn bad_literals_are_rejected() {
        let bad_n = ParametersLiteral { ring_degree: 1000, ..DEFAULT_128 };
        assert!(ParameterSet::try_from(bad_n).is_err());
        let small_n = ParametersLiteral { ring_degree: 16, ..DEFAULT_128 };
        assert!(ParameterSet::try_from(small_n).is_err());
        let bad_noise = ParametersLiteral { noise_bound_log2: 63, ..DEFAULT_128 };
        assert!(ParameterSet::try_from(bad_noise).is_err());
    }

    #[test]
    fn tuniform_variance_matches_design() {
        let v = NoiseBoundLog(17).variance();
        assert_eq!(v, (2f64.powi(35) + 1.0) / 6.0);
    }

    #[test]
    fn widths_cost() {
        let w = TransportWidths {
            mask: TransportBits::try_new(36).unwrap(),
            body: TransportBits::try_new(31).unwrap(),
        };
        let l = BodiesPerMask::try_new(8).unwrap();
        assert_eq!(w.bytes_per_value(l), (36.0 + 8.0 * 31.0) / 64.0);
    }
}
