//! Parameters: every size is a newtype, and a [`ParameterSet`] that exists is a valid one.
//!
//! The cryptographic parameters (ring degree, noise and key widths) are fixed by a named,
//! immutable [`ParameterSet`]; the per-round choices that only trade bandwidth against
//! precision — the transport width `w` ([`TransportBits`]) and the message scale `Δ = 2^δ`
//! ([`DeltaLog`]) — are validated newtypes chosen by the [capacity planner](crate::planner).

use crate::error::{Error, InvalidParameter};
use serde::{Deserialize, Serialize};

/// Ring degree `N` of `Z_q[X]/(X^N + 1)`: a power of two. One block of an update holds `N`
/// values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingDegree(usize);

impl RingDegree {
    /// The degree as a `usize`.
    pub const fn get(self) -> usize {
        self.0
    }
}

/// Number of bits `w` a body word keeps after rounding from `2^64` to `2^w` (1 ..= 64): an
/// upload costs `w/8` bytes per value.
///
/// ```
/// use cryptflow_he::TransportBits;
/// assert_eq!(TransportBits::try_new(28).unwrap().get(), 28);
/// assert!(TransportBits::try_new(65).is_err());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct TransportBits(u8);

impl TransportBits {
    /// No rounding: words travel at full width.
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

