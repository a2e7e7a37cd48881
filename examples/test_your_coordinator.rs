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
use standin::testing::{EtcdServer, free_loopback_port, the_single_serving, wait_until};
use standin::{Config, Coordinator, Epoch, FenceError, FencedStore, Node, Snapshot};

/// The coordinator under test: a counter whose value is the role's metadata
/// in etcd, so whoever takes over continues from the last fenced write.
struct Counter;

/// What an active counter holds: its value and the store it writes through.
struct Counting {
    value: u64,
    store: FencedStore,
}

/// Adds one and persists the new value through the fenced store.
struct Increment;

impl Coordinator for Counter {
    type Meta = u64;
    type Serving = Counting;
    type Request = Increment;
    type Response = Result<u64, FenceError>;

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

    async fn handle(&self, serving: &mut Counting, _: Increment) -> Result<u64, FenceError> {
        let next = serving.value + 1;
        // Persist first: a value only counts once etcd has it.
        serving.store.put("value", next.to_string()).await?;
        serving.value = next;
        Ok(next)
    }
}

const ROLE: &str = "counter";
/// How long a step may take before the check fails: generous, since a
/// takeover after a coordinator crash takes milliseconds, not a TTL.
const DEADLINE: Duration = Duration::from_secs(20);
const CALL: Duration = Duration::from_secs(5);

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
        let config = Config::builder()
            .endpoints([etcd.endpoint()])
            .root_path("counter-test")
            .address(format!("127.0.0.1:{}", free_loopback_port()?))
            .session_ttl(Duration::from_secs(5))
            .build()?;
        let mut node = Node::new(config);
        roles.push(node.add_role(ROLE, Counter)?);
        node.start().await?;
        nodes.push(node);
    }

    // 3. Exactly one serves; it counts, and grabs its store for later.
    let active = the_single_serving(&roles, DEADLINE).await?;
    println!("ok: node{active} is the only active {ROLE}");
    for _ in 0..3 {
        roles[active].try_call(Increment, CALL).await?;
    }
    let old_store = roles[active]
        .fenced_store()
        .context("a serving node has a store")?;
    println!("ok: node{active} counted to 3 through its fenced store");

    // 4. Crash the active coordinator, as a bug in it would.
    ensure!(roles[active].crash_coordinator(), "no coordinator to crash");
    let crashed = Instant::now();
    let standby = 1 - active;
    wait_until("takeover", DEADLINE, || async {
        roles[standby].is_serving().then_some(())
    })
    .await?;
    println!(
        "ok: node{standby} took over {:.0?} after the crash",
        crashed.elapsed()
    );

    // 5. The new active continues from what the old one persisted.
    let next = roles[standby].try_call(Increment, CALL).await?;
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
