//! Decryption of an aggregate with the key sum, in the order DESIGN §3 fixes:
//!
//! 1. with more than `t` releases, check they lie on one polynomial of degree `t − 1`; on a
//!    mismatch say so, then try `t`-subsets with checks 2–4, and name a node only when at
//!    least `t + 2` releases answered and exactly one disagrees ([`decrypt_with_releases`]);
//! 2. **range-check the key sum**: every coefficient within `z·σ_k·√|S|`. A node that adds a
//!    multiple of `Δ` to `K` shifts every value without disturbing a residual; only this check
//!    catches it (the planner guarantees `2·z·σ_k·√C < Δ`);
//! 3. `ΣB − A·K` per block, rounded to the `Δ` grid here, inside `he`;
//! 4. **self-check**: every residual within the planner's noise bound `z·σ_C`, else
//!    [`Error::WrongAggregateKey`] — a wrong key leaves uniform residuals, accepted with
//!    probability at most `(2τ/Δ)^s` over the `s` slots of a round (`N` per full block). A
//!    round of a handful of values is checked by a handful of residuals only: the check is
//!    a safeguard whose strength grows with `s`, while steps 1–2 hold for any size.
//!
//! Residuals — unrounded phases — never leave this module and are never logged: with the
//! uploads they would reveal noise, and noise with the key sum leaks more than the mean.

use crate::ciphertext::{CiphertextKind, PackedCiphertext, RoundSetup};
use crate::encoding::Element;
use crate::error::{Error, Mismatch};
use crate::keys::AggregateKey;
use crate::noise;
use crate::ntt::{NttPlan, NttPoly};
use crate::pack;
use crate::planner::Weighting;
use crate::random::expand_mask;
use crate::sharing::{self, CommitteeShape, Release, ShareIndex};
use rayon::prelude::*;
use zeroize::Zeroize;

/// A decrypted aggregate: the exact integer sums of the contributions' messages, and what is
/// needed to turn them into the (weighted) mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Decrypted {
    sums: Vec<i64>,
    total_weight: i64,
    contributors: u32,
    step: f64,
    clipping: Clipping,
    dp: Option<DpMean>,
}

/// What shaped the mean of a DP round, beyond the contributions: the noise, and the noised
/// count of contributions that clipping scaled. Every reader learns it.
#[derive(Clone, Debug, PartialEq)]
pub struct DpMean {
    /// Standard deviation of each coordinate's noise in the mean (the discrete-Gaussian
    /// shares of every contributor: `γ·√(|S|·σ²/m_h)/|S|`).
    pub noise_std: f64,
    /// Contributions whose update clipping scaled to the L2 bound, estimated from the noised
    /// indicator slot (`ΣI/K`; unbiased, may fall outside `[0, |S|]`).
    pub clipped_contributions: f64,
    /// Standard deviation of that estimate.
    pub clipped_contributions_std: f64,
    /// Standard deviation of each coordinate's error from the grid rounding (at most
    /// `γ·√|S|/2/|S|`).
    pub rounding_std: f64,
    rotation: crate::dp::rotation::Rotation,
}

/// How much clipping shaped a mean, from the [clipping slots](crate::planner::CLIPPING_SLOTS)
/// summed under encryption with the values: every reader of the mean learns it, not only the
/// contributors that clipped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Clipping {
    /// Contributions of which at least one value was clipped.
    pub contributions: u32,
    /// Clipped values over all contributions, at least (equal to `values_at_most` when the
    /// round counts exactly: `d ≤ M`, see [`Plan::clipping_unit`](crate::planner::Plan::clipping_unit)).
    pub values_at_least: u64,
    /// Clipped values over all contributions, at most.
    pub values_at_most: u64,
    /// Values contributed in all (`contributors · d`).
    pub of_values: u64,
}

impl Clipping {
    /// Whether any value of any contribution was clipped.
    pub fn any(&self) -> bool {
        self.contributions > 0
    }
    /// The largest fraction of contributed values that may have been clipped.
    pub fn fraction_at_most(&self) -> f64 {
        self.values_at_most as f64 / self.of_values.max(1) as f64
    }
}

