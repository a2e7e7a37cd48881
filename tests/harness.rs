//! The real-etcd test kit itself: a started server answers the client and etcdctl, and is gone after drop.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use standin::testing::{EtcdServer, init_logging};
use tracing::info;

/// The client port of `etcd`, parsed back from its endpoint.
fn port_of(etcd: &EtcdServer) -> anyhow::Result<u16> {
    let endpoint = etcd.endpoint();
    let port = endpoint
        .strip_prefix("127.0.0.1:")
        .with_context(|| format!("endpoint {endpoint} is not on 127.0.0.1"))?;
    Ok(port.parse()?)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .is_ok()
}

/// Polls until nothing accepts connections on `port`, failing after `deadline`.
async fn wait_until_closed(port: u16, deadline: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        every.tick().await;
        if !accepts(port).await {
            return Ok(());
        }
        ensure!(
            started.elapsed() < deadline,
            "127.0.0.1:{port} still accepts connections after {deadline:?}"
        );
    }
}

#[tokio::test]
async fn a_server_answers_the_client_and_etcdctl_and_its_port_closes_on_drop() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::start().await?;
    let port = port_of(&etcd)?;
    assert_eq!(etcd.url(), format!("http://127.0.0.1:{port}"));
    assert!(etcd.temp_dir().join("etcd.log").exists());

    info!("--- put and get through the client");
    let mut client = etcd.client().await?;
    client.put("harness/key", "value", None).await?;
    let got = client.get("harness/key", None).await?;
    let values: Vec<_> = got.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [b"value".as_slice()]);

    info!("--- etcdctl sees the same key");
    let printed = etcd.etcdctl(&["get", "harness/key", "--print-value-only"])?;
    assert_eq!(printed.trim(), "value");

    info!("--- a failing etcdctl command reports its stderr");
    let error = etcd
        .etcdctl(&["no-such-command"])
        .expect_err("etcdctl rejects an unknown command");
    assert!(error.to_string().contains("no-such-command"), "{error}");

    info!("--- after drop the port stops answering");
    drop(client);
    let dir = etcd.temp_dir().to_owned();
    drop(etcd);
    wait_until_closed(port, Duration::from_secs(5)).await?;
    assert!(!dir.exists(), "the temporary directory is removed");
    Ok(())
}

#[tokio::test]
async fn servers_started_together_are_separate() -> anyhow::Result<()> {
    init_logging();
    let (one, two) = tokio::try_join!(EtcdServer::start(), EtcdServer::start())?;
    assert_ne!(one.endpoint(), two.endpoint());

    one.etcdctl(&["put", "harness/only-in-one", "1"])?;
    let seen = two
        .client()
        .await?
        .get("harness/only-in-one", None)
        .await?
        .count();
    assert_eq!(seen, 0, "a key written to one server is not in the other");
    Ok(())
}

#[tokio::test]
async fn a_paused_server_still_closes_its_port_on_drop() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let port = port_of(&etcd)?;

    info!("--- freeze etcd, then drop it");
    etcd.pause()?;
    drop(etcd);
    wait_until_closed(port, Duration::from_secs(5)).await?;
    Ok(())
}
