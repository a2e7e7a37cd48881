//! The election's decisions as a pure state machine: events in, commands out, no I/O.
//!
//! The election actor turns etcd replies, timers and supervision events into
//! [`Event`]s and carries out the [`Command`]s; everything that decides *what*
//! happens lives here, where unit tests drive it without etcd.

use std::time::Duration;

use crate::backoff;
use crate::config::BackoffConfig;
use crate::runtime::clock::LeaseInstant;
use crate::status::{RoleState, StepDownReason};

/// What happens once leadership or candidacy has been released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Afterwards {
    /// Keep the lease and campaign again (after a coordinator restart or a delay).
    Recampaign,
    /// The lease is lost or untrusted: leave it, and campaign again once
    /// the node's session holds a trusted lease (a new one, or this one
    /// renewed after all: the old candidate key is deleted either way).
    NewLease,
    /// Stop: the node is shutting down (it revokes the session's lease
    /// once every role has stopped).
    Stop,
}

/// Where the election stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No trusted lease: waiting for the node's session to hold one.
    Unleased,
    /// Lease held, but the coordinator is down and waits for its restart; not a candidate.
    Recovering,
    /// Lease held, candidate key in the election, waiting for the ones ahead to go.
    Campaigning,
    /// Won at `revision`; the reload actor is loading the metadata.
    Reloading {
        /// The leader key's create revision.
        revision: i64,
    },
    /// Metadata loaded; the coordinator is activating.
    Activating {
        /// The leader key's create revision.
        revision: i64,
    },
    /// The coordinator serves.
    Serving {
        /// The leader key's create revision.
        revision: i64,
    },
    /// The coordinator is being deactivated before leadership is released.
    Deactivating {
        /// What follows the release.
        then: Afterwards,
    },
    /// The candidate key or the lease is being released.
    Releasing {
        /// What follows the release.
        then: Afterwards,
    },
    /// Shut down; nothing more happens.
    Stopped,
}

impl Phase {
    /// The state this phase publishes in the session.
    pub(crate) fn published_state(self) -> RoleState {
        match self {
            Phase::Reloading { .. } | Phase::Activating { .. } => RoleState::Activating,
            Phase::Serving { .. } => RoleState::Serving,
            Phase::Deactivating {
                then: Afterwards::Stop,
            }
            | Phase::Releasing {
                then: Afterwards::Stop,
            }
            | Phase::Stopped => RoleState::Stopping,
            _ => RoleState::Standby,
        }
    }

    /// Whether this node holds the leader key (won, not yet released).
    pub(crate) fn leads(self) -> bool {
        matches!(
            self,
            Phase::Reloading { .. } | Phase::Activating { .. } | Phase::Serving { .. }
        )
    }

    /// Whether the role checks the clock (and the session's news) on its
    /// own ticks: from the win until its term is released, and while
    /// unleased (a lease it gave up at its own deadline that a late
    /// keepalive saved again is taken back without a change of lease to
    /// announce it). A campaigning or recovering standby leaves the deadline
    /// to the session, whose own check ends a lapsed lease for every role,
    /// and checks the clock before it takes a win.
    pub(crate) fn keeps_own_time(self) -> bool {
        !matches!(
            self,
            Phase::Recovering | Phase::Campaigning | Phase::Stopped
        )
    }
}

