//! The serving term: the one object every answer path asks whether this node may still answer for a role.
//!
//! The election opens a term when it wins and closes it synchronously the
//! instant it decides to step down, for any reason, before the coordinator's
//! deactivation hook runs and before the leader key is deleted. The term also
//! carries the lease's time bound, so a process that was frozen past its
//! lease refuses at the instant it runs again, before any timer fires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use etcd_client::Client;

use crate::fence::{DeposeSwitch, Epoch, FencedStore};

/// One won term of one role on this node. Clones share the same term.
#[derive(Debug, Clone)]
pub(crate) struct Term(Arc<TermInner>);

#[derive(Debug)]
struct TermInner {
    epoch: Epoch,
    /// Thrown once, on close; the term's fenced stores read it too.
    closed: DeposeSwitch,
    /// The last successful keepalive's send time plus the renew deadline:
    /// shorter than the TTL etcd counts from when it received that keepalive.
    trusted_until: Mutex<Option<Instant>>,
    /// Set by the coordinator once the user's activation has finished.
    serving: AtomicBool,
}

impl Term {
    /// A term for `epoch` whose lease is trusted until `trusted_until`.
    pub(crate) fn open(epoch: Epoch, trusted_until: Option<Instant>) -> Self {
        Self(Arc::new(TermInner {
            epoch,
            closed: DeposeSwitch::default(),
            trusted_until: Mutex::new(trusted_until),
            serving: AtomicBool::new(false),
        }))
    }

    /// The epoch this term was won at.
    pub(crate) fn epoch(&self) -> &Epoch {
        &self.0.epoch
    }

    /// The epoch's revision, the fencing token.
    pub(crate) fn revision(&self) -> i64 {
        self.0.epoch.revision
    }

    /// Ends the term: from now on nothing answers for it and its stores
    /// refuse every write. Idempotent.
    pub(crate) fn close(&self) {
        self.0.closed.depose();
    }

    /// Whether the term has been closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.is_deposed()
    }

    /// Moves the lease's time bound (`None`: not trusted at all).
    pub(crate) fn trust_until(&self, until: Option<Instant>) {
        *self.lock_trust() = until;
    }

    /// The instant the lease stops being trusted, if it is trusted.
    pub(crate) fn trusted_until(&self) -> Option<Instant> {
        *self.lock_trust()
    }

    /// Whether this term may answer now: not closed, and the lease trusted
    /// at this very instant.
    pub(crate) fn is_open(&self) -> bool {
        !self.is_closed()
            && self
                .trusted_until()
                .is_some_and(|until| Instant::now() < until)
    }

    /// Marks the coordinator as serving this term.
    pub(crate) fn start_serving(&self) {
        self.0.serving.store(true, Ordering::SeqCst);
    }

    /// Whether the coordinator serves this term and the term is open now.
    pub(crate) fn serves(&self) -> bool {
        self.0.serving.load(Ordering::SeqCst) && self.is_open()
    }

    /// Whether `other` is this very term (not merely one at the same epoch).
    pub(crate) fn is(&self, other: &Term) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A store that writes for this term under `prefix`, refusing locally
    /// once the term is closed (and in etcd's transaction once the leader
    /// key is gone).
    pub(crate) fn store(&self, client: Client, prefix: String) -> FencedStore {
        FencedStore::new(client, self.0.epoch.clone(), prefix, &self.0.closed)
    }

    fn lock_trust(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A panic while holding this lock cannot leave an Instant half-written.
        self.0
            .trusted_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn epoch() -> Epoch {
        Epoch {
            role: "r".into(),
            leader_key: "k".into(),
            revision: 9,
        }
    }

    #[test]
    fn a_term_is_open_only_while_unclosed_and_its_lease_trusted() {
        let later = Instant::now() + Duration::from_secs(60);
        let term = Term::open(epoch(), Some(later));
        assert!(term.is_open());
        assert!(
            !term.serves(),
            "it serves only once the coordinator says so"
        );
        term.start_serving();
        assert!(term.serves());

        term.trust_until(Some(Instant::now()));
        assert!(
            !term.is_open(),
            "a lease trusted until now is not trusted any more"
        );
        assert!(!term.serves());
        term.trust_until(Some(later));
        assert!(term.serves());

        let clone = term.clone();
        clone.close();
        assert!(term.is_closed() && !term.is_open() && !term.serves());
        term.trust_until(Some(later));
        assert!(!term.is_open(), "a closed term never opens again");
    }

    #[test]
    fn only_clones_are_the_same_term() {
        let term = Term::open(epoch(), None);
        assert!(term.is(&term.clone()));
        assert!(!term.is(&Term::open(epoch(), None)));
        assert!(
            !term.is_open(),
            "a term without a trusted lease is not open"
        );
    }
}
