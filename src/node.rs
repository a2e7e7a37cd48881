//! The node: one process's runtime handle, which runs a set of roles, each under its own election.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

use crate::backoff::Backoff;
use crate::config::{Config, ConfigError, ReloadConfig};
use crate::coordinator::Coordinator;
use crate::etcd::recipe::{self, CampaignError, Leader};
use crate::etcd::session::{Layout, SessionError, SessionInfo, allocate_server_id};
use crate::etcd::{EtcdError, GaveUp, PrefixFanout, TxnBatcher, WatchHub};
use crate::role::{RoleControl, RoleHandle};
use crate::runtime::context::{NodeContext, RoleShared};
use crate::runtime::election::ElectionMsg;
use crate::runtime::session::{Session, SessionMsg};
use crate::runtime::spread::{Movable, Spread, SpreadMsg};
use crate::runtime::supervisor::{ElectionSlot, RoleSupervisor, SupervisorMsg};
use crate::runtime::witness::Witness;
pub use crate::runtime::witness::WitnessError;
use crate::status::{ResignError, RoleState, Successor, TransferTarget};
use crate::task::OwnedTask;

/// Failures to start or stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is impossible.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// etcd could not be reached, or refused the credentials.
    #[error(transparent)]
    EtcdUnavailable(#[from] EtcdError),
    /// The server ID could not be allocated within `etcd.connectAttempts` tries.
    #[error("allocating this node's server ID failed after {attempts} attempt(s): {source}")]
    ServerIdFailed {
        /// How many tries were made.
        attempts: u32,
        /// Why the last one failed.
        #[source]
        source: SessionError,
    },
    /// The leader of an exclusive role could not be read within `etcd.connectAttempts` tries.
    #[error(
        "reading the leader of exclusive role {role:?} failed after {attempts} attempt(s): {source}"
    )]
    LeaderCheckFailed {
        /// The role.
        role: String,
        /// How many tries were made.
        attempts: u32,
        /// Why the last one failed.
        #[source]
        source: CampaignError,
    },
    /// The role is exclusive here (`activeStandby.enabled: false`), and
    /// another instance already leads it.
    #[error(
        "role {role:?} is exclusive ({role}.activeStandby.enabled is false) and is already held \
         by server {} at {}: stop that instance first, or enable active-standby",
        .holder.server_id,
        .holder.address
    )]
    RoleHeldExclusively {
        /// The role.
        role: String,
        /// The session of the instance that leads it.
        holder: Box<SessionInfo>,
    },
    /// The role is exclusive here, and its election is led by something
    /// that is not a standin node (etcd's own tools can campaign too).
    #[error(
        "role {role:?} is exclusive ({role}.activeStandby.enabled is false) and its election \
         is already led by {key}, whose value is not a standin session: {source}"
    )]
    RoleHeldByForeignLeader {
        /// The role.
        role: String,
        /// The leader key.
        key: String,
        /// Why its value is not a session.
        #[source]
        source: SessionError,
    },
    /// Two roles with the same name.
    #[error("role {0:?} is added twice")]
    DuplicateRole(String),
    /// A role name etcd keys cannot carry.
    #[error("role name {0:?} must be non-empty and use only letters, digits, '-' and '_'")]
    BadRoleName(String),
    /// `start` without roles, or twice.
    #[error("{0}")]
    BadLifecycle(&'static str),
    /// The death witness could not listen.
    #[error(transparent)]
    WitnessFailed(#[from] WitnessError),
    /// The node's session actor could not be spawned.
    #[error("spawning the node's etcd session failed: {0}")]
    SessionFailed(#[source] SpawnErr),
    /// The node's spread actor could not be spawned.
    #[error("spawning the node's leadership spread failed: {0}")]
    SpreadFailed(#[source] SpawnErr),
    /// An actor could not be spawned.
    #[error("spawning the {role} supervisor failed: {source}")]
    SpawnFailed {
        /// The role.
        role: String,
        /// ractor's error.
        #[source]
        source: SpawnErr,
    },
}

type LaunchFuture = Pin<Box<dyn Future<Output = Result<ActorRef<SupervisorMsg>, SpawnErr>> + Send>>;

/// Spawns one of the node's actors, linked under `parent` when given.
async fn spawn_under<A: Actor<Arguments = ()>>(
    actor: A,
    parent: Option<ActorCell>,
) -> Result<ActorRef<A::Msg>, SpawnErr> {
    let (actor, _) = match parent {
        Some(parent) => Actor::spawn_linked(None, actor, (), parent).await?,
        None => Actor::spawn(None, actor, ()).await?,
    };
    Ok(actor)
}

/// A role of the node without its coordinator type: what the node does to
/// it, and what the spread moves.
trait NodeRole: Movable {
    /// Spawns the role's supervisor, linked under `parent` when given.
    fn launch(&self, context: Arc<NodeContext>, parent: Option<ActorCell>) -> LaunchFuture;
    /// Ends the role here for good (see `RoleShared::stop`).
    fn stop(&self);
}

struct TypedRole<C: Coordinator> {
    role: String,
    coordinator: Arc<C>,
    shared: Arc<RoleShared<C>>,
    election: ElectionSlot<C>,
}

impl<C: Coordinator> NodeRole for TypedRole<C> {
    fn launch(&self, context: Arc<NodeContext>, parent: Option<ActorCell>) -> LaunchFuture {
        let supervisor = RoleSupervisor::<C>::new(
            self.role.clone(),
            self.coordinator.clone(),
            context.clone(),
            self.shared.clone(),
            self.election.clone(),
        );
        let shared = self.shared.clone();
        Box::pin(async move {
            shared
                .status
                .send_modify(|status| status.server_id = context.server_id);
            spawn_under(supervisor, parent).await
        })
    }

    fn stop(&self) {
        self.shared.stop();
    }
}

impl<C: Coordinator> Movable for TypedRole<C> {
    fn transfer(
        &self,
        to: i64,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Successor, ResignError>> {
        let handle = RoleHandle::new(self.shared.clone(), self.election.clone());
        Box::pin(handle.transfer(TransferTarget::ServerId(to), timeout))
    }

    fn requeue(&self) {
        if let Some(election) = self.election.get() {
            let _ = election.send_message(ElectionMsg::Requeue);
        }
    }
}

/// One role of the node: its handle, and its supervisor while it runs.
struct RoleEntry {
    name: String,
    role: Arc<dyn NodeRole>,
    control: Arc<dyn RoleControl>,
    supervisor: Option<ActorRef<SupervisorMsg>>,
}

/// Refuses to start when a role configured exclusive (as Milvus does for a
/// coordinator without active-standby) is led by another instance; a free
/// exclusive role starts as any other. A check, not a lock: two exclusive
/// nodes starting at the same instant can both pass, and one then stands by.
async fn check_exclusive_roles(
    config: &Config,
    client: &Client,
    layout: &Layout,
    roles: &[String],
) -> Result<(), NodeError> {
    for role in roles
        .iter()
        .filter(|role| !config.role(role).active_standby.enabled)
    {
        let election = layout.election(role);
        let leader = crate::etcd::retry_bounded(
            &format!("reading the leader of exclusive role {role}"),
            Backoff::new(config.etcd.retry.clone()),
            config.etcd.connect_attempts,
            |_| false,
            || recipe::leader(client, &election),
        )
        .await
        .map_err(|GaveUp { attempts, last }| NodeError::LeaderCheckFailed {
            role: role.to_owned(),
            attempts,
            source: last,
        })?;
        let Some(leader) = leader else {
            tracing::info!(role, "role is exclusive and nobody leads it: starting it");
            continue;
        };
        return Err(match Leader::decode(&leader) {
            Ok(leader) => NodeError::RoleHeldExclusively {
                role: role.to_owned(),
                holder: Box::new(leader.session),
            },
            Err(source) => NodeError::RoleHeldByForeignLeader {
                role: role.to_owned(),
                key: String::from_utf8_lossy(leader.key()).into_owned(),
                source,
            },
        });
    }
    Ok(())
}

/// One process's standin runtime: the roles it runs, each kept highly available.
pub struct Node {
    config: Config,
    roles: Vec<RoleEntry>,
    /// The node's etcd session: the one lease every role's keys hang on.
    session: Option<ActorRef<SessionMsg>>,
    /// Spreads leadership over the nodes (`session.spreadLeaders`).
    spread: Option<ActorRef<SpreadMsg>>,
    context: Option<Arc<NodeContext>>,
    /// Keeps the client's calls off etcd members that stop answering.
    steering: Option<crate::etcd::Steering>,
    /// Logs, every `session.standbyLogInterval`, the roles standing by.
    standby_reminder: Option<OwnedTask>,
    /// The death witness. Declared last so that it closes last, after the
    /// roles were handed over or their leases revoked: peers read its
    /// closing as this process being gone.
    witness: Option<Witness>,
}

impl Node {
    /// A node with `config` and no roles yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            roles: Vec::new(),
            session: None,
            spread: None,
            context: None,
            steering: None,
            standby_reminder: None,
            witness: None,
        }
    }

    /// Adds `role`, served by `coordinator` when this node leads it. Returns
    /// the handle to reach it; the role runs once [`Node::start`] is called.
    pub fn add_role<C: Coordinator>(
        &mut self,
        role: &str,
        coordinator: C,
    ) -> Result<RoleHandle<C>, NodeError> {
        let valid = !role.is_empty()
            && role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(NodeError::BadRoleName(role.to_owned()));
        }
        if self.roles.iter().any(|entry| entry.name == role) {
            return Err(NodeError::DuplicateRole(role.to_owned()));
        }
        let shared = Arc::new(RoleShared::new(role));
        let election = ElectionSlot::default();
        let typed = TypedRole {
            role: role.to_owned(),
            coordinator: Arc::new(coordinator),
            shared: shared.clone(),
            election: election.clone(),
        };
        let handle = RoleHandle::new(shared, election);
        self.roles.push(RoleEntry {
            name: role.to_owned(),
            role: Arc::new(typed),
            control: Arc::new(handle.clone()),
            supervisor: None,
        });
        Ok(handle)
    }

    /// Validates the config, connects to etcd and checks that it answers,
    /// refuses an exclusive role (`activeStandby.enabled: false`) that
    /// another instance leads, allocates this node's server ID, and starts
    /// one election per role. Each etcd step is retried with backoff up to
    /// `etcd.connectAttempts` tries (0: forever).
    pub async fn start(&mut self) -> Result<(), NodeError> {
        self.start_under(None).await
    }

    /// [`start`](Self::start), with each role's supervisor spawned linked
    /// under `supervisor`, one of the embedder's actors: a role supervisor
    /// that fails (standin gave up on the role) reaches it as a
    /// `SupervisionEvent::ActorFailed`, and one that stops after
    /// [`shutdown`](Self::shutdown) as `ActorTerminated`. Killing
    /// `supervisor` kills the roles, as dropping the node does.
    pub async fn start_linked(&mut self, supervisor: ActorCell) -> Result<(), NodeError> {
        self.start_under(Some(supervisor)).await
    }

    async fn start_under(&mut self, parent: Option<ActorCell>) -> Result<(), NodeError> {
        if self.context.is_some() {
            return Err(NodeError::BadLifecycle("the node is already started"));
        }
        if self.roles.is_empty() {
            return Err(NodeError::BadLifecycle("a node needs at least one role"));
        }
        self.config.validate()?;
        let warnings = {
            let names: Vec<&str> = self.roles.iter().map(|entry| entry.name.as_str()).collect();
            self.config.deployment_warnings(&names)
        };
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let client = crate::etcd::connect_checked(&self.config.etcd).await?;
        self.steering = crate::etcd::steer(&client, &self.config.etcd);
        let layout = Layout::new(&self.config.etcd.root_path);
        let roles: Vec<String> = self.roles.iter().map(|entry| entry.name.clone()).collect();
        check_exclusive_roles(&self.config, &client, &layout, &roles).await?;
        let retry = Backoff::new(self.config.etcd.retry.clone());
        let server_id = crate::etcd::retry_bounded(
            "allocating a server ID",
            retry,
            self.config.etcd.connect_attempts,
            // A corrupt counter stays corrupt until someone fixes it.
            |error| matches!(error, SessionError::CorruptServerId { .. }),
            || allocate_server_id(&client, &layout),
        )
        .await
        .map_err(|GaveUp { attempts, last }| NodeError::ServerIdFailed {
            attempts,
            source: last,
        })?;
        tracing::info!(
            server_id,
            address = self.config.node.advertised(),
            "standin node registered"
        );
        // Listening before any session names it, so a peer never finds
        // the published witness closed while this process lives.
        let mut witness = match self.config.session.death_witness {
            true => Some(Witness::bind(&self.config.node).await?),
            false => None,
        };
        let (session, view) = Session::new(client.clone(), self.config.clone());
        let session = spawn_under(session, parent.clone())
            .await
            .map_err(NodeError::SessionFailed)?;
        self.session = Some(session.clone());
        if self.config.reload.watch_streams != ReloadConfig::default().watch_streams {
            tracing::warn!(
                "reload.watchStreams is no longer used: the metadata follows on the node's watch of its elections, over etcd.watchStreams streams"
            );
        }
        let watches = WatchHub::new(
            client.clone(),
            self.config.etcd.watch_streams,
            crate::runtime::reload::WATCH_MESSAGE_LIMIT,
        );
        let elections = PrefixFanout::start(
            watches.clone(),
            layout.election(""),
            Some(layout.metadata()),
            self.config.etcd.retry.initial,
        );
        let context = Arc::new(NodeContext {
            watches,
            elections,
            warm_loads: tokio::sync::Semaphore::new(self.config.reload.concurrent_loads),
            writes: TxnBatcher::start(client.clone()),
            client,
            config: self.config.clone(),
            layout,
            server_id,
            witness: witness.as_ref().map(|w| w.info().clone()),
            session: view,
            session_actor: session,
        });
        self.context = Some(context.clone());
        for entry in &mut self.roles {
            let supervisor = entry
                .role
                .launch(context.clone(), parent.clone())
                .await
                .map_err(|source| NodeError::SpawnFailed {
                    role: entry.name.clone(),
                    source,
                })?;
            entry.supervisor = Some(supervisor);
        }
        if self.config.session.spread_leaders {
            let roles = self
                .roles
                .iter()
                .map(|entry| (entry.name.clone(), entry.role.clone() as Arc<dyn Movable>))
                .collect();
            let spread = Spread::new(context.clone(), roles);
            let spread = spawn_under(spread, parent.clone())
                .await
                .map_err(NodeError::SpreadFailed)?;
            self.spread = Some(spread);
        }
        self.standby_reminder = Some(remind_of_standbys(
            self.roles(),
            self.config.session.standby_log_interval,
        ));
        if let Some(witness) = &mut witness {
            let statuses = self
                .roles
                .iter()
                .map(|entry| entry.control.subscribe())
                .collect();
            witness.watch_leaders(
                context.client.clone(),
                &self.config,
                context.session.clone(),
                server_id,
                statuses,
            );
        }
        self.witness = witness;
        Ok(())
    }

    /// Every role of this node, without coordinator types.
    pub fn roles(&self) -> Vec<Arc<dyn RoleControl>> {
        self.roles
            .iter()
            .map(|entry| entry.control.clone())
            .collect()
    }

    /// What the metrics port's `/readyz` and `/status` report about this
    /// node (cargo feature `prometheus`): hand it to
    /// [`MetricsPort::report`](crate::telemetry::MetricsPort::report) once started.
    #[cfg(feature = "prometheus")]
    pub fn health_report(&self) -> Arc<dyn crate::telemetry::HealthReport> {
        Arc::new(NodeHealth {
            roles: self.roles(),
        })
    }

    /// The address this node publishes (`node.address`, or its default).
    pub fn address(&self) -> &str {
        self.config.node.advertised()
    }

    /// This node's server ID, once started.
    pub fn server_id(&self) -> Option<i64> {
        self.context.as_ref().map(|c| c.server_id)
    }

    /// The etcd client, once started.
    pub fn client(&self) -> Option<&Client> {
        self.context.as_ref().map(|c| &c.client)
    }

    /// Hands every role over and stops: each active coordinator is
    /// deactivated first, then the node's lease is revoked, which releases
    /// every role's leadership in one write, so peers take over at once and
    /// no write of this node follows the handover. After
    /// it, every [`RoleHandle`] answers [`ServeError::Stopped`](crate::ServeError::Stopped)
    /// and reports [`RoleState::Stopped`](crate::RoleState::Stopped).
    ///
    /// This is the graceful way to stop. Dropping a started node without it
    /// stops serving at once and revokes its lease (a peer takes over in
    /// milliseconds), but runs no deactivation hook.
    pub async fn shutdown(mut self) {
        // Nothing moves to or from a node that leaves.
        if let Some(spread) = self.spread.take() {
            spread.kill();
        }
        // The supervisor's own bound on the handover, plus time to kill and revoke.
        let bound = self.config.handover_bound() * 2;
        let handovers = self.roles.iter_mut().filter_map(|entry| {
            let supervisor = entry.supervisor.take()?;
            let role = entry.name.as_str();
            Some(async move {
                if let Err(error) = ractor::call_t!(
                    supervisor,
                    SupervisorMsg::Shutdown,
                    bound.as_millis() as u64
                ) {
                    tracing::warn!(role, "shutdown did not complete cleanly: {error}");
                    supervisor.kill();
                }
            })
        });
        futures::future::join_all(handovers).await;
        for entry in &self.roles {
            entry.role.stop();
        }
        // Every role has handed over: the lease their keys hung on goes.
        if let Some(session) = self.session.take() {
            let bound = self.config.etcd.request_timeout * 2;
            if let Err(error) =
                ractor::call_t!(session, SessionMsg::Close, bound.as_millis() as u64)
            {
                tracing::warn!("closing the node's etcd session failed: {error}");
                session.kill();
            }
        }
        // Nothing leads here any more: the witness may close without
        // peers taking it for a death.
        if let Some(witness) = &self.witness {
            witness.farewell().await;
        }
    }
}

/// Logs the roles of `roles` standing by every `interval`: one line for the
/// node, not one per role, since a node may stand by for thousands.
fn remind_of_standbys(roles: Vec<Arc<dyn RoleControl>>, interval: Duration) -> OwnedTask {
    OwnedTask::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let standing_by: Vec<String> = roles
                .iter()
                .map(|role| role.status())
                .filter(|status| status.state == RoleState::Standby)
                .map(|status| status.role)
                .collect();
            if let Some(line) = standby_line(&standing_by) {
                tracing::info!("{line}");
            }
        }
    })
}

