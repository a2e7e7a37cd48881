//! Real-etcd test kit: start a throwaway etcd server on free loopback ports (cargo feature `testing`).

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Failures of the test kit.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// Spawning `etcd` failed because it is not on PATH.
    #[error(
        "`etcd` not found on PATH: run `make deps` (installs Debian's etcd-server and etcd-client)"
    )]
    EtcdNotInstalled,
    /// Spawning `etcdctl` failed because it is not on PATH.
    #[error(
        "`etcdctl` not found on PATH: run `make deps` (installs Debian's etcd-server and etcd-client)"
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
    ConnectFailed(#[from] etcd_client::Error),
    /// A local process or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let what = what.into();
    move |source| TestingError::Io { what, source }
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
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("binding a free port")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(io("reading a bound port"))?
            .port();
    }
    Ok(ports)
}

/// One etcd member on loopback ports with a temporary data directory; killed
/// on drop, and its directory removed.
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    peer_port: u16,
    /// Holds etcd's data and log; declared last so it is removed only after
    /// the process is gone.
    dir: tempfile::TempDir,
}

/// How one start attempt ended, when it did not fail outright.
enum Attempt {
    Ready(EtcdServer),
    /// Another process bound one of the ports first; worth a retry on new ones.
    PortTaken {
        log: String,
    },
}

impl EtcdServer {
    /// How long a start may take; etcd alone starts in well under a second,
    /// the slack is for a machine busy with parallel tests.
    const READY_WITHIN: Duration = Duration::from_secs(15);
    /// Starts that lose a port race before giving up.
    const START_ATTEMPTS: u32 = 4;
    /// Pause between readiness probes.
    const POLL: Duration = Duration::from_millis(20);
    /// A ready local etcd answers a probe in milliseconds; the bound is for a
    /// port held by something that accepts but never answers, so the start
    /// notices etcd's exit instead of waiting out the client's timeouts.
    const PROBE_WITHIN: Duration = Duration::from_secs(1);
    const LOG_FILE: &str = "etcd.log";

    /// Starts `etcd` from PATH on free 127.0.0.1 ports with a temporary data
    /// directory and waits until it serves requests. A start that loses its
    /// ports to another process is retried on new ones.
    pub async fn start() -> Result<Self, TestingError> {
        Self::start_with(None).await
    }

    /// Like [`start`](Self::start), but serves clients on `client_port` (for a
    /// test that points a node at a port before etcd listens there).
    pub async fn start_on(client_port: u16) -> Result<Self, TestingError> {
        Self::start_with(Some(client_port)).await
    }

    async fn start_with(client_port: Option<u16>) -> Result<Self, TestingError> {
        let mut attempt = 1;
        loop {
            let (client, peer) = match client_port {
                None => {
                    let [client, peer] = free_loopback_ports()?;
                    (client, peer)
                }
                Some(client) => {
                    // Two candidates, so one differs from the fixed client port.
                    let candidates: [u16; 2] = free_loopback_ports()?;
                    let peer = candidates.into_iter().find(|&port| port != client);
                    (client, peer.expect("two distinct ports"))
                }
            };
            match Self::attempt(client, peer).await? {
                Attempt::Ready(server) => return Ok(server),
                Attempt::PortTaken { .. } if attempt < Self::START_ATTEMPTS => attempt += 1,
                Attempt::PortTaken { log } => {
                    return Err(TestingError::StartFailed {
                        message: format!(
                            "a port was already in use on each of {} attempts",
                            Self::START_ATTEMPTS
                        ),
                        log,
                    });
                }
            }
        }
    }

