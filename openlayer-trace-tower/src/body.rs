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
    ///   its end, or sent its trailers; or it sent as many bytes as its length (its exact
    ///   size, or its `content-length`) and is then polled to its end or dropped (an
    ///   HTTP/1 server drops it there, an HTTP/2 server polls it once more, still with the
    ///   step current);
    /// - when the inner body fails: with the error under `Exceptions`, the status code
    ///   still its output;
    /// - when the body is dropped before its end (the client went away, the server shut
    ///   down): with metadata `cancelled: true` and the status code as output;
    /// - when producing a chunk panics: with the panic message under `Exceptions`.
    ///
    /// A gRPC status other than `0` in the trailers (`grpc-status`, with its
    /// `grpc-message`; or in the headers of an HTTP/2 gRPC response that ends without
    /// trailers) is recorded under `Exceptions` too.
    pub struct OpenlayerBody<B> {
        #[pin]
        inner: B,
        step: BodyStep,
        // Bytes still to send, when the response's length is known: the server may stop
        // polling (and drop the body) once it has sent them, whether or not the body
        // reported its end.
        remaining: Option<u64>,
    }
}

/// The request's step while its body is sent. Dropped with it before the body was sent in
/// full, the step closes as cancelled; after its declared length was sent, as returned.
struct BodyStep {
    handle: Option<StepHandle>,
    sent: bool,
    /// A gRPC error status in the response's headers, recorded if the body ends without
    /// trailers (which would carry the status otherwise).
    grpc: Option<Box<crate::service::GrpcError>>,
}

impl Drop for BodyStep {
    fn drop(&mut self) {
        if self.sent
            && let Some(step) = self.handle.take()
        {
            finish(step, self.grpc.take());
        }
    }
}

impl<B> OpenlayerBody<B> {
    pub(crate) fn new(
        inner: B,
        step: Option<StepHandle>,
        length: Option<u64>,
        grpc: Option<Box<crate::service::GrpcError>>,
    ) -> Self {
        OpenlayerBody {
            inner,
            step: BodyStep {
                handle: step,
                sent: false,
                grpc,
            },
            remaining: length,
        }
    }

    /// A body whose request is not traced (as when tracing is off).
    pub(crate) fn untraced(inner: B) -> Self {
        Self::new(inner, None, None, None)
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> fmt::Debug for OpenlayerBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenlayerBody")
            .field("step", &self.step.handle)
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
        let step = &mut this.step.handle;
        if step.is_none() {
            return this.inner.poll_frame(cx);
        }
        let mut inner = this.inner;
        let polled = with_step(step, || inner.as_mut().poll_frame(cx));
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                // Sent in full: the body says so, or trailers came (always the last
                // frame).
                let done = frame.is_trailers() || inner.is_end_stream();
                if let Some(trailers) = frame.trailers_ref() {
                    // The trailers carry the status: the headers' is not recorded.
                    this.step.grpc = None;
                    if let Some(step) = this.step.handle.as_mut() {
                        crate::service::record_grpc_status(step, trailers);
                    }
                }
                if let (Some(left), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    // Its declared length sent: an HTTP/1 server drops it now, unpolled,
                    // which is its end, not a cancellation.
                    *left = left.saturating_sub(data.remaining() as u64);
                    this.step.sent |= *left == 0;
                }
                if done && let Some(step) = this.step.handle.take() {
                    finish(step, this.step.grpc.take());
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // The status was sent: it stays the output, beside the error.
                if let Some(mut step) = this.step.handle.take() {
                    step.exception(e);
                    finish(step, this.step.grpc.take());
                }
            }
            Poll::Ready(None) => {
                if let Some(step) = this.step.handle.take() {
                    finish(step, this.step.grpc.take());
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

/// Ends the step of a body sent in full, with the gRPC error its headers carried (when no
/// trailers came to say otherwise).
fn finish(mut step: StepHandle, grpc: Option<Box<crate::service::GrpcError>>) {
    if let Some(g) = grpc {
        g.record(&mut step);
    }
    step.finish();
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
