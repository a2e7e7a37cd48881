//! Keeps a client's calls away from etcd members that do not answer: each member is probed, and one that fails is taken out of the client's balancer until it answers again.
//!
//! The client balances calls across `etcd.endpoints` and connects to each
//! member lazily, so a dead member stays eligible: every call the balancer
//! gives it fails at once ("connection refused"), and with one member of
//! three down a campaign, a reload or an activation kept failing on one of
//! its calls. Go's etcd client avoids this with gRPC health checking; this is
//! the same idea on top of the balancer's add/remove of endpoints.

use std::time::Duration;

use etcd_client::Client;

use crate::config::EtcdConfig;
use crate::task::OwnedTask;

/// Why a member is taken out of the balancer, or could not be.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// No client could be made for the member (with credentials, the client
    /// authenticates as it connects).
    #[error("cannot connect to etcd member {endpoint}: {source}")]
    ConnectFailed {
        /// The member's URL.
        endpoint: String,
        /// Why.
        #[source]
        source: crate::etcd::EtcdError,
    },
    /// The member refused or failed its status call.
    #[error("etcd member {endpoint} fails its status call: {source}")]
    StatusFailed {
        /// The member's URL.
        endpoint: String,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The member did not answer in time (stopped, or its host is).
    #[error("etcd member {endpoint} did not answer its status call within {after:?}")]
    NoAnswer {
        /// The member's URL.
        endpoint: String,
        /// The probe's bound.
        after: Duration,
    },
    /// The member answers but knows no raft leader: cut from the others, it
    /// cannot serve a write.
    #[error("etcd member {endpoint} knows no raft leader")]
    NoRaftLeader {
        /// The member's URL.
        endpoint: String,
    },
    /// The client refused to add or remove an endpoint.
    #[error("cannot {action} etcd endpoint {endpoint} in the client's balancer: {source}")]
    BalancerRefused {
        /// `add` or `remove`.
        action: &'static str,
        /// The member's URL.
        endpoint: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
}

/// How often every member is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Consecutive failed probes that take a member out: one failure may be a
/// scheduling hiccup on a busy host, and taking a member out breaks the
/// watches and keepalive streams it carries.
const FAILURES_TO_REMOVE: u32 = 2;

/// A change to the balancer, by endpoint index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Give calls to this member again.
    Add(usize),
    /// Stop giving calls to this member.
    Remove(usize),
}

/// Which members the balancer holds, decided from probe results alone, so
/// the rule is tested without etcd.
#[derive(Debug, Clone)]
pub(super) struct Balance {
    failures: Vec<u32>,
    in_balancer: Vec<bool>,
}

impl Balance {
    /// Every one of `members` in the balancer, as the client starts.
    pub(super) fn new(members: usize) -> Self {
        Self {
            failures: vec![0; members],
            in_balancer: vec![true; members],
        }
    }

    /// Records a probe of `member` and says how the balancer must change:
    /// it holds the members that answer, or every member when none does
    /// (calls fail either way, and the first member back is then used at
    /// once, without waiting for its probe).
    pub(super) fn on_probe(&mut self, member: usize, answered: bool) -> Vec<Change> {
        self.failures[member] = if answered {
            0
        } else {
            self.failures[member].saturating_add(1)
        };
        let healthy: Vec<bool> = self
            .failures
            .iter()
            .map(|&failures| failures < FAILURES_TO_REMOVE)
            .collect();
        let wanted = if healthy.contains(&true) {
            healthy
        } else {
            vec![true; healthy.len()]
        };
        let mut changes = Vec::new();
        for (index, (&want, held)) in wanted.iter().zip(&mut self.in_balancer).enumerate() {
            if want != *held {
                *held = want;
                changes.push(if want {
                    Change::Add(index)
                } else {
                    Change::Remove(index)
                });
            }
        }
        changes
    }
}

/// The probing of a client's members; it stops when this is dropped.
#[derive(Debug)]
pub struct Steering {
    _probes: OwnedTask,
}

/// Starts probing the members of `config.endpoints` on behalf of `client`
/// (built from the same config by [`crate::etcd::connect`]). `None` with a
/// single endpoint: there is nowhere else to send calls.
pub fn steer(client: &Client, config: &EtcdConfig) -> Option<Steering> {
    if config.endpoints.len() < 2 {
        return None;
    }
    Some(Steering {
        _probes: OwnedTask::spawn(probe_forever(client.clone(), config.clone())),
    })
}

/// One etcd member as the prober sees it.
struct Member {
    /// Its URL, as the balanced client knows it.
    url: String,
    /// `etcd.*` with this member as the only endpoint.
    config: EtcdConfig,
    /// A client of this member alone, made on first use and kept: a probe
    /// must reach exactly this member, which the balanced client cannot promise.
    client: Option<Client>,
}

