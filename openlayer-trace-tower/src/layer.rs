//! The layer and its settings.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::service::OpenlayerService;

/// The response (and request) header carrying the inference id by default.
pub const INFERENCE_ID_HEADER: &str = "x-openlayer-inference-id";

/// Headers that carry credentials: never recorded, whatever
/// [`OpenlayerLayer::record_headers`] lists, and refused as the inference id, user or
/// session header. `authorization`, `proxy-authorization`, `cookie`, `set-cookie`, and the
/// common API-key and token headers: `x-api-key`, `api-key`, `x-goog-api-key`,
/// `x-auth-token`, `x-amz-security-token`, `x-csrf-token` and `x-xsrf-token`.
pub const NEVER_RECORDED: [HeaderName; 11] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("x-auth-token"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("x-csrf-token"),
    HeaderName::from_static("x-xsrf-token"),
];

/// The longest inference id taken from a request header, in bytes; a longer (or empty, or
/// non-ASCII) value is ignored and the id is computed as if the header were absent.
pub const MAX_INFERENCE_ID_LEN: usize = 256;

/// The longest text recorded for a request header, in bytes: a longer value, or a header
/// sent several times whose values joined by `", "` are longer, is cut to its first
/// 1,024 bytes (on a character boundary) followed by `…[truncated N bytes]`, `N` the
/// bytes left out.
pub const MAX_RECORDED_HEADER_LEN: usize = 1024;

/// A closure over the request's head that may produce a string (an id, a route).
pub(crate) type PartsFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;
/// A closure naming the request's step.
pub(crate) type NameFn = Arc<dyn Fn(&Parts) -> String + Send + Sync>;

/// A request's head as the layer reads it. Borrowed from the request itself when no
/// closure needs its [`Parts`]: splitting a request and putting it back together moves
/// its head twice (two copies of some 200 bytes, a tenth of the layer's own work when the
/// request has few headers).
#[derive(Clone, Copy)]
pub(crate) struct Head<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) uri: &'a http::Uri,
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) version: http::Version,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) extensions: &'a http::Extensions,
    /// The parts, for the closures: present whenever one is configured (see
    /// [`Settings::needs_parts`]).
    pub(crate) parts: Option<&'a Parts>,
}

impl<'a> Head<'a> {
    pub(crate) fn of_parts(parts: &'a Parts) -> Self {
        Head {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            version: parts.version,
            extensions: &parts.extensions,
            parts: Some(parts),
        }
    }

    /// The request's path as the client sent it: inside a router nested under a prefix
    /// (`Router::nest`), axum strips the prefix from the request's URI before the layer
    /// sees it, and keeps the URI it was called with as `OriginalUri` (with the `axum`
    /// feature).
    #[inline]
    pub(crate) fn path(&self) -> &'a str {
        #[cfg(feature = "axum")]
        if let Some(original) = self.extensions.get::<axum::extract::OriginalUri>() {
            return original.0.path();
        }
        self.uri.path()
    }

    /// A head without its `Parts`: for settings that configure no closure.
    pub(crate) fn of_request<B>(req: &'a http::Request<B>) -> Self {
        Head {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            version: req.version(),
            extensions: req.extensions(),
            parts: None,
        }
    }

    /// `f` over the parts (`None` without them, which [`Settings::needs_parts`] rules out
    /// where a closure is configured). `f` runs the application's closures: one that
    /// panics gives `None` (the default name, no id, no user), and the request goes on as
    /// if untraced rather than failing.
    #[inline]
    fn apply<R>(&self, f: impl FnOnce(&Parts) -> Option<R>) -> Option<R> {
        debug_assert!(
            self.parts.is_some(),
            "a closure is configured: parts are needed"
        );
        let parts = self.parts?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(parts))).unwrap_or(None)
    }
}

