//! Connecting to etcd with the configured timeouts, and retrying an etcd call with backoff.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::backoff::Backoff;
use crate::config::EtcdConfig;

/// Failures to reach etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client could not be built from the configured endpoints.
    #[error("cannot connect to etcd at {endpoints:?}: {source}")]
    ConnectFailed {
        /// The endpoints from `etcd.endpoints`.
        endpoints: Vec<String>,
        /// Why the client could not be built.
        #[source]
        source: etcd_client::Error,
    },
}

/// Builds a client for the configured endpoints. The client connects lazily,
/// so an unreachable etcd shows up on the first call, where callers retry.
pub async fn connect(config: &EtcdConfig) -> Result<Client, EtcdError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(config.request_timeout)
        // Without HTTP/2 keepalives a silently dropped link would only be
        // noticed when a request times out.
        .with_keep_alive(config.request_timeout, config.request_timeout)
        .with_keep_alive_while_idle(true);
    Client::connect(&config.endpoints, Some(options))
        .await
        .map_err(|source| EtcdError::ConnectFailed {
            endpoints: config.endpoints.clone(),
            source,
        })
}

/// Runs `call` until it succeeds, logging each failure with the wait before
/// the next try: an unreachable etcd is retried, never fatal.
pub async fn retry<T, E, F, Fut>(what: &str, mut backoff: Backoff, mut call: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    attempt = backoff.failures(),
                    retry_in_ms = wait.as_millis() as u64,
                    "{what} failed, etcd unreachable or refusing: {error}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Runs a call whose failure is survivable (the lease would expire the keys
/// anyway), bounded by `timeout`; logs a failure naming `what`. Returns
/// whether it succeeded.
pub async fn best_effort<T>(
    what: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> bool {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => {
            tracing::warn!("{what} failed (the lease TTL will clean up): {error}");
            false
        }
        Err(_) => {
            tracing::warn!("{what} timed out after {timeout:?} (the lease TTL will clean up)");
            false
        }
    }
}
