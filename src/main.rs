//! The `standin` command line: run a node with the built-in roles, and inspect, steer and use a deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use standin::etcd::inspect::{self, RoleSummary};
use standin::etcd::session::Layout;
use standin::service::client::{KvClient, LeaderWatch, TsoClient};
use standin::service::connect::NodeConnector;
use standin::service::grpc::auth::{AuthLayer, Policy};
use standin::service::grpc::coordination::CoordinationService;
use standin::service::grpc::faults::FaultService;
use standin::service::grpc::health::HealthService;
use standin::service::grpc::kv::KvService;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::coordination_server::CoordinationServer;
use standin::service::grpc::proto::faults_server::FaultsServer;
use standin::service::grpc::proto::kv_server::KvServer;
use standin::service::grpc::proto::tso_server::TsoServer;
use standin::service::grpc::proto::{ResignRequest, StatusRequest};
use standin::service::grpc::routing::ActiveOnlyLayer;
use standin::service::grpc::tso::TsoService;
use standin::service::kv::Kv;
use standin::service::server::incoming;
use standin::service::tso::Tso;
use standin::{Config, Node};

/// The roles `standin run` can serve.
const BUILT_IN_ROLES: &[&str] = &["tso", "kv"];

#[derive(Parser)]
#[command(
    version = standin::telemetry::BUILD,
    about = "standin: active-standby coordinators on an etcd lease"
)]
struct Cli {
    /// The YAML configuration (see config/standin.yaml); STANDIN_* variables override it.
    #[arg(long, global = true, default_value = "config/standin.yaml")]
    config: PathBuf,
    /// One-shot commands (status, resign, tso, and watch until it first
    /// reads etcd) give up after this long when etcd or a node does not answer.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node serving the built-in roles over gRPC, until SIGTERM or Ctrl-C.
    Run {
        /// A role to run (repeatable); all built-in roles when absent.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Where the gRPC server listens; node.address when absent.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The address published for clients (NAT, containers); node.address, else --listen, when absent.
        #[arg(long)]
        advertise: Option<String>,
        /// Where Prometheus scrapes /metrics: PORT (on 127.0.0.1) or HOST:PORT
        /// (0.0.0.0:PORT exposes it on every interface); no exporter when absent.
        #[arg(long, value_parser = metrics_address)]
        metrics: Option<SocketAddr>,
        /// Serve the Faults gRPC service, which makes actors crash on request (tests only).
        #[arg(long)]
        fault_injection: bool,
    },
    /// Every role's leader and standbys, from etcd.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the leader of ROLE to hand it over gracefully: to whoever is next, or to a chosen standby.
    Resign {
        /// The role.
        role: String,
        /// Hand the role to this standby: its server ID or the address it publishes.
        #[arg(long, value_parser = transfer_target)]
        to: Option<standin::TransferTarget>,
    },
    /// Print leader changes as they happen.
    Watch {
        /// Only this role.
        role: Option<String>,
    },
    /// Allocate timestamps from the tso role through the failover-following client.
    Tso {
        /// Timestamps per allocation.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Keep allocating, checking order and reporting each failover ridden through.
        #[arg(long = "loop")]
        repeat: bool,
        /// With --loop: stop after this long (until Ctrl-C when absent).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Give up on one allocation after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Put or get a key of the kv role (the built-in register) through the failover-following client.
    Kv {
        #[command(subcommand)]
        op: KvOp,
        /// Give up on the call after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
    /// Parse and validate the configuration, then print the effective timings.
    CheckConfig,
    /// Exits 0 when the node answers and each of its roles holds a live etcd
    /// session (leading or not): a container health check, a readiness probe.
    Probe {
        /// The node's gRPC address; node.address (else 127.0.0.1:19530) when absent.
        #[arg(long)]
        address: Option<String>,
        /// Only ask that the process answers: a liveness probe, which an
        /// etcd outage must not fail (restarting the node would not help).
        #[arg(long)]
        live: bool,
    },
}

#[derive(Subcommand)]
enum KvOp {
    /// Sets KEY to VALUE (UTF-8); prints the epoch that persisted it.
    Put { key: String, value: String },
    /// Prints KEY's value (lossily as UTF-8) and the epoch that answered.
    Get { key: String },
}

/// A failure with the exit code it deserves: 2 for what the person must fix
/// in how they called us, 1 for what went wrong while running.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node logs what it does; a one-shot command's output is its answer,
    // and its failure one line, so its retries stay quiet unless RUST_LOG asks.
    let default_filter = match cli.command {
        Command::Run { .. } => "info",
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A coordinator's panic is taken over only once the hook returns.
    standin::telemetry::install_panic_hook();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("standin: {}", describe(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

/// The error and its causes on one line, each said once: many library
/// errors already include their cause's text.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let config = load_config(&cli.config)?;
    let timeout = cli.timeout;
    match cli.command {
        Command::Run {
            roles,
            listen,
            advertise,
            metrics,
            fault_injection,
        } => run(config, roles, listen, advertise, metrics, fault_injection).await,
        Command::Status { json } => within(timeout, &config, status(&config, json)).await,
        Command::Resign { role, to } => resign(&config, &role, to, timeout).await,
        Command::Watch { role } => watch(&config, role, timeout).await,
        Command::Tso {
            count,
            repeat,
            duration,
            deadline,
        } => tso(&config, count, repeat, duration, deadline, timeout).await,
        Command::Kv { op, deadline } => kv(&config, op, deadline, timeout).await,
        Command::Probe { address, live } => probe(&config, address, live, timeout).await,
        Command::CheckConfig => {
            let session = &config.session;
            println!(
                "{}: ok (ttl {:?}, keepalive every {:?}, renew deadline {:?})",
                cli.config.display(),
                session.ttl,
                session.keepalive_interval(),
                session.renew_deadline()
            );
            Ok(())
        }
    }
}

/// `--metrics`: a port alone binds loopback, so metrics leave the host
/// only when an address says so.
fn metrics_address(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is neither a port nor HOST:PORT"))
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    if !path.exists() {
        return Err(usage(anyhow::anyhow!(
            "config file {} not found: pass --config FILE (config/standin.yaml documents every key)",
            path.display()
        )));
    }
    Config::load_with_env(path, std::env::vars()).map_err(|error| usage(error.into()))
}

async fn run(
    mut config: Config,
    roles: Vec<String>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    metrics: Option<SocketAddr>,
    fault_injection: bool,
) -> Result<(), Failure> {
    for role in &roles {
        if !BUILT_IN_ROLES.contains(&role.as_str()) {
            return Err(usage(anyhow::anyhow!(
                "unknown role {role:?}; built-in roles: {}",
                BUILT_IN_ROLES.join(", ")
            )));
        }
    }
    let listen = match listen {
        Some(listen) => listen,
        None => config.node.advertised().parse().map_err(|error| {
            usage(anyhow::anyhow!(
                "node.address {:?} is not a socket address to listen on ({error}); pass --listen",
                config.node.advertised()
            ))
        })?,
    };
    // Clients must reach the address published: the one asked for, else the
    // one configured, else the one listened on, unless that is every interface.
    let advertised = match advertise.or_else(|| config.node.address.clone()) {
        Some(advertised) => advertised,
        None if listen.ip().is_unspecified() => {
            return Err(usage(anyhow::anyhow!(
                "--listen {listen} is an unspecified address, which cannot be published: \
                 peers and clients would dial their own host; pass --advertise HOST:PORT or \
                 set node.address (STANDIN_NODE_ADDRESS) to an address they reach: the \
                 host's own IP, or in Kubernetes the pod IP (status.podIP through the \
                 downward API)"
            )));
        }
        None => listen.to_string(),
    };
    config.node.address = Some(advertised);
    config.validate().map_err(|error| usage(error.into()))?;
    let builder =
        standin::service::server::builder(&config.server).map_err(|error| usage(error.into()))?;
    let encrypted = config.server.tls.is_some();
    let limits = config.server.limits.clone();
    let policy = Policy::from_config(&config.server.auth)
        .map_err(|error| usage(error.into()))?
        .listening_on(listen);
    if policy.writes_need_credentials() && !config.server.auth.has_credentials() {
        tracing::warn!(
            %listen,
            "kv Put and tso Allocate are refused to every caller: this node listens off \
             loopback and no credential is configured; set server.auth.tokensFile (and \
             client.tokenFile for clients), or server.auth.anonymousWrites: true"
        );
    }
    // Validation ties allowedSubjects to a client CA, so credentials mean
    // callers that can be told apart.
    if fault_injection && !listen.ip().is_loopback() && !config.server.auth.has_credentials() {
        return Err(usage(anyhow::anyhow!(
            "--fault-injection on {listen}, which is not loopback, needs callers to \
             authenticate: set server.auth.tokensFile, or server.tls.clientCaFile with \
             server.auth.allowedSubjects (else anyone who reaches the port can crash this \
             node's actors)"
        )));
    }
    if !encrypted && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "serving gRPC in plaintext on an address that is not loopback: anyone on the \
             network can read the traffic; set server.tls.certFile and server.tls.keyFile"
        );
    }
    if let Some(metrics) = metrics {
        standin::telemetry::install_prometheus(metrics)?;
    }
    let tso_config = config.tso.clone();
    let kv_config = config.kv.clone();
    let call_timeout = config.etcd.request_timeout;
    let resign_timeout = config.handover_bound();
    // Bound before the node joins the election: a port in use fails here.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for gRPC on {listen}"))?;
    let mut node = Node::new(config);
    // Every built-in role when none is named.
    let runs = |role: &str| roles.is_empty() || roles.iter().any(|r| r == role);
    let tso = runs("tso")
        .then(|| node.add_role("tso", Tso::new(tso_config.clone())))
        .transpose()?;
    let register = runs("kv")
        .then(|| node.add_role("kv", Kv::new(kv_config)))
        .transpose()?;
    node.start().await.context("starting the node")?;
    let server_id = node.server_id().unwrap_or_default();
    tracing::info!(server_id, %listen, "serving gRPC");

    let max_request = limits.max_request_bytes;
    let health = HealthService::new(node.roles())
        .into_server()
        .max_decoding_message_size(max_request);
    let coordination = CoordinationService::new(
        server_id,
        node.address().to_owned(),
        node.roles(),
        resign_timeout,
    );
    let oracle = tso.map(|tso| {
        tower::ServiceBuilder::new()
            .layer(ActiveOnlyLayer::new(tso.clone()))
            .service(
                TsoServer::new(TsoService::new(tso, tso_config.max_count, call_timeout))
                    .max_decoding_message_size(max_request),
            )
    });
    let register = register.map(|kv| {
        tower::ServiceBuilder::new()
            .layer(ActiveOnlyLayer::new(kv.clone()))
            .service(
                KvServer::new(KvService::new(kv, call_timeout))
                    .max_decoding_message_size(max_request),
            )
    });
    let faults = fault_injection.then(|| {
        tracing::warn!("fault injection is on: any client can crash this node's actors");
        FaultsServer::new(FaultService::new(node.roles())).max_decoding_message_size(max_request)
    });
    let (stop_server, server_stops) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        builder
            .layer(AuthLayer::new(policy))
            .add_service(health)
            .add_service(
                CoordinationServer::new(coordination).max_decoding_message_size(max_request),
            )
            .add_optional_service(oracle)
            .add_optional_service(register)
            .add_optional_service(faults)
            .serve_with_incoming_shutdown(incoming(listener, &limits), async {
                let _ = server_stops.await;
            }),
    );
    notify_systemd(&format!(
        "READY=1\nSTATUS=server {server_id} serving gRPC on {listen}"
    ));
    let failed_early = tokio::select! {
        _ = stop_signal() => None,
        served = &mut server => Some(served),
    };
    // The roles are handed over first, while the server still answers (and
    // sends clients to the successor); streams end once their role stops.
    tracing::info!("handing the roles over");
    notify_systemd("STOPPING=1\nSTATUS=handing the roles over");
    node.shutdown().await;
    if let Some(served) = failed_early {
        served
            .context("the gRPC server task")?
            .with_context(|| format!("serving gRPC on {listen}"))?;
        return Ok(());
    }
    let _ = stop_server.send(());
    match tokio::time::timeout(DRAIN_BOUND, &mut server).await {
        Ok(served) => served
            .context("the gRPC server task")?
            .with_context(|| format!("serving gRPC on {listen}"))?,
        Err(_) => {
            tracing::warn!(
                "gRPC requests still open {} after the handover; closing them",
                humantime::format_duration(DRAIN_BOUND)
            );
            server.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long `standin run` waits, once its roles are handed over, for open
/// gRPC requests and streams to finish before it closes them.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Tells systemd how the service is (`READY=1`, `STOPPING=1`), when it
/// started this process as a `Type=notify` service: it passes the socket
/// to write to in `NOTIFY_SOCKET` (a path, or `@` and an abstract name).
fn notify_systemd(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(socket_path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        match socket_path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &address)
            }
            None => socket.send_to(state.as_bytes(), &socket_path),
        }
    });
    if let Err(error) = sent {
        tracing::warn!(
            "telling systemd {:?} through NOTIFY_SOCKET failed: {error}",
            state.lines().next().unwrap_or_default()
        );
    }
}

