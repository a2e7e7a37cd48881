//! A role's bounded request queue: requests wait here for the coordinator actor, are refused when it is full or they would be answered too late, and are handed over in batches.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;

use crate::coordinator::{Coordinator, ServeError};
use crate::telemetry;

/// A request's reply port.
pub(crate) type ServeReply<C> = RpcReplyPort<Result<<C as Coordinator>::Response, ServeError>>;

/// A request waiting for the coordinator.
pub(crate) struct Queued<C: Coordinator> {
    /// The request.
    pub request: C::Request,
    /// Where its answer goes.
    pub reply: ServeReply<C>,
    /// When its caller stops waiting.
    pub deadline: Instant,
    /// How long its caller waits, for the answer of one that expired.
    pub timeout: Duration,
}

/// What [`RequestQueue::push`] did with a request.
pub(crate) enum Pushed<C: Coordinator> {
    /// Queued; `wake` when the coordinator actor must be told (the queue
    /// was idle), else a drain is already on its way.
    Queued {
        /// Whether to send the actor a drain.
        wake: bool,
    },
    /// The queue holds `coordinator.queueDepth` requests: refused, and handed back.
    Full(Queued<C>),
    /// At the rate the role has been serving, the request would be
    /// answered `wait` from now, after its deadline: refused, and handed back.
    Late {
        /// The request refused.
        queued: Queued<C>,
        /// When it would be answered, from now.
        wait: Duration,
    },
}

/// The requests of one coordinator actor's life: callers push, the actor
/// takes them in batches. A push into an idle queue wakes the actor with
/// one message; the queue stays awake (no more messages) until a take
/// leaves it empty, so a burst of requests costs one message per batch,
/// not one per request.
pub(crate) struct RequestQueue<C: Coordinator> {
    inner: Mutex<Inner<C>>,
    capacity: usize,
    /// At most how many requests one batch takes.
    max_batch: usize,
    /// How long the last batches took to serve, a moving average in
    /// nanoseconds; 0 until one is served.
    batch_time: AtomicU64,
    depth: metrics::Gauge,
}

struct Inner<C: Coordinator> {
    waiting: VecDeque<Queued<C>>,
    /// Whether the actor has been told and has not yet emptied the queue.
    awake: bool,
}

impl<C: Coordinator> RequestQueue<C> {
    /// An empty queue for `role` holding at most `capacity` requests,
    /// handed out at most `max_batch` at a time.
    pub(crate) fn new(role: &str, capacity: usize, max_batch: usize) -> Self {
        let depth = metrics::gauge!(telemetry::QUEUED_REQUESTS, "role" => role.to_owned());
        depth.set(0.0);
        Self {
            inner: Mutex::new(Inner {
                waiting: VecDeque::new(),
                awake: false,
            }),
            capacity,
            max_batch: max_batch.max(1),
            batch_time: AtomicU64::new(0),
            depth,
        }
    }

    /// At most how many requests wait.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Queues `queued` behind every request already waiting, unless the
    /// queue is full or, at the rate the role has been serving, the
    /// batches ahead of it and its own would end after its deadline.
    pub(crate) fn push(&self, queued: Queued<C>, now: Instant) -> Pushed<C> {
        let mut inner = self.lock();
        let ahead = inner.waiting.len();
        if ahead >= self.capacity {
            return Pushed::Full(queued);
        }
        let wait = self.time_to_serve(ahead + 1);
        if now + wait > queued.deadline {
            return Pushed::Late { queued, wait };
        }
        inner.waiting.push_back(queued);
        self.depth.set(inner.waiting.len() as f64);
        let wake = !std::mem::replace(&mut inner.awake, true);
        Pushed::Queued { wake }
    }

    /// How long serving `requests` takes, in batches, at the rate the last
    /// batches were served. A burst after a quiet time is estimated at the
    /// quiet time's small batches: too short, never too long, so that a
    /// burst is not refused for the time one request used to take.
    pub(crate) fn time_to_serve(&self, requests: usize) -> Duration {
        let batches = requests.div_ceil(self.max_batch);
        let batch = Duration::from_nanos(self.batch_time.load(Ordering::Relaxed));
        batch.saturating_mul(u32::try_from(batches).unwrap_or(u32::MAX))
    }

    /// Counts a batch served in `took` into the rate. Called by the one
    /// actor that serves, so a load and a store do.
    pub(crate) fn served(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let average = self.batch_time.load(Ordering::Relaxed);
        // A quarter of each new batch: a few slow batches move the rate,
        // one stall does not refuse everything behind it for long.
        let average = match average {
            0 => sample,
            _ => average - average / 4 + sample / 4,
        };
        self.batch_time.store(average, Ordering::Relaxed);
    }

    /// Takes the next batch in arrival order, and whether more wait. When
    /// none are left the queue goes idle: the next push wakes the actor.
    pub(crate) fn take_batch(&self) -> (Vec<Queued<C>>, bool) {
        self.take(self.max_batch)
    }

    fn take(&self, max: usize) -> (Vec<Queued<C>>, bool) {
        let mut inner = self.lock();
        let count = inner.waiting.len().min(max);
        let taken: Vec<_> = inner.waiting.drain(..count).collect();
        let more = !inner.waiting.is_empty();
        inner.awake = more;
        self.depth.set(inner.waiting.len() as f64);
        (taken, more)
    }

