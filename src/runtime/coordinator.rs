//! The coordinator actor: wraps the user's `Coordinator`, keeps it in standby until the election activates it, and answers requests.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::coordinator::{Coordinator, ServeError};
use crate::fence::{Epoch, FencedStore};
use crate::runtime::lease_guard::LeaseGuard;
use crate::task::OwnedTask;

/// The coordinator actor of one role: wraps the user's [`Coordinator`].
pub(crate) struct CoordinatorActor<C: Coordinator> {
    coordinator: Arc<C>,
    role: String,
    buffer_capacity: usize,
    deactivate_timeout: Duration,
    lease: Arc<LeaseGuard>,
}

impl<C: Coordinator> CoordinatorActor<C> {
    /// An actor for `role` with the activation buffer and deactivation bound from config.
    pub(crate) fn new(
        coordinator: Arc<C>,
        role: String,
        buffer_capacity: usize,
        deactivate_timeout: Duration,
        lease: Arc<LeaseGuard>,
    ) -> Self {
        Self {
            coordinator,
            role,
            buffer_capacity,
            deactivate_timeout,
            lease,
        }
    }
}

/// A request's reply port.
pub(crate) type ServeReply<C> = RpcReplyPort<Result<<C as Coordinator>::Response, ServeError>>;

/// Messages to a coordinator actor.
pub(crate) enum CoordinatorMsg<C: Coordinator> {
    /// A user request; answered with the response, or why it is not served here.
    Request {
        /// The request.
        request: C::Request,
        /// Where the answer goes.
        reply: ServeReply<C>,
    },
    /// This node won the term at `revision`: hold requests until it serves.
    Elected {
        /// The won term's revision.
        revision: i64,
    },
    /// The metadata is loaded: activate (boxed: it is much larger than a request).
    Activate(Box<Activation<C>>),
    /// The activation task for `revision` finished.
    ActivationDone {
        /// The epoch revision it was for.
        revision: i64,
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
    pub epoch: Epoch,
    /// The reloaded metadata.
    pub meta: C::Meta,
    /// The store fenced to `epoch`.
    pub store: FencedStore,
    /// Answered when the coordinator serves.
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
        revision: i64,
        waiting: VecDeque<Waiting<C>>,
        /// Set once the metadata is in and the user's activation runs.
        running: Option<RunningActivation>,
    },
    Serving {
        epoch: Epoch,
        serving: C::Serving,
    },
}

/// The user's activation, running in a task of its own so requests keep
/// being buffered meanwhile.
struct RunningActivation {
    epoch: Epoch,
    ready: RpcReplyPort<()>,
    _task: OwnedTask,
}

/// What a coordinator actor's state changes between messages.
pub(crate) struct CoordinatorState<C: Coordinator> {
    phase: Phase<C>,
    leader: Option<String>,
}

impl<C: Coordinator> CoordinatorActor<C> {
    fn not_active(&self, state: &CoordinatorState<C>) -> ServeError {
        ServeError::NotActive {
            role: self.role.clone(),
            leader: state.leader.clone(),
        }
    }

    /// Handles one request, only while the lease is trusted: checked before
    /// (a frozen process must not act on a lost lease) and again after (an
    /// answer computed across a pause must not leave).
    async fn serve(
        &self,
        serving: &mut C::Serving,
        request: C::Request,
        leader: Option<String>,
    ) -> Result<C::Response, ServeError> {
        let expired = || ServeError::NotActive {
            role: self.role.clone(),
            leader: leader.clone(),
        };
        if !self.lease.is_valid() {
            return Err(expired());
        }
        let response = self.coordinator.handle(serving, request).await;
        if !self.lease.is_valid() {
            return Err(expired());
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

    /// Ends any term in progress: runs the deactivation hook of a serving
    /// term (bounded), and turns away requests waiting for an activation.
    async fn end_term(&self, state: &mut CoordinatorState<C>) {
        match std::mem::replace(&mut state.phase, Phase::Standby) {
            Phase::Standby => {}
            Phase::Activating { waiting, .. } => self.turn_away(waiting),
            Phase::Serving { epoch, serving } => {
                let hook = self.coordinator.deactivate(serving);
                if tokio::time::timeout(self.deactivate_timeout, hook)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        role = self.role,
                        revision = epoch.revision,
                        "deactivation hook did not finish within {:?}; abandoned",
                        self.deactivate_timeout
                    );
                }
                tracing::info!(
                    role = self.role,
                    "{} switch from active to standby",
                    self.role
                );
            }
        }
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
        match message {
            CoordinatorMsg::Request { request, reply } => match &mut state.phase {
                Phase::Standby => {
                    let _ = reply.send(Err(self.not_active(state)));
                }
                Phase::Activating { waiting, .. } => {
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
                Phase::Serving { serving, .. } => {
                    let answer = self.serve(serving, request, state.leader.clone()).await;
                    let _ = reply.send(answer);
                }
            },
            CoordinatorMsg::Elected { revision } => {
                self.end_term(state).await;
                state.phase = Phase::Activating {
                    revision,
                    waiting: VecDeque::new(),
                    running: None,
                };
            }
            CoordinatorMsg::Activate(activation) => {
                let Activation {
                    epoch,
                    meta,
                    store,
                    reply,
                } = *activation;
                let revision = epoch.revision;
                let elected = matches!(&state.phase, Phase::Activating { revision: r, running: None, .. } if *r == revision);
                if !elected {
                    self.end_term(state).await;
                    state.phase = Phase::Activating {
                        revision,
                        waiting: VecDeque::new(),
                        running: None,
                    };
                }
                tracing::info!(
                    role = self.role,
                    revision,
                    "{} switch from standby to active, activating",
                    self.role
                );
                let coordinator = self.coordinator.clone();
                let activation_epoch = epoch.clone();
                let task = OwnedTask::spawn(async move {
                    let activation = coordinator.activate(activation_epoch, meta, store);
                    let result = match AssertUnwindSafe(activation).catch_unwind().await {
                        Ok(Ok(serving)) => Ok(serving),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(panic) => Err(panic_message(panic.as_ref())),
                    };
                    let _ =
                        myself.send_message(CoordinatorMsg::ActivationDone { revision, result });
                });
                if let Phase::Activating { running, .. } = &mut state.phase {
                    *running = Some(RunningActivation {
                        epoch,
                        ready: reply,
                        _task: task,
                    });
                }
            }
            CoordinatorMsg::ActivationDone { revision, result } => {
                let current = matches!(&state.phase, Phase::Activating { revision: r, running: Some(_), .. } if *r == revision);
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
                for waiter in waiting {
                    let answer = self
                        .serve(&mut serving, waiter.request, state.leader.clone())
                        .await;
                    let _ = waiter.reply.send(answer);
                }
                metrics::gauge!(crate::telemetry::BUFFERED_MESSAGES, "role" => self.role.clone())
                    .set(0.0);
                state.phase = Phase::Serving {
                    epoch: running.epoch,
                    serving,
                };
                let _ = running.ready.send(());
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
    }
}

/// The text of a caught panic, for logs and supervision reasons.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".to_owned()
    }
}
