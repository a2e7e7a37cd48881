//! `make bench`: standin's takeover times side by side with their anchors (etcd's own `etcdctl elect`, and a kill -9 without the death witness), rounds interleaved, in one run on one etcd; then the herd, the request path (TSO throughput, a busy client across failovers, kv overload), a client through the death of etcd's leader, and many roles per node.
//!
//! `cargo build --release --features cli --bin standin && cargo run --release -p standin-tools
//! --bin bench -- [--rounds N] [--slow-rounds M]`. Every scenario prints one line:
//! `bench: scenario=S n= p50_ms= p99_ms= max_ms= anchor=A anchor_p99_ms= ratio_p99=`,
//! and each anchor its own `bench: anchor=A n= p50_ms= p99_ms= max_ms=`.
//!
//! Every time runs from the act (the signal, the injected crash, the
//! `Resign` with `to` of a transfer) until the
//! successor answers: for standin a `Tso.Allocate` answered by another node
//! at a newer epoch, for `etcdctl elect` the successor printing that it leads.

mod etcd_leader;
mod many_roles;
mod request_path;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::faults_client::FaultsClient;
use standin::service::grpc::proto::kv_client::KvClient;
use standin::service::grpc::proto::tso_client::TsoClient;
use standin::service::grpc::proto::{
    AllocateRequest, GetRequest, InjectRequest, ResignRequest, StatusRequest, WatchLeaderRequest,
};
use standin::testing::{
    ComposeCluster, EtcdServer, FaultProxy, NodeProcess, StandinProcess, free_loopback_port,
};
use standin_tools::{driver, metadata};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(about = "Takeover times of standin against etcdctl elect, side by side on one etcd")]
struct Args {
    /// Rounds of each scenario that takes milliseconds.
    #[arg(long, default_value_t = 40)]
    rounds: usize,
    /// Rounds of each scenario bound by the lease TTL (10 s each).
    #[arg(long, default_value_t = 5)]
    slow_rounds: usize,
    /// The standin binary; by default `standin` beside this one in the target directory.
    #[arg(long)]
    binary: Option<std::path::PathBuf>,
    /// Copy every node's log into this directory at the end, to read a round's timeline.
    #[arg(long)]
    keep_logs: Option<std::path::PathBuf>,
    /// Only the graceful, crash and etcdctl rounds.
    #[arg(long)]
    quick: bool,
    /// Metadata sizes (keys of 100 bytes under the `kv` role's prefix) of
    /// the `graceful-by-size` scenario; empty to skip it.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Rounds of the by-size scenarios per size, warm.
    #[arg(long, default_value_t = 10)]
    size_rounds: usize,
    /// Rounds of `graceful-by-size` per size, cold: the slow anchor, whose
    /// every round reads the metadata whole.
    #[arg(long, default_value_t = 4)]
    cold_size_rounds: usize,
    /// Only `graceful-by-size`.
    #[arg(long)]
    by_size_only: bool,
    /// Skip `kill9-container` (it needs podman and podman-compose; `make
    /// deps` installs them).
    #[arg(long)]
    no_containers: bool,
    /// Only `kill9-container`, with `--slow-rounds` x 2 rounds.
    #[arg(long)]
    containers_only: bool,
    /// Only this scenario: `many-roles` (3 nodes of many idle roles), or
    /// `herd` (graceful handovers watched by 2 and by 50 standbys).
    #[arg(long)]
    scenario: Option<Scenario>,
    /// Idle roles per node of the `many-roles` runs.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    many_roles: Vec<usize>,
    /// Roles of the `many-roles` kill -9 and SIGTERM rounds, of which the
    /// node stopped leads a third.
    #[arg(long, default_value_t = 1000)]
    handover_roles: usize,
    /// Rounds of each of the `many-roles` kill -9 and SIGTERM.
    #[arg(long, default_value_t = 10)]
    many_rounds: usize,
    /// Seconds each load of `tso-throughput` runs.
    #[arg(long, default_value_t = 3.0)]
    throughput_seconds: f64,
    /// Shapes of `tso-throughput`: callers x client processes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1x1,10x1,100x1,1000x1,3x3,10x3,100x3,1000x3"
    )]
    throughput_shapes: Vec<request_path::ClientShape>,
    /// Rounds of each act of `tso-failover-gap`.
    #[arg(long, default_value_t = 10)]
    gap_rounds: usize,
    /// Seconds of each overloaded phase of `kv-overload`.
    #[arg(long, default_value_t = 30.0)]
    overload_seconds: f64,
    /// Rounds of `etcd-leader-kill`.
    #[arg(long, default_value_t = 10)]
    etcd_rounds: usize,
    /// Runs of `kv-overload`: `batched`, `unbatched`, `unbatched-unthrottled`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "batched,unbatched,unbatched-unthrottled"
    )]
    overload_runs: Vec<String>,
    /// Run as a client process of `tso-throughput` (what the bench starts).
    #[arg(long, hide = true)]
    load: Option<request_path::Load>,
    #[arg(long, hide = true, default_value_t = 1)]
    load_callers: usize,
    #[arg(long, hide = true, default_value_t = 1.0)]
    load_seconds: f64,
    #[arg(long, hide = true, default_value = "")]
    load_etcd: String,
    #[arg(long, hide = true, default_value = "")]
    load_root: String,
    #[arg(long, hide = true, default_value = "")]
    load_address: String,
}

/// A scenario run on its own (`make bench scenario=S`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    ManyRoles,
    Herd,
    TsoThroughput,
    TsoFailoverGap,
    KvOverload,
    EtcdLeaderKill,
    Kill9Witness,
    ConfirmAnswers,
}

