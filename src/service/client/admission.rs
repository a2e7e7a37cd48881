//! What a client lets out: at most `client.maxInFlight` calls at once, and fewer once the leader refuses calls as overloaded.
//!
//! As many callers again may wait for a slot, until their deadline; one
//! more is refused at once. An unbounded line would make every caller of
//! an overloaded client wait out most of its deadline and reach the leader
//! with too little left to be answered in: all of them failing instead of
//! some.
//!
//! The throttle is the adaptive throttling of Google's SRE book ("Handling
//! Overload"): over the last [`WINDOW`], a call is refused by the client
//! itself with probability `max(0, (requests - K * accepts) / (requests + 1))`,
//! where `requests` counts every call asked of the client (refused here or
//! not) and `accepts` the calls the leader did not refuse as overloaded. A
//! leader that serves C calls a second then sees about K * C of them, and a
//! caller offering ten times C pays for most refusals with a counter
//! instead of a round trip that takes the leader's CPU.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// How far back the throttle counts requests and accepts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Why a call never left the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The leader has been refusing calls as overloaded, and the throttle
    /// refused this one.
    #[error(
        "throttled: the leader refused {refused} of the last {requests} calls as overloaded, so this client sends at most {percent}% of what it accepts (client.throttlePercent)"
    )]
    Throttled {
        /// Calls asked of this client in the window.
        requests: u64,
        /// Of those, refused by the leader as overloaded.
        refused: u64,
        /// `client.throttlePercent`.
        percent: u32,
    },
    /// Every call slot was taken and as many callers already waited, or
    /// the slots stayed taken until the caller's deadline.
    #[error("{max} calls were in flight and no slot freed in time (client.maxInFlight)")]
    InFlight {
        /// `client.maxInFlight`.
        max: usize,
    },
}

/// Calls asked and calls the leader did not refuse as overloaded, in one
/// half of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    requests: u64,
    accepts: u64,
    refused: u64,
}

/// The adaptive throttle's counts and decisions, without I/O or a clock of
/// its own: the caller passes the time.
#[derive(Debug)]
pub struct Throttle {
    /// K in percent; 0 turns the throttle off.
    percent: u32,
    current: Tally,
    previous: Tally,
    /// When `current` began.
    turned: Instant,
    /// The share of admissions owed, so that a probability p admits exactly
    /// a 1 - p share of calls, in order, without a random source.
    credit: f64,
}

impl Throttle {
    /// A throttle that sends at most `percent`% of what the leader accepts
    /// once it refuses calls; 0 sends everything.
    pub fn new(percent: u32, now: Instant) -> Self {
        Self {
            percent,
            current: Tally::default(),
            previous: Tally::default(),
            turned: now,
            credit: 0.0,
        }
    }

    fn turn(&mut self, now: Instant) {
        let half = WINDOW / 2;
        let since = now.saturating_duration_since(self.turned);
        if since < half {
            return;
        }
        self.previous = if since < WINDOW {
            self.current
        } else {
            Tally::default()
        };
        self.current = Tally::default();
        self.turned = now;
    }

    fn counts(&self) -> Tally {
        Tally {
            requests: self.current.requests + self.previous.requests,
            accepts: self.current.accepts + self.previous.accepts,
            refused: self.current.refused + self.previous.refused,
        }
    }

    /// The probability that the next call is refused here.
    pub fn refusal_probability(&self) -> f64 {
        if self.percent == 0 {
            return 0.0;
        }
        let counts = self.counts();
        let allowed = counts.accepts as f64 * f64::from(self.percent) / 100.0;
        ((counts.requests as f64 - allowed) / (counts.requests as f64 + 1.0)).max(0.0)
    }

