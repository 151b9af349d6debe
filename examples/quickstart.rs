//! A small RAG flow, traced: retrieve documents, then generate an answer with a chat
//! completion step, under a custom inference id.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! With no `OPENLAYER_API_KEY`, traces go to `openlayer-traces.jsonl` (or
//! `OPENLAYER_TRACE_FILE`) and the trace is printed as a tree. With a key and
//! `OPENLAYER_INFERENCE_PIPELINE_ID`, it is streamed to Openlayer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openlayer_trace::{
    ChatCompletion, Config, add_chat_completion_step, current_inference_id, log_context,
    log_output, trace, update_current_step, update_current_trace,
};
use serde_json::json;

const DOCUMENTS: &[&str] = &[
    "Paris is the capital and largest city of France.",
    "France is a country in Western Europe.",
    "Berlin is the capital of Germany.",
];

/// Finds the documents that share words with the question.
#[trace(kind = "retriever")]
async fn retrieve(question: &str, top_k: usize) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(8)).await; // a vector store round trip
    let words: Vec<String> = question
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 3)
        .map(str::to_string)
        .collect();
    let mut scored: Vec<(usize, &str)> = DOCUMENTS
        .iter()
        .map(|d| {
            (
                words
                    .iter()
                    .filter(|w| d.to_lowercase().contains(w.as_str()))
                    .count(),
                *d,
            )
        })
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    let docs: Vec<String> = scored
        .into_iter()
        .take(top_k)
        .map(|(_, d)| d.to_string())
        .collect();
    update_current_step!(documents = &docs);
    docs
}

/// Builds the prompt and calls the (simulated) model.
#[trace]
async fn generate(question: &str, context: &[String]) -> String {
    let prompt = json!([
        {"role": "system", "content": format!("Answer from the context:\n{}", context.join("\n"))},
        {"role": "user", "content": question},
    ]);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(40)).await; // the model's latency
    let answer = "The capital of France is Paris.".to_string();
    add_chat_completion_step(ChatCompletion {
        provider: Some("OpenAI".into()),
        model: Some("gpt-4o-mini".into()),
        prompt_tokens: Some(48),
        completion_tokens: Some(8),
        cost: Some(0.000_012),
        model_parameters: Some(json!({"temperature": 0.0})),
        inputs: Some(json!({"prompt": prompt})),
        output: Some(json!(answer)),
        latency: Some(started.elapsed()),
        ..Default::default()
    });
    answer
}

/// The request handler: one trace per question.
#[trace]
async fn answer_question(user_id: &str, question: &str) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    update_current_trace!(
        inference_id = format!("quickstart-{user_id}-{now}"),
        user_id = user_id
    );
    let docs = retrieve(question, 2).await;
    log_context(&docs);
    let answer = generate(question, &docs).await;
    // The row's output is the answer (the function returns the id too).
    log_output(&answer);
    // Store this id with the answer, to attach user feedback to the row later.
    let id = current_inference_id().unwrap_or_default();
    (answer, id)
}

#[tokio::main]
async fn main() -> Result<(), openlayer_trace::Error> {
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;

    let (answer, inference_id) = answer_question("user-42", "What is the capital of France?").await;
    println!("answer: {answer}");
    println!("inference id: {inference_id}");

    let report = guard.shutdown_async(Duration::from_secs(10)).await?;
    openlayer_trace_examples::show_outcome(&config, &inference_id, &report);
    Ok(())
}
