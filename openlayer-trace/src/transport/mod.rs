//! The HTTP transport to the Openlayer API: one pooled HTTP/1.1 client with rustls on
//! the `ring` provider, Bearer auth, timeouts, error mapping and the retry policy.
//!
//! Policy (see the "Connection" section of the wire format):
//! - connect timeout 5 s and whole-request timeout 60 s by default (from [`Config`]);
//! - connection errors, timeouts, 408, 409, 429 and 5xx are retried, 2 retries by
//!   default; every other non-2xx status is final;
//! - the backoff before retry `n` (from 0) is 0.5 s · 2ⁿ capped at 8 s, plus up to 25 %
//!   of jitter; a `retry-after-ms` or `Retry-After` header (seconds or an HTTP date) of
//!   more than 0 and at most 60 s replaces it.
//!
//! The API's client follows no redirect (a 3xx is a final error); the storage's follows
//! them (see `Transport::storage_http`). Proxies come from the usual
//! environment variables (`HTTPS_PROXY`, `NO_PROXY`, ...), except for a base URL on
//! this machine, which is always reached directly.
//!
//! The API key only ever travels in the `Authorization` header: no `Debug` output,
//! error or log line of this module contains it.
//!
//! It owns HTTP: request and response types, the retry policy (`retry`: `Retry-After`
//! and jitter) and TLS (`tls`). It may import from `util/`, `error.rs` and `config.rs`.

mod retry;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use tokio::time::Instant;

use crate::config::{ApiKey, Config};
use crate::error::Error;

use retry::jitter;
pub(crate) use retry::retry_after;
use tls::tls_config;

/// The `User-Agent` of every request.
pub(crate) const USER_AGENT: &str =
    concat!("openlayer-trace/", env!("CARGO_PKG_VERSION"), " (rust)");

/// The longest computed backoff (before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The longest server-requested wait a request waits out before trying again; with a
/// longer one it gives up at once (the error carries the wait, `Error::Api::retry_after`).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of a server message kept in an error.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Most bytes of a successful answer read (a page of a list, a presigned URL, an answer
/// to a write: all far smaller), rather than fill the memory that `queue_max_bytes`
/// bounds: past it the answer is cut, a write it answers counts as done, and a value read
/// from it fails as a lost answer does (see [`ApiResponse::json`]).
pub(crate) const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes of an error answer read (its message is cut to [`MAX_MESSAGE_BYTES`]).
pub(crate) const MAX_ERROR_BYTES: usize = 64 * 1024;
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the transport needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct TransportConfig {
    /// Sent as `Authorization: Bearer <key>`; no header when `None`.
    pub api_key: Option<ApiKey>,
    /// The API base URL, e.g. `https://api.openlayer.com/v1`.
    pub base_url: String,
    /// Timeout of establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Timeout of a whole attempt, from sending to the end of the response body.
    pub request_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Whether TLS certificates are verified (`OPENLAYER_VERIFY_SSL=false` turns it off).
    pub verify_ssl: bool,
    /// The backoff before the first retry (0.5 s); tests shorten it.
    pub(crate) base_backoff: Duration,
    /// Headers added to every request (values kept out of `Debug` and logs).
    pub(crate) extra_headers: Vec<(String, String)>,
    /// OTLP/HTTP: protobuf bodies, and only 429, 502, 503 and 504 (and connection errors
    /// and timeouts) are retried, as the OTLP specification asks.
    pub(crate) protobuf: bool,
}

impl TransportConfig {
    /// The transport settings of a configuration.
    pub(crate) fn from_config(c: &Config) -> Self {
        TransportConfig {
            api_key: c.api_key.clone(),
            base_url: c.base_url().to_string(),
            connect_timeout: c.connect_timeout,
            request_timeout: c.request_timeout,
            max_retries: c.max_retries,
            verify_ssl: c.verify_ssl,
            base_backoff: c.retry_base_backoff,
            extra_headers: Vec::new(),
            protobuf: false,
        }
    }
}

