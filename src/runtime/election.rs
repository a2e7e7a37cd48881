//! The election actor: campaigns with a role's key on the node's session lease, owns the serving term, and supervises the role's coordinator and reload actors.
//!
//! Decisions are made by [`machine::ElectionMachine`]; this actor turns etcd
//! replies, timers and supervision events into its events and runs one method
//! per [`Command`]. Every etcd call runs in a task the actor owns, which
//! reports back as a message tagged with what it belongs to (a lease, a
//! campaign generation, a reload generation, a term's revision), so the
//! mailbox never waits on etcd, the renew deadline is always checked, and a
//! late reply from an earlier attempt is recognised. Messages to the
//! coordinator that must arrive in order (`Elected`, `Activate`,
//! `Deactivate`) are sent from this actor itself; only the waits for their
//! replies run in tasks.

mod line;
pub(crate) mod machine;
mod publisher;
mod transfer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::backoff::{self, Backoff};
use crate::coordinator::Coordinator;
use crate::etcd;
use crate::etcd::Subscription;
use crate::etcd::recipe::{self, Candidacy, Leader};
use crate::etcd::session::RoleState;
use crate::fence::{Epoch, FencedStore};
use crate::runtime::clock::LeaseInstant;
use crate::runtime::context::{NodeContext, RoleShared};
use crate::runtime::coordinator::{Activation, CoordinatorActor, CoordinatorMsg, CoordinatorRef};
use crate::runtime::queue::RequestQueue;
use crate::runtime::reload::{CatchUp, ReloadActor, ReloadHandle, ReloadMsg};
use crate::runtime::session::SessionMsg;
use crate::runtime::term::{AnswerCheck, Term};
use crate::runtime::witness;
use crate::status::{MetadataCopy, ResignError, StepDownReason, Successor, TransferTarget};
use crate::task::OwnedTask;
use crate::telemetry;
use machine::{Command, ElectionMachine, Event, Phase, Timings};
use publisher::Publisher;
use transfer::{HandoverReply, PendingTransfer, TransferPlan};

/// The election actor of one role on one node.
pub(crate) struct Election<C: Coordinator> {
    role: String,
    coordinator: Arc<C>,
    context: Arc<NodeContext>,
    shared: Arc<RoleShared<C>>,
    election: String,
}

impl<C: Coordinator> Election<C> {
    /// An election actor for `role`, reporting the lease it campaigns on in `shared.lease`.
    pub(crate) fn new(
        role: String,
        coordinator: Arc<C>,
        context: Arc<NodeContext>,
        shared: Arc<RoleShared<C>>,
    ) -> Self {
        let election = context.layout.election(&role);
        Self {
            role,
            coordinator,
            context,
            shared,
            election,
        }
    }
}

/// Messages to an election actor. Replies from etcd tasks carry the lease,
/// generation or revision they belong to, so a late reply from an earlier
/// attempt is recognised and dropped.
pub(crate) enum ElectionMsg<C: Coordinator> {
    /// Hand the role over and stop; answered once stopped.
    Shutdown(RpcReplyPort<()>),
    /// Hand the role over if leading and campaign again; answered once a peer can take over.
    Resign(RpcReplyPort<Result<(), ResignError>>),
    /// Hand the role to the standby `to`; answered once it can take over.
    Transfer {
        /// The standby to hand over to.
        to: TransferTarget,
        /// How long the candidates ahead of it have to make way.
        within: Duration,
        /// Who waits for the outcome; none for a move to a preferred leader.
        reply: Option<RpcReplyPort<Result<Successor, ResignError>>>,
    },
    /// The transfer of the term at `revision` found its target, or why not.
    TransferPlanned {
        /// The term's epoch revision.
        revision: i64,
        /// The target as found in the election.
        plan: Result<TransferPlan, ResignError>,
    },
    /// The transfer of the term at `revision` can hand over, or why not.
    TransferSettled {
        /// The term's epoch revision.
        revision: i64,
        /// Ready, or what stood in the way.
        outcome: Result<(), String>,
    },
    /// A standby of higher leader priority has stood ready long enough.
    PreferredReady {
        /// The term's epoch revision.
        revision: i64,
        /// The standby's server ID.
        server_id: i64,
    },
    /// Join the election again at the back of the line, if standing by in
    /// it: the spread moves this node from heir to last.
    Requeue,
    /// The node's session holds another lease, or none.
    SessionChanged,
    /// Check the renew deadline.
    Tick,
    /// The campaign of `generation` leads.
    Elected {
        /// The campaign generation.
        generation: u64,
        /// The leading candidacy.
        candidacy: Candidacy,
    },
    /// The campaign of `generation`, leading at `revision`, has waited
    /// whatever its predecessor's end asks for (see [`grace_after`]).
    Settled {
        /// The campaign generation.
        generation: u64,
        /// The leader key's create revision.
        revision: i64,
    },
    /// The leader key of the campaign of `generation` was deleted.
    LeaderKeyDeleted {
        /// The campaign generation.
        generation: u64,
        /// The leader key's create revision.
        revision: i64,
    },
    /// The campaign of `generation` has its candidate key in the election.
    CampaignJoined {
        /// The campaign generation.
        generation: u64,
        /// The lease it is on.
        lease: i64,
        /// The candidate key's create revision: its place in line.
        revision: i64,
    },
    /// The campaign of `generation` failed.
    CampaignFailed {
        /// The campaign generation.
        generation: u64,
        /// The lease it was on.
        lease: i64,
        /// Whether etcd answered the keepalive again, after failing, while
        /// the attempt ran: its failure may be the broken connection's.
        etcd_restored: bool,
    },
    /// The reload of `generation`, for `revision`, finished.
    Reloaded {
        /// The reload generation.
        generation: u64,
        /// The epoch revision.
        revision: i64,
        /// The decoded metadata, or why there is none.
        result: Result<C::Meta, String>,
    },
    /// The reload actor started `start`th failed (an error or a panic).
    ReloadFailed {
        /// Which start of the reload actor.
        start: u64,
        /// Why.
        reason: String,
    },
    /// Time to start a new reload actor after a crash.
    RestartReload,
    /// The coordinator serves for `revision`.
    CoordinatorServing {
        /// The epoch revision.
        revision: i64,
    },
    /// The coordinator's activation for `revision` did not finish within `coordinator.activateTimeout`.
    ActivationTimedOut {
        /// The epoch revision.
        revision: i64,
    },
    /// The coordinator is back in standby.
    Deactivated,
    /// Deleting our candidate key failed once; it is retried while the lease lives.
    ResignFailed,
    /// The candidate key or lease is released.
    Released,
    /// Time to start a new coordinator after a crash.
    RestartCoordinator,
    /// The leader seen in etcd changed.
    LeaderObserved(Option<Leader>),
    /// A task this actor owns panicked: a bug, handled as the actor's own failure.
    TaskFailed {
        /// What the task did.
        task: &'static str,
        /// The panic's message.
        reason: String,
    },
    /// Panic in the actor, as a bug would (fault injection for tests: `RoleHandle::crash_*`, `standin run --fault-injection`).
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

/// Where a tagged etcd reply comes from, to tell a current reply from a late one.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// A campaign task.
    Campaign(u64),
    /// A reload actor.
    Reload(u64),
}

