//! etcd's standard election recipe (the layout of Go's `concurrency.Election`), so etcd's own tools see our leader.
//!
//! Each candidate puts `{election}/{lease id in hex}` on its lease; the key with
//! the lowest create revision leads. A standin node follows every election
//! with one watch (`etcd::fanout`), and its candidates wait for their turn
//! in what that watch shows, not with a read and a watch each.

use std::collections::HashMap;
use std::time::Duration;

use crate::etcd::session::SessionInfo;
use crate::etcd::{Watch, WatchHub, prefix_end};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse,
};

/// This candidate's key in the election and its create revision, which is the
/// fencing token once the key leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidacy {
    /// The full key, `{election}/{lease:x}`.
    pub key: String,
    /// The key's create revision.
    pub revision: i64,
    /// The lease the key is attached to.
    pub lease: i64,
}

/// Failures of the election recipe.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// An etcd call of the recipe failed.
    #[error("election call to etcd failed: {0}")]
    EtcdFailed(#[from] etcd_client::Error),
    /// Our candidate key vanished (lease expired or revoked, or someone deleted it).
    #[error("candidate key {key} is gone from etcd")]
    CandidacyLost {
        /// The key that vanished.
        key: String,
    },
    /// A watch ended without the event it waited for.
    #[error("watch on {key} ended: {reason}")]
    WatchEnded {
        /// The watched key.
        key: String,
        /// Why it ended.
        reason: String,
    },
}

impl CampaignError {
    /// Whether etcd said the candidacy's lease does not exist (expired or
    /// revoked): nothing can campaign on it any more.
    pub(crate) fn lease_gone(&self) -> bool {
        matches!(self, Self::EtcdFailed(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::NotFound)
    }
}

/// The key etcd's recipe gives a candidate on `lease`.
pub fn candidate_key(election: &str, lease: i64) -> String {
    format!("{election}/{lease:x}")
}

/// Puts this candidate's key if it is absent (a retry after a lost reply finds
/// its own key), or proclaims the new value on it when it exists.
pub(crate) async fn join(
    client: &Client,
    election: &str,
    lease: i64,
    value: Vec<u8>,
) -> Result<Candidacy, CampaignError> {
    let key = candidate_key(election, lease);
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let response = client.kv_client().txn(txn).await?;
    let revision = if response.succeeded() {
        response.header().map_or(0, |h| h.revision())
    } else {
        let existing = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(KeyValue::create_revision),
                _ => None,
            })
            .ok_or_else(|| CampaignError::CandidacyLost { key: key.clone() })?;
        let candidacy = Candidacy {
            key: key.clone(),
            revision: existing,
            lease,
        };
        proclaim(client, &candidacy, value).await?;
        existing
    };
    Ok(Candidacy {
        key,
        revision,
        lease,
    })
}

/// The next response of `stream`, a watch on `key`; a cancelled or closed
/// watch is an error, for the caller to re-open.
async fn next_response(stream: &mut Watch, key: &str) -> Result<WatchResponse, CampaignError> {
    live(stream.message().await?, key)
}

/// `response` of a watch on `key`, unless the watch was cancelled or closed.
fn live(response: Option<WatchResponse>, key: &str) -> Result<WatchResponse, CampaignError> {
    let ended = |reason: String| CampaignError::WatchEnded {
        key: key.to_owned(),
        reason,
    };
    match response {
        Some(response) if response.canceled() => Err(ended(response.cancel_reason().to_owned())),
        Some(response) => Ok(response),
        None => Err(ended("stream closed".into())),
    }
}

/// Rewrites the leader value, only while `me` still holds its key.
pub(crate) async fn proclaim(
    client: &Client,
    me: &Candidacy,
    value: Vec<u8>,
) -> Result<(), CampaignError> {
    let proclaimed = client
        .kv_client()
        .txn(proclaim_beside(me, value, None))
        .await?;
    proclaimed_or_lost(me, proclaimed.succeeded())
}

/// The transaction that rewrites the leader value only while `me` still
/// holds its key, with `beside` done whether or not it does: one write
/// where there would be two.
pub(crate) fn proclaim_beside(me: &Candidacy, value: Vec<u8>, beside: Option<TxnOp>) -> Txn {
    let proclaimed = TxnOp::put(
        me.key.as_str(),
        value,
        Some(PutOptions::new().with_lease(me.lease)),
    );
    Txn::new()
        .when([Compare::create_revision(
            me.key.as_str(),
            CompareOp::Equal,
            me.revision,
        )])
        .and_then(
            beside
                .iter()
                .cloned()
                .chain([proclaimed])
                .collect::<Vec<_>>(),
        )
        .or_else(beside.into_iter().collect::<Vec<_>>())
}