    /// Whether a call asked of the client at `now` may go; one refused
    /// here counts as a request at once, one let out when its answer is
    /// [recorded](Self::record).
    pub fn admit(&mut self, now: Instant) -> Result<(), AdmissionError> {
        self.turn(now);
        self.credit += 1.0 - self.refusal_probability();
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            return Ok(());
        }
        self.current.requests += 1;
        let counts = self.counts();
        Err(AdmissionError::Throttled {
            requests: counts.requests,
            refused: counts.refused,
            percent: self.percent,
        })
    }

    /// Counts how a call that went out ended. Only an answer counts: a call
    /// that got none (no leader, a failover, a timeout) says nothing about
    /// whether the leader is overloaded, and a failover must not leave the
    /// client refusing calls to the next leader.
    pub fn record(&mut self, now: Instant, outcome: Outcome) {
        self.turn(now);
        match outcome {
            Outcome::Accepted => {
                self.current.requests += 1;
                self.current.accepts += 1;
            }
            Outcome::Overloaded => {
                self.current.requests += 1;
                self.current.refused += 1;
            }
            Outcome::NoAnswer => {}
        }
    }
}

/// How a call that left the client ended, as the throttle counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The leader answered, or refused for a reason other than overload.
    Accepted,
    /// The leader refused it as overloaded (`RESOURCE_EXHAUSTED` with `standin-overloaded`).
    Overloaded,
    /// No leader answered it.
    NoAnswer,
}

/// A client's call slots and throttle, shared by its callers.
#[derive(Debug)]
pub struct Admission {
    slots: Semaphore,
    /// Callers waiting for a slot, at most `max_in_flight`.
    waiting: AtomicUsize,
    max_in_flight: usize,
    throttle: Mutex<Throttle>,
}

impl Admission {
    /// Slots for `max_in_flight` calls at once, and a throttle at `throttle_percent`.
    pub fn new(max_in_flight: usize, throttle_percent: u32) -> Self {
        Self {
            slots: Semaphore::new(max_in_flight),
            waiting: AtomicUsize::new(0),
            max_in_flight,
            throttle: Mutex::new(Throttle::new(throttle_percent, Instant::now())),
        }
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a call out: the throttle decides at once, then the call waits
    /// for a slot until `deadline`, if the line of waiting callers is not
    /// full. The slot is held until the permit drops.
    pub async fn enter(&self, deadline: Instant) -> Result<SemaphorePermit<'_>, AdmissionError> {
        self.throttle().admit(Instant::now())?;
        let full = AdmissionError::InFlight {
            max: self.max_in_flight,
        };
        let permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // Counted out on every way out, a caller that gives up included.
                let _in_line = InLine::join(&self.waiting);
                if _in_line.ahead >= self.max_in_flight {
                    return Err(full);
                }
                match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; a closed one is as good as full.
                    Ok(Err(_)) | Err(_) => return Err(full),
                }
            }
        };
        // A slot freed at the deadline is no time left to call in.
        if Instant::now() >= deadline {
            return Err(full);
        }
        Ok(permit)
    }

    /// Counts how a call that went out ended (see [`Throttle::record`]).
    pub fn record(&self, outcome: Outcome) {
        self.throttle().record(Instant::now(), outcome);
    }
}

/// A caller's place in the line for a slot, left when dropped.
struct InLine<'a> {
    waiting: &'a AtomicUsize,
    /// Callers waiting when this one joined.
    ahead: usize,
}