/// Everything the layer was configured with, shared by its services.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) inference_id_header: HeaderName,
    pub(crate) trust_request_id: bool,
    pub(crate) respond_with_id: bool,
    pub(crate) inference_id: Option<PartsFn>,
    pub(crate) record_headers: Vec<HeaderName>,
    pub(crate) user_id_header: Option<HeaderName>,
    pub(crate) session_id_header: Option<HeaderName>,
    pub(crate) user_id: Option<PartsFn>,
    pub(crate) session_id: Option<PartsFn>,
    pub(crate) route: Option<PartsFn>,
    pub(crate) name: Option<NameFn>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            inference_id_header: HeaderName::from_static(INFERENCE_ID_HEADER),
            trust_request_id: true,
            respond_with_id: true,
            inference_id: None,
            record_headers: vec![http::header::CONTENT_TYPE, http::header::USER_AGENT],
            user_id_header: None,
            session_id_header: None,
            user_id: None,
            session_id: None,
            route: None,
            name: None,
        }
    }
}

/// How an [`OpenlayerLayer`] treats request bodies by default: passed through untouched,
/// not recorded.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreBody;

/// JSON request bodies up to a size are read before the handler runs and recorded
/// under the step's input `body`; see [`OpenlayerLayer::record_json_body`].
#[derive(Debug, Clone, Copy)]
pub struct RecordJsonBody {
    pub(crate) max_bytes: usize,
}

/// A [`tower::Layer`] that makes every HTTP request the root step of an Openlayer trace:
/// one row of the inference pipeline per request.
///
/// For each request, the layer
///
/// - opens a root step named `"{METHOD} {route}"` (`"POST /users/{id}/chat"`), with the
///   method, the path and the [allow-listed headers](Self::record_headers) as inputs (and
///   the JSON body, with [`record_json_body`](Self::record_json_body)): the root of a
///   trace of its own even where a step is current (a service called in process by
///   traced code, layers stacked: each layer makes its own row), which stays current
///   around it and keeps its inference id;
/// - makes it current while the inner service runs, so that everything the handler does
///   (`#[trace]` functions, LLM client calls, work spawned with
///   [`openlayer_trace::spawn`]) nests under it and
///   [`openlayer_trace::current_inference_id`] works in the handler;
/// - sets the row's inference id from the request's
///   [`x-openlayer-inference-id`](Self::inference_id_header) header (trusted by default:
///   see [Security](#security)), else from the [`inference_id`](Self::inference_id)
///   closure, else a new one, and sends it back in the same response header;
/// - fills the `user_id` and `session_id` columns from [headers](Self::user_id_header) or
///   [closures](Self::user_id);
/// - records the status code as the step's output, and an `Exceptions` entry for a 5xx
///   response, a panic of the handler (see [below](#handler-panics)), a response body that
///   fails while it is sent (the status stays the output), or a gRPC error (a
///   `grpc-status` other than `0`);
/// - ends the step when the response body has been sent in full, or, when the client goes
///   away first, when the body is dropped, with `cancelled: true` and the status sent.
///   A response that has no body (to `HEAD`, a successful `CONNECT`, a 1xx, 204 or 304)
///   ends it at once.
///
/// ```
/// use openlayer_trace_tower::OpenlayerLayer;
///
/// let layer = OpenlayerLayer::new()
///     .record_headers(["user-agent", "x-client-version"])
///     .user_id_header("x-user-id")
///     .session_id_header("x-session-id");
/// // axum:  Router::new().route("/chat", post(chat)).route_layer(layer)
/// // tower: ServiceBuilder::new().layer(layer).service(svc)
/// # let _ = layer;
/// ```
///
/// # Security
///
/// The inference id a request sends in the [header](Self::inference_id_header) is
/// trusted by default: the client chooses its row's id. A client can then give its row
/// the id of someone else's row (two rows with one id: the platform's handling of
/// duplicate ids decides which one feedback for it reaches), and pick an id that the
/// SDK's `sample_rate` (decided on the id) always keeps. The header also wins over a
/// configured [`inference_id`](Self::inference_id) closure. Where clients are not trusted
/// with that, turn it off with
/// [`trust_request_inference_id(false)`](Self::trust_request_inference_id): the id is then
/// always computed (the closure, else a new one), and still sent back in the response.
///
/// A client that retries a request with the same id sends a second row with that id: what
/// becomes of rows with the same id is the platform's handling of duplicate ids.
///
/// A request that sends the id, user or session header more than once is read by its
/// first value.
///
/// # Browsers and CORS
///
/// A script in a browser can only read the inference id from the response when the server
/// exposes the header: with tower-http's `CorsLayer`,
/// `.expose_headers([HeaderName::from_static("x-openlayer-inference-id")])`
/// (`Access-Control-Expose-Headers: x-openlayer-inference-id`); a client that sends the id
/// on a cross-origin request also needs it in `.allow_headers(..)`.
///
/// # Route names with axum
///
/// With the crate's `axum` feature, the route is axum's `MatchedPath` (the template, such
/// as `/users/{id}`) when the layer is added with `Router::layer` or `Router::route_layer`,
/// so that rows group by endpoint rather than by id. Without the feature, or outside a
/// router, it is the request's path, unless [`route`](Self::route) says otherwise.
///
/// In a router nested under a prefix (`Router::nest("/api/v1", inner)`), axum strips the
/// prefix from the request's URI before the inner router's layers run. With the `axum`
/// feature, the recorded `path` (and the name, when no `MatchedPath` is known) is the path
/// the client called (`/api/v1/chat`), from axum's `OriginalUri`; without it, it is the
/// path with the prefix stripped (`/chat`). The closures see the request as axum hands it
/// to the layer (the prefix stripped); `OriginalUri` is among its extensions.
///
/// Each distinct `"{METHOD} {route}"` name is made once and kept for the life of the
/// process, so that a request's step borrows it instead of allocating it: at most 1,024
/// names or 64 KiB of them (route templates fit many times over); past that (request paths
/// with ids in them, when no template is known), names are made per request and not kept.
///
/// # Handler panics
///
/// A panic in the handler unwinds through this layer, which records it (the step ends
/// with the panic's message under `Exceptions`) and lets it go on: catching it is the job
/// of a layer outside this one, such as tower-http's `CatchPanicLayer`. The `500` that
/// such a layer makes has no inference id header, since this layer never sees it. A
/// client that wants to give feedback on failed requests too sends its own id in the
/// request header, which the row then keeps (`inference_id_for(business key)` makes one
/// from a key the client already has). Put the catching layer outside this one: inside
/// it (added with `.layer(..)` before this one), it turns the panic into a `500` before
/// the panic reaches this layer, which then records that `500` (`HTTP 500 Internal
/// Server Error` under `Exceptions`) without the panic's message.
///
/// # Which requests
///
/// With axum, `Router::layer` traces every request the router answers, its fallback (an
/// unknown path, a 404) included; `Router::route_layer` traces the routes added before
/// it only. Add it to the inference routes, so that feedback calls and health checks make
/// no row:
///
/// ```text
/// Router::new()
///     .route("/chat", post(chat))
///     .route_layer(OpenlayerLayer::new())
///     .route("/feedback", post(feedback))
/// ```
///
/// # When tracing is off
///
/// With tracing disabled (`OPENLAYER_DISABLE_PUBLISH`), requests pass through untouched: no
/// step, no response header, no request body read ahead (with
/// [`record_json_body`](Self::record_json_body)), and none of the configured closures
/// ([`name`](Self::name), [`route`](Self::route), [`inference_id`](Self::inference_id),
/// [`user_id`](Self::user_id), [`session_id`](Self::session_id)) called.
pub struct OpenlayerLayer<M = IgnoreBody> {
    pub(crate) settings: Arc<Settings>,
    pub(crate) mode: M,
}

