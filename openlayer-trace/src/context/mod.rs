//! The current position in a trace: which trace and which step new steps nest under.
//!
//! The position lives in two thread-locals. Synchronous steps set it for their extent;
//! futures ([`Instrumented`](crate::Instrumented), [`WithTrace`]) set it around every `poll` and restore
//! it afterwards, so it follows a task across `.await`, under `join!`, and when a
//! multi-thread runtime moves the task to another worker between polls.
//!
//! A trace completes when its root step has closed and nothing else holds it open: open
//! steps and [`TraceContext`] handles (which carry the trace into spawned work) both count.
//!
//! `session` holds the user and session scope that stamps the columns of traces started
//! inside it.
//!
//! This folder may import from `util/` and `record/` only.

pub(crate) mod session;

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::record::kind::StepKind;
use crate::record::sink::{self, TraceSink};
use crate::record::{
    CompletedTrace, NO_PARENT, REFUSED, Status, StepRecord, TraceShared, with_scratch,
};
use crate::util::clock;
use crate::util::diag::warn_limited;

/// This thread's position: the current trace and step, and the test capture (if any).
/// One thread-local, so that a step checks its state once.
struct Position {
    trace: Cell<Option<Arc<TraceShared>>>,
    step: Cell<u32>,
    capture: Cell<Option<Arc<dyn TraceSink>>>,
}

thread_local! {
    static POS: Position = const {
        Position {
            trace: Cell::new(None),
            step: Cell::new(NO_PARENT),
            capture: Cell::new(None),
        }
    };
}

/// Runs `f` with the current trace and step, if any. The thread-local is restored even if
/// `f` unwinds.
pub(crate) fn with_current<R>(f: impl FnOnce(&Arc<TraceShared>, u32) -> R) -> Option<R> {
    struct Restore(Option<Arc<TraceShared>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let t = self.0.take();
            let _ = POS.try_with(|p| p.trace.set(t));
        }
    }
    let (trace, step) = POS
        .try_with(|p| {
            let t = p.trace.take()?;
            Some((t, p.step.get()))
        })
        .ok()
        .flatten()?;
    let restore = Restore(Some(trace));
    let r = f(restore.0.as_ref()?, step);
    drop(restore);
    Some(r)
}

/// Whether this thread is inside a trace right now.
pub(crate) fn in_trace() -> bool {
    with_current(|_, _| ()).is_some()
}

/// What a new step is.
pub(crate) struct StepSpec {
    pub name: Cow<'static, str>,
    pub kind: StepKind,
    pub traced_fn: bool,
    pub pipeline_id: Option<&'static str>,
}

/// A step that has been opened in a trace and must be closed exactly once.
#[derive(Debug)]
pub(crate) struct OpenStep {
    pub trace: ManuallyDrop<Arc<TraceShared>>,
    pub idx: u32,
}

impl OpenStep {
    fn new(trace: Arc<TraceShared>, idx: u32) -> Self {
        OpenStep {
            trace: ManuallyDrop::new(trace),
            idx,
        }
    }

    /// Whether the step is recorded. One that is not (see [`REFUSED`]) is still entered
    /// like one, so that what runs inside it is not taken for its parent's.
    #[inline]
    pub(crate) fn recorded(&self) -> bool {
        self.idx != REFUSED
    }
}

thread_local! {
    /// The shared part of this thread's last completed trace, kept for its next trace, so
    /// that starting a trace allocates nothing and writes memory this core has in cache.
    static SPARE: Cell<Option<Arc<TraceShared>>> = const { Cell::new(None) };
}

impl Drop for OpenStep {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: taken exactly once, here, and never used again.
        let trace = unsafe { ManuallyDrop::take(&mut self.trace) };
        // The root's step is usually the last holder of its trace.
        if self.idx == 0 {
            keep_spare(trace);
        }
    }
}

/// Keeps `trace` for this thread's next trace when nothing else holds it (it has then
/// completed and been handed off, which left its state empty); else just drops it.
fn keep_spare(mut trace: Arc<TraceShared>) {
    let Some(t) = Arc::get_mut(&mut trace) else {
        return;
    };
    if t.is_spent() {
        // Nothing of the old trace stays reachable from the spare.
        t.capture = None;
        let _ = SPARE.try_with(|s| s.set(Some(trace)));
    }
}

