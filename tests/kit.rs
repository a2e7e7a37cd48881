//! The fault-injection pieces of the test kit against real etcd: a 3-member cluster losing its leader, a killed and restarted server, the fault proxy's modes, and a `standin run` process frozen, killed and restarted.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use standin::config::EtcdConfig;
use standin::service::grpc::proto::StatusRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::testing::{
    EtcdCluster, EtcdServer, FaultProxy, ProxyMode, StandinProcess, free_loopback_port,
};
use support::*;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");

/// Reads `key`'s value through `client`, `None` when absent or on any error.
async fn value_of(client: &mut etcd_client::Client, key: &str) -> Option<Vec<u8>> {
    let got = client.get(key, None).await.ok()?;
    got.kvs().first().map(|kv| kv.value().to_vec())
}

/// A client to `endpoint` alone, with `timeout` per request and for connecting.
async fn client_with_timeout(
    endpoint: &str,
    timeout: Duration,
) -> anyhow::Result<etcd_client::Client> {
    let config = EtcdConfig {
        endpoints: vec![endpoint.to_owned()],
        connect_timeout: timeout,
        request_timeout: timeout,
        ..EtcdConfig::default()
    };
    Ok(standin::etcd::connect(&config).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_survives_losing_its_leader() -> anyhow::Result<()> {
    init_logging();
    let mut cluster = EtcdCluster::start(3).await?;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(cluster.endpoint(1), endpoints[1]);
    let mut client = cluster.client().await?;

    info!("--- every member serves reads of what the cluster wrote");
    client.put("kit/before", "1", None).await?;
    for member in 0..3 {
        let mut alone = cluster.member(member)?.client().await?;
        let seen = eventually("the write on every member", CALL, || {
            let mut alone = alone.clone();
            async move { value_of(&mut alone, "kit/before").await }
        })
        .await;
        assert_eq!(seen, b"1");
        alone.status().await?;
    }

    info!("--- a paused follower does not stop the cluster");
    let leader = cluster.leader().await?;
    let follower = (leader + 1) % 3;
    cluster.pause(follower)?;
    // Through the leader alone: a client to every endpoint may pick the
    // frozen one, and that request would just time out.
    let mut through_leader = cluster.member(leader)?.client().await?;
    through_leader.put("kit/while-paused", "2", None).await?;
    cluster.resume(follower)?;

    info!("--- kill the leader (member {leader})");
    cluster.kill(leader)?;
    assert!(
        cluster.pause(leader).is_err(),
        "a killed member takes no signals"
    );
    let successor = eventually("a new leader", Duration::from_secs(20), || async {
        cluster
            .leader()
            .await
            .ok()
            .filter(|&member| member != leader)
    })
    .await;
    info!("member {successor} leads now");
    eventually(
        "a write through the other endpoints",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move { client.put("kit/after", "3", None).await.ok() }
        },
    )
    .await;

    info!("--- restart the old leader: it rejoins and catches up");
    cluster.restart(leader).await?;
    let mut rejoined = cluster.member(leader)?.client().await?;
    let seen = eventually("the missed write on the restarted member", CALL, || {
        let mut rejoined = rejoined.clone();
        async move { value_of(&mut rejoined, "kit/after").await }
    })
    .await;
    assert_eq!(seen, b"3");
    let members = rejoined.member_list().await?;
    assert_eq!(members.members().len(), 3);
    assert_eq!(
        value_of(&mut rejoined, "kit/before").await.as_deref(),
        Some(&b"1"[..])
    );
    let still = cluster.leader().await?;
    assert!(still < 3);
    Ok(())
}

#[tokio::test]
async fn a_killed_server_restarts_on_its_port_with_its_data() -> anyhow::Result<()> {
    init_logging();
    let mut etcd = EtcdServer::start().await?;
    let endpoint = etcd.endpoint();
    etcd.client().await?.put("kit/kept", "yes", None).await?;

    info!("--- kill it: nothing answers");
    etcd.kill()?;
    etcd.kill()?; // a second kill does nothing
    assert!(etcd.pause().is_err(), "a killed server takes no signals");
    let mut client = client_with_timeout(&endpoint, Duration::from_millis(500)).await?;
    assert!(client.get("kit/kept", None).await.is_err());

    info!("--- restart it: same endpoint, same data");
    etcd.restart().await?;
    assert_eq!(etcd.endpoint(), endpoint);
    let mut client = etcd.client().await?;
    assert_eq!(
        value_of(&mut client, "kit/kept").await.as_deref(),
        Some(&b"yes"[..])
    );
    etcd.pause()?;
    etcd.resume()?;
    client.put("kit/after-restart", "ok", None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_forwards_cuts_blackholes_and_delays() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let proxy = FaultProxy::start(&etcd.endpoint()).await?;
    assert_ne!(proxy.endpoint(), etcd.endpoint());
    assert_eq!(proxy.mode(), ProxyMode::Forward);
    let mut direct = etcd.client().await?;
    let mut proxied = client_with_timeout(&proxy.endpoint(), Duration::from_secs(5)).await?;

    info!("--- forward: etcd sees writes made through the proxy");
    proxied.put("kit/proxied", "1", None).await?;
    assert_eq!(
        value_of(&mut direct, "kit/proxied").await.as_deref(),
        Some(&b"1"[..])
    );

    info!("--- cut: a request fails fast, well inside the client's 5s timeout");
    proxy.cut();
    assert_eq!(proxy.mode(), ProxyMode::Cut);
    for attempt in ["open connection dropped", "new connection refused"] {
        let started = Instant::now();
        let failed = proxied.get("kit/proxied", None).await;
        let took = started.elapsed();
        assert!(failed.is_err(), "{attempt}: the request succeeded");
        assert!(
            took < Duration::from_secs(2),
            "{attempt}: failing took {took:?}"
        );
    }

    info!("--- heal: the same client works again");
    proxy.heal();
    assert_eq!(proxy.mode(), ProxyMode::Forward);
    eventually("a request through the healed proxy", CALL, || {
        let mut proxied = proxied.clone();
        async move { value_of(&mut proxied, "kit/proxied").await }
    })
    .await;

    info!("--- blackhole: a request times out instead of failing");
    let timeout = Duration::from_millis(500);
    let mut short = client_with_timeout(&proxy.endpoint(), timeout).await?;
    short.get("kit/proxied", None).await?;
    proxy.blackhole();
    assert_eq!(proxy.mode(), ProxyMode::Blackhole);
    let started = Instant::now();
    let failed = short.get("kit/proxied", None).await;
    let took = started.elapsed();
    assert!(failed.is_err(), "a blackholed request succeeded");
    assert!(
        took >= timeout - Duration::from_millis(50),
        "it failed after only {took:?}"
    );
    assert!(took < Duration::from_secs(3), "it took {took:?}");
    proxy.heal();
    eventually("a request after the blackhole", CALL, || {
        let mut short = short.clone();
        async move { value_of(&mut short, "kit/proxied").await }
    })
    .await;

    info!("--- delay: a request takes at least the delay");
    let delay = Duration::from_millis(200);
    proxy.delay(delay);
    assert_eq!(proxy.mode(), ProxyMode::Delay(delay));
    let started = Instant::now();
    proxied.put("kit/delayed", "2", None).await?;
    let took = started.elapsed();
    assert!(took >= delay, "a delayed request took only {took:?}");
    proxy.heal();
    assert_eq!(
        value_of(&mut direct, "kit/delayed").await.as_deref(),
        Some(&b"2"[..])
    );

    info!("--- drop: the proxy's port closes");
    let address = proxy.endpoint();
    drop(proxy);
    eventually("the proxy's port to close", CALL, || {
        let address = address.clone();
        async move { tokio::net::TcpStream::connect(address).await.err() }
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_rejects_with_a_reset_and_a_refusal_then_opens_again() -> anyhow::Result<()>
{
    use std::io::ErrorKind;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    init_logging();
    let etcd = EtcdServer::start().await?;
    let proxy = FaultProxy::start(&etcd.endpoint()).await?;
    let mut held = TcpStream::connect(proxy.endpoint()).await?;
    // Relayed: etcd waits for the client's preface, so nothing comes back.
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(100), held.read(&mut byte)).await;
    assert!(quiet.is_err(), "the held connection ended: {quiet:?}");

    info!("--- reject: the held connection is reset, a new one is refused");
    proxy.reject();
    assert_eq!(proxy.mode(), ProxyMode::Reject);
    let read = tokio::time::timeout(CALL, held.read(&mut byte)).await?;
    assert!(
        matches!(&read, Err(error) if error.kind() == ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let refusal = || async {
        let refused = TcpStream::connect(proxy.endpoint()).await.err()?;
        (refused.kind() == ErrorKind::ConnectionRefused).then_some(())
    };
    eventually("the proxy's port to refuse", CALL, refusal).await;

    info!("--- heal: the same port forwards again");
    proxy.heal();
    let mut proxied = client_with_timeout(&proxy.endpoint(), Duration::from_secs(5)).await?;
    eventually("a request through the reopened port", CALL, || {
        let mut proxied = proxied.clone();
        async move { proxied.put("kit/reopened", "1", None).await.ok() }
    })
    .await;

    info!("--- reject for a moment: refused, then open again by itself");
    proxy.reject_for(Duration::from_millis(300));
    eventually("the proxy's port to refuse for a moment", CALL, refusal).await;
    eventually("the port to open again", CALL, || async {
        TcpStream::connect(proxy.endpoint()).await.ok()
    })
    .await;
    assert_eq!(proxy.mode(), ProxyMode::Forward);
    proxied.put("kit/reopened", "2", None).await?;
    Ok(())
}

/// The tso state that the node at `address` reports for itself, if it answers within `within`.
async fn tso_state(address: &str, within: Duration) -> Option<String> {
    let asked = async {
        let mut client = CoordinationClient::connect(format!("http://{address}"))
            .await
            .ok()?;
        let status = client.status(StatusRequest {}).await.ok()?.into_inner();
        let tso = status.roles.into_iter().find(|role| role.role == "tso")?;
        Some(tso.state)
    };
    tokio::time::timeout(within, asked).await.ok().flatten()
}

/// Polls until the node at `address` serves tso; fails with the node's own
/// log, which says why, after 20s.
async fn wait_until_serving(node: &StandinProcess, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while tso_state(address, Duration::from_secs(1)).await.as_deref() != Some("serving") {
        assert!(
            Instant::now() < deadline,
            "the node never served tso; its log:\n{}",
            node.log()
        );
        poll.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standin_process_serves_and_survives_stop_kill_and_restart() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let config = format!(
        "etcd:\n  endpoints: [{}]\n  rootPath: standin-kit\nnode:\n  address: {address}\nsession:\n  ttl: 2s\n",
        etcd.endpoint()
    );
    let mut node = StandinProcess::spawn(Path::new(BIN), &config, &["--role", "tso"])?;
    assert!(node.pid() > 0);
    wait_until_serving(&node, &address).await;
    assert!(node.try_exit_status().is_none());

    info!("--- SIGSTOP: the node stops answering; SIGCONT: it serves again");
    node.stop()?;
    assert_eq!(tso_state(&address, Duration::from_millis(500)).await, None);
    node.cont()?;
    wait_until_serving(&node, &address).await;

    info!("--- SIGKILL: gone at once, and reaped");
    let first_pid = node.pid();
    node.kill()?;
    assert!(
        node.try_exit_status()
            .is_some_and(|status| !status.success())
    );
    assert!(node.stop().is_err(), "a reaped process takes no signals");
    assert_eq!(tso_state(&address, Duration::from_millis(500)).await, None);

    info!("--- restart: a new process serves once the old lease expires");
    node.restart()?;
    assert_ne!(node.pid(), first_pid);
    assert!(node.try_exit_status().is_none());
    wait_until_serving(&node, &address).await;

    info!("--- SIGTERM: it hands over and exits cleanly");
    node.terminate()?;
    let status = wait_for("the node to exit", Duration::from_secs(20), || {
        node.try_exit_status()
    })
    .await;
    assert!(status.success(), "{status}; its log:\n{}", node.log());
    assert!(!node.log().contains("panicked"), "{}", node.log());
    Ok(())
}
