//! `status` and `watch`: every role's leader and standbys from etcd, what each node itself reports, and leader changes as they happen.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use standin::Config;
use standin::etcd::inspect::RoleSummary;
use standin::etcd::session::Layout;
use standin::service::client::LeaderWatch;
use standin::service::connect::NodeConnector;
use standin::service::grpc::proto::StatusRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;

use super::output::{Format, print_table, table};
use super::{Failure, etcd_client, find_role, role_summaries, stop_signal, usage, within};

/// What one node reports about one of its roles over `Coordination.Status`.
#[derive(Debug, Serialize)]
pub struct NodeRole {
    pub role: String,
    pub state: String,
    /// The epoch while it leads, else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// The lease its candidacy hangs on, absent without a live session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<i64>,
    /// The leader it sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<SeenLeader>,
    /// Why it last stepped down, if it ever did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_step_down: Option<String>,
    /// Its warm copy of the role's metadata, absent while it is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_copy: Option<Copy>,
    /// Why that copy is not loaded, while its read is retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_copy_missing: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SeenLeader {
    pub server_id: i64,
    pub address: String,
    pub epoch: i64,
    pub state: String,
}

#[derive(Debug, Serialize)]
pub struct Copy {
    pub revision: i64,
    pub keys: u64,
    pub decoding: bool,
    pub released: bool,
}

/// What one node reports, or why it did not.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<i64>,
    pub roles: Vec<NodeRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks the node at `address` for its `Status`, within `timeout`.
pub async fn ask_node(config: &Config, address: &str, timeout: Duration) -> NodeReport {
    let ask = async {
        let connector = NodeConnector::from_config(config)?;
        let channel = connector.connect(address).await?;
        let status = CoordinationClient::new(channel)
            .status(StatusRequest {})
            .await?
            .into_inner();
        Ok::<_, anyhow::Error>(status)
    };
    let failed = |error: String| NodeReport {
        address: address.to_owned(),
        server_id: None,
        roles: Vec::new(),
        error: Some(error),
    };
    let status = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => return failed(super::describe(&error)),
        Err(_) => {
            return failed(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ));
        }
    };
    let roles = status
        .roles
        .into_iter()
        .map(|role| NodeRole {
            role: role.role,
            state: role.state,
            epoch: (role.epoch != 0).then_some(role.epoch),
            lease_id: (role.lease_id != 0).then_some(role.lease_id),
            leader: role.leader.map(|leader| SeenLeader {
                server_id: leader.server_id,
                address: leader.address,
                epoch: leader.epoch,
                state: leader.state,
            }),
            last_step_down: (!role.last_step_down.is_empty()).then_some(role.last_step_down),
            metadata_copy: role.metadata_copy.map(|copy| Copy {
                revision: copy.revision,
                keys: copy.keys,
                decoding: copy.decoding,
                released: copy.released,
            }),
            metadata_copy_missing: (!role.metadata_copy_missing.is_empty())
                .then_some(role.metadata_copy_missing),
        })
        .collect();
    NodeReport {
        address: address.to_owned(),
        server_id: Some(status.server_id),
        roles,
        error: None,
    }
}

/// Every node address the summaries name, leaders first, each once.
fn node_addresses(roles: &[RoleSummary]) -> Vec<String> {
    let mut addresses: Vec<String> = Vec::new();
    let leaders = roles
        .iter()
        .filter_map(|r| r.leader.as_ref())
        .map(|l| &l.address);
    let standbys = roles
        .iter()
        .flat_map(|r| r.standbys.iter())
        .map(|s| &s.address);
    for address in leaders.chain(standbys) {
        if !addresses.contains(address) {
            addresses.push(address.clone());
        }
    }
    addresses
}

/// `standin status`: from etcd, every role's leader and standbys; with
/// `node`, what that node reports; `-o wide`, what every node reports.
pub async fn status(
    config: &Config,
    format: Format,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), Failure> {
    if let Some(address) = node {
        let report = ask_node(config, &address, timeout).await;
        if let Some(error) = &report.error {
            return Err(anyhow::anyhow!("asking the node at {address}: {error}").into());
        }
        if !format.print_data(&report)? {
            print_node_reports(&[report]);
        }
        return Ok(());
    }
    let roles = within(timeout, config, role_summaries(config)).await?;
    if format.print_data(&roles)? {
        return Ok(());
    }
    if format == Format::Wide {
        let mut reports = Vec::new();
        for address in node_addresses(&roles) {
            reports.push(ask_node(config, &address, timeout).await);
        }
        print_node_reports(&reports);
        return Ok(());
    }
    let mut shown = table(&["ROLE", "LEADER", "ADDRESS", "EPOCH", "STATE", "STANDBYS"]);
    let mut corrupt = Vec::new();
    for role in &roles {
        let standbys: Vec<_> = role
            .standbys
            .iter()
            .map(|s| format!("{}@{} ({})", s.server_id, s.address, s.state))
            .collect();
        let standbys = if standbys.is_empty() {
            "-".to_owned()
        } else {
            standbys.join(", ")
        };
        match &role.leader {
            Some(leader) => shown.add_row(vec![
                role.role.clone(),
                leader.server_id.to_string(),
                leader.address.clone(),
                leader.epoch.to_string(),
                leader.state.to_string(),
                standbys,
            ]),
            None => shown.add_row(vec![
                role.role.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "none".into(),
                standbys,
            ]),
        };
        corrupt.extend(
            role.corrupt
                .iter()
                .map(|c| format!("{}: corrupt value: {c}", role.role)),
        );
    }
    print_table(&shown);
    for problem in corrupt {
        println!("{problem}");
    }
    Ok(())
}

