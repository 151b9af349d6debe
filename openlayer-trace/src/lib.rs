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
//! | `testing.rs` | `util/`, `config.rs`, `record/`, `context/`, `encode/`, `export/` |
//!
//! `lib.rs` itself only declares the modules and re-exports the public API.
#![warn(missing_docs)]

// Lets `#[trace]`'s expansion (`::openlayer_trace::...`) resolve inside this crate too.
extern crate self as openlayer_trace;

mod api;
mod client;
mod config;
mod context;
mod encode;
mod error;
mod export;
mod record;
mod report;
mod runtime;
mod transport;
mod util;

#[doc(hidden)]
pub use api::macro_support as __private;

#[cfg(any(test, feature = "test-util"))]
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

pub use api::annotate::{
    current_inference_id, log_context, log_ground_truth, log_output, log_question,
    update_current_step, update_current_trace,
};
pub use api::lifecycle::{init, init_from_env};
pub use api::manual::{ChatCompletion, add_chat_completion_step};
pub use api::row_update::{update_row, update_row_in};
pub use api::step::handle::{EnteredStep, StepHandle};
pub use api::step::stream;
pub use api::step::stream::{TraceIteratorExt, TraceStreamExt, Traced};
pub use api::step::{Instrumented, OutputSink, StepBuilder, StepFinisher, StepGuard, step};
#[cfg(feature = "tracing-layer")]
pub use api::tracing_layer::{TracingLayer, tracing_layer};
pub use client::{
    BulkFormat, Client, ClientBuilder, InferencePipeline, LlmConfig, Project, PromptMessage,
    RawStreamConfig, RowUpdateConfig, StreamConfig, TabularClassificationConfig,
    TabularRegressionConfig, TaskType, TextClassificationConfig, stream_config_from_json,
};
#[cfg(feature = "arrow")]
pub use client::{
    BulkSummary, IntoRecordBatch, RowSchema, arrow_array, arrow_schema, record_batch_to_rows,
};
pub use config::{
    ApiKey, Config, ConfigBuilder, DEFAULT_TRACE_FILE, DEFAULT_TRACE_FILE_MAX_BYTES, FailureFn,
    MaskFn, SpoolMode,
};
pub use context::session::{
    UserSession, UserSessionGuard, WithUserSession, enter_user_session, with_user_session,
};
pub use context::{
    AttachGuard, FutureExt, TraceContext, WithTrace, current_context, spawn, thread,
};
pub use encode::tree_view::format_trace_tree;
pub use error::Error;
pub use export::local_file::{LocalEntry, LocalLine, LocalLines, read_local_file};
pub use record::kind::{StepKind, UnknownKind};
pub use report::{DeliveryFailure, DeliveryReport, DropReason, Dropped, Stats};
pub use runtime::{Guard, flush, flush_async, stats};
pub use util::id::inference_id_for;
