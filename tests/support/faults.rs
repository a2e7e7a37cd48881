//! What the fault tests share: safety monitors over every node's status, timestamp-order and fencing checks, in-process tso nodes, `standin run` processes, and log capture.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, SortOrder, SortTarget};
use standin::config::TsoConfig;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::tso_client::TsoClient;
use standin::service::grpc::proto::{AllocateRequest, AllocateResponse, StatusRequest};
use standin::service::tso::{Tso, TsoBatch, TsoError, TsoRequest};
use standin::testing::{EtcdServer, FaultProxy, StandinProcess, free_loopback_port};
use standin::{Config, Epoch, FenceError, Node, RoleHandle, RoleState, RoleStatus, ServeError};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::{Channel, Endpoint};

use super::{CALL, Stoppable, TestNode, eventually, single, wait_for};

/// The etcd root of the in-process nodes.
pub use super::ROOT;
/// The etcd root of the `standin run` processes.
pub const PROCESS_ROOT: &str = "standin-faults";

/// Test logging that keeps warnings and errors: the fault tests assert that
/// a failure was reported, not only that nothing broke.
#[allow(unused_imports)] // each test binary uses a part, as with dead_code above
pub use standin::testing::{init_logging, logged};

// ---------------------------------------------------------------------------
// Safety monitors.

/// A role's state on one node as a monitor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When it was seen.
    pub at: Instant,
    /// The node's index.
    pub node: usize,
    /// Its state.
    pub state: RoleState,
    /// Its epoch while it leads.
    pub epoch: Option<i64>,
    /// Why it last stepped down, if it ever did.
    pub step_down: Option<String>,
}

/// One node's answer in a snapshot: state, epoch, last step-down.
type Answer = (RoleState, Option<i64>, Option<String>);

#[derive(Default)]
struct Record {
    /// Every change (in-process monitor) or every answer (process monitor).
    history: Vec<Seen>,
    violations: Vec<String>,
    last: Vec<Option<Answer>>,
    /// The highest epoch seen serving so far.
    highest_served: Option<(i64, usize)>,
    every_answer: bool,
    /// Snapshots taken so far.
    rounds: u64,
    /// The epochs whose term ended: seen serving, then not.
    ended: std::collections::BTreeSet<i64>,
}

impl Record {
    fn new(nodes: usize, every_answer: bool) -> Self {
        Self {
            last: vec![None; nodes],
            every_answer,
            ..Self::default()
        }
    }

    /// Checks one snapshot of every node taken at `at` (`None`: the node did
    /// not answer): at most one serves, with an epoch, never an older one
    /// than an epoch that already served, nor one whose term already ended.
    fn observe(&mut self, at: Instant, snapshot: Vec<Option<Answer>>) {
        self.rounds += 1;
        let serving: Vec<(usize, Option<i64>)> = snapshot
            .iter()
            .enumerate()
            .filter_map(|(node, answer)| match answer {
                Some((RoleState::Serving, epoch, _)) => Some((node, *epoch)),
                _ => None,
            })
            .collect();
        if serving.len() > 1 {
            self.violations
                .push(format!("two coordinators serve at once: {serving:?}"));
        }
        for &(node, epoch) in &serving {
            let Some(epoch) = epoch.filter(|e| *e > 0) else {
                self.violations
                    .push(format!("node {node} serves without an epoch"));
                continue;
            };
            match self.highest_served {
                Some((highest, by)) if epoch < highest => self.violations.push(format!(
                    "node {node} serves at epoch {epoch} after node {by} served at epoch {highest}"
                )),
                Some((highest, _)) if epoch == highest => {}
                _ => self.highest_served = Some((epoch, node)),
            }
            if self.ended.contains(&epoch) {
                self.violations.push(format!(
                    "node {node} serves at epoch {epoch} again, after that term ended"
                ));
            }
        }
        for (node, answer) in snapshot.iter().enumerate() {
            if let (Some((RoleState::Serving, Some(epoch), _)), Some(now)) =
                (&self.last[node], answer)
                && !(now.0 == RoleState::Serving && now.1 == Some(*epoch))
            {
                self.ended.insert(*epoch);
            }
        }
        for (node, answer) in snapshot.into_iter().enumerate() {
            let Some(answer) = answer else { continue };
            if self.every_answer || self.last[node].as_ref() != Some(&answer) {
                self.history.push(Seen {
                    at,
                    node,
                    state: answer.0,
                    epoch: answer.1,
                    step_down: answer.2.clone(),
                });
                self.last[node] = Some(answer);
            }
        }
    }
}

