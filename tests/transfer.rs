//! Leader transfer against a real etcd: the role goes to the chosen standby past the ones ahead of it, a target that is not ready is refused, a peer that does not make way stalls it while the leader serves on, and a preferred leader gets its role back once.

mod support;

use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use standin::etcd::session::Layout;
use standin::service::client::LeaderWatch;
use standin::testing::EtcdServer;
use standin::{ResignError, RoleState, StepDownReason, TransferTarget};
use support::*;
use tracing::info;

const ROLE: &str = "rootcoord";
const TRANSFER: Duration = Duration::from_secs(10);

fn server_id(node: &TestNode) -> i64 {
    node.role(ROLE).status().server_id
}

/// Waits until `count` candidates stand in the election.
async fn candidates_in_line(client: &etcd_client::Client, election: &str, count: usize) {
    let what = format!("{count} candidates in line");
    eventually(&what, Duration::from_secs(10), || async {
        let line = standin::etcd::recipe::candidates(client, election)
            .await
            .ok()?;
        (line.len() == count).then_some(())
    })
    .await;
}

/// Every leader that served the role, in order, as etcd showed them.
struct ServedBy {
    served: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    _watch: LeaderWatch,
    _recorder: tokio::task::JoinHandle<()>,
}

impl ServedBy {
    fn start(client: etcd_client::Client) -> Self {
        let watch =
            LeaderWatch::start(client, &Layout::new(ROOT), ROLE, Duration::from_millis(100));
        let mut leaders = watch.subscribe();
        let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let noted = served.clone();
        let recorder = tokio::spawn(async move {
            loop {
                if let Some(leader) = leaders.borrow_and_update().clone()
                    && leader.session.state == RoleState::Serving
                {
                    let mut served = noted.lock().unwrap();
                    if served.last() != Some(&leader.session.server_id) {
                        served.push(leader.session.server_id);
                    }
                }
                if leaders.changed().await.is_err() {
                    return;
                }
            }
        });
        Self {
            served,
            _watch: watch,
            _recorder: recorder,
        }
    }

