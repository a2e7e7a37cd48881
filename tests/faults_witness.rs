//! The death witness against real processes: a killed leader is revoked at once, a frozen or unreachable one never, a port taken over by a new process proves the old one gone.

mod support;

use std::time::{Duration, Instant};

use standin::testing::{EtcdServer, FaultProxy, free_loopback_port};
use support::faults::*;
use support::{eventually, scrape_metrics, wait_for};
use tracing::info;

/// The default lease TTL: what a killed leader costs without the witness.
const DEFAULT_TTL: u64 = 10;

/// What a node logs when its witness proves a leader dead.
const REVOKED: &str = "is gone";

/// `node:` lines that pin the witness to `listen` and publish `advertised`.
fn witness_at(listen: &str, advertised: Option<&str>) -> NodeYaml {
    let mut node = format!("  witnessAddress: {listen}\n");
    if let Some(advertised) = advertised {
        node.push_str(&format!("  witnessAdvertisedAddress: {advertised}\n"));
    }
    NodeYaml {
        node,
        ..NodeYaml::default()
    }
}

/// Waits until `node` holds a connection to the leader's witness.
async fn wait_until_watching(node: &ProcNode) {
    wait_for(
        "the standby to watch the leader's witness",
        Duration::from_secs(10),
        || node.logged(&["watching leader server"]).then_some(()),
    )
    .await;
}

/// Checks that `peer` took over only once the old leader's lease could have
/// expired (its last keepalive went out at most TTL / 12 before `what`),
/// and that its witness revoked nothing.
fn assert_left_to_the_lease(peer: &ProcNode, took: Duration, ttl: Duration, what: &str) {
    assert!(
        took > ttl * 3 / 4,
        "the peer took over {took:?} after {what}, before the lease (TTL {ttl:?}) expired"
    );
    assert!(
        !peer.logged(&[REVOKED]),
        "the witness revoked a leader after {what}:\n{}",
        peer.process.log()
    );
}

