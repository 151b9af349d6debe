//! Azure, embeddings and the Responses API through async-openai's real client against the
//! loopback mock.

use async_openai::Client;
use async_openai::config::{AzureConfig, OpenAIConfig};
use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use async_openai::types::responses::{CreateResponseArgs, ResponseStreamEvent};
use futures_util::StreamExt;
use openlayer_testserver::openai::OpenAiMock;
use openlayer_trace::testing;
use openlayer_trace_openai::{ChatExt, EmbeddingsExt, ResponsesExt};
use serde_json::json;

fn install_tls_provider() {
    // async-openai builds its own reqwest client, which wants a TLS provider even for the
    // mock's plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn client(mock: &OpenAiMock) -> Client<OpenAIConfig> {
    install_tls_provider();
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(mock.url())
            .with_api_key("sk-test"),
    )
}

#[tokio::test]
async fn azure_deployment_url_is_recorded_as_azure() {
    install_tls_provider();
    let mock = OpenAiMock::start();
    let client = Client::with_config(
        AzureConfig::new()
            .with_api_base(mock.base())
            .with_deployment_id("prod-gpt4o")
            .with_api_version("2024-10-21")
            .with_api_key("azure-key"),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o")
        .messages([ChatCompletionRequestUserMessage::from("Hello there").into()])
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.chat().create_traced(request)).await;
    result.unwrap();
    let sent = &mock.requests()[0];
    assert_eq!(sent.path, "/openai/deployments/prod-gpt4o/chat/completions");
    assert_eq!(sent.query_param("api-version"), Some("2024-10-21"));
    let step = traces[0].root();
    assert_eq!(step["name"], "Azure OpenAI Chat Completion");
    assert_eq!(step["provider"], "Azure");
    assert_eq!(step["model"], "gpt-4o-2024-08-06");
    assert_eq!(step["output"], "Mock answer: Hello there");
}

#[tokio::test]
async fn embedding_is_an_embedding_step() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let request = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-ada-002")
        .input(vec!["first document", "second longer document"])
        .dimensions(4u32)
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.embeddings().create_traced(request)).await;
    let response = result.unwrap();
    let step = traces[0].root();
    assert_eq!(step["type"], "embedding");
    assert_eq!(step["name"], "OpenAI Embedding");
    assert_eq!(step["provider"], "OpenAI");
    // The model as the answer names it (its version), not as requested.
    assert_eq!(response.model, "text-embedding-ada-002-v2");
    assert_eq!(step["model"], "text-embedding-ada-002-v2");
    assert_eq!(step["rawOutput"]["model"], "text-embedding-ada-002-v2");
    assert_eq!(
        step["inputs"]["input"],
        json!(["first document", "second longer document"])
    );
    assert_eq!(step["embeddingCount"], 2);
    assert_eq!(step["embeddingDimensions"], 4);
    assert_eq!(step["promptTokens"], 5);
    assert_eq!(step["tokens"], 5);
    // The vectors as written on the wire (f32 in shortest form).
    let recorded: Vec<f64> = step["output"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let returned: Vec<f64> = response.data[1]
        .embedding
        .iter()
        .map(|v| v.to_string().parse().unwrap())
        .collect();
    assert_eq!(recorded, returned);
    assert_eq!(step["modelParameters"]["dimensions"], 4);
}

/// A large batch (64 vectors of 1,536 dimensions, about a MiB of JSON) is recorded as
/// whole vectors up to the output bound, then a marker: its row still fits in a request.
#[tokio::test]
async fn a_large_batch_of_embeddings_is_bounded() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let inputs: Vec<String> = (0..64).map(|i| format!("document number {i}")).collect();
    let request = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input(inputs)
        .dimensions(1536u32)
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.embeddings().create_traced(request)).await;
    assert_eq!(result.unwrap().data.len(), 64);
    let step = traces[0].root();
    assert_eq!(step["embeddingCount"], 64);
    let output = step["output"].as_array().unwrap();
    let kept = output.len() - 1;
    assert!(kept > 0 && kept < 64, "{kept}");
    assert!(
        output[..kept]
            .iter()
            .all(|v| v.as_array().unwrap().len() == 1536)
    );
    assert_eq!(
        output[kept],
        format!("…[truncated {} embeddings]", 64 - kept)
    );
    let size = serde_json::to_string(&step["output"]).unwrap().len();
    assert!(
        size <= openlayer_trace::stream::output_max_bytes() / 2 + 64,
        "{size}"
    );
}

