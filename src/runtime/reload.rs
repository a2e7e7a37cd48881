//! The reload actor: keeps a copy of a role's metadata warm while standby (a paged read, then a watch) and, on a win, brings it up to date and hands it to the activation within a time bound.
//!
//! The copy follows the metadata on the node's one watch of its elections
//! (`etcd::fanout`), which hands a response's metadata changes on before
//! any election settles on it. A win is decided on that watch, and its
//! catch-up request reaches this actor's mailbox after every change handed
//! on before the win: once the messages before it are handled, the copy
//! holds every write made before the win, with no write or read to find
//! that out (earlier versions wrote a marker and waited for the watch to
//! bring it back: tens of milliseconds under a takeover wave; etcd's
//! progress notifications cannot stand in before etcd 3.4.25 and 3.5.8,
//! etcd issue 15220, and Debian's etcd is 3.4.23). While the copy is read
//! (at start, or again after the watch missed changes) the catch-up waits
//! for that read. With `reload.warm: false` the metadata is read whole at
//! each win.

mod copy;
mod follow;
pub(crate) use follow::WATCH_MESSAGE_LIMIT;
pub(crate) mod read;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::backoff::Backoff;
use crate::config::ReloadConfig;
use crate::coordinator::{BoxError, Coordinator, Snapshot};
use crate::etcd::Subscription;
use crate::runtime::context::{NodeContext, RoleShared};
use crate::runtime::faults::Faults;
use crate::runtime::slot::Slot;
use crate::status::MetadataCopy;
use crate::task::{OwnedTask, drop_elsewhere, return_freed_memory};
use crate::telemetry;
use copy::{ApplyOutcome, WarmCopy};
use follow::{Change, Followed};
use read::read_snapshot;

/// Failures of a catch-up; each makes the node resign.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// Reading a page from etcd failed.
    #[error("reading metadata under {prefix} failed: {source}")]
    ReadFailed {
        /// The metadata prefix.
        prefix: String,
        /// The etcd error.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd compacted the revision of every one of `reads` reads in a row
    /// before its last page: reading the prefix takes longer than etcd
    /// keeps a revision.
    #[error(
        "etcd compacted the revision of {reads} reads in a row of the metadata under {prefix} \
         before each finished: reading it takes longer than etcd keeps revisions (raise etcd's \
         --auto-compaction-retention, or reload.pageBytes for fewer pages)"
    )]
    Compacted {
        /// The metadata prefix.
        prefix: String,
        /// Reads started.
        reads: u32,
    },
    /// The catch-up did not finish within `reload.timeout`.
    #[error("bringing the metadata under {prefix} up to date took longer than {timeout:?}")]
    TimedOut {
        /// The metadata prefix.
        prefix: String,
        /// `reload.timeout`.
        timeout: Duration,
    },
    /// etcd answered at a revision older than the won one (a stale member).
    #[error("etcd answered at revision {got}, older than the won revision {wanted}")]
    StaleRead {
        /// The revision of the answer.
        got: i64,
        /// The epoch revision.
        wanted: i64,
    },
    /// The coordinator could not decode the metadata.
    #[error("metadata under {prefix} cannot be decoded: {reason}")]
    DecodeFailed {
        /// The metadata prefix.
        prefix: String,
        /// The coordinator's error.
        reason: String,
    },
}

impl ReloadError {
    /// The failure's class, as metrics label it.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ReloadError::ReadFailed {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            } => match status.code() {
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => "denied",
                tonic::Code::Unavailable => "unavailable",
                tonic::Code::DeadlineExceeded => "timed_out",
                _ => "other",
            },
            ReloadError::Compacted { .. } => "compacted",
            ReloadError::TimedOut { .. } => "timed_out",
            _ => "other",
        }
    }
}

/// The reload actor of one role on one node. It runs on a plain task with
/// its own mailbox, not as a ractor actor: ractor's ports cost about 6 KB
/// an actor, and every standby role keeps its reload actor. It is handled
/// like a linked child all the same: [`start`](Self::start) reports its
/// failure to the election, and dropping its handle stops it.
pub(crate) struct ReloadActor<C: Coordinator> {
    coordinator: Arc<C>,
    /// The node's client, its watch of elections and metadata, and the
    /// configuration: shared, since an etcd client alone is kilobytes and
    /// a node runs thousands of these.
    context: Arc<NodeContext>,
    role: String,
    /// `{root}/meta/{role}/`.
    prefix: String,
    faults: Arc<Faults>,
    /// Where the copy stands, for the role's handle.
    published: Arc<watch::Sender<Option<MetadataCopy>>>,
    /// Why the copy is not loaded, for the role's handle.
    missing: Arc<Slot<String>>,
}

