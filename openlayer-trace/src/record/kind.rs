//! Step kinds and the extra fields each kind carries on the wire.

use std::fmt;
use std::str::FromStr;

/// What a step is. Each kind carries its own extra fields on the wire.
///
/// ```
/// use openlayer_trace::StepKind;
/// assert_eq!("chat_completion".parse::<StepKind>().unwrap(), StepKind::ChatCompletion);
/// assert_eq!(StepKind::Tool.as_str(), "tool");
/// assert!("llm".parse::<StepKind>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StepKind {
    /// An ordinary function (the default).
    #[default]
    UserCall,
    /// A call to a chat model.
    ChatCompletion,
    /// A call to an embedding model.
    Embedding,
    /// A retrieval of documents.
    Retriever,
    /// A tool call.
    Tool,
    /// An agent's step.
    Agent,
    /// A hand-off between components.
    Handoff,
    /// A guardrail check.
    Guardrail,
}

impl StepKind {
    /// Every kind, in wire order.
    pub const ALL: [StepKind; 8] = [
        StepKind::UserCall,
        StepKind::ChatCompletion,
        StepKind::Embedding,
        StepKind::Retriever,
        StepKind::Tool,
        StepKind::Agent,
        StepKind::Handoff,
        StepKind::Guardrail,
    ];

    /// The wire name (`"user_call"`, `"chat_completion"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            StepKind::UserCall => "user_call",
            StepKind::ChatCompletion => "chat_completion",
            StepKind::Embedding => "embedding",
            StepKind::Retriever => "retriever",
            StepKind::Tool => "tool",
            StepKind::Agent => "agent",
            StepKind::Handoff => "handoff",
            StepKind::Guardrail => "guardrail",
        }
    }

    /// The kind's extra wire fields, in order. Unset fields are sent as `null`.
    pub const fn fields(self) -> &'static [&'static str] {
        match self {
            StepKind::UserCall => &[],
            StepKind::ChatCompletion => &[
                "provider",
                "promptTokens",
                "completionTokens",
                "tokens",
                "cost",
                "model",
                "modelParameters",
                "rawOutput",
            ],
            StepKind::Embedding => &[
                "provider",
                "promptTokens",
                "tokens",
                "cost",
                "model",
                "modelParameters",
                "rawOutput",
                "embeddingDimensions",
                "embeddingCount",
            ],
            StepKind::Retriever => &["documents"],
            StepKind::Tool => &["functionName", "arguments"],
            StepKind::Agent => &["tool", "action", "agentType"],
            StepKind::Handoff => &["fromComponent", "toComponent", "handoffData"],
            StepKind::Guardrail => &[
                "action",
                "blockedEntities",
                "confidenceThreshold",
                "reason",
                "detectedEntities",
                "blockStrategy",
                "redactedEntities",
                "dataType",
            ],
        }
    }

    /// Optional fields sent only when set.
    pub(crate) const fn optional_fields(self) -> &'static [&'static str] {
        match self {
            StepKind::ChatCompletion => &["usageDetails"],
            _ => &[],
        }
    }

    /// Maps an update key (`prompt_tokens` or `promptTokens`) to this kind's wire field.
    pub(crate) fn field_for(self, key: &str) -> Option<&'static str> {
        self.fields()
            .iter()
            .chain(self.optional_fields())
            .copied()
            .find(|f| *f == key || snake_matches(key, f))
    }
}

/// Whether `snake` (e.g. `prompt_tokens`) is the snake_case form of `camel` (`promptTokens`).
fn snake_matches(snake: &str, camel: &str) -> bool {
    let mut s = snake.bytes();
    for c in camel.bytes() {
        if c.is_ascii_uppercase() {
            if s.next() != Some(b'_') || s.next() != Some(c.to_ascii_lowercase()) {
                return false;
            }
        } else if s.next() != Some(c) {
            return false;
        }
    }
    s.next().is_none()
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown step kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown step kind {:?}; expected one of ", self.0)?;
        for (i, k) in StepKind::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(k.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownKind {}

impl FromStr for StepKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_keys_map_to_fields() {
        let k = StepKind::ChatCompletion;
        assert_eq!(k.field_for("prompt_tokens"), Some("promptTokens"));
        assert_eq!(k.field_for("promptTokens"), Some("promptTokens"));
        assert_eq!(k.field_for("model"), Some("model"));
        assert_eq!(k.field_for("usage_details"), Some("usageDetails"));
        assert_eq!(k.field_for("prompt_token"), None);
        assert_eq!(k.field_for("promptokens"), None);
        assert_eq!(StepKind::UserCall.field_for("model"), None);
        assert_eq!(
            StepKind::Tool.field_for("function_name"),
            Some("functionName")
        );
    }

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let e = "llm".parse::<StepKind>().unwrap_err().to_string();
        assert!(e.contains("user_call") && e.contains("guardrail"), "{e}");
    }
}