/// Waits until a process other than `old` serves at a newer epoch; returns it.
async fn wait_for_successor(
    nodes: &[ProcNode],
    old: usize,
    old_epoch: i64,
    deadline: Duration,
) -> usize {
    eventually("a successor to serve", deadline, || async {
        let (index, epoch) = *serving_processes(nodes).await.first()?;
        (index != old && epoch > old_epoch).then_some(index)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_is_taken_over_well_under_the_ttl() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    // The witnesses prove the cluster's secret, as a deployment's do.
    let secret = tempfile::NamedTempFile::new()?;
    std::fs::write(secret.path(), "kill-9-test witness secret 0123\n")?;
    let mut metrics_ports = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = free_loopback_port()?;
        let exported = NodeYaml {
            node: format!("  witnessSecretFile: {}\n", secret.path().display()),
            args: vec!["--metrics".into(), format!("127.0.0.1:{port}")],
            ..NodeYaml::default()
        };
        nodes.push(ProcNode::spawn_with(
            &[etcd.endpoint()],
            DEFAULT_TTL,
            &exported,
            "",
        )?);
        metrics_ports.push(port);
    }
    let (killed, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    for (index, node) in nodes.iter().enumerate() {
        if index != killed {
            wait_until_watching(node).await;
        }
    }
    let monitor = Monitor::processes(nodes.iter().map(ProcNode::url).collect(), "tso");

    info!("--- kill -9 the active process");
    let killed_at = Instant::now();
    nodes[killed].process.kill()?;
    let next = wait_for_successor(&nodes, killed, old_epoch, Duration::from_secs(5)).await;
    let took = killed_at.elapsed();
    info!(?took, next, "--- a peer serves");
    assert!(
        took < Duration::from_secs(2),
        "takeover after kill -9 took {took:?}; the TTL is {DEFAULT_TTL} s and the witness should \
         have revoked the lease at once"
    );
    assert!(
        nodes
            .iter()
            .any(|node| node.logged(&[REVOKED, "connection refused", "revoked its lease"])),
        "no node logged the witness's revoke"
    );
    // Counted where it was done, with the time it took.
    let mut revokes = 0.0;
    let mut timed = 0.0;
    for (index, port) in metrics_ports.iter().enumerate() {
        if index == killed {
            continue;
        }
        let scraped = scrape_metrics(*port).await.unwrap_or_default();
        revokes += metric(&scraped, "standin_death_witness_revokes_total");
        timed += metric(&scraped, "standin_death_witness_revoke_seconds_count");
    }
    assert!(
        revokes >= 1.0 && timed >= 1.0,
        "revokes {revokes}, timed {timed}"
    );
    monitor.assert_safe();
    Ok(())
}

/// The value of the unlabelled metric `name` in a scrape, 0 when absent.
fn metric(scraped: &str, name: &str) -> f64 {
    scraped
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_is_never_revoked_by_the_witness() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(3);
    let mut nodes = spawn_processes(2, &[etcd.endpoint()], 3, "")?;
    let (frozen, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    let peer = 1 - frozen;
    wait_until_watching(&nodes[peer]).await;

    info!("--- SIGSTOP the active: its sockets stay open, so only the lease can tell");
    let frozen_at = Instant::now();
    nodes[frozen].process.stop()?;
    wait_for_successor(&nodes, frozen, old_epoch, 3 * ttl).await;
    let took = frozen_at.elapsed();
    nodes[frozen].process.cont()?;
    info!(?took, "--- the peer serves");
    assert_left_to_the_lease(&nodes[peer], took, ttl, "a freeze");
    for node in &mut nodes {
        node.process.kill()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_active_whose_witness_is_blackholed_waits_for_its_lease() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let ttl = Duration::from_secs(3);
    let listen = format!("127.0.0.1:{}", free_loopback_port()?);
    let proxy = FaultProxy::start(&listen).await?;
    let behind_proxy = witness_at(&listen, Some(&proxy.endpoint()));
    // Alone first, so that it is the leader.
    let mut nodes = vec![ProcNode::spawn_with(
        &[etcd.endpoint()],
        3,
        &behind_proxy,
        "",
    )?];
    let (killed, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    nodes.push(ProcNode::spawn(&[etcd.endpoint()], 3, "")?);
    let peer = 1;
    wait_until_watching(&nodes[peer]).await;

    info!("--- blackhole the leader's witness, then kill -9 it: the host looks unreachable");
    proxy.blackhole();
    let killed_at = Instant::now();
    nodes[killed].process.kill()?;
    wait_for_successor(&nodes, killed, old_epoch, 3 * ttl).await;
    let took = killed_at.elapsed();
    info!(?took, "--- the peer serves");
    assert_left_to_the_lease(
        &nodes[peer],
        took,
        ttl,
        "a kill behind a blackholed witness",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_on_the_dead_leaders_witness_port_proves_it_gone() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let listen = format!("127.0.0.1:{}", free_loopback_port()?);
    let pinned = witness_at(&listen, None);
    let mut nodes = vec![ProcNode::spawn_with(
        &[etcd.endpoint()],
        DEFAULT_TTL,
        &pinned,
        "",
    )?];
    let (killed, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    nodes.push(ProcNode::spawn(&[etcd.endpoint()], DEFAULT_TTL, "")?);
    let watcher = 1;
    wait_until_watching(&nodes[watcher]).await;

    info!("--- freeze the standby, kill -9 the leader, start a new process on its witness port");
    nodes[watcher].process.stop()?;
    let killed_at = Instant::now();
    nodes[killed].process.kill()?;
    nodes.push(ProcNode::spawn_with(
        &[etcd.endpoint()],
        DEFAULT_TTL,
        &pinned,
        "",
    )?);
    let reborn = 2;
    wait_for(
        "the new process's witness to listen on the old port",
        Duration::from_secs(10),
        || {
            nodes[reborn]
                .logged(&["death witness listening", &listen])
                .then_some(())
        },
    )
    .await;

    info!("--- resume the standby: its reconnect is greeted by a stranger");
    nodes[watcher].process.cont()?;
    let next = wait_for_successor(&nodes, killed, old_epoch, Duration::from_secs(8)).await;
    let took = killed_at.elapsed();
    info!(?took, next, "--- a peer serves");
    assert!(
        nodes[watcher].logged(&[REVOKED, "another process (incarnation"]),
        "the standby did not revoke on the stranger's greeting:\n{}",
        nodes[watcher].process.log()
    );
    assert!(
        took < Duration::from_secs(DEFAULT_TTL) / 2,
        "takeover took {took:?}: the lease decided, not the witness"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_says_farewell_and_is_not_taken_for_dead() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = spawn_processes(3, &[etcd.endpoint()], DEFAULT_TTL, "")?;
    let (leaving, old_epoch) = wait_for_serving_process(&nodes, Duration::from_secs(15)).await;
    for (index, node) in nodes.iter().enumerate() {
        if index != leaving {
            wait_until_watching(node).await;
        }
    }

    info!("--- SIGTERM the active: it hands over, then says farewell and closes its witness");
    nodes[leaving].process.terminate()?;
    wait_for_successor(&nodes, leaving, old_epoch, Duration::from_secs(5)).await;
    eventually(
        "the terminated process to exit",
        Duration::from_secs(10),
        || std::future::ready(nodes[leaving].process.try_exit_status()),
    )
    .await;
    let survivors: Vec<&ProcNode> = (0..nodes.len())
        .filter(|&index| index != leaving)
        .map(|index| &nodes[index])
        .collect();
    // The survivor left in standby watches the new leader: its watch of
    // the old one is over, ended by the farewell or by the leader change,
    // whichever came first (a race; the farewell has a unit test).
    wait_for(
        "the standby to watch the new leader",
        Duration::from_secs(5),
        || {
            survivors
                .iter()
                .any(|node| {
                    let log = node.process.log();
                    log.matches("watching leader server").count() >= 2
                })
                .then_some(())
        },
    )
    .await;
    for node in survivors {
        assert!(
            !node.logged(&[REVOKED]),
            "a standby took a graceful exit for a death:\n{}",
            node.process.log()
        );
    }
    Ok(())
}

/// Two in-process tso nodes on `etcd`: node 0 leads, its witness on a free
/// port published as `witness_proxy`'s address (which forwards to it), its
/// etcd link through `etcd_link`; node 1 stands by with `standby`'s session
/// settings and watches node 0 through the proxy.
async fn leader_behind_a_witness_proxy(
    etcd: &EtcdServer,
    etcd_link: &FaultProxy,
    standby: impl FnOnce(&mut standin::config::SessionConfig),
) -> anyhow::Result<(Vec<TsoNode>, FaultProxy)> {
    let listen = format!("127.0.0.1:{}", free_loopback_port()?);
    let witness_proxy = FaultProxy::start(&listen).await?;
    let mut leader = node_config(vec![etcd_link.endpoint()], 0, 10);
    leader.node.witness_address = Some(listen);
    leader.node.witness_advertised_address = Some(witness_proxy.endpoint());
    let mut nodes = vec![TsoNode::start(leader).await?];
    wait_for_tso_leader(&nodes, "node 0 to lead", Duration::from_secs(10)).await;
    let mut config = node_config(vec![etcd.endpoint()], 1, 10);
    standby(&mut config.session);
    nodes.push(TsoNode::start(config).await?);
    wait_for(
        "the standby to hold a connection to the leader's witness",
        Duration::from_secs(10),
        || (witness_proxy.answered_connections() > 0).then_some(()),
    )
    .await;
    Ok((nodes, witness_proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moments_rejection_on_the_path_to_a_living_leaders_witness_revokes_nothing()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let etcd_link = FaultProxy::start(&etcd.endpoint()).await?;
    // A span long enough for this test's timing on a busy host; the
    // default (3 ms) answers a reset or a reload of a firewall's rules.
    let confirm = Duration::from_millis(300);
    let (nodes, witness) = leader_behind_a_witness_proxy(&etcd, &etcd_link, |session| {
        session.witness_confirm = confirm;
    })
    .await?;
    let epoch = nodes[0].tso.status().epoch.map(|e| e.revision);
    assert!(epoch.is_some(), "node 0 leads");
    let monitor = Monitor::tso_nodes(&nodes);

    info!("--- the path to the leader's witness resets and refuses for 50 ms");
    witness.reject_for(Duration::from_millis(50));
    wait_for(
        "the standby to find the witness alive again",
        Duration::from_secs(5),
        || {
            let seen = logged(&["greeted again", &witness.endpoint()]);
            (!seen.is_empty()).then_some(())
        },
    )
    .await;
    wait_for(
        "the standby to hold a connection to the witness again",
        Duration::from_secs(5),
        || (witness.answered_connections() > 0).then_some(()),
    )
    .await;
    let revoked = logged(&[REVOKED, &witness.endpoint()]);
    assert!(
        revoked.is_empty(),
        "a living leader was revoked: {revoked:?}"
    );
    assert_eq!(tso_serving(&nodes), vec![0], "the leader changed");
    assert_eq!(nodes[0].tso.status().epoch.map(|e| e.revision), epoch);
    monitor.assert_safe();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_living_leader_a_firewall_makes_look_dead_steps_down_before_its_successor_serves()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let etcd_link = FaultProxy::start(&etcd.endpoint()).await?;
    // The leader's link to etcd works, but slowly: it hears of its key's
    // deletion 2 x 40 ms after its successor. The grace covers that here;
    // the default (5 ms) covers a link as fast as the successor's.
    let grace = Duration::from_millis(300);
    let (nodes, witness) = leader_behind_a_witness_proxy(&etcd, &etcd_link, |session| {
        session.witness_grace = grace;
    })
    .await?;
    let old_epoch = nodes[0]
        .tso
        .status()
        .epoch
        .map(|e| e.revision)
        .expect("node 0 leads");
    etcd_link.delay(Duration::from_millis(40));
    let monitor = Monitor::tso_nodes(&nodes);

    info!("--- a firewall rejects every connection to the leader's witness, which lives");
    witness.reject();
    wait_for(
        "node 1 to serve at a newer epoch",
        Duration::from_secs(10),
        || {
            let epoch = nodes[1].tso.status().epoch?.revision;
            (nodes[1].is_serving() && epoch > old_epoch).then_some(())
        },
    )
    .await;
    // Taken for dead: a refusal that persists is all the network shows.
    assert!(
        !logged(&[REVOKED, &witness.endpoint()]).is_empty(),
        "the standby did not revoke the leader behind the rejecting witness"
    );
    wait_for("node 0 to stand by", Duration::from_secs(5), || {
        (!nodes[0].is_serving()).then_some(())
    })
    .await;
    // Never both: node 0 saw its key go before node 1 answered.
    monitor.assert_safe();
    let history = monitor.history();
    let last_old = history
        .iter()
        .filter(|seen| seen.node == 0 && seen.state == standin::RoleState::Serving)
        .map(|seen| seen.at)
        .max()
        .expect("node 0 was seen serving");
    let first_new = history
        .iter()
        .filter(|seen| seen.node == 1 && seen.state == standin::RoleState::Serving)
        .map(|seen| seen.at)
        .min()
        .expect("node 1 was seen serving");
    info!(
        margin = ?first_new.checked_duration_since(last_old),
        "--- from the old term's last sight to the new one's first"
    );
    Ok(())
}
