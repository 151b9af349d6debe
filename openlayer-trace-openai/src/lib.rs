//! Records [`async-openai`](https://docs.rs/async-openai) calls as `openlayer-trace` steps.
//!
//! Bring the extension traits into scope and call `*_traced` where you called the plain
//! method; the results are exactly what async-openai returns, errors included:
//!
//! ```no_run
//! use async_openai::Client;
//! use async_openai::types::chat::{ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs};
//! use openlayer_trace_openai::ChatExt;
//!
//! # async fn run() -> Result<(), async_openai::error::OpenAIError> {
//! let client = Client::new();
//! let request = CreateChatCompletionRequestArgs::default()
//!     .model("gpt-4o-mini")
//!     .messages([ChatCompletionRequestUserMessage::from("What is Openlayer?").into()])
//!     .build()?;
//! // Per-request options (headers, query) stay available on `client.chat()`.
//! let response = client.chat().create_traced(request).await?;
//! # let _ = response;
//! # Ok(()) }
//! ```
//!
//! Each call is one step under the current step (or a trace of its own when none is
//! active), shaped like the official Openlayer OpenAI integration:
//!
//! | | chat / Responses API | embeddings |
//! | --- | --- | --- |
//! | `type` | `chat_completion` | `embedding` |
//! | `name` | "OpenAI Chat Completion", "Azure OpenAI Chat Completion", "OpenAI Response" | "OpenAI Embedding", "Azure OpenAI Embedding" |
//! | `inputs` | `{"prompt": <messages>}` | `{"input": <input>}` |
//! | `output` | the text, or every tool call as `{id, name, arguments}` | the vectors |
//!
//! plus `provider` ("OpenAI" or "Azure"), `model` (as the response names it; the requested one when the answer's is empty),
//! `promptTokens` / `completionTokens` / `tokens` and `usageDetails` from the usage,
//! `modelParameters` (the official list of request parameters, with OpenAI's defaults),
//! `rawOutput` (the response as JSON; for a stream, the completion the chunks add up to)
//! and the latency. No cost is computed here: the platform prices `provider` and `model`.
//!
//! # Streams
//!
//! [`ChatExt::create_stream_traced`] and [`ResponsesExt::create_stream_traced`] return
//! async-openai's own stream type. The step stays open while the stream is consumed:
//! deltas are joined per choice, tool-call fragments per (choice, tool-call index), and the
//! step ends with the stream. An error item is recorded under `Exceptions` and handed on
//! unchanged; a stream dropped before its end closes the step with the partial output and
//! `cancelled: true`.
//!
//! Metadata `timeToFirstToken` (ms) is the time from the call to the first chunk that
//! carries some of the answer: text, a refusal, a tool call or audio (for a Responses stream, the
//! first text, refusal or function-call arguments delta). Chunks before it are not
//! counted: the usual first chat chunk with the role and no content (which a reasoning
//! model sends long before its first token), or Azure's first chunk with its content
//! filter's results and no choice. The official Python integration takes the time to the
//! first chunk of any kind, so its value can be smaller than this one for the same stream.
//!
//! Token counts of a chat stream are known only when the request asks for a final usage
//! chunk (`stream_options.include_usage`); otherwise they stay `null`.
//! [`set_inject_stream_usage`] makes every traced chat stream ask for it.
//!
//! # Base64 payloads
//!
//! Images, audio and files travel as base64 text, large enough that one of them can make
//! a row larger than a request may carry (the exporter then cuts its longest values, a
//! prompt's text among them, to make it fit). In
//! what is recorded (never in what is sent to the API or handed back to you) each is
//! replaced by a marker giving its kind and the length of its base64 text:
//! `…[base64 audio, 3,842,112 bytes left out]`, `…[base64 image, ...]`, `…[base64 file, ...]`
//! (`video` too, for a data URL of one). A data URL keeps its header:
//! `data:image/png;base64,…[base64 image, 1,048,576 bytes left out]`. This applies to
//!
//! - the prompt: `image_url` and `input_image` data URLs, `input_audio.data`, a file's
//!   `file_data`, and any other base64 data URL in it (in a chat prompt, only in a user
//!   message that has an image, audio or file part: a prompt of text alone is recorded as
//!   it is, without being looked through);
//! - a chat answer's `message.audio.data`, whole or streamed (its `transcript` is kept,
//!   and is the output of an answer with no text), and any base64 data URL in a whole
//!   chat answer;
//! - a Responses answer's `image_generation_call` `result`, and any base64 data URL in a
//!   whole Responses answer.
//!
//! A row still too large for a request has its longest values cut by `openlayer-trace`
//! until it fits (see its README).
//!
//! The `logprobs` of a chat answer (about 1 KB a token with `top_logprobs`) are kept while
//! all choices' together fit in half of
//! [`output_max_bytes`](openlayer_trace::stream::output_max_bytes); past that, a choice's
//! are replaced by `…[left out: N bytes of logprobs]`.
//!
//! # Provider
//!
//! A client built on `async_openai::config::AzureConfig` (also inside a wrapper type whose
//! name names it) is recorded as "Azure"; every other config as "OpenAI". A
//! `Client<Box<dyn Config>>` hides its config type: see [`set_provider_override`].

