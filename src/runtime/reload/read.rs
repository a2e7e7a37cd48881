//! Full reads of a role's metadata: every key under its prefix at one revision, in pages.

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};

use crate::coordinator::Snapshot;
use crate::runtime::faults::Faults;
use crate::runtime::reload::ReloadError;

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
            if let Some(key) = relative_key(prefix, kv.key()) {
                snapshot.entries.insert(key, kv.value().to_vec());
            }
        }
        faults.reload_page_read().await;
        if !more {
            break;
        }
    }
    Ok(snapshot)
}

/// `key` relative to the metadata `prefix`; `None` for the prefix's own key,
/// the catch-up marker, which is no coordinator's metadata.
pub(crate) fn relative_key(prefix: &str, key: &[u8]) -> Option<String> {
    let relative = key.get(prefix.len()..).filter(|rest| !rest.is_empty())?;
    Some(String::from_utf8_lossy(relative).into_owned())
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
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

    #[test]
    fn the_marker_is_no_relative_key() {
        assert_eq!(relative_key("r/meta/kv/", b"r/meta/kv/"), None);
        assert_eq!(
            relative_key("r/meta/kv/", b"r/meta/kv/a/b").as_deref(),
            Some("a/b")
        );
    }
}
