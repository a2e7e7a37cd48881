//! standin keeps a service's coordinator highly available: one ACTIVE instance
//! per role, the others in STANDBY, leadership held as an etcd lease.
//!
//! A [`Node`] runs one election actor per role. The election actor holds the
//! role's lease, campaigns with etcd's standard election recipe, supervises the
//! role's [`Coordinator`] (kept in standby until it wins) and a reload actor that
//! loads the role's metadata at the won revision before the coordinator serves.
//! Every metadata write of a serving coordinator goes through a [`FencedStore`]
//! guarded by the leader key's create revision, so a deposed active can never
//! write.

pub mod backoff;
pub mod campaign;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod election;
pub mod endpoints;
pub mod etcd;
pub mod faults;
pub mod fence;
pub mod grpc;
pub mod inspect;
pub mod node;
pub mod reload;
pub mod session;
mod slot;
pub mod supervisor;
mod task;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tso;

pub use config::Config;
pub use coordinator::{Coordinator, ServeError};
pub use fence::{Epoch, FenceError, FencedStore};
pub use node::{Node, RoleControl, RoleHandle, RoleStatus};
pub use reload::Snapshot;
pub use session::{RoleState, SessionInfo};

/// The README's embedding example, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
