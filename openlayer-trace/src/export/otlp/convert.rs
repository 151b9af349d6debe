//! A completed trace as OTLP spans: one span per step, with the GenAI semantic
//! conventions' attributes on model calls and on the root (Openlayer builds a row from
//! the root span).
//!
//! Each span is filled into one reused [`Span`] message ([`Scratch`]: its strings and
//! attribute list keep their allocations from span to span) and encoded by `prost` right
//! away, as an element of `ScopeSpans.spans`, into the trace's buffer; the OTLP side
//! frames those bytes into a request (see `flusher`).

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::cut::{push_attr, push_cut};
use crate::export::otlp::proto::{
    AnyValue, KeyValue, Span, SpanKind, Status, StatusCode, any_value,
};
use crate::record::kind::StepKind;
use crate::record::{CompletedTrace, NO_PARENT, Status as StepStatus, StepRecord};
use crate::util::json::push_str as push_json_str;

/// The field number of `ScopeSpans.spans`: each span of [`Converted::encoded`] is one
/// such field.
pub(crate) const SCOPE_SPANS_SPANS: u32 = 2;

/// The most a trace's buffer allocates ahead, guessed from the trace before it.
const LEN_HINT_MAX: usize = 64 * 1024;

/// One trace's spans, on their way to a request.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The trace's own inference pipeline (`#[trace(inference_pipeline_id = ..)]`).
    pub pipeline: Option<String>,
    /// The spans, each encoded by `prost` as a `ScopeSpans.spans` field (key, length,
    /// message), back to back: a repeated field's elements concatenate on the wire.
    pub encoded: Vec<u8>,
    /// How many spans `encoded` holds.
    pub spans: usize,
    /// Their encoded size in a request (`encoded.len()`).
    pub bytes: usize,
}

/// The most bytes of one string attribute (and of a span's status message) when
/// `field_budget` is not set: longer ones are cut (see [`Scratch::attr_max`]).
pub(crate) const ATTRIBUTE_MAX_BYTES: usize = 1 << 20;

/// What conversion reuses from one span (and trace) to the next: the span message, the
/// attributes taken off it (kept with their strings' allocations), and a text buffer.
#[derive(Debug)]
pub(crate) struct Scratch {
    span: Span,
    spare: Vec<KeyValue>,
    text: String,
    /// The size of the last trace's spans: the next buffer's first guess.
    last_len: usize,
    /// The most bytes of a string attribute's value: a longer one keeps its first bytes
    /// (cut at a character boundary) and ends with a marker of what was cut,
    /// `…[truncated N bytes]`; a JSON object or list has its strings cut instead (see
    /// [`push_attr`]). The
    /// configured `field_budget` when set, else [`ATTRIBUTE_MAX_BYTES`]: one huge value
    /// cannot make a request the endpoint refuses as too large.
    attr_max: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new(ATTRIBUTE_MAX_BYTES)
    }
}

impl Scratch {
    /// A scratch whose string attributes hold at most `attr_max` bytes (see the field).
    pub(crate) fn new(attr_max: usize) -> Self {
        Scratch {
            span: Span::default(),
            spare: Vec::new(),
            text: String::new(),
            last_len: 0,
            attr_max,
        }
    }

    /// Empties the span, keeping its allocations for the next one.
    fn reset(&mut self) {
        self.spare.append(&mut self.span.attributes);
        let s = &mut self.span;
        s.trace_id.clear();
        s.span_id.clear();
        s.parent_span_id.clear();
        s.name.clear();
        s.status = None;
    }

    /// A new attribute (a reused one when there is one) named `prefix` + `key`.
    fn attr(&mut self, prefix: &str, key: &str) -> &mut KeyValue {
        let mut kv = self.spare.pop().unwrap_or_default();
        kv.key.clear();
        kv.key.push_str(prefix);
        kv.key.push_str(key);
        self.span.attributes.push(kv);
        self.span.attributes.last_mut().expect("just pushed")
    }

    /// A string attribute.
    fn string(&mut self, key: &str, value: &str) {
        self.prefixed_string("", key, value);
    }

