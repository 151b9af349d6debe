//! Streams and iterators traced as one step, compiled out: [`Traced`] is a transparent
//! wrapper (the inner stream's items, `size_hint` and auto traits), and accumulators are
//! never called.

use std::borrow::Cow;
use std::fmt::Display;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_core::stream::FusedStream;
use serde::Serialize;

use crate::noop::step::{StepBuilder, StepHandle};

/// The most bytes of output a traced stream keeps (compiled out: the default, 512 KiB,
/// since nothing is kept).
pub fn output_max_bytes() -> usize {
    512 * 1024
}

/// Folds a traced stream's items into its step's output (compiled out: never called).
pub trait Accumulator<Item: ?Sized> {
    /// Takes one item into account.
    fn push(&mut self, item: &Item, step: &mut StepHandle);

    /// Records the output on `step`.
    fn finish(&mut self, step: &mut StepHandle);
}

/// The default accumulator (compiled out: never called).
#[derive(Debug, Default)]
pub struct Collect {
    _private: (),
}

impl Collect {
    /// A new, empty accumulator.
    #[inline(always)]
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Serialize + ?Sized> Accumulator<T> for Collect {
    #[inline(always)]
    fn push(&mut self, _item: &T, _step: &mut StepHandle) {}
    #[inline(always)]
    fn finish(&mut self, _step: &mut StepHandle) {}
}

/// For a stream of `Result`s: `Ok` values to the inner accumulator, errors as exceptions.
#[derive(Debug, Default)]
pub struct OkItems<A = Collect>(pub A);

impl<T, E: Display, A: Accumulator<T>> Accumulator<Result<T, E>> for OkItems<A> {
    #[inline(always)]
    fn push(&mut self, item: &Result<T, E>, step: &mut StepHandle) {
        if let Ok(v) = item {
            self.0.push(v, step);
        }
    }
    #[inline(always)]
    fn finish(&mut self, step: &mut StepHandle) {
        self.0.finish(step);
    }
}

/// Records no output.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl<T: ?Sized> Accumulator<T> for Discard {
    #[inline(always)]
    fn push(&mut self, _item: &T, _step: &mut StepHandle) {}
    #[inline(always)]
    fn finish(&mut self, _step: &mut StepHandle) {}
}

/// A traced stream or iterator (compiled out: the inner one, passed through).
#[must_use = "streams and iterators do nothing unless consumed"]
pub struct Traced<S, A> {
    inner: S,
    _acc: PhantomData<fn() -> A>,
}

impl<S, A> Traced<S, A> {
    /// `inner`, passed through (`handle` and `acc` are dropped).
    #[inline(always)]
    pub fn stream(inner: S, handle: StepHandle, acc: A) -> Self
    where
        S: Stream,
        A: Accumulator<S::Item>,
    {
        let _ = (handle, acc);
        Traced {
            inner,
            _acc: PhantomData,
        }
    }

    /// `inner`, passed through (`handle` and `acc` are dropped).
    #[inline(always)]
    pub fn iter(inner: S, handle: StepHandle, acc: A) -> Self
    where
        S: Iterator,
        A: Accumulator<S::Item>,
    {
        let _ = (handle, acc);
        Traced {
            inner,
            _acc: PhantomData,
        }
    }

    /// The wrapped stream or iterator.
    #[inline(always)]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Always false.
    #[inline(always)]
    pub fn is_recording(&self) -> bool {
        false
    }

    #[inline(always)]
    fn inner_pin(self: Pin<&mut Self>) -> Pin<&mut S> {
        // SAFETY: `inner` is structurally pinned: never moved out of the pinned `self`
        // (no `Drop` impl, and `Unpin` only when `S` is, as the auto trait says).
        unsafe { self.map_unchecked_mut(|s| &mut s.inner) }
    }
}

impl<S, A> std::fmt::Debug for Traced<S, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced").finish_non_exhaustive()
    }
}

impl<S: Stream, A: Accumulator<S::Item>> Stream for Traced<S, A> {
    type Item = S::Item;

    #[inline(always)]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.inner_pin().poll_next(cx)
    }

    #[inline(always)]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<S: FusedStream, A: Accumulator<S::Item>> FusedStream for Traced<S, A> {
    #[inline(always)]
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<S: Iterator, A: Accumulator<S::Item>> Iterator for Traced<S, A> {
    type Item = S::Item;

    #[inline(always)]
    fn next(&mut self) -> Option<S::Item> {
        self.inner.next()
    }

    #[inline(always)]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<S: DoubleEndedIterator, A: Accumulator<S::Item>> DoubleEndedIterator for Traced<S, A> {
    #[inline(always)]
    fn next_back(&mut self) -> Option<S::Item> {
        self.inner.next_back()
    }
}

