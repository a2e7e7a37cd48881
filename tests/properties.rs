//! Bad input by the thousand: arbitrary YAML, config documents built from the schema's keys, `STANDIN_*` variables and session values read from etcd; every one parses or is refused with an error naming what is wrong, and none panics.
//!
//! `PROPTEST_CASES` sets the cases per property (256 by default).

use proptest::prelude::*;
use serde_norway::{Mapping, Value};
use standin::etcd::session::SessionInfo;
use standin::{Config, ConfigError};

/// Every key path a config can have: the defaults' keys, and the optional
/// ones the defaults leave out.
fn key_paths() -> Vec<Vec<String>> {
    fn walk(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Mapping(mapping) = value {
            for (key, child) in mapping {
                if let Some(key) = key.as_str() {
                    path.push(key.to_owned());
                    out.push(path.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
        }
    }
    let mut out = Vec::new();
    let defaults = serde_norway::to_value(Config::default()).expect("the defaults serialize");
    walk(&defaults, &mut Vec::new(), &mut out);
    for optional in [
        "etcd.tls.caFile",
        "etcd.tls.certFile",
        "etcd.tls.keyFile",
        "etcd.tls.domain",
        "etcd.auth.user",
        "etcd.auth.password",
        "etcd.auth.passwordFile",
        "node.address",
        "node.witnessAddress",
        "session.renewDeadline",
        "session.keepaliveInterval",
        "server.tls.certFile",
        "server.tls.keyFile",
        "server.tls.clientCaFile",
        "server.auth.tokensFile",
        "client.tls.caFile",
        "client.tokenFile",
        "rootcoord.activeStandby.enabled",
    ] {
        out.push(optional.split('.').map(str::to_owned).collect());
    }
    out
}

/// A YAML value of any shape, biased towards what config keys take.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        (0u64..100_000).prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        "[0-9]{1,6}(ms|s|m|h|d)".prop_map(Value::String),
        "-?[0-9]{1,25}[a-z]{0,3}".prop_map(Value::String),
        "127\\.0\\.0\\.1:[0-9]{1,6}".prop_map(Value::String),
        "[ -~]{0,24}".prop_map(Value::String),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            proptest::collection::vec(("[a-zA-Z]{1,8}", inner), 0..3).prop_map(|pairs| {
                Value::Mapping(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (Value::String(k), v))
                        .collect(),
                )
            }),
        ]
    })
}

