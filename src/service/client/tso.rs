//! The timestamp oracle's client: every caller waiting is batched into one request on a stream to the leader (PD's way), and each gets its own slice of the range.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{ClientError, RoleClient, with_epoch};
use crate::config::Config;
use crate::etcd::recipe::Leader;
use crate::service::connect::NodeChannel;
use crate::service::grpc::proto::tso_client::TsoClient as TsoStub;
use crate::service::grpc::proto::{AllocateRequest, AllocateResponse};
use crate::task::OwnedTask;

/// The most callers one batch carries, as PD's client caps its batches.
const MAX_CALLERS: usize = 10_000;

/// How a [`TsoClient`] batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsoClientOptions {
    /// Streams to the leader, each carrying one batch at a time: more than
    /// one lets a batch be sent while another is answered. At least 1.
    pub streams: usize,
    /// The most timestamps one batch asks for, and so one call: at most
    /// the servers' `tso.maxCount`.
    pub max_batch: u32,
}

impl TsoClientOptions {
    /// One stream, batches up to the config's `tso.maxCount`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            streams: 1,
            max_batch: config.tso.max_count,
        }
    }
}

/// What a [`TsoClient`] has sent and been answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TsoClientStats {
    /// Batches answered: requests on the streams.
    pub batches: u64,
    /// Calls answered from them.
    pub calls: u64,
}

/// A client of the built-in timestamp oracle (`tso` role). Calls to
/// [`allocate`](Self::allocate) from any number of tasks are batched:
/// each stream takes every caller waiting into one request to the leader,
/// and hands each its own consecutive timestamps from the one range
/// answered, in the order they called. A caller's next call is answered
/// above its last, across failovers too: a batch in flight when the leader
/// changes is asked again of the new leader, and never answered from two
/// terms.
pub struct TsoClient {
    role: Arc<RoleClient>,
    inbox: mpsc::UnboundedSender<Waiting>,
    max_batch: u32,
    counts: Arc<Counts>,
    _streams: Vec<OwnedTask>,
}

#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    calls: AtomicU64,
}

/// A call waiting for its timestamps.
struct Waiting {
    count: u32,
    reply: oneshot::Sender<Result<AllocateResponse, ClientError>>,
    deadline: Instant,
    /// What the caller gave as its deadline, for the error past it.
    timeout: Duration,
}

/// Where callers wait for a stream to take them.
struct Inbox {
    waiting: mpsc::UnboundedReceiver<Waiting>,
    /// A caller that did not fit the last batch: first in the next.
    carried: Option<Waiting>,
}

impl Inbox {
    /// Waits for a caller, then takes every caller waiting whose counts
    /// fit in `max` together, in the order they called; `None` once the
    /// client is gone.
    async fn next_batch(&mut self, max: u32) -> Option<Vec<Waiting>> {
        let first = match self.carried.take() {
            Some(first) => first,
            None => self.waiting.recv().await?,
        };
        let mut total = first.count;
        let mut batch = vec![first];
        while batch.len() < MAX_CALLERS {
            let Ok(next) = self.waiting.try_recv() else {
                break;
            };
            if total + next.count > max {
                self.carried = Some(next);
                break;
            }
            total += next.count;
            batch.push(next);
        }
        Some(batch)
    }
}

/// A stream to the leader of one epoch.
struct OpenStream {
    epoch: i64,
    requests: mpsc::Sender<AllocateRequest>,
    answers: Streaming<AllocateResponse>,
}

impl OpenStream {
    async fn open(channel: NodeChannel, epoch: i64) -> Result<Self, Status> {
        let (requests, outgoing) = mpsc::channel(1);
        let answers = TsoStub::new(channel)
            .allocate_stream(with_epoch(ReceiverStream::new(outgoing), epoch))
            .await?
            .into_inner();
        Ok(Self {
            epoch,
            requests,
            answers,
        })
    }

    /// Asks for `count` and waits for the answer.
    async fn ask(&mut self, count: u32) -> Result<AllocateResponse, Status> {
        self.requests
            .send(AllocateRequest { count })
            .await
            .map_err(|_| Status::unavailable("the stream to the leader closed"))?;
        match self.answers.message().await? {
            Some(answer) if answer.count == count && answer.epoch == self.epoch => Ok(answer),
            Some(answer) => Err(Status::internal(format!(
                "asked epoch {} for {count} timestamps, answered {} by epoch {}",
                self.epoch, answer.count, answer.epoch
            ))),
            None => Err(Status::unavailable("the leader ended the stream")),
        }
    }
}

