//! An app instrumented with `tracing`'s `#[instrument]` (and a model call emitted as an
//! OpenTelemetry GenAI span, as Rust LLM crates do), with one `#[trace]` root:
//! `openlayer_trace::tracing_layer()` turns the spans into steps of that trace.
//!
//! ```sh
//! cargo run -p openlayer-interop-tests --example tracing_bridge
//! ```
//!
//! It needs no network: without `OPENLAYER_API_KEY` in the environment, the trace goes to
//! a local file in the temporary directory, which the example then prints as a tree (with
//! a key, it goes to Openlayer).

use std::time::Duration;

use openlayer_trace::{Config, current_inference_id, format_trace_tree, trace};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_subscriber::layer::SubscriberExt;

/// An `#[instrument]` function: its arguments become the step's inputs.
#[tracing::instrument]
async fn retrieve(question: &str, k: usize) -> Vec<String> {
    tokio::task::yield_now().await;
    (0..k)
        .map(|i| format!("note {i} about {question}"))
        .collect()
}

/// A `#[trace]` function called inside an entered `tracing` span nests under its step.
#[trace(kind = "tool")]
fn score(doc: &str) -> usize {
    doc.len()
}

/// Another `#[instrument]` function, synchronous, calling `#[trace]` functions.
#[tracing::instrument(skip(docs), fields(candidates = docs.len()))]
fn rerank(docs: Vec<String>) -> Vec<String> {
    let mut scored: Vec<_> = docs.into_iter().map(|d| (score(&d), d)).collect();
    scored.sort();
    scored.into_iter().map(|(_, d)| d).collect()
}

/// A model call as an LLM crate emits it: a span with the GenAI attributes, which becomes
/// a `chat_completion` step whatever its target. (A stand-in for the real call.)
async fn chat(question: &str, context: &[String]) -> String {
    let input = serde_json::json!([
        {"role": "system", "parts": [{"type": "text", "content": context.join("\n")}]},
        {"role": "user", "parts": [{"type": "text", "content": question}]},
    ]);
    let span = tracing::info_span!(
        target: "some_llm_crate",
        "chat",
        "otel.name" = "chat gpt-4o",
        "gen_ai.operation.name" = "chat",
        "gen_ai.provider.name" = "openai",
        "gen_ai.request.model" = "gpt-4o",
        "gen_ai.request.temperature" = 0.2,
        "gen_ai.input.messages" = input.to_string(),
        "gen_ai.response.model" = Empty,
        "gen_ai.usage.input_tokens" = Empty,
        "gen_ai.usage.output_tokens" = Empty,
        "gen_ai.output.messages" = Empty,
    );
    let answer = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        "Paris".to_string()
    }
    .instrument(span.clone())
    .await;
    span.record("gen_ai.response.model", "gpt-4o-2024-08-06");
    span.record("gen_ai.usage.input_tokens", 24);
    span.record("gen_ai.usage.output_tokens", 1);
    let output = serde_json::json!([
        {"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"},
    ]);
    span.record("gen_ai.output.messages", output.to_string());
    answer
}

/// The one `#[trace]` root: the `tracing` spans below become its steps.
#[trace(kind = "agent")]
async fn answer(question: &str) -> (String, String) {
    let docs = retrieve(question, 3).await;
    let docs = rerank(docs);
    let reply = chat(question, &docs).await;
    (reply, current_inference_id().unwrap_or_default())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans of this crate's modules become steps too (besides GenAI spans, selected by
    // default). Other layers (fmt, OpenTelemetry, ...) can sit in the same registry.
    let subscriber = tracing_subscriber::registry()
        .with(openlayer_trace::tracing_layer().with_targets([module_path!()]));
    tracing::subscriber::set_global_default(subscriber)?;

    let file = std::env::temp_dir().join(format!("tracing_bridge-{}.jsonl", std::process::id()));
    let config = Config::builder().trace_file(&file).build()?;
    let guard = openlayer_trace::init(config.clone())?;
    let (reply, id) = answer("What is the capital of France?").await;
    println!("answer: {reply}");
    let report = guard.shutdown_async(Duration::from_secs(10)).await?;
    if config.api_key().is_some() {
        println!(
            "trace {id}: {} request(s) sent to Openlayer",
            report.stats.sent
        );
        return Ok(());
    }

    let text = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_file(&file);
    let row = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|line| {
            line["rows"]
                .as_array()?
                .iter()
                .find(|r| r["inferenceId"] == id.as_str())
                .cloned()
        })
        .ok_or("the trace was not written")?;
    print!("{}", format_trace_tree(&row));
    Ok(())
}
