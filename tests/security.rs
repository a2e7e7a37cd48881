//! TLS and authentication against a real etcd: a node connects with a client certificate or a user and password, refuses plainly otherwise, and a standby whose auth token expired still takes over.

mod support;

use std::time::{Duration, Instant};

use standin::NodeError;
use standin::etcd::EtcdError;
use standin::testing::EtcdServer;
use standin::{Config, Node};
use support::*;
use tracing::info;

const ROLE: &str = "rootcoord";

/// A config that gives up on etcd quickly, for the starts that must fail.
fn impatient(mut config: Config) -> Config {
    config.etcd.connect_attempts = 2;
    config.etcd.retry.initial = Duration::from_millis(50);
    config.etcd.retry.max = Duration::from_millis(100);
    config.etcd.connect_timeout = Duration::from_millis(500);
    config.etcd.request_timeout = Duration::from_secs(1);
    config
}

/// Starts a node running `ROLE` with `config`, expecting the start to fail.
async fn refused_start(config: Config) -> NodeError {
    let mut node = Node::new(config);
    node.add_role(ROLE, Ledger { strict: false }).unwrap();
    match node.start().await {
        Ok(()) => panic!("the node started"),
        Err(error) => error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_node_with_a_client_certificate_serves_and_others_are_refused()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::options().tls().start().await?;

    info!("--- a node with the CA and a client certificate serves the role");
    let mut secure = config(&etcd, 0, 10);
    secure.etcd.tls = etcd.tls_config();
    let mut node = TestNode::start(secure.clone(), &[ROLE], false).await?;
    wait_for("the TLS node to serve", Duration::from_secs(10), || {
        node.role(ROLE).is_serving().then_some(())
    })
    .await;
    let handle = node.role(ROLE).clone();
    assert!(
        acknowledges_write(&handle, "k", "v").await,
        "a fenced write over TLS failed"
    );

    info!("--- a plaintext client is refused, and the error says TLS may be why");
    let error = refused_start(impatient(config(&etcd, 1, 10))).await;
    let text = error.to_string();
    info!("plaintext start refused: {text}");
    assert!(
        matches!(
            error,
            NodeError::EtcdUnavailable(EtcdError::Unreachable { attempts: 2, .. })
        ),
        "{error:?}"
    );
    assert!(text.contains(&etcd.endpoint()), "{text}");
    assert!(text.contains("set etcd.tls"), "{text}");

    info!("--- a TLS client without a client certificate is refused too");
    let mut anonymous = impatient(secure);
    if let Some(tls) = anonymous.etcd.tls.as_mut() {
        tls.cert_file = None;
        tls.key_file = None;
    }
    let error = refused_start(anonymous).await;
    let text = error.to_string();
    info!("start without a client certificate refused: {text}");
    assert!(text.contains("etcd.tls.certFile"), "{text}");
    assert!(
        matches!(
            error,
            NodeError::EtcdUnavailable(EtcdError::Unreachable { .. })
        ),
        "{error:?}"
    );

    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_a_node_with_the_password_serves_and_a_wrong_one_is_refused() -> anyhow::Result<()>
{
    init_logging();
    let etcd = EtcdServer::options().auth("r00t:pass").start().await?;

    info!("--- a node with the user and password serves the role");
    let mut authenticated = config(&etcd, 0, 10);
    authenticated.etcd.auth = etcd.auth_config();
    let mut node = TestNode::start(authenticated.clone(), &[ROLE], false).await?;
    wait_for(
        "the authenticated node to serve",
        Duration::from_secs(10),
        || node.role(ROLE).is_serving().then_some(()),
    )
    .await;

    info!("--- the password may come from a file instead, kept out of the config");
    let secrets = tempfile::tempdir()?;
    let password_file = secrets.path().join("etcd-password");
    let mut from_file = authenticated.clone();
    from_file.node.address = Some("127.0.0.1:20002".into());
    if let Some(auth) = from_file.etcd.auth.as_mut() {
        standin::testing::write_secret(
            &password_file,
            &format!("{}\n", auth.password.take().unwrap()),
        )?;
        auth.password_file = Some(password_file);
    }
    from_file.validate()?;
    let mut file_node = TestNode::start(from_file, &[ROLE], false).await?;
    wait_for(
        "the node with a password file to join as a standby",
        Duration::from_secs(10),
        || (file_node.role(ROLE).status().state == standin::RoleState::Standby).then_some(()),
    )
    .await;
    file_node.shutdown().await;

    info!("--- a wrong password fails the start at once, saying authentication failed");
    let mut wrong = authenticated.clone();
    if let Some(auth) = wrong.etcd.auth.as_mut() {
        auth.password = Some("wrong".into());
    }
    let started = Instant::now();
    let error = refused_start(wrong).await;
    let text = error.to_string();
    info!("wrong password refused: {text}");
    assert!(
        matches!(
            error,
            NodeError::EtcdUnavailable(EtcdError::AuthFailed { .. })
        ),
        "{error:?}"
    );
    assert!(text.contains("authentication failed"), "{text}");
    assert!(text.contains("user \"root\""), "{text}");
    assert!(!text.contains("wrong"), "the password leaked: {text}");
    // Not retried: a refusal does not change with time. The bound is far
    // below the 10 default attempts' backoff (200ms, 400ms, ... 5s).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a refused password was retried for {:?}",
        started.elapsed()
    );

    info!("--- no credentials at all are refused as plainly");
    let error = refused_start(config(&etcd, 1, 10)).await;
    let text = error.to_string();
    assert!(
        matches!(
            error,
            NodeError::EtcdUnavailable(EtcdError::AuthFailed { .. })
        ),
        "{error:?}"
    );
    assert!(text.contains("without credentials"), "{text}");

    node.shutdown().await;
    Ok(())
}

/// etcd's `--auth-token-ttl` here: how long a token lives unused.
const TOKEN_TTL: Duration = Duration::from_secs(2);

/// etcd 3.4 sweeps expired simple tokens once a second.
const TOKEN_SWEEP: Duration = Duration::from_secs(1);

/// A client that logs in once and never renews its token.
async fn client_without_refresh(etcd: &EtcdServer) -> anyhow::Result<etcd_client::Client> {
    let auth = etcd.auth_config().expect("auth is on");
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(5))
        .with_user(auth.user, auth.password.expect("the kit sets the password"));
    Ok(etcd_client::Client::connect([etcd.url()], Some(options)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_auth_token_expired_still_takes_over() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::options()
        .auth("secret")
        .auth_token_ttl(TOKEN_TTL.as_secs())
        .start()
        .await?;
    let mut nodes = start_nodes(2, &[ROLE], |index| {
        let mut config = config(&etcd, index, 10);
        config.etcd.auth = etcd.auth_config();
        config
    })
    .await?;
    let active = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let standby = 1 - active;
    let handle = nodes[standby].role(ROLE).clone();

    info!("--- the standby idles until its auth token has expired");
    // Why elapsed time is the condition: etcd drops a token once no request
    // has carried it for --auth-token-ttl, on a timer inside etcd that no
    // client can see. A standby sends requests only when the election
    // changes (its campaign, its reads of the new leader), and each change
    // it sees updates its status; its lease keepalives and its watches are
    // streams opened long before, which carry no token per message. So the
    // condition is: the standby's status has not changed for longer than the
    // TTL (plus etcd's sweep). A client that logs in when the quiet period
    // starts, and never renews its token, checks that etcd did expire it.
    let mut changes = handle.subscribe();
    changes.borrow_and_update();
    let mut quiet_since = Instant::now();
    let mut canary = client_without_refresh(&etcd).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        if changes.has_changed()? {
            changes.borrow_and_update();
            quiet_since = Instant::now();
            canary = client_without_refresh(&etcd).await?;
        }
        if quiet_since.elapsed() > TOKEN_TTL + TOKEN_SWEEP * 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never stayed quiet for {TOKEN_TTL:?}"
        );
    }
    let expired = canary.kv_client().get("standin-test/", None).await;
    assert!(
        expired
            .as_ref()
            .is_err_and(|error| error.to_string().contains("invalid auth token")),
        "a token idle for {:?} still works, so the test proves nothing: {expired:?}",
        quiet_since.elapsed()
    );
    assert_eq!(serving(&nodes, ROLE), vec![active]);

    info!("--- the active's coordinator crashes: the standby must take over and serve");
    assert!(nodes[active].role(ROLE).crash_coordinator());
    wait_for(
        "the standby with an expired token to serve",
        Duration::from_secs(10),
        || handle.is_serving().then_some(()),
    )
    .await;
    assert!(
        acknowledges_write(&handle, "after-takeover", "v").await,
        "the new active could not write"
    );

    shutdown_all(&mut nodes).await;
    Ok(())
}