/// Nodes per cluster, candidates per `etcdctl elect` group.
const NODES: usize = 3;
/// The default lease TTL, which every cluster here runs with.
const TTL: Duration = Duration::from_secs(10);
/// Longest wait for any one takeover or settle, before `READ_PER_KEY`.
const WITHIN: Duration = Duration::from_secs(30);
/// What that wait gains per key of metadata: a cold takeover's whole read
/// of 100k keys took up to 4.5 s (45 us a key) on the 2-core VM.
const READ_PER_KEY: Duration = Duration::from_micros(100);

fn main() -> anyhow::Result<()> {
    // The nodes inherit this process's environment. A panic's backtrace
    // (RUST_BACKTRACE) is resolved a second after it, on a core the next
    // rounds need: off, so that a crash round measures the election and
    // not the symbolizer of the round before.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::remove_var("RUST_BACKTRACE") };
    tokio::runtime::Runtime::new()?.block_on(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    driver::init_logging();
    if let Some(load) = args.load {
        return request_path::run_load(request_path::LoadArgs {
            load,
            callers: args.load_callers,
            seconds: args.load_seconds,
            etcd: args.load_etcd,
            root: args.load_root,
            address: args.load_address,
        })
        .await;
    }
    let binary = driver::standin_binary(args.binary)?;
    if !binary.exists() {
        bail!(
            "no standin binary at {}: build it (cargo build --release --features cli --bin standin; make bench does) or pass --binary PATH",
            binary.display()
        );
    }
    let etcd = EtcdServer::start().await.context("starting etcd")?;
    if args.by_size_only {
        return by_size(
            &etcd,
            &binary,
            &args.sizes,
            [args.size_rounds, args.cold_size_rounds],
            args.keep_logs.as_deref(),
        )
        .await;
    }
    let many_roles = || {
        many_roles::run(
            &etcd,
            &binary,
            &args.many_roles,
            args.handover_roles,
            args.many_rounds,
        )
    };
    match args.scenario {
        Some(Scenario::ManyRoles) => return many_roles().await,
        Some(Scenario::Herd) => return herd(&etcd, &binary, args.rounds).await,
        Some(Scenario::TsoThroughput) => {
            return request_path::tso_throughput(
                &etcd,
                &binary,
                &args.throughput_shapes,
                args.throughput_seconds,
            )
            .await;
        }
        Some(Scenario::TsoFailoverGap) => {
            return request_path::tso_failover_gap(&etcd, &binary, args.gap_rounds).await;
        }
        Some(Scenario::EtcdLeaderKill) => {
            return etcd_leader::etcd_leader_kill(&binary, args.etcd_rounds).await;
        }
        Some(Scenario::ConfirmAnswers) => {
            return request_path::confirm_answers(&etcd, &binary, args.throughput_seconds).await;
        }
        Some(Scenario::Kill9Witness) => {
            let live =
                Cluster::start(&etcd, &binary, "bench-live", Shape::tso(Witness::On)).await?;
            let mut samples = BTreeMap::new();
            let logs = args.keep_logs.as_deref();
            kill9_rounds(&etcd, &binary, live, args.rounds, 0, &mut samples, logs).await?;
            print_summaries(&samples);
            return Ok(());
        }
        Some(Scenario::KvOverload) => {
            return request_path::kv_overload(
                &etcd,
                &binary,
                args.overload_seconds,
                &args.overload_runs,
            )
            .await;
        }
        None => {}
    }
    let mut samples: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let logs = args.keep_logs.as_deref();
    if args.containers_only {
        let times = containers(&binary, args.slow_rounds, logs).await?;
        samples.insert("kill9-container", times);
        print_summaries(&samples);
        return Ok(());
    }

    println!(
        "bench: graceful, transfer, crash and etcdctl elect, {} rounds each, interleaved",
        args.rounds
    );
    let mut live = Cluster::start(&etcd, &binary, "bench-live", Shape::tso(Witness::On)).await?;
    let mut elect = Elect::start(&etcd, "bench-anchor").await?;
    for _ in 0..args.rounds {
        let took = live.round(Act::Sigterm).await?;
        samples.entry("graceful").or_default().push(took);
        let took = live.round(Act::Transfer).await?;
        samples.entry("transfer").or_default().push(took);
        let took = elect.round().await?;
        samples.entry("etcdctl-elect").or_default().push(took);
        let took = live.round(Act::CrashCoordinator).await?;
        samples.entry("crash").or_default().push(took);
        let took = elect.round().await?;
        samples.entry("etcdctl-elect").or_default().push(took);
    }
    drop(elect);
    if args.quick {
        keep_logs(logs, &[&live])?;
        print_summaries(&samples);
        return Ok(());
    }

    kill9_rounds(
        &etcd,
        &binary,
        live,
        args.rounds,
        args.slow_rounds,
        &mut samples,
        logs,
    )
    .await?;
    if !args.no_containers {
        let times = containers(&binary, args.slow_rounds, logs).await?;
        samples.insert("kill9-container", times);
    }
    print_summaries(&samples);
    by_size(
        &etcd,
        &binary,
        &args.sizes,
        [args.size_rounds, args.cold_size_rounds],
        logs,
    )
    .await?;
    herd(&etcd, &binary, args.rounds).await?;
    request_path::tso_throughput(
        &etcd,
        &binary,
        &args.throughput_shapes,
        args.throughput_seconds,
    )
    .await?;
    request_path::confirm_answers(&etcd, &binary, args.throughput_seconds).await?;
    request_path::tso_failover_gap(&etcd, &binary, args.gap_rounds).await?;
    request_path::kv_overload(&etcd, &binary, args.overload_seconds, &args.overload_runs).await?;
    etcd_leader::etcd_leader_kill(&binary, args.etcd_rounds).await?;
    many_roles().await
}

/// The kill -9 rounds, `rounds` of each kind, interleaved: with the witness
/// on (`live`), beside the same without `session.witnessConfirm` and
/// `session.witnessGrace` (the first refusal revokes, the successor serves
/// at once), and a living leader's witness rejected by a firewall
/// (`witness-reject`, which also times how long after its successor's win
/// the old leader stepped down). With `slow_rounds`, as many rounds again
/// with the witness off and unreachable, bound by the TTL.
async fn kill9_rounds(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    mut live: Cluster,
    rounds: usize,
    slow_rounds: usize,
    samples: &mut BTreeMap<&str, Vec<Duration>>,
    logs: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    println!(
        "bench: kill -9 with the witness on, the same unguarded, and a living leader's witness \
         rejected ({rounds} rounds each); off and unreachable ({slow_rounds} rounds each); interleaved"
    );
    let mut unguarded = Cluster::start(
        etcd,
        binary,
        "bench-unguarded",
        Shape::tso(Witness::Unguarded),
    )
    .await?;
    let mut proxied = Cluster::start(
        etcd,
        binary,
        "bench-unreachable",
        Shape::tso(Witness::BehindProxy),
    )
    .await?;
    let mut off = match slow_rounds {
        0 => None,
        _ => Some(Cluster::start(etcd, binary, "bench-off", Shape::tso(Witness::Off)).await?),
    };
    let per_slow = rounds.div_ceil(slow_rounds.max(1));
    let mut stepped_down_after = Vec::new();
    let mut margins = Vec::new();
    let mut overlaps = 0;
    for round in 0..rounds {
        let took = live.round(Act::Kill).await?;
        samples.entry("kill9-witness").or_default().push(took);
        let took = unguarded.round(Act::Kill).await?;
        samples
            .entry("kill9-witness-unguarded")
            .or_default()
            .push(took);
        let took = proxied.round(Act::RejectWitness).await?;
        samples.entry("witness-reject").or_default().push(took);
        match proxied.old_leader_stepped_down()? {
            Some(timing) => {
                stepped_down_after.push(timing.after_win_ms);
                if timing.before_answer_ms < 0.0 {
                    overlaps += 1;
                }
                margins.push(timing.before_answer_ms);
            }
            None => bail!("witness-reject: the log does not show the old leader stepping down"),
        }
        if let Some(off) = &mut off
            && round % per_slow == 0
        {
            let took = off.round(Act::Kill).await?;
            samples.entry("kill9-no-witness").or_default().push(took);
            let took = proxied.round(Act::BlackholeAndKill).await?;
            samples.entry("kill9-unreachable").or_default().push(took);
        }
    }
    if !stepped_down_after.is_empty() {
        let lag = SignedSummary::of(stepped_down_after);
        let margin = SignedSummary::of(margins);
        println!(
            "bench: scenario=witness-reject old_stepped_down_after_win_p50_ms={:.1} \
             old_stepped_down_after_win_max_ms={:.1} successor_answered_after_p50_ms={:.1} \
             successor_answered_after_min_ms={:.1} grace_ms={} served_beside_it={overlaps}",
            lag.p50,
            lag.max,
            margin.p50,
            margin.min,
            standin::config::SessionConfig::default()
                .witness_grace
                .as_millis()
        );
    }
    let mut clusters = vec![&live, &unguarded, &proxied];
    clusters.extend(off.as_ref());
    keep_logs(logs, &clusters)
}

/// When a leader taken for dead stepped down, as the nodes' logs show it,
/// in milliseconds (negative: before).
struct SteppedDown {
    /// After its successor logged its win from the revoked lease.
    after_win_ms: f64,
    /// Before its successor logged serving.
    before_answer_ms: f64,
}

/// The median, least and greatest of values that may be negative.
struct SignedSummary {
    p50: f64,
    min: f64,
    max: f64,
}

impl SignedSummary {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            p50: values[(values.len() - 1) / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

/// The leading timestamp of the first line of `log` past `from` lines that
/// contains `needle`.
fn logged_at(log: &str, from: usize, needle: &str) -> Option<std::time::SystemTime> {
    let line = log.lines().skip(from).find(|line| line.contains(needle))?;
    humantime::parse_rfc3339_weak(line.split_whitespace().next()?.trim_end_matches('Z')).ok()
}

/// Standbys of the `herd` scenario's crowded cluster (plus its leader).
const HERD: usize = 50;

/// `herd`: graceful handovers of `tso` in a cluster of 2 standbys and in
/// one of 50, rounds interleaved: what a crowd of standbys, each watching
/// the election, adds to a handover.
async fn herd(etcd: &EtcdServer, binary: &std::path::Path, rounds: usize) -> anyhow::Result<()> {
    println!(
        "bench: herd, graceful handovers with 2 and with {HERD} standbys, {rounds} rounds each, interleaved"
    );
    // Without the witness and the warm copy: their settle checks read every
    // node's log, which fifty nodes would turn into the load measured.
    let start = |root, nodes| {
        let shape = Shape {
            warm: false,
            nodes,
            ..Shape::tso(Witness::Off)
        };
        Cluster::start(etcd, binary, root, shape)
    };
    let mut few = start("bench-herd-2", NODES).await?;
    let mut crowd = start("bench-herd-50", HERD + 1).await?;
    let (mut two, mut fifty) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        two.push(few.round(Act::Sigterm).await?);
        fifty.push(crowd.round(Act::Sigterm).await?);
    }
    few.shut_down().await?;
    crowd.shut_down().await?;
    let (two, fifty) = (Summary::of(&two), Summary::of(&fifty));
    println!("bench: scenario=herd standbys=2 {two}");
    println!(
        "bench: scenario=herd standbys={HERD} {fifty} ratio_p50_to_2={:.2} ratio_p99_to_2={:.2}",
        fifty.p50_ms / two.p50_ms,
        fifty.p99_ms / two.p99_ms
    );
    Ok(())
}

/// `kill9-container`: SIGKILL of the active container of deploy/compose's
/// cluster, `slow_rounds` x 2 rounds; their times.
async fn containers(
    binary: &std::path::Path,
    slow_rounds: usize,
    logs: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Duration>> {
    let rounds = slow_rounds.max(1) * 2;
    println!(
        "bench: kill -9 of the active container of deploy/compose's cluster ({rounds} rounds)"
    );
    let mut contained = Cluster::compose(binary).await?;
    let mut times = Vec::new();
    for _ in 0..rounds {
        times.push(contained.round(Act::Kill).await?);
    }
    keep_logs(logs, &[&contained])?;
    Ok(times)
}

/// `graceful-by-size`: SIGTERM takeovers of the `kv` role with `sizes`
/// keys of 100 bytes under its prefix, warm (`reload.warm: true`, the
/// default: standbys follow the metadata) and cold (a standby reads it
/// whole when it wins), and a standby's resident memory; for the warm
/// clusters also `crash-by-size` and `kill9-by-size` (witness on), rounds
/// interleaved. One 3-node cluster at a time; each size's warm and cold
/// clusters share its keys.
async fn by_size(
    etcd: &EtcdServer,
    binary: &std::path::Path,
    sizes: &[usize],
    [warm_rounds, cold_rounds]: [usize; 2],
    logs: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if sizes.is_empty() {
        return Ok(());
    }
    println!(
        "bench: graceful-by-size, {warm_rounds} rounds warm and {cold_rounds} cold per size {sizes:?}"
    );
    let mut rows: Vec<SizeRow> = Vec::new();
    for &keys in sizes {
        let root = format!("bench-size-{keys}");
        let client = etcd.client().await?;
        metadata::preload(&client, &format!("{root}/meta/kv/"), keys).await?;
        // A kind with no rounds asked for is not started (a cold start of
        // a million keys takes seconds).
        let kinds = [(true, warm_rounds), (false, cold_rounds)];
        for (warm, rounds) in kinds.into_iter().filter(|&(_, rounds)| rounds > 0) {
            let cluster_root = format!("{root}-{}", if warm { "warm" } else { "cold" });
            let mut cluster = Cluster::start(
                etcd,
                binary,
                &root,
                Shape {
                    role: "kv",
                    warm,
                    metadata_keys: keys,
                    ..Shape::tso(Witness::On)
                },
            )
            .await?;
            cluster.root = cluster_root;
            let acts: &[(&'static str, Act)] = if warm {
                &[
                    ("graceful-by-size", Act::Sigterm),
                    ("crash-by-size", Act::CrashCoordinator),
                    ("kill9-by-size", Act::Kill),
                ]
            } else {
                &[("graceful-by-size", Act::Sigterm)]
            };
            let mut times = vec![Vec::new(); acts.len()];
            for _ in 0..rounds {
                for (times, (_, act)) in times.iter_mut().zip(acts) {
                    times.push(cluster.round(*act).await?);
                }
            }
            let (leader, _) = cluster.settle().await?;
            // Every standby's: what each holds depends on its history (a
            // node that led has freed a serving state, one just restarted
            // has not), so the least and the most of them.
            let standbys: Vec<u64> = (0..cluster.nodes.len())
                .filter(|&index| index != leader)
                .map(|index| {
                    let process = &cluster.nodes[index].process;
                    process.pid().and_then(resident_bytes).unwrap_or(0)
                })
                .collect();
            let rss = [
                standbys.iter().copied().min().unwrap_or(0),
                standbys.iter().copied().max().unwrap_or(0),
            ];
            keep_logs(logs, &[&cluster])?;
            cluster.shut_down().await?;
            for ((scenario, _), times) in acts.iter().zip(&times) {
                rows.push(SizeRow {
                    scenario,
                    warm,
                    keys,
                    summary: Summary::of(times),
                    rss,
                });
            }
        }
    }
    for row in &rows {
        let base = rows
            .iter()
            .find(|other| other.scenario == row.scenario && other.warm == row.warm)
            .expect("the row itself at least");
        let per_key = |bound: usize| {
            if row.keys > base.keys {
                let grown = row.rss[bound].saturating_sub(base.rss[bound]);
                format!("{:.0}", grown as f64 / (row.keys - base.keys) as f64)
            } else {
                "-".to_owned()
            }
        };
        let (per_key_min, per_key_max) = (per_key(0), per_key(1));
        println!(
            "bench: scenario={} keys={} warm={} {} ratio_p50_to_{}={:.2} ratio_p99_to_{}={:.2} standby_rss_mb={:.1} rss_bytes_per_key={per_key_min} standby_rss_mb_max={:.1} rss_bytes_per_key_max={per_key_max}",
            row.scenario,
            row.keys,
            row.warm,
            row.summary,
            base.keys,
            row.summary.p50_ms / base.summary.p50_ms,
            base.keys,
            row.summary.p99_ms / base.summary.p99_ms,
            row.rss[0] as f64 / 1e6,
            row.rss[1] as f64 / 1e6,
        );
    }
    Ok(())
}

/// One line of the by-size scenarios.
struct SizeRow {
    scenario: &'static str,
    warm: bool,
    keys: usize,
    summary: Summary,
    /// The least and the most resident memory of a standby at the end.
    rss: [u64; 2],
}

/// A process's resident memory, from `/proc/PID/status`.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Puts the calling thread in Linux's `SCHED_IDLE` class: it runs only on
/// a core nothing else wants, and gives it up as soon as a normal thread
/// wakes there (a nice value of 19 only weighs less, and still takes
/// slices from the threads it shares a core with).
fn schedule_this_thread_idle() -> anyhow::Result<()> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let tid = stat.split_whitespace().next().context("a thread id")?;
    let status = std::process::Command::new("chrt")
        .args(["--idle", "--pid", "0", tid])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "chrt --idle failed: {status}");
    Ok(())
}

/// CPU seconds (user and system) a process has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 whatever the kernel's tick.
    Some(ticks as f64 / 100.0)
}

/// One line per anchor, then one per scenario with its ratio to its
/// anchor; scenarios not run are left out.
fn print_summaries(samples: &BTreeMap<&str, Vec<Duration>>) {
    let summary = |name: &str| samples.get(name).map(|times| Summary::of(times));
    for anchor in [
        "etcdctl-elect",
        "kill9-no-witness",
        "kill9-witness-unguarded",
    ] {
        if let Some(theirs) = summary(anchor) {
            println!("bench: anchor={anchor} {theirs}");
        }
    }
    let mut printed = std::collections::BTreeSet::new();
    for (scenario, anchor) in [
        ("graceful", "etcdctl-elect"),
        ("transfer", "etcdctl-elect"),
        ("crash", "etcdctl-elect"),
        ("kill9-witness", "kill9-witness-unguarded"),
        ("kill9-witness", "kill9-no-witness"),
        ("witness-reject", "kill9-witness-unguarded"),
        ("kill9-unreachable", "kill9-no-witness"),
        ("kill9-container", "kill9-no-witness"),
    ] {
        let Some(ours) = summary(scenario) else {
            continue;
        };
        let Some(theirs) = summary(anchor) else {
            if !printed.contains(scenario) {
                println!("bench: scenario={scenario} {ours} (anchor {anchor} not run)");
            }
            continue;
        };
        printed.insert(scenario);
        println!(
            "bench: scenario={scenario} {ours} anchor={anchor} anchor_p50_ms={:.1} \
             anchor_p99_ms={:.1} ratio_p50={:.3} ratio_p99={:.3}",
            theirs.p50_ms,
            theirs.p99_ms,
            ours.p50_ms / theirs.p50_ms,
            ours.p99_ms / theirs.p99_ms
        );
    }
}

/// The epoch that answered one request of `role` over `channel` (a
/// `Tso.Allocate`, or a `Kv.Get`), or `None` when it was refused.
async fn answered_epoch(role: &str, channel: Channel) -> Option<i64> {
    if role == "kv" {
        let request = GetRequest {
            key: "bench".into(),
        };
        let answer = KvClient::new(channel).get(request).await.ok()?;
        Some(answer.get_ref().epoch)
    } else {
        let answer = TsoClient::new(channel)
            .allocate(AllocateRequest { count: 1 })
            .await
            .ok()?;
        Some(answer.get_ref().epoch)
    }
}

/// Copies the nodes' logs into `dir`, when given.
fn keep_logs(dir: Option<&std::path::Path>, clusters: &[&Cluster]) -> anyhow::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    for cluster in clusters {
        for (index, node) in cluster.nodes.iter().enumerate() {
            let name = format!("{}-node{index}.log", cluster.root);
            std::fs::write(dir.join(name), node.process.log())?;
        }
    }
    println!("bench: node logs kept in {}", dir.display());
    Ok(())
}

