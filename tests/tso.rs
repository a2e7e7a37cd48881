//! Behaviour of the timestamp oracle against a real etcd: timestamps keep increasing across crashes, handovers, full restarts, a clock far behind the saved bound, a clock stepped far ahead, and the end of what a timestamp holds; the bound is saved ahead, so a frozen etcd does not stop it at once.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use standin::Coordinator;
use standin::config::TsoConfig;
use standin::service::tso::{MAX_PHYSICAL, SavedBound, Tso, TsoBatch, TsoError, TsoRequest, split};
use standin::testing::EtcdServer;
use standin::{Node, RoleHandle};
use support::*;
use tracing::info;

const ROLE: &str = "tso";

/// Where `support::config`'s root path puts the oracle's saved bound.
const UPPER_BOUND: &str = "standin-test/meta/tso/upper_bound";

/// A started node running the `tso` role.
struct TsoNode {
    node: Option<Node>,
    handle: RoleHandle<Tso>,
}

impl TsoNode {
    async fn start(etcd: &EtcdServer, index: usize, tso: Tso) -> anyhow::Result<Self> {
        let mut node = Node::new(config(etcd, index, 10));
        let handle = node.add_role(ROLE, tso)?;
        node.start().await?;
        Ok(Self {
            node: Some(node),
            handle,
        })
    }
}

impl Stoppable for TsoNode {
    fn running(&mut self) -> &mut Option<Node> {
        &mut self.node
    }
}

/// The saved upper bound in etcd, in physical milliseconds.
async fn saved_upper_bound(etcd: &EtcdServer) -> anyhow::Result<u64> {
    let found = etcd.client().await?.get(UPPER_BOUND, None).await?;
    let kv = found
        .kvs()
        .first()
        .ok_or_else(|| anyhow::anyhow!("no saved upper bound"))?;
    Ok(std::str::from_utf8(kv.value())?.parse()?)
}

/// Allocates `count` from `handle`, or `None` if it does not serve (yet).
async fn allocate(handle: &RoleHandle<Tso>, count: u32) -> Option<TsoBatch> {
    match handle.call(TsoRequest::Allocate { count }, CALL).await {
        Ok(Ok(batch)) => Some(batch),
        Ok(Err(error)) => {
            info!("allocation refused: {error}");
            None
        }
        Err(_) => None,
    }
}

/// Allocates from whichever node serves, over and over, until stopped;
/// every batch handed out is recorded in order.
struct Allocator {
    batches: Arc<Mutex<Vec<TsoBatch>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Allocator {
    fn start(handles: Vec<RoleHandle<Tso>>) -> Self {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (batches, stop) = (batches.clone(), stop.clone());
            async move {
                let mut count = 1;
                while !stop.load(Ordering::SeqCst) {
                    // Between leaders every call fails; back off a little instead of spinning.
                    let Some(batch) = Self::from_any(&handles, count).await else {
                        tokio::time::sleep_until(
                            tokio::time::Instant::now() + Duration::from_millis(1),
                        )
                        .await;
                        continue;
                    };
                    batches.lock().unwrap().push(batch);
                    count = count % 100 + 1;
                }
            }
        });
        Self {
            batches,
            stop,
            task,
        }
    }

    async fn from_any(handles: &[RoleHandle<Tso>], count: u32) -> Option<TsoBatch> {
        let serving = handles.iter().find(|handle| handle.is_serving())?;
        allocate(serving, count).await
    }

    fn latest(&self) -> Option<(usize, TsoBatch)> {
        let batches = self.batches.lock().unwrap();
        batches.last().map(|batch| (batches.len(), *batch))
    }

    /// Waits until a batch from an epoch after `epoch` has been handed out, and `more` batches after it.
    async fn wait_past(&self, epoch: i64, more: usize) -> i64 {
        let (seen, next) = wait_for(
            &format!("a batch from an epoch after {epoch}"),
            Duration::from_secs(15),
            || {
                self.latest()
                    .filter(|(_, batch)| batch.epoch > epoch)
                    .map(|(len, batch)| (len, batch.epoch))
            },
        )
        .await;
        wait_for(
            &format!("{more} more batches"),
            Duration::from_secs(10),
            || self.latest().filter(|(len, _)| *len >= seen + more),
        )
        .await;
        next
    }

    async fn stop(self) -> Vec<TsoBatch> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the allocator did not panic");
        Arc::try_unwrap(self.batches)
            .expect("the allocator is done")
            .into_inner()
            .unwrap()
    }
}

