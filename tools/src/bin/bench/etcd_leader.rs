//! `etcd-leader-kill`: three `standin run --role tso` nodes on a 3-member etcd, a client allocating in a loop, and kill -9 of etcd's raft leader; the client's longest gap beside etcd's own time to elect a new leader, per round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use standin::service::TsoClient;
use standin::testing::{EtcdCluster, StandinProcess, free_loopback_port};

use super::Summary;
use super::request_path::{GapWatch, client_config};

/// Nodes of the cluster.
const NODES: usize = 3;
/// Members of the etcd cluster.
const MEMBERS: usize = 3;
/// How long each round watches the client after the kill: longer than the
/// oracle's window (3 s) and `etcd.requestTimeout` (3 s), so a save that
/// hangs on the dead leader, or a window that runs out while etcd elects,
/// shows in the gap.
const WATCHED: Duration = Duration::from_secs(5);
/// How long etcd may take to elect a leader, or to be whole again.
const ETCD_WITHIN: Duration = Duration::from_secs(30);

/// Runs `rounds` rounds and prints one line per round and the summary:
/// `bench: scenario=etcd-leader-kill n= p50_ms= p99_ms= max_ms=
/// etcd_election_p50_ms= etcd_election_p99_ms= kept_term= violations=`.
/// The nodes run the defaults (TTL 10 s, `etcd.requestTimeout` 3 s).
pub async fn etcd_leader_kill(binary: &std::path::Path, rounds: usize) -> anyhow::Result<()> {
    println!(
        "bench: etcd-leader-kill, {rounds} rounds: kill -9 of the etcd leader of {MEMBERS} members under a client allocating in a loop"
    );
    let mut etcd = EtcdCluster::start(MEMBERS).await.context("starting etcd")?;
    let root = "bench-etcd-leader";
    let endpoints = etcd.endpoints();
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let address = format!("127.0.0.1:{}", free_loopback_port()?);
        let yaml = format!(
            "etcd:\n  endpoints: [{}]\n  rootPath: {root}\n  connectAttempts: 0\nnode:\n  address: {address}\n",
            endpoints.join(", ")
        );
        let args = ["--role", "tso", "--listen", &address];
        nodes.push(StandinProcess::spawn(binary, &yaml, &args)?);
    }
    let config = client_config(&endpoints, root);
    let watch = GapWatch::start(Arc::new(TsoClient::connect(&config).await?), 1);
    watch.answered_more(0).await?;
    let mut gaps = Vec::new();
    let mut elections = Vec::new();
    let mut kept = 0;
    for round in 1..=rounds {
        watch.answered_more(watch.answers()).await?;
        let epoch = watch.epoch();
        let leader = etcd.wait_until_whole(ETCD_WITHIN).await?;
        watch.take_longest();
        let killed = Instant::now();
        etcd.kill(leader)?;
        let elected = standin::testing::wait_until("a new etcd leader", ETCD_WITHIN, || async {
            etcd.leader().await.ok().map(|_| killed.elapsed())
        })
        .await?;
        tokio::time::sleep_until((killed + WATCHED).into()).await;
        watch.answered_more(watch.answers()).await?;
        let gap = watch.take_longest();
        let same_term = watch.epoch() == epoch;
        kept += usize::from(same_term);
        println!(
            "bench: etcd-leader-kill round {round}: member {leader} killed, etcd elected another in {} ms, longest client gap {} ms, {}",
            elected.as_millis(),
            gap.as_millis(),
            if same_term {
                "the active served on in its term".to_owned()
            } else {
                format!("the term changed (epoch {epoch} to {})", watch.epoch())
            }
        );
        gaps.push(gap);
        elections.push(elected);
        etcd.restart(leader)
            .await
            .with_context(|| format!("restarting etcd member {leader}"))?;
    }
    let violations = watch.stop().await?;
    let election = Summary::of(&elections);
    println!(
        "bench: scenario=etcd-leader-kill {} etcd_election_p50_ms={:.1} etcd_election_p99_ms={:.1} kept_term={kept}/{rounds} violations={violations}",
        Summary::of(&gaps),
        election.p50_ms,
        election.p99_ms
    );
    for node in &mut nodes {
        node.terminate()?;
    }
    Ok(())
}
