//! The embedder's handle to one role on a node: its status, requests to its coordinator, resigning and leader transfer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use ractor::ActorRef;

use crate::coordinator::{CallError, Coordinator, RoleMsg, ServeError};
use crate::fence::Epoch;
use crate::runtime::context::RoleShared;
#[cfg(feature = "fault-injection")]
use crate::runtime::coordinator::CoordinatorMsg;
use crate::runtime::election::ElectionMsg;
#[cfg(feature = "fault-injection")]
use crate::runtime::faults::Fault;
use crate::runtime::slot::Slot;
use crate::runtime::supervisor::ElectionSlot;
use crate::runtime::term::Term;
use crate::status::{MetadataCopy, ResignError, RoleState, RoleStatus, Successor, TransferTarget};

/// Whether a role serves on this node, asked at the instant it matters:
/// its term is open (not closed by a step-down, its lease trusted at this
/// very instant) and its coordinator has activated. Cheap to clone; what
/// the routing layer and the health service ask on every request, so a
/// process that resumes after a freeze refuses at once, before any of its
/// timers has run.
#[derive(Clone)]
pub struct ServingCheck {
    term: Arc<Slot<Term>>,
}

impl ServingCheck {
    /// The epoch this node serves the role at right now, or `None`.
    pub fn epoch(&self) -> Option<Epoch> {
        self.served().map(|term| term.epoch().clone())
    }

    /// Until when the lease of the term being served is trusted, if one is:
    /// the instant [`epoch`](Self::epoch) turns `None` unless a keepalive
    /// moves it on.
    pub fn trusted_until(&self) -> Option<std::time::Instant> {
        self.served()
            .and_then(|term| term.trusted_until())
            .map(|until| until.to_instant())
    }

    /// The current term, if it serves now.
    fn served(&self) -> Option<Term> {
        self.term.get().filter(Term::serves)
    }
}

/// `status` as it stands at this instant: a status that still says serving
/// although the term is over (or its lease no longer trusted) says standby.
fn as_of_now(mut status: RoleStatus, serving: Option<Epoch>) -> RoleStatus {
    if status.state == RoleState::Serving && (serving.is_none() || serving != status.epoch) {
        status.state = RoleState::Standby;
        status.epoch = None;
    }
    status
}

/// A typed handle to one role on a node: its status, and requests to its coordinator.
pub struct RoleHandle<C: Coordinator> {
    shared: Arc<RoleShared<C>>,
    election: ElectionSlot<C>,
}

impl<C: Coordinator> Clone for RoleHandle<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            election: self.election.clone(),
        }
    }
}

impl<C: Coordinator> RoleHandle<C> {
    pub(crate) fn new(shared: Arc<RoleShared<C>>, election: ElectionSlot<C>) -> Self {
        Self { shared, election }
    }

    /// The role's name.
    pub fn role(&self) -> &str {
        &self.shared.role
    }

    /// The role's status on this node at this instant: `serving` only while
    /// its term is open (see [`ServingCheck`]).
    pub fn status(&self) -> RoleStatus {
        let published = self.shared.status.borrow().clone();
        as_of_now(published, self.serving().epoch())
    }

    /// A receiver that sees every status change as the election publishes
    /// it. A change is published once the election has acted on it; for the
    /// state at the instant of asking, see [`status`](Self::status).
    pub fn subscribe(&self) -> watch::Receiver<RoleStatus> {
        self.shared.status.subscribe()
    }

    /// Where this node's warm copy of the role's metadata stands: `None`
    /// while it is read, and always with `reload.warm: false`.
    pub fn metadata_copy(&self) -> Option<MetadataCopy> {
        *self.shared.copy.borrow()
    }

    /// Why this node's warm copy of the metadata is not loaded: the error
    /// of its last failed read (etcd refusing the prefix, compactions
    /// outrunning the read, an unreachable etcd), while the read is retried
    /// with backoff. `None` once it loads, and before any read has failed.
    /// Meanwhile the node still campaigns, after `reload.timeout`: a win
    /// reads the metadata first.
    pub fn metadata_copy_missing(&self) -> Option<String> {
        self.shared.copy_missing.get()
    }

    /// Requests waiting now for the role's coordinator on this node (at
    /// most `coordinator.queueDepth`): queued while it activates or serves
    /// slower than they arrive; 0 when no coordinator runs here.
    pub fn queued(&self) -> usize {
        self.shared
            .coordinator
            .get()
            .map_or(0, |coordinator| coordinator.queue.len())
    }

    /// Whether the role serves on this node now.
    pub fn is_serving(&self) -> bool {
        self.serving().epoch().is_some()
    }

