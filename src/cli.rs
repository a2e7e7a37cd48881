//! The CLI's commands, one module per kind, and what they share: exit codes, bounded one-shot steps, the etcd read every inspecting command starts with.

pub mod client;
pub mod inspect;
pub mod output;
pub mod run;
pub mod settings;
pub mod steer;

use std::future::Future;
use std::time::Duration;

use standin::Config;
use standin::etcd::inspect::{self as etcd_inspect, RoleSummary};
use standin::etcd::session::Layout;

/// A failure with the exit code it deserves: 2 for what the person must fix
/// in how they called us, 1 for what went wrong while running.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

/// A failure of how the command was called: exit code 2.
pub fn usage(error: anyhow::Error) -> Failure {
    Failure { code: 2, error }
}

/// The error and its causes on one line, each said once: many library
/// errors already include their cause's text.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Runs one step of a one-shot command, failing with one line that names
/// the endpoints when it does not finish within `timeout`.
pub async fn within<T>(
    timeout: Duration,
    config: &Config,
    step: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, step).await {
        Ok(done) => done,
        Err(_) => Err(anyhow::anyhow!(
            "no answer within {} from etcd at {} (or from the node it names): check \
             etcd.endpoints (--endpoints, ETCD_ENDPOINTS) and that etcd runs, or pass a longer --timeout",
            humantime::format_duration(timeout),
            config.etcd.endpoints.join(",")
        )
        .into()),
    }
}

/// A client for the config's etcd, checked to answer.
pub async fn etcd_client(config: &Config) -> Result<etcd_client::Client, Failure> {
    Ok(standin::etcd::connect_checked(&config.etcd).await?)
}

/// Every role in etcd: its leader and registered instances.
pub async fn role_summaries(config: &Config) -> Result<Vec<RoleSummary>, Failure> {
    let client = etcd_client(config).await?;
    let layout = Layout::new(&config.etcd.root_path);
    Ok(etcd_inspect::roles(&client, &layout).await?)
}

/// The summary of `role`, or an error naming the roles etcd knows.
pub fn find_role<'a>(roles: &'a [RoleSummary], role: &str) -> Result<&'a RoleSummary, Failure> {
    roles.iter().find(|r| r.role == role).ok_or_else(|| {
        let known: Vec<_> = roles.iter().map(|r| r.role.as_str()).collect();
        usage(anyhow::anyhow!(
            "unknown role {role:?}; roles in etcd: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
