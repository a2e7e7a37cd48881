//! Bad data in etcd: garbage in the election and in sessions, a metadata key the tso role cannot decode; reported, never a panic, never two servers.

mod support;

use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use standin::StepDownReason;
use standin::testing::EtcdServer;
use standin::{Node, RoleHandle, RoleState, ServeError};
use std::sync::Arc;
use support::faults::*;
use support::{
    CALL, LedgerRequest, acknowledges_write, config, eventually, serving, shutdown_all,
    start_nodes, wait_for, wait_for_single_leader,
};
use tokio::sync::Semaphore;
use tracing::info;

// ---------------------------------------------------------------------------
// 8a. Garbage in the election and in another node's session.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_election_and_sessions_is_reported_and_never_makes_two_servers()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    let foreign = format!("{}/0badc0de", election(ROLE));
    client
        .clone()
        .put(foreign.as_str(), "<<not a session>>", None)
        .await?;

    info!("--- two nodes campaign behind a foreign candidate whose value is not JSON");
    let mut nodes = start_nodes(2, &[ROLE], |index| config(&etcd, index, 3)).await?;
    let monitor = Monitor::nodes(&nodes, ROLE);
    eventually(
        "both nodes behind the foreign key",
        Duration::from_secs(5),
        || async {
            let candidates = candidates(&client, ROLE).await;
            (candidates.len() == 3 && candidates[0].0 == foreign).then_some(())
        },
    )
    .await;
    wait_for("the observers to report it", Duration::from_secs(5), || {
        (!logged(&["0badc0de", "not valid session JSON"]).is_empty()).then_some(())
    })
    .await;

    info!("--- the foreign key leads: nobody serves, every node still answers");
    let watched = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    while watched.elapsed() < Duration::from_secs(1) {
        every.tick().await;
        for node in &nodes {
            let status = node.role(ROLE).status();
            assert_ne!(
                status.state,
                RoleState::Serving,
                "served behind a foreign leader"
            );
            assert!(status.leader.is_none(), "{:?}", status.leader);
            assert!(status.lease.is_some(), "the election stopped");
            assert!(matches!(
                node.role(ROLE).call(LedgerRequest::Read, CALL).await,
                Err(ServeError::NotActive { leader: None, .. })
            ));
        }
    }
    let layout = standin::etcd::session::Layout::new(ROOT);
    let summary = standin::etcd::inspect::roles(&client, &layout).await?;
    let role = summary.iter().find(|r| r.role == ROLE).expect("the role");
    assert!(
        role.corrupt
            .iter()
            .any(|c| c.contains("0badc0de") && c.contains("leads the election")),
        "{role:?}"
    );
    // The foreign key leads, so status names no leader rather than the
    // oldest of our standbys.
    assert_eq!(role.leader, None, "{role:?}");
    assert_eq!(role.standbys.len(), 2, "{role:?}");

    info!("--- garbage in node 1's session key, on its own lease");
    let victim = nodes[1]
        .node
        .as_ref()
        .and_then(Node::server_id)
        .expect("started");
    let session_key = layout.session(ROLE, victim);
    client
        .clone()
        .put(
            session_key.as_str(),
            "{\"server_id\": \"garbage",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await?;
    let summary = standin::etcd::inspect::roles(&client, &layout).await?;
    assert!(
        summary
            .iter()
            .flat_map(|r| &r.corrupt)
            .any(|c| c.contains(&session_key)),
        "{summary:?}"
    );

    info!("--- the foreign key goes: the oldest candidate serves");
    let removed_at = Instant::now();
    client.clone().delete(foreign.as_str(), None).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(5)).await;
    info!(took = ?removed_at.elapsed(), leader, "--- serving");

    info!(
        "--- garbage in the serving node's candidate value: it keeps serving, peers see no leader"
    );
    let epoch = epoch_of(&nodes[leader]);
    let other = 1 - leader;
    wait_for("the peer to see the leader", Duration::from_secs(5), || {
        let seen = nodes[other].role(ROLE).status().leader?;
        (seen.key == epoch.leader_key).then_some(())
    })
    .await;
    // The leader publishes its state in its candidate value: wait until that
    // is done, so it does not overwrite the garbage.
    eventually(
        "the leader value to say serving",
        Duration::from_secs(5),
        || async {
            let found = client
                .clone()
                .get(epoch.leader_key.as_str(), None)
                .await
                .ok()?;
            let kv = found.kvs().first()?;
            let session = standin::SessionInfo::decode(kv.key(), kv.value()).ok()?;
            (session.state == RoleState::Serving).then_some(())
        },
    )
    .await;
    client
        .clone()
        .put(
            epoch.leader_key.as_str(),
            "garbage",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await?;
    wait_for(
        "the peer to lose sight of the leader",
        Duration::from_secs(5),
        || {
            nodes[other]
                .role(ROLE)
                .status()
                .leader
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(acknowledges_write(nodes[leader].role(ROLE), "still", "works").await);
    assert_eq!(serving(&nodes, ROLE), vec![leader]);

    info!("--- a crash of the active hands over as usual");
    let _ = nodes[leader]
        .role(ROLE)
        .call(LedgerRequest::Panic, CALL)
        .await;
    wait_for("the other node to serve", Duration::from_secs(5), || {
        nodes[other].role(ROLE).is_serving().then_some(())
    })
    .await;
    assert_fenced(client.clone(), &epoch).await;
    eventually(
        "node 1's session key repaired",
        Duration::from_secs(5),
        || async {
            let found = client.clone().get(session_key.as_str(), None).await.ok()?;
            let kv = found.kvs().first()?;
            standin::SessionInfo::decode(kv.key(), kv.value()).ok()
        },
    )
    .await;
    monitor.assert_safe();

    shutdown_all(&mut nodes).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// 8b. A metadata key the tso role cannot decode.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_tso_bound_makes_nodes_resign_until_it_is_fixed() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    let bound_key = format!("{ROOT}/meta/tso/upper_bound");
    client
        .clone()
        .put(bound_key.as_str(), "garbage", None)
        .await?;

    info!("--- two tso nodes: each wins, fails to decode, resigns");
    let mut nodes = start_tso_nodes(2, |index| {
        let mut config = node_config(vec![etcd.endpoint()], index, 2);
        config.etcd.retry.max = Duration::from_secs(1);
        config
    })
    .await?;
    let monitor = Monitor::tso_nodes(&nodes);
    wait_for(
        "both nodes to fail a reload",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| n.tso.status().last_step_down == Some(StepDownReason::ReloadFailed))
                .then_some(())
        },
    )
    .await;
    assert!(
        monitor
            .history()
            .iter()
            .all(|seen| seen.state != RoleState::Serving),
        "a node served with an undecodable bound"
    );
    let reported = logged(&["reload failed", "upper_bound", "garbage"]);
    assert!(!reported.is_empty(), "the decode failure was not reported");
    assert!(
        reported.iter().all(|line| !line.contains("panic")),
        "{reported:?}"
    );
    for node in &nodes {
        let answer = node.allocate(1, CALL).await;
        assert!(
            matches!(
                answer,
                Err(ServeError::NotActive { .. } | ServeError::ActivationAborted { .. })
            ),
            "{answer:?}"
        );
    }

    info!("--- fix the key, an hour ahead: a node serves, above the fixed bound");
    let fixed_bound = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + 3_600_000;
    let fixed_at = Instant::now();
    client
        .clone()
        .put(bound_key.as_str(), fixed_bound.to_string(), None)
        .await?;
    let leader = wait_for_tso_leader(&nodes, "a node to serve", Duration::from_secs(3)).await;
    info!(took = ?fixed_at.elapsed(), leader, "--- serving");
    let batch = nodes[leader].allocate(1, CALL).await??;
    let (physical, _) = standin::service::tso::split(batch.first);
    assert!(
        physical > fixed_bound,
        "{physical} is not above {fixed_bound}"
    );
    monitor.assert_safe();

    shutdown_all(&mut nodes).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// etcd compacts the revision a reload is reading.

/// A node of `ROLE` over 50 seeded keys read in pages of 10, its first
/// read held after its first page: the test lets it go through the gate
/// once `reached`.
async fn start_with_held_reload(
    etcd: &EtcdServer,
) -> anyhow::Result<(
    Node,
    RoleHandle<support::Ledger>,
    Arc<Semaphore>,
    Arc<Semaphore>,
)> {
    support::seed_metadata(etcd, ROLE, 50, b"v").await?;
    let mut config = config(etcd, 0, 10);
    config.reload.page_size = 10;
    let reached = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let mut node = Node::new(config);
    let role = node.add_role(ROLE, support::Ledger { strict: false })?;
    role.hold_reload(reached.clone(), gate.clone());
    node.start().await?;
    Ok((node, role, reached, gate))
}

/// Puts `key` under the role's metadata and compacts etcd at that put.
async fn put_and_compact(etcd: &EtcdServer, key: &str) -> anyhow::Result<()> {
    let mut kv = etcd.client().await?.kv_client();
    let put = kv
        .put(format!("{ROOT}/meta/{ROLE}/{key}"), "w", None)
        .await?;
    let revision = put.header().expect("a header").revision();
    kv.compact(revision, None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_revision_is_compacted_reads_again_at_a_fresh_one() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (node, role, reached, gate) = start_with_held_reload(&etcd).await?;

    info!("--- the reload has read its first page: compact etcd past its revision");
    reached.acquire().await?.forget();
    put_and_compact(&etcd, "written-mid-reload").await?;
    gate.add_permits(1);

    wait_for("the node to serve", Duration::from_secs(10), || {
        role.is_serving().then_some(())
    })
    .await;
    assert_eq!(
        role.status().last_step_down,
        None,
        "the compaction made the node give up its win"
    );
    let Ok(support::LedgerResponse::Entries(entries)) = role.call(LedgerRequest::Read, CALL).await
    else {
        panic!("the serving node did not answer a read");
    };
    assert_eq!(
        entries.len(),
        51,
        "the snapshot is not at one fresh revision"
    );
    assert!(entries.contains_key("written-mid-reload"));
    assert!(!logged(&["compacted", "reading again at a fresh revision"]).is_empty());
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_compacted_five_times_in_a_row_gives_up_and_says_why() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (node, role, reached, gate) = start_with_held_reload(&etcd).await?;

    info!("--- every read of the warm copy is compacted past after its first page, five times");
    for read in 1..=5 {
        reached.acquire().await?.forget();
        put_and_compact(&etcd, &format!("written-in-read-{read}")).await?;
        if read < 5 {
            role.hold_reload(reached.clone(), gate.clone());
        }
        gate.add_permits(1);
    }

    info!("--- the fifth gives up, named as such; the next read, unhindered, loads the copy");
    wait_for("the read to give up", Duration::from_secs(20), || {
        (!logged(&["etcd compacted the revision of 5 reads in a row"]).is_empty()).then_some(())
    })
    .await;
    wait_for("the node to serve", Duration::from_secs(20), || {
        role.is_serving().then_some(())
    })
    .await;
    assert_eq!(role.metadata_copy_missing(), None);
    node.shutdown().await;
    Ok(())
}
