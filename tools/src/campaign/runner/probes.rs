//! What the campaign watches and drives: each node's state sampled, clients of both roles, and probes of a deposed leader.

use std::time::Instant;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use standin::Config;
use standin::service::client::{ClientError as CallError, KvClient, TsoClient, with_epoch};
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::kv_client::KvClient as KvStub;
use standin::service::grpc::proto::tso_client::TsoClient as TsoStub;
use standin::service::grpc::proto::{AllocateRequest, GetRequest, StatusRequest};
use tonic::transport::Channel;

use super::*;
use crate::campaign::history::{
    Batch, ClientError, KEYS_PER_CLIENT, KvOp, PutAsked, ROLES, Recorder, Sample, State, TSO,
};

/// Requests to a leader that a fault deposed, sent with the epoch it led,
/// as a client that has not heard of the change would send them: the
/// deposed node must refuse them. Every answer is recorded, so the checker
/// sees any it should not have given.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    /// The role asked.
    pub(super) role: usize,
    /// The deposed leader.
    pub(super) node: usize,
    /// The epoch it led.
    pub(super) epoch: i64,
    /// The client number its answers are recorded under.
    pub(super) client: usize,
}

impl Probe {
    /// For a leader that cannot tell its term is over (frozen, or its
    /// clock stalled while cut off), once a successor serves: one request
    /// to the successor, then one to the old leader (a frozen one answers
    /// once it resumes), and what happened. If the old leader answers, its
    /// answer comes after the successor's in real time.
    pub(super) async fn send(
        self,
        (successor, successor_epoch): (Channel, i64),
        old: Channel,
        recorder: Recorder,
    ) -> String {
        let first = match self.ask(successor, successor_epoch, &recorder).await {
            Ok(epoch) => format!("epoch {epoch}"),
            Err(refusal) => refusal.to_string(),
        };
        let second = match self.ask(old, self.epoch, &recorder).await {
            Ok(epoch) => format!("ANSWERED (epoch {epoch})"),
            Err(refusal) => refusal.to_string(),
        };
        format!(
            "probe: the successor answered ({first}), then the old leader asked with epoch {} {second}",
            self.epoch
        )
    }

    /// For a leader an operator deposed (its key deleted, its lease
    /// revoked): asks it over and over until it refuses, and says how long
    /// after `at` it last answered and when it refused. Its refusal is
    /// recorded as the moment its term was surely closed.
    pub(super) async fn hammer(self, channel: Channel, at: Instant, recorder: Recorder) -> String {
        let mut answered = 0;
        let mut last = None;
        loop {
            match self.ask(channel.clone(), self.epoch, &recorder).await {
                Ok(_) => {
                    answered += 1;
                    last = Some(Instant::now());
                }
                // Too busy to answer says nothing about its term.
                Err(Refusal::Refused(tonic::Code::ResourceExhausted)) => {}
                Err(refusal) => {
                    let now = Instant::now();
                    // Silence proves nothing; a refusal proves the term is over.
                    if let Refusal::Refused(_) = refusal {
                        recorder.lock().closed.push((self.role, self.epoch, now));
                    }
                    let last = last.map_or("never".to_owned(), |last| {
                        format!("{} ms after the act", last.duration_since(at).as_millis())
                    });
                    return format!(
                        "probe: the deposed leader answered {answered} request(s) of epoch {}, the last {last}, and {refusal} {} ms after",
                        self.epoch,
                        now.duration_since(at).as_millis()
                    );
                }
            }
            if at.elapsed() > PROBE_WITHIN {
                return format!(
                    "probe: the deposed leader still answered epoch {} {} s after the act",
                    self.epoch,
                    PROBE_WITHIN.as_secs()
                );
            }
            tokio::time::sleep(HAMMER_PACE).await;
        }
    }

