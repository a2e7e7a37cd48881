//! Failure modes of a role's actors against a real etcd: a reload crashing mid-way, a coordinator crashing with requests buffered, an activation that hangs; each checked for safety (one server at a time, no write of a deposed epoch) and liveness (a server again within a stated bound).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standin::BoxError;
use standin::StepDownReason;
use standin::testing::EtcdServer;
use standin::{Coordinator, Epoch, FencedStore, Node, RoleState, ServeError, Snapshot};
use support::faults::*;
use support::{
    CALL, config, eventually, seed_metadata, serving, shutdown_all, single, start_nodes, wait_for,
    wait_for_single_leader,
};
use tokio::sync::Semaphore;
use tracing::info;

/// Two nodes of `ROLE` (TTL 3 s, each config changed by `tweak`), once one
/// leads and the other campaigns: the nodes, a monitor on them, the
/// leader's index, the standby's and the standby's lease.
async fn leader_and_standby(
    etcd: &EtcdServer,
    mut tweak: impl FnMut(&mut standin::Config),
) -> anyhow::Result<(Vec<support::TestNode>, Monitor, usize, usize, i64)> {
    let nodes = start_nodes(2, &[ROLE], |index| {
        let mut config = config(etcd, index, 3);
        tweak(&mut config);
        config
    })
    .await?;
    let monitor = Monitor::nodes(&nodes, ROLE);
    let first = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let next = 1 - first;
    let next_lease = wait_for("the standby's candidacy", Duration::from_secs(5), || {
        nodes[next].role(ROLE).status().lease
    })
    .await;
    Ok((nodes, monitor, first, next, next_lease))
}

// ---------------------------------------------------------------------------
// 1. The reload actor crashes in the middle of a reload.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_crashing_mid_way_resigns_and_a_node_serves_within_5s() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    seed_metadata(&etcd, ROLE, 200, b"v").await?;
    let client = etcd.client().await?;
    let (mut nodes, monitor, first, next, next_lease) =
        leader_and_standby(&etcd, |config| config.reload.page_size = 10).await?;
    let first_epoch = epoch_of(&nodes[first]);

    info!("--- the standby is next in line: arm a reload crash on it");
    let next_key = standin::etcd::recipe::candidate_key(&election(ROLE), next_lease);
    let next_revision = eventually("two candidates", Duration::from_secs(5), || async {
        let candidates = candidates(&client, ROLE).await;
        (candidates.len() == 2 && candidates[1].0 == next_key).then(|| candidates[1].1)
    })
    .await;
    nodes[next].role(ROLE).crash_reload();

    info!("--- the active hands over: the standby wins, its reload panics after 10 of 200 keys");
    let handed_over_at = Instant::now();
    nodes[first]
        .role(ROLE)
        .resign(Duration::from_secs(5))
        .await?;
    wait_for(
        "the winner to resign with ReloadFailed",
        Duration::from_secs(5),
        || (nodes[next].last_step_down(ROLE) == Some(StepDownReason::ReloadFailed)).then_some(()),
    )
    .await;
    assert!(
        !logged(&["reload failed", "mid-reload"]).is_empty(),
        "the reload crash was not reported"
    );

    info!("--- a node serves again within 5 s, with all 200 keys");
    let serving_node = wait_for("a node to serve again", Duration::from_secs(5), || {
        single(&serving(&nodes, ROLE))
    })
    .await;
    let took = handed_over_at.elapsed();
    info!(?took, serving_node, "--- serving again");
    assert!(took < Duration::from_secs(5), "serving again took {took:?}");
    let entries = nodes[serving_node].entries(ROLE).await;
    assert_eq!(entries.len(), 200);

    info!("--- the failed term never served, and etcd refuses its writes");
    let new_epoch = epoch_of(&nodes[serving_node]);
    assert!(new_epoch.revision > next_revision);
    assert!(
        !monitor
            .history()
            .iter()
            .any(|seen| seen.epoch == Some(next_revision) && seen.state == RoleState::Serving),
        "the term whose reload crashed served"
    );
    let failed_epoch = Epoch {
        role: ROLE.into(),
        leader_key: next_key,
        revision: next_revision,
    };
    assert_fenced(client.clone(), &failed_epoch).await;
    assert_fenced(client.clone(), &first_epoch).await;
    monitor.assert_safe();

    shutdown_all(&mut nodes).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. The coordinator crashes while requests wait for its activation.

/// A coordinator whose activation waits on a gate, and that logs every
/// request it handles.
struct Gated {
    gate: Arc<Semaphore>,
    handled: Arc<Mutex<Vec<u64>>>,
}

impl Coordinator for Gated {
    type Meta = ();
    type Serving = ();
    type Request = u64;
    type Response = u64;

