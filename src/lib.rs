//! standin keeps a service's coordinator highly available: one ACTIVE instance
//! per role, the others in STANDBY, leadership held as an etcd lease.
//!
//! PLACEHOLDER_CRATE_DOCS
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
pub use coordinator::{BoxError, CallError, Coordinator, RoleMsg, ServeError, Snapshot};
pub use etcd::session::{SessionInfo, VERSION};
pub use fence::{Epoch, FenceError, FencedStore, Guard, WriteOp};
pub use node::{Node, NodeError};
pub use role::{RoleControl, RoleHandle};
#[cfg(feature = "fault-injection")]
pub use runtime::faults::Fault;
pub use status::{Leader, ResignError, RoleState, RoleStatus, StepDownReason};

/// The README's embedding example, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
