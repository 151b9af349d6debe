//! An OpenAI-compatible mock on the loopback interface, speaking OpenAI's wire formats:
//! `chat.completion` objects, `chat.completion.chunk` server-sent events ending with
//! `data: [DONE]`, `{"error": {...}}` bodies, embeddings, and Responses API objects and
//! events (`response.created`, `response.output_text.delta`, `response.completed`, ...).
//!
//! It answers `POST .../chat/completions`, `.../embeddings` and `.../responses` under any
//! prefix, so OpenAI-style (`/v1/chat/completions`) and Azure-style
//! (`/openai/deployments/{deployment}/chat/completions?api-version=...`) URLs both work.
//! The request's `model` picks the scenario:
//!
//! | model contains | answer |
//! | --- | --- |
//! | `tools` | two parallel `get_weather` tool calls (Paris, Tokyo); streamed with their fragments interleaved (Responses API: two `function_call` items, their arguments streamed as deltas) |
//! | `stream-error` | (streams) a few chunks, then an error event |
//! | `stream-cut` | (streams) a few chunks, then the connection closes mid-body (Responses API with `tools`: after both calls' `response.output_item.done`, before `response.completed`) |
//! | `azure-filter` | (streams) first Azure's content-filter chunk: empty `id` and `model`, `created` 0, no choices; the answer's chunks name the snapshot `gpt-4o-mini-2024-07-18` |
//! | `empty-model` | (every API) the answer's `model` is `""`, as some compatible servers send it |
//! | `repeat` | (streams, with `tools`) every tool-call delta repeats the call's `id` and `name`, as some compatible servers do |
//! | `refusal` | a refusal instead of an answer ([`REFUSAL`]), streamed as refusal deltas (chat: `content` null, the text under `refusal`) |
//! | `failed` | (Responses API) a failed response: status `failed` with an `error`, no output; streamed, `response.failed` after `response.in_progress` |
//! | `audio` | (chat) an audio answer: no text, `message.audio` with [`PAYLOAD_BASE64_LEN`] bytes of base64 `data` and the text as its `transcript`; streamed, the transcript's pieces, then the audio in four pieces, then its expiry |
//! | `image` | (Responses API) an `image_generation_call` item with [`PAYLOAD_BASE64_LEN`] bytes of base64 PNG as its `result`, before the message |
//! | `index0` | (streams, with `tools`) every call whole in one delta, all at `index` 0 (as Ollama and some vLLM servers send parallel calls) |
//! | anything else | the text `Mock answer: <last user message>`; a chat request with `n` > 1 has that many choices (`Mock answer 2: ...`, ...), streamed with their chunks interleaved |
//!
//! The answer names the model as [`response_model`] maps the requested one (a snapshot for
//! `gpt-4o-mini`, `gpt-4o` and `text-embedding-ada-002`).
//!
//! A stream carries a final usage chunk only when the request asks for it with
//! `stream_options.include_usage`, as OpenAI does. [`OpenAiMock::fail_next`] answers the
//! next requests with errors (`429` rate limits, `500` server errors) in OpenAI's shape.
//!
//! ```
//! use openlayer_testserver::openai::OpenAiMock;
//! let mock = OpenAiMock::start();
//! assert!(mock.url().starts_with("http://127.0.0.1:"));
//! assert!(mock.url().ends_with("/v1"));
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::{Action, Behavior, RecordedRequest, Response, TestServer};

/// Unix time stamped on every object the mock returns.
pub const CREATED: u64 = 1_733_390_000;

/// The OpenAI-compatible mock; see the [module docs](self). Dropping it stops the server.
pub struct OpenAiMock {
    server: TestServer,
    failures: Arc<Mutex<VecDeque<u16>>>,
}

impl std::fmt::Debug for OpenAiMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiMock")
            .field("url", &self.url())
            .finish()
    }
}

impl OpenAiMock {
    /// Starts the mock on `127.0.0.1` on a port chosen by the system.
    pub fn start() -> OpenAiMock {
        let failures: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let f = failures.clone();
        let server = TestServer::start_with(Behavior::always(Action::handler(move |req| {
            let failure = f.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            match failure {
                Some(status) => error_response(status),
                None => answer(req),
            }
        })));
        OpenAiMock { server, failures }
    }