/// How many role names a standby line lists before it only counts the rest.
const STANDBY_LINE_NAMES: usize = 8;

/// The line that says which roles stand by: Milvus's `serverName: X is in
/// STANDBY ...` for one role, the count and the first few names for more.
fn standby_line(standing_by: &[String]) -> Option<String> {
    match standing_by {
        [] => None,
        [role] => Some(format!("serverName: {role} is in STANDBY ...")),
        roles => {
            let named = roles[..roles.len().min(STANDBY_LINE_NAMES)].join(", ");
            let more = roles.len().saturating_sub(STANDBY_LINE_NAMES);
            let rest = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            Some(format!(
                "{} roles are in STANDBY ...: {named}{rest}",
                roles.len()
            ))
        }
    }
}

impl Drop for Node {
    /// A node dropped without [`Node::shutdown`] must not keep serving, nor
    /// hold its roles until their lease expires: its roles stop answering at
    /// once, its actors are killed and its lease revoked.
    fn drop(&mut self) {
        if self.roles.iter().all(|entry| entry.supervisor.is_none()) {
            return;
        }
        if let Some(spread) = self.spread.take() {
            spread.kill();
        }
        for entry in &self.roles {
            entry.role.stop();
        }
        // Read before the session goes: its end empties the view.
        let lease = self
            .context
            .as_ref()
            .and_then(|context| context.session.current())
            .map(|held| held.id);
        for supervisor in self
            .roles
            .iter_mut()
            .filter_map(|entry| entry.supervisor.take())
        {
            supervisor.kill();
        }
        if let Some(session) = self.session.take() {
            session.kill();
        }
        if let Some(context) = &self.context {
            revoke_on_drop(&context.config, lease);
        }
    }
}

