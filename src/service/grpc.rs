//! standin's gRPC API: the generated code, and the conversions between it and the runtime's types.

pub mod auth;
pub mod coordination;
#[cfg(feature = "fault-injection")]
pub mod faults;
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

/// How much of a client's string a refusal echoes: enough to recognise it,
/// never so much that a huge name makes a huge answer or log line.
const SHOWN_CHARS: usize = 64;

/// `text` as a refusal shows it: its first [`SHOWN_CHARS`] characters, and
/// how long it was when that is not all of it.
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
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

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn long_strings_are_shown_cut_with_their_length() {
        assert_eq!(shown("tso"), "tso");
        let long = "é".repeat(10_000);
        let cut = shown(&long);
        assert!(cut.starts_with(&"é".repeat(64)), "{cut}");
        assert!(cut.ends_with("... (20000 bytes)"), "{cut}");
    }

    proptest::proptest! {
        /// Whatever a client sends, what a refusal echoes stays short and
        /// starts as the client's text did.
        #[test]
        fn any_string_is_shown_short(text in ".{0,3000}") {
            let cut = shown(&text);
            proptest::prop_assert!(cut.chars().count() <= 64 + 24, "{}", cut);
            let head: String = text.chars().take(64).collect();
            proptest::prop_assert!(cut.starts_with(&head));
        }
    }
}
