//! The built-in timestamp oracle coordinator (`tso` role): strictly increasing hybrid timestamps that survive failover.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::TsoConfig;
use crate::config::tso::MAX_COUNT;
use crate::coordinator::{BoxError, Coordinator, MetaChange, Snapshot};
use crate::fence::{Epoch, FenceError, FencedStore, Guard, WriteOp};

/// Bits of a timestamp that hold the logical counter.
pub const LOGICAL_BITS: u32 = 18;

/// How many logical values one physical millisecond holds (2^18).
const LOGICAL_SLOTS: u64 = 1 << LOGICAL_BITS;

/// The largest logical value, and so the largest batch (2^18 - 1).
pub const MAX_LOGICAL: u64 = LOGICAL_SLOTS - 1;

/// The metadata key (relative to the role's prefix) holding the saved upper
/// bound, in physical milliseconds as decimal ASCII.
pub const UPPER_BOUND_KEY: &str = "upper_bound";

// `tso.maxCount`'s limit is the largest batch that fits in one millisecond.
const _: () = assert!(MAX_LOGICAL == MAX_COUNT as u64);

/// Failures of the timestamp oracle.
#[derive(Debug, thiserror::Error)]
pub enum TsoError {
    /// An `Allocate` asked for no timestamps, or for more than one millisecond holds.
    #[error("cannot allocate {count} timestamps: count must be between 1 and {max}")]
    BadCount {
        /// The count asked for.
        count: u32,
        /// `tso.maxCount`.
        max: u32,
    },
    /// Saving the upper bound failed (fenced, or etcd unreachable): nothing was handed out.
    #[error("saving the timestamp upper bound failed: {0}")]
    Persist(#[from] FenceError),
    /// The saved metadata is not in the expected format.
    #[error("metadata key {key:?} holds {value:?}, not a decimal millisecond count")]
    Corrupt {
        /// The relative metadata key.
        key: &'static str,
        /// The value found, lossily decoded for display.
        value: String,
    },
    /// The saved bound is a number of milliseconds a timestamp cannot hold:
    /// `physical << 18` would wrap.
    #[error(
        "metadata key {key:?} holds {value} ms, beyond the largest physical part of a timestamp \
         ({MAX_PHYSICAL} ms, 46 bits)"
    )]
    OutOfRange {
        /// The relative metadata key.
        key: &'static str,
        /// The value found.
        value: u64,
    },
    /// The batch would move the oracle further ahead of this node's clock
    /// than `tso.maxAhead`: callers asked for more than a millisecond's
    /// worth faster than time passes. Nothing was handed out.
    #[error(
        "the oracle would run {ahead_ms} ms ahead of the clock, past tso.maxAhead ({max_ms} ms): \
         ask for fewer timestamps, or again once the clock has caught up"
    )]
    AheadOfClock {
        /// How far ahead the batch would be.
        ahead_ms: u64,
        /// `tso.maxAhead`, in milliseconds.
        max_ms: u64,
    },
    /// The oracle reached the largest physical millisecond a timestamp can
    /// hold (46 bits): handing out more would wrap. Nothing was handed out.
    #[error(
        "the oracle reached physical {physical} ms, the end of what a timestamp holds \
         ({MAX_PHYSICAL} ms, 46 bits): nothing more can be handed out"
    )]
    Exhausted {
        /// The physical millisecond the batch would have started at.
        physical: u64,
    },
    /// The saved bound kept changing under this term's compare-and-swap:
    /// only late saves of this very term can write it, so this should not
    /// last; nothing was handed out.
    #[error("the saved timestamp upper bound kept changing during a save; nothing was handed out")]
    BoundContended,
}

/// The largest physical part, in milliseconds: what fits in the 46 bits above the logical ones.
pub const MAX_PHYSICAL: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A hybrid timestamp from its parts, `(physical_ms << 18) | logical`;
/// `None` when a part does not fit its bits (46 and 18), where the
/// shifted value would wrap.
pub fn compose(physical_ms: u64, logical: u64) -> Option<u64> {
    (physical_ms <= MAX_PHYSICAL && logical <= MAX_LOGICAL)
        .then_some((physical_ms << LOGICAL_BITS) | logical)
}

/// A hybrid timestamp's `(physical_ms, logical)` parts.
pub fn split(ts: u64) -> (u64, u64) {
    (ts >> LOGICAL_BITS, ts & MAX_LOGICAL)
}

