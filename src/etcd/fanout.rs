//! One follower of a prefix for a whole node: every election's observers and the spread read the node's one watch of the election prefix, not a watch each.
//!
//! A node of a thousand roles that watched each role's election once for its
//! leader observer, once more for its leader's preference and once for the
//! spread made etcd send every candidate change to each of those watchers:
//! at a takeover wave, most of etcd's work. Here one [`follow_prefix`] of
//! the prefix keeps a mirror of every key and hands each change to the
//! subscribers of the key's group (a role's election), or of every group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::KeyValue;

use crate::etcd::WatchHub;
use crate::etcd::recipe::{PrefixChange, follow_prefix};
use crate::task::OwnedTask;

/// What a subscriber is handed; it returns false to end its subscription.
pub(crate) type Handler = Box<dyn FnMut(PrefixChange<'_>) -> bool + Send>;

/// A follower of every key under one prefix, shared by its subscribers.
pub(crate) struct PrefixFanout {
    shared: Arc<Mutex<Mirror>>,
    _follow: OwnedTask,
}

/// The keys as the watch last showed them, and who follows which.
struct Mirror {
    prefix: String,
    keys: BTreeMap<Vec<u8>, KeyValue>,
    /// The revision the keys stand at, as of the last `Settled`; 0 before
    /// the first read.
    revision: i64,
    /// The read or watch response being handed in, until its `Settled`.
    batch: Batch,
    next_id: u64,
    by_group: HashMap<String, Vec<(u64, Handler)>>,
    every: Vec<(u64, Handler)>,
}

/// A response's changes, kept until it settles: then each group's
/// subscribers hear theirs and the `Settled` in one go, group after group.
/// A takeover wave is one response of a thousand deletions (the dead
/// node's candidacies in every election), and handing them change by
/// change settled every election only once all were handed, tens of
/// milliseconds later: the first win waited for the last election.
#[derive(Default)]
struct Batch {
    /// It starts with a reset: every subscriber forgets its keys.
    reset: bool,
    /// The changes, in order: whether each is a put, and its key-value.
    changes: Vec<(bool, KeyValue)>,
}

/// A subscription: dropping it ends it.
pub(crate) struct Subscription {
    shared: Weak<Mutex<Mirror>>,
    group: Option<String>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut mirror = lock(&shared);
        match &self.group {
            Some(group) => {
                if let Some(handlers) = mirror.by_group.get_mut(group) {
                    handlers.retain(|(id, _)| *id != self.id);
                    if handlers.is_empty() {
                        mirror.by_group.remove(group);
                    }
                }
            }
            None => mirror.every.retain(|(id, _)| *id != self.id),
        }
    }
}

fn lock(shared: &Mutex<Mirror>) -> MutexGuard<'_, Mirror> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The group of `key` under `prefix`: what lies between the prefix and the
/// last `/` (`{prefix}{group}/{name}`).
pub(crate) fn group_of<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    let key = std::str::from_utf8(key).ok()?;
    let (group, _) = key.get(prefix.len()..)?.rsplit_once('/')?;
    key.starts_with(prefix).then_some(group)
}

/// A change of a batch, as subscribers are handed it.
fn as_change((put, kv): &(bool, KeyValue)) -> PrefixChange<'_> {
    if *put {
        PrefixChange::Put(kv)
    } else {
        PrefixChange::Delete(kv)
    }
}

/// Hands `change` to each of `handlers`, dropping those that are done.
fn hand(handlers: &mut Vec<(u64, Handler)>, change: PrefixChange<'_>) {
    handlers.retain_mut(|(_, handler)| handler(change));
}

impl Mirror {
    fn apply(&mut self, change: PrefixChange<'_>) {
        match change {
            // What came before a reset is read again after it.
            PrefixChange::Reset => {
                self.batch = Batch {
                    reset: true,
                    changes: Vec::new(),
                }
            }
            PrefixChange::Put(kv) => self.batch.changes.push((true, kv.clone())),
            PrefixChange::Delete(kv) => self.batch.changes.push((false, kv.clone())),
            PrefixChange::Settled(revision) => self.settle(revision),
        }
    }

