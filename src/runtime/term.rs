//! The serving term: the one object every answer path asks whether this node may still answer for a role.
//!
//! The election opens a term when it wins and closes it synchronously the
//! instant it decides to step down, for any reason, before the coordinator's
//! deactivation hook runs and before the leader key is deleted. The term also
//! carries the lease's time bound, so a process that was frozen past its
//! lease refuses at the instant it runs again, before any timer fires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;

use crate::fence::{DeposeSwitch, Epoch, FencedStore};
use crate::runtime::clock::LeaseInstant;
use crate::runtime::session::SessionView;

/// One won term of one role on this node. Clones share the same term.
#[derive(Debug, Clone)]
pub(crate) struct Term(Arc<TermInner>);

#[derive(Debug)]
struct TermInner {
    epoch: Epoch,
    /// Thrown once, on close; the term's fenced stores read it too.
    closed: DeposeSwitch,
    /// The session lease the term's leader key hangs on.
    lease: i64,
    /// Trusts the lease until its last successful keepalive's send time
    /// plus the renew deadline: shorter than the TTL etcd counts from when
    /// it received that keepalive. Read at every check, so a renewal costs
    /// no write per term.
    session: SessionView,
    /// Set by the coordinator once the user's activation has finished.
    serving: AtomicBool,
    /// Whether the term may start serving as far as its predecessor's end
    /// goes: false from [`Term::open_won`] until [`Term::settle`]
    /// (a win from a lease a death witness revoked waits
    /// `session.witnessGrace`), or until the term closes.
    settled: watch::Sender<bool>,
    /// How answers are confirmed with etcd before they leave, if they are.
    confirm: Option<AnswerCheck>,
}

/// How a term confirms its answers with etcd (`coordinator.confirmAnswers`):
/// one linearizable read of its leader key.
#[derive(Clone)]
pub(crate) struct AnswerCheck {
    /// The node's etcd client.
    pub client: Client,
    /// Bound on the read: past it the answers are refused.
    pub timeout: Duration,
}

impl std::fmt::Debug for AnswerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCheck")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Term {
    /// A term for `epoch`, won with a key on `lease`, trusted for as long
    /// as `session` trusts that lease, settled and confirming nothing: the
    /// tests' term.
    #[cfg(test)]
    pub(crate) fn open(epoch: Epoch, lease: i64, session: SessionView) -> Self {
        let term = Self::open_won(epoch, lease, session, None);
        term.settle();
        term
    }

    /// A term for `epoch`, just won with a key on `lease`, trusted for as
    /// long as `session` trusts that lease. The coordinator starts serving
    /// it only once [`settle`](Self::settle) is called (its activation runs
    /// meanwhile), and its answers are confirmed with `confirm`, if given,
    /// before they leave.
    pub(crate) fn open_won(
        epoch: Epoch,
        lease: i64,
        session: SessionView,
        confirm: Option<AnswerCheck>,
    ) -> Self {
        Self(Arc::new(TermInner {
            epoch,
            closed: DeposeSwitch::default(),
            lease,
            session,
            serving: AtomicBool::new(false),
            settled: watch::Sender::new(false),
            confirm,
        }))
    }

    /// Whether answers computed for this term may leave: true at once
    /// without `coordinator.confirmAnswers`; with it, once a linearizable
    /// read of etcd, begun now, finds the leader key still this term's.
    /// Called after the answers are computed, so the read confirms the
    /// key was held after the state they were computed from.
    pub(crate) async fn confirm(&self) -> bool {
        let Some(check) = &self.0.confirm else {
            return true;
        };
        let mut kv = check.client.kv_client();
        let key = self.0.epoch.leader_key.as_str();
        let what = format!("confirming answers with a read of {key} (they are refused)");
        let read = crate::etcd::best_effort(&what, check.timeout, kv.get(key, None)).await;
        read.is_some_and(|read| {
            read.kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == self.0.epoch.revision)
        })
    }

    /// Lets the coordinator start serving: whatever the predecessor's end
    /// asked the term to wait for is over.
    pub(crate) fn settle(&self) {
        self.0.settled.send_replace(true);
    }

    /// Returns once the term is settled or closed.
    pub(crate) async fn until_settled(&self) {
        let mut settled = self.0.settled.subscribe();
        let _ = settled.wait_for(|settled| *settled).await;
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
        // Nothing waits to serve a closed term.
        self.0.settled.send_replace(true);
    }

    /// Whether the term has been closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.is_deposed()
    }

    /// The instant the lease stops being trusted, if it is trusted.
    pub(crate) fn trusted_until(&self) -> Option<LeaseInstant> {
        self.0.session.trusted_until(self.0.lease)
    }

    /// Whether this term may answer now: not closed, and the lease trusted
    /// at this very instant.
    pub(crate) fn is_open(&self) -> bool {
        !self.is_closed() && self.0.session.trusts(self.0.lease)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::session::{HeldLease, SessionView};

    fn epoch() -> Epoch {
        Epoch {
            role: "r".into(),
            leader_key: "k".into(),
            revision: 9,
        }
    }

    const DEADLINE: Duration = Duration::from_secs(60);

    #[test]
    fn a_term_is_open_only_while_unclosed_and_its_lease_trusted() {
        let (feed, session) = SessionView::channel(DEADLINE);
        let held = feed.held;
        let renewed = |at: LeaseInstant| {
            Some(HeldLease {
                id: 7,
                renewed_at: at,
            })
        };
        held.send_replace(renewed(LeaseInstant::now()));
        let term = Term::open(epoch(), 7, session.clone());
        assert!(term.is_open());
        assert!(
            !term.serves(),
            "it serves only once the coordinator says so"
        );
        term.start_serving();
        assert!(term.serves());

        held.send_replace(renewed(LeaseInstant::now() - DEADLINE));
        assert!(
            !term.is_open(),
            "a lease renewed a whole deadline ago is not trusted any more"
        );
        assert!(!term.serves());
        held.send_replace(renewed(LeaseInstant::now()));
        assert!(term.serves());
        held.send_replace(Some(HeldLease {
            id: 8,
            renewed_at: LeaseInstant::now(),
        }));
        assert!(
            !term.is_open(),
            "a session that moved to another lease ends the terms on the old one"
        );
        held.send_replace(renewed(LeaseInstant::now()));

        let clone = term.clone();
        clone.close();
        assert!(term.is_closed() && !term.is_open() && !term.serves());
        assert!(!term.is_open(), "a closed term never opens again");
    }

    #[tokio::test]
    async fn an_unsettled_term_is_waited_for_until_settled_or_closed() {
        let (_held, session) = SessionView::channel(DEADLINE);
        let settled = Term::open(epoch(), 7, session.clone());
        tokio::time::timeout(Duration::from_secs(1), settled.until_settled())
            .await
            .expect("a term opened plainly is settled");
        for end in [Term::settle, Term::close] {
            let term = Term::open_won(epoch(), 7, session.clone(), None);
            let waiting = tokio::spawn({
                let term = term.clone();
                async move { term.until_settled().await }
            });
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "it waits while unsettled");
            end(&term);
            tokio::time::timeout(Duration::from_secs(1), waiting)
                .await
                .expect("settling or closing ends the wait")
                .unwrap();
        }
    }

    #[test]
    fn only_clones_are_the_same_term() {
        let (_held, session) = SessionView::channel(DEADLINE);
        let term = Term::open(epoch(), 7, session.clone());
        assert!(term.is(&term.clone()));
        assert!(!term.is(&Term::open(epoch(), 7, session)));
        assert!(
            !term.is_open(),
            "a term on a lease the session does not hold is not open"
        );
    }
}
