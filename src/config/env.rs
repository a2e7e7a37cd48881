//! Environment overrides: `STANDIN_*` variables and Milvus's names, matched and typed against the config's schema and applied to the YAML document.

use std::time::Duration;

use serde::Serialize;
use serde_norway::{Mapping, Value};

use super::locate::{Override, Seg, plain_scalar, raw_scalar};
use super::{
    ACTIVE_STANDBY, AuthConfig, Config, ConfigError, ROLE_SECTIONS, RoleConfig, SECTIONS,
    ServerTlsConfig, TlsConfig,
};

/// Every key a config can have, each with a value of its type: the
/// defaults with every optional part filled in. Environment variables are
/// matched and typed against it, and a number or boolean written where it
/// has a string is read back as the string the file wrote. An `Option`
/// field added later and not filled in here is still found, as a string.
pub(super) struct Schema {
    /// The sections (and the built-in roles' `activeStandby`).
    sections: Value,
    /// A role section, found under any top-level key that is not a section.
    role: Value,
    /// The defaults, to tell an optional key (null by default) from a string.
    defaults: Value,
}

impl Schema {
    pub(super) fn new() -> Self {
        let mut full = Config::default();
        full.etcd.tls = Some(TlsConfig {
            ca_file: "ca.pem".into(),
            cert_file: Some("cert.pem".into()),
            key_file: Some("key.pem".into()),
            domain: Some("etcd".into()),
        });
        full.etcd.auth = Some(AuthConfig {
            user: "user".into(),
            password: Some("password".into()),
            password_file: Some("password.txt".into()),
        });
        full.server.tls = Some(ServerTlsConfig {
            cert_file: "server.pem".into(),
            key_file: "server-key.pem".into(),
            client_ca_file: Some("client-ca.pem".into()),
            client_cert_optional: false,
        });
        full.server.auth.tokens_file = Some("tokens".into());
        full.client.tls = full.etcd.tls.clone();
        full.client.token_file = Some("token".into());
        full.node.address = Some(super::DEFAULT_NODE_ADDRESS.to_owned());
        full.node.witness_address = Some("127.0.0.1:0".to_owned());
        full.node.witness_advertised_address = Some("127.0.0.1:1".to_owned());
        full.node.witness_secret_file = Some("witness-secret".into());
        full.session.keepalive_interval = Some(Duration::from_secs(1));
        full.session.renew_deadline = Some(Duration::from_secs(2));
        for role in ROLE_SECTIONS {
            full.roles.insert(role.to_owned(), RoleConfig::default());
        }
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
    pub(super) fn restore_strings(&self, document: &mut Mapping, text: Option<&str>) {
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
    serde_norway::to_value(value).expect("config structs serialize to YAML")
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

/// Applies the environment's overrides to the document, Milvus's names
/// first so that standin's own win, and returns them for error messages.
pub(super) fn apply_env(
    schema: &Schema,
    document: &mut Mapping,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    // (precedence, key path, variable, value)
    let mut settings = Vec::new();
    for (variable, raw) in env {
        let (precedence, path) = if let Some(rest) = variable.strip_prefix(ENV_PREFIX) {
            let Some(path) = schema.env_path(rest) else {
                if is_service_link(&variable) {
                    // Kubernetes gives every pod these for a Service named
                    // `standin` (or `standin-*`): they are not settings.
                    tracing::debug!(variable, "ignoring a Kubernetes service-link variable");
                    continue;
                }
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

/// Whether `variable` has the shape of the variables Kubernetes injects for a
/// Service (`{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT[_{PORT_NAME}]`,
/// `{NAME}_PORT`, `{NAME}_PORT_{n}_{PROTO}[_PROTO|_PORT|_ADDR]`). Only names
/// that match no config key are asked.
pub(super) fn is_service_link(variable: &str) -> bool {
    if variable.ends_with("_SERVICE_HOST")
        || variable.ends_with("_SERVICE_PORT")
        || variable.contains("_SERVICE_PORT_")
        || variable.ends_with("_PORT")
    {
        return true;
    }
    // `_PORT_{n}_{PROTO}` followed by nothing or one of three fields.
    variable.match_indices("_PORT_").any(|(at, marker)| {
        let mut parts = variable[at + marker.len()..].split('_');
        let number = parts.next().is_some_and(|n| {
            !n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit())
        });
        let protocol = parts
            .next()
            .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
        let field = match (parts.next(), parts.next()) {
            (None, _) => true,
            (Some(field), None) => matches!(field, "PROTO" | "PORT" | "ADDR"),
            _ => false,
        };
        number && protocol && field
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TsoConfig;
    use crate::config::tests::Scratch;

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
            (auth.user.as_str(), auth.password.as_deref()),
            ("root", Some("0123"))
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
    fn kubernetes_service_link_variables_are_ignored_and_other_unknown_ones_still_fail() {
        // What a kubelet sets for Services `standin` (ports grpc 19530 and
        // witness 19531) and `standin-etcd`.
        let links = [
            ("STANDIN_SERVICE_HOST", "10.96.0.12"),
            ("STANDIN_SERVICE_PORT", "19530"),
            ("STANDIN_SERVICE_PORT_GRPC", "19530"),
            ("STANDIN_SERVICE_PORT_WITNESS", "19531"),
            ("STANDIN_PORT", "tcp://10.96.0.12:19530"),
            ("STANDIN_PORT_19530_TCP", "tcp://10.96.0.12:19530"),
            ("STANDIN_PORT_19530_TCP_PROTO", "tcp"),
            ("STANDIN_PORT_19530_TCP_PORT", "19530"),
            ("STANDIN_PORT_19530_TCP_ADDR", "10.96.0.12"),
            ("STANDIN_PORT_19531_UDP", "udp://10.96.0.12:19531"),
            ("STANDIN_ETCD_SERVICE_HOST", "10.96.0.13"),
            ("STANDIN_ETCD_PORT", "tcp://10.96.0.13:2379"),
            ("STANDIN_ETCD_PORT_2379_TCP_ADDR", "10.96.0.13"),
        ];
        let config = with_env("", &links);
        assert_eq!(config, Config::from_yaml_str("").unwrap());
        // A key of the schema is still a key, beside the links.
        let mut with_ttl = links.to_vec();
        with_ttl.push(("STANDIN_SESSION_TTL", "4s"));
        assert_eq!(with_env("", &with_ttl).session.ttl, Duration::from_secs(4));
        for variable in [
            "STANDIN_PORTS",
            "STANDIN_PORT_X_TCP",
            "STANDIN_PORT_19530_TCP_HOST",
            "STANDIN_PORT_19530_HTTP",
            "STANDIN_PORT_1953000_TCP",
            "STANDIN_SERVICE_HOSTS",
            "STANDIN_SESSION_TLL",
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
