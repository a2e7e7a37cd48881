//! `bench: scenario=many-roles`: three `standin run --idle-roles R` nodes on one etcd, what they cost it and each other, and how fast a node leading a third of the roles hands them all over.
//!
//! Every figure is read from etcd or the kernel: when every role serves
//! (its leader key's published state, followed by one watch of the
//! election prefix), leaders per node, etcd's leases, its watch streams and
//! lease renewals (its `/metrics`), each node's resident memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{EventType, GetOptions, WatchOptions};
use standin::etcd::session::{RoleState, SessionInfo};
use standin::service::grpc::proto::StatusRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::testing::{EtcdServer, StandinProcess, free_loopback_port};
use tokio::sync::Notify;

use super::{Summary, resident_bytes};

const NODES: usize = 3;
/// Longest wait for every role to serve, or for the spread to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(180);

/// Each role's candidates as the election prefix shows them, kept current
/// by one watch.
#[derive(Default)]
struct Elections {
    /// Role, then create revision: the candidate's server ID and published state.
    lines: BTreeMap<String, BTreeMap<i64, (i64, RoleState)>>,
    /// Key to (role, create revision), to place a deletion.
    keys: BTreeMap<Vec<u8>, (String, i64)>,
    /// Each server ID's published address.
    addresses: BTreeMap<i64, String>,
}

impl Elections {
    /// The serving leader of each role, by role; a role whose leader does
    /// not serve yet is left out.
    fn serving(&self) -> BTreeMap<&str, i64> {
        self.lines
            .iter()
            .filter_map(|(role, line)| {
                let (_, (server, state)) = line.first_key_value()?;
                (*state == RoleState::Serving).then_some((role.as_str(), *server))
            })
            .collect()
    }

    /// Whether each leader's roles have their next in line spread within
    /// one over the other nodes, as the spread's second step leaves them: a
    /// node that dies then hands its roles to every survivor.
    fn heirs_spread(&self) -> bool {
        let mut heirs: BTreeMap<i64, BTreeMap<i64, usize>> = BTreeMap::new();
        for line in self.lines.values() {
            let mut servers = line.values().map(|(server, _)| *server);
            let Some(leader) = servers.next() else {
                continue;
            };
            let counts = heirs.entry(leader).or_default();
            let mut behind = servers.peekable();
            if let Some(heir) = behind.peek() {
                *counts.entry(*heir).or_insert(0) += 1;
            }
            for server in behind {
                counts.entry(server).or_insert(0);
            }
        }
        heirs.values().all(|counts| {
            let (max, min) = (counts.values().max(), counts.values().min());
            max.zip(min).is_none_or(|(max, min)| max - min <= 1)
        })
    }

    /// Roles led per server, once all `roles` serve.
    fn leaders(&self, roles: usize) -> Option<BTreeMap<i64, usize>> {
        let serving = self.serving();
        if serving.len() < roles {
            return None;
        }
        let mut counts = BTreeMap::new();
        for server in serving.values() {
            *counts.entry(*server).or_insert(0) += 1;
        }
        Some(counts)
    }
}

/// A mirror of `prefix` in etcd, and a wake-up on every change.
struct Mirror {
    elections: Arc<Mutex<Elections>>,
    changed: Arc<Notify>,
    follow: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    /// Ends the watch, so its stream does not count in the next cluster's.
    fn drop(&mut self) {
        self.follow.abort();
    }
}

impl Mirror {
    async fn start(etcd: &EtcdServer, prefix: String) -> anyhow::Result<Self> {
        let client = etcd.client().await?;
        let elections = Arc::new(Mutex::new(Elections::default()));
        let changed = Arc::new(Notify::new());
        let read = client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = read.header().map_or(0, |h| h.revision());
        {
            let mut mirror = elections.lock().expect("mirror");
            for kv in read.kvs() {
                put(&mut mirror, kv);
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch_client()
            .watch(prefix.as_str(), Some(options))
            .await?;
        let (into, wake) = (elections.clone(), changed.clone());
        let follow = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                {
                    let mut mirror = into.lock().expect("mirror");
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => put(&mut mirror, kv),
                            EventType::Delete => {
                                if let Some((role, revision)) = mirror.keys.remove(kv.key())
                                    && let Some(line) = mirror.lines.get_mut(&role)
                                {
                                    line.remove(&revision);
                                }
                            }
                        }
                    }
                }
                wake.notify_waiters();
            }
        });
        Ok(Self {
            elections,
            changed,
            follow,
        })
    }

    /// Waits until `probe` of the elections holds, at most `within`; the
    /// instant it was seen to hold, and its value.
    async fn until<T>(
        &self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut(&Elections) -> Option<T>,
    ) -> anyhow::Result<(Instant, T)> {
        let deadline = Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if let Some(value) = probe(&self.elections.lock().expect("mirror")) {
                return Ok((Instant::now(), value));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                bail!("{what} did not happen within {within:?}");
            }
        }
    }
}

