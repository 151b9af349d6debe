//! Chat completions: [`ChatExt`].

use std::future::Future;
use std::time::Instant;

use async_openai::Chat;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageContent,
    ChatCompletionRequestUserMessageContentPart, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionResponse,
};
use openlayer_trace::{StepHandle, StepKind, step};
use serde_json::Value;

use crate::params::{Tokens, chat_model_parameters, tool_calls};
use crate::payload;
use crate::stream::ChatStream;
use crate::{Provider, provider_of};

mod sealed {
    pub trait Sealed {}
    impl<C: async_openai::config::Config> Sealed for async_openai::Chat<'_, C> {}
    impl<C: async_openai::config::Config> Sealed for async_openai::Embeddings<'_, C> {}
    impl<C: async_openai::config::Config> Sealed for async_openai::Responses<'_, C> {}
}
pub(crate) use sealed::Sealed;

/// Traced versions of [`Chat::create`] and [`Chat::create_stream`].
///
/// An extension trait rather than a wrapper client, so that async-openai's per-request
/// options (`client.chat().header(..)?.query(..)?`) work as before.
///
/// ```no_run
/// use async_openai::Client;
/// use async_openai::types::chat::{ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs};
/// use futures_util::StreamExt;
/// use openlayer_trace_openai::ChatExt;
///
/// # async fn run() -> Result<(), async_openai::error::OpenAIError> {
/// let client = Client::new();
/// let request = CreateChatCompletionRequestArgs::default()
///     .model("gpt-4o-mini")
///     .messages([ChatCompletionRequestUserMessage::from("Tell me a joke").into()])
///     .build()?;
/// let mut stream = client.chat().create_stream_traced(request).await?;
/// while let Some(chunk) = stream.next().await {
///     let chunk = chunk?;
///     # let _ = chunk;
/// }
/// // The step closed when the stream ended.
/// # Ok(()) }
/// ```
pub trait ChatExt: Sealed {
    /// [`Chat::create`], recorded as a `chat_completion` step; returns exactly what
    /// `create` returns.
    fn create_traced(
        &self,
        request: CreateChatCompletionRequest,
    ) -> impl Future<Output = Result<CreateChatCompletionResponse, OpenAIError>> + Send;

    /// [`Chat::create_stream`], recorded as a `chat_completion` step that lasts as long as
    /// the returned stream (async-openai's own type); see the [crate docs](crate#streams).
    fn create_stream_traced(
        &self,
        request: CreateChatCompletionRequest,
    ) -> impl Future<Output = Result<ChatCompletionResponseStream, OpenAIError>> + Send;
}

impl<C: Config> ChatExt for Chat<'_, C> {
    async fn create_traced(
        &self,
        request: CreateChatCompletionRequest,
    ) -> Result<CreateChatCompletionResponse, OpenAIError> {
        // Opened at the first poll, under the step current where the call is awaited,
        // and before the request goes out, so that its latency covers the call.
        let mut h = start_step(provider_of::<C>(), &request);
        let result = self.create(request).await;
        match &result {
            Ok(response) => record_response(&mut h, response),
            Err(e) => h.error(e),
        }
        h.finish();
        result
    }

    async fn create_stream_traced(
        &self,
        mut request: CreateChatCompletionRequest,
    ) -> Result<ChatCompletionResponseStream, OpenAIError> {
        if crate::inject_stream_usage() {
            let options = request
                .stream_options
                .get_or_insert_with(ChatCompletionStreamOptions::default);
            if options.include_usage.is_none() {
                options.include_usage = Some(true);
            }
        }
        let mut h = start_step(provider_of::<C>(), &request);
        let expected = crate::stream::Expected::of(&request);
        let started = Instant::now();
        match self.create_stream(request).await {
            Ok(inner) if h.is_recording() => {
                Ok(Box::pin(ChatStream::new(inner, h, started, expected))
                    as ChatCompletionResponseStream)
            }
            Ok(inner) => Ok(inner),
            Err(e) => {
                h.error(&e);
                h.finish();
                Err(e)
            }
        }
    }
}

/// The step's name for a chat completion by this provider.
fn step_name(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => "OpenAI Chat Completion",
        Provider::Azure => "Azure OpenAI Chat Completion",
    }
}

/// Opens the step. The prompt and parameters are written only when the step is recorded
/// (a prompt may be large: nothing of it is serialized when tracing is off), the prompt
/// with its base64 images, audio and files left out (see the [crate docs](crate#base64-payloads)).
pub(crate) fn start_step(provider: Provider, request: &CreateChatCompletionRequest) -> StepHandle {
    let mut h = step(step_name(provider))
        .kind(StepKind::ChatCompletion)
        .start_with_inputs(|w| {
            if may_hold_base64(&request.messages)
                && let Ok(mut prompt) = serde_json::to_value(&request.messages)
            {
                payload::leave_out_base64(&mut prompt);
                w.field("prompt", &prompt);
            } else {
                // Serialized straight from the request.
                w.field("prompt", &request.messages);
            }
        });
    if h.is_recording() {
        h.metadata("provider", provider.as_str());
        h.metadata("model", &request.model);
        h.metadata("modelParameters", &chat_model_parameters(request));
    }
    h
}

