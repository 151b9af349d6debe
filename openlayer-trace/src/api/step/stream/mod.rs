//! Streams and iterators as steps: one step for the whole stream, from its creation to its
//! end, with the items as its output.
//!
//! [`Traced`] wraps a [`Stream`] or an [`Iterator`] in a step (a [`StepHandle`]). On every
//! poll or `next` it makes the step current, so that steps opened while producing an item
//! nest under it, whichever task or thread consumes the stream. Each item goes to an
//! [`Accumulator`], which records the step's output when the stream ends; the time to the
//! first item is recorded as the step's metadata `timeToFirstToken` (milliseconds). A
//! stream dropped before its end closes its step with the output received so far and
//! metadata `cancelled: true`.
//!
//! `#[trace]` does this for functions that return `impl Stream` or `impl Iterator` (or a
//! boxed one, with `#[trace(stream)]`); [`TraceStreamExt`] and [`TraceIteratorExt`] do it
//! for any other stream or iterator.

mod accumulate;
mod boxed;
#[doc(hidden)]
pub mod expand;

use std::borrow::Cow;
use std::fmt::Display;
use std::iter::FusedIterator;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_core::stream::FusedStream;
use pin_project_lite::pin_project;

pub use accumulate::{Accumulator, Collect, Discard, OkItems};
pub use boxed::FromTraced;

use crate::api::step::handle::StepHandle;
use crate::api::step::{StepBuilder, step};

/// The most bytes of output a traced stream keeps: an eighth of the configuration's
/// `batch_max_bytes`, and at most a sixteenth of its `queue_max_bytes` (512 KiB with the
/// defaults). [`Collect`] keeps items up to it and counts those past it (the output ends
/// with `…[truncated N items]`), so that a stream that never ends holds bounded memory
/// and its row still fits in a request. An [`Accumulator`] of your own should bound what
/// it keeps by it too.
///
/// ```
/// let max = openlayer_trace::stream::output_max_bytes();
/// assert!(max >= 128);
/// ```
pub fn output_max_bytes() -> usize {
    crate::util::open_traces::stream_output_max()
}

pin_project! {
    /// A stream or iterator traced as one step; see the [module docs](self).
    ///
    /// It is a [`Stream`] when `S` is one and an [`Iterator`] when `S` is one, with the same
    /// items, and keeps what it can of `S`: `Send`, `Sync`, `Unpin`, `size_hint`,
    /// [`FusedStream`], [`ExactSizeIterator`], [`DoubleEndedIterator`] and
    /// [`FusedIterator`].
    #[must_use = "streams and iterators do nothing unless consumed"]
    pub struct Traced<S, A> {
        // Dropped first: whatever steps the inner stream holds close before the stream's own.
        #[pin]
        inner: S,
        step: Option<Active<A>>,
    }
}

/// The recording part of a [`Traced`], while its step is open.
struct Active<A> {
    handle: StepHandle,
    acc: A,
    finish: fn(&mut A, &mut StepHandle),
    first: bool,
    done: bool,
}

impl<A> Active<A> {
    fn new<I: ?Sized>(handle: StepHandle, acc: A) -> Option<Self>
    where
        A: Accumulator<I>,
    {
        // A step that is not recorded is still entered around each poll, so that steps
        // made while producing items are not taken for its parent's.
        handle.open_step().is_some().then(|| Active {
            handle,
            acc,
            finish: <A as Accumulator<I>>::finish,
            first: true,
            done: false,
        })
    }

    #[inline]
    fn item<I: ?Sized>(&mut self, item: &I)
    where
        A: Accumulator<I>,
    {
        if self.first {
            self.first_item();
        }
        // Nothing is kept of a step that is not recorded.
        if self.handle.is_recording() {
            self.acc.push(item, &mut self.handle);
        }
    }

    /// Records `timeToFirstToken`: milliseconds from the step's start to now.
    #[cold]
    fn first_item(&mut self) {
        self.first = false;
        if let Some(open) = self.handle.open_step() {
            let now = open.trace.offset(crate::util::clock::now());
            let mut st = open.trace.lock();
            if let Some(rec) = st.steps.get_mut(open.idx as usize) {
                let ms = now.saturating_sub(rec.start).max(0) as f64 / 1e6;
                if let Some(json) = crate::record::to_json(&ms) {
                    rec.set_metadata(Cow::Borrowed("timeToFirstToken"), json);
                }
            }
        }
    }

    /// The stream ended: records the output and closes the step as returned.
    fn end(mut self) {
        self.done = true;
        (self.finish)(&mut self.acc, &mut self.handle);
        std::mem::replace(&mut self.handle, StepHandle::disabled()).finish();
    }
}

