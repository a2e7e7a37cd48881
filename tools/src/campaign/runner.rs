//! Runs one fault campaign: etcd (one member or a cluster), a fault proxy per node and member, a `standin run --role tso --role kv` process per node, clients of both roles, a status sampler, and a seeded sequence of faults on a role's leader and on etcd.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use standin::Config;
use standin::testing::{EtcdCluster, FaultProxy, StandinProcess, free_loopback_port};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

mod cluster;
mod faults;
mod members;
mod probes;

use crate::campaign::checker;
use crate::campaign::history::ROLES;
use crate::campaign::history::Recorder;
use crate::metadata;
use cluster::{Leaders, kept_term};
use faults::Fault;
use probes::{Probe, allocate, overload, read_and_write, sample};

/// Nodes in the cluster: one leader, two standbys.
const NODES: usize = 3;
/// Idle roles each node runs beside the two under test: many roles on one
/// lease, whose leadership the spread shares out as faults move it.
const IDLE_ROLES: usize = 20;
/// Client tasks of each role at once.
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
/// Pace of the requests to a leader an operator deposed, until it refuses.
const HAMMER_PACE: Duration = Duration::from_millis(1);
/// `coordinator.activateTimeout` of every node: short, so hanging
/// activations end in seconds.
const ACTIVATE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a node may take to exit after SIGTERM.
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// Added delay on a delayed link, each way.
const LINK_DELAY: Duration = Duration::from_millis(100);
/// `coordinator.queueDepth` of every node: small, so that the overloading
/// client's bursts overflow the register's queue and are refused.
const QUEUE_DEPTH: usize = 8;
/// Callers of the overloading client, each writing and reading a key of its own.
const OVERLOAD_WORKERS: usize = 32;
/// The overloading client's callers all call at once, this often: a burst
/// of four times the queue.
const OVERLOAD_BURST_EVERY: Duration = Duration::from_millis(20);
/// How long an overloading call waits: short, so failovers leave calls in doubt.
const OVERLOAD_WITHIN: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many faults to inject.
    pub faults: usize,
    /// Seeds the fault sequence (kinds, durations, pauses).
    pub seed: u64,
    /// The `standin` binary to run the nodes with.
    pub binary: PathBuf,
    /// Keys of 100 bytes put under the kv role's metadata prefix halfway
    /// through, so that the second half of the faults meets standbys that
    /// follow (and takeovers that catch up) that much metadata; 0: none.
    pub preload: usize,
    /// The cluster it runs against and the faults it may inject.
    pub setup: Setup,
}

/// The cluster a campaign runs against and the faults it may inject: the
/// `campaign` binary's flags, and what a test sets.
#[derive(Debug, Clone, clap::Args)]
pub struct Setup {
    /// Members of the etcd cluster: 1, or an odd number from 3, which
    /// brings the faults of etcd itself (`etcd-member-kill`,
    /// `etcd-leader-kill`, `etcd-node-cut`, `etcd-member-freeze`,
    /// `etcd-quorum-loss`, `etcd-move-leader`).
    #[arg(long, default_value_t = 1)]
    pub etcd_members: usize,
    /// Inject only faults of etcd itself.
    #[arg(long)]
    pub etcd_faults_only: bool,
    /// Run the nodes with `coordinator.confirmAnswers: true`: an answer
    /// leaves only once a linearizable read finds the term's leader key.
    #[arg(long)]
    pub confirm_answers: bool,
    /// Add `stall-clock` to the node faults: the leader's lease clock
    /// stands still while its link is blackholed, as in a VM paused and
    /// resumed. Without --confirm-answers the overlap it causes is
    /// reported as violations: what the mode is for.
    #[arg(long)]
    pub stall_clock: bool,
}

