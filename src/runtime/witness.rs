//! The death witness: a socket this process holds open for its whole life, and the watcher that holds a connection to each leader's, revoking the leases of a process the kernel shows is gone.
//!
//! A process's sockets close when it dies, however it dies: its witness
//! port then refuses connections. A standby that was connected to a
//! leader's witness and sees that connection end connects again: refused,
//! or greeted by another incarnation (a new process on the port), and
//! still so when tried again over `session.witnessConfirm`, proves the
//! leader's process is gone, so its leases are revoked and the election
//! moves on at once. Anything else (a timeout, no route, a connection that
//! closes without a greeting) proves nothing, and the lease decides.
//!
//! A network can still fake a death (a firewall that rejects, an address
//! moved to another host). So before revoking, the watcher marks the lease
//! revoked in etcd (`{root}/revoked/{lease hex}`), and the candidate that
//! wins from a marked lease waits `session.witnessGrace` before serving:
//! a leader that lives and reaches etcd sees its key go in that time, and
//! has stepped down before its successor answers.
//!
//! With a cluster secret (`node.witnessSecretFile`) both sides prove it
//! before a connection is held or a greeting believed (see `handshake`);
//! every connection has TCP keepalive, so a peer or a NAT that silently
//! dropped it is noticed; and the witness holds at most
//! `node.witnessMaxConnections` at once.

mod handshake;

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, GetResponse};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use self::handshake::{Secret, Unheld};
use crate::backoff::Backoff;
use crate::config::{BackoffConfig, Config, ConfigError, NodeConfig, join_host_port};
use crate::etcd;
use crate::etcd::session::{Layout, SessionInfo, WitnessInfo};
use crate::runtime::session::SessionView;
use crate::status::RoleStatus;
use crate::task::OwnedTask;
use crate::telemetry;

/// What the witness of a node that has handed its roles over says before
/// it closes, so that its watchers do not take the closing for a death.
const FAREWELL: &[u8] = b"standin-witness-farewell\n";
/// Bound on saying farewell to every watcher at shutdown.
const FAREWELL_WITHIN: Duration = Duration::from_millis(500);
/// How long a witness with a secret waits for a watcher's hello before it
/// closes the connection: a stranger holds a slot no longer.
const HELLO_WITHIN: Duration = Duration::from_secs(5);
/// TCP keepalive on every witness connection, both ends: a probe after
/// this long idle keeps a NAT's mapping alive, and a peer that vanished
/// without a word (a host gone, a mapping dropped) is noticed after
/// `KEEPALIVE_IDLE + KEEPALIVE_RETRIES x KEEPALIVE_INTERVAL` (25 s).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Bound on one attempt to reach a witness (connect, then greeting): past
/// it the attempt proves nothing.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Spacing of attempts that proved nothing. Short at first: an attempt that
/// raced a dying process's exit (accepted by its closing listener) is
/// answered by the next one.
const RETRY: BackoffConfig = BackoffConfig {
    initial: Duration::from_millis(5),
    max: Duration::from_secs(1),
};

/// Failures to start the witness.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The listener could not be bound.
    #[error(
        "binding the death witness at {address} failed (set node.witnessAddress, or \
         session.deathWitness: false): {source}"
    )]
    BindFailed {
        /// The address it tried.
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `node.witnessSecretFile` could not be read.
    #[error(transparent)]
    SecretUnreadable(ConfigError),
}

/// This node's witness listener and, once started, its watcher of leaders'
/// witnesses. Dropping it closes the listener and every connection, which
/// peers read as this process being gone.
pub(crate) struct Witness {
    info: WitnessInfo,
    /// The cluster's secret, which watchers prove too.
    secret: Option<Arc<Secret>>,
    _listener: OwnedTask,
    watcher: Option<OwnedTask>,
    /// Tells the listener to say farewell on every connection; answered
    /// once it has.
    farewell: mpsc::Sender<oneshot::Sender<()>>,
}

impl Witness {
    /// Binds the listener (`node.witnessAddress`) and starts greeting every
    /// connection with a fresh incarnation.
    pub(crate) async fn bind(node: &NodeConfig) -> Result<Self, WitnessError> {
        let secret = match &node.witness_secret_file {
            Some(path) => Some(Arc::new(
                Secret::load(path).map_err(WitnessError::SecretUnreadable)?,
            )),
            None => None,
        };
        let address = node.witness_listen();
        let bind_failed = |source| WitnessError::BindFailed {
            address: address.clone(),
            source,
        };
        let listener = TcpListener::bind(address.as_str())
            .await
            .map_err(bind_failed)?;
        let local = listener.local_addr().map_err(bind_failed)?;
        let published = node.witness_advertised_address.clone().unwrap_or_else(|| {
            if local.ip().is_unspecified() {
                join_host_port(node.advertised_host(), local.port())
            } else {
                local.to_string()
            }
        });
        let info = WitnessInfo {
            address: published,
            incarnation: incarnation(),
        };
        tracing::info!(
            witness = info.address,
            incarnation = info.incarnation,
            authenticated = secret.is_some(),
            "death witness listening on {local}"
        );
        if secret.is_none() && !local.ip().is_loopback() {
            tracing::warn!(
                "the death witness listens on {local}, off loopback, without \
                 node.witnessSecretFile: anyone who reaches the port is greeted and held (up \
                 to node.witnessMaxConnections); give every node the same secret file"
            );
        }
        let greeter = Arc::new(Greeter {
            incarnation: info.incarnation.clone(),
            secret: secret.clone(),
            max_connections: node.witness_max_connections,
            hello_within: HELLO_WITHIN,
        });
        let (farewell, asked) = mpsc::channel(1);
        Ok(Self {
            info,
            secret,
            _listener: OwnedTask::spawn(serve(listener, greeter, asked)),
            watcher: None,
            farewell,
        })
    }

