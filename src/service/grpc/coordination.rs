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
    EchoMessage, LeaderEvent, MetadataCopy, ResignRequest, ResignResponse, RoleStatus,
    StatusRequest, StatusResponse, WatchLeaderRequest,
};
use super::{AnswerStream, answer_in_order};
use crate::role::RoleControl;
use crate::status::RoleState;
use crate::status::{ResignError, TransferTarget};

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
            decoding: copy.decoding,
            released: copy.released,
        }),
        lease_id: status.lease.unwrap_or(0),
        metadata_copy_missing: role.metadata_copy_missing().unwrap_or_default(),
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

    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type EchoStreamStream = AnswerStream<EchoMessage>;

    async fn echo_stream(
        &self,
        request: Request<tonic::Streaming<EchoMessage>>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let answers = answer_in_order(request.into_inner(), |message| async move { Ok(message) });
        Ok(Response::new(answers))
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
        let ResignRequest { role, to } = request.into_inner();
        let control = self.role(&role)?;
        let to = match to.trim() {
            "" => None,
            to => Some(
                to.parse::<TransferTarget>()
                    .map_err(|problem| Status::invalid_argument(format!("to: {problem}")))?,
            ),
        };
        let outcome = match &to {
            None => {
                tracing::info!(role, %caller, "resign requested");
                control.resign(self.resign_timeout).await.map(|()| None)
            }
            Some(target) => {
                tracing::info!(role, %caller, %target, "leader transfer requested");
                control
                    .transfer(target.clone(), self.resign_timeout)
                    .await
                    .map(Some)
            }
        };
        let label = match &outcome {
            Ok(None) => "resigned",
            Ok(Some(_)) => "transferred",
            Err(ResignError::NotLeader { .. }) => "not_leader",
            Err(
                ResignError::TargetNotReady { .. }
                | ResignError::TargetLeads { .. }
                | ResignError::TransferInProgress { .. }
                | ResignError::TransferFailed { .. },
            ) => "refused",
            Err(_) => "unavailable",
        };
        metrics::counter!(crate::telemetry::RESIGN_REQUESTS, "role" => role.clone(), "outcome" => label)
            .increment(1);
        match outcome {
            Ok(successor) => {
                match &successor {
                    None => tracing::info!(role, %caller, "resigned on request"),
                    Some(to) => tracing::info!(
                        role,
                        %caller,
                        to = to.server_id,
                        "transferred on request to server {} at {}",
                        to.server_id,
                        to.address
                    ),
                }
                let (server_id, address) = successor
                    .map(|s| (s.server_id, s.address))
                    .unwrap_or_default();
                Ok(Response::new(ResignResponse { server_id, address }))
            }
            Err(error) => Err(status_of(&error)),
        }
    }
}

/// The gRPC status for a handover that did not happen: the caller's
/// precondition (not the leader, a target not ready), a conflict worth
/// retrying (a transfer under way or stalled), or the node unable to now.
fn status_of(error: &ResignError) -> Status {
    let message = error.to_string();
    match error {
        ResignError::NotLeader { .. }
        | ResignError::TargetNotReady { .. }
        | ResignError::TargetLeads { .. } => Status::failed_precondition(message),
        ResignError::TransferInProgress { .. } | ResignError::TransferFailed { .. } => {
            Status::aborted(message)
        }
        ResignError::NotRunning { .. }
        | ResignError::ResignUnconfirmed { .. }
        | ResignError::SteppedDown { .. } => Status::unavailable(message),
    }
}