/// Whether a prompt may hold a base64 payload: a user message with a part other than text
/// (an image, audio or a file).
fn may_hold_base64(messages: &[ChatCompletionRequestMessage]) -> bool {
    messages.iter().any(|m| match m {
        ChatCompletionRequestMessage::User(u) => match &u.content {
            ChatCompletionRequestUserMessageContent::Array(parts) => parts
                .iter()
                .any(|p| !matches!(p, ChatCompletionRequestUserMessageContentPart::Text(_))),
            ChatCompletionRequestUserMessageContent::Text(_) => false,
        },
        _ => false,
    })
}

fn record_response(h: &mut StepHandle, response: &CreateChatCompletionResponse) {
    if !h.is_recording() {
        return;
    }
    // A compatible server may answer with an empty model: the request's stays (the
    // platform prices by it), as a stream's does.
    if !response.model.is_empty() {
        h.metadata("model", &response.model);
    }
    if let Some(usage) = &response.usage {
        Tokens::from_chat(usage).record(h);
    }
    // Bounded as a stream's texts are (a long answer, many long tool arguments,
    // `logprobs` for every token: the row must still fit in a request, or its longest
    // values are cut), base64 audio left out; the output is taken from the bounded
    // response.
    let mut response = std::borrow::Cow::Borrowed(response);
    if let Ok(mut raw) = serde_json::to_value(&*response) {
        let left_out = payload::leave_out_base64(&mut raw);
        if (bound_chat(&mut raw) || left_out)
            && let Ok(bounded) = serde_json::from_value(raw.clone())
        {
            response = std::borrow::Cow::Owned(bounded);
        }
        leave_out_large_logprobs(&mut raw);
        h.metadata("rawOutput", &raw);
    }
    let output = response.choices.first().map(|c| {
        let m = &c.message;
        match (&m.content, &m.tool_calls, &m.refusal, &m.audio) {
            (Some(text), ..) if !text.is_empty() => Value::String(text.clone()),
            (_, Some(calls), ..) if !calls.is_empty() => tool_calls(calls),
            (_, _, Some(refusal), _) => Value::String(refusal.clone()),
            // An audio answer (no text): its transcript.
            (_, _, _, Some(audio)) => Value::String(audio.transcript.clone()),
            (Some(text), ..) => Value::String(text.clone()),
            _ => Value::Null,
        }
    });
    h.output(&output.unwrap_or(Value::Null));
}

/// Bounds the texts of a chat completion's JSON (each choice's content, refusal and audio
/// transcript, each tool call's arguments) under one
/// [`TextBound`](crate::stream::TextBound), as a stream's are. Returns whether anything
/// was cut.
fn bound_chat(raw: &mut Value) -> bool {
    let mut bound = crate::stream::TextBound::default();
    let mut cut = false;
    // Read with `get_mut` only: indexing a map inserts a missing key (as null).
    let choices = raw.get_mut("choices").and_then(Value::as_array_mut);
    for choice in choices.into_iter().flatten() {
        let Some(message) = choice.get_mut("message") else {
            continue;
        };
        for key in ["content", "refusal"] {
            if let Some(Value::String(text)) = message.get_mut(key) {
                cut |= bound.cut_in_place(text);
            }
        }
        if let Some(Value::String(text)) = message
            .get_mut("audio")
            .and_then(|a| a.get_mut("transcript"))
        {
            cut |= bound.cut_in_place(text);
        }
        let calls = message.get_mut("tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten() {
            if let Some(Value::String(args)) = call
                .get_mut("function")
                .and_then(|f| f.get_mut("arguments"))
            {
                cut |= bound.cut_in_place(args);
            }
        }
    }
    cut
}

/// Keeps the choices' `logprobs` (about 1 KB a token with `top_logprobs`) within one
/// budget shared by all choices, half of
/// [`output_max_bytes`](openlayer_trace::stream::output_max_bytes).
fn leave_out_large_logprobs(raw: &mut Value) {
    leave_out_logprobs_over(raw, openlayer_trace::stream::output_max_bytes() / 2);
}

/// Keeps each choice's `logprobs`, in order, while they fit in what is left of `budget`
/// bytes (of JSON); those that do not are left out, a marker saying how large they were.
fn leave_out_logprobs_over(raw: &mut Value, mut budget: usize) {
    let choices = raw.get_mut("choices").and_then(Value::as_array_mut);
    for choice in choices.into_iter().flatten() {
        if let Some(logprobs) = choice.get_mut("logprobs")
            && !logprobs.is_null()
        {
            let size = serde_json::to_string(logprobs).map_or(0, |t| t.len());
            if size > budget {
                *logprobs = Value::String(format!("…[left out: {size} bytes of logprobs]"));
            } else {
                budget -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::leave_out_logprobs_over;

    /// The choices' logprobs share one budget: each fits alone, not all together.
    #[test]
    fn logprobs_share_one_budget_over_all_choices() {
        let logprobs = json!({"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                                           "top_logprobs": []}]});
        let size = serde_json::to_string(&logprobs).unwrap().len();
        let mut raw = json!({"choices": [
            {"index": 0, "logprobs": logprobs},
            {"index": 1, "logprobs": logprobs},
            {"index": 2, "logprobs": null},
        ]});
        leave_out_logprobs_over(&mut raw, size * 3 / 2);
        assert_eq!(raw["choices"][0]["logprobs"], logprobs);
        assert_eq!(
            raw["choices"][1]["logprobs"],
            format!("…[left out: {size} bytes of logprobs]")
        );
        assert!(raw["choices"][2]["logprobs"].is_null());
    }
}