    /// Applies the batch to the keys, then hands each touched group's
    /// subscribers their changes and the `Settled` (after a reset, every
    /// group's), and last the subscribers of every group. Groups whose
    /// oldest key went come first: in an election that is the leader, and
    /// a takeover waits on them, not on the groups that lost a standby.
    fn settle(&mut self, revision: i64) {
        let Batch { reset, changes } = std::mem::take(&mut self.batch);
        let oldest_gone: BTreeSet<&str> = changes
            .iter()
            .filter(|(put, _)| !reset && !put)
            .filter_map(|(_, kv)| {
                let group = group_of(&self.prefix, kv.key())?;
                self.is_oldest(group, kv.key()).then_some(group)
            })
            .collect();
        if reset {
            self.keys.clear();
        }
        for (put, kv) in &changes {
            if *put {
                self.keys.insert(kv.key().to_vec(), kv.clone());
            } else {
                self.keys.remove(kv.key());
            }
        }
        self.revision = revision;
        let mut touched: BTreeMap<&str, Vec<PrefixChange<'_>>> = BTreeMap::new();
        for each in &changes {
            if let Some(group) = group_of(&self.prefix, each.1.key()) {
                touched.entry(group).or_default().push(as_change(each));
            }
        }
        let settled = PrefixChange::Settled(revision);
        if reset {
            for (group, handlers) in &mut self.by_group {
                hand(handlers, PrefixChange::Reset);
                for each in touched.get(group.as_str()).into_iter().flatten() {
                    hand(handlers, *each);
                }
                hand(handlers, settled);
            }
        } else {
            let (first, then): (Vec<_>, Vec<_>) = touched
                .iter()
                .partition(|(group, _)| oldest_gone.contains(*group));
            for (group, theirs) in first.into_iter().chain(then) {
                if let Some(handlers) = self.by_group.get_mut(*group) {
                    for each in theirs {
                        hand(handlers, *each);
                    }
                    hand(handlers, settled);
                }
            }
        }
        if reset {
            hand(&mut self.every, PrefixChange::Reset);
        }
        for each in &changes {
            hand(&mut self.every, as_change(each));
        }
        hand(&mut self.every, settled);
        self.by_group.retain(|_, handlers| !handlers.is_empty());
    }

    /// Whether `key` is the oldest (lowest create revision) of `group`'s keys.
    fn is_oldest(&self, group: &str, key: &[u8]) -> bool {
        let Some(it) = self.keys.get(key) else {
            return false;
        };
        self.group_keys(group)
            .all(|other| other.create_revision() >= it.create_revision())
    }

    /// The keys of `group`, in key order.
    fn group_keys<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        let start = format!("{}{group}/", self.prefix);
        self.keys
            .range(start.as_bytes().to_vec()..)
            .take_while(move |(key, _)| key.starts_with(start.as_bytes()))
            // A group's name may itself hold a `/`: keys of deeper groups
            // share the start, and are not this group's.
            .filter(move |(key, _)| group_of(&self.prefix, key) == Some(group))
            .map(|(_, kv)| kv)
    }

    /// Hands `handler` the keys of `group` (every key for `None`) as they
    /// stand; whether it wants more.
    fn replay(&self, group: Option<&str>, handler: &mut Handler) -> bool {
        if !handler(PrefixChange::Reset) {
            return false;
        }
        let keys: Box<dyn Iterator<Item = &KeyValue>> = match group {
            Some(group) => Box::new(self.group_keys(group)),
            None => Box::new(self.keys.values()),
        };
        for kv in keys {
            if !handler(PrefixChange::Put(kv)) {
                return false;
            }
        }
        // The keys stand as at the last `Settled` (a batch being handed in
        // is handed to this subscriber too); before the first read, that
        // read's own `Settled` follows.
        self.revision == 0 || handler(PrefixChange::Settled(self.revision))
    }
}

