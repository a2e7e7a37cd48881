//! Leadership spread against a real etcd: roles spread within one a node as nodes join and leave, the next in line of each node's roles too, and a preference wins over the spread.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{GetOptions, SortOrder, SortTarget};
use standin::etcd::session::SessionInfo;
use standin::testing::EtcdServer;
use support::*;
use tracing::info;

const ROLES: usize = 30;

/// How long the spread may take to settle after a node joins or leaves.
const SETTLES: Duration = Duration::from_secs(20);

fn role_names() -> Vec<String> {
    (0..ROLES).map(|index| format!("role-{index:02}")).collect()
}

/// How many roles each of `nodes` leads (in `nodes` order, a stopped node
/// counting none), once every role has exactly one leader.
fn leaders_per_node(nodes: &[TestNode]) -> Option<Vec<usize>> {
    let mut counts = vec![0; nodes.len()];
    for role in role_names() {
        counts[single(&serving(nodes, &role))?] += 1;
    }
    Some(counts)
}

/// Waits until every role has one leader and the running nodes of `nodes`
/// each lead within one of each other; returns the counts.
async fn spread_within_one(nodes: &[TestNode], what: &str) -> Vec<usize> {
    wait_for(what, SETTLES, || {
        let counts = leaders_per_node(nodes)?;
        let running: Vec<usize> = nodes
            .iter()
            .zip(&counts)
            .filter(|(node, _)| node.node.is_some())
            .map(|(_, count)| *count)
            .collect();
        let (max, min) = (running.iter().max()?, running.iter().min()?);
        (max - min <= 1).then_some(counts)
    })
    .await
}

/// Each role's candidates in etcd as server IDs, the leader first.
async fn lines(etcd: &EtcdServer) -> anyhow::Result<BTreeMap<String, Vec<i64>>> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let found = etcd
        .client()
        .await?
        .get(format!("{ROOT}/election/"), Some(options))
        .await?;
    let mut lines: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for kv in found.kvs() {
        let session = SessionInfo::decode(kv.key(), kv.value())?;
        lines
            .entry(session.role)
            .or_default()
            .push(session.server_id);
    }
    Ok(lines)
}

/// For the roles server `leader` leads: how many have each other server next in line.
fn heirs_of(lines: &BTreeMap<String, Vec<i64>>, leader: i64) -> BTreeMap<i64, usize> {
    let mut heirs = BTreeMap::new();
    for line in lines.values().filter(|line| line.first() == Some(&leader)) {
        if let Some(heir) = line.get(1) {
            *heirs.entry(*heir).or_insert(0) += 1;
        }
    }
    heirs
}

async fn start(etcd: &EtcdServer, index: usize) -> anyhow::Result<TestNode> {
    let names = role_names();
    let roles: Vec<&str> = names.iter().map(String::as_str).collect();
    TestNode::start(config(etcd, index, 10), &roles, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_within_one_a_node_as_nodes_join_and_leave() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = vec![start(&etcd, 0).await?];
    spread_within_one(&nodes, "node 0 to lead every role").await;

    info!("--- two nodes join: each gets its share by transfers");
    nodes.push(start(&etcd, 1).await?);
    nodes.push(start(&etcd, 2).await?);
    let counts = spread_within_one(&nodes, "ten roles led by each of three nodes").await;
    assert_eq!(counts, vec![10, 10, 10]);

    info!("--- a fourth node joins: 8, 8, 7, 7 in some order");
    nodes.push(start(&etcd, 3).await?);
    let mut counts = spread_within_one(&nodes, "the roles spread over four nodes").await;
    counts.sort_unstable();
    assert_eq!(counts, vec![7, 7, 8, 8]);

    info!("--- the heirs of each node's roles spread over the other three");
    let servers: Vec<i64> = nodes
        .iter()
        .map(|n| n.roles[0].status().server_id)
        .collect();
    let heirs = eventually("each leader's heirs spread", SETTLES, || async {
        let lines = lines(&etcd).await.ok()?;
        let heirs: Vec<BTreeMap<i64, usize>> =
            servers.iter().map(|id| heirs_of(&lines, *id)).collect();
        heirs
            .iter()
            .all(|of| {
                let (max, min) = (of.values().max(), of.values().min());
                of.len() == 3 && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
            })
            .then_some(heirs)
    })
    .await;
    info!(?heirs, "heirs per leader");

    info!("--- node 3 leaves gracefully: its roles go to every survivor");
    let before = leaders_per_node(&nodes).expect("one leader per role");
    nodes[3].shutdown().await;
    let after = wait_for("node 3's roles served elsewhere", SETTLES, || {
        leaders_per_node(&nodes)
    })
    .await;
    let gained: Vec<usize> = (0..3).map(|i| after[i].saturating_sub(before[i])).collect();
    assert!(
        gained.iter().filter(|&&n| n > 0).count() >= 2,
        "node 3's {} roles went to one node: {before:?} -> {after:?}",
        before[3]
    );
    let counts = spread_within_one(&nodes, "the roles spread over three nodes again").await;
    assert_eq!(counts[..3].iter().sum::<usize>(), ROLES);

    info!("--- node 2 is dropped without a shutdown: the other two share its roles");
    nodes[2].node.take();
    let counts = spread_within_one(&nodes, "the roles spread over the last two").await;
    assert_eq!(&counts[..2], &[15, 15]);

    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_leader_keeps_its_role_whatever_the_spread() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let names = role_names();
    let roles: Vec<&str> = names.iter().map(String::as_str).collect();
    // Node 1 prefers role-00 and role-01; the spread shares out the rest.
    let mut preferring = config(&etcd, 1, 10);
    preferring.session.transfer_holdoff = Duration::from_millis(200);
    for role in ["role-00", "role-01"] {
        preferring
            .roles
            .entry(role.into())
            .or_default()
            .leader_priority = 10;
    }
    let mut first = config(&etcd, 0, 10);
    first.session.transfer_holdoff = Duration::from_millis(200);
    let mut nodes = vec![TestNode::start(first, &roles, false).await?];
    spread_within_one(&nodes, "node 0 to lead every role").await;
    nodes.push(TestNode::start(preferring, &roles, false).await?);
    wait_for("node 1 to lead its preferred roles", SETTLES, || {
        ["role-00", "role-01"]
            .iter()
            .all(|role| serving(&nodes, role) == vec![1])
            .then_some(())
    })
    .await;
    // 28 roles spread 14 / 14, the two preferred ones stay on node 1.
    let counts = wait_for("the other roles spread", SETTLES, || {
        let counts = leaders_per_node(&nodes)?;
        (counts == vec![14, 16]).then_some(counts)
    })
    .await;
    info!(?counts, "leaders per node");
    shutdown_all(&mut nodes).await;
    Ok(())
}