impl<C: Coordinator> ReloadActor<C> {
    /// The reload actor of `role` on the node of `context`.
    pub(crate) fn new(
        role: String,
        coordinator: Arc<C>,
        context: &Arc<NodeContext>,
        shared: &RoleShared<C>,
    ) -> Self {
        Self {
            prefix: context.layout.meta(&role),
            role,
            coordinator,
            context: context.clone(),
            faults: shared.faults.clone(),
            published: shared.copy.clone(),
            missing: shared.copy_missing.clone(),
        }
    }
}

/// What a won term asks of the reload actor.
pub(crate) struct CatchUp<C: Coordinator> {
    /// The won revision: a full read must be at least this new.
    pub revision: i64,
    /// Hands the metadata over, or says why there is none.
    pub report: Box<dyn FnOnce(Result<C::Meta, ReloadError>) + Send>,
}

/// Messages to a reload actor. What its tasks report carries the copy's
/// generation or the catch-up's id, so a late report of an earlier read or
/// catch-up is recognised and dropped.
pub(crate) enum ReloadMsg<C: Coordinator> {
    /// Bring the metadata up to date for a won term and hand it over.
    CatchUp(Box<CatchUp<C>>),
    /// The term the catch-up in progress was for is over: drop it.
    Cancel,
    /// Another node serves the role: make the copy whole for this node's
    /// next win (read it again, or decode it), if its decoded metadata went
    /// to a term that is over.
    Standby,
    /// The full read of the copy of `generation` finished.
    Loaded {
        /// The copy's generation.
        generation: u64,
        /// What it read.
        snapshot: Snapshot,
    },
    /// The node's watch handed on changes for the copy of `generation`.
    Followed {
        /// The copy's generation.
        generation: u64,
        /// What it delivered.
        followed: Followed,
    },
    /// The entries of the copy of `generation`, lent out to be cloned, are back.
    Returned {
        /// The copy's generation.
        generation: u64,
        /// The entries.
        snapshot: Snapshot,
    },
    /// A decode of the copy of `generation`, as it was at `revision`, finished.
    Decoded {
        /// The copy's generation.
        generation: u64,
        /// The copy's revision when the decode started.
        revision: i64,
        /// The decoded metadata.
        result: Result<C::Meta, BoxError>,
    },
    /// The catch-up `id` has its metadata (`keys` keys), or failed.
    CaughtUp {
        /// The catch-up.
        id: u64,
        /// Keys in the metadata handed over.
        keys: usize,
        /// The metadata.
        result: Result<C::Meta, ReloadError>,
    },
    /// The catch-up `id` ran out of `reload.timeout`.
    Expired {
        /// The catch-up.
        id: u64,
    },
    /// A task this actor owns panicked: a bug, handled as the actor's own failure.
    TaskFailed {
        /// What the task did.
        task: &'static str,
        /// The panic's message.
        reason: String,
    },
}

/// A catch-up in progress.
struct Pending<C: Coordinator> {
    id: u64,
    report: Box<dyn FnOnce(Result<C::Meta, ReloadError>) + Send>,
    started: Instant,
    /// The revision the copy must reach: whatever it held when the request
    /// came (0 while it is read: the read covers it). `None` for a cold read.
    target: Option<i64>,
    /// The full read, or the decode of the catch-up.
    task: Option<OwnedTask>,
    /// A decode for this catch-up runs.
    decoding: bool,
    /// Sends `Expired` once `reload.timeout` has passed.
    _timer: OwnedTask,
}