/// The saved bound's distance ahead of the clock, in milliseconds.
fn window_ms(config: &TsoConfig) -> u64 {
    millis(config.window)
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The bound a term saves as it starts from `physical` at clock `now`: one
/// window ahead of the clock, and at least just above `physical`. Not a
/// window ahead of `physical`: a term that starts above its predecessor's
/// bound (ahead of the clock) would push the bound another window ahead,
/// and takeovers quicker than the window would carry the oracle ever
/// further from the clock.
fn bound_for(physical: u64, now: u64, config: &TsoConfig) -> u64 {
    now.saturating_add(window_ms(config))
        .max(physical.saturating_add(1))
        .min(MAX_PHYSICAL)
}

/// Where a term starts, given the bound `found` saved by its predecessors
/// and the (guarded) clock `now`: above every physical they handed out.
fn base_above(found: u64, now: u64) -> u64 {
    now.max(found.saturating_add(1))
}

/// Where real time is believed to be: a wall-clock reading, in
/// milliseconds, trusted at a monotonic instant. The oracle follows its
/// wall clock only up to `tso.maxClockStep` ahead of what the anchor says,
/// so a clock stepped forward (a bad RTC at boot, an NTP step) cannot push
/// the saved bound, and every successor, far into the future.
#[derive(Debug, Clone, Copy)]
struct ClockAnchor {
    ms: u64,
    at: Instant,
}

impl ClockAnchor {
    /// The anchor a term starts from: its predecessor's clock as it saved
    /// the bound this node watched arrive (a predecessor saves at most a
    /// window ahead of its clock), or, without one seen, this node's clock
    /// now.
    fn at_activation(saved: &SavedBound, wall: u64, config: &TsoConfig) -> Self {
        match saved.seen {
            Some(at) => Self {
                ms: saved.bound.saturating_sub(window_ms(config)),
                at,
            },
            None => Self {
                ms: wall,
                at: Instant::now(),
            },
        }
    }

    /// `wall`, or the furthest the clock may be ahead of the anchor at
    /// `at` when `wall` runs further: the clock the oracle uses, and by
    /// how much `wall` was held back.
    fn guard(&self, wall: u64, at: Instant, config: &TsoConfig) -> (u64, Option<u64>) {
        let elapsed = millis(at.saturating_duration_since(self.at));
        let furthest = self
            .ms
            .saturating_add(elapsed)
            .saturating_add(millis(config.max_clock_step));
        if wall > furthest {
            (furthest, Some(wall - furthest))
        } else {
            (wall, None)
        }
    }
}

/// How far ahead of `now` a batch moved from `physical` to `start` would
/// be, when callers pushed it there (a logical overflow, not the clock)
/// past `tso.maxAhead`. A lead the oracle already has (a predecessor's
/// bound, a clock stepped back) is never refused by itself.
fn pushed_too_far(physical: u64, start: u64, now: u64, config: &TsoConfig) -> Option<u64> {
    let ahead = start.saturating_sub(now);
    (start > physical && ahead > millis(config.max_ahead)).then_some(ahead)
}

/// Where a batch starts, as computed by [`next_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    /// The batch's physical millisecond.
    pub physical: u64,
    /// The batch's first logical value.
    pub logical: u64,
}

/// Where a batch of `count` starts, given the next unused `(physical,
/// logical)` and the clock's `now`. Pure, so the ordering rules are unit
/// tested without etcd: a clock that moved forward starts a fresh
/// millisecond; one that went backwards is ignored, so timestamps never go
/// back; a batch that would overflow the logical counter moves to the next
/// millisecond, so every batch lies within one.
pub(crate) fn next_batch(physical: u64, logical: u64, now: u64, count: u64) -> Start {
    debug_assert!((1..=MAX_LOGICAL).contains(&count));
    if now > physical {
        Start {
            physical: now,
            logical: 0,
        }
    } else if logical + count > LOGICAL_SLOTS {
        Start {
            physical: physical + 1,
            logical: 0,
        }
    } else {
        Start { physical, logical }
    }
}

/// A request to the timestamp oracle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsoRequest {
    /// Hands out `count` consecutive timestamps.
    Allocate {
        /// How many, 1 to `tso.maxCount`.
        count: u32,
    },
}

/// `count` consecutive timestamps starting at `first`, all in one physical millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsoBatch {
    /// The first timestamp.
    pub first: u64,
    /// How many timestamps: `first..first + count`.
    pub count: u32,
    /// The revision of the epoch that handed them out.
    pub epoch: i64,
}

impl TsoBatch {
    /// The batch's last timestamp.
    pub fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }
}

/// The `tso` role's metadata: the saved upper bound, and when this node
/// saw it saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedBound {
    /// The saved upper bound in physical milliseconds; 0 when none is saved.
    pub bound: u64,
    /// When this node's warm copy saw the bound change, if it did since
    /// the copy was read: the clock of the term that saved it was then at
    /// most `bound - tso.window`, which anchors the successor's clock.
    pub seen: Option<Instant>,
}

