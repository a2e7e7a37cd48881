//! The election actor: holds a role's etcd lease, campaigns, owns the serving term, and supervises the role's coordinator and reload actors.
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

mod lease;
pub(crate) mod machine;
mod publisher;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::backoff::{self, Backoff};
use crate::coordinator::Coordinator;
use crate::etcd;
use crate::etcd::recipe::{self, Candidacy, Leader};
use crate::etcd::session::RoleState;
use crate::fence::{Epoch, FencedStore};
use crate::runtime::context::{NodeContext, RoleShared};
use crate::runtime::coordinator::{Activation, CoordinatorActor, CoordinatorMsg};
use crate::runtime::reload::{CatchUp, ReloadActor, ReloadMsg};
use crate::runtime::term::Term;
use crate::status::{ResignError, RoleStatus, StepDownReason};
use crate::task::OwnedTask;
use crate::telemetry;
use lease::{Beat, Renewal};
use machine::{Command, ElectionMachine, Event, Phase, Timings};
use publisher::Publisher;

/// The election actor of one role on one node.
pub(crate) struct Election<C: Coordinator> {
    role: String,
    coordinator: Arc<C>,
    context: Arc<NodeContext>,
    shared: Arc<RoleShared<C>>,
    election: String,
}

impl<C: Coordinator> Election<C> {
    /// An election actor for `role`, reporting its lease in `shared.lease`.
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
    /// A lease was granted and the session registered on it.
    LeaseGranted {
        /// The lease.
        lease: i64,
        /// When the grant was sent.
        sent_at: Instant,
    },
    /// Granting or registering failed.
    LeaseGrantFailed,
    /// A keepalive sent at `sent_at` succeeded.
    KeepaliveAcked {
        /// The lease.
        lease: i64,
        /// When the keepalive was sent.
        sent_at: Instant,
    },
    /// etcd says the lease is gone.
    LeaseLost {
        /// The lease.
        lease: i64,
    },
    /// Check the renew deadline.
    Tick,
    /// Log the standby line operators look for.
    StandbyReminder,
    /// The campaign of `generation` leads.
    Elected {
        /// The campaign generation.
        generation: u64,
        /// The leading candidacy.
        candidacy: Candidacy,
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
    },
    /// The campaign of `generation` failed.
    CampaignFailed {
        /// The campaign generation.
        generation: u64,
        /// The lease it was on.
        lease: i64,
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
    /// Deleting our candidate key failed.
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
    reload: Option<ActorRef<ReloadMsg<C>>>,
    reload_generation: u64,
    reload_restarts: Backoff,
    candidacy: Option<Candidacy>,
    campaign: Option<OwnedTask>,
    campaign_generation: u64,
    keepalive: Option<OwnedTask>,
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
    resign_replies: Vec<RpcReplyPort<Result<(), ResignError>>>,
    _observer: OwnedTask,
    timers: Vec<JoinHandle<()>>,
}

impl<C: Coordinator> Drop for ElectionState<C> {
    fn drop(&mut self) {
        for timer in &self.timers {
            timer.abort();
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

    async fn spawn_coordinator(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state_coordinator: &mut Option<ActorRef<CoordinatorMsg<C>>>,
        leader: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let config = &self.context.config.coordinator;
        let actor = CoordinatorActor::new(
            self.coordinator.clone(),
            self.role.clone(),
            config.activation_buffer,
            config.deactivate_timeout,
            self.shared.faults.clone(),
        );
        let (coordinator, _) = Actor::spawn_linked(None, actor, (), myself.get_cell()).await?;
        let _ = coordinator.send_message(CoordinatorMsg::LeaderChanged(leader));
        self.shared.coordinator.set(Some(coordinator.clone()));
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
        for command in state.machine.on(event) {
            self.execute(myself, state, command).await?;
        }
        self.report_status(state);
        Ok(())
    }

    fn report_status(&self, state: &ElectionState<C>) {
        let phase = state.machine.phase();
        let epoch = state
            .term
            .as_ref()
            .filter(|_| phase.leads())
            .map(|term| term.epoch().clone());
        let lease = state.machine.lease();
        self.shared.lease.set(lease);
        // A stopped node's last word is final: an actor still dying must
        // not report a state.
        if self.shared.is_stopped() {
            return;
        }
        if let Some(term) = &state.term {
            term.trust_until(state.machine.lease_trusted_until());
        }
        let published = phase.published_state();
        self.shared.status.send_if_modified(|status| {
            let next = RoleStatus {
                state: published,
                epoch,
                leader: state.leader.clone(),
                lease,
                last_step_down: state.last_step_down,
                ..status.clone()
            };
            let changed = next != *status;
            *status = next;
            changed
        });
        telemetry::set_role_state(&self.role, published);
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
            Command::GrantLease { after } => self.grant_lease(myself, backoff::jittered(after)),
            Command::StartKeepalive { lease } => self.start_keepalive(myself, state, lease),
            Command::StopKeepalive => {
                state.keepalive = None;
                state.publisher = None;
            }
            Command::Campaign { lease, after } => {
                self.campaign(myself, state, lease, backoff::jittered(after))
            }
            Command::CancelCampaign => {
                state.campaign_generation += 1;
                state.campaign = None;
            }
            Command::Publish(published) => self.publish(state, published),
            Command::StartReload { revision } => self.start_reload(myself, state, revision).await?,
            Command::StopReload => {
                // The copy stays warm for the next term: only the catch-up goes.
                state.reload_generation += 1;
                if let Some(reload) = &state.reload {
                    let _ = reload.send_message(ReloadMsg::Cancel);
                }
                state.meta = None;
            }
            Command::Activate { revision } => self.activate(myself, state, revision)?,
            Command::Depose(reason) => self.depose(state, reason),
            Command::Deactivate => self.deactivate(myself, state),
            Command::Resign { lease } => self.resign(myself, state, lease),
            Command::RevokeLease { lease } => self.revoke_lease(myself, state, lease),
            Command::RestartCoordinator { after } => {
                let after = backoff::jittered(after);
                self.shared.coordinator.set(None);
                state.coordinator = None;
                tracing::warn!(
                    role = self.role,
                    restart_in_ms = after.as_millis() as u64,
                    "coordinator crashed; restarting it in standby"
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

    fn grant_lease(&self, myself: &ActorRef<ElectionMsg<C>>, after: Duration) {
        let client = self.context.client.clone();
        let context = self.context.clone();
        let role = self.role.clone();
        let reply = myself.clone();
        let retry = context.config.etcd.retry.clone();
        let grant = async move {
            tokio::time::sleep(after).await;
            let sent_at = Instant::now();
            let key = context.layout.session(&role, context.server_id);
            let session = |lease| context.session(&role, RoleState::Standby, lease).encode();
            let ttl = context.config.session.ttl_secs();
            let request_timeout = context.config.etcd.request_timeout;
            match lease::grant(&client, ttl, key, session, request_timeout * 2).await {
                Ok(lease) => {
                    let granted = ElectionMsg::LeaseGranted { lease, sent_at };
                    if reply.send_message(granted).is_err() {
                        // The actor stopped meanwhile: nobody will keep
                        // this lease alive, so do not leave it to the TTL.
                        let until = Instant::now() + context.config.session.ttl;
                        etcd::revoke(&client, lease, request_timeout, &retry, until).await;
                    }
                }
                Err(reason) => {
                    tracing::warn!(
                        role,
                        "granting a lease failed, retrying with backoff: {reason}"
                    );
                    let _ = reply.send_message(ElectionMsg::LeaseGrantFailed);
                }
            }
        };
        // Detached: a grant must be able to finish (and revoke what it got)
        // even if the actor stops in the meantime.
        Self::spawn(myself, "granting a lease", grant).detach();
    }

    fn start_keepalive(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        lease: i64,
    ) {
        let session = &self.context.config.session;
        let beat = Beat {
            interval: session.keepalive_interval(),
            timeout: session.keepalive_timeout(),
        };
        let reply = myself.clone();
        let report = move |renewal| {
            let message = match renewal {
                Renewal::Renewed { sent_at } => ElectionMsg::KeepaliveAcked { lease, sent_at },
                Renewal::Lost => ElectionMsg::LeaseLost { lease },
            };
            reply.send_message(message).is_ok()
        };
        let client = self.context.client.clone();
        let keepalive = lease::keep_alive(client.clone(), lease, beat, self.role.clone(), report);
        state.keepalive = Some(Self::spawn(myself, "keeping the lease alive", keepalive));
        let key = self
            .context
            .layout
            .session(&self.role, self.context.server_id);
        let reply = myself.clone();
        state.publisher = Some(Publisher::start(
            client,
            key,
            self.context.config.etcd.retry.initial,
            move |reason| {
                let task = "publishing the session";
                let _ = reply.send_message(ElectionMsg::TaskFailed { task, reason });
            },
        ));
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
        let client = self.context.client.clone();
        let election = self.election.clone();
        let value = self
            .context
            .session(&self.role, RoleState::Standby, lease)
            .encode();
        let reply = myself.clone();
        let retry = self.context.config.etcd.retry.initial;
        // A node whose warm copy is still being read joins the election
        // only once it is loaded: behind the warm peers, which take over
        // in milliseconds, instead of ahead of them, where its win would
        // wait for the read.
        let mut copy = self
            .context
            .config
            .reload
            .warm
            .then(|| self.shared.copy.subscribe());
        let role = self.role.clone();
        let campaign = async move {
            tokio::time::sleep(after).await;
            if let Some(copy) = &mut copy
                && copy.borrow().is_none()
            {
                tracing::info!(
                    role,
                    "waiting for the metadata copy to load before campaigning"
                );
                let _ = copy.wait_for(Option::is_some).await;
            }
            let won = async {
                let candidacy = recipe::join(&client, &election, lease, value).await?;
                let _ = reply.send_message(ElectionMsg::CampaignJoined { generation, lease });
                recipe::wait_until_leader(&client, &election, &candidacy).await?;
                Ok::<_, recipe::CampaignError>(candidacy)
            };
            let candidacy = match won.await {
                Ok(won) => won,
                Err(error) => {
                    tracing::warn!(election, "campaign failed: {error}");
                    let _ = reply.send_message(ElectionMsg::CampaignFailed { generation, lease });
                    return;
                }
            };
            let key = candidacy.key.clone();
            let revision = candidacy.revision;
            let _ = reply.send_message(ElectionMsg::Elected {
                generation,
                candidacy,
            });
            // While leading, watch our own key: if anyone deletes it,
            // the next candidate leads and we must not keep serving.
            recipe::watch_own_key(&client, &key, revision, retry).await;
            let _ = reply.send_message(ElectionMsg::LeaderKeyDeleted {
                generation,
                revision,
            });
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
        if let (Some(publisher), Some(lease)) = (&state.publisher, state.machine.lease()) {
            let info = self.context.session(&self.role, published, lease);
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
        let term = Term::open(epoch, state.machine.lease_trusted_until());
        self.shared.term.set(Some(term.clone()));
        state.term = Some(term);
        state.reload_generation += 1;
        let generation = state.reload_generation;
        let election = myself.clone();
        let job = CatchUp {
            store: self.store(state)?,
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
        if let (Some(coordinator), Some(term)) = (&state.coordinator, &state.term) {
            let _ = coordinator.send_message(CoordinatorMsg::Elected { term: term.clone() });
        }
        if state.reload.is_none() {
            self.spawn_reload(myself, state).await?;
        }
        if let Some(reload) = &state.reload {
            let _ = reload.send_message(ReloadMsg::CatchUp(Box::new(job)));
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
    async fn spawn_reload(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
    ) -> Result<(), ActorProcessingErr> {
        let actor = ReloadActor::new(
            self.role.clone(),
            self.coordinator.clone(),
            &self.context,
            &self.shared,
        );
        let (reload, _) = Actor::spawn_linked(None, actor, (), myself.get_cell()).await?;
        state.reload = Some(reload);
        Ok(())
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

    /// Closes the term, at the instant the step-down is decided: from here
    /// on nothing answers for it and its stores refuse every write.
    fn depose(&self, state: &mut ElectionState<C>, reason: StepDownReason) {
        state.last_step_down = Some(reason);
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

    fn resign(&self, myself: &ActorRef<ElectionMsg<C>>, state: &mut ElectionState<C>, lease: i64) {
        let key = recipe::candidate_key(&self.election, lease);
        state.candidacy = None;
        let client = self.context.client.clone();
        let request_timeout = self.context.config.etcd.request_timeout;
        let reply = myself.clone();
        let resign = async move {
            let mut kv = client.kv_client();
            let what = format!("resigning {key}");
            if !etcd::best_effort(&what, request_timeout, kv.delete(key.as_str(), None)).await {
                // The key may still lead, and campaigning again on this
                // lease would find it and reuse its epoch: give up the
                // lease instead, which deletes the key for sure.
                let _ = reply.send_message(ElectionMsg::ResignFailed);
            }
            let _ = reply.send_message(ElectionMsg::Released);
        };
        state.release = Some(Self::spawn(myself, "resigning", resign));
    }

    fn revoke_lease(
        &self,
        myself: &ActorRef<ElectionMsg<C>>,
        state: &mut ElectionState<C>,
        lease: i64,
    ) {
        state.candidacy = None;
        let client = self.context.client.clone();
        let request_timeout = self.context.config.etcd.request_timeout;
        let retry = self.context.config.etcd.retry.clone();
        // The lease was renewed at most now: past one TTL etcd has expired it anyway.
        let until = Instant::now() + self.context.config.session.ttl;
        let reply = myself.clone();
        let revoke = async move {
            etcd::revoke(&client, lease, request_timeout, &retry, until).await;
            let _ = reply.send_message(ElectionMsg::Released);
        };
        state.release = Some(Self::spawn(myself, "revoking the lease", revoke));
    }
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
        let observe = recipe::observe(
            self.context.client.clone(),
            self.election.clone(),
            self.context.config.etcd.retry.initial,
            move |leader| {
                reporter
                    .send_message(ElectionMsg::LeaderObserved(leader))
                    .is_ok()
            },
        );
        let observer = Self::spawn(&myself, "observing the leader", observe);
        let session = &self.context.config.session;
        let tick = (session.renew_deadline() / 20)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let timers = vec![
            myself.send_interval(tick, || ElectionMsg::Tick),
            myself.send_interval(session.standby_log_interval, || {
                ElectionMsg::StandbyReminder
            }),
        ];
        let mut state = ElectionState {
            machine: ElectionMachine::new(self.timings()),
            coordinator: None,
            reload: None,
            reload_generation: 0,
            reload_restarts: Backoff::new(self.context.config.coordinator.restart_backoff.clone()),
            candidacy: None,
            campaign: None,
            campaign_generation: 0,
            keepalive: None,
            publisher: None,
            release: None,
            coordinator_wait: None,
            term: None,
            meta: None,
            won_at: None,
            leader: None,
            last_step_down: None,
            shutdown_replies: Vec::new(),
            resign_replies: Vec::new(),
            _observer: observer,
            timers,
        };
        self.spawn_coordinator(&myself, &mut state.coordinator, None)
            .await?;
        self.spawn_reload(&myself, &mut state).await?;
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
        let event = match message {
            ElectionMsg::Shutdown(reply) => {
                state.shutdown_replies.push(reply);
                Event::Shutdown
            }
            ElectionMsg::LeaseGranted { lease, sent_at } => {
                tracing::info!(role = self.role, lease, "lease granted, session registered");
                Event::LeaseGranted { lease, sent_at }
            }
            ElectionMsg::LeaseGrantFailed => Event::LeaseGrantFailed,
            ElectionMsg::KeepaliveAcked { lease, sent_at } => {
                Event::KeepaliveAcked { lease, sent_at }
            }
            ElectionMsg::LeaseLost { lease } => Event::LeaseLost { lease },
            ElectionMsg::Tick => Event::Tick {
                now: Instant::now(),
            },
            ElectionMsg::StandbyReminder => {
                if state.machine.phase().published_state() == RoleState::Standby {
                    tracing::info!(
                        role = self.role,
                        "serverName: {} is in STANDBY ...",
                        self.role
                    );
                }
                return Ok(());
            }
            ElectionMsg::Elected {
                generation,
                candidacy,
            } => {
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
            ElectionMsg::LeaderKeyDeleted {
                generation,
                revision,
            } => {
                if !state.is_current(Tag::Campaign(generation)) {
                    return Ok(());
                }
                Event::LeaderKeyDeleted { revision }
            }
            ElectionMsg::CampaignJoined { generation, lease } => {
                if !state.is_current(Tag::Campaign(generation)) {
                    return Ok(());
                }
                Event::CampaignJoined { lease }
            }
            ElectionMsg::CampaignFailed { generation, lease } => {
                if !state.is_current(Tag::Campaign(generation)) {
                    return Ok(());
                }
                Event::CampaignFailed { lease }
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
            ElectionMsg::RestartReload => {
                if state.machine.phase() != Phase::Stopped && state.reload.is_none() {
                    self.spawn_reload(&myself, state).await?;
                    tracing::info!(role = self.role, "reload actor restarted");
                }
                return Ok(());
            }
            ElectionMsg::CoordinatorServing { revision } => Event::CoordinatorServing { revision },
            ElectionMsg::ActivationTimedOut { revision } => Event::ActivationTimedOut { revision },
            ElectionMsg::Resign(reply) => {
                if !state.machine.phase().leads() {
                    let _ = reply.send(Err(ResignError::NotLeader {
                        role: self.role.clone(),
                        leader: state.leader.as_ref().map(|l| l.session.address.clone()),
                    }));
                    return Ok(());
                }
                state.resign_replies.push(reply);
                Event::Resign
            }
            ElectionMsg::Deactivated => Event::Deactivated,
            ElectionMsg::ResignFailed => {
                // The key may lead until the lease is gone: say so, rather
                // than promise the caller that a peer can take over now.
                for reply in state.resign_replies.drain(..) {
                    let _ = reply.send(Err(ResignError::ResignUnconfirmed {
                        role: self.role.clone(),
                        ttl: self.context.config.session.ttl,
                    }));
                }
                Event::ResignFailed
            }
            ElectionMsg::Released => {
                self.apply(&myself, state, Event::Released).await?;
                // The leader key is gone: a peer can take over now.
                for reply in state.resign_replies.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                return Ok(());
            }
            ElectionMsg::RestartCoordinator => {
                if state.machine.phase() == Phase::Stopped || state.coordinator.is_some() {
                    return Ok(());
                }
                let leader = state.leader.as_ref().map(|l| l.session.address.clone());
                self.spawn_coordinator(&myself, &mut state.coordinator, leader)
                    .await?;
                tracing::info!(role = self.role, "coordinator restarted in standby");
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
            ElectionMsg::LeaderObserved(leader) => {
                if let Some(coordinator) = &state.coordinator {
                    let address = leader.as_ref().map(|l| l.session.address.clone());
                    let _ = coordinator.send_message(CoordinatorMsg::LeaderChanged(address));
                }
                state.leader = leader;
                self.report_status(state);
                return Ok(());
            }
        };
        self.apply(&myself, state, event).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
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
        } else if state.reload.as_ref().is_some_and(|r| r.get_id() == id) {
            // The warm copy is gone with the actor: a new one reads it
            // again, after a backoff in case the crash repeats.
            state.reload = None;
            let reason = reason.unwrap_or_else(|| "stopped".into());
            tracing::error!(role = self.role, "reload failed: {reason}");
            let after = state.reload_restarts.next_delay();
            myself.send_after(after, || ElectionMsg::RestartReload);
            if matches!(state.machine.phase(), Phase::Reloading { .. }) {
                self.apply(&myself, state, Event::ReloadFailed).await?;
            }
        }
        Ok(())
    }
}
