//! Leader transfer: find the chosen standby in the election, wait while the candidates ahead of it make way, and pick a preferred leader by priority.
//!
//! A transfer never breaks etcd's recipe: the leader announces the target in
//! its leader key's value, every standin candidate older than the target
//! joins the election again (behind it), and once the target is next in line
//! the leader resigns as in a graceful handover, so the target's takeover
//! costs what a handover costs. A candidate that does not make way (an
//! `etcdctl elect` peer) stalls the transfer until its deadline, and the
//! leader keeps serving.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use ractor::RpcReplyPort;

use super::line::{Candidate, Line};
use crate::etcd::WatchHub;
use crate::etcd::recipe::{self, Candidacy, Succession};
use crate::etcd::session::TransferInfo;
use crate::status::{ResignError, Successor, TransferTarget};

/// The chosen standby, as found in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferPlan {
    /// Who takes over.
    pub successor: Successor,
    /// Its candidate key.
    pub key: String,
    /// Its candidate key's create revision.
    pub key_revision: i64,
}

impl TransferPlan {
    /// What the leader announces in its leader key's value.
    pub(crate) fn announcement(&self) -> TransferInfo {
        TransferInfo {
            to: self.successor.server_id,
            revision: self.key_revision,
        }
    }
}

/// A transfer under way in the term at `revision`.
pub(crate) struct PendingTransfer {
    /// The term's epoch revision.
    pub revision: i64,
    /// Who was asked for, as the caller named it.
    pub target: TransferTarget,
    /// How long the candidates ahead of the target have to make way.
    pub within: Duration,
    /// The target, once found.
    pub plan: Option<TransferPlan>,
    /// Who waits for the outcome; none for a move to a preferred leader.
    pub reply: Option<RpcReplyPort<Result<Successor, ResignError>>>,
}

/// Who waits for a handover, and what they are told once a peer can take over.
pub(crate) enum HandoverReply {
    /// A plain resign.
    Resign(RpcReplyPort<Result<(), ResignError>>),
    /// A transfer, told who took over.
    Transfer(RpcReplyPort<Result<Successor, ResignError>>, Successor),
}

impl HandoverReply {
    /// Answers with the handover's outcome.
    pub(crate) fn answer(self, outcome: Result<(), ResignError>) {
        match self {
            HandoverReply::Resign(reply) => {
                let _ = reply.send(outcome);
            }
            HandoverReply::Transfer(reply, successor) => {
                let _ = reply.send(outcome.map(|()| successor));
            }
        }
    }
}

/// Finds `target` among the standbys behind `leader` (the candidates in
/// line, oldest first), or says why it cannot take over.
pub(crate) fn find_target(
    role: &str,
    leader: &Candidacy,
    line: &[Candidate],
    target: &TransferTarget,
) -> Result<TransferPlan, ResignError> {
    let named = |candidate: &&Candidate| {
        candidate
            .session
            .as_ref()
            .is_some_and(|s| target.names(s.server_id, &s.address))
    };
    let Some(first) = line.first() else {
        return Err(ResignError::NotLeader {
            role: role.to_owned(),
            leader: None,
        });
    };
    if first.key != leader.key || first.revision != leader.revision {
        return Err(ResignError::NotLeader {
            role: role.to_owned(),
            leader: first.session.as_ref().map(|s| s.address.clone()),
        });
    }
    if named(&first) {
        return Err(ResignError::TargetLeads {
            role: role.to_owned(),
            target: target.to_string(),
        });
    }
    let standbys = &line[1..];
    match standbys.iter().find(named) {
        Some(found) => {
            let session = found
                .session
                .as_ref()
                .expect("a named candidate has a session");
            Ok(TransferPlan {
                successor: Successor {
                    server_id: session.server_id,
                    address: session.address.clone(),
                },
                key: found.key.clone(),
                key_revision: found.revision,
            })
        }
        None => Err(ResignError::TargetNotReady {
            role: role.to_owned(),
            target: target.to_string(),
            candidates: standbys.iter().map(Candidate::shown).collect(),
        }),
    }
}

