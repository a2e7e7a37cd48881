//! `tso` and `kv`: the built-in roles used through the clients that follow the leader across failovers.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use standin::Config;
use standin::service::client::{KvClient, TsoClient};

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
    },
}

/// How `tso` runs.
pub struct TsoArgs {
    pub count: u32,
    pub repeat: bool,
    pub duration: Option<Duration>,
    pub deadline: Duration,
}

/// `standin tso`: one allocation, or allocations in a loop that report each failover ridden through.
pub async fn tso(
    config: &Config,
    args: TsoArgs,
    format: Format,
    timeout: Duration,
) -> Result<(), Failure> {
    let connect = async { Ok(TsoClient::connect(config).await?) };
    let client = within(timeout, config, connect).await?;
    let TsoArgs {
        count,
        repeat,
        duration,
        deadline,
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
    let (mut allocations, mut failovers, mut violations) = (0u64, 0u64, 0u64);
    let mut max_gap = Duration::ZERO;
    let mut last: Option<(u64, i64, Instant)> = None;
    let now = || (SystemTime::now(), super::output::rfc3339(SystemTime::now()));
    loop {
        let batch = tokio::select! {
            _ = &mut stop => break,
            batch = client.allocate(count, deadline) => batch?,
        };
        let arrived = Instant::now();
        let batch_last = batch.first + u64::from(batch.count) - 1;
        if last.is_none() {
            let (at, time) = now();
            let text = format!("first batch: first={} epoch {}", batch.first, batch.epoch);
            format.print_event(
                at,
                &LoopEvent::FirstBatch {
                    time,
                    first: batch.first,
                    epoch: batch.epoch,
                },
                &text,
            )?;
        }
        if let Some((previous, epoch, at)) = last {
            if batch.first <= previous {
                violations += 1;
                let (when, time) = now();
                let text = format!(
                    "VIOLATION: timestamp {} after {previous}: not increasing",
                    batch.first
                );
                format.print_event(
                    when,
                    &LoopEvent::Violation {
                        time,
                        timestamp: batch.first,
                        after: previous,
                    },
                    &text,
                )?;
            }
            if batch.epoch != epoch {
                failovers += 1;
                let gap = arrived - at;
                max_gap = max_gap.max(gap);
                let gap_ms = gap.as_secs_f64() * 1000.0;
                let increasing = batch.first > previous;
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
                format.print_event(when, &event, &text)?;
            }
        }
        allocations += 1;
        last = Some((batch_last, batch.epoch, arrived));
    }
    let max_gap_ms = max_gap.as_secs_f64() * 1000.0;
    let summary = LoopEvent::Summary {
        allocations,
        failovers,
        max_gap_ms,
        violations,
    };
    if format.is_machine() {
        format.print_event(SystemTime::now(), &summary, "")?;
    } else {
        println!(
            "tso: allocations={allocations} failovers={failovers} max_gap_ms={max_gap_ms:.1} violations={violations}"
        );
    }
    if violations > 0 {
        return Err(anyhow::anyhow!("{violations} timestamps did not increase").into());
    }
    Ok(())
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
