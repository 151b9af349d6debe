//! Trace Rust LLM and ML code into the Openlayer monitoring platform.
//!
//! ```
//! use openlayer_trace::{trace, update_current_trace};
//!
//! #[trace]
//! fn retrieve(question: &str) -> Vec<String> {
//!     vec!["Paris is the capital of France.".to_string()]
//! }
//!
//! #[trace]
//! fn answer(question: &str) -> String {
//!     update_current_trace!(inference_id = "req-1", user_id = "u-42");
//!     let docs = retrieve(question);
//!     format!("{} (from {} documents)", "Paris", docs.len())
//! }
//!
//! answer("What is the capital of France?");
//! ```
//!
//! # Features
//!
//! - `enable` (default): tracing. Without it, `#[trace]` leaves functions as written and
//!   every tracing function is an inlined no-op with the same name and signature (the
//!   `noop/` folder), and the crate has no HTTP, TLS or runtime dependency: libraries
//!   depend on it with `default-features = false` and the application decides.
//! - `client` (default): the explicit data API ([`Client`] and its uploads), absent
//!   without it. `arrow` (default) adds the Arrow flows. Both turn `enable` on (the
//!   client shares its HTTP stack).
//! - `tokio`: [`spawn`] without `enable`. `test-util`: the `testing` captures.
//!   `tracing-layer`: `tracing_layer()`. `otlp`: the OTLP/HTTP exporter
//!   (`Config::builder().otlp_endpoint(..)`). These last three turn `enable` on too.
//!
//! The integration crates (`openlayer-trace-tower`, `openlayer-trace-openai`) ask for
//! `enable` only: add `client` (or the defaults) yourself to use [`Client`].
//!
//! # The map of the crate
//!
//! A traced call records into memory and hands the completed trace down one seam; the
//! tree building, JSON encoding and I/O happen on the background worker:
//!
//! ```text
//!  user code, #[trace]
//!        │
//!   api/ ─────────► context/ ──────► record/ ── TraceSink ──┐   (the application's threads)
//!   (macro support,   (position,       (steps, traces,        │
//!    step guards,      propagation)     buffer pool)          │
//!    updates)                                                 ▼
//!                     export/ (queue, budget) ──► encode/ (rows, policy, framing)
//!                        │                                    (the worker thread)
//!                        ├──► export/local_file/  (no API key: the local trace file)
//!                        └──► export/openlayer/ ──► transport/ (HTTP) ──► Openlayer
//!                                   │
//!                                   └──► export/spool/ (the disk, when configured)
//!
//!   runtime/: the composition root (global state, lazy start, init, Guard, flush, stats)
//!   client/:  the explicit data API, on transport/
//!   noop/:    the same public API as inlined no-ops, when `enable` is off
//! ```
//!
//! Each folder imports only from the folders its row names (and from itself); the test
//! `tests/tests/layering.rs` reads this table and fails on any other import, and on any
//! import cycle between files:
//!
//! | module | may import from |
//! | --- | --- |
//! | `util/` | - |
//! | `error.rs` | - |
//! | `report.rs` | `util/` |
//! | `config.rs` | `util/`, `error.rs`, `report.rs` |
//! | `record/` | `util/` |
//! | `context/` | `util/`, `record/` |
//! | `encode/` | `util/`, `record/`, `config.rs`, `report.rs` |
//! | `transport/` | `util/`, `error.rs`, `config.rs` |
//! | `export/` | `util/`, `error.rs`, `report.rs`, `config.rs`, `record/`, `encode/`, `transport/` |
//! | `runtime/` | `util/`, `error.rs`, `report.rs`, `config.rs`, `record/`, `encode/`, `export/`, `transport/` |
//! | `client/` | `util/`, `error.rs`, `config.rs`, `encode/`, `export/`, `transport/` |
//! | `api/` | `util/`, `error.rs`, `report.rs`, `config.rs`, `record/`, `context/`, `encode/`, `runtime/`, `client/` |
//! | `noop/` | `error.rs`, `report.rs`, `config.rs`, `record/`, `client/` |
//! | `testing.rs` | `util/`, `config.rs`, `record/`, `context/`, `encode/`, `export/` |
//!
//! `lib.rs` itself only declares the modules and re-exports the public API.
#![warn(missing_docs)]
// Without `client`, the docs of the configuration types still name the `Client` methods
// that take them.
#![cfg_attr(not(feature = "client"), allow(rustdoc::broken_intra_doc_links))]

