//! Connecting to etcd with the configured timeouts, TLS and credentials, and retrying an etcd call with backoff.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tonic::Code;

use crate::backoff::Backoff;
use crate::config::{ConfigError, ETCD_TLS, EtcdConfig};
use crate::etcd::session::Layout;

/// Failures to reach etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client could not be built from the configured endpoints, or etcd
    /// did not answer it.
    #[error("cannot connect to etcd at {endpoints:?}: {source}")]
    ConnectFailed {
        /// The endpoints from `etcd.endpoints`.
        endpoints: Vec<String>,
        /// Why the client could not be built or got no answer.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer within `etcd.connectAttempts` tries.
    #[error(
        "etcd at {endpoints:?} did not answer after {attempts} attempt(s) \
         (etcd.connectAttempts); the last error: {source}{hint}"
    )]
    Unreachable {
        /// The endpoints from `etcd.endpoints`.
        endpoints: Vec<String>,
        /// How many tries were made.
        attempts: u32,
        /// Why the last try failed.
        #[source]
        source: etcd_client::Error,
        /// A likely cause, when the error suggests one; empty otherwise.
        hint: &'static str,
    },
    /// etcd refused the credentials (or their absence, or their rights):
    /// not retried, since trying again cannot change the answer.
    #[error("etcd at {endpoints:?}: authentication failed for {user}: {source}")]
    AuthFailed {
        /// The endpoints from `etcd.endpoints`.
        endpoints: Vec<String>,
        /// `user "name"` from `etcd.auth.user`, or `a client without credentials`.
        user: String,
        /// etcd's refusal.
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS or password file could not be read when the client was built.
    #[error(transparent)]
    FileUnreadable(ConfigError),
}

impl EtcdError {
    /// Whether trying again cannot help.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            EtcdError::AuthFailed { .. } | EtcdError::FileUnreadable(_)
        )
    }
}

/// etcd's default minimum interval between client pings.
const ETCD_MIN_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Builds a client for the configured endpoints, with TLS and credentials
/// when configured. Without credentials the client connects lazily, so an
/// unreachable etcd shows up on the first call, where callers retry; with
/// them it authenticates at once. [`connect_checked`] also proves etcd answers.
pub async fn connect(config: &EtcdConfig) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(config.request_timeout)
        // Without HTTP/2 keepalives a silently dropped link would only be
        // noticed when a request times out.
        // etcd closes connections that ping more often than its
        // --grpc-keepalive-min-time (5 s by default).
        .with_keep_alive(
            ETCD_MIN_PING_INTERVAL.max(config.request_timeout),
            config.request_timeout,
        )
        .with_keep_alive_while_idle(true)
        // A member that has lost its raft leader then refuses a call at once
        // ("no leader") instead of holding it until the request timeout,
        // so a retry (on another member) comes early.
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        options = options.with_tls(
            tls.client_tls(&ETCD_TLS)
                .map_err(EtcdError::FileUnreadable)?,
        );
    }
    if let Some(auth) = &config.auth {
        // etcd expires a token its client has not used for --auth-token-ttl
        // (300s by default), and a standby can be idle far longer: its lease
        // keepalives and watches are streams, which do not use the token.
        // Without the refresh every call after that fails with "invalid auth
        // token", so the standby could never take over (the Milvus failure).
        let password = auth.password().map_err(EtcdError::FileUnreadable)?;
        options = options
            .with_user(auth.user.as_str(), password)
            .with_auto_token_refresh(true);
    }
    let endpoints: Vec<_> = config
        .endpoints
        .iter()
        .map(|endpoint| endpoint_url(endpoint, config.tls.is_some()))
        .collect();
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| refused_or_failed(config, source))
}

/// Connects (see [`connect`]) and proves that etcd answers, with a read of
/// the server-ID key under `etcd.rootPath`, which also proves the user may
/// read standin's keys. Retries with the `etcd.retry` backoff, each failure
/// logged, up to `etcd.connectAttempts` tries (0: forever). A refused
/// authentication is not retried.
pub async fn connect_checked(config: &EtcdConfig) -> Result<Client, EtcdError> {
    let probe = Layout::new(&config.root_path).server_id();
    let what = format!("reaching etcd at {:?}", config.endpoints);
    let tried = retry_bounded(
        &what,
        Backoff::new(config.retry.clone()),
        config.connect_attempts,
        EtcdError::is_permanent,
        || async {
            let client = connect(config).await?;
            let options = GetOptions::new().with_keys_only();
            client
                .kv_client()
                .get(probe.as_str(), Some(options))
                .await
                .map_err(|source| refused_or_failed(config, source))?;
            Ok(client)
        },
    )
    .await;
    match tried {
        Ok(client) => Ok(client),
        Err(GaveUp {
            attempts,
            last: EtcdError::ConnectFailed { endpoints, source },
        }) => Err(EtcdError::Unreachable {
            hint: hint(config, &source),
            endpoints,
            attempts,
            source,
        }),
        Err(GaveUp { last, .. }) => Err(last),
    }
}

