//! The embedder's handle to one role on a node: its status, requests to its coordinator, and resigning.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::coordinator::{Coordinator, ServeError};
use crate::runtime::context::RoleShared;
use crate::runtime::coordinator::CoordinatorMsg;
use crate::runtime::election::ElectionMsg;
#[cfg(feature = "fault-injection")]
use crate::runtime::faults::Fault;
use crate::status::{ResignError, RoleState, RoleStatus};

/// A typed handle to one role on a node: its status, and requests to its coordinator.
pub struct RoleHandle<C: Coordinator> {
    role: String,
    shared: Arc<RoleShared<C>>,
}

impl<C: Coordinator> Clone for RoleHandle<C> {
    fn clone(&self) -> Self {
        Self {
            role: self.role.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C: Coordinator> RoleHandle<C> {
    pub(crate) fn new(role: String, shared: Arc<RoleShared<C>>) -> Self {
        Self { role, shared }
    }

    /// The role's name.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The role's current status on this node.
    pub fn status(&self) -> RoleStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<RoleStatus> {
        self.shared.status.subscribe()
    }

    /// Whether the role serves on this node now.
    pub fn is_serving(&self) -> bool {
        self.status().state == RoleState::Serving
    }

    /// Sends `request` to the role's coordinator and waits up to `timeout`
    /// for the answer. A standby answers at once with [`ServeError::NotActive`].
    ///
    /// The request is queued when `call` is called, before the returned
    /// future is first polled, so requests from one task arrive in the
    /// order their calls were made.
    pub fn call(
        &self,
        request: C::Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<C::Response, ServeError>> + Send + 'static {
        let role = self.role.clone();
        let coordinator = self.shared.coordinator.get();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = coordinator.is_some_and(|coordinator| {
            let message = CoordinatorMsg::Request {
                request,
                reply: reply.into(),
            };
            coordinator.send_message(message).is_ok()
        });
        async move {
            if !queued {
                return Err(ServeError::Unavailable { role });
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(answer)) => answer,
                // The coordinator dropped the request: it crashed or stopped.
                Ok(Err(_)) => Err(ServeError::Unavailable { role }),
                Err(_) => Err(ServeError::TimedOut { role, timeout }),
            }
        }
    }
}

impl<C: Coordinator> RoleHandle<C> {
    /// Hands the role over if this node leads it: the coordinator is
    /// deactivated, the leader key deleted, and this node campaigns again
    /// behind the others. Answers once a peer can take over.
    pub fn resign(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ResignError>> + Send + 'static {
        let role = self.role.clone();
        let election = self.shared.election.get();
        async move {
            let not_running = || ResignError::NotRunning { role: role.clone() };
            let election = election.ok_or_else(not_running)?;
            match election.call(ElectionMsg::Resign, Some(timeout)).await {
                Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
                _ => Err(not_running()),
            }
        }
    }
}

/// A role on a node without its coordinator type, for what treats every
/// role alike (the gRPC Coordination service, health reporting).
pub trait RoleControl: Send + Sync {
    /// The role's name.
    fn role(&self) -> &str;
    /// The role's current status on this node.
    fn status(&self) -> RoleStatus;
    /// A receiver that sees every status change.
    fn subscribe(&self) -> watch::Receiver<RoleStatus>;
    /// Injects `fault` into the role's actors; false when the actor is not running.
    #[cfg(feature = "fault-injection")]
    fn inject(&self, fault: Fault) -> bool;
    /// Hands the role over if this node leads it (see [`RoleHandle::resign`]).
    fn resign(
        &self,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<(), ResignError>>;
}

impl<C: Coordinator> RoleControl for RoleHandle<C> {
    fn role(&self) -> &str {
        RoleHandle::role(self)
    }

    fn status(&self) -> RoleStatus {
        RoleHandle::status(self)
    }

    fn subscribe(&self) -> watch::Receiver<RoleStatus> {
        RoleHandle::subscribe(self)
    }

    #[cfg(feature = "fault-injection")]
    fn inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::CrashCoordinator => self.crash_coordinator(),
            Fault::CrashElection => self.crash_election(),
            Fault::CrashReload => {
                self.crash_reload();
                true
            }
        }
    }

    fn resign(
        &self,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<(), ResignError>> {
        Box::pin(RoleHandle::resign(self, timeout))
    }
}

/// Fault injection for tests (cargo feature `fault-injection`): the actors of
/// this role panic on demand, as a bug in them would. `standin run` exposes
/// them only with `--fault-injection`.
#[cfg(feature = "fault-injection")]
impl<C: Coordinator> RoleHandle<C> {
    /// Makes the role's coordinator actor panic. Returns false when none runs.
    pub fn crash_coordinator(&self) -> bool {
        let coordinator = self.shared.coordinator.get();
        coordinator.is_some_and(|c| c.send_message(CoordinatorMsg::InjectPanic).is_ok())
    }

    /// Makes the role's running reload (or its next one) panic after its next page.
    pub fn crash_reload(&self) {
        self.shared.faults.arm_reload_panic();
    }

    /// Makes the role's election actor panic. Returns false when none runs.
    pub fn crash_election(&self) -> bool {
        let election = self.shared.election.get();
        election.is_some_and(|e| e.send_message(ElectionMsg::InjectPanic).is_ok())
    }
}
