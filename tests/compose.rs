//! deploy/compose/compose.yaml brought up with podman-compose from images built FROM scratch: a container killed with SIGKILL is taken over through the death witness across containers while a client's timestamps keep increasing, a container stopped gracefully hands over, and teardown leaves nothing behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standin::Config;
use standin::service::client::TsoClient;
use standin::service::grpc::proto::StatusRequest;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use support::*;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The project name, so a cluster an operator runs is never touched.
const PROJECT: &str = "standin-test";
const IMAGE: &str = "localhost/standin:test";
const ETCD_IMAGE: &str = "localhost/standin-etcd:test";
const ETCD: &str = "127.0.0.10:2379";
/// The nodes' API addresses, as compose.yaml gives them.
const NODES: [&str; 3] = ["127.0.0.11:19530", "127.0.0.12:19530", "127.0.0.13:19530"];
/// compose.yaml's session TTL (the default): what a kill -9 would cost without the witness.
const TTL: Duration = Duration::from_secs(10);

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The cluster of one test: compose.yaml copied beside its own secrets;
/// taken down, volumes and all, on drop.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn compose_file(&self) -> PathBuf {
        self.dir.path().join("compose.yaml")
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman-compose");
        command
            .arg("-p")
            .arg(PROJECT)
            .arg("-f")
            .arg(self.compose_file())
            .args(args)
            .env("IMAGE", IMAGE)
            .env("ETCD_IMAGE", ETCD_IMAGE);
        command
    }

    fn up() -> anyhow::Result<Self> {
        for (kind, binary, tag) in [
            ("standin", BIN.to_owned(), IMAGE),
            ("etcd", which("etcd")?, ETCD_IMAGE),
        ] {
            run(Command::new(format!("{ROOT}/deploy/image.sh")).args([kind, &binary, tag]))?;
        }
        let dir = tempfile::tempdir()?;
        std::fs::copy(
            format!("{ROOT}/deploy/compose/compose.yaml"),
            dir.path().join("compose.yaml"),
        )?;
        run(Command::new(format!("{ROOT}/deploy/compose/secrets.sh"))
            .arg(dir.path().join("secrets")))?;
        let cluster = Self { dir };
        // A run cut short earlier may have left its cluster up.
        let _ = cluster.compose(&["down", "-v"]).output();
        run(&mut cluster.compose(&["up", "-d"]))?;
        Ok(cluster)
    }

    fn container(node: usize) -> String {
        format!("{PROJECT}_node{}_1", node + 1)
    }

    fn logs(node: usize) -> String {
        Command::new("podman")
            .args(["logs", &Self::container(node)])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
            .unwrap_or_default()
    }

    /// Everything podman holds of this project: containers and volumes.
    fn leftovers() -> anyhow::Result<Vec<String>> {
        let label = format!("label=io.podman.compose.project={PROJECT}");
        let mut found = Vec::new();
        for kind in ["ps", "volume"] {
            let mut command = Command::new("podman");
            if kind == "ps" {
                command.args(["ps", "-a", "--format", "{{.Names}}", "--filter", &label]);
            } else {
                command.args(["volume", "ls", "--format", "{{.Name}}"]);
            }
            found.extend(
                stdout(&run(&mut command)?)
                    .lines()
                    .filter(|name| name.contains(PROJECT))
                    .map(str::to_owned),
            );
        }
        Ok(found)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v"]).output();
    }
}

fn which(program: &str) -> anyhow::Result<String> {
    let found = run(Command::new("sh").args(["-c", &format!("command -v {program}")]))?;
    Ok(stdout(&found).trim().to_owned())
}

/// Which node serves `role` at which epoch, by the nodes' own status.
async fn serving(role: &str) -> Option<(usize, i64)> {
    for (index, address) in NODES.iter().enumerate() {
        let Ok(mut client) = CoordinationClient::connect(format!("http://{address}")).await else {
            continue;
        };
        let Ok(status) = client.status(StatusRequest {}).await else {
            continue;
        };
        if let Some(role) = status
            .into_inner()
            .roles
            .into_iter()
            .find(|r| r.role == role && r.state == "serving")
        {
            return Some((index, role.epoch));
        }
    }
    None
}

/// Waits until a node other than `old` serves tso at a newer epoch.
async fn successor(old: usize, old_epoch: i64, deadline: Duration) -> (usize, i64) {
    eventually("a successor serving tso", deadline, || async {
        let (index, epoch) = serving("tso").await?;
        (index != old && epoch > old_epoch).then_some((index, epoch))
    })
    .await
}

