//! standin's gRPC API: the generated code, and the conversions between it and the runtime's types.

pub mod auth;
pub mod coordination;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod gate;
pub mod health;
pub mod kv;
pub mod routing;
pub mod tso;

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::coordinator::ServeError;
use crate::etcd::recipe::Leader;

/// Code generated from `proto/standin.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("standin.v1");
}

/// The metadata key naming the address of the active instance of a role.
pub const LEADER_HEADER: &str = "standin-leader";
/// The metadata key carrying an epoch: on a refusal, the leader's; on a
/// request, the epoch the client believes leads (refused when stale).
pub const EPOCH_HEADER: &str = "standin-epoch";

impl From<&Leader> for proto::Leader {
    fn from(leader: &Leader) -> Self {
        proto::Leader {
            server_id: leader.session.server_id,
            address: leader.session.address.clone(),
            epoch: leader.revision,
            state: leader.session.state.as_str().to_owned(),
        }
    }
}

/// `UNAVAILABLE` that tells the client where the active instance is, when known.
pub fn unavailable(message: String, leader: Option<&Leader>) -> Status {
    let mut status = Status::unavailable(message);
    if let Some(leader) = leader {
        let metadata = status.metadata_mut();
        if let Ok(address) = MetadataValue::try_from(leader.session.address.as_str()) {
            metadata.insert(LEADER_HEADER, address);
        }
        metadata.insert(EPOCH_HEADER, MetadataValue::from(leader.revision));
    }
    status
}

/// The gRPC status for a request the role could not serve here.
pub fn serve_error_status(error: ServeError, leader: Option<&Leader>) -> Status {
    match error {
        ServeError::TimedOut { .. } => Status::deadline_exceeded(error.to_string()),
        ServeError::BufferFull { .. } => Status::resource_exhausted(error.to_string()),
        ServeError::NotActive { .. }
        | ServeError::ActivationAborted { .. }
        | ServeError::Unavailable { .. }
        | ServeError::Stopped { .. } => unavailable(error.to_string(), leader),
    }
}
