//! standin's own gRPC API secured, against real `standin run` processes, a real etcd and certificates made here: TLS with tokens, mutual TLS with allowed and refused subjects, fault injection refused off loopback, and no secret in any log.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use standin::Config;
use standin::service::NodeConnector;
use standin::service::grpc::proto::coordination_client::CoordinationClient;
use standin::service::grpc::proto::{ResignRequest, StatusRequest};
use standin::testing::{CertFiles, EtcdServer, StandinProcess, TestCa, free_loopback_port};
use support::*;
use tonic::Code;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_standin");
const ROLE: &str = "tso";
const ETCD_PASSWORD: &str = "etcd-pw-9f3a1c";
const TOKEN: &str = "tok-ops-5d2e8b7c";
const WRONG_TOKEN: &str = "tok-guess-000000";

/// The files one test writes: certificates, the tokens file, token files.
struct Files {
    dir: tempfile::TempDir,
    ca: TestCa,
    server: CertFiles,
}

impl Files {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::generate(dir.path(), "standin api CA")?;
        let server = ca.server("standin node")?;
        Ok(Self { dir, ca, server })
    }

    /// Writes a file only its owner reads: some hold secrets, which the
    /// config refuses to read from a file others may read.
    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        standin::testing::write_secret(&path, text)?;
        Ok(path)
    }
}

/// The `etcd` section every process of a test shares: the password in a file.
fn etcd_section(etcd: &EtcdServer, password_file: &Path) -> String {
    format!(
        "etcd:\n  endpoints: [{}]\n  rootPath: standin-api\n  requestTimeout: 1s\n  auth:\n    user: root\n    passwordFile: {}\n",
        etcd.endpoint(),
        password_file.display()
    )
}

/// A node's config: its address, and the `server` section given.
fn node_yaml(etcd_section: &str, address: &str, server: &str) -> String {
    format!("{etcd_section}node:\n  address: {address}\nsession:\n  ttl: 10s\nserver:\n{server}")
}

/// Starts `count` nodes running tso with `server` as their server section.
fn start_nodes(
    etcd_section: &str,
    server: &str,
    count: usize,
) -> anyhow::Result<Vec<(StandinProcess, String)>> {
    (0..count)
        .map(|_| {
            let address = format!("127.0.0.1:{}", free_loopback_port()?);
            let yaml = node_yaml(etcd_section, &address, server);
            let process = StandinProcess::spawn(BIN.as_ref(), &yaml, &["--role", ROLE])?;
            Ok((process, address))
        })
        .collect()
}

/// A client config file (for the CLI and the library's connector).
fn client_file(
    files: &Files,
    name: &str,
    etcd_section: &str,
    client: &str,
) -> anyhow::Result<PathBuf> {
    files.write(name, &format!("{etcd_section}client:\n{client}"))
}

/// Runs the CLI with the client config at `config`.
fn cli(config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "debug")
        .output()?)
}

