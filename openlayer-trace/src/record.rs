//! The flat records a traced call writes: one [`StepRecord`] per step, in start order,
//! inside the [`TraceState`] of its trace. Building the tree and encoding JSON happen later,
//! off the application's threads (see `wire`).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::diag::warn_limited;
use crate::kind::StepKind;

/// A JSON text we produced ourselves (so it is known to be valid), embedded verbatim.
pub(crate) type Json = Box<str>;

/// No parent: the root step.
pub(crate) const NO_PARENT: u32 = u32::MAX;

thread_local! {
    /// A reusable buffer to serialize into, so that a value costs one exact allocation
    /// (or none, when it is copied into its trace's text) instead of a growing one.
    static SCRATCH: Cell<String> = const { Cell::new(String::new()) };
}

/// Runs `f` with this thread's scratch buffer, empty. A nested call (a `Serialize` impl
/// that traces) gets a fresh buffer instead.
#[inline]
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut String) -> R) -> R {
    let mut buf = take_scratch();
    let r = f(&mut buf);
    give_scratch(buf);
    r
}

/// Takes this thread's scratch buffer, empty (a new one if it is in use).
#[inline]
pub(crate) fn take_scratch() -> String {
    let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    buf
}

/// Gives a buffer taken with [`take_scratch`] back (or a larger one in its place).
#[inline]
pub(crate) fn give_scratch(buf: String) {
    if buf.capacity() <= SCRATCH_MAX {
        let _ = SCRATCH.try_with(|c| {
            let prev = c.take();
            c.set(if prev.capacity() > buf.capacity() {
                prev
            } else {
                buf
            });
        });
    }
}

/// The largest scratch buffer a thread keeps.
const SCRATCH_MAX: usize = 64 * 1024;

/// Serializes `value` into `out` (appending). On failure `out` is left as it was.
pub(crate) fn write_json<T: Serialize + ?Sized>(
    out: &mut String,
    value: &T,
) -> Result<(), serde_json::Error> {
    let mark = out.len();
    // SAFETY: serde_json writes valid UTF-8 only, and on error the partial write is cut
    // off at `mark`, a char boundary, before the string is used again.
    let bytes = unsafe { out.as_mut_vec() };
    let r = crate::json::to_vec(bytes, value);
    if r.is_err() {
        bytes.truncate(mark);
    }
    r
}

/// Serializes a value to JSON text. A value that fails to serialize is logged and skipped.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Option<Json> {
    with_scratch(|buf| match write_json(buf, value) {
        Ok(()) => Some(Box::from(buf.as_str())),
        Err(e) => {
            warn_limited!(error = %e, "a traced value could not be serialized; recorded as null");
            None
        }
    })
}

/// A JSON text kept in its trace's [`TraceState::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TextRef {
    start: u32,
    len: u32,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Open,
    Ok,
    Error,
    Panicked,
    Cancelled,
}

/// One step, flat: its parent is an index into the trace's step list.
#[derive(Debug)]
pub(crate) struct StepRecord {
    pub id: u128,
    pub parent: u32,
    pub name: Cow<'static, str>,
    pub kind: StepKind,
    /// Whether the step came from `#[trace]` (which adds `has_guardrails: false`).
    pub traced_fn: bool,
    pub status: Status,
    /// Start and end, in nanoseconds from the trace's anchor.
    pub start: i64,
    pub end: i64,
    /// A JSON object of the captured inputs, in parameter order (in the trace's text).
    pub inputs: Option<TextRef>,
    /// The output (in the trace's text).
    pub output: Option<TextRef>,
    /// What few steps have, boxed so that a step record stays small (96 bytes) to write,
    /// move and keep.
    pub extra: Option<Box<StepExtra>>,
}