/// Something that happened, as the election actor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The actor started (its coordinator already runs in standby).
    Started,
    /// The node's session holds a trusted lease, last renewed by a
    /// keepalive sent at `sent_at`.
    LeaseGranted {
        /// The session's lease.
        lease: i64,
        /// When its last answered keepalive (or its grant) left, the start
        /// of the renew deadline.
        sent_at: LeaseInstant,
    },
    /// A keepalive sent at `sent_at` succeeded.
    KeepaliveAcked {
        /// The lease kept alive.
        lease: i64,
        /// When the keepalive request left.
        sent_at: LeaseInstant,
    },
    /// The node's session no longer holds the lease.
    LeaseLost {
        /// The lease that is gone.
        lease: i64,
        /// Now: a lease whose renew deadline has passed was given up for
        /// that, not lost to etcd.
        now: LeaseInstant,
    },
    /// The clock, to check the renew deadline.
    Tick {
        /// Now.
        now: LeaseInstant,
    },
    /// Every candidate ahead is gone: this node leads at `revision`.
    Elected {
        /// The lease the candidacy was on.
        lease: i64,
        /// The leader key's create revision.
        revision: i64,
    },
    /// Our leader key was deleted while we led (an operator, or a lease
    /// expiry etcd reported before the keepalive did).
    LeaderKeyDeleted {
        /// The leader key's create revision.
        revision: i64,
    },
    /// The candidate key is in the election: etcd answers, so retries start
    /// again from the shortest delay.
    CampaignJoined {
        /// The lease the candidacy is on.
        lease: i64,
    },
    /// The campaign failed (etcd error or our key vanished).
    CampaignFailed {
        /// The lease the candidacy was on.
        lease: i64,
        /// etcd answered again, after failing, while the attempt ran: the
        /// failure was likely the old connection's, so the retry backoff
        /// starts over.
        etcd_restored: bool,
    },
    /// The metadata is loaded at or above `revision`.
    Reloaded {
        /// The epoch revision the reload was for.
        revision: i64,
    },
    /// The reload actor failed or timed out.
    ReloadFailed,
    /// The coordinator finished activating for `revision` and serves.
    CoordinatorServing {
        /// The epoch revision it activated for.
        revision: i64,
    },
    /// The coordinator's activation for `revision` did not finish in time.
    ActivationTimedOut {
        /// The epoch revision it was activating for.
        revision: i64,
    },
    /// The coordinator actor failed or stopped unexpectedly.
    CoordinatorCrashed,
    /// A restarted coordinator runs again, in standby.
    CoordinatorStarted,
    /// The coordinator is back in standby after a `Deactivate`.
    Deactivated,
    /// The candidate key or the lease has been released.
    Released,
    /// The node shuts down: hand over and stop.
    Shutdown,
    /// Hand the role over (if leading) and campaign again behind the others.
    Resign,
    /// The transfer's target is next in line behind our leader key at
    /// `revision`: hand the role over to it.
    TransferReady {
        /// The leader key's create revision.
        revision: i64,
    },
    /// A leader transfer names a standby behind this candidate: make way by
    /// joining the election again, behind it.
    Yield,
}

/// Something the election actor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Register this role's session on `lease`, and publish its state there from now on.
    Register {
        /// The session's lease.
        lease: i64,
    },
    /// Join the election on `lease` after `after`, and wait to lead.
    Campaign {
        /// The lease to campaign on.
        lease: i64,
        /// Delay before joining.
        after: Duration,
    },
    /// Stop waiting in the election (the key stays until resigned or revoked).
    CancelCampaign,
    /// Publish this state in the session (and the leader key while leading).
    Publish(RoleState),
    /// Load the metadata at or above `revision`.
    StartReload {
        /// The epoch revision.
        revision: i64,
    },
    /// Abandon a running reload.
    StopReload,
    /// Hand the loaded metadata and a fenced store for `revision` to the coordinator.
    Activate {
        /// The epoch revision.
        revision: i64,
    },
    /// End the current epoch's fenced store at once, before anything else.
    Depose(StepDownReason),
    /// Put the coordinator back in standby; answered by [`Event::Deactivated`].
    Deactivate,
    /// Delete our candidate key on `lease` (retried while the lease
    /// lives: the lease is shared, so it is never revoked for one role);
    /// answered by [`Event::Released`].
    Resign {
        /// The lease the candidate key is on.
        lease: i64,
    },
    /// Start a new coordinator in standby after `after`; answered by [`Event::CoordinatorStarted`].
    RestartCoordinator {
        /// Delay before the restart.
        after: Duration,
    },
    /// Stop the election actor.
    Stop,
}

/// The timings the machine decides with.
#[derive(Debug, Clone)]
pub(crate) struct Timings {
    /// No successful keepalive sent within this long: step down.
    pub renew_deadline: Duration,
    /// Delays for retrying etcd calls.
    pub backoff: BackoffConfig,
    /// Delays for restarting a crashed coordinator.
    pub restart_backoff: BackoffConfig,
}

/// The election state machine of one role on one node.
#[derive(Debug, Clone)]
pub(crate) struct ElectionMachine {
    timings: Timings,
    phase: Phase,
    lease: Option<i64>,
    last_renewal_sent: Option<LeaseInstant>,
    coordinator_up: bool,
    coordinator_crashes: u32,
    etcd_failures: u32,
    campaign_delay: Duration,
}

impl ElectionMachine {
    /// A machine with no lease yet and the coordinator running in standby.
    pub(crate) fn new(timings: Timings) -> Self {
        Self {
            timings,
            phase: Phase::Unleased,
            lease: None,
            last_renewal_sent: None,
            coordinator_up: true,
            coordinator_crashes: 0,
            etcd_failures: 0,
            campaign_delay: Duration::ZERO,
        }
    }

    /// Where the election stands.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The lease held, if any.
    pub(crate) fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// When the last renewal the machine heard of was sent.
    pub(crate) fn last_renewal_sent(&self) -> Option<LeaseInstant> {
        self.last_renewal_sent
    }