/// A new trace: this thread's spare one, reset, or a new allocation.
fn new_trace(capture: Option<Arc<dyn TraceSink>>, anchor: i64) -> Arc<TraceShared> {
    if let Some(mut spare) = SPARE.try_with(|s| s.take()).ok().flatten()
        && let Some(t) = Arc::get_mut(&mut spare)
    {
        t.reset(capture, anchor);
        return spare;
    }
    Arc::new(TraceShared::new(capture, anchor))
}

/// Where a new step goes: under the current step of `trace`, or as the root of a new trace.
enum Parent {
    In(Arc<TraceShared>, u32),
    Root(Option<Arc<dyn TraceSink>>),
}

/// The current trace and step, else whether (and where) a new trace is recorded. `None`
/// when tracing is off: then this is a couple of thread-local reads and one relaxed load.
#[inline]
fn parent(configure: fn() -> bool) -> Option<Parent> {
    let found = POS.try_with(|p| {
        let t = p.trace.take();
        match t {
            Some(t) => {
                let copy = t.clone();
                p.trace.set(Some(t));
                Ok(Some(Parent::In(copy, p.step.get())))
            }
            // A root would start here: never on our threads or in our callbacks.
            None if crate::util::reentry::suppressed() => Err(()),
            None => {
                let cap = p.capture.take();
                let copy = cap.clone();
                p.capture.set(cap);
                Ok(copy.map(|c| Parent::Root(Some(c))))
            }
        }
    });
    match found {
        Ok(Ok(Some(parent))) => Some(parent),
        // No current trace and no capture: a new trace is recorded when tracing is on.
        Ok(Ok(None)) => sink::enabled(configure).then_some(Parent::Root(None)),
        Ok(Err(())) | Err(_) => None,
    }
}

/// The test capture a root opened here would go to, whatever trace is current here:
/// `Err` on the SDK's own threads (and on a thread being torn down), `Ok(None)` without a
/// capture.
#[inline]
fn root_capture() -> Result<Option<Arc<dyn TraceSink>>, ()> {
    POS.try_with(|p| {
        if crate::util::reentry::suppressed() {
            return Err(());
        }
        let cap = p.capture.take();
        let copy = cap.clone();
        p.capture.set(cap);
        Ok(copy)
    })
    .unwrap_or(Err(()))
}

/// Where a new root goes, whatever trace is current here: like [`parent`] outside any
/// trace.
#[inline]
fn root_parent(configure: fn() -> bool) -> Option<Parent> {
    match root_capture() {
        Ok(Some(capture)) => Some(Parent::Root(Some(capture))),
        Ok(None) => sink::enabled(configure).then_some(Parent::Root(None)),
        Err(()) => None,
    }
}

/// Whether a root opened here now would be recorded, whatever trace is current here: like
/// [`would_record`] outside any trace.
pub(crate) fn would_record_root(configure: fn() -> bool) -> bool {
    match root_capture() {
        Ok(Some(_)) => true,
        Ok(None) => sink::enabled(configure),
        Err(()) => false,
    }
}

/// Whether a step opened here now would be recorded: it would nest in the current trace,
/// or go to a test capture, or start a trace while tracing is on (and this is not one of
/// the SDK's own threads). Like [`parent`], without taking a reference to anything.
pub(crate) fn would_record(configure: fn() -> bool) -> bool {
    let found = POS.try_with(|p| {
        let t = p.trace.take();
        let current = t.is_some();
        p.trace.set(t);
        if current {
            // Inside a step not recorded, nothing is.
            return Some(p.step.get() != REFUSED);
        }
        if crate::util::reentry::suppressed() {
            return Some(false);
        }
        let cap = p.capture.take();
        let captured = cap.is_some();
        p.capture.set(cap);
        captured.then_some(true)
    });
    match found {
        Ok(Some(recorded)) => recorded,
        Ok(None) => sink::enabled(configure),
        Err(_) => false,
    }
}

/// When a step starts.
#[derive(Clone, Copy)]
pub(crate) enum Start {
    /// Now: the clock is read only once the step is known to be recorded.
    Now,
    /// At this [`clock::now`] reading.
    At(i64),
}