/// What an election actor's state changes between messages.
pub(crate) struct ElectionState<C: Coordinator> {
    machine: ElectionMachine,
    coordinator: Option<ActorRef<CoordinatorMsg<C>>>,
    reload: Option<ReloadHandle<C>>,
    /// Counts the reload actors started, so a failure is matched to its actor.
    reload_starts: u64,
    reload_generation: u64,
    reload_restarts: Backoff,
    candidacy: Option<Candidacy>,
    campaign: Option<OwnedTask>,
    campaign_generation: u64,
    publisher: Option<Publisher>,
    /// The resign or revoke in flight.
    release: Option<OwnedTask>,
    /// The wait for the coordinator to serve, or to be back in standby.
    coordinator_wait: Option<OwnedTask>,
    term: Option<Term>,
    meta: Option<C::Meta>,
    won_at: Option<Instant>,
    leader: Option<Leader>,
    last_step_down: Option<StepDownReason>,
    shutdown_replies: Vec<RpcReplyPort<()>>,
    /// Who waits for the handover in progress (a resign or a transfer).
    handover_replies: Vec<HandoverReply>,
    /// The leader transfer under way in this term.
    transfer: Option<PendingTransfer>,
    /// The wait of the transfer under way (finding the target, then the
    /// candidates ahead of it making way).
    transfer_task: Option<OwnedTask>,
    /// While serving: the watch for a standby of higher leader priority.
    preference: Option<OwnedTask>,
    /// When this term started serving, or its last move to a preferred
    /// standby failed: the next move waits `session.transferHoldoff` past it.
    preference_since: Instant,
    /// Our candidate key's create revision while campaigning, once joined.
    joined_revision: Option<i64>,
    _observer: Subscription,
    _session_changes: OwnedTask,
    /// Sends [`ElectionMsg::Tick`], which checks the renew deadline, while
    /// the phase asks for it ([`Phase::keeps_own_time`]).
    ticker: Option<JoinHandle<()>>,
}

impl<C: Coordinator> Drop for ElectionState<C> {
    fn drop(&mut self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        // Whatever ends this actor, its term ends with it.
        if let Some(term) = &self.term {
            term.close();
        }
    }
}

impl<C: Coordinator> ElectionState<C> {
    /// Whether a reply tagged `tag` belongs to the attempt in progress.
    fn is_current(&self, tag: Tag) -> bool {
        match tag {
            Tag::Campaign(generation) => generation == self.campaign_generation,
            Tag::Reload(generation) => generation == self.reload_generation,
        }
    }
}

impl<C: Coordinator> Election<C> {
    fn timings(&self) -> Timings {
        Timings {
            renew_deadline: self.context.config.session.renew_deadline(),
            backoff: self.context.config.etcd.retry.clone(),
            restart_backoff: self.context.config.coordinator.restart_backoff.clone(),
        }
    }

    /// Spawns `future` as a task of this actor: aborted when dropped, and a
    /// panic in it fails the actor, as a panic in the actor itself would.
    fn spawn(
        myself: &ActorRef<ElectionMsg<C>>,
        task: &'static str,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> OwnedTask {
        let report = myself.clone();
        OwnedTask::spawn_reported(future, move |reason| {
            let _ = report.send_message(ElectionMsg::TaskFailed { task, reason });
        })
    }

    /// Spawns the coordinator actor for a won term; it lives until the
    /// term's deactivation (or its crash).
    async fn spawn_coordinator(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state_coordinator: &mut Option<ActorRef<CoordinatorMsg<C>>>,
        leader: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let config = &self.context.config.coordinator;
        let queue = Arc::new(RequestQueue::new(
            &self.role,
            config.queue_depth,
            config.max_batch,
        ));
        let actor = CoordinatorActor::new(
            self.coordinator.clone(),
            self.role.clone(),
            queue.clone(),
            config.deactivate_timeout,
            self.shared.faults.clone(),
        );
        let (coordinator, _) = Actor::spawn_linked(None, actor, (), myself.get_cell()).await?;
        let _ = coordinator.send_message(CoordinatorMsg::LeaderChanged(leader));
        self.shared.coordinator.set(Some(CoordinatorRef {
            actor: coordinator.clone(),
            queue,
        }));
        *state_coordinator = Some(coordinator);
        Ok(())
    }

    /// Feeds `event` to the machine and carries out what it decides.
    async fn apply(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        event: Event,
    ) -> Result<(), ActorProcessingErr> {
        let mut next = Some(event);
        // Each piece of news moves the machine past it (a lease lost is
        // forgotten, a lease granted is taken): a few rounds at most.
        for _ in 0..8 {
            let Some(event) = next.take() else { break };
            for command in state.machine.on(event) {
                self.execute(myself, state, command).await?;
            }
            next = self.session_news(state);
        }
        if let Some(unheard) = next {
            tracing::error!(
                role = self.role,
                ?unheard,
                "the session's news does not settle"
            );
        }
        self.report_status(state);
        self.keep_time(myself, state);
        Ok(())
    }

