//! The request path's scenarios: TSO throughput and per-call latency from client processes against bare gRPC echoes on the same server, and the longest gap a busy TSO client sees across a failover.
//!
//! Each load runs in a client process of its own (this bench, started
//! again with `--load`), so that one, or three at once, load the nodes as
//! separate clients would; each prints one `load:` line that the bench
//! merges.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use standin::Config;
use standin::config::DEFAULT_THROTTLE_PERCENT;
use standin::service::client::AdmissionError;
use standin::service::client::ClientError;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::tso_client::TsoClient as TsoStub;
use standin::service::grpc::proto::{AllocateRequest, EchoMessage};
use standin::service::{KvClient, TsoClient, TsoClientOptions};
use standin::testing::EtcdServer;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::{Act, Cluster, Summary, Witness};

/// What a client process calls, once per caller per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    /// `TsoClient::allocate(1)`: batched on a stream to the leader.
    Tso,
    /// A unary `Tso.Allocate(1)` per call, to the leader.
    TsoUnary,
    /// A unary `Coordination.Echo` per call, to the leader: the transport's
    /// round trip, what a call costs without an oracle.
    EchoUnary,
    /// `Coordination.EchoStream`, callers batched on one stream as the TSO
    /// client batches them: the transport's limit for batched calls.
    EchoBatched,
}

/// What a client process is told to do (the bench's `--load-*` flags).
pub struct LoadArgs {
    pub load: Load,
    pub callers: usize,
    pub seconds: f64,
    pub etcd: String,
    pub root: String,
    pub address: String,
}

/// Calls finished before this are not counted: connections and streams open.
const WARM_UP: Duration = Duration::from_millis(500);

/// Per-call latency in buckets of 1 us up to 10 ms, then of 100 us up to 1 s.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
}

const FINE_US: u64 = 10_000;
const COARSE_US: u64 = 100;
const BUCKETS: usize = 20_000;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
        }
    }

    fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let index = if us < FINE_US {
            us
        } else {
            FINE_US + (us - FINE_US) / COARSE_US
        };
        self.counts[usize::try_from(index).unwrap_or(BUCKETS).min(BUCKETS - 1)] += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper edge of the bucket holding the fraction `p` of the calls, in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        let total = self.total();
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total.max(1));
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let index = index as u64;
                let upper_us = if index < FINE_US {
                    index + 1
                } else {
                    FINE_US + (index - FINE_US + 1) * COARSE_US
                };
                return upper_us as f64 / 1000.0;
            }
        }
        f64::NAN
    }

    /// `index:count` of the buckets that counted, for the `load:` line.
    fn encode(&self) -> String {
        let used: Vec<String> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| format!("{index}:{count}"))
            .collect();
        used.join(",")
    }

    fn decode(text: &str) -> anyhow::Result<Self> {
        let mut histogram = Self::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (index, count) = pair.split_once(':').context("a bucket is index:count")?;
            let index: usize = index.parse()?;
            *histogram
                .counts
                .get_mut(index)
                .context("a bucket out of range")? += count.parse::<u64>()?;
        }
        Ok(histogram)
    }
}

/// One caller's loop: `call` until `stop`, timing the calls that end
/// after the warm-up.
async fn caller<F, Fut>(started: Instant, stop: Arc<AtomicBool>, mut call: F) -> Histogram
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut histogram = Histogram::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        if let Err(error) = call().await {
            eprintln!("load: a call failed: {error:#}");
            continue;
        }
        if at.duration_since(started) >= WARM_UP {
            histogram.record(at.elapsed());
        }
    }
    histogram
}

/// Starts `count` callers, each calling `call` with its own clone of `shared`.
fn spawn_callers<S, F, Fut>(
    tasks: &mut tokio::task::JoinSet<Histogram>,
    count: usize,
    started: Instant,
    stop: &Arc<AtomicBool>,
    shared: S,
    call: F,
) where
    S: Clone + Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    for _ in 0..count {
        let (shared, call) = (shared.clone(), call.clone());
        tasks.spawn(caller(started, stop.clone(), move || call(shared.clone())));
    }
}

/// The config of a client of the nodes under `root` on `etcd`.
pub fn client_config(etcd: &[String], root: &str) -> Config {
    let mut config = Config::default();
    config.etcd.endpoints = etcd.to_vec();
    config.etcd.root_path = root.to_owned();
    config
}

