//! The node's etcd session: one lease that every role's keys hang on, the one owner of its life (grant, keepalive, revoke), and the view of it the roles' terms read.
//!
//! Like etcd's `concurrency.Session`, one lease serves every election of the
//! node: a node costs etcd one lease and one keepalive stream however many
//! roles it runs. A role never revokes it: a role ends its own term by
//! deleting its own key. The lease ends when the node ends, or when it is
//! lost (etcd says so, or no keepalive was answered within the renew
//! deadline), which ends every term on it at once; then a new one is granted.

pub(crate) mod keepalive;

use std::time::{Duration, Instant};

use etcd_client::Client;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::backoff::{self, Backoff};
use crate::config::Config;
use crate::etcd;
use crate::runtime::clock::LeaseInstant;
use crate::task::OwnedTask;
use crate::telemetry;
use keepalive::{Beat, Renewal};

/// The lease the session holds, and when its last answered keepalive (or
/// its grant) was sent: etcd restarted its TTL no earlier than that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldLease {
    /// The lease.
    pub id: i64,
    /// When the last answered keepalive was sent.
    pub renewed_at: LeaseInstant,
}

/// What the roles see of the session: the lease held now, and until when
/// it is trusted. Cheap to clone; reading it takes no message.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    held: watch::Receiver<Option<HeldLease>>,
    restored: watch::Receiver<Option<LeaseInstant>>,
    renew_deadline: Duration,
}

/// The senders that move a [`SessionView`].
#[derive(Debug)]
pub(crate) struct SessionFeed {
    /// The lease held, and its last renewal.
    pub held: watch::Sender<Option<HeldLease>>,
    /// When etcd last answered the keepalive again after it had failed.
    pub restored: watch::Sender<Option<LeaseInstant>>,
}

impl SessionView {
    /// A view, and the senders that move it: the session's, or a test's.
    pub(crate) fn channel(renew_deadline: Duration) -> (SessionFeed, Self) {
        let (held, held_view) = watch::channel(None);
        let (restored, restored_view) = watch::channel(None);
        let view = Self {
            held: held_view,
            restored: restored_view,
            renew_deadline,
        };
        (SessionFeed { held, restored }, view)
    }

    /// A view of a session that renewed `lease` just now, for tests.
    #[cfg(test)]
    pub(crate) fn trusting(lease: i64) -> Self {
        let (feed, view) = Self::channel(Duration::from_secs(60));
        feed.held.send_replace(Some(HeldLease {
            id: lease,
            renewed_at: LeaseInstant::now(),
        }));
        view
    }

    /// The lease held now, if any.
    pub(crate) fn current(&self) -> Option<HeldLease> {
        *self.held.borrow()
    }

    /// Until when `lease` is trusted: its last renewal's send time plus the
    /// renew deadline; `None` once the session holds another lease or none.
    pub(crate) fn trusted_until(&self, lease: i64) -> Option<LeaseInstant> {
        self.current()
            .filter(|held| held.id == lease)
            .map(|held| held.renewed_at + self.renew_deadline)
    }

    /// Whether `lease` is the session's lease and trusted now.
    pub(crate) fn trusts(&self, lease: i64) -> bool {
        self.trusted_until(lease)
            .is_some_and(|until| LeaseInstant::now() < until)
    }

    /// Whether etcd answered the keepalive again, after it had failed, in a
    /// keepalive sent at or after `since`: a failure of a call begun before
    /// then may be the broken connection's, not etcd's state now.
    pub(crate) fn restored_since(&self, since: LeaseInstant) -> bool {
        self.restored.borrow().is_some_and(|at| at >= since)
    }

