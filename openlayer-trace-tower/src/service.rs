//! The service: opens each request's root step, runs the inner service inside it, and
//! hands the step to the response body.

use std::borrow::Cow;
use std::fmt::{self, Display};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use openlayer_trace::{StepHandle, StepKind, TextInputs};
use serde_json::value::RawValue;

use crate::body::{OpenlayerBody, with_step};
use crate::layer::{Head, IgnoreBody, MAX_RECORDED_HEADER_LEN, Settings, header_values};

/// The service made by [`OpenlayerLayer`](crate::OpenlayerLayer): each request becomes the
/// root step of a trace; see the layer's documentation.
pub struct OpenlayerService<S, M = IgnoreBody> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings>,
    pub(crate) mode: M,
}

impl<S: Clone, M: Clone> Clone for OpenlayerService<S, M> {
    fn clone(&self) -> Self {
        OpenlayerService {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<S: fmt::Debug, M: fmt::Debug> fmt::Debug for OpenlayerService<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenlayerService")
            .field("inner", &self.inner)
            .field("body", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A recorded request body: its JSON, or its text when it is not valid JSON.
pub(crate) enum RecordedBody<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

/// Records the allow-listed headers present on the request, in list order, as the fields
/// of the input `headers` (none present: no `headers`), without copying them. Each
/// header's text (its values joined) is bounded by [`MAX_RECORDED_HEADER_LEN`].
fn record_headers(w: &mut TextInputs, names: &[HeaderName], headers: &HeaderMap) {
    if headers.is_empty() {
        return;
    }
    w.object("headers", |w| {
        for name in names {
            let mut values = header_values(headers, name);
            let Some(first) = values.next() else { continue };
            let mut text = header_text(first);
            let mut left_out = 0;
            for more in values {
                let more = header_text(more);
                if text.len() > MAX_RECORDED_HEADER_LEN {
                    // Cut below: the rest is only counted.
                    left_out += 2 + more.len();
                    continue;
                }
                let t = text.to_mut();
                t.push_str(", ");
                t.push_str(&more);
            }
            if text.len() > MAX_RECORDED_HEADER_LEN {
                cut_header_text(text.to_mut(), left_out);
            }
            w.field(name.as_str(), &text);
        }
    });
}

/// Cuts a recorded header's text to [`MAX_RECORDED_HEADER_LEN`] bytes (on a character
/// boundary) and marks the cut: `…[truncated N bytes]`, with `left_out` bytes already
/// left out after it.
#[cold]
fn cut_header_text(text: &mut String, left_out: usize) {
    let mut end = MAX_RECORDED_HEADER_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let removed = text.len() - end + left_out;
    text.truncate(end);
    use std::fmt::Write as _;
    let _ = write!(text, "…[truncated {removed} bytes]");
}

/// A header value as text: as it is when it is visible ASCII (almost always), else with
/// replacement characters for what is not UTF-8.
fn header_text(value: &HeaderValue) -> Cow<'_, str> {
    match value.to_str() {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value.as_bytes()),
    }
}

/// What a request says of its response: whether it has a body (which servers never poll
/// when there is none), and whether it may be a gRPC call (whose status may be in the
/// response's headers).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MethodBody {
    rule: BodyRule,
    /// Over HTTP/2, as gRPC always is: only then are the response's headers looked at for
    /// a `grpc-status` (a lookup that every other response is spared).
    grpc: bool,
}

#[derive(Clone, Copy, Debug)]
enum BodyRule {
    /// As the status and the headers say.
    Any,
    /// None (`HEAD`).
    None,
    /// None for a success (`CONNECT`: the connection is the tunnel then).
    NoneOnSuccess,
}

impl MethodBody {
    fn of(head: Head<'_>) -> Self {
        let rule = if head.method == Method::HEAD {
            BodyRule::None
        } else if head.method == Method::CONNECT {
            BodyRule::NoneOnSuccess
        } else {
            BodyRule::Any
        };
        MethodBody {
            rule,
            grpc: head.version == http::Version::HTTP_2,
        }
    }