    /// The API base for `OpenAIConfig::with_api_base`: `http://127.0.0.1:<port>/v1`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The base for `AzureConfig::with_api_base`: `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Answers the next requests with these statuses, in order (`429` as a rate limit,
    /// `5xx` as a server error, anything else as an invalid request), then goes back to
    /// normal answers.
    pub fn fail_next(&self, statuses: impl IntoIterator<Item = u16>) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(statuses);
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// The underlying server.
    pub fn server(&self) -> &TestServer {
        &self.server
    }
}

/// OpenAI's error body for a status.
pub fn error_response(status: u16) -> Response {
    let (message, kind, code) = match status {
        429 => (
            "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
            "requests",
            Value::from("rate_limit_exceeded"),
        ),
        s if s >= 500 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            Value::Null,
        ),
        _ => ("Invalid request.", "invalid_request_error", Value::Null),
    };
    Response::json(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn answer(req: &RecordedRequest) -> Response {
    let body = req.json.clone().unwrap_or(Value::Null);
    let path = req.path.as_str();
    if req.method != "POST" {
        return error_response(404);
    }
    if path.ends_with("/chat/completions") {
        chat(&body)
    } else if path.ends_with("/embeddings") {
        embeddings(&body)
    } else if path.ends_with("/responses") {
        responses(&body)
    } else {
        error_response(404)
    }
}

/// The model a response names for a requested one (OpenAI answers with the snapshot).
pub fn response_model(requested: &str) -> String {
    match requested {
        "gpt-4o-mini" => "gpt-4o-mini-2024-07-18".to_string(),
        "gpt-4o" => "gpt-4o-2024-08-06".to_string(),
        // OpenAI names this embedding model's version in its answers.
        "text-embedding-ada-002" => "text-embedding-ada-002-v2".to_string(),
        // A compatible server that leaves the model out.
        other if other.contains("empty-model") => String::new(),
        // Azure's chunks name the deployed model's snapshot, not the deployment.
        other if other.contains("azure-filter") => "gpt-4o-mini-2024-07-18".to_string(),
        other => other.to_string(),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn prompt_tokens(messages: &Value) -> u64 {
    messages
        .as_array()
        .map(|ms| ms.iter().map(|m| words(&text_of(&m["content"])) + 3).sum())
        .unwrap_or(0)
}

fn last_user_text(messages: &Value) -> String {
    messages
        .as_array()
        .and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default()
}

/// The text the mock answers to a conversation.
pub fn mock_answer(last_user_message: &str) -> String {
    format!("Mock answer: {last_user_message}")
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

/// The length of the base64 text of an `audio` answer's audio and of an `image` answer's
/// image (3 MiB).
pub const PAYLOAD_BASE64_LEN: usize = 3 * 1024 * 1024;

/// A base64 payload of [`PAYLOAD_BASE64_LEN`] characters starting with `head` (the start of
/// a WAV file's or a PNG's base64).
pub fn base64_payload(head: &str) -> String {
    let mut data = String::with_capacity(PAYLOAD_BASE64_LEN);
    data.push_str(head);
    data.extend(std::iter::repeat_n('A', PAYLOAD_BASE64_LEN - head.len()));
    data
}

const TOOL_CALLS: [(&str, &str); 2] = [("call_paris", "Paris"), ("call_tokyo", "Tokyo")];

fn chat(body: &Value) -> Response {
    let requested = body["model"].as_str().unwrap_or("gpt-4o-mini");
    let model = response_model(requested);
    let messages = &body["messages"];
    let prompt = prompt_tokens(messages);
    let tools = requested.contains("tools");
    if body["stream"] == true {
        return chat_stream(body, requested, &model, prompt, tools);
    }
    let (message, finish, completion) = if tools {
        let calls: Vec<Value> = TOOL_CALLS
            .iter()
            .map(|(id, city)| {
                json!({"id": id, "type": "function", "function": {"name": "get_weather",
                       "arguments": format!("{{\"city\": \"{city}\"}}")}})
            })
            .collect();
        (
            json!({"role": "assistant", "content": null, "tool_calls": calls,
                   "refusal": null, "annotations": []}),
            "tool_calls",
            18,
        )
    } else if requested.contains("audio") {
        let transcript = mock_answer(&last_user_text(messages));
        let n = words(&transcript);
        (
            json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                   "audio": {"id": "audio_mock", "expires_at": CREATED + 3600,
                             "data": base64_payload("UklGR"), "transcript": transcript}}),
            "stop",
            n,
        )
    } else {
        let texts = chat_texts(body, requested);
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let message = if requested.contains("refusal") {
                    json!({"role": "assistant", "content": null, "refusal": text,
                           "annotations": []})
                } else {
                    json!({"role": "assistant", "content": text, "refusal": null,
                           "annotations": []})
                };
                json!({"index": i, "message": message, "logprobs": null, "finish_reason": "stop"})
            })
            .collect();
        let completion = texts.iter().map(|t| words(t)).sum();
        return chat_completion(&model, json!(choices), prompt, completion);
    };
    chat_completion(
        &model,
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]),
        prompt,
        completion,
    )
}

