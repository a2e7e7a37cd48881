//! The built-in register coordinator (`kv` role): `Put` persisted through the fenced store, `Get` answered from memory, an activation that writes nothing.
//!
//! It is the shape of coordinator that the `tso` role hides: everything it
//! answers after activation comes from memory, so only the serving term
//! stands between a deposed node and a stale read. The fault campaign runs
//! it next to `tso` for that reason; it is also a small, real replicated
//! register for tests and demos.

use std::collections::BTreeMap;

use crate::config::KvConfig;
use crate::coordinator::{BoxError, Coordinator, MetaChange, Snapshot};
use crate::fence::{Epoch, FenceError, FencedStore};

/// The longest key a `Put` or `Get` may name, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// The largest value a `Put` may store, in bytes: far below etcd's default
/// request limit (1.5 MiB), so one role cannot fill etcd with a few writes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Failures of the register.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key is empty, too long, or would leave the role's prefix.
    #[error(
        "key {key:?} is not a register key: it must be 1 to {MAX_KEY_BYTES} bytes, with no empty, '.' or '..' segment"
    )]
    BadKey {
        /// The key asked for, lossily shortened for display.
        key: String,
    },
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("value of {size} bytes for key {key:?} is over the {MAX_VALUE_BYTES}-byte limit")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
    },
    /// The put would take the register past one of its quotas (`kv.maxKeys`,
    /// `kv.maxBytes`); nothing was written.
    #[error(
        "put of key {key:?} refused: the register would pass {quota} ({limit}); delete keys or \
         raise the quota"
    )]
    QuotaExceeded {
        /// The key.
        key: String,
        /// The quota's config key.
        quota: &'static str,
        /// Its value.
        limit: u64,
    },
    /// Persisting the value failed (fenced, or etcd unreachable): the
    /// register in memory is unchanged, and the write may or may not be in
    /// etcd (a successor's reload says which).
    #[error("persisting key {key:?} failed: {source}")]
    Persist {
        /// The key.
        key: String,
        /// Why.
        source: FenceError,
    },
}

/// A request to the register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvRequest {
    /// Sets `key` to `value`; answered once etcd has it.
    Put {
        /// The key, relative to the role's metadata prefix.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// The value of `key`, from memory.
    Get {
        /// The key.
        key: String,
    },
}

/// An answer of the register: the value (for a `Get`; `None` for a key
/// never put, and for every `Put`) and the term that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvAnswer {
    /// The value read.
    pub value: Option<Vec<u8>>,
    /// The revision of the epoch that answered.
    pub epoch: i64,
}

/// The register coordinator.
#[derive(Debug, Default, Clone)]
pub struct Kv {
    config: KvConfig,
}

impl Kv {
    /// A register with the quotas of `config` (the `kv` section).
    pub fn new(config: KvConfig) -> Self {
        Self { config }
    }
}

/// What a serving register holds: every key's value, and the store its puts go through.
#[derive(Debug)]
pub struct KvServing {
    entries: BTreeMap<String, Vec<u8>>,
    /// Bytes of every key and value in `entries`, for `kv.maxBytes`.
    bytes: u64,
    store: FencedStore,
    epoch: i64,
}

/// The bytes an entry counts for against `kv.maxBytes`.
fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// The register's bytes once `key` holds `value`, or the quota it would
/// pass. A put that does not grow the register always fits, so a register
/// already over its quotas (they were lowered) can still be rewritten.
fn after_put(
    config: &KvConfig,
    entries: &BTreeMap<String, Vec<u8>>,
    bytes: u64,
    key: &str,
    value: &[u8],
) -> Result<u64, (&'static str, u64)> {
    let old = entries.get(key);
    if old.is_none() && entries.len() >= config.max_keys {
        return Err(("kv.maxKeys", config.max_keys as u64));
    }
    let freed = old.map_or(0, |old| entry_bytes(key, old));
    let added = entry_bytes(key, value);
    let after = bytes - freed + added;
    if added > freed && after > config.max_bytes {
        return Err(("kv.maxBytes", config.max_bytes));
    }
    Ok(after)
}

/// `key` as a register key, or why not. The fenced store refuses keys that
/// leave the prefix too; checking here gives a reader the same answer for
/// a `Get`, which never reaches the store.
fn check_key(key: &str) -> Result<(), KvError> {
    let fits = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    if fits {
        Ok(())
    } else {
        Err(KvError::BadKey {
            key: crate::service::shown::shown(key),
        })
    }
}

impl Kv {
    async fn put(
        &self,
        serving: &mut KvServing,
        key: String,
        value: Vec<u8>,
    ) -> Result<KvAnswer, KvError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge {
                key,
                size: value.len(),
            });
        }
        let bytes = after_put(&self.config, &serving.entries, serving.bytes, &key, &value)
            .map_err(|(quota, limit)| KvError::QuotaExceeded {
                key: crate::service::shown::shown(&key),
                quota,
                limit,
            })?;
        // etcd first: memory changes only for a write this term made durable.
        if let Err(source) = serving.store.put(&key, value.clone()).await {
            return Err(KvError::Persist { key, source });
        }
        serving.entries.insert(key, value);
        serving.bytes = bytes;
        Ok(KvAnswer {
            value: None,
            epoch: serving.epoch,
        })
    }

    fn get(&self, serving: &KvServing, key: &str) -> Result<KvAnswer, KvError> {
        check_key(key)?;
        Ok(KvAnswer {
            value: serving.entries.get(key).cloned(),
            epoch: serving.epoch,
        })
    }
}

