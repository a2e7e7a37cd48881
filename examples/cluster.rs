//! An example cluster: 3 nodes x 3 coordinator roles in one process, with a coordinator crash injected every few seconds.
//!
//! Each role runs an ID allocator that persists its high-water mark through
//! its fenced store, and a client per role keeps allocating from whichever
//! node serves, checking that IDs never repeat or go backwards across
//! takeovers. The last line is
//! `summary: takeovers=N p50_ms=X p99_ms=Y max_ms=Z`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::seq::IndexedRandom;
use standin::BoxError;
use standin::testing::EtcdServer;
use standin::{Config, Coordinator, Epoch, FencedStore, Node, RoleHandle, RoleState, Snapshot};
use tokio::sync::watch;

const ROLES: [&str; 3] = ["rootcoord", "datacoord", "querycoord"];
const NODES: usize = 3;
/// IDs reserved per high-water-mark write: a new leader starts above the
/// saved mark, so nothing handed out before a crash is handed out again.
const BATCH: u64 = 1000;

#[derive(Parser)]
#[command(about = "Run 3 standin nodes x 3 roles and crash active coordinators on a schedule")]
struct Args {
    /// Use this etcd (host:port or http URL) instead of starting one on a free loopback port.
    #[arg(long)]
    etcd: Option<String>,
    /// How often to make the active coordinator of a random role panic.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    crash_every: Duration,
    /// How long to run; until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// The session (lease) TTL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// Hands out strictly increasing IDs; the high-water mark lives in etcd.
struct IdAllocator;

struct Allocating {
    next: u64,
    ceiling: u64,
    store: FencedStore,
}

enum Request {
    Allocate,
    Crash,
}

impl Coordinator for IdAllocator {
    type Meta = u64;
    type Serving = Allocating;
    type Request = Request;
    type Response = Result<u64, BoxError>;

    fn decode(&self, snapshot: Snapshot) -> Result<u64, BoxError> {
        match snapshot.entries.get("hwm") {
            None => Ok(0),
            Some(raw) => Ok(std::str::from_utf8(raw)?.parse()?),
        }
    }

    async fn activate(
        &self,
        _epoch: Epoch,
        hwm: u64,
        store: FencedStore,
    ) -> Result<Allocating, BoxError> {
        Ok(Allocating {
            next: hwm,
            ceiling: hwm,
            store,
        })
    }

    async fn handle(&self, serving: &mut Allocating, request: Request) -> Result<u64, BoxError> {
        match request {
            Request::Crash => panic!("crash injected by the example cluster"),
            Request::Allocate => {
                if serving.next >= serving.ceiling {
                    let ceiling = serving.next + BATCH;
                    serving.store.put("hwm", ceiling.to_string()).await?;
                    serving.ceiling = ceiling;
                }
                serving.next += 1;
                Ok(serving.next)
            }
        }
    }
}

struct Cluster {
    /// `roles[r][n]`: role `r` on node `n`.
    roles: Vec<Vec<RoleHandle<IdAllocator>>>,
    started: Instant,
}

impl Cluster {
    fn since_start(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn serving_node(&self, role: usize) -> Option<usize> {
        self.roles[role]
            .iter()
            .position(|handle| handle.is_serving())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    // The crashes are injected on purpose: one line each, not a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("coordinator panic: {info}")));
    let args = Args::parse();

    let (_etcd, endpoint) = match &args.etcd {
        Some(url) => (None, url.trim_start_matches("http://").to_owned()),
        None => {
            let etcd = EtcdServer::start()
                .await
                .context("starting etcd for the demo")?;
            let endpoint = etcd.endpoint();
            println!("started etcd at {endpoint}");
            (Some(etcd), endpoint)
        }
    };

    let mut roles: Vec<Vec<RoleHandle<IdAllocator>>> = ROLES.iter().map(|_| Vec::new()).collect();
    let mut nodes = Vec::new();
    for index in 0..NODES {
        let mut config = Config::default();
        config.etcd.endpoints = vec![endpoint.clone()];
        config.etcd.root_path = format!("standin-demo-{}", std::process::id());
        config.node.address = Some(format!("127.0.0.1:{}", 19530 + index));
        config.session.ttl = args.ttl;
        let mut node = Node::new(config);
        for (r, role) in ROLES.iter().enumerate() {
            roles[r].push(node.add_role(role, IdAllocator)?);
        }
        node.start().await?;
        nodes.push(node);
    }
    let cluster = Arc::new(Cluster {
        roles,
        started: Instant::now(),
    });
    println!(
        "{NODES} nodes x {} roles running; crashing an active coordinator every {:?}",
        ROLES.len(),
        args.crash_every
    );

    let mut printers = Vec::new();
    for (r, handles) in cluster.roles.iter().enumerate() {
        for (n, handle) in handles.iter().enumerate() {
            printers.push(tokio::spawn(print_transitions(
                cluster.clone(),
                ROLES[r],
                n,
                handle.subscribe(),
            )));
        }
    }
    let allocated = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(AtomicU64::new(0));
    for r in 0..ROLES.len() {
        tokio::spawn(allocate_forever(
            cluster.clone(),
            r,
            allocated.clone(),
            violations.clone(),
        ));
    }

    let mut takeovers_ms = Vec::new();
    let stop = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut schedule = tokio::time::interval_at(
        tokio::time::Instant::now() + args.crash_every,
        args.crash_every,
    );
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = schedule.tick() => {
                if let Some(took) = crash_one(&cluster).await {
                    takeovers_ms.push(took.as_secs_f64() * 1000.0);
                }
            }
        }
    }

