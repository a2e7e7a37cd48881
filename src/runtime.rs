//! The runtime behind a [`Node`](crate::Node): the actors that keep one role highly available, private to the crate.
//!
//! ```text
//! Node                       runtime handle: etcd client, config, the roles it runs
//! ├─ Session                 the node's one lease: grant, keepalive, revoke; the view every term reads
//! ├─ Witness                 the socket peers watch, and the watcher of leaders' witnesses (tasks)
//! └─ RoleSupervisor          one per role: spawns its endpoint and election; deletes a failed election's key, restarts it
//!    ├─ RoleEndpoint         takes the role's requests as messages
//!    └─ Election             the role's key on the session's lease, campaigns, owns the serving Term, decides (a pure state machine)
//!       ├─ CoordinatorActor  wraps the user's coordinator: Standby -> Activating -> Serving -> Standby
//!       └─ ReloadActor       loads {root}/meta/{role}/ at the won revision, in pages
//! ```
//!
//! The election actor links the other two (`spawn_linked`), so a crash of
//! either reaches it as a `SupervisionEvent` and its decisions stay in one
//! place: [`election::machine`], a state machine without I/O.

pub(crate) mod context;
pub(crate) mod coordinator;
pub(crate) mod election;
pub(crate) mod endpoint;
pub(crate) mod faults;
pub(crate) mod reload;
pub(crate) mod session;
pub(crate) mod slot;
pub(crate) mod spread;
pub(crate) mod supervisor;
pub(crate) mod term;
pub(crate) mod witness;
