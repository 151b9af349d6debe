//! What user code and `#[trace]` call.

pub(crate) mod annotate;
pub(crate) mod lifecycle;
pub mod macro_support;
mod macros;
pub(crate) mod manual;
pub(crate) mod none_probe;
pub(crate) mod row_options;
pub(crate) mod row_update;
pub(crate) mod step;
#[cfg(feature = "tracing-layer")]
pub(crate) mod tracing_layer;
