//! The Responses API: [`ResponsesExt`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_openai::Responses;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::types::responses::{
    CreateResponse, InputParam, OutputItem, Response, ResponseStream, ResponseStreamEvent,
};
use futures_core::Stream;
use openlayer_trace::{StepHandle, StepKind, step};
use serde_json::{Value, json};

use crate::chat::Sealed;
use crate::params::{Tokens, decimal, tool_call};
use crate::payload;
use crate::provider_of;
use crate::stream::{Bounded, TextBound};

/// The step name of a Responses API call.
const NAME: &str = "OpenAI Response";

/// Traced versions of [`Responses::create`] and [`Responses::create_stream`].
///
/// ```no_run
/// use async_openai::{Client, types::responses::CreateResponseArgs};
/// use openlayer_trace_openai::ResponsesExt;
///
/// # async fn run() -> Result<(), async_openai::error::OpenAIError> {
/// let client = Client::new();
/// let request = CreateResponseArgs::default()
///     .model("gpt-4o-mini")
///     .input("What is Openlayer?")
///     .build()?;
/// let response = client.responses().create_traced(request).await?;
/// # let _ = response;
/// # Ok(()) }
/// ```
pub trait ResponsesExt: Sealed {
    /// [`Responses::create`], recorded as a `chat_completion` step named "OpenAI
    /// Response"; returns exactly what `create` returns.
    fn create_traced(
        &self,
        request: CreateResponse,
    ) -> impl Future<Output = Result<Response, OpenAIError>> + Send;

    /// [`Responses::create_stream`], recorded as a step that lasts as long as the returned
    /// stream (async-openai's own type). Text deltas are joined, `timeToFirstToken` is the
    /// time to the first output delta, and the final `response.completed` event gives the
    /// model, usage and raw output; an `error` event or a failed response closes the step
    /// with `Exceptions`.
    fn create_stream_traced(
        &self,
        request: CreateResponse,
    ) -> impl Future<Output = Result<ResponseStream, OpenAIError>> + Send;
}

impl<C: Config> ResponsesExt for Responses<'_, C> {
    async fn create_traced(&self, request: CreateResponse) -> Result<Response, OpenAIError> {
        let mut h = start_step(provider_of::<C>().as_str(), &request);
        let result = self.create(request).await;
        match &result {
            Ok(response) => {
                if h.is_recording()
                    && let Ok(mut raw) = serde_json::to_value(response)
                {
                    // Bounded as a stream's final response is: a long answer's row still
                    // fits in a request.
                    bound_texts(&mut raw);
                    record_response(&mut h, raw);
                }
            }
            Err(e) => h.error(e),
        }
        h.finish();
        result
    }

    async fn create_stream_traced(
        &self,
        request: CreateResponse,
    ) -> Result<ResponseStream, OpenAIError> {
        let mut h = start_step(provider_of::<C>().as_str(), &request);
        let started = Instant::now();
        match self.create_stream(request).await {
            Ok(inner) if h.is_recording() => Ok(Box::pin(TracedResponseStream {
                inner,
                handle: Some(h),
                started,
                first_token: false,
                text: Bounded::default(),
                refusal: Bounded::default(),
                bound: TextBound::default(),
                model: None,
                calls: Vec::new(),
                last: None,
            }) as ResponseStream),
            Ok(inner) => Ok(inner),
            Err(e) => {
                h.error(&e);
                h.finish();
                Err(e)
            }
        }
    }
}

/// The request's prompt as chat messages: the instructions as a system message, then the
/// input (a plain string is a user message).
fn prompt(request: &CreateResponse) -> Value {
    let mut messages = Vec::new();
    if let Some(instructions) = &request.instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match &request.input {
        InputParam::Text(text) => messages.push(json!({"role": "user", "content": text})),
        InputParam::Items(items) => {
            if let Ok(Value::Array(items)) = serde_json::to_value(items) {
                messages.extend(items);
            }
        }
    }
    Value::Array(messages)
}

/// Opens the step. The prompt and parameters are written only when the step is recorded
/// (nothing of the input is copied or serialized when tracing is off), the prompt with its
/// base64 images, audio and files left out (see the [crate docs](crate#base64-payloads)).
pub(crate) fn start_step(provider: &str, request: &CreateResponse) -> StepHandle {
    let mut h = step(NAME)
        .kind(StepKind::ChatCompletion)
        .start_with_inputs(|w| {
            let mut prompt = prompt(request);
            payload::leave_out_base64(&mut prompt);
            w.field("prompt", &prompt);
        });
    if h.is_recording() {
        h.metadata("provider", provider);
        h.metadata("model", &request.model);
        h.metadata(
            "modelParameters",
            &json!({
                "temperature": decimal(request.temperature.unwrap_or(1.0)),
                "top_p": decimal(request.top_p.unwrap_or(1.0)),
                "max_output_tokens": request.max_output_tokens,
                "top_logprobs": request.top_logprobs,
                "parallel_tool_calls": request.parallel_tool_calls,
            }),
        );
    }
    h
}