impl Default for OpenlayerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Clone> Clone for OpenlayerLayer<M> {
    fn clone(&self) -> Self {
        OpenlayerLayer {
            settings: self.settings.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<M: fmt::Debug> fmt::Debug for OpenlayerLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("OpenlayerLayer")
            .field("inference_id_header", &s.inference_id_header)
            .field("trust_request_inference_id", &s.trust_request_id)
            .field("respond_with_inference_id", &s.respond_with_id)
            .field("inference_id", &s.inference_id.is_some())
            .field("record_headers", &s.record_headers)
            .field("user_id_header", &s.user_id_header)
            .field("session_id_header", &s.session_id_header)
            .field("user_id", &s.user_id.is_some())
            .field("session_id", &s.session_id.is_some())
            .field("route", &s.route.is_some())
            .field("name", &s.name.is_some())
            .field("body", &self.mode)
            .finish()
    }
}

/// Parses a header name given to the builder.
///
/// Panics, like [`HeaderName::from_static`], on a name that is not a valid header name:
/// that is a mistake in the program's configuration, found when the layer is built.
fn header_name<K>(name: K, what: &str) -> HeaderName
where
    K: TryInto<HeaderName>,
    K::Error: fmt::Debug,
{
    match name.try_into() {
        Ok(n) => n,
        Err(e) => panic!("OpenlayerLayer::{what}: invalid header name ({e:?})"),
    }
}

/// [`header_name`] for a header whose value is recorded (an id, a user, a session): never
/// one of [`NEVER_RECORDED`], whose values are credentials.
fn value_header<K>(name: K, what: &str) -> HeaderName
where
    K: TryInto<HeaderName>,
    K::Error: fmt::Debug,
{
    let name = header_name(name, what);
    assert!(
        !NEVER_RECORDED.contains(&name),
        "OpenlayerLayer::{what}: `{name}` carries credentials and is never recorded"
    );
    name
}

impl OpenlayerLayer {
    /// A layer with the defaults: the inference id in `x-openlayer-inference-id` (read from
    /// the request, written to the response), `content-type` and `user-agent` recorded, no
    /// user or session, the request body not read.
    pub fn new() -> Self {
        OpenlayerLayer {
            settings: Arc::new(Settings::default()),
            mode: IgnoreBody,
        }
    }

