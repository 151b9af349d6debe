//! What `#[trace(context = .., question = .., promote(..))]` expand to: arguments and
//! output fields copied to row columns, inside the traced function's step. Not a public
//! API. Outside a trace (tracing off) each of these does nothing, silently.

use serde::Serialize;

use crate::api::annotate::{apply_trace, set_context, set_question, warn_empty_id};
use crate::api::macro_support::steps::Out;
use crate::api::step::OutputSink;
use crate::context;
use crate::record::{Json, to_json};
use crate::util::diag::warn_limited;

/// `context = arg`: as if `log_context(&arg)` were called in the step.
pub fn context_arg<T: Serialize + ?Sized>(value: &T) {
    if !context::in_trace() {
        return;
    }
    if let Some(json) = to_json(value) {
        context::with_current(|t, step| set_context(&mut t.lock(), step, json));
    }
}

/// `question = arg`: as if `log_question(&arg)` were called in the step.
pub fn question_arg<T: Serialize + ?Sized>(value: &T) {
    if !context::in_trace() {
        return;
    }
    if let Some(json) = to_json(value) {
        context::with_current(|t, step| set_question(&mut t.lock(), step, json));
    }
}

/// `promote(arg)` / `promote(arg = "column")`: the argument's value as a row column.
pub fn promote_input<T: Serialize + ?Sized>(column: &'static str, value: &T) {
    if !context::in_trace() || crate::api::none_probe::is_none(value) {
        return;
    }
    if let Some(json) = to_json(value) {
        let empty_id =
            context::with_current(|t, _| apply_trace(&mut t.lock(), column.to_string(), json));
        warn_empty_id(empty_id == Some(true));
    }
}

/// Whether a step made here would be recorded (the options are then worth taking).
fn recording() -> bool {
    context::would_record(crate::runtime::lazy_init)
}

/// `context = arg`, `question = arg` and `promote(arg)` of a function that returns a future:
/// the arguments' values taken when the function is called (as its inputs are), before its
/// own statements may move or shadow them, and applied in the step when the returned future
/// first runs.
#[derive(Default)]
pub struct EarlyRowOptions(Vec<(EarlyOption, Json)>);

enum EarlyOption {
    Context,
    Question,
    Promote(&'static str),
}

impl EarlyRowOptions {
    /// `context = arg`, at the call (nothing when nothing would be recorded here: tracing
    /// off, outside a trace and a test capture).
    pub fn context<T: Serialize + ?Sized>(&mut self, value: &T) {
        if !recording() {
            return;
        }
        if let Some(json) = to_json(value) {
            self.0.push((EarlyOption::Context, json));
        }
    }

    /// `question = arg`, at the call.
    pub fn question<T: Serialize + ?Sized>(&mut self, value: &T) {
        if !recording() {
            return;
        }
        if let Some(json) = to_json(value) {
            self.0.push((EarlyOption::Question, json));
        }
    }

    /// `promote(arg)`, at the call.
    pub fn promote<T: Serialize + ?Sized>(&mut self, column: &'static str, value: &T) {
        if !recording() || crate::api::none_probe::is_none(value) {
            return;
        }
        if let Some(json) = to_json(value) {
            self.0.push((EarlyOption::Promote(column), json));
        }
    }

    /// Applies them in the current step (nothing outside a trace).
    pub fn apply(self) {
        if self.0.is_empty() || !context::in_trace() {
            return;
        }
        let empty_id = context::with_current(|t, step| {
            let mut st = t.lock();
            let mut empty_id = false;
            for (option, json) in self.0 {
                match option {
                    EarlyOption::Context => set_context(&mut st, step, json),
                    EarlyOption::Question => set_question(&mut st, step, json),
                    EarlyOption::Promote(column) => {
                        empty_id |= apply_trace(&mut st, column.to_string(), json);
                    }
                }
            }
            empty_id
        });
        warn_empty_id(empty_id == Some(true));
    }
}

/// Copies the named fields of `value` (serialized: a struct or a map) to row columns.
fn promote_fields<T: Serialize + ?Sized>(value: &T, fields: &[(&'static str, &'static str)]) {
    if !context::in_trace() {
        return;
    }
    let serialized = crate::util::json::unpanicked(
        || serde_json::to_value(value),
        || serde::ser::Error::custom("the value's Serialize implementation panicked"),
    );
    let object = match serialized {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            warn_limited!(
                "promote: the output is not an object (a struct or a map), so it has no fields to promote"
            );
            return;
        }
    };
    let mut found = Vec::with_capacity(fields.len());
    for (field, column) in fields {
        match object.get(*field) {
            Some(v) if !v.is_null() => {
                if let Some(json) = to_json(v) {
                    found.push((*column, json));
                }
            }
            Some(_) => {}
            None => warn_limited!(field = *field, "promote: the output has no such field"),
        }
    }
    let empty_id = context::with_current(|t, _| {
        let mut st = t.lock();
        let mut empty_id = false;
        for (column, json) in found {
            empty_id |= apply_trace(&mut st, column.to_string(), json);
        }
        empty_id
    });
    warn_empty_id(empty_id == Some(true));
}

/// `promote(field)` of an output field, for a returned `Result`: the `Ok` value's fields
/// (an `Err` promotes nothing).
pub trait PromoteOutput {
    /// Promotes the fields.
    fn __ol_promote(&self, fields: &[(&'static str, &'static str)]);
}

impl<T: Serialize, E> PromoteOutput for Out<'_, Result<T, E>> {
    fn __ol_promote(&self, fields: &[(&'static str, &'static str)]) {
        if let Ok(v) = self.0 {
            promote_fields(v, fields);
        }
    }
}

impl<T: ?Sized> Out<'_, T> {
    /// `promote(field)` of an output field, for any other returned value.
    pub fn __ol_promote(self: &&Self, fields: &[(&'static str, &'static str)])
    where
        T: crate::api::macro_support::steps::Output,
    {
        struct Fields<'a>(&'a [(&'static str, &'static str)]);
        impl OutputSink for Fields<'_> {
            fn __is_recording(&self) -> bool {
                true
            }
            fn __set_output<V: Serialize + ?Sized>(&mut self, output: &V) {
                promote_fields(output, self.0);
            }
            fn __set_error(&mut self, _error: &dyn std::fmt::Display) {}
        }
        crate::api::macro_support::steps::Output::__record_into(self.0, &mut Fields(fields));
    }
}