/// What a reload actor's state changes between messages.
pub(crate) struct ReloadState<C: Coordinator> {
    /// Bumped by every full read of the copy.
    generation: u64,
    /// The warm copy; `None` while it is read (or with `reload.warm: false`).
    copy: Option<WarmCopy<C::Meta>>,
    loader: Option<OwnedTask>,
    /// The copy's subscription to the node's watch, from before its read.
    follower: Option<Subscription>,
    /// What the watch handed on while the copy is read, for after the read.
    early: Vec<Change>,
    /// The background decode of the copy (incremental coordinators).
    decoder: Option<OwnedTask>,
    catch_up: Option<Pending<C>>,
    catch_ups: u64,
    /// Cuts short the loader's backoff, for a win.
    wake: Arc<Notify>,
    /// After a term here ended: makes the copy whole should no successor
    /// be seen serving first.
    standby_timer: Option<OwnedTask>,
}

impl<C: Coordinator> Drop for ReloadState<C> {
    fn drop(&mut self) {
        // Freeing a large copy takes milliseconds: not on a runtime worker
        // (at a shutdown the process may well exit first, which is cheaper).
        if let Some(copy) = self.copy.take() {
            std::thread::spawn(move || drop(copy));
        }
    }
}

impl<C: Coordinator> ReloadActor<C> {
    fn config(&self) -> &ReloadConfig {
        &self.context.config.reload
    }

    /// Spawns `future` as a task of this actor: aborted when dropped, and a
    /// panic in it fails the actor.
    fn spawn(
        myself: &Mailbox<C>,
        task: &'static str,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> OwnedTask {
        let report = myself.clone();
        OwnedTask::spawn_reported(future, move |reason| {
            report.send_message(ReloadMsg::TaskFailed { task, reason });
        })
    }

