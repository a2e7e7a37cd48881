//! The `Kv` gRPC service: the register of the node that leads the `kv` role.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::proto::kv_server;
use super::proto::{GetRequest, GetResponse, PutRequest, PutResponse};
use super::{caller_wait, serve_error_status};
use crate::role::RoleHandle;
use crate::service::kv::{Kv, KvAnswer, KvError, KvRequest};

/// Serves `Kv` from this node's `kv` role.
pub struct KvService {
    role: RoleHandle<Kv>,
    timeout: Duration,
}

impl KvService {
    /// A service over `role`, answering within `timeout` (or the caller's
    /// `grpc-timeout`, when shorter).
    pub fn new(role: RoleHandle<Kv>, timeout: Duration) -> Self {
        Self { role, timeout }
    }

    async fn call(&self, request: KvRequest, wait: Duration) -> Result<KvAnswer, Status> {
        match self.role.call(request, wait).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error @ (KvError::BadKey { .. } | KvError::ValueTooLarge { .. }))) => {
                Err(Status::invalid_argument(error.to_string()))
            }
            Ok(Err(error @ KvError::QuotaExceeded { .. })) => {
                Err(Status::resource_exhausted(error.to_string()))
            }
            // The term ended while persisting: a peer leads now, and its
            // reload says whether the write landed.
            Ok(Err(error @ KvError::Persist { .. })) => Err(super::unavailable(
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

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let wait = caller_wait(&request, self.timeout);
        let PutRequest { key, value } = request.into_inner();
        let answer = self.call(KvRequest::Put { key, value }, wait).await?;
        Ok(Response::new(PutResponse {
            epoch: answer.epoch,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let wait = caller_wait(&request, self.timeout);
        let GetRequest { key } = request.into_inner();
        let answer = self.call(KvRequest::Get { key }, wait).await?;
        Ok(Response::new(GetResponse {
            value: answer.value,
            epoch: answer.epoch,
        }))
    }
}