#[tokio::test]
async fn response_plain_is_an_openai_response_step() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let request = CreateResponseArgs::default()
        .model("gpt-4o-mini")
        .instructions("Answer briefly.")
        .input("What is Openlayer?")
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.responses().create_traced(request)).await;
    let response = result.unwrap();
    assert_eq!(
        response.output_text().as_deref(),
        Some("Mock answer: What is Openlayer?")
    );
    let step = traces[0].root();
    assert_eq!(step["name"], "OpenAI Response");
    assert_eq!(step["type"], "chat_completion");
    assert_eq!(step["provider"], "OpenAI");
    assert_eq!(step["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(
        step["inputs"]["prompt"],
        json!([{"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": "What is Openlayer?"}])
    );
    assert_eq!(step["output"], "Mock answer: What is Openlayer?");
    assert_eq!(step["promptTokens"], 8);
    assert_eq!(step["completionTokens"], 5);
    assert_eq!(step["tokens"], 13);
    assert_eq!(step["rawOutput"]["id"], "resp_mock");
}

/// Streams a traced Responses answer to `input`, and returns its text (joined from the
/// deltas the caller reads) with the traces it completed.
async fn stream_response(
    client: &Client<OpenAIConfig>,
    input: &str,
) -> (String, Vec<testing::CapturedTrace>) {
    read_stream(client, "gpt-4o-mini", input, |event, text: &mut String| {
        if let ResponseStreamEvent::ResponseOutputTextDelta(d) = event {
            text.push_str(&d.delta);
        }
        std::ops::ControlFlow::Continue(())
    })
    .await
}

/// Streams a traced Responses answer from `model` to `input`, handing each event to `read`
/// (with what it keeps) until it breaks or the stream ends, then drops the stream.
async fn read_stream<T: Default>(
    client: &Client<OpenAIConfig>,
    model: &str,
    input: &str,
    mut read: impl FnMut(ResponseStreamEvent, &mut T) -> std::ops::ControlFlow<()>,
) -> (T, Vec<testing::CapturedTrace>) {
    let request = CreateResponseArgs::default()
        .model(model)
        .input(input)
        .stream(true)
        .build()
        .unwrap();
    testing::capture_async(async {
        let mut stream = client
            .responses()
            .create_stream_traced(request)
            .await
            .unwrap();
        let mut kept = T::default();
        while let Some(event) = stream.next().await {
            if read(event.unwrap(), &mut kept).is_break() {
                break;
            }
        }
        kept
    })
    .await
}

