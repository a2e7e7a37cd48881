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
    /// Whether the coordinator's decoded metadata is being rebuilt from the
    /// copy for the next win (a coordinator that keeps it current itself):
    /// the node joins the election once it is done.
    pub decoding: bool,
    /// Whether the copy holds no metadata: a coordinator that keeps its
    /// decoded metadata current hands that, its only copy, to this node's
    /// activations. It is read again once a successor serves (or 200 ms
    /// after the term, when none is seen); a win meanwhile reads it first.
    /// Also after the decode or a change failed.
    pub released: bool,
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
    /// The role was handed to a chosen standby (`resign --to`, or a
    /// standby of higher `leaderPriority`).
    Transferred,
}

impl StepDownReason {
    /// Every reason: a new one goes here, and its label into
    /// `telemetry::STEP_DOWN_REASONS`.
    pub const ALL: [StepDownReason; 9] = [
        StepDownReason::LeaseLost,
        StepDownReason::RenewDeadlineMissed,
        StepDownReason::CoordinatorCrashed,
        StepDownReason::ReloadFailed,
        StepDownReason::LeaderKeyDeleted,
        StepDownReason::Shutdown,
        StepDownReason::Resigned,
        StepDownReason::ActivationTimedOut,
        StepDownReason::Transferred,
    ];

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
            StepDownReason::Transferred => "transferred",
        }
    }
}

/// The standby a leader hands its role to: `resign --to 3` names it by
/// server ID, `resign --to 10.0.0.7:19530` by its published address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransferTarget {
    /// The node with this server ID.
    ServerId(i64),
    /// The node publishing this `host:port`.
    Address(String),
}

impl TransferTarget {
    /// The target as `resign --to` and the gRPC API take it: the ID, or the address.
    pub fn as_arg(&self) -> String {
        match self {
            TransferTarget::ServerId(id) => id.to_string(),
            TransferTarget::Address(address) => address.clone(),
        }
    }

    /// Whether the candidate `server_id` at `address` is this target.
    pub fn names(&self, server_id: i64, address: &str) -> bool {
        match self {
            TransferTarget::ServerId(id) => *id == server_id,
            TransferTarget::Address(wanted) => wanted == address,
        }
    }
}

impl std::str::FromStr for TransferTarget {
    type Err = String;

    /// A number is a server ID, `host:port` an address; anything else is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(id) = text.parse::<i64>() {
            return if id > 0 {
                Ok(TransferTarget::ServerId(id))
            } else {
                Err(format!("{text:?}: server IDs start at 1"))
            };
        }
        match crate::config::split_host_port(text) {
            Some(_) => Ok(TransferTarget::Address(text.to_owned())),
            None => Err(format!(
                "{text:?} is neither a server ID nor a host:port address"
            )),
        }
    }
}

impl std::fmt::Display for TransferTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferTarget::ServerId(id) => write!(f, "server {id}"),
            TransferTarget::Address(address) => write!(f, "the node at {address}"),
        }
    }
}

/// The node that took a role over from a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Successor {
    /// Its server ID.
    pub server_id: i64,
    /// Its published address.
    pub address: String,
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
    /// The target of a transfer is not ready to lead: it has no candidate
    /// key in the election.
    #[error(
        "{target} is not ready to take {role} over: it is not a candidate in the election (its \
         warm copy is still loading, its coordinator is restarting, or it has no etcd session); \
         candidates now: {}",
        if candidates.is_empty() { "none".to_owned() } else { candidates.join(", ") }
    )]
    TargetNotReady {
        /// The role.
        role: String,
        /// Who was asked for.
        target: String,
        /// The standbys that are candidates, as `id@address`.
        candidates: Vec<String>,
    },
    /// The target of a transfer is this node, which leads already.
    #[error("{target} leads {role} already")]
    TargetLeads {
        /// The role.
        role: String,
        /// Who was asked for.
        target: String,
    },
    /// A transfer is already under way.
    #[error("a transfer of {role} to server {to} is already under way")]
    TransferInProgress {
        /// The role.
        role: String,
        /// The server ID it goes to.
        to: i64,
    },
    /// The candidates ahead of the target did not make way in time (they
    /// are not standin nodes, for example `etcdctl elect`), or the target
    /// left the election: this node keeps serving.
    #[error(
        "the transfer of {role} to {target} did not happen, and this node keeps serving: {why}"
    )]
    TransferFailed {
        /// The role.
        role: String,
        /// Who was asked for.
        target: String,
        /// What went wrong.
        why: String,
    },
    /// This node stopped leading for another reason before the transfer
    /// could hand over; whoever is next took the role.
    #[error("this node stepped down from {role} ({reason}) before the transfer handed over")]
    SteppedDown {
        /// The role.
        role: String,
        /// Why it stepped down.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_list_every_step_down_reason_by_its_label() {
        let labels: Vec<&str> = StepDownReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, crate::telemetry::STEP_DOWN_REASONS);
    }

    #[test]
    fn transfer_targets_parse_as_ids_or_addresses() {
        assert_eq!("3".parse(), Ok(TransferTarget::ServerId(3)));
        assert_eq!(
            "10.0.0.7:19530".parse(),
            Ok(TransferTarget::Address("10.0.0.7:19530".into()))
        );
        assert!("0".parse::<TransferTarget>().is_err());
        assert!("nowhere".parse::<TransferTarget>().is_err());
        assert_eq!(TransferTarget::ServerId(3).as_arg(), "3");
    }
}
