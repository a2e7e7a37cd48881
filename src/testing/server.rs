//! One throwaway etcd member on loopback ports, with a temporary data directory: start, freeze, kill, restart, etcdctl.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestingError, TlsFiles, free_loopback_ports, io, send_signal};
use crate::config::{AuthConfig, EtcdConfig, TlsConfig};

/// One etcd member on loopback ports with a temporary data directory; killed
/// on drop, and its directory removed.
pub struct EtcdServer {
    child: Child,
    /// How it was started, so [`restart`](Self::restart) starts it the same way.
    launch: Launch,
    /// The root user's credentials, once auth is enabled.
    auth: Option<AuthConfig>,
    /// Set once the child is reaped (by [`kill`](Self::kill), or after it
    /// exited during a start): its pid may be another process's by now, so
    /// it must not be signalled.
    pub(super) killed: bool,
    /// Holds etcd's data and log; declared last so it is removed only after
    /// the process is gone.
    dir: tempfile::TempDir,
}

/// Everything that decides how one etcd process is started: kept, so a
/// restarted member comes back on the same ports and in the same cluster.
pub(super) struct Launch {
    /// The member name, unique in its cluster.
    pub(super) name: String,
    pub(super) client_port: u16,
    pub(super) peer_port: u16,
    /// `--initial-cluster`: `name=peer URL` of every member, comma separated.
    pub(super) initial_cluster: String,
    /// `--initial-cluster-token`: unique per test cluster, so a member can
    /// never join another test's cluster that reused a port.
    pub(super) cluster_token: String,
    /// The certificates, when clients are served over TLS.
    pub(super) tls: Option<TlsFiles>,
    pub(super) auth_token_ttl: Option<u64>,
}

impl Launch {
    fn peer_url(&self) -> String {
        peer_url(self.peer_port)
    }

    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", scheme(&self.tls), self.client_port)
    }

    /// Starts etcd with its data in `dir/data` and its output appended to
    /// `dir/etcd.log`. `existing` is `--initial-cluster-state`: false for a
    /// member of a cluster being formed, true for one coming back.
    fn spawn(&self, dir: &Path, existing: bool) -> Result<Child, TestingError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(EtcdServer::LOG_FILE))
            .map_err(io("opening etcd's log file"))?;
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
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert_file.display()))
                .arg(format!("--key-file={}", tls.server_key_file.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        if let Some(seconds) = self.auth_token_ttl {
            command.arg(format!("--auth-token-ttl={seconds}"));
        }
        let state = if existing { "existing" } else { "new" };
        let client_url = self.client_url();
        let peer_url = self.peer_url();
        command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.cluster_token))
            .arg(format!("--initial-cluster-state={state}"))
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
            })
    }
}

pub(super) fn peer_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// How one start attempt ended, when it did not fail outright.
enum Attempt {
    /// Boxed: the server is large, and the enum is returned by value.
    Ready(Box<EtcdServer>),
    /// Another process bound one of the ports first; worth a retry on new ones.
    PortTaken { log: String },
}

/// How waiting for a started etcd ended, when it did not fail outright.
pub(super) enum Readiness {
    Serving,
    /// etcd exited because another process held one of its ports.
    PortTaken {
        log: String,
    },
}

impl EtcdServer {
    /// How long a start may take; etcd alone starts in well under a second,
    /// the slack is for a machine busy with parallel tests.
    pub(super) const READY_WITHIN: Duration = Duration::from_secs(15);
    /// Starts that lose a port race before giving up.
    pub(super) const START_ATTEMPTS: u32 = 4;
    /// Pause between readiness probes.
    pub(super) const POLL: Duration = Duration::from_millis(20);
    /// A ready local etcd answers a probe in milliseconds; the bound is for a
    /// port held by something that accepts but never answers, so the start
    /// notices etcd's exit instead of waiting out the client's timeouts.
    const PROBE_WITHIN: Duration = Duration::from_secs(1);
    const LOG_FILE: &str = "etcd.log";

