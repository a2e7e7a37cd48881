//! Judges a campaign's history: unique, ordered timestamps; one serving leader at a time with growing epochs; every fault recovered within its bound.

use std::time::Instant;

use crate::history::{Batch, History, ImpairmentKind, Sample, State};

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

/// A run of samples in which one process of a node served one epoch.
#[derive(Debug, Clone, Copy)]
struct Interval {
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
    check_timestamps(history, &mut report);
    check_leadership(history, &mut report);
    check_faults(history, &mut report);
    report
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
fn check_timestamps(history: &History, report: &mut Report) {
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
    let mut epoch_back = Kind::new("epoch went back");
    let mut by_sent: Vec<&Batch> = batches.iter().collect();
    by_sent.sort_by_key(|b| b.sent);
    let mut by_received: Vec<&Batch> = batches.iter().collect();
    by_received.sort_by_key(|b| b.received);
    let mut answered = by_received.into_iter().peekable();
    let (mut top_last, mut top_epoch): (Option<&Batch>, Option<&Batch>) = (None, None);
    for batch in by_sent {
        // Everything answered before this batch was asked for.
        while let Some(done) = answered.next_if(|done| done.received < batch.sent) {
            if top_last.is_none_or(|top| done.last() > top.last()) {
                top_last = Some(done);
            }
            if top_epoch.is_none_or(|top| done.epoch > top.epoch) {
                top_epoch = Some(done);
            }
        }
        // The same client's order is the per-client check's to report.
        if let Some(top) = top_last
            && top.client != batch.client
            && batch.first <= top.last()
        {
            real_time.push(format!(
                "{} although {} before it was asked",
                describe(history, batch),
                describe(history, top)
            ));
        }
        if let Some(top) = top_epoch
            && batch.epoch < top.epoch
        {
            epoch_back.push(format!(
                "{} although {} before it was asked",
                describe(history, batch),
                describe(history, top)
            ));
        }
    }
    real_time.into(report);
    epoch_back.into(report);
}

/// Serving intervals from the samples, per node in sampling order.
fn intervals(history: &History) -> Vec<Interval> {
    let nodes = history
        .samples
        .iter()
        .map(|s| s.node + 1)
        .max()
        .unwrap_or(0);
    let mut open: Vec<Option<Interval>> = vec![None; nodes];
    let mut done = Vec::new();
    for sample in &history.samples {
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
        "node {} (server {}, epoch {}) serving from {} to {} ms",
        interval.node,
        interval.server_id,
        interval.epoch,
        history.ms(interval.loose.0),
        history.ms(interval.loose.1)
    )
}

/// When `stale` (the lower epoch) seemed to serve alongside `other` only
/// because it was frozen during its term (it could not step down while
/// frozen, and says serving until it notices), a note saying so; whether
/// it served anything after resuming is [`check_frozen`]'s to judge.
fn frozen_excuse(history: &History, stale: &Interval, other: &Interval) -> Option<String> {
    let freeze = history.impairments.iter().find(|i| {
        i.kind == ImpairmentKind::Stopped
            && i.node == Some(stale.node)
            && stale.loose.0 <= i.from
            && i.from <= stale.loose.1
    })?;
    let resumed = freeze.until?;
    Some(format!(
        "overlap excused by a freeze: {} and {}: node {} was frozen from {} to {} ms and said serving until {} ms after resuming",
        span(history, stale),
        span(history, other),
        stale.node,
        history.ms(freeze.from),
        history.ms(resumed),
        stale.loose.1.saturating_duration_since(resumed).as_millis()
    ))
}

/// A leader frozen past its lease serves nothing once it resumes, if a
/// successor served meanwhile: no batch of its epoch asked for while it
/// was frozen may be answered after a newer epoch served. A batch asked
/// for before the freeze was surely in force may have been allocated
/// before it: a note, not a violation.
fn check_frozen(history: &History, intervals: &[Interval], report: &mut Report) {
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
            .rfind(|s| s.node == node && s.sent < freeze.from)
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
        let late: Vec<&Batch> = history
            .batches
            .iter()
            .filter(|b| b.epoch == epoch && b.received > resumed && b.received > successor.sure.0)
            .collect();
        let (surely, maybe): (Vec<&Batch>, Vec<&Batch>) =
            late.into_iter().partition(|b| b.sent >= freeze.in_force);
        let what = format!(
            "node {node} led epoch {epoch}, was frozen from {} (surely from {}) to {} ms; {} served from {} ms",
            history.ms(freeze.from),
            history.ms(freeze.in_force),
            history.ms(resumed),
            span(history, successor),
            history.ms(successor.sure.0)
        );
        let listed = |batches: &[&Batch]| {
            let shown: Vec<String> = batches
                .iter()
                .take(5)
                .map(|b| describe(history, b))
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

/// Serving intervals of different nodes never overlap (unless a freeze
/// explains it and the frozen node served nothing after), and leaders
/// serve in increasing epochs.
fn check_leadership(history: &History, report: &mut Report) {
    let intervals = intervals(history);
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
                match frozen_excuse(history, stale, other) {
                    Some(note) => report.notes.push(note),
                    None => overlap.push(format!(
                        "{} and {} both served from {} to {} ms",
                        span(history, a),
                        span(history, b),
                        history.ms(from),
                        history.ms(to)
                    )),
                }
                continue;
            }
            // Sorted by loose start, so `a` began first; when `a` also ended
            // before `b` began, `b` is the later term.
            let before = a.loose.1 < b.loose.0;
            if before && a.epoch >= b.epoch {
                match frozen_excuse(history, b, a) {
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
    check_frozen(history, &intervals, report);
}

/// Every fault recovered within its bound; every allocation succeeded; the
/// runner saw no stall.
fn check_faults(history: &History, report: &mut Report) {
    let mut slow = Kind::new("no recovery");
    for fault in &history.faults {
        if fault.recovered.is_none() {
            slow.push(format!(
                "fault {} ({} on {}, {}, at {} ms): no healthy node served within {} ms",
                fault.index,
                fault.kind,
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
    use crate::history::{Impairment, Recorder};

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
                    node,
                    server_id: node as i64 + 1,
                    state: State::Serving,
                    epoch,
                    leader_epoch: epoch,
                    sent: self.at(ms),
                    received: self.at(ms + 2),
                };
                self.recorder.lock().samples.push(sample);
            }
        }

        fn standby(&self, node: usize, at: u64) {
            let sample = Sample {
                node,
                server_id: node as i64 + 1,
                state: State::Standby,
                epoch: 0,
                leader_epoch: 0,
                sent: self.at(at),
                received: self.at(at + 2),
            };
            self.recorder.lock().samples.push(sample);
        }

        fn frozen(&self, node: usize, from: u64, until: u64) {
            let freeze = Impairment {
                node: Some(node),
                kind: ImpairmentKind::Stopped,
                from: self.at(from),
                in_force: self.at(from + 1),
                until: Some(self.at(until)),
            };
            self.recorder.lock().impairments.push(freeze);
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
    fn leaders_must_come_in_increasing_epochs() {
        let h = Builder::new();
        h.serving(0, 9, 0, 100);
        h.standby(0, 120);
        h.serving(1, 5, 200, 300);
        assert_eq!(kinds(&h.check()), ["epochs not increasing"]);
    }
}