/// A channel to one node.
fn channel_to(address: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

/// Callers of [`Load::EchoBatched`]: each waits on a oneshot; one task
/// sends every caller waiting as one message and answers them all.
fn echo_batcher(channel: Channel) -> mpsc::UnboundedSender<oneshot::Sender<()>> {
    let (callers, mut waiting) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    tokio::spawn(async move {
        let (requests, outgoing) = mpsc::channel(1);
        let Ok(answers) = CoordinationClient::new(channel)
            .echo_stream(ReceiverStream::new(outgoing))
            .await
        else {
            return;
        };
        let mut answers = answers.into_inner();
        while let Some(first) = waiting.recv().await {
            let mut batch = vec![first];
            while batch.len() < 10_000 {
                let Ok(next) = waiting.try_recv() else { break };
                batch.push(next);
            }
            let value = batch.len() as u64;
            if requests.send(EchoMessage { value }).await.is_err() {
                return;
            }
            match answers.message().await {
                Ok(Some(echo)) if echo.value == value => {}
                _ => return,
            }
            for caller in batch {
                let _ = caller.send(());
            }
        }
    });
    callers
}

/// A client process: `callers` tasks call for `seconds` after the warm-up,
/// then one line `load: calls=N histogram=...` on stdout.
pub async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = Duration::from_secs(10);
    let mut tasks = tokio::task::JoinSet::new();
    match args.load {
        Load::Tso => {
            let config = client_config(std::slice::from_ref(&args.etcd), &args.root);
            let options = TsoClientOptions::from_config(&config);
            let client = Arc::new(TsoClient::connect_with(&config, options).await?);
            spawn_callers(
                &mut tasks,
                args.callers,
                started,
                &stop,
                client,
                move |client| async move {
                    client.allocate(1, deadline).await?;
                    Ok(())
                },
            );
        }
        Load::TsoUnary => {
            let stub = TsoStub::new(channel_to(&args.address)?);
            spawn_callers(
                &mut tasks,
                args.callers,
                started,
                &stop,
                stub,
                |mut stub| async move {
                    stub.allocate(AllocateRequest { count: 1 }).await?;
                    Ok(())
                },
            );
        }
        Load::EchoUnary => {
            let stub = CoordinationClient::new(channel_to(&args.address)?);
            spawn_callers(
                &mut tasks,
                args.callers,
                started,
                &stop,
                stub,
                |mut stub| async move {
                    stub.echo(EchoMessage { value: 1 }).await?;
                    Ok(())
                },
            );
        }
        Load::EchoBatched => {
            let batcher = echo_batcher(channel_to(&args.address)?);
            spawn_callers(
                &mut tasks,
                args.callers,
                started,
                &stop,
                batcher,
                |batcher| async move {
                    let (answered, answer) = oneshot::channel();
                    batcher.send(answered).context("the batcher stopped")?;
                    answer.await.context("the echo stream ended")?;
                    Ok(())
                },
            );
        }
    }
    tokio::time::sleep_until((started + WARM_UP + Duration::from_secs_f64(args.seconds)).into())
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::new();
    while let Some(done) = tasks.join_next().await {
        histogram.merge(&done?);
    }
    println!(
        "load: calls={} histogram={}",
        histogram.total(),
        histogram.encode()
    );
    Ok(())
}

/// What `processes` client processes of `load` measured together.
struct Measured {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `load` from `processes` client processes at once, `callers` split
/// among them, against `cluster`'s leader at `address`.
async fn measure(
    etcd: &EtcdServer,
    cluster: &Cluster,
    address: &str,
    load: Load,
    callers: usize,
    processes: usize,
    seconds: f64,
) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let load_name = match load {
        Load::Tso => "tso",
        Load::TsoUnary => "tso-unary",
        Load::EchoUnary => "echo-unary",
        Load::EchoBatched => "echo-batched",
    };
    let children: Vec<_> = (0..processes)
        .map(|index| {
            // The callers split as evenly as they go.
            let share = callers / processes + usize::from(index < callers % processes);
            tokio::process::Command::new(&exe)
                .args(["--load", load_name])
                .args(["--load-callers", &share.to_string()])
                .args(["--load-seconds", &seconds.to_string()])
                .args(["--load-etcd", &etcd.endpoint()])
                .args(["--load-root", &cluster.root])
                .args(["--load-address", address])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut histogram = Histogram::new();
    for child in children {
        let output = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!("a {load_name} client process failed: {}", output.status);
        }
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix("load: "))
            .context("a client process printed no load line")?;
        let encoded = line
            .split_once("histogram=")
            .map(|(_, encoded)| encoded)
            .context("a load line without its histogram")?;
        histogram.merge(&Histogram::decode(encoded)?);
    }
    Ok(Measured {
        per_s: histogram.total() as f64 / seconds,
        p50_ms: histogram.percentile_ms(0.50),
        p99_ms: histogram.percentile_ms(0.99),
    })
}