/// The rarely set parts of a step.
#[derive(Debug, Default)]
pub(crate) struct StepExtra {
    pub ground_truth: Option<Json>,
    pub metadata: Vec<(Cow<'static, str>, Json)>,
    /// The kind's extra fields, by wire name.
    pub fields: Vec<(&'static str, Json)>,
    /// The error text (metadata `Exceptions`).
    pub error: Option<Box<str>>,
    /// The output was set with `log_output`: what the step returns does not replace it.
    pub output_logged: bool,
}

impl StepRecord {
    pub(crate) fn new(name: Cow<'static, str>, kind: StepKind, parent: u32, start: i64) -> Self {
        StepRecord {
            id: crate::id::next_id(),
            parent,
            name,
            kind,
            traced_fn: false,
            status: Status::Open,
            start,
            end: start,
            inputs: None,
            output: None,
            extra: None,
        }
    }

    /// The rarely set parts, created on first use.
    pub(crate) fn extra_mut(&mut self) -> &mut StepExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The step's metadata, in the order first set.
    pub(crate) fn metadata(&self) -> &[(Cow<'static, str>, Json)] {
        self.extra.as_ref().map_or(&[], |e| &e.metadata)
    }

    /// The error text (metadata `Exceptions`).
    pub(crate) fn error(&self) -> Option<&str> {
        self.extra.as_ref()?.error.as_deref()
    }

    /// The step's ground truth (JSON).
    pub(crate) fn ground_truth(&self) -> Option<&str> {
        self.extra.as_ref()?.ground_truth.as_deref()
    }

    /// Sets a metadata key; the last write wins.
    pub(crate) fn set_metadata(&mut self, key: Cow<'static, str>, value: Json) {
        upsert(&mut self.extra_mut().metadata, key, value);
    }

    /// Sets a kind field; the last write wins.
    pub(crate) fn set_field(&mut self, key: &'static str, value: Json) {
        let fields = &mut self.extra_mut().fields;
        match fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => fields.push((key, value)),
        }
    }

    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        self.extra
            .as_ref()?
            .fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| &**v)
    }

    /// Heap bytes this step holds beyond its own size (which its trace's step list
    /// counts), each allocation as the allocator hands it out (`pipeline::heap_bytes`).
    #[inline]
    pub(crate) fn approx_bytes(&self) -> usize {
        use crate::pipeline::cow_heap_bytes;
        // Most steps hold nothing of their own but their name.
        cow_heap_bytes(&self.name) + self.extra.as_ref().map_or(0, |e| e.approx_bytes())
    }
}

impl StepExtra {
    #[cold]
    fn approx_bytes(&self) -> usize {
        use crate::pipeline::{cow_heap_bytes, heap_bytes};
        heap_bytes(size_of::<StepExtra>())
            + self
                .ground_truth
                .as_ref()
                .map_or(0, |j| heap_bytes(j.len()))
            + heap_bytes(self.metadata.capacity() * size_of::<(Cow<'static, str>, Json)>())
            + self
                .metadata
                .iter()
                .map(|(k, v)| cow_heap_bytes(k) + heap_bytes(v.len()))
                .sum::<usize>()
            + heap_bytes(self.fields.capacity() * size_of::<(&'static str, Json)>())
            + self
                .fields
                .iter()
                .map(|(_, v)| heap_bytes(v.len()))
                .sum::<usize>()
            + self.error.as_ref().map_or(0, |e| heap_bytes(e.len()))
    }
}

/// Inserts or replaces `key`, keeping the first insertion's position.
pub(crate) fn upsert<K: PartialEq>(list: &mut Vec<(K, Json)>, key: K, value: Json) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key, value)),
    }
}

/// Everything recorded for one trace.
#[derive(Debug, Default)]
pub(crate) struct TraceState {
    pub steps: Vec<StepRecord>,
    /// The JSON texts of the steps' inputs and outputs, back to back: one buffer per trace
    /// instead of two allocations per step (see [`TextRef`]).
    pub text: String,
    /// Open steps plus live handles (spawned work) that keep the trace from completing.
    pub open: u32,
    pub root_closed: bool,
    pub shipped: bool,
    pub inference_id: Option<Box<str>>,
    /// Columns set with `update_current_trace` (other than the inference id), in order.
    pub columns: Vec<(Cow<'static, str>, Json)>,
    /// `context` and `_question`, set with `log_context` / `log_question`.
    pub context: Option<Json>,
    pub question: Option<Json>,
    pub pipeline_id: Option<Cow<'static, str>>,
    /// Row updates of this trace's own row, made before it completed: they are handed off
    /// right behind it (see `crate::update_row`).
    pub updates: Vec<crate::wire::OutUpdate>,
}

impl TraceState {
    /// Appends a JSON text to the trace's text.
    pub(crate) fn push_text(&mut self, json: &str) -> Option<TextRef> {
        let start = u32::try_from(self.text.len()).ok()?;
        let len = u32::try_from(json.len()).ok()?;
        start.checked_add(len)?;
        self.text.push_str(json);
        Some(TextRef { start, len })
    }

    /// A JSON text of the trace's text.
    pub(crate) fn text(&self, r: Option<TextRef>) -> Option<&str> {
        let r = r?;
        self.text
            .get(r.start as usize..r.start as usize + r.len as usize)
    }

