//! [`RecordJsonBody`]: reads small JSON request bodies before the handler runs, records
//! them among the step's inputs, and hands the same bytes to the handler.

use std::fmt::{self, Display};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use serde_json::value::RawValue;

use crate::body::OpenlayerBody;
use crate::layer::{Head, RecordJsonBody, Settings};
use crate::service::{OpenlayerService, RecordedBody, ResponseFuture, begin, respond};

/// The error type of request bodies that a recorded body may have: any error, boxed (as
/// `http_body_util::Limited`'s) or not.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether the request says its body is JSON (`application/json`, `*/*+json`) and sends it
/// as it is (no `content-encoding` other than `identity`: a compressed body is decoded
/// further in, if at all, and is not JSON as read here).
fn is_json(headers: &HeaderMap) -> bool {
    // Every value (a request may carry the header twice).
    if headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

impl<S, B, ResBody> tower::Service<Request<B>> for OpenlayerService<S, RecordJsonBody>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Display,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
    ResBody: Body + Default,
    ResBody::Error: Display,
{
    type Response = Response<OpenlayerBody<ResBody>>;
    type Error = S::Error;
    type Future = JsonResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let max = self.mode.max_bytes;
        // Its size known to be at most `max` (a `content-length`, or the bound of a body
        // limit further out), and not empty (nothing to record).
        let small = body.size_hint().upper().is_some_and(|n| n <= max as u64)
            && !body.is_end_stream()
            && body.size_hint().upper() != Some(0);
        // A body rebuilt from the bytes read ahead has no trailers: one that declares
        // some (`Trailer`) goes to the handler untouched, unrecorded.
        let trailers = parts.headers.contains_key(http::header::TRAILER);
        // A body is read ahead only to be recorded: not when the step would not be.
        if !(small && !trailers && is_json(&parts.headers) && crate::layer::would_record()) {
            let begun = begin(&self.settings, Head::of_parts(&parts), None);
            let req = Request::from_parts(parts, body);
            let fut = ResponseFuture::start(&mut self.inner, req, begun, self.settings.clone());
            return JsonResponseFuture {
                state: JsonState::Running { fut },
            };
        }
        // The ready service goes with the future; a clone stays for the next request.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        // Allocated when the first bytes come (a declared length allocates nothing before
        // the body arrives): see `make_room`.
        let hint = body.size_hint();
        let declared = hint.upper().unwrap_or(0) as usize;
        JsonResponseFuture {
            state: JsonState::Reading {
                body,
                service: Some(service),
                parts: Some(parts),
                buf: BytesMut::new(),
                declared,
                exact: hint.exact().is_some(),
                settings: self.settings.clone(),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`OpenlayerService`] with [`RecordJsonBody`]: reads the
    /// request body (when it is recorded), then runs the inner service like
    /// [`ResponseFuture`].
    pub struct JsonResponseFuture<S, B>
    where
        S: tower::Service<Request<B>>,
    {
        #[pin]
        state: JsonState<S, B, S::Future>,
    }

    impl<S, B> PinnedDrop for JsonResponseFuture<S, B>
    where
        S: tower::Service<Request<B>>,
    {
        fn drop(this: Pin<&mut Self>) {
            // Dropped while the request body was still being read (a client that reset
            // the stream during a slow upload, a timeout outside this layer): the request
            // is still a row, marked cancelled, as a request dropped later is. Not while
            // the thread unwinds: the closures of the settings run here, and a panic of
            // theirs then would abort the process.
            if std::thread::panicking() {
                return;
            }
            if let StateProj::Reading { parts, settings, .. } = this.project().state.project()
                && let Some(parts) = parts.take()
            {
                drop(begin(settings, Head::of_parts(&parts), None));
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum JsonState<S, B, F> {
        Reading {
            #[pin]
            body: B,
            service: Option<S>,
            parts: Option<Parts>,
            buf: BytesMut,
            // The most it buffers: what its size hint said it could be (at most the
            // configured bound, or it would not be read ahead).
            declared: usize,
            // Whether `declared` is the body's exact length (a `content-length`), not only
            // a bound (a body limit's).
            exact: bool,
            settings: Arc<Settings>,
        },
        Running {
            #[pin]
            fut: ResponseFuture<F>,
        },
        /// Answered without calling the service (the request body could not be read).
        Done,
    }
}

impl<S, B> fmt::Debug for JsonResponseFuture<S, B>
where
    S: tower::Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            JsonState::Reading { .. } => "reading the request body",
            JsonState::Running { .. } => "running",
            JsonState::Done => "done",
        };
        f.debug_struct("JsonResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, ResBody> Future for JsonResponseFuture<S, B>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Display,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
    ResBody: Body + Default,
    ResBody::Error: Display,
{
    type Output = Result<Response<OpenlayerBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Running { fut } => return fut.poll(cx),
                StateProj::Done => panic!("JsonResponseFuture polled after it completed"),
                StateProj::Reading {
                    mut body,
                    service,
                    parts,
                    buf,
                    declared,
                    exact,
                    settings,
                } => {
                    let failed = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(mut data) = frame.into_data() {
                                    // More than the body said it could be: not buffered.
                                    if buf.len().saturating_add(data.remaining()) > *declared {
                                        break Some(Box::new(LongerThanDeclared) as BoxError);
                                    }
                                    make_room(buf, data.remaining(), *declared, *exact);
                                    while data.has_remaining() {
                                        let chunk = data.chunk();
                                        buf.extend_from_slice(chunk);
                                        let n = chunk.len();
                                        data.advance(n);
                                    }
                                }
                            }
                            Some(Err(e)) => break Some(e.into()),
                            None => break None,
                        }
                    };
                    let (Some(mut service), Some(parts)) = (service.take(), parts.take()) else {
                        unreachable!("the request is taken only when leaving this state")
                    };
                    if let Some(error) = failed {
                        // The handler is not called with a body cut short (a truncated
                        // JSON text can still parse: `123` cut to `12`). The client gets
                        // 413 or 400, as from axum's body extractors; it may be gone.
                        let settings = settings.clone();
                        state.set(JsonState::Done);
                        return Poll::Ready(Ok(read_failed(&settings, &parts, &*error)));
                    }
                    let bytes = std::mem::take(buf).freeze();
                    let text;
                    let recorded = match serde_json::from_slice::<&RawValue>(&bytes) {
                        Ok(raw) => RecordedBody::Json(raw),
                        Err(_) => {
                            text = String::from_utf8_lossy(&bytes);
                            RecordedBody::Text(&text)
                        }
                    };
                    let begun = begin(settings, Head::of_parts(&parts), Some(recorded));
                    let req = Request::from_parts(parts, B::from(bytes.clone()));
                    let fut = ResponseFuture::start(&mut service, req, begun, settings.clone());
                    JsonState::Running { fut }
                }
            };
            state.set(next);
        }
    }
}

