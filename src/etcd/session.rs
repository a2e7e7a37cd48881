//! Where standin keeps things in etcd, what an instance publishes about itself, and server IDs.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::config::split_host_port;

/// The standin version published in every session.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The published state of one role on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleState {
    /// Not leading: watching the election, ready to take over.
    Standby,
    /// Won the election; reloading metadata and activating, not serving yet.
    Activating,
    /// The one active instance of the role.
    Serving,
    /// Handing the role over before the process stops.
    Stopping,
    /// The node has stopped: final, never published (the lease is gone with it).
    Stopped,
}

impl RoleState {
    /// The lowercase name used in etcd and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleState::Standby => "standby",
            RoleState::Activating => "activating",
            RoleState::Serving => "serving",
            RoleState::Stopping => "stopping",
            RoleState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for RoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance's registration: the value of its session key and, while it
/// leads, of its election key (so `etcdctl elect -l` shows who serves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The node's ID from the `{root}/session/id` allocator.
    pub server_id: i64,
    /// The role this registration is for.
    pub role: String,
    /// Where clients reach this node.
    pub address: String,
    /// The standin version the node runs.
    pub version: String,
    /// The role's state on this node.
    pub state: RoleState,
    /// The etcd lease the registration is attached to.
    pub lease_id: i64,
    /// The node's death witness, when it runs one (`session.deathWitness`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessInfo>,
    /// The node's leader priority for the role (`<role>.leaderPriority`): a
    /// leader hands the role to a ready standby of higher priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// While the leader hands the role to a chosen standby, which one: the
    /// candidates ahead of it make way (in the leader key's value only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferInfo>,
}

fn is_zero(priority: &i32) -> bool {
    *priority == 0
}

/// A leader transfer under way, as the leader announces it to the candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    /// The server ID of the standby taking over.
    pub to: i64,
    /// The create revision of its candidate key: every candidate whose key
    /// is older makes way, by joining again behind it.
    pub revision: i64,
}

/// Where a node's death witness listens, and the nonce that tells this
/// process from any later one on the same port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WitnessInfo {
    /// `host:port` of the witness listener.
    pub address: String,
    /// Random per process: the witness greets every connection with it.
    pub incarnation: String,
}

impl SessionInfo {
    /// Decodes a session value read from etcd, naming the key when it is corrupt.
    /// A value that parses but has no usable address (or role) is refused
    /// too, so that it is never taken for a leader to send clients to.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, SessionError> {
        let shown_key = || String::from_utf8_lossy(key).into_owned();
        let info: SessionInfo =
            serde_json::from_slice(value).map_err(|source| SessionError::CorruptSession {
                key: shown_key(),
                source,
            })?;
        let invalid = |problem| SessionError::InvalidSession {
            key: shown_key(),
            problem,
        };
        if info.role.is_empty() {
            return Err(invalid("its role is empty"));
        }
        if split_host_port(&info.address).is_none() {
            return Err(invalid("its address is not host:port"));
        }
        if let Some(witness) = &info.witness {
            if split_host_port(&witness.address).is_none() {
                return Err(invalid("its witness address is not host:port"));
            }
            if witness.incarnation.is_empty() {
                return Err(invalid("its witness incarnation is empty"));
            }
        }
        Ok(info)
    }

    /// The JSON stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a SessionInfo always serializes")
    }
}

/// The etcd key layout under the configured root path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    /// The layout under `root` (the `etcd.rootPath` config key).
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_matches('/').to_owned(),
        }
    }

    /// `{root}/election/{role}`: the election name etcd's own tools take.
    pub fn election(&self, role: &str) -> String {
        format!("{}/election/{role}", self.root)
    }

    /// `{root}/session/{role}-{server_id}`.
    pub fn session(&self, role: &str, server_id: i64) -> String {
        format!("{}/session/{role}-{server_id}", self.root)
    }

    /// Whether `key` is a registration of server `server_id`: one that
    /// [`session`](Self::session) names, whatever its role.
    pub(crate) fn is_session_of(&self, key: &[u8], server_id: i64) -> bool {
        key.starts_with(self.sessions().as_bytes())
            && key.ends_with(format!("-{server_id}").as_bytes())
    }

    /// `{root}/session/`: every registration, for listing them.
    pub fn sessions(&self) -> String {
        format!("{}/session/", self.root)
    }

    /// `{root}/session/id`: the server-ID allocator.
    pub fn server_id(&self) -> String {
        format!("{}/session/id", self.root)
    }

    /// `{root}/revoked/{lease hex}`: the mark a death witness puts before it
    /// revokes `lease`, so the candidate that wins from it waits
    /// `session.witnessGrace` before serving.
    pub fn revoked(&self, lease: i64) -> String {
        format!("{}/revoked/{lease:x}", self.root)
    }

    /// `{root}/meta/{role}/`: the role's metadata, written only through a fenced store.
    pub fn meta(&self, role: &str) -> String {
        format!("{}/meta/{role}/", self.root)
    }

    /// Every role's metadata: `{root}/meta/`.
    pub fn metadata(&self) -> String {
        format!("{}/meta/", self.root)
    }
}