/// The timestamp oracle coordinator.
pub struct Tso {
    config: TsoConfig,
    // Injectable so tests can stop or rewind time.
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Tso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tso")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tso {
    /// An oracle on the wall clock (milliseconds since the UNIX epoch).
    pub fn new(config: TsoConfig) -> Self {
        Self::with_clock(config, Arc::new(wall_clock_ms))
    }

    /// An oracle on `clock`, which returns milliseconds.
    pub fn with_clock(config: TsoConfig, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self { config, clock }
    }
}

fn wall_clock_ms() -> u64 {
    // A clock before 1970 is as good as one at 1970: the saved bound still
    // keeps timestamps increasing.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a serving oracle holds.
#[derive(Debug)]
pub struct TsoServing {
    /// The physical millisecond of the last batch (or the activation base).
    physical: u64,
    /// The next unused logical value in `physical`.
    logical: u64,
    /// The saved bound: every physical handed out is below it.
    upper_bound: u64,
    store: FencedStore,
    epoch: Epoch,
    /// Where real time is believed to be, for `tso.maxClockStep`.
    anchor: ClockAnchor,
    /// By how much the wall clock was last held back, while it is.
    held_back: Option<u64>,
    /// The save of the next bound, started once a sixth of the window was
    /// used, until its outcome is taken.
    saving_ahead: Option<SaveAhead>,
}

impl Tso {
    /// The clock for the term of `serving`: the wall clock, held back to
    /// `tso.maxClockStep` past its anchor. Logs when it starts and stops
    /// being held back.
    fn now(&self, serving: &mut TsoServing) -> u64 {
        let (now, held_back) =
            self.guarded_clock(&serving.anchor, &serving.epoch, serving.held_back);
        serving.held_back = held_back;
        now
    }

    /// The wall clock, held back to `tso.maxClockStep` past `anchor`, and
    /// by how much it was held back. Logs and counts when it starts being
    /// held back (`before`: whether it already was), logs when it stops.
    fn guarded_clock(
        &self,
        anchor: &ClockAnchor,
        epoch: &Epoch,
        before: Option<u64>,
    ) -> (u64, Option<u64>) {
        let (now, held_back) = anchor.guard((self.clock)(), Instant::now(), &self.config);
        match (before, held_back) {
            (None, Some(ahead)) => {
                tracing::warn!(
                    role = epoch.role,
                    revision = epoch.revision,
                    ahead_ms = ahead,
                    "the clock runs {ahead} ms further ahead than the term's anchor (its \
                     predecessor's save, or its start) and the time since allow; the oracle \
                     keeps to tso.maxClockStep ({:?}) ahead of it",
                    self.config.max_clock_step
                );
                metrics::counter!(crate::telemetry::TSO_CLOCK_STEPS, "role" => epoch.role.clone())
                    .increment(1);
            }
            (Some(_), None) => tracing::info!(
                role = epoch.role,
                revision = epoch.revision,
                "the clock is back within tso.maxClockStep of the term's anchor"
            ),
            _ => {}
        }
        (now, held_back)
    }

    async fn allocate(&self, serving: &mut TsoServing, count: u32) -> Result<TsoBatch, TsoError> {
        if count == 0 || count > self.config.max_count {
            return Err(TsoError::BadCount {
                count,
                max: self.config.max_count,
            });
        }
        let now = self.now(serving);
        let start = next_batch(serving.physical, serving.logical, now, u64::from(count));
        // The saved bound is at most MAX_PHYSICAL and every physical handed
        // out lies below it.
        if start.physical >= MAX_PHYSICAL {
            return Err(TsoError::Exhausted {
                physical: start.physical,
            });
        }
        if let Some(ahead_ms) = pushed_too_far(serving.physical, start.physical, now, &self.config)
        {
            return Err(TsoError::AheadOfClock {
                ahead_ms,
                max_ms: millis(self.config.max_ahead),
            });
        }
        if serving
            .saving_ahead
            .as_ref()
            .is_some_and(SaveAhead::is_finished)
            && let Some(saving) = serving.saving_ahead.take()
            && let Some(outcome) = saving.finish().await
        {
            serving.saved_ahead(outcome);
        }
        if start.physical >= serving.upper_bound {
            // The save ahead has not landed yet (etcd slow or unreachable
            // for most of the window): wait for it, then save here if it
            // failed or falls short. Save first: if the write fails nothing
            // past the old bound was handed out, so a successor starting
            // above it stays ahead.
            metrics::counter!(crate::telemetry::TSO_SAVES_WAITED, "role" => serving.epoch.role.clone())
                .increment(1);
            if let Some(saving) = serving.saving_ahead.take()
                && let Some(outcome) = saving.finish().await
            {
                serving.saved_ahead(outcome);
            }
            if start.physical >= serving.upper_bound {
                let bound = next_bound(now, start.physical, &self.config);
                let saved =
                    save_upper_bound_retried(&serving.store, serving.upper_bound, move |_| bound)
                        .await?;
                serving.upper_bound = saved.bound;
            }
        }
        let first = compose(start.physical, start.logical).ok_or(TsoError::Exhausted {
            physical: start.physical,
        })?;
        serving.physical = start.physical;
        serving.logical = start.logical + u64::from(count);
        if serving.saving_ahead.is_none()
            && let Some(bound) =
                save_ahead_to(serving.upper_bound, serving.physical, now, &self.config)
        {
            serving.saving_ahead = Some(SaveAhead::start(
                serving.store.clone(),
                serving.upper_bound,
                bound,
            ));
        }
        Ok(TsoBatch {
            first,
            count,
            epoch: serving.epoch.revision,
        })
    }
}

/// A save ahead starts once this fraction (its inverse) of the saved
/// window is used: a sixth.
const SAVE_AHEAD_AFTER: u64 = 6;

/// The bound to save ahead of `upper_bound`, the one a term serves below,
/// when its clock reads `now` and its last batch was at `physical`; `None`
/// while the clock has used less than a sixth of the window. Then it saves
/// while the current bound still covers five sixths of the window (2.5 s
/// by default), so a pause of etcd that short (a leader election, at most
/// two election timeouts; a member's death) never reaches a caller: two
/// small writes a second by default. Measured from the clock, and asking
/// for a window past the clock ([`bound_for`]), not past the batches: a
/// term that starts above its predecessor's bound, ahead of the clock,
/// would otherwise save another window on top of it at once, and quick
/// takeovers would carry the oracle ever further ahead.
fn save_ahead_to(upper_bound: u64, physical: u64, now: u64, config: &TsoConfig) -> Option<u64> {
    let window = window_ms(config);
    let left = upper_bound.saturating_sub(now);
    let bound = bound_for(physical, now, config);
    (left < window - window / SAVE_AHEAD_AFTER && bound > upper_bound).then_some(bound)
}

/// The bound a save made at clock `now`, for a batch at `physical`, asks
/// for: a window past the batch, so callers who push the oracle ahead of
/// the clock (tso.maxAhead caps them) do not pay a save per millisecond.
fn next_bound(now: u64, physical: u64, config: &TsoConfig) -> u64 {
    now.max(physical)
        .saturating_add(window_ms(config))
        .min(MAX_PHYSICAL)
}

impl TsoServing {
    /// Takes the outcome of a save ahead: a landed bound extends the one
    /// this term serves below; a failure is logged, and the next
    /// allocation starts another.
    fn saved_ahead(&mut self, outcome: Result<Saved, TsoError>) {
        match outcome {
            Ok(saved) => self.upper_bound = self.upper_bound.max(saved.bound),
            Err(error) => tracing::warn!(
                role = self.epoch.role,
                revision = self.epoch.revision,
                upper_bound = self.upper_bound,
                "saving the timestamp upper bound ahead failed, the next allocation tries \
                 again: {error}"
            ),
        }
    }
}

/// A save of the next upper bound, running on its own while the term
/// serves below the current one; aborted if the term ends first (a fenced
/// write would fail anyway).
#[derive(Debug)]
struct SaveAhead(tokio::task::JoinHandle<Result<Saved, TsoError>>);

impl SaveAhead {
    /// Starts saving `bound` over `confirmed`, the bound the term serves below.
    fn start(store: FencedStore, confirmed: u64, bound: u64) -> Self {
        Self(tokio::spawn(async move {
            save_upper_bound_retried(&store, confirmed, move |_| bound).await
        }))
    }

    /// Whether the save has ended, so [`finish`](Self::finish) does not wait.
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the save to end; `None` if its task did not end normally
    /// (it cannot panic short of a bug), which the caller treats as a save
    /// that did not land.
    async fn finish(mut self) -> Option<Result<Saved, TsoError>> {
        (&mut self.0).await.ok()
    }
}

impl Drop for SaveAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long one attempt to save the bound may take before it is given up
/// and sent again: far above an etcd write's usual milliseconds, and short
/// against an etcd leader election, whose followers drop the proposals
/// they forwarded to the dead leader without answering, so one attempt
/// would wait out `etcd.requestTimeout`.
const SAVE_ATTEMPT_WITHIN: Duration = Duration::from_millis(500);

/// Attempts a save makes: each but the last within [`SAVE_ATTEMPT_WITHIN`],
/// the last within `etcd.requestTimeout`, so that a save etcd cannot take
/// fails with etcd's own error.
const SAVE_ATTEMPTS: u32 = 6;

/// [`save_upper_bound`], attempted again when an attempt has not answered
/// within [`SAVE_ATTEMPT_WITHIN`]. An attempt given up on may still land:
/// the compare-and-swap makes that harmless, the next attempt finds the
/// bound it wrote and keeps or extends it.
async fn save_upper_bound_retried(
    store: &FencedStore,
    confirmed: u64,
    wanted: impl Fn(u64) -> u64,
) -> Result<Saved, TsoError> {
    for _ in 1..SAVE_ATTEMPTS {
        if let Ok(outcome) = tokio::time::timeout(
            SAVE_ATTEMPT_WITHIN,
            save_upper_bound(store, confirmed, &wanted),
        )
        .await
        {
            return outcome;
        }
    }
    save_upper_bound(store, confirmed, &wanted).await
}

/// How many compare-and-swap rounds a save tries before it gives up.
const SAVE_ROUNDS: usize = 3;

/// What a save found and wrote.
#[derive(Debug, Clone, Copy)]
struct Saved {
    /// The bound etcd held when the save landed (or `confirmed`).
    found: u64,
    /// The bound etcd holds now.
    bound: u64,
}

/// Saves the bound `wanted(found)` by compare-and-swap over `confirmed`,
/// the bound this term last knew saved (0: none). A save whose client
/// gave up (a timeout) may still land later; guarded by the value it
/// expected, it can then never overwrite a later, larger bound. When the
/// guard fails, the value etcd holds (written by a late save of this
/// term: the fence keeps every other writer out) is read back: kept if it
/// already covers what it asks for, swapped otherwise, with the bound
/// asked for again from what was found.
async fn save_upper_bound(
    store: &FencedStore,
    confirmed: u64,
    wanted: impl Fn(u64) -> u64,
) -> Result<Saved, TsoError> {
    let mut found = confirmed;
    for _ in 0..SAVE_ROUNDS {
        let bound = wanted(found);
        let guard = if found == 0 {
            Guard::Absent {
                key: UPPER_BOUND_KEY.to_owned(),
            }
        } else {
            Guard::ValueIs {
                key: UPPER_BOUND_KEY.to_owned(),
                value: found.to_string().into_bytes(),
            }
        };
        let put = WriteOp::Put {
            key: UPPER_BOUND_KEY.to_owned(),
            value: bound.to_string().into_bytes(),
        };
        if store.txn(vec![guard], vec![put]).await? {
            return Ok(Saved { found, bound });
        }
        let current = match store.get(UPPER_BOUND_KEY).await? {
            Some(raw) => parse_bound(&raw)?,
            None => 0,
        };
        if current >= wanted(current) {
            return Ok(Saved {
                found: current,
                bound: current,
            });
        }
        found = current;
    }
    Err(TsoError::BoundContended)
}

/// A saved bound: decimal milliseconds that fit a timestamp's physical part.
fn parse_bound(raw: &[u8]) -> Result<u64, TsoError> {
    let parsed = std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.parse::<u64>().ok());
    match parsed {
        None => Err(TsoError::Corrupt {
            key: UPPER_BOUND_KEY,
            value: crate::service::shown::shown(&String::from_utf8_lossy(raw)),
        }),
        Some(value) if value > MAX_PHYSICAL => Err(TsoError::OutOfRange {
            key: UPPER_BOUND_KEY,
            value,
        }),
        Some(value) => Ok(value),
    }
}

