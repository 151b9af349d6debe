//! Steps: the guard of a synchronous step, the future of an asynchronous one, the step
//! builder for code that is not a function, and manual chat-completion steps.
//! `handle` holds the step owned by a value ([`StepHandle`](handle::StepHandle)).

pub(crate) mod handle;
pub mod stream;
pub(crate) mod text_inputs;

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use serde::Serialize;

use crate::context::{self, Closing, Entered, OpenStep, Start, StepSpec};
use crate::record::kind::StepKind;
use crate::record::{Json, Status, give_scratch, take_scratch, to_json, write_json};
use crate::util::clock;
use crate::util::diag::warn_limited;

// ---------------------------------------------------------------------------------------
// Panic messages

static PANIC_HOOK: Once = Once::new();

/// Installs (once) a panic hook that remembers the message of the thread's last panic,
/// so that the steps it unwinds through record it. The previous hook still runs.
///
/// `init` installs it; otherwise the first recorded step does. Never while the thread
/// is unwinding: the hook cannot be changed then (it would abort the process), so a step
/// opened during unwinding leaves it for later.
pub(crate) fn install_panic_hook() {
    if PANIC_HOOK.is_completed() || std::thread::panicking() {
        return;
    }
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Every panic replaces the message (or clears it, outside any trace), so that
            // a step never records the message of an earlier panic.
            let msg = context::with_current(|t, _| t.anchor).map(|key| {
                let payload = info.payload();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "Box<dyn Any>".to_string());
                let text = match info.location() {
                    Some(l) => format!("panicked at {}:{}: {msg}", l.file(), l.line()),
                    None => format!("panicked: {msg}"),
                };
                (key, text)
            });
            crate::util::panic::set_message(msg);
            previous(info);
        }));
    });
}

/// The message of the panic unwinding through a step of `open`'s trace (`panicked` when
/// unknown, or when the thread's last panic happened in another trace).
pub(crate) fn panic_message(open: &OpenStep) -> Box<str> {
    crate::util::panic::message_of(open.trace.anchor)
        .unwrap_or_else(|| "panicked".to_string())
        .into_boxed_str()
}

/// Forgets the panic message once the root of its trace has recorded it.
pub(crate) fn clear_panic_message() {
    crate::util::panic::set_message(None);
}

/// What a step ends with: its output (JSON, in a scratch buffer of this thread's) or its
/// error. Shared by the guard of a synchronous step and the finisher of an asynchronous one.
pub(crate) struct Ending {
    pub(crate) output: Option<String>,
    pub(crate) error: Option<Box<str>>,
    /// Whether the thread was already unwinding when the step opened (it runs in a
    /// `Drop`): then a normal end is a return, not the panic.
    pub(crate) unwinding_at_open: bool,
}

impl Default for Ending {
    #[inline]
    fn default() -> Self {
        Ending {
            output: None,
            error: None,
            unwinding_at_open: std::thread::panicking(),
        }
    }
}

impl Ending {
    /// Records the output, replacing any earlier one.
    pub(crate) fn output<T: Serialize + ?Sized>(&mut self, value: &T) {
        let mut buf = self.output.take().unwrap_or_else(take_scratch);
        buf.clear();
        match write_json(&mut buf, value) {
            Ok(()) => self.output = Some(buf),
            Err(e) => {
                give_scratch(buf);
                warn_limited!(error = %e, "a traced value could not be serialized; recorded as null");
            }
        }
    }

    pub(crate) fn error(&mut self, error: &dyn Display) {
        self.error = Some(error_text(error).into_boxed_str());
    }

    /// Whether a panic is unwinding through the step: the thread unwinds, and did not when
    /// the step opened (a step opened in a `Drop` while unwinding ends normally).
    #[inline]
    pub(crate) fn unwinding_through(&self) -> bool {
        std::thread::panicking() && !self.unwinding_at_open
    }

    /// Closes `open` at `end` with this ending (or with the panic unwinding through it).
    pub(crate) fn close(&mut self, open: &OpenStep, end: i64) {
        let unwinding = self.unwinding_through();
        self.close_as(open, end, unwinding);
    }