#![warn(missing_docs)]

mod chat;
mod embeddings;
mod params;
mod payload;
mod responses;
mod stream;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

pub use chat::ChatExt;
pub use embeddings::EmbeddingsExt;
pub use responses::ResponsesExt;

static INJECT_STREAM_USAGE: AtomicBool = AtomicBool::new(false);
static PROVIDER_OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Makes every [`ChatExt::create_stream_traced`] request ask for a final usage chunk
/// (`stream_options.include_usage = true`) unless the request already says otherwise, so
/// that token counts are recorded. Off by default, because that final chunk (with empty
/// `choices`) reaches the caller's code too.
///
/// ```
/// openlayer_trace_openai::set_inject_stream_usage(true);
/// # openlayer_trace_openai::set_inject_stream_usage(false);
/// ```
pub fn set_inject_stream_usage(on: bool) {
    INJECT_STREAM_USAGE.store(on, Ordering::Relaxed);
}

pub(crate) fn inject_stream_usage() -> bool {
    INJECT_STREAM_USAGE.load(Ordering::Relaxed)
}

/// Which provider the platform prices a call under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// OpenAI's own API: recorded as "OpenAI".
    OpenAi,
    /// Azure OpenAI: recorded as "Azure", with step names "Azure OpenAI Chat Completion"
    /// and "Azure OpenAI Embedding" (a Responses call is "OpenAI Response" either way).
    Azure,
}

impl Provider {
    /// The name recorded in the step's `provider` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "OpenAI",
            Provider::Azure => "Azure",
        }
    }
}

/// Records every call as this provider, whatever the client's config type says (for a
/// `Client<Box<dyn Config>>`, whose type does not tell); `None` goes back to telling
/// them apart by the config type.
///
/// ```
/// use openlayer_trace_openai::{Provider, set_provider_override};
/// set_provider_override(Some(Provider::Azure));
/// # set_provider_override(None);
/// ```
pub fn set_provider_override(provider: Option<Provider>) {
    let v = match provider {
        None => 0,
        Some(Provider::OpenAi) => 1,
        Some(Provider::Azure) => 2,
    };
    PROVIDER_OVERRIDE.store(v, Ordering::Relaxed);
}

/// The provider of a client whose config has type `C`.
pub(crate) fn provider_of<C: ?Sized>() -> Provider {
    match PROVIDER_OVERRIDE.load(Ordering::Relaxed) {
        1 => return Provider::OpenAi,
        2 => return Provider::Azure,
        _ => {}
    }
    if std::any::type_name::<C>().contains("AzureConfig") {
        Provider::Azure
    } else {
        Provider::OpenAi
    }
}

/// For the benchmarks only: not part of the API.
#[doc(hidden)]
pub mod __bench {
    use async_openai::types::chat::{ChatCompletionResponseStream, CreateChatCompletionRequest};

