//! Judges a campaign's history: unique, ordered timestamps; reads that see every acknowledged write; no answer from a closed term; one serving leader per role at a time with growing epochs; every fault recovered within its bound.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::campaign::history::{
    Batch, FaultRecord, History, ImpairmentKind, KV, KvOp, PutAsked, ROLES, Sample, State, TSO,
};

/// How long after an operator deleted its key or revoked its lease a
/// deposed term may still answer: it learns only through its watch on
/// etcd, which takes milliseconds; an answer later than this is a violation.
const FORCED_OVERLAP_LIMIT: Duration = Duration::from_secs(1);

/// Whether the node a fault of `kind` hit (for a fault of etcd, the role's
/// leader) is still alive after it: its witness must not be taken for dead.
fn leaves_alive(kind: &str) -> bool {
    matches!(
        kind,
        "sigstop" | "stall-clock" | "cut" | "blackhole" | "delay"
    ) || kind.starts_with("etcd-")
}

/// At most this many messages per kind of violation are kept; the rest are counted.
const SHOWN_PER_KIND: usize = 10;

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// How many violations, including those not shown.
    pub violations: usize,
    /// Up to [`SHOWN_PER_KIND`] messages per kind, and a count of the rest.
    pub messages: Vec<String>,
    /// Findings that are allowed but worth seeing (an overlap excused by a freeze).
    pub notes: Vec<String>,
    /// Per term an operator ended by hand: how long after the act it last
    /// answered (an upper bound of its overlap with the successor: the
    /// successor cannot serve before the act), and the overlap surely seen
    /// (its last answer asked for after the successor's first answer arrived).
    pub forced: Vec<ForcedOverlap>,
}

/// How a term an operator ended by hand overlapped with its successor.
#[derive(Debug, Clone, Copy)]
pub struct ForcedOverlap {
    /// Upper bound: from the act to the arrival of its last answer (zero
    /// when it answered nothing after the act).
    pub at_most: Duration,
    /// Lower bound: from the successor's first answer's arrival to the
    /// sending of the old term's last answer (zero when none came after).
    pub surely: Duration,
}

impl Report {
    /// One line on the operator-forced overlaps: n, p50, p99 and max of
    /// the upper bound, and the largest overlap surely seen.
    pub fn forced_line(&self) -> String {
        let mut at_most: Vec<Duration> = self.forced.iter().map(|f| f.at_most).collect();
        at_most.sort();
        let quantile = |q: f64| -> f64 {
            if at_most.is_empty() {
                return 0.0;
            }
            let rank = ((q * at_most.len() as f64).ceil() as usize).clamp(1, at_most.len());
            at_most[rank - 1].as_secs_f64() * 1000.0
        };
        let surely = self
            .forced
            .iter()
            .map(|f| f.surely)
            .max()
            .unwrap_or_default();
        format!(
            "campaign: forced-overlap n={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} surely_max_ms={:.1}",
            at_most.len(),
            quantile(0.5),
            quantile(0.99),
            quantile(1.0),
            surely.as_secs_f64() * 1000.0
        )
    }
}

/// Violations of one kind: the first few in full, the rest counted.
struct Kind {
    name: &'static str,
    found: usize,
    messages: Vec<String>,
}

impl Kind {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            found: 0,
            messages: Vec::new(),
        }
    }

    fn push(&mut self, message: String) {
        self.found += 1;
        if self.messages.len() < SHOWN_PER_KIND {
            self.messages.push(format!("{}: {message}", self.name));
        }
    }

    fn into(self, report: &mut Report) {
        report.violations += self.found;
        report.messages.extend(self.messages);
        if self.found > SHOWN_PER_KIND {
            report.messages.push(format!(
                "{}: ... and {} more",
                self.name,
                self.found - SHOWN_PER_KIND
            ));
        }
    }
}

/// A run of samples in which one process of a node served one epoch of a role.
#[derive(Debug, Clone, Copy)]
struct Interval {
    role: usize,
    node: usize,
    server_id: i64,
    epoch: i64,
    /// From the first sample's send to the last one's answer: it served
    /// only at moments inside this span (as far as sampled).
    loose: (Instant, Instant),
    /// From the first sample's answer to the last one's send: it certainly
    /// served all through this span, since a term serves once, without a
    /// gap; empty (start after end) for a single sample.
    sure: (Instant, Instant),
}

impl Interval {
    fn start(sample: &Sample) -> Self {
        Self {
            role: sample.role,
            node: sample.node,
            server_id: sample.server_id,
            epoch: sample.epoch,
            loose: (sample.sent, sample.received),
            sure: (sample.received, sample.sent),
        }
    }

    fn extend(&mut self, sample: &Sample) {
        self.loose.1 = sample.received;
        self.sure.1 = sample.sent;
    }
}

/// Checks the whole history.
pub fn check(history: &History) -> Report {
    let mut report = Report::default();
    let forced = Forced::new(history);
    let all = answers(history);
    check_timestamps(history, &forced, &mut report);
    check_register(history, &forced, &mut report);
    check_answers(history, &all, &forced, &mut report);
    for role in 0..ROLES.len() {
        check_leadership(history, role, &all, &forced, &mut report);
    }
    measure_forced(history, &all, &mut report);
    check_quorum_loss(history, &all, &mut report);
    check_faults(history, &mut report);
    report
}