/// n, p50, p99 and max of one scenario's times.
struct Summary {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Summary {
    fn of(times: &[Duration]) -> Self {
        let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest time at or above the fraction p of them.
        let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            n: ms.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: rank(1.0),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
            self.n, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// How a cluster's nodes run their death witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Witness {
    /// On, reached directly.
    On,
    /// Off (`session.deathWitness: false`): what every lease election does.
    Off,
    /// On, but each node's witness and etcd link go through a proxy, so its
    /// host can be made unreachable, or its witness rejected.
    BehindProxy,
    /// On, without `session.witnessConfirm` and `session.witnessGrace`: the
    /// first refusal revokes, and the successor serves at once.
    Unguarded,
}

/// What a round does to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// SIGTERM: the graceful handover.
    Sigterm,
    /// `Resign` with `to`: the leader hands the role to a chosen standby,
    /// every other round past the standby next in line.
    Transfer,
    /// A panic of its coordinator actor (fault injection), the process lives on.
    CrashCoordinator,
    /// SIGKILL.
    Kill,
    /// Its witness and etcd link blackholed, then SIGKILL: a host gone dark.
    BlackholeAndKill,
    /// Its witness rejected (held connections reset, the port refusing)
    /// while it lives and reaches etcd: a firewall makes it look dead.
    RejectWitness,
}

/// One `standin run --role tso` node of a cluster: a process, or a container.
struct Node {
    process: Box<dyn NodeProcess>,
    channel: Channel,
    /// The address it publishes, which a transfer names.
    address: String,
    /// The etcd link's proxy, then the witness's (for [`Witness::BehindProxy`]).
    proxies: Vec<FaultProxy>,
    /// Log lines at the last act: what came after is about the new leader.
    log_mark: usize,
}

impl Node {
    fn new(
        process: Box<dyn NodeProcess>,
        address: &str,
        proxies: Vec<FaultProxy>,
    ) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(Self {
            process,
            channel,
            address: address.to_owned(),
            proxies,
            log_mark: 0,
        })
    }
}