    /// Decides what to do about `event`.
    pub(crate) fn on(&mut self, event: Event) -> Vec<Command> {
        if self.phase == Phase::Stopped {
            return Vec::new();
        }
        match event {
            // The actor hands over the session's lease as soon as it is trusted.
            Event::Started => Vec::new(),
            Event::LeaseGranted { lease, sent_at } => self.on_lease_granted(lease, sent_at),
            Event::KeepaliveAcked { lease, sent_at } => {
                if self.lease == Some(lease) {
                    self.last_renewal_sent = self.last_renewal_sent.max(Some(sent_at));
                }
                Vec::new()
            }
            Event::LeaseLost { lease, now } => {
                if self.lease == Some(lease) {
                    let reason = if self.deadline_passed(now) {
                        StepDownReason::RenewDeadlineMissed
                    } else {
                        StepDownReason::LeaseLost
                    };
                    // The key went with the lease: nothing is left to delete.
                    self.forget_lease();
                    self.step_down(Afterwards::NewLease, reason)
                } else {
                    Vec::new()
                }
            }
            Event::Tick { now } => {
                if self.lease.is_some() && self.deadline_passed(now) {
                    self.step_down(Afterwards::NewLease, StepDownReason::RenewDeadlineMissed)
                } else {
                    Vec::new()
                }
            }
            Event::Elected { lease, revision } => {
                if self.phase != Phase::Campaigning || self.lease != Some(lease) {
                    return Vec::new();
                }
                self.phase = Phase::Reloading { revision };
                vec![
                    Command::Publish(RoleState::Activating),
                    Command::StartReload { revision },
                ]
            }
            Event::CampaignJoined { lease } => {
                if self.phase == Phase::Campaigning && self.lease == Some(lease) {
                    self.etcd_failures = 0;
                }
                Vec::new()
            }
            Event::CampaignFailed {
                lease,
                etcd_restored,
            } => {
                if self.phase != Phase::Campaigning || self.lease != Some(lease) {
                    return Vec::new();
                }
                if etcd_restored {
                    self.etcd_failures = 0;
                }
                let after = self.next_etcd_retry();
                vec![Command::Campaign { lease, after }]
            }
            Event::LeaderKeyDeleted { revision } => {
                let leads_at = match self.phase {
                    Phase::Reloading { revision }
                    | Phase::Activating { revision }
                    | Phase::Serving { revision } => Some(revision),
                    _ => None,
                };
                if leads_at != Some(revision) {
                    return Vec::new();
                }
                self.step_down(Afterwards::Recampaign, StepDownReason::LeaderKeyDeleted)
            }
            Event::Reloaded { revision } => {
                if self.phase != (Phase::Reloading { revision }) {
                    return Vec::new();
                }
                self.phase = Phase::Activating { revision };
                vec![Command::Activate { revision }]
            }
            Event::ReloadFailed => {
                if !matches!(self.phase, Phase::Reloading { .. }) {
                    return Vec::new();
                }
                self.step_down(Afterwards::Recampaign, StepDownReason::ReloadFailed)
            }
            Event::CoordinatorServing { revision } => {
                if self.phase != (Phase::Activating { revision }) {
                    return Vec::new();
                }
                self.phase = Phase::Serving { revision };
                self.coordinator_crashes = 0;
                self.etcd_failures = 0;
                self.campaign_delay = Duration::ZERO;
                vec![Command::Publish(RoleState::Serving)]
            }
            Event::ActivationTimedOut { revision } => {
                if self.phase != (Phase::Activating { revision }) {
                    return Vec::new();
                }
                self.step_down(Afterwards::Recampaign, StepDownReason::ActivationTimedOut)
            }
            Event::CoordinatorCrashed => self.on_coordinator_crashed(),
            Event::CoordinatorStarted => {
                self.coordinator_up = true;
                match (self.phase, self.lease) {
                    (Phase::Recovering, Some(lease)) => {
                        self.phase = Phase::Campaigning;
                        vec![Command::Campaign {
                            lease,
                            after: Duration::ZERO,
                        }]
                    }
                    _ => Vec::new(),
                }
            }
            Event::Deactivated => match self.phase {
                Phase::Deactivating { then } => self.release(then),
                _ => Vec::new(),
            },
            Event::Released => match self.phase {
                Phase::Releasing { then } => self.after_release(then),
                _ => Vec::new(),
            },
            Event::Shutdown => self.step_down(Afterwards::Stop, StepDownReason::Shutdown),
            Event::Resign => {
                if self.phase.leads() {
                    self.step_down(Afterwards::Recampaign, StepDownReason::Resigned)
                } else {
                    Vec::new()
                }
            }
            Event::TransferReady { revision } => {
                if self.phase == (Phase::Serving { revision }) {
                    self.step_down(Afterwards::Recampaign, StepDownReason::Transferred)
                } else {
                    Vec::new()
                }
            }
            Event::Yield => {
                if self.phase == Phase::Campaigning {
                    let mut commands = vec![Command::CancelCampaign];
                    commands.extend(self.release(Afterwards::Recampaign));
                    commands
                } else {
                    Vec::new()
                }
            }
        }
    }