    /// One request of the probe's role to `channel` with `epoch`: the epoch
    /// that answered (and its answer is recorded), or how it was refused.
    async fn ask(&self, channel: Channel, epoch: i64, recorder: &Recorder) -> Result<i64, Refusal> {
        let sent = Instant::now();
        let answer = match self.role {
            TSO => {
                let request = with_epoch(AllocateRequest { count: 1 }, epoch);
                let mut stub = TsoStub::new(channel);
                tokio::time::timeout(PROBE_WITHIN, stub.allocate(request))
                    .await
                    .map(|answer| answer.map(|batch| Answer::Batch(batch.into_inner())))
            }
            _ => {
                // Client 0's first key: written all through the campaign.
                let request = with_epoch(GetRequest { key: key_name(0) }, epoch);
                let mut stub = KvStub::new(channel);
                tokio::time::timeout(PROBE_WITHIN, stub.get(request))
                    .await
                    .map(|answer| answer.map(|got| Answer::Got(got.into_inner())))
            }
        };
        let received = Instant::now();
        match answer {
            Ok(Ok(Answer::Batch(batch))) => {
                recorder.lock().batches.push(Batch {
                    client: self.client,
                    first: batch.first,
                    count: batch.count,
                    epoch: batch.epoch,
                    sent,
                    received,
                });
                Ok(batch.epoch)
            }
            Ok(Ok(Answer::Got(got))) => {
                let value = got.value.as_deref().map_or(Ok(0), parse_value);
                let mut history = recorder.lock();
                match value {
                    Ok(value) => history.kv_ops.push(KvOp {
                        client: self.client,
                        key: 0,
                        put: false,
                        value,
                        epoch: got.epoch,
                        sent,
                        received,
                    }),
                    Err(message) => history.client_errors.push(ClientError {
                        client: self.client,
                        at: received,
                        message,
                    }),
                }
                Ok(got.epoch)
            }
            Ok(Err(status)) => Err(Refusal::Refused(status.code())),
            Err(_) => Err(Refusal::Silent),
        }
    }
}

/// Why a probe got no answer.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The node said no.
    Refused(tonic::Code),
    /// The node did not answer within [`PROBE_WITHIN`].
    Silent,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Refused(code) => write!(f, "refused ({code:?})"),
            Refusal::Silent => write!(f, "did not answer within {} s", PROBE_WITHIN.as_secs()),
        }
    }
}

/// What a probe heard back.
enum Answer {
    Batch(standin::service::grpc::proto::AllocateResponse),
    Got(standin::service::grpc::proto::GetResponse),
}

/// The etcd-relative name of register key `key`.
fn key_name(key: usize) -> String {
    format!("k{key}")
}

/// A register value as the campaign writes them: decimal ASCII.
fn parse_value(raw: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("the register holds {raw:?}, which no client wrote"))
}

/// Polls one node's `Coordination.Status` until aborted, recording each
/// answer as one sample per role.
pub(super) async fn sample(node: usize, channel: Channel, recorder: Recorder) {
    let mut client = CoordinationClient::new(channel);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let answer = tokio::time::timeout(STATUS_WITHIN, client.status(StatusRequest {})).await;
        let received = Instant::now();
        // No answer (dead, frozen, starting): nothing is known, nothing recorded.
        let Ok(Ok(answer)) = answer else { continue };
        let answer = answer.into_inner();
        let mut history = recorder.lock();
        for (index, name) in ROLES.iter().enumerate() {
            let Some(role) = answer.roles.iter().find(|r| r.role == *name) else {
                continue;
            };
            history.samples.push(Sample {
                role: index,
                node,
                server_id: answer.server_id,
                state: State::parse(&role.state),
                epoch: role.epoch,
                leader_epoch: role.leader.as_ref().map_or(0, |l| l.epoch),
                copy_loaded: role.metadata_copy.is_some(),
                sent,
                received,
            });
        }
    }
}

/// Allocates timestamps through the shared batching client until aborted,
/// recording every batch and every failure.
pub(super) async fn allocate(
    client: usize,
    tso: std::sync::Arc<TsoClient>,
    recorder: Recorder,
    seed: u64,
) {
    let (mut rng, mut tick) = paced(seed);
    loop {
        tick.tick().await;
        let count = rng.random_range(1..=64);
        let sent = Instant::now();
        let answer = tso.allocate(count, ALLOCATE_WITHIN).await;
        let received = Instant::now();
        match answer {
            Ok(batch) if batch.count == count => recorder.lock().batches.push(Batch {
                client,
                first: batch.first,
                count: batch.count,
                epoch: batch.epoch,
                sent,
                received,
            }),
            Ok(batch) => recorder.client_error(
                client,
                format!(
                    "asked for {count} timestamps, got {} from {} (epoch {})",
                    batch.count, batch.first, batch.epoch
                ),
            ),
            Err(error) => recorder.client_error(client, error.to_string()),
        }
    }
}

