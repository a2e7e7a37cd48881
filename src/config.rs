//! The node's configuration: YAML with camelCase keys and `STANDIN_*` environment overrides, every key defaulted, impossible values rejected.

mod builder;
mod env;
mod explain;
pub mod kv;
mod locate;
pub mod tso;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_norway::{Mapping, Value};

pub use builder::ConfigBuilder;
use env::{Schema, apply_env};
pub use explain::{Setting, Source};
pub use kv::KvConfig;
use locate::{Origin, Seg, plain_scalar, show_path};
pub use tso::TsoConfig;

/// etcd's smallest lease TTL. etcd silently raises a shorter requested TTL to
/// its minimum, so the renew deadline derived from a shorter configured TTL
/// would not match the lease etcd actually keeps.
const MIN_TTL: Duration = Duration::from_secs(2);

/// etcd's largest lease TTL (`MaxLeaseTTL`); a grant above it fails.
const MAX_TTL_SECS: u64 = 9_000_000_000;

/// The most keys a reload page may ask for: each page holds etcd's read of
/// its range for as long as it takes.
const MAX_PAGE_SIZE: i64 = 1_000_000;

/// Bounds on the bytes a reload page aims at: below, a large prefix takes
/// too many pages (each walks the keys left); above, one response holds too
/// much memory at once.
const PAGE_BYTES: std::ops::RangeInclusive<u64> = (64 << 10)..=(256 << 20);

/// `reload.concurrentLoads`: at least one, and not so many that a node
/// starting thousands of roles floods etcd with whole reads.
const CONCURRENT_LOADS: std::ops::RangeInclusive<usize> = 1..=1024;

/// `etcd.watchStreams` and `reload.watchStreams`: at least one stream, and
/// not so many that a node's watches stop sharing them.
const WATCH_STREAMS: std::ops::RangeInclusive<usize> = 1..=64;

/// What went wrong reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFailed {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key, or a value of the wrong type.
    #[error("config key `{key}`: {message}")]
    ParseFailed {
        /// Dotted path of the bad value (`session.ttl`), or of the struct holding
        /// an unknown key; `(root)` for the document itself.
        key: String,
        /// The parser's message, with the line and column when known.
        message: String,
    },
    /// Every value parsed, but together they are impossible.
    #[error("config key `{key}` = {value}: {message}")]
    Invalid {
        /// The YAML key path of the rejected value (`session.renewDeadline`).
        key: &'static str,
        /// The rejected value, as it was read or derived.
        value: String,
        /// Why it is rejected.
        message: String,
    },
    /// A file the config names cannot be read (checked at load, so a wrong
    /// path fails the start instead of the first TLS handshake).
    #[error("config key `{key}`: cannot read {path}: {source}")]
    FileUnreadable {
        /// The YAML key path naming the file (`etcd.tls.caFile`).
        key: &'static str,
        /// The file, as configured.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// An environment override does not parse as its key's type.
    #[error("environment variable {variable}={value:?} (config key `{key}`): {message}")]
    EnvParseFailed {
        /// The variable (`STANDIN_SESSION_TTL`).
        variable: String,
        /// Its value; `<redacted>` for a password.
        value: String,
        /// Dotted path of the key it sets (`session.ttl`).
        key: String,
        /// Why the value does not parse.
        message: String,
    },
    /// A `STANDIN_*` variable that names no config key: a typo would
    /// otherwise be silently ignored.
    #[error(
        "environment variable {variable} names no config key: expected STANDIN_ and a key path \
         with `_` between segments, such as STANDIN_ETCD_ROOT_PATH or STANDIN_SESSION_TTL"
    )]
    UnknownEnvVar {
        /// The variable.
        variable: String,
    },
    /// Two variables of the same precedence set one key, so which wins would
    /// depend on the order of the environment.
    #[error("environment variables {first} and {second} both set config key `{key}`")]
    EnvConflict {
        /// One of the variables.
        first: String,
        /// The other.
        second: String,
        /// Dotted path of the key both set.
        key: String,
    },
    /// A value set by an environment variable parsed but is rejected; says
    /// which variable, since the file may show a different value.
    #[error("{source} (set by environment variable {variable})")]
    InvalidFromEnv {
        /// The variable that set the rejected value.
        variable: String,
        /// The rejection.
        #[source]
        source: Box<ConfigError>,
    },
}

/// The whole configuration of one node.
///
/// Besides the sections below, any other top-level key is a role's section
/// (`rootcoord: {activeStandby: {enabled: false}}`, as Milvus has them),
/// read into [`Config::roles`]. The `Serialize` and `Deserialize` impls
/// handle both; the derived code, which knows only the sections, is kept as
/// the associated functions `Config::serialize` / `Config::deserialize`
/// (serde's `remote = "Self"`) for them to build on.
///
/// # Environment overrides
///
/// [`Config::from_yaml_str_with_env`] and [`Config::load_with_env`] apply
/// variables on top of the file; a variable wins over the file.
///
/// - `STANDIN_` and the key path with `_` between segments, each camelCase
///   segment in any case, with or without `_` between its words:
///   `STANDIN_SESSION_TTL=5s`, `STANDIN_ETCD_ROOT_PATH` or
///   `STANDIN_ETCD_ROOTPATH`, `STANDIN_ETCD_RETRY_MAX`,
///   `STANDIN_ETCD_AUTH_PASSWORD`, `STANDIN_ROOTCOORD_ACTIVE_STANDBY_ENABLED`.
///   Lists are comma-separated (`STANDIN_ETCD_ENDPOINTS=a:2379,b:2379`); an
///   empty value unsets an optional key. An unknown `STANDIN_` variable is
///   an error, so a typo is not silently ignored.
/// - Milvus's names: `ETCD_ENDPOINTS` (comma-separated) and
///   `<ROLE>_ENABLE_ACTIVE_STANDBY`, the role being the name's role part
///   lowercased without `_` (`ROOT_COORD_ENABLE_ACTIVE_STANDBY=false` is role
///   `rootcoord`'s switch). A `STANDIN_` variable for the same key wins.
///
/// A value that does not parse is an error naming the variable, its value
/// and the key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(
    remote = "Self",
    deny_unknown_fields,
    default,
    rename_all = "camelCase"
)]
pub struct Config {
    /// How to reach etcd and where standin's keys live in it.
    pub etcd: EtcdConfig,
    /// This node's identity as clients see it.
    pub node: NodeConfig,
    /// The lease every role's session and leadership hang on.
    pub session: SessionConfig,
    /// How the user's coordinator is activated, stopped and restarted.
    pub coordinator: CoordinatorConfig,
    /// How a role's metadata is loaded before its coordinator serves.
    pub reload: ReloadConfig,
    /// The timestamp oracle's settings. The section also takes the `tso`
    /// role's `activeStandby` switch, which is read into [`Config::roles`].
    pub tso: TsoConfig,
    /// The register's quotas. The section also takes the `kv` role's
    /// `activeStandby` switch, which is read into [`Config::roles`].
    pub kv: KvConfig,
    /// standin's own gRPC server (`standin run`): TLS, and who may steer the node.
    pub server: ServerConfig,
    /// How clients (the CLI, `RoleClient`) reach standin's gRPC servers: TLS
    /// and the token they present, so one file configures both sides.
    pub client: ClientConfig,
    /// Per-role settings by role name, from the top-level role sections (and
    /// `tso.activeStandby` for the `tso` role). A role without a section has
    /// the defaults: read them through [`Config::role`].
    #[serde(skip)]
    pub roles: BTreeMap<String, RoleConfig>,
}

