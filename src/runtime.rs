//! The runtime behind a [`Node`](crate::Node): the actors that keep one role highly available, private to the crate.
//!
//! ```text
//! Node                       runtime handle: etcd client, config, the roles it runs
//! ├─ Session                 the node's one lease: grant, keepalive, revoke; the view every term reads
//! ├─ Spread                  follows every election; hands over the roles this node leads beyond its share
//! ├─ Witness                 the socket peers watch, and the watcher of leaders' witnesses (tasks)
//! └─ RoleSupervisor          one per role: spawns its endpoint and election; deletes a failed election's key, restarts it
//!    ├─ RoleEndpoint         takes the role's requests as messages
//!    └─ Election             the role's key on the session's lease, campaigns, owns the serving Term, decides (a pure state machine)
//!       ├─ CoordinatorActor  wraps the user's coordinator from a win to its deactivation: Activating -> Serving
//!       └─ ReloadActor       keeps {root}/meta/{role}/ warm; on a win, catches it up (a task with a mailbox)
//! ```
//!
//! The election actor links the coordinator actor (`spawn_linked`), so its
//! crash reaches the election as a `SupervisionEvent`; the reload actor's
//! failure reaches it as `ElectionMsg::ReloadFailed`. Either way the
//! decisions stay in one place: [`election::machine`], a state machine
//! without I/O.
//!
//! # Memory
//!
//! A node may run thousands of roles, most of them standing by, so what a
//! role holds while idle is what counts. The node's watches share a few
//! gRPC streams ([`crate::etcd::WatchHub`]). An actor's processing loop
//! holds its handler's future inline between messages, so the handlers of
//! the per-role actors box their work: the loop keeps a pointer, and the
//! large state (etcd calls, activation) lives only while a message is
//! handled. The long-lived tasks box their etcd calls for the same reason.
//! An actor costs about 6 KB even idle (ractor's two mailbox channels, each
//! allocating room for 32 messages up front, and its task), so a standby
//! role has no coordinator actor: the election spawns it at a win and stops
//! it once the term is deactivated, and a request in between is answered
//! from the role's status. The reload actor, which every standby needs for
//! its warm copy, runs on a plain task with a mailbox of boxed messages
//! (about 1.5 KB). The node reads
//! its warm copies a few at a time (`reload.concurrentLoads`), so a start
//! of a thousand roles does not hold a thousand reads' buffers at once.

pub(crate) mod clock;
pub(crate) mod context;
pub(crate) mod coordinator;
pub(crate) mod election;
pub(crate) mod endpoint;
pub(crate) mod faults;
pub(crate) mod queue;
pub(crate) mod reload;
pub(crate) mod session;
pub(crate) mod slot;
pub(crate) mod spread;
pub(crate) mod supervisor;
pub(crate) mod term;
pub(crate) mod witness;
