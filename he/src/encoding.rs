//! Fixed-point encoding of real values, with clipping that is counted, never silent.
//!
//! A value `v` is clipped to `[−B, B]` and encoded as the integer `m = round(v·2^p)`, placed at
//! `m·Δ` with `Δ = 2^d` in a 64-bit word (two's complement). The low `d` bits absorb the
//! noise; decryption rounds to the nearest multiple of `Δ` ("exact mode"), so what leaves the
//! decryptor is a function of the plaintext sum alone. `p`, `d`, `B` and the weight budgets
//! come from the [planner](crate::planner), which guarantees no wrap-around and the noise tail
//! bound.

use crate::error::{Error, InputError, InvalidParameter};
use serde::{Deserialize, Serialize};

/// Largest number of values in one vector (2^32).
pub const MAX_VALUES: u64 = 1 << 32;

/// Bits reserved: a sum's magnitude stays below `2^62` (DESIGN §3), one bit of margin.
pub const HEADROOM_BITS: u32 = 62;

/// A real scalar that can be encrypted: `f32` or `f64`.
pub trait Element: Copy + Send + Sync + sealed::Sealed + 'static {
    /// Widens to `f64`.
    fn to_f64(self) -> f64;
    /// Narrows from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// How values are clipped and scaled, plus the weight budget within which the plan's
/// guarantees hold. Ciphertexts carry their encoding; only equal encodings are summed.
///
/// ```
/// use cryptflow_he::Encoding;
/// let e = Encoding::try_new(20, 38, 1.0, 8, 8).unwrap();
/// assert_eq!(e.precision_bits(), 20);
/// assert!(Encoding::try_new(20, 50, 1.0, 8, 8).is_err()); // 2^(20+50) cannot fit
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    precision_bits: u8,
    delta_log: u8,
    clip_bound: f64,
    max_total_weight: u64,
    max_weight_sq_sum: u128,
}

impl Eq for Encoding {}

impl Encoding {
    /// Checks `p + d < 62`, `B` finite and positive, and that `budget · ceil(B·2^p) · 2^d`
    /// stays below `2^62`.
    pub fn try_new(
        precision_bits: u8,
        delta_log: u8,
        clip_bound: f64,
        max_total_weight: u64,
        max_weight_sq_sum: u128,
    ) -> Result<Self, Error> {
        let bad = |m: String| Error::InvalidParameter(InvalidParameter::Encoding(m));
        if !(clip_bound.is_finite() && clip_bound > 0.0) {
            return Err(bad(format!("clip bound {clip_bound} is not a positive finite number")));
        }
        if delta_log == 0 || precision_bits as u32 + delta_log as u32 >= HEADROOM_BITS {
            return Err(bad(format!(
                "precision bits {precision_bits} + delta bits {delta_log} must be in [1, 61]"
            )));
        }
        if max_total_weight == 0 || max_weight_sq_sum == 0 {
            return Err(bad("weight budgets must be positive".into()));
        }
        let max_message = max_message(clip_bound, precision_bits)
            .ok_or_else(|| bad("clip bound times 2^precision overflows".into()))?;
        let fits = (max_total_weight as u128)
            .checked_mul(max_message)
            .and_then(|x| x.checked_mul(1u128 << delta_log))
            .is_some_and(|x| x < 1u128 << HEADROOM_BITS);
        if !fits {
            return Err(bad("weight budget × clip bound × 2^(p+d) reaches 2^62".into()));
        }
        Ok(Self { precision_bits, delta_log, clip_bound, max_total_weight, max_weight_sq_sum })
    }

    /// `p`: a value is quantised to a multiple of `2^-p`.
    pub fn precision_bits(&self) -> u8 {
        self.precision_bits
    }

    /// `d`: messages sit at multiples of `Δ = 2^d`.
    pub fn delta_log(&self) -> u8 {
        self.delta_log
    }

    /// `B`: values are clipped to `[−B, B]`.
    pub fn clip_bound(&self) -> f64 {
        self.clip_bound
    }

    /// Largest total weight `Σ c_k` an aggregate may reach.
    pub fn max_total_weight(&self) -> u64 {
        self.max_total_weight
    }

    /// Largest `Σ c_k²` an aggregate may reach (the noise budget).
    pub fn max_weight_sq_sum(&self) -> u128 {
        self.max_weight_sq_sum
    }

    /// Worst-case absolute error of a decrypted weighted mean due to quantisation:
    /// `2^-(p+1)` (clipping not included; it is reported separately).
    pub fn max_quantisation_error(&self) -> f64 {
        2f64.powi(-(self.precision_bits as i32) - 1)
    }

    /// Encodes one value into its word, clipping to `[−B, B]`. Returns the word and whether
    /// the value was clipped. `v` must be finite.
    #[inline]
    pub(crate) fn encode_one(&self, v: f64) -> (u64, bool) {
        let b = self.clip_bound;
        let clipped = v > b || v < -b;
        let c = v.clamp(-b, b);
        let m = (c * 2f64.powi(self.precision_bits as i32)).round() as i64;
        ((m as u64).wrapping_shl(self.delta_log as u32), clipped)
    }

