//! A leader whose clock stood still while it was cut off from etcd (a VM its hypervisor paused) answers beside its successor, unless `coordinator.confirmAnswers` has etcd confirm every answer first.
//!
//! The clock stall is process-wide, so this binary holds one test.

mod support;

use std::time::Duration;

use standin::testing::{EtcdServer, FaultProxy};
use standin::{Fault, RoleControl, ServeError};
use support::faults::*;
use support::{LedgerRequest, LedgerResponse, TestNode, wait_for};
use tracing::info;

/// The lease TTL: the successor serves about this long after the leader
/// is cut off.
const TTL: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_clock_stood_still_answers_beside_its_successor_unless_etcd_confirms()
-> anyhow::Result<()> {
    init_logging();
    info!("--- without coordinator.confirmAnswers: the old leader answers");
    let answer = answer_after_the_successor_serves(false).await?;
    assert!(
        matches!(answer, Ok(LedgerResponse::Epoch(_))),
        "the cut-off leader with a stalled clock refused: the fault did not stall it"
    );
    info!("--- with it: the old leader refuses, its key gone or unreachable");
    let answer = answer_after_the_successor_serves(true).await?;
    assert!(
        matches!(answer, Err(ServeError::NotActive { .. })),
        "the cut-off leader answered although etcd could not confirm it: {:?}",
        answer.map(|_| "an answer")
    );
    Ok(())
}

/// Starts a leader cut off from etcd by a proxy and a standby, stalls the
/// process's lease clock and cuts the leader off, and once the standby
/// serves asks the old leader for its epoch (an answer it gives from
/// memory): what it answered.
async fn answer_after_the_successor_serves(
    confirm: bool,
) -> anyhow::Result<Result<LedgerResponse, ServeError>> {
    let etcd = EtcdServer::start().await?;
    let link = FaultProxy::start(&etcd.endpoint()).await?;
    let config = |endpoint: String, node: usize| {
        let mut config = node_config(vec![endpoint], node, TTL);
        config.coordinator.confirm_answers = confirm;
        config.etcd.request_timeout = Duration::from_secs(1);
        config
    };
    let leader = TestNode::start(config(link.endpoint(), 0), &["ledger"], false).await?;
    wait_for("node 0 to lead", Duration::from_secs(10), || {
        leader.role("ledger").is_serving().then_some(())
    })
    .await;
    let standby = TestNode::start(config(etcd.endpoint(), 1), &["ledger"], false).await?;
    wait_for(
        "node 1 to stand by behind node 0",
        Duration::from_secs(10),
        || {
            let status = standby.role("ledger").status();
            status.leader.is_some().then_some(())
        },
    )
    .await;

    // A stall of the previous case may still run: one at a time.
    wait_for("the lease clock to stall", Duration::from_secs(15), || {
        RoleControl::inject(leader.role("ledger"), Fault::StallClock).then_some(())
    })
    .await;
    link.blackhole();
    wait_for(
        "node 1 to serve once etcd expired node 0's lease",
        Duration::from_secs(3 * TTL),
        || standby.role("ledger").is_serving().then_some(()),
    )
    .await;
    let asked = leader
        .role("ledger")
        .call(LedgerRequest::Epoch, Duration::from_secs(3))
        .await;
    link.heal();
    Ok(asked)
}
