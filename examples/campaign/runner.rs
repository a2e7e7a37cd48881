//! Runs one fault campaign: etcd, a fault proxy and a `standin run --role tso` process per node, timestamp clients, a status sampler, and a seeded sequence of faults on the leader.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use standin::Config;
use standin::service::client::{TsoClient, with_epoch};
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::faults_client::FaultsClient;
use standin::service::grpc::proto::tso_client::TsoClient as TsoStub;
use standin::service::grpc::proto::{AllocateRequest, InjectRequest, ResignRequest, StatusRequest};
use standin::testing::{EtcdServer, FaultProxy, StandinProcess, free_loopback_port};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::checker;
use crate::history::{Batch, ClientError, FaultRecord, ImpairmentKind, Recorder, Sample, State};

/// Nodes in the cluster: one leader, two standbys.
const NODES: usize = 3;
/// Client tasks allocating at once.
const CLIENTS: usize = 3;
/// `session.ttl` of every node; short, so kills and freezes end in seconds.
const TTL: Duration = Duration::from_secs(2);
/// How often each node's status is sampled: the resolution of the serving
/// intervals and of the recovery times.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// A status call slower than this is dropped (a frozen or dead node), so the
/// sampler of that node polls again rather than hang.
const STATUS_WITHIN: Duration = Duration::from_millis(300);
/// Pace of each client: fast enough to see every failover, slow enough that
/// a long campaign's history stays small and the nodes keep their CPU.
const CLIENT_PACE: Duration = Duration::from_millis(5);
/// A client's deadline for one allocation: above every fault's bound, so a
/// failed allocation means the client did not follow the cluster.
const ALLOCATE_WITHIN: Duration = Duration::from_secs(20);
/// How long the cluster may take to be whole again after a fault is
/// repaired: one serving leader that every node sees.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// How long every client may take to allocate again once the campaign ends.
const CLIENTS_WITHIN: Duration = Duration::from_secs(10);
/// How long a probe of a frozen leader may wait: it answers once resumed.
const PROBE_WITHIN: Duration = Duration::from_secs(10);
/// Added delay on a delayed link, each way.
const LINK_DELAY: Duration = Duration::from_millis(100);
/// The role under test.
const ROLE: &str = "tso";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many faults to inject.
    pub faults: usize,
    /// Seeds the fault sequence (kinds, durations, pauses).
    pub seed: u64,
    /// The `standin` binary to run the nodes with.
    pub binary: PathBuf,
}

/// How a campaign went.
#[derive(Debug)]
pub struct Summary {
    /// The seed it ran with.
    pub seed: u64,
    /// Faults injected.
    pub faults: usize,
    /// Violations found.
    pub violations: usize,
    /// The longest time from a fault until a healthy node served (the
    /// bound, for a fault nothing recovered from).
    pub max_unavailable_ms: u128,
}

impl Summary {
    /// The campaign's last line.
    pub fn line(&self) -> String {
        format!(
            "campaign: seed={} faults={} violations={} max_unavailable_ms={}",
            self.seed, self.faults, self.violations, self.max_unavailable_ms
        )
    }
}

