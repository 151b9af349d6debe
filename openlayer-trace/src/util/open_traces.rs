//! Bounds on traces while they are open (not yet completed): how many steps one trace
//! records, how much memory open traces hold, and how old the oldest one is.
//!
//! - A trace records at most `max_steps_per_trace` steps; later ones are not recorded but
//!   counted (`Stats::steps_dropped`), and the root carries the marker `stepsDropped`.
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
//! (a server's workers, a trace per request) do not queue on one lock.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::util::limits::{DEFAULT_MAX_STEPS, DEFAULT_WARN_AFTER};

static MAX_STEPS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_STEPS);
/// The most bytes open traces may hold (a quarter of `queue_max_bytes`).
static MAX_BYTES: AtomicUsize = AtomicUsize::new(32 * 1024 * 1024);
static WARN_AFTER_NS: AtomicU64 = AtomicU64::new(DEFAULT_WARN_AFTER.as_nanos() as u64);
/// Bytes held by open traces now.
static HELD: AtomicUsize = AtomicUsize::new(0);
static STEPS_DROPPED: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(1);
/// How many shards the registry of open traces has (a power of two).
const SHARDS: usize = 16;

/// The open traces, by (start on the monotonic clock, sequence number), in shards; a
/// trace's key says its shard (`seq % SHARDS`).
static OPEN: [Mutex<BTreeSet<(i64, u64)>>; SHARDS] =
    [const { Mutex::new(BTreeSet::new()) }; SHARDS];

/// The next shard given to a thread that registers its first trace.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard of the registry.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

fn shard(i: usize) -> std::sync::MutexGuard<'static, BTreeSet<(i64, u64)>> {
    OPEN[i % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies a configuration's bounds (at `init` or lazy configuration).
pub(crate) fn configure(max_steps: usize, queue_max_bytes: usize, warn_after: Duration) {
    MAX_STEPS.store(max_steps.max(1), Relaxed);
    MAX_BYTES.store((queue_max_bytes / 4).max(1), Relaxed);
    WARN_AFTER_NS.store(
        u64::try_from(warn_after.as_nanos()).unwrap_or(u64::MAX),
        Relaxed,
    );
}

/// Bytes held by open traces now (counted in the queue's share of the budget).
pub(crate) fn held() -> usize {
    HELD.load(Relaxed)
}

/// Whether a trace with `steps` steps may record one more that holds `bytes`; if so, they
/// are counted as held. If not, the step is counted as dropped.
#[inline]
pub(crate) fn admit(steps: usize, bytes: usize) -> bool {
    let fits = steps < MAX_STEPS.load(Relaxed)
        && HELD.fetch_add(bytes, Relaxed).saturating_add(bytes) <= MAX_BYTES.load(Relaxed);
    if !fits {
        if steps < MAX_STEPS.load(Relaxed) {
            HELD.fetch_sub(bytes, Relaxed);
        }
        STEPS_DROPPED.fetch_add(1, Relaxed);
    }
    fits
}

/// Counts `bytes` more held by an open trace (an output recorded at a step's end).
#[inline]
pub(crate) fn hold(bytes: usize) {
    HELD.fetch_add(bytes, Relaxed);
}

/// Registers a trace that starts at the clock reading `start`; returns its key.
pub(crate) fn opened(start: i64) -> u64 {
    let i = SHARD.try_with(|s| *s).unwrap_or(0);
    // The key: a sequence number whose remainder by SHARDS is the shard (never 0, which
    // means "not registered"). Per shard the numbers only need to be unique.
    let seq = SEQ.fetch_add(1, Relaxed) * SHARDS as u64 + i as u64 + SHARDS as u64;
    let mut open = shard(i);
    open.insert((start, seq));
    let oldest = open.first().map(|(s, _)| *s);
    drop(open);
    // `start` was read just now: the age of this shard's oldest, without another clock
    // read. Every 64th trace looks at all shards, so that a trace left open in the shard
    // of a thread that starts no more traces is still found.
    if let Some(oldest) = oldest {
        warn_if_older(start.saturating_sub(oldest));
    }
    if (seq / SHARDS as u64).is_multiple_of(64) {
        let oldest = (0..SHARDS)
            .filter_map(|i| shard(i).first().map(|(s, _)| *s))
            .min();
        if let Some(oldest) = oldest {
            warn_if_older(start.saturating_sub(oldest));
        }
    }
    seq
}

/// Forgets a completed trace and what it held.
pub(crate) fn completed(start: i64, seq: u64, held: usize) {
    HELD.fetch_sub(held.min(HELD.load(Relaxed)), Relaxed);
    if seq != 0 {
        shard((seq % SHARDS as u64) as usize).remove(&(start, seq));
    }
}

/// Open traces now, the age of the oldest, and the steps dropped so far.
pub(crate) fn snapshot() -> (u64, Duration, u64) {
    let (mut count, mut oldest) = (0, None::<i64>);
    for i in 0..SHARDS {
        let open = shard(i);
        count += open.len() as u64;
        if let Some((s, _)) = open.first() {
            oldest = Some(oldest.map_or(*s, |o| o.min(*s)));
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
fn warn_if_older(age_ns: i64) {
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
        (0..SHARDS).any(|i| shard(i).contains(&(start, key)))
    }

    /// Traces registered on many threads land in several shards, are all seen by the
    /// snapshot, and are forgotten when completed on another thread.
    #[test]
    fn shards_register_snapshot_and_forget_across_threads() {
        // Starts far in the past, so that these are the oldest open traces whatever
        // other tests run meanwhile.
        let base = -(1i64 << 60);
        let keys: Vec<(i64, u64)> = (0..(2 * SHARDS) as i64)
            .map(|k| std::thread::spawn(move || (base + k, opened(base + k))))
            .map(|h| h.join().unwrap())
            .collect();
        let shards: BTreeSet<u64> = keys.iter().map(|(_, key)| key % SHARDS as u64).collect();
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
