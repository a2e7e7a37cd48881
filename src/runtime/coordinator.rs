//! The coordinator actor: wraps the user's `Coordinator`, keeps it in standby until the election activates it, and answers requests.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::coordinator::{Coordinator, ServeError};
use crate::fence::FencedStore;
use crate::runtime::faults::Faults;
use crate::runtime::term::Term;
use crate::task::{OwnedTask, panic_message};

/// The coordinator actor of one role: wraps the user's [`Coordinator`].
pub(crate) struct CoordinatorActor<C: Coordinator> {
    coordinator: Arc<C>,
    role: String,
    buffer_capacity: usize,
    deactivate_timeout: Duration,
    faults: Arc<Faults>,
}

impl<C: Coordinator> CoordinatorActor<C> {
    /// An actor for `role` with the activation buffer and deactivation bound
    /// from config, and the role's fault switches.
    pub(crate) fn new(
        coordinator: Arc<C>,
        role: String,
        buffer_capacity: usize,
        deactivate_timeout: Duration,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            coordinator,
            role,
            buffer_capacity,
            deactivate_timeout,
            faults,
        }
    }
}

/// A request's reply port.
pub(crate) type ServeReply<C> = RpcReplyPort<Result<<C as Coordinator>::Response, ServeError>>;

/// Messages to a coordinator actor. The election actor sends `Elected`,
/// `Activate` and `Deactivate` itself, so they arrive in the order it
/// decided them; each names the term it is for.
pub(crate) enum CoordinatorMsg<C: Coordinator> {
    /// A user request; answered with the response, or why it is not served here.
    Request {
        /// The request.
        request: C::Request,
        /// Where the answer goes.
        reply: ServeReply<C>,
    },
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

/// A request that arrived while activating.
struct Waiting<C: Coordinator> {
    request: C::Request,
    reply: ServeReply<C>,
}

enum Phase<C: Coordinator> {
    Standby,
    /// Won, reloading or activating: requests wait, up to the buffer size.
    Activating {
        term: Term,
        waiting: VecDeque<Waiting<C>>,
        /// Set once the metadata is in and the user's activation runs.
        running: Option<RunningActivation>,
    },
    Serving {
        term: Term,
        serving: C::Serving,
    },
}

/// The user's activation, running in a task of its own so requests keep
/// being buffered meanwhile.
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

    /// Handles one request, only while `term` is open: checked before (a
    /// request that waited must not be answered for a term that ended
    /// meanwhile) and again after (an answer computed while the term ended,
    /// or across a freeze, must not leave).
    async fn serve(
        &self,
        term: &Term,
        serving: &mut C::Serving,
        request: C::Request,
        leader: Option<String>,
    ) -> Result<C::Response, ServeError> {
        if !term.is_open() {
            return Err(self.not_active(leader));
        }
        let response = self.coordinator.handle(serving, request).await;
        if !term.is_open() {
            return Err(self.not_active(leader));
        }
        Ok(response)
    }