    /// Starts a full read of a new copy, dropping the old one.
    fn start_load(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>, why: &'static str) {
        state.generation += 1;
        if let Some(old) = state.copy.take() {
            // Freeing a large copy takes milliseconds: not on a runtime worker.
            drop_elsewhere(old);
        }
        state.decoder = None;
        self.publish(state);
        metrics::counter!(telemetry::METADATA_FULL_READS, "role" => self.role.clone(), "reason" => why)
            .increment(1);
        let generation = state.generation;
        // Subscribed before the read: what changes after the read's
        // revision reaches the copy, whenever the read ends.
        state.early.clear();
        let reply = myself.clone();
        state.follower = Some(follow::follow(
            &self.context.elections,
            &self.role,
            self.prefix.clone(),
            move |followed| {
                reply.send_message(ReloadMsg::Followed {
                    generation,
                    followed,
                })
            },
        ));
        let (context, prefix) = (self.context.clone(), self.prefix.clone());
        let (faults, reply) = (self.faults.clone(), myself.clone());
        let (wake, role, missing) = (state.wake.clone(), self.role.clone(), self.missing.clone());
        let load = async move {
            // Until the node's watch has read its elections, it has not
            // started: what changed before it starts would be missed.
            context.elections.first_read().await;
            let (client, paging) = (&context.client, &context.config.reload);
            let mut backoff = Backoff::new(context.config.etcd.retry.clone());
            loop {
                // Held for the read only, not the backoff after a failure.
                // Never closed: the node's context outlives its roles.
                let permit = context.warm_loads.acquire().await;
                // Boxed: a thousand loads wait for a permit, each small
                // until its read starts.
                let read = Box::pin(read_snapshot(client, &prefix, paging, 0, &faults)).await;
                drop(permit);
                match read {
                    Ok(snapshot) => {
                        reply.send_message(ReloadMsg::Loaded {
                            generation,
                            snapshot,
                        });
                        return;
                    }
                    Err(error) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            prefix,
                            "reading the metadata for a warm copy failed, retrying in {delay:?}: {error}"
                        );
                        metrics::counter!(telemetry::METADATA_COPY_READ_FAILURES, "role" => role.clone(), "reason" => error.reason())
                            .increment(1);
                        missing.set(Some(error.to_string()));
                        sleep_unless_woken(delay, &wake).await;
                    }
                }
            }
        };
        state.loader = Some(Self::spawn(myself, "reading the metadata", load));
    }

    fn loaded(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>, snapshot: Snapshot) {
        state.loader = None;
        self.missing.set(None);
        let revision = snapshot.revision;
        tracing::info!(
            role = self.role,
            prefix = self.prefix,
            keys = snapshot.entries.len(),
            revision,
            "metadata copy loaded; following its changes"
        );
        state.copy = Some(WarmCopy::new(snapshot));
        // The decode first, then what changed since the read: the copy is
        // never published loaded but not decoding, which would let the
        // election campaign ahead of the decode.
        self.start_background_decode(myself, state);
        let early = std::mem::take(&mut state.early);
        self.apply(myself, state, early);
        self.publish(state);
    }

    fn followed(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>, followed: Followed) {
        match followed {
            Followed::Changed(changes) if state.copy.is_none() => state.early.extend(changes),
            Followed::Changed(changes) => self.apply(myself, state, changes),
            Followed::Lost => {
                tracing::warn!(
                    role = self.role,
                    prefix = self.prefix,
                    "the node's watch of its elections and metadata missed changes (etcd compacted its history): reading the metadata again in the background"
                );
                self.start_load(myself, state, "compacted");
            }
        }
    }

    /// Applies the changes after the copy's revision, in order.
    fn apply(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>, changes: Vec<Change>) {
        let Some(copy) = &mut state.copy else { return };
        let coordinator = &self.coordinator;
        let applied = copy.apply(changes, |meta, change| {
            coordinator.apply_change(meta, change)
        });
        if let ApplyOutcome::DecodedDropped(error) = applied {
            tracing::warn!(
                role = self.role,
                "the coordinator could not apply a metadata change to its decoded metadata ({error}); reading the metadata again"
            );
            self.start_load(myself, state, "unapplied");
            return;
        }
        self.publish(state);
    }

    /// Decodes the copy off the runtime, for a coordinator that keeps its
    /// decoded metadata current by itself: the raw entries go to the
    /// decode, and the decoded metadata is all the copy keeps.
    fn start_background_decode(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>) {
        if !C::INCREMENTAL {
            return;
        }
        let Some(copy) = &mut state.copy else { return };
        let revision = copy.revision();
        let Some(entries) = copy.start_decode() else {
            return;
        };
        let generation = state.generation;
        let (coordinator, reply) = (self.coordinator.clone(), myself.clone());
        let decoding = decode_off_runtime(coordinator, entries, None);
        let decode = async move {
            let result = decoding.await;
            reply.send_message(ReloadMsg::Decoded {
                generation,
                revision,
                result,
            });
        };
        state.decoder = Some(Self::spawn(myself, "decoding the metadata", decode));
        self.publish(state);
    }

    /// Makes an incremental coordinator's copy whole again: reads the
    /// metadata when the copy went to a term (or failed), else decodes the
    /// raw entries if no decode has started.
    fn make_whole(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>) {
        if state.copy.as_ref().is_some_and(WarmCopy::is_released) {
            self.start_load(myself, state, "released");
        } else {
            self.start_background_decode(myself, state);
        }
    }

    fn decoded(
        &self,
        state: &mut ReloadState<C>,
        revision: i64,
        result: Result<C::Meta, BoxError>,
    ) {
        state.decoder = None;
        let Some(copy) = &mut state.copy else { return };
        let coordinator = &self.coordinator;
        if let Err(error) = copy.decoded(revision, result, |meta, change| {
            coordinator.apply_change(meta, change)
        }) {
            tracing::warn!(
                role = self.role,
                prefix = self.prefix,
                "the metadata copy does not decode ({error}); a win reads it again"
            );
            // A win waiting for this decode gets its error, as a cold
            // read's would: the node resigns rather than read in a loop.
            self.finish(state, 0, Err(decode_failed(&self.prefix, error)));
        }
        self.publish(state);
    }

    fn start_catch_up(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>, job: CatchUp<C>) {
        self.faults.catch_up_started();
        // etcd has just answered the win: a read waiting out its backoff
        // (after a cut link) tries again now, not seconds later.
        state.wake.notify_one();
        state.catch_ups += 1;
        let id = state.catch_ups;
        let (timeout, reply) = (self.config().timeout, myself.clone());
        let timer = OwnedTask::spawn(async move {
            tokio::time::sleep(timeout).await;
            reply.send_message(ReloadMsg::Expired { id });
        });
        let reply = myself.clone();
        let (task, target) = if self.config().warm {
            // Every change made before the win was handed on before this
            // request, and handled before it: the copy holds them, or its
            // read under way will.
            (
                None,
                Some(state.copy.as_ref().map_or(0, WarmCopy::revision)),
            )
        } else {
            metrics::counter!(telemetry::METADATA_FULL_READS, "role" => self.role.clone(), "reason" => "cold")
                .increment(1);
            let (context, prefix) = (self.context.clone(), self.prefix.clone());
            let (coordinator, faults, won) =
                (self.coordinator.clone(), self.faults.clone(), job.revision);
            let read = async move {
                let (client, paging) = (&context.client, &context.config.reload);
                let (keys, result) =
                    match read_snapshot(client, &prefix, paging, won, &faults).await {
                        Ok(snapshot) => {
                            let keys = snapshot.entries.len();
                            let decoded = decode_off_runtime(coordinator, snapshot, None).await;
                            (keys, decoded.map_err(|error| decode_failed(&prefix, error)))
                        }
                        Err(error) => (0, Err(error)),
                    };
                reply.send_message(ReloadMsg::CaughtUp { id, keys, result });
            };
            (
                Some(Self::spawn(myself, "reading the metadata", read)),
                None,
            )
        };
        state.catch_up = Some(Pending {
            id,
            report: job.report,
            started: Instant::now(),
            target,
            task,
            decoding: !self.config().warm,
            _timer: timer,
        });
    }

    /// Hands the metadata over once the copy has reached its target.
    fn check_catch_up(&self, myself: &Mailbox<C>, state: &mut ReloadState<C>) {
        let (Some(pending), Some(copy)) = (&mut state.catch_up, &mut state.copy) else {
            return;
        };
        let Some(target) = pending.target else { return };
        if pending.decoding || copy.revision() < target {
            return;
        }
        let keys = copy.keys();
        if C::INCREMENTAL {
            match copy.take_decoded() {
                Some(meta) => {
                    self.finish(state, keys, Ok(meta));
                    self.publish(state);
                }
                // The win takes the decode of a copy made whole first.
                None => self.make_whole(myself, state),
            }
            return;
        }
        let Some(lent) = copy.lend() else {
            return;
        };
        pending.decoding = true;
        let (id, reply) = (pending.id, myself.clone());
        let (coordinator, prefix) = (self.coordinator.clone(), self.prefix.clone());
        let give_back = self.give_back(myself, state.generation);
        let decoding = decode_off_runtime(coordinator, lent, Some(give_back));
        let decode = async move {
            let result = decoding
                .await
                .map_err(|error| decode_failed(&prefix, error));
            reply.send_message(ReloadMsg::CaughtUp { id, keys, result });
        };
        pending.task = Some(Self::spawn(myself, "decoding the metadata", decode));
    }

    /// Reports the catch-up in progress, if it is `id`.
    fn finish_if(
        &self,
        state: &mut ReloadState<C>,
        id: u64,
        keys: usize,
        result: Result<C::Meta, ReloadError>,
    ) {
        if state
            .catch_up
            .as_ref()
            .is_some_and(|pending| pending.id == id)
        {
            self.finish(state, keys, result);
        }
    }

    fn finish(
        &self,
        state: &mut ReloadState<C>,
        keys: usize,
        result: Result<C::Meta, ReloadError>,
    ) {
        let Some(pending) = state.catch_up.take() else {
            return;
        };
        let took = pending.started.elapsed();
        if result.is_ok() {
            let path = if self.config().warm { "warm" } else { "cold" };
            tracing::info!(
                role = self.role,
                prefix = self.prefix,
                keys,
                path,
                took_ms = took.as_millis() as u64,
                "metadata caught up"
            );
            metrics::histogram!(telemetry::RELOAD_SECONDS, "role" => self.role.clone())
                .record(took.as_secs_f64());
            metrics::counter!(telemetry::RELOADED_KEYS, "role" => self.role.clone())
                .increment(keys as u64);
        }
        let Pending { report, .. } = pending;
        report(result);
    }

    /// Hands lent entries back to the copy of `generation`.
    fn give_back(&self, myself: &Mailbox<C>, generation: u64) -> Box<dyn FnOnce(Snapshot) + Send> {
        let reply = myself.clone();
        Box::new(move |snapshot| {
            reply.send_message(ReloadMsg::Returned {
                generation,
                snapshot,
            });
        })
    }

    /// Says where the copy stands, to the role's handle and in a gauge.
    fn publish(&self, state: &ReloadState<C>) {
        let published = state.copy.as_ref().map(|copy| MetadataCopy {
            revision: copy.revision(),
            keys: copy.keys(),
            decoding: copy.is_decoding(),
            released: copy.is_released(),
        });
        let keys = published.map_or(0, |p| p.keys);
        self.published.send_if_modified(|current| {
            let changed = *current != published;
            *current = published;
            changed
        });
        metrics::gauge!(telemetry::METADATA_COPY_KEYS, "role" => self.role.clone())
            .set(keys as f64);
        let loaded = if published.is_some() { 1.0 } else { 0.0 };
        metrics::gauge!(telemetry::METADATA_COPY_LOADED, "role" => self.role.clone()).set(loaded);
    }
}