impl Coordinator for Tso {
    type Meta = SavedBound;
    type Serving = TsoServing;
    type Request = TsoRequest;
    type Response = Result<TsoBatch, TsoError>;

    /// A standby follows each save as it arrives, to know when it was made.
    const INCREMENTAL: bool = true;

    fn decode(&self, snapshot: Snapshot) -> Result<SavedBound, BoxError> {
        let bound = match snapshot.entries.get(UPPER_BOUND_KEY) {
            Some(raw) => parse_bound(raw)?,
            None => 0,
        };
        // Read whole, the copy cannot tell when the bound was saved.
        Ok(SavedBound { bound, seen: None })
    }

    fn apply_change(&self, meta: &mut SavedBound, change: &MetaChange) -> Result<(), BoxError> {
        match change {
            MetaChange::Put { key, value } if key == UPPER_BOUND_KEY => {
                *meta = SavedBound {
                    bound: parse_bound(value)?,
                    seen: Some(Instant::now()),
                };
            }
            MetaChange::Delete { key } if key == UPPER_BOUND_KEY => *meta = SavedBound::default(),
            _ => {}
        }
        Ok(())
    }

    async fn activate(
        &self,
        epoch: Epoch,
        saved: SavedBound,
        store: FencedStore,
    ) -> Result<TsoServing, BoxError> {
        let anchor = ClockAnchor::at_activation(&saved, (self.clock)(), &self.config);
        let (now, held_back) = self.guarded_clock(&anchor, &epoch, None);
        // Above the bound etcd holds, which the compare-and-swap reads back
        // when it is not the one decoded: a predecessor handed out only
        // physicals below it.
        let config = &self.config;
        let saved_now = save_upper_bound_retried(&store, saved.bound, |found| {
            bound_for(base_above(found, now), now, config)
        })
        .await?;
        let base = base_above(saved_now.found, now);
        if base >= MAX_PHYSICAL {
            return Err(TsoError::Exhausted { physical: base }.into());
        }
        tracing::info!(
            role = epoch.role,
            revision = epoch.revision,
            saved = saved_now.found,
            base,
            upper_bound = saved_now.bound,
            "timestamp oracle serves from physical {base}ms"
        );
        Ok(TsoServing {
            physical: base,
            logical: 0,
            upper_bound: saved_now.bound,
            store,
            epoch,
            anchor,
            held_back,
            saving_ahead: None,
        })
    }

