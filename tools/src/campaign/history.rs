//! What a campaign observed (timestamp batches, register reads and writes, node status samples, impairments, faults), recorded by its tasks for the checker.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The roles every node runs, by index: samples and faults name a role by
/// its position here. `tso` answers from a window it persists ahead;
/// `kv` answers reads from memory and persists nothing when it activates.
pub const ROLES: [&str; 2] = ["tso", "kv"];
/// [`ROLES`]' index of the timestamp oracle.
pub const TSO: usize = 0;
/// [`ROLES`]' index of the register.
pub const KV: usize = 1;
/// How many register keys each register client writes (and only it).
pub const KEYS_PER_CLIENT: usize = 2;

/// One allocation a client got, with when it asked and when it heard back:
/// the real-time order of batches is judged from these two instants.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Which client task (0-based); numbers past the client tasks are
    /// one-shot probes sent to a frozen leader with its old epoch.
    pub client: usize,
    /// The first timestamp.
    pub first: u64,
    /// How many consecutive timestamps.
    pub count: u32,
    /// The epoch the serving node claimed.
    pub epoch: i64,
    /// Just before the request left.
    pub sent: Instant,
    /// Just after the answer arrived.
    pub received: Instant,
}

impl Batch {
    /// The batch's last timestamp.
    pub fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }
}

/// One answered register request. Each key has one writer, which writes
/// the numbers 1, 2, 3... in order, so a value says how recent it is.
#[derive(Debug, Clone, Copy)]
pub struct KvOp {
    /// Which client task; numbers past the client tasks are probes.
    pub client: usize,
    /// Which key: client `c` writes keys `c * KEYS_PER_CLIENT ..`, and only it.
    pub key: usize,
    /// A put of `value`, or a get that read `value` (0: never put).
    pub put: bool,
    /// The number written or read.
    pub value: u64,
    /// The epoch that answered.
    pub epoch: i64,
    /// Just before the request left.
    pub sent: Instant,
    /// Just after the answer arrived.
    pub received: Instant,
}

/// A put as its writer asked for it, recorded before it left: whatever
/// became of it (acknowledged, failed, or in flight when the clients
/// stopped), it may be in the register, and a read may return it.
#[derive(Debug, Clone, Copy)]
pub struct PutAsked {
    /// Which key.
    pub key: usize,
    /// The number written.
    pub value: u64,
    /// Just before the request left.
    pub sent: Instant,
}

/// A node's state for a role, as its `Coordination.Status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the role.
    Standby,
    /// Won, not serving yet.
    Activating,
    /// Serving.
    Serving,
    /// Handing the role over.
    Stopping,
    /// A state this campaign does not know (reported as is in violations).
    Other,
}

impl State {
    /// The state named `name` in the gRPC answer.
    pub fn parse(name: &str) -> Self {
        match name {
            "standby" => Self::Standby,
            "activating" => Self::Activating,
            "serving" => Self::Serving,
            "stopping" => Self::Stopping,
            _ => Self::Other,
        }
    }
}

/// One `Coordination.Status` answer. The state held at some moment between
/// `sent` and `received`, which is all the checker may assume.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Which role ([`ROLES`]' index).
    pub role: usize,
    /// Which node (0-based, stable across restarts of its process).
    pub node: usize,
    /// The server ID of the process that answered: a restarted process has a new one.
    pub server_id: i64,
    /// Its state for the role.
    pub state: State,
    /// Its epoch while it leads, else 0.
    pub epoch: i64,
    /// The epoch of the leader it sees, 0 for none.
    pub leader_epoch: i64,
    /// Whether its copy of the role's metadata was loaded (a takeover by it
    /// need not read the prefix first).
    pub copy_loaded: bool,
    /// Just before the request left.
    pub sent: Instant,
    /// Just after the answer arrived.
    pub received: Instant,
}

/// Something the campaign did to a node (or to etcd) that lasts a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpairmentKind {
    /// The node's process was frozen with SIGSTOP.
    Stopped,
    /// The node's lease clock stood still while its link to etcd was
    /// blackholed: a VM paused and resumed, as the node's term sees it.
    ClockStalled,
    /// The node's link to etcd was cut at its proxy.
    Cut,
    /// The node's link to etcd was delayed at its proxy.
    Delayed,
    /// The node's link to etcd was blackholed at its proxy: connections
    /// stay open, nothing passes.
    Blackholed,
    /// etcd itself was down (killed, then restarted).
    EtcdDown,
    /// One member of an etcd cluster was killed, then restarted.
    EtcdMemberDown,
    /// One member of an etcd cluster was frozen with SIGSTOP.
    EtcdMemberFrozen,
    /// The node's link to one etcd member was cut at its proxy.
    EtcdMemberCut,
    /// A majority of an etcd cluster's members were frozen: no quorum. No
    /// node may say it serves, nor answer a request asked for, later than
    /// `serves_at_most` into it.
    EtcdNoQuorum {
        /// How long into it a node may still serve.
        serves_at_most: Duration,
    },
}