/// A client allocating in a loop, keeping every batch's last timestamp and
/// the longest wait between two answers.
struct Allocations {
    seen: Arc<Mutex<(Vec<u64>, Duration)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Allocations {
    async fn start() -> anyhow::Result<Self> {
        let config = Config::from_yaml_str(&format!("etcd:\n  endpoints: [{ETCD}]\n"))?;
        let client = TsoClient::connect(&config).await?;
        let seen = Arc::new(Mutex::new((Vec::new(), Duration::ZERO)));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                if let Ok(batch) = client.allocate(1, Duration::from_secs(30)).await {
                    let mut seen = record.lock().unwrap();
                    seen.0.push(batch.first);
                    seen.1 = seen.1.max(last.elapsed());
                    last = Instant::now();
                }
            }
        });
        Ok(Self { seen, task })
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().0.len()
    }

    /// Stops and checks: every timestamp above the one before; returns the longest wait.
    fn finish(self) -> Duration {
        self.task.abort();
        let (timestamps, longest) = self.seen.lock().unwrap().clone();
        for pair in timestamps.windows(2) {
            assert!(pair[1] > pair[0], "timestamp {} after {}", pair[1], pair[0]);
        }
        longest
    }
}

/// Waits until the client has had `more` answers past what it had.
async fn answered(allocations: &Allocations, more: usize) {
    let target = allocations.count() + more;
    wait_for("the client to be answered", Duration::from_secs(30), || {
        (allocations.count() >= target).then_some(())
    })
    .await
}

fn exit_code(container: &str) -> anyhow::Result<String> {
    let inspected = run(Command::new("podman").args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        container,
    ]))?;
    Ok(stdout(&inspected).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_rides_through_kill_9_and_a_graceful_stop() -> anyhow::Result<()> {
    init_logging();
    let cluster = Cluster::up()?;
    let (leader, epoch) = eventually("a node serving tso", Duration::from_secs(60), || {
        serving("tso")
    })
    .await;
    info!(leader, epoch, "--- the cluster serves");
    // Every standby is healthy by the image's own HEALTHCHECK (standin probe).
    for node in (0..3).filter(|&node| node != leader) {
        let container = Cluster::container(node);
        eventually("a healthy standby", Duration::from_secs(30), || async {
            Command::new("podman")
                .args(["healthcheck", "run", &container])
                .output()
                .ok()?
                .status
                .success()
                .then_some(())
        })
        .await;
        // Both standbys watch the leader's witness, so the kill below is seen.
        wait_for(
            "the standby to watch the leader",
            Duration::from_secs(30),
            || {
                Cluster::logs(node)
                    .contains("watching leader server")
                    .then_some(())
            },
        )
        .await;
    }
    let allocations = Allocations::start().await?;
    answered(&allocations, 100).await;

    info!("--- kill -9 the active container");
    let killed_at = Instant::now();
    run(Command::new("podman").args(["kill", "--signal", "KILL", &Cluster::container(leader)]))?;
    let (next, next_epoch) = successor(leader, epoch, TTL).await;
    let took = killed_at.elapsed();
    info!(?took, next, "--- a peer serves");
    assert!(
        took < TTL / 5,
        "a peer served {took:?} after the kill; the TTL is {TTL:?}, and the witness across \
         containers should have revoked the lease at once"
    );
    assert!(
        (0..3).any(|node| Cluster::logs(node).contains("is gone")),
        "no node's witness revoked the dead leader"
    );
    answered(&allocations, 100).await;

    info!("--- stop the new active gracefully (SIGTERM)");
    let stopped_at = Instant::now();
    run(Command::new("podman").args(["stop", "-t", "30", &Cluster::container(next)]))?;
    let (last, _) = eventually("a third serving tso", TTL, || async {
        let (index, epoch) = serving("tso").await?;
        (index != next && epoch > next_epoch).then_some((index, epoch))
    })
    .await;
    info!(took = ?stopped_at.elapsed(), last, "--- handed over");
    assert_eq!(exit_code(&Cluster::container(next))?, "0");
    let logs = Cluster::logs(next);
    assert!(logs.contains("handing the roles over"), "{logs}");
    answered(&allocations, 100).await;
    let longest = allocations.finish();
    info!(?longest, "--- timestamps kept increasing");
    assert!(
        longest < TTL / 5,
        "the client waited {longest:?} for an answer"
    );

    info!("--- down -v leaves nothing behind");
    let compose_file = cluster.compose_file();
    drop(cluster);
    assert!(!Path::new(&compose_file).exists());
    let left = Cluster::leftovers()?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
