//! What `#[trace]` expands to for a function that returns a stream or an iterator. Not a
//! public API: it may change in any release.
//!
//! The expansion picks, at the call site, by method resolution on concrete types (autoref
//! specialization): whether the returned value is a stream or an iterator ([`Returned`]),
//! and whether its items are `Result`s, whose errors go under `Exceptions`, or plain items
//! ([`ItemType`]). An error is written with its `Display` text, or with its `Debug` text
//! when it has no `Display`.
//!
//! The returned value: the macro calls `(&&Returned(&ret)).__ol_kind()`, and the first of
//! these that applies is taken:
//! 1. a stream, or a `Result` of a stream or an iterator whose error is `Display`
//!    ([`ReturnedStream`], [`ReturnedResultStream`], [`ReturnedResultIter`], on
//!    `&Returned`);
//! 2. a `Result` of a stream or an iterator whose error is only `Debug`
//!    ([`ReturnedDebugResultStream`], [`ReturnedDebugResultIter`], on `&&Returned`);
//! 3. an iterator (the inherent method, on `Returned`), whose `where` clause reports a
//!    value that is neither.
//!
//! The items: the macro calls `(&&kind.items()).__ol_acc()` (`__ol_acc_skip` with
//! `skip_output`): [`ResultItems`] on `&ItemType` for `Result`s whose error is `Display`,
//! then [`DebugResultItems`] on `&&ItemType` for those whose error is only `Debug`, then
//! the inherent method on `ItemType` for any other item.

use std::fmt::{Debug, Display};
use std::marker::PhantomData;

use futures_core::Stream;
use serde::Serialize;

use super::{Accumulator, Collect, Discard, OkItems, Traced, TracedItem};
use crate::api::macro_support::steps::{DebugText, InputWriter, StepMeta, capture_inputs};
use crate::api::step::StepFinisher;
use crate::api::step::handle::StepHandle;
use crate::context::{self, Start};

/// Opens the step of a synchronous function that returns a stream, without making it
/// current (the body then runs in [`StepHandle::in_scope`]).
#[inline]
pub fn start_stream(meta: &'static StepMeta, inputs: impl FnOnce(&mut InputWriter)) -> StepHandle {
    let open = context::open_step(meta.spec(), Start::Now, crate::runtime::lazy_init, |buf| {
        capture_inputs(buf, inputs)
    });
    StepHandle::from_open(open)
}

/// The step of an `async fn` whose body has returned a stream: it goes on as a handle.
#[inline]
pub fn stream_handle(finisher: StepFinisher) -> StepHandle {
    StepHandle::from_open(finisher.into_open())
}

/// The returned value, to find out whether it is a stream or an iterator.
#[derive(Debug)]
pub struct Returned<'a, S>(pub &'a S);

/// A returned stream, of type `S`.
#[derive(Debug)]
pub struct StreamItems<S>(PhantomData<fn() -> S>);

/// A returned iterator, of type `S`.
#[derive(Debug)]
pub struct IterItems<S>(PhantomData<fn() -> S>);

/// A returned stream (chosen before an iterator).
pub trait ReturnedStream {
    /// The stream's type.
    type Stream;
    /// The stream.
    fn __ol_kind(&self) -> StreamItems<Self::Stream>;
}

impl<S: Stream> ReturnedStream for &Returned<'_, S> {
    type Stream = S;
    #[inline]
    fn __ol_kind(&self) -> StreamItems<S> {
        StreamItems(PhantomData)
    }
}

/// A returned `Result` of a stream (as streaming clients return: the request may fail
/// before the stream starts), and how its error is written.
#[derive(Debug)]
pub struct ResultStreamItems<S, E> {
    error: fn(&E, &mut StepHandle),
    _types: PhantomData<fn() -> S>,
}

/// A returned `Result` of an iterator, and how its error is written.
#[derive(Debug)]
pub struct ResultIterItems<S, E> {
    error: fn(&E, &mut StepHandle),
    _types: PhantomData<fn() -> S>,
}

/// Writes an error with its `Display` text.
fn display_error<E: Display>(e: &E, handle: &mut StepHandle) {
    handle.error(e);
}

/// Writes an error with its `Debug` text.
fn debug_error<E: Debug>(e: &E, handle: &mut StepHandle) {
    handle.error(&DebugText(e));
}

/// A returned `Result` of a stream (chosen, as a stream is, before an iterator).
pub trait ReturnedResultStream {
    /// The stream's type.
    type Stream;
    /// The error's type.
    type Error;
    /// The stream, or the error.
    fn __ol_kind(&self) -> ResultStreamItems<Self::Stream, Self::Error>;
}

/// A returned `Result` of an iterator.
pub trait ReturnedResultIter {
    /// The iterator's type.
    type Iter;
    /// The error's type.
    type Error;
    /// The iterator, or the error.
    fn __ol_kind(&self) -> ResultIterItems<Self::Iter, Self::Error>;
}