    async fn attempt(client_port: u16, peer_port: u16) -> Result<Attempt, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix("standin-etcd-")
            .tempdir()
            .map_err(io("creating etcd's temporary directory"))?;
        let log = File::create(dir.path().join(Self::LOG_FILE))
            .map_err(io("creating etcd's log file"))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new("etcd");
        // ETCD_* variables configure etcd too; the caller's must not move this
        // server off loopback or onto someone's data. ETCD_UNSUPPORTED_ARCH is
        // kept because etcd 3.4 refuses to start on arm64 without it.
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str()
                && name.starts_with("ETCD_")
                && name != "ETCD_UNSUPPORTED_ARCH"
            {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--name=standin-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=standin-test={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            // Into the temp dir, not the test's output: shown only in errors.
            .stdout(log.try_clone().map_err(io("sharing etcd's log file"))?)
            .stderr(log)
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => TestingError::EtcdNotInstalled,
                _ => io("starting etcd")(error),
            })?;
        Self {
            child,
            client_port,
            peer_port,
            dir,
        }
        .wait_until_ready()
        .await
    }

    /// Polls until this server answers, it exits, or the start deadline passes.
    async fn wait_until_ready(mut self) -> Result<Attempt, TestingError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("polling etcd"))? {
                let log = self.log_tail();
                if log.contains("address already in use") {
                    return Ok(Attempt::PortTaken { log });
                }
                return Err(TestingError::StartFailed {
                    message: format!("etcd exited ({status}) before it was ready"),
                    log,
                });
            }
            let left = Self::READY_WITHIN.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(TestingError::NotReady {
                    port: self.client_port,
                    waited: started.elapsed(),
                    log: self.log_tail(),
                });
            }
            if tokio::time::timeout(left.min(Self::PROBE_WITHIN), self.is_ours())
                .await
                .unwrap_or(false)
            {
                return Ok(Attempt::Ready(self));
            }
            tokio::time::sleep(Self::POLL).await;
        }
    }

    /// Whether the client port is served by this process's etcd. Answering is
    /// not enough: if our etcd lost the client port to another test's etcd,
    /// that one answers, so the member must advertise our peer port too.
    async fn is_ours(&self) -> bool {
        // A cheap connect first, so the gRPC client is not built in vain
        // while etcd is still starting.
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.client_port))
            .await
            .is_err()
        {
            return false;
        }
        let Ok(mut client) = self.client().await else {
            return false;
        };
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        match client.member_list().await {
            Ok(members) => members
                .members()
                .iter()
                .any(|member| member.peer_urls().contains(&peer_url)),
            Err(_) => false,
        }
    }

    /// `127.0.0.1:PORT`, the form `etcd_client::Client::connect` and the config take.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT`, the form etcdctl takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// A client connected to this server, with timeouts short enough that a
    /// test against a dead server fails instead of hanging.
    pub async fn client(&self) -> Result<etcd_client::Client, TestingError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        Ok(etcd_client::Client::connect([self.endpoint()], Some(options)).await?)
    }

    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("etcdctl");
        // The caller's ETCDCTL_* settings (endpoints, certificates, users)
        // belong to some other cluster.
        for (name, _) in std::env::vars_os() {
            if name
                .to_str()
                .is_some_and(|name| name.starts_with("ETCDCTL_"))
            {
                command.env_remove(name);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs etcdctl (API v3) against this server with `args` and returns
    /// what it printed on stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, TestingError> {
        let output = self
            .etcdctl_command(args)
            .output()
            .map_err(etcdctl_spawn_error)?;
        if !output.status.success() {
            return Err(TestingError::EtcdctlFailed {
                args: args.join(" "),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts a long-running etcdctl (such as `elect -l`) against this server
    /// with its stdout piped; the caller kills it. Its stderr is appended to
    /// `etcdctl.log` in [`temp_dir`](Self::temp_dir), out of the test's output.
    pub fn etcdctl_spawn(&self, args: &[&str]) -> Result<Child, TestingError> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.temp_dir().join("etcdctl.log"))
            .map_err(io("opening etcdctl's log file"))?;
        self.etcdctl_command(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(etcdctl_spawn_error)
    }

    /// Freezes etcd (SIGSTOP), as a hung or partitioned member looks to its
    /// clients: connections stay open, nothing answers.
    pub fn pause(&self) -> Result<(), TestingError> {
        self.signal("STOP")
    }

    /// Thaws a paused etcd (SIGCONT).
    pub fn resume(&self) -> Result<(), TestingError> {
        self.signal("CONT")
    }

    // Through kill(1): std has no way to send a signal other than SIGKILL,
    // and a libc dependency for two test helpers is not worth it.
    fn signal(&self, name: &str) -> Result<(), TestingError> {
        let what = format!("sending SIG{name} to etcd");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map_err(io(what.clone()))?;
        if status.success() {
            Ok(())
        } else {
            Err(io(what)(std::io::Error::other(status.to_string())))
        }
    }

    /// The temporary directory holding etcd's data (`data/`) and logs
    /// (`etcd.log`, `etcdctl.log`).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.temp_dir().join(Self::LOG_FILE)
    }

    /// The last lines of etcd's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn etcdctl_spawn_error(error: std::io::Error) -> TestingError {
    match error.kind() {
        std::io::ErrorKind::NotFound => TestingError::EtcdctlNotInstalled,
        _ => io("starting etcdctl")(error),
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) etcd too, so no thaw first.
        let _ = self.child.kill();
        // Reaping it means its sockets are closed before drop returns.
        let _ = self.child.wait();
    }
}