/// Opens a step under the current step of this thread, or as the root of a new trace.
/// The current position is not changed. `None` when tracing is off; a step that is not
/// recorded (see [`REFUSED`]) is `Some`, to be entered like one.
///
/// `inputs` writes the step's inputs (a JSON object) into the buffer it is given, or
/// nothing; it runs only when the step is recorded.
#[inline]
pub(crate) fn open_step(
    spec: StepSpec,
    start: Start,
    configure: fn() -> bool,
    inputs: impl FnOnce(&mut String),
) -> Option<OpenStep> {
    open_under(parent(configure)?, spec, start, inputs)
}

/// [`open_step`] as the root of a new trace, whatever trace is current here (which stays
/// current).
#[inline]
pub(crate) fn open_root_step(
    spec: StepSpec,
    start: Start,
    configure: fn() -> bool,
    inputs: impl FnOnce(&mut String),
) -> Option<OpenStep> {
    open_under(root_parent(configure)?, spec, start, inputs)
}

#[inline]
fn open_under(
    parent: Parent,
    spec: StepSpec,
    start: Start,
    inputs: impl FnOnce(&mut String),
) -> Option<OpenStep> {
    let (trace, parent, start) = match parent {
        Parent::In(trace, step) => {
            let start = match start {
                Start::Now => clock::now(),
                Start::At(t) => t,
            };
            (trace, step, start)
        }
        Parent::Root(capture) => {
            // The trace's clock anchor is read with its wall-clock time; a root starting
            // now starts at the anchor.
            let anchor = clock::now();
            let trace = new_trace(capture, anchor);
            let start = match start {
                Start::Now => anchor,
                Start::At(t) => t,
            };
            (trace, NO_PARENT, start)
        }
    };
    record_step(trace, parent, spec, start, inputs)
}

fn record_step(
    trace: Arc<TraceShared>,
    parent: u32,
    spec: StepSpec,
    start: i64,
    inputs: impl FnOnce(&mut String),
) -> Option<OpenStep> {
    if parent == REFUSED {
        // Under a step that was not recorded: neither is this one (nor its subtree), and
        // its inputs are not written.
        let mut st = trace.lock();
        if st.shipped {
            return None;
        }
        st.steps_dropped += 1;
        drop(st);
        crate::util::open_traces::dropped();
        return Some(OpenStep::new(trace, REFUSED));
    }
    let offset = trace.offset(start);
    with_scratch(|buf| {
        inputs(buf);
        let mut st = trace.lock();
        if st.shipped {
            drop(st);
            warn_limited!(step = %spec.name, "a step started after its trace had completed; not recorded");
            return None;
        }
        let cost = size_of::<StepRecord>() + buf.len();
        if !crate::util::open_traces::admit(st.steps.len(), cost) {
            st.steps_dropped += 1;
            drop(st);
            // Entered as a step, so that its output, metadata and children are dropped
            // with it rather than recorded on its parent (or started as traces of their
            // own, for a root).
            return Some(OpenStep::new(trace, REFUSED));
        }
        st.held += cost;
        let idx = st.steps.len() as u32;
        let mut oldest_age = None;
        if idx == 0 {
            (st.open_key, oldest_age) = crate::util::open_traces::opened(trace.anchor);
        }
        let parent = if idx == 0 {
            NO_PARENT
        } else if parent == NO_PARENT {
            0
        } else {
            parent
        };
        let mut rec = StepRecord::new(spec.name, spec.kind, parent, offset);
        rec.traced_fn = spec.traced_fn;
        if !buf.is_empty() {
            rec.inputs = st.push_text(buf);
        }
        if idx == 0 {
            if let Some(p) = spec.pipeline_id {
                st.extra_mut().pipeline_id = Some(Cow::Borrowed(p));
            }
            session::stamp(&mut st);
        }
        st.steps.push(rec);
        st.open += 1;
        drop(st);
        if let Some(age) = oldest_age {
            crate::util::open_traces::warn_if_older(age);
        }
        Some(OpenStep::new(trace, idx))
    })
}

/// How a step ends.
pub(crate) struct Closing<'a> {
    pub status: Status,
    /// The output, as JSON text.
    pub output: Option<&'a str>,
    pub error: Option<Box<str>>,
}

