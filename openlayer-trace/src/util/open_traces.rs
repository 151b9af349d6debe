//! Bounds on traces while they are open (not yet completed): how many steps one trace
//! records, how much memory open traces hold, and how old the oldest one is.
//!
//! - A trace records at most `max_steps_per_trace` steps; later ones are not recorded but
//!   counted (`Stats::steps_dropped`), and the root carries the marker `stepsDropped`.
//!   A step not recorded is still entered (at `record::REFUSED`): what it logs and the
//!   steps under it are dropped too, not put on its parent.
//! - What open traces hold (their step records and JSON texts) counts in the queue's half
//!   of `queue_max_bytes`, and may take at most half of it (a quarter of the budget, so
//!   that a completed trace, whose buffers may have grown to twice what they hold, still
//!   fits in the queue): a step that does not fit is not recorded (counted the same way).
//! - Every open trace is registered by its start, so that `Stats` shows how many are open
//!   and the age of the oldest, and a rate-limited warning names a trace open longer than
//!   `open_trace_warn_after` (a root held open by a spawned loop that never ends).
//!
//! The costs on the hot path: two relaxed atomics per step, and one lock per trace to
//! register it at its root and one to forget it when it completes. The registry is split
//! into shards, a thread registering in its own, so that threads starting traces at once
//! (a server's workers, a trace per request) do not queue on one lock. A shard is a slab
//! of start times: registering takes a free slot, forgetting frees it, and neither
//! searches; the oldest start is looked for every [`CHECK_EVERY`] registrations.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::util::limits::{DEFAULT_MAX_STEPS, DEFAULT_WARN_AFTER};

static MAX_STEPS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_STEPS);
/// The most bytes open traces may hold (a quarter of `queue_max_bytes`).
static MAX_BYTES: AtomicUsize = AtomicUsize::new(32 * 1024 * 1024);
static WARN_AFTER_NS: AtomicU64 = AtomicU64::new(DEFAULT_WARN_AFTER.as_nanos() as u64);
/// The most bytes of output a traced stream accumulates (see [`stream_output_max`]).
static STREAM_OUTPUT_MAX: AtomicUsize = AtomicUsize::new(512 * 1024);
/// Bytes held by open traces now.
static HELD: AtomicUsize = AtomicUsize::new(0);
static STEPS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// How many shards the registry of open traces has (a power of two).
const SHARDS: usize = 16;

/// How often (in registrations in one shard) the oldest open trace is looked for.
const CHECK_EVERY: u32 = 64;

/// One shard of the registry: the start of each open trace (on the monotonic clock), by
/// slot. A trace's key is `(slot + 1) * SHARDS + shard`.
struct Shard {
    starts: Vec<i64>,
    /// Slots not in use.
    free: Vec<u32>,
    count: usize,
    /// Registrations since the oldest was last looked for.
    since_check: u32,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            starts: Vec::new(),
            free: Vec::new(),
            count: 0,
            since_check: 0,
        }
    }

    /// The earliest start in this shard.
    fn oldest(&self) -> Option<i64> {
        if self.count == 0 {
            return None;
        }
        self.starts.iter().copied().filter(|s| *s != FREE).min()
    }
}

/// A free slot's start.
const FREE: i64 = i64::MAX;

/// The open traces, in shards.
static OPEN: [Mutex<Shard>; SHARDS] = [const { Mutex::new(Shard::new()) }; SHARDS];

/// The next shard given to a thread that registers its first trace.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard of the registry.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