/// Callers and the client processes they are split among, `CxP`.
#[derive(Debug, Clone, Copy)]
pub struct ClientShape {
    callers: usize,
    processes: usize,
}

impl std::str::FromStr for ClientShape {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = text.split_once('x').and_then(|(callers, processes)| {
            Some(Self {
                callers: callers.parse().ok()?,
                processes: processes.parse().ok().filter(|p| *p > 0)?,
            })
        });
        parsed.ok_or_else(|| format!("{text:?} is not CALLERSxPROCESSES, e.g. 1000x3"))
    }
}

/// `tso-throughput`: timestamps a second and per-call latency of the
/// batching client, of one unary call per timestamp, and of the bare
/// echoes, side by side at each number of callers.
pub async fn tso_throughput(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    shapes: &[ClientShape],
    seconds: f64,
) -> anyhow::Result<()> {
    println!("bench: tso-throughput, {seconds} s per load, each shape's loads in turn");
    let mut cluster = Cluster::start(
        etcd,
        binary,
        "bench-throughput",
        super::Shape::tso(Witness::On),
    )
    .await?;
    let (leader, _) = cluster.settle().await?;
    let address = cluster.nodes[leader].address.clone();
    for &ClientShape { callers, processes } in shapes {
        let mut measured = Vec::new();
        for load in [
            Load::Tso,
            Load::EchoBatched,
            Load::EchoUnary,
            Load::TsoUnary,
        ] {
            let it = measure(etcd, &cluster, &address, load, callers, processes, seconds).await?;
            println!(
                "bench: scenario=tso-throughput load={load:?} callers={callers} processes={processes} per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
                it.per_s, it.p50_ms, it.p99_ms
            );
            measured.push(it);
        }
        let [tso, batched, unary, _] = &measured[..] else {
            unreachable!("four loads")
        };
        println!(
            "bench: scenario=tso-throughput callers={callers} processes={processes} tso_per_s={:.0} ratio_to_echo_batched={:.2} tso_p50_ms={:.3} echo_unary_p50_ms={:.3} ratio_p50_to_echo_unary={:.2} tso_p99_ms={:.3}",
            tso.per_s,
            tso.per_s / batched.per_s,
            tso.p50_ms,
            unary.p50_ms,
            tso.p50_ms / unary.p50_ms,
            tso.p99_ms
        );
    }
    println!(
        "bench: anchor=pd-tso-bench per_s=870000-910000 (PD's published tools/pd-tso-bench, 1,000 callers in 3 clients, not run here)"
    );
    cluster.shut_down().await
}

/// `confirm-answers`: what `coordinator.confirmAnswers` costs an answer.
/// The same loads (`TsoClient::allocate(1)` batched on a stream, and one
/// unary `Tso.Allocate(1)` per call, from one client process) against a
/// cluster with the mode and one without, each load in turn, `seconds`
/// each.
pub async fn confirm_answers(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    seconds: f64,
) -> anyhow::Result<()> {
    println!("bench: confirm-answers, {seconds} s per load, with and without the mode in turn");
    let plain = super::Shape::tso(Witness::On);
    let confirming = super::Shape {
        extra: "coordinator:\n  confirmAnswers: true\n",
        ..plain
    };
    let mut clusters = Vec::new();
    for (root, shape) in [
        ("bench-unconfirmed", plain),
        ("bench-confirmed", confirming),
    ] {
        let mut cluster = Cluster::start(etcd, binary, root, shape).await?;
        let (leader, _) = cluster.settle().await?;
        let address = cluster.nodes[leader].address.clone();
        clusters.push((cluster, address));
    }
    for callers in [1, 100] {
        for load in [Load::Tso, Load::TsoUnary] {
            let mut measured = Vec::new();
            for (cluster, address) in &clusters {
                measured.push(measure(etcd, cluster, address, load, callers, 1, seconds).await?);
            }
            let [without, with] = &measured[..] else {
                unreachable!("two clusters")
            };
            println!(
                "bench: scenario=confirm-answers load={load:?} callers={callers} per_s={:.0} \
                 p50_ms={:.3} p99_ms={:.3} anchor=unconfirmed anchor_per_s={:.0} \
                 anchor_p50_ms={:.3} anchor_p99_ms={:.3} ratio_per_s={:.2} extra_p50_ms={:.3}",
                with.per_s,
                with.p50_ms,
                with.p99_ms,
                without.per_s,
                without.p50_ms,
                without.p99_ms,
                with.per_s / without.per_s,
                with.p50_ms - without.p50_ms
            );
        }
    }
    for (cluster, _) in clusters {
        cluster.shut_down().await?;
    }
    Ok(())
}

