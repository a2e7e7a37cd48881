//! The faults the campaign injects, how each is repaired, and what counts as recovered from it.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::faults_client::FaultsClient;
use standin::service::grpc::proto::{InjectRequest, ResignRequest};

use super::*;
use crate::history::{FaultRecord, ImpairmentKind, State};

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
    /// The leader's link to etcd delayed for a while, then healed.
    Delay,
    /// A graceful `Coordination.Resign` of the leader.
    Resign,
    /// etcd killed and restarted.
    EtcdRestart,
}

impl Fault {
    /// Every fault and how often it is picked, relative to the others:
    /// etcd restarts are rare, as asked, since they cost the most time.
    const WEIGHTS: [(Fault, u32); 9] = [
        (Fault::CrashCoordinator, 14),
        (Fault::CrashElection, 14),
        (Fault::CrashReload, 8),
        (Fault::Kill, 14),
        (Fault::Stop, 10),
        (Fault::Cut, 12),
        (Fault::Delay, 10),
        (Fault::Resign, 14),
        (Fault::EtcdRestart, 4),
    ];

    pub(super) fn pick(rng: &mut StdRng) -> Self {
        let total: u32 = Self::WEIGHTS.iter().map(|(_, weight)| weight).sum();
        let mut roll = rng.random_range(0..total);
        for (fault, weight) in Self::WEIGHTS {
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
            Fault::Delay => "delay",
            Fault::Resign => "resign",
            Fault::EtcdRestart => "etcd-restart",
        }
    }