/// How long after its term ended a node makes its copy whole for its next
/// win without having seen a successor serve (a lone node, a successor
/// still reading): long past a warm successor's activation.
const REWARM_WITHOUT_SUCCESSOR: Duration = Duration::from_millis(200);

/// Sleeps for `delay`, or until `wake` is notified.
async fn sleep_unless_woken(delay: Duration, wake: &Notify) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = wake.notified() => {}
    }
}

/// Snapshots of at most this many entries are decoded on the runtime, at
/// once: a blocking thread costs more than their decode, and a takeover
/// wave of hundreds of small roles would start hundreds of threads at once.
const DECODE_ON_RUNTIME_ENTRIES: usize = 64;

/// After decoding a snapshot of at least this many entries, which frees
/// them (or the clone), the node hands the freed memory back to the OS
/// ([`return_freed_memory`]): below it the trim costs more than it returns.
const TRIM_AFTER_DECODE_ENTRIES: usize = 1 << 16;

/// Runs the coordinator's `decode` on a blocking thread: a large snapshot
/// must not hold up the runtime's workers (a small one is decoded at once,
/// here). With `give_back`, decodes a clone and hands the original to it.
/// The decode starts now, not when the future is first polled: lent
/// entries go back even if the future is dropped (a catch-up cancelled
/// meanwhile). A panic in `decode` panics the future.
fn decode_off_runtime<C: Coordinator>(
    coordinator: Arc<C>,
    snapshot: Snapshot,
    give_back: Option<Box<dyn FnOnce(Snapshot) + Send>>,
) -> impl Future<Output = Result<C::Meta, BoxError>> + Send {
    let entries = snapshot.entries.len();
    let small = entries <= DECODE_ON_RUNTIME_ENTRIES;
    let decode = move || {
        let decoded = match give_back {
            Some(give_back) => {
                let clone = snapshot.clone();
                give_back(snapshot);
                coordinator.decode(clone)
            }
            None => coordinator.decode(snapshot),
        };
        if entries >= TRIM_AFTER_DECODE_ENTRIES {
            return_freed_memory();
        }
        decoded
    };
    let decoding = if small {
        Decoding::Done(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            decode,
        )))
    } else {
        Decoding::OnThread(tokio::task::spawn_blocking(decode))
    };
    async move {
        match decoding {
            Decoding::Done(Ok(result)) => result,
            Decoding::Done(Err(panic)) => std::panic::resume_unwind(panic),
            Decoding::OnThread(thread) => match thread.await {
                Ok(result) => result,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(join) => Err(join.into()),
            },
        }
    }
}

