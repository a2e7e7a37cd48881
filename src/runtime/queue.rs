//! A role's bounded request queue: requests wait here for the coordinator actor, are refused when it is full, and are handed over in batches.

use std::collections::VecDeque;
use std::sync::Mutex;
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
}

/// The requests of one coordinator actor's life: callers push, the actor
/// takes them in batches. A push into an idle queue wakes the actor with
/// one message; the queue stays awake (no more messages) until a take
/// leaves it empty, so a burst of requests costs one message per batch,
/// not one per request.
pub(crate) struct RequestQueue<C: Coordinator> {
    inner: Mutex<Inner<C>>,
    capacity: usize,
    depth: metrics::Gauge,
}

struct Inner<C: Coordinator> {
    waiting: VecDeque<Queued<C>>,
    /// Whether the actor has been told and has not yet emptied the queue.
    awake: bool,
}

impl<C: Coordinator> RequestQueue<C> {
    /// An empty queue for `role` holding at most `capacity` requests.
    pub(crate) fn new(role: &str, capacity: usize) -> Self {
        let depth = metrics::gauge!(telemetry::QUEUED_REQUESTS, "role" => role.to_owned());
        depth.set(0.0);
        Self {
            inner: Mutex::new(Inner {
                waiting: VecDeque::new(),
                awake: false,
            }),
            capacity,
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

    /// Queues `queued` behind every request already waiting, unless the queue is full.
    pub(crate) fn push(&self, queued: Queued<C>) -> Pushed<C> {
        let mut inner = self.lock();
        if inner.waiting.len() >= self.capacity {
            return Pushed::Full(queued);
        }
        inner.waiting.push_back(queued);
        self.depth.set(inner.waiting.len() as f64);
        let wake = !std::mem::replace(&mut inner.awake, true);
        Pushed::Queued { wake }
    }

    /// Takes up to `max` requests in arrival order, and whether more wait.
    /// When none are left the queue goes idle: the next push wakes the actor.
    pub(crate) fn take(&self, max: usize) -> (Vec<Queued<C>>, bool) {
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
            deadline: Instant::now(),
            timeout: Duration::ZERO,
        }
    }

    fn requests(taken: &[Queued<Echo>]) -> Vec<u32> {
        taken.iter().map(|queued| queued.request).collect()
    }

    #[test]
    fn a_burst_wakes_the_actor_once_per_batch_and_keeps_arrival_order() {
        let queue = RequestQueue::<Echo>::new("r", 10);
        let wakes: Vec<bool> = (0..5)
            .map(|n| match queue.push(queued(n)) {
                Pushed::Queued { wake } => wake,
                Pushed::Full(_) => panic!("not full"),
            })
            .collect();
        assert_eq!(wakes, [true, false, false, false, false]);
        let (first, more) = queue.take(3);
        assert_eq!((requests(&first), more), (vec![0, 1, 2], true));
        // Still awake: the actor drains the rest without being told again.
        assert!(matches!(
            queue.push(queued(5)),
            Pushed::Queued { wake: false }
        ));
        let (rest, more) = queue.take(10);
        assert_eq!((requests(&rest), more), (vec![3, 4, 5], false));
        // Emptied: the next push wakes it.
        assert!(matches!(
            queue.push(queued(6)),
            Pushed::Queued { wake: true }
        ));
    }

    #[test]
    fn a_full_queue_hands_the_request_back_until_a_take_makes_room() {
        let queue = RequestQueue::<Echo>::new("r", 2);
        assert_eq!(queue.capacity(), 2);
        for n in 0..2 {
            assert!(matches!(queue.push(queued(n)), Pushed::Queued { .. }));
        }
        match queue.push(queued(2)) {
            Pushed::Full(refused) => assert_eq!(refused.request, 2),
            Pushed::Queued { .. } => panic!("a full queue took a request"),
        }
        assert_eq!(requests(&queue.take(1).0), vec![0]);
        assert!(matches!(queue.push(queued(3)), Pushed::Queued { .. }));
        assert_eq!(requests(&queue.take_all()), vec![1, 3]);
    }
}
