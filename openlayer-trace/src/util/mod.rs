//! The bottom layer: the clock, ids, the JSON writer, the form of inputs kept as text,
//! diagnostics, heap accounting, the bounds on open traces, the queue to the worker, the
//! one-shot signal, panics in the application's code, and cutting text. It imports
//! nothing else from the crate.

pub(crate) mod clock;
pub(crate) mod diag;
pub(crate) mod heap;
pub(crate) mod id;
pub(crate) mod json;
pub(crate) mod limits;
pub(crate) mod open_traces;
pub(crate) mod panic;
pub(crate) mod queue;
pub(crate) mod reentry;
pub(crate) mod signal;
pub(crate) mod text;
pub(crate) mod text_inputs;
