//! The `idle` built-in roles: coordinators that hold a term and serve nothing, to size and test a node that runs many roles (`standin run --idle-roles N`).

use crate::coordinator::{BoxError, Coordinator, Snapshot};
use crate::fence::{Epoch, FencedStore};

/// The name of idle role `index`: `idle-0000`, `idle-0001`, ...
pub fn idle_role(index: usize) -> String {
    format!("idle-{index:04}")
}

/// A coordinator with no metadata and no requests: it campaigns, stands
/// by, takes over and steps down like any role, at the least cost a role
/// can have, which is what a node with thousands of roles pays per role.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle;

impl Coordinator for Idle {
    type Meta = ();
    type Serving = ();
    type Request = ();
    type Response = ();

    fn decode(&self, _snapshot: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(
        &self,
        _epoch: Epoch,
        _meta: (),
        _store: FencedStore,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle(&self, _serving: &mut (), _request: ()) {}
}
