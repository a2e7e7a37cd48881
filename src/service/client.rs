//! A client that finds the active instance of a role by watching its election in etcd, and follows it across failovers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::{Code, Request, Status};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::etcd::EtcdError;
use crate::etcd::WatchHub;
use crate::etcd::recipe::{self, Leader};
use crate::etcd::session::Layout;
use crate::service::connect::{ConnectError, NodeChannel, NodeConnector};
use crate::service::grpc::proto::kv_client::KvClient as KvStub;
use crate::service::grpc::proto::{GetRequest, GetResponse, PutRequest, PutResponse};
use crate::service::grpc::{EPOCH_HEADER, OVERLOADED_HEADER};
use crate::task::OwnedTask;

pub mod admission;
pub mod tso;

pub use admission::AdmissionError;
use admission::Outcome;
pub use tso::{TsoClient, TsoClientOptions, TsoClientStats};

/// Failures of calls through a [`RoleClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// etcd could not be reached to find the leader.
    #[error(transparent)]
    EtcdUnavailable(#[from] EtcdError),
    /// The `client` config section names a file that cannot be used.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The call kept failing with retryable errors until the caller's deadline.
    #[error("{role}: no answer from an active instance within {deadline:?} (last: {last})")]
    DeadlineExceeded {
        /// The role called.
        role: String,
        /// The caller's deadline.
        deadline: Duration,
        /// The last error seen, or that no leader was known.
        last: String,
    },
    /// The call never left this client: it throttles itself while the
    /// leader refuses calls as overloaded, or every call slot stayed taken.
    #[error("{role}: not sent, this client is overloaded: {reason}")]
    Overloaded {
        /// The role called.
        role: String,
        /// Why the client kept it.
        reason: AdmissionError,
    },
    /// The active instance refused the request for a reason retrying cannot fix.
    #[error("{role}: refused ({:?}): {}{}", status.code(), status.message(), if *in_doubt { " (an earlier try got no answer and may have been applied)" } else { "" })]
    Refused {
        /// The role called.
        role: String,
        /// The refusal.
        status: Status,
        /// Whether an earlier try of this call got no definite answer (it
        /// timed out, broke, or was `UNAVAILABLE`), so it may have been
        /// applied although this one was refused.
        in_doubt: bool,
    },
}

impl ClientError {
    /// Whether the call failed because the leader or this client was
    /// overloaded: it may succeed later, when fewer calls are made. It was
    /// not applied, unless a [`Refused`](Self::Refused) says an earlier try
    /// is `in_doubt`.
    pub fn is_overload(&self) -> bool {
        match self {
            ClientError::Overloaded { .. } => true,
            ClientError::Refused { status, .. } => {
                status.metadata().contains_key(OVERLOADED_HEADER)
            }
            _ => false,
        }
    }
}

/// The largest response a leader watch accepts: etcd-client's default.
const LEADER_WATCH_LIMIT: usize = 4 << 20;

/// Follows a role's leader in etcd: a watch on the election, not polling.
pub struct LeaderWatch {
    leader: watch::Receiver<Option<Leader>>,
    _observer: OwnedTask,
}

impl LeaderWatch {
    /// Starts following the leader of `role` under the layout's election prefix.
    pub fn start(
        client: etcd_client::Client,
        layout: &Layout,
        role: &str,
        retry: Duration,
    ) -> Self {
        let (sender, leader) = watch::channel(None);
        // One watch: a hub of one stream, opened by the observer.
        let watches = WatchHub::new(client, 1, LEADER_WATCH_LIMIT);
        let observer = OwnedTask::spawn(recipe::observe(
            watches,
            layout.election(role),
            retry,
            move |observed| {
                sender.send_replace(observed);
                !sender.is_closed()
            },
        ));
        Self {
            leader,
            _observer: observer,
        }
    }

    /// The leader as last seen.
    pub fn current(&self) -> Option<Leader> {
        self.leader.borrow().clone()
    }

    /// A receiver that sees every leader change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.clone()
    }
}

/// Calls the active instance of one role, following leader changes and
/// retrying `UNAVAILABLE` with backoff within the caller's deadline.
pub struct RoleClient {
    role: String,
    leader: LeaderWatch,
    channels: Mutex<HashMap<String, NodeChannel>>,
    connector: NodeConnector,
    retry: crate::config::BackoffConfig,
    admission: admission::Admission,
    /// Keeps the etcd client's calls off members that stop answering.
    _steering: Option<crate::etcd::Steering>,
}

impl RoleClient {
    /// Connects to etcd as `config` says and starts following `role`;
    /// calls to the leader use `config.client`'s TLS and token.
    pub async fn connect(config: &Config, role: &str) -> Result<Self, ClientError> {
        let connector = NodeConnector::from_config(config)?;
        let etcd = crate::etcd::connect_checked(&config.etcd).await?;
        let layout = Layout::new(&config.etcd.root_path);
        Ok(Self {
            _steering: crate::etcd::steer(&etcd, &config.etcd),
            role: role.to_owned(),
            leader: LeaderWatch::start(etcd, &layout, role, config.etcd.retry.initial),
            channels: Mutex::new(HashMap::new()),
            connector,
            retry: config.etcd.retry.clone(),
            admission: admission::Admission::new(
                config.client.max_in_flight,
                config.client.throttle_percent,
            ),
        })
    }

    /// The leader as last seen in etcd.
    pub fn leader(&self) -> Option<Leader> {
        self.leader.current()
    }

