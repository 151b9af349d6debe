//! The steps of a traced function, as its expansion opens, records and closes them.

use std::borrow::Cow;
use std::fmt::{self, Display};
use std::future::Future;

use serde::Serialize;

use crate::api::step::{Instrumented, OutputSink, StepGuard};

use crate::context::{self, OpenStep, Start, StepSpec};
use crate::record::kind::StepKind;

/// The static description of a traced function.
#[derive(Debug)]
pub struct StepMeta {
    /// The step's name.
    pub name: &'static str,
    /// The step's kind.
    pub kind: StepKind,
    /// `#[trace(inference_pipeline_id = "...")]`.
    pub pipeline_id: Option<&'static str>,
}

impl StepMeta {
    pub(crate) fn spec(&'static self) -> StepSpec {
        StepSpec {
            name: Cow::Borrowed(self.name),
            kind: self.kind,
            traced_fn: true,
            pipeline_id: self.pipeline_id,
        }
    }
}

/// Writes a step's inputs as one JSON object, field by field, straight into the step's
/// record; see [`StepBuilder::start_with_inputs`](crate::StepBuilder::start_with_inputs).
/// (`#[trace]` writes a traced function's arguments with it, in parameter order.)
#[derive(Debug, Default)]
pub struct InputWriter {
    buf: String,
    /// Where the object being written starts: a field written at this offset opens it.
    open: usize,
}

/// A traced function's argument, recorded through `serde::Serialize`.
#[diagnostic::on_unimplemented(
    message = "the traced argument of type `{Self}` is not `serde::Serialize`, so it cannot be recorded",
    label = "this argument does not implement `serde::Serialize`",
    note = "leave it out with `#[trace(skip(<argument>))]`, or leave out every argument with `#[trace(skip_all)]`"
)]
pub trait Input {
    /// Serializes the argument.
    #[doc(hidden)]
    fn __write(&self, out: &mut String) -> Result<(), serde_json::Error>;
}

impl<T: Serialize + ?Sized> Input for T {
    #[inline]
    fn __write(&self, out: &mut String) -> Result<(), serde_json::Error> {
        // SAFETY: the JSON writer writes valid UTF-8 only (the caller cuts off a failed
        // write at a char boundary).
        crate::util::json::to_vec(unsafe { out.as_mut_vec() }, self)
    }
}

impl InputWriter {
    /// Records one input, `name` (any text) to `value`. A value whose serialization fails
    /// is recorded as `null`.
    #[inline]
    pub fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        self.separator();
        crate::util::json::push_str(&mut self.buf, name);
        self.buf.push(':');
        self.value(name, value);
    }

    /// Records one input, `name` (any text) to a JSON object whose fields `fields` writes
    /// with this same writer (nested objects included). When `fields` writes no field,
    /// nothing is recorded, not even `name`.
    ///
    /// ```
    /// let headers = [("user-agent", "curl/8"), ("x-client", "web")];
    /// let h = openlayer_trace::step("request").start_with_inputs(|w| {
    ///     w.field("method", "GET");
    ///     w.object("headers", |w| {
    ///         for (name, value) in headers {
    ///             w.field(name, value);
    ///         }
    ///     });
    ///     w.object("empty", |_| {}); // not recorded
    /// });
    /// h.finish(); // inputs {"method":"GET","headers":{"user-agent":"curl/8","x-client":"web"}}
    /// ```
    pub fn object(&mut self, name: &str, fields: impl FnOnce(&mut InputWriter)) {
        let mark = self.buf.len();
        self.separator();
        crate::util::json::push_str(&mut self.buf, name);
        self.buf.push(':');
        let outer = std::mem::replace(&mut self.open, self.buf.len());
        fields(self);
        if self.buf.len() == self.open {
            self.buf.truncate(mark);
        } else {
            self.buf.push('}');
        }
        self.open = outer;
    }

    /// Opens the object (before its first field) or separates a field from the previous.
    #[inline]
    fn separator(&mut self) {
        self.buf.push(if self.buf.len() == self.open {
            '{'
        } else {
            ','
        });
    }

    /// Records one argument of a traced function (`name` is an identifier, written as it
    /// is). An argument whose serialization fails is recorded as `null`.
    #[doc(hidden)]
    #[inline]
    pub fn arg<T: Input + ?Sized>(&mut self, name: &str, value: &T) {
        self.separator();
        self.buf.push('"');
        self.buf.push_str(name);
        self.buf.push_str("\":");
        self.value(name, value);
    }

    #[inline]
    fn value<T: Input + ?Sized>(&mut self, name: &str, value: &T) {
        let mark = self.buf.len();
        if value.__write(&mut self.buf).is_err() {
            self.buf.truncate(mark);
            self.buf.push_str("null");
            crate::util::diag::warn_limited!(
                argument = name,
                "a traced argument could not be serialized; recorded as null"
            );
        }
    }
}