/// The texts a chat answer's choices hold: as many as the request's `n` (1 by default),
/// the first `Mock answer: <last user message>`, the next `Mock answer 2: ...` and so
/// on; or [`REFUSAL`] (for each) when the model's name contains `refusal`.
fn chat_texts(body: &Value, requested: &str) -> Vec<String> {
    let n = body["n"].as_u64().unwrap_or(1).clamp(1, 8) as usize;
    let question = last_user_text(&body["messages"]);
    (0..n)
        .map(|i| match i {
            _ if requested.contains("refusal") => REFUSAL.to_string(),
            0 => mock_answer(&question),
            i => format!("Mock answer {}: {question}", i + 1),
        })
        .collect()
}

/// The text of a refusal.
pub const REFUSAL: &str = "I can't help with that.";

/// A `chat.completion` object with these choices.
fn chat_completion(model: &str, choices: Value, prompt: u64, completion: u64) -> Response {
    Response::json(
        200,
        &json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": choices,
            "usage": usage(prompt, completion),
            "service_tier": "default",
            "system_fingerprint": "fp_mock"
        }),
    )
}

fn sse(events: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for e in events {
        out.push_str(e);
        out.push_str("\n\n");
    }
    out.into_bytes()
}

fn sse_response(body: Vec<u8>) -> Response {
    Response::json(200, &Value::Null)
        .with_header("content-type", "text/event-stream; charset=utf-8")
        .with_header("cache-control", "no-cache")
        .with_body(body)
}

/// A stream whose body stops after `body` although its `content-length` promised more.
fn cut_response(body: Vec<u8>) -> Response {
    let promised = body.len() * 2 + 64;
    sse_response(body)
        .with_header("content-length", promised.to_string())
        .with_header("connection", "close")
}

