//! Every effective config value and where it came from: the default, a line of the file, or an environment variable (`standin check-config --print`).

use serde::Serialize;
use serde_norway::Value;

use super::env::{Schema, apply_env};
use super::locate::{Origin, Seg, locate, plain_scalar, show_path};
use super::{Config, ConfigError, read_document, root_error};

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Source {
    /// Nothing set it.
    Default,
    /// The config file, at this line.
    File {
        /// The line of the key (1-based).
        line: usize,
    },
    /// An environment variable.
    Env {
        /// The variable's name.
        variable: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { line } => write!(f, "file line {line}"),
            Source::Env { variable } => write!(f, "env {variable}"),
        }
    }
}

/// One effective value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// Its key path, `session.ttl`, `etcd.endpoints`.
    pub key: String,
    /// The value as YAML writes it (`~` when unset; secrets redacted).
    pub value: String,
    /// Where it came from.
    #[serde(flatten)]
    pub source: Source,
}

/// Keys whose values never leave the process.
const SECRETS: [&str; 1] = ["etcd.auth.password"];

impl Config {
    /// Parses and validates `text` with the overrides in `env` as
    /// [`Config::from_yaml_str_with_env`] does, and returns every effective
    /// value with its source, in key order of the sections.
    pub fn explain_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<Setting>, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config = Config::from_yaml_str_with_env(text, env.clone())?;
        let schema = Schema::new();
        let mut document = read_document(text)?;
        let overrides = apply_env(&schema, &mut document, env)?;
        let origin = Origin {
            text: Some(text),
            overrides: &overrides,
        };
        let effective =
            serde_norway::to_value(&config).map_err(|error| root_error(error.to_string()))?;
        let mut settings = Vec::new();
        flatten(&effective, &mut Vec::new(), &mut |path, value| {
            let key = show_path(path);
            let source = match origin.variable(path) {
                Some(variable) => Source::Env { variable },
                None => match locate(text, path) {
                    Some(at) => Source::File { line: at.line() },
                    None => Source::Default,
                },
            };
            let value = if SECRETS.contains(&key.as_str()) && !matches!(value, Value::Null) {
                "<redacted>".to_owned()
            } else {
                shown(value)
            };
            settings.push(Setting { key, value, source });
        });
        Ok(settings)
    }
}

/// Calls `leaf` for every scalar and list under `value`, with its path.
fn flatten(value: &Value, path: &mut Vec<Seg>, leaf: &mut impl FnMut(&[Seg], &Value)) {
    match value {
        Value::Mapping(mapping) if !mapping.is_empty() => {
            for (key, child) in mapping {
                path.push(Seg::key(&plain_scalar(key).unwrap_or_default()));
                flatten(child, path, leaf);
                path.pop();
            }
        }
        _ => leaf(path, value),
    }
}

/// A value on one line: scalars as YAML writes them, lists in flow style.
fn shown(value: &Value) -> String {
    match value {
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(shown).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(_) => "{}".to_owned(),
        other => plain_scalar(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_of(settings: &[Setting], key: &str) -> Source {
        settings
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("no {key} in {settings:?}"))
            .source
            .clone()
    }

    #[test]
    fn every_value_names_its_default_its_file_line_or_its_variable() {
        let text = "etcd:\n  endpoints: [127.0.0.1:2379]\n  auth:\n    user: root\n    password: secret\nsession:\n  ttl: 10s\n";
        let env = [
            ("STANDIN_SESSION_TTL".to_owned(), "5s".to_owned()),
            (
                "ROOTCOORD_ENABLE_ACTIVE_STANDBY".to_owned(),
                "false".to_owned(),
            ),
        ];
        let settings = Config::explain_with_env(text, env).unwrap();
        let ttl = settings.iter().find(|s| s.key == "session.ttl").unwrap();
        assert_eq!(ttl.value, "5s");
        assert_eq!(
            ttl.source,
            Source::Env {
                variable: "STANDIN_SESSION_TTL".into()
            }
        );
        assert_eq!(
            source_of(&settings, "etcd.endpoints"),
            Source::File { line: 2 }
        );
        assert_eq!(source_of(&settings, "etcd.requestTimeout"), Source::Default);
        assert_eq!(
            source_of(&settings, "rootcoord.activeStandby.enabled"),
            Source::Env {
                variable: "ROOTCOORD_ENABLE_ACTIVE_STANDBY".into()
            }
        );
        let password = settings
            .iter()
            .find(|s| s.key == "etcd.auth.password")
            .unwrap();
        assert_eq!(password.value, "<redacted>");
        assert!(settings.iter().all(|s| !s.value.contains("secret")));
        let json = serde_json::to_string(ttl).unwrap();
        assert_eq!(
            json,
            r#"{"key":"session.ttl","value":"5s","source":"env","variable":"STANDIN_SESSION_TTL"}"#
        );
    }
}
