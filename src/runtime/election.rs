//! The election actor: holds a role's etcd lease, campaigns, and supervises the role's coordinator and reload actors.
//!
//! Decisions are made by [`machine::ElectionMachine`]; this actor turns etcd
//! replies, timers and supervision events into its events and carries out its
//! commands. Every etcd call runs in a task that reports back as a message, so
//! the mailbox never waits on etcd and the renew deadline is always checked.

pub(crate) mod machine;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;

use crate::coordinator::Coordinator;
use crate::etcd::best_effort;
use crate::etcd::recipe::{self, Candidacy, Leader};
use crate::etcd::session::{RoleState, SessionInfo};
use crate::fence::{DeposeSwitch, Epoch, FencedStore};
use crate::runtime::context::{NodeContext, RoleShared};
use crate::runtime::coordinator::{Activation, CoordinatorActor, CoordinatorMsg};
use crate::runtime::reload::{ReloadActor, ReloadJob};
use crate::status::{ResignError, RoleStatus, StepDownReason};
use crate::task::OwnedTask;
use crate::telemetry;
use machine::{Command, ElectionMachine, Event, Phase, Timings};

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

/// Messages to an election actor. Replies from etcd tasks carry the lease or
/// campaign generation they belong to, so a late reply from an earlier term
/// is recognised and dropped.
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
    /// The campaign of `generation` failed.
    CampaignFailed {
        /// The campaign generation.
        generation: u64,
        /// The lease it was on.
        lease: i64,
    },
    /// The reload for `revision` finished.
    Reloaded {
        /// The epoch revision.
        revision: i64,
        /// The decoded metadata.
        meta: C::Meta,
    },
    /// The coordinator serves for `revision`.
    CoordinatorServing {
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
    /// Panic in the actor, as a bug would (fault injection for tests: `RoleHandle::crash_*`, `standin run --fault-injection`).
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

/// What an election actor's state changes between messages.
pub(crate) struct ElectionState<C: Coordinator> {
    machine: ElectionMachine,
    coordinator: Option<ActorRef<CoordinatorMsg<C>>>,
    reload: Option<ActorCell>,
    candidacy: Option<Candidacy>,
    campaign: Option<OwnedTask>,
    campaign_generation: u64,
    keepalive: Option<OwnedTask>,
    publisher: Option<Publisher>,
    depose: Option<DeposeSwitch>,
    epoch: Option<Epoch>,
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
        // Whatever ends this actor, the store of its term must refuse writes.
        if let Some(switch) = &self.depose {
            switch.depose();
        }
    }
}

/// Writes the session (and the leader value while leading) in order, the
/// newest wins, retrying until it lands or is superseded.
struct Publisher {
    latest: watch::Sender<Option<(SessionInfo, Option<Candidacy>)>>,
    _task: OwnedTask,
}

impl Publisher {
    fn start(client: Client, key: String, retry_after: Duration) -> Self {
        let (latest, mut updates) = watch::channel(None::<(SessionInfo, Option<Candidacy>)>);
        let task = OwnedTask::spawn(async move {
            while updates.changed().await.is_ok() {
                let Some((info, leading)) = updates.borrow_and_update().clone() else {
                    continue;
                };
                loop {
                    match publish(&client, &key, &info, leading.as_ref()).await {
                        Ok(()) => break,
                        // The term ended under us; the next state published says so.
                        Err(recipe::CampaignError::CandidacyLost { .. }) => break,
                        Err(error) => {
                            tracing::warn!(key, state = %info.state, "publishing the session failed, retrying: {error}");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after) => {}
                        changed = updates.changed() => {
                            if changed.is_err() { return; }
                            // A newer state supersedes this one: publish that instead.
                            break;
                        }
                    }
                }
            }
        });
        Self {
            latest,
            _task: task,
        }
    }
}

async fn publish(
    client: &Client,
    key: &str,
    info: &SessionInfo,
    leading: Option<&Candidacy>,
) -> Result<(), recipe::CampaignError> {
    let value = info.encode();
    let options = PutOptions::new().with_lease(info.lease_id);
    client
        .kv_client()
        .put(key, value.clone(), Some(options))
        .await?;
    if let Some(candidacy) = leading {
        recipe::proclaim(client, candidacy, value).await?;
    }
    Ok(())
}

