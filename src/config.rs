//! The node's configuration: YAML with camelCase keys and `STANDIN_*` environment overrides, every key defaulted, impossible values rejected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime_serde::re::humantime;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_yaml::{Mapping, Value};

use crate::tso::{TsoConfig, TsoError};

/// etcd's smallest lease TTL. etcd silently raises a shorter requested TTL to
/// its minimum, so the renew deadline derived from a shorter configured TTL
/// would not match the lease etcd actually keeps.
const MIN_TTL: Duration = Duration::from_secs(2);

/// etcd's largest lease TTL (`MaxLeaseTTL`); a grant above it fails.
const MAX_TTL_SECS: u64 = 9_000_000_000;

/// The largest reload page: a page is one etcd range response, which must stay
/// well under the gRPC message size limit.
const MAX_PAGE_SIZE: i64 = 100_000;

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
    /// Per-role settings by role name, from the top-level role sections (and
    /// `tso.activeStandby` for the `tso` role). A role without a section has
    /// the defaults: read them through [`Config::role`].
    #[serde(skip)]
    pub roles: BTreeMap<String, RoleConfig>,
}

/// One role's settings: the top-level section named after the role.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleConfig {
    /// Whether standbys may wait behind the active instance.
    // Required, not defaulted: a section exists only to set it, so one
    // without it is a mistake.
    pub active_standby: ActiveStandbyConfig,
}

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

/// etcd user and password.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// The etcd user; it needs read and write access to `{rootPath}/`.
    pub user: String,
    /// Its password.
    pub password: String,
}

// By hand, so the password never reaches a log line that prints the config.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// This node's identity as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct NodeConfig {
    /// The address clients reach this node at, `host:port`. Published in the
    /// session so clients can find whichever node is active.
    pub address: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:19530".to_owned(),
        }
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
    /// Time between lease keepalives; `None` means `ttl / 3`, so two can fail
    /// before the renew deadline. Read it through [`SessionConfig::keepalive_interval`].
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            keepalive_interval: None,
            renew_deadline: None,
            standby_log_interval: Duration::from_secs(10),
        }
    }
}

impl SessionConfig {
    /// The keepalive interval: the configured one, or `ttl / 3`.
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive_interval.unwrap_or(self.ttl / 3)
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
    /// Messages held while the coordinator activates, delivered once it serves,
    /// so clients that reach it early are delayed rather than refused. At least 1.
    pub activation_buffer: usize,
    /// Bound on the user's deactivation hook, so a hung hook cannot keep a
    /// demoted coordinator from returning to standby.
    #[serde(with = "humantime_serde")]
    pub deactivate_timeout: Duration,
    /// Delay before restarting a crashed coordinator or election actor: quick
    /// after one crash, capped so a crash loop does not spin.
    #[serde(deserialize_with = "coordinator_restart_backoff")]
    pub restart_backoff: BackoffConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            activation_buffer: 1000,
            deactivate_timeout: Duration::from_secs(2),
            restart_backoff: BackoffConfig::default(),
        }
    }
}

/// How a role's metadata is loaded before its coordinator serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ReloadConfig {
    /// Bound on one full reload; past it the node resigns so a peer can try.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Keys per etcd range request while reloading, 1..=100000: pages keep each
    /// response under the gRPC message size limit however large the metadata.
    pub page_size: i64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            page_size: 1000,
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
            if name == TSO_SECTION {
                // The tso role's switch shares the section with TsoConfig,
                // which knows nothing of it.
                if let Value::Mapping(tso) = &mut value
                    && let Some(switch) = tso.remove(ACTIVE_STANDBY)
                {
                    let path = [Seg::key(TSO_SECTION), Seg::key(ACTIVE_STANDBY)];
                    let active_standby =
                        origin.parse(switch, &path, |d| ActiveStandbyConfig::deserialize(d))?;
                    roles.insert(name.clone(), RoleConfig { active_standby });
                }
                sections.insert(Value::String(name), value);
            } else if SECTIONS.contains(&name.as_str()) {
                sections.insert(Value::String(name), value);
            } else {
                // Without its one key the section is more likely a
                // misspelt config section than a role's.
                let misspelt = value.get(ACTIVE_STANDBY).is_none();
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
const SECTIONS: [&str; 6] = [
    "etcd",
    "node",
    "session",
    "coordinator",
    "reload",
    TSO_SECTION,
];

/// The section of the timestamp oracle's settings, and the name of its role.
const TSO_SECTION: &str = "tso";

/// The key of a role's switch, in its role section or in the `tso` section.
const ACTIVE_STANDBY: &str = "activeStandby";

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut document =
            Config::serialize(self, serde_yaml::value::Serializer).map_err(S::Error::custom)?;
        let sections = document
            .as_mapping_mut()
            .ok_or_else(|| S::Error::custom("the sections did not serialize to a mapping"))?;
        for (role, config) in &self.roles {
            let switch = serde_yaml::to_value(&config.active_standby).map_err(S::Error::custom)?;
            if role == TSO_SECTION {
                if let Some(Value::Mapping(tso)) = sections.get_mut(TSO_SECTION) {
                    tso.insert(Value::from(ACTIVE_STANDBY), switch);
                }
            } else if SECTIONS.contains(&role.as_str()) {
                return Err(S::Error::custom(format!(
                    "role {role:?} has the name of a config section, so it has no place in the file"
                )));
            } else {
                let mut section = Mapping::new();
                section.insert(Value::from(ACTIVE_STANDBY), switch);
                sections.insert(Value::from(role.as_str()), Value::Mapping(section));
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
    let mut documents = serde_yaml::Deserializer::from_str(text);
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

/// A step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    fn key(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }

    fn from_tracked(segment: &serde_path_to_error::Segment) -> Self {
        match segment {
            serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
            serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => Seg::Key(variant.clone()),
            serde_path_to_error::Segment::Unknown => Seg::key("?"),
        }
    }
}

/// A key path the way errors show it: `etcd.endpoints[1]`, or `(root)`.
fn show_path(path: &[Seg]) -> String {
    if path.is_empty() {
        // Rendering the root as "." would read as a typo.
        return "(root)".to_owned();
    }
    let mut shown = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(key);
            }
            Seg::Index(index) => shown.push_str(&format!("[{index}]")),
        }
    }
    shown
}

