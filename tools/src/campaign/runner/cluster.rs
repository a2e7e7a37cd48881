//! Cluster control: waiting for one settled leader, the latest samples, and the logs kept of a failed run.

use std::time::{Duration, Instant};

use super::*;
use crate::campaign::checker;
use crate::campaign::history::{ROLES, Recorder, Sample, State};

/// Each role's leader (node, epoch), by [`ROLES`]' index.
pub(super) type Leaders = Vec<(usize, i64)>;

impl Cluster {
    /// Waits until every node answers and, for every role, exactly one
    /// serves and every node sees it as leader; returns each role's leader
    /// and its epoch. A node whose
    /// process exited by itself is restarted (and recorded as a stall).
    /// `None`, with a stall recorded, when that takes over [`SETTLE_WITHIN`].
    pub(super) async fn settle(&mut self, after: &str) -> anyhow::Result<Option<Leaders>> {
        let since = Instant::now();
        loop {
            for (node, process) in self.nodes.iter_mut().enumerate() {
                if let Some(status) = process.try_exit_status() {
                    let stall = format!(
                        "after {after}: node {node} exited by itself ({status}); its log ends with:\n{}",
                        tail(&process.log(), 20)
                    );
                    println!("campaign: {stall}");
                    self.recorder.lock().stalls.push(stall);
                    process.restart()?;
                }
            }
            let latest: Vec<_> = (0..ROLES.len())
                .map(|role| self.latest_samples(role, since))
                .collect();
            let leaders: Option<Leaders> = latest.iter().map(|l| settled(l)).collect();
            if let Some(leaders) = leaders {
                return Ok(Some(leaders));
            }
            if since.elapsed() > SETTLE_WITHIN {
                let seen: Vec<String> = latest
                    .iter()
                    .zip(ROLES)
                    .flat_map(|(latest, role)| {
                        latest.iter().enumerate().map(move |(node, sample)| match sample {
                            Some(s) => format!(
                                "{role} on node {node}: {:?} epoch {} (server {}), sees leader epoch {}",
                                s.state, s.epoch, s.server_id, s.leader_epoch
                            ),
                            None => format!("{role} on node {node}: no answer"),
                        })
                    })
                    .collect();
                let stall = format!(
                    "after {after}: no single leader seen by every node within {} s: {}",
                    SETTLE_WITHIN.as_secs(),
                    seen.join("; ")
                );
                println!("campaign: {stall}");
                self.recorder.lock().stalls.push(stall);
                return Ok(None);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// Each node's latest sample of `role` sent at or after `since`.
    pub(super) fn latest_samples(&self, role: usize, since: Instant) -> Vec<Option<Sample>> {
        let history = self.recorder.lock();
        let mut latest = vec![None; NODES];
        // From the end: samples are recorded about in time order, and one
        // status call takes under STATUS_WITHIN, so older ones can stop the scan.
        for sample in history.samples.iter().rev() {
            if sample.received + STATUS_WITHIN < since {
                break;
            }
            if sample.role == role && sample.sent >= since && latest[sample.node].is_none() {
                latest[sample.node] = Some(*sample);
            }
        }
        latest
    }

    /// Copies every node's log and the violations to a directory that
    /// outlives the campaign, and returns it.
    pub(super) fn keep_logs(&self, seed: u64, report: &checker::Report) -> anyhow::Result<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("standin-campaign-{seed}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for (node, process) in self.nodes.iter().enumerate() {
            std::fs::write(dir.join(format!("node{node}.log")), process.log())?;
        }
        let history = self.recorder.lock();
        let mut text = String::new();
        for fault in &history.faults {
            text.push_str(&format!(
                "fault {} at {} ms: {} of {:?} on {:?} (epoch {}): {}: recovered {:?}\n",
                fault.index,
                history.ms(fault.at),
                fault.kind,
                fault.role.map(|role| ROLES[role]),
                fault.node,
                fault.epoch,
                fault.detail,
                fault.recovered
            ));
        }
        for message in &report.messages {
            text.push_str(&format!("VIOLATION: {message}\n"));
        }
        std::fs::write(dir.join("violations.txt"), text)?;
        Ok(dir)
    }
}

/// The leader and its epoch when the samples show one serving node, every
/// other node in standby, and every node seeing that leader.
pub(super) fn settled(latest: &[Option<Sample>]) -> Option<(usize, i64)> {
    let samples: Vec<&Sample> = latest.iter().flatten().collect();
    if samples.len() != NODES {
        return None;
    }
    let mut serving = samples.iter().filter(|s| s.state == State::Serving);
    let leader = serving.next()?;
    if serving.next().is_some() {
        return None;
    }
    let whole = samples.iter().all(|s| {
        (s.node == leader.node || s.state == State::Standby) && s.leader_epoch == leader.epoch
    });
    whole.then_some((leader.node, leader.epoch))
}

/// When `node` still serves `role`'s term `epoch` in a sample sent after
/// `repaired`: the time from `at` to the first answer of its last unbroken
/// run of such samples. A term that rode the fault out may have refused for
/// a moment in between (its lease trust lapsed until a keepalive got
/// through, which is safe), and counts from when it served again; a sample
/// of another term ends the search.
pub(super) fn kept_term(
    recorder: &Recorder,
    role: usize,
    node: usize,
    epoch: i64,
    at: Instant,
    repaired: Instant,
) -> Option<Duration> {
    let history = recorder.lock();
    let mut serving_since = None;
    for sample in history
        .samples
        .iter()
        .filter(|s| s.role == role && s.node == node && s.sent >= at)
    {
        if sample.state != State::Serving {
            serving_since = None;
            continue;
        }
        if sample.epoch != epoch {
            return None;
        }
        let since = *serving_since.get_or_insert(sample.received);
        if sample.sent >= repaired {
            return Some(since.saturating_duration_since(at));
        }
    }
    None
}

/// The last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of node 0 every 20 ms from `start`, in `states` (epoch 0
    /// when not serving).
    fn sampled(start: Instant, states: &[(State, i64)]) -> Recorder {
        let recorder = Recorder::new();
        for (index, &(state, epoch)) in states.iter().enumerate() {
            let sent = start + Duration::from_millis(20 * index as u64);
            recorder.lock().samples.push(Sample {
                role: 0,
                node: 0,
                server_id: 1,
                state,
                epoch,
                leader_epoch: epoch,
                copy_loaded: true,
                sent,
                received: sent + Duration::from_millis(2),
            });
        }
        recorder
    }

    #[test]
    fn a_kept_term_counts_from_when_it_serves_again_after_the_repair() {
        let start = Instant::now();
        let at = start + Duration::from_millis(10);
        let repaired = start + Duration::from_millis(50);
        let serving = (State::Serving, 7);
        let refusing = (State::Standby, 0);
        // Served throughout: recovered at its first answer after the fault.
        let kept = sampled(start, &[serving, serving, serving, serving, serving]);
        assert_eq!(
            kept_term(&kept, 0, 0, 7, at, repaired),
            Some(Duration::from_millis(12))
        );
        // Refused for a moment, then served the same term again.
        let lapsed = sampled(start, &[serving, serving, refusing, serving, serving]);
        assert_eq!(
            kept_term(&lapsed, 0, 0, 7, at, repaired),
            Some(Duration::from_millis(52))
        );
        // Another term of the node is no kept term.
        let replaced = sampled(start, &[serving, refusing, (State::Serving, 9), serving]);
        assert_eq!(kept_term(&replaced, 0, 0, 7, at, repaired), None);
        // Nothing sent after the repair yet.
        let early = sampled(start, &[serving, serving]);
        assert_eq!(kept_term(&early, 0, 0, 7, at, repaired), None);
    }
}