    /// A string attribute named `prefix` + `key`, cut to `attr_max` bytes.
    fn prefixed_string(&mut self, prefix: &str, key: &str, value: &str) {
        let max = self.attr_max;
        let kv = self.attr(prefix, key);
        match &mut kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => {
                s.clear();
                push_attr(s, value, max);
            }
            v => {
                let mut s = String::new();
                push_attr(&mut s, value, max);
                *v = Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                })
            }
        }
    }

    /// A string attribute with the text in `self.text`.
    fn text_attr(&mut self, key: &str) {
        let text = std::mem::take(&mut self.text);
        self.string(key, &text);
        self.text = text;
    }

    /// An attribute of another type.
    fn other(&mut self, key: &str, value: any_value::Value) {
        self.attr("", key).value = Some(AnyValue { value: Some(value) });
    }

    /// After a trace: gives back what a large one made the reused buffers grow to (an
    /// attribute of megabytes would otherwise stay allocated for good, outside the memory
    /// budget), and keeps at most [`SPARE_MAX`] spare attributes.
    fn trim(&mut self) {
        self.spare.truncate(SPARE_MAX);
        self.spare.shrink_to(SPARE_MAX);
        self.span.attributes.shrink_to(SPARE_MAX);
        for kv in &mut self.spare {
            if kv.key.capacity() > SCRATCH_STRING_MAX {
                kv.key = String::new();
            }
            if let Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) = &mut kv.value
                && s.capacity() > SCRATCH_STRING_MAX
            {
                *s = String::new();
            }
        }
        if self.text.capacity() > SCRATCH_STRING_MAX {
            self.text = String::new();
        }
    }
}

/// The most spare attributes kept between traces (a span of many metadata keys).
const SPARE_MAX: usize = 256;

/// The largest reused string kept between traces.
const SCRATCH_STRING_MAX: usize = 64 * 1024;

/// The trace's inference id: its own, else the root step's id as a UUID (as the
/// data-stream row has it).
pub(crate) fn inference_id(trace: &CompletedTrace) -> Option<String> {
    let st = &trace.state;
    match &st.inference_id {
        Some(id) => Some(id.to_string()),
        None => trace.root().map(|r| crate::util::id::uuid_v4(r.id)),
    }
}

/// The trace id: the inference id's 16 bytes when it is a UUID, else those of a UUID v5
/// derived from it (deterministic: the same id always gives the same trace). The nil UUID
/// is derived from too: an all-zero trace id is invalid in OTLP.
pub(crate) fn trace_id(inference_id: &str) -> [u8; 16] {
    match uuid::Uuid::parse_str(inference_id) {
        Ok(u) if !u.is_nil() => *u.as_bytes(),
        _ => uuid::Uuid::parse_str(&crate::util::id::inference_id_for(inference_id))
            .map(|u| *u.as_bytes())
            .unwrap_or([1; 16]),
    }
}

/// A step's span id: 64 of its id's random bits (never all zero, which OTLP forbids).
pub(crate) fn span_id(rec: &StepRecord) -> [u8; 8] {
    let id = (rec.id as u64) | u64::from(rec.id as u64 == 0);
    id.to_be_bytes()
}

/// A JSON text as an attribute's string: a JSON string unquoted, anything else as is.
fn text_of(json: &str) -> Cow<'_, str> {
    if json.starts_with('"') {
        // Borrowed when it has no escapes.
        if let Ok(s) = serde_json::from_str::<&str>(json) {
            return Cow::Borrowed(s);
        }
        if let Ok(s) = serde_json::from_str::<String>(json) {
            return Cow::Owned(s);
        }
    }
    Cow::Borrowed(json)
}

/// A column of the trace (`user_id`, `session_id`, ...) as text.
fn column<'a>(trace: &'a CompletedTrace, key: &str) -> Option<Cow<'a, str>> {
    let v = trace.state.columns().iter().find(|(k, _)| k == key)?;
    (&*v.1 != "null").then(|| text_of(&v.1))
}

/// Appends one message, `{"role": role, "parts": [{"type": "text", "content":
/// content}]}` (and `"finish_reason"` when given); strings are escaped as `serde_json`
/// escapes them.
fn push_message(out: &mut String, role: &str, content: &str, finish_reason: Option<&str>) {
    out.push_str(r#"{"role":"#);
    push_json_str(out, role);
    out.push_str(r#","parts":[{"type":"text","content":"#);
    push_json_str(out, content);
    out.push_str("}]");
    if let Some(r) = finish_reason {
        out.push_str(r#","finish_reason":"#);
        push_json_str(out, r);
    }
    out.push('}');
}

/// A JSON value as message text: a string as is, anything else as its JSON.
fn content_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// A JSON text as message text: a string unquoted, anything else as written.
fn raw_content(v: &RawValue) -> Cow<'_, str> {
    text_of(v.get())
}

/// The top level of a step's inputs object, borrowed from its text: how many entries it
/// has, its first value and its `prompt`.
#[derive(Default)]
struct Inputs<'a> {
    len: usize,
    first: Option<&'a RawValue>,
    prompt: Option<&'a RawValue>,
}

impl<'de> serde::Deserialize<'de> for Inputs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Inputs<'de>, A::Error> {
                let mut inputs = Inputs::default();
                while let Some(IsPrompt(prompt)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    inputs.len += 1;
                    inputs.first.get_or_insert(value);
                    if prompt {
                        inputs.prompt = Some(value);
                    }
                }
                Ok(inputs)
            }
        }
        d.deserialize_map(V)
    }
}