/// Watches a role on every node for the whole test: fails the safety
/// checks of [`Record::observe`] on any snapshot, and keeps the history.
pub struct Monitor {
    record: Arc<Mutex<Record>>,
    /// Nodes left out of the snapshots for now (process monitor only).
    paused: Arc<Mutex<Vec<bool>>>,
    task: JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer_of(status: &RoleStatus) -> Answer {
    (
        status.state,
        status.epoch.as_ref().map(|e| e.revision),
        status.last_step_down.map(|r| r.as_str().to_owned()),
    )
}

impl Monitor {
    /// Watches in-process roles: a snapshot of all of them on every status
    /// change of any, and every 2 ms.
    pub fn roles(statuses: Vec<watch::Receiver<RoleStatus>>) -> Self {
        let record = Arc::new(Mutex::new(Record::new(statuses.len(), false)));
        // The first snapshot before returning, so changes from here on are
        // told apart from the starting state.
        let snapshot = statuses
            .iter()
            .map(|status| Some(answer_of(&status.borrow())))
            .collect();
        record.lock().unwrap().observe(Instant::now(), snapshot);
        let shared = record.clone();
        let task = tokio::spawn(async move {
            let wake = Arc::new(Notify::new());
            let mut forwarders = JoinSet::new();
            for mut status in statuses.iter().cloned() {
                let wake = wake.clone();
                forwarders.spawn(async move {
                    while status.changed().await.is_ok() {
                        wake.notify_one();
                    }
                });
            }
            loop {
                let snapshot = statuses
                    .iter()
                    .map(|status| Some(answer_of(&status.borrow())))
                    .collect();
                shared.lock().unwrap().observe(Instant::now(), snapshot);
                tokio::select! {
                    _ = wake.notified() => {}
                    // Sample at least every 2 ms even without a change.
                    _ = tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(2)) => {}
                }
            }
        });
        let paused = Arc::new(Mutex::new(Vec::new()));
        Self {
            record,
            paused,
            task,
        }
    }

    /// Watches `role` on every one of `nodes`.
    pub fn nodes(nodes: &[TestNode], role: &str) -> Self {
        Self::roles(nodes.iter().map(|n| n.role(role).subscribe()).collect())
    }

    /// Watches the tso role on every one of `nodes`.
    pub fn tso_nodes(nodes: &[TsoNode]) -> Self {
        Self::roles(nodes.iter().map(|n| n.tso.subscribe()).collect())
    }

    /// Polls the `role` status of `standin run` processes over gRPC every
    /// 20 ms, all at once; a process that does not answer within 150 ms
    /// (frozen, killed) is left out of that snapshot. Every answer is kept.
    pub fn processes(urls: Vec<String>, role: &'static str) -> Self {
        let record = Arc::new(Mutex::new(Record::new(urls.len(), true)));
        let shared = record.clone();
        let paused = Arc::new(Mutex::new(vec![false; urls.len()]));
        let skipped = paused.clone();
        let clients: Vec<_> = urls
            .iter()
            .map(|url| CoordinationClient::new(lazy_channel(url)))
            .collect();
        let task = tokio::spawn(async move {
            loop {
                let skip = skipped.lock().unwrap().clone();
                let asked = clients.iter().zip(skip).map(|(client, skip)| {
                    let mut client = client.clone();
                    async move {
                        if skip {
                            return None;
                        }
                        let answer = tokio::time::timeout(
                            Duration::from_millis(150),
                            client.status(StatusRequest {}),
                        )
                        .await
                        .ok()?
                        .ok()?;
                        let status = answer.into_inner();
                        let role = status.roles.into_iter().find(|r| r.role == role)?;
                        Some(process_answer(
                            &role.state,
                            role.epoch,
                            &role.last_step_down,
                        ))
                    }
                });
                let snapshot = futures::future::join_all(asked).await;
                shared.lock().unwrap().observe(Instant::now(), snapshot);
                // The sampling period between rounds of status requests.
                tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(20))
                    .await;
            }
        });
        Self {
            record,
            paused,
            task,
        }
    }

    /// Stops asking process `node` until [`unpause`](Self::unpause): no
    /// request to it is in flight once the current round ends.
    pub async fn pause(&self, node: usize) {
        let rounds = self.record.lock().unwrap().rounds;
        self.paused.lock().unwrap()[node] = true;
        // A round already under way may still ask it: wait for the next one to end.
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        while self.record.lock().unwrap().rounds < rounds + 2 {
            poll.tick().await;
        }
    }

    /// Asks process `node` again.
    pub fn unpause(&self, node: usize) {
        self.paused.lock().unwrap()[node] = false;
    }

    /// Fails the test if any snapshot so far broke a safety rule.
    pub fn assert_safe(&self) {
        let record = self.record.lock().unwrap();
        assert!(
            record.violations.is_empty(),
            "safety violated:\n{}",
            record.violations.join("\n")
        );
    }

    /// What was seen so far, in order.
    pub fn history(&self) -> Vec<Seen> {
        self.record.lock().unwrap().history.clone()
    }
}