/// One API call: a method and a path below the base URL, query parameters and an
/// optional JSON body.
#[derive(Clone, Debug)]
pub(crate) struct ApiRequest {
    /// The HTTP method.
    pub method: Method,
    /// Appended to the base URL, e.g. `/inference-pipelines/ID/data-stream`.
    pub path: String,
    /// Query parameters (form-encoded on the wire).
    pub query: Vec<(String, String)>,
    /// Compact JSON, sent with `Content-Type: application/json`.
    pub body: Option<Bytes>,
}

impl ApiRequest {
    /// A request without query or body.
    pub(crate) fn new(method: Method, path: impl Into<String>) -> Self {
        ApiRequest {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
        }
    }

    /// A `POST` with a JSON body.
    pub(crate) fn post_json(path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        ApiRequest::new(Method::POST, path).with_body(body)
    }

    /// Adds a query parameter (the client fills `query` directly).
    #[cfg(test)]
    pub(crate) fn with_query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Sets the JSON body.
    pub(crate) fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn path(&self) -> String {
        // An empty path is the base URL itself (an OTLP endpoint).
        if self.path.is_empty() || self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        }
    }
}

/// A 2xx answer.
#[cfg_attr(not(feature = "client"), allow(dead_code))] // read by the client
#[derive(Clone, Debug)]
pub(crate) struct ApiResponse {
    /// The status code.
    pub status: u16,
    /// The body (its first [`MAX_RESPONSE_BYTES`] when it is longer: see `cut`).
    pub body: Bytes,
    /// The body was longer than [`MAX_RESPONSE_BYTES`] and was not read whole: a write it
    /// answers went through (a 2xx), but no value can be read from it. Holds the request,
    /// as errors name it.
    pub cut: Option<String>,
}

impl ApiResponse {
    /// The body decoded from JSON.
    #[cfg(feature = "client")]
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        if let Some(request) = &self.cut {
            // As a lost answer: what it says (a creation's id, say) is not known.
            return Err(Error::Transport {
                message: format!(
                    "the answer is larger than {MAX_RESPONSE_BYTES} bytes; it was not read"
                ),
                request: request.clone(),
                timeout: false,
            });
        }
        serde_json::from_slice(&self.body).map_err(Error::Json)
    }
}

/// Which failed attempts [`Transport::send_with`] tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Every retryable one.
    Any,
    /// Only those the server cannot have acted on.
    Unsent,
}

/// The classified result of one attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// A 2xx.
    Success(ApiResponse),
    /// Worth trying again: a connection error, a timeout, 408, 409, 429 or 5xx.
    Retryable {
        /// What went wrong.
        error: Error,
        /// The wait the server asked for (`retry-after-ms` or `Retry-After`), if any.
        retry_after: Option<Duration>,
        /// Whether the server cannot have acted on the request: no connection was made,
        /// or it answered 429. Only then is a request that must not be repeated (a
        /// creation) tried again.
        unsent: bool,
    },
    /// Final: any other non-2xx, or a request that cannot be built.
    Fatal(Error),
}

/// The result of [`Transport::send`].
#[derive(Debug)]
pub(crate) struct SendOutcome {
    /// The 2xx answer, or the error that ended the attempts.
    pub result: Result<ApiResponse, Error>,
    /// How many retries were made (attempts minus one).
    pub retries: u32,
    /// The wait the server asked for (`Retry-After`) in the answer that ended the
    /// attempts: it asked for more than a request waits, or for a wait the retries ran out
    /// before. The caller holds back its next requests as long.
    pub wait: Option<Duration>,
    /// The request, one that must not be repeated, failed in a way that the server may
    /// have acted on all the same (a 5xx, a timeout or a connection lost after it was
    /// sent): it was not sent again, and whether it took effect is unknown.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub uncertain: bool,
    /// An attempt before the last failed in a way the server may have acted on (a 5xx,
    /// a timeout, a connection lost after the request was sent): the last answer may
    /// reflect it (a 404 for a delete that went through).
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub maybe_acted: bool,
}

