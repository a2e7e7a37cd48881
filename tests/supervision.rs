//! Supervision and the activation buffer against a real etcd: election actor crashes, requests held while activating.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use standin::BoxError;
use standin::testing::EtcdServer;
use standin::{Coordinator, Epoch, FencedStore, Node, RoleState, ServeError, Snapshot};
use support::*;
use tokio::sync::Semaphore;
use tracing::info;

const ROLE: &str = "rootcoord";

/// A role served beside [`ROLE`] on the same node, on the same lease.
const OTHER: &str = "datacoord";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_election_actor_deletes_its_key_keeps_the_shared_lease_and_restarts()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    info!("--- node 0 leads both roles, on its one lease; node 1 stands by for both");
    let mut nodes =
        vec![TestNode::start(unspread(config(&etcd, 0, 10)), &[ROLE, OTHER], false).await?];
    for role in [ROLE, OTHER] {
        wait_for_single_leader(&nodes, role, Duration::from_secs(10)).await;
    }
    nodes.push(TestNode::start(unspread(config(&etcd, 1, 10)), &[ROLE, OTHER], false).await?);
    let handle = nodes[0].role(ROLE).clone();
    let other = nodes[0].role(OTHER).clone();
    let lease = handle.status().lease.expect("the leader holds a lease");
    assert_eq!(
        other.status().lease,
        Some(lease),
        "one lease per node, shared by its roles"
    );
    let other_epoch = other.status().epoch.expect("node 0 serves the other role");
    let key = standin::etcd::recipe::candidate_key(&format!("{ROOT}/election/{ROLE}"), lease);
    let client = etcd.client().await?;
    wait_for(
        "node 1 in line for both roles",
        Duration::from_secs(10),
        || {
            [ROLE, OTHER]
                .iter()
                .all(|role| nodes[1].role(role).status().lease.is_some())
                .then_some(())
        },
    )
    .await;

    info!("--- the active's election actor panics");
    let crashed_at = Instant::now();
    assert!(handle.crash_election());
    wait_for(
        "the crashed node to stop serving",
        Duration::from_secs(1),
        || (!handle.is_serving()).then_some(()),
    )
    .await;
    let answer = handle.call(LedgerRequest::Read, CALL).await;
    assert!(
        matches!(
            answer,
            Err(ServeError::Unavailable { .. } | ServeError::NotActive { .. })
        ),
        "a coordinator served without its election actor"
    );

    info!("--- its key is deleted, so the peer takes over at once");
    wait_for("the peer to serve", Duration::from_secs(2), || {
        nodes[1].role(ROLE).is_serving().then_some(())
    })
    .await;
    let took = crashed_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "takeover after an election crash took {took:?}"
    );

    info!("--- the node's lease lives on, and the other role serves through it all");
    let remaining = client.clone().lease_time_to_live(lease, None).await?.ttl();
    assert!(
        remaining > 0,
        "the shared lease was revoked for one role's crash"
    );
    assert!(other.is_serving(), "the other role stopped serving");
    assert_eq!(
        other.status().epoch.as_ref(),
        Some(&other_epoch),
        "the other role's term changed"
    );
    assert_eq!(serving(&nodes, OTHER), vec![0]);

    info!("--- the election actor restarts: standby on the same lease, with a new key");
    let address = nodes[1].address.clone();
    eventually(
        "the restarted node in standby",
        Duration::from_secs(10),
        || {
            let handle = handle.clone();
            let address = address.clone();
            async move {
                let status = handle.status();
                let rejoined = status.state == RoleState::Standby && status.lease == Some(lease);
                let standby = redirects_to(&handle, &address).await;
                (rejoined && standby).then_some(())
            }
        },
    )
    .await;
    let rejoined = eventually("its new key", Duration::from_secs(5), || {
        let mut client = client.clone();
        let key = key.clone();
        async move {
            let found = client.get(key.as_str(), None).await.ok()?;
            found.kvs().first().map(|kv| kv.create_revision())
        }
    })
    .await;
    assert!(
        rejoined > other_epoch.revision,
        "the restarted election reused its old key (create revision {rejoined})"
    );
    assert_eq!(serving(&nodes, ROLE), vec![1]);
    assert_eq!(serving(&nodes, OTHER), vec![0]);

    shutdown_all(&mut nodes).await;
    Ok(())
}

/// A coordinator whose activation waits for a permit (or fails when told),
/// and that numbers the requests it handles.
struct Gated {
    gate: Arc<Semaphore>,
    fail: bool,
}