/// Callers of the busy client in `tso-failover-gap`.
const GAP_CALLERS: usize = 100;

/// The longest stretch without an answer, since it was last reset.
#[derive(Default)]
struct Gaps {
    last: Option<Instant>,
    longest: Duration,
    answers: u64,
    /// The epoch of the last answer.
    epoch: i64,
}

/// Callers allocating one timestamp at a time from one client, in a loop,
/// noting the longest stretch without an answer and counting every
/// timestamp not above its caller's last (a violation).
pub struct GapWatch {
    gaps: Arc<Mutex<Gaps>>,
    stop: Arc<AtomicBool>,
    violations: Arc<AtomicU64>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl GapWatch {
    /// Starts `callers` callers of `client`.
    pub fn start(client: Arc<TsoClient>, callers: usize) -> Self {
        let gaps = Arc::new(Mutex::new(Gaps::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicU64::new(0));
        let callers = (0..callers)
            .map(|_| {
                let (client, gaps, stop, violations) = (
                    client.clone(),
                    gaps.clone(),
                    stop.clone(),
                    violations.clone(),
                );
                tokio::spawn(async move {
                    let mut last = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(answer) = client.allocate(1, Duration::from_secs(30)).await else {
                            continue;
                        };
                        if answer.first <= last {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        last = answer.first;
                        let now = Instant::now();
                        let mut gaps = gaps.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(previous) = gaps.last {
                            gaps.longest = gaps.longest.max(now - previous);
                        }
                        gaps.last = Some(now);
                        gaps.answers += 1;
                        gaps.epoch = answer.epoch;
                    }
                })
            })
            .collect();
        Self {
            gaps,
            stop,
            violations,
            callers,
        }
    }

    fn gaps(&self) -> std::sync::MutexGuard<'_, Gaps> {
        self.gaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers so far.
    pub fn answers(&self) -> u64 {
        self.gaps().answers
    }

    /// The epoch of the last answer.
    pub fn epoch(&self) -> i64 {
        self.gaps().epoch
    }

    /// Waits until the callers got 1,000 answers more than `since`; fails
    /// after 30 s without them.
    pub async fn answered_more(&self, since: u64) -> anyhow::Result<()> {
        let within = Instant::now();
        while self.answers() < since + 1000 {
            if within.elapsed() > Duration::from_secs(30) {
                bail!("the client got no timestamps for 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The longest stretch without an answer since the last call, which
    /// starts the next stretch afresh.
    pub fn take_longest(&self) -> Duration {
        std::mem::take(&mut self.gaps().longest)
    }

    /// Stops the callers; the number of violations they saw.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for caller in self.callers {
            caller.await?;
        }
        Ok(self.violations.load(Ordering::Relaxed))
    }
}

/// `tso-failover-gap`: a client of `GAP_CALLERS` batched callers keeps
/// allocating while the leader is stopped gracefully, its coordinator
/// crashes, and it is killed; each round's longest interval without a
/// timestamp, beside the round's takeover time, with every caller's
/// timestamps checked to increase strictly.
pub async fn tso_failover_gap(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    rounds: usize,
) -> anyhow::Result<()> {
    println!(
        "bench: tso-failover-gap, {rounds} rounds of each act, a client of {GAP_CALLERS} callers"
    );
    let mut cluster =
        Cluster::start(etcd, binary, "bench-gap", super::Shape::tso(Witness::On)).await?;
    let config = client_config(&[etcd.endpoint()], &cluster.root);
    let watch = GapWatch::start(Arc::new(TsoClient::connect(&config).await?), GAP_CALLERS);
    watch.answered_more(0).await?;
    let acts = [
        ("graceful", Act::Sigterm),
        ("crash", Act::CrashCoordinator),
        ("kill9", Act::Kill),
    ];
    let mut measured: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); acts.len()];
    for _ in 0..rounds {
        for (index, (_, act)) in acts.iter().enumerate() {
            cluster.settle().await?;
            watch.answered_more(watch.answers()).await?;
            watch.take_longest();
            let takeover = cluster.round(*act).await?;
            watch.answered_more(watch.answers()).await?;
            measured[index].0.push(watch.take_longest());
            measured[index].1.push(takeover);
        }
    }
    let violations = watch.stop().await?;
    for ((name, _), (longest, takeovers)) in acts.iter().zip(&measured) {
        let gap = Summary::of(longest);
        let takeover = Summary::of(takeovers);
        println!(
            "bench: scenario=tso-failover-gap act={name} {gap} takeover_p50_ms={:.1} takeover_p99_ms={:.1} ratio_p50_to_takeover={:.2} violations={violations}",
            takeover.p50_ms,
            takeover.p99_ms,
            gap.p50_ms / takeover.p50_ms
        );
    }
    cluster.shut_down().await
}

/// Bytes of each value `kv-overload` puts.
const OVERLOAD_VALUE: usize = 1024;
/// Clients (connections) the puts are spread over.
const OVERLOAD_CLIENTS: usize = 32;
/// Callers of the closed loop that finds what the leader sustains.
const SUSTAIN_CALLERS: usize = 512;
/// How long each put's caller waits.
const PUT_WITHIN: Duration = Duration::from_secs(2);
/// The runs of `kv-overload`: a leader batched as by default, and one
/// writing one etcd transaction per put (slow enough for the clients this
/// machine runs to offer it ten times what it sustains without being the
/// bottleneck themselves), both called by clients that throttle themselves
/// as by default; and the slow leader called by clients that do not
/// (`client.throttlePercent: 0`), whose every refusal costs a round trip:
/// the leader's own admission alone. Quotas that hold every put of the run.
const OVERLOAD_RUNS: [OverloadRun; 3] = [
    OverloadRun {
        name: "batched",
        leader: "coordinator:\n  maxBatch: 256\nkv:\n  maxKeys: 10000000\n  maxBytes: 8589934592\n",
        throttle_percent: DEFAULT_THROTTLE_PERCENT,
    },
    OverloadRun {
        name: "unbatched",
        leader: "coordinator:\n  maxBatch: 1\nkv:\n  maxKeys: 10000000\n  maxBytes: 8589934592\n",
        throttle_percent: DEFAULT_THROTTLE_PERCENT,
    },
    OverloadRun {
        name: "unbatched-unthrottled",
        leader: "coordinator:\n  maxBatch: 1\nkv:\n  maxKeys: 10000000\n  maxBytes: 8589934592\n",
        throttle_percent: 0,
    },
];

/// One run of `kv-overload`.
struct OverloadRun {
    name: &'static str,
    /// YAML the nodes add to their config.
    leader: &'static str,
    /// The clients' `client.throttlePercent`.
    throttle_percent: u32,
}

/// What became of the puts of a phase, by the number in their key.
#[derive(Default)]
struct Outcomes {
    /// Acknowledged, and when.
    acked: Vec<(u64, Instant)>,
    /// How long each acknowledged put took.
    latencies: Vec<Duration>,
    /// Refused `RESOURCE_EXHAUSTED`: must not be written.
    refused: Vec<u64>,
    /// Kept by the client, never sent: must not be written.
    kept: Vec<u64>,
    /// Of those, kept because every call slot stayed taken (the rest the
    /// throttle kept).
    kept_in_flight: usize,
    /// Failed otherwise (deadline, a failover): may or may not be written.
    unknown: Vec<u64>,
}

impl Outcomes {
    /// Puts acknowledged between `since` and `until`.
    fn acked_between(&self, since: Instant, until: Instant) -> f64 {
        self.acked
            .iter()
            .filter(|(_, at)| *at >= since && *at <= until)
            .count() as f64
    }
}

fn overload_key(n: u64) -> String {
    format!("ov/{n:012}")
}

/// Puts key `n`, recording what became of it.
async fn put_recorded(client: Arc<KvClient>, outcomes: Arc<Mutex<Outcomes>>, n: u64) {
    let mut value = n.to_string().into_bytes();
    value.resize(OVERLOAD_VALUE, b'.');
    let asked = Instant::now();
    let answer = client.put(&overload_key(n), value, PUT_WITHIN).await;
    let mut outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    match answer {
        Ok(_) => {
            outcomes.acked.push((n, Instant::now()));
            outcomes.latencies.push(asked.elapsed());
        }
        Err(ClientError::Refused {
            status,
            in_doubt: false,
            ..
        }) if status.code() == tonic::Code::ResourceExhausted => {
            outcomes.refused.push(n);
        }
        Err(ClientError::Overloaded { reason, .. }) => {
            outcomes.kept.push(n);
            if matches!(reason, AdmissionError::InFlight { .. }) {
                outcomes.kept_in_flight += 1;
            }
        }
        Err(error) => {
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                let text = error.to_string();
                eprintln!("unknown: {}", &text[..text.len().min(150)]);
            }
            outcomes.unknown.push(n)
        }
    }
}

/// Keys read or deleted in one etcd request.
const KEYS_PER_REQUEST: i64 = 10_000;

/// Every key under `prefix` in etcd, in order, read in pages, keys only.
async fn keys_under(client: &mut etcd_client::Client, prefix: &str) -> anyhow::Result<Vec<String>> {
    let end = {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().context("a prefix")? += 1;
        end
    };
    let mut keys = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_limit(KEYS_PER_REQUEST);
        let page = client.get(from.clone(), Some(options)).await?;
        for kv in page.kvs() {
            keys.push(kv.key_str()?.to_owned());
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(keys),
        }
    }
}

