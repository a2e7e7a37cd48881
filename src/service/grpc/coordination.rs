//! The `Coordination` gRPC service: a node's roles, their leaders as they change, and resigning one.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::proto::coordination_server::Coordination;
use super::proto::{
    LeaderEvent, MetadataCopy, ResignRequest, ResignResponse, RoleStatus, StatusRequest,
    StatusResponse, WatchLeaderRequest,
};
use crate::role::RoleControl;
use crate::status::ResignError;
use crate::status::RoleState;

/// Serves `Coordination` for the roles of one node.
pub struct CoordinationService {
    server_id: i64,
    address: String,
    roles: Vec<Arc<dyn RoleControl>>,
    resign_timeout: Duration,
}

impl CoordinationService {
    /// A service for `roles` of the node `server_id` reachable at `address`;
    /// a resign waits at most `resign_timeout` for the handover.
    pub fn new(
        server_id: i64,
        address: String,
        roles: Vec<Arc<dyn RoleControl>>,
        resign_timeout: Duration,
    ) -> Self {
        Self {
            server_id,
            address,
            roles,
            resign_timeout,
        }
    }

    fn role(&self, name: &str) -> Result<&Arc<dyn RoleControl>, Status> {
        self.roles
            .iter()
            .find(|role| role.role() == name)
            .ok_or_else(|| {
                let known: Vec<_> = self.roles.iter().map(|r| r.role().to_owned()).collect();
                Status::invalid_argument(format!(
                    "unknown role {:?}; this node runs {}",
                    crate::service::shown::shown(name),
                    known.join(", ")
                ))
            })
    }
}

fn role_status(role: &dyn RoleControl) -> RoleStatus {
    let status = role.status();
    RoleStatus {
        role: status.role.clone(),
        state: status.state.as_str().to_owned(),
        epoch: status.epoch.as_ref().map_or(0, |e| e.revision),
        server_id: status.server_id,
        leader: status.leader.as_ref().map(Into::into),
        last_step_down: status
            .last_step_down
            .map(|reason| reason.as_str().to_owned())
            .unwrap_or_default(),
        metadata_copy: role.metadata_copy().map(|copy| MetadataCopy {
            revision: copy.revision,
            keys: copy.keys as u64,
        }),
        lease_id: status.lease.unwrap_or(0),
    }
}

type LeaderStream = Pin<Box<dyn Stream<Item = Result<LeaderEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Coordination for CoordinationService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            server_id: self.server_id,
            address: self.address.clone(),
            roles: self.roles.iter().map(|r| role_status(r.as_ref())).collect(),
        }))
    }

    type WatchLeaderStream = LeaderStream;

    async fn watch_leader(
        &self,
        request: Request<WatchLeaderRequest>,
    ) -> Result<Response<Self::WatchLeaderStream>, Status> {
        let role = request.into_inner().role;
        let mut statuses = self.role(&role)?.subscribe();
        let (events, stream) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let (leader, stopped) = {
                    let status = statuses.borrow_and_update();
                    (status.leader.clone(), status.state == RoleState::Stopped)
                };
                if last.as_ref() != Some(&leader) {
                    let event = LeaderEvent {
                        role: role.clone(),
                        leader: leader.as_ref().map(Into::into),
                    };
                    if events.send(Ok(event)).await.is_err() {
                        return; // the client went away
                    }
                    last = Some(leader);
                }
                if stopped {
                    return; // the node stopped: end the stream, so a shutdown is not held open
                }
                tokio::select! {
                    changed = statuses.changed() => if changed.is_err() { return },
                    // The client went away while the leader stayed put.
                    _ = events.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        // Behind an AuthLayer the caller is known; without one, its address.
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous {
                peer: request.remote_addr(),
            });
        let role = request.into_inner().role;
        let control = self.role(&role)?;
        tracing::info!(role, %caller, "resign requested");
        let outcome = control.resign(self.resign_timeout).await;
        let label = match &outcome {
            Ok(()) => "resigned",
            Err(ResignError::NotLeader { .. }) => "not_leader",
            Err(_) => "unavailable",
        };
        metrics::counter!(crate::telemetry::RESIGN_REQUESTS, "role" => role.clone(), "outcome" => label)
            .increment(1);
        match outcome {
            Ok(()) => {
                tracing::info!(role, %caller, "resigned on request");
                Ok(Response::new(ResignResponse {}))
            }
            Err(error @ ResignError::NotLeader { .. }) => {
                Err(Status::failed_precondition(error.to_string()))
            }
            // etcd unreachable or the election restarting: worth a retry later.
            Err(
                error @ (ResignError::NotRunning { .. } | ResignError::ResignUnconfirmed { .. }),
            ) => Err(Status::unavailable(error.to_string())),
        }
    }
}