    fn on_lease_granted(&mut self, lease: i64, sent_at: LeaseInstant) -> Vec<Command> {
        if self.phase != Phase::Unleased {
            return Vec::new();
        }
        self.lease = Some(lease);
        self.last_renewal_sent = Some(sent_at);
        self.etcd_failures = 0;
        let mut commands = vec![Command::Register { lease }];
        commands.extend(self.campaign_when_ready(lease));
        commands
    }

    /// Campaigns on `lease` now if the coordinator runs, else waits for its restart.
    fn campaign_when_ready(&mut self, lease: i64) -> Option<Command> {
        if self.coordinator_up {
            self.phase = Phase::Campaigning;
            Some(Command::Campaign {
                lease,
                after: self.campaign_delay,
            })
        } else {
            self.phase = Phase::Recovering;
            None
        }
    }

    fn on_coordinator_crashed(&mut self) -> Vec<Command> {
        self.coordinator_up = false;
        self.coordinator_crashes = self.coordinator_crashes.saturating_add(1);
        let restart = Command::RestartCoordinator {
            after: backoff::delay(&self.timings.restart_backoff, self.coordinator_crashes),
        };
        let mut commands = match self.phase {
            // No deactivation can come from a dead coordinator: release now.
            Phase::Deactivating { then } => {
                let mut commands = vec![Command::Depose(StepDownReason::CoordinatorCrashed)];
                commands.extend(self.release(then));
                commands
            }
            Phase::Reloading { .. } | Phase::Activating { .. } | Phase::Serving { .. } => {
                let mut commands = vec![
                    Command::Depose(StepDownReason::CoordinatorCrashed),
                    Command::StopReload,
                    Command::Publish(RoleState::Standby),
                ];
                commands.extend(self.release(Afterwards::Recampaign));
                commands
            }
            Phase::Campaigning => {
                let mut commands = vec![Command::CancelCampaign];
                commands.extend(self.release(Afterwards::Recampaign));
                commands
            }
            _ => Vec::new(),
        };
        commands.push(restart);
        commands
    }

    /// Gives up leadership or candidacy, deactivating the coordinator first
    /// when it was activated, then does `then`.
    fn step_down(&mut self, then: Afterwards, reason: StepDownReason) -> Vec<Command> {
        if reason == StepDownReason::ReloadFailed {
            self.campaign_delay = self.next_etcd_retry();
        }
        match self.phase {
            Phase::Reloading { .. } | Phase::Activating { .. } | Phase::Serving { .. } => {
                self.phase = Phase::Deactivating { then };
                let mut commands = vec![Command::Depose(reason), Command::StopReload];
                let state = self.phase.published_state();
                if then != Afterwards::NewLease {
                    commands.push(Command::Publish(state));
                }
                commands.push(Command::Deactivate);
                commands
            }
            Phase::Campaigning => {
                let mut commands = vec![Command::CancelCampaign];
                commands.extend(self.release(then));
                commands
            }
            Phase::Recovering => self.release(then),
            Phase::Deactivating { then: current } => {
                self.phase = Phase::Deactivating {
                    then: current.max(then),
                };
                Vec::new()
            }
            Phase::Releasing { then: current } => {
                // A release already in flight: only escalate what follows it.
                self.phase = Phase::Releasing {
                    then: current.max(then),
                };
                Vec::new()
            }
            Phase::Unleased => {
                if then == Afterwards::Stop {
                    self.phase = Phase::Stopped;
                    vec![Command::Stop]
                } else {
                    Vec::new()
                }
            }
            Phase::Stopped => Vec::new(),
        }
    }

    /// Deletes the candidate key, if there is a lease to hold one, then does
    /// `then`. A role that stops leaves its key to the node, which revokes
    /// its lease once every role has stopped: one write takes every key of
    /// a node that leaves, where a delete per role would be a write each.
    fn release(&mut self, then: Afterwards) -> Vec<Command> {
        self.phase = Phase::Releasing { then };
        match self.lease {
            Some(lease) if then != Afterwards::Stop => vec![Command::Resign { lease }],
            _ => self.after_release(then),
        }
    }

