//! The faults the campaign injects, how each is repaired, and what counts as recovered from it.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;
use standin::etcd::session::Layout;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::faults_client::FaultsClient;
use standin::service::grpc::proto::{
    InjectRequest, ResignRequest, StatusRequest, WatchLeaderRequest,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::campaign::history::{FaultRecord, ImpairmentKind, ROLES, State};

/// A fault the campaign can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The leader's coordinator actor panics.
    CrashCoordinator,
    /// The leader's election actor panics.
    CrashElection,
    /// Every node's next reload panics, then the leader's coordinator, so
    /// the takeover runs into the reload crashes.
    CrashReload,
    /// `kill -9` of the leader's process, restarted at once.
    Kill,
    /// SIGSTOP of the leader for 2 x TTL, then SIGCONT; once a successor
    /// serves, a [`Probe`] asks the frozen leader with its old epoch.
    Stop,
    /// The leader's link to etcd cut for a while, then healed.
    Cut,
    /// The leader's link to etcd blackholed for a while (its host looks
    /// unreachable, its witness does not), then healed.
    Blackhole,
    /// The leader's link to etcd delayed for a while, then healed.
    Delay,
    /// The leader's lease clock stands still for [`standin::Fault::CLOCK_STALL`]
    /// (`stall-clock`) while its link to etcd is blackholed, then healed:
    /// a paused VM resumed, which takes its term for open long after its
    /// lease expired. Once a successor serves, a [`Probe`] asks it with
    /// its old epoch. Only with `--stall-clock`: without
    /// `coordinator.confirmAnswers` it answers beside its successor (the
    /// overlap the campaign then reports), with it nothing leaves.
    StallClock,
    /// A graceful `Coordination.Resign` of the leader.
    Resign,
    /// `Coordination.Resign` with `to`: the leader hands the role to a
    /// standby picked at random, past any candidate ahead of it.
    Transfer,
    /// etcd killed and restarted.
    EtcdRestart,
    /// An operator deletes the role's leader key (`etcdctl del`): the
    /// leader learns only from its watch.
    DeleteKey,
    /// An operator revokes the leader's lease (`etcdctl lease revoke`):
    /// every term of that node ends, and it learns from etcd.
    RevokeLease,
    /// SIGTERM to the leader while a client holds a health Watch and a
    /// WatchLeader stream open to it: it hands over and exits anyway.
    SigtermWatched,
    /// Every node's next activation of the role hangs, then the leader's
    /// coordinator crashes: each successor gives its term up after
    /// `coordinator.activateTimeout` until one activates.
    HangActivation,
    /// kill -9 of an etcd member that does not lead, restarted after a while.
    EtcdMemberKill,
    /// kill -9 of etcd's raft leader, restarted after a while: the others
    /// elect a new one.
    EtcdLeaderKill,
    /// The role leader's link to one etcd member cut for a while, then
    /// healed: its client must steer its calls to the other members.
    EtcdNodeCut,
    /// An etcd member (the leader or not) frozen with SIGSTOP for a while.
    EtcdMemberFreeze,
    /// A majority of etcd's members frozen for a few seconds: no quorum,
    /// so every term must lapse, and serve again once the quorum is back.
    EtcdQuorumLoss,
    /// etcd's raft leadership handed to another member (`etcdctl move-leader`).
    EtcdMoveLeader,
}

impl Fault {
    /// The faults of the standin nodes and how often each is picked,
    /// relative to the others.
    const NODE_WEIGHTS: [(Fault, u32); 14] = [
        (Fault::CrashCoordinator, 12),
        (Fault::CrashElection, 12),
        (Fault::CrashReload, 6),
        (Fault::Kill, 12),
        (Fault::Stop, 8),
        (Fault::Cut, 10),
        (Fault::Blackhole, 6),
        (Fault::Delay, 8),
        (Fault::Resign, 12),
        (Fault::Transfer, 10),
        (Fault::DeleteKey, 10),
        (Fault::RevokeLease, 10),
        (Fault::SigtermWatched, 6),
        (Fault::HangActivation, 4),
    ];

    /// The pause the lease clock cannot see, as often as a SIGSTOP.
    const STALL_WEIGHTS: [(Fault, u32); 1] = [(Fault::StallClock, 8)];