    fn none(self, status: StatusCode) -> bool {
        match self.rule {
            BodyRule::Any => false,
            BodyRule::None => true,
            BodyRule::NoneOnSuccess => status.is_success(),
        }
    }
}

/// What a request's step needs after the inner service was called.
pub(crate) struct Begun {
    pub(crate) step: StepHandle,
    /// What the request's method says of the response's body.
    pub(crate) method: MethodBody,
}

/// Opens the request's root step and sets its trace's columns.
pub(crate) fn begin(settings: &Settings, head: Head<'_>, body: Option<RecordedBody<'_>>) -> Begun {
    // The inputs: the method, the path, the allow-listed headers and the JSON body.
    let path = head.path();
    // A root whatever step is current (stacked layers, a service called in process by
    // traced code): each request is a row of its own, with its own inference id.
    let step = openlayer_trace::step(settings.step_name(head, path))
        .kind(StepKind::UserCall)
        .root()
        .start_with_text_inputs(|w| {
            w.field("method", head.method.as_str());
            w.field("path", path);
            record_headers(w, &settings.record_headers, head.headers);
            match body {
                Some(RecordedBody::Json(json)) => w.json("body", json),
                Some(RecordedBody::Text(text)) => w.field("body", text),
                None => {}
            }
        });
    if step.is_recording() {
        let inference_id = settings.inference_id(head);
        let user_id = settings.user_id(head);
        let session_id = settings.session_id(head);
        if inference_id.is_some() || user_id.is_some() || session_id.is_some() {
            step.in_scope(|| {
                openlayer_trace::update_current_trace!(
                    inference_id = inference_id,
                    user_id = user_id,
                    session_id = session_id,
                )
            });
        }
    }
    Begun {
        step,
        method: MethodBody::of(head),
    }
}

impl<S, B, ResBody> tower::Service<Request<B>> for OpenlayerService<S, IgnoreBody>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Display,
    ResBody: http_body::Body,
    ResBody::Error: Display,
{
    type Response = Response<OpenlayerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let begun = if self.settings.needs_parts() {
            let (parts, body) = req.into_parts();
            let begun = begin(&self.settings, Head::of_parts(&parts), None);
            req = Request::from_parts(parts, body);
            begun
        } else {
            begin(&self.settings, Head::of_request(&req), None)
        };
        ResponseFuture::start(&mut self.inner, req, begun, self.settings.clone())
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`OpenlayerService`]: runs the inner service's future with
    /// the request's step current, and records the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        step: Option<StepHandle>,
        method: MethodBody,
        settings: Arc<Settings>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    /// Calls `service` with the step current (its `call` may already do work).
    pub(crate) fn start<S, B>(
        service: &mut S,
        req: Request<B>,
        begun: Begun,
        settings: Arc<Settings>,
    ) -> Self
    where
        S: tower::Service<Request<B>, Future = F>,
    {
        let mut step = Some(begun.step);
        let inner = with_step(&mut step, || service.call(req));
        ResponseFuture {
            inner,
            step,
            method: begun.method,
            settings,
        }
    }
}

/// The length of the response body, as the server will send it: the body's exact size,
/// else its `content-length` header (a stream of a known length). The server stops
/// polling the body once it has sent that much.
#[inline]
fn declared_length<B: http_body::Body>(body: &B, headers: &HeaderMap) -> Option<u64> {
    if let Some(n) = body.size_hint().exact() {
        return Some(n);
    }
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Statuses whose responses have no body, which servers may never poll.
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Display,
    ResBody: http_body::Body,
    ResBody::Error: Display,
{
    type Output = Result<Response<OpenlayerBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let result = ready!(with_step(this.step, || inner.poll(cx)));
        let Some(mut step) = this.step.take() else {
            return Poll::Ready(result.map(|r| r.map(OpenlayerBody::untraced)));
        };
        let res = match result {
            Ok(res) => res,
            Err(e) => {
                step.error(&e);
                step.finish();
                return Poll::Ready(Err(e));
            }
        };
        Poll::Ready(Ok(respond(step, res, *this.method, this.settings)))
    }
}

