//! Capped exponential backoff with jitter, the one delay rule for every retry and restart.

use std::hash::{BuildHasher, Hasher};
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

/// `delay` spread over its upper half, `[delay / 2, delay]` ("equal
/// jitter"): the standbys and clients that lost etcd at the same moment
/// then do not all come back at the same moments, and no retry waits less
/// than half its schedule.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    let spread = u64::try_from((delay - half).as_nanos()).unwrap_or(u64::MAX);
    if spread == 0 {
        return delay;
    }
    half + Duration::from_nanos(random() % (spread + 1))
}

/// A random number from the standard library's per-process random keys: no
/// cryptographic need here, only peers that do not move in step.
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos().into()),
    );
    hasher.finish()
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

    /// Records one more failure and returns how long to wait before the
    /// next try: the schedule's delay, jittered.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jittered(delay(&self.config, self.failures))
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
        let delays: Vec<_> = (1..=6).map(|n| delay(&config(), n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn each_retry_waits_between_half_and_all_of_its_schedule_and_not_in_step() {
        let mut backoff = Backoff::new(config());
        for scheduled in [100, 200, 400, 800, 1000, 1000] {
            let waited = backoff.next_delay().as_millis();
            assert!(
                (scheduled / 2..=scheduled).contains(&waited),
                "{waited} ms for a {scheduled} ms step"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        // Peers retrying the same step spread out rather than all waiting alike.
        let spread: std::collections::BTreeSet<_> = (0..50)
            .map(|_| jittered(Duration::from_secs(1)).as_micros())
            .collect();
        assert!(spread.len() > 40, "{} distinct delays of 50", spread.len());
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(delay(&config(), u32::MAX), Duration::from_secs(1));
        assert_eq!(delay(&config(), 0), Duration::ZERO);
    }
}