/// Where the parsed values came from, so an error points at the line of the
/// file, or at the environment variable that set the value.
struct Origin<'a> {
    /// The YAML text, when there is one.
    text: Option<&'a str>,
    /// The environment variables applied, in order.
    overrides: &'a [Override],
}

impl Origin<'_> {
    /// Deserializes `value`, found at `at`, with `deserialize`; an error
    /// names the key path from the document's root. Callers pass a closure
    /// (`|d| T::deserialize(d)`): a function path would not be general over
    /// the tracking deserializer's lifetimes.
    fn parse<T>(
        &self,
        value: Value,
        at: &[Seg],
        deserialize: impl FnOnce(
            serde_path_to_error::Deserializer<'_, '_, Value>,
        ) -> Result<T, serde_yaml::Error>,
    ) -> Result<T, ConfigError> {
        let mut track = serde_path_to_error::Track::new();
        deserialize(serde_path_to_error::Deserializer::new(value, &mut track)).map_err(|error| {
            let mut path = at.to_vec();
            path.extend(track.path().iter().map(Seg::from_tracked));
            self.parse_failed(&path, error.to_string())
        })
    }

    fn parse_failed(&self, path: &[Seg], message: String) -> ConfigError {
        let key = show_path(path);
        if let Some(cause) = self.cause(path) {
            return ConfigError::EnvParseFailed {
                variable: cause.variable.clone(),
                value: cause.shown.clone(),
                key,
                message,
            };
        }
        // A document value carries no position, so find the key in the text.
        let message = match self.text.and_then(|text| locate(text, path)) {
            Some(at) => format!("{message} at line {} column {}", at.line(), at.column()),
            None => message,
        };
        ConfigError::ParseFailed { key, message }
    }

    /// The variable behind a value at `path`, if one is.
    fn cause(&self, path: &[Seg]) -> Option<&Override> {
        // The last applied wins, as it does in the document.
        self.overrides.iter().rev().find(|o| o.explains(path))
    }

    /// Names the variable that set a rejected value, if one did.
    fn blame_env(&self, error: ConfigError) -> ConfigError {
        let ConfigError::Invalid { key, .. } = &error else {
            return error;
        };
        let path: Vec<_> = key.split('.').map(Seg::key).collect();
        match self.cause(&path) {
            Some(cause) => ConfigError::InvalidFromEnv {
                variable: cause.variable.clone(),
                source: Box::new(error),
            },
            None => error,
        }
    }
}

/// Where the key (or sequence element) at `path` is written in `text`.
fn locate(text: &str, path: &[Seg]) -> Option<serde_yaml::Location> {
    if path.is_empty() {
        return None;
    }
    let document = serde_yaml::Deserializer::from_str(text).next()?;
    let seek = Seek { path, mark: true };
    seek.deserialize(document).err()?.location()
}

/// The scalar at `path` exactly as `text` writes it (`0123`, not `123`).
fn raw_scalar(text: &str, path: &[Seg]) -> Option<String> {
    let document = serde_yaml::Deserializer::from_str(text).next()?;
    let seek = Seek { path, mark: false };
    seek.deserialize(document).ok().flatten()
}

/// Walks a YAML text along a path with serde_yaml's own deserializer, the
/// one place that knows where each node is written and how: with `mark`, it
/// fails at the path's last key (or element), the error carrying that
/// position; without, it returns the scalar there as written.
struct Seek<'p> {
    path: &'p [Seg],
    mark: bool,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.path.first() {
            None => String::deserialize(deserializer).map(Some),
            Some(Seg::Key(_)) => deserializer.deserialize_map(self),
            Some(Seg::Index(_)) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a sequence on the key path")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(
                "a mapping where the path has an index",
            ));
        };
        let mark = self.mark && rest.is_empty();
        let mut found = None;
        // Every entry is read: serde_yaml refuses a mapping left half read.
        while let Some(hit) = map.next_key_seed(KeyIs { wanted, mark })? {
            if hit && found.is_none() {
                let seek = Seek {
                    path: rest,
                    mark: self.mark,
                };
                found = Some(map.next_value_seed(seek)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found.flatten())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some((Seg::Index(wanted), rest)) = self.path.split_first() else {
            return Err(serde::de::Error::custom(
                "a sequence where the path has a key",
            ));
        };
        let mut found = None;
        let mut index = 0;
        loop {
            let item = if index != *wanted {
                seq.next_element::<IgnoredAny>()?.map(|_| None)
            } else if self.mark && rest.is_empty() {
                seq.next_element_seed(Refuse)?.map(|()| None)
            } else {
                let seek = Seek {
                    path: rest,
                    mark: self.mark,
                };
                seq.next_element_seed(seek)?
            };
            match item {
                None => return Ok(found),
                Some(value) if index == *wanted => found = value,
                Some(_) => {}
            }
            index += 1;
        }
    }
}

/// A mapping key compared with the wanted one, refused when it matches and
/// its position is wanted: an error raised while serde_yaml reads the key
/// carries the key's position.
struct KeyIs<'w> {
    wanted: &'w str,
    mark: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        match (key == self.wanted, self.mark) {
            (true, true) => Err(E::custom("found")),
            (hit, _) => Ok(hit),
        }
    }
}

/// Refuses whatever it is given, so serde_yaml's error carries its position.
struct Refuse;

impl<'de> DeserializeSeed<'de> for Refuse {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Refuse {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every visit falls back to serde's invalid-type error, by design.
        f.write_str("nothing")
    }
}