/// Sets `path` to `value` in `document`, making the mappings on the way.
fn set(document: &mut Mapping, path: &[String], value: Value) {
    let (first, rest) = path.split_first().expect("a key path has a key");
    let key = Value::String(first.clone());
    if rest.is_empty() {
        document.insert(key, value);
        return;
    }
    let child = document
        .entry(key)
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !child.is_mapping() {
        *child = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(child) = child {
        set(child, rest, value);
    }
}

/// What every refusal must be: a message that says where the problem is.
fn names_where(error: &ConfigError) -> bool {
    let text = error.to_string();
    text.contains("config key `") || text.contains("environment variable")
}

proptest! {
    /// Any text at all: a config, or an error naming a key (the root for
    /// text that is no mapping).
    #[test]
    fn any_text_loads_or_names_a_key(text in "(.|\n){0,300}") {
        if let Err(error) = Config::from_yaml_str(&text) {
            prop_assert!(names_where(&error), "{}", error);
        }
    }

    /// Documents made of real keys with values of any shape reach deep
    /// into parsing and validation; every refusal names a key.
    #[test]
    fn documents_of_real_keys_load_or_name_a_key(
        settings in proptest::collection::vec((0..1000usize, value()), 1..6),
    ) {
        let paths = key_paths();
        let mut document = Mapping::new();
        for (pick, value) in settings {
            set(&mut document, &paths[pick % paths.len()], value);
        }
        let text = serde_norway::to_string(&Value::Mapping(document)).expect("YAML serializes");
        match Config::from_yaml_str(&text) {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(error) => prop_assert!(names_where(&error), "{}\n{}", error, text),
        }
    }

    /// `STANDIN_*` variables for real and made-up keys, with any values: a
    /// config, or an error naming a variable or key, and a password set by
    /// variable never in it.
    #[test]
    fn environment_overrides_apply_or_name_the_variable(
        settings in proptest::collection::vec((0..1000usize, "[ -~]{0,16}", any::<bool>()), 1..5),
        password in "[a-zA-Z0-9]{8,16}",
    ) {
        let paths = key_paths();
        let mut env: Vec<(String, String)> = settings
            .into_iter()
            .map(|(pick, value, mangle)| {
                let path = &paths[pick % paths.len()];
                let mut name = format!("STANDIN_{}", path.join("_").to_ascii_uppercase());
                if mangle {
                    name.push_str("_X");
                }
                (name, value)
            })
            .collect();
        env.push(("STANDIN_ETCD_AUTH_USER".into(), "root".into()));
        env.push(("STANDIN_ETCD_AUTH_PASSWORD".into(), password.clone()));
        if let Err(error) = Config::from_yaml_str_with_env("", env) {
            prop_assert!(names_where(&error), "{}", error);
            prop_assert!(!error.to_string().contains(&password), "{}", error);
        }
    }

    /// Any bytes in a session key: refused, never a panic.
    #[test]
    fn any_session_bytes_decode_or_are_reported(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_session(&bytes)?;
    }

    /// JSON objects with the session's fields holding values of any type:
    /// when one decodes, its address is one a client can dial.
    #[test]
    fn session_like_json_never_yields_an_unusable_leader(
        fields in proptest::collection::vec((0..8usize, json()), 0..9),
    ) {
        const NAMES: [&str; 8] = ["server_id", "role", "address", "version", "state", "lease_id", "witness", "extra"];
        let object: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(name, value)| (NAMES[name].to_owned(), value))
            .collect();
        check_session(&serde_json::to_vec(&object).expect("JSON serializes"))?;
    }

    /// A real session with one or two fields replaced by anything: still
    /// never a leader with an unusable address.
    #[test]
    fn a_session_with_fields_replaced_is_checked(
        replaced in proptest::collection::vec((0..8usize, json()), 1..3),
    ) {
        const NAMES: [&str; 8] = ["server_id", "role", "address", "version", "state", "lease_id", "witness", "extra"];
        let mut object = serde_json::json!({
            "server_id": 3, "role": "tso", "address": "127.0.0.1:19530", "version": "0.1.0",
            "state": "serving", "lease_id": 77,
            "witness": {"address": "127.0.0.1:4000", "incarnation": "ab12"},
        });
        for (name, value) in replaced {
            object[NAMES[name]] = value;
        }
        check_session(&serde_json::to_vec(&object).expect("JSON serializes"))?;
    }
}

fn check_session(bytes: &[u8]) -> Result<(), TestCaseError> {
    match SessionInfo::decode(b"standin/session/tso-1", bytes) {
        Ok(session) => {
            prop_assert!(!session.role.is_empty());
            let (host, port) = session
                .address
                .rsplit_once(':')
                .ok_or_else(|| TestCaseError::fail("an address without a port decoded"))?;
            prop_assert!(!host.is_empty(), "{:?}", session.address);
            prop_assert!(port.parse::<u16>().is_ok(), "{:?}", session.address);
        }
        Err(error) => {
            prop_assert!(
                error.to_string().contains("standin/session/tso-1"),
                "{}",
                error
            );
        }
    }
    Ok(())
}

/// A JSON value of any type, with strings that are sometimes addresses.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| n.into()),
        "(standby|serving|activating|stopping|[a-z]{0,6})".prop_map(serde_json::Value::String),
        "(127\\.0\\.0\\.1|\\[::1\\]|[a-z]{0,4}):?[0-9]{0,6}".prop_map(serde_json::Value::String),
        ".{0,10}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            proptest::collection::vec(("(address|incarnation|[a-z]{1,5})", inner), 0..3)
                .prop_map(|pairs| serde_json::Value::Object(pairs.into_iter().collect())),
        ]
    })
}