fn chat_stream(body: &Value, requested: &str, model: &str, prompt: u64, tools: bool) -> Response {
    let include_usage = body["stream_options"]["include_usage"] == true;
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}")
    };
    let delta = |d: Value, finish: Value| {
        chunk(json!([{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}]))
    };
    let mut events = Vec::new();
    let completion;
    if tools {
        events.push(delta(
            json!({"role": "assistant", "content": null, "refusal": null}),
            Value::Null,
        ));
        if requested.contains("index0") {
            for (id, city) in TOOL_CALLS {
                events.push(delta(
                    json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                            "function": {"name": "get_weather",
                                         "arguments": format!("{{\"city\": \"{city}\"}}")}}]}),
                    Value::Null,
                ));
            }
        }
        // Both calls open, then their argument fragments alternate.
        for (i, (id, _)) in TOOL_CALLS
            .iter()
            .enumerate()
            .filter(|_| !requested.contains("index0"))
        {
            events.push(delta(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ));
        }
        for piece in (0..3).filter(|_| !requested.contains("index0")) {
            for (i, (_, city)) in TOOL_CALLS.iter().enumerate() {
                let fragment = match piece {
                    0 => "{\"city\"".to_string(),
                    1 => ": \"".to_string(),
                    _ => format!("{city}\"}}"),
                };
                let call = if requested.contains("repeat") {
                    json!({"index": i, "id": TOOL_CALLS[i].0, "type": "function",
                           "function": {"name": "get_weather", "arguments": fragment}})
                } else {
                    json!({"index": i, "function": {"arguments": fragment}})
                };
                events.push(delta(json!({"tool_calls": [call]}), Value::Null));
            }
        }
        events.push(delta(json!({}), json!("tool_calls")));
        completion = 18;
    } else if requested.contains("audio") {
        let transcript = mock_answer(&last_user_text(&body["messages"]));
        events.push(delta(
            json!({"role": "assistant", "content": null, "refusal": null}),
            Value::Null,
        ));
        let pieces: Vec<&str> = transcript.split_inclusive(' ').collect();
        completion = pieces.len() as u64;
        for (i, p) in pieces.iter().enumerate() {
            let mut audio = json!({"transcript": p});
            if i == 0 {
                audio["id"] = json!("audio_mock");
            }
            events.push(delta(json!({"audio": audio}), Value::Null));
        }
        let data = base64_payload("UklGR");
        let quarter = PAYLOAD_BASE64_LEN / 4;
        for start in (0..data.len()).step_by(quarter) {
            let part = &data[start..(start + quarter).min(data.len())];
            events.push(delta(json!({"audio": {"data": part}}), Value::Null));
        }
        events.push(delta(
            json!({"audio": {"expires_at": CREATED + 3600}}),
            Value::Null,
        ));
        events.push(delta(json!({}), json!("stop")));
    } else {
        let refusal = requested.contains("refusal");
        let texts = chat_texts(body, requested);
        let choice_delta = |i: usize, d: Value, finish: Value| {
            chunk(json!([{"index": i, "delta": d, "logprobs": null, "finish_reason": finish}]))
        };
        for i in 0..texts.len() {
            let role = if refusal {
                json!({"role": "assistant", "content": null, "refusal": ""})
            } else {
                json!({"role": "assistant", "content": "", "refusal": null})
            };
            events.push(choice_delta(i, role, Value::Null));
        }
        let key = if refusal { "refusal" } else { "content" };
        let pieces: Vec<Vec<&str>> = texts
            .iter()
            .map(|t| t.split_inclusive(' ').collect())
            .collect();
        completion = pieces.iter().map(|p| p.len() as u64).sum();
        // With several choices, their pieces interleave: each one's first, then each one's
        // second, and so on.
        let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..longest {
            for (i, p) in pieces.iter().enumerate() {
                if let Some(piece) = p.get(k) {
                    events.push(choice_delta(i, json!({key: piece}), Value::Null));
                }
            }
        }
        if requested.contains("stream-error") {
            events.truncate(3);
            events.push(format!(
                "data: {}",
                json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                                 "type": "server_error", "param": null, "code": null}})
            ));
            return sse_response(sse(&events));
        }
        if requested.contains("stream-cut") {
            events.truncate(3);
            return cut_response(sse(&events));
        }
        for i in 0..texts.len() {
            events.push(choice_delta(i, json!({}), json!("stop")));
        }
    }
    if include_usage {
        let mut last = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED,
            "model": model, "service_tier": "default", "system_fingerprint": "fp_mock",
            "choices": [], "usage": usage(prompt, completion)
        });
        last["obfuscation"] = json!("mock");
        events.push(format!("data: {last}"));
    }
    if requested.contains("azure-filter") {
        let filter = json!({
            "id": "", "object": "", "created": 0, "model": "", "choices": [],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                "hate": {"filtered": false, "severity": "safe"}}}]
        });
        events.insert(0, format!("data: {filter}"));
    }
    events.push("data: [DONE]".to_string());
    sse_response(sse(&events))
}

