//! The Prometheus exporter: a recorder for the process, served over HTTP.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, ExporterFuture, Matcher, PrometheusBuilder};

use super::{
    DEATH_WITNESS_REVOKE_SECONDS, KEEPALIVE_RTT_SECONDS, RELOAD_SECONDS, SECONDS_BUCKETS,
    TAKEOVER_SECONDS, describe,
};

/// Failures to start the Prometheus exporter.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built, most often because the address is in use.
    #[error("cannot serve Prometheus metrics on {address}")]
    ListenFailed {
        /// The `/metrics` address asked for.
        address: SocketAddr,
        /// What the exporter reported.
        #[source]
        source: BuildError,
    },
    /// Another metrics recorder is installed; the process can have only one.
    #[error(
        "cannot serve Prometheus metrics on {address}: a metrics recorder is already installed"
    )]
    RecorderAlreadyInstalled {
        /// The `/metrics` address asked for.
        address: SocketAddr,
    },
    /// Outside a tokio runtime, the exporter's own runtime or thread could not be started.
    #[error("cannot start the runtime serving Prometheus metrics on {address}")]
    RuntimeFailed {
        /// The `/metrics` address asked for.
        address: SocketAddr,
        /// Why the runtime or its thread did not start.
        #[source]
        source: std::io::Error,
    },
}

/// Installs a Prometheus recorder as the process's metrics recorder, serves
/// it over HTTP on `listen` (any path, `/metrics` included), and describes
/// the standin metrics. Inside a tokio runtime the exporter runs as a task of
/// that runtime; outside one, on a thread with a runtime of its own.
pub fn install_prometheus(listen: SocketAddr) -> Result<(), TelemetryError> {
    let mut builder = PrometheusBuilder::new().with_http_listener(listen);
    // Buckets only for our histograms: an embedding service's own histograms
    // may not be in seconds, and keep the exporter's default (a summary).
    for name in [
        TAKEOVER_SECONDS,
        RELOAD_SECONDS,
        KEEPALIVE_RTT_SECONDS,
        DEATH_WITNESS_REVOKE_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), SECONDS_BUCKETS)
            .map_err(|source| TelemetryError::ListenFailed {
                address: listen,
                source,
            })?;
    }
    // Not `PrometheusBuilder::install`: it starts serving before it sets the
    // global recorder, so when a recorder is already installed it would leave
    // a listener serving metrics nobody records. Here the exporter future is
    // only run once the recorder is ours; dropped otherwise, which frees the port.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let exporter = build_and_install(builder, &handle, listen)?;
            handle.spawn(serve(listen, exporter));
        }
        Err(_) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| TelemetryError::RuntimeFailed {
                    address: listen,
                    source,
                })?;
            let exporter = build_and_install(builder, runtime.handle(), listen)?;
            // The runtime also drives the upkeep task `build` spawned, which
            // bounds the memory of the histograms; it lives as long as the process.
            std::thread::Builder::new()
                .name("standin-prometheus".to_owned())
                .spawn(move || runtime.block_on(serve(listen, exporter)))
                .map_err(|source| TelemetryError::RuntimeFailed {
                    address: listen,
                    source,
                })?;
        }
    }
    describe();
    tracing::info!(%listen, "serving Prometheus metrics on /metrics");
    Ok(())
}

/// Builds the exporter on `runtime` (`build` binds the listener and spawns
/// the upkeep task, both of which need a runtime entered) and makes its
/// recorder the process's; returns the exporter, not yet serving.
fn build_and_install(
    builder: PrometheusBuilder,
    runtime: &tokio::runtime::Handle,
    listen: SocketAddr,
) -> Result<ExporterFuture, TelemetryError> {
    let (recorder, exporter) = {
        let _entered = runtime.enter();
        builder.build()
    }
    .map_err(|source| TelemetryError::ListenFailed {
        address: listen,
        source,
    })?;
    metrics::set_global_recorder(recorder)
        .map_err(|_| TelemetryError::RecorderAlreadyInstalled { address: listen })?;
    Ok(exporter)
}

/// Runs the exporter, logging why it stopped: nothing else would report it.
async fn serve(listen: SocketAddr, exporter: ExporterFuture) {
    if let Err(error) = exporter.await {
        tracing::error!(%listen, "the Prometheus exporter stopped: {error:?}");
    }
}
