//! The response body: keeps the request's step open until the last frame is sent, and
//! current while each frame is produced.

use std::fmt::{self, Display};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use openlayer_trace::StepHandle;

pin_project_lite::pin_project! {
    /// A response body that ends its request's step when it has been sent in full.
    ///
    /// Each poll runs with the step current, so steps made while producing a chunk (an
    /// SSE stream calling a model, a `#[trace]` function in a `Body::from_stream`) nest
    /// under the request's step. The step ends
    ///
    /// - when the inner body has been sent in full: it returned its last frame or reported
    ///   its end, or sent its trailers, or as many bytes as its length (its exact size, or
    ///   its `content-length`), after which a server polls no further;
    /// - when the inner body fails: with the error under `Exceptions`;
    /// - when the body is dropped before its end (the client went away, the server shut
    ///   down): with metadata `cancelled: true` and the status code as output;
    /// - when producing a chunk panics: with the panic message under `Exceptions`.
    pub struct OpenlayerBody<B> {
        #[pin]
        inner: B,
        step: Option<StepHandle>,
        // Bytes still to send, when the response's length is known: the server stops
        // polling (and drops the body) once it has sent them, whether or not the body
        // reported its end.
        remaining: Option<u64>,
    }
}

impl<B> OpenlayerBody<B> {
    pub(crate) fn new(inner: B, step: Option<StepHandle>, length: Option<u64>) -> Self {
        OpenlayerBody {
            inner,
            step,
            remaining: length,
        }
    }

    /// A body whose request is not traced (as when tracing is off).
    pub(crate) fn untraced(inner: B) -> Self {
        OpenlayerBody {
            inner,
            step: None,
            remaining: None,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> fmt::Debug for OpenlayerBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenlayerBody")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<B> Body for OpenlayerBody<B>
where
    B: Body,
    B::Error: Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if this.step.is_none() {
            return this.inner.poll_frame(cx);
        }
        let mut inner = this.inner;
        let polled = with_step(this.step, || inner.as_mut().poll_frame(cx));
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                // Sent in full: the body says so, or its declared length is reached, or
                // trailers came (always the last frame). A server polls no further.
                let mut done = frame.is_trailers() || inner.is_end_stream();
                if let (Some(left), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    *left = left.saturating_sub(data.remaining() as u64);
                    done |= *left == 0;
                }
                if done && let Some(step) = this.step.take() {
                    step.finish();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut step) = this.step.take() {
                    step.error(e);
                    step.finish();
                }
            }
            Poll::Ready(None) => {
                if let Some(step) = this.step.take() {
                    step.finish();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `f` with the step in `slot` current. If `f` panics, the step is dropped while the
/// thread unwinds, which closes it with the panic message under `Exceptions` (a panic
/// caught further out, by a `CatchPanicLayer`, would otherwise leave it open until the
/// future is dropped, and record it as merely cancelled).
pub(crate) fn with_step<R>(slot: &mut Option<StepHandle>, f: impl FnOnce() -> R) -> R {
    let guard = OnPanic(slot, std::thread::panicking());
    // The step stays where it is (not moved out and back): it is only borrowed.
    let _entered = guard.0.as_ref().map(StepHandle::enter);
    // In tail position, `f`'s output is written where the caller wants it, not moved
    // there after the step is exited (a copy of a whole response or future otherwise).
    f()
}

/// Drops the step (closing it as panicked) if `f` panics; declared before the step is
/// entered, so that it runs after the step has stopped being current. The flag: the thread
/// was already unwinding before `f` ran (a body read from a `Drop` during another panic),
/// so unwinding now is not `f`'s panic.
struct OnPanic<'a>(&'a mut Option<StepHandle>, bool);

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.1 {
            drop(self.0.take());
        }
    }
}
