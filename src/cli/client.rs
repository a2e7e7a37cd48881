//! `tso` and `kv`: the built-in roles used through the clients that follow the leader across failovers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use standin::Config;
use standin::service::client::{KvClient, TsoClient, TsoClientOptions};
use standin::service::grpc::proto::AllocateResponse;

use super::output::Format;
use super::{Failure, stop_signal, within};

/// `standin kv put|get`.
#[derive(clap::Subcommand)]
pub enum KvOp {
    /// Sets KEY to VALUE (UTF-8); prints the epoch that persisted it.
    Put { key: String, value: String },
    /// Prints KEY's value (lossily as UTF-8) and the epoch that answered.
    Get { key: String },
}

#[derive(Serialize)]
struct Batch {
    first: u64,
    count: u32,
    epoch: i64,
}

/// An event of `tso --loop`, one JSON line each.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum LoopEvent {
    FirstBatch {
        time: String,
        first: u64,
        epoch: i64,
    },
    Failover {
        time: String,
        from_epoch: i64,
        to_epoch: i64,
        gap_ms: f64,
        increasing: bool,
    },
    Violation {
        time: String,
        timestamp: u64,
        after: u64,
    },
    Summary {
        allocations: u64,
        failovers: u64,
        max_gap_ms: f64,
        violations: u64,
        callers: usize,
        streams: usize,
        timestamps_per_s: f64,
        p50_ms: f64,
        p99_ms: f64,
    },
}

/// How `tso` runs.
pub struct TsoArgs {
    pub count: u32,
    pub repeat: bool,
    pub duration: Option<Duration>,
    pub deadline: Duration,
    /// With `repeat`: tasks allocating at once through the one client, which
    /// batches what they ask at the same time.
    pub callers: usize,
    /// The client's streams to the leader.
    pub streams: usize,
}