/// An impairment and how long it lasted.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// The node, or `None` for etcd.
    pub node: Option<usize>,
    /// What was done.
    pub kind: ImpairmentKind,
    /// When it began (just before the signal or the switch).
    pub from: Instant,
    /// When it was surely in force (just after the signal was sent or the
    /// switch made): a request sent after this cannot have been read by a
    /// frozen node before it froze.
    pub in_force: Instant,
    /// When it ended (just after the repair); `None` while it lasts.
    pub until: Option<Instant>,
}

impl Impairment {
    /// Whether it was in force at `at`.
    pub fn covers(&self, at: Instant) -> bool {
        self.from <= at && self.until.is_none_or(|until| at <= until)
    }
}

/// One injected fault and how the cluster recovered from it.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// 1-based position in the campaign.
    pub index: usize,
    /// What was injected (`crash-coordinator`, `kill-9`, ...).
    pub kind: &'static str,
    /// The node it hit, `None` for etcd.
    pub node: Option<usize>,
    /// The role whose leader it hit ([`ROLES`]' index); `None` for etcd.
    pub role: Option<usize>,
    /// That leader's epoch when the fault hit.
    pub epoch: i64,
    /// The terms (role, epoch) an operator ended by hand with this fault
    /// (a deleted leader key, a revoked lease): their node can only learn
    /// through etcd, so they may answer briefly after the act.
    pub forced: Vec<(usize, i64)>,
    /// When it hit.
    pub at: Instant,
    /// How long a node may take to serve again.
    pub bound: Duration,
    /// From the fault to the first sample of a healthy serving node; `None`
    /// when none served within the bound.
    pub recovered: Option<Duration>,
    /// What the fault looked like, for the report (`cut for 1200 ms`).
    pub detail: String,
    /// The longest a client waited for a batch from the fault until the
    /// cluster settled again; `None` when some client got none after it.
    pub clients_paused: Option<Duration>,
    /// Whether a peer's death witness revoked the leases of the node the
    /// fault hit (for a fault of etcd, of the role's leader), from the
    /// fault until it recovered; `None` when there was no such node.
    pub witness_revoked: Option<bool>,
    /// The other roles the hit node led, on the same lease, when a fault
    /// that ends one role's term hit: (role, epoch, whether that term still
    /// held its leader key once the hit role had recovered).
    pub bystanders: Vec<(usize, i64, bool)>,
}

/// A failed allocation: a client that rides through failovers should see none.
#[derive(Debug, Clone)]
pub struct ClientError {
    /// Which client task.
    pub client: usize,
    /// When the allocation gave up.
    pub at: Instant,
    /// The error, as displayed.
    pub message: String,
}

/// Everything observed, in the order it was recorded.
#[derive(Debug)]
pub struct History {
    /// When the campaign started: instants are printed as milliseconds since.
    pub start: Instant,
    /// Successful allocations; one client's batches are in its own order.
    pub batches: Vec<Batch>,
    /// Answered register requests; one client's in its own order.
    pub kv_ops: Vec<KvOp>,
    /// Every put asked for, answered or not; one writer's in its own order.
    pub puts_asked: Vec<PutAsked>,
    /// Terms known to be closed by an instant: (role, epoch, by), from a
    /// probe its node refused.
    pub closed: Vec<(usize, i64, Instant)>,
    /// Status answers; one node's samples are in the order they were sent.
    pub samples: Vec<Sample>,
    /// Every impairment, in the order it began.
    pub impairments: Vec<Impairment>,
    /// Every fault, in order.
    pub faults: Vec<FaultRecord>,
    /// Failed allocations.
    pub client_errors: Vec<ClientError>,
    /// Liveness problems the runner saw itself (a cluster that never
    /// settled, a client that stopped making progress).
    pub stalls: Vec<String>,
    /// What the overloading client saw, and what its oracle found.
    pub overload: Overload,
    /// Calls of the paced clients refused as overloaded: not errors, never applied.
    pub refused_overloaded: u64,
    /// Whether the nodes ran with `coordinator.confirmAnswers`: every
    /// answer confirmed by etcd, whatever the node's clock says.
    pub answers_confirmed: bool,
}