    /// Variance of the rounding error a word picks up when it is rounded to `w` bits, in units
    /// of the `2^64` torus: a uniform error on a grid of step `2^(64−w)`, `4^(64−w)/12`.
    pub fn rounding_variance(self) -> f64 {
        if self.0 >= 64 {
            0.0
        } else {
            4f64.powi(64 - self.0 as i32) / 12.0
        }
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

/// `δ`, the exponent of the message scale `Δ = 2^δ` (1 ..= 62): messages sit at multiples of
/// `Δ`, and the bits below absorb the noise.
///
/// ```
/// use cryptflow_he::DeltaLog;
/// assert_eq!(DeltaLog::try_new(40).unwrap().delta(), 1u64 << 40);
/// assert!(DeltaLog::try_new(0).is_err());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct DeltaLog(u8);

impl DeltaLog {
    /// Validates `1 <= δ <= 62`.
    pub fn try_new(d: u8) -> Result<Self, Error> {
        if (1..=62).contains(&d) {
            Ok(Self(d))
        } else {
            Err(InvalidParameter::DeltaLog { value: d as u64 }.into())
        }
    }

    /// `δ` as a `u32`.
    pub const fn get(self) -> u32 {
        self.0 as u32
    }

    /// `Δ = 2^δ`.
    pub const fn delta(self) -> u64 {
        1u64 << self.0
    }
}

impl TryFrom<u8> for DeltaLog {
    type Error = Error;
    fn try_from(d: u8) -> Result<Self, Error> {
        Self::try_new(d)
    }
}

impl From<DeltaLog> for u8 {
    fn from(d: DeltaLog) -> u8 {
        d.0
    }
}

/// Wire identifier of a parameter set.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParameterSetId(pub u16);

/// The unchecked description of a parameter set; turn it into a [`ParameterSet`] with
/// [`ParameterSet::try_from`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ParametersLiteral {
    /// Wire identifier.
    pub id: u16,
    /// Human-readable name.
    pub name: &'static str,
    /// Ring degree `N`.
    pub ring_degree: usize,
    /// Variance `σ_e²` of the rounded-Gaussian encryption noise (integer units).
    pub noise_variance: f64,
    /// Standard deviation `σ_k` of the discrete-Gaussian client keys.
    pub key_std: f64,
    /// Claimed security in bits (documentation; the argument is in the crate docs).
    pub security_bits: u32,
}

/// A checked, immutable parameter set. Only the sets named here exist; the wire format
/// refers to them by [`ParameterSetId`].
///
/// ```
/// use cryptflow_he::ParameterSet;
/// let p = ParameterSet::default_128();
/// assert_eq!(p.ring_degree().get(), 2048);
/// assert!(p.key_std() >= 2f64.sqrt() * p.noise_std()); // σ_k ≥ √2·σ_e (DESIGN §3)
/// assert!((p.noise_std().log2() - 16.2).abs() < 0.05);
/// ```
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ParameterSet {
    id: ParameterSetId,
    name: &'static str,
    ring_degree: RingDegree,
    noise_variance: f64,
    key_std: f64,
    security_bits: u32,
}

/// The variance of TFHE-rs's TUniform(17), `(2^35 + 1)/6`: the noise of TFHE-rs 1.8's vetted
/// compact-PKE set (`V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`), which CryptFlow
/// keeps as the variance of a *rounded Gaussian* (DESIGN §3: a bounded noise would let the
/// holders of the released key sum pin honest noise terms near its ends).
pub const TUNIFORM17_VARIANCE: f64 = 5_726_623_061.5;

/// The default set: `N = 2048`, `q = 2^64`, rounded-Gaussian noise with `σ_e² =`
/// [`TUNIFORM17_VARIANCE`] (`σ_e ≈ 2^16.2`), discrete-Gaussian keys with `σ_k = 2^17`
/// (`≥ √2·σ_e`). The security argument is in the crate documentation.
pub const DEFAULT_128: ParametersLiteral = ParametersLiteral {
    id: 2,
    name: "cryptflow-v2-rlwe-2048-gauss-q64",
    ring_degree: 2048,
    noise_variance: TUNIFORM17_VARIANCE,
    key_std: 131_072.0,
    security_bits: 128,
};

/// A toy set with `N = 64` for fast tests. **Not secure.**
#[cfg(any(test, feature = "insecure"))]
pub const TOY_INSECURE: ParametersLiteral = ParametersLiteral {
    id: 0xFFFF,
    name: "toy-insecure-64",
    ring_degree: 64,
    noise_variance: TUNIFORM17_VARIANCE,
    key_std: 131_072.0,
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
        let noise_std = lit.noise_variance.sqrt();
        if !(noise_std.is_finite() && (1.0..=2f64.powi(40)).contains(&noise_std)) {
            return Err(InvalidParameter::Noise { reason: "σ_e must be in [1, 2^40]" }.into());
        }
        // DESIGN §3: σ_k ≥ √2·σ_e, so that what the released key sum leaves is at least as
        // hard as the instance a single client's body is. Keys must also stay far inside F_p.
        if !(lit.key_std.is_finite()
            && lit.key_std >= std::f64::consts::SQRT_2 * noise_std
            && lit.key_std <= 2f64.powi(24))
        {
            return Err(InvalidParameter::Noise { reason: "σ_k must be in [√2·σ_e, 2^24]" }.into());
        }
        Ok(Self {
            id: ParameterSetId(lit.id),
            name: lit.name,
            ring_degree: RingDegree(n),
            noise_variance: lit.noise_variance,
            key_std: lit.key_std,
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
            noise_variance: lit.noise_variance,
            key_std: lit.key_std,
            security_bits: lit.security_bits,
        }
    }

    /// Looks a set up by its wire id; unknown ids (and the toy set, unless `insecure` is on)
    /// are rejected.
    ///
    /// ```
    /// use cryptflow_he::{ParameterSet, ParameterSetId};
    /// assert_eq!(ParameterSet::by_id(ParameterSetId(2)).unwrap(), ParameterSet::default_128());
    /// assert!(ParameterSet::by_id(ParameterSetId(1)).is_err()); // version 1's set is gone
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

    /// Ring degree `N` (values per block).
    pub fn ring_degree(&self) -> RingDegree {
        self.ring_degree
    }

    /// Variance `σ_e²` of the encryption noise.
    pub fn noise_variance(&self) -> f64 {
        self.noise_variance
    }

    /// `σ_e`.
    pub fn noise_std(&self) -> f64 {
        self.noise_variance.sqrt()
    }

    /// `σ_k`, the width of the client keys.
    pub fn key_std(&self) -> f64 {
        self.key_std
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
        for bad in [
            ParametersLiteral { ring_degree: 1000, ..DEFAULT_128 },
            ParametersLiteral { ring_degree: 16, ..DEFAULT_128 },
            ParametersLiteral { noise_variance: f64::NAN, ..DEFAULT_128 },
            // σ_k below √2·σ_e would make the released key sum weaken the honest keys.
            ParametersLiteral { key_std: 100_000.0, ..DEFAULT_128 },
        ] {
            assert!(ParameterSet::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_noise_variance_is_tuniform17s() {
        assert_eq!(TUNIFORM17_VARIANCE, (2f64.powi(35) + 1.0) / 6.0);
    }

    #[test]
    fn rounding_variance() {
        assert_eq!(TransportBits::FULL.rounding_variance(), 0.0);
        assert_eq!(TransportBits::try_new(32).unwrap().rounding_variance(), 2f64.powi(64) / 12.0);
    }
}