    /// Faults of a single etcd server: restarts are rare, since they cost
    /// the most time.
    const ONE_SERVER_WEIGHTS: [(Fault, u32); 1] = [(Fault::EtcdRestart, 3)];

    /// Faults of an etcd cluster: about a fifth of all faults.
    const CLUSTER_WEIGHTS: [(Fault, u32); 6] = [
        (Fault::EtcdMemberKill, 6),
        (Fault::EtcdLeaderKill, 7),
        (Fault::EtcdNodeCut, 6),
        (Fault::EtcdMemberFreeze, 5),
        (Fault::EtcdQuorumLoss, 3),
        (Fault::EtcdMoveLeader, 5),
    ];

    /// A fault picked at random for a campaign of `setup` (etcd's members,
    /// only etcd's own faults, the clock stall), each kind as often as its
    /// weight says.
    pub(super) fn pick(rng: &mut StdRng, setup: &Setup) -> Self {
        let etcd: &[(Fault, u32)] = match setup.etcd_members {
            1 => &Self::ONE_SERVER_WEIGHTS,
            _ => &Self::CLUSTER_WEIGHTS,
        };
        let of_nodes = !setup.etcd_faults_only;
        let nodes: &[(Fault, u32)] = if of_nodes { &Self::NODE_WEIGHTS } else { &[] };
        let stall: &[(Fault, u32)] = if of_nodes && setup.stall_clock {
            &Self::STALL_WEIGHTS
        } else {
            &[]
        };
        let weights = || nodes.iter().chain(stall).chain(etcd);
        let total: u32 = weights().map(|(_, weight)| weight).sum();
        let mut roll = rng.random_range(0..total);
        for &(fault, weight) in weights() {
            if roll < weight {
                return fault;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Fault::CrashCoordinator => "crash-coordinator",
            Fault::CrashElection => "crash-election",
            Fault::CrashReload => "crash-reload",
            Fault::Kill => "kill-9",
            Fault::Stop => "sigstop",
            Fault::Cut => "cut",
            Fault::Blackhole => "blackhole",
            Fault::Delay => "delay",
            Fault::StallClock => "stall-clock",
            Fault::Resign => "resign",
            Fault::Transfer => "transfer",
            Fault::EtcdRestart => "etcd-restart",
            Fault::DeleteKey => "delete-key",
            Fault::RevokeLease => "revoke-lease",
            Fault::SigtermWatched => "sigterm-watched",
            Fault::HangActivation => "hang-activation",
            Fault::EtcdMemberKill => "etcd-member-kill",
            Fault::EtcdLeaderKill => "etcd-leader-kill",
            Fault::EtcdNodeCut => "etcd-node-cut",
            Fault::EtcdMemberFreeze => "etcd-member-freeze",
            Fault::EtcdQuorumLoss => "etcd-quorum-loss",
            Fault::EtcdMoveLeader => "etcd-move-leader",
        }
    }

    /// Whether the fault is etcd's own: the nodes only see what it does to
    /// their calls, and recovery counts from its repair.
    pub(super) fn of_etcd(self) -> bool {
        matches!(
            self,
            Fault::EtcdRestart
                | Fault::EtcdMemberKill
                | Fault::EtcdLeaderKill
                | Fault::EtcdNodeCut
                | Fault::EtcdMemberFreeze
                | Fault::EtcdQuorumLoss
                | Fault::EtcdMoveLeader
        )
    }

    /// Whether the fault ends the term of the role it hits only: the other
    /// roles its node leads, on the same lease, must serve on untouched.
    fn spares_other_roles(self) -> bool {
        matches!(
            self,
            Fault::CrashCoordinator
                | Fault::CrashElection
                | Fault::CrashReload
                | Fault::HangActivation
                | Fault::DeleteKey
                | Fault::Resign
                | Fault::Transfer
        )
    }

    /// How long after the fault a healthy node must serve, when
    /// `warm_standby` says whether a live peer held a loaded copy of the
    /// role's metadata as it hit.
    pub(super) fn bound(self, warm_standby: bool) -> Duration {
        match self {
            // A crashed actor resigns at once: a standby wins in milliseconds.
            Fault::CrashCoordinator
            | Fault::CrashElection
            | Fault::Resign
            | Fault::Transfer
            | Fault::Delay
            | Fault::DeleteKey
            | Fault::RevokeLease
            | Fault::SigtermWatched => Duration::from_secs(5),
            // Each of the three nodes may hang once for the activation timeout.
            Fault::HangActivation => 3 * ACTIVATE_TIMEOUT + Duration::from_secs(5),
            // Up to three reloads crash before one gets through.
            Fault::CrashReload => Duration::from_secs(8),
            // The killed process's witness port refuses: its peers revoke
            // its leases at once, whatever the TTL.
            Fault::Kill if warm_standby => KILL_BOUND,
            // Every peer was itself restarted moments ago and is still
            // reading its copy: the successor serves once that read ends.
            Fault::Kill => COLD_KILL_BOUND,
            // The leader's lease must expire first: nothing tells it is gone.
            Fault::Stop | Fault::Cut | Fault::Blackhole | Fault::StallClock => {
                TTL + Duration::from_secs(3)
            }
            // From etcd's repair: a term that lapsed while etcd could not
            // renew it serves again once a keepalive gets through (etcd
            // extends every lease by an election timeout when its leader
            // changes), else its lease expires and a standby wins.
            Fault::EtcdMemberKill
            | Fault::EtcdLeaderKill
            | Fault::EtcdNodeCut
            | Fault::EtcdMemberFreeze
            | Fault::EtcdQuorumLoss
            | Fault::EtcdMoveLeader => TTL + Duration::from_secs(6),
            Fault::EtcdRestart => Duration::from_secs(15),
        }
    }
}

/// How long after a kill -9 a healthy node must serve: the death witness
/// proves the process gone in milliseconds. The nodes run a binary of the
/// campaign's own build; an unoptimized one (`cargo test`'s short campaign)
/// takes 100-150 ms from a win to serving where a release build takes about
/// 10, and on 2 cores a kill -9 then took 544 ms once, so it gets twice the
/// bound: still a tenth of the TTL that a kill without the witness costs.
pub(super) const KILL_BOUND: Duration = if cfg!(debug_assertions) {
    Duration::from_millis(1000)
} else {
    Duration::from_millis(500)
};

/// How long after a kill -9 a healthy node must serve when no peer had its
/// metadata copy loaded: the read of the preloaded prefix comes first, as it
/// does for a takeover with `reload.warm: false`.
pub(super) const COLD_KILL_BOUND: Duration = Duration::from_secs(5);

/// A repair due at some instant while the campaign waits for a recovery.
#[derive(Debug, Clone, Copy)]
pub(super) enum Repair {
    /// SIGCONT to a node, ending impairment `.1`.
    Cont(usize, usize),
    /// Heal a node's proxy, ending impairment `.1`.
    Heal(usize, usize),
}

/// What counts as recovered from one fault.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recovery {
    /// The role that must recover.
    pub(super) role: usize,
    /// Only samples sent from here on count, and the recovery time and
    /// the bound count from here: the fault, or the repair of an etcd fault.
    pub(super) from: Instant,
    /// When set, only a term newer than this epoch counts: the fault ended
    /// the leader's term, so its old term serving on is no recovery.
    pub(super) newer_than: Option<i64>,
    /// For a link fault the leader may ride out: its term counts too if the
    /// node served it in every sample from the fault until one sent after
    /// the repair.
    pub(super) or_kept: Option<usize>,
}