    /// Tells every watcher that this node has handed its roles over and is
    /// leaving, so that none revokes a lease when the witness closes. Call
    /// it only once no role here leads any more.
    pub(crate) async fn farewell(&self) {
        let (done, said) = oneshot::channel();
        if self.farewell.send(done).await.is_ok() {
            let _ = said.await;
        }
    }

    /// What the sessions publish about this witness.
    pub(crate) fn info(&self) -> &WitnessInfo {
        &self.info
    }

    /// Starts holding a connection to the witness of every leader that one
    /// of `statuses` (this node's roles) stands by for.
    pub(crate) fn watch_leaders(
        &mut self,
        client: Client,
        config: &Config,
        session: SessionView,
        server_id: i64,
        statuses: Vec<watch::Receiver<RoleStatus>>,
    ) {
        let context = Arc::new(Mourner {
            client,
            layout: Layout::new(&config.etcd.root_path),
            request_timeout: config.etcd.request_timeout,
            retry: config.etcd.retry.clone(),
            ttl: config.session.ttl,
            secret: self.secret.clone(),
            confirm: config.session.witness_confirm,
            session,
            server_id,
        });
        self.watcher = Some(OwnedTask::spawn(watch_leaders(
            context, server_id, statuses,
        )));
    }
}

/// A nonce that no other process draws: the standard library's per-process
/// random hash keys, mixed with the clock and the process ID.
fn incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// How this process's witness greets and what it holds.
struct Greeter {
    incarnation: String,
    secret: Option<Arc<Secret>>,
    /// `node.witnessMaxConnections`.
    max_connections: usize,
    hello_within: Duration,
}

/// Accepts connections for as long as the process lives, greets each and
/// keeps it open until its peer closes it, or until asked to say farewell.
async fn serve(
    listener: TcpListener,
    greeter: Arc<Greeter>,
    mut farewell: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let (leaving, left) = watch::channel(false);
    let mut held = JoinSet::new();
    loop {
        while held.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if held.len() >= greeter.max_connections {
                        // Closed at once: the peer's attempt proves nothing
                        // (no greeting), so a flood costs no takeover.
                        tracing::debug!(%peer, "death witness: over node.witnessMaxConnections, closing");
                        refused(Unheld::OverCap);
                        continue;
                    }
                    held.spawn(greet_and_hold(stream, greeter.clone(), left.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: peers that cannot
                    // connect prove nothing, so waiting costs no takeover.
                    tracing::warn!("death witness: accepting a connection failed: {error}");
                    tokio::time::sleep(RETRY.max).await;
                }
            },
            Some(done) = farewell.recv() => {
                leaving.send_replace(true);
                let said = async { while held.join_next().await.is_some() {} };
                let _ = tokio::time::timeout(FAREWELL_WITHIN, said).await;
                let _ = done.send(());
                // Still listening: a peer that connects now is greeted,
                // and sees the port close with the process.
            }
        }
    }
}

fn refused(why: Unheld) {
    metrics::counter!(telemetry::DEATH_WITNESS_REFUSED, "reason" => why.label()).increment(1);
}

/// TCP keepalive on a witness connection (see [`KEEPALIVE_IDLE`]).
fn keep_alive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!("death witness: setting TCP keepalive failed: {error}");
    }
}

async fn greet_and_hold(
    mut stream: TcpStream,
    greeter: Arc<Greeter>,
    mut leaving: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    keep_alive(&stream);
    let greeted = handshake::greet(
        &mut stream,
        &greeter.incarnation,
        greeter.secret.as_deref(),
        greeter.hello_within,
    )
    .await;
    if let Err(why) = greeted {
        if why != Unheld::Gone {
            refused(why);
        }
        return;
    }
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            read = stream.read(&mut sink) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            // The guard `wait_for` returns must not live across the writes.
            () = async { drop(leaving.wait_for(|leaving| *leaving).await) } => {
                let _ = stream.write_all(FAREWELL).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// How a held connection to a witness ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// The node said it handed its roles over and leaves.
    Farewell,
    /// Closed or reset, for this reason: confirm by connecting again.
    Lost(String),
}

/// Reads until the connection ends; the only thing a witness sends after
/// its greeting is its farewell.
async fn hold(stream: &mut TcpStream) -> Ended {
    let mut said = Vec::new();
    let mut buffer = [0u8; 64];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => return Ended::Lost("closed".to_owned()),
            Ok(read) => {
                said.extend_from_slice(&buffer[..read]);
                if said.starts_with(FAREWELL) {
                    return Ended::Farewell;
                }
                if said.len() >= FAREWELL.len() {
                    // Not a witness after all: keep reading to the end.
                    said.clear();
                }
            }
            Err(error) => return Ended::Lost(error.to_string()),
        }
    }
}

/// What one attempt to reach a witness found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reached {
    /// A witness greeted us with this incarnation.
    Greeted(String),
    /// Nothing listens on the port.
    Refused,
    /// No answer in time, no route, or a connection that ended or spoke
    /// without a greeting.
    Inconclusive(String),
}