/// The most bytes a read-ahead buffer starts with, when only a bound of the body's length
/// is known.
const INITIAL_CAPACITY: usize = 8 * 1024;

/// The longest known length a read-ahead buffer is allocated for at once: beyond it, the
/// buffer grows as the bytes come, so that a client declaring a long body and sending a
/// byte does not hold that much memory per connection.
const EXACT_AT_ONCE: usize = 64 * 1024;

/// Makes room in `buf` for `more` bytes, within `declared` (which `buf.len() + more` is at
/// most): a body of a known length (`exact`) up to [`EXACT_AT_ONCE`] gets exactly that, in
/// one allocation when its first bytes come; a longer one, or one known only to be at most
/// `declared` long, grows from [`INITIAL_CAPACITY`], doubling, to at most `declared`
/// (growing a `BytesMut` by itself could reach about twice that).
fn make_room(buf: &mut BytesMut, more: usize, declared: usize, exact: bool) {
    let need = buf.len() + more;
    if need <= buf.capacity() {
        return;
    }
    let capacity = if exact && declared <= EXACT_AT_ONCE {
        declared
    } else {
        need.max(buf.capacity().saturating_mul(2))
            .max(INITIAL_CAPACITY)
            .min(declared)
    };
    let mut grown = BytesMut::with_capacity(capacity.max(need));
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// A request body that gave more bytes than its size hint said it could (a body that
/// misreports its size): refused as over a limit, not buffered without one.
#[derive(Debug)]
struct LongerThanDeclared;

impl std::fmt::Display for LongerThanDeclared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the body is longer than its declared size")
    }
}

impl std::error::Error for LongerThanDeclared {}

/// The response when the request body could not be read: `413 Payload Too Large` when
/// it was over a body limit (`http_body_util::Limited`, as tower-http's
/// `RequestBodyLimitLayer` sets), else `400 Bad Request`, as axum's body extractors answer;
/// recorded on the request's step (inputs without the body, the status as output, the read
/// error under `Exceptions`) with the inference id header as usual.
fn read_failed<ResBody: Body + Default>(
    settings: &Settings,
    parts: &Parts,
    error: &(dyn std::error::Error + 'static),
) -> Response<OpenlayerBody<ResBody>> {
    let begun = begin(settings, Head::of_parts(parts), None);
    let mut step = begun.step;
    step.exception(&format_args!("reading the request body failed: {error}"));
    let mut res = Response::new(ResBody::default());
    *res.status_mut() = if over_limit(error) {
        http::StatusCode::PAYLOAD_TOO_LARGE
    } else {
        http::StatusCode::BAD_REQUEST
    };
    respond(step, res, begun.method, settings)
}

/// Whether a body's read error is, or was caused by, a body limit's (as axum looks for it).
fn over_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(err) = e {
        if err.is::<http_body_util::LengthLimitError>() || err.is::<LongerThanDeclared>() {
            return true;
        }
        e = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_declared_body_is_not_allocated_before_its_bytes_come() {
        // A short body of a known length: one allocation of exactly its length.
        let mut buf = BytesMut::new();
        make_room(&mut buf, 10, 1000, true);
        assert_eq!(buf.capacity(), 1000);
        // A long one whose first byte came: room for what came, not for what was declared.
        let mut buf = BytesMut::new();
        make_room(&mut buf, 1, 1 << 20, true);
        assert!(buf.capacity() <= INITIAL_CAPACITY, "{}", buf.capacity());
        // Growing, never past the declared length.
        buf.extend_from_slice(&[b'x'; 1]);
        let mut len = 1;
        while len < 1 << 20 {
            let more = (64 * 1024).min((1 << 20) - len);
            make_room(&mut buf, more, 1 << 20, true);
            buf.extend_from_slice(&vec![b'x'; more]);
            len += more;
            assert!(buf.capacity() <= 1 << 20, "{}", buf.capacity());
        }
    }
}