/// Closes a step at the [`clock::now`] reading `end`, and completes its trace when nothing
/// else holds it open.
pub(crate) fn close_step(step: &OpenStep, end: i64, closing: Closing<'_>) {
    let end = step.trace.offset(end);
    let mut st = step.trace.lock();
    let idx = step.idx as usize;
    let Some(rec) = st.steps.get_mut(idx) else {
        drop(st);
        return;
    };
    if rec.status != Status::Open {
        return;
    }
    rec.status = closing.status;
    rec.end = end.max(rec.start);
    if let Some(error) = closing.error {
        // After the errors recorded while it ran (a 5xx, then a panic while its body was
        // produced): all of them are kept.
        rec.extra_mut().add_error(&error);
    }
    if closing.status == Status::Cancelled {
        rec.set_metadata(Cow::Borrowed("cancelled"), "true".into());
    }
    let logged = rec.extra.as_mut().and_then(|e| e.logged_output.take());
    let mut left_out = false;
    if let Some(logged) = logged {
        // Held since it was logged: moved to the trace's text.
        let r = st.push_text(&logged);
        st.steps[idx].output = r;
    } else if let Some(output) = closing.output {
        let r;
        (r, left_out) = st.push_output(output);
        st.steps[idx].output = r;
    }
    if step.idx == 0 {
        st.root_closed = true;
    }
    release_locked(&step.trace, st);
    if left_out {
        warn_limited!(
            "a step's output was left out (a marker recorded instead): traces still open hold \
             the most memory queue_max_bytes allows them"
        );
    }
}

/// Adds an error text to an open step's `Exceptions` (one line per error, bounded: see
/// `StepExtra::add_error`) without changing how it ends.
pub(crate) fn add_exception(step: &OpenStep, text: &str) {
    let mut st = step.trace.lock();
    if let Some(rec) = st.steps.get_mut(step.idx as usize) {
        rec.extra_mut().add_error(text);
    }
}

/// Marks an open step as stopped before its end (metadata `cancelled: true`), whatever
/// status it then closes with.
pub(crate) fn set_cancelled(step: &OpenStep) {
    let mut st = step.trace.lock();
    if let Some(rec) = st.steps.get_mut(step.idx as usize) {
        rec.set_metadata(Cow::Borrowed("cancelled"), "true".into());
    }
}

/// Drops one hold on the trace (an open step or a handle) and ships it if complete.
fn release_locked(
    trace: &Arc<TraceShared>,
    mut st: crate::record::StateGuard<'_, crate::record::TraceState>,
) {
    st.open = st.open.saturating_sub(1);
    if st.open == 0 && st.root_closed && !st.shipped {
        let mut state = std::mem::take(&mut *st);
        crate::util::open_traces::completed(trace.anchor, state.open_key, state.held);
        // Outputs logged after their steps ended (by work carried into the trace).
        for i in 0..state.steps.len() {
            if let Some(logged) = state.steps[i]
                .extra
                .as_mut()
                .and_then(|e| e.logged_output.take())
            {
                state.steps[i].output = state.push_text(&logged);
            }
        }
        if state.steps_dropped > 0
            && let Some(root) = state.steps.first_mut()
        {
            // The marker: the trace is incomplete (also a row column, as root metadata).
            root.set_metadata(
                Cow::Borrowed("stepsDropped"),
                state.steps_dropped.to_string().into(),
            );
        }
        // What is left behind is marked too: a step opened in this trace from now on (a
        // position restored to it after it completed) is refused, not made a new root.
        st.shipped = true;
        drop(st);
        let done = CompletedTrace {
            state,
            anchor_unix_ns: trace.anchor_unix_ns,
        };
        sink::submit(done, trace.capture.as_ref());
    }
}

/// The saved position while another one is current.
pub(crate) struct Entered {
    /// The previous trace, when [`enter`] replaced it.
    prev_trace: Option<Arc<TraceShared>>,
    /// Whether the trace was already current (only the step changed).
    same: bool,
    prev_step: u32,
    _not_send: PhantomData<*const ()>,
}

/// Makes `(trace, step)` the current position; [`exit`] restores the previous one.
#[inline]
pub(crate) fn enter(trace: Arc<TraceShared>, step: u32) -> Entered {
    replace_position(Some(trace), step)
}

/// Makes "outside any trace" the current position; [`exit`] restores the previous one.
#[inline]
pub(crate) fn enter_none() -> Entered {
    replace_position(None, NO_PARENT)
}