/// Every batch starts above the previous one's last timestamp, and epochs never go back.
fn assert_strictly_increasing(batches: &[TsoBatch]) {
    for pair in batches.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert!(
            after.first > before.last(),
            "batch {after:?} does not start above {before:?}"
        );
        assert!(
            after.epoch >= before.epoch,
            "epoch went back: {after:?} after {before:?}"
        );
        let (physical, logical) = split(after.first);
        let (end_physical, _) = split(after.last());
        assert_eq!(
            physical, end_physical,
            "batch {after:?} leaves its millisecond (logical {logical})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_increase_across_crashes_a_handover_and_a_full_restart() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut nodes = Vec::new();
    for index in 0..3 {
        nodes.push(TsoNode::start(&etcd, index, Tso::new(TsoConfig::default())).await?);
    }
    let allocator = Allocator::start(nodes.iter().map(|n| n.handle.clone()).collect());

    info!("--- a leader serves timestamps");
    let mut epoch = allocator.wait_past(0, 50).await;

    for round in 1..=3 {
        info!(round, epoch, "--- crash the active coordinator");
        let active = nodes
            .iter()
            .find(|n| n.handle.status().epoch.is_some_and(|e| e.revision == epoch))
            .expect("the epoch's leader is a node");
        assert!(active.handle.crash_coordinator());
        epoch = allocator.wait_past(epoch, 50).await;
    }

    info!(epoch, "--- shut the active node down gracefully");
    let active = nodes
        .iter_mut()
        .find(|n| n.handle.status().epoch.is_some_and(|e| e.revision == epoch))
        .expect("the epoch's leader is a node");
    active.shutdown().await;
    allocator.wait_past(epoch, 50).await;

    info!("--- every batch handed out is above the one before");
    let batches = allocator.stop().await;
    assert_strictly_increasing(&batches);
    let epochs: std::collections::BTreeSet<_> = batches.iter().map(|b| b.epoch).collect();
    assert!(epochs.len() >= 5, "only epochs {epochs:?}");
    info!(batches = batches.len(), ?epochs, "--- checked");

    info!("--- stop every node; the saved bound is above every timestamp handed out");
    shutdown_all(&mut nodes).await;
    let saved = saved_upper_bound(&etcd).await?;
    let last = *batches.last().expect("batches were handed out");
    assert!(split(last.last()).0 < saved, "{last:?} beyond {saved}");

    info!(
        saved,
        "--- a fresh node on the same etcd starts above the saved bound"
    );
    let mut fresh = TsoNode::start(&etcd, 3, Tso::new(TsoConfig::default())).await?;
    let batch = eventually("the fresh node to serve", Duration::from_secs(10), || {
        allocate(&fresh.handle, 1)
    })
    .await;
    assert!(split(batch.first).0 > saved, "{batch:?} not above {saved}");
    assert!(batch.first > last.last());
    assert!(batch.epoch > last.epoch);

    fresh.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_far_behind_the_saved_bound_still_starts_above_it_and_extends_it()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    const SAVED: u64 = 5_000_000_000;
    const STUCK_AT: u64 = 1_000;
    etcd.client()
        .await?
        .put(UPPER_BOUND, SAVED.to_string(), None)
        .await?;

    info!("--- a node whose clock is stuck long before the saved bound takes the role");
    let window = Duration::from_millis(100);
    let config = TsoConfig {
        window,
        // The pushes below run far ahead of the stuck clock; tso.maxAhead
        // would refuse them (as it should a real stuck clock), and this
        // test is about where the bound is saved.
        max_ahead: Duration::from_secs(u64::from(u32::MAX)),
        ..TsoConfig::default()
    };
    let max = config.max_count;
    let mut node = TsoNode::start(&etcd, 0, Tso::with_clock(config, Arc::new(|| STUCK_AT))).await?;
    let first = eventually("the node to serve", Duration::from_secs(10), || {
        allocate(&node.handle, 1)
    })
    .await;
    assert_eq!(split(first.first), (SAVED + 1, 0));
    // Saved just above its base at activation, not a window further: the
    // clock is far behind, and a window on top of the bound at every
    // takeover would carry the oracle ever further ahead. The first batch
    // then starts a save ahead, a window past the batch (not past the
    // bound), which may have landed already.
    let saved = saved_upper_bound(&etcd).await?;
    assert!(
        saved == SAVED + 2 || saved == SAVED + 1 + 100,
        "saved bound {saved}, base {}",
        SAVED + 1
    );

    info!("--- full batches, one millisecond each, run past the bound: it is extended first");
    let mut batches = vec![first];
    for _ in 0..250 {
        let batch = allocate(&node.handle, max)
            .await
            .expect("the leader allocates");
        batches.push(batch);
    }
    assert_strictly_increasing(&batches);
    let last = split(batches.last().unwrap().last()).0;
    assert!(last > SAVED + 2, "never went past the first bound");
    let saved = saved_upper_bound(&etcd).await?;
    assert!(last < saved, "handed out {last}ms, saved bound {saved}ms");
    // Extended from the batch's physical, not from the stuck clock.
    assert!(
        saved <= last + 100,
        "saved bound {saved}ms far beyond {last}ms"
    );

    info!("--- a count outside 1..=maxCount is refused");
    for count in [0, max + 1] {
        let answer = node
            .handle
            .call(TsoRequest::Allocate { count }, CALL)
            .await?;
        assert!(
            matches!(
                answer,
                Err(standin::service::tso::TsoError::BadCount { .. })
            ),
            "{answer:?}"
        );
    }

    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_lands_late_is_never_overwritten_by_a_smaller_bound() -> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_700_000_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let config = TsoConfig {
        window: Duration::from_secs(3),
        ..TsoConfig::default()
    };
    let mut node = TsoNode::start(&etcd, 0, Tso::with_clock(config, clock)).await?;
    standin::testing::the_single_serving(std::slice::from_ref(&node.handle), CALL).await?;
    let first = allocate(&node.handle, 1).await.expect("the oracle serves");
    let saved = saved_upper_bound(&etcd).await?;

    info!("--- a save of this term whose client gave up lands late, with a larger bound");
    let late = saved + 60_000;
    let store = node
        .handle
        .fenced_store()
        .expect("a serving role has a store");
    store.put("upper_bound", late.to_string()).await?;

    info!("--- the clock reaches the bound: the next save wants a smaller bound than the late one");
    now.store(saved, Ordering::SeqCst);
    let batch = allocate(&node.handle, 1)
        .await
        .expect("the oracle serves across the save");
    let after = saved_upper_bound(&etcd).await?;
    assert!(
        after >= late,
        "the saved bound went backwards: {after} after the late save of {late}"
    );
    assert!(batch.first > first.first);
    assert!(
        split(batch.first).0 < after,
        "handed out at or past the saved bound"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_bound_is_served_from_the_save_made_ahead_while_etcd_is_frozen()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (now, clock) = settable_clock();
    let config = TsoConfig {
        window: Duration::from_secs(3),
        ..TsoConfig::default()
    };
    let mut node = TsoNode::start(&etcd, 0, Tso::with_clock(config, clock)).await?;
    standin::testing::the_single_serving(std::slice::from_ref(&node.handle), CALL).await?;
    allocate(&node.handle, 1).await.expect("the oracle serves");
    let first_bound = saved_upper_bound(&etcd).await?;

    info!("--- two thirds of the window used: the next bound is saved ahead, in the background");
    now.store(first_bound - 900, Ordering::SeqCst);
    allocate(&node.handle, 1).await.expect("the oracle serves");
    let ahead = first_bound - 900 + 3000;
    eventually("the bound saved ahead", CALL, || async {
        saved_upper_bound(&etcd)
            .await
            .ok()
            .filter(|&bound| bound >= ahead)
    })
    .await;

    info!("--- etcd frozen, the clock past the first bound: served below the bound saved ahead");
    etcd.pause()?;
    now.store(first_bound + 100, Ordering::SeqCst);
    let served = tokio::time::timeout(
        Duration::from_secs(1),
        node.handle
            .call(TsoRequest::Allocate { count: 1 }, Duration::from_secs(1)),
    )
    .await;
    etcd.resume()?;
    let batch = served
        .map_err(|_| anyhow::anyhow!("the allocation waited for a frozen etcd"))?
        .map_err(|error| anyhow::anyhow!("the call failed: {error}"))?
        .map_err(|error| anyhow::anyhow!("the oracle refused: {error}"))?;
    let (physical, _) = split(batch.first);
    assert!(
        physical >= first_bound && physical < ahead,
        "physical {physical} ms outside [{first_bound}, {ahead})"
    );
    node.shutdown().await;
    Ok(())
}

/// The wall clock in milliseconds, as the oracle reads it by default.
fn wall_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit")
}

/// A clock a test sets, starting at the wall clock.
fn settable_clock() -> (
    Arc<std::sync::atomic::AtomicU64>,
    Arc<dyn Fn() -> u64 + Send + Sync>,
) {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(wall_ms()));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    (now, clock)
}