/// One role's settings: the top-level section named after the role.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct RoleConfig {
    /// Whether standbys may wait behind the active instance.
    pub active_standby: ActiveStandbyConfig,
    /// This node's leader priority for the role (0 by default; PD's leader
    /// priority): a leader hands the role over to a ready standby of
    /// strictly higher priority once it has stood by for
    /// `session.transferHoldoff`, so a preferred node that restarts gets
    /// its role back, once; equal priorities never move leadership.
    pub leader_priority: i32,
}

/// The keys of a role section, which a built-in role's section takes too.
const ROLE_KEYS: [&str; 2] = [ACTIVE_STANDBY, "leaderPriority"];

/// Milvus's `activeStandby` switch of a role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ActiveStandbyConfig {
    /// `true` (the default): any number of nodes run the role, one active,
    /// the others standing by. `false`: the role is exclusive, and a node
    /// refuses to start it while another instance leads it, as Milvus does
    /// for a coordinator without active-standby. A check at start, not a
    /// lock: two exclusive nodes starting at the same instant can both pass,
    /// and then one of them stands by.
    pub enabled: bool,
}

impl Default for ActiveStandbyConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// How to reach etcd and where standin's keys live in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct EtcdConfig {
    /// etcd endpoints, `host:port`. The client balances across them, so list
    /// every member to survive the loss of one.
    pub endpoints: Vec<String>,
    /// Prefix of every key standin writes (`{rootPath}/election/...`), so
    /// several standin deployments can share one etcd cluster. No leading or
    /// trailing `/`: keys are built by joining segments with `/`.
    pub root_path: String,
    /// Bound on establishing a connection to an endpoint.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on one etcd request, so a hung etcd cannot stall a keepalive or a
    /// fenced write past the renew deadline unnoticed.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Delay between attempts while etcd is unreachable: short at first to
    /// recover quickly from a blip, capped so a long outage is not hammered.
    #[serde(deserialize_with = "etcd_retry")]
    pub retry: BackoffConfig,
    /// Tries to reach etcd at start (connect and a first read) before the
    /// node gives up, `etcd.retry` apart; 0 retries forever. Bounded by
    /// default so a wrong endpoint or credential fails the start visibly
    /// instead of hanging it.
    pub connect_attempts: u32,
    /// The gRPC watch streams the node's election watches share, 1..=64:
    /// every role's follower of its election and the waits of transfers,
    /// however many roles the node runs. More than one by default because
    /// etcd buffers 128 responses per stream and retries the watches it
    /// could not send into a full buffer only every 10 ms: a node that
    /// leads hundreds of roles and dies sends each survivor a burst of that
    /// size.
    pub watch_streams: usize,
    /// TLS to etcd; `None` talks plaintext.
    pub tls: Option<TlsConfig>,
    /// etcd user and password; `None` when etcd's auth is off.
    pub auth: Option<AuthConfig>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            root_path: "standin".to_owned(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(3),
            retry: BackoffConfig {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
            connect_attempts: 10,
            watch_streams: 4,
            tls: None,
            auth: None,
        }
    }
}

/// TLS to etcd. Endpoints without a scheme are dialled as `https://`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM file of the CA that signed etcd's server certificate. Required:
    /// the client is built without the system's roots.
    pub ca_file: PathBuf,
    /// PEM client certificate, for an etcd run with `--client-cert-auth`;
    /// set with `keyFile` or not at all.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `certFile`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name etcd's certificate is checked against, when it differs from
    /// the endpoint's host (a certificate for `etcd.internal` reached by IP).
    #[serde(default)]
    pub domain: Option<String>,
}

/// etcd user and password. The password is given one way: in the YAML
/// (`password`), in `STANDIN_ETCD_AUTH_PASSWORD`, or in a file
/// (`passwordFile`), which keeps it out of the config file altogether.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// The etcd user; it needs read and write access to `{rootPath}/`.
    pub user: String,
    /// Its password; set this or `passwordFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password (one trailing newline is ignored), read
    /// each time the node connects to etcd; set this or `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The password: `password`, or the contents of `passwordFile` without
    /// its trailing newline.
    /// The error names the key: the file that cannot be read, or the
    /// password that is not set (validation refuses that earlier).
    pub fn password(&self) -> Result<String, ConfigError> {
        match (&self.password, &self.password_file) {
            (Some(password), _) => Ok(password.clone()),
            (None, Some(path)) => read_secret("etcd.auth.passwordFile", path),
            (None, None) => Err(ConfigError::Invalid {
                key: "etcd.auth.password",
                value: "~".to_owned(),
                message: "must be set, or etcd.auth.passwordFile".to_owned(),
            }),
        }
    }
}

/// The bytes of a file the config names at `key`; the error names the key.
pub(crate) fn read_named_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::FileUnreadable {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The keys of a [`TlsConfig`], wherever it sits.
pub(crate) struct TlsKeys {
    pub(crate) cert: &'static str,
    pub(crate) key: &'static str,
    pub(crate) ca: &'static str,
    pub(crate) domain: &'static str,
}

/// The keys of `etcd.tls`.
pub(crate) const ETCD_TLS: TlsKeys = TlsKeys {
    cert: "etcd.tls.certFile",
    key: "etcd.tls.keyFile",
    ca: "etcd.tls.caFile",
    domain: "etcd.tls.domain",
};

/// The keys of `client.tls`.
pub(crate) const CLIENT_TLS: TlsKeys = TlsKeys {
    cert: "client.tls.certFile",
    key: "client.tls.keyFile",
    ca: "client.tls.caFile",
    domain: "client.tls.domain",
};

impl TlsConfig {
    /// tonic's client TLS settings, the files read; errors name the keys
    /// of the section this sits in.
    pub(crate) fn client_tls(
        &self,
        keys: &TlsKeys,
    ) -> Result<tonic::transport::ClientTlsConfig, ConfigError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let ca = Certificate::from_pem(read_named_file(keys.ca, &self.ca_file)?);
        let mut settings = ClientTlsConfig::new().ca_certificate(ca);
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            settings = settings.identity(Identity::from_pem(
                read_named_file(keys.cert, cert)?,
                read_named_file(keys.key, key)?,
            ));
        }
        if let Some(domain) = &self.domain {
            settings = settings.domain_name(domain.as_str());
        }
        Ok(settings)
    }
}

