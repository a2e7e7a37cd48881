//! The `Tso` gRPC service: timestamps from the node that leads the `tso` role.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::proto::tso_server;
use super::proto::{AllocateRequest, AllocateResponse};
use super::serve_error_status;
use crate::role::RoleHandle;
use crate::service::tso::{Tso, TsoError, TsoRequest};

/// Serves `Tso` from this node's `tso` role.
pub struct TsoService {
    role: RoleHandle<Tso>,
    max_count: u32,
    timeout: Duration,
}

impl TsoService {
    /// A service over `role`, refusing counts above `max_count`
    /// (`tso.maxCount`) and answering within `timeout`.
    pub fn new(role: RoleHandle<Tso>, max_count: u32, timeout: Duration) -> Self {
        Self {
            role,
            max_count,
            timeout,
        }
    }
}

#[tonic::async_trait]
impl tso_server::Tso for TsoService {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let count = request.into_inner().count;
        // Checked here too, so a bad request is refused the same way on every node.
        if count == 0 || count > self.max_count {
            return Err(Status::invalid_argument(format!(
                "count must be 1 to {} (tso.maxCount), got {count}",
                self.max_count
            )));
        }
        let answer = self
            .role
            .call(TsoRequest::Allocate { count }, self.timeout)
            .await;
        match answer {
            Ok(Ok(batch)) => Ok(Response::new(AllocateResponse {
                first: batch.first,
                count: batch.count,
                epoch: batch.epoch,
            })),
            Ok(Err(error @ TsoError::BadCount { .. })) => {
                Err(Status::invalid_argument(error.to_string()))
            }
            Ok(Err(error @ TsoError::AheadOfClock { .. })) => {
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
}
