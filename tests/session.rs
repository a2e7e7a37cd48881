//! One session per node against a real etcd: every role of a node hangs on the node's one lease, and losing it moves them all at once.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::GetOptions;
use standin::testing::EtcdServer;
use support::*;
use tracing::info;

const ROLES: usize = 30;

/// A node's election watches share four streams, its metadata followers one.
const WATCH_STREAMS_PER_NODE: f64 = 5.0;

fn role_names() -> Vec<String> {
    (0..ROLES).map(|index| format!("role-{index:02}")).collect()
}

/// Starts `count` nodes running every role of [`role_names`], the first
/// alone until it leads them all, and keeping them (no spread).
async fn nodes_with_one_leader(etcd: &EtcdServer, count: usize) -> anyhow::Result<Vec<TestNode>> {
    let names = role_names();
    let roles: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut nodes = vec![TestNode::start(unspread(config(etcd, 0, 10)), &roles, false).await?];
    wait_for("node 0 to lead every role", Duration::from_secs(20), || {
        roles
            .iter()
            .all(|role| nodes[0].role(role).is_serving())
            .then_some(())
    })
    .await;
    for index in 1..count {
        nodes.push(TestNode::start(unspread(config(etcd, index, 10)), &roles, false).await?);
    }
    let client = etcd.client().await?;
    eventually(
        "every node in line for every role",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            let names = names.clone();
            async move {
                for role in names {
                    let election = format!("{ROOT}/election/{role}/");
                    let options = GetOptions::new().with_prefix().with_count_only();
                    let found = client.clone().get(election, Some(options)).await.ok()?;
                    (found.count() == count as i64).then_some(())?;
                }
                Some(())
            }
        },
    )
    .await;
    Ok(nodes)
}

/// The one lease every role of `node` campaigns on.
fn lease_of(node: &TestNode) -> i64 {
    let leases: BTreeSet<Option<i64>> = node.roles.iter().map(|r| r.status().lease).collect();
    assert_eq!(
        leases.len(),
        1,
        "the roles of one node hold different leases: {leases:?}"
    );
    leases
        .into_iter()
        .next()
        .flatten()
        .expect("the node holds a lease")
}

async fn leases_in_etcd(etcd: &EtcdServer) -> anyhow::Result<BTreeSet<i64>> {
    let leases = etcd.client().await?.leases().await?;
    Ok(leases.leases().iter().map(|lease| lease.id()).collect())
}

/// The nodes that serve each role, as long as each has one.
fn leaders(nodes: &[TestNode]) -> Option<Vec<usize>> {
    role_names()
        .iter()
        .map(|role| single(&serving(nodes, role)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_holds_one_lease_and_a_few_watch_streams_per_node_whatever_the_number_of_roles()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = nodes_with_one_leader(&etcd, 3).await?;
    let leases: BTreeSet<i64> = nodes.iter().map(lease_of).collect();
    info!(?leases, roles = ROLES, "--- three nodes, one lease each");
    assert_eq!(leases.len(), 3, "two nodes share a lease");
    assert_eq!(
        leases_in_etcd(&etcd).await?,
        leases,
        "etcd holds other leases"
    );

    info!(
        "--- each node follows every role's election and metadata with one watch, on a few streams"
    );
    // A leader transfer of the spread waits on a watch of its own while
    // it runs: at rest, one watch a node.
    eventually(
        "one watch a node, whatever the number of roles",
        Duration::from_secs(10),
        || async {
            let open = etcd
                .metric("etcd_debugging_mvcc_watcher_total")
                .await
                .ok()?;
            (open == 3.0).then_some(())
        },
    )
    .await;
    let streams = etcd
        .metric("etcd_debugging_mvcc_watch_stream_total")
        .await?;
    assert!(
        streams <= 3.0 * WATCH_STREAMS_PER_NODE,
        "{streams} watch streams for 3 nodes of {ROLES} roles: more than {WATCH_STREAMS_PER_NODE} a node"
    );

    let client = etcd.client().await?;
    for (index, node) in nodes.iter().enumerate() {
        let lease = lease_of(node);
        for role in role_names() {
            let key =
                standin::etcd::recipe::candidate_key(&format!("{ROOT}/election/{role}"), lease);
            let found = client.clone().get(key.as_str(), None).await?;
            let kv = found.kvs().first();
            assert_eq!(
                kv.map(|kv| kv.lease()),
                Some(lease),
                "node {index}'s key for {role} is not on its lease, as etcd's recipe names it"
            );
        }
    }
    shutdown_all(&mut nodes).await;
    eventually("every lease given back", Duration::from_secs(5), || async {
        leases_in_etcd(&etcd).await.ok()?.is_empty().then_some(())
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_lease_moves_every_role_it_led_and_the_node_rejoins_on_one_new_lease()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = nodes_with_one_leader(&etcd, 2).await?;
    let old = lease_of(&nodes[0]);

    info!("--- revoke node 0's lease: one revoke for all {ROLES} roles");
    etcd.client().await?.lease_revoke(old).await?;
    wait_for("node 1 to serve every role", Duration::from_secs(5), || {
        (leaders(&nodes)? == vec![1; ROLES]).then_some(())
    })
    .await;

    info!("--- node 0 stands by for every role, on one new lease");
    let new = wait_for("node 0 on a new lease", Duration::from_secs(5), || {
        let leases: BTreeSet<Option<i64>> =
            nodes[0].roles.iter().map(|r| r.status().lease).collect();
        match leases.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(lease)] if *lease != old => Some(*lease),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        leases_in_etcd(&etcd).await?,
        BTreeSet::from([new, lease_of(&nodes[1])]),
        "one lease per node after the loss"
    );
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_resigns_leaves_the_others_on_the_shared_lease_serving() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = nodes_with_one_leader(&etcd, 2).await?;
    let lease = lease_of(&nodes[0]);
    let names = role_names();
    let epochs: Vec<_> = names[1..]
        .iter()
        .map(|role| nodes[0].role(role).status().epoch)
        .collect();

    info!("--- {} resigns on node 0", names[0]);
    nodes[0]
        .role(&names[0])
        .resign(Duration::from_secs(5))
        .await?;
    wait_for("node 1 to serve it", Duration::from_secs(5), || {
        nodes[1].role(&names[0]).is_serving().then_some(())
    })
    .await;

    info!("--- the lease lives, and every other role serves on node 0 in the same term");
    let remaining = etcd
        .client()
        .await?
        .lease_time_to_live(lease, None)
        .await?
        .ttl();
    assert!(remaining > 0, "a role's resign revoked the node's lease");
    let now: Vec<_> = names[1..]
        .iter()
        .map(|role| nodes[0].role(role).status().epoch)
        .collect();
    assert_eq!(now, epochs, "another role's term ended");
    assert_eq!(lease_of(&nodes[0]), lease);
    shutdown_all(&mut nodes).await;
    Ok(())
}