impl PrefixFanout {
    /// Follows every key under `prefix` with one watch on `watches`.
    pub(crate) fn start(watches: WatchHub, prefix: String, retry_after: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Mirror {
            prefix: prefix.clone(),
            keys: BTreeMap::new(),
            revision: 0,
            batch: Batch::default(),
            next_id: 0,
            by_group: HashMap::new(),
            every: Vec::new(),
        }));
        let mirror = shared.clone();
        let follow = async move {
            follow_prefix(&watches, &prefix, retry_after, |change| {
                lock(&mirror).apply(change);
                true
            })
            .await;
        };
        let follow = OwnedTask::spawn_reported(follow, |reason| {
            tracing::error!("the node's follower of its elections failed: {reason}");
        });
        Self {
            shared,
            _follow: follow,
        }
    }

    /// Hands `handler` the keys of `group` (every key under the prefix for
    /// `None`) as they stand, then each change, each batch closed by a
    /// `Settled`; until it returns false or the subscription is dropped.
    /// Before the first read it is handed no keys: the read's follow.
    pub(crate) fn subscribe(&self, group: Option<&str>, mut handler: Handler) -> Subscription {
        let mut mirror = lock(&self.shared);
        let id = mirror.next_id;
        mirror.next_id += 1;
        if mirror.replay(group, &mut handler) {
            match group {
                Some(group) => mirror
                    .by_group
                    .entry(group.to_owned())
                    .or_default()
                    .push((id, handler)),
                None => mirror.every.push((id, handler)),
            }
        }
        Subscription {
            shared: Arc::downgrade(&self.shared),
            group: group.map(str::to_owned),
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_group_is_what_lies_between_the_prefix_and_its_last_slash() {
        assert_eq!(group_of("r/election/", b"r/election/tso/1a"), Some("tso"));
        assert_eq!(group_of("r/election/", b"r/election/a/b/1a"), Some("a/b"));
        assert_eq!(group_of("r/election/", b"r/election/1a"), None);
        assert_eq!(group_of("r/election/", b"other/tso/1a"), None);
    }

    #[cfg(feature = "testing")]
    mod against_etcd {
        use super::super::*;
        use crate::testing::{EtcdServer, wait_until};

        const DEADLINE: Duration = Duration::from_secs(10);

        /// What a subscriber saw: the keys it holds after each `Settled`.
        fn recorder() -> (Handler, Arc<Mutex<Vec<Vec<String>>>>) {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let into = seen.clone();
            let mut keys = BTreeMap::new();
            let handler: Handler = Box::new(move |change| {
                match change {
                    PrefixChange::Reset => keys.clear(),
                    PrefixChange::Put(kv) => {
                        keys.insert(kv.key_str().unwrap().to_owned(), ());
                    }
                    PrefixChange::Delete(kv) => {
                        keys.remove(kv.key_str().unwrap());
                    }
                    PrefixChange::Settled(_) => {
                        into.lock().unwrap().push(keys.keys().cloned().collect())
                    }
                }
                true
            });
            (handler, seen)
        }

        /// A fresh etcd holding `keys`, a client of it, and a fanout following `e/`.
        async fn following(
            keys: &[&str],
        ) -> Result<(EtcdServer, etcd_client::Client, PrefixFanout), Box<dyn std::error::Error>>
        {
            let etcd = EtcdServer::start().await?;
            let client = etcd.client().await?;
            for key in keys {
                client.kv_client().put(*key, "x", None).await?;
            }
            let fanout = PrefixFanout::start(
                WatchHub::new(client.clone(), 1, 4 << 20),
                "e/".into(),
                Duration::from_millis(100),
            );
            Ok((etcd, client, fanout))
        }

        fn last(seen: &Mutex<Vec<Vec<String>>>) -> Option<Vec<String>> {
            seen.lock().unwrap().last().cloned()
        }

        #[tokio::test]
        async fn in_one_response_the_groups_whose_oldest_key_went_settle_first()
        -> Result<(), Box<dyn std::error::Error>> {
            use etcd_client::{Txn, TxnOp};
            // In each group the first key put is the oldest.
            let (_etcd, client, fanout) =
                following(&["e/a/1", "e/a/2", "e/b/1", "e/b/2", "e/c/1", "e/c/2"]).await?;
            let mut kv = client.kv_client();
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut subscriptions = Vec::new();
            for group in ["a", "b", "c"] {
                let into = order.clone();
                let handler: Handler = Box::new(move |change| {
                    if let PrefixChange::Settled(revision) = change {
                        into.lock().unwrap().push((revision, group));
                    }
                    true
                });
                subscriptions.push(fanout.subscribe(Some(group), handler));
            }
            wait_until("every group read", DEADLINE, || {
                let done = order.lock().unwrap().len() == 3;
                async move { done.then_some(()) }
            })
            .await?;
            // One revision: a and c lose a later key, b its oldest.
            let deleted = kv
                .txn(Txn::new().and_then([
                    TxnOp::delete("e/a/2", None),
                    TxnOp::delete("e/b/1", None),
                    TxnOp::delete("e/c/2", None),
                ]))
                .await?;
            let revision = deleted.header().map_or(0, |h| h.revision());
            let heard = wait_until("the deletions settled", DEADLINE, || {
                let heard: Vec<&str> = order
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(at, _)| *at == revision)
                    .map(|(_, group)| *group)
                    .collect();
                async move { (heard.len() == 3).then_some(heard) }
            })
            .await?;
            assert_eq!(heard.first(), Some(&"b"), "settled in the order {heard:?}");
            Ok(())
        }

        #[tokio::test]
        async fn each_subscriber_hears_its_groups_keys_then_their_changes_and_nothing_once_dropped()
        -> Result<(), Box<dyn std::error::Error>> {
            let (_etcd, client, fanout) = following(&["e/a/1", "e/b/1"]).await?;
            let mut kv = client.kv_client();
            let (handler, a) = recorder();
            let a_sub = fanout.subscribe(Some("a"), handler);
            let (handler, every) = recorder();
            let _every_sub = fanout.subscribe(None, handler);
            wait_until("both read", DEADLINE, || {
                let done = last(&a) == Some(vec!["e/a/1".into()])
                    && last(&every) == Some(vec!["e/a/1".into(), "e/b/1".into()]);
                async move { done.then_some(()) }
            })
            .await?;

            kv.put("e/b/2", "x", None).await?;
            kv.put("e/a/2", "x", None).await?;
            wait_until("the changes", DEADLINE, || {
                let done = last(&a) == Some(vec!["e/a/1".into(), "e/a/2".into()])
                    && last(&every).is_some_and(|keys| keys.len() == 4);
                async move { done.then_some(()) }
            })
            .await?;
            // A change to b alone does not settle a's subscriber.
            let heard_by_a = a.lock().unwrap().len();
            kv.delete("e/b/1", None).await?;
            wait_until("b's deletion", DEADLINE, || {
                let done = last(&every).is_some_and(|keys| keys.len() == 3);
                async move { done.then_some(()) }
            })
            .await?;
            assert_eq!(a.lock().unwrap().len(), heard_by_a);

            // A late subscriber is handed what stands now.
            let (handler, late) = recorder();
            let _late_sub = fanout.subscribe(Some("b"), handler);
            assert_eq!(last(&late), Some(vec!["e/b/2".to_owned()]));

            drop(a_sub);
            kv.delete("e/a/1", None).await?;
            wait_until("a's deletion", DEADLINE, || {
                let done = last(&every).is_some_and(|keys| keys.len() == 2);
                async move { done.then_some(()) }
            })
            .await?;
            assert_eq!(
                last(&a),
                Some(vec!["e/a/1".to_owned(), "e/a/2".to_owned()]),
                "a dropped subscription hears nothing more"
            );
            Ok(())
        }
    }
}