impl Default for Setup {
    /// One etcd server, every node fault but the clock stall, answers unconfirmed.
    fn default() -> Self {
        Self {
            etcd_members: 1,
            etcd_faults_only: false,
            confirm_answers: false,
            stall_clock: false,
        }
    }
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

/// The processes and links of the cluster under test.
struct Cluster {
    /// Holds the witness secret the nodes read at start and restart.
    _secrets: tempfile::TempDir,
    etcd: EtcdCluster,
    /// Each node's links, one per etcd member: `proxies[node][member]`.
    proxies: Vec<Vec<FaultProxy>>,
    nodes: Vec<StandinProcess>,
    /// Channels for faults and resigns: no per-call timeout on the channel,
    /// each call bounds itself.
    control: Vec<Channel>,
    /// The address each node publishes, which a transfer names.
    addresses: Vec<String>,
    recorder: Recorder,
    /// `etcd.rootPath` of every node.
    root: String,
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
    if options.setup.etcd_members == 0
        || (options.setup.etcd_members > 1 && options.setup.etcd_members.is_multiple_of(2))
    {
        bail!(
            "--etcd-members {}: run 1 member, or an odd number from 3 (an even one adds a member without adding a fault it survives)",
            options.setup.etcd_members
        );
    }
    let recorder = Recorder::new();
    recorder.lock().answers_confirmed = options.setup.confirm_answers;
    let etcd = EtcdCluster::start(options.setup.etcd_members)
        .await
        .context("starting etcd")?;
    let root = format!("campaign-{}", options.seed);
    // The witnesses prove a cluster secret, as deployments' do.
    let secrets = tempfile::tempdir().context("a directory for the witness secret")?;
    let witness_secret = secrets.path().join("witness-secret");
    standin::testing::write_secret(
        &witness_secret,
        &format!("campaign witness secret {}\n", options.seed),
    )
    .context("writing the witness secret")?;
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    let mut control = Vec::new();
    let mut addresses = Vec::new();
    let mut tasks = JoinSet::new();
    for node in 0..NODES {
        let mut links = Vec::new();
        for member in etcd.endpoints() {
            links.push(
                FaultProxy::start(&member)
                    .await
                    .context("starting a fault proxy")?,
            );
        }
        let endpoints: Vec<String> = links.iter().map(FaultProxy::endpoint).collect();
        let address = format!("127.0.0.1:{}", free_loopback_port()?);
        let yaml = format!(
            "etcd:\n  endpoints: [{}]\n  rootPath: {root}\n  requestTimeout: 1s\n  connectAttempts: 0\nnode:\n  address: {address}\n  witnessSecretFile: {}\nsession:\n  ttl: {}s\ncoordinator:\n  activateTimeout: {}ms\n  queueDepth: {QUEUE_DEPTH}\n  confirmAnswers: {}\n",
            endpoints.join(", "),
            witness_secret.display(),
            TTL.as_secs(),
            ACTIVATE_TIMEOUT.as_millis(),
            options.setup.confirm_answers
        );
        let idle = IDLE_ROLES.to_string();
        let mut args: Vec<&str> = ROLES.iter().flat_map(|role| ["--role", role]).collect();
        args.extend([
            "--idle-roles",
            &idle,
            "--fault-injection",
            "--listen",
            &address,
        ]);
        let process = StandinProcess::spawn(&options.binary, &yaml, &args)
            .with_context(|| format!("starting node {node}"))?;
        let url = format!("http://{address}");
        control.push(Endpoint::from_shared(url.clone())?.connect_lazy());
        let sampling = Endpoint::from_shared(url)?
            .connect_timeout(STATUS_WITHIN)
            .timeout(STATUS_WITHIN)
            .connect_lazy();
        tasks.spawn(sample(node, sampling, recorder.clone()));
        proxies.push(links);
        nodes.push(process);
        addresses.push(address);
    }
    let mut cluster = Cluster {
        _secrets: secrets,
        etcd,
        proxies,
        nodes,
        control,
        addresses,
        recorder: recorder.clone(),
        root: root.clone(),
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
        cluster.etcd.endpoints().join(", ")
    );
    let client_config = Config::from_yaml_str(&client_yaml).context("the client config")?;
    // One batching client for every allocating task, as a service shares
    // one: calls made at once go to the leader in one request.
    let tso = std::sync::Arc::new(
        standin::service::TsoClient::connect(&client_config)
            .await
            .context("connecting the TSO client")?,
    );
    // Throughout, a client that overflows the register's queue in bursts,
    // with an oracle of its own: refused and kept calls are never applied.
    tasks.spawn(overload(
        client_config.clone(),
        recorder.clone(),
        options.seed.wrapping_sub(1),
    ));
    for client in 0..CLIENTS {
        let seed = options.seed.wrapping_add(client as u64 + 1);
        tasks.spawn(allocate(client, tso.clone(), recorder.clone(), seed));
        tasks.spawn(read_and_write(
            client,
            client_config.clone(),
            recorder.clone(),
            seed.wrapping_add(CLIENTS as u64),
        ));
    }