fn embedding_of(text: &str, dims: usize) -> Vec<f64> {
    // FNV-1a of the text seeds a small deterministic generator.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            // Values in [-1, 1) with 4 decimals, so they read the same after a round trip.
            ((h % 20_000) as f64 - 10_000.0) / 10_000.0
        })
        .collect()
}

fn embeddings(body: &Value) -> Response {
    let dims = body["dimensions"].as_u64().unwrap_or(8) as usize;
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect(),
        other => vec![other.to_string()],
    };
    let tokens: u64 = inputs.iter().map(|t| words(t)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(
            |(i, t)| json!({"object": "embedding", "index": i, "embedding": embedding_of(t, dims)}),
        )
        .collect();
    Response::json(
        200,
        &json!({
            "object": "list",
            "data": data,
            "model": response_model(body["model"].as_str().unwrap_or("text-embedding-3-small")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
        }),
    )
}

fn response_object(body: &Value, model: &str, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": "resp_mock",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": body.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": true,
        "temperature": body.get("temperature").cloned().unwrap_or(json!(1.0)),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p").cloned().unwrap_or(json!(1.0)),
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": {}
    })
}

/// Responses API server-sent events, numbered in order (`sequence_number`).
#[derive(Default)]
struct Events(Vec<String>);

impl Events {
    fn push(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.0.len());
        self.0.push(format!("event: {kind}\ndata: {data}"));
    }
}

/// A Responses API answer of two `get_weather` function calls; streamed, each call's
/// arguments come as deltas, and with `cut` the body ends before `response.completed`.
fn response_tool_calls(body: &Value, model: &str, usage: Value, cut: bool) -> Response {
    let call = |i: usize, city: &str, arguments: &str, status: &str| {
        json!({"type": "function_call", "id": format!("fc_{i}"), "call_id": format!("call_{city}"),
               "name": "get_weather", "arguments": arguments, "status": status})
    };
    let cities = ["Paris", "Tokyo"];
    let args = |city: &str| format!("{{\"city\":\"{city}\"}}");
    let items: Vec<Value> = cities
        .iter()
        .enumerate()
        .map(|(i, c)| call(i, c, &args(c), "completed"))
        .collect();
    let done = response_object(body, model, "completed", json!(items), usage);
    if body["stream"] != true {
        return Response::json(200, &done);
    }
    let mut events = Events::default();
    let mut event = |kind: &str, data: Value| events.push(kind, data);
    let pending = response_object(body, model, "in_progress", json!([]), Value::Null);
    event("response.created", json!({"response": pending}));
    for (i, city) in cities.iter().enumerate() {
        let item_id = format!("fc_{i}");
        event(
            "response.output_item.added",
            json!({"output_index": i, "item": call(i, city, "", "in_progress")}),
        );
        let a = args(city);
        let (head, tail) = a.split_at(a.len() / 2);
        for piece in [head, tail] {
            event(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": i, "delta": piece}),
            );
        }
        event(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": i, "arguments": a}),
        );
        event(
            "response.output_item.done",
            json!({"output_index": i, "item": items[i]}),
        );
    }
    if cut {
        return cut_response(sse(&events.0));
    }
    event("response.completed", json!({"response": done}));
    sse_response(sse(&events.0))
}

/// The error message of a failed Responses answer.
pub const RESPONSE_FAILED: &str = "The model failed to generate a response.";

/// A failed Responses answer: status `failed`, an `error`, no output and no usage;
/// streamed, `response.failed` follows `response.created` and `response.in_progress`.
fn response_failed(body: &Value, model: &str) -> Response {
    let mut failed = response_object(body, model, "failed", json!([]), Value::Null);
    failed["error"] = json!({"code": "server_error", "message": RESPONSE_FAILED});
    if body["stream"] != true {
        return Response::json(200, &failed);
    }
    let mut events = Events::default();
    let pending = response_object(body, model, "in_progress", json!([]), Value::Null);
    events.push("response.created", json!({"response": pending}));
    events.push("response.in_progress", json!({"response": pending}));
    events.push("response.failed", json!({"response": failed}));
    sse_response(sse(&events.0))
}