    fn served(&self) -> Vec<i64> {
        self.served.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_hands_its_role_to_the_chosen_standby_past_the_ones_ahead() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::start().await?;
    info!("--- four nodes join in turn: the first leads, the last is at the back of the line");
    let mut nodes = Vec::new();
    for index in 0..4 {
        nodes.push(TestNode::start(config(&etcd, index, 10), &[ROLE], false).await?);
        if index == 0 {
            wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
        }
    }
    let joined = |nodes: &[TestNode]| {
        nodes.iter().all(|n| {
            n.role(ROLE).status().leader.is_some() && n.role(ROLE).status().lease.is_some()
        })
    };
    eventually(
        "every node sees the leader",
        Duration::from_secs(10),
        || {
            let ready = joined(&nodes);
            async move { ready.then_some(()) }
        },
    )
    .await;
    let client = etcd.client().await?;
    let election = Layout::new(ROOT).election(ROLE);
    candidates_in_line(&client, &election, 4).await;
    assert_eq!(serving(&nodes, ROLE), vec![0]);

    info!("--- hand the role to the last in line, by server ID");
    let target = server_id(&nodes[3]);
    let history = ServedBy::start(client.clone());
    let asked = Instant::now();
    let successor = nodes[0]
        .role(ROLE)
        .transfer(TransferTarget::ServerId(target), TRANSFER)
        .await?;
    info!(
        took_ms = asked.elapsed().as_millis() as u64,
        "transfer answered"
    );
    assert_eq!(successor.server_id, target);
    assert_eq!(successor.address, nodes[3].address);
    let new_leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    assert_eq!(new_leader, 3, "the role went to node {new_leader}");
    assert_eq!(
        nodes[0].last_step_down(ROLE),
        Some(StepDownReason::Transferred)
    );
    info!("--- nobody but the target served in between");
    let seen = eventually(
        "etcd shows the target serving",
        Duration::from_secs(10),
        || {
            let seen = history.served();
            async move { (seen.last() == Some(&target)).then_some(seen) }
        },
    )
    .await;
    assert_eq!(
        seen,
        vec![server_id(&nodes[0]), target],
        "leaders seen: {seen:?}"
    );

    info!("--- and back to the first node, by the address it publishes");
    let back = nodes[3]
        .role(ROLE)
        .transfer(TransferTarget::Address(nodes[0].address.clone()), TRANSFER)
        .await?;
    assert_eq!(back.server_id, server_id(&nodes[0]));
    assert_eq!(
        wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await,
        0
    );
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_the_leader_itself_to_a_node_not_in_line_or_from_a_standby_is_refused()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = start_nodes(2, &[ROLE], |index| config(&etcd, index, 10)).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let standby = 1 - leader;
    // The standby sees the leader before its own key is written: wait for
    // the key, since the transfer reads the line from etcd.
    let client = etcd.client().await?;
    candidates_in_line(&client, &Layout::new(ROOT).election(ROLE), 2).await;

    info!("--- to the leader itself");
    let itself = nodes[leader]
        .role(ROLE)
        .transfer(
            TransferTarget::ServerId(server_id(&nodes[leader])),
            TRANSFER,
        )
        .await;
    assert!(
        matches!(itself, Err(ResignError::TargetLeads { .. })),
        "{itself:?}"
    );

    info!("--- to a server that is not a candidate: the error lists who is");
    let absent = nodes[leader]
        .role(ROLE)
        .transfer(TransferTarget::ServerId(999), TRANSFER)
        .await
        .expect_err("a transfer to nobody was accepted")
        .to_string();
    assert!(absent.contains("server 999 is not ready"), "{absent}");
    assert!(
        absent.contains(&format!(
            "{}@{}",
            server_id(&nodes[standby]),
            nodes[standby].address
        )),
        "{absent}"
    );

    info!("--- asked of a standby");
    let from_standby = nodes[standby]
        .role(ROLE)
        .transfer(
            TransferTarget::ServerId(server_id(&nodes[leader])),
            TRANSFER,
        )
        .await;
    assert!(
        matches!(from_standby, Err(ResignError::NotLeader { .. })),
        "{from_standby:?}"
    );

    info!("--- the leader still serves, in the same term");
    assert_eq!(serving(&nodes, ROLE), vec![leader]);
    assert_eq!(nodes[leader].last_step_down(ROLE), None);
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_does_not_make_way_stalls_the_transfer_and_the_leader_serves_on()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = vec![TestNode::start(config(&etcd, 0, 10), &[ROLE], false).await?];
    wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;

    info!("--- a foreign candidate (as etcdctl elect would be) joins, then a standin standby");
    let mut client = etcd.client().await?;
    let lease = client.lease_grant(30, None).await?.id();
    let election = Layout::new(ROOT).election(ROLE);
    client
        .put(
            format!("{election}/{lease:x}"),
            "etcdctl",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    nodes.push(TestNode::start(config(&etcd, 1, 10), &[ROLE], false).await?);
    candidates_in_line(&client, &election, 3).await;

    info!("--- the transfer stalls behind the foreign candidate, and says so");
    let stalled = nodes[0]
        .role(ROLE)
        .transfer(
            TransferTarget::ServerId(server_id(&nodes[1])),
            Duration::from_secs(3),
        )
        .await
        .expect_err("a transfer past a candidate that cannot make way succeeded")
        .to_string();
    assert!(stalled.contains("did not make way"), "{stalled}");
    assert!(stalled.contains(&format!("{lease:x}")), "{stalled}");
    assert_eq!(serving(&nodes, ROLE), vec![0]);
    assert_eq!(nodes[0].last_step_down(ROLE), None);

    info!("--- the announcement is withdrawn from the leader key");
    eventually("no transfer announced", Duration::from_secs(5), || {
        let client = client.clone();
        let election = election.clone();
        async move {
            let kv = standin::etcd::recipe::leader(&client, &election)
                .await
                .ok()??;
            let leader = standin::Leader::decode(&kv).ok()?;
            leader.session.transfer.is_none().then_some(())
        }
    })
    .await;
    client.lease_revoke(lease).await?;
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_leader_that_restarts_gets_its_role_back_once_without_flapping()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let holdoff = Duration::from_secs(1);
    let preferred_config = |index| {
        let mut config = config(&etcd, index, 10);
        config.session.transfer_holdoff = holdoff;
        if index == 2 {
            config
                .roles
                .entry(ROLE.to_owned())
                .or_default()
                .leader_priority = 10;
        }
        config
    };
    let history = ServedBy::start(etcd.client().await?);

    info!("--- two nodes of priority 0 start first; node 2, of priority 10, joins last");
    let mut nodes = start_nodes(3, &[ROLE], preferred_config).await?;
    let preferred = server_id(&nodes[2]);
    info!("--- the leader hands the role to node 2 once it has stood ready for the holdoff");
    let started = Instant::now();
    wait_for("node 2 serves", Duration::from_secs(20), || {
        (serving(&nodes, ROLE) == vec![2]).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= holdoff,
        "moved after {:?}, before the holdoff",
        started.elapsed()
    );

    eventually("etcd shows node 2 serving", Duration::from_secs(10), || {
        let served = history.served();
        async move { (served.last() == Some(&preferred)).then_some(()) }
    })
    .await;

    info!("--- node 2 stops: a node of priority 0 takes over");
    nodes[2].shutdown().await;
    let interim = wait_for_single_leader(&nodes[..2], ROLE, Duration::from_secs(10)).await;
    info!("--- node 2 comes back and gets its role back, once");
    nodes[2] = TestNode::start(preferred_config(2), &[ROLE], false).await?;
    let back = server_id(&nodes[2]);
    let started = Instant::now();
    wait_for("node 2 serves again", Duration::from_secs(20), || {
        (serving(&nodes, ROLE) == vec![2]).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= holdoff,
        "moved back before the holdoff"
    );
    info!("--- then leadership stays put for three holdoffs");
    let mut last = history.served();
    let mut unchanged_since = Instant::now();
    eventually("three holdoffs without a move", holdoff * 6, || {
        let now = history.served();
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        }
        let quiet = unchanged_since.elapsed() >= holdoff * 3;
        async move { quiet.then_some(()) }
    })
    .await;
    let history = history.served();
    let first = server_id(&nodes[0]);
    let interim_id = server_id(&nodes[interim]);
    assert_eq!(
        history,
        vec![first, preferred, interim_id, back],
        "the leaders that served, in order"
    );
    assert_eq!(serving(&nodes, ROLE), vec![2]);
    assert_eq!(
        nodes[interim].last_step_down(ROLE),
        Some(StepDownReason::Transferred)
    );
    shutdown_all(&mut nodes).await;
    Ok(())
}
