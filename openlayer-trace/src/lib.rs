//! Trace Rust LLM and ML code into the Openlayer monitoring platform.
#![warn(missing_docs)]

mod client;
mod config;
mod error;
mod localfile;
mod report;
// Used by the delivery pipeline, which builds on it.
#[allow(dead_code)]
mod transport;

pub use client::{
    Client, ClientBuilder, InferencePipeline, LlmConfig, Project, PromptMessage, RawStreamConfig,
    RowUpdateConfig, StreamConfig, TabularClassificationConfig, TabularRegressionConfig, TaskType,
    TextClassificationConfig, stream_config_from_json,
};
pub use config::{ApiKey, Config, ConfigBuilder, FailureFn, MaskFn, SpoolMode};
pub use error::Error;
pub use localfile::{LocalEntry, LocalLine, LocalLines, read_local_file};
pub use report::{DeliveryFailure, DeliveryReport, DropReason, Dropped, Stats};