/// Writes the captured inputs into `buf` (which is empty), as one JSON object or nothing.
pub(crate) fn capture_inputs(buf: &mut String, inputs: impl FnOnce(&mut InputWriter)) {
    let mut w = InputWriter {
        buf: std::mem::take(buf),
        open: 0,
    };
    inputs(&mut w);
    if !w.buf.is_empty() {
        w.buf.push('}');
    }
    *buf = w.buf;
}

/// Opens a synchronous step and makes it current. `inputs` runs only when recording.
#[inline]
pub fn enter_sync(meta: &'static StepMeta, inputs: impl FnOnce(&mut InputWriter)) -> StepGuard {
    let open = context::open_step(meta.spec(), Start::Now, crate::runtime::lazy_init, |buf| {
        capture_inputs(buf, inputs)
    });
    StepGuard::enter(open)
}

/// Runs the body of a synchronous traced function. Taking `FnOnce` makes the body's closure
/// `FnOnce`, so that it may return borrows of what it captured (`fn f(&mut self) -> &mut T`).
#[inline(always)]
pub fn call_once<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// The step of an `async fn`, opened at its first poll.
#[derive(Debug)]
pub struct AsyncStart(Option<OpenStep>);

/// Opens the step of an `async fn` under the current position (without changing it).
#[inline]
pub fn begin_async(meta: &'static StepMeta, inputs: impl FnOnce(&mut InputWriter)) -> AsyncStart {
    AsyncStart(context::open_step(
        meta.spec(),
        Start::Now,
        crate::runtime::lazy_init,
        |buf| capture_inputs(buf, inputs),
    ))
}

/// The inputs of a function that returns the future it builds, recorded when it is
/// called: its arguments may be moved, or shadowed, before the future runs.
#[derive(Debug)]
pub struct EarlyInputs(Option<String>);

/// Records the inputs now, whether or not the step will be recorded when the future is
/// first polled (which is decided then, where and when it runs).
#[inline]
pub fn capture_early(inputs: impl FnOnce(&mut InputWriter)) -> EarlyInputs {
    let mut buf = String::new();
    capture_inputs(&mut buf, inputs);
    EarlyInputs(Some(buf))
}

/// Opens the step of a returned future at its first poll, with the inputs recorded when
/// the function was called.
#[inline]
pub fn begin_async_early(meta: &'static StepMeta, inputs: EarlyInputs) -> AsyncStart {
    AsyncStart(context::open_step(
        meta.spec(),
        Start::Now,
        crate::runtime::lazy_init,
        |buf| {
            if let Some(text) = &inputs.0 {
                buf.push_str(text);
            }
        },
    ))
}

/// Runs the body of an `async fn` in its step.
#[inline]
pub fn instrument<F: Future>(start: AsyncStart, body: F) -> Instrumented<F> {
    if start.0.is_some() {
        crate::api::step::install_panic_hook();
    }
    Instrumented::opened(start.0, body)
}

