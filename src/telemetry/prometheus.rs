//! The metrics port: Prometheus metrics on `/metrics`, and the node's health on `/healthz`, `/readyz` and `/status`, over HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

use super::{
    DEATH_WITNESS_REVOKE_SECONDS, KEEPALIVE_RTT_SECONDS, RELOAD_SECONDS, SECONDS_BUCKETS,
    TAKEOVER_SECONDS, describe,
};
use crate::etcd::session::VERSION;

/// How often histograms are trimmed to their window.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long a client may take to send its request before it is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures to start the metrics port.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The histogram buckets were refused.
    #[error("cannot configure Prometheus metrics: {0}")]
    BucketsRefused(#[source] BuildError),
    /// The address could not be bound, most often because it is in use.
    #[error("cannot serve Prometheus metrics on {address}")]
    ListenFailed {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another metrics recorder is installed; the process can have only one.
    #[error(
        "cannot serve Prometheus metrics on {address}: a metrics recorder is already installed"
    )]
    RecorderAlreadyInstalled {
        /// The address asked for.
        address: SocketAddr,
    },
    /// Outside a tokio runtime, the server's own runtime or thread could not be started.
    #[error("cannot start the runtime serving Prometheus metrics on {address}")]
    RuntimeFailed {
        /// The address asked for.
        address: SocketAddr,
        /// Why the runtime or its thread did not start.
        #[source]
        source: std::io::Error,
    },
}

/// What the metrics port reports about the node besides its metrics:
/// `Node::health_report` gives one for a started node.
pub trait HealthReport: Send + Sync + 'static {
    /// `/readyz`: `Ok` once the node can take part (every role holds its
    /// etcd session); the reason otherwise.
    fn readiness(&self) -> Result<(), String>;
    /// `/status`: the node's roles as JSON.
    fn status(&self) -> serde_json::Value;
}

/// The metrics port once serving: hand it the node's [`HealthReport`] once
/// the node has started, and `/readyz` and `/status` report it.
#[derive(Clone, Default)]
pub struct MetricsPort {
    report: Arc<OnceLock<Arc<dyn HealthReport>>>,
}

impl std::fmt::Debug for MetricsPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reporting = self.report.get().is_some();
        f.debug_struct("MetricsPort")
            .field("reporting", &reporting)
            .finish()
    }
}

impl MetricsPort {
    /// What `/readyz` and `/status` report from now on (once: a process
    /// runs one node).
    pub fn report(&self, report: Arc<dyn HealthReport>) {
        let _ = self.report.set(report);
    }

    fn readiness(&self) -> Result<(), String> {
        match self.report.get() {
            Some(report) => report.readiness(),
            None => Err("the node has not started".to_owned()),
        }
    }

    fn status(&self) -> serde_json::Value {
        let mut status = self
            .report
            .get()
            .map_or_else(|| serde_json::json!({ "roles": [] }), |r| r.status());
        if let Some(fields) = status.as_object_mut() {
            fields.insert("version".into(), VERSION.into());
            fields.insert("git".into(), super::GIT_COMMIT.into());
        }
        status
    }
}

/// Installs a Prometheus recorder as the process's metrics recorder,
/// describes the standin metrics, and serves HTTP on `listen`: `/metrics`,
/// `/healthz` (the process answers), `/readyz` (every role holds its etcd
/// session) and `/status` (the roles as JSON), once given the roles through
/// the returned [`MetricsPort`]. Inside a tokio runtime the server is a task
/// of that runtime; outside one, it runs on a thread with a runtime of its own.
pub fn install_prometheus(listen: SocketAddr) -> Result<MetricsPort, TelemetryError> {
    let mut builder = PrometheusBuilder::new();
    // Buckets only for our histograms: an embedding service's own histograms
    // may not be in seconds, and keep the exporter's default (a summary).
    for name in [
        TAKEOVER_SECONDS,
        RELOAD_SECONDS,
        KEEPALIVE_RTT_SECONDS,
        DEATH_WITNESS_REVOKE_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(name.to_owned()),
                SECONDS_BUCKETS,
            )
            .map_err(TelemetryError::BucketsRefused)?;
    }
    // Bound first: a port in use fails before the recorder is taken.
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|source| TelemetryError::ListenFailed {
            address: listen,
            source,
        })?;
    let recorder = builder.build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| TelemetryError::RecorderAlreadyInstalled { address: listen })?;
    let port = MetricsPort::default();
    let served = serve(listener, metrics, port.clone());
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(served);
        }
        Err(_) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| TelemetryError::RuntimeFailed {
                    address: listen,
                    source,
                })?;
            std::thread::Builder::new()
                .name("standin-prometheus".to_owned())
                .spawn(move || runtime.block_on(served))
                .map_err(|source| TelemetryError::RuntimeFailed {
                    address: listen,
                    source,
                })?;
        }
    }
    describe();
    tracing::info!(%listen, "serving Prometheus metrics on /metrics, health on /healthz and /readyz, roles on /status");
    Ok(port)
}

/// Accepts connections until the process ends, answering each on a task
/// of its own, and trims the histograms on the side.
async fn serve(listener: std::net::TcpListener, metrics: PrometheusHandle, port: MetricsPort) {
    let address = listener.local_addr().ok();
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(?address, "the metrics port cannot be served: {error}");
            return;
        }
    };
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: wait, do not spin.
                tracing::warn!(?address, "accepting on the metrics port failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let port = port.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |request| {
                let reply = respond(&request, &metrics, &port);
                async move { Ok::<_, Infallible>(reply) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer);
            if let Err(error) = connection.await {
                tracing::debug!("a metrics port connection ended: {error}");
            }
        });
    }
}

/// The answer to one request on the metrics port.
fn respond<B>(
    request: &Request<B>,
    metrics: &PrometheusHandle,
    port: &MetricsPort,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a response of known parts builds")
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" | "/livez" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match port.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        "/status" => text(
            StatusCode::OK,
            "application/json",
            format!("{:#}\n", port.status()),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /healthz, /readyz and /status are served here\n".into(),
        ),
    }
}