/// A YAML scalar the way it reads in YAML, if it is one.
fn plain_scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("~".to_owned()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Every key a config can have, each with a value of its type: the
/// defaults with every optional part filled in. Environment variables are
/// matched and typed against it, and a number or boolean written where it
/// has a string is read back as the string the file wrote. An `Option`
/// field added later and not filled in here is still found, as a string.
struct Schema {
    /// The sections (and `tso.activeStandby`).
    sections: Value,
    /// A role section, found under any top-level key that is not a section.
    role: Value,
    /// The defaults, to tell an optional key (null by default) from a string.
    defaults: Value,
}

impl Schema {
    fn new() -> Self {
        let mut full = Config::default();
        full.etcd.tls = Some(TlsConfig {
            ca_file: "ca.pem".into(),
            cert_file: Some("cert.pem".into()),
            key_file: Some("key.pem".into()),
            domain: Some("etcd".into()),
        });
        full.etcd.auth = Some(AuthConfig {
            user: "user".into(),
            password: "password".into(),
        });
        full.session.keepalive_interval = Some(Duration::from_secs(1));
        full.session.renew_deadline = Some(Duration::from_secs(2));
        full.roles
            .insert(TSO_SECTION.to_owned(), RoleConfig::default());
        Self {
            sections: to_value(&full),
            role: to_value(&RoleConfig::default()),
            defaults: to_value(&Config::default()),
        }
    }

    /// The schema of the key at `path`; a role's keys under any top-level
    /// key that is not a section.
    fn get(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let root = match self.sections.get(first.as_str()) {
            Some(section) => return descend(section, rest),
            None => &self.role,
        };
        descend(root, rest)
    }

    /// Puts back, as the text writes them, the numbers and booleans the YAML
    /// parser made of values whose key takes a string: `password: 0123` is
    /// the password "0123". Without the text, the number's own rendering.
    fn restore_strings(&self, document: &mut Mapping, text: Option<&str>) {
        let mut path = Vec::new();
        for (key, value) in document.iter_mut() {
            if let Some(name) = key.as_str()
                && let Some(schema) = self.sections.get(name)
            {
                path.push(Seg::key(name));
                restore(value, schema, &mut path, text);
                path.pop();
            }
        }
    }

    /// The key path a `STANDIN_` variable names (`rest` is what follows the
    /// prefix): the key path with `_` between segments, each camelCase
    /// segment matched case-insensitively with or without `_` between its
    /// words; a segment that is no section is a role name (`_`s dropped, as
    /// in Milvus's names).
    fn env_path(&self, rest: &str) -> Option<Vec<String>> {
        let rest = rest.to_ascii_lowercase();
        if let Some(path) = match_keys(&rest, &self.sections) {
            return Some(path);
        }
        rest.match_indices('_').find_map(|(at, _)| {
            let role = role_name(&rest[..at]);
            if role.is_empty() || SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(&role)) {
                return None;
            }
            let mut path = match_keys(&rest[at + 1..], &self.role)?;
            path.insert(0, role);
            Some(path)
        })
    }

    /// The document value for the variable's `raw` text at `path`, typed by
    /// the schema: booleans and numbers parsed, lists split at commas, an
    /// empty value unsetting an optional key; anything else a string.
    fn env_value(&self, path: &[String], raw: &str) -> Result<Value, String> {
        let optional = matches!(descend(&self.defaults, path), None | Some(Value::Null));
        match self.get(path) {
            Some(Value::Bool(_)) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err("expected true or false".to_owned()),
            },
            Some(Value::Number(_)) => {
                let raw = raw.trim();
                raw.parse::<u64>()
                    .map(Value::from)
                    .or_else(|_| raw.parse::<i64>().map(Value::from))
                    .or_else(|_| raw.parse::<f64>().map(Value::from))
                    .map_err(|_| "expected a number".to_owned())
            }
            Some(Value::Sequence(_)) => Ok(Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(Value::from)
                    .collect(),
            )),
            _ if raw.is_empty() && optional => Ok(Value::Null),
            _ => Ok(Value::from(raw)),
        }
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_yaml::to_value(value).expect("config structs serialize to YAML")
}

fn descend<'v>(mut node: &'v Value, path: &[String]) -> Option<&'v Value> {
    for key in path {
        node = node.get(key.as_str())?;
    }
    Some(node)
}

fn restore(value: &mut Value, schema: &Value, path: &mut Vec<Seg>, text: Option<&str>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                if let Some(name) = key.as_str()
                    && let Some(child_schema) = schema.get(name)
                {
                    path.push(Seg::key(name));
                    restore(child, child_schema, path, text);
                    path.pop();
                }
            }
        }
        Value::Sequence(items) => {
            if let Value::Sequence(kinds) = schema
                && let Some(kind) = kinds.first()
            {
                for (index, item) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(index));
                    restore(item, kind, path, text);
                    path.pop();
                }
            }
        }
        Value::Bool(_) | Value::Number(_) if schema.is_string() => {
            let written = text.and_then(|text| raw_scalar(text, path));
            if let Some(string) = written.or_else(|| plain_scalar(value)) {
                *value = Value::String(string);
            }
        }
        _ => {}
    }
}

/// The key path below `node` that `rest` (lowercase) names, down to a
/// value that is not a mapping.
fn match_keys(rest: &str, node: &Value) -> Option<Vec<String>> {
    let Value::Mapping(keys) = node else {
        return None;
    };
    keys.iter().find_map(|(key, child)| {
        let key = key.as_str()?;
        env_forms(key).into_iter().find_map(|form| {
            if rest == form && !child.is_mapping() {
                return Some(vec![key.to_owned()]);
            }
            let tail = rest.strip_prefix(form.as_str())?.strip_prefix('_')?;
            let mut path = match_keys(tail, child)?;
            path.insert(0, key.to_owned());
            Some(path)
        })
    })
}

/// The lowercase spellings of a camelCase key in a variable name:
/// `rootpath` and `root_path`.
fn env_forms(key: &str) -> Vec<String> {
    let joined = key.to_ascii_lowercase();
    let mut split = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            split.push('_');
        }
        split.push(c.to_ascii_lowercase());
    }
    if split == joined {
        vec![joined]
    } else {
        vec![joined, split]
    }
}

/// A role name from a variable's role part: `ROOT_COORD` is `rootcoord`.
fn role_name(part: &str) -> String {
    part.to_ascii_lowercase().replace('_', "")
}

/// The prefix of standin's own variables.
const ENV_PREFIX: &str = "STANDIN_";

/// Milvus's variable for the etcd endpoints, comma-separated.
const MILVUS_ENDPOINTS: &str = "ETCD_ENDPOINTS";

/// The suffix of Milvus's role switches (`ROOT_COORD_ENABLE_ACTIVE_STANDBY`).
const MILVUS_ROLE_SWITCH: &str = "_ENABLE_ACTIVE_STANDBY";