    fn after_release(&mut self, then: Afterwards) -> Vec<Command> {
        match (then, self.lease) {
            (Afterwards::Recampaign, Some(lease)) => {
                let mut commands = vec![Command::Publish(RoleState::Standby)];
                commands.extend(self.campaign_when_ready(lease));
                commands
            }
            (Afterwards::Stop, _) => {
                self.forget_lease();
                self.phase = Phase::Stopped;
                vec![Command::Stop]
            }
            (Afterwards::NewLease | Afterwards::Recampaign, _) => {
                self.forget_lease();
                self.phase = Phase::Unleased;
                Vec::new()
            }
        }
    }

    /// Whether no renewal was sent within the renew deadline before `now`.
    fn deadline_passed(&self, now: LeaseInstant) -> bool {
        self.last_renewal_sent
            .is_some_and(|sent| now >= sent + self.timings.renew_deadline)
    }

    fn forget_lease(&mut self) {
        self.lease = None;
        self.last_renewal_sent = None;
    }

    fn next_etcd_retry(&mut self) -> Duration {
        self.etcd_failures = self.etcd_failures.saturating_add(1);
        backoff::delay(&self.timings.backoff, self.etcd_failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: i64 = 7;
    const REVISION: i64 = 42;

    fn timings() -> Timings {
        Timings {
            renew_deadline: Duration::from_secs(6),
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            restart_backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
        }
    }

    /// A machine that campaigns on the session's `LEASE`, renewed at `start`.
    fn campaigning(start: LeaseInstant) -> ElectionMachine {
        let mut machine = ElectionMachine::new(timings());
        assert_eq!(
            machine.on(Event::Started),
            vec![],
            "it waits for the session"
        );
        assert_eq!(machine.phase(), Phase::Unleased);
        let commands = machine.on(Event::LeaseGranted {
            lease: LEASE,
            sent_at: start,
        });
        assert_eq!(
            commands,
            vec![
                Command::Register { lease: LEASE },
                Command::Campaign {
                    lease: LEASE,
                    after: Duration::ZERO
                }
            ]
        );
        assert_eq!(machine.phase(), Phase::Campaigning);
        machine
    }

    fn serving(start: LeaseInstant) -> ElectionMachine {
        let mut machine = campaigning(start);
        assert_eq!(
            machine.on(Event::Elected {
                lease: LEASE,
                revision: REVISION
            }),
            vec![
                Command::Publish(RoleState::Activating),
                Command::StartReload { revision: REVISION }
            ]
        );
        assert_eq!(machine.phase().published_state(), RoleState::Activating);
        assert_eq!(
            machine.on(Event::Reloaded { revision: REVISION }),
            vec![Command::Activate { revision: REVISION }]
        );
        assert_eq!(machine.phase().published_state(), RoleState::Activating);
        assert_eq!(
            machine.on(Event::CoordinatorServing { revision: REVISION }),
            vec![Command::Publish(RoleState::Serving)]
        );
        assert_eq!(machine.phase(), Phase::Serving { revision: REVISION });
        machine
    }

    /// Checks that `event` makes `machine` delete its own key on `LEASE`:
    /// the lease is the node's, and never revoked for one role.
    fn resigns(machine: &mut ElectionMachine, event: Event) {
        assert_eq!(machine.on(event), vec![Command::Resign { lease: LEASE }]);
    }

    /// Checks that `released_by` deletes the key on `LEASE`, that once it
    /// is gone `machine` waits for the session's next trusted lease, and
    /// campaigns on that.
    fn gives_up_the_lease_and_starts_over(machine: &mut ElectionMachine, released_by: Event) {
        resigns(machine, released_by);
        assert_eq!(machine.on(Event::Released), vec![]);
        assert_eq!(machine.phase(), Phase::Unleased);
        assert_eq!(machine.lease(), None);
        assert!(
            machine
                .on(Event::Tick {
                    now: LeaseInstant::now() + Duration::from_secs(60)
                })
                .is_empty(),
            "no deadline without a lease"
        );
        let next = LEASE + 1;
        assert_eq!(
            machine.on(Event::LeaseGranted {
                lease: next,
                sent_at: LeaseInstant::now()
            }),
            vec![
                Command::Register { lease: next },
                Command::Campaign {
                    lease: next,
                    after: Duration::ZERO
                }
            ]
        );
    }

    #[test]
    fn a_standby_in_line_leaves_the_clock_to_the_session() {
        for phase in [Phase::Recovering, Phase::Campaigning, Phase::Stopped] {
            assert!(!phase.keeps_own_time(), "{phase:?}");
        }
        for phase in [
            Phase::Unleased,
            Phase::Reloading { revision: 1 },
            Phase::Activating { revision: 1 },
            Phase::Serving { revision: 1 },
            Phase::Deactivating {
                then: Afterwards::Recampaign,
            },
            Phase::Releasing {
                then: Afterwards::NewLease,
            },
        ] {
            assert!(phase.keeps_own_time(), "{phase:?}");
        }
    }

    #[test]
    fn wins_then_serves_only_after_reload_and_activation() {
        let machine = serving(LeaseInstant::now());
        assert!(machine.phase().leads());
    }

    #[test]
    fn stale_replies_from_an_earlier_term_are_ignored() {
        let mut machine = campaigning(LeaseInstant::now());
        assert!(
            machine
                .on(Event::Elected {
                    lease: LEASE + 1,
                    revision: 1
                })
                .is_empty()
        );
        assert!(machine.on(Event::Reloaded { revision: 5 }).is_empty());
        assert!(
            machine
                .on(Event::CoordinatorServing { revision: 5 })
                .is_empty()
        );
        assert_eq!(machine.phase(), Phase::Campaigning);
    }

    #[test]
    fn missed_renew_deadline_demotes_before_the_ttl_and_starts_over() {
        let start = LeaseInstant::now();
        let mut machine = serving(start);
        let renewed = start + Duration::from_secs(3);
        machine.on(Event::KeepaliveAcked {
            lease: LEASE,
            sent_at: renewed,
        });
        // A keepalive of an older lease does not count.
        machine.on(Event::KeepaliveAcked {
            lease: LEASE + 1,
            sent_at: start + Duration::from_secs(8),
        });
        assert!(
            machine
                .on(Event::Tick {
                    now: renewed + Duration::from_millis(5999)
                })
                .is_empty()
        );
        let commands = machine.on(Event::Tick {
            now: renewed + Duration::from_secs(6),
        });
        assert_eq!(
            commands,
            vec![
                Command::Depose(StepDownReason::RenewDeadlineMissed),
                Command::StopReload,
                Command::Deactivate
            ]
        );
        assert_eq!(machine.phase().published_state(), RoleState::Standby);
        gives_up_the_lease_and_starts_over(&mut machine, Event::Deactivated);
    }

    #[test]
    fn lost_lease_while_campaigning_starts_over_without_deactivating() {
        let mut machine = campaigning(LeaseInstant::now());
        assert!(
            machine
                .on(Event::LeaseLost {
                    lease: LEASE + 1,
                    now: LeaseInstant::now()
                })
                .is_empty()
        );
        assert_eq!(
            machine.on(Event::LeaseLost {
                lease: LEASE,
                now: LeaseInstant::now()
            }),
            vec![Command::CancelCampaign],
            "the key went with the lease: nothing to delete"
        );
        assert_eq!(machine.phase(), Phase::Unleased);
        assert_eq!(machine.lease(), None);
        assert!(
            machine
                .on(Event::LeaseLost {
                    lease: LEASE,
                    now: LeaseInstant::now()
                })
                .is_empty(),
            "heard once"
        );
    }

    #[test]
    fn coordinator_crash_resigns_at_once_and_recampaigns_after_restart() {
        let mut machine = serving(LeaseInstant::now());
        let commands = machine.on(Event::CoordinatorCrashed);
        assert_eq!(
            commands,
            vec![
                Command::Depose(StepDownReason::CoordinatorCrashed),
                Command::StopReload,
                Command::Publish(RoleState::Standby),
                Command::Resign { lease: LEASE },
                Command::RestartCoordinator {
                    after: Duration::from_millis(100)
                }
            ]
        );
        // The lease is kept, but no campaign while the coordinator is down.
        assert_eq!(
            machine.on(Event::Released),
            vec![Command::Publish(RoleState::Standby)]
        );
        assert_eq!(machine.phase(), Phase::Recovering);
        assert_eq!(
            machine.on(Event::CoordinatorStarted),
            vec![Command::Campaign {
                lease: LEASE,
                after: Duration::ZERO
            }]
        );
    }

    #[test]
    fn repeated_crashes_back_off_exponentially_until_it_serves_again() {
        let mut machine = campaigning(LeaseInstant::now());
        let mut delays = Vec::new();
        for _ in 0..5 {
            for command in machine.on(Event::CoordinatorCrashed) {
                if let Command::RestartCoordinator { after } = command {
                    delays.push(after.as_millis());
                }
            }
            machine.on(Event::Released);
            machine.on(Event::CoordinatorStarted);
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1000]);
    }

    /// Drives `machine` from leading through `cause` back to campaigning on
    /// the same lease, and checks each step.
    fn steps_down_and_recampaigns(
        machine: &mut ElectionMachine,
        cause: Event,
        reason: StepDownReason,
        campaign_after: Duration,
    ) {
        assert_eq!(
            machine.on(cause),
            vec![
                Command::Depose(reason),
                Command::StopReload,
                Command::Publish(RoleState::Standby),
                Command::Deactivate
            ]
        );
        assert_eq!(
            machine.on(Event::Deactivated),
            vec![Command::Resign { lease: LEASE }]
        );
        assert_eq!(
            machine.on(Event::Released),
            vec![
                Command::Publish(RoleState::Standby),
                Command::Campaign {
                    lease: LEASE,
                    after: campaign_after
                }
            ]
        );
    }

    #[test]
    fn reload_failure_resigns_and_campaigns_again_after_a_delay() {
        let mut machine = campaigning(LeaseInstant::now());
        machine.on(Event::Elected {
            lease: LEASE,
            revision: REVISION,
        });
        steps_down_and_recampaigns(
            &mut machine,
            Event::ReloadFailed,
            StepDownReason::ReloadFailed,
            Duration::from_millis(100),
        );
    }

    #[test]
    fn shutdown_deactivates_then_stops_leaving_the_key_to_the_nodes_revoke() {
        let mut machine = serving(LeaseInstant::now());
        assert_eq!(
            machine.on(Event::Shutdown),
            vec![
                Command::Depose(StepDownReason::Shutdown),
                Command::StopReload,
                Command::Publish(RoleState::Stopping),
                Command::Deactivate
            ]
        );
        // The role stops only once the coordinator is in standby; its key
        // goes with the node's lease, revoked once every role has stopped.
        assert_eq!(machine.on(Event::Deactivated), vec![Command::Stop]);
        assert_eq!(machine.phase(), Phase::Stopped);
        assert!(machine.on(Event::Started).is_empty());
    }

    #[test]
    fn a_standby_that_shuts_down_stops_without_deleting_its_key() {
        let mut machine = campaigning(LeaseInstant::now());
        assert_eq!(
            machine.on(Event::Shutdown),
            vec![Command::CancelCampaign, Command::Stop]
        );
        assert_eq!(machine.phase(), Phase::Stopped);
    }

    #[test]
    fn shutdown_during_a_resign_stops_once_the_key_is_gone() {
        let mut machine = serving(LeaseInstant::now());
        machine.on(Event::CoordinatorCrashed);
        assert!(machine.on(Event::Shutdown).is_empty());
        assert_eq!(machine.on(Event::Released), vec![Command::Stop]);
    }

    #[test]
    fn crash_while_deactivating_releases_without_waiting() {
        let mut machine = serving(LeaseInstant::now());
        machine.on(Event::Resign);
        let commands = machine.on(Event::CoordinatorCrashed);
        assert!(commands.contains(&Command::Resign { lease: LEASE }));
        assert!(commands.contains(&Command::RestartCoordinator {
            after: Duration::from_millis(100)
        }));
    }

    #[test]
    fn crash_while_deactivating_for_a_shutdown_stops_without_waiting() {
        let mut machine = serving(LeaseInstant::now());
        machine.on(Event::Shutdown);
        let commands = machine.on(Event::CoordinatorCrashed);
        assert!(commands.contains(&Command::Stop), "{commands:?}");
        assert!(!commands.contains(&Command::Resign { lease: LEASE }));
        assert_eq!(machine.phase(), Phase::Stopped);
    }

    #[test]
    fn campaign_retries_back_off_and_start_over_once_a_campaign_joins() {
        let mut machine = campaigning(LeaseInstant::now());
        let retry = |machine: &mut ElectionMachine| match machine
            .on(Event::CampaignFailed {
                lease: LEASE,
                etcd_restored: false,
            })
            .as_slice()
        {
            [Command::Campaign { after, .. }] => *after,
            other => panic!("expected a campaign retry, got {other:?}"),
        };
        let delays: Vec<_> = (0..4).map(|_| retry(&mut machine)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800].map(Duration::from_millis),
            "retries back off"
        );
        // A campaign that joins proves etcd answers: the next failure, hours
        // later, must not wait as if etcd had been failing ever since.
        assert!(
            machine
                .on(Event::CampaignJoined { lease: LEASE })
                .is_empty()
        );
        assert_eq!(retry(&mut machine), Duration::from_millis(100));
        // A join for another lease says nothing about this one.
        retry(&mut machine);
        machine.on(Event::CampaignJoined { lease: LEASE + 1 });
        assert_eq!(retry(&mut machine), Duration::from_millis(400));
    }