fn parse_state(state: &str) -> RoleState {
    match state {
        "serving" => RoleState::Serving,
        "activating" => RoleState::Activating,
        "stopping" => RoleState::Stopping,
        _ => RoleState::Standby,
    }
}

fn process_answer(state: &str, epoch: i64, step_down: &str) -> Answer {
    (
        parse_state(state),
        (epoch > 0).then_some(epoch),
        (!step_down.is_empty()).then(|| step_down.to_owned()),
    )
}

fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_timeout(Duration::from_millis(150))
        .connect_lazy()
}

// ---------------------------------------------------------------------------
// Timestamps and fencing.

/// Timestamps in the order they were handed out: each batch must start above
/// the last timestamp of the batch before.
#[derive(Debug, Default)]
pub struct Timestamps {
    last: Option<(u64, i64)>,
    /// How many batches were recorded.
    pub batches: usize,
}

impl Timestamps {
    /// Records `count` timestamps from `first`, handed out by `epoch`.
    pub fn record(&mut self, first: u64, count: u32, epoch: i64) {
        if let Some((last, last_epoch)) = self.last {
            assert!(
                first > last,
                "timestamp {first} (epoch {epoch}) is not above {last} (epoch {last_epoch}): \
                 duplicate or decreasing"
            );
        }
        self.last = Some((first + u64::from(count) - 1, epoch));
        self.batches += 1;
    }

    /// Records a batch from an in-process oracle.
    pub fn record_batch(&mut self, batch: &TsoBatch) {
        self.record(batch.first, batch.count, batch.epoch);
    }

    /// Allocates `batches` batches of 100 timestamps on `node`, one after
    /// the other, and records each.
    pub async fn record_allocations(
        &mut self,
        node: &TsoNode,
        batches: usize,
    ) -> anyhow::Result<()> {
        for _ in 0..batches {
            let batch = node.allocate(100, CALL).await??;
            self.record_batch(&batch);
        }
        Ok(())
    }
}

/// Asserts that etcd refuses a metadata write of `epoch` (a term that is
/// over), with a store of our own: not only the node's local switch.
pub async fn assert_fenced(client: etcd_client::Client, epoch: &Epoch) {
    let prefix = format!("{ROOT}/meta/{}/", epoch.role);
    let store = standin::testing::store_for_epoch(client, epoch.clone(), prefix);
    let refused = store.put("fault-probe", "from a deposed epoch").await;
    assert!(
        matches!(refused, Err(FenceError::Fenced { .. })),
        "a write of the deposed epoch {} was not refused: {refused:?}",
        epoch.revision
    );
}

// ---------------------------------------------------------------------------
// In-process nodes.

/// A node config for `endpoints` (etcd, a proxy, or a cluster) with a session
/// TTL of `ttl` seconds; addresses are only published, never bound.
pub fn node_config(endpoints: Vec<String>, node: usize, ttl: u64) -> Config {
    let mut config = Config::default();
    config.etcd.endpoints = endpoints;
    config.etcd.root_path = ROOT.into();
    config.node.address = Some(format!("127.0.0.1:{}", 21000 + node));
    config.session.ttl = Duration::from_secs(ttl);
    config
}

/// A started node running the built-in timestamp oracle as role `tso`.
pub struct TsoNode {
    node: Option<Node>,
    /// The role's handle.
    pub tso: RoleHandle<Tso>,
}