/// Reads and writes the register until aborted: puts the numbers 1, 2, 3...
/// to its own keys in turn, and between them gets any client's key.
/// Records every answer and every failure.
pub(super) async fn read_and_write(client: usize, config: Config, recorder: Recorder, seed: u64) {
    let kv = match KvClient::connect(&config).await {
        Ok(kv) => kv,
        Err(error) => return recorder.client_error(client, format!("connecting: {error}")),
    };
    let (mut rng, mut tick) = paced(seed);
    let mut written = 0u64;
    loop {
        tick.tick().await;
        let put = rng.random_bool(0.5);
        let (key, value) = if put {
            written += 1;
            let own = client * KEYS_PER_CLIENT + rng.random_range(0..KEYS_PER_CLIENT);
            (own, written)
        } else {
            (rng.random_range(0..CLIENTS * KEYS_PER_CLIENT), 0)
        };
        let sent = Instant::now();
        if put {
            let asked = PutAsked { key, value, sent };
            recorder.lock().puts_asked.push(asked);
        }
        let answer = if put {
            let bytes = value.to_string().into_bytes();
            kv.put(&key_name(key), bytes, ALLOCATE_WITHIN)
                .await
                .map(|answer| Ok((value, answer.epoch)))
        } else {
            kv.get(&key_name(key), ALLOCATE_WITHIN).await.map(|got| {
                let value = got.value.as_deref().map_or(Ok(0), parse_value)?;
                Ok((value, got.epoch))
            })
        };
        let received = Instant::now();
        match answer {
            Ok(Ok((value, epoch))) => recorder.lock().kv_ops.push(KvOp {
                client,
                key,
                put,
                value,
                epoch,
                sent,
                received,
            }),
            Ok(Err(message)) => recorder.client_error(client, message),
            // The overloading client's bursts fill the queue now and then.
            Err(error) if error.is_overload() => recorder.lock().refused_overloaded += 1,
            Err(error) => recorder.client_error(client, error.to_string()),
        }
    }
}

