//! Steps recorded after the fact, such as a chat completion made by a client library
//! that is not traced itself.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::context::{self, Closing, Start, StepSpec};
use crate::record::kind::StepKind;
use crate::record::{Status, to_json};
use crate::util::clock;

/// A chat completion to record as a step; see [`add_chat_completion_step`].
///
/// Every field is optional. `tokens` defaults to `prompt_tokens + completion_tokens`, and
/// the step's times to "ended now, after `latency`".
#[derive(Debug, Clone, Default)]
pub struct ChatCompletion {
    /// The step's name (default `"Chat Completion"`).
    pub name: Option<String>,
    /// The provider, e.g. `"OpenAI"`.
    pub provider: Option<String>,
    /// The model, e.g. `"gpt-4o"`.
    pub model: Option<String>,
    /// Tokens of the prompt.
    pub prompt_tokens: Option<u64>,
    /// Tokens of the completion.
    pub completion_tokens: Option<u64>,
    /// Total tokens (default: prompt + completion).
    pub tokens: Option<u64>,
    /// Cost in USD.
    pub cost: Option<f64>,
    /// Model parameters, e.g. `{"temperature": 0.2}`.
    pub model_parameters: Option<Value>,
    /// The inputs, e.g. `{"prompt": [{"role": "user", "content": "..."}]}`.
    pub inputs: Option<Value>,
    /// The output, e.g. the completion's text.
    pub output: Option<Value>,
    /// The provider's raw response.
    pub raw_output: Option<Value>,
    /// Provider-specific usage details (cached tokens, ...).
    pub usage_details: Option<Value>,
    /// How long the call took.
    pub latency: Option<Duration>,
    /// When the call started (default: now minus `latency`).
    pub start_time: Option<SystemTime>,
    /// Extra metadata of the step.
    pub metadata: Map<String, Value>,
}

impl ChatCompletion {
    /// A chat completion of `model` by `provider`.
    ///
    /// ```
    /// use openlayer_trace::ChatCompletion;
    /// let c = ChatCompletion::new("OpenAI", "gpt-4o");
    /// assert_eq!(c.model.as_deref(), Some("gpt-4o"));
    /// ```
    pub fn new(provider: impl Into<String>, model: impl Into<String>) -> Self {
        ChatCompletion {
            provider: Some(provider.into()),
            model: Some(model.into()),
            ..Default::default()
        }
    }
}

/// Records a chat completion as a step under the current step, or as a trace of its own
/// when no trace is active.
///
/// ```
/// use std::time::Duration;
/// use openlayer_trace::{add_chat_completion_step, trace, ChatCompletion};
/// use serde_json::json;
///
/// #[trace]
/// fn answer(question: &str) -> String {
///     let text = "Paris".to_string(); // the model's answer
///     add_chat_completion_step(ChatCompletion {
///         provider: Some("OpenAI".into()),
///         model: Some("gpt-4o-mini".into()),
///         prompt_tokens: Some(21),
///         completion_tokens: Some(1),
///         cost: Some(0.000_004),
///         inputs: Some(json!({"prompt": [{"role": "user", "content": question}]})),
///         output: Some(json!(text)),
///         latency: Some(Duration::from_millis(420)),
///         ..Default::default()
///     });
///     text
/// }
/// answer("What is the capital of France?");
/// ```
pub fn add_chat_completion_step(completion: ChatCompletion) {
    let now = clock::now();
    let latency = completion.latency.unwrap_or_default();
    let name: Cow<'static, str> = match completion.name {
        Some(n) => Cow::Owned(n),
        None => Cow::Borrowed("Chat Completion"),
    };
    let spec = StepSpec {
        name,
        kind: StepKind::ChatCompletion,
        traced_fn: false,
        pipeline_id: None,
    };
    let start = now.saturating_sub(i64::try_from(latency.as_nanos()).unwrap_or(i64::MAX));
    let inputs = completion.inputs.as_ref().and_then(|v| {
        to_json(v).map(|j| {
            if j.starts_with('{') {
                j
            } else {
                format!("{{\"prompt\":{j}}}").into_boxed_str()
            }
        })
    });
    let write_inputs = |buf: &mut String| buf.push_str(inputs.as_deref().unwrap_or_default());
    let Some(open) = context::open_step(
        spec,
        Start::At(start),
        crate::runtime::lazy_init,
        write_inputs,
    ) else {
        return;
    };
    let tokens = completion.tokens.or(
        match (completion.prompt_tokens, completion.completion_tokens) {
            (None, None) => None,
            (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
        },
    );
    let fields: [(&'static str, Option<crate::record::Json>); 9] = [
        ("provider", completion.provider.as_ref().and_then(to_json)),
        (
            "promptTokens",
            completion.prompt_tokens.as_ref().and_then(to_json),
        ),
        (
            "completionTokens",
            completion.completion_tokens.as_ref().and_then(to_json),
        ),
        ("tokens", tokens.as_ref().and_then(to_json)),
        ("cost", completion.cost.as_ref().and_then(to_json)),
        ("model", completion.model.as_ref().and_then(to_json)),
        (
            "modelParameters",
            completion.model_parameters.as_ref().and_then(to_json),
        ),
        (
            "rawOutput",
            completion.raw_output.as_ref().and_then(to_json),
        ),
        (
            "usageDetails",
            completion.usage_details.as_ref().and_then(to_json),
        ),
    ];
    // An explicit start time moves the step; with a latency too, the end follows from both.
    let mut end = now;
    {
        let mut st = open.trace.lock();
        if let Some(rec) = st.steps.get_mut(open.idx as usize) {
            if let Some(t) = completion.start_time {
                rec.start = open.trace.offset_of_wall(t);
                if completion.latency.is_some() {
                    let latency = i64::try_from(latency.as_nanos()).unwrap_or(i64::MAX);
                    end = open.trace.at(rec.start.saturating_add(latency));
                }
            }
            for (field, value) in fields {
                if let Some(v) = value {
                    rec.set_field(field, v);
                }
            }
            for (k, v) in &completion.metadata {
                if let Some(j) = to_json(v) {
                    rec.set_metadata(Cow::Owned(k.clone()), j);
                }
            }
        }
    }
    let output = completion.output.as_ref().and_then(to_json);
    context::close_step(
        &open,
        end,
        Closing {
            status: Status::Ok,
            output: output.as_deref(),
            error: None,
        },
    );
}
