//! The server `standin run` runs, for any node: standin's services for the node's roles, your services beside them, the auth layer and limits from config, and a drain that hands the roles over before the server closes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use super::{ServerError, builder, incoming};
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::node::Node;
use crate::role::RoleHandle;
use crate::service::grpc::auth::{AuthLayer, Policy};
use crate::service::grpc::coordination::CoordinationService;
#[cfg(feature = "fault-injection")]
use crate::service::grpc::faults::FaultService;
use crate::service::grpc::health::HealthService;
use crate::service::grpc::kv::KvService;
use crate::service::grpc::proto::coordination_server::CoordinationServer;
#[cfg(feature = "fault-injection")]
use crate::service::grpc::proto::faults_server::FaultsServer;
use crate::service::grpc::proto::kv_server::KvServer;
use crate::service::grpc::proto::tso_server::TsoServer;
use crate::service::grpc::routing::ActiveOnlyLayer;
use crate::service::grpc::tso::TsoService;
use crate::service::kv::Kv;
use crate::service::tso::Tso;

/// How long, once the roles are handed over, open requests and streams
/// get to finish before the server closes them.
pub const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// The gRPC server of one node: `Coordination` and health for its roles
/// (and `Faults` when asked), the services added for its roles, each
/// answering only while its role leads here, behind the auth layer.
///
/// ```no_run
/// # async fn example(mut node: standin::Node, config: standin::Config) -> Result<(), Box<dyn std::error::Error>> {
/// use standin::service::server::NodeServer;
///
/// let tso = node.add_role("tso", standin::service::Tso::new(config.tso.clone()))?;
/// // Bound before the node joins the election: a port in use fails here.
/// let mut server = NodeServer::bind(&config, "127.0.0.1:19530".parse()?, false).await?;
/// server.add_tso(&config, tso);
/// node.start().await?;
/// server.serve(node, tokio::signal::ctrl_c().map(|_| ())).await?;
/// # Ok(()) }
/// # use futures::FutureExt;
/// ```
pub struct NodeServer {
    server: tonic::transport::Server,
    listener: TcpListener,
    listen: SocketAddr,
    config: Config,
    policy: Policy,
    #[cfg(feature = "fault-injection")]
    fault_injection: bool,
    routes: RoutesBuilder,
}

impl NodeServer {
    /// Checks `config.server` against the address: refuses fault injection
    /// off loopback without credentials (anyone reaching the port could
    /// crash the node's actors), warns about plaintext off loopback and
    /// about writes nobody may make; then binds `listen`, so that a port in
    /// use fails before the node joins the election.
    pub async fn bind(
        config: &Config,
        listen: SocketAddr,
        fault_injection: bool,
    ) -> Result<Self, ServerError> {
        let policy = Policy::from_config(&config.server.auth)?.listening_on(listen);
        let credentials = config.server.auth.has_credentials();
        if fault_injection && !cfg!(feature = "fault-injection") {
            return Err(ServerError::FaultInjectionNotBuilt);
        }
        if fault_injection && !listen.ip().is_loopback() && !credentials {
            return Err(ServerError::FaultInjectionExposed { listen });
        }
        if policy.writes_need_credentials() && !credentials {
            tracing::warn!(
                %listen,
                "kv Put and tso Allocate are refused to every caller: this node listens off \
                 loopback and no credential is configured; set server.auth.tokensFile (and \
                 client.tokenFile for clients), or server.auth.anonymousWrites: true"
            );
        }
        if config.server.tls.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "serving gRPC in plaintext on an address that is not loopback: anyone on the \
                 network can read the traffic; set server.tls.certFile and server.tls.keyFile"
            );
        }
        // Built here, so that a bad certificate fails before the bind.
        let server = builder(&config.server)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::BindFailed { listen, source })?;
        Ok(Self {
            server,
            listener,
            listen,
            config: config.clone(),
            policy,
            #[cfg(feature = "fault-injection")]
            fault_injection,
            routes: RoutesBuilder::default(),
        })
    }

    /// The address the server listens on (the port chosen, when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.listen)
    }

    /// Adds `service`, answered only while `role` leads on this node
    /// (elsewhere `UNAVAILABLE` naming the leader, see [`ActiveOnlyLayer`]).
    pub fn add_role_service<C, S>(&mut self, role: RoleHandle<C>, service: S) -> &mut Self
    where
        C: Coordinator,
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let layered = tower::ServiceBuilder::new()
            .layer(ActiveOnlyLayer::new(role))
            .service(service);
        self.routes.add_service(layered);
        self
    }

    /// Adds the built-in timestamp oracle's `Tso` service for `tso`.
    pub fn add_tso(&mut self, config: &Config, tso: RoleHandle<Tso>) -> &mut Self {
        let service = TsoServer::new(TsoService::new(
            tso.clone(),
            config.tso.max_count,
            config.etcd.request_timeout,
        ))
        .max_decoding_message_size(config.server.limits.max_request_bytes);
        self.add_role_service(tso, service)
    }

    /// Adds the built-in register's `Kv` service for `kv`.
    pub fn add_kv(&mut self, config: &Config, kv: RoleHandle<Kv>) -> &mut Self {
        let service = KvServer::new(KvService::new(kv.clone(), config.etcd.request_timeout))
            .max_decoding_message_size(config.server.limits.max_request_bytes);
        self.add_role_service(kv, service)
    }

    /// Serves `node` (started) until `shutdown` resolves or the server
    /// fails; then hands the node's roles over while the server still
    /// answers (so clients are sent to the successors), and closes it once
    /// its open requests finish, at most [`DRAIN_BOUND`] later.
    pub async fn serve(
        self,
        node: Node,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let max_request = self.config.server.limits.max_request_bytes;
        let server_id = node.server_id().unwrap_or_default();
        let health = HealthService::new(node.roles())
            .into_server()
            .max_decoding_message_size(max_request);
        let coordination = CoordinationService::new(
            server_id,
            node.address().to_owned(),
            node.roles(),
            self.config.handover_bound(),
        );
        let (stop_server, server_stops) = tokio::sync::oneshot::channel::<()>();
        let limits = self.config.server.limits.clone();
        let listen = self.listen;
        let router = self
            .server
            .layer(AuthLayer::new(self.policy))
            .add_routes(self.routes.routes())
            .add_service(health)
            .add_service(
                CoordinationServer::new(coordination).max_decoding_message_size(max_request),
            );
        #[cfg(feature = "fault-injection")]
        let router = router.add_optional_service(self.fault_injection.then(|| {
            tracing::warn!("fault injection is on: any client can crash this node's actors");
            FaultsServer::new(FaultService::new(node.roles()))
                .max_decoding_message_size(max_request)
        }));
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(
            incoming(self.listener, &limits),
            async {
                let _ = server_stops.await;
            },
        ));
        tracing::info!(server_id, %listen, "serving gRPC");
        let failed_early = tokio::select! {
            _ = shutdown => None,
            served = &mut server => Some(served),
        };
        tracing::info!("handing the roles over");
        node.shutdown().await;
        let served = match failed_early {
            Some(served) => served,
            None => {
                let _ = stop_server.send(());
                match tokio::time::timeout(DRAIN_BOUND, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!(
                            "gRPC requests still open {} after the handover; closing them",
                            humantime::format_duration(DRAIN_BOUND)
                        );
                        server.abort();
                        return Ok(());
                    }
                }
            }
        };
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ServerError::ServeFailed { listen, source }),
            Err(panicked) => Err(ServerError::ServerTaskFailed(panicked.to_string())),
        }
    }
}