    /// Takes every request waiting.
    pub(crate) fn take_all(&self) -> Vec<Queued<C>> {
        self.take(usize::MAX).0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<C>> {
        // Every change under this lock is a single push or drain.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<C: Coordinator> Drop for RequestQueue<C> {
    fn drop(&mut self) {
        // The requests left are dropped with their reply ports: their
        // callers hear the coordinator is gone.
        self.depth.set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{BoxError, Snapshot};
    use crate::fence::{Epoch, FencedStore};

    struct Echo;

    impl Coordinator for Echo {
        type Meta = ();
        type Serving = ();
        type Request = u32;
        type Response = u32;

        fn decode(&self, _: Snapshot) -> Result<(), BoxError> {
            Ok(())
        }

        async fn activate(&self, _: Epoch, _: (), _: FencedStore) -> Result<(), BoxError> {
            Ok(())
        }

        async fn handle(&self, _: &mut (), request: u32) -> u32 {
            request
        }
    }

    fn queued(request: u32) -> Queued<Echo> {
        let (reply, _answer) = tokio::sync::oneshot::channel();
        Queued {
            request,
            reply: reply.into(),
            deadline: Instant::now() + Duration::from_secs(3600),
            timeout: Duration::from_secs(3600),
        }
    }

    impl RequestQueue<Echo> {
        fn push_now(&self, queued: Queued<Echo>) -> Pushed<Echo> {
            self.push(queued, Instant::now())
        }
    }

    fn requests(taken: &[Queued<Echo>]) -> Vec<u32> {
        taken.iter().map(|queued| queued.request).collect()
    }

    #[test]
    fn a_burst_wakes_the_actor_once_per_batch_and_keeps_arrival_order() {
        let queue = RequestQueue::<Echo>::new("r", 10, 3);
        let wakes: Vec<bool> = (0..5)
            .map(|n| match queue.push_now(queued(n)) {
                Pushed::Queued { wake } => wake,
                Pushed::Full(_) | Pushed::Late { .. } => panic!("not full, no rate"),
            })
            .collect();
        assert_eq!(wakes, [true, false, false, false, false]);
        let (first, more) = queue.take_batch();
        assert_eq!((requests(&first), more), (vec![0, 1, 2], true));
        // Still awake: the actor drains the rest without being told again.
        assert!(matches!(
            queue.push_now(queued(5)),
            Pushed::Queued { wake: false }
        ));
        let (rest, more) = queue.take(10);
        assert_eq!((requests(&rest), more), (vec![3, 4, 5], false));
        // Emptied: the next push wakes it.
        assert!(matches!(
            queue.push_now(queued(6)),
            Pushed::Queued { wake: true }
        ));
    }

    #[test]
    fn a_full_queue_hands_the_request_back_until_a_take_makes_room() {
        let queue = RequestQueue::<Echo>::new("r", 2, 1);
        assert_eq!(queue.capacity(), 2);
        for n in 0..2 {
            assert!(matches!(queue.push_now(queued(n)), Pushed::Queued { .. }));
        }
        match queue.push_now(queued(2)) {
            Pushed::Full(refused) => assert_eq!(refused.request, 2),
            Pushed::Queued { .. } | Pushed::Late { .. } => {
                panic!("a full queue not refused as full")
            }
        }
        assert_eq!(requests(&queue.take_batch().0), vec![0]);
        assert!(matches!(queue.push_now(queued(3)), Pushed::Queued { .. }));
        assert_eq!(requests(&queue.take_all()), vec![1, 3]);
    }

    #[test]
    fn a_request_that_would_be_answered_after_its_deadline_is_refused_at_once() {
        let queue = RequestQueue::<Echo>::new("r", 100, 4);
        let now = Instant::now();
        let within = |millis: u64| {
            let mut queued = queued(0);
            queued.deadline = now + Duration::from_millis(millis);
            queued
        };
        // Nothing served yet: no rate to refuse by.
        assert!(matches!(queue.push(within(1), now), Pushed::Queued { .. }));
        queue.take_all();
        queue.served(Duration::from_millis(10));
        assert_eq!(queue.time_to_serve(4), Duration::from_millis(10));
        assert_eq!(queue.time_to_serve(5), Duration::from_millis(20));
        // Alone in the queue: one batch, 10 ms.
        assert!(
            matches!(queue.push(within(9), now), Pushed::Late { wait, .. } if wait == Duration::from_millis(10))
        );
        assert!(matches!(queue.push(within(10), now), Pushed::Queued { .. }));
        for _ in 0..3 {
            assert!(matches!(
                queue.push(within(1000), now),
                Pushed::Queued { .. }
            ));
        }
        // Four ahead: the fifth waits for a second batch.
        assert!(
            matches!(queue.push(within(19), now), Pushed::Late { wait, .. } if wait == Duration::from_millis(20))
        );
        assert!(matches!(queue.push(within(20), now), Pushed::Queued { .. }));
    }

    #[test]
    fn the_rate_follows_the_batches_served_a_quarter_at_a_time() {
        let queue = RequestQueue::<Echo>::new("r", 10, 1);
        queue.served(Duration::from_millis(100));
        assert_eq!(queue.time_to_serve(1), Duration::from_millis(100));
        queue.served(Duration::from_millis(20));
        assert_eq!(queue.time_to_serve(1), Duration::from_millis(80));
        for _ in 0..30 {
            queue.served(Duration::from_millis(20));
        }
        assert!(queue.time_to_serve(1) < Duration::from_millis(21));
    }
}