/// `kv-overload`: what the leader sustains with many callers waiting on
/// each other (a closed loop), then puts offered at 2x and 10x that rate
/// whatever the answers (an open loop) for `seconds` each: the goodput,
/// the refusals, the leader's resident memory and each process's CPU; then
/// every acknowledged put of the phase is in etcd and no refused one is.
/// Each phase's keys are deleted and compacted away before the next, so
/// every phase writes into an etcd of the same size.
pub async fn kv_overload(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    seconds: f64,
    runs: &[String],
) -> anyhow::Result<()> {
    for name in runs {
        let run = OVERLOAD_RUNS
            .iter()
            .find(|run| run.name == name)
            .with_context(|| format!("no kv-overload run is called {name:?}"))?;
        overload(etcd, binary, seconds, run).await?;
    }
    Ok(())
}

/// One `kv-overload` run: each phase on a cluster of its own, started for
/// it, so that every phase begins with an empty register in a leader that
/// has never served, standbys that follow no deletes of the phase before,
/// and an etcd compacted to the same size.
async fn overload(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    seconds: f64,
    run: &OverloadRun,
) -> anyhow::Result<()> {
    println!(
        "bench: kv-overload run={}, puts of {OVERLOAD_VALUE} bytes from {OVERLOAD_CLIENTS} clients (client.throttlePercent {}), {seconds} s at 2x and 10x what the leader sustains, each phase on a cluster started for it",
        run.name, run.throttle_percent
    );
    let phase = Duration::from_secs_f64(seconds);
    // The clients run beside the leader and etcd on this machine, where
    // they stand for callers on other machines. Their connections run on
    // threads of their own, in the normal class: they read the answers and
    // free the call slots, as a caller's own machine would at once. The
    // callers, offering puts, run on many threads in the SCHED_IDLE class:
    // they get the cores the leader, etcd and the connections leave, not
    // the CPU the leader needs to answer them, and many, so that a caller
    // answered gets to run soon among the thousands of puts offered each
    // millisecond. The lines say what they offered and what each process
    // used.
    let connections = Background::start("overload-clients", 2, false)?;
    let callers = Background::start("overload-callers", 8, true)?;
    let next = Arc::new(AtomicU64::new(0));
    let mut sustained = 0.0;
    for factor in [None, Some(2.0), Some(10.0)] {
        let name = match factor {
            None => format!("bench-overload-{}-sustained", run.name),
            Some(factor) => format!("bench-overload-{}-{factor}x", run.name),
        };
        let (cluster, mut load) =
            OverloadLoad::start(etcd, binary, run, &name, &connections, next.clone()).await?;
        let measured = callers
            .spawn(async move {
                let line = match factor {
                    None => {
                        let line;
                        (sustained, line) = load.sustain(phase).await?;
                        line
                    }
                    Some(factor) => load.offer(phase, factor, sustained).await?,
                };
                anyhow::Ok((sustained, line))
            })
            .await;
        let line;
        (sustained, line) = measured??;
        println!("{line}");
        cluster.shut_down().await?;
    }
    drop((callers, connections));
    Ok(())
}