/// The HTTP transport; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<ApiKey>,
    auth: Option<HeaderValue>,
    max_retries: u32,
    base_backoff: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    verify_ssl: bool,
    extra: HeaderMap,
    protobuf: bool,
    /// The clients of uploads to the storage (see [`Transport::storage_http`]): through
    /// the environment's proxy, and direct (for a storage on this machine).
    #[cfg(feature = "client")]
    storage: [std::sync::OnceLock<reqwest::Client>; 2],
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Transport")
            .field("base_url", &i.base_url)
            .field("api_key", &i.api_key)
            .field("connect_timeout", &i.connect_timeout)
            .field("request_timeout", &i.request_timeout)
            .field("max_retries", &i.max_retries)
            .field("base_backoff", &i.base_backoff)
            .field("verify_ssl", &i.verify_ssl)
            .finish()
    }
}

impl TransportConfig {
    /// Checks the base URL and the API key, cheaply (building the client takes
    /// milliseconds, mostly TLS setup): [`Transport::new`] fails on nothing else but an
    /// unusable TLS or HTTP stack. Returns the parsed base URL.
    pub(crate) fn validate(&self) -> Result<Url, Error> {
        let base_url = base_url_of(&self.base_url, self.protobuf);
        let parsed = Url::parse(base_url).map_err(|e| {
            Error::Config(format!(
                "invalid base URL {:?}: {e}",
                crate::util::text::shown_url(base_url)
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "base URL must start with http:// or https://, got {:?}",
                crate::util::text::shown_url(base_url)
            )));
        }
        // A user and password would be sent (and shown) as they are. The API's paths are
        // appended to its base URL: a query or fragment would take them in (an OTLP
        // endpoint is the whole URL, its query kept after `/v1/traces`).
        if !parsed.username().is_empty()
            || parsed.password().is_some()
            || (!self.protobuf && (parsed.query().is_some() || parsed.fragment().is_some()))
        {
            return Err(Error::Config(if self.protobuf {
                "the OTLP endpoint must have no user or password".into()
            } else {
                "the base URL must have no query, fragment, user or password \
                 (scheme, host, port and path only)"
                    .into()
            }));
        }
        if let Some(key) = &self.api_key {
            auth_header(key)?;
        }
        extra_headers(&self.extra_headers)?;
        Ok(parsed)
    }
}

/// The base URL as requests are made from it: without a trailing `/` (the API's paths
/// start with one); an OTLP endpoint, which is the whole URL, as it is (a `/` may end a
/// value of its query).
fn base_url_of(base_url: &str, otlp: bool) -> &str {
    let trimmed = base_url.trim();
    if otlp && trimmed.contains(['?', '#']) {
        trimmed
    } else {
        trimmed.trim_end_matches('/')
    }
}

/// The extra headers, checked, their values marked sensitive.
fn extra_headers(headers: &[(String, String)]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            // Not shown: a value written in the wrong place (`Authorization: Basic ..=`,
            // split at its `=`) would be.
            .map_err(|_| {
                Error::Config(
                    "an extra header's name is not a valid HTTP header name (OTLP headers \
                     are `name=value` pairs separated by commas)"
                        .into(),
                )
            })?;
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            Error::Config(format!(
                "the value of header {name} contains characters not allowed in an HTTP header"
            ))
        })?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// The `Authorization: Bearer <key>` value, marked sensitive (kept out of HTTP logs).
