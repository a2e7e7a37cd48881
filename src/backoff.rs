//! Capped exponential backoff, the one delay rule for every retry and restart.

use std::time::Duration;

use crate::config::BackoffConfig;

/// The delay before retry number `attempt` (1 for the first retry): `initial`
/// doubled per attempt, never above `max`. Deterministic, so the election's
/// state machine stays a pure function that unit tests can check exactly.
pub(crate) fn delay(config: &BackoffConfig, attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let doublings = (attempt - 1).min(31);
    config
        .initial
        .checked_mul(1u32 << doublings)
        .map_or(config.max, |d| d.min(config.max))
}

/// A running count of consecutive failures that yields the next delay.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures recorded yet.
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// Records one more failure and returns how long to wait before the next try.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        delay(&self.config, self.failures)
    }

    /// Forgets the failures after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }

    #[test]
    fn doubles_from_initial_and_caps_at_max() {
        let mut backoff = Backoff::new(config());
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(delay(&config(), u32::MAX), Duration::from_secs(1));
        assert_eq!(delay(&config(), 0), Duration::ZERO);
    }
}