impl Coordinator for Kv {
    /// Every key under the role's prefix and its value.
    type Meta = BTreeMap<String, Vec<u8>>;
    type Serving = KvServing;
    type Request = KvRequest;
    type Response = Result<KvAnswer, KvError>;

    fn decode(&self, snapshot: Snapshot) -> Result<Self::Meta, BoxError> {
        Ok(snapshot.entries)
    }

    // The register's memory is the whole metadata: a warm standby keeps it
    // current, so a takeover hands it over instead of copying every key.
    const INCREMENTAL: bool = true;

    fn apply_change(&self, entries: &mut Self::Meta, change: &MetaChange) -> Result<(), BoxError> {
        change.apply_to(entries);
        Ok(())
    }

    async fn activate(
        &self,
        epoch: Epoch,
        entries: Self::Meta,
        store: FencedStore,
    ) -> Result<KvServing, BoxError> {
        tracing::info!(
            role = epoch.role,
            revision = epoch.revision,
            keys = entries.len(),
            "register serves"
        );
        let bytes = entries
            .iter()
            .map(|(key, value)| entry_bytes(key, value))
            .sum();
        Ok(KvServing {
            entries,
            bytes,
            store,
            epoch: epoch.revision,
        })
    }

    async fn handle(&self, serving: &mut KvServing, request: KvRequest) -> Self::Response {
        match request {
            KvRequest::Put { key, value } => self.put(serving, key, value).await,
            KvRequest::Get { key } => self.get(serving, &key),
        }
    }

    async fn deactivate(&self, serving: KvServing) {
        // Freeing every entry holds a worker thread for milliseconds per
        // 100k keys, and the step-down's resign waits for this hook.
        tokio::task::spawn_blocking(move || drop(serving));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_keys_are_bounded_relative_paths() {
        for good in ["a", "user/42", "x.y", &"k".repeat(MAX_KEY_BYTES)] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/./b",
            &"k".repeat(MAX_KEY_BYTES + 1),
        ] {
            let error = check_key(bad).unwrap_err().to_string();
            assert!(error.contains("not a register key"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn changes_apply_as_they_do_to_a_snapshot() {
        let mut snapshot = Snapshot::default();
        snapshot.entries.insert("a".to_owned(), b"1".to_vec());
        let mut entries = Kv::default().decode(snapshot.clone()).unwrap();
        let changes = [
            MetaChange::Put {
                key: "b".into(),
                value: b"2".to_vec(),
            },
            MetaChange::Delete { key: "a".into() },
        ];
        for change in &changes {
            Kv::default().apply_change(&mut entries, change).unwrap();
            snapshot.apply(change);
        }
        assert_eq!(entries, snapshot.entries);
    }

    #[test]
    fn puts_past_a_quota_are_refused_and_rewrites_that_do_not_grow_always_fit() {
        let config = KvConfig {
            max_keys: 2,
            max_bytes: 10,
        };
        let mut entries = BTreeMap::new();
        let mut bytes = 0;
        for (key, value) in [("a", "1234"), ("b", "1234")] {
            bytes = after_put(&config, &entries, bytes, key, value.as_bytes()).unwrap();
            entries.insert(key.to_owned(), value.as_bytes().to_vec());
        }
        assert_eq!(bytes, 10);
        assert_eq!(
            after_put(&config, &entries, bytes, "c", b""),
            Err(("kv.maxKeys", 2))
        );
        assert_eq!(
            after_put(&config, &entries, bytes, "a", b"12345"),
            Err(("kv.maxBytes", 10))
        );
        assert_eq!(after_put(&config, &entries, bytes, "a", b"12"), Ok(8));
        // Over a lowered quota, a rewrite of the same size still fits.
        let lowered = KvConfig {
            max_keys: 1,
            max_bytes: 4,
        };
        assert_eq!(after_put(&lowered, &entries, bytes, "b", b"4321"), Ok(10));
        assert!(after_put(&lowered, &entries, bytes, "b", b"43210").is_err());
    }

    #[test]
    fn decode_keeps_every_entry() {
        let mut snapshot = Snapshot::default();
        snapshot.entries.insert("a".to_owned(), b"1".to_vec());
        snapshot.entries.insert("b/c".to_owned(), Vec::new());
        let entries = Kv::default().decode(snapshot.clone()).unwrap();
        assert_eq!(entries, snapshot.entries);
    }

    proptest::proptest! {
        /// Any string is a register key or a refusal that shows at most a
        /// short piece of it; an accepted key never leaves the prefix.
        #[test]
        fn any_key_is_checked_without_panic(key in ".{0,600}") {
            match check_key(&key) {
                Ok(()) => {
                    proptest::prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
                    proptest::prop_assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                }
                Err(error) => proptest::prop_assert!(error.to_string().len() < 1024),
            }
        }
    }
}
