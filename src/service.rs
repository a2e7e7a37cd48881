//! The service layer (cargo feature `grpc`): standin's gRPC API, a routing layer for your own tonic services, clients that follow the leader, and the built-in `tso` and `kv` roles.

pub mod client;
pub mod connect;
pub mod grpc;
pub mod idle;
pub mod kv;
pub mod server;
mod shown;
pub mod tso;

pub use client::{KvClient, LeaderWatch, RoleClient, TsoClient, TsoClientOptions, TsoClientStats};
pub use connect::{NodeChannel, NodeConnector};
pub use grpc::auth::{AuthLayer, Caller, Policy};
pub use grpc::routing::ActiveOnlyLayer;
pub use kv::{Entries, Kv, KvAnswer, KvError, KvRequest, Register};
pub use tso::{SavedBound, Tso, TsoBatch, TsoError, TsoRequest};