    /// Answers requests held for an activation that will not complete.
    fn turn_away(&self, waiting: VecDeque<Waiting<C>>) {
        for waiter in waiting {
            let _ = waiter.reply.send(Err(ServeError::ActivationAborted {
                role: self.role.clone(),
            }));
        }
        metrics::gauge!(crate::telemetry::BUFFERED_MESSAGES, "role" => self.role.clone()).set(0.0);
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
            Phase::Activating { waiting, .. } => self.turn_away(waiting),
            Phase::Serving { term, serving } => {
                self.deactivate(&term, serving).await;
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
        state: &mut CoordinatorState<C>,
        term: Term,
        result: Result<C::Serving, String>,
    ) -> Result<(), ActorProcessingErr> {
        let current = matches!(&state.phase, Phase::Activating { term: t, running: Some(_), .. } if t.is(&term));
        if !current {
            return Ok(());
        }
        let Phase::Activating {
            waiting,
            running: Some(running),
            ..
        } = std::mem::replace(&mut state.phase, Phase::Standby)
        else {
            unreachable!("checked just above");
        };
        let mut serving = match result {
            Ok(serving) => serving,
            Err(reason) => {
                self.turn_away(waiting);
                // A failed activation is a crash: the election resigns and restarts us.
                return Err(format!("{} activation failed: {reason}", self.role).into());
            }
        };
        if term.is_closed() {
            // The election stepped down while the activation ran; its
            // Deactivate is on the way, but nothing may be served meanwhile.
            self.turn_away(waiting);
            self.deactivate(&term, serving).await;
            return Ok(());
        }
        term.start_serving();
        for waiter in waiting {
            let answer = self
                .serve(&term, &mut serving, waiter.request, state.leader.clone())
                .await;
            let _ = waiter.reply.send(answer);
        }
        metrics::gauge!(crate::telemetry::BUFFERED_MESSAGES, "role" => self.role.clone()).set(0.0);
        state.phase = Phase::Serving { term, serving };
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
            CoordinatorMsg::Request { request, reply } => match &mut state.phase {
                Phase::Activating { term, waiting, .. } if !term.is_closed() => {
                    if waiting.len() >= self.buffer_capacity {
                        let _ = reply.send(Err(ServeError::BufferFull {
                            role: self.role.clone(),
                            capacity: self.buffer_capacity,
                        }));
                    } else {
                        waiting.push_back(Waiting { request, reply });
                        metrics::gauge!(crate::telemetry::BUFFERED_MESSAGES, "role" => self.role.clone())
                            .set(waiting.len() as f64);
                    }
                }
                Phase::Serving { term, serving } => {
                    let answer = self
                        .serve(term, serving, request, state.leader.clone())
                        .await;
                    let _ = reply.send(answer);
                }
                // Standby, or a term that closed before it served.
                _ => {
                    let _ = reply.send(Err(self.not_active(state.leader.clone())));
                }
            },
            CoordinatorMsg::Elected { term } => {
                self.end_term(state).await;
                if !term.is_closed() {
                    state.phase = Phase::Activating {
                        term,
                        waiting: VecDeque::new(),
                        running: None,
                    };
                }
            }
            CoordinatorMsg::Activate(activation) => self.activate(myself, state, *activation),
            CoordinatorMsg::ActivationDone { term, result } => {
                self.activated(state, term, result).await?;
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
    }).await
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

    async fn started() -> (
        ActorRef<CoordinatorMsg<Counting>>,
        Arc<AtomicUsize>,
        Arc<Semaphore>,
    ) {
        let activations = Arc::new(AtomicUsize::new(0));
        let permits = Arc::new(Semaphore::new(0));
        let coordinator = Counting {
            activations: activations.clone(),
            permits: permits.clone(),
        };
        let actor = CoordinatorActor::new(
            Arc::new(coordinator),
            "r".into(),
            10,
            Duration::from_secs(1),
            Arc::default(),
        );
        let (actor, _) = Actor::spawn(None, actor, ())
            .await
            .expect("the actor starts");
        (actor, activations, permits)
    }

    /// Sends an activation for `term` and returns what its reply port gets.
    async fn activate(
        actor: &ActorRef<CoordinatorMsg<Counting>>,
        term: &Term,
    ) -> oneshot::Receiver<()> {
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
            .send_message(CoordinatorMsg::Activate(Box::new(activation)))
            .expect("the actor runs");
        served
    }

    async fn request(actor: &ActorRef<CoordinatorMsg<Counting>>) -> Result<(), ServeError> {
        let (reply, answer) = oneshot::channel();
        actor
            .send_message(CoordinatorMsg::Request {
                request: (),
                reply: reply.into(),
            })
            .expect("the actor runs");
        answer.await.expect("every request is answered")
    }

    async fn deactivate(actor: &ActorRef<CoordinatorMsg<Counting>>) {
        let (reply, done) = oneshot::channel();
        actor
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
        actor.stop(None);
    }

    #[tokio::test]
    async fn requests_buffered_for_a_term_that_closes_during_activation_are_not_replayed() {
        let (actor, activations, permits) = started().await;
        let won = term(8);
        actor
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
        actor.stop(None);
    }

    #[tokio::test]
    async fn an_activation_for_another_term_than_the_elected_one_is_refused() {
        let (actor, activations, _permits) = started().await;
        actor
            .send_message(CoordinatorMsg::Elected { term: term(9) })
            .unwrap();
        let served = activate(&actor, &term(9)).await;
        assert!(
            served.await.is_err(),
            "an activation for a term never elected was accepted"
        );
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        actor.stop(None);
    }
}
