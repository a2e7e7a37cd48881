//! What a node's actors share: the node context (etcd client, config, layout, server ID) and each role's shared cells.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::Client;
use ractor::{ActorCell, ActorRef};
use tokio::sync::watch;

use crate::config::Config;
use crate::coordinator::{Coordinator, RoleMsg, ServeError};
use crate::etcd::session::{Layout, RoleState, SessionInfo, VERSION, WitnessInfo};
use crate::etcd::{PrefixFanout, TxnBatcher, WatchHub};
use crate::runtime::coordinator::{CoordinatorMsg, CoordinatorRef};
use crate::runtime::faults::Faults;
use crate::runtime::queue::{Pushed, Queued, ServeReply};
use crate::runtime::session::{SessionMsg, SessionView};
use crate::runtime::slot::Slot;
use crate::runtime::term::Term;
use crate::status::{MetadataCopy, RoleStatus};
use crate::telemetry::REQUEST_OUTCOMES;

/// What every actor of a node shares: immutable once the node has started.
pub(crate) struct NodeContext {
    /// The etcd client (cheap to clone).
    pub client: Client,
    /// The few watch streams every election watch of the node shares: its
    /// follower of every election, and the waits of leader transfers.
    pub watches: WatchHub,
    /// The node's one follower of every election: each role's leader
    /// observer, its leader's preference and the spread read it, and its
    /// watch runs on over the metadata, which the warm copies follow.
    pub elections: PrefixFanout,
    /// Permits to read a warm copy whole (`reload.concurrentLoads`): a node
    /// that starts a thousand roles reads them a few at a time.
    pub warm_loads: tokio::sync::Semaphore,
    /// The node's control writes (published states), those sent at once
    /// in one request.
    pub writes: TxnBatcher,
    /// The validated configuration.
    pub config: Config,
    /// The etcd key layout.
    pub layout: Layout,
    /// This node's server ID.
    pub server_id: i64,
    /// This node's death witness, published in every session.
    pub witness: Option<WitnessInfo>,
    /// The node's etcd session: the lease every role's keys hang on.
    pub session: SessionView,
    /// The session's actor, told when a role finds the lease gone first.
    pub session_actor: ActorRef<SessionMsg>,
}

impl NodeContext {
    /// Deletes `key`, a role's key on the session's `lease`, retrying for
    /// as long as the session holds that lease: a key on a lease that is
    /// gone is gone with it. Returns whether the delete landed.
    pub(crate) async fn release_key(&self, key: &str, lease: i64) -> bool {
        let etcd = &self.config.etcd;
        let holds = || self.session.current().is_some_and(|held| held.id == lease);
        crate::etcd::delete_key(&self.client, key, etcd.request_timeout, &etcd.retry, holds).await
    }

    /// The session this node publishes for `role` in `state` on `lease`.
    pub(crate) fn session(&self, role: &str, state: RoleState, lease_id: i64) -> SessionInfo {
        SessionInfo {
            server_id: self.server_id,
            role: role.to_owned(),
            address: self.config.node.advertised().to_owned(),
            version: VERSION.to_owned(),
            state,
            lease_id,
            witness: self.witness.clone(),
            priority: self.config.role(role).leader_priority,
            transfer: None,
        }
    }
}

/// The wait of a caller that gave none (an actor's `cast` of a call): a year.
pub(crate) const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a role's actors share with its [`RoleHandle`]s.
pub(crate) struct RoleShared<C: Coordinator> {
    /// The role's name.
    pub role: String,
    /// The role's status, updated on every transition.
    pub status: watch::Sender<RoleStatus>,
    /// The running coordinator actor and its queue, if any.
    pub coordinator: Slot<CoordinatorRef<C>>,
    /// The actor that takes requests as messages, once asked for.
    pub endpoint: Slot<ActorRef<RoleMsg<C>>>,
    /// Held while the endpoint is spawned, so that two first asks spawn one.
    pub endpoint_spawn: tokio::sync::Mutex<()>,
    /// The role's supervisor while it runs: the endpoint's parent.
    pub supervisor: Slot<ActorCell>,
    /// Fault switches for tests (off otherwise).
    pub faults: Arc<Faults>,
    /// Where the reload actor's warm copy stands; empty while it is read.
    pub copy: Arc<watch::Sender<Option<MetadataCopy>>>,
    /// Why the warm copy is not loaded: the last failed read's error, while
    /// the read is retried; empty once it loads.
    pub copy_missing: Arc<Slot<String>>,
    /// The term this node leads the role in, from the win until the
    /// election decides to step down; what every answer path checks.
    /// Shared with the role's [`ServingCheck`](crate::role::ServingCheck)s.
    pub term: Arc<Slot<Term>>,
    /// The session lease the election actor campaigns on, written by it
    /// and read by its supervisor: a failed election actor cannot delete
    /// its own key, so the supervisor does. Shared memory, not a message,
    /// because supervision events overtake ordinary messages in ractor.
    pub lease: Slot<i64>,
    /// Set once the node has stopped (shut down or dropped): for good.
    pub stopped: AtomicBool,
    /// The role's request counters by outcome, made at the first request
    /// (after the embedder has installed its metrics recorder): a lookup
    /// by labels on every call costs a busy role more than its answer.
    requests: std::sync::OnceLock<[metrics::Counter; REQUEST_OUTCOMES.len()]>,
    /// The store of the term being served, for tests that keep it past the term.
    #[cfg(feature = "testing")]
    pub store: Slot<crate::fence::FencedStore>,
}

