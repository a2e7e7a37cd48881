//! A `standin run` node keeps serving its role and its other clients while one client floods it: a thousand streams never read, connections that say nothing or garbage, more connections than allowed, oversized and huge-named requests.

mod support;

use std::time::{Duration, Instant};

use standin::Config;
use standin::service::TsoClient;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::kv_client::KvClient as KvStub;
use standin::service::grpc::proto::{PutRequest, ResignRequest, StatusRequest, WatchLeaderRequest};
use standin::testing::{EtcdServer, StandinProcess, free_loopback_port};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
const MAX_CONNECTIONS: usize = 40;
const STREAMS_PER_CONNECTION: usize = 100;
const FLOOD_CONNECTIONS: usize = 10;
const MAX_REQUEST_BYTES: usize = 64 << 10;
/// The longest a well-behaved client's allocation may take during the flood.
const ALLOCATION_BOUND: Duration = Duration::from_secs(1);

/// Allocates `rounds` timestamps one by one; the slowest allocation.
async fn allocations(client: &TsoClient, rounds: usize) -> anyhow::Result<Duration> {
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        let started = Instant::now();
        client.allocate(1, Duration::from_secs(5)).await?;
        slowest = slowest.max(started.elapsed());
    }
    Ok(slowest)
}

/// Whether the server closes `stream` within `within` (an end of stream or
/// a reset, not a timeout).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An HTTP/2 server may say something (SETTINGS, GOAWAY) before it closes.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_starve_the_role_or_its_other_clients() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let yaml = format!(
        "etcd:\n  endpoints: [{}]\n  rootPath: standin-flood\nnode:\n  address: {address}\n\
         server:\n  limits:\n    maxConnections: {MAX_CONNECTIONS}\n    handshakeTimeout: 1s\n    \
         maxRequestBytes: {MAX_REQUEST_BYTES}\n",
        etcd.endpoint()
    );
    let node = StandinProcess::spawn(BIN.as_ref(), &yaml, &["--role", "tso", "--role", "kv"])?;
    let url = format!("http://{address}");
    let epoch_of_tso = || async {
        let mut client = CoordinationClient::connect(url.clone()).await.ok()?;
        let status = client.status(StatusRequest {}).await.ok()?.into_inner();
        let tso = status.roles.into_iter().find(|r| r.role == "tso")?;
        (tso.state == "serving").then_some(tso.epoch)
    };
    let epoch = eventually(
        "the node to serve tso",
        Duration::from_secs(20),
        epoch_of_tso,
    )
    .await;
    let mut config = Config::default();
    config.etcd.endpoints = vec![etcd.endpoint()];
    config.etcd.root_path = "standin-flood".into();
    let client = TsoClient::connect(&config).await?;
    allocations(&client, 5).await?;

    info!(
        "--- {FLOOD_CONNECTIONS} connections open {STREAMS_PER_CONNECTION} WatchLeader streams each and never read them"
    );
    let mut flood = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        let opened = futures::future::try_join_all((0..STREAMS_PER_CONNECTION).map(|_| {
            let mut watcher = CoordinationClient::new(channel.clone());
            async move {
                let request = WatchLeaderRequest { role: "tso".into() };
                watcher.watch_leader(request).await
            }
        }))
        .await?;
        flood.push((channel, opened));
    }
    let streams: usize = flood.iter().map(|(_, opened)| opened.len()).sum();
    assert_eq!(streams, FLOOD_CONNECTIONS * STREAMS_PER_CONNECTION);
    let slowest = allocations(&client, 20).await?;
    info!(?slowest, "allocations during the stream flood");
    assert!(
        slowest < ALLOCATION_BOUND,
        "an allocation took {slowest:?} during the stream flood"
    );

    info!("--- connections that send nothing, or garbage, are closed");
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(&address).await?);
    }
    let mut garbage = TcpStream::connect(&address).await?;
    garbage
        .write_all(b"\x16\x03\x01 this is not HTTP/2 at all \xff\xfe\r\n\r\n")
        .await?;
    assert!(
        closed_within(&mut garbage, Duration::from_secs(3)).await,
        "garbage kept its connection"
    );
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "a silent connection stayed open"
        );
    }
    let slowest = allocations(&client, 5).await?;
    assert!(
        slowest < ALLOCATION_BOUND,
        "an allocation took {slowest:?} after the silent connections"
    );

    info!(
        "--- past maxConnections, a new connection is closed at once; the open ones keep working"
    );
    let mut crowd = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        crowd.push(TcpStream::connect(&address).await?);
    }
    let mut turned_away = 0;
    for stream in &mut crowd {
        if closed_within(stream, Duration::from_millis(300)).await {
            turned_away += 1;
        }
    }
    // The flood's connections and the client's own hold slots already.
    assert!(
        turned_away >= FLOOD_CONNECTIONS,
        "only {turned_away} of {MAX_CONNECTIONS} connections over the cap were turned away"
    );
    let slowest = allocations(&client, 5).await?;
    assert!(
        slowest < ALLOCATION_BOUND,
        "an allocation took {slowest:?} at the connection cap"
    );
    drop(crowd);

    info!(
        "--- an oversized request is refused without harm, and a huge role name is not echoed whole"
    );
    let mut kv = KvStub::connect(url.clone()).await?;
    let oversized = PutRequest {
        key: "big".into(),
        value: vec![7; MAX_REQUEST_BYTES * 2],
    };
    let refused = kv
        .put(oversized)
        .await
        .expect_err("an oversized put was accepted");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let mut coordination = CoordinationClient::connect(url.clone()).await?;
    let huge = ResignRequest {
        role: "r".repeat(MAX_REQUEST_BYTES / 2),
        ..Default::default()
    };
    let refused = coordination
        .resign(huge)
        .await
        .expect_err("a resign of no role was accepted");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().len() < 512,
        "the refusal is {} bytes",
        refused.message().len()
    );

    info!("--- through all of it the role kept serving at the same epoch");
    assert_eq!(
        epoch_of_tso().await,
        Some(epoch),
        "tso stepped down during the flood"
    );
    let log = node.log();
    assert!(
        log.contains("closed connections over server.limits.maxConnections"),
        "{}",
        node.log_tail(20)
    );
    assert!(!log.contains("stepping down"), "{}", node.log_tail(20));
    drop(flood);
    Ok(())
}
