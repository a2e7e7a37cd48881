//! The coordinator actor: wraps the user's `Coordinator`, keeps it in standby until the election activates it, and answers requests.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::coordinator::{Coordinator, ServeError};
use crate::fence::FencedStore;
use crate::runtime::faults::Faults;
use crate::runtime::queue::{Queued, RequestQueue, ServeReply};
use crate::runtime::term::Term;
use crate::task::{DroppedElsewhere, OwnedTask, panic_message};

/// The coordinator actor of one role: wraps the user's [`Coordinator`].
pub(crate) struct CoordinatorActor<C: Coordinator> {
    coordinator: Arc<C>,
    role: String,
    queue: Arc<RequestQueue<C>>,
    deactivate_timeout: Duration,
    faults: Arc<Faults>,
    dropped: DroppedCounters,
}

/// Requests dropped before `handle`, by why.
struct DroppedCounters {
    /// Their caller had gone (timed out, cancelled).
    abandoned: metrics::Counter,
    /// Their deadline had passed.
    expired: metrics::Counter,
    /// Their deadline would pass before the batch was served.
    late: metrics::Counter,
}

impl<C: Coordinator> CoordinatorActor<C> {
    /// An actor for `role` taking its requests from `queue` a batch at a
    /// time, with the deactivation bound from config and the role's fault
    /// switches.
    pub(crate) fn new(
        coordinator: Arc<C>,
        role: String,
        queue: Arc<RequestQueue<C>>,
        deactivate_timeout: Duration,
        faults: Arc<Faults>,
    ) -> Self {
        let dropped = |reason: &'static str| metrics::counter!(crate::telemetry::REQUESTS_DROPPED, "role" => role.clone(), "reason" => reason);
        let dropped = DroppedCounters {
            abandoned: dropped("abandoned"),
            expired: dropped("expired"),
            late: dropped("late"),
        };
        Self {
            coordinator,
            role,
            queue,
            deactivate_timeout,
            faults,
            dropped,
        }
    }
}

/// A running coordinator actor and the queue its requests wait in: what
/// callers hand requests to.
pub(crate) struct CoordinatorRef<C: Coordinator> {
    /// The actor.
    pub actor: ActorRef<CoordinatorMsg<C>>,
    /// Its requests.
    pub queue: Arc<RequestQueue<C>>,
}

impl<C: Coordinator> Clone for CoordinatorRef<C> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            queue: self.queue.clone(),
        }
    }
}

/// Messages to a coordinator actor. The election actor sends `Elected`,
/// `Activate` and `Deactivate` itself, so they arrive in the order it
/// decided them; each names the term it is for.
pub(crate) enum CoordinatorMsg<C: Coordinator> {
    /// Requests wait in the queue: serve a batch of them, or answer why
    /// they are not served here. Sent by the caller whose request woke an
    /// idle queue, and by the actor to itself while more wait.
    Drain,
    /// This node won `term`: hold requests until it serves or the term closes.
    Elected {
        /// The won term.
        term: Term,
    },
    /// The metadata is loaded: activate (boxed: it is much larger than a request).
    /// Refused (the reply dropped) unless its term is the one elected and still open.
    Activate(Box<Activation<C>>),
    /// The activation task for `term` finished.
    ActivationDone {
        /// The term it was for.
        term: Term,
        /// The serving state, or why activation failed.
        result: Result<C::Serving, String>,
    },
    /// Go back to standby; answered once the deactivation hook has run.
    Deactivate {
        /// Answered in standby.
        reply: RpcReplyPort<()>,
    },
    /// The leader this node sees changed; standby answers carry its address.
    LeaderChanged(Option<String>),
    /// Panic in the actor, as a bug would (fault injection for tests: `RoleHandle::crash_*`, `standin run --fault-injection`).
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

/// What an activation needs.
pub(crate) struct Activation<C: Coordinator> {
    /// The won term.
    pub term: Term,
    /// The reloaded metadata.
    pub meta: C::Meta,
    /// The store fenced to the term.
    pub store: FencedStore,
    /// Answered when the coordinator serves; dropped when the activation is refused.
    pub reply: RpcReplyPort<()>,
}

enum Phase<C: Coordinator> {
    Standby,
    /// Won, reloading or activating: requests wait in the queue.
    Activating {
        term: Term,
        /// Set once the metadata is in and the user's activation runs.
        running: Option<RunningActivation>,
    },
    Serving {
        term: Term,
        /// Dropped off the runtime if the actor crashes with it.
        serving: DroppedElsewhere<C::Serving>,
    },
}

/// The user's activation, running in a task of its own so the actor keeps
/// taking messages (a deactivation) meanwhile.
struct RunningActivation {
    ready: RpcReplyPort<()>,
    _task: OwnedTask,
}

/// What a coordinator actor's state changes between messages.
pub(crate) struct CoordinatorState<C: Coordinator> {
    phase: Phase<C>,
    leader: Option<String>,
}

impl<C: Coordinator> CoordinatorActor<C> {
    fn not_active(&self, leader: Option<String>) -> ServeError {
        ServeError::NotActive {
            role: self.role.clone(),
            leader,
        }
    }

