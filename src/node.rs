//! The node: one process's runtime handle, which runs a set of roles, each under its own election.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use ractor::{Actor, ActorRef, SpawnErr};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::campaign::{self, CampaignError, Leader};
use crate::config::{Config, ConfigError};
use crate::coordinator::{Coordinator, CoordinatorMsg, ServeError};
use crate::election::machine::StepDownReason;
use crate::election::{ElectionError, ElectionMsg};
use crate::etcd::{EtcdError, GaveUp};
use crate::faults::{Fault, Faults};
use crate::fence::{Epoch, LeaseGuard};
use crate::session::{Layout, RoleState, SessionError, SessionInfo, allocate_server_id};
use crate::slot::Slot;
use crate::supervisor::{RoleSupervisor, SupervisorMsg, handover_bound};

/// The standin version published in every session.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// What every actor of a node shares: immutable once the node has started.
pub struct NodeContext {
    /// The etcd client (cheap to clone).
    pub client: Client,
    /// The validated configuration.
    pub config: Config,
    /// The etcd key layout.
    pub layout: Layout,
    /// This node's server ID.
    pub server_id: i64,
}

impl NodeContext {
    /// The session this node publishes for `role` in `state` on `lease`.
    pub fn session(&self, role: &str, state: RoleState, lease_id: i64) -> SessionInfo {
        SessionInfo {
            server_id: self.server_id,
            role: role.to_owned(),
            address: self.config.node.address.clone(),
            version: VERSION.to_owned(),
            state,
            lease_id,
        }
    }
}

/// A role's state on this node, as its election actor last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleStatus {
    /// The role.
    pub role: String,
    /// This node's server ID (0 before the node has started).
    pub server_id: i64,
    /// The role's published state here.
    pub state: RoleState,
    /// The current term while this node leads.
    pub epoch: Option<Epoch>,
    /// The leader this node sees (possibly itself).
    pub leader: Option<Leader>,
    /// The lease this node holds for the role.
    pub lease: Option<i64>,
    /// Why this node last gave up the role (or its candidacy), if it ever did.
    pub last_step_down: Option<StepDownReason>,
}

/// What a role's actors share with its [`RoleHandle`]s.
pub struct RoleShared<C: Coordinator> {
    /// The role's status, updated on every transition.
    pub status: watch::Sender<RoleStatus>,
    /// The running coordinator actor, if any.
    pub coordinator: Slot<ActorRef<CoordinatorMsg<C>>>,
    /// The running election actor, if any.
    pub election: Slot<ActorRef<ElectionMsg<C>>>,
    /// Fault switches for tests (off otherwise).
    pub faults: Arc<Faults>,
    /// Until when this node's lease is trusted; checked on every request.
    pub lease_guard: Arc<LeaseGuard>,
}

/// A typed handle to one role on a node: its status, and requests to its coordinator.
pub struct RoleHandle<C: Coordinator> {
    role: String,
    shared: Arc<RoleShared<C>>,
}