    let started = recorder.lock().start;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut injected = 0;
    for index in 1..=options.faults {
        if options.preload > 0 && index == options.faults / 2 + 1 {
            let prefix = format!("{root}/meta/kv/preload/");
            let client = cluster.etcd.client().await?;
            let at = std::time::Instant::now();
            metadata::preload(&client, &prefix, options.preload).await?;
            println!(
                "campaign: preloaded {} metadata keys of 100 bytes under {prefix} in {} ms; faults {index} on meet them",
                options.preload,
                at.elapsed().as_millis()
            );
        }
        // A short, varying calm between faults: clients allocate from a
        // settled leader, and faults do not always land at the same phase
        // of a keepalive cycle.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..=400))).await;
        // Who leads right now, not before the calm.
        let Some(leaders) = cluster
            .settle(&format!("the calm before fault {index}"))
            .await?
        else {
            println!("campaign: the cluster did not settle, so no more faults are injected");
            break;
        };
        let fault = Fault::pick(&mut rng, &options.setup);
        let role = rng.random_range(0..ROLES.len());
        let mut record = cluster
            .inject(index, fault, role, &leaders, &mut rng)
            .await
            .with_context(|| format!("fault {index}: {}", fault.name()))?;
        // Settled again (or the next round stops the campaign), so the
        // clients have had their chance to resume.
        let settled = cluster.settle(&format!("fault {index}")).await?.is_some();
        record.clients_paused = recorder.lock().clients_paused(record.at, CLIENTS);
        println!(
            "[{:7.1}s] fault {index}/{}: {}{} on {} (epoch {}, {}): {}, {}",
            record.at.duration_since(started).as_secs_f64(),
            options.faults,
            record.kind,
            record
                .role
                .map_or_else(String::new, |role| format!(" of {}", ROLES[role])),
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
                None => "a client has had no answer since".to_owned(),
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
        "campaign: {} tso batches, {} kv requests, {} status samples, longest client wait after a fault {} ms",
        history.batches.len(),
        history.kv_ops.len(),
        history.samples.len(),
        client_wait.as_millis()
    );
    for note in &report.notes {
        println!("note: {note}");
    }
    println!("{}", report.forced_line());
    let kills: Vec<_> = history
        .faults
        .iter()
        .filter(|f| f.kind == "kill-9")
        .collect();
    println!(
        "campaign: kill-9 n={} revoked-by-witness={} without-warm-standby={}",
        kills.len(),
        kills
            .iter()
            .filter(|f| f.witness_revoked == Some(true))
            .count(),
        kills
            .iter()
            .filter(|f| f.bound == faults::COLD_KILL_BOUND)
            .count()
    );
    let overloaded = &history.overload;
    println!(
        "campaign: overloading client workers={OVERLOAD_WORKERS} queue_depth={QUEUE_DEPTH} acked={} refused={} kept_by_client={} in_doubt={} reads={} violations={}; paced clients refused as overloaded: {}",
        overloaded.acked,
        overloaded.refused,
        overloaded.kept,
        overloaded.unknown,
        overloaded.reads,
        overloaded.violations.len(),
        history.refused_overloaded
    );
    for line in recovery_lines(&history.faults) {
        println!("{line}");
    }
    let spared: Vec<_> = history.faults.iter().flat_map(|f| &f.bystanders).collect();
    println!(
        "campaign: shared-lease bystanders n={} served-on={}",
        spared.len(),
        spared.iter().filter(|(_, _, kept)| *kept).count()
    );
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

/// One line per fault kind, in the order kinds first occurred: how many,
/// how long until a node served (p50 and max; a fault nothing recovered
/// from counts as its bound), and the longest a client waited for an
/// answer from the fault until the cluster settled (p50 and max).
fn recovery_lines(faults: &[crate::campaign::history::FaultRecord]) -> Vec<String> {
    let mut kinds: Vec<&str> = Vec::new();
    for fault in faults {
        if !kinds.contains(&fault.kind) {
            kinds.push(fault.kind);
        }
    }
    kinds
        .into_iter()
        .map(|kind| {
            let of_kind: Vec<_> = faults.iter().filter(|f| f.kind == kind).collect();
            let recovered = of_kind.iter().map(|f| f.recovered.unwrap_or(f.bound));
            let waits = of_kind.iter().filter_map(|f| f.clients_paused);
            let (recovered_p50, recovered_max) = p50_and_max(recovered);
            let (wait_p50, wait_max) = p50_and_max(waits);
            format!(
                "campaign: recovery kind={kind} n={} recovered_p50_ms={recovered_p50} recovered_max_ms={recovered_max} client_wait_p50_ms={wait_p50} client_wait_max_ms={wait_max}",
                of_kind.len()
            )
        })
        .collect()
}

/// The median and the largest of `times`, in milliseconds (0 for none).
fn p50_and_max(times: impl Iterator<Item = Duration>) -> (u128, u128) {
    let mut times: Vec<u128> = times.map(|t| t.as_millis()).collect();
    times.sort_unstable();
    match times.len() {
        0 => (0, 0),
        n => (times[(n - 1) / 2], times[n - 1]),
    }
}