/// `standin probe`: the node at `address` answers its `Status` and,
/// unless `live`, every role it runs holds a lease (a live etcd session).
async fn probe(
    config: &Config,
    address: Option<String>,
    live: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let address = address.unwrap_or_else(|| config.node.advertised().to_owned());
    let connector = NodeConnector::from_config(config).map_err(|error| usage(error.into()))?;
    let ask = async {
        let channel = connector.connect(&address).await?;
        let status = CoordinationClient::new(channel)
            .status(StatusRequest {})
            .await?
            .into_inner();
        Ok::<_, anyhow::Error>(status)
    };
    let status = match tokio::time::timeout(timeout, ask).await {
        Ok(answered) => answered.with_context(|| format!("asking the node at {address}"))?,
        Err(_) => {
            return Err(anyhow::anyhow!(
                "the node at {address} did not answer within {}",
                humantime::format_duration(timeout)
            )
            .into());
        }
    };
    let roles: Vec<String> = status
        .roles
        .iter()
        .map(|role| format!("{} {}", role.role, role.state))
        .collect();
    if !live {
        let without: Vec<&str> = status
            .roles
            .iter()
            .filter(|role| role.lease_id == 0 || role.state == "stopped")
            .map(|role| role.role.as_str())
            .collect();
        if status.roles.is_empty() || !without.is_empty() {
            return Err(anyhow::anyhow!(
                "server {} at {address} answers, but holds no live etcd session for: {} \
                 (etcd unreachable, or the node is stopping)",
                status.server_id,
                if without.is_empty() {
                    "any role".to_owned()
                } else {
                    without.join(", ")
                }
            )
            .into());
        }
    }
    println!(
        "ok: server {} at {address} ({})",
        status.server_id,
        roles.join(", ")
    );
    Ok(())
}