    /// Starts `etcd` from PATH on free 127.0.0.1 ports with a temporary data
    /// directory and waits until it serves requests. A start that loses its
    /// ports to another process is retried on new ones.
    pub async fn start() -> Result<Self, TestingError> {
        Self::options().start().await
    }

    /// Like [`start`](Self::start), but serves clients on `client_port` (for a
    /// test that points a node at a port before etcd listens there).
    pub async fn start_on(client_port: u16) -> Result<Self, TestingError> {
        Self::options().client_port(client_port).start().await
    }

    /// Options for a server with TLS, auth or a short auth-token TTL;
    /// [`EtcdOptions::start`] starts it.
    pub fn options() -> EtcdOptions {
        EtcdOptions::default()
    }

    async fn start_with(options: &EtcdOptions) -> Result<Self, TestingError> {
        let mut server = Self::start_listening(options).await?;
        if let Some(password) = &options.root_password {
            server.enable_auth(password)?;
        }
        Ok(server)
    }

    async fn start_listening(options: &EtcdOptions) -> Result<Self, TestingError> {
        let mut attempt = 1;
        loop {
            let (client, peer) = match options.client_port {
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
            match Self::attempt(client, peer, options).await? {
                Attempt::Ready(server) => return Ok(*server),
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

    async fn attempt(
        client_port: u16,
        peer_port: u16,
        options: &EtcdOptions,
    ) -> Result<Attempt, TestingError> {
        let name = "standin-test".to_owned();
        let mut server = Self::spawn_member(
            |tls| Launch {
                initial_cluster: format!("{name}={}", peer_url(peer_port)),
                cluster_token: format!("standin-test-{peer_port}"),
                name,
                client_port,
                peer_port,
                tls,
                auth_token_ttl: options.auth_token_ttl,
            },
            options.tls,
        )?;
        Ok(match server.wait_until_ready().await? {
            Readiness::Serving => Attempt::Ready(Box::new(server)),
            Readiness::PortTaken { log } => Attempt::PortTaken { log },
        })
    }

    /// Creates a temporary directory (and the certificates in it with
    /// `tls`), and starts a new member as `launch` describes; does not wait.
    pub(super) fn spawn_member(
        launch: impl FnOnce(Option<TlsFiles>) -> Launch,
        tls: bool,
    ) -> Result<Self, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix("standin-etcd-")
            .tempdir()
            .map_err(io("creating etcd's temporary directory"))?;
        let tls = match tls {
            true => Some(TlsFiles::generate(dir.path())?),
            false => None,
        };
        let launch = launch(tls);
        let child = launch.spawn(dir.path(), false)?;
        Ok(Self {
            child,
            launch,
            auth: None,
            killed: false,
            dir,
        })
    }

    /// Kills etcd with SIGKILL, as a crash or a power cut would, and reaps
    /// it. Its data directory and ports are kept for
    /// [`restart`](Self::restart); until then [`pause`](Self::pause) and
    /// [`resume`](Self::resume) fail. Killing a killed server does nothing.
    pub fn kill(&mut self) -> Result<(), TestingError> {
        if self.killed {
            return Ok(());
        }
        self.child.kill().map_err(io("killing etcd"))?;
        self.child.wait().map_err(io("reaping etcd"))?;
        self.killed = true;
        Ok(())
    }

    /// Starts etcd again on the same ports with the same data directory (a
    /// running one is killed first) and waits until it serves requests. A
    /// cluster member rejoins its cluster (`--initial-cluster-state
    /// existing`) and catches up from the others.
    ///
    /// The ports were free while it was down, so another process may have
    /// taken one: that fails with [`TestingError::StartFailed`], not retried,
    /// since the member cannot move.
    pub async fn restart(&mut self) -> Result<(), TestingError> {
        self.kill()?;
        self.child = self.launch.spawn(self.dir.path(), true)?;
        self.killed = false;
        match self.wait_until_ready().await? {
            Readiness::Serving => Ok(()),
            Readiness::PortTaken { log } => Err(TestingError::StartFailed {
                message: format!(
                    "another process took port {} or {} while etcd was down",
                    self.launch.client_port, self.launch.peer_port
                ),
                log,
            }),
        }
    }

    /// Polls until this server answers, it exits, or the start deadline
    /// passes. A member of a cluster being formed answers only once a quorum
    /// of its peers runs, so they must all have been spawned.
    pub(super) async fn wait_until_ready(&mut self) -> Result<Readiness, TestingError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("polling etcd"))? {
                // Reaped: from here on the pid is not ours to signal.
                self.killed = true;
                let log = self.log_tail();
                if log.contains("address already in use") {
                    return Ok(Readiness::PortTaken { log });
                }
                return Err(TestingError::StartFailed {
                    message: format!("etcd exited ({status}) before it was ready"),
                    log,
                });
            }
            let left = Self::READY_WITHIN.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(TestingError::NotReady {
                    port: self.launch.client_port,
                    waited: started.elapsed(),
                    log: self.log_tail(),
                });
            }
            if tokio::time::timeout(left.min(Self::PROBE_WITHIN), self.is_ours())
                .await
                .unwrap_or(false)
            {
                return Ok(Readiness::Serving);
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
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.launch.client_port))
            .await
            .is_err()
        {
            return false;
        }
        let Ok(mut client) = self.client().await else {
            return false;
        };
        let peer_url = self.launch.peer_url();
        match client.member_list().await {
            Ok(members) => members
                .members()
                .iter()
                .any(|member| member.peer_urls().contains(&peer_url)),
            Err(_) => false,
        }
    }

    /// Its process ID while it runs (not after [`kill`](Self::kill)).
    pub fn pid(&self) -> Option<u32> {
        (!self.killed).then(|| self.child.id())
    }

    /// `127.0.0.1:PORT`, the form `etcd_client::Client::connect` and the config take.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.launch.client_port)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), the form etcdctl takes.
    pub fn url(&self) -> String {
        self.launch.client_url()
    }

    /// The certificates when this server serves TLS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.launch.tls.as_ref()
    }

    /// The `etcd.tls` config of a client with the test client certificate,
    /// when this server serves TLS.
    pub fn tls_config(&self) -> Option<TlsConfig> {
        self.launch.tls.as_ref().map(TlsFiles::client_config)
    }

    /// The `etcd.auth` config of the root user, when auth is enabled.
    pub fn auth_config(&self) -> Option<AuthConfig> {
        self.auth.clone()
    }

    /// A client connected to this server (with the test client certificate
    /// and the root user when they apply), built as a node builds its own,
    /// with timeouts short enough that a test against a dead server fails
    /// instead of hanging.
    pub async fn client(&self) -> Result<etcd_client::Client, TestingError> {
        let config = EtcdConfig {
            endpoints: vec![self.endpoint()],
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            tls: self.tls_config(),
            auth: self.auth_config(),
            ..EtcdConfig::default()
        };
        Ok(crate::etcd::connect(&config).await?)
    }

    /// Adds user `root` with `password` and turns etcd's auth on; from then
    /// on the kit's own clients and etcdctl calls log in as root.
    fn enable_auth(&mut self, password: &str) -> Result<(), TestingError> {
        self.etcdctl(&["user", "add", "root", "--new-user-password", password])?;
        self.etcdctl(&["user", "grant-role", "root", "root"])?;
        self.etcdctl(&["auth", "enable"])?;
        self.auth = Some(AuthConfig {
            user: "root".to_owned(),
            password: Some(password.to_owned()),
            password_file: None,
        });
        Ok(())
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
            .arg(format!("--endpoints={}", self.url()));
        if let Some(tls) = &self.launch.tls {
            command
                .arg(format!("--cacert={}", tls.ca_file.display()))
                .arg(format!("--cert={}", tls.client_cert_file.display()))
                .arg(format!("--key={}", tls.client_key_file.display()));
        }
        if let Some(auth) = &self.auth {
            // The password apart, so one with a ':' is not cut.
            command.arg(format!("--user={}", auth.user)).arg(format!(
                "--password={}",
                auth.password.as_deref().unwrap_or_default()
            ));
        }
        command.args(args).stdin(Stdio::null());
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

    /// etcd's Prometheus metric `name` (summed over its label sets), read
    /// from `/metrics` on the client port: for example
    /// `etcd_debugging_mvcc_watch_stream_total`, the watch streams open.
    /// Plaintext servers only.
    pub async fn metric(&self, name: &str) -> Result<f64, TestingError> {
        let endpoint = self.endpoint();
        let unreadable = |message: String| TestingError::MetricsUnreadable {
            endpoint: endpoint.clone(),
            message,
        };
        if self.launch.tls.is_some() {
            return Err(unreadable("the server speaks TLS".into()));
        }
        let text = http_get_text(&endpoint, "/metrics")
            .await
            .map_err(|error| unreadable(error.to_string()))?;
        metric_sum(&text, name).ok_or_else(|| unreadable(format!("no metric {name}")))
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
        let whom = format!("etcd on {}", self.endpoint());
        if self.killed {
            return Err(TestingError::NotRunning {
                what: format!("sending SIG{name} to {whom}"),
            });
        }
        send_signal(self.child.id(), name, &whom)
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
        super::last_lines(&text, 20)
    }
}