/// `standin tso`: one allocation, or allocations in a loop that report each failover ridden through.
pub async fn tso(
    config: &Config,
    args: TsoArgs,
    format: Format,
    timeout: Duration,
) -> Result<(), Failure> {
    let options = TsoClientOptions {
        streams: args.streams.max(1),
        ..TsoClientOptions::from_config(config)
    };
    let connect = async { Ok(TsoClient::connect_with(config, options).await?) };
    let client = Arc::new(within(timeout, config, connect).await?);
    let TsoArgs {
        count,
        repeat,
        duration,
        deadline,
        callers,
        streams,
    } = args;
    if !repeat {
        let batch = within(timeout.max(deadline), config, async {
            Ok(client.allocate(count, deadline).await?)
        })
        .await?;
        let batch = Batch {
            first: batch.first,
            count: batch.count,
            epoch: batch.epoch,
        };
        if !format.print_data(&batch)? {
            println!(
                "first={} count={} epoch={}",
                batch.first, batch.count, batch.epoch
            );
        }
        return Ok(());
    }
    let stop = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => stop_signal().await,
        }
    };
    tokio::pin!(stop);
    let watch = Arc::new(Mutex::new(LoopWatch::new(format)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers.max(1) {
        let (client, watch) = (client.clone(), watch.clone());
        tasks.spawn(async move {
            // This caller's last timestamp: each caller's must increase.
            let mut previous = None;
            loop {
                let asked = Instant::now();
                let batch = client.allocate(count, deadline).await?;
                let mut watch = watch.lock().unwrap_or_else(|p| p.into_inner());
                watch.arrived(asked, &batch, &mut previous)?;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        });
    }
    tokio::select! {
        _ = &mut stop => {}
        Some(ended) = tasks.join_next() => {
            ended??;
        }
    }
    tasks.abort_all();
    let elapsed = started.elapsed();
    let mut watch = watch.lock().unwrap_or_else(|p| p.into_inner());
    let summary = watch.summary(callers.max(1), streams.max(1), elapsed, count);
    if format.is_machine() {
        format.print_event(SystemTime::now(), &summary, "")?;
    } else if let LoopEvent::Summary {
        allocations,
        failovers,
        max_gap_ms,
        violations,
        callers,
        streams,
        timestamps_per_s,
        p50_ms,
        p99_ms,
    } = &summary
    {
        println!(
            "tso: allocations={allocations} failovers={failovers} max_gap_ms={max_gap_ms:.1} violations={violations} callers={callers} streams={streams} timestamps_per_s={timestamps_per_s:.0} p50_ms={p50_ms:.3} p99_ms={p99_ms:.3}"
        );
    }
    if watch.violations > 0 {
        return Err(anyhow::anyhow!("{} timestamps did not increase", watch.violations).into());
    }
    Ok(())
}

/// Calls' latencies kept for the summary's quantiles, at most this many (a
/// uniform sample of all of them).
const LATENCY_SAMPLES: usize = 100_000;

/// What `tso --loop` has seen, over all its callers.
struct LoopWatch {
    format: Format,
    allocations: u64,
    failovers: u64,
    violations: u64,
    max_gap: Duration,
    /// The newest epoch answered, and when its last batch arrived.
    last: Option<(i64, Instant)>,
    /// Latencies in microseconds, a reservoir sample.
    latencies: Vec<u32>,
    /// A xorshift state choosing which latencies the reservoir keeps.
    random: u64,
}

impl LoopWatch {
    fn new(format: Format) -> Self {
        Self {
            format,
            allocations: 0,
            failovers: 0,
            violations: 0,
            max_gap: Duration::ZERO,
            last: None,
            latencies: Vec::new(),
            random: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// A batch asked at `asked` arrived now for a caller whose last
    /// timestamp was `previous`: reports the first batch, a timestamp that
    /// did not increase, and a newer epoch (a failover ridden through).
    fn arrived(
        &mut self,
        asked: Instant,
        batch: &AllocateResponse,
        previous: &mut Option<u64>,
    ) -> anyhow::Result<()> {
        let arrived = Instant::now();
        self.sample(arrived - asked);
        let now = || (SystemTime::now(), super::output::rfc3339(SystemTime::now()));
        if self.last.is_none() {
            let (at, time) = now();
            let text = format!("first batch: first={} epoch {}", batch.first, batch.epoch);
            let event = LoopEvent::FirstBatch {
                time,
                first: batch.first,
                epoch: batch.epoch,
            };
            self.format.print_event(at, &event, &text)?;
        }
        let increasing = previous.is_none_or(|previous| batch.first > previous);
        if let Some(previous) = *previous
            && !increasing
        {
            self.violations += 1;
            let (at, time) = now();
            let text = format!(
                "VIOLATION: timestamp {} after {previous}: not increasing",
                batch.first
            );
            let event = LoopEvent::Violation {
                time,
                timestamp: batch.first,
                after: previous,
            };
            self.format.print_event(at, &event, &text)?;
        }
        match self.last {
            Some((epoch, at)) if batch.epoch > epoch => {
                self.failovers += 1;
                let gap = arrived - at;
                self.max_gap = self.max_gap.max(gap);
                let gap_ms = gap.as_secs_f64() * 1000.0;
                let (when, time) = now();
                let text = format!(
                    "failover: epoch {epoch} -> {}, gap {gap_ms:.1} ms, timestamps still increasing: {increasing}",
                    batch.epoch
                );
                let event = LoopEvent::Failover {
                    time,
                    from_epoch: epoch,
                    to_epoch: batch.epoch,
                    gap_ms,
                    increasing,
                };
                self.format.print_event(when, &event, &text)?;
                self.last = Some((batch.epoch, arrived));
            }
            // A batch of an older term, answered before it ended, arriving late.
            Some((epoch, _)) if batch.epoch < epoch => {}
            _ => self.last = Some((batch.epoch, arrived)),
        }
        self.allocations += 1;
        *previous = Some(batch.first + u64::from(batch.count) - 1);
        Ok(())
    }

    fn sample(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if self.latencies.len() < LATENCY_SAMPLES {
            return self.latencies.push(micros);
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let slot = self.random % (self.allocations + 1);
        if let Some(kept) = self.latencies.get_mut(slot as usize) {
            *kept = micros;
        }
    }

    fn summary(
        &mut self,
        callers: usize,
        streams: usize,
        elapsed: Duration,
        count: u32,
    ) -> LoopEvent {
        self.latencies.sort_unstable();
        let quantile = |q: f64| {
            let rank = ((self.latencies.len() as f64 * q).ceil() as usize).max(1);
            self.latencies
                .get(rank - 1)
                .map_or(0.0, |&micros| f64::from(micros) / 1000.0)
        };
        LoopEvent::Summary {
            allocations: self.allocations,
            failovers: self.failovers,
            max_gap_ms: self.max_gap.as_secs_f64() * 1000.0,
            violations: self.violations,
            callers,
            streams,
            timestamps_per_s: (self.allocations * u64::from(count)) as f64
                / elapsed.as_secs_f64().max(f64::EPSILON),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        }
    }
}

#[derive(Serialize)]
struct KvAnswer {
    key: String,
    /// Absent for a put, and for a key that is not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    epoch: i64,
}

/// `standin kv put|get`.
pub async fn kv(
    config: &Config,
    op: KvOp,
    deadline: Duration,
    format: Format,
    timeout: Duration,
) -> Result<(), Failure> {
    let connect = async { Ok(KvClient::connect(config).await?) };
    let client = within(timeout, config, connect).await?;
    let bound = timeout.max(deadline);
    match op {
        KvOp::Put { key, value } => {
            let put = within(bound, config, async {
                Ok(client.put(&key, value.into_bytes(), deadline).await?)
            })
            .await?;
            let answer = KvAnswer {
                key,
                value: None,
                epoch: put.epoch,
            };
            if !format.print_data(&answer)? {
                println!("put {} epoch={}", answer.key, answer.epoch);
            }
        }
        KvOp::Get { key } => {
            let got = within(bound, config, async {
                Ok(client.get(&key, deadline).await?)
            })
            .await?;
            let value = got.value.map(|v| String::from_utf8_lossy(&v).into_owned());
            let answer = KvAnswer {
                key,
                value,
                epoch: got.epoch,
            };
            if format.print_data(&answer)? {
                return Ok(());
            }
            match &answer.value {
                Some(value) => println!("{}={value} epoch={}", answer.key, answer.epoch),
                None => println!("{} is not set (epoch={})", answer.key, answer.epoch),
            }
        }
    }
    Ok(())
}
