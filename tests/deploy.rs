//! What a deployment meets, against real `standin run` processes and a real etcd: unspecified addresses refused, Kubernetes' environment, writes closed off loopback, kv quotas and the oracle's lead, `standin probe`, and systemd's readiness protocol.

mod support;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::tso_client::TsoClient;
use standin::service::grpc::proto::{AllocateRequest, ResignRequest, StatusRequest};
use standin::testing::{EtcdServer, StandinProcess, free_loopback_port};
use support::*;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
const TOKEN: &str = "tok-deploy-7c1f9a";

/// A scratch directory holding one test's config and secret files.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(tempfile::tempdir()?))
    }

    /// Writes a file only its owner reads: some hold secrets, which the
    /// config refuses to read from a file others may read.
    fn write(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let path = self.0.path().join(name);
        standin::testing::write_secret(&path, text)?;
        Ok(path.display().to_string())
    }

    /// A config file: the etcd section of `etcd` with `rest` after it.
    fn config(&self, name: &str, etcd: &EtcdServer, rest: &str) -> anyhow::Result<String> {
        self.write(
            name,
            &format!(
                "etcd:\n  endpoints: [{}]\n  rootPath: standin-deploy\n  requestTimeout: 1s\n{rest}",
                etcd.endpoint()
            ),
        )
    }
}

/// Logging, a fresh etcd and a scratch directory: what every test here starts with.
async fn prepare() -> anyhow::Result<(EtcdServer, Scratch)> {
    init_logging();
    Ok((EtcdServer::start().await?, Scratch::new()?))
}

/// A loopback address on a free port, for a node to serve and publish.
fn loopback_address() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_loopback_port()?))
}

/// `standin --config CONFIG ARGS`, the test's own `STANDIN_*` variables
/// removed and `env` set: the environment is part of what is tested.
fn standin(config: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("STANDIN_") || name == "ETCD_ENDPOINTS" {
            command.env_remove(name);
        }
    }
    command
        .args(["--config", config])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// `standin --config CONFIG run ARGS` with `env` (and info logging), from the
/// test kit: killed on drop, its log kept.
fn run_node(config: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<StandinProcess> {
    let yaml = std::fs::read_to_string(config)?;
    let env = [env, &[("RUST_LOG", "info")]].concat();
    Ok(StandinProcess::spawn_with_env(
        BIN.as_ref(),
        &yaml,
        args,
        &env,
    )?)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until the node at `address` reports `role` serving.
async fn serves(address: &str, role: &str) {
    let url = format!("http://{address}");
    eventually(
        &format!("{address} serving {role}"),
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let mut client = CoordinationClient::connect(url).await.ok()?;
                let status = client.status(StatusRequest {}).await.ok()?.into_inner();
                status
                    .roles
                    .iter()
                    .any(|r| r.role == role && r.state == "serving")
                    .then_some(())
            }
        },
    )
    .await
}

