//! Steps made by hand (`step`, its builder, guards, handles), compiled out: nothing is
//! recorded, every value passes through unchanged.

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;

use crate::noop::context::TraceContext;
use crate::record::kind::StepKind;

/// Where a traced function's result is recorded.
pub trait OutputSink {
    /// Whether the step is recorded.
    #[doc(hidden)]
    fn __is_recording(&self) -> bool;
    /// Records the output.
    #[doc(hidden)]
    fn __set_output<T: Serialize + ?Sized>(&mut self, output: &T);
    /// Records an error.
    #[doc(hidden)]
    fn __set_error(&mut self, error: &dyn Display);
}

/// A step to open (compiled out: it never records).
#[inline(always)]
pub fn step(name: impl Into<Cow<'static, str>>) -> StepBuilder {
    let _ = name;
    StepBuilder { _private: () }
}

/// Describes a step before it opens (compiled out: keeps nothing).
#[derive(Debug)]
#[must_use = "a step builder does nothing until entered or run"]
pub struct StepBuilder {
    _private: (),
}

impl StepBuilder {
    /// The step's kind (ignored).
    #[inline(always)]
    pub fn kind(self, kind: StepKind) -> Self {
        let _ = kind;
        self
    }

    /// Opens the step as the root of a new trace (ignored).
    #[inline(always)]
    pub fn root(self) -> Self {
        self
    }

    /// The step's inputs (ignored, never serialized).
    #[inline(always)]
    pub fn inputs<T: Serialize + ?Sized>(self, inputs: &T) -> Self {
        let _ = inputs;
        self
    }

    /// A metadata entry (ignored, never serialized).
    #[inline(always)]
    pub fn metadata<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Self {
        let _ = (key, value);
        self
    }

    /// A guard that records nothing.
    #[inline(always)]
    pub fn enter(self) -> StepGuard {
        StepGuard {
            _not_send: PhantomData,
        }
    }

    /// Runs `f` and returns its result.
    #[inline(always)]
    pub fn in_scope<R: Serialize>(self, f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `future` itself.
    #[inline(always)]
    pub fn run<F>(self, future: F) -> impl Future<Output = F::Output>
    where
        F: Future,
        F::Output: Serialize,
    {
        future
    }

    /// `future` itself.
    #[inline(always)]
    pub fn instrument<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        future
    }

    /// `future`, its output paired with a finisher that records nothing.
    #[inline(always)]
    pub fn instrumented<F: Future>(self, future: F) -> Instrumented<F> {
        Instrumented { inner: future }
    }

    /// A handle that records nothing.
    #[inline(always)]
    pub fn start(self) -> StepHandle {
        StepHandle { _private: () }
    }

    /// A handle that records nothing; `inputs` is not called.
    #[inline(always)]
    pub fn start_with_inputs(self, inputs: impl FnOnce(&mut InputWriter)) -> StepHandle {
        let _ = inputs;
        StepHandle { _private: () }
    }

    /// A handle that records nothing; `inputs` is not called.
    #[inline(always)]
    pub fn start_with_text_inputs(self, inputs: impl FnOnce(&mut TextInputs)) -> StepHandle {
        let _ = inputs;
        StepHandle { _private: () }
    }
}

/// Writes a step's inputs as text (compiled out: never called).
#[derive(Debug)]
pub struct TextInputs {
    _private: (),
}

impl TextInputs {
    /// Does nothing.
    #[inline(always)]
    pub fn field(&mut self, name: &str, value: &str) {
        let _ = (name, value);
    }

    /// Does nothing.
    #[inline(always)]
    pub fn json(&mut self, name: &str, value: &serde_json::value::RawValue) {
        let _ = (name, value);
    }

    /// Does nothing.
    #[inline(always)]
    pub fn object(&mut self, name: &str, fields: impl FnOnce(&mut TextInputs)) {
        let _ = (name, fields);
    }
}

/// Writes a step's inputs field by field (compiled out: never called).
#[derive(Debug)]
pub struct InputWriter {
    _private: (),
}

impl InputWriter {
    /// Does nothing.
    #[inline(always)]
    pub fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        let _ = (name, value);
    }

    /// Does nothing.
    #[inline(always)]
    pub fn object(&mut self, name: &str, fields: impl FnOnce(&mut InputWriter)) {
        let _ = (name, fields);
    }
}