/// A fault the campaign can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
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

    fn pick(rng: &mut StdRng) -> Self {
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

    fn name(self) -> &'static str {
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
    fn bound(self) -> Duration {
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
enum Repair {
    /// SIGCONT to a node, ending impairment `.1`.
    Cont(usize, usize),
    /// Heal a node's proxy, ending impairment `.1`.
    Heal(usize, usize),
}

/// What counts as recovered from one fault.
#[derive(Debug, Clone, Copy)]
struct Recovery {
    /// Only samples sent from here on count.
    from: Instant,
    /// When set, only a term newer than this epoch counts: the fault ended
    /// the leader's term, so its old term serving on is no recovery.
    newer_than: Option<i64>,
    /// For a link fault the leader may ride out: its term counts too if the
    /// node served it in every sample from the fault until one sent after
    /// the repair.
    or_kept: Option<usize>,
}

/// Two requests, once a successor of a frozen leader serves: one to the
/// successor, then one to the frozen leader with the epoch it led, as a
/// client that has not heard of the successor would send. The deposed
/// leader must refuse the second when it resumes; if it answers, its
/// timestamps come after the successor's in real time.
#[derive(Debug, Clone, Copy)]
struct Probe {
    node: usize,
    epoch: i64,
    /// The client number its batches are recorded under.
    client: usize,
}

impl Probe {
    /// Sends both requests (the second is answered once the node resumes),
    /// records the batches it gets, and says what happened.
    async fn send(
        self,
        (successor, successor_epoch): (Channel, i64),
        frozen: Channel,
        recorder: Recorder,
    ) -> String {
        let first = match self.allocate(successor, successor_epoch, &recorder).await {
            Ok(batch) => format!("{} (epoch {})", batch.first, batch.epoch),
            Err(refused) => refused,
        };
        let second = match self.allocate(frozen, self.epoch, &recorder).await {
            Ok(batch) => format!(
                "ANSWERED after resuming with {} (epoch {})",
                batch.first, batch.epoch
            ),
            Err(refused) => refused,
        };
        format!(
            "probe: the successor answered {first}, then the frozen leader asked with epoch {} {second}",
            self.epoch
        )
    }

    async fn allocate(
        &self,
        channel: Channel,
        epoch: i64,
        recorder: &Recorder,
    ) -> Result<Batch, String> {
        let sent = Instant::now();
        let request = with_epoch(AllocateRequest { count: 1 }, epoch);
        let answer =
            tokio::time::timeout(PROBE_WITHIN, TsoStub::new(channel).allocate(request)).await;
        let received = Instant::now();
        match answer {
            Ok(Ok(batch)) => {
                let batch = batch.into_inner();
                let batch = Batch {
                    client: self.client,
                    first: batch.first,
                    count: batch.count,
                    epoch: batch.epoch,
                    sent,
                    received,
                };
                recorder.lock().batches.push(batch);
                Ok(batch)
            }
            Ok(Err(status)) => Err(format!("refused ({:?})", status.code())),
            Err(_) => Err(format!(
                "did not answer within {} s",
                PROBE_WITHIN.as_secs()
            )),
        }
    }
}

/// The processes and links of the cluster under test.
struct Cluster {
    etcd: EtcdServer,
    proxies: Vec<FaultProxy>,
    nodes: Vec<StandinProcess>,
    /// Channels for faults and resigns: no per-call timeout on the channel,
    /// each call bounds itself.
    control: Vec<Channel>,
    recorder: Recorder,
}

/// Runs a campaign and checks its history.
pub async fn run(options: Options) -> anyhow::Result<Summary> {
    println!(
        "campaign: seed={} faults={} (rerun with --seed {} for the same fault sequence)",
        options.seed, options.faults, options.seed
    );
    if !options.binary.is_file() {
        bail!(
            "no standin binary at {}: build it (cargo build --release --bin standin; make campaign does) or pass --binary PATH",
            options.binary.display()
        );
    }
    let recorder = Recorder::new();
    let etcd = EtcdServer::start().await.context("starting etcd")?;
    let root = format!("campaign-{}", options.seed);
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    let mut control = Vec::new();
    let mut tasks = JoinSet::new();
    for node in 0..NODES {
        let proxy = FaultProxy::start(&etcd.endpoint())
            .await
            .context("starting a fault proxy")?;
        let address = format!("127.0.0.1:{}", free_loopback_port()?);
        let yaml = format!(
            "etcd:\n  endpoints: [{}]\n  rootPath: {root}\n  requestTimeout: 1s\n  connectAttempts: 0\nnode:\n  address: {address}\nsession:\n  ttl: {}s\n",
            proxy.endpoint(),
            TTL.as_secs()
        );
        let process = StandinProcess::spawn(
            &options.binary,
            &yaml,
            &["--role", ROLE, "--fault-injection", "--listen", &address],
        )
        .with_context(|| format!("starting node {node}"))?;
        let url = format!("http://{address}");
        control.push(Endpoint::from_shared(url.clone())?.connect_lazy());
        let sampling = Endpoint::from_shared(url)?
            .connect_timeout(STATUS_WITHIN)
            .timeout(STATUS_WITHIN)
            .connect_lazy();
        tasks.spawn(sample(node, sampling, recorder.clone()));
        proxies.push(proxy);
        nodes.push(process);
    }
    let mut cluster = Cluster {
        etcd,
        proxies,
        nodes,
        control,
        recorder: recorder.clone(),
    };
    if cluster.settle("the start").await?.is_none() {
        bail!(
            "the cluster never settled after the start: {}",
            recorder.lock().stalls.join("; ")
        );
    }
    // Straight to etcd, not through a proxy: the clients are not under test
    // here, and must see every leader the nodes elect.
    let client_yaml = format!(
        "etcd:\n  endpoints: [{}]\n  rootPath: {root}\n  requestTimeout: 1s\n  connectAttempts: 0\n  retry: {{initial: 50ms, max: 1s}}\n",
        cluster.etcd.endpoint()
    );
    let client_config = Config::from_yaml_str(&client_yaml).context("the client config")?;
    for client in 0..CLIENTS {
        tasks.spawn(allocate(
            client,
            client_config.clone(),
            recorder.clone(),
            options.seed.wrapping_add(client as u64 + 1),
        ));
    }

    let started = recorder.lock().start;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut injected = 0;
    for index in 1..=options.faults {
        // A short, varying calm between faults: clients allocate from a
        // settled leader, and faults do not always land at the same phase
        // of a keepalive cycle.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..=400))).await;
        // Who leads right now, not before the calm.
        let Some((node, epoch)) = cluster
            .settle(&format!("the calm before fault {index}"))
            .await?
        else {
            println!("campaign: the cluster did not settle, so no more faults are injected");
            break;
        };
        let fault = Fault::pick(&mut rng);
        let mut record = cluster
            .inject(index, fault, node, epoch, &mut rng)
            .await
            .with_context(|| format!("fault {index}: {}", fault.name()))?;
        // Settled again (or the next round stops the campaign), so the
        // clients have had their chance to resume.
        let settled = cluster.settle(&format!("fault {index}")).await?.is_some();
        record.clients_paused = recorder.lock().clients_paused(record.at, CLIENTS);
        println!(
            "[{:7.1}s] fault {index}/{}: {} on {} (epoch {}, {}): {}, {}",
            record.at.duration_since(started).as_secs_f64(),
            options.faults,
            record.kind,
            record
                .node
                .map_or_else(|| "etcd".to_owned(), |n| format!("node {n}")),
            record.epoch,
            record.detail,
            match record.recovered {
                Some(took) => format!("recovered in {} ms", took.as_millis()),
                None => format!("NOT recovered within {} ms", record.bound.as_millis()),
            },
            match record.clients_paused {
                Some(paused) => format!("longest client wait {} ms", paused.as_millis()),
                None => "a client has not allocated since".to_owned(),
            }
        );
        recorder.lock().faults.push(record);
        injected += 1;
        if !settled {
            println!("campaign: the cluster did not settle, so no more faults are injected");
            break;
        }
    }

    cluster.clients_progress().await;
    tasks.shutdown().await;

    let history = recorder.lock();
    let report = checker::check(&history);
    let client_wait = history
        .faults
        .iter()
        .filter_map(|f| f.clients_paused)
        .max()
        .unwrap_or_default();
    println!(
        "campaign: {} batches, {} status samples, longest client wait after a fault {} ms",
        history.batches.len(),
        history.samples.len(),
        client_wait.as_millis()
    );
    for note in &report.notes {
        println!("note: {note}");
    }
    for message in &report.messages {
        println!("VIOLATION: {message}");
    }
    let max_unavailable_ms = history
        .faults
        .iter()
        .map(|f| f.recovered.unwrap_or(f.bound).as_millis())
        .max()
        .unwrap_or(0);
    drop(history);
    if report.violations > 0 {
        match cluster.keep_logs(options.seed, &report) {
            Ok(dir) => println!(
                "campaign: node logs and violations kept in {}",
                dir.display()
            ),
            Err(error) => println!("campaign: could not keep the node logs: {error:#}"),
        }
    }
    Ok(Summary {
        seed: options.seed,
        faults: injected,
        violations: report.violations,
        max_unavailable_ms,
    })
}

/// Polls one node's `Coordination.Status` until aborted, recording each answer.
async fn sample(node: usize, channel: Channel, recorder: Recorder) {
    let mut client = CoordinationClient::new(channel);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let answer = tokio::time::timeout(STATUS_WITHIN, client.status(StatusRequest {})).await;
        let received = Instant::now();
        // No answer (dead, frozen, starting): nothing is known, nothing recorded.
        let Ok(Ok(answer)) = answer else { continue };
        let answer = answer.into_inner();
        let Some(role) = answer.roles.iter().find(|r| r.role == ROLE) else {
            continue;
        };
        recorder.lock().samples.push(Sample {
            node,
            server_id: answer.server_id,
            state: State::parse(&role.state),
            epoch: role.epoch,
            leader_epoch: role.leader.as_ref().map_or(0, |l| l.epoch),
            sent,
            received,
        });
    }
}

/// Allocates timestamps until aborted, recording every batch and every failure.
async fn allocate(client: usize, config: Config, recorder: Recorder, seed: u64) {
    let tso = match TsoClient::connect(&config).await {
        Ok(tso) => tso,
        Err(error) => {
            recorder.lock().client_errors.push(ClientError {
                client,
                at: Instant::now(),
                message: format!("connecting: {error}"),
            });
            return;
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(CLIENT_PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let count = rng.random_range(1..=64);
        let sent = Instant::now();
        let answer = tso.allocate(count, ALLOCATE_WITHIN).await;
        let received = Instant::now();
        let mut history = recorder.lock();
        match answer {
            Ok(batch) if batch.count == count => history.batches.push(Batch {
                client,
                first: batch.first,
                count: batch.count,
                epoch: batch.epoch,
                sent,
                received,
            }),
            Ok(batch) => history.client_errors.push(ClientError {
                client,
                at: received,
                message: format!(
                    "asked for {count} timestamps, got {} from {} (epoch {})",
                    batch.count, batch.first, batch.epoch
                ),
            }),
            Err(error) => history.client_errors.push(ClientError {
                client,
                at: received,
                message: error.to_string(),
            }),
        }
    }
}

impl Cluster {
    /// Waits until every node answers, exactly one serves and every node
    /// sees it as leader; returns that node and its epoch. A node whose
    /// process exited by itself is restarted (and recorded as a stall).
    /// `None`, with a stall recorded, when that takes over [`SETTLE_WITHIN`].
    async fn settle(&mut self, after: &str) -> anyhow::Result<Option<(usize, i64)>> {
        let since = Instant::now();
        loop {
            for (node, process) in self.nodes.iter_mut().enumerate() {
                if let Some(status) = process.try_exit_status() {
                    let stall = format!(
                        "after {after}: node {node} exited by itself ({status}); its log ends with:\n{}",
                        tail(&process.log(), 20)
                    );
                    println!("campaign: {stall}");
                    self.recorder.lock().stalls.push(stall);
                    process.restart()?;
                }
            }
            let latest = self.latest_samples(since);
            if let Some(leader) = settled(&latest) {
                return Ok(Some(leader));
            }
            if since.elapsed() > SETTLE_WITHIN {
                let seen: Vec<String> = latest
                    .iter()
                    .enumerate()
                    .map(|(node, sample)| match sample {
                        Some(s) => format!(
                            "node {node}: {:?} epoch {} (server {}), sees leader epoch {}",
                            s.state, s.epoch, s.server_id, s.leader_epoch
                        ),
                        None => format!("node {node}: no answer"),
                    })
                    .collect();
                let stall = format!(
                    "after {after}: no single leader seen by every node within {} s: {}",
                    SETTLE_WITHIN.as_secs(),
                    seen.join("; ")
                );
                println!("campaign: {stall}");
                self.recorder.lock().stalls.push(stall);
                return Ok(None);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Each node's latest sample sent at or after `since`.
    fn latest_samples(&self, since: Instant) -> Vec<Option<Sample>> {
        let history = self.recorder.lock();
        let mut latest = vec![None; NODES];
        // From the end: samples are recorded about in time order, and one
        // status call takes under STATUS_WITHIN, so older ones can stop the scan.
        for sample in history.samples.iter().rev() {
            if sample.received + STATUS_WITHIN < since {
                break;
            }
            if sample.sent >= since && latest[sample.node].is_none() {
                latest[sample.node] = Some(*sample);
            }
        }
        latest
    }

    /// Injects `fault` on `node` (the leader, at `epoch`), waits for a
    /// healthy node to serve and for the fault's repair, and says how it went.
    async fn inject(
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
    async fn wait_recovery(
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
    async fn inject_actor_fault(&self, node: usize, fault: &str) -> anyhow::Result<bool> {
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
    async fn resign(&self, node: usize) -> anyhow::Result<()> {
        let mut coordination = CoordinationClient::new(self.control[node].clone());
        let request = ResignRequest {
            role: ROLE.to_owned(),
        };
        tokio::time::timeout(Duration::from_secs(10), coordination.resign(request))
            .await
            .context("no answer within 10 s")??;
        Ok(())
    }

    /// Waits until every client has allocated since now; a client that does
    /// not within [`CLIENTS_WITHIN`] is recorded as a stall.
    async fn clients_progress(&self) {
        let since = Instant::now();
        loop {
            let behind: Vec<usize> = {
                let history = self.recorder.lock();
                (0..CLIENTS)
                    .filter(|client| {
                        !history
                            .batches
                            .iter()
                            .rev()
                            .take_while(|b| b.sent >= since)
                            .any(|b| b.client == *client)
                    })
                    .collect()
            };
            if behind.is_empty() {
                return;
            }
            if since.elapsed() > CLIENTS_WITHIN {
                let stall = format!(
                    "at the end, clients {behind:?} allocated nothing within {} s",
                    CLIENTS_WITHIN.as_secs()
                );
                println!("campaign: {stall}");
                self.recorder.lock().stalls.push(stall);
                return;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Copies every node's log and the violations to a directory that
    /// outlives the campaign, and returns it.
    fn keep_logs(&self, seed: u64, report: &checker::Report) -> anyhow::Result<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("standin-campaign-{seed}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for (node, process) in self.nodes.iter().enumerate() {
            std::fs::write(dir.join(format!("node{node}.log")), process.log())?;
        }
        let history = self.recorder.lock();
        let mut text = String::new();
        for fault in &history.faults {
            text.push_str(&format!(
                "fault {} at {} ms: {} on {:?} (epoch {}): {}: recovered {:?}\n",
                fault.index,
                history.ms(fault.at),
                fault.kind,
                fault.node,
                fault.epoch,
                fault.detail,
                fault.recovered
            ));
        }
        for message in &report.messages {
            text.push_str(&format!("VIOLATION: {message}\n"));
        }
        std::fs::write(dir.join("violations.txt"), text)?;
        Ok(dir)
    }
}

/// The leader and its epoch when the samples show one serving node, every
/// other node in standby, and every node seeing that leader.
fn settled(latest: &[Option<Sample>]) -> Option<(usize, i64)> {
    let samples: Vec<&Sample> = latest.iter().flatten().collect();
    if samples.len() != NODES {
        return None;
    }
    let mut serving = samples.iter().filter(|s| s.state == State::Serving);
    let leader = serving.next()?;
    if serving.next().is_some() {
        return None;
    }
    let whole = samples.iter().all(|s| {
        (s.node == leader.node || s.state == State::Standby) && s.leader_epoch == leader.epoch
    });
    whole.then_some((leader.node, leader.epoch))
}

/// When `node` served term `epoch` in every sample it answered from `at`
/// until one sent after `repaired`: the time from `at` to its first such
/// answer, since it never stopped serving.
fn kept_term(
    recorder: &Recorder,
    node: usize,
    epoch: i64,
    at: Instant,
    repaired: Instant,
) -> Option<Duration> {
    let history = recorder.lock();
    let mut first = None;
    for sample in history
        .samples
        .iter()
        .filter(|s| s.node == node && s.sent >= at)
    {
        if sample.state != State::Serving || sample.epoch != epoch {
            return None;
        }
        first.get_or_insert(sample.received);
        if sample.sent >= repaired {
            return first.map(|first| first.saturating_duration_since(at));
        }
    }
    None
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
