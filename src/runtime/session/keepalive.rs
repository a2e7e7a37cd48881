//! The session's lease in etcd: granted, then kept alive on a fixed beat (revoked through [`crate::etcd::revoke`]).

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::Client;

use crate::runtime::clock::LeaseInstant;
use crate::telemetry;

/// What the keepalive loop reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// A keepalive sent at `sent_at` was answered: etcd restarted the TTL no
    /// earlier than that instant.
    Renewed {
        /// When the answered keepalive was sent.
        sent_at: LeaseInstant,
    },
    /// The keepalive stream opened again after failing, its opening sent
    /// at `sent_at`: etcd answers again (and renewed the lease once).
    Restored {
        /// When the opening was sent.
        sent_at: LeaseInstant,
    },
    /// etcd says the lease no longer exists.
    Lost,
}

/// The keepalive beat and how long one answer may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    /// Time between keepalives, sent on this beat whether or not the
    /// previous ones were answered.
    pub interval: Duration,
    /// How long the oldest unanswered keepalive may wait before the stream
    /// counts as broken and is opened again.
    pub timeout: Duration,
}

/// Grants a lease of `ttl_secs` within `bound`.
pub(crate) async fn grant(client: &Client, ttl_secs: i64, bound: Duration) -> Result<i64, String> {
    match tokio::time::timeout(bound, client.lease_client().grant(ttl_secs, None)).await {
        Ok(Ok(granted)) => Ok(granted.id()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {bound:?}")),
    }
}

/// Keeps `lease` alive on `beat`, reporting each answered keepalive with the
/// time it was sent (where the renew deadline counts from), and a lease etcd
/// no longer knows. Keepalives are sent on the beat even while earlier ones
/// wait for their answers, so a slow etcd delays renewals by its latency
/// only, never by a whole interval more; answers come back in order on the
/// stream, so each is matched with its own send time. A broken or silent
/// stream is opened again at once; the election's renew deadline decides
/// when to give up. Returns once the lease is lost or `report` refuses.
pub(crate) async fn keep_alive(
    client: Client,
    lease: i64,
    beat: Beat,
    report: impl Fn(Renewal) -> bool,
) {
    let mut lease_client = client.lease_client();
    let mut failed = false;
    loop {
        let sent_at = LeaseInstant::now();
        let opened = tokio::time::timeout(beat.timeout, lease_client.keep_alive(lease)).await;
        let (mut keeper, mut answers) = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(reason))) => {
                tracing::warn!(lease, "etcd refuses to keep the lease alive: {reason}");
                report(Renewal::Lost);
                return;
            }
            Ok(Err(error)) => {
                keepalive_failed(lease, &error.to_string());
                failed = true;
                tokio::time::sleep(beat.interval / 4).await;
                continue;
            }
            Err(_) => {
                keepalive_failed(lease, "timed out opening the keepalive stream");
                failed = true;
                continue;
            }
        };
        // Opening the stream renewed the lease once already.
        let opened = if std::mem::take(&mut failed) {
            Renewal::Restored { sent_at }
        } else {
            Renewal::Renewed { sent_at }
        };
        if !report(opened) {
            return;
        }
        let mut unanswered: VecDeque<LeaseInstant> = VecDeque::new();
        let mut next_send = tokio::time::Instant::now() + beat.interval;
        let broken = loop {
            let give_up = unanswered
                .front()
                .map(|sent| tokio::time::Instant::from_std((*sent + beat.timeout).to_instant()));
            tokio::select! {
                _ = tokio::time::sleep_until(next_send) => {
                    next_send += beat.interval;
                    unanswered.push_back(LeaseInstant::now());
                    if let Err(error) = keeper.keep_alive().await {
                        break error.to_string();
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        // An answer nobody asked for renews from no known instant.
                        let Some(sent_at) = unanswered.pop_front() else { continue };
                        metrics::histogram!(telemetry::KEEPALIVE_RTT_SECONDS)
                            .record(sent_at.elapsed().as_secs_f64());
                        if !report(Renewal::Renewed { sent_at }) {
                            return;
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(lease, "etcd says the lease has expired");
                        report(Renewal::Lost);
                        return;
                    }
                    Ok(None) => break "keepalive stream closed".to_owned(),
                    Err(error) => break error.to_string(),
                },
                _ = sleep_until_some(give_up) => {
                    break format!("no keepalive answer within {:?}", beat.timeout);
                }
            }
        };
        keepalive_failed(lease, &broken);
        failed = true;
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn keepalive_failed(lease: i64, reason: &str) {
    tracing::warn!(lease, "keepalive failed: {reason}");
    metrics::counter!(telemetry::KEEPALIVE_FAILURES).increment(1);
}