    /// The inputs of a step of this trace.
    pub(crate) fn inputs(&self, rec: &StepRecord) -> Option<&str> {
        self.text(rec.inputs)
    }

    /// The output of a step of this trace.
    pub(crate) fn output(&self, rec: &StepRecord) -> Option<&str> {
        self.text(rec.output)
    }

    /// Heap bytes this trace's records hold, not counting the state itself: the step
    /// list and the text buffer by capacity, every string and list the steps and the trace
    /// own, each allocation as the allocator hands it out (`pipeline::heap_bytes`).
    pub(crate) fn approx_bytes(&self) -> usize {
        use crate::pipeline::{cow_heap_bytes, heap_bytes};
        let json = |j: &Option<Json>| j.as_ref().map_or(0, |j| heap_bytes(j.len()));
        heap_bytes(self.steps.capacity() * size_of::<StepRecord>())
            + self
                .steps
                .iter()
                .map(StepRecord::approx_bytes)
                .sum::<usize>()
            + heap_bytes(self.text.capacity())
            + self
                .inference_id
                .as_ref()
                .map_or(0, |s| heap_bytes(s.len()))
            + heap_bytes(self.columns.capacity() * size_of::<(Cow<'static, str>, Json)>())
            + self
                .columns
                .iter()
                .map(|(k, v)| cow_heap_bytes(k) + heap_bytes(v.len()))
                .sum::<usize>()
            + json(&self.context)
            + json(&self.question)
            + self.pipeline_id.as_ref().map_or(0, cow_heap_bytes)
            + heap_bytes(self.updates.capacity() * size_of::<crate::wire::OutUpdate>())
            + self
                .updates
                .iter()
                .map(crate::wire::OutUpdate::size)
                .sum::<usize>()
    }
}

// ---------------------------------------------------------------------------------------
// Buffers: the step list and text of a trace are allocated once and reused. The worker hands
// them back after encoding, so a new trace neither allocates them on the application's
// thread nor has them freed on another thread (which makes the allocator contend).

type Buffers = (Vec<StepRecord>, String);

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

/// The bytes a step list and text buffer hold.
fn buffer_bytes(b: &Buffers) -> usize {
    b.0.capacity() * std::mem::size_of::<StepRecord>() + b.1.capacity()
}

/// Most buffers a thread takes from the pool at a time.
const BATCH: usize = 16;

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
fn reused_buffers() -> Buffers {
    let reused = TAKEN.try_with(|taken| {
        let mut taken = taken.try_borrow_mut().ok()?;
        if taken.free.is_empty() {
            if let Ok(mut pool) = POOL.try_lock() {
                let at = pool.free.len().saturating_sub(taken.batch);
                let bytes: usize = pool.free[at..].iter().map(buffer_bytes).sum();
                pool.bytes -= bytes;
                taken.free.extend(pool.free.drain(at..));
                taken.batch = (taken.batch * 2).min(BATCH);
            }
        }
        taken.free.pop()
    });
    reused
        .ok()
        .flatten()
        .unwrap_or_else(|| (Vec::with_capacity(8), String::with_capacity(512)))
}

/// Hands the buffers of a completed trace back for reuse (after emptying them).
pub(crate) fn recycle(state: &mut TraceState) {
    let (mut steps, mut text) = (
        std::mem::take(&mut state.steps),
        std::mem::take(&mut state.text),
    );
    if steps.capacity() > STEPS_KEEP || text.capacity() > TEXT_KEEP {
        return;
    }
    steps.clear();
    text.clear();
    give_back((steps, text));
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

/// The lock of a trace's state. Taken twice per step, almost never contended (only steps
/// of one trace running on several threads at once meet here), and held for a few
/// hundred instructions that never run user code: a flag set with one compare-and-swap
/// and cleared with a plain store (a `Mutex` also swaps on unlock, to wake waiters).
/// Waiters spin briefly, then yield. A panic while it is held cannot leave the state
/// half-written in a way tracing depends on, so there is no poisoning.
pub(crate) struct StateLock<T> {
    locked: std::sync::atomic::AtomicBool,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: the value is only reached through the lock (or `&mut self`), which gives one
// thread at a time access, so sharing the lock is as safe as sending the value.
unsafe impl<T: Send> Sync for StateLock<T> {}

impl<T> StateLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        StateLock {
            locked: std::sync::atomic::AtomicBool::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> StateGuard<'_, T> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        if self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        StateGuard {
            lock: self,
            _not_send: std::marker::PhantomData,
        }
    }

    #[cold]
    fn lock_contended(&self) {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let mut spins = 0u32;
        loop {
            while self.locked.load(Relaxed) {
                if spins < 64 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Acquire, Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for StateLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLock").finish_non_exhaustive()
    }
}

/// The state of a trace, locked; unlocked when dropped.
pub(crate) struct StateGuard<'a, T> {
    lock: &'a StateLock<T>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<T> std::ops::Deref for StateGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the lock is held, so no other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> std::ops::DerefMut for StateGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so no other reference to the value exists.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for StateGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock
            .locked
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A trace that is being recorded; shared by the steps, futures and handles of the trace.
#[derive(Debug)]
pub(crate) struct TraceShared {
    state: StateLock<TraceState>,
    /// The trace's clock anchor ([`clock::now`](crate::clock::now) nanoseconds): all step
    /// times are offsets from it.
    pub anchor: i64,
    /// The wall-clock time of the anchor, in nanoseconds since the Unix epoch.
    pub anchor_unix_ns: i128,
    /// Where the trace goes instead of the pipeline (test capture).
    pub capture: Option<Arc<crate::pipeline::CaptureSink>>,
}

impl TraceShared {
    /// A new trace whose clock anchor is `anchor`, a clock reading taken just now.
    pub(crate) fn new(capture: Option<Arc<crate::pipeline::CaptureSink>>, anchor: i64) -> Self {
        let (steps, text) = reused_buffers();
        let state = TraceState {
            steps,
            text,
            ..TraceState::default()
        };
        TraceShared {
            state: StateLock::new(state),
            anchor,
            anchor_unix_ns: crate::clock::unix_ns(anchor),
            capture,
        }
    }

    /// Makes a spent trace (completed, handed off, held by nothing else) a new one.
    pub(crate) fn reset(
        &mut self,
        capture: Option<Arc<crate::pipeline::CaptureSink>>,
        anchor: i64,
    ) {
        let (steps, text) = reused_buffers();
        *self.state.get_mut() = TraceState {
            steps,
            text,
            ..TraceState::default()
        };
        self.anchor = anchor;
        self.anchor_unix_ns = crate::clock::unix_ns(anchor);
        self.capture = capture;
    }

    /// Whether this trace has been handed off (its state was taken, leaving it empty).
    pub(crate) fn is_spent(&mut self) -> bool {
        let st = self.state.get_mut();
        st.shipped && st.steps.is_empty() && st.open == 0
    }

    /// Locks the state; a poisoned lock is still used (a panic elsewhere must not stop tracing).
    #[inline]
    pub(crate) fn lock(&self) -> StateGuard<'_, TraceState> {
        self.state.lock()
    }

    /// Nanoseconds from the anchor to the clock reading `t`.
    #[inline]
    pub(crate) fn offset(&self, t: i64) -> i64 {
        t.wrapping_sub(self.anchor)
    }

    /// The clock reading `offset` nanoseconds from the anchor.
    pub(crate) fn at(&self, offset: i64) -> i64 {
        self.anchor.wrapping_add(offset)
    }

    /// Nanoseconds from the anchor to a wall-clock time.
    pub(crate) fn offset_of_wall(&self, t: SystemTime) -> i64 {
        (crate::clock::unix_ns_of(t) - self.anchor_unix_ns) as i64
    }
}

/// A finished trace on its way to the exporter.
#[derive(Debug)]
pub(crate) struct CompletedTrace {
    pub state: TraceState,
    pub anchor_unix_ns: i128,
}

impl CompletedTrace {
    pub(crate) fn root(&self) -> Option<&StepRecord> {
        self.state.steps.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_record_stays_small() {
        // Written once per step and moved into its trace's list: keep it to 96 bytes.
        assert!(std::mem::size_of::<StepRecord>() <= 96);
    }

    #[test]
    fn the_state_lock_excludes_under_contention() {
        let lock = Arc::new(StateLock::new((0u64, 0u64)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        let mut g = lock.lock();
                        // Two writes that another holder would see torn.
                        g.0 += 1;
                        std::hint::black_box(&mut *g);
                        g.1 += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let g = lock.lock();
        assert_eq!(*g, (200_000, 200_000));
    }

    #[test]
    fn the_state_lock_is_released_by_a_panic() {
        let lock = Arc::new(StateLock::new(1u32));
        let l = lock.clone();
        let r = std::thread::spawn(move || {
            let _g = l.lock();
            panic!("while holding the lock");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(*lock.lock(), 1);
    }
}
