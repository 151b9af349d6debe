//! What user code and `#[trace]` call.
//!
//! It owns the macro support (`__private`), the step guard and future (`step/`), updates
//! of the current trace and step and the log helpers, manual steps, row updates by
//! inference id, and the `tracing` bridge. It may import from `util/`, `error.rs`,
//! `report.rs`, `config.rs`, `record/`, `context/`, `encode/`, `runtime/` and `client/`
//! (see the map in the crate docs); nothing imports from it.

pub(crate) mod annotate;
pub(crate) mod lifecycle;
#[cfg(test)]
mod log_output_tests;
pub mod macro_support;
mod macros;
pub(crate) mod manual;
pub(crate) mod none_probe;
pub(crate) mod row_options;
pub(crate) mod row_update;
pub(crate) mod step;
#[cfg(feature = "tracing-layer")]
pub(crate) mod tracing_layer;
