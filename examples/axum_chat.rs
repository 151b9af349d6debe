//! An axum chat service traced with `openlayer-trace-tower`: every request is a trace,
//! the streamed answer is part of it, and the client sends feedback for its row.
//!
//! - `POST /chat` `{"question": "..."}` retrieves documents (a `#[trace]` function), then
//!   streams the model's answer as server-sent events. The `x-user-id` and `x-session-id`
//!   request headers, when sent, fill the row's `user_id` and `session_id` columns. The
//!   response's `x-openlayer-inference-id` header names the trace's row.
//! - `POST /feedback` `{"inference_id": "...", "thumbs": "up" | "down"}` attaches the
//!   user's feedback to that row with `update_row`. It is not traced itself: the layer is
//!   on the chat route only (`route_layer`), so a feedback call, a health check or a
//!   request for an unknown path (axum's fallback) makes no row.
//!
//! ```sh
//! cargo run --example axum_chat -- --demo   # starts, chats, sends feedback, prints the trace
//! cargo run --example axum_chat             # serves on 127.0.0.1:3000 until Ctrl-C
//! ```
//!
//! With no `OPENLAYER_API_KEY`, traces go to `openlayer-traces.jsonl`. With
//! `OPENAI_API_KEY` set, the answer is a streamed chat completion from OpenAI
//! (`OPENAI_MODEL`, default `gpt-4o-mini`; `OPENAI_BASE_URL` for another compatible
//! server), recorded by `openlayer-trace-openai`. Without it the model is simulated (it
//! streams a canned answer word by word, and counts words as its tokens), so the example
//! needs no key of any kind.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequestArgs,
};
use openlayer_trace_openai::ChatExt;

use axum::Router;
use axum::extract::Json;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::stream::{self, Stream, StreamExt};
use openlayer_trace::{
    Config, RowUpdateConfig, StepHandle, StepKind, log_context, log_output, step, trace,
    update_current_step, update_row,
};
use openlayer_trace_tower::OpenlayerLayer;
use serde::Deserialize;
use serde_json::json;

const DOCUMENTS: &[&str] = &[
    "Our Pro plan costs 49 EUR a month and includes priority support.",
    "The Team plan adds shared workspaces for up to 20 people.",
    "Refunds are possible within 30 days of purchase.",
];

/// Finds the documents sharing the most words with the question.
#[trace(kind = "retriever")]
async fn retrieve(question: &str, top_k: usize) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(5)).await; // a vector store round trip
    let words: Vec<String> = question
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_string)
        .collect();
    let mut scored: Vec<(usize, &str)> = DOCUMENTS
        .iter()
        .map(|d| {
            let d_lower = d.to_lowercase();
            (
                words
                    .iter()
                    .filter(|w| d_lower.contains(w.as_str()))
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

/// The model: a stand-in that streams a canned answer. A real client (async-openai, ...)
/// fits the same shape: a chat-completion step opened before the first token, entered
/// while each chunk is produced, finished with the whole answer and its usage.
struct SimulatedModel;

impl SimulatedModel {
    const NAME: &'static str = "simulated-gpt";

    fn stream_answer(&self, question: &str, docs: &[String]) -> impl Stream<Item = String> + use<> {
        let system = format!("Answer from the context:\n{}", docs.join("\n"));
        // This model's tokens are words: of the whole prompt, and of the answer below.
        let prompt_tokens = system.split_whitespace().count() + question.split_whitespace().count();
        let prompt = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]);
        // Opened now, under the request's step; it ends with the stream (or, if the client
        // goes away first, as cancelled with the tokens sent so far).
        let mut call: StepHandle = step("chat completion")
            .kind(StepKind::ChatCompletion)
            .inputs(&json!({"prompt": prompt}))
            .start();
        call.metadata("provider", "Simulated");
        call.metadata("model", Self::NAME);
        call.metadata("prompt_tokens", &prompt_tokens);
        let answer = format!(
            "Based on our docs: {}",
            docs.first().map(String::as_str).unwrap_or("I do not know.")
        );
        let words: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
        stream::unfold(
            (call, words.into_iter(), String::new(), 0usize),
            |(mut call, mut words, mut sent, n)| async move {
                tokio::time::sleep(Duration::from_millis(15)).await; // time per token
                match words.next() {
                    Some(word) => {
                        sent.push_str(&word);
                        call.output(&sent);
                        Some((word, (call, words, sent, n + 1)))
                    }
                    None => {
                        call.metadata("completion_tokens", &n);
                        call.finish();
                        // The row's output: the answer, rather than the status code.
                        log_output(&sent);
                        None
                    }
                }
            },
        )
    }
}

/// An answer as a stream of text pieces, whichever model produced it.
type Tokens = Pin<Box<dyn Stream<Item = String> + Send>>;

/// The OpenAI client and model, when `OPENAI_API_KEY` is set.
static OPENAI: OnceLock<Option<(async_openai::Client<OpenAIConfig>, String)>> = OnceLock::new();

fn openai() -> Option<&'static (async_openai::Client<OpenAIConfig>, String)> {
    OPENAI
        .get_or_init(|| {
            let key = std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())?;
            let mut config = OpenAIConfig::new().with_api_key(key);
            if let Ok(base) = std::env::var("OPENAI_BASE_URL") {
                config = config.with_api_base(base);
            }
            let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
            // async-openai's HTTP client speaks TLS through rustls; this application picks
            // ring, before the client is built.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some((async_openai::Client::with_config(config), model))
        })
        .as_ref()
}

