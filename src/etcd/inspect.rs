//! The whole deployment as etcd holds it: every role, its leader and its standbys, for tools such as `standin status`.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};
use serde::Serialize;

use crate::etcd::recipe::Leader;
use crate::etcd::session::{Layout, RoleState, SessionInfo};

/// Failures to read the deployment from etcd.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// etcd could not be read.
    #[error("reading {prefix} from etcd failed: {source}")]
    ReadFailed {
        /// The prefix being read.
        prefix: String,
        /// The etcd error.
        #[source]
        source: etcd_client::Error,
    },
}

/// One instance of a role as its session reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// The node's server ID.
    pub server_id: i64,
    /// Where clients reach it.
    pub address: String,
    /// Its state for the role.
    pub state: RoleState,
}

/// A role's leader: who, where, which term, in which state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderSummary {
    /// The leader's server ID.
    pub server_id: i64,
    /// Where clients reach it.
    pub address: String,
    /// The leader key's create revision.
    pub epoch: i64,
    /// Its published state.
    pub state: RoleState,
}

/// A role across the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleSummary {
    /// The role.
    pub role: String,
    /// Its leader, if any.
    pub leader: Option<LeaderSummary>,
    /// Every other registered instance.
    pub standbys: Vec<Instance>,
    /// Values that are not valid session JSON, reported rather than hidden.
    pub corrupt: Vec<String>,
}

/// A candidate key's create revision and its decoded value, or why it does
/// not decode.
type Candidate = (i64, Result<Leader, String>);

/// Reads every role's leader (the lowest create revision under its election)
/// and its registered instances.
pub async fn roles(client: &Client, layout: &Layout) -> Result<Vec<RoleSummary>, InspectError> {
    let election_root = layout.election("");
    let sessions_root = layout.sessions();
    let elections = read_prefix(client, &election_root).await?;
    let sessions = read_prefix(client, &sessions_root).await?;

    let mut summaries: BTreeMap<String, RoleSummary> = BTreeMap::new();
    let mut candidates: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for kv in &elections {
        let key = String::from_utf8_lossy(kv.key());
        let role = key[election_root.len()..]
            .split('/')
            .next()
            .unwrap_or_default();
        let decoded = Leader::decode(kv).map_err(|error| error.to_string());
        candidates
            .entry(role.to_owned())
            .or_default()
            .push((kv.create_revision(), decoded));
    }
    let mut leaders: BTreeMap<String, Leader> = BTreeMap::new();
    let mut corrupt: Vec<(String, String)> = Vec::new();
    for (role, mut found) in candidates {
        // The lowest create revision leads whether it decodes or not: when it
        // does not, nobody serves (the nodes see no leader either), and
        // naming the next candidate would name a standby.
        found.sort_by_key(|(revision, _)| *revision);
        for (place, (_, candidate)) in found.into_iter().enumerate() {
            match candidate {
                Ok(leader) if place == 0 => {
                    leaders.insert(role.clone(), leader);
                }
                Ok(_) => {}
                Err(problem) if place == 0 => corrupt.push((
                    role.clone(),
                    format!("{problem} (it leads the election, so no leader is known)"),
                )),
                Err(problem) => corrupt.push((role.clone(), problem)),
            }
        }
    }
    for kv in &sessions {
        if kv.key() == layout.server_id().as_bytes() {
            continue;
        }
        match SessionInfo::decode(kv.key(), kv.value()) {
            Ok(session) => summary(&mut summaries, &session.role)
                .standbys
                .push(Instance {
                    server_id: session.server_id,
                    address: session.address,
                    state: session.state,
                }),
            // The role is unknown when the value does not decode.
            Err(error) => corrupt.push(("?".to_owned(), error.to_string())),
        }
    }
    for (role, leader) in leaders {
        let entry = summary(&mut summaries, &role);
        entry
            .standbys
            .retain(|i| i.server_id != leader.session.server_id);
        entry.leader = Some(LeaderSummary {
            server_id: leader.session.server_id,
            address: leader.session.address,
            epoch: leader.revision,
            state: leader.session.state,
        });
    }
    for (role, problem) in corrupt {
        summary(&mut summaries, &role).corrupt.push(problem);
    }
    for entry in summaries.values_mut() {
        entry.standbys.sort_by_key(|i| i.server_id);
    }
    Ok(summaries.into_values().collect())
}

fn summary<'a>(
    summaries: &'a mut BTreeMap<String, RoleSummary>,
    role: &str,
) -> &'a mut RoleSummary {
    summaries
        .entry(role.to_owned())
        .or_insert_with(|| RoleSummary {
            role: role.to_owned(),
            leader: None,
            standbys: Vec::new(),
            corrupt: Vec::new(),
        })
}

async fn read_prefix(
    client: &Client,
    prefix: &str,
) -> Result<Vec<etcd_client::KeyValue>, InspectError> {
    let mut response = client
        .kv_client()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|source| InspectError::ReadFailed {
            prefix: prefix.to_owned(),
            source,
        })?;
    Ok(response.take_kvs())
}
