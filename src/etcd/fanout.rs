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
    /// The revision the keys stand at, as of the last `Settled`.
    revision: i64,
    /// A response's changes are being handed out: its `Settled` follows.
    in_batch: bool,
    /// Groups changed in the batch being handed out; `None` after a reset:
    /// every subscriber hears the `Settled`.
    touched: Option<BTreeSet<String>>,
    next_id: u64,
    by_group: HashMap<String, Vec<(u64, Handler)>>,
    every: Vec<(u64, Handler)>,
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

/// Hands `change` to each of `handlers`, dropping those that are done.
fn hand(handlers: &mut Vec<(u64, Handler)>, change: PrefixChange<'_>) {
    handlers.retain_mut(|(_, handler)| handler(change));
}

impl Mirror {
    fn apply(&mut self, change: PrefixChange<'_>) {
        match change {
            PrefixChange::Reset => {
                self.keys.clear();
                self.in_batch = true;
                self.touched = None;
                self.hand_everyone(PrefixChange::Reset);
            }
            PrefixChange::Put(kv) | PrefixChange::Delete(kv) => {
                if matches!(change, PrefixChange::Put(_)) {
                    self.keys.insert(kv.key().to_vec(), kv.clone());
                } else {
                    self.keys.remove(kv.key());
                }
                if !self.in_batch {
                    self.in_batch = true;
                    self.touched = Some(BTreeSet::new());
                }
                hand(&mut self.every, change);
                if let Some(group) = group_of(&self.prefix, kv.key()) {
                    if let Some(touched) = &mut self.touched
                        && !touched.contains(group)
                    {
                        touched.insert(group.to_owned());
                    }
                    if let Some(handlers) = self.by_group.get_mut(group) {
                        hand(handlers, change);
                    }
                }
            }
            PrefixChange::Settled(revision) => {
                self.in_batch = false;
                self.revision = revision;
                hand(&mut self.every, change);
                match self.touched.take() {
                    None => {
                        for handlers in self.by_group.values_mut() {
                            hand(handlers, change);
                        }
                    }
                    Some(touched) => {
                        for group in touched {
                            if let Some(handlers) = self.by_group.get_mut(&group) {
                                hand(handlers, change);
                            }
                        }
                    }
                }
                self.by_group.retain(|_, handlers| !handlers.is_empty());
            }
        }
    }

    /// Hands a reset to every subscriber of every group and of all.
    fn hand_everyone(&mut self, change: PrefixChange<'_>) {
        hand(&mut self.every, change);
        for handlers in self.by_group.values_mut() {
            hand(handlers, change);
        }
    }

    /// Hands `handler` the keys of `group` (every key for `None`) as they
    /// stand; whether it wants more.
    fn replay(&self, group: Option<&str>, handler: &mut Handler) -> bool {
        if !handler(PrefixChange::Reset) {
            return false;
        }
        let start = match group {
            Some(group) => format!("{}{group}/", self.prefix),
            None => self.prefix.clone(),
        };
        for (key, kv) in self.keys.range(start.as_bytes().to_vec()..) {
            if !key.starts_with(start.as_bytes()) {
                break;
            }
            // A group's name may itself hold a `/`: keys of deeper groups
            // share the start, and are not this group's.
            if group.is_some() && group_of(&self.prefix, key) != group {
                continue;
            }
            if !handler(PrefixChange::Put(kv)) {
                return false;
            }
        }
        // Mid-batch, the batch's own `Settled` follows.
        self.in_batch || handler(PrefixChange::Settled(self.revision))
    }
}

impl PrefixFanout {
    /// Follows every key under `prefix` with one watch on `watches`.
    pub(crate) fn start(watches: WatchHub, prefix: String, retry_after: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Mirror {
            prefix: prefix.clone(),
            keys: BTreeMap::new(),
            revision: 0,
            in_batch: true,
            touched: None,
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
            // A subscriber that joins mid-batch hears its `Settled`.
            if let Some(touched) = &mut mirror.touched
                && let Some(group) = group
            {
                touched.insert(group.to_owned());
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

        fn last(seen: &Mutex<Vec<Vec<String>>>) -> Option<Vec<String>> {
            seen.lock().unwrap().last().cloned()
        }

        #[tokio::test]
        async fn each_subscriber_hears_its_groups_keys_then_their_changes_and_nothing_once_dropped()
        -> Result<(), Box<dyn std::error::Error>> {
            let etcd = EtcdServer::start().await?;
            let client = etcd.client().await?;
            let mut kv = client.kv_client();
            kv.put("e/a/1", "x", None).await?;
            kv.put("e/b/1", "x", None).await?;
            let fanout = PrefixFanout::start(
                WatchHub::new(client.clone(), 1, 4 << 20),
                "e/".into(),
                Duration::from_millis(100),
            );
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
