//! Failure modes of the link to etcd: the active cut off, a slow link, and two regressions the fault campaign found (a resign cut off, a broken own-key watch); each checked for safety and liveness.

mod support;

use std::time::{Duration, Instant};

use standin::ResignError;
use standin::StepDownReason;
use standin::testing::EtcdServer;
use standin::{FenceError, RoleState};
use support::faults::*;
use support::{
    acknowledges_write, config, eventually, redirects_to, serving, shutdown_all, start_nodes,
    wait_for, wait_for_single_leader,
};
use tracing::info;

// ---------------------------------------------------------------------------
// 4. The active is cut from etcd.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_from_etcd_stops_serving_before_its_lease_expires_and_rejoins_on_heal()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    let ttl = 3;
    let renew_deadline = Duration::from_secs(2);
    let (proxies, mut nodes) = start_proxied_nodes(&etcd, 2, &[ROLE], |endpoints, index| {
        let config = node_config(endpoints, index, ttl);
        assert_eq!(config.session.renew_deadline(), renew_deadline);
        config
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let peer = 1 - leader;
    let monitor = Monitor::nodes(&nodes, ROLE);
    let old_epoch = epoch_of(&nodes[leader]);
    let old_lease = nodes[leader].role(ROLE).status().lease.expect("a lease");
    let old_store = nodes[leader].store(ROLE).await;

    // When etcd drops the lease, it deletes the leader key on it.
    let mut lease_gone = client
        .watch_client()
        .watch(old_epoch.leader_key.as_str(), None)
        .await?;
    let lease_gone_at = tokio::spawn(async move {
        while let Ok(Some(response)) = lease_gone.message().await {
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == etcd_client::EventType::Delete)
            {
                return Some(Instant::now());
            }
        }
        None
    });

    info!("--- cut the active from etcd");
    let cut_at = Instant::now();
    proxies[leader].cut();
    wait_for(
        "the active to stop serving",
        renew_deadline + Duration::from_secs(1),
        || (!nodes[leader].role(ROLE).is_serving()).then_some(()),
    )
    .await;
    let stopped_at = Instant::now();
    let stopped = stopped_at - cut_at;
    let remaining = client
        .clone()
        .lease_time_to_live(old_lease, None)
        .await?
        .ttl();
    info!(?stopped, remaining, "--- the active stopped serving");
    assert!(
        stopped <= renew_deadline + Duration::from_millis(400),
        "stopped serving {stopped:?} after the cut; the renew deadline is {renew_deadline:?}"
    );
    // -1 once etcd has dropped the lease; whole seconds otherwise, so 0 here.
    assert!(
        remaining >= 0,
        "the active stopped serving only once etcd had dropped its lease"
    );
    // It stops serving the instant its lease stops being trusted; the step
    // down is recorded once the election's next tick has seen it.
    let reason = wait_for(
        "the step-down to be recorded",
        Duration::from_secs(1),
        || nodes[leader].last_step_down(ROLE),
    )
    .await;
    assert_eq!(reason, StepDownReason::RenewDeadlineMissed);

    info!("--- the peer takes over once the lease expires");
    wait_for("the peer to serve", Duration::from_secs(ttl + 2), || {
        nodes[peer].role(ROLE).is_serving().then_some(())
    })
    .await;
    info!(took = ?cut_at.elapsed(), "--- the peer serves");
    let gone_at = lease_gone_at.await?.expect("the leader key was deleted");
    info!(margin = ?(gone_at - stopped_at), "--- the lease outlived the active's term");
    assert!(gone_at > stopped_at);
    let new_epoch = epoch_of(&nodes[peer]);
    assert!(new_epoch.revision > old_epoch.revision);
    let refused = old_store.put("late", "from the cut-off active").await;
    assert!(
        matches!(refused, Err(FenceError::Fenced { .. })),
        "{refused:?}"
    );
    assert_fenced(client.clone(), &old_epoch).await;
    assert!(acknowledges_write(nodes[peer].role(ROLE), "after-cut", "v").await);

    info!("--- heal: the old active rejoins as a standby on a fresh lease");
    proxies[leader].heal();
    let rejoined = nodes[leader].role(ROLE).clone();
    let fresh = wait_for("a fresh lease", Duration::from_secs(10), || {
        let status = rejoined.status();
        (status.state == RoleState::Standby)
            .then_some(status.lease)
            .flatten()
            .filter(|&lease| lease != old_lease)
    })
    .await;
    let key = standin::etcd::recipe::candidate_key(&election(ROLE), fresh);
    eventually("its candidate key", Duration::from_secs(5), || async {
        candidates(&client, ROLE)
            .await
            .iter()
            .any(|(candidate, _)| *candidate == key)
            .then_some(())
    })
    .await;
    let peer_address = nodes[peer].address.clone();
    eventually(
        "it to name the peer as leader",
        Duration::from_secs(5),
        || async { redirects_to(&rejoined, &peer_address).await.then_some(()) },
    )
    .await;
    assert_eq!(serving(&nodes, ROLE), vec![peer]);
    monitor.assert_safe();

    shutdown_all(&mut nodes).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. A slow link: latency well below the renew deadline.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_well_below_the_renew_deadline_causes_no_step_down_or_flapping()
-> anyhow::Result<()> {
    a_slow_link_causes_no_step_down_or_flapping(Duration::from_millis(150)).await
}

/// 600 ms round trips at TTL 3 s (renew deadline 2 s): a keepalive that
/// waited for the previous answer before its interval (1 s) began renewed
/// only every 1 s + 2 round trips = 2.2 s, past the deadline, and the leader
/// flapped; keepalives on a fixed beat renew every round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_slower_than_a_third_of_the_renew_deadline_causes_no_step_down_or_flapping()
-> anyhow::Result<()> {
    a_slow_link_causes_no_step_down_or_flapping(Duration::from_millis(300)).await
}

/// Every link to etcd gets `delay` of latency each way for 3 x TTL (3 s):
/// no node steps down, the leader keeps serving its epoch and writing.
async fn a_slow_link_causes_no_step_down_or_flapping(delay: Duration) -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(3);
    let (proxies, mut nodes) = start_proxied_nodes(&etcd, 2, &[ROLE], |endpoints, index| {
        node_config(endpoints, index, ttl.as_secs())
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let epoch = epoch_of(&nodes[leader]);
    wait_for("the standby's candidacy", Duration::from_secs(5), || {
        nodes[1 - leader].role(ROLE).status().lease
    })
    .await;
    let monitor = Monitor::nodes(&nodes, ROLE);

    info!(?delay, "--- every link to etcd gets latency each way");
    for proxy in &proxies {
        proxy.delay(delay);
    }
    let slowed_at = Instant::now();
    let mut writes = 0;
    while slowed_at.elapsed() < 3 * ttl {
        let key = format!("slow/{writes:04}");
        let started = Instant::now();
        assert!(
            acknowledges_write(nodes[leader].role(ROLE), key, "v").await,
            "write {writes} on the slow link failed"
        );
        assert!(started.elapsed() >= 2 * delay, "the link is not slow");
        writes += 1;
        for (index, node) in nodes.iter().enumerate() {
            let status = node.role(ROLE).status();
            assert_eq!(status.last_step_down, None, "node {index} stepped down");
            if index == leader {
                assert_eq!(status.state, RoleState::Serving);
                assert_eq!(status.epoch.as_ref(), Some(&epoch));
            } else {
                assert_eq!(status.state, RoleState::Standby);
            }
        }
    }
    info!(writes, "--- 3 x TTL on the slow link without a step-down");
    let changes: Vec<_> = monitor
        .history()
        .into_iter()
        .filter(|seen| seen.at > slowed_at)
        .collect();
    assert!(changes.is_empty(), "the roles flapped: {changes:?}");
    monitor.assert_safe();

    for proxy in &proxies {
        proxy.heal();
    }
    shutdown_all(&mut nodes).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Regression tests for bugs the fault campaign found (both fixed): each
// failed before its fix.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resign_cut_off_from_etcd_never_serves_again_under_the_old_epoch() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    let (proxies, mut nodes) = start_proxied_nodes(&etcd, 2, &[ROLE], |endpoints, index| {
        node_config(endpoints, index, 3)
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let peer = 1 - leader;
    let epoch = epoch_of(&nodes[leader]);
    eventually("two candidates", Duration::from_secs(5), || async {
        (candidates(&client, ROLE).await.len() == 2).then_some(())
    })
    .await;
    let monitor = Monitor::nodes(&nodes, ROLE);

    info!("--- the active resigns while its link to etcd is down for an instant");
    proxies[leader].cut();
    let resigned = nodes[leader]
        .role(ROLE)
        .resign(Duration::from_secs(5))
        .await;
    proxies[leader].heal();
    info!(?resigned, "--- resign answered");
    let bound = match resigned {
        // The key is gone: a peer takes over at once.
        Ok(()) => Duration::from_secs(1),
        // The key may lead until the given-up lease expires (TTL 3 s).
        Err(ResignError::ResignUnconfirmed { ttl, .. }) => ttl + Duration::from_secs(1),
        Err(other) => panic!("the resign failed: {other}"),
    };
    let peer_serves = eventually("the peer to serve", bound, || async {
        let status = nodes[leader].role(ROLE).status();
        assert!(
            !(status.state == RoleState::Serving && status.epoch.as_ref() == Some(&epoch)),
            "the resigned node serves again under its old epoch {}",
            epoch.revision
        );
        nodes[peer].role(ROLE).is_serving().then_some(())
    });
    peer_serves.await;
    monitor.assert_safe();
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_link_broke_campaigns_again_as_soon_as_etcd_answers_not_a_backoff_later()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    // Retries 1 s, 2 s, 4 s apart: through the cut below the standby's
    // campaign fails at once, 1 s and 3 s in, then would sleep until 7 s.
    let ttl = 9;
    let (proxies, mut nodes) = start_proxied_nodes(&etcd, 2, &[ROLE], |endpoints, index| {
        let mut config = node_config(endpoints, index, ttl);
        config.etcd.retry.initial = Duration::from_secs(1);
        config.etcd.retry.max = Duration::from_secs(5);
        config
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let standby = 1 - leader;
    eventually("two candidates", Duration::from_secs(5), || async {
        (candidates(&client, ROLE).await.len() == 2).then_some(())
    })
    .await;
    let lease = nodes[standby].role(ROLE).status().lease;
    let monitor = Monitor::nodes(&nodes, ROLE);

    info!("--- the standby's link is cut for 3.5 s, well within its renew deadline (6 s)");
    let cut_at = Instant::now();
    proxies[standby].cut();
    // The fault's length, not a wait for a condition.
    tokio::time::sleep_until((cut_at + Duration::from_millis(3500)).into()).await;
    proxies[standby].heal();

    info!("--- the link is back; the leader hands over at once");
    let resigned_at = Instant::now();
    nodes[leader]
        .role(ROLE)
        .resign(Duration::from_secs(5))
        .await?;
    // The keepalive opens again within a quarter of its 750 ms interval;
    // the campaign's backoff alone would keep the standby asleep 3.5 s more.
    wait_for("the standby to serve", Duration::from_millis(1500), || {
        nodes[standby].role(ROLE).is_serving().then_some(())
    })
    .await;
    info!(took = ?resigned_at.elapsed(), "--- the standby serves");
    assert_eq!(
        nodes[standby].role(ROLE).status().lease,
        lease,
        "the standby kept its lease through the cut"
    );
    monitor.assert_safe();
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_watch_broke_still_notices_the_deletion_of_its_key() -> anyhow::Result<()> {
    init_logging();
    let mut etcd = EtcdServer::start().await?;
    let mut nodes = start_nodes(2, &[ROLE], |index| config(&etcd, index, 5)).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let epoch = epoch_of(&nodes[leader]);
    let monitor = Monitor::nodes(&nodes, ROLE);

    info!("--- etcd restarts quickly: every watch breaks, the lease survives");
    etcd.kill()?;
    etcd.restart().await?;
    assert!(
        nodes[leader].role(ROLE).is_serving(),
        "the blip was too long"
    );
    assert_eq!(nodes[leader].role(ROLE).status().last_step_down, None);

    monitor.assert_safe();
    drop(monitor);

    info!("--- an operator deletes the leader key: the active must step down");
    // An operator's deletion forces an overlap for as long as the active
    // has not seen it (the campaign excuses and measures it the same way),
    // and right after etcd's restart each node's watch resumes on its own
    // retry: the successor may serve first. The active must notice within
    // its watch's retry, not at a renewal or the TTL.
    let successor = 1 - leader;
    let deleted = Instant::now();
    etcd.etcdctl(&["del", &epoch.leader_key])?;
    let mut overlap_from = None;
    wait_for(
        "the old active to step down",
        Duration::from_secs(5),
        || {
            let both =
                nodes[leader].role(ROLE).is_serving() && nodes[successor].role(ROLE).is_serving();
            if both && overlap_from.is_none() {
                overlap_from = Some(Instant::now());
            }
            (nodes[leader].last_step_down(ROLE) == Some(StepDownReason::LeaderKeyDeleted))
                .then_some(())
        },
    )
    .await;
    let noticed = deleted.elapsed();
    let overlap = overlap_from.map(|from| from.elapsed());
    info!(?noticed, ?overlap, "--- the old active stepped down");
    let retry = config(&etcd, 0, 5).etcd.retry.initial;
    assert!(
        overlap.is_none_or(|overlap| overlap < 3 * retry),
        "the old active served beside its successor for {overlap:?}, longer than its watch's retry"
    );
    shutdown_all(&mut nodes).await;
    Ok(())
}