/// The output of a response (as JSON): its text, or else every function call (custom tool
/// calls too), or else its refusal, as a chat completion's output is.
fn output_of(raw: &Value) -> Value {
    let mut text = String::new();
    let mut refusal = String::new();
    let mut calls = Vec::new();
    for item in raw["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    match part["type"].as_str() {
                        Some("output_text") => {
                            text.push_str(part["text"].as_str().unwrap_or(""));
                        }
                        Some("refusal") => {
                            refusal.push_str(part["refusal"].as_str().unwrap_or(""));
                        }
                        _ => {}
                    }
                }
            }
            Some("function_call") => calls.push(tool_call(
                item["call_id"].as_str().unwrap_or(""),
                item["name"].as_str().unwrap_or(""),
                item["arguments"].as_str().unwrap_or(""),
            )),
            Some("custom_tool_call") => calls.push(tool_call(
                item["call_id"].as_str().unwrap_or(""),
                item["name"].as_str().unwrap_or(""),
                item["input"].as_str().unwrap_or(""),
            )),
            _ => {}
        }
    }
    if !text.is_empty() {
        Value::String(text)
    } else if !calls.is_empty() {
        Value::Array(calls)
    } else {
        Value::String(refusal)
    }
}

fn tokens_of(usage: &Value) -> Option<Tokens> {
    let n = |v: &Value| v.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Some(Tokens {
        prompt: n(&usage["input_tokens"])?,
        completion: n(&usage["output_tokens"]),
        total: n(&usage["total_tokens"])?,
        cached: n(&usage["input_tokens_details"]["cached_tokens"]),
        reasoning: n(&usage["output_tokens_details"]["reasoning_tokens"]),
        audio_input: None,
        audio_output: None,
    })
}

/// Records a whole response (given as JSON).
fn record_response(h: &mut StepHandle, raw: Value) {
    // An empty model (some compatible servers) leaves the request's.
    if let Some(model) = raw["model"].as_str().filter(|m| !m.is_empty()) {
        h.metadata("model", model);
    }
    if let Some(tokens) = tokens_of(&raw["usage"]) {
        tokens.record(h);
    }
    if let Some(message) = raw["error"]["message"].as_str() {
        h.error(&message);
    }
    h.output(&output_of(&raw));
    h.metadata("rawOutput", &raw);
}

/// The most tool calls a stream keeps for a step whose final response never came.
const MAX_KEPT_CALLS: usize = 128;

/// Wraps async-openai's Responses stream; events pass through untouched.
struct TracedResponseStream {
    inner: ResponseStream,
    handle: Option<StepHandle>,
    started: Instant,
    first_token: bool,
    /// The text deltas, recorded when no final response came (bounded).
    text: Bounded,
    /// The refusal deltas, likewise (the output when no text came).
    refusal: Bounded,
    bound: TextBound,
    model: Option<String>,
    /// The function and custom tool calls done so far (`response.output_item.done`),
    /// recorded when no final response came.
    calls: Vec<Value>,
    /// The final response (`response.completed`, `.incomplete` or `.failed`).
    last: Option<Response>,
}

/// Cuts the texts of a final response (output text, refusals, tool-call arguments, custom
/// tool calls' input) to a stream's bound, as a stream's deltas were: the response is
/// recorded as the output and again in `rawOutput`. A generated image (base64) is left
/// out, a marker giving its size (see the [crate docs](crate#base64-payloads)).
fn bound_texts(raw: &mut Value) {
    payload::leave_out_base64(raw);
    let mut bound = TextBound::default();
    // Read with `get_mut` only: indexing a map inserts a missing key (as null).
    let items = raw.get_mut("output").and_then(Value::as_array_mut);
    for item in items.into_iter().flatten() {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let parts = item.get_mut("content").and_then(Value::as_array_mut);
                for part in parts.into_iter().flatten() {
                    for key in ["text", "refusal"] {
                        if let Some(Value::String(text)) = part.get_mut(key) {
                            bound.cut_in_place(text);
                        }
                    }
                }
            }
            Some("function_call") => {
                if let Some(Value::String(args)) = item.get_mut("arguments") {
                    bound.cut_in_place(args);
                }
            }
            Some("custom_tool_call") => {
                if let Some(Value::String(input)) = item.get_mut("input") {
                    bound.cut_in_place(input);
                }
            }
            _ => {}
        }
    }
}