fn put(mirror: &mut Elections, kv: &etcd_client::KeyValue) {
    let Ok(session) = SessionInfo::decode(kv.key(), kv.value()) else {
        return;
    };
    let revision = kv.create_revision();
    mirror
        .addresses
        .insert(session.server_id, session.address.clone());
    mirror
        .keys
        .insert(kv.key().to_vec(), (session.role.clone(), revision));
    mirror
        .lines
        .entry(session.role)
        .or_default()
        .insert(revision, (session.server_id, session.state));
}

/// How long after a node was killed or stopped every role it led served
/// elsewhere, and its last candidate key was gone.
struct Round {
    moved: Duration,
    left: Duration,
}

/// Three nodes of `roles` idle roles under `root`.
struct Cluster {
    nodes: Vec<StandinProcess>,
    /// Each node's address, as its sessions publish it.
    addresses: Vec<String>,
    mirror: Mirror,
    roles: usize,
}

/// A node of `roles` idle roles, and its address.
fn spawn_node(
    binary: &std::path::Path,
    etcd: &EtcdServer,
    root: &str,
    roles: usize,
    spread: bool,
) -> anyhow::Result<(StandinProcess, String)> {
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let yaml = format!(
        "etcd:\n  endpoints: [{}]\n  rootPath: {root}\n  connectAttempts: 0\nnode:\n  address: {address}\nsession:\n  spreadLeaders: {spread}\n",
        etcd.endpoint()
    );
    let idle = roles.to_string();
    let args = ["--idle-roles", idle.as_str(), "--listen", address.as_str()];
    Ok((StandinProcess::spawn(binary, &yaml, &args)?, address))
}

impl Cluster {
    /// Starts the nodes and waits until every role serves; the time that took.
    async fn start(
        etcd: &EtcdServer,
        binary: &std::path::Path,
        roles: usize,
    ) -> anyhow::Result<(Self, Duration)> {
        let root = format!("bench-many-{roles}");
        let mirror = Mirror::start(etcd, format!("{root}/election/")).await?;
        let started = Instant::now();
        let (nodes, addresses) = (0..NODES)
            .map(|_| spawn_node(binary, etcd, &root, roles, true))
            .collect::<anyhow::Result<(Vec<_>, Vec<_>)>>()?;
        let (served, _) = mirror
            .until("every role serving", SETTLE_WITHIN, |e| e.leaders(roles))
            .await?;
        let cluster = Self {
            nodes,
            addresses,
            mirror,
            roles,
        };
        Ok((cluster, served.duration_since(started)))
    }

    /// Waits until every role serves and the leaders are spread within one;
    /// leaders per node, in server ID order, and when that was seen.
    async fn spread(&self, nodes: usize) -> anyhow::Result<(Instant, Vec<usize>)> {
        let roles = self.roles;
        self.mirror
            .until("the leaders spread within one", SETTLE_WITHIN, |e| {
                let counts = e.leaders(roles)?;
                let (max, min) = (counts.values().max()?, counts.values().min()?);
                (counts.len() == nodes.min(roles) && max - min <= 1)
                    .then(|| counts.values().copied().collect())
            })
            .await
    }