    #[test]
    fn a_campaign_that_failed_as_etcd_came_back_retries_without_the_outages_backoff() {
        let mut machine = campaigning(LeaseInstant::now());
        let fail = |machine: &mut ElectionMachine, etcd_restored| match machine
            .on(Event::CampaignFailed {
                lease: LEASE,
                etcd_restored,
            })
            .as_slice()
        {
            [Command::Campaign { after, .. }] => *after,
            other => panic!("expected a campaign retry, got {other:?}"),
        };
        // An outage: every attempt fails, and the retries back off.
        for _ in 0..4 {
            fail(&mut machine, false);
        }
        assert_eq!(fail(&mut machine, false), Duration::from_secs(1));
        // The attempt in flight as the link healed fails on the broken
        // connection while etcd answers again: the next try is the first.
        assert_eq!(fail(&mut machine, true), Duration::from_millis(100));
        assert_eq!(
            fail(&mut machine, false),
            Duration::from_millis(200),
            "a failure with etcd up backs off again"
        );
    }

    #[test]
    fn a_deleted_leader_key_demotes_and_campaigns_again_on_the_same_lease() {
        let mut machine = serving(LeaseInstant::now());
        assert!(
            machine
                .on(Event::LeaderKeyDeleted { revision: 1 })
                .is_empty()
        );
        steps_down_and_recampaigns(
            &mut machine,
            Event::LeaderKeyDeleted { revision: REVISION },
            StepDownReason::LeaderKeyDeleted,
            Duration::ZERO,
        );
    }

