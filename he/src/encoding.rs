//! Fixed-point encoding of real values, with clipping that is counted, never silent.
//!
//! A value `x` is clipped to `[−B, B]`, multiplied by the contribution's count `c` (1 in
//! unweighted rounds) and quantised to `m = round(c·x / s)` — `round` half away from zero, as
//! Rust's `f64::round` — and the slot holds `Δ·m` in two's complement. In `samples` rounds the
//! count `c` itself goes in the last slot at step 1 (`Δ·c`). The [planner](crate::planner)
//! picks `s` and `Δ` so that sums never wrap and the mean is within `ε` of the exact one.

use crate::error::InputError;
use crate::planner::{Plan, Weighting};
use serde::{Deserialize, Serialize};

/// Largest number of values in one update (2^32).
pub const MAX_VALUES: u64 = 1 << 32;

/// A real scalar that can be encrypted and returned: `f32` or `f64`.
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

/// A source of the values of one update, read block by block: a slice, or several slices
/// (the tensors of a model) that form one vector in order — one block counter runs over the
/// whole update.
pub trait Values: Sync {
    /// Number of values.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies values `start .. start + out.len()` into `out`, widened to `f64`.
    fn read(&self, start: usize, out: &mut [f64]);
}

impl<T: Element> Values for [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [f64]) {
        for (o, v) in out.iter_mut().zip(&self[start..]) {
            *o = v.to_f64();
        }
    }
}

impl<T: Element> Values for Vec<T> {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [f64]) {
        self.as_slice().read(start, out)
    }
}

/// Several slices read as one vector, in order.
#[derive(Clone, Debug)]
pub struct Segments<'a, T>(pub Vec<&'a [T]>);

impl<T: Element> Values for Segments<'_, T> {
    fn len(&self) -> usize {
        self.0.iter().map(|s| s.len()).sum()
    }
    fn read(&self, start: usize, out: &mut [f64]) {
        let mut skip = start;
        let mut filled = 0;
        for seg in &self.0 {
            if filled == out.len() {
                return;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let take = (seg.len() - skip).min(out.len() - filled);
            seg[skip..skip + take].read(0, &mut out[filled..filled + take]);
            filled += take;
            skip = 0;
        }
    }
}

/// What clipping did to one update. Clipping is never silent: callers surface this.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClipReport {
    /// Number of values whose magnitude exceeded the clip bound.
    pub clipped: u64,
    /// Largest magnitude among the clipped values (0 if none).
    pub largest_magnitude: f64,
}

impl ClipReport {
    /// Combines the reports of two parts of one update.
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

/// Encodes the values of one contribution: the plan's step and scale, and its count.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Encoder {
    clip: f64,
    count: f64,
    step: f64,
    delta_log: u32,
    /// The slot holding the count (`samples` rounds), if any.
    count_slot: Option<u64>,
    count_word: u64,
}

impl Encoder {
    /// For a contribution of `values` values with `count` (required in `samples` rounds,
    /// refused otherwise).
    pub(crate) fn new(plan: &Plan, values: u64, count: Option<u64>) -> Result<Self, InputError> {
        let (c, count_slot) = match (plan.weighting(), count) {
            (Weighting::Uniform, None) => (1, None),
            (Weighting::Uniform, Some(_)) => return Err(InputError::CountNotExpected),
            (Weighting::Samples { .. }, None) => return Err(InputError::CountRequired),
            (Weighting::Samples { min_count, max_count }, Some(c)) => {
                if !(min_count..=max_count).contains(&c) {
                    return Err(InputError::Count { count: c, min: min_count, max: max_count });
                }
                (c, Some(values))
            }
        };
        let delta_log = plan.delta().get();
        Ok(Self {
            clip: plan.clip_bound(),
            count: c as f64,
            step: plan.step(),
            delta_log,
            count_slot,
            count_word: c.wrapping_shl(delta_log),
        })
    }

