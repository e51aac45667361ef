//! The wait after a failure: exponential, jittered, capped.

use std::time::Duration;

/// Exponential backoff with jitter, on what the cluster says rather than on how often one
/// document was tried: it grows only while nothing gets through and shrinks as responses
/// succeed.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    level: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            initial,
            max,
            level: 0,
            seed,
        }
    }

    /// Failures in a row, less successes since.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The wait at the current level, jittered: between half and all of it, so agents
    /// do not retry in step.
    pub fn delay(&mut self) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << self.level.min(20))
            .min(self.max);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        base.mul_f64(0.5 + (self.seed % 1000) as f64 / 2000.0)
    }

    /// Nothing got through: the wait before the next attempt; the next one is longer.
    pub fn failed(&mut self) -> Duration {
        let d = self.delay();
        self.level = (self.level + 1).min(20);
        d
    }

    /// Something got through.
    pub fn succeeded(&mut self) {
        self.level = self.level.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_only_on_failures_and_shrinks_on_successes() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1_000));
        let first = b.failed();
        assert!(first >= ms(50) && first <= ms(100), "{first:?}");
        let second = b.failed();
        assert!(second >= ms(100) && second <= ms(200), "{second:?}");
        for _ in 0..10 {
            b.failed();
        }
        assert!(b.delay() <= ms(1_000), "capped");
        assert_eq!(b.level(), 12);
        b.succeeded();
        assert_eq!(b.level(), 11);
        for _ in 0..20 {
            b.succeeded();
        }
        assert_eq!(b.level(), 0);
        assert!(b.delay() <= ms(100));
    }
}
