//! The privacy a DP round costs each contributor, as a Rényi-DP curve at fixed integer orders
//! in fixed-point units — computed from the mechanism's integers with rational arithmetic
//! only, so that every party derives the same charge bit for bit — and the conversion of a
//! sum of charges to `(ε, δ)`.
//!
//! **One round.** Kairouz, Liu, Steinke ("The Distributed Discrete Gaussian Mechanism", ICML
//! 2021, Theorem 2): the sum of `n` independent discrete Gaussians `N_Z(0, σ_s²)` added to an
//! integer vector of L2 sensitivity `S` in `d` dimensions is `½ε²`-concentrated DP with
//! `ε² = S²/(n·σ_s²) + τ·d/2`, `τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ_s²·k/(k+1))`. Here `n = m_h` (the
//! honest shares the noise is sized for: further shares only add noise), `n·σ_s² = σ²` and
//! `d = d' + 1` (the rotated values and the clipped-client indicator), so the round is
//! `ρ`-zCDP with `ρ = S²/(2σ²) + τ·d/4`, and its Rényi divergence of order `α` is at most
//! `α·ρ` (Bun and Steinke 2016). `τ` is bounded above with rationals: each term is at most
//! `exp(−π²σ_s²) ≤ 2^-E`, `E = ⌊(98696·14426·σ_s²)/10^8⌋` (lower bounds of π² and log₂e),
//! capped at 256 — a charge only ever errs upward.
//!
//! **Units.** A charge is `⌈2^32·α·ρ⌉` per order of [`ORDERS`] (saturating at `u64::MAX`);
//! charges add. [`epsilon`] converts a curve to `ε` at `δ` as `dp-accounting`'s
//! `rdp_privacy_accountant.compute_epsilon` does (Canonne, Kamath, Steinke 2020, Proposition
//! 12: `ε = min_α RDP_α + ln(1 − 1/α) − ln(δ·α)/(α − 1)`); golden values from `dp-accounting`
//! 0.6 are checked in `he/tests/dp_accounting.rs`.
//!
//! ```
//! use cryptflow_he::dp::accounting::{epsilon, Charge};
//! // A single discrete Gaussian (m_h = 1) with σ = 10·S: ρ = 1/200 per round.
//! let one = Charge::of_mechanism(1, 100, 1, 1000);
//! let hundred = one.times(100);
//! let (eps, _order) = epsilon(&hundred, 1e-6).unwrap();
//! // ρ = 0.5 in all: ε ≈ 5.2 at δ = 10^-6 (the RDP conversion at the best order).
//! assert!(eps > 5.0 && eps < 5.5, "{eps}");
//! ```

use num_bigint::BigUint;
use num_traits::{ToPrimitive, Zero};
use serde::{Deserialize, Serialize};

/// The Rényi orders a charge is kept at.
pub const ORDERS: [u32; 21] =
    [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256];

/// Fixed-point units per nat: `2^32`.
pub const UNITS_PER_NAT: u64 = 1 << 32;

/// A Rényi-DP curve: at each of [`ORDERS`], an upper bound on the divergence in units of
/// `2^-32` nats. Serialized as 21 integers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct Charge([u64; ORDERS.len()]);

impl TryFrom<Vec<u64>> for Charge {
    type Error = String;
    fn try_from(v: Vec<u64>) -> Result<Self, String> {
        let n = v.len();
        <[u64; ORDERS.len()]>::try_from(v)
            .map(Self)
            .map_err(|_| format!("a charge has {} values (one per order), not {n}", ORDERS.len()))
    }
}

impl From<Charge> for Vec<u64> {
    fn from(c: Charge) -> Vec<u64> {
        c.0.to_vec()
    }
}

impl Charge {
    /// Nothing spent.
    pub fn zero() -> Self {
        Self::default()
    }

    /// The units at each order.
    pub fn units(&self) -> &[u64; ORDERS.len()] {
        &self.0
    }

