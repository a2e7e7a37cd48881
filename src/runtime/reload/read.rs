//! Full reads of a role's metadata: every key under its prefix at one revision, in pages.

use std::time::Duration;

use etcd_client::{Client, GetOptions};

use crate::backoff;
use crate::config::{BackoffConfig, ReloadConfig};
use crate::coordinator::Snapshot;
use crate::etcd::prefix_end;
use crate::runtime::faults::Faults;
use crate::runtime::reload::ReloadError;

/// Keys the first page asks for, before any entry's size is known: small
/// enough that values of tens of kilobytes still fit one response.
const FIRST_PAGE_KEYS: i64 = 1000;

/// Bytes an entry costs in a range response beyond its key and value (its
/// revisions, version and field tags).
const ENTRY_OVERHEAD: u64 = 24;

/// How many times `reload.pageBytes` one response may reach before the
/// client refuses it. Pages are sized from the average entry read so far, so
/// a run of larger values can overshoot; past this the page is asked again,
/// halved.
const RESPONSE_HEADROOM: u64 = 4;

/// Sizes a full read's pages. etcd walks every key from a range's start to
/// its end to count them, whatever the limit, so each page costs as much as
/// the keys left: the fewer the pages, the closer the read is to linear.
/// Pages therefore aim at `reload.pageBytes`, from the average entry read so
/// far, up to `reload.pageSize` keys.
#[derive(Debug, Clone)]
struct PageSizer {
    most_keys: i64,
    target_bytes: u64,
    keys_read: u64,
    bytes_read: u64,
    next: i64,
}

impl PageSizer {
    fn new(config: &ReloadConfig) -> Self {
        Self {
            most_keys: config.page_size,
            target_bytes: config.page_bytes,
            keys_read: 0,
            bytes_read: 0,
            next: config.page_size.min(FIRST_PAGE_KEYS),
        }
    }

    /// Keys the next page asks for.
    fn limit(&self) -> i64 {
        self.next
    }

    /// The largest response the client accepts.
    fn response_limit(&self) -> usize {
        usize::try_from(self.target_bytes.saturating_mul(RESPONSE_HEADROOM)).unwrap_or(usize::MAX)
    }

    /// Takes in a page of `keys` entries totalling `bytes` of keys and values.
    fn read(&mut self, keys: u64, bytes: u64) {
        self.keys_read += keys;
        self.bytes_read += bytes + keys * ENTRY_OVERHEAD;
        if self.keys_read > 0 {
            let average = self.bytes_read.div_ceil(self.keys_read).max(1);
            let fitting = i64::try_from(self.target_bytes / average).unwrap_or(i64::MAX);
            self.next = fitting.clamp(1, self.most_keys);
        }
    }

    /// After a response too large to accept: halves the next page, or
    /// `false` when it is one key already.
    fn shrink(&mut self) -> bool {
        if self.next == 1 {
            return false;
        }
        self.next = (self.next / 2).max(1);
        true
    }
}

/// Reads in a row whose revision etcd may compact before the read gives up.
const COMPACTED_READS: u32 = 5;

/// The backoff between reads whose revision was compacted: a little room
/// for a compaction in progress to finish, and for a node among many not
/// to restart in step with the others.
const COMPACTED_BACKOFF: BackoffConfig = BackoffConfig {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(2),
};

/// Reads every key under `prefix` at one revision, in pages sized by
/// [`PageSizer`]. When etcd compacts that revision before the last page is
/// read, the read starts over at a fresh one after a backoff, at most
/// [`COMPACTED_READS`] times in all (the caller bounds the whole read too).
pub(crate) async fn read_snapshot(
    client: &Client,
    prefix: &str,
    config: &ReloadConfig,
    min_revision: i64,
    faults: &Faults,
) -> Result<Snapshot, ReloadError> {
    for read in 1..=COMPACTED_READS {
        match read_pages(client, prefix, config, min_revision, faults).await {
            Err(ReloadError::ReadFailed { source, .. }) if is_compacted(&source) => {
                if read == COMPACTED_READS {
                    break;
                }
                let after = backoff::jittered(backoff::delay(&COMPACTED_BACKOFF, read));
                tracing::warn!(
                    prefix,
                    "etcd compacted the revision a reload was reading ({source}); reading again \
                     at a fresh revision in {after:?} ({read} of {COMPACTED_READS} reads)"
                );
                tokio::time::sleep(after).await;
            }
            done => return done,
        }
    }
    Err(ReloadError::Compacted {
        prefix: prefix.to_owned(),
        reads: COMPACTED_READS,
    })
}

/// Whether etcd refused a read because its revision has been compacted.
fn is_compacted(error: &etcd_client::Error) -> bool {
    is_out_of_range(error, "compacted")
}

/// Whether the client refused a response larger than its message limit.
fn is_too_large(error: &etcd_client::Error) -> bool {
    is_out_of_range(error, "too large")
}

fn is_out_of_range(error: &etcd_client::Error, saying: &str) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange && status.message().contains(saying))
}