/// One environment variable applied to the document.
#[derive(Debug)]
struct Override {
    variable: String,
    /// Its value as errors show it: redacted for the password.
    shown: String,
    /// The key path it sets.
    path: Vec<Seg>,
    /// How many leading segments of `path` the document had already; the
    /// variable created the rest.
    existed: usize,
}

impl Override {
    /// Whether an error at `path` is this variable's doing: it is at or
    /// below the value set, or at a key only the variable created.
    fn explains(&self, path: &[Seg]) -> bool {
        path.starts_with(&self.path) || (self.path.starts_with(path) && path.len() > self.existed)
    }
}

/// Applies the environment's overrides to the document, Milvus's names
/// first so that standin's own win, and returns them for error messages.
fn apply_env(
    schema: &Schema,
    document: &mut Mapping,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    // (precedence, key path, variable, value)
    let mut settings = Vec::new();
    for (variable, raw) in env {
        let (precedence, path) = if let Some(rest) = variable.strip_prefix(ENV_PREFIX) {
            let Some(path) = schema.env_path(rest) else {
                return Err(ConfigError::UnknownEnvVar { variable });
            };
            (1, path)
        } else if variable == MILVUS_ENDPOINTS {
            (0, vec!["etcd".to_owned(), "endpoints".to_owned()])
        } else if let Some(role) = variable.strip_suffix(MILVUS_ROLE_SWITCH).map(role_name)
            && !role.is_empty()
        {
            let switch = vec![role, ACTIVE_STANDBY.to_owned(), "enabled".to_owned()];
            (0, switch)
        } else {
            continue;
        };
        settings.push((precedence, path, variable, raw));
    }
    // Sorted, so the outcome does not depend on the environment's order.
    settings.sort();
    for pair in settings.windows(2) {
        let ((p0, path, first, _), (p1, other, second, _)) = (&pair[0], &pair[1]);
        if p0 == p1 && path == other {
            return Err(ConfigError::EnvConflict {
                first: first.clone(),
                second: second.clone(),
                key: path.join("."),
            });
        }
    }
    let mut overrides = Vec::new();
    for (_, path, variable, raw) in settings {
        let shown = if path == ["etcd", "auth", "password"] {
            "<redacted>".to_owned()
        } else {
            raw.clone()
        };
        let value =
            schema
                .env_value(&path, &raw)
                .map_err(|message| ConfigError::EnvParseFailed {
                    variable: variable.clone(),
                    value: shown.clone(),
                    key: path.join("."),
                    message,
                })?;
        let existed = set_path(document, &path, value);
        overrides.push(Override {
            variable,
            shown,
            path: path.iter().map(|key| Seg::key(key)).collect(),
            existed,
        });
    }
    Ok(overrides)
}

/// Sets the value at `path`, creating the mappings on the way (a null or a
/// scalar there is replaced: the variable wins). Returns how many leading
/// segments of the path were already in the document.
fn set_path(document: &mut Mapping, path: &[String], value: Value) -> usize {
    let (last, parents) = path.split_last().expect("a key path is never empty");
    let mut existed = 0;
    let mut map = document;
    for (depth, key) in parents.iter().enumerate() {
        if existed == depth && map.contains_key(key.as_str()) {
            existed += 1;
        }
        let child = map.entry(Value::from(key.as_str())).or_insert(Value::Null);
        if !child.is_mapping() {
            *child = Value::Mapping(Mapping::new());
        }
        map = child.as_mapping_mut().expect("made a mapping just above");
    }
    if existed == parents.len() && map.contains_key(last.as_str()) {
        existed += 1;
    }
    map.insert(Value::from(last.as_str()), value);
    existed
}

