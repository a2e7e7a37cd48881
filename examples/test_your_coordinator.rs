//! Testing your own coordinator with standin's test kit: a real etcd, two nodes, a crash of the active, and a fenced write from the deposed one.
//!
//! Run it with `cargo run --example test_your_coordinator`. It needs `etcd`
//! on PATH (the kit starts a throwaway one on a free loopback port) and the
//! `testing` feature, which examples and tests of this crate get through the
//! self dev-dependency; in your own crate, add
//! `standin = { version = "...", features = ["testing"] }` to
//! `[dev-dependencies]`. The same steps belong in a `#[tokio::test]`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use standin::BoxError;
use standin::testing::{EtcdServer, free_loopback_port};
use standin::{Config, Coordinator, Epoch, FenceError, FencedStore, Node, RoleHandle, Snapshot};

/// The coordinator under test: a counter whose value is the role's metadata
/// in etcd, so whoever takes over continues from the last fenced write.
struct Counter;

/// What an active counter holds: its value and the store it writes through.
struct Counting {
    value: u64,
    store: FencedStore,
}

enum Request {
    /// Adds one and persists the new value through the fenced store.
    Increment,
    /// Hands out the fenced store, so the test can write through it after
    /// this node has been deposed.
    Store,
}

enum Response {
    Value(Result<u64, FenceError>),
    Store(FencedStore),
}

impl Coordinator for Counter {
    type Meta = u64;
    type Serving = Counting;
    type Request = Request;
    type Response = Response;

    fn decode(&self, snapshot: Snapshot) -> Result<u64, BoxError> {
        match snapshot.entries.get("value") {
            None => Ok(0),
            Some(raw) => Ok(std::str::from_utf8(raw)?.parse()?),
        }
    }

    async fn activate(
        &self,
        _epoch: Epoch,
        value: u64,
        store: FencedStore,
    ) -> Result<Counting, BoxError> {
        Ok(Counting { value, store })
    }

    async fn handle(&self, serving: &mut Counting, request: Request) -> Response {
        match request {
            Request::Increment => {
                let next = serving.value + 1;
                // Persist first: a value only counts once etcd has it.
                let written = serving.store.put("value", next.to_string()).await;
                Response::Value(written.map(|()| {
                    serving.value = next;
                    next
                }))
            }
            Request::Store => Response::Store(serving.store.clone()),
        }
    }
}

const ROLE: &str = "counter";
/// How long a step may take before the check fails: generous, since a
/// takeover after a coordinator crash takes milliseconds, not a TTL.
const DEADLINE: Duration = Duration::from_secs(20);
const CALL: Duration = Duration::from_secs(5);

/// Polls `probe` every 10 ms until it returns `Some`, or fails after
/// [`DEADLINE`]: wait for a condition, never for a fixed time.
async fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(10));
    loop {
        every.tick().await;
        if let Some(value) = probe() {
            return Ok(value);
        }
        ensure!(started.elapsed() < DEADLINE, "no {what} after {DEADLINE:?}");
    }
}

/// The index of the one node whose counter serves, if exactly one does.
fn the_active(roles: &[RoleHandle<Counter>]) -> Option<usize> {
    let serving: Vec<_> = (0..roles.len())
        .filter(|&i| roles[i].is_serving())
        .collect();
    match serving.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

async fn increment(role: &RoleHandle<Counter>) -> anyhow::Result<u64> {
    match role.call(Request::Increment, CALL).await? {
        Response::Value(value) => Ok(value?),
        Response::Store(_) => bail!("asked to increment, got a store"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The crash below is injected on purpose: one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("(injected) {info}")));

    // 1. A throwaway etcd on a free loopback port, killed and deleted on drop.
    let etcd = EtcdServer::start()
        .await
        .context("starting etcd (is it on PATH?)")?;
    println!("etcd serves at {}", etcd.endpoint());

    // 2. Two nodes running the coordinator, as two processes of your service
    // would. The TTL matters only when a whole node dies; a crashed
    // coordinator resigns at once.
    let mut nodes = Vec::new();
    let mut roles = Vec::new();
    for _ in 0..2 {
        let mut config = Config::default();
        config.etcd.endpoints = vec![etcd.endpoint()];
        config.etcd.root_path = "counter-test".into();
        config.node.address = Some(format!("127.0.0.1:{}", free_loopback_port()?));
        config.session.ttl = Duration::from_secs(5);
        let mut node = Node::new(config);
        roles.push(node.add_role(ROLE, Counter)?);
        node.start().await?;
        nodes.push(node);
    }

    // 3. Exactly one serves; it counts, and grabs its store for later.
    let active = wait_until("single active counter", || the_active(&roles)).await?;
    println!("ok: node{active} is the only active {ROLE}");
    for _ in 0..3 {
        increment(&roles[active]).await?;
    }
    let Response::Store(old_store) = roles[active].call(Request::Store, CALL).await? else {
        bail!("asked for the store, got something else");
    };
    println!("ok: node{active} counted to 3 through its fenced store");

    // 4. Crash the active coordinator, as a bug in it would.
    ensure!(roles[active].crash_coordinator(), "no coordinator to crash");
    let crashed = Instant::now();
    let standby = 1 - active;
    wait_until("takeover", || roles[standby].is_serving().then_some(())).await?;
    println!(
        "ok: node{standby} took over {:.0?} after the crash",
        crashed.elapsed()
    );

    // 5. The new active continues from what the old one persisted.
    let next = increment(&roles[standby]).await?;
    ensure!(next == 4, "the new active counted to {next}, not 4");
    println!("ok: node{standby} continued the count: {next}");

    // 6. The deposed active's store refuses to write: fencing, not just
    // good manners, keeps a stale coordinator from clobbering metadata.
    match old_store.put("value", "999").await {
        Err(FenceError::Fenced { revision, .. }) => {
            println!("ok: a write through node{active}'s old store is fenced (epoch {revision})")
        }
        other => bail!("a write through the deposed store was not fenced: {other:?}"),
    }
    let mut client = etcd.client().await?;
    let stored = client.get("counter-test/meta/counter/value", None).await?;
    let stored = stored.kvs().first().map(|kv| kv.value().to_vec());
    ensure!(
        stored.as_deref() == Some(b"4".as_slice()),
        "etcd holds {stored:?}"
    );
    println!("ok: etcd still holds 4");

    for node in nodes {
        node.shutdown().await;
    }
    println!("all checks passed");
    Ok(())
}
