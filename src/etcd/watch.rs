//! Many watches on a few gRPC streams: each watch has its own ID on a stream it shares, and its own receiver.
//!
//! etcd's `Watch` RPC is a bidirectional stream that carries any number of
//! watches, told apart by watch ID; Go's `clientv3` puts every watch of a
//! context on one such stream. etcd-client opens a stream per
//! `WatchClient::watch`, so a node that followed every role's election and
//! metadata that way would hold thousands of streams. A [`WatchHub`] keeps
//! a fixed number of streams ("lanes") and routes each response to the
//! watch it names. A stream that breaks fails every watch on it (each
//! caller resumes from its own revision, as with a stream of its own), and
//! the next watch opens a new one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use etcd_client::{
    Client, Error, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use tokio::sync::{Notify, mpsc};

/// Where a watch's responses wait for it: etcd's responses, then why its
/// stream ended, if it did. A queue that allocates only when it holds
/// something: a node keeps thousands of idle watches, and a channel would
/// hold a block of 32 slots for each.
#[derive(Default)]
struct Inbox {
    queue: Mutex<(VecDeque<Result<WatchResponse, Error>>, bool)>,
    arrived: Notify,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Result<WatchResponse, Error>>, bool)> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, item: Result<WatchResponse, Error>) {
        self.lock().0.push_back(item);
        self.arrived.notify_one();
    }

    /// Nothing more will arrive.
    fn close(&self) {
        self.lock().1 = true;
        self.arrived.notify_one();
    }

    async fn next(&self) -> Option<Result<WatchResponse, Error>> {
        loop {
            {
                let mut queue = self.lock();
                if let Some(item) = queue.0.pop_front() {
                    return Some(item);
                }
                if queue.1 {
                    return None;
                }
            }
            // A push between the check and here left a permit: no wake-up is lost.
            self.arrived.notified().await;
        }
    }
}

type Responses = Arc<Inbox>;

/// A handful of etcd watch streams that any number of watches share.
/// Cheap to clone; the streams close once the hub and every watch on them
/// are dropped.
#[derive(Clone)]
pub(crate) struct WatchHub {
    inner: Arc<Hub>,
}

struct Hub {
    client: Client,
    /// The largest response a stream accepts (one revision's events may
    /// not be split by etcd).
    message_limit: usize,
    /// The streams; a watch takes lane `id % lanes.len()`.
    lanes: Vec<tokio::sync::Mutex<Option<Lane>>>,
    /// IDs are given by us, not etcd, so a response can be routed before
    /// its watch's creation is confirmed; unique across the hub's streams.
    next_id: AtomicI64,
}

/// One open stream, as its watches and the hub see it.
#[derive(Clone)]
struct Lane {
    /// Creations and cancellations, written to the stream in order.
    requests: mpsc::UnboundedSender<Request>,
    /// Where each watch's responses go; `None` once the stream ended.
    routes: Arc<Mutex<Option<HashMap<i64, Responses>>>>,
}

enum Request {
    Create(Vec<u8>, WatchOptions),
    Cancel(i64),
}

impl WatchHub {
    /// A hub of `lanes` streams (at least one) on `client`, each accepting
    /// responses up to `message_limit` bytes.
    pub(crate) fn new(client: Client, lanes: usize, message_limit: usize) -> Self {
        Self {
            inner: Arc::new(Hub {
                client,
                message_limit,
                lanes: (0..lanes.max(1))
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next_id: AtomicI64::new(1),
            }),
        }
    }

