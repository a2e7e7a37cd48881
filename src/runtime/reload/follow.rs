//! Following a role's metadata prefix with an etcd watch, from the revision after a copy's, resuming where it stopped when the watch breaks.

use std::sync::Arc;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::config::BackoffConfig;
use crate::coordinator::MetaChange;
use crate::etcd::WatchHub;
use crate::runtime::reload::read::{prefix_end, relative_key};

/// A watch response may carry one revision's every event (etcd does not
/// split a revision unless asked to): a prefix deletion of a million keys
/// is one response of tens of megabytes, which the default 4 MiB limit
/// would refuse on every resume, wedging the copy for good. The limit of
/// the hub that metadata followers share.
pub(crate) const WATCH_MESSAGE_LIMIT: usize = 1 << 30;

/// What the watch delivered.
#[derive(Debug)]
pub(crate) enum Followed {
    /// The changes of every revision up to `revision`, in order.
    Changed {
        /// The last revision delivered.
        revision: i64,
        /// The changes, the marker left out.
        changes: Vec<MetaChange>,
    },
    /// etcd compacted the revision the watch had to start from: the copy
    /// can no longer be caught up, only read again.
    Compacted {
        /// The revision etcd has compacted up to.
        compacted: i64,
    },
}

/// Follows `prefix` from revision `from` on, reporting every response to
/// `report` until it returns `false` or etcd reports a compaction. A broken
/// watch is logged and opened again from the revision after the last one
/// delivered, with backoff, or at once when `wake` is notified (a win
/// waits for this watch: etcd answered it, so it is worth trying now).
pub(crate) async fn follow(
    watches: WatchHub,
    prefix: String,
    from: i64,
    retry: BackoffConfig,
    wake: Arc<Notify>,
    mut report: impl FnMut(Followed) -> bool + Send,
) {
    let mut next = from;
    let mut backoff = Backoff::new(retry);
    loop {
        match follow_once(&watches, &prefix, &mut next, &mut backoff, &mut report).await {
            Ok(()) => return,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    prefix,
                    revision = next,
                    "following the metadata failed; resuming from revision {next} in {delay:?}: {error}"
                );
                sleep_unless_woken(delay, &wake).await;
            }
        }
    }
}

/// Sleeps for `delay`, or until `wake` is notified.
pub(crate) async fn sleep_unless_woken(delay: std::time::Duration, wake: &Notify) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = wake.notified() => {}
    }
}

/// One watch, until it breaks (an error) or the follower is done (`Ok`).
async fn follow_once(
    watches: &WatchHub,
    prefix: &str,
    next: &mut i64,
    backoff: &mut Backoff,
    report: &mut (impl FnMut(Followed) -> bool + Send),
) -> Result<(), etcd_client::Error> {
    let options = WatchOptions::new()
        .with_range(prefix_end(prefix.as_bytes()))
        .with_start_revision(*next);
    let mut stream = watches.watch(prefix, Some(options)).await?;
    loop {
        let Some(response) = stream.message().await? else {
            return Err(etcd_client::Error::WatchError(
                "etcd ended the watch".into(),
            ));
        };
        backoff.reset();
        if response.compact_revision() > 0 {
            let compacted = response.compact_revision();
            report(Followed::Compacted { compacted });
            return Ok(());
        }
        if response.canceled() {
            return Err(etcd_client::Error::WatchError(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            )));
        }
        let Some((revision, changes)) = changes(prefix, &response) else {
            continue;
        };
        *next = revision + 1;
        if !report(Followed::Changed { revision, changes }) {
            return Ok(());
        }
    }
}

/// The changes in `response` and the last revision they reach; `None` for
/// a response without events (the watch's creation).
fn changes(prefix: &str, response: &WatchResponse) -> Option<(i64, Vec<MetaChange>)> {
    let mut last = None;
    let mut changes = Vec::with_capacity(response.events().len());
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        last = Some(kv.mod_revision());
        let Some(key) = relative_key(prefix, kv.key()) else {
            continue;
        };
        changes.push(match event.event_type() {
            EventType::Put => MetaChange::Put {
                key,
                value: kv.value().to_vec(),
            },
            EventType::Delete => MetaChange::Delete { key },
        });
    }
    last.map(|revision| (revision, changes))
}
