//! Embedding standin in a ractor service: roles under the embedder's supervisor, requests and status as actor messages, `try_call`, the test kit's waits and stores, and what stopping (or forgetting to) leaves behind.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use standin::testing::{EtcdServer, the_single_serving, wait_until};
use standin::{
    BoxError, CallError, Coordinator, Epoch, FenceError, FencedStore, Node, RoleHandle, RoleMsg,
    RoleState, RoleStatus, ServeError, Snapshot,
};
use support::*;
use tracing::info;

/// The README's ID allocator: the high-water mark survives failovers in etcd.
struct Ids;

struct IdsServing {
    next: u64,
    store: FencedStore,
}

impl Coordinator for Ids {
    type Meta = u64;
    type Serving = IdsServing;
    type Request = ();
    type Response = Result<u64, BoxError>;

    fn decode(&self, snapshot: Snapshot) -> Result<u64, BoxError> {
        let saved = snapshot
            .entries
            .get("next")
            .map(|v| String::from_utf8_lossy(v).parse::<u64>());
        Ok(saved.transpose()?.unwrap_or(0))
    }

    async fn activate(
        &self,
        _: Epoch,
        next: u64,
        store: FencedStore,
    ) -> Result<IdsServing, BoxError> {
        Ok(IdsServing { next, store })
    }