/// What an attempt proves about the process a standby watches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// It is there: hold the connection.
    Alive,
    /// It is gone, for this reason: revoke its leases.
    Gone(String),
    /// Nothing: try again later, and leave it to the lease meanwhile.
    Unproven(String),
}

/// Judges one attempt. `armed`: this watcher has reached that very
/// incarnation at that address before. Only then does a refusal or a
/// stranger's greeting prove a death; before, it may as well mean that the
/// published address does not lead to the process (a firewall, a container
/// port not published, two nodes advertising one address).
fn judge(armed: bool, incarnation: &str, reached: &Reached) -> Verdict {
    match reached {
        Reached::Greeted(greeted) if greeted == incarnation => Verdict::Alive,
        Reached::Greeted(greeted) if armed => Verdict::Gone(format!(
            "another process (incarnation {greeted}) answers on its witness port"
        )),
        Reached::Greeted(greeted) => Verdict::Unproven(format!(
            "incarnation {greeted} answers there, not {incarnation}: the published witness \
             address does not lead to this process"
        )),
        Reached::Refused if armed => Verdict::Gone("connection refused".to_owned()),
        Reached::Refused => Verdict::Unproven(
            "connection refused, and it was never reached there: the witness address may not \
             lead to the process"
                .to_owned(),
        ),
        Reached::Inconclusive(reason) => Verdict::Unproven(reason.clone()),
    }
}

/// One attempt: connect, read the greeting (proven by `secret` when the
/// cluster has one). The stream comes back with a greeting.
async fn reach(address: &str, secret: Option<&Secret>) -> (Reached, Option<TcpStream>) {
    let mut stream = match tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect(address)).await
    {
        Err(_) => {
            let reason = format!("no connection within {ATTEMPT_TIMEOUT:?}");
            return (Reached::Inconclusive(reason), None);
        }
        Ok(Err(error)) if error.kind() == ErrorKind::ConnectionRefused => {
            return (Reached::Refused, None);
        }
        Ok(Err(error)) => return (Reached::Inconclusive(error.to_string()), None),
        Ok(Ok(stream)) => stream,
    };
    keep_alive(&stream);
    let greeting = handshake::read_greeting(&mut stream, secret);
    match tokio::time::timeout(ATTEMPT_TIMEOUT, greeting).await {
        Ok(Ok(incarnation)) => (Reached::Greeted(incarnation), Some(stream)),
        Ok(Err(reason)) => (Reached::Inconclusive(reason), None),
        Err(_) => {
            let reason = format!("connected, but no greeting within {ATTEMPT_TIMEOUT:?}");
            (Reached::Inconclusive(reason), None)
        }
    }
}

/// When a first attempt found a witness gone, the further attempts that
/// must find it gone too, as offsets from the first: one at once (a
/// connection that raced a reset), one at the end of `span` (a rejection
/// that lasted less). None when `span` is zero.
fn confirmations(span: Duration) -> Vec<Duration> {
    if span.is_zero() {
        Vec::new()
    } else {
        vec![Duration::ZERO, span]
    }
}

/// Tries a witness found gone (for `first`) again over
/// `session.witnessConfirm`: only if every attempt finds it gone is the
/// death proven. One greeting of the same process means it lives (the
/// refusal was a reset on the path, a firewall reloading); an attempt that
/// proves nothing leaves it to the next round, as any other would.
async fn confirm(
    mourner: &Mourner,
    witness: &WitnessInfo,
    first: String,
) -> (Verdict, Option<TcpStream>) {
    let start = tokio::time::Instant::now();
    let offsets = confirmations(mourner.confirm);
    for &offset in &offsets {
        tokio::time::sleep_until(start + offset).await;
        let (reached, stream) = reach(&witness.address, mourner.secret.as_deref()).await;
        match judge(true, &witness.incarnation, &reached) {
            Verdict::Gone(_) => {}
            Verdict::Alive => {
                tracing::warn!(
                    witness = witness.address,
                    "the leader's death witness at {} refused ({first}), then greeted again \
                     within {:?}: alive, not revoked (something on the path resets or rejects)",
                    witness.address,
                    start.elapsed()
                );
                metrics::counter!(telemetry::DEATH_WITNESS_UNCONFIRMED).increment(1);
                return (Verdict::Alive, stream);
            }
            unproven => return (unproven, None),
        }
    }
    let proof = match offsets.last() {
        Some(span) => format!("{first}, {} times over {span:?}", offsets.len() + 1),
        None => first,
    };
    (Verdict::Gone(proof), None)
}

/// A leader process to watch: who it is and where its witness is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Watched {
    server_id: i64,
    address: String,
    witness: WitnessInfo,
}

/// The leader process `status` stands by for, and the lease its leader key
/// hangs on. Its own server is never watched, nor a leader without a
/// witness (an older node, or one with the witness off).
fn watched_leader(own_server_id: i64, status: &RoleStatus) -> Option<(Watched, i64)> {
    let session = &status.leader.as_ref()?.session;
    if session.server_id == own_server_id {
        return None;
    }
    let witness = session.witness.as_ref()?;
    let watched = Watched {
        server_id: session.server_id,
        address: session.address.clone(),
        witness: witness.clone(),
    };
    Some((watched, session.lease_id))
}