/// Reads the election and finds `target` behind `leader`.
pub(crate) async fn plan(
    client: &Client,
    election: &str,
    role: &str,
    leader: &Candidacy,
    target: &TransferTarget,
) -> Result<TransferPlan, ResignError> {
    let line = recipe::candidates(client, election)
        .await
        .map_err(|error| ResignError::TransferFailed {
            role: role.to_owned(),
            target: target.to_string(),
            why: format!("reading the election failed: {error}"),
        })?;
    let line: Vec<Candidate> = line.iter().map(Candidate::read).collect();
    find_target(role, leader, &line, target)
}

/// Waits, at most `within`, until the plan's target is next in line behind
/// `leader`; the error says what stood in the way.
pub(crate) async fn settle(
    watches: &WatchHub,
    election: &str,
    leader: &Candidacy,
    plan: &TransferPlan,
    within: Duration,
) -> Result<(), String> {
    let in_the_way = Arc::new(Mutex::new(Vec::new()));
    let noted = in_the_way.clone();
    let waited = recipe::await_succession(
        watches,
        election,
        leader,
        (&plan.key, plan.key_revision),
        move |between| {
            let shown = between
                .iter()
                .map(|kv| Candidate::read(kv).shown())
                .collect();
            *noted.lock().expect("the note is never poisoned") = shown;
        },
    );
    match tokio::time::timeout(within, waited).await {
        Ok(Ok(Succession::Ready)) => Ok(()),
        Ok(Ok(Succession::TargetLeft)) => Err(format!(
            "server {} left the election",
            plan.successor.server_id
        )),
        Ok(Ok(Succession::NotLeading)) => Err("this node no longer leads".to_owned()),
        Ok(Err(error)) => Err(format!("reading the election failed: {error}")),
        Err(_) => {
            let in_the_way = in_the_way.lock().expect("the note is never poisoned");
            Err(format!(
                "within {} the candidates ahead of server {} did not make way: {} (only \
                 standin nodes make way; etcdctl and Go candidates do not)",
                humantime::format_duration(within),
                plan.successor.server_id,
                in_the_way.join(", ")
            ))
        }
    }
}

/// The standby a leader of `priority` should hand its role to: the one of
/// highest priority above its own, the oldest of equals; none when nobody
/// outranks the leader, so equal priorities never move leadership.
pub(crate) fn preferred<'a>(
    priority: i32,
    standbys: impl IntoIterator<Item = &'a Candidate>,
) -> Option<&'a Candidate> {
    standbys
        .into_iter()
        .filter_map(|c| Some((c, c.session.as_ref()?.priority)))
        .filter(|(_, theirs)| *theirs > priority)
        .max_by_key(|(c, theirs)| (*theirs, std::cmp::Reverse(c.revision)))
        .map(|(c, _)| c)
}

