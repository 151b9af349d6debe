//! [`ClientBuilder`]: a [`Client`] from the environment and explicit settings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{BulkFormat, Client};
use crate::config::Config;
use crate::error::Error;

/// Builds a [`Client`]; see [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    config: Config,
    bulk_format: BulkFormat,
    bulk_max_bytes: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("bulk_format", &self.bulk_format)
            .field("bulk_max_bytes", &self.bulk_max_bytes)
            .finish()
    }
}

impl ClientBuilder {
    pub(super) fn new(config: Config) -> ClientBuilder {
        ClientBuilder {
            config,
            bulk_format: BulkFormat::default(),
            bulk_max_bytes: Client::BULK_MAX_BYTES,
        }
    }

    /// Starts over from `config` (the environment and earlier settings are dropped).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// The API key (trimmed; a blank one is an [`Error::Config`] at `build`). Without one,
    /// the client runs in local mode when a trace file is named (`trace_file`, or
    /// `OPENLAYER_TRACE_FILE`), and `build` fails with [`Error::Config`] otherwise.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(crate::config::ApiKey::new(key));
        self
    }
    /// The API base URL, e.g. `https://api.openlayer.com/v1`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.config.base_url = url.into();
        self
    }
    /// The default inference pipeline id.
    pub fn inference_pipeline_id(mut self, id: impl Into<String>) -> Self {
        self.config.inference_pipeline_id = Some(id.into());
        self
    }
    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }
    /// Whole-request timeout (default 60 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }
    /// Retries after the first attempt (default 2).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.config.max_retries = retries;
        self
    }
    /// TLS certificate verification (default on).
    pub fn verify_ssl(mut self, verify: bool) -> Self {
        self.config.verify_ssl = verify;
        self
    }
    /// The local file that local mode writes to; without an API key, naming it is what
    /// asks for local mode.
    pub fn trace_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.trace_file = path.into();
        self.config.trace_file_set = true;
        self
    }
    /// Most rows in one local-file line of a bulk publish (default 500).
    pub fn batch_max_rows(mut self, rows: usize) -> Self {
        self.config.batch_max_rows = rows.max(1);
        self
    }

    /// How [`Client::publish_batch`] and [`Client::update_batch`] upload JSON rows
    /// (default: [`BulkFormat::Arrow`] with the `arrow` feature, else CSV).
    pub fn bulk_format(mut self, format: BulkFormat) -> Self {
        self.bulk_format = format;
        self
    }
    /// The size at which a bulk upload is closed and the next one started (default
    /// [`Client::BULK_MAX_BYTES`]), in either format. An upload can exceed it by one chunk
    /// of rows (Arrow) or one row (CSV). The uploads of a call are registered one after
    /// the other.
    pub fn bulk_max_bytes(mut self, bytes: usize) -> Self {
        self.bulk_max_bytes = bytes.max(1);
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(mut self) -> Result<Client, Error> {
        self.config.trim_ids()?;
        let base = self.config.base_url.trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "base URL must start with http:// or https://, got {base:?}"
            )));
        }
        Client::with_bulk(&self.config, self.bulk_format, self.bulk_max_bytes)
    }
}
