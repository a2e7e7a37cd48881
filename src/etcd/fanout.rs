//! One follower of a prefix for a whole node: every election's observers and the spread read the node's one watch of the election prefix, not a watch each, and the metadata copies follow their changes on that same watch.
//!
//! A node of a thousand roles that watched each role's election once for its
//! leader observer, once more for its leader's preference and once for the
//! spread made etcd send every candidate change to each of those watchers:
//! at a takeover wave, most of etcd's work. Here one [`follow_prefix`] of
//! the prefix keeps a mirror of every key and hands each change to the
//! subscribers of the key's group (a role's election), or of every group.
//!
//! The same watch runs on past the election prefix to the end of a second
//! one, the metadata's, whose changes are routed to their role's
//! subscribers without being kept. One watch delivers in one revision
//! order, and a response's routed changes are handed before any election
//! settles: when a candidate learns it leads, its role's metadata follower
//! has been handed every change made before, so a win needs no write to
//! find out how far to catch up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::KeyValue;
use tokio::sync::watch;

use crate::etcd::WatchHub;
use crate::etcd::recipe::{PrefixChange, follow_prefix};
use crate::task::OwnedTask;

/// What a subscriber is handed; it returns false to end its subscription.
pub(crate) type Handler = Box<dyn FnMut(PrefixChange<'_>) -> bool + Send>;

/// What a subscriber of a routed group is handed.
pub(crate) enum Routed<'a> {
    /// The group's changes of one response, in revision order (each
    /// key-value carries its own): `Put`s and `Delete`s.
    Changes(&'a [PrefixChange<'a>]),
    /// The watch was read again from scratch (etcd had compacted the
    /// revision it had to resume from): changes were missed, and the
    /// subscription is over.
    Lost,
}

/// What a routed subscriber is handed; it returns false to end its subscription.
pub(crate) type RoutedHandler = Box<dyn FnMut(Routed<'_>) -> bool + Send>;

/// A follower of every key under one prefix, shared by its subscribers.
pub(crate) struct PrefixFanout {
    shared: Arc<Mutex<Mirror>>,
    /// Whether the first read has settled.
    read: watch::Receiver<bool>,
    _follow: OwnedTask,
}

/// The keys as the watch last showed them, and who follows which.
struct Mirror {
    prefix: String,
    /// The prefix whose changes are routed, not kept, if any.
    routed: Option<String>,
    keys: BTreeMap<Vec<u8>, KeyValue>,
    /// The revision the keys stand at, as of the last `Settled`; 0 before
    /// the first read.
    revision: i64,
    /// The read or watch response being handed in, until its `Settled`.
    batch: Batch,
    next_id: u64,
    by_group: HashMap<String, Vec<(u64, Handler)>>,
    every: Vec<(u64, Handler)>,
    by_route: HashMap<String, Vec<(u64, RoutedHandler)>>,
    /// Told once the first read has settled.
    read: watch::Sender<bool>,
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
    /// The routed prefix's changes, in order, likewise.
    routed: Vec<(bool, KeyValue)>,
}

/// A subscription: dropping it ends it.
pub(crate) struct Subscription {
    shared: Weak<Mutex<Mirror>>,
    to: Subscribed,
    id: u64,
}

/// What a subscription follows.
enum Subscribed {
    Group(String),
    Every,
    Route(String),
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut mirror = lock(&shared);
        match &self.to {
            Subscribed::Group(group) => unsubscribe(&mut mirror.by_group, group, self.id),
            Subscribed::Every => mirror.every.retain(|(id, _)| *id != self.id),
            Subscribed::Route(group) => unsubscribe(&mut mirror.by_route, group, self.id),
        }
    }
}