impl Cluster {
    /// Injects `fault` on the leader of `role` (`leaders[role]`), waits for
    /// a healthy node to serve that role and for the fault's repair, and
    /// says how it went.
    pub(super) async fn inject(
        &mut self,
        index: usize,
        fault: Fault,
        role: usize,
        leaders: &Leaders,
        rng: &mut StdRng,
    ) -> anyhow::Result<FaultRecord> {
        let (node, epoch) = leaders[role];
        let name = ROLES[role];
        if matches!(fault, Fault::DeleteKey | Fault::RevokeLease) {
            // The probe of the deposed term must not spend the first
            // milliseconds after the act connecting to it.
            let mut coordination = CoordinationClient::new(self.control[node].clone());
            let _ =
                tokio::time::timeout(STATUS_WITHIN, coordination.status(StatusRequest {})).await;
        }
        // Before the bystanders are read: a spread move under way then is
        // found in the lines after these marks.
        let marks = self.log_marks();
        let mut bystanders = Vec::new();
        if fault.spares_other_roles() {
            for (other, &(holder, held)) in leaders.iter().enumerate() {
                if other != role
                    && holder == node
                    && self.leader_key(ROLES[other], held).await?.is_some()
                {
                    bystanders.push((other, held));
                }
            }
        }
        let target_server = self.server_id_of(node);
        let warm_standby = self.warm_standby(role, node);
        let bound = fault.bound(warm_standby);
        let at = Instant::now();
        let mut forced = Vec::new();
        let mut recovery = Recovery {
            role,
            from: at,
            newer_than: Some(epoch),
            or_kept: None,
        };
        let mut repair = None;
        let mut probe = None;
        let mut target = Some(node);
        let detail = match fault {
            Fault::CrashCoordinator | Fault::CrashElection => {
                match self.inject_actor_fault(node, name, fault.name()).await {
                    Ok(true) => "injected".to_owned(),
                    Ok(false) => {
                        recovery.newer_than = None;
                        "not injected: the actor was restarting".to_owned()
                    }
                    Err(error) => {
                        recovery.newer_than = None;
                        format!("not injected: {error:#}")
                    }
                }
            }
            Fault::CrashReload | Fault::HangActivation => {
                let mut armed = Vec::new();
                for peer in 0..NODES {
                    if let Ok(true) = self.inject_actor_fault(peer, name, fault.name()).await {
                        armed.push(peer.to_string());
                    }
                }
                match self
                    .inject_actor_fault(node, name, "crash-coordinator")
                    .await
                {
                    Ok(true) => format!(
                        "{} armed on nodes [{}], then the coordinator crashed",
                        fault.name(),
                        armed.join(", ")
                    ),
                    outcome => {
                        recovery.newer_than = None;
                        format!(
                            "{} armed on nodes [{}], coordinator crash not injected ({outcome:?})",
                            fault.name(),
                            armed.join(", ")
                        )
                    }
                }
            }
            Fault::DeleteKey => match self.delete_leader_key(name, epoch).await? {
                true => {
                    forced.push((role, epoch));
                    "leader key deleted".to_owned()
                }
                false => {
                    recovery.newer_than = None;
                    "not injected: the leader key had changed".to_owned()
                }
            },
            Fault::RevokeLease => match self.leader_key(name, epoch).await? {
                Some((_, lease)) => {
                    // Every term whose leader key rides on that lease ends.
                    for (other, &(holder, held)) in leaders.iter().enumerate() {
                        if holder == node
                            && let Some((_, same)) = self.leader_key(ROLES[other], held).await?
                            && same == lease
                        {
                            forced.push((other, held));
                        }
                    }
                    match self.revoke(lease).await? {
                        true => format!("lease {lease:x} revoked"),
                        false => {
                            forced.clear();
                            recovery.newer_than = None;
                            format!("not injected: lease {lease:x} was gone already")
                        }
                    }
                }
                None => {
                    recovery.newer_than = None;
                    "not injected: the leader key had changed".to_owned()
                }
            },
            Fault::SigtermWatched => self.terminate_watched(node, name).await?,
            Fault::Kill => {
                let process = &mut self.nodes[node];
                let old = process.pid();
                process.kill()?;
                process.restart()?;
                format!("pid {old} killed, restarted as pid {}", process.pid())
            }
            Fault::Stop => {
                let impairment = self.recorder.begin(Some(node), ImpairmentKind::Stopped);
                self.nodes[node].stop()?;
                self.recorder.in_force(impairment);
                repair = Some((at + 2 * TTL, Repair::Cont(node, impairment)));
                probe = Some(node);
                format!("frozen for {} ms", (2 * TTL).as_millis())
            }
            Fault::StallClock => {
                let impairment = self
                    .recorder
                    .begin(Some(node), ImpairmentKind::ClockStalled);
                // The clock first, as a VM pause stops it before the world
                // stops hearing from the node.
                let stalled = self.inject_actor_fault(node, name, fault.name()).await;
                for link in &self.proxies[node] {
                    link.blackhole();
                }
                self.recorder.in_force(impairment);
                let lasts = standin::Fault::CLOCK_STALL;
                repair = Some((at + lasts, Repair::Heal(node, impairment)));
                probe = Some(node);
                match stalled {
                    Ok(true) => format!(
                        "clock stalled and link blackholed for {} ms",
                        lasts.as_millis()
                    ),
                    outcome => format!(
                        "link blackholed for {} ms, clock stall not injected ({outcome:?})",
                        lasts.as_millis()
                    ),
                }
            }
            Fault::Cut | Fault::Blackhole => {
                let (kind, what) = match fault {
                    Fault::Cut => (ImpairmentKind::Cut, "cut"),
                    _ => (ImpairmentKind::Blackholed, "blackholed"),
                };
                let impairment = self.recorder.begin(Some(node), kind);
                for link in &self.proxies[node] {
                    match fault {
                        Fault::Cut => link.cut(),
                        _ => link.blackhole(),
                    }
                }
                self.recorder.in_force(impairment);
                let lasts = Duration::from_millis(rng.random_range(500..=4000));
                repair = Some((at + lasts, Repair::Heal(node, impairment)));
                // Shorter than the renew deadline, it may keep its term.
                recovery.or_kept = Some(node);
                format!("link {what} for {} ms", lasts.as_millis())
            }
            Fault::Delay => {
                let impairment = self.recorder.begin(Some(node), ImpairmentKind::Delayed);
                for link in &self.proxies[node] {
                    link.delay(LINK_DELAY);
                }
                self.recorder.in_force(impairment);
                let lasts = Duration::from_millis(rng.random_range(500..=3000));
                repair = Some((at + lasts, Repair::Heal(node, impairment)));
                recovery.or_kept = Some(node);
                format!(
                    "link delayed by {} ms for {} ms",
                    LINK_DELAY.as_millis(),
                    lasts.as_millis()
                )
            }
            Fault::Resign => match self.resign(node, name, None).await {
                Ok(()) => "resigned".to_owned(),
                Err(error) => {
                    recovery.newer_than = None;
                    format!("resign failed: {error:#}")
                }
            },
            Fault::Transfer => {
                let to = (node + rng.random_range(1..NODES)) % NODES;
                let address = self.addresses[to].clone();
                match self.resign(node, name, Some(&address)).await {
                    Ok(()) => format!("handed to node {to}"),
                    // A standby still reading its copy, or restarting, is
                    // refused: the leader keeps its term.
                    Err(error) => {
                        recovery.newer_than = None;
                        format!("transfer to node {to} refused: {error:#}")
                    }
                }
            }
            Fault::EtcdRestart
            | Fault::EtcdMemberKill
            | Fault::EtcdLeaderKill
            | Fault::EtcdNodeCut
            | Fault::EtcdMemberFreeze
            | Fault::EtcdQuorumLoss
            | Fault::EtcdMoveLeader => {
                target = (fault == Fault::EtcdNodeCut).then_some(node);
                let detail = self.inject_etcd_fault(fault, node, rng).await?;
                // Nothing served while etcd was impaired can be told apart
                // from a leader that had not noticed yet: count from the
                // repair, and any term counts, the old one riding it out too.
                recovery.from = Instant::now();
                recovery.newer_than = None;
                detail
            }
        };
        let probe = probe.map(|node| Probe {
            role,
            node,
            epoch,
            client: CLIENTS + index,
        });
        // A deposed term is asked at once, and until it refuses.
        let hammers: Vec<_> = forced
            .iter()
            .map(|&(role, epoch)| {
                let probe = Probe {
                    role,
                    node,
                    epoch,
                    client: CLIENTS + index,
                };
                tokio::spawn(probe.hammer(self.control[node].clone(), at, self.recorder.clone()))
            })
            .collect();
        let (recovered, probed) = self
            .wait_recovery(at, bound, recovery, repair, probe)
            .await?;
        let mut detail = match probed {
            Some(outcome) => format!("{detail}; {outcome}"),
            None => detail,
        };
        if matches!(fault, Fault::CrashReload | Fault::HangActivation) {
            // A node that did not win while the fault ran still holds its
            // switch; left armed, it would fire at some later fault's
            // takeover, which then runs longer than that fault's bound.
            let mut disarmed = Vec::new();
            for peer in 0..NODES {
                if let Ok(true) = self.inject_actor_fault(peer, name, "disarm").await {
                    disarmed.push(peer.to_string());
                }
            }
            if !disarmed.is_empty() {
                detail = format!("{detail}; disarmed on nodes [{}]", disarmed.join(", "));
            }
        }
        // Said only where it moved the bound.
        if bound != fault.bound(true) {
            detail = format!("{detail}; no standby had its metadata copy loaded");
        }
        for hammer in hammers {
            detail = format!("{detail}; {}", hammer.await?);
        }
        let mut spared = Vec::new();
        for (other, held) in bystanders {
            let kept = self.leader_key(ROLES[other], held).await?.is_some();
            if !kept && self.spread_moved(node, ROLES[other], &marks) {
                // The fault changed how many roles each node leads, and the
                // spread evened it out: a graceful transfer, which ends a
                // term on purpose, not a term this fault ended.
                detail = format!(
                    "{detail}; {} on the same node was handed to another node by the spread",
                    ROLES[other]
                );
                continue;
            }
            let outcome = if kept { "served on" } else { "lost its term" };
            detail = format!("{detail}; {} on the same node {outcome}", ROLES[other]);
            spared.push((other, held, kept));
        }
        // etcd's faults leave the role's leader alive, and its witness must
        // say so as much as after a fault aimed at it.
        let alive = if fault.of_etcd() { Some(node) } else { target };
        let witness_revoked = alive.map(|node| {
            target_server.is_some_and(|server| self.witness_revoked(node, server, &marks))
        });
        Ok(FaultRecord {
            index,
            kind: fault.name(),
            node: target,
            role: target.map(|_| role),
            forced,
            epoch,
            at,
            bound,
            recovered,
            detail,
            clients_paused: None,
            witness_revoked,
            bystanders: spared,
        })
    }

