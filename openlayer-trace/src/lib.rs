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
#![warn(missing_docs)]

// Lets `#[trace]`'s expansion (`::openlayer_trace::...`) resolve inside this crate too.
extern crate self as openlayer_trace;

mod client;
mod clock;
mod config;
mod context;
mod diag;
mod error;
mod filesink;
mod flusher;
mod id;
mod json;
mod kind;
mod localfile;
mod manual;
mod none;
mod pipeline;
mod record;
mod report;
mod rowupdate;
mod shape;
mod spool;
mod step;
mod transport;
mod tree;
mod update;
mod wire;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

/// Internals measured by the benchmarks' floor group. Not a public API.
#[doc(hidden)]
pub mod __bench {
    /// The 128 random bits of a new step id, as drawn on the hot path.
    #[inline]
    pub fn step_id() -> u128 {
        crate::id::next_id()
    }

    /// A step's clock reading (monotonic nanoseconds).
    #[inline]
    pub fn clock_now() -> i64 {
        crate::clock::now()
    }

    /// Serializes `value` as a step records it (into a reused buffer).
    #[inline]
    pub fn record_json<T: serde::Serialize + ?Sized>(buf: &mut String, value: &T) {
        buf.clear();
        let _ = crate::record::write_json(buf, value);
    }
}

pub use openlayer_trace_macros::trace;

pub use client::{
    BulkFormat, Client, ClientBuilder, InferencePipeline, LlmConfig, Project, PromptMessage,
    RawStreamConfig, RowUpdateConfig, StreamConfig, TabularClassificationConfig,
    TabularRegressionConfig, TaskType, TextClassificationConfig, stream_config_from_json,
};
#[cfg(feature = "arrow")]
pub use client::{
    BulkSummary, IntoRecordBatch, RowSchema, arrow_array, arrow_schema, record_batch_to_rows,
};
pub use config::{ApiKey, Config, ConfigBuilder, FailureFn, MaskFn, SpoolMode};
pub use context::{
    AttachGuard, FutureExt, TraceContext, WithTrace, current_context, spawn, thread,
};
pub use error::Error;
pub use id::inference_id_for;
pub use kind::{StepKind, UnknownKind};
pub use localfile::{LocalEntry, LocalLine, LocalLines, read_local_file};
pub use manual::{ChatCompletion, add_chat_completion_step};
pub use pipeline::{Guard, flush, flush_async, init, init_from_env, stats};
pub use report::{DeliveryFailure, DeliveryReport, DropReason, Dropped, Stats};
pub use rowupdate::{update_row, update_row_in};
pub use step::{Instrumented, OutputSink, StepBuilder, StepFinisher, StepGuard, step};
pub use tree::format_trace_tree;
pub use update::{
    current_inference_id, log_context, log_ground_truth, log_output, log_question,
    update_current_step, update_current_trace,
};
