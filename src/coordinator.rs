//! What a coordinator is to standin: the `Coordinator` trait users implement, the metadata snapshot it starts from, and why a request was not served.

use std::collections::BTreeMap;

use ractor::RpcReplyPort;
use std::time::Duration;

use crate::fence::{Epoch, FencedStore};

/// The error type user hooks return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A coordinator role's behaviour. The value itself is shared by every
/// incarnation of the role on a node; what a serving term builds lives in
/// [`Coordinator::Serving`], so each activation starts from the metadata.
pub trait Coordinator: Send + Sync + 'static {
    /// The decoded metadata an activation starts from.
    type Meta: Send + 'static;
    /// What a serving term holds: built by `activate`, used by `handle`, consumed by `deactivate`.
    type Serving: Send + 'static;
    /// A request to the serving coordinator.
    type Request: Send + 'static;
    /// The answer to a request.
    type Response: Send + 'static;

    /// Decodes the role's metadata snapshot. Runs off the async runtime,
    /// for the reload actor: an error at a takeover makes this node resign
    /// so that another can take over.
    fn decode(&self, snapshot: Snapshot) -> Result<Self::Meta, BoxError>;

    /// Whether [`apply_change`](Self::apply_change) keeps decoded metadata
    /// current. With `false` (the default) a warm standby keeps the raw
    /// entries, and a takeover decodes a clone of them, already current,
    /// with [`decode`](Self::decode): cheap when `Meta` is small. With
    /// `true` a warm standby hands its raw entries to `decode` once and
    /// then keeps only the decoded `Meta`, applying every change to it as
    /// it arrives, so a takeover hands it over without walking the
    /// metadata. That `Meta` is the node's only copy: after its term the
    /// node reads the metadata again, once a successor serves.
    const INCREMENTAL: bool = false;

    /// Applies one change of the role's metadata to decoded metadata, in
    /// etcd's order; called only when [`INCREMENTAL`](Self::INCREMENTAL) is
    /// true. An error drops this `Meta`: the runtime decodes the copy again
    /// with `decode`, which is also what the default does.
    fn apply_change(&self, meta: &mut Self::Meta, change: &MetaChange) -> Result<(), BoxError> {
        let _ = (meta, change);
        Err("this coordinator decodes its metadata whole".into())
    }

    /// Builds the serving state for `epoch` from the reloaded metadata.
    /// Every write must go through `store`, which refuses writes once the
    /// epoch is over. An error counts as a coordinator crash.
    fn activate(
        &self,
        epoch: Epoch,
        meta: Self::Meta,
        store: FencedStore,
    ) -> impl Future<Output = Result<Self::Serving, BoxError>> + Send;

    /// Answers one request while serving, in arrival order.
    fn handle(
        &self,
        serving: &mut Self::Serving,
        request: Self::Request,
    ) -> impl Future<Output = Self::Response> + Send;

    /// Answers the requests that waited together, in arrival order, with
    /// one answer each in the same order. The runtime checks the term once
    /// before and once after the whole batch, so a coordinator whose
    /// requests share work (one etcd transaction for many writes, one
    /// range for many timestamps) does it once here. The default answers
    /// them one by one with [`handle`](Self::handle).
    fn handle_batch(
        &self,
        serving: &mut Self::Serving,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Vec<Self::Response>> + Send {
        async move {
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                responses.push(self.handle(serving, request).await);
            }
            responses
        }
    }

    /// Runs when the term ends in an orderly way (step-down or shutdown),
    /// bounded by `coordinator.deactivateTimeout`. The default drops the
    /// serving state off the runtime ([`drop_elsewhere`](crate::drop_elsewhere)),
    /// so freeing a large one does not delay the handover.
    fn deactivate(&self, serving: Self::Serving) -> impl Future<Output = ()> + Send {
        crate::drop_elsewhere(serving);
        async {}
    }
}