    /// How many lines each node's log holds now.
    fn log_marks(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.log().lines().count()).collect()
    }

    /// Whether a node other than `leader` last reported `role` in standby
    /// with its metadata copy loaded.
    fn warm_standby(&self, role: usize, leader: usize) -> bool {
        let recent = Instant::now() - STATUS_WITHIN;
        self.latest_samples(role, recent)
            .iter()
            .flatten()
            .any(|s| s.node != leader && s.state == State::Standby && s.copy_loaded)
    }

    /// The server ID `node` last reported.
    fn server_id_of(&self, node: usize) -> Option<i64> {
        let history = self.recorder.lock();
        let sample = history.samples.iter().rev().find(|s| s.node == node)?;
        Some(sample.server_id)
    }

    /// Whether a node other than `node` logged, since `marks`, that its
    /// death witness found server `server` gone and revoked its leases.
    /// Whether a line `node` logged since `marks` matches `seen`.
    fn logged_since(&self, node: usize, marks: &[usize], seen: impl Fn(&str) -> bool) -> bool {
        self.nodes[node].log().lines().skip(marks[node]).any(seen)
    }

    /// Whether `node`'s spread handed `role` to another node since `marks`.
    fn spread_moved(&self, node: usize, role: &str, marks: &[usize]) -> bool {
        // The spread's decision may be logged just before the marks, with
        // its handover after them: either line counts.
        let decided = format!("spreading leadership: handing {role} to server ");
        let handed = format!("stepping down role=\"{role}\" reason=\"transferred\"");
        self.logged_since(node, marks, |line| {
            line.contains(&decided) || line.contains(&handed)
        })
    }

    fn witness_revoked(&self, node: usize, server: i64, marks: &[usize]) -> bool {
        let needle = format!("leader server {server} at ");
        (0..self.nodes.len()).any(|peer| {
            peer != node
                && self.logged_since(peer, marks, |line| {
                    line.contains(&needle) && line.contains(" is gone (")
                })
        })
    }

    /// Waits until a healthy node serves (as `recovery` says) or `bound`
    /// passes from `recovery.from`, carrying out `repair` when it is due;
    /// returns when both are done. The time from `recovery.from` to the
    /// answer of the first sample that shows the recovery, if any (a kept
    /// term's counts from `at`, the fault, which it is for those faults).
    pub(super) async fn wait_recovery(
        &mut self,
        at: Instant,
        bound: Duration,
        recovery: Recovery,
        mut repair: Option<(Instant, Repair)>,
        mut probe: Option<Probe>,
    ) -> anyhow::Result<(Option<Duration>, Option<String>)> {
        let mut probing = None;
        let mut successor = None;
        let mut cursor = {
            let history = self.recorder.lock();
            // Samples sent since `from` may already be in.
            let mut cursor = history.samples.len();
            while cursor > 0
                && history.samples[cursor - 1].received + STATUS_WITHIN >= recovery.from
            {
                cursor -= 1;
            }
            cursor
        };
        let mut recovered = None;
        let mut repaired_at = None;
        loop {
            if let Some((due, what)) = repair
                && Instant::now() >= due
            {
                match what {
                    Repair::Cont(node, impairment) => {
                        self.nodes[node].cont()?;
                        self.recorder.end(impairment);
                    }
                    Repair::Heal(node, impairment) => {
                        for link in &self.proxies[node] {
                            link.heal();
                        }
                        self.recorder.end(impairment);
                    }
                }
                repair = None;
                repaired_at = Some(Instant::now());
            }
            if recovered.is_none() {
                let history = self.recorder.lock();
                for sample in &history.samples[cursor..] {
                    if sample.role == recovery.role
                        && sample.sent >= recovery.from
                        && sample.state == State::Serving
                        && recovery.newer_than.is_none_or(|old| sample.epoch > old)
                        && !history.unfit(sample.node, sample.sent)
                    {
                        recovered = Some(sample.received.saturating_duration_since(recovery.from));
                        successor = Some((sample.node, sample.epoch));
                        break;
                    }
                }
                cursor = history.samples.len();
            }
            if recovered.is_none()
                && let (Some(node), Some(old), Some(repaired)) =
                    (recovery.or_kept, recovery.newer_than, repaired_at)
            {
                recovered = kept_term(&self.recorder, recovery.role, node, old, at, repaired);
            }
            // Once a successor serves, and while the old leader is still
            // frozen or stalled: see that a client that has not heard of the successor
            // yet cannot get timestamps from the old leader.
            if let Some((next, next_epoch)) = successor
                && repair.is_some()
                && let Some(probe) = probe.take()
            {
                probing = Some(tokio::spawn(probe.send(
                    (self.control[next].clone(), next_epoch),
                    self.control[probe.node].clone(),
                    self.recorder.clone(),
                )));
            }
            let gave_up = recovered.is_none() && recovery.from.elapsed() > bound;
            if (recovered.is_some() || gave_up) && repair.is_none() {
                let probed = match probing {
                    Some(probing) => Some(probing.await?),
                    None => None,
                };
                // A recovery seen only after the bound does not count.
                return Ok((recovered.filter(|took| *took <= bound), probed));
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Asks `node`'s Faults service to inject `fault` into `role`'s actors.
    pub(super) async fn inject_actor_fault(
        &self,
        node: usize,
        role: &str,
        fault: &str,
    ) -> anyhow::Result<bool> {
        let mut faults = FaultsClient::new(self.control[node].clone());
        let request = InjectRequest {
            role: role.to_owned(),
            fault: fault.to_owned(),
        };
        let answer = tokio::time::timeout(Duration::from_secs(2), faults.inject(request))
            .await
            .context("no answer within 2 s")??;
        Ok(answer.into_inner().injected)
    }

    /// A graceful handover of `role` by `node`, to whoever is next or to
    /// the node at address `to`.
    pub(super) async fn resign(
        &self,
        node: usize,
        role: &str,
        to: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut coordination = CoordinationClient::new(self.control[node].clone());
        let request = ResignRequest {
            role: role.to_owned(),
            to: to.unwrap_or_default().to_owned(),
        };
        tokio::time::timeout(Duration::from_secs(10), coordination.resign(request))
            .await
            .context("no answer within 10 s")??;
        Ok(())
    }
}

impl Cluster {
    /// The leader key of `role` whose create revision is `epoch`, with its
    /// lease, if it still exists.
    async fn leader_key(&self, role: &str, epoch: i64) -> anyhow::Result<Option<(Vec<u8>, i64)>> {
        let election = Layout::new(&self.root).election(role);
        let mut etcd = self.etcd.client().await?;
        let found = etcd
            .get(
                election.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        Ok(found
            .kvs()
            .iter()
            .find(|kv| kv.create_revision() == epoch)
            .map(|kv| (kv.key().to_vec(), kv.lease())))
    }

    /// What `etcdctl del` of the leader key does, for exactly the term
    /// `epoch`: false when that key is gone already.
    async fn delete_leader_key(&self, role: &str, epoch: i64) -> anyhow::Result<bool> {
        let Some((key, _)) = self.leader_key(role, epoch).await? else {
            return Ok(false);
        };
        let mut etcd = self.etcd.client().await?;
        let deleted = etcd.delete(key, None).await?;
        Ok(deleted.deleted() > 0)
    }

    /// What `etcdctl lease revoke` does: false when the lease was gone already.
    async fn revoke(&self, lease: i64) -> anyhow::Result<bool> {
        let mut etcd = self.etcd.client().await?;
        match etcd.lease_revoke(lease).await {
            Ok(_) => Ok(true),
            // Expired or revoked meanwhile: the term ended without us.
            Err(error) if error.to_string().contains("lease not found") => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// SIGTERM to `node` while a health Watch of `role` and a WatchLeader
    /// stream are open to it; waits for it to exit (a stall if it does not
    /// within [`EXIT_WITHIN`]), restarts it, and says how the streams ended.
    async fn terminate_watched(&mut self, node: usize, role: &str) -> anyhow::Result<String> {
        let channel = self.control[node].clone();
        let health = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: role.to_owned(),
            })
            .await;
        let leader = CoordinationClient::new(channel)
            .watch_leader(WatchLeaderRequest {
                role: role.to_owned(),
            })
            .await;
        let (Ok(health), Ok(leader)) = (health, leader) else {
            return Ok("not injected: the watch streams did not open".to_owned());
        };
        let (mut health, mut leader) = (health.into_inner(), leader.into_inner());
        // Each stream's first message: it is open and answered.
        let opened = tokio::time::timeout(STATUS_WITHIN, async {
            health.message().await.is_ok() && leader.message().await.is_ok()
        })
        .await
        .unwrap_or(false);
        let pid = self.nodes[node].pid();
        self.nodes[node].terminate()?;
        let sent = Instant::now();
        // Drain both streams while waiting: they must not hold the exit.
        let drained = tokio::spawn(async move {
            while let Ok(Some(_)) = health.message().await {}
            while let Ok(Some(_)) = leader.message().await {}
        });
        let exited = loop {
            if let Some(status) = self.nodes[node].try_exit_status() {
                break Some(status);
            }
            if sent.elapsed() > EXIT_WITHIN {
                break None;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        };
        drained.abort();
        let detail = match exited {
            Some(status) if status.success() => format!(
                "pid {pid} exited 0 in {} ms with its streams open{}",
                sent.elapsed().as_millis(),
                if opened {
                    ""
                } else {
                    " (the streams had not answered yet)"
                }
            ),
            Some(status) => {
                let stall = format!("node {node} (pid {pid}) exited with {status} after SIGTERM");
                self.recorder.lock().stalls.push(stall.clone());
                stall
            }
            None => {
                let stall = format!(
                    "node {node} (pid {pid}) did not exit within {} s of SIGTERM with its watch streams open",
                    EXIT_WITHIN.as_secs()
                );
                self.recorder.lock().stalls.push(stall.clone());
                self.nodes[node].kill()?;
                stall
            }
        };
        self.nodes[node].restart()?;
        Ok(format!(
            "{detail}; restarted as pid {}",
            self.nodes[node].pid()
        ))
    }
}