fn shard(i: usize) -> std::sync::MutexGuard<'static, Shard> {
    OPEN[i % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies a configuration's bounds (at `init` or lazy configuration).
pub(crate) fn configure(
    max_steps: usize,
    queue_max_bytes: usize,
    batch_max_bytes: usize,
    warn_after: Duration,
) {
    MAX_STEPS.store(max_steps.max(1), Relaxed);
    MAX_BYTES.store((queue_max_bytes / 4).max(1), Relaxed);
    // An eighth of a request: a root's output appears twice in its row (its `output` and
    // its step's), JSON escaping may grow it, and the row has other columns. At most a
    // quarter of what open traces may hold.
    STREAM_OUTPUT_MAX.store(
        (batch_max_bytes / 8).min(queue_max_bytes / 16).max(128),
        Relaxed,
    );
    WARN_AFTER_NS.store(
        u64::try_from(warn_after.as_nanos()).unwrap_or(u64::MAX),
        Relaxed,
    );
}

/// The most bytes of output the default stream accumulator keeps: an eighth of
/// `batch_max_bytes`, and at most a sixteenth of `queue_max_bytes` (512 KiB by default).
/// Items past it are counted, not kept, so that a stream that never ends holds bounded
/// memory and its row still fits in a request.
#[inline]
pub(crate) fn stream_output_max() -> usize {
    STREAM_OUTPUT_MAX.load(Relaxed)
}

/// Bytes held by open traces now (counted in the queue's share of the budget).
pub(crate) fn held() -> usize {
    HELD.load(Relaxed)
}

/// Whether a trace with `steps` steps may record one more that holds `bytes`; if so, they
/// are counted as held. If not, the step is counted as dropped.
#[inline]
pub(crate) fn admit(steps: usize, bytes: usize) -> bool {
    // Read once: an `init` on another thread may change it meanwhile, and the take-back
    // below must match the add above (a take-back without its add wrapped the count).
    let under = steps < MAX_STEPS.load(Relaxed);
    let fits =
        under && HELD.fetch_add(bytes, Relaxed).saturating_add(bytes) <= MAX_BYTES.load(Relaxed);
    if !fits {
        if under {
            HELD.fetch_sub(bytes, Relaxed);
        }
        STEPS_DROPPED.fetch_add(1, Relaxed);
    }
    fits
}

/// Whether open traces may hold `bytes` more (a step's output, a logged output); if so,
/// they are counted as held. Unlike [`admit`], a refusal counts no step.
#[inline]
pub(crate) fn admit_bytes(bytes: usize) -> bool {
    let fits = HELD.fetch_add(bytes, Relaxed).saturating_add(bytes) <= MAX_BYTES.load(Relaxed);
    if !fits {
        HELD.fetch_sub(bytes, Relaxed);
    }
    fits
}

/// The JSON text recorded in place of a value (an output, a logged output, a span's
/// inputs recorded later) of `bytes` that open traces had no room for (a string, so that
/// the row shows what happened).
pub(crate) fn left_out_marker(bytes: usize) -> String {
    format!(
        "\"…[{bytes} bytes left out: traces still open hold the most memory queue_max_bytes allows them]\""
    )
}

/// Counts a step not recorded without asking [`admit`] (its parent was not recorded).
#[cold]
pub(crate) fn dropped() {
    STEPS_DROPPED.fetch_add(1, Relaxed);
}

/// Counts `bytes` more held by an open trace (an output recorded at a step's end).
#[inline]
pub(crate) fn hold(bytes: usize) {
    HELD.fetch_add(bytes, Relaxed);
}

/// Registers a trace that starts at the clock reading `start`; returns its key (never 0,
/// which means "not registered") and, every so often, the age of the oldest open trace,
/// for [`warn_if_older`] once the caller has released the trace's lock (the warning runs
/// the application's `tracing` subscribers, which may call back into the SDK).
pub(crate) fn opened(start: i64) -> (u64, Option<i64>) {
    let i = SHARD.try_with(|s| *s).unwrap_or(0);
    let mut open = shard(i);
    let slot = match open.free.pop() {
        Some(slot) => {
            open.starts[slot as usize] = start;
            slot as usize
        }
        None => {
            open.starts.push(start);
            open.starts.len() - 1
        }
    };
    open.count += 1;
    open.since_check += 1;
    let check = open.since_check >= CHECK_EVERY;
    if check {
        open.since_check = 0;
    }
    drop(open);
    // Every so often, the oldest of all shards, so that a trace left open in the shard of
    // a thread that starts no more traces is still found. `start` was read just now: its
    // age without another clock read.
    let oldest_age = if check {
        (0..SHARDS)
            .filter_map(|i| shard(i).oldest())
            .min()
            .map(|oldest| start.saturating_sub(oldest))
    } else {
        None
    };
    ((slot as u64 + 1) * SHARDS as u64 + i as u64, oldest_age)
}

/// Forgets a completed trace (registered at `start` under `key`) and what it held.
pub(crate) fn completed(start: i64, key: u64, held: usize) {
    HELD.fetch_sub(held.min(HELD.load(Relaxed)), Relaxed);
    if key == 0 {
        return;
    }
    let slot = (key / SHARDS as u64 - 1) as usize;
    let mut open = shard((key % SHARDS as u64) as usize);
    debug_assert_eq!(open.starts.get(slot), Some(&start));
    if open.starts.get(slot).is_some_and(|s| *s != FREE) {
        open.starts[slot] = FREE;
        open.count -= 1;
        if open.count == 0 {
            // Everything is free: the slab starts over (and gives back what a burst took).
            open.starts.clear();
            open.free.clear();
            if open.starts.capacity() > 1024 {
                open.starts.shrink_to(1024);
                open.free.shrink_to(1024);
            }
        } else {
            open.free.push(slot as u32);
        }
    }
}

/// Open traces now, the age of the oldest, and the steps dropped so far.
pub(crate) fn snapshot() -> (u64, Duration, u64) {
    let (mut count, mut oldest) = (0, None::<i64>);
    for i in 0..SHARDS {
        let open = shard(i);
        count += open.count as u64;
        if let Some(s) = open.oldest() {
            oldest = Some(oldest.map_or(s, |o| o.min(s)));
        }
    }
    let age = oldest.map_or(Duration::ZERO, age_of);
    if let Some(oldest) = oldest {
        warn_if_old(oldest);
    }
    (count, age, STEPS_DROPPED.load(Relaxed))
}

fn age_of(start: i64) -> Duration {
    Duration::from_nanos(
        u64::try_from(crate::util::clock::now().saturating_sub(start)).unwrap_or(0),
    )
}

fn warn_if_old(oldest: i64) {
    warn_if_older(crate::util::clock::now().saturating_sub(oldest));
}

/// Warns (rate-limited) when the oldest open trace's age, `age_ns`, is over the bound.
/// Never called with a trace's lock held.
pub(crate) fn warn_if_older(age_ns: i64) {
    let age_ns = u64::try_from(age_ns).unwrap_or(0);
    if age_ns > WARN_AFTER_NS.load(Relaxed) {
        crate::util::diag::warn_limited!(
            age_secs = Duration::from_nanos(age_ns).as_secs_f64(),
            "a trace has been open for a long time (its root, or work spawned in it, has not \
             ended); it holds memory and is not delivered until it completes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(start: i64, key: u64) -> bool {
        let slot = (key / SHARDS as u64 - 1) as usize;
        shard((key % SHARDS as u64) as usize).starts.get(slot) == Some(&start)
    }

    /// Traces registered on many threads land in several shards, are all seen by the
    /// snapshot, and are forgotten when completed on another thread.
    #[test]
    fn shards_register_snapshot_and_forget_across_threads() {
        // Starts far in the past, so that these are the oldest open traces whatever
        // other tests run meanwhile.
        let base = -(1i64 << 60);
        let keys: Vec<(i64, u64)> = (0..(2 * SHARDS) as i64)
            .map(|k| std::thread::spawn(move || (base + k, opened(base + k).0)))
            .map(|h| h.join().unwrap())
            .collect();
        let shards: std::collections::BTreeSet<u64> =
            keys.iter().map(|(_, key)| key % SHARDS as u64).collect();
        assert!(
            shards.len() > 1,
            "all threads registered in one shard: {shards:?}"
        );
        for (start, key) in &keys {
            assert_ne!(*key, 0);
            assert!(registered(*start, *key));
        }
        let (count, age, _) = snapshot();
        assert!(count >= keys.len() as u64);
        assert!(age >= Duration::from_nanos(1 << 59), "oldest age {age:?}");
        for (start, key) in &keys {
            completed(*start, *key, 0);
            assert!(!registered(*start, *key));
        }
    }
}