impl Coordinator for Gated {
    type Meta = ();
    type Serving = u64;
    type Request = u64;
    type Response = (u64, u64);

    fn decode(&self, _: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(&self, _: Epoch, _: (), _: FencedStore) -> Result<u64, BoxError> {
        let _permit = self.gate.acquire().await?;
        if self.fail {
            return Err("activation refused".into());
        }
        Ok(0)
    }

    /// Answers (the request's tag, its position in handling order).
    async fn handle(&self, handled: &mut u64, tag: u64) -> (u64, u64) {
        *handled += 1;
        (tag, *handled)
    }
}

async fn gated_node(
    etcd: &EtcdServer,
    fail: bool,
) -> anyhow::Result<(Node, standin::RoleHandle<Gated>, Arc<Semaphore>)> {
    let mut config = config(etcd, 0, 10);
    config.coordinator.queue_depth = 3;
    let gate = Arc::new(Semaphore::new(0));
    let mut node = Node::new(config);
    let handle = node.add_role(
        ROLE,
        Gated {
            gate: gate.clone(),
            fail,
        },
    )?;
    node.start().await?;
    let status = handle.clone();
    wait_for("the node to be activating", Duration::from_secs(10), || {
        (status.status().state == RoleState::Activating).then_some(())
    })
    .await;
    Ok((node, handle, gate))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_while_activating_are_held_in_order_up_to_the_buffer_size() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (node, handle, gate) = gated_node(&etcd, false).await?;

    info!("--- five requests arrive while activating; the buffer holds three");
    let calls: Vec<_> = (1..=5).map(|tag| handle.call(tag, CALL)).collect();
    let mut answers = Vec::new();
    let mut pending = Vec::new();
    for (tag, call) in (1..=5).zip(calls) {
        pending.push((tag, tokio::spawn(call)));
    }
    // The overflow is refused at once, before activation completes.
    for (tag, task) in pending.drain(3..) {
        let refused = task.await?;
        assert!(
            matches!(refused, Err(ServeError::Overloaded { capacity: 3, .. })),
            "request {tag}: {refused:?}"
        );
    }
    assert_eq!(handle.status().state, RoleState::Activating);

    info!("--- activation completes: the held requests are served in arrival order");
    gate.add_permits(1);
    for (_, task) in pending {
        answers.push(task.await?.expect("a held request is served"));
    }
    assert_eq!(answers, vec![(1, 1), (2, 2), (3, 3)]);
    wait_for(
        "the role to be published as serving",
        Duration::from_secs(5),
        || handle.is_serving().then_some(()),
    )
    .await;
    assert_eq!(handle.call(9, CALL).await, Ok((9, 4)));

    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_for_a_failed_activation_get_an_error() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (node, handle, gate) = gated_node(&etcd, true).await?;

    let held = tokio::spawn(handle.call(1, CALL));
    gate.add_permits(1);
    let answer = held.await?;
    assert!(
        matches!(answer, Err(ServeError::ActivationAborted { .. })),
        "got {answer:?}"
    );
    assert_ne!(handle.status().state, RoleState::Serving);

    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_etcd_is_reachable_retries_and_comes_up() -> anyhow::Result<()> {
    init_logging();
    let port = standin::testing::free_loopback_port()?;
    let mut config = standin::Config::default();
    config.etcd.endpoints = vec![format!("127.0.0.1:{port}")];
    config.etcd.retry.initial = Duration::from_millis(50);
    config.etcd.retry.max = Duration::from_millis(200);
    config.etcd.connect_timeout = Duration::from_millis(200);
    // Wait for etcd however long it takes to come up.
    config.etcd.connect_attempts = 0;

    info!("--- start a node while nothing listens on its etcd port");
    let mut node = Node::new(config);
    let handle = node.add_role(ROLE, Ledger { strict: false })?;
    let mut starting = tokio::spawn(async move { node.start().await.map(|()| node) });
    let gave_up = tokio::time::timeout(Duration::from_millis(500), &mut starting).await;
    assert!(
        gave_up.is_err(),
        "the node gave up while etcd was unreachable"
    );

    info!("--- etcd comes up on that port: the node registers and serves");
    let _etcd = EtcdServer::start_on(port).await?;
    let node = starting.await??;
    wait_for("the node to serve", Duration::from_secs(10), || {
        handle.is_serving().then_some(())
    })
    .await;
    node.shutdown().await;
    Ok(())
}