/// Overflows the register's queue until aborted: [`OVERLOAD_WORKERS`]
/// callers call at once every [`OVERLOAD_BURST_EVERY`], each putting 1, 2,
/// 3... to a key of its own or reading it back, through one client that
/// throttles itself as the leader refuses. Each caller checks its key's
/// reads: at least the last value acknowledged or read (nothing acknowledged
/// is lost, no read goes back), at most the last asked (nothing invented),
/// and never a value whose put was refused or kept (refusals are never
/// applied).
pub(super) async fn overload(config: Config, recorder: Recorder, seed: u64) {
    let kv = match KvClient::connect(&config).await {
        Ok(kv) => std::sync::Arc::new(kv),
        Err(error) => {
            return recorder
                .lock()
                .overload
                .violations
                .push(format!("connecting: {error}"));
        }
    };
    let start = tokio::time::Instant::now() + OVERLOAD_BURST_EVERY;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..OVERLOAD_WORKERS {
        let (kv, recorder) = (kv.clone(), recorder.clone());
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64));
        workers.spawn(async move {
            let mut tick = tokio::time::interval_at(start, OVERLOAD_BURST_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut key = OverloadedKey::new(format!("overload-{worker}"));
            loop {
                tick.tick().await;
                key.call(&kv, rng.random_bool(0.25), &recorder).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// One overloading caller's key, and what its reads may return.
struct OverloadedKey {
    name: String,
    /// The last value asked to be put.
    asked: u64,
    /// No read may return less: the last value acknowledged or read.
    floor: u64,
    /// Values whose put was refused or kept, above `floor`.
    refused: std::collections::BTreeSet<u64>,
}

impl OverloadedKey {
    fn new(name: String) -> Self {
        Self {
            name,
            asked: 0,
            floor: 0,
            refused: std::collections::BTreeSet::new(),
        }
    }

    /// Puts the next value, or reads the key, and checks what came back.
    async fn call(&mut self, kv: &KvClient, put: bool, recorder: &Recorder) {
        let answer = if put {
            self.asked += 1;
            let value = self.asked.to_string().into_bytes();
            kv.put(&self.name, value, OVERLOAD_WITHIN)
                .await
                .map(|_| None)
        } else {
            kv.get(&self.name, OVERLOAD_WITHIN)
                .await
                .map(|got| got.value.map(|raw| parse_value(&raw)))
        };
        let error_is_overload = answer.as_ref().is_err_and(CallError::is_overload);
        let mut history = recorder.lock();
        let tally = &mut history.overload;
        match answer {
            Ok(_) if put => {
                tally.acked += 1;
                self.acked();
            }
            Ok(Some(Err(message))) => tally.violations.push(format!("{}: {message}", self.name)),
            Ok(read) => {
                tally.reads += 1;
                if let Some(wrong) = self.read(read.map_or(0, |value| value.unwrap_or(0))) {
                    tally.violations.push(format!("{}: {wrong}", self.name));
                }
            }
            Err(CallError::Overloaded { .. }) => {
                tally.kept += 1;
                if put {
                    self.refused();
                }
            }
            Err(CallError::Refused { in_doubt, .. }) if error_is_overload => {
                tally.refused += 1;
                if put && !in_doubt {
                    self.refused();
                }
            }
            Err(_) => tally.unknown += 1,
        }
    }

    /// The last put was acknowledged.
    fn acked(&mut self) {
        self.raise_floor(self.asked);
    }

    /// The last put is known never applied.
    fn refused(&mut self) {
        self.refused.insert(self.asked);
    }

    /// What is wrong with reading `read` now, if anything.
    fn read(&mut self, read: u64) -> Option<String> {
        let wrong = if read < self.floor {
            Some(format!(
                "went back: read {read} after {} was acknowledged or read",
                self.floor
            ))
        } else if read > self.asked {
            Some(format!("read {read}, above the last asked {}", self.asked))
        } else if self.refused.contains(&read) {
            Some(format!("read {read}, whose put was refused or kept"))
        } else {
            None
        };
        self.raise_floor(read);
        wrong
    }

    fn raise_floor(&mut self, to: u64) {
        self.floor = self.floor.max(to);
        // A value at or below the floor can no longer be read without
        // going back, which is found as such.
        self.refused = self.refused.split_off(&(self.floor + 1));
    }
}

/// A client's random numbers from `seed`, and its [`CLIENT_PACE`] ticks:
/// a slow answer delays the next request rather than bunching them up.
fn paced(seed: u64) -> (StdRng, tokio::time::Interval) {
    let mut tick = tokio::time::interval(CLIENT_PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    (StdRng::seed_from_u64(seed), tick)
}

impl Recorder {
    /// Records that `client` failed just now.
    pub(super) fn client_error(&self, client: usize, message: String) {
        self.lock().client_errors.push(ClientError {
            client,
            at: Instant::now(),
            message,
        });
    }
}

impl Cluster {
    /// Waits until every client of both roles has had an answer since now;
    /// one that does not within [`CLIENTS_WITHIN`] is recorded as a stall.
    pub(super) async fn clients_progress(&self) {
        let since = Instant::now();
        loop {
            let behind: Vec<String> = {
                let history = self.recorder.lock();
                let tso = history.batches.iter().rev().take_while(|b| b.sent >= since);
                let kv = history.kv_ops.iter().rev().take_while(|o| o.sent >= since);
                let tso: Vec<usize> = tso.map(|b| b.client).collect();
                let kv: Vec<usize> = kv.map(|o| o.client).collect();
                (0..CLIENTS)
                    .flat_map(|client| {
                        let tso = (!tso.contains(&client)).then(|| format!("tso {client}"));
                        let kv = (!kv.contains(&client)).then(|| format!("kv {client}"));
                        tso.into_iter().chain(kv)
                    })
                    .collect()
            };
            if behind.is_empty() {
                return;
            }
            if since.elapsed() > CLIENTS_WITHIN {
                let stall = format!(
                    "at the end, clients [{}] had no answer within {} s",
                    behind.join(", "),
                    CLIENTS_WITHIN.as_secs()
                );
                println!("campaign: {stall}");
                self.recorder.lock().stalls.push(stall);
                return;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OverloadedKey;

    #[test]
    fn an_overloaded_key_finds_lost_invented_and_refused_values() {
        let mut key = OverloadedKey::new("k".into());
        key.asked = 1;
        key.acked();
        key.asked = 2;
        key.refused();
        key.asked = 3;
        // 3 is in doubt: it may or may not be read.
        assert_eq!(key.read(1), None);
        assert!(key.read(2).expect("refused").contains("refused"));
        assert_eq!(key.read(3), None);
        assert!(key.read(1).expect("back").contains("went back"));
        assert!(
            key.read(4)
                .expect("invented")
                .contains("above the last asked")
        );
        assert!(
            key.refused.is_empty(),
            "refusals below the floor are dropped"
        );
    }
}