    /// Serves a batch of waiting requests, only while `term` is open:
    /// checked before (requests that waited must not be answered for a
    /// term that ended meanwhile) and again after (answers computed while
    /// the term ended, or across a freeze, must not leave), and with
    /// `coordinator.confirmAnswers` confirmed by etcd before they leave
    /// (see [`Term::confirm`]). Requests whose
    /// caller has gone, whose deadline has passed, or whose deadline would
    /// pass before the batch is served are dropped first: refused, not
    /// run for nobody.
    async fn serve_batch(
        &self,
        term: &Term,
        serving: &mut C::Serving,
        batch: Vec<Queued<C>>,
        leader: Option<String>,
    ) {
        let now = std::time::Instant::now();
        let served_by = now + self.queue.time_to_serve(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for queued in batch {
            if queued.reply.is_closed() {
                self.dropped.abandoned.increment(1);
            } else if queued.deadline <= now {
                self.dropped.expired.increment(1);
                let _ = queued.reply.send(Err(ServeError::TimedOut {
                    role: self.role.clone(),
                    timeout: queued.timeout,
                }));
            } else if queued.deadline < served_by {
                self.dropped.late.increment(1);
                let _ = queued.reply.send(Err(ServeError::WouldBeLate {
                    role: self.role.clone(),
                    wait: served_by - now,
                    left: queued.deadline - now,
                }));
            } else {
                requests.push(queued.request);
                replies.push(queued.reply);
            }
        }
        if replies.is_empty() {
            return;
        }
        if !term.is_open() {
            return self.answer_all(replies, || self.not_active(leader.clone()));
        }
        let asked = replies.len();
        let started = std::time::Instant::now();
        let responses = self.coordinator.handle_batch(serving, requests).await;
        self.queue.served(started.elapsed());
        // Confirmed after they were computed: the requests that arrive
        // meanwhile wait in the queue for the next batch, and its read.
        if !term.is_open() || !term.confirm().await || !term.is_open() {
            return self.answer_all(replies, || self.not_active(leader.clone()));
        }
        if responses.len() != asked {
            tracing::error!(
                role = self.role,
                asked,
                answered = responses.len(),
                "the coordinator's handle_batch answered {} of {asked} requests; the rest are \
                 answered unavailable",
                responses.len()
            );
        }
        let mut replies = replies.into_iter();
        for (reply, response) in replies.by_ref().zip(responses) {
            let _ = reply.send(Ok(response));
        }
        self.answer_all(replies.collect(), || ServeError::Unavailable {
            role: self.role.clone(),
        });
    }

    fn answer_all(&self, replies: Vec<ServeReply<C>>, error: impl Fn() -> ServeError) {
        for reply in replies {
            let _ = reply.send(Err(error()));
        }
    }

    /// Answers every request waiting with `error`: none will be served by this term.
    fn turn_away(&self, error: impl Fn() -> ServeError) {
        let waiting = self.queue.take_all();
        self.answer_all(
            waiting.into_iter().map(|queued| queued.reply).collect(),
            error,
        );
    }

    fn aborted(&self) -> ServeError {
        ServeError::ActivationAborted {
            role: self.role.clone(),
        }
    }

    /// Serves the next batch while the term serves, and tells itself to
    /// come back while more wait, so that messages from the election (a
    /// deactivation) get in between batches; answers why not otherwise.
    async fn drain(&self, myself: &ActorRef<CoordinatorMsg<C>>, state: &mut CoordinatorState<C>) {
        match &mut state.phase {
            // Served once the activation completes.
            Phase::Activating { term, .. } if !term.is_closed() => {}
            Phase::Serving { term, serving } => {
                let (batch, more) = self.queue.take_batch();
                self.serve_batch(term, serving, batch, state.leader.clone())
                    .await;
                if more {
                    let _ = myself.send_message(CoordinatorMsg::Drain);
                }
            }
            // Standby, or a term that closed before it served.
            _ => self.turn_away(|| self.not_active(state.leader.clone())),
        }
    }

    /// Runs the user's deactivation hook, bounded by `coordinator.deactivateTimeout`.
    async fn deactivate(&self, term: &Term, serving: C::Serving) {
        let hook = self.coordinator.deactivate(serving);
        if tokio::time::timeout(self.deactivate_timeout, hook)
            .await
            .is_err()
        {
            tracing::warn!(
                role = self.role,
                revision = term.revision(),
                "deactivation hook did not finish within {:?}; abandoned",
                self.deactivate_timeout
            );
        }
    }

    /// Ends any term in progress: runs the deactivation hook of a serving
    /// term (bounded), and turns away requests waiting for an activation.
    async fn end_term(&self, state: &mut CoordinatorState<C>) {
        match std::mem::replace(&mut state.phase, Phase::Standby) {
            Phase::Standby => {}
            Phase::Activating { .. } => self.turn_away(|| self.aborted()),
            Phase::Serving { term, serving } => {
                self.turn_away(|| self.not_active(state.leader.clone()));
                self.deactivate(&term, serving.into_inner()).await;
                tracing::info!(
                    role = self.role,
                    "{} switch from active to standby",
                    self.role
                );
            }
        }
    }

    /// Starts the user's activation for `activation.term`, if that is the
    /// term this coordinator was told it won and the term is still open.
    fn activate(
        &self,
        myself: ActorRef<CoordinatorMsg<C>>,
        state: &mut CoordinatorState<C>,
        activation: Activation<C>,
    ) {
        let Activation {
            term,
            meta,
            store,
            reply,
        } = activation;
        let Phase::Activating {
            term: elected,
            running: running @ None,
            ..
        } = &mut state.phase
        else {
            tracing::debug!(
                role = self.role,
                revision = term.revision(),
                "refusing an activation for a term this coordinator was not elected for"
            );
            return;
        };
        if !elected.is(&term) || term.is_closed() {
            tracing::debug!(
                role = self.role,
                revision = term.revision(),
                "refusing an activation for a term that is over"
            );
            return;
        }
        tracing::info!(
            role = self.role,
            revision = term.revision(),
            "{} switch from standby to active, activating",
            self.role
        );
        let coordinator = self.coordinator.clone();
        let faults = self.faults.clone();
        let task = OwnedTask::spawn(async move {
            faults.activation_started().await;
            let activation = coordinator.activate(term.epoch().clone(), meta, store);
            let result = match AssertUnwindSafe(activation).catch_unwind().await {
                Ok(Ok(serving)) => Ok(serving),
                Ok(Err(error)) => Err(error.to_string()),
                Err(panic) => Err(panic_message(panic.as_ref())),
            };
            // Activated, but serving waits until the term settles (the
            // grace after a death witness's revoke), run beside it.
            term.until_settled().await;
            let _ = myself.send_message(CoordinatorMsg::ActivationDone { term, result });
        });
        *running = Some(RunningActivation {
            ready: reply,
            _task: task,
        });
    }

    /// Serves the term whose activation finished, replaying the requests
    /// that waited for it; or, if the term closed meanwhile, turns them away
    /// and undoes the activation.
    async fn activated(
        &self,
        myself: &ActorRef<CoordinatorMsg<C>>,
        state: &mut CoordinatorState<C>,
        term: Term,
        result: Result<C::Serving, String>,
    ) -> Result<(), ActorProcessingErr> {
        let current = matches!(&state.phase, Phase::Activating { term: t, running: Some(_), .. } if t.is(&term));
        if !current {
            return Ok(());
        }
        let Phase::Activating {
            running: Some(running),
            ..
        } = std::mem::replace(&mut state.phase, Phase::Standby)
        else {
            unreachable!("checked just above");
        };
        let serving = match result {
            Ok(serving) => serving,
            Err(reason) => {
                self.turn_away(|| self.aborted());
                // A failed activation is a crash: the election resigns and restarts us.
                return Err(format!("{} activation failed: {reason}", self.role).into());
            }
        };
        if term.is_closed() {
            // The election stepped down while the activation ran; its
            // Deactivate is on the way, but nothing may be served meanwhile.
            self.turn_away(|| self.aborted());
            self.deactivate(&term, serving).await;
            return Ok(());
        }
        term.start_serving();
        state.phase = Phase::Serving {
            term,
            serving: DroppedElsewhere::new(serving),
        };
        // The requests that waited for the activation go first, in order.
        let _ = myself.send_message(CoordinatorMsg::Drain);
        let _ = running.ready.send(());
        Ok(())
    }
}

impl<C: Coordinator> Actor for CoordinatorActor<C> {
    type Msg = CoordinatorMsg<C>;
    type State = CoordinatorState<C>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CoordinatorState {
            phase: Phase::Standby,
            leader: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: see "Memory" in runtime.rs.
        Box::pin(async move {
            match message {
                CoordinatorMsg::Drain => self.drain(&myself, state).await,
                CoordinatorMsg::Elected { term } => {
                    self.end_term(state).await;
                    if !term.is_closed() {
                        state.phase = Phase::Activating {
                            term,
                            running: None,
                        };
                    }
                }
                CoordinatorMsg::Activate(activation) => self.activate(myself, state, *activation),
                CoordinatorMsg::ActivationDone { term, result } => {
                    self.activated(&myself, state, term, result).await?;
                }
                CoordinatorMsg::Deactivate { reply } => {
                    self.end_term(state).await;
                    let _ = reply.send(());
                }
                CoordinatorMsg::LeaderChanged(leader) => state.leader = leader,
                #[cfg(feature = "fault-injection")]
                CoordinatorMsg::InjectPanic => {
                    panic!("fault injected into the {} coordinator", self.role)
                }
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{Semaphore, oneshot};

    use super::*;
    use crate::coordinator::{BoxError, Snapshot};
    use crate::fence::Epoch;

    /// Counts activations; each activation waits for a permit.
    struct Counting {
        activations: Arc<AtomicUsize>,
        permits: Arc<Semaphore>,
    }

    impl Coordinator for Counting {
        type Meta = ();
        type Serving = ();
        type Request = ();
        type Response = ();

        fn decode(&self, _: Snapshot) -> Result<(), BoxError> {
            Ok(())
        }

        async fn activate(&self, _: Epoch, _: (), _: FencedStore) -> Result<(), BoxError> {
            self.activations.fetch_add(1, Ordering::SeqCst);
            self.permits.acquire().await?.forget();
            Ok(())
        }

        async fn handle(&self, _: &mut (), _: ()) {}
    }

    fn term(revision: i64) -> Term {
        let epoch = Epoch {
            role: "r".into(),
            leader_key: "k".into(),
            revision,
        };
        Term::open(epoch, 1, crate::runtime::session::SessionView::trusting(1))
    }

    async fn started() -> (CoordinatorRef<Counting>, Arc<AtomicUsize>, Arc<Semaphore>) {
        let activations = Arc::new(AtomicUsize::new(0));
        let permits = Arc::new(Semaphore::new(0));
        let coordinator = Counting {
            activations: activations.clone(),
            permits: permits.clone(),
        };
        let queue = Arc::new(RequestQueue::new("r", 10, 4));
        let actor = CoordinatorActor::new(
            Arc::new(coordinator),
            "r".into(),
            queue.clone(),
            Duration::from_secs(1),
            Arc::default(),
        );
        let (actor, _) = Actor::spawn(None, actor, ())
            .await
            .expect("the actor starts");
        (CoordinatorRef { actor, queue }, activations, permits)
    }

    /// Sends an activation for `term` and returns what its reply port gets.
    async fn activate(actor: &CoordinatorRef<Counting>, term: &Term) -> oneshot::Receiver<()> {
        // Lazy: no connection is made until a write, and none is made here.
        let client = etcd_client::Client::connect(["127.0.0.1:9"], None)
            .await
            .expect("a lazy client");
        let (reply, served) = oneshot::channel();
        let activation = Activation {
            term: term.clone(),
            meta: (),
            store: term.store(client, "p/".into()),
            reply: reply.into(),
        };
        actor
            .actor
            .send_message(CoordinatorMsg::Activate(Box::new(activation)))
            .expect("the actor runs");
        served
    }

    /// Queues a request as a caller does, waking the actor when it must.
    fn submit(
        actor: &CoordinatorRef<Counting>,
        deadline: std::time::Instant,
    ) -> oneshot::Receiver<Result<(), ServeError>> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            request: (),
            reply: reply.into(),
            deadline,
            timeout: Duration::from_secs(1),
        };
        // Pushed by its deadline at the latest: one that expires waiting
        // is queued as a caller in time would have queued it.
        let pushed = std::time::Instant::now().min(deadline);
        match actor.queue.push(queued, pushed) {
            crate::runtime::queue::Pushed::Queued { wake: true } => {
                actor
                    .actor
                    .send_message(CoordinatorMsg::Drain)
                    .expect("the actor runs");
            }
            crate::runtime::queue::Pushed::Queued { wake: false } => {}
            crate::runtime::queue::Pushed::Full(_) => panic!("the queue is full"),
            crate::runtime::queue::Pushed::Late { .. } => panic!("refused as late"),
        }
        answer
    }

    async fn request(actor: &CoordinatorRef<Counting>) -> Result<(), ServeError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        submit(actor, deadline)
            .await
            .expect("every request is answered")
    }

    async fn deactivate(actor: &CoordinatorRef<Counting>) {
        let (reply, done) = oneshot::channel();
        actor
            .actor
            .send_message(CoordinatorMsg::Deactivate {
                reply: reply.into(),
            })
            .expect("the actor runs");
        done.await.expect("deactivation answers");
    }

    #[tokio::test]
    async fn an_activation_that_arrives_after_its_deactivation_is_refused() {
        let (actor, activations, _permits) = started().await;
        let won = term(7);
        actor
            .actor
            .send_message(CoordinatorMsg::Elected { term: won.clone() })
            .unwrap();
        won.close();
        deactivate(&actor).await;
        let served = activate(&actor, &won).await;
        assert!(
            served.await.is_err(),
            "the activation of a closed term was accepted"
        );
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        assert!(matches!(
            request(&actor).await,
            Err(ServeError::NotActive { .. })
        ));
        actor.actor.stop(None);
    }

    #[tokio::test]
    async fn requests_buffered_for_a_term_that_closes_during_activation_are_not_replayed() {
        let (actor, activations, permits) = started().await;
        let won = term(8);
        actor
            .actor
            .send_message(CoordinatorMsg::Elected { term: won.clone() })
            .unwrap();
        let served = activate(&actor, &won).await;
        let buffered = tokio::spawn({
            let actor = actor.clone();
            async move { request(&actor).await }
        });
        // The activation runs (and the request waits behind it); then the term ends.
        while activations.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        won.close();
        permits.add_permits(1);
        let answer = buffered.await.unwrap();
        assert!(
            matches!(
                answer,
                Err(ServeError::ActivationAborted { .. } | ServeError::NotActive { .. })
            ),
            "{answer:?}"
        );
        assert!(
            served.await.is_err(),
            "a closed term's activation reported serving"
        );
        assert!(!won.serves());
        assert!(matches!(
            request(&actor).await,
            Err(ServeError::NotActive { .. })
        ));
        actor.actor.stop(None);
    }

    #[tokio::test]
    async fn an_activation_for_another_term_than_the_elected_one_is_refused() {
        let (actor, activations, _permits) = started().await;
        actor
            .actor
            .send_message(CoordinatorMsg::Elected { term: term(9) })
            .unwrap();
        let served = activate(&actor, &term(9)).await;
        assert!(
            served.await.is_err(),
            "an activation for a term never elected was accepted"
        );
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        actor.actor.stop(None);
    }

    #[tokio::test]
    async fn waiting_requests_are_served_in_batches_and_expired_or_abandoned_ones_are_dropped() {
        let (actor, _activations, permits) = started().await;
        let won = term(10);
        actor
            .actor
            .send_message(CoordinatorMsg::Elected { term: won.clone() })
            .unwrap();
        let served = activate(&actor, &won).await;
        let now = std::time::Instant::now();
        let later = now + Duration::from_secs(10);
        // Queued while activating: one already expired, one abandoned, six live.
        let expired = submit(&actor, now);
        drop(submit(&actor, later));
        let live: Vec<_> = (0..6).map(|_| submit(&actor, later)).collect();
        permits.add_permits(1);
        served.await.expect("the activation completes");
        for answer in live {
            assert_eq!(answer.await.expect("answered"), Ok(()));
        }
        assert!(matches!(
            expired.await.expect("answered"),
            Err(ServeError::TimedOut { .. })
        ));
        assert_eq!(actor.queue.take_all().len(), 0);
        actor.actor.stop(None);
    }
}