    /// What answers whether the role serves here, at the instant of asking.
    pub fn serving(&self) -> ServingCheck {
        ServingCheck {
            term: self.shared.term.clone(),
        }
    }

    /// Waits up to `timeout` until the role is led: this node activating or
    /// serving (a request now is answered here), or another node leading (a
    /// request now is turned away naming it). Right after [`Node::start`](crate::Node::start)
    /// nobody may lead yet, and a request gets `NotActive` without a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<RoleStatus, ServeError> {
        let mut changes = self.shared.status.subscribe();
        let led = changes.wait_for(|status| match status.state {
            RoleState::Activating | RoleState::Serving => true,
            RoleState::Standby => status
                .leader
                .as_ref()
                .is_some_and(|leader| leader.session.server_id != status.server_id),
            RoleState::Stopping | RoleState::Stopped => false,
        });
        match tokio::time::timeout(timeout, led).await {
            Ok(Ok(status)) => Ok(status.clone()),
            Ok(Err(_)) => Err(self.shared.gone()),
            Err(_) => Err(ServeError::TimedOut {
                role: self.shared.role.clone(),
                timeout,
            }),
        }
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
        let shared = self.shared.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        shared.forward(request, reply.into(), timeout);
        async move {
            let answer = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(answer)) => answer,
                // The coordinator dropped the request: it crashed, or the node stopped.
                Ok(Err(_)) => Err(shared.gone()),
                Err(_) => Err(ServeError::TimedOut {
                    role: shared.role.clone(),
                    timeout,
                }),
            };
            shared.count_request(&answer);
            answer
        }
    }

    /// [`call`](Self::call) for a coordinator whose response is a `Result`:
    /// one error for "not served here" and the coordinator's own failure.
    pub fn try_call<T, E>(
        &self,
        request: C::Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<T, CallError<E>>> + Send + 'static
    where
        C: Coordinator<Response = Result<T, E>>,
    {
        let answer = self.call(request, timeout);
        async move { answer.await?.map_err(CallError::Failed) }
    }

    /// The role as an actor: requests sent as [`RoleMsg::Call`] are answered as
    /// [`call`](Self::call) answers them, so an actor can `call!`/`cast!` the
    /// role. Spawned under the role's supervisor the first time it is asked
    /// for (a node of thousands of roles holds none for those nobody
    /// addresses), then the same address across coordinator restarts;
    /// `None` before the node has started and once it has stopped.
    pub async fn actor(&self) -> Option<ActorRef<RoleMsg<C>>> {
        crate::runtime::endpoint::endpoint_of(&self.shared).await
    }

    /// Delivers the role's status to `actor` as messages: the current one at
    /// once, then every change, each turned into a message by `into`. Runs
    /// (as a task of the current tokio runtime) until the actor stops or the
    /// node is dropped.
    pub fn send_status_to<M>(
        &self,
        actor: ActorRef<M>,
        into: impl Fn(RoleStatus) -> M + Send + 'static,
    ) where
        M: ractor::Message,
    {
        let mut changes = self.shared.status.subscribe();
        tokio::spawn(async move {
            loop {
                let status = changes.borrow_and_update().clone();
                if actor.send_message(into(status)).is_err() || changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The fenced store of the term this node serves now, if it serves: a
    /// test keeps it to check that the store refuses writes once the term
    /// is over (cargo feature `testing`).
    #[cfg(feature = "testing")]
    pub fn fenced_store(&self) -> Option<crate::fence::FencedStore> {
        self.shared.store.get()
    }

    /// Whether a coordinator actor runs for the role on this node: from a
    /// win until the term is deactivated, never while standby (cargo
    /// feature `testing`).
    #[cfg(feature = "testing")]
    pub fn has_coordinator_actor(&self) -> bool {
        self.shared.coordinator.get().is_some()
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
        let role = self.shared.role.clone();
        let election = self.election.get();
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

impl<C: Coordinator> RoleHandle<C> {
    /// Hands the role to the standby `to` if this node leads it: the
    /// candidates ahead of `to` make way, then this node resigns as in
    /// [`RoleHandle::resign`], so `to` takes over as fast as a graceful
    /// handover. Refused at once when `to` is not a candidate (its warm
    /// copy still loading, its coordinator restarting, no etcd session);
    /// the candidates ahead of it get half of `timeout` to make way.
    /// Answers with the successor once it can take over.
    pub fn transfer(
        &self,
        to: TransferTarget,
        timeout: Duration,
    ) -> impl Future<Output = Result<Successor, ResignError>> + Send + 'static {
        let role = self.shared.role.clone();
        let election = self.election.get();
        async move {
            let not_running = || ResignError::NotRunning { role: role.clone() };
            let election = election.ok_or_else(not_running)?;
            let within = timeout / 2;
            let ask = |reply| ElectionMsg::Transfer {
                to,
                within,
                reply: Some(reply),
            };
            match election.call(ask, Some(timeout)).await {
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
    /// What answers whether the role serves here, at the instant of asking.
    fn serving(&self) -> ServingCheck;
    /// Where this node's warm copy of the role's metadata stands (see
    /// [`RoleHandle::metadata_copy`]).
    fn metadata_copy(&self) -> Option<MetadataCopy>;
    /// Why that copy is not loaded, while its read is retried (see
    /// [`RoleHandle::metadata_copy_missing`]).
    fn metadata_copy_missing(&self) -> Option<String> {
        None
    }
    /// Injects `fault` into the role's actors; false when the actor is not
    /// running (for [`Fault::Disarm`], when nothing was armed).
    #[cfg(feature = "fault-injection")]
    fn inject(&self, fault: Fault) -> bool;
    /// Hands the role over if this node leads it (see [`RoleHandle::resign`]).
    fn resign(
        &self,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<(), ResignError>>;
    /// Hands the role to the standby `to` if this node leads it (see [`RoleHandle::transfer`]).
    fn transfer(
        &self,
        to: TransferTarget,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Successor, ResignError>>;
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

    fn serving(&self) -> ServingCheck {
        RoleHandle::serving(self)
    }

    fn metadata_copy(&self) -> Option<MetadataCopy> {
        RoleHandle::metadata_copy(self)
    }

    fn metadata_copy_missing(&self) -> Option<String> {
        RoleHandle::metadata_copy_missing(self)
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
            Fault::HangActivation => {
                self.hang_activation();
                true
            }
            Fault::StallClock => crate::runtime::clock::stall(Fault::CLOCK_STALL),
            Fault::Disarm => self.disarm_faults(),
        }
    }

    fn resign(
        &self,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<(), ResignError>> {
        Box::pin(RoleHandle::resign(self, timeout))
    }

    fn transfer(
        &self,
        to: TransferTarget,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Successor, ResignError>> {
        Box::pin(RoleHandle::transfer(self, to, timeout))
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
        coordinator.is_some_and(|c| c.actor.send_message(CoordinatorMsg::InjectPanic).is_ok())
    }

    /// Makes the role's reload actor panic at its next page read or catch-up
    /// (a win), whichever comes first.
    pub fn crash_reload(&self) {
        self.shared.faults.arm_reload_panic();
    }

    /// Makes the role's next activation on this node hang before the
    /// coordinator's `activate` runs, until `coordinator.activateTimeout`
    /// makes the election give the term up.
    pub fn hang_activation(&self) {
        self.shared.faults.arm_activation_hang();
    }

    /// Turns off the fault switches armed above that have not fired yet.
    /// Returns whether any was armed.
    pub fn disarm_faults(&self) -> bool {
        self.shared.faults.disarm()
    }

    /// Makes the role's next reload, after its first page, add a permit to
    /// `reached` and wait until `gate` gives it one, so a test can change
    /// etcd mid-reload (compact it, cut it off).
    pub fn hold_reload(
        &self,
        reached: Arc<tokio::sync::Semaphore>,
        gate: Arc<tokio::sync::Semaphore>,
    ) {
        self.shared.faults.hold_reload(reached, gate);
    }

    /// Makes the role's election actor panic. Returns false when none runs.
    pub fn crash_election(&self) -> bool {
        let election = self.election.get();
        election.is_some_and(|e| e.send_message(ElectionMsg::InjectPanic).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(revision: i64) -> Epoch {
        Epoch {
            role: "r".into(),
            leader_key: "k".into(),
            revision,
        }
    }

    fn published(state: RoleState, revision: Option<i64>) -> RoleStatus {
        RoleStatus {
            role: "r".into(),
            server_id: 1,
            state,
            epoch: revision.map(epoch),
            leader: None,
            lease: None,
            last_step_down: None,
        }
    }

    #[test]
    fn a_published_serving_state_stands_only_while_its_term_serves() {
        let serving = published(RoleState::Serving, Some(4));
        assert_eq!(as_of_now(serving.clone(), Some(epoch(4))), serving);
        let over = as_of_now(serving.clone(), None);
        assert_eq!((over.state, over.epoch), (RoleState::Standby, None));
        let other = as_of_now(serving, Some(epoch(5)));
        assert_eq!(other.state, RoleState::Standby);
        let standby = published(RoleState::Activating, Some(4));
        assert_eq!(as_of_now(standby.clone(), None), standby);
    }
}