impl<S: Stream, E: Display> ReturnedResultStream for &Returned<'_, Result<S, E>> {
    type Stream = S;
    type Error = E;
    #[inline]
    fn __ol_kind(&self) -> ResultStreamItems<S, E> {
        ResultStreamItems {
            error: display_error::<E>,
            _types: PhantomData,
        }
    }
}

impl<I: Iterator, E: Display> ReturnedResultIter for &Returned<'_, Result<I, E>> {
    type Iter = I;
    type Error = E;
    #[inline]
    fn __ol_kind(&self) -> ResultIterItems<I, E> {
        ResultIterItems {
            error: display_error::<E>,
            _types: PhantomData,
        }
    }
}

/// A returned `Result` of a stream whose error is `Debug` but not `Display`.
pub trait ReturnedDebugResultStream {
    /// The stream's type.
    type Stream;
    /// The error's type.
    type Error;
    /// The stream, or the error.
    fn __ol_kind(&self) -> ResultStreamItems<Self::Stream, Self::Error>;
}

/// A returned `Result` of an iterator whose error is `Debug` but not `Display`.
pub trait ReturnedDebugResultIter {
    /// The iterator's type.
    type Iter;
    /// The error's type.
    type Error;
    /// The iterator, or the error.
    fn __ol_kind(&self) -> ResultIterItems<Self::Iter, Self::Error>;
}

impl<S: Stream, E: Debug> ReturnedDebugResultStream for &&Returned<'_, Result<S, E>> {
    type Stream = S;
    type Error = E;
    #[inline]
    fn __ol_kind(&self) -> ResultStreamItems<S, E> {
        ResultStreamItems {
            error: debug_error::<E>,
            _types: PhantomData,
        }
    }
}

impl<I: Iterator, E: Debug> ReturnedDebugResultIter for &&Returned<'_, Result<I, E>> {
    type Iter = I;
    type Error = E;
    #[inline]
    fn __ol_kind(&self) -> ResultIterItems<I, E> {
        ResultIterItems {
            error: debug_error::<E>,
            _types: PhantomData,
        }
    }
}

/// The `Ok` value traced by `trace`; an error (no stream or iterator) is written by
/// `error`, and fails and ends the step at once.
#[inline]
fn wrap_result<S, E, T>(
    returned: Result<S, E>,
    mut handle: StepHandle,
    error: fn(&E, &mut StepHandle),
    trace: impl FnOnce(S, StepHandle) -> T,
) -> Result<T, E> {
    match returned {
        Ok(inner) => Ok(trace(inner, handle)),
        Err(e) => {
            error(&e, &mut handle);
            handle.finish();
            Err(e)
        }
    }
}

impl<S: Stream, E> ResultStreamItems<S, E> {
    /// The items' type, to pick the accumulator.
    #[inline]
    pub fn items(&self) -> ItemType<S::Item> {
        ItemType(PhantomData)
    }

    /// The traced stream; an error (no stream) fails and ends the step at once.
    #[inline]
    pub fn wrap<A: Accumulator<S::Item>>(
        self,
        returned: Result<S, E>,
        handle: StepHandle,
        acc: A,
    ) -> Result<Traced<S, A>, E> {
        wrap_result(returned, handle, self.error, |s, h| {
            Traced::stream(s, h, acc)
        })
    }
}

impl<I: Iterator, E> ResultIterItems<I, E> {
    /// The items' type, to pick the accumulator.
    #[inline]
    pub fn items(&self) -> ItemType<I::Item> {
        ItemType(PhantomData)
    }

    /// The traced iterator; an error (no iterator) fails and ends the step at once.
    #[inline]
    pub fn wrap<A: Accumulator<I::Item>>(
        self,
        returned: Result<I, E>,
        handle: StepHandle,
        acc: A,
    ) -> Result<Traced<I, A>, E> {
        wrap_result(returned, handle, self.error, |i, h| Traced::iter(i, h, acc))
    }
}

/// What a function traced as a stream must return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is neither a `Stream` nor an `Iterator`, so `#[trace]` cannot trace it as a stream",
    label = "traced as a stream because of `#[trace(stream)]`",
    note = "`#[trace(stream)]` is for functions that return a `futures_core::Stream` or an `Iterator`; remove `stream` to trace the call itself"
)]
pub trait StreamOrIterator: Iterator {}

impl<I: Iterator> StreamOrIterator for I {}

impl<S> Returned<'_, S> {
    /// A returned iterator.
    #[inline]
    pub fn __ol_kind(&self) -> IterItems<S>
    where
        S: StreamOrIterator,
    {
        IterItems(PhantomData)
    }
}

impl<S: Stream> StreamItems<S> {
    /// The items' type, to pick the accumulator.
    #[inline]
    pub fn items(&self) -> ItemType<S::Item> {
        ItemType(PhantomData)
    }

    /// The traced stream.
    #[inline]
    pub fn wrap<A: Accumulator<S::Item>>(
        self,
        stream: S,
        handle: StepHandle,
        acc: A,
    ) -> Traced<S, A> {
        Traced::stream(stream, handle, acc)
    }
}