/// One paged read at one revision. The first page is a linearizable read,
/// so its revision is at least any revision this node has already seen,
/// such as the won one.
async fn read_pages(
    client: &Client,
    prefix: &str,
    config: &ReloadConfig,
    min_revision: i64,
    faults: &Faults,
) -> Result<Snapshot, ReloadError> {
    let failed = |source| ReloadError::ReadFailed {
        prefix: prefix.to_owned(),
        source,
    };
    let end = prefix_end(prefix.as_bytes());
    let mut pages = PageSizer::new(config);
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(pages.response_limit());
    let mut snapshot = Snapshot::default();
    let mut start = prefix.as_bytes().to_vec();
    let mut progress = Progress::new(prefix);
    loop {
        // etcd answers a range in ascending key order, which the next
        // page's start relies on; no sort is asked for.
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(pages.limit());
        if snapshot.revision > 0 {
            options = options.with_revision(snapshot.revision);
        }
        let mut page = match kv.get(start.clone(), Some(options)).await {
            Err(error) if is_too_large(&error) && pages.shrink() => {
                tracing::debug!(
                    prefix,
                    "a metadata page was too large ({error}); asking for {} keys",
                    pages.limit()
                );
                continue;
            }
            answer => answer.map_err(failed)?,
        };
        if snapshot.revision == 0 {
            progress.total(page.count());
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
        let (keys, mut bytes) = (kvs.len() as u64, 0);
        for kv in kvs {
            bytes += (kv.key().len() + kv.value().len()) as u64;
            if let Some(key) = relative_key(prefix, kv.key()) {
                snapshot.entries.insert(key, kv.value().to_vec());
            }
        }
        pages.read(keys, bytes);
        progress.read(keys, bytes);
        faults.reload_page_read().await;
        if !more {
            break;
        }
    }
    progress.done();
    Ok(snapshot)
}

/// Info lines while a large prefix is read, so an operator watching a
/// million-key reload sees it advance rather than a silent node.
struct Progress<'a> {
    prefix: &'a str,
    started: std::time::Instant,
    last_line: std::time::Instant,
    total: i64,
    keys: u64,
    bytes: u64,
}

impl<'a> Progress<'a> {
    /// Below this many keys a read is quick: it logs nothing at info.
    const LARGE: i64 = 50_000;
    /// The time between two progress lines.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(prefix: &'a str) -> Self {
        let now = std::time::Instant::now();
        Self {
            prefix,
            started: now,
            last_line: now,
            total: 0,
            keys: 0,
            bytes: 0,
        }
    }

    /// The first page's count: every key under the prefix at the read's revision.
    fn total(&mut self, total: i64) {
        self.total = total;
        if total >= Self::LARGE {
            tracing::info!(
                prefix = self.prefix,
                keys = total,
                "reading the metadata copy: {total} keys"
            );
        }
    }

    fn read(&mut self, keys: u64, bytes: u64) {
        self.keys += keys;
        self.bytes += bytes;
        if self.total >= Self::LARGE && self.last_line.elapsed() >= Self::EVERY {
            self.last_line = std::time::Instant::now();
            let share = self.keys as f64 * 100.0 / self.total as f64;
            tracing::info!(
                prefix = self.prefix,
                keys = self.keys,
                of = self.total,
                mib = self.bytes / (1 << 20),
                "reading the metadata copy: {} of {} keys ({share:.0}%) in {:.1} s",
                self.keys,
                self.total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn done(&self) {
        if self.total >= Self::LARGE {
            tracing::info!(
                prefix = self.prefix,
                keys = self.keys,
                mib = self.bytes / (1 << 20),
                "read the metadata copy: {} keys, {} MiB in {:.1} s",
                self.keys,
                self.bytes / (1 << 20),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// `key` relative to the metadata `prefix`; `None` for the prefix's own key
/// (earlier versions' catch-up marker), which is no coordinator's metadata.
pub(crate) fn relative_key(prefix: &str, key: &[u8]) -> Option<String> {
    let relative = key.get(prefix.len()..).filter(|rest| !rest.is_empty())?;
    Some(String::from_utf8_lossy(relative).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizer(page_size: i64, page_bytes: u64) -> PageSizer {
        PageSizer::new(&ReloadConfig {
            page_size,
            page_bytes,
            ..ReloadConfig::default()
        })
    }

    #[test]
    fn pages_grow_from_a_thousand_keys_to_the_byte_target() {
        let mut pages = sizer(100_000, 8 << 20);
        assert_eq!(pages.limit(), FIRST_PAGE_KEYS);
        // 1000 entries of 104 bytes (a 100-byte value, a short key): 128
        // bytes each with the overhead, so 8 MiB holds 65536 of them.
        pages.read(1000, 104_000);
        assert_eq!(pages.limit(), 65_536);
        assert_eq!(pages.response_limit(), 32 << 20);
    }

    #[test]
    fn pages_never_ask_for_more_than_page_size_keys() {
        let mut pages = sizer(500, 8 << 20);
        assert_eq!(pages.limit(), 500);
        pages.read(500, 500);
        assert_eq!(pages.limit(), 500);
    }

    #[test]
    fn large_values_make_small_pages_and_a_refused_page_is_halved_down_to_one_key() {
        let mut pages = sizer(100_000, 1 << 20);
        pages.read(3, 3 * (1 << 20));
        assert_eq!(pages.limit(), 1);
        assert!(!pages.shrink());
        let mut pages = sizer(100_000, 1 << 20);
        assert!(pages.shrink());
        assert_eq!(pages.limit(), FIRST_PAGE_KEYS / 2);
    }

    #[test]
    fn an_empty_page_keeps_the_first_size() {
        let mut pages = sizer(100_000, 8 << 20);
        pages.read(0, 0);
        assert_eq!(pages.limit(), FIRST_PAGE_KEYS);
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
