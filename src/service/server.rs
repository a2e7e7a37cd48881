//! standin's gRPC server as the `server` config section says: TLS, bounded connections and streams, and a deadline on a connection that says nothing.
//!
//! `standin run` builds its server here, and an embedder serving its own
//! tonic services next to standin's can too:
//! `server::builder(&config.server)?.layer(AuthLayer::new(policy))`, then
//! `serve_with_incoming_shutdown(server::incoming(listener, &config.server.limits), ...)`.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig as TonicTlsConfig};

use crate::config::{ConfigError, ServerConfig, ServerLimits, read_named_file};

/// How often an idle HTTP/2 connection is pinged, so a peer that vanished
/// (host down, cable cut) releases its streams instead of holding them.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes of HTTP/2's connection preface (or more, a TLS ClientHello):
/// a connection that sent that many has started talking.
const PREFACE_BYTES: usize = 24;

/// How often the refusal of connections over the cap is logged, at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

mod standard;

pub use standard::{DRAIN_BOUND, NodeServer};

/// Failures building, binding or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file of `server.tls` could not be read.
    #[error(transparent)]
    FileUnreadable(ConfigError),
    /// `server.auth` could not be read.
    #[error(transparent)]
    AuthUnreadable(#[from] crate::service::grpc::auth::AuthError),
    /// Fault injection asked for off loopback, with nothing to tell callers apart.
    #[error(
        "--fault-injection on {listen}, which is not loopback, needs callers to authenticate: \
         set server.auth.tokensFile, or server.tls.clientCaFile with \
         server.auth.allowedSubjects (else anyone who reaches the port can crash this node's actors)"
    )]
    FaultInjectionExposed {
        /// Where the server would listen.
        listen: std::net::SocketAddr,
    },
    /// Fault injection was asked for, but this build has no `fault-injection` feature.
    #[error(
        "fault injection was asked for, but standin was built without its fault-injection feature"
    )]
    FaultInjectionNotBuilt,
    /// The address could not be bound.
    #[error("listening for gRPC on {listen}")]
    BindFailed {
        /// The address.
        listen: std::net::SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server stopped with an error.
    #[error("serving gRPC on {listen}")]
    ServeFailed {
        /// The address.
        listen: std::net::SocketAddr,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server's task panicked.
    #[error("the gRPC server task failed: {0}")]
    ServerTaskFailed(String),
    /// The certificate or key of `server.tls` is not usable.
    #[error(
        "server.tls: the certificate or key is not usable (PEM certificate chain and its private key expected): {0}"
    )]
    TlsRejected(#[source] tonic::transport::Error),
}

/// A tonic server builder with `config`'s TLS and limits applied; add the
/// [`AuthLayer`](crate::service::AuthLayer) and the services to it.
pub fn builder(config: &ServerConfig) -> Result<Server, ServerError> {
    let mut server = Server::builder()
        .max_concurrent_streams(Some(config.limits.max_streams_per_connection))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls(config, config.limits.handshake_timeout)? {
        server = server.tls_config(tls).map_err(ServerError::TlsRejected)?;
    }
    Ok(server)
}

/// tonic's TLS settings for `server.tls`, the files read; `None` for plaintext.
fn tls(config: &ServerConfig, handshake: Duration) -> Result<Option<TonicTlsConfig>, ServerError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let read = |key, path: &Path| read_named_file(key, path).map_err(ServerError::FileUnreadable);
    let identity = Identity::from_pem(
        read("server.tls.certFile", &tls.cert_file)?,
        read("server.tls.keyFile", &tls.key_file)?,
    );
    let mut settings = TonicTlsConfig::new().identity(identity).timeout(handshake);
    if let Some(ca) = &tls.client_ca_file {
        settings = settings
            .client_ca_root(Certificate::from_pem(read("server.tls.clientCaFile", ca)?))
            .client_auth_optional(tls.client_cert_optional);
    }
    Ok(Some(settings))
}

/// The accepted connections of `listener`, at most `limits.maxConnections`
/// at once, each closed if it sends nothing within `limits.handshakeTimeout`.
///
/// Nagle's algorithm is off: tonic applies its own `tcp_nodelay` default
/// only to listeners it binds, and with Nagle on, a small answer written
/// while the client's ACK of the previous one is delayed waits for it (40
/// ms on Linux), which showed up as a 40-50 ms tail on answers.
pub fn incoming(listener: TcpListener, limits: &ServerLimits) -> GuardedIncoming {
    GuardedIncoming {
        inner: TcpIncoming::from(listener).with_nodelay(Some(true)),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        max_connections: limits.max_connections,
        handshake_timeout: limits.handshake_timeout,
        refused: 0,
        last_logged: None,
    }
}

/// The stream [`incoming`] returns.
pub struct GuardedIncoming {
    inner: TcpIncoming,
    slots: Arc<Semaphore>,
    max_connections: usize,
    handshake_timeout: Duration,
    /// Connections refused since the last log line about them.
    refused: u64,
    last_logged: Option<Instant>,
}

impl GuardedIncoming {
    fn note_refusal(&mut self, peer: Option<std::net::SocketAddr>) {
        self.refused += 1;
        metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED).increment(1);
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            tracing::warn!(
                peer = ?peer,
                refused = self.refused,
                "closed connections over server.limits.maxConnections ({}) as they came",
                self.max_connections
            );
            self.refused = 0;
            self.last_logged = Some(Instant::now());
        }
    }
}

impl Stream for GuardedIncoming {
    type Item = io::Result<GuardedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let stream = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return Poll::Ready(Some(Ok(GuardedStream {
                        inner: stream,
                        _slot: slot,
                        silence: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
                        heard: 0,
                    })));
                }
                // Dropping the stream closes it: the client learns at once.
                Err(_) => self.note_refusal(stream.peer_addr().ok()),
            }
        }
    }
}

/// An accepted connection holding one of the server's connection slots.
pub struct GuardedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Armed until the first [`PREFACE_BYTES`] arrive: a connection silent
    /// past it ends.
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read while `silence` is armed.
    heard: usize,
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(silence) = self.silence.as_mut() else {
            return read;
        };
        if read.is_pending() {
            if silence.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not start talking within server.limits.handshakeTimeout",
                )));
            }
        } else {
            self.heard += buf.filled().len() - before;
            if self.heard >= PREFACE_BYTES {
                self.silence = None;
            }
        }
        read
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
