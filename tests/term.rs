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

async fn serving_node(etcd: &EtcdServer) -> anyhow::Result<(Node, RoleHandle<Gated>, Arc<Semaphore>)> {
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
    wait_for("the first request to reach handle", Duration::from_secs(5), || {
        (permits.available_permits() == 0).then_some(())
    })
    .await;

    let client = etcd.client().await?;
    end_term(&client, &epoch, lease).await?;
    wait_for("the node to notice its term ended", Duration::from_secs(5), || {
        (role.status().state != RoleState::Serving).then_some(())
    })
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
