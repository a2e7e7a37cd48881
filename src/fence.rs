//! Fenced metadata writes: every write is a transaction guarded by the leader key's create revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

/// A term of leadership: the role, the leader key that won it and that key's
/// create revision. The revision is the fencing token: a later term always has
/// a higher one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// The role this term is for.
    pub role: String,
    /// The election key that leads during this term.
    pub leader_key: String,
    /// The leader key's create revision.
    pub revision: i64,
}

/// Failures of fenced writes.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The epoch this store was made for is over: the write was refused.
    #[error("write refused: leadership of {role} at revision {revision} is over (fenced)")]
    Fenced {
        /// The role whose leadership ended.
        role: String,
        /// The epoch's revision.
        revision: i64,
    },
    /// etcd could not be asked; the write may or may not have been applied.
    #[error("fenced write to etcd failed: {0}")]
    WriteFailed(#[from] etcd_client::Error),
    /// A key that would leave the role's metadata prefix.
    #[error("metadata key {0:?} is empty or leaves the role's prefix")]
    BadKey(String),
}

/// One write in a fenced transaction; keys are relative to the role's
/// metadata prefix `{root}/meta/{role}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// Relative key.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Deletes `key`.
    Delete {
        /// Relative key.
        key: String,
    },
    /// Deletes every key that starts with `prefix`.
    DeletePrefix {
        /// Relative key prefix.
        prefix: String,
    },
}

/// A user condition in a fenced transaction, on a relative key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// `key` holds exactly `value`.
    ValueIs {
        /// Relative key.
        key: String,
        /// Expected value.
        value: Vec<u8>,
    },
    /// `key` does not exist.
    Absent {
        /// Relative key.
        key: String,
    },
}

/// Writes to one role's metadata that etcd applies only while the epoch it was
/// made for still leads. Once the epoch is over every write fails with
/// [`FenceError::Fenced`]: at once when this node knows it stepped down, and
/// in etcd's own transaction otherwise.
#[derive(Clone)]
pub struct FencedStore {
    // Shared: an etcd client is several kilobytes, and users clone stores freely.
    inner: Arc<StoreInner>,
}

struct StoreInner {
    client: Client,
    epoch: Epoch,
    prefix: String,
    deposed: DeposeSwitch,
}

impl std::fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedStore")
            .field("epoch", &self.inner.epoch)
            .field("prefix", &self.inner.prefix)
            .field("deposed", &self.is_deposed())
            .finish()
    }
}

/// The switch that ends a store's epoch locally: the serving term's closed
/// flag, shared by every store made for that term.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeposeSwitch(Arc<AtomicBool>);

impl DeposeSwitch {
    /// Ends the epoch: every later write through the store fails without asking etcd.
    pub(crate) fn depose(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the epoch has been ended.
    pub(crate) fn is_deposed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl FencedStore {
    /// A store for `epoch` writing under `prefix` (the role's metadata
    /// prefix), refusing every write once `switch` is thrown.
    pub(crate) fn new(client: Client, epoch: Epoch, prefix: String, switch: &DeposeSwitch) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                client,
                epoch,
                prefix,
                deposed: switch.clone(),
            }),
        }
    }

    /// The epoch this store writes for.
    pub fn epoch(&self) -> &Epoch {
        &self.inner.epoch
    }

    /// Whether this node already knows the epoch is over.
    pub fn is_deposed(&self) -> bool {
        self.inner.deposed.is_deposed()
    }

    /// Sets `key` to `value`, fenced.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), FenceError> {
        let op = WriteOp::Put {
            key: key.to_owned(),
            value: value.into(),
        };
        self.txn(Vec::new(), vec![op]).await.map(|_| ())
    }

    /// Deletes `key`, fenced.
    pub async fn delete(&self, key: &str) -> Result<(), FenceError> {
        let op = WriteOp::Delete {
            key: key.to_owned(),
        };
        self.txn(Vec::new(), vec![op]).await.map(|_| ())
    }

    /// Reads `key` (reads are not fenced: they change nothing).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, FenceError> {
        let full = self.full_key(key)?;
        let mut response = self.inner.client.kv_client().get(full, None).await?;
        Ok(response
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.value().to_vec()))
    }

    /// Applies `ops` atomically if every guard holds and the epoch still
    /// leads. Returns `Ok(false)` when a guard did not hold (nothing written),
    /// and [`FenceError::Fenced`] when the epoch is over.
    pub async fn txn(&self, guards: Vec<Guard>, ops: Vec<WriteOp>) -> Result<bool, FenceError> {
        self.check_not_deposed()?;
        let mut compares = vec![self.still_leads()];
        for guard in guards {
            compares.push(match guard {
                Guard::ValueIs { key, value } => {
                    Compare::value(self.full_key(&key)?, CompareOp::Equal, value)
                }
                Guard::Absent { key } => {
                    Compare::create_revision(self.full_key(&key)?, CompareOp::Equal, 0)
                }
            });
        }
        let mut then = Vec::with_capacity(ops.len());
        for op in ops {
            then.push(match op {
                WriteOp::Put { key, value } => TxnOp::put(self.full_key(&key)?, value, None),
                WriteOp::Delete { key } => TxnOp::delete(self.full_key(&key)?, None),
                WriteOp::DeletePrefix { prefix } => TxnOp::delete(
                    format!("{}{prefix}", self.inner.prefix),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            });
        }
        // The else branch reads the leader key, to tell a lost epoch from a
        // user guard that did not hold.
        let txn = Txn::new()
            .when(compares)
            .and_then(then)
            .or_else([TxnOp::get(self.inner.epoch.leader_key.as_str(), None)]);
        let response = self.inner.client.kv_client().txn(txn).await?;
        if response.succeeded() {
            return Ok(true);
        }
        let still_leads = response.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == self.inner.epoch.revision),
            _ => false,
        });
        if still_leads {
            Ok(false)
        } else {
            Err(self.refused())
        }
    }

    /// The condition every fenced transaction starts with: the epoch's
    /// leader key still exists, as the win created it.
    fn still_leads(&self) -> Compare {
        Compare::create_revision(
            self.inner.epoch.leader_key.as_str(),
            CompareOp::Equal,
            self.inner.epoch.revision,
        )
    }

    fn check_not_deposed(&self) -> Result<(), FenceError> {
        if self.is_deposed() {
            Err(self.refused())
        } else {
            Ok(())
        }
    }

    /// Counts a refused write and names the epoch it was refused for.
    fn refused(&self) -> FenceError {
        metrics::counter!(crate::telemetry::FENCED_WRITES_REFUSED, "role" => self.inner.epoch.role.clone())
            .increment(1);
        FenceError::Fenced {
            role: self.inner.epoch.role.clone(),
            revision: self.inner.epoch.revision,
        }
    }

    fn full_key(&self, key: &str) -> Result<String, FenceError> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|part| part == "..") {
            return Err(FenceError::BadKey(key.to_owned()));
        }
        Ok(format!("{}{key}", self.inner.prefix))
    }
}
