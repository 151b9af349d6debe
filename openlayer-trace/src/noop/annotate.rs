//! Updates, logs and steps recorded after the fact, compiled out.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::RowUpdateConfig;

/// Merges keys into the current trace (compiled out: does nothing).
#[inline(always)]
pub fn update_current_trace(map: Map<String, Value>) {
    let _ = map;
}

/// Merges keys into the current step (compiled out: does nothing).
#[inline(always)]
pub fn update_current_step(map: Map<String, Value>) {
    let _ = map;
}

/// Sets the current step's output (compiled out: does nothing).
#[inline(always)]
pub fn log_output<T: Serialize + ?Sized>(output: &T) {
    let _ = output;
}

/// Records retrieved documents (compiled out: does nothing).
#[inline(always)]
pub fn log_context<T: Serialize + ?Sized>(documents: &T) {
    let _ = documents;
}

/// Records the trace's question (compiled out: does nothing).
#[inline(always)]
pub fn log_question<T: Serialize + ?Sized>(question: &T) {
    let _ = question;
}

/// Records the trace's ground truth (compiled out: does nothing).
#[inline(always)]
pub fn log_ground_truth<T: Serialize + ?Sized>(ground_truth: &T) {
    let _ = ground_truth;
}

/// The current trace's inference id: always `None` (no trace is ever active).
#[inline(always)]
pub fn current_inference_id() -> Option<String> {
    None
}

/// Updates a row that was already sent (compiled out: does nothing).
#[inline(always)]
pub fn update_row(inference_id: &str, row: Value, config: Option<RowUpdateConfig>) {
    let _ = (inference_id, row, config);
}

/// Updates a row of the given pipeline (compiled out: does nothing).
#[inline(always)]
pub fn update_row_in(
    pipeline_id: &str,
    inference_id: &str,
    row: Value,
    config: Option<RowUpdateConfig>,
) {
    let _ = (pipeline_id, inference_id, row, config);
}

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
    /// A completion of `model` by `provider`, every other field unset.
    pub fn new(provider: impl Into<String>, model: impl Into<String>) -> Self {
        ChatCompletion {
            provider: Some(provider.into()),
            model: Some(model.into()),
            ..Default::default()
        }
    }
}

/// Records a chat completion as a step (compiled out: does nothing).
#[inline(always)]
pub fn add_chat_completion_step(completion: ChatCompletion) {
    let _ = completion;
}