/// Revokes the session's `lease` from a thread of its own, with a client
/// of its own: a drop can happen on a runtime that is shutting down, or
/// that this very thread must keep driving. Waits at most `etcd.requestTimeout`.
fn revoke_on_drop(config: &Config, lease: Option<i64>) {
    let Some(lease) = lease else { return };
    let etcd = config.etcd.clone();
    let bound = etcd.request_timeout;
    let revoking = std::thread::Builder::new()
        .name("standin-drop".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let revoke = async {
                    let mut leases = crate::etcd::connect(&etcd).await.ok()?.lease_client();
                    match leases.revoke(lease).await {
                        Ok(_) => tracing::info!(lease, "node dropped without shutdown: revoked its lease"),
                        Err(error) => tracing::warn!(lease, "node dropped without shutdown: revoking its lease failed, it expires with its TTL: {error}"),
                    }
                    Some(())
                };
                let _ = tokio::time::timeout(bound, revoke).await;
            });
        });
    if let Ok(revoking) = revoking {
        let _ = revoking.join();
    }
}

/// A node's roles as the metrics port reports them.
#[cfg(feature = "prometheus")]
struct NodeHealth {
    roles: Vec<Arc<dyn RoleControl>>,
}

#[cfg(feature = "prometheus")]
impl crate::telemetry::HealthReport for NodeHealth {
    fn readiness(&self) -> Result<(), String> {
        let without: Vec<String> = self
            .roles
            .iter()
            .map(|role| role.status())
            .filter(|status| {
                status.lease.is_none()
                    || matches!(
                        status.state,
                        crate::status::RoleState::Stopping | crate::status::RoleState::Stopped
                    )
            })
            .map(|status| status.role)
            .collect();
        if without.is_empty() {
            Ok(())
        } else {
            Err(format!("no live etcd session for: {}", without.join(", ")))
        }
    }

