//! standin keeps a service's coordinator highly available: one ACTIVE instance
//! per role, the others in STANDBY, leadership held as an etcd lease.
//!
//! A coordinator is the one part of a distributed service that must run as a
//! single active instance: a timestamp oracle, a scheduler, a metadata owner.
//! Run the same role on several processes with a [`Node`] each; one serves,
//! the others wait and take over when it fails: in milliseconds when its
//! coordinator crashes or it steps down, within the lease TTL when its host
//! dies. A deposed active can neither write (every metadata write goes
//! through a [`FencedStore`], guarded by the leader key's revision in etcd)
//! nor answer (it leaves [`RoleState::Serving`] before its lease can expire).
//!
//! # Example
//!
//! Implement [`Coordinator`], add it to a [`Node`] as a role, start the node:
//!
//! ```no_run
//! use std::time::Duration;
//! use standin::{BoxError, Config, Coordinator, Epoch, FencedStore, Node, Snapshot};
//!
//! /// Hands out IDs; the high-water mark survives failovers in etcd.
//! struct Ids;
//! struct Serving { next: u64, store: FencedStore }
//!
//! impl Coordinator for Ids {
//!     type Meta = u64;
//!     type Serving = Serving;
//!     type Request = ();
//!     type Response = Result<u64, BoxError>;
//!
//!     fn decode(&self, snapshot: Snapshot) -> Result<u64, BoxError> {
//!         let saved = snapshot.entries.get("next").map(|v| String::from_utf8_lossy(v).parse());
//!         Ok(saved.transpose()?.unwrap_or(0))
//!     }
//!     async fn activate(&self, _: Epoch, next: u64, store: FencedStore) -> Result<Serving, BoxError> {
//!         Ok(Serving { next, store })
//!     }
//!     async fn handle(&self, s: &mut Serving, _: ()) -> Result<u64, BoxError> {
//!         s.next += 1;
//!         s.store.put("next", s.next.to_string()).await?; // fails with Fenced once deposed
//!         Ok(s.next)
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder().endpoints(["127.0.0.1:2379"]).address("10.0.0.7:7000").build()?;
//! let mut node = Node::new(config);
//! let ids = node.add_role("idalloc", Ids)?;
//! node.start().await?;
//! // Until someone leads, a request gets NotActive without a leader's address.
//! ids.wait_for_leader(Duration::from_secs(5)).await?;
//! let id = ids.try_call((), Duration::from_secs(1)).await?;
//! println!("allocated {id}");
//! node.shutdown().await; // hands the role over before returning
//! # Ok(()) }
//! ```
//!
//! # Supervision tree
//!
//! ```text
//! Node                       etcd client, config, the roles it runs
//! ├─ Session                 the node's one etcd lease (grant, keepalive, revoke), shared by every role's keys
//! ├─ Spread                  follows every election, hands roles beyond this node's share to nodes below theirs
//! ├─ Witness                 the socket peers watch, and the watcher of the leaders' witnesses
//! └─ RoleSupervisor          one per role; spawns and supervises its endpoint and election
//!    ├─ RoleEndpoint         the role as an actor (RoleHandle::actor), spawned when first asked for
//!    └─ Election             the role's key on the session's lease: campaigns, decides (a pure state machine)
//!       ├─ CoordinatorActor  wraps your Coordinator from a win to its deactivation: Activating -> Serving
//!       └─ ReloadActor       keeps {root}/meta/{role}/ warm while standby; on a win, catches it up before it serves (a task with a mailbox)
//! ```
//!
//! [`Node::start_linked`] puts the role supervisors under an actor of yours.
//! A role's state is in [`RoleHandle::status`], [`RoleHandle::subscribe`] or,
//! as actor messages, [`RoleHandle::send_status_to`].
//!
//! # Where to go next
//!
//! - [`Node`] and [`RoleHandle`]: run roles, call them, resign, stop.
//! - [`Coordinator`]: what your coordinator implements; [`FencedStore`]: its writes.
//! - [`Config`] and [`Config::builder`]: every setting, from YAML or in code.
//! - [`etcd`]: the keys standin keeps in etcd, and reading a deployment back.
//! - `testing` (feature `testing`): real etcd servers and faults for your tests.
//! - `service` (feature `grpc`): the gRPC API, the routing layer, clients, `tso` and `kv`.
//!
//! # Cargo features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | (none) | the runtime: [`Node`], [`Coordinator`], [`FencedStore`], [`Config`] |
//! | `grpc` | `service`: standin's gRPC API, `ActiveOnlyLayer` for your tonic services, leader-following clients, the built-in `tso` and `kv` roles |
//! | `prometheus` | [`telemetry`]'s exporter (`install_prometheus`) |
//! | `fault-injection` | `RoleHandle::crash_*` and `Fault`: make a role's actors panic as a bug would |
//! | `testing` | `testing`: throwaway etcd servers and clusters, a fault proxy, `standin run` processes, waits (implies `fault-injection`) |
//! | `cli` | the `standin` binary |
//!
//! Building needs `protoc` (etcd-client's build compiles etcd's protos): on
//! Debian `apt-get install protobuf-compiler libprotobuf-dev`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, unreachable_pub)]

// Layers, lowest first: a module imports only from the ones above it.
pub(crate) mod backoff;
pub mod config;
mod coordinator;
pub mod etcd;
mod fence;
mod node;
mod role;
pub(crate) mod runtime;
#[cfg(feature = "grpc")]
pub mod service;
mod status;
mod task;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{Config, ConfigBuilder, ConfigError};
pub use coordinator::{
    BoxError, CallError, Coordinator, MetaChange, RoleMsg, ServeError, Snapshot,
};
pub use etcd::EtcdError;
pub use etcd::recipe::CampaignError;
pub use etcd::session::{SessionError, SessionInfo, TransferInfo, VERSION, WitnessInfo};
pub use fence::{Epoch, FenceError, FencedStore, Guard, WriteOp};
pub use node::{Node, NodeError, WitnessError};
pub use role::{RoleControl, RoleHandle, ServingCheck};
#[cfg(feature = "fault-injection")]
pub use runtime::faults::Fault;
pub use status::{
    Leader, MetadataCopy, ResignError, RoleState, RoleStatus, StepDownReason, Successor,
    TransferTarget,
};
pub use task::drop_elsewhere;
#[cfg(feature = "testing")]
pub use testing::TestingError;

/// The README's embedding example, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
