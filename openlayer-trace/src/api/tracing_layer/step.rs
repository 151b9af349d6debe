//! The step of a selected span: what the layer keeps in the span's extensions, and how the
//! span's fields land on the step.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::fields::{FieldValue, is_attribute};
use super::genai;
use crate::api::step::handle::StepHandle;
use crate::record::kind::StepKind;

/// What the layer keeps in a selected span's extensions: small, since it is moved into and
/// out of them for every span; what only model calls and failures gather is boxed.
pub(super) struct SpanStep {
    pub(super) handle: StepHandle,
    kind: StepKind,
    gathered: Option<Box<Gathered>>,
    /// The message of a panic that unwound through the span while it was entered.
    pub(super) panicked: Option<Box<str>>,
}

/// What is gathered over a span's life and recorded when it closes.
#[derive(Default)]
struct Gathered {
    /// `modelParameters`, from `gen_ai.request.*`.
    params: Map<String, Value>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
    response_model: bool,
    system: Option<String>,
    input_messages: Option<String>,
    error_type: Option<String>,
    error_message: Option<String>,
    status_error: bool,
    /// `otel.status_description`: the error's text when the status is an error.
    status_description: Option<String>,
}

impl SpanStep {
    pub(super) fn new(handle: StepHandle, kind: StepKind) -> Self {
        SpanStep {
            handle,
            kind,
            gathered: None,
            panicked: None,
        }
    }

    fn gathered(&mut self) -> &mut Gathered {
        self.gathered.get_or_insert_with(Box::default)
    }

    /// The error text of `#[instrument(err)]`, recorded when the span closes.
    pub(super) fn set_error_message(&mut self, text: String) {
        self.gathered().error_message = Some(text);
    }