/// A secret kept in the file the config names at `key`: its text without
/// the line end an editor adds.
pub(crate) fn read_secret(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = String::from_utf8(read_named_file(key, path)?).map_err(|_| {
        ConfigError::FileUnreadable {
            key,
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        }
    })?;
    Ok(text
        .strip_suffix('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .unwrap_or(&text)
        .to_owned())
}

// By hand, so the password never reaches a log line that prints the config.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// standin's own gRPC server: TLS, and who may call what.
///
/// Without `tls`, the server talks plaintext; on an address other than
/// loopback it then warns at start. Without `auth` credentials, `Resign`
/// and `Faults` are answered only for callers on loopback.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ServerConfig {
    /// TLS on the gRPC port; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Who may resign a role or inject faults, and whether reads need a caller too.
    pub auth: ServerAuthConfig,
    /// Bounds that keep a flood of connections or streams from one client
    /// from starving the others.
    pub limits: ServerLimits,
}

/// Bounds on what clients may hold open on standin's gRPC server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ServerLimits {
    /// Connections open at once; one more is closed as soon as it is
    /// accepted, so file descriptors and memory stay bounded.
    pub max_connections: usize,
    /// Calls and streams open at once on one connection (HTTP/2's
    /// `MAX_CONCURRENT_STREAMS`); a client wanting more waits for one to end.
    pub max_streams_per_connection: u32,
    /// A connection that has not sent its first bytes within this, or not
    /// finished its TLS handshake, is closed: one that connects and sends
    /// nothing holds no slot for long.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The largest request message decoded, in bytes; a larger one is
    /// refused with `OUT_OF_RANGE` as soon as its length is read.
    pub max_request_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: DEFAULT_STREAMS_PER_CONNECTION,
            handshake_timeout: Duration::from_secs(10),
            max_request_bytes: 4 << 20,
        }
    }
}

/// TLS on standin's gRPC port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents.
    pub cert_file: PathBuf,
    /// PEM private key of `certFile`.
    pub key_file: PathBuf,
    /// PEM CA that client certificates are checked against (mutual TLS).
    /// Unset, clients present none.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `clientCaFile`: whether a client may connect without a
    /// certificate (and then authenticate with a token, or only read).
    /// `false` (the default) refuses such a client in the TLS handshake.
    #[serde(default)]
    pub client_cert_optional: bool,
}

/// Who may call what on standin's gRPC API.
///
/// `Resign` and `Faults.Inject` need an authenticated caller: a bearer token
/// listed in `tokensFile`, or a client certificate (verified against
/// `server.tls.clientCaFile`) whose subject is in `allowedSubjects`. With
/// neither configured, only callers on loopback may make them, and only
/// while the server listens on loopback (or `trustLoopback` is set). Off
/// loopback, kv `Put` and tso `Allocate` need a token or a verified
/// certificate too, unless `anonymousWrites` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ServerAuthConfig {
    /// A file of bearer tokens, one `name:token` per line (`#` starts a
    /// comment). The name is what logs and refusals show; the token never
    /// is. Read at start, so tokens are never in the YAML itself.
    pub tokens_file: Option<PathBuf>,
    /// Client-certificate subjects allowed to resign and inject faults:
    /// each matches a certificate's common name (`operator`) or its whole
    /// subject as printed (`CN=operator, O=Example`).
    pub allowed_subjects: Vec<String>,
    /// Whether every call needs an authenticated caller (a listed token, or
    /// any client certificate the CA verified), not only `Resign` and
    /// `Faults`. `false` (the default): `Status`, `WatchLeader`, health,
    /// `Tso` and `Kv` answer any client that passed TLS.
    pub authenticate_reads: bool,
    /// Whether anonymous callers may make calls that change state (kv
    /// `Put`, tso `Allocate`) when the server listens off loopback. `false`
    /// (the default): off loopback they need a listed token or a verified
    /// client certificate, so whoever reaches the port cannot fill etcd or
    /// push the oracle ahead of the clock. On loopback they are open anyway.
    pub anonymous_writes: bool,
    /// Whether callers on loopback are trusted as authenticated (steer,
    /// write) whatever the server listens on. `false` (the default): only
    /// while the server listens on loopback and no credential is
    /// configured, since behind a sidecar or a port-forward every caller
    /// looks like loopback.
    pub trust_loopback: bool,
}

impl ServerAuthConfig {
    /// Whether any credential is configured, so that loopback alone no
    /// longer admits a caller.
    pub fn has_credentials(&self) -> bool {
        self.tokens_file.is_some() || !self.allowed_subjects.is_empty()
    }
}

/// How clients reach standin's gRPC servers: the same `TlsConfig` shape as
/// `etcd.tls`, and a token file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ClientConfig {
    /// TLS to the nodes; `None` talks plaintext. `certFile`/`keyFile` is the
    /// client certificate for a server with `clientCaFile`.
    pub tls: Option<TlsConfig>,
    /// A file holding the bearer token to present (one trailing newline is
    /// ignored): a token of a server's `server.auth.tokensFile`.
    pub token_file: Option<PathBuf>,
    /// Calls one role's client has out at once; more wait for a slot until
    /// their deadline, in the client, where waiting costs the leader
    /// nothing. The default is the server's default
    /// `server.limits.maxStreamsPerConnection`, what one connection carries.
    pub max_in_flight: usize,
    /// Once the leader refuses calls as overloaded (`RESOURCE_EXHAUSTED`),
    /// the client sends at most this percentage of the calls the leader
    /// accepted in the last 10 s and refuses the rest itself (adaptive
    /// throttling, K = percent / 100). 0 turns it off; otherwise at least 100.
    pub throttle_percent: u32,
}

/// `server.limits.maxStreamsPerConnection` unless set, and so
/// `client.maxInFlight`: what one connection carries.
pub const DEFAULT_STREAMS_PER_CONNECTION: u32 = 128;
/// `client.throttlePercent` unless set: K = 2, as Google's SRE book advises.
pub const DEFAULT_THROTTLE_PERCENT: u32 = 200;

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            tls: None,
            token_file: None,
            max_in_flight: DEFAULT_STREAMS_PER_CONNECTION as usize,
            throttle_percent: DEFAULT_THROTTLE_PERCENT,
        }
    }
}