#[inline]
fn replace_position(trace: Option<Arc<TraceShared>>, step: u32) -> Entered {
    let (prev_trace, prev_step) = POS
        .try_with(|p| (p.trace.replace(trace), p.step.replace(step)))
        .unwrap_or((None, NO_PARENT));
    Entered {
        prev_trace,
        same: false,
        prev_step,
        _not_send: PhantomData,
    }
}

/// Like [`enter`], but without touching the trace's reference count when it is already
/// the current trace (the common case of nested steps).
#[inline]
pub(crate) fn enter_ref(trace: &Arc<TraceShared>, step: u32) -> Entered {
    // One access to the thread-local either way.
    let entered = POS.try_with(|p| {
        let cur = p.trace.take();
        let same = cur.as_ref().is_some_and(|t| Arc::ptr_eq(t, trace));
        let prev_trace = if same {
            p.trace.set(cur);
            None
        } else {
            p.trace.set(Some(trace.clone()));
            cur
        };
        Entered {
            prev_trace,
            same,
            prev_step: p.step.replace(step),
            _not_send: PhantomData,
        }
    });
    entered.unwrap_or(Entered {
        prev_trace: None,
        same: false,
        prev_step: NO_PARENT,
        _not_send: PhantomData,
    })
}

/// Restores the position saved by [`enter`] or [`enter_ref`].
#[inline]
pub(crate) fn exit(entered: Entered) {
    let Entered {
        prev_trace,
        same,
        prev_step,
        ..
    } = entered;
    let replaced = POS.try_with(|p| {
        p.step.set(prev_step);
        if same {
            None
        } else {
            p.trace.replace(prev_trace)
        }
    });
    drop(replaced);
}

/// Runs `f` with `capture` as the sink for traces started on this thread.
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn with_capture<R>(capture: Option<Arc<dyn TraceSink>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<dyn TraceSink>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = POS.try_with(|p| p.capture.set(prev));
        }
    }
    let prev = POS.try_with(|p| p.capture.replace(capture)).ok().flatten();
    let _restore = Restore(prev);
    f()
}

/// A position in a trace that can be carried into spawned tasks and threads.
///
/// While a `TraceContext` (or a clone) is alive, its trace stays open, so the steps of
/// spawned work land in it even if the root step has already returned. Get one with
/// [`current_context`], or use [`spawn`], [`FutureExt::in_current_trace`] and
/// [`thread::spawn`](crate::thread::spawn), which do it for you.
///
/// ```
/// use openlayer_trace::{current_context, trace};
///
/// #[trace]
/// fn work(n: u32) -> u32 { n * 2 }
///
/// #[trace]
/// fn parent() -> u32 {
///     let ctx = current_context().expect("inside a trace");
///     std::thread::spawn(move || ctx.in_scope(|| work(21))).join().unwrap()
/// }
/// assert_eq!(parent(), 42);
/// ```
#[derive(Debug)]
pub struct TraceContext {
    trace: Arc<TraceShared>,
    step: u32,
}

impl TraceContext {
    /// A new hold on `trace` at `step`.
    pub(crate) fn at(trace: &Arc<TraceShared>, step: u32) -> TraceContext {
        trace.lock().open += 1;
        TraceContext {
            trace: trace.clone(),
            step,
        }
    }

    /// The current position, if this thread is inside a trace.
    pub fn current() -> Option<TraceContext> {
        with_current(TraceContext::at)
    }

    /// Makes this position current on this thread until the guard is dropped.
    pub fn attach(&self) -> AttachGuard<'_> {
        AttachGuard {
            entered: Some(enter(self.trace.clone(), self.step)),
            _ctx: PhantomData,
        }
    }

    /// Runs `f` with this position current.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.attach();
        f()
    }

    /// Wraps a future so that it runs in this position, wherever it is polled.
    pub fn wrap<F: Future>(self, future: F) -> WithTrace<F> {
        WithTrace {
            inner: Some(future),
            ctx: Some(self),
        }
    }
}

impl Clone for TraceContext {
    fn clone(&self) -> Self {
        self.trace.lock().open += 1;
        TraceContext {
            trace: self.trace.clone(),
            step: self.step,
        }
    }
}

impl Drop for TraceContext {
    fn drop(&mut self) {
        let st = self.trace.lock();
        release_locked(&self.trace, st);
    }
}

