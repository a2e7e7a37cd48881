//! The `standin` binary against a real etcd: run, status, resign, health, the routing layer, tso --loop across kill -9, SIGTERM.

mod support;

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::tso_client::TsoClient;
use standin::service::grpc::proto::{AllocateRequest, StatusRequest, WatchLeaderRequest};
use standin::testing::{EtcdServer, free_loopback_port};
use support::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");

/// A config file for a node (or a client) of one test deployment.
fn config_file(
    etcd: &EtcdServer,
    address: &str,
    ttl_secs: u64,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(
        file,
        "etcd:\n  endpoints: [{}]\n  rootPath: standin-cli\n  requestTimeout: 1s\nnode:\n  address: {address}\nsession:\n  ttl: {ttl_secs}s",
        etcd.endpoint()
    )?;
    Ok(file)
}

/// `standin run` in a child process; killed on drop.
struct NodeProcess {
    child: Child,
    address: String,
    _config: tempfile::NamedTempFile,
}

impl NodeProcess {
    fn start(etcd: &EtcdServer, ttl_secs: u64) -> anyhow::Result<Self> {
        Self::start_with(etcd, ttl_secs, &[])
    }

    fn start_with(etcd: &EtcdServer, ttl_secs: u64, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(etcd, ttl_secs, extra, &[])
    }