    /// The etcd client the hub's streams run on.
    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Watches `key` with `options` (their watch ID is the hub's) on one of
    /// the hub's streams, opening it if it is not open. The first response
    /// confirms the creation, as on a stream of its own.
    pub(crate) async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<Watch, Error> {
        let hub = &self.inner;
        let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
        let options = options.unwrap_or_default().with_watch_id(id);
        let key = key.into();
        let responses = Responses::default();
        let index = usize::try_from(id).unwrap_or_default() % hub.lanes.len();
        let mut slot = hub.lanes[index].lock().await;
        if let Some(lane) = slot.as_ref()
            && lane.add(id, responses.clone())
        {
            if lane
                .requests
                .send(Request::Create(key.clone(), options.clone()))
                .is_ok()
            {
                return Ok(Watch::new(id, responses, lane.clone()));
            }
            // The stream has ended: the watch goes on a new one.
            if let Some(routes) = lane.routes().as_mut() {
                routes.remove(&id);
            }
        }
        // Boxed: a watch's future stays small for its whole life, not the
        // size of a stream's opening, which only the first one needs.
        let lane = Box::pin(hub.open(key, options, id, responses.clone())).await?;
        *slot = Some(lane.clone());
        Ok(Watch::new(id, responses, lane))
    }
}

impl Hub {
    /// Opens a stream whose first watch is `id`, and starts routing it.
    async fn open(
        &self,
        key: Vec<u8>,
        options: WatchOptions,
        id: i64,
        first: Responses,
    ) -> Result<Lane, Error> {
        let (writer, reader) = self
            .client
            .watch_client()
            .max_decoding_message_size(self.message_limit)
            .watch(key, Some(options))
            .await?
            .split();
        let (requests, queued) = mpsc::unbounded_channel();
        let lane = Lane {
            requests,
            routes: Arc::new(Mutex::new(Some(HashMap::from([(id, first)])))),
        };
        tokio::spawn(run(writer, reader, queued, lane.routes.clone()));
        Ok(lane)
    }
}

impl Lane {
    fn routes(&self) -> MutexGuard<'_, Option<HashMap<i64, Responses>>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Routes watch `id` here; false if the stream has ended.
    fn add(&self, id: i64, responses: Responses) -> bool {
        self.routes()
            .as_mut()
            .map(|routes| routes.insert(id, responses))
            .is_some()
    }

    /// Stops routing watch `id`, and cancels it in etcd if it was still
    /// live there.
    fn forget(&self, id: i64) {
        let removed = self.routes().as_mut().and_then(|routes| routes.remove(&id));
        if let Some(inbox) = removed {
            inbox.close();
            let _ = self.requests.send(Request::Cancel(id));
        }
    }
}

/// Writes a stream's requests and routes its responses until etcd ends it,
/// or every handle on it is gone; then fails every watch still on it.
async fn run(
    mut writer: WatchRequestSender,
    mut reader: WatchResponseStream,
    mut requests: mpsc::UnboundedReceiver<Request>,
    routes: Arc<Mutex<Option<HashMap<i64, Responses>>>>,
) {
    let lock = || {
        routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    // Reading and writing run side by side: a write waiting on etcd's flow
    // control must not stop the reads that let etcd make progress.
    let reading = async {
        loop {
            let response = match reader.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return "etcd closed the watch stream".to_owned(),
                Err(error) => return format!("the watch stream broke: {error}"),
            };
            let mut routes = lock();
            let Some(routes) = routes.as_mut() else {
                continue;
            };
            let id = response.watch_id();
            let ended = response.canceled();
            if let Some(inbox) = routes.get(&id) {
                inbox.push(Ok(response));
                if ended {
                    inbox.close();
                    routes.remove(&id);
                }
            }
        }
    };
    let writing = async {
        while let Some(request) = requests.recv().await {
            let sent = match request {
                Request::Create(key, options) => writer.watch(key, Some(options)).await,
                Request::Cancel(id) => writer.cancel(id).await,
            };
            if let Err(error) = sent {
                return format!("writing to the watch stream failed: {error}");
            }
        }
        String::new()
    };
    let reason = tokio::select! {
        reason = reading => reason,
        reason = writing => reason,
    };
    let orphans = lock().take().unwrap_or_default();
    for inbox in orphans.into_values() {
        inbox.push(Err(Error::WatchError(reason.clone())));
        inbox.close();
    }
}

/// One watch on a hub's stream: its responses, in order. Dropping it
/// cancels it in etcd.
pub(crate) struct Watch {
    id: i64,
    responses: Responses,
    lane: Lane,
}

impl Watch {
    fn new(id: i64, responses: Responses, lane: Lane) -> Self {
        Self {
            id,
            responses,
            lane,
        }
    }

    /// The watch's next response; an error once its stream broke, `None`
    /// after etcd cancelled it.
    pub(crate) async fn message(&mut self) -> Result<Option<WatchResponse>, Error> {
        self.responses.next().await.transpose()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.lane.forget(self.id);
    }
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    //! Against a real etcd, which the test kit starts, but for the range end.
    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        use super::prefix_end;
        assert_eq!(prefix_end(b"a/meta/"), b"a/meta0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[cfg(feature = "testing")]
    mod against_etcd {
        use std::time::Duration;

        use etcd_client::EventType;

        use super::super::*;
        use crate::testing::{EtcdServer, FaultProxy, wait_until};

        const DEADLINE: Duration = Duration::from_secs(10);

        /// The next response of `watch` that carries events, within the deadline.
        async fn next_events(watch: &mut Watch) -> WatchResponse {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    let response = watch
                        .message()
                        .await
                        .expect("the stream holds")
                        .expect("the watch is live");
                    if !response.events().is_empty() {
                        return response;
                    }
                }
            })
            .await
            .expect("an event arrives")
        }

