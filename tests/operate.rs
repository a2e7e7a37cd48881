//! The operator's day with the real binary against a real etcd: status in every format and from the nodes themselves, watch as JSON lines, resign --to, completion, --endpoints, check-config --print, JSON logs, the metrics port's health pages, the version, and reload progress.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use standin::testing::{EtcdServer, StandinProcess, free_loopback_port};
use support::*;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
const ROOT: &str = "standin-operate";

fn yaml(etcd: &EtcdServer, address: &str) -> String {
    format!(
        "etcd:\n  endpoints: [{}]\n  rootPath: {ROOT}\n  requestTimeout: 1s\nnode:\n  address: {address}\nsession:\n  ttl: 10s\n",
        etcd.endpoint()
    )
}

/// A `standin run --role tso` node on a free port, with `extra` arguments.
fn node(etcd: &EtcdServer, extra: &[&str]) -> anyhow::Result<(StandinProcess, String)> {
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let mut args = vec!["--role", "tso", "--listen", &address];
    args.extend_from_slice(extra);
    let process = StandinProcess::spawn(std::path::Path::new(BIN), &yaml(etcd, &address), &args)?;
    Ok((process, address))
}

/// The CLI with `args`, its config naming `endpoints` for etcd.
fn cli_at(endpoints: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!(
            "etcd:\n  endpoints: [{endpoints}]\n  rootPath: {ROOT}\n  requestTimeout: 1s\n  connectAttempts: 1\n"
        ),
    )?;
    Ok(Command::new(BIN)
        .arg("--config")
        .arg(config.path())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("ETCDCTL_ENDPOINTS")
        .env("RUST_LOG", "warn")
        .output()?)
}