fn auth_header(key: &ApiKey) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
        Error::Config("the API key contains characters not allowed in an HTTP header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

impl Transport {
    /// Builds the client. Fails on an unusable base URL or API key.
    pub(crate) fn new(cfg: TransportConfig) -> Result<Self, Error> {
        let parsed = cfg.validate()?;
        let base_url = base_url_of(&cfg.base_url, cfg.protobuf).to_string();
        let auth = cfg.api_key.as_ref().map(auth_header).transpose()?;
        let extra = extra_headers(&cfg.extra_headers)?;
        let mut builder = reqwest::Client::builder();
        if is_loopback(&parsed) {
            // A local endpoint is never reached through an HTTP(S)_PROXY.
            builder = builder.no_proxy();
        }
        #[cfg(feature = "test-util")]
        if HANG_NAME_RESOLUTION.load(std::sync::atomic::Ordering::Relaxed) {
            builder = builder.dns_resolver(Arc::new(HangingResolver));
        }
        let http = builder
            // Answers are read as they come (bounded): never inflated by the client, which
            // a feature of reqwest turned on elsewhere in the build would make it do.
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .user_agent(USER_AGENT)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(tls_config(cfg.verify_ssl, parsed.scheme() == "https")?)
            .build()
            .map_err(|e| {
                let e = e.without_url();
                Error::Config(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(Transport {
            inner: Arc::new(Inner {
                http,
                base_url,
                api_key: cfg.api_key,
                auth,
                max_retries: cfg.max_retries,
                base_backoff: cfg.base_backoff,
                connect_timeout: cfg.connect_timeout,
                request_timeout: cfg.request_timeout,
                verify_ssl: cfg.verify_ssl,
                extra,
                protobuf: cfg.protobuf,
                #[cfg(feature = "client")]
                storage: Default::default(),
            }),
        })
    }

    /// The client of an upload to the storage at `url` (a presigned URL), built once:
    /// not the API's, whose settings are the API's own. It follows redirects (S3 answers
    /// a bucket of another region with a 307; a presigned request carries no credential
    /// header to leak), reaches a storage elsewhere through the environment's proxy
    /// (`HTTPS_PROXY`, `NO_PROXY`) even when the API is on this machine, and checks
    /// certificates as the API's client does (`verify_ssl`).
    #[cfg(feature = "client")]
    pub(crate) fn storage_http(&self, url: &str) -> Result<reqwest::Client, Error> {
        let parsed = Url::parse(url)
            .map_err(|_| Error::InvalidInput("the presigned storage URL is not a URL".into()))?;
        let direct = is_loopback(&parsed);
        let cell = &self.inner.storage[usize::from(direct)];
        if let Some(client) = cell.get() {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder();
        if direct {
            builder = builder.no_proxy();
        }
        let client = builder
            .no_gzip()
            .no_brotli()
            .no_deflate()
            .no_zstd()
            .user_agent(USER_AGENT)
            .connect_timeout(self.inner.connect_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // Only the redirects that keep the method and the body (307, 308: S3 for a
            // bucket of another region): a 301, 302 or 303 would be followed as a GET
            // without the upload, whose 2xx would count the upload as stored.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() > 5 {
                    attempt.error("more than 5 redirects")
                } else if matches!(attempt.status().as_u16(), 307 | 308) {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .tls_backend_preconfigured(tls_config(self.inner.verify_ssl, true)?)
            .build()
            .map_err(|e| {
                let e = e.without_url();
                Error::Config(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(cell.get_or_init(|| client).clone())
    }

    /// The same transport (sharing its connections) with one more header on every
    /// request, or a header replaced.
    #[cfg(feature = "otlp")]
    pub(crate) fn with_header(&self, name: &'static str, value: &str) -> Result<Self, Error> {
        let i = &self.inner;
        let mut extra = i.extra.clone();
        extra.extend(extra_headers(&[(name.to_string(), value.to_string())])?);
        Ok(Transport {
            inner: Arc::new(Inner {
                http: i.http.clone(),
                base_url: i.base_url.clone(),
                api_key: i.api_key.clone(),
                auth: i.auth.clone(),
                max_retries: i.max_retries,
                base_backoff: i.base_backoff,
                connect_timeout: i.connect_timeout,
                request_timeout: i.request_timeout,
                verify_ssl: i.verify_ssl,
                extra,
                protobuf: i.protobuf,
                #[cfg(feature = "client")]
                storage: Default::default(),
            }),
        })
    }

    /// The time allowed for one request (the configured `request_timeout`).
    #[cfg(feature = "client")]
    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        self.inner.request_timeout
    }

    /// The base URL, without a trailing slash.
    #[cfg(feature = "client")]
    pub(crate) fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// One attempt, classified.
    pub(crate) async fn send_once(&self, req: &ApiRequest) -> Attempt {
        let path = req.path();
        // An id of `.` or `..` (left as it is by `segment`: both are unreserved) would be a
        // dot segment, which URL parsing resolves: `rows/..` would address the pipeline
        // itself (`DELETE` included). Percent-encoding does not help (`%2e` is a dot
        // too), so such a path is refused.
        if path.split('/').any(|s| s == "." || s == "..") {
            return Attempt::Fatal(Error::InvalidInput(format!(
                "bad request path {path:?}: an id of \".\" or \"..\" cannot be part of a URL path"
            )));
        }
        let url = match Url::parse(&format!("{}{}", self.inner.base_url, path)) {
            Ok(mut url) => {
                if !req.query.is_empty() {
                    url.query_pairs_mut().extend_pairs(&req.query);
                }
                url
            }
            Err(e) => {
                return Attempt::Fatal(Error::InvalidInput(format!(
                    "bad request path {path:?}: {e}"
                )));
            }
        };
        // An OTLP endpoint's own query (a token, say) is not shown in errors; its path is
        // the endpoint's (the request adds none).
        let shown = if path.is_empty() {
            url.path()
        } else {
            path.as_str()
        };
        let request = match url.query() {
            Some(q) if !self.inner.protobuf => format!("{} {shown}?{q}", req.method),
            _ => format!("{} {shown}", req.method),
        };

        let media = if self.inner.protobuf {
            "application/x-protobuf"
        } else {
            "application/json"
        };
        let mut builder = self
            .inner
            .http
            .request(req.method.clone(), url)
            .header(ACCEPT, media);
        if !self.inner.extra.is_empty() {
            builder = builder.headers(self.inner.extra.clone());
        }
        if let Some(auth) = &self.inner.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = &req.body {
            builder = builder.header(CONTENT_TYPE, media).body(body.clone());
        }

        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => return self.failed(e, request),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let protobuf = is_protobuf(response.headers());
        let success = (200..300).contains(&status);
        let limit = if success {
            MAX_RESPONSE_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        // A 2xx declaring more than it may is not read at all; an error's first bytes
        // are (its message is cut anyway).
        let (body, cut) = match read_bounded(response, limit, !success).await {
            Ok(Bounded::Whole(body)) => (body, false),
            Ok(Bounded::Cut(body)) => (body, true),
            Err(e) => return self.failed(e, request),
        };
        if success {
            // Cut or not, the server took the request: a write went through (sending it
            // again would repeat it); a value read from it fails (`ApiResponse::json`).
            let cut = cut.then_some(request);
            return Attempt::Success(ApiResponse { status, body, cut });
        }
        let error = Error::Api {
            status,
            message: self.server_text(&match protobuf.then(|| rpc_status_message(&body)) {
                Some(Some(m)) => m,
                _ => server_message(status, &body),
            }),
            request,
            retry_after,
        };
        let retryable = if self.inner.protobuf {
            is_retryable_otlp_status(status)
        } else {
            is_retryable_status(status)
        };
        if retryable {
            Attempt::Retryable {
                error,
                retry_after,
                unsent: status == 429,
            }
        } else {
            Attempt::Fatal(error)
        }
    }

    /// The full retry policy. Never waits past `deadline`: an attempt still running at
    /// the deadline is abandoned with [`Error::Timeout`], and when the next attempt
    /// would start after it, the last attempt's error is returned.
    pub(crate) async fn send(&self, req: &ApiRequest, deadline: Option<Instant>) -> SendOutcome {
        self.send_with(req, deadline, Repeat::Any).await
    }

    /// Like [`send`](Self::send), for a request that must not be repeated once the
    /// server may have acted on it (a creation, which a repeat would make twice): tried
    /// again only when the server cannot have (a refused connection, a 429).
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) async fn send_unrepeatable(&self, req: &ApiRequest) -> SendOutcome {
        self.send_with(req, None, Repeat::Unsent).await
    }

    async fn send_with(
        &self,
        req: &ApiRequest,
        deadline: Option<Instant>,
        repeat: Repeat,
    ) -> SendOutcome {
        let start = Instant::now();
        let mut retries = 0;
        // Whether an attempt before the last may have been acted on.
        let mut maybe_acted = false;
        loop {
            let attempt = match deadline {
                None => self.send_once(req).await,
                Some(deadline) => {
                    let timed_out = || SendOutcome {
                        result: Err(Error::Timeout(deadline.saturating_duration_since(start))),
                        retries,
                        wait: None,
                        uncertain: false,
                        maybe_acted,
                    };
                    if Instant::now() >= deadline {
                        return timed_out();
                    }
                    match tokio::time::timeout_at(deadline, self.send_once(req)).await {
                        Ok(attempt) => attempt,
                        Err(_) => {
                            tracing::debug!(
                                target: "openlayer_trace",
                                method = %req.method,
                                path = %req.path,
                                retries,
                                "request abandoned at its deadline"
                            );
                            return timed_out();
                        }
                    }
                }
            };
            let (error, retry_after, unsent) = match attempt {
                Attempt::Success(response) => {
                    return SendOutcome {
                        result: Ok(response),
                        retries,
                        wait: None,
                        uncertain: false,
                        maybe_acted,
                    };
                }
                Attempt::Fatal(error) => {
                    return SendOutcome {
                        result: Err(error),
                        retries,
                        wait: None,
                        uncertain: false,
                        maybe_acted,
                    };
                }
                Attempt::Retryable {
                    error,
                    retry_after,
                    unsent,
                } => {
                    if repeat == Repeat::Unsent && !unsent {
                        tracing::debug!(
                            target: "openlayer_trace",
                            error = %error,
                            retries,
                            "not retried: the server may have acted on the request"
                        );
                        return SendOutcome {
                            result: Err(error),
                            retries,
                            wait: None,
                            uncertain: true,
                            maybe_acted,
                        };
                    }
                    (error, retry_after, unsent)
                }
            };
            if retry_after.is_some_and(|w| w > MAX_RETRY_AFTER) {
                // Longer than we wait in a request: never retry sooner than the server
                // asked; the caller spools the rows (or drops and counts them).
                tracing::debug!(
                    target: "openlayer_trace",
                    error = %error,
                    retries,
                    "the server asked to wait longer than a request waits; giving up for now"
                );
                return SendOutcome {
                    result: Err(error),
                    retries,
                    wait: retry_after,
                    uncertain: false,
                    maybe_acted,
                };
            }
            let wait = self.backoff(retries, retry_after);
            let out_of_time = deadline
                .is_some_and(|d| crate::util::clock::after_tokio(Instant::now(), wait) >= d);
            if retries >= self.inner.max_retries || out_of_time {
                tracing::debug!(
                    target: "openlayer_trace",
                    error = %error,
                    retries,
                    out_of_time,
                    "giving up"
                );
                return SendOutcome {
                    result: Err(error),
                    retries,
                    wait: retry_after.filter(|w| !w.is_zero()),
                    uncertain: false,
                    maybe_acted,
                };
            }
            tracing::debug!(
                target: "openlayer_trace",
                error = %error,
                retry = retries + 1,
                wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(wait).await;
            maybe_acted |= !unsent;
            retries += 1;
        }
    }

    /// The most retries of a request after its first attempt.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn max_retries(&self) -> u32 {
        self.inner.max_retries
    }

    /// The wait before retry number `retry` (0 for the first retry): 0.5 s · 2^retry
    /// capped at 8 s, plus up to 25 % of jitter; a `retry_after` of more than 0 and at
    /// most 60 s replaces it.
    pub(crate) fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after
            && !wait.is_zero()
            && wait <= MAX_RETRY_AFTER
        {
            return wait;
        }
        let base = self
            .inner
            .base_backoff
            .saturating_mul(2u32.saturating_pow(retry))
            .min(MAX_BACKOFF);
        base + base.mul_f64(0.25 * jitter())
    }

    fn failed(&self, e: reqwest::Error, request: String) -> Attempt {
        let e = e.without_url();
        let mut message = chain(&e);
        if e.is_timeout() {
            let i = &self.inner;
            message = format!(
                "{message} (connect timeout {:?}, request timeout {:?})",
                i.connect_timeout, i.request_timeout
            );
        }
        let error = Error::Transport {
            message: self.redact(message),
            request,
            timeout: e.is_timeout(),
        };
        if e.is_builder() {
            Attempt::Fatal(error)
        } else {
            Attempt::Retryable {
                error,
                retry_after: None,
                // A connection that was never made carried nothing.
                unsent: e.is_connect(),
            }
        }
    }

    /// Removes the API key from text that came from elsewhere (a server echoing it).
    /// A text of the server's (a message of its answer) as an error may carry it: the API
    /// key taken out of it (before it is cut: a cut could leave the key's start), then
    /// cut to [`MAX_MESSAGE_BYTES`].
    pub(crate) fn server_text(&self, text: &str) -> String {
        truncate(&self.redact(text.to_string()))
    }

    fn redact(&self, text: String) -> String {
        match &self.inner.api_key {
            Some(key) if !key.expose().is_empty() && text.contains(key.expose()) => {
                text.replace(key.expose(), "***")
            }
            _ => text,
        }
    }
}

/// Whether the URL's host is on this machine (`localhost`, 127.0.0.0/8 or `::1`).
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The statuses the OTLP/HTTP specification calls retryable.
pub(crate) fn is_retryable_otlp_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..600).contains(&status)
}

/// An error and its sources, as `a: b: c`, each text once. Call it on
/// `e.without_url()`: the URL may carry a signature.
pub(crate) fn chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut current = std::error::Error::source(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// An answer's body, read up to a bound.
pub(crate) enum Bounded {
    /// All of it.
    Whole(Bytes),
    /// The first bytes of a body longer than the bound (its declared length, or what came).
    Cut(Bytes),
}

/// Reads an answer's body, at most `limit` bytes: a body sending more is cut there (and
/// the connection dropped with the response). One declaring more is not read at all,
/// unless `prefix` asks for its first `limit` bytes all the same.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    prefix: bool,
) -> reqwest::Result<Bounded> {
    if !prefix && response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Bounded::Cut(Bytes::new()));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok(Bounded::Cut(body.freeze()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bounded::Whole(body.freeze()))
}

/// The server's message: its JSON `error` or `message` field (a string, or the JSON
/// of it), else the body text (not cut: see [`Transport::server_text`]); the reason
/// phrase when the body is empty.
fn server_message(status: u16, body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        for key in ["error", "message"] {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => return s.clone(),
                Some(other) => return other.to_string(),
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_string()
    } else {
        text.to_string()
    }
}

/// Whether an answer's `Content-Type` is `application/x-protobuf` (OTLP/HTTP's errors).
fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-protobuf"))
}

/// The message of a protobuf `google.rpc.Status` (OTLP/HTTP's error body: field 1 `code`,
/// field 2 `message`, field 3 `details`), with its code when it has one:
/// `"<message> (code <n>)"`. `None` when the body is not such a message or has no text.
/// A hand decoder, so that the transport needs no `prost` for it.
fn rpc_status_message(body: &[u8]) -> Option<String> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    let mut b = body;
    let (mut code, mut message) = (0i32, None);
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match (key >> 3, key & 7) {
            (0, _) => return None,
            // int32: a negative value is sign-extended to ten bytes.
            (1, 0) => code = varint(&mut b)? as i32,
            (2, 2) => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                message = Some(std::str::from_utf8(take(&mut b, n)?).ok()?.to_string());
            }
            (_, 0) => {
                varint(&mut b)?;
            }
            (_, 1) => {
                take(&mut b, 8)?;
            }
            (_, 2) => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                take(&mut b, n)?;
            }
            (_, 5) => {
                take(&mut b, 4)?;
            }
            _ => return None,
        }
    }
    let message = message
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())?;
    Some(if code != 0 {
        format!("{message} (code {code})")
    } else {
        message
    })
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE_BYTES {
        return s.to_string();
    }
    let end = crate::util::text::floor_boundary(s, MAX_MESSAGE_BYTES);
    format!("{}…", &s[..end])
}

/// Percent-encodes `s` as one URL path segment (everything but RFC 3986's unreserved
/// characters).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod parse_tests;
/// Test hook (`test-util`): clients built while it is set resolve names through
/// [`HangingResolver`].
#[cfg(feature = "test-util")]
pub(crate) static HANG_NAME_RESOLUTION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A resolver whose lookups never end and block a thread of the runtime's blocking pool,
/// as a hung `getaddrinfo` does.
#[cfg(feature = "test-util")]
struct HangingResolver;

#[cfg(feature = "test-util")]
impl reqwest::dns::Resolve for HangingResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let _ = tokio::task::spawn_blocking(|| {
                loop {
                    std::thread::park();
                }
            })
            .await;
            Err("the hung lookup ended".into())
        })
    }
}

#[cfg(test)]
mod tests;
