//! Fixed-point encoding of real values, with clipping that is counted, never silent.
//!
//! A value `x` is clipped to `[−B, B]`, multiplied by the contribution's count `c` (1 in
//! unweighted rounds) and quantised to `m = round(c·x / s)` — `round` half away from zero, as
//! Rust's `f64::round` — and the slot holds `Δ·m` in two's complement. After the `d` model
//! values come the two [clipping slots](crate::planner::CLIPPING_SLOTS) — whether any value was
//! clipped, and how many in units — and, in `samples` rounds, the count `c` itself in the last
//! slot at step 1 (`Δ·c`). The [planner](crate::planner)
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

/// What clipping did to one update. Clipping is never silent: callers surface this. In a DP
/// round clipping scales the whole update to the L2 bound: `clipped` is then every value `d`
/// and `largest_magnitude` the update's L2 norm before clipping.
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

/// Encodes the values of one contribution: the plan's step and scale, the clipping slots and
/// its count.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Encoder {
    clip: f64,
    count: f64,
    step: f64,
    delta_log: u32,
    /// `d`: the first slot after the model values (the clipping slots, then the count).
    values: u64,
    /// Clipped values per unit of the clipped-values slot.
    clipping_unit: u64,
    /// The declared count (`samples` rounds), if any.
    declared: Option<u64>,
}

impl Encoder {
    /// For a contribution of `values` values with `count` (required in `samples` rounds,
    /// refused otherwise).
    pub(crate) fn new(plan: &Plan, values: u64, count: Option<u64>) -> Result<Self, InputError> {
        let c = match (plan.weighting(), count) {
            (Weighting::Uniform, None) => None,
            (Weighting::Uniform, Some(_)) => return Err(InputError::CountNotExpected),
            (Weighting::Samples { .. }, None) => return Err(InputError::CountRequired),
            (Weighting::Samples { min_count, max_count }, Some(c)) => {
                if !(min_count..=max_count).contains(&c) {
                    return Err(InputError::Count { count: c, min: min_count, max: max_count });
                }
                Some(c)
            }
        };
        let delta_log = plan.delta().get();
        Ok(Self {
            clip: plan.clip_bound(),
            count: c.unwrap_or(1) as f64,
            step: plan.step(),
            delta_log,
            values,
            clipping_unit: plan.clipping_unit(values),
            declared: c,
        })
    }

    /// Whether `value` is beyond the clip bound (what [`Self::encode`] counts).
    pub(crate) fn clips(&self, value: f64) -> bool {
        value > self.clip || value < -self.clip
    }

    /// Encodes values `first .. first + out.len()` of the update into slot words, counting
    /// clipped values. `values` holds those that are model values; the slots after them —
    /// clipping, then the count — are filled from `whole`, the clipping of the whole update,
    /// which must be given when `out` reaches them. Errors on a non-finite value, naming its
    /// index.
    pub(crate) fn encode(
        &self,
        values: &[f64],
        first: u64,
        out: &mut [u64],
        whole: Option<&ClipReport>,
    ) -> Result<ClipReport, InputError> {
        let mut report = ClipReport::default();
        let b = self.clip;
        for (i, (v, o)) in values.iter().zip(out.iter_mut()).enumerate() {
            let v = *v;
            if !v.is_finite() {
                return Err(InputError::NonFinite { index: first + i as u64 });
            }
            if self.clips(v) {
                report.clipped += 1;
                report.largest_magnitude = report.largest_magnitude.max(v.abs());
            }
            let m = (self.count * v.clamp(-b, b) / self.step).round() as i64;
            *o = (m as u64).wrapping_shl(self.delta_log);
        }
        for (at, o) in out.iter_mut().enumerate().skip(values.len()) {
            let slot = first + at as u64;
            // A slot past the values without the whole update's report is the caller's bug.
            let m = match (slot.checked_sub(self.values), whole, self.declared) {
                (Some(0), Some(w), _) => u64::from(w.clipped > 0),
                (Some(1), Some(w), _) => w.clipped.div_ceil(self.clipping_unit),
                (Some(2), _, Some(c)) => c,
                _ => return Err(InputError::SlotRange { start: slot, end: slot + 1 }),
            };
            *o = m.wrapping_shl(self.delta_log);
        }
        Ok(report)
    }

    /// `d`: the index of the first slot after the model values.
    pub(crate) fn values(&self) -> u64 {
        self.values
    }

    /// The slot of the count, if any.
    pub(crate) fn count_slot(&self) -> Option<u64> {
        self.declared.map(|_| self.values + crate::planner::CLIPPING_SLOTS)
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
        let r = PlanRequest {
            max_clients: 4,
            clip_bound: 1.5,
            max_abs_error: 1e-3,
            weighting,
            dp: None,
        };
        plan(&ParameterSet::default_128(), &r).unwrap()
    }

    #[test]
    fn clipping_is_counted_and_applied_before_weighting() {
        // The v1 defect: in weighted rounds a client's values were not clipped. Here a value
        // of 50 with count 1 must encode as 1.5 (the bound), and be reported.
        let plan = p(Weighting::Samples { min_count: 1, max_count: 100 });
        let e = Encoder::new(&plan, 4, Some(1)).unwrap();
        let mut out = [0u64; 7];
        let values = [0.5, 50.0, -3.0, 1.5];
        let whole = ClipReport { clipped: 2, largest_magnitude: 50.0 };
        let r = e.encode(&values, 0, &mut out, Some(&whole)).unwrap();
        assert_eq!(r, whole);
        let m = |w: u64| (w as i64) >> plan.delta().get();
        assert_eq!(m(out[1]), (1.5 / plan.step()).round() as i64);
        assert_eq!((m(out[4]), m(out[5])), (1, 2), "clipped indicator, clipped values");
        assert_eq!(m(out[6]), 1, "the count slot");
        // The clipping slots cannot be filled without the whole update's report.
        assert!(e.encode(&values, 0, &mut out, None).is_err());
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
        let e = Encoder::new(&plan, 30, None).unwrap();
        let mut out = [0u64; 3];
        let err = e.encode(&[0.0, f64::NAN, 1.0], 10, &mut out, None).unwrap_err();
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
