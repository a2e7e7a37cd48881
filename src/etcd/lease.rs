//! Keys on a lease and the lease itself: the lease given back (revoked), one key on it deleted, marks put on it; each retried until it lands or is moot.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, Txn, TxnOp};

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
    retried_until(
        &what,
        request_timeout,
        retry,
        until,
        Moot::IfNotFound,
        |left| {
            let mut leases = client.lease_client();
            async move { tokio::time::timeout(left, leases.revoke(lease)).await }
        },
    )
    .await
}

/// Puts every `(key, value)` of `marks` on `lease` in one transaction,
/// retrying with `retry` until it lands or `until` passes. Returns whether
/// it landed: a lease etcd no longer knows fails it at once.
pub(crate) async fn put_on_lease(
    client: &Client,
    marks: &[(String, Vec<u8>)],
    lease: i64,
    request_timeout: Duration,
    retry: &BackoffConfig,
    until: Instant,
) -> bool {
    let keys: Vec<&str> = marks.iter().map(|(key, _)| key.as_str()).collect();
    let what = format!("putting {} on lease {lease:#x}", keys.join(", "));
    retried_until(&what, request_timeout, retry, until, Moot::Never, |left| {
        let mut kv = client.kv_client();
        let puts = marks
            .iter()
            .map(|(key, value)| {
                let options = PutOptions::new().with_lease(lease);
                TxnOp::put(key.as_str(), value.as_slice(), Some(options))
            })
            .collect::<Vec<_>>();
        async move { tokio::time::timeout(left, kv.txn(Txn::new().and_then(puts))).await }
    })
    .await
}

/// [`retried`] until `until`: each attempt is bounded by what is left of
/// it (handed to `call`), so the last one ends by it.
async fn retried_until<T, F, Fut>(
    what: &str,
    request_timeout: Duration,
    retry: &BackoffConfig,
    until: Instant,
    moot: Moot,
    mut call: F,
) -> bool
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>>,
{
    let worth_trying = |delay: Duration| Instant::now() + delay < until;
    retried(what, request_timeout, retry, worth_trying, moot, || {
        call(until.saturating_duration_since(Instant::now()))
    })
    .await
}

/// When an etcd call that failed needs no retry.
#[derive(Debug, Clone, Copy)]
enum Moot {
    /// When etcd no longer knows what it names (a lease expired or revoked
    /// is as good as given back).
    IfNotFound,
    /// Never: a put on a lease etcd no longer knows did not land.
    Never,
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
        Moot::IfNotFound,
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
    moot: Moot,
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
                match moot {
                    Moot::IfNotFound => return true,
                    Moot::Never => {
                        tracing::warn!("{what} failed: {}", status.message());
                        return false;
                    }
                }
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
