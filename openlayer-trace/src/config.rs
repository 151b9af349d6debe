//! Configuration: explicit values from [`Config::builder`] beat the environment.
//!
//! Environment variables (the names of the official SDKs):
//! `OPENLAYER_API_KEY`, `OPENLAYER_INFERENCE_PIPELINE_ID`, `OPENLAYER_BASE_URL`,
//! `OPENLAYER_DISABLE_PUBLISH`, `OPENLAYER_VERIFY_SSL`, plus `OPENLAYER_TRACE_FILE`
//! (the embedded default's file) and `OPENLAYER_SPOOL_DIR`. With the `otlp` feature,
//! `OPENLAYER_OTLP_ENDPOINT` and `OPENLAYER_OTLP_HEADERS` (`k=v,k2=v2`, values
//! URL-decoded, as OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// The default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openlayer.com/v1";
/// The default file of the embedded default (no API key).
pub const DEFAULT_TRACE_FILE: &str = "openlayer-traces.jsonl";

/// The default bound of the local trace file: 64 MiB.
pub const DEFAULT_TRACE_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The largest `queue_capacity` (a channel of more slots is refused by tokio's, which the
/// OTLP exporter uses).
const MAX_QUEUE_CAPACITY: usize = 1 << 24;

/// The largest `max_steps_per_trace`: a step's position is a `u32`, whose two highest
/// values mark a root's parent and a step not recorded.
const MAX_STEPS_PER_TRACE: usize = u32::MAX as usize - 2;

/// An API key. Its `Debug` and `Display` never show the secret.
///
/// ```
/// use openlayer_trace::ApiKey;
/// let key = ApiKey::new("sk-secret");
/// assert_eq!(format!("{key:?}"), "ApiKey(***)");
/// assert_eq!(key.expose(), "sk-secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(Arc::from(key.into()))
    }
    /// The secret itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the spool uses the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpoolMode {
    /// Only batches that exhaust their retries, overflow the queue, or miss the
    /// shutdown deadline are written.
    #[default]
    Overflow,
    /// Every completed trace (but one nesting deeper than 256 levels or too large for a
    /// request, which goes to a worker unwritten) is also written to the spool, by the
    /// thread that completed it, before it is handed off (encoding it there, plus one `write(2)`, not synced),
    /// and acknowledged after a 2xx: a `kill -9` loses nothing that had completed (a power
    /// loss may). Row updates are written ahead the same way. The only mode that adds work
    /// to traced calls.
    WriteAhead,
}

/// A hook applied to each row before it leaves the process (spool and file included).
pub type MaskFn = Arc<dyn Fn(&mut serde_json::Map<String, serde_json::Value>) + Send + Sync>;

pub use crate::report::FailureFn;

/// The backoff before the first retry; it doubles with each retry.
pub(crate) const DEFAULT_BASE_BACKOFF: Duration = Duration::from_millis(500);

/// The SDK's configuration. Build it with [`Config::builder`] or [`Config::from_env`].
///
/// ```
/// use std::time::Duration;
/// use openlayer_trace::Config;
/// let config = Config::builder()
///     .api_key("sk-test")
///     .inference_pipeline_id("00000000-0000-0000-0000-000000000001")
///     .base_url("http://127.0.0.1:9/v1")
///     .max_retries(5)
///     .linger(Duration::from_millis(20))
///     .build()
///     .unwrap();
/// assert!(!format!("{config:?}").contains("sk-test"));
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) inference_pipeline_id: Option<String>,
    pub(crate) base_url: String,
    pub(crate) disabled: bool,
    pub(crate) verify_ssl: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) retry_base_backoff: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) queue_max_bytes: usize,
    pub(crate) batch_max_rows: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) spool_dir: Option<PathBuf>,
    pub(crate) spool_mode: SpoolMode,
    pub(crate) spool_max_bytes: u64,
    pub(crate) trace_file: PathBuf,
    /// Whether the local file was asked for (`OPENLAYER_TRACE_FILE` or `trace_file`).
    pub(crate) trace_file_set: bool,
    pub(crate) trace_file_max_bytes: u64,
    pub(crate) max_steps_per_trace: usize,
    pub(crate) open_trace_warn_after: Duration,
    pub(crate) sample_rate: f64,
    pub(crate) mask: Option<MaskFn>,
    pub(crate) field_budget: Option<usize>,
    pub(crate) on_failure: Option<FailureFn>,
    pub(crate) shutdown_timeout: Duration,
    #[cfg(feature = "otlp")]
    pub(crate) otlp: OtlpConfig,
}

