//! Retries with exponential backoff, within a time budget.
//!
//! Retried: connection failures (refused, reset, broken pipe, timeouts), 5xx responses, and
//! 429 — a server's explicit "busy, try again", honouring `Retry-After`. Never retried: every
//! other 4xx, which no retry can fix. The budget is time, not a count of attempts: under load a
//! server may answer 429 for a while, and a client should wait it out rather than give up after
//! a handful of quick tries. Every CryptFlow request is idempotent (the same round request, the
//! same upload bytes, the same deposit, the same set are answered like the first time), so a
//! retry after a lost answer is safe.

use rand_core::{OsRng, RngCore};
use std::time::Duration;

/// How long and how patiently to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up once this much time has passed since the first attempt (`Duration::ZERO`: one
    /// attempt only).
    pub budget: Duration,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Backoff ceiling (also caps a server's `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Two minutes, 200 ms doubling to at most 10 s.
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(120),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    pub fn none() -> Self {
        Self { budget: Duration::ZERO, ..Self::default() }
    }

    /// Backoff after failed attempt `attempt` (1-based): `initial · 2^(attempt−1)`, capped,
    /// with "equal jitter" (uniform in `[b/2, b]`) so that clients refused together do not
    /// come back together. A server's `Retry-After` is used instead when given (capped).
    ///
    /// ```
    /// use cryptflow_client::RetryPolicy;
    /// use std::time::Duration;
    /// let p = RetryPolicy::default();
    /// let d = p.backoff(3, None);
    /// assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
    /// assert_eq!(p.backoff(1, Some(Duration::from_secs(60))), p.max_backoff);
    /// ```
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(r) = retry_after {
            return r.min(self.max_backoff);
        }
        let exp = attempt.saturating_sub(1).min(20);
        let base = self.initial_backoff.saturating_mul(1 << exp).min(self.max_backoff);
        let half = base / 2;
        let span = half.as_nanos().min(u128::from(u64::MAX));
        let jitter = (u128::from(OsRng.next_u64()) * span) >> 64;
        half + Duration::from_nanos(u64::try_from(jitter).unwrap_or(0))
    }
}