    fn status(&self) -> serde_json::Value {
        let roles: Vec<serde_json::Value> = self
            .roles
            .iter()
            .map(|role| {
                let status = role.status();
                serde_json::json!({
                    "role": status.role,
                    "state": status.state.as_str(),
                    "epoch": status.epoch.map(|epoch| epoch.revision),
                    "lease_id": status.lease,
                    "leader": status.leader.map(|leader| serde_json::json!({
                        "server_id": leader.session.server_id,
                        "address": leader.session.address,
                        "epoch": leader.revision,
                        "state": leader.session.state.as_str(),
                    })),
                    "last_step_down": status.last_step_down.map(|reason| reason.as_str()),
                    "metadata_copy": role.metadata_copy().map(|copy| serde_json::json!({
                        "revision": copy.revision,
                        "keys": copy.keys,
                        "decoding": copy.decoding,
                        "released": copy.released,
                    })),
                    "metadata_copy_missing": role.metadata_copy_missing(),
                })
            })
            .collect();
        let server_id = self.roles.first().map(|role| role.status().server_id);
        serde_json::json!({ "server_id": server_id, "roles": roles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("role-{i}")).collect()
    }

    #[test]
    fn the_standby_line_is_milvuss_for_one_role_and_counts_many_naming_the_first_few() {
        assert_eq!(standby_line(&[]), None);
        assert_eq!(
            standby_line(&roles(1)).as_deref(),
            Some("serverName: role-0 is in STANDBY ...")
        );
        assert_eq!(
            standby_line(&roles(3)).as_deref(),
            Some("3 roles are in STANDBY ...: role-0, role-1, role-2")
        );
        let many = standby_line(&roles(1000)).expect("a line");
        assert!(
            many.starts_with("1000 roles are in STANDBY ...: role-0, role-1,"),
            "{many}"
        );
        assert!(many.ends_with("role-7 and 992 more"), "{many}");
    }
}