    fn start_with_env(
        etcd: &EtcdServer,
        ttl_secs: u64,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let address = format!("127.0.0.1:{}", free_loopback_port()?);
        let config = config_file(etcd, &address, ttl_secs)?;
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config.path())
            .args(["run", "--role", "tso"])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            address,
            _config: config,
        })
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// This node's state for `role` as its Coordination service reports it, if it answers.
    async fn role_state(&self, role: &str) -> Option<(String, i64, i64)> {
        let mut client = CoordinationClient::connect(self.url()).await.ok()?;
        let status = client.status(StatusRequest {}).await.ok()?.into_inner();
        let role = status.roles.into_iter().find(|r| r.role == role)?;
        Some((role.state, role.epoch, status.server_id))
    }

    async fn health(&self) -> Option<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(self.url())
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let answer = client
            .check(HealthCheckRequest {
                service: "tso".into(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(answer.into_inner().status).ok()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when the test ends, even by a failed assertion.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the CLI with `args` against `etcd` and returns its output.
fn cli(etcd: &EtcdServer, args: &[&str]) -> anyhow::Result<Output> {
    let config = config_file(etcd, "127.0.0.1:1", 10)?;
    Ok(Command::new(BIN)
        .arg("--config")
        .arg(config.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?)
}

/// Waits until exactly one of `nodes` serves tso (by its own gRPC status) and returns its index and epoch.
async fn serving_node(nodes: &[NodeProcess], except: Option<usize>) -> (usize, i64) {
    serving_role(nodes, "tso", except).await
}

/// Waits until exactly one of `nodes` other than `except` serves `role` and
/// returns its index and epoch.
async fn serving_role(nodes: &[NodeProcess], role: &str, except: Option<usize>) -> (usize, i64) {
    eventually(
        &format!("one node serving {role}"),
        Duration::from_secs(20),
        || async {
            let mut serving = Vec::new();
            for (index, node) in nodes.iter().enumerate() {
                if let Some((state, epoch, _)) = node.role_state(role).await
                    && state == "serving"
                    && Some(index) != except
                {
                    serving.push((index, epoch));
                }
            }
            (serving.len() == 1).then(|| serving[0])
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_resign_health_and_the_routing_layer() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let metrics_port = free_loopback_port()?;
    let metrics_flag = format!("127.0.0.1:{metrics_port}");
    let mut nodes = vec![NodeProcess::start_with(
        &etcd,
        10,
        &["--metrics", &metrics_flag],
    )?];
    for _ in 1..3 {
        nodes.push(NodeProcess::start(&etcd, 10)?);
    }
    let (leader, epoch) = serving_node(&nodes, None).await;

    info!("--- standin run --metrics exports the role's state for Prometheus");
    let scraped = eventually("a /metrics scrape", Duration::from_secs(5), || async {
        let body = scrape_metrics(metrics_port).await?;
        body.contains("standin_role_state").then_some(body)
    })
    .await;
    let expected_state = if leader == 0 { "serving" } else { "standby" };
    assert!(
        scraped.contains(&format!(
            "standin_role_state{{role=\"tso\",state=\"{expected_state}\"}} 1"
        )),
        "{scraped}"
    );

    info!("--- standin tso allocates once and prints the batch");
    let once = cli(&etcd, &["tso", "--count", "5"])?;
    let printed = String::from_utf8_lossy(&once.stdout);
    assert!(
        once.status.success()
            && printed.contains("count=5")
            && printed.contains(&format!("epoch={epoch}")),
        "{printed}"
    );

    info!("--- standin status --json names the node that serves");
    let output = cli(&etcd, &["status", "--json"])?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let roles: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let tso = roles
        .as_array()
        .and_then(|r| r.iter().find(|r| r["role"] == "tso"))
        .expect("tso in status");
    let (_, _, leader_id) = nodes[leader]
        .role_state("tso")
        .await
        .expect("the leader answers");
    assert_eq!(tso["leader"]["server_id"], leader_id);
    assert_eq!(tso["leader"]["address"], nodes[leader].address);
    assert_eq!(tso["leader"]["epoch"], epoch);
    assert_eq!(tso["leader"]["state"], "serving");
    assert_eq!(tso["standbys"].as_array().map(Vec::len), Some(2));
    let table = cli(&etcd, &["status"])?;
    assert!(String::from_utf8_lossy(&table.stdout).contains(&nodes[leader].address));

    info!("--- health: SERVING only on the leader");
    for (index, node) in nodes.iter().enumerate() {
        let expected = if index == leader {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        assert_eq!(node.health().await, Some(expected), "node {index}");
    }

    info!("--- a standby refuses tso requests and names the leader");
    // Every refusal is UNAVAILABLE; the leader is named once the standby,
    // started moments ago beside it, has seen its election.
    let standby = (leader + 1) % 3;
    let tso = TsoClient::connect(nodes[standby].url()).await?;
    eventually(
        "the standby's refusal to name the leader",
        Duration::from_secs(5),
        || {
            let mut tso = tso.clone();
            let leader_address = nodes[leader].address.clone();
            async move {
                let refused = tso
                    .allocate(AllocateRequest { count: 1 })
                    .await
                    .expect_err("a standby refuses");
                assert_eq!(refused.code(), tonic::Code::Unavailable);
                let named = refused
                    .metadata()
                    .get("standin-leader")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (named.as_deref() == Some(leader_address.as_str())).then_some(())
            }
        },
    )
    .await;
    let bad = TsoClient::connect(nodes[leader].url())
        .await?
        .allocate(AllocateRequest { count: 0 })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let too_many = TsoClient::connect(nodes[leader].url())
        .await?
        .allocate(AllocateRequest { count: 1 << 18 })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    let mut coordination = CoordinationClient::connect(nodes[leader].url()).await?;
    let unknown = coordination
        .watch_leader(WatchLeaderRequest {
            role: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown.message().contains("unknown role"),
        "{}",
        unknown.message()
    );
    let unknown = coordination
        .resign(standin::service::grpc::proto::ResignRequest {
            role: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    let not_leader = CoordinationClient::connect(nodes[standby].url())
        .await?
        .resign(standin::service::grpc::proto::ResignRequest {
            role: "tso".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(not_leader.code(), tonic::Code::FailedPrecondition);

    info!("--- standin resign tso: another node takes over, health flips");
    let mut leaders = CoordinationClient::connect(nodes[standby].url())
        .await?
        .watch_leader(WatchLeaderRequest { role: "tso".into() })
        .await?
        .into_inner();
    let watcher_config = config_file(&etcd, "127.0.0.1:1", 10)?;
    let mut watcher = KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(watcher_config.path())
            .args(["watch", "tso"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let (lines, watched) = std::sync::mpsc::channel();
    let watcher_stdout = watcher.0.stdout.take().expect("piped");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(watcher_stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let output = cli(&etcd, &["resign", "tso"])?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (next, new_epoch) = serving_node(&nodes, Some(leader)).await;
    assert!(new_epoch > epoch);
    eventually("health to flip", Duration::from_secs(5), || async {
        let old = nodes[leader].health().await;
        let new = nodes[next].health().await;
        (old == Some(ServingStatus::NotServing) && new == Some(ServingStatus::Serving))
            .then_some(())
    })
    .await;
    let streamed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = leaders.message().await? {
            if event
                .leader
                .is_some_and(|l| l.epoch == new_epoch && l.state == "serving")
            {
                return Ok(true);
            }
        }
        Ok::<_, tonic::Status>(false)
    })
    .await;
    assert!(
        matches!(streamed, Ok(Ok(true))),
        "the leader stream never reported the new leader serving"
    );
    wait_for(
        "standin watch to print the new leader",
        Duration::from_secs(5),
        || {
            watched
                .try_iter()
                .find(|line| line.contains(&format!("epoch {new_epoch}, serving")))
        },
    )
    .await;
    drop(watcher);

    info!("--- the layer refuses a request carrying the old epoch");
    let mut stale = standin::service::client::with_epoch(AllocateRequest { count: 1 }, epoch);
    stale.set_timeout(Duration::from_secs(2));
    let refused = TsoClient::connect(nodes[next].url())
        .await?
        .allocate(stale)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let fresh = standin::service::client::with_epoch(AllocateRequest { count: 1 }, new_epoch);
    let answer = TsoClient::connect(nodes[next].url())
        .await?
        .allocate(fresh)
        .await?
        .into_inner();
    assert_eq!(answer.epoch, new_epoch);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tso_loop_rides_through_kill_9_and_sigterm_hands_over() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes: Vec<_> = (0..3)
        .map(|_| NodeProcess::start(&etcd, 2))
        .collect::<Result<_, _>>()?;
    let (leader, _) = serving_node(&nodes, None).await;

    info!("--- a tso --loop client runs while the active is killed");
    let config = config_file(&etcd, "127.0.0.1:1", 10)?;
    let mut client = Command::new(BIN)
        .arg("--config")
        .arg(config.path())
        .args(["tso", "--loop", "--count", "7", "--duration", "8s"])
        // Callers batched over two streams, each checking its own order.
        .args(["--callers", "20", "--streams", "2"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Kill only once the client allocates: one that started late would see
    // neither failover.
    let (lines, said) = std::sync::mpsc::channel();
    let stdout = client.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut heard = Vec::new();
    wait_for("the client's first batch", Duration::from_secs(10), || {
        heard.extend(said.try_iter());
        heard
            .iter()
            .any(|line: &String| line.contains("first batch"))
            .then_some(())
    })
    .await;
    nodes[leader].signal("KILL")?;
    let (next, _) = serving_node(&nodes, Some(leader)).await;

    info!("--- SIGTERM on the new active: it hands over and exits 0");
    let handed_over_at = Instant::now();
    nodes[next].signal("TERM")?;
    let third = 3 - leader - next;
    eventually(
        "the third node to serve",
        Duration::from_secs(5),
        || async { (nodes[third].role_state("tso").await?.0 == "serving").then_some(()) },
    )
    .await;
    let handover = handed_over_at.elapsed();
    info!(?handover, "--- the last node serves");
    assert!(
        handover < Duration::from_secs(2),
        "graceful handover took {handover:?}"
    );
    let exited = eventually(
        "the terminated node to exit",
        Duration::from_secs(10),
        || std::future::ready(nodes[next].child.try_wait().ok().flatten()),
    )
    .await;
    assert!(exited.success(), "SIGTERM exit status {exited}");

    let output = tokio::task::spawn_blocking(move || client.wait_with_output()).await??;
    reader.join().expect("the stdout reader");
    heard.extend(said.try_iter());
    let stdout = heard.join("\n");
    info!("client said:\n{stdout}");
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains("violations=0"), "{summary}");
    assert!(summary.contains("callers=20 streams=2"), "{summary}");
    assert!(
        !summary.contains("failovers=0"),
        "the client saw no failover: {summary}"
    );
    nodes.clear();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_puts_survive_a_handover_and_bad_keys_are_refused() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    // tso and kv on two nodes: without the spread, which would move one of
    // them to the other node while the test follows the first leader.
    let unspread = [("STANDIN_SESSION_SPREAD_LEADERS", "false")];
    let mut nodes: Vec<_> = (0..2)
        .map(|_| NodeProcess::start_with_env(&etcd, 10, &["--role", "kv"], &unspread))
        .collect::<Result<_, _>>()?;
    let (leader, epoch) = serving_role(&nodes, "kv", None).await;
    let text = |output: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };

    let put = cli(&etcd, &["kv", "put", "greeting", "hello"])?;
    assert!(put.status.success(), "{}", text(&put));
    assert_eq!(text(&put).trim(), format!("put greeting epoch={epoch}"));
    let missing = cli(&etcd, &["kv", "get", "nobody"])?;
    assert_eq!(
        text(&missing).trim(),
        format!("nobody is not set (epoch={epoch})")
    );

    info!("--- SIGTERM on the kv leader: the successor answers the put from its reload");
    nodes[leader].signal("TERM")?;
    let (_, successor) = serving_role(&nodes, "kv", Some(leader)).await;
    assert!(successor > epoch, "epoch {successor} after {epoch}");
    let got = cli(&etcd, &["kv", "get", "greeting"])?;
    assert!(got.status.success(), "{}", text(&got));
    assert_eq!(
        text(&got).trim(),
        format!("greeting=hello epoch={successor}")
    );

    let bad = cli(&etcd, &["kv", "put", "../escape", "x"])?;
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad)
            .contains("kv: refused (InvalidArgument): key \"../escape\" is not a register key"),
        "{}",
        text(&bad)
    );
    nodes.clear();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_messages_and_exit_codes_a_person_can_act_on() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/standin.yaml", "status"])
        .output()?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/standin.yaml"));

    let unknown = cli(&etcd, &["run", "--role", "rootcoord"])?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown role \"rootcoord\""));

    let resign = cli(&etcd, &["resign", "nosuchrole"])?;
    assert_eq!(resign.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&resign.stderr).contains("unknown role"));

    let mut bad = tempfile::NamedTempFile::new()?;
    writeln!(bad, "session:\n  ttl: 1s")?;
    let invalid = Command::new(BIN)
        .arg("--config")
        .arg(bad.path())
        .arg("check-config")
        .output()?;
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("session.ttl"));

    let port = free_loopback_port()?;
    let mut unreachable = tempfile::NamedTempFile::new()?;
    writeln!(
        unreachable,
        "etcd:\n  endpoints: [127.0.0.1:{port}]\n  requestTimeout: 500ms\n  connectTimeout: 500ms\n  connectAttempts: 2"
    )?;
    let down = Command::new(BIN)
        .arg("--config")
        .arg(unreachable.path())
        .arg("status")
        .output()?;
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("did not answer after 2 attempt(s)"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );

    info!("--- with the default 10 attempts, one-shot commands give up at --timeout");
    let mut defaults = tempfile::NamedTempFile::new()?;
    writeln!(defaults, "etcd:\n  endpoints: [127.0.0.1:{port}]")?;
    for (args, bound) in [
        (&["status"][..], Duration::from_secs(5)),
        (&["tso", "--count", "1"][..], Duration::from_secs(5)),
        (&["--timeout", "1s", "watch"][..], Duration::from_secs(1)),
    ] {
        let started = Instant::now();
        let down = Command::new(BIN)
            .arg("--config")
            .arg(defaults.path())
            .args(args)
            .env_remove("RUST_LOG")
            .output()?;
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&down.stderr);
        info!(?args, ?took, "gave up: {stderr}");
        assert_eq!(down.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            took < bound + Duration::from_secs(2),
            "{args:?} took {took:?}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got {stderr}"
        );
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_publishes_its_listen_address_unless_told_otherwise() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut config = tempfile::NamedTempFile::new()?;
    writeln!(
        config,
        "etcd:\n  endpoints: [{}]\n  rootPath: standin-listen\nsession:\n  ttl: 2s",
        etcd.endpoint()
    )?;
    let listens: Vec<String> = (0..2)
        .map(|_| Ok(format!("127.0.0.1:{}", free_loopback_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let advertised = format!("127.0.0.1:{}", free_loopback_port()?);
    let spawn = |listen: &str, extra: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(config.path())
            .args(["run", "--role", "tso", "--listen", listen])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map(KillOnDrop)
    };
    let _first = spawn(&listens[0], &[])?;

    info!("--- the first node leads, published at its --listen address");
    let leader = eventually("a serving leader", Duration::from_secs(20), || async {
        let status = Command::new(BIN)
            .arg("--config")
            .arg(config.path())
            .args(["status", "--json"])
            .output()
            .ok()?;
        let roles: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
        let leader = &roles.as_array()?.first()?["leader"];
        (leader["state"].as_str()? == "serving")
            .then(|| leader["address"].as_str().map(str::to_owned))?
    })
    .await;
    assert_eq!(leader, listens[0]);
    let allocated = Command::new(BIN)
        .arg("--config")
        .arg(config.path())
        .args(["tso", "--count", "3"])
        .output()?;
    assert!(
        allocated.status.success(),
        "a client reaches the leader at the address it published: {}",
        String::from_utf8_lossy(&allocated.stderr)
    );

    info!("--- --advertise wins over the listen address");
    let _second = spawn(&listens[1], &["--advertise", &advertised])?;
    let client = etcd.client().await?;
    let published = eventually("both sessions", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let options = etcd_client::GetOptions::new().with_prefix();
            let sessions = client
                .get("standin-listen/session/tso-", Some(options))
                .await
                .ok()?;
            let mut addresses: Vec<String> = sessions
                .kvs()
                .iter()
                .filter_map(|kv| standin::SessionInfo::decode(kv.key(), kv.value()).ok())
                .map(|session| session.address)
                .collect();
            addresses.sort();
            (addresses.len() == 2).then_some(addresses)
        }
    })
    .await;
    let mut expected = vec![listens[0].clone(), advertised.clone()];
    expected.sort();
    assert_eq!(published, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_role_refuses_a_second_instance() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let exclusive = [("TSO_ENABLE_ACTIVE_STANDBY", "false")];
    let first = NodeProcess::start_with_env(&etcd, 10, &[], &exclusive)?;
    serving_node(std::slice::from_ref(&first), None).await;

    info!("--- a second exclusive instance fails at start, naming the holder");
    let config = config_file(&etcd, &format!("127.0.0.1:{}", free_loopback_port()?), 10)?;
    let mut second = Command::new(BIN);
    second
        .arg("--config")
        .arg(config.path())
        .args(["run", "--role", "tso"])
        .envs(exclusive);
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || second.output()),
    )
    .await???;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&first.address), "{stderr}");
    Ok(())
}