fn cli(etcd: &EtcdServer, args: &[&str]) -> anyhow::Result<Output> {
    cli_at(&etcd.endpoint(), args, &[])
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "standin failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The tso leader's server ID and address, once `status -o json` shows one serving.
async fn serving_leader(etcd: &EtcdServer, except: Option<i64>) -> (i64, String) {
    eventually(
        "a serving tso leader in status -o json",
        Duration::from_secs(20),
        || async {
            let output = cli(etcd, &["status", "-o", "json"]).ok()?;
            let roles: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let leader = roles.as_array()?.iter().find(|r| r["role"] == "tso")?["leader"].clone();
            let id = leader["server_id"].as_i64()?;
            (leader["state"] == "serving" && Some(id) != except).then(|| {
                (
                    id,
                    leader["address"].as_str().unwrap_or_default().to_owned(),
                )
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_and_resign_to_with_machine_readable_output() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let metrics_port = free_loopback_port()?;
    let metrics = metrics_port.to_string();
    let mut nodes = vec![node(
        &etcd,
        &["--metrics", &metrics, "--log-format", "json"],
    )?];
    let (first, first_address) = serving_leader(&etcd, None).await;
    nodes.push(node(&etcd, &[])?);
    nodes.push(node(&etcd, &[])?);

    info!("--- status -o wide: a row per node and role, from the nodes themselves");
    let wide = eventually(
        "three nodes in status -o wide",
        Duration::from_secs(20),
        || async {
            let text = stdout(&cli(&etcd, &["status", "-o", "wide"]).ok()?);
            (text.lines().filter(|l| l.contains(" tso ")).count() == 3
                && !text.contains("unreachable"))
            .then_some(text)
        },
    )
    .await;
    assert!(wide.starts_with("NODE"), "{wide}");
    assert!(
        wide.contains("COPY KEYS") && wide.contains("LAST STEP-DOWN"),
        "{wide}"
    );
    assert!(wide.contains(&first_address), "{wide}");

    info!("--- status --node ADDR -o json: what that node reports");
    let report: serde_json::Value = serde_json::from_str(&stdout(&cli(
        &etcd,
        &["status", "--node", &first_address, "-o", "json"],
    )?))?;
    assert_eq!(report["server_id"], first);
    assert_eq!(report["roles"][0]["role"], "tso");
    assert_eq!(report["roles"][0]["state"], "serving");
    assert!(report["roles"][0]["lease_id"].is_i64(), "{report}");
    let yaml = stdout(&cli(&etcd, &["status", "-o", "yaml"])?);
    assert!(yaml.contains("role: tso"), "{yaml}");

    info!("--- watch -o json: the current leader first, as a JSON line with an RFC 3339 time");
    let mut watch = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(nodes[0].0.temp_dir().join("config.yaml"))
        .args(["watch", "tso", "-o", "json"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        watch.stdout.take().expect("piped"),
    ));
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .expect("a first line");
    let change: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(change["role"], "tso");
    assert_eq!(
        change["leader"]["server_id"], first,
        "the first line is the leader: {line}"
    );
    let time = change["time"].as_str().expect("a time");
    humantime::parse_rfc3339(time).map_err(|e| anyhow::anyhow!("{time}: {e}"))?;

    info!("--- resign --to the last node, by server ID");
    let target = eventually(
        "the third node in line",
        Duration::from_secs(20),
        || async {
            let roles: serde_json::Value =
                serde_json::from_slice(&cli(&etcd, &["status", "-o", "json"]).ok()?.stdout).ok()?;
            let standbys = roles[0]["standbys"].as_array()?.clone();
            (standbys.len() == 2).then(|| {
                standbys
                    .iter()
                    .filter_map(|s| s["server_id"].as_i64())
                    .max()
            })?
        },
    )
    .await;
    let asked = Instant::now();
    let handed: serde_json::Value = serde_json::from_str(&stdout(&cli(
        &etcd,
        &["resign", "tso", "--to", &target.to_string(), "-o", "json"],
    )?))?;
    info!(
        took_ms = asked.elapsed().as_millis() as u64,
        "resign --to answered"
    );
    assert_eq!(handed["from"]["server_id"], first);
    assert_eq!(handed["to"]["server_id"], target);
    let (now, _) = serving_leader(&etcd, Some(first)).await;
    assert_eq!(now, target);

    info!("--- the watch printed the handover, straight from the first leader to the target");
    let mut leaders = vec![first];
    while leaders.last() != Some(&target) {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await??
            .expect("a line per change");
        let change: serde_json::Value = serde_json::from_str(&line)?;
        if let Some(id) = change["leader"]["server_id"].as_i64()
            && leaders.last() != Some(&id)
        {
            leaders.push(id);
        }
    }
    assert_eq!(leaders, vec![first, target]);
    drop(watch);

    info!("--- a transfer to a node that is not in line is refused with the candidates, exit 1");
    let refused = cli(&etcd, &["resign", "tso", "--to", "999"])?;
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("server 999 is not ready") && said.contains("candidates now"),
        "{said}"
    );
    let bad = cli(&etcd, &["resign", "tso", "--to", "nowhere"])?;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    info!("--- the metrics port: /healthz, /readyz, /status of the first node");
    let (code, _) = http_get(metrics_port, "/healthz")
        .await
        .expect("/healthz answers");
    assert_eq!(code, 200);
    let (code, _) = http_get(metrics_port, "/readyz")
        .await
        .expect("/readyz answers");
    assert_eq!(code, 200);
    let (_, status) = http_get(metrics_port, "/status")
        .await
        .expect("/status answers");
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(status["server_id"], first);
    assert_eq!(status["roles"][0]["last_step_down"], "transferred");
    let (_, scraped) = http_get(metrics_port, "/metrics")
        .await
        .expect("/metrics answers");
    assert!(scraped.contains("standin_build_info{"), "no build info");
    assert!(
        scraped.contains("standin_step_downs_total{role=\"tso\",reason=\"transferred\"} 1"),
        "{scraped}"
    );

    info!("--- --log-format json: every log line of the first node is a JSON object");
    let log = nodes[0].0.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{line}: {e}"))?;
        assert!(
            parsed["level"].is_string() && parsed["fields"].is_object(),
            "{line}"
        );
    }
    for (process, _) in &mut nodes {
        process.terminate()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_endpoints_check_config_print_and_version() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;

    info!("--- completion scripts name the commands");
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&cli_at("127.0.0.1:1", &["completion", shell], &[])?);
        assert!(
            script.contains("resign") && script.contains("check-config"),
            "{shell}"
        );
    }
    let bash = stdout(&cli_at("127.0.0.1:1", &["completion", "bash"], &[])?);
    assert!(bash.contains("complete -F _standin"), "{bash}");

    info!("--- --endpoints wins over a config naming a dead etcd");
    let dead = format!("127.0.0.1:{}", free_loopback_port()?);
    let (_process, _) = node(&etcd, &[])?;
    serving_leader(&etcd, None).await;
    let fails = cli_at(&dead, &["status", "--timeout", "2s"], &[])?;
    assert!(!fails.status.success());
    let works = stdout(&cli_at(
        &dead,
        &["--endpoints", &etcd.endpoint(), "status"],
        &[],
    )?);
    assert!(
        works.starts_with("ROLE") && works.contains("tso"),
        "{works}"
    );
    let env = [("ETCDCTL_ENDPOINTS", etcd.endpoint())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!("etcd:\n  endpoints: [{dead}]\n  rootPath: {ROOT}\n"),
    )?;
    let from_env = Command::new(BIN)
        .arg("--config")
        .arg(config.path())
        .arg("status")
        .envs(env.iter().copied())
        .output()?;
    assert!(
        stdout(&from_env).contains("tso"),
        "ETCDCTL_ENDPOINTS is honoured"
    );

    info!("--- check-config --print names every value's source");
    let printed = stdout(&cli_at(
        &dead,
        &["check-config", "--print"],
        &[("STANDIN_SESSION_TTL", "5s")],
    )?);
    let row = |key: &str| {
        printed
            .lines()
            .find(|line| line.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{printed}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("session.ttl")[1..],
        ["5s", "env", "STANDIN_SESSION_TTL"]
    );
    assert!(
        row("etcd.endpoints").last().unwrap().ends_with(":2"),
        "the file's line 2"
    );
    let timeout = row("etcd.requestTimeout");
    assert_eq!(timeout[1], "1s");
    assert!(timeout[2].ends_with(":4"), "the file's line 4: {timeout:?}");
    assert_eq!(row("session.transferHoldoff")[1..], ["10s", "default"]);
    let flagged = stdout(&cli_at(
        &dead,
        &[
            "--endpoints",
            "127.0.0.9:2379",
            "check-config",
            "--print",
            "-o",
            "json",
        ],
        &[],
    )?);
    let settings: serde_json::Value = serde_json::from_str(&flagged)?;
    let endpoints = settings
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "etcd.endpoints")
        .expect("etcd.endpoints is printed");
    assert_eq!(endpoints["value"], "[127.0.0.9:2379]");
    assert_eq!(endpoints["variable"], "--endpoints");

    info!("--- --version names the commit");
    let version = stdout(&Command::new(BIN).arg("--version").output()?);
    assert!(version.starts_with("standin 0.1.0 (git "), "{version}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_warm_copy_logs_its_progress_at_info() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    info!("--- 60 000 keys of tso metadata, then a node starts and reads them");
    let mut client = etcd.client().await?;
    let value = vec![b'x'; 100];
    for chunk in (0..60_000).collect::<Vec<u32>>().chunks(100) {
        let puts: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|i| {
                etcd_client::TxnOp::put(
                    format!("{ROOT}/meta/tso/seeded/{i:06}"),
                    value.clone(),
                    None,
                )
            })
            .collect();
        client.txn(etcd_client::Txn::new().and_then(puts)).await?;
    }
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let process = StandinProcess::spawn_with_env(
        std::path::Path::new(BIN),
        &yaml(&etcd, &address),
        &["--role", "tso", "--listen", &address],
        &[("RUST_LOG", "info")],
    )?;
    let log = eventually("the read's last line", Duration::from_secs(60), || {
        let log = process.log();
        async move {
            log.contains("read the metadata copy: 60000 keys")
                .then_some(log)
        }
    })
    .await;
    assert!(
        log.contains("reading the metadata copy: 60000 keys"),
        "{log}"
    );
    process.terminate()?;
    Ok(())
}