impl<C: Coordinator> RoleShared<C> {
    /// The cells of a role that has not started, in standby.
    pub(crate) fn new(role: &str) -> Self {
        let (status, _) = watch::channel(RoleStatus {
            role: role.to_owned(),
            server_id: 0,
            state: RoleState::Standby,
            epoch: None,
            leader: None,
            lease: None,
            last_step_down: None,
        });
        Self {
            role: role.to_owned(),
            status,
            coordinator: Slot::default(),
            endpoint: Slot::default(),
            endpoint_spawn: tokio::sync::Mutex::new(()),
            supervisor: Slot::default(),
            faults: Arc::default(),
            copy: Arc::new(watch::channel(None).0),
            copy_missing: Arc::default(),
            term: Arc::default(),
            lease: Slot::default(),
            stopped: AtomicBool::new(false),
            requests: std::sync::OnceLock::new(),
            #[cfg(feature = "testing")]
            store: Slot::default(),
        }
    }

    /// Queues `request` for the running coordinator, whose caller waits up
    /// to `timeout`, or answers at once why it cannot be: nothing serves
    /// here, or the queue is full. The one way in for every caller.
    pub(crate) fn forward(&self, request: C::Request, reply: ServeReply<C>, timeout: Duration) {
        if self.is_stopped() {
            let _ = reply.send(Err(self.gone()));
            return;
        }
        let Some(coordinator) = self.coordinator.get() else {
            let _ = reply.send(Err(self.not_active()));
            return;
        };
        let now = Instant::now();
        let queued = Queued {
            request,
            reply,
            // A deadline too far to represent is no deadline.
            deadline: now.checked_add(timeout).unwrap_or(now + NO_DEADLINE),
            timeout,
        };
        match coordinator.queue.push(queued, now) {
            Pushed::Full(refused) => {
                let _ = refused.reply.send(Err(ServeError::Overloaded {
                    role: self.role.clone(),
                    capacity: coordinator.queue.capacity(),
                }));
            }
            Pushed::Late { queued, wait } => {
                let _ = queued.reply.send(Err(ServeError::WouldBeLate {
                    role: self.role.clone(),
                    wait,
                    left: timeout,
                }));
            }
            Pushed::Queued { wake: false } => {}
            Pushed::Queued { wake: true } => {
                if coordinator
                    .actor
                    .send_message(CoordinatorMsg::Drain)
                    .is_err()
                {
                    // The actor has stopped: nothing will drain its queue.
                    for stranded in coordinator.queue.take_all() {
                        let _ = stranded.reply.send(Err(self.gone()));
                    }
                }
            }
        }
    }

    /// Counts a call's answer in [`REQUESTS`](crate::telemetry::REQUESTS) by its outcome.
    pub(crate) fn count_request<T>(&self, answer: &Result<T, ServeError>) {
        let outcome = match answer {
            Ok(_) => "ok",
            Err(ServeError::NotActive { .. }) => "not_active",
            Err(ServeError::TimedOut { .. }) => "timed_out",
            Err(ServeError::Overloaded { .. } | ServeError::WouldBeLate { .. }) => "refused",
            Err(_) => "unavailable",
        };
        let counters = self.requests.get_or_init(|| {
            REQUEST_OUTCOMES.map(|outcome| {
                metrics::counter!(crate::telemetry::REQUESTS, "role" => self.role.clone(), "outcome" => outcome)
            })
        });
        if let Some(index) = REQUEST_OUTCOMES.iter().position(|known| *known == outcome) {
            counters[index].increment(1);
        }
    }

    /// The answer of a role with no coordinator actor: a standby, or a role
    /// whose coordinator or election crashed. It names the leader when
    /// another node leads; never this node, which may be the one that crashed.
    fn not_active(&self) -> ServeError {
        let status = self.status.borrow();
        let leader = status
            .leader
            .as_ref()
            .filter(|leader| leader.session.server_id != status.server_id)
            .map(|leader| leader.session.address.clone());
        ServeError::NotActive {
            role: self.role.clone(),
            leader,
        }
    }

    /// Why a request got no answer from a coordinator: the node stopped, or
    /// the coordinator is restarting or crashed.
    pub(crate) fn gone(&self) -> ServeError {
        let role = self.role.clone();
        if self.is_stopped() {
            ServeError::Stopped { role }
        } else {
            ServeError::Unavailable { role }
        }
    }

    /// Whether the node this role ran on has stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Ends the role here for good: nothing is answered from now on, and
    /// the status says so.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(term) = self.term.take() {
            term.close();
        }
        self.coordinator.set(None);
        self.status.send_modify(|status| {
            status.state = RoleState::Stopped;
            status.epoch = None;
            status.lease = None;
        });
        crate::telemetry::set_role_state(&self.role, RoleState::Stopped);
    }
}