    /// Applies one field of the span. `at_start`: a plain field set when the span was
    /// created is an input (already recorded), later it is metadata.
    pub(super) fn apply(&mut self, key: &'static str, value: FieldValue, at_start: bool) {
        match key {
            // Read when the span was created (`on_new_span`); recorded later (declared
            // `Empty`, as tracing-opentelemetry allows), they rename the step and give a
            // plain step its kind.
            "otel.name" if !at_start => {
                let name = value.text();
                with_record(&self.handle, |rec| rec.name = Cow::Owned(name));
            }
            "gen_ai.operation.name" | "openinference.span.kind"
                if !at_start && self.kind == StepKind::UserCall =>
            {
                let text = value.text();
                let kind = if key == "gen_ai.operation.name" {
                    genai::kind_of_operation(&text)
                } else {
                    genai::kind_of_openinference(&text)
                };
                self.kind = kind;
                with_record(&self.handle, |rec| rec.set_kind(kind));
            }
            "otel.name" | "otel.kind" | "gen_ai.operation.name" | "openinference.span.kind" => {}
            "otel.status_code" => {
                self.gathered().status_error = value
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("error"))
            }
            "otel.status_description" => self.gathered().status_description = Some(value.text()),
            "error.type" | "exception.type" => self.gathered().error_type = Some(value.text()),
            "error.message" | "exception.message" => {
                self.gathered().error_message = Some(value.text())
            }
            "exception.stacktrace" => self.handle.metadata("exception.stacktrace", &value),
            "gen_ai.provider.name" | "gen_ai.system" | "llm.provider" | "llm.system" => self
                .handle
                .metadata("provider", &genai::provider_name(&value.text())),
            "gen_ai.request.model" | "llm.model_name" | "embedding.model_name" => {
                if !self.gathered.as_ref().is_some_and(|g| g.response_model) {
                    self.handle.metadata("model", &value);
                }
                if key == "llm.model_name" {
                    self.gathered().response_model = true;
                }
            }
            "gen_ai.response.model" => {
                self.gathered().response_model = true;
                self.handle.metadata("model", &value);
            }
            "gen_ai.usage.input_tokens"
            | "gen_ai.usage.prompt_tokens"
            | "llm.token_count.prompt" => self.gathered().prompt_tokens = value.as_i64(),
            "gen_ai.usage.output_tokens"
            | "gen_ai.usage.completion_tokens"
            | "llm.token_count.completion" => self.gathered().completion_tokens = value.as_i64(),
            "llm.token_count.total" => self.gathered().total_tokens = value.as_i64(),
            "gen_ai.response.time_to_first_chunk" => {
                if let Some(s) = value.as_f64() {
                    self.handle.metadata("timeToFirstToken", &(s * 1000.0));
                }
            }
            "gen_ai.system_instructions" => self.gathered().system = Some(value.text()),
            "gen_ai.input.messages" => self.gathered().input_messages = Some(value.text()),
            "gen_ai.output.messages" => self.handle.output(&genai::output_of(&value.text())),
            "input.value" => {
                let v = serde_json::from_str::<Value>(&value.text())
                    .unwrap_or(Value::String(value.text()));
                set_inputs_value(&self.handle, v);
            }
            "output.value" => {
                let text = value.text();
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) if !v.is_string() => self.handle.output(&v),
                    _ => self.handle.output(&text),
                }
            }
            "llm.invocation_parameters" => {
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&value.text()) {
                    self.gathered().params.extend(m);
                }
            }
            // OpenInference's `tool.name` and `tool.parameters` (JSON text) too.
            "gen_ai.tool.name" | "tool.name" if self.kind == StepKind::Tool => {
                self.handle.metadata("function_name", &value)
            }
            "gen_ai.tool.call.arguments" | "tool.parameters" if self.kind == StepKind::Tool => {
                let text = value.text();
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => self.handle.metadata("arguments", &v),
                    Err(_) => self.handle.metadata("arguments", &text),
                }
            }
            "gen_ai.tool.call.result" if self.kind == StepKind::Tool => self.handle.output(&value),
            "gen_ai.embeddings.dimension.count" => {
                self.handle.metadata("embeddingDimensions", &value)
            }
            _ => {
                if let Some(param) = key.strip_prefix("gen_ai.request.") {
                    let v = match &value {
                        // Lists (stop sequences) come as JSON text.
                        FieldValue::Str(s) if s.starts_with('[') => {
                            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                        }
                        other => serde_json::to_value(other).unwrap_or(Value::Null),
                    };
                    self.gathered().params.insert(param.to_string(), v);
                } else if !at_start || is_attribute(key) {
                    self.handle.metadata(key, &value);
                }
            }
        }
    }

    /// Records what was gathered over the span's life and closes the step: as panicked
    /// when a panic unwound through the span while it was entered (whenever it closes:
    /// an instrumented future is dropped after the panic of its poll was caught), else as
    /// returned (a span that closes during a panic it was not entered for, as a parent
    /// whose last child a panic drops, did not panic).
    pub(super) fn finish(mut self) {
        if let Some(g) = self.gathered.take() {
            g.record(&mut self.handle);
        }
        match self.panicked.take() {
            Some(message) => self.handle.finish_panicked(message),
            None => self.handle.finish(),
        }
    }
}