    async fn handle(&self, serving: &mut IdsServing, _: ()) -> Result<u64, BoxError> {
        serving.next += 1;
        serving.store.put("next", serving.next.to_string()).await?;
        Ok(serving.next)
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn ids_node(
    etcd: &EtcdServer,
    index: usize,
    ttl: u64,
) -> anyhow::Result<(Node, RoleHandle<Ids>)> {
    let mut node = Node::new(config(etcd, index, ttl));
    let ids = node.add_role("ids", Ids)?;
    node.start().await?;
    Ok((node, ids))
}

/// An embedder's actor: records the supervision events and statuses it gets.
struct Embedder;

#[derive(Default, Clone)]
struct Seen {
    events: Arc<Mutex<Vec<String>>>,
    states: Arc<Mutex<Vec<RoleState>>>,
}

enum EmbedderMsg {
    Status(RoleStatus),
}

impl Actor for Embedder {
    type Msg = EmbedderMsg;
    type State = Seen;
    type Arguments = Seen;

    async fn pre_start(
        &self,
        _: ActorRef<EmbedderMsg>,
        seen: Seen,
    ) -> Result<Seen, ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _: ActorRef<EmbedderMsg>,
        message: EmbedderMsg,
        seen: &mut Seen,
    ) -> Result<(), ActorProcessingErr> {
        let EmbedderMsg::Status(status) = message;
        seen.states.lock().unwrap().push(status.state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<EmbedderMsg>,
        event: SupervisionEvent,
        seen: &mut Seen,
    ) -> Result<(), ActorProcessingErr> {
        let kind = match event {
            SupervisionEvent::ActorStarted(_) => "started",
            SupervisionEvent::ActorTerminated(..) => "terminated",
            SupervisionEvent::ActorFailed(..) => "failed",
            _ => "other",
        };
        seen.events.lock().unwrap().push(kind.to_owned());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_under_the_embedders_supervisor_talks_in_actor_messages() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let seen = Seen::default();
    let (embedder, _) = Actor::spawn(None, Embedder, seen.clone()).await?;

    info!("--- the role's supervisor starts linked under the embedder's actor");
    let mut node = Node::new(config(&etcd, 0, 10));
    let ids = node.add_role("ids", Ids)?;
    assert!(
        ids.actor().await.is_none(),
        "no actor before the node starts"
    );
    node.start_linked(embedder.get_cell()).await?;
    ids.send_status_to(embedder.clone(), EmbedderMsg::Status);
    the_single_serving(std::slice::from_ref(&ids), WAIT).await?;

    info!("--- requests as actor messages, and try_call without a nested Result");
    let actor = ids.actor().await.expect("a started role has an actor");
    let again = ids.actor().await.expect("still an actor");
    assert_eq!(
        actor.get_id(),
        again.get_id(),
        "one endpoint, however often asked"
    );
    let first = ractor::call_t!(actor, RoleMsg::Call, 2000, ())?;
    assert!(matches!(first, Ok(Ok(1))), "the first ID through the actor");
    let second: u64 = ids.try_call((), WAIT).await?;
    assert_eq!(second, 2);

    info!("--- state changes arrive as messages");
    wait_until("the embedder saw serving", WAIT, || async {
        seen.states
            .lock()
            .unwrap()
            .contains(&RoleState::Serving)
            .then_some(())
    })
    .await?;

    info!("--- shutdown ends in a final state the embedder's supervisor hears about");
    node.shutdown().await;
    assert_eq!(ids.status().state, RoleState::Stopped);
    assert!(matches!(
        ids.try_call((), WAIT).await,
        Err(CallError::NotServed(ServeError::Stopped { .. }))
    ));
    let answer = ractor::call_t!(actor, RoleMsg::Call, 2000, ());
    assert!(answer.is_err() || matches!(answer, Ok(Err(ServeError::Stopped { .. }))));
    wait_until(
        "the embedder saw the supervisor terminate",
        WAIT,
        || async {
            seen.events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e == "terminated")
                .then_some(())
        },
    )
    .await?;
    wait_until("the embedder saw the final state", WAIT, || async {
        (seen.states.lock().unwrap().last() == Some(&RoleState::Stopped)).then_some(())
    })
    .await?;
    embedder.stop(None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropped_without_shutdown_stops_serving_and_gives_up_its_lease() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::start().await?;
    // A long TTL: a takeover well inside it proves the lease was revoked.
    let ttl = 10;
    let (first, first_ids) = ids_node(&etcd, 0, ttl).await?;
    the_single_serving(std::slice::from_ref(&first_ids), WAIT).await?;
    let (second, second_ids) = ids_node(&etcd, 1, ttl).await?;
    assert_eq!(first_ids.try_call((), WAIT).await?, 1);
    let old_store = first_ids
        .fenced_store()
        .expect("a serving role has a store");

    info!("--- drop the serving node without shutdown");
    let dropped = Instant::now();
    drop(first);
    assert_eq!(first_ids.status().state, RoleState::Stopped);
    assert!(matches!(
        first_ids.call((), WAIT).await,
        Err(ServeError::Stopped { .. })
    ));
    let id = wait_until(
        "the standby serves",
        Duration::from_secs(ttl / 2),
        || async {
            second_ids
                .try_call((), Duration::from_millis(500))
                .await
                .ok()
        },
    )
    .await?;
    let took = dropped.elapsed();
    info!(?took, "taken over after the drop");
    assert_eq!(
        id, 2,
        "the new active continues from the saved high-water mark"
    );

    info!("--- the dropped node's store is fenced");
    let refused = old_store.put("next", "1").await;
    assert!(
        matches!(refused, Err(FenceError::Fenced { .. })),
        "{refused:?}"
    );
    second.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_wait_for_leader_a_call_is_served_here_or_sent_to_the_leader() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (first, first_ids) = ids_node(&etcd, 0, 10).await?;

    info!("--- right after start, wait for a leader, then call: served at once");
    let status = first_ids.wait_for_leader(WAIT).await?;
    assert!(
        matches!(status.state, RoleState::Activating | RoleState::Serving),
        "{status:?}"
    );
    assert_eq!(first_ids.try_call((), WAIT).await?, 1);

    info!("--- a second node waits for the leader, and names it when called");
    let (second, second_ids) = ids_node(&etcd, 1, 10).await?;
    let status = second_ids.wait_for_leader(WAIT).await?;
    assert_eq!(status.state, RoleState::Standby);
    let answer = second_ids.try_call((), WAIT).await;
    assert!(
        matches!(
            &answer,
            Err(CallError::NotServed(ServeError::NotActive { leader: Some(leader), .. }))
                if *leader == first.address()
        ),
        "{answer:?}"
    );
    second.shutdown().await;
    first.shutdown().await;
    Ok(())
}
