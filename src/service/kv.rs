//! The built-in register coordinator (`kv` role): `Put` persisted through the fenced store, `Get` answered from memory, an activation that writes nothing.
//!
//! It is the shape of coordinator that the `tso` role hides: everything it
//! answers after activation comes from memory, so only the serving term
//! stands between a deposed node and a stale read. The fault campaign runs
//! it next to `tso` for that reason; it is also a small, real replicated
//! register for tests and demos.

mod entries;

use std::sync::Arc;

use crate::config::KvConfig;
use crate::coordinator::{BoxError, Coordinator, MetaChange, Snapshot};
use crate::fence::{Epoch, FenceError, FencedStore, WriteOp};

pub use entries::Entries;

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
        /// Why: shared by the puts of one transaction.
        source: Arc<FenceError>,
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

/// What a serving register holds: every key's value (which counts its keys
/// and bytes, for the quotas), and the store its puts go through.
#[derive(Debug)]
pub struct KvServing {
    entries: Entries,
    store: FencedStore,
    epoch: i64,
}

/// The bytes an entry counts for against `kv.maxBytes`.
fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// What the register holds, counted against its quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    keys: usize,
    bytes: u64,
}

impl Tally {
    fn of(entries: &Entries) -> Self {
        Self {
            keys: entries.len(),
            bytes: entries.bytes(),
        }
    }
}

/// The register's metadata, as a standby keeps it: every key's value,
/// kept current with each change (the entries count their bytes, so a
/// takeover does not walk a million of them before it serves).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Register {
    entries: Entries,
}

impl Register {
    /// Every key and its value.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    fn apply(&mut self, change: &MetaChange) {
        match change {
            MetaChange::Put { key, value } => self.entries.insert(key, value),
            MetaChange::Delete { key } => self.entries.remove(key),
        }
    }
}

/// The register's tally once `key` holds `value` (`old` is what it holds
/// now), or the quota it would pass. A put that does not grow the register
/// always fits, so a register already over its quotas (they were lowered)
/// can still be rewritten.
fn after_put(
    config: &KvConfig,
    tally: Tally,
    old: Option<&[u8]>,
    key: &str,
    value: &[u8],
) -> Result<Tally, (&'static str, u64)> {
    if old.is_none() && tally.keys >= config.max_keys {
        return Err(("kv.maxKeys", config.max_keys as u64));
    }
    let freed = old.map_or(0, |old| entry_bytes(key, old));
    let added = entry_bytes(key, value);
    let bytes = tally.bytes - freed + added;
    if added > freed && bytes > config.max_bytes {
        return Err(("kv.maxBytes", config.max_bytes));
    }
    Ok(Tally {
        keys: tally.keys + usize::from(old.is_none()),
        bytes,
    })
}

/// The most puts one etcd transaction carries: etcd refuses more
/// operations in one (`--max-txn-ops`, 128 by default).
const PUTS_PER_TXN: usize = 128;

/// The most value and key bytes one etcd transaction carries, well under
/// etcd's request limit (`--max-request-bytes`, 1.5 MiB by default).
const BYTES_PER_TXN: usize = 1 << 20;

/// Puts of one batch waiting to be written together: distinct keys, each
/// checked against the quotas as if the ones before it had landed.
#[derive(Default)]
struct PendingPuts {
    /// Each put's place in the batch, key and value.
    puts: Vec<(usize, String, Vec<u8>)>,
    keys: std::collections::HashSet<String>,
    bytes: usize,
    /// The register's tally once every pending put has landed.
    tally: Option<Tally>,
}