impl Gathered {
    fn record(mut self, h: &mut StepHandle) {
        if !self.params.is_empty() {
            h.metadata("model_parameters", &self.params);
        }
        if let Some(p) = self.prompt_tokens {
            h.metadata("prompt_tokens", &p);
        }
        if let Some(c) = self.completion_tokens {
            h.metadata("completion_tokens", &c);
        }
        let total = self
            .total_tokens
            .or(match (self.prompt_tokens, self.completion_tokens) {
                (None, None) => None,
                (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
            });
        if let Some(t) = total {
            h.metadata("tokens", &t);
        }
        if (self.system.is_some() || self.input_messages.is_some())
            && let Some(inputs) =
                genai::prompt_inputs(self.system.as_deref(), self.input_messages.as_deref())
        {
            set_inputs_value(h, inputs);
        }
        if let Some(d) = self.status_description.take() {
            if self.status_error {
                self.error_message.get_or_insert(d);
            } else {
                // Not an error: kept as any other attribute.
                h.metadata("otel.status_description", &d);
            }
        }
        if self.error_message.is_some() || self.error_type.is_some() || self.status_error {
            let text = match (self.error_type.take(), self.error_message.take()) {
                (Some(t), Some(m)) => format!("{t}: {m}"),
                (Some(t), None) => t,
                (None, Some(m)) => m,
                (None, None) => "error".to_string(),
            };
            h.error(&text);
        }
    }
}

/// A value recorded with `?` (as `#[instrument(ret)]` does): a string's `Debug` text
/// (quoted, with Rust's escapes such as `\u{200d}`) as that string; a number, a boolean,
/// a list or a map whose text is JSON as that JSON; anything else (a `null` included,
/// which only a `Display` text would be) as the text, and so is a text holding an integer
/// beyond `i64` and `u64` (a `u128`), which JSON numbers here would round.
pub(super) fn debug_value(v: FieldValue) -> Value {
    match v {
        FieldValue::Str(s) => {
            if s.len() >= 2
                && s.starts_with('"')
                && s.ends_with('"')
                && let Some(text) = unescape_debug(&s[1..s.len() - 1])
            {
                return Value::String(text);
            }
            match serde_json::from_str::<Value>(&s) {
                Ok(
                    v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_)),
                ) if !has_wide_integer(&s) => v,
                _ => Value::String(s),
            }
        }
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

/// Whether the JSON text `s` holds an integer (a number without a fraction or an exponent)
/// that fits neither `i64` nor `u64`.
fn has_wide_integer(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // Skips the string, escapes included.
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let n = &s[start..i];
                if !n.contains(['.', 'e', 'E'])
                    && n.parse::<i64>().is_err()
                    && n.parse::<u64>().is_err()
                {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// The string whose `Debug` text (without its quotes) is `s`: `None` when `s` is not one
/// (an unescaped quote, an unknown escape).
fn unescape_debug(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                '0' => '\0',
                '\\' => '\\',
                '"' => '"',
                '\'' => '\'',
                'u' => {
                    if chars.next()? != '{' {
                        return None;
                    }
                    let mut hex = String::new();
                    loop {
                        match chars.next()? {
                            '}' => break,
                            h if h.is_ascii_hexdigit() && hex.len() < 6 => hex.push(h),
                            _ => return None,
                        }
                    }
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                _ => return None,
            }),
            c => out.push(c),
        }
    }
    Some(out)
}

/// Runs `f` on the record of the handle's step, when recorded.
fn with_record(h: &StepHandle, f: impl FnOnce(&mut crate::record::StepRecord)) {
    let Some(open) = h.open_step() else {
        return;
    };
    let mut st = open.trace.lock();
    if let Some(rec) = st.steps.get_mut(open.idx as usize) {
        f(rec);
    }
}

/// Replaces the inputs of the handle's step.
fn set_inputs_value(h: &StepHandle, v: Value) {
    let Some(open) = h.open_step() else {
        return;
    };
    let v = match v {
        Value::Object(_) => v,
        other => {
            let mut m = Map::new();
            m.insert("input".into(), other);
            Value::Object(m)
        }
    };
    let Ok(text) = serde_json::to_string(&v) else {
        return;
    };
    let mut st = open.trace.lock();
    let Some(old) = st.steps.get(open.idx as usize).map(|rec| rec.inputs) else {
        return;
    };
    let r = st.replace_text(old, &text);
    if let Some(rec) = st.steps.get_mut(open.idx as usize) {
        rec.inputs = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_beyond_64_bits_keep_their_text() {
        let wide = (1u128 << 100).to_string();
        assert_eq!(
            debug_value(FieldValue::Str(wide.clone())),
            Value::String(wide)
        );
        let listed = format!("[1, {}]", -(1i128 << 100));
        assert_eq!(
            debug_value(FieldValue::Str(listed.clone())),
            Value::String(listed)
        );
        assert_eq!(debug_value(FieldValue::Str(u64::MAX.to_string())), u64::MAX);
        assert_eq!(debug_value(FieldValue::Str(i64::MIN.to_string())), i64::MIN);
        assert_eq!(
            debug_value(FieldValue::Str(
                r#"{"n": 1e30, "s": "1267650600228229401496703205376"}"#.into()
            )),
            serde_json::json!({"n": 1e30, "s": "1267650600228229401496703205376"})
        );
    }
}