#[tokio::test]
async fn response_stream_joins_text_and_takes_usage_from_completed() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (text, traces) = stream_response(&client, "What is Openlayer?").await;
    assert_eq!(text, "Mock answer: What is Openlayer?");
    let step = traces[0].root();
    assert_eq!(step["name"], "OpenAI Response");
    assert_eq!(step["output"], text.as_str());
    assert_eq!(step["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(step["tokens"], 6 + 5);
    assert!(step["metadata"]["timeToFirstToken"].is_number(), "{step}");
    assert_eq!(step["rawOutput"]["status"], "completed");
}

/// A streamed Responses answer longer than the stream output bound: the client gets all
/// of it; the step's output and the final response in `rawOutput` keep at most half the
/// bound each, marked as cut.
#[tokio::test]
async fn a_long_response_stream_is_recorded_up_to_the_bound() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let max = openlayer_trace::stream::output_max_bytes();
    let word = "y".repeat(1023);
    let question = vec![word.as_str(); max / 2 / 1024 + 40].join(" ");
    let (text, traces) = stream_response(&client, question.as_str()).await;
    assert_eq!(text, format!("Mock answer: {question}"), "passed on whole");
    let step = traces[0].root();
    assert_eq!(
        step["rawOutput"]["status"], "completed",
        "the final response came"
    );
    let output = step["output"].as_str().unwrap();
    let (kept, marker) = output.split_once('…').expect("a truncation marker");
    assert!(kept.len() <= max / 2, "{} > {}", kept.len(), max / 2);
    assert!(
        kept.len() >= max / 2 - 1024,
        "kept up to the bound: {}",
        kept.len()
    );
    assert!(text.starts_with(kept));
    assert_eq!(marker, "[truncated 1 chunks]");
    let raw_text = step["rawOutput"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(raw_text, output, "rawOutput keeps the same text, marked");
}

/// A refusal is the output, as a chat completion's is: answered whole, or streamed as
/// refusal deltas.
#[tokio::test]
async fn a_responses_refusal_is_the_output() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let request = CreateResponseArgs::default()
        .model("gpt-4o-mini-refusal")
        .input("Something off limits")
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.responses().create_traced(request)).await;
    result.unwrap();
    assert_eq!(traces[0].root()["output"], "I can't help with that.");
    let (refused, traces) = read_stream(
        &client,
        "gpt-4o-mini-refusal",
        "Something off limits",
        |event, refused: &mut String| {
            if let ResponseStreamEvent::ResponseRefusalDelta(d) = event {
                refused.push_str(&d.delta);
            }
            std::ops::ControlFlow::Continue(())
        },
    )
    .await;
    assert_eq!(refused, "I can't help with that.");
    let step = traces[0].root();
    assert_eq!(step["output"], "I can't help with that.", "{step}");
    assert!(step["metadata"]["timeToFirstToken"].is_number(), "{step}");
}

/// A refusal stream dropped before its final response: the refusal deltas read so far
/// are the output.
#[tokio::test]
async fn a_refusal_stream_dropped_early_keeps_the_refusal_so_far() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (first, traces) = read_stream(
        &client,
        "gpt-4o-mini-refusal",
        "Something off limits",
        |event, first: &mut String| match event {
            ResponseStreamEvent::ResponseRefusalDelta(d) => {
                *first = d.delta;
                std::ops::ControlFlow::Break(())
            }
            _ => std::ops::ControlFlow::Continue(()),
        },
    )
    .await;
    assert!(!first.is_empty(), "a refusal delta came");
    let step = traces[0].root();
    assert_eq!(step["output"], first.as_str(), "{step}");
    assert_eq!(step["metadata"]["cancelled"], true, "{step}");
}

/// A caller that stops reading at `response.completed` (nothing useful follows it) and
/// drops the stream: the step ends with the final response, not as cancelled.
#[tokio::test]
async fn a_response_stream_left_at_its_final_response_is_complete() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let (_, traces) = read_stream(
        &client,
        "gpt-4o-mini",
        "What is Openlayer?",
        |event, _: &mut ()| match event {
            ResponseStreamEvent::ResponseCompleted(_) => std::ops::ControlFlow::Break(()),
            _ => std::ops::ControlFlow::Continue(()),
        },
    )
    .await;
    let step = traces[0].root();
    assert!(step["metadata"].get("cancelled").is_none(), "{step}");
    assert_eq!(step["output"], "Mock answer: What is Openlayer?");
    assert_eq!(step["tokens"], 6 + 5);
}

#[tokio::test]
async fn response_stream_error_event_is_recorded_and_passed_on() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let request = CreateResponseArgs::default()
        .model("gpt-4o-mini-stream-error")
        .input("What is Openlayer?")
        .stream(true)
        .build()
        .unwrap();
    let (seen, traces) = testing::capture_async(async {
        let mut stream = client
            .responses()
            .create_stream_traced(request)
            .await
            .unwrap();
        let mut errors = Vec::new();
        while let Some(event) = stream.next().await {
            if let Ok(ResponseStreamEvent::ResponseError(e)) = event {
                errors.push(e.message);
            }
        }
        errors
    })
    .await;
    assert_eq!(seen.len(), 1);
    let step = traces[0].root();
    assert_eq!(step["metadata"]["Exceptions"], seen[0].as_str(), "{step}");
}