    /// Ticks while the phase asks for it ([`Phase::keeps_own_time`]): a
    /// thousand standby roles ticking four times a second each kept a node
    /// busy doing nothing, and took their share of a takeover wave.
    fn keep_time(&self, myself: &ActorRef<ElectionMsg<C>>, state: &mut ElectionState<C>) {
        let wanted = state.machine.phase().keeps_own_time();
        match state.ticker.take() {
            Some(ticker) if !wanted => ticker.abort(),
            None if wanted => {
                let tick = self.context.config.session.deadline_check_interval();
                state.ticker = Some(myself.send_interval(tick, || ElectionMsg::Tick));
            }
            ticker => state.ticker = ticker,
        }
    }

    /// What the node's session says that the machine has not heard yet:
    /// a renewal of its lease, the lease gone, or a trusted lease to
    /// campaign on. Read from the session's view, not sent as messages, so
    /// a renewal costs the node one write however many roles it runs.
    fn session_news(&self, state: &ElectionState<C>) -> Option<Event> {
        let session = &self.context.session;
        let held = session.current();
        match (state.machine.lease(), held) {
            (Some(lease), Some(held)) if held.id == lease => {
                let renewed = state.machine.last_renewal_sent() < Some(held.renewed_at);
                renewed.then_some(Event::KeepaliveAcked {
                    lease,
                    sent_at: held.renewed_at,
                })
            }
            (Some(lease), _) => Some(Event::LeaseLost {
                lease,
                now: LeaseInstant::now(),
            }),
            (None, Some(held))
                if state.machine.phase() == Phase::Unleased && session.trusts(held.id) =>
            {
                Some(Event::LeaseGranted {
                    lease: held.id,
                    sent_at: held.renewed_at,
                })
            }
            (None, _) => None,
        }
    }

    /// Checks the renew deadline now, after the renewals the session has
    /// seen: the deadline counts from the latest.
    async fn check_clock(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(news) = self.session_news(state) {
            self.apply(myself, state, news).await?;
        }
        let now = LeaseInstant::now();
        self.apply(myself, state, Event::Tick { now }).await
    }

    fn report_status(&self, state: &ElectionState<C>) {
        let phase = state.machine.phase();
        let epoch = state
            .term
            .as_ref()
            .filter(|_| phase.leads())
            .map(Term::epoch);
        let lease = state.machine.lease();
        self.shared.lease.set(lease);
        // A stopped node's last word is final: an actor still dying must
        // not report a state.
        if self.shared.is_stopped() {
            return;
        }
        let published = phase.published_state();
        // Compared in place: every message of every role ends here (a
        // node of a thousand roles ticks thousands of times a second),
        // and nearly none changes anything.
        let mut state_changed = false;
        self.shared.status.send_if_modified(|status| {
            state_changed = status.state != published;
            let changed = state_changed
                || status.epoch.as_ref() != epoch
                || status.leader != state.leader
                || status.lease != lease
                || status.last_step_down != state.last_step_down;
            if changed {
                status.state = published;
                status.epoch = epoch.cloned();
                status.leader.clone_from(&state.leader);
                status.lease = lease;
                status.last_step_down = state.last_step_down;
            }
            changed
        });
        if state_changed {
            telemetry::set_role_state(&self.role, published);
        }
    }

    async fn execute(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        command: Command,
    ) -> Result<(), ActorProcessingErr> {
        match command {
            // The machine's schedule is exact; the executor spreads it, so
            // the nodes that lost etcd together do not retry in step.
            Command::Register { lease } => self.register(myself, state, lease),
            Command::Campaign { lease, after } => {
                state.joined_revision = None;
                self.campaign(myself, state, lease, backoff::jittered(after))
            }
            Command::CancelCampaign => {
                state.campaign_generation += 1;
                state.campaign = None;
                state.joined_revision = None;
            }
            Command::Publish(published) => self.publish(state, published),
            Command::StartReload { revision } => self.start_reload(myself, state, revision).await?,
            Command::StopReload => {
                // The copy stays warm for the next term: only the catch-up goes.
                state.reload_generation += 1;
                if let Some(reload) = &state.reload {
                    reload.send_message(ReloadMsg::Cancel);
                }
                state.meta = None;
            }
            Command::Activate { revision } => self.activate(myself, state, revision)?,
            Command::Depose(reason) => self.depose(state, reason),
            Command::Deactivate => self.deactivate(myself, state),
            Command::Resign { lease } => self.resign(myself, state, lease),
            Command::RestartCoordinator { after } => {
                let after = backoff::jittered(after);
                self.shared.coordinator.set(None);
                state.coordinator = None;
                tracing::warn!(
                    role = self.role,
                    restart_in_ms = after.as_millis() as u64,
                    "coordinator crashed; campaigning again after a backoff"
                );
                myself.send_after(after, || ElectionMsg::RestartCoordinator);
            }
            Command::Stop => {
                for reply in state.shutdown_replies.drain(..) {
                    let _ = reply.send(());
                }
                myself.stop(Some("shut down".into()));
            }
        }
        Ok(())
    }

    /// Publishes this role's session on `lease` from now on, starting with standby.
    fn register(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        lease: i64,
    ) {
        tracing::info!(
            role = self.role,
            lease,
            "campaigning on the node's lease {lease:#x}"
        );
        let key = self
            .context
            .layout
            .session(&self.role, self.context.server_id);
        let reply = myself.clone();
        state.publisher = Some(Publisher::start(
            self.context.writes.clone(),
            key,
            self.context.config.etcd.retry.initial,
            move |reason| {
                let task = "publishing the session";
                let _ = reply.send_message(ElectionMsg::TaskFailed { task, reason });
            },
        ));
        self.publish_session(state, RoleState::Standby);
    }

