//! The warm standby: a standby's copy of the metadata follows etcd (through a cut link, a compaction, a prefix deletion too large for a default gRPC message), a node campaigns only once its copy is loaded, and a takeover only catches up, yet serves every write acknowledged before it.

mod support;

use std::time::Duration;

use standin::testing::EtcdServer;
use standin::{MetadataCopy, RoleHandle};
use support::faults::*;
use support::{
    Ledger, Stoppable, TestNode, acknowledges_write, config, serving_other_than, shutdown_all,
    start_nodes, wait_for, wait_for_single_leader,
};
use tracing::info;

const RESIGN: Duration = Duration::from_secs(5);

// Each test its own etcd root: the captured logs are the whole binary's,
// and a test looks only for lines naming its own metadata prefix.
const CUT_ROOT: &str = "warm-cut";
const CUT_ROOT_PREFIX: &str = "warm-cut/meta/";
const COMPACTION_ROOT: &str = "warm-compaction";
const COMPACTION_ROOT_PREFIX: &str = "warm-compaction/meta/";
const DELETES_ROOT: &str = "warm-deletes";
const LOADING_ROOT: &str = "warm-loading";
const LARGE_ROOT: &str = "warm-large";
const LARGE_ROOT_PREFIX: &str = "warm-large/meta/";

/// Waits until `role`'s copy on a node holds every change up to `revision`.
async fn copy_reaches(role: &RoleHandle<Ledger>, what: &str, revision: i64) -> MetadataCopy {
    wait_for(what, Duration::from_secs(10), || {
        role.metadata_copy()
            .filter(|copy| copy.revision >= revision)
    })
    .await
}

/// The revision of the last put under `ROLE`'s metadata prefix.
async fn last_put(client: &etcd_client::Client, root: &str) -> anyhow::Result<i64> {
    let prefix = format!("{root}/meta/{ROLE}/");
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(
            etcd_client::SortTarget::Mod,
            etcd_client::SortOrder::Descend,
        )
        .with_limit(1);
    let response = client.kv_client().get(prefix, Some(options)).await?;
    Ok(response.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// Every metadata key of `ROLE` in etcd, the prefix's own key (an earlier
/// version's catch-up marker) left out.
async fn etcd_entries(
    client: &etcd_client::Client,
    root: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let prefix = format!("{root}/meta/{ROLE}/");
    let response = client
        .kv_client()
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(response
        .kvs()
        .iter()
        .filter(|kv| kv.key().len() > prefix.len())
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            (key, kv.value().to_vec())
        })
        .collect())
}

/// Resigns `ROLE` on `leader` and waits up to `deadline` until another node
/// serves it: that node's index.
async fn hand_over(nodes: &[TestNode], leader: usize, deadline: Duration) -> anyhow::Result<usize> {
    nodes[leader].role(ROLE).resign(RESIGN).await?;
    Ok(wait_for("another node to serve", deadline, || {
        serving_other_than(nodes, ROLE, leader)
    })
    .await)
}

