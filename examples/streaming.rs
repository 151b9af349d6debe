//! A simulated model streams tokens; a traced handler consumes the stream.
//!
//! ```sh
//! cargo run --example streaming
//! ```
//!
//! `#[trace]` on a function that returns `impl Stream` makes the whole stream one step: it
//! starts when the function is called and ends when the stream does, its tokens joined into
//! its output, with the time to the first token as metadata `timeToFirstToken`. The handler
//! also traces an iterator with `.traced(..)` and stops after its first item: that step
//! closes with what it received and `cancelled: true`.
//!
//! With no `OPENLAYER_API_KEY`, the trace goes to `openlayer-traces.jsonl` (or
//! `OPENLAYER_TRACE_FILE`) and is printed as a tree; with a key and
//! `OPENLAYER_INFERENCE_PIPELINE_ID`, it is streamed to Openlayer.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt, stream};
use openlayer_trace::{
    Config, TraceIteratorExt, current_inference_id, trace, update_current_step,
    update_current_trace,
};

/// The tokens the simulated model answers with.
const ANSWER: &[&str] = &[
    "The", " capital", " of", " France", " is", " Paris", ",", " on", " the", " Seine", ".",
];

/// A simulated model: the answer arrives token by token, after a first-token delay.
/// The step lasts until the stream ends; its output is the tokens joined.
#[trace(kind = "chat_completion", name = "simulated model")]
fn model_stream(prompt: &str) -> impl Stream<Item = String> + Send + 'static {
    update_current_step!(provider = "Simulated", model = "sim-tokens-1");
    let _ = prompt;
    stream::unfold(0, |i| async move {
        let delay = if i == 0 { 60 } else { 8 }; // time to first token, then per token
        tokio::time::sleep(Duration::from_millis(delay)).await;
        ANSWER.get(i).map(|t| (t.to_string(), i + 1))
    })
}

/// A step made while the stream is consumed: it nests under the handler.
#[trace(kind = "guardrail")]
fn check_answer(answer: &str) -> bool {
    !answer.is_empty() && !answer.contains("password")
}

/// Follow-up questions, offered one at a time.
fn follow_ups(answer: &str) -> impl Iterator<Item = String> + '_ {
    [
        "What river flows through it?",
        "How large is it?",
        "When was it founded?",
    ]
    .into_iter()
    .map(move |q| format!("{q} ({} chars of context)", answer.len()))
}

/// The request handler: one trace per question.
#[trace]
async fn handle_chat(user_id: &str, question: &str) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    update_current_trace!(
        inference_id = format!("streaming-{user_id}-{now}"),
        user_id = user_id
    );
    let mut tokens = std::pin::pin!(model_stream(question));
    let mut answer = String::new();
    print!("answer: ");
    while let Some(token) = tokens.next().await {
        print!("{token}");
        let _ = std::io::stdout().flush();
        answer.push_str(&token);
    }
    println!();
    check_answer(&answer);
    // Only the first suggestion is used: the iterator's step ends cancelled when dropped.
    let first = follow_ups(&answer).traced("follow-up suggestions").next();
    println!("follow-up: {}", first.unwrap_or_default());
    (answer, current_inference_id().unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<(), openlayer_trace::Error> {
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;

    let (_answer, inference_id) = handle_chat("user-42", "What is the capital of France?").await;
    println!("inference id: {inference_id}");

    let report = guard.shutdown_async(Duration::from_secs(10)).await?;
    openlayer_trace_examples::show_outcome(&config, &inference_id, &report);
    if let Some(row) = openlayer_trace_examples::local_row(&config, &inference_id) {
        print_streamed_steps(&row["steps"]);
    }
    Ok(())
}

/// Prints what the stream and iterator steps recorded: output, time to first token and
/// whether they were cut short.
fn print_streamed_steps(steps: &serde_json::Value) {
    for step in steps.as_array().into_iter().flatten() {
        let meta = &step["metadata"];
        if !meta["timeToFirstToken"].is_null() || meta["cancelled"] == true {
            println!(
                "step {:?}: output {}, timeToFirstToken {} ms{}",
                step["name"].as_str().unwrap_or("?"),
                step["output"],
                meta["timeToFirstToken"],
                if meta["cancelled"] == true {
                    ", cancelled"
                } else {
                    ""
                }
            );
        }
        print_streamed_steps(&step["steps"]);
    }
}
