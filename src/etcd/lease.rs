//! Giving a lease back to etcd: a revoke retried until it lands or the lease has expired by itself.

use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::backoff::Backoff;
use crate::config::BackoffConfig;

/// Revokes `lease`, each try bounded by `request_timeout`, retrying with
/// `retry` until it lands or `until` passes: past that instant etcd has
/// expired the lease by itself. A leader key left on a lease nobody keeps
/// alive blocks every standby until then, so one failed try is not enough.
/// Returns whether the revoke landed.
pub(crate) async fn revoke(
    client: &Client,
    lease: i64,
    request_timeout: Duration,
    retry: &BackoffConfig,
    until: Instant,
) -> bool {
    let mut lease_client = client.lease_client();
    let mut backoff = Backoff::new(retry.clone());
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let outcome =
            tokio::time::timeout(request_timeout.min(left), lease_client.revoke(lease)).await;
        let reason = match outcome {
            Ok(Ok(_)) => return true,
            // etcd no longer knows it: as good as revoked.
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.code() == tonic::Code::NotFound =>
            {
                return true;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", request_timeout.min(left)),
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay >= until {
            tracing::warn!(
                lease,
                "revoking lease {lease} failed ({reason}); giving up, the TTL will expire it"
            );
            return false;
        }
        tracing::warn!(
            lease,
            retry_in_ms = delay.as_millis() as u64,
            "revoking lease {lease} failed ({reason}); retrying"
        );
        tokio::time::sleep(delay).await;
    }
}