/// A decode under way on a blocking thread, or already done.
enum Decoding<M> {
    /// Decoded at once; a panic is kept to be raised in the future.
    Done(std::thread::Result<Result<M, BoxError>>),
    /// On a blocking thread.
    OnThread(tokio::task::JoinHandle<Result<M, BoxError>>),
}

fn decode_failed(prefix: &str, error: BoxError) -> ReloadError {
    ReloadError::DecodeFailed {
        prefix: prefix.to_owned(),
        reason: error.to_string(),
    }
}

impl<C: Coordinator> ReloadActor<C> {
    /// Starts the actor on its own task: it begins its warm copy, then
    /// handles its messages one at a time until its handle is dropped.
    /// `failed` hears why, if it fails (an error or a panic, its own or a
    /// task's; the one ends the actor before the other can happen): the
    /// election decides what follows, as for a linked actor.
    pub(crate) fn start(self, failed: impl Fn(String) + Clone + Send + 'static) -> ReloadHandle<C> {
        let (sender, mut inbox) = mpsc::unbounded_channel();
        let address = Mailbox(sender);
        let myself = address.clone();
        let on_panic = failed.clone();
        let run = async move {
            let mut state = ReloadState {
                generation: 0,
                copy: None,
                loader: None,
                follower: None,
                early: Vec::new(),
                decoder: None,
                catch_up: None,
                catch_ups: 0,
                wake: Arc::new(Notify::new()),
                standby_timer: None,
            };
            if self.config().warm {
                self.start_load(&myself, &mut state, "start");
            }
            while let Some(message) = inbox.recv().await {
                if let Err(reason) = self.handle(&myself, *message, &mut state) {
                    failed(reason);
                    return;
                }
            }
        };
        let task = OwnedTask::spawn_reported(run, on_panic);
        ReloadHandle {
            address,
            _task: task,
        }
    }

