//! Background tasks tied to their owner's lifetime: dropping the handle aborts the task.

use tokio::task::JoinHandle;

/// A spawned task that is aborted when this handle is dropped, so an actor's
/// helpers (keepalive, campaign, watches) never outlive the actor's state.
#[derive(Debug)]
pub(crate) struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    /// Spawns `future` on the current runtime, owned by the returned handle.
    pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
