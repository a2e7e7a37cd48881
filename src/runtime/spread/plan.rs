//! Who moves which role so leadership spreads evenly over the nodes: a rule every node computes from the election lines alone, and acts on for its own part.
//!
//! Two steps, the second only once the first has nothing to do:
//!
//! 1. **Leaders.** Of the R roles that take part, each of the N nodes in
//!    their lines leads R/N, rounded: the R mod N nodes that lead the most
//!    keep one more. A node above its share hands roles to the nodes below
//!    theirs, in pairs every node computes alike (givers and takers in
//!    server ID order), so two leaders never both fill one taker.
//! 2. **Heirs.** The roles one node leads have their next in line spread
//!    over the other nodes the same way: a node that is heir to more than
//!    its share of one leader's roles goes to the back of some of those
//!    lines, making the node behind it heir. A node that dies, or leaves,
//!    then hands its roles to every survivor, not to one.
//!
//! While a node that left is being taken over, the rule waits: its roles
//! land on their heirs first (see [`Departure`]), and only then do the
//! leaders even out.
//!
//! A role whose candidates differ in `leaderPriority` is left alone: the
//! preferred leader wins over the spread. So is a role with a candidate
//! that is not a standin node (an `etcdctl elect`), which would not make
//! way for a transfer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One candidate in a role's election, as its key and value show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seat {
    /// The node's server ID; none for a candidate that is not a standin node.
    pub server: Option<i64>,
    /// The node's `leaderPriority` for the role.
    pub priority: i32,
    /// The key's create revision: its place in line.
    pub revision: i64,
    /// Whether the candidate published that it serves.
    pub serving: bool,
}

/// A role's election that takes part in the spread: the servers in line,
/// the leader first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The role.
    pub role: String,
    /// Server IDs, oldest candidate (the leader) first.
    pub servers: Vec<i64>,
    /// Whether the leader published that it serves.
    pub serving: bool,
}

/// What one node does for the spread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Move {
    /// Hand `role`, which this node leads, to server `to`.
    Transfer {
        /// The role.
        role: String,
        /// The server that takes it.
        to: i64,
    },
    /// Rejoin `role`'s line at its back, where this node is heir.
    Requeue {
        /// The role.
        role: String,
    },
}

/// Every role's candidates as etcd holds them: role, then candidate key.
pub(crate) type Elections = BTreeMap<String, BTreeMap<Vec<u8>, Seat>>;

impl Move {
    /// The role the move is about.
    pub(crate) fn role(&self) -> &str {
        match self {
            Move::Transfer { role, .. } | Move::Requeue { role } => role,
        }
    }
}

/// `role`'s line, if it takes part in the spread: every seat a standin
/// node's, one priority, no node twice.
pub(crate) fn line(role: &str, seats: &BTreeMap<Vec<u8>, Seat>) -> Option<Line> {
    // A line is a handful of seats: scans, not sets.
    let mut seats: Vec<&Seat> = seats.values().collect();
    seats.sort_by_key(|seat| seat.revision);
    let priority = seats.first()?.priority;
    if seats.iter().any(|seat| seat.priority != priority) {
        return None;
    }
    let servers: Vec<i64> = seats
        .iter()
        .map(|seat| seat.server)
        .collect::<Option<_>>()?;
    let distinct = servers
        .iter()
        .enumerate()
        .all(|(place, server)| !servers[..place].contains(server));
    distinct.then(|| Line {
        role: role.to_owned(),
        servers,
        serving: seats[0].serving,
    })
}

/// Holds the spread while the roles of a node that left are taken over.
///
/// A node that dies or leaves hands each of its roles to the heir, and
/// the heirs are spread; only the rounding is left for the rule. Moves
/// made meanwhile would hand over roles that have just been taken over,
/// from counts that are still changing, adding handovers to the wave.
/// So once a server is gone from every line, the spread waits until every
/// leader serves again, at most `bound`: a leader that never serves does
/// not hold it for good.
#[derive(Debug, Default)]
pub(crate) struct Departure {
    /// The servers in the lines at the last look.
    servers: BTreeSet<i64>,
    /// When a server was last seen gone, while its roles are taken over.
    since: Option<Instant>,
}

impl Departure {
    /// Whether the spread waits, at `now`, with the lines as they are.
    pub(crate) fn holds(&mut self, lines: &[&Line], now: Instant, bound: Duration) -> bool {
        let servers: BTreeSet<i64> = lines
            .iter()
            .flat_map(|line| line.servers.iter().copied())
            .collect();
        if self.servers.difference(&servers).next().is_some() {
            self.since = Some(now);
        }
        self.servers = servers;
        let Some(since) = self.since else {
            return false;
        };
        let taking_over = lines.iter().any(|line| !line.serving);
        if taking_over && now < since + bound {
            return true;
        }
        self.since = None;
        false
    }
}