    /// Wraps a chat stream as [`crate::ChatExt::create_stream_traced`] does.
    pub fn wrap_chat_stream(
        request: &CreateChatCompletionRequest,
        inner: ChatCompletionResponseStream,
    ) -> ChatCompletionResponseStream {
        let h = crate::chat::start_step(crate::Provider::OpenAi, request);
        if !h.is_recording() {
            return inner;
        }
        Box::pin(crate::stream::ChatStream::new(
            inner,
            h,
            std::time::Instant::now(),
            crate::stream::Expected::of(request),
        ))
    }
}

/// Counts the bytes allocated on each thread, for the tests that check what is not done
/// when nothing is recorded.
#[cfg(test)]
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    }

    fn count(bytes: usize) {
        let _ = ALLOCATED.try_with(|n| n.set(n.get().saturating_add(bytes)));
    }

    struct Counting;

    // SAFETY: every call is handed to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: as the caller's.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size.saturating_sub(layout.size()));
            // SAFETY: as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// What `f` returns, and the bytes allocated on this thread while it ran.
    pub(crate) fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let before = ALLOCATED.with(Cell::get);
        let out = f();
        (out, ALLOCATED.with(Cell::get) - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_openai::config::{AzureConfig, OpenAIConfig};
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs,
    };
    use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
    use async_openai::types::responses::CreateResponseArgs;
    use openlayer_trace::{StepHandle, testing};

    /// A step that is not recorded (tracing disabled) costs no copy of the request: its
    /// prompt (or input) and parameters are not serialized. Under a test capture the same
    /// calls write them, as the allocation count shows.
    #[test]
    fn a_step_not_recorded_serializes_nothing_of_the_request() {
        // Tracing off for this whole test binary (the `Guard` is never dropped): no other
        // unit test here records or calls `init`; one that did would depend on the order
        // the tests run in, and belongs in an integration test of its own.
        let config = openlayer_trace::Config::builder()
            .disabled(true)
            .build()
            .unwrap();
        std::mem::forget(openlayer_trace::init(config).unwrap());
        assert!(!openlayer_trace::is_recording());
        let long = "x".repeat(1 << 20);
        let chat = CreateChatCompletionRequestArgs::default()
            .model("gpt-4o-mini")
            .messages([ChatCompletionRequestUserMessage::from(long.as_str()).into()])
            .build()
            .unwrap();
        let response = CreateResponseArgs::default()
            .model("gpt-4o-mini")
            .instructions(long.as_str())
            .input(long.as_str())
            .build()
            .unwrap();
        let embedding = CreateEmbeddingRequestArgs::default()
            .model("text-embedding-3-small")
            .input(long.as_str())
            .build()
            .unwrap();
        let starts: [(&str, &dyn Fn() -> StepHandle); 3] = [
            ("chat", &|| chat::start_step(Provider::OpenAi, &chat)),
            ("responses", &|| responses::start_step("OpenAI", &response)),
            ("embeddings", &|| {
                embeddings::start_step(Provider::OpenAi, &embedding)
            }),
        ];
        for (name, start) in starts {
            let (h, bytes) = alloc_count::allocated_by(start);
            assert!(!h.is_recording(), "{name}");
            h.finish();
            assert!(bytes < 64 * 1024, "{name}: {bytes} bytes allocated");
            let (bytes, traces) = testing::capture(|| {
                let (h, bytes) = alloc_count::allocated_by(start);
                assert!(h.is_recording(), "{name}");
                h.finish();
                bytes
            });
            assert_eq!(traces.len(), 1, "{name}");
            assert!(bytes > 1 << 20, "{name}: recorded, {bytes} bytes allocated");
        }
    }

    #[test]
    fn provider_follows_the_config_type() {
        assert_eq!(provider_of::<OpenAIConfig>(), Provider::OpenAi);
        assert_eq!(provider_of::<AzureConfig>(), Provider::Azure);
        assert_eq!(
            provider_of::<std::sync::Arc<AzureConfig>>(),
            Provider::Azure
        );
    }
}
