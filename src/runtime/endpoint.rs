//! The role endpoint actor: takes requests to a role as ractor messages and hands them to whichever coordinator actor runs now; spawned when first asked for.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::coordinator::{Coordinator, RoleMsg};
use crate::runtime::context::{NO_DEADLINE, RoleShared};

/// A role's stable address for actor embedders: the coordinator actor
/// behind it is replaced on every restart, this one lives as long as the
/// role. Spawned under the role's supervisor the first time someone asks
/// for it ([`endpoint_of`]): a node standing by for thousands of roles
/// holds no actor for those nobody addresses as one.
pub(crate) struct RoleEndpoint<C: Coordinator> {
    shared: Arc<RoleShared<C>>,
}

impl<C: Coordinator> RoleEndpoint<C> {
    /// The endpoint of the role whose cells are `shared`.
    pub(crate) fn new(shared: Arc<RoleShared<C>>) -> Self {
        Self { shared }
    }
}

impl<C: Coordinator> Actor for RoleEndpoint<C> {
    type Msg = RoleMsg<C>;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoleMsg::Call(request, reply) => {
                let timeout = reply.get_timeout().unwrap_or(NO_DEADLINE);
                self.shared.forward(request, reply, timeout);
            }
        }
        Ok(())
    }
}

/// The role's endpoint: the running one, or one spawned now under the
/// role's supervisor. `None` before the node has started, once it has
/// stopped, or when the spawn fails.
pub(crate) async fn endpoint_of<C: Coordinator>(
    shared: &Arc<RoleShared<C>>,
) -> Option<ActorRef<RoleMsg<C>>> {
    if let Some(endpoint) = shared.endpoint.get() {
        return Some(endpoint);
    }
    let _spawning = shared.endpoint_spawn.lock().await;
    if let Some(endpoint) = shared.endpoint.get() {
        return Some(endpoint);
    }
    let supervisor = shared.supervisor.get().filter(|_| !shared.is_stopped())?;
    let endpoint = RoleEndpoint::new(shared.clone());
    match Actor::spawn_linked(None, endpoint, (), supervisor).await {
        Ok((actor, _)) => {
            shared.endpoint.set(Some(actor.clone()));
            Some(actor)
        }
        Err(error) => {
            tracing::error!(
                role = shared.role,
                "spawning the role's endpoint failed: {error}"
            );
            None
        }
    }
}
