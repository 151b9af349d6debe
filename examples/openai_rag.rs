//! A small RAG flow on async-openai, traced by `openlayer-trace-openai`: embed the
//! documents and the question, retrieve the closest documents, and stream the answer of a
//! chat completion. The embedding call and the streamed completion are recorded on their
//! own (provider, model, tokens, time to first token, ...).
//!
//! ```sh
//! cargo run --example openai_rag
//! ```
//!
//! With `OPENAI_API_KEY` set it calls OpenAI (`OPENAI_MODEL`, default `gpt-4o-mini`).
//! Without it, it starts a local OpenAI-compatible mock on 127.0.0.1, says so, and runs
//! the same code against it. Traces go where `OPENLAYER_*` says, as in `quickstart`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use openlayer_testserver::openai::OpenAiMock;
use openlayer_trace::{Config, log_context, trace, update_current_step, update_current_trace};
use openlayer_trace_openai::{ChatExt, EmbeddingsExt};
use std::io::Write;

const DOCUMENTS: &[&str] = &[
    "Openlayer traces every LLM call of an application: its inputs, output, tokens and latency.",
    "A trace is a tree of steps; a streamed completion records its time to first token.",
    "Berlin is the capital of Germany.",
];

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::EPSILON)
}

/// Embeds the documents and the question in one call and keeps the `top_k` closest.
#[trace(kind = "retriever", skip(client))]
async fn retrieve(
    client: &Client<OpenAIConfig>,
    question: &str,
    top_k: usize,
) -> Result<Vec<String>, OpenAIError> {
    let mut input: Vec<String> = DOCUMENTS.iter().map(|d| d.to_string()).collect();
    input.push(question.to_string());
    let request = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input(input)
        .build()?;
    let response = client.embeddings().create_traced(request).await?;
    let (query, docs) = response.data.split_last().expect("one vector per input");
    let mut scored: Vec<(f32, &str)> = docs
        .iter()
        .map(|d| {
            (
                cosine(&d.embedding, &query.embedding),
                DOCUMENTS[d.index as usize],
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let docs: Vec<String> = scored
        .iter()
        .take(top_k)
        .map(|(_, d)| d.to_string())
        .collect();
    update_current_step!(documents = &docs);
    Ok(docs)
}

/// Streams the answer, printing it as it arrives.
#[trace(skip(client))]
async fn generate(
    client: &Client<OpenAIConfig>,
    model: &str,
    question: &str,
    context: &[String],
) -> Result<String, OpenAIError> {
    let request = CreateChatCompletionRequestArgs::default()
        .model(model)
        .temperature(0.0)
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        })
        .messages([
            ChatCompletionRequestSystemMessage::from(format!(
                "Answer in one sentence from this context:\n{}",
                context.join("\n")
            ))
            .into(),
            ChatCompletionRequestUserMessage::from(question).into(),
        ])
        .build()?;
    let mut stream = client.chat().create_stream_traced(request).await?;
    let mut answer = String::new();
    print!("answer: ");
    while let Some(chunk) = stream.next().await {
        for choice in chunk?.choices {
            if let Some(text) = choice.delta.content {
                print!("{text}");
                let _ = std::io::stdout().flush();
                answer.push_str(&text);
            }
        }
    }
    println!();
    Ok(answer)
}

/// The request handler: one trace per question.
#[trace(skip(client))]
async fn answer_question(
    client: &Client<OpenAIConfig>,
    model: &str,
    question: &str,
    inference_id: &str,
) -> Result<String, OpenAIError> {
    update_current_trace!(inference_id = inference_id);
    let docs = retrieve(client, question, 2).await?;
    log_context(&docs);
    generate(client, model, question, &docs).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // async-openai's HTTP client speaks TLS through rustls; this application picks ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;

    let (client, model, _mock) = match std::env::var("OPENAI_API_KEY") {
        Ok(key) if !key.is_empty() => {
            let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
            (
                Client::with_config(OpenAIConfig::new().with_api_key(key)),
                model,
                None,
            )
        }
        _ => {
            let mock = OpenAiMock::start();
            println!(
                "OPENAI_API_KEY is not set: using a local OpenAI-compatible mock at {}",
                mock.url()
            );
            let config = OpenAIConfig::new()
                .with_api_base(mock.url())
                .with_api_key("sk-local-mock");
            (
                Client::with_config(config),
                "gpt-4o-mini".to_string(),
                Some(mock),
            )
        }
    };

    let question = "What does Openlayer record for a streamed completion?";
    println!("question: {question}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let inference_id = format!("openai-rag-{now}");
    if let Err(e) = answer_question(&client, &model, question, &inference_id).await {
        println!("the call failed: {e}");
    }
    let report = guard.shutdown_async(Duration::from_secs(10)).await?;
    openlayer_trace_examples::show_outcome(&config, &inference_id, &report);
    Ok(())
}