/// Failures of session bookkeeping in etcd.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The compare-and-swap on the server-ID counter could not be made.
    #[error("allocating a server ID from etcd failed: {0}")]
    AllocateFailed(#[source] etcd_client::Error),
    /// The counter holds something that is not a number; it is left as found.
    #[error("server-ID counter {key} holds {value:?}, not a number; fix or delete the key")]
    CorruptServerId {
        /// The counter's key.
        key: String,
        /// What it holds.
        value: String,
    },
    /// A session value is not the JSON standin writes.
    #[error("session value at {key} is not valid session JSON: {source}")]
    CorruptSession {
        /// The key that holds the bad value.
        key: String,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// A session value decodes but cannot be a registration standin wrote:
    /// its address would send clients or peers nowhere.
    #[error("session value at {key} is not a usable registration: {problem}")]
    InvalidSession {
        /// The key that holds the bad value.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Allocates the next server ID by compare-and-swap on `{root}/session/id`,
/// as Milvus does, so IDs are unique across every node sharing the root.
pub(crate) async fn allocate_server_id(
    client: &Client,
    layout: &Layout,
) -> Result<i64, SessionError> {
    let key = layout.server_id();
    let mut kv = client.kv_client();
    loop {
        let response = kv
            .get(key.as_str(), None)
            .await
            .map_err(SessionError::AllocateFailed)?;
        let (guard, next) = match response.kvs().first() {
            None => (
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                1,
            ),
            Some(current) => {
                let text = String::from_utf8_lossy(current.value()).into_owned();
                let value: i64 =
                    text.trim()
                        .parse()
                        .map_err(|_| SessionError::CorruptServerId {
                            key: key.clone(),
                            value: text.clone(),
                        })?;
                let guard =
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, current.mod_revision());
                (guard, value + 1)
            }
        };
        let txn =
            Txn::new()
                .when([guard])
                .and_then([TxnOp::put(key.as_str(), next.to_string(), None)]);
        let outcome = kv.txn(txn).await.map_err(SessionError::AllocateFailed)?;
        if outcome.succeeded() {
            return Ok(next);
        }
        // Another node took this ID between our read and write: read again.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documented_keys() {
        let layout = Layout::new("/standin/");
        assert_eq!(layout.election("rootcoord"), "standin/election/rootcoord");
        assert_eq!(
            layout.session("rootcoord", 7),
            "standin/session/rootcoord-7"
        );
        assert_eq!(layout.server_id(), "standin/session/id");
        assert_eq!(layout.meta("rootcoord"), "standin/meta/rootcoord/");
        assert_eq!(layout.revoked(0x694d), "standin/revoked/694d");
    }

    #[test]
    fn a_session_key_names_its_server_whatever_the_role() {
        let layout = Layout::new("standin");
        let key = layout.session("idle-0005", 5);
        assert!(layout.is_session_of(key.as_bytes(), 5));
        assert!(!layout.is_session_of(key.as_bytes(), 15));
        assert!(!layout.is_session_of(layout.session("idle-0005", 15).as_bytes(), 5));
        assert!(!layout.is_session_of(layout.server_id().as_bytes(), 5));
        assert!(!layout.is_session_of(b"other/session/a-5", 5));
    }

    #[test]
    fn session_json_round_trips_with_lowercase_state() {
        let info = SessionInfo {
            server_id: 3,
            role: "datacoord".into(),
            address: "127.0.0.1:1".into(),
            version: "0.1.0".into(),
            state: RoleState::Activating,
            lease_id: 42,
            witness: Some(WitnessInfo {
                address: "127.0.0.1:2".into(),
                incarnation: "00ff".into(),
            }),
            priority: 5,
            transfer: Some(TransferInfo {
                to: 4,
                revision: 77,
            }),
        };
        let json = String::from_utf8(info.encode()).unwrap();
        assert!(json.contains(r#""state":"activating""#), "{json}");
        assert_eq!(SessionInfo::decode(b"k", json.as_bytes()).unwrap(), info);
        // A session written without a witness (an older node) still decodes.
        let without: String = json.replace(
            r#","witness":{"address":"127.0.0.1:2","incarnation":"00ff"}"#,
            "",
        );
        assert_eq!(
            SessionInfo::decode(b"k", without.as_bytes())
                .unwrap()
                .witness,
            None
        );
        let err = SessionInfo::decode(b"standin/session/x-1", b"{oops").unwrap_err();
        assert!(err.to_string().contains("standin/session/x-1"), "{err}");
    }
}