/// The terms an operator ended by hand, and the fault that ended each.
struct Forced<'a>(HashMap<(usize, i64), &'a FaultRecord>);

impl<'a> Forced<'a> {
    fn new(history: &'a History) -> Self {
        Self(
            history
                .forced()
                .map(|(role, epoch, fault)| ((role, epoch), fault))
                .collect(),
        )
    }

    /// The fault that excuses an answer of `role`'s term `epoch` that
    /// arrived at `received`: the term was ended by an operator, and the
    /// answer came within [`FORCED_OVERLAP_LIMIT`] of the act.
    fn excuses(&self, role: usize, epoch: i64, received: Instant) -> Option<&'a FaultRecord> {
        self.0
            .get(&(role, epoch))
            .filter(|fault| received <= fault.at + FORCED_OVERLAP_LIMIT)
            .copied()
    }

    /// Files `what`, found about an answer of `role`'s term `epoch` that
    /// arrived at `received`: a note when an operator-forced takeover
    /// excuses it, else a violation of `kind`.
    fn judge(
        &self,
        history: &History,
        (role, epoch, received): (usize, i64, Instant),
        what: String,
        kind: &mut Kind,
        notes: &mut Vec<String>,
    ) {
        match self.excuses(role, epoch, received) {
            Some(fault) => notes.push(format!(
                "answer excused by an operator-forced takeover ({} at {} ms): {what}",
                fault.kind,
                history.ms(fault.at)
            )),
            None => kind.push(what),
        }
    }
}

/// What [`in_real_time`] hands its visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// This item's answer arrived before the next one was asked for.
    Answered,
    /// This item was asked for now.
    Asked,
}

