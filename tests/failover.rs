//! Behaviour of the election against a real etcd: one leader, handovers, crashes, fencing, lost leases, failed reloads.

mod support;

use std::time::{Duration, Instant};

use standin::FenceError;
use standin::StepDownReason;
use standin::testing::EtcdServer;
use standin::{RoleState, ServeError};
use support::*;
use tracing::info;

const ROLE: &str = "rootcoord";

async fn three_nodes(etcd: &EtcdServer, ttl: u64) -> anyhow::Result<Vec<TestNode>> {
    start_nodes(3, &[ROLE], |index| config(etcd, index, ttl)).await
}

async fn epoch_of(node: &TestNode) -> standin::Epoch {
    match node.role(ROLE).call(LedgerRequest::Epoch, CALL).await {
        Ok(LedgerResponse::Epoch(epoch)) => epoch,
        Ok(_) => panic!("unexpected answer"),
        Err(error) => panic!("the leader did not answer: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_three_serves_and_its_epoch_is_the_leader_key_revision() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = three_nodes(&etcd, 10).await?;

    info!("--- wait for a leader");
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;

    info!("--- for a while, exactly one serves and the others are standby");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(500) {
        assert_eq!(serving(&nodes, ROLE), vec![leader]);
        tokio::task::yield_now().await;
    }
    for (index, node) in nodes.iter().enumerate() {
        let status = node.role(ROLE).status();
        if index == leader {
            assert_eq!(status.state, RoleState::Serving);
        } else {
            assert_eq!(status.state, RoleState::Standby);
            match node.role(ROLE).call(LedgerRequest::Read, CALL).await {
                Err(ServeError::NotActive {
                    leader: Some(address),
                    ..
                }) => {
                    assert_eq!(address, nodes[leader].address)
                }
                Err(other) => panic!("a standby answered {other}"),
                Ok(_) => panic!("a standby served a request"),
            }
        }
    }

    info!("--- the epoch is the create revision of the leader key in etcd");
    let epoch = epoch_of(&nodes[leader]).await;
    let client = etcd.client().await?;
    let leader_key = client
        .clone()
        .get(epoch.leader_key.as_str(), None)
        .await?
        .kvs()
        .first()
        .cloned()
        .expect("the leader key exists");
    assert_eq!(leader_key.create_revision(), epoch.revision);
    assert_eq!(nodes[leader].role(ROLE).status().epoch, Some(epoch.clone()));
    let published = standin::SessionInfo::decode(leader_key.key(), leader_key.value())?;
    assert_eq!(published.state, RoleState::Serving);
    assert_eq!(published.address, nodes[leader].address);

    info!("--- every node's session key reports its state");
    let sessions = client
        .clone()
        .get(
            "standin-test/session/rootcoord-",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let mut states: Vec<_> = sessions
        .kvs()
        .iter()
        .map(|kv| standin::SessionInfo::decode(kv.key(), kv.value()).map(|s| s.state))
        .collect::<Result<_, _>>()?;
    states.sort_by_key(|s| s.as_str());
    assert_eq!(
        states,
        vec![RoleState::Serving, RoleState::Standby, RoleState::Standby]
    );

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_the_active_hands_over_within_a_second() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = three_nodes(&etcd, 10).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;

    info!("--- shut the active down");
    let started = Instant::now();
    nodes[leader].shutdown().await;
    let next = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(1)).await;
    let took = started.elapsed();
    info!(?took, "--- a standby serves");
    assert_ne!(next, leader);
    assert!(took < Duration::from_secs(1), "handover took {took:?}");

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_actor_lives_from_a_win_to_its_step_down() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let nodes = three_nodes(&etcd, 10).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let standbys: Vec<usize> = (0..nodes.len()).filter(|&i| i != leader).collect();

    info!("--- only the leader holds a coordinator actor");
    assert!(nodes[leader].role(ROLE).has_coordinator_actor());
    for &standby in &standbys {
        assert!(!nodes[standby].role(ROLE).has_coordinator_actor());
    }

    info!("--- the leader resigns: a standby wins and spawns one, the old leader's stops");
    nodes[leader].role(ROLE).resign(CALL).await?;
    let next = wait_for("another node to serve", Duration::from_secs(5), || {
        serving_other_than(&nodes, ROLE, leader)
    })
    .await;
    assert!(nodes[next].role(ROLE).has_coordinator_actor());
    wait_for(
        "the old leader's coordinator actor to stop",
        Duration::from_secs(5),
        || (!nodes[leader].role(ROLE).has_coordinator_actor()).then_some(()),
    )
    .await;

    info!("--- without one, the old leader answers as a standby, naming the new leader");
    match nodes[leader]
        .role(ROLE)
        .call(LedgerRequest::Read, CALL)
        .await
    {
        Err(ServeError::NotActive {
            leader: Some(address),
            ..
        }) => assert_eq!(address, nodes[next].address),
        Err(other) => panic!("the old leader answered {other}"),
        Ok(_) => panic!("the old leader served after resigning"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_coordinator_is_replaced_in_well_under_the_ttl() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = three_nodes(&etcd, 10).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;

    info!("--- make the active coordinator panic");
    let started = Instant::now();
    let crashed = nodes[leader]
        .role(ROLE)
        .call(LedgerRequest::Panic, CALL)
        .await;
    assert!(matches!(crashed, Err(ServeError::Unavailable { .. })));
    let next = wait_for("another node to serve", Duration::from_secs(5), || {
        serving_other_than(&nodes, ROLE, leader)
    })
    .await;
    let took = started.elapsed();
    info!(?took, next, "--- a standby on another node serves");
    assert!(
        took < Duration::from_secs(5),
        "takeover took {took:?}, TTL/2 is 5s"
    );

    info!("--- the crashed node's coordinator is back, in standby, and knows the new leader");
    let new_address = nodes[next].address.clone();
    let crashed_role = nodes[leader].role(ROLE).clone();
    eventually(
        "the crashed coordinator back in standby",
        Duration::from_secs(10),
        || async {
            redirects_to(&crashed_role, &new_address)
                .await
                .then_some(())
        },
    )
    .await;
    assert_eq!(crashed_role.status().state, RoleState::Standby);
    assert_eq!(serving(&nodes, ROLE), vec![next]);

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_active_cannot_write_and_the_new_one_sees_every_acknowledged_write()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = three_nodes(&etcd, 10).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;

    info!("--- the active writes, and we keep its fenced store");
    for index in 0..20 {
        let key = format!("item/{index:03}");
        let value = format!("value {index}");
        assert!(
            acknowledges_write(nodes[leader].role(ROLE), key, value).await,
            "write {index} was not acknowledged"
        );
    }
    let old_store = nodes[leader].store(ROLE).await;

    info!("--- the active crashes; another takes over");
    let _ = nodes[leader]
        .role(ROLE)
        .call(LedgerRequest::Panic, CALL)
        .await;
    let next = wait_for("another node to serve", Duration::from_secs(5), || {
        serving_other_than(&nodes, ROLE, leader)
    })
    .await;

    info!("--- the deposed active's store refuses writes");
    let refused = old_store.put("item/late", "from the past").await;
    assert!(
        matches!(refused, Err(FenceError::Fenced { .. })),
        "got {refused:?}"
    );
    // Not only the local switch: etcd's transaction refuses a copy of the
    // old epoch too.
    let bypass = standin::testing::store_for_epoch(
        etcd.client().await?,
        old_store.epoch().clone(),
        "standin-test/meta/rootcoord/".into(),
    );
    let refused = bypass.put("item/late", "from the past").await;
    assert!(
        matches!(refused, Err(FenceError::Fenced { .. })),
        "got {refused:?}"
    );

    info!("--- the new active's reload has every acknowledged write and nothing else");
    let entries = nodes[next].entries(ROLE).await;
    assert_eq!(entries.len(), 20);
    assert_eq!(entries["item/007"], b"value 7".to_vec());
    assert!(!entries.contains_key("item/late"));
    assert!(epoch_of(&nodes[next]).await.revision > old_store.epoch().revision);

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_externally_revoked_lease_demotes_the_active_which_campaigns_again() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = three_nodes(&etcd, 10).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let old_lease = nodes[leader]
        .role(ROLE)
        .status()
        .lease
        .expect("the leader holds a lease");

    info!("--- revoke the active's lease from outside");
    etcd.client().await?.lease_revoke(old_lease).await?;

    let next = wait_for("a peer to serve", Duration::from_secs(5), || {
        serving_other_than(&nodes, ROLE, leader)
    })
    .await;
    info!(
        next,
        "--- a peer serves; the old active is standby on a fresh lease, campaigning"
    );
    let demoted = nodes[leader].role(ROLE).clone();
    let status = wait_for(
        "the demoted node to hold a fresh lease",
        Duration::from_secs(5),
        || {
            let status = demoted.status();
            (status.state == RoleState::Standby && status.lease.is_some_and(|l| l != old_lease))
                .then_some(status)
        },
    )
    .await;
    let key = standin::etcd::recipe::candidate_key(
        "standin-test/election/rootcoord",
        status.lease.unwrap(),
    );
    let client = etcd.client().await?;
    eventually(
        "the demoted node's candidate key",
        Duration::from_secs(5),
        || async {
            let found = client.clone().get(key.as_str(), None).await.ok()?;
            (found.count() == 1).then_some(())
        },
    )
    .await;

    shutdown_all(&mut nodes).await;
    Ok(())
}

/// Waits until `node` has won and failed its reload, checking it never served.
async fn wait_for_reload_failure(node: &TestNode) {
    wait_for(
        "the node to win and fail its reload",
        Duration::from_secs(10),
        || {
            let status = node.role(ROLE).status();
            assert_ne!(
                status.state,
                RoleState::Serving,
                "a node whose reload failed served"
            );
            (status.last_step_down == Some(StepDownReason::ReloadFailed)).then_some(())
        },
    )
    .await;
}

/// Waits until `good` serves, checking that `failing` never does meanwhile.
async fn wait_for_takeover(failing: &TestNode, good: &TestNode, deadline: Duration) {
    wait_for("the other node to serve", deadline, || {
        assert!(
            !failing.role(ROLE).is_serving(),
            "a node whose reload failed served"
        );
        good.role(ROLE).is_serving().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_metadata_makes_the_node_resign_and_another_serves() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    seed_metadata(&etcd, ROLE, 3, b"corrupt").await?;

    info!("--- a node that cannot decode the metadata runs alone: it never serves");
    let mut strict = TestNode::start(config(&etcd, 0, 10), &[ROLE], true).await?;
    wait_for_reload_failure(&strict).await;

    info!("--- a node that can decode it joins and takes the role");
    let mut lenient = TestNode::start(config(&etcd, 1, 10), &[ROLE], false).await?;
    wait_for_takeover(&strict, &lenient, Duration::from_secs(10)).await;
    assert_eq!(strict.role(ROLE).status().state, RoleState::Standby);

    lenient.shutdown().await;
    strict.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_timeout_makes_the_node_resign_and_a_peer_reloads_100k_keys() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::start().await?;
    info!("--- seed 100k metadata keys");
    seed_metadata(&etcd, ROLE, 100_000, b"v").await?;

    info!("--- a node whose reload bound is far too short runs first");
    let mut hasty_config = config(&etcd, 0, 10);
    hasty_config.reload.timeout = Duration::from_millis(1);
    let mut hasty = TestNode::start(hasty_config, &[ROLE], false).await?;
    wait_for_reload_failure(&hasty).await;

    info!("--- a patient node takes over and sees all 100k keys");
    let mut patient = TestNode::start(config(&etcd, 1, 10), &[ROLE], false).await?;
    wait_for_takeover(&hasty, &patient, Duration::from_secs(30)).await;
    let entries = patient.entries(ROLE).await;
    assert_eq!(entries.len(), 100_000);

    patient.shutdown().await;
    hasty.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_roles_on_three_nodes_have_independent_leaders() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let roles = ["rootcoord", "datacoord", "querycoord"];
    // Without the spread, which would move the other roles after the crash
    // (tests/spread.rs).
    let mut nodes = start_nodes(3, &roles, |index| unspread(config(&etcd, index, 10))).await?;
    let mut leaders = Vec::new();
    for role in roles {
        leaders.push(wait_for_single_leader(&nodes, role, Duration::from_secs(10)).await);
    }
    let epochs: Vec<_> = roles
        .iter()
        .zip(&leaders)
        .map(|(role, &leader)| {
            nodes[leader]
                .role(role)
                .status()
                .epoch
                .expect("a leader has an epoch")
        })
        .collect();
    let distinct: std::collections::HashSet<_> =
        epochs.iter().map(|e| e.leader_key.clone()).collect();
    assert_eq!(distinct.len(), 3, "each role has its own leader key");

    info!("--- crash the rootcoord leader; the other roles keep their leaders and epochs");
    let _ = nodes[leaders[0]]
        .role("rootcoord")
        .call(LedgerRequest::Panic, CALL)
        .await;
    wait_for("a new rootcoord leader", Duration::from_secs(5), || {
        serving_other_than(&nodes, "rootcoord", leaders[0])
    })
    .await;
    for (r, role) in roles.iter().enumerate().skip(1) {
        assert_eq!(serving(&nodes, role), vec![leaders[r]]);
        assert_eq!(
            nodes[leaders[r]].role(role).status().epoch.as_ref(),
            Some(&epochs[r])
        );
    }

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keepalives_the_active_steps_down_before_the_ttl_and_recovers_in_place()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(3);
    let mut nodes = start_nodes(2, &[ROLE], |index| config(&etcd, index, ttl.as_secs())).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;

    info!("--- freeze etcd: no keepalive can succeed");
    let frozen_at = Instant::now();
    etcd.pause()?;
    wait_for("the active to step down", ttl, || {
        (!nodes[leader].role(ROLE).is_serving()).then_some(())
    })
    .await;
    let stepped_down = frozen_at.elapsed();
    info!(
        ?stepped_down,
        "--- the active stepped down before its lease could expire"
    );
    assert!(
        stepped_down < ttl,
        "stepped down after {stepped_down:?}, TTL is {ttl:?}"
    );
    assert_eq!(serving(&nodes, ROLE), Vec::<usize>::new());

    info!("--- thaw etcd: the nodes, still running, elect a leader again");
    etcd.resume()?;
    wait_for_single_leader(&nodes, ROLE, Duration::from_secs(20)).await;
    assert!(nodes.iter().all(|node| node.node.is_some()));

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_leader_key_with_etcdctl_demotes_the_active() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = three_nodes(&etcd, 10).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let epoch = nodes[leader]
        .role(ROLE)
        .status()
        .epoch
        .expect("the leader has an epoch");

    info!("--- an operator deletes the leader key");
    etcd.etcdctl(&["del", &epoch.leader_key])?;
    wait_for(
        "the old active to step down",
        Duration::from_secs(5),
        || {
            (nodes[leader].last_step_down(ROLE) == Some(StepDownReason::LeaderKeyDeleted))
                .then_some(())
        },
    )
    .await;
    let next = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(5)).await;
    info!(next, "--- a single node serves again, under a newer epoch");
    let new_epoch = nodes[next]
        .role(ROLE)
        .status()
        .epoch
        .expect("the leader has an epoch");
    assert!(new_epoch.revision > epoch.revision);

    shutdown_all(&mut nodes).await;
    Ok(())
}
