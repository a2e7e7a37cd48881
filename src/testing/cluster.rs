//! A multi-member etcd cluster on loopback ports, whose members can be killed, restarted and frozen one at a time.

use std::time::{Duration, Instant};

use futures::future::{join_all, try_join_all};

use super::server::{Launch, Readiness, peer_url};
use super::{EtcdServer, TestingError, free_loopback_port_list};
use crate::config::EtcdConfig;

/// Three (or `n`) etcd members forming one cluster on 127.0.0.1, each with
/// its own temporary data directory. Members are addressed by index, in the
/// order of [`endpoints`](Self::endpoints). Dropping the cluster kills every
/// member and removes their directories.
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

/// Why forming a cluster failed on one attempt.
enum Failed {
    /// A member lost a port to another process: worth a retry on new ports.
    PortTaken(String),
    Error(TestingError),
}

impl EtcdCluster {
    /// How long one member may take to answer a leader probe: a paused
    /// member never answers, and must not hold [`leader`](Self::leader) up.
    const STATUS_WITHIN: Duration = Duration::from_secs(1);

    /// Starts `members` etcd members as one new cluster on free loopback
    /// ports and waits until every member answers and one of them leads.
    /// A start that loses a port to another process is retried on new ones.
    pub async fn start(members: usize) -> Result<Self, TestingError> {
        if members == 0 {
            return Err(TestingError::StartFailed {
                message: "a cluster needs at least one member".to_owned(),
                log: String::new(),
            });
        }
        let mut attempt = 1;
        loop {
            match Self::attempt(members).await {
                Ok(cluster) => {
                    cluster.wait_for_leader().await?;
                    return Ok(cluster);
                }
                Err(Failed::PortTaken(_)) if attempt < EtcdServer::START_ATTEMPTS => {
                    attempt += 1;
                }
                Err(Failed::PortTaken(log)) => {
                    return Err(TestingError::StartFailed {
                        message: format!(
                            "a port was already in use on each of {} attempts",
                            EtcdServer::START_ATTEMPTS
                        ),
                        log,
                    });
                }
                Err(Failed::Error(error)) => return Err(error),
            }
        }
    }

