//! Faults of etcd itself: the single server restarted, or a cluster's members killed, frozen and cut off from a node, its leadership moved, its quorum lost.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;

use super::*;
use crate::campaign::history::{ImpairmentKind, State};

/// How long etcd may take to be whole again after a repair: every member
/// running, answering and following one leader.
const ETCD_WHOLE_WITHIN: Duration = Duration::from_secs(30);

/// How long after etcd stopped renewing leases a node may still say it
/// serves, or answer a request asked for then: a term is trusted for the
/// renew deadline (two thirds of the TTL by default) after its last renewal
/// was sent, and a status or a request is answered a little after it was
/// asked, later on two busy cores.
const SERVES_AFTER_RENEWALS_STOP_AT_MOST: Duration =
    Duration::from_millis(2 * TTL.as_millis() as u64 / 3 + 500);

/// How often the member left leading is asked whether it still leads.
const STEP_DOWN_POLL: Duration = Duration::from_millis(20);

impl Cluster {
    /// Injects `fault`, one of etcd's, while `node` leads the role under
    /// test; waits out its duration, repairs it, and waits until etcd is
    /// whole again (a stall when it is not). Says what it did.
    pub(super) async fn inject_etcd_fault(
        &mut self,
        fault: Fault,
        node: usize,
        rng: &mut StdRng,
    ) -> anyhow::Result<String> {
        let members = self.etcd.len();
        let leader = self
            .etcd
            .wait_until_whole(ETCD_WHOLE_WITHIN)
            .await
            .context("etcd was not whole before the fault")?;
        let detail = match fault {
            Fault::EtcdRestart => {
                let impairment = self.recorder.begin(None, ImpairmentKind::EtcdDown);
                let at = Instant::now();
                self.etcd.kill(0)?;
                self.etcd.restart(0).await.context("restarting etcd")?;
                self.recorder.end(impairment);
                format!("down for {} ms", at.elapsed().as_millis())
            }
            Fault::EtcdMemberKill | Fault::EtcdLeaderKill => {
                let member = match fault {
                    Fault::EtcdLeaderKill => leader,
                    _ => another_member(rng, members, leader),
                };
                let down = Duration::from_millis(rng.random_range(500..=3000));
                let impairment = self.recorder.begin(None, ImpairmentKind::EtcdMemberDown);
                self.etcd.kill(member)?;
                self.recorder.in_force(impairment);
                tokio::time::sleep(down).await;
                let restarting = Instant::now();
                self.etcd
                    .restart(member)
                    .await
                    .with_context(|| format!("restarting etcd member {member}"))?;
                self.recorder.end(impairment);
                format!(
                    "member {member}{} killed, restarted after {} ms, answering {} ms later",
                    leading(member, leader),
                    down.as_millis(),
                    restarting.elapsed().as_millis()
                )
            }
            Fault::EtcdMemberFreeze => {
                let member = rng.random_range(0..members);
                let frozen = Duration::from_millis(rng.random_range(500..=3000));
                let impairment = self.recorder.begin(None, ImpairmentKind::EtcdMemberFrozen);
                self.etcd.pause(member)?;
                self.recorder.in_force(impairment);
                tokio::time::sleep(frozen).await;
                self.etcd.resume(member)?;
                self.recorder.end(impairment);
                format!(
                    "member {member}{} frozen for {} ms",
                    leading(member, leader),
                    frozen.as_millis()
                )
            }
            Fault::EtcdNodeCut => {
                let member = rng.random_range(0..members);
                let cut = Duration::from_millis(rng.random_range(1000..=4000));
                let impairment = self
                    .recorder
                    .begin(Some(node), ImpairmentKind::EtcdMemberCut);
                self.proxies[node][member].cut();
                self.recorder.in_force(impairment);
                tokio::time::sleep(cut).await;
                self.proxies[node][member].heal();
                self.recorder.end(impairment);
                format!(
                    "link to member {member}{} cut for {} ms",
                    leading(member, leader),
                    cut.as_millis()
                )
            }
            Fault::EtcdQuorumLoss => {
                // A majority frozen: the rest cannot make a quorum.
                let mut frozen = rand::seq::index::sample(rng, members, members / 2 + 1).into_vec();
                frozen.sort_unstable();
                let lasts = Duration::from_millis(rng.random_range(4000..=6000));
                // Asked, while the rest are frozen, whether it still leads:
                // its own client, connected before.
                let kept_leader = match frozen.contains(&leader) {
                    true => None,
                    false => Some(self.etcd.member(leader)?.client().await?),
                };
                let impairment = self.recorder.begin(
                    None,
                    ImpairmentKind::EtcdNoQuorum {
                        serves_at_most: lasts,
                    },
                );
                for &member in &frozen {
                    self.etcd.pause(member)?;
                }
                let frozen_at = Instant::now();
                self.recorder.in_force(impairment);
                let until = frozen_at + lasts;
                // etcd renews leases until its leader steps down: at once
                // when the leader is frozen, else once raft's quorum check
                // finds it alone (after one to two election timeouts).
                let renewals_stopped = match kept_leader {
                    None => Some(frozen_at),
                    Some(mut client) => stepped_down(&mut client, until).await,
                };
                tokio::time::sleep_until(until.into()).await;
                for &member in &frozen {
                    self.etcd.resume(member)?;
                }
                self.recorder.end(impairment);
                // Unmeasured (the leader still led at the end): nothing is checked.
                let serves_at_most = renewals_stopped.map_or(lasts, |at| {
                    at.duration_since(frozen_at) + SERVES_AFTER_RENEWALS_STOP_AT_MOST
                });
                self.recorder.lock().impairments[impairment].kind =
                    ImpairmentKind::EtcdNoQuorum { serves_at_most };
                let served = self.last_served_into(impairment);
                let stopped = match (frozen.contains(&leader), renewals_stopped) {
                    (true, _) => format!("member {leader}, frozen, led"),
                    (false, Some(at)) => format!(
                        "member {leader} led and stepped down {} ms into it",
                        at.duration_since(frozen_at).as_millis()
                    ),
                    (false, None) => format!("member {leader} led and never stepped down"),
                };
                format!(
                    "members {frozen:?} frozen for {} ms ({stopped}); {served}",
                    lasts.as_millis()
                )
            }
            Fault::EtcdMoveLeader => {
                let to = another_member(rng, members, leader);
                match self.etcd.move_leader(to).await {
                    Ok(()) => format!("leadership moved from member {leader} to member {to}"),
                    Err(error) => format!("not injected: {error}"),
                }
            }
            other => anyhow::bail!("{} is not a fault of etcd", other.name()),
        };
        if let Err(error) = self.etcd.wait_until_whole(ETCD_WHOLE_WITHIN).await {
            let stall = format!("after {}: etcd was not whole again: {error}", fault.name());
            println!("campaign: {stall}");
            self.recorder.lock().stalls.push(stall);
        }
        Ok(detail)
    }

