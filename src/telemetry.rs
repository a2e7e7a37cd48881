//! Metrics: the names and descriptions of standin's metrics, and (cargo feature `prometheus`) an exporter.

use metrics::Unit;

use crate::etcd::session::{RoleState, VERSION};

#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "prometheus")]
pub use prometheus::{HealthReport, MetricsPort, TelemetryError, install_prometheus};

/// Gauge, label `role`: 1 while this node serves the role, else 0.
pub const ROLE_ACTIVE: &str = "standin_role_active";
/// Gauge, labels `role` and `state`: 1 for the role's current published
/// state on this node, 0 for the others, so `== 1` selects the state.
pub const ROLE_STATE: &str = "standin_role_state";
/// Counter, label `role`: terms that reached serving on this node.
pub const TAKEOVERS: &str = "standin_takeovers_total";
/// Histogram, label `role`: seconds from winning the election to serving.
pub const TAKEOVER_SECONDS: &str = "standin_takeover_seconds";
/// Counter, labels `role` and `reason`: terms ended on this node.
pub const STEP_DOWNS: &str = "standin_step_downs_total";
/// Histogram, label `role`: seconds to bring the role's metadata up to date after a win.
pub const RELOAD_SECONDS: &str = "standin_reload_seconds";
/// Counter, label `role`: metadata keys handed to activations.
pub const RELOADED_KEYS: &str = "standin_reloaded_keys_total";
/// Gauge, label `role`: keys in this node's warm copy of the role's metadata.
pub const METADATA_COPY_KEYS: &str = "standin_metadata_copy_keys";
/// Gauge, label `role`: 1 once this node's warm copy is loaded (also when
/// its metadata went to this node's term: it is not stuck reading), 0 while it is read.
pub const METADATA_COPY_LOADED: &str = "standin_metadata_copy_loaded";
/// Counter, labels `role` and `reason`: full reads of the role's metadata
/// (`start`, `compacted`, `released`: after this node's term took the copy,
/// `unapplied`: a change the coordinator could not apply; `cold`: a win
/// with `reload.warm: false`).
pub const METADATA_FULL_READS: &str = "standin_metadata_full_reads_total";
/// Histogram: seconds from sending a keepalive of the node's session lease to its answer.
pub const KEEPALIVE_RTT_SECONDS: &str = "standin_keepalive_rtt_seconds";
/// Counter: keepalives of the node's session lease that failed or got no answer in time.
pub const KEEPALIVE_FAILURES: &str = "standin_keepalive_failures_total";
/// Gauge: `session.renewDeadline` in seconds, what keepalive round trips are measured against.
pub const RENEW_DEADLINE_SECONDS: &str = "standin_renew_deadline_seconds";
/// Counter: leases granted to the node's session; past the first, each one followed a lost lease.
pub const SESSION_LEASES: &str = "standin_session_leases_granted_total";
/// Counter, label `role`: metadata writes refused because their epoch was over.
pub const FENCED_WRITES_REFUSED: &str = "standin_fenced_writes_refused_total";
/// Gauge, label `role`: requests waiting for the coordinator (while it
/// activates, or serves slower than they arrive), at most `coordinator.queueDepth`.
pub const QUEUED_REQUESTS: &str = "standin_queued_requests";
/// Counter, label `role`: campaigns joined without a loaded metadata copy,
/// after waiting `reload.timeout` for it.
pub const CAMPAIGNS_WITHOUT_COPY: &str = "standin_campaigns_without_copy_total";
/// Counter, labels `role` and `reason`: failed reads of the warm metadata
/// copy (`denied`, `compacted`, `unavailable`, `timed_out`, `other`).
pub const METADATA_COPY_READ_FAILURES: &str = "standin_metadata_copy_read_failures_total";
/// Counter, labels `role` and `reason` (`abandoned`, `expired`, `late`):
/// requests dropped before the coordinator handled them, their caller gone,
/// their deadline passed, or passing before their batch would be served.
pub const REQUESTS_DROPPED: &str = "standin_requests_dropped_total";
/// Counter, labels `role` and `outcome`: calls to the coordinator through its `RoleHandle`.
pub const REQUESTS: &str = "standin_requests_total";
/// Counter, label `role`: times the timestamp oracle found the clock
/// further ahead than `tso.maxClockStep` allows and held it back.
pub const TSO_CLOCK_STEPS: &str = "standin_tso_clock_steps_total";
/// Counter, label `role`: allocations that waited for the timestamp upper
/// bound to be saved, because the batch reached the bound before a save
/// ahead of it had landed.
pub const TSO_SAVES_WAITED: &str = "standin_tso_saves_waited_total";
/// Counter, label `role`: restarts of the role's election actor after a crash.
pub const ELECTION_RESTARTS: &str = "standin_election_restarts_total";
/// Counter: leader processes this node found dead through their death
/// witness, and revoked the leases of.
pub const DEATH_WITNESS_REVOKES: &str = "standin_death_witness_revokes_total";
/// Histogram: seconds from losing the connection to a leader's witness to
/// having revoked its leases.
pub const DEATH_WITNESS_REVOKE_SECONDS: &str = "standin_death_witness_revoke_seconds";
/// Gauge, label `state` (`armed`, `unarmed`): leaders' witnesses this node
/// holds a connection to, and those it cannot reach.
pub const DEATH_WITNESS_WATCHED: &str = "standin_death_witness_watched";
/// Counter, label `reason` (`over_cap`, `no_hello`, `bad_hello`):
/// connections to this node's death witness it closed unheld.
pub const DEATH_WITNESS_REFUSED: &str = "standin_death_witness_connections_refused_total";
/// Counter: leaders' witnesses that refused a reconnect, then greeted
/// again within `session.witnessConfirm` (alive: nothing revoked).
pub const DEATH_WITNESS_UNCONFIRMED: &str = "standin_death_witness_unconfirmed_total";
/// Counter, label `role`: wins from a lease a death witness revoked, each
/// held for `session.witnessGrace` before serving.
pub const WITNESS_GRACE_WAITS: &str = "standin_witness_grace_waits_total";
/// Counter, labels `role` and `outcome`: `Resign` calls this node
/// answered. Who asked is in the log line, not a label: callers are unbounded.
pub const RESIGN_REQUESTS: &str = "standin_resign_requests_total";
/// Counter, label `code` (`unauthenticated`, `permission_denied`): gRPC
/// calls the server's auth refused.
pub const API_CALLS_REFUSED: &str = "standin_api_calls_refused_total";
/// Counter: connections closed on arrival because `server.limits.maxConnections` were open.
pub const CONNECTIONS_REFUSED: &str = "standin_connections_refused_total";
/// Gauge, labels `version` and `git`: 1, naming the build this process runs.
pub const BUILD_INFO: &str = "standin_build_info";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl MetricKind {
    /// The Prometheus type name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One of standin's metrics, described once: the exporter's `# HELP` lines
/// and the README's table are both made from [`catalogue`].
#[derive(Debug, Clone)]
pub struct MetricInfo {
    /// The metric's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: MetricKind,
    /// Its unit.
    pub unit: Unit,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it means, with the values of its labels.
    pub help: String,
}

/// Every metric standin records, with its help text. The label values in
/// the help come from the types that produce them, so they cannot drift.
pub fn catalogue() -> Vec<MetricInfo> {
    use MetricKind::{Counter, Gauge, Histogram};
    let listed = |values: &[&str]| values.join(", ");
    let states: Vec<&str> = ROLE_STATES.iter().map(|state| state.as_str()).collect();
    let reasons = STEP_DOWN_REASONS;
    let metric = |name, kind, unit, labels, help: &str| MetricInfo {
        name,
        kind,
        unit,
        labels,
        help: help.to_owned(),
    };
    vec![
        metric(
            ROLE_STATE,
            Gauge,
            Unit::Count,
            &["role", "state"],
            &format!(
                "1 for the role's current state on this node ({}), 0 for the others.",
                listed(&states)
            ),
        ),
        metric(
            ROLE_ACTIVE,
            Gauge,
            Unit::Count,
            &["role"],
            "1 while this node serves the role, else 0.",
        ),
        metric(
            TAKEOVERS,
            Counter,
            Unit::Count,
            &["role"],
            "Terms in which this node won the role and reached serving.",
        ),
        metric(
            TAKEOVER_SECONDS,
            Histogram,
            Unit::Seconds,
            &["role"],
            "Time from winning the election to serving, reload and activation included.",
        ),
        metric(
            STEP_DOWNS,
            Counter,
            Unit::Count,
            &["role", "reason"],
            &format!(
                "Terms ended on this node, by reason ({}).",
                listed(&reasons)
            ),
        ),
        metric(
            RELOAD_SECONDS,
            Histogram,
            Unit::Seconds,
            &["role"],
            "Time to bring the role's metadata up to date after a win (catching the warm copy up, or a full read).",
        ),
        metric(
            RELOADED_KEYS,
            Counter,
            Unit::Count,
            &["role"],
            "Metadata keys handed to activations after winning the role.",
        ),
        metric(
            METADATA_COPY_KEYS,
            Gauge,
            Unit::Count,
            &["role"],
            "Keys in this node's warm copy of the role's metadata.",
        ),
        metric(
            METADATA_COPY_LOADED,
            Gauge,
            Unit::Count,
            &["role"],
            "1 once this node's warm copy of the role's metadata is loaded, 0 while it is read (the node campaigns once it is loaded, or after reload.timeout without it).",
        ),
        metric(
            METADATA_FULL_READS,
            Counter,
            Unit::Count,
            &["role", "reason"],
            "Full reads of the role's metadata, by reason (start, compacted, released: after this node's term, unapplied: a change the coordinator could not apply; cold: a win with reload.warm false).",
        ),
        metric(
            KEEPALIVE_RTT_SECONDS,
            Histogram,
            Unit::Seconds,
            &[],
            "Time from sending a keepalive of the node's session lease to etcd's answer.",
        ),
        metric(
            KEEPALIVE_FAILURES,
            Counter,
            Unit::Count,
            &[],
            "Keepalives of the node's session lease that failed or got no answer in time; the stream is reopened.",
        ),
        metric(
            RENEW_DEADLINE_SECONDS,
            Gauge,
            Unit::Seconds,
            &[],
            "session.renewDeadline: a leader with no keepalive answered within it steps down.",
        ),
        metric(
            SESSION_LEASES,
            Counter,
            Unit::Count,
            &[],
            "Leases granted to the node's session, shared by all its roles; past the first, each followed a lost lease.",
        ),
        metric(
            FENCED_WRITES_REFUSED,
            Counter,
            Unit::Count,
            &["role"],
            "Metadata writes refused because the epoch they were made for is over.",
        ),
        metric(
            QUEUED_REQUESTS,
            Gauge,
            Unit::Count,
            &["role"],
            "Requests waiting for the coordinator (while it activates, or serves slower than they arrive), at most coordinator.queueDepth.",
        ),
        metric(
            CAMPAIGNS_WITHOUT_COPY,
            Counter,
            Unit::Count,
            &["role"],
            "Campaigns joined without a loaded metadata copy, after waiting reload.timeout for it: a win reads the metadata first.",
        ),
        metric(
            METADATA_COPY_READ_FAILURES,
            Counter,
            Unit::Count,
            &["role", "reason"],
            "Failed reads of the warm metadata copy, retried with backoff: denied (etcd refuses the prefix), compacted (etcd compacted every read's revision before it finished), unavailable, timed_out, other.",
        ),
        metric(
            REQUESTS_DROPPED,
            Counter,
            Unit::Count,
            &["role", "reason"],
            "Requests dropped before the coordinator handled them: their caller had gone (abandoned), their deadline had passed (expired), or would pass before their batch was served (late).",
        ),
        metric(
            REQUESTS,
            Counter,
            Unit::Count,
            &["role", "outcome"],
            &format!(
                "Calls to the coordinator through its RoleHandle (the gRPC services and embedders' calls), by outcome ({}).",
                listed(&REQUEST_OUTCOMES)
            ),
        ),
        metric(
            ELECTION_RESTARTS,
            Counter,
            Unit::Count,
            &["role"],
            "Restarts of the role's election actor after it crashed.",
        ),
        metric(
            DEATH_WITNESS_REVOKES,
            Counter,
            Unit::Count,
            &[],
            "Leader processes found dead through their death witness (port refused, or another process on it), whose leases this node revoked.",
        ),
        metric(
            DEATH_WITNESS_REVOKE_SECONDS,
            Histogram,
            Unit::Seconds,
            &[],
            "Time from losing the connection to a leader's death witness to having revoked its leases.",
        ),
        metric(
            DEATH_WITNESS_WATCHED,
            Gauge,
            Unit::Count,
            &["state"],
            "Leaders' death witnesses this node watches, by state (armed: connected, so a kill is seen at once; unarmed: unreachable, so only the lease tells).",
        ),
        metric(
            DEATH_WITNESS_REFUSED,
            Counter,
            Unit::Count,
            &["reason"],
            "Connections to this node's death witness closed without being held: over node.witnessMaxConnections (over_cap), no hello in time (no_hello), or a hello without the cluster's secret (bad_hello).",
        ),
        metric(
            DEATH_WITNESS_UNCONFIRMED,
            Counter,
            Unit::Count,
            &[],
            "Leaders' death witnesses that refused a reconnect and greeted again within session.witnessConfirm: alive (a reset or a rejection on the path), so nothing was revoked.",
        ),
        metric(
            WITNESS_GRACE_WAITS,
            Counter,
            Unit::Count,
            &["role"],
            "Wins from a lease a death witness revoked, each held for session.witnessGrace before serving so that a leader taken for dead that lives has stepped down first.",
        ),
        metric(
            RESIGN_REQUESTS,
            Counter,
            Unit::Count,
            &["role", "outcome"],
            "Resign calls this node answered, by role and outcome (resigned, transferred, not_leader, refused, unavailable); who asked is in the log line.",
        ),
        metric(
            API_CALLS_REFUSED,
            Counter,
            Unit::Count,
            &["code"],
            "gRPC calls refused by the server's authentication or authorization, by status code (unauthenticated, permission_denied).",
        ),
        metric(
            CONNECTIONS_REFUSED,
            Counter,
            Unit::Count,
            &[],
            "Connections closed on arrival because server.limits.maxConnections were open.",
        ),
        metric(
            TSO_CLOCK_STEPS,
            Counter,
            Unit::Count,
            &["role"],
            "Times the timestamp oracle found the clock further ahead than tso.maxClockStep allows, and held it back.",
        ),
        metric(
            TSO_SAVES_WAITED,
            Counter,
            Unit::Count,
            &["role"],
            "Timestamp allocations that waited for the upper bound to be saved: the batch reached the bound before the save started once a sixth of tso.window was used had landed (etcd slow or unreachable that long, or callers pushing the oracle ahead of the clock).",
        ),
        metric(
            BUILD_INFO,
            Gauge,
            Unit::Count,
            &["version", "git"],
            "1, labelled with the standin version and git commit this process runs.",
        ),
    ]
}

/// Every value of the `reason` label of [`STEP_DOWNS`]: the labels of
/// `StepDownReason`, which a test there keeps equal to this list.
pub const STEP_DOWN_REASONS: [&str; 9] = [
    "lease_lost",
    "renew_deadline",
    "coordinator_crashed",
    "reload_failed",
    "leader_key_deleted",
    "shutdown",
    "resigned",
    "activation_timed_out",
    "transferred",
];

/// Every value of the `outcome` label of [`REQUESTS`].
pub const REQUEST_OUTCOMES: [&str; 5] = ["ok", "not_active", "timed_out", "unavailable", "refused"];

/// The metrics table of the README, made from [`catalogue`]; a test keeps
/// the README's copy equal to it.
pub fn markdown_table() -> String {
    let mut table = String::from("| name | type | labels | meaning |\n| --- | --- | --- | --- |\n");
    for metric in catalogue() {
        let labels: Vec<String> = metric.labels.iter().map(|l| format!("`{l}`")).collect();
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            metric.name,
            metric.kind.as_str(),
            labels.join(", "),
            metric.help
        ));
    }
    table
}

