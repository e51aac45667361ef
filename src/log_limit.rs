//! Repeated warnings, rate-limited: a failing endpoint or a storm of refused documents is
//! logged once, then at most once a period with how many were held back, never per batch.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Per key: when it was last let through, and how many were held back since.
#[derive(Debug)]
pub struct LogLimit {
    period: Duration,
    seen: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimit {
    pub fn new(period: Duration) -> Self {
        LogLimit {
            period,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held back since the last one)` when a message under `key` may be logged now.
    pub fn allow_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.period => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = std::mem::take(held);
                *last = now;
                Some(n)
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The agent's limiter: one message per key every 30 seconds.
pub fn allow(key: &'static str) -> Option<u64> {
    static LIMIT: OnceLock<LogLimit> = OnceLock::new();
    LIMIT
        .get_or_init(|| LogLimit::new(Duration::from_secs(30)))
        .allow_at(key, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_then_once_a_period_with_the_count_held_back() {
        let l = LogLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(l.allow_at("a", t0), Some(0));
        for s in 1..10 {
            assert_eq!(l.allow_at("a", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(l.allow_at("b", t0), Some(0), "keys are independent");
        assert_eq!(l.allow_at("a", t0 + Duration::from_secs(30)), Some(9));
        assert_eq!(l.allow_at("a", t0 + Duration::from_secs(31)), None);
    }
}