/// Why a request was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// This node is standby for the role; `leader` is where the active serves, when known.
    #[error("{role} is not active on this node{}", leader.as_ref().map(|l| format!(" (leader: {l})")).unwrap_or_default())]
    NotActive {
        /// The role asked for.
        role: String,
        /// The active instance's address, when known.
        leader: Option<String>,
    },
    /// The role's queue is full: `capacity` requests already wait for its
    /// coordinator (activating, or serving slower than they arrive).
    /// Refused at once rather than queued without bound.
    #[error("{role} is overloaded: {capacity} requests already wait (coordinator.queueDepth)")]
    Overloaded {
        /// The role asked for.
        role: String,
        /// `coordinator.queueDepth`.
        capacity: usize,
    },
    /// The role serves slower than requests arrive: at the rate it has been
    /// serving, this one would be answered about `wait` from now, after
    /// its caller stopped waiting (`left`). Refused before it runs, rather
    /// than run for nobody, or answered too late for its caller to know
    /// whether it was applied.
    #[error(
        "{role} is overloaded: it would answer in about {wait:?}, and the caller waits {left:?}"
    )]
    WouldBeLate {
        /// The role asked for.
        role: String,
        /// How long the request would wait and be served, at the rate the role serves.
        wait: Duration,
        /// How long its caller still waits.
        left: Duration,
    },
    /// The activation this request waited for did not complete.
    #[error("{role} activation did not complete; retry against the current leader")]
    ActivationAborted {
        /// The role asked for.
        role: String,
    },
    /// The coordinator is not running (restarting after a crash) or crashed on this request.
    #[error("{role} coordinator is unavailable (restarting or crashed)")]
    Unavailable {
        /// The role asked for.
        role: String,
    },
    /// The node was shut down (or dropped): this handle will never be answered again.
    #[error("{role}: this node has stopped")]
    Stopped {
        /// The role asked for.
        role: String,
    },
    /// No answer within the caller's bound.
    #[error("{role} did not answer within {timeout:?}")]
    TimedOut {
        /// The role asked for.
        role: String,
        /// The bound.
        timeout: Duration,
    },
}

/// The role's metadata as read from etcd, keys relative to `{root}/meta/{role}/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The etcd revision every entry was read at.
    pub revision: i64,
    /// Relative key to value, in key order.
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    /// Applies one change, as a warm standby does to its copy (the revision is left alone).
    pub fn apply(&mut self, change: &MetaChange) {
        change.apply_to(&mut self.entries);
    }
}

/// One change to a role's metadata as a warm standby sees it in etcd's
/// watch, key relative to `{root}/meta/{role}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaChange {
    /// `key` was set to `value`.
    Put {
        /// Relative key.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// `key` was deleted (a prefix deletion is one change per key).
    Delete {
        /// Relative key.
        key: String,
    },
}

impl MetaChange {
    /// Applies this change to entries keyed like [`Snapshot::entries`].
    pub fn apply_to(&self, entries: &mut BTreeMap<String, Vec<u8>>) {
        match self {
            MetaChange::Put { key, value } => {
                entries.insert(key.clone(), value.clone());
            }
            MetaChange::Delete { key } => {
                entries.remove(key);
            }
        }
    }

    /// The relative key changed.
    pub fn key(&self) -> &str {
        match self {
            MetaChange::Put { key, .. } | MetaChange::Delete { key } => key,
        }
    }
}

/// A request to a role's coordinator as an actor message, for embedders that
/// talk to actors: send it to [`RoleHandle::actor`](crate::RoleHandle::actor)
/// with `ractor::call_t!(actor, RoleMsg::Call, timeout_ms, request)`.
pub enum RoleMsg<C: Coordinator> {
    /// Sends a request to the coordinator; answered as
    /// [`RoleHandle::call`](crate::RoleHandle::call) answers.
    Call(C::Request, RpcReplyPort<Result<C::Response, ServeError>>),
}

/// Why [`RoleHandle::try_call`](crate::RoleHandle::try_call) has no value:
/// the request was not served here, or the coordinator answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// Not served on this node (standby, stopped, timed out...).
    #[error(transparent)]
    NotServed(#[from] ServeError),
    /// The coordinator's own error.
    #[error("{0}")]
    Failed(E),
}
