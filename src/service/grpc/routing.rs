//! A tower layer that lets requests through only on the node where a role serves, and only for the current epoch.
//!
//! Embedders put it in front of their own tonic services. Elsewhere it
//! answers `UNAVAILABLE` with `standin-leader` (where the active is, when
//! known) and `standin-epoch`, so a client can go straight there.

use std::sync::Arc;

use http::{HeaderMap, Request};
use tonic::Status;

use super::gate::{Admit, GateLayer, Gated};
use super::{EPOCH_HEADER, unavailable};
use crate::etcd::session::RoleState;
use crate::role::RoleControl;
use crate::status::RoleStatus;

/// Wraps services so they run only where the role serves.
pub type ActiveOnlyLayer = GateLayer<ServesHere>;

/// A service that refuses requests where its role does not serve.
pub type ActiveOnly<S> = Gated<S, ServesHere>;

/// The check behind [`ActiveOnlyLayer`]: whether the role serves on this
/// node at this instant, for the epoch the request names.
pub struct ServesHere {
    role: Box<dyn RoleControl>,
}

impl ActiveOnlyLayer {
    /// A layer for `role` (a `RoleHandle`), asking on every request whether
    /// it serves here at that instant (`RoleHandle::status`).
    pub fn new(role: impl RoleControl + 'static) -> Self {
        Self {
            admit: Arc::new(ServesHere {
                role: Box::new(role),
            }),
        }
    }
}

impl Admit for ServesHere {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), Status> {
        match refusal(&self.role.status(), request.headers()) {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }
}

/// Why a request must go elsewhere, if it must; `status` as it stands at
/// this instant (`RoleHandle::status`).
pub fn refusal(status: &RoleStatus, headers: &HeaderMap) -> Option<Status> {
    let leader = status.leader.as_ref();
    let Some(epoch) = status
        .epoch
        .as_ref()
        .filter(|_| status.state == RoleState::Serving)
    else {
        return Some(unavailable(
            format!(
                "{} is not served on this node (it is {})",
                status.role, status.state
            ),
            leader,
        ));
    };
    let claimed = headers
        .get(EPOCH_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i64>().ok());
    match claimed {
        // A client still holding an older epoch was routed by stale
        // information; one holding a newer epoch knows this node was deposed.
        Some(claimed) if claimed != epoch.revision => Some(unavailable(
            format!(
                "{} serves here at epoch {}, not at epoch {claimed}: refresh the leader",
                status.role, epoch.revision
            ),
            leader,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::recipe::Leader;
    use crate::etcd::session::SessionInfo;
    use crate::fence::Epoch;

    fn status(state: RoleState, epoch: Option<i64>) -> RoleStatus {
        RoleStatus {
            role: "tso".into(),
            server_id: 1,
            state,
            epoch: epoch.map(|revision| Epoch {
                role: "tso".into(),
                leader_key: "k".into(),
                revision,
            }),
            leader: Some(Leader {
                session: SessionInfo {
                    server_id: 2,
                    role: "tso".into(),
                    address: "127.0.0.1:7000".into(),
                    version: "0".into(),
                    state: RoleState::Serving,
                    lease_id: 9,
                    witness: None,
                    priority: 0,
                    transfer: None,
                },
                key: "k".into(),
                revision: 40,
            }),
            lease: None,
            last_step_down: None,
        }
    }

    fn headers(epoch: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(epoch) = epoch {
            headers.insert(EPOCH_HEADER, epoch.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_standby_refuses_and_names_the_leader() {
        let refused = refusal(&status(RoleState::Standby, None), &headers(None)).unwrap();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(
            refused.metadata().get("standin-leader").unwrap(),
            "127.0.0.1:7000"
        );
        assert_eq!(refused.metadata().get("standin-epoch").unwrap(), "40");
    }

    #[test]
    fn an_activating_node_refuses() {
        assert!(refusal(&status(RoleState::Activating, Some(40)), &headers(None)).is_some());
    }

    #[test]
    fn the_serving_node_accepts_its_own_epoch_or_none() {
        let serving = status(RoleState::Serving, Some(40));
        assert!(refusal(&serving, &headers(None)).is_none());
        assert!(refusal(&serving, &headers(Some("40"))).is_none());
    }

    #[test]
    fn a_stale_or_future_epoch_is_refused() {
        let serving = status(RoleState::Serving, Some(40));
        let stale = refusal(&serving, &headers(Some("39"))).unwrap();
        assert_eq!(stale.code(), tonic::Code::Unavailable);
        assert!(stale.message().contains("epoch 39"), "{}", stale.message());
        assert!(refusal(&serving, &headers(Some("41"))).is_some());
    }
}