impl<C: Coordinator> Clone for RoleHandle<C> {
    fn clone(&self) -> Self {
        Self {
            role: self.role.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C: Coordinator> RoleHandle<C> {
    /// The role's name.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The role's current status on this node.
    pub fn status(&self) -> RoleStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<RoleStatus> {
        self.shared.status.subscribe()
    }

    /// Whether the role serves on this node now.
    pub fn is_serving(&self) -> bool {
        self.status().state == RoleState::Serving
    }

    /// Sends `request` to the role's coordinator and waits up to `timeout`
    /// for the answer. A standby answers at once with [`ServeError::NotActive`].
    ///
    /// The request is queued when `call` is called, before the returned
    /// future is first polled, so requests from one task arrive in the
    /// order their calls were made.
    pub fn call(
        &self,
        request: C::Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<C::Response, ServeError>> + Send + 'static {
        let role = self.role.clone();
        let coordinator = self.shared.coordinator.get();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = coordinator.is_some_and(|coordinator| {
            let message = CoordinatorMsg::Request {
                request,
                reply: reply.into(),
            };
            coordinator.send_message(message).is_ok()
        });
        async move {
            if !queued {
                return Err(ServeError::Unavailable { role });
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(answer)) => answer,
                // The coordinator dropped the request: it crashed or stopped.
                Ok(Err(_)) => Err(ServeError::Unavailable { role }),
                Err(_) => Err(ServeError::TimedOut { role, timeout }),
            }
        }
    }
}

impl<C: Coordinator> RoleHandle<C> {
    /// Hands the role over if this node leads it: the coordinator is
    /// deactivated, the leader key deleted, and this node campaigns again
    /// behind the others. Answers once a peer can take over.
    pub fn resign(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ElectionError>> + Send + 'static {
        let role = self.role.clone();
        let election = self.shared.election.get();
        async move {
            let not_running = || ElectionError::NotRunning { role: role.clone() };
            let election = election.ok_or_else(not_running)?;
            match election.call(ElectionMsg::Resign, Some(timeout)).await {
                Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
                _ => Err(not_running()),
            }
        }
    }
}

/// A role on a node without its coordinator type, for what treats every
/// role alike (the gRPC Coordination service, health reporting).
pub trait RoleControl: Send + Sync {
    /// The role's name.
    fn role(&self) -> &str;
    /// The role's current status on this node.
    fn status(&self) -> RoleStatus;
    /// A receiver that sees every status change.
    fn subscribe(&self) -> watch::Receiver<RoleStatus>;
    /// Injects `fault` into the role's actors; false when the actor is not running.
    fn inject(&self, fault: Fault) -> bool;
    /// Hands the role over if this node leads it (see [`RoleHandle::resign`]).
    fn resign(
        &self,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<(), ElectionError>>;
}

impl<C: Coordinator> RoleControl for RoleHandle<C> {
    fn role(&self) -> &str {
        RoleHandle::role(self)
    }

    fn status(&self) -> RoleStatus {
        RoleHandle::status(self)
    }

    fn subscribe(&self) -> watch::Receiver<RoleStatus> {
        RoleHandle::subscribe(self)
    }

    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::CrashCoordinator => self.crash_coordinator(),
            Fault::CrashElection => self.crash_election(),
            Fault::CrashReload => {
                self.crash_reload();
                true
            }
        }
    }

    fn resign(
        &self,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<(), ElectionError>> {
        Box::pin(RoleHandle::resign(self, timeout))
    }
}

/// Fault injection for tests: the actors of this role panic on demand, as a
/// bug in them would. Nothing calls these in production; `standin run`
/// exposes them only with `--fault-injection`.
impl<C: Coordinator> RoleHandle<C> {
    /// Makes the role's coordinator actor panic. Returns false when none runs.
    pub fn crash_coordinator(&self) -> bool {
        let coordinator = self.shared.coordinator.get();
        coordinator.is_some_and(|c| c.send_message(CoordinatorMsg::InjectPanic).is_ok())
    }

    /// Makes the role's running reload (or its next one) panic after its next page.
    pub fn crash_reload(&self) {
        self.shared.faults.arm_reload_panic();
    }

    /// Makes the role's election actor panic. Returns false when none runs.
    pub fn crash_election(&self) -> bool {
        let election = self.shared.election.get();
        election.is_some_and(|e| e.send_message(ElectionMsg::InjectPanic).is_ok())
    }
}

type LaunchFuture = Pin<Box<dyn Future<Output = Result<ActorRef<SupervisorMsg>, SpawnErr>> + Send>>;

/// A role added to a node, not started yet; erases the coordinator type.
trait PendingRole: Send {
    fn launch(self: Box<Self>, context: Arc<NodeContext>) -> LaunchFuture;
}

struct TypedRole<C: Coordinator> {
    role: String,
    coordinator: Arc<C>,
    shared: Arc<RoleShared<C>>,
}

impl<C: Coordinator> PendingRole for TypedRole<C> {
    fn launch(self: Box<Self>, context: Arc<NodeContext>) -> LaunchFuture {
        Box::pin(async move {
            self.shared
                .status
                .send_modify(|status| status.server_id = context.server_id);
            let supervisor =
                RoleSupervisor::<C>::new(self.role, self.coordinator, context, self.shared);
            let (actor, _) = Actor::spawn(None, supervisor, ()).await?;
            Ok(actor)
        })
    }
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
            || campaign::leader(client, &election),
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
    pending: Vec<(String, Box<dyn PendingRole>)>,
    controls: Vec<Arc<dyn RoleControl>>,
    running: Vec<(String, ActorRef<SupervisorMsg>)>,
    context: Option<Arc<NodeContext>>,
    /// Keeps the client's calls off etcd members that stop answering.
    steering: Option<crate::endpoints::Steering>,
}

impl Node {
    /// A node with `config` and no roles yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            pending: Vec::new(),
            controls: Vec::new(),
            running: Vec::new(),
            context: None,
            steering: None,
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
        if self.pending.iter().any(|(name, _)| name == role) {
            return Err(NodeError::DuplicateRole(role.to_owned()));
        }
        let (status, _) = watch::channel(RoleStatus {
            role: role.to_owned(),
            server_id: 0,
            state: RoleState::Standby,
            epoch: None,
            leader: None,
            lease: None,
            last_step_down: None,
        });
        let shared = Arc::new(RoleShared {
            status,
            coordinator: Slot::default(),
            election: Slot::default(),
            faults: Arc::default(),
            lease_guard: Arc::default(),
        });
        let typed = TypedRole {
            role: role.to_owned(),
            coordinator: Arc::new(coordinator),
            shared: shared.clone(),
        };
        self.pending.push((role.to_owned(), Box::new(typed)));
        let handle = RoleHandle {
            role: role.to_owned(),
            shared,
        };
        self.controls.push(Arc::new(handle.clone()));
        Ok(handle)
    }

    /// Validates the config, connects to etcd and checks that it answers,
    /// refuses an exclusive role (`activeStandby.enabled: false`) that
    /// another instance leads, allocates this node's server ID, and starts
    /// one election per role. Each etcd step is retried with backoff up to
    /// `etcd.connectAttempts` tries (0: forever).
    pub async fn start(&mut self) -> Result<(), NodeError> {
        if self.context.is_some() {
            return Err(NodeError::BadLifecycle("the node is already started"));
        }
        if self.pending.is_empty() {
            return Err(NodeError::BadLifecycle("a node needs at least one role"));
        }
        self.config.validate()?;
        let client = crate::etcd::connect_checked(&self.config.etcd).await?;
        self.steering = crate::endpoints::steer(&client, &self.config.etcd);
        let layout = Layout::new(&self.config.etcd.root_path);
        // Names copied out: the pending roles are not Sync, and a borrow of
        // them held across the await would make this future not Send.
        let roles: Vec<String> = self.pending.iter().map(|(role, _)| role.clone()).collect();
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
            address = self.config.node.address,
            "standin node registered"
        );
        let context = Arc::new(NodeContext {
            client,
            config: self.config.clone(),
            layout,
            server_id,
        });
        self.context = Some(context.clone());
        for (role, pending) in std::mem::take(&mut self.pending) {
            let supervisor =
                pending
                    .launch(context.clone())
                    .await
                    .map_err(|source| NodeError::SpawnFailed {
                        role: role.clone(),
                        source,
                    })?;
            self.running.push((role, supervisor));
        }
        Ok(())
    }

    /// Every role of this node, without coordinator types.
    pub fn roles(&self) -> Vec<Arc<dyn RoleControl>> {
        self.controls.clone()
    }

    /// This node's address (`node.address`).
    pub fn address(&self) -> &str {
        &self.config.node.address
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
    /// deactivated first, then its leadership is released, so a peer takes
    /// over at once and no write of this node follows the handover.
    pub async fn shutdown(mut self) {
        // The supervisor's own bound on the handover, plus time to kill and revoke.
        let bound = handover_bound(&self.config) * 2;
        let handovers = self.running.drain(..).map(|(role, supervisor)| async move {
            if let Err(error) = ractor::call_t!(
                supervisor,
                SupervisorMsg::Shutdown,
                bound.as_millis() as u64
            ) {
                tracing::warn!(role, "shutdown did not complete cleanly: {error}");
                supervisor.kill();
            }
        });
        futures::future::join_all(handovers).await;
    }
}
