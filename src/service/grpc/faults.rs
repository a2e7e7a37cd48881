//! The `Faults` gRPC service: lets a test make a role's actors fail inside a running `standin run` process.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::proto::faults_server::Faults;
use super::proto::{InjectRequest, InjectResponse};
use crate::role::RoleControl;
use crate::runtime::faults::Fault;

/// Serves `Faults` for the roles of one node (only with `--fault-injection`).
pub struct FaultService {
    roles: Vec<Arc<dyn RoleControl>>,
}

impl FaultService {
    /// A service injecting faults into `roles`.
    pub fn new(roles: Vec<Arc<dyn RoleControl>>) -> Self {
        Self { roles }
    }
}

#[tonic::async_trait]
impl Faults for FaultService {
    async fn inject(
        &self,
        request: Request<InjectRequest>,
    ) -> Result<Response<InjectResponse>, Status> {
        let InjectRequest { role, fault } = request.into_inner();
        let Some(control) = self.roles.iter().find(|r| r.role() == role) else {
            return Err(Status::invalid_argument(format!(
                "unknown role {:?}",
                crate::service::shown::shown(&role)
            )));
        };
        let Some(fault) = Fault::from_name(&fault) else {
            let known: Vec<_> = Fault::ALL.iter().map(|(_, name)| *name).collect();
            return Err(Status::invalid_argument(format!(
                "unknown fault {:?}; faults: {}",
                crate::service::shown::shown(&fault),
                known.join(", ")
            )));
        };
        tracing::warn!(role, ?fault, "injecting a fault on request");
        Ok(Response::new(InjectResponse {
            injected: control.inject(fault),
        }))
    }
}