/// This node's identity as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct NodeConfig {
    /// The address clients reach this node at, `host:port`, published in the
    /// session so clients can find whichever node is active. Unset,
    /// `standin run` publishes the address it listens on, and an embedded
    /// node [`DEFAULT_NODE_ADDRESS`]. Set it where clients reach the node
    /// by another address than it listens on (NAT, containers).
    pub address: Option<String>,
    /// Where this node's death witness listens, `host:port` (port 0: any
    /// free port). Unset: the host of [`address`](Self::address), on port
    /// [`DEFAULT_WITNESS_PORT`] when that host is not loopback (a container
    /// or firewall must let a fixed port through), else on any free port
    /// (several nodes on one host, as in tests and demos). Peers that stand by for a role this node leads hold a
    /// connection to it; see `session.deathWitness`.
    pub witness_address: Option<String>,
    /// The witness address published to peers, when they reach it by
    /// another address than it listens on. It must reach this process's
    /// own socket: a proxy or balancer in between that refuses connections
    /// by itself would make peers believe this node died. Unset: the
    /// address it listens on (with the host of `address` if it listens on
    /// every interface).
    pub witness_advertised_address: Option<String>,
    /// A file holding the cluster's witness secret (at least 16 bytes; one
    /// trailing newline ignored), the same on every node. With it, a
    /// watcher and a witness each prove they hold it (HMAC-SHA256 over
    /// fresh nonces) before a connection is held or a greeting believed:
    /// strangers are closed within seconds, and no one without the secret
    /// can pass for another incarnation. Unset: the unauthenticated greeting
    /// of older versions, fit for loopback; off loopback the node warns.
    pub witness_secret_file: Option<PathBuf>,
    /// Connections the witness holds at once; one more is closed as it
    /// arrives. Each peer that stands by for a role this node leads holds
    /// one, so the default leaves room for a thousand peers while bounding
    /// the descriptors a flood can take.
    pub witness_max_connections: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            address: None,
            witness_address: None,
            witness_advertised_address: None,
            witness_secret_file: None,
            witness_max_connections: 1024,
        }
    }
}

/// The address a node publishes when `node.address` is unset and nothing listens for it.
pub const DEFAULT_NODE_ADDRESS: &str = "127.0.0.1:19530";

/// The death witness's port when `node.witnessAddress` is unset and the
/// node's address is not loopback: the one after the API's default.
pub const DEFAULT_WITNESS_PORT: u16 = 19531;

impl NodeConfig {
    /// The address this node publishes: `address`, or [`DEFAULT_NODE_ADDRESS`].
    pub fn advertised(&self) -> &str {
        self.address.as_deref().unwrap_or(DEFAULT_NODE_ADDRESS)
    }

    /// The host of the advertised address (`127.0.0.1` if it has none).
    pub(crate) fn advertised_host(&self) -> &str {
        split_host_port(self.advertised()).map_or("127.0.0.1", |(host, _)| host)
    }

    /// Where the death witness listens: `witnessAddress`, or the host of
    /// the advertised address, on [`DEFAULT_WITNESS_PORT`] off loopback and
    /// any free port on it.
    pub fn witness_listen(&self) -> String {
        match &self.witness_address {
            Some(address) => address.clone(),
            None => {
                let host = self.advertised_host();
                let port = if validate::is_loopback_host(host) {
                    0
                } else {
                    DEFAULT_WITNESS_PORT
                };
                join_host_port(host, port)
            }
        }
    }
}

/// Splits `host:port`, the host without IPv6 brackets; `None` when the
/// address is not of that shape.
pub(crate) fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

/// `host:port`, brackets around an IPv6 host.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The lease every role's session and leadership hang on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct SessionConfig {
    /// etcd lease TTL, whole seconds, at least 2s. The longest a dead node can
    /// keep the active role before a standby takes over.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Time between lease keepalives, sent on this beat whether or not the
    /// previous ones have been answered; `None` means `ttl / 12`. Read it
    /// through [`SessionConfig::keepalive_interval`].
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
    /// How long the oldest unanswered keepalive may wait for its answer
    /// before the stream counts as broken and is opened again; also the
    /// slowest etcd round trip that still renews. `None` means `ttl / 4`.
    /// Interval plus timeout must fit twice within the renew deadline, so one
    /// keepalive can be lost and the next still renew in time. Read it
    /// through [`SessionConfig::keepalive_timeout`].
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Option<Duration>,
    /// How long after the last successful keepalive was *sent* the coordinator
    /// steps down if no renewal succeeded since; `None` means `2 * ttl / 3`.
    /// Counted from the send, not the reply, because etcd restarted the TTL no
    /// earlier than the send, so the lease lives at least `ttl` past it however
    /// slow the reply; below the TTL so this node demotes itself before etcd
    /// can expire the lease and elect another. Read it through
    /// [`SessionConfig::renew_deadline`].
    #[serde(with = "humantime_serde")]
    pub renew_deadline: Option<Duration>,
    /// How often a standby logs its STANDBY line, so operators see it is alive.
    #[serde(with = "humantime_serde")]
    pub standby_log_interval: Duration,
    /// Whether standbys watch the leader's process through its witness
    /// socket and revoke its leases the moment the kernel shows it is gone
    /// (its witness port refuses, or another process answers on it), so a
    /// killed leader costs milliseconds instead of the TTL. What the
    /// kernel cannot tell (a dead host, a partition, a frozen process)
    /// still waits for the lease.
    pub death_witness: bool,
    /// How long a refusal at a leader's witness must persist before it
    /// proves a death: the port is tried again at once and at the end of
    /// it, and a greeting of the same process at either attempt means it
    /// lives (a reset on the path, a firewall reloading its rules). Zero:
    /// the first refusal proves it.
    #[serde(with = "humantime_serde")]
    pub witness_confirm: Duration,
    /// How long a candidate that wins from a lease a witness revoked waits
    /// before it serves: a leader that was taken for dead but lives (its
    /// witness only looked refused) sees its key go through its own watch
    /// of etcd, and must have stepped down before its successor answers.
    /// Zero: serve at once.
    #[serde(with = "humantime_serde")]
    pub witness_grace: Duration,
    /// How long a standby of higher `leaderPriority` must stand ready, and
    /// the leader must have served, before the leader hands the role to it;
    /// also the least time between two such moves of a role. Keeps
    /// leadership from following a preferred node that restarts in a loop.
    #[serde(with = "humantime_serde")]
    pub transfer_holdoff: Duration,
    /// Whether the node's leaders spread evenly over the nodes: a node that
    /// leads more than its share (R roles / N nodes, rounded) hands roles to
    /// the nodes below theirs by graceful transfers, and the next in line of
    /// the roles one node leads spread over the others too, so a node that
    /// dies or leaves hands its roles to every survivor. A role whose nodes
    /// differ in `leaderPriority` follows its preference instead.
    pub spread_leaders: bool,
    /// Moves of the spread this node has under way at once, at most.
    pub spread_in_flight: usize,
    /// The least time between two moves of the spread this node starts.
    #[serde(with = "humantime_serde")]
    pub spread_pace: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            keepalive_interval: None,
            keepalive_timeout: None,
            renew_deadline: None,
            standby_log_interval: Duration::from_secs(10),
            death_witness: true,
            witness_confirm: Duration::from_millis(1),
            witness_grace: Duration::from_millis(1),
            transfer_holdoff: Duration::from_secs(10),
            spread_leaders: true,
            spread_in_flight: 4,
            spread_pace: Duration::from_millis(20),
        }
    }
}

