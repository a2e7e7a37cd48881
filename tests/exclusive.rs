//! Exclusive roles (`<role>.activeStandby.enabled: false`, as Milvus has them) against a real etcd: a held role refuses a second exclusive instance.

mod support;

use std::time::Duration;

use standin::NodeError;
use standin::RoleState;
use standin::config::{ActiveStandbyConfig, RoleConfig};
use standin::testing::EtcdServer;
use support::*;
use tracing::info;

const ROLE: &str = "rootcoord";

/// The config of node `index` with `ROLE` exclusive or active-standby.
fn role_config(etcd: &EtcdServer, index: usize, exclusive: bool) -> standin::Config {
    let mut config = config(etcd, index, 10);
    config.roles.insert(
        ROLE.to_owned(),
        RoleConfig {
            active_standby: ActiveStandbyConfig {
                enabled: !exclusive,
            },
            ..RoleConfig::default()
        },
    );
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_role_refuses_a_second_exclusive_instance_but_not_a_standby()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;

    info!("--- node 1, exclusive, finds the role free and serves it");
    let first = TestNode::start(role_config(&etcd, 1, true), &[ROLE], false).await?;
    wait_for("node 1 to serve", Duration::from_secs(10), || {
        first.role(ROLE).is_serving().then_some(())
    })
    .await;
    let first_id = first.node.as_ref().and_then(|n| n.server_id()).unwrap();
    // The leader publishes "serving" in its leader key after it serves: the
    // second node reads the key, so wait until etcd says so too.
    let client = etcd.client().await?;
    let layout = standin::etcd::session::Layout::new(ROOT);
    eventually(
        "etcd to show node 1 serving",
        Duration::from_secs(5),
        || async {
            let roles = standin::etcd::inspect::roles(&client, &layout).await.ok()?;
            let leader = roles.into_iter().find(|r| r.role == ROLE)?.leader?;
            (leader.state == RoleState::Serving).then_some(())
        },
    )
    .await;

    info!("--- node 2, exclusive too, refuses to start, naming node 1");
    let refused = TestNode::start(role_config(&etcd, 2, true), &[ROLE], false).await;
    let error = refused.err().expect("a second exclusive instance started");
    let text = error.to_string();
    match error.downcast_ref::<NodeError>() {
        Some(NodeError::RoleHeldExclusively { role, holder }) => {
            assert_eq!(role, ROLE);
            assert_eq!(holder.server_id, first_id);
            assert_eq!(holder.address, first.address);
            assert_eq!(holder.state, RoleState::Serving);
        }
        _ => panic!("expected RoleHeldExclusively, got {error:?}"),
    }
    assert!(text.contains(&format!("server {first_id}")), "{text}");
    assert!(text.contains(&first.address), "{text}");

    info!("--- node 3, active-standby, starts and stands by behind node 1");
    let third = TestNode::start(role_config(&etcd, 3, false), &[ROLE], false).await?;
    let standby = third.role(ROLE).clone();
    let leader_address = first.address.clone();
    wait_for(
        "node 3 to stand by behind node 1",
        Duration::from_secs(10),
        || {
            let status = standby.status();
            let behind_first = status
                .leader
                .is_some_and(|leader| leader.session.address == leader_address);
            (status.state == RoleState::Standby && behind_first).then_some(())
        },
    )
    .await;
    let mut nodes = vec![first, third];
    assert_eq!(serving(&nodes, ROLE), vec![0]);

    shutdown_all(&mut nodes).await;
    Ok(())
}