    fn decode(&self, _: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(&self, _: Epoch, _: (), _: FencedStore) -> Result<(), BoxError> {
        let _permit = self.gate.acquire().await?;
        Ok(())
    }

    async fn handle(&self, _: &mut (), tag: u64) -> u64 {
        self.handled.lock().unwrap().push(tag);
        tag
    }
}

struct GatedNode {
    node: Node,
    handle: standin::RoleHandle<Gated>,
    handled: Arc<Mutex<Vec<u64>>>,
}

async fn gated_node(
    etcd: &EtcdServer,
    index: usize,
    gate: Arc<Semaphore>,
) -> anyhow::Result<GatedNode> {
    let mut config = config(etcd, index, 3);
    config.coordinator.queue_depth = 16;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let mut node = Node::new(config);
    let handle = node.add_role(
        ROLE,
        Gated {
            gate,
            handled: handled.clone(),
        },
    )?;
    node.start().await?;
    Ok(GatedNode {
        node,
        handle,
        handled,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_crash_while_requests_are_buffered_answers_each_once_and_a_peer_serves()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;

    info!("--- node 0 wins; its activation waits on a closed gate");
    let stuck = gated_node(&etcd, 0, Arc::new(Semaphore::new(0))).await?;
    wait_for("node 0 to be activating", Duration::from_secs(10), || {
        (stuck.handle.status().state == RoleState::Activating).then_some(())
    })
    .await;
    let stuck_epoch = stuck
        .handle
        .status()
        .epoch
        .expect("an activating node leads");
    let peer = gated_node(&etcd, 1, Arc::new(Semaphore::new(1))).await?;
    eventually(
        "node 1 to be a candidate",
        Duration::from_secs(5),
        || async { (candidates(&client, ROLE).await.len() == 2).then_some(()) },
    )
    .await;
    let monitor = Monitor::roles(vec![stuck.handle.subscribe(), peer.handle.subscribe()]);

    info!("--- eight requests wait in node 0's activation buffer");
    let queued: Vec<_> = (1..=8)
        .map(|tag| tokio::spawn(stuck.handle.call(tag, Duration::from_secs(10))))
        .collect();
    assert_eq!(stuck.handle.status().state, RoleState::Activating);

    info!("--- node 0's coordinator crashes while activating");
    let crashed_at = Instant::now();
    assert!(stuck.handle.crash_coordinator());
    for (tag, answer) in (1..=8).zip(queued) {
        let answer = tokio::time::timeout(Duration::from_secs(2), answer)
            .await
            .unwrap_or_else(|_| panic!("request {tag} was lost: no answer 2 s after the crash"))?;
        assert!(
            matches!(
                answer,
                Err(ServeError::Unavailable { .. } | ServeError::ActivationAborted { .. })
            ),
            "request {tag} got {answer:?}"
        );
    }

    info!("--- node 0 resigned at once: node 1 serves");
    wait_for("node 1 to serve", Duration::from_secs(5), || {
        peer.handle.is_serving().then_some(())
    })
    .await;
    let took = crashed_at.elapsed();
    info!(?took, "--- node 1 serves");
    assert!(took < Duration::from_secs(3), "takeover took {took:?}");
    assert_eq!(
        stuck.handle.status().last_step_down,
        Some(StepDownReason::CoordinatorCrashed)
    );
    for tag in 100..105 {
        assert_eq!(peer.handle.call(tag, CALL).await, Ok(tag));
    }

    info!("--- node 0's coordinator is back in standby; no buffered request was ever handled");
    eventually("node 0 back in standby", Duration::from_secs(5), || async {
        let answer = stuck.handle.call(999, CALL).await;
        matches!(
            answer,
            Err(ServeError::NotActive {
                leader: Some(_),
                ..
            })
        )
        .then_some(())
    })
    .await;
    assert!(
        stuck.handled.lock().unwrap().is_empty(),
        "node 0 handled {:?}",
        stuck.handled.lock().unwrap()
    );
    assert_eq!(
        *peer.handled.lock().unwrap(),
        (100..105).collect::<Vec<_>>()
    );
    assert_fenced(client, &stuck_epoch).await;
    monitor.assert_safe();

    peer.node.shutdown().await;
    stuck.node.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. An activation hangs (the `hang-activation` fault switch).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_activation_is_given_up_after_its_timeout_and_a_node_serves_again()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (mut nodes, monitor, first, next, _) = leader_and_standby(&etcd, |config| {
        config.coordinator.activate_timeout = Duration::from_secs(1)
    })
    .await?;

    info!("--- the standby's next activation hangs; the active hands over to it");
    nodes[next].role(ROLE).hang_activation();
    let handed_over_at = Instant::now();
    nodes[first]
        .role(ROLE)
        .resign(Duration::from_secs(5))
        .await?;
    wait_for(
        "the hung winner to give its term up",
        Duration::from_secs(5),
        || {
            (nodes[next].last_step_down(ROLE) == Some(StepDownReason::ActivationTimedOut))
                .then_some(())
        },
    )
    .await;
    let serving_node = wait_for("a node to serve again", Duration::from_secs(5), || {
        single(&serving(&nodes, ROLE))
    })
    .await;
    let took = handed_over_at.elapsed();
    info!(?took, serving_node, "--- serving again");
    // One activation timeout, then an ordinary takeover.
    assert!(took < Duration::from_secs(4), "serving again took {took:?}");
    monitor.assert_safe();

    shutdown_all(&mut nodes).await;
    Ok(())
}