/// Runs `command` off the test's runtime threads.
async fn output(mut command: Command) -> anyhow::Result<Output> {
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unspecified_address_is_never_published() -> anyhow::Result<()> {
    let (etcd, scratch) = prepare().await?;
    let config = scratch.config("node.yaml", &etcd, "")?;

    info!("--- --listen 0.0.0.0 with nothing to publish exits 2, saying what to set");
    let port = free_loopback_port()?;
    let listen = format!("0.0.0.0:{port}");
    let refused = output(standin(&config, &["run", "--listen", &listen], &[])).await?;
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "--listen {listen} is an unspecified address, which cannot be published"
        )),
        "{text}"
    );
    for fix in ["--advertise", "node.address", "status.podIP"] {
        assert!(text.contains(fix), "names {fix}: {text}");
    }

    info!("--- node.address 0.0.0.0 (here from the environment) is refused by name");
    for (variable, key) in [
        ("STANDIN_NODE_ADDRESS", "node.address"),
        (
            "STANDIN_NODE_WITNESS_ADVERTISED_ADDRESS",
            "node.witnessAdvertisedAddress",
        ),
    ] {
        let refused = output(standin(
            &config,
            &["check-config"],
            &[(variable, "[::]:19530")],
        ))
        .await?;
        let text = stderr(&refused);
        assert_eq!(refused.status.code(), Some(2), "{text}");
        assert!(text.contains(variable), "{text}");
        assert!(text.contains(key), "{text}");
        assert!(
            text.contains("must not be an unspecified address"),
            "{text}"
        );
    }

    info!("--- listening on every interface and advertising an address serves");
    let advertised = format!("127.0.0.1:{port}");
    let node = run_node(
        &config,
        &[
            "--role",
            "tso",
            "--listen",
            &listen,
            "--advertise",
            &advertised,
        ],
        &[],
    )?;
    serves(&advertised, "tso").await;
    assert!(
        node.log()
            .contains("kv Put and tso Allocate are refused to every caller"),
        "a node off loopback without credentials says writes are closed: {}",
        node.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_link_variables_are_ignored_and_a_role_section_in_another_case_is_warned()
-> anyhow::Result<()> {
    let (etcd, scratch) = prepare().await?;
    // A role section spelled in another case than the role does not apply:
    // a warning names both.
    let config = scratch.config(
        "node.yaml",
        &etcd,
        "Tso:\n  activeStandby:\n    enabled: false\n",
    )?;
    let port = free_loopback_port()?;
    let address = format!("127.0.0.1:{port}");
    // A few of a kubelet's service links (tests/helm.rs starts a pod of
    // the chart with all of them): not settings, so ignored.
    let kubelet = [
        ("STANDIN_NODE_ADDRESS", address.as_str()),
        ("STANDIN_SERVICE_HOST", "10.96.0.12"),
        ("STANDIN_PORT", "tcp://10.96.0.12:19530"),
        ("STANDIN_PORT_19530_TCP_ADDR", "10.96.0.12"),
        ("STANDIN_ETCD_SERVICE_PORT_CLIENT", "2379"),
    ];
    let node = run_node(&config, &["--role", "tso"], &kubelet)?;
    serves(&address, "tso").await;
    let log = node.log();
    assert!(
        log.contains(
            "config section \"Tso\" differs from role \"tso\" only in case: it does not apply \
             to the role"
        ),
        "{log}"
    );

    info!("--- any other unknown STANDIN_ variable still fails, naming it");
    let refused = output(standin(
        &config,
        &["check-config"],
        &[("STANDIN_SERVICE_HOSTS", "x")],
    ))
    .await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("STANDIN_SERVICE_HOSTS"),
        "{}",
        stderr(&refused)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_writes_and_steering_need_a_caller() -> anyhow::Result<()> {
    let (etcd, scratch) = prepare().await?;
    let tokens = scratch.write("tokens", &format!("ops:{TOKEN}\n"))?;
    let token = scratch.write("token", TOKEN)?;
    let port = free_loopback_port()?;
    let address = format!("127.0.0.1:{port}");
    let listen = format!("0.0.0.0:{port}");
    let node_config = scratch.config(
        "node.yaml",
        &etcd,
        &format!("node:\n  address: {address}\nserver:\n  auth:\n    tokensFile: {tokens}\n"),
    )?;
    let anonymous = scratch.config("anonymous.yaml", &etcd, "")?;
    let with_token = scratch.config(
        "client.yaml",
        &etcd,
        &format!("client:\n  tokenFile: {token}\n"),
    )?;
    let node = run_node(&node_config, &["--listen", &listen], &[])?;
    serves(&address, "tso").await;
    serves(&address, "kv").await;

    info!("--- anonymous writes are refused, even from loopback (a sidecar's calls look local)");
    for args in [&["tso", "--count", "1"][..], &["kv", "put", "k", "v"][..]] {
        let refused = output(standin(&anonymous, args, &[])).await?;
        let text = stderr(&refused);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {text}");
        assert!(text.contains("Unauthenticated"), "{args:?}: {text}");
        assert!(
            text.contains("changes state, and this node listens off loopback"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains("server.auth.anonymousWrites"),
            "{args:?}: {text}"
        );
    }
    let mut coordination = CoordinationClient::connect(format!("http://{address}")).await?;
    let resign = coordination
        .resign(ResignRequest {
            role: "tso".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(resign.code(), tonic::Code::Unauthenticated, "{resign:?}");

    info!("--- with the token they go through");
    for args in [&["tso", "--count", "1"][..], &["kv", "put", "k", "v"][..]] {
        let done = output(standin(&with_token, args, &[])).await?;
        assert!(done.status.success(), "{args:?}: {}", stderr(&done));
    }
    drop(node);

    info!("--- server.auth.anonymousWrites: true opens writes, not steering");
    let opened = [("STANDIN_SERVER_AUTH_ANONYMOUS_WRITES", "true")];
    let _node = run_node(&node_config, &["--listen", &listen], &opened)?;
    serves(&address, "tso").await;
    let done = output(standin(&anonymous, &["tso", "--count", "1"], &[])).await?;
    assert!(done.status.success(), "{}", stderr(&done));
    let mut coordination = CoordinationClient::connect(format!("http://{address}")).await?;
    let resign = coordination
        .resign(ResignRequest {
            role: "tso".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(resign.code(), tonic::Code::Unauthenticated, "{resign:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_quotas_and_the_oracles_lead_refuse_with_resource_exhausted() -> anyhow::Result<()> {
    let (etcd, scratch) = prepare().await?;
    let address = loopback_address()?;
    let config = scratch.config(
        "node.yaml",
        &etcd,
        &format!(
            "node:\n  address: {address}\nkv:\n  maxKeys: 2\n  maxBytes: 1000\n\
             tso:\n  window: 100ms\n  maxAhead: 200ms\n"
        ),
    )?;
    let _node = run_node(&config, &[], &[])?;
    serves(&address, "kv").await;
    serves(&address, "tso").await;

    info!("--- the third key passes kv.maxKeys; rewriting a key still fits");
    for key in ["a", "b"] {
        let done = output(standin(&config, &["kv", "put", key, "1"], &[])).await?;
        assert!(done.status.success(), "{}", stderr(&done));
    }
    let refused = output(standin(&config, &["kv", "put", "c", "1"], &[])).await?;
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(text.contains("ResourceExhausted"), "{text}");
    assert!(text.contains("kv.maxKeys (2)"), "{text}");
    let value = "v".repeat(998);
    let refused = output(standin(&config, &["kv", "put", "a", &value], &[])).await?;
    assert!(
        stderr(&refused).contains("kv.maxBytes (1000)"),
        "{}",
        stderr(&refused)
    );
    let done = output(standin(&config, &["kv", "put", "a", "2"], &[])).await?;
    assert!(done.status.success(), "{}", stderr(&done));

    info!("--- the largest count in a loop stops at tso.maxAhead, not hours ahead");
    // Each call takes a millisecond's worth of timestamps: the callers get
    // ahead of the clock only when together they call faster than once a
    // millisecond, which one caller of a debug build on a busy 2-core
    // machine does not.
    let max = (1 << 18) - 1;
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut oracle = TsoClient::connect(format!("http://{address}")).await?;
        let served = served.clone();
        callers.spawn(async move {
            loop {
                match oracle.allocate(AllocateRequest { count: max }).await {
                    Ok(_) => {
                        let total = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        assert!(total < 100_000, "never refused");
                    }
                    Err(status) => return status,
                }
            }
        });
    }
    let refusal = callers.join_next().await.expect("callers were spawned")?;
    callers.abort_all();
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("past tso.maxAhead (200 ms)"),
        "{refusal:?}"
    );
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    info!(served, "refused after {served} full batches");
    let oracle = TsoClient::connect(format!("http://{address}")).await?;
    // Once the clock has caught up, a batch is served again.
    eventually("a batch after the clock caught up", CALL, || {
        let mut oracle = oracle.clone();
        async move { oracle.allocate(AllocateRequest { count: 1 }).await.ok() }
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_passes_for_standby_and_leader_and_fails_without_a_session() -> anyhow::Result<()> {
    let (etcd, scratch) = prepare().await?;
    let addresses: Vec<String> = (0..2)
        .map(|_| loopback_address())
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for (index, address) in addresses.iter().enumerate() {
        let config = scratch.config(
            &format!("node-{index}.yaml"),
            &etcd,
            &format!("node:\n  address: {address}\nsession:\n  ttl: 2s\n"),
        )?;
        nodes.push((run_node(&config, &["--role", "tso"], &[])?, config));
    }
    let probe = |config: &str, live: bool| {
        let args: &[&str] = if live {
            &["--timeout", "2s", "probe", "--live"]
        } else {
            &["--timeout", "2s", "probe"]
        };
        output(standin(config, args, &[]))
    };

    info!("--- the leader and the standby are both ready");
    eventually("a leader", Duration::from_secs(20), || async {
        let leaders = output(standin(&nodes[0].1, &["status", "--json"], &[]))
            .await
            .ok()?;
        String::from_utf8_lossy(&leaders.stdout)
            .contains("\"serving\"")
            .then_some(())
    })
    .await;
    for (_, config) in &nodes {
        let ready = eventually("probe passes", Duration::from_secs(10), || async {
            let done = probe(config, false).await.ok()?;
            done.status.success().then_some(done)
        })
        .await;
        let text = String::from_utf8_lossy(&ready.stdout);
        assert!(text.starts_with("ok: server "), "{text}");
    }

    info!("--- etcd frozen: past the renew deadline no session is live, the process still is");
    etcd.pause()?;
    for (_, config) in &nodes {
        let failed = eventually("probe fails", Duration::from_secs(15), || async {
            let done = probe(config, false).await.ok()?;
            (!done.status.success()).then_some(done)
        })
        .await;
        assert_eq!(failed.status.code(), Some(1));
        assert!(
            stderr(&failed).contains("holds no live etcd session for: tso"),
            "{}",
            stderr(&failed)
        );
        let live = probe(config, true).await?;
        assert!(live.status.success(), "{}", stderr(&live));
    }
    etcd.resume()?;
    for (_, config) in &nodes {
        eventually("probe passes again", Duration::from_secs(20), || async {
            probe(config, false)
                .await
                .ok()?
                .status
                .success()
                .then_some(())
        })
        .await;
    }

    info!("--- nothing listening: the probe fails, live or not");
    let nobody = scratch.config(
        "nobody.yaml",
        &etcd,
        &format!("node:\n  address: 127.0.0.1:{}\n", free_loopback_port()?),
    )?;
    for live in [false, true] {
        let failed = probe(&nobody, live).await?;
        assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_the_node_joined_and_stopping_on_sigterm() -> anyhow::Result<()> {
    let (etcd, scratch) = prepare().await?;
    let address = loopback_address()?;
    let config = scratch.config(
        "node.yaml",
        &etcd,
        &format!("node:\n  address: {address}\n"),
    )?;
    let socket_path = scratch.0.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let notify = socket_path.display().to_string();
    let mut node = run_node(
        &config,
        &["--role", "tso"],
        &[("NOTIFY_SOCKET", notify.as_str())],
    )?;
    let receive = move || -> anyhow::Result<(String, UnixDatagram)> {
        let mut buffer = [0u8; 512];
        let read = socket.recv(&mut buffer)?;
        Ok((
            String::from_utf8_lossy(&buffer[..read]).into_owned(),
            socket,
        ))
    };
    let (ready, socket) = tokio::task::spawn_blocking(receive).await??;
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains(&format!("serving gRPC on {address}")),
        "{ready:?}"
    );
    // Ready means joined: the gRPC server answers at once.
    let mut client = CoordinationClient::connect(format!("http://{address}")).await?;
    client.status(StatusRequest {}).await?;
    serves(&address, "tso").await;

    node.terminate()?;
    let receive = move || -> anyhow::Result<String> {
        let mut buffer = [0u8; 512];
        let read = socket.recv(&mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer[..read]).into_owned())
    };
    let stopping = tokio::task::spawn_blocking(receive).await??;
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    let status = wait_for("the node to exit", Duration::from_secs(30), || {
        node.try_exit_status()
    })
    .await;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/standin.service"
    ))?;
    assert!(unit.contains("ExecStart=/usr/bin/standin "), "{unit}");
    let dir = tempfile::tempdir()?;
    // verify checks that the binary exists: this build's stands in for /usr/bin's.
    let path = dir.path().join("standin.service");
    let mut file = std::fs::File::create(&path)?;
    file.write_all(unit.replace("/usr/bin/standin", BIN).as_bytes())?;
    drop(file);
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    let text = stderr(&verified);
    assert!(verified.status.success(), "{text}");
    // Unknown keys and bad values are only warnings: there must be none.
    assert!(
        text.trim().is_empty(),
        "systemd-analyze warned about the unit: {text}"
    );
    for required in [
        "Type=notify",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(required), "the unit sets {required}");
    }
    Ok(())
}