impl<'a> InLine<'a> {
    fn join(waiting: &'a AtomicUsize) -> Self {
        let ahead = waiting.fetch_add(1, Ordering::Relaxed);
        Self { waiting, ahead }
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits `calls` calls at `now`, the leader accepting `accepted` of
    /// those that go out and refusing the rest; returns how many went out.
    fn offer(throttle: &mut Throttle, now: Instant, calls: u64, accepted: u64) -> u64 {
        let mut sent = 0;
        for _ in 0..calls {
            if throttle.admit(now).is_ok() {
                let outcome = if sent < accepted {
                    Outcome::Accepted
                } else {
                    Outcome::Overloaded
                };
                throttle.record(now, outcome);
                sent += 1;
            }
        }
        sent
    }

    #[test]
    fn calls_that_got_no_answer_do_not_throttle() {
        let now = Instant::now();
        let mut throttle = Throttle::new(200, now);
        for _ in 0..10_000 {
            throttle.admit(now).expect("sent");
            throttle.record(now, Outcome::NoAnswer);
        }
        assert_eq!(throttle.refusal_probability(), 0.0);
    }

    #[test]
    fn a_leader_that_accepts_everything_is_sent_everything() {
        let now = Instant::now();
        let mut throttle = Throttle::new(200, now);
        assert_eq!(offer(&mut throttle, now, 10_000, u64::MAX), 10_000);
        assert_eq!(throttle.refusal_probability(), 0.0);
    }

    #[test]
    fn an_overloaded_leader_is_sent_about_k_times_what_it_accepts() {
        let start = Instant::now();
        let mut throttle = Throttle::new(200, start);
        let mut sent_late = 0;
        // Ten times what the leader accepts, second by second.
        for second in 0..30u64 {
            let now = start + Duration::from_secs(second);
            let sent = offer(&mut throttle, now, 10_000, 1_000);
            if second >= 20 {
                sent_late += sent;
            }
        }
        let per_second = sent_late as f64 / 10.0;
        assert!(
            (1_800.0..=2_300.0).contains(&per_second),
            "sent {per_second}/s to a leader accepting 1000/s"
        );
    }

    #[test]
    fn the_throttle_forgets_refusals_older_than_its_window() {
        let start = Instant::now();
        let mut throttle = Throttle::new(200, start);
        offer(&mut throttle, start, 10_000, 0);
        assert!(throttle.refusal_probability() > 0.9);
        let later = start + WINDOW + Duration::from_millis(1);
        assert_eq!(offer(&mut throttle, later, 100, u64::MAX), 100);
        assert_eq!(throttle.refusal_probability(), 0.0);
    }

    #[test]
    fn an_overloaded_leader_still_gets_calls_to_show_it_recovered() {
        let now = Instant::now();
        let mut throttle = Throttle::new(200, now);
        offer(&mut throttle, now, 100_000, 0);
        // Refusing nearly all, the throttle still lets some through.
        assert!(offer(&mut throttle, now, 1_000_000, 0) > 0);
    }

    #[test]
    fn zero_percent_turns_the_throttle_off() {
        let now = Instant::now();
        let mut throttle = Throttle::new(0, now);
        assert_eq!(offer(&mut throttle, now, 1_000, 0), 1_000);
    }

    #[test]
    fn a_refusal_says_what_the_throttle_saw() {
        let now = Instant::now();
        let mut throttle = Throttle::new(150, now);
        offer(&mut throttle, now, 1_000, 0);
        let refusal = (0..100)
            .find_map(|_| throttle.admit(now).err())
            .expect("a throttled call");
        let AdmissionError::Throttled {
            refused, percent, ..
        } = refusal
        else {
            panic!("not throttled: {refusal:?}");
        };
        assert_eq!(percent, 150);
        assert!(refused > 0);
    }

    #[tokio::test]
    async fn a_call_waits_for_a_slot_until_its_deadline() {
        let admission = Admission::new(1, 0);
        let held = admission
            .enter(Instant::now() + Duration::from_secs(1))
            .await
            .expect("a free slot");
        let waited = admission
            .enter(Instant::now() + Duration::from_millis(20))
            .await;
        assert_eq!(waited.err(), Some(AdmissionError::InFlight { max: 1 }));
        // One caller waits; a second finds the line full and is refused at once.
        let waiter = admission.enter(Instant::now() + Duration::from_secs(5));
        let refused = async {
            tokio::task::yield_now().await;
            let at = Instant::now();
            let refused = admission
                .enter(Instant::now() + Duration::from_secs(5))
                .await;
            (refused.err(), at.elapsed())
        };
        let (waited, (refused, took)) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(50), waiter),
            refused
        );
        assert!(waited.is_err(), "the waiter waits while the slot is held");
        assert_eq!(refused, Some(AdmissionError::InFlight { max: 1 }));
        assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
        assert_eq!(
            admission.waiting.load(Ordering::Relaxed),
            0,
            "a caller that gave up left the line"
        );
        drop(held);
        assert!(
            admission
                .enter(Instant::now() + Duration::from_millis(20))
                .await
                .is_ok()
        );
    }
}