    /// How long after the fault a healthy node must serve.
    pub(super) fn bound(self) -> Duration {
        match self {
            // A crashed actor resigns at once: a standby wins in milliseconds.
            Fault::CrashCoordinator | Fault::CrashElection | Fault::Resign | Fault::Delay => {
                Duration::from_secs(5)
            }
            // Up to three reloads crash before one gets through.
            Fault::CrashReload => Duration::from_secs(8),
            // The leader's lease must expire first.
            Fault::Kill | Fault::Stop | Fault::Cut => TTL + Duration::from_secs(3),
            Fault::EtcdRestart => Duration::from_secs(15),
        }
    }
}

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
    /// Only samples sent from here on count.
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
    /// Injects `fault` on `node` (the leader, at `epoch`), waits for a
    /// healthy node to serve and for the fault's repair, and says how it went.
    pub(super) async fn inject(
        &mut self,
        index: usize,
        fault: Fault,
        node: usize,
        epoch: i64,
        rng: &mut StdRng,
    ) -> anyhow::Result<FaultRecord> {
        let at = Instant::now();
        let mut recovery = Recovery {
            from: at,
            newer_than: Some(epoch),
            or_kept: None,
        };
        let mut repair = None;
        let mut probe = None;
        let mut target = Some(node);
        let detail = match fault {
            Fault::CrashCoordinator | Fault::CrashElection => {
                let name = match fault {
                    Fault::CrashCoordinator => "crash-coordinator",
                    _ => "crash-election",
                };
                match self.inject_actor_fault(node, name).await {
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
            Fault::CrashReload => {
                let mut armed = Vec::new();
                for peer in 0..NODES {
                    if let Ok(true) = self.inject_actor_fault(peer, "crash-reload").await {
                        armed.push(peer.to_string());
                    }
                }
                match self.inject_actor_fault(node, "crash-coordinator").await {
                    Ok(true) => format!(
                        "reload crash armed on nodes [{}], then the coordinator crashed",
                        armed.join(", ")
                    ),
                    outcome => {
                        recovery.newer_than = None;
                        format!(
                            "reload crash armed on nodes [{}], coordinator crash not injected ({outcome:?})",
                            armed.join(", ")
                        )
                    }
                }
            }
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
            Fault::Cut => {
                let impairment = self.recorder.begin(Some(node), ImpairmentKind::Cut);
                self.proxies[node].cut();
                self.recorder.in_force(impairment);
                let lasts = Duration::from_millis(rng.random_range(500..=4000));
                repair = Some((at + lasts, Repair::Heal(node, impairment)));
                // A cut shorter than the renew deadline may keep its term.
                recovery.or_kept = Some(node);
                format!("link cut for {} ms", lasts.as_millis())
            }
            Fault::Delay => {
                let impairment = self.recorder.begin(Some(node), ImpairmentKind::Delayed);
                self.proxies[node].delay(LINK_DELAY);
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
            Fault::Resign => match self.resign(node).await {
                Ok(()) => "resigned".to_owned(),
                Err(error) => {
                    recovery.newer_than = None;
                    format!("resign failed: {error:#}")
                }
            },
            Fault::EtcdRestart => {
                target = None;
                let impairment = self.recorder.begin(None, ImpairmentKind::EtcdDown);
                self.etcd.kill()?;
                self.etcd.restart().await.context("restarting etcd")?;
                self.recorder.end(impairment);
                // Nothing served while etcd was down can be told apart from a
                // leader that had not noticed yet: count from etcd's return.
                recovery.from = Instant::now();
                recovery.newer_than = None;
                format!("down for {} ms", at.elapsed().as_millis())
            }
        };
        let probe = probe.map(|node| Probe {
            node,
            epoch,
            client: CLIENTS + index,
        });
        let (recovered, probed) = self
            .wait_recovery(at, fault.bound(), recovery, repair, probe)
            .await?;
        let detail = match probed {
            Some(outcome) => format!("{detail}; {outcome}"),
            None => detail,
        };
        Ok(FaultRecord {
            index,
            kind: fault.name(),
            node: target,
            epoch,
            at,
            bound: fault.bound(),
            recovered,
            detail,
            clients_paused: None,
        })
    }

    /// Waits until a healthy node serves (as `recovery` says) or `bound`
    /// passes, carrying out `repair` when it is due; returns when both are
    /// done. The time from `at` to the answer of the first sample that
    /// shows the recovery, if any.
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
                        self.proxies[node].heal();
                        self.recorder.end(impairment);
                    }
                }
                repair = None;
                repaired_at = Some(Instant::now());
            }
            if recovered.is_none() {
                let history = self.recorder.lock();
                for sample in &history.samples[cursor..] {
                    if sample.sent >= recovery.from
                        && sample.state == State::Serving
                        && recovery.newer_than.is_none_or(|old| sample.epoch > old)
                        && !history.unfit(sample.node, sample.sent)
                    {
                        recovered = Some(sample.received.saturating_duration_since(at));
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
                recovered = kept_term(&self.recorder, node, old, at, repaired);
            }
            // Once a successor serves, and while the old leader is still
            // frozen: see that a client that has not heard of the successor
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
            let gave_up = recovered.is_none() && at.elapsed() > bound;
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

    /// Asks `node`'s Faults service to crash one of the role's actors.
    pub(super) async fn inject_actor_fault(
        &self,
        node: usize,
        fault: &str,
    ) -> anyhow::Result<bool> {
        let mut faults = FaultsClient::new(self.control[node].clone());
        let request = InjectRequest {
            role: ROLE.to_owned(),
            fault: fault.to_owned(),
        };
        let answer = tokio::time::timeout(Duration::from_secs(2), faults.inject(request))
            .await
            .context("no answer within 2 s")??;
        Ok(answer.into_inner().injected)
    }

    /// A graceful handover of the role by `node`.
    pub(super) async fn resign(&self, node: usize) -> anyhow::Result<()> {
        let mut coordination = CoordinationClient::new(self.control[node].clone());
        let request = ResignRequest {
            role: ROLE.to_owned(),
        };
        tokio::time::timeout(Duration::from_secs(10), coordination.resign(request))
            .await
            .context("no answer within 10 s")??;
        Ok(())
    }
}
