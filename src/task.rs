//! Background tasks tied to their owner's lifetime: dropping the handle aborts the task.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::task::JoinHandle;

/// A spawned task that is aborted when this handle is dropped, so an actor's
/// helpers (keepalive, campaign, watches) never outlive the actor's state.
#[derive(Debug)]
pub(crate) struct OwnedTask(Option<JoinHandle<()>>);

impl OwnedTask {
    /// Spawns `future` on the current runtime, owned by the returned handle.
    pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(future)))
    }

    /// Spawns `future`, owned like [`spawn`](Self::spawn); a panic in it is
    /// handed to `on_panic` with its message, so it reaches the task's owner
    /// instead of vanishing with the task.
    pub(crate) fn spawn_reported(
        future: impl Future<Output = ()> + Send + 'static,
        on_panic: impl FnOnce(String) + Send + 'static,
    ) -> Self {
        // A combinator, not an `async` block: a block would hold `future`
        // twice (captured, and moved into the awaited catch), and a node
        // keeps thousands of these tasks waiting.
        let reported = AssertUnwindSafe(future).catch_unwind().map(move |outcome| {
            if let Err(panic) = outcome {
                on_panic(panic_message(panic.as_ref()));
            }
        });
        Self::spawn(reported)
    }

    /// Whether the task is still running.
    pub(crate) fn is_running(&self) -> bool {
        self.0.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Lets the task run to its end although its owner goes away.
    pub(crate) fn detach(mut self) {
        self.0 = None;
    }
}

/// The text of a caught panic, for logs and supervision reasons.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".to_owned()
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Drops `value` on a blocking thread of the current runtime (inline
/// without one): a coordinator's serving state may hold millions of
/// entries, and freeing them where a term ends would delay its successor.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

/// A value dropped with [`drop_elsewhere`], unless taken out first: a
/// coordinator's serving state, which a crash drops while its actor
/// unwinds, before its supervisor hears of the crash.
#[derive(Debug)]
pub(crate) struct DroppedElsewhere<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DroppedElsewhere<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Some(value))
    }

    /// The value, to be dropped by its new owner.
    pub(crate) fn into_inner(mut self) -> T {
        self.0.take().expect("held until taken")
    }
}

impl<T: Send + 'static> std::ops::Deref for DroppedElsewhere<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("held until taken")
    }
}

impl<T: Send + 'static> std::ops::DerefMut for DroppedElsewhere<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("held until taken")
    }
}

impl<T: Send + 'static> Drop for DroppedElsewhere<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            drop_elsewhere(value);
        }
    }
}

/// Hands the memory freed since back to the OS, from this (blocking)
/// thread, unless a trim already runs. glibc keeps freed small chunks for
/// reuse: a node that freed a million-key copy (the raw entries a decode
/// consumed, a deposed term's serving state) would otherwise stay at its
/// high-water mark, about twice what it holds. The trim locks each malloc
/// arena while it walks it (about 90 ms over a million freed entries, a
/// stall for the threads allocating in that arena), so it is only worth it
/// after a free that large.
pub(crate) fn return_freed_memory() {
    static TRIMMING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TRIMMING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only releases pages the
    // allocator holds free; glibc makes it safe to call from any thread.
    unsafe {
        malloc_trim(0);
    }
    TRIMMING.store(false, std::sync::atomic::Ordering::Release);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    /// glibc's: releases free memory at the top of the heap and the free
    /// pages inside every arena; returns 1 when it released any.
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}