const DAY_MS: u64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_that_finds_a_larger_bound_than_it_decoded_starts_above_it()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let mut node = TsoNode::start(&etcd, 0, Tso::new(TsoConfig::default())).await?;
    standin::testing::the_single_serving(std::slice::from_ref(&node.handle), CALL).await?;
    let decoded = saved_upper_bound(&etcd).await?;

    info!("--- a late save of the term lands a larger bound than the one decoded");
    let late = decoded + 60_000;
    let store = node
        .handle
        .fenced_store()
        .expect("a serving role has a store");
    store.put("upper_bound", late.to_string()).await?;

    info!("--- an activation from the decoded bound reads etcd's back and starts above it");
    let epoch = node.handle.serving().epoch().expect("the node serves");
    let tso = Tso::new(TsoConfig::default());
    let stale = SavedBound {
        bound: decoded,
        seen: None,
    };
    let mut serving = tso
        .activate(epoch, stale, store)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let batch = tso
        .handle(&mut serving, TsoRequest::Allocate { count: 1 })
        .await?;
    let (physical, _) = split(batch.first);
    assert!(
        physical > late,
        "handed out physical {physical} ms at or below the bound {late} ms etcd held"
    );
    assert!(physical < saved_upper_bound(&etcd).await?);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_a_day_ahead_while_serving_is_held_back_to_max_clock_step()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let (now, clock) = settable_clock();
    let config = TsoConfig::default();
    let (step, window) = (config.max_clock_step, config.window);
    let started = (now.load(Ordering::SeqCst), std::time::Instant::now());
    let mut node = TsoNode::start(&etcd, 0, Tso::with_clock(config, clock)).await?;
    standin::testing::the_single_serving(std::slice::from_ref(&node.handle), CALL).await?;
    let first = allocate(&node.handle, 1).await.expect("the oracle serves");

    info!("--- the clock steps a day forward");
    now.fetch_add(DAY_MS, Ordering::SeqCst);
    let mut batches = vec![first];
    for _ in 0..20 {
        batches.push(
            allocate(&node.handle, 1)
                .await
                .expect("the oracle serves on"),
        );
    }
    assert_strictly_increasing(&batches);
    // Real time passed since before the activation, plus the step allowed.
    let furthest = started.0 + millis(started.1.elapsed() + step);
    let (physical, _) = split(batches.last().unwrap().first);
    assert!(
        physical <= furthest,
        "followed the stepped clock to {physical} ms, past {furthest} ms"
    );
    let saved = saved_upper_bound(&etcd).await?;
    assert!(
        saved <= furthest + millis(window),
        "saved the stepped clock: bound {saved} ms, at most {} ms expected",
        furthest + millis(window)
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_clock_is_a_day_ahead_takes_over_near_its_predecessors_bound()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let config = TsoConfig {
        // Saves often, so the standby soon sees one arrive.
        window: Duration::from_millis(100),
        ..TsoConfig::default()
    };
    let step = config.max_clock_step;
    let mut leader =
        TsoNode::start(&etcd, 0, Tso::with_clock(config.clone(), Arc::new(wall_ms))).await?;
    standin::testing::the_single_serving(std::slice::from_ref(&leader.handle), CALL).await?;

    info!("--- a standby whose clock runs a day ahead joins, and sees the leader save");
    let ahead = Arc::new(|| wall_ms() + DAY_MS);
    let mut standby = TsoNode::start(&etcd, 1, Tso::with_clock(config, ahead)).await?;
    let loaded = wait_for("the standby's warm copy", Duration::from_secs(10), || {
        standby.handle.metadata_copy().map(|copy| copy.revision)
    })
    .await;
    eventually(
        "the standby to see a save arrive",
        Duration::from_secs(10),
        || async {
            allocate(&leader.handle, 1)
                .await
                .expect("the leader serves");
            standby
                .handle
                .metadata_copy()
                .filter(|copy| copy.revision > loaded)
        },
    )
    .await;

    info!("--- the leader resigns: the standby anchors on the save it saw, not on its clock");
    let before = leader
        .handle
        .serving()
        .epoch()
        .expect("the leader serves")
        .revision;
    leader.handle.resign(CALL).await?;
    let batch = eventually("the standby to serve", Duration::from_secs(10), || async {
        allocate(&standby.handle, 1)
            .await
            .filter(|batch| batch.epoch > before)
    })
    .await;
    let (physical, _) = split(batch.first);
    let furthest = wall_ms() + millis(step) + 1_000;
    assert!(
        physical <= furthest,
        "took over at {physical} ms, its own clock's, past {furthest} ms"
    );
    let saved = saved_upper_bound(&etcd).await?;
    assert!(
        saved < wall_ms() + DAY_MS / 2,
        "saved its own clock: {saved} ms"
    );
    standby.shutdown().await;
    leader.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_physical_millisecond_a_timestamp_holds_is_refused_not_wrapped()
-> anyhow::Result<()> {
    init_logging();
    let etcd = EtcdServer::start().await?;
    let config = TsoConfig::default();
    let max = config.max_count;
    let mut node = TsoNode::start(
        &etcd,
        0,
        Tso::with_clock(config, Arc::new(|| MAX_PHYSICAL - 3)),
    )
    .await?;
    standin::testing::the_single_serving(std::slice::from_ref(&node.handle), CALL).await?;
    assert_eq!(saved_upper_bound(&etcd).await?, MAX_PHYSICAL);

    info!("--- full batches, one millisecond each, up to the last");
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(
            allocate(&node.handle, max)
                .await
                .expect("the oracle serves"),
        );
    }
    assert_strictly_increasing(&batches);
    assert_eq!(split(batches[2].first), (MAX_PHYSICAL - 1, 0));
    let answer = node
        .handle
        .call(TsoRequest::Allocate { count: max }, CALL)
        .await?;
    assert!(
        matches!(answer, Err(TsoError::Exhausted { physical }) if physical == MAX_PHYSICAL),
        "{answer:?}"
    );
    node.shutdown().await;
    Ok(())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("milliseconds fit")
}