/// Every value of the `state` label of [`ROLE_STATE`]: a series is kept for
/// each, so a state the role left reads 0 instead of keeping its old 1.
pub const ROLE_STATES: [RoleState; 5] = [
    RoleState::Standby,
    RoleState::Activating,
    RoleState::Serving,
    RoleState::Stopping,
    RoleState::Stopped,
];

// Fails to compile when `RoleState` gains a variant, so that `ROLE_STATES`
// is updated with it and the new state gets its series.
const _: fn(RoleState) = |state| match state {
    RoleState::Standby
    | RoleState::Activating
    | RoleState::Serving
    | RoleState::Stopping
    | RoleState::Stopped => {}
};

/// Histogram buckets, in seconds, for takeovers, reloads and keepalive round
/// trips: from a millisecond (a keepalive on loopback, a crash takeover) to
/// 30 s (a reload of a large metadata set, or a keepalive near the TTL).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers the description and unit of every standin metric with the
/// installed recorder, for the `# HELP` lines, and sets [`BUILD_INFO`].
/// Call it after installing a recorder: descriptions given before are lost.
pub fn describe() {
    for metric in catalogue() {
        match metric.kind {
            MetricKind::Counter => {
                metrics::describe_counter!(metric.name, metric.unit, metric.help)
            }
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.unit, metric.help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(metric.name, metric.unit, metric.help)
            }
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => VERSION, "git" => GIT_COMMIT).set(1.0);
}

