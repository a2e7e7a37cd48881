//! Following a role's metadata on the node's one watch of its elections and metadata: each response's changes, with their revisions, for the reload actor.

use etcd_client::KeyValue;

use crate::coordinator::MetaChange;
use crate::etcd::recipe::PrefixChange;
use crate::etcd::{PrefixFanout, Routed, Subscription};
use crate::runtime::reload::read::relative_key;

/// A watch response may carry one revision's every event (etcd does not
/// split a revision unless asked to): a prefix deletion of a million keys
/// is one response of tens of megabytes, which the default 4 MiB limit
/// would refuse on every resume, wedging the watch for good. The limit of
/// the node's watch of its elections and metadata.
pub(crate) const WATCH_MESSAGE_LIMIT: usize = 1 << 30;

/// One change of the role's metadata, as the watch delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// The revision it was made at.
    pub revision: i64,
    /// The change, key relative to the role's prefix.
    pub change: MetaChange,
    /// A put that created its key (etcd's version 1), which a copy holding
    /// only decoded metadata needs to count its keys.
    pub created: bool,
}

/// What the node's watch handed on.
#[derive(Debug)]
pub(crate) enum Followed {
    /// Changes of one response, in order.
    Changed(Vec<Change>),
    /// The node's watch missed changes (etcd compacted the revision it had
    /// to resume from): the copy can no longer be caught up, only read again.
    Lost,
}

/// Hands `report` every change under `prefix`, `{root}/meta/{role}/`, from
/// now on, until it returns false or the subscription is dropped.
pub(crate) fn follow(
    fanout: &PrefixFanout,
    role: &str,
    prefix: String,
    mut report: impl FnMut(Followed) -> bool + Send + 'static,
) -> Subscription {
    fanout.subscribe_routed(
        role,
        Box::new(move |routed| match routed {
            Routed::Changes(changes) => {
                let changes = changes
                    .iter()
                    .filter_map(|change| meta_change(&prefix, change))
                    .collect();
                report(Followed::Changed(changes))
            }
            Routed::Lost => {
                report(Followed::Lost);
                false
            }
        }),
    )
}

/// A change of the role's metadata; `None` for the prefix's own key (the
/// catch-up marker of earlier versions).
fn meta_change(prefix: &str, change: &PrefixChange<'_>) -> Option<Change> {
    let (kv, put): (&KeyValue, bool) = match *change {
        PrefixChange::Put(kv) => (kv, true),
        PrefixChange::Delete(kv) => (kv, false),
        PrefixChange::Reset | PrefixChange::Settled(_) => return None,
    };
    let key = relative_key(prefix, kv.key())?;
    let change = if put {
        MetaChange::Put {
            key,
            value: kv.value().to_vec(),
        }
    } else {
        MetaChange::Delete { key }
    };
    Some(Change {
        revision: kv.mod_revision(),
        change,
        created: put && kv.version() == 1,
    })
}
