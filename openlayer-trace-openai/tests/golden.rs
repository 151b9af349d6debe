//! Golden files pinning the rows that recorded async-openai calls produce (the step under
//! a root step named after the scenario), against the loopback mock.
//!
//! What changes from run to run is normalised first: ids become `"<id>"`, and
//! `inferenceTimestamp`, `startTime`, `endTime`, `latency` and `timeToFirstToken` become
//! `0`. After a deliberate change, regenerate with
//! `GOLDEN_OVERWRITE=1 cargo test -p openlayer-trace-openai --test golden` and review the
//! diff.

use std::future::Future;
use std::path::PathBuf;

use async_openai::Client;
use async_openai::config::{AzureConfig, OpenAIConfig};
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use async_openai::types::responses::CreateResponseArgs;
use futures_util::StreamExt;
use openlayer_testserver::openai::OpenAiMock;
use openlayer_trace::step;
use openlayer_trace::testing;
use openlayer_trace_openai::{ChatExt, EmbeddingsExt, ResponsesExt};
use serde_json::Value;

const VOLATILE: [&str; 5] = [
    "inferenceTimestamp",
    "startTime",
    "endTime",
    "latency",
    "timeToFirstToken",
];

/// `text` without serde_json's "at line L column C" (nor the body quoted after it): the
/// column of a parse error in the mock's JSON, and the body, depend on the order of its keys, which depends on whether some crate in
/// the build turns on serde_json's `preserve_order`.
fn without_position(text: &str) -> String {
    let Some(at) = text.find(" at line ") else {
        return text.to_string();
    };
    let rest = &text[at + " at line ".len()..];
    let skip_number = |s: &str| {
        s.trim_start_matches(|c: char| c.is_ascii_digit())
            .to_string()
    };
    let rest = skip_number(rest);
    let rest = match rest.strip_prefix(" column ") {
        Some(r) => skip_number(r),
        None => rest,
    };
    // The body quoted after "content:" is the mock's JSON, in that same key order.
    let rest = match rest.find("content:") {
        Some(c) => format!("{}content:<body>", &rest[..c]),
        None => rest,
    };
    format!("{} at line <n> column <n>{rest}", &text[..at])
}

/// `text` with a JSON object at its end (an error body quoted by async-openai) written
/// with its keys sorted: the mock's key order depends on serde_json's `preserve_order`.
fn sorted_json_tail(text: &str) -> String {
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    if let Some(at) = text.find('{')
        && let Ok(body) = serde_json::from_str::<Value>(&text[at..])
    {
        return format!("{}{}", &text[..at], sorted(body));
    }
    text.to_string()
}

fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, value) in map.iter_mut() {
                if (k == "id" || k == "inferenceId")
                    && value.as_str().is_some_and(|s| s.len() == 36)
                {
                    *value = Value::String("<id>".into());
                } else if VOLATILE.contains(&k.as_str()) && value.is_number() {
                    *value = Value::from(0);
                } else if k == "Exceptions"
                    && let Some(text) = value.as_str()
                {
                    *value = Value::String(sorted_json_tail(&without_position(text)));
                } else {
                    normalise(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn assert_golden(name: &str, row: &Value) {
    let mut row = row.clone();
    normalise(&mut row);
    let actual = serde_json::to_string_pretty(&row).unwrap() + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("GOLDEN_OVERWRITE").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with GOLDEN_OVERWRITE=1", path.display()));
    // Compared as JSON values: the order of an object's keys depends on whether some
    // crate in the build turns on serde_json's `preserve_order`.
    let expected: Value =
        serde_json::from_str(&expected).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == row,
        "{name} differs from its golden file:\n{actual}\n(run with GOLDEN_OVERWRITE=1 to accept it)"
    );
}

/// Runs `f` inside a root step named `name` and pins the row.
async fn golden<F: Future>(name: &'static str, f: F) {
    let (_, traces) = testing::capture_async(step(name).instrument(f)).await;
    assert_eq!(traces.len(), 1);
    assert_golden(name, traces[0].row());
}

fn openai(mock: &OpenAiMock) -> Client<OpenAIConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(mock.url())
            .with_api_key("sk-test"),
    )
}

