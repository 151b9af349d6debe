//! What every recorded call shares: model parameters, usage, tool calls.

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CompletionUsage, CreateChatCompletionRequest,
};
use openlayer_trace::StepHandle;
use serde_json::{Map, Value, json};

/// The official integration's model parameters, with OpenAI's defaults for the ones the
/// request leaves out.
#[allow(deprecated)]
pub(crate) fn chat_model_parameters(r: &CreateChatCompletionRequest) -> Value {
    json!({
        "frequency_penalty": decimal(r.frequency_penalty.unwrap_or(0.0)),
        "logit_bias": r.logit_bias,
        "logprobs": r.logprobs.unwrap_or(false),
        "top_logprobs": r.top_logprobs,
        "max_tokens": r.max_tokens.or(r.max_completion_tokens),
        "n": r.n.unwrap_or(1),
        "presence_penalty": decimal(r.presence_penalty.unwrap_or(0.0)),
        "seed": r.seed,
        "stop": r.stop,
        "temperature": decimal(r.temperature.unwrap_or(1.0)),
        "top_p": decimal(r.top_p.unwrap_or(1.0)),
    })
}

/// An `f32` as the decimal it was written as (`0.2`, not `0.20000000298023224`).
pub(crate) fn decimal(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Token counts as the platform reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub prompt: u32,
    pub completion: Option<u32>,
    pub total: u32,
    pub cached: Option<u32>,
    pub reasoning: Option<u32>,
    pub audio_input: Option<u32>,
    pub audio_output: Option<u32>,
}

impl Tokens {
    pub fn from_chat(u: &CompletionUsage) -> Tokens {
        let p = u.prompt_tokens_details.as_ref();
        let c = u.completion_tokens_details.as_ref();
        Tokens {
            prompt: u.prompt_tokens,
            completion: Some(u.completion_tokens),
            total: u.total_tokens,
            cached: p.and_then(|d| d.cached_tokens),
            audio_input: p.and_then(|d| d.audio_tokens),
            reasoning: c.and_then(|d| d.reasoning_tokens),
            audio_output: c.and_then(|d| d.audio_tokens),
        }
    }

    /// `usageDetails`: non-overlapping counts with the wire's keys (`input_tokens` without
    /// the cached and audio ones, `output_tokens` without the audio ones, reasoning tokens
    /// included), or `None` when the usage has no details.
    pub fn details(&self) -> Option<Value> {
        if self.cached.is_none()
            && self.reasoning.is_none()
            && self.audio_input.is_none()
            && self.audio_output.is_none()
        {
            return None;
        }
        let cached = self.cached.unwrap_or(0);
        let audio_in = self.audio_input.unwrap_or(0);
        let audio_out = self.audio_output.unwrap_or(0);
        let mut m = Map::new();
        m.insert(
            "input_tokens".into(),
            // Saturating: a server's counts are not trusted not to overflow (a panic in a
            // build with overflow checks, in the caller's poll).
            self.prompt
                .saturating_sub(cached.saturating_add(audio_in))
                .into(),
        );
        if let Some(c) = self.completion {
            // Reasoning tokens are output tokens (billed as such); the wire's details have
            // no key of their own for them.
            m.insert("output_tokens".into(), c.saturating_sub(audio_out).into());
        }
        let mut put = |k: &str, v: Option<u32>| {
            if let Some(v) = v.filter(|v| *v > 0) {
                m.insert(k.into(), v.into());
            }
        };
        put("cached_tokens", self.cached);
        put("audio_input_tokens", self.audio_input);
        put("audio_output_tokens", self.audio_output);
        Some(Value::Object(m))
    }

    pub fn record(&self, h: &mut StepHandle) {
        h.metadata("prompt_tokens", &self.prompt);
        h.metadata("completion_tokens", &self.completion);
        h.metadata("tokens", &self.total);
        if let Some(d) = self.details() {
            h.metadata("usage_details", &d);
        }
    }
}

/// A tool call as recorded: `{id, name, arguments}`, the arguments parsed when they are
/// JSON (kept as text otherwise).
pub(crate) fn tool_call(id: &str, name: &str, arguments: &str) -> Value {
    let arguments = serde_json::from_str::<Value>(arguments)
        .unwrap_or_else(|_| Value::String(arguments.to_string()));
    json!({"id": id, "name": name, "arguments": arguments})
}

pub(crate) fn tool_calls(calls: &[ChatCompletionMessageToolCalls]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| match c {
                ChatCompletionMessageToolCalls::Function(f) => {
                    tool_call(&f.id, &f.function.name, &f.function.arguments)
                }
                ChatCompletionMessageToolCalls::Custom(c) => {
                    tool_call(&c.id, &c.custom_tool.name, &c.custom_tool.input)
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_do_not_overlap() {
        let t = Tokens {
            prompt: 100,
            completion: Some(50),
            total: 150,
            cached: Some(30),
            reasoning: Some(20),
            audio_input: None,
            audio_output: None,
        };
        assert_eq!(
            t.details().unwrap(),
            json!({"input_tokens": 70, "output_tokens": 50, "cached_tokens": 30})
        );
        assert_eq!(Tokens::default().details(), None);
    }

    #[test]
    fn arguments_are_parsed_when_json() {
        assert_eq!(
            tool_call("c1", "f", r#"{"city":"Paris"}"#)["arguments"],
            json!({"city": "Paris"})
        );
        assert_eq!(tool_call("c1", "f", "not json")["arguments"], "not json");
    }
}