/// A runtime of the bench's own, shut down without waiting when dropped (as
/// it is inside the bench's runtime, where waiting is not allowed).
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    /// A runtime of `threads` worker threads called `name`, in the
    /// `SCHED_IDLE` class if `idle`.
    fn start(name: &str, threads: usize, idle: bool) -> anyhow::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(threads)
            .thread_name(name)
            .enable_all();
        if idle {
            builder.on_thread_start(|| {
                if let Err(error) = super::schedule_this_thread_idle() {
                    eprintln!("bench: a caller thread stays in the normal class: {error}");
                }
            });
        }
        let runtime = builder.build()?;
        Ok(Self(Some(runtime)))
    }
}

impl std::ops::Deref for Background {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a runtime until dropped")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The clients of one `kv-overload` run and what they measure.
struct OverloadLoad {
    etcd: etcd_client::Client,
    etcd_pid: Option<u32>,
    /// Where the role keeps its keys in etcd.
    prefix: String,
    leader_pid: Option<u32>,
    /// The nodes that follow the leader's writes into their warm copies.
    standby_pids: Vec<u32>,
    clients: Vec<Arc<KvClient>>,
    /// The number of the next key put.
    next: Arc<AtomicU64>,
    name: &'static str,
}

impl OverloadLoad {
    fn rss_mb(&self) -> f64 {
        self.leader_pid.and_then(super::resident_bytes).unwrap_or(0) as f64 / (1 << 20) as f64
    }

