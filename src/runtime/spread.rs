//! The node's spread: follows every role's election and makes this node's part of the moves that spread leadership, and the next in line, evenly over the nodes.
//!
//! Every node follows the whole election prefix with one watch, computes
//! the same rule from it (see [`plan`]), and makes only its own moves:
//! graceful transfers of roles it leads beyond its share, and requeues
//! where it stands as heir beyond its share. No node coordinates the
//! others. Moves are paced (`session.spreadPace`) and bounded
//! (`session.spreadInFlight`); a role just moved rests a while, so the
//! election can show the move before the rule is asked about it again.

pub(crate) mod plan;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::etcd::recipe::PrefixChange;
use crate::etcd::session::{RoleState, SessionInfo};
use crate::etcd::{Subscription, group_of};
use crate::runtime::context::NodeContext;
use crate::status::{ResignError, Successor};
use crate::task::OwnedTask;
use plan::{Departure, Elections, Line, Move, Seat};

/// How long a role the spread moved is left alone: time for the election
/// to show the move, so the rule does not ask for it twice.
const REST: Duration = Duration::from_secs(1);
/// The longest the spread waits, after a node left, for every role to
/// serve again (see [`Departure`]).
const TAKEOVER_BOUND: Duration = Duration::from_secs(2);

/// What the spread needs of one of the node's roles.
pub(crate) trait Movable: Send + Sync {
    /// Hands the role to server `to`, if this node leads it (a graceful
    /// transfer; see `RoleHandle::transfer`).
    fn transfer(
        &self,
        to: i64,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Successor, ResignError>>;
    /// Joins the role's election again at the back of the line, if this
    /// node stands by in it.
    fn requeue(&self);
}

/// The spread actor of one node.
pub(crate) struct Spread {
    context: Arc<NodeContext>,
    roles: BTreeMap<String, Arc<dyn Movable>>,
}

impl Spread {
    /// The spread of the node of `context`, moving `roles` (its own, by name).
    pub(crate) fn new(
        context: Arc<NodeContext>,
        roles: BTreeMap<String, Arc<dyn Movable>>,
    ) -> Self {
        Self { context, roles }
    }
}

/// Messages to the spread actor.
pub(crate) enum SpreadMsg {
    /// Time to look at the elections again.
    Tick,
    /// A transfer this node started is over.
    Moved {
        /// The role.
        role: String,
        /// Its outcome, for the log.
        outcome: Result<Successor, ResignError>,
    },
}

/// Every role's election as the watch shows it, and whether it changed
/// since the rule last read it.
#[derive(Default)]
struct Mirror {
    elections: Elections,
    /// The lines of `elections` that take part, each read again when its
    /// election changes: the rule reads them all at every look.
    lines: BTreeMap<String, Line>,
    changed: bool,
}

impl Mirror {
    /// Reads `role`'s line again from its seats.
    fn reread(&mut self, role: &str) {
        match self
            .elections
            .get(role)
            .and_then(|seats| plan::line(role, seats))
        {
            Some(line) => {
                self.lines.insert(role.to_owned(), line);
            }
            None => {
                self.lines.remove(role);
            }
        }
    }
}

/// The spread's state: the mirror of the elections and the moves under way.
pub(crate) struct SpreadState {
    mirror: Arc<Mutex<Mirror>>,
    _follower: Subscription,
    /// Transfers under way, by role.
    moving: BTreeMap<String, OwnedTask>,
    /// Roles moved lately, and until when they are left alone.
    resting: BTreeMap<String, Instant>,
    /// When this node last started a move.
    last_move: Option<Instant>,
    /// Whether the rule asked for moves this node has not made yet.
    owed: bool,
    /// Holds the moves while a node that left is taken over.
    departure: Departure,
}

fn lock(mirror: &Mutex<Mirror>) -> MutexGuard<'_, Mirror> {
    mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Spread {
    /// The candidate of `kv` in the mirror: its role (from the key under
    /// `prefix`) and its seat; `None` for a key that is not a candidate's.
    fn seat(prefix: &str, kv: &etcd_client::KeyValue) -> Option<(String, Seat)> {
        let role = group_of(prefix, kv.key())?.to_owned();
        let session = SessionInfo::decode(kv.key(), kv.value()).ok();
        let seat = Seat {
            server: session.as_ref().map(|s| s.server_id),
            priority: session.as_ref().map_or(0, |s| s.priority),
            revision: kv.create_revision(),
            serving: session.is_some_and(|s| s.state == RoleState::Serving),
        };
        Some((role, seat))
    }

    /// Follows every election, from the node's follower of them, into `mirror`.
    fn follow(&self, mirror: Arc<Mutex<Mirror>>) -> Subscription {
        let prefix = self.context.layout.election("");
        let follow = move |change: PrefixChange<'_>| {
            let mut mirror = lock(&mirror);
            match change {
                PrefixChange::Reset => {
                    mirror.elections.clear();
                    mirror.lines.clear();
                }
                PrefixChange::Put(kv) => {
                    if let Some((role, seat)) = Self::seat(&prefix, kv) {
                        let line = mirror.elections.entry(role.clone()).or_default();
                        line.insert(kv.key().to_vec(), seat);
                        mirror.reread(&role);
                    }
                }
                PrefixChange::Delete(kv) => {
                    // A deletion's value is empty: the key alone names the role.
                    if let Some(role) = group_of(&prefix, kv.key())
                        && let Some(line) = mirror.elections.get_mut(role)
                    {
                        line.remove(kv.key());
                        if line.is_empty() {
                            mirror.elections.remove(role);
                        }
                        mirror.reread(role);
                    }
                }
                PrefixChange::Settled(_) => mirror.changed = true,
            }
            true
        };
        self.context.elections.subscribe(None, Box::new(follow))
    }

