//! The buffer pool: a trace's step list and text are allocated once and reused. The
//! worker hands them back after encoding, so a new trace neither allocates them on the
//! application's thread nor has them freed on another thread.

use std::cell::RefCell;
use std::sync::Mutex;

use crate::record::step::StepRecord;
use crate::record::trace::{TraceExtra, TraceState};

// ---------------------------------------------------------------------------------------
// Buffers: the step list and text of a trace are allocated once and reused. The worker hands
// them back after encoding, so a new trace neither allocates them on the application's
// thread nor has them freed on another thread (which makes the allocator contend).

/// A trace's step list, its text, and its rarely set parts (when a trace had them).
type Buffers = (Vec<StepRecord>, String, Option<Box<TraceExtra>>);

/// The buffers kept for reuse, and the bytes they hold.
struct Pool {
    free: Vec<Buffers>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// Most bytes of buffers kept for reuse. The worker hands buffers back after a drain, and
/// it drains once a millisecond: an application completing a trace a microsecond has a
/// thousand traces' buffers out at a time, and each one it cannot reuse is allocated on
/// its own thread and freed on the worker's. (Each tracing thread also holds up to
/// [`BATCH`] buffers taken from the pool and not used yet.)
const POOL_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Buffers that grew beyond these are freed rather than kept.
const STEPS_KEEP: usize = 256;
const TEXT_KEEP: usize = 64 * 1024;
/// Rarely set parts whose lists grew beyond this many entries are freed rather than kept.
const EXTRA_KEEP: usize = 16;

/// The bytes a step list and text buffer hold.
fn buffer_bytes(b: &Buffers) -> usize {
    b.0.capacity() * std::mem::size_of::<StepRecord>()
        + b.1.capacity()
        + b.2
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<TraceExtra>())
}

/// Most buffers a thread takes from the pool at a time.
const BATCH: usize = 16;

/// Most bytes of buffers a thread takes from the pool at a time (but always one buffer):
/// what a thread holds unused is not counted in the pool's bound, and a thread that stops
/// tracing keeps it until it ends (a large pool of mostly idle threads).
const BATCH_MAX_BYTES: usize = 64 * 1024;

/// Buffers this thread took from the pool and has not used yet: the pool's lock is taken
/// once per batch rather than once per trace. The batch starts at one buffer and doubles
/// up to [`BATCH`] as the thread keeps tracing, so that a short-lived thread does not empty
/// the pool; what is left when the thread ends goes back to the pool.
struct Taken {
    free: Vec<Buffers>,
    batch: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        for b in self.free.drain(..) {
            give_back(b);
        }
    }
}

thread_local! {
    static TAKEN: RefCell<Taken> = const {
        RefCell::new(Taken {
            free: Vec::new(),
            batch: 1,
        })
    };
}

/// A step list and text buffer for a new trace: reused ones if the pool has any (and is
/// not busy), else fresh ones.
pub(crate) fn reused_buffers() -> Buffers {
    let reused = TAKEN.try_with(|taken| {
        let mut taken = taken.try_borrow_mut().ok()?;
        if taken.free.is_empty()
            && let Ok(mut pool) = POOL.try_lock()
        {
            let len = pool.free.len();
            let (mut at, mut bytes) = (len, 0);
            while at > 0 && len - at < taken.batch {
                let b = buffer_bytes(&pool.free[at - 1]);
                if at < len && bytes + b > BATCH_MAX_BYTES {
                    break;
                }
                bytes += b;
                at -= 1;
            }
            pool.bytes -= bytes;
            taken.free.extend(pool.free.drain(at..));
            taken.batch = (taken.batch * 2).min(BATCH);
        }
        taken.free.pop()
    });
    reused
        .ok()
        .flatten()
        .unwrap_or_else(|| (Vec::with_capacity(8), String::with_capacity(512), None))
}

/// Hands the buffers of a completed trace back for reuse (after emptying them).
pub(crate) fn recycle(state: &mut TraceState) {
    if let Some(b) = emptied(state) {
        give_back(b);
    }
}

/// The buffers of completed traces, gathered by the worker as it encodes them and put in
/// the pool a group at a time: one lock for the group rather than one per trace (the
/// producers take from the pool under the same lock). Put in at the latest when
/// [`flush`](Self::flush)ed or dropped.
#[derive(Default)]
pub(crate) struct Returns(Vec<Buffers>);

impl Returns {
    /// Buffers put in the pool at once.
    const GROUP: usize = 32;

    /// Takes the buffers of a completed trace, emptied, for the pool.
    pub(crate) fn recycle(&mut self, state: &mut TraceState) {
        if let Some(b) = emptied(state) {
            self.0.push(b);
            if self.0.len() >= Self::GROUP {
                self.flush();
            }
        }
    }

    /// Puts what was gathered in the pool now (what it has no room for is freed).
    pub(crate) fn flush(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = self.0.drain(..);
        for b in rest.by_ref() {
            let bytes = buffer_bytes(&b);
            if pool.bytes + bytes > POOL_MAX_BYTES {
                // No room: this one and the rest are freed after the lock is let go.
                drop(pool);
                drop(b);
                return;
            }
            pool.bytes += bytes;
            pool.free.push(b);
        }
    }
}

impl Drop for Returns {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The buffers of a completed trace, emptied; `None` when they grew too big to keep.
fn emptied(state: &mut TraceState) -> Option<Buffers> {
    let (mut steps, mut text, mut extra) = (
        std::mem::take(&mut state.steps),
        std::mem::take(&mut state.text),
        state.extra.take(),
    );
    if steps.capacity() > STEPS_KEEP || text.capacity() > TEXT_KEEP {
        return None;
    }
    steps.clear();
    text.clear();
    // Kept (emptied) when a trace had them, so that the next one to need them does not
    // allocate them on its thread (to be freed on the worker's).
    if let Some(e) = &mut extra {
        if e.columns.capacity() > EXTRA_KEEP || e.updates.capacity() > EXTRA_KEEP {
            extra = None;
        } else {
            e.clear();
        }
    }
    Some((steps, text, extra))
}

/// Puts emptied buffers in the pool, if it has room for them.
fn give_back(b: Buffers) {
    let bytes = buffer_bytes(&b);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.bytes + bytes <= POOL_MAX_BYTES {
        pool.bytes += bytes;
        pool.free.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread takes at most [`BATCH_MAX_BYTES`] of buffers from the pool at a time
    /// (but one buffer), however large the buffers in the pool are.
    #[test]
    fn a_thread_holds_a_bounded_batch_of_large_buffers() {
        std::thread::spawn(|| {
            let large = || {
                (
                    Vec::with_capacity(STEPS_KEEP),
                    String::with_capacity(60 * 1024),
                    None,
                )
            };
            for _ in 0..64 {
                for _ in 0..BATCH {
                    give_back(large());
                }
                let _ = reused_buffers();
                let held: usize = TAKEN.with(|t| t.borrow().free.iter().map(buffer_bytes).sum());
                let one = buffer_bytes(&large());
                assert!(held <= BATCH_MAX_BYTES.max(one), "{held} bytes held unused");
            }
        })
        .join()
        .unwrap();
    }
}