    /// CPU seconds used so far by the leader, etcd, this process (the
    /// clients) and the standbys together.
    fn cpu(&self) -> [f64; 4] {
        let seconds = |pid: Option<u32>| pid.and_then(super::cpu_seconds).unwrap_or(0.0);
        let [leader, etcd, clients] =
            [self.leader_pid, self.etcd_pid, Some(std::process::id())].map(seconds);
        let standbys = self
            .standby_pids
            .iter()
            .map(|pid| seconds(Some(*pid)))
            .sum();
        [leader, etcd, clients, standbys]
    }

    /// The cores each process used since `before` was read at `since`.
    fn cores_since(&self, before: [f64; 4], since: Instant) -> String {
        let after = self.cpu();
        let elapsed = since.elapsed().as_secs_f64();
        let [leader, etcd, clients, standbys] =
            [0, 1, 2, 3].map(|i| (after[i] - before[i]) / elapsed);
        format!(
            "cpu_cores_leader={leader:.2} cpu_cores_etcd={etcd:.2} cpu_cores_clients={clients:.2} cpu_cores_standbys={standbys:.2}"
        )
    }

    /// Starts a cluster of `run`'s shape under `root`, and its clients on
    /// `connections`; the keys put are numbered from `next`.
    async fn start(
        etcd: &EtcdServer,
        binary: &std::path::Path,
        run: &OverloadRun,
        root: &str,
        connections: &Background,
        next: Arc<AtomicU64>,
    ) -> anyhow::Result<(Cluster, Self)> {
        let shape = super::Shape {
            role: "kv",
            extra: run.leader,
            ..super::Shape::tso(Witness::On)
        };
        let mut cluster = Cluster::start(etcd, binary, root, shape).await?;
        let (serving, _) = cluster.settle().await?;
        let mut config = client_config(&[etcd.endpoint()], &cluster.root);
        config.client.throttle_percent = run.throttle_percent;
        // A fleet of clients, a connection each: one connection holds at
        // most server.limits.maxStreamsPerConnection calls at the server,
        // and the rest wait in the client, where the leader cannot refuse
        // them.
        let clients = connections
            .spawn(async move {
                let mut clients = Vec::new();
                for _ in 0..OVERLOAD_CLIENTS {
                    let client = KvClient::connect(&config).await?;
                    // The first call opens the connection, here.
                    client.get("ov/opening", PUT_WITHIN).await?;
                    clients.push(Arc::new(client));
                }
                anyhow::Ok(clients)
            })
            .await??;
        let load = OverloadLoad {
            // No request timeout: a phase's check reads and deletes a few
            // hundred thousand keys.
            etcd: etcd_client::Client::connect([etcd.endpoint()], None).await?,
            etcd_pid: etcd.pid(),
            prefix: format!("{}/meta/kv/", cluster.root),
            leader_pid: cluster.nodes[serving].process.pid(),
            standby_pids: (cluster.nodes.iter().enumerate())
                .filter(|(node, _)| *node != serving)
                .filter_map(|(_, node)| node.process.pid())
                .collect(),
            clients,
            next,
            name: run.name,
        };
        Ok((cluster, load))
    }