async fn write(node: &TestNode, key: &str, value: &str) {
    assert!(
        acknowledges_write(node.role(ROLE), key, value).await,
        "writing {key} on {} was not acknowledged",
        node.address
    );
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_just_before_each_handover_is_in_the_next_leaders_metadata()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    for warm in [true, false] {
        info!(warm, "--- two nodes, reload.warm: {warm}");
        let mut nodes = start_nodes(2, &[ROLE], |index| {
            let mut config = config(&etcd, index, 10);
            config.etcd.root_path = format!("{ROOT}-{warm}");
            config.reload.warm = warm;
            config
        })
        .await?;
        let mut leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
        support::wait_for_candidates(&etcd, &format!("{ROOT}-{warm}"), ROLE, 2).await;
        let mut written = Vec::new();
        for round in 0..12 {
            let key = format!("round/{round:02}");
            write(&nodes[leader], &key, "acknowledged").await;
            written.push(key);
            // No pause: the write was acknowledged, the handover starts now.
            let next = hand_over(&nodes, leader, Duration::from_secs(10)).await?;
            let entries = nodes[next].entries(ROLE).await;
            for key in &written {
                assert!(
                    entries.contains_key(key),
                    "warm={warm} round {round}: the new leader's metadata lacks {key}"
                );
            }
            assert_eq!(entries.len(), written.len(), "warm={warm}: {entries:?}");
            leader = next;
            // The node that resigned rejoins at the back of the line.
            support::wait_for_candidates(&etcd, &format!("{ROOT}-{warm}"), ROLE, 2).await;
        }
        for node in &nodes {
            let copy = node.role(ROLE).metadata_copy();
            assert_eq!(copy.is_some(), warm, "a copy is kept only when warm");
        }
        shutdown_all(&mut nodes).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cut_from_etcd_while_writes_happen_catches_up_before_it_serves()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    support::seed_metadata_under(&etcd, CUT_ROOT, ROLE, 100, b"seed").await?;
    let (proxies, mut nodes) = start_proxied_nodes(&etcd, 2, &[ROLE], |endpoints, index| {
        let mut config = node_config(endpoints, index, 10);
        config.etcd.root_path = CUT_ROOT.into();
        config
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let standby = 1 - leader;
    let now = last_put(&client, CUT_ROOT).await?;
    let copy = copy_reaches(nodes[standby].role(ROLE), "the standby's copy", now).await;
    assert_eq!(copy.keys, 100);
    // Its copy can be in before its lease is: cut it only once it is in line.
    let election = format!("{CUT_ROOT}/election/{ROLE}/");
    support::eventually("the standby in line", Duration::from_secs(5), || async {
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let in_line = client.clone().get(election.as_str(), Some(options)).await;
        in_line
            .is_ok_and(|response| response.count() == 2)
            .then_some(())
    })
    .await;

    info!("--- cut the standby; the leader writes 50 keys and etcd deletes 10");
    proxies[standby].cut();
    for i in 0..50 {
        write(&nodes[leader], &format!("while-cut/{i:02}"), "w").await;
    }
    for i in 0..10 {
        client
            .kv_client()
            .delete(format!("{CUT_ROOT}/meta/{ROLE}/seed/{i:06}"), None)
            .await?;
    }
    let stale = nodes[standby].role(ROLE).metadata_copy().expect("a copy");
    assert!(stale.revision < last_put(&client, CUT_ROOT).await?);

    info!("--- the standby's watch of its elections and metadata breaks");
    wait_for("the watch to break", Duration::from_secs(12), || {
        let broken = logged(&["following warm-cut/election/ failed, resuming from revision"]);
        (!broken.is_empty()).then_some(())
    })
    .await;
    info!("--- heal the link and hand over at once");
    proxies[standby].heal();
    let handed_over = std::time::Instant::now();
    hand_over(&nodes, leader, Duration::from_secs(15)).await?;
    // Not timed: the standby's campaign backs off after the cut as well.
    info!(took = ?handed_over.elapsed(), "--- the standby serves");
    let entries = nodes[standby].entries(ROLE).await;
    assert_eq!(entries, etcd_entries(&client, CUT_ROOT).await?);
    assert_eq!(entries.len(), 140);
    assert!(
        logged(&["reading the metadata again", CUT_ROOT_PREFIX]).is_empty(),
        "the standby read the metadata whole instead of resuming its watch"
    );
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_past_the_standbys_copy_is_read_again_while_standby() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    support::seed_metadata_under(&etcd, COMPACTION_ROOT, ROLE, 20, b"seed").await?;
    let (proxies, mut nodes) = start_proxied_nodes(&etcd, 2, &[ROLE], |endpoints, index| {
        let mut config = node_config(endpoints, index, 10);
        config.etcd.root_path = COMPACTION_ROOT.into();
        config
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(10)).await;
    let standby = 1 - leader;
    let now = last_put(&client, COMPACTION_ROOT).await?;
    copy_reaches(nodes[standby].role(ROLE), "the standby's copy", now).await;

    info!("--- cut the standby, write, and compact etcd past its copy");
    proxies[standby].cut();
    for i in 0..5 {
        write(&nodes[leader], &format!("before-compaction/{i}"), "w").await;
    }
    let now = client.kv_client().get("any", None).await?;
    let compacted = now.header().expect("a header").revision();
    client.kv_client().compact(compacted, None).await?;
    write(&nodes[leader], "after-compaction", "w").await;
    let target = last_put(&client, COMPACTION_ROOT).await?;
    proxies[standby].heal();

    info!("--- the standby reads the metadata again, still standby");
    wait_for(
        "the compaction to be reported",
        Duration::from_secs(10),
        || {
            (!logged(&[
                "compacted its history",
                "reading the metadata again",
                COMPACTION_ROOT_PREFIX,
            ])
            .is_empty())
            .then_some(())
        },
    )
    .await;
    let copy = copy_reaches(nodes[standby].role(ROLE), "a fresh copy", target).await;
    assert_eq!(copy.keys, 26);
    assert!(!nodes[standby].role(ROLE).is_serving());
    assert!(nodes[leader].role(ROLE).is_serving());

    info!("--- it takes over with every key, once it stands in line again");
    // The cut broke its candidacy, and it campaigns again only with a
    // loaded copy.
    support::wait_for_candidates(&etcd, COMPACTION_ROOT, ROLE, 2).await;
    hand_over(&nodes, leader, Duration::from_secs(10)).await?;
    let entries = nodes[standby].entries(ROLE).await;
    assert_eq!(entries, etcd_entries(&client, COMPACTION_ROOT).await?);
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_too_large_for_a_first_page_of_a_thousand_keys_still_load_on_every_node()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    info!("--- seed 200 values of 64 KiB: 13 MB, three times the 4 MiB pageBytes allows");
    let value = vec![b'x'; 64 << 10];
    support::seed_metadata_under(&etcd, LARGE_ROOT, ROLE, 200, &value).await?;
    let mut nodes = start_nodes(2, &[ROLE], |index| {
        let mut config = config(&etcd, index, 10);
        config.etcd.root_path = LARGE_ROOT.into();
        config.reload.page_bytes = 1 << 20;
        config
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(20)).await;
    let standby = 1 - leader;
    let entries = nodes[leader].entries(ROLE).await;
    assert_eq!(entries.len(), 200);
    assert!(entries.values().all(|seeded| seeded.len() == value.len()));
    let copy = wait_for("the standby's copy", Duration::from_secs(20), || {
        nodes[standby]
            .role(ROLE)
            .metadata_copy()
            .filter(|copy| copy.keys == 200)
    })
    .await;
    assert!(copy.revision > 0);
    assert!(
        logged(&["failed", LARGE_ROOT_PREFIX]).is_empty(),
        "a read of the large values failed"
    );

    info!("--- the standby takes over with every value");
    hand_over(&nodes, leader, Duration::from_secs(10)).await?;
    assert_eq!(nodes[standby].entries(ROLE).await, entries);
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reach_the_standby_even_a_100k_key_prefix_deletion_in_one_revision()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    info!("--- seed 100k metadata keys");
    support::seed_metadata_under(&etcd, DELETES_ROOT, ROLE, 100_000, b"v").await?;
    let mut nodes = start_nodes(2, &[ROLE], |index| {
        let mut config = config(&etcd, index, 10);
        config.etcd.root_path = DELETES_ROOT.into();
        config
    })
    .await?;
    let leader = wait_for_single_leader(&nodes, ROLE, Duration::from_secs(20)).await;
    let standby = 1 - leader;
    write(&nodes[leader], "kept", "k").await;
    write(&nodes[leader], "dropped", "d").await;
    let now = last_put(&client, DELETES_ROOT).await?;
    let copy = copy_reaches(nodes[standby].role(ROLE), "the standby's copy", now).await;
    assert_eq!(copy.keys, 100_002);

    info!(
        "--- delete one key, then all 100k seeded keys in one revision (a watch response over 4 MiB)"
    );
    client
        .kv_client()
        .delete(format!("{DELETES_ROOT}/meta/{ROLE}/dropped"), None)
        .await?;
    let deleted = client
        .kv_client()
        .delete(
            format!("{DELETES_ROOT}/meta/{ROLE}/seed/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(deleted.deleted(), 100_000);
    let copy = wait_for(
        "the deletions to reach the standby",
        Duration::from_secs(10),
        || {
            nodes[standby]
                .role(ROLE)
                .metadata_copy()
                .filter(|copy| copy.keys == 1)
        },
    )
    .await;
    assert!(copy.revision >= deleted.header().expect("a header").revision());
    assert!(
        logged(&[&format!("following {DELETES_ROOT}/election/ failed")]).is_empty(),
        "the standby's watch broke"
    );

    info!("--- the standby takes over with the one key left");
    hand_over(&nodes, leader, Duration::from_secs(10)).await?;
    let entries = nodes[standby].entries(ROLE).await;
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["kept"]);
    write(&nodes[standby], "after-takeover", "a").await;
    shutdown_all(&mut nodes).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_still_reading_its_copy_joins_the_election_only_once_it_is_loaded()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let client = etcd.client().await?;
    support::seed_metadata_under(&etcd, LOADING_ROOT, ROLE, 30, b"seed").await?;
    let node_config = |index| {
        let mut config = config(&etcd, index, 10);
        config.etcd.root_path = LOADING_ROOT.into();
        config.reload.page_size = 10;
        config
    };
    let mut first = TestNode::start(node_config(0), &[ROLE], false).await?;
    wait_for("the first node to serve", Duration::from_secs(10), || {
        first.role(ROLE).is_serving().then_some(())
    })
    .await;

    info!("--- a second node whose first read is held after one page");
    let reached = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut node = standin::Node::new(node_config(1));
    let role = node.add_role(ROLE, Ledger { strict: false })?;
    role.hold_reload(reached.clone(), gate.clone());
    node.start().await?;
    reached.acquire().await?.forget();
    wait_for("its lease", Duration::from_secs(5), || role.status().lease).await;
    let election = format!("{LOADING_ROOT}/election/{ROLE}/");
    let candidates = || async {
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let response = client
            .kv_client()
            .get(election.as_str(), Some(options))
            .await;
        response.ok().map(|response| response.count())
    };
    // Watched for a while, on the beat of an interval: an absence has no
    // moment to wait for.
    let watched = std::time::Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    while watched.elapsed() < Duration::from_millis(300) {
        every.tick().await;
        assert_eq!(
            candidates().await,
            Some(1),
            "a node with no copy campaigned"
        );
        assert!(role.metadata_copy().is_none());
    }

    info!("--- the read goes on: the node loads, campaigns, and takes over warm");
    gate.add_permits(1);
    wait_for("its copy", Duration::from_secs(10), || {
        role.metadata_copy().filter(|copy| copy.keys == 30)
    })
    .await;
    let second_candidate = || async { (candidates().await == Some(2)).then_some(()) };
    support::eventually("its candidacy", Duration::from_secs(5), second_candidate).await;
    first.role(ROLE).resign(RESIGN).await?;
    wait_for("the second node to serve", Duration::from_secs(10), || {
        role.is_serving().then_some(())
    })
    .await;
    assert_eq!(
        role.call(support::LedgerRequest::Read, support::CALL)
            .await
            .ok()
            .map(|r| match r {
                support::LedgerResponse::Entries(entries) => entries.len(),
                _ => 0,
            }),
        Some(30)
    );
    node.shutdown().await;
    first.shutdown().await;
    Ok(())
}

/// `node`'s tso status while it is in standby.
async fn standby(node: &ProcNode) -> Option<ProcStatus> {
    node.status()
        .await
        .filter(|status| status.state == "standby")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_status_says_whether_its_standby_copy_is_loaded() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let endpoints = [etcd.endpoint()];
    let leader = ProcNode::spawn(&endpoints, 2, "")?;
    let serving = wait_for_serving_process(std::slice::from_ref(&leader), RESIGN).await;
    info!(
        ?serving,
        "--- the first process serves and has saved its bound"
    );
    let warm = ProcNode::spawn(&endpoints, 2, "")?;
    let cold = ProcNode::spawn(&endpoints, 2, "reload:\n  warm: false\n")?;
    let loaded = support::eventually("the warm standby's copy", RESIGN, || async {
        standby(&warm).await.filter(|s| s.metadata_copy.is_some())
    })
    .await;
    let (revision, keys) = loaded.metadata_copy.expect("filtered on");
    // The saved bound is the tso role's only key.
    assert_eq!(keys, 1, "{loaded:?}");
    assert!(revision > 0, "{loaded:?}");
    let cold = support::eventually("the cold standby", RESIGN, || standby(&cold)).await;
    assert_eq!(
        cold.metadata_copy, None,
        "a node with reload.warm off keeps no copy"
    );
    Ok(())
}

const RELEASED_ROOT: &str = "warm-released";

async fn put(
    role: &standin::RoleHandle<standin::service::kv::Kv>,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let request = standin::service::kv::KvRequest::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    };
    role.try_call(request, Duration::from_secs(5))
        .await
        .map_err(|error| anyhow::anyhow!("put {key}: {error}"))?;
    Ok(())
}

async fn get(
    role: &standin::RoleHandle<standin::service::kv::Kv>,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let request = standin::service::kv::KvRequest::Get {
        key: key.to_owned(),
    };
    let answer = role
        .try_call(request, Duration::from_secs(5))
        .await
        .map_err(|error| anyhow::anyhow!("get {key}: {error}"))?;
    Ok(answer
        .value
        .map(|value| String::from_utf8_lossy(&value).into_owned()))
}

/// The copy of a node that is warm again: loaded, decoded, holding the metadata.
fn warm(copy: Option<MetadataCopy>) -> Option<MetadataCopy> {
    copy.filter(|copy| !copy.decoding && !copy.released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_hands_its_only_copy_to_its_term_and_reads_it_again_once_a_successor_serves()
-> anyhow::Result<()> {
    use standin::service::kv::Kv;
    init_logging();
    let etcd = EtcdServer::start().await?;
    support::seed_metadata_under(&etcd, RELEASED_ROOT, "kv", 300, b"seeded").await?;
    let mut nodes = Vec::new();
    let mut roles = Vec::new();
    for index in 0..2 {
        let mut config = config(&etcd, index, 10);
        config.etcd.root_path = RELEASED_ROOT.to_owned();
        let mut node = standin::Node::new(config);
        roles.push(node.add_role("kv", Kv::default())?);
        node.start().await?;
        nodes.push(node);
    }
    let call = Duration::from_secs(5);
    let first = standin::testing::the_single_serving(&roles, call).await?;
    let second = 1 - first;
    let standby = wait_for("the standby's copy to be decoded", call, || {
        warm(roles[second].metadata_copy())
    })
    .await;
    assert_eq!(standby.keys, 300);

    info!("--- the leader's term took its only copy: released while it serves");
    let leading = roles[first]
        .metadata_copy()
        .expect("a copy is kept when warm");
    assert!(leading.released, "{leading:?}");
    put(&roles[first], "during/first", "1").await?;
    wait_for(
        "the leader's released copy to count its own put",
        call,
        || {
            roles[first]
                .metadata_copy()
                .filter(|copy| copy.keys == 301 && copy.released)
        },
    )
    .await;

    info!("--- handed over: the old leader reads its copy again once the successor serves");
    roles[first].resign(RESIGN).await?;
    wait_for("the second node to serve", call, || {
        roles[second].is_serving().then_some(())
    })
    .await;
    let copy = wait_for("the old leader's copy to be warm again", call, || {
        warm(roles[first].metadata_copy())
    })
    .await;
    assert_eq!(copy.keys, 301, "{copy:?}");

    info!("--- the read copy follows the successor: created, rewritten, deleted keys");
    put(&roles[second], "during/second", "2").await?;
    put(&roles[second], "during/first", "rewritten").await?;
    let client = etcd.client().await?;
    client
        .kv_client()
        .delete(format!("{RELEASED_ROOT}/meta/kv/seed/000000"), None)
        .await?;
    let revision = client
        .kv_client()
        .get("unrelated", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let copy = wait_for("the old leader's copy to follow", call, || {
        warm(roles[first].metadata_copy()).filter(|copy| copy.revision >= revision)
    })
    .await;
    assert_eq!(
        copy.keys, 301,
        "one created, one rewritten, one deleted: {copy:?}"
    );

    info!("--- handed back: the old leader serves what its read copy holds");
    roles[second].resign(RESIGN).await?;
    wait_for("the first node to serve again", call, || {
        roles[first].is_serving().then_some(())
    })
    .await;
    let first_role = &roles[first];
    assert_eq!(
        get(first_role, "during/second").await?.as_deref(),
        Some("2")
    );
    assert_eq!(
        get(first_role, "during/first").await?.as_deref(),
        Some("rewritten")
    );
    assert_eq!(get(first_role, "seed/000000").await?, None);
    assert_eq!(
        get(first_role, "seed/000299").await?.as_deref(),
        Some("seeded")
    );
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

const UNREADABLE_ROOT: &str = "warm-unreadable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_copy_cannot_be_read_says_why_and_still_campaigns_after_the_reload_timeout()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    // One value larger than a response of the second node may hold
    // (4 x reload.pageBytes): its every read of the prefix fails.
    support::seed_metadata_under(&etcd, UNREADABLE_ROOT, ROLE, 1, &vec![b'x'; 300 << 10]).await?;
    let with_root = |node: usize| {
        let mut config = config(&etcd, node, 10);
        config.etcd.root_path = UNREADABLE_ROOT.into();
        config.reload.timeout = Duration::from_secs(2);
        config
    };
    let leader = TestNode::start(with_root(0), &[ROLE], false).await?;
    wait_for("the first node to serve", Duration::from_secs(10), || {
        leader.role(ROLE).is_serving().then_some(())
    })
    .await;

    info!("--- a second node cannot read the metadata: every page is too large for it");
    let mut small_pages = with_root(1);
    small_pages.reload.page_bytes = 64 << 10;
    let standby = TestNode::start(small_pages, &[ROLE], false).await?;
    let why = wait_for(
        "the copy to be reported missing",
        Duration::from_secs(10),
        || standby.role(ROLE).metadata_copy_missing(),
    )
    .await;
    assert!(
        why.contains("too large") || why.contains("message length"),
        "{why}"
    );
    assert!(standby.role(ROLE).metadata_copy().is_none());

    info!("--- after reload.timeout it stands in line all the same");
    support::wait_for_candidates(&etcd, UNREADABLE_ROOT, ROLE, 2).await;
    assert!(standby.role(ROLE).metadata_copy_missing().is_some());
    let mut nodes = vec![leader, standby];
    shutdown_all(&mut nodes).await;
    Ok(())
}