    /// Also records the request body as the step's input `body`, when it is JSON
    /// (`content-type` `application/json` or `*/*+json`, sent without a
    /// `content-encoding` such as `gzip`), not empty, and known to be at most `max_bytes`
    /// long (by its `content-length`, or by the bound of a body limit further out, such as
    /// tower-http's `RequestBodyLimitLayer`).
    ///
    /// Such a body is read in full before the handler runs (the step starts after it),
    /// then handed to the handler unchanged. Other bodies, and every body while tracing is
    /// off, are streamed to the handler untouched and not recorded. So is a body whose
    /// request declares trailers (a `Trailer` header): the body rebuilt from the bytes
    /// read ahead could not carry them. (Trailers a request sends without declaring them
    /// are not handed on after a recorded body.)
    ///
    /// If reading the body fails, the handler is not called with the part that arrived,
    /// since a truncated JSON text can still parse (`123` cut to `12`). The layer answers
    /// itself, as axum's body extractors would: `413 Payload Too Large` when the body went
    /// over a body limit (an `http_body_util::LengthLimitError`), else `400 Bad Request`
    /// (the client went away mid-upload, say), with an empty body and the inference id
    /// header; the row has the inputs without the body, that status as output, and the
    /// read error under `Exceptions`.
    ///
    /// The request body type must be buildable from [`bytes::Bytes`] (`axum::body::Body`,
    /// `http_body_util::Full`, ...) with an error that converts into
    /// `Box<dyn Error + Send + Sync>` (any `std::error::Error + Send + Sync` type, as
    /// `axum::Error`, `hyper::Error` and `http_body_util::Limited`'s boxed error are, or a
    /// `String`), so that a body limit's error can be told apart; the response body type must
    /// have a `Default` (an empty body; axum's and http-body-util's do), and the inner
    /// service must be `Clone` (axum's routes are).
    ///
    /// Since the body is read before the inner service is called, the layers inside this
    /// one (with axum, those added before it; in a `ServiceBuilder`, those after it) run
    /// only once it has arrived: a client that is not authenticated yet still has its
    /// body read (up to `max_bytes`), and a request sent with `Expect: 100-continue` is
    /// told to send it (the server answers `100 Continue` when the body is first read).
    /// Put authentication, and any layer that should refuse a request before its body is
    /// sent, outside this layer.
    ///
    /// While a body is read ahead, the inner service that was made ready for its request
    /// waits with it (as with tower-http's `AsyncRequireAuthorization`): put a
    /// `tower::buffer::Buffer`, whose readiness holds a slot of its queue, outside this
    /// layer rather than inside it, so that slow uploads do not hold its slots.
    ///
    /// ```
    /// let layer = openlayer_trace_tower::OpenlayerLayer::new().record_json_body(16 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn record_json_body(self, max_bytes: usize) -> OpenlayerLayer<RecordJsonBody> {
        OpenlayerLayer {
            settings: self.settings,
            mode: RecordJsonBody { max_bytes },
        }
    }
}

