//! The Prometheus exporter against a real etcd: standin's metrics are served on `/metrics` with their labels.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use standin::BoxError;
use standin::telemetry::{self, TelemetryError};
use standin::testing::{EtcdServer, free_loopback_port};
use standin::{Coordinator, Epoch, FenceError, FencedStore, Node, RoleHandle, Snapshot};
use support::{CALL, config, eventually, http_get, init_logging, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::info;

const ROLE: &str = "rootcoord";

/// The least a coordinator can be: its serving state is the fenced store of
/// its term, and every request hands a copy out, so the test can write with
/// an epoch after it is over.
struct StoreKeeper;

impl Coordinator for StoreKeeper {
    type Meta = ();
    type Serving = FencedStore;
    type Request = ();
    type Response = FencedStore;

    fn decode(&self, _snapshot: Snapshot) -> Result<(), BoxError> {
        Ok(())
    }

    async fn activate(
        &self,
        _epoch: Epoch,
        _meta: (),
        store: FencedStore,
    ) -> Result<FencedStore, BoxError> {
        Ok(store)
    }

    async fn handle(&self, serving: &mut FencedStore, _request: ()) -> FencedStore {
        serving.clone()
    }
}

/// One line of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a scrape; comments (`# HELP`, `# TYPE`) are left out.
/// Label values here never hold commas or quotes, so a plain split does.
fn samples(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key.to_owned(), value.trim_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of the series `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}

/// GETs `/metrics` with a bare HTTP/1.1 request, as Prometheus would, and
/// returns the body of a 200 answer.
async fn scrape(address: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(CALL, stream.read_to_end(&mut response))
        .await
        .context("the exporter did not answer in time")??;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the response headers")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "the exporter answered {head}"
    );
    Ok(body.to_owned())
}

/// Scrapes until `ready` holds for the samples, and returns that scrape.
async fn scrape_until(
    address: SocketAddr,
    what: &str,
    ready: impl Fn(&[Sample]) -> bool,
) -> (String, Vec<Sample>) {
    eventually(what, Duration::from_secs(15), || async {
        let body = scrape(address).await.ok()?;
        let parsed = samples(&body);
        ready(&parsed).then_some((body, parsed))
    })
    .await
}

async fn store_of(role: &RoleHandle<StoreKeeper>) -> FencedStore {
    match role.call((), CALL).await {
        Ok(store) => store,
        Err(error) => panic!("the serving coordinator did not answer: {error}"),
    }
}

/// The `ROLE_STATE` gauge of `ROLE` for `state`: 1 in the state it is in, else 0.
fn state_gauge(samples: &[Sample], state: &str) -> Option<f64> {
    value(
        samples,
        telemetry::ROLE_STATE,
        &[("role", ROLE), ("state", state)],
    )
}

fn role_is(role: &'static str) -> impl Fn(&[Sample], &str) -> Option<f64> {
    move |samples, name| value(samples, name, &[("role", role)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_served_with_its_labels() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()?));
    let of_role = role_is(ROLE);

    info!("--- install the exporter; a second install names its address and fails");
    let port = telemetry::install_prometheus(metrics)?;
    let in_use = telemetry::install_prometheus(metrics).expect_err("the port is taken");
    assert!(
        matches!(in_use, TelemetryError::ListenFailed { address, .. } if address == metrics),
        "{in_use:?}"
    );
    assert!(
        in_use.to_string().contains(&metrics.to_string()),
        "{in_use}"
    );
    let other = SocketAddr::from((Ipv4Addr::LOCALHOST, free_loopback_port()?));
    let twice = telemetry::install_prometheus(other).expect_err("a recorder is installed");
    assert!(
        matches!(twice, TelemetryError::RecorderAlreadyInstalled { address } if address == other),
        "{twice:?}"
    );
    assert!(twice.to_string().contains(&other.to_string()), "{twice}");
    // The failed install must not hold the port: it never served.
    TcpStream::connect(other)
        .await
        .expect_err("nothing listens on the second address");

    info!("--- one node serves the role; a 2 s TTL makes keepalives every 667 ms");
    let mut node = Node::new(config(&etcd, 0, 2));
    let role = node.add_role(ROLE, StoreKeeper)?;
    info!("--- before the node starts: alive, not ready");
    let (code, _) = http_get(metrics.port(), "/healthz")
        .await
        .expect("/healthz answers");
    assert_eq!(code, 200);
    let (code, why) = http_get(metrics.port(), "/readyz")
        .await
        .expect("/readyz answers");
    assert_eq!((code, why.trim()), (503, "the node has not started"));
    node.start().await?;
    port.report(node.health_report());
    wait_for("the role to serve", Duration::from_secs(10), || {
        role.is_serving().then_some(())
    })
    .await;
    info!("--- started and joined: ready, and /status shows the role serving");
    let (code, _) = http_get(metrics.port(), "/readyz")
        .await
        .expect("/readyz answers");
    assert_eq!(code, 200);
    let (code, status) = http_get(metrics.port(), "/status")
        .await
        .expect("/status answers");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(status["roles"][0]["role"], ROLE);
    assert_eq!(status["roles"][0]["state"], "serving");
    assert!(status["roles"][0]["lease_id"].is_i64(), "{status}");
    assert_eq!(status["git"], telemetry::GIT_COMMIT);
    let (code, _) = http_get(metrics.port(), "/nothing")
        .await
        .expect("404 answers");
    assert_eq!(code, 404);
    let first_term = store_of(&role).await;
    first_term.put("settings", b"x".to_vec()).await?;

    info!("--- crash the coordinator: it steps down, and wins again as the only candidate");
    assert!(role.crash_coordinator());
    let (_, after_crash) = scrape_until(metrics, "a second takeover", |samples| {
        of_role(samples, telemetry::TAKEOVERS) == Some(2.0)
            && state_gauge(samples, "serving") == Some(1.0)
    })
    .await;
    assert_eq!(
        value(
            &after_crash,
            telemetry::STEP_DOWNS,
            &[("role", ROLE), ("reason", "coordinator_crashed")]
        ),
        Some(1.0)
    );

    info!("--- a write with the first term's store is refused");
    match first_term.put("settings", b"stale".to_vec()).await {
        Err(FenceError::Fenced { .. }) => {}
        other => panic!("a write of an ended epoch was not fenced: {other:?}"),
    }

    info!("--- crash the election actor: it restarts and the role serves again");
    assert!(role.crash_election());
    scrape_until(metrics, "an election restart", |samples| {
        of_role(samples, telemetry::ELECTION_RESTARTS) == Some(1.0)
    })
    .await;
    wait_for("the role to serve again", Duration::from_secs(10), || {
        role.is_serving().then_some(())
    })
    .await;

    info!("--- scrape once a keepalive round trip was measured");
    let keepalive_count = format!("{}_count", telemetry::KEEPALIVE_RTT_SECONDS);
    let (body, serving) = scrape_until(metrics, "a keepalive and a third takeover", |samples| {
        value(samples, &keepalive_count, &[]).is_some_and(|count| count > 0.0)
            && of_role(samples, telemetry::TAKEOVERS) == Some(3.0)
            && state_gauge(samples, "serving") == Some(1.0)
    })
    .await;
    info!("--- the scrape:\n{body}");

    for state in ["standby", "activating", "stopping"] {
        assert_eq!(state_gauge(&serving, state), Some(0.0), "state {state}");
    }
    assert_eq!(of_role(&serving, telemetry::ROLE_ACTIVE), Some(1.0));
    assert_eq!(
        of_role(&serving, telemetry::FENCED_WRITES_REFUSED),
        Some(1.0)
    );
    assert_eq!(of_role(&serving, telemetry::QUEUED_REQUESTS), Some(0.0));
    // The reloads after the crashes found the key the first term wrote.
    assert!(of_role(&serving, telemetry::RELOADED_KEYS).is_some_and(|keys| keys >= 2.0));

    // The keepalive is the node's session's, one for every role: no role label.
    for (histogram, labels) in [
        (telemetry::TAKEOVER_SECONDS, &[("role", ROLE)][..]),
        (telemetry::RELOAD_SECONDS, &[("role", ROLE)][..]),
        (telemetry::KEEPALIVE_RTT_SECONDS, &[][..]),
    ] {
        assert!(
            body.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram"
        );
        let bucket = format!("{histogram}_bucket");
        for le in ["0.001", "30", "+Inf"] {
            let mut labels = labels.to_vec();
            labels.push(("le", le));
            assert!(
                value(&serving, &bucket, &labels).is_some(),
                "no {bucket} with le={le}"
            );
        }
        let count = value(&serving, &format!("{histogram}_count"), labels);
        assert!(count.is_some_and(|count| count >= 1.0), "{histogram}");
    }
    assert_eq!(
        value(&serving, telemetry::SESSION_LEASES, &[]),
        Some(1.0),
        "one lease for the node's whole life: no crash gave its lease up"
    );
    let takeovers = of_role(&serving, &format!("{}_count", telemetry::TAKEOVER_SECONDS));
    assert_eq!(takeovers, Some(3.0));
    for (name, kind) in [
        (telemetry::TAKEOVERS, "counter"),
        (telemetry::STEP_DOWNS, "counter"),
        (telemetry::ROLE_STATE, "gauge"),
        (telemetry::ROLE_ACTIVE, "gauge"),
    ] {
        assert!(body.contains(&format!("# TYPE {name} {kind}")), "{name}");
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }

    info!("--- shut the node down: the step-down says why");
    node.shutdown().await;
    scrape_until(metrics, "a shutdown step-down", |samples| {
        value(
            samples,
            telemetry::STEP_DOWNS,
            &[("role", ROLE), ("reason", "shutdown")],
        ) == Some(1.0)
            && of_role(samples, telemetry::ROLE_ACTIVE) == Some(0.0)
    })
    .await;
    Ok(())
}