fn print_node_reports(reports: &[NodeReport]) {
    let mut shown = table(&[
        "NODE",
        "SERVER",
        "ROLE",
        "STATE",
        "EPOCH",
        "LEASE",
        "COPY KEYS",
        "COPY REV",
        "LAST STEP-DOWN",
        "SEES LEADER",
    ]);
    let dash = || "-".to_owned();
    for report in reports {
        if let Some(error) = &report.error {
            shown.add_row(vec![
                report.address.clone(),
                dash(),
                dash(),
                format!("unreachable: {error}"),
            ]);
            continue;
        }
        for role in &report.roles {
            shown.add_row(vec![
                report.address.clone(),
                report.server_id.map_or_else(dash, |id| id.to_string()),
                role.role.clone(),
                role.state.clone(),
                role.epoch.map_or_else(dash, |e| e.to_string()),
                role.lease_id.map_or_else(dash, |l| format!("{l:x}")),
                match (&role.metadata_copy, &role.metadata_copy_missing) {
                    (Some(copy), _) => copy.keys.to_string(),
                    (None, Some(_)) => "missing".to_owned(),
                    (None, None) => dash(),
                },
                role.metadata_copy
                    .as_ref()
                    .map_or_else(dash, |c| c.revision.to_string()),
                role.last_step_down.clone().unwrap_or_else(dash),
                role.leader
                    .as_ref()
                    .map_or_else(dash, |l| format!("{}@{}", l.server_id, l.address)),
            ]);
        }
    }
    print_table(&shown);
}

/// One leader change as `watch -o json` prints it.
#[derive(Serialize)]
struct Change {
    time: String,
    role: String,
    leader: Option<ChangedLeader>,
}

#[derive(Serialize, PartialEq, Clone)]
struct ChangedLeader {
    server_id: i64,
    address: String,
    epoch: i64,
    state: String,
}

/// `standin watch`: the current leader of each role, then every change.
pub async fn watch(
    config: &Config,
    role: Option<String>,
    format: Format,
    timeout: Duration,
) -> Result<(), Failure> {
    let summaries = within(timeout, config, role_summaries(config)).await?;
    let roles: Vec<RoleSummary> = match role {
        Some(role) => vec![find_role(&summaries, &role)?.clone()],
        None => summaries,
    };
    if roles.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "no roles in etcd under {}",
            config.etcd.root_path
        )));
    }
    let client = etcd_client(config).await?;
    let _steering = standin::etcd::steer(&client, &config.etcd);
    let layout = Layout::new(&config.etcd.root_path);
    let (lines, mut printed) = tokio::sync::mpsc::unbounded_channel();
    let mut watches = Vec::new();
    for summary in roles {
        let role = summary.role.clone();
        // What etcd said at the first read: printed first, then only changes.
        let first = summary.leader.map(|l| ChangedLeader {
            server_id: l.server_id,
            address: l.address,
            epoch: l.epoch,
            state: l.state.to_string(),
        });
        let follower =
            LeaderWatch::start(client.clone(), &layout, &role, config.etcd.retry.initial);
        let mut changes = follower.subscribe();
        let lines = lines.clone();
        watches.push(follower);
        tokio::spawn(async move {
            if lines
                .send((role.clone(), first.clone(), SystemTime::now()))
                .is_err()
            {
                return;
            }
            let mut last = first;
            // The follower's value before its first read is no news: only
            // what it reads after is.
            while changes.changed().await.is_ok() {
                let seen = changes.borrow_and_update().clone().map(|l| ChangedLeader {
                    server_id: l.session.server_id,
                    address: l.session.address.clone(),
                    epoch: l.revision,
                    state: l.session.state.to_string(),
                });
                if seen != last {
                    if lines
                        .send((role.clone(), seen.clone(), SystemTime::now()))
                        .is_err()
                    {
                        return;
                    }
                    last = seen;
                }
            }
        });
    }
    drop(lines);
    loop {
        tokio::select! {
            line = printed.recv() => match line {
                Some((role, leader, at)) => {
                    let text = match &leader {
                        Some(l) => format!("{role}: leader {} at {}, epoch {}, {}", l.server_id, l.address, l.epoch, l.state),
                        None => format!("{role}: no leader"),
                    };
                    let change = Change { time: super::output::rfc3339(at), role, leader };
                    format.print_event(at, &change, &text)?;
                }
                None => return Ok(()),
            },
            _ = stop_signal() => return Ok(()),
        }
    }
}