/// How to start a test etcd: [`EtcdServer::options`], then the builder
/// methods, then [`start`](Self::start). Plain by default.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    client_port: Option<u16>,
    tls: bool,
    root_password: Option<String>,
    auth_token_ttl: Option<u64>,
}

impl EtcdOptions {
    /// Serves clients over TLS only (`https://`), with a CA, a server
    /// certificate for 127.0.0.1 and localhost, and a client certificate
    /// generated into the temporary directory, and requires a client
    /// certificate signed by that CA (`--client-cert-auth`). See
    /// [`EtcdServer::tls_files`] and [`EtcdServer::tls_config`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Turns etcd's auth on once it serves, with user `root` and `password`.
    /// See [`EtcdServer::auth_config`].
    pub fn auth(mut self, password: &str) -> Self {
        self.root_password = Some(password.to_owned());
        self
    }

    /// etcd's `--auth-token-ttl`: how long, in seconds, a client's auth token
    /// lives without being used (etcd's default is 300).
    pub fn auth_token_ttl(mut self, seconds: u64) -> Self {
        self.auth_token_ttl = Some(seconds);
        self
    }

    /// Serves clients on `port` (see [`EtcdServer::start_on`]).
    pub fn client_port(mut self, port: u16) -> Self {
        self.client_port = Some(port);
        self
    }

    /// Starts the server and waits until it serves requests (and, with
    /// [`auth`](Self::auth), until auth is on).
    pub async fn start(self) -> Result<EtcdServer, TestingError> {
        EtcdServer::start_with(&self).await
    }
}

/// The scheme of the client URLs: `https` when etcd serves TLS.
fn scheme(tls: &Option<TlsFiles>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

fn etcdctl_spawn_error(error: std::io::Error) -> TestingError {
    match error.kind() {
        std::io::ErrorKind::NotFound => TestingError::EtcdctlNotInstalled,
        _ => io("starting etcdctl")(error),
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) etcd too, so no thaw first. A
        // killed one is already reaped, and std sends nothing to it again.
        let _ = self.child.kill();
        // Reaping it means its sockets are closed before drop returns.
        let _ = self.child.wait();
    }
}

/// The body of a plain `GET path` on `endpoint` (HTTP/1.0, so the body
/// ends where the connection does).
async fn http_get_text(endpoint: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned()))
}

/// The sum of metric `name`'s samples in the Prometheus text `text`.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
