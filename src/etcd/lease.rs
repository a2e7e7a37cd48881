//! Giving back what a lease holds: the lease itself (revoked), or one key on it (deleted), each retried until it lands or is moot.

use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::backoff::Backoff;
use crate::config::BackoffConfig;

/// Revokes `lease`, retrying with `retry` until it lands, etcd no longer
/// knows it, or `until` passes (past it the TTL expires it anyway).
/// Returns whether the lease is gone.
pub(crate) async fn revoke(
    client: &Client,
    lease: i64,
    request_timeout: Duration,
    retry: &BackoffConfig,
    until: Instant,
) -> bool {
    let what = format!("revoking lease {lease:#x}");
    let worth_trying = |delay: Duration| Instant::now() + delay < until;
    retried(&what, request_timeout, retry, worth_trying, || {
        let mut leases = client.lease_client();
        // The bound shrinks as `until` nears, so the last try ends by it.
        let left = until.saturating_duration_since(Instant::now());
        async move { tokio::time::timeout(left, leases.revoke(lease)).await }
    })
    .await
}

/// Deletes `key`, one role's key on a lease other roles share, retrying
/// with `retry` for as long as `still_held` says the lease lives: a key on
/// a lease that is gone is gone with it. Returns whether the delete landed.
pub(crate) async fn delete_key(
    client: &Client,
    key: &str,
    request_timeout: Duration,
    retry: &BackoffConfig,
    still_held: impl Fn() -> bool,
) -> bool {
    let what = format!("deleting {key}");
    retried(
        &what,
        request_timeout,
        retry,
        |_| still_held(),
        || {
            let mut kv = client.kv_client();
            async move { Ok(kv.delete(key, None).await) }
        },
    )
    .await
}

/// Runs `call` (bounded by `request_timeout`) until it succeeds or etcd
/// says there is nothing to give back; after each failure, waits the next
/// backoff delay if `worth_trying(delay)`, and gives up otherwise.
async fn retried<T, F, Fut>(
    what: &str,
    request_timeout: Duration,
    retry: &BackoffConfig,
    worth_trying: impl Fn(Duration) -> bool,
    mut call: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>>,
{
    let mut backoff = Backoff::new(retry.clone());
    loop {
        let reason = match tokio::time::timeout(request_timeout, call()).await {
            Ok(Ok(Ok(_))) => return true,
            // etcd no longer knows it: as good as given back.
            Ok(Ok(Err(etcd_client::Error::GRpcStatus(status))))
                if status.code() == tonic::Code::NotFound =>
            {
                return true;
            }
            Ok(Ok(Err(error))) => error.to_string(),
            Ok(Err(_)) | Err(_) => format!("no answer within {request_timeout:?}"),
        };
        let delay = backoff.next_delay();
        if !worth_trying(delay) {
            tracing::warn!("{what} failed ({reason}); giving up, the lease's end removes it");
            return false;
        }
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            "{what} failed ({reason}); retrying"
        );
        tokio::time::sleep(delay).await;
    }
}