/// Asks the leader of `epoch` for `count` on the stream kept in `kept`,
/// opening one when there is none for that epoch. The stream is taken
/// out while it is asked, and put back only once answered: a request
/// abandoned half way (a leader change) leaves its answer on a stream
/// nobody reads again.
async fn ask_leader(
    kept: &Mutex<Option<OpenStream>>,
    channel: NodeChannel,
    epoch: i64,
    count: u32,
) -> Result<AllocateResponse, Status> {
    let held = kept.lock().await.take();
    let mut stream = match held {
        Some(stream) if stream.epoch == epoch => stream,
        _ => OpenStream::open(channel, epoch).await?,
    };
    let answer = stream.ask(count).await?;
    *kept.lock().await = Some(stream);
    Ok(answer)
}

/// Hands each caller of `batch` its slice of `answer`, in order.
fn hand_out(batch: Vec<Waiting>, answer: &AllocateResponse) {
    let mut first = answer.first;
    for waiting in batch {
        let slice = AllocateResponse {
            first,
            count: waiting.count,
            epoch: answer.epoch,
        };
        first += u64::from(waiting.count);
        let _ = waiting.reply.send(Ok(slice));
    }
}

/// The failure of a batch, as each of its callers gets it.
fn each_callers(error: &ClientError) -> ClientError {
    match error {
        ClientError::DeadlineExceeded {
            role,
            deadline,
            last,
        } => ClientError::DeadlineExceeded {
            role: role.clone(),
            deadline: *deadline,
            last: last.clone(),
        },
        ClientError::Refused {
            role,
            status,
            in_doubt,
        } => ClientError::Refused {
            role: role.clone(),
            status: status.clone(),
            in_doubt: *in_doubt,
        },
        other => ClientError::DeadlineExceeded {
            role: "tso".to_owned(),
            deadline: Duration::ZERO,
            last: other.to_string(),
        },
    }
}

/// Answers the callers of `batch` whose deadline has passed (with `last`,
/// why they were not answered), drops those who stopped waiting, and
/// keeps the rest.
fn still_waiting(batch: Vec<Waiting>, now: Instant, last: &str) -> Vec<Waiting> {
    let mut kept = Vec::with_capacity(batch.len());
    for waiting in batch {
        if waiting.reply.is_closed() {
            continue;
        }
        if waiting.deadline <= now {
            let _ = waiting.reply.send(Err(ClientError::DeadlineExceeded {
                role: "tso".to_owned(),
                deadline: waiting.timeout,
                last: last.to_owned(),
            }));
            continue;
        }
        kept.push(waiting);
    }
    kept
}

/// One stream's loop: takes a batch and asks the leader until it answers,
/// each try bounded by the earliest deadline of the callers still
/// waiting (those past theirs are answered, the rest asked again), then
/// hands the answer out. Callers' deadlines are kept here, not with a
/// timer per call.
async fn dispatch(
    role: Arc<RoleClient>,
    inbox: Arc<Mutex<Inbox>>,
    max_batch: u32,
    counts: Arc<Counts>,
) {
    let kept = Arc::new(Mutex::new(None));
    loop {
        let Some(mut batch) = inbox.lock().await.next_batch(max_batch).await else {
            return;
        };
        let mut last = "the leader did not answer in time".to_owned();
        loop {
            let now = Instant::now();
            batch = still_waiting(batch, now, &last);
            let Some(until) = batch.iter().map(|waiting| waiting.deadline).min() else {
                break;
            };
            let count = batch.iter().map(|waiting| waiting.count).sum();
            let answer = role
                .call(until - now, |channel, epoch| {
                    let kept = kept.clone();
                    async move { ask_leader(&kept, channel, epoch, count).await }
                })
                .await;
            match answer {
                Ok(answer) => {
                    counts.batches.fetch_add(1, Ordering::Relaxed);
                    counts
                        .calls
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    hand_out(batch, &answer);
                    break;
                }
                // The earliest caller's deadline passed: answer it, ask again for the rest.
                Err(ClientError::DeadlineExceeded { last: why, .. }) => last = why,
                Err(error) => {
                    for waiting in batch {
                        let _ = waiting.reply.send(Err(each_callers(&error)));
                    }
                    break;
                }
            }
        }
    }
}

