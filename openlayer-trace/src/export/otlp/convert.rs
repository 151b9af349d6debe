//! A completed trace as OTLP spans: one span per step, with the GenAI semantic
//! conventions' attributes on model calls and on the root (Openlayer builds a row from
//! the root span).

use serde_json::Value;

use crate::export::otlp::proto::{KeyValue, Span, SpanKind, Status, StatusCode};
use crate::record::kind::StepKind;
use crate::record::{CompletedTrace, NO_PARENT, Status as StepStatus, StepRecord};

/// One trace's spans, on their way to a request.
#[derive(Debug)]
pub(crate) struct Converted {
    /// The trace's own inference pipeline (`#[trace(inference_pipeline_id = ..)]`).
    pub pipeline: Option<String>,
    pub spans: Vec<Span>,
    /// Their encoded size in a request.
    pub bytes: usize,
}

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
/// derived from it (deterministic: the same id always gives the same trace).
pub(crate) fn trace_id(inference_id: &str) -> [u8; 16] {
    match uuid::Uuid::parse_str(inference_id) {
        Ok(u) => *u.as_bytes(),
        Err(_) => uuid::Uuid::parse_str(&crate::util::id::inference_id_for(inference_id))
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
fn text_of(json: &str) -> String {
    if json.starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(json)
    {
        return s;
    }
    json.to_string()
}

/// A column of the trace (`user_id`, `session_id`, ...) as text.
fn column(trace: &CompletedTrace, key: &str) -> Option<String> {
    let v = trace.state.columns.iter().find(|(k, _)| k == key)?;
    (&*v.1 != "null").then(|| text_of(&v.1))
}

/// `[{"role": role, "parts": [{"type": "text", "content": text}]}]` items.
fn message(role: &str, content: &str, finish_reason: Option<&str>) -> Value {
    let mut m = serde_json::json!({
        "role": role,
        "parts": [{"type": "text", "content": content}],
    });
    if let Some(r) = finish_reason {
        m["finish_reason"] = Value::from(r);
    }
    m
}

/// A JSON value as message text: a string as is, anything else as its JSON.
fn content_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The input messages of a step: a chat prompt's messages (`{"prompt": [{role,
/// content}]}`), else one user message with the inputs (the only input's value when
/// there is one).
fn input_messages(inputs: &str) -> Option<String> {
    let v: Value = serde_json::from_str(inputs).ok()?;
    let obj = v.as_object()?;
    if let Some(Value::Array(prompt)) = obj.get("prompt")
        && prompt.iter().all(|m| m.get("role").is_some())
    {
        let msgs: Vec<Value> = prompt
            .iter()
            .map(|m| {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = m.get("content").map(content_of).unwrap_or_default();
                message(role, &content, None)
            })
            .collect();
        return Some(Value::Array(msgs).to_string());
    }
    let content = match obj.len() {
        0 => return None,
        1 => obj.values().next().map(content_of).unwrap_or_default(),
        _ => v.to_string(),
    };
    Some(Value::Array(vec![message("user", &content, None)]).to_string())
}

/// The output messages of a step: one assistant message with its output.
fn output_messages(output: &str, failed: bool) -> Option<String> {
    let v: Value = serde_json::from_str(output).ok()?;
    if v.is_null() {
        return None;
    }
    let reason = if failed { "error" } else { "stop" };
    Some(Value::Array(vec![message("assistant", &content_of(&v), Some(reason))]).to_string())
}

fn int_field(rec: &StepRecord, field: &str) -> Option<i64> {
    let v = rec.field(field)?.trim().parse::<f64>().ok()?;
    (v.is_finite() && v.fract() == 0.0).then_some(v as i64)
}

/// Converts a completed trace; `None` for a trace without steps.
pub(crate) fn convert(trace: &CompletedTrace, inference_id: &str) -> Option<Converted> {
    let st = &trace.state;
    let root = trace.root()?;
    let trace_id = trace_id(inference_id);
    let session = column(trace, "session_id");
    let user = column(trace, "user_id");
    // A trace-level `output` (log_output) replaces the root's output, as in the row.
    let trace_output = st
        .columns
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
    let mut spans = Vec::with_capacity(st.steps.len());
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
        let output = if i == 0 { root_output } else { st.output(rec) };
        let failed = matches!(rec.status, StepStatus::Error | StepStatus::Panicked);

        let mut attrs = Vec::with_capacity(8);
        attrs.push(KeyValue::string("openlayer.inference_id", inference_id));
        attrs.push(KeyValue::string("openlayer.step.type", rec.kind.as_str()));
        if let Some(s) = &session {
            attrs.push(KeyValue::string("session.id", s.as_str()));
        }
        if let Some(u) = &user {
            attrs.push(KeyValue::string("user.id", u.as_str()));
        }
        if let Some(inputs) = inputs {
            attrs.push(KeyValue::string("openlayer.inputs", inputs));
        }
        if let Some(output) = output {
            attrs.push(KeyValue::string("openlayer.output", output));
        }
        if model_call {
            let op = if rec.kind == StepKind::Embedding {
                "embeddings"
            } else {
                "chat"
            };
            attrs.push(KeyValue::string("gen_ai.operation.name", op));
            if let Some(p) = rec.field("provider").filter(|p| *p != "null") {
                attrs.push(KeyValue::string(
                    "gen_ai.provider.name",
                    text_of(p).to_ascii_lowercase(),
                ));
            }
            if let Some(m) = rec.field("model").filter(|m| *m != "null") {
                let m = text_of(m);
                attrs.push(KeyValue::string("gen_ai.request.model", m.as_str()));
                attrs.push(KeyValue::string("gen_ai.response.model", m));
            }
            if let Some(n) = int_field(rec, "promptTokens") {
                attrs.push(KeyValue::int("gen_ai.usage.input_tokens", n));
            }
            if let Some(n) = int_field(rec, "completionTokens") {
                attrs.push(KeyValue::int("gen_ai.usage.output_tokens", n));
            }
            if let Some(c) = rec.field("cost").and_then(|c| c.trim().parse::<f64>().ok()) {
                attrs.push(KeyValue::double("openlayer.cost", c));
            }
        }
        if rec.kind == StepKind::Tool {
            if let Some(f) = rec.field("functionName").filter(|f| *f != "null") {
                attrs.push(KeyValue::string("gen_ai.tool.name", text_of(f)));
            }
            if let Some(a) = rec.field("arguments").filter(|a| *a != "null") {
                attrs.push(KeyValue::string("gen_ai.tool.call.arguments", a));
            }
            if let Some(o) = output {
                attrs.push(KeyValue::string("gen_ai.tool.call.result", o));
            }
        }
        if model_call || i == 0 {
            if let Some(m) = inputs.and_then(input_messages) {
                attrs.push(KeyValue::string("gen_ai.input.messages", m));
            }
            if let Some(m) = output.and_then(|o| output_messages(o, failed)) {
                attrs.push(KeyValue::string("gen_ai.output.messages", m));
            }
        }
        for (k, v) in rec.metadata() {
            attrs.push(KeyValue::string(format!("openlayer.metadata.{k}"), &**v));
        }
        if let Some(gt) = rec.ground_truth() {
            attrs.push(KeyValue::string("openlayer.ground_truth", gt));
        }
        let status = match rec.status {
            StepStatus::Error | StepStatus::Panicked => {
                let message = rec.error().unwrap_or("error").to_string();
                let kind = if rec.status == StepStatus::Panicked {
                    "panic"
                } else {
                    "error"
                };
                attrs.push(KeyValue::string("error.type", kind));
                attrs.push(KeyValue::string("error.message", message.as_str()));
                Some(Status {
                    message,
                    code: StatusCode::Error as i32,
                })
            }
            StepStatus::Cancelled | StepStatus::Open => {
                attrs.push(KeyValue::bool("openlayer.cancelled", true));
                None
            }
            StepStatus::Ok => None,
        };
        let at = |offset: i64| (trace.anchor_unix_ns + i128::from(offset)).max(0) as u64;
        spans.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id(rec).to_vec(),
            parent_span_id: parent.map(|p| span_id(p).to_vec()).unwrap_or_default(),
            name: rec.name.to_string(),
            kind: if model_call {
                SpanKind::Client
            } else {
                SpanKind::Internal
            } as i32,
            start_time_unix_nano: at(rec.start),
            end_time_unix_nano: at(rec.end.max(rec.start)),
            attributes: attrs,
            status,
            // W3C trace flags: sampled.
            flags: 1,
        });
    }
    let bytes = spans
        .iter()
        .map(|s| prost::Message::encoded_len(s) + 4)
        .sum();
    Some(Converted {
        pipeline: st.pipeline_id.as_ref().map(|p| p.to_string()),
        spans,
        bytes,
    })
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
    }

    #[test]
    fn messages_take_the_semantic_conventions_shape() {
        let m = input_messages(r#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["role"], "system");
        assert_eq!(v[1]["parts"][0]["type"], "text");
        assert_eq!(v[1]["parts"][0]["content"], "Hi");
        let m = input_messages(r#"{"question":"Why?"}"#).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["role"], "user");
        assert_eq!(v[0]["parts"][0]["content"], "Why?");
        let m = output_messages(r#""Because.""#, false).unwrap();
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v[0]["role"], "assistant");
        assert_eq!(v[0]["finish_reason"], "stop");
        assert_eq!(v[0]["parts"][0]["content"], "Because.");
        assert!(output_messages("null", false).is_none());
    }
}