/// Runs one step of a one-shot command, failing with one line that names
/// the endpoints when it does not finish within `timeout`.
async fn within<T>(
    timeout: Duration,
    config: &Config,
    step: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, step).await {
        Ok(done) => done,
        Err(_) => Err(anyhow::anyhow!(
            "no answer within {} from etcd at {} (or from the node it names): check \
             etcd.endpoints (ETCD_ENDPOINTS) and that etcd runs, or pass a longer --timeout",
            humantime::format_duration(timeout),
            config.etcd.endpoints.join(",")
        )
        .into()),
    }
}

async fn etcd_client(config: &Config) -> Result<etcd_client::Client, Failure> {
    Ok(standin::etcd::connect_checked(&config.etcd).await?)
}

async fn role_summaries(config: &Config) -> Result<Vec<RoleSummary>, Failure> {
    let client = etcd_client(config).await?;
    let layout = Layout::new(&config.etcd.root_path);
    Ok(inspect::roles(&client, &layout).await?)
}

async fn status(config: &Config, json: bool) -> Result<(), Failure> {
    let roles = role_summaries(config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&roles)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>6}  {:<22} {:>8}  {:<10}  STANDBYS",
        "ROLE", "LEADER", "ADDRESS", "EPOCH", "STATE"
    );
    for role in roles {
        let standbys: Vec<_> = role
            .standbys
            .iter()
            .map(|s| format!("{}@{} ({})", s.server_id, s.address, s.state))
            .collect();
        let [id, address, epoch, state] = match &role.leader {
            Some(leader) => [
                leader.server_id.to_string(),
                leader.address.clone(),
                leader.epoch.to_string(),
                leader.state.to_string(),
            ],
            None => ["-".into(), "-".into(), "-".into(), "none".into()],
        };
        println!(
            "{:<14} {id:>6}  {address:<22} {epoch:>8}  {state:<10}  {}",
            role.role,
            standbys.join(", ")
        );
        for problem in &role.corrupt {
            println!("  corrupt value: {problem}");
        }
    }
    Ok(())
}