    /// The charge of one round of the distributed discrete Gaussian: squared sensitivity
    /// `S²` and variance `σ²` of `m_h` shares (grid units), `honest_shares = m_h`, `dims = d`
    /// (module docs). KLS21's theorem needs each share's `σ_s ≥ ½`: a variance `σ² < m_h/4`
    /// (or 0) charges `u64::MAX` at every order — no guarantee claimed.
    pub fn of_mechanism(
        sensitivity_sq: u128,
        variance: u128,
        honest_shares: u32,
        dims: u64,
    ) -> Self {
        if variance == 0 || variance.saturating_mul(4) < honest_shares.max(1) as u128 {
            return Self([u64::MAX; ORDERS.len()]);
        }
        let unit = BigUint::from(UNITS_PER_NAT);
        let m_h = honest_shares.max(1);
        // ρ = S²/(2σ²) + τ·d/4 with τ ≤ 10·(m_h − 1)·2^-E, as one fraction num/den.
        let main_num = BigUint::from(sensitivity_sq);
        let main_den = BigUint::from(variance) * 2u32;
        let (tau_num, tau_den) = if m_h == 1 {
            (BigUint::zero(), BigUint::from(1u32))
        } else {
            // σ_s² = σ²/m_h; E = ⌊98696·14426·σ²/(10^8·m_h)⌋, at most 256.
            let e = (BigUint::from(98_696u64 * 14_426) * variance)
                / (BigUint::from(100_000_000u64) * m_h);
            let e = e.to_u32().unwrap_or(256).min(256);
            (BigUint::from(10u64 * (m_h as u64 - 1)) * dims, BigUint::from(1u32) << (e + 2))
        };
        let num = &main_num * &tau_den + &tau_num * &main_den;
        let den = main_den * tau_den;
        let mut out = [0u64; ORDERS.len()];
        for (o, &alpha) in out.iter_mut().zip(&ORDERS) {
            let n = &num * &unit * alpha;
            let ceil = (n + &den - 1u32) / &den;
            *o = ceil.to_u64().unwrap_or(u64::MAX);
        }
        Self(out)
    }

    /// This charge `rounds` times (saturating).
    pub fn times(&self, rounds: u64) -> Self {
        Self(self.0.map(|u| u.saturating_mul(rounds)))
    }

    /// The sum of two charges (saturating): composition.
    pub fn plus(&self, other: &Self) -> Self {
        let mut out = self.0;
        for (o, b) in out.iter_mut().zip(other.0) {
            *o = o.saturating_add(b);
        }
        Self(out)
    }

    /// The divergence at each order, in nats.
    pub fn nats(&self) -> [f64; ORDERS.len()] {
        self.0.map(|u| u as f64 / UNITS_PER_NAT as f64)
    }
}

/// `δ` outside `(0, 1)`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("δ = {0} is not in (0, 1)")]
pub struct DeltaError(pub f64);

/// `(ε, the order that attains it)` of a curve at `δ`, as `dp-accounting` 0.6 computes it
/// (module docs); `ε = ∞` for a curve that saturated.
///
/// # Errors
/// [`DeltaError`] for `δ` not in `(0, 1)`.
pub fn epsilon(charge: &Charge, delta: f64) -> Result<(f64, u32), DeltaError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(DeltaError(delta));
    }
    let mut best = (f64::INFINITY, ORDERS[0]);
    for (&alpha, &units) in ORDERS.iter().zip(charge.units()) {
        if units == u64::MAX {
            continue;
        }
        let r = units as f64 / UNITS_PER_NAT as f64;
        let a = alpha as f64;
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        };
        if eps < best.0 {
            best = (eps, alpha);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_discrete_gaussian_is_charged_alpha_s2_over_2_sigma2_rounded_up() {
        // S² = 3, σ² = 7: ρ = 3/14; at α = 2, 2^32·2·3/14 = 1840700269.71… → …270.
        let c = Charge::of_mechanism(3, 7, 1, 10);
        assert_eq!(c.units()[0], 1_840_700_270);
        assert_eq!(c.units()[20], (((3u128 << 32) * 256).div_ceil(14)) as u64);
    }

    #[test]
    fn more_shares_with_little_noise_each_cost_the_tau_term() {
        // σ_s² = 0.3 per share: τ is not negligible, and the bound charges more than S²/(2σ²).
        let alone = Charge::of_mechanism(100, 30, 1, 1000);
        let split = Charge::of_mechanism(100, 30, 100, 1000);
        assert!(split.units().iter().zip(alone.units()).all(|(s, a)| s > a));
        // σ_s² = 0.2 < ¼: outside the theorem, nothing is claimed.
        assert_eq!(Charge::of_mechanism(100, 20, 100, 1000).units()[0], u64::MAX);
        // With σ_s² = 10^6 the bound's τ term is below a unit: at most one unit more.
        let big = Charge::of_mechanism(1 << 40, 100 << 40, 1, 1 << 20);
        let split = Charge::of_mechanism(1 << 40, 100 << 40, 100, 1 << 20);
        assert!(split.units().iter().zip(big.units()).all(|(s, a)| s - a <= 1));
    }

    #[test]
    fn charges_compose_by_adding_and_saturate() {
        let c = Charge::of_mechanism(1, 2, 1, 1);
        assert_eq!(c.plus(&c), c.times(2));
        assert_eq!(Charge::of_mechanism(1, 0, 1, 1).units()[3], u64::MAX);
        assert_eq!(epsilon(&Charge::of_mechanism(1, 0, 1, 1), 1e-5).unwrap().0, f64::INFINITY);
        assert_eq!(epsilon(&Charge::zero(), 1e-5).unwrap().0, 0.0);
        for d in [0.0, 1.0, -1.0, f64::NAN] {
            assert!(epsilon(&c, d).is_err());
        }
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Charge>(&json).unwrap(), c);
        assert!(serde_json::from_str::<Charge>("[1, 2]").is_err());
    }
}
