//! The service layer (cargo feature `grpc`): standin's gRPC API, a routing layer for your own tonic services, clients that follow the leader, and the built-in `tso` role.

pub mod client;
pub mod grpc;
pub mod tso;

pub use client::{LeaderWatch, RoleClient, TsoClient};
pub use grpc::routing::ActiveOnlyLayer;
pub use tso::{Tso, TsoBatch, TsoError, TsoRequest};