impl SessionConfig {
    /// The keepalive interval: the configured one, or `ttl / 12`.
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive_interval.unwrap_or(self.ttl / 12)
    }

    /// The bound on one keepalive's answer: the configured one, or `ttl / 4`.
    pub fn keepalive_timeout(&self) -> Duration {
        self.keepalive_timeout.unwrap_or(self.ttl / 4)
    }

    /// How often the renew deadline is checked: a twentieth of it, between
    /// 10 ms and 250 ms, so a step-down comes at most that late.
    pub fn deadline_check_interval(&self) -> Duration {
        (self.renew_deadline() / 20).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// The renew deadline: the configured one, or `2 * ttl / 3`.
    pub fn renew_deadline(&self) -> Duration {
        // Divide last so the derived deadline is not rounded down twice.
        self.renew_deadline
            .unwrap_or_else(|| self.ttl.saturating_mul(2) / 3)
    }

    /// The TTL in whole seconds, as etcd's lease grant takes it. Exact once
    /// [`Config::validate`] has passed; saturates otherwise.
    pub fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }
}

/// How the user's coordinator is activated, stopped and restarted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct CoordinatorConfig {
    /// Requests that may wait for the coordinator: while it activates
    /// (delivered once it serves, so clients that reach it early are
    /// delayed rather than refused) and while it serves slower than they
    /// arrive. One more is refused at once (`ServeError::Overloaded`,
    /// `RESOURCE_EXHAUSTED`) instead of queued without bound. At least 1;
    /// `activationBuffer` is its old name.
    #[serde(alias = "activationBuffer")]
    pub queue_depth: usize,
    /// The most waiting requests handed to the coordinator at once
    /// (`Coordinator::handle_batch`), with one term check for all. At least 1.
    pub max_batch: usize,
    /// Bound on the user's deactivation hook, so a hung hook cannot keep a
    /// demoted coordinator from returning to standby.
    #[serde(with = "humantime_serde")]
    pub deactivate_timeout: Duration,
    /// Bound on the user's activation hook: past it the node resigns, so a
    /// hung activation cannot hold the leader key (and the role) forever.
    #[serde(with = "humantime_serde")]
    pub activate_timeout: Duration,
    /// Delay before restarting a crashed coordinator or election actor: quick
    /// after one crash, capped so a crash loop does not spin.
    #[serde(deserialize_with = "coordinator_restart_backoff")]
    pub restart_backoff: BackoffConfig,
    /// Whether every batch of answers is confirmed by etcd before it
    /// leaves: one linearizable read of the role's leader key after the
    /// batch is computed (the requests that arrive meanwhile wait for the
    /// next read, as etcd's ReadIndex batches reads), and the answers go
    /// only if the key is still this term's. A leader paused where its
    /// clock cannot tell (a VM its hypervisor stopped) or cut off from etcd
    /// then answers nothing once its key is gone, whatever its clock says;
    /// it costs an etcd round trip per batch.
    pub confirm_answers: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            queue_depth: 1000,
            max_batch: 256,
            deactivate_timeout: Duration::from_secs(2),
            activate_timeout: Duration::from_secs(30),
            restart_backoff: BackoffConfig::default(),
            confirm_answers: false,
        }
    }
}

/// How a role's metadata is loaded before its coordinator serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ReloadConfig {
    /// Whether a standby keeps a copy of the role's metadata current with a
    /// watch, so that a takeover only catches up instead of reading the
    /// whole prefix. `false` reads the prefix at every win (and holds no
    /// copy while standby).
    pub warm: bool,
    /// Bound on bringing the metadata up to date after a win (catching the
    /// warm copy up, or a full read when there is none); past it the node
    /// resigns so a peer can try.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The most keys one etcd range request asks for while reloading,
    /// 1..=1000000.
    pub page_size: i64,
    /// The bytes of keys and values one range request aims at while
    /// reloading, 64 KiB..=256 MiB: pages are sized from the entries read so
    /// far. etcd walks every key left in the prefix for each page, so few
    /// large pages read a large prefix in about linear time, where pages of
    /// a fixed thousand keys take quadratic time (minutes at a million keys).
    pub page_bytes: u64,
    /// No longer used, 1..=64: the metadata copies follow their changes on
    /// the node's one watch of its elections (`etcd.watchStreams`), whose
    /// order a win's catch-up relies on. Accepted so that existing files
    /// load; a node that finds it set to anything but 1 says so in its log.
    pub watch_streams: usize,
    /// The most warm copies the node reads whole at once, 1..=1024. A node
    /// that starts a thousand roles reads their prefixes a few at a time,
    /// instead of holding a thousand range requests and their buffers at
    /// once; a read at a win (no warm copy) does not wait for these.
    pub concurrent_loads: usize,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            warm: true,
            timeout: Duration::from_secs(30),
            page_size: 100_000,
            page_bytes: 8 << 20,
            watch_streams: 1,
            concurrent_loads: 8,
        }
    }
}

/// A capped exponential backoff: `initial`, doubled per attempt, never above `max`.
///
/// Its own default is the coordinator restart backoff (100ms, 10s). Where a
/// backoff sits in [`Config`], a key left out of its block takes that block's
/// default instead, so `etcd.retry: {max: 1s}` keeps `initial` at 200ms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct BackoffConfig {
    /// Delay before the first retry. Above zero, or retries spin.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Largest delay, at least `initial`.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// A backoff block as written, before the keys left out are filled from the
/// default of the place it sits in. `BackoffConfig`'s own container default
/// cannot do that, since it has one default for every place.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
struct BackoffOverride {
    #[serde(with = "humantime_serde")]
    initial: Option<Duration>,
    #[serde(with = "humantime_serde")]
    max: Option<Duration>,
}

