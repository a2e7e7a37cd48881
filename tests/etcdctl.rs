//! etcd's own election client sees the leader standin elected, and follows a takeover.

mod support;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use standin::testing::EtcdServer;
use standin::{RoleState, SessionInfo};
use support::*;
use tracing::info;

const ROLE: &str = "rootcoord";

/// Lines that `etcdctl elect -l` prints, read on a thread as they come.
struct Observer {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Observer {
    fn start(etcd: &EtcdServer, election: &str) -> anyhow::Result<Self> {
        let mut child = etcd.etcdctl_spawn(&["elect", "-l", election])?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits until etcdctl reports a leader value that `accept`s.
    async fn wait_for_leader(
        &self,
        what: &str,
        accept: impl Fn(&SessionInfo) -> bool,
    ) -> SessionInfo {
        wait_for(what, Duration::from_secs(10), || {
            self.lines
                .try_iter()
                .filter_map(|line| serde_json::from_str::<SessionInfo>(&line).ok())
                .find(|info| accept(info))
        })
        .await
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_shows_our_leader_and_follows_a_takeover() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = start_nodes(2, &[ROLE], |index| config(&etcd, index, 10)).await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let server_id = nodes[leader].role(ROLE).status().server_id;

    info!("--- etcdctl elect -l names the serving node");
    let observer = Observer::start(&etcd, "standin-test/election/rootcoord")?;
    let seen = observer
        .wait_for_leader("etcdctl to show the serving leader", |info| {
            info.state == RoleState::Serving
        })
        .await;
    assert_eq!(seen.server_id, server_id);
    assert_eq!(seen.address, nodes[leader].address);

    info!("--- after the active crashes, etcdctl shows the new leader serving");
    let _ = nodes[leader]
        .role(ROLE)
        .call(LedgerRequest::Panic, CALL)
        .await;
    let next = 1 - leader;
    let next_id = nodes[next].role(ROLE).status().server_id;
    let seen = observer
        .wait_for_leader("etcdctl to show the new leader", |info| {
            info.server_id == next_id && info.state == RoleState::Serving
        })
        .await;
    assert_eq!(seen.address, nodes[next].address);

    shutdown_all(&mut nodes).await;
    Ok(())
}
