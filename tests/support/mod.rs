//! Shared pieces of the behaviour tests: a test coordinator, node set-up and polling waits; `faults`, what the fault tests add.
// (A directory module, so cargo does not build it as a test of its own.)
#![allow(dead_code)]

pub mod faults;

use std::collections::BTreeMap;
use std::time::Duration;

use standin::BoxError;
use standin::StepDownReason;
use standin::testing::EtcdServer;
use standin::{
    Config, Coordinator, Epoch, FenceError, FencedStore, Node, RoleHandle, ServeError, Snapshot,
};

/// The etcd root of the nodes [`config`] makes.
pub const ROOT: &str = "standin-test";

/// A coordinator whose state is its role's metadata: it writes through the
/// fenced store, can hand the store out (to test fencing), and can be made
/// to panic like a buggy coordinator would.
pub struct Ledger {
    /// Refuse to decode values equal to `b"corrupt"`, like an old binary
    /// meeting a format it does not know.
    pub strict: bool,
}

pub struct LedgerServing {
    pub epoch: Epoch,
    pub entries: BTreeMap<String, Vec<u8>>,
    pub store: FencedStore,
}

pub enum LedgerRequest {
    Write { key: String, value: Vec<u8> },
    Read,
    Epoch,
    Store,
    Panic,
}

pub enum LedgerResponse {
    Written(Result<(), FenceError>),
    Entries(BTreeMap<String, Vec<u8>>),
    Epoch(Epoch),
    Store(FencedStore),
}

impl Coordinator for Ledger {
    type Meta = BTreeMap<String, Vec<u8>>;
    type Serving = LedgerServing;
    type Request = LedgerRequest;
    type Response = LedgerResponse;

    fn decode(&self, snapshot: Snapshot) -> Result<Self::Meta, BoxError> {
        if self.strict
            && let Some((key, _)) = snapshot
                .entries
                .iter()
                .find(|(_, v)| v.as_slice() == b"corrupt")
        {
            return Err(format!("value at {key} is not in a known format").into());
        }
        Ok(snapshot.entries)
    }

    async fn activate(
        &self,
        epoch: Epoch,
        meta: Self::Meta,
        store: FencedStore,
    ) -> Result<Self::Serving, BoxError> {
        Ok(LedgerServing {
            epoch,
            entries: meta,
            store,
        })
    }

    async fn handle(&self, serving: &mut LedgerServing, request: LedgerRequest) -> LedgerResponse {
        match request {
            LedgerRequest::Write { key, value } => {
                let written = serving.store.put(&key, value.clone()).await;
                if written.is_ok() {
                    serving.entries.insert(key, value);
                }
                LedgerResponse::Written(written)
            }
            LedgerRequest::Read => LedgerResponse::Entries(serving.entries.clone()),
            LedgerRequest::Epoch => LedgerResponse::Epoch(serving.epoch.clone()),
            LedgerRequest::Store => LedgerResponse::Store(serving.store.clone()),
            LedgerRequest::Panic => panic!("injected coordinator crash"),
        }
    }
}

/// Logs to the test's output, filtered by `RUST_LOG`, once per test binary.
#[allow(unused_imports)] // a few test binaries log nothing
pub use standin::testing::init_logging;

/// A node config against `etcd` with a session TTL of `ttl` seconds.
pub fn config(etcd: &EtcdServer, node: usize, ttl: u64) -> Config {
    let mut config = Config::default();
    config.etcd.endpoints = vec![etcd.endpoint()];
    config.etcd.root_path = ROOT.into();
    config.node.address = Some(format!("127.0.0.1:{}", 20000 + node));
    config.session.ttl = Duration::from_secs(ttl);
    config
}

/// `config` with the spread off (`session.spreadLeaders: false`), for a
/// test whose first node must keep leading every role it won.
pub fn unspread(mut config: Config) -> Config {
    config.session.spread_leaders = false;
    config
}

/// A started node running `roles` with [`Ledger`] coordinators.
pub struct TestNode {
    pub node: Option<Node>,
    pub roles: Vec<RoleHandle<Ledger>>,
    pub address: String,
}

impl TestNode {
    pub async fn start(config: Config, roles: &[&str], strict: bool) -> anyhow::Result<Self> {
        let address = config.node.advertised().to_owned();
        let mut node = Node::new(config);
        let mut handles = Vec::new();
        for role in roles {
            handles.push(node.add_role(role, Ledger { strict })?);
        }
        node.start().await?;
        Ok(Self {
            node: Some(node),
            roles: handles,
            address,
        })
    }

    pub fn role(&self, role: &str) -> &RoleHandle<Ledger> {
        self.roles
            .iter()
            .find(|handle| handle.role() == role)
            .expect("the node runs that role")
    }

    /// Why `role` here last stepped down, if it ever did.
    pub fn last_step_down(&self, role: &str) -> Option<StepDownReason> {
        self.role(role).status().last_step_down
    }

    /// The metadata `role` serves here; panics unless it serves.
    pub async fn entries(&self, role: &str) -> BTreeMap<String, Vec<u8>> {
        match self.role(role).call(LedgerRequest::Read, CALL).await {
            Ok(LedgerResponse::Entries(entries)) => entries,
            Ok(_) => panic!("{role} on {} answered a read with no entries", self.address),
            Err(error) => panic!("{role} on {} did not answer a read: {error}", self.address),
        }
    }

    /// The fenced store of `role`'s term here, kept to write with once that
    /// term is over; panics unless it serves.
    pub async fn store(&self, role: &str) -> FencedStore {
        match self.role(role).call(LedgerRequest::Store, CALL).await {
            Ok(LedgerResponse::Store(store)) => store,
            Ok(_) => panic!("{role} on {} answered with no store", self.address),
            Err(error) => panic!("{role} on {} handed out no store: {error}", self.address),
        }
    }
}

