//! `resign` (to whoever is next, or `--to` a chosen standby) and `probe`, a container's or kubelet's health check.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use standin::service::connect::NodeConnector;
use standin::service::grpc::proto::ResignRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::{Config, TransferTarget};

use super::inspect::ask_node;
use super::output::Format;
use super::{Failure, find_role, role_summaries, usage, within};

#[derive(Serialize)]
struct Handover {
    role: String,
    from: Node,
    /// The epoch that ended.
    epoch: i64,
    /// With `--to`: who took over.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Node>,
}

#[derive(Serialize)]
struct Node {
    server_id: i64,
    address: String,
}

/// `standin resign ROLE [--to TARGET]`.
pub async fn resign(
    config: &Config,
    role: &str,
    to: Option<TransferTarget>,
    format: Format,
    timeout: Duration,
) -> Result<(), Failure> {
    let roles = within(timeout, config, role_summaries(config)).await?;
    let Some(leader) = &find_role(&roles, role)?.leader else {
        return Err(anyhow::anyhow!("nobody leads {role} right now").into());
    };
    let channel = NodeConnector::from_config(config)
        .map_err(|error| usage(error.into()))?
        .connect(&leader.address)
        .await?;
    let answer = CoordinationClient::new(channel)
        .resign(ResignRequest {
            role: role.to_owned(),
            to: to.as_ref().map(TransferTarget::as_arg).unwrap_or_default(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("asking {} to hand {role} over", leader.address))?
        .into_inner();
    let handover = Handover {
        role: role.to_owned(),
        from: Node {
            server_id: leader.server_id,
            address: leader.address.clone(),
        },
        epoch: leader.epoch,
        to: to.map(|_| Node {
            server_id: answer.server_id,
            address: answer.address,
        }),
    };
    if format.print_data(&handover)? {
        return Ok(());
    }
    match &handover.to {
        None => println!(
            "{role}: server {} at {} resigned (epoch {}); a standby takes over",
            leader.server_id, leader.address, leader.epoch
        ),
        Some(to) => println!(
            "{role}: server {} at {} handed the role to server {} at {} (epoch {} ended)",
            leader.server_id, leader.address, to.server_id, to.address, leader.epoch
        ),
    }
    Ok(())
}

/// `standin probe`: the node at `address` answers its `Status` and, unless
/// `live`, every role it runs holds a lease (a live etcd session).
pub async fn probe(
    config: &Config,
    address: Option<String>,
    live: bool,
    format: Format,
    timeout: Duration,
) -> Result<(), Failure> {
    let address = address.unwrap_or_else(|| config.node.advertised().to_owned());
    NodeConnector::from_config(config).map_err(|error| usage(error.into()))?;
    let report = ask_node(config, &address, timeout).await;
    if let Some(error) = &report.error {
        return Err(anyhow::anyhow!("asking the node at {address}: {error}").into());
    }
    let server_id = report.server_id.unwrap_or_default();
    if !live {
        let without: Vec<&str> = report
            .roles
            .iter()
            .filter(|role| role.lease_id.is_none() || role.state == "stopped")
            .map(|role| role.role.as_str())
            .collect();
        if report.roles.is_empty() || !without.is_empty() {
            return Err(anyhow::anyhow!(
                "server {server_id} at {address} answers, but holds no live etcd session for: {} \
                 (etcd unreachable, or the node is stopping)",
                if without.is_empty() {
                    "any role".to_owned()
                } else {
                    without.join(", ")
                }
            )
            .into());
        }
    }
    if format.print_data(&report)? {
        return Ok(());
    }
    let roles: Vec<String> = report
        .roles
        .iter()
        .map(|role| format!("{} {}", role.role, role.state))
        .collect();
    println!("ok: server {server_id} at {address} ({})", roles.join(", "));
    Ok(())
}