    fn channel(&self, address: &str) -> Result<NodeChannel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self
            .connector
            .lazy(address)
            .map_err(|error| Status::unavailable(format!("bad leader address: {error}")))?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Runs `attempt` against the current leader until it succeeds, fails
    /// with an error retrying cannot fix, or `deadline` passes. `attempt` gets
    /// a channel to the leader (with the client's TLS and token) and the leader's epoch, to send as
    /// `standin-epoch` (see [`with_epoch`]).
    ///
    /// At most `client.maxInFlight` calls are out at once, and while the
    /// leader refuses calls as overloaded the client refuses some itself
    /// (`client.throttlePercent`): both fail with
    /// [`ClientError::Overloaded`], the call never sent.
    pub async fn call<T, F, Fut>(&self, deadline: Duration, attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(NodeChannel, i64) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let _slot = self
            .admission
            .enter(started + deadline)
            .await
            .map_err(|reason| ClientError::Overloaded {
                role: self.role.clone(),
                reason,
            })?;
        let answer = self.call_leader(started, deadline, attempt).await;
        self.admission.record(match &answer {
            Ok(_) => Outcome::Accepted,
            Err(ClientError::Refused { status, .. }) => {
                if status.metadata().contains_key(OVERLOADED_HEADER) {
                    Outcome::Overloaded
                } else {
                    Outcome::Accepted
                }
            }
            Err(_) => Outcome::NoAnswer,
        });
        answer
    }

    async fn call_leader<T, F, Fut>(
        &self,
        started: Instant,
        deadline: Duration,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(NodeChannel, i64) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = Backoff::new(self.retry.clone());
        let mut changes = self.leader.subscribe();
        let mut last = "no leader known yet".to_owned();
        let mut in_doubt = false;
        loop {
            let remaining = deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::DeadlineExceeded {
                    role: self.role.clone(),
                    deadline,
                    last,
                });
            }
            let leader = changes.borrow_and_update().clone();
            if let Some(leader) = leader {
                let outcome = match self.channel(&leader.session.address) {
                    Ok(channel) => {
                        let channel = channel.until(started + deadline);
                        // A frozen or partitioned leader may never answer:
                        // give up on it as soon as etcd reports another one.
                        tokio::select! {
                            outcome = tokio::time::timeout(remaining, attempt(channel, leader.revision)) => outcome,
                            _ = changes.changed() => {
                                last = format!("{} was replaced as leader", leader.session.address);
                                in_doubt = true;
                                continue;
                            }
                        }
                    }
                    Err(status) => Ok(Err(status)),
                };
                match outcome {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(status)) if retryable(&status) => {
                        in_doubt = true;
                        last = format!(
                            "{} at {}: {}",
                            status.code(),
                            leader.session.address,
                            status.message()
                        );
                    }
                    Ok(Err(status)) => {
                        return Err(ClientError::Refused {
                            role: self.role.clone(),
                            status,
                            in_doubt,
                        });
                    }
                    Err(_) => {
                        in_doubt = true;
                        last = format!("{} did not answer in time", leader.session.address);
                    }
                }
            }
            // Retry after the backoff, or as soon as etcd reports another leader.
            let wait = backoff
                .next_delay()
                .min(deadline.saturating_sub(started.elapsed()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
            }
        }
    }
}

/// Whether a call failed in a way another try (or another leader) can fix.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        // Transport failures (a killed node, a reset connection) surface as Unknown.
        Code::Unknown => {
            status.message().contains("transport") || status.message().contains("connection")
        }
        // A request that raced a server's GOAWAY (a node shutting down) was
        // not processed: hyper reports it as an HTTP/2 protocol error.
        Code::Internal => status.message().contains("h2 protocol error"),
        _ => false,
    }
}

/// A request carrying the epoch the client believes leads, so that a deposed
/// node refuses it rather than answering.
pub fn with_epoch<T>(message: T, epoch: i64) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(EPOCH_HEADER, tonic::metadata::MetadataValue::from(epoch));
    request
}

/// A client of the built-in register (`kv` role).
pub struct KvClient {
    role: RoleClient,
}

impl KvClient {
    /// Connects to etcd and follows the `kv` role.
    pub async fn connect(config: &Config) -> Result<Self, ClientError> {
        Ok(Self {
            role: RoleClient::connect(config, "kv").await?,
        })
    }

    /// Sets `key` to `value` on the active register, riding through
    /// failovers until `deadline`. A put retried after a lost answer writes
    /// the same value again, which a register does not mind.
    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        deadline: Duration,
    ) -> Result<PutResponse, ClientError> {
        self.role
            .call(deadline, |channel, epoch| {
                let request = PutRequest {
                    key: key.to_owned(),
                    value: value.clone(),
                };
                async move {
                    let response = KvStub::new(channel).put(with_epoch(request, epoch)).await?;
                    Ok(response.into_inner())
                }
            })
            .await
    }

    /// The value of `key` on the active register, riding through failovers until `deadline`.
    pub async fn get(&self, key: &str, deadline: Duration) -> Result<GetResponse, ClientError> {
        self.role
            .call(deadline, |channel, epoch| {
                let request = GetRequest {
                    key: key.to_owned(),
                };
                async move {
                    let response = KvStub::new(channel).get(with_epoch(request, epoch)).await?;
                    Ok(response.into_inner())
                }
            })
            .await
    }

    /// The leader as last seen in etcd.
    pub fn leader(&self) -> Option<Leader> {
        self.role.leader()
    }
}