/// Pins the output type of an `async` body, so that `?` inside it infers as in the function.
#[inline]
pub fn async_body<R, F: Future<Output = R>>(f: F) -> F {
    f
}

// ---------------------------------------------------------------------------------------
// Recording a return value: `Result<T: Serialize, E: Display>` records `Ok` as the output
// and `Err` as the error; any other `T: Serialize` is the output. Chosen by autoref: the
// `Result` case is a trait method on `&Out`, found before the inherent fallback on `&&Out`,
// whose `where` clause then reports a value that cannot be recorded through the
// `on_unimplemented` text of [`Output`] (a trait-method fallback would only say that no
// method matched).

/// A return value being recorded.
#[derive(Debug)]
pub struct Out<'a, T: ?Sized>(pub &'a T);

/// A traced function's return value, recorded through `serde::Serialize`.
#[diagnostic::on_unimplemented(
    message = "`#[trace]` cannot record the return value: `{Self}` does not implement `serde::Serialize`",
    label = "the return value is recorded as the step's output, so its type must implement `serde::Serialize`",
    note = "leave the output out with `#[trace(skip_output)]` (a returned `Err` is still recorded)",
    note = "a `Result` is recorded as its `Ok` value, which must implement `serde::Serialize`, or its `Err`, which must implement `std::fmt::Display` or `std::fmt::Debug`"
)]
pub trait Output {
    /// Records the value as the output of `sink`.
    #[doc(hidden)]
    fn __record_into<S: OutputSink>(&self, sink: &mut S);
}

// Not recommended: the error then names `Output` (with the text above) instead of listing
// every type that implements `Serialize`.
#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized> Output for T {
    #[inline]
    fn __record_into<S: OutputSink>(&self, sink: &mut S) {
        sink.__set_output(self)
    }
}

/// [`Output`] for a return type that involves the function's type parameters or `impl
/// Trait`: the same text, but the compiler also suggests the missing `Serialize` bound.
#[diagnostic::on_unimplemented(
    message = "`#[trace]` cannot record the return value: `{Self}` does not implement `serde::Serialize`",
    label = "the return value is recorded as the step's output, so its type must implement `serde::Serialize`",
    note = "leave the output out with `#[trace(skip_output)]` (a returned `Err` is still recorded)",
    note = "a `Result` is recorded as its `Ok` value, which must implement `serde::Serialize`, or its `Err`, which must implement `std::fmt::Display` or `std::fmt::Debug`"
)]
pub trait GenericOutput {
    /// Records the value as the output of `sink`.
    #[doc(hidden)]
    fn __record_into<S: OutputSink>(&self, sink: &mut S);
}

impl<T: Serialize + ?Sized> GenericOutput for T {
    #[inline]
    fn __record_into<S: OutputSink>(&self, sink: &mut S) {
        sink.__set_output(self)
    }
}

// How a return value is recorded: the macro calls `(&&Out(&ret)).__ol_record(sink)`, and
// method resolution takes the first of these that applies (autoref specialization):
// 1. a `Result` whose error is `Display` ([`RecordResult`], on `&Out`): the `Ok` value as
//    the output, or the error's text under `Exceptions`;
// 2. a `Result` whose error is only `Debug` ([`RecordDebugResult`], on `&&Out`): the same,
//    with the error's `Debug` text;
// 3. any other value (the inherent methods, on `Out`): the value, through `Serialize`.
// With `skip_output`, `__ol_record_err` goes the same way: [`RecordErrorOnly`],
// [`RecordDebugErrorOnly`], then [`RecordNothing`].

/// Records a `Result` whose error is `Display`.
pub trait RecordResult {
    /// Records into `sink`.
    fn __ol_record<S: OutputSink>(&self, sink: &mut S);

    /// The same, for a return type that involves type parameters.
    #[inline]
    fn __ol_record_generic<S: OutputSink>(&self, sink: &mut S) {
        self.__ol_record(sink)
    }
}