impl Config {
    /// Rejects values that parse but cannot work; the error names the first
    /// offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_etcd()?;
        self.validate_node()?;
        self.validate_session()?;
        self.validate_coordinator()?;
        self.validate_reload()?;
        self.tso.validate().map_err(|error| match error {
            TsoError::BadConfig {
                key,
                value,
                message,
            } => invalid(key, value, message),
            other => invalid("tso", "", other.to_string()),
        })
    }

    fn validate_etcd(&self) -> Result<(), ConfigError> {
        let etcd = &self.etcd;
        if etcd.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints",
                "[]",
                "must list at least one etcd endpoint",
            ));
        }
        if etcd.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(invalid(
                "etcd.endpoints",
                format!("{:?}", etcd.endpoints),
                "must not contain an empty endpoint",
            ));
        }
        let root = &etcd.root_path;
        if root.is_empty() {
            return Err(invalid(
                "etcd.rootPath",
                "\"\"",
                "must not be empty: standin's keys would mix with every other key in the cluster",
            ));
        }
        if root.starts_with('/') || root.ends_with('/') || root.contains("//") {
            return Err(invalid(
                "etcd.rootPath",
                format!("{root:?}"),
                "must not start or end with '/' nor contain '//': keys are built as \
                 `{rootPath}/election/...`, so such a root gives keys with an empty segment",
            ));
        }
        nonzero(
            "etcd.connectTimeout",
            etcd.connect_timeout,
            "no connection could ever be made",
        )?;
        nonzero(
            "etcd.requestTimeout",
            etcd.request_timeout,
            "every etcd request would time out",
        )?;
        validate_backoff(&etcd.retry, "etcd.retry.initial", "etcd.retry.max")?;
        self.validate_etcd_security()
    }

    fn validate_etcd_security(&self) -> Result<(), ConfigError> {
        let etcd = &self.etcd;
        if let Some(auth) = &etcd.auth
            && auth.user.trim().is_empty()
        {
            return Err(invalid(
                "etcd.auth.user",
                format!("{:?}", auth.user),
                "must not be empty: etcd authenticates a named user",
            ));
        }
        let Some(tls) = &etcd.tls else {
            if let Some(https) = etcd.endpoints.iter().find(|e| e.starts_with("https://")) {
                return Err(invalid(
                    "etcd.tls",
                    "~",
                    format!(
                        "must be set for the https endpoint {https:?}: it names the CA to trust"
                    ),
                ));
            }
            return Ok(());
        };
        if let Some(http) = etcd.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(invalid(
                "etcd.endpoints",
                format!("{:?}", etcd.endpoints),
                format!(
                    "{http:?} is plaintext while etcd.tls is set: write it without a scheme \
                     (https is then used) or with https://"
                ),
            ));
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "etcd.tls.keyFile",
                    "~",
                    "must be set with etcd.tls.certFile: a client certificate is useless without its key",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "etcd.tls.certFile",
                    "~",
                    "must be set with etcd.tls.keyFile: a key is useless without its certificate",
                ));
            }
            _ => {}
        }
        if let Some(domain) = &tls.domain
            && domain.trim().is_empty()
        {
            return Err(invalid(
                "etcd.tls.domain",
                "\"\"",
                "must not be empty: leave it out to check the endpoint's own host name",
            ));
        }
        readable_file("etcd.tls.caFile", &tls.ca_file)?;
        if let Some(cert) = &tls.cert_file {
            readable_file("etcd.tls.certFile", cert)?;
        }
        if let Some(key) = &tls.key_file {
            readable_file("etcd.tls.keyFile", key)?;
        }
        Ok(())
    }

    fn validate_node(&self) -> Result<(), ConfigError> {
        if self.node.address.trim().is_empty() {
            return Err(invalid(
                "node.address",
                format!("{:?}", self.node.address),
                "must not be empty: it is published in the session so clients can reach this node",
            ));
        }
        Ok(())
    }

    fn validate_session(&self) -> Result<(), ConfigError> {
        let session = &self.session;
        let ttl = session.ttl;
        if ttl < MIN_TTL {
            return Err(invalid(
                "session.ttl",
                show(ttl),
                "must be at least 2s, etcd's minimum lease TTL: etcd would keep the lease \
                 longer than configured, and the renew deadline would be computed from the wrong TTL",
            ));
        }
        if ttl.subsec_nanos() != 0 {
            return Err(invalid(
                "session.ttl",
                show(ttl),
                "must be a whole number of seconds: etcd lease TTLs are whole seconds",
            ));
        }
        if ttl.as_secs() > MAX_TTL_SECS {
            return Err(invalid(
                "session.ttl",
                show(ttl),
                format!("must be at most {MAX_TTL_SECS}s, etcd's maximum lease TTL"),
            ));
        }

        let deadline = session.renew_deadline();
        let deadline_shown = match session.renew_deadline {
            Some(_) => show(deadline),
            None => format!("{} (unset: 2/3 of session.ttl)", show(deadline)),
        };
        if deadline.is_zero() {
            return Err(invalid(
                "session.renewDeadline",
                deadline_shown,
                "must be above zero: the coordinator would step down as soon as it activates",
            ));
        }
        if deadline >= ttl {
            return Err(invalid(
                "session.renewDeadline",
                deadline_shown,
                format!(
                    "must be below session.ttl ({}) so the coordinator steps down before etcd \
                     expires the lease",
                    show(ttl)
                ),
            ));
        }

        let interval = session.keepalive_interval();
        let interval_shown = match session.keepalive_interval {
            Some(_) => show(interval),
            None => format!("{} (unset: session.ttl / 3)", show(interval)),
        };
        if interval.is_zero() {
            return Err(invalid(
                "session.keepaliveInterval",
                interval_shown,
                "must be above zero: keepalives would be sent in a tight loop",
            ));
        }
        if interval >= deadline {
            return Err(invalid(
                "session.keepaliveInterval",
                interval_shown,
                format!(
                    "must be below session.renewDeadline ({deadline_shown}) so a keepalive can \
                     renew the lease before the coordinator has to step down"
                ),
            ));
        }

        nonzero(
            "session.standbyLogInterval",
            session.standby_log_interval,
            "it is the period of the STANDBY log line",
        )
    }

    fn validate_coordinator(&self) -> Result<(), ConfigError> {
        let coordinator = &self.coordinator;
        if coordinator.activation_buffer == 0 {
            return Err(invalid(
                "coordinator.activationBuffer",
                "0",
                "must be at least 1: messages that arrive while the coordinator activates \
                 are held in this buffer",
            ));
        }
        nonzero(
            "coordinator.deactivateTimeout",
            coordinator.deactivate_timeout,
            "the deactivation hook would get no time to run",
        )?;
        validate_backoff(
            &coordinator.restart_backoff,
            "coordinator.restartBackoff.initial",
            "coordinator.restartBackoff.max",
        )
    }

    fn validate_reload(&self) -> Result<(), ConfigError> {
        let reload = &self.reload;
        nonzero(
            "reload.timeout",
            reload.timeout,
            "every reload would time out before it starts",
        )?;
        if !(1..=MAX_PAGE_SIZE).contains(&reload.page_size) {
            return Err(invalid(
                "reload.pageSize",
                reload.page_size.to_string(),
                format!(
                    "must be between 1 and {MAX_PAGE_SIZE}: each page is one etcd range \
                     response, which must stay under the gRPC message size limit"
                ),
            ));
        }
        Ok(())
    }
}

fn validate_backoff(
    backoff: &BackoffConfig,
    initial_key: &'static str,
    max_key: &'static str,
) -> Result<(), ConfigError> {
    nonzero(
        initial_key,
        backoff.initial,
        "retries would spin with no delay",
    )?;
    if backoff.max < backoff.initial {
        return Err(invalid(
            max_key,
            show(backoff.max),
            format!(
                "must be at least {initial_key} ({}): it caps the delays that start there",
                show(backoff.initial)
            ),
        ));
    }
    Ok(())
}

/// Checks that `path` is a file this process can open, so a wrong path fails
/// at load, naming the key, rather than at the first TLS handshake.
fn readable_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let opened = std::fs::File::open(path).and_then(|file| file.metadata());
    let checked = opened.and_then(|metadata| {
        if metadata.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a regular file"))
        }
    });
    checked.map_err(|source| ConfigError::FileUnreadable {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Rejects a zero duration; `why` says what zero would do.
fn nonzero(key: &'static str, value: Duration, why: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(key, "0s", format!("must be above zero: {why}")));
    }
    Ok(())
}

fn invalid(key: &'static str, value: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        message: message.into(),
    }
}

