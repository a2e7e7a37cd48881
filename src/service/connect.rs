//! Channels to standin nodes as the `client` config section says: TLS, a client certificate, and a bearer token on every call.

use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tonic::body::Body;
use tonic::transport::channel::ResponseFuture;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::Service;

use crate::config::{CLIENT_TLS, Config, ConfigError, read_secret};

/// Failures preparing a connection to a node.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A file the `client` section names could not be read.
    #[error(transparent)]
    FileUnreadable(ConfigError),
    /// The token file's contents cannot be sent as a header (a control
    /// character, or empty); the error never shows them.
    #[error(
        "config key `client.tokenFile`: the token in {path} is empty or holds characters a header cannot carry"
    )]
    TokenUnusable {
        /// The token file.
        path: std::path::PathBuf,
    },
    /// A node's address does not make a URI.
    #[error("the node address {address:?} is not host:port: {source}")]
    BadAddress {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The node did not accept a connection (or the TLS handshake failed).
    #[error("connecting to the node at {address}: {source}")]
    ConnectFailed {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Makes channels to nodes with the client's TLS and token; cheap to clone.
#[derive(Clone)]
pub struct NodeConnector {
    tls: Option<ClientTlsConfig>,
    authorization: Option<HeaderValue>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for NodeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConnector")
            .field("tls", &self.tls.is_some())
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl NodeConnector {
    /// A connector for `config.client`, its files read now; connections
    /// are bounded by `etcd.connectTimeout`.
    pub fn from_config(config: &Config) -> Result<Self, ConnectError> {
        let tls = config
            .client
            .tls
            .as_ref()
            .map(|tls| tls.client_tls(&CLIENT_TLS))
            .transpose()
            .map_err(ConnectError::FileUnreadable)?;
        let authorization = match &config.client.token_file {
            None => None,
            Some(path) => {
                let token =
                    read_secret("client.tokenFile", path).map_err(ConnectError::FileUnreadable)?;
                let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
                    .ok()
                    .filter(|_| !token.trim().is_empty())
                    .ok_or_else(|| ConnectError::TokenUnusable { path: path.clone() })?;
                // Kept out of HPACK's tables and out of debug output.
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            tls,
            authorization,
            connect_timeout: config.etcd.connect_timeout,
        })
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, ConnectError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let bad = |source| ConnectError::BadAddress {
            address: address.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(bad)?
            .connect_timeout(self.connect_timeout);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        Ok(endpoint)
    }

    /// A channel to `address` that connects on first use.
    pub fn lazy(&self, address: &str) -> Result<NodeChannel, ConnectError> {
        Ok(self.wrap(self.endpoint(address)?.connect_lazy()))
    }

    /// A channel to `address`, connected now.
    pub async fn connect(&self, address: &str) -> Result<NodeChannel, ConnectError> {
        let channel = self.endpoint(address)?.connect().await.map_err(|source| {
            ConnectError::ConnectFailed {
                address: address.to_owned(),
                source,
            }
        })?;
        Ok(self.wrap(channel))
    }

    fn wrap(&self, channel: Channel) -> NodeChannel {
        NodeChannel {
            channel,
            authorization: self.authorization.clone(),
            deadline: None,
        }
    }
}

/// A channel to one node that sends the client's token with every call;
/// generated clients take it as they take a [`Channel`].
#[derive(Clone)]
pub struct NodeChannel {
    channel: Channel,
    authorization: Option<HeaderValue>,
    deadline: Option<std::time::Instant>,
}

impl NodeChannel {
    /// This channel, telling the server (`grpc-timeout`) that each call's
    /// caller waits until `deadline`: a call still queued there when it
    /// passes is dropped rather than served for nobody.
    pub fn until(mut self, deadline: std::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl Service<http::Request<Body>> for NodeChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        if let Some(deadline) = self.deadline {
            crate::service::grpc::set_caller_wait(request.headers_mut(), deadline);
        }
        self.channel.call(request)
    }
}