impl<M> OpenlayerLayer<M> {
    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }

    /// The header carrying the inference id (default `x-openlayer-inference-id`): read
    /// from the request (the first value, when sent more than once), so that a client can
    /// choose its row's id ([trusted](Self::trust_request_inference_id) by default; see
    /// [Security](#security)), and written to the response, so that the client can send
    /// feedback for exactly this row. The response's value is marked
    /// [sensitive](HeaderValue::set_sensitive): unique to its response, it is never added
    /// to an HTTP/2 connection's header-compression table.
    ///
    /// # Panics
    ///
    /// On an invalid header name, and on a header of [`NEVER_RECORDED`]
    /// (`authorization`, `cookie`, `x-api-key`, ...): their values are credentials.
    pub fn inference_id_header<K>(mut self, name: K) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Debug,
    {
        self.settings().inference_id_header = value_header(name, "inference_id_header");
        self
    }

    /// Whether an inference id sent by the client in the
    /// [header](Self::inference_id_header) is used (default `true`), before the
    /// [`inference_id`](Self::inference_id) closure. Set `false` when clients must not
    /// choose the id of the row they write (see [Security](#security)); the id is then
    /// always computed.
    pub fn trust_request_inference_id(mut self, trust: bool) -> Self {
        self.settings().trust_request_id = trust;
        self
    }

    /// Whether the inference id is written to the response
    /// [header](Self::inference_id_header) (default `true`).
    pub fn respond_with_inference_id(mut self, respond: bool) -> Self {
        self.settings().respond_with_id = respond;
        self
    }

    /// Computes the inference id of a request that did not send one (or whose id is not
    /// [trusted](Self::trust_request_inference_id)); `None` falls back to a new id (the
    /// root step's UUID). The closure sees the request's head, extensions included (what
    /// middleware outside this layer inserted). The id is trimmed (a blank one falls
    /// back too); one that cannot be a response header value (a control character, more
    /// than [`MAX_INFERENCE_ID_LEN`] bytes) is still the row's id, but is not written to
    /// the response.
    ///
    /// ```
    /// use openlayer_trace::inference_id_for;
    /// use openlayer_trace_tower::OpenlayerLayer;
    ///
    /// // One id per order, whatever the number of attempts (each attempt still sends a
    /// // row: what becomes of rows with the same id is the platform's handling of
    /// // duplicate ids).
    /// let layer = OpenlayerLayer::new().inference_id(|req| {
    ///     let order = req.headers.get("x-order-id")?.to_str().ok()?;
    ///     Some(inference_id_for(order))
    /// });
    /// # let _ = layer;
    /// ```
    pub fn inference_id<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.settings().inference_id = Some(Arc::new(f));
        self
    }

    /// The request headers recorded under the step's input `headers` (default
    /// `content-type` and `user-agent`); replaces the list. The headers of
    /// [`NEVER_RECORDED`] (`authorization`, `cookie`, `x-api-key`, ...) are never
    /// recorded, even when listed. Names are case-insensitive; a header sent several times
    /// is recorded as its values joined by `", "`, a value that is not UTF-8 with
    /// replacement characters. A header's text is recorded up to
    /// [`MAX_RECORDED_HEADER_LEN`] (1 KiB), then cut with a marker.
    ///
    /// # Panics
    ///
    /// On an invalid header name.
    pub fn record_headers<I, K>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: TryInto<HeaderName>,
        K::Error: fmt::Debug,
    {
        let mut list: Vec<HeaderName> = Vec::new();
        for name in names {
            let name = header_name(name, "record_headers");
            if !NEVER_RECORDED.contains(&name) && !list.contains(&name) {
                list.push(name);
            }
        }
        self.settings().record_headers = list;
        self
    }

    /// The request header whose value fills the row's `user_id` column (default none).
    /// A [`user_id`](Self::user_id) closure, when set, is asked first. The header's first
    /// value is read, when it is sent more than once; a value that is not UTF-8, or is
    /// longer than [`MAX_INFERENCE_ID_LEN`] bytes, is not used.
    ///
    /// # Panics
    ///
    /// On an invalid header name, and on a header of [`NEVER_RECORDED`]
    /// (`authorization`, `cookie`, `x-api-key`, ...): their values are credentials.
    pub fn user_id_header<K>(mut self, name: K) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Debug,
    {
        self.settings().user_id_header = Some(value_header(name, "user_id_header"));
        self
    }

    /// The request header whose value fills the row's `session_id` column (default none);
    /// as for [`user_id_header`](Self::user_id_header), the first value is read, and a
    /// value that is not UTF-8 or is longer than [`MAX_INFERENCE_ID_LEN`] bytes is not
    /// used.
    /// A [`session_id`](Self::session_id) closure, when set, is asked first.
    ///
    /// # Panics
    ///
    /// On an invalid header name, and on a header of [`NEVER_RECORDED`]
    /// (`authorization`, `cookie`, `x-api-key`, ...): their values are credentials.
    pub fn session_id_header<K>(mut self, name: K) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Debug,
    {
        self.settings().session_id_header = Some(value_header(name, "session_id_header"));
        self
    }

    /// Computes the row's `user_id` from the request's head; `None` falls back to the
    /// [header](Self::user_id_header). Typically reads what an authentication middleware
    /// (added *outside* this layer, so that it runs first) put in the extensions:
    ///
    /// ```
    /// use openlayer_trace_tower::OpenlayerLayer;
    ///
    /// #[derive(Clone)]
    /// struct CurrentUser { id: String }
    ///
    /// let layer = OpenlayerLayer::new()
    ///     .user_id(|req| req.extensions.get::<CurrentUser>().map(|u| u.id.clone()));
    /// # let _ = layer;
    /// ```
    pub fn user_id<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.settings().user_id = Some(Arc::new(f));
        self
    }

    /// Computes the row's `session_id` from the request's head; `None` falls back to the
    /// [header](Self::session_id_header).
    pub fn session_id<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.settings().session_id = Some(Arc::new(f));
        self
    }

    /// Computes the route of the step's name `"{METHOD} {route}"`; `None` falls back to
    /// the default (axum's `MatchedPath` with the `axum` feature, else the path). Use it
    /// to group rows by endpoint with a router other than axum's:
    ///
    /// ```
    /// use openlayer_trace_tower::OpenlayerLayer;
    ///
    /// #[derive(Clone)]
    /// struct RouteTemplate(&'static str);
    ///
    /// let layer = OpenlayerLayer::new()
    ///     .route(|req| req.extensions.get::<RouteTemplate>().map(|r| r.0.to_string()));
    /// # let _ = layer;
    /// ```
    pub fn route<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.settings().route = Some(Arc::new(f));
        self
    }

    /// Names the step: replaces `"{METHOD} {route}"` entirely.
    ///
    /// ```
    /// let layer = openlayer_trace_tower::OpenlayerLayer::new()
    ///     .name(|req| format!("chat-api {}", req.uri.path()));
    /// # let _ = layer;
    /// ```
    pub fn name<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> String + Send + Sync + 'static,
    {
        self.settings().name = Some(Arc::new(f));
        self
    }
}

