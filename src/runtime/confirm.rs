//! Answers that leave only once etcd confirms their term (`coordinator.confirmAnswers`), one read for every batch computed while the previous read was out, as etcd's ReadIndex batches reads.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::runtime::term::Term;

/// What becomes of a computed batch: called with `true` once a read begun
/// after it was computed found its term's leader key, with `false` when
/// the key was gone, etcd did not answer, or the term closed.
pub(crate) type Release = Box<dyn FnOnce(bool) + Send>;

/// The confirmations of one serving term. At most one read is in flight;
/// the batches computed meanwhile wait for the next read, which begins
/// once they were all computed, so the coordinator computes the next batch
/// while the last one waits for etcd instead of after.
pub(crate) struct Confirmations {
    computed: mpsc::UnboundedSender<Release>,
    /// Room for answers awaiting their read: a queue's worth. Full, the
    /// coordinator waits, its queue fills, and callers are refused as
    /// overloaded, as without the mode.
    room: Arc<Semaphore>,
    capacity: usize,
}

impl Confirmations {
    /// Starts confirming `term`'s answers, with room for `capacity` of them
    /// awaiting a read at once.
    pub(crate) fn start(term: Term, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (computed, mut waiting) = mpsc::unbounded_channel::<Release>();
        // Not owned by the serving phase: when the term ends, what already
        // waits is still answered (refused, the term being closed) once the
        // read in flight returns, within `etcd.requestTimeout`; then the
        // channel is empty and closed, and the task ends.
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batches = vec![first];
                while let Ok(next) = waiting.try_recv() {
                    batches.push(next);
                }
                let confirmed = term.is_open() && term.confirm().await && term.is_open();
                for release in batches {
                    release(confirmed);
                }
            }
        });
        Self {
            computed,
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Hands a batch of `answers` answers to the next read, once there is
    /// room for them; `release` says what to do when the read returns.
    pub(crate) async fn release_when_confirmed(&self, answers: usize, release: Release) {
        let wanted = answers.clamp(1, self.capacity) as u32;
        let Ok(room) = self.room.clone().acquire_many_owned(wanted).await else {
            return release(false);
        };
        let held = Box::new(move |confirmed: bool| {
            release(confirmed);
            drop(room);
        });
        if let Err(refused) = self.computed.send(held) {
            (refused.0)(false);
        }
    }
}
