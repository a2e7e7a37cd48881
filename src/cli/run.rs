//! `standin run`: a node serving the built-in roles through the library's [`NodeServer`], with the metrics port and systemd's notifications.

use std::net::SocketAddr;

use anyhow::Context;
use standin::service::idle::{Idle, idle_role};
use standin::service::kv::Kv;
use standin::service::server::NodeServer;
use standin::service::tso::Tso;
use standin::{Config, Node};

use super::{Failure, stop_signal, usage};

/// The roles `standin run` can serve.
pub const BUILT_IN_ROLES: &[&str] = &["tso", "kv"];

/// What `standin run` was asked for.
pub struct RunArgs {
    pub roles: Vec<String>,
    pub idle_roles: usize,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub fault_injection: bool,
}

/// Runs the node until SIGTERM or Ctrl-C, then hands its roles over.
pub async fn run(mut config: Config, args: RunArgs) -> Result<(), Failure> {
    for role in &args.roles {
        if !BUILT_IN_ROLES.contains(&role.as_str()) {
            return Err(usage(anyhow::anyhow!(
                "unknown role {role:?}; built-in roles: {}",
                BUILT_IN_ROLES.join(", ")
            )));
        }
    }
    let listen = match args.listen {
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
    let advertised = match args.advertise.or_else(|| config.node.address.clone()) {
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
    let metrics = match args.metrics {
        Some(address) => Some(standin::telemetry::install_prometheus(address)?),
        None => None,
    };
    let mut server = NodeServer::bind(&config, listen, args.fault_injection)
        .await
        .map_err(|error| match error {
            standin::service::server::ServerError::BindFailed { .. } => Failure::from(error),
            other => usage(other.into()),
        })?;
    let mut node = Node::new(config.clone());
    let every_built_in = args.roles.is_empty() && args.idle_roles == 0;
    let runs = |role: &str| every_built_in || args.roles.iter().any(|r| r == role);
    if runs("tso") {
        let tso = node.add_role("tso", Tso::new(config.tso.clone()))?;
        server.add_tso(&config, tso);
    }
    if runs("kv") {
        let kv = node.add_role("kv", Kv::new(config.kv.clone()))?;
        server.add_kv(&config, kv);
    }
    for index in 0..args.idle_roles {
        node.add_role(&idle_role(index), Idle)?;
    }
    node.start().await.context("starting the node")?;
    if let Some(metrics) = &metrics {
        metrics.report(node.health_report());
    }
    let server_id = node.server_id().unwrap_or_default();
    notify_systemd(&format!(
        "READY=1\nSTATUS=server {server_id} serving gRPC on {listen}"
    ));
    let stopping = async {
        stop_signal().await;
        notify_systemd("STOPPING=1\nSTATUS=handing the roles over");
    };
    server.serve(node, stopping).await?;
    tracing::info!("stopped");
    Ok(())
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
