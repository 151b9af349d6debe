//! What recording a streamed chat completion costs per chunk, on top of async-openai's own
//! parsing of each chunk (`serde_json::from_str` into its chunk type, as its SSE mapper
//! does): the same pre-received events consumed untraced and traced, side by side.
//!
//! `cargo bench -p openlayer-trace-openai --bench stream_overhead`

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, ChatCompletionResponseStream, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionStreamResponse,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use serde_json::json;

/// The `data:` payloads of a stream of `n` chunks, as OpenAI sends them: a role chunk,
/// content deltas of a word each, a finish chunk.
fn events(n: usize) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({
            "id": "chatcmpl-AXbench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": 1733390000,
            "model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "obfuscation": "Xq3"
        })
        .to_string()
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        json!(null),
    )];
    for i in 0..n.saturating_sub(2) {
        out.push(chunk(json!({"content": format!(" word{i}")}), json!(null)));
    }
    out.push(chunk(json!({}), json!("stop")));
    out
}

/// async-openai's parsing of the events, as a stream of its own type.
fn parsed(events: &[String]) -> ChatCompletionResponseStream {
    let items: Vec<Result<CreateChatCompletionStreamResponse, OpenAIError>> = events
        .iter()
        .map(|d| {
            serde_json::from_str(d).map_err(|e| OpenAIError::JSONDeserialize(e, String::new()))
        })
        .collect();
    Box::pin(futures_util::stream::iter(items))
}

/// The same, but parsing lazily as the stream is polled (as async-openai's task does).
fn lazy(events: &'static [String]) -> ChatCompletionResponseStream {
    Box::pin(futures_util::stream::iter(events.iter().map(|d| {
        serde_json::from_str::<CreateChatCompletionStreamResponse>(d)
            .map_err(|e| OpenAIError::JSONDeserialize(e, String::new()))
    })))
}

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn consume(mut stream: ChatCompletionResponseStream) -> usize {
    block_on(async move {
        let mut n = 0;
        while let Some(item) = stream.next().await {
            n += item.map(|c| c.choices.len()).unwrap_or(0);
        }
        n
    })
}

static GUARD: Mutex<Option<openlayer_trace::Guard>> = Mutex::new(None);

fn install() {
    let config = openlayer_trace::Config::builder()
        // The worker encodes every trace and writes it where it costs nothing to keep.
        .trace_file("/dev/null")
        .queue_capacity(1 << 16)
        .queue_max_bytes(1 << 30)
        .build()
        .expect("benchmark configuration");
    *GUARD.lock().unwrap() = Some(openlayer_trace::init(config).expect("init"));
}

fn settle() {
    if let Some(g) = GUARD.lock().unwrap().as_ref() {
        let report = g.flush(Duration::from_secs(60)).expect("flush");
        assert!(report.complete);
    }
}

fn request() -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .stream(true)
        .messages([ChatCompletionRequestUserMessage::from(
            "Write a short paragraph about tracing LLM calls.",
        )
        .into()])
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    install();
    let request = request();
    for n in [20usize, 200] {
        let events: &'static [String] = Box::leak(events(n).into_boxed_slice());
        let mut g = c.benchmark_group(format!("chat_stream_{n}_chunks"));
        g.throughput(Throughput::Elements(n as u64));
        // Parsing included: what a stream costs from the bytes' `data:` payloads on.
        g.bench_function(BenchmarkId::new("parse", "untraced"), |b| {
            b.iter(|| consume(lazy(events)))
        });
        g.bench_function(BenchmarkId::new("parse", "traced"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    consume(openlayer_trace_openai::__bench::wrap_chat_stream(
                        &request,
                        lazy(events),
                    ));
                }
                let t = start.elapsed();
                settle();
                t
            })
        });
        // Pre-parsed chunks: the recording alone stands out against consuming the chunks.
        g.bench_function(BenchmarkId::new("preparsed", "untraced"), |b| {
            b.iter_batched(|| parsed(events), consume, criterion::BatchSize::SmallInput)
        });
        g.bench_function(BenchmarkId::new("preparsed", "traced"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let inner = parsed(events);
                    let start = Instant::now();
                    consume(openlayer_trace_openai::__bench::wrap_chat_stream(
                        &request, inner,
                    ));
                    total += start.elapsed();
                }
                settle();
                total
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