fn responses(body: &Value) -> Response {
    let requested = body["model"].as_str().unwrap_or("gpt-4o-mini");
    let model = response_model(requested);
    let input_text = match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| text_of(&m["content"]))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let refusal = requested.contains("refusal");
    let text = if refusal {
        REFUSAL.to_string()
    } else {
        mock_answer(&input_text)
    };
    let (part_type, part_key, delta_kind) = if refusal {
        ("refusal", "refusal", "response.refusal")
    } else {
        ("output_text", "text", "response.output_text")
    };
    let input_tokens = words(&input_text) + words(body["instructions"].as_str().unwrap_or("")) + 3;
    let output_tokens = words(&text);
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens
    });
    let message = |status: &str, text: Option<&str>| {
        let content = match text {
            Some(t) if refusal => json!([{"type": "refusal", "refusal": t}]),
            Some(t) => {
                json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}])
            }
            None => json!([]),
        };
        json!({"id": "msg_mock", "type": "message", "status": status, "role": "assistant",
               "content": content})
    };
    if requested.contains("tools") {
        return response_tool_calls(body, &model, usage, requested.contains("stream-cut"));
    }
    if requested.contains("failed") {
        return response_failed(body, &model);
    }
    // With `image`, a generated image comes first: the message is the second item.
    let image = requested.contains("image");
    let image_call = |status: &str, result: Value| {
        json!({"type": "image_generation_call", "id": "ig_mock", "status": status,
               "result": result})
    };
    let mut items = Vec::new();
    if image {
        items.push(image_call(
            "completed",
            json!(base64_payload("iVBORw0KGgo")),
        ));
    }
    items.push(message("completed", Some(&text)));
    let m = items.len() - 1;
    let done = response_object(body, &model, "completed", json!(items), usage);
    if body["stream"] != true {
        return Response::json(200, &done);
    }
    let mut events = Events::default();
    let mut event = |kind: &str, data: Value| events.push(kind, data);
    let pending = response_object(body, &model, "in_progress", json!([]), Value::Null);
    event("response.created", json!({"response": pending}));
    event("response.in_progress", json!({"response": pending}));
    if image {
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item": image_call("in_progress", Value::Null)}),
        );
        event(
            "response.output_item.done",
            json!({"output_index": 0, "item": items[0]}),
        );
    }
    event(
        "response.output_item.added",
        json!({"output_index": m, "item": message("in_progress", None)}),
    );
    let part = |t: &str| {
        if refusal {
            json!({"type": part_type, part_key: t})
        } else {
            json!({"type": part_type, part_key: t, "annotations": []})
        }
    };
    event(
        "response.content_part.added",
        json!({"item_id": "msg_mock", "output_index": m, "content_index": 0, "part": part("")}),
    );
    let pieces: Vec<&str> = text.split_inclusive(' ').collect();
    for (i, p) in pieces.iter().enumerate() {
        if i == 2 && requested.contains("stream-error") {
            event(
                "error",
                json!({"code": "server_error", "message": "The server had an error while processing your request. Sorry about that!", "param": null}),
            );
            return sse_response(sse(&events.0));
        }
        let mut delta =
            json!({"item_id": "msg_mock", "output_index": m, "content_index": 0, "delta": p});
        if !refusal {
            delta["logprobs"] = json!([]);
        }
        event(&format!("{delta_kind}.delta"), delta);
    }
    let mut done_event = json!({"item_id": "msg_mock", "output_index": m, "content_index": 0});
    done_event[part_key] = json!(text);
    if !refusal {
        done_event["logprobs"] = json!([]);
    }
    event(&format!("{delta_kind}.done"), done_event);
    event(
        "response.content_part.done",
        json!({"item_id": "msg_mock", "output_index": m, "content_index": 0, "part": part(&text)}),
    );
    event(
        "response.output_item.done",
        json!({"output_index": m, "item": message("completed", Some(&text))}),
    );
    event("response.completed", json!({"response": done}));
    sse_response(sse(&events.0))
}