    /// Encodes values `first .. first + out.len()` of the update (`values` holds those that
    /// are model values; the count slot, if in range, is appended by the encoder) into slot
    /// words, counting clipped values. Errors on a non-finite value, naming its index.
    pub(crate) fn encode(
        &self,
        values: &[f64],
        first: u64,
        out: &mut [u64],
    ) -> Result<ClipReport, InputError> {
        let mut report = ClipReport::default();
        let b = self.clip;
        for (i, (v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
            let v = *v;
            if !v.is_finite() {
                return Err(InputError::NonFinite { index: first + i as u64 });
            }
            if v > b || v < -b {
                report.clipped += 1;
                report.largest_magnitude = report.largest_magnitude.max(v.abs());
            }
            let m = (self.count * v.clamp(-b, b) / self.step).round() as i64;
            *o = (m as u64).wrapping_shl(self.delta_log);
        }
        if let Some(slot) = self.count_slot {
            let at = slot.wrapping_sub(first);
            if at < out.len() as u64 && at >= values.len() as u64 {
                out[at as usize] = self.count_word;
            }
        }
        Ok(report)
    }

    /// The slot of the count, if any.
    pub(crate) fn count_slot(&self) -> Option<u64> {
        self.count_slot
    }
}

/// Checks an update length is encryptable.
pub(crate) fn check_length(len: usize) -> Result<(), InputError> {
    if len == 0 {
        return Err(InputError::Empty);
    }
    if len as u64 > MAX_VALUES {
        return Err(InputError::TooLong { len: len as u64, limit: MAX_VALUES });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{plan, PlanRequest};
    use crate::ParameterSet;

    fn p(weighting: Weighting) -> Plan {
        let r = PlanRequest { max_clients: 4, clip_bound: 1.5, max_abs_error: 1e-3, weighting };
        plan(&ParameterSet::default_128(), &r).unwrap()
    }

    #[test]
    fn clipping_is_counted_and_applied_before_weighting() {
        // The v1 defect: in weighted rounds a client's values were not clipped. Here a value
        // of 50 with count 1 must encode as 1.5 (the bound), and be reported.
        let plan = p(Weighting::Samples { min_count: 1, max_count: 100 });
        let e = Encoder::new(&plan, 4, Some(1)).unwrap();
        let mut out = [0u64; 5];
        let r = e.encode(&[0.5, 50.0, -3.0, 1.5], 0, &mut out).unwrap();
        assert_eq!((r.clipped, r.largest_magnitude), (2, 50.0));
        let m = |w: u64| (w as i64) >> plan.delta().get();
        assert_eq!(m(out[1]), (1.5 / plan.step()).round() as i64);
        assert_eq!(m(out[4]), 1, "the count slot");
    }

    #[test]
    fn counts_are_checked() {
        let plan = p(Weighting::Samples { min_count: 2, max_count: 10 });
        assert_eq!(Encoder::new(&plan, 3, None).unwrap_err(), InputError::CountRequired);
        assert!(matches!(Encoder::new(&plan, 3, Some(11)), Err(InputError::Count { .. })));
        assert!(matches!(Encoder::new(&plan, 3, Some(1)), Err(InputError::Count { .. })));
        let u = p(Weighting::Uniform);
        assert_eq!(Encoder::new(&u, 3, Some(1)).unwrap_err(), InputError::CountNotExpected);
    }

    #[test]
    fn non_finite_values_are_rejected_with_their_index() {
        let plan = p(Weighting::Uniform);
        let e = Encoder::new(&plan, 3, None).unwrap();
        let mut out = [0u64; 3];
        let err = e.encode(&[0.0, f64::NAN, 1.0], 10, &mut out).unwrap_err();
        assert_eq!(err, InputError::NonFinite { index: 11 });
    }

    #[test]
    fn segments_read_across_boundaries() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [4.0f32];
        let c = [5.0f32, 6.0];
        let s = Segments(vec![&a[..], &b[..], &[][..], &c[..]]);
        assert_eq!(Values::len(&s), 6);
        let mut out = [0.0; 4];
        s.read(2, &mut out);
        assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
    }
}