impl<A> Drop for Active<A> {
    fn drop(&mut self) {
        // Dropped before the end: the output so far, then the handle closes as cancelled
        // (or with the panic unwinding through it).
        if !self.done && !self.handle.unwinding_through() {
            (self.finish)(&mut self.acc, &mut self.handle);
        }
    }
}

/// Closes the step as panicked when the poll (or `next`) it guards panics: declared before
/// the step is entered, it drops the step once the step is no longer current. Without it, a
/// panic caught before the stream is dropped (`catch_unwind` around a `by_ref()` loop, a
/// `CatchPanic` future) left the step open, to close as merely cancelled. The flag: the
/// thread was already unwinding before the poll (a stream read in a `Drop`), so unwinding
/// now is not the poll's panic.
struct CloseOnPanic<'a, A>(&'a mut Option<Active<A>>, bool);

impl<'a, A> CloseOnPanic<'a, A> {
    #[inline]
    fn new(step: &'a mut Option<Active<A>>) -> Self {
        CloseOnPanic(step, std::thread::panicking())
    }
}

impl<A> Drop for CloseOnPanic<'_, A> {
    #[inline]
    fn drop(&mut self) {
        if !self.1 && std::thread::panicking() {
            drop(self.0.take());
        }
    }
}

impl<S, A> Traced<S, A> {
    /// Traces the stream `inner` in the step of `handle` (see [`StepBuilder::start`]), its
    /// items accumulated by `acc`. For code that already holds the step, such as a client
    /// integration that opened it before the request.
    pub fn stream(inner: S, handle: StepHandle, acc: A) -> Self
    where
        S: Stream,
        A: Accumulator<S::Item>,
    {
        Traced {
            inner,
            step: Active::new::<S::Item>(handle, acc),
        }
    }

    /// Traces the iterator `inner` in the step of `handle`, its items accumulated by `acc`.
    pub fn iter(inner: S, handle: StepHandle, acc: A) -> Self
    where
        S: Iterator,
        A: Accumulator<S::Item>,
    {
        Traced {
            inner,
            step: Active::new::<S::Item>(handle, acc),
        }
    }

    /// The wrapped stream or iterator.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the step is still open (tracing is on and the stream has not ended).
    pub fn is_recording(&self) -> bool {
        self.step.as_ref().is_some_and(|a| a.handle.is_recording())
    }
}

impl<S, A> std::fmt::Debug for Traced<S, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("recording", &self.is_recording())
            .finish_non_exhaustive()
    }
}