    /// Spawns every member, then waits for all of them: a member of a new
    /// cluster serves only once a quorum of its peers runs.
    async fn attempt(count: usize) -> Result<Self, Failed> {
        let ports = free_loopback_port_list(2 * count).map_err(Failed::Error)?;
        let (clients, peers) = ports.split_at(count);
        let name = |member: usize| format!("standin-test-{member}");
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(member, &port)| format!("{}={}", name(member), peer_url(port)))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(count);
        for member in 0..count {
            let launch = |tls| Launch {
                name: name(member),
                client_port: clients[member],
                peer_port: peers[member],
                initial_cluster: initial_cluster.clone(),
                cluster_token: format!("standin-test-{}", peers[0]),
                tls,
                auth_token_ttl: None,
            };
            // A failed spawn drops the members already running, which kills them.
            members.push(EtcdServer::spawn_member(launch, false).map_err(Failed::Error)?);
        }
        // The first failure ends the wait, so a member that lost its port
        // is retried at once instead of after its peers' start deadline.
        try_join_all(members.iter_mut().map(|member| async {
            match member.wait_until_ready().await {
                Ok(Readiness::Serving) => Ok(()),
                Ok(Readiness::PortTaken { log }) => Err(Failed::PortTaken(log)),
                Err(error) => Err(Failed::Error(error)),
            }
        }))
        .await?;
        Ok(Self { members })
    }

    /// Polls [`leader`](Self::leader) until one member leads.
    async fn wait_for_leader(&self) -> Result<usize, TestingError> {
        let started = Instant::now();
        loop {
            match self.leader().await {
                Ok(leader) => return Ok(leader),
                Err(error) if started.elapsed() >= EtcdServer::READY_WITHIN => return Err(error),
                Err(_) => tokio::time::sleep(EtcdServer::POLL).await,
            }
        }
    }

    /// How many members the cluster has (killed ones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members; never true for a started one.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:PORT` of every member, in member order: what `etcd.endpoints` takes.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// `127.0.0.1:PORT` of `member`.
    ///
    /// # Panics
    ///
    /// When the cluster has no such member.
    pub fn endpoint(&self, member: usize) -> String {
        self.members[member].endpoint()
    }

    /// The [`EtcdServer`] of `member`, for what the cluster does not wrap
    /// (its `client()` to that member only, `etcdctl`, `temp_dir`).
    pub fn member(&self, member: usize) -> Result<&EtcdServer, TestingError> {
        self.members.get(member).ok_or(TestingError::NoSuchMember {
            member,
            members: self.members.len(),
        })
    }

    fn member_mut(&mut self, member: usize) -> Result<&mut EtcdServer, TestingError> {
        let members = self.members.len();
        self.members
            .get_mut(member)
            .ok_or(TestingError::NoSuchMember { member, members })
    }

    /// A client to all members, as a node configured with every endpoint
    /// builds its own; its timeouts are short enough that a test against a
    /// cluster without quorum fails instead of hanging.
    ///
    /// The client spreads requests over the endpoints: one sent to a killed
    /// member fails and the next goes elsewhere (so poll), but one sent to a
    /// paused member waits out the 5s request timeout. To talk to one member
    /// only, use [`member`](Self::member)`(i)?.client()`.
    pub async fn client(&self) -> Result<etcd_client::Client, TestingError> {
        let config = EtcdConfig {
            endpoints: self.endpoints(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            ..EtcdConfig::default()
        };
        Ok(crate::etcd::connect(&config).await?)
    }

    /// The index of the member that is the raft leader now: of the members
    /// that answer a status request within a second, the one whose own
    /// status names itself leader, at the highest raft term (a member frozen
    /// through an election may still believe in an older term). Fails with
    /// [`TestingError::NoLeader`] during an election or without quorum, so a
    /// test polls it until it names the member it expects.
    pub async fn leader(&self) -> Result<usize, TestingError> {
        let running: Vec<_> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, member)| !member.killed)
            .collect();
        let answers = join_all(running.iter().map(|&(index, member)| async move {
            let status = tokio::time::timeout(Self::STATUS_WITHIN, async {
                member.client().await.ok()?.status().await.ok()
            })
            .await
            .ok()
            .flatten()?;
            let id = status.header()?.member_id();
            Some((index, status.leader() == id, status.raft_term()))
        }))
        .await;
        let answers: Vec<_> = answers.into_iter().flatten().collect();
        answers
            .iter()
            .filter(|(_, leads, _)| *leads)
            .max_by_key(|(_, _, term)| *term)
            .map(|(index, _, _)| *index)
            .ok_or(TestingError::NoLeader {
                answered: answers.len(),
                running: running.len(),
            })
    }

    /// Kills `member` with SIGKILL, keeping its data directory and ports for
    /// [`restart`](Self::restart).
    pub fn kill(&mut self, member: usize) -> Result<(), TestingError> {
        self.member_mut(member)?.kill()
    }

    /// Starts `member` again on its ports with its data directory (a running
    /// one is killed first); it rejoins the cluster as an existing member and
    /// catches up. Waits until it answers, which needs a quorum running.
    pub async fn restart(&mut self, member: usize) -> Result<(), TestingError> {
        self.member_mut(member)?.restart().await
    }

    /// Freezes `member` (SIGSTOP): its peers and clients see a member that
    /// holds connections open and answers nothing.
    pub fn pause(&self, member: usize) -> Result<(), TestingError> {
        self.member(member)?.pause()
    }

    /// Thaws a paused `member` (SIGCONT).
    pub fn resume(&self, member: usize) -> Result<(), TestingError> {
        self.member(member)?.resume()
    }
}