/// Streams a traced Responses answer from `model`, reading every event (an error item
/// included) until the stream ends; returns the traces.
async fn read_all(client: &Client<OpenAIConfig>, model: &str) -> Vec<testing::CapturedTrace> {
    let request = CreateResponseArgs::default()
        .model(model)
        .input("Weather in Paris and Tokyo?")
        .stream(true)
        .build()
        .unwrap();
    let ((), traces) = testing::capture_async(async {
        let mut stream = client
            .responses()
            .create_stream_traced(request)
            .await
            .unwrap();
        while stream.next().await.is_some() {}
    })
    .await;
    traces
}

/// A streamed Responses answer of function calls: the calls are the output, from the
/// final response; and from the calls' `response.output_item.done` events when the
/// stream ends before its final response (the connection cut).
#[tokio::test]
async fn response_stream_function_calls_are_the_output_even_without_a_final_response() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    for model in ["gpt-4o-tools", "gpt-4o-tools-stream-cut"] {
        let traces = read_all(&client, model).await;
        let step = traces[0].root();
        let calls = step["output"]
            .as_array()
            .unwrap_or_else(|| panic!("{model}: {step}"));
        let got: Vec<(&str, &serde_json::Value)> = calls
            .iter()
            .map(|c| (c["id"].as_str().unwrap_or(""), &c["arguments"]))
            .collect();
        assert_eq!(
            got,
            [
                ("call_Paris", &json!({"city": "Paris"})),
                ("call_Tokyo", &json!({"city": "Tokyo"}))
            ],
            "{model}: {step}"
        );
        assert_eq!(calls[0]["name"], "get_weather", "{model}");
    }
}

/// An answer whose `model` is empty (some compatible servers send it so) leaves the
/// requested model recorded: the platform prices by it. Embeddings, and Responses answered
/// whole, streamed, and streamed but left before the final response.
#[tokio::test]
async fn an_empty_model_in_the_answer_leaves_the_requested_one() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let request = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-empty-model")
        .input("first document")
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.embeddings().create_traced(request)).await;
    assert_eq!(result.unwrap().model, "", "the mock answers an empty model");
    let step = traces[0].root();
    assert_eq!(step["model"], "text-embedding-empty-model", "{step}");

    let model = "gpt-4o-mini-empty-model";
    let request = CreateResponseArgs::default()
        .model(model)
        .input("What is Openlayer?")
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.responses().create_traced(request)).await;
    assert_eq!(result.unwrap().model, "");
    let step = traces[0].root();
    assert_eq!(step["model"], model, "{step}");
    assert_eq!(step["output"], "Mock answer: What is Openlayer?");

    let (_, traces) = read_stream(&client, model, "What is Openlayer?", |_, _: &mut ()| {
        std::ops::ControlFlow::Continue(())
    })
    .await;
    let step = traces[0].root();
    assert_eq!(step["rawOutput"]["status"], "completed", "{step}");
    assert_eq!(step["model"], model, "{step}");

    let (_, traces) =
        read_stream(
            &client,
            model,
            "What is Openlayer?",
            |event, _: &mut ()| match event {
                ResponseStreamEvent::ResponseOutputTextDelta(_) => std::ops::ControlFlow::Break(()),
                _ => std::ops::ControlFlow::Continue(()),
            },
        )
        .await;
    let step = traces[0].root();
    assert_eq!(step["metadata"]["cancelled"], true, "{step}");
    assert_eq!(step["model"], model, "{step}");

    // Chat completions, answered whole and streamed, as they already were.
    let request = CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessage::from("Hello there").into()])
        .build()
        .unwrap();
    let (result, traces) =
        testing::capture_async(client.chat().create_traced(request.clone())).await;
    assert_eq!(result.unwrap().model, "");
    assert_eq!(traces[0].root()["model"], model);
    let mut streamed = request;
    streamed.stream = Some(true);
    let (_, traces) = testing::capture_async(async {
        let mut stream = client.chat().create_stream_traced(streamed).await.unwrap();
        while stream.next().await.is_some() {}
    })
    .await;
    assert_eq!(traces[0].root()["model"], model);
}

