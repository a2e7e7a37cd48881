//! The `Tso` gRPC service: timestamps from the node that leads the `tso` role, one call at a time or streamed in batches.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::tso_server;
use super::proto::{AllocateRequest, AllocateResponse};
use super::{caller_wait, serve_error_status};
use crate::role::RoleHandle;
use crate::service::tso::{Tso, TsoError, TsoRequest};

/// Answers a stream holds ready before its client reads them: a client
/// that stops reading stops the stream's allocations.
const STREAM_AHEAD: usize = 16;

/// Serves `Tso` from this node's `tso` role.
#[derive(Clone)]
pub struct TsoService {
    role: RoleHandle<Tso>,
    max_count: u32,
    timeout: Duration,
}

impl TsoService {
    /// A service over `role`, refusing counts above `max_count`
    /// (`tso.maxCount`) and answering within `timeout` (or the caller's
    /// `grpc-timeout`, when shorter).
    pub fn new(role: RoleHandle<Tso>, max_count: u32, timeout: Duration) -> Self {
        Self {
            role,
            max_count,
            timeout,
        }
    }

    /// Allocates `count` for a caller who waits `wait`: what both the unary
    /// call and each request of a stream answer.
    async fn allocate(&self, count: u32, wait: Duration) -> Result<AllocateResponse, Status> {
        // Checked here too, so a bad request is refused the same way on every node.
        if count == 0 || count > self.max_count {
            return Err(Status::invalid_argument(format!(
                "count must be 1 to {} (tso.maxCount), got {count}",
                self.max_count
            )));
        }
        let answer = self.role.call(TsoRequest::Allocate { count }, wait).await;
        match answer {
            Ok(Ok(batch)) => Ok(AllocateResponse {
                first: batch.first,
                count: batch.count,
                epoch: batch.epoch,
            }),
            Ok(Err(error @ TsoError::BadCount { .. })) => {
                Err(Status::invalid_argument(error.to_string()))
            }
            Ok(Err(error @ (TsoError::AheadOfClock { .. } | TsoError::Exhausted { .. }))) => {
                Err(Status::resource_exhausted(error.to_string()))
            }
            // The term ended while persisting the window: a peer leads now.
            Ok(Err(error)) => Err(super::unavailable(
                error.to_string(),
                self.role.status().leader.as_ref(),
            )),
            Err(error) => Err(serve_error_status(
                error,
                self.role.status().leader.as_ref(),
            )),
        }
    }

    /// Answers the requests of one stream in order, all from one epoch,
    /// until the client ends it, stops listening, or a request fails (the
    /// stream then ends with that failure).
    async fn serve_stream(
        self,
        mut requests: Streaming<AllocateRequest>,
        answers: tokio::sync::mpsc::Sender<Result<AllocateResponse, Status>>,
    ) {
        let mut epoch = None;
        loop {
            let request = tokio::select! {
                request = requests.message() => request,
                () = answers.closed() => return,
            };
            let count = match request {
                Ok(Some(request)) => request.count,
                // The client closed its side, or its stream broke.
                Ok(None) | Err(_) => return,
            };
            let answer = match self.allocate(count, self.timeout).await {
                Ok(answer) if epoch.is_some_and(|epoch| epoch != answer.epoch) => {
                    // Never answer one stream from two terms: the client
                    // must learn of the failover by opening another.
                    Err(super::unavailable(
                        format!(
                            "the term this stream was served by (epoch {}) ended; open another",
                            epoch.unwrap_or_default()
                        ),
                        self.role.status().leader.as_ref(),
                    ))
                }
                answer => answer,
            };
            let ended = answer.is_err();
            if let Ok(answer) = &answer {
                epoch = Some(answer.epoch);
            }
            if answers.send(answer).await.is_err() || ended {
                return;
            }
        }
    }
}

type AllocateStream = Pin<Box<dyn Stream<Item = Result<AllocateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl tso_server::Tso for TsoService {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let wait = caller_wait(&request, self.timeout);
        let count = request.into_inner().count;
        TsoService::allocate(self, count, wait)
            .await
            .map(Response::new)
    }

    type AllocateStreamStream = AllocateStream;

    async fn allocate_stream(
        &self,
        request: Request<Streaming<AllocateRequest>>,
    ) -> Result<Response<Self::AllocateStreamStream>, Status> {
        let (answers, stream) = tokio::sync::mpsc::channel(STREAM_AHEAD);
        tokio::spawn(self.clone().serve_stream(request.into_inner(), answers));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}