/// The summary of `role`, or an error naming the roles etcd knows.
fn find_role<'a>(roles: &'a [RoleSummary], role: &str) -> Result<&'a RoleSummary, Failure> {
    roles.iter().find(|r| r.role == role).ok_or_else(|| {
        let known: Vec<_> = roles.iter().map(|r| r.role.as_str()).collect();
        usage(anyhow::anyhow!(
            "unknown role {role:?}; roles in etcd: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })
}

fn transfer_target(value: &str) -> Result<standin::TransferTarget, String> {
    value.parse()
}

async fn resign(
    config: &Config,
    role: &str,
    to: Option<standin::TransferTarget>,
    timeout: Duration,
) -> Result<(), Failure> {
    let roles = within(timeout, config, role_summaries(config)).await?;
    let Some(leader) = &find_role(&roles, role)?.leader else {
        return Err(anyhow::anyhow!("nobody leads {role} right now").into());
    };
    let channel = NodeConnector::from_config(config)
        .map_err(|error| usage(error.into()))?
        .connect(&leader.address)
        .await?;
    let mut coordination = CoordinationClient::new(channel);
    let answer = coordination
        .resign(ResignRequest {
            role: role.to_owned(),
            to: to
                .as_ref()
                .map(standin::TransferTarget::as_arg)
                .unwrap_or_default(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("asking {} to hand {role} over", leader.address))?
        .into_inner();
    match to {
        None => println!(
            "{role}: server {} at {} resigned (epoch {}); a standby takes over",
            leader.server_id, leader.address, leader.epoch
        ),
        Some(_) => println!(
            "{role}: server {} at {} handed the role to server {} at {} (epoch {} ended)",
            leader.server_id, leader.address, answer.server_id, answer.address, leader.epoch
        ),
    }
    Ok(())
}

async fn watch(config: &Config, role: Option<String>, timeout: Duration) -> Result<(), Failure> {
    let summaries = within(timeout, config, role_summaries(config)).await?;
    let roles = match role {
        Some(role) => {
            find_role(&summaries, &role)?;
            vec![role]
        }
        None => summaries.into_iter().map(|r| r.role).collect(),
    };
    if roles.is_empty() {
        return Err(anyhow::anyhow!("no roles in etcd under {}", config.etcd.root_path).into());
    }
    let client = etcd_client(config).await?;
    let _steering = standin::etcd::steer(&client, &config.etcd);
    let layout = Layout::new(&config.etcd.root_path);
    let (lines, mut printed) = tokio::sync::mpsc::unbounded_channel();
    let mut watches = Vec::new();
    for role in roles {
        let follower =
            LeaderWatch::start(client.clone(), &layout, &role, config.etcd.retry.initial);
        let mut changes = follower.subscribe();
        let lines = lines.clone();
        watches.push(follower);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let leader = changes.borrow_and_update().clone();
                let shown = leader.as_ref().map(|l| {
                    (
                        l.session.server_id,
                        l.session.address.clone(),
                        l.revision,
                        l.session.state,
                    )
                });
                if last.as_ref() != Some(&shown) {
                    let line = match &shown {
                        Some((id, address, epoch, state)) => {
                            format!("{role}: leader {id} at {address}, epoch {epoch}, {state}")
                        }
                        None => format!("{role}: no leader"),
                    };
                    if lines.send(line).is_err() {
                        return;
                    }
                    last = Some(shown);
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    drop(lines);
    let started = Instant::now();
    loop {
        tokio::select! {
            line = printed.recv() => match line {
                Some(line) => println!("[{:8.3}s] {line}", started.elapsed().as_secs_f64()),
                None => return Ok(()),
            },
            _ = stop_signal() => return Ok(()),
        }
    }
}

async fn tso(
    config: &Config,
    count: u32,
    repeat: bool,
    duration: Option<Duration>,
    deadline: Duration,
    timeout: Duration,
) -> Result<(), Failure> {
    let connect = async { Ok(TsoClient::connect(config).await?) };
    let client = within(timeout, config, connect).await?;
    if !repeat {
        let batch = within(timeout.max(deadline), config, async {
            Ok(client.allocate(count, deadline).await?)
        })
        .await?;
        println!(
            "first={} count={} epoch={}",
            batch.first, batch.count, batch.epoch
        );
        return Ok(());
    }
    let started = Instant::now();
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
    loop {
        let batch = tokio::select! {
            _ = &mut stop => break,
            batch = client.allocate(count, deadline) => batch?,
        };
        let now = Instant::now();
        let batch_last = batch.first + u64::from(batch.count) - 1;
        if last.is_none() {
            println!(
                "[{:8.3}s] first batch: first={} epoch {}",
                started.elapsed().as_secs_f64(),
                batch.first,
                batch.epoch
            );
        }
        if let Some((previous, epoch, at)) = last {
            if batch.first <= previous {
                violations += 1;
                println!(
                    "VIOLATION: timestamp {} after {previous}: not increasing",
                    batch.first
                );
            }
            if batch.epoch != epoch {
                failovers += 1;
                let gap = now - at;
                max_gap = max_gap.max(gap);
                println!(
                    "[{:8.3}s] failover: epoch {epoch} -> {}, gap {:.1} ms, timestamps still increasing: {}",
                    started.elapsed().as_secs_f64(),
                    batch.epoch,
                    gap.as_secs_f64() * 1000.0,
                    batch.first > previous
                );
            }
        }
        allocations += 1;
        last = Some((batch_last, batch.epoch, now));
    }
    println!(
        "tso: allocations={allocations} failovers={failovers} max_gap_ms={:.1} violations={violations}",
        max_gap.as_secs_f64() * 1000.0
    );
    if violations > 0 {
        return Err(anyhow::anyhow!("{violations} timestamps did not increase").into());
    }
    Ok(())
}

async fn kv(
    config: &Config,
    op: KvOp,
    deadline: Duration,
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
            println!("put {key} epoch={}", put.epoch);
        }
        KvOp::Get { key } => {
            let got = within(bound, config, async {
                Ok(client.get(&key, deadline).await?)
            })
            .await?;
            match got.value {
                Some(value) => println!(
                    "{key}={} epoch={}",
                    String::from_utf8_lossy(&value),
                    got.epoch
                ),
                None => println!("{key} is not set (epoch={})", got.epoch),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::metrics_address;

    #[test]
    fn a_metrics_port_alone_binds_loopback_and_an_address_is_taken_as_given() {
        assert_eq!(
            metrics_address("9100").unwrap().to_string(),
            "127.0.0.1:9100"
        );
        assert_eq!(
            metrics_address("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            metrics_address("[::1]:9100").unwrap().to_string(),
            "[::1]:9100"
        );
        let error = metrics_address("metrics").unwrap_err();
        assert!(error.contains("neither a port nor HOST:PORT"), "{error}");
    }
}
