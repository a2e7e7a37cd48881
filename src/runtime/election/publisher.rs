//! The publisher of a role's session value (and of the leader value while leading): in order, the newest wins, retried until it lands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use tokio::sync::Notify;

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
///
/// Its task runs only while something is left to write: a node holds
/// thousands of standby roles whose session is written once and then
/// rarely, and an idle task would be a kilobyte each.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    writes: TxnBatcher,
    key: String,
    retry_after: Duration,
    on_panic: Arc<dyn Fn(String) + Send + Sync>,
}

/// What the publisher and its task share.
struct Shared {
    pending: Mutex<Pending>,
    /// Told of every publication, so a linger or a retry gives way to it.
    newer: Notify,
}

#[derive(Default)]
struct Pending {
    /// The newest publication not yet taken by the task.
    latest: Option<Publication>,
    /// The task writing, while it runs; it ends once nothing is left.
    task: Option<OwnedTask>,
}

impl Shared {
    /// The newest publication; when there is none the task ends, in the
    /// same lock that a publication checks for a running task.
    fn take_or_finish(&self) -> Option<Publication> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let latest = pending.latest.take();
        if latest.is_none() {
            // The handle of this very task: dropping it aborts nothing, as
            // the task returns right after.
            if let Some(this) = pending.task.take() {
                this.detach();
            }
        }
        latest
    }

    /// A publication newer than the one in hand, if one comes within `wait`.
    async fn newer_within(&self, wait: Duration) -> Option<Publication> {
        let waited = tokio::time::sleep(wait);
        tokio::pin!(waited);
        loop {
            tokio::select! {
                () = &mut waited => return None,
                // A permit left by a publication already taken wakes this
                // too: only a publication in the slot counts.
                () = self.newer.notified() => {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(newer) = pending.latest.take() {
                        return Some(newer);
                    }
                }
            }
        }
    }
}

impl Publisher {
    /// A publisher writing at `key` through the node's `writes`, retrying a
    /// failed write after `retry_after`. A panic in its task is handed to `on_panic`.
    pub(crate) fn start(
        writes: TxnBatcher,
        key: String,
        retry_after: Duration,
        on_panic: impl Fn(String) + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                newer: Notify::new(),
            }),
            writes,
            key,
            retry_after,
            on_panic: Arc::new(on_panic),
        }
    }

    /// Publishes `info`, and proclaims it as the leader value on `leading`.
    pub(crate) fn publish(&self, info: SessionInfo, leading: Option<Candidacy>) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.latest = Some((info, leading));
        if pending.task.is_some() {
            self.shared.newer.notify_one();
            return;
        }
        let writing = write_all(
            self.shared.clone(),
            self.writes.clone(),
            self.key.clone(),
            self.retry_after,
        );
        let on_panic = self.on_panic.clone();
        pending.task = Some(OwnedTask::spawn_reported(writing, move |reason| {
            on_panic(reason)
        }));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Whatever is still being written goes with the publisher. The
        // task holds the slot that holds its handle, so without this
        // neither would ever be freed.
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.task = None;
    }
}

/// Writes what `shared` holds, newest first, until nothing is left.
async fn write_all(shared: Arc<Shared>, writes: TxnBatcher, key: String, retry_after: Duration) {
    let mut next = shared.take_or_finish();
    while let Some((info, leading)) = next.take() {
        // Written only if it lasts: a warm takeover serves within the
        // linger, and its serving state is the one write.
        if info.state == RoleState::Activating
            && let Some(newer) = shared.newer_within(ACTIVATING_LINGER).await
        {
            next = Some(newer);
            continue;
        }
        let superseded = loop {
            // Boxed: the task waits far longer than it writes.
            match Box::pin(publish(&writes, &key, &info, leading.as_ref())).await {
                Ok(()) => break None,
                // The term ended under us; the next state published says so.
                Err(recipe::CampaignError::CandidacyLost { .. }) => break None,
                Err(error) => {
                    tracing::warn!(key, state = %info.state, "publishing the session failed, retrying: {error}");
                }
            }
            // A newer state supersedes this one: publish that instead.
            if let Some(newer) = shared.newer_within(retry_after).await {
                break Some(newer);
            }
        };
        next = superseded.or_else(|| shared.take_or_finish());
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