    /// Handles one message; an error ends the actor.
    fn handle(
        &self,
        myself: &Mailbox<C>,
        message: ReloadMsg<C>,
        state: &mut ReloadState<C>,
    ) -> Result<(), String> {
        match message {
            ReloadMsg::CatchUp(job) => self.start_catch_up(myself, state, *job),
            ReloadMsg::Cancel => {
                state.catch_up = None;
                if C::INCREMENTAL && state.copy.is_some() {
                    // Should no successor be seen serving (none runs),
                    // make the copy whole anyway, for a lone node's next win.
                    let reply = myself.clone();
                    state.standby_timer = Some(OwnedTask::spawn(async move {
                        tokio::time::sleep(REWARM_WITHOUT_SUCCESSOR).await;
                        reply.send_message(ReloadMsg::Standby);
                    }));
                }
            }
            // The metadata for the next win (the last went to the
            // activation of a term now over) is read and decoded again once
            // the successor serves: not while it activates, where a large
            // copy would take a core from it on a shared host.
            ReloadMsg::Standby => {
                state.standby_timer = None;
                self.make_whole(myself, state);
            }
            ReloadMsg::Loaded {
                generation,
                snapshot,
            } => {
                if generation == state.generation {
                    self.loaded(myself, state, snapshot);
                }
            }
            ReloadMsg::Followed {
                generation,
                followed,
            } => {
                if generation == state.generation {
                    self.followed(myself, state, followed);
                }
            }
            ReloadMsg::Returned {
                generation,
                snapshot,
            } => {
                if let Some(copy) = state
                    .copy
                    .as_mut()
                    .filter(|_| generation == state.generation)
                {
                    copy.give_back(snapshot);
                    self.publish(state);
                }
            }
            ReloadMsg::Decoded {
                generation,
                revision,
                result,
            } => {
                if generation == state.generation {
                    self.decoded(state, revision, result);
                }
            }
            ReloadMsg::CaughtUp { id, keys, result } => self.finish_if(state, id, keys, result),
            ReloadMsg::Expired { id } => {
                let timed_out = ReloadError::TimedOut {
                    prefix: self.prefix.clone(),
                    timeout: self.config().timeout,
                };
                self.finish_if(state, id, 0, Err(timed_out));
            }
            ReloadMsg::TaskFailed { task, reason } => {
                return Err(format!(
                    "{} reload task failed ({task}): {reason}",
                    self.role
                ));
            }
        }
        self.check_catch_up(myself, state);
        Ok(())
    }
}

/// Where a reload actor's messages go: boxed, because the channel
/// allocates room for 32 of them up front, and a node has thousands.
pub(crate) struct Mailbox<C: Coordinator>(mpsc::UnboundedSender<Box<ReloadMsg<C>>>);

impl<C: Coordinator> Clone for Mailbox<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C: Coordinator> Mailbox<C> {
    /// Queues `message`; false once the actor has stopped.
    pub(crate) fn send_message(&self, message: ReloadMsg<C>) -> bool {
        self.0.send(Box::new(message)).is_ok()
    }
}

/// A running reload actor: its mailbox, and its task, which stops (the
/// catch-up in progress with it) when this is dropped.
pub(crate) struct ReloadHandle<C: Coordinator> {
    address: Mailbox<C>,
    _task: OwnedTask,
}