/// An object's key: whether it is `prompt`.
struct IsPrompt(bool);

impl<'de> serde::Deserialize<'de> for IsPrompt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IsPrompt;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsPrompt, E> {
                Ok(IsPrompt(v == "prompt"))
            }
        }
        d.deserialize_str(V)
    }
}

/// A chat prompt's messages into `out`, as the GenAI conventions' input messages; false
/// (and nothing written) when it is not one. Chat Completions messages (`{role,
/// content}`; an assistant's `tool_calls` become `tool_call` parts, a `tool` message a
/// `tool_call_response`) and Responses API input items (messages, `function_call` and
/// `function_call_output` items) are both understood.
fn prompt_messages(prompt: &RawValue, out: &mut String) -> bool {
    let Ok(Value::Array(prompt)) = serde_json::from_str::<Value>(prompt.get()) else {
        return false;
    };
    let item_type = |m: &Value| m.get("type").and_then(Value::as_str).map(str::to_string);
    let known = |m: &Value| {
        m.get("role").is_some()
            || matches!(
                item_type(m).as_deref(),
                Some("function_call" | "function_call_output")
            )
    };
    if prompt.is_empty() || !prompt.iter().all(known) {
        return false;
    }
    let messages: Vec<Value> = prompt.iter().map(input_message).collect();
    out.push_str(&Value::Array(messages).to_string());
    true
}

/// One input message (see [`prompt_messages`]).
fn input_message(m: &Value) -> Value {
    let text =
        |content: &Value| serde_json::json!({"type": "text", "content": content_of(content)});
    match m.get("type").and_then(Value::as_str) {
        Some("function_call") => {
            return serde_json::json!({"role": "assistant", "parts": [tool_call_part(
                m.get("call_id"),
                m.get("name"),
                m.get("arguments"),
            )]});
        }
        Some("function_call_output") => {
            return serde_json::json!({"role": "tool", "parts": [{
                "type": "tool_call_response",
                "id": m.get("call_id").cloned().unwrap_or(Value::Null),
                "response": m.get("output").cloned().unwrap_or(Value::Null),
            }]});
        }
        _ => {}
    }
    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
    let content = m.get("content").filter(|c| !c.is_null());
    if role == "tool" {
        return serde_json::json!({"role": "tool", "parts": [{
            "type": "tool_call_response",
            "id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
            "response": content.cloned().unwrap_or(Value::Null),
        }]});
    }
    let mut parts = Vec::new();
    match content {
        Some(Value::String(s)) if s.is_empty() => {}
        Some(c) => parts.push(text(c)),
        None => {}
    }
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function");
        parts.push(tool_call_part(
            call.get("id"),
            f.and_then(|f| f.get("name")),
            f.and_then(|f| f.get("arguments")),
        ));
    }
    if parts.is_empty() {
        parts.push(text(&Value::String(String::new())));
    }
    serde_json::json!({"role": role, "parts": parts})
}

/// A `tool_call` part: its arguments as JSON when they are a JSON text, else as given.
fn tool_call_part(id: Option<&Value>, name: Option<&Value>, arguments: Option<&Value>) -> Value {
    let arguments = match arguments {
        Some(Value::String(s)) => {
            serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(other) => other.clone(),
        None => Value::Null,
    };
    let mut part = serde_json::json!({"type": "tool_call"});
    if let Some(id) = id.filter(|id| !id.is_null()) {
        part["id"] = id.clone();
    }
    part["name"] = name.cloned().unwrap_or(Value::Null);
    part["arguments"] = arguments;
    part
}

/// The input messages of a step into `out`: a chat prompt's messages (`{"prompt":
/// [{role, content}]}`), else one user message with the inputs (the only input's value
/// when there is one, else the inputs' JSON as recorded). False (and nothing written)
/// when there are none.
fn input_messages(inputs: &str, out: &mut String) -> bool {
    let Ok(fields) = serde_json::from_str::<Inputs<'_>>(inputs) else {
        return false;
    };
    if let Some(prompt) = fields.prompt
        && prompt_messages(prompt, out)
    {
        return true;
    }
    let content = match (fields.len, fields.first) {
        (1, Some(first)) => raw_content(first),
        (0, _) | (_, None) => return false,
        _ => Cow::Borrowed(inputs.trim()),
    };
    out.push('[');
    push_message(out, "user", &content, None);
    out.push(']');
    true
}