/// A duration the way it is written in the config (`6s 666ms 666us 666ns`).
fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> (String, String) {
        match Config::from_yaml_str(text) {
            Err(ConfigError::ParseFailed { key, message }) => (key, message),
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }

    /// Validates `config`, expecting a rejection of `key`; returns the error's text.
    fn rejected(config: &Config, key: &str) -> String {
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
            Duration::from_nanos(3_333_333_333)
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
        let text = serde_yaml::to_string(&Config::default()).unwrap();
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

        let (key, _) = parse_error("coordinator:\n  activationBuffer: -1\n");
        assert_eq!(key, "coordinator.activationBuffer");

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

    #[test]
    fn session_ttl_must_be_at_least_etcds_minimum() {
        let mut config = Config::default();
        config.session.ttl = Duration::from_millis(1999);
        assert!(rejected(&config, "session.ttl").contains("at least 2s"));
        config.session.ttl = Duration::from_secs(2);
        config.validate().unwrap();
    }

    #[test]
    fn session_ttl_must_be_whole_seconds() {
        let mut config = Config::default();
        config.session.ttl = Duration::from_millis(2500);
        assert!(rejected(&config, "session.ttl").contains("whole number of seconds"));
    }

    #[test]
    fn session_ttl_must_fit_etcds_maximum() {
        let mut config = Config::default();
        config.session.ttl = Duration::from_secs(MAX_TTL_SECS + 1);
        rejected(&config, "session.ttl");
    }

    #[test]
    fn renew_deadline_must_be_strictly_below_ttl() {
        let mut config = Config::default();
        config.session.renew_deadline = Some(Duration::from_secs(10));
        let text = rejected(&config, "session.renewDeadline");
        assert!(text.contains("must be below session.ttl (10s)"), "{text}");
        config.session.renew_deadline = Some(Duration::ZERO);
        rejected(&config, "session.renewDeadline");
        config.session.renew_deadline = Some(Duration::from_millis(9999));
        config.validate().unwrap();
    }

    #[test]
    fn keepalive_interval_must_be_strictly_below_renew_deadline() {
        let mut config = Config::default();
        config.session.renew_deadline = Some(Duration::from_secs(5));
        config.session.keepalive_interval = Some(Duration::from_secs(5));
        let text = rejected(&config, "session.keepaliveInterval");
        assert!(text.contains("session.renewDeadline (5s)"), "{text}");

        // A derived interval that does not fit an explicit deadline is named too.
        config.session.keepalive_interval = None;
        config.session.renew_deadline = Some(Duration::from_secs(3));
        let text = rejected(&config, "session.keepaliveInterval");
        assert!(text.contains("unset"), "{text}");
    }

    #[test]
    fn keepalive_interval_must_not_be_zero() {
        let mut config = Config::default();
        config.session.keepalive_interval = Some(Duration::ZERO);
        rejected(&config, "session.keepaliveInterval");
    }

    #[test]
    fn standby_log_interval_must_not_be_zero() {
        let mut config = Config::default();
        config.session.standby_log_interval = Duration::ZERO;
        rejected(&config, "session.standbyLogInterval");
    }

    #[test]
    fn endpoints_must_not_be_empty() {
        let mut config = Config::default();
        config.etcd.endpoints.clear();
        rejected(&config, "etcd.endpoints");
        config.etcd.endpoints = vec![" ".to_owned()];
        rejected(&config, "etcd.endpoints");
    }

    #[test]
    fn root_path_must_be_non_empty_and_not_slash_edged() {
        for root in ["", "/standin", "standin/", "/", "a//b"] {
            let mut config = Config::default();
            config.etcd.root_path = root.to_owned();
            rejected(&config, "etcd.rootPath");
        }
    }

    #[test]
    fn node_address_must_not_be_empty() {
        let mut config = Config::default();
        config.node.address = String::new();
        rejected(&config, "node.address");
    }

    #[test]
    fn timeouts_must_not_be_zero() {
        fn zero_rejected(key: &str, break_it: impl FnOnce(&mut Config)) {
            let mut config = Config::default();
            break_it(&mut config);
            rejected(&config, key);
        }
        zero_rejected("etcd.connectTimeout", |c| {
            c.etcd.connect_timeout = Duration::ZERO
        });
        zero_rejected("etcd.requestTimeout", |c| {
            c.etcd.request_timeout = Duration::ZERO
        });
        zero_rejected("coordinator.deactivateTimeout", |c| {
            c.coordinator.deactivate_timeout = Duration::ZERO
        });
        zero_rejected("reload.timeout", |c| c.reload.timeout = Duration::ZERO);
    }

    #[test]
    fn activation_buffer_must_be_at_least_one() {
        let mut config = Config::default();
        config.coordinator.activation_buffer = 0;
        rejected(&config, "coordinator.activationBuffer");
    }

    #[test]
    fn page_size_must_be_in_range() {
        for size in [0, -1, MAX_PAGE_SIZE + 1] {
            let mut config = Config::default();
            config.reload.page_size = size;
            rejected(&config, "reload.pageSize");
        }
        let mut config = Config::default();
        config.reload.page_size = MAX_PAGE_SIZE;
        config.validate().unwrap();
    }

    #[test]
    fn backoffs_need_a_nonzero_initial_and_a_max_at_least_initial() {
        let mut config = Config::default();
        config.etcd.retry.initial = Duration::ZERO;
        rejected(&config, "etcd.retry.initial");

        let mut config = Config::default();
        config.etcd.retry.max = Duration::from_millis(100);
        let text = rejected(&config, "etcd.retry.max");
        assert!(text.contains("etcd.retry.initial (200ms)"), "{text}");

        let mut config = Config::default();
        config.coordinator.restart_backoff.initial = Duration::ZERO;
        rejected(&config, "coordinator.restartBackoff.initial");

        let mut config = Config::default();
        config.coordinator.restart_backoff.max = Duration::from_millis(10);
        rejected(&config, "coordinator.restartBackoff.max");
    }

    /// `(name, value)` pairs as an environment.
    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn with_env(text: &str, pairs: &[(&str, &str)]) -> Config {
        Config::from_yaml_str_with_env(text, env(pairs)).unwrap()
    }

    fn env_error(text: &str, pairs: &[(&str, &str)]) -> ConfigError {
        Config::from_yaml_str_with_env(text, env(pairs)).unwrap_err()
    }

    /// A scratch directory for files a test config names, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("standin-config-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
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
        let defaults = serde_yaml::to_value(Config::default()).unwrap();
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
            password: "007".into(),
        });
        for role in ["rootcoord", "tso"] {
            config.roles.insert(
                role.into(),
                RoleConfig {
                    active_standby: ActiveStandbyConfig { enabled: false },
                },
            );
        }
        let text = serde_yaml::to_string(&config).unwrap();
        assert!(
            text.contains("rootcoord:\n  activeStandby:\n    enabled: false"),
            "{text}"
        );
        assert_eq!(Config::from_yaml_str(&text).unwrap(), config);
        // Through the serde traits too, as another format would use them.
        let value = serde_yaml::to_value(&config).unwrap();
        assert_eq!(serde_yaml::from_value::<Config>(value).unwrap(), config);
    }

    #[test]
    fn numbers_written_for_strings_are_kept_as_written() {
        let config = Config::from_yaml_str(
            "etcd:\n  rootPath: 2024\n  auth:\n    user: 42\n    password: 0123\n",
        )
        .unwrap();
        assert_eq!(config.etcd.root_path, "2024");
        let auth = config.etcd.auth.unwrap();
        assert_eq!((auth.user.as_str(), auth.password.as_str()), ("42", "0123"));
    }

    #[test]
    fn connect_attempts_and_auth_parse() {
        let config = Config::from_yaml_str(
            "etcd:\n  connectAttempts: 0\n  auth:\n    user: root\n    password: secret\n",
        )
        .unwrap();
        assert_eq!(config.etcd.connect_attempts, 0);
        let auth = config.etcd.auth.clone().unwrap();
        assert_eq!(auth.user, "root");
        assert_eq!(auth.password, "secret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");

        let (key, message) = parse_error("etcd:\n  auth:\n    user: root\n");
        assert_eq!(key, "etcd.auth");
        assert!(message.starts_with("missing field `password`"), "{message}");

        let mut config = Config::default();
        config.etcd.auth = Some(AuthConfig {
            user: " ".into(),
            password: "x".into(),
        });
        rejected(&config, "etcd.auth.user");
    }

    #[test]
    fn tls_files_must_exist_and_pair_up() {
        let scratch = Scratch::new("tls");
        let ca = scratch.file("ca.pem");
        let cert = scratch.file("client.pem");
        let key = scratch.file("client-key.pem");
        let text = format!(
            "etcd:\n  tls:\n    caFile: {}\n    certFile: {}\n    keyFile: {}\n    domain: etcd.internal\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let config = Config::from_yaml_str(&text).unwrap();
        let tls = config.etcd.tls.clone().unwrap();
        assert_eq!(tls.ca_file, ca);
        assert_eq!(tls.domain.as_deref(), Some("etcd.internal"));

        let missing = scratch.0.join("missing.pem");
        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().ca_file = missing.clone();
        let err = broken.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::FileUnreadable {
                    key: "etcd.tls.caFile",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("etcd.tls.caFile"), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().key_file = Some(scratch.0.clone());
        let err = broken.validate().unwrap_err();
        assert!(err.to_string().contains("etcd.tls.keyFile"), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().key_file = None;
        rejected(&broken, "etcd.tls.keyFile");
        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().cert_file = None;
        rejected(&broken, "etcd.tls.certFile");

        let mut broken = config.clone();
        broken.etcd.endpoints = vec!["http://127.0.0.1:2379".into()];
        rejected(&broken, "etcd.endpoints");
        let mut broken = Config::default();
        broken.etcd.endpoints = vec!["https://127.0.0.1:2379".into()];
        rejected(&broken, "etcd.tls");

        let (key, message) = parse_error("etcd:\n  tls:\n    certFile: x\n");
        assert_eq!(key, "etcd.tls");
        assert!(message.starts_with("missing field `caFile`"), "{message}");
    }

    #[test]
    fn env_sets_keys_by_path_in_either_spelling() {
        let config = with_env(
            "",
            &[
                ("STANDIN_SESSION_TTL", "5s"),
                ("STANDIN_ETCD_ROOT_PATH", "x"),
                ("STANDIN_ETCD_RETRY_MAX", "1s"),
                ("STANDIN_ETCD_CONNECTATTEMPTS", "0"),
                ("STANDIN_etcd_auth_user", "root"),
                ("STANDIN_ETCD_AUTH_PASSWORD", "0123"),
                ("STANDIN_RELOAD_PAGE_SIZE", "7"),
                ("STANDIN_TSO_MAX_COUNT", "9"),
                ("PATH", "/usr/bin"),
            ],
        );
        assert_eq!(config.session.ttl, Duration::from_secs(5));
        assert_eq!(config.etcd.root_path, "x");
        // A backoff block made by a variable keeps its block's defaults.
        assert_eq!(config.etcd.retry.max, Duration::from_secs(1));
        assert_eq!(config.etcd.retry.initial, Duration::from_millis(200));
        assert_eq!(config.etcd.connect_attempts, 0);
        let auth = config.etcd.auth.unwrap();
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("root", "0123")
        );
        assert_eq!(config.reload.page_size, 7);
        assert_eq!(config.tso.max_count, 9);

        let config = with_env("", &[("STANDIN_ETCD_ROOTPATH", "y")]);
        assert_eq!(config.etcd.root_path, "y");
    }

    #[test]
    fn env_wins_over_the_file_and_can_unset_an_optional_key() {
        let text = "etcd:\n  rootPath: from-file\nsession:\n  ttl: 9s\n  keepaliveInterval: 1s\n";
        let config = with_env(
            text,
            &[
                ("STANDIN_ETCD_ROOT_PATH", "from-env"),
                ("STANDIN_SESSION_KEEPALIVE_INTERVAL", ""),
            ],
        );
        assert_eq!(config.etcd.root_path, "from-env");
        assert_eq!(config.session.ttl, Duration::from_secs(9));
        assert_eq!(config.session.keepalive_interval, None);
    }

    #[test]
    fn env_lists_are_comma_separated_and_standin_names_win_over_milvus_names() {
        let config = with_env("", &[("STANDIN_ETCD_ENDPOINTS", "a:1, b:2,")]);
        assert_eq!(config.etcd.endpoints, vec!["a:1", "b:2"]);
        let config = with_env("", &[("ETCD_ENDPOINTS", "c:3,d:4")]);
        assert_eq!(config.etcd.endpoints, vec!["c:3", "d:4"]);
        let config = with_env(
            "",
            &[("ETCD_ENDPOINTS", "c:3"), ("STANDIN_ETCD_ENDPOINTS", "a:1")],
        );
        assert_eq!(config.etcd.endpoints, vec!["a:1"]);
    }

    #[test]
    fn env_role_switches_take_milvus_and_standin_names() {
        let config = with_env(
            "rootcoord:\n  activeStandby:\n    enabled: true\n",
            &[
                ("ROOT_COORD_ENABLE_ACTIVE_STANDBY", "false"),
                ("TSO_ENABLE_ACTIVE_STANDBY", "FALSE"),
                ("STANDIN_DATA_COORD_ACTIVE_STANDBY_ENABLED", "false"),
                ("STANDIN_QUERYCOORD_ACTIVESTANDBY_ENABLED", "true"),
            ],
        );
        assert!(!config.role("rootcoord").active_standby.enabled);
        assert!(!config.role("tso").active_standby.enabled);
        assert!(!config.role("datacoord").active_standby.enabled);
        assert!(config.role("querycoord").active_standby.enabled);
        // The tso settings beside the switch keep their defaults.
        assert_eq!(config.tso, TsoConfig::default());

        let config = with_env("", &[("STANDIN_TSO_ACTIVE_STANDBY_ENABLED", "false")]);
        assert!(!config.role("tso").active_standby.enabled);
    }

    #[test]
    fn an_env_value_that_does_not_parse_names_the_variable_the_value_and_the_key() {
        let check = |pairs: &[(&str, &str)], variable: &str, value: &str, key: &str| match env_error(
            "", pairs,
        ) {
            ConfigError::EnvParseFailed {
                variable: v,
                value: shown,
                key: k,
                message,
            } => {
                assert_eq!(
                    (v.as_str(), shown.as_str(), k.as_str()),
                    (variable, value, key)
                );
                message
            }
            other => panic!("expected an env parse error, got {other:?}"),
        };
        let message = check(
            &[("STANDIN_SESSION_TTL", "5x")],
            "STANDIN_SESSION_TTL",
            "5x",
            "session.ttl",
        );
        assert!(message.starts_with("invalid value"), "{message}");
        let message = check(
            &[("STANDIN_ETCD_CONNECT_ATTEMPTS", "many")],
            "STANDIN_ETCD_CONNECT_ATTEMPTS",
            "many",
            "etcd.connectAttempts",
        );
        assert_eq!(message, "expected a number");
        check(
            &[("STANDIN_ETCD_CONNECT_ATTEMPTS", "-1")],
            "STANDIN_ETCD_CONNECT_ATTEMPTS",
            "-1",
            "etcd.connectAttempts",
        );
        let message = check(
            &[("ROOT_COORD_ENABLE_ACTIVE_STANDBY", "yes")],
            "ROOT_COORD_ENABLE_ACTIVE_STANDBY",
            "yes",
            "rootcoord.activeStandby.enabled",
        );
        assert_eq!(message, "expected true or false");
        // A Milvus switch for a name that is a section lands where it does not fit.
        check(
            &[("ETCD_ENABLE_ACTIVE_STANDBY", "false")],
            "ETCD_ENABLE_ACTIVE_STANDBY",
            "false",
            "etcd.activeStandby",
        );

        let text = env_error("", &[("STANDIN_SESSION_TTL", "5x")]).to_string();
        assert!(text.contains("STANDIN_SESSION_TTL=\"5x\""), "{text}");
        assert!(text.contains("session.ttl"), "{text}");
    }

    #[test]
    fn an_unknown_standin_variable_is_an_error_naming_it() {
        for variable in [
            "STANDIN_SESION_TTL",
            "STANDIN_SESSION",
            "STANDIN_ETCD_RETRY",
            "STANDIN_",
            "STANDIN_ETCD_ACTIVE_STANDBY_ENABLED",
        ] {
            match env_error("", &[(variable, "1")]) {
                ConfigError::UnknownEnvVar { variable: named } => assert_eq!(named, variable),
                other => panic!("{variable}: expected an unknown-variable error, got {other:?}"),
            }
        }
    }

    #[test]
    fn two_spellings_of_one_key_conflict() {
        let err = env_error(
            "",
            &[
                ("STANDIN_ETCD_ROOTPATH", "a"),
                ("STANDIN_ETCD_ROOT_PATH", "b"),
            ],
        );
        assert!(
            matches!(&err, ConfigError::EnvConflict { key, .. } if key == "etcd.rootPath"),
            "{err:?}"
        );
    }

    #[test]
    fn a_rejected_env_value_names_its_variable() {
        let err = env_error("", &[("STANDIN_SESSION_TTL", "1s")]);
        match &err {
            ConfigError::InvalidFromEnv { variable, source } => {
                assert_eq!(variable, "STANDIN_SESSION_TTL");
                assert!(
                    matches!(
                        **source,
                        ConfigError::Invalid {
                            key: "session.ttl",
                            ..
                        }
                    ),
                    "{source:?}"
                );
            }
            other => panic!("expected a rejection blamed on the variable, got {other:?}"),
        }
        assert!(err.to_string().contains("STANDIN_SESSION_TTL"), "{err}");
        // The password never shows in an error.
        let err = env_error(
            "etcd:\n  auth: 5\n",
            &[("STANDIN_ETCD_AUTH_PASSWORD", "hunter2")],
        );
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn load_with_env_reads_the_file_then_the_environment() {
        let scratch = Scratch::new("load-env");
        let path = scratch.0.join("standin.yaml");
        std::fs::write(&path, "reload:\n  pageSize: 7\n").unwrap();
        let config = Config::load_with_env(&path, env(&[("STANDIN_SESSION_TTL", "4s")])).unwrap();
        assert_eq!(config.reload.page_size, 7);
        assert_eq!(config.session.ttl, Duration::from_secs(4));
    }
}
