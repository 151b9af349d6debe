//! A step that is not tied to a scope or a future: opened now, entered around each piece of
//! work done for it (a poll, a `next`, a body chunk), possibly on several threads, and closed
//! explicitly. Streams, iterators, response bodies and client integrations build on it.

use std::fmt::Display;
use std::marker::PhantomData;

use serde::Serialize;

use crate::api::macro_support::steps::{InputWriter, capture_inputs};
use crate::api::step::{Ending, StepBuilder, install_panic_hook, panic_message};
use crate::context::{self, Closing, Entered, OpenStep, TraceContext};
use crate::record::Status;
use crate::util::clock;

impl StepBuilder {
    /// Opens the step now, under the current position (or as the root of a new trace), and
    /// hands it back as a [`StepHandle`] without making it current.
    ///
    /// The step lasts until the handle is [finished](StepHandle::finish) or dropped, which
    /// may be long after this call and on another thread: the handle is `Send`.
    ///
    /// ```
    /// use openlayer_trace::{step, trace};
    ///
    /// #[trace]
    /// fn token(i: u32) -> String { format!("t{i}") }
    ///
    /// let mut stream_step = step("generate").start();
    /// let mut out = String::new();
    /// for i in 0..3 {
    ///     // Steps made while producing an item nest under the handle's step.
    ///     out.push_str(&stream_step.in_scope(|| token(i)));
    /// }
    /// stream_step.output(&out);
    /// stream_step.finish();
    /// ```
    pub fn start(self) -> StepHandle {
        let open = self.open();
        if open.is_some() {
            install_panic_hook();
        }
        StepHandle {
            open,
            ending: Ending::default(),
        }
    }

    /// Opens the step like [`start`](Self::start), with inputs written by `inputs` field by
    /// field straight into the step's record (replacing any set with
    /// [`inputs`](Self::inputs)). Cheaper than `inputs(&value)` on a hot path: the JSON is
    /// written once, where the step keeps it, and `inputs` runs only when the step is
    /// recorded.
    ///
    /// ```
    /// let method = "GET";
    /// let h = openlayer_trace::step("request").start_with_inputs(|w| {
    ///     w.field("method", method);
    ///     w.field("path", "/items/42");
    /// });
    /// h.finish(); // inputs {"method":"GET","path":"/items/42"}
    /// ```
    pub fn start_with_inputs(self, inputs: impl FnOnce(&mut InputWriter)) -> StepHandle {
        let open = self.open_with(|buf| capture_inputs(buf, inputs));
        StepHandle::from_open(open)
    }
}

/// An open step owned by a value rather than a scope; made by [`StepBuilder::start`].
///
/// - [`enter`](Self::enter) (or [`in_scope`](Self::in_scope)) makes the step current on
///   this thread for a while, so that steps opened meanwhile nest under it;
/// - [`output`](Self::output), [`error`](Self::error) and [`metadata`](Self::metadata)
///   record what it produced (metadata keys that name a field of the step's kind, such as
///   `model` or `prompt_tokens` on a chat completion, set that field);
/// - [`finish`](Self::finish) closes it as returned (or failed, when an error was
///   recorded).
///
/// Dropped without `finish`, the step closes as **cancelled** (metadata `cancelled: true`)
/// with the output recorded so far; dropped while its thread unwinds from a panic, it
/// closes with the panic message under `Exceptions`. Either way the trace still ships.
#[must_use = "the step closes (as cancelled) when the handle is dropped"]
pub struct StepHandle {
    open: Option<OpenStep>,
    ending: Ending,
}

impl std::fmt::Debug for StepHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepHandle")
            .field("recording", &self.is_recording())
            .finish()
    }
}

impl StepHandle {
    /// A handle that records nothing (as when tracing is off).
    pub fn disabled() -> Self {
        StepHandle {
            open: None,
            ending: Ending::default(),
        }
    }

