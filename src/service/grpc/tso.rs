//! The `Tso` gRPC service: timestamps from the node that leads the `tso` role, one call at a time or streamed in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};

use super::proto::tso_server;
use super::proto::{AllocateRequest, AllocateResponse};
use super::{AnswerStream, answer_in_order, caller_wait, serve_error_status};
use crate::role::RoleHandle;
use crate::service::tso::{Tso, TsoError, TsoRequest};

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

    /// The answer to one request of a stream that `epoch` has served so
    /// far: never one of another epoch, so a client learns of a failover
    /// by opening another stream.
    /// (`epoch` is 0 until the stream's first answer.)
    async fn allocate_on_stream(
        &self,
        count: u32,
        epoch: &AtomicI64,
    ) -> Result<AllocateResponse, Status> {
        let answer = self.allocate(count, self.timeout).await?;
        match epoch.load(Ordering::Relaxed) {
            0 => {
                epoch.store(answer.epoch, Ordering::Relaxed);
                Ok(answer)
            }
            served if served == answer.epoch => Ok(answer),
            served => Err(super::unavailable(
                format!("the term this stream was served by (epoch {served}) ended; open another"),
                self.role.status().leader.as_ref(),
            )),
        }
    }
}

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

    type AllocateStreamStream = AnswerStream<AllocateResponse>;

    async fn allocate_stream(
        &self,
        request: Request<Streaming<AllocateRequest>>,
    ) -> Result<Response<Self::AllocateStreamStream>, Status> {
        let service = self.clone();
        // Requests are answered one at a time: the epoch is read and set in turn.
        let epoch = Arc::new(AtomicI64::new(0));
        let answers = answer_in_order(request.into_inner(), move |request: AllocateRequest| {
            let (service, epoch) = (service.clone(), epoch.clone());
            async move { service.allocate_on_stream(request.count, &epoch).await }
        });
        Ok(Response::new(answers))
    }
}
