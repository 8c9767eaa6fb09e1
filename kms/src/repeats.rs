//! Refusals worth an audit entry — refused credentials (401), deposits, sets and releases —
//! written once per kind per window, not once per request: a node refusing a re-reported set
//! wrote ~50 identical audit entries a minute forever (issue #24), and anyone could grow the
//! audit chain by sending bad tokens. Every refusal is still counted in `/metrics`; the entry
//! that ends a window's silence says how many identical refusals it stands for.

use std::collections::HashMap;
use std::sync::Mutex;

/// Identical refusals within this many seconds of the last written one are counted, not
/// written.
pub const REPEAT_WINDOW_SECS: i64 = 600;

/// Kinds of refusal remembered at once; beyond, the oldest are forgotten (so at worst an
/// entry is written early, never lost).
const MAX_KINDS: usize = 10_000;

/// The last audit entry written per kind of refusal, and the refusals since.
#[derive(Debug, Default)]
pub struct Repeats {
    seen: Mutex<HashMap<String, (i64, u64)>>,
}

impl Repeats {
    /// Whether to write an audit entry for a refusal of kind `key` at `now` (seconds):
    /// `Some(n)` — write it, noting the `n` identical refusals not written since the last
    /// entry — or `None`: counted, not written.
    pub fn admit(&self, key: String, now: i64) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, suppressed)) = seen.get_mut(&key) {
            if now < *last + REPEAT_WINDOW_SECS {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KINDS {
            seen.retain(|_, (last, _)| now < *last + REPEAT_WINDOW_SECS);
            if seen.len() >= MAX_KINDS {
                if let Some(oldest) =
                    seen.iter().min_by_key(|(_, (last, _))| *last).map(|(k, _)| k.clone())
                {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_refusals_are_written_once_per_window_with_their_count() {
        let r = Repeats::default();
        assert_eq!(r.admit("a".into(), 0), Some(0));
        for t in 1..50 {
            assert_eq!(r.admit("a".into(), t), None);
        }
        assert_eq!(r.admit("b".into(), 60), Some(0), "another kind is written");
        assert_eq!(r.admit("a".into(), REPEAT_WINDOW_SECS), Some(49));
        assert_eq!(r.admit("a".into(), REPEAT_WINDOW_SECS + 1), None);
    }

    #[test]
    fn memory_is_bounded() {
        let r = Repeats::default();
        for i in 0..(MAX_KINDS + 100) {
            assert_eq!(r.admit(i.to_string(), 0), Some(0));
        }
        assert!(r.seen.lock().unwrap().len() <= MAX_KINDS);
    }
}