    /// Whether the step is recorded (tracing is on, and the step was not refused by
    /// `max_steps_per_trace` or the open traces' memory bound).
    pub fn is_recording(&self) -> bool {
        self.open.as_ref().is_some_and(OpenStep::recorded)
    }

    /// Makes the step current on this thread until the guard is dropped (also when the
    /// thread unwinds). Guards nest; drop them in reverse order. Never hold one across an
    /// `.await` (it is `!Send`, which a `Send` future refuses; a local executor would run
    /// other tasks under it, and their steps would nest in this trace): in async code,
    /// use [`StepBuilder::instrument`](crate::StepBuilder::instrument), or
    /// [`in_scope`](Self::in_scope) around synchronous parts.
    pub fn enter(&self) -> EnteredStep<'_> {
        EnteredStep {
            entered: self
                .open
                .as_ref()
                .map(|o| context::enter_ref(&o.trace, o.idx)),
            _handle: PhantomData,
        }
    }

    /// Runs `f` with the step current.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self.enter();
        f()
    }

    /// The step's position, to carry into spawned work ([`TraceContext::wrap`],
    /// [`TraceContext::attach`]); `None` when tracing is off. For a step that was not
    /// recorded (past `max_steps_per_trace`, or the memory bound) it is that step's
    /// position, so that spawned work is not recorded either. While the context lives,
    /// the trace stays open.
    pub fn context(&self) -> Option<TraceContext> {
        self.open
            .as_ref()
            .map(|o| TraceContext::at(&o.trace, o.idx))
    }

    /// The inference id of the step's trace (the row's id): the one set by
    /// `update_current_trace!(inference_id = ...)`, else the root step's id; `None` when
    /// tracing is off or the trace's root was not recorded (no row will exist). A step
    /// not recorded inside a recorded trace has its trace's id. The same as [`current_inference_id`](crate::current_inference_id)
    /// inside [`in_scope`](Self::in_scope), without making the step current.
    ///
    /// ```
    /// let h = openlayer_trace::step("request").start();
    /// let id = h.inference_id();
    /// assert_eq!(id, h.in_scope(openlayer_trace::current_inference_id));
    /// h.finish();
    /// ```
    pub fn inference_id(&self) -> Option<String> {
        self.open
            .as_ref()
            .and_then(|o| crate::api::annotate::inference_id_of(&o.trace))
    }

    /// Calls `f` with the inference id of the step's trace (see
    /// [`inference_id`](Self::inference_id)) and returns what it returns; `None` (and `f`
    /// not called) when there is no id. Unlike `inference_id`, a generated id is lent from
    /// the stack rather than allocated: for a hot path that copies the id somewhere, such
    /// as a web middleware writing it into a response header.
    ///
    /// ```
    /// let h = openlayer_trace::step("request").start();
    /// let len = h.with_inference_id(str::len);
    /// assert_eq!(len, h.inference_id().map(|id| id.len()));
    /// h.finish();
    /// ```
    pub fn with_inference_id<R>(&self, f: impl FnOnce(&str) -> R) -> Option<R> {
        self.open
            .as_ref()
            .and_then(|o| crate::api::annotate::with_inference_id_of(&o.trace, f))
    }

    /// Records the step's output, replacing any earlier one.
    pub fn output<T: Serialize + ?Sized>(&mut self, output: &T) {
        if self.is_recording() {
            self.ending.output(output);
        }
    }

    /// Records an error: the step closes with output `null` and the error's text under
    /// its metadata `Exceptions`.
    pub fn error(&mut self, error: &dyn Display) {
        if self.is_recording() {
            self.ending.error(error);
        }
    }

    /// Records an error under the step's metadata `Exceptions` **without** failing it: the
    /// step goes on, and keeps the output it closes with. This is how a stream records an
    /// `Err` item. Several errors are kept, one per line.
    ///
    /// ```
    /// let mut h = openlayer_trace::step("stream").start();
    /// h.exception(&"chunk 3: connection reset");
    /// h.output(&"partial answer");
    /// h.finish(); // output "partial answer", metadata Exceptions "chunk 3: connection reset"
    /// ```
    pub fn exception(&mut self, error: &dyn Display) {
        if let Some(open) = &self.open {
            context::add_exception(open, &crate::api::step::error_text(error));
        }
    }

    /// Sets a metadata key of the step, or the field of its kind that the key names (the
    /// last write wins; `None`/`null` is ignored).
    pub fn metadata<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if let Some(open) = &self.open {
            crate::api::annotate::apply_step(open, vec![(key.to_string(), value)]);
        }
    }

    /// Closes the step as returned, with its output (or as failed, when an error was
    /// recorded).
    ///
    /// The code that calls `finish` ran to it, so the step has returned even while the
    /// thread unwinds from a panic (a `Drop` that finishes it, a response body read to its
    /// end during another panic). A handle *dropped* while a panic unwinds through it,
    /// one opened before the panic, is recorded as panicked.
    pub fn finish(mut self) {
        if let Some(open) = self.open.take() {
            self.ending.close_as(&open, clock::now(), false);
        }
    }

    /// Whether a panic is unwinding through this handle's step: the thread unwinds, and
    /// did not when the step opened.
    pub(crate) fn unwinding_through(&self) -> bool {
        self.ending.unwinding_through()
    }

    /// Closes the step as panicked with `message`: a panic unwound through it earlier
    /// (the `tracing` layer saw it leave the span), though it closes only now.
    #[cfg(feature = "tracing-layer")]
    pub(crate) fn finish_panicked(mut self, message: Box<str>) {
        if let Some(open) = self.open.take() {
            if let Some(buf) = self.ending.output.take() {
                crate::record::give_scratch(buf);
            }
            let closing = Closing {
                status: Status::Panicked,
                output: None,
                error: Some(message),
            };
            context::close_step(&open, clock::now(), closing);
            if open.idx == 0 {
                // As `Ending::close_as` does for a root (see there).
                crate::api::step::clear_panic_message();
            }
        }
    }
}

