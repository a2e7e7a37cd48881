//! One term, one truth: once this node's term is over (its leader key deleted, its lease revoked), no request is answered from memory, however it was queued.

mod support;

use std::sync::Arc;
use std::time::Duration;

use standin::testing::EtcdServer;
use standin::{
    BoxError, Coordinator, Epoch, FencedStore, Node, RoleHandle, RoleState, ServeError, Snapshot,
};
use support::{config, init_logging, wait_for};
use tokio::sync::Semaphore;

/// A coordinator that answers from memory, whose activation writes nothing
/// (the case the built-in tso hides), and whose `handle` waits for a permit
/// the test hands out: requests pile up in its mailbox on demand.
struct Gated {
    permits: Arc<Semaphore>,
}

impl Coordinator for Gated {
    type Meta = ();
    type Serving = i64;
    type Request = ();
    type Response = i64;

    fn decode(&self, _snapshot: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(&self, epoch: Epoch, _: (), _: FencedStore) -> Result<i64, BoxError> {
        Ok(epoch.revision)
    }

    async fn handle(&self, revision: &mut i64, _: ()) -> i64 {
        // Closed only when the test ends.
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
        *revision
    }
}

const ROLE: &str = "gated";

async fn serving_node(
    etcd: &EtcdServer,
) -> anyhow::Result<(Node, RoleHandle<Gated>, Arc<Semaphore>)> {
    let permits = Arc::new(Semaphore::new(0));
    let mut node = Node::new(config(etcd, 0, 10));
    let role = node.add_role(
        ROLE,
        Gated {
            permits: permits.clone(),
        },
    )?;
    node.start().await?;
    wait_for("the node to serve", Duration::from_secs(10), || {
        role.is_serving().then_some(())
    })
    .await;
    Ok((node, role, permits))
}

/// Queues three requests behind a `handle` that waits, ends the term from
/// outside with `end_term`, waits until the node has noticed, then lets the
/// requests through: none of them may be answered.
async fn queued_requests_are_refused_after(
    end_term: impl AsyncFnOnce(&etcd_client::Client, &Epoch, i64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (node, role, permits) = serving_node(&etcd).await?;
    let status = role.status();
    let epoch = status.epoch.clone().expect("a serving role has an epoch");
    let lease = status.lease.expect("a serving role has a lease");

    let queued: Vec<_> = (0..3)
        .map(|_| tokio::spawn(role.call((), Duration::from_secs(10))))
        .collect();
    // The first request is inside `handle`, the others wait behind it.
    wait_for(
        "the first request to reach handle",
        Duration::from_secs(5),
        || (permits.available_permits() == 0).then_some(()),
    )
    .await;

    let client = etcd.client().await?;
    end_term(&client, &epoch, lease).await?;
    wait_for(
        "the node to notice its term ended",
        Duration::from_secs(5),
        || (role.status().state != RoleState::Serving).then_some(()),
    )
    .await;
    permits.add_permits(3);

    for (index, request) in queued.into_iter().enumerate() {
        let answer = request.await?;
        assert!(
            matches!(answer, Err(ServeError::NotActive { .. })),
            "request {index}, queued during the term at revision {}, was answered after the \
             term ended: {answer:?}",
            epoch.revision
        );
    }
    permits.close();
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_refused_once_the_leader_key_is_deleted() -> anyhow::Result<()> {
    queued_requests_are_refused_after(async |client, epoch, _| {
        client
            .kv_client()
            .delete(epoch.leader_key.as_str(), None)
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_refused_once_the_lease_is_revoked() -> anyhow::Result<()> {
    queued_requests_are_refused_after(async |client, _, lease| {
        client.lease_client().revoke(lease).await?;
        Ok(())
    })
    .await
}

/// A coordinator whose first activation (on any node) never finishes.
struct HangsOnce {
    hung: Arc<std::sync::atomic::AtomicBool>,
}

impl Coordinator for HangsOnce {
    type Meta = ();
    type Serving = ();
    type Request = ();
    type Response = ();

    fn decode(&self, _snapshot: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(&self, _: Epoch, _: (), _: FencedStore) -> Result<(), BoxError> {
        if !self.hung.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn handle(&self, _: &mut (), _: ()) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_that_hangs_is_abandoned_after_its_timeout_and_another_node_serves()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut nodes = Vec::new();
    let mut roles = Vec::new();
    for index in 0..2 {
        let mut config = config(&etcd, index, 10);
        config.coordinator.activate_timeout = Duration::from_secs(1);
        let mut node = Node::new(config);
        roles.push(node.add_role(ROLE, HangsOnce { hung: hung.clone() })?);
        node.start().await?;
        nodes.push(node);
    }
    let started = std::time::Instant::now();
    let serving = wait_for("a node to serve", Duration::from_secs(10), || {
        roles.iter().position(RoleHandle::is_serving)
    })
    .await;
    tracing::info!(took = ?started.elapsed(), "--- served after a hung activation");
    let stuck = 1 - serving;
    assert_eq!(
        roles[stuck].status().last_step_down,
        Some(standin::StepDownReason::ActivationTimedOut),
        "{:?}",
        roles[stuck].status()
    );
    assert_eq!(
        roles[serving].call((), Duration::from_secs(5)).await,
        Ok(())
    );
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