/// The git commit this crate was built from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("BUILT_FROM_GIT_COMMIT");

/// The version and commit, as `standin --version` prints them.
pub const BUILD: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("BUILT_FROM_GIT_COMMIT"),
    ")"
);

/// How long after a panic its backtrace is resolved and printed.
const BACKTRACE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Replaces the process's panic hook with one that logs the panic at once
/// (a `tracing` error with the thread, location and message) and prints
/// its backtrace, when `RUST_BACKTRACE` asks for one, from a thread of its
/// own.
///
/// Why: the standard hook resolves the backtrace's symbols on the
/// panicking thread before the panic unwinds, which takes 50 to 150 ms
/// (the debug info is read the first time), and a coordinator actor's
/// panic reaches its election, which hands the role over, only after the
/// hook returns. With this hook a crashed coordinator is taken over in
/// milliseconds whatever `RUST_BACKTRACE` says. `standin run` installs it;
/// an embedding process calls it once, early, unless it has a hook of its
/// own. The backtrace is resolved a second later, because resolving it
/// keeps a core busy for as long as the standard hook would have blocked.
/// Built with `panic = "abort"`, or for a panic of the main thread, the
/// backtrace is printed before the hook returns, since the process may end
/// right after it.
pub fn install_panic_hook() {
    use std::backtrace::{Backtrace, BacktraceStatus};
    let (backtraces, pending) = std::sync::mpsc::channel::<(String, Backtrace)>();
    let printer = std::thread::Builder::new()
        .name("standin-backtraces".to_owned())
        .spawn(move || {
            for (panic, backtrace) in pending {
                // Resolving takes a core for 50 to 150 ms: later, so that
                // it does not compete with the takeover the panic started.
                std::thread::sleep(BACKTRACE_DELAY);
                // Resolved before stderr is locked: logging waits on that lock.
                let resolved = backtrace.to_string();
                eprintln!("backtrace of {panic}:\n{resolved}");
            }
        });
    let deferred = printer.is_ok();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        // "panicked: <message>"
        let message = crate::task::panic_message(info.payload());
        let panic = format!("the panic of thread '{thread}' at {location}");
        tracing::error!(
            thread,
            location,
            "thread '{thread}' {message} at {location}"
        );
        // Capturing walks the stack, which is quick; resolving it is not.
        let backtrace = Backtrace::capture();
        if backtrace.status() != BacktraceStatus::Captured {
            return;
        }
        // A panic that aborts, or on the main thread, likely ends the process.
        if cfg!(panic = "abort") || !deferred || thread == "main" {
            eprintln!("backtrace of {panic}:\n{backtrace}");
        } else {
            let _ = backtraces.send((panic, backtrace));
        }
    }));
}

/// Sets [`ROLE_STATE`] for `role` (1 for `current`, 0 for every other
/// state) and [`ROLE_ACTIVE`] (1 while serving).
pub fn set_role_state(role: &str, current: RoleState) {
    let active = if current == RoleState::Serving {
        1.0
    } else {
        0.0
    };
    metrics::gauge!(ROLE_ACTIVE, "role" => role.to_owned()).set(active);
    for state in ROLE_STATES {
        let value = if state == current { 1.0 } else { 0.0 };
        metrics::gauge!(ROLE_STATE, "role" => role.to_owned(), "state" => state.as_str())
            .set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_states_are_distinct_label_values() {
        let mut labels: Vec<_> = ROLE_STATES.iter().map(|state| state.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ROLE_STATES.len());
    }

    #[test]
    fn buckets_increase() {
        assert!(SECONDS_BUCKETS.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