impl StepHandle {
    /// A handle owning `open` (already opened, possibly by a traced function).
    pub(crate) fn from_open(open: Option<OpenStep>) -> Self {
        if open.is_some() {
            install_panic_hook();
        }
        StepHandle {
            open,
            ending: Ending::default(),
        }
    }

    /// The open step, when recorded.
    pub(crate) fn open_step(&self) -> Option<&OpenStep> {
        self.open.as_ref()
    }
}

impl Drop for StepHandle {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        let end = clock::now();
        if self.ending.unwinding_through() {
            let closing = Closing {
                status: Status::Panicked,
                output: None,
                error: Some(panic_message(&open)),
            };
            context::close_step(&open, end, closing);
            if open.idx == 0 {
                // As `Ending::close_as` does for a root (see there).
                crate::api::step::clear_panic_message();
            }
            return;
        }
        let output = self.ending.output.take();
        let closing = match self.ending.error.take() {
            // An error recorded before the end: the step failed, and it also stopped early.
            Some(error) => {
                context::set_cancelled(&open);
                Closing {
                    status: Status::Error,
                    output: None,
                    error: Some(error),
                }
            }
            None => Closing {
                status: Status::Cancelled,
                output: output.as_deref(),
                error: None,
            },
        };
        context::close_step(&open, end, closing);
        if let Some(buf) = output {
            crate::record::give_scratch(buf);
        }
    }
}

/// Keeps a [`StepHandle`]'s step current on this thread; see [`StepHandle::enter`].
#[must_use = "the step stops being current when the guard is dropped"]
pub struct EnteredStep<'a> {
    entered: Option<Entered>,
    _handle: PhantomData<&'a StepHandle>,
}

impl Drop for EnteredStep<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.entered.take() {
            context::exit(e);
        }
    }
}

impl std::fmt::Debug for EnteredStep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnteredStep")
    }
}