impl<S, M: Clone> tower::Layer<S> for OpenlayerLayer<M> {
    type Service = OpenlayerService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenlayerService {
            inner,
            settings: self.settings.clone(),
            mode: self.mode.clone(),
        }
    }
}

/// Whether the request's step, a root, would be recorded if opened here now: tracing is on
/// (or a test capture is active). Inside a trace, where a root may be recorded even under a
/// step that is not, yes (the step's name is then made, and the body read ahead, for
/// nothing at worst).
#[inline]
pub(crate) fn would_record() -> bool {
    openlayer_trace::is_recording() || openlayer_trace::current_context().is_some()
}

impl Settings {
    /// Whether a closure is configured, which reads the request's [`Parts`]: the request
    /// is then split to lend them (see [`Head`]).
    #[inline]
    pub(crate) fn needs_parts(&self) -> bool {
        self.name.is_some()
            || self.route.is_some()
            || self.inference_id.is_some()
            || self.user_id.is_some()
            || self.session_id.is_some()
    }

    /// The step's name: `"{METHOD} {route}"`, or the user's; `path` is the request's
    /// ([`Head::path`]).
    ///
    /// Where the step would not be recorded (tracing off), the name is not made: the
    /// closures do not run and the names kept are not looked up (a name this thread
    /// already borrowed is still taken, which costs less than asking); the step gets an
    /// empty name, which nothing sees.
    pub(crate) fn step_name(&self, head: Head<'_>, path: &str) -> Cow<'static, str> {
        if (self.name.is_some() || self.route.is_some()) && !would_record() {
            return Cow::Borrowed("");
        }
        if let Some(name) = &self.name
            && let Some(name) = head.apply(|parts| Some(name(parts)))
        {
            return Cow::Owned(name);
        }
        let method = head.method.as_str();
        if let Some(route) = self.route.as_ref().and_then(|f| head.apply(|p| f(p))) {
            return crate::names::method_and_route(method, &route);
        }
        #[cfg(feature = "axum")]
        if let Some(m) = head.extensions.get::<axum::extract::MatchedPath>() {
            return crate::names::method_and_route_if(method, m.as_str(), would_record);
        }
        crate::names::method_and_route_if(method, path, would_record)
    }

    /// The inference id to set on the trace, when not the generated one.
    pub(crate) fn inference_id(&self, head: Head<'_>) -> Option<String> {
        if self.trust_request_id
            && let Some(id) = header_values(head.headers, &self.inference_id_header)
                .next()
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|id| !id.is_empty() && id.len() <= MAX_INFERENCE_ID_LEN)
        {
            return Some(id.to_string());
        }
        self.inference_id
            .as_ref()
            .and_then(|f| head.apply(|p| f(p)))
            .and_then(|id| {
                // Trimmed: a client's HTTP parser strips the padding of the header it
                // reads back, and feedback for the id it reads must find the row.
                let trimmed = id.trim();
                match trimmed.len() {
                    0 => None,
                    n if n == id.len() => Some(id),
                    _ => Some(trimmed.to_string()),
                }
            })
    }

