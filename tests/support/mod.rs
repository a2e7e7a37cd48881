//! Shared pieces of the behaviour tests: a test coordinator, node set-up and polling waits.
// (A directory module, so cargo does not build it as a test of its own.)
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use standin::coordinator::BoxError;
use standin::testing::EtcdServer;
use standin::{Config, Coordinator, Epoch, FenceError, FencedStore, Node, RoleHandle, Snapshot};

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

/// Logs to the test's output once per test binary, filtered by `RUST_LOG`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,standin=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A node config against `etcd` with a session TTL of `ttl` seconds.
pub fn config(etcd: &EtcdServer, node: usize, ttl: u64) -> Config {
    let mut config = Config::default();
    config.etcd.endpoints = vec![etcd.endpoint()];
    config.etcd.root_path = "standin-test".into();
    config.node.address = format!("127.0.0.1:{}", 20000 + node);
    config.session.ttl = Duration::from_secs(ttl);
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
        let address = config.node.address.clone();
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

    pub async fn shutdown(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// Polls `probe` every 10 ms until it returns `Some`, failing the test with
/// `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        poll.tick().await;
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
    }
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

/// Waits until exactly one of `nodes` serves `role`, and returns its index.
pub async fn wait_for_single_leader(nodes: &[TestNode], role: &str, deadline: Duration) -> usize {
    wait_for(&format!("one {role} leader"), deadline, || {
        match serving(nodes, role).as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    })
    .await
}

pub const CALL: Duration = Duration::from_secs(5);