    fn campaign(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        lease: i64,
        after: Duration,
    ) {
        state.campaign_generation += 1;
        let generation = state.campaign_generation;
        let context = self.context.clone();
        let election = self.election.clone();
        let value = self
            .context
            .session(&self.role, RoleState::Standby, lease)
            .encode();
        let reply = myself.clone();
        // A node whose warm copy is still being read (or decoded) joins
        // the election only once it is ready: behind the warm peers, which
        // take over in milliseconds, instead of ahead of them, where its win
        // would wait for the read.
        let mut copy = self
            .context
            .config
            .reload
            .warm
            .then(|| self.shared.copy.subscribe());
        let copy_wait = self.context.config.reload.timeout;
        let role = self.role.clone();
        let session = self.context.session_actor.clone();
        let view = self.context.session.clone();
        let restore = view.next_restore();
        let campaign = async move {
            // A retry waits out its backoff, or until etcd answers again: a
            // standby next in line must not sleep through its leader's death
            // because its link to etcd broke moments before.
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = restore => {}
            }
            let attempt = LeaseInstant::now();
            if let Some(copy) = &mut copy {
                let ready = |copy: &Option<MetadataCopy>| copy.is_some_and(|copy| !copy.decoding);
                if !ready(&copy.borrow()) {
                    tracing::info!(
                        role,
                        "waiting for the metadata copy to load and decode before campaigning"
                    );
                    // Bounded: a copy that cannot be read (etcd refuses the
                    // prefix, compactions outrun the read) must not keep a
                    // node out of the election for good. A win then reads
                    // the metadata itself, as a cold standby's does.
                    let waited = tokio::time::timeout(copy_wait, copy.wait_for(ready)).await;
                    if waited.is_err() {
                        tracing::warn!(
                            role,
                            "the metadata copy is not loaded after reload.timeout ({copy_wait:?}): \
                             campaigning without it; a win reads the metadata first"
                        );
                        metrics::counter!(telemetry::CAMPAIGNS_WITHOUT_COPY, "role" => role.clone())
                            .increment(1);
                    }
                }
            }
            let won = async {
                let candidacy =
                    Box::pin(recipe::join(&context.client, &election, lease, value)).await?;
                let _ = reply.send_message(ElectionMsg::CampaignJoined {
                    generation,
                    lease,
                    revision: candidacy.revision,
                });
                // Decided from the node's one watch of every election,
                // which stays subscribed while this candidacy leads.
                let (following, mut line) = line::follow_line(&context.elections, &role);
                let Some(succession) = line::until_leading(&mut line, &candidacy).await else {
                    return Err(recipe::CampaignError::CandidacyLost {
                        key: candidacy.key.clone(),
                    });
                };
                Ok::<_, recipe::CampaignError>((candidacy, following, line, succession))
            };
            let (candidacy, _following, mut line, succession) = match won.await {
                Ok(won) => won,
                Err(error) => {
                    tracing::warn!(election, "campaign failed: {error}");
                    if error.lease_gone() {
                        // Sooner than the next keepalive would tell.
                        let _ = session.send_message(SessionMsg::Lost { lease });
                    }
                    let _ = reply.send_message(ElectionMsg::CampaignFailed {
                        generation,
                        lease,
                        etcd_restored: view.restored_since(attempt),
                    });
                    return;
                }
            };
            let led_at = tokio::time::Instant::now();
            let revision = candidacy.revision;
            let _ = reply.send_message(ElectionMsg::Elected {
                generation,
                candidacy: candidacy.clone(),
            });
            // Beside the reload and the activation: the term serves only
            // once settled.
            let settled = async {
                if let Some(grace) = grace_after(&context, &role, &succession).await {
                    tokio::time::sleep_until(led_at + grace).await;
                }
                let _ = reply.send_message(ElectionMsg::Settled {
                    generation,
                    revision,
                });
            };
            // While leading, follow our own key: if anyone deletes it,
            // the next candidate leads and we must not keep serving.
            let deleted = async {
                line::until_gone(&mut line, &candidacy).await;
                let _ = reply.send_message(ElectionMsg::LeaderKeyDeleted {
                    generation,
                    revision,
                });
            };
            tokio::join!(settled, deleted);
        };
        state.campaign = Some(Self::spawn(myself, "campaigning", campaign));
    }

    fn publish(&self, state: &ElectionState<C>, published: RoleState) {
        if published == RoleState::Activating {
            tracing::info!(
                role = self.role,
                "quit STANDBY mode, this node will become ACTIVE"
            );
        }
        if published == RoleState::Serving {
            let took = state.won_at.map(|at| at.elapsed()).unwrap_or_default();
            tracing::info!(
                role = self.role,
                takeover_ms = took.as_millis() as u64,
                "{} is ACTIVE and serving; took {} ms from winning the election to serving",
                self.role,
                took.as_millis()
            );
            metrics::histogram!(telemetry::TAKEOVER_SECONDS, "role" => self.role.clone())
                .record(took.as_secs_f64());
            metrics::counter!(telemetry::TAKEOVERS, "role" => self.role.clone()).increment(1);
        }
        self.publish_session(state, published);
    }

    /// Writes the session (and, while leading, the leader key's value with
    /// any transfer under way) in the background, without the log lines of
    /// a state change: a transfer rewrites the value of a state unchanged.
    fn publish_session(&self, state: &ElectionState<C>, published: RoleState) {
        if let (Some(publisher), Some(lease)) = (&state.publisher, state.machine.lease()) {
            let mut info = self.context.session(&self.role, published, lease);
            info.transfer = state
                .transfer
                .as_ref()
                .and_then(|pending| pending.plan.as_ref())
                .map(TransferPlan::announcement);
            let leading = state
                .machine
                .phase()
                .leads()
                .then(|| state.candidacy.clone())
                .flatten();
            publisher.publish(info, leading);
        }
    }

    async fn start_reload(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        revision: i64,
    ) -> Result<(), ActorProcessingErr> {
        let Some(candidacy) = &state.candidacy else {
            return Err("a win without a candidacy".into());
        };
        // The machine has just decided the win: open its term.
        state.won_at = Some(Instant::now());
        let epoch = Epoch {
            role: self.role.clone(),
            leader_key: candidacy.key.clone(),
            revision,
        };
        let lease = state.machine.lease().ok_or("a win without a lease")?;
        let confirm = self
            .context
            .config
            .coordinator
            .confirm_answers
            .then(|| AnswerCheck {
                client: self.context.client.clone(),
                timeout: self.context.config.etcd.request_timeout,
            });
        let term = Term::open_won(epoch, lease, self.context.session.clone(), confirm);
        self.shared.term.set(Some(term.clone()));
        state.term = Some(term);
        state.reload_generation += 1;
        let generation = state.reload_generation;
        let election = myself.clone();
        let job = CatchUp {
            revision,
            report: Box::new(move |result| {
                let result = result.map_err(|error| error.to_string());
                let _ = election.send_message(ElectionMsg::Reloaded {
                    generation,
                    revision,
                    result,
                });
            }),
        };
        // From the win on, requests wait for the activation instead of
        // being sent away to this very node.
        if state.coordinator.is_none() {
            let leader = state.leader.as_ref().map(|l| l.session.address.clone());
            self.spawn_coordinator(myself, &mut state.coordinator, leader)
                .await?;
        }
        if let (Some(coordinator), Some(term)) = (&state.coordinator, &state.term) {
            let _ = coordinator.send_message(CoordinatorMsg::Elected { term: term.clone() });
        }
        if state.reload.is_none() {
            self.spawn_reload(myself, state);
        }
        if let Some(reload) = &state.reload {
            reload.send_message(ReloadMsg::CatchUp(Box::new(job)));
        }
        Ok(())
    }

    /// A store fenced to the serving term, writing under the role's metadata prefix.
    fn store(&self, state: &ElectionState<C>) -> Result<FencedStore, ActorProcessingErr> {
        let term = state.term.as_ref().ok_or("a store without a term")?;
        Ok(term.store(
            self.context.client.clone(),
            self.context.layout.meta(&self.role),
        ))
    }

    /// Starts the role's reload actor, which keeps the metadata warm from now on.
    fn spawn_reload(&self, myself: &ActorRef<ElectionMsg<C>>, state: &mut ElectionState<C>) {
        let actor = ReloadActor::new(
            self.role.clone(),
            self.coordinator.clone(),
            &self.context,
            &self.shared,
        );
        state.reload_starts += 1;
        let (start, election) = (state.reload_starts, myself.clone());
        state.reload = Some(actor.start(move |reason| {
            let _ = election.send_message(ElectionMsg::ReloadFailed { start, reason });
        }));
    }

    /// Hands the metadata and a store fenced to the term to the coordinator,
    /// then waits (in a task) for it to serve, at most `coordinator.activateTimeout`.
    fn activate(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        revision: i64,
    ) -> Result<(), ActorProcessingErr> {
        let (Some(meta), Some(term), Some(coordinator)) = (
            state.meta.take(),
            state.term.clone(),
            state.coordinator.clone(),
        ) else {
            return Err("activation without metadata, term or coordinator".into());
        };
        debug_assert_eq!(term.revision(), revision);
        let store = self.store(state)?;
        #[cfg(feature = "testing")]
        self.shared.store.set(Some(store.clone()));
        let (reply, served) = tokio::sync::oneshot::channel();
        let activation = Activation {
            term,
            meta,
            store,
            reply: reply.into(),
        };
        let _ = coordinator.send_message(CoordinatorMsg::Activate(Box::new(activation)));
        let bound = self.context.config.coordinator.activate_timeout;
        let report = myself.clone();
        let role = self.role.clone();
        let wait = async move {
            match tokio::time::timeout(bound, served).await {
                Ok(Ok(())) => {
                    let _ = report.send_message(ElectionMsg::CoordinatorServing { revision });
                }
                // Refused (the term is over) or failed: a failed activation
                // crashes the coordinator, which the supervision event reports.
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::error!(
                        role,
                        revision,
                        "the activation did not finish within {bound:?} (coordinator.activateTimeout); resigning"
                    );
                    let _ = report.send_message(ElectionMsg::ActivationTimedOut { revision });
                }
            }
        };
        state.coordinator_wait = Some(Self::spawn(myself, "waiting for the activation", wait));
        Ok(())
    }

    /// Starts handing the role to `to`: first find it in the election (in
    /// a task), then announce it and wait for the line to reorder.
    fn start_transfer(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        to: TransferTarget,
        within: Duration,
        reply: Option<RpcReplyPort<Result<Successor, ResignError>>>,
    ) {
        let refuse = |reply: Option<RpcReplyPort<_>>, error: ResignError| {
            if let Some(reply) = reply {
                let _ = reply.send(Err(error));
            }
        };
        let (Phase::Serving { revision }, Some(leader)) =
            (state.machine.phase(), state.candidacy.clone())
        else {
            let error = if state.machine.phase().leads() {
                ResignError::TransferFailed {
                    role: self.role.clone(),
                    target: to.to_string(),
                    why: "this node is still activating; ask again once it serves".into(),
                }
            } else {
                ResignError::NotLeader {
                    role: self.role.clone(),
                    leader: state.leader.as_ref().map(|l| l.session.address.clone()),
                }
            };
            return refuse(reply, error);
        };
        if let Some(pending) = &state.transfer {
            let error = ResignError::TransferInProgress {
                role: self.role.clone(),
                to: pending.plan.as_ref().map_or(0, |p| p.successor.server_id),
            };
            return refuse(reply, error);
        }
        tracing::info!(role = self.role, target = %to, "leader transfer requested");
        state.preference = None;
        let client = self.context.client.clone();
        let election = self.election.clone();
        let role = self.role.clone();
        let target = to.clone();
        let report = myself.clone();
        let find = async move {
            let plan = transfer::plan(&client, &election, &role, &leader, &target).await;
            let _ = report.send_message(ElectionMsg::TransferPlanned { revision, plan });
        };
        state.transfer_task = Some(Self::spawn(myself, "finding the transfer's target", find));
        state.transfer = Some(PendingTransfer {
            revision,
            target: to,
            within,
            plan: None,
            reply,
        });
    }

    /// The target is found: announce it in the leader key, so the
    /// candidates ahead of it make way, and wait for that.
    fn on_transfer_planned(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        revision: i64,
        plan: Result<TransferPlan, ResignError>,
    ) {
        let Some(pending) = state.transfer.as_mut().filter(|p| p.revision == revision) else {
            return;
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(error) => {
                let reply = state.transfer.take().and_then(|p| p.reply);
                state.transfer_task = None;
                return self.transfer_failed(myself, state, reply, error);
            }
        };
        pending.plan = Some(plan.clone());
        let within = pending.within;
        let Some(leader) = state.candidacy.clone() else {
            return;
        };
        self.publish_session(state, RoleState::Serving);
        let watches = self.context.watches.clone();
        let election = self.election.clone();
        let report = myself.clone();
        let wait = async move {
            let outcome = transfer::settle(&watches, &election, &leader, &plan, within).await;
            let _ = report.send_message(ElectionMsg::TransferSettled { revision, outcome });
        };
        state.transfer_task = Some(Self::spawn(myself, "waiting for the line to reorder", wait));
    }

    /// A transfer did not happen: tell who asked, withdraw the
    /// announcement, keep serving, and look for a preferred leader again.
    fn transfer_failed(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        reply: Option<RpcReplyPort<Result<Successor, ResignError>>>,
        error: ResignError,
    ) {
        tracing::warn!(role = self.role, "{error}");
        if let Some(reply) = reply {
            let _ = reply.send(Err(error));
        }
        if matches!(state.machine.phase(), Phase::Serving { .. }) {
            self.publish_session(state, RoleState::Serving);
            state.preference_since = Instant::now();
            self.watch_for_preferred(myself, state);
        }
    }

    /// While serving, follows the election for a standby of higher leader
    /// priority; once one has stood ready for `session.transferHoldoff`,
    /// the role moves to it.
    fn watch_for_preferred(&self, myself: &ActorRef<ElectionMsg<C>>, state: &mut ElectionState<C>) {
        let (Phase::Serving { revision }, Some(leader)) =
            (state.machine.phase(), state.candidacy.clone())
        else {
            return;
        };
        let config = &self.context.config;
        let (following, line) = line::follow_line(&self.context.elections, &self.role);
        let watch = transfer::await_preferred(
            line,
            leader,
            config.role(&self.role).leader_priority,
            config.session.transfer_holdoff,
            state.preference_since,
        );
        let report = myself.clone();
        let task = async move {
            let _following = following;
            let server_id = watch.await;
            let _ = report.send_message(ElectionMsg::PreferredReady {
                revision,
                server_id,
            });
        };
        state.preference = Some(Self::spawn(myself, "watching for a preferred leader", task));
    }

    /// Whether this candidate must make way for a transfer that `leader`
    /// announces: it waits in line ahead of the target, and is not it.
    fn makes_way(&self, state: &ElectionState<C>, leader: Option<&Leader>) -> bool {
        let Some(announced) = leader.and_then(|l| l.session.transfer.as_ref()) else {
            return false;
        };
        let ahead = state
            .joined_revision
            .is_some_and(|own| own < announced.revision);
        if ahead
            && announced.to != self.context.server_id
            && state.machine.phase() == Phase::Campaigning
        {
            tracing::info!(
                role = self.role,
                to = announced.to,
                "making way in the {} election for server {}, which the leader hands the role to",
                self.role,
                announced.to
            );
            return true;
        }
        false
    }

    /// Closes the term, at the instant the step-down is decided: from here
    /// on nothing answers for it and its stores refuse every write.
    fn depose(&self, state: &mut ElectionState<C>, reason: StepDownReason) {
        state.last_step_down = Some(reason);
        state.preference = None;
        state.transfer_task = None;
        if let Some(pending) = state.transfer.take()
            && let Some(reply) = pending.reply
        {
            let _ = reply.send(Err(ResignError::SteppedDown {
                role: self.role.clone(),
                reason: reason.as_str(),
            }));
        }
        if let Some(term) = state.term.take() {
            term.close();
        }
        self.shared.term.set(None);
        #[cfg(feature = "testing")]
        self.shared.store.set(None);
        tracing::warn!(role = self.role, reason = reason.as_str(), "stepping down");
        metrics::counter!(telemetry::STEP_DOWNS, "role" => self.role.clone(), "reason" => reason.as_str())
            .increment(1);
    }

    /// Sends the coordinator back to standby, then waits (in a task) for it
    /// to get there; one that does not within its bound is killed, and the
    /// supervision event restarts it.
    fn deactivate(&self, myself: &ActorRef<ElectionMsg<C>>, state: &mut ElectionState<C>) {
        let report = myself.clone();
        let Some(coordinator) = state.coordinator.clone() else {
            let _ = report.send_message(ElectionMsg::Deactivated);
            return;
        };
        let (reply, done) = tokio::sync::oneshot::channel();
        let _ = coordinator.send_message(CoordinatorMsg::Deactivate {
            reply: reply.into(),
        });
        let bound = self.context.config.coordinator.deactivate_timeout + Duration::from_secs(1);
        let wait = async move {
            if !matches!(tokio::time::timeout(bound, done).await, Ok(Ok(()))) {
                tracing::error!("coordinator did not deactivate within {bound:?}; killing it");
                coordinator.kill();
            }
            let _ = report.send_message(ElectionMsg::Deactivated);
        };
        state.coordinator_wait = Some(Self::spawn(myself, "waiting for the deactivation", wait));
    }

    /// Deletes our candidate key, retried for as long as the session holds
    /// `lease`: the lease is the node's, so it is never revoked for one role.
    fn resign(&self, myself: &ActorRef<ElectionMsg<C>>, state: &mut ElectionState<C>, lease: i64) {
        let key = recipe::candidate_key(&self.election, lease);
        state.candidacy = None;
        let context = self.context.clone();
        let reply = myself.clone();
        let resign = async move {
            let mut kv = context.client.kv_client();
            let what = format!("resigning {key} (the lease TTL will clean up)");
            let timeout = context.config.etcd.request_timeout;
            let deleted = etcd::best_effort(&what, timeout, kv.delete(key.as_str(), None)).await;
            if deleted.is_none() {
                // The key may still lead: whoever waits for the handover
                // hears so now, while the delete is retried.
                let _ = reply.send_message(ElectionMsg::ResignFailed);
                context.release_key(&key, lease).await;
            }
            let _ = reply.send_message(ElectionMsg::Released);
        };
        state.release = Some(Self::spawn(myself, "resigning", resign));
    }
}