    /// Puts offered at `factor` times `sustained` a second, whatever the
    /// answers, for `phase`: the line saying what became of them.
    async fn offer(
        &mut self,
        phase: Duration,
        factor: f64,
        sustained: f64,
    ) -> anyhow::Result<String> {
        let name = self.name;
        let seconds = phase.as_secs_f64();
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let rss_before = self.rss_mb();
        let started = Instant::now();
        let until = started + phase;
        let rate = sustained * factor;
        let (mut offered, mut rss_max) = (0u64, rss_before);
        let cpu_before = self.cpu();
        let mut puts = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sampled = Instant::now();
        while Instant::now() < until {
            tick.tick().await;
            let due = (rate * started.elapsed().as_secs_f64()) as u64;
            while offered < due {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let client = self.clients[n as usize % self.clients.len()].clone();
                puts.spawn(put_recorded(client, outcomes.clone(), n));
                offered += 1;
            }
            while puts.try_join_next().is_some() {}
            if sampled.elapsed() >= Duration::from_millis(100) {
                rss_max = rss_max.max(self.rss_mb());
                sampled = Instant::now();
            }
        }
        let cores = self.cores_since(cpu_before, started);
        while puts.join_next().await.is_some() {}
        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        let goodput = outcomes.acked_between(started, until) / seconds;
        // From the call to its answer, waiting for a call slot included.
        let latency = match outcomes.latencies.is_empty() {
            true => "acked_p50_ms=- acked_p99_ms=-".to_owned(),
            false => {
                let latency = Summary::of(&outcomes.latencies);
                format!(
                    "acked_p50_ms={:.0} acked_p99_ms={:.0}",
                    latency.p50_ms, latency.p99_ms
                )
            }
        };
        let check = self.check_and_clear(&outcomes).await?;
        Ok(format!(
            "bench: scenario=kv-overload run={name} offered_x={factor} offered_per_s={:.0} goodput_per_s={goodput:.0} ratio_to_sustained={:.2} refused={} kept_by_client={} kept_in_flight={} unknown={} {latency} rss_mb_max={rss_max:.1} rss_mb_before={rss_before:.1} {cores} {check}",
            offered as f64 / seconds,
            goodput / sustained,
            outcomes.refused.len(),
            outcomes.kept.len(),
            outcomes.kept_in_flight,
            outcomes.unknown.len(),
        ))
    }

    /// What the leader sustains: `SUSTAIN_CALLERS` callers, each putting
    /// again as soon as answered, for as long as an overloaded phase runs:
    /// the register and etcd's database grow through a phase (30 s of puts
    /// hold 400k keys of 1 KiB in the leader's register), and a leader
    /// measured over a shorter time would be measured at a smaller size.
    /// Returns puts per second and the phase's line.
    async fn sustain(&mut self, phase: Duration) -> anyhow::Result<(f64, String)> {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let cpu_before = self.cpu();
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..SUSTAIN_CALLERS)
            .map(|_| {
                let (clients, outcomes, next, stop) = (
                    self.clients.clone(),
                    outcomes.clone(),
                    self.next.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let client = clients[n as usize % clients.len()].clone();
                        put_recorded(client, outcomes.clone(), n).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(phase).await;
        let cores = self.cores_since(cpu_before, started);
        stop.store(true, Ordering::Relaxed);
        for caller in callers {
            caller.await?;
        }
        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        let sustained = outcomes.acked_between(started, started + phase) / phase.as_secs_f64();
        let rss = self.rss_mb();
        let check = self.check_and_clear(&outcomes).await?;
        let name = self.name;
        let line = format!(
            "bench: scenario=kv-overload run={name} phase=sustained callers={SUSTAIN_CALLERS} goodput_per_s={sustained:.0} rss_mb={rss:.1} {cores} {check}"
        );
        Ok((sustained, line))
    }

    /// Every acknowledged put of a phase is in etcd and no refused one is;
    /// then the phase's keys are deleted and compacted away.
    async fn check_and_clear(&mut self, outcomes: &Outcomes) -> anyhow::Result<String> {
        let prefix = format!("{}ov/", self.prefix);
        let keys = keys_under(&mut self.etcd, &prefix).await?;
        let written: std::collections::HashSet<&String> = keys.iter().collect();
        let in_etcd = |n: &u64| written.contains(&format!("{}{}", self.prefix, overload_key(*n)));
        let missing = outcomes.acked.iter().filter(|(n, _)| !in_etcd(n)).count();
        let refused_written = outcomes
            .refused
            .iter()
            .chain(&outcomes.kept)
            .filter(|n| in_etcd(n))
            .count();
        let unknown_written = outcomes.unknown.iter().filter(|n| in_etcd(n)).count();
        // A range at a time: one delete of every key would be one huge
        // transaction, and one huge event for every watcher.
        let mut revision = 0;
        for chunk in keys.chunks(KEYS_PER_REQUEST as usize) {
            let (first, last) = (&chunk[0], &chunk[chunk.len() - 1]);
            let options = etcd_client::DeleteOptions::new().with_range(format!("{last}\0"));
            let deleted = self.etcd.delete(first.as_str(), Some(options)).await?;
            revision = deleted.header().context("a header")?.revision();
        }
        if revision > 0 {
            self.etcd
                .compact(
                    revision,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await?;
        }
        Ok(format!(
            "acked={} acked_missing={missing} refused_written={refused_written} unknown_written={unknown_written}",
            outcomes.acked.len()
        ))
    }
}