/// Three `standin run --role tso` processes on one root.
struct Cluster {
    root: String,
    /// The role its nodes run: `tso`, or `kv` for metadata of any size.
    role: &'static str,
    /// Each node's server ID, as of the last settle.
    server_ids: Vec<i64>,
    /// The leader the last round acted on.
    last_leader: Option<usize>,
    /// Print every round's act time and duration.
    verbose: bool,
    nodes: Vec<Node>,
    witness: Witness,
    /// `reload.warm`: a standby is ready only once its copy is loaded.
    warm: bool,
    /// Longest wait for one takeover or settle: a node that reads its
    /// metadata whole (at a start, or at a cold win) takes longer with more.
    within: Duration,
    /// The compose cluster its nodes are containers of, if they are.
    _compose: Option<ComposeCluster>,
    /// Whether its nodes run other roles than the one timed (the compose
    /// cluster runs tso and kv).
    shared_roles: bool,
}

/// What a cluster of the bench runs.
#[derive(Clone, Copy)]
struct Shape {
    witness: Witness,
    /// The role timed, the only one the nodes run.
    role: &'static str,
    /// `reload.warm`.
    warm: bool,
    /// Keys under the role's prefix, which lengthen the wait to settle.
    metadata_keys: usize,
    /// Nodes in the cluster.
    nodes: usize,
    /// More top-level sections of the nodes' config, YAML.
    extra: &'static str,
}