/// What a proclaim came to: done, or refused because `me` lost its key.
pub(crate) fn proclaimed_or_lost(me: &Candidacy, succeeded: bool) -> Result<(), CampaignError> {
    if succeeded {
        Ok(())
    } else {
        Err(CampaignError::CandidacyLost {
            key: me.key.clone(),
        })
    }
}

/// The current leader's key-value: the candidate with the lowest create revision.
pub async fn leader(client: &Client, election: &str) -> Result<Option<KeyValue>, CampaignError> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let mut response = client
        .kv_client()
        .get(format!("{election}/"), Some(options))
        .await?;
    Ok(response.take_kvs().into_iter().next())
}

/// Every candidate in the election, oldest (the leader) first.
pub async fn candidates(client: &Client, election: &str) -> Result<Vec<KeyValue>, CampaignError> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let mut response = client
        .kv_client()
        .get(format!("{election}/"), Some(options))
        .await?;
    Ok(response.take_kvs())
}

/// Where a leader transfer stands, as the election shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Succession {
    /// The target is next in line behind the leader.
    Ready,
    /// The target's candidate key is gone.
    TargetLeft,
    /// The leader's own key no longer leads.
    NotLeading,
}

/// Waits until the election shows where a transfer from `leader` to the
/// candidate `target` (its key and create revision) stands: re-read on
/// every change under the election prefix while the candidates between the
/// two make way. `stalled` is told who is still in between after each read.
pub(crate) async fn await_succession(
    watches: &WatchHub,
    election: &str,
    leader: &Candidacy,
    target: (&str, i64),
    mut stalled: impl FnMut(Vec<KeyValue>) + Send,
) -> Result<Succession, CampaignError> {
    let prefix = format!("{election}/");
    let mut stream = watches
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    loop {
        let mut line = candidates(watches.client(), election).await?.into_iter();
        let first = line.next();
        if !first.as_ref().is_some_and(|kv| {
            kv.key() == leader.key.as_bytes() && kv.create_revision() == leader.revision
        }) {
            return Ok(Succession::NotLeading);
        }
        let (key, revision) = target;
        let mut between = Vec::new();
        let mut found = false;
        for kv in line {
            if kv.key() == key.as_bytes() && kv.create_revision() == revision {
                found = true;
                break;
            }
            between.push(kv);
        }
        if !found {
            return Ok(Succession::TargetLeft);
        }
        if between.is_empty() {
            return Ok(Succession::Ready);
        }
        stalled(between);
        next_response(&mut stream, &prefix).await?;
    }
}

/// A leader as read from the election: its registration and its term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's session JSON (the leader key's value).
    pub session: SessionInfo,
    /// The leader key.
    pub key: String,
    /// The leader key's create revision: the epoch of its term.
    pub revision: i64,
}

impl Leader {
    /// Decodes the leader key-value; a corrupt value is an error naming the key.
    pub fn decode(kv: &KeyValue) -> Result<Self, crate::etcd::session::SessionError> {
        Ok(Self {
            session: SessionInfo::decode(kv.key(), kv.value())?,
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            revision: kv.create_revision(),
        })
    }
}

/// What an observer reports: the leader, or none when nobody leads.
pub(crate) type ObservedLeader = Option<Leader>;

