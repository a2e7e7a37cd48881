//! Group commit of a node's small control writes: the transactions its roles send at once (a takeover wave's published states) go to etcd as one transaction, each nested with its own conditions.
//!
//! Every etcd write is a raft proposal, applied and sent to every watcher
//! one by one. When a node that led hundreds of roles dies, each survivor
//! wins a few hundred elections in the same moment and publishes each
//! twice (its session, and the leader value): alone, that is hundreds of
//! proposals in a wave etcd has to finish on two cores. Here whatever
//! waits while a batch is in flight goes out in the next one, as nested
//! transactions of one request (etcd checks each nested transaction's
//! conditions on its own), so a single write costs one round trip as
//! before and a wave costs a few.
//!
//! Only for transactions that may run twice: a batch etcd refused as a
//! whole (two of its writes on one key, a lease gone) or whose answer was
//! lost is sent again one transaction at a time, so each caller gets its
//! own transaction's outcome.

use std::sync::Arc;

use etcd_client::{Client, Error, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::task::OwnedTask;

/// etcd's default `--max-txn-ops`. It bounds a request's operations
/// level by level, each nested transaction within what its parents left:
/// a request of `n` nested transactions leaves each of them `128 - n`.
const MAX_TXN_OPS: usize = 128;
/// The most operations (compares, or operations of one branch) a
/// transaction sent here may hold: the node's control writes hold two or
/// three.
const MAX_NESTED_OPS: usize = 8;
/// At most this many transactions in one request, so each keeps room for
/// its own operations. A request of 128 was refused as a whole ("too many
/// operations in txn request") and sent again one by one: a takeover
/// wave's published states cost 128 proposals instead of one.
const MAX_BATCH: usize = MAX_TXN_OPS - MAX_NESTED_OPS;
/// Batches in flight at once: while they are, the next one fills.
const IN_FLIGHT: usize = 4;

/// What one transaction came to.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Whether its conditions held (its success branch ran).
    pub succeeded: bool,
}

impl Outcome {
    /// The outcome of `response`.
    fn of(response: &TxnResponse) -> Self {
        Self {
            succeeded: response.succeeded(),
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, Error>>;

/// Sends transactions to etcd, those that wait together in one request.
/// Cheap to clone: the clones share one queue.
#[derive(Clone)]
pub(crate) struct TxnBatcher {
    queue: mpsc::UnboundedSender<(Txn, Reply)>,
    _dispatch: Arc<OwnedTask>,
}

impl TxnBatcher {
    /// A batcher sending on `client`.
    pub(crate) fn start(client: Client) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        Self {
            queue,
            _dispatch: Arc::new(OwnedTask::spawn(dispatch(client, waiting))),
        }
    }

    /// Runs `txn`, with whatever else waits to be sent. `txn` holds at
    /// most [`MAX_NESTED_OPS`] compares and as many operations per branch.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        let gone = || Error::InvalidArgs("the node's etcd writer has stopped".into());
        self.queue.send((txn, reply)).map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }
}

/// Takes the transactions waiting, up to a batch, whenever fewer than
/// `IN_FLIGHT` batches are on their way.
async fn dispatch(client: Client, mut waiting: mpsc::UnboundedReceiver<(Txn, Reply)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A caller that gave up is not written for.
        batch.retain(|(_, reply)| !reply.is_closed());
        let client = client.clone();
        tokio::spawn(async move {
            send(&client, batch).await;
            drop(slot);
        });
    }
}

