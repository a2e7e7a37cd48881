//! What the campaign watches and drives: each node's state sampled, clients allocating timestamps, and probes of a frozen leader.

use std::time::Instant;

use rand::Rng;
use rand::rngs::StdRng;
use standin::Config;
use standin::service::client::{TsoClient, with_epoch};
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::tso_client::TsoClient as TsoStub;
use standin::service::grpc::proto::{AllocateRequest, StatusRequest};
use tonic::transport::Channel;

use super::*;
use crate::history::{Batch, ClientError, Recorder, Sample, State};

/// Two requests, once a successor of a frozen leader serves: one to the
/// successor, then one to the frozen leader with the epoch it led, as a
/// client that has not heard of the successor would send. The deposed
/// leader must refuse the second when it resumes; if it answers, its
/// timestamps come after the successor's in real time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    pub(super) node: usize,
    pub(super) epoch: i64,
    /// The client number its batches are recorded under.
    pub(super) client: usize,
}

impl Probe {
    /// Sends both requests (the second is answered once the node resumes),
    /// records the batches it gets, and says what happened.
    pub(super) async fn send(
        self,
        (successor, successor_epoch): (Channel, i64),
        frozen: Channel,
        recorder: Recorder,
    ) -> String {
        let first = match self.allocate(successor, successor_epoch, &recorder).await {
            Ok(batch) => format!("{} (epoch {})", batch.first, batch.epoch),
            Err(refused) => refused,
        };
        let second = match self.allocate(frozen, self.epoch, &recorder).await {
            Ok(batch) => format!(
                "ANSWERED after resuming with {} (epoch {})",
                batch.first, batch.epoch
            ),
            Err(refused) => refused,
        };
        format!(
            "probe: the successor answered {first}, then the frozen leader asked with epoch {} {second}",
            self.epoch
        )
    }

    pub(super) async fn allocate(
        &self,
        channel: Channel,
        epoch: i64,
        recorder: &Recorder,
    ) -> Result<Batch, String> {
        let sent = Instant::now();
        let request = with_epoch(AllocateRequest { count: 1 }, epoch);
        let answer =
            tokio::time::timeout(PROBE_WITHIN, TsoStub::new(channel).allocate(request)).await;
        let received = Instant::now();
        match answer {
            Ok(Ok(batch)) => {
                let batch = batch.into_inner();
                let batch = Batch {
                    client: self.client,
                    first: batch.first,
                    count: batch.count,
                    epoch: batch.epoch,
                    sent,
                    received,
                };
                recorder.lock().batches.push(batch);
                Ok(batch)
            }
            Ok(Err(status)) => Err(format!("refused ({:?})", status.code())),
            Err(_) => Err(format!(
                "did not answer within {} s",
                PROBE_WITHIN.as_secs()
            )),
        }
    }
}

/// Polls one node's `Coordination.Status` until aborted, recording each answer.
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
        let Some(role) = answer.roles.iter().find(|r| r.role == ROLE) else {
            continue;
        };
        recorder.lock().samples.push(Sample {
            node,
            server_id: answer.server_id,
            state: State::parse(&role.state),
            epoch: role.epoch,
            leader_epoch: role.leader.as_ref().map_or(0, |l| l.epoch),
            sent,
            received,
        });
    }
}

/// Allocates timestamps until aborted, recording every batch and every failure.
pub(super) async fn allocate(client: usize, config: Config, recorder: Recorder, seed: u64) {
    let tso = match TsoClient::connect(&config).await {
        Ok(tso) => tso,
        Err(error) => {
            recorder.lock().client_errors.push(ClientError {
                client,
                at: Instant::now(),
                message: format!("connecting: {error}"),
            });
            return;
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(CLIENT_PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let count = rng.random_range(1..=64);
        let sent = Instant::now();
        let answer = tso.allocate(count, ALLOCATE_WITHIN).await;
        let received = Instant::now();
        let mut history = recorder.lock();
        match answer {
            Ok(batch) if batch.count == count => history.batches.push(Batch {
                client,
                first: batch.first,
                count: batch.count,
                epoch: batch.epoch,
                sent,
                received,
            }),
            Ok(batch) => history.client_errors.push(ClientError {
                client,
                at: received,
                message: format!(
                    "asked for {count} timestamps, got {} from {} (epoch {})",
                    batch.count, batch.first, batch.epoch
                ),
            }),
            Err(error) => history.client_errors.push(ClientError {
                client,
                at: received,
                message: error.to_string(),
            }),
        }
    }
}

impl Cluster {
    /// Waits until every client has allocated since now; a client that does
    /// not within [`CLIENTS_WITHIN`] is recorded as a stall.
    pub(super) async fn clients_progress(&self) {
        let since = Instant::now();
        loop {
            let behind: Vec<usize> = {
                let history = self.recorder.lock();
                (0..CLIENTS)
                    .filter(|client| {
                        !history
                            .batches
                            .iter()
                            .rev()
                            .take_while(|b| b.sent >= since)
                            .any(|b| b.client == *client)
                    })
                    .collect()
            };
            if behind.is_empty() {
                return;
            }
            if since.elapsed() > CLIENTS_WITHIN {
                let stall = format!(
                    "at the end, clients {behind:?} allocated nothing within {} s",
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