/// The overloading client's outcomes, and the violations its own oracle
/// found: each of its keys has one writer putting 1, 2, 3..., so a read
/// must return at least what was acknowledged or read before, at most
/// what was asked, and never a value whose put was refused.
#[derive(Debug, Default)]
pub struct Overload {
    /// Puts acknowledged.
    pub acked: u64,
    /// Calls the leader refused as overloaded.
    pub refused: u64,
    /// Calls the client kept, never sent (throttled, or no call slot).
    pub kept: u64,
    /// Calls that failed otherwise (a failover, the deadline): in doubt.
    pub unknown: u64,
    /// Reads answered.
    pub reads: u64,
    /// What the oracle found wrong.
    pub violations: Vec<String>,
}

impl History {
    /// Milliseconds from the campaign's start to `at`, for messages.
    pub fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.start).as_millis()
    }

    /// The longest any client (of either role) went without an answer
    /// from `at` until now (the wait from `at` to its first answer counts);
    /// `None` when a client has had no answer since `at`.
    pub fn clients_paused(&self, at: Instant, clients: usize) -> Option<Duration> {
        let tso = self.batches.iter().map(|b| (b.client, b.received));
        let kv = self.kv_ops.iter().map(|o| (o.client, o.received));
        let mut after = receipts_after(tso.rev(), at, clients);
        after.extend(receipts_after(kv.rev(), at, clients));
        let mut longest = Duration::ZERO;
        for times in after {
            if times.is_empty() {
                return None;
            }
            let mut previous = at;
            for &received in times.iter().rev() {
                longest = longest.max(received.saturating_duration_since(previous));
                previous = received;
            }
        }
        Some(longest)
    }

    /// The terms an operator ended by hand, with the fault that did it.
    pub fn forced(&self) -> impl Iterator<Item = (usize, i64, &FaultRecord)> {
        self.faults
            .iter()
            .flat_map(|f| f.forced.iter().map(move |&(role, epoch)| (role, epoch, f)))
    }

    /// Whether `node` was impaired in a way that makes it unfit to count as
    /// recovered at `at`: frozen, or cut off from etcd.
    pub fn unfit(&self, node: usize, at: Instant) -> bool {
        self.impairments.iter().any(|i| {
            i.node == Some(node)
                && matches!(
                    i.kind,
                    ImpairmentKind::Stopped | ImpairmentKind::Cut | ImpairmentKind::Blackholed
                )
                && i.covers(at)
        })
    }
}

/// Each of `clients` clients' receipt times after `at`, newest first, from
/// `(client, received)` pairs newest first. Answers are recorded as they
/// arrive, so the scan stops once every client is back before `at`;
/// probes (client numbers from `clients` on) are not clients.
fn receipts_after(
    newest_first: impl Iterator<Item = (usize, Instant)>,
    at: Instant,
    clients: usize,
) -> Vec<Vec<Instant>> {
    let mut after: Vec<Vec<Instant>> = vec![Vec::new(); clients];
    let mut reached = vec![false; clients];
    for (client, received) in newest_first.filter(|(client, _)| *client < clients) {
        if received <= at {
            reached[client] = true;
            if reached.iter().all(|r| *r) {
                break;
            }
        } else if !reached[client] {
            after[client].push(received);
        }
    }
    after
}

/// The history shared by the campaign's tasks.
#[derive(Debug, Clone)]
pub struct Recorder(Arc<Mutex<History>>);

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(History {
            start: Instant::now(),
            batches: Vec::new(),
            kv_ops: Vec::new(),
            puts_asked: Vec::new(),
            closed: Vec::new(),
            samples: Vec::new(),
            impairments: Vec::new(),
            faults: Vec::new(),
            client_errors: Vec::new(),
            stalls: Vec::new(),
            overload: Overload::default(),
            refused_overloaded: 0,
            answers_confirmed: false,
        })))
    }

    /// The history, locked. A task that panicked while holding it left it
    /// consistent enough to check: every push is a single operation.
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that an impairment begins now; returns its index for [`end`](Self::end).
    pub fn begin(&self, node: Option<usize>, kind: ImpairmentKind) -> usize {
        let mut history = self.lock();
        let now = Instant::now();
        history.impairments.push(Impairment {
            node,
            kind,
            from: now,
            in_force: now,
            until: None,
        });
        history.impairments.len() - 1
    }

    /// Records that impairment `index` is surely in force from now.
    pub fn in_force(&self, index: usize) {
        self.lock().impairments[index].in_force = Instant::now();
    }

    /// Records that impairment `index` ended now.
    pub fn end(&self, index: usize) {
        self.lock().impairments[index].until = Some(Instant::now());
    }
}