        async fn metric_becomes(etcd: &EtcdServer, name: &str, value: f64) {
            wait_until(&format!("{name} = {value}"), DEADLINE, || async {
                (etcd.metric(name).await.ok()? == value).then_some(())
            })
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        }

        #[tokio::test]
        async fn many_watches_share_the_hubs_streams_and_each_gets_only_its_own_events() {
            let etcd = EtcdServer::start().await.expect("etcd starts");
            let client = etcd.client().await.expect("client");
            let hub = WatchHub::new(client.clone(), 2, 4 << 20);
            let mut watches = Vec::new();
            for index in 0..40 {
                let mut watch = hub
                    .watch(format!("k{index}"), None)
                    .await
                    .expect("watch opens");
                let created = watch.message().await.expect("stream").expect("live");
                assert!(created.created(), "the first response confirms the watch");
                watches.push(watch);
            }
            metric_becomes(&etcd, "etcd_debugging_mvcc_watch_stream_total", 2.0).await;
            metric_becomes(&etcd, "etcd_debugging_mvcc_watcher_total", 40.0).await;

            let mut kv = client.kv_client();
            for index in 0..40 {
                kv.put(format!("k{index}"), format!("v{index}"), None)
                    .await
                    .expect("put");
            }
            for (index, watch) in watches.iter_mut().enumerate() {
                let response = next_events(watch).await;
                let [event] = response.events() else {
                    panic!("one event for k{index}, got {:?}", response.events());
                };
                assert_eq!(event.event_type(), EventType::Put);
                assert_eq!(
                    event.kv().expect("kv").key(),
                    format!("k{index}").as_bytes()
                );
            }

            // Dropping a watch cancels it in etcd; the stream stays for the rest.
            watches.truncate(10);
            metric_becomes(&etcd, "etcd_debugging_mvcc_watcher_total", 10.0).await;
            metric_becomes(&etcd, "etcd_debugging_mvcc_watch_stream_total", 2.0).await;
            kv.delete("k3", None).await.expect("delete");
            let response = next_events(&mut watches[3]).await;
            assert_eq!(response.events()[0].event_type(), EventType::Delete);
        }

        #[tokio::test]
        async fn a_broken_stream_fails_its_watches_and_the_next_watch_opens_a_new_one() {
            let etcd = EtcdServer::start().await.expect("etcd starts");
            let proxy = FaultProxy::start(&etcd.endpoint()).await.expect("proxy");
            let config = crate::config::EtcdConfig {
                endpoints: vec![proxy.endpoint()],
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                ..crate::config::EtcdConfig::default()
            };
            let client = crate::etcd::connect(&config).await.expect("client");
            let hub = WatchHub::new(client, 1, 4 << 20);
            let mut first = hub.watch("a", None).await.expect("watch opens");
            let mut second = hub.watch("b", None).await.expect("watch opens");
            for watch in [&mut first, &mut second] {
                assert!(
                    watch
                        .message()
                        .await
                        .expect("stream")
                        .expect("live")
                        .created()
                );
            }

            proxy.cut();
            for watch in [&mut first, &mut second] {
                let ended = tokio::time::timeout(DEADLINE, watch.message())
                    .await
                    .expect("the break is reported");
                assert!(ended.is_err(), "a broken stream is an error, got {ended:?}");
            }

            proxy.heal();
            let mut again = wait_until("a watch opens after the heal", DEADLINE, || async {
                hub.watch("a", None).await.ok()
            })
            .await
            .expect("the hub opens a new stream");
            assert!(
                again
                    .message()
                    .await
                    .expect("stream")
                    .expect("live")
                    .created()
            );
            etcd.client()
                .await
                .expect("client")
                .kv_client()
                .put("a", "after", None)
                .await
                .expect("put");
            let response = next_events(&mut again).await;
            assert_eq!(response.events()[0].kv().expect("kv").value(), b"after");
        }
    }
}
