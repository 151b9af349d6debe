//! A real Rust LLM crate: `genai` (feature `otel`) makes a chat call against a loopback
//! OpenAI-compatible mock, and its `gen_ai.*` span becomes a `chat_completion` step under
//! the `#[trace]` function that made the call.

use genai::adapter::AdapterKind;
use genai::chat::{ChatMessage, ChatOptions, ChatRequest};
use genai::resolver::{AuthData, Endpoint, ServiceTargetResolver};
use genai::{Client, ModelIden, ServiceTarget};
use openlayer_trace::{testing, trace, tracing_layer};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(base: String) -> Client {
    let resolver = ServiceTargetResolver::from_resolver_fn(
        move |t: ServiceTarget| -> Result<ServiceTarget, genai::resolver::Error> {
            Ok(ServiceTarget {
                endpoint: Endpoint::from_owned(base.clone()),
                auth: AuthData::from_single("test-key"),
                model: ModelIden::new(AdapterKind::OpenAI, t.model.model_name),
            })
        },
    );
    Client::builder()
        .with_service_target_resolver(resolver)
        .build()
        .expect("a client")
}

#[trace(skip(client))]
async fn ask(client: &Client, question: &str) -> String {
    let req = ChatRequest::new(vec![
        ChatMessage::system("Answer in one word."),
        ChatMessage::user(question),
    ]);
    let opts = ChatOptions::default()
        .with_temperature(0.3)
        .with_max_tokens(16);
    let res = client
        .exec_chat("gpt-4o-mini", req, Some(&opts))
        .await
        .expect("the mock answers");
    res.first_text().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn genai_chat_call_becomes_a_chat_completion_step_under_the_traced_caller() {
    // genai records message content only when asked to (read once, before any call).
    // SAFETY: this test binary has this one test; nothing else reads the environment yet.
    unsafe { std::env::set_var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true") };

    // The workspace builds reqwest without a default TLS provider; genai's client needs one
    // (the mock is plain HTTP on loopback).
    let _ = rustls::crypto::ring::default_provider().install_default();

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Paris"},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 21, "completion_tokens": 1, "total_tokens": 22}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(format!("{}/v1/", server.uri()));

    let subscriber = tracing_subscriber::registry().with(tracing_layer());
    let _default = tracing::subscriber::set_default(subscriber);
    let (answer, traces) =
        testing::capture_async(ask(&client, "What is the capital of France?")).await;
    assert_eq!(answer, "Paris");
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    let root = t.root();
    assert_eq!(root["name"], "ask");
    let steps = root["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "one model call: {root:#}");
    let chat = &steps[0];
    assert_eq!(chat["type"], "chat_completion");
    assert_eq!(chat["name"], "chat gpt-4o-mini");
    assert_eq!(chat["provider"], "OpenAI");
    assert_eq!(chat["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(chat["promptTokens"], 21);
    assert_eq!(chat["completionTokens"], 1);
    assert_eq!(chat["tokens"], 22);
    assert_eq!(chat["modelParameters"]["temperature"], 0.3);
    assert_eq!(chat["modelParameters"]["max_tokens"], 16);
    assert_eq!(chat["output"], "Paris");
    let prompt = chat["inputs"]["prompt"].as_array().unwrap();
    assert_eq!(prompt.first().unwrap()["role"], "system");
    assert_eq!(
        prompt.last().unwrap(),
        &json!({"role": "user", "content": "What is the capital of France?"})
    );
    // The call's time lies within the caller's.
    let time = |step: &serde_json::Value, key: &str| step[key].as_f64().unwrap();
    assert!(time(chat, "startTime") >= time(root, "startTime"));
    assert!(time(chat, "endTime") <= time(root, "endTime"));
}
