//! What `#[trace]` expands to. Not a public API: it may change in any release.
//!
//! This file only re-exports: the expansion names everything as `__private::...`, and the
//! files behind it (`steps`, the row options, the stream wrappers) import from each
//! other's files, never from here.

pub(crate) mod steps;

pub use crate::__ol_key as key;
pub use crate::api::annotate::Update;
pub use crate::api::row_options::{
    EarlyRowOptions, PromoteOutput, context_arg, promote_input, question_arg,
};
pub use crate::api::step::stream::expand::*;
pub use crate::api::step::{Instrumented, OutputSink, StepFinisher, StepGuard};
#[doc(hidden)]
pub use serde::Serialize as __Serialize;
pub use steps::*;