    /// Closes `open` at `end` with this ending: as panicked when `unwinding`.
    pub(crate) fn close_as(&mut self, open: &OpenStep, end: i64, unwinding: bool) {
        let output = self.output.take();
        let closing = if unwinding {
            if open.idx == 0 {
                // The root is the last step this panic unwinds through in its trace: the
                // message is cleared, so that a later `resume_unwind` (which runs no hook)
                // records "panicked", not this panic's message. Another trace the same
                // panic unwinds through on this thread then records "panicked" too.
                let error = panic_message(open);
                clear_panic_message();
                let closing = Closing {
                    status: Status::Panicked,
                    output: None,
                    error: Some(error),
                };
                context::close_step(open, end, closing);
                if let Some(buf) = output {
                    give_scratch(buf);
                }
                return;
            }
            Closing {
                status: Status::Panicked,
                output: None,
                error: Some(panic_message(open)),
            }
        } else if let Some(error) = self.error.take() {
            Closing {
                status: Status::Error,
                output: None,
                error: Some(error),
            }
        } else {
            Closing {
                status: Status::Ok,
                output: output.as_deref(),
                error: None,
            }
        };
        context::close_step(open, end, closing);
        if let Some(buf) = output {
            give_scratch(buf);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Output recording

/// Where a traced function's result is recorded.
pub trait OutputSink {
    /// Whether the step is recorded (when not, nothing is serialized).
    #[doc(hidden)]
    fn __is_recording(&self) -> bool;
    /// Records the output.
    #[doc(hidden)]
    fn __set_output<T: Serialize + ?Sized>(&mut self, output: &T);
    /// Records an error: the output becomes `null` and metadata `Exceptions` the text.
    #[doc(hidden)]
    fn __set_error(&mut self, error: &dyn Display);
}

/// The text of an error, as `to_string` makes it, but never a panic in traced code: a
/// `Display` that fails keeps what it wrote (`to_string` would panic), one that panics is
/// recorded as having done so.
pub(crate) fn error_text(error: &dyn Display) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    match crate::util::panic::caught(|| write!(text, "{error}")) {
        Some(Ok(())) => text,
        Some(Err(_)) if text.is_empty() => "<the error's Display failed>".into(),
        Some(Err(_)) => text,
        None => "<the error's Display panicked>".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Synchronous steps

/// A synchronous step: current on this thread until dropped, when it closes.
///
/// Made by `#[trace]` on a non-`async` function, or by [`StepBuilder::enter`]. A guard
/// must not be held across an `.await` (it is `!Send` to prevent that in `Send` futures);
/// use [`StepBuilder::run`] or [`StepBuilder::instrument`] for asynchronous code.
///
/// ```
/// let mut guard = openlayer_trace::step("parse").inputs(&serde_json::json!({"len": 3})).enter();
/// let parsed: Vec<u32> = vec![1, 2, 3];
/// guard.output(&parsed);
/// drop(guard); // closes the step (and ships the trace, if it was the root)
/// ```
#[must_use = "the step closes when the guard is dropped"]
pub struct StepGuard {
    /// `None` when the step is not recorded: then the guard is one word to write and
    /// check.
    rec: Option<Recording>,
    _not_send: PhantomData<*const ()>,
}

/// A recorded synchronous step: open, current on this thread, and what it ends with.
struct Recording {
    open: OpenStep,
    entered: Entered,
    ending: Ending,
}

impl std::fmt::Debug for StepGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGuard")
            .field("recording", &self.is_recording())
            .finish()
    }
}

impl StepGuard {
    #[inline]
    pub(crate) fn enter(open: Option<OpenStep>) -> Self {
        StepGuard {
            rec: open.map(Recording::enter),
            _not_send: PhantomData,
        }
    }

    /// Whether this step is recorded (tracing is on, and the step was not refused by
    /// `max_steps_per_trace` or the open traces' memory bound).
    pub fn is_recording(&self) -> bool {
        self.rec.as_ref().is_some_and(|r| r.open.recorded())
    }

    /// Records the step's output.
    pub fn output<T: Serialize + ?Sized>(&mut self, output: &T) {
        if let Some(r) = &mut self.rec {
            r.ending.output(output);
        }
    }

    /// Records an error: the step's output becomes `null` and its metadata `Exceptions`
    /// the error's text.
    pub fn error(&mut self, error: &dyn Display) {
        if let Some(r) = &mut self.rec {
            r.ending.error(error);
        }
    }

    /// Sets a metadata key of this step (the last write wins; `None`/`null` is ignored).
    pub fn metadata<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if let Some(r) = &self.rec {
            crate::api::annotate::apply_step(&r.open, vec![(key.to_string(), value)]);
        }
    }
}

impl Recording {
    fn enter(open: OpenStep) -> Self {
        install_panic_hook();
        let entered = context::enter_ref(&open.trace, open.idx);
        Recording {
            open,
            entered,
            ending: Ending::default(),
        }
    }