impl<S: ExactSizeIterator, A: Accumulator<S::Item>> ExactSizeIterator for Traced<S, A> {}

impl<S: FusedIterator, A: Accumulator<S::Item>> FusedIterator for Traced<S, A> {}

/// A declared return type that a [`Traced`] stream or iterator can be turned into (the
/// boxed trait objects, as with `enable`).
pub trait FromTraced<W> {
    /// Boxes the traced stream as `Self`.
    fn from_traced(traced: W) -> Self;
}

macro_rules! boxed_stream {
    ($($bounds:tt)*) => {
        impl<'a, T, S, A> FromTraced<Traced<S, A>> for Pin<Box<dyn Stream<Item = T> $($bounds)* + 'a>>
        where
            Traced<S, A>: Stream<Item = T> $($bounds)* + 'a,
        {
            fn from_traced(traced: Traced<S, A>) -> Self {
                Box::pin(traced)
            }
        }

        impl<'a, T, S, A> FromTraced<Traced<S, A>> for Box<dyn Stream<Item = T> + Unpin $($bounds)* + 'a>
        where
            Traced<S, A>: Stream<Item = T> + Unpin $($bounds)* + 'a,
        {
            fn from_traced(traced: Traced<S, A>) -> Self {
                Box::new(traced)
            }
        }

        impl<'a, T, S, A> FromTraced<Traced<S, A>> for Box<dyn Iterator<Item = T> $($bounds)* + 'a>
        where
            Traced<S, A>: Iterator<Item = T> $($bounds)* + 'a,
        {
            fn from_traced(traced: Traced<S, A>) -> Self {
                Box::new(traced)
            }
        }
    };
}

boxed_stream!();
boxed_stream!(+ Send);
boxed_stream!(+ Send + Sync);

/// An item a traced stream can record with the default accumulator ([`Collect`]).
pub trait TracedItem: Serialize {}

impl<T: Serialize + ?Sized> TracedItem for T {}

/// Traces a [`Stream`] as one step (compiled out: the stream, passed through).
pub trait TraceStreamExt: Stream + Sized {
    /// This stream, passed through.
    #[inline(always)]
    fn traced(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, Collect>
    where
        Self::Item: TracedItem,
    {
        let _ = name;
        Traced::stream(self, StepHandle::disabled(), Collect::new())
    }

    /// This stream, passed through.
    #[inline(always)]
    fn try_traced<T, E>(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, OkItems>
    where
        Self: Stream<Item = Result<T, E>>,
        T: TracedItem,
        E: Display,
    {
        let _ = name;
        Traced::stream(self, StepHandle::disabled(), OkItems(Collect::new()))
    }

    /// This stream, passed through.
    #[inline(always)]
    fn traced_with<A: Accumulator<Self::Item>>(
        self,
        builder: StepBuilder,
        acc: A,
    ) -> Traced<Self, A> {
        Traced::stream(self, builder.start(), acc)
    }
}

impl<S: Stream> TraceStreamExt for S {}

/// Traces an [`Iterator`] as one step (compiled out: the iterator, passed through).
pub trait TraceIteratorExt: Iterator + Sized {
    /// This iterator, passed through.
    #[inline(always)]
    fn traced(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, Collect>
    where
        Self::Item: TracedItem,
    {
        let _ = name;
        Traced::iter(self, StepHandle::disabled(), Collect::new())
    }

    /// This iterator, passed through.
    #[inline(always)]
    fn try_traced<T, E>(self, name: impl Into<Cow<'static, str>>) -> Traced<Self, OkItems>
    where
        Self: Iterator<Item = Result<T, E>>,
        T: TracedItem,
        E: Display,
    {
        let _ = name;
        Traced::iter(self, StepHandle::disabled(), OkItems(Collect::new()))
    }

    /// This iterator, passed through.
    #[inline(always)]
    fn traced_with<A: Accumulator<Self::Item>>(
        self,
        builder: StepBuilder,
        acc: A,
    ) -> Traced<Self, A> {
        Traced::iter(self, builder.start(), acc)
    }
}

impl<I: Iterator> TraceIteratorExt for I {}
