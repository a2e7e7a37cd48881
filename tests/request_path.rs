//! The request path against a real etcd: a bounded queue that refuses when full, requests whose caller gave up dropped before the coordinator sees them (the gRPC caller's deadline too), batches with one term check, and the batching TSO client riding through failovers.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use standin::service::grpc::proto::ResignRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::kv::{Kv, KvRequest};
use standin::service::server::NodeServer;
use standin::service::{KvClient, TsoClient, TsoClientOptions};
use standin::testing::{EtcdServer, StandinProcess, free_loopback_port};
use standin::{BoxError, Snapshot};
use standin::{Config, Coordinator, Epoch, FencedStore, Node, ServeError};
use support::*;
use tokio::sync::Semaphore;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");

/// The request that holds its batch until the test lets it go.
const HOLDS: u32 = 0;

/// A coordinator that records the batches it is handed; the request
/// [`HOLDS`] waits for a permit.
struct Recording {
    gate: Arc<Semaphore>,
    handled: Arc<Mutex<Vec<u32>>>,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Coordinator for Recording {
    type Meta = ();
    type Serving = ();
    type Request = u32;
    type Response = u32;

    fn decode(&self, _: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(&self, _: Epoch, _: (), _: FencedStore) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle(&self, _: &mut (), request: u32) -> u32 {
        request
    }

    async fn handle_batch(&self, _: &mut (), requests: Vec<u32>) -> Vec<u32> {
        self.batches.lock().unwrap().push(requests.len());
        for &request in &requests {
            if request == HOLDS {
                self.gate
                    .acquire()
                    .await
                    .expect("the gate stays open")
                    .forget();
            }
            self.handled.lock().unwrap().push(request);
        }
        requests
    }
}

/// A node serving a [`Recording`] role with `config`, and what it records.
async fn start_recording(
    config: Config,
) -> anyhow::Result<(Node, standin::RoleHandle<Recording>, Recording)> {
    let recording = Recording {
        gate: Arc::new(Semaphore::new(0)),
        handled: Arc::default(),
        batches: Arc::default(),
    };
    let mut node = Node::new(config);
    let role = node.add_role(
        "recorded",
        Recording {
            gate: recording.gate.clone(),
            handled: Arc::clone(&recording.handled),
            batches: Arc::clone(&recording.batches),
        },
    )?;
    node.start().await?;
    standin::testing::the_single_serving(std::slice::from_ref(&role), CALL).await?;
    Ok((node, role, recording))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_requests_whose_caller_gave_up_never_reach_the_coordinator()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut config = config(&etcd, 0, 10);
    config.coordinator.queue_depth = 4;
    config.coordinator.max_batch = 8;
    let (node, role, recording) = start_recording(config).await?;
    let Recording {
        gate,
        handled,
        batches,
    } = recording;

    info!("--- a request holds the coordinator; four more fill the queue behind it");
    let held = tokio::spawn(role.call(HOLDS, CALL));
    wait_for("the coordinator to hold", Duration::from_secs(5), || {
        (batches.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    let short = Duration::from_millis(50);
    let gave_up: Vec<_> = [1, 2].map(|n| tokio::spawn(role.call(n, short))).into();
    let waiting: Vec<_> = [3, 4].map(|n| tokio::spawn(role.call(n, CALL))).into();

    info!("--- one more is refused at once, without waiting for the coordinator");
    let refused = role.call(5, CALL).await;
    assert!(
        matches!(refused, Err(ServeError::Overloaded { capacity: 4, .. })),
        "{refused:?}"
    );

    info!("--- two callers give up; then the coordinator is let go");
    for call in gave_up {
        let answer = call.await?;
        assert!(
            matches!(answer, Err(ServeError::TimedOut { .. })),
            "{answer:?}"
        );
    }
    gate.add_permits(1);
    assert_eq!(held.await?, Ok(HOLDS));
    for (call, request) in waiting.into_iter().zip([3, 4]) {
        assert_eq!(call.await?, Ok(request));
    }
    // The two that gave up were dropped before the coordinator saw them;
    // the two still waited for were handed over together.
    assert_eq!(*handled.lock().unwrap(), [HOLDS, 3, 4]);
    assert_eq!(*batches.lock().unwrap(), [1, 2]);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_role_would_answer_after_its_deadline_is_refused_and_never_handled()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut config = config(&etcd, 0, 10);
    config.coordinator.max_batch = 1;
    let (node, role, recording) = start_recording(config).await?;
    let Recording {
        gate,
        handled,
        batches,
    } = recording;
    let held = Duration::from_millis(400);
    // Starts a held batch and lets it go once it has been held `held`.
    let hold_batch = |released: Arc<Semaphore>| {
        let (role, batches) = (role.clone(), Arc::clone(&batches));
        async move {
            let started = batches.lock().unwrap().len();
            let call = tokio::spawn(role.call(HOLDS, CALL));
            wait_for("the held batch to start", Duration::from_secs(5), || {
                (batches.lock().unwrap().len() > started).then_some(())
            })
            .await;
            let since = std::time::Instant::now();
            let release = tokio::spawn(async move {
                wait_for("the batch to be held long enough", held * 4, || {
                    (since.elapsed() >= held).then_some(())
                })
                .await;
                released.add_permits(1);
            });
            (call, release)
        }
    };

    info!("--- a batch held 400 ms teaches the queue its rate; another starts");
    let (call, release) = hold_batch(gate.clone()).await;
    release.await?;
    assert_eq!(call.await?, Ok(HOLDS));
    let (busy, release) = hold_batch(gate.clone()).await;

    info!("--- a caller waiting 500 ms is queued behind it (about 400 ms ahead, then its own)");
    let within = Duration::from_millis(500);
    let queued = tokio::spawn(role.call(7, within));
    wait_for("the request to be queued", Duration::from_secs(5), || {
        (role.queued() == 1).then_some(())
    })
    .await;
    info!("--- one more would wait for two batches: refused at once");
    let refused = role.call(8, within).await;
    assert!(
        matches!(refused, Err(ServeError::WouldBeLate { left, .. }) if left == within),
        "{refused:?}"
    );
    release.await?;
    assert_eq!(busy.await?, Ok(HOLDS));
    info!("--- the queued one, taken when its batch would end after its deadline: refused then");
    let answer = queued.await?;
    assert!(
        matches!(answer, Err(ServeError::WouldBeLate { .. })),
        "{answer:?}"
    );
    info!("--- neither was handled; a caller with time is served");
    assert_eq!(role.call(9, CALL).await, Ok(9));
    assert_eq!(*handled.lock().unwrap(), [HOLDS, HOLDS, 9]);
    node.shutdown().await;
    Ok(())
}

/// A config for a client of the nodes under `root`.
fn client_config(etcd: &EtcdServer, root: &str) -> Config {
    let mut config = Config::default();
    config.etcd.endpoints = vec![etcd.endpoint()];
    config.etcd.root_path = root.to_owned();
    config
}

/// `standin run` nodes of `role` under `root`, and the address each serves on.
fn spawn_nodes(
    etcd: &EtcdServer,
    root: &str,
    role: &str,
    count: usize,
) -> anyhow::Result<Vec<(StandinProcess, String)>> {
    (0..count)
        .map(|_| {
            let address = format!("127.0.0.1:{}", free_loopback_port()?);
            let yaml = format!(
                "etcd:\n  endpoints: [{}]\n  rootPath: {root}\nnode:\n  address: {address}\n",
                etcd.endpoint()
            );
            let node = StandinProcess::spawn(BIN.as_ref(), &yaml, &["--role", role])?;
            Ok((node, address))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_grpc_caller_gave_up_while_it_waited_is_never_written() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let mut config = config(&etcd, 0, 10);
    config.node.address = Some(address.clone());
    let mut node = Node::new(config.clone());
    let kv = node.add_role("kv", Kv::new(config.kv.clone()))?;
    let mut server = NodeServer::bind(&config, address.parse()?, false).await?;
    server.add_kv(&config, kv.clone());
    node.start().await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(node, async {
        let _ = stopped.await;
    }));
    standin::testing::the_single_serving(std::slice::from_ref(&kv), CALL).await?;
    let client = KvClient::connect(&client_config(&etcd, &config.etcd.root_path)).await?;
    client.put("warm", b"up".to_vec(), CALL).await?;

    info!("--- etcd stops answering: a put waits on its write");
    etcd.pause()?;
    let put = |key: &str| KvRequest::Put {
        key: key.to_owned(),
        value: b"1".to_vec(),
    };
    let first = tokio::spawn(kv.call(put("first"), Duration::from_secs(20)));
    wait_for(
        "the coordinator to take the first put",
        Duration::from_secs(5),
        || (kv.queued() == 0).then_some(()),
    )
    .await;

    info!("--- a put over gRPC waits behind it; its caller waits 300 ms, and says so");
    let second = client
        .put("second", b"2".to_vec(), Duration::from_millis(300))
        .await;
    assert!(second.is_err(), "answered with etcd paused: {second:?}");

    info!("--- etcd answers again: the first lands, the second was dropped unwritten");
    etcd.resume()?;
    assert!(matches!(first.await?, Ok(Ok(_))));
    // Requests are handled in order: once a later put is acknowledged, the
    // second has had its turn.
    client.put("after", b"3".to_vec(), CALL).await?;
    let reader = etcd.client().await?;
    let written = |key: &str| {
        let mut reader = reader.clone();
        let key = format!("{}/meta/kv/{key}", config.etcd.root_path);
        async move {
            let found = reader.get(key, None).await.expect("etcd answers");
            !found.kvs().is_empty()
        }
    };
    assert!(written("first").await);
    assert!(
        !written("second").await,
        "a put whose caller had gone was written"
    );
    let _ = stop.send(());
    serving.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_callers_keep_their_order_and_never_share_a_timestamp_across_a_kill_and_a_resign()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let root = "standin-batched";
    let mut nodes = spawn_nodes(&etcd, root, "tso", 3)?;
    let options = TsoClientOptions {
        streams: 2,
        ..TsoClientOptions::from_config(&Config::default())
    };
    let client = Arc::new(TsoClient::connect_with(&client_config(&etcd, root), options).await?);
    eventually("the oracle to serve", Duration::from_secs(20), || async {
        client.allocate(1, CALL).await.ok()
    })
    .await;

    info!("--- 200 callers allocate in a loop");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..200u32)
        .map(|caller| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let count = caller % 3 + 1;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let answer = client.allocate(count, Duration::from_secs(20)).await;
                    let answer = answer.expect("every call is answered within its deadline");
                    assert_eq!(answer.count, count);
                    got.push((answer.first, answer.count, answer.epoch));
                }
                got
            })
        })
        .collect();
    let calls_now = || client.stats().calls;
    let progress = |after: u64| {
        eventually(
            "more calls answered",
            Duration::from_secs(20),
            move || async move { (calls_now() >= after).then_some(()) },
        )
    };
    progress(calls_now() + 2_000).await;

    let leader = |client: &TsoClient| client.leader().expect("a leader is known");
    info!("--- kill -9 of the leader");
    let address = leader(&client).session.address;
    let killed = nodes
        .iter()
        .position(|(_, at)| *at == address)
        .expect("the leader is one of the nodes");
    nodes[killed].0.kill()?;
    progress(calls_now() + 2_000).await;
    nodes[killed].0.restart()?;

    info!("--- the new leader resigns");
    let address = leader(&client).session.address;
    let mut coordination = CoordinationClient::connect(format!("http://{address}")).await?;
    coordination
        .resign(ResignRequest {
            role: "tso".into(),
            to: String::new(),
        })
        .await?;
    progress(calls_now() + 2_000).await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut every = Vec::new();
    let mut epochs = HashMap::new();
    for caller in callers {
        let got = caller.await?;
        for pair in got.windows(2) {
            assert!(
                pair[1].0 >= pair[0].0 + u64::from(pair[0].1),
                "a caller's timestamps went back: {:?} after {:?}",
                pair[1],
                pair[0]
            );
        }
        for &(first, count, epoch) in &got {
            *epochs.entry(epoch).or_insert(0u64) += 1;
            every.push((first, count));
        }
    }
    every.sort_unstable();
    for pair in every.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 + u64::from(pair[0].1),
            "two callers got the same timestamp: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    let stats = client.stats();
    info!(?stats, ?epochs, "answered");
    assert!(
        epochs.len() >= 3,
        "served by {} terms: {epochs:?}",
        epochs.len()
    );
    assert!(
        stats.batches * 2 < stats.calls,
        "callers were not batched: {stats:?}"
    );
    Ok(())
}
