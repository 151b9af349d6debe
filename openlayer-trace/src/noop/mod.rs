//! The compile-out build (the `enable` feature off): the public tracing API with the same
//! names and signatures, every function an inlined no-op that returns what a disabled SDK
//! returns. `#[trace]` leaves functions as written, so nothing here is ever on a path the
//! macro generates; the update macros expand to code that only type-checks their values.
//!
//! The data types shared by both builds (`Config`, `Error`, the reports, `StepKind`, the
//! client's configuration types) are the real ones.

pub(crate) mod annotate;
pub(crate) mod context;
pub(crate) mod lifecycle;
pub mod macro_support;
mod macros;
pub(crate) mod step;
pub mod stream;