impl Shape {
    /// Three warm `tso` nodes without metadata.
    fn tso(witness: Witness) -> Self {
        Self {
            witness,
            role: "tso",
            warm: true,
            metadata_keys: 0,
            nodes: NODES,
            extra: "",
        }
    }
}

impl Cluster {
    async fn start(
        etcd: &EtcdServer,
        binary: &std::path::Path,
        root: &str,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        let Shape {
            witness,
            role,
            warm,
            metadata_keys,
            nodes: count,
            extra,
        } = shape;
        let mut nodes = Vec::new();
        for _ in 0..count {
            let address = format!("127.0.0.1:{}", free_loopback_port()?);
            let mut proxies = Vec::new();
            let mut endpoint = etcd.endpoint();
            let mut node_keys = format!("  address: {address}\n");
            if witness == Witness::BehindProxy {
                let etcd_proxy = FaultProxy::start(&etcd.endpoint()).await?;
                endpoint = etcd_proxy.endpoint();
                let listen = format!("127.0.0.1:{}", free_loopback_port()?);
                let witness_proxy = FaultProxy::start(&listen).await?;
                node_keys.push_str(&format!(
                    "  witnessAddress: {listen}\n  witnessAdvertisedAddress: {}\n",
                    witness_proxy.endpoint()
                ));
                proxies = vec![etcd_proxy, witness_proxy];
            }
            let unguarded = match witness {
                Witness::Unguarded => "  witnessConfirm: 0s\n  witnessGrace: 0s\n",
                _ => "",
            };
            let yaml = format!(
                "etcd:\n  endpoints: [{endpoint}]\n  rootPath: {root}\n  requestTimeout: 1s\n  connectAttempts: 0\n\
                 node:\n{node_keys}session:\n  ttl: {}s\n  deathWitness: {}\n{unguarded}reload:\n  warm: {warm}\n{extra}",
                TTL.as_secs(),
                witness != Witness::Off
            );
            let args = ["--role", role, "--fault-injection", "--listen", &address];
            let process = StandinProcess::spawn(binary, &yaml, &args)?;
            nodes.push(Node::new(Box::new(process), &address, proxies)?);
        }
        let mut cluster = Self {
            root: root.to_owned(),
            role,
            server_ids: Vec::new(),
            last_leader: None,
            verbose: std::env::var_os("BENCH_VERBOSE").is_some(),
            nodes,
            witness,
            warm,
            within: WITHIN + READ_PER_KEY * u32::try_from(metadata_keys)?,
            _compose: None,
            shared_roles: false,
        };
        cluster.settle().await?;
        Ok(cluster)
    }