impl<S: Stream, A: Accumulator<S::Item>> Stream for Traced<S, A> {
    type Item = S::Item;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if this.step.is_none() {
            return this.inner.poll_next(cx);
        }
        let polled = {
            let guard = CloseOnPanic::new(this.step);
            let _entered = guard.0.as_ref().map(|a| a.handle.enter());
            this.inner.poll_next(cx)
        };
        match &polled {
            Poll::Ready(Some(item)) => {
                if let Some(active) = this.step.as_mut() {
                    active.item(item);
                }
            }
            Poll::Ready(None) => {
                if let Some(active) = this.step.take() {
                    active.end();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<S: FusedStream, A: Accumulator<S::Item>> FusedStream for Traced<S, A> {
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<S: Iterator, A: Accumulator<S::Item>> Traced<S, A> {
    #[inline]
    fn advance(&mut self, next: impl FnOnce(&mut S) -> Option<S::Item>) -> Option<S::Item> {
        if self.step.is_none() {
            return next(&mut self.inner);
        }
        let item = {
            let guard = CloseOnPanic::new(&mut self.step);
            let _entered = guard.0.as_ref().map(|a| a.handle.enter());
            next(&mut self.inner)
        };
        match &item {
            Some(item) => {
                if let Some(active) = self.step.as_mut() {
                    active.item(item);
                }
            }
            None => {
                if let Some(active) = self.step.take() {
                    active.end();
                }
            }
        }
        item
    }
}

impl<S: Iterator, A: Accumulator<S::Item>> Iterator for Traced<S, A> {
    type Item = S::Item;

    #[inline]
    fn next(&mut self) -> Option<S::Item> {
        self.advance(Iterator::next)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<S: DoubleEndedIterator, A: Accumulator<S::Item>> DoubleEndedIterator for Traced<S, A> {
    /// Items taken from the back are accumulated in the order they are taken.
    #[inline]
    fn next_back(&mut self) -> Option<S::Item> {
        self.advance(DoubleEndedIterator::next_back)
    }
}

impl<S: ExactSizeIterator, A: Accumulator<S::Item>> ExactSizeIterator for Traced<S, A> {
    #[inline]
    fn len(&self) -> usize {
        self.inner.len()
    }
}

impl<S: FusedIterator, A: Accumulator<S::Item>> FusedIterator for Traced<S, A> {}

// ---------------------------------------------------------------------------------------
// Extension traits

/// An item a traced stream can record with the default accumulator ([`Collect`]).
#[diagnostic::on_unimplemented(
    message = "the stream item `{Self}` does not implement `serde::Serialize`, so it cannot be recorded",
    label = "the items of a traced stream are recorded as its output",
    note = "for a stream of `Result`s whose error is not `Serialize`, use `.try_traced(name)` (or `#[trace]`, which records each `Err` under `Exceptions`)",
    note = "or leave the output out with `#[trace(skip_output)]`, or record it your way with `.traced_with(step, accumulator)`"
)]
pub trait TracedItem: serde::Serialize {}

impl<T: serde::Serialize + ?Sized> TracedItem for T {}

/// Traces a [`Stream`] as one step: `stream.traced("name")`.
///
/// ```
/// use openlayer_trace::{TraceStreamExt, trace};
/// # use std::pin::Pin;
/// # use std::task::{Context, Poll};
/// # struct Tokens(Vec<&'static str>);
/// # impl futures_core::Stream for Tokens {
/// #     type Item = &'static str;
/// #     fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<&'static str>> {
/// #         Poll::Ready(if self.0.is_empty() { None } else { Some(self.0.remove(0)) })
/// #     }
/// # }
/// # async fn collect(mut s: impl futures_core::Stream<Item = &'static str> + Unpin) -> String {
/// #     let mut out = String::new();
/// #     while let Some(t) = std::future::poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await { out.push_str(t); }
/// #     out
/// # }
///
/// #[trace]
/// async fn handler() -> String {
///     let tokens = Tokens(vec!["Hel", "lo"]).traced("model stream");
///     collect(tokens).await // the step "model stream" records "Hello"
/// }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(handler());
/// ```
pub trait TraceStreamExt: Stream + Sized {
    /// Traces this stream as the step `name`, its items recorded by [`Collect`] (strings
    /// joined, other items as a JSON list). The step opens now, under the current step.
    fn traced(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, Collect>
    where
        Self::Item: TracedItem,
    {
        Traced::stream(self, step(name).start(), Collect::new())
    }

    /// Traces a stream of `Result`s: `Ok` items recorded by [`Collect`], each `Err`'s
    /// `Display` under the step's `Exceptions` (the step goes on).
    fn try_traced<T, E>(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, OkItems>
    where
        Self: Stream<Item = Result<T, E>>,
        T: TracedItem,
        E: Display,
    {
        Traced::stream(self, step(name).start(), OkItems(Collect::new()))
    }

    /// Traces this stream as the step `builder` describes (kind, inputs, metadata), its
    /// items recorded by `acc`.
    fn traced_with<A: Accumulator<Self::Item>>(
        self,
        builder: StepBuilder,
        acc: A,
    ) -> Traced<Self, A> {
        Traced::stream(self, builder.start(), acc)
    }
}

impl<S: Stream> TraceStreamExt for S {}

/// Traces an [`Iterator`] as one step: `iter.traced("name")`.
///
/// ```
/// use openlayer_trace::{TraceIteratorExt, trace};
///
/// #[trace]
/// fn handler() -> usize {
///     let words = ["a", "b", "c"].into_iter().traced("words"); // output "abc"
///     words.count()
/// }
/// assert_eq!(handler(), 3);
/// ```
pub trait TraceIteratorExt: Iterator + Sized {
    /// Traces this iterator as the step `name`, its items recorded by [`Collect`].
    fn traced(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, Collect>
    where
        Self::Item: TracedItem,
    {
        Traced::iter(self, step(name).start(), Collect::new())
    }

    /// Traces an iterator of `Result`s: `Ok` items recorded by [`Collect`], each `Err`'s
    /// `Display` under the step's `Exceptions` (the step goes on).
    fn try_traced<T, E>(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, OkItems>
    where
        Self: Iterator<Item = Result<T, E>>,
        T: TracedItem,
        E: Display,
    {
        Traced::iter(self, step(name).start(), OkItems(Collect::new()))
    }

    /// Traces this iterator as the step `builder` describes, its items recorded by `acc`.
    fn traced_with<A: Accumulator<Self::Item>>(
        self,
        builder: StepBuilder,
        acc: A,
    ) -> Traced<Self, A> {
        Traced::iter(self, builder.start(), acc)
    }
}

impl<I: Iterator> TraceIteratorExt for I {}
