//! Fault switches of one role, for tests that make its actors fail as a bug would (cargo feature `fault-injection`).
//!
//! Without the feature the switches do not exist and checking them costs
//! nothing; with it they are off until `RoleHandle::crash_*` or
//! `standin run --fault-injection` turns one on.

#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "fault-injection")]
use std::sync::Arc;

#[cfg(feature = "fault-injection")]
use tokio::sync::Semaphore;

#[cfg(feature = "fault-injection")]
use crate::runtime::slot::Slot;

/// Where a held reload says it has arrived, and what lets it go on.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone)]
struct ReloadHold {
    reached: Arc<Semaphore>,
    gate: Arc<Semaphore>,
}

/// One-shot fault switches of a role's actors.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "fault-injection")]
    reload_panic: AtomicBool,
    #[cfg(feature = "fault-injection")]
    reload_hold: Slot<ReloadHold>,
    #[cfg(feature = "fault-injection")]
    activation_hang: AtomicBool,
}

impl Faults {
    /// Makes the role's reload actor panic at its next page read or catch-up,
    /// whichever comes first.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn arm_reload_panic(&self) {
        self.reload_panic.store(true, Ordering::SeqCst);
    }

    /// Makes the next reload, after its first page, add a permit to
    /// `reached` and wait until `gate` gives it one (a test does something
    /// to etcd meanwhile).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn hold_reload(&self, reached: Arc<Semaphore>, gate: Arc<Semaphore>) {
        self.reload_hold.set(Some(ReloadHold { reached, gate }));
    }

    /// Makes the role's next activation hang before the user's `activate`
    /// runs, as a coordinator stuck on a dependency would: only the
    /// election's `coordinator.activateTimeout` ends it.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn arm_activation_hang(&self) {
        self.activation_hang.store(true, Ordering::SeqCst);
    }

    /// Turns off every switch armed and not fired yet, so the role's next
    /// reload and activation run as they would without faults. Returns
    /// whether any was armed.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn disarm(&self) -> bool {
        let reload = self.reload_panic.swap(false, Ordering::SeqCst);
        let activation = self.activation_hang.swap(false, Ordering::SeqCst);
        let held = self.reload_hold.take().is_some();
        reload || activation || held
    }

    /// Called by the coordinator actor's activation task before the user's
    /// `activate`: never returns once if armed.
    pub(crate) async fn activation_started(&self) {
        #[cfg(feature = "fault-injection")]
        if self.activation_hang.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Called by the reload actor when a win asks it to catch up: panics
    /// once if armed.
    pub(crate) fn catch_up_started(&self) {
        #[cfg(feature = "fault-injection")]
        if self.reload_panic.swap(false, Ordering::SeqCst) {
            panic!("fault injected into the reload actor, mid-reload (catching up)");
        }
    }

    /// Called by the reload actor between pages: panics once if armed, and
    /// waits once if held.
    pub(crate) async fn reload_page_read(&self) {
        #[cfg(feature = "fault-injection")]
        {
            if self.reload_panic.swap(false, Ordering::SeqCst) {
                panic!("fault injected into the reload actor, mid-reload");
            }
            if let Some(hold) = self.reload_hold.take() {
                hold.reached.add_permits(1);
                if let Ok(permit) = hold.gate.acquire().await {
                    permit.forget();
                }
            }
        }
    }
}

/// A failure a test can inject into a role's actors.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The coordinator actor panics.
    CrashCoordinator,
    /// The election actor panics.
    CrashElection,
    /// The reload actor panics at its next page read or catch-up.
    CrashReload,
    /// The next activation hangs until the activation timeout ends it.
    HangActivation,
    /// The process's lease clock stands still for [`Fault::CLOCK_STALL`],
    /// then runs on that far behind, as every clock of a VM its hypervisor
    /// paused does: the term trusts its lease that much longer than etcd
    /// keeps it (the whole process, whichever role it is injected into).
    StallClock,
    /// Not a fault: turns off the switches above that are armed and have
    /// not fired yet (a reload panic or an activation hang waiting for a
    /// win that never came), so a test's next fault meets a clean role.
    Disarm,
}

#[cfg(feature = "fault-injection")]
impl Fault {
    /// Every fault, by its name on the command line and in gRPC.
    pub const ALL: [(Fault, &'static str); 6] = [
        (Fault::CrashCoordinator, "crash-coordinator"),
        (Fault::CrashElection, "crash-election"),
        (Fault::CrashReload, "crash-reload"),
        (Fault::HangActivation, "hang-activation"),
        (Fault::StallClock, "stall-clock"),
        (Fault::Disarm, "disarm"),
    ];

    /// How long [`Fault::StallClock`] stops the lease clock.
    pub const CLOCK_STALL: std::time::Duration = std::time::Duration::from_secs(10);

    /// The fault called `name`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(fault, _)| *fault)
    }
}