/// Where the OTLP exporter sends spans (see `export::otlp`).
#[cfg(feature = "otlp")]
#[derive(Clone, Debug, Default)]
pub(crate) struct OtlpConfig {
    /// The endpoint, as given: a base (`/v1/traces` is appended) or the traces URL.
    pub endpoint: Option<String>,
    /// Extra headers of every request, in order.
    pub headers: Vec<(String, String)>,
    /// Spans go only to the OTLP endpoint, not to the data-stream API.
    pub only: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("inference_pipeline_id", &self.inference_pipeline_id)
            .field("base_url", &self.base_url)
            .field("disabled", &self.disabled)
            .field("verify_ssl", &self.verify_ssl)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base_backoff", &self.retry_base_backoff)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("batch_max_rows", &self.batch_max_rows)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("linger", &self.linger)
            .field("max_in_flight", &self.max_in_flight)
            .field("spool_dir", &self.spool_dir)
            .field("spool_mode", &self.spool_mode)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("trace_file", &self.trace_file)
            .field("trace_file_max_bytes", &self.trace_file_max_bytes)
            .field("max_steps_per_trace", &self.max_steps_per_trace)
            .field("open_trace_warn_after", &self.open_trace_warn_after)
            .field("sample_rate", &self.sample_rate)
            .field("mask", &self.mask.as_ref().map(|_| "Fn"))
            .field("field_budget", &self.field_budget)
            .field("on_failure", &self.on_failure.as_ref().map(|_| "Fn"))
            .field("shutdown_timeout", &self.shutdown_timeout);
        #[cfg(feature = "otlp")]
        d.field("otlp_endpoint", &self.otlp.endpoint)
            .field(
                "otlp_headers",
                // Header values may be secrets: only their names are shown.
                &self.otlp.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("otlp_only", &self.otlp.only);
        d.finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_key: None,
            inference_pipeline_id: None,
            base_url: DEFAULT_BASE_URL.to_string(),
            disabled: false,
            verify_ssl: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            max_retries: 2,
            retry_base_backoff: DEFAULT_BASE_BACKOFF,
            queue_capacity: 10_000,
            queue_max_bytes: 64 * 1024 * 1024,
            batch_max_rows: 500,
            batch_max_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(50),
            max_in_flight: 4,
            spool_dir: None,
            spool_mode: SpoolMode::Overflow,
            spool_max_bytes: 256 * 1024 * 1024,
            trace_file: PathBuf::from(DEFAULT_TRACE_FILE),
            trace_file_set: false,
            trace_file_max_bytes: DEFAULT_TRACE_FILE_MAX_BYTES,
            max_steps_per_trace: crate::util::limits::DEFAULT_MAX_STEPS,
            open_trace_warn_after: crate::util::limits::DEFAULT_WARN_AFTER,
            sample_rate: 1.0,
            mask: None,
            field_budget: None,
            on_failure: None,
            shutdown_timeout: Duration::from_secs(5),
            #[cfg(feature = "otlp")]
            otlp: OtlpConfig::default(),
        }
    }
}

/// Reads a boolean the way the official SDKs do: `true`, `1`, `on` (any case) are true.
pub(crate) fn env_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "on"
    )
}

