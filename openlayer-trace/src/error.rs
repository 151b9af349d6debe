//! The one error type of the explicit APIs (`flush`, `init`, the client, updates).
//!
//! Tracing paths (`#[trace]`, `update_current_*`) never return errors into user code:
//! they log through `tracing` (target `openlayer_trace`) and count what they could not do.

use std::time::Duration;

/// Everything that can go wrong in an explicit call of this crate.
///
/// ```
/// use openlayer_trace::Error;
/// let e = Error::InvalidInput("row has no `output` column".into());
/// assert_eq!(e.to_string(), "invalid input: row has no `output` column");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (a bad URL, a missing pipeline id, ...).
    #[error("configuration error: {0}")]
    Config(String),

    /// The caller's input was rejected before anything was sent.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The platform answered with a non-success status.
    ///
    /// `request` names the method and path (never the API key).
    #[error("{request} failed with HTTP {status}: {message}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// The server's message, from its JSON `error`/`message` field or the raw body.
        message: String,
        /// The request that failed, as `METHOD /path?query`.
        request: String,
        /// How long the server asked to wait before another try (its `Retry-After`),
        /// when it said. A wait longer than the client's own (60 s) is not waited out in
        /// the call: the error is returned at once, and this says when to try again.
        retry_after: Option<std::time::Duration>,
    },

    /// The request could not be completed (connection refused, reset, timeout, TLS, ...).
    #[error("{request} failed: {message}")]
    Transport {
        /// What went wrong.
        message: String,
        /// The request that failed, as `METHOD /path?query`.
        request: String,
        /// Whether it was a timeout.
        timeout: bool,
    },

    /// A deadline passed before the operation finished.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// The background flusher has shut down.
    #[error("the trace pipeline has shut down")]
    Shutdown,

    /// A local file could not be read or written.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// A bulk call failed after some of its uploads were registered: `rows_sent` rows are
    /// in the platform, the rest are not (the first `rows_sent` of the input, except for
    /// `update_batch`, whose uploads group rows by their set of keys: there they are the
    /// rows of the sets merged, and a merge can be sent again whole), except that an append whose registration failed
    /// with a server error or a lost answer (not sent again, so as not to append its rows
    /// twice) may have been registered all the same.
    #[error("{source} (after {rows_sent} row(s) in {uploads} upload(s) had been registered)")]
    BulkPartial {
        /// Rows registered before the failure (in local mode: appended to the local
        /// file).
        rows_sent: u64,
        /// Uploads registered before the failure (0 in local mode).
        uploads: u32,
        /// What failed.
        source: Box<Error>,
    },

    /// A bulk append was uploaded, but its registration (`POST .../data`) failed in a way
    /// that the platform may have acted on all the same (a server error, a timeout, a
    /// connection lost after the request was sent). It is not sent again, so as not to
    /// append its rows twice: the `rows` rows of that upload may be in the pipeline, or
    /// not. (Inside [`Error::BulkPartial`] when uploads before it were registered.)
    #[error("{source} (the {rows} row(s) of this upload may have been appended all the same)")]
    AppendUncertain {
        /// The rows of the upload whose registration is uncertain.
        rows: u64,
        /// What failed.
        source: Box<Error>,
    },

    /// JSON could not be encoded or decoded.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}