// Lets `#[trace]`'s expansion (`::openlayer_trace::...`) resolve inside this crate too.
extern crate self as openlayer_trace;

#[cfg(feature = "enable")]
mod api;
#[cfg(feature = "client")]
mod client;
// Without `client`: only its data types (the configurations, shared with the tracing API),
// never a `Client` that would silently send nothing.
#[cfg(not(feature = "client"))]
#[allow(dead_code)] // helpers only the client calls
mod client {
    mod configs;
    mod types;
    #[cfg(feature = "enable")]
    pub(crate) use configs::check_row_update;
    pub use configs::{
        LlmConfig, PromptMessage, RawStreamConfig, RowUpdateConfig, StreamConfig,
        TabularClassificationConfig, TabularRegressionConfig, TextClassificationConfig,
        stream_config_from_json,
    };
    pub use types::{InferencePipeline, Project, TaskType};
}
#[cfg_attr(not(feature = "enable"), allow(dead_code))] // the pipeline's fields
mod config;
#[cfg(feature = "enable")]
mod context;
#[cfg(feature = "enable")]
mod encode;
mod error;
#[cfg(feature = "enable")]
mod export;
#[cfg(not(feature = "enable"))]
mod noop;
#[cfg(feature = "enable")]
mod record;
#[cfg(not(feature = "enable"))]
#[allow(dead_code)] // the step kinds' wire fields
mod record {
    pub(crate) mod kind;
}
mod report;
#[cfg(feature = "enable")]
mod runtime;
#[cfg(feature = "enable")]
mod transport;
#[cfg(feature = "enable")]
mod util;
#[cfg(not(feature = "enable"))]
#[allow(dead_code)] // what only tracing uses
mod util {
    pub(crate) mod id;
    pub(crate) mod limits;
    pub(crate) mod text;
}

#[cfg(feature = "enable")]
#[doc(hidden)]
pub use api::macro_support as __private;
#[cfg(not(feature = "enable"))]
#[doc(hidden)]
pub use noop::macro_support as __private;

#[cfg(all(feature = "enable", any(test, feature = "test-util")))]
pub mod testing;