/// A variable's value, trimmed (a CRLF env file leaves a `\r` at the end of each: in a
/// pipeline id it would make every request a 404, in a key an invalid header, in a path
/// another file); `None` when unset or blank.
fn env_var(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// The smallest `spool_max_bytes`.
const MIN_SPOOL_BYTES: u64 = 16 * 1024;

impl Config {
    /// A builder starting from the environment; explicit values beat it.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::env_defaults(),
            error: None,
        }
    }

    /// A builder starting from the defaults alone, reading no `OPENLAYER_*` variable: for
    /// tests, and for applications whose configuration comes from elsewhere. (With
    /// [`Config::builder`], a key in the environment beats a local file set in code, and a
    /// spool directory or OTLP endpoint set there cannot be taken out.)
    ///
    /// ```
    /// let config = openlayer_trace::Config::builder_without_env()
    ///     .trace_file(std::env::temp_dir().join("traces.jsonl"))
    ///     .build()
    ///     .unwrap();
    /// assert!(config.api_key().is_none());
    /// ```
    pub fn builder_without_env() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
            error: None,
        }
    }

    /// The configuration from the environment alone.
    pub fn from_env() -> Result<Config, Error> {
        Config::builder().build()
    }

    /// Trims the API key and the pipeline id as the environment's values are; a blank one
    /// is a mistake to report, not a key to send (every request a 401) or a pipeline to
    /// post to (a 404).
    pub(crate) fn trim_ids(&mut self) -> Result<(), Error> {
        if let Some(key) = &self.api_key {
            let trimmed = key.expose().trim();
            if trimmed.is_empty() {
                return Err(Error::Config("the API key is empty".into()));
            }
            if trimmed.len() != key.expose().len() {
                self.api_key = Some(ApiKey::new(trimmed));
            }
        }
        if let Some(id) = &mut self.inference_pipeline_id {
            let trimmed = id.trim();
            if trimmed.is_empty() {
                return Err(Error::Config("the inference pipeline id is empty".into()));
            }
            if trimmed.len() != id.len() {
                *id = trimmed.to_string();
            }
        }
        Ok(())
    }

    /// The environment's values, not yet checked (see [`ConfigBuilder::build`]).
    pub(crate) fn env_defaults() -> Config {
        let mut c = Config {
            api_key: env_var("OPENLAYER_API_KEY").map(ApiKey::new),
            inference_pipeline_id: env_var("OPENLAYER_INFERENCE_PIPELINE_ID"),
            ..Config::default()
        };
        if let Some(url) = env_var("OPENLAYER_BASE_URL") {
            c.base_url = url;
        }
        c.disabled = env_var("OPENLAYER_DISABLE_PUBLISH").is_some_and(|v| env_truthy(&v));
        c.verify_ssl =
            env_var("OPENLAYER_VERIFY_SSL").is_none_or(|v| !v.trim().eq_ignore_ascii_case("false"));
        if let Some(dir) = env_var("OPENLAYER_SPOOL_DIR") {
            c.spool_dir = Some(PathBuf::from(dir));
        }
        if let Some(file) = env_var("OPENLAYER_TRACE_FILE") {
            c.trace_file = PathBuf::from(file);
            c.trace_file_set = true;
        }
        #[cfg(feature = "otlp")]
        {
            c.otlp.endpoint = env_var("OPENLAYER_OTLP_ENDPOINT");
            if let Some(headers) = env_var("OPENLAYER_OTLP_HEADERS") {
                c.otlp.headers = parse_otlp_headers(&headers);
            }
        }
        c
    }

    /// The API key, if any (redacted in `Debug`).
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }
    /// The default inference pipeline id.
    pub fn inference_pipeline_id(&self) -> Option<&str> {
        self.inference_pipeline_id.as_deref()
    }
    /// The API base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
    /// Whether publishing (and tracing) is off.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }
    /// The file of the embedded default, used when no API key is set.
    pub fn trace_file(&self) -> &std::path::Path {
        &self.trace_file
    }
    /// The spool directory (`OPENLAYER_SPOOL_DIR`), if one is set.
    pub fn spool_dir(&self) -> Option<&std::path::Path> {
        self.spool_dir.as_deref()
    }
    /// The most rows in one data-stream request (default 500).
    pub fn batch_max_rows(&self) -> usize {
        self.batch_max_rows
    }
    /// The most bytes in one data-stream request body (default 4 MiB).
    pub fn batch_max_bytes(&self) -> usize {
        self.batch_max_bytes
    }
}

/// Builds a [`Config`]; see [`Config::builder`].
#[must_use]
pub struct ConfigBuilder {
    config: Config,
    error: Option<Error>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("config", &self.config)
            .finish()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => |$c:ident, $v:ident| $body:expr) => {
        $(#[$doc])*
        pub fn $name(mut self, $v: $ty) -> Self {
            let $c = &mut self.config;
            $body;
            self
        }
    };
}

