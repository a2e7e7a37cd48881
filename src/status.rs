//! A role's state as an embedder sees it: the published state, the term, the leader, and why this node last stepped down.

pub use crate::etcd::recipe::Leader;
pub use crate::etcd::session::RoleState;
use std::time::Duration;

use crate::fence::Epoch;

/// Where this node's warm copy of a role's metadata stands (`reload.warm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataCopy {
    /// The revision of the last change to the role's metadata the copy
    /// holds (with every one before it). etcd's own revision moves on with
    /// writes elsewhere, which the copy does not see.
    pub revision: i64,
    /// Keys in the copy.
    pub keys: usize,
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

/// Why a node gives up leadership (or its candidacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    /// etcd says the lease no longer exists.
    LeaseLost,
    /// No keepalive succeeded within the renew deadline.
    RenewDeadlineMissed,
    /// The coordinator actor panicked or failed.
    CoordinatorCrashed,
    /// The reload actor failed or timed out.
    ReloadFailed,
    /// Our leader key was deleted by someone else.
    LeaderKeyDeleted,
    /// The node is shutting down and hands the role over.
    Shutdown,
    /// An operator asked this node to hand the role over.
    Resigned,
    /// The user's activation did not finish within `coordinator.activateTimeout`.
    ActivationTimedOut,
}

impl StepDownReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::LeaseLost => "lease_lost",
            StepDownReason::RenewDeadlineMissed => "renew_deadline",
            StepDownReason::CoordinatorCrashed => "coordinator_crashed",
            StepDownReason::ReloadFailed => "reload_failed",
            StepDownReason::LeaderKeyDeleted => "leader_key_deleted",
            StepDownReason::Shutdown => "shutdown",
            StepDownReason::Resigned => "resigned",
            StepDownReason::ActivationTimedOut => "activation_timed_out",
        }
    }
}

/// Why a resign did not hand the role over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResignError {
    /// Only the leader can resign.
    #[error("this node does not lead {role}{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader {
        /// The role.
        role: String,
        /// The leader's address, when known.
        leader: Option<String>,
    },
    /// The role's election actor is not running (restarting after a failure, or stopped).
    #[error("the {role} election is not running on this node")]
    NotRunning {
        /// The role.
        role: String,
    },
    /// This node stopped serving, but etcd did not confirm the deletion of its
    /// leader key: the key may lead until its lease expires, so a peer may
    /// take over only then.
    #[error(
        "this node stopped serving {role}, but etcd did not confirm the deletion of its leader \
         key; it gave up its lease, and a peer takes over at the latest when that lease expires \
         (session.ttl {ttl:?})"
    )]
    ResignUnconfirmed {
        /// The role.
        role: String,
        /// The lease TTL: the longest the key can still lead.
        ttl: Duration,
    },
}
