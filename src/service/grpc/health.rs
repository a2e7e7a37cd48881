//! The standard gRPC health service (`grpc.health.v1`), answered from each role's term at the instant of asking.
//!
//! The service name is a role's name: `SERVING` while its term is open on
//! this node (not closed by a step-down, its lease trusted now) and its
//! coordinator serves, `NOT_SERVING` otherwise; the empty name is the
//! process itself, `SERVING` until every role has stopped. A process that
//! resumes after a freeze answers `NOT_SERVING` at once, before any of its
//! timers has run. Watch streams end once their role has stopped, so a
//! server shutting down is not held open by them.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::role::RoleControl;
use crate::status::RoleState;

/// Serves `grpc.health.v1.Health` for the roles of one node.
pub struct HealthService {
    roles: Vec<Arc<dyn RoleControl>>,
}

impl HealthService {
    /// A health service for `roles`.
    pub fn new(roles: Vec<Arc<dyn RoleControl>>) -> Self {
        Self { roles }
    }

    /// The service, ready for `Server::add_service`.
    pub fn into_server(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }

    fn role(&self, name: &str) -> Result<Arc<dyn RoleControl>, Status> {
        self.roles
            .iter()
            .find(|role| role.role() == name)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no role {:?} runs on this node",
                    crate::service::shown::shown(name)
                ))
            })
    }
}

/// Whether `role` serves here now.
fn health_of(role: &dyn RoleControl) -> ServingStatus {
    if role.serving().epoch().is_some() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = request.into_inner().service;
        let status = if name.is_empty() {
            ServingStatus::Serving
        } else {
            health_of(self.role(&name)?.as_ref())
        };
        Ok(Response::new(answer(status)))
    }

    type WatchStream = HealthStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = request.into_inner().service;
        let (events, stream) = tokio::sync::mpsc::channel(4);
        if name.is_empty() {
            let roles = self.roles.clone();
            tokio::spawn(async move {
                if events
                    .send(Ok(answer(ServingStatus::Serving)))
                    .await
                    .is_err()
                {
                    return;
                }
                for role in roles {
                    let mut statuses = role.subscribe();
                    tokio::select! {
                        _ = statuses.wait_for(|s| s.state == RoleState::Stopped) => {}
                        _ = events.closed() => return,
                    }
                }
                let _ = events.send(Ok(answer(ServingStatus::NotServing))).await;
            });
        } else {
            let role = self.role(&name)?;
            tokio::spawn(follow(role, events));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

/// Sends `role`'s health to `events` whenever it changes: on every status
/// change, and at the instant the lease stops being trusted. Ends when the
/// client goes away or the role stops.
async fn follow(
    role: Arc<dyn RoleControl>,
    events: tokio::sync::mpsc::Sender<Result<HealthCheckResponse, Status>>,
) {
    let mut statuses = role.subscribe();
    let serving = role.serving();
    let mut sent = None;
    loop {
        let stopped = statuses.borrow_and_update().state == RoleState::Stopped;
        let health = health_of(role.as_ref());
        if sent != Some(health) {
            if events.send(Ok(answer(health))).await.is_err() {
                return;
            }
            sent = Some(health);
        }
        if stopped {
            return;
        }
        let trust_ends = serving.trusted_until();
        tokio::select! {
            changed = statuses.changed() => if changed.is_err() { return },
            _ = async {
                match trust_ends {
                    Some(at) if at > std::time::Instant::now() => {
                        tokio::time::sleep_until(at.into()).await
                    }
                    _ => std::future::pending().await,
                }
            } => {}
            _ = events.closed() => return,
        }
    }
}