    /// Returns the next time etcd answers the keepalive again after it had
    /// failed (never, once the session is gone): a call waiting out its
    /// backoff after etcd failed it may try again then.
    pub(crate) fn next_restore(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut restored = self.restored.clone();
        restored.mark_unchanged();
        async move {
            if restored.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// A receiver told each time the session's lease changes (renewals
    /// alone do not wake it).
    pub(crate) fn changes(&self) -> watch::Receiver<Option<HeldLease>> {
        let mut changes = self.held.clone();
        changes.mark_unchanged();
        changes
    }
}

/// The session actor: grants the node's lease, keeps it alive, replaces it
/// when lost, and revokes it when the node ends.
pub(crate) struct Session {
    client: Client,
    config: Config,
    held: watch::Sender<Option<HeldLease>>,
    restored: watch::Sender<Option<LeaseInstant>>,
}

impl Session {
    /// A session for a node with `config`, and the view the roles read.
    pub(crate) fn new(client: Client, config: Config) -> (Self, SessionView) {
        let (feed, view) = SessionView::channel(config.session.renew_deadline());
        let session = Self {
            client,
            config,
            held: feed.held,
            restored: feed.restored,
        };
        (session, view)
    }
}

/// Messages to the session actor.
pub(crate) enum SessionMsg {
    /// Grant a lease after `after`.
    Grant {
        /// Delay before the grant.
        after: Duration,
    },
    /// A lease was granted; `sent_at` is when the grant was sent.
    Granted {
        /// The lease.
        lease: i64,
        /// When the grant left.
        sent_at: LeaseInstant,
    },
    /// The grant failed.
    GrantFailed,
    /// etcd says the lease is gone.
    Lost {
        /// The lease.
        lease: i64,
    },
    /// Check the renew deadline.
    Tick,
    /// Revoke the lease and stop: every role of the node has stopped.
    Close(RpcReplyPort<()>),
}

/// What the session actor's state changes between messages.
pub(crate) struct SessionState {
    /// The view's sender, to empty it when the state goes, however the actor ends.
    held: watch::Sender<Option<HeldLease>>,
    ticks: ractor::concurrency::JoinHandle<()>,
    keepalive: Option<OwnedTask>,
    grants: Backoff,
    granting: bool,
    /// Revokes of abandoned leases still under way.
    abandoned: Vec<OwnedTask>,
}

impl Session {
    fn lease(&self) -> Option<i64> {
        self.held.borrow().map(|held| held.id)
    }

    fn grant(&self, myself: &ActorRef<SessionMsg>, state: &mut SessionState, after: Duration) {
        if state.granting {
            return;
        }
        state.granting = true;
        let client = self.client.clone();
        let ttl = self.config.session.ttl_secs();
        let bound = self.config.etcd.request_timeout * 2;
        let revoke_bound = self.config.session.ttl;
        let request_timeout = self.config.etcd.request_timeout;
        let retry = self.config.etcd.retry.clone();
        let reply = myself.clone();
        let grant = async move {
            tokio::time::sleep(after).await;
            let sent_at = LeaseInstant::now();
            match keepalive::grant(&client, ttl, bound).await {
                Ok(lease) => {
                    if reply
                        .send_message(SessionMsg::Granted { lease, sent_at })
                        .is_err()
                    {
                        // The session ended meanwhile: nobody keeps this
                        // lease alive, so do not leave it to the TTL.
                        let until = Instant::now() + revoke_bound;
                        etcd::revoke(&client, lease, request_timeout, &retry, until).await;
                    }
                }
                Err(reason) => {
                    tracing::warn!(
                        "granting the node's lease failed, retrying with backoff: {reason}"
                    );
                    let _ = reply.send_message(SessionMsg::GrantFailed);
                }
            }
        };
        // Detached: a grant must be able to finish (and revoke what it got)
        // even if the session stops in the meantime.
        OwnedTask::spawn(grant).detach();
    }

    fn keep_alive(&self, myself: &ActorRef<SessionMsg>, lease: i64) -> OwnedTask {
        let session = &self.config.session;
        let beat = Beat {
            interval: session.keepalive_interval(),
            timeout: session.keepalive_timeout(),
        };
        let (held, restored) = (self.held.clone(), self.restored.clone());
        let reply = myself.clone();
        let report = move |renewal| match renewal {
            // Renewals change no lease: the view reads them, nobody is woken.
            Renewal::Renewed { sent_at } | Renewal::Restored { sent_at } => {
                held.send_if_modified(|current| {
                    if let Some(current) = current.as_mut().filter(|c| c.id == lease) {
                        current.renewed_at = current.renewed_at.max(sent_at);
                    }
                    false
                });
                // Whoever waits out a backoff after etcd failed it may try
                // again now, not a whole backoff later.
                if matches!(renewal, Renewal::Restored { .. }) {
                    restored.send_replace(Some(sent_at));
                }
                true
            }
            Renewal::Lost => reply.send_message(SessionMsg::Lost { lease }).is_ok(),
        };
        let task = keepalive::keep_alive(self.client.clone(), lease, beat, report);
        let failed = myself.clone();
        OwnedTask::spawn_reported(task, move |reason| {
            tracing::error!("keeping the node's lease alive {reason}");
            let _ = failed.send_message(SessionMsg::Lost { lease });
        })
    }

    /// Gives up the lease held: every term on it ends now, its revoke
    /// runs in the background (past one TTL etcd expires it anyway), and a
    /// new lease is granted.
    fn abandon(&self, myself: &ActorRef<SessionMsg>, state: &mut SessionState, why: &str) {
        let Some(lease) = self.lease() else { return };
        tracing::warn!(
            lease,
            "the node's lease {lease:#x} is lost ({why}): every role on it stands down; granting a new one"
        );
        self.held.send_replace(None);
        state.keepalive = None;
        let client = self.client.clone();
        let request_timeout = self.config.etcd.request_timeout;
        let retry = self.config.etcd.retry.clone();
        let until = Instant::now() + self.config.session.ttl;
        state.abandoned.retain(OwnedTask::is_running);
        state.abandoned.push(OwnedTask::spawn(async move {
            etcd::revoke(&client, lease, request_timeout, &retry, until).await;
        }));
        self.grant(myself, state, Duration::ZERO);
    }
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let deadline = self.config.session.renew_deadline();
        metrics::gauge!(telemetry::RENEW_DEADLINE_SECONDS).set(deadline.as_secs_f64());
        let tick = self.config.session.deadline_check_interval();
        let ticks = myself.send_interval(tick, || SessionMsg::Tick);
        let mut state = SessionState {
            held: self.held.clone(),
            ticks,
            keepalive: None,
            grants: Backoff::new(self.config.etcd.retry.clone()),
            granting: false,
            abandoned: Vec::new(),
        };
        self.grant(&myself, &mut state, Duration::ZERO);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Grant { after } => self.grant(&myself, state, after),
            SessionMsg::Granted { lease, sent_at } => {
                state.granting = false;
                state.grants.reset();
                tracing::info!(
                    lease,
                    "the node's lease {lease:#x} is granted; its roles campaign on it"
                );
                metrics::counter!(telemetry::SESSION_LEASES).increment(1);
                state.keepalive = Some(self.keep_alive(&myself, lease));
                self.held.send_replace(Some(HeldLease {
                    id: lease,
                    renewed_at: sent_at,
                }));
            }
            SessionMsg::GrantFailed => {
                state.granting = false;
                // The schedule is exact; the jitter keeps nodes that lost
                // etcd together from retrying in step.
                let after = backoff::jittered(state.grants.next_delay());
                myself.send_after(after, move || SessionMsg::Grant {
                    after: Duration::ZERO,
                });
            }
            SessionMsg::Lost { lease } => {
                if self.lease() == Some(lease) {
                    self.abandon(&myself, state, "etcd no longer keeps it alive");
                }
            }
            SessionMsg::Tick => {
                // Copied out: the view's lock must not be held while abandoning moves it.
                let held = *self.held.borrow();
                if let Some(held) = held
                    && LeaseInstant::now() >= held.renewed_at + self.config.session.renew_deadline()
                {
                    let why = format!(
                        "no keepalive answered within session.renewDeadline ({:?})",
                        self.config.session.renew_deadline()
                    );
                    self.abandon(&myself, state, &why);
                }
            }
            SessionMsg::Close(reply) => {
                state.keepalive = None;
                if let Some(lease) = self.held.send_replace(None).map(|held| held.id) {
                    let config = &self.config.etcd;
                    // The handover is done; one more bound, then the TTL.
                    let until = Instant::now() + config.request_timeout;
                    let revoked = etcd::revoke(
                        &self.client,
                        lease,
                        config.request_timeout,
                        &config.retry,
                        until,
                    )
                    .await;
                    if revoked {
                        tracing::info!(lease, "the node's lease {lease:#x} is revoked");
                    }
                }
                let _ = reply.send(());
                myself.stop(Some("closed".into()));
            }
        }
        Ok(())
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        self.ticks.abort();
        // However the session ends, no term may trust its lease any more.
        self.held.send_replace(None);
    }
}
