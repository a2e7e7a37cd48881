//! A role's election as the node's follower of its elections shows it: the candidates in line, and where one candidacy stands in it.
//!
//! A campaign decides its win here, from the node's one watch of every
//! election, instead of reading the election after each predecessor's
//! deletion and opening a watch on its own key once it leads: when a node
//! leading hundreds of roles dies, their standbys' reads and watches were
//! most of etcd's work in the wave. The line at revision `r` is what a read
//! at `r` returns, so a win seen in it is as certain as a read's: no key
//! created later can stand ahead of ours, and only the deletion of our key,
//! which the line shows as it shows every change, ends the lead.

use std::sync::Arc;

use etcd_client::KeyValue;
use tokio::sync::watch;

use crate::etcd::recipe::{Candidacy, PrefixChange};
use crate::etcd::session::SessionInfo;
use crate::etcd::{PrefixFanout, Subscription};

/// A candidate as the election shows it: its key, its create revision and,
/// for a standin node, its registration.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// The candidate key.
    pub key: String,
    /// Its create revision (its place in line).
    pub revision: i64,
    /// The lease it is on.
    pub lease: i64,
    /// Its session JSON; none for a peer that is not a standin node.
    pub session: Option<SessionInfo>,
}

impl Candidate {
    pub(crate) fn read(kv: &KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            revision: kv.create_revision(),
            lease: kv.lease(),
            session: SessionInfo::decode(kv.key(), kv.value()).ok(),
        }
    }

    /// `id@address` for a standin node, the key for any other peer.
    pub(crate) fn shown(&self) -> String {
        match &self.session {
            Some(session) => format!("{}@{}", session.server_id, session.address),
            None => self.key.clone(),
        }
    }
}

/// The candidates of an election, oldest first, as they stand at `revision`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Line {
    /// Every change up to this revision is in `candidates`.
    pub revision: i64,
    /// The candidates, oldest (the leader) first; shared with the follower
    /// that sends the line, so a change costs no copy of the others.
    pub candidates: Vec<Arc<Candidate>>,
}

/// Where a candidacy stands in its election's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// The line has not reached the revision that created the candidacy.
    Unseen,
    /// Older candidates stand ahead of it.
    Waiting,
    /// It is the oldest candidate: it leads until its key is gone.
    Leading,
    /// Its key is gone: deleted, or replaced by a key of another term.
    Gone,
}

impl Line {
    /// Where `me` stands in this line.
    pub(crate) fn standing(&self, me: &Candidacy) -> Standing {
        if self.revision < me.revision {
            return Standing::Unseen;
        }
        match self.candidates.iter().position(|c| c.key == me.key) {
            Some(place) if self.candidates[place].revision == me.revision => {
                if place == 0 {
                    Standing::Leading
                } else {
                    Standing::Waiting
                }
            }
            _ => Standing::Gone,
        }
    }
}

/// The candidates of `role`'s election, kept current from the node's
/// follower of its elections: a leader does not read its election again on
/// every change (every state a candidate publishes is one), which at a
/// thousand roles was most of etcd's work.
pub(crate) fn follow_line(
    elections: &PrefixFanout,
    role: &str,
) -> (Subscription, watch::Receiver<Line>) {
    let (line_tx, line_rx) = watch::channel(Line::default());
    // Oldest first; a handful, so a scan beats a map.
    let mut candidates: Vec<Arc<Candidate>> = Vec::new();
    let follow = move |change: PrefixChange<'_>| {
        match change {
            PrefixChange::Reset => candidates.clear(),
            PrefixChange::Put(kv) => {
                let candidate = Candidate::read(kv);
                candidates.retain(|c| c.key != candidate.key);
                let place = candidates.partition_point(|c| c.revision < candidate.revision);
                candidates.insert(place, Arc::new(candidate));
            }
            PrefixChange::Delete(kv) => {
                let key = String::from_utf8_lossy(kv.key());
                candidates.retain(|c| c.key != key);
            }
            PrefixChange::Settled(revision) => {
                line_tx.send_replace(Line {
                    revision,
                    candidates: candidates.clone(),
                });
            }
        }
        true
    };
    (elections.subscribe(Some(role), Box::new(follow)), line_rx)
}