impl BackoffOverride {
    fn over(self, base: BackoffConfig) -> BackoffConfig {
        BackoffConfig {
            initial: self.initial.unwrap_or(base.initial),
            max: self.max.unwrap_or(base.max),
        }
    }
}

fn etcd_retry<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BackoffConfig, D::Error> {
    Ok(BackoffOverride::deserialize(deserializer)?.over(EtcdConfig::default().retry))
}

fn coordinator_restart_backoff<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BackoffConfig, D::Error> {
    Ok(BackoffOverride::deserialize(deserializer)?
        .over(CoordinatorConfig::default().restart_backoff))
}

impl Config {
    /// Parses a YAML document and validates it, without environment
    /// overrides. An empty document (or one of only comments) is all defaults.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with_env(text, std::iter::empty())
    }

    /// Parses a YAML document, applies the environment overrides in `env`
    /// (see [the variable names](Config#environment-overrides)), and
    /// validates the result. Pass `std::env::vars()` for the process's own.
    pub fn from_yaml_str_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let schema = Schema::new();
        let mut document = read_document(text)?;
        schema.restore_strings(&mut document, Some(text));
        let overrides = apply_env(&schema, &mut document, env)?;
        let origin = Origin {
            text: Some(text),
            overrides: &overrides,
        };
        let config = Self::from_document(document, &origin)?;
        config.validate().map_err(|error| origin.blame_env(error))?;
        Ok(config)
    }

    /// Reads the YAML file at `path`, parses and validates it, without
    /// environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::iter::empty())
    }

    /// Reads the YAML file at `path`, applies the overrides in `env` (see
    /// [`Config::from_yaml_str_with_env`]) and validates the result.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFailed {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str_with_env(&text, env)
    }

    /// How long a graceful handover may take: the deactivation hook, then a
    /// few etcd round trips (publish, revoke).
    pub fn handover_bound(&self) -> Duration {
        self.coordinator.deactivate_timeout + self.etcd.request_timeout * 3 + Duration::from_secs(1)
    }

    /// The settings of `role`: its section, or the defaults without one.
    pub fn role(&self, role: &str) -> RoleConfig {
        self.roles.get(role).cloned().unwrap_or_default()
    }

    /// Splits the document into the sections and the role sections and
    /// deserializes both, without validating.
    fn from_document(document: Mapping, origin: &Origin<'_>) -> Result<Config, ConfigError> {
        let mut sections = Mapping::new();
        let mut roles = BTreeMap::new();
        for (key, mut value) in document {
            let Value::String(name) = key else {
                return Err(root_error(format!(
                    "top-level key {} is not a name",
                    plain_scalar(&key).unwrap_or_else(|| "of a mapping or sequence".to_owned())
                )));
            };
            if ROLE_SECTIONS.contains(&name.as_str()) {
                // A built-in role's keys share the section with its
                // settings, which know nothing of them.
                let mut role_keys = Mapping::new();
                if let Value::Mapping(section) = &mut value {
                    for key in ROLE_KEYS {
                        if let Some(setting) = section.remove(key) {
                            role_keys.insert(Value::from(key), setting);
                        }
                    }
                }
                if !role_keys.is_empty() {
                    let role =
                        origin.parse(Value::Mapping(role_keys), &[Seg::key(&name)], |d| {
                            RoleConfig::deserialize(d)
                        })?;
                    roles.insert(name.clone(), role);
                }
                sections.insert(Value::String(name), value);
            } else if SECTIONS.contains(&name.as_str()) {
                sections.insert(Value::String(name), value);
            } else {
                // Without any of its keys the section is more likely a
                // misspelt config section than a role's.
                let misspelt = ROLE_KEYS.iter().all(|key| value.get(*key).is_none());
                let role = origin
                    .parse(value, &[Seg::key(&name)], |d| RoleConfig::deserialize(d))
                    .map_err(|error| {
                        if misspelt {
                            hint_role_section(error, &name)
                        } else {
                            error
                        }
                    })?;
                roles.insert(name, role);
            }
        }
        let mut config = origin.parse(Value::Mapping(sections), &[], |d| Config::deserialize(d))?;
        config.roles = roles;
        Ok(config)
    }
}

/// The config sections, the top-level keys that are not role names; one per
/// field of [`Config`] (a unit test holds them in step).
const SECTIONS: [&str; 9] = [
    "etcd",
    "node",
    "session",
    "coordinator",
    "reload",
    "tso",
    "kv",
    "server",
    "client",
];

/// The sections of the built-in roles' settings, each named after its role
/// and taking that role's `activeStandby` switch too.
const ROLE_SECTIONS: [&str; 2] = ["tso", "kv"];

/// The key of a role's switch, in its role section or in a built-in role's section.
const ACTIVE_STANDBY: &str = "activeStandby";

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut document =
            Config::serialize(self, serde_norway::value::Serializer).map_err(S::Error::custom)?;
        let sections = document
            .as_mapping_mut()
            .ok_or_else(|| S::Error::custom("the sections did not serialize to a mapping"))?;
        for (role, config) in &self.roles {
            let Value::Mapping(keys) = serde_norway::to_value(config).map_err(S::Error::custom)?
            else {
                return Err(S::Error::custom(
                    "a role section did not serialize to a mapping",
                ));
            };
            if ROLE_SECTIONS.contains(&role.as_str()) {
                if let Some(Value::Mapping(section)) = sections.get_mut(role.as_str()) {
                    section.extend(keys);
                }
            } else if SECTIONS.contains(&role.as_str()) {
                return Err(S::Error::custom(format!(
                    "role {role:?} has the name of a config section, so it has no place in the file"
                )));
            } else {
                sections.insert(Value::from(role.as_str()), Value::Mapping(keys));
            }
        }
        document.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Config {
    /// Reads the sections and the role sections, without validating; errors
    /// name the key but, without the text, not the line.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let document = Value::deserialize(deserializer)?;
        let mut document = into_sections(document).map_err(D::Error::custom)?;
        Schema::new().restore_strings(&mut document, None);
        let origin = Origin {
            text: None,
            overrides: &[],
        };
        Config::from_document(document, &origin).map_err(D::Error::custom)
    }
}

/// The one YAML document of `text` as its top-level mapping; an empty
/// document, or one of only comments, is an empty mapping.
fn read_document(text: &str) -> Result<Mapping, ConfigError> {
    let mut documents = serde_norway::Deserializer::from_str(text);
    let Some(document) = documents.next() else {
        return Ok(Mapping::new());
    };
    let document = Value::deserialize(document).map_err(|error| root_error(error.to_string()))?;
    // A second document would be silently ignored otherwise.
    if documents.next().is_some() {
        return Err(root_error("expected one YAML document, found several"));
    }
    into_sections(document)
}