    fn close(self) {
        let end = clock::now();
        let Recording {
            open,
            entered,
            mut ending,
        } = self;
        context::exit(entered);
        ending.close(&open, end);
    }
}

impl OutputSink for StepGuard {
    #[inline]
    fn __is_recording(&self) -> bool {
        self.is_recording()
    }
    #[inline]
    fn __set_output<T: Serialize + ?Sized>(&mut self, output: &T) {
        if let Some(r) = &mut self.rec {
            r.ending.output(output);
        }
    }
    fn __set_error(&mut self, error: &dyn Display) {
        if let Some(r) = &mut self.rec {
            r.ending.error(error);
        }
    }
}

impl Drop for StepGuard {
    #[inline]
    fn drop(&mut self) {
        // Inline: a step that is not recorded (tracing off) costs one check here.
        if let Some(r) = self.rec.take() {
            r.close();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Asynchronous steps

/// A step to open at the first poll.
struct Pending {
    spec: StepSpec,
    root: bool,
    inputs: Option<Json>,
    metadata: Vec<(String, Json)>,
}

enum State {
    /// Not polled yet: the step opens at the first poll, under the position current then.
    Pending(Box<Pending>),
    Open(OpenStep),
    /// Off, finished, or handed back.
    Done,
}

pin_project! {
    /// A future running as a step. Its step opens at the first poll, is current during
    /// every poll, and is handed back with the output when the inner future completes.
    ///
    /// Dropped before completion, it closes its step marked `cancelled` (after dropping the
    /// inner future, so that inner steps close first). A panic inside closes it with the
    /// panic message under `Exceptions`.
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        // `None` only while it is dropped, in place, before the step closes.
        #[pin]
        inner: Option<F>,
        state: State,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let State::Open(open) = std::mem::replace(this.state, State::Done) {
                let cancel = Cancel {
                    entered: Some(context::enter_ref(&open.trace, open.idx)),
                    open,
                };
                // Dropped in place, in the step's position: its steps close first.
                let mut inner = this.inner;
                inner.set(None);
                drop(cancel);
            }
        }
    }
}

/// Restores the position and closes the step as cancelled, even when dropping the inner
/// future panics.
struct Cancel {
    entered: Option<Entered>,
    open: OpenStep,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(e) = self.entered.take() {
            context::exit(e);
        }
        // After the inner future (and so its steps) is gone.
        let closing = Closing {
            status: Status::Cancelled,
            output: None,
            error: None,
        };
        context::close_step(&self.open, clock::now(), closing);
    }
}

impl<F> std::fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl<F: Future> Instrumented<F> {
    /// Wraps `inner` in an already opened step (`None`: not recorded).
    pub(crate) fn opened(open: Option<OpenStep>, inner: F) -> Self {
        let state = match open {
            Some(o) => State::Open(o),
            None => State::Done,
        };
        Instrumented {
            inner: Some(inner),
            state,
        }
    }
}

/// The still-open step of a completed [`Instrumented`] future: record the output on it,
/// then drop it to close the step.
#[must_use = "the step closes when this is dropped"]
pub struct StepFinisher {
    open: Option<OpenStep>,
    ending: Ending,
}

impl std::fmt::Debug for StepFinisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepFinisher")
            .field("recording", &self.is_recording())
            .finish()
    }
}