/// The answer streamed by OpenAI. `create_stream_traced` records the call as a
/// chat-completion step under the request's step (deltas joined, tokens, time to first
/// token); it ends with the stream, or as cancelled if the client goes away first.
async fn openai_answer(
    client: &async_openai::Client<OpenAIConfig>,
    model: &str,
    question: &str,
    docs: &[String],
) -> Tokens {
    let request = CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([
            ChatCompletionRequestSystemMessage::from(format!(
                "Answer in one sentence from this context:\n{}",
                docs.join("\n")
            ))
            .into(),
            ChatCompletionRequestUserMessage::from(question).into(),
        ])
        .build();
    let stream = match request {
        Ok(request) => client.chat().create_stream_traced(request).await,
        Err(e) => Err(e),
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(e) => {
            return Box::pin(stream::once(async move {
                format!("[the model call failed: {e}]")
            }));
        }
    };
    Box::pin(stream::unfold(
        (stream, String::new(), false),
        |(mut stream, mut sent, failed)| async move {
            if failed {
                return None;
            }
            loop {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        let text: String = chunk
                            .choices
                            .iter()
                            .filter_map(|c| c.delta.content.as_deref())
                            .collect();
                        if !text.is_empty() {
                            sent.push_str(&text);
                            return Some((text, (stream, sent, false)));
                        }
                    }
                    // Recorded under the call's `Exceptions`; the answer stops here.
                    Some(Err(e)) => {
                        let text = format!("[the model stream failed: {e}]");
                        log_output(&sent);
                        return Some((text, (stream, sent, true)));
                    }
                    None => {
                        if !sent.is_empty() {
                            // The row's output: the answer, rather than the status code.
                            log_output(&sent);
                        }
                        return None;
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct ChatRequest {
    question: String,
}

async fn chat(Json(req): Json<ChatRequest>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let docs = retrieve(&req.question, 2).await;
    log_context(&docs);
    let tokens: Tokens = match openai() {
        Some((client, model)) => openai_answer(client, model, &req.question, &docs).await,
        None => Box::pin(SimulatedModel.stream_answer(&req.question, &docs)),
    };
    Sse::new(tokens.map(|t| Ok(Event::default().data(t))))
}

#[derive(Deserialize)]
struct Feedback {
    inference_id: String,
    thumbs: String,
}

async fn feedback(Json(f): Json<Feedback>) -> Response {
    let value = match f.thumbs.as_str() {
        "up" => "thumbs_up",
        "down" => "thumbs_down",
        other => {
            let msg = format!("thumbs must be \"up\" or \"down\", not {other:?}");
            return (StatusCode::UNPROCESSABLE_ENTITY, msg).into_response();
        }
    };
    if f.inference_id.trim().is_empty() {
        return (StatusCode::UNPROCESSABLE_ENTITY, "inference_id is empty").into_response();
    }
    update_row(
        &f.inference_id,
        json!({"humanFeedback": value}),
        Some(RowUpdateConfig::new().human_feedback_column_name("humanFeedback")),
    );
    StatusCode::NO_CONTENT.into_response()
}

/// The service. The layer traces the routes added before `route_layer` (the inference
/// routes) and nothing else: with `Router::layer` instead, every request would be a row,
/// feedback calls and requests for unknown paths (axum's fallback) included.
fn app() -> Router {
    Router::new()
        .route("/chat", post(chat))
        .route_layer(
            OpenlayerLayer::new()
                .user_id_header("x-user-id")
                .session_id_header("x-session-id")
                .record_json_body(16 * 1024),
        )
        .route("/feedback", post(feedback))
}

/// A plain-HTTP client for the demo's loopback calls (reqwest is built here without a
/// process-wide TLS provider, so it gets one explicitly).
fn client() -> reqwest::Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3 are supported")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("the demo's HTTP client")
}

/// Chats once and sends feedback, as a browser client would; returns the inference id.
async fn demo(base: &str) -> Result<String, reqwest::Error> {
    let client = client();
    let mut res = client
        .post(format!("{base}/chat"))
        .header("x-user-id", "user-42")
        .header("x-session-id", "session-7")
        .json(&json!({"question": "How much is the Pro plan?"}))
        .send()
        .await?
        .error_for_status()?;
    let id = res
        .headers()
        .get("x-openlayer-inference-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    print!("answer: ");
    while let Some(chunk) = res.chunk().await? {
        for line in String::from_utf8_lossy(&chunk).lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                print!("{data}");
            }
        }
    }
    println!("\ninference id: {id}");
    let status = client
        .post(format!("{base}/feedback"))
        .json(&json!({"inference_id": id, "thumbs": "up"}))
        .send()
        .await?
        .status();
    println!("feedback sent: {status}");
    Ok(id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    let guard = openlayer_trace::init(config.clone())?;
    let demo_mode = std::env::args().any(|a| a == "--demo");
    if let Some((_, model)) = openai() {
        println!("OPENAI_API_KEY is set: answers come from {model}");
    } else {
        println!("OPENAI_API_KEY is not set: the model is simulated");
    }

    let addr = if demo_mode {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    if demo_mode {
        let id = demo(&base).await?;
        let _ = stop.send(());
        server.await??;
        let report = guard.shutdown_async(Duration::from_secs(10)).await?;
        openlayer_trace_examples::show_outcome(&config, &id, &report);
    } else {
        println!("listening on {base}; try:");
        println!(
            "  curl -N -i {base}/chat -H 'content-type: application/json' -d '{{\"question\": \"How much is the Pro plan?\"}}'"
        );
        println!(
            "  curl -i {base}/feedback -H 'content-type: application/json' -d '{{\"inference_id\": \"<the x-openlayer-inference-id header>\", \"thumbs\": \"up\"}}'"
        );
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(());
        server.await??;
        guard.shutdown_async(Duration::from_secs(10)).await?;
    }
    Ok(())
}
