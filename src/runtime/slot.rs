//! A shared, replaceable value: which actor currently runs a part of a role, which lease it holds.

use std::sync::Mutex;

/// A value one actor replaces and others read, such as the running
/// coordinator's address or the lease held. Plain shared memory rather than a
/// message, because readers need the current value at once (and ractor
/// delivers supervision events ahead of ordinary messages).
#[derive(Debug)]
pub(crate) struct Slot<T>(Mutex<Option<T>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Clone> Slot<T> {
    /// The current value.
    pub(crate) fn get(&self) -> Option<T> {
        self.lock().clone()
    }

    /// Replaces the value.
    pub(crate) fn set(&self, value: Option<T>) {
        *self.lock() = value;
    }

    /// Takes the value out, leaving the slot empty.
    pub(crate) fn take(&self) -> Option<T> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
