//! deploy/compose/compose.yaml brought up with podman-compose from images built FROM scratch: a container killed with SIGKILL is taken over through the death witness across containers while a client's timestamps keep increasing, a container stopped gracefully hands over, and teardown leaves nothing behind.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standin::Config;
use standin::service::client::TsoClient;
use standin::service::grpc::proto::StatusRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::testing::{ComposeCluster, NodeProcess};
use support::*;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
/// The compose project, so that a cluster an operator runs is never touched.
const PROJECT: &str = "standin-test";
/// compose.yaml's session TTL (the default): what a kill -9 would cost without the witness.
const TTL: Duration = Duration::from_secs(10);

/// Which node serves `role` at which epoch, and its server ID, by the nodes' own status.
async fn serving(role: &str) -> Option<(usize, i64, i64)> {
    for (index, address) in ComposeCluster::NODES.iter().enumerate() {
        let Ok(mut client) = CoordinationClient::connect(format!("http://{address}")).await else {
            continue;
        };
        let Ok(status) = client.status(StatusRequest {}).await else {
            continue;
        };
        let status = status.into_inner();
        if let Some(role) = status
            .roles
            .into_iter()
            .find(|r| r.role == role && r.state == "serving")
        {
            return Some((index, role.epoch, status.server_id));
        }
    }
    None
}

/// Waits until a node other than `old` serves tso at a newer epoch.
async fn successor(old: usize, old_epoch: i64) -> (usize, i64) {
    eventually("a successor serving tso", TTL * 2, || async {
        let (index, epoch, _) = serving("tso").await?;
        (index != old && epoch > old_epoch).then_some((index, epoch))
    })
    .await
}

/// A client allocating in a loop, keeping every timestamp and the longest
/// wait between two answers.
struct Allocations {
    seen: Arc<Mutex<(Vec<u64>, Duration)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Allocations {
    async fn start() -> anyhow::Result<Self> {
        let config =
            Config::from_yaml_str(&format!("etcd:\n  endpoints: [{}]\n", ComposeCluster::ETCD))?;
        let client = TsoClient::connect(&config).await?;
        let seen = Arc::new(Mutex::new((Vec::new(), Duration::ZERO)));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                if let Ok(batch) = client.allocate(1, Duration::from_secs(30)).await {
                    let mut seen = record.lock().unwrap();
                    seen.0.push(batch.first);
                    seen.1 = seen.1.max(last.elapsed());
                    last = Instant::now();
                }
            }
        });
        Ok(Self { seen, task })
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().0.len()
    }

    /// Waits until the client has had `more` answers past what it had.
    async fn answered(&self, more: usize) {
        let target = self.count() + more;
        wait_for("the client to be answered", Duration::from_secs(30), || {
            (self.count() >= target).then_some(())
        })
        .await
    }

    /// Stops and checks that every timestamp is above the one before;
    /// returns the longest wait.
    fn finish(self) -> Duration {
        self.task.abort();
        let (timestamps, longest) = self.seen.lock().unwrap().clone();
        for pair in timestamps.windows(2) {
            assert!(pair[1] > pair[0], "timestamp {} after {}", pair[1], pair[0]);
        }
        longest
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_rides_through_kill_9_and_a_graceful_stop() -> anyhow::Result<()> {
    init_logging();
    let cluster = ComposeCluster::up(env!("CARGO_MANIFEST_DIR").as_ref(), BIN.as_ref(), PROJECT)?;
    let (leader, epoch, server_id) =
        eventually("a node serving tso", Duration::from_secs(60), || {
            serving("tso")
        })
        .await;
    info!(leader, epoch, server_id, "--- the cluster serves");
    let watching = format!("watching leader server {server_id} ");
    for node in (0..3).filter(|&node| node != leader) {
        // Healthy by the image's own HEALTHCHECK (standin probe) as a standby ...
        eventually("a healthy standby", Duration::from_secs(30), || async {
            cluster.healthy(node).then_some(())
        })
        .await;
        // ... and watching the leader's witness, so that the kill is seen.
        wait_for(
            "the standby to watch the leader",
            Duration::from_secs(30),
            || cluster.node(node).log().contains(&watching).then_some(()),
        )
        .await;
    }
    let allocations = Allocations::start().await?;
    allocations.answered(100).await;

    info!("--- kill -9 the active container");
    let killed_at = Instant::now();
    cluster.node(leader).kill()?;
    let (next, next_epoch) = successor(leader, epoch).await;
    let took = killed_at.elapsed();
    info!(?took, next, "--- a peer serves");
    assert!(
        took < TTL / 5,
        "a peer served {took:?} after the kill; the TTL is {TTL:?}, and the witness across \
         containers should have revoked the lease at once"
    );
    assert!(
        (0..3).any(|node| cluster.node(node).log().contains("is gone")),
        "no node's witness revoked the dead leader"
    );
    allocations.answered(100).await;

    info!("--- stop the new active gracefully (SIGTERM)");
    let stopped_at = Instant::now();
    let mut stopped = cluster.node(next);
    stopped.stop(30)?;
    let (last, _) = successor(next, next_epoch).await;
    info!(took = ?stopped_at.elapsed(), last, "--- handed over");
    assert_eq!(stopped.try_exit_status().and_then(|s| s.code()), Some(0));
    let logs = stopped.log();
    assert!(logs.contains("handing the roles over"), "{logs}");
    allocations.answered(100).await;
    let longest = allocations.finish();
    info!(?longest, "--- timestamps kept increasing");
    assert!(
        longest < TTL / 5,
        "the client waited {longest:?} for an answer"
    );

    info!("--- down -v leaves nothing behind");
    let left = cluster.down()?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