impl ConfigBuilder {
    setter!(/// The API key (`OPENLAYER_API_KEY`).
        api_key: impl Into<String> => |c, v| c.api_key = Some(ApiKey::new(v)));
    setter!(/// The default inference pipeline (`OPENLAYER_INFERENCE_PIPELINE_ID`).
        inference_pipeline_id: impl Into<String> => |c, v| c.inference_pipeline_id = Some(v.into()));
    setter!(/// The API base URL (`OPENLAYER_BASE_URL`), e.g. `https://api.openlayer.com/v1`.
        base_url: impl Into<String> => |c, v| c.base_url = v.into());
    setter!(/// Turns tracing off (`OPENLAYER_DISABLE_PUBLISH`): no step is recorded, no
        /// worker starts, nothing is sent. The explicit `Client` (and the
        /// `openlayer` CLI) ignores it and still sends.
        disabled: bool => |c, v| c.disabled = v);
    setter!(/// TLS certificate verification (`OPENLAYER_VERIFY_SSL=false` turns it off).
        verify_ssl: bool => |c, v| c.verify_ssl = v);
    setter!(/// Connect timeout (default 5 s).
        connect_timeout: Duration => |c, v| c.connect_timeout = v);
    setter!(/// Whole-request timeout (default 60 s).
        request_timeout: Duration => |c, v| c.request_timeout = v);
    setter!(/// Retries after the first attempt (default 2).
        max_retries: u32 => |c, v| c.max_retries = v);
    setter!(/// The backoff before the first retry, doubled for each later one (default
        /// 0.5 s, as the official SDKs). Tests shorten it.
        #[doc(hidden)]
        retry_base_backoff: Duration => |c, v| c.retry_base_backoff = v);
    setter!(/// Most traces waiting in the queue (default 10 000; from 1 to 2^24, a value
        /// outside taken as the nearest: the memory the queue holds is bounded by
        /// `queue_max_bytes` anyway). Row updates may take an eighth more (at least 64)
        /// when it is full, so that they stay behind their rows.
        queue_capacity: usize => |c, v| c.queue_capacity = v.clamp(1, MAX_QUEUE_CAPACITY));
    setter!(/// Most bytes of undelivered traces and rows held in memory (default 64 MiB):
        /// the queue (at most half of it), the rows waiting for a request or in flight
        /// (with their request bodies) and the spool writer's backlog share this budget,
        /// each counted by what it holds (capacities and allocator overhead included).
        /// With an OTLP endpoint alongside the data stream, the rows' share is split in
        /// two halves, one for the rows and one for the spans waiting for the OTLP
        /// endpoint, so that neither destination's trouble takes the other's room (the
        /// total stays this bound). What does not fit is spooled, or dropped and counted. The process needs a few
        /// MiB on top that do not depend on this bound (the worker's runtime and
        /// reusable buffers).
        queue_max_bytes: usize => |c, v| c.queue_max_bytes = v.max(1));
    setter!(/// Most rows in one request (default 500).
        batch_max_rows: usize => |c, v| c.batch_max_rows = v.max(1));
    setter!(/// Most bytes in one request body (default 4 MiB). A traced stream keeps at most
        /// an eighth of it as its output (see `stream::Collect`). A row larger on its own
        /// has its longest values cut (and marked) until it fits; one that cannot be made
        /// to fit is rejected and counted.
        batch_max_bytes: usize => |c, v| c.batch_max_bytes = v.max(1024));
    setter!(/// How long a batch waits for more rows (default 50 ms).
        linger: Duration => |c, v| c.linger = v);
    setter!(/// Requests in flight at once (default 4).
        max_in_flight: usize => |c, v| c.max_in_flight = v.max(1));
    setter!(/// The spool directory (`OPENLAYER_SPOOL_DIR`); no spool when unset. It is
        /// created 0700; an existing one of another user, or writable by the group or
        /// others, is used with a warning.
        spool_dir: impl Into<PathBuf> => |c, v| c.spool_dir = Some(v.into()));
    setter!(/// How the spool is used (default [`SpoolMode::Overflow`]).
        spool_mode: SpoolMode => |c, v| c.spool_mode = v);
    setter!(/// Most bytes the spool may hold; the oldest data is evicted and counted. At
        /// least 16 KiB (a smaller value is taken as that: a spool of a few bytes would
        /// make a file per row and evict every one).
        spool_max_bytes: u64 => |c, v| c.spool_max_bytes = v.max(MIN_SPOOL_BYTES));
    setter!(/// The local trace file (`OPENLAYER_TRACE_FILE`). Setting it (or the variable)
    /// asks for the local file without an API key, even without an `init` call.
    trace_file: impl Into<PathBuf> => |c, v| {
        c.trace_file = v.into();
        c.trace_file_set = true;
    });
    setter!(/// Most bytes of the local trace file (default 64 MiB): beyond it, the file is
        /// renamed to `<file>.1` (replacing an older one, with a warning; the tracer counts
        /// the lines replaced in `Stats::rotated_out`) and a new one is started. In local
        /// mode, a `Client` call whose rows exceed the bound at once, or would rotate away
        /// its own first rows, is refused with `Error::InvalidInput` (what it wrote before
        /// is kept).
        trace_file_max_bytes: u64 => |c, v| c.trace_file_max_bytes = v.max(1024));
    setter!(/// Most steps one trace records (default 10 000); later ones are not recorded
        /// but counted (`Stats::steps_dropped`), and the root gets the metadata (and
        /// column) `stepsDropped`. What runs inside a step not recorded is not recorded
        /// either: its output, its metadata and the steps it makes (also counted) are
        /// dropped rather than put on its parent; updates of the trace (row columns,
        /// inference id) still apply. Reading a local file back (`LocalLines`, `openlayer
        /// show` and `push`) refuses a line nested more than 100,000 levels deep, about
        /// 50,000 steps each inside the one before. At most 2^32 - 3 (a larger value is
        /// taken as that).
        max_steps_per_trace: usize => |c, v| c.max_steps_per_trace = v.clamp(1, MAX_STEPS_PER_TRACE));
    setter!(/// How long a trace may stay open (its root, or work spawned in it, not ended)
        /// before a rate-limited warning names it (default 10 min); `Stats` shows the
        /// open traces and the age of the oldest.
        open_trace_warn_after: Duration => |c, v| c.open_trace_warn_after = v);
    setter!(/// Deadline of the flush that dropping the [`Guard`](crate::Guard) performs (default 5 s).
        shutdown_timeout: Duration => |c, v| c.shutdown_timeout = v);
    setter!(/// Most bytes of one string or array element count per field; longer values are
        /// truncated with a marker instead of dropping the trace. With an OTLP endpoint,
        /// it also bounds each string attribute of a span (and a span's status message),
        /// cut at a character boundary and marked `…[truncated N bytes]`; unset, those
        /// are cut at 1 MiB.
        field_budget: usize => |c, v| c.field_budget = Some(v));

