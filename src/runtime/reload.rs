//! The reload actor: loads a role's metadata at a revision no older than the won one, in pages, within a time bound.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::coordinator::{Coordinator, Snapshot};
use crate::runtime::faults::Faults;

/// Failures of a reload; each makes the node resign.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// Reading a page from etcd failed.
    #[error("reading metadata under {prefix} failed: {source}")]
    ReadFailed {
        /// The metadata prefix.
        prefix: String,
        /// The etcd error.
        #[source]
        source: etcd_client::Error,
    },
    /// The read did not finish within `reload.timeout`.
    #[error("reloading metadata under {prefix} took longer than {timeout:?}")]
    TimedOut {
        /// The metadata prefix.
        prefix: String,
        /// `reload.timeout`.
        timeout: Duration,
    },
    /// etcd answered at a revision older than the won one (a stale member).
    #[error("etcd answered at revision {got}, older than the won revision {wanted}")]
    StaleRead {
        /// The revision of the answer.
        got: i64,
        /// The epoch revision.
        wanted: i64,
    },
    /// The coordinator could not decode what was read.
    #[error("metadata under {prefix} cannot be decoded: {reason}")]
    DecodeFailed {
        /// The metadata prefix.
        prefix: String,
        /// The coordinator's error.
        reason: String,
    },
}

/// Reads every key under `prefix` at one revision, `page_size` keys a
/// request. When etcd compacts that revision before the last page is read,
/// the read starts over at a fresh one (the caller bounds the whole read).
pub(crate) async fn read_snapshot(
    client: &Client,
    prefix: &str,
    page_size: i64,
    min_revision: i64,
    faults: &Faults,
) -> Result<Snapshot, ReloadError> {
    loop {
        match read_pages(client, prefix, page_size, min_revision, faults).await {
            Err(ReloadError::ReadFailed { source, .. }) if is_compacted(&source) => {
                tracing::warn!(
                    prefix,
                    "etcd compacted the revision a reload was reading ({source}); reading again at a fresh revision"
                );
            }
            done => return done,
        }
    }
}

/// Whether etcd refused a read because its revision has been compacted.
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains("compacted"))
}

/// One paged read at one revision. The first page is a linearizable read,
/// so its revision is at least any revision this node has already seen,
/// such as the won one.
async fn read_pages(
    client: &Client,
    prefix: &str,
    page_size: i64,
    min_revision: i64,
    faults: &Faults,
) -> Result<Snapshot, ReloadError> {
    let failed = |source| ReloadError::ReadFailed {
        prefix: prefix.to_owned(),
        source,
    };
    let end = prefix_end(prefix.as_bytes());
    let mut kv = client.kv_client();
    let mut snapshot = Snapshot::default();
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page_size)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if snapshot.revision > 0 {
            options = options.with_revision(snapshot.revision);
        }
        let mut page = kv.get(start.clone(), Some(options)).await.map_err(failed)?;
        if snapshot.revision == 0 {
            snapshot.revision = page.header().map_or(0, |h| h.revision());
            if snapshot.revision < min_revision {
                return Err(ReloadError::StaleRead {
                    got: snapshot.revision,
                    wanted: min_revision,
                });
            }
        }
        let more = page.more();
        let kvs = page.take_kvs();
        let Some(last) = kvs.last() else { break };
        start = last.key().to_vec();
        start.push(0);
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            snapshot.entries.insert(key, kv.value().to_vec());
        }
        faults.reload_page_read().await;
        if !more {
            break;
        }
    }
    Ok(snapshot)
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The reload actor for one won epoch: reads, decodes, reports to the
/// election actor, stops. It fails (a supervision event for the election)
/// when the read fails, times out or does not decode.
pub(crate) struct ReloadActor<C: Coordinator>(PhantomData<fn() -> C>);

impl<C: Coordinator> Default for ReloadActor<C> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// What one reload needs.
pub(crate) struct ReloadJob<C: Coordinator> {
    /// Decodes the snapshot.
    pub coordinator: Arc<C>,
    /// The etcd client.
    pub client: Client,
    /// The role, for logs and metrics.
    pub role: String,
    /// `{root}/meta/{role}/`.
    pub prefix: String,
    /// The won revision: the read must be at least this new.
    pub revision: i64,
    /// `reload.pageSize`.
    pub page_size: i64,
    /// `reload.timeout`.
    pub timeout: Duration,
    /// Hands the decoded metadata, with the won revision, to whoever asked.
    pub report: Box<dyn FnOnce(i64, C::Meta) + Send>,
    /// The role's fault switches (off unless a test turns them on).
    pub faults: Arc<Faults>,
}

/// Messages to a reload actor: none; it works in `post_start` and stops.
pub(crate) enum ReloadMsg {}

impl<C: Coordinator> Actor for ReloadActor<C> {
    type Msg = ReloadMsg;
    type State = Option<ReloadJob<C>>;
    type Arguments = ReloadJob<C>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        job: ReloadJob<C>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(job))
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let job = state.take().expect("a reload actor runs its job once");
        let started = Instant::now();
        let read = read_snapshot(
            &job.client,
            &job.prefix,
            job.page_size,
            job.revision,
            &job.faults,
        );
        let snapshot = tokio::time::timeout(job.timeout, read)
            .await
            .map_err(|_| ReloadError::TimedOut {
                prefix: job.prefix.clone(),
                timeout: job.timeout,
            })??;
        let keys = snapshot.entries.len();
        let meta = job
            .coordinator
            .decode(snapshot)
            .map_err(|error| ReloadError::DecodeFailed {
                prefix: job.prefix.clone(),
                reason: error.to_string(),
            })?;
        let took = started.elapsed();
        tracing::info!(
            role = job.role,
            prefix = job.prefix,
            keys,
            took_ms = took.as_millis() as u64,
            "metadata reloaded"
        );
        metrics::histogram!(crate::telemetry::RELOAD_SECONDS, "role" => job.role.clone())
            .record(took.as_secs_f64());
        metrics::counter!(crate::telemetry::RELOADED_KEYS, "role" => job.role.clone())
            .increment(keys as u64);
        (job.report)(job.revision, meta);
        myself.stop(None);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"a/meta/"), b"a/meta0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
