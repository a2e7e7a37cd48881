//! The role supervisor: runs a role's election actor and, once asked for, its endpoint; restarts a failed endpoint at once, and a failed election actor with backoff, once its key is deleted.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::backoff::Backoff;
use crate::coordinator::Coordinator;
use crate::etcd::recipe;
use crate::etcd::session::RoleState;
use crate::runtime::context::{NodeContext, RoleShared};
use crate::runtime::election::{Election, ElectionMsg};
use crate::runtime::endpoint::endpoint_of;
use crate::runtime::slot::Slot;
use crate::task::OwnedTask;

/// The role's running election actor, if any: set by its supervisor, read
/// by the role's handles to resign (kept apart from [`RoleShared`], which the
/// election actor itself writes).
pub(crate) type ElectionSlot<C> = Arc<Slot<ActorRef<ElectionMsg<C>>>>;

/// Supervises one role's election actor.
pub(crate) struct RoleSupervisor<C: Coordinator> {
    role: String,
    coordinator: Arc<C>,
    context: Arc<NodeContext>,
    shared: Arc<RoleShared<C>>,
    election_slot: ElectionSlot<C>,
}

impl<C: Coordinator> RoleSupervisor<C> {
    /// A supervisor for `role`, publishing its election actor in `election_slot`.
    pub(crate) fn new(
        role: String,
        coordinator: Arc<C>,
        context: Arc<NodeContext>,
        shared: Arc<RoleShared<C>>,
        election_slot: ElectionSlot<C>,
    ) -> Self {
        Self {
            role,
            coordinator,
            context,
            shared,
            election_slot,
        }
    }

    async fn start_election(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut RoleSupervisorState<C>,
    ) -> Result<(), ActorProcessingErr> {
        let election = Election::new(
            self.role.clone(),
            self.coordinator.clone(),
            self.context.clone(),
            self.shared.clone(),
        );
        let (actor, _) = Actor::spawn_linked(None, election, (), myself.get_cell()).await?;
        self.election_slot.set(Some(actor.clone()));
        state.election = Some(actor);
        state.started_at = Instant::now();
        Ok(())
    }
}

/// Messages to a role supervisor.
pub(crate) enum SupervisorMsg {
    /// Start the election actor again (after the restart backoff).
    StartElection,
    /// Hand the role over and stop; answered once the election actor has stopped.
    Shutdown(RpcReplyPort<()>),
}

/// What a role supervisor's state changes between messages.
pub(crate) struct RoleSupervisorState<C: Coordinator> {
    election: Option<ActorRef<ElectionMsg<C>>>,
    backoff: Backoff,
    started_at: Instant,
    shutting_down: bool,
    /// The retried delete of a failed election actor's key, then its restart.
    releasing: Option<OwnedTask>,
}

impl<C: Coordinator> Actor for RoleSupervisor<C> {
    type Msg = SupervisorMsg;
    type State = RoleSupervisorState<C>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = RoleSupervisorState {
            election: None,
            backoff: Backoff::new(self.context.config.coordinator.restart_backoff.clone()),
            started_at: Instant::now(),
            shutting_down: false,
            releasing: None,
        };
        self.shared.supervisor.set(Some(myself.get_cell()));
        self.start_election(&myself, &mut state).await?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.shared.supervisor.set(None);
        Ok(())
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
                SupervisorMsg::StartElection => {
                    if !state.shutting_down && state.election.is_none() {
                        self.start_election(&myself, state).await?;
                    }
                }
                SupervisorMsg::Shutdown(reply) => {
                    state.shutting_down = true;
                    if let Some(election) = state.election.take() {
                        let bound = self.context.config.handover_bound();
                        let handed_over = ractor::call_t!(
                            election,
                            ElectionMsg::Shutdown,
                            bound.as_millis() as u64
                        );
                        if let Err(error) = handed_over {
                            tracing::warn!(role = self.role, "graceful handover failed: {error}");
                            election.kill();
                            // The handover bound is spent: the node's lease,
                            // revoked once every role has stopped, ends the key.
                            self.shared.lease.set(None);
                        }
                    }
                    let _ = reply.send(());
                    myself.stop(None);
                }
            }
            Ok(())
        })
        .await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: see "Memory" in runtime.rs.
        Box::pin(async move {
            let (cell, reason) = match event {
                SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
                SupervisionEvent::ActorTerminated(cell, _, reason) => {
                    (cell, reason.unwrap_or_else(|| "stopped".into()))
                }
                _ => return Ok(()),
            };
            if state.shutting_down {
                return Ok(());
            }
            let is = |actor: Option<ActorCell>| actor.is_some_and(|a| a.get_id() == cell.get_id());
            if is(self.shared.endpoint.get().map(|e| e.get_cell())) {
                // It holds no state: a new one takes the role's messages at once.
                tracing::error!(
                    role = self.role,
                    "role endpoint failed ({reason}); restarting it"
                );
                self.shared.endpoint.set(None);
                endpoint_of(&self.shared).await;
                return Ok(());
            }
            if !is(state.election.as_ref().map(|e| e.get_cell())) {
                return Ok(());
            }
            state.election = None;
            self.election_slot.set(None);
            // The coordinator was linked to the election actor, so ractor has
            // already killed it; make sure nothing can still route to it and
            // that the election holds no key on the node's lease.
            self.shared.coordinator.set(None);
            if self.shared.is_stopped() {
                return Ok(());
            }
            self.shared.status.send_modify(|status| {
                status.state = RoleState::Standby;
                status.epoch = None;
                status.lease = None;
            });
            crate::telemetry::set_role_state(&self.role, RoleState::Standby);
            if state.started_at.elapsed() > self.context.config.coordinator.restart_backoff.max {
                state.backoff.reset();
            }
            let delay = state.backoff.next_delay();
            tracing::error!(
                role = self.role,
                restart_in_ms = delay.as_millis() as u64,
                "election actor failed ({reason}); its key is deleted and it restarts"
            );
            metrics::counter!(crate::telemetry::ELECTION_RESTARTS, "role" => self.role.clone())
                .increment(1);
            // The key goes first, so a peer takes over now; the lease is the
            // node's and stays, for the other roles on it. The restart waits
            // for the delete: campaigning on the same lease would find the old
            // key and win again at its epoch.
            let lease = self.shared.lease.take();
            let key = lease.map(|lease| {
                recipe::candidate_key(&self.context.layout.election(&self.role), lease)
            });
            let context = self.context.clone();
            let restart = myself.clone();
            let release = async move {
                let waited = tokio::time::sleep(delay);
                if let (Some(lease), Some(key)) = (lease, key)
                    && context.release_key(&key, lease).await
                {
                    tracing::info!(key, "deleted the key of a failed election actor");
                }
                waited.await;
                let _ = restart.send_message(SupervisorMsg::StartElection);
            };
            state.releasing = Some(OwnedTask::spawn_reported(release, |reason| {
                tracing::error!("deleting a failed election actor's key {reason}");
            }));
            Ok(())
        })
        .await
    }
}