    async fn handle(&self, serving: &mut TsoServing, request: TsoRequest) -> Self::Response {
        match request {
            TsoRequest::Allocate { count } => self.allocate(serving, count).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn snapshot(value: Option<&[u8]>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        if let Some(value) = value {
            snapshot
                .entries
                .insert(UPPER_BOUND_KEY.to_owned(), value.to_vec());
        }
        snapshot
    }

    #[test]
    fn compose_and_split_are_inverse() {
        assert_eq!(compose(0, 0), Some(0));
        assert_eq!(compose(1, 0), Some(1 << 18));
        assert_eq!(compose(1, 5), Some((1 << 18) | 5));
        for (physical, logical) in [
            (0, MAX_LOGICAL),
            (1_700_000_000_000, 12345),
            (42, 0),
            (MAX_PHYSICAL, MAX_LOGICAL),
        ] {
            assert_eq!(
                compose(physical, logical).map(split),
                Some((physical, logical))
            );
        }
        // Later physical always wins over a larger logical.
        assert!(compose(2, 0) > compose(1, MAX_LOGICAL));
    }

    #[test]
    fn a_part_beyond_its_bits_composes_to_nothing_instead_of_wrapping() {
        assert_eq!(compose(MAX_PHYSICAL + 1, 0), None);
        assert_eq!(compose(u64::MAX, 0), None);
        assert_eq!(compose(1, MAX_LOGICAL + 1), None);
        // The bound a term saves never passes what a timestamp holds.
        let config = TsoConfig::default();
        assert_eq!(
            bound_for(MAX_PHYSICAL - 1, MAX_PHYSICAL - 1, &config),
            MAX_PHYSICAL
        );
        assert_eq!(bound_for(0, u64::MAX, &config), MAX_PHYSICAL);
    }

    #[test]
    fn a_clock_that_moved_forward_starts_a_fresh_millisecond() {
        let start = next_batch(100, 500, 105, 10);
        assert_eq!(
            start,
            Start {
                physical: 105,
                logical: 0
            }
        );
    }

    #[test]
    fn a_batch_that_fits_continues_the_current_millisecond() {
        let start = next_batch(100, 500, 100, 10);
        assert_eq!(
            start,
            Start {
                physical: 100,
                logical: 500
            }
        );
        // Exactly filling the millisecond still fits.
        let start = next_batch(100, LOGICAL_SLOTS - 10, 100, 10);
        assert_eq!(start.physical, 100);
    }

    #[test]
    fn logical_overflow_moves_to_the_next_millisecond() {
        let start = next_batch(100, LOGICAL_SLOTS - 9, 100, 10);
        assert_eq!(
            start,
            Start {
                physical: 101,
                logical: 0
            }
        );
        // Two largest batches in a row never share a millisecond.
        let first = next_batch(100, 0, 100, MAX_LOGICAL);
        let second = next_batch(
            first.physical,
            first.logical + MAX_LOGICAL,
            100,
            MAX_LOGICAL,
        );
        assert_eq!(second.physical, 101);
    }

    #[test]
    fn a_clock_that_went_backwards_is_ignored() {
        let start = next_batch(100, 7, 40, 3);
        assert_eq!(
            start,
            Start {
                physical: 100,
                logical: 7
            }
        );
        let start = next_batch(100, MAX_LOGICAL, 40, 3);
        assert_eq!(
            start,
            Start {
                physical: 101,
                logical: 0
            }
        );
    }

    #[test]
    fn batches_strictly_increase_whatever_the_clock_does() {
        let clock = [10, 10, 9, 3, 11, 11, 11, 2, 20, 19];
        let (mut physical, mut logical) = (10, 0);
        let mut last = None;
        for (step, now) in clock.into_iter().enumerate() {
            let count = if step % 2 == 0 { MAX_LOGICAL } else { 1 };
            let start = next_batch(physical, logical, now, count);
            let first = compose(start.physical, start.logical).unwrap();
            let end = start.logical + count - 1;
            assert!(end <= MAX_LOGICAL, "a batch left its millisecond");
            if let Some(last) = last {
                assert!(first > last, "step {step}: {first} after {last}");
            }
            last = Some(compose(start.physical, end).unwrap());
            (physical, logical) = (start.physical, start.logical + count);
        }
    }

    #[test]
    fn takeovers_quicker_than_the_window_keep_the_bound_a_window_from_the_clock() {
        let config = TsoConfig::default();
        let window = window_ms(&config);
        let mut now = 1_000_000;
        let mut saved = 0;
        // A takeover every 100 ms for a minute: each term starts above its
        // predecessor's bound and saves its own.
        for _ in 0..600 {
            let base = now.max(saved + 1);
            let bound = bound_for(base, now, &config);
            assert!(bound > base, "the term may hand out its base");
            assert!(bound > saved, "the bound only grows");
            saved = bound;
            now += 100;
        }
        assert!(
            saved <= now + window,
            "{} ms ahead after a minute",
            saved - now
        );
        // A base ahead of the clock moves the bound just past it.
        assert_eq!(bound_for(now + 20_000, now, &config), now + 20_001);
        assert_eq!(bound_for(now, now, &config), now + window);
    }

    #[test]
    fn the_bound_is_saved_ahead_from_the_clock_never_from_a_lead_over_it() {
        let config = TsoConfig::default(); // window 3 s
        let now = 1_700_000_000_000;
        // Fresh from a save: nothing to do.
        assert_eq!(save_ahead_to(now + 3000, now, now, &config), None);
        // A sixth of the window used by the clock: a window past the clock.
        assert_eq!(
            save_ahead_to(now + 2499, now, now, &config),
            Some(now + 3000)
        );
        // A term that took over above its predecessor's bound, a window
        // ahead of the clock, saved just above its base: nothing more until
        // the clock gets near, however quickly terms follow each other.
        let base = now + 3000;
        assert_eq!(save_ahead_to(base + 1, base, now, &config), None);
        // Callers who pushed the oracle up to its bound wait for a save
        // when they cross it; the clock alone decides the saves ahead.
        assert_eq!(save_ahead_to(now + 2800, now + 2799, now, &config), None);
    }

    #[test]
    fn callers_cannot_push_the_oracle_past_max_ahead_but_a_lead_it_has_is_kept() {
        let config = TsoConfig::default(); // maxAhead 10s
        let now = 1_000_000;
        // The clock moves it: never refused.
        assert_eq!(pushed_too_far(now - 5, now, now, &config), None);
        // An overflow push within the lead, and right at it.
        assert_eq!(pushed_too_far(now, now + 1, now, &config), None);
        assert_eq!(
            pushed_too_far(now + 9_999, now + 10_000, now, &config),
            None
        );
        // One millisecond past it.
        assert_eq!(
            pushed_too_far(now + 10_000, now + 10_001, now, &config),
            Some(10_001)
        );
        // A lead the oracle already has (a predecessor's clock, a clock
        // stepped back) is served within its millisecond.
        assert_eq!(
            pushed_too_far(now + 60_000, now + 60_000, now, &config),
            None
        );

        // Largest counts in a loop stop 10 s ahead, not hours.
        let (mut physical, mut logical) = (now, 0);
        let mut served = 0u64;
        for _ in 0..100_000 {
            let start = next_batch(physical, logical, now, MAX_LOGICAL);
            if pushed_too_far(physical, start.physical, now, &config).is_some() {
                break;
            }
            (physical, logical) = (start.physical, start.logical + MAX_LOGICAL);
            served += 1;
        }
        assert_eq!(physical, now + 10_000);
        assert_eq!(served, 10_001);
    }

    #[test]
    fn decode_reads_the_saved_bound_and_zero_when_absent() {
        let tso = Tso::new(TsoConfig::default());
        assert_eq!(tso.decode(snapshot(None)).unwrap(), SavedBound::default());
        assert_eq!(
            tso.decode(snapshot(Some(b"1700000000123"))).unwrap(),
            SavedBound {
                bound: 1_700_000_000_123,
                seen: None
            }
        );
    }

    #[test]
    fn a_save_followed_as_it_arrives_is_seen_and_other_keys_leave_it_alone() {
        let tso = Tso::new(TsoConfig::default());
        let mut saved = SavedBound::default();
        let before = Instant::now();
        let put = |key: &str, value: &[u8]| MetaChange::Put {
            key: key.to_owned(),
            value: value.to_vec(),
        };
        tso.apply_change(&mut saved, &put(UPPER_BOUND_KEY, b"42"))
            .unwrap();
        assert_eq!(saved.bound, 42);
        assert!(saved.seen.is_some_and(|seen| seen >= before));
        tso.apply_change(&mut saved, &put("other", b"x")).unwrap();
        assert_eq!(saved.bound, 42);
        assert!(
            tso.apply_change(&mut saved, &put(UPPER_BOUND_KEY, b"x"))
                .is_err()
        );
        let delete = MetaChange::Delete {
            key: UPPER_BOUND_KEY.to_owned(),
        };
        tso.apply_change(&mut saved, &delete).unwrap();
        assert_eq!(saved, SavedBound::default());
    }

    #[test]
    fn the_clock_is_followed_up_to_max_clock_step_past_its_anchor() {
        let config = TsoConfig::default(); // window 3s, maxClockStep 10s
        let start = Instant::now();
        let anchor = ClockAnchor {
            ms: 1_000_000,
            at: start,
        };
        let later = start + Duration::from_secs(5);
        // A clock that kept time, or went back, is followed.
        assert_eq!(anchor.guard(1_005_000, later, &config), (1_005_000, None));
        assert_eq!(anchor.guard(900_000, later, &config), (900_000, None));
        // Up to the step, and no further: a day's jump is held at it.
        assert_eq!(anchor.guard(1_015_000, later, &config), (1_015_000, None));
        assert_eq!(
            anchor.guard(1_005_000 + 86_400_000, later, &config),
            (1_015_000, Some(86_390_000))
        );

        // Anchored on a predecessor's save this node saw: its clock then
        // was at most a window behind the bound.
        let seen = SavedBound {
            bound: 2_000_000,
            seen: Some(start),
        };
        let anchor = ClockAnchor::at_activation(&seen, 99_999_999_999, &config);
        assert_eq!(anchor.ms, 1_997_000);
        assert_eq!(
            anchor.guard(99_999_999_999, start, &config),
            (2_007_000, Some(99_999_999_999 - 2_007_000))
        );
        // Without a save seen, this node's clock at activation.
        let unseen = SavedBound {
            bound: 2_000_000,
            seen: None,
        };
        let anchor = ClockAnchor::at_activation(&unseen, 5_000_000, &config);
        assert_eq!(
            anchor.guard(5_000_000, anchor.at, &config),
            (5_000_000, None)
        );
    }

    #[test]
    fn a_bound_beyond_46_bits_of_milliseconds_is_a_decode_error_naming_the_key() {
        let tso = Tso::new(TsoConfig::default());
        let largest = MAX_PHYSICAL.to_string();
        assert_eq!(
            tso.decode(snapshot(Some(largest.as_bytes())))
                .unwrap()
                .bound,
            MAX_PHYSICAL
        );
        assert_eq!(compose(MAX_PHYSICAL, 0).map(split), Some((MAX_PHYSICAL, 0)));
        for beyond in [MAX_PHYSICAL + 1, u64::MAX] {
            let text = beyond.to_string();
            let error = tso.decode(snapshot(Some(text.as_bytes()))).unwrap_err();
            let message = error.to_string();
            assert!(message.contains("upper_bound"), "{message}");
            assert!(message.contains(&text), "{message}");
        }
    }

    #[test]
    fn a_corrupt_bound_is_a_decode_error_naming_key_and_value() {
        let tso = Tso::new(TsoConfig::default());
        for bad in [&b"12x"[..], b"-5", b"", b"\xff\xfe"] {
            let error = tso.decode(snapshot(Some(bad))).unwrap_err();
            let text = error.to_string();
            assert!(text.contains("upper_bound"), "{text}");
            assert!(
                text.contains(&format!("{:?}", String::from_utf8_lossy(bad))),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        /// Any bytes in the saved-bound key decode to the number they spell
        /// (within 46 bits) or to an error naming the key, shown short.
        #[test]
        fn any_saved_bound_decodes_or_is_reported(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let tso = Tso::new(TsoConfig::default());
            match tso.decode(snapshot(Some(&raw))) {
                Ok(SavedBound { bound, .. }) => {
                    proptest::prop_assert!(bound <= MAX_PHYSICAL);
                    proptest::prop_assert_eq!(Some(bound), std::str::from_utf8(&raw).ok().and_then(|t| t.parse().ok()));
                }
                Err(error) => {
                    let text = error.to_string();
                    proptest::prop_assert!(text.contains("upper_bound"), "{}", text);
                    proptest::prop_assert!(text.len() < 1024, "{}", text);
                }
            }
        }

        /// A decimal bound within range always reads back as itself.
        #[test]
        fn a_decimal_bound_in_range_reads_back(bound in 0..=MAX_PHYSICAL) {
            let tso = Tso::new(TsoConfig::default());
            proptest::prop_assert_eq!(tso.decode(snapshot(Some(bound.to_string().as_bytes()))).unwrap().bound, bound);
        }
    }
}