impl StepFinisher {
    /// Whether the step is recorded.
    pub fn is_recording(&self) -> bool {
        self.open.as_ref().is_some_and(OpenStep::recorded)
    }
}

impl StepFinisher {
    /// Hands the still-open step over (to a [`StepHandle`](crate::StepHandle) that goes on
    /// recording it), with nothing recorded on it yet.
    pub(crate) fn into_open(mut self) -> Option<OpenStep> {
        self.open.take()
    }
}

impl OutputSink for StepFinisher {
    #[inline]
    fn __is_recording(&self) -> bool {
        self.is_recording()
    }
    #[inline]
    fn __set_output<T: Serialize + ?Sized>(&mut self, output: &T) {
        self.ending.output(output);
    }
    fn __set_error(&mut self, error: &dyn Display) {
        self.ending.error(error);
    }
}

impl Drop for StepFinisher {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            self.ending.close(&open, clock::now());
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = (F::Output, StepFinisher);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if matches!(this.state, State::Pending(..))
            && let State::Pending(p) = std::mem::replace(this.state, State::Done)
        {
            let Pending {
                spec,
                root,
                inputs,
                metadata,
            } = *p;
            let write_inputs = |buf: &mut String| {
                buf.push_str(inputs.as_deref().unwrap_or_default());
            };
            let open = if root {
                context::open_root_step(spec, Start::Now, crate::runtime::lazy_init, write_inputs)
            } else {
                context::open_step(spec, Start::Now, crate::runtime::lazy_init, write_inputs)
            };
            if let Some(open) = open {
                if !metadata.is_empty() {
                    crate::api::annotate::apply_step_json(&open, metadata);
                }
                install_panic_hook();
                *this.state = State::Open(open);
            }
        }