    /// How far into impairment `index` (ended) a node last said it served,
    /// and a client last got an answer to a request it asked for then.
    fn last_served_into(&self, index: usize) -> String {
        let history = self.recorder.lock();
        let impairment = history.impairments[index];
        let Some(until) = impairment.until else {
            return "still in force".to_owned();
        };
        let within = |at: Instant| impairment.in_force <= at && at <= until;
        let into = |at: Instant| {
            at.saturating_duration_since(impairment.in_force)
                .as_millis()
        };
        let said = history
            .samples
            .iter()
            .filter(|s| s.state == State::Serving && within(s.sent))
            .map(|s| s.sent)
            .max();
        let asked = history
            .batches
            .iter()
            .map(|b| b.sent)
            .chain(history.kv_ops.iter().map(|o| o.sent))
            .filter(|&sent| within(sent))
            .max();
        let shown = |at: Option<Instant>| {
            at.map_or_else(
                || "never".to_owned(),
                |at| format!("{} ms into it", into(at)),
            )
        };
        format!(
            "last said serving {}, last answered a request asked {}",
            shown(said),
            shown(asked)
        )
    }
}

/// When the member `client` talks to, which led as the rest froze, no
/// longer leads (raft's quorum check stepped it down), polled until `until`;
/// `None` if it still led then.
async fn stepped_down(client: &mut etcd_client::Client, until: Instant) -> Option<Instant> {
    while Instant::now() < until {
        let stepped = match tokio::time::timeout(STEP_DOWN_POLL * 10, client.status()).await {
            Ok(Ok(status)) => status
                .header()
                .is_some_and(|header| header.member_id() != status.leader()),
            // The test kit's clients require a leader, as every node's do:
            // a member without one refuses the call.
            Ok(Err(error)) => error.to_string().contains("no leader"),
            Err(_) => false,
        };
        if stepped {
            return Some(Instant::now());
        }
        tokio::time::sleep(STEP_DOWN_POLL).await;
    }
    None
}

/// A member other than `leader`, at random.
fn another_member(rng: &mut StdRng, members: usize, leader: usize) -> usize {
    (leader + rng.random_range(1..members)) % members
}

/// " (the leader)" when `member` is `leader`.
fn leading(member: usize, leader: usize) -> &'static str {
    if member == leader {
        " (the leader)"
    } else {
        ""
    }
}