/// Sends `batch` as one request, or each alone when that request fails.
async fn send(client: &Client, batch: Vec<(Txn, Reply)>) {
    if batch.len() > 1 {
        let nested: Vec<TxnOp> = batch
            .iter()
            .map(|(txn, _)| TxnOp::txn(txn.clone()))
            .collect();
        let mut kv = client.kv_client();
        if let Ok(response) = Box::pin(kv.txn(Txn::new().and_then(nested))).await {
            let answers = response.op_responses();
            if answers.len() == batch.len() {
                for ((_, reply), answer) in batch.into_iter().zip(answers) {
                    let outcome = match answer {
                        TxnOpResponse::Txn(nested) => Ok(Outcome::of(&nested)),
                        _ => Err(Error::InvalidArgs(
                            "etcd answered a nested transaction with another operation".into(),
                        )),
                    };
                    let _ = reply.send(outcome);
                }
                return;
            }
        }
    }
    let alone = batch.into_iter().map(|(txn, reply)| async move {
        let outcome = client
            .kv_client()
            .txn(txn)
            .await
            .map(|response| Outcome::of(&response));
        let _ = reply.send(outcome);
    });
    futures::future::join_all(alone).await;
}

#[cfg(test)]
mod tests {
    //! Against a real etcd, which the test kit starts.
    #[cfg(feature = "testing")]
    mod against_etcd {
        use etcd_client::{Compare, CompareOp};

        use super::super::*;
        use crate::testing::EtcdServer;

        /// A put of `value` at `key`, only if `key` holds `expect`.
        fn swap(key: &str, expect: &str, value: &str) -> Txn {
            Txn::new()
                .when([Compare::value(key, CompareOp::Equal, expect)])
                .and_then([TxnOp::put(key, value, None)])
        }

        #[tokio::test]
        async fn transactions_sent_together_share_requests_and_each_gets_its_own_outcome() {
            let etcd = EtcdServer::start().await.expect("etcd starts");
            let client = etcd.client().await.expect("client");
            // More than one request holds: every request must be taken whole.
            for index in 0..300 {
                client
                    .kv_client()
                    .put(format!("k{index}"), "old", None)
                    .await
                    .expect("seeded");
            }
            let proposals = "etcd_server_proposals_committed_total";
            let before = etcd.metric(proposals).await.expect("metric");
            let batcher = TxnBatcher::start(client.clone());
            // Even keys expect what they hold, odd ones something else.
            let outcomes = futures::future::join_all((0..300).map(|index| {
                let expect = if index % 2 == 0 { "old" } else { "other" };
                batcher.txn(swap(&format!("k{index}"), expect, "new"))
            }))
            .await;
            let after = etcd.metric(proposals).await.expect("metric");
            for (index, outcome) in outcomes.into_iter().enumerate() {
                let outcome = outcome.expect("etcd answers");
                assert_eq!(outcome.succeeded, index % 2 == 0, "k{index}");
                let value = client
                    .kv_client()
                    .get(format!("k{index}"), None)
                    .await
                    .expect("read");
                let expected: &[u8] = if index % 2 == 0 { b"new" } else { b"old" };
                assert_eq!(value.kvs()[0].value(), expected, "k{index}");
            }
            assert!(
                after - before <= 20.0,
                "300 transactions sent together took {} proposals",
                after - before
            );
        }

        #[tokio::test]
        async fn a_batch_etcd_refuses_as_a_whole_is_sent_again_one_by_one() {
            let etcd = EtcdServer::start().await.expect("etcd starts");
            let client = etcd.client().await.expect("client");
            let batcher = TxnBatcher::start(client.clone());
            // Two writes of one key cannot share a request: etcd refuses
            // it as a whole, and each then lands alone.
            let outcomes = futures::future::join_all((0..20).map(|index| {
                let key = if index < 2 { "same" } else { "other" };
                let key = format!("{key}{}", if index < 2 { 0 } else { index });
                batcher.txn(Txn::new().and_then([TxnOp::put(key, index.to_string(), None)]))
            }))
            .await;
            for outcome in outcomes {
                assert!(outcome.expect("etcd answers").succeeded);
            }
            let same = client.kv_client().get("same0", None).await.expect("read");
            assert_eq!(same.kvs()[0].version(), 2, "both writes of one key landed");
        }
    }
}
