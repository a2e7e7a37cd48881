//! Real-etcd test kit (cargo feature `testing`): throwaway etcd servers and clusters on loopback ports, a fault-injecting TCP proxy, `standin run` child processes and compose clusters, the waits every test writes, and test logging that keeps warnings and errors.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::etcd::EtcdError;
use crate::fence::{Epoch, FencedStore};

// The pieces live in their own files but share this module's error type: to
// a test they are one kit, and each failure reads the same way.
mod cluster;
mod compose;
mod logs;
mod process;
mod proxy;
mod server;
mod tls;
mod waits;

pub use cluster::EtcdCluster;
pub use compose::{ComposeCluster, Container, NodeProcess};
pub use logs::{init_logging, logged};
pub use process::StandinProcess;
pub use proxy::{FaultProxy, ProxyMode};
pub use server::{EtcdOptions, EtcdServer};
pub use tls::{CertFiles, TestCa, TlsFiles};
pub use waits::{the_single_serving, wait_until};

/// A store that writes for `epoch` under `prefix`, without the local switch
/// of the node whose term it was: for asserting that etcd itself refuses the
/// writes of a deposed epoch.
pub fn store_for_epoch(client: etcd_client::Client, epoch: Epoch, prefix: String) -> FencedStore {
    FencedStore::new(
        client,
        epoch,
        prefix,
        &crate::fence::DeposeSwitch::default(),
    )
}

/// Failures of the test kit.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// Spawning `etcd` failed because it is not on PATH.
    #[error(
        "`etcd` not found on PATH: install etcd and etcdctl (on Debian: apt-get install etcd-server etcd-client)"
    )]
    EtcdNotInstalled,
    /// Spawning `etcdctl` failed because it is not on PATH.
    #[error(
        "`etcdctl` not found on PATH: install etcd and etcdctl (on Debian: apt-get install etcd-server etcd-client)"
    )]
    EtcdctlNotInstalled,
    /// etcd exited before it answered, or kept losing its ports to other processes.
    #[error("starting etcd failed: {message}; its log ends with:\n{log}")]
    StartFailed {
        /// What went wrong.
        message: String,
        /// The end of etcd's log.
        log: String,
    },
    /// etcd kept running but did not answer within the start deadline.
    #[error("etcd on 127.0.0.1:{port} was not ready after {waited:?}; its log ends with:\n{log}")]
    NotReady {
        /// Its client port.
        port: u16,
        /// How long the start waited.
        waited: Duration,
        /// The end of etcd's log.
        log: String,
    },
    /// An etcdctl command ran and failed.
    #[error("`etcdctl {args}` failed ({status}): {stderr}")]
    EtcdctlFailed {
        /// Its arguments, space separated.
        args: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A client could not connect to the test server.
    #[error("connecting to the test etcd failed: {0}")]
    ConnectFailed(#[from] EtcdError),
    /// The test certificates could not be generated.
    #[error("generating the test TLS certificates failed: {0}")]
    CertificatesFailed(#[from] rcgen::Error),
    /// A cluster has no member with that index.
    #[error("the cluster has no member {member}: it has {members}")]
    NoSuchMember {
        /// The index asked for.
        member: usize,
        /// How many members the cluster has.
        members: usize,
    },
    /// No member of a cluster that answered claims raft leadership (during
    /// an election, or when too few members run for a quorum).
    #[error("no raft leader: {answered} of {running} running member(s) answered, none leads")]
    NoLeader {
        /// Members that answered the status request.
        answered: usize,
        /// Members not killed.
        running: usize,
    },
    /// Raft leadership could not be handed to a member.
    #[error("moving etcd's raft leadership to member {member} failed: {message}")]
    MoveLeaderFailed {
        /// The member that was to lead.
        member: usize,
        /// Why not.
        message: String,
    },
    /// A signal for a process that was killed or has exited and been reaped:
    /// its pid may belong to another process by now, so nothing was sent.
    #[error("{what}: the process is not running")]
    NotRunning {
        /// What was being done.
        what: String,
    },
    /// A local process or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// etcd's `/metrics` could not be read, or lacks a metric.
    #[error("reading etcd's metrics on {endpoint}: {message}")]
    MetricsUnreadable {
        /// The client endpoint asked.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// A condition a test waited for did not hold within its deadline.
    #[error("{what} did not happen within {deadline:?}{}", last.as_ref().map(|l| format!(" (last seen: {l})")).unwrap_or_default())]
    TimedOut {
        /// What was waited for.
        what: String,
        /// The deadline.
        deadline: Duration,
        /// What the condition last saw, when it says.
        last: Option<String>,
    },
}

/// The last `count` lines of a log, for error messages.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let what = what.into();
    move |source| TestingError::Io { what, source }
}

/// Writes `text` to a new file at `path` that only its owner may read, as
/// the config requires of a file holding a secret (a token, a password, the
/// witness secret): created so, never readable by others in between.
pub fn write_secret(path: &Path, text: &str) -> Result<(), TestingError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let what = || format!("writing the secret {}", path.display());
    let mut file = options.open(path).map_err(io(what()))?;
    // A file that was there keeps its mode through the open.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        file.set_permissions(private).map_err(io(what()))?;
    }
    file.write_all(text.as_bytes()).map_err(io(what()))
}

/// A TCP port on 127.0.0.1 that was free when asked. Nothing reserves it, so
/// the caller should bind it soon (and [`EtcdServer::start`] retries if it
/// loses the race).
pub fn free_loopback_port() -> Result<u16, TestingError> {
    free_loopback_ports::<1>().map(|[port]| port)
}

/// `N` distinct free loopback ports: all listeners are held at once, so the
/// kernel cannot hand out the same port twice.
fn free_loopback_ports<const N: usize>() -> Result<[u16; N], TestingError> {
    let ports = free_loopback_port_list(N)?;
    Ok(ports.try_into().expect("N ports were asked for"))
}

/// [`free_loopback_ports`] for a count known only at run time.
fn free_loopback_port_list(count: usize) -> Result<Vec<u16>, TestingError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("binding a free port")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|listener| {
            Ok(listener
                .local_addr()
                .map_err(io("reading a bound port"))?
                .port())
        })
        .collect()
}

/// Sends signal `name` (`STOP`, `CONT`, `TERM`) to `pid` through kill(1):
/// std has no way to send a signal other than SIGKILL, and a libc dependency
/// for a few test helpers is not worth it.
fn send_signal(pid: u32, name: &str, whom: &str) -> Result<(), TestingError> {
    let what = format!("sending SIG{name} to {whom}");
    let output = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(io(what.clone()))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = format!("kill exited with {}: {}", output.status, stderr.trim());
        Err(io(what)(std::io::Error::other(message)))
    }
}