    /// deploy/compose's cluster (its own etcd, three containers of `binary`
    /// running tso and kv), timed on its `tso` role.
    async fn compose(binary: &std::path::Path) -> anyhow::Result<Self> {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let compose = ComposeCluster::up(repo, binary, "standin-bench")?;
        let nodes = ComposeCluster::NODES
            .iter()
            .enumerate()
            .map(|(index, address)| Node::new(Box::new(compose.node(index)), address, Vec::new()))
            .collect::<anyhow::Result<_>>()?;
        let mut cluster = Self {
            root: "standin".to_owned(),
            role: "tso",
            server_ids: Vec::new(),
            last_leader: None,
            verbose: std::env::var_os("BENCH_VERBOSE").is_some(),
            nodes,
            witness: Witness::On,
            warm: true,
            within: WITHIN,
            _compose: Some(compose),
            shared_roles: true,
        };
        cluster.settle().await?;
        Ok(cluster)
    }

    /// Does `act` to the leader and times it until another node answers;
    /// then brings the cluster back to three settled nodes, so that no
    /// restart competes for the CPU with the next round, of either side.
    async fn round(&mut self, act: Act) -> anyhow::Result<Duration> {
        let (leader, epoch) = self.settle().await?;
        for node in &mut self.nodes {
            node.log_mark = node.process.log().lines().count();
        }
        let target = self.nodes[(leader + 2) % self.nodes.len()].address.clone();
        let mut tries = 0;
        let (answered, acted_at) = loop {
            let answered = self.first_answer(leader, epoch).await?;
            let acted_at = Instant::now();
            let old = &mut self.nodes[leader];
            match act {
                Act::Sigterm => old.process.terminate()?,
                Act::Transfer => {
                    let request = ResignRequest {
                        role: self.role.into(),
                        to: target.clone(),
                    };
                    // Answered once the target can take over; its first
                    // answer is timed either way.
                    let handed = CoordinationClient::new(old.channel.clone())
                        .resign(request)
                        .await;
                    match handed {
                        Ok(_) => {}
                        // A node restarted by the last round may not be in
                        // line yet: ask again once it is.
                        Err(status)
                            if status.code() == tonic::Code::FailedPrecondition && tries < 200 =>
                        {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(25)).await;
                            continue;
                        }
                        Err(status) => bail!("the transfer was refused: {}", status.message()),
                    }
                }
                Act::CrashCoordinator => {
                    let request = InjectRequest {
                        role: self.role.into(),
                        fault: "crash-coordinator".into(),
                    };
                    let injected = FaultsClient::new(old.channel.clone())
                        .inject(request)
                        .await?
                        .into_inner()
                        .injected;
                    if !injected {
                        bail!("the leader refused to inject a coordinator crash");
                    }
                }
                Act::Kill => old.process.kill()?,
                Act::RejectWitness => match old.proxies.get(1) {
                    Some(witness) => witness.reject(),
                    None => bail!("a witness can only be rejected behind a proxy"),
                },
                Act::BlackholeAndKill => {
                    for proxy in &old.proxies {
                        proxy.blackhole();
                    }
                    old.process.kill()?;
                }
            }
            break (answered, acted_at);
        };
        let old = &mut self.nodes[leader];
        let took = answered.await?.duration_since(acted_at);
        if self.verbose {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .saturating_sub(acted_at.elapsed());
            println!(
                "bench: round {act:?} on {} node {leader} at unix {:.6}: {:.1} ms",
                self.root,
                unix.as_secs_f64(),
                took.as_secs_f64() * 1000.0
            );
        }
        self.last_leader = Some(leader);
        if act == Act::RejectWitness {
            for proxy in &old.proxies {
                proxy.heal();
            }
        } else if act != Act::CrashCoordinator && act != Act::Transfer {
            if act == Act::Sigterm {
                wait_for_exit(old.process.as_mut()).await?;
            }
            for proxy in &old.proxies {
                proxy.heal();
            }
            old.process.restart()?;
        }
        self.settle().await?;
        Ok(took)
    }

    /// When the leader of the last round, which lived through it, stepped
    /// down, against its successor's win and first answer, from the nodes'
    /// logs since that round's act; `None` if a log does not show it.
    fn old_leader_stepped_down(&self) -> anyhow::Result<Option<SteppedDown>> {
        let old = self.last_leader.context("no round yet")?;
        let at = |index: usize, needle: &str| {
            let node = &self.nodes[index];
            logged_at(&node.process.log(), node.log_mark, needle)
        };
        let Some(stepped_down) = at(old, "stepping down") else {
            return Ok(None);
        };
        for index in (0..self.nodes.len()).filter(|&index| index != old) {
            let (Some(won), Some(served)) = (
                at(index, "a death witness revoked: serving after"),
                at(index, "is ACTIVE and serving"),
            ) else {
                continue;
            };
            let signed_ms = |from: std::time::SystemTime, to: std::time::SystemTime| match to
                .duration_since(from)
            {
                Ok(after) => after.as_secs_f64() * 1000.0,
                Err(before) => -before.duration().as_secs_f64() * 1000.0,
            };
            return Ok(Some(SteppedDown {
                after_win_ms: signed_ms(won, stepped_down),
                before_answer_ms: signed_ms(stepped_down, served),
            }));
        }
        Ok(None)
    }

    /// Follows every node's `WatchLeader` stream (each has given its first
    /// event when this returns); the future resolves to when the first new
    /// leader any of them names (epoch above `epoch`) answers a
    /// `Tso.Allocate` at that epoch. Asked only once named, and then every
    /// millisecond until it answers, so that the measuring does not load
    /// the nodes it measures.
    async fn first_answer(
        &self,
        old: usize,
        epoch: i64,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<Instant>> + use<>> {
        let (named, mut leaders) = tokio::sync::mpsc::unbounded_channel();
        let mut watchers = JoinSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if index == old {
                continue;
            }
            let request = WatchLeaderRequest {
                role: self.role.into(),
            };
            let mut events = CoordinationClient::new(node.channel.clone())
                .watch_leader(request)
                .await?
                .into_inner();
            events.message().await?.context("a first leader event")?;
            let named = named.clone();
            watchers.spawn(async move {
                while let Ok(Some(event)) = events.message().await {
                    if let Some(leader) = event.leader
                        && leader.epoch > epoch
                    {
                        let _ = named.send(leader.server_id);
                        return;
                    }
                }
            });
        }
        let role = self.role;
        let within = self.within;
        let channels: Vec<(i64, Channel)> = self
            .server_ids
            .iter()
            .copied()
            .zip(self.nodes.iter().map(|node| node.channel.clone()))
            .collect();
        Ok(async move {
            let answered = async {
                let server_id = leaders.recv().await.context("no leader named")?;
                let (_, channel) = channels
                    .iter()
                    .find(|(id, _)| *id == server_id)
                    .with_context(|| format!("the new leader {server_id} is none of the nodes"))?;
                loop {
                    if answered_epoch(role, channel.clone())
                        .await
                        .is_some_and(|answered| answered > epoch)
                    {
                        drop(watchers);
                        return Ok(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            match tokio::time::timeout(within, answered).await {
                Ok(answered) => answered,
                Err(_) => bail!("no node answered at a newer epoch within {within:?}"),
            }
        })
    }

    /// Waits until every node answers, one serves and all see it lead,
    /// (witness on) every other node has logged watching its witness since
    /// the last act, and (warm) every node has loaded and decoded its copy; returns the
    /// leader and its epoch.
    async fn settle(&mut self) -> anyhow::Result<(usize, i64)> {
        let since = Instant::now();
        loop {
            if let Some((leader, epoch, server_ids)) = self.settled().await {
                self.server_ids = server_ids;
                return Ok((leader, epoch));
            }
            if since.elapsed() > self.within {
                self.print_log_tails();
                bail!("the cluster did not settle within {:?}", self.within);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Each node's last lines of log, to say why it did not settle.
    fn print_log_tails(&self) {
        for (index, node) in self.nodes.iter().enumerate() {
            eprintln!("bench: {} node {index}, last lines of its log:", self.root);
            eprintln!("{}", node.process.log_tail(30));
        }
    }

    /// The leader, its epoch and every node's server ID, once settled.
    async fn settled(&self) -> Option<(usize, i64, Vec<i64>)> {
        let asked = self.nodes.iter().map(|node| async {
            let status = CoordinationClient::new(node.channel.clone())
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner();
            status.roles.into_iter().find(|role| role.role == self.role)
        });
        let statuses: Option<Vec<_>> = futures::future::join_all(asked).await.into_iter().collect();
        let statuses = statuses?;
        let serving: Vec<usize> = (0..statuses.len())
            .filter(|&i| statuses[i].state == "serving")
            .collect();
        let [leader] = serving[..] else { return None };
        let leader_id = statuses[leader].server_id;
        let all_see_it = statuses.iter().all(|status| {
            status
                .leader
                .as_ref()
                .is_some_and(|l| l.server_id == leader_id && l.state == "serving")
        });
        let watching = format!("watching leader server {leader_id} ");
        // A node that runs another role too may have watched this leader
        // since before the act (it led that role already): in the compose
        // cluster, whose rounds only kill (a server ID that stops leading
        // is dead), any line of its log counts.
        let since = |node: &Node| if self.shared_roles { 0 } else { node.log_mark };
        let armed = self.witness == Witness::Off
            || self.nodes.iter().enumerate().all(|(index, node)| {
                index == leader
                    || node
                        .process
                        .log()
                        .lines()
                        .skip(since(node))
                        .any(|line| line.contains(&watching))
            });
        // A warm node joins the election once its copy is loaded (by the
        // process that answers: a restarted one has none until its read
        // ends) and decoded; a node that led reads its copy again after its
        // term: a round starts with every standby warm.
        let loaded = !self.warm
            || statuses.iter().enumerate().all(|(index, status)| {
                status
                    .metadata_copy
                    .as_ref()
                    .is_some_and(|copy| !copy.decoding && (index == leader || !copy.released))
            });
        let server_ids = statuses.iter().map(|status| status.server_id).collect();
        (all_see_it && armed && loaded).then_some((leader, statuses[leader].epoch, server_ids))
    }
}

impl Cluster {
    /// SIGTERMs every node and waits for each to exit: the next cluster on
    /// this root then finds no candidate or session of this one left.
    async fn shut_down(mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.process.terminate()?;
            wait_for_exit(node.process.as_mut()).await?;
        }
        Ok(())
    }
}

async fn wait_for_exit(process: &mut dyn NodeProcess) -> anyhow::Result<()> {
    let since = Instant::now();
    while process.try_exit_status().is_none() {
        if since.elapsed() > WITHIN {
            bail!("a terminated node did not exit within {WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Three `etcdctl elect` candidates of one election: etcd's own recipe.
struct Elect<'a> {
    etcd: &'a EtcdServer,
    client: etcd_client::Client,
    election: String,
    candidates: Vec<Option<Child>>,
    /// (candidate, when it printed a line): a candidate prints only once it leads.
    lines: mpsc::Receiver<(usize, Instant)>,
    sender: mpsc::Sender<(usize, Instant)>,
    leader: Option<usize>,
    spawned: usize,
}

impl<'a> Elect<'a> {
    async fn start(etcd: &'a EtcdServer, election: &str) -> anyhow::Result<Self> {
        let (sender, lines) = mpsc::channel();
        let mut elect = Self {
            etcd,
            client: etcd.client().await?,
            election: election.to_owned(),
            candidates: Vec::new(),
            lines,
            sender,
            leader: None,
            spawned: 0,
        };
        for slot in 0..NODES {
            let child = elect.spawn(slot)?;
            elect.candidates.push(Some(child));
        }
        elect.wait_for_candidates().await?;
        Ok(elect)
    }

    /// Waits until every candidate has joined the election (has its key).
    async fn wait_for_candidates(&self) -> anyhow::Result<()> {
        let prefix = format!("{}/", self.election);
        let since = Instant::now();
        loop {
            let options = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            let joined = self
                .client
                .kv_client()
                .get(prefix.as_str(), Some(options))
                .await?;
            if joined.count() == NODES as i64 {
                return Ok(());
            }
            if since.elapsed() > WITHIN {
                bail!("the etcdctl candidates did not all join within {WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A new candidate in `slot`, its stdout read on a thread of its own.
    fn spawn(&mut self, slot: usize) -> anyhow::Result<Child> {
        let proposal = format!("candidate-{}", self.spawned);
        self.spawned += 1;
        let mut child = self
            .etcd
            .etcdctl_spawn(&["elect", &self.election, &proposal])?;
        let stdout = child.stdout.take().context("etcdctl's stdout")?;
        let sender = self.sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || sender.send((slot, Instant::now())).is_err() {
                    return;
                }
            }
        });
        Ok(child)
    }

    /// The candidate that leads, once it has said so.
    fn leader(&mut self) -> anyhow::Result<usize> {
        if let Some(leader) = self.leader {
            return Ok(leader);
        }
        let (leader, _) = self
            .lines
            .recv_timeout(WITHIN)
            .context("no etcdctl candidate leads")?;
        self.leader = Some(leader);
        Ok(leader)
    }

    /// SIGINTs the leader (etcdctl resigns on it) and times it until
    /// another candidate prints that it leads; then replaces the leader and
    /// waits until the new candidate has joined.
    async fn round(&mut self) -> anyhow::Result<Duration> {
        let leader = self.leader()?;
        while self.lines.try_recv().is_ok() {}
        let child = self.candidates[leader]
            .take()
            .context("the leader's process")?;
        let acted_at = Instant::now();
        interrupt(child.id())?;
        let (next, led_at) = loop {
            let (slot, at) = self
                .lines
                .recv_timeout(WITHIN)
                .context("no etcdctl candidate took over")?;
            // The resigning leader may still print while it exits.
            if slot != leader {
                break (slot, at);
            }
        };
        reap(child);
        self.leader = Some(next);
        self.candidates[leader] = Some(self.spawn(leader)?);
        self.wait_for_candidates().await?;
        Ok(led_at.duration_since(acted_at))
    }
}

impl Drop for Elect<'_> {
    fn drop(&mut self) {
        for child in self.candidates.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGINT, as Ctrl-C: etcdctl elect resigns and exits on it.
fn interrupt(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .context("running kill -INT")?;
    if !status.success() {
        bail!("kill -INT {pid} failed: {status}");
    }
    Ok(())
}

/// Waits for an interrupted candidate on a thread, so the round goes on.
fn reap(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}