/// The output messages of a step into `out`: one assistant message with its output, whose
/// parts are `tool_call`s when a chat completion's output is the tool calls it asked for (as
/// client integrations record them: `[{"id", "name", "arguments"}]`). False (and nothing
/// written) when there is no output.
fn output_messages(
    output: &str,
    failed: bool,
    chat: bool,
    finish: Option<&str>,
    out: &mut String,
) -> bool {
    let Ok(v) = serde_json::from_str::<&RawValue>(output) else {
        return false;
    };
    if v.get() == "null" {
        return false;
    }
    if chat && !failed && tool_call_message(v, out) {
        return true;
    }
    // The model's own reason when its raw answer says (cut at its token limit, filtered),
    // else "stop".
    let reason = if failed {
        "error"
    } else {
        finish.unwrap_or("stop")
    };
    out.push('[');
    push_message(out, "assistant", &raw_content(v), Some(reason));
    out.push(']');
    true
}

/// The finish reason of a model call, in the GenAI conventions' terms, from its raw
/// answer (`rawOutput`): a chat completion's first choice's `finish_reason`, or a
/// Responses answer's `status` (with `incomplete_details.reason`). `None` when it says
/// none.
fn finish_reason(raw: Option<&str>) -> Option<&'static str> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        choices: Vec<Choice>,
        status: Option<String>,
        incomplete_details: Option<Incomplete>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        finish_reason: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Incomplete {
        reason: Option<String>,
    }
    let probe: Probe = serde_json::from_str(raw?).ok()?;
    if let Some(reason) = probe
        .choices
        .first()
        .and_then(|c| c.finish_reason.as_deref())
    {
        return Some(match reason {
            "length" => "length",
            "content_filter" => "content_filter",
            "tool_calls" | "function_call" => "tool_call",
            _ => "stop",
        });
    }
    match probe.status.as_deref()? {
        "completed" => Some("stop"),
        "incomplete" => Some(
            match probe.incomplete_details.and_then(|d| d.reason).as_deref() {
                Some("content_filter") => "content_filter",
                _ => "length",
            },
        ),
        "failed" => Some("error"),
        _ => None,
    }
}