    #[test]
    fn resigning_hands_over_and_campaigns_again_at_once() {
        let mut machine = serving(LeaseInstant::now());
        steps_down_and_recampaigns(
            &mut machine,
            Event::Resign,
            StepDownReason::Resigned,
            Duration::ZERO,
        );
        assert!(
            machine.on(Event::Resign).is_empty(),
            "only a leader resigns"
        );
    }

    #[test]
    fn a_lease_lost_during_a_resign_waits_for_the_next_lease_instead_of_recampaigning() {
        let mut machine = serving(LeaseInstant::now());
        machine.on(Event::CoordinatorCrashed);
        machine.on(Event::CoordinatorStarted);
        assert!(
            machine
                .on(Event::LeaseLost {
                    lease: LEASE,
                    now: LeaseInstant::now()
                })
                .is_empty()
        );
        assert_eq!(machine.on(Event::Released), vec![]);
        assert_eq!(machine.phase(), Phase::Unleased);
    }

    #[test]
    fn a_ready_transfer_hands_over_only_from_the_term_it_was_planned_in() {
        let start = LeaseInstant::now();
        let mut machine = serving(start);
        assert_eq!(
            machine.on(Event::TransferReady {
                revision: REVISION + 1
            }),
            vec![]
        );
        assert_eq!(machine.phase(), Phase::Serving { revision: REVISION });
        let commands = machine.on(Event::TransferReady { revision: REVISION });
        assert_eq!(
            commands,
            vec![
                Command::Depose(StepDownReason::Transferred),
                Command::StopReload,
                Command::Publish(RoleState::Standby),
                Command::Deactivate,
            ]
        );
        assert_eq!(
            machine.on(Event::Deactivated),
            vec![Command::Resign { lease: LEASE }]
        );
        let rejoins = machine.on(Event::Released);
        assert_eq!(rejoins[0], Command::Publish(RoleState::Standby));
        assert!(matches!(rejoins[1], Command::Campaign { lease: LEASE, .. }));
    }

    #[test]
    fn a_candidate_makes_way_by_joining_again_and_a_leader_never_yields() {
        let start = LeaseInstant::now();
        let mut machine = campaigning(start);
        assert_eq!(
            machine.on(Event::Yield),
            vec![Command::CancelCampaign, Command::Resign { lease: LEASE }]
        );
        let rejoins = machine.on(Event::Released);
        assert_eq!(
            rejoins,
            vec![
                Command::Publish(RoleState::Standby),
                Command::Campaign {
                    lease: LEASE,
                    after: Duration::ZERO
                }
            ]
        );
        let mut leader = serving(start);
        assert_eq!(leader.on(Event::Yield), vec![]);
        assert_eq!(leader.phase(), Phase::Serving { revision: REVISION });
    }

    #[test]
    fn shutdown_without_a_lease_stops_at_once() {
        let mut machine = ElectionMachine::new(timings());
        machine.on(Event::Started);
        assert_eq!(machine.on(Event::Shutdown), vec![Command::Stop]);
    }
}
