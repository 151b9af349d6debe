//! The opt-in setting that asks every traced chat stream for a final usage chunk (a
//! process-wide setting, so in a test binary of its own).

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::CreateChatCompletionRequestArgs;
use futures_util::StreamExt;
use openlayer_testserver::openai::OpenAiMock;
use openlayer_trace::testing;
use openlayer_trace_openai::ChatExt;

fn request(model: &str, stream: bool) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .stream(stream)
        .messages([
            async_openai::types::chat::ChatCompletionRequestUserMessage::from(
                "What is the capital of France?",
            )
            .into(),
        ])
        .build()
        .unwrap()
}

#[tokio::test]
async fn injected_usage_is_opt_in() {
    let mock = OpenAiMock::start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(mock.url())
            .with_api_key("sk-test"),
    );
    openlayer_trace_openai::set_inject_stream_usage(true);
    let (_, traces) = testing::capture_async(async {
        let mut stream = client
            .chat()
            .create_stream_traced(request("gpt-4o-mini", true))
            .await
            .unwrap();
        while stream.next().await.is_some() {}
    })
    .await;
    openlayer_trace_openai::set_inject_stream_usage(false);
    let sent = mock.requests()[0].json.clone().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(
        traces[0].root()["tokens"],
        (6 + 3) + 8,
        "{:?}",
        traces[0].root()
    );
}
