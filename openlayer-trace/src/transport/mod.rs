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
//! Redirects are not followed (a 3xx is a final error). Proxies come from the usual
//! environment variables (`HTTPS_PROXY`, `NO_PROXY`, ...), except for a base URL on
//! this machine, which is always reached directly.
//!
//! The API key only ever travels in the `Authorization` header: no `Debug` output,
//! error or log line of this module contains it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::time::Instant;

use crate::config::{ApiKey, Config};
use crate::error::Error;

/// The `User-Agent` of every request.
pub(crate) const USER_AGENT: &str =
    concat!("openlayer-trace/", env!("CARGO_PKG_VERSION"), " (rust)");

/// The longest computed backoff (before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The longest server-requested wait that is honoured; longer ones are ignored.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of a server message kept in an error.
const MAX_MESSAGE_BYTES: usize = 1024;
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
#[derive(Clone, Debug)]
pub(crate) struct ApiResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl ApiResponse {
    /// The body decoded from JSON.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(Error::Json)
    }
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
        let base_url = self.base_url.trim().trim_end_matches('/');
        let parsed = Url::parse(base_url)
            .map_err(|e| Error::Config(format!("invalid base URL {base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "base URL must start with http:// or https://, got {base_url:?}"
            )));
        }
        if let Some(key) = &self.api_key {
            auth_header(key)?;
        }
        extra_headers(&self.extra_headers)?;
        Ok(parsed)
    }
}

/// The extra headers, checked, their values marked sensitive.
fn extra_headers(headers: &[(String, String)]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| Error::Config(format!("invalid HTTP header name {name:?}")))?;
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
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_string();
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
            }),
        })
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
            }),
        })
    }

    /// The underlying client, without our auth, for requests to other hosts (the
    /// presigned-URL upload). It has our timeouts, TLS settings and user agent.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The base URL, without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// One attempt, classified.
    pub(crate) async fn send_once(&self, req: &ApiRequest) -> Attempt {
        let path = req.path();
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
        let request = match url.query() {
            Some(q) => format!("{} {path}?{q}", req.method),
            None => format!("{} {path}", req.method),
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
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return self.failed(e, request),
        };
        if (200..300).contains(&status) {
            return Attempt::Success(ApiResponse { status, body });
        }
        let error = Error::Api {
            status,
            message: self.redact(server_message(status, &body)),
            request,
        };
        let retryable = if self.inner.protobuf {
            is_retryable_otlp_status(status)
        } else {
            is_retryable_status(status)
        };
        if retryable {
            Attempt::Retryable { error, retry_after }
        } else {
            Attempt::Fatal(error)
        }
    }

    /// The full retry policy. Never waits past `deadline`: an attempt still running at
    /// the deadline is abandoned with [`Error::Timeout`], and when the next attempt
    /// would start after it, the last attempt's error is returned.
    pub(crate) async fn send(&self, req: &ApiRequest, deadline: Option<Instant>) -> SendOutcome {
        let start = Instant::now();
        let mut retries = 0;
        loop {
            let attempt = match deadline {
                None => self.send_once(req).await,
                Some(deadline) => {
                    let timed_out = || SendOutcome {
                        result: Err(Error::Timeout(deadline.saturating_duration_since(start))),
                        retries,
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
            let (error, retry_after) = match attempt {
                Attempt::Success(response) => {
                    return SendOutcome {
                        result: Ok(response),
                        retries,
                    };
                }
                Attempt::Fatal(error) => {
                    return SendOutcome {
                        result: Err(error),
                        retries,
                    };
                }
                Attempt::Retryable { error, retry_after } => (error, retry_after),
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
                };
            }
            let wait = self.backoff(retries, retry_after);
            let out_of_time = deadline.is_some_and(|d| Instant::now() + wait >= d);
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
            retries += 1;
        }
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
            }
        }
    }

    /// Removes the API key from text that came from elsewhere (a server echoing it).
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

