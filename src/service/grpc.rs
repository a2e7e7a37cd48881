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

use std::time::Duration;

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
/// The metadata key set on a `RESOURCE_EXHAUSTED` that says the role's
/// queue was full (`coordinator.queueDepth`): the refusal a client throttles
/// itself on, unlike a quota that retrying sooner or later cannot change.
pub const OVERLOADED_HEADER: &str = "standin-overloaded";

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
        ServeError::Overloaded { .. } | ServeError::WouldBeLate { .. } => {
            let why = match error {
                ServeError::Overloaded { .. } => "queue",
                _ => "deadline",
            };
            let mut status = Status::resource_exhausted(error.to_string());
            status
                .metadata_mut()
                .insert(OVERLOADED_HEADER, MetadataValue::from_static(why));
            status
        }
        ServeError::NotActive { .. }
        | ServeError::ActivationAborted { .. }
        | ServeError::Unavailable { .. }
        | ServeError::Stopped { .. } => unavailable(error.to_string(), leader),
    }
}

/// The stream a server answers a bidirectional call with.
pub type AnswerStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Answers `requests` one at a time, in order, with `answer`, until the
/// client ends its side, stops listening, or an answer is an error (sent,
/// and the stream ends with it). A few answers are held ready ahead of a
/// client that reads slowly; one that stops reading stops the answering.
pub fn answer_in_order<Req, Resp, F, Fut>(
    mut requests: tonic::Streaming<Req>,
    mut answer: F,
) -> AnswerStream<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: FnMut(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send,
{
    /// Answers held ready before the client reads them.
    const AHEAD: usize = 16;
    let (answers, stream) = tokio::sync::mpsc::channel(AHEAD);
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                request = requests.message() => request,
                () = answers.closed() => return,
            };
            // The client closed its side, or its stream broke.
            let Ok(Some(request)) = request else { return };
            let answered = answer(request).await;
            let ended = answered.is_err();
            if answers.send(answered).await.is_err() || ended {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(stream))
}

/// The header in which a gRPC caller says how long it waits.
const TIMEOUT_HEADER: &str = "grpc-timeout";

/// How long the caller of `request` waits: its `grpc-timeout`, at most
/// `cap` (the server's bound). A request still queued when its caller's
/// wait is over is dropped before the coordinator sees it.
pub fn caller_wait<T>(request: &tonic::Request<T>, cap: Duration) -> Duration {
    request
        .metadata()
        .get(TIMEOUT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(cap, |wait| wait.min(cap))
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), as the gRPC over HTTP/2 protocol spells it.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Sets `grpc-timeout` on an outgoing request to what is left until
/// `deadline`, unless it carries one already: the server then drops the
/// request when the caller stops waiting, instead of serving it for nobody.
pub(crate) fn set_caller_wait(headers: &mut http::HeaderMap, deadline: std::time::Instant) {
    if headers.contains_key(TIMEOUT_HEADER) {
        return;
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    // Milliseconds while they fit the protocol's 8 digits, else seconds.
    let millis = left.as_millis();
    let value = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    if let Ok(value) = http::HeaderValue::from_str(&value) {
        headers.insert(TIMEOUT_HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_bad_ones_ignored() {
        for (text, wait) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(parse_grpc_timeout(text), Some(wait), "{text}");
        }
        for bad in ["", "m", "5", "123456789m", "+5m", "5x", "-1S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_caller_waits_its_own_timeout_capped_by_the_server() {
        let cap = Duration::from_secs(5);
        let mut request = tonic::Request::new(());
        assert_eq!(caller_wait(&request, cap), cap);
        request
            .metadata_mut()
            .insert(TIMEOUT_HEADER, MetadataValue::from_static("20m"));
        assert_eq!(caller_wait(&request, cap), Duration::from_millis(20));
        request
            .metadata_mut()
            .insert(TIMEOUT_HEADER, MetadataValue::from_static("1H"));
        assert_eq!(caller_wait(&request, cap), cap);
    }

    #[test]
    fn a_deadline_is_sent_as_what_is_left_of_it() {
        let mut headers = http::HeaderMap::new();
        set_caller_wait(
            &mut headers,
            std::time::Instant::now() + Duration::from_secs(2),
        );
        let sent = parse_grpc_timeout(headers[TIMEOUT_HEADER].to_str().unwrap()).unwrap();
        assert!(
            sent <= Duration::from_secs(2) && sent > Duration::from_secs(1),
            "{sent:?}"
        );
        // A timeout the caller set itself is left alone.
        headers.insert(TIMEOUT_HEADER, http::HeaderValue::from_static("5S"));
        set_caller_wait(&mut headers, std::time::Instant::now());
        assert_eq!(headers[TIMEOUT_HEADER], "5S");
    }
}
