//! `#[trace(stream)]` on a function that returns a boxed stream or iterator: the traced
//! stream, boxed again as the declared type.

use std::pin::Pin;

use futures_core::Stream;

use super::Traced;

/// A declared return type that a [`Traced`] stream or iterator can be turned into: the
/// boxed trait objects `Pin<Box<dyn Stream<Item = T> + ..>>` (`futures`' `BoxStream` and
/// `LocalBoxStream`), `Box<dyn Stream<Item = T> + Unpin + ..>` and `Box<dyn Iterator<Item =
/// T> + ..>`, with or without `Send` (and `Sync`).
#[diagnostic::on_unimplemented(
    message = "`#[trace(stream)]` cannot return a traced stream as `{Self}`",
    label = "the traced stream is a new type, so it can only be returned boxed or as `impl Stream`",
    note = "return `impl Stream<Item = ..>` or `impl Iterator<Item = ..>` (then `stream` is not needed), or a boxed `Pin<Box<dyn Stream<Item = ..> + Send>>` / `Box<dyn Iterator<Item = ..>>`"
)]
pub trait FromTraced<W> {
    /// Boxes the traced stream as `Self`.
    fn from_traced(traced: W) -> Self;
}

/// A `Result` of a stream, boxed in its `Ok`.
impl<W, R: FromTraced<W>, E> FromTraced<Result<W, E>> for Result<R, E> {
    fn from_traced(traced: Result<W, E>) -> Self {
        traced.map(R::from_traced)
    }
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