/// `endpoint` with its scheme: as written, or `https://` with TLS and
/// `http://` without.
pub(crate) fn endpoint_url(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Sorts etcd's answer into a refusal of the credentials, not worth a
/// retry, and any other failure.
fn refused_or_failed(config: &EtcdConfig, source: etcd_client::Error) -> EtcdError {
    let endpoints = config.endpoints.clone();
    if !is_auth_refusal(&source) {
        return EtcdError::ConnectFailed { endpoints, source };
    }
    let user = match &config.auth {
        Some(auth) => format!("user {:?}", auth.user),
        None => "a client without credentials (etcd.auth is not set)".to_owned(),
    };
    EtcdError::AuthFailed {
        endpoints,
        user,
        source,
    }
}

/// Whether etcd refused the caller rather than failed to answer: wrong
/// user or password, no credentials where auth is on, credentials where it
/// is off, or a user without rights on the keys.
fn is_auth_refusal(error: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return false;
    };
    let message = status.message();
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ) || message.contains("authentication")
        || message.contains("user name is empty")
}

/// The likely cause of a failure to reach etcd, for the error message.
fn hint(config: &EtcdConfig, error: &etcd_client::Error) -> &'static str {
    // The client reports a TLS mismatch as a bare transport error, which does
    // not point at TLS by itself: a plaintext client that etcd's TLS port
    // accepts, or a TLS client without the certificate etcd requires, sees
    // the connection dropped; a failed handshake names TLS.
    // Squeezed, so `broken pipe` matches `BrokenPipe` too.
    let text: String = format!("{error:?}")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mentions = |needles: &[&str]| needles.iter().any(|needle| text.contains(needle));
    let dropped = mentions(&[
        "brokenpipe",
        "connectionclosed",
        "connectionreset",
        "h2protocol",
    ]);
    let handshake = mentions(&["tls", "certificate", "handshake", "closenotify"]);
    match &config.tls {
        None if dropped => {
            " (etcd accepted the connection and dropped it: if it serves TLS, set etcd.tls)"
        }
        Some(tls) if tls.cert_file.is_none() && (dropped || handshake) => {
            " (etcd dropped the TLS connection: if it requires client certificates \
             (--client-cert-auth), set etcd.tls.certFile and etcd.tls.keyFile)"
        }
        Some(_) if dropped || handshake => {
            " (the TLS connection failed: check etcd.tls.caFile and etcd.tls.domain against \
             etcd's certificate, and that etcd trusts the client certificate)"
        }
        _ => "",
    }
}

/// How a bounded retry ended without success.
#[derive(Debug)]
pub(crate) struct GaveUp<E> {
    /// How many tries were made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last: E,
}

/// Runs `call` until it succeeds, up to `attempts` tries (0: no bound),
/// logging each failure with the wait before the next try; stops at once on
/// a failure that `permanent` says no retry can cure.
pub(crate) async fn retry_bounded<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    attempts: u32,
    permanent: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, GaveUp<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tried = 0u32;
    loop {
        tried = tried.saturating_add(1);
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if permanent(&error) || (attempts != 0 && tried >= attempts) => {
                tracing::warn!(attempt = tried, "{what} failed, giving up: {error}");
                return Err(GaveUp {
                    attempts: tried,
                    last: error,
                });
            }
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    attempt = tried,
                    max_attempts = attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    "{what} failed, etcd unreachable or refusing: {error}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Runs a call whose failure is survivable, bounded by `timeout`; logs a
/// failure naming `what` (which says why it is survivable). Returns its
/// answer, if it succeeded.
pub(crate) async fn best_effort<T>(
    what: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Option<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(error)) => {
            tracing::warn!("{what} failed: {error}");
            None
        }
        Err(_) => {
            tracing::warn!("{what} timed out after {timeout:?}");
            None
        }
    }
}
