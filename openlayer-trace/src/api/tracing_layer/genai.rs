//! The OpenTelemetry GenAI and OpenInference conventions, mapped onto steps.

use serde_json::{Map, Value, json};

use crate::record::kind::StepKind;

/// The step kind of a `gen_ai.operation.name`.
pub(crate) fn kind_of_operation(op: &str) -> StepKind {
    match op {
        "chat" | "text_completion" | "generate_content" => StepKind::ChatCompletion,
        "embeddings" => StepKind::Embedding,
        "execute_tool" => StepKind::Tool,
        "retrieval" => StepKind::Retriever,
        "create_agent" | "invoke_agent" => StepKind::Agent,
        _ => StepKind::UserCall,
    }
}

/// The step kind of an `openinference.span.kind` (case-insensitive).
pub(crate) fn kind_of_openinference(kind: &str) -> StepKind {
    match kind.to_ascii_uppercase().as_str() {
        "LLM" => StepKind::ChatCompletion,
        "EMBEDDING" => StepKind::Embedding,
        "RETRIEVER" => StepKind::Retriever,
        "TOOL" => StepKind::Tool,
        "AGENT" => StepKind::Agent,
        "GUARDRAIL" => StepKind::Guardrail,
        _ => StepKind::UserCall,
    }
}

/// The platform's name of a `gen_ai.provider.name` (or deprecated `gen_ai.system`) value, or
/// of OpenInference's `llm.provider` / `llm.system`: the plain name its price table matches
/// on. Unknown names are kept as given.
pub(crate) fn provider_name(otel: &str) -> String {
    let known = match otel {
        "openai" => "OpenAI",
        "azure.ai.openai" | "az.ai.openai" | "azure_openai" | "azure" => "Azure",
        "azure.ai.inference" | "az.ai.inference" => "Azure",
        "anthropic" => "Anthropic",
        "aws.bedrock" | "aws" | "amazon" | "bedrock" | "aws_bedrock" | "amazon_bedrock" => {
            "Bedrock"
        }
        "gcp.gemini" | "gcp.gen_ai" | "gemini" | "google" => "Google",
        "gcp.vertex_ai" | "vertex_ai" | "vertexai" => "VertexAI",
        "cohere" => "Cohere",
        "mistral_ai" | "mistralai" | "mistral" => "Mistral",
        "groq" => "Groq",
        "deepseek" => "DeepSeek",
        "x_ai" | "xai" => "xAI",
        "perplexity" => "Perplexity",
        "ibm.watsonx.ai" => "IBM",
        "ollama" => "Ollama",
        other => return other.to_string(),
    };
    known.to_string()
}

/// The text of a message's `parts` (`[{"type": "text", "content": ...}]`), joined; `None` when
/// it has parts other than text.
fn parts_text(parts: &[Value]) -> Option<String> {
    let mut text = String::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(p.get("content").and_then(Value::as_str).unwrap_or("")),
            _ => return None,
        }
    }
    Some(text)
}

/// One message of the conventions' shape as the platform's `{role, content}`; non-text parts
/// are kept as the content.
fn to_prompt_message(m: &Value) -> Value {
    let role = m.get("role").cloned().unwrap_or(Value::Null);
    match m.get("parts").and_then(Value::as_array) {
        Some(parts) => match parts_text(parts) {
            Some(text) => json!({"role": role, "content": text}),
            None => json!({"role": role, "content": parts}),
        },
        // Already `{role, content}` (or something else): as given.
        None => m.clone(),
    }
}

/// The step inputs of a model call: `{"prompt": [{role, content}, ...]}` from
/// `gen_ai.system_instructions` and `gen_ai.input.messages` (JSON text).
pub(crate) fn prompt_inputs(system: Option<&str>, messages: Option<&str>) -> Option<Value> {
    let mut prompt = Vec::new();
    if let Some(sys) = system.and_then(|s| serde_json::from_str::<Value>(s).ok()) {
        let content = match sys.as_array().and_then(|p| parts_text(p)) {
            Some(text) => Value::String(text),
            None => sys,
        };
        prompt.push(json!({"role": "system", "content": content}));
    }
    match messages.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Array(ms))) => prompt.extend(ms.iter().map(to_prompt_message)),
        Some(Ok(other)) => prompt.push(other),
        Some(Err(_)) => prompt.push(Value::String(messages.unwrap_or_default().to_string())),
        None => {}
    }
    if prompt.is_empty() {
        return None;
    }
    let mut m = Map::new();
    m.insert("prompt".into(), Value::Array(prompt));
    Some(Value::Object(m))
}

/// The step output of a model call from `gen_ai.output.messages` (JSON text): the text of the
/// messages, or the messages as given when they hold more than text (tool calls).
pub(crate) fn output_of(messages: &str) -> Value {
    let Ok(parsed) = serde_json::from_str::<Value>(messages) else {
        return Value::String(messages.to_string());
    };
    let Some(list) = parsed.as_array() else {
        return parsed;
    };
    let mut text = String::new();
    for m in list {
        match m
            .get("parts")
            .and_then(Value::as_array)
            .and_then(|p| parts_text(p))
        {
            Some(t) => text.push_str(&t),
            None => return parsed,
        }
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openinference_table() {
        for (oi, kind) in [
            ("LLM", StepKind::ChatCompletion),
            ("EMBEDDING", StepKind::Embedding),
            ("RETRIEVER", StepKind::Retriever),
            ("TOOL", StepKind::Tool),
            ("AGENT", StepKind::Agent),
            ("GUARDRAIL", StepKind::Guardrail),
            ("CHAIN", StepKind::UserCall),
            ("llm", StepKind::ChatCompletion),
        ] {
            assert_eq!(kind_of_openinference(oi), kind, "{oi}");
        }
        assert_eq!(kind_of_operation("chat"), StepKind::ChatCompletion);
        assert_eq!(kind_of_operation("embeddings"), StepKind::Embedding);
        assert_eq!(kind_of_operation("execute_tool"), StepKind::Tool);
        assert_eq!(kind_of_operation("retrieval"), StepKind::Retriever);
    }

    #[test]
    fn providers_use_the_platform_names() {
        assert_eq!(provider_name("openai"), "OpenAI");
        assert_eq!(provider_name("azure.ai.openai"), "Azure");
        assert_eq!(provider_name("anthropic"), "Anthropic");
        // OpenInference's `llm.provider` and `llm.system` values.
        assert_eq!(provider_name("azure"), "Azure");
        assert_eq!(provider_name("aws"), "Bedrock");
        assert_eq!(provider_name("amazon"), "Bedrock");
        assert_eq!(provider_name("vertexai"), "VertexAI");
        assert_eq!(provider_name("my_llm"), "my_llm");
    }

    #[test]
    fn messages_in_the_parts_shape_become_a_prompt_and_an_output() {
        let input = r#"[{"role":"user","parts":[{"type":"text","content":"Hi"},{"type":"text","content":"!"}]}]"#;
        let sys = r#"[{"type":"text","content":"Be brief."}]"#;
        assert_eq!(
            prompt_inputs(Some(sys), Some(input)).unwrap(),
            json!({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]})
        );
        let out = r#"[{"role":"assistant","parts":[{"type":"text","content":"Hello"}],"finish_reason":"stop"}]"#;
        assert_eq!(output_of(out), json!("Hello"));
        let tool =
            r#"[{"role":"assistant","parts":[{"type":"tool_call","name":"f","arguments":{}}]}]"#;
        assert!(output_of(tool).is_array());
        assert_eq!(output_of("plain"), json!("plain"));
    }
}