impl<C: Coordinator> ReloadHandle<C> {
    /// Queues `message` for the actor.
    pub(crate) fn send_message(&self, message: ReloadMsg<C>) {
        self.address.send_message(message);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::FutureExt;

    use super::*;
    use crate::fence::{Epoch, FencedStore};

    /// Decodes to the number of entries; panics on an entry named `panic`,
    /// fails on one named `bad`, and says on which thread it ran.
    struct Counted {
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    impl Coordinator for Counted {
        type Meta = usize;
        type Serving = ();
        type Request = ();
        type Response = ();

        fn decode(&self, snapshot: Snapshot) -> Result<usize, BoxError> {
            self.threads
                .lock()
                .expect("threads")
                .push(std::thread::current().id());
            assert!(!snapshot.entries.contains_key("panic"), "decode panicked");
            if snapshot.entries.contains_key("bad") {
                return Err("a bad entry".into());
            }
            Ok(snapshot.entries.len())
        }

        async fn activate(&self, _: Epoch, _: usize, _: FencedStore) -> Result<(), BoxError> {
            Ok(())
        }

        async fn handle(&self, _: &mut (), _: ()) {}
    }

    fn snapshot(entries: usize, special: Option<&str>) -> Snapshot {
        let mut snapshot = Snapshot {
            revision: 7,
            entries: (0..entries)
                .map(|i| (format!("k{i:06}"), vec![1]))
                .collect(),
        };
        if let Some(special) = special {
            snapshot.entries.insert(special.to_owned(), vec![]);
        }
        snapshot
    }

    /// Decodes `snapshot`, lending it: what came of it, what was given back,
    /// and whether the decode ran on the calling thread.
    async fn decode(
        snapshot: Snapshot,
    ) -> (
        std::thread::Result<Result<usize, BoxError>>,
        Option<Snapshot>,
        bool,
    ) {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let coordinator = Arc::new(Counted {
            threads: threads.clone(),
        });
        let returned = Arc::new(Mutex::new(None));
        let keep = returned.clone();
        let give_back: Box<dyn FnOnce(Snapshot) + Send> =
            Box::new(move |snapshot| *keep.lock().expect("returned") = Some(snapshot));
        let outcome = std::panic::AssertUnwindSafe(decode_off_runtime(
            coordinator,
            snapshot,
            Some(give_back),
        ))
        .catch_unwind()
        .await;
        let here = threads.lock().expect("threads").first() == Some(&std::thread::current().id());
        let returned = returned.lock().expect("returned").take();
        (outcome, returned, here)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_small_snapshot_is_decoded_at_once_and_a_large_one_on_a_blocking_thread() {
        let (outcome, returned, here) = decode(snapshot(DECODE_ON_RUNTIME_ENTRIES, None)).await;
        assert_eq!(
            outcome.expect("no panic").expect("decoded"),
            DECODE_ON_RUNTIME_ENTRIES
        );
        assert_eq!(
            returned.map(|s| s.entries.len()),
            Some(DECODE_ON_RUNTIME_ENTRIES)
        );
        assert!(here, "a small snapshot went to a blocking thread");

        let large = DECODE_ON_RUNTIME_ENTRIES + 1;
        let (outcome, returned, here) = decode(snapshot(large, None)).await;
        assert_eq!(outcome.expect("no panic").expect("decoded"), large);
        assert_eq!(returned.map(|s| s.entries.len()), Some(large));
        assert!(!here, "a large snapshot was decoded on the runtime");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_decode_error_or_panic_reaches_the_future_at_either_size_and_the_entries_go_back() {
        for entries in [0, DECODE_ON_RUNTIME_ENTRIES + 1] {
            let (outcome, returned, _) = decode(snapshot(entries, Some("bad"))).await;
            let error = outcome.expect("no panic").expect_err("the error is kept");
            assert_eq!(error.to_string(), "a bad entry");
            assert_eq!(returned.map(|s| s.entries.len()), Some(entries + 1));

            let (outcome, returned, _) = decode(snapshot(entries, Some("panic"))).await;
            let panic = outcome.expect_err("the panic is raised in the future");
            let message = panic.downcast_ref::<&str>().copied().unwrap_or_default();
            assert_eq!(message, "decode panicked");
            assert_eq!(returned.map(|s| s.entries.len()), Some(entries + 1));
        }
    }
}