/// The moves server `me` makes: transfers while leadership is uneven,
/// then requeues while some leader's heirs are.
pub(crate) fn moves(lines: &[&Line], me: i64) -> Vec<Move> {
    let mut led = BTreeMap::new();
    for line in lines {
        for server in &line.servers {
            led.entry(*server).or_insert(0);
        }
        *led.entry(line.servers[0]).or_insert(0) += 1;
    }
    let pairs = pairs(&led);
    if !pairs.is_empty() {
        return transfers(lines, me, &pairs);
    }
    let leaders: BTreeSet<i64> = lines.iter().map(|line| line.servers[0]).collect();
    leaders
        .into_iter()
        .filter(|leader| *leader != me)
        .flat_map(|leader| requeues(lines, leader, me))
        .collect()
}

/// The roles `me` leads, each handed to a taker it is paired with: the
/// taker next in line where there is one, so nobody has to make way.
fn transfers(lines: &[&Line], me: i64, pairs: &[(i64, i64)]) -> Vec<Move> {
    let mut mine: Vec<&Line> = lines
        .iter()
        .copied()
        .filter(|line| line.servers[0] == me)
        .collect();
    let mut moves = Vec::new();
    for (_, to) in pairs.iter().filter(|(from, _)| *from == me) {
        let Some((line, _)) = take_nearest(&mut mine, *to, |_| true) else {
            continue;
        };
        moves.push(Move::Transfer {
            role: line.role.clone(),
            to: *to,
        });
    }
    moves
}

/// The lines `leader` leads that `me` leaves, for their heirs to spread:
/// every node pairs each heir above its share with a node below, picks one
/// of the heir's lines where that node stands nearest behind, and the
/// nodes ahead of it there (the heir among them) rejoin at the back.
fn requeues(lines: &[&Line], leader: i64, me: i64) -> Vec<Move> {
    let mut led: Vec<&Line> = lines
        .iter()
        .copied()
        .filter(|line| line.servers[0] == leader && line.servers.len() > 1)
        .collect();
    let mut heirs = BTreeMap::new();
    for line in &led {
        for server in &line.servers[1..] {
            heirs.entry(*server).or_insert(0);
        }
        *heirs.entry(line.servers[1]).or_insert(0) += 1;
    }
    let mut moves = Vec::new();
    for (from, to) in pairs(&heirs) {
        let Some((line, place)) = take_nearest(&mut led, to, |line| line.servers[1] == from) else {
            continue;
        };
        if line.servers[1..place].contains(&me) {
            moves.push(Move::Requeue {
                role: line.role.clone(),
            });
        }
    }
    moves
}

/// Takes from `lines` the first of those `eligible` where server `to`
/// stands nearest the front, with its place there.
fn take_nearest<'a>(
    lines: &mut Vec<&'a Line>,
    to: i64,
    eligible: impl Fn(&Line) -> bool,
) -> Option<(&'a Line, usize)> {
    let (index, place) = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| eligible(line))
        .filter_map(|(index, line)| Some((index, line.servers.iter().position(|s| *s == to)?)))
        .min_by_key(|(index, place)| (*place, *index))?;
    Some((lines.remove(index), place))
}