fn last_lines(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `Coordination` on `address` through the library's connector for the client config at `config`.
async fn coordination(
    config: &Path,
    address: &str,
) -> anyhow::Result<CoordinationClient<standin::service::NodeChannel>> {
    let config = Config::load(config)?;
    let channel = NodeConnector::from_config(&config)?
        .connect(address)
        .await?;
    Ok(CoordinationClient::new(channel))
}

/// Which of `nodes` serves tso, and at what epoch, asked over `config`'s client settings.
async fn serving(
    config: &Path,
    nodes: &[(StandinProcess, String)],
    except: Option<usize>,
) -> (usize, i64) {
    eventually("one node serving tso", Duration::from_secs(20), || async {
        let mut found = Vec::new();
        for (index, (_, address)) in nodes.iter().enumerate() {
            let Ok(mut client) = coordination(config, address).await else {
                continue;
            };
            let Ok(status) = client.status(StatusRequest {}).await else {
                continue;
            };
            for role in status.into_inner().roles {
                if role.role == ROLE && role.state == "serving" && Some(index) != except {
                    found.push((index, role.epoch));
                }
            }
        }
        (found.len() == 1).then(|| found[0])
    })
    .await
}

async fn resign_status(config: &Path, address: &str) -> anyhow::Result<tonic::Status> {
    let mut client = coordination(config, address).await?;
    match client
        .resign(ResignRequest {
            role: ROLE.into(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => anyhow::bail!("the resign was accepted"),
        Err(status) => Ok(status),
    }
}

/// Waits until `node`'s log satisfies `holds`; on the deadline, fails with its tail.
async fn wait_for_log(node: &StandinProcess, what: &str, holds: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if holds(&node.log()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} in the node's log:\n{}",
            node.log_tail(30)
        );
    }
}

/// Whether `attempt` fails (a refused handshake or call) rather than
/// answering, within a bound far above a refusal on loopback.
async fn refused_promptly(attempt: impl Future<Output = anyhow::Result<()>>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .is_ok_and(|answered| answered.is_err())
}

fn assert_no_secret(what: &str, log: &str) {
    for secret in [ETCD_PASSWORD, TOKEN, WRONG_TOKEN] {
        assert!(!log.contains(secret), "{what} shows a secret:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_listed_token_resigns_and_no_token_a_wrong_one_or_plaintext_does_not()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::options().auth(ETCD_PASSWORD).start().await?;
    let files = Files::new()?;
    let password = files.write("etcd-password", &format!("{ETCD_PASSWORD}\n"))?;
    let tokens = files.write("tokens", &format!("# who may steer\nops:{TOKEN}\n"))?;
    let etcd_section = etcd_section(&etcd, &password);
    let server = format!(
        "  tls:\n    certFile: {}\n    keyFile: {}\n  auth:\n    tokensFile: {}\n",
        files.server.cert_file.display(),
        files.server.key_file.display(),
        tokens.display()
    );
    let ca = files.ca.ca_file.display().to_string();
    let anonymous = client_file(
        &files,
        "anonymous.yaml",
        &etcd_section,
        &format!("  tls:\n    caFile: {ca}\n"),
    )?;
    let token_file = files.write("token", &format!("{TOKEN}\n"))?;
    let operator = client_file(
        &files,
        "operator.yaml",
        &etcd_section,
        &format!(
            "  tls:\n    caFile: {ca}\n  tokenFile: {}\n",
            token_file.display()
        ),
    )?;
    let wrong_file = files.write("wrong-token", WRONG_TOKEN)?;
    let guesser = client_file(
        &files,
        "guesser.yaml",
        &etcd_section,
        &format!(
            "  tls:\n    caFile: {ca}\n  tokenFile: {}\n",
            wrong_file.display()
        ),
    )?;
    let nodes = start_nodes(&etcd_section, &server, 2)?;

    info!("--- over TLS, anyone may read: status, and tso through the leader-following client");
    let (leader, epoch) = serving(&anonymous, &nodes, None).await;
    let allocated = cli(&anonymous, &["tso", "--count", "3"])?;
    assert!(allocated.status.success(), "{}", text(&allocated));
    assert!(text(&allocated).contains("count=3"), "{}", text(&allocated));

    info!("--- plaintext is refused by a TLS port");
    let address = &nodes[leader].1;
    let plaintext = async {
        let mut client = CoordinationClient::connect(format!("http://{address}")).await?;
        client.status(StatusRequest {}).await?;
        anyhow::Ok(())
    };
    assert!(
        refused_promptly(plaintext).await,
        "a plaintext client was answered"
    );

    info!("--- no token: Resign is refused as unauthenticated, saying what is missing");
    let refused = resign_status(&anonymous, address).await?;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("server.auth.tokensFile"),
        "{}",
        refused.message()
    );
    let cli_refused = cli(&anonymous, &["resign", ROLE])?;
    assert!(!cli_refused.status.success(), "{}", text(&cli_refused));
    assert!(
        text(&cli_refused).contains("needs an authenticated caller"),
        "{}",
        text(&cli_refused)
    );

    info!("--- a wrong token is refused too, and never echoed");
    let wrong = resign_status(&guesser, address).await?;
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(
        !wrong.message().contains(WRONG_TOKEN),
        "{}",
        wrong.message()
    );
    wait_for_log(&nodes[leader].0, "refusal naming the peer", |log| {
        log.matches("refused a call").count() >= 3
            && log.contains("path=\"/standin.v1.Coordination/Resign\"")
            && log.contains("peer=127.0.0.1:")
    })
    .await;
    assert_eq!(
        serving(&anonymous, &nodes, None).await,
        (leader, epoch),
        "a refused resign moved the role"
    );

    info!("--- the listed token resigns, through the CLI with the same client file");
    let resigned = cli(&operator, &["resign", ROLE])?;
    assert!(resigned.status.success(), "{}", text(&resigned));
    let (successor, next_epoch) = serving(&anonymous, &nodes, Some(leader)).await;
    assert_ne!(successor, leader);
    assert!(next_epoch > epoch);
    wait_for_log(&nodes[leader].0, "resign naming the token", |log| {
        log.contains("resigned on request") && log.contains("caller=token \"ops\"")
    })
    .await;

    info!("--- no password or token in any log or output of the run");
    for (index, (node, _)) in nodes.iter().enumerate() {
        assert_no_secret(&format!("node {index}'s log"), &node.log());
    }
    for output in [&allocated, &cli_refused, &resigned] {
        assert_no_secret("a CLI run", &text(output));
    }
    let checked = cli(&operator, &["check-config"])?;
    assert!(checked.status.success(), "{}", text(&checked));
    let status = cli(&operator, &["status", "--json"])?;
    assert!(status.status.success(), "{}", text(&status));
    for output in [&checked, &status] {
        assert_no_secret("check-config or status", &text(output));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_a_listed_subject_resigns_and_another_certificate_may_only_read()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::options().auth(ETCD_PASSWORD).start().await?;
    let files = Files::new()?;
    let password = files.write("etcd-password", ETCD_PASSWORD)?;
    let etcd_section = etcd_section(&etcd, &password);
    let ca = files.ca.ca_file.display().to_string();
    let server = format!(
        "  tls:\n    certFile: {}\n    keyFile: {}\n    clientCaFile: {ca}\n  auth:\n    allowedSubjects: [operator]\n",
        files.server.cert_file.display(),
        files.server.key_file.display(),
    );
    let with_cert = |name: &str, cert: &CertFiles| {
        client_file(
            &files,
            &format!("{name}.yaml"),
            &etcd_section,
            &format!(
                "  tls:\n    caFile: {ca}\n    certFile: {}\n    keyFile: {}\n",
                cert.cert_file.display(),
                cert.key_file.display()
            ),
        )
    };
    let operator = with_cert("operator", &files.ca.client("operator")?)?;
    let intruder = with_cert("intruder", &files.ca.client("intruder")?)?;
    let stranger_ca = TestCa::generate(files.dir.path(), "another CA")?;
    let stranger = with_cert("stranger", &stranger_ca.client("operator")?)?;
    let no_cert = client_file(
        &files,
        "nocert.yaml",
        &etcd_section,
        &format!("  tls:\n    caFile: {ca}\n"),
    )?;
    let nodes = start_nodes(&etcd_section, &server, 2)?;

    info!("--- a certificate the CA signed may read, whatever its subject");
    let (leader, epoch) = serving(&intruder, &nodes, None).await;
    let address = &nodes[leader].1;

    info!("--- an unlisted subject is refused Resign, and told which subject");
    let denied = resign_status(&intruder, address).await?;
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("CN=intruder"),
        "{}",
        denied.message()
    );
    assert!(
        denied.message().contains("allowedSubjects"),
        "{}",
        denied.message()
    );

    info!("--- no certificate, or one of another CA, does not pass the handshake");
    for config in [&no_cert, &stranger] {
        let attempt = async {
            let mut client = coordination(config, address).await?;
            client.status(StatusRequest {}).await?;
            anyhow::Ok(())
        };
        assert!(
            refused_promptly(attempt).await,
            "{} was answered",
            config.display()
        );
    }
    assert_eq!(serving(&intruder, &nodes, None).await, (leader, epoch));

    info!("--- the listed subject resigns through the CLI");
    let resigned = cli(&operator, &["resign", ROLE])?;
    assert!(
        resigned.status.success(),
        "{}",
        last_lines(&text(&resigned))
    );
    let (successor, next_epoch) = serving(&operator, &nodes, Some(leader)).await;
    assert!(successor != leader && next_epoch > epoch);
    wait_for_log(&nodes[leader].0, "resign naming the subject", |log| {
        log.contains("resigned on request") && log.contains("CN=operator")
    })
    .await;
    for (node, _) in &nodes {
        assert_no_secret("a node's log", &node.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_off_loopback_without_auth_refuses_to_start() -> anyhow::Result<()> {
    init_logging();
    let files = Files::new()?;
    // Refused before anything listens or reaches etcd, so nothing leaves loopback.
    let config = files.write(
        "node.yaml",
        "etcd:\n  endpoints: [127.0.0.1:1]\n  connectAttempts: 1\n",
    )?;
    let port = free_loopback_port()?.to_string();
    let refused = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--advertise",
            &format!("127.0.0.1:{port}"),
            "--fault-injection",
        ])
        .output()?;
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("--fault-injection"), "{said}");
    assert!(said.contains("server.auth.tokensFile"), "{said}");
    assert!(said.contains("allowedSubjects"), "{said}");

    info!("--- on loopback, with Faults open to loopback callers only, it may start");
    let tokens = files.write("tokens", &format!("ops:{TOKEN}\n"))?;
    let etcd = EtcdServer::start().await?;
    let address = format!("127.0.0.1:{}", free_loopback_port()?);
    let yaml = format!(
        "etcd:\n  endpoints: [{}]\nnode:\n  address: {address}\nserver:\n  auth:\n    tokensFile: {}\n",
        etcd.endpoint(),
        tokens.display()
    );
    let node = StandinProcess::spawn(BIN.as_ref(), &yaml, &["--role", ROLE, "--fault-injection"])?;
    let plain = files.write(
        "plain.yaml",
        &format!("etcd:\n  endpoints: [{}]\n", etcd.endpoint()),
    )?;
    let injected = eventually("an answer to Inject", Duration::from_secs(20), || async {
        let channel = NodeConnector::from_config(&Config::load(&plain).ok()?)
            .ok()?
            .connect(&address)
            .await
            .ok()?;
        let mut faults = standin::service::grpc::proto::faults_client::FaultsClient::new(channel);
        let request = standin::service::grpc::proto::InjectRequest {
            role: ROLE.into(),
            fault: "crash-coordinator".into(),
        };
        faults.inject(request).await.err()
    })
    .await;
    assert_eq!(
        injected.code(),
        Code::Unauthenticated,
        "{injected:?}; log:\n{}",
        node.log_tail(20)
    );
    Ok(())
}
