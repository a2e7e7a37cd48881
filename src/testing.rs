//! Real-etcd test kit: starts a throwaway etcd server on free loopback ports (cargo feature `testing`).

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Failures of the test kit.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// etcd or etcdctl is not installed.
    #[error(
        "`{0}` not found on PATH: run `make deps` (installs Debian's etcd-server and etcd-client)"
    )]
    NotInstalled(&'static str),
    /// A process or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// etcd did not become healthy in time.
    #[error("etcd on 127.0.0.1:{port} was not ready after {waited:?}; its log ends with:\n{log}")]
    NotReady {
        /// Its client port.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
    /// An etcdctl command failed.
    #[error("etcdctl {args} failed: {stderr}")]
    EtcdctlFailed {
        /// Its arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The client could not connect.
    #[error("connecting to the test etcd failed: {0}")]
    ConnectFailed(#[from] etcd_client::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let what = what.into();
    move |source| TestingError::Io { what, source }
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_loopback_port() -> Result<u16, TestingError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("reading a bound port"))?
        .port())
}

/// One etcd member on loopback ports with a temporary data directory; killed
/// and removed on drop.
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    data: tempfile::TempDir,
}

impl EtcdServer {
    /// How long a start may take before it is reported as failed.
    const READY_WITHIN: Duration = Duration::from_secs(20);

    /// Starts `etcd` from PATH and waits until it answers requests. A start
    /// that loses its ports to another process is retried on new ones.
    pub async fn start() -> Result<Self, TestingError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_on(free_loopback_port()?).await {
                Err(TestingError::NotReady { .. }) if attempt < 3 => continue,
                outcome => return outcome,
            }
        }
    }

    /// Starts `etcd` serving clients on `client_port` (for a test that points
    /// a node at a port before etcd listens there).
    pub async fn start_on(client_port: u16) -> Result<Self, TestingError> {
        let data = tempfile::Builder::new()
            .prefix("standin-etcd-")
            .tempdir()
            .map_err(io("creating etcd's data directory"))?;
        let peer_port = free_loopback_port()?;
        let log_path = data.path().join("etcd.log");
        let log = File::create(&log_path).map_err(io("creating etcd's log file"))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name=standin-test")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=standin-test={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("sharing etcd's log file"))?)
            .stderr(log)
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => TestingError::NotInstalled("etcd"),
                _ => io("starting etcd")(error),
            })?;
        let mut server = Self {
            child,
            client_port,
            data,
        };
        server.wait_until_ready(&log_path).await?;
        Ok(server)
    }

    async fn wait_until_ready(&mut self, log_path: &PathBuf) -> Result<(), TestingError> {
        let started = Instant::now();
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        let not_ready = |waited| TestingError::NotReady {
            port: self.client_port,
            waited,
            log: log_tail(log_path),
        };
        loop {
            poll.tick().await;
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(not_ready(started.elapsed()));
            }
            if TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
                && let Ok(mut client) = self.client().await
                && client.status().await.is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > Self::READY_WITHIN {
                return Err(not_ready(started.elapsed()));
            }
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

    /// A client connected to this server.
    pub async fn client(&self) -> Result<etcd_client::Client, TestingError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        Ok(etcd_client::Client::connect([self.endpoint()], Some(options)).await?)
    }

    fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .args(args);
        command
    }

    /// Runs etcdctl against this server and returns what it printed.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, TestingError> {
        let output = self
            .etcdctl_command(args)
            .output()
            .map_err(etcdctl_spawn_error)?;
        if !output.status.success() {
            return Err(TestingError::EtcdctlFailed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts a long-running etcdctl (such as `elect -l`) with its stdout
    /// piped; the caller kills it.
    pub fn etcdctl_spawn(&self, args: &[&str]) -> Result<Child, TestingError> {
        self.etcdctl_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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

    fn signal(&self, name: &str) -> Result<(), TestingError> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map_err(io(format!("sending SIG{name} to etcd")))?;
        if status.success() {
            Ok(())
        } else {
            Err(io(format!("sending SIG{name} to etcd"))(
                std::io::Error::other(status.to_string()),
            ))
        }
    }

    /// Where etcd keeps its data and log.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }
}

fn etcdctl_spawn_error(error: std::io::Error) -> TestingError {
    match error.kind() {
        std::io::ErrorKind::NotFound => TestingError::NotInstalled("etcdctl"),
        _ => io("starting etcdctl")(error),
    }
}

fn log_tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // A paused etcd must be thawed to die promptly and release its ports.
        let _ = self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