    println!(
        "ids allocated={} out_of_order_or_repeated={}",
        allocated.load(Ordering::Relaxed),
        violations.load(Ordering::Relaxed)
    );
    for node in nodes {
        node.shutdown().await;
    }
    // Every transition is printed before the summary, the last line.
    for printer in printers {
        let _ = printer.await;
    }
    takeovers_ms.sort_by(f64::total_cmp);
    println!(
        "summary: takeovers={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        takeovers_ms.len(),
        percentile(&takeovers_ms, 0.50),
        percentile(&takeovers_ms, 0.99),
        takeovers_ms.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

/// Makes the active coordinator of a random role panic and returns how long
/// it took until another node served that role.
async fn crash_one(cluster: &Cluster) -> Option<Duration> {
    let r = *(0..ROLES.len())
        .collect::<Vec<_>>()
        .choose(&mut rand::rng())?;
    let Some(victim) = cluster.serving_node(r) else {
        println!(
            "[{:8.3}s] {}: no active instance to crash right now",
            cluster.since_start(),
            ROLES[r]
        );
        return None;
    };
    println!(
        "[{:8.3}s] {}: crashing the active coordinator on node{victim}",
        cluster.since_start(),
        ROLES[r]
    );
    let crashed_at = Instant::now();
    let _ = cluster.roles[r][victim]
        .call(Request::Crash, Duration::from_secs(1))
        .await;
    let successors: Vec<_> = cluster.roles[r]
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != victim)
        .map(|(_, handle)| {
            let mut status = handle.subscribe();
            Box::pin(async move {
                let _ = status.wait_for(|s| s.state == RoleState::Serving).await;
            })
        })
        .collect();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::select_all(successors),
    )
    .await;
    let took = crashed_at.elapsed();
    match waited {
        Ok((_, winner, _)) => {
            let node = if winner >= victim { winner + 1 } else { winner };
            println!(
                "[{:8.3}s] {}: node{node} took over in {:.1} ms",
                cluster.since_start(),
                ROLES[r],
                took.as_secs_f64() * 1000.0
            );
            Some(took)
        }
        Err(_) => {
            println!(
                "[{:8.3}s] {}: no takeover within 30 s",
                cluster.since_start(),
                ROLES[r]
            );
            None
        }
    }
}

async fn print_transitions(
    cluster: Arc<Cluster>,
    role: &'static str,
    node: usize,
    mut status: watch::Receiver<standin::RoleStatus>,
) {
    let mut last = status.borrow().state;
    while status.changed().await.is_ok() {
        let state = status.borrow_and_update().state;
        if state != last {
            println!(
                "[{:8.3}s] {role}: node{node} {last} -> {state}",
                cluster.since_start()
            );
            last = state;
        }
        // Final: the node has shut down, and nothing follows.
        if state == RoleState::Stopped {
            return;
        }
    }
}

/// Keeps allocating IDs for role `r` from whichever node serves it, and
/// counts any ID that is not above the previous one.
async fn allocate_forever(
    cluster: Arc<Cluster>,
    r: usize,
    allocated: Arc<AtomicU64>,
    violations: Arc<AtomicU64>,
) {
    let mut last = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    loop {
        pace.tick().await;
        let Some(node) = cluster.serving_node(r) else {
            continue;
        };
        let answer = cluster.roles[r][node]
            .call(Request::Allocate, Duration::from_secs(2))
            .await;
        // An error means it was between leaders: the next round finds the new one.
        if let Ok(Ok(id)) = answer {
            if id <= last {
                violations.fetch_add(1, Ordering::Relaxed);
                println!("{}: id {id} after {last}: NOT increasing", ROLES[r]);
            }
            last = id;
            allocated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank]
}