impl TsoClient {
    /// Connects to etcd and follows the `tso` role, batching on one stream
    /// up to the config's `tso.maxCount` a batch.
    pub async fn connect(config: &Config) -> Result<Self, ClientError> {
        Self::connect_with(config, TsoClientOptions::from_config(config)).await
    }

    /// Connects to etcd and follows the `tso` role, batching as `options` say.
    pub async fn connect_with(
        config: &Config,
        options: TsoClientOptions,
    ) -> Result<Self, ClientError> {
        let role = Arc::new(RoleClient::connect(config, "tso").await?);
        let (inbox, waiting) = mpsc::unbounded_channel();
        let shared_inbox = Arc::new(Mutex::new(Inbox {
            waiting,
            carried: None,
        }));
        let counts = Arc::new(Counts::default());
        let max_batch = options.max_batch.max(1);
        let streams = (0..options.streams.max(1))
            .map(|_| {
                OwnedTask::spawn(dispatch(
                    role.clone(),
                    shared_inbox.clone(),
                    max_batch,
                    counts.clone(),
                ))
            })
            .collect();
        Ok(Self {
            role,
            inbox,
            max_batch,
            counts,
            _streams: streams,
        })
    }

    /// Allocates `count` consecutive timestamps from the active oracle,
    /// batched with every other call waiting, riding through failovers
    /// until `deadline`.
    pub async fn allocate(
        &self,
        count: u32,
        deadline: Duration,
    ) -> Result<AllocateResponse, ClientError> {
        if count == 0 || count > self.max_batch {
            return Err(ClientError::Refused {
                role: "tso".to_owned(),
                status: Status::invalid_argument(format!(
                    "count must be 1 to {} (the client's batch limit, tso.maxCount), got {count}",
                    self.max_batch
                )),
                in_doubt: false,
            });
        }
        let gone = |last: &str| ClientError::DeadlineExceeded {
            role: "tso".to_owned(),
            deadline,
            last: last.to_owned(),
        };
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            count,
            reply,
            deadline: Instant::now() + deadline,
            timeout: deadline,
        };
        self.inbox
            .send(waiting)
            .map_err(|_| gone("the client's streams stopped"))?;
        // The streams answer every caller by its deadline.
        answer
            .await
            .unwrap_or_else(|_| Err(gone("the client's streams stopped")))
    }

    /// What this client has sent and been answered so far.
    pub fn stats(&self) -> TsoClientStats {
        TsoClientStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            calls: self.counts.calls.load(Ordering::Relaxed),
        }
    }

    /// The leader as last seen in etcd.
    pub fn leader(&self) -> Option<Leader> {
        self.role.leader()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(
        count: u32,
    ) -> (
        Waiting,
        oneshot::Receiver<Result<AllocateResponse, ClientError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            count,
            reply,
            deadline: Instant::now(),
            timeout: Duration::ZERO,
        };
        (waiting, answer)
    }

    #[tokio::test]
    async fn a_batch_takes_every_caller_waiting_that_fits_and_carries_the_next() {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut inbox = Inbox {
            waiting: receiver,
            carried: None,
        };
        let mut answers = Vec::new();
        for count in [3, 4, 5, 1] {
            let (call, answer) = waiting(count);
            sender.send(call).unwrap();
            answers.push(answer);
        }
        let counts = |batch: &[Waiting]| batch.iter().map(|w| w.count).collect::<Vec<_>>();
        let first = inbox.next_batch(10).await.unwrap();
        assert_eq!(counts(&first), [3, 4]);
        let second = inbox.next_batch(10).await.unwrap();
        assert_eq!(counts(&second), [5, 1]);

        // Slices in calling order, each its own count, all of one answer.
        hand_out(
            first,
            &AllocateResponse {
                first: 100,
                count: 7,
                epoch: 9,
            },
        );
        let slice = |answer: &mut oneshot::Receiver<_>| match answer.try_recv() {
            Ok(Ok(AllocateResponse {
                first,
                count,
                epoch,
            })) => (first, count, epoch),
            other => panic!("{other:?}"),
        };
        assert_eq!(slice(&mut answers[0]), (100, 3, 9));
        assert_eq!(slice(&mut answers[1]), (103, 4, 9));
        drop(sender);
        assert!(inbox.next_batch(10).await.is_none());
    }
}