    /// Waits until every node is at rest: the next in line of each leader's
    /// roles spread over the others, and each role joined on a live lease,
    /// holding a warm copy, and serving or standing by. A kill right after
    /// the spread of the leaders would also time a restarted node still
    /// loading its copies, or one survivor taking every role of the dead
    /// node, which a steady cluster does not pay.
    async fn steady(&self) -> anyhow::Result<()> {
        self.mirror
            .until("the next in line spread within one", SETTLE_WITHIN, |e| {
                e.heirs_spread().then_some(())
            })
            .await?;
        let deadline = Instant::now() + SETTLE_WITHIN;
        for address in &self.addresses {
            let mut client = CoordinationClient::connect(format!("http://{address}")).await?;
            loop {
                let status = client.status(StatusRequest {}).await?.into_inner();
                let at_rest = status.roles.len() == self.roles
                    && status.roles.iter().all(|role| {
                        role.lease_id != 0
                            && role.metadata_copy.is_some()
                            && (role.state == "serving" || role.state == "standby")
                    });
                if at_rest {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {address} did not come to rest within {SETTLE_WITHIN:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The node that leads the most roles: its index, its server ID, and
    /// the roles it leads.
    fn busiest(&self) -> anyhow::Result<(usize, i64, Vec<String>)> {
        let elections = self.mirror.elections.lock().expect("mirror");
        let serving = elections.serving();
        let mut led: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (role, server) in &serving {
            led.entry(*server).or_default().push((*role).to_owned());
        }
        let (server, roles) = led
            .into_iter()
            .max_by_key(|(_, roles)| roles.len())
            .context("no role serves")?;
        let address = elections
            .addresses
            .get(&server)
            .context("the busiest server published no address")?;
        let index = self
            .addresses
            .iter()
            .position(|a| a == address)
            .context("the busiest server is none of the cluster's nodes")?;
        Ok((index, server, roles))
    }

    /// Kills (`graceful` false) or stops the busiest node, and times until
    /// every role it led serves on another; then restarts it and waits for
    /// the spread to give it its share again.
    async fn round(&mut self, graceful: bool) -> anyhow::Result<(Round, usize)> {
        self.spread(NODES).await?;
        self.steady().await?;
        let (index, dead, led) = self.busiest()?;
        let acted = Instant::now();
        if graceful {
            self.nodes[index].terminate()?;
        } else {
            self.nodes[index].kill()?;
        }
        // When the stopped node's last candidate key went: at a kill, the
        // witness's one revoke.
        let mut left = None;
        let (moved, _) = self
            .mirror
            .until(
                "every role of the stopped node served elsewhere",
                SETTLE_WITHIN,
                |e| {
                    let candidate = |line: &BTreeMap<i64, (i64, RoleState)>| {
                        line.values().any(|(server, _)| *server == dead)
                    };
                    if left.is_none() && !e.lines.values().any(candidate) {
                        left = Some(acted.elapsed());
                    }
                    let serving = e.serving();
                    led.iter()
                        .all(|role| serving.get(role.as_str()).is_some_and(|s| *s != dead))
                        .then_some(())
                },
            )
            .await?;
        let took = Round {
            moved: moved.duration_since(acted),
            left: left.unwrap_or_else(|| moved.duration_since(acted)),
        };
        if graceful {
            let deadline = Instant::now() + SETTLE_WITHIN;
            while self.nodes[index].try_exit_status().is_none() {
                if Instant::now() > deadline {
                    bail!("the node did not exit after SIGTERM");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.nodes[index].restart()?;
        self.spread(NODES).await?;
        Ok((took, led.len()))
    }

    /// SIGTERM to every node, and waits for each to exit: their leases go
    /// with them, not a TTL later, so the next cluster starts on a clean etcd.
    async fn stop(mut self) -> anyhow::Result<()> {
        stop_all(&mut self.nodes).await
    }

    fn resident(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|node| resident_bytes(node.pid()).unwrap_or_default())
            .collect()
    }
}

/// SIGTERM to each of `nodes`, then waits for every one to exit.
async fn stop_all(nodes: &mut [StandinProcess]) -> anyhow::Result<()> {
    for node in nodes.iter() {
        node.terminate()?;
    }
    let deadline = Instant::now() + SETTLE_WITHIN;
    for node in nodes.iter_mut() {
        while node.try_exit_status().is_none() {
            if Instant::now() > deadline {
                bail!("a node did not exit after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// What etcd's `/metrics` says of `name`.
async fn metric(etcd: &EtcdServer, name: &str) -> anyhow::Result<f64> {
    Ok(etcd.metric(name).await?)
}

/// The scenario for each of `sizes` roles, then the kill -9 and graceful
/// rounds at `handover_roles`.
pub async fn run(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    sizes: &[usize],
    handover_roles: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    println!(
        "bench: many-roles, 3 nodes x {sizes:?} idle roles, then kill -9 and SIGTERM of the node leading the most of {handover_roles} ({rounds} rounds each)"
    );
    let mut baseline: Option<(usize, f64)> = None;
    for &roles in sizes {
        let (cluster, all_serving) = Cluster::start(etcd, binary, roles).await?;
        let started = Instant::now() - all_serving;
        let (spread_at, leaders) = cluster.spread(NODES).await?;
        let leases = etcd.client().await?.leases().await?.leases().len();
        // The bench's own mirror holds one of the streams.
        let streams = metric(etcd, "etcd_debugging_mvcc_watch_stream_total").await? - 1.0;
        let watchers = metric(etcd, "etcd_debugging_mvcc_watcher_total").await? - 1.0;
        let window = Duration::from_secs(5);
        let renewed = metric(etcd, "etcd_debugging_lease_renewed_total").await?;
        tokio::time::sleep(window).await;
        let renewals = (metric(etcd, "etcd_debugging_lease_renewed_total").await? - renewed)
            / window.as_secs_f64();
        let standby = standby_resident(etcd, binary, roles).await?;
        let per_role = match baseline {
            Some((base_roles, base_rss)) if roles > base_roles => {
                format!(
                    "{:.1}",
                    (standby - base_rss) / (roles - base_roles) as f64 / 1024.0
                )
            }
            _ => "-".to_owned(),
        };
        if baseline.is_none() {
            baseline = Some((roles, standby));
        }
        let rss: Vec<String> = cluster
            .resident()
            .iter()
            .map(|bytes| format!("{:.0}", *bytes as f64 / 1e6))
            .collect();
        println!(
            "bench: scenario=many-roles roles={roles} nodes={NODES} all_serving_ms={:.0} spread_ms={:.0} leaders_per_node={leaders:?} leases={leases} watch_streams_per_node={:.1} watchers={watchers:.0} lease_renewals_per_s={renewals:.1} node_rss_mb=[{}] standby_rss_mb={:.1} standby_kb_per_role={per_role}",
            all_serving.as_secs_f64() * 1000.0,
            spread_at.duration_since(started).as_secs_f64() * 1000.0,
            streams / NODES as f64,
            rss.join(","),
            standby / 1e6,
        );
        cluster.stop().await?;
    }
    if rounds == 0 {
        return Ok(());
    }
    let (mut cluster, _) = Cluster::start(etcd, binary, handover_roles)
        .await
        .context("starting the handover cluster")?;
    let mut rounds_of: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
    let mut moved = 0;
    for round in 1..=rounds {
        let (killed, led) = cluster.round(false).await?;
        moved = led;
        let (stopped, _) = cluster.round(true).await?;
        eprintln!(
            "bench: many-roles round {round}: kill9 {:.1} ms (keys gone at {:.1}), graceful {:.1} ms",
            killed.moved.as_secs_f64() * 1000.0,
            killed.left.as_secs_f64() * 1000.0,
            stopped.moved.as_secs_f64() * 1000.0
        );
        rounds_of.entry("kill9").or_default().push(killed);
        rounds_of.entry("graceful").or_default().push(stopped);
    }
    cluster.stop().await?;
    for (act, rounds) in rounds_of {
        let moved_after: Vec<Duration> = rounds.iter().map(|r| r.moved).collect();
        let left_after: Vec<Duration> = rounds.iter().map(|r| r.left).collect();
        println!(
            "bench: scenario=many-roles-{act} roles={handover_roles} moved={moved} {} keys_gone_p50_ms={:.1}",
            Summary::of(&moved_after),
            Summary::of(&left_after).p50_ms
        );
    }
    Ok(())
}

/// The resident memory of a node that stands by for `roles` roles, which
/// another node leads (both with the spread off), once it has joined every
/// election.
async fn standby_resident(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    roles: usize,
) -> anyhow::Result<f64> {
    let root = format!("bench-standby-{roles}");
    let mirror = Mirror::start(etcd, format!("{root}/election/")).await?;
    let (leader, _) = spawn_node(binary, etcd, &root, roles, false)?;
    mirror
        .until("the leader serving every role", SETTLE_WITHIN, |e| {
            e.leaders(roles)
        })
        .await?;
    let (standby, _) = spawn_node(binary, etcd, &root, roles, false)?;
    mirror
        .until("the standby in every election", SETTLE_WITHIN, |e| {
            (e.lines.len() == roles && e.lines.values().all(|line| line.len() == 2)).then_some(())
        })
        .await?;
    // Resident memory settles once the joins' transient buffers are freed.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = resident_bytes(standby.pid()).unwrap_or_default();
        if now.abs_diff(last) < 64 * 1024 {
            break;
        }
        last = now;
    }
    let rss = resident_bytes(standby.pid()).unwrap_or_default() as f64;
    stop_all(&mut [standby, leader]).await?;
    Ok(rss)
}
