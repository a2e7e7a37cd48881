//! The role endpoint actor: takes requests to a role as ractor messages and hands them to whichever coordinator actor runs now.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::coordinator::{Coordinator, RoleMsg};
use crate::runtime::context::RoleShared;

/// A role's stable address for actor embedders: the coordinator actor
/// behind it is replaced on every restart, this one lives as long as the role.
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
            RoleMsg::Call(request, reply) => self.shared.forward(request, reply),
        }
        Ok(())
    }
}
