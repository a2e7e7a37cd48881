//! The publisher of a role's session value (and of the leader value while leading): in order, the newest wins, retried until it lands.

use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use tokio::sync::watch;

use crate::etcd::TxnBatcher;
use crate::etcd::recipe::{self, Candidacy};
use crate::etcd::session::{RoleState, SessionInfo};
use crate::task::OwnedTask;

/// How long an `activating` state waits for the next before it is written.
/// A wave of takeovers (a node that led hundreds of roles died) writes each
/// role's serving state alone instead of both; a slow activation (a cold
/// read, a coordinator that takes its time) shows as activating this late.
const ACTIVATING_LINGER: Duration = Duration::from_millis(100);

/// What to publish: the session, and the candidacy to proclaim it on while leading.
type Publication = (SessionInfo, Option<Candidacy>);

/// Writes the session at one key, newest state first; a state that cannot
/// be written is retried until it lands or a newer one supersedes it.
pub(crate) struct Publisher {
    latest: watch::Sender<Option<Publication>>,
    _task: OwnedTask,
}

impl Publisher {
    /// A publisher writing at `key` through the node's `writes`, retrying a
    /// failed write after `retry_after`. A panic in its task is handed to `on_panic`.
    pub(crate) fn start(
        writes: TxnBatcher,
        key: String,
        retry_after: Duration,
        on_panic: impl FnOnce(String) + Send + 'static,
    ) -> Self {
        let (latest, mut updates) = watch::channel(None::<Publication>);
        let publishing = async move {
            while updates.changed().await.is_ok() {
                if updates
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|(info, _)| info.state == RoleState::Activating)
                {
                    // Written only if it lasts: a warm takeover serves within
                    // the linger, and its serving state is the one write.
                    let lasted = tokio::time::timeout(ACTIVATING_LINGER, updates.changed());
                    if let Ok(Err(_)) = lasted.await {
                        return;
                    }
                }
                let Some((info, leading)) = updates.borrow_and_update().clone() else {
                    continue;
                };
                loop {
                    // Boxed: the task waits far longer than it writes.
                    match Box::pin(publish(&writes, &key, &info, leading.as_ref())).await {
                        Ok(()) => break,
                        // The term ended under us; the next state published says so.
                        Err(recipe::CampaignError::CandidacyLost { .. }) => break,
                        Err(error) => {
                            tracing::warn!(key, state = %info.state, "publishing the session failed, retrying: {error}");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after) => {}
                        changed = updates.changed() => {
                            if changed.is_err() { return; }
                            // A newer state supersedes this one: publish that instead.
                            break;
                        }
                    }
                }
            }
        };
        Self {
            latest,
            _task: OwnedTask::spawn_reported(publishing, on_panic),
        }
    }

    /// Publishes `info`, and proclaims it as the leader value on `leading`.
    pub(crate) fn publish(&self, info: SessionInfo, leading: Option<Candidacy>) {
        self.latest.send_replace(Some((info, leading)));
    }
}

/// Writes the session at `key` and, while leading, the leader value on
/// `leading`, in one transaction.
async fn publish(
    writes: &TxnBatcher,
    key: &str,
    info: &SessionInfo,
    leading: Option<&Candidacy>,
) -> Result<(), recipe::CampaignError> {
    let value = info.encode();
    let session = TxnOp::put(
        key,
        value.clone(),
        Some(PutOptions::new().with_lease(info.lease_id)),
    );
    match leading {
        Some(candidacy) => {
            let txn = recipe::proclaim_beside(candidacy, value, Some(session));
            recipe::proclaimed_or_lost(candidacy, writes.txn(txn).await?.succeeded)
        }
        None => {
            writes.txn(Txn::new().and_then([session])).await?;
            Ok(())
        }
    }
}
