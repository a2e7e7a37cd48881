//! Failure modes of the active process against a real etcd: frozen past its TTL (SIGSTOP) then resumed, killed with SIGKILL; each checked for safety and liveness.

mod support;

use std::time::{Duration, Instant};

use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::{StatusRequest, WatchLeaderRequest};
use standin::testing::EtcdServer;
use standin::{Epoch, FenceError, RoleState};
use support::faults::*;
use support::{eventually, wait_for};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::info;

// ---------------------------------------------------------------------------
// 3. The active process is frozen (SIGSTOP) for 2 x TTL, then resumed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_process_is_replaced_and_demotes_on_resume_without_serving()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(2);
    // A window shorter than the freeze: the resumed oracle must save a new
    // bound, through its fenced store, before it could hand anything out.
    // With a window longer than the freeze, a request that waited in its
    // socket can be answered from memory in the instant after SIGCONT,
    // before the renew-deadline tick demotes it (a known bug: the deadline
    // is checked on a timer, never on the request path), with timestamps
    // below those the new leader already handed out.
    let window = "tso:\n  window: 1s\n";
    let mut nodes = spawn_processes(2, &[etcd.endpoint()], 2, window)?;
    let (frozen, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    let peer = 1 - frozen;
    let monitor = Monitor::processes(nodes.iter().map(ProcNode::url).collect(), "tso");
    let mut stamps = Timestamps::default();
    for _ in 0..5 {
        let batch = nodes[frozen].allocate(10, Some(old_epoch)).await?;
        stamps.record(batch.first, batch.count, batch.epoch);
    }
    // Connected now, so that requests can wait in its socket while it is frozen.
    let channel = nodes[frozen].connect().await.expect("the active answers");

    info!("--- freeze the active process");
    // For the same reason a status request in flight at SIGCONT can be
    // answered `serving` at the old epoch: the monitor stops asking the
    // frozen process until it has logged its step-down.
    monitor.pause(frozen).await;
    let frozen_at = Instant::now();
    nodes[frozen].process.stop()?;
    let (_, new_epoch) = eventually("the peer to take over", 2 * ttl, || async {
        let (index, epoch) = *serving_processes(&nodes).await.first()?;
        (index == peer && epoch > old_epoch).then_some((index, epoch))
    })
    .await;
    info!(took = ?frozen_at.elapsed(), "--- the peer serves");
    let batch = nodes[peer].allocate(10, Some(new_epoch)).await?;
    stamps.record(batch.first, batch.count, batch.epoch);

    info!("--- allocations with its old epoch reach the frozen process and wait in its socket");
    let queued: Vec<_> = (0..3)
        .map(|_| tokio::spawn(allocate_on(channel.clone(), 1, Some(old_epoch))))
        .collect();

    info!("--- resume it after 2 x TTL frozen: it allocates nothing");
    tokio::time::sleep_until((frozen_at + 2 * ttl).into()).await;
    nodes[frozen].process.cont()?;
    for queued in queued {
        let refused = queued
            .await?
            .expect_err("a deposed active allocated timestamps");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    }

    info!("--- it steps down, and from then on reports standby");
    wait_for(
        "the resumed process to step down",
        Duration::from_secs(5),
        || nodes[frozen].logged(&["stepping down"]).then_some(()),
    )
    .await;
    monitor.unpause(frozen);
    let demoted = nodes[frozen].status().await.expect("it answers");
    assert_eq!(demoted.state, "standby", "{demoted:?}");
    assert!(
        ["renew_deadline", "lease_lost"].contains(&demoted.last_step_down.as_str()),
        "{demoted:?}"
    );
    let stale = nodes[frozen].allocate(1, Some(old_epoch)).await;
    assert_eq!(
        stale.map_err(|s| s.code()).err(),
        Some(tonic::Code::Unavailable)
    );
    let unrouted = nodes[frozen].allocate(1, None).await;
    assert_eq!(
        unrouted.map_err(|s| s.code()).err(),
        Some(tonic::Code::Unavailable)
    );

    info!("--- the peer keeps serving; timestamps still grow");
    for _ in 0..5 {
        let batch = nodes[peer].allocate(10, Some(new_epoch)).await?;
        stamps.record(batch.first, batch.count, batch.epoch);
    }
    eventually(
        "the resumed process back in the election",
        Duration::from_secs(5),
        || async {
            let status = nodes[frozen].status().await?;
            (status.state == "standby").then_some(())
        },
    )
    .await;
    assert_eq!(serving_processes(&nodes).await, vec![(peer, new_epoch)]);
    let resurrected: Vec<_> = monitor
        .history()
        .into_iter()
        .filter(|seen| {
            seen.node == frozen && seen.at >= frozen_at && seen.state == RoleState::Serving
        })
        .collect();
    assert!(
        resurrected.is_empty(),
        "the resumed process reported serving again: {resurrected:?}"
    );
    monitor.assert_safe();
    for node in &mut nodes {
        node.process.kill()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// kill -9 of the active process, with the death witness off: what every
// lease-based election does (tests/faults_witness.rs has it on).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_witness_off_is_taken_over_when_the_lease_expires() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(3);
    let witness_off = NodeYaml {
        session: "  deathWitness: false\n".into(),
        ..NodeYaml::default()
    };
    let mut nodes = (0..3)
        .map(|_| ProcNode::spawn_with(&[etcd.endpoint()], 3, &witness_off, ""))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (killed, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    let monitor = Monitor::processes(nodes.iter().map(ProcNode::url).collect(), "tso");
    let mut stamps = Timestamps::default();
    let batch = nodes[killed].allocate(10, Some(old_epoch)).await?;
    stamps.record(batch.first, batch.count, batch.epoch);
    let client = etcd.client().await?;
    let leader_key =
        standin::etcd::recipe::leader(&client, &format!("{PROCESS_ROOT}/election/tso"))
            .await?
            .expect("a leader key");
    assert_eq!(leader_key.create_revision(), old_epoch);

    info!("--- kill -9 the active process");
    let killed_at = Instant::now();
    nodes[killed].process.kill()?;
    let (next, new_epoch) = eventually("a peer to serve", ttl + Duration::from_secs(3), || async {
        let (index, epoch) = *serving_processes(&nodes).await.first()?;
        (index != killed && epoch > old_epoch).then_some((index, epoch))
    })
    .await;
    let took = killed_at.elapsed();
    info!(?took, next, "--- a peer serves");
    // The last keepalive went out at most ttl / 12 before the kill.
    assert!(
        took < ttl + Duration::from_secs(1) && took > ttl * 3 / 4,
        "takeover after kill -9 took {took:?}: the lease (TTL {ttl:?}) should decide"
    );
    assert!(
        nodes.iter().all(|node| !node.logged(&["is gone"])),
        "a node revoked the killed leader's lease with the witness off"
    );
    let batch = nodes[next].allocate(10, Some(new_epoch)).await?;
    stamps.record(batch.first, batch.count, batch.epoch);
    let old = Epoch {
        role: "tso".into(),
        leader_key: String::from_utf8_lossy(leader_key.key()).into_owned(),
        revision: old_epoch,
    };
    let store = standin::testing::store_for_epoch(client, old, format!("{PROCESS_ROOT}/meta/tso/"));
    let refused = store.put("upper_bound", "1").await;
    assert!(
        matches!(refused, Err(FenceError::Fenced { .. })),
        "{refused:?}"
    );
    monitor.assert_safe();
    Ok(())
}

// ---------------------------------------------------------------------------
// A resumed frozen process answers health and Status from its term, at once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_frozen_process_says_not_serving_at_once_in_health_and_status()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(2);
    let nodes = spawn_processes(2, &[etcd.endpoint()], 2, "")?;
    let (frozen, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    let peer = 1 - frozen;
    // Connected now (one connection per question), so the questions can
    // wait in its sockets while it is frozen.
    let mut health = HealthClient::new(nodes[frozen].connect().await.expect("the active answers"));
    let mut coordination =
        CoordinationClient::new(nodes[frozen].connect().await.expect("the active answers"));
    let serving = health
        .check(HealthCheckRequest {
            service: "tso".into(),
        })
        .await?
        .into_inner();
    assert_eq!(serving.status, ServingStatus::Serving as i32);

    info!("--- freeze the active past its TTL; the peer takes over");
    let frozen_at = Instant::now();
    nodes[frozen].process.stop()?;
    eventually("the peer to take over", 2 * ttl, || async {
        let (index, epoch) = *serving_processes(&nodes).await.first()?;
        (index == peer && epoch > old_epoch).then_some(())
    })
    .await;

    info!("--- ask it while frozen, then resume it: the questions are the first thing it reads");
    let asked_health = tokio::spawn(async move {
        health
            .check(HealthCheckRequest {
                service: "tso".into(),
            })
            .await
    });
    let asked_status = tokio::spawn(async move { coordination.status(StatusRequest {}).await });
    let port: u16 = nodes[frozen].address.rsplit(':').next().unwrap().parse()?;
    wait_for(
        "both questions to wait in its sockets",
        Duration::from_secs(5),
        || (connections_with_unread_bytes(port) >= 2).then_some(()),
    )
    .await;
    nodes[frozen].process.cont()?;
    let health = asked_health.await??.into_inner();
    assert_eq!(
        health.status,
        ServingStatus::NotServing as i32,
        "a process resumed {:?} after its freeze answered its health as serving",
        frozen_at.elapsed()
    );
    let status = asked_status.await??.into_inner();
    let tso = status
        .roles
        .iter()
        .find(|r| r.role == "tso")
        .expect("a tso role");
    assert_ne!(tso.state, "serving", "{status:?}");
    assert_ne!(tso.epoch, old_epoch, "{status:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// SIGTERM while clients hold a health Watch and a WatchLeader stream open.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_watch_streams_hands_over_and_exits() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = spawn_processes(2, &[etcd.endpoint()], 10, "")?;
    let (leader, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    let peer = 1 - leader;
    let channel = nodes[leader].connect().await.expect("the active answers");
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "tso".into(),
        })
        .await?
        .into_inner();
    let first = health.message().await?.expect("a first health status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let mut leaders = CoordinationClient::new(channel)
        .watch_leader(WatchLeaderRequest { role: "tso".into() })
        .await?
        .into_inner();
    leaders.message().await?.expect("a first leader event");

    info!("--- SIGTERM the active while both streams are open");
    let terminated_at = Instant::now();
    nodes[leader].process.terminate()?;
    eventually("the peer to serve", Duration::from_secs(5), || async {
        let (index, epoch) = *serving_processes(&nodes).await.first()?;
        (index == peer && epoch > old_epoch).then_some(())
    })
    .await;
    let handover = terminated_at.elapsed();
    let exited = eventually(
        "the terminated process to exit",
        Duration::from_secs(10),
        || std::future::ready(nodes[leader].process.try_exit_status()),
    )
    .await;
    info!(?handover, exited_after = ?terminated_at.elapsed(), "--- handed over and exited");
    assert!(exited.success(), "exit status after SIGTERM: {exited}");
    assert!(
        handover < Duration::from_secs(2),
        "the handover took {handover:?} (the lease TTL is 10 s: it was not handed over)"
    );
    // The health stream said so before it ended.
    let mut last = first.status;
    while let Ok(Some(message)) = health.message().await {
        last = message.status;
    }
    assert_eq!(last, ServingStatus::NotServing as i32);
    for node in &mut nodes {
        node.process.kill()?;
    }
    Ok(())
}

/// How many established TCP connections to the local `port` hold bytes the
/// listening process has not read yet (from `/proc/net/tcp`).
fn connections_with_unread_bytes(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(queues)) =
                (fields.get(1), fields.get(3), fields.get(4))
            else {
                return false;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let unread = queues
                .rsplit(':')
                .next()
                .and_then(|q| u64::from_str_radix(q, 16).ok());
            local_port == Some(port) && *state == "01" && unread.is_some_and(|bytes| bytes > 0)
        })
        .count()
}
