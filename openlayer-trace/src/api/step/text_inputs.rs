//! Inputs made of text, copied as they are on the application's thread and encoded to
//! JSON by the worker; see [`StepBuilder::start_with_text_inputs`].

use serde_json::value::RawValue;

use crate::api::step::StepBuilder;
use crate::api::step::handle::StepHandle;
use crate::util::text_inputs::{MARK, push_entry};

/// Writes a step's inputs when they are text: string fields, objects of them, and JSON
/// texts already made; see [`StepBuilder::start_with_text_inputs`]. The step's inputs are
/// the JSON object of the fields, in the order they were written.
#[derive(Debug)]
pub struct TextInputs {
    buf: String,
    /// Where the fields of the object being written start.
    open: usize,
}

impl TextInputs {
    /// Records the field `name` with the string `value` (both any text).
    #[inline]
    pub fn field(&mut self, name: &str, value: &str) {
        push_entry(&mut self.buf, b's', name, Some(value));
    }

    /// Records the field `name` with a JSON value (a request body that was JSON, for
    /// example), as it is, except what JSON parsers refuse: a lone surrogate escape is
    /// replaced by `\ufffd`, and a number beyond `f64`'s range (`1e400`) is recorded as
    /// `null`.
    #[inline]
    pub fn json(&mut self, name: &str, value: &RawValue) {
        let text = crate::util::json::sanitized_raw(value.get());
        push_entry(&mut self.buf, b'j', name, Some(&text));
    }

    /// Records the field `name` with an object whose fields `fields` writes with this same
    /// writer. When `fields` writes no field, nothing is recorded, not even `name`.
    pub fn object(&mut self, name: &str, fields: impl FnOnce(&mut TextInputs)) {
        let mark = self.buf.len();
        push_entry(&mut self.buf, b'o', name, None);
        let outer = std::mem::replace(&mut self.open, self.buf.len());
        fields(self);
        if self.buf.len() == self.open {
            self.buf.truncate(mark);
        } else {
            self.buf.push('e');
        }
        self.open = outer;
    }
}

impl StepBuilder {
    /// Opens the step like [`start`](Self::start), with inputs that are text: string
    /// fields (and objects of them) are copied as they are, and encoded to JSON later, by
    /// the worker that delivers the trace, rather than here. This is the cheapest way to
    /// record inputs on a hot path such as a web request's (the method, the path, some
    /// headers); `inputs` runs only when the step is recorded. The recorded inputs are the
    /// JSON object of the fields written (none: no inputs), as
    /// [`start_with_inputs`](Self::start_with_inputs) would record them.
    ///
    /// ```
    /// let h = openlayer_trace::step("GET /items/{id}").start_with_text_inputs(|w| {
    ///     w.field("method", "GET");
    ///     w.field("path", "/items/42");
    ///     w.object("headers", |w| w.field("user-agent", "curl/8"));
    /// });
    /// h.finish(); // inputs {"method":"GET","path":"/items/42","headers":{"user-agent":"curl/8"}}
    /// ```
    pub fn start_with_text_inputs(self, inputs: impl FnOnce(&mut TextInputs)) -> StepHandle {
        let open = self.open_with(|buf| {
            let mut w = TextInputs {
                buf: std::mem::take(buf),
                open: 0,
            };
            w.buf.push(MARK);
            w.open = w.buf.len();
            inputs(&mut w);
            if w.buf.len() == w.open {
                // No field: no inputs.
                w.buf.clear();
            }
            *buf = w.buf;
        });
        StepHandle::from_open(open)
    }
}