/// Follows the election (its `line`, from [`follow_line`]) while this node
/// leads at `leader` with `priority`, and returns the server ID of a
/// standby of higher priority once it has stood in line for `holdoff` since
/// this leader first saw it, and `holdoff` has passed since `since` (when
/// this leader started serving, or last moved a role).
pub(crate) async fn await_preferred(
    mut line_rx: tokio::sync::watch::Receiver<Line>,
    leader: Candidacy,
    priority: i32,
    holdoff: Duration,
    since: Instant,
) -> i64 {
    let mut seen: Option<(String, i64, Instant)> = None;
    let mut due: Option<Instant> = None;
    loop {
        // Decide again when someone joins or leaves, or when the
        // holdoff of the one in view ends. The follower that sends the
        // line lives as long as this wait (its caller holds it).
        let changed = match due {
            Some(wake) => tokio::time::timeout_at(wake.into(), line_rx.changed())
                .await
                .unwrap_or(Ok(())),
            None => line_rx.changed().await,
        };
        if changed.is_err() {
            return std::future::pending().await;
        }
        let line = line_rx.borrow_and_update();
        let standbys: Vec<Arc<Candidate>> = line
            .candidates
            .iter()
            .skip_while(|c| c.key != leader.key)
            .skip(1)
            .cloned()
            .collect();
        drop(line);
        let best = preferred(priority, standbys.iter().map(|c| &**c));
        let now = Instant::now();
        seen = match (best, seen) {
            (Some(best), Some((key, revision, at)))
                if key == best.key && revision == best.revision =>
            {
                Some((key, revision, at))
            }
            (Some(best), _) => Some((best.key.clone(), best.revision, now)),
            (None, _) => None,
        };
        // Both have to hold: the leader has served (or last moved a
        // role) for the holdoff, and the standby has stood in view as long.
        due = seen.as_ref().map(|(_, _, at)| (*at).max(since) + holdoff);
        if let (Some(best), Some(due)) = (best, due)
            && now >= due
        {
            return best.session.as_ref().map_or(0, |s| s.server_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::session::{RoleState, SessionInfo};

    fn candidate(id: i64, revision: i64, priority: i32) -> Candidate {
        Candidate {
            key: format!("e/{id:x}"),
            revision,
            lease: id,
            session: Some(SessionInfo {
                server_id: id,
                role: "tso".into(),
                address: format!("10.0.0.{id}:19530"),
                version: "0".into(),
                state: RoleState::Standby,
                lease_id: id,
                witness: None,
                priority,
                transfer: None,
            }),
        }
    }

    fn leader_of(line: &[Candidate]) -> Candidacy {
        Candidacy {
            key: line[0].key.clone(),
            revision: line[0].revision,
            lease: 1,
        }
    }

    #[test]
    fn a_transfer_finds_its_target_by_id_or_address_behind_the_leader() {
        let line = [
            candidate(1, 10, 0),
            candidate(2, 11, 0),
            candidate(3, 12, 0),
        ];
        let leader = leader_of(&line);
        let by_id = find_target("tso", &leader, &line, &TransferTarget::ServerId(3)).unwrap();
        assert_eq!(by_id.successor.address, "10.0.0.3:19530");
        assert_eq!(by_id.key_revision, 12);
        let by_address = find_target(
            "tso",
            &leader,
            &line,
            &TransferTarget::Address("10.0.0.2:19530".into()),
        )
        .unwrap();
        assert_eq!(by_address.successor.server_id, 2);
        assert_eq!(
            by_address.announcement(),
            TransferInfo {
                to: 2,
                revision: 11
            }
        );
    }

    #[test]
    fn a_transfer_to_the_leader_or_to_a_node_not_in_line_is_refused_with_the_candidates() {
        let line = [candidate(1, 10, 0), candidate(2, 11, 0)];
        let leader = leader_of(&line);
        let itself = find_target("tso", &leader, &line, &TransferTarget::ServerId(1));
        assert!(matches!(itself, Err(ResignError::TargetLeads { .. })));
        let absent = find_target("tso", &leader, &line, &TransferTarget::ServerId(9))
            .unwrap_err()
            .to_string();
        assert!(absent.contains("server 9 is not ready"), "{absent}");
        assert!(absent.contains("2@10.0.0.2:19530"), "{absent}");
        let other = Candidacy {
            key: "e/other".into(),
            revision: 3,
            lease: 5,
        };
        let deposed = find_target("tso", &other, &line, &TransferTarget::ServerId(2));
        assert!(matches!(deposed, Err(ResignError::NotLeader { .. })));
    }

    #[test]
    fn only_a_strictly_higher_priority_is_preferred_the_highest_then_the_oldest() {
        let standbys = [candidate(2, 11, 0), candidate(3, 12, 5)];
        assert_eq!(preferred(5, &standbys).map(|c| c.revision), None);
        assert_eq!(preferred(0, &standbys).map(|c| c.revision), Some(12));
        let standbys = [
            candidate(2, 11, 7),
            candidate(3, 12, 9),
            candidate(4, 13, 9),
        ];
        assert_eq!(preferred(0, &standbys).map(|c| c.revision), Some(12));
        let foreign = Candidate {
            key: "e/go".into(),
            revision: 9,
            lease: 9,
            session: None,
        };
        assert!(preferred(-1, &[foreign]).is_none());
    }
}