/// Who gives to whom so that every count of `counts` ends within one of
/// the rest: each node's share is total / nodes, one more for the
/// total mod nodes of them that hold the most (ties to the lower ID); one
/// pair per role above a share, givers and takers in ID order.
fn pairs(counts: &BTreeMap<i64, usize>) -> Vec<(i64, i64)> {
    let nodes = counts.len();
    if nodes == 0 {
        return Vec::new();
    }
    let total: usize = counts.values().sum();
    let (share, extra) = (total / nodes, total % nodes);
    let mut by_count: Vec<(i64, usize)> = counts.iter().map(|(id, n)| (*id, *n)).collect();
    by_count.sort_by_key(|(id, count)| (std::cmp::Reverse(*count), *id));
    let shares: BTreeMap<i64, usize> = by_count
        .iter()
        .enumerate()
        .map(|(rank, (id, _))| (*id, share + usize::from(rank < extra)))
        .collect();
    let units = |above: bool| -> Vec<i64> {
        counts
            .iter()
            .flat_map(|(id, count)| {
                let quota = shares[id];
                let n = if above {
                    count.saturating_sub(quota)
                } else {
                    quota.saturating_sub(*count)
                };
                std::iter::repeat_n(*id, n)
            })
            .collect()
    };
    units(true).into_iter().zip(units(false)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(lines: &[Line]) -> Vec<&Line> {
        lines.iter().collect()
    }

    fn line(role: &str, servers: &[i64]) -> Line {
        Line {
            role: role.into(),
            servers: servers.to_vec(),
            serving: true,
        }
    }

    /// `roles` lines, every one `servers` in that order.
    fn same_lines(roles: usize, servers: &[i64]) -> Vec<Line> {
        (0..roles)
            .map(|index| line(&format!("r{index:04}"), servers))
            .collect()
    }

    /// Applies `me`'s moves to `lines` as the election would: a transfer
    /// puts its target first and the old leader last (those between make
    /// way to the back first); a requeue sends the heir to the back.
    fn apply(lines: &mut [Line], me: i64, moves: &[Move]) {
        for next in moves {
            match next {
                Move::Transfer { role, to } => {
                    let line = lines.iter_mut().find(|l| &l.role == role).unwrap();
                    assert_eq!(
                        line.servers[0], me,
                        "{me} moves {role}, which it does not lead"
                    );
                    let at = line.servers.iter().position(|s| s == to).unwrap();
                    let between: Vec<i64> = line.servers[1..at].to_vec();
                    let mut servers = line.servers[at..].to_vec();
                    servers.extend(between);
                    servers.push(me);
                    line.servers = servers;
                }
                Move::Requeue { role } => {
                    let line = lines.iter_mut().find(|l| &l.role == role).unwrap();
                    let at = line.servers.iter().position(|s| *s == me).unwrap();
                    assert!(at > 0, "{me} requeues {role}, which it leads");
                    line.servers.remove(at);
                    line.servers.push(me);
                }
            }
        }
    }

    /// Rounds in which every node computes its moves from the same lines
    /// and makes them, until nobody moves; the number of rounds.
    fn settle(lines: &mut [Line], nodes: &[i64]) -> usize {
        for round in 0..20 {
            let planned: Vec<(i64, Vec<Move>)> = nodes
                .iter()
                .map(|me| (*me, moves(&refs(lines), *me)))
                .collect();
            if planned.iter().all(|(_, moves)| moves.is_empty()) {
                return round;
            }
            for (me, moves) in planned {
                apply(lines, me, &moves);
            }
        }
        panic!("the spread did not settle in 20 rounds");
    }

    fn leaders(lines: &[Line]) -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for line in lines {
            *counts.entry(line.servers[0]).or_insert(0) += 1;
        }
        counts
    }

    fn heirs_of(lines: &[Line], leader: i64) -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for line in lines.iter().filter(|l| l.servers[0] == leader) {
            *counts.entry(line.servers[1]).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn a_thousand_roles_led_by_one_of_three_nodes_end_334_333_333() {
        let mut lines = same_lines(1000, &[1, 2, 3]);
        settle(&mut lines, &[1, 2, 3]);
        let counts: Vec<usize> = leaders(&lines).into_values().collect();
        assert_eq!(counts, vec![334, 333, 333]);
    }

    #[test]
    fn once_leaders_are_even_each_leaders_heirs_are_too() {
        let mut lines = same_lines(300, &[1, 2, 3]);
        settle(&mut lines, &[1, 2, 3]);
        for leader in [1, 2, 3] {
            let heirs: Vec<usize> = heirs_of(&lines, leader).into_values().collect();
            assert_eq!(heirs, vec![50, 50], "the heirs of {leader}'s roles");
        }
    }

    #[test]
    fn a_node_that_joins_gets_its_share_and_the_rest_keep_theirs() {
        let mut lines = same_lines(90, &[1, 2, 3]);
        settle(&mut lines, &[1, 2, 3]);
        for line in &mut lines {
            line.servers.push(4);
        }
        settle(&mut lines, &[1, 2, 3, 4]);
        let counts: Vec<usize> = leaders(&lines).into_values().collect();
        assert_eq!(counts, vec![23, 23, 22, 22]);
    }

    #[test]
    fn a_balanced_election_makes_no_move() {
        let lines = vec![
            line("a", &[1, 2, 3]),
            line("b", &[2, 3, 1]),
            line("c", &[3, 1, 2]),
        ];
        for me in [1, 2, 3] {
            assert_eq!(moves(&refs(&lines), me), Vec::new(), "server {me} moves");
        }
    }

    #[test]
    fn a_leader_hands_a_role_to_the_taker_next_in_line_first() {
        // Shares: 1 keeps two, 2 keeps its one, 3 takes one.
        let lines = vec![
            line("a", &[1, 3, 2]),
            line("b", &[1, 2, 3]),
            line("c", &[1, 2, 3]),
            line("d", &[2, 1, 3]),
        ];
        assert_eq!(
            moves(&refs(&lines), 1),
            vec![Move::Transfer {
                role: "a".into(),
                to: 3
            }],
            "server 3 is heir of a: nobody has to make way"
        );
    }

    #[test]
    fn two_givers_fill_the_one_taker_once() {
        // 1 and 2 lead three each, 3 none: each gives one, not two.
        let mut lines = Vec::new();
        for index in 0..3 {
            lines.push(line(&format!("a{index}"), &[1, 2, 3]));
            lines.push(line(&format!("b{index}"), &[2, 1, 3]));
        }
        let given = [1, 2].map(|me| moves(&refs(&lines), me).len());
        assert_eq!(given, [1, 1]);
    }

    #[test]
    fn roles_a_node_does_not_run_are_not_handed_to_it() {
        // Server 3 is a candidate of one role only.
        let lines = vec![
            line("a", &[1, 2]),
            line("b", &[1, 2]),
            line("c", &[1, 2, 3]),
            line("d", &[1, 2]),
        ];
        for next in moves(&refs(&lines), 1) {
            if let Move::Transfer { role, to: 3 } = next {
                assert_eq!(role, "c");
            }
        }
    }

    #[test]
    fn a_preference_or_a_foreign_candidate_keeps_a_role_out_of_the_spread() {
        let seat = |server, priority, revision: i64| {
            let seat = Seat {
                server,
                priority,
                revision,
                serving: true,
            };
            (revision.to_be_bytes().to_vec(), seat)
        };
        let elections = Elections::from([
            (
                "even".to_owned(),
                BTreeMap::from([seat(Some(2), 0, 20), seat(Some(1), 0, 10)]),
            ),
            (
                "preferred".to_owned(),
                BTreeMap::from([seat(Some(1), 0, 10), seat(Some(2), 5, 20)]),
            ),
            (
                "etcdctl".to_owned(),
                BTreeMap::from([seat(Some(1), 0, 10), seat(None, 0, 20)]),
            ),
        ]);
        let lines: Vec<Line> = elections
            .iter()
            .filter_map(|(role, seats)| super::line(role, seats))
            .collect();
        assert_eq!(lines, vec![line("even", &[1, 2])]);
    }

    #[test]
    fn a_node_that_leaves_hands_its_roles_to_every_survivor() {
        let mut lines = same_lines(300, &[1, 2, 3, 4]);
        settle(&mut lines, &[1, 2, 3, 4]);
        // Server 4 dies: each role it led goes to its heir.
        let before = heirs_of(&lines, 4);
        for line in &mut lines {
            line.servers.retain(|server| *server != 4);
        }
        let counts: Vec<usize> = leaders(&lines).into_values().collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "the 75 roles of server 4 went to {before:?}, leaving {counts:?}"
        );
    }

    #[test]
    fn after_a_departure_the_spread_waits_until_every_leader_serves_at_most_the_bound() {
        let bound = Duration::from_secs(2);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut departure = Departure::default();
        let all = vec![line("a", &[1, 2, 3]), line("b", &[3, 1, 2])];
        assert!(!departure.holds(&refs(&all), at(0), bound));
        // A leader not serving yet, with nobody gone: a transfer, not a wave.
        let mut moving = all.clone();
        moving[0].serving = false;
        assert!(!departure.holds(&refs(&moving), at(10), bound));
        // Server 3 leaves: b's heir takes over, and the spread waits for it.
        let mut taking_over = vec![line("a", &[1, 2]), line("b", &[1, 2])];
        taking_over[1].serving = false;
        assert!(departure.holds(&refs(&taking_over), at(20), bound));
        assert!(departure.holds(&refs(&taking_over), at(500), bound));
        let settled = vec![line("a", &[1, 2]), line("b", &[1, 2])];
        assert!(!departure.holds(&refs(&settled), at(600), bound));
        // Held no longer than the bound by a leader that does not serve.
        let mut stuck = vec![line("a", &[1])];
        stuck[0].serving = false;
        assert!(departure.holds(&refs(&stuck), at(700), bound));
        assert!(!departure.holds(&refs(&stuck), at(2800), bound));
        assert!(!departure.holds(&refs(&stuck), at(2900), bound));
    }
}
