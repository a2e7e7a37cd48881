//! The node's configuration: YAML with camelCase keys, every key defaulted, impossible timings rejected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime_serde::re::humantime;
use serde::{Deserialize, Deserializer, Serialize};

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
}

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
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
        }
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
    /// Parses a YAML document and validates it. An empty document (or one of
    /// only comments) is all defaults.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let mut documents = serde_yaml::Deserializer::from_str(text);
        let config = match documents.next() {
            None => Config::default(),
            Some(document) => {
                let config = serde_path_to_error::deserialize(document).map_err(|err| {
                    let key = if err.path().iter().next().is_none() {
                        // The path's own rendering of the root is ".", which reads as a typo.
                        "(root)".to_owned()
                    } else {
                        err.path().to_string()
                    };
                    let message = strip_yaml_path(&key, &err.into_inner().to_string());
                    ConfigError::ParseFailed { key, message }
                })?;
                // A second document would be silently ignored otherwise.
                if documents.next().is_some() {
                    return Err(ConfigError::ParseFailed {
                        key: "(root)".to_owned(),
                        message: "expected one YAML document, found several".to_owned(),
                    });
                }
                config
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads the YAML file at `path`, parses and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFailed {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Rejects values that parse but cannot work; the error names the first
    /// offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_etcd()?;
        self.validate_node()?;
        self.validate_session()?;
        self.validate_coordinator()?;
        self.validate_reload()
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
        validate_backoff(&etcd.retry, "etcd.retry.initial", "etcd.retry.max")
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

/// serde_yaml starts its messages with its own path of the value (`session.ttl: invalid
/// value ...`), which would repeat the key already in front of the message; drop it when
/// it is `key` or a parent of it (for an unknown key it names the containing struct).
fn strip_yaml_path(key: &str, message: &str) -> String {
    if let Some((path, rest)) = message.split_once(": ") {
        let parent_of_key = key
            .strip_prefix(path)
            .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']));
        if parent_of_key {
            return rest.to_owned();
        }
    }
    message.to_owned()
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

        let (key, message) = parse_error("sesion:\n  ttl: 10s\n");
        assert_eq!(key, "sesion");
        assert!(message.starts_with("unknown field `sesion`"), "{message}");
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
}
