//! The section of the built-in `kv` role (`standin run`): quotas that keep one role from filling etcd; a node that runs only its embedder's roles ignores it.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The register's quotas (YAML section `kv`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KvConfig {
    /// The most keys the register holds: a `Put` of a new key beyond it is
    /// refused (`RESOURCE_EXHAUSTED`), while puts to existing keys go on.
    pub max_keys: usize,
    /// The most bytes of keys and values the register holds, in bytes: a
    /// `Put` that would pass it is refused. etcd's backend holds 2 GiB by
    /// default and every lease grant and fenced write fails once it is full
    /// (NOSPACE), so the default leaves it room for every history etcd keeps.
    pub max_bytes: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

impl KvConfig {
    /// Rejects quotas that would refuse every write.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::Invalid {
                key: "kv.maxKeys",
                value: "0".to_owned(),
                message: "must be at least 1: every put of a key would be refused".to_owned(),
            });
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "kv.maxBytes",
                value: "0".to_owned(),
                message: "must be at least 1: every put would be refused".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_of_zero_are_rejected_by_name() {
        KvConfig::default().validate().unwrap();
        let keys = KvConfig {
            max_keys: 0,
            ..KvConfig::default()
        };
        assert!(
            keys.validate()
                .unwrap_err()
                .to_string()
                .contains("kv.maxKeys")
        );
        let bytes = KvConfig {
            max_bytes: 0,
            ..KvConfig::default()
        };
        assert!(
            bytes
                .validate()
                .unwrap_err()
                .to_string()
                .contains("kv.maxBytes")
        );
    }
}