    /// Rounds a (debiased) phase to the nearest multiple of `Δ` and returns the signed integer
    /// message `T` (the weighted sum of the encoded integers).
    #[inline]
    pub(crate) fn round_phase(&self, phase: u64) -> i64 {
        let d = self.delta_log as u32;
        let half = 1u64 << (d - 1);
        (phase.wrapping_add(half) as i64) >> d
    }

    /// Encodes a slice into `out`, counting clipped values. Errors on a non-finite value.
    pub(crate) fn encode_into<T: Element>(
        &self,
        values: &[T],
        first_index: usize,
        out: &mut [u64],
    ) -> Result<ClipReport, InputError> {
        let mut report = ClipReport::default();
        for (i, (v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
            let v = v.to_f64();
            if !v.is_finite() {
                return Err(InputError::NonFinite { index: first_index + i });
            }
            let (word, clipped) = self.encode_one(v);
            if clipped {
                report.clipped += 1;
                report.largest_magnitude = report.largest_magnitude.max(v.abs());
            }
            *o = word;
        }
        Ok(report)
    }
}

/// `ceil(B·2^p)` as an integer, or `None` if it does not fit below 2^62.
pub(crate) fn max_message(clip_bound: f64, precision_bits: u8) -> Option<u128> {
    let m = (clip_bound * 2f64.powi(precision_bits as i32)).ceil();
    (m < 2f64.powi(HEADROOM_BITS as i32)).then_some(m as u128)
}

/// What clipping did to one input vector. Clipping is never silent: callers surface this.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClipReport {
    /// Number of values whose magnitude exceeded the clip bound.
    pub clipped: u64,
    /// Largest magnitude among the clipped values (0 if none).
    pub largest_magnitude: f64,
}

impl ClipReport {
    /// Combines the reports of two parts of one vector.
    ///
    /// ```
    /// use cryptflow_he::ClipReport;
    /// let a = ClipReport { clipped: 2, largest_magnitude: 3.0 };
    /// let b = ClipReport { clipped: 1, largest_magnitude: 7.5 };
    /// assert_eq!(a.merge(b), ClipReport { clipped: 3, largest_magnitude: 7.5 });
    /// ```
    pub fn merge(self, other: Self) -> Self {
        Self {
            clipped: self.clipped + other.clipped,
            largest_magnitude: self.largest_magnitude.max(other.largest_magnitude),
        }
    }
}

/// Checks a vector length is encryptable.
pub(crate) fn check_length(len: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(InputError::Empty.into());
    }
    if len as u64 > MAX_VALUES {
        return Err(InputError::TooLong { len, limit: MAX_VALUES }.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc() -> Encoding {
        Encoding::try_new(20, 38, 1.5, 8, 8).unwrap()
    }

    #[test]
    fn clipping_is_counted() {
        let e = enc();
        let mut out = [0u64; 4];
        let r = e.encode_into(&[0.5f64, 2.0, -3.0, 1.5], 0, &mut out).unwrap();
        assert_eq!(r.clipped, 2);
        assert_eq!(r.largest_magnitude, 3.0);
    }

    #[test]
    fn non_finite_values_are_rejected_with_their_index() {
        let e = enc();
        let mut out = [0u64; 3];
        let err = e.encode_into(&[0.0f32, f32::NAN, 1.0], 10, &mut out).unwrap_err();
        assert_eq!(err, InputError::NonFinite { index: 11 });
        let err = e.encode_into(&[f64::INFINITY], 0, &mut out).unwrap_err();
        assert_eq!(err, InputError::NonFinite { index: 0 });
    }

    #[test]
    fn encoding_rejects_overflowing_budgets() {
        // 15·2^20·2^38 < 2^62 but 16·2^20·2^38 = 2^62 reaches the bound.
        assert!(Encoding::try_new(20, 38, 1.0, 15, 15).is_ok());
        assert!(Encoding::try_new(20, 38, 1.0, 16, 16).is_err());
        assert!(Encoding::try_new(20, 38, f64::NAN, 1, 1).is_err());
        assert!(Encoding::try_new(20, 38, -1.0, 1, 1).is_err());
        assert!(Encoding::try_new(20, 0, 1.0, 1, 1).is_err());
        assert!(Encoding::try_new(20, 38, 1.0, 0, 1).is_err());
    }

    proptest! {
        #[test]
        fn round_trip_within_half_a_step(v in -1.5f64..1.5, noise in -(1i64 << 36)..(1i64 << 36)) {
            let e = enc();
            let (w, clipped) = e.encode_one(v);
            prop_assert!(!clipped);
            let t = e.round_phase(w.wrapping_add(noise as u64));
            let back = t as f64 / 2f64.powi(20);
            prop_assert!((back - v).abs() <= e.max_quantisation_error() + 1e-15);
        }
    }
}