fn chat_request(model: &str, stream: bool, usage: bool) -> CreateChatCompletionRequest {
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model(model)
        .seed(7)
        .max_completion_tokens(64u32)
        .messages([
            ChatCompletionRequestSystemMessage::from("You answer briefly.").into(),
            ChatCompletionRequestUserMessage::from("What is the capital of France?").into(),
        ]);
    if stream {
        b.stream(true);
    }
    if usage {
        b.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
    }
    b.build().unwrap()
}

async fn consume(client: &Client<OpenAIConfig>, request: CreateChatCompletionRequest, take: usize) {
    let mut stream = client.chat().create_stream_traced(request).await.unwrap();
    let mut n = 0;
    while n < take {
        if stream.next().await.is_none() {
            break;
        }
        n += 1;
    }
}

#[tokio::test]
async fn golden_rows() {
    let mock = OpenAiMock::start();
    let c = openai(&mock);
    golden("chat_plain", async {
        c.chat()
            .create_traced(chat_request("gpt-4o-mini", false, false))
            .await
            .unwrap();
    })
    .await;
    golden("chat_tool_calls", async {
        c.chat()
            .create_traced(chat_request("gpt-4o-mini-tools", false, false))
            .await
            .unwrap();
    })
    .await;
    golden(
        "stream_plain",
        consume(&c, chat_request("gpt-4o-mini", true, false), usize::MAX),
    )
    .await;
    golden(
        "stream_with_usage",
        consume(&c, chat_request("gpt-4o-mini", true, true), usize::MAX),
    )
    .await;
    golden(
        "stream_tool_calls",
        consume(
            &c,
            chat_request("gpt-4o-mini-tools", true, false),
            usize::MAX,
        ),
    )
    .await;
    golden(
        "stream_dropped",
        consume(&c, chat_request("gpt-4o-mini", true, false), 3),
    )
    .await;
    golden(
        "stream_cut_off",
        consume(
            &c,
            chat_request("gpt-4o-mini-stream-cut", true, false),
            usize::MAX,
        ),
    )
    .await;
    golden(
        "stream_error_event",
        consume(
            &c,
            chat_request("gpt-4o-mini-stream-error", true, false),
            usize::MAX,
        ),
    )
    .await;
    mock.fail_next([500, 500, 500, 500]);
    golden("chat_server_error", async {
        c.chat()
            .create_traced(chat_request("gpt-4o-mini", false, false))
            .await
            .unwrap_err();
    })
    .await;
    golden("embedding", async {
        let request = CreateEmbeddingRequestArgs::default()
            .model("text-embedding-3-small")
            .input("Openlayer traces LLM calls")
            .dimensions(3u32)
            .build()
            .unwrap();
        c.embeddings().create_traced(request).await.unwrap();
    })
    .await;
    golden("response_plain", async {
        let request = CreateResponseArgs::default()
            .model("gpt-4o-mini")
            .instructions("Answer briefly.")
            .input("What is Openlayer?")
            .build()
            .unwrap();
        c.responses().create_traced(request).await.unwrap();
    })
    .await;
    golden("response_stream", async {
        let request = CreateResponseArgs::default()
            .model("gpt-4o-mini")
            .input("What is Openlayer?")
            .stream(true)
            .build()
            .unwrap();
        let mut s = c.responses().create_stream_traced(request).await.unwrap();
        while s.next().await.is_some() {}
    })
    .await;
    let azure = Client::with_config(
        AzureConfig::new()
            .with_api_base(mock.base())
            .with_deployment_id("prod-gpt4o")
            .with_api_version("2024-10-21")
            .with_api_key("azure-key"),
    );
    golden("azure_chat", async {
        let mut r = chat_request("gpt-4o", false, false);
        r.temperature = Some(0.3);
        azure.chat().create_traced(r).await.unwrap();
    })
    .await;
}