impl<C: Coordinator> Election<C> {
    fn timings(&self) -> Timings {
        Timings {
            renew_deadline: self.context.config.session.renew_deadline(),
            backoff: self.context.config.etcd.retry.clone(),
            restart_backoff: self.context.config.coordinator.restart_backoff.clone(),
        }
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
            self.shared.lease_guard.clone(),
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
        let epoch = if phase.leads() {
            state.epoch.clone()
        } else {
            None
        };
        let lease = state.machine.lease();
        self.shared.lease.set(lease);
        // A stopped node's last word is final: an actor still dying must
        // neither trust the lease again nor report a state.
        if self.shared.is_stopped() {
            return;
        }
        self.shared
            .lease_guard
            .trust_until(state.machine.lease_trusted_until());
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
        let client = self.context.client.clone();
        let request_timeout = self.context.config.etcd.request_timeout;
        match command {
            Command::GrantLease { after } => {
                let ttl = self.context.config.session.ttl_secs();
                let key = self
                    .context
                    .layout
                    .session(&self.role, self.context.server_id);
                let context = self.context.clone();
                let role = self.role.clone();
                let reply = myself.clone();
                // Not owned: a grant must be able to finish and report even
                // if a shutdown comes in the meantime.
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let sent_at = Instant::now();
                    let granted = async {
                        let lease = client.lease_client().grant(ttl, None).await?.id();
                        let info = context.session(&role, RoleState::Standby, lease);
                        let options = PutOptions::new().with_lease(lease);
                        client
                            .kv_client()
                            .put(key, info.encode(), Some(options))
                            .await?;
                        Ok::<_, etcd_client::Error>(lease)
                    };
                    let message = match tokio::time::timeout(request_timeout * 2, granted).await {
                        Ok(Ok(lease)) => {
                            let granted = ElectionMsg::LeaseGranted { lease, sent_at };
                            if reply.send_message(granted).is_err() {
                                // The actor stopped meanwhile: nobody will keep
                                // this lease alive, so do not leave it to the TTL.
                                let mut leases = client.lease_client();
                                best_effort(
                                    "revoking an orphaned lease",
                                    request_timeout,
                                    leases.revoke(lease),
                                )
                                .await;
                            }
                            return;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(
                                role,
                                "granting a lease failed, retrying with backoff: {error}"
                            );
                            ElectionMsg::LeaseGrantFailed
                        }
                        Err(_) => {
                            tracing::warn!(
                                role,
                                "granting a lease timed out, retrying with backoff"
                            );
                            ElectionMsg::LeaseGrantFailed
                        }
                    };
                    let _ = reply.send_message(message);
                });
            }
            Command::StartKeepalive { lease } => {
                let interval = self.context.config.session.keepalive_interval();
                state.keepalive = Some(OwnedTask::spawn(keep_alive(
                    client.clone(),
                    lease,
                    interval,
                    request_timeout,
                    self.role.clone(),
                    myself.clone(),
                )));
                let key = self
                    .context
                    .layout
                    .session(&self.role, self.context.server_id);
                state.publisher = Some(Publisher::start(
                    client,
                    key,
                    self.context.config.etcd.retry.initial,
                ));
            }
            Command::StopKeepalive => {
                state.keepalive = None;
                state.publisher = None;
            }
            Command::Campaign { lease, after } => {
                state.campaign_generation += 1;
                let generation = state.campaign_generation;
                let election = self.election.clone();
                let value = self
                    .context
                    .session(&self.role, RoleState::Standby, lease)
                    .encode();
                let reply = myself.clone();
                let retry = self.context.config.etcd.retry.initial;
                state.campaign = Some(OwnedTask::spawn(async move {
                    tokio::time::sleep(after).await;
                    let won = async {
                        let candidacy = recipe::join(&client, &election, lease, value).await?;
                        recipe::wait_until_leader(&client, &election, &candidacy).await?;
                        Ok::<_, recipe::CampaignError>(candidacy)
                    };
                    let candidacy = match won.await {
                        Ok(won) => won,
                        Err(error) => {
                            tracing::warn!(election, "campaign failed: {error}");
                            let _ = reply
                                .send_message(ElectionMsg::CampaignFailed { generation, lease });
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
                }));
            }
            Command::CancelCampaign => {
                state.campaign_generation += 1;
                state.campaign = None;
            }
            Command::Publish(published) => {
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
                    metrics::counter!(telemetry::TAKEOVERS, "role" => self.role.clone())
                        .increment(1);
                }
                if let (Some(publisher), Some(lease)) = (&state.publisher, state.machine.lease()) {
                    let info = self.context.session(&self.role, published, lease);
                    let leading = state
                        .machine
                        .phase()
                        .leads()
                        .then(|| state.candidacy.clone())
                        .flatten();
                    publisher.latest.send_replace(Some((info, leading)));
                }
            }
            Command::StartReload { revision } => {
                let job = ReloadJob {
                    coordinator: self.coordinator.clone(),
                    client,
                    role: self.role.clone(),
                    prefix: self.context.layout.meta(&self.role),
                    revision,
                    page_size: self.context.config.reload.page_size,
                    timeout: self.context.config.reload.timeout,
                    report: {
                        let election = myself.clone();
                        Box::new(move |revision, meta| {
                            let _ = election.send_message(ElectionMsg::Reloaded { revision, meta });
                        })
                    },
                    faults: self.shared.faults.clone(),
                };
                // From the win on, requests wait for the activation instead
                // of being sent away to this very node.
                if let Some(coordinator) = &state.coordinator {
                    let _ = coordinator.send_message(CoordinatorMsg::Elected { revision });
                }
                let actor = ReloadActor::<C>::default();
                let (reload, _) = Actor::spawn_linked(None, actor, job, myself.get_cell()).await?;
                state.reload = Some(reload.get_cell());
            }
            Command::StopReload => {
                if let Some(reload) = state.reload.take() {
                    reload.kill();
                }
                state.meta = None;
            }
            Command::Activate { revision } => {
                let (Some(meta), Some(epoch), Some(coordinator)) = (
                    state.meta.take(),
                    state.epoch.clone(),
                    state.coordinator.clone(),
                ) else {
                    return Err("activation without metadata, epoch or coordinator".into());
                };
                debug_assert_eq!(epoch.revision, revision);
                let (store, switch) =
                    FencedStore::new(client, epoch.clone(), self.context.layout.meta(&self.role));
                state.depose = Some(switch);
                #[cfg(feature = "testing")]
                self.shared.store.set(Some(store.clone()));
                let reply = myself.clone();
                tokio::spawn(async move {
                    let activated = coordinator
                        .call(
                            |reply| {
                                CoordinatorMsg::Activate(Box::new(Activation {
                                    epoch,
                                    meta,
                                    store,
                                    reply,
                                }))
                            },
                            None,
                        )
                        .await;
                    // A failed activation crashes the coordinator, which the
                    // supervision event reports; only success is sent here.
                    if let Ok(ractor::rpc::CallResult::Success(())) = activated {
                        let _ = reply.send_message(ElectionMsg::CoordinatorServing { revision });
                    }
                });
            }
            Command::Depose(reason) => {
                state.last_step_down = Some(reason);
                if let Some(switch) = state.depose.take() {
                    switch.depose();
                }
                #[cfg(feature = "testing")]
                self.shared.store.set(None);
                tracing::warn!(role = self.role, reason = reason.as_str(), "stepping down");
                metrics::counter!(telemetry::STEP_DOWNS, "role" => self.role.clone(), "reason" => reason.as_str())
                    .increment(1);
            }
            Command::Deactivate => {
                let reply = myself.clone();
                let bound =
                    self.context.config.coordinator.deactivate_timeout + Duration::from_secs(1);
                let coordinator = state.coordinator.clone();
                tokio::spawn(async move {
                    if let Some(coordinator) = coordinator {
                        let answer = coordinator
                            .call(|reply| CoordinatorMsg::Deactivate { reply }, Some(bound))
                            .await;
                        if !matches!(answer, Ok(ractor::rpc::CallResult::Success(()))) {
                            // A coordinator that cannot get back to standby is
                            // stopped; the supervision event restarts it.
                            tracing::error!(
                                "coordinator did not deactivate within {bound:?}; killing it"
                            );
                            coordinator.kill();
                        }
                    }
                    let _ = reply.send_message(ElectionMsg::Deactivated);
                });
            }
            Command::Resign { lease } => {
                let key = recipe::candidate_key(&self.election, lease);
                state.candidacy = None;
                let reply = myself.clone();
                tokio::spawn(async move {
                    let mut kv = client.kv_client();
                    let what = format!("resigning {key}");
                    if !best_effort(&what, request_timeout, kv.delete(key.as_str(), None)).await {
                        // The key may still lead, and campaigning again on this
                        // lease would find it and reuse its epoch: give up the
                        // lease instead, which deletes the key for sure.
                        let _ = reply.send_message(ElectionMsg::ResignFailed);
                    }
                    let _ = reply.send_message(ElectionMsg::Released);
                });
            }
            Command::RevokeLease { lease } => {
                state.candidacy = None;
                let reply = myself.clone();
                tokio::spawn(async move {
                    let mut leases = client.lease_client();
                    let what = format!("revoking lease {lease}");
                    best_effort(&what, request_timeout, leases.revoke(lease)).await;
                    let _ = reply.send_message(ElectionMsg::Released);
                });
            }
            Command::RestartCoordinator { after } => {
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
}

/// Keeps `lease` alive every `interval`, reporting each success with the time
/// its request was sent (where the renew deadline counts from) and a lease
/// that etcd no longer knows. A broken stream is reopened; the election
/// actor's renew deadline decides when to give up.
async fn keep_alive<C: Coordinator>(
    client: Client,
    lease: i64,
    interval: Duration,
    request_timeout: Duration,
    role: String,
    report_to: ActorRef<ElectionMsg<C>>,
) {
    let mut lease_client = client.lease_client();
    loop {
        let sent_at = Instant::now();
        let opened = tokio::time::timeout(request_timeout, lease_client.keep_alive(lease)).await;
        let (mut keeper, mut responses) = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(reason))) => {
                tracing::warn!(
                    role,
                    lease,
                    "etcd refuses to keep the lease alive: {reason}"
                );
                let _ = report_to.send_message(ElectionMsg::LeaseLost { lease });
                return;
            }
            Ok(Err(error)) => {
                keepalive_failed(&role, lease, &error.to_string());
                tokio::time::sleep(interval / 4).await;
                continue;
            }
            Err(_) => {
                keepalive_failed(&role, lease, "timed out opening the keepalive stream");
                continue;
            }
        };
        // Opening the stream renewed the lease once already.
        let _ = report_to.send_message(ElectionMsg::KeepaliveAcked { lease, sent_at });
        loop {
            tokio::time::sleep(interval).await;
            let sent_at = Instant::now();
            if let Err(error) = keeper.keep_alive().await {
                keepalive_failed(&role, lease, &error.to_string());
                break;
            }
            match tokio::time::timeout(request_timeout, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {
                    metrics::histogram!(telemetry::KEEPALIVE_RTT_SECONDS, "role" => role.clone())
                        .record(sent_at.elapsed().as_secs_f64());
                    let _ = report_to.send_message(ElectionMsg::KeepaliveAcked { lease, sent_at });
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(role, lease, "etcd says the lease has expired");
                    let _ = report_to.send_message(ElectionMsg::LeaseLost { lease });
                    return;
                }
                Ok(Ok(None)) => {
                    keepalive_failed(&role, lease, "keepalive stream closed");
                    break;
                }
                Ok(Err(error)) => {
                    keepalive_failed(&role, lease, &error.to_string());
                    break;
                }
                Err(_) => {
                    keepalive_failed(&role, lease, "no keepalive answer in time");
                    break;
                }
            }
        }
    }
}