/// Records a `Result` into `sink`: the `Ok` value as the output, or the error's text (by
/// `error_text`) under `Exceptions`.
#[inline]
fn record_result<T: Serialize, E, S: OutputSink>(
    result: &Result<T, E>,
    sink: &mut S,
    error_text: impl FnOnce(&E, &mut S),
) {
    if !sink.__is_recording() {
        return;
    }
    match result {
        Ok(v) => sink.__set_output(v),
        Err(e) => error_text(e, sink),
    }
}

impl<T: Serialize, E: Display> RecordResult for &Out<'_, Result<T, E>> {
    #[inline]
    fn __ol_record<S: OutputSink>(&self, sink: &mut S) {
        record_result(self.0, sink, |e, sink| sink.__set_error(e));
    }
}

/// An error that is `Debug` but not `Display`, written with its `Debug` text.
pub(crate) struct DebugText<'a, E>(pub(crate) &'a E);

impl<E: fmt::Debug> Display for DebugText<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Records a `Result` whose error is `Debug` only: an `Err` still fails the step, with the
/// error's `Debug` text under `Exceptions` (not recorded as an output `{"Err": ..}`).
pub trait RecordDebugResult {
    /// Records into `sink`.
    fn __ol_record<S: OutputSink>(&self, sink: &mut S);

    /// The same, for a return type that involves type parameters.
    #[inline]
    fn __ol_record_generic<S: OutputSink>(&self, sink: &mut S) {
        self.__ol_record(sink)
    }
}

impl<T: Serialize, E: fmt::Debug> RecordDebugResult for &&Out<'_, Result<T, E>> {
    #[inline]
    fn __ol_record<S: OutputSink>(&self, sink: &mut S) {
        record_result(self.0, sink, |e, sink| sink.__set_error(&DebugText(e)));
    }
}

impl<T: ?Sized> Out<'_, T> {
    /// Records any other value.
    #[inline]
    pub fn __ol_record<S: OutputSink>(&self, sink: &mut S)
    where
        T: Output,
    {
        if sink.__is_recording() {
            Output::__record_into(self.0, sink);
        }
    }

    /// Records any other value of a type that involves type parameters.
    #[inline]
    pub fn __ol_record_generic<S: OutputSink>(&self, sink: &mut S)
    where
        T: GenericOutput,
    {
        if sink.__is_recording() {
            GenericOutput::__record_into(self.0, sink);
        }
    }
}

/// With `skip_output`: records only the error of a `Result` whose error is `Display`.
pub trait RecordErrorOnly {
    /// Records into `sink`.
    fn __ol_record_err<S: OutputSink>(&self, sink: &mut S);
}

impl<T, E: Display> RecordErrorOnly for &Out<'_, Result<T, E>> {
    #[inline]
    fn __ol_record_err<S: OutputSink>(&self, sink: &mut S) {
        if sink.__is_recording()
            && let Err(e) = self.0
        {
            sink.__set_error(e);
        }
    }
}

/// With `skip_output`: records only the error of a `Result` whose error is `Debug` only,
/// with its `Debug` text.
pub trait RecordDebugErrorOnly {
    /// Records into `sink`.
    fn __ol_record_err<S: OutputSink>(&self, sink: &mut S);
}

impl<T, E: fmt::Debug> RecordDebugErrorOnly for &&Out<'_, Result<T, E>> {
    #[inline]
    fn __ol_record_err<S: OutputSink>(&self, sink: &mut S) {
        if sink.__is_recording()
            && let Err(e) = self.0
        {
            sink.__set_error(&DebugText(e));
        }
    }
}

/// With `skip_output`: records nothing for a value that is not a `Result`.
pub trait RecordNothing {
    /// Does nothing.
    fn __ol_record_err<S: OutputSink>(&self, sink: &mut S);
}

impl<T: ?Sized> RecordNothing for Out<'_, T> {
    #[inline]
    fn __ol_record_err<S: OutputSink>(&self, _sink: &mut S) {}
}
