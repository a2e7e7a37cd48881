//! What a node's actors share: the node context (etcd client, config, layout, server ID) and each role's shared cells.

use std::sync::Arc;

use etcd_client::Client;
use ractor::ActorRef;
use tokio::sync::watch;

use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::etcd::session::{Layout, RoleState, SessionInfo, VERSION};
use crate::runtime::coordinator::CoordinatorMsg;
use crate::runtime::election::ElectionMsg;
use crate::runtime::faults::Faults;
use crate::runtime::lease_guard::LeaseGuard;
use crate::runtime::slot::Slot;
use crate::status::RoleStatus;

/// What every actor of a node shares: immutable once the node has started.
pub(crate) struct NodeContext {
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
    pub(crate) fn session(&self, role: &str, state: RoleState, lease_id: i64) -> SessionInfo {
        SessionInfo {
            server_id: self.server_id,
            role: role.to_owned(),
            address: self.config.node.advertised().to_owned(),
            version: VERSION.to_owned(),
            state,
            lease_id,
        }
    }
}

/// What a role's actors share with its [`RoleHandle`]s.
pub(crate) struct RoleShared<C: Coordinator> {
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