impl Member {
    /// Asks the member for its status within `bound`: it must answer and know
    /// a raft leader.
    async fn probe(&mut self, bound: Duration) -> Result<(), EndpointsError> {
        let url = self.url.clone();
        tokio::time::timeout(bound, self.status())
            .await
            .unwrap_or(Err(EndpointsError::NoAnswer {
                endpoint: url,
                after: bound,
            }))
    }

    async fn status(&mut self) -> Result<(), EndpointsError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let client = crate::etcd::connect(&self.config).await.map_err(|source| {
                    EndpointsError::ConnectFailed {
                        endpoint: self.url.clone(),
                        source,
                    }
                })?;
                self.client.insert(client)
            }
        };
        let status = client
            .maintenance_client()
            .status()
            .await
            .map_err(|source| EndpointsError::StatusFailed {
                endpoint: self.url.clone(),
                source,
            })?;
        if status.leader() == 0 {
            return Err(EndpointsError::NoRaftLeader {
                endpoint: self.url.clone(),
            });
        }
        Ok(())
    }
}

async fn probe_forever(client: Client, config: EtcdConfig) {
    let mut members: Vec<Member> = config
        .endpoints
        .iter()
        .map(|endpoint| Member {
            url: crate::etcd::endpoint_url(endpoint, config.tls.is_some()),
            config: EtcdConfig {
                endpoints: vec![endpoint.clone()],
                ..config.clone()
            },
            client: None,
        })
        .collect();
    let urls: Vec<String> = members.iter().map(|member| member.url.clone()).collect();
    let mut balance = Balance::new(members.len());
    let bound = config.request_timeout.min(PROBE_INTERVAL * 2);
    let mut every = tokio::time::interval(PROBE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let probes = members.iter_mut().map(|member| member.probe(bound));
        let answers = futures::future::join_all(probes).await;
        for (member, answer) in answers.iter().enumerate() {
            for change in balance.on_probe(member, answer.is_ok()) {
                if let Err(error) = apply(&client, &urls, change, &answers).await {
                    tracing::warn!("{error}");
                }
            }
        }
    }
}

async fn apply(
    client: &Client,
    urls: &[String],
    change: Change,
    answers: &[Result<(), EndpointsError>],
) -> Result<(), EndpointsError> {
    let (action, index, result) = match change {
        Change::Add(index) => ("add", index, client.add_endpoint(&urls[index]).await),
        Change::Remove(index) => ("remove", index, client.remove_endpoint(&urls[index]).await),
    };
    let endpoint = urls[index].clone();
    result.map_err(|source| EndpointsError::BalancerRefused {
        action,
        endpoint: endpoint.clone(),
        source,
    })?;
    match (change, &answers[index]) {
        (Change::Remove(_), Err(failure)) => {
            tracing::warn!(endpoint, "calls avoid this etcd member: {failure}");
        }
        (Change::Remove(_), Ok(())) => {
            tracing::info!(endpoint, "calls avoid this etcd member");
        }
        (Change::Add(_), Ok(())) => {
            tracing::info!(endpoint, "etcd member answers again: calls go to it");
        }
        (Change::Add(_), Err(failure)) => {
            tracing::warn!(
                endpoint,
                "no etcd member answers, so calls go to every member: {failure}"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_all(balance: &mut Balance, answered: &[bool]) -> Vec<Change> {
        answered
            .iter()
            .enumerate()
            .flat_map(|(member, &ok)| balance.on_probe(member, ok))
            .collect()
    }

    #[test]
    fn a_member_is_taken_out_after_two_failed_probes_and_back_after_one_answer() {
        let mut balance = Balance::new(3);
        assert_eq!(probe_all(&mut balance, &[true, false, true]), vec![]);
        assert_eq!(
            probe_all(&mut balance, &[true, false, true]),
            vec![Change::Remove(1)]
        );
        assert_eq!(probe_all(&mut balance, &[true, false, true]), vec![]);
        assert_eq!(
            probe_all(&mut balance, &[true, true, true]),
            vec![Change::Add(1)]
        );
    }

    #[test]
    fn one_answer_between_failures_keeps_a_member_in() {
        let mut balance = Balance::new(2);
        for _ in 0..5 {
            assert_eq!(probe_all(&mut balance, &[false, true]), vec![]);
            assert_eq!(probe_all(&mut balance, &[true, true]), vec![]);
        }
    }

    #[test]
    fn when_no_member_answers_every_member_is_kept() {
        let mut balance = Balance::new(3);
        probe_all(&mut balance, &[true, false, false]);
        assert_eq!(
            probe_all(&mut balance, &[true, false, false]),
            vec![Change::Remove(1), Change::Remove(2)]
        );
        // The last answering member fails too: everyone goes back in.
        assert_eq!(balance.on_probe(0, false), vec![]);
        assert_eq!(
            balance.on_probe(0, false),
            vec![Change::Add(1), Change::Add(2)]
        );
        // One answers again: the others, still failing, go out.
        assert_eq!(
            balance.on_probe(2, true),
            vec![Change::Remove(0), Change::Remove(1)]
        );
    }
}