        /// Restores the position after the poll and closes the step if the poll panics.
        struct PollGuard<'a> {
            entered: Option<Entered>,
            state: &'a mut State,
            /// The thread was unwinding before the poll (polled from a `Drop`): a poll
            /// that returns then has not panicked.
            unwinding_before: bool,
        }
        impl Drop for PollGuard<'_> {
            fn drop(&mut self) {
                if let Some(e) = self.entered.take() {
                    context::exit(e);
                }
                if std::thread::panicking()
                    && !self.unwinding_before
                    && let State::Open(open) = std::mem::replace(self.state, State::Done)
                {
                    let closing = Closing {
                        status: Status::Panicked,
                        output: None,
                        error: Some(panic_message(&open)),
                    };
                    context::close_step(&open, clock::now(), closing);
                    if open.idx == 0 {
                        // As `Ending::close_as` does for a root (see there).
                        clear_panic_message();
                    }
                }
            }
        }

        let Some(inner) = this.inner.as_pin_mut() else {
            // Only while dropped, never polled then.
            return Poll::Pending;
        };
        let entered = match &*this.state {
            State::Open(o) => Some(context::enter_ref(&o.trace, o.idx)),
            _ => None,
        };
        let guard = PollGuard {
            entered,
            state: &mut *this.state,
            unwinding_before: std::thread::panicking(),
        };
        let out = inner.poll(cx);
        drop(guard);
        match out {
            Poll::Pending => Poll::Pending,
            Poll::Ready(v) => {
                let open = match std::mem::replace(this.state, State::Done) {
                    State::Open(o) => Some(o),
                    _ => None,
                };
                Poll::Ready((
                    v,
                    StepFinisher {
                        open,
                        ending: Ending::default(),
                    },
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The builder

/// Starts building a step for code that is not a function; see [`StepBuilder`].
///
/// ```
/// use openlayer_trace::{step, StepKind};
///
/// // Synchronous: the step is current until the guard drops.
/// {
///     let _g = step("load-config").enter();
/// }
///
/// // Asynchronous: the step wraps the future and records its output.
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let docs = step("search")
///     .kind(StepKind::Retriever)
///     .inputs(&serde_json::json!({"query": "capital of France"}))
///     .run(async { vec!["Paris is the capital of France."] })
///     .await;
/// # assert_eq!(docs.len(), 1);
/// # });
/// ```
pub fn step(name: impl Into<Cow<'static, str>>) -> StepBuilder {
    StepBuilder {
        name: name.into(),
        kind: StepKind::UserCall,
        root: false,
        inputs: None,
        metadata: Vec::new(),
    }
}

/// Whether a step started here would be recorded (its values are worth serializing).
fn would_record() -> bool {
    context::would_record(crate::runtime::lazy_init)
}

/// A step being built; see [`step`].
#[derive(Debug)]
#[must_use = "a step builder does nothing until entered or run"]
pub struct StepBuilder {
    name: Cow<'static, str>,
    kind: StepKind,
    root: bool,
    inputs: Option<Json>,
    metadata: Vec<(String, Json)>,
}

impl StepBuilder {
    /// The step's kind (default [`StepKind::UserCall`]).
    pub fn kind(mut self, kind: StepKind) -> Self {
        self.kind = kind;
        self
    }

    /// Opens the step as the root of a new trace (a row of its own), even where a step is
    /// current: for work that is its own unit, such as a request a server handles, also
    /// when traced code calls the server in process. The current step stays current
    /// around it; what runs inside the new step nests under it. Call it before
    /// [`inputs`](Self::inputs) and [`metadata`](Self::metadata), which are serialized
    /// only where the step would be recorded.
    pub fn root(mut self) -> Self {
        self.root = true;
        self
    }

    /// Whether this step, opened here now, would be recorded.
    fn would_record(&self) -> bool {
        if self.root {
            context::would_record_root(crate::runtime::lazy_init)
        } else {
            would_record()
        }
    }

    /// The step's inputs: an object (a map or struct) of input names to values. Any other
    /// value is recorded as `{"input": value}`. Not serialized where a step would not be
    /// recorded (tracing off, inside a step not recorded).
    pub fn inputs<T: Serialize + ?Sized>(mut self, inputs: &T) -> Self {
        if !self.would_record() {
            return self;
        }
        self.inputs = to_json(inputs).map(|j| {
            if j.starts_with('{') {
                j
            } else {
                format!("{{\"input\":{j}}}").into_boxed_str()
            }
        });
        self
    }

    /// A metadata key of the step (not serialized where a step would not be recorded).
    pub fn metadata<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Self {
        if !self.would_record() || crate::api::none_probe::is_none(value) {
            return self;
        }
        if let Some(v) = to_json(value) {
            self.metadata.push((key.to_string(), v));
        }
        self
    }

    /// The step's description, taking its name (the builder is consumed).
    fn spec(&mut self) -> StepSpec {
        StepSpec {
            name: std::mem::take(&mut self.name),
            kind: self.kind,
            traced_fn: false,
            pipeline_id: None,
        }
    }

    pub(crate) fn open(mut self) -> Option<OpenStep> {
        let inputs = self.inputs.take();
        self.open_with(|buf: &mut String| buf.push_str(inputs.as_deref().unwrap_or_default()))
    }

    /// Opens the step with its inputs written into the (empty) buffer by `write_inputs`.
    pub(crate) fn open_with(mut self, write_inputs: impl FnOnce(&mut String)) -> Option<OpenStep> {
        let spec = self.spec();
        let open = if self.root {
            context::open_root_step(spec, Start::Now, crate::runtime::lazy_init, write_inputs)?
        } else {
            context::open_step(spec, Start::Now, crate::runtime::lazy_init, write_inputs)?
        };
        if !self.metadata.is_empty() {
            crate::api::annotate::apply_step_json(&open, self.metadata);
        }
        Some(open)
    }

    /// Opens the step and makes it current on this thread until the guard is dropped.
    pub fn enter(self) -> StepGuard {
        StepGuard::enter(self.open())
    }

    /// Runs `f` as the step and records its output.
    pub fn in_scope<R: Serialize>(self, f: impl FnOnce() -> R) -> R {
        let mut guard = self.enter();
        let out = f();
        guard.output(&out);
        out
    }

    /// Runs `future` as the step and records its output.
    pub fn run<F>(self, future: F) -> impl Future<Output = F::Output>
    where
        F: Future,
        F::Output: Serialize,
    {
        let inner = self.instrumented(future);
        async move {
            let (out, mut fin) = inner.await;
            if fin.is_recording() {
                fin.ending.output(&out);
            }
            drop(fin);
            out
        }
    }

    /// Runs `future` as the step without recording its output.
    pub fn instrument<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        let inner = self.instrumented(future);
        async move { inner.await.0 }
    }

    /// Wraps `future` in the step, handing the open step back with the output so that the
    /// caller can record it.
    pub fn instrumented<F: Future>(mut self, future: F) -> Instrumented<F> {
        let spec = self.spec();
        let pending = Pending {
            spec,
            root: self.root,
            inputs: self.inputs,
            metadata: self.metadata,
        };
        Instrumented {
            inner: Some(future),
            state: State::Pending(Box::new(pending)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    static SERIALIZED: AtomicUsize = AtomicUsize::new(0);

    /// Keeps the completed traces' root inputs.
    #[derive(Debug, Default)]
    struct Inputs(std::sync::Mutex<Vec<String>>);

    impl crate::record::sink::TraceSink for Inputs {
        fn submit(&self, trace: crate::record::CompletedTrace) {
            let st = &trace.state;
            let inputs = st.text(st.steps[0].inputs).unwrap_or_default().to_string();
            self.0.lock().unwrap().push(inputs);
        }
    }

    /// Counts its serializations.
    struct Counted;

    impl Serialize for Counted {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            SERIALIZED.fetch_add(1, Relaxed);
            s.serialize_u8(1)
        }
    }

    /// A root step opened inside a trace is the root of a trace of its own, whichever way
    /// it is opened, and the enclosing step stays current around it.
    #[test]
    fn a_root_opened_inside_a_trace_is_a_trace_of_its_own() {
        let sink = std::sync::Arc::new(Inputs::default());
        let as_sink: std::sync::Arc<dyn crate::record::sink::TraceSink> = sink.clone();
        context::with_capture(Some(as_sink), || {
            let outer = step("outer").inputs(&"o").start();
            outer.in_scope(|| {
                step("a").root().inputs(&"a").start().finish();
                step("b").root().inputs(&"b").in_scope(|| ());
                let run = step("c").root().inputs(&"c").run(async { 1 });
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                let mut run = std::pin::pin!(run);
                assert!(run.as_mut().poll(&mut cx).is_ready());
                assert!(
                    crate::context::in_trace(),
                    "the outer step is still current"
                );
                step("nested").inputs(&"n").start().finish();
            });
            outer.finish();
        });
        // One trace per root, each with its inputs; the nested step is in the outer one.
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                r#"{"input":"a"}"#,
                r#"{"input":"b"}"#,
                r#"{"input":"c"}"#,
                r#"{"input":"o"}"#
            ]
        );
    }

    /// A builder's inputs and metadata are not serialized where nothing records (here,
    /// in one of the SDK's callbacks, where no trace starts); they are inside a trace.
    #[test]
    fn a_builders_values_are_serialized_only_where_they_would_be_recorded() {
        crate::util::reentry::untraced(|| {
            let _ = step("x").inputs(&Counted).metadata("m", &Counted);
        });
        assert_eq!(SERIALIZED.load(Relaxed), 0);
        let sink = std::sync::Arc::new(Inputs::default());
        let as_sink: std::sync::Arc<dyn crate::record::sink::TraceSink> = sink.clone();
        context::with_capture(Some(as_sink), || {
            step("x")
                .inputs(&Counted)
                .metadata("m", &Counted)
                .start()
                .finish();
        });
        // The inputs once, the metadata twice (once to see whether it is a `None`).
        assert_eq!(SERIALIZED.load(Relaxed), 3);
        assert_eq!(*sink.0.lock().unwrap(), [r#"{"input":1}"#]);
    }
}