/// The server's message: its JSON `error` or `message` field (a string, or the JSON
/// of it), else the body text, truncated; the reason phrase when the body is empty.
fn server_message(status: u16, body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        for key in ["error", "message"] {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => return truncate(s),
                Some(other) => return truncate(&other.to_string()),
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
        truncate(text)
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE_BYTES {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The wait asked for by `retry-after-ms` (milliseconds) or `Retry-After` (seconds, or
/// an HTTP date), if any.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |s: f64| (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(1e9)));
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Some(wait) = seconds(ms / 1000.0)
    {
        return Some(wait);
    }
    let value = header(RETRY_AFTER.as_str())?;
    if let Ok(s) = value.parse::<f64>() {
        return seconds(s);
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP date in any of the three formats recipients must accept (IMF-fixdate,
/// RFC 850, asctime).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok()
}

/// A number in `[0, 1)` to spread retries (not for anything secret): a per-thread
/// `fastrand` generator, seeded once per thread from the OS (`getrandom`), off the traced
/// path (only the worker retries).
fn jitter() -> f64 {
    thread_local! {
        static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new({
            let mut seed = [0u8; 8];
            match getrandom::getrandom(&mut seed) {
                Ok(()) => fastrand::Rng::with_seed(u64::from_le_bytes(seed)),
                // `fastrand`'s own seeding (std's OS-keyed hasher, the thread, the clock).
                Err(_) => fastrand::Rng::new(),
            }
        });
    }
    RNG.try_with(|rng| rng.borrow_mut().f64())
        .unwrap_or_else(|_| fastrand::f64())
}

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

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

impl TransportConfig {
    /// Loads the platform's root certificates when the base URL is HTTPS and verified, so
    /// that `init` fails with a clear error instead of a worker whose every request fails.
    pub(crate) fn check_tls_roots(&self) -> Result<(), Error> {
        let https = self.validate()?.scheme() == "https";
        if https && self.verify_ssl {
            tls_config(true, true)?;
        }
        Ok(())
    }
}

/// The rustls configuration: the `ring` provider (never installed process-wide), HTTP/1.1,
/// and either the platform's verifier or, with `verify_ssl == false`, none. Root
/// certificates that cannot be loaded are an error for an HTTPS base URL; for a plain-HTTP
/// one (redirects are never followed) they only make HTTPS fail.
fn tls_config(verify_ssl: bool, https: bool) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if verify_ssl {
        match rustls_platform_verifier::Verifier::new(provider.clone()) {
            Ok(verifier) => Arc::new(verifier),
            Err(e) if https => {
                return Err(Error::Config(format!(
                    "the TLS root certificates cannot be loaded ({e}); install the system's CA \
                     certificates or point SSL_CERT_FILE at a PEM bundle"
                )));
            }
            Err(e) => {
                // Plain-HTTP endpoints still work; HTTPS fails with this reason.
                let reason = format!("TLS certificates cannot be verified: {e}");
                tracing::warn!(target: "openlayer_trace", "{reason}; HTTPS requests will fail");
                Arc::new(Unverifiable {
                    reason,
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        }
    } else {
        tracing::warn!(
            target: "openlayer_trace",
            "TLS certificate verification is disabled (OPENLAYER_VERIFY_SSL=false)"
        );
        Arc::new(AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts every certificate (`OPENLAYER_VERIFY_SSL=false`); handshake signatures are
/// still checked, so the connection is encrypted, just not authenticated.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Rejects every certificate with a fixed reason: used when the platform's roots could
/// not be loaded, so that building the transport still succeeds.
#[derive(Debug)]
struct Unverifiable {
    reason: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Unverifiable {
    fn refusal(&self) -> rustls::Error {
        rustls::Error::General(self.reason.clone())
    }
}

impl ServerCertVerifier for Unverifiable {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(self.refusal())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.refusal())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.refusal())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
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
mod tests {
    use std::collections::BTreeSet;
    use std::fmt::Write as _;
    use std::sync::Mutex;

    use openlayer_testserver::{Action, Behavior, Outcome, Response, TestServer};
    use serde_json::{Value, json};

    use super::*;
    use std::time::UNIX_EPOCH;

    const KEY: &str = "sk-test-9f8e7d6c5b4a3210";
    const DATA_STREAM: &str = "/inference-pipelines/pipe-1/data-stream";

    fn config(base_url: &str) -> TransportConfig {
        TransportConfig {
            api_key: Some(ApiKey::new(KEY)),
            base_url: base_url.to_string(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            max_retries: 2,
            verify_ssl: true,
            base_backoff: Duration::from_millis(10),
            extra_headers: Vec::new(),
            protobuf: false,
        }
    }

    fn transport(server: &TestServer) -> Transport {
        Transport::new(config(&server.url())).unwrap()
    }

    fn data_stream(ids: &[&str]) -> ApiRequest {
        let rows: Vec<Value> = ids
            .iter()
            .map(|id| json!({ "inferenceId": id, "output": "héllo ✓" }))
            .collect();
        let body = json!({ "config": { "outputColumnName": "output" }, "rows": rows });
        ApiRequest::post_json(DATA_STREAM, serde_json::to_vec(&body).unwrap())
    }

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn config_comes_from_the_sdk_config() {
        let c = Config::builder()
            .api_key("sk-x")
            .base_url("http://127.0.0.1:9/v1/")
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(7))
            .max_retries(4)
            .verify_ssl(false)
            .build()
            .unwrap();
        let t = TransportConfig::from_config(&c);
        assert_eq!(t.api_key.as_ref().map(ApiKey::expose), Some("sk-x"));
        assert_eq!(t.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(t.connect_timeout, Duration::from_secs(2));
        assert_eq!(t.request_timeout, Duration::from_secs(7));
        assert_eq!(t.max_retries, 4);
        assert!(!t.verify_ssl);
        assert_eq!(t.base_backoff, Duration::from_millis(500));
        let fast = Config::builder()
            .retry_base_backoff(Duration::from_millis(20))
            .build()
            .unwrap();
        assert_eq!(
            TransportConfig::from_config(&fast).base_backoff,
            Duration::from_millis(20)
        );
        let d = TransportConfig::from_config(&Config::default());
        assert_eq!(d.connect_timeout, Duration::from_secs(5));
        assert_eq!(d.request_timeout, Duration::from_secs(60));
        assert_eq!(d.max_retries, 2);
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let mut c = config("ftp://example.invalid/v1");
        assert!(matches!(Transport::new(c.clone()), Err(Error::Config(_))));
        c.base_url = "not a url".into();
        assert!(matches!(Transport::new(c.clone()), Err(Error::Config(_))));
        c.base_url = "http://127.0.0.1:9/v1".into();
        c.api_key = Some(ApiKey::new(format!("{KEY}\n")));
        let e = Transport::new(c).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert!(!format!("{e} {e:?}").contains(KEY));
    }

    #[tokio::test]
    async fn success_sends_auth_json_and_user_agent() {
        let server = TestServer::start();
        let t = transport(&server);
        assert_eq!(t.base_url(), server.url());
        let req = data_stream(&["a", "b"]);
        let out = t.send(&req, None).await;
        let response = out.result.unwrap();
        assert_eq!(out.retries, 0);
        assert_eq!(response.status, 200);
        assert_eq!(
            response.json::<Value>().unwrap(),
            json!({ "success": true })
        );

        let recorded = server.requests();
        assert_eq!(recorded.len(), 1);
        let r = &recorded[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/v1{DATA_STREAM}"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(r.header("user-agent"), Some(USER_AGENT));
        assert!(USER_AGENT.starts_with("openlayer-trace/") && USER_AGENT.ends_with(" (rust)"));
        // Exactly the bytes given: compact UTF-8 JSON, no `\u` escapes.
        assert_eq!(r.body, req.body.as_deref().unwrap());
        let text = std::str::from_utf8(&r.body).unwrap();
        assert!(text.contains("héllo ✓") && !text.contains("\\u") && !text.contains(": "));
        assert_eq!(server.inference_ids(), ids(&["a", "b"]));
    }

    #[tokio::test]
    async fn query_is_encoded_and_key_is_optional() {
        let server = TestServer::start_with(Behavior::always(Response::status(404)));
        let mut c = config(&format!("{}/", server.url()));
        c.api_key = None;
        let t = Transport::new(c).unwrap();
        let req = ApiRequest::new(Method::PUT, "inference-pipelines/pipe-1/rows")
            .with_query("inferenceId", "id with space&more/ü")
            .with_body(&b"{}"[..]);
        let out = t.send(&req, None).await;
        let r = &server.requests()[0];
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/v1/inference-pipelines/pipe-1/rows");
        assert_eq!(r.query_param("inferenceId"), Some("id with space&more/ü"));
        assert_eq!(r.header("authorization"), None);
        match out.result.unwrap_err() {
            Error::Api {
                status, request, ..
            } => {
                assert_eq!(status, 404);
                assert_eq!(
                    request,
                    format!("PUT /inference-pipelines/pipe-1/rows?{}", r.raw_query)
                );
            }
            e => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn unauthorized_is_surfaced_once_with_the_server_message() {
        let server = TestServer::start_with(Behavior::unauthorized("Invalid API key"));
        let t = transport(&server);
        let out = t.send(&data_stream(&["a"]), None).await;
        assert_eq!(out.retries, 0);
        assert_eq!(server.request_count(), 1);
        match out.result.unwrap_err() {
            Error::Api {
                status,
                message,
                request,
            } => {
                assert_eq!(status, 401);
                assert_eq!(message, "Invalid API key");
                assert_eq!(request, format!("POST {DATA_STREAM}"));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            t.send_once(&data_stream(&["a"])).await,
            Attempt::Fatal(Error::Api { status: 401, .. })
        ));
    }

    #[tokio::test]
    async fn only_408_409_429_and_5xx_are_retried() {
        let server = TestServer::start();
        let t = transport(&server);
        for (status, retried) in [
            (400, false),
            (403, false),
            (404, false),
            (413, false),
            (422, false),
            (408, true),
            (409, true),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (504, true),
        ] {
            server.clear_requests();
            server.set_behavior(Behavior::fail_first(1, status));
            let out = t.send(&data_stream(&["a"]), None).await;
            if retried {
                assert!(out.result.is_ok(), "{status}: {:?}", out.result);
                assert_eq!((out.retries, server.request_count()), (1, 2), "{status}");
            } else {
                assert!(
                    matches!(out.result, Err(Error::Api { status: s, .. }) if s == status),
                    "{status}: {:?}",
                    out.result
                );
                assert_eq!((out.retries, server.request_count()), (0, 1), "{status}");
            }
        }
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_succeed_or_give_up() {
        let server = TestServer::start_with(Behavior::fail_first(2, 500));
        let t = transport(&server);
        let out = t.send(&data_stream(&["a"]), None).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert_eq!(out.retries, 2);
        assert_eq!(server.request_count(), 3);
        assert_eq!(server.inference_ids(), ids(&["a"]));

        // One more failure than retries: the last error comes back.
        server.clear_requests();
        server.set_behavior(Behavior::fail_first(3, 503));
        let out = t.send(&data_stream(&["a"]), None).await;
        assert_eq!(out.retries, 2);
        assert_eq!(server.request_count(), 3);
        match out.result.unwrap_err() {
            Error::Api {
                status, message, ..
            } => assert_eq!((status, message.as_str()), (503, "Service Unavailable")),
            e => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn retry_after_seconds_is_honoured() {
        let server = TestServer::start_with(Behavior::rate_limited(1, 1));
        let t = transport(&server);
        let out = t.send(&data_stream(&["a"]), None).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert_eq!(out.retries, 1);
        let r = server.requests();
        let gap = r[1].received_at - r[0].received_at;
        assert!(
            gap >= Duration::from_millis(950) && gap < Duration::from_millis(4000),
            "{gap:?}"
        );
    }

    #[tokio::test]
    async fn a_retry_after_above_the_cap_is_never_cut_short() {
        // The server asks for two minutes: no retry comes sooner; the caller spools.
        let server = TestServer::start_with(Behavior::rate_limited(1, 120));
        let t = transport(&server);
        let out = t.send(&data_stream(&["a"]), None).await;
        assert!(
            matches!(out.result, Err(Error::Api { status: 429, .. })),
            "{:?}",
            out.result
        );
        assert_eq!(out.retries, 0);
        assert_eq!(server.request_count(), 1);
    }

    #[tokio::test]
    async fn retry_after_ms_is_honoured() {
        let server = TestServer::start_with(Behavior::rate_limited_ms(1, 300));
        let t = transport(&server);
        let out = t.send(&data_stream(&["a"]), None).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        let r = server.requests();
        let gap = r[1].received_at - r[0].received_at;
        assert!(
            gap >= Duration::from_millis(280) && gap < Duration::from_millis(1200),
            "{gap:?}"
        );
        match t.send_once(&data_stream(&["a"])).await {
            Attempt::Success(_) => {}
            a => panic!("{a:?}"),
        }
        server.set_behavior(Behavior::rate_limited_ms(1, 1234));
        match t.send_once(&data_stream(&["a"])).await {
            Attempt::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_millis(1234)));
            }
            a => panic!("{a:?}"),
        }
    }

    #[tokio::test]
    async fn connection_refused_is_retried_until_the_server_is_up() {
        let server = TestServer::start();
        server.go_down();
        let mut c = config(&server.url());
        c.max_retries = 0;
        let t = Transport::new(c).unwrap();
        match t.send_once(&data_stream(&["a"])).await {
            Attempt::Retryable {
                error:
                    Error::Transport {
                        message,
                        request,
                        timeout,
                    },
                retry_after: None,
            } => {
                assert!(!timeout);
                assert_eq!(request, format!("POST {DATA_STREAM}"));
                assert!(message.to_lowercase().contains("refused"), "{message}");
                assert!(!message.contains("127.0.0.1"), "no URL: {message}");
            }
            a => panic!("{a:?}"),
        }

        let mut c = config(&server.url());
        c.max_retries = 8;
        c.base_backoff = Duration::from_millis(40);
        let t = Transport::new(c).unwrap();
        let up = std::thread::spawn({
            let server = std::sync::Arc::new(server);
            let s = server.clone();
            move || {
                std::thread::sleep(Duration::from_millis(200));
                s.come_up();
                s
            }
        });
        let out = t.send(&data_stream(&["a"]), None).await;
        let server = up.join().unwrap();
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert!(out.retries >= 2, "{}", out.retries);
        assert_eq!(server.request_count(), 1);
        assert_eq!(server.inference_ids(), ids(&["a"]));
    }

    #[tokio::test]
    async fn a_hung_server_hits_the_request_timeout() {
        let server = TestServer::start_with(Behavior::hang());
        let mut c = config(&server.url());
        c.request_timeout = Duration::from_millis(300);
        c.max_retries = 1;
        let t = Transport::new(c).unwrap();
        let start = std::time::Instant::now();
        match t.send_once(&data_stream(&["a"])).await {
            Attempt::Retryable {
                error: Error::Transport { timeout, .. },
                ..
            } => assert!(timeout),
            a => panic!("{a:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1200),
            "{took:?}"
        );
        // With one retry: two attempts, both timed out.
        server.clear_requests();
        let out = t.send(&data_stream(&["a"]), None).await;
        assert_eq!(out.retries, 1);
        assert!(
            matches!(out.result, Err(Error::Transport { timeout: true, .. })),
            "{:?}",
            out.result
        );
        assert_eq!(server.request_count(), 2);
        assert!(server.requests().iter().all(|r| r.outcome == Outcome::Hung));
    }

    #[tokio::test]
    async fn a_reset_connection_is_retried() {
        let server = TestServer::start_with(Behavior::reset_first(2));
        let t = transport(&server);
        let ids_sent: Vec<String> = (0..500).map(|i| format!("id-{i}")).collect();
        let id_refs: Vec<&str> = ids_sent.iter().map(String::as_str).collect();
        let out = t.send(&data_stream(&id_refs), None).await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert_eq!(out.retries, 2);
        let outcomes: Vec<Outcome> = server.requests().iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Reset, Outcome::Reset, Outcome::Answered(200)]
        );
        assert_eq!(server.inference_ids().len(), 500);
    }

    #[tokio::test]
    async fn send_returns_by_its_deadline_when_the_server_hangs() {
        let server = TestServer::start_with(Behavior::hang());
        let t = transport(&server);
        let mut c = config(&server.url());
        c.request_timeout = Duration::from_secs(60);
        let t_long = Transport::new(c).unwrap();
        for t in [&t, &t_long] {
            let start = Instant::now();
            let deadline = start + Duration::from_millis(400);
            let out = t.send(&data_stream(&["a"]), Some(deadline)).await;
            let late = Instant::now().saturating_duration_since(deadline);
            assert!(late < Duration::from_millis(200), "{late:?} late");
            assert!(
                matches!(out.result, Err(Error::Timeout(d))
                    if d <= Duration::from_millis(400) && d > Duration::from_millis(350)),
                "{:?}",
                out.result
            );
        }
        // A deadline already past: nothing is sent.
        server.clear_requests();
        let out = t.send(&data_stream(&["a"]), Some(Instant::now())).await;
        assert!(matches!(out.result, Err(Error::Timeout(_))));
        assert_eq!(server.request_count(), 0);
    }

    #[tokio::test]
    async fn send_does_not_start_a_retry_after_its_deadline() {
        let server = TestServer::start_with(Behavior::always(Action::status(500)));
        let mut c = config(&server.url());
        c.base_backoff = Duration::from_secs(1);
        let t = Transport::new(c).unwrap();
        let start = Instant::now();
        let out = t
            .send(
                &data_stream(&["a"]),
                Some(start + Duration::from_millis(300)),
            )
            .await;
        assert!(start.elapsed() < Duration::from_millis(250), "no sleeping");
        assert_eq!(out.retries, 0);
        assert!(
            matches!(out.result, Err(Error::Api { status: 500, .. })),
            "{:?}",
            out.result
        );
        assert_eq!(server.request_count(), 1);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (url, local) in [
            ("http://127.0.0.1:8080/v1", true),
            ("http://127.3.4.5/v1", true),
            ("http://LOCALHOST:1/v1", true),
            ("http://[::1]:9/v1", true),
            ("https://api.openlayer.com/v1", false),
            ("http://10.0.0.1/v1", false),
            ("http://localhost.example.com/v1", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(url).unwrap()), local, "{url}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let mut c = config("http://127.0.0.1:9/v1");
        c.base_backoff = crate::config::DEFAULT_BASE_BACKOFF;
        let t = Transport::new(c).unwrap();
        for (retry, base_ms) in [
            (0, 500),
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (9, 8000),
        ] {
            let base = Duration::from_millis(base_ms);
            let mut seen = BTreeSet::new();
            for _ in 0..50 {
                let d = t.backoff(retry, None);
                assert!(d >= base && d <= base.mul_f64(1.25), "{retry}: {d:?}");
                seen.insert(d);
            }
            assert!(seen.len() > 1, "jitter varies");
        }
        assert!(t.backoff(u32::MAX, None) <= Duration::from_secs(10));
        // A server's wait replaces the backoff, if it is in (0, 60 s].
        let s = Duration::from_secs;
        assert_eq!(t.backoff(3, Some(s(1))), s(1));
        assert_eq!(t.backoff(0, Some(s(60))), s(60));
        assert!(t.backoff(0, Some(s(61))) < s(1));
        assert!(t.backoff(0, Some(Duration::ZERO)) >= Duration::from_millis(500));
    }

    #[test]
    fn retry_after_headers_are_parsed() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let parse = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            retry_after(&h, now)
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            parse(&[("retry-after", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse(&[("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse(&[("retry-after-ms", "nope"), ("retry-after", "9")]),
            Some(Duration::from_secs(9))
        );
        assert_eq!(
            parse(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse(&[("retry-after", "Sun, 06 Nov 1994 08:49:27 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(parse(&[("retry-after", "-3")]), None);
        assert_eq!(parse(&[("retry-after", "soon")]), None);
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_835_481_599))
        );
        assert_eq!(parse_http_date("Tue, 29 Foo 2028 23:59:59 GMT"), None);
        // The obsolete formats that recipients must still accept (RFC 9110, 5.6.7).
        assert_eq!(
            parse(&[("retry-after", "Sunday, 06-Nov-94 08:49:47 GMT")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse(&[("retry-after", "Sun Nov  6 08:49:47 1994")]),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn server_messages_are_extracted_and_truncated() {
        assert_eq!(server_message(401, br#"{"error":"bad key"}"#), "bad key");
        assert_eq!(server_message(400, br#"{"message":"no rows"}"#), "no rows");
        assert_eq!(server_message(422, br#"{"error":null,"message":"m"}"#), "m");
        assert_eq!(
            server_message(422, br#"{"error":{"code":7,"detail":"x"}}"#),
            r#"{"code":7,"detail":"x"}"#
        );
        assert_eq!(
            server_message(502, b"  <html>bad gateway</html>\n"),
            "<html>bad gateway</html>"
        );
        assert_eq!(server_message(503, b""), "Service Unavailable");
        assert_eq!(server_message(599, b""), "no message");
        let long = "é".repeat(2000);
        let m = server_message(500, long.as_bytes());
        assert!(m.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8() && m.ends_with('…'));
    }

    /// A loopback HTTPS server with a self-signed certificate, answering `connections`
    /// connections with `200 {"success":true}` (or failing their handshake).
    fn tls_server(connections: usize) -> (String, std::thread::JoinHandle<()>) {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        use std::io::{Read, Write};

        let cert =
            CertificateDer::from_pem_slice(include_bytes!("testdata/localhost-cert.pem")).unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("testdata/localhost-key.pem")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/v1", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let Ok(stream) = stream else { continue };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if !head.ends_with(b"\r\n\r\n") {
                    continue; // the client rejected the handshake
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{\"success\":true}",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (url, thread)
    }

    #[tokio::test]
    async fn verify_ssl_false_accepts_a_self_signed_certificate() {
        let (url, server) = tls_server(2);
        let get = ApiRequest::new(Method::GET, "/projects");

        let mut c = config(&url);
        c.max_retries = 0;
        c.verify_ssl = false;
        let insecure = Transport::new(c.clone()).unwrap();
        let out = insecure.send(&get, None).await;
        assert_eq!(out.result.unwrap().status, 200);

        c.verify_ssl = true;
        let secure = Transport::new(c).unwrap();
        match secure.send(&get, None).await.result {
            Err(Error::Transport {
                message, timeout, ..
            }) => {
                assert!(!timeout);
                assert!(message.to_lowercase().contains("certificate"), "{message}");
            }
            r => panic!("{r:?}"),
        }
        server.join().unwrap();
    }

    /// Collects every event and span field, as text.
    struct Capture(Arc<Mutex<String>>);

    struct Fields<'a>(&'a mut String);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            span.record(&mut Fields(&mut self.0.lock().unwrap()));
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            values.record(&mut Fields(&mut self.0.lock().unwrap()));
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut out = self.0.lock().unwrap();
            let _ = write!(out, "[{}] ", event.metadata().target());
            event.record(&mut Fields(&mut out));
            out.push('\n');
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output_or_logs() {
        let logs = Arc::new(Mutex::new(String::new()));
        let mut debug = String::new();
        // With a single dispatcher in the process, tracing caches each callsite's
        // interest from whichever thread reaches it first (tests without a subscriber
        // run in parallel). A second live dispatcher makes the cache consult both.
        let _second = tracing::Dispatch::new(Capture(Arc::default()));
        tracing::callsite::rebuild_interest_cache();
        tracing::subscriber::with_default(Capture(logs.clone()), || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                // The server echoes the key back in its error message.
                let server = TestServer::start_with(Behavior::script([
                    Action::status(500),
                    Action::Respond(Response::json(
                        401,
                        &json!({ "error": format!("Invalid API key {KEY}") }),
                    )),
                ]));
                let mut c = config(&server.url());
                let _ = writeln!(debug, "{c:?}");
                let t = Transport::new(c.clone()).unwrap();
                let _ = writeln!(debug, "{t:?} {:?}", t.clone());
                let out = t.send(&data_stream(&["a"]), None).await;
                let e = out.result.as_ref().unwrap_err();
                assert!(matches!(e, Error::Api { status: 401, .. }), "{e:?}");
                let _ = writeln!(debug, "{out:?} {e}");

                server.set_behavior(Behavior::hang());
                let out = t
                    .send(
                        &data_stream(&["a"]),
                        Some(Instant::now() + Duration::from_millis(100)),
                    )
                    .await;
                let _ = writeln!(debug, "{out:?}");
                server.go_down();
                let out = t.send(&data_stream(&["a"]), None).await;
                let e = out.result.as_ref().unwrap_err();
                let _ = writeln!(debug, "{out:?} {e}");
                let _ = writeln!(debug, "{:?}", t.send_once(&data_stream(&["a"])).await);

                c.verify_ssl = false;
                let _ = writeln!(debug, "{:?}", Transport::new(c).unwrap());
            });
        });
        let logs = logs.lock().unwrap();
        assert!(debug.contains("***"), "{debug}");
        assert!(debug.contains("Invalid API key ***"), "{debug}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(logs.contains("[openlayer_trace]"), "{logs}");
        assert!(logs.contains("retrying"), "{logs}");
        assert!(logs.contains("verification is disabled"), "{logs}");
        assert!(!logs.contains(KEY), "{logs}");
    }
}