impl TsoNode {
    /// Starts a node with the `tso` role and the default oracle settings.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let mut node = Node::new(config);
        let tso = node.add_role("tso", Tso::new(TsoConfig::default()))?;
        node.start().await?;
        Ok(Self {
            node: Some(node),
            tso,
        })
    }

    /// Whether the role serves here.
    pub fn is_serving(&self) -> bool {
        self.tso.is_serving()
    }

    /// Allocates `count` timestamps here, waiting at most `timeout`.
    pub async fn allocate(
        &self,
        count: u32,
        timeout: Duration,
    ) -> Result<Result<TsoBatch, TsoError>, ServeError> {
        self.tso.call(TsoRequest::Allocate { count }, timeout).await
    }
}

impl Stoppable for TsoNode {
    fn running(&mut self) -> &mut Option<Node> {
        &mut self.node
    }
}

/// Starts `count` tso nodes, node `index` with `config(index)`.
pub async fn start_tso_nodes(
    count: usize,
    mut config: impl FnMut(usize) -> Config,
) -> anyhow::Result<Vec<TsoNode>> {
    let mut nodes = Vec::new();
    for index in 0..count {
        nodes.push(TsoNode::start(config(index)).await?);
    }
    Ok(nodes)
}

/// The indexes of `nodes` where the tso role serves.
pub fn tso_serving(nodes: &[TsoNode]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&index| nodes[index].is_serving())
        .collect()
}

/// Waits until exactly one of `nodes` serves the tso role, and returns its
/// index.
pub async fn wait_for_tso_leader(nodes: &[TsoNode], what: &str, deadline: Duration) -> usize {
    wait_for(what, deadline, || single(&tso_serving(nodes))).await
}

/// Starts `count` nodes running `roles`, each behind a fault proxy of its
/// own to `etcd`: node `index` gets `config(endpoints, index)`, with the
/// endpoints of its proxy. The proxies come back in the nodes' order.
pub async fn start_proxied_nodes(
    etcd: &EtcdServer,
    count: usize,
    roles: &[&str],
    mut config: impl FnMut(Vec<String>, usize) -> Config,
) -> anyhow::Result<(Vec<FaultProxy>, Vec<TestNode>)> {
    let mut proxies = Vec::new();
    let mut nodes = Vec::new();
    for index in 0..count {
        let proxy = FaultProxy::start(&etcd.endpoint()).await?;
        let config = config(vec![proxy.endpoint()], index);
        nodes.push(TestNode::start(config, roles, false).await?);
        proxies.push(proxy);
    }
    Ok((proxies, nodes))
}

// ---------------------------------------------------------------------------
// `standin run` processes.

/// `standin run --role tso` in a child process, with its gRPC address.
pub struct ProcNode {
    /// The process.
    pub process: StandinProcess,
    /// Where its gRPC server listens.
    pub address: String,
}

/// A process's tso role as its `Coordination.Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// standby, activating, serving or stopping.
    pub state: String,
    /// Its epoch while it leads, else 0.
    pub epoch: i64,
    /// Why it last stepped down, or empty.
    pub last_step_down: String,
    /// Its warm copy of the tso metadata as (revision, keys), once loaded.
    pub metadata_copy: Option<(i64, u64)>,
}

/// Keys for the `node` and `session` sections of a [`ProcNode`]'s config,
/// each a YAML line indented by two spaces.
#[derive(Debug, Default, Clone)]
pub struct NodeYaml {
    /// Lines under `node:`.
    pub node: String,
    /// Lines under `session:`.
    pub session: String,
    /// Arguments of `standin run` after `--role tso`.
    pub args: Vec<String>,
}

impl ProcNode {
    /// Starts a node on `endpoints` with a session TTL of `ttl_secs` seconds
    /// and `extra` YAML appended to its config.
    pub fn spawn(endpoints: &[String], ttl_secs: u64, extra: &str) -> anyhow::Result<Self> {
        Self::spawn_with(endpoints, ttl_secs, &NodeYaml::default(), extra)
    }

    /// [`spawn`](Self::spawn), with `sections`' keys added to its `node`
    /// and `session` sections.
    pub fn spawn_with(
        endpoints: &[String],
        ttl_secs: u64,
        sections: &NodeYaml,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let address = format!("127.0.0.1:{}", free_loopback_port()?);
        let NodeYaml {
            node,
            session,
            args,
        } = sections;
        let yaml = format!(
            "etcd:\n  endpoints: [{}]\n  rootPath: {PROCESS_ROOT}\n  requestTimeout: 1s\n\
             node:\n  address: {address}\n{node}session:\n  ttl: {ttl_secs}s\n{session}{extra}",
            endpoints.join(", ")
        );
        let binary = Path::new(env!("CARGO_BIN_EXE_standin"));
        let mut run_args = vec!["--role", "tso"];
        run_args.extend(args.iter().map(String::as_str));
        let process = StandinProcess::spawn(binary, &yaml, &run_args)?;
        Ok(Self { process, address })
    }

