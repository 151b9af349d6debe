//! Trace Rust LLM and ML code into the Openlayer monitoring platform.
#![warn(missing_docs)]

mod config;
mod error;
mod report;
// Used by the delivery pipeline, which builds on it.
#[allow(dead_code)]
mod transport;

pub use config::{ApiKey, Config, ConfigBuilder, FailureFn, MaskFn, SpoolMode};
pub use error::Error;
pub use report::{DeliveryFailure, DeliveryReport, DropReason, Dropped, Stats};