/// The leader processes this node's roles stand by for, kept per role: one
/// role's change costs one update, not a pass over every role (a node of a
/// thousand roles sees thousands of changes when a leader dies).
#[derive(Debug, Default)]
struct StoodBy {
    /// What each role (by index) stands by for.
    by_role: Vec<Option<(Watched, i64)>>,
    /// Each leader process, its leases, and how many roles wait on each.
    leaders: BTreeMap<Watched, BTreeMap<i64, usize>>,
}

impl StoodBy {
    /// Role `index` now stands by for `leader`.
    fn set(&mut self, index: usize, leader: Option<(Watched, i64)>) {
        if self.by_role.len() <= index {
            self.by_role.resize(index + 1, None);
        }
        if self.by_role[index] == leader {
            return;
        }
        if let Some((watched, lease)) = self.by_role[index].take()
            && let Some(leases) = self.leaders.get_mut(&watched)
        {
            if let Some(count) = leases.get_mut(&lease) {
                *count -= 1;
                if *count == 0 {
                    leases.remove(&lease);
                }
            }
            if leases.is_empty() {
                self.leaders.remove(&watched);
            }
        }
        if let Some((watched, lease)) = &leader {
            *self
                .leaders
                .entry(watched.clone())
                .or_default()
                .entry(*lease)
                .or_default() += 1;
        }
        self.by_role[index] = leader;
    }

    /// Whether some role stands by for `watched`.
    fn contains(&self, watched: &Watched) -> bool {
        self.leaders.contains_key(watched)
    }

    /// Each leader process stood by for.
    fn leaders(&self) -> impl Iterator<Item = &Watched> {
        self.leaders.keys()
    }