impl<S: Iterator> IterItems<S> {
    /// The items' type, to pick the accumulator.
    #[inline]
    pub fn items(&self) -> ItemType<S::Item> {
        ItemType(PhantomData)
    }

    /// The traced iterator.
    #[inline]
    pub fn wrap<A: Accumulator<S::Item>>(
        self,
        iter: S,
        handle: StepHandle,
        acc: A,
    ) -> Traced<S, A> {
        Traced::iter(iter, handle, acc)
    }
}

/// The type of a traced stream's items.
#[derive(Debug)]
pub struct ItemType<I>(PhantomData<fn() -> I>);

/// Items that are `Result`s: `Ok` values recorded, errors under `Exceptions`.
pub trait ResultItems {
    /// The accumulator.
    fn __ol_acc(&self) -> OkItems<Collect>;
}

impl<T: Serialize, E: Display> ResultItems for &ItemType<Result<T, E>> {
    #[inline]
    fn __ol_acc(&self) -> OkItems<Collect> {
        OkItems(Collect::new())
    }
}

/// With `skip_output`: items that are `Result`s still record their errors.
pub trait ResultItemsSkip {
    /// The accumulator.
    fn __ol_acc_skip(&self) -> OkItems<Discard>;
}

impl<T, E: Display> ResultItemsSkip for &ItemType<Result<T, E>> {
    #[inline]
    fn __ol_acc_skip(&self) -> OkItems<Discard> {
        OkItems(Discard)
    }
}

/// Items that are `Result`s whose error is `Debug` but not `Display`: `Ok` values
/// recorded, each error's `Debug` text under `Exceptions`.
pub trait DebugResultItems {
    /// The accumulator.
    fn __ol_acc(&self) -> DebugErrors<Collect>;
}

impl<T: Serialize, E: Debug> DebugResultItems for &&ItemType<Result<T, E>> {
    #[inline]
    fn __ol_acc(&self) -> DebugErrors<Collect> {
        DebugErrors(Collect::new())
    }
}

/// With `skip_output`: items that are `Result`s whose error is only `Debug` still record
/// their errors.
pub trait DebugResultItemsSkip {
    /// The accumulator.
    fn __ol_acc_skip(&self) -> DebugErrors<Discard>;
}

impl<T, E: Debug> DebugResultItemsSkip for &&ItemType<Result<T, E>> {
    #[inline]
    fn __ol_acc_skip(&self) -> DebugErrors<Discard> {
        DebugErrors(Discard)
    }
}

/// [`OkItems`] for errors that are `Debug` but not `Display`: each `Ok` value goes to the
/// inner accumulator, each error's `Debug` text under the step's `Exceptions`.
#[derive(Debug, Default)]
pub struct DebugErrors<A = Collect>(pub A);

impl<T, E: Debug, A: Accumulator<T>> Accumulator<Result<T, E>> for DebugErrors<A> {
    #[inline]
    fn push(&mut self, item: &Result<T, E>, step: &mut StepHandle) {
        match item {
            Ok(v) => self.0.push(v, step),
            Err(e) => step.exception(&DebugText(e)),
        }
    }

    fn finish(&mut self, step: &mut StepHandle) {
        self.0.finish(step);
    }
}

impl<I> ItemType<I> {
    /// Any other items: strings joined, others as a JSON list.
    #[inline]
    pub fn __ol_acc(&self) -> Collect
    where
        I: TracedItem,
    {
        Collect::new()
    }

    /// With `skip_output`: nothing recorded.
    #[inline]
    pub fn __ol_acc_skip(&self) -> Discard {
        Discard
    }
}

/// `#[trace(stream)]` on a function with a concrete (boxed) return type: the traced
/// stream, boxed as that type.
#[inline]
pub fn rebox<W, R: super::FromTraced<W>>(traced: W) -> R {
    R::from_traced(traced)
}

/// Says that `returned` is an iterator of `T`, as the signature's `impl Iterator<Item = T>`
/// does: called before the implementations are picked, so that a body whose items only
/// the signature types (`std::iter::empty()`, `.map(|s| s.into())`) has them known then.
#[inline(always)]
pub fn iter_items_are<T, I: Iterator<Item = T>>(_returned: &I) {}

/// [`iter_items_are`] for a stream (`impl Stream<Item = T>`).
#[inline(always)]
pub fn stream_items_are<T, S: Stream<Item = T>>(_returned: &S) {}

/// [`iter_items_are`] for a `Result<impl Iterator<Item = T>, E>`.
#[inline(always)]
pub fn ok_iter_items_are<T, I: Iterator<Item = T>, E>(_returned: &Result<I, E>) {}

/// [`iter_items_are`] for a `Result<impl Stream<Item = T>, E>`.
#[inline(always)]
pub fn ok_stream_items_are<T, S: Stream<Item = T>, E>(_returned: &Result<S, E>) {}