/// A Responses answer with a generated image, whole and streamed: the caller gets the
/// whole base64 image; the step records a marker in its place, and the text as output.
#[tokio::test]
async fn a_generated_image_is_left_out_of_the_recorded_response() {
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let len = openlayer_testserver::openai::PAYLOAD_BASE64_LEN;
    let marker = "…[base64 image, 3,145,728 bytes left out]";
    let request = CreateResponseArgs::default()
        .model("gpt-4o-mini-image")
        .input("Draw a cat")
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.responses().create_traced(request)).await;
    let response = result.unwrap();
    let image = serde_json::to_value(&response.output[0]).unwrap();
    assert_eq!(image["type"], "image_generation_call");
    assert_eq!(image["result"].as_str().unwrap().len(), len, "whole");
    let step = traces[0].root();
    assert_eq!(step["rawOutput"]["output"][0]["result"], marker, "{step}");
    assert_eq!(step["rawOutput"]["output"][0]["id"], "ig_mock");
    assert_eq!(step["output"], "Mock answer: Draw a cat");

    let (whole, traces) = read_stream(
        &client,
        "gpt-4o-mini-image",
        "Draw a cat",
        |event, whole: &mut usize| {
            if let ResponseStreamEvent::ResponseCompleted(e) = event {
                let image = serde_json::to_value(&e.response.output[0]).unwrap();
                *whole = image["result"].as_str().map_or(0, str::len);
            }
            std::ops::ControlFlow::Continue(())
        },
    )
    .await;
    assert_eq!(whole, len, "the stream passes the whole image on");
    let step = traces[0].root();
    assert_eq!(step["rawOutput"]["output"][0]["result"], marker, "{step}");
    assert_eq!(step["output"], "Mock answer: Draw a cat");
    let row = serde_json::to_string(traces[0].row()).unwrap();
    assert!(row.len() < 64 * 1024, "{} bytes", row.len());
}

/// A failed response (status `failed`), answered whole or streamed as `response.failed`:
/// its error is recorded under `Exceptions`, with no output.
#[tokio::test]
async fn a_failed_response_records_its_error_and_no_output() {
    use openlayer_testserver::openai::RESPONSE_FAILED;
    let mock = OpenAiMock::start();
    let client = client(&mock);
    let request = CreateResponseArgs::default()
        .model("gpt-4o-mini-failed")
        .input("What is Openlayer?")
        .build()
        .unwrap();
    let (result, traces) = testing::capture_async(client.responses().create_traced(request)).await;
    let response = result.unwrap();
    assert_eq!(response.error.as_ref().unwrap().message, RESPONSE_FAILED);
    let step = traces[0].root();
    assert_eq!(step["metadata"]["Exceptions"], RESPONSE_FAILED, "{step}");
    assert!(step["output"].is_null(), "{step}");
    assert_eq!(step["rawOutput"]["status"], "failed");

    let (failed, traces) = read_stream(
        &client,
        "gpt-4o-mini-failed",
        "What is Openlayer?",
        |event, failed: &mut bool| {
            *failed |= matches!(event, ResponseStreamEvent::ResponseFailed(_));
            std::ops::ControlFlow::Continue(())
        },
    )
    .await;
    assert!(failed, "response.failed passed on");
    let step = traces[0].root();
    assert_eq!(step["metadata"]["Exceptions"], RESPONSE_FAILED, "{step}");
    assert!(step["output"].is_null(), "{step}");
    assert_eq!(step["rawOutput"]["status"], "failed");
    assert!(step["metadata"].get("cancelled").is_none(), "{step}");
}