    /// The leases of `watched`'s leader keys.
    fn leases(&self, watched: &Watched) -> BTreeSet<i64> {
        self.leaders
            .get(watched)
            .map(|leases| leases.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// The leases of leader processes proven dead or gone with a farewell, by
/// incarnation: their leader keys may still be seen for a moment, and are
/// not watched again. The same process on another lease is: a leader
/// taken for dead that lived (a refusal the network made) campaigns again
/// on a new lease, and may lead again.
#[derive(Debug, Default)]
struct Over(BTreeSet<(String, i64)>);

impl Over {
    /// `watched`'s watch ended for good while it held `leases`.
    fn add(&mut self, watched: &Watched, leases: BTreeSet<i64>) {
        let incarnation = &watched.witness.incarnation;
        self.0
            .extend(leases.into_iter().map(|lease| (incarnation.clone(), lease)));
    }

    /// Whether every one of `leases` of `watched` is over.
    fn covers(&self, watched: &Watched, leases: &BTreeSet<i64>) -> bool {
        let incarnation = &watched.witness.incarnation;
        leases
            .iter()
            .all(|&lease| self.0.contains(&(incarnation.clone(), lease)))
    }
}

/// Each change of one role's status, tagged with the role's index; the
/// first is its status now.
fn role_changes(
    index: usize,
    status: watch::Receiver<RoleStatus>,
    own_server_id: i64,
) -> impl futures::Stream<Item = (usize, Option<(Watched, i64)>)> {
    futures::stream::unfold((status, true), move |(mut status, first)| async move {
        if !first {
            status.changed().await.ok()?;
        }
        let leader = watched_leader(own_server_id, &status.borrow_and_update());
        Some(((index, leader), (status, false)))
    })
}

/// Keeps one watch per leader process that some role here stands by for.
async fn watch_leaders(
    mourner: Arc<Mourner>,
    own_server_id: i64,
    statuses: Vec<watch::Receiver<RoleStatus>>,
) {
    use futures::{FutureExt, StreamExt};
    let (done_tx, mut done) = mpsc::unbounded_channel::<(Watched, BTreeSet<i64>)>();
    let mut watches: BTreeMap<Watched, OwnedTask> = BTreeMap::new();
    let mut over = Over::default();
    let mut stood_by = StoodBy::default();
    let mut changes = futures::stream::select_all(
        statuses
            .into_iter()
            .enumerate()
            .map(|(index, status)| Box::pin(role_changes(index, status, own_server_id))),
    );
    loop {
        // Every change already waiting, then one pass over the leaders.
        while let Some(Some((index, leader))) = changes.next().now_or_never() {
            stood_by.set(index, leader);
        }
        watches.retain(|watched, _| stood_by.contains(watched));
        for watched in stood_by.leaders() {
            let leases = stood_by.leases(watched);
            if watches.contains_key(watched) || over.covers(watched, &leases) {
                continue;
            }
            let task = watch_one(mourner.clone(), watched.clone(), leases, done_tx.clone());
            watches.insert(watched.clone(), OwnedTask::spawn(task));
        }
        tokio::select! {
            change = changes.next() => match change {
                Some((index, leader)) => stood_by.set(index, leader),
                None => return,
            },
            Some((watched, leases)) = done.recv() => {
                watches.remove(&watched);
                over.add(&watched, leases);
            }
        }
    }
}

/// Holds a connection to one leader's witness and reconnects when it ends,
/// until an attempt proves the process gone (then has its leases revoked)
/// or the witness says farewell. Either way reports the incarnation as done.
async fn watch_one(
    mourner: Arc<Mourner>,
    watched: Watched,
    known_leases: BTreeSet<i64>,
    done: mpsc::UnboundedSender<(Watched, BTreeSet<i64>)>,
) {
    let mut armed = false;
    let mut retry = Backoff::new(RETRY);
    let mut lost_at: Option<Instant> = None;
    let mut warned = false;
    let mut counted = Counted::default();
    loop {
        let (reached, mut stream) =
            reach(&watched.witness.address, mourner.secret.as_deref()).await;
        let mut verdict = judge(armed, &watched.witness.incarnation, &reached);
        let mut marked = false;
        // Past the TTL etcd has expired the leases by itself.
        let until = Instant::now() + mourner.ttl;
        if let Verdict::Gone(reason) = verdict {
            let marking = mourner.mark(&watched, &reason, &known_leases, until);
            ((verdict, stream), marked) =
                tokio::join!(confirm(&mourner, &watched.witness, reason.clone()), marking);
            if marked && !matches!(verdict, Verdict::Gone(_)) {
                mourner.unmark(&known_leases);
            }
        }
        match verdict {
            Verdict::Alive => {
                let Some(mut stream) = stream else { continue };
                if !armed {
                    tracing::info!(
                        server_id = watched.server_id,
                        witness = watched.witness.address,
                        "watching leader server {} through its death witness at {}",
                        watched.server_id,
                        watched.witness.address
                    );
                }
                armed = true;
                counted.set(Some("armed"));
                retry.reset();
                match hold(&mut stream).await {
                    Ended::Farewell => {
                        tracing::info!(
                            server_id = watched.server_id,
                            "leader server {} handed its roles over and leaves",
                            watched.server_id
                        );
                        let _ = done.send((watched, known_leases));
                        return;
                    }
                    Ended::Lost(reason) => {
                        lost_at = Some(Instant::now());
                        tracing::debug!(
                            server_id = watched.server_id,
                            "connection to the leader's death witness ended ({reason}); confirming"
                        );
                    }
                }
            }
            Verdict::Gone(reason) => {
                let _ = done.send((watched.clone(), known_leases.clone()));
                // Detached: the revoke deletes the leader keys, which ends
                // this watch, and must finish all the same.
                let mourner = mourner.clone();
                tokio::spawn(async move {
                    let death = Death {
                        reason,
                        lost_at,
                        marked,
                        until,
                    };
                    mourner.bury(watched, known_leases, death).await;
                });
                return;
            }
            Verdict::Unproven(reason) => {
                if !armed && !warned {
                    warned = true;
                    counted.set(Some("unarmed"));
                    tracing::warn!(
                        server_id = watched.server_id,
                        witness = watched.witness.address,
                        "cannot watch leader server {} through its death witness at {} ({reason}); \
                         retrying, and until then only its lease tells whether it is alive",
                        watched.server_id,
                        watched.witness.address
                    );
                }
                tokio::time::sleep(retry.next_delay()).await;
            }
        }
    }
}

/// This watcher's place in the `standin_death_witness_watched` gauge,
/// given back when the watch ends.
#[derive(Default)]
struct Counted(Option<&'static str>);

impl Counted {
    fn set(&mut self, state: Option<&'static str>) {
        if self.0 == state {
            return;
        }
        if let Some(old) = self.0 {
            metrics::gauge!(telemetry::DEATH_WITNESS_WATCHED, "state" => old).decrement(1.0);
        }
        if let Some(new) = state {
            metrics::gauge!(telemetry::DEATH_WITNESS_WATCHED, "state" => new).increment(1.0);
        }
        self.0 = state;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.set(None);
    }
}

/// What proved a leader process dead, and what was done about it already.
struct Death {
    /// The proof.
    reason: String,
    /// When the connection to its witness was lost.
    lost_at: Option<Instant>,
    /// Whether its leader keys' leases are marked revoked.
    marked: bool,
    /// Past this, etcd has expired its leases by itself.
    until: Instant,
}

/// Revokes what a dead process held.
struct Mourner {
    client: Client,
    layout: Layout,
    request_timeout: Duration,
    retry: BackoffConfig,
    ttl: Duration,
    /// The cluster's witness secret, proven to every witness reached.
    secret: Option<Arc<Secret>>,
    /// `session.witnessConfirm`.
    confirm: Duration,
    /// This node's session, whose lease the marks of revoked leases are put on.
    session: SessionView,
    /// This node's server ID, named in the marks.
    server_id: i64,
}

/// What the mark a witness puts on a lease before revoking it says
/// (`{root}/revoked/{lease hex}`): read by operators; a candidate only
/// asks whether it exists.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RevokedMark {
    /// The server found dead.
    server_id: i64,
    /// Its incarnation.
    incarnation: String,
    /// The server whose witness found it.
    by: i64,
    /// What proved the death.
    reason: String,
}

/// Whether a death witness marked `lease` revoked (see
/// [`Layout::revoked`]): the candidate that won from it waits
/// `session.witnessGrace` before serving. No answer within
/// `request_timeout` counts as marked: waiting costs milliseconds, serving
/// beside a leader that lives costs a stale answer.
pub(crate) async fn marked_revoked(
    client: &Client,
    layout: &Layout,
    lease: i64,
    request_timeout: Duration,
) -> bool {
    let key = layout.revoked(lease);
    let mut kv = client.kv_client();
    let read = kv.get(key.as_str(), Some(GetOptions::new().with_count_only()));
    let what = format!("reading {key} (waiting as if a witness revoked it)");
    etcd::best_effort(&what, request_timeout, read)
        .await
        .is_none_or(|response| response.count() > 0)
}

impl Mourner {
    /// Revokes every lease a session of the dead incarnation names (and the
    /// leases its leader keys were seen on), so each election it led moves
    /// on at once.
    async fn bury(&self, watched: Watched, known_leases: BTreeSet<i64>, death: Death) {
        let Death {
            reason,
            lost_at,
            marked,
            until,
        } = death;
        // The leases of the leader keys first: the elections that wait on
        // them move on before the read of every session below.
        let mut revoked = self
            .revoke_marked(&watched, marked, &known_leases, until)
            .await;
        let took = lost_at.map(|at| at.elapsed());
        let mut roles = BTreeSet::new();
        match self
            .sessions_of(
                watched.server_id,
                &watched.witness.incarnation,
                &known_leases,
            )
            .await
        {
            Ok(sessions) => {
                let mut others = BTreeSet::new();
                for session in sessions {
                    if !known_leases.contains(&session.lease_id) {
                        others.insert(session.lease_id);
                    }
                    roles.insert(session.role);
                }
                let marked = self.mark(&watched, &reason, &others, until).await;
                revoked.extend(self.revoke_marked(&watched, marked, &others, until).await);
            }
            Err(error) => tracing::warn!(
                server_id = watched.server_id,
                "reading the sessions of dead server {} failed ({error}); revoked the leases \
                 of its leader keys only",
                watched.server_id
            ),
        }
        metrics::counter!(telemetry::DEATH_WITNESS_REVOKES).increment(1);
        if let Some(took) = took {
            metrics::histogram!(telemetry::DEATH_WITNESS_REVOKE_SECONDS).record(took.as_secs_f64());
        }
        // Sessions are read after the first revoke, so those on the leader
        // keys' leases are gone with it: only other leases' roles are named.
        let roles = if roles.is_empty() {
            String::new()
        } else {
            let roles: Vec<String> = roles.into_iter().collect();
            format!(" (sessions on other leases: {})", roles.join(", "))
        };
        tracing::warn!(
            server_id = watched.server_id,
            witness = watched.witness.address,
            took_ms = took.map(|t| t.as_millis() as u64),
            "leader server {} at {} is gone ({reason}); revoked its lease(s) {}{roles}",
            watched.server_id,
            watched.address,
            revoked.join(", ")
        );
    }

    /// Marks each of `leases` revoked (see [`marked_revoked`]), retried
    /// until `until`; whether the marks landed. Put as soon as a refusal is
    /// seen, beside its confirmation: a mark alone only makes a successor
    /// wait.
    async fn mark(
        &self,
        watched: &Watched,
        reason: &str,
        leases: &BTreeSet<i64>,
        until: Instant,
    ) -> bool {
        if leases.is_empty() {
            return true;
        }
        let mark = RevokedMark {
            server_id: watched.server_id,
            incarnation: watched.witness.incarnation.clone(),
            by: self.server_id,
            reason: reason.to_owned(),
        };
        let value = serde_json::to_vec(&mark).unwrap_or_default();
        let marks: Vec<(String, Vec<u8>)> = leases
            .iter()
            .map(|&lease| (self.layout.revoked(lease), value.clone()))
            .collect();
        let Some(on) = self.mark_lease(until).await else {
            return false;
        };
        let timeout = self.request_timeout;
        etcd::put_on_lease(&self.client, &marks, on, timeout, &self.retry, until).await
    }

    /// Takes back the marks of `leases` in the background: the refusal
    /// they were put for was not confirmed. Best effort: a mark left
    /// behind costs a later successor `session.witnessGrace`, no more.
    fn unmark(self: &Arc<Self>, leases: &BTreeSet<i64>) {
        let mourner = self.clone();
        let keys: Vec<String> = leases.iter().map(|&l| self.layout.revoked(l)).collect();
        tokio::spawn(async move {
            for key in keys {
                let mut kv = mourner.client.kv_client();
                let what = format!("deleting {key}, the mark of an unconfirmed death");
                etcd::best_effort(
                    &what,
                    mourner.request_timeout,
                    kv.delete(key.as_str(), None),
                )
                .await;
            }
        });
    }

    /// Revokes each of `leases` once it is marked (see [`Mourner::mark`]),
    /// each retried until `until`; those revoked. Unmarked, none is
    /// revoked: a successor that would not wait could answer beside a
    /// leader taken for dead that lives, so the lease decides instead.
    async fn revoke_marked(
        &self,
        watched: &Watched,
        marked: bool,
        leases: &BTreeSet<i64>,
        until: Instant,
    ) -> Vec<String> {
        if !marked {
            tracing::warn!(
                server_id = watched.server_id,
                "could not mark the lease(s) of dead server {} revoked; leaving them to expire",
                watched.server_id
            );
            return Vec::new();
        }
        let mut revoked = Vec::new();
        for &lease in leases {
            if etcd::revoke(
                &self.client,
                lease,
                self.request_timeout,
                &self.retry,
                until,
            )
            .await
            {
                revoked.push(format!("{lease:#x}"));
            }
        }
        revoked
    }

    /// The lease the marks go on: this node's session's, which outlives any
    /// takeover they are for; or, while the session holds none, a lease
    /// of the TTL granted for them.
    async fn mark_lease(&self, until: Instant) -> Option<i64> {
        if let Some(held) = self.session.current() {
            return Some(held.id);
        }
        let mut leases = self.client.lease_client();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let left = until.saturating_duration_since(Instant::now());
        let what = "granting a lease to put the marks of revoked leases on";
        let timeout = left.min(self.request_timeout);
        let granted = etcd::best_effort(what, timeout, leases.grant(ttl, None)).await;
        granted.map(|granted| granted.id())
    }

    /// The sessions of the dead incarnation of `server_id` on leases other
    /// than `revoked`. Read by keys first (a session's key ends in its
    /// server ID, and holds its lease): at a takeover wave every session of
    /// every node, decoded, cost etcd and this node more than the wave's own
    /// writes, and with one lease per node there is almost never another.
    /// Only keys on another lease are read whole, to check the incarnation.
    async fn sessions_of(
        &self,
        server_id: i64,
        incarnation: &str,
        revoked: &BTreeSet<i64>,
    ) -> Result<Vec<SessionInfo>, etcd_client::Error> {
        let keys = self
            .read(GetOptions::new().with_prefix().with_keys_only())
            .await?;
        let elsewhere = keys.kvs().iter().any(|kv| {
            self.layout.is_session_of(kv.key(), server_id) && !revoked.contains(&kv.lease())
        });
        if !elsewhere {
            return Ok(Vec::new());
        }
        let response = self.read(GetOptions::new().with_prefix()).await?;
        Ok(response
            .kvs()
            .iter()
            // The server-ID counter and corrupt values are not this process's sessions.
            .filter_map(|kv| SessionInfo::decode(kv.key(), kv.value()).ok())
            .filter(|session| {
                session
                    .witness
                    .as_ref()
                    .is_some_and(|w| w.incarnation == incarnation)
            })
            .collect())
    }

    /// Every session key, with `options`, within the request timeout.
    async fn read(&self, options: GetOptions) -> Result<GetResponse, etcd_client::Error> {
        let prefix = self.layout.sessions();
        let mut kv = self.client.kv_client();
        let request = kv.get(prefix.as_str(), Some(options));
        tokio::time::timeout(self.request_timeout, request)
            .await
            .map_err(|_| {
                etcd_client::Error::InvalidArgs(format!(
                    "no answer within {:?}",
                    self.request_timeout
                ))
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_witness_reached_before_proves_a_death() {
        let greeted = |i: &str| Reached::Greeted(i.to_owned());
        assert_eq!(judge(false, "a", &greeted("a")), Verdict::Alive);
        assert_eq!(judge(true, "a", &greeted("a")), Verdict::Alive);
        assert!(
            matches!(judge(true, "a", &Reached::Refused), Verdict::Gone(r) if r.contains("refused"))
        );
        assert!(
            matches!(judge(true, "a", &greeted("b")), Verdict::Gone(r) if r.contains("incarnation b"))
        );
        assert!(matches!(
            judge(false, "a", &Reached::Refused),
            Verdict::Unproven(_)
        ));
        assert!(matches!(
            judge(false, "a", &greeted("b")),
            Verdict::Unproven(_)
        ));
        let timeout = Reached::Inconclusive("no connection within 1s".into());
        assert!(matches!(judge(true, "a", &timeout), Verdict::Unproven(_)));
        assert!(matches!(judge(false, "a", &timeout), Verdict::Unproven(_)));
    }

    fn status(server_id: i64, leader: Option<(i64, i64, Option<&str>)>) -> RoleStatus {
        RoleStatus {
            role: "tso".into(),
            server_id,
            state: crate::RoleState::Standby,
            epoch: None,
            leader: leader.map(|(id, lease, incarnation)| crate::Leader {
                session: SessionInfo {
                    server_id: id,
                    role: "tso".into(),
                    address: format!("127.0.0.1:{id}"),
                    version: "0".into(),
                    state: crate::RoleState::Serving,
                    lease_id: lease,
                    witness: incarnation.map(|i| WitnessInfo {
                        address: format!("127.0.0.1:{}", 100 + id),
                        incarnation: i.into(),
                    }),
                    priority: 0,
                    transfer: None,
                },
                key: "k".into(),
                revision: 1,
            }),
            lease: None,
            last_step_down: None,
        }
    }

    #[test]
    fn one_watch_per_leader_process_never_itself_nor_one_without_a_witness() {
        let statuses = [
            status(1, Some((2, 20, Some("x")))),
            status(1, Some((2, 21, Some("x")))),
            status(1, Some((1, 10, Some("me")))),
            status(1, Some((3, 30, None))),
            status(1, None),
        ];
        let mut stood_by = StoodBy::default();
        for (index, status) in statuses.iter().enumerate() {
            stood_by.set(index, watched_leader(1, status));
        }
        let watched: Vec<_> = stood_by
            .leaders()
            .map(|w| (w.clone(), stood_by.leases(w)))
            .collect();
        assert_eq!(watched.len(), 1, "{watched:?}");
        let (leader, leases) = watched.into_iter().next().unwrap();
        assert_eq!(leader.server_id, 2);
        assert_eq!(leader.witness.incarnation, "x");
        assert_eq!(leases, BTreeSet::from([20, 21]));
    }

    #[test]
    fn a_leader_proven_dead_is_watched_again_only_on_a_new_lease() {
        let (leader, _) = watched_leader(1, &status(1, Some((2, 20, Some("x"))))).unwrap();
        let mut over = Over::default();
        over.add(&leader, BTreeSet::from([20]));
        assert!(over.covers(&leader, &BTreeSet::from([20])));
        // Taken for dead but alive: it campaigned again on lease 21.
        assert!(!over.covers(&leader, &BTreeSet::from([21])));
        assert!(!over.covers(&leader, &BTreeSet::from([20, 21])));
        let (other, _) = watched_leader(1, &status(1, Some((2, 20, Some("y"))))).unwrap();
        assert!(!over.covers(&other, &BTreeSet::from([20])));
    }

    #[test]
    fn a_leader_is_stood_by_for_until_its_last_role_moves_on() {
        let mut stood_by = StoodBy::default();
        let at = |id, lease| watched_leader(1, &status(1, Some((id, lease, Some("x")))));
        stood_by.set(0, at(2, 20));
        stood_by.set(1, at(2, 20));
        stood_by.set(2, at(2, 21));
        let leases = |s: &StoodBy| {
            s.leaders()
                .map(|w| (w.server_id, s.leases(w)))
                .collect::<Vec<_>>()
        };
        assert_eq!(leases(&stood_by), vec![(2, BTreeSet::from([20, 21]))]);
        stood_by.set(2, at(3, 30));
        assert_eq!(
            leases(&stood_by),
            vec![(2, BTreeSet::from([20])), (3, BTreeSet::from([30]))]
        );
        stood_by.set(0, None);
        stood_by.set(0, None);
        assert_eq!(
            leases(&stood_by),
            vec![(2, BTreeSet::from([20])), (3, BTreeSet::from([30]))]
        );
        stood_by.set(1, at(3, 30));
        assert_eq!(leases(&stood_by), vec![(3, BTreeSet::from([30]))]);
    }

    #[tokio::test]
    async fn a_witness_greets_with_its_incarnation_and_its_port_refuses_once_dropped() {
        let node = NodeConfig {
            address: Some("127.0.0.1:1".into()),
            ..NodeConfig::default()
        };
        let witness = Witness::bind(&node).await.unwrap();
        let info = witness.info().clone();
        assert!(info.address.starts_with("127.0.0.1:"), "{info:?}");
        let (reached, stream) = reach(&info.address, None).await;
        assert_eq!(reached, Reached::Greeted(info.incarnation.clone()));
        let mut stream = stream.unwrap();
        drop(witness);
        let ended = tokio::time::timeout(Duration::from_secs(5), hold(&mut stream)).await;
        assert!(
            matches!(ended, Ok(Ended::Lost(_))),
            "the held connection ends with the witness: {ended:?}"
        );
        let (reached, _) = reach(&info.address, None).await;
        assert_eq!(reached, Reached::Refused);
        let other = Witness::bind(&node).await.unwrap();
        assert_ne!(other.info().incarnation, info.incarnation);
    }

    #[tokio::test]
    async fn a_witness_holds_at_most_its_cap_and_closes_the_rest_unheld() {
        let node = NodeConfig {
            witness_max_connections: 2,
            ..NodeConfig::default()
        };
        let witness = Witness::bind(&node).await.unwrap();
        let info = witness.info().clone();
        let mut held = Vec::new();
        for _ in 0..2 {
            let (reached, stream) = reach(&info.address, None).await;
            assert_eq!(reached, Reached::Greeted(info.incarnation.clone()));
            held.push(stream.unwrap());
        }
        let (reached, _) = reach(&info.address, None).await;
        assert!(matches!(reached, Reached::Inconclusive(_)), "{reached:?}");
        // Even an armed watcher takes that for nothing.
        assert!(matches!(
            judge(true, &info.incarnation, &reached),
            Verdict::Unproven(_)
        ));
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (reached, _) = reach(&info.address, None).await;
            if reached == Reached::Greeted(info.incarnation.clone()) {
                break;
            }
            assert!(Instant::now() < deadline, "a freed slot is taken again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn with_a_secret_only_a_watcher_that_proves_it_is_greeted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness-secret");
        std::fs::write(&path, "a cluster secret, 32 bytes long!\n").unwrap();
        let node = NodeConfig {
            witness_secret_file: Some(path.clone()),
            ..NodeConfig::default()
        };
        let witness = Witness::bind(&node).await.unwrap();
        let info = witness.info().clone();
        let secret = Secret::load(&path).unwrap();
        let (reached, stream) = reach(&info.address, Some(&secret)).await;
        assert_eq!(reached, Reached::Greeted(info.incarnation.clone()));
        let stream = stream.unwrap();
        assert!(socket2::SockRef::from(&stream).keepalive().unwrap());
        let (reached, _) = reach(&info.address, None).await;
        assert!(
            matches!(&reached, Reached::Inconclusive(why) if why.contains("node.witnessSecretFile")),
            "{reached:?}"
        );
        let other = Secret::new(b"not the cluster's secret at all");
        let (reached, _) = reach(&info.address, Some(&other)).await;
        assert!(matches!(reached, Reached::Inconclusive(_)), "{reached:?}");
        // A plain witness (another cluster, or a stranger) proves nothing
        // to a watcher holding a secret, not even a death.
        let plain = Witness::bind(&NodeConfig::default()).await.unwrap();
        let (reached, _) = reach(&plain.info().address, Some(&secret)).await;
        assert!(matches!(reached, Reached::Inconclusive(_)), "{reached:?}");
        assert!(matches!(
            judge(true, &info.incarnation, &reached),
            Verdict::Unproven(_)
        ));
    }

    #[tokio::test]
    async fn a_witness_that_leaves_says_farewell_on_every_connection() {
        let witness = Witness::bind(&NodeConfig::default()).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let (reached, stream) = reach(&witness.info().address, None).await;
            assert!(matches!(reached, Reached::Greeted(_)), "{reached:?}");
            held.push(stream.unwrap());
        }
        witness.farewell().await;
        for stream in &mut held {
            assert_eq!(hold(stream).await, Ended::Farewell);
        }
    }
}