    /// The fraction of traces kept, in `[0, 1]`, decided deterministically on the
    /// inference id (the same id is always kept or always dropped).
    pub fn sample_rate(mut self, rate: f64) -> Self {
        if !(0.0..=1.0).contains(&rate) {
            self.error = Some(Error::Config(format!(
                "sample_rate must be in [0, 1], got {rate}"
            )));
        } else {
            self.config.sample_rate = rate;
        }
        self
    }

    /// Sends completed traces as OTLP/HTTP protobuf spans to `url`
    /// (`OPENLAYER_OTLP_ENDPOINT`), in addition to the data-stream API (or instead of it,
    /// see [`ConfigBuilder::otlp_only`]). `url` is a base such as
    /// `http://localhost:4318` (an OpenTelemetry Collector), to which `/v1/traces` is
    /// appended, or a URL ending in `/v1/traces`. An endpoint below the configured base
    /// URL, such as Openlayer's own `https://api.openlayer.com/v1/otel`, also gets the
    /// headers `Authorization: Bearer <API key>` and `x-bt-parent: pipeline_id:<id>`;
    /// other endpoints get only the headers given with [`ConfigBuilder::otlp_header`].
    ///
    /// ```
    /// use openlayer_trace::Config;
    /// let config = Config::builder()
    ///     .otlp_endpoint("http://127.0.0.1:4318")
    ///     .otlp_header("x-tenant", "a")
    ///     .otlp_only(true)
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// ```
    #[cfg(feature = "otlp")]
    pub fn otlp_endpoint(mut self, url: impl Into<String>) -> Self {
        self.config.otlp.endpoint = Some(url.into().trim().to_string());
        self
    }