/// What [`follow_prefix`] hands its handler: a fresh read of every key
/// (after `Reset`), then each change from the watch; `Settled` closes each
/// batch, the moment to act on what changed.
#[derive(Clone, Copy)]
pub(crate) enum PrefixChange<'a> {
    /// Forget every key: a new read follows.
    Reset,
    /// A key was read, created or written.
    Put(&'a KeyValue),
    /// A key was deleted.
    Delete(&'a KeyValue),
    /// The read, or one watch response, is complete: the keys now stand as
    /// at this revision (every change up to it has been handed out).
    Settled(i64),
}

/// Follows every key under `prefix` until `handle` returns false: reads
/// them once, then keeps up from the watch, without a read per event. With
/// `beyond`, a prefix after `prefix`, the same watch also carries every
/// change up to the end of `beyond` (never read: only what changes is
/// handed on), in one revision order with the keys' changes. A broken
/// watch is logged and, after `retry_after`, opened again from the
/// revision after the last one handed out; only a compacted one is read
/// again from scratch.
pub(crate) async fn follow_prefix(
    watches: &WatchHub,
    prefix: &str,
    beyond: Option<&str>,
    retry_after: Duration,
    mut handle: impl FnMut(PrefixChange<'_>) -> bool + Send,
) {
    let range_end = prefix_end(beyond.unwrap_or(prefix).as_bytes());
    // What the keys stand at, once read: the read's revision, then that of
    // the last event handed out.
    let mut seen = None;
    loop {
        match follow_prefix_once(watches, prefix, &range_end, &mut seen, &mut handle).await {
            Ok(()) => return,
            Err(error) => {
                let again = match seen {
                    Some(revision) => format!("from revision {}", revision + 1),
                    None => "by reading it again".to_owned(),
                };
                tracing::warn!(
                    prefix,
                    "following {prefix} failed, resuming {again}: {error}"
                );
                tokio::time::sleep(retry_after).await;
            }
        }
    }
}

async fn follow_prefix_once(
    watches: &WatchHub,
    prefix: &str,
    range_end: &[u8],
    seen: &mut Option<i64>,
    handle: &mut (impl FnMut(PrefixChange<'_>) -> bool + Send),
) -> Result<(), CampaignError> {
    let from = match *seen {
        Some(revision) => revision,
        None => {
            let mut kv = watches.client().kv_client();
            let snapshot = Box::pin(kv.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
            let revision = snapshot.header().map_or(0, |header| header.revision());
            let read = std::iter::once(PrefixChange::Reset)
                .chain(snapshot.kvs().iter().map(PrefixChange::Put))
                .chain(std::iter::once(PrefixChange::Settled(revision)));
            for change in read {
                if !handle(change) {
                    return Ok(());
                }
            }
            *seen = Some(revision);
            revision
        }
    };
    let options = WatchOptions::new()
        .with_range(range_end.to_vec())
        .with_start_revision(from + 1);
    let mut stream = watches.watch(prefix, Some(options)).await?;
    // Not a response's header: the response that confirms the watch, and
    // those that catch it up, name the store's current revision while
    // events before it are still to come.
    let mut last = from;
    loop {
        let response = stream.message().await?;
        let compacted = response.as_ref().map_or(0, WatchResponse::compact_revision);
        if compacted > 0 {
            // The revision to resume from is gone: read the keys again.
            *seen = None;
            return Err(CampaignError::WatchEnded {
                key: prefix.to_owned(),
                reason: format!("etcd compacted its history to revision {compacted}, past {last}"),
            });
        }
        let response = live(response, prefix)?;
        if response.events().is_empty() {
            continue;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            last = last.max(kv.mod_revision());
            let change = match event.event_type() {
                EventType::Put => PrefixChange::Put(kv),
                EventType::Delete => PrefixChange::Delete(kv),
            };
            if !handle(change) {
                return Ok(());
            }
        }
        if !handle(PrefixChange::Settled(last)) {
            return Ok(());
        }
        *seen = Some(last);
    }
}

/// Follows the election's leader until `report` returns false, reporting
/// each change: every candidate is read once and then kept current from
/// the watch, so a handover watched by N standbys costs etcd N events, not
/// N reads per event. A corrupt leader value is reported and treated as
/// "leader unknown". (A node's roles subscribe [`leader_observer`] to the
/// node's one follower of its elections instead.)
#[cfg(feature = "grpc")]
pub(crate) async fn observe(
    watches: WatchHub,
    election: String,
    retry_after: Duration,
    report: impl FnMut(ObservedLeader) -> bool + Send,
) {
    let prefix = format!("{election}/");
    follow_prefix(
        &watches,
        &prefix,
        None,
        retry_after,
        leader_observer(election, report),
    )
    .await;
}

/// What [`observe`] does with each change of the election's keys, for a
/// follower of them that is shared: the candidates kept current, and the
/// leader reported when it changes.
pub(crate) fn leader_observer(
    election: String,
    mut report: impl FnMut(ObservedLeader) -> bool + Send,
) -> impl FnMut(PrefixChange<'_>) -> bool + Send {
    let mut candidates: HashMap<Vec<u8>, KeyValue> = HashMap::new();
    // The leader's key and the revision of its value, as last reported.
    let mut reported: Option<Option<(Vec<u8>, i64)>> = None;
    move |change| {
        match change {
            PrefixChange::Reset => candidates.clear(),
            PrefixChange::Put(kv) => {
                candidates.insert(kv.key().to_vec(), kv.clone());
            }
            PrefixChange::Delete(kv) => {
                candidates.remove(kv.key());
            }
            PrefixChange::Settled(_) => {
                let oldest = candidates.values().min_by_key(|kv| kv.create_revision());
                let seen = oldest.map(|kv| (kv.key().to_vec(), kv.mod_revision()));
                if reported.as_ref() == Some(&seen) {
                    return true;
                }
                let current = oldest.and_then(|kv| {
                    Leader::decode(kv)
                        .inspect_err(|error| tracing::error!(election, "{error}"))
                        .ok()
                });
                reported = Some(seen);
                return report(current);
            }
        }
        true
    }
}