/// Hooks for the SDK's own tests (`test-util`). Not a public API.
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod __test_hooks {
    /// Makes the HTTP clients built from now on resolve names through a lookup that never
    /// ends and blocks a thread, as a hung `getaddrinfo` does.
    pub fn hang_name_resolution(on: bool) {
        crate::transport::HANG_NAME_RESOLUTION.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Internals measured by the benchmarks' floor group. Not a public API.
#[cfg(feature = "enable")]
#[doc(hidden)]
pub mod __bench {
    /// A trace's state lock around a counter, for the lock benchmark.
    #[derive(Debug)]
    pub struct StateLockCounter(crate::record::lock::StateLock<u64>);

    impl StateLockCounter {
        /// A counter at zero.
        pub const fn new() -> Self {
            StateLockCounter(crate::record::lock::StateLock::new(0))
        }

        /// Takes the lock, adds one, releases it.
        #[inline]
        pub fn bump(&self) {
            *self.0.lock() += 1;
        }

        /// The count.
        pub fn get(&self) -> u64 {
            *self.0.lock()
        }
    }

    impl Default for StateLockCounter {
        fn default() -> Self {
            Self::new()
        }
    }

    /// The 128 random bits of a new step id, as drawn on the hot path.
    #[inline]
    pub fn step_id() -> u128 {
        crate::util::id::next_id()
    }

    /// A step's clock reading (monotonic nanoseconds).
    #[inline]
    pub fn clock_now() -> i64 {
        crate::util::clock::now()
    }

    /// Serializes `value` as a step records it (into a reused buffer).
    #[inline]
    pub fn record_json<T: serde::Serialize + ?Sized>(buf: &mut String, value: &T) {
        buf.clear();
        let _ = crate::record::write_json(buf, value);
    }
}

pub use openlayer_trace_macros::trace;

#[cfg(feature = "enable")]
pub use api::annotate::{
    current_inference_id, log_context, log_ground_truth, log_output, log_question,
    update_current_step, update_current_trace,
};
#[cfg(feature = "enable")]
pub use api::lifecycle::{init, init_from_env, is_recording};
#[cfg(feature = "enable")]
pub use api::macro_support::InputWriter;
#[cfg(feature = "enable")]
pub use api::manual::{ChatCompletion, add_chat_completion_step};
#[cfg(feature = "enable")]
pub use api::row_update::{update_row, update_row_in};
#[cfg(feature = "enable")]
pub use api::step::handle::{EnteredStep, StepHandle};
#[cfg(feature = "enable")]
pub use api::step::stream;
#[cfg(feature = "enable")]
pub use api::step::stream::{TraceIteratorExt, TraceStreamExt, Traced};
#[cfg(feature = "enable")]
pub use api::step::text_inputs::TextInputs;
#[cfg(feature = "enable")]
pub use api::step::{Instrumented, OutputSink, StepBuilder, StepFinisher, StepGuard, step};
#[cfg(feature = "tracing-layer")]
pub use api::tracing_layer::{TracingLayer, tracing_layer};
#[cfg(feature = "client")]
pub use client::{BulkFormat, Client, ClientBuilder};
#[cfg(feature = "arrow")]
pub use client::{
    BulkSummary, IntoRecordBatch, RowSchema, arrow_array, arrow_schema, record_batch_to_rows,
};
pub use client::{
    InferencePipeline, LlmConfig, Project, PromptMessage, RawStreamConfig, RowUpdateConfig,
    StreamConfig, TabularClassificationConfig, TabularRegressionConfig, TaskType,
    TextClassificationConfig, stream_config_from_json,
};
pub use config::{
    ApiKey, Config, ConfigBuilder, DEFAULT_TRACE_FILE, DEFAULT_TRACE_FILE_MAX_BYTES, FailureFn,
    MaskFn, SpoolMode,
};
#[cfg(feature = "enable")]
pub use context::session::{
    UserSession, UserSessionGuard, WithUserSession, enter_user_session, with_user_session,
};
#[cfg(feature = "enable")]
pub use context::{
    AttachGuard, FutureExt, TraceContext, WithTrace, current_context, spawn, thread,
};
// The local trace file (written only with `enable`) and its readers.
#[cfg(feature = "enable")]
pub use encode::tree_view::format_trace_tree;
pub use error::Error;
#[cfg(feature = "enable")]
pub use export::local_file::{LocalEntry, LocalLine, LocalLines, read_local_file};
pub use record::kind::{StepKind, UnknownKind};
pub use report::{DeliveryFailure, DeliveryReport, DropReason, Dropped, Stats};
#[cfg(feature = "enable")]
pub use runtime::{Guard, flush, flush_async, stats};
pub use util::id::inference_id_for;

// Without `enable`: the same names, as inlined no-ops.
#[cfg(not(feature = "enable"))]
pub use noop::annotate::{
    ChatCompletion, add_chat_completion_step, current_inference_id, log_context, log_ground_truth,
    log_output, log_question, update_current_step, update_current_trace, update_row, update_row_in,
};
#[cfg(all(not(feature = "enable"), feature = "tokio"))]
pub use noop::context::spawn;
#[cfg(not(feature = "enable"))]
pub use noop::context::{
    AttachGuard, FutureExt, TraceContext, UserSession, UserSessionGuard, WithTrace,
    WithUserSession, current_context, enter_user_session, thread, with_user_session,
};
#[cfg(not(feature = "enable"))]
pub use noop::lifecycle::{Guard, flush, flush_async, init, init_from_env, is_recording, stats};
#[cfg(not(feature = "enable"))]
pub use noop::step::{
    EnteredStep, InputWriter, Instrumented, OutputSink, StepBuilder, StepFinisher, StepGuard,
    StepHandle, TextInputs, step,
};
#[cfg(not(feature = "enable"))]
pub use noop::stream;
#[cfg(not(feature = "enable"))]
pub use noop::stream::{TraceIteratorExt, TraceStreamExt, Traced};
