//! Chat completions through async-openai's real client against the loopback mock.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use openlayer_testserver::openai::OpenAiMock;
use openlayer_trace::testing::{self, CapturedTrace};
use openlayer_trace_openai::ChatExt;
use serde_json::{Value, json};

fn client(mock: &OpenAiMock) -> Client<OpenAIConfig> {
    // async-openai builds its own reqwest client; the workspace's reqwest has no default
    // TLS provider, so the test process installs one (no TLS is spoken: the mock is HTTP).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(mock.url())
            .with_api_key("sk-test"),
    )
}

fn request(model: &str, stream: bool) -> CreateChatCompletionRequest {
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model(model).temperature(0.2).messages([
        ChatCompletionRequestSystemMessage::from("You answer briefly.").into(),
        ChatCompletionRequestUserMessage::from("What is the capital of France?").into(),
    ]);
    if stream {
        b.stream(true);
    }
    b.build().unwrap()
}

fn only_step(traces: &[CapturedTrace]) -> Value {
    assert_eq!(traces.len(), 1, "one trace");
    traces[0].root().clone()
}

#[tokio::test]
async fn plain_chat_is_recorded_like_the_official_integration() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (result, traces) =
        testing::capture_async(client.chat().create_traced(request("gpt-4o-mini", false))).await;
    let response = result.unwrap();
    let text = response.choices[0].message.content.clone().unwrap();
    assert_eq!(text, "Mock answer: What is the capital of France?");
    let step = only_step(&traces);
    assert_eq!(step["name"], "OpenAI Chat Completion");
    assert_eq!(step["type"], "chat_completion");
    assert_eq!(step["provider"], "OpenAI");
    assert_eq!(step["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(step["output"], text.as_str());
    assert_eq!(
        step["inputs"]["prompt"][1]["content"],
        "What is the capital of France?"
    );
    assert_eq!(step["inputs"]["prompt"][0]["role"], "system");
    let usage = &response.usage.as_ref().unwrap();
    assert_eq!(step["promptTokens"], usage.prompt_tokens);
    assert_eq!(step["completionTokens"], usage.completion_tokens);
    assert_eq!(step["tokens"], usage.total_tokens);
    assert_eq!(step["modelParameters"]["temperature"], json!(0.2));
    assert_eq!(step["modelParameters"]["n"], 1);
    assert_eq!(step["rawOutput"]["id"], "chatcmpl-mock");
    assert!(
        step.get("cost").is_none_or(Value::is_null),
        "no client-side cost"
    );
    assert!(step["latency"].as_f64().unwrap() >= 0.0);
}