impl TracedResponseStream {
    fn record(&mut self, h: &mut StepHandle) {
        match self.last.take().map(serde_json::to_value) {
            Some(Ok(mut raw)) => {
                bound_texts(&mut raw);
                record_response(h, raw)
            }
            _ => {
                if let Some(model) = &self.model {
                    h.metadata("model", model);
                }
                if !self.text.is_empty() {
                    h.output(&self.text.marked());
                } else if !self.calls.is_empty() {
                    // As a final response with these calls would have them (bounded).
                    let raw = json!({"output": std::mem::take(&mut self.calls)});
                    h.output(&output_of(&raw));
                } else if !self.refusal.is_empty() {
                    h.output(&self.refusal.marked());
                }
            }
        }
    }
}

impl Stream for TracedResponseStream {
    type Item = Result<ResponseStreamEvent, OpenAIError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(handle) = this.handle.as_mut() else {
            return this.inner.as_mut().poll_next(cx);
        };
        let poll = {
            let _entered = handle.enter();
            this.inner.as_mut().poll_next(cx)
        };
        match &poll {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(event))) => {
                let token = match event {
                    ResponseStreamEvent::ResponseOutputTextDelta(d) => {
                        this.bound.push(&mut this.text, &d.delta);
                        true
                    }
                    ResponseStreamEvent::ResponseRefusalDelta(d) => {
                        this.bound.push(&mut this.refusal, &d.delta);
                        true
                    }
                    ResponseStreamEvent::ResponseFunctionCallArgumentsDelta(_) => true,
                    ResponseStreamEvent::ResponseCreated(e) => {
                        if !e.response.model.is_empty() {
                            this.model = Some(e.response.model.clone());
                        }
                        false
                    }
                    ResponseStreamEvent::ResponseOutputItemDone(e) => {
                        if this.calls.len() < MAX_KEPT_CALLS
                            && matches!(
                                e.item,
                                OutputItem::FunctionCall(_) | OutputItem::CustomToolCall(_)
                            )
                            && let Ok(item) = serde_json::to_value(&e.item)
                        {
                            // Cut as it comes (a stream's bound), not only when recorded.
                            let mut kept = json!({"output": [item]});
                            bound_texts(&mut kept);
                            if let Some(Value::Array(mut items)) =
                                kept.get_mut("output").map(Value::take)
                                && let Some(item) = items.pop()
                            {
                                this.calls.push(item);
                            }
                        }
                        false
                    }
                    ResponseStreamEvent::ResponseCompleted(e) => {
                        this.last = Some(e.response.clone());
                        false
                    }
                    ResponseStreamEvent::ResponseIncomplete(e) => {
                        this.last = Some(e.response.clone());
                        false
                    }
                    ResponseStreamEvent::ResponseFailed(e) => {
                        this.last = Some(e.response.clone());
                        false
                    }
                    ResponseStreamEvent::ResponseError(e) => {
                        handle.exception(&e.message);
                        false
                    }
                    _ => false,
                };
                if token && !this.first_token {
                    this.first_token = true;
                    let ms = this.started.elapsed().as_secs_f64() * 1000.0;
                    handle.metadata("timeToFirstToken", &ms);
                }
                // The final response came (completed, incomplete or failed): nothing that
                // follows is recorded, so the step ends here, not when the caller drops a
                // stream it stopped reading (`break` on `response.completed`), which
                // would record it as cancelled.
                if this.last.is_some() {
                    // The final response has them all.
                    this.calls = Vec::new();
                }
                if this.last.is_some()
                    && let Some(mut h) = this.handle.take()
                {
                    this.record(&mut h);
                    h.finish();
                }
            }
            // As a chat stream's: the step goes on, keeping what arrived (and a final
            // response that still comes after an event the client could not read).
            Poll::Ready(Some(Err(e))) => handle.exception(e),
            Poll::Ready(None) => {
                if let Some(mut h) = this.handle.take() {
                    this.record(&mut h);
                    h.finish();
                }
            }
        }
        poll
    }
}

impl Drop for TracedResponseStream {
    fn drop(&mut self) {
        if let Some(mut h) = self.handle.take() {
            self.record(&mut h);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{bound_texts, output_of};

    /// A custom tool call's input (freeform text, a whole patch, say) is the output of a
    /// response without text, and is cut to the stream's bound as tool-call arguments are.
    #[test]
    fn a_custom_tool_calls_input_is_the_output_and_bounded() {
        let max = openlayer_trace::stream::output_max_bytes() / 2;
        let input = "p".repeat(max + 1000);
        let mut raw = json!({"output": [
            {"type": "custom_tool_call", "call_id": "call_9", "name": "apply_patch", "input": input}
        ]});
        bound_texts(&mut raw);
        let kept = raw["output"][0]["input"].as_str().unwrap();
        let (text, marker) = kept.split_once('…').expect("a truncation marker");
        assert!(text.len() <= max, "{}", text.len());
        assert!(marker.starts_with("[truncated"), "{marker}");
        let output = output_of(&raw);
        assert_eq!(output[0]["id"], "call_9");
        assert_eq!(output[0]["name"], "apply_patch");
    }
}