fn keepalive_failed(role: &str, lease: i64, reason: &str) {
    tracing::warn!(role, lease, "keepalive failed: {reason}");
    metrics::counter!(telemetry::KEEPALIVE_FAILURES, "role" => role.to_owned()).increment(1);
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
        let observer = OwnedTask::spawn(recipe::observe(
            self.context.client.clone(),
            self.election.clone(),
            self.context.config.etcd.retry.initial,
            move |leader| {
                reporter
                    .send_message(ElectionMsg::LeaderObserved(leader))
                    .is_ok()
            },
        ));
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
            candidacy: None,
            campaign: None,
            campaign_generation: 0,
            keepalive: None,
            publisher: None,
            depose: None,
            epoch: None,
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
                if generation != state.campaign_generation {
                    return Ok(());
                }
                state.won_at = Some(Instant::now());
                state.epoch = Some(Epoch {
                    role: self.role.clone(),
                    leader_key: candidacy.key.clone(),
                    revision: candidacy.revision,
                });
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
                if generation != state.campaign_generation {
                    return Ok(());
                }
                Event::LeaderKeyDeleted { revision }
            }
            ElectionMsg::CampaignFailed { generation, lease } => {
                if generation != state.campaign_generation {
                    return Ok(());
                }
                Event::CampaignFailed { lease }
            }
            ElectionMsg::Reloaded { revision, meta } => {
                state.reload = None;
                state.meta = Some(meta);
                Event::Reloaded { revision }
            }
            ElectionMsg::CoordinatorServing { revision } => Event::CoordinatorServing { revision },
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
            // Only a failure carries a reason: a reload actor stops by itself when done.
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
            state.reload = None;
            if let Some(reason) = reason {
                tracing::error!(role = self.role, "reload failed: {reason}");
                self.apply(&myself, state, Event::ReloadFailed).await?;
            }
        }
        Ok(())
    }
}