impl PendingPuts {
    /// Whether a put of `key` with `size` bytes must wait for the pending
    /// ones to be written: etcd refuses a key twice in one transaction, and
    /// a transaction past its limits.
    fn must_flush_before(&self, key: &str, size: usize) -> bool {
        self.keys.contains(key)
            || self.puts.len() >= PUTS_PER_TXN
            || (!self.puts.is_empty() && self.bytes + size > BYTES_PER_TXN)
    }
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
    /// Checks a put against the key rules and the quotas, given the
    /// register's tally before it; its tally after.
    fn check_put(
        &self,
        tally: Tally,
        old: Option<&[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<Tally, KvError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::ValueTooLarge {
                key: crate::service::shown::shown(key),
                size: value.len(),
            });
        }
        after_put(&self.config, tally, old, key, value).map_err(|(quota, limit)| {
            KvError::QuotaExceeded {
                key: crate::service::shown::shown(key),
                quota,
                limit,
            }
        })
    }

    /// Writes the pending puts in one fenced transaction, etcd first:
    /// memory changes only for writes this term made durable. Each put's
    /// answer goes to its place in `answers`.
    async fn flush(
        &self,
        serving: &mut KvServing,
        pending: &mut PendingPuts,
        answers: &mut [Option<Result<KvAnswer, KvError>>],
    ) {
        let PendingPuts { puts, tally, .. } = std::mem::take(pending);
        if tally.is_none() {
            return;
        }
        let ops = puts
            .iter()
            .map(|(_, key, value)| WriteOp::Put {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        match serving.store.txn(Vec::new(), ops).await {
            Ok(_) => {
                for (place, key, value) in puts {
                    serving.entries.insert(&key, &value);
                    answers[place] = Some(Ok(KvAnswer {
                        value: None,
                        epoch: serving.epoch,
                    }));
                }
            }
            Err(source) => {
                let source = Arc::new(source);
                for (place, key, _) in puts {
                    answers[place] = Some(Err(KvError::Persist {
                        key,
                        source: source.clone(),
                    }));
                }
            }
        }
    }

    fn get(&self, serving: &KvServing, key: &str) -> Result<KvAnswer, KvError> {
        check_key(key)?;
        Ok(KvAnswer {
            value: serving.entries.get(key).map(<[u8]>::to_vec),
            epoch: serving.epoch,
        })
    }
}

impl Coordinator for Kv {
    /// Every key under the role's prefix and its value.
    type Meta = Register;
    type Serving = KvServing;
    type Request = KvRequest;
    type Response = Result<KvAnswer, KvError>;

    /// Consumes the snapshot as it goes: the register is built in one
    /// pass while the snapshot's entries are freed.
    fn decode(&self, snapshot: Snapshot) -> Result<Self::Meta, BoxError> {
        Ok(Register {
            entries: snapshot.entries.into_iter().collect(),
        })
    }

    // The register's memory is the whole metadata: a warm standby keeps it
    // current, so a takeover hands it over instead of copying every key.
    const INCREMENTAL: bool = true;

    fn apply_change(&self, register: &mut Register, change: &MetaChange) -> Result<(), BoxError> {
        register.apply(change);
        Ok(())
    }

    async fn activate(
        &self,
        epoch: Epoch,
        register: Register,
        store: FencedStore,
    ) -> Result<KvServing, BoxError> {
        tracing::info!(
            role = epoch.role,
            revision = epoch.revision,
            keys = register.entries.len(),
            "register serves"
        );
        let Register { entries } = register;
        Ok(KvServing {
            entries,
            store,
            epoch: epoch.revision,
        })
    }

    async fn handle(&self, serving: &mut KvServing, request: KvRequest) -> Self::Response {
        let mut answers = self.handle_batch(serving, vec![request]).await;
        answers
            .pop()
            .unwrap_or_else(|| unreachable!("a batch of one has one answer"))
    }

    /// Puts in a row share one fenced transaction (up to etcd's limits, a
    /// key once per transaction); a `Get` waits for the puts before it to
    /// land, so it never reads a value that is not durable.
    async fn handle_batch(
        &self,
        serving: &mut KvServing,
        requests: Vec<KvRequest>,
    ) -> Vec<Self::Response> {
        let mut answers: Vec<Option<Self::Response>> = (0..requests.len()).map(|_| None).collect();
        let mut pending = PendingPuts::default();
        for (place, request) in requests.into_iter().enumerate() {
            match request {
                KvRequest::Get { key } => {
                    self.flush(serving, &mut pending, &mut answers).await;
                    answers[place] = Some(self.get(serving, &key));
                }
                KvRequest::Put { key, value } => {
                    if pending.must_flush_before(&key, key.len() + value.len()) {
                        self.flush(serving, &mut pending, &mut answers).await;
                    }
                    let before = pending.tally.unwrap_or_else(|| Tally::of(&serving.entries));
                    let old = serving.entries.get(&key);
                    match self.check_put(before, old, &key, &value) {
                        Ok(after) => {
                            pending.tally = Some(after);
                            pending.bytes += key.len() + value.len();
                            pending.keys.insert(key.clone());
                            pending.puts.push((place, key, value));
                        }
                        Err(error) => answers[place] = Some(Err(error)),
                    }
                }
            }
        }
        self.flush(serving, &mut pending, &mut answers).await;
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| unreachable!("every request is answered")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        let mut register = Kv::default().decode(snapshot.clone()).unwrap();
        let changes = [
            MetaChange::Put {
                key: "b".into(),
                value: b"22".to_vec(),
            },
            MetaChange::Put {
                key: "c".into(),
                value: b"3".to_vec(),
            },
            MetaChange::Put {
                key: "c".into(),
                value: b"333".to_vec(),
            },
            MetaChange::Delete { key: "a".into() },
            MetaChange::Delete { key: "z".into() },
        ];
        for change in &changes {
            Kv::default().apply_change(&mut register, change).unwrap();
            snapshot.apply(change);
        }
        assert_eq!(register.entries(), &snapshot.entries.iter().collect());
        assert_eq!(Tally::of(register.entries()), Tally { keys: 2, bytes: 7 });
    }

    #[test]
    fn puts_past_a_quota_are_refused_and_rewrites_that_do_not_grow_always_fit() {
        let config = KvConfig {
            max_keys: 2,
            max_bytes: 10,
        };
        let mut entries = BTreeMap::new();
        let mut tally = Tally { keys: 0, bytes: 0 };
        for (key, value) in [("a", "1234"), ("b", "1234")] {
            tally = after_put(&config, tally, None, key, value.as_bytes()).unwrap();
            entries.insert(key.to_owned(), value.as_bytes().to_vec());
        }
        assert_eq!(tally, Tally { keys: 2, bytes: 10 });
        let old = |key: &str| entries.get(key).map(Vec::as_slice);
        assert_eq!(
            after_put(&config, tally, old("c"), "c", b""),
            Err(("kv.maxKeys", 2))
        );
        assert_eq!(
            after_put(&config, tally, old("a"), "a", b"12345"),
            Err(("kv.maxBytes", 10))
        );
        assert_eq!(
            after_put(&config, tally, old("a"), "a", b"12"),
            Ok(Tally { keys: 2, bytes: 8 })
        );
        // Over a lowered quota, a rewrite of the same size still fits.
        let lowered = KvConfig {
            max_keys: 1,
            max_bytes: 4,
        };
        assert_eq!(
            after_put(&lowered, tally, old("b"), "b", b"4321"),
            Ok(tally)
        );
        assert!(after_put(&lowered, tally, old("b"), "b", b"43210").is_err());
    }

    #[test]
    fn a_batch_flushes_before_a_repeated_key_and_at_etcds_limits() {
        let mut pending = PendingPuts::default();
        assert!(!pending.must_flush_before("a", 10));
        pending.keys.insert("a".to_owned());
        pending.puts.push((0, "a".to_owned(), vec![0; 9]));
        pending.bytes = 10;
        assert!(pending.must_flush_before("a", 10), "a key twice");
        assert!(!pending.must_flush_before("b", 10));
        assert!(
            pending.must_flush_before("b", BYTES_PER_TXN),
            "past the bytes"
        );
        for n in 1..PUTS_PER_TXN {
            pending.puts.push((n, format!("k{n}"), Vec::new()));
        }
        assert!(pending.must_flush_before("b", 1), "past the operations");
        // A single put larger than the byte limit still goes, alone.
        assert!(!PendingPuts::default().must_flush_before("big", 2 * BYTES_PER_TXN));
    }

    #[test]
    fn decode_keeps_every_entry() {
        let mut snapshot = Snapshot::default();
        snapshot.entries.insert("a".to_owned(), b"1".to_vec());
        snapshot.entries.insert("b/c".to_owned(), Vec::new());
        let register = Kv::default().decode(snapshot.clone()).unwrap();
        assert_eq!(register.entries(), &snapshot.entries.iter().collect());
        assert_eq!(Tally::of(register.entries()), Tally { keys: 2, bytes: 5 });
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