    /// Whether one line of its log contains every one of `needles`.
    pub fn logged(&self, needles: &[&str]) -> bool {
        self.process
            .log()
            .lines()
            .any(|line| needles.iter().all(|needle| line.contains(needle)))
    }

    /// `http://ADDRESS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A fresh connection to it, or `None` when it does not answer.
    pub async fn connect(&self) -> Option<Channel> {
        Endpoint::from_shared(self.url())
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
            .ok()
    }

    /// Its tso status, if it answers within half a second.
    pub async fn status(&self) -> Option<ProcStatus> {
        tokio::time::timeout(Duration::from_millis(500), async {
            let mut client = CoordinationClient::new(self.connect().await?);
            let status = client.status(StatusRequest {}).await.ok()?.into_inner();
            let role = status.roles.into_iter().find(|r| r.role == "tso")?;
            Some(ProcStatus {
                state: role.state,
                epoch: role.epoch,
                last_step_down: role.last_step_down,
                metadata_copy: role.metadata_copy.map(|copy| (copy.revision, copy.keys)),
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Allocates `count` timestamps here, claiming `epoch` when given.
    pub async fn allocate(
        &self,
        count: u32,
        epoch: Option<i64>,
    ) -> Result<AllocateResponse, tonic::Status> {
        let channel = self
            .connect()
            .await
            .ok_or_else(|| tonic::Status::unavailable("not reachable"))?;
        allocate_on(channel, count, epoch).await
    }
}

/// Spawns `count` processes as [`ProcNode::spawn`] does.
pub fn spawn_processes(
    count: usize,
    endpoints: &[String],
    ttl_secs: u64,
    extra: &str,
) -> anyhow::Result<Vec<ProcNode>> {
    (0..count)
        .map(|_| ProcNode::spawn(endpoints, ttl_secs, extra))
        .collect()
}

/// Allocates over `channel`, claiming `epoch` when given, within 5 s.
pub async fn allocate_on(
    channel: Channel,
    count: u32,
    epoch: Option<i64>,
) -> Result<AllocateResponse, tonic::Status> {
    let request = AllocateRequest { count };
    let request = match epoch {
        Some(epoch) => standin::service::client::with_epoch(request, epoch),
        None => tonic::Request::new(request),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        TsoClient::new(channel).allocate(request),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("no answer within 5s"))?;
    answer.map(tonic::Response::into_inner)
}

/// The processes that report the tso role serving, with their epochs,
/// asked all at once.
pub async fn serving_processes(nodes: &[ProcNode]) -> Vec<(usize, i64)> {
    let statuses = futures::future::join_all(nodes.iter().map(ProcNode::status)).await;
    statuses
        .into_iter()
        .enumerate()
        .filter_map(|(index, status)| {
            status
                .filter(|s| s.state == "serving")
                .map(|s| (index, s.epoch))
        })
        .collect()
}

/// Waits until exactly one of `nodes` reports the tso role serving, and
/// returns it with its epoch.
pub async fn wait_for_serving_process(nodes: &[ProcNode], deadline: Duration) -> (usize, i64) {
    eventually("one process serving", deadline, || async {
        single(&serving_processes(nodes).await)
    })
    .await
}

// ---------------------------------------------------------------------------
// The election as etcd holds it.

/// The role the in-process fault tests run.
pub const ROLE: &str = "rootcoord";

/// The election prefix of `role` for the in-process nodes.
pub fn election(role: &str) -> String {
    format!("{ROOT}/election/{role}")
}

/// The candidate keys of `role`'s election, oldest first.
pub async fn candidates(client: &etcd_client::Client, role: &str) -> Vec<(String, i64)> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let Ok(response) = client
        .clone()
        .get(format!("{}/", election(role)), Some(options))
        .await
    else {
        return Vec::new();
    };
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.create_revision(),
            )
        })
        .collect()
}

/// The epoch `node` serves at.
pub fn epoch_of(node: &TestNode) -> Epoch {
    node.role(ROLE)
        .status()
        .epoch
        .expect("a serving node has an epoch")
}