    pub(crate) fn user_id(&self, head: Head<'_>) -> Option<String> {
        from_fn_or_header(self.user_id.as_ref(), self.user_id_header.as_ref(), head)
    }

    pub(crate) fn session_id(&self, head: Head<'_>) -> Option<String> {
        from_fn_or_header(
            self.session_id.as_ref(),
            self.session_id_header.as_ref(),
            head,
        )
    }
}

#[inline]
fn from_fn_or_header(
    f: Option<&PartsFn>,
    header: Option<&HeaderName>,
    head: Head<'_>,
) -> Option<String> {
    if f.is_none() && header.is_none() {
        return None;
    }
    from_fn_or_header_slow(f, header, head)
}

fn from_fn_or_header_slow(
    f: Option<&PartsFn>,
    header: Option<&HeaderName>,
    head: Head<'_>,
) -> Option<String> {
    if let Some(v) = f.and_then(|f| head.apply(|p| f(p))) {
        return Some(v);
    }
    let value = header_values(head.headers, header?).next()?;
    // UTF-8 as sent, or nothing: decoded lossily, two different ids in another encoding
    // could become one user. Bounded as an id sent for the row is.
    let text = std::str::from_utf8(value.as_bytes()).ok()?.trim();
    (!text.is_empty() && text.len() <= MAX_INFERENCE_ID_LEN).then(|| text.to_string())
}

/// A request with at most this many header values has a name looked for by comparing it
/// with each name present, one after the other, rather than by hashing it (a custom name
/// such as `x-openlayer-inference-id` is hashed byte by byte, which costs more than a few
/// comparisons).
const SCAN_MAX: usize = 8;

/// The values of the header `name` in `headers`, in the order [`HeaderMap::get_all`] gives
/// them.
#[inline]
pub(crate) fn header_values<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> HeaderValues<'a> {
    if headers.len() > SCAN_MAX {
        HeaderValues::Found(headers.get_all(name).iter())
    } else if headers.keys().any(|k| k == name) {
        // The names alone are compared first: most names looked for are absent, and
        // walking the names costs less than walking the values.
        HeaderValues::Scan(headers.iter(), name)
    } else {
        HeaderValues::Absent
    }
}

/// See [`header_values`].
pub(crate) enum HeaderValues<'a> {
    Absent,
    Scan(http::header::Iter<'a, HeaderValue>, &'a HeaderName),
    Found(http::header::ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for HeaderValues<'a> {
    type Item = &'a HeaderValue;

    #[inline]
    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            HeaderValues::Absent => None,
            HeaderValues::Scan(iter, name) => iter.find(|(n, _)| *n == *name).map(|(_, v)| v),
            HeaderValues::Found(iter) => iter.next(),
        }
    }
}