/// How a candidacy came to lead.
#[derive(Debug, Clone)]
pub(crate) struct Succession {
    /// The candidate that led the last line in which ours waited: the one
    /// it takes over from. None when it led from the first line it saw.
    pub predecessor: Option<Arc<Candidate>>,
}

/// Waits until `me` leads in `line` (`Some`, with who led before it) or its
/// key is gone (`None`). A follower that ended (the node is going away)
/// counts as gone.
pub(crate) async fn until_leading(
    line: &mut watch::Receiver<Line>,
    me: &Candidacy,
) -> Option<Succession> {
    let mut predecessor = None;
    loop {
        {
            let line = line.borrow_and_update();
            match line.standing(me) {
                Standing::Leading => return Some(Succession { predecessor }),
                Standing::Gone => return None,
                Standing::Waiting => predecessor = line.candidates.first().cloned(),
                Standing::Unseen => {}
            }
        }
        line.changed().await.ok()?;
    }
}

/// Returns once `me`'s key is gone from `line`, or its follower ended: a
/// leader that can no longer see its key must not go on serving.
pub(crate) async fn until_gone(line: &mut watch::Receiver<Line>, me: &Candidacy) {
    let _ = line
        .wait_for(|line| line.standing(me) == Standing::Gone)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidacy(key: &str, revision: i64) -> Candidacy {
        Candidacy {
            key: key.into(),
            revision,
            lease: 1,
        }
    }

    fn line(revision: i64, candidates: &[(&str, i64)]) -> Line {
        Line {
            revision,
            candidates: candidates
                .iter()
                .map(|&(key, revision)| {
                    Arc::new(Candidate {
                        key: key.into(),
                        revision,
                        lease: revision,
                        session: None,
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn a_candidacy_leads_once_the_line_reaches_it_with_no_older_key_and_is_gone_once_its_key_is() {
        let me = candidacy("e/b", 10);
        // Not yet seen: a line behind our creation says nothing, even without our key.
        assert_eq!(line(9, &[("e/a", 5)]).standing(&me), Standing::Unseen);
        assert_eq!(
            line(10, &[("e/a", 5), ("e/b", 10)]).standing(&me),
            Standing::Waiting
        );
        assert_eq!(
            line(12, &[("e/b", 10), ("e/c", 11)]).standing(&me),
            Standing::Leading
        );
        // Deleted once the line has reached us: gone, never waiting again.
        assert_eq!(line(13, &[("e/c", 11)]).standing(&me), Standing::Gone);
        // The same key created again is another term's.
        assert_eq!(line(20, &[("e/b", 19)]).standing(&me), Standing::Gone);
    }

    #[tokio::test]
    async fn a_candidacy_that_leads_names_the_leader_it_last_waited_behind() {
        let me = candidacy("e/c", 10);
        let (lines, mut line_rx) = watch::channel(line(9, &[("e/a", 5)]));
        let waiting = tokio::spawn(async move { until_leading(&mut line_rx, &me).await });
        lines.send_replace(line(10, &[("e/a", 5), ("e/b", 7), ("e/c", 10)]));
        tokio::task::yield_now().await;
        lines.send_replace(line(11, &[("e/b", 7), ("e/c", 10)]));
        tokio::task::yield_now().await;
        lines.send_replace(line(12, &[("e/c", 10)]));
        let succession = waiting.await.unwrap().expect("leads");
        let predecessor = succession.predecessor.expect("waited behind one");
        assert!(
            ["e/a", "e/b"].contains(&predecessor.key.as_str()),
            "{predecessor:?}"
        );
        // Leading from the first line seen: no one to take over from.
        let first = candidacy("e/a", 5);
        let (_lines, mut line_rx) = watch::channel(line(6, &[("e/a", 5)]));
        let led = until_leading(&mut line_rx, &first).await.expect("leads");
        assert!(led.predecessor.is_none());
        // Gone: no succession.
        let (_lines, mut line_rx) = watch::channel(line(12, &[("e/b", 7)]));
        assert!(until_leading(&mut line_rx, &first).await.is_none());
    }
}