/// Walks `items` in the order they were asked for (`sent`), handing
/// `visit` first every item answered (`received`) strictly before the next
/// one was asked, then that one: the real-time checks keep what they need
/// of the answered ones and judge the asked one against it.
fn in_real_time<'a, T: 'a>(
    items: impl Iterator<Item = &'a T>,
    sent: impl Fn(&T) -> Instant,
    received: impl Fn(&T) -> Instant,
    mut visit: impl FnMut(&'a T, Step),
) {
    let mut by_sent: Vec<&T> = items.collect();
    by_sent.sort_by_key(|item| sent(item));
    let mut by_received = by_sent.clone();
    by_received.sort_by_key(|item| received(item));
    let mut answered = by_received.into_iter().peekable();
    for item in by_sent {
        while let Some(done) = answered.next_if(|done| received(done) < sent(item)) {
            visit(done, Step::Answered);
        }
        visit(item, Step::Asked);
    }
}

/// An answered request of either role, as the order checks see it.
#[derive(Debug, Clone, Copy)]
struct Answer {
    role: usize,
    epoch: i64,
    sent: Instant,
    received: Instant,
    client: usize,
}

fn answers(history: &History) -> Vec<Answer> {
    let tso = history.batches.iter().map(|b| Answer {
        role: TSO,
        epoch: b.epoch,
        sent: b.sent,
        received: b.received,
        client: b.client,
    });
    let kv = history.kv_ops.iter().map(|o| Answer {
        role: KV,
        epoch: o.epoch,
        sent: o.sent,
        received: o.received,
        client: o.client,
    });
    tso.chain(kv).collect()
}

fn describe_answer(history: &History, answer: &Answer) -> String {
    format!(
        "{} client {} answered by epoch {} (asked at {} ms, answered at {} ms)",
        ROLES[answer.role],
        answer.client,
        answer.epoch,
        history.ms(answer.sent),
        history.ms(answer.received)
    )
}

/// When each term was surely closed: the answer of the first status
/// sample that showed its node not serving it after the last one that
/// did, or a probe its node refused.
fn closed_by(history: &History) -> HashMap<(usize, i64), Instant> {
    let mut last_serving: HashMap<(usize, usize, i64), usize> = HashMap::new();
    for (index, sample) in history.samples.iter().enumerate() {
        if sample.state == State::Serving {
            last_serving.insert((sample.role, sample.node, sample.epoch), index);
        }
    }
    let mut closed: HashMap<(usize, i64), Instant> = HashMap::new();
    let mut close = |role, epoch, at: Instant| {
        closed
            .entry((role, epoch))
            .and_modify(|by| *by = (*by).min(at))
            .or_insert(at);
    };
    for ((role, node, epoch), last) in last_serving {
        let next = history.samples[last + 1..]
            .iter()
            .find(|s| s.role == role && s.node == node);
        if let Some(next) = next {
            close(role, epoch, next.received);
        }
    }
    for &(role, epoch, at) in &history.closed {
        close(role, epoch, at);
    }
    closed
}

/// Per role: no answer of a term asked for after the term was surely
/// closed; no answer of an older term asked for after a newer term's
/// answer arrived (unless an operator ended the older term just before).
fn check_answers(history: &History, all: &[Answer], forced: &Forced, report: &mut Report) {
    let mut after_close = Kind::new("answered after its term closed");
    let mut epoch_back = Kind::new("epoch went back");
    let closed = closed_by(history);
    for answer in all {
        if let Some(&by) = closed.get(&(answer.role, answer.epoch))
            && answer.sent > by
        {
            after_close.push(format!(
                "{}, although its term was seen closed at {} ms",
                describe_answer(history, answer),
                history.ms(by)
            ));
        }
    }
    for role in 0..ROLES.len() {
        // The answer of the newest term among those that arrived before.
        let mut top: Option<&Answer> = None;
        let of_role = all.iter().filter(|a| a.role == role);
        in_real_time(
            of_role,
            |a| a.sent,
            |a| a.received,
            |answer, step| {
                if step == Step::Answered {
                    if top.is_none_or(|top| answer.epoch > top.epoch) {
                        top = Some(answer);
                    }
                    return;
                }
                if let Some(top) = top.filter(|top| answer.epoch < top.epoch) {
                    let what = format!(
                        "{} although {} before it was asked",
                        describe_answer(history, answer),
                        describe_answer(history, top)
                    );
                    let about = (role, answer.epoch, answer.received);
                    forced.judge(history, about, what, &mut epoch_back, &mut report.notes);
                }
            },
        );
    }
    after_close.into(report);
    epoch_back.into(report);
}

/// The register: each key has one writer, whose values grow. A read asked
/// for after a write was acknowledged returns that write or a later one;
/// a read never returns a value no put had been asked for before it arrived.
fn check_register(history: &History, forced: &Forced, report: &mut Report) {
    let mut stale = Kind::new("stale read");
    let mut invented = Kind::new("read a value never written");
    // Per key, its puts in the writer's order, which is value order.
    let mut puts: HashMap<usize, Vec<&KvOp>> = HashMap::new();
    for op in history.kv_ops.iter().filter(|o| o.put) {
        puts.entry(op.key).or_default().push(op);
    }
    let mut asked: HashMap<usize, Vec<&PutAsked>> = HashMap::new();
    for put in &history.puts_asked {
        asked.entry(put.key).or_default().push(put);
    }
    let (none, no_asks) = (Vec::new(), Vec::new());
    for read in history.kv_ops.iter().filter(|o| !o.put) {
        let puts = puts.get(&read.key).unwrap_or(&none);
        // The newest put acknowledged before the read was asked for. A
        // writer's puts are acknowledged in order, so `received` grows
        // with the value and a binary search finds it.
        let acknowledged = puts.partition_point(|p| p.received < read.sent);
        if let Some(newest) = acknowledged.checked_sub(1).map(|i| puts[i])
            && read.value < newest.value
        {
            let what = format!(
                "key {} read {} (epoch {}, asked at {} ms, answered at {} ms) although {} was acknowledged at {} ms (epoch {})",
                read.key,
                read.value,
                read.epoch,
                history.ms(read.sent),
                history.ms(read.received),
                newest.value,
                history.ms(newest.received),
                newest.epoch
            );
            let about = (KV, read.epoch, read.received);
            forced.judge(history, about, what, &mut stale, &mut report.notes);
        }
        // Puts asked for before the read's answer arrived, whatever became
        // of them: one that failed, or was in flight when the clients
        // stopped, may have landed (a failed put is also a client error,
        // reported on its own).
        let asked = asked.get(&read.key).unwrap_or(&no_asks);
        let highest = asked
            .iter()
            .filter(|p| p.sent < read.received)
            .map(|p| p.value)
            .max()
            .unwrap_or(0);
        if read.value > highest {
            invented.push(format!(
                "key {} read {} (epoch {}, answered at {} ms) but the highest put asked for by then was {highest}",
                read.key,
                read.value,
                read.epoch,
                history.ms(read.received)
            ));
        }
    }
    stale.into(report);
    invented.into(report);
}

/// For every term an operator ended by hand, how long it went on answering
/// (its clients, the probe and its status samples), as [`ForcedOverlap`].
fn measure_forced(history: &History, all: &[Answer], report: &mut Report) {
    for (role, epoch, fault) in history.forced() {
        let old_answers = all
            .iter()
            .filter(|a| a.role == role && a.epoch == epoch)
            .map(|a| (a.sent, a.received));
        let old_samples = history
            .samples
            .iter()
            .filter(|s| s.role == role && s.state == State::Serving && s.epoch == epoch)
            .map(|s| (s.sent, s.received));
        let last = old_answers
            .chain(old_samples)
            .filter(|(_, received)| *received > fault.at)
            .max_by_key(|(_, received)| *received);
        let first_new = all
            .iter()
            .filter(|a| a.role == role && a.epoch > epoch)
            .map(|a| a.received)
            .min();
        let (at_most, surely) = match last {
            None => (Duration::ZERO, Duration::ZERO),
            Some((sent, received)) => (
                received.duration_since(fault.at),
                first_new.map_or(Duration::ZERO, |new| sent.saturating_duration_since(new)),
            ),
        };
        report.forced.push(ForcedOverlap { at_most, surely });
    }
}

fn describe(history: &History, batch: &Batch) -> String {
    format!(
        "client {} got {}..={} (epoch {}, asked at {} ms, answered at {} ms)",
        batch.client,
        batch.first,
        batch.last(),
        batch.epoch,
        history.ms(batch.sent),
        history.ms(batch.received)
    )
}

/// Every timestamp unique; per client strictly increasing; and in real time:
/// a batch asked for after another was answered holds larger timestamps and
/// no older epoch (else a deposed leader served after its successor).
fn check_timestamps(history: &History, forced: &Forced, report: &mut Report) {
    let batches = &history.batches;
    let mut unique = Kind::new("duplicate timestamp");
    let mut by_first: Vec<&Batch> = batches.iter().collect();
    by_first.sort_by_key(|b| b.first);
    let mut highest: Option<&Batch> = None;
    for batch in by_first {
        if let Some(previous) = highest {
            if batch.first <= previous.last() {
                unique.push(format!(
                    "{} overlaps {}",
                    describe(history, batch),
                    describe(history, previous)
                ));
            }
            if batch.last() > previous.last() {
                highest = Some(batch);
            }
        } else {
            highest = Some(batch);
        }
    }
    unique.into(report);

    let mut per_client = Kind::new("not increasing for a client");
    let mut last_of: Vec<Option<&Batch>> = Vec::new();
    for batch in batches {
        if last_of.len() <= batch.client {
            last_of.resize(batch.client + 1, None);
        }
        if let Some(previous) = last_of[batch.client]
            && batch.first <= previous.last()
        {
            per_client.push(format!(
                "{} after {}",
                describe(history, batch),
                describe(history, previous)
            ));
        }
        last_of[batch.client] = Some(batch);
    }
    per_client.into(report);

    let mut real_time = Kind::new("real-time order");
    // The batch with the highest timestamp among those that arrived before.
    let mut top_last: Option<&Batch> = None;
    in_real_time(
        batches.iter(),
        |b| b.sent,
        |b| b.received,
        |batch, step| {
            if step == Step::Answered {
                if top_last.is_none_or(|top| batch.last() > top.last()) {
                    top_last = Some(batch);
                }
                return;
            }
            // The same client's order is the per-client check's to report.
            if let Some(top) = top_last
                && top.client != batch.client
                && batch.first <= top.last()
            {
                let what = format!(
                    "{} although {} before it was asked",
                    describe(history, batch),
                    describe(history, top)
                );
                let about = (TSO, batch.epoch, batch.received);
                forced.judge(history, about, what, &mut real_time, &mut report.notes);
            }
        },
    );
    real_time.into(report);
}

/// `role`'s serving intervals from the samples, per node in sampling order.
fn intervals(history: &History, role: usize) -> Vec<Interval> {
    let nodes = history
        .samples
        .iter()
        .map(|s| s.node + 1)
        .max()
        .unwrap_or(0);
    let mut open: Vec<Option<Interval>> = vec![None; nodes];
    let mut done = Vec::new();
    for sample in history.samples.iter().filter(|s| s.role == role) {
        let slot = &mut open[sample.node];
        if sample.state != State::Serving {
            done.extend(slot.take());
            continue;
        }
        match slot {
            Some(interval)
                if interval.server_id == sample.server_id && interval.epoch == sample.epoch =>
            {
                interval.extend(sample)
            }
            _ => {
                done.extend(slot.take());
                *slot = Some(Interval::start(sample));
            }
        }
    }
    done.extend(open.into_iter().flatten());
    done.sort_by_key(|i| i.loose.0);
    done
}

fn span(history: &History, interval: &Interval) -> String {
    format!(
        "{} on node {} (server {}, epoch {}) serving from {} to {} ms",
        ROLES[interval.role],
        interval.node,
        interval.server_id,
        interval.epoch,
        history.ms(interval.loose.0),
        history.ms(interval.loose.1)
    )
}

/// When `stale` (the lower epoch) seemed to serve alongside `other` only
/// because it could not tell its term was over, a note saying so: it was
/// frozen during its term (it could not step down while frozen, and says
/// serving until it notices), or its clock stood still while its link was
/// blackholed and every answer it gave was confirmed by etcd (its status
/// takes the term for open; its answers are refused). Whether it answered
/// what it should not have is [`check_frozen`]'s and [`check_answers`]'s
/// to judge.
fn impaired_excuse(history: &History, stale: &Interval, other: &Interval) -> Option<String> {
    let impairment = history.impairments.iter().find(|i| {
        let excusing = match i.kind {
            ImpairmentKind::Stopped => true,
            ImpairmentKind::ClockStalled => history.answers_confirmed,
            _ => false,
        };
        excusing && i.node == Some(stale.node) && stale.loose.0 <= i.from && i.from <= stale.loose.1
    })?;
    let ended = impairment.until?;
    let (cause, what, after) = match impairment.kind {
        ImpairmentKind::Stopped => ("a freeze", "was frozen", "resuming"),
        _ => (
            "a stalled clock, answers confirmed",
            "had its clock stalled and its link blackholed",
            "its link healed",
        ),
    };
    Some(format!(
        "overlap excused by {cause}: {} and {}: node {} {what} from {} to {} ms and said serving until {} ms after {after}",
        span(history, stale),
        span(history, other),
        stale.node,
        history.ms(impairment.from),
        history.ms(ended),
        stale.loose.1.saturating_duration_since(ended).as_millis()
    ))
}

/// A leader frozen past its lease serves nothing once it resumes, if a
/// successor served meanwhile: no batch of its epoch asked for while it
/// was frozen may be answered after a newer epoch served. A batch asked
/// for before the freeze was surely in force may have been allocated
/// before it: a note, not a violation.
fn check_frozen(
    history: &History,
    role: usize,
    all: &[Answer],
    intervals: &[Interval],
    report: &mut Report,
) {
    let mut stale = Kind::new("frozen leader served after resuming");
    for freeze in &history.impairments {
        let (ImpairmentKind::Stopped, Some(node), Some(resumed)) =
            (freeze.kind, freeze.node, freeze.until)
        else {
            continue;
        };
        // The term it held when frozen: its last answer before the freeze.
        let Some(last) = history
            .samples
            .iter()
            .rfind(|s| s.role == role && s.node == node && s.sent < freeze.from)
            .filter(|s| s.state == State::Serving)
        else {
            continue;
        };
        let epoch = last.epoch;
        // The first answer that showed a newer term serving elsewhere.
        let Some(successor) = intervals
            .iter()
            .filter(|i| i.epoch > epoch && i.node != node)
            .min_by_key(|i| i.sure.0)
        else {
            continue;
        };
        let late: Vec<Answer> = all
            .iter()
            .copied()
            .filter(|a| {
                a.role == role
                    && a.epoch == epoch
                    && a.received > resumed
                    && a.received > successor.sure.0
            })
            .collect();
        let (surely, maybe): (Vec<Answer>, Vec<Answer>) =
            late.into_iter().partition(|a| a.sent >= freeze.in_force);
        let what = format!(
            "node {node} led epoch {epoch}, was frozen from {} (surely from {}) to {} ms; {} served from {} ms",
            history.ms(freeze.from),
            history.ms(freeze.in_force),
            history.ms(resumed),
            span(history, successor),
            history.ms(successor.sure.0)
        );
        let listed = |late: &[Answer]| {
            let shown: Vec<String> = late
                .iter()
                .take(5)
                .map(|a| describe_answer(history, a))
                .collect();
            shown.join("; ")
        };
        if !surely.is_empty() {
            stale.push(format!(
                "{what}; after resuming it answered {} request(s) of epoch {epoch} asked for while it was frozen: {}",
                surely.len(),
                listed(&surely)
            ));
        }
        if !maybe.is_empty() {
            report.notes.push(format!(
                "{what}; after resuming it answered {} request(s) asked for as it froze, which it may have allocated before: {}",
                maybe.len(),
                listed(&maybe)
            ));
        }
    }
    stale.into(report);
}

/// `role`'s serving intervals of different nodes never overlap (unless a
/// freeze explains it and the frozen node served nothing after, or a clock
/// stall with every answer confirmed, or an
/// operator ended the older term just before), and leaders serve in
/// increasing epochs.
fn check_leadership(
    history: &History,
    role: usize,
    all: &[Answer],
    forced: &Forced,
    report: &mut Report,
) {
    let intervals = intervals(history, role);
    let mut overlap = Kind::new("two leaders");
    let mut order = Kind::new("epochs not increasing");
    for (i, a) in intervals.iter().enumerate() {
        for b in &intervals[i + 1..] {
            if a.node == b.node && a.server_id == b.server_id && a.epoch == b.epoch {
                continue;
            }
            let (stale, other) = if a.epoch <= b.epoch { (a, b) } else { (b, a) };
            let from = a.sure.0.max(b.sure.0);
            let to = a.sure.1.min(b.sure.1);
            if a.node != b.node && from < to {
                let what = format!(
                    "{} and {} both served from {} to {} ms",
                    span(history, a),
                    span(history, b),
                    history.ms(from),
                    history.ms(to)
                );
                match impaired_excuse(history, stale, other) {
                    Some(note) => report.notes.push(note),
                    None => {
                        let about = (role, stale.epoch, stale.loose.1);
                        forced.judge(history, about, what, &mut overlap, &mut report.notes);
                    }
                }
                continue;
            }
            // Sorted by loose start, so `a` began first; when `a` also ended
            // before `b` began, `b` is the later term.
            let before = a.loose.1 < b.loose.0;
            if before && a.epoch >= b.epoch {
                match impaired_excuse(history, b, a) {
                    Some(note) => report.notes.push(note),
                    None => order.push(format!(
                        "{} came before {}",
                        span(history, a),
                        span(history, b)
                    )),
                }
            }
        }
    }
    overlap.into(report);
    order.into(report);
    check_frozen(history, role, all, &intervals, report);
}

/// While etcd has no quorum nothing can renew a lease, so every term
/// lapses: past the impairment's allowance no node says it serves, and no
/// request asked for then is answered before the quorum is back.
fn check_quorum_loss(history: &History, all: &[Answer], report: &mut Report) {
    let mut served = Kind::new("served without etcd quorum");
    for loss in &history.impairments {
        let (ImpairmentKind::EtcdNoQuorum { serves_at_most }, Some(until)) =
            (loss.kind, loss.until)
        else {
            continue;
        };
        let lapsed = loss.in_force + serves_at_most;
        let window = format!(
            "etcd had no quorum from {} to {} ms, every term lapsed by {} ms",
            history.ms(loss.in_force),
            history.ms(until),
            history.ms(lapsed)
        );
        for sample in &history.samples {
            if sample.state == State::Serving && sample.sent >= lapsed && sample.received <= until {
                served.push(format!(
                    "{} on node {} (epoch {}) said serving in a status asked at {} ms: {window}",
                    ROLES[sample.role],
                    sample.node,
                    sample.epoch,
                    history.ms(sample.sent)
                ));
            }
        }
        for answer in all {
            if answer.sent >= lapsed && answer.received <= until {
                served.push(format!("{}: {window}", describe_answer(history, answer)));
            }
        }
    }
    served.into(report);
}

/// Every fault recovered within its bound; every allocation succeeded; the
/// runner saw no stall.
fn check_faults(history: &History, report: &mut Report) {
    let mut slow = Kind::new("no recovery");
    for fault in &history.faults {
        if fault.recovered.is_none() {
            slow.push(format!(
                "fault {} ({}{} on {}, {}, at {} ms): no healthy node served within {} ms",
                fault.index,
                fault.kind,
                fault
                    .role
                    .map_or_else(String::new, |role| format!(" of {}", ROLES[role])),
                fault
                    .node
                    .map_or_else(|| "etcd".to_owned(), |n| format!("node {n}")),
                fault.detail,
                history.ms(fault.at),
                fault.bound.as_millis()
            ));
        }
    }
    slow.into(report);
    // A live process must never be taken for dead: it still holds its
    // socket, so its witness cannot refuse.
    let mut revoked = Kind::new("witness revoked a live leader");
    for fault in &history.faults {
        if leaves_alive(fault.kind) && fault.witness_revoked == Some(true) {
            revoked.push(format!(
                "fault {} ({} on node {:?}, {}, at {} ms): a peer's death witness revoked its leases",
                fault.index,
                fault.kind,
                fault.node,
                fault.detail,
                history.ms(fault.at)
            ));
        }
    }
    revoked.into(report);
    // Roles share their node's lease: a fault that ends one role's term
    // must leave every other term on that lease alone.
    let mut bystanders = Kind::new("a role's fault ended another role's term");
    for fault in &history.faults {
        for &(role, epoch, kept) in &fault.bystanders {
            if !kept {
                bystanders.push(format!(
                    "fault {} ({} of {} on node {:?}, at {} ms): {}'s term at epoch {epoch} on the same node ended",
                    fault.index,
                    fault.kind,
                    fault.role.map_or("?", |r| ROLES[r]),
                    fault.node,
                    history.ms(fault.at),
                    ROLES[role],
                ));
            }
        }
    }
    bystanders.into(report);
    let mut errors = Kind::new("client error");
    for error in &history.client_errors {
        errors.push(format!(
            "client {} at {} ms: {}",
            error.client,
            history.ms(error.at),
            error.message
        ));
    }
    errors.into(report);
    let mut overload = Kind::new("overloading client");
    for violation in &history.overload.violations {
        overload.push(violation.clone());
    }
    overload.into(report);
    let mut stalls = Kind::new("stall");
    for stall in &history.stalls {
        stalls.push(stall.clone());
    }
    stalls.into(report);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::campaign::history::{Impairment, Recorder};

    /// A history starting at `start`, with instants given in ms after it.
    struct Builder {
        start: Instant,
        recorder: Recorder,
    }

    impl Builder {
        fn new() -> Self {
            let recorder = Recorder::new();
            let start = recorder.lock().start;
            Self { start, recorder }
        }

        fn at(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }

        fn batch(&self, client: usize, first: u64, count: u32, epoch: i64, sent: u64, got: u64) {
            let batch = Batch {
                client,
                first,
                count,
                epoch,
                sent: self.at(sent),
                received: self.at(got),
            };
            self.recorder.lock().batches.push(batch);
        }

        /// Samples of `node` every 20 ms over `from..to`, each answered in 2 ms.
        fn serving(&self, node: usize, epoch: i64, from: u64, to: u64) {
            for ms in (from..to).step_by(20) {
                let sample = Sample {
                    role: TSO,
                    node,
                    server_id: node as i64 + 1,
                    state: State::Serving,
                    epoch,
                    leader_epoch: epoch,
                    copy_loaded: true,
                    sent: self.at(ms),
                    received: self.at(ms + 2),
                };
                self.recorder.lock().samples.push(sample);
            }
        }

        fn standby(&self, node: usize, at: u64) {
            let sample = Sample {
                role: TSO,
                node,
                server_id: node as i64 + 1,
                state: State::Standby,
                epoch: 0,
                leader_epoch: 0,
                copy_loaded: true,
                sent: self.at(at),
                received: self.at(at + 2),
            };
            self.recorder.lock().samples.push(sample);
        }

        fn frozen(&self, node: usize, from: u64, until: u64) {
            self.impaired(node, ImpairmentKind::Stopped, from, until);
        }

        fn impaired(&self, node: usize, kind: ImpairmentKind, from: u64, until: u64) {
            let impairment = Impairment {
                node: Some(node),
                kind,
                from: self.at(from),
                in_force: self.at(from + 1),
                until: Some(self.at(until)),
            };
            self.recorder.lock().impairments.push(impairment);
        }

        fn kv(&self, client: usize, key: usize, put: bool, value: u64, epoch: i64, at: u64) {
            let op = KvOp {
                client,
                key,
                put,
                value,
                epoch,
                sent: self.at(at),
                received: self.at(at + 2),
            };
            let mut history = self.recorder.lock();
            if put {
                let sent = op.sent;
                history.puts_asked.push(PutAsked { key, value, sent });
            }
            history.kv_ops.push(op);
        }

        /// A put of `value` to `key` asked for at `at`, never answered.
        fn unanswered_put(&self, key: usize, value: u64, at: u64) {
            let sent = self.at(at);
            self.recorder
                .lock()
                .puts_asked
                .push(PutAsked { key, value, sent });
        }

        /// An operator deleted the key of `epoch` (of `role`) at `at`.
        fn forced(&self, role: usize, epoch: i64, at: u64) {
            self.fault("delete-key", role, epoch, at, false);
        }

        /// A fault of `kind` on node 0, the leader of `role` at `epoch`, at
        /// `at`, recovered 50 ms later; operator-forced when it is `delete-key`.
        fn fault(&self, kind: &'static str, role: usize, epoch: i64, at: u64, revoked: bool) {
            let fault = FaultRecord {
                index: 1,
                kind,
                node: Some(0),
                role: Some(role),
                epoch,
                forced: if kind == "delete-key" {
                    vec![(role, epoch)]
                } else {
                    Vec::new()
                },
                at: self.at(at),
                bound: Duration::from_secs(5),
                recovered: Some(Duration::from_millis(50)),
                detail: String::new(),
                clients_paused: None,
                witness_revoked: Some(revoked),
                bystanders: Vec::new(),
            };
            self.recorder.lock().faults.push(fault);
        }

        fn check(&self) -> Report {
            check(&self.recorder.lock())
        }
    }

    fn kinds(report: &Report) -> Vec<&str> {
        report
            .messages
            .iter()
            .map(|m| m.split(':').next().unwrap_or(""))
            .collect()
    }

    #[test]
    fn a_witness_revoke_of_a_live_leader_is_a_violation_and_of_a_killed_one_is_not() {
        for (kind, revoked, violation) in [
            ("sigstop", true, true),
            ("blackhole", true, true),
            ("sigstop", false, false),
            ("kill-9", true, false),
        ] {
            let h = Builder::new();
            h.serving(0, 5, 0, 200);
            h.fault(kind, TSO, 5, 100, revoked);
            let report = h.check();
            assert_eq!(
                kinds(&report).contains(&"witness revoked a live leader"),
                violation,
                "{kind} revoked={revoked}: {:?}",
                report.messages
            );
        }
    }

    #[test]
    fn a_fault_of_one_role_that_ends_another_roles_term_on_the_same_lease_is_a_violation() {
        for kept in [true, false] {
            let h = Builder::new();
            h.serving(0, 5, 0, 200);
            h.fault("crash-election", TSO, 5, 100, false);
            h.recorder.lock().faults[0].bystanders = vec![(TSO + 1, 7, kept)];
            let report = h.check();
            assert_eq!(
                kinds(&report).contains(&"a role's fault ended another role's term"),
                !kept,
                "kept={kept}: {:?}",
                report.messages
            );
        }
    }

    #[test]
    fn a_clean_failover_passes() {
        let h = Builder::new();
        h.serving(0, 5, 0, 200);
        h.standby(0, 220);
        h.serving(1, 9, 300, 500);
        h.batch(0, 100, 10, 5, 10, 12);
        h.batch(1, 110, 5, 5, 20, 22);
        h.batch(0, 200, 1, 9, 30, 310);
        let report = h.check();
        assert_eq!(report.violations, 0, "{:?}", report.messages);
    }

    #[test]
    fn duplicates_and_reordering_are_found() {
        let h = Builder::new();
        h.batch(0, 100, 10, 5, 10, 12);
        // Overlaps client 0's batch, and was asked for after it was answered.
        h.batch(1, 105, 1, 5, 20, 22);
        // Client 0 goes backwards.
        h.batch(0, 50, 1, 5, 30, 32);
        let report = h.check();
        let kinds = kinds(&report);
        assert!(kinds.contains(&"duplicate timestamp"), "{kinds:?}");
        assert!(kinds.contains(&"real-time order"), "{kinds:?}");
        assert!(kinds.contains(&"not increasing for a client"), "{kinds:?}");
    }

    #[test]
    fn an_older_epoch_after_a_newer_one_is_found() {
        let h = Builder::new();
        h.batch(0, 100, 1, 9, 10, 12);
        h.batch(1, 200, 1, 5, 20, 22);
        assert_eq!(kinds(&h.check()), ["epoch went back"]);
    }

    #[test]
    fn two_leaders_at_once_are_found() {
        let h = Builder::new();
        h.serving(0, 5, 0, 300);
        h.serving(1, 9, 200, 500);
        assert_eq!(kinds(&h.check()), ["two leaders"]);
    }

    #[test]
    fn a_frozen_leader_may_say_serving_but_not_serve_after_resuming() {
        let h = Builder::new();
        h.serving(0, 5, 0, 100);
        h.frozen(0, 110, 4100);
        h.serving(0, 5, 4110, 4130);
        h.standby(0, 4140);
        h.serving(1, 9, 2200, 5000);
        let report = h.check();
        assert_eq!(report.violations, 0, "{:?}", report.messages);
        assert_eq!(report.notes.len(), 1, "{:?}", report.notes);

        // Asked for as the node froze: it may have allocated it before.
        h.batch(0, 100, 1, 5, 110, 4112);
        assert_eq!(h.check().violations, 0);
        // Asked for while it was frozen: allocated after it resumed.
        h.batch(1, 101, 1, 5, 2000, 4112);
        assert_eq!(kinds(&h.check()), ["frozen leader served after resuming"]);
    }

    #[test]
    fn a_frozen_leader_serving_after_resuming_is_found_without_an_overlap() {
        let h = Builder::new();
        h.serving(0, 5, 0, 100);
        h.frozen(0, 110, 4100);
        h.standby(0, 4120);
        h.serving(1, 9, 2200, 5000);
        h.batch(0, 100, 1, 5, 2000, 4105);
        assert_eq!(kinds(&h.check()), ["frozen leader served after resuming"]);
    }

    #[test]
    fn a_stalled_clock_overlap_is_reported_unless_every_answer_was_confirmed() {
        let h = Builder::new();
        h.serving(0, 5, 0, 100);
        h.impaired(0, ImpairmentKind::ClockStalled, 110, 10_110);
        // Its status takes the term for open until its link heals.
        h.serving(0, 5, 120, 10_120);
        h.standby(0, 10_140);
        h.serving(1, 9, 2200, 12_000);
        assert_eq!(kinds(&h.check()), ["two leaders"]);

        h.recorder.lock().answers_confirmed = true;
        let report = h.check();
        assert_eq!(report.violations, 0, "{:?}", report.messages);
        assert!(
            report.notes[0].starts_with("overlap excused by a stalled clock"),
            "{:?}",
            report.notes
        );
        // Confirmed or not, an answer of the old term after the new one's is found.
        h.batch(0, 100, 1, 9, 2300, 2302);
        h.batch(0, 50, 1, 5, 2400, 2402);
        assert!(
            kinds(&h.check()).contains(&"epoch went back"),
            "{:?}",
            h.check().messages
        );
    }

    #[test]
    fn leaders_must_come_in_increasing_epochs() {
        let h = Builder::new();
        h.serving(0, 9, 0, 100);
        h.standby(0, 120);
        h.serving(1, 5, 200, 300);
        assert_eq!(kinds(&h.check()), ["epochs not increasing"]);
    }

    #[test]
    fn a_read_that_misses_an_acknowledged_write_is_stale() {
        let h = Builder::new();
        h.kv(0, 0, true, 1, 5, 10);
        h.kv(1, 0, false, 1, 5, 20);
        h.kv(0, 0, true, 2, 9, 30);
        assert_eq!(h.check().violations, 0);
        // Asked for at 40, after the put of 2 was acknowledged at 32.
        h.kv(2, 0, false, 1, 5, 40);
        let report = h.check();
        assert!(
            kinds(&report).contains(&"stale read"),
            "{:?}",
            report.messages
        );
    }

    #[test]
    fn a_read_of_a_value_nobody_put_yet_is_found() {
        let h = Builder::new();
        h.kv(0, 0, true, 1, 5, 10);
        h.kv(1, 0, false, 3, 5, 20);
        assert_eq!(kinds(&h.check()), ["read a value never written"]);
    }

    #[test]
    fn a_read_of_a_put_asked_for_but_never_answered_is_no_invention() {
        let h = Builder::new();
        h.kv(0, 0, true, 1, 5, 10);
        // In flight when the clients stopped, or failed: it may have landed.
        h.unanswered_put(0, 2, 15);
        h.kv(1, 0, false, 2, 5, 20);
        assert_eq!(h.check().violations, 0);
        // Asked for only after the read's answer arrived: an invention.
        h.unanswered_put(0, 3, 30);
        h.kv(2, 0, false, 3, 5, 25);
        assert_eq!(kinds(&h.check()), ["read a value never written"]);
    }

    #[test]
    fn an_answer_after_its_node_said_the_term_was_over_is_found() {
        let h = Builder::new();
        h.serving(0, 5, 0, 100);
        h.standby(0, 120);
        h.batch(0, 100, 1, 5, 130, 131);
        assert_eq!(kinds(&h.check()), ["answered after its term closed"]);
    }

    #[test]
    fn an_operator_forced_overlap_is_excused_within_its_limit_and_measured() {
        let h = Builder::new();
        h.kv(0, 0, true, 1, 5, 10);
        h.forced(KV, 5, 100);
        h.kv(0, 0, true, 2, 9, 105);
        // The deposed term reads from memory 8 ms after the act.
        h.kv(1, 0, false, 1, 5, 108);
        let report = h.check();
        assert_eq!(report.violations, 0, "{:?}", report.messages);
        assert_eq!(report.forced.len(), 1);
        assert_eq!(report.forced[0].at_most, Duration::from_millis(10));
        // Asked for at 108, after the successor's answer arrived at 107.
        assert_eq!(report.forced[0].surely, Duration::from_millis(1));
        assert!(
            report.forced_line().contains("n=1 p50_ms=10.0"),
            "{}",
            report.forced_line()
        );
        // Past the limit it is a violation again.
        h.kv(1, 0, false, 1, 5, 100 + 1100);
        assert_eq!(kinds(&h.check()), ["stale read", "epoch went back"]);
    }

    #[test]
    fn a_standin_initiated_takeover_gets_no_overlap_excuse() {
        let h = Builder::new();
        h.kv(0, 0, true, 1, 5, 10);
        h.kv(0, 0, true, 2, 9, 105);
        h.kv(1, 0, false, 1, 5, 108);
        assert_eq!(kinds(&h.check()), ["stale read", "epoch went back"]);
    }
}