    /// Reads the rule when the elections changed or moves are owed, and
    /// starts this node's next move if the pace and the bound allow.
    fn look(&self, myself: &ActorRef<SpreadMsg>, state: &mut SpreadState) {
        let now = Instant::now();
        state.resting.retain(|_, until| *until > now);
        let session = &self.context.config.session;
        let paced = state
            .last_move
            .is_none_or(|last| now >= last + session.spread_pace);
        if !paced || state.moving.len() >= session.spread_in_flight {
            return;
        }
        let moves: Vec<Move> = {
            let mut mirror = lock(&state.mirror);
            if !mirror.changed && !state.owed {
                return;
            }
            let lines: Vec<&Line> = mirror.lines.values().collect();
            if state.departure.holds(&lines, now, TAKEOVER_BOUND) {
                // Looked at again at the next tick, changed or not.
                return;
            }
            let moves = plan::moves(&lines, self.context.server_id);
            mirror.changed = false;
            moves
                .into_iter()
                .filter(|next| self.roles.contains_key(next.role()))
                .collect()
        };
        // Moves waiting on a role that is moving or resting are still owed:
        // the rule is read again when it is free, changed or not.
        state.owed = !moves.is_empty();
        let mut open = moves.into_iter().filter(|next| {
            let role = next.role();
            !state.moving.contains_key(role) && !state.resting.contains_key(role)
        });
        let Some(next) = open.next() else {
            return;
        };
        state.last_move = Some(now);
        match next {
            Move::Transfer { role, to } => {
                tracing::info!(
                    role,
                    to,
                    "spreading leadership: handing {role} to server {to}"
                );
                let timeout = self.context.config.handover_bound();
                let transfer = self.roles[&role].transfer(to, timeout);
                let report = myself.clone();
                let moved = role.clone();
                let task = OwnedTask::spawn(async move {
                    let outcome = transfer.await;
                    let _ = report.send_message(SpreadMsg::Moved {
                        role: moved,
                        outcome,
                    });
                });
                state.moving.insert(role, task);
            }
            Move::Requeue { role } => {
                tracing::info!(
                    role,
                    "spreading the next in line: rejoining the {role} election at the back"
                );
                self.roles[&role].requeue();
                state.resting.insert(role, now + REST);
            }
        }
    }
}

impl Actor for Spread {
    type Msg = SpreadMsg;
    type State = SpreadState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mirror = Arc::new(Mutex::new(Mirror::default()));
        let follower = self.follow(mirror.clone());
        myself.send_interval(self.context.config.session.spread_pace, || SpreadMsg::Tick);
        Ok(SpreadState {
            mirror,
            _follower: follower,
            moving: BTreeMap::new(),
            resting: BTreeMap::new(),
            last_move: None,
            owed: false,
            departure: Departure::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SpreadMsg::Tick => self.look(&myself, state),
            SpreadMsg::Moved { role, outcome } => {
                match outcome {
                    Ok(successor) => tracing::debug!(
                        role,
                        to = successor.server_id,
                        "spreading leadership: {role} handed to {}",
                        successor.address
                    ),
                    Err(error) => tracing::info!(
                        role,
                        "spreading leadership: {role} stays here for now: {error}"
                    ),
                }
                state.moving.remove(&role);
                state.resting.insert(role, Instant::now() + REST);
            }
        }
        Ok(())
    }
}