/// `grpc-status`: a gRPC call's outcome, in the response's trailers (or its headers, when
/// it has no body).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the text of a gRPC error, percent-encoded.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Records a gRPC error in `headers` (a `grpc-status` other than `0`) under the step's
/// `Exceptions`: gRPC answers its errors with HTTP 200. Nothing for other responses (an
/// empty map costs no lookup).
#[inline]
pub(crate) fn record_grpc_status(step: &mut StepHandle, headers: &HeaderMap) {
    if headers.is_empty() {
        return;
    }
    if let Some(code) = headers.get(GRPC_STATUS)
        && code.as_bytes() != b"0"
    {
        grpc_error(step, code, headers.get(GRPC_MESSAGE));
    }
}

/// A gRPC error status in `headers`, kept for when the body ends without trailers (a
/// trailers-only response whose body does not report its end up front, as behind a body
/// timeout); `None` for other responses (an empty map costs no lookup).
#[inline]
pub(crate) fn grpc_error_in(headers: &HeaderMap) -> Option<Box<GrpcError>> {
    if headers.is_empty() {
        return None;
    }
    // Only a gRPC response (`application/grpc`, `+proto`, ...) is looked at further: a
    // standard header's lookup is cheap, a custom one's hashes its name.
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return None;
    }
    let code = headers.get(GRPC_STATUS)?;
    (code.as_bytes() != b"0").then(|| {
        Box::new(GrpcError {
            code: code.clone(),
            message: headers.get(GRPC_MESSAGE).cloned(),
        })
    })
}

/// A gRPC error status from a response's headers.
pub(crate) struct GrpcError {
    code: HeaderValue,
    message: Option<HeaderValue>,
}

impl GrpcError {
    pub(crate) fn record(&self, step: &mut StepHandle) {
        grpc_error(step, &self.code, self.message.as_ref());
    }
}

#[cold]
fn grpc_error(step: &mut StepHandle, code: &HeaderValue, message: Option<&HeaderValue>) {
    let code = String::from_utf8_lossy(code.as_bytes());
    let name = code.trim().parse().ok().and_then(grpc_code_name);
    let mut text = match name {
        Some(name) => format!("gRPC status {code} ({name})"),
        None => format!("gRPC status {code}"),
    };
    if let Some(m) = message {
        text.push_str(": ");
        text.push_str(&percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy());
    }
    step.exception(&text);
}

/// The name of a gRPC status code.
fn grpc_code_name(code: u8) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::from(code)).copied()
}

/// Records the response on the request's step (the status as output, `Exceptions` for a
/// 5xx or a gRPC error), writes the inference id header, and hands the step to the body, or ends it when
/// there is no body to wait for.
#[inline]
pub(crate) fn respond<ResBody: http_body::Body>(
    mut step: StepHandle,
    res: Response<ResBody>,
    method: MethodBody,
    settings: &Settings,
) -> Response<OpenlayerBody<ResBody>> {
    let (mut parts, body) = res.into_parts();
    let status = parts.status;
    // Before the id header is added: a response without headers has nothing to look up.
    let grpc = if method.grpc {
        grpc_error_in(&parts.headers)
    } else {
        None
    };
    step.output(&status.as_u16());
    if status.is_server_error() {
        // As an error of the step (not a metadata key), so that a body's error or a panic
        // while the body is produced adds to it rather than replaces it.
        step.exception(&format_args!("HTTP {status}"));
    }
    if settings.respond_with_id
        && let Some(Some(value)) = step.with_inference_id(crate::id_header::header_value)
    {
        parts
            .headers
            .insert(settings.inference_id_header.clone(), value);
    }
    let length = declared_length(&body, &parts.headers);
    let step = if method.none(status)
        || bodiless(status)
        || length == Some(0)
        || http_body::Body::is_end_stream(&body)
    {
        // The response ends with its headers: a gRPC status is there (a "trailers-only"
        // response), not in trailers.
        if let Some(g) = &grpc {
            g.record(&mut step);
        }
        step.finish();
        return Response::from_parts(parts, OpenlayerBody::new(body, None, length, None));
    } else {
        Some(step)
    };
    Response::from_parts(parts, OpenlayerBody::new(body, step, length, grpc))
}
