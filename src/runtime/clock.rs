//! The clock the lease is trusted by: it keeps counting while the host is suspended, which `Instant` does not.
//!
//! `std::time::Instant` reads `CLOCK_MONOTONIC` on Linux, which stops while
//! the host is suspended: a leader suspended for 15 s would resume trusting
//! its lease for seconds after etcd expired it and a successor served.
//! `CLOCK_BOOTTIME` is the same clock plus the time spent suspended, so the
//! renew deadline is measured as etcd measures the TTL. Elsewhere than Linux
//! this is `Instant`. Timers still run on tokio's clock: a timer may fire
//! late after a suspend, but every check of the term reads this clock.

use std::ops::{Add, Sub};
use std::time::{Duration, Instant};

/// An instant of the lease clock: time since boot, suspended time included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LeaseInstant(Duration);

impl LeaseInstant {
    /// Now.
    pub(crate) fn now() -> Self {
        Self(stalls::seen(since_boot()))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub(crate) fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// How long ago this was; zero if it is still to come.
    pub(crate) fn elapsed(self) -> Duration {
        Self::now().saturating_duration_since(self)
    }

    /// The `Instant` this process's monotonic clock will read when this
    /// clock reads `self`, as far as can be told now (the two drift apart
    /// only while the host is suspended): for timers and for callers that
    /// take an `Instant`.
    pub(crate) fn to_instant(self) -> Instant {
        let (now, instant_now) = (Self::now(), Instant::now());
        if self >= now {
            instant_now + self.saturating_duration_since(now)
        } else {
            let ago = now.saturating_duration_since(self);
            instant_now.checked_sub(ago).unwrap_or(instant_now)
        }
    }
}

impl Add<Duration> for LeaseInstant {
    type Output = Self;

    fn add(self, later: Duration) -> Self {
        Self(self.0.saturating_add(later))
    }
}

impl Sub<Duration> for LeaseInstant {
    type Output = Self;

    fn sub(self, earlier: Duration) -> Self {
        Self(self.0.saturating_sub(earlier))
    }
}

/// Stalls of the lease clock a test injects (cargo feature
/// `fault-injection`): what a VM paused by its hypervisor does to every
/// clock of the guest, `CLOCK_BOOTTIME` included.
#[cfg(feature = "fault-injection")]
mod stalls {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// The stall injected last.
    #[derive(Debug, Clone, Copy)]
    struct Stall {
        /// Time hidden by the stalls before it.
        hidden_before: Duration,
        /// When it began, on the real clock.
        from: Duration,
        /// How long it lasts.
        length: Duration,
    }

    static LAST: Mutex<Option<Stall>> = Mutex::new(None);
    /// Whether any stall was ever injected: until then every read of the
    /// clock (each check of a term) skips the lock.
    static EVER: AtomicBool = AtomicBool::new(false);

    /// What the lease clock reads when the real one reads `real`.
    pub(super) fn seen(real: Duration) -> Duration {
        if !EVER.load(Ordering::Acquire) {
            return real;
        }
        seen_after(*LAST.lock().unwrap_or_else(|p| p.into_inner()), real)
    }

    /// What the lease clock reads at `real` after the stalls up to `last`.
    fn seen_after(last: Option<Stall>, real: Duration) -> Duration {
        match last {
            None => real,
            Some(stall) if real < stall.from + stall.length => {
                stall.from.saturating_sub(stall.hidden_before)
            }
            Some(stall) => real.saturating_sub(stall.hidden_before + stall.length),
        }
    }

    /// The stall of `length` that begins at `real` after `last`; none
    /// while `last` still runs.
    fn next(last: Option<Stall>, real: Duration, length: Duration) -> Option<Stall> {
        let hidden_before = match last {
            Some(stall) if real < stall.from + stall.length => return None,
            Some(stall) => stall.hidden_before + stall.length,
            None => Duration::ZERO,
        };
        Some(Stall {
            hidden_before,
            from: real,
            length,
        })
    }

    /// Stops the lease clock of this process for `length` from now; it
    /// then runs on, `length` behind. One stall at a time: another while
    /// one runs is ignored. Returns whether it began.
    pub(crate) fn stall(length: Duration) -> bool {
        let real = super::since_boot();
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stall) = next(*last, real, length) else {
            return false;
        };
        *last = Some(stall);
        EVER.store(true, Ordering::Release);
        true
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_stalled_clock_stands_still_then_runs_on_behind_by_every_stall() {
            let s = Duration::from_secs;
            assert_eq!(seen_after(None, s(100)), s(100));
            let first = next(None, s(100), s(10));
            assert_eq!(seen_after(first, s(100)), s(100));
            assert_eq!(seen_after(first, s(109)), s(100), "it stands still");
            assert_eq!(seen_after(first, s(110)), s(100));
            assert_eq!(seen_after(first, s(115)), s(105), "then runs on, behind");
            assert!(next(first, s(105), s(1)).is_none(), "one at a time");
            let second = next(first, s(120), s(5));
            assert_eq!(seen_after(second, s(120)), s(110));
            assert_eq!(seen_after(second, s(123)), s(110));
            assert_eq!(seen_after(second, s(130)), s(115), "behind by both");
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod stalls {
    use std::time::Duration;

    /// The real clock: stalls are injected only with `fault-injection`.
    pub(super) fn seen(real: Duration) -> Duration {
        real
    }
}

#[cfg(feature = "fault-injection")]
pub(crate) use stalls::stall;

#[cfg(target_os = "linux")]
fn since_boot() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    // CLOCK_BOOTTIME exists since Linux 2.6.39; without it no lease could
    // be trusted safely.
    assert_eq!(read, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

#[cfg(not(target_os = "linux"))]
fn since_boot() -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_forward_and_adds_as_durations_do() {
        let start = LeaseInstant::now();
        let later = start + Duration::from_millis(5);
        assert!(later > start);
        assert_eq!(
            later.saturating_duration_since(start),
            Duration::from_millis(5)
        );
        assert_eq!(start.saturating_duration_since(later), Duration::ZERO);
        assert_eq!(later - Duration::from_millis(5), start);
        assert!(LeaseInstant::now() >= start);
        let instant = later.to_instant();
        let gap = instant.saturating_duration_since(Instant::now());
        assert!(gap <= Duration::from_millis(5), "{gap:?}");
    }

    /// Linux's `/proc/uptime` counts from boot with suspended time, as
    /// CLOCK_BOOTTIME does; CLOCK_MONOTONIC falls behind it by every
    /// suspend.
    #[cfg(target_os = "linux")]
    #[test]
    fn on_linux_it_reads_the_time_since_boot_suspends_included() {
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
        let seconds: f64 = uptime.split_whitespace().next().unwrap().parse().unwrap();
        let clock = LeaseInstant::now().0.as_secs_f64();
        assert!(
            (clock - seconds).abs() < 1.0,
            "boot clock {clock} s, uptime {seconds} s"
        );
    }
}