impl Decrypted {
    /// Contributions in the aggregate.
    pub fn contributors(&self) -> u32 {
        self.contributors
    }
    /// `Σc`: the decrypted sum of the counts in `samples` rounds, the number of contributions
    /// otherwise.
    pub fn total_weight(&self) -> u64 {
        self.total_weight as u64
    }
    /// Number of model values (in a DP round: of rotated values, `d'`; [`Self::mean`] has `d`).
    pub fn len(&self) -> usize {
        self.sums.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
    /// What clipping did to the contributions (their error bound is against the clipped
    /// values: see [`Self::error_bound`]).
    pub fn clipping(&self) -> Clipping {
        self.clipping
    }
    /// The exact sums `Σ m` of the quantised (count-weighted) values; in a DP round, of the
    /// rotated, rounded and noised values (`d'` of them, the indicator split off).
    pub fn sums(&self) -> &[i64] {
        &self.sums
    }

    /// The (weighted) mean `s·Σm / Σc`, computed in `f64`, then narrowed to `T`. In a DP round
    /// `Σm` is in the rotated domain: the mean is `γ·Σm/|S|` rotated back, its padding dropped.
    pub fn mean<T: Element>(&self) -> Vec<T> {
        let scale = self.step / self.total_weight as f64;
        match &self.dp {
            Some(dp) => {
                let rotated: Vec<f64> = self.sums.iter().map(|&m| m as f64 * scale).collect();
                dp.rotation.unrotate(&rotated).into_iter().map(T::from_f64).collect()
            }
            None => self.sums.par_iter().map(|&m| T::from_f64(m as f64 * scale)).collect(),
        }
    }

    /// In a DP round, the noise and the noised clipping count ([`DpMean`]).
    pub fn dp(&self) -> Option<&DpMean> {
        self.dp.as_ref()
    }

    /// The guaranteed bound on the error of [`Self::mean`] as `f64` against the exact
    /// (weighted) mean of the clipped inputs: each contribution's quantisation (at most
    /// `s·(½ + 2^-11)`, the second term the floating-point slop of encoding), divided by `Σc`,
    /// plus the `f64` rounding of the division. At most the plan's `ε`. Narrowing to `f32` or
    /// a half type adds up to half an ulp of the value, which callers add.
    ///
    /// In a DP round the error is random — the noise and the rounding — and this is the bound
    /// each coordinate stays within except with probability at most 2^-128 ([`TAIL_Z`] times
    /// their joint standard deviation: both are sub-Gaussian), against the mean of the
    /// *clipped* updates; the conditional rounding's slight bias toward 0 (KLS21, Lemma 3)
    /// is not in it.
    ///
    /// [`TAIL_Z`]: crate::noise::TAIL_Z
    pub fn error_bound(&self) -> f64 {
        if let Some(dp) = &self.dp {
            let std = (dp.noise_std.powi(2) + dp.rounding_std.powi(2)).sqrt();
            return crate::noise::TAIL_Z * std * (1.0 + 1e-9);
        }
        let quantisation =
            self.step * (0.5 + 1.0 / 2048.0) * self.contributors as f64 / self.total_weight as f64;
        let largest = self.sums.iter().map(|m| m.unsigned_abs()).max().unwrap_or(0) as f64
            * self.step
            / self.total_weight as f64;
        quantisation + largest * f64::EPSILON
    }
}

impl AggregateKey {
    /// Decrypts an aggregate: range check of the key sum, `ΣB − A·K` rounded to the `Δ` grid,
    /// and the residual self-check (module docs).
    ///
    /// ```
    /// # use cryptflow_he::planner::{plan, PlanRequest, Weighting};
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let p = plan(&params, &PlanRequest { max_clients: 2, clip_bound: 1.0,
    /// #     max_abs_error: 1e-6, weighting: Weighting::Uniform, dp: None }).unwrap();
    /// let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 1000).unwrap();
    /// let (a, b) = (ClientKey::generate(&params).unwrap(), ClientKey::generate(&params).unwrap());
    /// let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    /// for (k, x) in [(&a, [0.5, -1.0]), (&b, [0.5, 1.0])] {
    ///     let values: Vec<f64> = x.iter().copied().cycle().take(1000).collect();
    ///     sum.add_upload(&k.encryptor(&setup, None).unwrap().encrypt(&values[..]).unwrap().ciphertext).unwrap();
    /// }
    /// let agg = PackedCiphertext::aggregate(&setup, 2, sum.pack()).unwrap();
    /// let mean = AggregateKey::sum_of([&a, &b]).decrypt(&setup, &agg).unwrap().mean::<f64>();
    /// assert!((mean[0] - 0.5).abs() <= 1e-6 && mean[1].abs() <= 1e-6);
    /// // One client's key alone does not open the aggregate (the residual check: with s
    /// // slots a wrong key passes with probability about (2τ/Δ)^s, negligible beyond a few
    /// // dozen values):
    /// assert!(matches!(AggregateKey::sum_of([&a]).decrypt(&setup, &agg),
    ///     Err(Error::KeyOutOfRange | Error::WrongAggregateKey)));
    /// ```
    pub fn decrypt(
        &self,
        setup: &RoundSetup,
        aggregate: &PackedCiphertext,
    ) -> Result<Decrypted, Error> {
        let contributors = check_aggregate(setup, aggregate)?;
        self.check_range(setup, contributors)?;
        let prepared = Prepared::new(self, setup)?;
        let slots = setup.slots() as usize;
        let mut out = vec![0i64; slots];
        let n = setup.ring_degree();
        let w = setup.transport().get();
        let block_bytes = pack::packed_len(n, w);
        let tau = noise::residual_bound(setup.params(), setup.transport(), contributors);
        out.par_chunks_mut(n)
            .zip(aggregate.payload.par_chunks(block_bytes))
            .enumerate()
            .try_for_each_init(
                || Scratch::new(n),
                |s, (b, (out, bytes))| prepared.block(setup, b as u64, bytes, tau, s, out),
            )?;
        finish(setup, out, contributors)
    }

    /// Step 2: every coefficient within `z·σ_k·√|S|`.
    pub(crate) fn check_range(&self, setup: &RoundSetup, contributors: u32) -> Result<(), Error> {
        let bound = noise::key_bound(setup.params(), contributors);
        if self.coefficients().len() != setup.ring_degree() {
            return Err(Mismatch::Length {
                left: setup.ring_degree(),
                right: self.coefficients().len(),
            }
            .into());
        }
        if self.coefficients().iter().any(|&c| c.unsigned_abs() as f64 > bound) {
            return Err(Error::KeyOutOfRange);
        }
        Ok(())
    }

    /// Decryption without step 2 (tests: to show what the range check alone prevents).
    #[cfg(test)]
    pub(crate) fn decrypt_without_range_check(
        &self,
        setup: &RoundSetup,
        aggregate: &PackedCiphertext,
    ) -> Result<Decrypted, Error> {
        let contributors = check_aggregate(setup, aggregate)?;
        let prepared = Prepared::new(self, setup)?;
        let n = setup.ring_degree();
        let block_bytes = pack::packed_len(n, setup.transport().get());
        let tau = noise::residual_bound(setup.params(), setup.transport(), contributors);
        let mut out = vec![0i64; setup.slots() as usize];
        let mut s = Scratch::new(n);
        for (b, (o, bytes)) in
            out.chunks_mut(n).zip(aggregate.payload.chunks(block_bytes)).enumerate()
        {
            prepared.block(setup, b as u64, bytes, tau, &mut s, o)?;
        }
        finish(setup, out, contributors)
    }

    /// Checks 2–4 on block 0 only: the cheap test of a candidate key in a subset search.
    fn probe(&self, setup: &RoundSetup, aggregate: &PackedCiphertext) -> Result<(), Error> {
        let contributors = check_aggregate(setup, aggregate)?;
        self.check_range(setup, contributors)?;
        let prepared = Prepared::new(self, setup)?;
        let n = setup.ring_degree();
        let bytes = pack::packed_len(n, setup.transport().get()).min(aggregate.payload.len());
        let r = setup.block_slots(0);
        let mut out = vec![0i64; (r.end - r.start) as usize];
        let tau = noise::residual_bound(setup.params(), setup.transport(), contributors);
        prepared.block(setup, 0, &aggregate.payload[..bytes], tau, &mut Scratch::new(n), &mut out)
    }
}

fn check_aggregate(setup: &RoundSetup, aggregate: &PackedCiphertext) -> Result<u32, Error> {
    aggregate.header.check_belongs(setup, CiphertextKind::Aggregate)?;
    let contributors = aggregate.header.contributors;
    if contributors == 0 || contributors > setup.plan().max_clients() {
        return Err(Mismatch::Round { field: "contributors" }.into());
    }
    if aggregate.payload.len() as u64 != setup.payload_len() {
        return Err(Mismatch::Length {
            left: setup.payload_len() as usize,
            right: aggregate.payload.len(),
        }
        .into());
    }
    Ok(contributors)
}

/// Splits the count slot and the clipping slots off and checks each sum lies in the range its
/// contributors can produce.
pub(crate) fn finish(
    setup: &RoundSetup,
    mut sums: Vec<i64>,
    contributors: u32,
) -> Result<Decrypted, Error> {
    if let Some(dp) = setup.plan().dp() {
        return finish_dp(setup, dp, sums, contributors);
    }
    let total_weight = match setup.plan().weighting() {
        Weighting::Uniform => contributors as i64,
        Weighting::Samples { min_count, max_count } => {
            let total = sums.pop().ok_or(Error::Internal("no count slot"))?;
            let lo = contributors as i128 * min_count as i128;
            let hi = contributors as i128 * max_count as i128;
            if !(lo..=hi).contains(&(total as i128)) {
                return Err(Error::CountOutOfRange);
            }
            total
        }
    };
    let units = sums.pop().ok_or(Error::Internal("no clipping slot"))?;
    let clients = sums.pop().ok_or(Error::Internal("no clipping slot"))?;
    let unit = setup.plan().clipping_unit(setup.values());
    let per_contribution = setup.values().div_ceil(unit) as i128;
    // Each contribution sends (0, 0) or (1, q) with 1 ≤ q ≤ ⌈d/u⌉: the sums satisfy
    // 0 ≤ K ≤ n and K ≤ U ≤ K·⌈d/u⌉ — anything else is a contributor's malformed slot.
    if !(0..=contributors as i64).contains(&clients)
        || !(clients as i128..=clients as i128 * per_contribution).contains(&(units as i128))
    {
        return Err(Error::CountOutOfRange);
    }
    let (clients, units) = (clients as u64, units as u64);
    // Each clipping contribution sent ⌈c_i / unit⌉ ≥ 1: c_i ∈ [(q_i − 1)·unit + 1, q_i·unit].
    let clipping = Clipping {
        contributions: clients as u32,
        values_at_least: (units - clients) * unit + clients,
        values_at_most: (units * unit).min(clients * setup.values()),
        of_values: contributors as u64 * setup.values(),
    };
    Ok(Decrypted {
        sums,
        total_weight,
        contributors,
        step: setup.plan().step(),
        clipping,
        dp: None,
    })
}

/// [`finish`] for a DP round: every slot's sum within the planner's bound (else a contributor
/// sent more than its clipped update and share), the indicator slot split off.
fn finish_dp(
    setup: &RoundSetup,
    dp: &crate::planner::DpPlan,
    mut sums: Vec<i64>,
    contributors: u32,
) -> Result<Decrypted, Error> {
    let bound = dp.sum_bound(contributors);
    if let Some(slot) = sums.iter().position(|m| m.unsigned_abs() as f64 > bound) {
        sums.zeroize();
        return Err(Error::SumOutOfRange { slot: slot as u64, bound });
    }
    let indicator = sums.pop().ok_or(Error::Internal("no indicator slot"))?;
    let s = contributors.max(1) as f64;
    let share_std = (s * dp.variance() as f64 / dp.honest_shares() as f64).sqrt();
    let k = dp.indicator() as f64;
    let estimate = indicator as f64 / k;
    let clipping = Clipping {
        contributions: estimate.round().clamp(0.0, contributors as f64) as u32,
        values_at_least: 0,
        values_at_most: contributors as u64 * setup.values(),
        of_values: contributors as u64 * setup.values(),
    };
    let mean = DpMean {
        noise_std: dp.mean_noise_std(contributors),
        clipped_contributions: estimate,
        clipped_contributions_std: share_std / k,
        rounding_std: dp.grid_step() * s.sqrt() / 2.0 / s,
        rotation: crate::dp::rotation::Rotation::new(&setup.seed(), setup.values() as usize),
    };
    Ok(Decrypted {
        sums,
        total_weight: contributors as i64,
        contributors,
        step: setup.plan().step(),
        clipping,
        dp: Some(mean),
    })
}

/// The key sum's transform and the plan, shared by the blocks.
struct Prepared {
    plan: NttPlan,
    key: NttPoly,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Per-thread buffers; they hold `A·K` and the phases, so they are zeroized.
struct Scratch {
    words: Vec<u64>,
    mask: Vec<u64>,
    ntt: NttPoly,
    product: Vec<u64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Self { words: vec![0; n], mask: vec![0; n], ntt: NttPoly::zeroed(n), product: vec![0; n] }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.words.zeroize();
        self.ntt.zeroize();
        self.product.zeroize();
    }
}

impl Prepared {
    fn new(key: &AggregateKey, setup: &RoundSetup) -> Result<Self, Error> {
        let plan = NttPlan::try_new(setup.ring_degree())?;
        let mut words: Vec<u64> = key.coefficients().iter().map(|&c| c as u64).collect();
        let key = plan.forward(&words);
        words.zeroize();
        Ok(Self { plan, key })
    }

    /// Steps 3 and 4 for block `b`: the rounded messages into `out`.
    fn block(
        &self,
        setup: &RoundSetup,
        b: u64,
        bytes: &[u8],
        tau: f64,
        s: &mut Scratch,
        out: &mut [i64],
    ) -> Result<(), Error> {
        let r = out.len();
        let delta_log = setup.plan().delta().get();
        let half = 1u64 << (delta_log - 1);
        s.words[..r].fill(0);
        pack::unpack_lift_add(bytes, setup.transport().get(), &mut s.words[..r]);
        expand_mask(setup.seed(), b, &mut s.mask)?;
        self.plan.mul(&s.mask, &self.key, &mut s.ntt, &mut s.product);
        let mut ok = true;
        for ((o, word), p) in out.iter_mut().zip(&s.words[..r]).zip(&s.product[..r]) {
            let phase = word.wrapping_sub(*p);
            let m = (phase.wrapping_add(half) as i64) >> delta_log;
            let residual = phase.wrapping_sub((m as u64) << delta_log) as i64;
            ok &= residual.unsigned_abs() as f64 <= tau;
            *o = m;
        }
        if ok {
            Ok(())
        } else {
            out.zeroize();
            Err(Error::WrongAggregateKey)
        }
    }
}

/// What the cross-check of releases found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseReport {
    /// The releases did not all lie on one polynomial of degree `t − 1`.
    pub inconsistent: bool,
    /// The one node whose release disagrees, when that can be told (at least `t + 2`
    /// releases, exactly one outlier).
    pub culprit: Option<ShareIndex>,
    /// The releases the key sum was combined from.
    pub used: Vec<ShareIndex>,
}

/// Steps 1–4 from the key managers' releases: cross-check, combine `t` of them, decrypt.
///
/// ```
/// # use cryptflow_he::planner::{plan, PlanRequest, Weighting};
/// # use cryptflow_he::sharing::{CommitteeShape, Release};
/// # use cryptflow_he::*;
/// # let params = ParameterSet::default_128();
/// # let p = plan(&params, &PlanRequest { max_clients: 2, clip_bound: 1.0,
/// #     max_abs_error: 1e-6, weighting: Weighting::Uniform, dp: None }).unwrap();
/// let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 1000).unwrap();
/// let shape = CommitteeShape::try_new(3, 2).unwrap();
/// let keys = [ClientKey::generate(&params).unwrap(), ClientKey::generate(&params).unwrap()];
/// let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
/// for k in &keys {
///     sum.add_upload(&k.encryptor(&setup, None).unwrap().encrypt(&vec![0.5; 1000][..]).unwrap().ciphertext).unwrap();
/// }
/// let agg = PackedCiphertext::aggregate(&setup, 2, sum.pack()).unwrap();
/// let shares: Vec<_> = keys.iter().map(|k| k.share(shape).unwrap()).collect();
/// // Node 3 is down: nodes 1 and 2 release their sums for the set.
/// let releases: Vec<Release> = (0..2)
///     .map(|j| Release::sum(shares[0][j].index(), [&shares[0][j], &shares[1][j]]).unwrap())
///     .collect();
/// let (d, report) = decrypt_with_releases(&setup, &agg, shape, &releases).unwrap();
/// assert!(!report.inconsistent);
/// assert!(d.mean::<f64>().iter().all(|m| (m - 0.5).abs() <= 1e-6));
/// ```
pub fn decrypt_with_releases(
    setup: &RoundSetup,
    aggregate: &PackedCiphertext,
    shape: CommitteeShape,
    releases: &[Release],
) -> Result<(Decrypted, ReleaseReport), Error> {
    let t = shape.threshold() as usize;
    let mut seen = std::collections::BTreeSet::new();
    for r in releases {
        if r.index().get() > shape.nodes() || !seen.insert(r.index()) {
            return Err(Mismatch::ShareIndex { left: r.index().get(), right: shape.nodes() }.into());
        }
    }
    // A release of the wrong length is not a point of the key's polynomial at all: it is left
    // out (and named when it is the only one), never indexed.
    let n = setup.ring_degree();
    let (all, misfits): (Vec<&Release>, Vec<&Release>) =
        releases.iter().partition(|r| r.len() == n);
    if all.len() < t {
        return Err(match misfits.first() {
            Some(r) if all.len() + misfits.len() >= t => {
                Mismatch::Length { left: n, right: r.len() }.into()
            }
            _ => Error::NotEnoughReleases { have: releases.len(), need: t },
        });
    }
    if !misfits.is_empty() {
        let (d, mut report) = decrypt_with_releases(
            setup,
            aggregate,
            shape,
            &all.into_iter().cloned().collect::<Vec<_>>(),
        )?;
        report.inconsistent = true;
        report.culprit = match (misfits.len(), report.culprit) {
            (1, None) => Some(misfits[0].index()),
            (_, c) => c,
        };
        return Ok((d, report));
    }
    if sharing::consistent(&all, shape.threshold()) {
        let key = sharing::combine(&all[..t])?;
        let used = all[..t].iter().map(|r| r.index()).collect();
        let d = key.decrypt(setup, aggregate)?;
        return Ok((d, ReleaseReport { inconsistent: false, culprit: None, used }));
    }
    // Step 1's fallback. A culprit can be named only if the others still over-determine the
    // polynomial (at least t + 1 of them) and exactly one leave-one-out set is consistent.
    let culprit = if all.len() >= t + 2 {
        let candidates: Vec<usize> = (0..all.len())
            .filter(|&j| {
                let rest: Vec<&Release> =
                    all.iter().enumerate().filter(|(i, _)| *i != j).map(|(_, r)| *r).collect();
                sharing::consistent(&rest, shape.threshold())
            })
            .collect();
        match candidates[..] {
            [j] => Some(j),
            _ => None,
        }
    } else {
        None
    };
    let pool: Vec<&Release> = match culprit {
        Some(j) => all.iter().enumerate().filter(|(i, _)| *i != j).map(|(_, r)| *r).collect(),
        None => all.clone(),
    };
    for subset in subsets(pool.len(), t) {
        let chosen: Vec<&Release> = subset.iter().map(|&i| pool[i]).collect();
        let key = sharing::combine(&chosen)?;
        if key.probe(setup, aggregate).is_ok() {
            let d = key.decrypt(setup, aggregate)?;
            let report = ReleaseReport {
                inconsistent: true,
                culprit: culprit.map(|j| all[j].index()),
                used: chosen.iter().map(|r| r.index()).collect(),
            };
            return Ok((d, report));
        }
    }
    Err(Error::InconsistentReleases)
}

/// All `k`-subsets of `0..n`, in lexicographic order.
fn subsets(n: usize, k: usize) -> impl Iterator<Item = Vec<usize>> {
    let mut current: Option<Vec<usize>> = (k <= n).then(|| (0..k).collect());
    std::iter::from_fn(move || {
        let out = current.clone()?;
        // Advance.
        let mut next = out.clone();
        let mut i = k;
        loop {
            if i == 0 {
                current = None;
                break;
            }
            i -= 1;
            if next[i] < n - k + i {
                next[i] += 1;
                for j in i + 1..k {
                    next[j] = next[j - 1] + 1;
                }
                current = Some(next);
                break;
            }
        }
        Some(out)
    })
}

/// Unrounded phases `B − A·K` of full-width body words (tests only: they must never leave
/// the crate).
#[cfg(test)]
pub(crate) fn raw_phases(key: &AggregateKey, setup: &RoundSetup, words: &[u64]) -> Vec<u64> {
    let Ok(prepared) = Prepared::new(key, setup) else { return Vec::new() };
    let n = setup.ring_degree();
    let mut s = Scratch::new(n);
    let mut out = Vec::with_capacity(words.len());
    for (b, block) in words.chunks(n).enumerate() {
        let _ = expand_mask(setup.seed(), b as u64, &mut s.mask);
        prepared.plan.mul(&s.mask, &prepared.key, &mut s.ntt, &mut s.product);
        out.extend(block.iter().zip(&s.product).map(|(w, p)| w.wrapping_sub(*p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{finish, subsets};
    use crate::tests::{gaussian_plan, setup_for};
    use crate::{Error, ParameterSet};

    #[test]
    fn clipping_sums_no_set_of_contributions_can_produce_are_refused() {
        // d = 10, two contributions, exact counts: each sends (0, 0) or (1, q), 1 ≤ q ≤ 10.
        let setup = setup_for(gaussian_plan(&ParameterSet::default_128(), 2, 1e-6), 10, 1);
        let sums = |k: i64, u: i64| [vec![0; 10], vec![k, u]].concat();
        let ok = |k, u| finish(&setup, sums(k, u), 2).map(|d| d.clipping());
        let c = ok(2, 5).unwrap();
        assert_eq!((c.contributions, c.values_at_least, c.values_at_most), (2, 5, 5));
        assert!(!ok(0, 0).unwrap().any());
        // (1, 0) from one and (1, 1) from another: K = 2 > U = 1. Before, this passed the
        // check and `U − K` underflowed (a panic in debug builds, 1.8e19 clipped values else).
        for (k, u) in [(2, 1), (1, 0), (0, 1), (3, 3), (1, 11), (2, 21), (-1, 0), (1, -1)] {
            assert_eq!(ok(k, u).unwrap_err(), Error::CountOutOfRange, "K = {k}, U = {u}");
        }
    }

    #[test]
    fn subsets_enumerate_all() {
        let all: Vec<Vec<usize>> = subsets(5, 3).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], vec![0, 1, 2]);
        assert_eq!(all[9], vec![2, 3, 4]);
        assert_eq!(subsets(3, 3).count(), 1);
        assert_eq!(subsets(2, 3).count(), 0);
    }
}