/// Removes subscriber `id` of `group`, and the group once it has none.
fn unsubscribe<H>(groups: &mut HashMap<String, Vec<(u64, H)>>, group: &str, id: u64) {
    if let Some(handlers) = groups.get_mut(group) {
        handlers.retain(|(each, _)| *each != id);
        if handlers.is_empty() {
            groups.remove(group);
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
                    ..Batch::default()
                }
            }
            PrefixChange::Put(kv) => self.keep(true, kv),
            PrefixChange::Delete(kv) => self.keep(false, kv),
            PrefixChange::Settled(revision) => self.settle(revision),
        }
    }

    /// Keeps a change of the batch: the prefix's, or the routed prefix's.
    fn keep(&mut self, put: bool, kv: &KeyValue) {
        if kv.key().starts_with(self.prefix.as_bytes()) {
            self.batch.changes.push((put, kv.clone()));
        } else if self
            .routed
            .as_ref()
            .is_some_and(|routed| kv.key().starts_with(routed.as_bytes()))
        {
            self.batch.routed.push((put, kv.clone()));
        }
    }

    /// Hands each routed group's subscribers their changes; after a reset
    /// that followed a read (changes were missed), tells every routed
    /// subscriber it lost them, which ends its subscription.
    fn hand_routed(&mut self, lost: bool, routed: &[(bool, KeyValue)]) {
        if lost {
            for (_, mut handlers) in self.by_route.drain() {
                for (_, handler) in &mut handlers {
                    handler(Routed::Lost);
                }
            }
            return;
        }
        let Some(prefix) = &self.routed else { return };
        let mut touched: BTreeMap<&str, Vec<PrefixChange<'_>>> = BTreeMap::new();
        for each in routed {
            let Some(rest) = std::str::from_utf8(each.1.key())
                .ok()
                .and_then(|key| key.get(prefix.len()..))
            else {
                continue;
            };
            // `{prefix}{group}/{key}`: a key may hold `/`, and so may a
            // group, whose prefix then also covers the deeper group's keys.
            for (end, _) in rest.match_indices('/') {
                let group = &rest[..end];
                if self.by_route.contains_key(group) {
                    touched.entry(group).or_default().push(as_change(each));
                }
            }
        }
        for (group, changes) in touched {
            if let Some(handlers) = self.by_route.get_mut(group) {
                handlers.retain_mut(|(_, handler)| handler(Routed::Changes(&changes)));
            }
        }
        self.by_route.retain(|_, handlers| !handlers.is_empty());
    }

    /// Hands the routed changes of the batch to their groups first, then
    /// applies the rest to the keys and hands each touched group's
    /// subscribers their changes and the `Settled` (after a reset, every
    /// group's), and last the subscribers of every group. Groups whose
    /// oldest key went come first: in an election that is the leader, and
    /// a takeover waits on them, not on the groups that lost a standby.
    fn settle(&mut self, revision: i64) {
        let Batch {
            reset,
            changes,
            routed,
        } = std::mem::take(&mut self.batch);
        // Before any election settles: a win decided on this revision
        // finds its metadata follower handed every change up to it.
        self.hand_routed(reset && self.revision != 0, &routed);
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
        self.read
            .send_if_modified(|read| !std::mem::replace(read, true));
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
    /// Follows every key under `prefix` with one watch on `watches`, and
    /// with `routed` (a prefix after `prefix`) routes that prefix's changes.
    pub(crate) fn start(
        watches: WatchHub,
        prefix: String,
        routed: Option<String>,
        retry_after: Duration,
    ) -> Self {
        let (read, read_rx) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Mirror {
            prefix: prefix.clone(),
            routed: routed.clone(),
            keys: BTreeMap::new(),
            revision: 0,
            batch: Batch::default(),
            next_id: 0,
            by_group: HashMap::new(),
            every: Vec::new(),
            by_route: HashMap::new(),
            read,
        }));
        let mirror = shared.clone();
        let follow = async move {
            follow_prefix(
                &watches,
                &prefix,
                routed.as_deref(),
                retry_after,
                |change| {
                    lock(&mirror).apply(change);
                    true
                },
            )
            .await;
        };
        let follow = OwnedTask::spawn_reported(follow, |reason| {
            tracing::error!("the node's follower of its elections failed: {reason}");
        });
        Self {
            shared,
            read: read_rx,
            _follow: follow,
        }
    }

    /// Once the first read has settled: the watch then hands on every
    /// routed change after it, so a routed subscriber's own read of its
    /// group, started after this and after subscribing, misses nothing.
    pub(crate) async fn first_read(&self) {
        let mut read = self.read.clone();
        // The fanout outlives its subscribers; were it gone, so is the wait.
        let _ = read.wait_for(|read| *read).await;
    }

    /// Hands `handler` every change under `{routed prefix}{group}/` from
    /// now on, one response's at a time; until it returns false, the
    /// subscription is dropped, or the changes are lost.
    pub(crate) fn subscribe_routed(&self, group: &str, handler: RoutedHandler) -> Subscription {
        let mut mirror = lock(&self.shared);
        let id = mirror.next_id;
        mirror.next_id += 1;
        mirror
            .by_route
            .entry(group.to_owned())
            .or_default()
            .push((id, handler));
        Subscription {
            shared: Arc::downgrade(&self.shared),
            to: Subscribed::Route(group.to_owned()),
            id,
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
            to: group.map_or(Subscribed::Every, |group| {
                Subscribed::Group(group.to_owned())
            }),
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
        use crate::testing::{EtcdServer, FaultProxy, wait_until};

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

        /// A fresh etcd holding `keys`, a client of it, and a fanout
        /// following `e/` and routing `m/`.
        async fn following(
            keys: &[&str],
        ) -> Result<(EtcdServer, etcd_client::Client, PrefixFanout), Box<dyn std::error::Error>>
        {
            let etcd = EtcdServer::start().await?;
            let client = etcd.client().await?;
            for key in keys {
                client.kv_client().put(*key, "x", None).await?;
            }
            let fanout = fanout_on(client.clone());
            Ok((etcd, client, fanout))
        }

        fn fanout_on(client: etcd_client::Client) -> PrefixFanout {
            PrefixFanout::start(
                WatchHub::new(client, 1, 4 << 20),
                "e/".into(),
                Some("m/".into()),
                Duration::from_millis(100),
            )
        }

        /// What happened, in order, to the subscribers that write here.
        type Log = Arc<Mutex<Vec<String>>>;

        /// A routed subscriber of `group` that logs each change it is
        /// handed as `{group} put|delete {key} @{revision}`, and `lost`.
        fn routed_logger(fanout: &PrefixFanout, group: &'static str, log: &Log) -> Subscription {
            let log = log.clone();
            fanout.subscribe_routed(
                group,
                Box::new(move |routed| {
                    let mut log = log.lock().unwrap();
                    match routed {
                        Routed::Changes(changes) => {
                            for change in changes {
                                let (what, kv) = match change {
                                    PrefixChange::Put(kv) => ("put", kv),
                                    PrefixChange::Delete(kv) => ("delete", kv),
                                    _ => panic!("only puts and deletes are routed"),
                                };
                                let key = kv.key_str().unwrap();
                                log.push(format!("{group} {what} {key} @{}", kv.mod_revision()));
                            }
                        }
                        Routed::Lost => log.push(format!("{group} lost")),
                    }
                    true
                }),
            )
        }

        /// A subscriber of election `group` that logs `{group} reset` and
        /// `{group} settled @{revision}`.
        fn settle_logger(fanout: &PrefixFanout, group: &'static str, log: &Log) -> Subscription {
            let log = log.clone();
            fanout.subscribe(
                Some(group),
                Box::new(move |change| {
                    match change {
                        PrefixChange::Reset => log.lock().unwrap().push(format!("{group} reset")),
                        PrefixChange::Settled(revision) => {
                            log.lock()
                                .unwrap()
                                .push(format!("{group} settled @{revision}"));
                        }
                        _ => {}
                    }
                    true
                }),
            )
        }

        async fn logged(
            log: &Log,
            what: &str,
            entry: String,
        ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
            Ok(wait_until(what, DEADLINE, || {
                let log = log.lock().unwrap().clone();
                let found = log.contains(&entry);
                async move { found.then_some(log) }
            })
            .await?)
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

        #[tokio::test]
        async fn a_responses_routed_changes_reach_their_group_before_any_election_settles()
        -> Result<(), Box<dyn std::error::Error>> {
            use etcd_client::{Txn, TxnOp};
            let (_etcd, client, fanout) = following(&["e/x/1", "e/x/2"]).await?;
            let log: Log = Arc::default();
            let _a = routed_logger(&fanout, "a", &log);
            let _x = settle_logger(&fanout, "x", &log);
            fanout.first_read().await;
            // One revision: metadata of a, of b, of a deeper group a/b, and
            // the election's leader gone.
            let response = client
                .kv_client()
                .txn(Txn::new().and_then([
                    TxnOp::put("m/a/k1", "v", None),
                    TxnOp::put("m/b/k2", "v", None),
                    TxnOp::put("m/a/b/k3", "v", None),
                    TxnOp::delete("e/x/1", None),
                ]))
                .await?;
            let revision = response.header().map_or(0, |h| h.revision());
            let log = logged(&log, "x settles", format!("x settled @{revision}")).await?;
            let after_read: Vec<&String> = log
                .iter()
                .skip_while(|entry| !entry.contains("settled"))
                .skip(1)
                .collect();
            assert_eq!(
                after_read,
                [
                    &format!("a put m/a/k1 @{revision}"),
                    &format!("a put m/a/b/k3 @{revision}"),
                    &format!("x settled @{revision}"),
                ],
                "the whole log: {log:?}"
            );
            Ok(())
        }

        /// A fanout through a proxy, the proxy, and a direct client.
        async fn through_proxy() -> Result<
            (EtcdServer, FaultProxy, etcd_client::Client, PrefixFanout),
            Box<dyn std::error::Error>,
        > {
            let etcd = EtcdServer::start().await?;
            let direct = etcd.client().await?;
            direct.kv_client().put("e/x/1", "x", None).await?;
            let proxy = FaultProxy::start(&etcd.endpoint()).await?;
            let config = crate::config::EtcdConfig {
                endpoints: vec![proxy.endpoint()],
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(5),
                ..crate::config::EtcdConfig::default()
            };
            let fanout = fanout_on(crate::etcd::connect(&config).await?);
            fanout.first_read().await;
            Ok((etcd, proxy, direct, fanout))
        }

        #[tokio::test]
        async fn a_cut_watch_resumes_after_the_last_revision_without_reading_again()
        -> Result<(), Box<dyn std::error::Error>> {
            let (_etcd, proxy, direct, fanout) = through_proxy().await?;
            let log: Log = Arc::default();
            let _a = routed_logger(&fanout, "a", &log);
            let _x = settle_logger(&fanout, "x", &log);
            let mut kv = direct.kv_client();
            let first = kv.put("m/a/1", "v", None).await?;
            let first = first.header().map_or(0, |h| h.revision());
            logged(&log, "the first put", format!("a put m/a/1 @{first}")).await?;

            proxy.cut();
            let cut = kv.put("m/a/2", "v", None).await?;
            let cut = cut.header().map_or(0, |h| h.revision());
            let gone = kv.delete("e/x/1", None).await?;
            let gone = gone.header().map_or(0, |h| h.revision());
            proxy.heal();

            let log = logged(&log, "the election settles", format!("x settled @{gone}")).await?;
            assert!(log.contains(&format!("a put m/a/2 @{cut}")), "{log:?}");
            let resets = log.iter().filter(|entry| *entry == "x reset").count();
            assert_eq!(resets, 1, "only the subscription's own replay: {log:?}");
            assert!(!log.contains(&"a lost".to_owned()), "{log:?}");
            Ok(())
        }

        #[tokio::test]
        async fn a_watch_that_cannot_resume_is_read_again_and_its_routed_subscribers_lose_it()
        -> Result<(), Box<dyn std::error::Error>> {
            let (_etcd, proxy, direct, fanout) = through_proxy().await?;
            let log: Log = Arc::default();
            let _a = routed_logger(&fanout, "a", &log);
            let (handler, x) = recorder();
            let _x = fanout.subscribe(Some("x"), handler);
            let mut kv = direct.kv_client();

            proxy.cut();
            kv.put("e/x/2", "x", None).await?;
            kv.put("m/a/1", "v", None).await?;
            let latest = kv.put("m/a/2", "v", None).await?;
            let latest = latest.header().map_or(0, |h| h.revision());
            direct.kv_client().compact(latest, None).await?;
            proxy.heal();

            logged(
                &log,
                "the subscriber hears it lost changes",
                "a lost".to_owned(),
            )
            .await?;
            wait_until("x holds both keys", DEADLINE, || {
                let done = last(&x) == Some(vec!["e/x/1".into(), "e/x/2".into()]);
                async move { done.then_some(()) }
            })
            .await?;
            // A lost subscription is over: later changes are not handed on.
            kv.put("m/a/3", "v", None).await?;
            kv.put("e/x/3", "x", None).await?;
            wait_until("x holds three keys", DEADLINE, || {
                let done = last(&x).is_some_and(|keys| keys.len() == 3);
                async move { done.then_some(()) }
            })
            .await?;
            assert_eq!(log.lock().unwrap().clone(), ["a lost"]);
            Ok(())
        }
    }
}