/// How long a candidate that won by `succession` waits before it serves:
/// `session.witnessGrace` when a death witness revoked its predecessor's
/// lease (marked so in etcd), since a leader taken for dead may live and
/// must see its key go first; nothing otherwise (a predecessor that
/// resigned closed its term first, and one whose lease expired stepped
/// down at its renew deadline, before etcd could expire it).
async fn grace_after(
    context: &NodeContext,
    role: &str,
    succession: &line::Succession,
) -> Option<Duration> {
    let grace = context.config.session.witness_grace;
    let predecessor = succession.predecessor.as_ref()?;
    if grace.is_zero() {
        return None;
    }
    let timeout = context.config.etcd.request_timeout;
    let marked =
        witness::marked_revoked(&context.client, &context.layout, predecessor.lease, timeout).await;
    if !marked {
        return None;
    }
    tracing::info!(
        role,
        predecessor = predecessor.shown(),
        "won from {} whose lease {:#x} a death witness revoked: serving after {grace:?}, once \
         it has seen its key go if it lives",
        predecessor.shown(),
        predecessor.lease
    );
    metrics::counter!(telemetry::WITNESS_GRACE_WAITS, "role" => role.to_owned()).increment(1);
    Some(grace)
}

impl<C: Coordinator> Actor for Election<C> {
    type Msg = ElectionMsg<C>;
    type State = ElectionState<C>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let reporter = myself.clone();
        let observe = recipe::leader_observer(self.election.clone(), move |leader| {
            reporter
                .send_message(ElectionMsg::LeaderObserved(leader))
                .is_ok()
        });
        let observer = self
            .context
            .elections
            .subscribe(Some(&self.role), Box::new(observe));
        let mut changes = self.context.session.changes();
        let reporter = myself.clone();
        let follow_session = async move {
            while changes.changed().await.is_ok()
                && reporter.send_message(ElectionMsg::SessionChanged).is_ok()
            {}
        };
        let session_changes = Self::spawn(&myself, "following the session", follow_session);
        let mut state = ElectionState {
            machine: ElectionMachine::new(self.timings()),
            coordinator: None,
            reload: None,
            reload_starts: 0,
            reload_generation: 0,
            reload_restarts: Backoff::new(self.context.config.coordinator.restart_backoff.clone()),
            candidacy: None,
            campaign: None,
            campaign_generation: 0,
            publisher: None,
            release: None,
            coordinator_wait: None,
            term: None,
            meta: None,
            won_at: None,
            leader: None,
            last_step_down: None,
            shutdown_replies: Vec::new(),
            handover_replies: Vec::new(),
            transfer: None,
            transfer_task: None,
            preference: None,
            preference_since: Instant::now(),
            joined_revision: None,
            _observer: observer,
            _session_changes: session_changes,
            ticker: None,
        };
        // No coordinator actor until a win: a standby answers from its
        // status (`RoleShared::forward`), and a node of a thousand standby
        // roles holds a thousand fewer actors.
        self.spawn_reload(&myself, &mut state);
        // The status only reaches the metrics when it changes: say where it starts.
        telemetry::set_role_state(&self.role, RoleState::Standby);
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        tracing::info!(
            role = self.role,
            "serverName: {} is in STANDBY ...",
            self.role
        );
        self.apply(&myself, state, Event::Started).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: see "Memory" in runtime.rs.
        Box::pin(async move {
            let event = match message {
                ElectionMsg::Shutdown(reply) => {
                    state.shutdown_replies.push(reply);
                    Event::Shutdown
                }
                ElectionMsg::SessionChanged => match self.session_news(state) {
                    Some(event) => event,
                    None => return Ok(()),
                },
                ElectionMsg::Tick => return self.check_clock(&myself, state).await,
                ElectionMsg::Elected {
                    generation,
                    candidacy,
                } => {
                    if !state.is_current(Tag::Campaign(generation)) {
                        return Ok(());
                    }
                    // A standby does not tick: a win past the renew
                    // deadline is a lapsed lease's, not a term, and the
                    // clock's step-down cancels the campaign it came from.
                    self.check_clock(&myself, state).await?;
                    if !state.is_current(Tag::Campaign(generation)) {
                        return Ok(());
                    }
                    let event = Event::Elected {
                        lease: candidacy.lease,
                        revision: candidacy.revision,
                    };
                    state.candidacy = Some(candidacy);
                    event
                }
                ElectionMsg::Settled {
                    generation,
                    revision,
                } => {
                    if !state.is_current(Tag::Campaign(generation)) {
                        return Ok(());
                    }
                    // The term opened with the win this follows.
                    if let Some(term) = &state.term
                        && term.revision() == revision
                    {
                        term.settle();
                    }
                    return Ok(());
                }
                ElectionMsg::LeaderKeyDeleted {
                    generation,
                    revision,
                } => {
                    if !state.is_current(Tag::Campaign(generation)) {
                        return Ok(());
                    }
                    // The clock first: a leader frozen past its renew
                    // deadline lost its term to that, whatever it sees
                    // first on waking.
                    self.check_clock(&myself, state).await?;
                    Event::LeaderKeyDeleted { revision }
                }
                ElectionMsg::CampaignJoined {
                    generation,
                    lease,
                    revision,
                } => {
                    if !state.is_current(Tag::Campaign(generation)) {
                        return Ok(());
                    }
                    state.joined_revision = Some(revision);
                    Event::CampaignJoined { lease }
                }
                ElectionMsg::CampaignFailed {
                    generation,
                    lease,
                    etcd_restored,
                } => {
                    if !state.is_current(Tag::Campaign(generation)) {
                        return Ok(());
                    }
                    Event::CampaignFailed {
                        lease,
                        etcd_restored,
                    }
                }
                ElectionMsg::Reloaded {
                    generation,
                    revision,
                    result,
                } => {
                    if !state.is_current(Tag::Reload(generation)) {
                        return Ok(());
                    }
                    match result {
                        Ok(meta) => {
                            state.reload_restarts.reset();
                            state.meta = Some(meta);
                            Event::Reloaded { revision }
                        }
                        Err(reason) => {
                            tracing::error!(role = self.role, "reload failed: {reason}");
                            Event::ReloadFailed
                        }
                    }
                }
                ElectionMsg::ReloadFailed { start, reason } => {
                    if start != state.reload_starts || state.reload.is_none() {
                        return Ok(());
                    }
                    // The warm copy is gone with the actor: a new one reads it
                    // again, after a backoff in case the crash repeats.
                    state.reload = None;
                    tracing::error!(role = self.role, "reload failed: {reason}");
                    let after = state.reload_restarts.next_delay();
                    myself.send_after(after, || ElectionMsg::RestartReload);
                    if !matches!(state.machine.phase(), Phase::Reloading { .. }) {
                        return Ok(());
                    }
                    Event::ReloadFailed
                }
                ElectionMsg::RestartReload => {
                    if state.machine.phase() != Phase::Stopped && state.reload.is_none() {
                        self.spawn_reload(&myself, state);
                        tracing::info!(role = self.role, "reload actor restarted");
                    }
                    return Ok(());
                }
                ElectionMsg::CoordinatorServing { revision } => {
                    self.apply(&myself, state, Event::CoordinatorServing { revision })
                        .await?;
                    state.preference_since = Instant::now();
                    self.watch_for_preferred(&myself, state);
                    return Ok(());
                }
                ElectionMsg::Transfer { to, within, reply } => {
                    self.start_transfer(&myself, state, to, within, reply);
                    return Ok(());
                }
                ElectionMsg::TransferPlanned { revision, plan } => {
                    self.on_transfer_planned(&myself, state, revision, plan);
                    return Ok(());
                }
                ElectionMsg::TransferSettled { revision, outcome } => {
                    let Some(pending) = state.transfer.take_if(|p| p.revision == revision) else {
                        return Ok(());
                    };
                    state.transfer_task = None;
                    let plan = pending.plan.expect("a settled transfer has its plan");
                    match outcome {
                        Ok(()) => {
                            tracing::info!(
                                role = self.role,
                                to = plan.successor.server_id,
                                address = plan.successor.address,
                                "server {} is next in line: handing {} over to it",
                                plan.successor.server_id,
                                self.role
                            );
                            if let Some(reply) = pending.reply {
                                state
                                    .handover_replies
                                    .push(HandoverReply::Transfer(reply, plan.successor));
                            }
                            Event::TransferReady { revision }
                        }
                        Err(why) => {
                            let error = ResignError::TransferFailed {
                                role: self.role.clone(),
                                target: pending.target.to_string(),
                                why,
                            };
                            self.transfer_failed(&myself, state, pending.reply, error);
                            return Ok(());
                        }
                    }
                }
                ElectionMsg::PreferredReady {
                    revision,
                    server_id,
                } => {
                    state.preference = None;
                    if state.machine.phase() != (Phase::Serving { revision }) {
                        return Ok(());
                    }
                    tracing::info!(
                        role = self.role,
                        to = server_id,
                        "server {server_id} has a higher leader priority for {} and stands ready: \
                     handing the role over to it",
                        self.role
                    );
                    let within = self.context.config.handover_bound();
                    let to = TransferTarget::ServerId(server_id);
                    self.start_transfer(&myself, state, to, within, None);
                    return Ok(());
                }
                ElectionMsg::ActivationTimedOut { revision } => {
                    Event::ActivationTimedOut { revision }
                }
                ElectionMsg::Resign(reply) => {
                    if !state.machine.phase().leads() {
                        let _ = reply.send(Err(ResignError::NotLeader {
                            role: self.role.clone(),
                            leader: state.leader.as_ref().map(|l| l.session.address.clone()),
                        }));
                        return Ok(());
                    }
                    state.handover_replies.push(HandoverReply::Resign(reply));
                    Event::Resign
                }
                ElectionMsg::Deactivated => {
                    // Back in standby, the coordinator goes until the next
                    // win: the requests already queued get their standby
                    // answer first, and its end is no crash.
                    if let Some(coordinator) = state.coordinator.take() {
                        self.shared.coordinator.set(None);
                        let _ = coordinator.drain();
                    }
                    Event::Deactivated
                }
                ElectionMsg::ResignFailed => {
                    // The key may lead until the lease is gone: say so, rather
                    // than promise the caller that a peer can take over now.
                    for reply in state.handover_replies.drain(..) {
                        reply.answer(Err(ResignError::ResignUnconfirmed {
                            role: self.role.clone(),
                            ttl: self.context.config.session.ttl,
                        }));
                    }
                    return Ok(());
                }
                ElectionMsg::Released => {
                    self.apply(&myself, state, Event::Released).await?;
                    // The leader key is gone: a peer can take over now.
                    for reply in state.handover_replies.drain(..) {
                        reply.answer(Ok(()));
                    }
                    return Ok(());
                }
                ElectionMsg::RestartCoordinator => {
                    if state.machine.phase() == Phase::Stopped || state.coordinator.is_some() {
                        return Ok(());
                    }
                    // The backoff is over; the actor itself starts at the next win.
                    tracing::info!(role = self.role, "coordinator may start again; campaigning");
                    Event::CoordinatorStarted
                }
                ElectionMsg::TaskFailed { task, reason } => {
                    return Err(
                        format!("{} election task failed ({task}): {reason}", self.role).into(),
                    );
                }
                #[cfg(feature = "fault-injection")]
                ElectionMsg::InjectPanic => {
                    panic!("fault injected into the {} election actor", self.role)
                }
                ElectionMsg::Requeue => Event::Yield,
                ElectionMsg::LeaderObserved(leader) => {
                    if let Some(coordinator) = &state.coordinator {
                        let address = leader.as_ref().map(|l| l.session.address.clone());
                        let _ = coordinator.send_message(CoordinatorMsg::LeaderChanged(address));
                    }
                    let another_serves = leader.as_ref().is_some_and(|leader| {
                        leader.session.state == RoleState::Serving
                            && state
                                .candidacy
                                .as_ref()
                                .is_none_or(|ours| ours.key != leader.key)
                    });
                    if let (true, Some(reload)) = (another_serves, &state.reload) {
                        reload.send_message(ReloadMsg::Standby);
                    }
                    let makes_way = self.makes_way(state, leader.as_ref());
                    state.leader = leader;
                    self.report_status(state);
                    if !makes_way {
                        return Ok(());
                    }
                    Event::Yield
                }
            };
            self.apply(&myself, state, event).await
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
                SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
                SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
                _ => return Ok(()),
            };
            let id = cell.get_id();
            if state.coordinator.as_ref().is_some_and(|c| c.get_id() == id) {
                let reason = reason.unwrap_or_else(|| "stopped".into());
                tracing::error!(role = self.role, "coordinator failed: {reason}");
                self.apply(&myself, state, Event::CoordinatorCrashed)
                    .await?;
            }
            Ok(())
        })
        .await
    }
}