/// A test node that keeps its started [`Node`] until it is shut down.
pub trait Stoppable {
    /// The node while it runs, `None` once shut down.
    fn running(&mut self) -> &mut Option<Node>;

    /// Hands the node's roles over and stops it; later calls do nothing.
    async fn shutdown(&mut self) {
        if let Some(node) = self.running().take() {
            node.shutdown().await;
        }
    }
}

impl Stoppable for TestNode {
    fn running(&mut self) -> &mut Option<Node> {
        &mut self.node
    }
}

/// Starts `count` nodes running `roles`, node `index` with `config(index)`.
pub async fn start_nodes(
    count: usize,
    roles: &[&str],
    mut config: impl FnMut(usize) -> Config,
) -> anyhow::Result<Vec<TestNode>> {
    let mut nodes = Vec::new();
    for index in 0..count {
        nodes.push(TestNode::start(config(index), roles, false).await?);
    }
    Ok(nodes)
}

/// Shuts every one of `nodes` down, in order: what each test does last.
pub async fn shutdown_all(nodes: &mut [impl Stoppable]) {
    for node in nodes {
        node.shutdown().await;
    }
}

/// Whether `role` acknowledges writing `value` at `key` through its fenced
/// store.
pub async fn acknowledges_write(
    role: &RoleHandle<Ledger>,
    key: impl Into<String>,
    value: impl Into<Vec<u8>>,
) -> bool {
    let write = LedgerRequest::Write {
        key: key.into(),
        value: value.into(),
    };
    matches!(
        role.call(write, CALL).await,
        Ok(LedgerResponse::Written(Ok(())))
    )
}

/// Whether `role` turns a request away as a standby that names `leader`
/// (an address) as the node to ask.
pub async fn redirects_to(role: &RoleHandle<Ledger>, leader: &str) -> bool {
    let answer = role.call(LedgerRequest::Read, CALL).await;
    matches!(answer, Err(ServeError::NotActive { leader: Some(ref named), .. }) if named == leader)
}

/// Writes `count` metadata keys for `role` with `value` straight into etcd,
/// 128 to a transaction.
pub async fn seed_metadata(
    etcd: &EtcdServer,
    role: &str,
    count: usize,
    value: &[u8],
) -> anyhow::Result<()> {
    seed_metadata_under(etcd, ROOT, role, count, value).await
}

/// [`seed_metadata`] under another etcd root.
pub async fn seed_metadata_under(
    etcd: &EtcdServer,
    root: &str,
    role: &str,
    count: usize,
    value: &[u8],
) -> anyhow::Result<()> {
    let client = etcd.client().await?;
    let keys: Vec<_> = (0..count)
        .map(|i| format!("{root}/meta/{role}/seed/{i:06}"))
        .collect();
    // etcd refuses a request over 1.5 MiB: large values go a few to a txn.
    let per_txn = (1_000_000 / value.len().max(1)).clamp(1, 128);
    for chunk in keys.chunks(per_txn) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|key| etcd_client::TxnOp::put(key.as_str(), value.to_vec(), None))
            .collect();
        client
            .kv_client()
            .txn(etcd_client::Txn::new().and_then(ops))
            .await?;
    }
    Ok(())
}

/// [`standin::testing::wait_until`], failing the test with `what` after
/// `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match standin::testing::wait_until(what, deadline, probe).await {
        Ok(value) => value,
        Err(error) => panic!("{error}"),
    }
}

/// The text of `GET /metrics` from a `--metrics` exporter on the local
/// `port`, or `None` when it does not answer.
pub async fn scrape_metrics(port: u16) -> Option<String> {
    http_get(port, "/metrics").await.map(|(_, body)| body)
}

/// `GET path` on the local `port`: the status code and the body, or `None`
/// when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((code, body.to_owned()))
}

/// [`eventually`] for a probe that needs no waiting of its own.
pub async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    eventually(what, deadline, || std::future::ready(probe())).await
}

/// The indexes of `nodes` whose `role` serves.
pub fn serving(nodes: &[TestNode], role: &str) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| node.node.is_some() && node.role(role).is_serving())
        .map(|(index, _)| index)
        .collect()
}

/// The one item of `items`, or `None` when there are none or several.
pub fn single<T: Copy>(items: &[T]) -> Option<T> {
    match items {
        [one] => Some(*one),
        _ => None,
    }
}

/// Waits until exactly one of `nodes` serves `role`, and returns its index.
pub async fn wait_for_single_leader(nodes: &[TestNode], role: &str, deadline: Duration) -> usize {
    wait_for(&format!("one {role} leader"), deadline, || {
        single(&serving(nodes, role))
    })
    .await
}

/// Waits until `role`'s election under `root` holds `count` candidates: a
/// resign before a standby has joined hands the role back to the resigning
/// node, which rejoins at once.
pub async fn wait_for_candidates(etcd: &EtcdServer, root: &str, role: &str, count: i64) {
    let client = etcd.client().await.expect("a client of the test's etcd");
    let election = format!("{root}/election/{role}/");
    eventually(
        &format!("{count} candidates for {role}"),
        Duration::from_secs(10),
        || {
            let (client, election) = (client.clone(), election.clone());
            async move {
                let options = etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only();
                let line = client.kv_client().get(election, Some(options)).await.ok()?;
                (line.count() == count).then_some(())
            }
        },
    )
    .await;
}

/// A node of `nodes` other than `previous` that serves `role`, if any.
pub fn serving_other_than(nodes: &[TestNode], role: &str, previous: usize) -> Option<usize> {
    serving(nodes, role)
        .into_iter()
        .find(|&index| index != previous)
}

pub const CALL: Duration = Duration::from_secs(5);