/// A synchronous step's guard (compiled out: records nothing).
#[must_use = "the step closes when the guard is dropped"]
#[derive(Debug)]
pub struct StepGuard {
    _not_send: PhantomData<*const ()>,
}

impl StepGuard {
    /// Always false.
    #[inline(always)]
    pub fn is_recording(&self) -> bool {
        false
    }

    /// Does nothing.
    #[inline(always)]
    pub fn output<T: Serialize + ?Sized>(&mut self, output: &T) {
        let _ = output;
    }

    /// Does nothing.
    #[inline(always)]
    pub fn error(&mut self, error: &dyn Display) {
        let _ = error;
    }

    /// Does nothing.
    #[inline(always)]
    pub fn metadata<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        let _ = (key, value);
    }
}

impl OutputSink for StepGuard {
    #[inline(always)]
    fn __is_recording(&self) -> bool {
        false
    }
    #[inline(always)]
    fn __set_output<T: Serialize + ?Sized>(&mut self, _output: &T) {}
    #[inline(always)]
    fn __set_error(&mut self, _error: &dyn Display) {}
}

/// A future run by [`StepBuilder::instrumented`]: the inner future, its output paired
/// with a [`StepFinisher`] that records nothing.
#[must_use = "futures do nothing unless polled"]
pub struct Instrumented<F> {
    inner: F,
}

impl<F> std::fmt::Debug for Instrumented<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = (F::Output, StepFinisher);

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is structurally pinned: never moved out of the pinned `self`.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        inner
            .poll(cx)
            .map(|out| (out, StepFinisher { _private: () }))
    }
}

/// Ends an instrumented step (compiled out: records nothing).
#[must_use = "the step closes when this is dropped"]
#[derive(Debug)]
pub struct StepFinisher {
    _private: (),
}

impl StepFinisher {
    /// Always false.
    #[inline(always)]
    pub fn is_recording(&self) -> bool {
        false
    }
}

impl OutputSink for StepFinisher {
    #[inline(always)]
    fn __is_recording(&self) -> bool {
        false
    }
    #[inline(always)]
    fn __set_output<T: Serialize + ?Sized>(&mut self, _output: &T) {}
    #[inline(always)]
    fn __set_error(&mut self, _error: &dyn Display) {}
}

/// A step not tied to a scope (compiled out: records nothing).
#[must_use = "the step closes (as cancelled) when the handle is dropped"]
#[derive(Debug)]
pub struct StepHandle {
    _private: (),
}

impl StepHandle {
    /// A handle that records nothing.
    #[inline(always)]
    pub fn disabled() -> Self {
        StepHandle { _private: () }
    }

    /// Always false.
    #[inline(always)]
    pub fn is_recording(&self) -> bool {
        false
    }

    /// Always `None` (compiled out).
    #[inline(always)]
    pub fn inference_id(&self) -> Option<String> {
        None
    }

    /// Always `None`, and `f` is not called (compiled out).
    #[inline(always)]
    pub fn with_inference_id<R>(&self, f: impl FnOnce(&str) -> R) -> Option<R> {
        let _ = f;
        None
    }

    /// A guard that does nothing.
    #[inline(always)]
    pub fn enter(&self) -> EnteredStep<'_> {
        EnteredStep {
            _handle: PhantomData,
        }
    }

    /// Runs `f`.
    #[inline(always)]
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    /// Always `None`.
    #[inline(always)]
    pub fn context(&self) -> Option<TraceContext> {
        None
    }

    /// Does nothing.
    #[inline(always)]
    pub fn output<T: Serialize + ?Sized>(&mut self, output: &T) {
        let _ = output;
    }

    /// Does nothing.
    #[inline(always)]
    pub fn error(&mut self, error: &dyn Display) {
        let _ = error;
    }

    /// Does nothing.
    #[inline(always)]
    pub fn exception(&mut self, error: &dyn Display) {
        let _ = error;
    }

    /// Does nothing.
    #[inline(always)]
    pub fn metadata<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        let _ = (key, value);
    }

    /// Does nothing.
    #[inline(always)]
    pub fn finish(self) {}
}

/// What [`StepHandle::enter`] returns (compiled out: does nothing).
#[must_use = "the step stops being current when the guard is dropped"]
#[derive(Debug)]
pub struct EnteredStep<'a> {
    _handle: PhantomData<(&'a StepHandle, *const ())>,
}