/// Keeps a [`TraceContext`] current on this thread; see [`TraceContext::attach`].
#[must_use = "the context is detached when the guard is dropped"]
pub struct AttachGuard<'a> {
    entered: Option<Entered>,
    _ctx: PhantomData<&'a TraceContext>,
}

impl Drop for AttachGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.entered.take() {
            exit(e);
        }
    }
}

impl std::fmt::Debug for AttachGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachGuard")
    }
}

/// The current trace position, to carry into spawned work; see [`TraceContext`].
pub fn current_context() -> Option<TraceContext> {
    TraceContext::current()
}

pin_project_lite::pin_project! {
    /// A future that runs in a captured trace position; see
    /// [`FutureExt::in_current_trace`].
    #[must_use = "futures do nothing unless polled"]
    pub struct WithTrace<F> {
        // `None` only while it is dropped, in place, in its position.
        #[pin]
        inner: Option<F>,
        ctx: Option<TraceContext>,
    }

    impl<F> PinnedDrop for WithTrace<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Drop the inner future first, in its position, so that its steps close before
            // the hold on the trace is released; the position is restored even when
            // dropping it panics.
            let entered = Exit(Some(enter_ctx(this.ctx.as_ref())));
            let mut inner = this.inner;
            inner.set(None);
            drop(entered);
            *this.ctx = None;
        }
    }
}

/// Enters a captured position; `None` is outside any trace, whatever the thread's
/// position (the step polling a task on a current-thread runtime, say) was.
fn enter_ctx(ctx: Option<&TraceContext>) -> Entered {
    match ctx {
        Some(c) => enter(c.trace.clone(), c.step),
        None => enter_none(),
    }
}

/// Leaves an entered position when dropped (also while the thread unwinds).
pub(crate) struct Exit(Option<Entered>);

impl Exit {
    /// Leaves `entered` when dropped.
    #[cfg(feature = "tracing-layer")]
    pub(crate) fn new(entered: Entered) -> Self {
        Exit(Some(entered))
    }
}

impl Drop for Exit {
    fn drop(&mut self) {
        if let Some(e) = self.0.take() {
            exit(e);
        }
    }
}

impl<F> std::fmt::Debug for WithTrace<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithTrace")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for WithTrace<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            // Only while dropped, never polled then.
            return Poll::Pending;
        };
        let _exit = Exit(Some(enter_ctx(this.ctx.as_ref())));
        let out = inner.poll(cx);
        if out.is_ready() {
            drop(_exit);
            *this.ctx = None;
        }
        out
    }
}

/// Carries the current trace into futures.
pub trait FutureExt: Future + Sized {
    /// Runs this future in the current trace position, wherever it is polled: its steps
    /// land under the step that created it.
    ///
    /// ```
    /// use openlayer_trace::{trace, FutureExt};
    ///
    /// #[trace]
    /// async fn child() -> u8 { 1 }
    ///
    /// #[trace]
    /// async fn parent() -> u8 {
    ///     tokio::spawn(child().in_current_trace()).await.unwrap()
    /// }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(parent());
    /// ```
    fn in_current_trace(self) -> WithTrace<Self> {
        WithTrace {
            inner: Some(self),
            ctx: TraceContext::current(),
        }
    }

    /// Runs this future in the given position (`None`: outside any trace).
    fn with_trace_context(self, ctx: Option<TraceContext>) -> WithTrace<Self> {
        WithTrace {
            inner: Some(self),
            ctx,
        }
    }
}

impl<F: Future> FutureExt for F {}

/// `tokio::spawn`, carrying the current trace into the task.
///
/// # Panics
///
/// Like `tokio::spawn`, when called outside a Tokio runtime.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_trace())
}

/// Threads that carry the current trace.
pub mod thread {
    /// `std::thread::spawn`, carrying the current trace into the thread.
    ///
    /// ```
    /// use openlayer_trace::trace;
    ///
    /// #[trace]
    /// fn child() -> u8 { 1 }
    ///
    /// #[trace]
    /// fn parent() -> u8 { openlayer_trace::thread::spawn(child).join().unwrap() }
    /// assert_eq!(parent(), 1);
    /// ```
    pub fn spawn<F, T>(f: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ctx = super::TraceContext::current();
        std::thread::spawn(move || match ctx {
            Some(ctx) => ctx.in_scope(f),
            None => f(),
        })
    }
}