    /// Adds a header to every OTLP request (`OPENLAYER_OTLP_HEADERS`); a header of the
    /// same name given earlier (or by the environment) is replaced. Values are kept out
    /// of `Debug` output.
    #[cfg(feature = "otlp")]
    pub fn otlp_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        let headers = &mut self.config.otlp.headers;
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
        headers.push((name, value));
        self
    }

    /// Sends traces only to the OTLP endpoint, not to the data-stream API (default
    /// false). Without an API key, traces go only to the OTLP endpoint anyway.
    #[cfg(feature = "otlp")]
    pub fn otlp_only(mut self, only: bool) -> Self {
        self.config.otlp.only = only;
        self
    }

    /// A hook applied to each row before it leaves the process.
    ///
    /// ```
    /// use openlayer_trace::Config;
    /// let config = Config::builder()
    ///     .mask(|row| { row.remove("email"); })
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// ```
    pub fn mask(
        mut self,
        f: impl Fn(&mut serde_json::Map<String, serde_json::Value>) + Send + Sync + 'static,
    ) -> Self {
        self.config.mask = Some(Arc::new(f));
        self
    }

    /// A callback told about every delivery failure.
    pub fn on_failure(
        mut self,
        f: impl Fn(&crate::report::DeliveryFailure) + Send + Sync + 'static,
    ) -> Self {
        self.config.on_failure = Some(Arc::new(f));
        self
    }

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<Config, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut c = self.config;
        c.trim_ids()?;
        let base = c.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "base URL must start with http:// or https://, got {:?}",
                crate::util::text::shown_url(base)
            )));
        }
        #[cfg(feature = "otlp")]
        if let Some(endpoint) = &c.otlp.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "the OTLP endpoint must start with http:// or https://, got {:?}",
                    crate::util::text::shown_url(endpoint)
                )));
            }
            if c.mask.is_some() {
                // Never send what the mask is there to remove.
                return Err(Error::Config(
                    "a mask is not applied to OTLP spans; remove the mask or the OTLP endpoint"
                        .into(),
                ));
            }
        }
        Ok(c)
    }
}

/// Parses `k=v,k2=v2` (OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS` format): names and
/// values trimmed, values percent-decoded; entries without `=` or a name are skipped.
#[cfg(feature = "otlp")]
pub(crate) fn parse_otlp_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

#[cfg(feature = "otlp")]
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_pipeline_ids_are_trimmed_and_blank_ones_refused() {
        let c = Config::builder_without_env()
            .api_key(" key\r\n")
            .inference_pipeline_id("\tpipe ")
            .build()
            .unwrap();
        assert_eq!(c.api_key().unwrap().expose(), "key");
        assert_eq!(c.inference_pipeline_id(), Some("pipe"));
        for b in [
            Config::builder_without_env().api_key(""),
            Config::builder_without_env().api_key(" \r\n"),
            Config::builder_without_env().inference_pipeline_id(" "),
        ] {
            let e = b.build().unwrap_err();
            assert!(matches!(&e, Error::Config(m) if m.contains("empty")), "{e}");
        }
    }

    #[test]
    fn a_spool_of_a_few_bytes_is_taken_as_the_smallest() {
        for (asked, kept) in [(0, 16 * 1024), (1, 16 * 1024), (1 << 20, 1 << 20)] {
            let c = Config::builder_without_env()
                .spool_max_bytes(asked)
                .build()
                .unwrap();
            assert_eq!(c.spool_max_bytes, kept, "{asked}");
        }
    }

    #[test]
    fn truthy_values_match_the_official_sdks() {
        for v in ["true", "TRUE", "1", "on", "On"] {
            assert!(env_truthy(v), "{v}");
        }
        for v in ["false", "0", "off", "", "yes"] {
            assert!(!env_truthy(v), "{v}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = Config::builder().api_key("sk-very-secret").build().unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("sk-very-secret"), "{s}");
        assert!(s.contains("***"));
    }

    #[cfg(feature = "otlp")]
    #[test]
    fn otlp_headers_parse_like_opentelemetry() {
        let h = parse_otlp_headers(" a = 1 ,b=x%20y%3Dz,broken,=v, c=%zz");
        assert_eq!(
            h,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x y=z".to_string()),
                ("c".to_string(), "%zz".to_string()),
            ]
        );
        let c = Config::builder()
            .otlp_endpoint("http://127.0.0.1:4318")
            .otlp_header("Authorization", "Bearer secret-token")
            .otlp_header("authorization", "Bearer other")
            .build()
            .unwrap();
        assert_eq!(c.otlp.headers.len(), 1);
        let s = format!("{c:?}");
        assert!(!s.contains("secret") && !s.contains("other"), "{s}");
        let e = Config::builder().otlp_endpoint("localhost:4318").build();
        assert!(e.unwrap_err().to_string().contains("OTLP"));
        let e = Config::builder()
            .otlp_endpoint("http://127.0.0.1:4318")
            .mask(|_| {})
            .build();
        assert!(e.unwrap_err().to_string().contains("mask"));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let e = Config::builder().base_url("ftp://x").build().unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let e = Config::builder().sample_rate(1.5).build().unwrap_err();
        assert!(e.to_string().contains("sample_rate"), "{e}");
    }
}
