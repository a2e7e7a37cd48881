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
        let statuses = self.statuses().await;
        let answered: Vec<&MemberStatus> = statuses.iter().flatten().collect();
        answered
            .iter()
            .filter(|status| status.leads())
            .max_by_key(|status| status.raft_term)
            .map(|status| status.member)
            .ok_or(TestingError::NoLeader {
                answered: answered.len(),
                running: self.running(),
            })
    }

    /// Waits until the cluster is whole again after a fault: every member
    /// runs, answers, and follows one raft leader (so a restarted or thawed
    /// member has rejoined); returns that leader's index. Fails with
    /// [`TestingError::TimedOut`], showing what each member last said.
    pub async fn wait_until_whole(&self, deadline: Duration) -> Result<usize, TestingError> {
        let last = std::sync::Mutex::new(String::new());
        let whole = || async {
            let statuses = self.statuses().await;
            *last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = format!("{statuses:?}");
            let answered: Vec<&MemberStatus> =
                statuses.iter().map(Option::as_ref).collect::<Option<_>>()?;
            let leader_id = answered.first()?.leader_id;
            if leader_id == 0 || answered.iter().any(|status| status.leader_id != leader_id) {
                return None;
            }
            answered
                .iter()
                .find(|status| status.member_id == leader_id)
                .map(|status| status.member)
        };
        super::waits::wait_until_showing(
            "every etcd member following one leader",
            deadline,
            whole,
            || {
                last.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone()
            },
        )
        .await
    }

    /// Hands raft leadership to `member`, as `etcdctl move-leader` does: the
    /// request goes to the current leader, which makes `member` campaign at
    /// once and steps down. Fails when `member` leads already, or when no
    /// member leads or the leader refuses (an election under way).
    pub async fn move_leader(&self, member: usize) -> Result<(), TestingError> {
        let statuses = self.statuses().await;
        let target = statuses
            .get(member)
            .ok_or(TestingError::NoSuchMember {
                member,
                members: self.members.len(),
            })?
            .as_ref()
            .ok_or_else(|| TestingError::MoveLeaderFailed {
                member,
                message: "it does not answer".to_owned(),
            })?;
        let leader = self.leader().await?;
        if leader == member {
            return Err(TestingError::MoveLeaderFailed {
                member,
                message: "it leads already".to_owned(),
            });
        }
        let mut client = self.members[leader].client().await?;
        client
            .move_leader(target.member_id)
            .await
            .map_err(|error| TestingError::MoveLeaderFailed {
                member,
                message: error.to_string(),
            })?;
        Ok(())
    }

    /// Each member's status, by index: `None` for a killed member and for
    /// one that does not answer within [`Self::STATUS_WITHIN`] (a paused
    /// member never answers, and must not hold the caller up).
    async fn statuses(&self) -> Vec<Option<MemberStatus>> {
        join_all(
            self.members
                .iter()
                .enumerate()
                .map(|(index, member)| async move {
                    if member.killed {
                        return None;
                    }
                    let status = tokio::time::timeout(Self::STATUS_WITHIN, async {
                        member.client().await.ok()?.status().await.ok()
                    })
                    .await
                    .ok()
                    .flatten()?;
                    Some(MemberStatus {
                        member: index,
                        member_id: status.header()?.member_id(),
                        leader_id: status.leader(),
                        raft_term: status.raft_term(),
                    })
                }),
        )
        .await
    }

    /// Members not killed.
    fn running(&self) -> usize {
        self.members.iter().filter(|member| !member.killed).count()
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

/// What one member's status call said.
#[derive(Debug)]
struct MemberStatus {
    /// Its index in the cluster.
    member: usize,
    /// Its raft ID.
    member_id: u64,
    /// The raft ID of the leader it follows; 0 for none.
    leader_id: u64,
    raft_term: u64,
}

impl MemberStatus {
    fn leads(&self) -> bool {
        self.leader_id == self.member_id
    }
}