/// `[{"role": "assistant", "parts": [{"type": "tool_call", "id", "name", "arguments"},
/// ..], "finish_reason": "tool_call"}]` when `output` is a list of tool calls (each an
/// object with a string `name` and `arguments`); false (and nothing written) otherwise.
fn tool_call_message(output: &RawValue, out: &mut String) -> bool {
    let Ok(Value::Array(calls)) = serde_json::from_str::<Value>(output.get()) else {
        return false;
    };
    let is_call =
        |c: &Value| c.get("name").is_some_and(Value::is_string) && c.get("arguments").is_some();
    if calls.is_empty() || !calls.iter().all(is_call) {
        return false;
    }
    out.push_str(r#"[{"role":"assistant","parts":["#);
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"type":"tool_call""#);
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            out.push_str(r#","id":"#);
            push_json_str(out, id);
        }
        out.push_str(r#","name":"#);
        push_json_str(out, call["name"].as_str().unwrap_or_default());
        out.push_str(r#","arguments":"#);
        out.push_str(&call["arguments"].to_string());
        out.push('}');
    }
    out.push_str(r#"],"finish_reason":"tool_call"}]"#);
    true
}

fn int_field(rec: &StepRecord, field: &str) -> Option<i64> {
    let v = rec.field(field)?.trim().parse::<f64>().ok()?;
    (v.is_finite() && v.fract() == 0.0).then_some(v as i64)
}

/// Converts a completed trace, each span encoded as it is made (see the module docs);
/// `None` for a trace without steps.
pub(crate) fn convert(
    trace: &CompletedTrace,
    inference_id: &str,
    scratch: &mut Scratch,
) -> Option<Converted> {
    let st = &trace.state;
    let root = trace.root()?;
    let trace_id = trace_id(inference_id);
    let session = column(trace, "session_id");
    let user = column(trace, "user_id");
    // A trace-level `output` (`update_current_trace!(output = ..)`) is the root span's: the
    // endpoint makes the row's output from the root span (the data stream keeps it as a
    // row column only).
    let trace_output = st
        .columns()
        .iter()
        .find(|(k, _)| k == "output")
        .map(|(_, v)| &**v);
    let root_output = if matches!(root.status, StepStatus::Ok | StepStatus::Cancelled)
        || trace_output.is_some()
    {
        trace_output.or(st.output(root))
    } else {
        None
    };
    let mut encoded = Vec::with_capacity(scratch.last_len);
    for (i, rec) in st.steps.iter().enumerate() {
        let parent = if i == 0 {
            None
        } else if rec.parent == NO_PARENT || rec.parent as usize >= st.steps.len() {
            Some(root)
        } else {
            Some(&st.steps[rec.parent as usize])
        };
        let model_call = matches!(rec.kind, StepKind::ChatCompletion | StepKind::Embedding);
        let inputs = st.inputs(rec);
        let inputs = inputs.as_deref();
        let output = if i == 0 { root_output } else { st.output(rec) };
        // Failed, or went on after an error it recorded (a stream's error item, which
        // keeps what arrived before it): either way an error for the span.
        let failed =
            matches!(rec.status, StepStatus::Error | StepStatus::Panicked) || rec.error().is_some();

        scratch.reset();
        let s = &mut *scratch;
        s.string("openlayer.inference_id", inference_id);
        s.string("openlayer.step.type", rec.kind.as_str());
        if let Some(v) = &session {
            s.string("session.id", v);
        }
        if let Some(u) = &user {
            s.string("user.id", u);
        }
        if let Some(inputs) = inputs {
            s.string("openlayer.inputs", inputs);
        }
        if let Some(output) = output {
            s.string("openlayer.output", output);
        }
        if model_call {
            let op = if rec.kind == StepKind::Embedding {
                "embeddings"
            } else {
                "chat"
            };
            s.string("gen_ai.operation.name", op);
            if let Some(p) = rec.field("provider").filter(|p| *p != "null") {
                s.string("gen_ai.provider.name", &otel_provider_name(&text_of(p)));
            }
            // The model asked for, and the one that answered (a dated version of it, say).
            if let Some(m) = rec.requested_model().filter(|m| *m != "null") {
                s.string("gen_ai.request.model", &text_of(m));
            }
            if let Some(m) = rec.field("model").filter(|m| *m != "null") {
                s.string("gen_ai.response.model", &text_of(m));
            }
            if let Some(n) = int_field(rec, "promptTokens") {
                s.other("gen_ai.usage.input_tokens", any_value::Value::IntValue(n));
            }
            if let Some(n) = int_field(rec, "completionTokens") {
                s.other("gen_ai.usage.output_tokens", any_value::Value::IntValue(n));
            }
            if let Some(c) = rec.field("cost").and_then(|c| c.trim().parse::<f64>().ok()) {
                s.other("openlayer.cost", any_value::Value::DoubleValue(c));
            }
        }
        if rec.kind == StepKind::Agent {
            s.string("gen_ai.operation.name", "invoke_agent");
            s.string("gen_ai.agent.name", &rec.name);
        }
        if rec.kind == StepKind::Tool {
            s.string("gen_ai.operation.name", "execute_tool");
            if let Some(f) = rec.field("functionName").filter(|f| *f != "null") {
                s.string("gen_ai.tool.name", &text_of(f));
            }
            // As text: a string (arguments recorded as a JSON text, a result that is a
            // string) without its JSON quotes, anything else as its JSON.
            if let Some(a) = rec.field("arguments").filter(|a| *a != "null") {
                s.string("gen_ai.tool.call.arguments", &text_of(a));
            }
            if let Some(o) = output {
                s.string("gen_ai.tool.call.result", &text_of(o));
            }
        }
        if model_call || i == 0 {
            s.text.clear();
            if let Some(inputs) = inputs
                && input_messages(inputs, &mut s.text)
            {
                s.text_attr("gen_ai.input.messages");
            }
            s.text.clear();
            if let Some(output) = output
                && output_messages(
                    output,
                    failed,
                    rec.kind == StepKind::ChatCompletion,
                    if model_call {
                        finish_reason(rec.field("rawOutput"))
                    } else {
                        None
                    },
                    &mut s.text,
                )
            {
                s.text_attr("gen_ai.output.messages");
            }
        }
        for (k, v) in rec.metadata() {
            s.prefixed_string("openlayer.metadata.", k, v);
        }
        if i == 0 {
            // The trace's own row columns (`update_current_trace!`, `log_context`,
            // `log_question`): the endpoint has no mapping for them, so they go on the
            // root span, as JSON, where its other attributes land (the row's metadata).
            for (k, v) in st.columns() {
                // `log_context` / `log_question` replace a column of their name, as in
                // the row: one attribute each (OTLP keys are unique).
                let replaced = (k == "context" && st.context().is_some())
                    || (k == "_question" && st.question().is_some());
                if !replaced && !matches!(&**k, "output" | "session_id" | "user_id") {
                    s.prefixed_string("openlayer.column.", k, v);
                }
            }
            if let Some(c) = st.context() {
                s.string("openlayer.column.context", c);
            }
            if let Some(q) = st.question() {
                s.string("openlayer.column._question", q);
            }
        }
        if let Some(gt) = rec.ground_truth() {
            s.string("openlayer.ground_truth", gt);
        }
        if failed {
            let message = rec.error().unwrap_or("error");
            let kind = if rec.status == StepStatus::Panicked {
                "panic"
            } else {
                "error"
            };
            s.string("error.type", kind);
            s.string("error.message", message);
            let mut cut = String::new();
            push_cut(&mut cut, message, s.attr_max);
            s.span.status = Some(Status {
                message: cut,
                code: StatusCode::Error as i32,
            });
        }
        if matches!(rec.status, StepStatus::Cancelled | StepStatus::Open) {
            s.other("openlayer.cancelled", any_value::Value::BoolValue(true));
        }
        let at = |offset: i64| (trace.anchor_unix_ns + i128::from(offset)).max(0) as u64;
        let span = &mut s.span;
        span.trace_id.extend_from_slice(&trace_id);
        span.span_id.extend_from_slice(&span_id(rec));
        if let Some(p) = parent {
            span.parent_span_id.extend_from_slice(&span_id(p));
        }
        span.name.push_str(&rec.name);
        span.kind = if model_call {
            SpanKind::Client
        } else {
            SpanKind::Internal
        } as i32;
        span.start_time_unix_nano = at(rec.start);
        span.end_time_unix_nano = at(rec.end.max(rec.start));
        // W3C trace flags: sampled.
        span.flags = 1;
        // `prost` encodes the span: key, length, message.
        prost::encoding::message::encode(SCOPE_SPANS_SPANS, &*span, &mut encoded);
    }
    scratch.reset();
    scratch.trim();
    scratch.last_len = encoded.len().min(LEN_HINT_MAX);
    if encoded.capacity() > 2 * encoded.len() + 1024 {
        // Guessed from a larger trace: it waits in the queue with no more than it needs.
        encoded.shrink_to_fit();
    }
    let bytes = encoded.len();
    Some(Converted {
        pipeline: st.pipeline_id().map(|p| p.to_string()),
        encoded,
        spans: st.steps.len(),
        bytes,
    })
}

/// The GenAI conventions' `gen_ai.provider.name` of a provider as the platform names it
/// (the inverse of what the tracing layer reads); any other name, lowercased.
fn otel_provider_name(platform: &str) -> String {
    let known = match platform {
        "OpenAI" => "openai",
        "Azure" => "azure.ai.openai",
        "Anthropic" => "anthropic",
        "Bedrock" => "aws.bedrock",
        "Google" => "gcp.gemini",
        "VertexAI" => "gcp.vertex_ai",
        "Cohere" => "cohere",
        "Mistral" => "mistral_ai",
        "Groq" => "groq",
        "DeepSeek" => "deepseek",
        "xAI" => "x_ai",
        "Perplexity" => "perplexity",
        "IBM" => "ibm.watsonx.ai",
        other => return other.to_ascii_lowercase(),
    };
    known.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_the_inference_id() {
        let u = "0b9c2a4e-6f1d-4c3b-9a8e-7d6c5b4a3f21";
        assert_eq!(trace_id(u), *uuid::Uuid::parse_str(u).unwrap().as_bytes());
        assert_eq!(trace_id("req-1"), trace_id("req-1"));
        assert_ne!(trace_id("req-1"), trace_id("req-2"));
        // The nil UUID would make an all-zero trace id, which OTLP calls invalid.
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_ne!(trace_id(nil), [0; 16]);
        assert_eq!(trace_id(nil), trace_id(nil));
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary_with_a_marker() {
        let cut = |v: &str, max| {
            let mut out = String::from("kept:");
            push_cut(&mut out, v, max);
            out
        };
        assert_eq!(cut("short", 16), "kept:short");
        // "€" takes three bytes: 41 bytes, cut at 10 falls inside the fourth.
        let v = "€".repeat(13) + "ab";
        assert_eq!(
            cut(&v, 10),
            format!(
                "kept:{}{}",
                "€".repeat(3),
                crate::util::text::cut_marker(32)
            )
        );
        // A marker longer than what it would replace: kept whole.
        assert_eq!(cut(&v, 38), format!("kept:{v}"));
    }

    #[test]
    fn long_json_values_have_their_strings_cut_and_stay_json() {
        let messages = serde_json::json!([
            {"role": "system", "content": "s".repeat(100)},
            {"role": "user", "content": "u".repeat(10_000)},
        ])
        .to_string();
        let mut out = String::new();
        push_attr(&mut out, &messages, 2_000);
        assert!(out.len() <= 2_000, "{}", out.len());
        let v: Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v[0]["content"], "s".repeat(100));
        let user = v[1]["content"].as_str().unwrap();
        assert!(
            user.starts_with("uuu") && user.contains("…[truncated "),
            "{user}"
        );
        // Not JSON, or too many strings to fit: cut whole, with the marker.
        let mut out = String::new();
        push_attr(&mut out, &"x".repeat(3_000), 2_000);
        assert!(out.ends_with(&crate::util::text::cut_marker(1_000)));
        let many = serde_json::to_string(&vec!["abc"; 2_000]).unwrap();
        let mut out = String::new();
        push_attr(&mut out, &many, 2_000);
        assert!(out.contains("…[truncated "), "{}", &out[out.len() - 40..]);
    }

    #[test]
    fn reused_buffers_give_back_what_a_large_trace_grew() {
        let mut s = Scratch::default();
        let big = "x".repeat(1 << 20);
        // A span of many attributes, some of them large.
        for i in 0..4000 {
            let v = if i % 100 == 0 { big.as_str() } else { "x" };
            s.prefixed_string("openlayer.metadata.", &i.to_string(), v);
        }
        s.text.push_str(&big);
        s.reset();
        s.trim();
        assert!(s.spare.capacity() <= SPARE_MAX);
        assert!(s.span.attributes.capacity() <= SPARE_MAX);
        let held: usize = s
            .spare
            .iter()
            .map(|kv| {
                kv.key.capacity()
                    + match &kv.value {
                        Some(AnyValue {
                            value: Some(any_value::Value::StringValue(v)),
                        }) => v.capacity(),
                        _ => 0,
                    }
            })
            .sum::<usize>()
            + s.text.capacity();
        assert!(held < SPARE_MAX * 256, "{held}");
    }

    fn inputs(json: &str) -> Option<String> {
        let mut out = String::new();
        input_messages(json, &mut out).then_some(out)
    }

    fn outputs(json: &str, failed: bool) -> Option<String> {
        let mut out = String::new();
        output_messages(json, failed, false, None, &mut out).then_some(out)
    }

    fn model_outputs(json: &str, failed: bool) -> Option<Value> {
        let mut out = String::new();
        output_messages(json, failed, true, None, &mut out)
            .then(|| serde_json::from_str(&out).expect("valid JSON"))
    }

    /// The finish reason is the model's own, from its raw answer: cut at its token limit
    /// or filtered is not "stop".
    #[test]
    fn the_finish_reason_is_the_models_own() {
        let chat = |r: &str| format!(r#"{{"choices":[{{"index":0,"finish_reason":"{r}"}}]}}"#);
        assert_eq!(finish_reason(Some(&chat("length"))), Some("length"));
        assert_eq!(
            finish_reason(Some(&chat("content_filter"))),
            Some("content_filter")
        );
        assert_eq!(finish_reason(Some(&chat("stop"))), Some("stop"));
        assert_eq!(finish_reason(Some(&chat("tool_calls"))), Some("tool_call"));
        let incomplete = r#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[]}"#;
        assert_eq!(finish_reason(Some(incomplete)), Some("length"));
        let filtered =
            r#"{"status":"incomplete","incomplete_details":{"reason":"content_filter"}}"#;
        assert_eq!(finish_reason(Some(filtered)), Some("content_filter"));
        assert_eq!(
            finish_reason(Some(r#"{"status":"completed"}"#)),
            Some("stop")
        );
        assert_eq!(finish_reason(Some(r#"{"status":"failed"}"#)), Some("error"));
        assert_eq!(finish_reason(Some(r#"{"choices":[]}"#)), None);
        assert_eq!(finish_reason(None), None);
        let mut out = String::new();
        assert!(output_messages(
            r#""Par""#,
            false,
            true,
            Some("length"),
            &mut out
        ));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["finish_reason"], "length");
    }

    #[test]
    fn a_model_calls_tool_calls_are_tool_call_parts() {
        let calls = r#"[{"id":"call_1","name":"get_weather","arguments":{"city":"Paris"}},{"name":"now","arguments":"{}"}]"#;
        let v = model_outputs(calls, false).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "role": "assistant",
                "parts": [
                    {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}},
                    {"type": "tool_call", "name": "now", "arguments": "{}"}
                ],
                "finish_reason": "tool_call"
            }])
        );
        // Text stays text, and a list that is not of tool calls is content.
        let v = model_outputs(r#""Sunny.""#, false).unwrap();
        assert_eq!(v[0]["parts"][0]["type"], "text");
        let v = model_outputs(r#"[{"name":"x"}]"#, false).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], r#"[{"name":"x"}]"#);
        // Only a model call's output is read as tool calls.
        let v: Value = serde_json::from_str(&outputs(calls, false).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["type"], "text");
        assert_eq!(v[0]["finish_reason"], "stop");
    }

    #[test]
    fn messages_take_the_semantic_conventions_shape() {
        let m = inputs(r#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["role"], "system");
        assert_eq!(v[1]["parts"][0]["type"], "text");
        assert_eq!(v[1]["parts"][0]["content"], "Hi");
        let m = inputs(r#"{"question":"Why?"}"#).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["role"], "user");
        assert_eq!(v[0]["parts"][0]["content"], "Why?");
        let m = outputs(r#""Because.""#, false).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["role"], "assistant");
        assert_eq!(v[0]["finish_reason"], "stop");
        assert_eq!(v[0]["parts"][0]["content"], "Because.");
        assert!(outputs("null", false).is_none());
    }

    /// Tool turns keep their shape: an assistant's tool calls are `tool_call` parts, a
    /// tool's answer a `tool_call_response`, in a chat prompt and in a Responses input
    /// alike (whose function-call items have no role).
    #[test]
    fn tool_turns_in_a_prompt_are_tool_call_parts() {
        let chat = r#"{"prompt":[
            {"role":"user","content":"Weather in Paris?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"}
        ]}"#;
        let v: Value = serde_json::from_str(&inputs(chat).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], "Weather in Paris?");
        assert_eq!(
            v[1],
            serde_json::json!({"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1",
                "name": "get_weather", "arguments": {"city": "Paris"}}]})
        );
        assert_eq!(
            v[2],
            serde_json::json!({"role": "tool", "parts": [{"type": "tool_call_response",
                "id": "call_1", "response": "18C"}]})
        );
        let responses = r#"{"prompt":[
            {"role":"user","content":"Weather in Paris?"},
            {"type":"function_call","call_id":"call_2","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
            {"type":"function_call_output","call_id":"call_2","output":"18C"}
        ]}"#;
        let v: Value = serde_json::from_str(&inputs(responses).unwrap()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[1]["role"], "assistant");
        assert_eq!(v[1]["parts"][0]["type"], "tool_call");
        assert_eq!(v[1]["parts"][0]["arguments"]["city"], "Paris");
        assert_eq!(v[2]["role"], "tool");
        assert_eq!(v[2]["parts"][0]["id"], "call_2");
    }

    #[test]
    fn message_contents_keep_their_text() {
        // Several inputs: their JSON, as recorded, is the content.
        let m = inputs(r#"{"q":"Why \"so\"?","n":3}"#).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], r#"{"q":"Why \"so\"?","n":3}"#);
        // One input: its value, a string unescaped, anything else as JSON.
        let v: Value = serde_json::from_str(&inputs(r#"{"q":"a\nb"}"#).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], "a\nb");
        let v: Value = serde_json::from_str(&inputs(r#"{"q":[1,{"a":null}]}"#).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], r#"[1,{"a":null}]"#);
        // A `prompt` that is not a chat prompt is an ordinary input.
        let v: Value = serde_json::from_str(&inputs(r#"{"prompt":"Hi"}"#).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], "Hi");
        let v: Value =
            serde_json::from_str(&inputs(r#"{"prompt":[{"content":"x"}],"n":1}"#).unwrap())
                .unwrap();
        assert_eq!(
            v[0]["parts"][0]["content"],
            r#"{"prompt":[{"content":"x"}],"n":1}"#
        );
        // No messages without inputs, or from what is not an object.
        assert!(inputs("{}").is_none());
        assert!(inputs("[1]").is_none());
        assert!(inputs("not json").is_none());
        // An output: a string unescaped, anything else as JSON; an error's reason.
        let v: Value = serde_json::from_str(&outputs(r#"{"k":"\u00e9"}"#, true).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], r#"{"k":"\u00e9"}"#);
        assert_eq!(v[0]["finish_reason"], "error");
        let v: Value = serde_json::from_str(&outputs(r#""tab\there""#, false).unwrap()).unwrap();
        assert_eq!(v[0]["parts"][0]["content"], "tab\there");
        assert!(outputs("nope", false).is_none());
    }
}