fn into_sections(document: Value) -> Result<Mapping, ConfigError> {
    match document {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(sections) => Ok(sections),
        _ => Err(root_error("expected a mapping of config sections")),
    }
}

fn root_error(message: impl Into<String>) -> ConfigError {
    ConfigError::ParseFailed {
        key: show_path(&[]),
        message: message.into(),
    }
}

/// Adds to a role section's parse error what a section name with a typo
/// turns into, since such a key is read as a role.
fn hint_role_section(error: ConfigError, role: &str) -> ConfigError {
    match error {
        ConfigError::ParseFailed { key, message } => ConfigError::ParseFailed {
            key,
            message: format!(
                "{message} (`{role}` is not a config section ({}), so it is read as the \
                 section of role `{role}`, which takes only `activeStandby: {{enabled: true|false}}`)",
                SECTIONS.join(", ")
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse_error(text: &str) -> (String, String) {
        match Config::from_yaml_str(text) {
            Err(ConfigError::ParseFailed { key, message }) => (key, message),
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }

    /// Validates `config`, expecting a rejection of `key`; returns the error's text.
    pub(super) fn rejected(config: &Config, key: &str) -> String {
        match config.validate() {
            Err(err @ ConfigError::Invalid { key: got, .. }) => {
                assert_eq!(got, key, "wrong key rejected: {err}");
                let text = err.to_string();
                assert!(text.contains(key), "error does not name {key}: {text}");
                text
            }
            other => panic!("expected {key} to be rejected, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate_and_derive_the_session_timings() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.session.ttl, Duration::from_secs(10));
        assert_eq!(config.session.ttl_secs(), 10);
        assert_eq!(
            config.session.keepalive_interval(),
            Duration::from_nanos(833_333_333)
        );
        assert_eq!(
            config.session.keepalive_timeout(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            config.session.renew_deadline(),
            Duration::from_nanos(6_666_666_666)
        );
    }

    #[test]
    fn shipped_file_is_exactly_the_defaults() {
        let text = include_str!("../config/standin.yaml");
        assert_eq!(Config::from_yaml_str(text).unwrap(), Config::default());
    }

    #[test]
    fn empty_or_comment_only_document_is_the_defaults() {
        for text in ["", "\n", "# nothing here\n", "---\n"] {
            assert_eq!(
                Config::from_yaml_str(text).unwrap(),
                Config::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn serialized_defaults_parse_back() {
        let text = serde_norway::to_string(&Config::default()).unwrap();
        assert!(text.contains("rootPath: standin"), "{text}");
        assert_eq!(Config::from_yaml_str(&text).unwrap(), Config::default());
    }

    #[test]
    fn values_parse_with_camel_case_keys_and_human_durations() {
        let config = Config::from_yaml_str(
            "etcd:\n  rootPath: a/b\n  requestTimeout: 250ms\n\
             session:\n  ttl: 4s\n  keepaliveInterval: 500ms\n  renewDeadline: 3s\n\
             reload:\n  pageSize: 10\n",
        )
        .unwrap();
        assert_eq!(config.etcd.root_path, "a/b");
        assert_eq!(config.etcd.request_timeout, Duration::from_millis(250));
        assert_eq!(config.session.ttl_secs(), 4);
        assert_eq!(
            config.session.keepalive_interval(),
            Duration::from_millis(500)
        );
        assert_eq!(config.session.renew_deadline(), Duration::from_secs(3));
        assert_eq!(config.reload.page_size, 10);
        // Keys left out keep their defaults.
        assert_eq!(config.etcd.endpoints, EtcdConfig::default().endpoints);
        assert_eq!(config.coordinator, CoordinatorConfig::default());
    }

    #[test]
    fn a_partial_backoff_block_keeps_that_blocks_defaults() {
        let config = Config::from_yaml_str(
            "etcd:\n  retry:\n    max: 1s\ncoordinator:\n  restartBackoff:\n    initial: 1s\n",
        )
        .unwrap();
        assert_eq!(config.etcd.retry.initial, Duration::from_millis(200));
        assert_eq!(config.etcd.retry.max, Duration::from_secs(1));
        assert_eq!(
            config.coordinator.restart_backoff.initial,
            Duration::from_secs(1)
        );
        assert_eq!(
            config.coordinator.restart_backoff.max,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn explicit_null_optional_durations_mean_derived() {
        let config =
            Config::from_yaml_str("session:\n  keepaliveInterval: ~\n  renewDeadline: null\n")
                .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn a_typo_key_is_rejected_by_name() {
        // The path ends at the unknown key itself; the message lists the valid ones.
        let (key, message) = parse_error("session:\n  ttl: 10s\n  renewDeadlien: 5s\n");
        assert_eq!(key, "session.renewDeadlien");
        assert!(
            message.starts_with("unknown field `renewDeadlien`, expected one of"),
            "{message}"
        );
        assert!(message.contains("`renewDeadline`"), "{message}");

        let (key, message) = parse_error("etcd:\n  retry:\n    maximum: 1s\n");
        assert_eq!(key, "etcd.retry.maximum");
        assert!(message.starts_with("unknown field `maximum`"), "{message}");

        // Any other top-level key is a role's section, so a misspelt section
        // is refused as one, with a word on why.
        let (key, message) = parse_error("sesion:\n  ttl: 10s\n");
        assert_eq!(key, "sesion.ttl");
        assert!(
            message.starts_with("unknown field `ttl`, expected `activeStandby`"),
            "{message}"
        );
        assert!(
            message.contains("`sesion` is not a config section"),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn a_bad_value_is_reported_at_its_path() {
        let (key, message) = parse_error("session:\n  ttl: ten seconds\n");
        assert_eq!(key, "session.ttl");
        assert!(message.starts_with("invalid value"), "{message}");
        assert!(message.contains("line 2"), "{message}");

        let (key, _) = parse_error("coordinator:\n  queueDepth: -1\n");
        assert_eq!(key, "coordinator.queueDepth");

        let (key, _) = parse_error("etcd:\n  endpoints: 127.0.0.1:2379\n");
        assert_eq!(key, "etcd.endpoints");

        let (key, _) = parse_error("- not a mapping\n");
        assert_eq!(key, "(root)");

        let (key, message) = parse_error("session: {}\n---\nsession: {}\n");
        assert_eq!(key, "(root)");
        assert!(message.contains("several"), "{message}");

        let err = Config::from_yaml_str("session:\n  ttl: 1x\n").unwrap_err();
        assert!(
            err.to_string().starts_with("config key `session.ttl`: "),
            "{err}"
        );
    }

    #[test]
    fn load_reads_a_file_and_names_it_when_missing() {
        let dir = std::env::temp_dir().join(format!("standin-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("standin.yaml");
        std::fs::write(&path, "reload:\n  pageSize: 7\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().reload.page_size, 7);

        let missing = dir.join("missing.yaml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::ReadFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.yaml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parsing_runs_validation() {
        let err = Config::from_yaml_str("session:\n  ttl: 1s\n").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "session.ttl",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A scratch directory for files a test config names, removed on drop.
    pub(super) struct Scratch(pub(super) PathBuf);

    impl Scratch {
        pub(super) fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("standin-config-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// A file of `text` only its owner may read, as a secret must be.
        pub(super) fn secret(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            path
        }

        pub(super) fn file(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n").unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_section_list_names_every_config_section() {
        let defaults = serde_norway::to_value(Config::default()).unwrap();
        let keys: Vec<_> = defaults
            .as_mapping()
            .unwrap()
            .keys()
            .map(|key| key.as_str().unwrap())
            .collect();
        assert_eq!(keys, SECTIONS);
    }

    #[test]
    fn role_sections_sit_at_the_top_level_and_default_to_active_standby() {
        let config = Config::from_yaml_str(
            "rootcoord:\n  activeStandby:\n    enabled: false\n\
             datacoord:\n  activeStandby:\n    enabled: true\n",
        )
        .unwrap();
        assert!(!config.role("rootcoord").active_standby.enabled);
        assert!(config.role("datacoord").active_standby.enabled);
        assert!(config.role("querycoord").active_standby.enabled);
        assert_eq!(config.roles.len(), 2);
    }

    #[test]
    fn the_tso_role_switch_shares_the_tso_section() {
        let config =
            Config::from_yaml_str("tso:\n  window: 1s\n  activeStandby:\n    enabled: false\n")
                .unwrap();
        assert_eq!(config.tso.window, Duration::from_secs(1));
        assert!(!config.role("tso").active_standby.enabled);

        let config = Config::from_yaml_str("tso:\n  window: 1s\n").unwrap();
        assert!(config.role("tso").active_standby.enabled);
        assert!(config.roles.is_empty());
    }

    #[test]
    fn a_role_section_takes_exactly_its_switch() {
        let (key, message) =
            parse_error("rootcoord:\n  activeStandby:\n    enabled: false\n    extra: 1\n");
        assert_eq!(key, "rootcoord.activeStandby.extra");
        assert!(message.starts_with("unknown field `extra`"), "{message}");
        assert!(message.contains("line 4"), "{message}");

        let (key, message) = parse_error("rootcoord:\n  activeStandby: {}\n");
        assert_eq!(key, "rootcoord.activeStandby");
        assert!(message.starts_with("missing field `enabled`"), "{message}");

        let (key, _) = parse_error("rootcoord:\n  activeStandby:\n    enabled: maybe\n");
        assert_eq!(key, "rootcoord.activeStandby.enabled");

        let (key, _) = parse_error("tso:\n  activeStandby:\n    enable: false\n");
        assert_eq!(key, "tso.activeStandby.enable");
    }

    #[test]
    fn tso_settings_are_parsed_and_validated() {
        let config = Config::from_yaml_str("tso:\n  window: 500ms\n  maxCount: 10\n").unwrap();
        assert_eq!(config.tso.window, Duration::from_millis(500));
        assert_eq!(config.tso.max_count, 10);
        let mut config = Config::default();
        config.tso.window = Duration::from_millis(10);
        rejected(&config, "tso.window");
    }

    #[test]
    fn serialized_roles_parse_back() {
        let mut config = Config::default();
        config.etcd.connect_attempts = 0;
        config.etcd.auth = Some(AuthConfig {
            user: "root".into(),
            password: Some("007".into()),
            password_file: None,
        });
        for role in ["rootcoord", "tso"] {
            config.roles.insert(
                role.into(),
                RoleConfig {
                    active_standby: ActiveStandbyConfig { enabled: false },
                    leader_priority: 3,
                },
            );
        }
        let text = serde_norway::to_string(&config).unwrap();
        assert!(
            text.contains("rootcoord:\n  activeStandby:\n    enabled: false"),
            "{text}"
        );
        assert_eq!(Config::from_yaml_str(&text).unwrap(), config);
        // Through the serde traits too, as another format would use them.
        let value = serde_norway::to_value(&config).unwrap();
        assert_eq!(serde_norway::from_value::<Config>(value).unwrap(), config);
    }

    #[test]
    fn numbers_written_for_strings_are_kept_as_written() {
        let config = Config::from_yaml_str(
            "etcd:\n  rootPath: 2024\n  auth:\n    user: 42\n    password: 0123\n",
        )
        .unwrap();
        assert_eq!(config.etcd.root_path, "2024");
        let auth = config.etcd.auth.unwrap();
        assert_eq!(
            (auth.user.as_str(), auth.password.as_deref()),
            ("42", Some("0123"))
        );
    }

    #[test]
    fn connect_attempts_and_auth_parse() {
        let config = Config::from_yaml_str(
            "etcd:\n  connectAttempts: 0\n  auth:\n    user: root\n    password: hunter2x\n",
        )
        .unwrap();
        assert_eq!(config.etcd.connect_attempts, 0);
        let auth = config.etcd.auth.clone().unwrap();
        assert_eq!(auth.user, "root");
        assert_eq!(auth.password.as_deref(), Some("hunter2x"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2x"), "{shown}");

        let err = Config::from_yaml_str("etcd:\n  auth:\n    user: root\n").unwrap_err();
        assert!(
            err.to_string().contains("etcd.auth.password")
                && err.to_string().contains("passwordFile"),
            "{err}"
        );

        let mut config = Config::default();
        config.etcd.auth = Some(AuthConfig {
            user: " ".into(),
            password: Some("x".into()),
            password_file: None,
        });
        rejected(&config, "etcd.auth.user");
    }

    #[test]
    fn the_etcd_password_can_come_from_a_file() {
        let scratch = Scratch::new("password-file");
        let file = scratch.secret("password", "s3cret\n");
        let text = format!(
            "etcd:\n  auth:\n    user: root\n    passwordFile: {}\n",
            file.display()
        );
        let config = Config::from_yaml_str(&text).unwrap();
        let auth = config.etcd.auth.clone().unwrap();
        assert_eq!(auth.password().unwrap(), "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));

        let both = format!("{text}    password: other\n");
        let err = Config::from_yaml_str(&both).unwrap_err();
        assert!(err.to_string().contains("etcd.auth.passwordFile"), "{err}");
        assert!(!err.to_string().contains("other"), "{err}");

        let missing = text.replace("password\n", "absent\n");
        let err = Config::from_yaml_str(&missing).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::FileUnreadable {
                    key: "etcd.auth.passwordFile",
                    ..
                }
            ),
            "{err}"
        );
    }
}
